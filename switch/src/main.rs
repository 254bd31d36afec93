//! The `xswitch` binary: CLI parsing and wiring only; packet and policy logic live in the
//! `dataplane` and `control` crates.

mod cli;
mod control_api;
mod ctl;
mod flowlogs;
mod host;
mod hotplug;
mod lab;
mod metrics;
mod netdev;
mod run;
mod simulate;
mod table;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Demo { simulate: true, frames, .. } => simulate::simulate(frames),
        Command::Demo { keep, .. } => stop_flag().and_then(|stop| lab::run(keep, stop)),
        Command::Run { config } => stop_flag().and_then(|stop| run::run(&config, stop)),
        Command::Ctl { socket, json, what } => match ctl::run(&socket, &what, json) {
            Ok(status) => return status,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A flag set by SIGINT or SIGTERM.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone())?;
    }
    Ok(stop)
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = control::config::load(file)?;
    let snap = control::compile(&cfg, 1)?;
    let uplinks = snap.ports.iter().filter(|p| p.kind == dataplane::snapshot::PortKind::Uplink);
    let attachments: usize = snap.tenants.iter().map(|t| t.attachments.len()).sum();
    println!("{}: OK", file.display());
    println!(
        "  ports: {} ({} uplink), tenants: {}, attachments: {}",
        snap.ports.len(),
        uplinks.count(),
        snap.tenants.len(),
        attachments
    );
    println!(
        "  workers: {}, frames: {} x {} B, rings: {}, MAC table: {} entries",
        cfg.switch.workers,
        cfg.switch.frames,
        cfg.switch.frame_size,
        cfg.switch.ring_size,
        cfg.switch.fdb_capacity
    );
    Ok(())
}
