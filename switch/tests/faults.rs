//! Faults: listeners already taken at start, a config replaced by garbage and reloaded. (The
//! switch killed with SIGKILL and started again is `a_start_after_kill_9_succeeds` in afxdp.rs.)
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::net::UnixListener;
use std::time::Duration;

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
