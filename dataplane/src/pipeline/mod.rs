//! The batch pipeline: one pure call per batch that decides, for every frame, where it goes.
//!
//! ```text
//! parse ─► tenant ─► ingress + guard ─┬─► classify (learn + FDB) ───────────────────┬─► output
//!                                     └─► flow cache ─miss─► learn + FDB + ACLs ─┬─┘  (retag,
//!                                          (tenants with policy  ─hit──────────────┘   flood,
//!                                           or flow logs)        then security group    TX lists)
//! ```
//!
//! [`Pipeline::process`] takes the time, the snapshot, the frame area and a batch, and writes
//! exactly one [`Disposition`] per frame. It makes no syscall, takes no lock, allocates nothing
//! and reads no clock: the worker passes all of that in, so a test drives it with a manual clock
//! over in-memory ports. [`output::deliver`] then carries the dispositions out.
//!
//! Each stage has a per-packet `*_one` function and runs as a loop over the batch (VPP style);
//! a frame dropped by one stage is skipped by the next.
#![forbid(unsafe_code)]

pub mod classify;
pub mod flow_cache;
pub mod fragment;
pub mod ingress;
pub mod output;
pub mod overlay;
pub mod parse;
pub mod police;
pub mod policy;
pub mod tenant;

use crate::batch::{BATCH_SIZE, Batch, PacketFlags};
use crate::flow::overlay::{NO_VTEP, OverlayMap, VtepId};
use crate::flow::{Fdb, FlowCache};
use crate::frame::{FrameArea, FramePool};
use crate::snapshot::{
    Attachment, CHECK_FLOW, CHECK_FLOWLOG, CHECK_GUARD, CHECK_POLICE, CHECK_POLICY, Snapshot,
};
use crate::time::Nanos;
use crate::trace::Counters;
use crate::trace::counters::{PktBytes, TenantRun};
use crate::trace::record::{BatchTrace, FlowPath, FrameTrace, Outcome};
use crate::vocab::{AttachmentId, DropReason, ParseError, PortId, TenantId};

pub use crate::vocab::Disposition;
pub use output::{Egress, TxLists};

use crate::wire::MacAddr;

/// Announcements one worker buffers between breaths (more are counted as lost).
const ANNOUNCE_CAPACITY: usize = 4 * BATCH_SIZE;

/// A MAC learned by this worker that the other workers must hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The tenant.
    pub tenant: TenantId,
    /// The source MAC.
    pub mac: MacAddr,
    /// Where it was seen.
    pub at: Attachment,
}

/// What decapsulation found for one frame: its tenant and attachment, or a drop.
type Decapped = Result<(TenantId, AttachmentId), DropReason>;

/// One disposition per frame of a batch.
#[derive(Debug, Clone)]
pub struct Dispositions {
    len: usize,
    d: [Disposition; BATCH_SIZE],
}

impl Default for Dispositions {
    fn default() -> Self {
        Dispositions { len: 0, d: [Disposition::Drop(DropReason::NoRoute); BATCH_SIZE] }
    }
}

impl Dispositions {
    /// The dispositions of the last processed batch.
    #[inline]
    pub fn as_slice(&self) -> &[Disposition] {
        &self.d[..self.len]
    }
}

/// One worker's switching state: its MAC table, flow cache, connections and counters.
#[derive(Debug)]
pub struct Pipeline {
    fdb: Fdb,
    /// The flow cache (decisions and per-flow counters of tenants with policy or flow logs).
    pub flows: FlowCache,
    /// The connection table.
    pub policy: policy::PolicyState,
    /// Fragments of tenants with policy, by datagram.
    pub frags: crate::policy::fragments::FragTable,
    frag_batch: Box<fragment::FragBatch>,
    /// Ingress policers, per tenant.
    pub police: police::Policers,
    /// Per port, how many workers receive and send on it (rates are divided among them).
    rate_shares: Vec<u64>,
    scratch: Box<flow_cache::Scratch>,
    /// What the stages recorded for each frame of the last recorded batch.
    records: Box<BatchTrace>,
    /// A live capture of one tenant, if one runs.
    pub capture: Option<crate::trace::capture::Tap>,
    /// A sampled live trace of one tenant, if one runs.
    pub sampler: Option<crate::trace::sample::Sampler>,
    /// This worker's counters (published by the control plane).
    pub counters: Counters,
    /// The cluster map: where the other hosts' MACs are (empty without a cluster).
    pub overlay: std::sync::Arc<OverlayMap>,
    /// Per frame of an underlay batch, its tenant and attachment by VNI, or why it is dropped.
    decapped: Box<[Decapped; BATCH_SIZE]>,
    /// Per frame of the batch, the other host the cluster map sends it to (when the MAC
    /// table's miss was answered by the map), so the output need not ask again.
    remote: [VtepId; BATCH_SIZE],
    /// Some entry of `remote` is set (reset before the next batch).
    remote_any: bool,
    generation: u64,
    /// Learned MACs to announce to other workers (capacity 0 when there are none).
    announcements: Vec<Announcement>,
    /// What each ACL rule counter counts: (tenant, direction, rule) names, in the order of
    /// `counters.acl_hits`, so a new snapshot carries each rule's count to its new place.
    acl_names: Vec<Vec<(String, crate::vocab::Direction, String)>>,
    /// Per port and per tenant id, the generation its holder took it in: an id whose holder
    /// changes across a snapshot change has its state reset.
    port_since: Vec<u64>,
    tenant_since: Vec<u64>,
}

impl Pipeline {
    /// A pipeline for `snap`.
    pub fn new(snap: &Snapshot) -> Self {
        let l = snap.limits;
        let mut flows = FlowCache::new(l.flow_cache_entries as usize, l.flow_cache_share_percent);
        flows.install(snap);
        let mut frags = crate::policy::fragments::FragTable::new(
            l.fragment_entries as usize,
            l.flow_cache_share_percent,
            l.fragment_timeout,
        );
        frags.install(snap.tenants.len());
        let mut p = Pipeline {
            fdb: Fdb::new(snap),
            flows,
            policy: policy::PolicyState::new(snap),
            frags,
            frag_batch: Box::default(),
            police: police::Policers::default(),
            rate_shares: Vec::new(),
            scratch: Box::default(),
            records: Box::default(),
            capture: None,
            sampler: None,
            counters: Counters::new(snap.ports.len(), snap.tenants.len()),
            overlay: std::sync::Arc::default(),
            decapped: Box::new([Err(DropReason::NotOverlay); BATCH_SIZE]),
            remote: [NO_VTEP; BATCH_SIZE],
            remote_any: false,
            generation: snap.generation,
            announcements: Vec::new(),
            acl_names: Vec::new(),
            port_since: snap.ports.iter().map(|p| p.since).collect(),
            tenant_since: snap.tenants.iter().map(|t| t.since).collect(),
        };
        p.size_rule_counters(snap);
        p.police.install(snap, &p.rate_shares, Nanos::ZERO);
        p
    }

    /// How many workers receive and send on each port: each enforces its part of the rates.
    pub fn share_rates(&mut self, snap: &Snapshot, workers_per_port: Vec<u64>) {
        self.rate_shares = workers_per_port;
        self.police.install(snap, &self.rate_shares, Nanos::ZERO);
    }

    /// Per port, how many workers the rates are divided among (empty: one).
    pub fn rate_shares(&self) -> &[u64] {
        &self.rate_shares
    }

    /// Makes this pipeline buffer what it learns for other workers ([`Pipeline::announcements`]).
    pub fn announce_to_peers(&mut self) {
        self.announcements = Vec::with_capacity(ANNOUNCE_CAPACITY);
        self.policy.conns.share_with_peers();
    }

    /// What was learned since the last call, for the other workers; the buffer is emptied.
    pub fn announcements(&mut self) -> std::vec::Drain<'_, Announcement> {
        self.announcements.drain(..)
    }

    /// Adopts a new cluster map (between batches): its MACs go into the MAC table behind the
    /// underlay ([`Fdb::set_remote`]). Returns the map it replaces.
    pub fn set_overlay(
        &mut self,
        snap: &Snapshot,
        map: std::sync::Arc<OverlayMap>,
    ) -> std::sync::Arc<OverlayMap> {
        self.fdb.set_remote(snap, &map);
        std::mem::replace(&mut self.overlay, map)
    }

    /// Applies what another worker learned.
    pub fn learn_remote(&mut self, now: Nanos, a: Announcement) {
        self.fdb.learn(now, a.tenant, a.mac, a.at);
        self.counters.fdb.remote += 1;
    }

    /// A MAC learned behind `at` in another process's table (a takeover), before the first
    /// batch: learned afresh now (its aging starts again).
    pub fn adopt_mac(&mut self, now: Nanos, t: TenantId, mac: MacAddr, at: Attachment) {
        self.fdb.learn(now, t, mac, at);
    }

    /// Adopts a new snapshot (between batches). Ids keep their state (see [`Snapshot`] on
    /// stable ids); an id that a reload emptied or gave to a new holder starts afresh: its
    /// counters at zero (when given again, so a removed port's or tenant's counts stay in the
    /// totals until then), its flow-cache entries flushed, its MAC entries and connections
    /// dropped (by name, in their tables' own `install`).
    pub fn install(&mut self, snap: &Snapshot) {
        if snap.generation == self.generation {
            return;
        }
        self.generation = snap.generation;
        self.counters.resize(snap.ports.len(), snap.tenants.len());
        for (i, p) in snap.ports.iter().enumerate() {
            if self.port_since.get(i).is_some_and(|&s| s != p.since) && !p.is_vacant() {
                self.counters.clear_port(PortId(i as u16));
            }
        }
        for (i, t) in snap.tenants.iter().enumerate() {
            let before = self.tenant_since.get(i).copied();
            if before.is_some_and(|s| s != t.since) {
                let id = TenantId(i as u16);
                if !t.is_vacant() {
                    self.counters.clear_tenant(id);
                }
                self.flows.forget_tenant(id);
            }
        }
        self.port_since = snap.ports.iter().map(|p| p.since).collect();
        self.tenant_since = snap.tenants.iter().map(|t| t.since).collect();
        self.fdb.install(snap);
        self.fdb.set_remote(snap, &self.overlay);
        self.flows.install(snap);
        self.policy.install(snap);
        self.frags.install(snap.tenants.len());
        self.police.install(snap, &self.rate_shares, Nanos::ZERO);
        self.size_rule_counters(snap);
    }

    /// One counter per ACL rule of each tenant. Rules change with the snapshot; a rule that
    /// stays (same tenant, direction and name) keeps its count wherever it moved, so its
    /// metric goes on counting; a new rule starts at zero. Between breaths (it allocates).
    fn size_rule_counters(&mut self, snap: &Snapshot) {
        let mut before: std::collections::HashMap<_, u64> = std::collections::HashMap::new();
        for (names, hits) in self.acl_names.iter().zip(&self.counters.acl_hits) {
            for (k, n) in names.iter().zip(hits) {
                before.insert(k.clone(), *n);
            }
        }
        self.acl_names = snap
            .tenants
            .iter()
            .map(|t| t.policy.rules().map(|(d, r)| (t.name.clone(), d, r.name.clone())).collect())
            .collect();
        self.counters.acl_hits = self
            .acl_names
            .iter()
            .map(|names| names.iter().map(|k| before.get(k).copied().unwrap_or(0)).collect())
            .collect();
    }

    /// The generation of the installed snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The MAC table.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Housekeeping between batches: ages the MAC table, expires idle connections.
    pub fn age(&mut self, now: Nanos) {
        let n = self.fdb.age(now);
        self.counters.fdb.aged += n as u64;
        if !self.policy.conns.is_empty() {
            self.policy.conns.expire(now);
        }
        self.frags.sweep(now);
    }

    /// Between breaths: reports the flows due a flow-log record (a slice of the flow cache per
    /// call; nothing when no tenant logs flows).
    #[inline]
    pub fn sweep_flows(&mut self, now: Nanos) {
        self.flows.sweep(now);
    }

    /// Decides the fate of every frame in `batch`. While a live trace samples a tenant, the
    /// batch is recorded ([`crate::trace::record`]): the choice is made once per batch, and
    /// the batches of a switch that traces nothing run a copy of the stages with no recording
    /// compiled in.
    pub fn process(
        &mut self,
        now: Nanos,
        snap: &Snapshot,
        area: &FrameArea,
        batch: &mut Batch,
        out: &mut Dispositions,
    ) {
        if self.sampler.as_ref().is_some_and(|s| !s.is_full()) {
            self.process_as::<true, false>(now, snap, area, batch, out);
        } else if snap.is_underlay(batch.port) {
            self.process_as::<false, false>(now, snap, area, batch, out);
        } else {
            self.process_plain(now, snap, area, batch, out);
        }
    }

    /// Runs `batch` through the stages with learning, caching, connection opening, policing
    /// and counting off, recording what each stage decides ([`Pipeline::traced`]): the
    /// decision trace of `ctl trace`. Nothing in the pipeline changes (its counters are set
    /// aside meanwhile); the frames stay in the batch. Between breaths (it allocates).
    pub fn process_dry(
        &mut self,
        now: Nanos,
        snap: &Snapshot,
        area: &FrameArea,
        batch: &mut Batch,
        out: &mut Dispositions,
    ) {
        let scratch = Counters::new(snap.ports.len(), snap.tenants.len());
        let counters = std::mem::replace(&mut self.counters, scratch);
        let (capture, sampler) = (self.capture.take(), self.sampler.take());
        self.process_as::<true, true>(now, snap, area, batch, out);
        self.counters = counters;
        (self.capture, self.sampler) = (capture, sampler);
    }

    /// A MAC for address `ip` of tenant `t` (to trace a frame towards it), and where it was
    /// found: the anti-spoofing config of an attachment that owns exactly that address and one
    /// MAC, or a flow the tenant's host sent from it (the flow cache of tenants with policy or
    /// flow logs). None: not known here.
    pub fn resolve_mac(
        &self,
        snap: &Snapshot,
        t: TenantId,
        ip: [u8; 16],
    ) -> Option<(MacAddr, String)> {
        let spec = snap.tenants.get(t.index())?;
        for (g, a) in spec.guards.iter().zip(&spec.attachments) {
            let exact = g.ips.iter().any(|pfx| pfx.len == 128 && pfx.contains(&ip));
            if exact && let [mac] = g.macs.as_slice() {
                let port = snap.ports.get(a.port.index()).map_or("?", |p| p.name.as_str());
                return Some((*mac, format!("anti-spoofing config of attachment {port}")));
            }
        }
        self.flows
            .source_mac(t, &ip)
            .map(|mac| (mac, "learned: a flow the host sent (flow cache)".to_string()))
    }

    /// What the stages recorded for frame `i` of the last recorded batch.
    pub fn traced(&self, i: usize) -> Option<&FrameTrace> {
        self.records.frame(i)
    }

    /// The stages over a batch. `REC`: each stage records its outcome per frame. `DRY`:
    /// nothing that outlives the batch changes (no learning, caching, connection, policer
    /// tokens, fragment state, counting or tapping; the caller sets the counters aside).
    /// The stages over a batch from a port that is not an underlay: [`Pipeline::process_as`]
    /// with the decapsulation's branches compiled out. PERF(overlay): they cost plain
    /// forwarding 16 instructions a frame (callgrind).
    #[inline(never)]
    fn process_plain(
        &mut self,
        now: Nanos,
        snap: &Snapshot,
        area: &FrameArea,
        batch: &mut Batch,
        out: &mut Dispositions,
    ) {
        self.process_stages::<false, false, false>(now, snap, area, batch, out);
    }

    /// [`Pipeline::process_stages`] for a batch from any port.
    fn process_as<const REC: bool, const DRY: bool>(
        &mut self,
        now: Nanos,
        snap: &Snapshot,
        area: &FrameArea,
        batch: &mut Batch,
        out: &mut Dispositions,
    ) {
        if snap.is_underlay(batch.port) {
            self.process_stages::<REC, DRY, true>(now, snap, area, batch, out);
        } else {
            self.process_stages::<REC, DRY, false>(now, snap, area, batch, out);
        }
    }

    /// The stages over a batch; `UNDERLAY`: the batch came from the underlay port (its frames
    /// are decapsulated first).
    #[inline(always)]
    fn process_stages<const REC: bool, const DRY: bool, const UNDERLAY: bool>(
        &mut self,
        now: Nanos,
        snap: &Snapshot,
        area: &FrameArea,
        batch: &mut Batch,
        out: &mut Dispositions,
    ) {
        debug_assert_eq!(snap.generation, self.generation, "install() the snapshot first");
        let underlay = UNDERLAY;
        // The outer headers' bytes, for the port's received bytes.
        let mut outer = 0u64;
        if let Some(u) = snap.underlay(batch.port).filter(|_| UNDERLAY) {
            // PERF(overlay): the outer and inner headers span two cache lines of each frame;
            // both are asked for a few frames ahead, as the flow cache does for its entries.
            const AHEAD: usize = 4;
            let frames = batch.frames_mut();
            for f in frames.iter().take(AHEAD) {
                overlay::prefetch_headers(area, f);
            }
            for i in 0..frames.len() {
                if let Some(next) = frames.get(i + AHEAD) {
                    overlay::prefetch_headers(area, next);
                }
                let (Some(f), Some(d)) = (frames.get_mut(i), self.decapped.get_mut(i)) else {
                    break;
                };
                *d = overlay::decap_one(area, snap, u, f).map(|(at, head, t, a)| {
                    let before = f.len();
                    f.set_head(at, head);
                    outer += u64::from(before - f.len());
                    (t, a)
                });
            }
        }
        parse::parse(area, batch);
        if self.remote_any {
            self.remote = [NO_VTEP; BATCH_SIZE];
            self.remote_any = false;
        }
        let port = batch.port;
        let (frames, meta) = batch.split_mut();
        out.len = frames.len();
        self.scratch.reset();
        let c = &mut self.counters;
        let rec = &mut self.records;
        // Records outcome `$o` of frame `$i` when the batch is recorded (else compiled out).
        macro_rules! note {
            ($i:expr, $o:expr) => {
                if REC && let Some(t) = rec.frame_mut($i) {
                    t.push($o);
                }
            };
        }
        let mut rx = PktBytes::default();
        let mut tenant_rx = TenantRun::default();
        let from_tenant = snap
            .ports
            .get(port.index())
            .is_some_and(|p| p.kind == crate::snapshot::PortKind::Tenant);
        for (i, ((f, m), d)) in frames.iter().zip(meta.iter_mut()).zip(out.d.iter_mut()).enumerate()
        {
            if REC && let Some(t) = rec.frame_mut(i) {
                t.begin(port);
            }
            rx.add(f.len());
            if underlay && let Err(r) = self.decapped[i] {
                note!(i, Outcome::Tenant(Err(r)));
                m.tenant = TenantId::NONE;
                *d = Disposition::Drop(r);
                continue;
            }
            if let Some(e) = m.parse_error {
                note!(i, Outcome::Parse(Err(e)));
                c.parse_errors[e.index()] += 1;
                *d = Disposition::Drop(DropReason::Malformed);
                // Counted against the tenant of its attachment where the tags were read.
                if e == ParseError::Ethernet
                    || e == ParseError::Vlan
                    || resolve(snap, port, &self.decapped[i], underlay, m).is_err()
                {
                    m.tenant = TenantId::NONE;
                }
                continue;
            }
            note!(i, Outcome::Parse(Ok(())));
            if let Err(r) = resolve(snap, port, &self.decapped[i], underlay, m) {
                note!(i, Outcome::Tenant(Err(r)));
                m.tenant = TenantId::NONE;
                *d = Disposition::Drop(r);
                continue;
            }
            note!(i, Outcome::Tenant(Ok(())));
            tenant_rx.add(&mut c.tenant_rx, m.tenant, f.len());
            if underlay && !DRY {
                c.overlay.decap.add(f.len());
            }
            let source = ingress::check_one(m);
            note!(i, Outcome::SourceMac(source));
            if let Err(r) = source {
                *d = Disposition::Drop(r);
                continue;
            }
            let checks = snap.checks(m.tenant);
            if checks & (CHECK_GUARD | CHECK_POLICY) != 0
                && let Err(r) = policy::check_one(snap, checks, m, area.frame(f).unwrap_or(&[]))
            {
                note!(i, Outcome::Guard(Err(r)));
                if let policy::Refusal::Malformed(e) = r {
                    c.parse_errors[e.index()] += 1;
                }
                *d = Disposition::Drop(r.reason());
                if !DRY && checks & CHECK_FLOWLOG != 0 {
                    // Counted in its flow's log record.
                    self.scratch.mark(&self.flows, i, m, f.len(), port, false);
                }
                continue;
            }
            note!(i, Outcome::Guard(Ok(policy::guarded(snap, m))));
            if checks & CHECK_POLICE != 0 && from_tenant {
                let before = if REC { self.police.bucket(m.tenant) } else { None };
                let wire = (f.len(), crate::tso::wire_packets(area, f, usize::from(m.l4_offset)));
                let admitted = if DRY {
                    self.police.would_admit(m.tenant, now, wire)
                } else {
                    self.police.admit(m.tenant, now, wire)
                };
                note!(i, Outcome::Police(before.map(|b| police::policed(b, now, admitted))));
                if !admitted {
                    *d = Disposition::Drop(DropReason::RateLimit);
                    if !DRY && checks & CHECK_FLOWLOG != 0 {
                        self.scratch.mark(&self.flows, i, m, f.len(), port, false);
                    }
                    continue;
                }
            } else {
                note!(i, Outcome::Police(None));
            }
            // A dry run's frames are whole datagrams (`ctl trace` builds them): the fragment
            // stage, which keeps state across frames, is not run for them.
            if !DRY && checks & CHECK_POLICY != 0 && m.flags.has(PacketFlags::FRAGMENT) {
                let admitted = fragment::admit(
                    &mut self.frags,
                    &mut self.frag_batch,
                    now,
                    i,
                    m,
                    area.frame(f).unwrap_or(&[]),
                );
                note!(i, Outcome::Fragment(admitted));
                if let Err(r) = admitted {
                    *d = Disposition::Drop(r);
                    if checks & CHECK_FLOWLOG != 0 {
                        self.scratch.mark(&self.flows, i, m, f.len(), port, false);
                    }
                    continue;
                }
            }
            if checks & CHECK_FLOW != 0 {
                // Decided by the flow-cache stage (which tells this frame from one dropped
                // above by its disposition: anything but a drop).
                *d = Disposition::Flood;
                let plain = checks & CHECK_POLICY == 0;
                self.scratch.mark(&self.flows, i, m, f.len(), port, plain);
                continue;
            }
            if !DRY {
                learn(&mut self.fdb, c, &mut self.announcements, now, port, m);
            }
            let (fwd, _, host) = classify::forward_host(&self.fdb, now, port, m);
            *d = fwd;
            if host != NO_VTEP {
                self.remote[i] = host;
                self.remote_any = true;
            }
            if *d == Disposition::Flood {
                let host = &mut self.remote[i];
                *d = classify::or_remote(snap, &self.overlay, port, m, *d, host);
                self.remote_any |= *host != NO_VTEP;
            }
            note!(i, Outcome::FlowCache(FlowPath::NotCached));
            note!(i, Outcome::Fdb(*d));
        }
        tenant_rx.flush(&mut c.tenant_rx);
        if self.scratch.any() {
            let out = &mut out.d[..frames.len()];
            flow_cache::run::<REC, DRY>(self, snap, now, port, area, frames, meta, out);
        }
        if self.frag_batch.any() {
            fragment::settle(&mut self.frags, &mut self.frag_batch, &mut out.d[..frames.len()]);
        }
        if REC {
            for (i, (m, d)) in meta.iter().zip(&out.d).enumerate() {
                if let Some(t) = self.records.frame_mut(i) {
                    t.meta = *m;
                    t.disposition = *d;
                }
            }
        }
        if !DRY
            && let Some(s) = &mut self.sampler
            && !s.is_full()
        {
            for (i, ((f, m), d)) in frames.iter().zip(meta.iter()).zip(&out.d).enumerate() {
                if m.tenant == s.tenant
                    && !matches!(
                        d,
                        Disposition::Drop(DropReason::Malformed | DropReason::UnknownTenant)
                    )
                    && let Some(t) = self.records.frame(i)
                {
                    s.offer(now, area.frame(f).unwrap_or(&[]), t);
                }
            }
        }
        if !DRY && let Some(tap) = &mut self.capture {
            let from_tenant = snap
                .ports
                .get(port.index())
                .is_some_and(|p| p.kind == crate::snapshot::PortKind::Tenant);
            use crate::trace::capture::verdict;
            // A port capture skips the other ports' batches whole.
            let this_port = tap.takes_port(port);
            let frames_and_fates = frames.iter().zip(meta.iter()).zip(&out.d[..frames.len()]);
            for ((f, m), d) in frames_and_fates.filter(|_| this_port) {
                // PERF(tracing): the tenant first, before the verdict is worked out.
                if !tap.takes_tenant(m.tenant) {
                    continue;
                }
                let code = match d {
                    Disposition::Tx { .. } => verdict::TX,
                    Disposition::Flood => verdict::FLOOD,
                    Disposition::Drop(r) => verdict::drop(*r),
                };
                if tap.takes_verdict(code) {
                    let (len, parts) = (f.len() as usize, area.segments(f));
                    tap.offer(now.0, port, m, from_tenant, len, parts, code);
                }
            }
            tap.publish();
        }
        let c = &mut self.counters;
        // Counted once per batch: every frame of a batch came in on one port.
        if let Some(pr) = c.port_rx.get_mut(port.index()) {
            pr.packets += rx.packets;
            pr.bytes += rx.bytes + outer;
        }
    }

    /// `process`, `deliver`, then the TX lists to `out`: the whole pipeline for one batch.
    #[allow(clippy::too_many_arguments)]
    pub fn run<E: Egress + ?Sized>(
        &mut self,
        now: Nanos,
        snap: &Snapshot,
        area: &mut FrameArea,
        pool: &mut FramePool,
        batch: &mut Batch,
        disp: &mut Dispositions,
        tx: &mut TxLists,
        out: &mut E,
    ) {
        self.process(now, snap, area, batch, disp);
        // The hosts the map gave, when it gave any in this batch.
        let map = (&*self.overlay, self.remote_any.then_some(&self.remote[..]));
        output::deliver(now, snap, map, area, pool, batch, disp, tx, &mut self.counters);
        tx.flush(out, &mut self.counters, area, pool, now);
    }
}

/// The tenant of a frame: by (port, outer VLAN), or on an underlay port by the VNI
/// decapsulation found (`decapped`), where a tagged inner frame belongs to no tenant (inner tags
/// are the tenant's payload only behind a tagged attachment, and the overlay's is untagged).
#[inline]
fn resolve(
    snap: &Snapshot,
    port: PortId,
    decapped: &Decapped,
    underlay: bool,
    m: &mut crate::batch::Meta,
) -> Result<(), DropReason> {
    if !underlay {
        return tenant::resolve_one(snap, port, m);
    }
    match *decapped {
        Ok((t, a)) if m.outer_vlan.is_none() => {
            m.tenant = t;
            m.attachment = a;
            Ok(())
        }
        Ok(_) => Err(DropReason::UnknownTenant),
        Err(r) => Err(r),
    }
}

/// Learns the source of `m` and buffers the announcement the other workers need.
#[inline]
fn learn(
    fdb: &mut Fdb,
    c: &mut Counters,
    announcements: &mut Vec<Announcement>,
    now: Nanos,
    port: PortId,
    m: &crate::batch::Meta,
) {
    let learned = classify::learn_one(fdb, &mut c.fdb, now, port, m);
    if learned.announce() && announcements.capacity() > 0 {
        announce(announcements, &mut c.fdb.unannounced, port, m);
    }
}

/// Buffers one announcement, or counts it lost when the buffer is full.
#[inline]
fn announce(buf: &mut Vec<Announcement>, lost: &mut u64, port: PortId, m: &crate::batch::Meta) {
    if buf.len() < buf.capacity() {
        let at = Attachment { port, vlan: m.outer_vlan };
        buf.push(Announcement { tenant: m.tenant, mac: m.src, at });
    } else {
        *lost += 1;
    }
}
