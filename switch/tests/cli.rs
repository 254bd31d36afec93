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

// Issue 18: an interface that does not exist is a warning of check-config (it may appear
// later), not an error.
#[test]
fn check_config_warns_of_a_missing_interface() {
    let dir = std::env::temp_dir().join(format!("xswitch-cli-warn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("sw.toml");
    std::fs::write(
        &f,
        "[ports.up]\ninterface = \"xsw-nosuch0\"\nkind = \"uplink\"\n\
         [tenants.red]\nattach = [{ port = \"up\", vlan = 100 }]\n",
    )
    .unwrap();
    let out = xswitch().arg("check-config").arg(&f).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: port up: interface xsw-nosuch0 does not exist on this host"),
        "{err}"
    );
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

// Issue 18: the flags of `ctl` after the subcommand too, the socket from XSWITCH_SOCKET or from
// the switch's config file, and a plain error for a path that is not a socket.
#[test]
fn ctl_finds_its_socket_as_operators_give_it() {
    // Its own directory: the tests of this file run in parallel.
    let dir = std::env::temp_dir().join(format!("xswitch-ctl-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("nothing.sock");
    let run = |args: &[&str], env: Option<&std::path::Path>| {
        let mut c = xswitch();
        c.arg("ctl").args(args).env_remove("XSWITCH_SOCKET");
        if let Some(e) = env {
            c.env("XSWITCH_SOCKET", e);
        }
        let o = c.output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    // `--json` and `--socket` after the subcommand: parsed (no usage error, exit 2), then no
    // switch answers there.
    let m = missing.display().to_string();
    let (code, err) = run(&["status", "--json", "--socket", &m], None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("xswitch is not running") && err.contains(&m), "{err}");
    // From the environment.
    let (_, err) = run(&["status"], Some(&missing));
    assert!(err.contains(&m), "{err}");
    // From the config file: its control.socket.
    let cfg = dir.join("sw.toml");
    let sock = dir.join("from-config.sock");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nsocket = \"{}\"\n[ports.up]\ninterface = \"u0\"\nkind = \"uplink\"\n\
             [tenants.red]\nattach = [{{ port = \"up\", vlan = 100 }}]\n",
            sock.display()
        ),
    )
    .unwrap();
    let (_, err) = run(&["-c", cfg.to_str().unwrap(), "status"], None);
    assert!(err.contains("from-config.sock"), "{err}");
    // A path that is not a socket.
    let (code, err) = run(&["status", "--socket", cfg.to_str().unwrap()], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a socket (a file)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 18: --version names the commit and the build; completions and the manual page come
// from the CLI definition.
#[test]
fn version_completions_and_manual_page() {
    let o = xswitch().arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.starts_with("xswitch 0.") && v.contains("(commit ") && v.contains(" build)"), "{v}");
    let o = xswitch().args(["completions", "bash"]).output().unwrap();
    assert!(o.status.success());
    let script =
        std::env::temp_dir().join(format!("xswitch-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &o.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("check-config") && text.contains("trace-live"), "{text}");
    for shell in ["zsh", "fish"] {
        let o = xswitch().args(["completions", shell]).output().unwrap();
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ctl"));
    }
    let o = xswitch().arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && man.contains(".TH xswitch 1") && man.contains("ctl"), "{man}");
    // A reader that goes away early is no error (and no panic).
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{} completions bash | head -1", env!("CARGO_BIN_EXE_xswitch")))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{o:?}");
}
