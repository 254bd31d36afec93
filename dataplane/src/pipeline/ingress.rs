//! Stage 3: checks on what enters a tenant's domain. For now the source MAC: a group or zero
//! source cannot be learned and is never legitimate. Anti-spoofing of addresses per attachment
//! comes with the policy stage.

use crate::batch::Meta;
use crate::vocab::DropReason;
use crate::wire::MacAddr;

/// Checks one frame's source.
#[inline]
pub fn check_one(m: &Meta) -> Result<(), DropReason> {
    if m.src.is_multicast() || m.src == MacAddr::ZERO {
        return Err(DropReason::InvalidSrcMac);
    }
    Ok(())
}
