//! The control socket and reloads on a running switch: every ctl command, MAC tables kept
//! across reloads, reloads under load.
//! Network namespaces and veth pairs built per test (unique names, torn down even when a
//! test fails), `xswitch run` on the host ends. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `xswitch ctl --socket SOCK [--json] ARGS` as the current user; (success, stdout, stderr).
#[test]
fn every_ctl_command_answers_a_running_switch() {
    if !can_run("every_ctl_command_answers") {
        return;
    }
    let mut lab = Lab::new();
    // A count rule: red's flows are counted (for `ctl flows`), nothing else changes.
    lab.edit_config(|c| {
        c + "[[tenants.red.acl]]\nname = \"all\"\npriority = 1\ndirection = \"from-tenant\"\n\
             action = \"count\"\n"
    });
    // Not running yet: a plain message, non-zero exit.
    let (ok, _, err) = lab.ctl(false, &["status"]);
    assert!(!ok && err.contains("xswitch is not running"), "{err}");
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "3"));
    // Figures are published every 250 ms.
    std::thread::sleep(Duration::from_millis(600));

    let st = lab.ctl_json("status");
    assert_eq!(st["generation"], 1);
    assert_eq!((st["ports"].as_u64(), st["tenants"].as_u64()), (Some(4), Some(2)));
    assert_eq!(st["workers"][0]["generation"], 1);
    assert!(st["workers"][0]["packets"].as_u64().unwrap() >= 6, "{st}");
    assert_eq!(st["frames"]["total"], 16384);
    assert_eq!(st["reloads"]["applied"], 0);

    let ports = lab.ctl_json("ports");
    let h1 = ports.as_array().unwrap().iter().find(|p| p["name"] == "h1").expect("port h1");
    assert_eq!(h1["interface"], lab.ifname("h1"));
    assert_eq!(h1["kind"], "tenant");
    assert_eq!(h1["queues"][0]["worker"], 0);
    assert!(h1["rx_packets"].as_u64().unwrap() >= 3, "{h1}");

    let tenants = lab.ctl_json("tenants");
    let red = tenants.as_array().unwrap().iter().find(|t| t["name"] == "red").expect("red");
    let blue = tenants.as_array().unwrap().iter().find(|t| t["name"] == "blue").expect("blue");
    assert!(red["rx_packets"].as_u64().unwrap() >= 6, "{red}");
    // Blue's host sends only what its own stack says (IPv6 on: router solicitations, listener
    // reports): blue counts no frame its host did not send.
    let h3_sent = lab.ns_run("h3", &["cat", "/sys/class/net/eth0/statistics/tx_packets"]);
    let h3_sent: u64 = String::from_utf8_lossy(&h3_sent.stdout).trim().parse().unwrap();
    assert!(blue["rx_packets"].as_u64().unwrap() <= h3_sent, "{blue}, h3 sent {h3_sent}");
    assert_eq!(red["attachments"].as_array().unwrap().len(), 3);

    let counters = lab.ctl_json("counters");
    assert!(counters["rx_packets"].as_u64().unwrap() >= 6);
    assert_eq!(counters["drops"]["spoof"], 0);
    assert!(counters["fdb"]["learned"].as_u64().unwrap() >= 2);

    // The MAC table of red holds both hosts, behind their ports.
    let (ok, out, err) = lab.ctl(true, &["fdb", "red"]);
    assert!(ok, "{err}");
    let fdb: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ports: Vec<&str> =
        fdb.as_array().unwrap().iter().filter_map(|e| e["port"].as_str()).collect();
    assert!(ports.contains(&"h1") && ports.contains(&"h2"), "{fdb}");
    let (ok, _, err) = lab.ctl(false, &["fdb", "nobody"]);
    assert!(!ok && err.contains("no tenant \"nobody\""), "{err}");

    // Issue 18: what the switch logs changes while it runs.
    let (ok, out, err) = lab.ctl(false, &["log-level", "debug"]);
    assert!(ok && out.contains("log level debug (was info)"), "{out}{err}");
    let (ok, _, err) = lab.ctl(false, &["log-level", "chatty"]);
    assert!(!ok && err.contains("error, warn, info, debug or trace"), "{err}");
    let reload = lab.ctl_json("reload");
    assert_eq!(reload["generation"], 2);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(lab.ctl_json("status")["workers"][0]["generation"], 2);

    // The human forms: tables with headers.
    let (ok, out, _) = lab.ctl(false, &["ports"]);
    assert!(ok && out.starts_with("name") && out.contains("h1"), "{out}");
    let (ok, out, _) = lab.ctl(false, &["tenants"]);
    assert!(ok && out.contains("red") && out.contains("blue"), "{out}");
    let (ok, out, _) = lab.ctl(false, &["status"]);
    assert!(ok && out.contains("generation  2"), "{out}");
    // Issue 18: every table is for people: no Rust debug text (`Some(`, `None`, `{`).
    let cap = lab.dir.join("t.pcap").display().to_string();
    for args in [
        &["status"][..],
        &["ports"],
        &["tenants"],
        &["counters"],
        &["fdb", "red"],
        &["connections", "red"],
        &["flows", "red"],
        &["trace", "--port", "h1", "--src", "10.9.1.1", "--dst", "10.9.1.2"],
        &["trace", "--port", "up", "--vlan", "100", "--src", "10.9.1.9", "--dst", "10.9.1.1"],
        &["trace-live", "red", "--count", "1", "--timeout", "1"],
        &["capture", "start", "red", "--file", &cap],
        &["capture", "stop"],
    ] {
        if args[0] == "trace-live" {
            let _ = lab.ping("h1", "10.9.1.2", "1");
        }
        let (ok, out, err) = lab.ctl(false, args);
        assert!(ok, "ctl {args:?}: {err}");
        if args[0] == "connections" {
            assert!(out.contains("red has no security group"), "{out}");
        }
        for debug in ["Some(", "None", "{"] {
            assert!(!out.contains(debug), "ctl {args:?} prints {debug:?}:\n{out}");
        }
    }

    // Only root may use the socket: mode 0600, and a non-root process is refused.
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let sock = lab.dir.join("ctl.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('refused')\n";
    // The test directory must be traversable for the probe to reach the socket at all.
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("python3")
        .args(["-c", probe])
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "refused", "{o:?}");

    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(!sock.exists(), "the socket is removed on a clean stop");
}

// Regression (issue 17): every reload cleared every worker's MAC table, so unicast traffic
// flooded until the hosts spoke again. Also across reloads that add and remove a tenant and a
// port.
#[test]
fn a_reload_that_does_not_touch_a_tenant_keeps_its_macs_and_floods_nothing() {
    if !can_run("a_reload_keeps_macs") {
        return;
    }
    // Counts every flood copy: the hosts' IPv6 multicast (router solicitations, listener
    // reports) is flooded, as it must be.
    let mut lab = Lab::without_ipv6();
    lab.host("h4", "4");
    let base = std::fs::read_to_string(lab.config()).unwrap();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let macs = |lab: &Lab| {
        let fdb = lab.ctl_json_args(&["fdb", "red"]);
        let mut v: Vec<String> =
            fdb.as_array().unwrap().iter().map(|e| format!("{} {}", e["mac"], e["port"])).collect();
        v.sort();
        v
    };
    let before = macs(&lab);
    assert!(before.len() >= 2, "{before:?}");
    let copies = lab.ctl_json("counters")["flood_copies"].as_u64().unwrap();
    // Red's hosts ping each other through the reload, which changes only blue.
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("h1"), "ping", "-c", "150", "-i", "0.01"])
        .args(["-W", "1", "10.9.1.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Issue 17: blue changes, a tenant and its port come, then go again.
    let more = base.replace("[tenants.blue]\n", "[tenants.blue]\nfdb_quota = 100\n")
        + &format!("[ports.h4]\ninterface = \"{}\"\nkind = \"tenant\"\n", lab.ifname("h4"))
        + "[tenants.green]\nattach = [{ port = \"h4\" }, { port = \"up\", vlan = 300 }]\n";
    for (generation, text) in [(2, &more), (3, &base)] {
        std::fs::write(lab.config(), text).unwrap();
        let r = lab.ctl_json_args(&["reload"]);
        assert_eq!(r["generation"], generation, "{r}");
        assert_eq!(r["tenants"]["untouched"], serde_json::json!(["red"]), "{r}");
    }
    let mut ping = ping;
    assert!(exits_within(&mut ping, Duration::from_secs(20)).is_some_and(|s| s.success()));
    assert_eq!(macs(&lab), before, "red's MAC table across the reload");
    let after = lab.ctl_json("counters")["flood_copies"].as_u64().unwrap();
    assert_eq!(after, copies, "flood copies made across the reload");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}

#[test]
fn twenty_reloads_under_load_lose_nothing_and_a_bad_one_changes_nothing() {
    if !can_run("twenty_reloads_under_load") {
        return;
    }
    // A stream that must lose nothing, and iperf3 or thousands of connections: not beside
    // another test's load on two cores.
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let base = std::fs::read_to_string(lab.config()).unwrap();
    // Two valid configs that differ in the rules of blue, the other tenant.
    let blue = |port: u16| {
        format!(
            "[[tenants.blue.acl]]\npriority = 10\ndirection = \"to-tenant\"\naction = \"deny\"\n\
             proto = \"tcp\"\ndst_port = {port}\n"
        )
    };
    let (a, b) = (base.clone() + &blue(23), base.clone() + &blue(25));
    std::fs::write(lab.config(), &a).unwrap();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));

    // A numbered UDP stream h1 -> h2 (2 000 per second for 12 s) and TCP beside it at
    // 300 Mbit/s: below what the switch forwards here, so any loss would be the reloads', not
    // a saturated path's (a saturating TCP flow loses frames at the RX ring by design, and a
    // stream sharing that ring with it loses some too).
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", 24_000, 2_000);
    let tcp = std::thread::scope(|s| {
        let iperf =
            s.spawn(|| lab.iperf_with("h1", "h2", "10.9.1.2", "5304", &["-t", "10", "-b", "300M"]));
        for i in 0..20 {
            std::fs::write(lab.config(), if i % 2 == 0 { &b } else { &a }).unwrap();
            let (ok, out, err) = lab.ctl(true, &["reload"]);
            assert!(ok, "reload {i}: {err}");
            let r: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(r["generation"], 2 + i);
            std::thread::sleep(Duration::from_millis(400));
        }
        iperf.join().unwrap()
    });
    stream.expect_all(24_000, Duration::from_secs(30), &mut lab);
    assert!(tcp > 0.9 * 300e6, "iperf3 at 300 Mbit/s during the reloads: {tcp} bit/s");

    // An invalid file: rejected, reported, and the switch goes on with generation 21.
    std::fs::write(lab.config(), base.replace("kind = \"uplink\"", "kind = \"upl1nk\"")).unwrap();
    let (ok, _, err) = lab.ctl(false, &["reload"]);
    assert!(!ok && err.contains("kind"), "{err}");
    let st = lab.ctl_json("status");
    assert_eq!(st["generation"], 21);
    assert_eq!(
        (st["reloads"]["applied"].as_u64(), st["reloads"]["rejected"].as_u64()),
        (Some(20), Some(1))
    );
    assert!(st["reloads"]["last_error"].as_str().unwrap().contains("kind"), "{st}");
    // A change that cannot be made live: refused with the reason.
    std::fs::write(lab.config(), a.replace("ring_size = 256", "ring_size = 128")).unwrap();
    let (ok, _, err) = lab.ctl(false, &["reload"]);
    assert!(!ok && err.contains("[switch] changed"), "{err}");
    assert!(lab.ping("h1", "10.9.1.2", "2"), "the switch stopped switching");
    // SIGHUP reloads too (the file is valid again).
    std::fs::write(lab.config(), &a).unwrap();
    let pid = lab.switch.as_ref().unwrap().id().to_string();
    must("kill", &["-HUP", &pid]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lab.ctl_json("status")["generation"], 22);

    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains("balanced"), "{log}");
}

/// Issue 24: the control socket and the metrics endpoint serve clients concurrently, with
/// bounds. Beside 2 000 idle control connections, 2 000 idle metrics connections and ten
/// clients that send a request one byte a second, `xswitch ctl status` and a scrape each answer
/// within a second, and the switch forwards a numbered stream without losing a datagram.
#[test]
fn ctl_and_metrics_answer_within_a_second_beside_2000_idle_connections_and_slow_clients() {
    if !can_run("ctl_and_metrics_answer_within_a_second_beside_2000_idle_connections") {
        return;
    }
    // A stream that must lose nothing, and iperf3 or thousands of connections: not beside
    // another test's load on two cores.
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let metrics = lab.enable_metrics(24_000);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let (count, pps) = (60_000, 20_000);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, pps);
    let sock = lab.dir.join("ctl.sock");
    let idle: Vec<std::os::unix::net::UnixStream> = (0..2000)
        .map(|i| {
            std::os::unix::net::UnixStream::connect(&sock)
                .unwrap_or_else(|e| panic!("control connection {i}: {e}"))
        })
        .collect();
    let idle_http: Vec<std::net::TcpStream> = (0..2000)
        .map(|i| {
            std::net::TcpStream::connect(&metrics)
                .unwrap_or_else(|e| panic!("metrics connection {i}: {e}"))
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let (sock, stop) = (sock.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let Ok(mut c) = std::os::unix::net::UnixStream::connect(&sock) else { return };
                for b in b"{\"cmd\":\"status\"}\n" {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) || c.write_all(&[*b]).is_err()
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Bounded: no thread per connection (4 000 of them are open).
    let pid = lab.switch.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|t| t.trim().parse().ok())
        .unwrap();
    let mut ctl_times = Vec::new();
    let mut scrape_times = Vec::new();
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let (ok, out, err) = lab.ctl(true, &["status"]);
        ctl_times.push(t0.elapsed());
        assert!(ok && out.contains("uptime_secs"), "{out}{err}");
        let t0 = std::time::Instant::now();
        let body = http_get(&metrics, "/metrics").unwrap();
        scrape_times.push(t0.elapsed());
        assert!(body.contains("xswitch_"), "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(20));
    drop(idle);
    drop(idle_http);
    for t in slow {
        let _ = t.join();
    }
    let (ok, log) = lab.stop();
    eprintln!("ctl status in {ctl_times:?}; scrapes in {scrape_times:?}; {threads} threads");
    assert!(threads < 32, "{threads} threads for 4 000 idle connections");
    for t in ctl_times.iter().chain(&scrape_times) {
        assert!(*t < Duration::from_secs(1), "ctl {ctl_times:?}, scrapes {scrape_times:?}");
    }
    assert_eq!([got, missing, duplicated], [count, 0, 0], "{log}");
    assert!(ok, "{log}");
}
