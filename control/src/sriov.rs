//! The host side of ports: SR-IOV virtual functions and NUMA placement, read from sysfs.
//!
//! Everything here reads or writes under a root directory ([`Sysfs::new`]): `/` on a real
//! host, a fake tree in tests (this project's machines have no SR-IOV NIC). What it knows of a
//! NIC is what the kernel shows there:
//!
//! ```text
//! sys/class/net/PF/device/sriov_totalvfs     most VFs the NIC offers (absent: no SR-IOV)
//! sys/class/net/PF/device/sriov_numvfs       VFs enabled now (written to provision them)
//! sys/class/net/PF/device/virtfnN/net/IF     VF N's interface, when a network driver has it
//! sys/class/net/PF/device/virtfnN/driver     the driver VF N is bound to (vfio-pci: no IF)
//! sys/class/net/IF/device/numa_node          the device's NUMA node (-1: unknown)
//! sys/devices/system/node/nodeN/cpulist      node N's CPUs ("0-3,8-11")
//! ```
//!
//! It does _not_ bind drivers, create VFs one by one, or set VF attributes (MAC, VLAN, spoof
//! check, trust): those go through rtnetlink, which the `switch` crate speaks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a VF port cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SriovError {
    /// No interface of that name.
    #[error("{pf}: no such interface")]
    NoPf {
        /// The physical function named in the config.
        pf: String,
    },
    /// The interface has no SR-IOV capability (or its driver does not expose it).
    #[error("{pf}: no SR-IOV here (no {path})")]
    NoSriov {
        /// The physical function.
        pf: String,
        /// The file that would say how many VFs it offers.
        path: String,
    },
    /// More VFs wanted than the NIC offers.
    #[error("{pf}: {want} VFs asked for, the NIC offers at most {total} (sriov_totalvfs)")]
    TooMany {
        /// The physical function.
        pf: String,
        /// VFs the config asks for.
        want: u32,
        /// `sriov_totalvfs`.
        total: u32,
    },
    /// A VF index beyond the VFs enabled.
    #[error(
        "{pf}: VF {vf} does not exist ({numvfs} VFs enabled; set sriov.{pf}.numvfs to provision more)"
    )]
    NoSuchVf {
        /// The physical function.
        pf: String,
        /// The VF index.
        vf: u32,
        /// VFs enabled.
        numvfs: u32,
    },
    /// The VF is bound to a driver that gives it no network interface (vfio-pci, for a VM).
    #[error("{pf}: VF {vf} is bound to driver {driver}, which gives it no network interface")]
    BoundElsewhere {
        /// The physical function.
        pf: String,
        /// The VF index.
        vf: u32,
        /// The driver it is bound to.
        driver: String,
    },
    /// A VF whose network interface did not appear in time after provisioning.
    #[error("{pf}: VF {vf} has no network interface after {waited:?} (is its driver loaded?)")]
    NoInterface {
        /// The physical function.
        pf: String,
        /// The VF index.
        vf: u32,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A sysfs file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

/// sysfs under a root directory.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// sysfs under `root` (`/` on a host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn net(&self, ifname: &str) -> PathBuf {
        self.root.join("sys/class/net").join(ifname)
    }

    fn read(&self, p: &Path) -> Result<String, SriovError> {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .map_err(|source| SriovError::Io { path: p.display().to_string(), source })
    }

    fn read_u32(&self, p: &Path) -> Result<u32, SriovError> {
        let s = self.read(p)?;
        s.parse().map_err(|_| SriovError::Io {
            path: p.display().to_string(),
            source: std::io::Error::other(format!("{s:?} is not a number")),
        })
    }

    /// True when the interface exists.
    pub fn exists(&self, ifname: &str) -> bool {
        self.net(ifname).exists()
    }

    /// The most VFs `pf` offers.
    pub fn total_vfs(&self, pf: &str) -> Result<u32, SriovError> {
        if !self.exists(pf) {
            return Err(SriovError::NoPf { pf: pf.into() });
        }
        let p = self.net(pf).join("device/sriov_totalvfs");
        if !p.exists() {
            return Err(SriovError::NoSriov { pf: pf.into(), path: p.display().to_string() });
        }
        self.read_u32(&p)
    }

    /// The VFs `pf` has enabled.
    pub fn num_vfs(&self, pf: &str) -> Result<u32, SriovError> {
        self.total_vfs(pf)?;
        self.read_u32(&self.net(pf).join("device/sriov_numvfs"))
    }

    /// Enables `want` VFs on `pf` (nothing when it has them already). The kernel refuses to
    /// change a non-zero count to another one, so it goes through 0: VFs in use would go away,
    /// which is why a config names the count it needs and this runs at start only.
    pub fn provision(&self, pf: &str, want: u32) -> Result<Provisioned, SriovError> {
        let total = self.total_vfs(pf)?;
        if want > total {
            return Err(SriovError::TooMany { pf: pf.into(), want, total });
        }
        let now = self.num_vfs(pf)?;
        if now == want {
            return Ok(Provisioned::Already(now));
        }
        let p = self.net(pf).join("device/sriov_numvfs");
        let write = |n: u32| {
            std::fs::write(&p, n.to_string())
                .map_err(|source| SriovError::Io { path: p.display().to_string(), source })
        };
        if now != 0 {
            write(0)?;
        }
        write(want)?;
        Ok(Provisioned::Changed { from: now, to: want })
    }

    /// VF `vf`'s network interface, waiting up to `wait` for it to appear (after
    /// provisioning, the driver creates it a moment later).
    pub fn vf_interface(&self, pf: &str, vf: u32, wait: Duration) -> Result<String, SriovError> {
        let numvfs = self.num_vfs(pf)?;
        if vf >= numvfs {
            return Err(SriovError::NoSuchVf { pf: pf.into(), vf, numvfs });
        }
        let dev = self.net(pf).join(format!("device/virtfn{vf}"));
        let deadline = Instant::now() + wait;
        loop {
            let net = dev.join("net");
            if let Some(name) = std::fs::read_dir(&net)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
            {
                return Ok(name);
            }
            // Bound to something that is not a network driver: say which.
            if let Ok(target) = std::fs::read_link(dev.join("driver"))
                && let Some(driver) = target.file_name()
            {
                return Err(SriovError::BoundElsewhere {
                    pf: pf.into(),
                    vf,
                    driver: driver.to_string_lossy().into_owned(),
                });
            }
            if Instant::now() >= deadline {
                return Err(SriovError::NoInterface { pf: pf.into(), vf, waited: wait });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The NUMA node of an interface's device, if the kernel knows it.
    pub fn numa_node(&self, ifname: &str) -> Option<u32> {
        let s = std::fs::read_to_string(self.net(ifname).join("device/numa_node")).ok()?;
        s.trim().parse::<i64>().ok().and_then(|n| u32::try_from(n).ok())
    }

    /// The NUMA nodes of the machine, in order (empty when sysfs does not say).
    pub fn nodes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.root.join("sys/devices/system/node"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The CPUs of NUMA node `node`.
    pub fn node_cpus(&self, node: u32) -> Vec<u32> {
        let p = self.root.join(format!("sys/devices/system/node/node{node}/cpulist"));
        std::fs::read_to_string(p).map(|s| parse_cpulist(&s)).unwrap_or_default()
    }

    /// The node a CPU belongs to.
    pub fn cpu_node(&self, cpu: u32) -> Option<u32> {
        self.nodes().into_iter().find(|&n| self.node_cpus(n).contains(&cpu))
    }
}

/// What a port is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHost {
    /// The port's config name.
    pub port: String,
    /// Its interface.
    pub interface: String,
    /// The PF and VF index, for a VF port.
    pub vf: Option<(String, u32)>,
    /// The device's NUMA node, if the kernel knows it.
    pub numa_node: Option<u32>,
}

/// Whether [`resolve`] may change the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Write `sriov_numvfs` where the config asks for another count (at start).
    Provision,
    /// Only look (a reload: VFs are provisioned at start only).
    Look,
}

/// Provisions the VFs `cfg.sriov` asks for (with [`Resolve::Provision`]) and finds the
/// interface of every VF port: `cfg` with each VF port's `interface` filled in, what every
/// port is on the host, and a line for the log per change made.
pub fn resolve(
    cfg: &crate::config::model::Config,
    sys: &Sysfs,
    mode: Resolve,
    wait: Duration,
) -> Result<(crate::config::model::Config, Vec<PortHost>, Vec<String>), SriovError> {
    let mut out = cfg.clone();
    let mut log = Vec::new();
    if mode == Resolve::Provision {
        for (pf, s) in &cfg.sriov {
            if let Some(n) = s.numvfs {
                match sys.provision(pf, n)? {
                    Provisioned::Already(_) => {}
                    Provisioned::Changed { from, to } => {
                        log.push(format!("{pf}: VFs {from} -> {to} (sriov_numvfs)"));
                    }
                }
            }
        }
    }
    let mut hosts = Vec::new();
    for (name, p) in out.ports.iter_mut() {
        let vf = match (&p.pf, p.vf) {
            (Some(pf), Some(vf)) => {
                p.interface = sys.vf_interface(pf, vf, wait)?;
                Some((pf.clone(), vf))
            }
            _ => None,
        };
        hosts.push(PortHost {
            port: name.clone(),
            interface: p.interface.clone(),
            numa_node: sys.numa_node(&p.interface),
            vf,
        });
    }
    Ok((out, hosts, log))
}

/// What [`Sysfs::provision`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// The PF had this many VFs already.
    Already(u32),
    /// The count was changed.
    Changed {
        /// VFs before.
        from: u32,
        /// VFs now.
        to: u32,
    },
}

pub use crate::cpulist::parse_cpulist;

/// Where the workers should run and why: per worker, the NUMA node of the ports it polls (the
/// node of its first port that has one) and the CPU chosen on it, or a warning when the
/// placement crosses nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Per worker: its ports' node, if known.
    pub nodes: Vec<Option<u32>>,
    /// Per worker: the CPU to pin it to (`None`: leave it to the scheduler).
    pub cores: Vec<Option<u32>>,
    /// What crosses nodes, one line each.
    pub warnings: Vec<String>,
}

/// Places `workers` workers whose ports' interfaces are `ports_of[w]`: on a machine with more
/// than one NUMA node, each worker runs on a CPU of its ports' node, unless `configured`
/// (`switch.cores`) says otherwise, which is kept and warned about when it crosses nodes. On a
/// machine with one node (or none known) nothing is pinned that was not configured.
pub fn place(sys: &Sysfs, ports_of: &[Vec<String>], configured: &[u32]) -> Placement {
    let nodes: Vec<Option<u32>> =
        ports_of.iter().map(|ifs| ifs.iter().find_map(|i| sys.numa_node(i))).collect();
    let mut warnings = Vec::new();
    for (w, ifs) in ports_of.iter().enumerate() {
        let mut seen: Vec<(u32, &str)> =
            ifs.iter().filter_map(|i| Some((sys.numa_node(i)?, i.as_str()))).collect();
        seen.dedup_by_key(|(n, _)| *n);
        if seen.len() > 1 {
            let list: Vec<String> = seen.iter().map(|(n, i)| format!("{i} on node {n}")).collect();
            warnings.push(format!(
                "worker {w} polls ports on several NUMA nodes ({}): frames cross the \
                 interconnect on one side",
                list.join(", ")
            ));
        }
    }
    if !configured.is_empty() {
        let cores: Vec<Option<u32>> =
            (0..ports_of.len()).map(|w| configured.get(w).copied()).collect();
        for (w, (core, node)) in cores.iter().zip(&nodes).enumerate() {
            if let (Some(c), Some(n)) = (core, node)
                && let Some(cn) = sys.cpu_node(*c)
                && cn != *n
            {
                warnings.push(format!(
                    "worker {w} is pinned to CPU {c} on NUMA node {cn}, its ports are on node \
                     {n}: every frame crosses the interconnect (typically 20-40 % fewer \
                     packets per second and more latency); list CPUs of node {n} in \
                     switch.cores"
                ));
            }
        }
        return Placement { nodes, cores, warnings };
    }
    if sys.nodes().len() <= 1 {
        return Placement { cores: vec![None; ports_of.len()], nodes, warnings };
    }
    // Hand out each node's CPUs in order to the workers placed there.
    let mut next: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let cores = nodes
        .iter()
        .map(|n| {
            let n = (*n)?;
            let cpus = sys.node_cpus(n);
            let k = next.entry(n).or_default();
            let c = cpus.get(*k % cpus.len().max(1)).copied();
            *k += 1;
            c
        })
        .collect();
    Placement { nodes, cores, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpulist("0-3,8-11\n"), vec![0, 1, 2, 3, 8, 9, 10, 11]);
        assert_eq!(parse_cpulist("5"), vec![5]);
        assert_eq!(parse_cpulist(""), Vec::<u32>::new());
        assert_eq!(parse_cpulist("0,2-3"), vec![0, 2, 3]);
    }
}
