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
    /// The file cannot be read (missing, no permission, not UTF-8).
    #[error("{file}: cannot read it: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML, or does not fit the model.
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

/// Keys the `config` crate can take: it reads every key as a path expression, so a quoted key
/// like `'a[3939979799]'` would make it grow a list to four billion entries and abort the
/// process (found by the config fuzz target), and `'a.b'` would land somewhere else. Every
/// key, names of ports and tenants included, must be a plain identifier. Checked on the TOML
/// before the `config` crate sees it; TOML that does not parse is left to it to report.
fn check_keys(file: &Path, text: &str, env: &[(String, String)]) -> Result<(), ConfigError> {
    fn walk(t: &toml::Table, at: &str, bad: &mut Vec<Issue>) {
        for (k, v) in t {
            let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                bad.push(Issue::new(
                    &path,
                    format!("key {k:?}: keys (names of ports and tenants too) may hold only letters, digits, '_' and '-'"),
                ));
                continue;
            }
            match v {
                toml::Value::Table(t) => walk(t, &path, bad),
                toml::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        if let toml::Value::Table(t) = v {
                            walk(t, &format!("{path}[{i}]"), bad);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut bad = Vec::new();
    if let Ok(t) = text.parse::<toml::Table>() {
        walk(&t, "", &mut bad);
    }
    for (k, _) in env {
        let Some(rest) = k.strip_prefix("XSWITCH__") else { continue };
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bad.push(Issue::new(
                format!("environment {k}"),
                "override names may hold only letters, digits, '_' and '-'",
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { file: file.to_path_buf(), issues: bad })
    }
}

/// The keys of `text` (and of the `env` overrides), then every unknown key and wrong value of
/// the file at once, with places (serde alone stops at the first); `file` names it.
fn check_text(file: &Path, text: &str, env: &[(String, String)]) -> Result<(), ConfigError> {
    check_keys(file, text, env)?;
    let schema = super::schema::check(text);
    if schema.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { file: file.to_path_buf(), issues: schema })
    }
}

/// Loads, overrides from the process environment, and validates. The file is read once: the
/// key check and the `config` crate see the same text even if the file changes meanwhile. Its
/// `include` fragments join it (see [`with_fragments`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
    let name = path.display().to_string();
    let Some((merged, origin)) = with_fragments(path, &text)? else {
        return load_str_with_env(&name, &text, None);
    };
    // The main file's own keys, with its own lines, before the fragments join it.
    check_text(path, &text, &[])?;
    load_str_with_env(&name, &merged, None).map_err(|e| match e {
        // A problem in a fragment's port or tenant names the fragment.
        ConfigError::Invalid { file, mut issues } => {
            for i in &mut issues {
                if let Some((_, f)) = origin.iter().find(|(key, _)| {
                    i.path == *key
                        || i.path.starts_with(&format!("{key}."))
                        || i.path.starts_with(&format!("{key}["))
                }) {
                    i.path = format!("{} ({})", i.path, f.display());
                }
            }
            ConfigError::Invalid { file, issues }
        }
        other => other,
    })
}

/// Where a fragment's ports and tenants came from: `ports.NAME` or `tenants.NAME`, and the file.
type Origin = Vec<(String, PathBuf)>;

/// The file names in `dir` that `pattern` (`*` any run, `?` one character) matches, sorted.
fn glob(dir: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
    fn matches(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => matches(&p[1..], n) || (!n.is_empty() && matches(p, &n[1..])),
            (Some(b'?'), Some(_)) => matches(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let full = dir.join(pattern);
    let (parent, name) = match (full.parent(), full.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.to_string()),
        _ => return Ok(Vec::new()),
    };
    if !name.contains(['*', '?']) {
        // A plain path must exist.
        std::fs::metadata(&full)?;
        return Ok(vec![full]);
    }
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&parent) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| matches(name.as_bytes(), n.as_bytes()))
            })
            .map(|e| e.path())
            .collect(),
        // No directory yet: no fragment yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// The main file's text with its `include` fragments' `[ports.*]` and `[tenants.*]` joined in,
/// and where each came from; `None` when it includes nothing. Each fragment is checked on its
/// own first (its keys and their types, with its own lines), so every error names the file it
/// is in; a fragment may hold only ports and tenants, and a name defined twice is an error that
/// names both files. An orchestrator adds or removes one file per VM or tenant and reloads.
pub fn with_fragments(path: &Path, text: &str) -> Result<Option<(String, Origin)>, ConfigError> {
    let Ok(mut main) = text.parse::<toml::Table>() else { return Ok(None) };
    let Some(include) = main.remove("include") else { return Ok(None) };
    let invalid = |file: &Path, path: &str, reason: String| ConfigError::Invalid {
        file: file.to_path_buf(),
        issues: vec![Issue::new(path, reason)],
    };
    let patterns: Vec<String> = match &include {
        toml::Value::Array(a) if a.iter().all(toml::Value::is_str) => {
            a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
        }
        _ => {
            return Err(invalid(
                path,
                "include",
                "a list of file patterns such as [\"tenants.d/*.toml\"]".into(),
            ));
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut origin: Origin = Vec::new();
    for (k, pattern) in patterns.iter().enumerate() {
        let files = glob(dir, pattern)
            .map_err(|e| invalid(path, &format!("include[{k}]"), format!("{pattern:?}: {e}")))?;
        for file in files {
            let frag = std::fs::read_to_string(&file)
                .map_err(|source| ConfigError::Read { file: file.clone(), source })?;
            check_text(&file, &frag, &[])?;
            let table = frag
                .parse::<toml::Table>()
                .map_err(|e| invalid(&file, "", format!("not TOML: {}", e.message())))?;
            for (section, v) in table {
                if section != "ports" && section != "tenants" {
                    return Err(invalid(
                        &file,
                        &section,
                        "a fragment holds only [ports.NAME] and [tenants.NAME] sections".into(),
                    ));
                }
                let toml::Value::Table(entries) = v else {
                    return Err(invalid(
                        &file,
                        &section,
                        "must be a table of named entries".into(),
                    ));
                };
                let into = main
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(into) = into.as_table_mut() else { continue };
                for (name, entry) in entries {
                    let key = format!("{section}.{name}");
                    if into.contains_key(&name) {
                        let other = origin.iter().find(|(k, _)| *k == key).map_or_else(
                            || path.display().to_string(),
                            |(_, f)| f.display().to_string(),
                        );
                        return Err(invalid(&file, &key, format!("is defined in {other} too")));
                    }
                    into.insert(name, entry);
                    origin.push((key, file.clone()));
                }
            }
        }
    }
    let merged = toml::to_string(&main)
        .map_err(|e| invalid(path, "include", format!("joining the fragments: {e}")))?;
    Ok(Some((merged, origin)))
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
    let vars: Vec<(String, String)> = match &env {
        Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().unwrap_or_default())))
            .collect(),
    };
    check_text(Path::new(name), text, &vars)?;
    let built = config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(env_source(env))
        .build();
    finish(Path::new(name), built, &vars)
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
        let list = crate::cpulist::parse_cpulist(&spec);
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

/// The `XSWITCH__` variable (and its value) whose key the `config` crate's error names.
fn env_culprit<'a>(
    cause: &config::ConfigError,
    env: &'a [(String, String)],
) -> Option<(&'a str, &'a str)> {
    let text = cause.to_string();
    env.iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("XSWITCH__")?.to_ascii_lowercase().replace("__", ".");
            Some((k.as_str(), v.as_str(), key))
        })
        .find(|(_, _, key)| {
            text.contains(&format!("`{key}`")) || text.contains(&format!("key `{key}"))
        })
        .map(|(k, v, _)| (k, v))
}

/// The `config` crate's message without the location it adds (`for key ...`).
fn cause_text(cause: &config::ConfigError) -> String {
    let t = cause.to_string();
    t.split(" for key").next().unwrap_or(&t).to_string()
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
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let file = path.to_path_buf();
    let mut cfg: Config = built.and_then(|c| c.try_deserialize()).map_err(|cause| {
        // The file passed the schema check: a wrong value now came from an override, and
        // the error names the variable, not the file.
        match env_culprit(&cause, env) {
            Some((var, value)) => ConfigError::Invalid {
                file: file.clone(),
                issues: vec![Issue::new(
                    format!("environment {var}"),
                    format!("{value:?}: {}", cause_text(&cause)),
                )],
            },
            None => ConfigError::Load { file: file.clone(), cause },
        }
    })?;
    let mut issues = expand_vf_ranges(&mut cfg);
    issues.extend(validate(&cfg));
    if issues.is_empty() { Ok(cfg) } else { Err(ConfigError::Invalid { file, issues }) }
}
