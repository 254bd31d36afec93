//! xswitch dataplane: packet views, the batch pipeline, flow tables, ports and the worker poll
//! loop.
//!
//! The dataplane never reads files, parses config text or talks HTTP: it consumes an immutable
//! [`snapshot::Snapshot`] compiled by `control`. Everything on the packet path is sans-IO and
//! allocation-free; `unsafe` lives only in [`port::afxdp`] (the AF_XDP and memory boundary)
//! and [`mem`] (prefetch hints).

pub mod batch;
pub mod flow;
pub mod frame;
pub mod handoff;
pub mod mem;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod shaping;
pub mod snapshot;
pub mod time;
pub mod trace;
pub mod tso;
pub mod vocab;
pub mod wire;
pub mod worker;
