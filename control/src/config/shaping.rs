//! Shaping in the config: rates and sizes as people write them (`"100Mbit"`, `"1Gbit"`,
//! `"10kpps"`, `"64KiB"`), and the tenant's and the port's shaping compiled into the
//! dataplane's types, with the issues that make a setting impossible.

use dataplane::shaping::{Rate, TenantShaping, Unit};

use super::issue::Issue;
use super::model::{Config, RateConfig, ShapingConfig};

/// The largest Ethernet frame with one VLAN tag: a burst smaller than this could never pass a
/// full-size frame.
pub const FULL_FRAME: u64 = 1518;

/// A parsed rate: bits or frames per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParsedRate {
    /// Bits per second.
    Bits(f64),
    /// Frames per second.
    Packets(f64),
}

fn split_number(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    let unit: String = s[end..].trim().to_ascii_lowercase().replace(' ', "");
    Some((n, unit))
}

/// `"100Mbit"`, `"1.5Gbit/s"`, `"500kbps"`, `"64000bit"`, `"10kpps"`, `"1Mpps"`, `"200pps"`.
/// Prefixes k, M, G, T are powers of 1000.
pub fn parse_rate(s: &str) -> Option<ParsedRate> {
    let (n, unit) = split_number(s)?;
    let unit = unit.trim_end_matches("/s");
    let (mult, rest) = match unit.chars().next()? {
        'k' => (1e3, &unit[1..]),
        'm' => (1e6, &unit[1..]),
        'g' => (1e9, &unit[1..]),
        't' => (1e12, &unit[1..]),
        _ => (1.0, unit),
    };
    let v = n * mult;
    match rest {
        "bit" | "bits" | "bps" | "b" => Some(ParsedRate::Bits(v)),
        "pps" => Some(ParsedRate::Packets(v)),
        _ => None,
    }
    .filter(|_| v.is_finite() && v >= 1.0)
}

/// `"64KiB"`, `"1MiB"`, `"1500B"`, `"64KB"` (1000s), `"1500"` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = split_number(s)?;
    let mult = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && (1.0..1e15).contains(&v)).then_some(v.round() as u64)
}

/// How a rate reads, for messages.
pub fn show(r: &Rate) -> String {
    match r.unit {
        Unit::Bytes => {
            let bits = r.per_sec as f64 * 8.0;
            if bits >= 1e9 {
                format!("{:.3} Gbit/s", bits / 1e9)
            } else {
                format!("{:.3} Mbit/s", bits / 1e6)
            }
        }
        Unit::Packets => format!("{} frames/s", r.per_sec),
    }
}

const RATE_HELP: &str = "e.g. \"100Mbit\", \"1Gbit\", \"10kpps\"";

/// A rate and its burst from the config at `at`; the default burst is 10 ms at the rate (at
/// least two full frames, or two frames for a frame rate).
pub fn rate(at: &str, rate: &str, burst: Option<&str>, issues: &mut Vec<Issue>) -> Option<Rate> {
    let Some(parsed) = parse_rate(rate) else {
        issues.push(Issue::new(
            format!("{at}.rate"),
            format!("{rate:?} is not a rate ({RATE_HELP})"),
        ));
        return None;
    };
    let (per_sec, unit) = match parsed {
        ParsedRate::Bits(b) => (((b / 8.0).round() as u64).max(1), Unit::Bytes),
        ParsedRate::Packets(p) => ((p.round() as u64).max(1), Unit::Packets),
    };
    let default = (per_sec / 100).max(if unit == Unit::Bytes { 2 * FULL_FRAME } else { 2 });
    let burst = match (burst, unit) {
        (None, _) => default,
        (Some(b), Unit::Bytes) => match parse_size(b) {
            Some(n) if n >= FULL_FRAME => n,
            Some(n) => {
                issues.push(Issue::new(
                    format!("{at}.burst"),
                    format!("{n} bytes is smaller than one full-size frame ({FULL_FRAME} bytes)"),
                ));
                return None;
            }
            None => {
                issues.push(Issue::new(
                    format!("{at}.burst"),
                    format!("{b:?} is not a size (e.g. \"64KiB\", \"1500B\")"),
                ));
                return None;
            }
        },
        (Some(b), Unit::Packets) => match b.trim().trim_end_matches("packets").trim().parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                issues.push(Issue::new(
                    format!("{at}.burst"),
                    format!("{b:?} is not a number of frames (at least 1) for a frame rate"),
                ));
                return None;
            }
        },
    };
    Some(Rate { per_sec, burst, unit })
}

fn rate_of(at: &str, r: &RateConfig, issues: &mut Vec<Issue>) -> Option<Rate> {
    rate(at, &r.rate, r.burst.as_deref(), issues)
}

/// A tenant's shaping from `tenants.NAME.shaping`.
pub fn tenant(
    name: &str,
    s: &ShapingConfig,
    cfg: &Config,
    issues: &mut Vec<Issue>,
) -> TenantShaping {
    let at = format!("tenants.{name}.shaping");
    let police = s.ingress.as_ref().and_then(|r| rate_of(&format!("{at}.ingress"), r, issues));
    let to_uplink =
        s.to_uplink.as_ref().and_then(|r| rate_of(&format!("{at}.to_uplink"), r, issues));
    let to_tenant =
        s.to_tenant.as_ref().and_then(|r| rate_of(&format!("{at}.to_tenant"), r, issues));
    let min_rate = s.min_rate.as_ref().and_then(|m| {
        let r = rate(&format!("{at}.min_rate"), m, None, issues)?;
        if r.unit == Unit::Packets {
            issues.push(Issue::new(
                format!("{at}.min_rate"),
                "a guaranteed minimum is a bit rate (e.g. \"10Mbit\"), not a frame rate",
            ));
            return None;
        }
        for (field, shaper) in [("to_uplink", to_uplink), ("to_tenant", to_tenant)] {
            if let Some(sh) = shaper
                && sh.unit == Unit::Bytes
                && r.per_sec > sh.per_sec
            {
                issues.push(Issue::new(
                    format!("{at}.min_rate"),
                    format!("{} is more than its {field} rate {}", show(&r), show(&sh)),
                ));
            }
        }
        Some(r)
    });
    if !(1..=1000).contains(&s.weight) {
        issues.push(Issue::new(
            format!("{at}.weight"),
            format!("{} is out of range 1..=1000", s.weight),
        ));
    }
    let quarter = (cfg.frames() / 4).max(1);
    if s.queue == 0 || s.queue > quarter {
        issues.push(Issue::new(
            format!("{at}.queue"),
            format!(
                "{} frames: a queue holds 1 to a quarter of switch.frames ({quarter}), so one \
                 tenant's backlog cannot take the frames the others need",
                s.queue
            ),
        ));
    }
    TenantShaping {
        police,
        to_uplink,
        to_tenant,
        weight: s.weight.clamp(1, 1000),
        min_rate,
        queue: s.queue.clamp(1, quarter),
    }
}

/// The rate of `ports.NAME` (`rate`, `burst`), if it has one.
pub fn port(name: &str, cfg: &Config, issues: &mut Vec<Issue>) -> Option<Rate> {
    let p = cfg.ports.get(name)?;
    let at = format!("ports.{name}");
    let r = match (&p.rate, &p.burst) {
        (Some(r), b) => rate(&at, r, b.as_deref(), issues)?,
        (None, Some(_)) => {
            issues.push(Issue::new(format!("{at}.burst"), "a burst needs a rate"));
            return None;
        }
        (None, None) => return None,
    };
    if r.unit == Unit::Packets {
        issues.push(Issue::new(
            format!("{at}.rate"),
            "a port's rate is a bit rate, not a frame rate",
        ));
        return None;
    }
    // The guarantees of the tenants attached here must fit the port.
    let mut sum = 0u64;
    let mut who = Vec::new();
    for (tname, t) in &cfg.tenants {
        if !t.attach.iter().any(|a| a.port == name) {
            continue;
        }
        let min = t.shaping.as_ref().and_then(|s| s.min_rate.as_deref()).and_then(parse_rate);
        if let Some(ParsedRate::Bits(b)) = min {
            let bytes = (b / 8.0).round() as u64;
            sum += bytes;
            who.push(format!(
                "{tname} {}",
                show(&Rate { per_sec: bytes, burst: 1, unit: Unit::Bytes })
            ));
        }
    }
    if sum > r.per_sec {
        issues.push(Issue::new(
            format!("{at}.rate"),
            format!(
                "the guaranteed minimums of its tenants add up to {}, more than its {} ({})",
                show(&Rate { per_sec: sum, burst: 1, unit: Unit::Bytes }),
                show(&r),
                who.join(", ")
            ),
        ));
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_sizes_parse_as_people_write_them() {
        assert_eq!(parse_rate("100Mbit"), Some(ParsedRate::Bits(100e6)));
        assert_eq!(parse_rate("1Gbit"), Some(ParsedRate::Bits(1e9)));
        assert_eq!(parse_rate("1.5 Gbit/s"), Some(ParsedRate::Bits(1.5e9)));
        assert_eq!(parse_rate("500kbps"), Some(ParsedRate::Bits(500e3)));
        assert_eq!(parse_rate("64000bit"), Some(ParsedRate::Bits(64e3)));
        assert_eq!(parse_rate("10kpps"), Some(ParsedRate::Packets(10e3)));
        assert_eq!(parse_rate("200pps"), Some(ParsedRate::Packets(200.0)));
        for bad in ["", "Mbit", "100", "100 furlongs", "0Mbit", "-5Mbit", "1e9bit"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
        assert_eq!(parse_size("64KiB"), Some(65_536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1500B"), Some(1500));
        assert_eq!(parse_size("64KB"), Some(64_000));
        assert_eq!(parse_size("1500"), Some(1500));
        for bad in ["", "KiB", "12 apples", "0"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_rate_with_its_burst_or_a_default_one() {
        let mut is = Vec::new();
        let r = rate("x", "100Mbit", None, &mut is).unwrap();
        assert_eq!((r.per_sec, r.burst, r.unit), (12_500_000, 125_000, Unit::Bytes));
        let r = rate("x", "1Mbit", Some("4KiB"), &mut is).unwrap();
        assert_eq!((r.per_sec, r.burst), (125_000, 4096));
        let r = rate("x", "1Mbit", None, &mut is).unwrap();
        assert_eq!(r.burst, 2 * FULL_FRAME, "at least two full frames");
        let r = rate("x", "10kpps", Some("32"), &mut is).unwrap();
        assert_eq!((r.per_sec, r.burst, r.unit), (10_000, 32, Unit::Packets));
        assert!(is.is_empty());
        assert!(rate("t.s.ingress", "100Mbit", Some("1000B"), &mut is).is_none());
        assert!(rate("t.s.ingress", "fast", None, &mut is).is_none());
        assert!(rate("t.s.ingress", "10kpps", Some("0"), &mut is).is_none());
        let text: Vec<String> = is.iter().map(|i| i.to_string()).collect();
        assert!(
            text[0].contains("t.s.ingress.burst")
                && text[0].contains("smaller than one full-size frame"),
            "{text:?}"
        );
        assert!(
            text[1].contains("t.s.ingress.rate") && text[1].contains("is not a rate"),
            "{text:?}"
        );
        assert!(text[2].contains("number of frames"), "{text:?}");
    }
}
