//! `xswitch ctl`: a client of the control socket. Tables for people by default, the API's JSON
//! with `--json`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, bail};
use control::api::{CaptureRequest, FlowOrder, Request, Response, TraceRequest};
use serde_json::{Value, json};

/// The socket to ask: `--socket` (or `XSWITCH_SOCKET`), else the `control.socket` of the
/// config given with `--config`, else the default.
pub fn socket_path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    match config {
        Some(file) => {
            let cfg = control::config::load(file)?;
            Ok(PathBuf::from(cfg.control.socket))
        }
        None => Ok(PathBuf::from(control::config::model::DEFAULT_CONTROL_SOCKET)),
    }
}

/// What a reload did or (a dry run) would do: a row per port and tenant added, removed or
/// changed, the tenants left untouched, and the refusals.
pub fn print_reload(d: &Value, dry_run: bool) {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| match x.get("name") {
                Some(n) => format!("{} ({})", cell(n), join(&x["fields"])),
                None => cell(x),
            })
            .collect()
    };
    let mut rows = Vec::new();
    for what in ["ports", "tenants"] {
        for (change, verb) in [("added", "added"), ("removed", "removed"), ("changed", "changed")] {
            for n in names(&d[what][change]) {
                rows.push(json!({ "what": &what[..what.len() - 1], "name": n, "change": verb }));
            }
        }
    }
    let untouched = names(&d["tenants"]["untouched"]);
    let refused = names(&d["refused"]);
    if dry_run {
        let verdict = if refused.is_empty() { "would apply" } else { "would be REFUSED" };
        println!("reload of generation {}: {verdict}", d["generation"]);
    } else {
        println!("reloaded: generation {}", d["generation"]);
    }
    if rows.is_empty() {
        println!("no port or tenant changes");
    } else {
        print_rows(&Value::Array(rows), &["what", "name", "change"], |r, c| cell(&r[c]));
    }
    if !untouched.is_empty() {
        println!(
            "untouched tenants (keep MACs, connections, cached decisions, counters): {}",
            untouched.join(", ")
        );
    }
    for n in names(&d["notes"]) {
        println!("note: {n}");
    }
    for r in refused {
        println!("refused: {r}");
    }
}

/// The strings of a JSON array, comma-separated.
fn join(v: &Value) -> String {
    v.as_array().into_iter().flatten().map(cell).collect::<Vec<_>>().join(", ")
}

/// Sends a request and returns the response's `data`, or the switch's error.
pub fn request(socket: &Path, req: &Request) -> anyhow::Result<Value> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::metadata(socket)
        && !meta.file_type().is_socket()
    {
        bail!(
            "{} is not a socket (a {}): give the switch's control socket (--socket, \
             XSWITCH_SOCKET, or --config with the switch's config file)",
            socket.display(),
            if meta.is_dir() { "directory" } else { "file" }
        );
    }
    let conn = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "xswitch is not running (no control socket answers at {}; start it with \
             `xswitch run -c FILE`, or give --socket)",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: the control socket is for root",
            socket.display()
        ),
        _ => anyhow::anyhow!("connecting to {}: {e}", socket.display()),
    })?;
    // A reload compiles the config; give it time.
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(&conn, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).context("reading the switch's answer")?;
    let reply: Response =
        serde_json::from_str(&line).context("the switch's answer is not an answer")?;
    reply.into_result().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs one ctl command and prints its answer. The exit status is failure only for a trace
/// asked `--exit-code` whose verdict is a drop (errors are the caller's).
pub fn run(
    socket: &Path,
    what: &crate::cli::CtlCommand,
    as_json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::cli::{CaptureCommand, CtlCommand};
    let cmd = what.as_str();
    let req = match what {
        CtlCommand::Status => Request::Status {},
        CtlCommand::Ports => Request::Ports {},
        CtlCommand::Tenants => Request::Tenants {},
        CtlCommand::Counters => Request::Counters {},
        CtlCommand::Reload { dry_run } => Request::Reload { dry_run: *dry_run, file: None },
        CtlCommand::Fdb { tenant } => Request::Fdb { tenant: tenant.clone() },
        CtlCommand::Connections { tenant } => Request::Connections { tenant: tenant.clone() },
        CtlCommand::Flows { tenant, top, by } => Request::Flows {
            tenant: tenant.clone(),
            top: *top,
            by: match by.as_str() {
                "bytes" => FlowOrder::Bytes,
                "packets" => FlowOrder::Packets,
                other => bail!("--by {other:?}: bytes or packets"),
            },
        },
        CtlCommand::Trace(t) => Request::Trace(TraceRequest {
            port: t.port.clone(),
            src: t.src.clone(),
            dst: t.dst.clone(),
            proto: t.proto.clone(),
            sport: t.sport,
            dport: t.dport,
            flags: t.flags.clone(),
            vlan: t.vlan,
            src_mac: t.src_mac.clone(),
            dst_mac: t.dst_mac.clone(),
        }),
        CtlCommand::TraceLive { tenant, count, every, timeout } => Request::TraceLive {
            tenant: tenant.clone(),
            count: *count,
            every: *every,
            timeout_secs: *timeout,
        },
        CtlCommand::Capture(CaptureCommand::Start {
            tenant,
            port,
            file,
            format,
            drops_only,
            host,
            net,
            l4_port,
            proto,
            direction,
            count,
            bytes,
            duration,
            snaplen,
        }) => {
            let mut req = CaptureRequest {
                tenant: tenant.clone(),
                on_port: port.clone(),
                file: PathBuf::new(),
                format: format.clone(),
                drops_only: *drops_only,
                host: host.clone(),
                net: net.clone(),
                port: *l4_port,
                proto: proto.clone(),
                direction: direction.clone(),
                count: *count,
                bytes: *bytes,
                duration_secs: *duration,
                snaplen: *snaplen,
            };
            if file == "-" {
                return stream_capture(socket, req);
            }
            // The switch opens the file: make a relative path absolute here, where the user is.
            req.file = std::path::absolute(file).unwrap_or_else(|_| file.into());
            Request::CaptureStart(req)
        }
        CtlCommand::Capture(CaptureCommand::Stop) => Request::CaptureStop {},
        CtlCommand::LogLevel(l) => Request::LogLevel { level: l.level.clone() },
        CtlCommand::Upgrade { binary } => Request::Upgrade { binary: binary.clone() },
    };
    let data = request(socket, &req)?;
    let status = match what {
        crate::cli::CtlCommand::Trace(t) if t.exit_code && data["verdict"]["action"] == "drop" => {
            std::process::ExitCode::from(1)
        }
        _ => std::process::ExitCode::SUCCESS,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(status);
    }
    let column = |row: &Value, col: &str| match (col, &row[col]) {
        ("drops", _) => drops(row),
        ("proto", Value::Number(n)) => crate::explain::proto_name(n.as_u64().unwrap_or(0) as u8),
        ("vlan", Value::Null) => "untagged".into(),
        ("attachments", Value::Array(a)) => a
            .iter()
            .map(|x| match x["vlan"].as_u64() {
                Some(v) => format!("{}/vlan {v}", cell(&x["port"])),
                None => cell(&x["port"]),
            })
            .collect::<Vec<_>>()
            .join(", "),
        (c, Value::Number(n)) if c.ends_with("secs") => duration(n.as_f64().unwrap_or(0.0)),
        (c, Value::Number(n)) if c.ends_with("bytes") => bytes(n.as_u64().unwrap_or(0)),
        (_, v) => cell(v),
    };
    match cmd {
        "status" => print_status(&data),
        "ports" => print_rows(
            &data,
            &["name", "interface", "kind", "rx_packets", "tx_packets", "drops"],
            column,
        ),
        "tenants" => print_rows(
            &data,
            &[
                "name",
                "attachments",
                "acl_rules",
                "connections",
                "rx_packets",
                "tx_packets",
                "drops",
            ],
            column,
        ),
        "counters" => {
            // One row per counter; drops, parse checks and MAC-table events that are zero are
            // left out.
            let mut rows = vec![
                json!({ "counter": "received", "value": data["rx_packets"] }),
                json!({ "counter": "sent", "value": data["tx_packets"] }),
                json!({ "counter": "flood copies", "value": data["flood_copies"] }),
                json!({ "counter": "checksums completed", "value": data["checksums_completed"] }),
                json!({ "counter": "large segments cut", "value": data["segmented"] }),
            ];
            for (group, label) in [("drops", "dropped"), ("malformed", "malformed"), ("fdb", "fdb")]
            {
                if let Some(m) = data[group].as_object() {
                    for (k, n) in m.iter().filter(|(_, n)| n.as_u64() != Some(0)) {
                        let name = format!("{label} {}", k.replace('_', " "));
                        rows.push(json!({ "counter": name, "value": n }));
                    }
                }
            }
            print_rows(&Value::Array(rows), &["counter", "value"], column);
        }
        "reload" => {
            print_reload(&data, matches!(what, crate::cli::CtlCommand::Reload { dry_run: true }))
        }
        "log_level" => println!("log level {} (was {})", cell(&data["level"]), cell(&data["was"])),
        "upgrade" => println!(
            "started {} (pid {}): it takes the switch over, then this process exits; `xswitch \
             ctl status` says which runs",
            cell(&data["binary"]),
            cell(&data["pid"])
        ),
        "capture_start" => {
            println!("capturing {} into {}", cell(&data["tenant"]), cell(&data["file"]))
        }
        "capture_stop" => println!(
            "{}: {} frames, {} bytes written ({} copies skipped: no buffer free)",
            cell(&data["file"]),
            data["frames"],
            data["bytes"],
            data["skipped"]
        ),
        "trace" => {
            println!(
                "{:<16} {} ({})",
                "destination MAC",
                cell(&data["dst_mac"]),
                cell(&data["dst_mac_from"])
            );
            for s in data["steps"].as_array().into_iter().flatten() {
                println!("{:<16} {}", cell(&s["stage"]), cell(&s["outcome"]));
            }
            println!();
            println!("verdict: {}", verdict_line(&data["verdict"]));
        }
        "trace_live" => {
            let samples = data["samples"].as_array().cloned().unwrap_or_default();
            if samples.is_empty() {
                println!("no frame of {} seen in time", cell(&data["tenant"]));
            }
            for (k, x) in samples.iter().enumerate() {
                println!(
                    "frame {} ({} bytes on {}, worker {}, {:.0} ms ago): {}; flow cache: {}",
                    k + 1,
                    x["len"],
                    cell(&x["port"]),
                    x["worker"],
                    x["ago_ms"].as_f64().unwrap_or(0.0),
                    cell(&x["outcome"]),
                    cell(&x["flow_cache"]),
                );
                for s in x["steps"].as_array().into_iter().flatten() {
                    println!("  {:<16} {}", cell(&s["stage"]), cell(&s["outcome"]));
                }
            }
        }
        "fdb" => {
            print_rows(&data, &["mac", "port", "vlan", "static", "age_secs", "worker"], column)
        }
        "connections" => {
            let tenant = what.tenant().unwrap_or_default();
            let empty = data.as_array().is_none_or(Vec::is_empty);
            // An empty table could mean "no connections" or "nothing is tracked": say which.
            let grouped = || {
                let all = request(socket, &Request::Tenants {}).unwrap_or(Value::Null);
                all.as_array().into_iter().flatten().any(|t| {
                    t["name"].as_str() == Some(tenant) && t["security_group"] == Value::Bool(true)
                })
            };
            if empty && !grouped() {
                println!("tenant {tenant} has no security group: its connections are not tracked");
                return Ok(status);
            }
            print_rows(&data, &["proto", "from", "to", "state", "idle_secs", "worker"], column)
        }
        "flows" => print_rows(
            &data,
            &["proto", "from", "to", "in_port", "packets", "bytes", "secs", "action", "worker"],
            column,
        ),
        _ => println!("{data}"),
    }
    Ok(status)
}

/// `capture start ... -w -`: the switch writes into a named pipe this process reads and copies
/// to standard output, until the capture's limits end it, the reader of standard output goes
/// away, or SIGINT/SIGTERM; then the capture is stopped. What was written goes to standard
/// error (standard output is the capture).
fn stream_capture(
    socket: &Path,
    mut req: CaptureRequest,
) -> anyhow::Result<std::process::ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = std::env::temp_dir().join(format!("xswitch-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let fifo = dir.join("capture.pipe");
    let cleanup = |d: &Path| {
        let _ = std::fs::remove_dir_all(d);
    };
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        cleanup(&dir);
        bail!("cannot make a named pipe in {} (mkfifo)", dir.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("registering a signal")?;
    }
    // The reader first: the switch's open of the pipe waits for it.
    let path = fifo.clone();
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut pipe = std::fs::File::open(&path)?;
        let mut out = std::io::stdout().lock();
        match std::io::copy(&mut pipe, &mut out) {
            // The reader of standard output went away: the capture is stopped below.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
            r => r,
        }
    });
    req.file = fifo.clone();
    if let Err(e) = request(socket, &Request::CaptureStart(req)) {
        // Unblocks the reader, waiting in its open.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        let _ = reader.join();
        cleanup(&dir);
        return Err(e);
    }
    while !reader.is_finished() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = request(socket, &Request::CaptureStop {});
    let copied = reader.join().map_err(|_| anyhow::anyhow!("the pipe reader panicked"))?;
    cleanup(&dir);
    match stats {
        Ok(s) => eprintln!("xswitch: {} frames captured", s["frames"]),
        // Ended by its own limits: the switch closed the capture already.
        Err(_) => eprintln!("xswitch: capture ended"),
    }
    copied.context("copying the capture")?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A trace's verdict in one line, as `ofproto/trace`'s "Datapath actions".
fn verdict_line(v: &Value) -> String {
    let by = match v["rule"].as_str() {
        Some(r) => format!(" by rule {r}"),
        None => String::new(),
    };
    match v["action"].as_str() {
        Some("drop") => format!("drop ({}){by}", cell(&v["reason"])),
        Some(a) => format!("{a}: {}{by}", cell(&v["to"])),
        None => "unknown".into(),
    }
}

/// A duration as people read it: `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{} h {} min", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// A byte count with a binary unit: `512 B`, `1.5 KiB`, `3.2 MiB`.
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[u]) }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A row's drops by reason, and what the kernel lost before the switch saw it (ports), so
/// "0" means nothing was lost anywhere.
fn drops(row: &Value) -> String {
    let mut parts: Vec<String> =
        row["drops"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(n) = row["kernel_lost"].as_u64().filter(|&n| n > 0) {
        parts.push(format!("kernel={n}"));
    }
    if parts.is_empty() { "0".into() } else { parts.join(" ") }
}

fn print_rows(data: &Value, cols: &[&str], get: impl Fn(&Value, &str) -> String) {
    let rows: Vec<Vec<String>> = data
        .as_array()
        .map(|a| a.iter().map(|r| cols.iter().map(|c| get(r, c)).collect()).collect())
        .unwrap_or_default();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&cols.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
}

fn print_status(d: &Value) {
    println!("config      {}", cell(&d["config"]));
    let from = d["took_over_from"]
        .as_u64()
        .map_or(String::new(), |p| format!(", took the switch over from pid {p}"));
    println!("process     pid {}, version {}{from}", d["pid"], cell(&d["version"]));
    println!("generation  {}", d["generation"]);
    println!("uptime      {}", duration(d["uptime_secs"].as_f64().unwrap_or(0.0)));
    println!("ports       {}, tenants {}", d["ports"], d["tenants"]);
    let r = &d["reloads"];
    println!("reloads     {} applied, {} rejected", r["applied"], r["rejected"]);
    if let Some(e) = r["last_error"].as_str() {
        println!("last error  {e}");
    }
    let f = &d["frames"];
    println!(
        "frames      {} total: {} free, {} fill, {} rx, {} tx, {} completion, {} pending",
        f["total"], f["free"], f["fill"], f["rx"], f["tx"], f["completion"], f["pending"]
    );
    if let Some(ws) = d["workers"].as_array() {
        for w in ws {
            println!(
                "worker {}    generation {}, {} packets, {} busy / {} idle polls",
                w["worker"], w["generation"], w["packets"], w["busy_polls"], w["idle_polls"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_bytes_read_as_people_write_them() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 5 s");
        assert_eq!(duration(7385.0), "2 h 3 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
