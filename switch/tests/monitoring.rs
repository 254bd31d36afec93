//! What ships for monitoring (issue 18): the Prometheus alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and every metric the Grafana dashboard queries
//! is in a live scrape of a running switch.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Lab, can_run, http_get, http_status};

fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = contrib().join("prometheus");
    for args in
        [&["check", "rules", "xswitch-rules.yml"][..], &["test", "rules", "xswitch-rules.test.yml"]]
    {
        let o = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (apt-get install prometheus)");
        assert!(
            o.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The metric names an expression uses (`xswitch_...`).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("xswitch_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        into.insert(expr[start..end].to_string());
        i = end;
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_in_a_live_scrape() {
    if !can_run("every_metric_the_dashboard_queries") {
        return;
    }
    let text = std::fs::read_to_string(contrib().join("grafana/xswitch-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            metric_names(t["expr"].as_str().unwrap(), &mut names);
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            metric_names(q, &mut names);
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    let mut lab = Lab::new();
    let addr = lab.enable_metrics(22_000);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "3"));
    std::thread::sleep(Duration::from_millis(2500));
    let scrape = http_get(&addr, "/metrics").expect("the metrics endpoint answers");
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !exported.contains(n.as_str()) && !exported.contains(format!("{n}_bucket").as_str())
        })
        .collect();
    assert!(missing.is_empty(), "the dashboard queries metrics no scrape has: {missing:?}");
    for info in [
        "xswitch_build_info",
        "process_start_time_seconds",
        "xswitch_port_info",
        "xswitch_port_up",
        "xswitch_worker_busy_seconds_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(exported.contains(info), "{info} not exported");
    }
    // The metrics on their path only; a health check that says ok while the workers report.
    let (code, body) = http_status(&addr, "/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _) = http_status(&addr, "/").unwrap();
    assert_eq!(code, 404, "the exposition is on /metrics only");
    // The busy counter counts seconds, as a fraction.
    let busy = scrape
        .lines()
        .find(|l| l.starts_with("xswitch_worker_busy_seconds_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(busy > 0.0 && busy < 30.0, "busy seconds {busy}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}
