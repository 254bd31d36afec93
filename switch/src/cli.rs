//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// xswitch: a kernel-bypass virtual switch that keeps per-tenant policy, shaping and tracing.
#[derive(Debug, Parser)]
#[command(name = "xswitch", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load, validate and compile a config file; print a summary or every error.
    CheckConfig {
        /// The config file (TOML). `XSWITCH__SECTION__KEY` variables override it.
        file: PathBuf,
    },
    /// Run the switch on the ports of a config file until SIGINT or SIGTERM (root).
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the demo: the embedded demo config switching simulated tenant traffic over
    /// in-memory ports, then a per-tenant table of what passed and what was dropped.
    Demo {
        /// Frames each simulated host sends.
        #[arg(long, default_value_t = 1000)]
        frames: u32,
    },
}
