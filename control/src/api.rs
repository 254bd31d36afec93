//! The control socket's protocol, typed once for the switch (which answers) and `xswitch ctl`
//! (which asks): one JSON request per line, `{"cmd": NAME, ...fields}`, and one JSON answer,
//! `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`. A request with an unknown
//! command, a missing field or a field of the wrong type is refused by serde with a message
//! naming it; the checks between fields (ranges, names that exist) are the switch's.
//!
//! The answers' `data` stay JSON values, built by the switch per command and documented in
//! docs/CONTROL.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a client asks. (The commands without fields are empty struct variants, `Status {}`,
/// so that serde refuses unknown fields on them too.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Config, generation, uptime, workers, reloads, frame accounting.
    Status {},
    /// Per port: interface, queues, traffic, drops.
    Ports {},
    /// Per tenant: attachments, rules, connections, traffic, drops.
    Tenants {},
    /// Totals.
    Counters {},
    /// Read the config file again and apply what changed (or, `dry_run`, only say it).
    Reload {
        /// Apply nothing; say what a reload would do.
        #[serde(default)]
        dry_run: bool,
        /// With `dry_run`: compare this file instead of the switch's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<PathBuf>,
    },
    /// A tenant's MAC table (every worker's).
    Fdb {
        /// The tenant.
        tenant: String,
    },
    /// A tenant's tracked connections.
    Connections {
        /// The tenant.
        tenant: String,
    },
    /// A tenant's busiest flows.
    Flows {
        /// The tenant.
        tenant: String,
        /// How many (1..=10 000).
        #[serde(default = "twenty")]
        top: u64,
        /// By bytes or packets.
        #[serde(default)]
        by: FlowOrder,
    },
    /// The decision trace of a made-up frame.
    Trace(TraceRequest),
    /// Sampled real frames of a tenant with their outcome.
    TraceLive {
        /// The tenant.
        tenant: String,
        /// Samples (1..=100).
        #[serde(default = "ten")]
        count: u64,
        /// One frame in this many.
        #[serde(default = "one")]
        every: u64,
        /// Seconds to wait at most (0.1..=60).
        #[serde(default = "ten_secs")]
        timeout_secs: f64,
    },
    /// Start a capture.
    CaptureStart(CaptureRequest),
    /// Stop the capture.
    CaptureStop {},
    /// Change what the switch logs.
    LogLevel {
        /// A level or a filter (`debug`, `xswitch=trace`).
        level: String,
    },
    /// Start a new process of the switch's binary (`binary`, or the path the running one was
    /// started from, which an upgrade has replaced) with `--takeover`: it takes the switch
    /// over as `xswitch run --takeover` does, as a child of the running one (so under systemd
    /// it stays in the service and becomes its main process).
    Upgrade {
        /// The binary to start.
        #[serde(default)]
        binary: Option<String>,
    },
    /// A new process asks for the running switch's ports and state (`xswitch run
    /// --takeover`); the answer carries descriptors (docs/CONTROL.md, "Takeover").
    Takeover(TakeoverOffer),
}

/// What a process that wants to take over brings: what it can read and the shape it would run
/// with. The running switch refuses, saying why, what it cannot hand over as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeoverOffer {
    /// The version of the handed-over state the new process reads.
    pub version: u32,
    /// `switch.frames` of its config (0: sized from the ports, any running area will do).
    pub frames: u32,
    /// `switch.frame_size`.
    pub frame_size: u32,
    /// `switch.workers`.
    pub workers: u32,
    /// `switch.ring_size`.
    pub ring_size: u32,
    /// Its ports: (name, interface, queues).
    pub ports: Vec<(String, String, u32)>,
}

fn twenty() -> u64 {
    20
}

fn ten() -> u64 {
    10
}

fn one() -> u64 {
    1
}

fn ten_secs() -> f64 {
    10.0
}

/// What `flows` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowOrder {
    /// Bytes.
    #[default]
    Bytes,
    /// Packets.
    Packets,
}

/// `trace`: a frame arriving on `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The ingress port.
    pub port: String,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// tcp, udp or icmp.
    #[serde(default = "tcp")]
    pub proto: String,
    /// Source port.
    #[serde(default = "sport")]
    pub sport: u16,
    /// Destination port.
    #[serde(default = "dport")]
    pub dport: u16,
    /// TCP flags, comma-separated.
    #[serde(default = "syn")]
    pub flags: String,
    /// Outer VLAN.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Source MAC.
    #[serde(default)]
    pub src_mac: Option<String>,
    /// Destination MAC (default: the one the tenant's tables know for `dst`).
    #[serde(default)]
    pub dst_mac: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

fn sport() -> u16 {
    40000
}

fn dport() -> u16 {
    80
}

fn syn() -> String {
    "syn".into()
}

/// `capture_start`: a tenant's frames (or a whole port's) into a file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The tenant (or `on_port`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// A whole port (or `tenant`).
    #[serde(default)]
    pub on_port: Option<String>,
    /// Where (the switch opens it: an absolute path or a named pipe).
    pub file: PathBuf,
    /// pcap or pcapng.
    #[serde(default = "pcap")]
    pub format: String,
    /// Only frames the switch dropped.
    #[serde(default)]
    pub drops_only: bool,
    /// Filter: an address.
    #[serde(default)]
    pub host: Option<String>,
    /// Filter: a prefix.
    #[serde(default)]
    pub net: Option<String>,
    /// Filter: a TCP or UDP port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Filter: a protocol.
    #[serde(default)]
    pub proto: Option<String>,
    /// Filter: from-tenant or to-tenant.
    #[serde(default)]
    pub direction: Option<String>,
    /// Stop after this many frames.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many bytes.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Stop after this long.
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// Bytes kept of each frame (14..=2048).
    #[serde(default)]
    pub snaplen: Option<u64>,
}

fn pcap() -> String {
    "pcap".into()
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was served.
    pub ok: bool,
    /// The command's answer (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Why not (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// The answer of a served or refused request.
    pub fn of(r: Result<Value, String>) -> Response {
        match r {
            Ok(data) => Response { ok: true, data: Some(data), error: None },
            Err(e) => Response { ok: false, data: None, error: Some(e) },
        }
    }

    /// The data, or the error.
    pub fn into_result(self) -> Result<Value, String> {
        if self.ok {
            Ok(self.data.unwrap_or(Value::Null))
        } else {
            Err(self.error.unwrap_or_else(|| "unknown error".into()))
        }
    }
}

/// Parses one request line; the error says what is wrong with it, for the answer.
pub fn parse(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| {
        let e = e.to_string();
        if e.contains("unknown variant") {
            format!(
                "{e} (status, ports, tenants, counters, reload, fdb, connections, flows, trace, \
                 trace_live, capture_start, capture_stop, log_level, upgrade, takeover)"
            )
        } else {
            format!("bad request: {e}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_defaults() {
        let r = parse(r#"{"cmd":"flows","tenant":"red"}"#).unwrap();
        assert_eq!(r, Request::Flows { tenant: "red".into(), top: 20, by: FlowOrder::Bytes });
        let r = parse(r#"{"cmd":"trace","port":"h1","src":"10.0.0.1","dst":"10.0.0.2"}"#).unwrap();
        let Request::Trace(t) = &r else { panic!("{r:?}") };
        assert_eq!((t.proto.as_str(), t.sport, t.dport, t.vlan), ("tcp", 40000, 80, None));
        for r in [
            Request::Status {},
            Request::Reload { dry_run: true, file: Some("/etc/x.toml".into()) },
            Request::CaptureStart(CaptureRequest {
                tenant: Some("red".into()),
                file: "/tmp/c.pcap".into(),
                format: "pcapng".into(),
                ..CaptureRequest::default()
            }),
            Request::LogLevel { level: "debug".into() },
        ] {
            assert_eq!(parse(&serde_json::to_string(&r).unwrap()), Ok(r));
        }
        assert_eq!(
            serde_json::to_string(&Request::Reload { dry_run: false, file: None }).unwrap(),
            r#"{"cmd":"reload","dry_run":false}"#
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let e = parse(r#"{"cmd":"rload"}"#).unwrap_err();
        assert!(e.contains("unknown variant `rload`") && e.contains("reload"), "{e}");
        let e = parse(r#"{"cmd":"fdb"}"#).unwrap_err();
        assert!(e.contains("missing field `tenant`"), "{e}");
        let e = parse(r#"{"cmd":"flows","tenant":"red","top":"lots"}"#).unwrap_err();
        assert!(e.starts_with("bad request: invalid type"), "{e}");
        let e = parse(r#"{"cmd":"status","verbose":true}"#).unwrap_err();
        assert!(e.contains("unknown field `verbose`"), "{e}");
        let e = parse("not json").unwrap_err();
        assert!(e.starts_with("bad request:"), "{e}");
        let e = parse(r#"{"tenant":"red"}"#).unwrap_err();
        assert!(e.contains("missing field `cmd`"), "{e}");
    }
}
