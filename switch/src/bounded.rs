//! Serving clients with bounds, for the control socket and the metrics endpoint (issue 24): one
//! thread reads every connection's request (`poll`: it sleeps in the kernel until a client
//! writes, and takes no CPU from the workers otherwise), with a deadline and a size limit;
//! a few threads answer whole requests, each write with a deadline too. An idle or slow
//! client holds one descriptor, never a thread that answers the others, and there are at most
//! [`Bounds::connections`] of them; beyond, a client is told why and closed.
//!
//! # Why by hand
//! The protocols are a line of JSON and an HTTP/1.0 GET; what matters here is the bounds, which
//! tiny_http (a thread per connection, no deadline on a request) did not give.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A client connection.
pub trait Conn: Read + Write + AsFd + Send + 'static {
    /// As the socket's own.
    fn nonblocking(&self, on: bool) -> io::Result<()>;
    /// As the socket's own.
    fn write_deadline(&self, d: Duration) -> io::Result<()>;
}

/// A listening socket.
pub trait Listen: AsFd + Send + 'static {
    /// Its connections.
    type Conn: Conn;
    /// One waiting connection (non-blocking: `WouldBlock` when none).
    fn take(&self) -> io::Result<Self::Conn>;
    /// As the socket's own.
    fn nonblocking(&self, on: bool) -> io::Result<()>;
}

impl Conn for UnixStream {
    fn nonblocking(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
    fn write_deadline(&self, d: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(d))
    }
}

impl Conn for TcpStream {
    fn nonblocking(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
    fn write_deadline(&self, d: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(d))
    }
}

impl Listen for UnixListener {
    type Conn = UnixStream;
    fn take(&self) -> io::Result<UnixStream> {
        self.accept().map(|(c, _)| c)
    }
    fn nonblocking(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

impl Listen for TcpListener {
    type Conn = TcpStream;
    fn take(&self) -> io::Result<TcpStream> {
        self.accept().map(|(c, _)| c)
    }
    fn nonblocking(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

/// Connections read at once, at most (lowered to what `RLIMIT_NOFILE` leaves).
pub const MAX_CONNECTIONS: usize = 4096;

/// The bounds of one server and its protocol's framing.
#[derive(Clone, Copy)]
pub struct Bounds {
    /// Thread names start with this.
    pub name: &'static str,
    /// Connections read at once.
    pub connections: usize,
    /// How long a client has to send its whole request.
    pub request_deadline: Duration,
    /// How large a request may be.
    pub request_max: usize,
    /// How long a client has to take each part of its answer.
    pub answer_deadline: Duration,
    /// Threads answering requests.
    pub answerers: usize,
    /// Where a request ends, if it has.
    pub end: fn(&[u8]) -> Option<usize>,
}

/// A running server: its threads end when it is dropped (the reading thread at once, woken
/// by an eventfd; the answering threads once they have finished what they answer).
pub struct Served {
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    reader: Option<JoinHandle<()>>,
    answerers: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        // The reading thread held the only sender: they finish and end.
        for t in self.answerers.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves `listener` within `bounds`: each whole request goes to `answer` (on an answering
/// thread, the connection blocking again, with the answer deadline); `refuse` tells a client
/// why it is not served (the connection non-blocking: it must not wait).
pub fn serve<L: Listen>(
    listener: L,
    bounds: Bounds,
    answer: impl Fn(L::Conn, Vec<u8>) + Send + Sync + 'static,
    refuse: fn(&mut L::Conn, &str),
) -> io::Result<Served> {
    listener.nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (jobs, taken) = crossbeam_channel::bounded::<(L::Conn, Vec<u8>)>(4 * bounds.answerers);
    let answer = Arc::new(answer);
    let mut answerers = Vec::new();
    for i in 0..bounds.answerers {
        let (taken, answer) = (taken.clone(), answer.clone());
        answerers.push(std::thread::Builder::new().name(format!("{}{i}", bounds.name)).spawn(
            move || {
                while let Ok((conn, request)) = taken.recv() {
                    if conn.write_deadline(bounds.answer_deadline).is_ok() {
                        answer(conn, request);
                    }
                }
            },
        )?);
    }
    let stop2 = stop.clone();
    let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
    let wake = Arc::new(rustix::event::eventfd(0, flags)?);
    let wake2 = wake.clone();
    let reader = std::thread::Builder::new()
        .name(bounds.name.to_string())
        .spawn(move || read_requests(&listener, bounds, &jobs, refuse, &stop2, &wake2))?;
    Ok(Served { stop, wake, reader: Some(reader), answerers })
}

/// A connection whose request has not all arrived.
struct Reading<C> {
    conn: C,
    got: Vec<u8>,
    since: Instant,
}

/// The reading side: accepts, reads requests as they come, hands whole ones to the answering
/// threads, until `stop`.
fn read_requests<L: Listen>(
    listener: &L,
    bounds: Bounds,
    jobs: &crossbeam_channel::Sender<(L::Conn, Vec<u8>)>,
    refuse: fn(&mut L::Conn, &str),
    stop: &AtomicBool,
    wake: &OwnedFd,
) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut reading: Vec<Reading<L::Conn>> = Vec::new();
    let tick = Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
    while !stop.load(Ordering::SeqCst) {
        let ready: Vec<bool> = {
            let mut fds = Vec::with_capacity(reading.len() + 2);
            fds.push(PollFd::new(listener, PollFlags::IN));
            // Last: the drop's wake-up (only its end matters; `stop` says it).
            fds.push(PollFd::new(wake, PollFlags::IN));
            fds.extend(reading.iter().map(|r| PollFd::new(&r.conn, PollFlags::IN)));
            // PERF(helpers): no tick while no request is half read (the wake-up ends the
            // wait at a drop): an idle server never takes the core from a worker it shares.
            let tick = if reading.is_empty() { None } else { Some(&tick) };
            if poll(&mut fds, tick).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut keep = Vec::with_capacity(reading.len());
        for (mut r, ready) in reading.drain(..).zip(ready[2..].iter().copied()) {
            if ready {
                let mut buf = [0u8; 4096];
                match r.conn.read(&mut buf) {
                    Ok(0) => continue, // gone before asking
                    Ok(n) => r.got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => continue,
                }
            }
            if let Some(end) = (bounds.end)(&r.got) {
                r.got.truncate(end);
                if r.conn.nonblocking(false).is_err() {
                    continue;
                }
                if let Err(e) = jobs.try_send((r.conn, r.got)) {
                    let (mut conn, _) = e.into_inner();
                    let _ = conn.nonblocking(true);
                    refuse(&mut conn, "busy answering other requests: try again");
                }
            } else if r.got.len() > bounds.request_max {
                refuse(&mut r.conn, "request too large");
            } else if r.since.elapsed() > bounds.request_deadline {
                refuse(&mut r.conn, "no whole request in time");
            } else {
                keep.push(r);
            }
        }
        reading = keep;
        if ready[0] {
            // Bounded: at most the connections waiting in the listen backlog.
            for _ in 0..4096 {
                match listener.take() {
                    Ok(mut conn) => {
                        if conn.nonblocking(true).is_err() {
                            continue;
                        }
                        if reading.len() >= bounds.connections {
                            let why = format!(
                                "too many connections ({} open): try again",
                                bounds.connections
                            );
                            refuse(&mut conn, &why);
                        } else {
                            reading.push(Reading { conn, got: Vec::new(), since: Instant::now() });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::info!("{}: accept: {e}", bounds.name);
                        break;
                    }
                }
            }
        }
    }
}

/// How many connections one server reads at once: [`MAX_CONNECTIONS`], after raising the soft
/// limit on descriptors to the hard one, or fewer when the limit leaves less (half of what
/// remains after room for the ports' sockets, the maps and the files the switch opens: two
/// servers share it).
pub fn connection_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let limit = (soft.saturating_sub(512) as usize / 2).clamp(16, MAX_CONNECTIONS);
    if limit < MAX_CONNECTIONS {
        tracing::info!(
            "control and metrics: at most {limit} connections each (RLIMIT_NOFILE {soft})"
        );
    }
    limit
}
