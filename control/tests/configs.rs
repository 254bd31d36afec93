//! Every file in `configs/` loads, validates and compiles; bad configs are rejected with a
//! message that names the field.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

use std::collections::HashMap;
use std::path::PathBuf;

use control::config::{self, ConfigError, load_str};
use control::{compile, config::load::load_str_with_env};
use dataplane::snapshot::{PortId, PortKind};

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_shipped_config_loads_and_compiles() {
    let mut n = 0;
    for e in std::fs::read_dir(configs_dir()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let snap = compile(&cfg, 1).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(snap.ports.len(), cfg.ports.len());
        assert_eq!(snap.tenants.len(), cfg.tenants.len());
        n += 1;
    }
    assert!(n >= 2, "configs/ holds the demo and the 16-VF host");
}

#[test]
fn the_sixteen_vf_host_has_24_tenants_on_16_vfs() {
    let cfg = config::load(&configs_dir().join("sriov-16vf-24tenants.toml")).unwrap();
    let snap = compile(&cfg, 1).unwrap();
    assert_eq!(snap.tenants.len(), 24);
    let vfs = snap.ports.iter().filter(|p| p.kind == PortKind::Tenant).count();
    assert_eq!(vfs, 16);
    // Two tenants share vf15, apart by VLAN.
    let vf15 = snap.port_by_name("vf15").unwrap();
    let a = snap.resolve(vf15, Some(10)).unwrap().0;
    let b = snap.resolve(vf15, Some(20)).unwrap().0;
    assert_ne!(a, b);
    assert_eq!(snap.resolve(vf15, None), None);
}

#[test]
fn demo_resolves_tenants_by_port_and_vlan() {
    let cfg = config::load(&configs_dir().join("demo.toml")).unwrap();
    let snap = compile(&cfg, 7).unwrap();
    assert_eq!(snap.generation, 7);
    let up = snap.port_by_name("uplink").unwrap();
    let red = snap.tenant_by_name("red").unwrap();
    assert_eq!(snap.resolve(up, Some(100)).unwrap().0, red);
    assert_eq!(snap.resolve(snap.port_by_name("red2").unwrap(), None).unwrap().0, red);
    assert_eq!(snap.resolve(PortId(99), None), None);
}

const GOOD: &str = r#"
[ports.up]
interface = "eth0"
kind = "uplink"
[ports.a]
interface = "veth-a"
kind = "tenant"
[tenants.red]
attach = [{ port = "up", vlan = 100 }, { port = "a" }]
"#;

fn err_of(text: &str) -> String {
    match load_str("test.toml", text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_config_and_defaults() {
    let c = load_str("test.toml", GOOD).unwrap();
    assert_eq!(c.switch.workers, 1);
    assert_eq!(c.tenants["red"].fdb_quota, 1024);
    assert_eq!(c.ports["a"].queues, 1);
}

/// `switch.frame_size = 0` (the default) follows the largest MTU: 4 096 once a port's MTU
/// (the config's, else its interface's) needs more than one 2 KiB frame (above 1 770).
#[test]
fn the_default_frame_size_follows_the_largest_mtu() {
    let c = load_str("test.toml", GOOD).unwrap();
    assert_eq!(c.switch.frame_size, 0);
    assert_eq!(c.frame_size(|_| None), 2048, "no MTU known");
    assert_eq!(c.frame_size(|_| Some(1500)), 2048);
    assert_eq!(c.frame_size(|_| Some(1770)), 2048, "fits one frame");
    assert_eq!(c.frame_size(|i| (i == "veth-a").then_some(1771)), 4096);
    let text = GOOD.replace("kind = \"tenant\"\n", "kind = \"tenant\"\nmtu = 9000\n");
    let c = load_str("test.toml", &text).unwrap();
    assert_eq!(c.frame_size(|_| Some(1500)), 4096, "the config's MTU first");
    let c = load_str("test.toml", &format!("[switch]\nframe_size = 2048\n{GOOD}")).unwrap();
    assert_eq!(c.frame_size(|_| Some(9000)), 2048, "set by the config");
    // The config's MTU is checked against 4 KiB frames when the size is left to the switch.
    let big = GOOD.replace("kind = \"tenant\"\n", "kind = \"tenant\"\nmtu = 60000\n");
    assert!(load_str("test.toml", &big).is_ok());
    let e = err_of(&format!("[switch]\nframe_size = 2048\n{big}"));
    assert!(e.contains("ports.a.mtu") && e.contains("frame_size = 4096"), "{e}");
}

#[test]
fn bad_configs_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("unknown port in a tenant", "port = \"a\" }]", "port = \"nope\" }]"),
        ("VLAN out of range", "vlan = 100", "vlan = 4095"),
        ("untagged uplink attachment", "{ port = \"up\", vlan = 100 }", "{ port = \"up\" }"),
        ("unknown key", "kind = \"tenant\"", "kind = \"tenant\"\nspeed = 10"),
        ("bad kind", "kind = \"tenant\"", "kind = \"router\""),
        ("interface too long", "\"veth-a\"", "\"a-very-long-interface-name\""),
        ("wrong type", "vlan = 100", "vlan = \"hundred\""),
        (
            "mixed bind modes",
            "kind = \"tenant\"\n",
            "kind = \"tenant\"\nmode = \"copy\"\n[ports.b]\ninterface = \"b\"\nkind = \"tenant\"\nmode = \"zero-copy\"\n",
        ),
        ("metrics address", "[tenants.red]", "[metrics]\nlisten = \"localhost\"\n[tenants.red]"),
    ];
    let want_field = [
        "tenants.red.attach[1].port",
        "tenants.red.attach[0].vlan",
        "tenants.red.attach[0].vlan",
        "speed",
        "kind",
        "ports.a.interface",
        "vlan",
        "ports.a.mode",
        "metrics.listen",
    ];
    for ((what, from, to), field) in cases.iter().zip(want_field) {
        assert!(GOOD.contains(from), "{what}: fixture");
        let e = err_of(&GOOD.replacen(from, to, 1));
        assert!(e.starts_with("test.toml"), "{what}: no file in {e}");
        assert!(e.contains(field), "{what}: {field} not in {e}");
    }
}

#[test]
fn duplicates_are_rejected() {
    let dup_mac = format!(
        "{GOOD}static_macs = [{{ mac = \"02:00:00:00:00:01\", port = \"a\" }}, {{ mac = \"02:00:00:00:00:01\", port = \"a\" }}]\n"
    );
    let e = err_of(&dup_mac);
    assert!(e.contains("tenants.red.static_macs[1].mac") && e.contains("duplicate"), "{e}");

    let dup_att = format!("{GOOD}[tenants.blue]\nattach = [{{ port = \"up\", vlan = 100 }}]\n");
    let e = err_of(&dup_att);
    assert!(e.contains("tenants.red.attach[0]") && e.contains("already attached"), "{e}");

    let dup_if = GOOD.replace("\"veth-a\"", "\"eth0\"");
    let e = err_of(&dup_if);
    assert!(e.contains("ports.up.interface") || e.contains("ports.a.interface"), "{e}");
    assert!(e.contains("already used"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("vlan = 100", "vlan = 0")
        .replace("port = \"a\" }", "port = \"b\" }")
        .replace("[ports.up]", "[switch]\nworkers = 0\nframe_size = 1000\n[ports.up]");
    match load_str("many.toml", &text) {
        Err(ConfigError::Invalid { issues, .. }) => {
            let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
            for p in [
                "switch.workers",
                "switch.frame_size",
                "tenants.red.attach[0].vlan",
                "tenants.red.attach[1].port",
            ] {
                assert!(paths.contains(&p), "{p} missing from {paths:?}");
            }
        }
        other => panic!("{other:?}"),
    }
}

// Every range check says the value, its unit and the range, in one wording.
#[test]
fn out_of_range_settings_say_the_value_and_the_range() {
    let text = GOOD.replace(
        "[ports.up]",
        "[switch]\nworkers = 65\nflow_cache_tenant_share = 0\nfragment_timeout_ms = 60001\n\
         fragment_entries = 4\nconntrack_capacity = 16777217\n[ports.up]\nmtu = 67\nqueues = 0",
    );
    match load_str("range.toml", &text) {
        Err(ConfigError::Invalid { issues, .. }) => {
            let said: Vec<String> =
                issues.iter().map(|i| format!("{}: {}", i.path, i.reason)).collect();
            for want in [
                "switch.workers: 65 is out of range 1..=64",
                "switch.flow_cache_tenant_share: 0 % is out of range 1..=100",
                "switch.fragment_timeout_ms: 60001 ms is out of range 1..=60000",
                "switch.fragment_entries: 4 is out of range 8..=1048576",
                "switch.conntrack_capacity: 16777217 is out of range 1..=16777216",
                "ports.up.mtu: 67 is out of range 68..=65535",
                "ports.up.queues: 0 is out of range 1..=64",
            ] {
                assert!(said.iter().any(|s| s == want), "{want:?} not in {said:#?}");
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_few_frames_for_the_rings() {
    let text = format!("[switch]\nframes = 1024\nring_size = 1024\n{GOOD}");
    let e = err_of(&text);
    assert!(e.contains("switch.frames") && e.contains("too few"), "{e}");
}

#[test]
fn environment_overrides_the_file() {
    let env = HashMap::from([
        ("XSWITCH__SWITCH__WORKERS".to_string(), "3".to_string()),
        ("XSWITCH__SWITCH__CORES".to_string(), "0,1,2".to_string()),
        ("XSWITCH__TENANTS__RED__FDB_QUOTA".to_string(), "77".to_string()),
    ]);
    let c = load_str_with_env("test.toml", GOOD, Some(env)).unwrap();
    assert_eq!(c.switch.workers, 3);
    assert_eq!(c.switch.cores, vec![0, 1, 2]);
    assert_eq!(c.tenants["red"].fdb_quota, 77);
    let bad = HashMap::from([("XSWITCH__SWITCH__WORKERS".to_string(), "0".to_string())]);
    let e = load_str_with_env("test.toml", GOOD, Some(bad)).unwrap_err().to_string();
    assert!(e.contains("switch.workers"), "{e}");
}

#[test]
fn missing_file_names_it() {
    let e = config::load(std::path::Path::new("/nonexistent/x.toml")).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn names_keep_their_case() {
    let text = GOOD.replace("[tenants.red]", "[tenants.Red]");
    let c = load_str("test.toml", &text).unwrap();
    assert!(c.tenants.contains_key("Red"), "{:?}", c.tenants.keys().collect::<Vec<_>>());
}

#[test]
fn compile_is_deterministic() {
    let cfg = config::load(&configs_dir().join("sriov-16vf-24tenants.toml")).unwrap();
    let a = compile(&cfg, 5).unwrap();
    let b = compile(&cfg.clone(), 5).unwrap();
    assert_eq!(a, b);
}

const POLICY: &str = r#"
[ports.up]
interface = "eth0"
kind = "uplink"
[ports.a]
interface = "veth-a"
kind = "tenant"
[tenants.red]
attach = [{ port = "up", vlan = 100 }, { port = "a", macs = ["02:00:00:00:00:01"], ips = ["10.0.0.1", "fd00::1/128"] }]
acl_default = "deny"
[[tenants.red.acl]]
name = "ssh-in"
priority = 10
direction = "to-tenant"
action = "allow"
proto = "tcp"
dst_port = 22
src = "10.0.0.0/8"
[[tenants.red.acl]]
priority = 20
direction = "to-tenant"
action = "allow"
proto = "udp"
dst_port = "1000-2000"
[[tenants.red.acl]]
priority = 5
direction = "from-tenant"
action = "count"
in_port = "a"
proto = 6
tcp_flags = "syn,!ack"
[[tenants.red.acl]]
priority = 6
direction = "from-tenant"
action = "allow"
ethertype = "arp"
[tenants.red.security_group]
max_connections = 100
rules = [{ direction = "from-tenant" }, { direction = "to-tenant", proto = "icmp", remote = "10.0.0.0/8" }]
timeouts = { tcp = 600 }
"#;

#[test]
fn policy_config_compiles_into_rules_guards_and_a_group() {
    let cfg = load_str("policy.toml", POLICY).unwrap_or_else(|e| panic!("{e}"));
    let snap = compile(&cfg, 1).unwrap();
    let red = &snap.tenants[snap.tenant_by_name("red").unwrap().index()];
    let [from, to] = &red.policy.acl;
    assert_eq!((from.rules.len(), to.rules.len()), (2, 2));
    assert_eq!(to.rules[0].name, "ssh-in");
    assert_eq!(to.rules[1].m.dst_ports, Some((1000, 2000)));
    assert_eq!(from.rules[0].m.tcp_flags, Some((0x02, 0x12)));
    assert_eq!(from.rules[1].name, "acl[3]");
    assert_eq!(to.default, dataplane::policy::Action::Deny);
    let g = red.policy.group.as_ref().unwrap();
    assert_eq!((g.rules.len(), g.quota), (2, 100));
    assert_eq!(g.timeouts.tcp_established, dataplane::time::Nanos::from_secs(600));
    assert_eq!(red.guards.len(), 2);
    assert!(red.guards[0].macs.is_empty() && red.guards[1].ips.len() == 2);
}

#[test]
fn bad_rules_are_named() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("bad prefix", "src = \"10.0.0.0/8\"", "src = \"10.0.0.0/40\"", "tenants.red.acl[0].src"),
        ("reversed range", "\"1000-2000\"", "\"2000-1000\"", "tenants.red.acl[1].dst_port"),
        ("unknown protocol", "proto = \"udp\"", "proto = \"udpp\"", "tenants.red.acl[1].proto"),
        ("duplicate priority", "priority = 20", "priority = 10", "tenants.red.acl[1].priority"),
        ("port without protocol", "proto = \"udp\"\n", "", "tenants.red.acl[1].dst_port"),
        ("flags without tcp", "proto = 6", "proto = 17", "tenants.red.acl[2].tcp_flags"),
        ("unknown flag", "syn,!ack", "syn,!ackk", "tenants.red.acl[2].tcp_flags"),
        ("unknown in_port", "in_port = \"a\"", "in_port = \"b\"", "tenants.red.acl[2].in_port"),
        ("bad guard ip", "\"fd00::1/128\"", "\"fd00::1/129\"", "tenants.red.attach[1].ips[1]"),
        (
            "group MAC in guard",
            "02:00:00:00:00:01",
            "01:00:5e:00:00:01",
            "tenants.red.attach[1].macs[0]",
        ),
        (
            "bad remote",
            "remote = \"10.0.0.0/8\"",
            "remote = \"ten\"",
            "security_group.rules[1].remote",
        ),
        ("zero timeout", "tcp = 600", "tcp = 0", "security_group.timeouts.tcp"),
        ("unknown rule key", "action = \"count\"", "action = \"count\"\nports = 1", "ports"),
        ("bad action", "action = \"count\"", "action = \"log\"", "action"),
        (
            "bad direction",
            "direction = \"to-tenant\"\naction = \"allow\"\nproto = \"tcp\"",
            "direction = \"in\"\naction = \"allow\"\nproto = \"tcp\"",
            "direction",
        ),
    ];
    for (what, from, to, field) in cases {
        assert!(POLICY.contains(from), "{what}: fixture");
        let e = err_of(&POLICY.replacen(from, to, 1));
        assert!(e.contains(field), "{what}: {field} not in {e}");
    }
}

/// Every key of the config model (all optional parts filled in) is documented in
/// docs/CONFIG.md, so the reference cannot silently fall behind the code.
#[test]
fn every_config_field_is_in_the_reference() {
    let full = POLICY.to_string()
        + "[metrics]\nlisten = \"127.0.0.1:9\"\n[control]\nsocket = \"/run/x.sock\"\n"
        + "[[tenants.red.static_macs]]\nmac = \"02:00:00:00:00:09\"\nport = \"a\"\n"
        + "[tenants.red.flow_log]\nfile = \"/var/log/red.jsonl\"\n";
    let full = full.replace(
        "action = \"count\"\nin_port = \"a\"",
        "action = \"count\"\nin_port = \"a\"\nsrc_mac = \"02:00:00:00:00:01\"\n\
         dst_mac = \"02:00:00:00:00:02\"\nvlan = 7\ndst = \"10.0.0.0/8\"\nsrc_port = 1\n",
    ) + "[[tenants.red.acl]]\npriority = 30\ndirection = \"from-tenant\"\naction = \"deny\"\n\
         proto = \"icmp\"\nicmp_type = 8\nicmp_code = 0\n";
    let cfg = load_str("full.toml", &full).unwrap_or_else(|e| panic!("{e}"));
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md"),
    )
    .unwrap();
    let mut keys = std::collections::BTreeSet::new();
    fn walk(
        v: &serde_json::Value,
        named_children: bool,
        keys: &mut std::collections::BTreeSet<String>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    if named_children {
                        walk(child, false, keys);
                    } else {
                        keys.insert(k.clone());
                        walk(child, k == "ports" || k == "tenants", keys);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, false, keys)),
            _ => {}
        }
    }
    walk(&serde_json::to_value(&cfg).unwrap(), false, &mut keys);
    // A field is documented as `name` in a table, a section as [name] or [x.name], a key of
    // an inline table in an example as `name = `.
    let documented = |k: &str| {
        [format!("`{k}`"), format!("{k}]"), format!("[{k}."), format!("{k} = ")]
            .iter()
            .any(|p| doc.contains(p.as_str()))
    };
    let missing: Vec<_> = keys.iter().filter(|k| !documented(k)).collect();
    assert!(keys.len() > 40, "the walk found too few keys: {keys:?}");
    assert!(missing.is_empty(), "fields not in docs/CONFIG.md: {missing:?}");
}

#[test]
fn shaping_compiles_and_impossible_values_name_the_field() {
    let good = GOOD.replace("kind = \"uplink\"", "kind = \"uplink\"\nrate = \"100Mbit\"")
        + r#"
[tenants.red.shaping]
ingress = { rate = "50Mbit", burst = "64KiB" }
to_uplink = { rate = "10kpps", burst = "32" }
weight = 3
min_rate = "20Mbit"
queue = 128
[tenants.blue]
attach = [{ port = "up", vlan = 200 }]
shaping = { min_rate = "30Mbit" }
"#;
    let cfg = load_str("test.toml", &good).unwrap();
    let snap = control::compile(&cfg, 1).unwrap();
    let red = &snap.tenants[snap.tenant_by_name("red").unwrap().index()].shaping;
    use dataplane::shaping::Unit;
    let police = red.police.unwrap();
    assert_eq!((police.per_sec, police.burst, police.unit), (6_250_000, 65_536, Unit::Bytes));
    let up = red.to_uplink.unwrap();
    assert_eq!((up.per_sec, up.burst, up.unit), (10_000, 32, Unit::Packets));
    assert_eq!((red.weight, red.queue, red.min_rate.unwrap().per_sec), (3, 128, 2_500_000));
    let up_port = snap.port_by_name("up").unwrap();
    assert_eq!(snap.ports[up_port.index()].rate.unwrap().per_sec, 12_500_000);
    let cases: &[(&str, &str, &str)] = &[
        ("burst below a frame", "burst = \"64KiB\"", "burst = \"1000B\""),
        ("unknown unit", "\"50Mbit\"", "\"50 megabits\""),
        ("minimums above the port rate", "min_rate = \"30Mbit\"", "min_rate = \"90Mbit\""),
        ("frame-rate minimum", "min_rate = \"20Mbit\"", "min_rate = \"20kpps\""),
        ("weight", "weight = 3", "weight = 0"),
        ("huge queue", "queue = 128", "queue = 100000"),
    ];
    let want = [
        ("tenants.red.shaping.ingress.burst", "smaller than one full-size frame"),
        ("tenants.red.shaping.ingress.rate", "is not a rate"),
        (
            "ports.up.rate",
            "add up to 110.000 Mbit/s, more than its 100.000 Mbit/s (blue 90.000 Mbit/s, red 20.000 Mbit/s)",
        ),
        ("tenants.red.shaping.min_rate", "not a frame rate"),
        ("tenants.red.shaping.weight", "out of range"),
        ("tenants.red.shaping.queue", "a quarter of switch.frames"),
    ];
    for ((what, from, to), (field, reason)) in cases.iter().zip(want) {
        assert!(good.contains(from), "{what}: fixture");
        let e = err_of(&good.replacen(from, to, 1));
        assert!(e.contains(field) && e.contains(reason), "{what}: {field} / {reason} not in {e}");
    }
}

// Regression (fuzz/config, 2026-11-26): the `config` crate reads a quoted key as a path
// expression, so `'hu[3939979799]' = 7` made it allocate 378 GB and abort the process (a
// reload of such a file killed the switch). Keys are checked first.
#[test]
fn keys_that_are_not_plain_identifiers_are_refused_not_a_crash() {
    let e = control::config::load_str("x.toml", "'hu[3939979799]'=7").unwrap_err().to_string();
    assert!(e.contains("x.toml") && e.contains("hu[3939979799]") && e.contains("letters"), "{e}");
    let dotted = "[ports.up]\ninterface = \"u\"\nkind = \"uplink\"\n\
                  [tenants.\"red.blue\"]\nattach = [{ port = \"up\", vlan = 5 }]\n";
    let e = control::config::load_str("y.toml", dotted).unwrap_err().to_string();
    assert!(e.contains("tenants.red.blue") && e.contains("letters"), "{e}");
    let env = [("XSWITCH__SWITCH[99999999999]".to_string(), "1".to_string())].into_iter().collect();
    let e = load_str_with_env("z.toml", "", Some(env)).unwrap_err().to_string();
    assert!(e.contains("XSWITCH__SWITCH[99999999999]"), "{e}");
}

// Issue 18: a wrong value from an environment override names the variable, not the file.
#[test]
fn an_override_error_names_the_variable() {
    let text = "[ports.up]\ninterface = \"u0\"\nkind = \"uplink\"\n\
                [tenants.red]\nattach = [{ port = \"up\", vlan = 100 }]\n";
    let env: std::collections::HashMap<String, String> =
        [("XSWITCH__SWITCH__WORKERS".to_string(), "lots".to_string())].into_iter().collect();
    let err = control::config::load::load_str_with_env("sw.toml", text, Some(env))
        .unwrap_err()
        .to_string();
    assert!(err.contains("environment XSWITCH__SWITCH__WORKERS: \"lots\""), "{err}");
}

// Issue 18: every schema problem at once, each with its line and column.
#[test]
fn schema_errors_come_all_at_once_with_places() {
    let text = "[switch]\nworkers = \"two\"\nframez = 1\n\
                [ports.up]\ninterface = \"u0\"\nkind = \"uplink\"\n\
                [tenants.red]\nattach = [{ port = \"up\", vlan = 100 }]\nfdb_quotas = 5\n";
    let err = control::config::load_str("sw.toml", text).unwrap_err().to_string();
    assert!(err.starts_with("sw.toml: 3 problem(s):"), "{err}");
    assert!(
        err.contains(
            "switch.framez: line 3, column 1: unknown key \"framez\"; did you mean `frames`?"
        ),
        "{err}"
    );
    assert!(err.contains("switch.workers: line 2, column 1: invalid type"), "{err}");
    assert!(
        err.contains("tenants.red.fdb_quotas: line 9, column 1:") && err.contains("`fdb_quota`"),
        "{err}"
    );
}

/// Three ports and two tenants; `extra` appended.
fn live(extra: &str, without: &[&str]) -> config::Config {
    let mut text = String::from(
        "[switch]\nframes = 32768\n[ports.a]\ninterface = \"ia\"\nkind = \"tenant\"\n\
         [ports.b]\ninterface = \"ib\"\nkind = \"tenant\"\n\
         [ports.up]\ninterface = \"iu\"\nkind = \"uplink\"\n\
         [tenants.blue]\nattach = [{ port = \"up\", vlan = 200 }]\n\
         [tenants.red]\nattach = [{ port = \"a\" }, { port = \"up\", vlan = 100 }]\n",
    );
    text += extra;
    let mut cfg = load_str("live.toml", &text).unwrap();
    for n in without {
        cfg.ports.remove(*n);
        cfg.tenants.remove(*n);
    }
    cfg
}

// Issue 17: a reload compiles against the running snapshot. Ports and tenants keep their ids
// (and the generation they took them in); a removed one leaves its id vacant; a new one takes
// an id that was vacant before this reload, never one vacated by it, else a new one.
#[test]
fn ids_stay_with_their_ports_and_tenants_across_reloads() {
    use dataplane::snapshot::{TenantId, VACANT};
    let g1 = compile(&live("", &[]), 1).unwrap();
    let ids = |s: &dataplane::snapshot::Snapshot| -> Vec<(String, u64)> {
        s.ports.iter().map(|p| (p.name.clone(), p.since)).collect()
    };
    assert_eq!(ids(&g1), [("a".into(), 1), ("b".into(), 1), ("up".into(), 1)]);
    // b goes; green comes: b's id stays vacant, green is appended.
    let green = "[tenants.green]\nattach = [{ port = \"up\", vlan = 300 }]\n";
    let g2 = control::compile_next(&live(green, &["b"]), Some(&g1), 2).unwrap();
    assert_eq!(ids(&g2), [("a".into(), 1), (String::new(), VACANT), ("up".into(), 1)]);
    assert_eq!(g2.tenant_by_name("blue"), Some(TenantId(0)));
    assert_eq!(g2.tenant_by_name("red"), Some(TenantId(1)));
    assert_eq!(g2.tenant_by_name("green"), Some(TenantId(2)));
    assert_eq!(g2.tenants[2].since, 2);
    assert_eq!(g2.tenants[1].since, 1, "red keeps the generation it came in");
    // A frame of red on `up` still resolves to red's id.
    assert_eq!(g2.resolve(PortId(2), Some(100)).map(|r| r.0), Some(TenantId(1)));
    // blue goes and c comes: c takes b's id (vacant since generation 2), blue's id stays
    // vacant (vacated now), and a later tenant could take it.
    let c = "[ports.c]\ninterface = \"ic\"\nkind = \"tenant\"\n";
    let g3 =
        control::compile_next(&live(&format!("{c}{green}"), &["b", "blue"]), Some(&g2), 3).unwrap();
    assert_eq!(ids(&g3), [("a".into(), 1), ("c".into(), 3), ("up".into(), 1)]);
    assert!(g3.tenants[0].is_vacant());
    assert_eq!(
        g3.live_tenants().map(|(_, t)| t.name.as_str()).collect::<Vec<_>>(),
        ["red", "green"]
    );
    let amber = "[tenants.amber]\nattach = [{ port = \"c\" }]\n";
    let g4 =
        control::compile_next(&live(&format!("{c}{green}{amber}"), &["b", "blue"]), Some(&g3), 4)
            .unwrap();
    assert_eq!(g4.tenant_by_name("amber"), Some(TenantId(0)), "blue's id, vacant since 3");
    assert_eq!(g4.tenants[0].since, 4);
}

// Issue 17: a tenant's IPFIX observation domain is its own (explicit, or derived from its
// name), never its position: adding a tenant does not renumber the others.
#[test]
fn observation_domains_follow_names_and_must_differ() {
    let one = live("", &[]);
    let more = live("[tenants.aaa]\nattach = [{ port = \"b\" }]\n", &[]);
    for name in ["red", "blue"] {
        let d = |c: &config::Config| c.tenants[name].observation_domain(name);
        assert_eq!(d(&one), d(&more), "{name}'s domain moved when a tenant came");
    }
    assert_ne!(one.tenants["red"].observation_domain("red"), 0);
    let e = err_of(
        "[ports.up]\ninterface = \"iu\"\nkind = \"uplink\"\n\
         [tenants.red]\nattach = [{ port = \"up\", vlan = 100 }]\nobservation_domain = 9\n\
         [tenants.blue]\nattach = [{ port = \"up\", vlan = 200 }]\nobservation_domain = 9\n",
    );
    assert!(e.contains("observation_domain") && e.contains("9 is tenant blue's too"), "{e}");
}

/// A directory with `main.toml` (`main`) and `tenants.d/NAME` files (`frags`).
fn fragments(tag: &str, main: &str, frags: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xswitch-frag-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tenants.d")).unwrap();
    std::fs::write(dir.join("main.toml"), main).unwrap();
    for (name, text) in frags {
        std::fs::write(dir.join("tenants.d").join(name), text).unwrap();
    }
    dir.join("main.toml")
}

const MAIN: &str = "include = [\"tenants.d/*.toml\"]\n[switch]\nframes = 32768\n\
    [ports.up]\ninterface = \"iu\"\nkind = \"uplink\"\n\
    [tenants.red]\nattach = [{ port = \"up\", vlan = 100 }]\n";

// Issue 17: an orchestrator adds one file per VM or tenant; every error names the file.
#[test]
fn fragments_join_the_main_file_and_errors_name_the_fragment() {
    let vm1 = "[ports.vm1]\ninterface = \"tap1\"\nkind = \"tenant\"\n\
               [tenants.blue]\nattach = [{ port = \"vm1\" }, { port = \"up\", vlan = 200 }]\n";
    let main = fragments("ok", MAIN, &[("vm1.toml", vm1), ("notes.txt", "not toml at all [")]);
    let cfg = config::load(&main).unwrap();
    assert_eq!(cfg.ports.keys().collect::<Vec<_>>(), ["up", "vm1"]);
    assert_eq!(cfg.tenants.keys().collect::<Vec<_>>(), ["blue", "red"]);
    compile(&cfg, 1).unwrap();

    // A wrong key in a fragment: the fragment, with its own line.
    let bad = vm1.replace("kind = \"tenant\"", "kind = \"tenant\"\nqueuez = 2");
    let e = config::load(&fragments("key", MAIN, &[("vm1.toml", &bad)])).unwrap_err().to_string();
    assert!(e.contains("vm1.toml") && e.contains("ports.vm1.queuez: line 4"), "{e}");
    // A rule between fields broken by a fragment's tenant: the field and the fragment.
    let bad = vm1.replace("{ port = \"vm1\" }", "{ port = \"vm9\" }");
    let e = config::load(&fragments("ref", MAIN, &[("vm1.toml", &bad)])).unwrap_err().to_string();
    assert!(e.contains("tenants.blue.attach[0]") && e.contains("vm1.toml)"), "{e}");
    // The same name twice.
    let twice = "[tenants.red]\nattach = [{ port = \"up\", vlan = 300 }]\n";
    let e = config::load(&fragments("dup", MAIN, &[("b.toml", twice)])).unwrap_err().to_string();
    assert!(
        e.contains("b.toml")
            && e.contains("tenants.red: is defined in")
            && e.contains("main.toml too"),
        "{e}"
    );
    // Only ports and tenants in a fragment.
    let e = config::load(&fragments("sec", MAIN, &[("s.toml", "[switch]\nworkers = 2\n")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("s.toml") && e.contains("switch: a fragment holds only"), "{e}");
    // A pattern that matches nothing is an empty directory; a plain file that is missing is
    // an error.
    let cfg = config::load(&fragments("none", MAIN, &[])).unwrap();
    assert_eq!(cfg.tenants.len(), 1);
    let main = fragments("missing", &MAIN.replace("tenants.d/*.toml", "vm7.toml"), &[]);
    let e = config::load(&main).unwrap_err().to_string();
    assert!(e.contains("include[0]") && e.contains("\"vm7.toml\""), "{e}");
}

#[test]
fn vhost_user_ports_have_a_socket_and_up_to_16_queue_pairs() {
    let port = "[ports.vm]\nkind = \"tenant\"\nvhost_user = { socket = \"/run/x/vm.sock\" }\n";
    let ok = format!("{GOOD}{port}");
    let c = load_str("test.toml", &ok).unwrap();
    let v = c.ports["vm"].vhost_user.as_ref().unwrap();
    assert_eq!(v.mode, config::model::VhostMode::Server);
    assert!(compile(&c, 1).is_ok());
    let client = ok.replace("vm.sock\" }", "vm.sock\", mode = \"client\" }");
    let v = load_str("test.toml", &client).unwrap().ports["vm"].vhost_user.clone().unwrap();
    assert_eq!(v.mode, config::model::VhostMode::Client);
    let four = ok.replace("kind = \"tenant\"\nvhost", "queues = 4\nkind = \"tenant\"\nvhost");
    let c = load_str("test.toml", &four).unwrap();
    assert_eq!(c.ports["vm"].queues, 4);
    assert!(compile(&c, 1).is_ok());
    for (what, bad, field, why) in [
        (
            "relative path",
            ok.replace("/run/x/vm.sock", "vm.sock"),
            "ports.vm.vhost_user.socket",
            "absolute",
        ),
        (
            "an interface too",
            ok.replace("kind = \"tenant\"\nvhost", "interface = \"x\"\nkind = \"tenant\"\nvhost"),
            "ports.vm",
            "not an interface",
        ),
        (
            "17 queue pairs",
            ok.replace("kind = \"tenant\"\nvhost", "queues = 17\nkind = \"tenant\"\nvhost"),
            "ports.vm.queues",
            "at most 16 queue pairs",
        ),
        ("a mode of its own", client.replace("\"client\"", "\"peer\""), "mode", "unknown variant"),
        (
            "one socket twice",
            format!(
                "{ok}[ports.vm2]\nkind = \"tenant\"\nvhost_user = {{ socket = \"/run/x/vm.sock\" }}\n"
            ),
            "vhost_user.socket",
            "already used by port",
        ),
    ] {
        let e = err_of(&bad);
        assert!(e.contains(field) && e.contains(why), "{what}: {e}");
    }
}
