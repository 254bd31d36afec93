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
    /// The demo lab: network namespaces and veth pairs for the hosts of the embedded demo
    /// config, the switch on them, real traffic (ping, iperf3, attempts across tenants), a
    /// per-tenant table, then the lab is removed (root).
    Demo {
        /// Leave the lab and the switch running until Ctrl-C, to explore.
        #[arg(long)]
        keep: bool,
        /// Instead of the lab: simulated traffic over in-memory ports (no root needed).
        #[arg(long)]
        simulate: bool,
        /// With --simulate: frames each simulated host sends.
        #[arg(long, default_value_t = 1000)]
        frames: u32,
    },
}
