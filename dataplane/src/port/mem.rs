//! An in-memory port: frames injected by a test appear on RX; frames sent are kept until the
//! test takes them, then complete. The same [`FrameArea`] and [`FramePool`] as AF_XDP, so
//! pipeline tests, benches and fuzz targets run the real frame path minus the kernel.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use super::{Breath, FrameArea, FramePool, Port, PortCensus};
use crate::batch::Batch;
use crate::frame::FrameRef;

/// A port backed by queues in memory.
#[derive(Debug)]
pub struct MemPort {
    rx: VecDeque<FrameRef>,
    sent: VecDeque<FrameRef>,
    done: Vec<FrameRef>,
    tx_capacity: usize,
}

impl MemPort {
    /// A port whose TX side holds at most `tx_capacity` unsent frames (like a TX ring).
    pub fn new(tx_capacity: usize) -> Self {
        MemPort {
            rx: VecDeque::with_capacity(1024),
            sent: VecDeque::with_capacity(tx_capacity),
            done: Vec::with_capacity(tx_capacity),
            tx_capacity,
        }
    }

    /// Copies `bytes` into a free frame (a chain of them when it does not fit one: see
    /// [`FramePool::copy_in`]) and queues it for RX. Returns false if too few frames are free
    /// or the bytes need more than the longest chain.
    pub fn inject(&mut self, area: &mut FrameArea, pool: &mut FramePool, bytes: &[u8]) -> bool {
        let Some(f) = pool.copy_in(area, bytes) else { return false };
        self.rx.push_back(f);
        true
    }

    /// [`MemPort::inject`], the frame marked a large TCP segment to be cut as `g` says (what a
    /// vhost-user port takes from a guest's TSO).
    pub fn inject_gso(
        &mut self,
        area: &mut FrameArea,
        pool: &mut FramePool,
        bytes: &[u8],
        g: crate::frame::Gso,
    ) -> bool {
        let Some(f) = pool.copy_in(area, bytes) else { return false };
        self.rx.push_back(area.set_gso(f, g));
        true
    }

    /// Frames waiting to be received.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Takes every sent frame's bytes; the frames complete (and return on the next `reclaim`).
    pub fn take_sent(&mut self, area: &FrameArea) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.sent.len());
        while let Some(f) = self.sent.pop_front() {
            let mut bytes = area.frame(&f).map(<[u8]>::to_vec).unwrap_or_default();
            area.each_seg(&f, |a, n| bytes.extend_from_slice(area.seg(a, n).unwrap_or_default()));
            out.push(bytes);
            self.done.push(f);
        }
        out
    }

    /// Completes every sent frame without looking at it (a sink, for benches).
    pub fn discard_sent(&mut self) -> usize {
        let n = self.sent.len();
        self.done.extend(self.sent.drain(..));
        n
    }
}

impl Port for MemPort {
    fn retire(&mut self, area: &FrameArea, pool: &mut FramePool) -> u32 {
        for f in self.rx.drain(..).chain(self.sent.drain(..)).chain(self.done.drain(..)) {
            pool.free(area, f);
        }
        0
    }

    fn rx(&mut self, _area: &mut FrameArea, _pool: &mut FramePool, batch: &mut Batch) -> usize {
        let mut n = 0;
        while !batch.is_full() {
            let Some(f) = self.rx.pop_front() else { break };
            if let Err(f) = batch.push(f) {
                self.rx.push_front(f);
                break;
            }
            n += 1;
        }
        n
    }

    fn tx(&mut self, _area: &FrameArea, frames: &mut Vec<FrameRef>) -> usize {
        let n = frames.len().min(self.tx_capacity - self.sent.len());
        self.sent.extend(frames.drain(..n));
        n
    }

    fn reclaim(&mut self, area: &FrameArea, pool: &mut FramePool) -> usize {
        pool.free_all(area, self.done.drain(..))
    }

    fn kick(&mut self, _breath: Breath) -> bool {
        true
    }

    fn census(&self) -> PortCensus {
        let chunks = |q: &mut dyn Iterator<Item = &FrameRef>| q.map(FrameRef::chunks).sum();
        PortCensus {
            fill: 0,
            rx: chunks(&mut self.rx.iter()),
            tx: chunks(&mut self.sent.iter()),
            completion: chunks(&mut self.done.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PageSize;
    use crate::vocab::PortId;

    #[test]
    fn inject_rx_tx_reclaim_conserves_frames() {
        let mut area = FrameArea::new(16, 2048, PageSize::Normal).unwrap();
        let mut pool = FramePool::new(&area);
        let mut a = MemPort::new(4);
        let mut b = MemPort::new(4);
        for i in 0..6u8 {
            assert!(a.inject(&mut area, &mut pool, &[i; 60]));
        }
        assert!(!a.inject(&mut area, &mut pool, &[0; 18 * 1792 + 1]), "longer than a chain");
        let mut batch = Batch::new();
        batch.reset(PortId(0));
        assert_eq!(a.rx(&mut area, &mut pool, &mut batch), 6);
        // TX ring holds 4: the other 2 stay with the caller.
        let mut frames: Vec<FrameRef> = batch.take_frames().map(|(f, _)| f).collect();
        assert_eq!(b.tx(&area, &mut frames), 4);
        assert_eq!(frames.len(), 2);
        for f in frames {
            pool.free(&area, f);
        }
        assert_eq!(pool.len() + b.census().total() as usize, 16);
        let sent = b.take_sent(&area);
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[3], vec![3u8; 60]);
        assert_eq!(b.reclaim(&area, &mut pool), 4);
        assert_eq!(pool.len(), 16);
        assert_eq!(pool.double_frees, 0);
    }

    #[test]
    fn a_packet_larger_than_a_chunk_travels_as_one_chain_and_frees_every_chunk() {
        let mut area = FrameArea::new(16, 2048, PageSize::Normal).unwrap();
        let mut pool = FramePool::new(&area);
        let mut a = MemPort::new(4);
        let big: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        assert!(a.inject(&mut area, &mut pool, &big));
        assert_eq!((a.census().rx, pool.len()), (6, 10), "9 000 bytes: 5 full frames and one");
        let mut batch = Batch::new();
        batch.reset(PortId(0));
        assert_eq!(a.rx(&mut area, &mut pool, &mut batch), 1);
        let f = batch.take_frames().next().unwrap().0;
        assert_eq!((f.len(), f.head_len(), f.segs(), f.chunks()), (9000, 1792, 5, 6));
        // A flood copy copies the whole chain.
        let copy = pool.copy_frame(&mut area, &f).unwrap();
        assert_eq!((copy.len(), copy.segs(), pool.len()), (9000, 5, 4));
        let mut frames = vec![f, copy];
        assert_eq!(a.tx(&area, &mut frames), 2);
        let sent = a.take_sent(&area);
        assert!(sent.iter().all(|s| *s == big));
        assert_eq!(a.reclaim(&area, &mut pool), 12);
        assert_eq!((pool.len(), pool.double_frees), (16, 0));
        // Too few chunks for a copy: none taken.
        let f = pool.copy_in(&mut area, &big).unwrap();
        let g = pool.copy_in(&mut area, &big).unwrap();
        assert!(pool.copy_frame(&mut area, &f).is_none());
        assert_eq!(pool.len(), 4);
        pool.free(&area, f);
        pool.free(&area, g);
        assert_eq!((pool.len(), pool.double_frees), (16, 0));
    }
}
