//! Live capture of one tenant's frames, or of everything that arrives on one port (before its
//! tenant is known, so frames of no tenant and malformed ones too): a filter, and a tap that
//! copies matching frames, with the port they came in on and the pipeline's verdict, into a
//! ring that a writer thread drains.
//!
//! Each worker has its own single-producer ring ([`crate::handoff`]), allocated when the
//! capture starts: the tap copies up to `snaplen` bytes of a frame into one or more messages
//! of 128 bytes and publishes them once per batch, with one release store; the writer polls
//! the rings and reassembles the frames. No lock, allocation, system call or per-frame
//! compare-and-swap on the worker (a channel of buffers, the first version, cost 10-15 % of
//! the pipeline with 1 % of the frames copied: PERF(tracing)). When the ring is full (the
//! writer is behind) the copy is skipped and counted; the frame itself is never held back or
//! dropped. Only frames the tenant's own pipeline stages saw are offered, so a capture of one
//! tenant never holds another tenant's frames.

use crate::batch::Meta;
use crate::policy::Prefix;
use crate::vocab::{DropReason, PortId, TenantId};

/// What a capture takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The frames of one tenant (those its own stages saw).
    Tenant(TenantId),
    /// Every frame that arrives on one port, whatever its tenant or fate.
    Port(PortId),
}

/// The pipeline's verdict on a captured frame, as the ring carries it: 0 sent to one port, 1
/// flooded, 2 + the reason's index dropped.
pub mod verdict {
    use crate::vocab::DropReason;

    /// Sent to one port.
    pub const TX: u8 = 0;
    /// Flooded to the tenant's attachments.
    pub const FLOOD: u8 = 1;

    /// The code of a drop under `r`.
    #[inline]
    pub const fn drop(r: DropReason) -> u8 {
        2 + r as u8
    }

    /// The drop reason of a code, if it is a drop.
    pub fn reason(code: u8) -> Option<DropReason> {
        code.checked_sub(2).and_then(|i| DropReason::ALL.get(usize::from(i)).copied())
    }

    /// The verdict for people: `forwarded`, `flooded`, `drop (policy)`.
    pub fn text(code: u8) -> String {
        match (code, reason(code)) {
            (TX, _) => "forwarded".into(),
            (FLOOD, _) => "flooded".into(),
            (_, Some(r)) => format!("drop ({})", r.as_label()),
            _ => "unknown".into(),
        }
    }
}

/// Longest copy of a frame.
pub const MAX_SNAPLEN: usize = 2048;

/// Which frames of the tenant to keep; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureFilter {
    /// Source or destination address inside this prefix (`host` is a /32 or /128).
    pub net: Option<Prefix>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// Source or destination L4 port.
    pub port: Option<u16>,
    /// Only frames that arrived on a tenant port (`Some(true)`: from the tenant) or on the
    /// uplink (`Some(false)`: to the tenant).
    pub from_tenant: Option<bool>,
}

impl CaptureFilter {
    /// True when `m`, which arrived on a tenant port or not, passes.
    #[inline]
    pub fn matches(&self, m: &Meta, from_tenant: bool) -> bool {
        let k = &m.key;
        self.from_tenant.is_none_or(|f| f == from_tenant)
            && self.proto.is_none_or(|p| p == k.proto)
            && self.port.is_none_or(|p| m.l4_offset != 0 && (k.src_port == p || k.dst_port == p))
            && self.net.is_none_or(|n| n.contains(&k.src_ip) || n.contains(&k.dst_ip))
    }
}

/// Frame bytes one ring message carries.
pub const CHUNK: usize = 128;
/// Words in a ring message: a header (length, original length, time) and 128 frame bytes.
pub const MESSAGE_WORDS: usize = 2 + CHUNK / 8;
/// A ring message.
pub type Message = crate::handoff::Message<MESSAGE_WORDS>;
/// Marks the first message of a frame. Its header word holds the bytes kept (bits 0-11), the
/// length on the wire (12-31), the ingress port (32-47), the verdict (48-55) and whether the
/// frame came from a tenant port (56).
const FIRST: u64 = 1 << 63;

/// The worker's end of a capture.
#[derive(Debug)]
pub struct Tap {
    /// What is captured.
    pub scope: Scope,
    /// Which of its frames.
    pub filter: CaptureFilter,
    /// Dropped frames only.
    pub drops_only: bool,
    /// Bytes kept of each frame.
    pub snaplen: usize,
    /// Copies to the writer.
    pub out: crate::handoff::Sender<MESSAGE_WORDS>,
    /// Copies skipped because the ring was full.
    pub skipped: u64,
    /// Frames copied.
    pub copied: u64,
    /// Copied since the last publish.
    unpublished: bool,
}

impl Tap {
    /// A tap for `tenant`'s frames that pass `filter`, `snaplen` bytes of each, into `out`.
    pub fn new(
        scope: Scope,
        filter: CaptureFilter,
        snaplen: usize,
        out: crate::handoff::Sender<MESSAGE_WORDS>,
    ) -> Tap {
        Tap {
            scope,
            filter,
            drops_only: false,
            snaplen,
            out,
            skipped: 0,
            copied: 0,
            unpublished: false,
        }
    }

    /// True when the tap may take frames that arrived on `port` (a batch's port: a port
    /// capture skips the other ports' batches whole).
    #[inline]
    pub fn takes_port(&self, port: PortId) -> bool {
        !matches!(self.scope, Scope::Port(p) if p != port)
    }

    /// True when the tap may take a frame of tenant `t` (the cheapest test, per frame: most
    /// frames are another tenant's).
    #[inline]
    pub fn takes_tenant(&self, t: TenantId) -> bool {
        !matches!(self.scope, Scope::Tenant(mine) if mine != t)
    }

    /// True when the tap takes a frame with verdict `code`: a tenant capture never holds
    /// frames whose tenant is not known for sure (malformed, of no tenant).
    #[inline]
    pub fn takes_verdict(&self, code: u8) -> bool {
        let tenant_known = !matches!(self.scope, Scope::Tenant(_))
            || (code != verdict::drop(DropReason::Malformed)
                && code != verdict::drop(DropReason::UnknownTenant));
        tenant_known && (!self.drops_only || code >= 2)
    }

    /// Offers a frame that arrived on `port`, `wire_len` bytes long in `parts` (its segments in
    /// order: one for a frame of one chunk), with verdict `code`; copies up to the snap length
    /// into the ring if it passes the filter and the ring has room. No allocation, no system
    /// call, no lock: the copy becomes visible to the writer at the next [`Tap::publish`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn offer<'a>(
        &mut self,
        now_ns: u64,
        port: PortId,
        m: &Meta,
        from_tenant: bool,
        wire_len: usize,
        parts: impl IntoIterator<Item = &'a [u8]>,
        code: u8,
    ) {
        if !self.filter.matches(m, from_tenant) {
            return;
        }
        let want = wire_len.min(self.snaplen).min(MAX_SNAPLEN);
        if !self.out.has_room(want.div_ceil(CHUNK).max(1)) {
            self.skipped += 1;
            return;
        }
        // The parts are streamed into messages of CHUNK bytes each (the last one shorter); a
        // chain that ends before `want` bytes (a corrupted link: a bug) is padded with zeros so
        // the message count always matches the header's.
        let mut parts = parts.into_iter();
        let mut cur: &[u8] = &[];
        for c in 0..want.div_ceil(CHUNK).max(1) {
            let n = (want - c * CHUNK).min(CHUNK);
            let mut buf = [0u8; CHUNK];
            let mut fill = 0;
            while fill < n {
                if cur.is_empty() {
                    match parts.next() {
                        Some(p) => cur = p,
                        None => break,
                    }
                    continue;
                }
                let k = (n - fill).min(cur.len());
                buf[fill..fill + k].copy_from_slice(&cur[..k]);
                (fill, cur) = (fill + k, &cur[k..]);
            }
            let mut msg: Message = [0; MESSAGE_WORDS];
            if c == 0 {
                msg[0] = FIRST
                    | u64::from(from_tenant) << 56
                    | u64::from(code) << 48
                    | u64::from(port.0) << 32
                    | (wire_len as u64 & 0xf_ffff) << 12
                    | want as u64;
                msg[1] = now_ns;
            }
            for (w, b) in msg[2..].iter_mut().zip(buf[..n].chunks(8)) {
                let mut word = [0u8; 8];
                word[..b.len()].copy_from_slice(b);
                *w = u64::from_le_bytes(word);
            }
            // Cannot fail: the room was checked above and only this tap writes.
            self.out.push(msg);
        }
        self.copied += 1;
        self.unpublished = true;
    }

    /// Makes the copies of this batch visible to the writer (one store per batch).
    #[inline]
    pub fn publish(&mut self) {
        if self.unpublished {
            self.out.publish();
            self.unpublished = false;
        }
    }
}

/// One captured frame, as the writer gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured<'a> {
    /// When it was seen, on the worker's monotonic clock (the writer maps it to wall time).
    pub at_ns: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// The bytes kept.
    pub data: &'a [u8],
    /// The port it came in on.
    pub port: PortId,
    /// The pipeline's verdict ([`verdict`]).
    pub verdict: u8,
    /// It came in on a tenant port.
    pub from_tenant: bool,
}

/// The writer's end of one worker's ring: reassembles frames from their messages.
#[derive(Debug)]
pub struct Reader {
    rx: crate::handoff::Receiver<MESSAGE_WORDS>,
    buf: Vec<u8>,
    want: usize,
    at_ns: u64,
    header: u64,
}

impl Reader {
    /// Hands every whole frame published so far to `f`. Returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(Captured<'_>)) -> usize {
        let mut frames = 0;
        let Reader { rx, buf, want, at_ns, header } = self;
        rx.pop(usize::MAX, |msg| {
            if msg[0] & FIRST != 0 {
                *want = (msg[0] & 0xfff) as usize;
                *header = msg[0];
                *at_ns = msg[1];
                buf.clear();
            }
            for w in &msg[2..] {
                buf.extend_from_slice(&w.to_le_bytes());
            }
            if buf.len() >= *want {
                buf.truncate(*want);
                let h = *header;
                f(Captured {
                    at_ns: *at_ns,
                    orig_len: ((h >> 12) & 0xf_ffff) as u32,
                    data: buf,
                    port: PortId((h >> 32) as u16),
                    verdict: (h >> 48) as u8,
                    from_tenant: (h >> 56) & 1 != 0,
                });
                frames += 1;
                *want = usize::MAX;
            }
        });
        frames
    }
}

/// A ring for one worker's tap with room for `messages` messages of [`CHUNK`] bytes: the
/// tap's end and the writer's.
pub fn ring(messages: usize) -> (crate::handoff::Sender<MESSAGE_WORDS>, Reader) {
    let (tx, rx) = crate::handoff::ring::<MESSAGE_WORDS>(messages);
    (
        tx,
        Reader {
            rx,
            buf: Vec::with_capacity(MAX_SNAPLEN + CHUNK),
            want: usize::MAX,
            at_ns: 0,
            header: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tap {
        /// The three tests the pipeline makes, in its order.
        fn wants(&self, port: PortId, m: &Meta, code: u8) -> bool {
            self.takes_port(port) && self.takes_tenant(m.tenant) && self.takes_verdict(code)
        }
    }
    use crate::batch::Meta;

    #[test]
    fn a_chain_is_captured_across_its_segments_up_to_the_snap_length() {
        let (tx, mut rd) = ring(16);
        let mut tap = Tap::new(Scope::Tenant(TenantId(1)), CaptureFilter::default(), 1500, tx);
        let mut m = Meta::EMPTY;
        m.tenant = TenantId(1);
        let big: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        // Segments that do not fall on message boundaries (100 + 1050 + the rest).
        let parts = [&big[..100], &big[100..1150], &big[1150..]];
        tap.offer(1, PortId(1), &m, true, big.len(), parts, verdict::TX);
        // A chain shorter than it claims (a broken link) is padded, never misread.
        tap.offer(2, PortId(1), &m, true, 400, [&big[..90]], verdict::TX);
        tap.publish();
        let mut got = Vec::new();
        rd.drain(|c| got.push((c.orig_len, c.data.to_vec())));
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, &got[0].1[..]), (9000, &big[..1500]));
        assert_eq!((got[1].0, got[1].1.len(), &got[1].1[..90]), (400, 400, &big[..90]));
        assert!(got[1].1[90..].iter().all(|&b| b == 0));
    }

    #[test]
    fn frames_cross_the_ring_whole_and_a_full_ring_skips() {
        let (tx, mut rd) = ring(8);
        let mut tap = Tap::new(Scope::Tenant(TenantId(1)), CaptureFilter::default(), 300, tx);
        let mut m = Meta::EMPTY;
        m.tenant = TenantId(1);
        let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let small = [7u8; 60];
        let p = PortId(3);
        let policy = verdict::drop(DropReason::Policy);
        assert!(tap.wants(p, &m, verdict::TX));
        tap.offer(5, p, &m, true, big.len(), [&big[..]], verdict::TX); // 300 kept: 3 messages
        tap.offer(6, p, &m, true, small.len(), [&small[..]], policy); // 1 message
        m.tenant = TenantId(2);
        assert!(!tap.wants(p, &m, verdict::TX), "another tenant's");
        assert_eq!(rd.drain(|_| panic!("not published yet")), 0);
        tap.publish();
        let mut got = Vec::new();
        rd.drain(|c| got.push((c.at_ns, c.orig_len, c.data.to_vec(), c.port, c.verdict)));
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1, &got[0].2[..]), (5, 1000, &big[..300]));
        assert_eq!((got[1].0, got[1].1, &got[1].2[..]), (6, 60, &small[..]));
        assert_eq!((got[1].3, verdict::text(got[1].4)), (p, "drop (policy)".to_string()));
        // Eight messages of room: two 3-message frames fit, the third is skipped.
        m.tenant = TenantId(1);
        for t in 0..3 {
            tap.offer(t, p, &m, false, big.len(), [&big[..]], verdict::TX);
        }
        assert_eq!((tap.copied, tap.skipped), (4, 1));
        tap.publish();
        assert_eq!(rd.drain(|c| assert_eq!(c.data, &big[..300])), 2);
    }

    #[test]
    fn a_port_capture_takes_every_frame_of_its_port_and_drops_only_when_asked() {
        let (tx, _rd) = ring(8);
        let mut tap = Tap::new(Scope::Port(PortId(1)), CaptureFilter::default(), 300, tx);
        let m = Meta::EMPTY;
        let unknown = verdict::drop(DropReason::UnknownTenant);
        assert!(tap.wants(PortId(1), &m, unknown), "frames of no tenant too");
        assert!(!tap.wants(PortId(2), &m, unknown));
        tap.drops_only = true;
        assert!(!tap.wants(PortId(1), &m, verdict::FLOOD));
        assert!(tap.wants(PortId(1), &m, unknown));
    }
}
