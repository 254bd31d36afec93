//! The rings between workers, and how frames and MACs are encoded on them.
//!
//! Every ordered pair of workers has three [`crate::handoff`] rings:
//! - `frames`: a frame to send on a port whose sockets the receiver owns (already re-tagged
//!   for that port by the sender);
//! - `returns`: a chunk of the receiver's pool, coming home after the sender sent or dropped
//!   it, so that every pool keeps its share of frames whatever the traffic pattern;
//! - `learns`: a MAC the sender learned ([`Announcement`]);
//! - `conns`: a connection the sender's security-group table opened (five words).
//!
//! A `returns` ring has room for every chunk its receiver owns, so it can never refuse one:
//! a frame is never lost on the way home.

use std::ops::Range;
use std::sync::Arc;

use crate::frame::FrameRef;
use crate::handoff::{self, Message, Receiver, Sender};
use crate::pipeline::Announcement;
use crate::port::afxdp::wait::Bell;
use crate::snapshot::Attachment;
use crate::vocab::{PortId, TenantId};
use crate::wire::MacAddr;

/// Frames one worker may have in flight towards another.
pub const FRAME_RING: usize = 2048;
/// Announcements one worker may have in flight towards another.
pub const LEARN_RING: usize = 1024;
/// Connection openings one worker may have in flight towards another.
pub const CONN_RING: usize = 1024;

/// This worker's writing ends towards one other worker.
#[derive(Debug)]
pub struct PeerOut {
    /// Frames for ports the other worker owns.
    pub frames: Sender<3>,
    /// Chunks of the other worker's pool.
    pub returns: Sender,
    /// MACs learned here.
    pub learns: Sender,
    /// Connections opened here.
    pub conns: Sender<5>,
}

/// This worker's reading ends from one other worker.
#[derive(Debug)]
pub struct PeerIn {
    /// Frames to send on this worker's ports.
    pub frames: Receiver<3>,
    /// Chunks of this worker's pool coming home.
    pub returns: Receiver,
    /// MACs the other worker learned.
    pub learns: Receiver,
    /// Connections the other worker opened.
    pub conns: Receiver<5>,
}

/// One worker's place in the mesh.
#[derive(Debug)]
pub struct Links {
    /// This worker's index.
    pub me: usize,
    /// Writing ends, indexed by worker (`None` at `me`).
    pub out: Vec<Option<PeerOut>>,
    /// Reading ends, indexed by worker (`None` at `me`).
    pub inbox: Vec<Option<PeerIn>>,
    /// Which chunks each worker's pool owns, indexed by worker.
    pub shares: Shares,
    /// Every worker's doorbell, indexed by worker: rung when frames are handed to a worker
    /// that sleeps.
    pub bells: Arc<[Bell]>,
}

impl Links {
    /// A lone worker: no peers, owns every chunk.
    pub fn alone(chunks: u32) -> Self {
        Links {
            me: 0,
            out: vec![None],
            inbox: vec![None],
            shares: Shares::new(chunks, 1),
            bells: Arc::new([]),
        }
    }

    /// True when there are other workers.
    pub fn has_peers(&self) -> bool {
        self.out.len() > 1
    }

    /// This worker's doorbell (None when alone: nobody rings).
    pub fn bell(&self) -> Option<&Bell> {
        if self.has_peers() { self.bells.get(self.me) } else { None }
    }

    /// True when another worker has published frames for this one.
    pub fn frames_waiting(&self) -> bool {
        self.inbox.iter().flatten().any(|i| !i.frames.is_empty())
    }

    /// After a breath: wakes the workers that sleep with frames from this one waiting.
    pub fn ring_sleepers(&self) {
        for (w, link) in self.out.iter().enumerate() {
            if let (Some(link), Some(bell)) = (link, self.bells.get(w))
                && !link.frames.is_empty()
            {
                bell.ring_if_asleep();
            }
        }
    }
}

/// How the chunks of the area are divided between workers: contiguous equal ranges, the last
/// one taking the remainder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    chunks: u32,
    workers: u32,
    per: u32,
}

impl Shares {
    /// `chunks` divided between `workers` (at least one).
    pub fn new(chunks: u32, workers: usize) -> Self {
        let workers = (workers.max(1)) as u32;
        Shares { chunks, workers, per: (chunks / workers).max(1) }
    }

    /// The chunk indexes worker `w` owns.
    pub fn range(&self, w: usize) -> Range<u32> {
        let w = w as u32;
        let lo = (w * self.per).min(self.chunks);
        let hi =
            if w + 1 == self.workers { self.chunks } else { ((w + 1) * self.per).min(self.chunks) };
        lo..hi
    }

    /// The worker owning chunk `idx`.
    #[inline]
    pub fn owner(&self, idx: u32) -> usize {
        (idx / self.per).min(self.workers - 1) as usize
    }
}

/// The rings for `workers` workers over an area of `chunks` chunks, cut into each worker's
/// [`Links`].
pub fn mesh(workers: usize, chunks: u32) -> Vec<Links> {
    let shares = Shares::new(chunks, workers);
    let bells: Arc<[Bell]> = (0..workers).map(|_| Bell::new()).collect();
    let mut links: Vec<Links> = (0..workers)
        .map(|me| Links {
            me,
            out: (0..workers).map(|_| None).collect(),
            inbox: (0..workers).map(|_| None).collect(),
            shares,
            bells: bells.clone(),
        })
        .collect();
    for from in 0..workers {
        for to in 0..workers {
            if from == to {
                continue;
            }
            let home = shares.range(to);
            let (frames, frames_rx) = handoff::ring(FRAME_RING);
            let (returns, returns_rx) = handoff::ring((home.end - home.start) as usize);
            let (learns, learns_rx) = handoff::ring(LEARN_RING);
            let (conns, conns_rx) = handoff::ring(CONN_RING);
            links[from].out[to] = Some(PeerOut { frames, returns, learns, conns });
            links[to].inbox[from] = Some(PeerIn {
                frames: frames_rx,
                returns: returns_rx,
                learns: learns_rx,
                conns: conns_rx,
            });
        }
    }
    links
}

/// A frame handed to the worker that owns its egress port. Owns its frame, so it is not
/// `Copy`: encoding it for the ring moves the frame onto the ring.
#[derive(Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The frame, already re-tagged for `port`.
    pub frame: FrameRef,
    /// Egress port.
    pub port: PortId,
    /// The frame's tenant.
    pub tenant: TenantId,
    /// Where it came in (for the counters).
    pub ingress: PortId,
    /// The low 16 bits of the sender's snapshot generation: the receiver drops the frame
    /// when `port`'s id was given to another port after it (see `Snapshot` on stable ids).
    pub stamp: u16,
}

impl Handoff {
    /// Three words: address and length of the first segment; ports, tenant and stamp; the
    /// segments after the first (0 for a frame of one chunk). The frame goes with them.
    #[inline]
    pub fn encode(self) -> Message<3> {
        [
            self.frame.addr() | (u64::from(self.frame.head_len()) << 48),
            u64::from(self.port.0)
                | (u64::from(self.tenant.0) << 16)
                | (u64::from(self.ingress.0) << 32)
                | (u64::from(self.stamp) << 48),
            u64::from(self.frame.more_word()),
        ]
    }

    /// Chunks the frame of an encoded handoff holds (for the census).
    #[inline]
    pub fn chunks(m: Message<3>) -> usize {
        1 + (m[2] >> 24) as usize
    }

    /// True when the frame was handed over before `since`, the generation in which its
    /// port's current holder took the id (or the id is vacant): it was meant for another port.
    #[inline]
    pub fn is_stale(&self, since: u64) -> bool {
        since == crate::vocab::VACANT || (since as u16).wrapping_sub(self.stamp) as i16 > 0
    }

    /// The inverse of [`Handoff::encode`]: the frame is the receiver's now.
    #[inline]
    pub fn decode(m: Message<3>) -> Self {
        Handoff {
            frame: FrameRef::from_words(m[0] & ((1 << 48) - 1), (m[0] >> 48) as u32, m[2] as u32),
            port: PortId(m[1] as u16),
            tenant: TenantId((m[1] >> 16) as u16),
            ingress: PortId((m[1] >> 32) as u16),
            stamp: (m[1] >> 48) as u16,
        }
    }
}

/// No VLAN, on the ring.
const UNTAGGED: u64 = 0xffff;

/// An announcement in two words: tenant and MAC; port and VLAN.
#[inline]
pub fn encode_learn(a: &Announcement) -> Message {
    let vlan = a.at.vlan.map_or(UNTAGGED, u64::from);
    [(u64::from(a.tenant.0) << 48) | a.mac.to_u64(), u64::from(a.at.port.0) | (vlan << 16)]
}

/// The inverse of [`encode_learn`].
#[inline]
pub fn decode_learn(m: Message) -> Announcement {
    let vlan = (m[1] >> 16) & 0xffff;
    Announcement {
        tenant: TenantId((m[0] >> 48) as u16),
        mac: MacAddr::from_u64(m[0]),
        at: Attachment {
            port: PortId(m[1] as u16),
            vlan: if vlan == UNTAGGED { None } else { Some(vlan as u16) },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_chunk_once() {
        for (chunks, workers) in [(16, 1), (16, 3), (4096, 2), (5, 4), (3, 8)] {
            let s = Shares::new(chunks, workers);
            let mut seen = vec![0u32; chunks as usize];
            for w in 0..workers {
                for i in s.range(w) {
                    seen[i as usize] += 1;
                    assert_eq!(s.owner(i), w, "{chunks} chunks, {workers} workers, chunk {i}");
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{chunks}/{workers}: {seen:?}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let h = || Handoff {
            frame: FrameRef::new(0xffff_ffff_f100, 9018),
            port: PortId(65_000),
            tenant: TenantId(4095),
            ingress: PortId(3),
            stamp: 0xfffe,
        };
        assert_eq!(Handoff::decode(h().encode()), h());
        let h = h();
        // Stale when the port's id changed hands after the stamp, across the 16-bit wrap too.
        assert!(!h.is_stale(0xfffe) && !h.is_stale(0x1_0000 - 100));
        assert!(h.is_stale(0xffff) && h.is_stale(0x1_0003) && h.is_stale(crate::vocab::VACANT));
        for vlan in [None, Some(0), Some(4095)] {
            let a = Announcement {
                tenant: TenantId(65_535),
                mac: MacAddr([0xff, 2, 3, 4, 5, 0xfe]),
                at: Attachment { port: PortId(7), vlan },
            };
            assert_eq!(decode_learn(encode_learn(&a)), a);
        }
    }

    #[test]
    fn a_mesh_connects_every_pair_and_returns_never_overflow() {
        let links = mesh(3, 300);
        for l in &links {
            for w in 0..3 {
                assert_eq!(l.out[w].is_some(), w != l.me);
                assert_eq!(l.inbox[w].is_some(), w != l.me);
            }
            assert!(l.has_peers());
        }
        let to1 = links[0].out[1].as_ref().unwrap();
        assert!(to1.returns.capacity() >= links[0].shares.range(1).len());
        assert!(!Links::alone(8).has_peers());
    }
}
