//! Policy on real traffic: ACLs, security groups, connection tracking, anti-spoofing, with one
//! worker and with two.
//! Network namespaces and veth pairs built per test (unique names, torn down even when a
//! test fails), `xswitch run` on the host ends. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// An ARP reply: `spa` is at `sha`.
fn raw_arp_reply(src_mac: [u8; 6], dst_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    let mut f = [dst_mac, src_mac].concat();
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[10, 9, 1, 2]);
    f
}

/// Captures frames on eth0 of `host`'s namespace that carry the UDP marker port 12345 or come
/// from `mac`, for `secs` seconds; returns tcpdump's lines.
fn capture(lab: &Lab, host: &str, mac: &str, secs: &str) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns_name(host),
            "timeout",
            secs,
            "tcpdump",
            "-i",
            "eth0",
            "-e",
            "-nn",
            "-l",
            &format!("ether src {mac} or udp port 12345 or (vlan and udp port 12345)"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn policy_allows_denies_tracks_and_stops_spoofing_on_real_traffic() {
    if !can_run("policy_allows_denies_tracks_and_stops_spoofing") {
        return;
    }
    policy_scenario(1);
}

#[test]
fn policy_holds_with_two_workers_where_replies_arrive_on_the_other_worker() {
    if !can_run("policy_holds_with_two_workers") {
        return;
    }
    // h1 is polled by worker 0, h2 by worker 1: a connection opened by worker 0 is answered
    // on worker 1, which knows it only from worker 0's announcement.
    policy_scenario(2);
}

fn policy_scenario(workers: u32) {
    let mut lab = Lab::new();
    lab.edit_config(|c| c.replace("[switch]\n", &format!("[switch]\nworkers = {workers}\n")));
    split_h1_h2(&lab);
    const H1_MAC: &str = "02:00:00:09:01:01";
    lab.set_mac("h1", H1_MAC);
    lab.edit_config(|c| {
        c.replace(
            "{ port = \"h1\" }",
            &format!("{{ port = \"h1\", macs = [\"{H1_MAC}\"], ips = [\"10.9.1.1\"] }}"),
        ) + r#"
[[tenants.red.acl]]
name = "no-5402"
priority = 10
direction = "to-tenant"
action = "deny"
proto = "tcp"
dst_port = 5402
[tenants.red.security_group]
rules = [
  { direction = "from-tenant" },
  { name = "iperf-in", direction = "to-tenant", proto = "tcp", ports = "5401-5402", remote = "10.9.1.0/24" },
  { name = "ping-in", direction = "to-tenant", proto = "icmp", remote = "10.9.1.0/24" },
]
"#
    });
    lab.start();

    // Allowed: ping and TCP to port 5401 (opened by iperf-in; the replies pass as part of it).
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let bps = lab.iperf("h1", "h2", "10.9.1.2", "5401", "1");
    assert!(bps > 10e6, "iperf3 to the allowed port: {bps} bit/s");
    // Denied by the ACL: port 5402 (which the group would open).
    let denied = |from: &str, to_host: &str, to: &str, port: &str| {
        let mut server = lab.iperf_server(to_host, port, true);
        let out = lab.ns_run(
            from,
            &[
                "timeout",
                "10",
                "iperf3",
                "-c",
                to,
                "-p",
                port,
                "-t",
                "1",
                "--connect-timeout",
                "1500",
            ],
        );
        let _ = server.kill();
        let _ = server.wait();
        !out.status.success()
    };
    assert!(denied("h1", "h2", "10.9.1.2", "5402"), "the ACL let port 5402 through");
    // Decision traces: an allowed packet, one the ACL denies, a spoofed one.
    let h2_mac = lab.mac("h2");
    let trace = |dport: &str, src: &str| {
        let (ok, out, err) = lab.ctl(
            true,
            &[
                "trace",
                "--port",
                "h1",
                "--src",
                src,
                "--dst",
                "10.9.1.2",
                "--dport",
                dport,
                "--src-mac",
                H1_MAC,
                "--dst-mac",
                &h2_mac,
            ],
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!("{}: {}", s["stage"].as_str().unwrap(), s["outcome"].as_str().unwrap())
            })
            .collect::<Vec<_>>()
    };
    let ok_steps = trace("5401", "10.9.1.1");
    let text = ok_steps.join("\n");
    assert!(text.contains("tenant: red") && text.contains("spoof check: sources owned"), "{text}");
    assert!(
        text.contains("behind z2") && text.contains("by iperf-in") && text.contains("output: z2"),
        "{text}"
    );
    let denied_steps = trace("5402", "10.9.1.1").join("\n");
    assert!(
        denied_steps.contains("ACL to-tenant: drop (policy): denied by rule no-5402"),
        "{denied_steps}"
    );
    assert!(!denied_steps.contains("output:"), "{denied_steps}");
    let spoofed = trace("5401", "10.9.1.99").join("\n");
    assert!(spoofed.contains("spoof check: drop (spoof)"), "{spoofed}");
    // Regression (issue 18): without --dst-mac the trace assumed broadcast, so the denied
    // attempt was traced as flooded and allowed. The destination MAC is now the one red's
    // tables know for 10.9.1.2 (h2's, from its flows), the verdict a field, and --exit-code
    // makes a drop a failure.
    let no_mac = |dport: &str, json: bool, extra: &[&str]| {
        let mut args = vec![
            "trace",
            "--port",
            "h1",
            "--src",
            "10.9.1.1",
            "--dst",
            "10.9.1.2",
            "--dport",
            dport,
            "--src-mac",
            H1_MAC,
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xswitch"));
        cmd.arg("ctl").arg("--socket").arg(lab.dir.join("ctl.sock"));
        if json {
            cmd.arg("--json");
        }
        cmd.args(&args).output().unwrap()
    };
    // The human form: one line per stage.
    let out = no_mac("5402", false, &["--dst-mac", &h2_mac]);
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.lines().any(|l| l.starts_with("ACL to-tenant") && l.contains("no-5402")), "{out}");
    let o = no_mac("5402", true, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dst_mac"], h2_mac.as_str(), "{v}");
    assert!(v["dst_mac_from"].as_str().unwrap().contains("learned"), "{v}");
    assert_eq!(v["verdict"]["action"], "drop", "{v}");
    assert_eq!(v["verdict"]["reason"], "policy", "{v}");
    assert_eq!(v["verdict"]["rule"], "no-5402", "{v}");
    let table = String::from_utf8_lossy(&no_mac("5402", false, &[]).stdout).to_string();
    assert!(table.lines().any(|l| l == "verdict: drop (policy) by rule no-5402"), "{table}");
    assert!(table.contains(&h2_mac), "the table says which MAC it assumed:\n{table}");
    assert_eq!(no_mac("5402", false, &["--exit-code"]).status.code(), Some(1));
    let allowed = no_mac("5401", true, &["--exit-code"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", String::from_utf8_lossy(&allowed.stdout));
    let v: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(v["verdict"]["action"], "forward", "{v}");
    assert!(v["verdict"]["rule"].as_str().unwrap().contains("iperf-in"), "{v}");
    // An address nobody in the tenant has: broadcast, and it says so.
    let o = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .arg("ctl")
        .arg("--socket")
        .arg(lab.dir.join("ctl.sock"))
        .args(["--json", "trace", "--port", "h1", "--src", "10.9.1.1", "--dst", "10.9.1.77"])
        .args(["--src-mac", H1_MAC])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dst_mac"], "ff:ff:ff:ff:ff:ff", "{v}");
    assert!(v["dst_mac_from"].as_str().unwrap().starts_with("assumed broadcast"), "{v}");

    // The connections of the allowed iperf3 run are tracked (by the worker(s) that saw them).
    let (ok, out, err) = lab.ctl(true, &["connections", "red"]);
    assert!(ok, "{err}");
    let conns: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        conns.as_array().unwrap().iter().any(|c| c["proto"] == 6 && c["to"] == "10.9.1.2:5401"),
        "{conns}"
    );
    // A sampled live trace of red while h1 pings h2: real frames, their outcome, the cache's
    // part and every stage's verdict. The first echo request decides the flow; the next ones
    // hit the cache.
    let sock = lab.dir.join("ctl.sock");
    let live = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .args(["ctl", "--socket"])
        .arg(&sock)
        .args(["--json", "trace-live", "red", "--count", "6", "--timeout", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(lab.ping("h1", "10.9.1.2", "4"));
    let o = live.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 6, "{v}");
    for x in samples {
        let steps = x["steps"].as_array().unwrap();
        assert!(steps.iter().any(|s| s["stage"] == "tenant" && s["outcome"] == "red"), "{x}");
        assert!(x["outcome"].as_str().unwrap().starts_with("tx on "), "{x}");
    }
    assert!(samples.iter().any(|x| x["flow_cache"] == "hit"), "{v}");
    // A denied frame shows as a drop, with the rule in its steps. The sample may also catch an
    // ARP exchange of the two hosts (their neighbour entries age), so it takes the first three
    // frames of red (iperf3 sends its SYN at least twice) and looks for the denied one.
    let live = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .args(["ctl", "--socket"])
        .arg(&sock)
        .args(["--json", "trace-live", "red", "--count", "3", "--timeout", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(denied("h1", "h2", "10.9.1.2", "5402"));
    let o = live.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let drops: Vec<_> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["outcome"] == "drop (policy)")
        .collect();
    assert!(!drops.is_empty(), "{v}");
    assert!(drops.iter().all(|x| x.to_string().contains("no-5402")), "{v}");

    // The busiest flows of red: the iperf3 data connection h1 -> h2:5401 leads by bytes.
    let (ok, out, err) = lab.ctl(true, &["flows", "red", "--top", "5", "--by", "bytes"]);
    assert!(ok, "{err}");
    let flows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = flows.as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() <= 5, "{flows}");
    let top = &rows[0];
    assert!(
        top["proto"] == 6
            && top["to"] == "10.9.1.2:5401"
            && top["from"].as_str().unwrap().starts_with("10.9.1.1:")
            && top["action"] == "accept",
        "{flows}"
    );
    // At least 10 Mbit/s for a second went that way (iperf3 said so above).
    assert!(top["bytes"].as_u64().unwrap() > 1_000_000, "{flows}");
    let bytes: Vec<u64> = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "sorted by bytes: {bytes:?}");
    let (ok, out, _) = lab.ctl(true, &["flows", "red", "--top", "1", "--by", "packets"]);
    let by_packets: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && by_packets.as_array().unwrap().len() == 1, "{by_packets}");
    let (ok, out, _) = lab.ctl(false, &["flows", "red"]);
    assert!(ok && out.lines().any(|l| l.contains("10.9.1.2:5401")), "{out}");
    // Blue has no policy and no flow log: no per-flow counters, and the error says why.
    let (ok, _, err) = lab.ctl(false, &["flows", "blue"]);
    assert!(!ok && err.contains("no per-flow counters"), "{err}");

    // Unsolicited inbound: h2 -> h1:5403 is opened by no rule (h1's outbound connections to
    // h2 were answered above only because they were tracked).
    assert!(denied("h2", "h1", "10.9.1.1", "5403"), "an unsolicited connection got through");

    // Spoofing from h1: another source MAC, another source IP, an ARP reply claiming h2's
    // address. None of them may reach h2.
    let h1 = parse_mac(H1_MAC);
    let bcast = [0xff; 6];
    let cap = capture(&lab, "h2", "02:00:00:00:0b:ad", "4");
    std::thread::sleep(Duration::from_millis(1000));
    let frames = [
        raw_udp([2, 0, 0, 0, 0x0b, 0xad], bcast, &[], [10, 9, 1, 1], [10, 9, 1, 2]),
        raw_udp(h1, bcast, &[], [10, 9, 1, 99], [10, 9, 1, 2]),
        raw_arp_reply(h1, bcast, h1, [10, 9, 1, 2]),
    ];
    let args: Vec<String> = frames.iter().map(|f| hex(f)).collect();
    let mut cmd = vec!["python3", "-c", RAW_SEND];
    cmd.extend(args.iter().map(String::as_str));
    let o = lab.ns_run("h1", &cmd);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seen = String::from_utf8_lossy(&cap.wait_with_output().unwrap().stdout).to_string();
    assert!(
        !seen.contains("0b:ad") && !seen.contains("12345") && !seen.contains("10.9.1.2 is-at"),
        "spoofed frames reached h2:\n{seen}"
    );

    // VLAN hopping: blue's h3 sends a frame double-tagged 100 (red's uplink VLAN) over 200;
    // red's hosts never see it.
    let c1 = capture(&lab, "h1", "02:00:00:00:0b:0b", "4");
    let c2 = capture(&lab, "h2", "02:00:00:00:0b:0b", "4");
    std::thread::sleep(Duration::from_millis(1000));
    let hop = raw_udp([2, 0, 0, 0, 0x0b, 0x0b], bcast, &[100, 200], [10, 9, 1, 3], [10, 9, 1, 1]);
    let o = lab.ns_run("h3", &["python3", "-c", RAW_SEND, &hex(&hop)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for c in [c1, c2] {
        let seen = String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).to_string();
        assert!(!seen.contains("0b:0b"), "a double-tagged frame from blue reached red:\n{seen}");
    }

    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    // Exactly the three spoofed frames, and the double-tagged one as of no tenant.
    assert!(log.contains("dropped spoof: 3\n"), "{log}");
    assert!(log.contains("dropped unknown_tenant: 1\n"), "{log}");
    assert!(log.contains("dropped policy:"), "{log}");
    assert!(
        log.contains("acl red to-tenant no-5402:"),
        "the ACL rule, not the group, denied 5402:\n{log}"
    );
    assert!(log.contains("balanced"), "{log}");
    if workers == 2 {
        assert_eq!((worker_of(&log, "h1"), worker_of(&log, "z2")), (Some(0), Some(1)), "{log}");
    }
}
