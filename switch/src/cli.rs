//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// xswitch: a kernel-bypass virtual switch that keeps per-tenant policy, shaping and tracing.
#[derive(Debug, Parser)]
#[command(name = "xswitch", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--version`: the crate version, the git commit and the build profile (`build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("XSWITCH_BUILD"), ")");

const fn lab_default_prefix() -> &'static str {
    crate::lab::DEFAULT_PREFIX
}

/// A shell, for `xswitch completions`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// Subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load, validate and compile a config file; print a summary or every error.
    CheckConfig {
        /// The config file (TOML). `XSWITCH__SECTION__KEY` variables override it.
        file: PathBuf,
        /// Also compare it with the running switch's config (through its control socket:
        /// `--socket`, else this file's `control.socket`): what a reload to it would add,
        /// remove and change, and whether it would be refused. Applies nothing.
        #[arg(long)]
        against_running: bool,
        /// The running switch's control socket (with --against-running).
        #[arg(long, env = "XSWITCH_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// Run the switch on the ports of a config file until SIGINT or SIGTERM (root).
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// What to log: error, warn, info, debug or trace (RUST_LOG, when set, wins);
        /// `xswitch ctl log-level` changes it while the switch runs.
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Log lines as text or as JSON objects.
        #[arg(long, value_enum, default_value = "text")]
        log_format: crate::logging::LogFormat,
        /// Take the ports and state over from the switch running on the config's control
        /// socket, losing no frame (an upgrade: run the new binary with this). `or-restart`:
        /// where it refuses, stop it and start afresh.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "required")]
        takeover: Option<crate::run::Takeover>,
    },
    /// Ask a running switch (through its control socket; root).
    Ctl {
        /// The control socket (default: the config's `control.socket` with --config, else
        /// /run/xswitch/xswitch.sock).
        #[arg(long, global = true, env = "XSWITCH_SOCKET")]
        socket: Option<PathBuf>,
        /// The switch's config file: its `control.socket` is the socket to ask.
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// What to ask.
        #[command(subcommand)]
        what: CtlCommand,
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
        /// Names the lab's namespaces and interfaces `PREFIX-HOST`, and (other than the
        /// default) gives it a control socket and metrics port of its own: a demo never
        /// touches another lab.
        #[arg(long, default_value = lab_default_prefix())]
        prefix: String,
        /// 2: two hosts (two switches, each with an underlay port), a tenant spanning both
        /// over VXLAN with the cluster map in etcd (started by the demo; needs `etcd`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
        hosts: u32,
    },
    /// Print a shell completion script (`xswitch completions bash > /etc/bash_completion.d/xswitch`).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the manual page (roff: `xswitch man | man -l -`).
    Man,
}

/// `xswitch ctl` commands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Config, generation, uptime, workers, reloads, frame accounting.
    Status,
    /// Ports: interface, queues and their workers, traffic, drops by reason.
    Ports,
    /// Tenants: attachments, rules, connections, traffic, drops by reason.
    Tenants,
    /// Totals: traffic, drops by reason, MAC learning.
    Counters,
    /// Re-read the config file and apply what changed (as SIGHUP does): ports and tenants
    /// added, removed and changed live, nothing else disturbed; prints what it did.
    Reload {
        /// Only print what a reload would add, remove and change, and whether it would be
        /// refused (and why); apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The MAC table of a tenant (every worker's entries).
    Fdb {
        /// Tenant name.
        tenant: String,
    },
    /// The connections tracked for a tenant's security group.
    Connections {
        /// Tenant name.
        tenant: String,
    },
    /// A tenant's busiest flows (tenants with policy or flow logs keep per-flow counters).
    Flows {
        /// Tenant name.
        tenant: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        top: u64,
        /// Rank by bytes or packets.
        #[arg(long, default_value = "bytes")]
        by: String,
    },
    /// Every pipeline stage's verdict for a packet described here, as if it arrived on
    /// `--port` now (nothing is learned, cached or opened).
    Trace(TraceArgs),
    /// Live capture of one tenant's frames into a pcap file (tcpdump, tshark, Wireshark).
    #[command(subcommand)]
    Capture(CaptureCommand),
    /// Change what the running switch logs (error, warn, info, debug, trace).
    LogLevel(LogLevelArgs),
    /// Upgrade without losing a frame: the running switch starts its binary again (the new
    /// version installed at the same path, or --binary) with `run --takeover`, which takes
    /// its ports and state over; the old process then exits. `ctl status` says who runs.
    Upgrade {
        /// The binary to start instead of the one at the running switch's path.
        #[arg(long)]
        binary: Option<String>,
    },
    /// A sampled live trace: real frames of a tenant, what the pipeline did with each, and
    /// every stage's verdict.
    TraceLive {
        /// Tenant name.
        tenant: String,
        /// How many frames (1..=100).
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// One frame in this many.
        #[arg(long, default_value_t = 1)]
        every: u64,
        /// Give up after this many seconds (answering with what was sampled).
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

/// `xswitch ctl capture`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum CaptureCommand {
    /// Start capturing (one capture at a time): a tenant's frames, or everything arriving on a
    /// port (`--port`, frames of no tenant and malformed ones too).
    Start {
        /// Tenant name (or give --port).
        #[arg(required_unless_present = "port")]
        tenant: Option<String>,
        /// Capture every frame arriving on this switch port, before its tenant is known.
        #[arg(long, conflicts_with = "tenant")]
        port: Option<String>,
        /// The file to write (on the switch's host); `-`: stream it to standard output, for
        /// `| tshark -r -` or `| wireshark -k -i -` (until the limits, or Ctrl-C).
        #[arg(short = 'w', long)]
        file: String,
        /// pcap, or pcapng: one interface per switch port and per frame the pipeline's
        /// verdict and drop reason as a comment.
        #[arg(long, default_value = "pcap")]
        format: String,
        /// Dropped frames only.
        #[arg(long)]
        drops_only: bool,
        /// Only frames from or to this address.
        #[arg(long)]
        host: Option<String>,
        /// Only frames from or to this prefix.
        #[arg(long)]
        net: Option<String>,
        /// Only frames with this TCP or UDP source or destination port.
        #[arg(long)]
        l4_port: Option<u16>,
        /// Only this protocol (tcp, udp, icmp, icmpv6 or a number).
        #[arg(long)]
        proto: Option<String>,
        /// Only from-tenant or to-tenant frames.
        #[arg(long)]
        direction: Option<String>,
        /// Stop after this many frames.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many bytes.
        #[arg(long)]
        bytes: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Bytes kept of each frame.
        #[arg(long)]
        snaplen: Option<u64>,
    },
    /// Stop the capture and close the file; prints what was written.
    Stop,
}

/// `xswitch ctl log-level LEVEL`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogLevelArgs {
    /// error, warn, info, debug or trace.
    pub level: String,
}

/// The packet `xswitch ctl trace` asks about.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Ingress port name.
    #[arg(long)]
    pub port: String,
    /// Source address (IPv4 or IPv6).
    #[arg(long)]
    pub src: String,
    /// Destination address.
    #[arg(long)]
    pub dst: String,
    /// tcp, udp or icmp.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// Source port.
    #[arg(long, default_value_t = 40000)]
    pub sport: u16,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    pub dport: u16,
    /// TCP flags, comma-separated.
    #[arg(long, default_value = "syn")]
    pub flags: String,
    /// Outer VLAN the packet arrives with.
    #[arg(long)]
    pub vlan: Option<u16>,
    /// Source MAC.
    #[arg(long)]
    pub src_mac: Option<String>,
    /// Destination MAC (default: the one the tenant's tables know for --dst, from its
    /// anti-spoofing config or its hosts' flows; broadcast when none is known).
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// Exit with status 1 when the verdict is a drop (for scripts).
    #[arg(long)]
    pub exit_code: bool,
}

impl CtlCommand {
    /// The API's name of the command.
    pub fn as_str(&self) -> &'static str {
        match self {
            CtlCommand::Status => "status",
            CtlCommand::Ports => "ports",
            CtlCommand::Tenants => "tenants",
            CtlCommand::Counters => "counters",
            CtlCommand::Reload { .. } => "reload",
            CtlCommand::Fdb { .. } => "fdb",
            CtlCommand::Connections { .. } => "connections",
            CtlCommand::Flows { .. } => "flows",
            CtlCommand::Trace(_) => "trace",
            CtlCommand::TraceLive { .. } => "trace_live",
            CtlCommand::Capture(CaptureCommand::Start { .. }) => "capture_start",
            CtlCommand::Capture(CaptureCommand::Stop) => "capture_stop",
            CtlCommand::LogLevel(_) => "log_level",
            CtlCommand::Upgrade { .. } => "upgrade",
        }
    }

    /// The tenant the command is about, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            CtlCommand::Fdb { tenant }
            | CtlCommand::Connections { tenant }
            | CtlCommand::Flows { tenant, .. } => Some(tenant),
            _ => None,
        }
    }
}
