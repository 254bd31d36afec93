//! Stateless ACLs: ordered rules per tenant and direction, compiled into a [`Classifier`].
//!
//! A rule matches when every field it names matches; fields it leaves out match anything.
//! Rules are evaluated by priority, lowest number first (like a numbered rule list); the first
//! `allow` or `deny` decides, and the set's default action applies when none matches. `count`
//! rules decide nothing: every `count` rule a packet matches is counted, and evaluation goes on.

use super::Prefix;
use super::classifier::{Classifier, Hit, Key, range_prefixes};
use crate::batch::Meta;
use crate::vocab::PortId;
use crate::wire::MacAddr;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the packet through (later checks still apply).
    Allow,
    /// Drop it under reason `policy`.
    Deny,
    /// Count it and go on.
    Count,
}

/// What a rule matches; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// The port the frame came in on.
    pub in_port: Option<PortId>,
    /// Source MAC.
    pub src_mac: Option<MacAddr>,
    /// Destination MAC.
    pub dst_mac: Option<MacAddr>,
    /// Ether type (after VLAN tags).
    pub ethertype: Option<u16>,
    /// Outer VLAN the frame arrived with (`Some(None)`: untagged).
    pub vlan: Option<Option<u16>>,
    /// Source address prefix.
    pub src: Option<Prefix>,
    /// Destination address prefix.
    pub dst: Option<Prefix>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// Source L4 port range (inclusive).
    pub src_ports: Option<(u16, u16)>,
    /// Destination L4 port range (inclusive).
    pub dst_ports: Option<(u16, u16)>,
    /// TCP flags: (value, mask); matches when `flags & mask == value`.
    pub tcp_flags: Option<(u8, u8)>,
    /// ICMP or ICMPv6 type.
    pub icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code.
    pub icmp_code: Option<u8>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Name for counters and traces (`acl[3]` when the config gives none).
    pub name: String,
    /// Lower is evaluated first.
    pub priority: u32,
    /// What it does.
    pub action: Action,
    /// What it matches.
    pub m: Match,
}

// Word 0 of the key: in_port | vlan code << 16 | ethertype << 32 | proto << 48 | flags << 56.
const W0_PORT: u64 = 0xffff;
const W0_VLAN: u64 = 0xffff << 16;
const W0_ETHERTYPE: u64 = 0xffff << 32;
const W0_PROTO: u64 = 0xff << 48;
const W0_FLAGS_SHIFT: u32 = 56;

/// The classification key of a parsed frame that came in on `in_port`.
/// Words: 0 as above; 1 source MAC; 2 destination MAC; 3-4 source address; 5-6 destination
/// address; 7 source port (ICMP type) | destination port (ICMP code) << 16.
///
/// Derived from the flow cache's key ([`crate::flow::key::key_of`]), the one place that
/// reads a frame's fields into words: the same word 0 (plus the TCP flags, which a flow's key
/// leaves out), the MACs without the ports packed beside them, and the ports in a word of
/// their own that rule masks can select.
#[inline]
pub fn key_of(m: &Meta, in_port: PortId) -> Key {
    from_flow(&crate::flow::key::key_of(m, in_port), m.tcp_flags)
}

/// The classification key of a flow's key and a frame's TCP flags.
#[inline]
pub fn from_flow(f: &crate::flow::key::Key, tcp_flags: u8) -> Key {
    // Word 0 and the addresses have the flow key's layout, so they are copied as words.
    let w = f.words();
    let (src_mac, dst_mac) = f.mac_words();
    [
        w[0] | u64::from(tcp_flags) << W0_FLAGS_SHIFT,
        src_mac,
        dst_mac,
        w[3],
        w[4],
        w[5],
        w[6],
        u64::from(f.src_port()) | u64::from(f.dst_port()) << 16,
    ]
}

impl Match {
    /// The (value, mask) entries that together match exactly what this rule matches.
    pub fn entries(&self) -> Vec<(Key, Key)> {
        let mut v = [0u64; 8];
        let mut m = [0u64; 8];
        if let Some(p) = self.in_port {
            v[0] |= u64::from(p.0);
            m[0] |= W0_PORT;
        }
        if let Some(vl) = self.vlan {
            v[0] |= vl.map_or(0, |x| u64::from(x) + 1) << 16;
            m[0] |= W0_VLAN;
        }
        if let Some(e) = self.ethertype {
            v[0] |= u64::from(e) << 32;
            m[0] |= W0_ETHERTYPE;
        }
        if let Some(p) = self.proto {
            v[0] |= u64::from(p) << 48;
            m[0] |= W0_PROTO;
        }
        if let Some((val, mask)) = self.tcp_flags {
            v[0] |= u64::from(val & mask) << W0_FLAGS_SHIFT;
            m[0] |= u64::from(mask) << W0_FLAGS_SHIFT;
        }
        if let Some(mac) = self.src_mac {
            v[1] = mac.to_u64();
            m[1] = 0xffff_ffff_ffff;
        }
        if let Some(mac) = self.dst_mac {
            v[2] = mac.to_u64();
            m[2] = 0xffff_ffff_ffff;
        }
        for (p, at) in [(self.src, 3), (self.dst, 5)] {
            if let Some(p) = p {
                let a = u128::from_be_bytes(p.addr);
                let mk = Prefix::mask(p.len);
                v[at] = (a >> 64) as u64;
                v[at + 1] = a as u64;
                m[at] = (mk >> 64) as u64;
                m[at + 1] = mk as u64;
            }
        }
        // ICMP type and code live in the port words of the key.
        if let Some(t) = self.icmp_type {
            v[7] |= u64::from(t);
            m[7] |= 0xffff;
        }
        if let Some(c) = self.icmp_code {
            v[7] |= u64::from(c) << 16;
            m[7] |= 0xffff << 16;
        }
        let full = vec![(0u16, 0u16)];
        let srcs = self.src_ports.map_or(full.clone(), |(lo, hi)| range_prefixes(lo, hi));
        let dsts = self.dst_ports.map_or(full, |(lo, hi)| range_prefixes(lo, hi));
        let mut out = Vec::with_capacity(srcs.len() * dsts.len());
        for &(sv, sm) in &srcs {
            for &(dv, dm) in &dsts {
                let (mut v, mut m) = (v, m);
                v[7] |= u64::from(sv) | u64::from(dv) << 16;
                m[7] |= u64::from(sm) | u64::from(dm) << 16;
                out.push((v, m));
            }
        }
        out
    }
}

/// A compiled rule set: one tenant, one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclSet {
    /// The rules, as configured (names, actions).
    pub rules: Vec<Rule>,
    /// What applies when no `allow` or `deny` rule matches.
    pub default: Action,
    decide: Classifier,
    /// `count` rules, matched one by one (few, and each must be counted even when several
    /// share a mask and value, which one classifier entry could not express).
    count: Vec<(u32, Vec<(Key, Key)>)>,
    used: Key,
}

/// True when `key` matches one of the (value, mask) entries.
#[inline]
pub fn matches_entries(entries: &[(Key, Key)], key: &Key) -> bool {
    entries.iter().any(|(v, m)| key.iter().zip(m).zip(v).all(|((k, m), v)| k & m == *v))
}

impl Default for AclSet {
    fn default() -> Self {
        AclSet::new(Vec::new(), Action::Allow)
    }
}

/// An ACL decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclVerdict {
    /// Allow or deny.
    pub action: Action,
    /// The deciding rule, or `None` for the default action.
    pub rule: Option<u32>,
}

impl AclSet {
    /// Compiles `rules` (in the order given; that order breaks priority ties).
    pub fn new(rules: Vec<Rule>, default: Action) -> AclSet {
        let mut decide = Classifier::default();
        let mut count = Vec::new();
        let mut used = [0u64; 8];
        for (i, r) in rules.iter().enumerate() {
            let entries = r.m.entries();
            for (_, m) in &entries {
                for (u, w) in used.iter_mut().zip(m) {
                    *u |= w;
                }
            }
            if r.action == Action::Count {
                count.push((i as u32, entries));
            } else {
                let hit = Hit { rule: i as u32, priority: r.priority };
                for (v, m) in entries {
                    decide.insert(v, m, hit);
                }
            }
        }
        AclSet { rules, default, decide, count, used }
    }

    /// True when this set can only allow (no rule, default allow).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.default == Action::Allow
    }

    /// The fields some rule looks at: a flow cache keyed by `key & used_fields` is exact.
    pub fn used_fields(&self) -> &Key {
        &self.used
    }

    /// True when some rule looks at TCP flags: its verdict may change within a connection, so
    /// it cannot be cached per flow.
    pub fn uses_tcp_flags(&self) -> bool {
        self.used[0] >> W0_FLAGS_SHIFT != 0
    }

    /// Decides a key; calls `counted` with every matching `count` rule.
    #[inline]
    pub fn decide(&self, key: &Key, counted: impl FnMut(u32)) -> AclVerdict {
        self.count(key, counted);
        self.classify(key)
    }

    /// Calls `counted` with every `count` rule matching `key` (a flow cache cannot hold these:
    /// they are counted per packet).
    #[inline]
    pub fn count(&self, key: &Key, mut counted: impl FnMut(u32)) {
        for (rule, entries) in &self.count {
            if matches_entries(entries, key) {
                counted(*rule);
            }
        }
    }

    /// The deciding rule for `key` (`allow` or `deny`), or the default.
    #[inline]
    pub fn classify(&self, key: &Key) -> AclVerdict {
        match self.decide.lookup(key) {
            Some(h) => {
                AclVerdict { action: self.rules[h.rule as usize].action, rule: Some(h.rule) }
            }
            None => AclVerdict { action: self.default, rule: None },
        }
    }

    /// The classifier's distinct masks and entries (for benches and status).
    pub fn shape(&self) -> (usize, usize) {
        (self.decide.tables(), self.decide.entries())
    }

    /// True when some `count` rule exists (a flow cache must then still count per packet).
    pub fn has_counts(&self) -> bool {
        !self.count.is_empty()
    }
}
