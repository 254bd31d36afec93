//! Faults: listeners already taken at start, a config replaced by garbage and reloaded, a
//! tenant interface deleted while traffic runs and then created again. (The switch killed with
//! SIGKILL and started again is `a_start_after_kill_9_succeeds` in switching.rs.)
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::{Lab, can_run, must};

#[test]
fn a_taken_metrics_port_or_control_socket_stops_the_start_with_a_clear_error() {
    if !can_run("a_taken_metrics_port_or_control_socket_stops_the_start") {
        return;
    }
    let mut lab = Lab::new();
    // Someone else listens on the metrics address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    lab.edit_config(|c| {
        c.replace("[metrics]\nenabled = false\n", &format!("[metrics]\nlisten = \"{addr}\"\n"))
    });
    let (st, log) = lab.start_and_fail();
    assert!(!st.success(), "{log}");
    assert!(log.contains(&addr) && log.contains("metrics"), "the error names the address:\n{log}");
    // Nothing was announced before the listeners were had.
    assert!(!log.contains("INFO switching"), "{log}");
    for hif in lab.host_ifs() {
        assert!(!lab.xdp_attached(&hif), "a failed start left XDP on {hif}");
    }
    drop(taken);

    // Someone else answers on the control socket.
    lab.edit_config(|c| {
        c.replace(&format!("[metrics]\nlisten = \"{addr}\"\n"), "[metrics]\nenabled = false\n")
    });
    let sock = lab.dir.join("ctl.sock");
    let other = UnixListener::bind(&sock).unwrap();
    let (st, log) = lab.start_and_fail();
    assert!(!st.success(), "{log}");
    assert!(
        log.contains("is in use") && log.contains("ctl.sock"),
        "the error names the socket:\n{log}"
    );
    drop(other);
    // The listener is gone but its file stays: a stale socket is replaced, not an error.
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
}

#[test]
fn a_config_replaced_by_garbage_is_refused_on_reload_and_switching_goes_on() {
    if !can_run("a_config_replaced_by_garbage_is_refused_on_reload") {
        return;
    }
    let mut lab = Lab::new();
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let garbage: Vec<u8> =
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(lab.config(), &garbage).unwrap();
    let (ok, _, err) = lab.ctl(false, &["reload"]);
    assert!(!ok && err.contains("lab.toml"), "the error names the file: {err}");
    // SIGHUP with the garbage still there: logged, not fatal.
    let pid = lab.switch.as_ref().unwrap().id().to_string();
    must("kill", &["-HUP", &pid]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lab.switch.as_mut().unwrap().try_wait().unwrap().is_none(),
        "garbage killed the switch"
    );
    assert!(lab.ping("h1", "10.9.1.2", "3"), "no traffic after a garbage reload");
    let st = lab.ctl_json("status");
    assert_eq!(st["generation"], 1, "{st}");
    assert_eq!(st["reloads"]["rejected"], 2, "{st}");
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
}

/// Waits up to `secs` for `f`.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn port_state(lab: &Lab, port: &str) -> String {
    let ports = lab.ctl_json("ports");
    let p = ports.as_array().unwrap().iter().find(|p| p["name"] == port).unwrap();
    p["state"].as_str().unwrap_or("?").to_string()
}

#[test]
fn a_deleted_tenant_interface_goes_down_and_comes_back_with_its_interface() {
    if !can_run("a_deleted_tenant_interface_goes_down_and_comes_back") {
        return;
    }
    let mut lab = Lab::new();
    lab.red_host("h4", "4");
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    assert!(lab.ping("h1", "10.9.1.4", "2"));
    // Red's h2 loses its interface while h1 pings it and blue's h3 is busy.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns_name("h1"),
            "ping",
            "-c",
            "100",
            "-i",
            "0.05",
            "-W",
            "1",
            "10.9.1.2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let h2 = lab.ifname("h2");
    let h2_mac = lab.mac("h2");
    must("ip", &["link", "del", &h2]);
    assert!(eventually(5, || port_state(&lab, "h2") == "down"), "port h2 is not reported down");
    // The others keep switching.
    assert!(lab.ping("h1", "10.9.1.4", "5"), "h1 -> h4 while h2 is gone");
    let _ = ping.wait_with_output();
    let drops = lab.ctl_json("counters")["drops"]["port_down"].as_u64().unwrap();
    assert!(drops > 0, "h1's pings to the vanished h2 count as port_down");
    assert!(lab.switch.as_mut().unwrap().try_wait().unwrap().is_none(), "the switch died");
    // The interface comes back (same name, a new index).
    // A VM's interface comes back with the VM's MAC.
    lab.recreate_host_if("h2", "2", &h2_mac);
    assert!(eventually(10, || port_state(&lab, "h2") == "up"), "port h2 did not come back");
    assert!(
        lab.ping("h1", "10.9.1.2", "3"),
        "no traffic to h2 after it came back:\n{}",
        std::fs::read_to_string(lab.log()).unwrap_or_default()
    );
    assert!(lab.ping("h1", "10.9.1.4", "2"));
    let (ok, log) = lab.stop();
    for l in log.lines().filter(|l| l.contains("interface") || l.contains("accounting")) {
        eprintln!("{l}");
    }
    assert!(log.contains("interface") && log.contains("is back"), "{log}");
    assert!(ok && log.contains("balanced"), "{log}");
}
