//! SR-IOV and NUMA over fake sysfs trees: a NIC with 16 VFs on NUMA node 1 of a two-node
//! machine (this project's machines have no SR-IOV NIC), VF resolution, provisioning, every
//! error, NUMA placement, and VF ports in the config.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use control::config::load_str;
use control::sriov::{Provisioned, Resolve, SriovError, Sysfs, place, resolve};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fake sysfs root, removed when dropped.
struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Two NUMA nodes (CPUs 0-3 and 4-7); PF `enp1s0f0` on node 1 offering 16 VFs with
/// `numvfs` enabled, VF i's interface `enp1s0f0v{i}` (also on node 1), except VF 3, bound to
/// vfio-pci; `eth9` on node 0 without SR-IOV.
fn tree(numvfs: u32) -> Tree {
    let root = std::env::temp_dir().join(format!(
        "xswitch-sysfs-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let net = root.join("sys/class/net");
    let dev = net.join("enp1s0f0/device");
    write(&dev.join("sriov_totalvfs"), "16\n");
    write(&dev.join("sriov_numvfs"), &format!("{numvfs}\n"));
    write(&dev.join("numa_node"), "1\n");
    for i in 0..16 {
        let vf = dev.join(format!("virtfn{i}"));
        if i == 3 {
            let drivers = root.join("sys/bus/pci/drivers/vfio-pci");
            std::fs::create_dir_all(&drivers).unwrap();
            std::fs::create_dir_all(&vf).unwrap();
            std::os::unix::fs::symlink(&drivers, vf.join("driver")).unwrap();
        } else {
            std::fs::create_dir_all(vf.join(format!("net/enp1s0f0v{i}"))).unwrap();
            write(&net.join(format!("enp1s0f0v{i}/device/numa_node")), "1\n");
        }
    }
    write(&net.join("eth9/device/numa_node"), "0\n");
    write(&root.join("sys/devices/system/node/node0/cpulist"), "0-3\n");
    write(&root.join("sys/devices/system/node/node1/cpulist"), "4-7\n");
    Tree(root)
}

const WAIT: Duration = Duration::from_millis(100);

#[test]
fn vfs_resolve_to_their_interfaces_and_numa_nodes() {
    let t = tree(16);
    let sys = Sysfs::new(&t.0);
    assert_eq!(sys.total_vfs("enp1s0f0").unwrap(), 16);
    assert_eq!(sys.vf_interface("enp1s0f0", 7, WAIT).unwrap(), "enp1s0f0v7");
    assert_eq!(sys.numa_node("enp1s0f0v7"), Some(1));
    assert_eq!(sys.numa_node("eth9"), Some(0));
    assert_eq!(sys.nodes(), vec![0, 1]);
    assert_eq!(sys.node_cpus(1), vec![4, 5, 6, 7]);
    assert_eq!(sys.cpu_node(5), Some(1));
}

#[test]
fn provisioning_writes_the_count_through_zero() {
    let t = tree(0);
    let sys = Sysfs::new(&t.0);
    let numvfs = t.0.join("sys/class/net/enp1s0f0/device/sriov_numvfs");
    assert_eq!(sys.provision("enp1s0f0", 16).unwrap(), Provisioned::Changed { from: 0, to: 16 });
    assert_eq!(std::fs::read_to_string(&numvfs).unwrap(), "16");
    assert_eq!(sys.provision("enp1s0f0", 16).unwrap(), Provisioned::Already(16));
    // From 16 to 8 the kernel wants 0 first; the file ends at 8.
    assert_eq!(sys.provision("enp1s0f0", 8).unwrap(), Provisioned::Changed { from: 16, to: 8 });
    assert_eq!(std::fs::read_to_string(&numvfs).unwrap(), "8");
}

#[test]
fn each_failure_has_its_error() {
    let t = tree(8);
    let sys = Sysfs::new(&t.0);
    let e = sys.provision("enp1s0f0", 32).unwrap_err();
    assert!(matches!(e, SriovError::TooMany { want: 32, total: 16, .. }), "{e}");
    assert!(e.to_string().contains("at most 16"), "{e}");
    let e = sys.total_vfs("eth9").unwrap_err();
    assert!(matches!(e, SriovError::NoSriov { .. }), "{e}");
    assert!(e.to_string().contains("no SR-IOV here"), "{e}");
    let e = sys.total_vfs("nope0").unwrap_err();
    assert!(matches!(e, SriovError::NoPf { .. }), "{e}");
    let e = sys.vf_interface("enp1s0f0", 3, WAIT).unwrap_err();
    assert!(matches!(&e, SriovError::BoundElsewhere { driver, .. } if driver == "vfio-pci"), "{e}");
    assert!(e.to_string().contains("bound to driver vfio-pci"), "{e}");
    let e = sys.vf_interface("enp1s0f0", 9, WAIT).unwrap_err();
    assert!(matches!(e, SriovError::NoSuchVf { vf: 9, numvfs: 8, .. }), "{e}");
    // A VF whose interface never shows up: said after the wait.
    std::fs::remove_dir_all(t.0.join("sys/class/net/enp1s0f0/device/virtfn5/net")).unwrap();
    let e = sys.vf_interface("enp1s0f0", 5, WAIT).unwrap_err();
    assert!(matches!(e, SriovError::NoInterface { vf: 5, .. }), "{e}");
}

#[test]
fn workers_go_to_their_ports_node_and_crossings_are_warned() {
    let t = tree(16);
    let sys = Sysfs::new(&t.0);
    let ports = vec![
        vec!["enp1s0f0v0".to_string(), "enp1s0f0v1".to_string()],
        vec!["eth9".to_string()],
        vec!["enp1s0f0v2".to_string()],
    ];
    // Nothing configured: node 1's CPUs in turn for its workers, node 0's for the other.
    let p = place(&sys, &ports, &[]);
    assert_eq!(p.nodes, vec![Some(1), Some(0), Some(1)]);
    assert_eq!(p.cores, vec![Some(4), Some(0), Some(5)]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // Configured cores are kept; the one on the wrong node is warned about, naming both.
    let p = place(&sys, &ports, &[4, 1, 2]);
    assert_eq!(p.cores, vec![Some(4), Some(1), Some(2)]);
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(
        p.warnings[0]
            .contains("worker 2 is pinned to CPU 2 on NUMA node 0, its ports are on node 1"),
        "{:?}",
        p.warnings
    );
    // A worker polling ports of both nodes.
    let mixed = vec![vec!["enp1s0f0v0".to_string(), "eth9".to_string()]];
    let p = place(&sys, &mixed, &[]);
    assert!(p.warnings[0].contains("several NUMA nodes"), "{:?}", p.warnings);
    // One node (or none known): nothing pinned that was not configured.
    std::fs::remove_dir_all(t.0.join("sys/devices/system/node/node1")).unwrap();
    assert_eq!(place(&sys, &ports, &[]).cores, vec![None, None, None]);
}

const CONFIG: &str = r#"
[switch]
frames = 32768

[sriov.enp1s0f0]
numvfs = 16
vf = [{ index = 0, mac = "02:00:00:00:10:00", spoofchk = true, trust = false }]

[ports.uplink]
interface = "eth9"
kind = "uplink"

[ports.vf]
pf = "enp1s0f0"
vfs = "0-2,4"
kind = "tenant"

[tenants.t0]
attach = [{ port = "uplink", vlan = 1000 }, { port = "vf0" }]
[tenants.t4]
attach = [{ port = "uplink", vlan = 1004 }, { port = "vf4" }]
"#;

#[test]
fn a_range_of_vfs_is_a_port_per_vf_resolved_and_provisioned_at_start() {
    let cfg = load_str("test.toml", CONFIG).unwrap();
    let names: Vec<&String> = cfg.ports.keys().collect();
    assert_eq!(names, ["uplink", "vf0", "vf1", "vf2", "vf4"]);
    assert_eq!((cfg.ports["vf4"].pf.as_deref(), cfg.ports["vf4"].vf), (Some("enp1s0f0"), Some(4)));
    let t = tree(0);
    let sys = Sysfs::new(&t.0);
    // Looking changes nothing: no VF is enabled yet, so VF 0 does not exist.
    let e = resolve(&cfg, &sys, Resolve::Look, WAIT).unwrap_err();
    assert!(matches!(e, SriovError::NoSuchVf { numvfs: 0, .. }), "{e}");
    let (resolved, hosts, log) = resolve(&cfg, &sys, Resolve::Provision, WAIT).unwrap();
    assert_eq!(log, ["enp1s0f0: VFs 0 -> 16 (sriov_numvfs)"]);
    assert_eq!(resolved.ports["vf2"].interface, "enp1s0f0v2");
    let vf4 = hosts.iter().find(|h| h.port == "vf4").unwrap();
    assert_eq!((vf4.interface.as_str(), vf4.numa_node), ("enp1s0f0v4", Some(1)));
    assert_eq!(vf4.vf, Some(("enp1s0f0".to_string(), 4)));
    // The resolved config compiles: every port has its interface.
    let snap = control::compile(&resolved, 1).unwrap();
    assert!(snap.ports.iter().all(|p| !p.interface.is_empty()));
}

#[test]
fn vf_ports_and_sriov_sections_are_checked() {
    let bad = |from: &str, to: &str| -> String {
        assert!(CONFIG.contains(from), "fixture: {from}");
        match load_str("test.toml", &CONFIG.replacen(from, to, 1)) {
            Ok(_) => panic!("accepted: {to}"),
            Err(e) => e.to_string(),
        }
    };
    let e = bad("vfs = \"0-2,4\"", "vfs = \"0-2,17\"");
    assert!(e.contains("ports.vf17.vf") && e.contains("numvfs provisions VFs 0..16"), "{e}");
    let e = bad("vfs = \"0-2,4\"", "vfs = \"lots\"");
    assert!(e.contains("ports.vf.vfs"), "{e}");
    let e = bad("pf = \"enp1s0f0\"\nvfs = \"0-2,4\"", "pf = \"enp1s0f0\"");
    assert!(e.contains("ports.vf:") && e.contains("give either interface, or pf"), "{e}");
    let e = bad("mac = \"02:00:00:00:10:00\"", "mac = \"ff:ff:ff:ff:ff:ff\"");
    assert!(e.contains("sriov.enp1s0f0.vf[0].mac") && e.contains("not a unicast"), "{e}");
    let e = bad("numvfs = 16", "numvfs = 1000");
    assert!(e.contains("sriov.enp1s0f0.numvfs"), "{e}");
    let e = bad("frames = 32768", "frames = 32768\nhuge_page_size = \"4M\"");
    assert!(e.contains("switch.huge_page_size"), "{e}");
    // Two ports on one VF.
    let e = bad(
        "[tenants.t0]",
        "[ports.again]\npf = \"enp1s0f0\"\nvf = 1\nkind = \"tenant\"\n[tenants.t0]",
    );
    assert!(e.contains("VF 1 of enp1s0f0 is already port"), "{e}");
}
