//! Tables keyed by what the parser found: the per-tenant MAC tables and the flow cache in front
//! of forwarding and policy. Sized when a snapshot is installed; nothing here allocates on the
//! packet path.
#![forbid(unsafe_code)]

pub mod cache;
pub mod decision;
pub mod fdb;
pub mod key;
pub mod overlay;

pub use cache::FlowCache;
pub use fdb::{Fdb, FdbEntry, Learn};
