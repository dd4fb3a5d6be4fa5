//! Moving batches of peer-link messages over a non-blocking socket, in both
//! directions, with every payload read into and written from pool buffers in place.
//!
//! Receiving ([`FrameRx`]) is a state machine with three phases: the batch head
//! (16 bytes), the batch's message headers (read in one go: their size is known), and
//! the body: each header is handed to the link's [`Endpoint`] in order, which says
//! where that message's payload goes (the segments of a request's pool buffers) or
//! that it cannot take it yet (no buffer: the link stops reading, the socket pushes
//! back on the sender). Payloads are then read with one `readv` over every payload
//! due, with the next batch head as the last slice.
//!
//! Sending ([`FrameTx`]) queues messages with the segments of their payloads; a flush
//! puts up to [`BATCH_MAX`] of them in a batch and writes it with `writev`,
//! remembering how far a partial write got.
//!
//! The kernel reads and writes pool memory here by address, as a device does with
//! DMA: the two system-call wrappers at the end are the only `unsafe` of the link.
//! The rule that makes them sound is the one the device path follows: a request whose
//! payload segments are queued or expected here is pinned (counted as outstanding) and
//! keeps its buffers until the link is done with them, or until the link's socket is
//! gone.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use quire_drivers::block::SEGS_MAX;
use quire_drivers::DmaSeg;

use super::proto::{BatchHead, Message, BATCH_HEAD_LEN, BATCH_MAX, MSG_LEN};

/// Most slices given to one `readv` / `writev` (Linux's IOV_MAX is 1024).
const IOV_MAX: usize = 1024;

/// Where a message's payload goes, or comes from: segments of pool buffers.
#[derive(Clone, Copy, Debug)]
pub struct Segs {
    /// The segments, in order.
    pub segs: [DmaSeg; SEGS_MAX],
    /// How many are valid.
    pub n: usize,
}

impl Segs {
    /// No segments.
    pub const NONE: Segs = Segs { segs: [DmaSeg::EMPTY; SEGS_MAX], n: 0 };

    /// The segments of a device request (its memory).
    pub fn of(segs: &[DmaSeg]) -> Segs {
        assert!(segs.len() <= SEGS_MAX, "{} segments", segs.len());
        let mut s = Segs::NONE;
        s.segs[..segs.len()].copy_from_slice(segs);
        s.n = segs.len();
        s
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.segs[..self.n].iter().map(|s| u64::from(s.len)).sum()
    }

    /// True for no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the link's endpoint makes of one message header.
// Returned by value once per message and never stored: boxing the segments would cost
// an allocation per payload on the data path.
#[allow(clippy::large_enum_variant)]
pub enum Dispatch {
    /// Taken; no payload follows.
    Done,
    /// Taken; its payload goes into these segments (exactly the payload's length),
    /// and [`Endpoint::on_payload`] is called with `token` when it is all in.
    Payload {
        /// Echoed to `on_payload`.
        token: u32,
        /// Where the bytes go.
        into: Segs,
    },
    /// Cannot take it now (no buffer): ask again later, read nothing meanwhile.
    Stall,
    /// The message breaks the protocol: end the link with this reason.
    Fatal(String),
}

/// The side of a link that gives messages meaning.
pub trait Endpoint {
    /// A message header, in stream order.
    fn on_message(&mut self, m: Message) -> Dispatch;
    /// The payload announced with `token` is complete.
    fn on_payload(&mut self, token: u32);
}

/// What a receive pass ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum RxEnd {
    /// The socket has nothing more for now.
    WouldBlock,
    /// The endpoint could not take a message (no buffer) and every payload before it
    /// is in: call again when it can take it (the socket may hold more).
    Stalled,
    /// The endpoint could not take a message, and payloads of messages before it are
    /// still on their way: call again when the socket has bytes (for those payloads)
    /// or when the endpoint can take the message.
    StalledWouldBlock,
    /// The peer closed, or the stream broke the protocol: the reason.
    Closed(String),
}

enum Phase {
    Head,
    Headers,
    Body,
}

struct Pending {
    token: u32,
    into: Segs,
    /// Bytes of it read so far.
    got: u64,
    len: u64,
}

/// The receiving half of a link's framing.
pub struct FrameRx {
    phase: Phase,
    head: [u8; BATCH_HEAD_LEN],
    head_got: usize,
    hdrs: Box<[u8; BATCH_MAX * MSG_LEN]>,
    hdrs_got: usize,
    count: usize,
    /// Payload bytes the batch head announced, and those the headers announced so far.
    batch_payload: u64,
    announced: u64,
    /// Next header to hand to the endpoint.
    next: usize,
    /// Payloads handed out and not yet complete, in stream order.
    pending: VecDeque<Pending>,
    /// Bytes received (statistics).
    pub bytes: u64,
}

impl Default for FrameRx {
    fn default() -> FrameRx {
        FrameRx::new()
    }
}

impl FrameRx {
    /// Expecting a batch head.
    pub fn new() -> FrameRx {
        FrameRx {
            phase: Phase::Head,
            head: [0; BATCH_HEAD_LEN],
            head_got: 0,
            hdrs: Box::new([0; BATCH_MAX * MSG_LEN]),
            hdrs_got: 0,
            count: 0,
            batch_payload: 0,
            announced: 0,
            next: 0,
            pending: VecDeque::with_capacity(BATCH_MAX),
            bytes: 0,
        }
    }

    /// True while payloads handed out are not all in.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Tokens of the payloads handed out and not complete (a closing link's endpoint
    /// must not free their memory while a read could still be running: none is, once
    /// this returns, since reads happen only inside [`FrameRx::receive`]).
    pub fn pending_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending.iter().map(|p| p.token)
    }

    /// Reads and dispatches what the socket has, until it would block, the endpoint
    /// stalls, or the link ends.
    pub fn receive(&mut self, fd: RawFd, ep: &mut impl Endpoint) -> RxEnd {
        loop {
            match self.phase {
                Phase::Head => match read_into(fd, &mut self.head[self.head_got..]) {
                    Ok(0) => return RxEnd::Closed("the peer closed the link".into()),
                    Ok(n) => {
                        self.bytes += n as u64;
                        self.head_got += n;
                        if let Err(e) = self.head_done() {
                            return RxEnd::Closed(e);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RxEnd::WouldBlock,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return RxEnd::Closed(format!("receive failed: {e}")),
                },
                Phase::Headers => {
                    let want = self.count * MSG_LEN;
                    // A batch without payloads is followed by the next batch head: read
                    // it in the same call.
                    let head: &mut [u8] = if self.batch_payload == 0 { &mut self.head[..] } else { &mut [] };
                    match read_two(fd, &mut self.hdrs[self.hdrs_got..want], head) {
                        Ok(0) => return RxEnd::Closed("the peer closed the link mid-batch".into()),
                        Ok(n) => {
                            self.bytes += n as u64;
                            let to_hdrs = n.min(want - self.hdrs_got);
                            self.hdrs_got += to_hdrs;
                            self.head_got = n - to_hdrs;
                            if self.hdrs_got == want {
                                self.phase = Phase::Body;
                                self.next = 0;
                                self.announced = 0;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RxEnd::WouldBlock,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return RxEnd::Closed(format!("receive failed: {e}")),
                    }
                }
                Phase::Body => {
                    let mut stalled = false;
                    while self.next < self.count {
                        let at = self.next * MSG_LEN;
                        let m = match Message::decode(&self.hdrs[at..at + MSG_LEN]) {
                            Ok(m) => m,
                            Err(e) => return RxEnd::Closed(e),
                        };
                        let len = u64::from(m.payload());
                        match ep.on_message(m) {
                            Dispatch::Done => {
                                if len != 0 {
                                    return RxEnd::Closed(format!("a message with {len} payload bytes taken as none"));
                                }
                            }
                            Dispatch::Payload { token, into } => {
                                assert_eq!(into.len(), len, "a payload's destination is exactly its length");
                                if len > 0 {
                                    self.pending.push_back(Pending { token, into, got: 0, len });
                                } else {
                                    ep.on_payload(token);
                                }
                            }
                            Dispatch::Stall => {
                                stalled = true;
                                break;
                            }
                            Dispatch::Fatal(e) => return RxEnd::Closed(e),
                        }
                        self.announced += len;
                        self.next += 1;
                    }
                    if self.next == self.count && self.announced != self.batch_payload {
                        return RxEnd::Closed(format!(
                            "a batch announced {} payload bytes, its messages {}",
                            self.batch_payload, self.announced
                        ));
                    }
                    if self.pending.is_empty() {
                        if stalled {
                            return RxEnd::Stalled;
                        }
                        // Every payload of the batch is in: the next batch (whose head
                        // may have come in already, whole or in part).
                        self.phase = Phase::Head;
                        if let Err(e) = self.head_done() {
                            return RxEnd::Closed(e);
                        }
                        continue;
                    }
                    // Read the payloads due, and the next batch head too once every
                    // header of this batch has been handed out.
                    let with_head = self.next == self.count;
                    match self.read_payloads(fd, with_head, ep) {
                        Ok(true) => {}
                        Ok(false) => return RxEnd::Closed("the peer closed the link mid-payload".into()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return if stalled { RxEnd::StalledWouldBlock } else { RxEnd::WouldBlock };
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return RxEnd::Closed(format!("receive failed: {e}")),
                    }
                    if self.pending.is_empty() && with_head {
                        self.phase = Phase::Head;
                        if let Err(e) = self.head_done() {
                            return RxEnd::Closed(e);
                        }
                    } else if stalled && self.pending.is_empty() {
                        return RxEnd::Stalled;
                    }
                }
            }
        }
    }

    /// After bytes of the batch head came in: moves on once it is whole.
    fn head_done(&mut self) -> Result<(), String> {
        if self.head_got < BATCH_HEAD_LEN {
            return Ok(());
        }
        let h = BatchHead::decode(&self.head)?;
        self.count = usize::from(h.count);
        self.batch_payload = h.payload;
        self.hdrs_got = 0;
        self.head_got = 0;
        self.phase = Phase::Headers;
        Ok(())
    }

    /// One `readv` over the pending payloads (and the next head); false on EOF.
    fn read_payloads(&mut self, fd: RawFd, with_head: bool, ep: &mut impl Endpoint) -> io::Result<bool> {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(64);
        let mut all = true;
        'outer: for p in &self.pending {
            let mut skip = p.got;
            for s in &p.into.segs[..p.into.n] {
                let len = u64::from(s.len);
                if skip >= len {
                    skip -= len;
                    continue;
                }
                if iov.len() == IOV_MAX - 1 {
                    all = false;
                    break 'outer;
                }
                let off = usize::try_from(skip).expect("inside a segment");
                // Pointer arithmetic only; the memory is touched by the kernel in `readv`.
                iov.push(libc::iovec {
                    iov_base: s.addr.wrapping_add(off).cast(),
                    iov_len: usize::try_from(len).expect("a segment's length is a u32") - off,
                });
                skip = 0;
            }
        }
        let head_at = iov.len();
        if with_head && all {
            iov.push(libc::iovec { iov_base: self.head.as_mut_ptr().cast(), iov_len: BATCH_HEAD_LEN });
        }
        // SAFETY: every slice but the last points into pool buffers of requests that the
        // endpoint handed out as payload destinations (`Dispatch::Payload`); they stay
        // pinned, unread and unwritten by anyone else, until `on_payload` (or until the
        // link is gone, after which no read happens). The last slice is our own head
        // buffer, borrowed mutably here and not otherwise referenced during the call.
        let n = unsafe { readv(fd, &iov)? };
        if n == 0 {
            return Ok(false);
        }
        self.bytes += n as u64;
        let mut left = n as u64;
        while let Some(p) = self.pending.front_mut() {
            let take = left.min(p.len - p.got);
            p.got += take;
            left -= take;
            if p.got < p.len {
                break;
            }
            let token = p.token;
            self.pending.pop_front();
            ep.on_payload(token);
        }
        if left > 0 {
            debug_assert!(head_at < iov.len() && self.pending.is_empty());
            self.head_got = usize::try_from(left).expect("at most a batch head");
        }
        Ok(true)
    }
}

/// One message waiting to be sent, with the memory of its payload and a token the
/// sender gets back once it is on the wire.
#[derive(Clone, Copy, Debug)]
pub struct OutMsg {
    /// The message.
    pub msg: Message,
    /// Its payload's memory (exactly `msg.payload()` bytes).
    pub data: Segs,
    /// Returned by [`FrameTx::flush`] once the message and payload are written.
    pub token: u32,
}

/// The sending half of a link's framing.
pub struct FrameTx {
    queue: VecDeque<OutMsg>,
    /// The batch being written: head and headers, payload segments, tokens, and how
    /// far into the batch each message is wholly written (its header for a message
    /// without payload, which the receiver takes as soon as it has the headers; else
    /// the end of its payload, which the receiver reads in order).
    bytes: Vec<u8>,
    segs: Vec<DmaSeg>,
    tokens: Vec<u32>,
    ends: Vec<usize>,
    total: usize,
    sent: usize,
    /// The socket said it would block: wait for a writable event.
    pub blocked: bool,
    /// Bytes sent (statistics).
    pub sent_bytes: u64,
}

impl Default for FrameTx {
    fn default() -> FrameTx {
        FrameTx::new()
    }
}

impl FrameTx {
    /// Nothing queued.
    pub fn new() -> FrameTx {
        FrameTx {
            queue: VecDeque::new(),
            bytes: Vec::with_capacity(BATCH_HEAD_LEN + BATCH_MAX * MSG_LEN),
            segs: Vec::with_capacity(IOV_MAX),
            tokens: Vec::with_capacity(BATCH_MAX),
            ends: Vec::with_capacity(BATCH_MAX),
            total: 0,
            sent: 0,
            blocked: false,
            sent_bytes: 0,
        }
    }

    /// Queues a message.
    pub fn push(&mut self, m: OutMsg) {
        assert_eq!(m.data.len(), u64::from(m.msg.payload()), "a payload's memory is exactly its length");
        self.queue.push_back(m);
    }

    /// True when nothing is queued or half-written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.total == 0
    }

    /// True when a flush could write something.
    pub fn wants_flush(&self) -> bool {
        !self.is_empty() && !self.blocked
    }

    /// Messages queued or in the batch being written and not yet wholly written (for
    /// a link going down: every token in here will never be sent; those `flush`
    /// gave back are not here).
    pub fn drain_tokens(&mut self) -> Vec<u32> {
        let sent = self.sent;
        let mut t: Vec<u32> =
            self.tokens.iter().zip(&self.ends).filter(|&(_, &end)| end > sent).map(|(&t, _)| t).collect();
        self.tokens.clear();
        self.ends.clear();
        t.extend(self.queue.drain(..).map(|m| m.token));
        self.bytes.clear();
        self.segs.clear();
        self.total = 0;
        self.sent = 0;
        t
    }

    fn build_batch(&mut self) {
        debug_assert_eq!(self.total, 0);
        self.bytes.clear();
        self.segs.clear();
        self.tokens.clear();
        self.ends.clear();
        self.bytes.resize(BATCH_HEAD_LEN, 0);
        let mut payload = 0u64;
        while let Some(m) = self.queue.front() {
            if self.tokens.len() == BATCH_MAX || self.segs.len() + m.data.n + 1 > IOV_MAX {
                break;
            }
            let m = self.queue.pop_front().expect("peeked");
            let at = self.bytes.len();
            self.bytes.resize(at + MSG_LEN, 0);
            m.msg.encode(&mut self.bytes[at..at + MSG_LEN]);
            self.segs.extend_from_slice(&m.data.segs[..m.data.n]);
            payload += u64::from(m.msg.payload());
            self.tokens.push(m.token);
            // For now the payload bytes before its end; the headers' length is added
            // below (0: no payload).
            let end = if m.msg.payload() > 0 { usize::try_from(payload).expect("fits memory") } else { 0 };
            self.ends.push(end);
        }
        let headers = self.bytes.len();
        for e in &mut self.ends {
            *e += headers;
        }
        let count = u16::try_from(self.tokens.len()).expect("at most BATCH_MAX");
        self.bytes[..BATCH_HEAD_LEN].copy_from_slice(&BatchHead { count, payload }.encode());
        self.total = self.bytes.len() + usize::try_from(payload).expect("a batch's payload fits memory");
        self.sent = 0;
    }

    /// Writes what the socket takes; `done` gets the tokens of messages now wholly
    /// written, each as soon as its own bytes are (not when the whole batch is: the
    /// other end may act on a message, and answer it, while later payloads of its
    /// batch are still being written). `Err` when the socket failed (the link is over).
    pub fn flush(&mut self, fd: RawFd, done: &mut Vec<u32>) -> io::Result<()> {
        loop {
            if self.total == 0 {
                if self.queue.is_empty() {
                    return Ok(());
                }
                self.build_batch();
            }
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(self.segs.len() + 1);
            let mut skip = self.sent;
            if skip < self.bytes.len() {
                iov.push(libc::iovec {
                    iov_base: self.bytes[skip..].as_ptr().cast_mut().cast(),
                    iov_len: self.bytes.len() - skip,
                });
                skip = 0;
            } else {
                skip -= self.bytes.len();
            }
            for s in &self.segs {
                let len = s.len as usize;
                if skip >= len {
                    skip -= len;
                    continue;
                }
                iov.push(libc::iovec { iov_base: s.addr.wrapping_add(skip).cast(), iov_len: len - skip });
                skip = 0;
            }
            // SAFETY: the first slice is our own batch buffer, unchanged until the batch
            // is written; the others are the payloads' pool memory, which the messages'
            // owners keep pinned and unchanged while queued here (see the module notes).
            // The kernel only reads them.
            match unsafe { writev(fd, &iov) } {
                Ok(n) => {
                    let before = self.sent;
                    self.sent += n;
                    self.sent_bytes += n as u64;
                    let now = self.sent;
                    done.extend(
                        self.tokens.iter().zip(&self.ends).filter(|&(_, &e)| e > before && e <= now).map(|(&t, _)| t),
                    );
                    if self.sent == self.total {
                        debug_assert!(self.ends.iter().all(|&e| e <= self.total));
                        self.tokens.clear();
                        self.ends.clear();
                        self.total = 0;
                        self.sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads exactly into `buf` what the socket has (a plain read of our own memory).
pub fn read_into(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
    // SAFETY: `buf` is borrowed mutably for the call; the kernel writes at most its length.
    unsafe { readv(fd, &iov) }
}

/// Reads into `a`, then `b` (our own memory), in one call.
fn read_two(fd: RawFd, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: a.len() },
        libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() },
    ];
    let n = if b.is_empty() { 1 } else { 2 };
    // SAFETY: both buffers are borrowed mutably for the call; the kernel writes at most
    // their lengths.
    unsafe { readv(fd, &iov[..n]) }
}

/// Writes `buf` (our own memory) to the socket; returns the bytes written.
pub fn write_from(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let iov = [libc::iovec { iov_base: buf.as_ptr().cast_mut().cast(), iov_len: buf.len() }];
    // SAFETY: `buf` is borrowed for the call; the kernel only reads it.
    unsafe { writev(fd, &iov) }
}

/// `readv(2)`.
///
/// # Safety
/// Every slice must be memory the kernel may write for its whole length, that no
/// Rust reference reads or writes during the call.
unsafe fn readv(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let cnt = libc::c_int::try_from(iov.len()).expect("at most IOV_MAX slices");
    // SAFETY: forwarded to the caller's contract; `iov` itself is valid for the call.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), cnt) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `writev(2)` without SIGPIPE on a closed peer (`send` flags are not available to
/// `writev`; the process ignores SIGPIPE, see `main.rs`).
///
/// # Safety
/// Every slice must be memory that stays valid and unchanged during the call.
unsafe fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let cnt = libc::c_int::try_from(iov.len()).expect("at most IOV_MAX slices");
    // SAFETY: forwarded to the caller's contract; `iov` itself is valid for the call.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), cnt) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::proto::{Op, Outcome, PAYLOAD_MAX};
    use quire_wire::nvme::Status;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Payload memory for tests: plain vectors standing in for pool buffers.
    fn seg_of(v: &mut [u8]) -> DmaSeg {
        DmaSeg { addr: v.as_mut_ptr(), iova: 0, len: u32::try_from(v.len()).unwrap() }
    }

    struct Sink {
        msgs: Vec<Message>,
        bufs: Vec<Vec<u8>>,
        done: Vec<u32>,
        stall_at: Option<usize>,
    }

    impl Endpoint for Sink {
        fn on_message(&mut self, m: Message) -> Dispatch {
            if self.stall_at == Some(self.msgs.len()) {
                self.stall_at = None;
                return Dispatch::Stall;
            }
            self.msgs.push(m);
            let len = m.payload() as usize;
            if len == 0 {
                return Dispatch::Done;
            }
            // Two segments per payload, to cross a segment boundary.
            self.bufs.push(vec![0; len / 2]);
            self.bufs.push(vec![0; len - len / 2]);
            let n = self.bufs.len();
            let (a, b) = self.bufs.split_at_mut(n - 1);
            let into = Segs::of(&[seg_of(&mut a[n - 2]), seg_of(&mut b[0])]);
            Dispatch::Payload { token: u32::try_from(self.msgs.len() - 1).unwrap(), into }
        }
        fn on_payload(&mut self, token: u32) {
            self.done.push(token);
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn batches_carry_messages_and_payloads_in_place_across_partial_reads() {
        let (a, b) = pair();
        let mut tx = FrameTx::new();
        let mut payloads: Vec<Vec<u8>> =
            (0..150u32).map(|i| vec![(i % 251) as u8; 512 + (i as usize % 7) * 100]).collect();
        for (i, p) in payloads.iter_mut().enumerate() {
            let i = u32::try_from(i).unwrap();
            let write = i % 3 != 0;
            let msg = if write {
                Message::Request {
                    tag: i,
                    op: Op::Write,
                    flags: 0,
                    volume: 1,
                    epoch: 1,
                    lba: u64::from(i),
                    nlb: 1,
                    payload: u32::try_from(p.len()).unwrap(),
                }
            } else {
                Message::Response {
                    tag: i,
                    outcome: Outcome::Done,
                    status: Status::SUCCESS,
                    epoch: 1,
                    payload: 0,
                    digest: 0,
                }
            };
            let data = if write { Segs::of(&[seg_of(p)]) } else { Segs::NONE };
            tx.push(OutMsg { msg, data, token: i });
        }
        let mut rx = FrameRx::new();
        let mut sink = Sink { msgs: Vec::new(), bufs: Vec::new(), done: Vec::new(), stall_at: Some(70) };
        let mut sent = Vec::new();
        // Interleave writes and reads so that reads see partial batches.
        for _ in 0..10_000 {
            tx.blocked = false;
            tx.flush(a.as_raw_fd(), &mut sent).unwrap();
            match rx.receive(b.as_raw_fd(), &mut sink) {
                RxEnd::WouldBlock | RxEnd::Stalled | RxEnd::StalledWouldBlock => {}
                RxEnd::Closed(e) => panic!("{e}"),
            }
            if sink.msgs.len() == 150 && sink.done.len() == 100 {
                break;
            }
        }
        let mut order = sent.clone();
        order.sort_unstable();
        assert_eq!(order, (0..150).collect::<Vec<_>>(), "every message was written, once");
        assert_eq!(sink.msgs.len(), 150);
        assert_eq!(sink.done.len(), 100, "every payload arrived");
        // Payload bytes landed where the endpoint pointed them.
        let mut k = 0;
        for (i, m) in sink.msgs.iter().enumerate() {
            if m.payload() > 0 {
                let got: Vec<u8> = [sink.bufs[k].clone(), sink.bufs[k + 1].clone()].concat();
                assert_eq!(got, payloads[i], "message {i}");
                k += 2;
            }
        }
    }

    #[test]
    fn a_message_counts_as_written_once_its_own_bytes_are_not_when_its_batch_is() {
        // A read (no payload) and eight 128 KiB writes in one batch; the socket takes
        // far less than the writes' payloads at once. The receiver has the read's
        // header and may answer it: the sender must know the read is written; the
        // last write is not yet.
        let (a, b) = pair();
        let mut bufs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; PAYLOAD_MAX as usize]).collect();
        let batch = |tx: &mut FrameTx, bufs: &mut [Vec<u8>]| {
            let read =
                Message::Request { tag: 0, op: Op::Read, flags: 0, volume: 1, epoch: 1, lba: 0, nlb: 8, payload: 0 };
            tx.push(OutMsg { msg: read, data: Segs::NONE, token: 100 });
            for (i, buf) in bufs.iter_mut().enumerate() {
                let tag = u32::try_from(i).unwrap() + 1;
                let write = Message::Request {
                    tag,
                    op: Op::Write,
                    flags: 0,
                    volume: 1,
                    epoch: 1,
                    lba: u64::from(tag) * 32,
                    nlb: 32,
                    payload: PAYLOAD_MAX,
                };
                tx.push(OutMsg { msg: write, data: Segs::of(&[seg_of(buf)]), token: tag });
            }
        };
        let mut tx = FrameTx::new();
        batch(&mut tx, &mut bufs);
        let mut sent = Vec::new();
        tx.flush(a.as_raw_fd(), &mut sent).unwrap();
        assert_eq!(sent.first(), Some(&100), "the read is on the wire first: {sent:?}");
        assert!(!sent.contains(&8), "the last write is not yet: {sent:?}");
        assert!(sent[1..].windows(2).all(|w| w[0] + 1 == w[1]), "writes in order as their payloads go: {sent:?}");
        let mut rx = FrameRx::new();
        let mut sink = Sink { msgs: Vec::new(), bufs: Vec::new(), done: Vec::new(), stall_at: None };
        for _ in 0..10_000 {
            tx.blocked = false;
            tx.flush(a.as_raw_fd(), &mut sent).unwrap();
            if let RxEnd::Closed(e) = rx.receive(b.as_raw_fd(), &mut sink) {
                panic!("{e}");
            }
            if sink.done.len() == 8 {
                break;
            }
        }
        assert_eq!(sent, [100, 1, 2, 3, 4, 5, 6, 7, 8], "each once, the writes as their payloads went");
        assert_eq!(sink.msgs.len(), 9);
        // A link going down gives back only what was never wholly written.
        let mut tx = FrameTx::new();
        batch(&mut tx, &mut bufs);
        let (c, _d) = pair();
        let mut sent = Vec::new();
        tx.flush(c.as_raw_fd(), &mut sent).unwrap();
        let mut back = tx.drain_tokens();
        back.extend(&sent);
        back.sort_unstable();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8, 100], "written or given back, never both: {sent:?}");
    }

    #[test]
    fn a_stall_behind_a_payload_still_due_says_so() {
        // Message 0's data is half here when message 1 cannot be taken: the receiver
        // must be told to read on when bytes come (for message 0), not only when
        // buffers come back (they would not: message 0 holds them until its data is in).
        let (a, b) = pair();
        let mut bytes = BatchHead { count: 2, payload: 1000 }.encode().to_vec();
        let mut m = [0u8; MSG_LEN];
        let w =
            Message::Request { tag: 0, op: Op::Write, flags: 0, volume: 1, epoch: 1, lba: 0, nlb: 1, payload: 1000 };
        w.encode(&mut m);
        bytes.extend_from_slice(&m);
        Message::Request { tag: 1, op: Op::Read, flags: 0, volume: 1, epoch: 1, lba: 1, nlb: 1, payload: 0 }
            .encode(&mut m);
        bytes.extend_from_slice(&m);
        let payload = vec![0xabu8; 1000];
        write_from(a.as_raw_fd(), &bytes).unwrap();
        write_from(a.as_raw_fd(), &payload[..300]).unwrap();
        /// Takes message 0, refuses message 1 while `hold`.
        struct Holding {
            sink: Sink,
            hold: bool,
        }
        impl Endpoint for Holding {
            fn on_message(&mut self, m: Message) -> Dispatch {
                if self.hold && self.sink.msgs.len() == 1 {
                    return Dispatch::Stall;
                }
                self.sink.on_message(m)
            }
            fn on_payload(&mut self, token: u32) {
                self.sink.on_payload(token);
            }
        }
        let mut rx = FrameRx::new();
        let sink = Sink { msgs: Vec::new(), bufs: Vec::new(), done: Vec::new(), stall_at: None };
        let mut ep = Holding { sink, hold: true };
        assert_eq!(rx.receive(b.as_raw_fd(), &mut ep), RxEnd::StalledWouldBlock);
        assert!(rx.has_pending());
        write_from(a.as_raw_fd(), &payload[300..]).unwrap();
        assert_eq!(rx.receive(b.as_raw_fd(), &mut ep), RxEnd::Stalled, "message 0 in, message 1 still held");
        assert!(!rx.has_pending());
        ep.hold = false;
        assert_eq!(rx.receive(b.as_raw_fd(), &mut ep), RxEnd::WouldBlock);
        let sink = ep.sink;
        assert_eq!(sink.done, [0], "message 0's data is in");
        assert_eq!(sink.msgs.len(), 2, "and message 1 was taken once it could be");
        assert_eq!([sink.bufs[0].clone(), sink.bufs[1].clone()].concat(), payload);
    }

    #[test]
    fn a_broken_stream_ends_the_link_with_the_reason() {
        let (a, b) = pair();
        write_from(a.as_raw_fd(), b"GET / HTTP/1.1\r\n").unwrap();
        let mut rx = FrameRx::new();
        let mut sink = Sink { msgs: Vec::new(), bufs: Vec::new(), done: Vec::new(), stall_at: None };
        match rx.receive(b.as_raw_fd(), &mut sink) {
            RxEnd::Closed(e) => assert!(e.contains("framing"), "{e}"),
            other => panic!("{other:?}"),
        }
        // A batch whose head announces more payload than its messages carry.
        let (a, b) = pair();
        let mut bytes = BatchHead { count: 1, payload: 4096 }.encode().to_vec();
        let mut m = [0u8; MSG_LEN];
        Message::Request { tag: 1, op: Op::Read, flags: 0, volume: 1, epoch: 1, lba: 0, nlb: 1, payload: 0 }
            .encode(&mut m);
        bytes.extend_from_slice(&m);
        write_from(a.as_raw_fd(), &bytes).unwrap();
        let mut rx = FrameRx::new();
        match rx.receive(b.as_raw_fd(), &mut sink) {
            RxEnd::Closed(e) => assert!(e.contains("announced 4096"), "{e}"),
            other => panic!("{other:?}"),
        }
        drop(a);
        let mut rx = FrameRx::new();
        assert!(matches!(rx.receive(b.as_raw_fd(), &mut sink), RxEnd::Closed(_)));
    }
}
