//! Shaping on real traffic through AF_XDP: rate limits measured by iperf3 (TCP and UDP), the
//! weighted share of a congested uplink measured on the fabric side, and the ping time of a
//! quiet tenant while another saturates the uplink. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The fabric's MAC and address (behind the uplink, in every tenant's VLAN).
const FAB_MAC: &str = "02:fa:00:00:00:01";
const FAB_IP: &str = "10.9.1.100";

/// Sends UDP datagrams of 1400 bytes to argv[1] port 9 at argv[2] Mbit/s (frame bytes) for
/// argv[3] seconds, paced, then prints how many it sent.
const BLAST: &str = r#"
import socket, sys, time
dst, mbit, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 1400
per_sec = mbit * 1e6 / 8 / 1442
t0 = time.monotonic(); sent = 0
while True:
    now = time.monotonic() - t0
    if now >= secs:
        break
    while sent < int(now * per_sec):
        try:
            s.sendto(payload, (dst, 9))
        except OSError:
            pass
        sent += 1
    time.sleep(0.0005)
print(sent)
"#;

/// Answers ARP and ICMP echo for 10.9.1.100 on any VLAN, raw (this kernel has no 8021q
/// module), until killed. The kernel hands the tag over beside the frame (PACKET_AUXDATA); the
/// answer carries it inline. Only VLAN-tagged ARP and ICMP reach the socket (a filter), so a
/// flood of other traffic does not slow it down.
const RESPONDER: &str = r#"
import ctypes, socket, struct, subprocess
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
code = subprocess.run(["tcpdump", "-i", "eth0", "-ddd", "vlan and (icmp or arp)"],
                      capture_output=True, text=True, check=True).stdout.split()
n = int(code[0])
buf = ctypes.create_string_buffer(b"".join(
    struct.pack("HBBI", *map(int, code[1 + 4 * i:5 + 4 * i])) for i in range(n)))
s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", n, ctypes.addressof(buf)))
MY, IP = bytes.fromhex("02fa00000001"), socket.inet_aton("10.9.1.100")
while True:
    f, anc, _, addr = s.recvmsg(4096, socket.CMSG_SPACE(20))
    if addr[2] == 4 or len(f) < 28:  # PACKET_OUTGOING: our own answers
        continue
    vid = None
    for lvl, typ, data in anc:
        if lvl == 263 and typ == 8 and len(data) >= 20:
            st, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", data[:20])
            if st & 0x10:  # TP_STATUS_VLAN_VALID
                vid = tci & 0xfff
    if vid is None:
        if f[12:14] != b"\x81\x00":
            continue
        vid, f = struct.unpack("!H", f[14:16])[0] & 0xfff, f[:12] + f[16:]
    tag, et, p = struct.pack("!HH", 0x8100, vid), f[12:14], f[14:]
    if et == b"\x08\x06" and p[6:8] == b"\x00\x01" and p[24:28] == IP:
        s.send(f[6:12] + MY + tag + et + p[:6] + b"\x00\x02" + MY + IP + p[8:14] + p[14:18])
    elif et == b"\x08\x00" and p[9] == 1 and p[16:20] == IP and p[(p[0] & 15) * 4] == 8:
        ihl = (p[0] & 15) * 4
        ip = bytearray(p[:ihl]); ip[12:16], ip[16:20] = p[16:20], p[12:16]
        icmp = bytearray(p[ihl:]); icmp[0] = 0
        c = (icmp[2] << 8 | icmp[3]) + 0x0800
        icmp[2:4] = struct.pack("!H", (c & 0xffff) + (c >> 16))
        s.send(f[6:12] + MY + tag + et + bytes(ip) + bytes(icmp))
"#;

/// The lab of the AF_XDP tests plus h4, a second host of blue; the fabric (behind the uplink)
/// has a fixed MAC, pinned in red's and blue's MAC tables, and the hosts reach it by a static
/// neighbour entry. `shaping` is appended to the config.
fn lab(uplink_rate: Option<&str>, shaping: &str) -> Lab {
    let mut lab = Lab::new();
    lab.host("h4", "4");
    must("ip", &["-n", &lab.ns_name("fab"), "link", "set", "eth0", "address", FAB_MAC]);
    for h in ["h1", "h2", "h3", "h4"] {
        let o = lab.ns_run(h, &["ip", "neigh", "add", FAB_IP, "lladdr", FAB_MAC, "dev", "eth0"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let h4 = lab.ifname("h4");
    let rate = uplink_rate.map_or(String::new(), |r| format!("rate = \"{r}\"\n"));
    let pinned = format!("static_macs = [{{ mac = \"{FAB_MAC}\", port = \"up\" }}]\n");
    lab.edit_config(|c| {
        c.replace("kind = \"uplink\"\n", &format!("kind = \"uplink\"\n{rate}"))
            .replace(
                "[tenants.red]",
                &format!("[ports.h4]\ninterface = \"{h4}\"\nkind = \"tenant\"\n[tenants.red]"),
            )
            .replace("{ port = \"h3\" }]", "{ port = \"h3\" }, { port = \"h4\" }]")
            // Red's section ends where blue's begins; blue's is the last one.
            .replace("[tenants.blue]", &format!("{pinned}[tenants.blue]"))
            + &pinned
            + shaping
    });
    lab
}

fn blast(lab: &Lab, host: &str, mbit: u32, secs: f64) -> Child {
    // At the lowest priority: on two cores, one of them the switch's, the blaster would
    // otherwise take the other core for whole time slices from the ping and the responder
    // (Python, in user space), and a slice they wait for is not the switch's latency.
    Command::new("ip")
        .args(["netns", "exec", &lab.ns_name(host), "nice", "-n", "19", "python3", "-c", BLAST])
        .arg(FAB_IP)
        .args([&mbit.to_string(), &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn rate_limits_hold_for_tcp_and_udp() {
    if !can_run("rate_limits_hold_for_tcp_and_udp") {
        return;
    }
    let _one = one_at_a_time();
    // Red receives at most 50 Mbit/s, blue at most 200 (shapers on their tenant ports).
    // Measured between two hosts of each tenant.
    let mut lab = lab(
        None,
        r#"
[tenants.red.shaping]
to_tenant = { rate = "50Mbit" }
[tenants.blue.shaping]
to_tenant = { rate = "200Mbit" }
"#,
    );
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    assert!(lab.ping("h3", "10.9.1.4", "2"));
    // Rates count frame bytes; iperf3 counts payload: 1448 of 1514 bytes for TCP (95.6 %),
    // 1470 of 1512 for UDP (97.2 %). Within 10 % either way of the payload rate the limit
    // allows (centred there: against the limit itself, a TCP run 6 % under it failed once on
    // a loaded machine, 44.8 Mbit/s for 50, where 47.8 is what the limit lets through).
    const TCP: f64 = 1448.0 / 1514.0;
    const UDP: f64 = 1470.0 / 1512.0;
    let within = |what: &str, bps: f64, (limit, payload): (f64, f64)| {
        let r = bps / (limit * payload);
        eprintln!("{what}: {:.1} Mbit/s, limit {:.0}", bps / 1e6, limit / 1e6);
        assert!((0.9..=1.1).contains(&r), "{what}: {:.1} Mbit/s against {limit:.0}", bps / 1e6);
    };
    let tcp = |from: &str, to_host: &str, to: &str| {
        lab.iperf_with(from, to_host, to, "5301", &["-t", "4", "-O", "1"])
    };
    let udp = |from: &str, to_host: &str, to: &str, offer: &str| {
        lab.iperf_with(from, to_host, to, "5302", &["-u", "-b", offer, "-l", "1470", "-t", "3"])
    };
    within("red TCP", tcp("h1", "h2", "10.9.1.2"), (50e6, TCP));
    within("blue TCP", tcp("h3", "h4", "10.9.1.4"), (200e6, TCP));
    within("red UDP", udp("h1", "h2", "10.9.1.2", "150M"), (50e6, UDP));
    within("blue UDP", udp("h3", "h4", "10.9.1.4", "400M"), (200e6, UDP));
    // A policer on what red sends, added by a live reload: 20 Mbit/s of 100 offered pass.
    lab.edit_config(|c| {
        c.replace(
            "[tenants.red.shaping]\n",
            "[tenants.red.shaping]\ningress = { rate = \"20Mbit\" }\n",
        )
    });
    let sock = lab.dir.join("ctl.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_xswitch"))
        .args(["ctl", "--socket"])
        .arg(&sock)
        .arg("reload")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(500));
    within("red UDP (policer)", udp("h1", "h2", "10.9.1.2", "100M"), (20e6, UDP));
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    // The excess was dropped, and counted: by red's policer and by full queues.
    assert!(log.contains("dropped rate_limit:"), "{log}");
    assert!(log.contains("dropped queue_full:"), "{log}");
    assert!(log.contains("balanced"), "{log}");
}

#[test]
fn weights_1_and_3_share_a_congested_uplink_25_to_75() {
    if !can_run("weights_1_and_3_share_a_congested_uplink") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = lab(
        Some("100Mbit"),
        "[tenants.red.shaping]\nweight = 1\n[tenants.blue.shaping]\nweight = 3\n",
    );
    lab.start();
    // Both offer 250 Mbit/s to the fabric for 7 s; the fabric counts, per VLAN, the bytes of
    // 4 s in the middle.
    let senders = [blast(&lab, "h1", 250, 7.0), blast(&lab, "h3", 250, 7.0)];
    std::thread::sleep(Duration::from_millis(2000));
    let pcap = lab.dir.join("fab.pcap");
    let o = lab.ns_run(
        "fab",
        &["timeout", "4", "tcpdump", "-i", "eth0", "-s", "64", "-B", "16384", "-w"]
            .into_iter()
            .chain([pcap.to_str().unwrap(), "udp port 9"])
            .collect::<Vec<_>>(),
    );
    // timeout ends tcpdump with status 124.
    assert!(o.status.code() == Some(124), "{}", String::from_utf8_lossy(&o.stderr));
    for s in senders {
        let out = s.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    let t = Command::new("tshark")
        .args(["-r", pcap.to_str().unwrap(), "-T", "fields", "-e", "vlan.id", "-e", "frame.len"])
        .output()
        .unwrap();
    let (mut red, mut blue) = (0u64, 0u64);
    for l in String::from_utf8_lossy(&t.stdout).lines() {
        let mut f = l.split('\t');
        let (vlan, len) = (f.next().unwrap_or(""), f.next().and_then(|x| x.parse::<u64>().ok()));
        match (vlan, len) {
            ("100", Some(n)) => red += n,
            ("200", Some(n)) => blue += n,
            _ => {}
        }
    }
    let total = (red + blue) as f64;
    // Frames on the wire here carry the 4-byte tag; the uplink's rate counts them so too.
    let mbit = total * 8.0 / 4.0 / 1e6;
    assert!((85.0..=110.0).contains(&mbit), "the uplink carried {mbit:.1} Mbit/s, shaped at 100");
    let share = red as f64 / total;
    eprintln!(
        "uplink {mbit:.1} Mbit/s: red (weight 1) {:.1} %, blue (weight 3) {:.1} %",
        share * 100.0,
        100.0 - share * 100.0
    );
    assert!((0.20..=0.30).contains(&share), "red (weight 1) got {:.1} %", share * 100.0);
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains("dropped queue_full:"), "{log}");
    assert!(log.contains("balanced"), "{log}");
}

#[test]
fn a_quiet_tenants_ping_stays_fast_while_another_saturates_the_uplink() {
    if !can_run("a_quiet_tenants_ping_stays_fast") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = lab(Some("100Mbit"), "");
    lab.start();
    let mut responder = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("fab"), "python3", "-c", RESPONDER])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(lab.dir.join("responder.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let rtts = |lab: &Lab| -> Vec<f64> {
        let o = lab.ns_run("h1", &["ping", "-c", "60", "-i", "0.05", "-W", "1", FAB_IP]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
            .collect()
    };
    let idle = rtts(&lab);
    let why = || std::fs::read_to_string(lab.dir.join("responder.log")).unwrap_or_default();
    assert!(idle.len() >= 55, "red reaches the fabric: {idle:?}\n{}", why());
    // Blue floods the uplink with 250 Mbit/s for as long as red pings again: 2.5 times what
    // it carries, so blue's queue there stays full (256 frames: 30 ms at 100 Mbit/s, the wait
    // of a frame behind them in one queue), at a load two cores can carry besides the switch.
    let flood = blast(&lab, "h3", 250, 6.0);
    std::thread::sleep(Duration::from_millis(1000));
    let loaded = rtts(&lab);
    let sent: u64 = String::from_utf8_lossy(&flood.wait_with_output().unwrap().stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let _ = responder.kill();
    let _ = responder.wait();
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    let (i, l) = (median(idle), median(loaded.clone()));
    eprintln!("red's median ping: idle {i:.3} ms, while blue floods the uplink {l:.3} ms");
    // The uplink was saturated: blue's excess overflowed its queue.
    assert!(sent > 100_000 && log.contains("dropped queue_full:"), "{sent} sent\n{log}");
    assert!(loaded.len() >= 55, "pings lost under load: {loaded:?}");
    // Behind blue's full queue red would wait 30 ms. Not that: within a sixth of it, 5 ms. The
    // bar is set against the queue, not against the idle figure: on two cores that also run
    // blue's sender, the responder and ping, a scheduler's delay alone took red's median from
    // 0.37 ms idle to 1.19 ms under load in a CI run (an adaptive worker's wakeup, blue's
    // sender taking a core): a 25th of the wait behind blue's queue, yet over twice idle.
    assert!(l <= 5.0, "red's median ping {l:.3} ms under load, {i:.3} ms idle");
}
