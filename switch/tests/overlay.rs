//! Tenants across hosts (issue 22): two xswitch processes, hosts `a` and `b`, each with a VM
//! (a namespace) of tenant red (VNI 100) and one of tenant blue (VNI 200) that has the very
//! same addresses, joined by an underlay (a Linux bridge in a namespace of its own), with the
//! cluster map in a real etcd (Debian's etcd-server, on loopback ports of the test's own, in a
//! temporary data directory). A third host `k` is the Linux kernel's own VXLAN device, its FDB
//! filled by the test from the same etcd map. The VMs keep their default offloads.
//! Needs root, `etcd` and `etcdctl` (scripts/setup installs etcd-server and etcd-client).
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "/xswitch/v1";
/// The lease TTL the switches register with.
const TTL: u64 = 4;

/// What a test built: removed when dropped, even when the test fails.
struct Cluster {
    tag: String,
    dir: PathBuf,
    ns: Vec<String>,
    links: Vec<String>,
    etcd: Option<Child>,
    client: u32,
    peer: u32,
    switches: Vec<(String, Option<Child>)>,
}

/// The tunnel address of host `h`.
fn tunnel(h: &str) -> String {
    match h {
        "a" => "192.168.77.1".into(),
        "b" => "192.168.77.2".into(),
        _ => "192.168.77.3".into(),
    }
}

/// The MAC of host `h`'s VM of tenant `t` (red: 1, blue: 2).
fn vm_mac(h: &str, t: &str) -> String {
    let hb = match h {
        "a" => 0x0a,
        "b" => 0x0b,
        _ => 0x0c,
    };
    format!("02:{hb:02x}:00:00:{:02x}:01", if t == "red" { 1 } else { 2 })
}

/// The VM address of host `h` in either tenant (the tenants have the same ones).
fn vm_ip(h: &str) -> String {
    match h {
        "a" => "10.20.0.1".into(),
        "b" => "10.20.0.2".into(),
        _ => "10.20.0.3".into(),
    }
}

/// The VM's IPv6 address, as [`vm_ip`].
fn vm_ip6(h: &str) -> String {
    match h {
        "a" => "fd00:20::1".into(),
        "b" => "fd00:20::2".into(),
        _ => "fd00:20::3".into(),
    }
}

impl Cluster {
    fn new() -> Cluster {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("o{}{}", std::process::id() % 10000, n);
        let dir = std::env::temp_dir().join(format!("xswitch-overlay-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let client = 23_000 + (std::process::id() % 3_000) * 4 + n * 2;
        let mut c = Cluster {
            tag,
            dir,
            ns: Vec::new(),
            links: Vec::new(),
            etcd: None,
            client,
            peer: client + 1,
            switches: Vec::new(),
        };
        // The underlay: a bridge in a namespace of its own, MTU 1600 so that a VM's 1500-byte
        // packets fit with their 50 bytes of VXLAN.
        let ul = c.ns_add("ul");
        must("ip", &["-n", &ul, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &ul, "link", "set", "br0", "up"]);
        c
    }

    fn ns_add(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        must("ip", &["netns", "add", &ns]);
        self.ns.push(ns.clone());
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// A veth from the root namespace (`root`, taken by a switch) to `eth0` in `ns`.
    fn veth(&mut self, root: &str, ns: &str) {
        must("ip", &["link", "add", root, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        self.links.push(root.to_string());
        must("ip", &["link", "set", root, "up"]);
    }

    /// A port on the underlay bridge: `ifname` in namespace `ns` (or the root namespace),
    /// its peer enslaved to the bridge.
    fn underlay_port(&mut self, ifname: &str, ns: Option<&str>, peer: &str) {
        let ul = self.ns("ul");
        match ns {
            None => {
                must(
                    "ip",
                    &["link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", &ul],
                );
                self.links.push(ifname.to_string());
                must("ip", &["link", "set", ifname, "mtu", "1600", "up"]);
            }
            Some(ns) => {
                must(
                    "ip",
                    &[
                        "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", peer,
                        "netns", &ul,
                    ],
                );
                must("ip", &["-n", ns, "link", "set", ifname, "mtu", "1600", "up"]);
            }
        }
        must("ip", &["-n", &ul, "link", "set", peer, "mtu", "1600", "master", "br0", "up"]);
    }

    /// A VM of tenant `t` on host `h`: namespace `hT` with eth0 (MAC, address, default
    /// offloads), its other end `TAGhT` taken by the switch.
    fn vm(&mut self, h: &str, t: &str) {
        let ns = self.ns_add(&format!("{h}{}", &t[..1]));
        let root = format!("{}{h}{}", self.tag, &t[..1]);
        self.veth(&root, &ns);
        must("ip", &["-n", &ns, "link", "set", "eth0", "address", &vm_mac(h, t)]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{}/24", vm_ip(h)), "dev", "eth0"]);
        // Duplicate address detection stays on, as users have it (its solicitations, from
        // `::`, flood across the overlay: the switch must not answer them).
        let v6 = format!("{}/64", vm_ip6(h));
        must("ip", &["-n", &ns, "addr", "add", &v6, "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let ep = format!("http://127.0.0.1:{}", self.client);
        let o = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &ep, "--dial-timeout", "2s", "--command-timeout", "3s"])
            .args(args)
            .output()
            .expect("etcdctl (scripts/setup installs etcd-client)");
        assert!(o.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// Starts etcd on the test's loopback ports and data directory; waits until it answers.
    fn start_etcd(&mut self) {
        let (c, p) = (
            format!("http://127.0.0.1:{}", self.client),
            format!("http://127.0.0.1:{}", self.peer),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("t={p}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (scripts/setup installs etcd-server)");
        self.etcd = Some(child);
        let t0 = Instant::now();
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &c, "--dial-timeout", "1s", "endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            assert!(t0.elapsed() < Duration::from_secs(20), "etcd did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_etcd(&mut self) {
        if let Some(mut e) = self.etcd.take() {
            let _ = Command::new("kill").args(["-TERM", &e.id().to_string()]).status();
            if exits_within(&mut e, Duration::from_secs(10)).is_none() {
                let _ = e.kill();
            }
        }
    }

    /// Host `h`: its underlay port, a VM of red and one of blue, and its switch's config.
    fn host(&mut self, h: &str) {
        let ul = format!("{}u{h}", self.tag);
        self.underlay_port(&ul, None, &format!("p{h}"));
        self.vm(h, "red");
        self.vm(h, "blue");
        let cfg = format!(
            "[switch]\nframes = 16384\nring_size = 256\nidle = \"adaptive\"\n\
             [metrics]\nenabled = false\n\
             [control]\nsocket = \"{ctl}\"\n\
             [cluster]\netcd = [\"http://127.0.0.1:{port}\"]\nhost = \"{h}\"\nlease_ttl_secs = {TTL}\n\
             [ports.ul]\ninterface = \"{ul}\"\nkind = \"underlay\"\n\
             [ports.ul.tunnel]\naddress = \"{addr}\"\n\
             [ports.r]\ninterface = \"{tag}{h}r\"\nkind = \"tenant\"\n\
             [ports.b]\ninterface = \"{tag}{h}b\"\nkind = \"tenant\"\n\
             [tenants.red]\nvni = 100\n\
             attach = [{{ port = \"r\", macs = [\"{rmac}\"], ips = [\"{ip}\", \"{ip6}\"] }}]\n\
             [tenants.blue]\nvni = 200\n\
             attach = [{{ port = \"b\", macs = [\"{bmac}\"], ips = [\"{ip}\", \"{ip6}\"] }}]\n",
            ctl = self.ctl_path(h).display(),
            port = self.client,
            addr = tunnel(h),
            tag = self.tag,
            rmac = vm_mac(h, "red"),
            bmac = vm_mac(h, "blue"),
            ip = vm_ip(h),
            ip6 = vm_ip6(h),
        );
        std::fs::write(self.dir.join(format!("{h}.toml")), cfg).unwrap();
    }

    fn ctl_path(&self, h: &str) -> PathBuf {
        self.dir.join(format!("{h}.sock"))
    }

    fn log(&self, h: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{h}.log"))).unwrap_or_default()
    }

    /// Starts host `h`'s switch and waits until it switches.
    fn start(&mut self, h: &str) {
        let log = std::fs::File::create(self.dir.join(format!("{h}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_xswitch"))
            .args(["run", "-c"])
            .arg(self.dir.join(format!("{h}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.switches.push((h.to_string(), Some(child)));
        let t0 = Instant::now();
        while !self.log(h).contains("switching") {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "switch {h} did not start:\n{}",
                self.log(h)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn switch(&mut self, h: &str) -> &mut Option<Child> {
        &mut self.switches.iter_mut().find(|(n, _)| n == h).expect("started").1
    }

    /// `xswitch ctl --json status` of host `h`.
    fn status(&self, h: &str) -> serde_json::Value {
        let o = Command::new(env!("CARGO_BIN_EXE_xswitch"))
            .args(["ctl", "--socket"])
            .arg(self.ctl_path(h))
            .args(["--json", "status"])
            .output()
            .unwrap();
        assert!(o.status.success(), "ctl status of {h}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Waits (at most `limit`) until `f` holds of host `h`'s cluster status.
    fn wait_status(
        &self,
        h: &str,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let s = self.status(h);
            if f(&s["cluster"]) {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "host {h}'s cluster status after {limit:?}: {s}\n{}",
                self.log(h)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ns_run(&self, ns: &str, args: &[&str]) -> std::process::Output {
        let ns = self.ns(ns);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        self.ns_run(from, &["ping", "-c", "3", "-i", "0.2", "-W", "1", to]).status.success()
    }

    /// Host `h`'s answers from the map: (ARP, ND).
    fn suppressed(&self, h: &str) -> (u64, u64) {
        let s = self.status(h);
        let n = |k: &str| s["overlay"][k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
        (n("arp_suppressed"), n("nd_suppressed"))
    }

    /// iperf3 TCP from VM `from` to `to` (a server in VM `server`) for 2 s: bit/s received.
    fn iperf(&self, from: &str, server: &str, to: &str) -> f64 {
        let mut srv = Command::new("ip")
            .args(["netns", "exec", &self.ns(server), "iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let o = self
            .ns_run(from, &["timeout", "20", "iperf3", "-c", to, "-p", "5201", "-t", "2", "-J"]);
        let _ = exits_within(&mut srv, Duration::from_secs(5));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
    }

    /// Starts capturing VXLAN on the underlay bridge into `NAME.pcap`.
    fn capture(&self, name: &str) -> (Child, PathBuf) {
        let cap = self.dir.join(format!("{name}.pcap"));
        let dump = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("ul"),
                "tcpdump",
                "-i",
                "br0",
                "-n",
                "-U",
                "-s",
                "128",
                "-w",
            ])
            .arg(&cap)
            .args(["udp", "port", "4789"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        (dump, cap)
    }

    /// Stops capture `dump` if it still runs.
    fn stop(&self, dump: &mut Child) {
        if dump.try_wait().is_ok_and(|s| s.is_none()) {
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new("kill").args(["-INT", &dump.id().to_string()]).status();
            let _ = exits_within(dump, Duration::from_secs(5));
        }
    }

    /// Stops capture `dump` (if it still runs) and counts the VXLAN frames of `cap` whose
    /// inner frame matches the display filter `filter`.
    fn stop_capture(&self, dump: &mut Child, cap: &std::path::Path, filter: &str) -> usize {
        self.stop(dump);
        let o = run(
            "tshark",
            &["-r", cap.to_str().unwrap(), "-d", "udp.port==4789,vxlan", "-Y", filter],
        );
        String::from_utf8_lossy(&o.stdout).lines().count()
    }

    /// Host `k`: the kernel's VXLAN device for VNI 100 on the underlay, registered in etcd by
    /// the test as a host with red's VM `k`, its FDB filled from the map in etcd.
    fn kernel_host(&mut self) {
        let ns = self.ns_add("k");
        self.underlay_port("eth0", Some(&ns), "pk");
        must("ip", &["-n", &ns, "addr", "add", "192.168.77.3/24", "dev", "eth0"]);
        let vx = ["link", "add", "vx0", "type", "vxlan", "id", "100", "dstport", "4789"];
        let mut args = vec!["-n", ns.as_str()];
        args.extend(vx);
        args.extend(["local", "192.168.77.3", "dev", "eth0", "nolearning"]);
        must("ip", &args);
        let mac = vm_mac("k", "red");
        must("ip", &["-n", &ns, "link", "set", "vx0", "address", &mac, "mtu", "1500", "up"]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{}/24", vm_ip("k")), "dev", "vx0"]);
        let o = self.ns_run("k", &["cat", "/sys/class/net/eth0/address"]);
        let eth0 = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let host = format!(r#"{{"address":"192.168.77.3","mac":"{eth0}","udp_port":4789}}"#);
        self.etcdctl(&["put", &format!("{PREFIX}/hosts/k"), &host]);
        self.etcdctl(&["put", &format!("{PREFIX}/vnis/100/hosts/k"), "{}"]);
        let m = format!(r#"{{"host":"k","ips":["{}"]}}"#, vm_ip("k"));
        self.etcdctl(&["put", &format!("{PREFIX}/vnis/100/macs/{mac}"), &m]);
    }

    /// Fills host `k`'s VXLAN FDB and neighbours from the map in etcd: every other host that
    /// carries VNI 100 gets the flood entry, every MAC of VNI 100 its host's tunnel address.
    fn fill_kernel_fdb(&self) {
        let out = self.etcdctl(&["get", "--prefix", PREFIX]);
        let lines: Vec<&str> = out.lines().collect();
        let mut hosts = std::collections::BTreeMap::new();
        let mut members = Vec::new();
        let mut macs = Vec::new();
        for kv in lines.chunks(2) {
            let [k, v] = kv else { continue };
            let rest = k.strip_prefix(PREFIX).unwrap_or("");
            let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
            let v: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
            match parts.as_slice() {
                ["hosts", h] => {
                    hosts.insert(
                        h.to_string(),
                        (
                            v["address"].as_str().unwrap_or("").to_string(),
                            v["mac"].as_str().unwrap_or("").to_string(),
                        ),
                    );
                }
                ["vnis", "100", "hosts", h] => members.push(h.to_string()),
                ["vnis", "100", "macs", m] => {
                    macs.push((m.to_string(), v["host"].as_str().unwrap_or("").to_string()))
                }
                _ => {}
            }
        }
        let ns = self.ns("k");
        for h in members.iter().filter(|h| *h != "k") {
            let (addr, _) = &hosts[h];
            must(
                "bridge",
                &["-n", &ns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", addr],
            );
            // No neighbour entry for the switches' tunnel addresses: the kernel asks with
            // ARP on the underlay, and each switch answers for its own.
        }
        for (m, h) in macs.iter().filter(|(_, h)| h != "k") {
            let (addr, _) = &hosts[h];
            must("bridge", &["-n", &ns, "fdb", "replace", m, "dev", "vx0", "dst", addr]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.switches {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        for l in &self.links {
            let _ = run("ip", &["link", "del", l]);
        }
        for ns in &self.ns {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two switches and etcd, both hosts registered and each seeing the other.
fn two_hosts() -> Cluster {
    let mut c = Cluster::new();
    c.start_etcd();
    c.host("a");
    c.host("b");
    c.start("a");
    c.start("b");
    for h in ["a", "b"] {
        c.wait_status(h, Duration::from_secs(10), |s| {
            s["connected"] == true
                && s["hosts"].as_u64() >= Some(2)
                && s["macs"].as_u64() >= Some(4)
        });
    }
    c
}

#[test]
fn two_hosts_and_the_kernels_vxlan_carry_two_tenants_with_one_address_plan_apart() {
    if !can_run("two_hosts_and_the_kernels_vxlan_carry_two_tenants_with_one_address_plan_apart") {
        return;
    }
    let _one = one_at_a_time();
    let mut c = two_hosts();
    // ARP suppression: the first ping between two VMs that know nothing of each other sends
    // no ARP across the underlay: each switch answers for the other host's VM from the map.
    let (mut dump, cap) = c.capture("arp");
    assert!(c.ping("ar", &vm_ip("b")), "red a -> red b\n{}\n{}", c.log("a"), c.log("b"));
    let arp = c.stop_capture(&mut dump, &cap, "arp");
    let icmp = c.stop_capture(&mut dump, &cap, "icmp");
    assert_eq!((arp, icmp >= 6), (0, true), "ARP and ICMP frames inside VXLAN");
    for h in ["a", "b"] {
        assert!(c.suppressed(h).0 >= 1, "{h}: {:?}", c.suppressed(h));
    }
    // ND suppression, the same for IPv6: no neighbour solicitation for either VM's address
    // crosses the underlay (the VMs' own link-local traffic, from `::` or for fe80::, may).
    for vm in ["ar", "br"] {
        // Wait (bounded) until DAD has finished; an address that failed it never will.
        let t0 = Instant::now();
        loop {
            let o = c.ns_run(vm, &["ip", "-6", "addr", "show", "dev", "eth0"]);
            let a = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(!a.contains("dadfailed"), "{vm}: {a}");
            if !a.contains("tentative") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{vm}: {a}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (mut dump, cap) = c.capture("nd");
    assert!(c.ping("ar", &vm_ip6("b")), "red a -> red b over IPv6\n{}", c.log("a"));
    let ns = "icmpv6.type == 135 && (icmpv6.nd.ns.target_address == fd00:20::1 \
              || icmpv6.nd.ns.target_address == fd00:20::2)";
    let ns = c.stop_capture(&mut dump, &cap, ns);
    let echo = c.stop_capture(&mut dump, &cap, "icmpv6.type == 128 || icmpv6.type == 129");
    assert_eq!((ns, echo >= 6), (0, true), "solicitations and echoes inside VXLAN");
    for h in ["a", "b"] {
        assert!(c.suppressed(h).1 >= 1, "{h}: {:?}", c.suppressed(h));
    }
    // A capture of the underlay while the VMs talk.
    let (mut dump, cap) = c.capture("underlay");
    assert!(c.ping("ab", &vm_ip("b")), "blue a -> blue b\n{}", c.log("a"));
    assert!(c.ping("br", &vm_ip("a")), "red b -> red a");
    // Each tenant reached its own VM: the neighbour each learned is its own tenant's MAC.
    for (vm, t) in [("ar", "red"), ("ab", "blue")] {
        let o = c.ns_run(vm, &["ip", "neigh", "show", &vm_ip("b")]);
        let n = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(n.contains(&vm_mac("b", t)), "{t}'s neighbour 10.20.0.2 is {n}");
    }
    // Isolation both ways: with blue's VM on b down, blue cannot reach 10.20.0.2 (red's VM
    // there, same address, does not answer for it); and the other way round.
    for (down, t, other) in [("bb", "ab", "ar"), ("br", "ar", "ab")] {
        must("ip", &["-n", &c.ns(down), "link", "set", "eth0", "down"]);
        c.ns_run(t, &["ip", "neigh", "flush", "all"]);
        c.ns_run(other, &["ip", "neigh", "flush", "all"]);
        assert!(!c.ping(t, &vm_ip("b")), "{t} reached 10.20.0.2 with its tenant's VM there down");
        assert!(c.ping(other, &vm_ip("b")), "{other} lost 10.20.0.2 when {down} went down");
        must("ip", &["-n", &c.ns(down), "link", "set", "eth0", "up"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The capture shows both VNIs on UDP 4789.
    c.stop(&mut dump);
    let o = run(
        "tshark",
        &[
            "-r",
            cap.to_str().unwrap(),
            "-d",
            "udp.port==4789,vxlan",
            "-T",
            "fields",
            "-e",
            "vxlan.vni",
        ],
    );
    let vnis: std::collections::BTreeMap<String, usize> =
        String::from_utf8_lossy(&o.stdout).lines().fold(Default::default(), |mut m, l| {
            *m.entry(l.trim().to_string()).or_default() += 1;
            m
        });
    assert!(vnis.get("100").is_some_and(|&n| n > 10), "VNIs on the underlay: {vnis:?}");
    assert!(vnis.get("200").is_some_and(|&n| n > 5), "VNIs on the underlay: {vnis:?}");
    let bps = c.iperf("ar", "br", &vm_ip("b"));
    eprintln!("iperf3 TCP red a -> red b over the overlay: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 50e6, "{bps} bit/s\n{}", c.log("a"));
    // The kernel's VXLAN device as a third host of red.
    c.kernel_host();
    for h in ["a", "b"] {
        c.wait_status(h, Duration::from_secs(10), |s| s["hosts"].as_u64() >= Some(3));
    }
    c.fill_kernel_fdb();
    assert!(c.ping("k", &vm_ip("a")), "kernel VXLAN k -> red a\n{}", c.log("a"));
    assert!(c.ping("ar", &vm_ip("k")), "red a -> kernel VXLAN k");
    let bps = c.iperf("k", "br", &vm_ip("b"));
    eprintln!("iperf3 TCP kernel VXLAN k -> red b: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 50e6, "{bps} bit/s\n{}", c.log("b"));
    let bps = c.iperf("br", "k", &vm_ip("k"));
    eprintln!("iperf3 TCP red b -> kernel VXLAN k: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 50e6, "{bps} bit/s\n{}", c.log("b"));
    for h in ["a", "b"] {
        let s = c.status(h);
        assert!(s["overlay"]["tunnel_arp_replies"].as_u64() >= Some(1), "{h}: {s}");
        let o = c.ns_run("k", &["ip", "neigh", "show", &tunnel(h)]);
        let n = String::from_utf8_lossy(&o.stdout).to_string();
        let ul = format!("/sys/class/net/{}u{h}/address", c.tag);
        let mac = std::fs::read_to_string(ul).unwrap();
        assert!(n.contains(mac.trim()), "k's neighbour {}: {n}, the switch's {mac}", tunnel(h));
    }
    let s = c.status("a");
    assert!(s["overlay"]["encap_packets"].as_u64() > Some(1000), "{s}");
    assert!(s["overlay"]["decap_packets"].as_u64() > Some(1000), "{s}");
}

#[test]
fn an_etcd_outage_loses_nothing_and_a_dead_hosts_macs_leave_within_the_ttl() {
    if !can_run("an_etcd_outage_loses_nothing_and_a_dead_hosts_macs_leave_within_the_ttl") {
        return;
    }
    let _one = one_at_a_time();
    let mut c = two_hosts();
    assert!(c.ping("ar", &vm_ip("b")), "red a -> red b\n{}", c.log("a"));
    // 20 s of numbered datagrams red a -> red b; etcd is away for 10 s of them.
    let count = 20 * 500;
    let stream = seq_stream_ns(&c.ns("ar"), &c.ns("br"), &vm_ip("b"), count, 500);
    std::thread::sleep(Duration::from_secs(3));
    c.stop_etcd();
    let s = c.wait_status("a", Duration::from_secs(8), |s| s["connected"] == false);
    assert!(s["cluster"]["last_error"].is_string(), "{s}");
    std::thread::sleep(Duration::from_secs(10));
    c.start_etcd();
    for h in ["a", "b"] {
        c.wait_status(h, Duration::from_secs(15), |s| s["connected"] == true);
    }
    let v = stream.counts(Duration::from_secs(40));
    assert_eq!(v, [count, 0, 0], "received, missing, duplicated\n{}", c.log("a"));
    let log = c.log("a");
    assert!(log.contains("etcd unreachable") && log.contains("reachable again"), "{log}");
    assert!(c.status("a")["cluster"]["outages"].as_u64() >= Some(1));
    // Host b dies without a word: its MACs leave a's map within the lease's TTL (+ 2 s).
    let before = c.status("a")["cluster"]["macs"].as_u64().unwrap();
    if let Some(mut b) = c.switch("b").take() {
        b.kill().unwrap();
        b.wait().unwrap();
    }
    let t0 = Instant::now();
    c.wait_status("a", Duration::from_secs(TTL + 2), |s| {
        s["macs"].as_u64() == Some(before - 2) && s["hosts"].as_u64() == Some(1)
    });
    eprintln!("host b's MACs left host a's map {:.1} s after it died", t0.elapsed().as_secs_f64());
    // And traffic to them is no longer sent anywhere: no host has red's VNI but a.
    assert!(!c.ping("ar", &vm_ip("b")));
}

#[test]
fn the_two_host_demo_runs_to_completion_and_leaves_nothing_behind() {
    if !can_run("the_two_host_demo_runs_to_completion_and_leaves_nothing_behind") {
        return;
    }
    let _one = one_at_a_time();
    let prefix = format!("xo{}", std::process::id() % 100_000);
    let o = Command::new("timeout")
        .args(["180", env!("CARGO_BIN_EXE_xswitch"), "demo", "--hosts", "2", "--prefix", &prefix])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    for s in [
        "ping -6 red a -> red b",
        "iperf3 TCP red a -> red b over VXLAN",
        "no ARP or ND broadcast crosses it",
        "host a's switch stopped cleanly and lost nothing in the kernel",
        "all checks passed",
    ] {
        assert!(out.contains(s), "{s} missing:\n{out}");
    }
    assert!(!out.contains("[FAIL]"), "{out}");
    // The table: both hosts connected, each seeing two hosts and four MACs, and answering
    // ARP and ND from the map.
    for h in ["a", "b"] {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(h) && l.contains("connected"))
            .unwrap_or_else(|| panic!("no row of host {h}:\n{out}"));
        let w: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((w[3], w[4]), ("2", "4"), "hosts and MACs of {h}: {row}");
        let (arp, nd) = w[8].split_once('/').unwrap();
        assert!(arp.parse::<u64>().unwrap() >= 1 && nd.parse::<u64>().unwrap() >= 1, "{row}");
    }
    let mine = format!("{prefix}-");
    let links = String::from_utf8_lossy(&run("ip", &["-br", "link"]).stdout).to_string();
    let netns = String::from_utf8_lossy(&run("ip", &["netns", "list"]).stdout).to_string();
    assert!(!links.contains(&mine) && !netns.contains(&mine), "{links}\n{netns}");
    let procs = String::from_utf8_lossy(&run("ps", &["-eo", "args"]).stdout).to_string();
    assert!(!procs.lines().any(|l| l.contains(&format!("xswitch-demo-{prefix}"))), "{procs}");
}

/// An upgrade (`run --takeover`) of host a while etcd is down: the new process switches to
/// host b on the map the old one handed over from its first breath (it cannot read etcd), and
/// a numbered stream a -> b loses nothing; once etcd is back its agent resumes the watch.
#[test]
fn an_upgrade_with_etcd_down_switches_to_other_hosts_on_the_map_handed_over() {
    if !can_run("an_upgrade_with_etcd_down_switches_to_other_hosts_on_the_map_handed_over") {
        return;
    }
    let _one = one_at_a_time();
    let mut c = two_hosts();
    assert!(c.ping("ar", &vm_ip("b")), "red a -> red b\n{}", c.log("a"));
    c.stop_etcd();
    c.wait_status("a", Duration::from_secs(8), |s| s["connected"] == false);
    let count = 8 * 1000;
    let stream = seq_stream_ns(&c.ns("ar"), &c.ns("br"), &vm_ip("b"), count, 1000);
    std::thread::sleep(Duration::from_millis(1500));
    let log = std::fs::File::create(c.dir.join("a2.log")).unwrap();
    let new = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .args(["run", "--takeover", "-c"])
        .arg(c.dir.join("a.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    c.switches.push(("a2".into(), Some(new)));
    let mut old = c.switch("a").take().unwrap();
    let st = exits_within(&mut old, Duration::from_secs(20));
    let a2_log = c.dir.join("a2.log");
    let a2 = || std::fs::read_to_string(&a2_log).unwrap_or_default();
    assert!(
        st.is_some_and(|s| s.success()),
        "the old process:\n{}\nthe new:\n{}",
        c.log("a"),
        a2()
    );
    let v = stream.counts(Duration::from_secs(30));
    assert_eq!(v, [count, 0, 0], "received, missing, duplicated\n{}", a2());
    assert!(a2().contains("cluster map of revision"), "{}", a2());
    assert_eq!(c.status("a")["cluster"]["connected"], false);
    assert!(c.status("a")["overlay"]["encap_packets"].as_u64() >= Some(count / 2));
    // etcd back: the new process registers and watches; b still reaches a.
    c.start_etcd();
    c.wait_status("a", Duration::from_secs(15), |s| s["connected"] == true && s["hosts"] == 2);
    assert!(c.ping("br", &vm_ip("a")), "red b -> red a after the upgrade\n{}", a2());
}
