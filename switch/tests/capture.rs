//! Live captures (pcap, pcapng to tshark) and flow records (JSON lines and IPFIX) of real
//! traffic.
//! Network namespaces and veth pairs built per test (unique names, torn down even when a
//! test fails), `xswitch run` on the host ends. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

// Issue 18: a capture streams to tshark as it is written (`-w -`); pcapng carries each frame's
// verdict and drop reason; a port capture holds the frames of no tenant.
#[test]
fn captures_stream_to_tshark_carry_verdicts_and_take_a_whole_port() {
    if !can_run("captures_stream_to_tshark") {
        return;
    }
    let mut lab = Lab::new();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "1"));
    let sock = lab.dir.join("ctl.sock").display().to_string();
    // Streamed: the capture ends after 4 frames, and tshark reads them from the pipe.
    let stream = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} ctl --socket {sock} capture start red -w - --proto icmp --count 4 \
             | tshark -r - -T fields -e ip.src -e icmp.type",
            env!("CARGO_BIN_EXE_xswitch")
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let mut stream = stream;
    let done = exits_within(&mut stream, Duration::from_secs(20));
    let out = stream.wait_with_output().unwrap();
    let rows = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(done.is_some(), "the stream did not end at its count");
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        ["10.9.1.1\t8", "10.9.1.2\t0", "10.9.1.1\t8", "10.9.1.2\t0"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything arriving on h1's port, as pcapng: a frame of no tenant (tagged 200 on an
    // untagged attachment) and a forwarded ping.
    let file = lab.dir.join("h1.pcapng").display().to_string();
    let (ok, _, err) =
        lab.ctl(false, &["capture", "start", "--port", "h1", "-w", &file, "--format", "pcapng"]);
    assert!(ok, "{err}");
    let h1 = parse_mac(&lab.mac("h1"));
    let tagged = raw_udp(h1, [0xff; 6], &[200], [10, 9, 1, 1], [10, 9, 1, 2]);
    let o = lab.ns_run("h1", &["python3", "-c", RAW_SEND, &hex(&tagged)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab.ping("h1", "10.9.1.2", "1"));
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = lab.ctl(false, &["capture", "stop"]);
    assert!(ok, "{err}");
    let o = Command::new("tshark")
        .args(["-r", &file, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment"])
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        rows.lines().any(|l| l == "h1\tdrop (unknown_tenant); from the tenant"),
        "the frame of no tenant, with its drop reason:\n{rows}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(rows.lines().any(|l| l == "h1\tforwarded; from the tenant"), "{rows}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}

#[test]
fn a_capture_of_one_tenant_holds_exactly_its_matching_frames() {
    if !can_run("a_capture_of_one_tenant") {
        return;
    }
    let mut lab = Lab::new();
    lab.start();
    // Teach the switch where the hosts are, so the traffic below is unicast; and let it run a
    // while (captures were once stamped late by the switch's uptime).
    assert!(lab.ping("h1", "10.9.1.2", "1"));
    std::thread::sleep(Duration::from_secs(2));
    let file = lab.dir.join("red.pcap");
    let f = file.display().to_string();
    let (ok, out, err) = lab.ctl(
        true,
        &["capture", "start", "red", "--file", &f, "--proto", "udp", "--l4-port", "9999"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("red.pcap"), "{out}");
    // A second capture is refused while one runs.
    let (ok, _, err) = lab.ctl(false, &["capture", "start", "blue", "--file", &f]);
    assert!(!ok && err.contains("is running"), "{err}");
    // Red: 5 matching datagrams, pings and another port that do not match. Blue: datagrams to
    // the same port, another tenant's.
    let mut sent_at = Vec::new();
    for (host, dst, port, n) in [
        ("h1", "10.9.1.2", "9999", "5"),
        ("h1", "10.9.1.2", "9998", "3"),
        ("h3", "10.9.1.1", "9999", "4"),
    ] {
        let o = lab.ns_run(host, &["python3", "-c", UDP_SEND, dst, port, n]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if sent_at.is_empty() {
            let times = String::from_utf8_lossy(&o.stdout).to_string();
            sent_at = times.lines().map(|t| t.trim().parse::<f64>().unwrap()).collect();
        }
    }
    assert!(lab.ping("h2", "10.9.1.1", "2"));
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out, err) = lab.ctl(true, &["capture", "stop"]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (stats["frames"].as_u64(), stats["skipped"].as_u64()),
        (Some(5), Some(0)),
        "{stats}"
    );
    // tshark reads the file: exactly the five red datagrams to port 9999 from h1, each stamped
    // within 10 ms of the wall-clock time its sender sent it.
    let o = Command::new("tshark")
        .args(["-r", &f, "-T", "fields", "-e", "ip.src", "-e", "udp.dstport"])
        .args(["-e", "frame.time_epoch"])
        .output()
        .expect("tshark (apt-get install tshark)");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 5, "{text}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(rows.iter().all(|r| r.starts_with("10.9.1.1\t9999\t")), "{text}");
    for (row, sent) in rows.iter().zip(&sent_at) {
        let stamped: f64 = row.rsplit('\t').next().unwrap().parse().unwrap();
        assert!(
            (stamped - sent).abs() < 0.010,
            "captured at {stamped:.6}, sent at {sent:.6}: {:.3} ms apart",
            (stamped - sent) * 1e3
        );
    }
    let (ok, _, err) = lab.ctl(false, &["capture", "stop"]);
    assert!(!ok && err.contains("no capture"), "{err}");
    // A capture still running at SIGTERM is written out and closed by the stop.
    let f2 = lab.dir.join("red2.pcap").display().to_string();
    let (ok, _, err) =
        lab.ctl(false, &["capture", "start", "red", "--file", &f2, "--proto", "icmp"]);
    assert!(ok, "{err}");
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    let o = Command::new("tshark")
        .args(["-r", &f2, "-T", "fields", "-e", "icmp.type"])
        .output()
        .unwrap();
    let types = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(types.lines().filter(|t| *t == "8").count(), 2, "{types}\n{log}");
    assert_eq!(types.lines().filter(|t| *t == "0").count(), 2, "{types}");
}

/// Serves one TCP connection on `port`: reads until the peer closes, then closes.
const TCP_SINK: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
c, _ = s.accept()
while c.recv(65536):
    pass
c.close()
"#;

/// Connects to `dst`:`port`, sends `n` bytes, closes.
const TCP_SEND: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"x" * int(sys.argv[3]))
c.close()
"#;

#[test]
fn a_closed_tcp_connection_leaves_one_flow_record_per_direction_with_its_counts() {
    if !can_run("a_closed_tcp_connection_leaves_one_flow_record") {
        return;
    }
    let mut lab = Lab::new();
    let log = lab.dir.join("red-flows.jsonl");
    // The same records as IPFIX to a collector on loopback: tshark decodes them.
    let port = 20_000 + std::process::id() % 20_000;
    // Red's own IPFIX observation domain (the default is a hash of the name).
    let section = format!(
        "observation_domain = 7\n[tenants.red.flow_log]\nfile = \"{}\"\nipfix = true\n",
        log.display()
    );
    lab.edit_config(|c| {
        c.replace("[tenants.blue]", &(section + "[tenants.blue]"))
            .replace("[switch]\n", &format!("[switch]\nflow_log_ipfix = \"127.0.0.1:{port}\"\n"))
    });
    let collector = Command::new("tshark")
        .args(["-i", "lo", "-f", &format!("udp port {port}"), "-a", "duration:20", "-l", "-n"])
        .args(["-d", &format!("udp.port=={port},cflow"), "-T", "fields", "-E", "aggregator=;"])
        .args(["-e", "cflow.od_id", "-e", "cflow.srcaddr", "-e", "cflow.dstport"])
        .args(["-e", "cflow.packets", "-e", "cflow.octets", "-e", "cflow.forwarding_status"])
        .args(["-e", "cflow.observation_domain_name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.start();
    // What h2 sees of the connection, to compare with: frames and bytes per direction.
    let dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns_name("h2"),
            "timeout",
            "8",
            "tcpdump",
            "-i",
            "eth0",
            "-nn",
            "-l",
            "-e",
            "tcp port 7777",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sink = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("h2"), "python3", "-c", TCP_SINK, "7777"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let o = lab.ns_run("h1", &["python3", "-c", TCP_SEND, "10.9.1.2", "7777", "50000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut sink = sink;
    assert!(sink.wait().unwrap().success());
    let seen = String::from_utf8_lossy(&dump.wait_with_output().unwrap().stdout).to_string();
    // "... length 66: 10.9.1.1.40000 > 10.9.1.2.7777: ..."
    let count = |from: &str| -> (u64, u64) {
        seen.lines()
            .filter(|l| l.contains(&format!(": {from}.")))
            .filter_map(|l| l.split("length ").nth(1)?.split(':').next()?.parse::<u64>().ok())
            .fold((0, 0), |(p, b), len| (p + 1, b + len))
    };
    let (to_h2, from_h2) = (count("10.9.1.1"), count("10.9.1.2"));
    assert!(to_h2.0 >= 4 && from_h2.0 >= 3, "{seen}");
    // The flow ended (FIN) more than a second ago: its records are out, before any stop.
    std::thread::sleep(Duration::from_millis(2000));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let records: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |src: &str, sport: Option<u64>, dport: Option<u64>| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["src"] == src && r["proto"] == 6)
            .filter(|r| {
                sport.is_none_or(|p| r["sport"] == p) && dport.is_none_or(|p| r["dport"] == p)
            })
            .collect()
    };
    let up = of("10.9.1.1", None, Some(7777));
    let down = of("10.9.1.2", Some(7777), None);
    assert_eq!((up.len(), down.len()), (1, 1), "one record per direction:\n{text}");
    for (r, (p, b)) in [(up[0], to_h2), (down[0], from_h2)] {
        assert_eq!(
            (r["packets"].as_u64(), r["bytes"].as_u64()),
            (Some(p), Some(b)),
            "{r} vs tcpdump\n{seen}"
        );
        assert_eq!(r["action"], "accept");
        assert_eq!(r["ended"], true);
        assert_eq!(r["tenant"], "red");
        assert!(r["vlan"].is_null(), "untagged: {r}");
    }
    assert_eq!((up[0]["in_port"].as_str(), down[0]["in_port"].as_str()), (Some("h1"), Some("h2")));
    let (ok, out) = lab.stop();
    assert!(ok, "{out}");
    // The collector saw the data connection h1 -> h2:7777 with tcpdump's counts, forwarded, in
    // red's observation domain.
    let _ = Command::new("kill").arg(collector.id().to_string()).status();
    let seen_ipfix =
        String::from_utf8_lossy(&collector.wait_with_output().unwrap().stdout).to_string();
    // One line per message, a column per field, the records' values joined by ';'.
    let records: Vec<Vec<String>> = seen_ipfix
        .lines()
        .flat_map(|l| {
            let cols: Vec<Vec<&str>> = l.split('\t').map(|c| c.split(';').collect()).collect();
            let n = cols.get(1).map_or(0, Vec::len);
            (0..n)
                .map(|i| {
                    cols.iter()
                        .enumerate()
                        // The domain is one per message.
                        .map(|(c, v)| v.get(if c == 0 { 0 } else { i }).unwrap_or(&"").to_string())
                        .collect()
                })
                .collect::<Vec<Vec<String>>>()
        })
        .collect();
    let expect: Vec<String> = ["7", "10.9.1.1", "7777"]
        .into_iter()
        .map(String::from)
        .chain([to_h2.0.to_string(), to_h2.1.to_string(), "1".into(), "red".into()])
        .collect();
    assert!(
        records.contains(&expect),
        "IPFIX records (domain, src, dport, packets, octets, forwarded, tenant), wanted \
         {expect:?}:\n\
         {seen_ipfix}"
    );
}

/// A switch started with no flow log at all (its writer parked, waking for nothing) writes the
/// records of a tenant whose flow log a reload adds.
#[test]
fn flow_logs_a_reload_adds_to_a_switch_without_any_are_written() {
    if !can_run("flow_logs_a_reload_adds_to_a_switch_without_any_are_written") {
        return;
    }
    let mut lab = Lab::new();
    let log = lab.dir.join("red-flows.jsonl");
    lab.start();
    std::thread::sleep(Duration::from_millis(500));
    let section = format!("[tenants.red.flow_log]\nfile = \"{}\"\n", log.display());
    lab.edit_config(|c| c.replace("[tenants.blue]", &(section + "[tenants.blue]")));
    let (ok, out, err) = lab.ctl(false, &["reload"]);
    assert!(ok, "{out}{err}");
    let sink = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("h2"), "python3", "-c", TCP_SINK, "7778"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let o = lab.ns_run("h1", &["python3", "-c", TCP_SEND, "10.9.1.2", "7778", "20000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut sink = sink;
    assert!(sink.wait().unwrap().success());
    // The flow ended (FIN): its records are out within a few seconds, before any stop.
    let t0 = std::time::Instant::now();
    let mut text = String::new();
    while t0.elapsed() < Duration::from_secs(5) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l.contains("\"dport\":7778")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let records: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        records.iter().any(|r| r["src"] == "10.9.1.1" && r["dport"] == 7778 && r["proto"] == 6),
        "no record of the connection:\n{text}"
    );
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}
