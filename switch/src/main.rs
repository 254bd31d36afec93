//! The `xswitch` binary: CLI parsing and wiring only; packet and policy logic live in the
//! `dataplane` and `control` crates.

mod bounded;
mod cli;
mod cluster;
mod control_api;
mod ctl;
mod explain;
mod fabric;
mod flowlogs;
mod host;
mod lab;
mod logging;
mod metrics;
mod netdev;
mod privilege;
mod reload;
mod run;
mod simulate;
mod summary;
mod table;
mod takeover;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;

use cli::{Cli, Command};

/// Writes `text` to standard output; a reader that went away (`| head`) is not an error.
fn print_all(text: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file, against_running, socket } => check_config(&file)
            .and_then(|()| if against_running { against(&file, socket) } else { Ok(()) }),
        Command::Demo { simulate: true, hosts: 2, .. } => {
            Err(anyhow::anyhow!("--simulate runs one host; --hosts 2 needs the lab (root)"))
        }
        Command::Demo { simulate: true, frames, .. } => simulate::simulate(frames),
        Command::Demo { keep, prefix, hosts, .. } => {
            logging::init("info", logging::LogFormat::Text)
                .and_then(|()| stop_flag())
                .and_then(|stop| lab::run(keep, stop, &prefix, hosts))
        }
        Command::Run { config, log_level, log_format, takeover } => {
            logging::init(&log_level, log_format)
                .and_then(|()| stop_flag())
                .and_then(|stop| run::run(&config, stop, takeover))
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                cli::Shell::Bash => clap_complete::Shell::Bash,
                cli::Shell::Zsh => clap_complete::Shell::Zsh,
                cli::Shell::Fish => clap_complete::Shell::Fish,
            };
            // Into memory first: clap_complete panics when its writer fails (`| head`).
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "xswitch", &mut text);
            print_all(&text)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut text = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut text)
                .map_err(anyhow::Error::from)
                .and_then(|()| print_all(&text))
        }
        Command::Ctl { socket, config, json, what } => {
            match ctl::socket_path(socket, config.as_deref())
                .and_then(|s| ctl::run(&s, &what, json))
            {
                Ok(status) => return status,
                Err(e) => Err(e),
            }
        }
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

/// What a reload of the running switch to `file` would do (a dry run through its socket).
fn against(file: &std::path::Path, socket: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let socket = ctl::socket_path(socket, Some(file))?;
    let file = std::path::absolute(file)?;
    let req = control::api::Request::Reload { dry_run: true, file: Some(file) };
    let d = ctl::request(&socket, &req)?;
    println!();
    ctl::print_reload(&d, true);
    if !d["applies"].as_bool().unwrap_or(false) {
        anyhow::bail!("the running switch would refuse this config (see above)");
    }
    Ok(())
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
        cfg.frames(),
        cfg.frame_size(crate::netdev::mtu),
        cfg.switch.ring_size,
        cfg.switch.fdb_capacity
    );
    // Not an error: a VM's tap or a container's veth may appear after the config is written.
    for p in snap.ports.iter().filter(|p| !p.interface.is_empty()) {
        if !std::path::Path::new("/sys/class/net").join(&p.interface).exists() {
            eprintln!(
                "warning: port {}: interface {} does not exist on this host (yet); `run` needs it",
                p.name, p.interface
            );
        }
    }
    Ok(())
}
