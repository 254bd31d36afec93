//! xswitch control plane: the config model and its validation, compiling config into the
//! dataplane's immutable snapshot, IPFIX encoding, and the host's SR-IOV and NUMA facts.
//!
//! Errors name the file, the field path and the reason. Nothing here runs on the packet path.

pub mod api;
pub mod compile;
pub mod config;
pub mod cpulist;
pub mod diff;
pub mod ipfix;
pub mod sriov;

pub use compile::{CompileError, compile, compile_next};
