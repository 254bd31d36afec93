//! One problem with a config: the field path and the reason. Below validation and the
//! sections' own checks (`policy`, `shaping`), which all report them.

use std::fmt;

/// One problem with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted path of the field.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Issue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Issue {
        Issue { path: path.into(), reason: reason.into() }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}
