//! The soak: traffic at the highest rate the lab makes (iperf3 TCP in red, UDP in blue, both
//! unbounded) for `SOAK_SECS` seconds (default 600), with a reload every 30 s and a capture
//! every 60 s, then checks that every frame is accounted for (at the switch's exit and in its
//! counters), that its memory stayed flat after warm-up, and that traffic never
//! stalled. Not part of the default suite (`#[ignore]`): `scripts/soak [SECONDS]` runs it on a
//! release build (docs/TESTING.md).
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, can_run};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn iperf_client(lab: &Lab, host: &str, to: &str, port: &str, secs: u64, udp: bool) -> Child {
    let t = secs.to_string();
    let ns = lab.ns_name(host);
    let mut args = vec!["netns", "exec", &ns, "iperf3", "-c", to, "-p", port];
    args.extend_from_slice(&["-t", &t, "-i", "0", "-J"]);
    if udp {
        args.extend_from_slice(&["-u", "-b", "0", "-l", "1400"]);
    }
    Command::new("ip").args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
}

fn packets(c: &serde_json::Value) -> u64 {
    c["rx_packets"].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "a long run: scripts/soak"]
fn soak_at_full_rate_with_reloads_and_captures_leaks_nothing() {
    if !can_run("soak") {
        return;
    }
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let mut lab = Lab::new();
    lab.host("h4", "4");
    let h4 = lab.ifname("h4");
    let log_dir = lab.dir.display().to_string();
    // Red: a security group, an ACL and a flow log (the flow-cache path); blue: a policer.
    lab.edit_config(|c| {
        c.replace("[switch]\n", "[switch]\nflow_log_interval_secs = 10\n")
            .replace("{ port = \"h3\" }]", "{ port = \"h3\" }, { port = \"h4\" }]")
            + &format!(
                "[ports.h4]\ninterface = \"{h4}\"\nkind = \"tenant\"\n\
                 [tenants.red.security_group]\nrules = [{{ direction = \"from-tenant\" }}, {{ direction = \"to-tenant\" }}]\n\
                 [[tenants.red.acl]]\nname = \"count-syn\"\npriority = 10\ndirection = \"from-tenant\"\naction = \"count\"\nproto = \"tcp\"\n\
                 [tenants.red.flow_log]\nfile = \"{log_dir}/red.flows\"\nmax_bytes = 1048576\n\
                 [tenants.blue.shaping]\ningress = {{ rate = \"400Mbit\" }}\n"
            )
    });
    let base = std::fs::read_to_string(lab.config()).unwrap();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2") && lab.ping("h3", "10.9.1.4", "2"));
    let pid = lab.switch.as_ref().unwrap().id();

    let mut servers =
        vec![lab.iperf_server("h2", "5301", false), lab.iperf_server("h4", "5302", false)];
    let tcp = iperf_client(&lab, "h1", "10.9.1.2", "5301", secs, false);
    let udp = iperf_client(&lab, "h3", "10.9.1.4", "5302", secs, true);

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut rss = Vec::new(); // (seconds, KiB)
    let mut last_rx = packets(&lab.ctl_json("counters"));
    let (mut reloads, mut captures, mut stalls) = (0u32, 0u32, 0u32);
    let mut next_reload = start + Duration::from_secs(30);
    let mut next_capture = start + Duration::from_secs(60);
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_secs(10).min(end.saturating_duration_since(Instant::now())),
        );
        let t = start.elapsed().as_secs();
        rss.push((t, rss_kib(pid)));
        let rx = packets(&lab.ctl_json("counters"));
        if rx == last_rx {
            stalls += 1;
        }
        last_rx = rx;
        if Instant::now() >= next_reload {
            // Alternate between two valid configs (an ACL rule's priority changes).
            let p = if reloads % 2 == 0 { "priority = 11" } else { "priority = 10" };
            std::fs::write(lab.config(), base.replace("priority = 10", p)).unwrap();
            let (ok, _, err) = lab.ctl(false, &["reload"]);
            assert!(ok, "reload {reloads}: {err}");
            reloads += 1;
            next_reload += Duration::from_secs(30);
        }
        if Instant::now() >= next_capture {
            let f = format!("{log_dir}/cap{captures}.pcap");
            let (ok, _, err) =
                lab.ctl(false, &["capture", "start", "red", "--file", &f, "--count", "1000"]);
            assert!(ok, "capture {captures}: {err}");
            std::thread::sleep(Duration::from_secs(2));
            let _ = lab.ctl(false, &["capture", "stop"]);
            captures += 1;
            next_capture += Duration::from_secs(60);
        }
        eprintln!("soak: {t:>5} s  rss {:>7} KiB  rx {rx}", rss.last().unwrap().1);
    }
    let tcp = tcp.wait_with_output().unwrap();
    let udp = udp.wait_with_output().unwrap();
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    // Let the queues drain, then every frame received is sent or dropped (flood copies are
    // frames of their own).
    std::thread::sleep(Duration::from_secs(1));
    let c = lab.ctl_json("counters");
    let drops: u64 = c["drops"].as_object().unwrap().values().filter_map(|v| v.as_u64()).sum();
    let (rx, tx, copies) = (
        c["rx_packets"].as_u64().unwrap(),
        c["tx_packets"].as_u64().unwrap(),
        c["flood_copies"].as_u64().unwrap(),
    );
    let bits = |o: &std::process::Output| -> f64 {
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        j["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .or_else(|| j["end"]["sum"]["bits_per_second"].as_f64())
            .unwrap_or(0.0)
    };
    let (tcp_bps, udp_bps) = (bits(&tcp), bits(&udp));
    let (ok, log) = lab.stop();
    // Warm-up: the first quarter of the run, at least 150 s, so that every kind of work (two
    // captures, whose writer threads get their own malloc arenas, several reloads, flow-log
    // rotation) has happened before memory must stay flat.
    // (A short run, for trying the harness, checks its second half.)
    let warm_up = (secs / 4).max(150).min(secs / 2);
    let warm: Vec<u64> = rss.iter().filter(|(t, _)| *t >= warm_up).map(|&(_, k)| k).collect();
    assert!(!warm.is_empty(), "no memory samples after warm-up: run longer than 20 s");
    let (lo, hi) =
        (warm.iter().min().copied().unwrap_or(0), warm.iter().max().copied().unwrap_or(0));
    eprintln!(
        "soak: {secs} s, {reloads} reloads, {captures} captures; TCP {:.0} Mbit/s, UDP {:.0} Mbit/s; \
         {rx} frames received, {tx} sent, {copies} flood copies, {drops} dropped; \
         RSS after warm-up ({warm_up} s) {lo}..{hi} KiB; stalls {stalls}",
        tcp_bps / 1e6,
        udp_bps / 1e6
    );
    for l in log.lines().filter(|l| l.contains("accounting") || l.contains("dropped")) {
        eprintln!("soak: {l}");
    }
    assert!(ok && log.contains("balanced"), "frame accounting at exit:\n{log}");
    assert_eq!(rx + copies, tx + drops, "every frame received is sent or dropped");
    assert!(hi - lo <= 2048, "RSS grew {} KiB after warm-up: {rss:?}", hi - lo);
    assert_eq!(stalls, 0, "10-second windows without a frame received");
    assert!(tcp_bps > 100e6 && udp_bps > 10e6, "traffic ran: TCP {tcp_bps}, UDP {udp_bps}");
    assert!(reloads >= (secs / 30 - 1) as u32 && captures >= (secs / 60).saturating_sub(1) as u32);
}
