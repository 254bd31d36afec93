//! The config file's types: what an operator writes, before validation. Stateless and
//! `deny_unknown_fields` everywhere, so a misspelt key is an error, not a silent default.
//! Names are kept in `BTreeMap`s so compiling is deterministic (ids follow name order).

use std::collections::BTreeMap;

use dataplane::port::afxdp::FILL_RINGS;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Fragment files whose `[ports.*]` and `[tenants.*]` join this file's (patterns relative
    /// to this file's directory, `*` and `?` in the file name: `"tenants.d/*.toml"`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Process-wide settings.
    #[serde(default)]
    pub switch: SwitchConfig,
    /// Ports by name.
    #[serde(default)]
    pub ports: BTreeMap<String, PortConfig>,
    /// Tenants by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// SR-IOV physical functions by interface name: VFs to provision, per-VF attributes.
    #[serde(default)]
    pub sriov: BTreeMap<String, SriovConfig>,
    /// The cluster this host belongs to: tenants with a VNI span its hosts (absent: this host
    /// alone).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: where the cluster's map lives and who this host is in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://127.0.0.1:2379`).
    pub etcd: Vec<String>,
    /// This host's name in the cluster (default: the system's host name).
    #[serde(default)]
    pub host: Option<String>,
    /// Seconds this host's entries outlive it (its etcd lease's TTL): a host that dies leaves
    /// the other hosts' tables this long after its last keep-alive.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u32,
    /// The key prefix of the map (one etcd can hold several clusters).
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_lease_ttl() -> u32 {
    10
}

fn default_prefix() -> String {
    "/xswitch/v1".into()
}

/// `[sriov.PF]`: a physical function whose VFs serve as ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SriovConfig {
    /// VFs to have enabled (written to `sriov_numvfs` at start when it differs; absent: leave
    /// the count as it is).
    #[serde(default)]
    pub numvfs: Option<u32>,
    /// Attributes of single VFs, set on the PF through rtnetlink at start.
    #[serde(default)]
    pub vf: Vec<VfConfig>,
}

/// `[[sriov.PF.vf]]`: what the NIC enforces for one VF.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    /// The VF.
    pub index: u32,
    /// Its MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// A VLAN the NIC tags its frames with (0: none).
    #[serde(default)]
    pub vlan: Option<u16>,
    /// The NIC drops frames whose source MAC is not the VF's.
    #[serde(default)]
    pub spoofchk: Option<bool>,
    /// The VF may change its MAC and enter promiscuous mode.
    #[serde(default)]
    pub trust: Option<bool>,
}

/// `[control]`: the control API's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control API at all.
    pub enabled: bool,
    /// Path of the socket (created mode 0600, owned by the user running the switch: root).
    pub socket: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { enabled: true, socket: DEFAULT_CONTROL_SOCKET.into() }
    }
}

/// Where `xswitch run` listens and `xswitch ctl` connects unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xswitch/xswitch.sock";

/// `[metrics]`: the Prometheus scrape endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address and TCP port to listen on (loopback unless the operator says otherwise).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, listen: "127.0.0.1:9724".into() }
    }
}

/// What a worker does when it finds no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IdlePolicy {
    /// Poll forever (lowest latency, one core per worker at 100 %).
    #[default]
    Busy,
    /// Back off to short sleeps when idle.
    Adaptive,
}

/// `[switch]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchConfig {
    /// Worker threads.
    pub workers: u32,
    /// CPU cores to pin workers to, one per worker (empty: not pinned).
    pub cores: Vec<u32>,
    /// Frames in the shared frame area (UMEM); 0 (the default): sized from the ports, their
    /// queues and the rings ([`Config::frames`]).
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096; 0 (the default): from the ports' MTUs
    /// ([`Config::frame_size`]).
    pub frame_size: u32,
    /// Entries of each AF_XDP ring (fill, completion, RX, TX); a power of two.
    pub ring_size: u32,
    /// Idle policy of the workers.
    pub idle: IdlePolicy,
    /// Total MAC table entries per worker, shared by all tenants (each also has its quota).
    pub fdb_capacity: u32,
    /// Back the frame area with 2 MiB huge pages (falls back to normal pages with a warning).
    pub huge_pages: bool,
    /// `SO_BUSY_POLL` microseconds on every socket, with `SO_PREFER_BUSY_POLL`; 0 leaves the
    /// kernel defaults.
    pub busy_poll_us: u32,
    /// `SO_BUSY_POLL_BUDGET`: frames per busy-poll round.
    pub busy_poll_budget: u32,
    /// Entries of each worker's flow cache (decisions and counters by flow).
    pub flow_cache_entries: u32,
    /// Percent of the flow cache one tenant may hold.
    pub flow_cache_tenant_share: u32,
    /// Connections each worker tracks for security groups, all tenants together.
    pub conntrack_capacity: u32,
    /// Fragmented datagrams each worker tracks for tenants with policy, all tenants together
    /// (each may hold `flow_cache_tenant_share` percent).
    pub fragment_entries: u32,
    /// Milliseconds a datagram's later fragments may follow its first one.
    pub fragment_timeout_ms: u32,
    /// Seconds between records of a flow that goes on.
    pub flow_log_interval_secs: u32,
    /// Seconds without a packet after which a flow's record is written.
    pub flow_log_idle_secs: u32,
    /// An IPFIX collector (`host:port`, UDP) for the flow records of tenants whose flow log
    /// says `ipfix = true`.
    pub flow_log_ipfix: Option<String>,
    /// Size of the huge pages `huge_pages` asks for: `"2M"` or `"1G"`.
    pub huge_page_size: String,
    /// Worker placement by the ports' NUMA nodes.
    pub numa: NumaPolicy,
    /// Run as this user once set up (a local account; the process keeps only the capabilities
    /// it needs, docs/SECURITY.md). None: stay root.
    pub user: Option<String>,
    /// With `user`: this group (default: the user's own).
    pub group: Option<String>,
}

/// `switch.numa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NumaPolicy {
    /// On a machine with several NUMA nodes, pin each worker to a CPU of its ports' node and
    /// move its frames there (unless `cores` says otherwise, which is warned about when it
    /// crosses nodes).
    #[default]
    Auto,
    /// Place nothing.
    Off,
}

impl SwitchConfig {
    /// Frames one socket with rings of `ring_size` holds at most: a full fill ring
    /// ([`FILL_RINGS`] times the ring, frames on the RX ring included) and a full TX ring in
    /// flight. A worker needs this per socket it polls, and a working set besides (batches,
    /// TX lists, flood copies).
    pub fn frames_per_socket(ring_size: u32) -> u64 {
        u64::from(FILL_RINGS + 1) * u64::from(ring_size)
    }

    /// The least `frames` for `sockets` sockets: their rings and a working set of 1 024.
    pub fn frames_needed(&self, sockets: u64) -> u64 {
        sockets * Self::frames_per_socket(self.ring_size) + 1024
    }
}

impl Config {
    /// AF_XDP sockets the ports open (one per queue).
    pub fn sockets(&self) -> u64 {
        self.ports.values().map(|p| u64::from(p.queues)).sum()
    }

    /// The frame area's size: `switch.frames`, or when it is 0, what the ports' sockets need
    /// plus room for two more sockets (ports added by a reload) and each worker's working set,
    /// in whole 1 024s, at most 2^22.
    pub fn frames(&self) -> u32 {
        let s = &self.switch;
        if s.frames != 0 {
            return s.frames;
        }
        let want = s.frames_needed(self.sockets() + 2) + 1024 * u64::from(s.workers.max(1));
        want.div_ceil(1024).saturating_mul(1024).min(1 << 22) as u32
    }

    /// The frame size: `switch.frame_size`, or when it is 0, 4096 if a port's MTU (the
    /// config's, else `interface_mtu` of its interface) needs more than one frame of 2048
    /// (above 1 770), else 2048. PERF(jumbo): a 9 000-byte packet is 3 frames of 4 KiB instead
    /// of 6 of 2 KiB: half the descriptors, and 2 pages the kernel allocates for it in copy
    /// mode instead of 5 (docs/PERFORMANCE.md, sessions 11 and 16).
    pub fn frame_size(&self, interface_mtu: impl Fn(&str) -> Option<u32>) -> u32 {
        if self.switch.frame_size != 0 {
            return self.switch.frame_size;
        }
        let one_frame = single_frame_mtu(2048);
        let largest = self
            .ports
            .values()
            .filter_map(|p| {
                p.mtu.or_else(|| (!p.interface.is_empty()).then(|| interface_mtu(&p.interface))?)
            })
            .max()
            .unwrap_or(0);
        if largest > one_frame { 4096 } else { 2048 }
    }
}

/// The largest MTU one frame of `frame_size` bytes carries (its 256 bytes of headroom, the
/// Ethernet header and two VLAN tags aside): 1 770 at 2048.
pub const fn single_frame_mtu(frame_size: u32) -> u32 {
    frame_size.saturating_sub(dataplane::port::FRAME_HEADROOM as u32 + 22)
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: 1,
            cores: Vec::new(),
            frames: 0,
            frame_size: 0,
            ring_size: 1024,
            idle: IdlePolicy::Busy,
            fdb_capacity: 65536,
            huge_pages: false,
            busy_poll_us: 0,
            busy_poll_budget: 64,
            flow_cache_entries: 65536,
            flow_cache_tenant_share: 25,
            conntrack_capacity: 65_536,
            fragment_entries: 1024,
            fragment_timeout_ms: 1000,
            flow_log_interval_secs: 60,
            flow_log_idle_secs: 15,
            flow_log_ipfix: None,
            huge_page_size: "2M".into(),
            numa: NumaPolicy::Auto,
            user: None,
            group: None,
        }
    }
}

/// What a port faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKindConfig {
    /// Towards the host fabric; tenants told apart by VLAN.
    Uplink,
    /// A VF, veth or tap facing tenants.
    Tenant,
    /// Towards the other hosts of the cluster: tenants with a VNI cross it inside VXLAN
    /// (`[ports.NAME.tunnel]`).
    Underlay,
}

/// AF_XDP bind mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Try zero-copy, fall back to copy.
    #[default]
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode.
    Copy,
}

/// `[ports.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Kernel interface name (or `pf` with `vf` or `vfs`).
    #[serde(default)]
    pub interface: String,
    /// A physical function: this port is its VF `vf` (or its VFs `vfs`).
    #[serde(default)]
    pub pf: Option<String>,
    /// The VF index on `pf`.
    #[serde(default)]
    pub vf: Option<u32>,
    /// VF indexes on `pf` (`"0-7"`, `"0,2,4"`): one port per VF, named NAME0, NAME1, ... after
    /// their index.
    #[serde(default)]
    pub vfs: Option<String>,
    /// Uplink or tenant.
    pub kind: PortKindConfig,
    /// Queues to open (one AF_XDP socket each).
    #[serde(default = "one")]
    pub queues: u32,
    /// Bind mode.
    #[serde(default)]
    pub mode: XdpMode,
    /// The rate the port's egress scheduler shares among its tenants (`"1Gbit"`; none: line
    /// rate, the TX ring is the only limit).
    #[serde(default)]
    pub rate: Option<String>,
    /// The port rate's burst (`"32KiB"`; default 10 ms at the rate).
    #[serde(default)]
    pub burst: Option<String>,
    /// Largest IP packet the port sends (default: its interface's MTU when the switch
    /// starts); larger frames are dropped as `too_big`.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// A vhost-user port (a VM's virtio-net device, or DPDK's virtio-user) on this socket,
    /// instead of an interface.
    #[serde(default)]
    pub vhost_user: Option<VhostUserConfig>,
    /// The tunnel endpoint of an underlay port.
    #[serde(default)]
    pub tunnel: Option<TunnelConfig>,
}

/// `[ports.NAME.tunnel]`: this host's VXLAN tunnel endpoint on an underlay port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// This host's tunnel address (IPv4), owned by the switch on this port.
    pub address: String,
    /// The port's MAC, the outer source (default: its interface's).
    #[serde(default)]
    pub mac: Option<String>,
    /// The MAC of a router between the hosts, the outer destination of every tunnel frame
    /// (default: none, the hosts share one L2 segment and each host's own MAC is used).
    #[serde(default)]
    pub gateway_mac: Option<String>,
    /// The VXLAN UDP port.
    #[serde(default = "default_vxlan_port")]
    pub udp_port: u16,
}

fn default_vxlan_port() -> u16 {
    4789
}

/// `[ports.NAME.vhost_user]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserConfig {
    /// The Unix socket's path.
    pub socket: String,
    /// `server`: the switch creates the socket and the VM connects; `client`: the VM (QEMU
    /// with `server=on`) created it, the switch connects, and again after either restarts.
    #[serde(default)]
    pub mode: VhostMode,
}

/// Who creates a vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VhostMode {
    /// The switch listens.
    #[default]
    Server,
    /// The switch connects.
    Client,
}

fn one() -> u32 {
    1
}

/// `[tenants.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Where the tenant is reachable on this host.
    #[serde(default)]
    pub attach: Vec<AttachConfig>,
    /// Most MACs the tenant may have learned at once.
    #[serde(default = "default_quota")]
    pub fdb_quota: u32,
    /// Seconds before an unseen learned MAC is forgotten.
    #[serde(default = "default_aging")]
    pub mac_aging_secs: u32,
    /// MACs pinned to an attachment.
    #[serde(default)]
    pub static_macs: Vec<StaticMacConfig>,
    /// What the ACLs do when no allow or deny rule matches.
    #[serde(default)]
    pub acl_default: AclDefault,
    /// Stateless rules.
    #[serde(default)]
    pub acl: Vec<AclRuleConfig>,
    /// Stateful security group (absent: every connection passes).
    #[serde(default)]
    pub security_group: Option<SecurityGroupConfig>,
    /// Flow logs (absent: none).
    #[serde(default)]
    pub flow_log: Option<FlowLogConfig>,
    /// Policer, egress shapers, weight, guarantee and queue size (absent: none, weight 1).
    #[serde(default)]
    pub shaping: Option<ShapingConfig>,
    /// The IPFIX observation domain of its flow records (absent: one derived from the name,
    /// so it never changes when other tenants come and go).
    #[serde(default)]
    pub observation_domain: Option<u32>,
    /// The tenant's VXLAN network identifier (1..=16777215): it spans the cluster's hosts,
    /// reachable through the underlay port as well as its attachments.
    #[serde(default)]
    pub vni: Option<u32>,
}

impl TenantConfig {
    /// The IPFIX observation domain of tenant `name`: the configured one, else a hash of the
    /// name (FNV-1a, 32 bits; never 0).
    pub fn observation_domain(&self, name: &str) -> u32 {
        self.observation_domain.unwrap_or_else(|| {
            let h = name
                .bytes()
                .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
            h.max(1)
        })
    }
}

/// `[tenants.NAME.shaping]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingConfig {
    /// Policer on what the tenant sends (from its tenant-facing ports); the excess is dropped.
    #[serde(default)]
    pub ingress: Option<RateConfig>,
    /// Shaper of the tenant's queue on uplink ports.
    #[serde(default)]
    pub to_uplink: Option<RateConfig>,
    /// Shaper of the tenant's queue on its tenant-facing ports.
    #[serde(default)]
    pub to_tenant: Option<RateConfig>,
    /// Share of a congested port, by weight against the other tenants' (1..=1000).
    #[serde(default = "one")]
    pub weight: u32,
    /// Guaranteed rate on every port with a rate (`"10Mbit"`), before the weights.
    #[serde(default)]
    pub min_rate: Option<String>,
    /// Frames the tenant's queue on one port holds.
    #[serde(default = "default_queue")]
    pub queue: u32,
}

fn default_queue() -> u32 {
    256
}

/// A rate and its burst.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// `"100Mbit"`, `"1Gbit"`, `"10kpps"`.
    pub rate: String,
    /// Bytes (`"64KiB"`) for a bit rate, frames for a frame rate; default 10 ms at the rate.
    #[serde(default)]
    pub burst: Option<String>,
}

/// `[tenants.NAME.flow_log]`: where the tenant's flow records go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowLogConfig {
    /// The JSON-lines file (absolute path); rotated to `FILE.1` when it grows past `max_bytes`.
    #[serde(default)]
    pub file: Option<String>,
    /// Size at which the file is rotated.
    #[serde(default = "default_flow_log_max")]
    pub max_bytes: u64,
    /// Also export the records as IPFIX to `switch.flow_log_ipfix`.
    #[serde(default)]
    pub ipfix: bool,
}

fn default_flow_log_max() -> u64 {
    64 << 20
}

/// A number, or a name for it (`"tcp"`, `"ipv6"`, `"1000-2000"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NumOrName {
    /// A number.
    Num(u64),
    /// A name or a range.
    Name(String),
}

/// The ACL default action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AclDefault {
    /// Let through.
    #[default]
    Allow,
    /// Drop (counted under `policy`).
    Deny,
}

/// What an ACL rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclActionConfig {
    /// Let through.
    Allow,
    /// Drop.
    Deny,
    /// Count and go on.
    Count,
}

/// Which way traffic crosses the tenant boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionConfig {
    /// Sent by the tenant (cloud "egress").
    FromTenant,
    /// Delivered to the tenant (cloud "ingress").
    ToTenant,
}

/// `[[tenants.NAME.acl]]`: one stateless rule. Fields left out match anything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// Name for counters and traces (default `acl[i]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Lower is evaluated first.
    pub priority: u32,
    /// Which traffic the rule sees.
    pub direction: DirectionConfig,
    /// What it does.
    pub action: AclActionConfig,
    /// Ingress port name.
    #[serde(default)]
    pub in_port: Option<String>,
    /// Source MAC.
    #[serde(default)]
    pub src_mac: Option<String>,
    /// Destination MAC.
    #[serde(default)]
    pub dst_mac: Option<String>,
    /// `"ipv4"`, `"ipv6"`, `"arp"` or a number.
    #[serde(default)]
    pub ethertype: Option<NumOrName>,
    /// Outer VLAN the frame arrived with.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Source prefix.
    #[serde(default)]
    pub src: Option<String>,
    /// Destination prefix.
    #[serde(default)]
    pub dst: Option<String>,
    /// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"` or a number.
    #[serde(default)]
    pub proto: Option<NumOrName>,
    /// Source port or `"lo-hi"`.
    #[serde(default)]
    pub src_port: Option<NumOrName>,
    /// Destination port or `"lo-hi"`.
    #[serde(default)]
    pub dst_port: Option<NumOrName>,
    /// Flags that must be set or clear: `"syn,!ack"`.
    #[serde(default)]
    pub tcp_flags: Option<String>,
    /// ICMP type.
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[serde(default)]
    pub icmp_code: Option<u8>,
}

/// `[tenants.NAME.security_group]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupConfig {
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<SgRuleConfig>,
    /// Most connections tracked for this tenant at once, per worker.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most half-open TCP connections (handshake not complete) at once, per worker (default
    /// half of `max_connections`); a SYN beyond it evicts the oldest.
    #[serde(default)]
    pub max_half_open: Option<u32>,
    /// Most half-open TCP connections from one address at once, per worker (default a
    /// quarter of `max_half_open`, at least 16).
    #[serde(default)]
    pub max_half_open_per_source: Option<u32>,
    /// Idle timeouts in seconds.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
}

fn default_max_connections() -> u32 {
    4096
}

/// One allow rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SgRuleConfig {
    /// Name for traces (default `rules[i]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Which connections it opens: from the tenant or to it.
    pub direction: DirectionConfig,
    /// `"ipv4"` or `"ipv6"` (default both).
    #[serde(default)]
    pub ethertype: Option<NumOrName>,
    /// Protocol (default any).
    #[serde(default)]
    pub proto: Option<NumOrName>,
    /// Destination port or `"lo-hi"` (ICMP: the type).
    #[serde(default)]
    pub ports: Option<NumOrName>,
    /// The other end's prefix.
    #[serde(default)]
    pub remote: Option<String>,
}

/// Connection idle timeouts, seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Established TCP.
    pub tcp: u32,
    /// TCP before the handshake completes.
    pub tcp_handshake: u32,
    /// TCP after FIN or RST.
    pub tcp_closing: u32,
    /// UDP.
    pub udp: u32,
    /// ICMP echo.
    pub icmp: u32,
    /// Other protocols.
    pub other: u32,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            tcp: 3600,
            tcp_handshake: 30,
            tcp_closing: 30,
            udp: 60,
            icmp: 30,
            other: 60,
        }
    }
}

fn default_quota() -> u32 {
    1024
}

fn default_aging() -> u32 {
    300
}

/// One attachment: a port and the VLAN the tenant's frames carry there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttachConfig {
    /// Port name.
    pub port: String,
    /// VLAN id 1..=4094; absent for untagged.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Anti-spoofing: the source MACs hosts behind this attachment own (empty: any).
    #[serde(default)]
    pub macs: Vec<String>,
    /// Anti-spoofing: the source addresses (prefixes) they own (empty: any).
    #[serde(default)]
    pub ips: Vec<String>,
    /// With anti-spoofing: ether types the hosts may send besides IPv4, IPv6 and ARP
    /// (numbers, `0x88cc`, or names: `lldp`, `mpls`, ...).
    #[serde(default)]
    pub allow_ethertypes: Vec<NumOrName>,
}

/// A static MAC entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticMacConfig {
    /// The MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Port name of the attachment.
    pub port: String,
    /// VLAN of the attachment, when the tenant has several on that port.
    #[serde(default)]
    pub vlan: Option<u16>,
}
