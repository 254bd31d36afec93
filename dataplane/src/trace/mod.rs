//! What the dataplane tells the operator: counters by reason, captures, sampled live traces and
//! flow records. Workers count in plain per-worker memory; `control`
//! publishes. Nothing here is shared between threads or touched atomically per packet.
#![forbid(unsafe_code)]

pub mod capture;
pub mod counters;
pub mod flowlog;
pub mod record;
pub mod sample;

pub use counters::{Counters, DropReason, ParseError};
