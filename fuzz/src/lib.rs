//! What the fuzz targets share: frame templates that reach deep into the parser, a small
//! switch config built from fuzzer choices, and the isolation oracle.
//!
//! A target that fed only raw bytes would spend most of its time on frames that fail at the
//! Ethernet or IP header; starting from real frames (edited, cut, tagged by the fuzzer) keeps
//! it in the pipeline's interesting states: learned MACs, cached flows, open connections, full
//! queues.

use arbitrary::Arbitrary;
use etherparse::PacketBuilder;

/// A host MAC of the small world the pipeline target plays in (index 0..8).
pub fn mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, i % 8 + 1]
}

/// A frame the fuzzer describes: a real frame of one of a few kinds, then edited.
#[derive(Arbitrary, Debug, Clone)]
pub struct FrameSpec {
    pub kind: u8,
    pub src: u8,
    /// Destination host; 8 and above is broadcast.
    pub dst: u8,
    pub vlans: Vlans,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// (offset, byte) overwrites after building.
    pub edits: Vec<(u8, u8)>,
    /// Cut the frame to this length (if shorter).
    pub cut: Option<u8>,
    /// Extra payload length.
    pub pad: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Vlans {
    None,
    One(u16),
    Two(u16, u16),
}

/// The IPv4 address of host `i`.
pub fn ip4(i: u8) -> [u8; 4] {
    [10, 0, 0, i % 8 + 1]
}

fn ip6(i: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = i % 8 + 1;
    a
}

impl FrameSpec {
    /// Builds the frame.
    pub fn build(&self) -> Vec<u8> {
        let dst = if self.dst >= 8 { [0xff; 6] } else { mac(self.dst) };
        let src = mac(self.src);
        let payload = vec![0x5a; usize::from(self.pad)];
        let mut out = Vec::with_capacity(128 + payload.len());
        let eth = PacketBuilder::ethernet2(src, dst);
        let vid = |v: u16| (v % 4095).max(1).try_into().expect("1..=4094 is a VLAN id");
        macro_rules! l3 {
            ($b:expr) => {{
                let b = $b;
                let r = match self.kind % 7 {
                    0 => b
                        .ipv4(ip4(self.src), ip4(self.dst), 64)
                        .udp(self.sport, self.dport)
                        .write(&mut out, &payload),
                    1 => {
                        let t = b
                            .ipv4(ip4(self.src), ip4(self.dst), 64)
                            .tcp(self.sport, self.dport, 1, 1024);
                        let t = if self.tcp_flags & 1 != 0 { t.syn() } else { t };
                        let t = if self.tcp_flags & 2 != 0 { t.ack(1) } else { t };
                        let t = if self.tcp_flags & 4 != 0 { t.fin() } else { t };
                        let t = if self.tcp_flags & 8 != 0 { t.rst() } else { t };
                        t.write(&mut out, &payload)
                    }
                    2 => b
                        .ipv4(ip4(self.src), ip4(self.dst), 64)
                        .icmpv4_echo_request(self.sport, self.dport)
                        .write(&mut out, &payload),
                    3 => b
                        .ipv6(ip6(self.src), ip6(self.dst), 64)
                        .udp(self.sport, self.dport)
                        .write(&mut out, &payload),
                    4 => b
                        .ipv6(ip6(self.src), ip6(self.dst), 255)
                        .icmpv6_echo_request(self.sport, self.dport)
                        .write(&mut out, &payload),
                    5 => {
                        // ARP request (ether type and body by hand: etherparse builds no ARP).
                        let b = b.arp(
                            etherparse::ArpPacket::new(
                                etherparse::ArpHardwareId::ETHERNET,
                                etherparse::EtherType::IPV4,
                                etherparse::ArpOperation::REQUEST,
                                &src,
                                &ip4(self.src),
                                &[0; 6],
                                &ip4(self.dst),
                            )
                            .expect("ARP sizes are fixed"),
                        );
                        b.write(&mut out)
                    }
                    _ => b
                        .ipv4(ip4(self.src), ip4(self.dst), 64)
                        .udp(self.sport, self.dport)
                        .write(&mut out, &payload),
                };
                r.is_ok()
            }};
        }
        let ok = match self.vlans {
            Vlans::None => l3!(eth),
            Vlans::One(v) => l3!(eth.single_vlan(vid(v))),
            Vlans::Two(o, i) => l3!(eth.double_vlan(vid(o), vid(i))),
        };
        if !ok {
            out.clear();
            out.extend_from_slice(&dst);
            out.extend_from_slice(&src);
            out.extend_from_slice(&[0x08, 0x00]);
        }
        for &(off, byte) in self.edits.iter().take(16) {
            if let Some(b) = out.get_mut(usize::from(off)) {
                *b = byte;
            }
        }
        if let Some(n) = self.cut {
            out.truncate(usize::from(n));
        }
        out
    }
}

/// An IPv4 datagram (UDP or TCP, between hosts of the small world) cut into fragments that the
/// fuzzer orders, overlaps and loses.
#[derive(Arbitrary, Debug, Clone)]
pub struct FragSpec {
    pub frame: FrameSpec,
    /// The datagram's IP identification.
    pub ident: u16,
    /// Bytes of IP payload per fragment, in units of 8 (1..=8).
    pub piece: u8,
    /// 0: in order; 1: reversed; 2: the first fragment last; else rotated by this much.
    pub order: u8,
    /// Move this fragment 8 bytes back, over its neighbour.
    pub overlap: Option<u8>,
    /// Leave this fragment out.
    pub missing: Option<u8>,
}

/// One fragment as sent: its bytes, and its offset in the datagram (0: the first fragment).
#[derive(Debug, Clone)]
pub struct Fragment {
    pub bytes: Vec<u8>,
    pub offset: usize,
}

impl FragSpec {
    /// The fragments, in the order they are sent (empty when the datagram has none to cut).
    pub fn build(&self) -> Vec<Fragment> {
        let mut spec = self.frame.clone();
        spec.kind %= 2; // UDP or TCP over IPv4
        spec.edits.clear();
        spec.cut = None;
        spec.pad = spec.pad.max(24);
        let whole = spec.build();
        let l3 = match spec.vlans {
            Vlans::None => 14,
            Vlans::One(_) => 18,
            Vlans::Two(..) => 22,
        };
        if whole.len() < l3 + 20 || whole[l3 - 2..l3] != [0x08, 0x00] {
            return Vec::new();
        }
        let body = &whole[l3 + 20..];
        let piece = 8 * usize::from(self.piece % 8 + 1);
        let mut frags: Vec<Fragment> = (0..body.len())
            .step_by(piece)
            .map(|start| {
                let end = (start + piece).min(body.len());
                let at = match self.overlap {
                    Some(k) if usize::from(k) == start / piece && start > 0 => start - 8,
                    _ => start,
                };
                let mut f = whole[..l3 + 20].to_vec();
                f.extend_from_slice(&body[at..end]);
                let ip = &mut f[l3..l3 + 20];
                ip[2..4].copy_from_slice(&((20 + end - at) as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
                let word = (at / 8) as u16 | if end < body.len() { 0x2000 } else { 0 };
                ip[6..8].copy_from_slice(&word.to_be_bytes());
                ip[10..12].copy_from_slice(&[0, 0]);
                let mut sum: u32 =
                    ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
                while sum >> 16 != 0 {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                Fragment { bytes: f, offset: at }
            })
            .collect();
        if frags.len() < 2 {
            return Vec::new();
        }
        if let Some(m) = self.missing {
            frags.remove(usize::from(m) % frags.len());
        }
        match self.order {
            0 => {}
            1 => frags.reverse(),
            2 => frags.rotate_left(1),
            r => {
                let n = frags.len();
                frags.rotate_right(usize::from(r) % n);
            }
        }
        frags
    }
}

/// The switch the pipeline target builds: an uplink `p0` and tenant ports `p1`..`p3`, up to
/// four tenants, each with the optional stages a fuzzer may turn on.
#[derive(Arbitrary, Debug)]
pub struct WorldSpec {
    pub tenants: Vec<TenantSpec>,
    /// Owner of tenant port p1..p3 (untagged attachment), by tenant index.
    pub port_owner: [u8; 3],
    pub uplink_rate: Option<u16>,
    pub flow_cache_small: bool,
}

#[derive(Arbitrary, Debug)]
pub struct TenantSpec {
    /// Extra tagged attachments: (port 0..4, VLAN).
    pub tagged: Vec<(u8, u16)>,
    /// Anti-spoofing on the first tenant-port attachment: owned host index.
    pub guard: Option<u8>,
    pub acl_default_deny: bool,
    pub acl: Vec<AclSpec>,
    pub group: Option<Vec<AclSpec>>,
    pub ingress_kpps: Option<u8>,
    pub to_uplink_mbit: Option<u8>,
    pub to_tenant_mbit: Option<u8>,
    pub weight: u8,
    pub queue: u8,
    pub fdb_quota: u8,
    pub max_connections: u8,
    /// Log the tenant's flows (to a file the fuzz target never opens: the pipeline counts
    /// them in its flow cache all the same).
    pub flow_log: bool,
}

#[derive(Arbitrary, Debug)]
pub struct AclSpec {
    pub priority: u8,
    pub to_tenant: bool,
    pub action: u8,
    pub proto: Option<u8>,
    pub dst_port: Option<(u16, u16)>,
    pub src_host: Option<u8>,
}

const PROTOS: [&str; 4] = ["tcp", "udp", "icmp", "icmpv6"];

impl AclSpec {
    fn toml(&self, group: bool) -> String {
        let mut s =
            format!("direction = \"{}\"", if self.to_tenant { "to-tenant" } else { "from-tenant" });
        let proto = self.proto.map(|p| PROTOS[usize::from(p % 4)]);
        if let Some(p) = proto {
            s += &format!(", proto = \"{p}\"");
            if let (Some((lo, hi)), "tcp" | "udp") = (self.dst_port, p) {
                let (lo, hi) = (lo.min(hi), lo.max(hi));
                s += &format!(", {} = \"{lo}-{hi}\"", if group { "ports" } else { "dst_port" });
            }
        }
        if let Some(h) = self.src_host {
            let [a, b, c, d] = ip4(h);
            s += &format!(
                ", {} = \"{a}.{b}.{c}.{d}/{}\"",
                if group { "remote" } else { "src" },
                24 + h % 9
            );
        }
        if !group {
            let action = ["allow", "deny", "count"][usize::from(self.action % 3)];
            s += &format!(", priority = {}, action = \"{action}\"", self.priority);
        }
        s
    }
}

impl WorldSpec {
    /// The config text (it may still be invalid: the loader's validation then says no).
    pub fn toml(&self) -> String {
        let mut s = format!(
            "[switch]\nframes = 2048\nring_size = 64\nfdb_capacity = 64\nflow_cache_entries = {}\n\
             [metrics]\nenabled = false\n[control]\nenabled = false\n\
             [ports.p0]\ninterface = \"f0\"\nkind = \"uplink\"\n",
            if self.flow_cache_small { 64 } else { 1024 }
        );
        if let Some(r) = self.uplink_rate {
            s += &format!("rate = \"{}kbit\"\n", u32::from(r.max(100)) * 10);
        }
        for p in 1..4 {
            s += &format!("[ports.p{p}]\ninterface = \"f{p}\"\nkind = \"tenant\"\n");
        }
        let n = self.tenants.len().min(4);
        for (i, t) in self.tenants.iter().take(4).enumerate() {
            let mut attach = vec![format!("{{ port = \"p0\", vlan = {} }}", 100 + i)];
            for (p, owner) in self.port_owner.iter().enumerate() {
                if usize::from(*owner) % (n + 1) == i {
                    let guard = match (t.guard, attach.len()) {
                        (Some(h), 1) => {
                            let [a, b, c, d] = ip4(h);
                            let m = mac(h);
                            format!(
                                ", macs = [\"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\"], ips = [\"{a}.{b}.{c}.{d}\"]",
                                m[0], m[1], m[2], m[3], m[4], m[5]
                            )
                        }
                        _ => String::new(),
                    };
                    attach.push(format!("{{ port = \"p{}\"{guard} }}", p + 1));
                }
            }
            for (p, v) in t.tagged.iter().take(3) {
                attach.push(format!("{{ port = \"p{}\", vlan = {} }}", p % 4, (v % 4094) + 1));
            }
            s += &format!(
                "[tenants.t{i}]\nattach = [{}]\nfdb_quota = {}\nacl_default = \"{}\"\n",
                attach.join(", "),
                t.fdb_quota.max(1),
                if t.acl_default_deny { "deny" } else { "allow" }
            );
            for a in t.acl.iter().take(6) {
                s += &format!("[[tenants.t{i}.acl]]\n{}\n", a.toml(false).replace(", ", "\n"));
            }
            if let Some(g) = &t.group {
                let rules: Vec<String> =
                    g.iter().take(4).map(|r| format!("{{ {} }}", r.toml(true))).collect();
                s += &format!(
                    "[tenants.t{i}.security_group]\nmax_connections = {}\nrules = [{}]\n",
                    t.max_connections.max(1),
                    rules.join(", ")
                );
            }
            s += &format!(
                "[tenants.t{i}.shaping]\nweight = {}\nqueue = {}\n",
                t.weight.max(1),
                t.queue.max(1)
            );
            if let Some(k) = t.ingress_kpps {
                s += &format!(
                    "ingress = {{ rate = \"{}kpps\", burst = \"{}\" }}\n",
                    k.max(1),
                    k.max(2)
                );
            }
            if let Some(m) = t.to_uplink_mbit {
                s += &format!("to_uplink = {{ rate = \"{}Mbit\" }}\n", m.max(1));
            }
            if let Some(m) = t.to_tenant_mbit {
                s += &format!("to_tenant = {{ rate = \"{}Mbit\" }}\n", m.max(1));
            }
            if t.flow_log {
                s += &format!("[tenants.t{i}.flow_log]\nfile = \"/nonexistent/t{i}.jsonl\"\n");
            }
        }
        s
    }
}
pub mod hostile;
