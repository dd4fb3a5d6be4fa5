//! The forwarding end of the peer links: one [`LinkClient`] per other peer on every
//! reactor, kept by [`Links`].
//!
//! A part of a host's I/O whose page another peer owns becomes a [`Forward`]: the
//! host request's identity, the operation, the volume range and epoch it was routed
//! with, and the segments of the host request's own pool buffers (the write data to
//! send, or where the read data goes). The link sends it, in batches, without copying
//! the payload, and the response's read data is received straight into those
//! segments. The host request counts the forward as outstanding (`fwd_inflight`), so
//! its buffers stay put until the answer is in.
//!
//! A link's life:
//!
//! ```text
//! Idle ──(work queued or peer alive, backoff over)──► Connecting ──► Hello ──► Challenge
//!   ▲                                                                              │
//!   └──── any error, the peer closing, a handshake over its time, no answer ◄── Up ◄┘ (Verdict)
//! ```
//!
//! What a link owes its requests when it goes down: every forward sent on that
//! connection is queued again, to be sent on the next (a write sent twice writes the
//! same data twice; the host has no other write to those blocks in flight). A forward
//! that has waited unsent for [`PeerDirectory::hold`] since its host command arrived
//! is answered with a retryable path error ([`PATH_ERROR`]): never a data error, and
//! never while the owner may still be executing it on a live connection (it may from
//! a lost one: see ARCHITECTURE.md, "Data flow of a forwarded part"). An answer
//! that says the owner does not own the page (or does not know the volume yet) hands
//! the forward back to the reactor to route again with its newest table.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};
use quire_wire::nvme::Status;

use super::auth::Caller;
use super::frame::{read_into, write_from, Dispatch, Endpoint, FrameRx, FrameTx, OutMsg, RxEnd, Segs};
use super::proto::{Message, Op, Outcome, CHALLENGE_LEN, FLAG_FUA, FLAG_REPLICA};
use super::PeerDirectory;
use crate::reactor::ReqRef;
use crate::volume::routing::{Epoch, PeerId};
use crate::volume::VolumeId;

/// Tokens a flush reports at most per batch (the scratch's capacity).
const BATCH_MAX_TOKENS: usize = super::proto::BATCH_MAX;

/// Tokens of outbound links in a reactor's poller: this base plus the peer's id.
pub const LINK_TOKEN_BASE: usize = 1 << 40;
/// A handshake must be over within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before connecting again after a failure; doubles up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A peer that owes answers and sends nothing for this long is taken for gone (its
/// link is closed and its forwards wait for the next connection).
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Path-related status "Internal Path Error" (SCT 3h, SC 00h), without DNR: the
/// owner of a page could not be reached within the hold time. A multipath host fails
/// over to another path, a single-path host retries; neither sees a data error.
pub const PATH_ERROR: Status = Status { sct: 3, sc: 0, dnr: false, more: false };

/// One part of a host command sent to the peer that owns its page.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// The host request.
    pub rref: ReqRef,
    /// The peer it is sent to (set by the reactor when it hands the part to a link).
    pub to: PeerId,
    /// What to do.
    pub op: Op,
    /// Force Unit Access (writes).
    pub fua: bool,
    /// The volume.
    pub volume: VolumeId,
    /// The routing epoch the part was routed with.
    pub epoch: Epoch,
    /// The page (for routing again).
    pub page: u64,
    /// First volume block and block count (0 for Flush).
    pub lba: u64,
    /// Blocks.
    pub nlb: u32,
    /// The host request's memory for this part: write data, or where read data goes.
    pub data: Segs,
    /// Answered with [`PATH_ERROR`] if still unsent at this time.
    pub deadline: Instant,
    /// The replica write (or digest, or read of a member's copy) of the leader of the
    /// page's set: the receiver applies it to its own copy only ([`super::proto::FLAG_REPLICA`]).
    pub replica: bool,
}

impl Forward {
    fn payload_out(&self) -> u32 {
        if self.op == Op::Write {
            u32::try_from(self.data.len()).expect("a part is at most PAYLOAD_MAX")
        } else {
            0
        }
    }
}

/// What became of a forward.
#[derive(Debug)]
pub enum Finished {
    /// Answered: complete the host request's part with this.
    Done(ReqRef, Result<(), Status>),
    /// A digest answered: the CRC32C of `from`'s copy of the range, or why not.
    Digest {
        /// The request that asked.
        rref: ReqRef,
        /// The member that answered.
        from: PeerId,
        /// The digest.
        result: Result<u32, Status>,
    },
    /// The owner does not (yet) serve this page: route it again (boxed: rare, and a
    /// forward carries its segments).
    Reroute(Box<Forward>),
    /// A replica write of a host's write that this peer ordered as its page's leader,
    /// refused by the member because this peer leads the page no more (a move's
    /// cut-over): the host's part goes to the new leader instead (the reactor's
    /// `reroute_due` decides, the host connection sends).
    LostLead(Box<Forward>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    SendHello,
    ReadChallenge,
    SendProof,
    ReadVerdict,
    Up,
}

struct Slot {
    fwd: Forward,
    /// The connection generation it was sent on; `None` while queued.
    sent_on: Option<u64>,
    /// Its message (and write data) is wholly written to the socket: the send queue no
    /// longer refers to the host's buffers.
    written: bool,
    /// Its answer arrived (a read's data may still be arriving).
    answered: bool,
    /// Order of arrival (a link going down queues its sent forwards again in order).
    seq: u64,
}

/// The link from this reactor to one other peer.
pub struct LinkClient {
    peer: PeerId,
    addr: Option<SocketAddr>,
    alive: bool,
    state: State,
    sock: Option<mio::net::TcpStream>,
    gen: u64,
    caller: Option<Caller>,
    hs_out: Vec<u8>,
    hs_sent: usize,
    hs_in: [u8; CHALLENGE_LEN],
    hs_got: usize,
    window: u32,
    in_window: u32,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    queue: VecDeque<u32>,
    rx: FrameRx,
    tx: FrameTx,
    next_attempt: Instant,
    backoff: Duration,
    state_since: Instant,
    last_rx: Instant,
    readable: bool,
    writable: bool,
    seq: u64,
    /// Why the last connection failed (logged once per kind of failure).
    last_error: Option<String>,
    /// Forwards that were on a connection that went down, for the reactor to route
    /// again with its newest table (the page may have another owner or leader now).
    bounced: Vec<Forward>,
    /// Counters.
    pub stats: LinkStats,
    /// Scratch for the tokens a flush reports sent (kept: no allocation per flush).
    sent: Vec<u32>,
}

/// Counters of one link (this reactor's end).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// Forwards answered.
    pub forwarded: u64,
    /// Forwards answered with a path error after the hold time.
    pub held_out: u64,
    /// Connections made.
    pub connects: u64,
    /// Bytes sent and received.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

impl LinkClient {
    fn new(peer: PeerId, now: Instant) -> LinkClient {
        LinkClient {
            peer,
            addr: None,
            alive: false,
            state: State::Idle,
            sock: None,
            gen: 0,
            caller: None,
            hs_out: Vec::new(),
            hs_sent: 0,
            hs_in: [0; CHALLENGE_LEN],
            hs_got: 0,
            window: 0,
            in_window: 0,
            slots: Vec::new(),
            free: Vec::new(),
            queue: VecDeque::new(),
            rx: FrameRx::new(),
            tx: FrameTx::new(),
            next_attempt: now,
            backoff: BACKOFF_MIN,
            state_since: now,
            last_rx: now,
            readable: false,
            writable: false,
            seq: 0,
            last_error: None,
            bounced: Vec::new(),
            stats: LinkStats::default(),
            sent: Vec::with_capacity(BATCH_MAX_TOKENS),
        }
    }

    fn token(&self) -> Token {
        Token(LINK_TOKEN_BASE + usize::from(self.peer.0))
    }

    /// True when the link is up.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Forwards waiting or in flight.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn push(&mut self, fwd: Forward) {
        self.seq += 1;
        let slot = Slot { fwd, sent_on: None, written: false, answered: false, seq: self.seq };
        let tag = match self.free.pop() {
            Some(t) => {
                self.slots[t as usize] = Some(slot);
                t
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 forwards")
            }
        };
        self.queue.push_back(tag);
    }

    fn take(&mut self, tag: u32) -> Forward {
        let s = self.slots[tag as usize].take().expect("a live slot");
        self.free.push(tag);
        s.fwd
    }

    /// Takes the forwards of `volume` that wait to be sent (none of them is on the
    /// wire: nothing refers to their buffers but the forward itself).
    fn take_unsent(&mut self, volume: VolumeId, out: &mut Vec<Forward>) {
        if !self.queue.iter().any(|&t| self.slots[t as usize].as_ref().is_some_and(|s| s.fwd.volume == volume)) {
            return;
        }
        let mut keep = VecDeque::with_capacity(self.queue.len());
        while let Some(tag) = self.queue.pop_front() {
            if self.slots[tag as usize].as_ref().is_some_and(|s| s.fwd.volume == volume) {
                debug_assert!(self.slots[tag as usize].as_ref().is_some_and(|s| s.sent_on.is_none()));
                out.push(self.take(tag));
            } else {
                keep.push_back(tag);
            }
        }
        self.queue = keep;
    }

    fn fail_down(&mut self, reason: String, registry: &Registry, now: Instant) {
        if let Some(mut s) = self.sock.take() {
            let _ = registry.deregister(&mut s);
        }
        let was_up = self.state == State::Up;
        if was_up {
            tracing::warn!(
                peer = self.peer.0,
                "peer link down: {reason}; {} forward(s) wait for it",
                self.outstanding()
            );
        } else if self.last_error.as_deref() != Some(reason.as_str()) {
            tracing::info!(peer = self.peer.0, addr = ?self.addr, "peer link: {reason}");
        }
        self.last_error = Some(reason);
        // Everything sent on the lost connection is routed again by the reactor, in
        // order, with its newest table: to this peer again on the next connection if
        // it still serves the page, else to the page's new owner or leader (a replica
        // set's leader that was cut off is fenced and evicted: the part goes to the
        // new leader instead of waiting for the old one). The socket is closed: no
        // buffer of theirs is referred to by the connection any more.
        let _ = self.tx.drain_tokens();
        self.rx = FrameRx::new();
        self.in_window = 0;
        let gen = self.gen;
        let mut again: Vec<(u64, u32)> = Vec::new();
        for (tag, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                if s.sent_on == Some(gen) {
                    again.push((s.seq, u32::try_from(tag).expect("fewer than 2^32 forwards")));
                }
            }
        }
        again.sort_unstable();
        for (_, tag) in again {
            let f = self.take(tag);
            self.bounced.push(f);
        }
        self.state = State::Idle;
        self.state_since = now;
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.caller = None;
    }

    fn connect(&mut self, dir: &PeerDirectory, registry: &Registry, now: Instant) {
        let Some(addr) = self.addr else { return };
        match mio::net::TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) = registry.register(&mut s, self.token(), Interest::READABLE | Interest::WRITABLE) {
                    self.fail_down(format!("cannot poll the link socket: {e}"), registry, now);
                    return;
                }
                self.gen += 1;
                self.sock = Some(s);
                self.state = State::Connecting;
                self.state_since = now;
                self.readable = false;
                self.writable = false;
                let (caller, hello) = Caller::new(dir.me.0, self.peer.0, dir.group, dir.secret.clone());
                self.caller = Some(caller);
                self.hs_out = hello.to_vec();
                self.hs_sent = 0;
                self.hs_got = 0;
            }
            Err(e) => self.fail_down(format!("connect to {addr}: {e}"), registry, now),
        }
    }

    /// Drives the link: connection, handshake, receive, send. True on progress.
    fn poll(&mut self, dir: &PeerDirectory, registry: &Registry, finished: &mut Vec<Finished>, now: Instant) -> bool {
        let mut work = self.bounce(finished);
        loop {
            let before = self.state;
            match self.state {
                State::Idle => {
                    let wanted = !self.queue.is_empty() || self.alive;
                    if wanted && self.addr.is_some() && now >= self.next_attempt {
                        self.connect(dir, registry, now);
                    }
                }
                State::Connecting => {
                    if !(self.writable || self.readable) {
                        break;
                    }
                    let s = self.sock.as_ref().expect("connecting has a socket");
                    match (s.take_error(), s.peer_addr()) {
                        (Ok(None), Ok(_)) => {
                            let _ = s.set_nodelay(true);
                            super::keepalive(s);
                            self.state = State::SendHello;
                        }
                        (Ok(Some(e)) | Err(e), _) => {
                            self.fail_down(format!("connect to {:?}: {e}", self.addr), registry, now)
                        }
                        (Ok(None), Err(e)) if e.kind() == std::io::ErrorKind::NotConnected => {
                            // Not yet: wait for the next event.
                            self.readable = false;
                            self.writable = false;
                            break;
                        }
                        (Ok(None), Err(e)) => self.fail_down(format!("connect: {e}"), registry, now),
                    }
                }
                State::SendHello | State::SendProof => {
                    let fd = self.sock.as_ref().expect("a socket").as_raw_fd();
                    match write_from(fd, &self.hs_out[self.hs_sent..]) {
                        Ok(n) => {
                            self.hs_sent += n;
                            if self.hs_sent == self.hs_out.len() {
                                self.hs_got = 0;
                                self.state = if self.state == State::SendHello {
                                    State::ReadChallenge
                                } else {
                                    State::ReadVerdict
                                };
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => self.fail_down(format!("handshake: {e}"), registry, now),
                    }
                }
                State::ReadChallenge | State::ReadVerdict => {
                    let fd = self.sock.as_ref().expect("a socket").as_raw_fd();
                    match read_into(fd, &mut self.hs_in[self.hs_got..]) {
                        Ok(0) => self.fail_down("the peer closed the link during the handshake".into(), registry, now),
                        Ok(n) => {
                            self.hs_got += n;
                            if self.hs_got == CHALLENGE_LEN {
                                self.handshake_step(registry, now);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            self.readable = false;
                            self.writable = false;
                            break;
                        }
                        Err(e) => self.fail_down(format!("handshake: {e}"), registry, now),
                    }
                }
                State::Up => {
                    work |= self.io(registry, finished, now);
                    break;
                }
            }
            if self.state == before {
                break;
            }
            work = true;
        }
        work | self.bounce(finished)
    }

    /// Hands the forwards of a lost connection back to the reactor.
    fn bounce(&mut self, finished: &mut Vec<Finished>) -> bool {
        if self.bounced.is_empty() {
            return false;
        }
        finished.extend(self.bounced.drain(..).map(|f| Finished::Reroute(Box::new(f))));
        true
    }

    fn handshake_step(&mut self, registry: &Registry, now: Instant) {
        let caller = self.caller.as_mut().expect("a handshake has a caller");
        if self.state == State::ReadChallenge {
            match caller.on_challenge(&self.hs_in) {
                Ok(proof) => {
                    self.hs_out = proof.to_vec();
                    self.hs_sent = 0;
                    self.state = State::SendProof;
                }
                Err(e) => {
                    tracing::error!(peer = self.peer.0, addr = ?self.addr, "peer link refused: {e}");
                    self.fail_down(e, registry, now);
                }
            }
            return;
        }
        match caller.on_verdict(&self.hs_in) {
            Ok(window) => {
                self.window = u32::from(window);
                self.in_window = 0;
                self.state = State::Up;
                self.state_since = now;
                self.last_rx = now;
                self.backoff = BACKOFF_MIN;
                self.last_error = None;
                self.stats.connects += 1;
                self.tx.blocked = false;
                tracing::info!(peer = self.peer.0, addr = ?self.addr, window, "peer link up");
            }
            Err(e) => {
                tracing::error!(peer = self.peer.0, addr = ?self.addr, "peer link refused: {e}");
                self.fail_down(e, registry, now);
            }
        }
    }

    /// Receive answers, send what the window allows.
    fn io(&mut self, registry: &Registry, finished: &mut Vec<Finished>, now: Instant) -> bool {
        let fd = self.sock.as_ref().expect("an up link has a socket").as_raw_fd();
        let mut work = false;
        if self.readable {
            let before = self.rx.bytes;
            let mut ep = ClientEp {
                link: LinkSlots { slots: &mut self.slots, free: &mut self.free },
                gen: self.gen,
                in_window: &mut self.in_window,
                finished,
                answered: &mut self.stats.forwarded,
            };
            let end = self.rx.receive(fd, &mut ep);
            let got = self.rx.bytes - before;
            if got > 0 {
                self.last_rx = now;
                self.stats.rx_bytes += got;
                work = true;
            }
            match end {
                RxEnd::WouldBlock => self.readable = false,
                RxEnd::Stalled | RxEnd::StalledWouldBlock => {
                    unreachable!("the forwarding end never stalls: answers land in host buffers")
                }
                RxEnd::Closed(e) => {
                    self.fail_down(e, registry, now);
                    return true;
                }
            }
        }
        while self.in_window < self.window {
            let Some(tag) = self.queue.pop_front() else { break };
            if self.in_window == 0 {
                // The answer timer starts with the first request outstanding: a link
                // that was idle owes nothing and has not stalled.
                self.last_rx = now;
            }
            let s = self.slots[tag as usize].as_mut().expect("a queued forward has a slot");
            s.sent_on = Some(self.gen);
            s.written = false;
            s.answered = false;
            let f = s.fwd;
            let msg = Message::Request {
                tag,
                op: f.op,
                flags: if f.fua { FLAG_FUA } else { 0 } | if f.replica { FLAG_REPLICA } else { 0 },
                volume: f.volume.0,
                epoch: f.epoch.0,
                lba: f.lba,
                nlb: f.nlb,
                payload: f.payload_out(),
            };
            let data = if f.op == Op::Write { f.data } else { Segs::NONE };
            self.tx.push(OutMsg { msg, data, token: tag });
            self.in_window += 1;
            work = true;
        }
        if self.tx.wants_flush() {
            let before = self.tx.sent_bytes;
            let mut sent = std::mem::take(&mut self.sent);
            sent.clear();
            if let Err(e) = self.tx.flush(fd, &mut sent) {
                self.sent = sent;
                self.fail_down(format!("send failed: {e}"), registry, now);
                return true;
            }
            for &tag in &sent {
                if let Some(s) = self.slots[tag as usize].as_mut().filter(|s| s.sent_on == Some(self.gen)) {
                    s.written = true;
                }
            }
            self.sent = sent;
            self.stats.tx_bytes += self.tx.sent_bytes - before;
            work |= self.tx.sent_bytes != before;
        }
        work
    }

    /// Timers: hold deadlines of unsent forwards, handshake and answer timeouts.
    fn tick(&mut self, registry: &Registry, finished: &mut Vec<Finished>, now: Instant) {
        match self.state {
            State::Idle | State::Up => {}
            _ if now.duration_since(self.state_since) >= HANDSHAKE_TIMEOUT => {
                self.fail_down("the handshake did not finish in time".into(), registry, now);
            }
            _ => {}
        }
        if self.state == State::Up && !self.alive && self.in_window > 0 {
            // The group says the peer is gone (its lease expired): what it has not
            // answered goes where the newest table says, without waiting for the
            // stall timeout.
            self.fail_down("the group says the peer is gone".into(), registry, now);
        }
        if self.state == State::Up && self.in_window > 0 && now.duration_since(self.last_rx) >= STALL_TIMEOUT {
            self.fail_down(
                format!("no answer for {} s with {} request(s) outstanding", STALL_TIMEOUT.as_secs(), self.in_window),
                registry,
                now,
            );
        }
        // Unsent forwards past their hold time (a forward sent on the live connection
        // waits for its answer: the owner may be executing it).
        if self.queue.iter().any(|&t| self.slots[t as usize].as_ref().is_some_and(|s| now >= s.fwd.deadline)) {
            let mut keep = VecDeque::with_capacity(self.queue.len());
            while let Some(tag) = self.queue.pop_front() {
                let expired = self.slots[tag as usize].as_ref().is_some_and(|s| now >= s.fwd.deadline);
                if expired {
                    let f = self.take(tag);
                    self.stats.held_out += 1;
                    finished.push(Finished::Done(f.rref, Err(PATH_ERROR)));
                } else {
                    keep.push_back(tag);
                }
            }
            self.queue = keep;
        }
        self.bounce(finished);
    }

    fn wants_poll(&self) -> bool {
        match self.state {
            State::Idle => false,
            State::Up => {
                self.readable || (!self.queue.is_empty() && self.in_window < self.window) || self.tx.wants_flush()
            }
            State::Connecting | State::ReadChallenge | State::ReadVerdict => self.readable || self.writable,
            State::SendHello | State::SendProof => true,
        }
    }
}

/// The slots of a link, lent to its receive path.
struct LinkSlots<'a> {
    slots: &'a mut Vec<Option<Slot>>,
    free: &'a mut Vec<u32>,
}

impl LinkSlots<'_> {
    fn take(&mut self, tag: u32) -> Forward {
        let s = self.slots[tag as usize].take().expect("a live slot");
        self.free.push(tag);
        s.fwd
    }
}

/// The forwarding end's reading of responses.
struct ClientEp<'a> {
    link: LinkSlots<'a>,
    gen: u64,
    in_window: &'a mut u32,
    finished: &'a mut Vec<Finished>,
    answered: &'a mut u64,
}

impl Endpoint for ClientEp<'_> {
    fn on_message(&mut self, m: Message) -> Dispatch {
        let Message::Response { tag, outcome, status, epoch: _, payload, digest } = m else {
            return Dispatch::Fatal("a request on the forwarding end of a link".into());
        };
        let gen = self.gen;
        let Some(slot) =
            self.link.slots.get_mut(tag as usize).and_then(Option::as_mut).filter(|s| s.sent_on == Some(gen))
        else {
            return Dispatch::Fatal(format!("an answer to request {tag}, which is not outstanding on this link"));
        };
        if slot.answered {
            return Dispatch::Fatal(format!("a second answer to request {tag}"));
        }
        if !slot.written {
            // An owner answers only after reading the whole request: an answer before
            // our send of it finished is not one (and the host's buffers are still
            // being sent from).
            return Dispatch::Fatal(format!("an answer to request {tag} before the request was sent"));
        }
        slot.answered = true;
        *self.in_window -= 1;
        let f = slot.fwd;
        match outcome {
            Outcome::Done => {
                let read_ok = f.op == Op::Read && status.is_success();
                if read_ok {
                    if u64::from(payload) != f.data.len() {
                        return Dispatch::Fatal(format!(
                            "request {tag}: {payload} bytes of read data for {} asked",
                            f.data.len()
                        ));
                    }
                    return Dispatch::Payload { token: tag, into: f.data };
                }
                if payload != 0 {
                    return Dispatch::Fatal(format!(
                        "request {tag}: {payload} bytes of data in an answer to {:?}",
                        f.op
                    ));
                }
                let f = self.link.take(tag);
                if f.op == Op::Digest {
                    let result = if status.is_success() { Ok(digest) } else { Err(status) };
                    self.finished.push(Finished::Digest { rref: f.rref, from: f.to, result });
                } else {
                    let result = if status.is_success() { Ok(()) } else { Err(status) };
                    self.finished.push(Finished::Done(f.rref, result));
                }
                *self.answered += 1;
                Dispatch::Done
            }
            Outcome::NotOwner | Outcome::UnknownVolume | Outcome::Behind => {
                let f = self.link.take(tag);
                self.finished.push(Finished::Reroute(Box::new(f)));
                Dispatch::Done
            }
        }
    }

    fn on_payload(&mut self, tag: u32) {
        let f = self.link.take(tag);
        self.finished.push(Finished::Done(f.rref, Ok(())));
        *self.answered += 1;
    }
}

/// Every outbound link of one reactor.
#[derive(Default)]
pub struct Links {
    clients: Vec<Option<LinkClient>>,
    dir: Option<Arc<PeerDirectory>>,
    /// What became of forwards; the reactor takes these after each pass.
    pub finished: Vec<Finished>,
}

impl Links {
    /// The group's peers as the control thread last said: new addresses, liveness;
    /// links to peers that are alive are opened without waiting for I/O.
    pub fn set_directory(&mut self, dir: Arc<PeerDirectory>, now: Instant) {
        for (&id, p) in &dir.peers {
            if PeerId(id) == dir.me {
                // The link to this peer's own link server: opened only when a part
                // waits for it (one held for another peer whose page became this
                // peer's to lead: it runs here as a forwarded part, ordered and
                // replicated, and its data stays in the host request's buffers).
                let c = self.client(dir.me, now);
                c.addr = p.link.or(c.addr);
                c.alive = false;
                continue;
            }
            let c = self.client(PeerId(id), now);
            c.addr = p.link.or(c.addr);
            c.alive = p.alive;
            if p.alive && c.state == State::Idle {
                // A peer that (re)appeared is tried at once.
                c.next_attempt = now;
                c.backoff = BACKOFF_MIN;
            }
        }
        self.dir = Some(dir);
    }

    /// The directory, once the control thread has sent one.
    pub fn directory(&self) -> Option<&Arc<PeerDirectory>> {
        self.dir.as_ref()
    }

    fn client(&mut self, peer: PeerId, now: Instant) -> &mut LinkClient {
        let i = usize::from(peer.0);
        if self.clients.len() <= i {
            self.clients.resize_with(i + 1, || None);
        }
        self.clients[i].get_or_insert_with(|| LinkClient::new(peer, now))
    }

    /// Sends `f` to `peer` (queued until its link is up and has room).
    pub fn forward(&mut self, peer: PeerId, f: Forward) {
        match self.clients.get_mut(usize::from(peer.0)) {
            Some(Some(c)) => c.push(f),
            // The first part for a peer the directory did not name (yet).
            _ => self.client(peer, Instant::now()).push(f),
        }
    }

    /// A readiness event for token `t`; false if it is not a link's.
    pub fn on_event(&mut self, t: Token, readable: bool, writable: bool) -> bool {
        let Some(i) = t.0.checked_sub(LINK_TOKEN_BASE) else { return false };
        if let Some(Some(c)) = self.clients.get_mut(i) {
            c.readable |= readable;
            c.writable |= writable;
            if writable {
                c.tx.blocked = false;
            }
        }
        true
    }

    /// Drives every link; true on progress.
    pub fn poll(&mut self, registry: &Registry, now: Instant) -> bool {
        let Some(dir) = self.dir.clone() else { return false };
        let mut work = false;
        for c in self.clients.iter_mut().flatten() {
            work |= c.poll(&dir, registry, &mut self.finished, now);
        }
        work
    }

    /// Timers of every link.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        for c in self.clients.iter_mut().flatten() {
            c.tick(registry, &mut self.finished, now);
        }
    }

    /// True when a poll would make progress without waiting for an event.
    pub fn wants_poll(&self, now: Instant) -> bool {
        self.clients.iter().flatten().any(|c| {
            c.wants_poll()
                || c.state == State::Idle
                    && c.addr.is_some()
                    && (!c.queue.is_empty() || c.alive)
                    && now >= c.next_attempt
        })
    }

    /// Forwards outstanding on every link.
    pub fn outstanding(&self) -> usize {
        self.clients.iter().flatten().map(LinkClient::outstanding).sum()
    }

    /// Takes every forward of `volume` still waiting for its link (to be routed again
    /// with a new table).
    pub fn take_unsent(&mut self, volume: VolumeId, out: &mut Vec<Forward>) {
        for c in self.clients.iter_mut().flatten() {
            c.take_unsent(volume, out);
        }
    }

    /// Each link's peer, state and counters (management).
    pub fn report(&self) -> Vec<(PeerId, bool, usize, LinkStats)> {
        let me = self.dir.as_ref().map(|d| d.me);
        self.clients
            .iter()
            .flatten()
            // The link to this peer itself, once it has been used.
            .filter(|c| Some(c.peer) != me || c.stats.connects > 0)
            .map(|c| (c.peer, c.is_up(), c.outstanding(), c.stats))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_wire::nvme::Status;

    fn flush_forward() -> Forward {
        Forward {
            rref: ReqRef { conn: 0, req: 0 },
            to: PeerId(1),
            op: Op::Flush,
            fua: false,
            volume: VolumeId(1),
            epoch: Epoch(1),
            page: 0,
            lba: 0,
            nlb: 0,
            data: Segs::NONE,
            deadline: Instant::now() + Duration::from_secs(10),
            replica: false,
        }
    }

    fn answer(c: &mut LinkClient, finished: &mut Vec<Finished>) -> Dispatch {
        let mut answered = 0;
        let mut ep = ClientEp {
            link: LinkSlots { slots: &mut c.slots, free: &mut c.free },
            gen: c.gen,
            in_window: &mut c.in_window,
            finished,
            answered: &mut answered,
        };
        let m = Message::Response {
            tag: 0,
            outcome: Outcome::Done,
            status: Status::SUCCESS,
            epoch: 1,
            payload: 0,
            digest: 0,
        };
        ep.on_message(m)
    }

    #[test]
    fn answers_are_taken_once_and_only_for_requests_wholly_sent() {
        let mut c = LinkClient::new(PeerId(1), Instant::now());
        c.gen = 3;
        c.push(flush_forward());
        let tag = c.queue.pop_front().unwrap();
        let s = c.slots[tag as usize].as_mut().unwrap();
        s.sent_on = Some(3);
        c.in_window = 1;
        let mut finished = Vec::new();
        // Sent on this connection but still being written: not an answer.
        assert!(
            matches!(answer(&mut c, &mut finished), Dispatch::Fatal(e) if e.contains("before the request was sent"))
        );
        c.slots[tag as usize].as_mut().unwrap().written = true;
        assert!(matches!(answer(&mut c, &mut finished), Dispatch::Done));
        assert_eq!(c.in_window, 0);
        assert!(matches!(finished.as_slice(), [Finished::Done(_, Ok(()))]));
        // The slot is gone: a second answer is no answer.
        assert!(matches!(answer(&mut c, &mut finished), Dispatch::Fatal(e) if e.contains("not outstanding")));
        assert_eq!(c.in_window, 0, "the window counts each request once");
    }

    #[test]
    fn a_read_answered_twice_before_its_data_ends_the_link() {
        let mut c = LinkClient::new(PeerId(1), Instant::now());
        let mut buf = vec![0u8; 4096];
        let seg = quire_drivers::DmaSeg { addr: buf.as_mut_ptr(), iova: 0, len: 4096 };
        c.push(Forward { op: Op::Read, nlb: 1, data: Segs::of(&[seg]), ..flush_forward() });
        let tag = c.queue.pop_front().unwrap();
        let s = c.slots[tag as usize].as_mut().unwrap();
        s.sent_on = Some(0);
        s.written = true;
        c.in_window = 1;
        let mut finished = Vec::new();
        let mut answered = 0;
        let mut ep = ClientEp {
            link: LinkSlots { slots: &mut c.slots, free: &mut c.free },
            gen: 0,
            in_window: &mut c.in_window,
            finished: &mut finished,
            answered: &mut answered,
        };
        let m = Message::Response {
            tag,
            outcome: Outcome::Done,
            status: Status::SUCCESS,
            epoch: 1,
            payload: 4096,
            digest: 0,
        };
        assert!(matches!(ep.on_message(m), Dispatch::Payload { .. }));
        assert!(matches!(ep.on_message(m), Dispatch::Fatal(e) if e.contains("second answer")));
        drop(buf);
    }
}
