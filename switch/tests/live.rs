//! The live fabric (issue 17): ports and tenants added and removed by reloads while traffic
//! runs, nothing else disturbed; `ctl reload --dry-run` and `check-config --against-running`.
//! Real traffic through the real switch in network namespaces (root).
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The config section of a port on host `host`'s interface.
fn port(lab: &Lab, host: &str) -> String {
    format!("[ports.{host}]\ninterface = \"{}\"\nkind = \"tenant\"\n", lab.ifname(host))
}

/// The ports `ctl ports` lists.
fn port_names(lab: &Lab) -> Vec<String> {
    let ports = lab.ctl_json("ports");
    ports.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// `base` with a port of red (h4), tenant green (h5, h6) and a port of blue (h7).
fn with_churn(lab: &Lab, base: &str) -> String {
    base.replace("{ port = \"h2\" }]", "{ port = \"h2\" }, { port = \"h4\" }]")
        .replace("{ port = \"h3\" }]", "{ port = \"h3\" }, { port = \"h7\" }]")
        + &port(lab, "h4")
        + &port(lab, "h5")
        + &port(lab, "h6")
        + &port(lab, "h7")
        + "[tenants.green]\nattach = [{ port = \"h5\" }, { port = \"h6\" }]\n"
}

/// Issue 17's acceptance: while a numbered UDP stream (20 000 datagrams/s for 30 s) and iperf3
/// run between two hosts of red, ten reloads add and then remove a tenant (green), a port of
/// red and a port of blue; every new port carries traffic before it goes. The stream loses
/// nothing and nothing is duplicated, iperf3 keeps its rate, red's counters and Prometheus
/// series go on without a reset, green's series go with green, and the frame census balances.
/// The hosts keep their default offloads and IPv6.
#[test]
fn ports_and_tenants_come_and_go_under_load_and_the_stream_loses_nothing() {
    if !can_run("ports_and_tenants_come_and_go") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let metrics = lab.enable_metrics(23_000);
    // Rings of 1 024, twice the frames to receive into of rings of 512, which lasted about 22 ms
    // at this test's 45 000 frames/s: on two cores shared by the sender, the receiver, iperf3
    // and the switch, a worker is sometimes descheduled for longer, and the kernel drops what
    // finds the fill ring empty. Rings of 512 lost 4 and 414 of 600 000 datagrams in two CI
    // runs whose workers had breaths of 52 and 58 ms. The reloads themselves hold the worker for well
    // under a millisecond (a removal 40-135 µs, no command 1 ms, timed with `Instant` around
    // `Worker::apply`).
    lab.edit_config(|c| {
        c.replace("frames = 16384\nring_size = 256", "frames = 65536\nring_size = 1024")
    });
    // The hosts of the ports that come and go exist throughout; their ports do not.
    for (h, ip) in [("h4", "4"), ("h5", "5"), ("h6", "6"), ("h7", "7")] {
        lab.host(h, ip);
    }
    let base = std::fs::read_to_string(lab.config()).unwrap();
    let churn = with_churn(&lab, &base);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let scrape = || http_get(&metrics, "/metrics").unwrap();
    let red_rx = |text: &str| {
        series(text, "xswitch_tenant_received_packets_total", &[("tenant", "red")]).unwrap()
    };
    let before = red_rx(&scrape());

    // The stream and a TCP flow beside it at 300 Mbit/s: below what the switch forwards here,
    // so a loss would be the reloads', not a saturated path's (a saturating flow loses frames at
    // the RX ring by design, and a stream sharing the ring with it loses some too).
    let (count, pps) = (600_000u64, 20_000);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, pps);
    let mut generations = Vec::new();
    let tcp = std::thread::scope(|s| {
        let iperf =
            s.spawn(|| lab.iperf_with("h1", "h2", "10.9.1.2", "5311", &["-t", "28", "-b", "300M"]));
        for i in 0..10 {
            let adding = i % 2 == 0;
            std::fs::write(lab.config(), if adding { &churn } else { &base }).unwrap();
            let r = lab.ctl_json_args(&["reload"]);
            generations.push(r["generation"].as_u64().unwrap());
            if adding {
                assert_eq!(r["ports"]["added"], serde_json::json!(["h4", "h5", "h6", "h7"]));
                assert_eq!(r["tenants"]["added"], serde_json::json!(["green"]));
                // Each new port carries traffic: red to its new host, green within itself,
                // blue to its new host; and green stays apart from red.
                assert!(lab.ping("h1", "10.9.1.4", "2"), "reload {i}: red's new port");
                assert!(lab.ping("h5", "10.9.1.6", "2"), "reload {i}: green");
                assert!(lab.ping("h3", "10.9.1.7", "2"), "reload {i}: blue's new port");
                assert!(!lab.ping("h5", "10.9.1.1", "1"), "reload {i}: green reached red");
            } else {
                assert_eq!(r["ports"]["removed"], serde_json::json!(["h4", "h5", "h6", "h7"]));
                assert_eq!(r["tenants"]["removed"], serde_json::json!(["green"]));
                assert!(!lab.ping("h1", "10.9.1.4", "1"), "reload {i}: a removed port switches");
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
        iperf.join().unwrap()
    });
    assert_eq!(generations, (2..12).collect::<Vec<u64>>());
    stream.expect_all(count, Duration::from_secs(60), &mut lab);
    assert!(tcp > 0.9 * 300e6, "iperf3 at 300 Mbit/s during the reloads: {tcp} bit/s");

    // Red's series went on (no reset), green's went with green (after the exporter's idle
    // time), and the ports that left took theirs.
    let text = scrape();
    assert!(red_rx(&text) >= before + count as f64, "red's received packets: {text}");
    std::thread::sleep(Duration::from_secs(7));
    let text = scrape();
    assert!(!text.contains("tenant=\"green\""), "green's series stayed:\n{text}");
    assert!(!text.contains("port=\"h5\""), "h5's series stayed:\n{text}");
    assert!(series(&text, "xswitch_tenant_received_packets_total", &[("tenant", "red")]).is_some());
    let ports = port_names(&lab);
    assert_eq!(ports, ["h1", "h2", "h3", "up"], "ports after the last reload");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains("frame accounting") && log.contains(": balanced"), "{log}");
    // The sockets of the removed ports are in the stop summary: what the kernel dropped on
    // them counts in its total (review: they had vanished from it), and their rows (h4's: five
    // removals) are in the table that total is checked against.
    let taken_out = log.split("sockets taken out while running").nth(1).unwrap_or_default();
    let h4 = format!("{} queue 0", lab.ifname("h4"));
    assert_eq!(taken_out.lines().filter(|l| l.contains(&h4)).count(), 5, "{log}");
    kernel_lost(&log);
}

/// `ctl reload --dry-run` (table and JSON) and `check-config --against-running` say what a
/// reload would add, remove and change, and what it would refuse, and apply nothing; the
/// reload itself then does what they said.
#[test]
fn a_dry_run_says_what_a_reload_would_do_and_applies_nothing() {
    if !can_run("a_dry_run_says_what_a_reload_would_do") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    lab.host("h4", "4");
    let base = std::fs::read_to_string(lab.config()).unwrap();
    lab.start();
    // Red gets h4 and a rule, blue loses h3 (its port goes), green comes on the uplink.
    let next = base
        .replace("{ port = \"h2\" }]", "{ port = \"h2\" }, { port = \"h4\" }]\nfdb_quota = 500")
        .replace(", { port = \"h3\" }]", "]")
        .replace(&port(&lab, "h3"), "")
        + &port(&lab, "h4")
        + "[tenants.green]\nattach = [{ port = \"up\", vlan = 300 }]\n";
    std::fs::write(lab.config(), &next).unwrap();
    let (ok, out, err) = lab.ctl(false, &["reload", "--dry-run"]);
    assert!(ok, "{err}");
    let lines: Vec<String> =
        out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    for want in [
        "reload of generation 1: would apply",
        "port h4 added",
        "port h3 removed",
        "tenant green added",
        "tenant blue (attach) changed",
        "tenant red (attach, fdb_quota) changed",
    ] {
        assert!(lines.iter().any(|l| l == want), "no line {want:?} in:\n{out}");
    }
    let d = lab.ctl_json_args(&["reload", "--dry-run"]);
    assert_eq!(d["applies"], true);
    assert_eq!(d["ports"]["added"], serde_json::json!(["h4"]));
    assert_eq!(d["ports"]["removed"], serde_json::json!(["h3"]));
    assert_eq!(d["tenants"]["added"], serde_json::json!(["green"]));
    assert_eq!(d["tenants"]["changed"][0]["name"], "blue");
    assert_eq!(d["tenants"]["changed"][0]["fields"], serde_json::json!(["attach"]));
    assert_eq!(lab.ctl_json("status")["generation"], 1, "a dry run applied something");
    assert!(!lab.ping("h1", "10.9.1.4", "1"), "h4 switches before the reload");

    // The same through check-config, against another file.
    let other = lab.dir.join("other.toml");
    std::fs::write(&other, next.replace("ring_size = 256", "ring_size = 128")).unwrap();
    let sock = lab.dir.join("ctl.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .args(["check-config", "--against-running", "--socket"])
        .args([&sock, &other])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "a refused config passed:\n{text}");
    assert!(text.contains("would be REFUSED"), "{text}");
    assert!(text.contains("refused: [switch] changed (ring_size)"), "{text}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("would refuse"), "{o:?}");
    let o = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .args(["check-config", "--against-running", "--socket"])
        .args([&sock, &lab.config()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("port h4 added"), "{text}");
    assert_eq!(lab.ctl_json("status")["generation"], 1);

    // Applied: h4 switches for red, h3 is out, and ctl ports says so.
    let r = lab.ctl_json_args(&["reload"]);
    assert_eq!(r["generation"], 2);
    assert!(lab.ping("h1", "10.9.1.4", "2"), "h4 after the reload");
    assert!(!lab.ping("h3", "10.9.1.1", "1"), "h3's port is gone");
    let ports = port_names(&lab);
    assert_eq!(ports, ["h1", "h2", "h4", "up"]);
    assert!(!lab.xdp_attached(&lab.ifname("h3")), "h3 keeps its XDP program");
    assert!(lab.xdp_attached(&lab.ifname("h4")), "h4 has no XDP program");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains(": balanced"), "{log}");
}
