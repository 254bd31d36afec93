//! Stage 2: which tenant a frame belongs to, from (ingress port, outer VLAN) alone.
//!
//! Nothing the tenant writes inside the frame (MACs, inner tags) can change the answer, which is
//! what makes VLAN hopping impossible: a frame on an untagged attachment that carries any tag
//! resolves to no tenant and is dropped, and on a tagged attachment the outer tag selects the
//! tenant and is removed on the way out.

use crate::batch::Meta;
use crate::snapshot::Snapshot;
use crate::vocab::{DropReason, PortId};

/// Resolves the tenant of one parsed frame.
#[inline]
pub fn resolve_one(snap: &Snapshot, port: PortId, m: &mut Meta) -> Result<(), DropReason> {
    let (t, a) = snap.resolve(port, m.outer_vlan).ok_or(DropReason::UnknownTenant)?;
    m.tenant = t;
    m.attachment = a;
    Ok(())
}
