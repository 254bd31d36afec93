//! Upgrades and restarts (issue 20): a running switch handed over to a second copy of the
//! binary (`run --takeover`) under a numbered UDP stream and a TCP connection through a
//! security group, a takeover refused, ten in a row; and a restart after `kill -9`.
//! Network namespaces and veth pairs built per test (unique names, torn down even when a
//! test fails), `xswitch run` on the host ends. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// A second copy of the switch's binary, as an upgrade brings one (in the lab's directory,
/// removed with it).
fn second_binary(lab: &Lab) -> PathBuf {
    let to = lab.dir.join("xswitch-new");
    std::fs::copy(env!("CARGO_BIN_EXE_xswitch"), &to).unwrap();
    to
}

/// Seconds of the day at which the first line of `log` containing `marker` was written (the
/// log's RFC 3339 timestamps).
fn logged_at(log: &str, marker: &str) -> f64 {
    let line =
        log.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("{marker}:\n{log}"));
    let t = &line[11..line.find('Z').unwrap()];
    let v: Vec<f64> = t.split(':').map(|x| x.parse().unwrap()).collect();
    v[0] * 3600.0 + v[1] * 60.0 + v[2]
}

/// How long nobody polled the sockets in a takeover: from the old process stopping its
/// workers to the new one's workers holding the sockets (an upper bound: it says so after
/// they do).
fn unpolled_ms(old_log: &str, new_log: &str) -> f64 {
    (logged_at(new_log, "INFO switching") - logged_at(old_log, "handing the switch over")) * 1e3
}

/// A started lab whose h1 reaches h2, a second copy of the binary, and a numbered stream of
/// `count` datagrams at 20 000/s from h1 to h2, running for half a second already.
fn streaming(count: u64) -> (Lab, PathBuf, SeqStream) {
    let mut lab = Lab::new();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let new_binary = second_binary(&lab);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, 20_000);
    std::thread::sleep(Duration::from_millis(500));
    (lab, new_binary, stream)
}

/// Received packets on port `name`, from `ctl counters` (or `ctl ports`).
fn port_rx(lab: &Lab, name: &str) -> u64 {
    let ports = lab.ctl_json("ports");
    let rows = ports.as_array().cloned().unwrap_or_default();
    let row = rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{ports}"));
    row["rx_packets"].as_u64().unwrap_or_else(|| panic!("no rx_packets in {row}"))
}

/// Tenant red behind a stateful security group: TCP to h2 opens only from the tenant side
/// (the replies pass as part of the connection), UDP likewise, so a connection the new
/// process did not inherit would be cut.
fn guarded(lab: &Lab) {
    lab.edit_config(|c| {
        c + "[tenants.red.security_group]\nrules = [\n  { direction = \"from-tenant\" },\n  \
             { direction = \"to-tenant\", proto = \"icmp\" },\n  \
             { direction = \"to-tenant\", proto = \"tcp\", ports = \"5301\" },\n  \
             { direction = \"to-tenant\", proto = \"udp\", ports = \"9999\" },\n]\n"
    });
}

/// The whole of issue 20's bar: a numbered stream at 20 000 datagrams/s and an iperf3 TCP
/// connection between h1 and h2 through a security group; a second copy of the binary takes
/// over in the middle. Not one datagram lost or duplicated, the TCP connection lives on, the
/// new process's counters continue the old one's, and its frame census balances at its stop.
#[test]
fn a_takeover_under_a_stream_and_a_tcp_connection_loses_nothing() {
    if !can_run("a_takeover_under_a_stream_and_a_tcp_connection_loses_nothing") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    guarded(&lab);
    // While neither process polls, h1's socket takes the stream (20 000/s) and the TCP data
    // (about 17 000/s) into what its fill and RX rings hold. The lab's rings of 256 (1 024 in
    // the fill ring) cover about 35 ms of that: the gap was 22 to 35 ms in runs here, and 69 ms
    // once in a CI run on a busy machine, which lost 270 datagrams in the kernel. Rings of
    // 1 024 (5 120 frames on h1's socket) cover 138 ms; what is tested is that the takeover
    // hands over what the rings hold, not how fast two cores start a process.
    lab.edit_config(|c| {
        c.replace("frames = 16384\nring_size = 256", "frames = 32768\nring_size = 1024")
    });
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    assert!(lab.ping("h2", "10.9.1.1", "1"));
    let new_binary = second_binary(&lab);
    let mut server = lab.iperf_server("h2", "5301", true);
    let ns = lab.ns_name("h1");
    // 6 s of TCP at a bounded rate beside the stream (the machine has two cores).
    let client = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "timeout", "30", "iperf3", "-c", "10.9.1.2", "-p", "5301"])
        .args(["-t", "6", "-b", "200M", "-J"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (count, pps) = (60_000, 20_000);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, pps);
    std::thread::sleep(Duration::from_millis(1500));
    let before = port_rx(&lab, "h1");
    let old_pid = lab.switch.as_ref().unwrap().id();
    let t0 = std::time::Instant::now();
    let (old, old_log, new_log) = lab.take_over(&new_binary, "--takeover");
    let took = t0.elapsed();
    let gap = unpolled_ms(&old_log, &new_log);
    let after = port_rx(&lab, "h1");
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(20));
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let iperf = String::from_utf8_lossy(&out.stdout).to_string();
    let status = lab.ctl_json("status");
    let new_pid = lab.switch.as_ref().unwrap().id();
    let (ok, log) = lab.stop();
    eprintln!(
        "takeover in {took:?} (sockets unpolled for at most {gap:.1} ms); {missing} of {count} \
         datagrams lost, {duplicated} duplicated; h1 rx {before} before, {after} after"
    );
    assert!(old.is_some_and(|s| s.success()), "the old switch did not exit 0:\n{old_log}");
    assert!(old_log.contains("handed over"), "{old_log}");
    assert!(!old_log.contains("does not balance"), "{old_log}");
    assert!(new_log.contains("took over"), "{new_log}");
    assert_eq!([got, missing, duplicated], [count, 0, 0], "stream\n{old_log}\n{log}");
    assert!(out.status.success(), "the TCP connection did not survive:\n{iperf}\n{log}");
    assert!(after >= before, "the counters started again: {before} then {after}");
    assert_eq!(status["pid"], new_pid, "{status}");
    assert_eq!(status["took_over_from"], old_pid, "{status}");
    assert!(ok && log.contains("balanced"), "{status}\n{log}");
}

/// A takeover the running switch refuses (the new config changes `frame_size`, which cannot
/// change under live sockets) leaves it switching: the new process exits with the reason, the
/// stream loses nothing.
#[test]
fn a_refused_takeover_leaves_the_old_switch_switching() {
    if !can_run("a_refused_takeover_leaves_the_old_switch_switching") {
        return;
    }
    let _one = one_at_a_time();
    let count = 40_000;
    let (mut lab, new_binary, stream) = streaming(count);
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nframe_size = 4096\n"));
    let (st, old_log, new_log) = lab.take_over(&new_binary, "--takeover");
    let st = st.expect("the new process exited");
    assert!(!st.success(), "{new_log}");
    assert!(new_log.contains("refused") && new_log.contains("frame_size"), "{new_log}");
    assert!(old_log.contains("takeover refused"), "{old_log}");
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(20));
    let (ok, log) = lab.stop();
    assert_eq!([got, missing, duplicated], [count, 0, 0], "{log}");
    assert!(ok && log.contains("balanced"), "{log}");
}

/// `--takeover=or-restart` where a takeover is refused: the old switch is stopped and the new
/// one starts afresh with its config (here a larger frame size), and switches.
#[test]
fn or_restart_stops_a_switch_that_refuses_and_starts_afresh() {
    if !can_run("or_restart_stops_a_switch_that_refuses_and_starts_afresh") {
        return;
    }
    let mut lab = Lab::new();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let new_binary = second_binary(&lab);
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nframe_size = 4096\n"));
    let (st, old_log, new_log) = lab.take_over(&new_binary, "--takeover=or-restart");
    assert!(st.is_some_and(|s| s.success()), "the old switch did not stop cleanly:\n{old_log}");
    assert!(new_log.contains("refused") && new_log.contains("start afresh"), "{new_log}");
    assert!(lab.ping("h1", "10.9.1.2", "2"), "{new_log}");
    let status = lab.ctl_json("status");
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("frames x 4096 B"), "{status}\n{log}");
}

/// Ten takeovers in a row under a numbered stream: not one datagram lost or duplicated.
#[test]
fn ten_takeovers_in_a_row_lose_nothing() {
    if !can_run("ten_takeovers_in_a_row_lose_nothing") {
        return;
    }
    let _one = one_at_a_time();
    let count = 200_000;
    let (mut lab, new_binary, stream) = streaming(count);
    let start = std::time::Instant::now();
    let mut gaps = Vec::new();
    for i in 0..10 {
        let (old, old_log, new_log) = lab.take_over(&new_binary, "--takeover");
        assert!(old.is_some_and(|s| s.success()), "takeover {i}: the old switch:\n{old_log}");
        gaps.push(unpolled_ms(&old_log, &new_log));
        std::thread::sleep(Duration::from_millis(200));
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "ten takeovers in {:?}; sockets unpolled for at most (ms, sorted) {gaps:.1?}",
        start.elapsed()
    );
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(30));
    let (ok, log) = lab.stop();
    assert_eq!([got, missing, duplicated], [count, 0, 0], "{log}");
    assert!(ok && log.contains("balanced"), "{log}");
}

/// Issue 20's crash case: a switch killed with SIGKILL under a numbered stream of 20 000
/// datagrams/s and started again at once. What is lost is the gap while no process switches
/// (recorded in docs/TESTING.md); the new process must not add to it by redirecting frames to
/// sockets whose fill rings are still empty (it attaches its XDP programs only once its
/// workers have filled them).
#[test]
fn a_restart_after_kill_9_loses_only_the_gap_and_no_frame_to_an_empty_fill_ring() {
    if !can_run("a_restart_after_kill_9_loses_only_the_gap") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    assert!(lab.ping("h2", "10.9.1.1", "1"));
    let (count, pps) = (80_000, 20_000);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, pps);
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = std::time::Instant::now();
    lab.kill9();
    lab.start();
    let restart = t0.elapsed();
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(20));
    let ports = lab.ctl_json("ports");
    let empty = sum_of(&ports, "rx_fill_ring_empty_descs");
    let (ok, log) = lab.stop();
    let gap_ms = missing as f64 * 1e3 / pps as f64;
    eprintln!(
        "kill -9 and restart: {restart:?} until the new switch said 'switching'; {missing} of \
         {count} datagrams lost ({gap_ms:.0} ms of the stream), {duplicated} duplicated; the new \
         sockets' fill_empty: {empty}"
    );
    assert!(ok, "{log}");
    assert_eq!(got + missing, count, "the stream's last datagrams did not arrive");
    assert_eq!(duplicated, 0);
    assert_eq!(empty, 0, "frames found an empty fill ring in the new process:\n{ports}");
    // Lost: the frames that arrived while no process switched, and no more than the time the
    // restart took (plus the old sockets' unread rings).
    assert!(
        gap_ms <= restart.as_secs_f64() * 1e3 + 100.0,
        "{gap_ms:.0} ms of the stream lost for a restart of {restart:?}"
    );
}

/// Two workers, with h1 and h2 on different ones, so that frames cross between them on the
/// handoff rings and chunks go home on the return rings while the stream runs: a takeover
/// loses nothing and both processes' frame censuses balance.
#[test]
fn a_takeover_of_two_workers_with_frames_crossing_between_them_loses_nothing() {
    if !can_run("a_takeover_of_two_workers_with_frames_crossing_between_them_loses_nothing") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nworkers = 2\n"));
    split_h1_h2(&lab);
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let new_binary = second_binary(&lab);
    let (count, pps) = (60_000, 20_000);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, pps);
    std::thread::sleep(Duration::from_millis(1000));
    let (old, old_log, new_log) = lab.take_over(&new_binary, "--takeover");
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(20));
    let (ok, log) = lab.stop();
    eprintln!(
        "two workers: sockets unpolled for at most {:.1} ms",
        unpolled_ms(&old_log, &new_log)
    );
    assert!(old.is_some_and(|s| s.success()), "{old_log}");
    assert!(!old_log.contains("does not balance"), "{old_log}");
    assert_eq!(worker_of(&new_log, "h1"), Some(0), "{new_log}");
    assert_eq!(worker_of(&new_log, "z2"), Some(1), "{new_log}");
    assert_eq!([got, missing, duplicated], [count, 0, 0], "{old_log}\n{log}");
    assert!(ok && log.contains("balanced"), "{log}");
}

/// Reads datagrams from the fake `NOTIFY_SOCKET` until one contains `until` (bounded).
fn notifications(sock: &std::os::unix::net::UnixDatagram, until: &str, limit: Duration) -> String {
    let t0 = std::time::Instant::now();
    let mut all = String::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            all.push_str(&m);
            all.push('|');
            if m.contains(until) {
                break;
            }
        }
    }
    all
}

/// `xswitch ctl upgrade` as a systemd service runs it: the running switch starts the new
/// binary as its child with `--takeover`; the new process tells the service manager it is the
/// main process (`MAINPID=`, `READY=1`; the unit has `NotifyAccess=all`) before the old one
/// exits 0, and pings the watchdog from then on. Under a numbered stream: nothing lost.
#[test]
fn ctl_upgrade_hands_the_service_to_the_new_binary_without_loss() {
    if !can_run("ctl_upgrade_hands_the_service_to_the_new_binary_without_loss") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let path = lab.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    lab.env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    lab.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    lab.start();
    let ready = notifications(&sock, "READY=1", Duration::from_secs(5));
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let new_binary = second_binary(&lab);
    let (count, pps) = (40_000, 20_000);
    let stream = lab.seq_stream("h1", "h2", "10.9.1.2", count, pps);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out, err) = lab.ctl(false, &["upgrade", "--binary", new_binary.to_str().unwrap()]);
    assert!(ok && out.contains("started"), "{out}{err}");
    let handed = notifications(&sock, "MAINPID=", Duration::from_secs(20));
    let mut old = lab.switch.take().unwrap();
    let st = exits_within(&mut old, Duration::from_secs(10));
    let new_pid: u32 = handed
        .split("MAINPID=")
        .nth(1)
        .and_then(|r| r.split(['\n', '|']).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID: {handed}"));
    let pings = notifications(&sock, "WATCHDOG=1", Duration::from_secs(3));
    let [got, missing, duplicated] = stream.counts(Duration::from_secs(20));
    let status = lab.ctl_json("status");
    // The new process is the old one's orphan now: stopped by its pid, as systemd would.
    must("kill", &["-TERM", &new_pid.to_string()]);
    // Read what it tells the service manager meanwhile (as systemd would: a full socket would
    // block it).
    let reader = {
        let sock = sock.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                let _ = sock.recv(&mut buf);
            }
        })
    };
    assert!(wait_gone(new_pid, Duration::from_secs(10)), "the new process did not stop");
    drop(reader);
    let log = std::fs::read_to_string(lab.log()).unwrap();
    assert!(st.is_some_and(|s| s.success()), "the old process:\n{log}");
    assert_ne!(new_pid, old.id(), "{handed}");
    assert!(handed.contains("READY=1"), "{handed}");
    assert!(pings.contains("WATCHDOG=1"), "the new process does not ping: {pings}");
    assert_eq!([got, missing, duplicated], [count, 0, 0], "{log}");
    assert!(status["uptime_secs"].is_number(), "{status}");
    assert!(log.contains("upgrade: started") && log.contains("took over"), "{log}");
    assert!(log.matches("balanced").count() == 1, "the new process's stop:\n{log}");
}

/// Flow records go on across a takeover: the IPFIX messages of red's observation domain keep
/// their numbering (the sequence number counts the data records sent before; the new process
/// starts where the old one's writer ended, so the collector sees no reset).
#[test]
fn ipfix_numbering_goes_on_across_a_takeover() {
    if !can_run("ipfix_numbering_goes_on_across_a_takeover") {
        return;
    }
    let mut lab = Lab::new();
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    collector.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let addr = collector.local_addr().unwrap();
    lab.edit_config(|c| {
        c.replace(
            "[tenants.blue]",
            "observation_domain = 7\n[tenants.red.flow_log]\nipfix = true\n[tenants.blue]",
        )
        .replace(
            "[switch]\n",
            &format!(
                "[switch]\nflow_log_ipfix = \"{addr}\"\nflow_log_interval_secs = 1\n\
                 flow_log_idle_secs = 1\n"
            ),
        )
    });
    lab.start();
    let new_binary = second_binary(&lab);
    // (sequence number) of every message of domain 7, in arrival order.
    let mut seqs = Vec::new();
    let read_for = |secs: u64, seqs: &mut Vec<u32>| {
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 65536];
        while t0.elapsed() < Duration::from_secs(secs) {
            if let Ok(n) = collector.recv(&mut buf)
                && n >= 16
                && buf[12..16] == 7u32.to_be_bytes()
            {
                seqs.push(u32::from_be_bytes(buf[8..12].try_into().unwrap()));
            }
        }
    };
    assert!(lab.ping("h1", "10.9.1.2", "5"));
    read_for(3, &mut seqs);
    let before = seqs.len();
    let (old, old_log, _) = lab.take_over(&new_binary, "--takeover");
    assert!(old.is_some_and(|s| s.success()), "{old_log}");
    assert!(lab.ping("h1", "10.9.1.2", "5"));
    read_for(3, &mut seqs);
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(before > 0 && seqs.len() > before, "messages before and after: {seqs:?}");
    // Each message's number is the records sent before it: strictly increasing, never reset.
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "sequence numbers {seqs:?} (before: {before})");
}
