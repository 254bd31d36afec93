//! MAC learning: one table for all tenants, keyed by (tenant, MAC), with a quota per tenant.
//!
//! # Design
//! The key packs the tenant id and the 48-bit MAC into one `u64`, so a lookup hashes a single
//! word (ahash) and one tenant's entries can never answer for another's. The map is allocated
//! at install time with room for twice the table capacity: hashbrown then never grows (or
//! rehashes out of place) on insert, which keeps learning allocation-free on the packet path.
//!
//! Quotas: a tenant learns at most `fdb_quota` MACs and the table at most `fdb_capacity`; a
//! source beyond either is forwarded but not learned (counted as `quota_exceeded`), so one
//! tenant flooding source MACs cannot push out another tenant's entries.
//!
//! Aging: an entry not refreshed for the tenant's `mac_aging` is ignored by lookups at once and
//! removed by [`Fdb::age`], which the worker calls between batches a few times a second.
//!
//! Several workers: each worker keeps its own table (no lock, no shared cache line on the packet
//! path). What one worker learns it announces to the others over handoff rings: a new or moved
//! entry at once, a refreshed one again once half its aging time has passed since the last
//! announcement ([`Learn::announce`]), so the other workers' copies neither go stale nor age out
//! while the host keeps talking. Without this, a conversation whose two ends sit on ports of
//! different workers would be flooded forever.
//!
//! Generations: each tenant has a counter that moves whenever one of its entries appears,
//! moves or goes ([`Fdb::generation`]). The flow cache stores it beside every forwarding
//! decision it caches and takes a decision whose generation is behind for a miss, so a cached
//! "flood" ends when the destination is learned and a cached port when the host moves or
//! ages out. Refreshes do not move it.
//!
//! It does _not_ survive a snapshot change yet: [`Fdb::install`] clears learned entries, so a
//! reload costs a short flood while MACs are learned again.

use std::collections::HashMap;

use crate::flow::overlay::{NO_VTEP, OverlayMap, VtepId};
use crate::snapshot::{Attachment, Snapshot};
use crate::time::Nanos;
use crate::trace::counters::FdbStats;
use crate::vocab::TenantId;
use crate::wire::MacAddr;

/// Where a MAC was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The attachment (port and VLAN) behind which the MAC lives, held by value so forwarding
    /// needs no second lookup in the snapshot (the table is rebuilt when the snapshot changes).
    pub attachment: Attachment,
    /// Who made it: learning ([`NO_VTEP`]), the config ([`STATIC`]: never aged or moved), or
    /// the cluster map (the index of the other host the MAC is behind; the attachment is the
    /// tenant's underlay one). A map's entry is never aged, not counted in the quota, replaced
    /// with the map, and moved by learning when the MAC shows up here (a VM that moved before
    /// the map said so). One `u16` beside the attachment, so an entry stays 24 bytes.
    origin: u16,
    /// Last time a frame from this MAC was seen.
    pub last_seen: Nanos,
    /// Last time this entry was announced to the other workers.
    pub announced: Nanos,
}

/// [`FdbEntry`]'s origin for a configured entry.
const STATIC: u16 = NO_VTEP - 1;

impl FdbEntry {
    /// A configured entry: never aged or moved.
    #[inline]
    pub fn is_static(&self) -> bool {
        self.origin == STATIC
    }

    /// An entry the cluster map put there.
    #[inline]
    pub fn is_remote(&self) -> bool {
        self.origin < STATIC
    }

    /// The other host of an entry the cluster map put there, else [`NO_VTEP`].
    #[inline]
    pub fn host(&self) -> VtepId {
        if self.is_remote() { self.origin } else { NO_VTEP }
    }
}

/// What learning a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known there; refreshed.
    Refreshed,
    /// Refreshed, and the last announcement is older than half the aging time.
    Renewed,
    /// New entry.
    Learned,
    /// Was behind another attachment; moved.
    Moved,
    /// Static entry elsewhere: not moved.
    StaticConflict,
    /// Not learned: tenant quota or table full.
    QuotaExceeded,
}

#[derive(Debug, Clone, Default)]
struct TenantFdb {
    /// The tenant's config name: its identity across snapshots (its id may change).
    name: String,
    learned: u32,
    quota: u32,
    aging: Nanos,
    /// Moves with every entry learned, moved or removed (never with a refresh).
    generation: u32,
}

/// The MAC table of one worker.
#[derive(Debug)]
pub struct Fdb {
    map: HashMap<u64, FdbEntry, ahash::RandomState>,
    tenants: Vec<TenantFdb>,
    capacity: usize,
    learned: usize,
}

#[inline]
fn key(t: TenantId, mac: MacAddr) -> u64 {
    (u64::from(t.0) << 48) | mac.to_u64()
}

impl Fdb {
    /// An empty table for `snap` (static entries installed).
    pub fn new(snap: &Snapshot) -> Self {
        let mut f = Fdb {
            map: HashMap::with_hasher(ahash::RandomState::new()),
            tenants: Vec::new(),
            capacity: 0,
            learned: 0,
        };
        f.install(snap);
        f
    }

    /// Adopts a new snapshot: static entries as it configures them; learned entries kept for
    /// the tenants that are still there (found by name: a tenant's id may change) behind
    /// attachments they still have, within their quota and the table's capacity. A reload
    /// therefore floods nothing that was known before it. Between batches, never on the packet
    /// path (it rebuilds the table).
    pub fn install(&mut self, snap: &Snapshot) {
        let statics: usize = snap.tenants.iter().map(|t| t.static_macs.len()).sum();
        self.capacity = snap.fdb_capacity as usize;
        let names: Vec<String> = self.tenants.iter().map(|t| t.name.clone()).collect();
        let kept: Vec<(TenantId, MacAddr, FdbEntry)> = self
            .map
            .drain()
            .filter(|(_, e)| !e.is_static() && !e.is_remote())
            .filter_map(|(k, e)| {
                let t = snap.tenant_by_name(names.get((k >> 48) as usize)?)?;
                let here = snap.resolve(e.attachment.port, e.attachment.vlan);
                (here.map(|(owner, _)| owner) == Some(t)).then(|| (t, MacAddr::from_u64(k), e))
            })
            .collect();
        // Twice the live maximum: inserts never trigger growth (see module docs).
        let room = 2 * (self.capacity + statics);
        if self.map.capacity() < room {
            self.map.reserve(room);
        }
        self.learned = 0;
        // Generations keep counting across snapshots: a decision cached before the change
        // must not match one made after it.
        let next = self.tenants.iter().map(|t| t.generation).max().unwrap_or(0).wrapping_add(1);
        self.tenants.clear();
        self.tenants.extend(snap.tenants.iter().map(|t| TenantFdb {
            name: t.name.clone(),
            learned: 0,
            quota: t.fdb_quota,
            aging: t.mac_aging,
            generation: next,
        }));
        for (ti, t) in snap.tenants.iter().enumerate() {
            for &(mac, att) in &t.static_macs {
                let Some(&at) = t.attachments.get(usize::from(att.0)) else { continue };
                self.map.insert(
                    key(TenantId(ti as u16), mac),
                    FdbEntry {
                        attachment: at,
                        last_seen: Nanos::ZERO,
                        announced: Nanos::ZERO,
                        origin: STATIC,
                    },
                );
            }
        }
        // Newest first, so what a lower quota or capacity leaves out is what would age first.
        let mut kept = kept;
        kept.sort_by_key(|(_, _, e)| std::cmp::Reverse(e.last_seen.0));
        for (t, mac, e) in kept {
            let Some(tf) = self.tenants.get_mut(t.index()) else { continue };
            if tf.learned >= tf.quota || self.learned >= self.capacity {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(key(t, mac)) {
                v.insert(e);
                tf.learned += 1;
                self.learned += 1;
            }
        }
    }

    /// The attachment (port and VLAN) behind `mac` in tenant `t`, if known and not expired.
    #[inline]
    pub fn lookup(&self, now: Nanos, t: TenantId, mac: MacAddr) -> Option<Attachment> {
        self.lookup_host(now, t, mac).map(|(a, _, _)| a)
    }

    /// [`Fdb::lookup`], until when its answer holds (the first instant the entry counts as
    /// expired; never for a static entry or the cluster map's: an unknown or expired MAC
    /// changes only by learning, which moves the tenant's generation), and the other host of a
    /// MAC the cluster map has there ([`NO_VTEP`] for the others).
    #[inline(always)]
    pub fn lookup_host(
        &self,
        now: Nanos,
        t: TenantId,
        mac: MacAddr,
    ) -> Option<(Attachment, Nanos, VtepId)> {
        let e = self.map.get(&key(t, mac))?;
        if e.is_static() || e.is_remote() {
            return Some((e.attachment, Nanos(u64::MAX), e.host()));
        }
        let aging = self.tenants.get(t.index())?.aging;
        if now.since(e.last_seen) > aging {
            None
        } else {
            Some((e.attachment, e.last_seen.add(aging).add(Nanos(1)), NO_VTEP))
        }
    }

    /// Records that `mac` was seen behind attachment `at` in tenant `t`.
    #[inline]
    pub fn learn(&mut self, now: Nanos, t: TenantId, mac: MacAddr, at: Attachment) -> Learn {
        let k = key(t, mac);
        if let Some(e) = self.map.get_mut(&k) {
            if e.is_static() {
                return if e.attachment == at { Learn::Refreshed } else { Learn::StaticConflict };
            }
            if e.is_remote() {
                if e.attachment == at {
                    return Learn::Refreshed; // from its host, over the underlay
                }
                // Here now: a learned entry of this port, in the quota, until the map agrees.
                let Some(tf) = self.tenants.get_mut(t.index()) else {
                    return Learn::QuotaExceeded;
                };
                if tf.learned >= tf.quota || self.learned >= self.capacity {
                    return Learn::QuotaExceeded;
                }
                tf.learned += 1;
                tf.generation = tf.generation.wrapping_add(1);
                self.learned += 1;
                *e = FdbEntry { attachment: at, last_seen: now, announced: now, origin: NO_VTEP };
                return Learn::Moved;
            }
            // Expired but not removed yet (lookups have ignored it since): it comes back as
            // if new, so decisions cached while it was unknown go stale.
            let aging = self.tenants.get(t.index()).map_or(Nanos::ZERO, |tf| tf.aging);
            let revived = now.since(e.last_seen) > aging;
            e.last_seen = now;
            if revived && let Some(tf) = self.tenants.get_mut(t.index()) {
                tf.generation = tf.generation.wrapping_add(1);
            }
            if e.attachment != at {
                e.attachment = at;
                e.announced = now;
                if let Some(tf) = self.tenants.get_mut(t.index()) {
                    tf.generation = tf.generation.wrapping_add(1);
                }
                return Learn::Moved;
            }
            let half = self.tenants.get(t.index()).map_or(Nanos::ZERO, |tf| tf.aging).0 / 2;
            if now.since(e.announced).0 > half {
                e.announced = now;
                return Learn::Renewed;
            }
            return Learn::Refreshed;
        }
        let Some(tf) = self.tenants.get_mut(t.index()) else { return Learn::QuotaExceeded };
        if tf.learned >= tf.quota || self.learned >= self.capacity {
            return Learn::QuotaExceeded;
        }
        tf.learned += 1;
        tf.generation = tf.generation.wrapping_add(1);
        self.learned += 1;
        self.map.insert(
            k,
            FdbEntry { attachment: at, last_seen: now, announced: now, origin: NO_VTEP },
        );
        Learn::Learned
    }

    /// Removes learned entries older than their tenant's aging time. Returns how many.
    pub fn age(&mut self, now: Nanos) -> usize {
        let tenants = &mut self.tenants;
        let mut removed = 0;
        self.map.retain(|k, e| {
            if e.is_static() || e.is_remote() {
                return true;
            }
            let t = (k >> 48) as usize;
            let Some(tf) = tenants.get_mut(t) else {
                return false;
            };
            if now.since(e.last_seen) > tf.aging {
                tf.learned -= 1;
                tf.generation = tf.generation.wrapping_add(1);
                removed += 1;
                false
            } else {
                true
            }
        });
        self.learned -= removed;
        removed
    }

    /// Puts the cluster map's MACs in the table, behind each tenant's underlay attachment and
    /// with their host, in place of the map's before: a remote destination then costs one
    /// probe, like a local one. A MAC learned here (and alive) stays: first-hand knowledge
    /// wins until it ages out. Between batches (it walks the table and may grow it).
    pub fn set_remote(&mut self, snap: &Snapshot, map: &OverlayMap) {
        let mut touched = vec![false; self.tenants.len()];
        self.map.retain(|k, e| {
            if e.is_remote()
                && let Some(t) = touched.get_mut((k >> 48) as usize)
            {
                *t = true;
            }
            !e.is_remote()
        });
        self.map.reserve(map.sizes().0);
        for (vni, mac, host) in map.entry_ids() {
            let Some((t, a)) = snap.tenant_by_vni(vni) else { continue };
            let Some(at) = snap.attachment(t, a) else { continue };
            let e = FdbEntry {
                attachment: at,
                last_seen: Nanos::ZERO,
                announced: Nanos::ZERO,
                origin: host,
            };
            match self.map.entry(key(t, mac)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    // Learned behind the underlay (from its host) is the map's to say.
                    let old = *o.get();
                    if !old.is_static() && old.attachment == at {
                        o.insert(e);
                        if let Some(tf) = self.tenants.get_mut(t.index()) {
                            tf.learned = tf.learned.saturating_sub(1);
                        }
                        self.learned = self.learned.saturating_sub(1);
                    }
                }
            }
            if let Some(x) = touched.get_mut(t.index()) {
                *x = true;
            }
        }
        for (tf, t) in self.tenants.iter_mut().zip(touched) {
            if t {
                tf.generation = tf.generation.wrapping_add(1);
            }
        }
    }

    /// Tenant `t`'s generation: it changes whenever an entry of `t` is learned, moves or is
    /// removed, so a forwarding decision cached under an older one may be wrong.
    #[inline]
    pub fn generation(&self, t: TenantId) -> u32 {
        self.tenants.get(t.index()).map_or(0, |tf| tf.generation)
    }

    /// Learned entries of tenant `t`.
    pub fn learned(&self, t: TenantId) -> u32 {
        self.tenants.get(t.index()).map_or(0, |tf| tf.learned)
    }

    /// All entries, static included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries of one tenant, for the control API (not the packet path).
    pub fn entries(&self, t: TenantId) -> impl Iterator<Item = (MacAddr, FdbEntry)> + '_ {
        self.map
            .iter()
            .filter(move |(k, _)| (*k >> 48) as u16 == t.0)
            .map(|(k, e)| (MacAddr::from_u64(*k), *e))
    }
}

impl Learn {
    /// Adds this event to the stats.
    #[inline]
    pub fn count(self, s: &mut FdbStats) {
        match self {
            Learn::Learned => s.learned += 1,
            Learn::Moved => s.moved += 1,
            Learn::QuotaExceeded => s.quota_exceeded += 1,
            Learn::Refreshed | Learn::Renewed | Learn::StaticConflict => {}
        }
    }

    /// True when the other workers must hear of this entry.
    #[inline]
    pub fn announce(self) -> bool {
        matches!(self, Learn::Learned | Learn::Moved | Learn::Renewed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{PortKind, SnapshotBuilder, TenantSpec};
    use crate::vocab::{AttachmentId, PortId};

    fn mac(i: u32) -> MacAddr {
        let b = i.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    /// The attachments of tenant a in `snap`: 0 is port p0, 1 is port p1, both untagged.
    fn att(i: u16) -> Attachment {
        Attachment { port: PortId(i), vlan: None }
    }

    fn snap(quota: u32, capacity: u32) -> Snapshot {
        let mut b = SnapshotBuilder::new(1).fdb_capacity(capacity);
        let p0 = b.port("p0", "p0", PortKind::Tenant);
        let p1 = b.port("p1", "p1", PortKind::Tenant);
        let p2 = b.port("p2", "p2", PortKind::Tenant);
        for (name, ports) in [("a", vec![p0, p1]), ("b", vec![p2])] {
            let mut t = TenantSpec::new(
                name,
                ports.into_iter().map(|port| Attachment { port, vlan: None }).collect(),
            );
            t.fdb_quota = quota;
            t.mac_aging = Nanos::from_secs(10);
            b.tenant(t);
        }
        let mut s = b.build().unwrap();
        s.tenants[0].static_macs.push((mac(999), AttachmentId(1)));
        s
    }

    #[test]
    fn learns_refreshes_moves() {
        let mut f = Fdb::new(&snap(10, 100));
        let (a, now) = (TenantId(0), Nanos::from_secs(1));
        assert_eq!(f.lookup(now, a, mac(1)), None);
        assert_eq!(f.learn(now, a, mac(1), att(0)), Learn::Learned);
        assert_eq!(f.lookup(now, a, mac(1)), Some(att(0)));
        assert_eq!(f.learn(now, a, mac(1), att(0)), Learn::Refreshed);
        assert_eq!(f.learn(now, a, mac(1), att(1)), Learn::Moved);
        assert_eq!(f.lookup(now, a, mac(1)), Some(att(1)));
        // Tenants do not see each other's entries.
        assert_eq!(f.lookup(now, TenantId(1), mac(1)), None);
        assert_eq!(f.learned(a), 1);
    }

    #[test]
    fn announcements_for_new_moved_and_half_aged_entries_only() {
        let mut f = Fdb::new(&snap(10, 100));
        let a = TenantId(0);
        let at = |ms| Nanos::from_millis(ms);
        assert!(f.learn(at(0), a, mac(1), att(0)).announce());
        assert!(!f.learn(at(4_000), a, mac(1), att(0)).announce());
        // Aging is 10 s: past 5 s since the announcement, a refresh is announced again.
        assert_eq!(f.learn(at(5_001), a, mac(1), att(0)), Learn::Renewed);
        assert!(!f.learn(at(9_000), a, mac(1), att(0)).announce());
        assert!(f.learn(at(9_001), a, mac(1), att(1)).announce(), "moved");
        assert!(!f.learn(at(9_002), a, mac(999), att(0)).announce(), "static");
    }

    #[test]
    fn static_entries_never_move_or_age() {
        let mut f = Fdb::new(&snap(10, 100));
        let a = TenantId(0);
        assert_eq!(f.learn(Nanos::ZERO, a, mac(999), att(0)), Learn::StaticConflict);
        let late = Nanos::from_secs(1_000_000);
        assert_eq!(f.lookup(late, a, mac(999)), Some(att(1)));
        assert_eq!(f.age(late), 0);
        assert_eq!(f.lookup(late, a, mac(999)), Some(att(1)));
    }

    #[test]
    fn aging_expires_and_frees_quota() {
        let mut f = Fdb::new(&snap(2, 100));
        let a = TenantId(0);
        let t0 = Nanos::from_secs(1);
        f.learn(t0, a, mac(1), att(0));
        f.learn(t0, a, mac(2), att(0));
        assert_eq!(f.learn(t0, a, mac(3), att(0)), Learn::QuotaExceeded);
        // Refresh mac(2) at 6 s; at 11.5 s mac(1) is older than 10 s, mac(2) is not.
        f.learn(Nanos::from_secs(6), a, mac(2), att(0));
        let t1 = Nanos::from_millis(11_500);
        assert_eq!(f.lookup(t1, a, mac(1)), None, "expired entries are ignored before removal");
        assert_eq!(f.lookup(t1, a, mac(2)), Some(att(0)));
        assert_eq!(f.age(t1), 1);
        assert_eq!(f.learned(a), 1);
        assert_eq!(f.learn(t1, a, mac(3), att(0)), Learn::Learned);
    }

    #[test]
    fn one_tenant_cannot_fill_the_table_for_another() {
        let mut f = Fdb::new(&snap(50, 60));
        let now = Nanos::from_secs(1);
        for i in 0..10_000 {
            f.learn(now, TenantId(0), mac(i), att(0));
        }
        assert_eq!(f.learned(TenantId(0)), 50);
        for i in 0..10 {
            assert_eq!(f.learn(now, TenantId(1), mac(i), att(0)), Learn::Learned);
        }
        assert_eq!(f.learned(TenantId(1)), 10);
        // The global capacity still binds.
        for i in 10..100 {
            f.learn(now, TenantId(1), mac(i), att(0));
        }
        assert_eq!(f.learned(TenantId(0)) + f.learned(TenantId(1)), 60);
    }

    #[test]
    fn generations_move_with_learning_moves_and_aging_not_refreshes() {
        let s = snap(10, 100);
        let mut f = Fdb::new(&s);
        let (a, b) = (TenantId(0), TenantId(1));
        let g0 = f.generation(a);
        f.learn(Nanos::ZERO, a, mac(1), att(0));
        let g1 = f.generation(a);
        assert_ne!(g1, g0, "learned");
        f.learn(Nanos::from_secs(1), a, mac(1), att(0));
        assert_eq!(f.generation(a), g1, "a refresh changes no decision");
        f.learn(Nanos::from_secs(1), a, mac(1), att(1));
        let g2 = f.generation(a);
        assert_ne!(g2, g1, "moved");
        let gb = f.generation(b);
        assert_eq!(f.age(Nanos::from_secs(100)), 1);
        assert_ne!(f.generation(a), g2, "aged out");
        assert_eq!(f.generation(b), gb, "another tenant's generation is its own");
        let before = f.generation(a);
        f.install(&s);
        assert_ne!(f.generation(a), before, "a new snapshot starts a new generation");
    }

    #[test]
    fn an_entry_expires_when_lookups_stop_seeing_it_and_comes_back_as_new() {
        let mut f = Fdb::new(&snap(10, 100));
        let a = TenantId(0);
        let aging = Nanos::from_secs(10);
        f.learn(Nanos::from_secs(1), a, mac(1), att(0));
        let (_, end, _) = f.lookup_host(Nanos::from_secs(2), a, mac(1)).unwrap();
        assert_eq!(end, Nanos::from_secs(1).add(aging).add(Nanos(1)));
        assert_eq!(f.lookup(Nanos(end.0 - 1), a, mac(1)), Some(att(0)));
        assert_eq!(f.lookup(end, a, mac(1)), None);
        assert_eq!(f.lookup_host(end, a, mac(1)), None, "expired: unknown");
        assert_eq!(f.lookup_host(end, a, mac(2)), None, "never learned");
        // Seen again before the aging pass removed it: lookups see it again, and the tenant's
        // generation moves as for a new entry (a decision made while it was unknown is stale).
        let g = f.generation(a);
        assert_eq!(f.learn(end, a, mac(1), att(0)), Learn::Renewed);
        assert_ne!(f.generation(a), g);
        assert_eq!(f.lookup(end, a, mac(1)), Some(att(0)));
        // A refresh before expiry moves nothing.
        let g = f.generation(a);
        f.learn(end.add(Nanos::from_secs(1)), a, mac(1), att(0));
        assert_eq!(f.generation(a), g);
    }

    // Regression (issue 17): every snapshot change cleared the learned entries, so every
    // reload flooded unicast traffic until the hosts spoke again.
    #[test]
    fn install_keeps_learned_entries_by_tenant_name_and_attachment() {
        let s = snap(10, 100);
        let mut f = Fdb::new(&s);
        let (a, b) = (TenantId(0), TenantId(1));
        f.learn(Nanos::ZERO, a, mac(1), att(0));
        f.learn(Nanos::ZERO, a, mac(2), att(1));
        f.learn(Nanos::from_secs(1), b, mac(5), Attachment { port: PortId(2), vlan: None });
        f.install(&s);
        assert_eq!(f.len(), 4, "three learned and the static one");
        assert_eq!(f.lookup(Nanos::from_secs(1), a, mac(1)), Some(att(0)));
        // A tenant "0" sorts first now: "a" and "b" move to ids 1 and 2, "a" loses port p1,
        // and its quota drops to one: the newest entry it can still reach stays.
        let mut bld = SnapshotBuilder::new(2).fdb_capacity(100);
        let p0 = bld.port("p0", "p0", PortKind::Tenant);
        let _p1 = bld.port("p1", "p1", PortKind::Tenant);
        let p2 = bld.port("p2", "p2", PortKind::Tenant);
        let p3 = bld.port("p3", "p3", PortKind::Tenant);
        for (name, port, quota) in [("0", p3, 10), ("a", p0, 1), ("b", p2, 10)] {
            let mut t = TenantSpec::new(name, vec![Attachment { port, vlan: None }]);
            t.fdb_quota = quota;
            bld.tenant(t);
        }
        f.install(&bld.build().unwrap());
        let (a2, b2) = (TenantId(1), TenantId(2));
        let now = Nanos::from_secs(2);
        assert_eq!(f.lookup(now, a2, mac(1)), Some(att(0)), "a's MAC behind p0 kept");
        assert_eq!(f.lookup(now, a2, mac(2)), None, "behind p1, no longer a's");
        assert_eq!(f.lookup(now, b2, mac(5)).map(|x| x.port), Some(PortId(2)));
        assert_eq!(f.lookup(now, TenantId(0), mac(1)), None, "the new tenant learned nothing");
        assert_eq!(f.len(), 2);
        assert_eq!(f.entries(a2).count(), 1);
    }
}
