//! xswitch control plane: the config model and its validation, compiling config into the
//! dataplane's immutable snapshot (and, in later stages, hot reload, the control API and
//! metrics export).
//!
//! Errors name the file, the field path and the reason. Nothing here runs on the packet path.

pub mod compile;
pub mod config;
pub mod ipfix;

pub use compile::{CompileError, compile};
