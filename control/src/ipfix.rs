//! IPFIX (RFC 7011) encoding of flow records, for export over UDP to a collector.
//!
//! Written here rather than taken from a crate: the few that exist on crates.io parse IPFIX;
//! exporting needs only a message header, two fixed templates and fixed-length data records,
//! about a hundred lines.
//!
//! Each tenant is its own observation domain (`tenants.NAME.observation_domain`, by default
//! a hash of the name, so it stays the same when other tenants come and go), so a collector
//! keeps tenants apart without a private information element. Two templates, one per address
//! family:
//!
//! | element (id) | bytes |
//! |---|---|
//! | sourceIPv4Address (8) or sourceIPv6Address (27) | 4 or 16 |
//! | destinationIPv4Address (12) or destinationIPv6Address (28) | 4 or 16 |
//! | sourceTransportPort (7), destinationTransportPort (11) | 2 + 2 |
//! | protocolIdentifier (4) | 1 |
//! | packetDeltaCount (2), octetDeltaCount (1) | 8 + 8 |
//! | flowStartMilliseconds (152), flowEndMilliseconds (153) | 8 + 8 |
//! | icmpTypeCodeIPv4 (32) or icmpTypeCodeIPv6 (139): type × 256 + code (ICMP; the port fields are 0 then) | 2 |
//! | flowEndReason (136): 1 idle, 2 active (interval), 3 end of flow (FIN/RST), 4 forced | 1 |
//! | forwardingStatus (89): 0x40 forwarded, else dropped with the reason's code (below) | 1 |
//! | ingressInterface (10): the switch port id the flow came in on | 4 |
//! | vlanId (58): its outer VLAN (0: untagged) | 2 |
//! | observationDomainName (300): the tenant's name (variable length) | 1 + n |
//!
//! forwardingStatus of a flow none of whose frames was forwarded: RFC 7270's dropped-reason
//! code for the drop reason of its last dropped frame ([`forwarding_status`]):
//!
//! | drop reason | code |
//! |---|---|
//! | `policy`, `conntrack_full` | 129 ACL deny |
//! | `no_route`, `unknown_tenant`, `hairpin` | 131 unroutable |
//! | `too_big` | 133 fragmentation needed and DF set |
//! | `malformed` | 136 bad header length |
//! | `rate_limit` | 138 policer |
//! | `queue_full`, `tx_full`, `no_frame` | 139 WRED (congestion) |
//! | `spoof`, `invalid_src_mac` | 140 RPF (source check) |
//! | `port_down` | 142 bad output interface |
//! | others (`fragment`, `ethertype`, `no_headroom`) | 128 unknown |
//!
//! Over UDP templates must be sent again from time to time (RFC 7011 §8.4): [`Exporter`] puts
//! them in the first message of each domain and again every [`TEMPLATE_EVERY`] messages.

/// IPFIX version number.
const VERSION: u16 = 10;
/// Template ids.
const V4: u16 = 256;
const V6: u16 = 257;
/// The templates go out again after this many messages of a domain.
pub const TEMPLATE_EVERY: u32 = 64;
/// Largest message built (fits an Ethernet MTU with IP and UDP headers).
pub const MAX_MESSAGE: usize = 1400;
/// Largest data record: an IPv6 one with a 254-byte tenant name.
const RECORD_MAX: usize = 80 + 255;

/// Why a flow's record was sent (flowEndReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// No frame for the idle time.
    Idle = 1,
    /// Reported while it goes on (every interval).
    Active = 2,
    /// TCP FIN or RST.
    EndOfFlow = 3,
    /// Reported at a stop.
    Forced = 4,
}

/// The forwardingStatus of a flow: 0x40 forwarded, else the dropped-reason code of the drop
/// reason (its label) of its last dropped frame (module docs).
pub fn forwarding_status(forwarded: bool, reason: Option<&str>) -> u8 {
    if forwarded {
        return 0x40;
    }
    match reason.unwrap_or("") {
        "policy" | "conntrack_full" => 129,
        "no_route" | "unknown_tenant" | "hairpin" => 131,
        "too_big" => 133,
        "malformed" => 136,
        "rate_limit" => 138,
        "queue_full" | "tx_full" | "no_frame" => 139,
        "spoof" | "invalid_src_mac" => 140,
        "port_down" => 142,
        _ => 128,
    }
}

/// One flow record, as the encoder needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Source address (IPv4 v4-mapped) and port.
    pub src: ([u8; 16], u16),
    /// Destination address and port.
    pub dst: ([u8; 16], u16),
    /// IP protocol.
    pub proto: u8,
    /// Frames.
    pub packets: u64,
    /// Frame bytes.
    pub bytes: u64,
    /// First frame, Unix milliseconds.
    pub start_ms: u64,
    /// Last frame, Unix milliseconds.
    pub end_ms: u64,
    /// Why it was sent.
    pub reason: EndReason,
    /// forwardingStatus ([`forwarding_status`]).
    pub status: u8,
    /// The switch port it came in on.
    pub in_port: u32,
    /// Its outer VLAN (0: untagged).
    pub vlan: u16,
    /// The tenant's name.
    pub tenant: String,
}

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// Variable length (RFC 7011 §7): the length precedes the value in the record.
const VARIABLE: u16 = 0xffff;

fn v4(a: &[u8; 16]) -> Option<[u8; 4]> {
    std::net::Ipv6Addr::from(*a).to_ipv4_mapped().map(|v| v.octets())
}

/// Fields of the v4 and v6 templates: (element id, length).
fn fields(v6: bool) -> [(u16, u16); 15] {
    let (s, d, len, icmp) = if v6 { (27, 28, 16, 139) } else { (8, 12, 4, 32) };
    [
        (s, len),
        (d, len),
        (7, 2),
        (11, 2),
        (4, 1),
        (icmp, 2),
        (2, 8),
        (1, 8),
        (152, 8),
        (153, 8),
        (136, 1),
        (89, 1),
        (10, 4),
        (58, 2),
        (300, VARIABLE),
    ]
}

/// The template set: both templates.
fn template_set(out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&2u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    for (id, v6) in [(V4, false), (V6, true)] {
        let f: Vec<_> = fields(v6).into_iter().filter(|(id, _)| *id != 0).collect();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        for (e, l) in f {
            out.extend_from_slice(&e.to_be_bytes());
            out.extend_from_slice(&l.to_be_bytes());
        }
    }
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn data_record(out: &mut Vec<u8>, r: &Record) {
    match (v4(&r.src.0), v4(&r.dst.0)) {
        (Some(s), Some(d)) => {
            out.extend_from_slice(&s);
            out.extend_from_slice(&d);
        }
        _ => {
            out.extend_from_slice(&r.src.0);
            out.extend_from_slice(&r.dst.0);
        }
    }
    // ICMP: the flow key holds type and code where the ports would be.
    let icmp = matches!(r.proto, PROTO_ICMP | PROTO_ICMPV6);
    let (sport, dport, type_code) =
        if icmp { (0, 0, r.src.1 << 8 | (r.dst.1 & 0xff)) } else { (r.src.1, r.dst.1, 0) };
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.push(r.proto);
    out.extend_from_slice(&type_code.to_be_bytes());
    out.extend_from_slice(&r.packets.to_be_bytes());
    out.extend_from_slice(&r.bytes.to_be_bytes());
    out.extend_from_slice(&r.start_ms.to_be_bytes());
    out.extend_from_slice(&r.end_ms.to_be_bytes());
    out.push(r.reason as u8);
    out.push(r.status);
    out.extend_from_slice(&r.in_port.to_be_bytes());
    out.extend_from_slice(&r.vlan.to_be_bytes());
    // A name under 255 bytes: one length byte (longer ones are cut there).
    let name = &r.tenant.as_bytes()[..r.tenant.len().min(254)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// Builds IPFIX messages per observation domain, numbering them as RFC 7011 wants (the
/// sequence number counts the data records sent before, per domain).
#[derive(Debug, Default)]
pub struct Exporter {
    /// Per domain: (data records sent, messages sent).
    domains: std::collections::HashMap<u32, (u32, u32)>,
}

impl Exporter {
    /// Where each domain's numbering stands: (domain, data records sent, messages sent), for
    /// the process that takes the switch over, so that a collector's sequence goes on.
    pub fn positions(&self) -> Vec<(u32, u32, u32)> {
        let mut v: Vec<_> = self.domains.iter().map(|(&d, &(seq, sent))| (d, seq, sent)).collect();
        v.sort_unstable();
        v
    }

    /// Goes on numbering from `positions` (another process's [`Exporter::positions`]).
    pub fn resume(&mut self, positions: &[(u32, u32, u32)]) {
        for &(d, seq, sent) in positions {
            self.domains.insert(d, (seq, sent));
        }
    }

    /// The messages carrying `records` of one domain (the tenant's), exported at `now_secs`
    /// (Unix seconds). Records of both families may be mixed; each message stays under
    /// [`MAX_MESSAGE`] bytes.
    pub fn encode(&mut self, domain: u32, now_secs: u32, records: &[Record]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = records;
        while !rest.is_empty() {
            let (seq, sent) = *self.domains.entry(domain).or_default();
            let mut m = Vec::with_capacity(MAX_MESSAGE);
            m.extend_from_slice(&VERSION.to_be_bytes());
            m.extend_from_slice(&0u16.to_be_bytes());
            m.extend_from_slice(&now_secs.to_be_bytes());
            m.extend_from_slice(&seq.to_be_bytes());
            m.extend_from_slice(&domain.to_be_bytes());
            if sent % TEMPLATE_EVERY == 0 {
                template_set(&mut m);
            }
            let mut taken = 0;
            // One data set per family, in the order the records come.
            while taken < rest.len() && m.len() + 4 + RECORD_MAX < MAX_MESSAGE {
                let is_v4 = |r: &Record| v4(&r.src.0).is_some() && v4(&r.dst.0).is_some();
                let fam = is_v4(&rest[taken]);
                let set = m.len();
                m.extend_from_slice(&(if fam { V4 } else { V6 }).to_be_bytes());
                m.extend_from_slice(&0u16.to_be_bytes());
                while taken < rest.len()
                    && is_v4(&rest[taken]) == fam
                    && m.len() + RECORD_MAX < MAX_MESSAGE
                {
                    data_record(&mut m, &rest[taken]);
                    taken += 1;
                }
                let len = (m.len() - set) as u16;
                m[set + 2..set + 4].copy_from_slice(&len.to_be_bytes());
            }
            let len = m.len() as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            let e = self.domains.entry(domain).or_default();
            *e = (e.0.wrapping_add(taken as u32), e.1.wrapping_add(1));
            out.push(m);
            rest = &rest[taken..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(src: [u8; 16], n: u64) -> Record {
        Record {
            src: (src, 40_000),
            dst: (src, 80),
            proto: 6,
            packets: n,
            bytes: n * 100,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_001_000,
            reason: EndReason::EndOfFlow,
            status: forwarding_status(true, None),
            in_port: 2,
            vlan: 100,
            tenant: "red".into(),
        }
    }

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    fn u16_at(m: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([m[i], m[i + 1]])
    }

    #[test]
    fn a_message_carries_its_templates_and_records_in_the_right_layout() {
        let mut e = Exporter::default();
        let v6: [u8; 16] = "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let msgs = e.encode(3, 1234, &[rec(mapped([10, 0, 0, 1]), 7), rec(v6, 2)]);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!((u16_at(m, 0), u16_at(m, 2) as usize), (10, m.len()));
        assert_eq!(&m[4..8], &1234u32.to_be_bytes());
        assert_eq!(&m[8..12], &0u32.to_be_bytes(), "sequence: no record sent before");
        assert_eq!(&m[12..16], &3u32.to_be_bytes(), "observation domain");
        // The template set: two templates of 15 fields.
        assert_eq!(u16_at(m, 16), 2);
        let tset = u16_at(m, 18) as usize;
        assert_eq!(tset, 4 + 2 * (4 + 15 * 4));
        assert_eq!((u16_at(m, 20), u16_at(m, 22)), (V4, 15));
        // Then a v4 data set with one 59-byte record (55 fixed, a length byte and "red"), and
        // a v6 one with one of 83 bytes.
        let d = 16 + tset;
        assert_eq!((u16_at(m, d), u16_at(m, d + 2)), (V4, 4 + 59));
        assert_eq!(&m[d + 4..d + 8], &[10, 0, 0, 1]);
        assert_eq!(&m[d + 4 + 15..d + 4 + 23], &7u64.to_be_bytes(), "packetDeltaCount");
        assert_eq!(&m[d + 4 + 49..d + 4 + 55], &[0, 0, 0, 2, 0, 100], "port and VLAN");
        assert_eq!(&m[d + 4 + 55..d + 4 + 59], b"\x03red", "the tenant's name");
        let d6 = d + 4 + 59;
        assert_eq!((u16_at(m, d6), u16_at(m, d6 + 2)), (V6, 4 + 83));
        assert_eq!(d6 + 4 + 83, m.len());
        // The next message counts the two records sent and leaves the templates out.
        let next = e.encode(3, 1235, &[rec(mapped([10, 0, 0, 2]), 1)]);
        assert_eq!(&next[0][8..12], &2u32.to_be_bytes());
        assert_eq!(u16_at(&next[0], 16), V4);
    }

    // Issue 18: ICMP type and code go in their own element, not in the port fields; a dropped
    // flow says why.
    #[test]
    fn icmp_flows_carry_type_and_code_and_drops_their_reason() {
        let mut r = rec(mapped([10, 0, 0, 1]), 1);
        r.proto = 1;
        r.src.1 = 8; // echo request
        r.dst.1 = 0;
        r.status = forwarding_status(false, Some("policy"));
        let m = &Exporter::default().encode(1, 0, &[r])[0];
        let d = 16 + u16_at(m, 18) as usize + 4;
        assert_eq!(&m[d + 8..d + 12], &[0, 0, 0, 0], "no ports");
        assert_eq!(&m[d + 13..d + 15], &[8, 0], "icmpTypeCodeIPv4");
        assert_eq!(m[d + 48], 129, "forwardingStatus: dropped, ACL deny");
        assert_eq!(forwarding_status(false, Some("rate_limit")), 138);
        assert_eq!(forwarding_status(false, Some("fragment")), 128);
    }

    #[test]
    fn many_records_are_split_into_messages_under_the_mtu() {
        let mut e = Exporter::default();
        let recs: Vec<_> = (0..100).map(|i| rec(mapped([10, 0, 0, i as u8]), i)).collect();
        let msgs = e.encode(1, 0, &recs);
        assert!(msgs.len() >= 4, "{}", msgs.len());
        assert!(msgs.iter().all(|m| m.len() <= MAX_MESSAGE && u16_at(m, 2) as usize == m.len()));
        let total: usize = msgs
            .iter()
            .map(|m| {
                let mut i = 16;
                let mut n = 0;
                while i < m.len() {
                    let (id, len) = (u16_at(m, i), u16_at(m, i + 2) as usize);
                    if id == V4 {
                        n += (len - 4) / 59;
                    }
                    i += len;
                }
                n
            })
            .sum();
        assert_eq!(total, 100);
    }
}
