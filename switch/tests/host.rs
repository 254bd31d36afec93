//! The host side with real traffic: VF ports resolved through a fake sysfs tree whose VFs are
//! the lab's veths (this machine has no SR-IOV NIC), clear errors at start, VF attributes sent
//! through rtnetlink, and the frame area on huge pages. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::Path;

use common::*;

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A fake sysfs in the lab's directory: PF `fakepf0` on NUMA node 0 offering 4 VFs, none
/// enabled; VF 0 and 1 are the lab's h1 and h2 veths, VF 2 is bound to vfio-pci.
fn fake_sysfs(lab: &mut Lab) -> std::path::PathBuf {
    let root = lab.dir.join("sysfs");
    let dev = root.join("sys/class/net/fakepf0/device");
    write(&dev.join("sriov_totalvfs"), "4\n");
    write(&dev.join("sriov_numvfs"), "0\n");
    write(&dev.join("numa_node"), "0\n");
    for (i, h) in ["h1", "h2"].iter().enumerate() {
        let ifname = lab.ifname(h);
        std::fs::create_dir_all(dev.join(format!("virtfn{i}/net/{ifname}"))).unwrap();
        write(&root.join(format!("sys/class/net/{ifname}/device/numa_node")), "0\n");
    }
    let vfio = root.join("sys/bus/pci/drivers/vfio-pci");
    std::fs::create_dir_all(&vfio).unwrap();
    std::fs::create_dir_all(dev.join("virtfn2")).unwrap();
    std::os::unix::fs::symlink(&vfio, dev.join("virtfn2/driver")).unwrap();
    write(&root.join("sys/devices/system/node/node0/cpulist"), "0-1\n");
    lab.env.push(("XSWITCH_SYSFS_ROOT".into(), root.display().to_string()));
    root
}

/// Red's h1 and h2 become VF ports `v0` and `v1` of `fakepf0` (`vfs` given here).
fn vf_ports(lab: &Lab, vfs: &str) {
    let (h1, h2) = (lab.ifname("h1"), lab.ifname("h2"));
    lab.edit_config(|c| {
        c.replace(
            &format!("[ports.h1]\ninterface = \"{h1}\"\nkind = \"tenant\"\n"),
            &format!("[ports.v]\npf = \"fakepf0\"\nvfs = \"{vfs}\"\nkind = \"tenant\"\n"),
        )
        .replace(&format!("[ports.h2]\ninterface = \"{h2}\"\nkind = \"tenant\"\n"), "")
        .replace("{ port = \"h1\" }, { port = \"h2\" }", "{ port = \"v0\" }, { port = \"v1\" }")
            + "[sriov.fakepf0]\nnumvfs = 2\n"
    });
}

#[test]
fn vf_ports_are_provisioned_resolved_and_switch_traffic() {
    if !can_run("vf_ports_are_provisioned_resolved_and_switch_traffic") {
        return;
    }
    let mut lab = Lab::new();
    let root = fake_sysfs(&mut lab);
    vf_ports(&lab, "0-1");
    lab.start();
    // Provisioned: the count the config asked for was written.
    let numvfs = root.join("sys/class/net/fakepf0/device/sriov_numvfs");
    assert_eq!(std::fs::read_to_string(&numvfs).unwrap().trim(), "2");
    assert!(lab.ping("h1", "10.9.1.2", "3"), "red's VF ports switch traffic");
    let ports = lab.ctl_json("ports");
    let v1 = ports.as_array().unwrap().iter().find(|p| p["name"] == "v1").expect("port v1");
    assert_eq!(v1["pf"], "fakepf0");
    assert_eq!(v1["vf"], 1);
    assert_eq!(v1["interface"], lab.ifname("h2"));
    assert_eq!(v1["numa_node"], 0);
    let status = lab.ctl_json("status");
    assert_eq!(status["placement"][0]["numa_node"], 0, "{status}");
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains("fakepf0: VFs 0 -> 2 (sriov_numvfs)"), "{log}");
    assert!(log.contains(&format!("port v0: VF 0 of fakepf0 is {}", lab.ifname("h1"))), "{log}");
}

#[test]
fn a_vf_bound_to_another_driver_or_beyond_the_nic_stops_the_start_with_the_reason() {
    if !can_run("a_vf_bound_to_another_driver") {
        return;
    }
    let mut lab = Lab::new();
    fake_sysfs(&mut lab);
    // VF 2 is a port too (no tenant on it), but vfio-pci has it: no interface to drive.
    vf_ports(&lab, "0-2");
    lab.edit_config(|c| c.replace("numvfs = 2", "numvfs = 3"));
    let (st, log) = lab.start_and_fail();
    assert!(!st.success());
    assert!(log.contains("fakepf0: VF 2 is bound to driver vfio-pci"), "{log}");
    // More VFs than the NIC offers.
    lab.edit_config(|c| {
        c.replace("numvfs = 3", "numvfs = 8").replace("vfs = \"0-2\"", "vfs = \"0-1\"")
    });
    let (st, log) = lab.start_and_fail();
    assert!(!st.success());
    assert!(log.contains("fakepf0: 8 VFs asked for, the NIC offers at most 4"), "{log}");
}

#[test]
fn vf_attributes_go_to_the_driver_through_rtnetlink() {
    if !can_run("vf_attributes_go_to_the_driver_through_rtnetlink") {
        return;
    }
    // The uplink's veth as a "PF": the kernel parses the RTM_SETLINK with its VF attributes
    // and hands it to the driver, which has no VFs and says so. Nothing else here has VFs.
    let mut lab = Lab::new();
    let up = lab.ifname("up");
    lab.edit_config(|c| {
        c + &format!(
            "[sriov.{up}]\nvf = [{{ index = 0, mac = \"02:00:00:00:10:00\", vlan = 10, spoofchk = true, trust = false }}]\n"
        )
    });
    let (st, log) = lab.start_and_fail();
    assert!(!st.success());
    assert!(
        log.contains(&format!("sriov.{up}: VF 0"))
            && log.contains("does not support VF attributes"),
        "{log}"
    );
}

fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:")?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_frame_area_is_on_huge_pages_when_reserved_and_falls_back_otherwise() {
    if !can_run("the_frame_area_is_on_huge_pages") {
        return;
    }
    let mut lab = Lab::new();
    // The lab's 16 384 frames of 2 KiB: 32 MiB, sixteen 2 MiB pages.
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nhuge_pages = true\n"));
    const PATH: &str = "/proc/sys/vm/nr_hugepages";
    let before: u64 =
        std::fs::read_to_string(PATH).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    // Given back even when an assertion below fails.
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(PATH, self.0.to_string());
        }
    }
    let _restore = Restore(before);
    const PAGES: u64 = 16;
    let reserved =
        std::fs::write(PATH, (before + PAGES).to_string()).is_ok() && hugepages_free() >= PAGES;
    eprintln!("huge pages reserved for the test: {reserved} (free: {})", hugepages_free());
    lab.start();
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let pages = lab.ctl_json("status")["frames"]["pages"].as_str().unwrap_or("").to_string();
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    if reserved {
        assert_eq!(pages, "2 MiB", "{log}");
        assert!(log.contains("2 MiB pages"), "{log}");
    } else {
        eprintln!("!!! the kernel would not reserve huge pages: testing the fallback !!!");
        assert_eq!(pages, "4 KiB", "{log}");
        assert!(log.contains("no 2 MiB huge pages could be had"), "{log}");
    }
}
