//! Loading: one TOML file, then environment overrides `XSWITCH__SECTION__KEY=value` (for
//! example `XSWITCH__SWITCH__WORKERS=2`), deserialized into [`Config`] and validated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};

use super::model::Config;
use super::validate::{Issue, validate};

/// Why a config could not be loaded. Every message starts with the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing, unreadable, not TOML, or does not fit the model.
    #[error("{file}: {cause}")]
    Load {
        /// The file.
        file: PathBuf,
        /// What the `config` crate or serde said (names the key). Part of the message, so it
        /// is deliberately not also a `#[source]` (it would print twice).
        cause: config::ConfigError,
    },
    /// The file parsed but makes no sense.
    #[error("{file}: {} problem(s):\n{}", issues.len(), format_issues(issues))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        issues: Vec<Issue>,
    },
}

fn format_issues(issues: &[Issue]) -> String {
    issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n")
}

/// Loads, overrides from the process environment, and validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let built = config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .add_source(env_source(None))
        .build();
    finish(path, built)
}

/// As [`load`], from text (tests, the embedded demo config). `name` stands for the file.
pub fn load_str(name: &str, text: &str) -> Result<Config, ConfigError> {
    load_str_with_env(name, text, None)
}

/// As [`load_str`], with the environment given as a map instead of read from the process
/// (so tests do not race on process-wide variables).
pub fn load_str_with_env(
    name: &str,
    text: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigError> {
    let built = config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(env_source(env))
        .build();
    finish(Path::new(name), built)
}

/// Replaces every port that names a range of VFs (`vfs`) by one port per VF, named after the
/// port and the index (`vf` with `vfs = "0-3"`: `vf0` .. `vf3`).
fn expand_vf_ranges(cfg: &mut Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    let ranged: Vec<String> =
        cfg.ports.iter().filter(|(_, p)| p.vfs.is_some()).map(|(n, _)| n.clone()).collect();
    for name in ranged {
        let Some(p) = cfg.ports.remove(&name) else { continue };
        let at = format!("ports.{name}.vfs");
        let spec = p.vfs.clone().unwrap_or_default();
        let list = crate::sriov::parse_cpulist(&spec);
        if list.is_empty() || p.pf.is_none() || p.vf.is_some() {
            issues.push(Issue::new(
                at,
                format!(
                    "{spec:?}: give a pf and VF indexes such as \"0-7\" or \"0,2,4\" (not with vf)"
                ),
            ));
            continue;
        }
        for i in list {
            let port = format!("{name}{i}");
            if cfg.ports.contains_key(&port) {
                issues.push(Issue::new(
                    &at,
                    format!("VF {i} makes a port {port}, which exists already"),
                ));
                continue;
            }
            let mut one = p.clone();
            one.vfs = None;
            one.vf = Some(i);
            cfg.ports.insert(port, one);
        }
    }
    issues
}

fn env_source(vars: Option<HashMap<String, String>>) -> Environment {
    Environment::with_prefix("XSWITCH")
        .source(vars)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("switch.cores")
}

fn finish(
    path: &Path,
    built: Result<config::Config, config::ConfigError>,
) -> Result<Config, ConfigError> {
    let file = path.to_path_buf();
    let mut cfg: Config = built
        .and_then(|c| c.try_deserialize())
        .map_err(|cause| ConfigError::Load { file: file.clone(), cause })?;
    let mut issues = expand_vf_ranges(&mut cfg);
    issues.extend(validate(&cfg));
    if issues.is_empty() { Ok(cfg) } else { Err(ConfigError::Invalid { file, issues }) }
}
