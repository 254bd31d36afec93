//! The `xswitch` binary: `check-config` accepts every shipped config and rejects bad ones with
//! the field named; the in-memory demo runs and balances its frames.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

use std::path::PathBuf;
use std::process::Command;

fn xswitch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xswitch"))
}

fn configs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn check_config_accepts_every_shipped_config() {
    let files = configs();
    assert!(!files.is_empty());
    for f in files {
        let out = xswitch().arg("check-config").arg(&f).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("OK") && stdout.contains("tenants:"), "{stdout}");
    }
}

#[test]
fn check_config_rejects_bad_configs_naming_the_field() {
    let base = "[ports.up]\ninterface = \"eth0\"\nkind = \"uplink\"\n\
                [ports.a]\ninterface = \"veth-a\"\nkind = \"tenant\"\n\
                [tenants.red]\nattach = [{ port = \"up\", vlan = 100 }, { port = \"a\" }]\n";
    let cases = [
        (
            "unknown port",
            base.replace("port = \"a\" }", "port = \"b\" }"),
            "tenants.red.attach[1].port",
        ),
        ("vlan range", base.replace("vlan = 100", "vlan = 5000"), "tenants.red.attach[0].vlan"),
        (
            "duplicate mac",
            format!(
                "{base}static_macs = [{{ mac = \"02:00:00:00:00:01\", port = \"a\" }}, {{ mac = \"02:00:00:00:00:01\", port = \"a\" }}]\n"
            ),
            "tenants.red.static_macs[1].mac",
        ),
        (
            "unknown key",
            base.replace("kind = \"tenant\"", "kind = \"tenant\"\ncolour = 1"),
            "colour",
        ),
        ("frame size", format!("[switch]\nframe_size = 9000\n{base}"), "switch.frame_size"),
        ("not toml", "this is [not toml".to_string(), "bad.toml"),
        ("same interface twice", base.replace("\"veth-a\"", "\"eth0\""), ".interface"),
    ];
    let dir = std::env::temp_dir().join(format!("xswitch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (what, text, field) in cases {
        let f = dir.join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = xswitch().arg("check-config").arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(field), "{what}: {field} not in {err}");
    }
    let out = xswitch().args(["check-config", "/nonexistent.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_lists_the_commands() {
    let out = xswitch().arg("--help").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(s.contains("check-config") && s.contains("demo"), "{s}");
}

#[test]
fn demo_runs_and_balances_its_frames() {
    let out = xswitch().args(["demo", "--simulate", "--frames", "100"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for t in ["red", "blue", "green", "unknown_tenant=", "balanced"] {
        assert!(s.contains(t), "{t} missing from:\n{s}");
    }
}
