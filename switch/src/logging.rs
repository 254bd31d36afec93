//! Logs: `tracing` events with timestamps and levels on standard error, as text or JSON lines,
//! the level from `RUST_LOG` or `--log-level` and changeable while the switch runs (`xswitch
//! ctl log-level debug`). The switch logs what it does (start, ports taken, reloads, hotplug,
//! the report at exit), never per packet: the workers count, and the counters are exported.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-02T03:35:08.123456Z  INFO message`
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`).
    Json,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Starts logging: `RUST_LOG` when set, else `level`.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| anyhow::anyhow!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => parse(level)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("starting the log: {e}"))?;
    let _ = FILTER.set(handle);
    Ok(())
}

fn parse(level: &str) -> anyhow::Result<EnvFilter> {
    match level {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(EnvFilter::new(level)),
        other => anyhow::bail!("log level {other:?}: error, warn, info, debug or trace"),
    }
}

/// Changes the level while the switch runs; the old one is returned.
pub fn set_level(level: &str) -> Result<String, String> {
    let handle = FILTER.get().ok_or("logging is not started")?;
    let new = parse(level).map_err(|e| e.to_string())?;
    let mut old = String::new();
    handle
        .modify(|f| {
            old = f.to_string();
            *f = new;
        })
        .map_err(|e| format!("changing the log level: {e}"))?;
    Ok(old)
}
