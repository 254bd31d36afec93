//! The test lab shared by the AF_XDP integration tests: network namespaces and veth pairs
//! built per test (unique names, torn down in `Drop` even when a test fails), `xswitch run` on
//! the host ends. Needs root; CI runs as root.
// Each test binary uses a different part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// The tests of one file that measure the switch one at a time: a stream that counts every
/// datagram, a rate or a latency measured on two cores is a measure of the switch only when no
/// other test's switch busy-polls beside it. (Tests of one file run in parallel threads.)
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns false (after saying so loudly) when the test cannot run here. Without root the
/// tests fail unless XSWITCH_SKIP_ROOT_TESTS=1 is set, so CI can never skip them silently.
pub fn can_run(name: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("XSWITCH_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("\n!!! SKIPPED {name}: needs root for namespaces and AF_XDP !!!\n");
        return false;
    }
    panic!("{name} needs root (namespaces, AF_XDP); set XSWITCH_SKIP_ROOT_TESTS=1 to skip");
}

/// Waits up to `limit` for `child` to exit; kills it (and returns None) if it does not.
pub fn exits_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// GET `path` from `addr` over plain HTTP/1.0: the body (reads time out after 5 s).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    http_status(addr, path).map(|(_, body)| body)
}

/// GET `path` from `addr` over plain HTTP/1.0: the status code and the body.
pub fn http_status(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// A loopback port for a test's metrics listener, unique among the tests of this run.
pub fn metrics_port(base: u32) -> u32 {
    base + (std::process::id() % 1_000) * 10 + NEXT.fetch_add(1, Ordering::SeqCst) % 10
}

/// From the switch's exit report: what the kernel lost before the switch saw it, as the
/// summary line says it, checked against the per-socket table (`rx_ring_full` + `rx_dropped`).
pub fn kernel_lost(log: &str) -> u64 {
    let summary: u64 = log
        .lines()
        .find_map(|l| l.split(" dropped by the switch, ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary of the kernel's loss:\n{log}"));
    let table: u64 = log
        .lines()
        .filter_map(|l| {
            let cols: Vec<u64> = l
                .split_whitespace()
                .skip_while(|w| *w != "queue")
                .skip(1)
                .map_while(|w| w.parse().ok())
                .collect();
            // queue, rx_ring_full, rx_dropped, and six more columns.
            (cols.len() == 9).then(|| cols[1] + cols[2])
        })
        .sum();
    assert_eq!(summary, table, "the summary's kernel loss against the socket table:\n{log}");
    summary
}

/// Waits (at most `limit`) until process `pid`, not a child of the test, has ended (gone, or
/// a zombie its new parent has not reaped).
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The sum of every `key` anywhere in `v` (the rows of `ctl ports`, say).
pub fn sum_of(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, x)| if k == key { x.as_u64().unwrap_or(0) } else { sum_of(x, key) })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(|x| sum_of(x, key)).sum(),
        _ => 0,
    }
}

/// Parses a MAC written `02:00:00:00:00:01`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
    v.try_into().unwrap()
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn must(cmd: &str, args: &[&str]) {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The demo topology in miniature: tenant red has hosts h1, h2 and VLAN 100 on the uplink
/// (whose peer is namespace `fab`: this kernel has no 8021q module, so the fabric side sends
/// and captures tagged frames raw); tenant blue has host h3 and VLAN 200. All hosts share one
/// subnet, so only the switch keeps red and blue apart.
pub struct Lab {
    pub tag: String,
    pub ns: Vec<String>,
    pub dir: PathBuf,
    pub switch: Option<Child>,
    pub queues: u32,
    /// Hosts added (their host-side interfaces are removed at the end).
    pub hosts: Vec<String>,
    /// Environment of the switch process.
    pub env: Vec<(String, String)>,
    /// The hosts' stacks speak IPv6 (on, as users have it, unless the test counts every
    /// frame: [`Lab::without_ipv6`]).
    pub ipv6: bool,
    /// Switch processes started after the first by a takeover (each logs to its own file).
    pub takeovers: u32,
}

impl Lab {
    /// A lab whose hosts keep the defaults users have: TX checksum offload on (the switch
    /// completes the partial checksums it brings), IPv6 on in the hosts and on the host ends the
    /// switch takes (the switch silences those itself).
    pub fn new() -> Lab {
        Lab::with_queues(1)
    }

    /// As [`Lab::new`], with host veths of `queues` RX and TX queues each.
    pub fn with_queues(queues: u32) -> Lab {
        Lab::build(queues, true)
    }

    /// As [`Lab::new`], but the hosts' stacks do not speak IPv6: for the tests that count every
    /// frame a host sends (its router solicitations and listener reports would be counted
    /// too). Offloads stay as users have them.
    pub fn without_ipv6() -> Lab {
        Lab::build(1, false)
    }

    fn build(queues: u32, ipv6: bool) -> Lab {
        let tag = format!("x{}{}", std::process::id() % 10000, NEXT.fetch_add(1, Ordering::SeqCst));
        let dir = std::env::temp_dir().join(format!("xswitch-test-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab = Lab {
            tag,
            ns: Vec::new(),
            dir,
            switch: None,
            queues,
            hosts: Vec::new(),
            env: Vec::new(),
            ipv6,
            takeovers: 0,
        };
        for (host, ip) in [("h1", "1"), ("h2", "2"), ("h3", "3")] {
            lab.host(host, ip);
        }
        // The fabric: uplink peer with a VLAN 100 interface.
        let ns = lab.ns_name("fab");
        let hif = lab.ifname("up");
        must("ip", &["netns", "add", &ns]);
        lab.ns.push(ns.clone());
        must("ip", &["link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        // The fabric stands in for the L2 trunk beyond the uplink, which has no IP stack of its
        // own: its untagged router solicitations would be frames of no tenant, a Linux
        // namespace's artefact, not the network's (the hosts keep their IPv6).
        must("ip", &["netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        lab.bring_up(&ns, &hif);
        let cfg = format!(
            "[switch]\nframes = 16384\nring_size = 256\nidle = \"adaptive\"\n\
             [metrics]\nenabled = false\n\
             [control]\nsocket = \"{ctl}\"\n\
             [ports.up]\ninterface = \"{up}\"\nkind = \"uplink\"\n\
             [ports.h1]\ninterface = \"{h1}\"\nkind = \"tenant\"\n\
             [ports.h2]\ninterface = \"{h2}\"\nkind = \"tenant\"\n\
             [ports.h3]\ninterface = \"{h3}\"\nkind = \"tenant\"\n\
             [tenants.red]\nattach = [{{ port = \"up\", vlan = 100 }}, {{ port = \"h1\" }}, {{ port = \"h2\" }}]\n\
             [tenants.blue]\nattach = [{{ port = \"up\", vlan = 200 }}, {{ port = \"h3\" }}]\n",
            up = lab.ifname("up"),
            h1 = lab.ifname("h1"),
            h2 = lab.ifname("h2"),
            h3 = lab.ifname("h3"),
            ctl = lab.dir.join("ctl.sock").display(),
        );
        std::fs::write(lab.config(), cfg).unwrap();
        lab
    }

    pub fn ns_name(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// Host-side interface name (at most 15 bytes).
    pub fn ifname(&self, host: &str) -> String {
        format!("{}{host}", self.tag)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("lab.toml")
    }

    pub fn host(&mut self, host: &str, ip: &str) {
        let ns = self.ns_name(host);
        let hif = self.ifname(host);
        must("ip", &["netns", "add", &ns]);
        self.ns.push(ns.clone());
        self.hosts.push(host.to_string());
        let q = self.queues.to_string();
        must(
            "ip",
            &[
                "link",
                "add",
                &hif,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &ns,
            ],
        );
        must("ip", &["-n", &ns, "addr", "add", &format!("10.9.1.{ip}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        self.bring_up(&ns, &hif);
    }

    /// Loopback up, host end up. Offloads and the host end's IPv6 stay as a host has them;
    /// the host's own IPv6 goes off only in a lab made [`Lab::without_ipv6`].
    pub fn bring_up(&self, ns: &str, hif: &str) {
        must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        if !self.ipv6 {
            let off = "net.ipv6.conf.all.disable_ipv6=1";
            must("ip", &["netns", "exec", ns, "sysctl", "-qw", off]);
        }
        must("ip", &["link", "set", hif, "up"]);
    }

    /// Adds host `host` (address 10.9.1.`ip`) as a third host of tenant red, on a port named
    /// after it.
    pub fn red_host(&mut self, host: &str, ip: &str) {
        self.host(host, ip);
        let hif = self.ifname(host);
        self.edit_config(|c| {
            c.replace(
                "{ port = \"h2\" }]",
                &format!("{{ port = \"h2\" }}, {{ port = \"{host}\" }}]"),
            ) + &format!("[ports.{host}]\ninterface = \"{hif}\"\nkind = \"tenant\"\n")
        });
    }

    pub fn ns_run(&self, host: &str, args: &[&str]) -> Output {
        let ns = self.ns_name(host);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Turns the metrics endpoint on at a loopback port unique to this test (from `base`);
    /// returns its address.
    pub fn enable_metrics(&self, base: u32) -> String {
        let addr = format!("127.0.0.1:{}", metrics_port(base));
        self.edit_config(|c| {
            c.replace("[metrics]\nenabled = false\n", &format!("[metrics]\nlisten = \"{addr}\"\n"))
        });
        addr
    }

    /// Rewrites the config with `f`.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let cfg = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), f(cfg)).unwrap();
    }

    /// iperf3 TCP from `from` to `to` (an address) for 2 s with `streams` streams; bit/s
    /// received.
    pub fn iperf(&self, from: &str, to_host: &str, to: &str, port: &str, streams: &str) -> f64 {
        self.iperf_with(from, to_host, to, port, &["-t", "2", "-P", streams])
    }

    /// iperf3 TCP with extra client arguments; bit/s received.
    pub fn iperf_with(
        &self,
        from: &str,
        to_host: &str,
        to: &str,
        port: &str,
        extra: &[&str],
    ) -> f64 {
        let mut server = self.iperf_server(to_host, port, true);
        let mut args = vec!["timeout", "30", "iperf3", "-c", to, "-p", port, "-J"];
        args.extend_from_slice(extra);
        let out = self.ns_run(from, &args);
        let _ = server.kill();
        let _ = server.wait();
        let json = String::from_utf8_lossy(&out.stdout);
        let bps = json
            .split("\"sum_received\"")
            .nth(1)
            .and_then(|s| s.split("\"bits_per_second\":").nth(1))
            .and_then(|s| s.split([',', '}']).next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(out.status.success(), "iperf3 {from} -> {to} failed:\n{json}");
        bps
    }

    /// An iperf3 server in `host`'s namespace on `port` (for one test when `once`), given
    /// half a second to listen.
    pub fn iperf_server(&self, host: &str, port: &str, once: bool) -> Child {
        let ns = self.ns_name(host);
        let mut args = vec!["netns", "exec", &ns, "iperf3", "-s", "-p", port];
        if once {
            args.push("-1");
        }
        let server = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        server
    }

    pub fn ping(&self, from: &str, to: &str, count: &str) -> bool {
        self.ns_run(from, &["ping", "-c", count, "-i", "0.2", "-W", "1", to]).status.success()
    }

    /// The log of the switch process started last.
    pub fn log(&self) -> PathBuf {
        match self.takeovers {
            0 => self.dir.join("switch.log"),
            n => self.dir.join(format!("switch-{n}.log")),
        }
    }

    /// `binary run --takeover[=mode]` on the lab's config, beside the running switch: waits
    /// (bounded) until the new process says it switches, or exits. Returns the new process's
    /// exit status if it exited (a refused takeover), else the old process's once it has
    /// exited too (it must within 10 s), and the old and new logs.
    pub fn take_over(
        &mut self,
        binary: &std::path::Path,
        mode: &str,
    ) -> (Option<std::process::ExitStatus>, String, String) {
        let old_log = self.log();
        self.takeovers += 1;
        let log = std::fs::File::create(self.log()).unwrap();
        let mut new = Command::new(binary)
            .args(["run", mode, "-c"])
            .arg(self.config())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.contains("INFO switching") {
                break;
            }
            if let Some(st) = new.try_wait().unwrap() {
                // Refused or failed: the old process stays the lab's switch.
                self.takeovers -= 1;
                let old = std::fs::read_to_string(self.log()).unwrap_or_default();
                return (Some(st), old, text);
            }
            assert!(Instant::now() < deadline, "the new switch did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut old = self.switch.replace(new).expect("a switch running");
        let st = exits_within(&mut old, Duration::from_secs(10));
        let old_text = std::fs::read_to_string(old_log).unwrap_or_default();
        let new_text = std::fs::read_to_string(self.log()).unwrap_or_default();
        assert!(
            st.is_some(),
            "the old switch did not exit after the takeover:\n{old_text}\nthe new one:\n{new_text}"
        );
        (st, old_text, new_text)
    }

    /// `xswitch run` on the lab's config and environment, its stderr into the log.
    fn spawn(&self) -> std::process::Child {
        let log = std::fs::File::create(self.log()).unwrap();
        Command::new(env!("CARGO_BIN_EXE_xswitch"))
            .args(["run", "-c"])
            .arg(self.config())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn start(&mut self) {
        self.switch = Some(self.spawn());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.contains("switching") {
                return;
            }
            if let Some(Ok(Some(st))) = self.switch.as_mut().map(|c| c.try_wait()) {
                panic!("switch exited ({st}) while starting:\n{text}");
            }
            assert!(Instant::now() < deadline, "switch did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the switch expecting it to give up: its exit status and log (bounded wait).
    pub fn start_and_fail(&mut self) -> (std::process::ExitStatus, String) {
        let (st, log, _) = self.start_and_fail_pid();
        (st, log)
    }

    /// As [`Lab::start_and_fail`], with the process id the switch had.
    pub fn start_and_fail_pid(&mut self) -> (std::process::ExitStatus, String, u32) {
        let mut child = self.spawn();
        let pid = child.id();
        let st = exits_within(&mut child, Duration::from_secs(20));
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        (st.unwrap_or_else(|| panic!("the switch kept running:\n{log}")), log, pid)
    }

    /// SIGTERM, wait (bounded), return the log.
    pub fn stop(&mut self) -> (bool, String) {
        let mut child = self.switch.take().expect("switch running");
        must("kill", &["-TERM", &child.id().to_string()]);
        let st = exits_within(&mut child, Duration::from_secs(10));
        let status = st.unwrap_or_else(|| panic!("switch did not stop on SIGTERM"));
        (status.success(), std::fs::read_to_string(self.log()).unwrap_or_default())
    }

    pub fn kill9(&mut self) {
        let mut child = self.switch.take().expect("switch running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Makes `host`'s interface again after it was deleted (same name, a new index), with the
    /// MAC `mac` and address 10.9.1.`ip`, as a VM's interface comes back.
    pub fn recreate_host_if(&self, host: &str, ip: &str, mac: &str) {
        let (ns, hif) = (self.ns_name(host), self.ifname(host));
        must("ip", &["link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "address", mac]);
        must("ip", &["-n", &ns, "addr", "add", &format!("10.9.1.{ip}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        self.bring_up(&ns, &hif);
    }

    /// Gives `host`'s interface the MAC `mac` as a VM or a container gets its own: before the
    /// interface comes up (down, address, up), so the stack makes its IPv6 link-local address
    /// from it (a MAC changed while up keeps the old MAC's link-local address).
    pub fn set_mac(&self, host: &str, mac: &str) {
        let ns = self.ns_name(host);
        must("ip", &["-n", &ns, "link", "set", "eth0", "down"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "address", mac]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
    }

    /// The MAC address of `host`'s interface, as `ip` writes it (`02:00:…`).
    pub fn mac(&self, host: &str) -> String {
        let o = self.ns_run(host, &["cat", "/sys/class/net/eth0/address"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `xswitch ctl` on the lab's socket: (success, stdout, stderr).
    pub fn ctl(&self, json: bool, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xswitch"));
        cmd.arg("ctl").arg("--socket").arg(self.dir.join("ctl.sock"));
        if json {
            cmd.arg("--json");
        }
        let o = cmd.args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    }

    /// `xswitch ctl --json WHAT`, parsed; fails the test on an error.
    pub fn ctl_json(&self, what: &str) -> serde_json::Value {
        self.ctl_json_args(&[what])
    }

    /// `xswitch ctl --json ARGS…`, parsed; fails the test on an error.
    pub fn ctl_json_args(&self, args: &[&str]) -> serde_json::Value {
        let (ok, out, err) = self.ctl(true, args);
        assert!(ok, "ctl {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?} --json: {e}\n{out}"))
    }

    pub fn host_ifs(&self) -> Vec<String> {
        std::iter::once("up")
            .chain(self.hosts.iter().map(String::as_str))
            .map(|h| self.ifname(h))
            .collect()
    }

    pub fn xdp_attached(&self, hif: &str) -> bool {
        let o = run("ip", &["-d", "link", "show", "dev", hif]);
        String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.switch.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for hif in self.host_ifs() {
            let _ = run("ip", &["link", "del", &hif]);
        }
        for ns in &self.ns {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `count` UDP datagrams numbered 0.. to `dst`:9999 at about `pps`; prints nothing.
pub const SEQ_SEND: &str = r#"
import socket, sys, time
dst, count, pps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic()
for i in range(count):
    s.sendto(i.to_bytes(4, "big") + bytes(60), (dst, 9999))
    ahead = i / pps - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
"#;

/// Receives numbered datagrams on :9999 until `idle` seconds pass without one; prints the
/// number received (each number once), the numbers missing below the highest seen, and the
/// datagrams received more than once.
pub const SEQ_RECV: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", 9999))
s.settimeout(float(sys.argv[1]))
seen = set()
total = 0
try:
    while True:
        seen.add(int.from_bytes(s.recv(2048)[:4], "big"))
        total += 1
except socket.timeout:
    pass
top = max(seen) if seen else -1
print(len(seen), top + 1 - len(seen), total - len(seen))
"#;

/// The value of the series `name{labels}` in a Prometheus exposition (labels as written).
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        labels
            .iter()
            .all(|(k, v)| head.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Renames port h2 to z2. With one queue per port the sockets are cut into contiguous runs in
/// port-name order (h1, h3, up, z2), so worker 0 polls h1 and h3 and worker 1 the uplink and
/// z2: every frame between h1 and h2's host then crosses from one worker to the other.
pub fn split_h1_h2(lab: &Lab) {
    lab.edit_config(|c| {
        c.replace("[ports.h2]", "[ports.z2]").replace("port = \"h2\"", "port = \"z2\"")
    });
}

/// The worker that polls queue 0 of `port`, from the switch's start log.
pub fn worker_of(log: &str, port: &str) -> Option<u32> {
    let line = log.lines().find(|l| l.contains(&format!(" port {port} on ")))?;
    line.rsplit("worker ").next()?.trim().parse().ok()
}

/// Sends raw frames (hex strings) out of eth0 of the namespace it runs in.
pub const RAW_SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for h in sys.argv[1:]:
    f = bytes.fromhex(h)
    s.send(f + bytes(max(0, 60 - len(f))))
"#;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Ethernet + IPv4 + UDP; the IPv4 header checksum right (port-secured attachments and
/// tenants with policy check it), the UDP checksum zero (none).
pub fn raw_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    tags: &[u16],
    src: [u8; 4],
    dst: [u8; 4],
) -> Vec<u8> {
    let mut f = [dst_mac, src_mac].concat();
    for t in tags {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&t.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 36, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let ip = f.len() - 20;
    let mut sum: u32 = f[ip..].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[ip + 10..ip + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 16, 0, 0]);
    f.extend_from_slice(b"xswitch!");
    f
}

/// Sends `n` UDP datagrams to `dst`:`port` from the namespace it runs in.
pub const UDP_SEND: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    print(time.time())
    s.sendto(b"capture-me", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.02)
"#;

/// A numbered UDP stream between two hosts of a lab ([`Lab::seq_stream`]).
pub struct SeqStream {
    recv: Child,
    send: Child,
}

impl Lab {
    /// `count` numbered datagrams from `from` to address `to` (on host `to_host`) at `pps`:
    /// the receiver listens first (and stops 3 s after the last datagram).
    ///
    /// The sender's interface gets a queue (`pfifo`). A veth whose peer runs an XDP program
    /// hands frames to the peer's NAPI ring (256 frames); with the default `noqueue` a full
    /// ring drops the frame on the sender's side (its `tx_dropped`, UDP's `SndbufErrors`)
    /// before the switch sees it, whenever that ring's softirq waits 6 ms for a CPU, which the
    /// sender, the receiver, iperf3 and the switch share here. With a qdisc the kernel (6.16+)
    /// stops the queue instead and nothing is lost (docs/TUNING.md, "Tenants on veth").
    pub fn seq_stream(
        &self,
        from: &str,
        to_host: &str,
        to: &str,
        count: u64,
        pps: u64,
    ) -> SeqStream {
        seq_stream_ns(&self.ns_name(from), &self.ns_name(to_host), to, count, pps)
    }

    /// As [`Lab::seq_stream`], with the sender's interface as users have it: no qdisc
    /// (`noqueue`, a veth's default).
    pub fn seq_stream_noqueue(
        &self,
        from: &str,
        to_host: &str,
        to: &str,
        count: u64,
        pps: u64,
    ) -> SeqStream {
        seq_stream_qdisc(&self.ns_name(from), &self.ns_name(to_host), to, count, pps, false)
    }
}

/// [`Lab::seq_stream`] between namespaces `from` and `to_ns` (whose interface is `eth0`).
pub fn seq_stream_ns(from: &str, to_ns: &str, to: &str, count: u64, pps: u64) -> SeqStream {
    seq_stream_qdisc(from, to_ns, to, count, pps, true)
}

/// [`seq_stream_ns`]; `pfifo`: the sender's interface gets a queue first.
fn seq_stream_qdisc(
    from: &str,
    to_ns: &str,
    to: &str,
    count: u64,
    pps: u64,
    pfifo: bool,
) -> SeqStream {
    if pfifo {
        let qdisc =
            ["netns", "exec", from, "tc", "qdisc", "replace", "dev", "eth0", "root", "pfifo"];
        must("ip", &qdisc);
    }
    let recv = Command::new("ip")
        .args(["netns", "exec", to_ns, "python3", "-c", SEQ_RECV, "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let send = Command::new("ip")
        .args(["netns", "exec", from, "python3", "-c", SEQ_SEND, to])
        .args([count.to_string(), pps.to_string()])
        .spawn()
        .unwrap();
    SeqStream { recv, send }
}

impl SeqStream {
    /// Waits for the sender (at most `limit`) and the receiver; fails the test, with the
    /// switch's log, unless every one of `count` datagrams arrived exactly once.
    pub fn expect_all(self, count: u64, limit: Duration, lab: &mut Lab) {
        let v = self.counts(limit);
        if v != [count, 0, 0] {
            let (_, log) = lab.stop();
            panic!("received, missing, duplicated: {v:?}\n{log}");
        }
    }

    /// Waits for the sender (at most `limit`) and the receiver: datagrams received, missing
    /// (below the highest number received) and duplicated.
    pub fn counts(mut self, limit: Duration) -> [u64; 3] {
        let sent = exits_within(&mut self.send, limit);
        assert!(sent.is_some_and(|s| s.success()), "the sender did not finish in {limit:?}");
        let out = self.recv.wait_with_output().unwrap();
        let got = String::from_utf8_lossy(&out.stdout).to_string();
        let v: Vec<u64> = got.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        v.try_into().unwrap_or_else(|_| panic!("the receiver said {got:?}"))
    }
}
