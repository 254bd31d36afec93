//! Tables keyed by what the parser found: the per-tenant MAC tables (and, later, the flow
//! cache). Sized when a snapshot is installed; nothing here allocates on the packet path.
#![forbid(unsafe_code)]

pub mod fdb;

pub use fdb::{Fdb, FdbEntry, Learn};
