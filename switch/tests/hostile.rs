//! Hostile tenants: crafted frames (every kind of truncation, bad lengths, endless IPv6
//! extension chains, tiny and overlapping fragments, runts, spoofed sources, forged ARP and
//! neighbour advertisements, tagged and double-tagged frames), a MAC flood and a connection
//! flood, sent from tenant hosts. The catalogue and what the switch must do with each frame are
//! in `fuzz/src/hostile.rs` (shared with the fuzz seeds).
//!
//! First through the pipeline over in-memory ports (no root), then through real AF_XDP sockets
//! in namespaces while two hosts of another tenant ping each other.
#![allow(clippy::tests_outside_test_module)]

mod common;
#[path = "../../fuzz/src/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Lab, can_run, parse_mac};
use dataplane::port::mem::MemPort;
use dataplane::port::{FrameArea, PageSize};
use dataplane::time::Nanos;
use dataplane::trace::{DropReason, ParseError};
use dataplane::worker::Worker;
use hostile::{Crafted, Expect, Host};

const ME: Host = Host { mac: [2, 0, 0, 0, 9, 1], ip: [10, 9, 1, 1] };
const PEER: Host = Host { mac: [2, 0, 0, 0, 9, 2], ip: [10, 9, 1, 2] };

fn mac_str(m: [u8; 6]) -> String {
    dataplane::wire::MacAddr(m).to_string()
}

/// The attacker's attachment: its MAC, its IPv4 address and the catalogue's IPv6 one.
fn guard() -> String {
    let v6 = std::net::Ipv6Addr::from(hostile::v6_of(ME.ip));
    let [a, b, c, d] = ME.ip;
    format!("macs = [\"{}\"], ips = [\"{a}.{b}.{c}.{d}\", \"{v6}/128\"]", mac_str(ME.mac))
}

/// Counts per drop reason and per parse check that the catalogue predicts, `times` each.
fn predicted(
    cat: &[Crafted],
    times: u64,
) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    let mut reasons = BTreeMap::new();
    let mut checks = BTreeMap::new();
    for c in cat {
        if let Expect::Drop { reason, check } = c.expect {
            *reasons.entry(reason).or_default() += times;
            if let Some(k) = check {
                *checks.entry(k).or_default() += times;
            }
        }
    }
    (reasons, checks)
}

#[test]
fn every_crafted_frame_meets_its_fate_in_the_pipeline() {
    let text = format!(
        "[switch]\nframes = 4096\nring_size = 64\n[metrics]\nenabled = false\n[control]\nenabled = false\n\
         [ports.up]\ninterface = \"u\"\nkind = \"uplink\"\n\
         [ports.h1]\ninterface = \"a\"\nkind = \"tenant\"\n\
         [ports.h2]\ninterface = \"b\"\nkind = \"tenant\"\n\
         [ports.h3]\ninterface = \"c\"\nkind = \"tenant\"\n\
         [tenants.red]\nattach = [{{ port = \"up\", vlan = 100 }}, {{ port = \"h1\", {} }}, {{ port = \"h2\" }}]\n\
         [tenants.blue]\nattach = [{{ port = \"up\", vlan = 200 }}, {{ port = \"h3\" }}]\n",
        guard()
    );
    let cfg = control::config::load_str("hostile.toml", &text).unwrap();
    let snap = Arc::new(control::compile(&cfg, 1).unwrap());
    let area =
        FrameArea::new(cfg.switch.frames, cfg.frame_size(|_| None), PageSize::Normal).unwrap();
    let ports = snap.ports.iter().map(|_| MemPort::new(1024)).collect();
    let mut w = Worker::new(area, ports, snap.clone());
    let [up, h1, h2, h3] = ["up", "h1", "h2", "h3"].map(|n| snap.port_by_name(n).unwrap());
    let mut now = Nanos::from_secs(1);
    // The peer speaks first, so frames to it are unicast.
    let hello = hostile::catalogue(&PEER, &ME).into_iter().find(|c| c.name == "legal-udp").unwrap();
    assert!(w.inject(h2, &hello.bytes));
    w.poll(now);
    let _ = [up, h1, h3].map(|p| w.take_sent(p));

    for c in hostile::catalogue(&ME, &PEER) {
        let before = w.pipeline().counters.clone();
        assert!(w.inject(h1, &c.bytes), "{}: no frame", c.name);
        now = now.add(Nanos::from_millis(1));
        w.poll(now);
        let after = w.pipeline().counters.clone();
        let drops: Vec<DropReason> = DropReason::ALL
            .iter()
            .copied()
            .filter(|r| after.drops(*r) != before.drops(*r))
            .collect();
        let checks: Vec<ParseError> = ParseError::ALL
            .iter()
            .copied()
            .filter(|e| after.parse_errors[e.index()] != before.parse_errors[e.index()])
            .collect();
        let to_peer = w.take_sent(h2);
        let to_blue = w.take_sent(h3);
        let _ = w.take_sent(up);
        assert!(to_blue.is_empty(), "{}: reached tenant blue", c.name);
        match c.expect {
            Expect::Drop { reason, check } => {
                assert_eq!(
                    drops.iter().map(|r| r.as_label()).collect::<Vec<_>>(),
                    [reason],
                    "{}: drop reasons",
                    c.name
                );
                assert_eq!(after.drops(drops[0]), before.drops(drops[0]) + 1, "{}", c.name);
                assert_eq!(
                    checks.iter().map(|e| e.as_label()).collect::<Vec<_>>(),
                    check.into_iter().collect::<Vec<_>>(),
                    "{}: parse check",
                    c.name
                );
                assert!(to_peer.is_empty(), "{}: dropped, yet the peer got it", c.name);
            }
            Expect::Forward => {
                assert!(drops.is_empty(), "{}: dropped as {drops:?}", c.name);
                assert_eq!(
                    to_peer,
                    std::slice::from_ref(&c.bytes),
                    "{}: the peer gets it unchanged",
                    c.name
                );
            }
        }
    }
    assert!(w.census().balanced());
}

/// The bytes of `frames` as a trafgen packet config, one packet each.
fn trafgen_config(frames: &[&[u8]]) -> String {
    let mut s = String::new();
    for f in frames {
        let bytes: Vec<String> = f.iter().map(|b| format!("0x{b:02x}")).collect();
        s += &format!("{{ {} }}\n", bytes.join(", "));
    }
    s
}

/// trafgen in `host`'s namespace: `count` packets of `cfg` (round robin), `gap` between them.
fn trafgen(lab: &Lab, host: &str, name: &str, cfg: &str, count: u64, gap: Option<&str>) {
    let file = lab.dir.join(format!("{name}.cfg"));
    std::fs::write(&file, cfg).unwrap();
    let n = count.to_string();
    let file = file.display().to_string();
    let mut args = vec!["timeout", "60", "trafgen", "-o", "eth0", "-i", &file, "-n", &n, "-q"];
    args.extend_from_slice(&["--cpus", "1"]);
    if let Some(g) = gap {
        args.extend_from_slice(&["-t", g]);
    }
    let o = lab.ns_run(host, &args);
    assert!(o.status.success(), "trafgen {name}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The kernel's RX drop count of an interface (a veth peer drops when its ring is full).
fn veth_rx_dropped(ifname: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/rx_dropped"));
    text.ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

fn tenant<'a>(tenants: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    tenants.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()
}

#[test]
fn hostile_tenants_do_not_hurt_the_switch_or_the_other_tenants() {
    if !can_run("hostile_tenants_do_not_hurt_the_switch_or_the_other_tenants") {
        return;
    }
    let mut lab = Lab::new();
    lab.host("h4", "4"); // blue's second host
    lab.host("h5", "5"); // green: the flooder
    lab.set_mac("h1", &mac_str(ME.mac));
    lab.set_mac("h2", &mac_str(PEER.mac));
    let (h4, h5) = (lab.ifname("h4"), lab.ifname("h5"));
    let guard = guard();
    lab.edit_config(|c| {
        c.replace("{ port = \"h1\" }", &format!("{{ port = \"h1\", {guard} }}"))
            .replace("{ port = \"h3\" }]", "{ port = \"h3\" }, { port = \"h4\" }]")
            + &format!(
                "[ports.h4]\ninterface = \"{h4}\"\nkind = \"tenant\"\n\
                 [ports.h5]\ninterface = \"{h5}\"\nkind = \"tenant\"\n\
                 [tenants.green]\nattach = [{{ port = \"up\", vlan = 300 }}, {{ port = \"h5\" }}]\n\
                 fdb_quota = 512\n\
                 [tenants.green.security_group]\nmax_connections = 256\n\
                 rules = [{{ direction = \"from-tenant\" }}]\n"
            )
    });
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"), "red h1 -> h2 before the attacks");
    assert!(lab.ping("h3", "10.9.1.4", "2"), "blue h3 -> h4 before the attacks");
    let base = lab.ctl_json("counters");
    let base_tenants = lab.ctl_json("tenants");
    let base_ports = lab.ctl_json("ports");
    let base_veth = veth_rx_dropped(&lab.ifname("h5"));

    // Blue's hosts: a ping that runs through all the attacks, and a capture of what reaches h3.
    let pcap = lab.dir.join("h3.pcap");
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns_name("h3"),
            "timeout",
            "60",
            "tcpdump",
            "-q",
            "-n",
            "-i",
            "eth0",
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns_name("h4"),
            "ping",
            "-c",
            "300",
            "-i",
            "0.02",
            "-W",
            "1",
            "10.9.1.3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // 1. The catalogue from red's h1, each frame 20 times, spaced so that no frame is lost
    //    before the switch sees it (the counts below are exact).
    let cat = hostile::catalogue(&ME, &PEER);
    const TIMES: u64 = 20;
    let frames: Vec<&[u8]> = cat.iter().map(|c| c.bytes.as_slice()).collect();
    trafgen(
        &lab,
        "h1",
        "catalogue",
        &trafgen_config(&frames),
        TIMES * cat.len() as u64,
        Some("200us"),
    );

    // 2. A MAC flood from green's h5: 100 000 frames from random source MACs, at full speed.
    let flood = "{ 0xff,0xff,0xff,0xff,0xff,0xff, 0x02, drnd(5), 0x88, 0xb5, fill(0, 46) }\n";
    trafgen(&lab, "h5", "macflood", flood, 100_000, None);

    // 3. A connection flood from h5 (its own MAC and address): 5 000 SYNs, each from another
    //    source port, towards an address behind the uplink.
    let h5 = Host { mac: parse_mac(&lab.mac("h5")), ip: [10, 9, 1, 5] };
    let syns: Vec<Vec<u8>> = (0..5000u16)
        .map(|i| {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ethernet2(h5.mac, [2, 0, 0, 0, 0xfa, 0xb])
                .ipv4(h5.ip, [10, 9, 1, 99], 64)
                .tcp(10_000 + i, 80, 1, 1024)
                .syn()
                .write(&mut out, &[])
                .unwrap();
            out
        })
        .collect();
    let refs: Vec<&[u8]> = syns.iter().map(Vec::as_slice).collect();
    trafgen(&lab, "h5", "synflood", &trafgen_config(&refs), 5000, Some("20us"));

    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let received: u64 = text
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let _ = Command::new("kill").arg(capture.id().to_string()).status();
    let _ = capture.wait();

    // The switch is up and answers; the tenants it carries still talk.
    assert!(lab.switch.as_mut().unwrap().try_wait().unwrap().is_none(), "the switch died");
    assert!(
        received >= 297,
        "blue's ping lost {} of 300 during the attacks:\n{text}",
        300 - received
    );
    assert!(lab.ping("h1", "10.9.1.2", "2"), "red h1 -> h2 after the attacks");

    // Every crafted frame counted under its reason, exactly.
    let counters = lab.ctl_json("counters");
    let tenants = lab.ctl_json("tenants");
    let (reasons, checks) = predicted(&cat, TIMES);
    let delta = |now: &serde_json::Value, then: &serde_json::Value, k: &str| {
        now[k].as_u64().unwrap_or(0) - then[k].as_u64().unwrap_or(0)
    };
    for (check, n) in &checks {
        assert_eq!(
            delta(&counters["malformed"], &base["malformed"], check),
            *n,
            "malformed/{check}"
        );
    }
    assert_eq!(delta(&counters["drops"], &base["drops"], "malformed"), reasons["malformed"]);
    assert_eq!(
        delta(&counters["drops"], &base["drops"], "unknown_tenant"),
        reasons["unknown_tenant"]
    );
    let (red, red0) = (tenant(&tenants, "red"), tenant(&base_tenants, "red"));
    for reason in ["spoof", "invalid_src_mac", "ethertype"] {
        assert_eq!(delta(&red["drops"], &red0["drops"], reason), reasons[reason], "red {reason}");
    }
    // Malformed frames count against red, the tenant of h1's attachment, where their tags could
    // be read (all but the VLAN and Ethernet checks).
    let red_malformed = checks
        .iter()
        .filter(|(k, _)| !matches!(**k, "vlan" | "ethernet"))
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(delta(&red["drops"], &red0["drops"], "malformed"), red_malformed, "red malformed");
    // The MAC flood stopped at green's quota; blue's table kept its hosts.
    let green = tenant(&tenants, "green");
    let fdb = lab.ctl_json_args(&["fdb", "green"]);
    let learned = fdb.as_array().map_or(0, Vec::len);
    assert!(learned <= 512, "green learned {learned} MACs past its quota of 512");
    let exceeded = delta(&counters["fdb"], &base["fdb"], "quota_exceeded");
    assert!(exceeded > 10_000, "quota refusals {exceeded}: did the flood arrive?");
    // Every flood frame is accounted for: received by the switch, or dropped by the kernel
    // before it and counted there. veth counts every frame its XDP program could not hand on
    // (the XDP socket's full RX ring among them, which the socket counts as well).
    let ports = lab.ctl_json("ports");
    let port = |v: &serde_json::Value| {
        v.as_array().unwrap().iter().find(|p| p["name"] == "h5").unwrap().clone()
    };
    let (p5, p50) = (port(&ports), port(&base_ports));
    let kernel = |p: &serde_json::Value| -> u64 {
        p["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                q["kernel"]["rx_ring_full"].as_u64().unwrap()
                    + q["kernel"]["rx_dropped"].as_u64().unwrap()
            })
            .sum()
    };
    let veth_dropped = veth_rx_dropped(&lab.ifname("h5")) - base_veth;
    let seen = delta(&p5, &p50, "rx_packets");
    let xsk_dropped = kernel(&p5) - kernel(&p50);
    assert!(xsk_dropped <= veth_dropped, "XDP socket {xsk_dropped} > veth {veth_dropped}");
    // The port's summary counts the kernel's loss with its queues', and its drops cell in
    // `ctl ports` shows it: no "0" while the kernel dropped.
    assert_eq!(p5["kernel_lost"].as_u64(), Some(kernel(&p5)), "{p5}");
    let (ok, table, err) = lab.ctl(false, &["ports"]);
    assert!(ok, "{err}");
    let row = table.lines().find(|l| l.starts_with("h5 ")).unwrap_or_default();
    assert_eq!(row.contains(&format!("kernel={}", kernel(&p5))), kernel(&p5) > 0, "{table}");
    let accounted = seen + veth_dropped;
    assert!(
        (105_000..105_100).contains(&accounted),
        "h5 sent 105 000 frames; the switch saw {seen}, the kernel dropped {veth_dropped} (veth; \
         {xsk_dropped} of them on the XDP socket's full ring): {accounted}"
    );
    let blue_fdb = lab.ctl_json_args(&["fdb", "blue"]);
    assert!(blue_fdb.as_array().is_some_and(|v| v.len() >= 2), "blue's MACs: {blue_fdb}");
    // The connection flood from one address stopped at its half-open bound (a quarter of half
    // the quota of 256): each new SYN evicted the flooder's oldest, and nothing was refused.
    assert!(green["connections"].as_u64().unwrap() <= 32, "{green}");
    let full = green["drops"]["conntrack_full"].as_u64().unwrap_or(0);
    assert_eq!(full, 0, "conntrack_full: half-open entries are evicted, not new ones refused");

    // Nothing of the attackers reached blue's h3.
    let o = Command::new("tcpdump").args(["-n", "-e", "-r"]).arg(&pcap).output().unwrap();
    let seen = String::from_utf8_lossy(&o.stdout);
    let blue = [lab.mac("h3"), lab.mac("h4")];
    let foreign: Vec<&str> = seen
        .lines()
        .filter(|l| !blue.iter().any(|m| l.split_whitespace().nth(1) == Some(m.as_str())))
        .collect();
    assert!(
        seen.lines().count() >= 290,
        "the capture on h3 holds blue's ping: {}",
        seen.lines().count()
    );
    assert!(
        foreign.is_empty(),
        "frames of other tenants reached blue's h3:\n{}",
        foreign.join("\n")
    );
}
