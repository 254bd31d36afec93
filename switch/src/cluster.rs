//! The cluster map in etcd (docs/CLUSTER.md): this host registers its tunnel endpoint and the
//! MACs of its tenants' ports under a lease, watches what the other hosts register, and hands
//! the workers an [`OverlayMap`] built from it whenever it changes.
//!
//! One thread of its own runs a one-thread tokio runtime for `etcd-client` (gRPC). It never
//! touches the packet path: maps go to the main thread, which sends them to every worker as a
//! typed command ([`dataplane::worker::WorkerCmd::Overlay`]). When etcd is unreachable the
//! workers keep the last map; the agent says so (`ctl status`, `xswitch_cluster_connected`,
//! a log line), retries with backoff, and on reconnect keeps its lease if it is still alive and
//! resumes its watch after the last revision it saw (a full read when that was compacted).
//!
//! Keys, under the configured prefix (`/xswitch/v1`), all written with this host's lease:
//!
//! | key | value |
//! |---|---|
//! | `hosts/HOST` | `{"address": "192.168.0.1", "mac": "02:..", "udp_port": 4789}` |
//! | `vnis/VNI/hosts/HOST` | `{}`: HOST carries the tenant of VNI (head-end replication) |
//! | `vnis/VNI/macs/MAC` | `{"host": "HOST", "ips": ["10.0.0.1"]}`: MAC is behind HOST |
//!
//! A MAC claimed by two hosts is the newest claim's (the later put replaces the key); the move
//! is counted and logged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use control::config::model::{ClusterConfig, Config};
use dataplane::flow::overlay::{OverlayBuilder, OverlayMap, Vtep};
use dataplane::snapshot::Snapshot;
use dataplane::wire::MacAddr;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};

/// A host's tunnel endpoint, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// Its tunnel address.
    pub address: Ipv4Addr,
    /// Its MAC on the underlay.
    pub mac: String,
    /// Its VXLAN port.
    pub udp_port: u16,
}

/// A MAC's registration: the host it is behind and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacEntry {
    /// The host.
    pub host: String,
    /// Its addresses (for ARP and neighbour suppression).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// What this host registers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Local {
    /// This host's name.
    pub host: String,
    /// Its tunnel endpoint.
    pub endpoint: Option<HostEntry>,
    /// The VNIs it carries, each with the MACs (and their addresses) of its local ports.
    pub vnis: BTreeMap<u32, BTreeMap<String, Vec<IpAddr>>>,
}

impl Local {
    /// What `cfg` (compiled as `snap`) registers: the underlay's endpoint, and per tenant with
    /// a VNI the MACs its attachments own (anti-spoofing `macs`, with the attachment's single
    /// addresses) and its static MACs.
    pub fn of(cfg: &Config, snap: &Snapshot) -> Option<Local> {
        let c = cfg.cluster.as_ref()?;
        let endpoint = snap.ports.iter().find_map(|p| p.underlay).map(|u| HostEntry {
            address: Ipv4Addr::from(u.ip),
            mac: u.mac.to_string(),
            udp_port: u.udp_port,
        });
        let mut vnis = BTreeMap::new();
        for t in cfg.tenants.values() {
            let Some(vni) = t.vni else { continue };
            let macs: &mut BTreeMap<String, Vec<IpAddr>> = vnis.entry(vni).or_default();
            for a in &t.attach {
                let ips: Vec<IpAddr> = a.ips.iter().filter_map(|p| single_address(p)).collect();
                for m in &a.macs {
                    if let Ok(mac) = m.parse::<MacAddr>() {
                        macs.entry(mac.to_string()).or_default().extend(ips.iter().copied());
                    }
                }
            }
            for s in &t.static_macs {
                if let Ok(mac) = s.mac.parse::<MacAddr>() {
                    macs.entry(mac.to_string()).or_default();
                }
            }
        }
        Some(Local { host: host_name(c), endpoint, vnis })
    }

    /// The VNIs this host carries.
    pub fn carried(&self) -> BTreeSet<u32> {
        self.vnis.keys().copied().collect()
    }

    /// Every key this host writes, with its value.
    fn keys(&self, prefix: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(e) = &self.endpoint {
            let v = serde_json::to_string(e).unwrap_or_default();
            out.insert(format!("{prefix}/hosts/{}", self.host), v);
        }
        for (vni, macs) in &self.vnis {
            out.insert(format!("{prefix}/vnis/{vni}/hosts/{}", self.host), "{}".into());
            for (mac, ips) in macs {
                let e = MacEntry { host: self.host.clone(), ips: ips.clone() };
                let v = serde_json::to_string(&e).unwrap_or_default();
                out.insert(format!("{prefix}/vnis/{vni}/macs/{mac}"), v);
            }
        }
        out
    }
}

/// The address of a prefix that holds exactly one (`10.0.0.1`, `10.0.0.1/32`, `fd00::1/128`).
fn single_address(p: &str) -> Option<IpAddr> {
    let (a, len) = p.split_once('/').map_or((p, None), |(a, l)| (a, Some(l)));
    let ip: IpAddr = a.parse().ok()?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    (len.is_none() || len == Some(full)).then_some(ip)
}

/// This host's name in the cluster: the configured one, else the system's.
pub fn host_name(c: &ClusterConfig) -> String {
    c.host.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// The cluster as read from etcd: hosts, the VNIs each carries, the MACs behind each.
#[derive(Debug, Default, Clone)]
pub struct View {
    hosts: BTreeMap<String, HostEntry>,
    members: BTreeMap<u32, BTreeSet<String>>,
    macs: BTreeMap<(u32, String), MacEntry>,
    /// The store's revision this view is at (0: none read yet).
    pub revision: i64,
    /// MACs that moved from one host to another.
    pub moves: u64,
}

impl View {
    /// Applies a put (`value` Some) or a delete of `key` (under `prefix`). Keys it does not
    /// know and values it cannot read are skipped (and logged).
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/')) else {
            return;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let parsed = match (parts.as_slice(), value) {
            (["hosts", h], Some(v)) => serde_json::from_slice(v).map(|e| {
                self.hosts.insert((*h).to_string(), e);
            }),
            (["hosts", h], None) => {
                self.hosts.remove(*h);
                Ok(())
            }
            (["vnis", vni, "hosts", h], v) => {
                let Ok(vni) = vni.parse::<u32>() else { return };
                let m = self.members.entry(vni).or_default();
                if v.is_some() {
                    m.insert((*h).to_string());
                } else {
                    m.remove(*h);
                }
                Ok(())
            }
            (["vnis", vni, "macs", mac], Some(v)) => {
                let Ok(vni) = vni.parse::<u32>() else { return };
                serde_json::from_slice::<MacEntry>(v).map(|e| {
                    let k = (vni, mac.to_string());
                    if let Some(old) = self.macs.get(&k)
                        && old.host != e.host
                    {
                        self.moves += 1;
                        tracing::info!(
                            "cluster: MAC {mac} of VNI {vni} moved from host {} to host {}",
                            old.host,
                            e.host
                        );
                    }
                    self.macs.insert(k, e);
                })
            }
            (["vnis", vni, "macs", mac], None) => {
                let Ok(vni) = vni.parse::<u32>() else { return };
                self.macs.remove(&(vni, mac.to_string()));
                Ok(())
            }
            _ => return,
        };
        if let Err(e) = parsed {
            tracing::warn!("cluster: key {key}: unreadable value ({e}); skipped");
        }
    }

    /// The map for the workers of host `me`, which carries `carried` VNIs: every other host
    /// that carries one of them, and the MACs behind those hosts. A host or MAC whose host has
    /// no endpoint registered (yet) is left out.
    pub fn map(&self, me: &str, carried: &BTreeSet<u32>) -> OverlayMap {
        let mut b = OverlayBuilder::new(self.revision.max(0) as u64);
        let vtep = |h: &str| -> Option<Vtep> {
            let e = self.hosts.get(h)?;
            Some(Vtep { ip: e.address.octets(), mac: e.mac.parse().ok()? })
        };
        for vni in carried {
            for h in self.members.get(vni).into_iter().flatten().filter(|h| *h != me) {
                if let Some(v) = vtep(h) {
                    b.member(*vni, v);
                }
            }
        }
        for ((vni, mac), e) in &self.macs {
            if e.host == me || !carried.contains(vni) {
                continue;
            }
            let (Some(v), Ok(mac)) = (vtep(&e.host), mac.parse::<MacAddr>()) else { continue };
            let ips: Vec<[u8; 16]> = e
                .ips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                })
                .collect();
            b.mac(*vni, mac, v, &ips);
        }
        b.build()
    }

    /// Hosts and MACs known (all VNIs).
    pub fn sizes(&self) -> (usize, usize) {
        (self.hosts.len(), self.macs.len())
    }
}

/// A [`View`] as a takeover hands it to the new process (JSON has no tuple keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewState {
    /// The store's revision the view is at.
    pub revision: i64,
    /// Hosts and their endpoints.
    pub hosts: Vec<(String, HostEntry)>,
    /// VNI → the hosts that carry it.
    pub members: Vec<(u32, Vec<String>)>,
    /// (VNI, MAC) → its registration.
    pub macs: Vec<(u32, String, MacEntry)>,
    /// MACs that moved between hosts.
    pub moves: u64,
}

impl View {
    /// The view for a takeover.
    pub fn state(&self) -> ViewState {
        ViewState {
            revision: self.revision,
            hosts: self.hosts.iter().map(|(h, e)| (h.clone(), e.clone())).collect(),
            members: self
                .members
                .iter()
                .map(|(v, hs)| (*v, hs.iter().cloned().collect()))
                .collect(),
            macs: self.macs.iter().map(|((v, m), e)| (*v, m.clone(), e.clone())).collect(),
            moves: self.moves,
        }
    }

    /// The view a takeover handed over.
    pub fn from_state(s: ViewState) -> View {
        View {
            hosts: s.hosts.into_iter().collect(),
            members: s.members.into_iter().map(|(v, hs)| (v, hs.into_iter().collect())).collect(),
            macs: s.macs.into_iter().map(|(v, m, e)| ((v, m), e)).collect(),
            revision: s.revision,
            moves: s.moves,
        }
    }
}

/// What the agent says about itself (`ctl status`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// This host's name.
    pub host: String,
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
    /// True while the agent is connected and watching.
    pub connected: bool,
    /// Seconds since the connection was lost (while it is).
    pub down_secs: Option<u64>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// The revision of the map the workers have.
    pub revision: i64,
    /// Hosts registered (this one too).
    pub hosts: usize,
    /// MACs registered (all hosts, all VNIs).
    pub macs: usize,
    /// MACs that moved between hosts.
    pub moves: u64,
    /// Times the connection was lost.
    pub outages: u64,
}

/// The running agent.
pub struct Agent {
    /// New maps for the workers, newest last.
    pub maps: crossbeam_channel::Receiver<Arc<OverlayMap>>,
    /// Its status.
    pub status: Arc<Mutex<Status>>,
    local: tokio::sync::watch::Sender<Local>,
    stop: Arc<AtomicBool>,
    revoke: Arc<AtomicBool>,
    /// The view of the last map published, for a takeover.
    last: Arc<Mutex<View>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent of `c` for this host's `local` entries; after a takeover, from the view
    /// the old process handed over (`handed`): its watch resumes after that view's revision,
    /// so no change made meanwhile is missed and nothing is read twice.
    pub fn start(c: &ClusterConfig, local: Local, handed: Option<View>) -> anyhow::Result<Agent> {
        let (maps_tx, maps) = crossbeam_channel::unbounded();
        let (local_tx, local_rx) = tokio::sync::watch::channel(local.clone());
        let status = Arc::new(Mutex::new(Status {
            host: local.host.clone(),
            endpoints: c.etcd.clone(),
            ..Status::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let revoke = Arc::new(AtomicBool::new(true));
        let conf = Conf {
            endpoints: c.etcd.clone(),
            prefix: c.prefix.clone(),
            ttl: i64::from(c.lease_ttl_secs),
        };
        let last = Arc::new(Mutex::new(handed.clone().unwrap_or_default()));
        let (st, sp, rv, ls) = (status.clone(), stop.clone(), revoke.clone(), last.clone());
        let thread = std::thread::Builder::new()
            .name("xs-cluster".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cluster: no runtime: {e}");
                        return;
                    }
                };
                let mut agent =
                    Task { conf, status: st, stop: sp, revoke: rv, maps: maps_tx, last: ls };
                rt.block_on(agent.run(local_rx, handed.unwrap_or_default()));
            })
            .context("starting the cluster thread")?;
        Ok(Agent { maps, status, local: local_tx, stop, revoke, last, thread: Some(thread) })
    }

    /// This host's entries changed (a reload): registered anew, what is gone removed.
    pub fn update(&self, local: Local) {
        self.local.send_if_modified(|l| {
            let changed = *l != local;
            *l = local;
            changed
        });
    }

    /// Stops the agent. `revoke`: its lease is revoked, so the other hosts forget this one at
    /// once (a stop); otherwise its entries live on for the lease's TTL (a takeover, whose new
    /// process registers them again).
    /// Returns the view of the last map it published (a takeover hands it over).
    pub fn stop(mut self, revoke: bool) -> ViewState {
        self.revoke.store(revoke, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.last.lock().map(|v| v.state()).unwrap_or_default()
    }
}

struct Conf {
    endpoints: Vec<String>,
    prefix: String,
    ttl: i64,
}

/// The agent's side on its thread.
struct Task {
    conf: Conf,
    status: Arc<Mutex<Status>>,
    stop: Arc<AtomicBool>,
    revoke: Arc<AtomicBool>,
    maps: crossbeam_channel::Sender<Arc<OverlayMap>>,
    last: Arc<Mutex<View>>,
}

/// How often the agent looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

impl Task {
    async fn run(&mut self, mut local: tokio::sync::watch::Receiver<Local>, mut view: View) {
        if view.revision > 0 {
            // Handed over: the workers have its map already; the status says what it holds.
            self.publish(&view, &local.borrow().clone());
        }
        let mut lease: Option<i64> = None;
        let mut written: BTreeMap<String, String> = BTreeMap::new();
        let mut backoff = Duration::from_millis(250);
        let mut down_since: Option<Instant> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let r = self.session(&mut view, &mut lease, &mut written, &mut local, &mut down_since);
            match r.await {
                Ok(()) => return,
                Err(e) => {
                    let first = down_since.is_none();
                    let since = *down_since.get_or_insert_with(Instant::now);
                    let msg = format!("{e:#}");
                    if first {
                        tracing::warn!(
                            "cluster: etcd unreachable ({msg}); forwarding on the map of \
                             revision {}; retrying",
                            view.revision
                        );
                    }
                    self.set(|s| {
                        if s.connected {
                            s.outages += 1;
                        }
                        s.connected = false;
                        s.down_secs = Some(since.elapsed().as_secs());
                        s.last_error = Some(msg);
                    });
                    metrics::gauge!("xswitch_cluster_connected").set(0.0);
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(STOP_CHECK).await;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Sends the workers the map of `view` for `local`.
    fn publish(&self, view: &View, local: &Local) {
        let map = view.map(&local.host, &local.carried());
        let (remote_macs, _, _) = map.sizes();
        let _ = self.maps.send(Arc::new(map));
        if let Ok(mut l) = self.last.lock() {
            l.clone_from(view);
        }
        let (hosts, macs) = view.sizes();
        self.set(|s| {
            s.revision = view.revision;
            s.hosts = hosts;
            s.macs = macs;
            s.moves = view.moves;
        });
        metrics::gauge!("xswitch_cluster_remote_macs").set(remote_macs as f64);
        metrics::gauge!("xswitch_cluster_revision").set(view.revision as f64);
        metrics::counter!("xswitch_cluster_mac_moves_total").absolute(view.moves);
    }

    /// One connection: lease, registration, a full read or a resumed watch, then events until
    /// stopped (Ok) or the connection fails (Err).
    async fn session(
        &mut self,
        view: &mut View,
        lease: &mut Option<i64>,
        written: &mut BTreeMap<String, String>,
        local: &mut tokio::sync::watch::Receiver<Local>,
        down_since: &mut Option<Instant>,
    ) -> anyhow::Result<()> {
        let c = &self.conf;
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT);
        let mut client =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&c.endpoints, Some(opts)))
                .await
                .map_err(|_| anyhow!("connecting timed out"))??;
        // The lease of before an outage shorter than its TTL lives on: the other hosts never
        // saw this one leave.
        let alive = match *lease {
            Some(id) => client.lease_time_to_live(id, None).await.is_ok_and(|r| r.ttl() > 0),
            None => false,
        };
        let id = if alive {
            lease.unwrap_or_default()
        } else {
            let id = client.lease_grant(c.ttl, None).await.context("granting a lease")?.id();
            written.clear();
            id
        };
        *lease = Some(id);
        let mine = local.borrow_and_update().clone();
        register(&mut client, &c.prefix, id, &mine, written).await?;
        // A full read at first and when the watch's revision was compacted; else the watch
        // resumes after the last revision seen.
        if view.revision == 0 {
            let r = client
                .get(c.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .context("reading the map")?;
            let mut fresh = View { moves: view.moves, ..View::default() };
            for kv in r.kvs() {
                fresh.apply(&c.prefix, kv.key_str().unwrap_or(""), Some(kv.value()));
            }
            fresh.revision = r.header().map_or(0, |h| h.revision());
            *view = fresh;
        }
        let opts = WatchOptions::new().with_prefix().with_start_revision(view.revision + 1);
        let mut watch = client.watch(c.prefix.as_str(), Some(opts)).await.context("watching")?;
        let (mut keeper, mut beats) = client.lease_keep_alive(id).await.context("keep-alive")?;
        self.publish(view, &mine);
        if let Some(t) = down_since.take() {
            tracing::info!(
                "cluster: etcd reachable again after {:.1} s; at revision {}",
                t.elapsed().as_secs_f64(),
                view.revision
            );
        } else {
            tracing::info!(
                "cluster: connected to etcd as host {}, revision {}",
                mine.host,
                view.revision
            );
        }
        self.set(|s| {
            s.connected = true;
            s.down_secs = None;
        });
        metrics::gauge!("xswitch_cluster_connected").set(1.0);
        let mut beat = tokio::time::interval(Duration::from_secs((c.ttl as u64 / 3).max(1)));
        let mut check = tokio::time::interval(STOP_CHECK);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    keeper.keep_alive().await.context("keep-alive")?;
                    let r = tokio::time::timeout(REQUEST_TIMEOUT, beats.message())
                        .await
                        .map_err(|_| anyhow!("keep-alive timed out"))??;
                    if r.is_none_or(|r| r.ttl() <= 0) {
                        *lease = None;
                        bail!("lease {id:x} expired");
                    }
                }
                m = watch.message() => {
                    let Some(r) = m.context("watch")? else { bail!("the watch ended") };
                    if r.canceled() || r.compact_revision() > 0 {
                        // Resumed past what etcd keeps: read everything again.
                        view.revision = 0;
                        bail!("watch canceled at compacted revision {}", r.compact_revision());
                    }
                    for ev in r.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = kv.key_str().unwrap_or("");
                        match ev.event_type() {
                            EventType::Put => view.apply(&c.prefix, key, Some(kv.value())),
                            EventType::Delete => view.apply(&c.prefix, key, None),
                        }
                    }
                    if let Some(h) = r.header() {
                        view.revision = view.revision.max(h.revision());
                    }
                    if !r.events().is_empty() {
                        self.publish(view, &local.borrow().clone());
                    }
                }
                ch = local.changed() => {
                    if ch.is_err() {
                        return Ok(()); // the agent's handle is gone
                    }
                    let mine = local.borrow_and_update().clone();
                    register(&mut client, &c.prefix, id, &mine, written).await?;
                    self.publish(view, &mine);
                }
                _ = check.tick() => {
                    if self.stop.load(Ordering::SeqCst) {
                        if self.revoke.load(Ordering::SeqCst) {
                            match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(id)).await {
                                Ok(Ok(_)) => tracing::info!("cluster: lease revoked: the other hosts forget this one now"),
                                Ok(Err(e)) => tracing::warn!("cluster: revoking the lease: {e}; the other hosts forget this one when it expires"),
                                Err(_) => tracing::warn!("cluster: revoking the lease timed out; the other hosts forget this one when it expires"),
                            }
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Writes this host's keys under lease `id`, and deletes those it wrote before that it no
/// longer has. `written` is what etcd holds of this host's (under the live lease).
async fn register(
    client: &mut Client,
    prefix: &str,
    id: i64,
    local: &Local,
    written: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let want = local.keys(prefix);
    for (k, v) in &want {
        if written.get(k) != Some(v) {
            client
                .put(k.as_str(), v.as_str(), Some(PutOptions::new().with_lease(id)))
                .await
                .with_context(|| format!("writing {k}"))?;
            written.insert(k.clone(), v.clone());
        }
    }
    let gone: Vec<String> = written.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    for k in gone {
        client.delete(k.as_str(), None).await.with_context(|| format!("deleting {k}"))?;
        written.remove(&k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/xswitch/v1";

    fn host(view: &mut View, name: &str, ip: [u8; 4], mac: &str) {
        let e = HostEntry { address: Ipv4Addr::from(ip), mac: mac.into(), udp_port: 4789 };
        view.apply(P, &format!("{P}/hosts/{name}"), Some(&serde_json::to_vec(&e).unwrap()));
    }

    fn claim(view: &mut View, vni: u32, mac: &str, host: &str) {
        let e = MacEntry { host: host.into(), ips: vec!["10.0.0.9".parse().unwrap()] };
        view.apply(
            P,
            &format!("{P}/vnis/{vni}/macs/{mac}"),
            Some(&serde_json::to_vec(&e).unwrap()),
        );
    }

    #[test]
    fn the_map_holds_the_other_hosts_of_the_carried_vnis() {
        let mut v = View::default();
        host(&mut v, "a", [192, 168, 0, 1], "02:00:00:00:00:0a");
        host(&mut v, "b", [192, 168, 0, 2], "02:00:00:00:00:0b");
        for (vni, h) in [(100, "a"), (100, "b"), (200, "b")] {
            v.apply(P, &format!("{P}/vnis/{vni}/hosts/{h}"), Some(b"{}"));
        }
        claim(&mut v, 100, "02:00:00:00:01:01", "a");
        claim(&mut v, 100, "02:00:00:00:02:02", "b");
        claim(&mut v, 200, "02:00:00:00:02:03", "b");
        claim(&mut v, 100, "02:00:00:00:03:03", "ghost"); // no endpoint: left out
        let carried: BTreeSet<u32> = [100].into();
        let m = v.map("a", &carried);
        assert_eq!(m.sizes().0, 1, "b's MAC of VNI 100 only: {m:?}");
        let b = m.host_of(100, "02:00:00:00:02:02".parse().unwrap()).unwrap();
        assert_eq!(b.ip, [192, 168, 0, 2]);
        assert_eq!(m.members(100).len(), 1);
        assert!(m.members(200).is_empty(), "VNI 200 is not carried here");
        let ip = Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().octets();
        assert!(m.mac_of(100, &ip).is_some());
        // b leaves: its lease expired, its keys deleted.
        v.apply(P, &format!("{P}/hosts/b"), None);
        assert_eq!(v.map("a", &carried).sizes(), (0, 0, 0));
    }

    #[test]
    fn a_mac_claimed_by_another_host_moves_and_is_counted() {
        let mut v = View::default();
        claim(&mut v, 100, "02:00:00:00:01:01", "a");
        claim(&mut v, 100, "02:00:00:00:01:01", "a");
        assert_eq!(v.moves, 0);
        claim(&mut v, 100, "02:00:00:00:01:01", "b");
        assert_eq!(v.moves, 1);
        v.apply(P, &format!("{P}/vnis/100/macs/02:00:00:00:01:01"), Some(b"not json"));
        assert_eq!(v.macs.len(), 1, "an unreadable value changes nothing");
        v.apply(P, "/other/prefix/hosts/x", Some(b"{}"));
        assert!(v.hosts.is_empty());
    }

    #[test]
    fn a_view_handed_over_in_json_gives_the_same_map_and_revision() {
        let mut v = View::default();
        host(&mut v, "a", [192, 168, 0, 1], "02:00:00:00:00:0a");
        host(&mut v, "b", [192, 168, 0, 2], "02:00:00:00:00:0b");
        for (vni, h) in [(100, "a"), (100, "b")] {
            v.apply(P, &format!("{P}/vnis/{vni}/hosts/{h}"), Some(b"{}"));
        }
        claim(&mut v, 100, "02:00:00:00:02:02", "b");
        claim(&mut v, 100, "02:00:00:00:02:02", "a");
        claim(&mut v, 100, "02:00:00:00:02:02", "b");
        v.revision = 42;
        let json = serde_json::to_string(&v.state()).unwrap();
        let w = View::from_state(serde_json::from_str(&json).unwrap());
        assert_eq!((w.revision, w.moves), (42, 2));
        let carried: BTreeSet<u32> = [100].into();
        let (m, n) = (v.map("a", &carried), w.map("a", &carried));
        assert_eq!(m.sizes(), n.sizes());
        assert_eq!(n.sizes(), (1, 1, 1));
        let mac = "02:00:00:00:02:02".parse().unwrap();
        assert_eq!(m.host_of(100, mac), n.host_of(100, mac));
        assert_eq!(w.sizes(), v.sizes());
    }

    #[test]
    fn single_addresses_only_are_registered() {
        assert_eq!(single_address("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(single_address("10.0.0.1/32"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(single_address("10.0.0.0/24"), None);
        assert_eq!(single_address("fd00::1/128"), Some("fd00::1".parse().unwrap()));
    }
}
