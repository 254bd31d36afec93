//! A cached decision: what the MAC table said, the directions crossed and each direction's
//! ACL outcome, packed into 16 bytes of a flow-cache entry.
#![forbid(unsafe_code)]

use crate::vocab::{Direction, Disposition, DropReason};

/// One direction's ACL outcome as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclOutcome {
    /// Allowed: by this rule, or by the default (`None`); also when the set has no rules.
    Allow(Option<u32>),
    /// Denied: by this rule, or by the default.
    Deny(Option<u32>),
    /// The set looks at TCP flags, which are not part of the flow: classify every packet.
    PerPacket,
}

/// Where a flow goes and what the ACLs say of it, packed as an entry holds it: a hit copies
/// 16 bytes, the disposition the MAC table gave is used as it is, and the accessors decode
/// only what the packet needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Where the frame goes (read straight on the cache's hit path).
    pub(super) out: Disposition,
    /// Per direction k (bits shifted by k): present, to-tenant, denied, per packet.
    pub(super) dirs: u8,
    /// The rule that decided each direction ([`NO_RULE`]: the default action).
    pub(super) rules: [u32; 2],
}

const _: () = assert!(core::mem::size_of::<Decision>() == 16, "a decision is 16 bytes");

/// No rule decided (the default action did).
pub(crate) const NO_RULE: u32 = u32::MAX;
const D_PRESENT: u8 = 0x01;
const D_TO_TENANT: u8 = 0x04;
const D_DENY: u8 = 0x10;
const D_PER_PACKET: u8 = 0x40;

impl Decision {
    /// Packs what the MAC table said (`Tx`, `Flood` or `Drop(Hairpin)`), the directions crossed
    /// (at most two) and each one's ACL outcome.
    pub fn new(out: Disposition, dirs: &[Direction], acl: &[AclOutcome]) -> Decision {
        let out = match out {
            Disposition::Drop(_) => Disposition::Drop(DropReason::Hairpin),
            o => o,
        };
        let mut d = Decision { out, dirs: 0, rules: [NO_RULE; 2] };
        for (k, (dir, a)) in dirs.iter().zip(acl).take(2).enumerate() {
            let mut bits = D_PRESENT;
            if *dir == Direction::ToTenant {
                bits |= D_TO_TENANT;
            }
            match *a {
                AclOutcome::Allow(r) => d.rules[k] = r.unwrap_or(NO_RULE),
                AclOutcome::Deny(r) => {
                    bits |= D_DENY;
                    d.rules[k] = r.unwrap_or(NO_RULE);
                }
                AclOutcome::PerPacket => bits |= D_PER_PACKET,
            }
            d.dirs |= bits << k;
        }
        d
    }

    /// What the MAC table said: `Tx`, `Flood`, or `Drop(Hairpin)`.
    #[inline]
    pub fn out(&self) -> Disposition {
        self.out
    }

    /// The directions the flow crosses (the first `n`), in the order they are checked.
    #[inline]
    pub fn dirs(&self) -> ([Direction; 2], usize) {
        let mut out = [Direction::FromTenant; 2];
        let mut n = 0;
        for (k, o) in out.iter_mut().enumerate() {
            let bits = self.dirs >> k;
            if bits & D_PRESENT == 0 {
                break;
            }
            if bits & D_TO_TENANT != 0 {
                *o = Direction::ToTenant;
            }
            n += 1;
        }
        (out, n)
    }

    /// The ACL outcome of direction `k` (of [`Decision::dirs`]).
    #[inline]
    pub fn acl(&self, k: usize) -> AclOutcome {
        let bits = self.dirs >> k;
        let rule = self.rules.get(k).copied().filter(|&r| r != NO_RULE);
        if bits & D_PER_PACKET != 0 {
            AclOutcome::PerPacket
        } else if bits & D_DENY != 0 {
            AclOutcome::Deny(rule)
        } else {
            AclOutcome::Allow(rule)
        }
    }

    /// True when every direction is allowed by a cached verdict (nothing to classify per
    /// packet, nothing denied): the common case, decided without decoding.
    #[inline]
    pub fn allowed(&self) -> bool {
        self.dirs & (D_DENY | D_DENY << 1 | D_PER_PACKET | D_PER_PACKET << 1) == 0
    }

    /// The deciding rules of both directions (`None`: the default, or no direction).
    #[inline]
    pub fn rules(&self) -> [Option<u32>; 2] {
        self.rules.map(|r| (r != NO_RULE).then_some(r))
    }
}

impl core::fmt::Debug for Decision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (dirs, n) = self.dirs();
        let acl: Vec<AclOutcome> = (0..n).map(|k| self.acl(k)).collect();
        f.debug_struct("Decision")
            .field("out", &self.out())
            .field("dirs", &&dirs[..n])
            .field("acl", &acl)
            .finish()
    }
}
