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

/// Checks early, with a clear message, that the process can do what a switch does: root, or
/// (a process `ctl upgrade` started as `switch.user`) the capabilities of [`RUNNING`].
pub fn require_running_capabilities() -> anyhow::Result<()> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let now = capabilities(None).context("reading the capabilities")?;
    if now.effective.contains(RUNNING) {
        return Ok(());
    }
    anyhow::bail!(
        "xswitch needs root, or CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK, to open \
         AF_XDP sockets (it has {:?})",
        now.effective
    )
}

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

/// The uid and gid of local account `user` (and group `group`, else the user's own), from
/// `/etc/passwd` and `/etc/group` (accounts of a directory service are not looked up).
pub fn account(user: &str, group: Option<&str>) -> anyhow::Result<(u32, u32)> {
    let field = |file: &str, name: &str, col: usize| -> anyhow::Result<Option<u32>> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(col)?.parse().ok()).flatten()
        }))
    };
    let uid = field("/etc/passwd", user, 2)?
        .with_context(|| format!("switch.user: no local user {user:?} in /etc/passwd"))?;
    let gid = match group {
        Some(g) => field("/etc/group", g, 2)?
            .with_context(|| format!("switch.group: no local group {g:?} in /etc/group"))?,
        None => field("/etc/passwd", user, 3)?
            .with_context(|| format!("switch.user: {user:?} has no group in /etc/passwd"))?,
    };
    Ok((uid, gid))
}

/// Becomes `uid`:`gid` (no supplementary groups), keeping the permitted capabilities across
/// the change and making them effective again (the kernel clears the effective set). Only
/// before any other thread exists: the calls change the calling thread.
pub fn become_account(uid: u32, gid: u32) -> anyhow::Result<()> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{
        set_keep_capabilities, set_thread_groups, set_thread_res_gid, set_thread_res_uid,
    };
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    if rustix::process::getuid() == u && rustix::process::getgid() == g {
        return Ok(()); // started as it already (by `ctl upgrade`)
    }
    set_keep_capabilities(true).context("PR_SET_KEEPCAPS")?;
    set_thread_groups(&[]).context("dropping the supplementary groups")?;
    set_thread_res_gid(g, g, g).with_context(|| format!("becoming group {gid}"))?;
    set_thread_res_uid(u, u, u).with_context(|| format!("becoming user {uid}"))?;
    set_keep_capabilities(false).context("PR_SET_KEEPCAPS")?;
    let now = capabilities(None).context("reading the capabilities")?;
    set_capabilities(None, CapabilitySets { effective: now.permitted, ..now })
        .context("raising the kept capabilities")
}

/// For a switch that runs as another user than root: makes `keep` ambient, so that a program
/// it starts (`ctl upgrade`'s new process, not root, so it would get no capability at `exec`
/// otherwise) has them too.
pub fn keep_across_exec(keep: CapabilitySet) -> anyhow::Result<()> {
    use rustix::thread::configure_capability_in_ambient_set;
    let now = capabilities(None).context("reading the capabilities")?;
    set_capabilities(None, CapabilitySets { inheritable: keep, ..now })
        .context("making the kept capabilities inheritable")?;
    for bit in 0..64 {
        let c = CapabilitySet::from_bits_retain(1 << bit);
        if keep.contains(c) {
            configure_capability_in_ambient_set(c, true)
                .with_context(|| format!("making {c:?} ambient"))?;
        }
    }
    Ok(())
}

/// Calls no part of the switch makes, for any of its threads: loading kernel modules,
/// rebooting, mounting, entering or making namespaces, tracing or reading other processes,
/// the kernel's keyring, setting the clock or the host name, performance counters. A thread
/// that makes one kills the process. (Each worker adds its own, much narrower, allow-list.)
const NEVER_CALLS: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_quotactl,
    libc::SYS_fanotify_init,
    libc::SYS_pidfd_getfd,
];

/// The filter of every thread: [`NEVER_CALLS`] kill the process, anything else is allowed.
/// Installed on the thread that runs the switch before it starts any other (they inherit it);
/// it sets `no_new_privs`, which a process started by `ctl upgrade` inherits too (it needs
/// nothing beyond the capabilities it is given).
pub fn confine_process() -> anyhow::Result<()> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        NEVER_CALLS.iter().map(|&n| (n, Vec::new())).collect();
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::KillProcess, arch()?)
            .map_err(|e| anyhow::anyhow!("the switch's seccomp filter: {e}"))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e| anyhow::anyhow!("compiling the switch's seccomp filter: {e:?}"))?;
    seccompiler::apply_filter(&prog).map_err(|e| anyhow::anyhow!("installing seccomp: {e}"))
}

fn arch() -> anyhow::Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp on {}: {e:?}", std::env::consts::ARCH))
}

/// The system calls of a worker's poll loop, and of what it does between breaths: waking the
/// kernel on its sockets (`sendto`, `recvfrom`), reading their statistics for the metrics
/// (`getsockopt`), the clock when the vDSO does not answer, waiting when idle (`ppoll` on its
/// sockets and its doorbell, an eventfd it empties with `read`), sleeping and yielding
/// while it drains, locks and channels (`futex`), the allocator (a reload installs new tables),
/// a log line (`write`), and its own end (a panic aborts through `tgkill`).
const WORKER_CALLS: &[i64] = &[
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_getsockopt,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_ppoll,
    libc::SYS_read,
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
