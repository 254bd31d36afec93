//! Stateful security groups: allow rules per direction, and a connection table per worker so
//! that the return traffic of an allowed connection passes without a rule.
//!
//! A packet of a known connection passes (and moves its TCP state along). A packet that would
//! open a connection passes only if, for every direction it crosses (see [`super`]), some rule
//! of the group allows it; then an entry is created, unless the tenant's quota or the table is
//! full (dropped as `conntrack_full`: one tenant flooding new connections cannot push out
//! another's entries). TCP opens only with a SYN; any other TCP packet of no known connection
//! is dropped.
//!
//! SYN floods: half-open TCP connections (a SYN seen, the handshake not complete) are bounded
//! per tenant (`max_half_open`) and per originating address (`max_half_open_per_source`). A
//! SYN beyond a bound, or one that finds the tenant's quota full, evicts the oldest half-open
//! entry (of that source, for the per-source bound; of the tenant otherwise) instead of being
//! refused, as a SYN cache does: a flood from one member cannot lock the others out, and a
//! flood from many sources only shortens how long a handshake may take. An established
//! connection is never evicted: with every entry established, a new one is `conntrack_full`.
//! Each tenant keeps its half-open entries in opening order in a ring sized to its bound
//! (allocated when the snapshot is installed), so finding the oldest costs no search.
//!
//! Connections are keyed by (tenant, protocol, the two endpoints in a fixed order), so both
//! directions find the same entry. ICMP echo is tracked by its identifier; other ICMP messages
//! are judged one by one against the rules.
//!
//! Several workers: each keeps its own table. A worker that opens a connection also puts it in
//! an outbox ([`ConnTable::share_with_peers`]); the worker sends it to the others between
//! breaths, before it kicks the sockets, and they [`ConnTable::apply`] it. So the return
//! traffic passes whichever worker's queue it arrives on. The opening packet leaves in the same
//! breath as its announcement, and an answer needs at least a round trip through the peer's
//! stack, so the announcement is normally there first; if an answer ever overtook it, it
//! would be dropped like unsolicited traffic and the peer's retransmission would pass. Later
//! state changes (FIN, RST) are not announced: each worker moves its copy along with the
//! packets it sees, and a copy that sees none of the connection's packets times out.
//!
//! It does _not_ track TCP sequence numbers or reassemble fragments: a non-first fragment
//! (no ports) of a tenant with a group is dropped as `policy`.

use std::collections::HashMap;

use super::{Direction, Prefix};
use crate::batch::{Meta, PacketFlags};
use crate::time::Nanos;
use crate::vocab::TenantId;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// One allow rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SgRule {
    /// Name for traces.
    pub name: String,
    /// Which traffic it opens: from the tenant (egress) or to it (ingress).
    pub dir: Option<Direction>,
    /// IPv4 or IPv6 only (`None`: both).
    pub ethertype: Option<u16>,
    /// IP protocol (`None`: any).
    pub proto: Option<u8>,
    /// Destination port range of the opening packet (TCP, UDP); ICMP type for ICMP.
    pub ports: Option<(u16, u16)>,
    /// The other end: source prefix for to-tenant rules, destination for from-tenant ones.
    pub remote: Option<Prefix>,
}

impl SgRule {
    /// True when this rule opens a connection whose first packet is `m`, crossing `dir`.
    pub fn allows(&self, dir: Direction, m: &Meta) -> bool {
        let k = &m.key;
        self.dir.is_none_or(|d| d == dir)
            && self.ethertype.is_none_or(|e| e == k.ethertype)
            && self.proto.is_none_or(|p| p == k.proto)
            && self.ports.is_none_or(|(lo, hi)| {
                let p = if matches!(k.proto, ICMP | ICMPV6) { k.src_port } else { k.dst_port };
                (lo..=hi).contains(&p)
            })
            && self.remote.is_none_or(|r| {
                r.contains(if dir == Direction::ToTenant { &k.src_ip } else { &k.dst_ip })
            })
    }
}

/// Idle timeouts by protocol and TCP phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP before the handshake completes.
    pub tcp_handshake: Nanos,
    /// TCP established.
    pub tcp_established: Nanos,
    /// TCP after a FIN or RST.
    pub tcp_closing: Nanos,
    /// UDP.
    pub udp: Nanos,
    /// ICMP echo.
    pub icmp: Nanos,
    /// Any other protocol.
    pub other: Nanos,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_handshake: Nanos::from_secs(30),
            tcp_established: Nanos::from_secs(3600),
            tcp_closing: Nanos::from_secs(30),
            udp: Nanos::from_secs(60),
            icmp: Nanos::from_secs(30),
            other: Nanos::from_secs(60),
        }
    }
}

/// A tenant's security group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityGroup {
    /// Allow rules.
    pub rules: Vec<SgRule>,
    /// Most tracked connections of this tenant at once.
    pub quota: u32,
    /// Most half-open TCP connections of this tenant at once (0: half the quota).
    pub max_half_open: u32,
    /// Most half-open TCP connections from one address at once (0: a quarter of
    /// `max_half_open`, at least 16).
    pub max_half_open_per_source: u32,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

impl SecurityGroup {
    /// The bound on half-open connections: (per tenant, per source address).
    pub fn half_open_limits(&self) -> (u32, u32) {
        let tenant = match self.max_half_open {
            0 => (self.quota / 2).max(1),
            n => n.min(self.quota),
        };
        let source = match self.max_half_open_per_source {
            0 => (tenant / 4).max(16).min(tenant),
            n => n.min(tenant),
        };
        (tenant, source)
    }

    /// The first rule that opens `m` in `dir`.
    pub fn rule_for(&self, dir: Direction, m: &Meta) -> Option<usize> {
        self.rules.iter().position(|r| r.allows(dir, m))
    }
}

/// TCP phase (or, for other protocols, just `Open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not TCP: a flow in both directions.
    Open,
    /// SYN seen from the originator.
    SynSent,
    /// SYN+ACK seen from the responder.
    SynAcked,
    /// Handshake complete.
    Established,
    /// A FIN seen (from either side).
    Closing,
    /// A RST seen: only a new SYN revives it.
    Closed,
}

impl State {
    /// The phase as people read it (`ctl connections`, traces).
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::SynSent => "SYN sent",
            State::SynAcked => "SYN acknowledged",
            State::Established => "established",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CtKey {
    tenant: u16,
    proto: u8,
    a: [u8; 16],
    b: [u8; 16],
    pa: u16,
    pb: u16,
}

/// One tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// TCP phase.
    pub state: State,
    /// Last packet.
    pub last_seen: Nanos,
    /// When it was opened (tells an entry from an older one of the same key).
    pub opened: Nanos,
    /// True when the originator is the key's `a` end.
    origin_a: bool,
}

/// A tracked connection as the control API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnView {
    /// IP protocol.
    pub proto: u8,
    /// Originator address (v4-mapped for IPv4) and port (ICMP: echo identifier).
    pub from: ([u8; 16], u16),
    /// Responder address and port.
    pub to: ([u8; 16], u16),
    /// State and last packet.
    pub conn: Conn,
}

/// What the table would decide, before anything changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Not tracked (not IP, neighbour discovery, or ICMP other than echo that a rule allows).
    Untracked,
    /// Part of a live connection in this state.
    Known(State),
    /// A rule opens it again over an expired or closed entry.
    Reopen,
    /// A rule opens a new connection.
    Open,
    /// A rule would open it, but the tenant's quota or the table is full.
    Full,
    /// Refused, and why.
    Denied(&'static str),
}

/// What the table decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Part of a known connection.
    Established,
    /// Opened a new connection (rule index of the first direction checked).
    Opened,
    /// Not allowed: no rule opens it, or TCP without SYN, or after a RST.
    Denied,
    /// Allowed, but the tenant's quota or the table is full.
    Full,
    /// Not tracked (not IP, or neighbour discovery): passes.
    Untracked,
}

/// Table events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections opened.
    pub opened: u64,
    /// Removed after their idle timeout.
    pub expired: u64,
    /// Refused for a full quota or table.
    pub full: u64,
    /// Opened by another worker and applied here.
    pub remote: u64,
    /// Openings not announced to other workers because the outbox was full.
    pub unannounced: u64,
    /// Half-open connections evicted to make room for a new one (SYN floods).
    pub evicted: u64,
}

/// One tenant's half-open connections.
#[derive(Debug, Default)]
struct HalfOpen {
    count: u32,
    limit: u32,
    per_source: u32,
    /// Keys of half-open entries and when each was opened, oldest first; at most `limit`.
    order: std::collections::VecDeque<(CtKey, Nanos)>,
}

/// True for a TCP connection whose handshake is not complete.
#[inline]
fn half_open(k: &CtKey, c: &Conn) -> bool {
    k.proto == TCP && matches!(c.state, State::SynSent | State::SynAcked)
}

/// The address that opened the connection.
#[inline]
fn originator(k: &CtKey, c: &Conn) -> [u8; 16] {
    if c.origin_a { k.a } else { k.b }
}

/// A connection opened by one worker, for the others: five words on a handoff ring.
pub type ConnMessage = [u64; 5];

/// A connection as five words.
fn encode(k: &CtKey, c: &Conn) -> ConnMessage {
    let (a, b) = (u128::from_be_bytes(k.a), u128::from_be_bytes(k.b));
    [
        u64::from(k.tenant)
            | u64::from(k.proto) << 16
            | u64::from(k.pa) << 24
            | u64::from(k.pb) << 40
            | (c.state as u64) << 56
            | u64::from(c.origin_a) << 63,
        (a >> 64) as u64,
        a as u64,
        (b >> 64) as u64,
        b as u64,
    ]
}

/// The message `m` for tenant `t` instead of the tenant it was made for.
pub fn retenant(mut m: ConnMessage, t: TenantId) -> ConnMessage {
    m[0] = (m[0] & !0xffff) | u64::from(t.0);
    m
}

/// Openings one worker buffers between breaths.
const OUTBOX: usize = 256;

/// One worker's connection table.
#[derive(Debug)]
pub struct ConnTable {
    map: HashMap<CtKey, Conn, ahash::RandomState>,
    per_tenant: Vec<u32>,
    quotas: Vec<u32>,
    timeouts: Vec<Timeouts>,
    capacity: usize,
    /// Per tenant: half-open connections, the bounds on them, and the half-open entries in
    /// opening order (stale items, of entries that completed their handshake or went, are
    /// skipped when they come to the front).
    half_open: Vec<HalfOpen>,
    /// Half-open connections per (tenant, originating address).
    sources: HashMap<(u16, [u8; 16]), u32, ahash::RandomState>,
    /// Openings for the other workers (capacity 0 when there are none).
    outbox: Vec<ConnMessage>,
    /// Events.
    pub stats: ConnStats,
}

impl ConnTable {
    /// A table of at most `capacity` connections. Room for twice that is allocated once, when
    /// the first group is installed, so inserts never grow it.
    pub fn new(capacity: usize) -> Self {
        ConnTable {
            map: HashMap::with_hasher(ahash::RandomState::new()),
            per_tenant: Vec::new(),
            quotas: Vec::new(),
            timeouts: Vec::new(),
            capacity,
            half_open: Vec::new(),
            sources: HashMap::with_hasher(ahash::RandomState::new()),
            outbox: Vec::new(),
            stats: ConnStats::default(),
        }
    }

    /// Keeps the half-open counts right when the entry of `k` goes from `was` to `now`.
    fn account(&mut self, k: &CtKey, was: Option<&Conn>, now: Option<&Conn>) {
        let before = was.is_some_and(|c| half_open(k, c));
        let after = now.is_some_and(|c| half_open(k, c));
        if before == after {
            return;
        }
        let Some(h) = self.half_open.get_mut(usize::from(k.tenant)) else { return };
        if let Some(c) = now.filter(|_| after) {
            h.count += 1;
            *self.sources.entry((k.tenant, originator(k, c))).or_insert(0) += 1;
            if h.order.len() == h.order.capacity() {
                // Full: the items of entries that completed their handshake or went are
                // dropped (the ring holds room for `limit` live ones, and a new one comes
                // only after `make_room`). Still full (openings applied from other workers
                // beyond the bound): the oldest is no longer tracked here, and times out.
                let map = &self.map;
                h.order.retain(|(k, opened)| {
                    map.get(k).is_some_and(|c| c.opened == *opened && half_open(k, c))
                });
                if h.order.len() == h.order.capacity() {
                    h.order.pop_front();
                }
            }
            h.order.push_back((*k, c.opened));
        } else if let Some(c) = was {
            h.count = h.count.saturating_sub(1);
            let src = (k.tenant, originator(k, c));
            if let Some(n) = self.sources.get_mut(&src) {
                *n -= 1;
                if *n == 0 {
                    self.sources.remove(&src);
                }
            }
        }
    }

    /// Removes the entry of `k` (expired, evicted or its tenant gone).
    fn remove(&mut self, k: &CtKey) {
        if let Some(c) = self.map.remove(k) {
            if let Some(n) = self.per_tenant.get_mut(usize::from(k.tenant)) {
                *n = n.saturating_sub(1);
            }
            self.account(k, Some(&c), None);
        }
    }

    /// Makes room for a half-open connection `k` from `src` (a SYN that a rule opens):
    /// evicts the oldest half-open entry of that source when the source is at its bound, of
    /// the tenant when the tenant is at its bound or its quota (or the table) is full. False
    /// when there is still no room (every entry established).
    fn make_room(&mut self, k: &CtKey, src: [u8; 16]) -> bool {
        let t = usize::from(k.tenant);
        let Some(h) = self.half_open.get(t) else { return false };
        let (limit, per_source) = (h.limit, h.per_source);
        let from_src = self.sources.get(&(k.tenant, src)).copied().unwrap_or(0);
        if from_src >= per_source && !self.evict_oldest(t, Some(src)) {
            return false;
        }
        if self.half_open[t].count >= limit && !self.evict_oldest(t, None) {
            return false;
        }
        let full = |s: &Self| {
            s.per_tenant.get(t).copied().unwrap_or(u32::MAX)
                >= s.quotas.get(t).copied().unwrap_or(0)
                || s.map.len() >= s.capacity
        };
        if full(self) {
            // The table is shared by the tenants: only the tenant's own entries make room.
            if !self.evict_oldest(t, None) || full(self) {
                return false;
            }
        }
        true
    }

    /// Evicts tenant `t`'s oldest live half-open entry (from `src` only, when given).
    fn evict_oldest(&mut self, t: usize, src: Option<[u8; 16]>) -> bool {
        let Some(h) = self.half_open.get_mut(t) else { return false };
        let mut i = 0;
        while i < h.order.len() {
            let (k, opened) = h.order[i];
            let live = self.map.get(&k).filter(|c| c.opened == opened && half_open(&k, c));
            let Some(c) = live else {
                if i == 0 {
                    h.order.pop_front(); // stale at the front: gone for good
                } else {
                    i += 1;
                }
                continue;
            };
            if src.is_some_and(|s| s != originator(&k, c)) {
                i += 1;
                continue;
            }
            h.order.remove(i);
            self.remove(&k);
            self.stats.evicted += 1;
            return true;
        }
        false
    }

    /// Makes this table put every connection it opens in an outbox for the other workers.
    pub fn share_with_peers(&mut self) {
        self.outbox = Vec::with_capacity(OUTBOX);
    }

    /// The connections opened since the last call, as messages; the outbox is emptied.
    pub fn take_outbox(&mut self) -> std::vec::Drain<'_, ConnMessage> {
        self.outbox.drain(..)
    }

    fn announce(&mut self, k: &CtKey, c: &Conn) {
        if self.outbox.capacity() == 0 {
            return;
        }
        if self.outbox.len() == self.outbox.capacity() {
            self.stats.unannounced += 1;
            return;
        }
        self.outbox.push(encode(k, c));
    }

    /// Tenant `t`'s connections as the messages a worker sends its peers, for handing them
    /// to another process (a takeover), which applies them with [`ConnTable::apply`] after
    /// [`retenant`] (its tenant ids may differ). Not the packet path.
    pub fn messages(&self, t: TenantId) -> impl Iterator<Item = ConnMessage> + '_ {
        self.map.iter().filter(move |(k, _)| k.tenant == t.0).map(|(k, c)| encode(k, c))
    }

    /// Applies a connection another worker opened (between batches): inserted, or replacing
    /// this worker's copy, within the same quota and capacity as a local opening.
    pub fn apply(&mut self, now: Nanos, m: ConnMessage) {
        let w = m[0];
        let k = CtKey {
            tenant: w as u16,
            proto: (w >> 16) as u8,
            pa: (w >> 24) as u16,
            pb: (w >> 40) as u16,
            a: (u128::from(m[1]) << 64 | u128::from(m[2])).to_be_bytes(),
            b: (u128::from(m[3]) << 64 | u128::from(m[4])).to_be_bytes(),
        };
        let state = match (w >> 56) & 0x7f {
            0 => State::Open,
            1 => State::SynSent,
            2 => State::SynAcked,
            3 => State::Established,
            4 => State::Closing,
            _ => State::Closed,
        };
        let c = Conn { state, last_seen: now, opened: now, origin_a: w >> 63 != 0 };
        self.stats.remote += 1;
        if let Some(old) = self.map.get(&k).copied() {
            self.map.insert(k, c);
            self.account(&k, Some(&old), Some(&c));
            return;
        }
        let t = usize::from(k.tenant);
        let held = self.per_tenant.get(t).copied().unwrap_or(u32::MAX);
        if held >= self.quotas.get(t).copied().unwrap_or(0) || self.map.len() >= self.capacity {
            self.stats.full += 1;
            return;
        }
        self.per_tenant[t] += 1;
        self.map.insert(k, c);
        self.account(&k, None, Some(&c));
    }

    /// Adopts the groups of a new snapshot (index = tenant id). Connections of tenants whose
    /// group is gone are dropped; the others are kept (a rules change does not cut live
    /// connections, like a cloud security group).
    pub fn install(&mut self, groups: &[Option<&SecurityGroup>]) {
        if groups.iter().any(Option::is_some) && self.map.capacity() < 2 * self.capacity {
            self.map.reserve(2 * self.capacity - self.map.len());
        }
        self.quotas = groups.iter().map(|g| g.map_or(0, |g| g.quota)).collect();
        self.timeouts =
            groups.iter().map(|g| g.map_or_else(Timeouts::default, |g| g.timeouts)).collect();
        let quotas = &self.quotas;
        self.map.retain(|k, _| quotas.get(usize::from(k.tenant)).is_some_and(|&q| q > 0));
        self.per_tenant = vec![0; groups.len()];
        for k in self.map.keys() {
            self.per_tenant[usize::from(k.tenant)] += 1;
        }
        // The half-open bookkeeping is rebuilt from the entries, oldest first.
        self.half_open = groups
            .iter()
            .map(|g| {
                let (limit, per_source) = g.map_or((0, 0), |g| g.half_open_limits());
                HalfOpen {
                    count: 0,
                    limit,
                    per_source,
                    order: std::collections::VecDeque::with_capacity(limit as usize),
                }
            })
            .collect();
        self.sources.clear();
        if self.sources.capacity() < self.capacity {
            self.sources.reserve(self.capacity);
        }
        let mut open: Vec<(CtKey, Conn)> =
            self.map.iter().filter(|(k, c)| half_open(k, c)).map(|(k, c)| (*k, *c)).collect();
        open.sort_by_key(|(_, c)| c.opened.0);
        for (k, c) in open {
            let room = self.half_open.get(usize::from(k.tenant)).is_some_and(|h| h.count < h.limit);
            if room {
                self.account(&k, None, Some(&c));
            } else {
                self.remove(&k); // beyond a lowered bound: the newest go
            }
        }
    }

    /// The connections of tenant `t`, for the control API (not the packet path): originator
    /// address and port, responder address and port, protocol, and the entry.
    pub fn connections(&self, t: TenantId) -> impl Iterator<Item = ConnView> + '_ {
        self.map.iter().filter(move |(k, _)| k.tenant == t.0).map(|(k, c)| {
            let (a, b) = ((k.a, k.pa), (k.b, k.pb));
            let (from, to) = if c.origin_a { (a, b) } else { (b, a) };
            ConnView { proto: k.proto, from, to, conn: *c }
        })
    }

    /// Connections of a tenant.
    pub fn entries_of(&self, t: TenantId) -> u32 {
        self.per_tenant.get(t.index()).copied().unwrap_or(0)
    }

    /// Connections in all.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn timeout(&self, t: u16, proto: u8, s: State) -> Nanos {
        limit(&self.timeouts.get(usize::from(t)).copied().unwrap_or_default(), proto, s)
    }

    /// The connection `m` belongs to, if tracked and not expired.
    pub fn lookup(&self, now: Nanos, m: &Meta, frame: &[u8]) -> Option<Conn> {
        let (k, _) = key(m, frame)?;
        let c = self.map.get(&k)?;
        (now.since(c.last_seen) <= self.timeout(k.tenant, k.proto, c.state)).then_some(*c)
    }

    /// What [`ConnTable::check`] would decide for `m`, without changing anything (for the
    /// decision trace).
    pub fn judge(
        &self,
        now: Nanos,
        group: &SecurityGroup,
        dirs: &[Direction],
        m: &Meta,
        frame: &[u8],
    ) -> Judgement {
        self.judge_key(now, group, dirs, m, key(m, frame))
    }

    fn judge_key(
        &self,
        now: Nanos,
        group: &SecurityGroup,
        dirs: &[Direction],
        m: &Meta,
        k: Option<(CtKey, bool)>,
    ) -> Judgement {
        let ip = matches!(m.key.ethertype, ETH_IPV4 | ETH_IPV6);
        if !ip || is_neighbour_discovery(m) {
            return Judgement::Untracked;
        }
        let opens = || dirs.iter().all(|&d| group.rule_for(d, m).is_some());
        let Some((k, _)) = k else {
            // ICMP other than echo is judged alone; a later fragment cannot be.
            if m.flags.has(PacketFlags::LATER_FRAGMENT) {
                return Judgement::Denied("a later fragment cannot be matched to a connection");
            }
            return if opens() {
                Judgement::Untracked
            } else {
                Judgement::Denied("no rule allows it")
            };
        };
        let syn_only = m.tcp_flags & (SYN | ACK) == SYN;
        let existing = self.map.get(&k);
        if let Some(c) = existing {
            let to = self.timeouts.get(usize::from(k.tenant)).copied().unwrap_or_default();
            let live = now.since(c.last_seen) <= limit(&to, k.proto, c.state);
            if live && !(k.proto == TCP && c.state == State::Closed) {
                return Judgement::Known(c.state);
            }
        }
        if k.proto == TCP && !syn_only {
            return Judgement::Denied("TCP without SYN and no open connection");
        }
        if !opens() {
            return Judgement::Denied("no rule opens it");
        }
        if existing.is_some() {
            // Expired or closed: opened afresh, in place.
            return Judgement::Reopen;
        }
        let t = usize::from(k.tenant);
        let held = self.per_tenant.get(t).copied().unwrap_or(u32::MAX);
        let quota = self.quotas.get(t).copied().unwrap_or(0);
        let evictable = k.proto == TCP && self.half_open.get(t).is_some_and(|h| h.count > 0);
        if (held >= quota || self.map.len() >= self.capacity) && !evictable {
            return Judgement::Full;
        }
        Judgement::Open
    }

    /// Judges one IP packet of a tenant with `group`, crossing the directions in `dirs`, and
    /// carries the judgement out (state moved along, connection opened).
    #[inline]
    pub fn check(
        &mut self,
        now: Nanos,
        group: &SecurityGroup,
        dirs: &[Direction],
        m: &Meta,
        frame: &[u8],
    ) -> Verdict {
        let k = key(m, frame);
        let j = self.judge_key(now, group, dirs, m, k);
        let Some((k, a_sends)) = k else {
            return if matches!(j, Judgement::Untracked) {
                Verdict::Untracked
            } else {
                Verdict::Denied
            };
        };
        match j {
            Judgement::Untracked => Verdict::Untracked,
            Judgement::Denied(_) => Verdict::Denied,
            Judgement::Full => {
                self.stats.full += 1;
                Verdict::Full
            }
            Judgement::Known(_) => {
                if let Some(c) = self.map.get_mut(&k) {
                    c.last_seen = now;
                    if k.proto == TCP {
                        let was = *c;
                        c.state = advance(c.state, m.tcp_flags, a_sends == c.origin_a);
                        if was.state != c.state {
                            let c = *c;
                            self.account(&k, Some(&was), Some(&c));
                        }
                    }
                }
                Verdict::Established
            }
            Judgement::Reopen | Judgement::Open => {
                let c = Conn {
                    state: first_state(k.proto),
                    last_seen: now,
                    opened: now,
                    origin_a: a_sends,
                };
                // Expired or closed: the old entry goes, and the connection opens afresh.
                self.remove(&k);
                if half_open(&k, &c) && !self.make_room(&k, originator(&k, &c)) {
                    self.stats.full += 1;
                    return Verdict::Full;
                }
                if self.map.insert(k, c).is_none() {
                    self.per_tenant[usize::from(k.tenant)] += 1;
                }
                self.account(&k, None, Some(&c));
                self.stats.opened += 1;
                self.announce(&k, &c);
                Verdict::Opened
            }
        }
    }

    /// Removes connections idle past their timeout. Returns how many. Between batches.
    pub fn expire(&mut self, now: Nanos) -> usize {
        let (timeouts, per_tenant) = (&self.timeouts, &mut self.per_tenant);
        let (half_open_list, sources) = (&mut self.half_open, &mut self.sources);
        let mut gone = 0;
        self.map.retain(|k, c| {
            let to = timeouts.get(usize::from(k.tenant)).copied().unwrap_or_default();
            let keep = now.since(c.last_seen) <= limit(&to, k.proto, c.state);
            if !keep {
                gone += 1;
                if let Some(n) = per_tenant.get_mut(usize::from(k.tenant)) {
                    *n -= 1;
                }
                if half_open(k, c)
                    && let Some(h) = half_open_list.get_mut(usize::from(k.tenant))
                {
                    h.count = h.count.saturating_sub(1);
                    let src = (k.tenant, originator(k, c));
                    if let Some(n) = sources.get_mut(&src) {
                        *n -= 1;
                        if *n == 0 {
                            sources.remove(&src);
                        }
                    }
                }
            }
            keep
        });
        self.stats.expired += gone as u64;
        gone
    }

    /// Half-open connections of tenant `t`.
    pub fn half_open_of(&self, t: TenantId) -> u32 {
        self.half_open.get(t.index()).map_or(0, |h| h.count)
    }
}

/// The idle timeout of a connection of `proto` in state `s`.
fn limit(to: &Timeouts, proto: u8, s: State) -> Nanos {
    match (proto, s) {
        (TCP, State::SynSent | State::SynAcked) => to.tcp_handshake,
        (TCP, State::Established) => to.tcp_established,
        (TCP, _) => to.tcp_closing,
        (UDP, _) => to.udp,
        (ICMP | ICMPV6, _) => to.icmp,
        _ => to.other,
    }
}

fn first_state(proto: u8) -> State {
    if proto == TCP { State::SynSent } else { State::Open }
}

/// The TCP state after a packet with `flags`, from the originator or not.
fn advance(s: State, flags: u8, from_origin: bool) -> State {
    if flags & RST != 0 {
        return State::Closed;
    }
    if flags & FIN != 0 {
        return State::Closing;
    }
    match s {
        State::SynSent if !from_origin && flags & (SYN | ACK) == SYN | ACK => State::SynAcked,
        State::SynAcked if from_origin && flags & ACK != 0 => State::Established,
        other => other,
    }
}

fn is_neighbour_discovery(m: &Meta) -> bool {
    m.key.proto == ICMPV6 && m.l4_offset != 0 && (133..=137).contains(&m.key.src_port)
}

/// The connection key of `m` and whether `m` travels from the key's `a` end.
fn key(m: &Meta, frame: &[u8]) -> Option<(CtKey, bool)> {
    let k = &m.key;
    if m.flags.has(PacketFlags::LATER_FRAGMENT) {
        return None;
    }
    let (sp, dp) = match k.proto {
        TCP | UDP => (k.src_port, k.dst_port),
        ICMP | ICMPV6 => {
            let echo = matches!((k.proto, k.src_port), (ICMP, 0 | 8) | (ICMPV6, 128 | 129));
            if !echo || m.l4_offset == 0 {
                return None;
            }
            // Echo identifier: bytes 4-5 of the ICMP message; both ends use it.
            let at = usize::from(m.l4_offset) + 4;
            let id = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
            (id, id)
        }
        _ => (0, 0),
    };
    let src = (k.src_ip, sp);
    let dst = (k.dst_ip, dp);
    let a_sends = src <= dst;
    let ((a, pa), (b, pb)) = if a_sends { (src, dst) } else { (dst, src) };
    Some((CtKey { tenant: m.tenant.0, proto: k.proto, a, b, pa, pb }, a_sends))
}
