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

mod hosts;

/// The demo config, embedded so the demo runs from anywhere.
pub const DEMO_CONFIG: &str = include_str!("../../../configs/demo.toml");

/// (tenant, host, address) of every tenant host, as in demo.toml; the host's namespace and
/// host-side interface are `PREFIX-HOST`.
const HOSTS: &[(&str, &str, &str)] = &[
    ("red", "red1", "10.10.0.1"),
    ("red", "red2", "10.10.0.2"),
    ("blue", "blue1", "10.10.0.3"),
    ("green", "green1", "10.10.0.4"),
];
/// The uplink's peer.
const FABRIC: &str = "up";
/// The prefix of demo.toml's interfaces, and the demo's own by default.
pub const DEFAULT_PREFIX: &str = "xsd";

/// The demo's names: namespaces and interfaces `PREFIX-HOST`; with a prefix of its own, also
/// its own control socket and metrics port, so a demo never touches another lab.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names from `prefix`: 1 to 8 lower-case letters or digits (an interface name holds 15
    /// bytes, and `-green1` takes 7).
    pub fn new(prefix: &str) -> anyhow::Result<Names> {
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("--prefix {prefix:?}: 1 to 8 lower-case letters or digits");
        }
        Ok(Names { prefix: prefix.into() })
    }

    /// The namespace and host-side interface of `host`.
    fn of(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The demo config with these names.
    pub fn config(&self) -> String {
        let mut text = DEMO_CONFIG.replace("\"xsd-", &format!("\"{}-", self.prefix));
        if self.prefix != DEFAULT_PREFIX {
            let port = 9724 + 1 + self.prefix.bytes().map(u32::from).sum::<u32>() % 1000;
            text += &format!(
                "\n[control]\nsocket = \"/run/xswitch/{}.sock\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
                self.prefix
            );
        }
        text
    }
}

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
    names: Names,
}

impl Lab {
    /// Removes this lab's namespaces and interfaces (its prefix's only).
    fn teardown(names: &Names) {
        for host in HOSTS.iter().map(|h| h.1).chain([FABRIC]) {
            let name = names.of(host);
            let _ = cmd(&["ip", "link", "del", &name]);
            let _ = cmd(&["ip", "netns", "del", &name]);
        }
    }

    fn build(names: &Names) -> anyhow::Result<Lab> {
        Lab::teardown(names); // leftovers of an earlier demo of this prefix that was killed
        let lab = Lab { background: Vec::new(), names: names.clone() };
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
        for (_, host, addr) in HOSTS {
            add(&names.of(host), Some(addr))?;
        }
        add(&names.of(FABRIC), None)?;
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.background {
            let _ = c.kill();
            let _ = c.wait();
        }
        Lab::teardown(&self.names);
    }
}

struct Check {
    what: String,
    expected: bool,
    got: bool,
    detail: String,
}

/// The demo's checks, printed as they are made.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    /// Prints and keeps check `what`: ok when `got` is what was `expected`.
    fn check(&mut self, what: String, expected: bool, got: bool, detail: String) {
        let mark = if got == expected { "ok  " } else { "FAIL" };
        let detail_text = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        println!("  [{mark}] {what}{detail_text}");
        self.0.push(Check { what, expected, got, detail });
    }
}

/// Stops the captures in `background` (after the last frames have had time to arrive) and
/// returns what `file` got.
fn stop_captures(background: &mut Vec<Child>, file: &std::path::Path) -> String {
    std::thread::sleep(Duration::from_millis(300));
    for c in background.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    background.clear();
    std::fs::read_to_string(file).unwrap_or_default()
}

/// Starts `tcpdump ARGS` in namespace `ns`, its lines into `file`; returns once it listens.
fn tcpdump(ns: &str, args: &[&str], file: &std::path::Path) -> anyhow::Result<Child> {
    let mut all = vec!["tcpdump"];
    all.extend_from_slice(args);
    let v = in_ns(ns, &all);
    let out = std::fs::File::create(file)?;
    let child = Command::new(&v[0]).args(&v[1..]).stdout(out).stderr(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    Ok(child)
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

/// An error naming the first of `tools` that is not installed.
fn require_tools(tools: &[&str]) -> anyhow::Result<()> {
    for tool in tools {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("{tool} is not installed (scripts/setup installs what the demo needs)");
        }
    }
    Ok(())
}

/// The demo's verdict: an error naming every check that failed, or one saying the lab was not
/// removed completely.
fn conclude(checks: &Checks, removed: bool) -> anyhow::Result<()> {
    let failed: Vec<&Check> = checks.0.iter().filter(|c| c.got != c.expected).collect();
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
    if !removed {
        bail!("the lab was not removed completely");
    }
    println!("xswitch demo: all checks passed");
    Ok(())
}

/// Runs the demo: the one-host lab, or with `hosts` = 2 two hosts over VXLAN and etcd.
/// `stop` is set by SIGINT/SIGTERM.
pub fn run(keep: bool, stop: Arc<AtomicBool>, prefix: &str, hosts: u32) -> anyhow::Result<()> {
    match hosts {
        1 => one_host(keep, stop, prefix),
        2 => hosts::run(keep, stop, prefix),
        n => bail!("--hosts {n}: the demo has a lab of 1 host and one of 2"),
    }
}

/// The one-host lab.
fn one_host(keep: bool, stop: Arc<AtomicBool>, prefix: &str) -> anyhow::Result<()> {
    let names = Names::new(prefix)?;
    let cfg = control::config::load_str("configs/demo.toml (embedded)", &names.config())?;
    dataplane::port::afxdp::require_root()
        .context("the demo lab needs root; `xswitch demo --simulate` does not")?;
    require_tools(&["ip", "ping", "iperf3", "tcpdump"])?;
    let n = |h: &str| names.of(h);
    println!(
        "xswitch demo: building the lab (namespaces {} and {}, veth pairs; control socket {})",
        HOSTS.iter().map(|h| n(h.1)).collect::<Vec<_>>().join(", "),
        n(FABRIC),
        cfg.control.socket
    );
    let mut lab = Lab::build(&names)?;

    let ready = Arc::new(AtomicBool::new(false));
    let switch = {
        let (cfg, stop, ready) = (cfg.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || serve(&cfg, None, stop, &ready, None))
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
    lab.background.push(tcpdump(&n(FABRIC), &["-i", "eth0", "-e", "-nn", "-l", "vlan"], &capture)?);

    let mut checks = Checks::default();
    let mut check = |what, expected, got, detail| checks.check(what, expected, got, detail);
    println!("xswitch demo: traffic");
    if !stop.load(Ordering::SeqCst) {
        check(
            "ping red1 -> red2 (same tenant)".into(),
            true,
            ping(&n("red1"), "10.10.0.2"),
            String::new(),
        );
        let bw = iperf(&n("red1"), &n("red2"), "10.10.0.2");
        check(
            "iperf3 TCP red1 -> red2".into(),
            true,
            bw.is_some_and(|b| b > 0.0),
            bw.map_or("no result".into(), |b| format!("{b:.0} Mbit/s")),
        );
        check(
            "ping red1 -> blue1 (other tenant)".into(),
            false,
            ping(&n("red1"), "10.10.0.3"),
            String::new(),
        );
        check(
            "ping blue1 -> red2 (other tenant)".into(),
            false,
            ping(&n("blue1"), "10.10.0.2"),
            String::new(),
        );
        check(
            "ping green1 -> red1 (other tenant)".into(),
            false,
            ping(&n("green1"), "10.10.0.1"),
            String::new(),
        );
    }
    let seen = stop_captures(&mut lab.background, &capture);
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
        println!("  ip netns exec {} ping 10.10.0.2", n("red1"));
        println!("  ip netns exec {} tcpdump -i eth0 -e -nn vlan", n(FABRIC));
        println!("  xswitch ctl --socket {} tenants", cfg.control.socket);
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
    crate::table::print_tenants(&report.snap, &report.counters, &report.kernel_lost);
    let leftovers = Command::new("ip")
        .args(["-br", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&n("")))
        .unwrap_or(false);
    println!(
        "lab removed: {}",
        if leftovers {
            "NO, some of its interfaces remain"
        } else {
            "namespaces, veths and XDP programs are gone"
        }
    );
    conclude(&checks, !leftovers)
}
