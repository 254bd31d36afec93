//! `xswitch demo --hosts 2`: two tenants spanning two hosts over VXLAN, with the cluster map in
//! a real etcd. Each host is an `xswitch run` process of its own with an underlay port and a
//! VM (a network namespace) of tenant red (VNI 100) and one of tenant blue (VNI 200); the two
//! tenants have the very same addresses. The underlay is a Linux bridge in a namespace of its
//! own. The demo starts etcd on loopback ports it picks, in a temporary directory, sends real
//! traffic (ping, IPv6 ping, iperf3), watches the underlay with tcpdump, prints what each switch
//! says of the cluster and the overlay, and removes everything, also on Ctrl-C or failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Names, cmd, in_ns, iperf, must, ping};

/// (host, tunnel address, last byte of its VMs' addresses).
const HOSTS: [(&str, &str, u8); 2] = [("a", "192.168.77.1", 1), ("b", "192.168.77.2", 2)];
/// (tenant, VNI, short name in interface names).
const TENANTS: [(&str, u32, &str); 2] = [("red", 100, "red"), ("blue", 200, "blu")];
/// The underlay's MTU: the VMs' 1 500 and the 50 bytes of VXLAN.
const UNDERLAY_MTU: &str = "1600";

/// The MAC of host `h`'s VM of tenant number `t`.
fn vm_mac(h: u8, t: usize) -> String {
    format!("02:0{h:x}:00:00:{:02x}:01", t + 1)
}

/// The names of one lab of this kind.
struct Hosts {
    names: Names,
}

impl Hosts {
    fn ns(&self, what: &str) -> String {
        self.names.of(what)
    }

    /// The underlay namespace (its bridge `br0`).
    fn underlay(&self) -> String {
        self.ns("ul")
    }

    /// Host `h`'s underlay port, in the root namespace.
    fn uplink(&self, h: &str) -> String {
        self.ns(&format!("ul{h}"))
    }

    /// Host `h`'s VM of tenant `short`: its namespace, and the host end of its veth.
    fn vm(&self, h: &str, short: &str) -> String {
        self.ns(&format!("{h}{short}"))
    }

    fn socket(&self, h: &str) -> PathBuf {
        PathBuf::from(format!("/run/xswitch/{}.sock", self.ns(h)))
    }

    /// Every namespace and root-side interface of the lab.
    fn all(&self) -> Vec<String> {
        let mut v = vec![self.underlay()];
        for (h, _, _) in HOSTS {
            v.push(self.uplink(h));
            v.extend(TENANTS.iter().map(|t| self.vm(h, t.2)));
        }
        v
    }

    /// Host `h`'s config.
    fn config(&self, h: &str, addr: &str, last: u8, etcd: u16) -> String {
        let mut c = format!(
            "[switch]\nidle = \"adaptive\"\n[metrics]\nenabled = false\n\
             [control]\nsocket = \"{sock}\"\n\
             [cluster]\netcd = [\"http://127.0.0.1:{etcd}\"]\nhost = \"{h}\"\n\
             [ports.underlay]\ninterface = \"{ul}\"\nkind = \"underlay\"\n\
             [ports.underlay.tunnel]\naddress = \"{addr}\"\n",
            sock = self.socket(h).display(),
            ul = self.uplink(h),
        );
        for (t, (name, vni, short)) in TENANTS.iter().enumerate() {
            c += &format!(
                "[ports.{name}]\ninterface = \"{ifname}\"\nkind = \"tenant\"\n\
                 [tenants.{name}]\nvni = {vni}\n\
                 attach = [{{ port = \"{name}\", macs = [\"{mac}\"], \
                 ips = [\"10.20.0.{last}\", \"fd00:20::{last}\"] }}]\n",
                ifname = self.vm(h, short),
                mac = vm_mac(last, t),
            );
        }
        c
    }
}

/// What the demo started and built; stopped and removed when dropped.
struct Lab {
    hosts: Hosts,
    dir: PathBuf,
    etcd: Option<Child>,
    switches: Vec<(String, Child)>,
    background: Vec<Child>,
}

impl Lab {
    fn teardown(hosts: &Hosts) {
        for name in hosts.all() {
            let _ = cmd(&["ip", "link", "del", &name]);
            let _ = cmd(&["ip", "netns", "del", &name]);
        }
    }

    fn build(hosts: Hosts, dir: PathBuf) -> anyhow::Result<Lab> {
        Lab::teardown(&hosts); // leftovers of an earlier demo of this prefix that was killed
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lab = Lab { hosts, dir, etcd: None, switches: Vec::new(), background: Vec::new() };
        let h = &lab.hosts;
        let ul = h.underlay();
        must(&["ip", "netns", "add", &ul])?;
        // The bridge and its ports keep quiet (no IPv6 of their own: router solicitations
        // and listener reports would reach the switches' underlay ports as `not_overlay`).
        must(
            &in_ns(&ul, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        must(
            &in_ns(&ul, &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        must(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        must(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
        for (host, _, last) in HOSTS {
            let (up, peer) = (h.uplink(host), format!("p{host}"));
            must(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &peer, "netns", &ul])?;
            // Quiet before it is up, as the bridge (the switch turns IPv6 off on its ports
            // too, but only once it runs).
            must(&["sysctl", "-qw", &format!("net.ipv6.conf.{up}.disable_ipv6=1")])?;
            must(&["ip", "link", "set", &up, "mtu", UNDERLAY_MTU, "up"])?;
            must(&["ip", "-n", &ul, "link", "set", &peer, "mtu", UNDERLAY_MTU])?;
            must(&["ip", "-n", &ul, "link", "set", &peer, "master", "br0", "up"])?;
            for (t, (_, _, short)) in TENANTS.iter().enumerate() {
                let vm = h.vm(host, short);
                must(&["ip", "netns", "add", &vm])?;
                must(&[
                    "ip", "link", "add", &vm, "type", "veth", "peer", "name", "eth0", "netns", &vm,
                ])?;
                must(&["ip", "link", "set", &vm, "up"])?;
                must(&["ip", "-n", &vm, "link", "set", "lo", "up"])?;
                must(&["ip", "-n", &vm, "link", "set", "eth0", "address", &vm_mac(last, t)])?;
                let v4 = format!("10.20.0.{last}/24");
                let v6 = format!("fd00:20::{last}/64");
                must(&["ip", "-n", &vm, "addr", "add", &v4, "dev", "eth0"])?;
                must(&["ip", "-n", &vm, "addr", "add", &v6, "dev", "eth0"])?;
                // The VMs keep their default offloads and their IPv6.
                must(&["ip", "-n", &vm, "link", "set", "eth0", "up"])?;
            }
        }
        Ok(lab)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts etcd on two free loopback ports; returns its client port once it accepts.
    fn start_etcd(&mut self) -> anyhow::Result<u16> {
        let free = || -> anyhow::Result<u16> {
            Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        let (client, peer) = (free()?, free()?);
        let (c, p) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
        let log = std::fs::File::create(self.dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .args(["--name", "demo", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("demo={p}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (scripts/setup installs etcd-server)")?;
        self.etcd = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("etcd did not start in 20 s:\n{}", tail(&self.log("etcd"), 10));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(client)
    }

    /// Starts host `h`'s switch with `config`; returns once it switches.
    fn start_switch(&mut self, h: &str, config: &str) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{h}.toml"));
        std::fs::write(&file, config)?;
        let log = std::fs::File::create(self.dir.join(format!("{h}.log")))?;
        let exe = std::env::current_exe().context("finding the xswitch binary")?;
        let child = Command::new(exe)
            .args(["run", "-c"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.switches.push((h.to_string(), child));
        let t0 = Instant::now();
        while !self.log(h).contains("switching") {
            let exited = self
                .switches
                .last_mut()
                .is_some_and(|(_, c)| c.try_wait().is_ok_and(|s| s.is_some()));
            if exited || t0.elapsed() > Duration::from_secs(20) {
                bail!("host {h}'s switch did not start:\n{}", tail(&self.log(h), 15));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops every switch (SIGTERM: a clean stop revokes its lease) and waits for it.
    fn stop_switches(&mut self) {
        let mut switches = std::mem::take(&mut self.switches);
        for (_, c) in &mut switches {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        for (_, c) in &mut switches {
            let t0 = Instant::now();
            while c.try_wait().is_ok_and(|s| s.is_none()) && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.background {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop_switches();
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        Lab::teardown(&self.hosts);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `ctl status` of the switch behind `socket`.
fn status(socket: &Path) -> anyhow::Result<Value> {
    crate::ctl::request(socket, &control::api::Request::Status {})
}

/// Runs the two-host demo. `stop` is set by SIGINT/SIGTERM.
pub fn run(keep: bool, stop: Arc<AtomicBool>, prefix: &str) -> anyhow::Result<()> {
    let hosts = Hosts { names: Names::new(prefix)? };
    dataplane::port::afxdp::require_root()
        .context("the demo lab needs root; `xswitch demo --simulate` does not")?;
    super::require_tools(&["ip", "ping", "iperf3", "tcpdump", "etcd"])?;
    println!(
        "xswitch demo --hosts 2: building the lab (hosts a and b, each a switch with an underlay \
         port and VMs {} of tenants red (VNI 100) and blue (VNI 200), the same addresses in \
         both; the underlay a bridge in {}; etcd on loopback)",
        hosts.all()[2..]
            .iter()
            .filter(|n| !n.contains("-ul"))
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        hosts.underlay(),
    );
    let dir = std::env::temp_dir().join(format!("xswitch-demo-{}-{}", prefix, std::process::id()));
    let mut lab = Lab::build(hosts, dir)?;
    let port = lab.start_etcd()?;
    println!("xswitch demo: etcd on 127.0.0.1:{port}");
    for (h, addr, last) in HOSTS {
        let config = lab.hosts.config(h, addr, last, port);
        lab.start_switch(h, &config)?;
        println!(
            "xswitch demo: host {h}'s switch runs (tunnel {addr}, control socket {})",
            lab.hosts.socket(h).display()
        );
    }
    // Each host sees the other and its VMs' MACs in the map.
    let t0 = Instant::now();
    for (h, _, _) in HOSTS {
        loop {
            let s = status(&lab.hosts.socket(h))?;
            let c = &s["cluster"];
            if c["connected"] == true
                && c["hosts"].as_u64() >= Some(2)
                && c["macs"].as_u64() >= Some(4)
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) || stop.load(Ordering::SeqCst) {
                bail!("host {h} did not see the cluster: {c}\n{}", tail(&lab.log(h), 10));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The underlay as a person on it sees it.
    let capture = lab.dir.join("underlay.txt");
    let args = ["-i", "br0", "-nn", "-l", "udp", "port", "4789"];
    lab.background.push(super::tcpdump(&lab.hosts.underlay(), &args, &capture)?);

    let mut checks = super::Checks::default();
    let mut check = |what, expected, got, detail| checks.check(what, expected, got, detail);
    let vm = |h: &str, t: &str| lab.hosts.vm(h, t);
    println!("xswitch demo: traffic");
    if !stop.load(Ordering::SeqCst) {
        check(
            "ping red a -> red b (host to host)".into(),
            true,
            ping(&vm("a", "red"), "10.20.0.2"),
            String::new(),
        );
        check(
            "ping -6 red a -> red b".into(),
            true,
            ping(&vm("a", "red"), "fd00:20::2"),
            String::new(),
        );
        check(
            "ping blue a -> blue b (the same addresses)".into(),
            true,
            ping(&vm("a", "blu"), "10.20.0.2"),
            String::new(),
        );
        let bw = iperf(&vm("a", "red"), &vm("b", "red"), "10.20.0.2");
        check(
            "iperf3 TCP red a -> red b over VXLAN".into(),
            true,
            bw.is_some_and(|b| b > 0.0),
            bw.map_or("no result".into(), |b| format!("{b:.0} Mbit/s")),
        );
        // Isolation: each tenant's 10.20.0.2 is its own VM.
        for (t, short) in [(0, "red"), (1, "blu")] {
            let o = cmd(&in_ns(&vm("a", short), &["ip", "neigh", "show", "10.20.0.2"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>());
            let n = o
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let mac = vm_mac(2, t);
            check(
                format!("{} a's 10.20.0.2 is {} b's VM ({mac})", TENANTS[t].0, TENANTS[t].0),
                true,
                n.contains(&mac),
                n,
            );
        }
    }
    let seen = super::stop_captures(&mut lab.background, &capture);
    let count = |s: &str| seen.lines().filter(|l| l.contains(s)).count();
    let (red, blue) = (count("vni 100"), count("vni 200"));
    // Duplicate address detection's probes (from `::`) are the owners' to answer: they cross.
    let nd =
        seen.lines().filter(|l| l.contains("who has fd00:20::") && !l.contains(" :: > ")).count();
    let arp = count("ARP, Request");
    println!(
        "  the underlay saw: {red} frames of VNI 100 (red), {blue} of VNI 200 (blue); {arp} ARP \
         requests and {nd} neighbour solicitations for the VMs' addresses"
    );
    check(
        "both tenants cross the underlay, each with its VNI".into(),
        true,
        red > 0 && blue > 0,
        String::new(),
    );
    check(
        "no ARP or ND broadcast crosses it (the switches answer from the map)".into(),
        true,
        arp == 0 && nd == 0,
        String::new(),
    );

    println!();
    println!(
        "{:<5} {:<13} {:<10} {:>5} {:>5} {:>10} {:>10} {:>8} {:>9}",
        "host", "tunnel", "etcd", "hosts", "macs", "encap", "decap", "replicas", "arp/nd"
    );
    for (h, addr, _) in HOSTS {
        let s = status(&lab.hosts.socket(h))?;
        let (c, o) = (&s["cluster"], &s["overlay"]);
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        println!(
            "{h:<5} {addr:<13} {:<10} {:>5} {:>5} {:>10} {:>10} {:>8} {:>9}",
            if c["connected"] == true { "connected" } else { "DOWN" },
            n(&c["hosts"]),
            n(&c["macs"]),
            n(&o["encap_packets"]),
            n(&o["decap_packets"]),
            n(&o["replicas"]),
            format!("{}/{}", n(&o["arp_suppressed"]), n(&o["nd_suppressed"])),
        );
    }

    if keep && !stop.load(Ordering::SeqCst) {
        println!("\nxswitch demo: the lab is running; explore it, for example:");
        println!("  ip netns exec {} ping 10.20.0.2", vm("a", "red"));
        println!("  ip netns exec {} tcpdump -i br0 -nn udp port 4789", lab.hosts.underlay());
        println!("  xswitch ctl --socket {} status", lab.hosts.socket("a").display());
        println!("  xswitch ctl --socket {} fdb red", lab.hosts.socket("b").display());
        println!("Ctrl-C stops the switches and etcd and removes the lab.");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    lab.stop_switches();
    println!();
    for (h, _, _) in HOSTS {
        let log = lab.log(h);
        let line = log.lines().find(|l| l.contains("stopping:")).unwrap_or("no exit report");
        let at = line.find("stopping:").map_or(0, |i| i + "stopping:".len());
        let report = line[at..].trim();
        // The drop reasons follow the report, one a line.
        let reasons: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.contains("stopping:"))
            .skip(1)
            .take_while(|l| l.contains("  dropped "))
            .filter_map(|l| l.split("  dropped ").nth(1))
            .collect();
        let why =
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) };
        println!("host {h}: {report}{why}");
        let lost =
            report.split(", ").find_map(|p| p.strip_suffix(" lost in the kernel (XDP socket RX)"));
        check(
            format!("host {h}'s switch stopped cleanly and lost nothing in the kernel"),
            true,
            lost == Some("0") && log.contains("lease revoked"),
            String::new(),
        );
    }
    let all = lab.hosts.all();
    drop(lab);
    let links = cmd(&["ip", "-br", "link"])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let netns = cmd(&["ip", "netns", "list"])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let left: Vec<&String> =
        all.iter().filter(|n| links.contains(n.as_str()) || netns.contains(n.as_str())).collect();
    println!(
        "lab removed: {}",
        if left.is_empty() {
            "switches and etcd stopped, namespaces, veths and XDP programs gone".to_string()
        } else {
            format!("NO, these remain: {left:?}")
        }
    );
    super::conclude(&checks, left.is_empty())
}
