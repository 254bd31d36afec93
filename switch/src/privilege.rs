//! Least privilege (issue 24): the capabilities the switch keeps once it runs, and the
//! system-call filter of its workers. docs/SECURITY.md says what each one is for and what a
//! compromised worker could still do.
//!
//! Capabilities are per thread in Linux, and a thread inherits those of the thread that made
//! it: `serve` drops the process's to [`keep`] before it starts any thread, so every thread
//! (and a process started by `ctl upgrade`, whose root user gets the bounding set back at
//! `exec`) has at most those. Each worker then drops all of them and installs its filter before
//! its first breath.
//!
//! # Why by hand
//! The filter is a list of allowed calls compiled by `seccompiler` (rust-vmm, Firecracker's);
//! capabilities go through `rustix`. What is written here is the two lists.

use std::collections::BTreeMap;

use anyhow::Context;
use rustix::thread::{
    CapabilitySet, CapabilitySets, capabilities, capability_is_in_bounding_set,
    remove_capability_from_bounding_set, set_capabilities,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What the running switch keeps, measured by taking each away (docs/SECURITY.md): opening an
/// AF_XDP socket (`CAP_NET_RAW`), creating the XSKMAP and loading the XDP program (`CAP_BPF`,
/// and `CAP_NET_ADMIN` for a networking program and map), attaching it and quieting an
/// interface over netlink (`CAP_NET_ADMIN`), registering a frame area larger than
/// `RLIMIT_MEMLOCK` as a UMEM (`CAP_IPC_LOCK`). Ports come and go at runtime (reloads, an
/// interface that returns, a takeover's new process), so these stay for the main thread.
pub const RUNNING: CapabilitySet = CapabilitySet::NET_ADMIN
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::BPF)
    .union(CapabilitySet::IPC_LOCK);

/// What a switch with `metrics_listen` keeps: [`RUNNING`], and `CAP_NET_BIND_SERVICE` when the
/// metrics listener is on a port below 1024 (a takeover's new process binds it again).
pub fn keep(metrics_listen: Option<&str>) -> CapabilitySet {
    let low = metrics_listen
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| a.port() < 1024);
    if low { RUNNING.union(CapabilitySet::NET_BIND_SERVICE) } else { RUNNING }
}

/// Drops every capability of the calling thread but `keep`: from its bounding set first (what
/// threads it makes and programs it starts can ever have), then its effective and permitted
/// sets. Capabilities it does not have are left alone.
pub fn drop_to(keep: CapabilitySet) -> anyhow::Result<()> {
    for bit in 0..64 {
        let c = CapabilitySet::from_bits_retain(1 << bit);
        if !keep.contains(c) && capability_is_in_bounding_set(c).unwrap_or(false) {
            remove_capability_from_bounding_set(c)
                .with_context(|| format!("removing {c:?} from the bounding set"))?;
        }
    }
    let now = capabilities(None).context("reading the capabilities")?;
    set_capabilities(
        None,
        CapabilitySets {
            effective: now.effective & keep,
            permitted: now.permitted & keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .context("setting the capabilities")
}

/// The system calls of a worker's poll loop, and of what it does between breaths: waking the
/// kernel on its sockets (`sendto`, `recvfrom`), reading their statistics for the metrics
/// (`getsockopt`), the clock when the vDSO does not answer, sleeping when idle and yielding
/// while it drains, locks and channels (`futex`), the allocator (a reload installs new tables),
/// a log line (`write`), and its own end (a panic aborts through `tgkill`).
const WORKER_CALLS: &[i64] = &[
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_getsockopt,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The worker's filter: the calls above, anything else kills the process
/// (`SECCOMP_RET_KILL_PROCESS`; the kernel's audit log names the call: `type=1326 ...
/// syscall=N`, in `dmesg` or the journal).
pub fn worker_filter() -> anyhow::Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        WORKER_CALLS.iter().map(|&n| (n, Vec::new())).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp on {}: {e:?}", std::env::consts::ARCH))?;
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch)
        .map_err(|e| anyhow::anyhow!("the workers' seccomp filter: {e}"))?;
    filter.try_into().map_err(|e| anyhow::anyhow!("compiling the workers' seccomp filter: {e:?}"))
}

/// Confines the calling worker thread: no effective or permitted capability at all (its
/// bounding set stays the process's: removing from it takes `CAP_SETPCAP`, which the process
/// gave up, and with `no_new_privs` and no `execve` allowed it grants nothing), and `filter`
/// (with `no_new_privs`, which a filter needs).
pub fn confine_worker(filter: &BpfProgram) -> anyhow::Result<()> {
    let none = CapabilitySet::empty();
    let sets = CapabilitySets { effective: none, permitted: none, inheritable: none };
    set_capabilities(None, sets).context("dropping the worker's capabilities")?;
    seccompiler::apply_filter(filter).map_err(|e| anyhow::anyhow!("installing seccomp: {e}"))
}
