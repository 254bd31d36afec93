//! The AF_XDP boundary: the shared frame area (UMEM memory) and, in the next stage, sockets and
//! rings. This is the only module of the dataplane allowed `unsafe`; each block states the
//! invariants it relies on in a `// SAFETY:` comment.

pub mod umem;
