//! The vocabulary every layer of the dataplane shares: the ids of ports, tenants and
//! attachments, what becomes of a frame ([`Disposition`]) and why it is dropped
//! ([`DropReason`], [`ParseError`]), which way it crosses a tenant's boundary ([`Direction`]).
//! It imports nothing of the crate, so every module may use it (docs/ARCHITECTURE.md, "Layers").
#![forbid(unsafe_code)]

/// The `since` of a vacant id.
pub const VACANT: u64 = u64::MAX;

/// Dense index of a port in `Snapshot::ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortId(pub u16);

impl PortId {
    /// As an array index.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Dense index of a tenant in `Snapshot::tenants`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TenantId(pub u16);

impl TenantId {
    /// No tenant: the frame's (port, VLAN) has none, or its tags could not be read. Indexes
    /// nothing, so counters indexed by it are skipped.
    pub const NONE: TenantId = TenantId(u16::MAX);

    /// As an array index.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of an attachment within its tenant's `TenantSpec::attachments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AttachmentId(pub u16);

macro_rules! labelled_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $label:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every variant, in discriminant order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// Number of variants (array dimension).
            pub const COUNT: usize = Self::ALL.len();

            /// The Prometheus label value (snake_case of the variant).
            pub const fn as_label(self) -> &'static str {
                match self { $($name::$v => $label,)* }
            }

            /// Array index of this variant.
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

labelled_enum! {
    /// Why a packet was dropped. Exactly one per dropped packet.
    DropReason {
        /// The frame failed parsing (see [`ParseError`] for which check).
        Malformed => "malformed",
        /// No tenant is attached to the (ingress port, VLAN) the frame arrived on.
        UnknownTenant => "unknown_tenant",
        /// Source MAC is multicast, broadcast or zero.
        InvalidSrcMac => "invalid_src_mac",
        /// The destination is known to be on the port the frame came from.
        Hairpin => "hairpin",
        /// Nowhere to send it (for example a flood in a tenant with one attachment).
        NoRoute => "no_route",
        /// A VLAN tag had to be pushed but the frame has no headroom left.
        NoHeadroom => "no_headroom",
        /// No free frame for a flood copy.
        NoFrame => "no_frame",
        /// The egress port's TX ring (or pending list) was full.
        TxFull => "tx_full",
        /// The source (MAC, IP, ARP or neighbour advertisement) is not one the attachment owns.
        Spoof => "spoof",
        /// An ACL rule (or the default action) denied it, or no security-group rule opens it.
        Policy => "policy",
        /// A security group would open the connection, but the tenant's connection quota or
        /// the table is full.
        ConntrackFull => "conntrack_full",
        /// The tenant's ingress policer had no tokens for it.
        RateLimit => "rate_limit",
        /// The tenant's egress queue on the port was full.
        QueueFull => "queue_full",
        /// The egress port's interface is gone (deleted); its frames are dropped until it
        /// returns and the port is opened again.
        PortDown => "port_down",
        /// An IP fragment of a tenant with policy that cannot be judged: a later fragment
        /// whose first fragment was not seen (or expired), one that overlaps another fragment
        /// of its datagram, or a first fragment the fragment table had no room for.
        Fragment => "fragment",
        /// Larger than the egress port's MTU; or, received, a chain longer than the longest
        /// the switch takes (`MAX_SEGS` + 1 frames).
        TooBig => "too_big",
        /// An attachment with anti-spoofing sent an ether type it may not (IPv4, IPv6, ARP
        /// and the attachment's `allow_ethertypes` only).
        Ethertype => "ethertype",
        /// Arrived on an underlay port and is not VXLAN for this host: another destination
        /// address or UDP port, not IPv4 UDP, an outer fragment, or a bad VXLAN header.
        NotOverlay => "not_overlay",
        /// VXLAN with a VNI no tenant of this host has.
        UnknownVni => "unknown_vni",
        /// For another host of the tenant, but the cluster map knows none (nowhere to send it).
        NoVtep => "no_vtep",
    }
}

labelled_enum! {
    /// Which parse check failed for a `Malformed` drop.
    ParseError {
        /// Shorter than an Ethernet header.
        Ethernet => "ethernet",
        /// A VLAN tag is cut short, or more than two tags.
        Vlan => "vlan",
        /// 802.3 length field larger than the frame, or in the invalid 1501..1535 range.
        Length => "length",
        /// ARP header or addresses cut short.
        Arp => "arp",
        /// IPv4 version, IHL or total length inconsistent with the frame.
        Ipv4 => "ipv4",
        /// IPv6 version or payload length inconsistent, or a bad extension-header chain.
        Ipv6 => "ipv6",
        /// TCP header cut short or bad data offset.
        Tcp => "tcp",
        /// UDP header cut short or bad length.
        Udp => "udp",
        /// ICMP or ICMPv6 header cut short.
        Icmp => "icmp",
    }
}

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Send on `port`, with the outer tag set to `vlan` (or untagged).
    Tx {
        /// Egress port.
        port: PortId,
        /// Egress VLAN of the tenant's attachment there.
        vlan: Option<u16>,
    },
    /// Send to every attachment of the frame's tenant except those on the ingress port.
    Flood,
    /// Drop and count.
    Drop(DropReason),
}

/// Which way a frame crosses the tenant boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the tenant (arrived on a tenant port). Cloud "egress".
    FromTenant,
    /// Delivered to the tenant (leaves on a tenant port). Cloud "ingress".
    ToTenant,
}

impl Direction {
    /// Both, in index order.
    pub const ALL: [Direction; 2] = [Direction::FromTenant, Direction::ToTenant];

    /// Array index.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::FromTenant => "from-tenant",
            Direction::ToTenant => "to-tenant",
        }
    }
}
