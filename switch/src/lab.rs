//! `xswitch demo`: the demo lab on veth pairs. Builds one network namespace per host of
//! `configs/demo.toml` (and one for the uplink's peer, the "fabric"), runs the switch on the
//! host ends with that config, sends real traffic (ping, iperf3, attempts across tenants),
//! prints per tenant what passed and what was dropped, and tears the lab down, also on Ctrl-C
//! or failure. `--keep` leaves it running for a person to explore until Ctrl-C.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::run::{Report, serve};

/// The demo config, embedded so the demo runs from anywhere.
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

/// (namespace and host-side interface, address) of every tenant host, as in demo.toml.
const HOSTS: &[(&str, &str, &str)] = &[
    ("red", "xsd-red1", "10.10.0.1"),
    ("red", "xsd-red2", "10.10.0.2"),
    ("blue", "xsd-blue1", "10.10.0.3"),
    ("green", "xsd-green1", "10.10.0.4"),
];
const FABRIC: &str = "xsd-up";

fn cmd(args: &[&str]) -> std::io::Result<Output> {
    Command::new(args[0]).args(&args[1..]).output()
}

fn must(args: &[&str]) -> anyhow::Result<()> {
    let o = cmd(args).with_context(|| format!("running {}", args[0]))?;
    if !o.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["ip".to_string(), "netns".into(), "exec".into(), ns.into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn ns_ok(ns: &str, args: &[&str]) -> bool {
    let v = in_ns(ns, args);
    Command::new(&v[0])
        .args(&v[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The namespaces and veths; removed on drop.
struct Lab {
    background: Vec<Child>,
}

impl Lab {
    fn teardown() {
        for (_, name, _) in HOSTS {
            let _ = cmd(&["ip", "link", "del", name]);
            let _ = cmd(&["ip", "netns", "del", name]);
        }
        let _ = cmd(&["ip", "link", "del", FABRIC]);
        let _ = cmd(&["ip", "netns", "del", FABRIC]);
    }

    fn build() -> anyhow::Result<Lab> {
        Lab::teardown(); // leftovers of an earlier demo that was killed
        let lab = Lab { background: Vec::new() };
        let add = |name: &str, addr: Option<&str>| -> anyhow::Result<()> {
            must(&["ip", "netns", "add", name])?;
            must(&[
                "ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name,
            ])?;
            if let Some(a) = addr {
                must(&["ip", "-n", name, "addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
            }
            must(&["ip", "-n", name, "link", "set", "lo", "up"])?;
            must(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
            // The hosts keep the offloads a container gets (TX checksum offload on: the switch
            // completes the partial checksums) and the host ends keep IPv6 (the switch turns
            // it off on the ports it takes). IPv6 is off inside the hosts only to keep the
            // demo's output about the traffic it sends.
            let _ = cmd(&in_ns(name, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>());
            must(&["ip", "link", "set", name, "up"])
        };
        for (_, name, addr) in HOSTS {
            add(name, Some(addr))?;
        }
        add(FABRIC, None)?;
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.background {
            let _ = c.kill();
            let _ = c.wait();
        }
        Lab::teardown();
    }
}

struct Check {
    what: String,
    expected: bool,
    got: bool,
    detail: String,
}

fn ping(from: &str, to: &str) -> bool {
    ns_ok(from, &["ping", "-c", "3", "-i", "0.2", "-W", "1", to])
}

fn iperf(from: &str, to_ns: &str, to: &str) -> Option<f64> {
    let v = in_ns(to_ns, &["iperf3", "-s", "-1", "-p", "5399"]);
    let mut server = Command::new(&v[0])
        .args(&v[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(400));
    let v = in_ns(from, &["timeout", "20", "iperf3", "-c", to, "-p", "5399", "-t", "3", "-f", "m"]);
    let out = Command::new(&v[0]).args(&v[1..]).output().ok();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out?.stdout).to_string();
    let line = text.lines().find(|l| l.contains("receiver"))?;
    let mut it = line.split_whitespace();
    let pos = line.split_whitespace().position(|w| w == "Mbits/sec")?;
    it.nth(pos - 1)?.parse().ok()
}

/// Runs the lab. `stop` is set by SIGINT/SIGTERM.
pub fn run(keep: bool, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let cfg = control::config::load_str("configs/demo.toml (embedded)", DEMO_CONFIG)?;
    dataplane::port::afxdp::require_root()
        .context("the demo lab needs root; `xswitch demo --simulate` does not")?;
    for tool in ["ip", "ping", "iperf3", "tcpdump"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("{tool} is not installed (scripts/setup installs what the demo needs)");
        }
    }
    println!(
        "xswitch demo: building the lab (namespaces {} and {FABRIC}, veth pairs)",
        HOSTS.iter().map(|h| h.1).collect::<Vec<_>>().join(", ")
    );
    let mut lab = Lab::build()?;

    let ready = Arc::new(AtomicBool::new(false));
    let switch = {
        let (cfg, stop, ready) = (cfg.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || serve(&cfg, None, stop, &ready))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready.load(Ordering::SeqCst) {
        if switch.is_finished() || Instant::now() > deadline {
            stop.store(true, Ordering::SeqCst);
            return match switch.join() {
                Ok(Err(e)) => Err(e.context("the switch did not start")),
                _ => bail!("the switch did not start"),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The fabric side sees what leaves on the uplink: count frames per VLAN.
    let capture = std::env::temp_dir().join(format!("xswitch-demo-{}.txt", std::process::id()));
    let v = in_ns(FABRIC, &["tcpdump", "-i", "eth0", "-e", "-nn", "-l", "vlan"]);
    let out = std::fs::File::create(&capture)?;
    lab.background
        .push(Command::new(&v[0]).args(&v[1..]).stdout(out).stderr(Stdio::null()).spawn()?);
    std::thread::sleep(Duration::from_millis(800));

    let mut checks = Vec::new();
    let mut check = |what: String, expected: bool, got: bool, detail: String| {
        let mark = if got == expected { "ok  " } else { "FAIL" };
        println!(
            "  [{mark}] {what}{}",
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        );
        checks.push(Check { what, expected, got, detail });
    };
    println!("xswitch demo: traffic");
    if !stop.load(Ordering::SeqCst) {
        check(
            "ping red1 -> red2 (same tenant)".into(),
            true,
            ping("xsd-red1", "10.10.0.2"),
            String::new(),
        );
        let bw = iperf("xsd-red1", "xsd-red2", "10.10.0.2");
        check(
            "iperf3 TCP red1 -> red2".into(),
            true,
            bw.is_some_and(|b| b > 0.0),
            bw.map_or("no result".into(), |b| format!("{b:.0} Mbit/s")),
        );
        check(
            "ping red1 -> blue1 (other tenant)".into(),
            false,
            ping("xsd-red1", "10.10.0.3"),
            String::new(),
        );
        check(
            "ping blue1 -> red2 (other tenant)".into(),
            false,
            ping("xsd-blue1", "10.10.0.2"),
            String::new(),
        );
        check(
            "ping green1 -> red1 (other tenant)".into(),
            false,
            ping("xsd-green1", "10.10.0.1"),
            String::new(),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for c in &mut lab.background {
        let _ = c.kill();
        let _ = c.wait();
    }
    lab.background.clear();
    let seen = std::fs::read_to_string(&capture).unwrap_or_default();
    let _ = std::fs::remove_file(&capture);
    let per_vlan = |v: u16| seen.lines().filter(|l| l.contains(&format!("vlan {v},"))).count();
    let (v100, v200, v300) = (per_vlan(100), per_vlan(200), per_vlan(300));
    println!(
        "  uplink peer saw: VLAN 100 (red) {v100}, VLAN 200 (blue) {v200}, VLAN 300 (green) {v300} frames"
    );
    check(
        "every tenant's floods reach the uplink with its own VLAN".into(),
        true,
        v100 > 0 && v200 > 0 && v300 > 0,
        String::new(),
    );

    if keep && !stop.load(Ordering::SeqCst) {
        println!("\nxswitch demo: the lab is running; explore it, for example:");
        println!("  ip netns exec xsd-red1 ping 10.10.0.2");
        println!("  ip netns exec xsd-up tcpdump -i eth0 -e -nn vlan");
        println!("Ctrl-C stops the switch and removes the lab.");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let report: Report = match switch.join() {
        Ok(r) => r?,
        Err(_) => bail!("the switch thread panicked"),
    };
    drop(lab);
    crate::table::print_tenants(&report.snap, &report.counters);
    let leftovers = Command::new("ip")
        .args(["-br", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("xsd-"))
        .unwrap_or(false);
    println!(
        "lab removed: {}",
        if leftovers {
            "NO, xsd-* interfaces remain"
        } else {
            "namespaces, veths and XDP programs are gone"
        }
    );
    let failed: Vec<&Check> = checks.iter().filter(|c| c.got != c.expected).collect();
    if !failed.is_empty() {
        bail!(
            "{} check(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|c| format!("{} ({})", c.what, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if leftovers {
        bail!("the lab was not removed completely");
    }
    println!("xswitch demo: all checks passed");
    Ok(())
}
