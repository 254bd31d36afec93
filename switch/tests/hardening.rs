//! Hardening, second round (issue 16), over real AF_XDP sockets in namespaces: fragmented
//! datagrams, fragment attacks against a tenant with ACLs only, the egress MTU, tenants that keep
//! their default offloads, the host's own stack on the ports the switch takes, and a SYN flood
//! inside a tenant with a security group. Each test fails on the switch before the fix.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Lab, can_run, exits_within, must, parse_mac};

/// A UDP receiver in `host`'s namespace on `port`: counts the datagrams of exactly `size`
/// bytes until it has heard nothing for `quiet_secs`; prints the count.
fn udp_counter(lab: &Lab, host: &str, port: u16, size: usize, quiet_secs: f64) -> Child {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0', {port}))\n\
         s.settimeout({quiet_secs})\n\
         n = 0\n\
         try:\n\
         \x20   while True:\n\
         \x20       if len(s.recv(65535)) == {size}:\n\
         \x20           n += 1\n\
         except socket.timeout:\n\
         \x20   pass\n\
         print(n)\n"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name(host), "timeout", "60", "python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    child
}

/// Sends `count` UDP datagrams of `size` bytes from `host` to `to`:`port`.
fn udp_send(lab: &Lab, host: &str, to: &str, port: u16, size: usize, count: usize) {
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range({count}):\n\
         \x20   s.sendto(bytes([i % 256]) * {size}, ('{to}', {port}))\n\
         \x20   time.sleep(0.02)\n"
    );
    let o = lab.ns_run(host, &["timeout", "30", "python3", "-c", &script]);
    assert!(o.status.success(), "udp send: {}", String::from_utf8_lossy(&o.stderr));
}

/// The count a [`udp_counter`] printed (bounded wait).
fn counted(mut c: Child) -> u64 {
    let st = exits_within(&mut c, Duration::from_secs(30));
    assert!(st.is_some(), "the UDP receiver did not finish");
    let mut out = String::new();
    use std::io::Read;
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out.trim().parse().unwrap_or_else(|_| panic!("receiver said {out:?}"))
}

fn counter(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// The config lines that give tenant red an ACL (so its fragments go through the fragment
/// stage): UDP to port 7777 and telnet are denied towards the tenant, the rest allowed.
const RED_ACL: &str = "[[tenants.red.acl]]\npriority = 10\ndirection = \"to-tenant\"\n\
    action = \"deny\"\nproto = \"udp\"\ndst_port = 7777\n\
    [[tenants.red.acl]]\npriority = 20\ndirection = \"to-tenant\"\naction = \"deny\"\n\
    proto = \"tcp\"\ndst_port = 23\n";

/// The iperf3 JSON's `key` figure of the last `section` (the end's summary).
fn iperf_figure(json: &str, section: &str, key: &str) -> f64 {
    json.rsplit(&format!("\"{section}\""))
        .next()
        .and_then(|s| s.split(&format!("\"{key}\":")).nth(1))
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1.0)
}

// Defects 1, 2 and 4: with the offloads every container runtime leaves on, ping, UDP and TCP
// cross the switch (partial checksums completed), a fragmented 3 000-byte datagram arrives
// whole, and the fragments of a datagram to a denied port are all dropped.
#[test]
fn default_offloads_fragmented_datagrams_and_denied_fragments() {
    if !can_run("default_offloads_fragmented_datagrams_and_denied_fragments") {
        return;
    }
    let mut lab = Lab::new();
    let tx = lab.ns_run("h1", &["ethtool", "-k", "eth0"]);
    let tx = String::from_utf8_lossy(&tx.stdout).to_string();
    assert!(tx.contains("tx-checksumming: on"), "the lab keeps the default offloads:\n{tx}");
    lab.edit_config(|c| c + RED_ACL);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "3"), "ping h1 -> h2 with default offloads");

    // TCP and UDP with default offloads.
    let bps = lab.iperf("h1", "h2", "10.9.1.2", "5201", "1");
    assert!(bps > 50e6, "TCP h1 -> h2 with default offloads: {bps} bit/s");
    let mut server = lab.iperf_server("h2", "5202", true);
    let out = lab.ns_run(
        "h1",
        &[
            "timeout", "30", "iperf3", "-c", "10.9.1.2", "-p", "5202", "-u", "-b", "20M", "-t",
            "2", "-J",
        ],
    );
    let _ = exits_within(&mut server, Duration::from_secs(10));
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "iperf3 UDP:\n{json}");
    let lost = iperf_figure(&json, "sum", "lost_percent");
    let packets = iperf_figure(&json, "sum", "packets");
    assert!(packets > 1000.0 && (0.0..5.0).contains(&lost), "UDP: {packets} sent, {lost} % lost");
    let c = lab.ctl_json("counters");
    assert!(counter(&c, "checksums_completed") > 1000, "partial checksums completed: {c}");

    // A 3 000-byte datagram over a 1 500-byte MTU: three fragments, each datagram whole.
    let rx = udp_counter(&lab, "h2", 7000, 3000, 2.0);
    udp_send(&lab, "h1", "10.9.1.2", 7000, 3000, 5);
    assert_eq!(counted(rx), 5, "fragmented datagrams received whole");
    // To a port red's ACL denies: the first fragment and every later one are dropped.
    let before = lab.ctl_json("counters");
    let rx = udp_counter(&lab, "h2", 7777, 3000, 2.0);
    udp_send(&lab, "h1", "10.9.1.2", 7777, 3000, 5);
    assert_eq!(counted(rx), 0, "datagrams to a denied port");
    let after = lab.ctl_json("counters");
    let policy = counter(&after["drops"], "policy") - counter(&before["drops"], "policy");
    assert_eq!(policy, 15, "five datagrams of three fragments, all dropped as policy");
    assert_eq!(counter(&after["drops"], "malformed"), 0, "{after}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}

/// A raw sender in `host`'s namespace: writes each frame (hex) on eth0.
fn raw_send(lab: &Lab, host: &str, frames: &[Vec<u8>]) {
    let hex: Vec<String> =
        frames.iter().map(|f| f.iter().map(|b| format!("{b:02x}")).collect()).collect();
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         for h in {hex:?}:\n\
         \x20   s.send(bytes.fromhex(h))\n\
         \x20   time.sleep(0.01)\n"
    );
    let o = lab.ns_run(host, &["timeout", "30", "python3", "-c", &script]);
    assert!(o.status.success(), "raw send: {}", String::from_utf8_lossy(&o.stderr));
}

/// An IPv4 fragment from `src` to `dst`: TCP datagram bytes `data` from `start`, `ident`.
fn ipv4_fragment(
    macs: ([u8; 6], [u8; 6]),
    ips: ([u8; 4], [u8; 4]),
    ident: u16,
    start: usize,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut f = [&macs.1[..], &macs.0[..], &[0x08, 0x00]].concat();
    let total = (20 + data.len()) as u16;
    let word = (start / 8) as u16 | if more { 0x2000 } else { 0 };
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ident.to_be_bytes());
    ip.extend_from_slice(&word.to_be_bytes());
    ip.extend_from_slice(&[64, 6, 0, 0]);
    ip.extend_from_slice(&ips.0);
    ip.extend_from_slice(&ips.1);
    let sum = dataplane::wire::checksum::fold(dataplane::wire::checksum::add(0, &ip));
    ip[10..12].copy_from_slice(&(!sum).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(data);
    f
}

// Defect 2, as an attacker sends it: the tiny-fragment and overlapping-fragment attacks and an
// orphan later fragment, against a tenant with ACLs only. A capture on the target holds none of
// the fragments that must be dropped.
#[test]
fn fragment_attacks_on_a_tenant_with_acls_only_are_dropped() {
    if !can_run("fragment_attacks_on_a_tenant_with_acls_only_are_dropped") {
        return;
    }
    let mut lab = Lab::new();
    lab.edit_config(|c| c + RED_ACL);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"), "h1 and h2 learned");
    let macs = (parse_mac(&lab.mac("h1")), parse_mac(&lab.mac("h2")));
    let ips = ([10, 9, 1, 1], [10, 9, 1, 2]);
    // A TCP SYN to port 80 (allowed), and the same header to port 23 (denied).
    let tcp = |dport: u16| {
        let mut h = vec![0x9c, 0x40];
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x04, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&[0x41; 40]);
        h
    };
    let (to80, to23) = (tcp(80), tcp(23));
    let frames = vec![
        // Tiny fragment (RFC 1858): 8 bytes of TCP, the flags in the second fragment.
        ipv4_fragment(macs, ips, 101, 0, true, &to23[..8]),
        ipv4_fragment(macs, ips, 101, 8, false, &to23[8..]),
        // Overlapping (RFC 1858): the first fragment to port 80, then one at offset 8 that
        // rewrites the header (port 23 and the rest).
        ipv4_fragment(macs, ips, 102, 0, true, &to80[..24]),
        ipv4_fragment(macs, ips, 102, 8, false, &to23[8..]),
        // A denied first fragment, and its later fragment.
        ipv4_fragment(macs, ips, 103, 0, true, &to23[..24]),
        ipv4_fragment(macs, ips, 103, 24, false, &to23[24..]),
        // A later fragment whose first fragment never came.
        ipv4_fragment(macs, ips, 104, 24, false, &to80[24..]),
    ];
    let before = lab.ctl_json("counters");
    let pcap = lab.dir.join("h2.pcap");
    let mut capture = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("h2"), "timeout", "30", "tcpdump", "-n", "-U"])
        .args(["-i", "eth0", "-w"])
        .arg(&pcap)
        .arg("ip[6:2] & 0x3fff != 0") // fragments only
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    raw_send(&lab, "h1", &frames);
    std::thread::sleep(Duration::from_millis(500));
    must("kill", &[&capture.id().to_string()]);
    let _ = exits_within(&mut capture, Duration::from_secs(5));
    let after = lab.ctl_json("counters");
    let d = |r: &str| counter(&after["drops"], r) - counter(&before["drops"], r);
    let m = |k: &str| counter(&after["malformed"], k) - counter(&before["malformed"], k);
    assert_eq!(m("tcp"), 1, "the tiny first fragment");
    assert_eq!(d("fragment"), 3, "the tiny attack's second half, the overlap, the orphan");
    assert_eq!(d("policy"), 2, "the denied first fragment and its later fragment");
    let o = Command::new("tcpdump").args(["-n", "-v", "-r"]).arg(&pcap).output().unwrap();
    let seen = String::from_utf8_lossy(&o.stdout).to_string();
    let ids: Vec<&str> =
        seen.lines().filter_map(|l| l.split("id ").nth(1)?.split(',').next()).collect();
    assert_eq!(ids, ["102"], "only the overlap attack's harmless first fragment arrives:\n{seen}");
}

// Defect 3: a 1 600-byte packet towards a port whose MTU is 1 500 is dropped as too_big,
// never sent; a 1 500-byte one passes.
#[test]
fn a_packet_larger_than_the_egress_mtu_is_dropped_as_too_big() {
    if !can_run("a_packet_larger_than_the_egress_mtu_is_dropped_as_too_big") {
        return;
    }
    let mut lab = Lab::new();
    // h1 and its host end take 1 600-byte packets; h2's port stays at 1 500.
    must("ip", &["-n", &lab.ns_name("h1"), "link", "set", "eth0", "mtu", "1600"]);
    must("ip", &["link", "set", &lab.ifname("h1"), "mtu", "1600"]);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let big = lab.ns_run(
        "h1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1572", "10.9.1.2"],
    );
    assert!(!big.status.success(), "a 1 600-byte packet crossed into a 1 500-byte port");
    let fits = lab.ns_run(
        "h1",
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1472", "10.9.1.2"],
    );
    assert!(fits.status.success(), "a 1 500-byte packet fits");
    let c = lab.ctl_json("counters");
    assert_eq!(counter(&c["drops"], "too_big"), 3, "{c}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(
        log.contains("MTU 1500 (interface"),
        "the MTU read from the interface is logged:\n{log}"
    );
}

// Defect 5: the host's own stack sends nothing out of a port the switch has taken, though its
// interface came up with IPv6 on (router solicitations, listener reports); the switch logs what
// it changed and puts IPv6 back at a clean stop.
#[test]
fn the_host_stack_is_silent_on_the_ports_the_switch_takes() {
    if !can_run("the_host_stack_is_silent_on_the_ports_the_switch_takes") {
        return;
    }
    let mut lab = Lab::new();
    let hif = lab.ifname("h1");
    let v6 = format!("/proc/sys/net/ipv6/conf/{hif}/disable_ipv6");
    assert_eq!(std::fs::read_to_string(&v6).unwrap().trim(), "0", "IPv6 on, as a host has it");
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{hif}/address")).unwrap();
    let host_mac = host_mac.trim().to_string();
    lab.start();
    assert_eq!(std::fs::read_to_string(&v6).unwrap().trim(), "1", "taken: IPv6 off");
    // The kernel solicits routers every few seconds after an interface comes up, and reports
    // its multicast listening: nine seconds of capture on the tenant's side would hold some.
    let o = lab.ns_run(
        "h1",
        &["timeout", "9", "tcpdump", "-n", "-e", "-i", "eth0", "ether", "src", &host_mac],
    );
    let seen = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(seen.trim().is_empty(), "the host's stack sent through the taken port:\n{seen}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains(&format!("{hif}: IPv6 disabled")), "{log}");
    assert!(log.contains(&format!("{hif}: ARP off")), "{log}");
    assert_eq!(std::fs::read_to_string(&v6).unwrap().trim(), "0", "given back: IPv6 as it was");
}

// Defect 6: 5 000 SYNs from one member of a tenant with a security group leave the others able
// to connect.
#[test]
fn a_syn_flood_inside_a_tenant_does_not_lock_out_its_other_members() {
    if !can_run("a_syn_flood_inside_a_tenant_does_not_lock_out_its_other_members") {
        return;
    }
    let mut lab = Lab::new();
    lab.red_host("h4", "4");
    lab.edit_config(|c| {
        c + "[tenants.red.security_group]\nmax_connections = 256\n\
             rules = [{ direction = \"from-tenant\" }, { direction = \"to-tenant\", proto = \"tcp\" }, \
             { direction = \"to-tenant\", proto = \"icmp\" }]\n"
    });
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2") && lab.ping("h4", "10.9.1.2", "2"));
    // h1 floods: 5 000 SYNs from its own address, each from another port, towards an address
    // behind the uplink where nothing answers (they stay half-open).
    let h1 = parse_mac(&lab.mac("h1"));
    let mut cfg = String::new();
    for i in 0..5000u16 {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(h1, [2, 0, 0, 0, 0xfa, 0xb])
            .ipv4([10, 9, 1, 1], [10, 9, 1, 99], 64)
            .tcp(10_000 + i, 80, 1, 1024)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        let bytes: Vec<String> = f.iter().map(|b| format!("0x{b:02x}")).collect();
        cfg += &format!("{{ {} }}\n", bytes.join(", "));
    }
    let file = lab.dir.join("synflood.cfg");
    std::fs::write(&file, cfg).unwrap();
    let file = file.display().to_string();
    let o = lab.ns_run(
        "h1",
        &[
            "timeout", "60", "trafgen", "-o", "eth0", "-i", &file, "-n", "5000", "-q", "--cpus",
            "1", "-t", "20us",
        ],
    );
    assert!(o.status.success(), "trafgen: {}", String::from_utf8_lossy(&o.stderr));
    // Another member opens a connection during the flood's aftermath (its SYNs still
    // half-open, their 30 s handshake timeout not over).
    let bps = lab.iperf("h4", "h2", "10.9.1.2", "5201", "1");
    assert!(bps > 10e6, "h4 -> h2 after the SYN flood: {bps} bit/s");
    let tenants = lab.ctl_json("tenants");
    let red = tenants.as_array().unwrap().iter().find(|t| t["name"] == "red").unwrap();
    assert_eq!(counter(&red["drops"], "conntrack_full"), 0, "{red}");
    assert!(counter(red, "connections") <= 64, "the flooder holds at most its bound: {red}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
}
