//! The Prometheus endpoint scraped by a real Prometheus: per-tenant counters that match the
//! traffic, ACL rule series through reloads.
//! Network namespaces and veth pairs built per test (unique names, torn down even when a
//! test fails), `xswitch run` on the host ends. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The value of an instant query's first sample through Prometheus' HTTP API, if any.
fn prom_query(addr: &str, query: &str) -> Option<f64> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(addr, &format!("/api/v1/query?query={q}")).ok()?;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},"value":[t,"42"]}]}}
    body.split("\"value\":[").nth(1)?.split(",\"").nth(1)?.split('"').next()?.parse().ok()
}

#[test]
fn prometheus_scrapes_per_tenant_counters_that_match_the_traffic() {
    if !can_run("prometheus_scrapes_per_tenant_counters") {
        return;
    }
    // Counts every frame of each tenant: the hosts' IPv6 chatter would be counted too.
    let mut lab = Lab::without_ipv6();
    let metrics = lab.enable_metrics(20_000);
    let port: u32 = metrics.rsplit(':').next().unwrap().parse().unwrap();
    let prom = format!("127.0.0.1:{}", port + 10_000);
    lab.edit_config(|c| {
        c + "[[tenants.red.acl]]\nname = \"icmp\"\npriority = 1\ndirection = \"from-tenant\"\n\
               action = \"count\"\nproto = \"icmp\"\n"
    });
    lab.start();

    // The exposition passes promtool's lint.
    let text = http_get(&metrics, "/metrics").expect("the metrics endpoint answers");
    assert!(text.contains("xswitch_tenant_received_packets_total"), "{text}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    {
        use std::io::Write;
        check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = check.wait_with_output().unwrap();
    let lint =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && lint.trim().is_empty(), "promtool check metrics:\n{lint}");

    // A real Prometheus scrapes the switch every second.
    let dir = lab.dir.join("prom");
    std::fs::create_dir_all(&dir).unwrap();
    let yml = dir.join("prometheus.yml");
    std::fs::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xswitch\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let mut server = Command::new("prometheus")
        .arg(format!("--config.file={}", yml.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(std::mem::replace(&mut server, Command::new("true").spawn().unwrap()));
    let red = "xswitch_tenant_received_packets_total{tenant=\"red\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(v) = prom_query(&prom, red) {
            break v;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped the switch");
        std::thread::sleep(Duration::from_millis(300));
    };

    // 20 echo requests from h1 and 20 replies from h2: 40 frames from red, plus the ARP
    // exchange the test counts as background (at most 4 frames: request, reply, and a probe
    // each way if a neighbour entry goes stale).
    assert!(lab.ping("h1", "10.9.1.2", "20"));
    let want = before + 40.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let v = prom_query(&prom, red).unwrap_or(0.0);
        if v >= want || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // The exporter sets the metrics one by one; a scrape can fall in the middle of an update.
    // The traffic is over: two more exporter and scrape intervals make every value final.
    std::thread::sleep(Duration::from_millis(2500));
    let after = prom_query(&prom, red).unwrap_or(after);
    assert!((want..=want + 4.0).contains(&after), "red: {before} before, {after} after 40 frames");
    // Blue sent nothing but what the kernel says on its own (IPv6 is off: nothing).
    let blue = prom_query(&prom, "xswitch_tenant_received_packets_total{tenant=\"blue\"}");
    assert_eq!(blue, Some(0.0));
    let sent =
        prom_query(&prom, "xswitch_tenant_sent_packets_total{tenant=\"red\"}").unwrap_or(0.0);
    assert!(sent >= 40.0, "red sent {sent}");
    // The count rule saw exactly the 20 requests and 20 replies (both from tenant ports).
    let icmp = "xswitch_acl_rule_matches_total{tenant=\"red\",rule=\"icmp\"}";
    assert_eq!(prom_query(&prom, icmp), Some(40.0));
    let leak = prom_query(&prom, "xswitch_umem_frames{state=\"unaccounted\"}");
    assert_eq!(leak, Some(0.0));
    // Regression (issue 18): the batch-size histogram's sum added each bucket's upper bound;
    // it is the sum of the sizes seen, so it equals the frames the worker received.
    let sizes = prom_query(&prom, "sum(xswitch_worker_batch_size_sum)").unwrap_or(-1.0);
    let frames = prom_query(&prom, "sum(xswitch_worker_received_packets_total)").unwrap_or(-2.0);
    assert!(
        frames > 40.0 && (sizes - frames).abs() < 0.5,
        "batch sizes sum {sizes}, frames {frames}"
    );

    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}

// Regression (issue 17): rule counters were matched to their labels by position once, at
// start, and restarted at zero on every reload: after a reload that moved rules, each series
// carried another rule's count.
#[test]
fn acl_rule_metrics_follow_their_rules_through_a_reload() {
    if !can_run("acl_rule_metrics_follow_their_rules") {
        return;
    }
    let mut lab = Lab::new();
    let metrics = lab.enable_metrics(21_000);
    let rule = |name: &str, prio: u32, m: &str| {
        format!(
            "[[tenants.red.acl]]\nname = \"{name}\"\npriority = {prio}\ndirection = \"from-tenant\"\n\
             action = \"count\"\n{m}\n"
        )
    };
    let base = std::fs::read_to_string(lab.config()).unwrap();
    let first = [
        rule("icmp", 1, "proto = \"icmp\""),
        rule("udp", 2, "proto = \"udp\""),
        rule("tcp", 3, "proto = \"tcp\""),
    ];
    std::fs::write(lab.config(), base.clone() + &first.concat()).unwrap();
    lab.start();
    let udp = |n: &str| {
        let o = lab.ns_run("h1", &["python3", "-c", UDP_SEND, "10.9.1.2", "9999", n]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    assert!(lab.ping("h1", "10.9.1.2", "5"));
    udp("3");
    // Moved, added and removed: udp first, a new arp rule, icmp last, tcp gone.
    let second = [
        rule("udp", 1, "proto = \"udp\""),
        rule("arp", 2, "ethertype = \"arp\""),
        rule("icmp", 3, "proto = \"icmp\""),
    ];
    std::fs::write(lab.config(), base + &second.concat()).unwrap();
    let (ok, _, err) = lab.ctl(true, &["reload"]);
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(600));
    assert!(lab.ping("h1", "10.9.1.2", "3"));
    udp("4");
    // Published every 250 ms, exported every second.
    std::thread::sleep(Duration::from_millis(2500));
    let text = http_get(&metrics, "/metrics").expect("the metrics endpoint answers");
    let count = |r: &str| {
        series(&text, "xswitch_acl_rule_matches_total", &[("tenant", "red"), ("rule", r)])
    };
    // Each ping is a request and a reply, both from a tenant port; each datagram to h2's
    // closed port gets an ICMP port unreachable back.
    assert_eq!(count("icmp"), Some(23.0), "icmp: 10 + 3 before the reload, 6 + 4 after\n{text}");
    assert_eq!(count("udp"), Some(7.0), "udp: 3 before, 4 after");
    assert!(count("arp").is_some(), "the new rule has its series");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains("acl red from-tenant icmp: 23 matches"), "{log}");
}
