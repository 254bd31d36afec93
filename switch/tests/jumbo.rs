//! Jumbo frames (issue 23): packets larger than one frame cross the switch as chains of frames
//! (AF_XDP multi-buffer), between hosts whose interfaces keep their default offloads.
//! Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use common::*;

/// Sets MTU `mtu` on host `host`'s two ends.
fn set_mtu(lab: &Lab, host: &str, mtu: &str) {
    must("ip", &["link", "set", &lab.ifname(host), "mtu", mtu]);
    must("ip", &["-n", &lab.ns_name(host), "link", "set", "eth0", "mtu", mtu]);
}

/// The records of a classic pcap file: the bytes kept and the length on the wire.
fn pcap_records(pcap: &[u8]) -> Vec<(Vec<u8>, u32)> {
    let word = |at: usize| u32::from_le_bytes(pcap[at..at + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let (kept, orig) = (word(at + 8) as usize, word(at + 12));
        out.push((pcap[at + 16..at + 16 + kept].to_vec(), orig));
        at += 16 + kept;
    }
    out
}

#[test]
fn jumbo_frames_cross_whole_between_hosts_with_default_offloads() {
    if !can_run("jumbo_frames_cross_whole") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    for h in ["h1", "h2"] {
        set_mtu(&lab, h, "9000");
    }
    // h1's MTU comes from its interface, h2's from the config. Frames of 2 KiB (at MTU 9 000
    // the switch would take 4 KiB by itself): five to a packet.
    lab.edit_config(|c| {
        c.replace("[ports.h2]\n", "[ports.h2]\nmtu = 9000\n")
            .replace("[switch]\n", "[switch]\nframe_size = 2048\n")
    });
    lab.start();
    let log = std::fs::read_to_string(lab.log()).unwrap();
    assert!(!log.contains("refused multi-buffer"), "{log}");
    // A capture of red's ICMP keeps 2 048 bytes of each packet: more than its first frame holds.
    let file = lab.dir.join("jumbo.pcap");
    let f = file.display().to_string();
    let args = ["capture", "start", "red", "--file", &f, "--proto", "icmp", "--snaplen", "2048"];
    let (ok, _, err) = lab.ctl(true, &args);
    assert!(ok, "{err}");
    // Pings of 8 972 bytes of ICMP payload: 9 000-byte IP packets, five frames each, both ways
    // (DF set: nothing fragments on the way).
    let out = lab.ns_run(
        "h1",
        &["ping", "-c", "5", "-i", "0.2", "-W", "2", "-M", "do", "-s", "8972", "10.9.1.2"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(" 0% packet loss"), "{text}");
    let (ok, _, err) = lab.ctl(true, &["capture", "stop"]);
    assert!(ok, "{err}");
    // Ten records (5 requests, 5 replies), each 9 014 bytes on the wire and 2 048 kept, whose
    // bytes past the first frame are ping's own pattern (payload byte i is i mod 256 after
    // its 16-byte timestamp).
    let pcap = std::fs::read(&file).unwrap();
    let records = pcap_records(&pcap);
    assert_eq!(records.len(), 10, "{:?}", records.iter().map(|r| r.1).collect::<Vec<_>>());
    for (data, orig) in &records {
        assert_eq!((data.len(), *orig), (2048, 9014));
        for (i, &b) in data.iter().enumerate().skip(14 + 20 + 8 + 16) {
            assert_eq!(b, (i - 42) as u8, "captured byte {i}");
        }
    }
    // TCP with 8 948-byte segments, checksums left partial by the senders (veth defaults), at
    // 1 Gbit/s: below what the switch forwards here (2.6 Gbit/s unlimited), so a frame the
    // kernel drops would be a chain's fault, not a saturated path's (a saturating flow loses
    // frames at the fill ring by design, benches/jumbo.sh measures that).
    let bps = lab.iperf_with("h1", "h2", "10.9.1.2", "5601", &["-t", "3", "-b", "1G"]);
    assert!(bps > 0.9e9, "iperf3 at 1 Gbit/s, MTU 9 000: {bps} bit/s");
    let ports = lab.ctl_json("ports");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert_eq!(kernel_lost(&log), 0, "{log}");
    // The frame accounting balanced at the stop (every chunk of every chain came back).
    assert!(log.contains("total: balanced"), "{log}");
    let rx = sum_of(&ports, "rx_packets");
    assert!(rx > 1000, "{ports}");
}

#[test]
fn a_frame_beyond_the_port_mtu_is_dropped_as_too_big_and_counted() {
    if !can_run("a_frame_beyond_the_port_mtu") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    for h in ["h1", "h2"] {
        set_mtu(&lab, h, "9000");
    }
    lab.edit_config(|c| c.replace("[ports.h2]\n", "[ports.h2]\nmtu = 4000\n"));
    lab.start();
    let o = lab.ns_run("h1", &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.9.1.2"]);
    if !o.status.success() {
        let (_, log) = lab.stop();
        panic!("small frames do not pass: {o:?} {log}");
    }
    let big = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "5000", "10.9.1.2"];
    assert!(!lab.ns_run("h1", &big).status.success(), "5 028 bytes of IP over an MTU of 4 000");
    let ok = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "3972", "10.9.1.2"];
    assert!(lab.ns_run("h1", &ok).status.success(), "4 000 bytes of IP fit");
    let counters = lab.ctl_json("counters");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(counters["drops"]["too_big"].as_u64().unwrap() >= 3, "{counters}");
    assert!(log.contains("total: balanced"), "{log}");
}

/// Where the kernel refuses multi-buffer (`XSWITCH_TEST_REFUSE_SG` takes that path: no kernel
/// here refuses it on veth), the switch runs single-buffer: it says so, caps every port's MTU
/// to one frame, switches what fits one frame, and the packets the kernel cannot put in one
/// frame are counted in the kernel's loss, not hidden behind "0 dropped".
#[test]
fn a_switch_the_kernel_refuses_multi_buffer_runs_single_buffer_and_says_so() {
    if !can_run("a_switch_the_kernel_refuses_multi_buffer") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    for h in ["h1", "h2"] {
        set_mtu(&lab, h, "9000");
    }
    lab.env.push(("XSWITCH_TEST_REFUSE_SG".into(), "1".into()));
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nframe_size = 2048\n"));
    lab.start();
    let small = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1400", "10.9.1.2"];
    let small_ok = lab.ns_run("h1", &small).status.success();
    let big = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "3000", "10.9.1.2"];
    let big_ok = lab.ns_run("h1", &big).status.success();
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(small_ok, "1 428 bytes of IP fit one frame:\n{log}");
    assert!(!big_ok, "3 028 bytes of IP cannot cross single-buffer sockets:\n{log}");
    for port in ["h1", "h2"] {
        assert!(log.contains(&format!("port {port}: the kernel refused multi-buffer")), "{log}");
        assert!(log.contains(&format!("port {port}: MTU 9000 capped to 1770")), "{log}");
    }
    // h1's three requests, dropped by the kernel on h1's socket (too long for one frame).
    assert!(kernel_lost(&log) >= 3, "{log}");
    assert!(log.contains("total: balanced"), "{log}");
}

/// A takeover while jumbo frames stream: a packet the old process had half received when it
/// handed over is dropped whole, and the new process skips the rest of it rather than taking
/// its middle for a frame (iperf3's payload is random: read as Ethernet, it would teach the
/// switch random MACs). Three takeovers under TCP at 1 Gbit/s; the connection survives and
/// red's MAC table holds h1 and h2 only.
#[test]
fn a_takeover_mid_chain_skips_the_rest_of_the_packet() {
    if !can_run("a_takeover_mid_chain") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    for h in ["h1", "h2"] {
        set_mtu(&lab, h, "9000");
    }
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let new_binary = lab.dir.join("xswitch-new");
    std::fs::copy(env!("CARGO_BIN_EXE_xswitch"), &new_binary).unwrap();
    let mut server = lab.iperf_server("h2", "5602", true);
    let client = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("h1"), "timeout", "30", "iperf3", "-c"])
        .args(["10.9.1.2", "-p", "5602", "-t", "8", "-b", "1G", "-J"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut logs = String::new();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let (old, old_log, new_log) = lab.take_over(&new_binary, "--takeover");
        assert!(old.is_some_and(|s| s.success()), "{old_log}\n{new_log}");
        logs += &new_log;
    }
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let fdb = lab.ctl_json_args(&["fdb", "red"]);
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("total: balanced"), "{log}");
    let iperf = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "the TCP connection did not survive:\n{iperf}\n{logs}");
    // MTU 9 000 and no frame size in the config: frames of 4 KiB, chosen alike by every
    // process (a takeover refuses another frame size).
    assert_eq!(logs.matches("frames of 4096 bytes (switch.frame_size = 0").count(), 3, "{logs}");
    let macs: Vec<&str> =
        fdb.as_array().unwrap().iter().filter_map(|e| e["mac"].as_str()).collect();
    let (h1, h2) = (lab.mac("h1"), lab.mac("h2"));
    assert!(macs.iter().all(|m| *m == h1 || *m == h2), "{fdb}\n{logs}");
    eprintln!(
        "takeovers that skipped a packet's rest: {}",
        logs.matches("skipping the rest").count()
    );
}
