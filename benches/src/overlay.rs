//! The overlay bench's switch (benches/benches/overlay.rs): one tenant with a VNI on ports A
//! and B and the underlay, 1 000 destination MACs, prebuilt traffic for plain forwarding,
//! encapsulation and decapsulation.

use std::sync::Arc;

use dataplane::batch::{BATCH_SIZE, Batch};
use dataplane::flow::overlay::{OverlayBuilder, Vtep};
use dataplane::frame::{FRAME_HEADROOM, FrameArea, FramePool, FrameRef};
use dataplane::pipeline::{Dispositions, Pipeline, TxLists};
use dataplane::port::PageSize;
use dataplane::snapshot::{Attachment, PortId, PortKind, SnapshotBuilder, TenantSpec, Underlay};
use dataplane::time::Nanos;
use dataplane::wire::MacAddr;

use crate::{LoopbackPort, Setup, ipv4_header_checksum};

const MACS: u32 = 1000;
const HOSTS: u32 = 8;
const VNI: u32 = 5000;
const HERE: [u8; 4] = [192, 168, 0, 1];

fn mac(kind: u8, i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, kind, b[0], b[1], b[2], b[3]]
}

fn vtep(h: u32) -> Vtep {
    Vtep { ip: [192, 168, 1, h as u8], mac: MacAddr(mac(0xe, h)) }
}

/// A 64-byte untagged IPv4/UDP frame; flow `k` in its ports.
fn frame(src: [u8; 6], dst: [u8; 6], k: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14..34]
        .copy_from_slice(&[0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    ipv4_header_checksum(&mut f[14..34]);
    let sport = 1024 + (k % 50_000) as u16;
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..42].copy_from_slice(&[0x00, 0x35, 0, 30, 0, 0]);
    f
}

/// `inner` in VXLAN from host `h` to this one.
fn vxlan(h: u32, inner: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 50];
    f[0..6].copy_from_slice(&mac(0xf, 0));
    f[6..12].copy_from_slice(&vtep(h).mac.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (20 + 16 + inner.len()) as u16;
    f[14..18].copy_from_slice(&[0x45, 0, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[20..22].copy_from_slice(&0x4000u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&vtep(h).ip);
    f[30..34].copy_from_slice(&HERE);
    ipv4_header_checksum(&mut f[14..34]);
    f[34..36].copy_from_slice(&50_000u16.to_be_bytes());
    f[36..38].copy_from_slice(&4789u16.to_be_bytes());
    f[38..40].copy_from_slice(&(total - 20).to_be_bytes());
    f[42] = 0x08;
    f[46..50].copy_from_slice(&(VNI << 8).to_be_bytes());
    f.extend_from_slice(inner);
    f
}

/// Port A.
pub const A: PortId = PortId(0);
/// Port B.
pub const B: PortId = PortId(1);
/// The underlay.
pub const U: PortId = PortId(2);

/// What the bench forwards.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Case {
    /// Port A to port B.
    Plain,
    /// Port A to other hosts over the underlay.
    Encap,
    /// Other hosts to port A.
    Decap,
}

/// The switch for `case`, MACs learned and mapped, its traffic prebuilt (`Setup::forward`
/// sends it; the loopback ports take the frames and the bench reuses them: encapsulation
/// writes only the headroom, decapsulation only moves the reference).
pub fn setup(case: Case) -> Setup {
    let mut b = SnapshotBuilder::new(1).fdb_capacity(4 * MACS);
    let a = b.port("a", "a", PortKind::Tenant);
    let pb = b.port("b", "b", PortKind::Tenant);
    let u = b.port("u", "u", PortKind::Underlay);
    b.port_underlay(
        u,
        Underlay { ip: HERE, mac: MacAddr(mac(0xf, 0)), udp_port: 4789, gateway: None },
    );
    let att = |port| Attachment { port, vlan: None };
    let mut t = TenantSpec::new("t", vec![att(a), att(pb), att(u)]);
    t.vni = Some(VNI);
    t.fdb_quota = 4 * MACS;
    t.mac_aging = Nanos::from_secs(3600);
    b.tenant(t);
    let snap = b.build().expect("bench snapshot");
    let area = FrameArea::new(16384, 2048, PageSize::Normal).expect("frame area");
    let mut s = Setup {
        pipeline: Pipeline::new(&snap),
        pool: FramePool::new(&area),
        tx: TxLists::new(3, 4 * BATCH_SIZE),
        ports: (0..3).map(|_| LoopbackPort::default()).collect(),
        batch: Batch::new(),
        disp: Dispositions::default(),
        traffic: Vec::new(),
        ingress: if case == Case::Decap { U } else { A },
        area,
        snap,
    };
    s.tx.schedule(&s.snap, |_| true, |_| 1, Nanos::ZERO);
    // Plain: the destinations learned behind B; decap: the local VMs learned behind A.
    let (learn_at, kind) = match case {
        Case::Plain => (B, 0xb),
        Case::Encap => (A, 0xa),
        Case::Decap => (A, 0xa),
    };
    for chunk in (0..MACS).collect::<Vec<_>>().chunks(BATCH_SIZE) {
        let frames: Vec<Vec<u8>> =
            chunk.iter().map(|&d| frame(mac(kind, d), [0xff; 6], d)).collect();
        send(&mut s, learn_at, &frames, Nanos::from_secs(1));
    }
    // The map once the MACs are learned (the broadcasts that taught them went nowhere
    // over the underlay), and the counters from zero.
    let mut m = OverlayBuilder::new(1);
    for d in 0..MACS {
        m.mac(VNI, MacAddr(mac(0xb, d)), vtep(d % HOSTS), &[]);
    }
    s.pipeline.set_overlay(&s.snap, Arc::new(m.build()));
    s.pipeline.counters = dataplane::trace::Counters::new(3, 1);
    s.prebuild(|r| {
        let d = r % MACS;
        match case {
            Case::Plain | Case::Encap => frame(mac(0xa, 0), mac(0xb, d), r),
            // As plain: one source (on another host) to 1 000 destinations (here).
            Case::Decap => vxlan(d % HOSTS, &frame(mac(0xb, 0), mac(0xa, d), r)),
        }
    });
    s
}

/// Sends `frames` (copied into fresh frames) in from `port` once.
fn send(s: &mut Setup, port: PortId, frames: &[Vec<u8>], now: Nanos) {
    s.batch.reset(port);
    for bytes in frames {
        let base = s.pool.alloc().expect("frame");
        let f = FrameRef::new(base + FRAME_HEADROOM, bytes.len() as u32);
        s.area.frame_mut(&f).expect("frame").copy_from_slice(bytes);
        s.batch.push(f).expect("a batch");
    }
    s.run(now);
}
