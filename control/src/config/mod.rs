//! The config file: its model (serde types), loading (file plus `XSWITCH__` environment
//! overrides through the `config` crate) and validation (every problem, each with its field
//! path and reason).

pub mod issue;
pub mod load;
pub mod model;
pub mod policy;
pub mod schema;
pub mod shaping;
pub mod validate;

pub use load::{ConfigError, load, load_str};
pub use model::Config;
pub use validate::Issue;
