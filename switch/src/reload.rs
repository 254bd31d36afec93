//! Reloads: the config file read again and applied to the running switch by diff
//! (`control::diff`). Only the main thread applies one, since it holds the ports
//! ([`Fabric`]); SIGHUP reaches it directly, `xswitch ctl reload` through [`ask`]. One at a
//! time, so a reload never interleaves with another.
//!
//! A reload either applies as a whole or not at all. Everything that can fail is done before
//! anything is applied: the file is loaded and validated, compared with the running config
//! (what cannot change live is refused with the reason), compiled against the running snapshot
//! (ids stay with their ports and tenants), and the added ports' sockets are opened. Then, in
//! this order: the removed ports' programs are detached and their sockets closed by their
//! workers, every worker gets the new snapshot, the added ports' sockets go to their workers,
//! and once every worker has applied all of it the added ports' programs are attached.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use control::config::Config;
use control::diff::Diff;
use crossbeam_channel::Sender;
use serde_json::{Value, json};

use crate::control_api::Shared;
use crate::fabric::{Fabric, Opened};
use crate::flowlogs::Writer;

/// How long a reload waits for the workers to take the last one's commands.
const CATCH_UP: Duration = Duration::from_secs(5);

/// A reload asked of the main thread.
pub struct Request {
    /// Only say what it would do.
    pub dry_run: bool,
    /// For a dry run: another file to compare with the running config.
    pub file: Option<PathBuf>,
    /// Where the answer goes.
    pub reply: Sender<Result<Value, String>>,
}

/// From the control thread: has the main thread run the reload (or, `dry_run`, the dry run
/// of `file` or the switch's own) and waits for its answer.
pub fn ask(shared: &Shared, dry_run: bool, file: Option<PathBuf>) -> Result<Value, String> {
    if file.is_some() && !dry_run {
        return Err("\"file\" is for a dry run only: a reload reads the switch's own file".into());
    }
    let (reply, answer) = crossbeam_channel::bounded(1);
    shared
        .reloads_to
        .send(Request { dry_run, file, reply })
        .map_err(|_| "the switch is stopping".to_string())?;
    shared.wake_main();
    answer
        .recv_timeout(Duration::from_secs(25))
        .map_err(|_| "the reload did not finish within 25 s (see the switch's log)".to_string())?
}

/// What the main thread holds to apply reloads.
pub struct Live {
    /// The ports.
    pub fabric: Fabric,
    /// The flow-log writer.
    pub flowlog: Writer,
}

/// The new config of a reload: the file read again (or `file`), its VFs resolved; and the
/// ports' devices (interface, VF, NUMA node).
fn read(
    shared: &Shared,
    file: Option<&Path>,
) -> Result<(Config, Vec<control::sriov::PortHost>), String> {
    let path = match file.or(shared.path.as_deref()) {
        Some(p) => p,
        None => return Err("the demo runs its embedded config: there is no file to reload".into()),
    };
    let mut new = control::config::load(path).map_err(|e| format!("{e}"))?;
    // The frame size the switch chose at start holds until it restarts (the area is made).
    if new.switch.frame_size == 0 {
        let running = shared.running.lock().map_err(|_| "state lock poisoned")?;
        new.switch.frame_size = running.0.switch.frame_size;
    }
    // VF ports get their interfaces, as at start (nothing is provisioned now).
    crate::host::prepare(&new, control::sriov::Resolve::Look).map_err(|e| format!("{e:#}"))
}

/// The diff as the API gives it: the [`Diff`] and whether it would apply.
fn describe(d: &Diff, new: &Config, notes: &[String]) -> Value {
    json!({
        "ports": { "added": d.ports_added, "removed": d.ports_removed, "changed": d.ports_changed },
        "tenants": {
            "added": d.tenants_added,
            "removed": d.tenants_removed,
            "changed": d.tenants_changed,
            "untouched": d.untouched(new),
        },
        "refused": d.refused,
        "notes": notes,
        "applies": d.refused.is_empty(),
    })
}

/// The interfaces of added ports that do not exist yet (the port waits for them).
fn waiting(d: &Diff, new: &Config) -> Vec<String> {
    d.ports_added
        .iter()
        .filter_map(|n| {
            let i = &new.ports[n].interface;
            (!Path::new("/sys/class/net").join(i).exists()).then(|| {
                format!("port {n}: interface {i} does not exist yet; the port waits for it (down)")
            })
        })
        .collect()
}

/// Says what reloading `file` (default: the switch's own) would do, applying nothing.
pub fn dry_run(live: &Live, shared: &Shared, file: Option<&Path>) -> Result<Value, String> {
    let (new, _) = read(shared, file)?;
    let (old, snap) = shared.running.lock().map_err(|_| "state lock poisoned")?.clone();
    let mut d = control::diff::diff(&old, &new);
    if d.refused.is_empty() {
        if let Err(e) = control::compile_next(&new, Some(&snap), snap.generation + 1) {
            d.refused.push(e.to_string());
        }
        let queues: u32 = d.ports_added.iter().map(|n| new.ports[n].queues).sum();
        if let Err(e) = live.fabric.choose(queues, &[]) {
            d.refused.push(e);
        }
    }
    let mut v = describe(&d, &new, &waiting(&d, &new));
    v["generation"] = json!(snap.generation);
    Ok(v)
}

/// Reads the config file again and applies it live, or says why not (then nothing changed).
/// Records the outcome (counters, log, metrics).
pub fn reload(live: &mut Live, shared: &Shared) -> Result<Value, String> {
    let result = apply(live, shared);
    let mut st = shared.reloads.lock().unwrap_or_else(|p| p.into_inner());
    match &result {
        Ok(v) => {
            st.applied += 1;
            st.last_error = None;
            tracing::info!("reloaded {}: generation {}", shared.name(), v["generation"]);
        }
        Err(e) => {
            st.rejected += 1;
            st.last_error = Some(e.clone());
            tracing::warn!("reload rejected: {e}");
        }
    }
    result
}

fn apply(live: &mut Live, shared: &Shared) -> Result<Value, String> {
    let (new, hosts) = read(shared, None)?;
    let name = shared.name();
    let (old, before) = shared.running.lock().map_err(|_| "state lock poisoned")?.clone();
    let d = control::diff::diff(&old, &new);
    if !d.refused.is_empty() {
        return Err(format!("{name}: {}; nothing was applied", d.refused.join("; ")));
    }
    // The last reload's commands taken by every worker: no frame or message of theirs still
    // refers to an id this one may give to someone else.
    if !live.fabric.wait(CATCH_UP) {
        return Err("a worker has not taken the last reload yet; nothing was applied".into());
    }
    let generation = before.generation + 1;
    let mut snap =
        control::compile_next(&new, Some(&before), generation).map_err(|e| e.to_string())?;
    for (warn, l) in crate::netdev::fill_mtus(&mut snap, new.switch.frame_size) {
        if warn {
            tracing::warn!("{l}");
        } else {
            tracing::info!("{l}");
        }
    }
    // Added ports opened (not handed over yet): a failure here leaves everything as it was.
    let mut opened: Vec<Opened> = Vec::new();
    let mut later = Vec::new();
    for n in &d.ports_added {
        let pc = &new.ports[n];
        let id = snap.port_by_name(n).ok_or_else(|| format!("port {n}: not compiled"))?;
        let workers = live.fabric.choose(pc.queues, &opened)?;
        if pc.vhost_user.is_none() && !Path::new("/sys/class/net").join(&pc.interface).exists() {
            later.push((id, n, pc, workers));
            continue;
        }
        let o =
            live.fabric.open(id, n, &pc.interface, pc, &workers).map_err(|e| format!("{e:#}"))?;
        opened.push(o);
    }
    for l in live.fabric.cap_mtus(&mut snap, &opened) {
        tracing::warn!("{l}");
    }
    let snap = Arc::new(snap);
    // Applied from here on.
    live.flowlog.update(&new, &snap);
    for n in &d.ports_removed {
        live.fabric.remove(n);
        shared.set_port_down(n, false);
    }
    live.fabric.install(&snap);
    // The added ports' sockets, and every worker's new plan of who polls what (once).
    live.fabric.hand_over(opened, snap.ports.len());
    for (id, n, pc, workers) in later {
        tracing::warn!(
            "port {n}: interface {} does not exist yet; the port is down until it appears",
            pc.interface
        );
        live.fabric.wait_for(id, n, &pc.interface, pc, &workers);
        shared.set_port_down(n, true);
    }
    let notes = waiting(&d, &new);
    {
        let mut running = shared.running.lock().map_err(|_| "state lock poisoned")?;
        let old = std::mem::replace(&mut *running, (new.clone(), snap.clone()));
        shared.keep_previous(old.1);
    }
    if let Ok(mut p) = shared.placement.lock() {
        *p = live.fabric.placement();
    }
    // The added ports' devices, for `ctl ports` and the port series.
    if let Ok(mut h) = shared.host.lock() {
        h.ports = hosts;
    }
    // The added ports' programs once their workers hold the sockets (else by the next look
    // of `Fabric::check`).
    if live.fabric.wait(CATCH_UP) {
        for e in live.fabric.attach_pending(shared) {
            tracing::warn!("{e}");
        }
    } else {
        tracing::warn!("reload: the workers are slow to take generation {generation}");
    }
    let summary = describe(&d, &new, &notes);
    tracing::info!(
        "reload: ports added {:?}, removed {:?}, changed {:?}; tenants added {:?}, removed \
         {:?}, changed {:?}",
        d.ports_added,
        d.ports_removed,
        d.ports_changed.iter().map(|c| &c.name).collect::<Vec<_>>(),
        d.tenants_added,
        d.tenants_removed,
        d.tenants_changed.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    let mut v = summary;
    v["generation"] = json!(generation);
    Ok(v)
}

/// Serves one request from the control thread.
pub fn serve(live: &mut Live, shared: &Shared, req: Request) {
    let answer =
        if req.dry_run { dry_run(live, shared, req.file.as_deref()) } else { reload(live, shared) };
    let _ = req.reply.send(answer);
}
