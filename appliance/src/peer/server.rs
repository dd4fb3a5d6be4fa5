//! The owner's end of a peer link: requests another peer forwarded, executed on this
//! peer's page store, answered on the same link.
//!
//! A [`LinkServer`] is one accepted link, served by one reactor like a host
//! connection (it sits in the reactor's connection table, so device completions and
//! control answers find it the same way). Its life:
//!
//! ```text
//! Hello ──► Challenge sent ──► Proof ──► Verdict sent ──► Ready ──► Draining ──► Closed
//!   └──────────── refused (Verdict with the reason) ──────────────┘
//! ```
//!
//! Each request takes a slot of its [`ReqTable`] (the window the caller was given) and
//! goes through the same request state machine as a host command: buffers from the
//! reactor's link shard (`NeedBuffer`), its write data straight into them
//! (`AwaitingH2C`), execution on the page store through the volume I/O layer with
//! [`Origin::Peer`] (never forwarded again), the response with the read data from the
//! same buffers (`Transmitting`), then `Free`. Before it executes anything, the server
//! checks that its own routing table gives it the request's page; if not, the answer
//! says so (`NotOwner`, with this peer's epoch) and the caller routes again: stale data
//! is never served. A link that closes drains like a host connection: a request whose
//! device I/O is out keeps its buffers until it comes back.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use quire_wire::nvme::{opcode, Command, Status};

use super::auth::{Refusal, Server};
use super::frame::{read_into, write_from, Dispatch, Endpoint, FrameRx, FrameTx, OutMsg, RxEnd, Segs};
use super::proto::{Message, Op, Outcome, FLAG_FUA, FLAG_REPLICA, HELLO_LEN, PROOF_LEN};
use super::LINK_WINDOW;
use crate::nvmf::tcp::req::{ReqState, ReqTable, Xfer};
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef};
use crate::volume::io::{self as vio, Kind, Origin};
use crate::volume::routing::{PeerId, Route};
use crate::volume::VolumeId;

/// Token of an answer that belongs to no request slot (refused before execution).
const NO_SLOT: u32 = u32::MAX;
/// Time a caller has for its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the link is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Reading the caller's Hello.
    Hello,
    /// Writing our Challenge.
    SendChallenge,
    /// Reading the caller's Proof.
    Proof,
    /// Writing the Verdict (then Ready, or Closing when it refuses).
    SendVerdict,
    /// Requests flow.
    Ready,
    /// Refused or broken: the socket is shut; requests with work outstanding drain.
    Draining,
    /// Everything came home; the reactor may drop the link.
    Closed,
}

/// What the server keeps per request besides the request itself.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    tag: u32,
    volume: u32,
    fua: bool,
    /// The range (an NVMe command's 16-bit block count cannot hold a whole large page,
    /// which a forwarded Write Zeroes or Deallocate may cover).
    lba: u64,
    nlb: u32,
    /// Not executed: answered with this outcome once its data is read.
    refuse: Option<Outcome>,
    /// The sender leads the page's set: its replica write (or its read or digest of
    /// this peer's copy).
    replica: bool,
    /// A digest: answered with the CRC32C of the data read, not the data.
    digest: bool,
}

/// One inbound peer link.
pub struct LinkServer {
    /// Slot in the reactor's connection table.
    pub index: u32,
    /// The socket.
    pub sock: mio::net::TcpStream,
    /// The caller's address.
    pub addr: SocketAddr,
    state: ServerState,
    hs: Option<Server>,
    hs_buf: Vec<u8>,
    hs_pos: usize,
    refused: bool,
    /// The caller, once proven.
    pub remote: Option<PeerId>,
    reqs: ReqTable,
    meta: Vec<Meta>,
    rx: FrameRx,
    tx: FrameTx,
    /// The socket may have bytes.
    pub readable: bool,
    /// The last receive stopped for want of buffers.
    pub stalled: bool,
    /// How many buffers the message it stopped at needs.
    stall_need: usize,
    since: Instant,
    /// Why it closed (logged once).
    pub close_reason: Option<String>,
    /// Scratch for the tokens a flush reports sent (no allocation per flush).
    sent: Vec<u32>,
}

impl LinkServer {
    /// A new inbound link in slot `index`.
    pub fn new(index: u32, sock: mio::net::TcpStream, addr: SocketAddr, ctx: &ReactorCtx) -> LinkServer {
        let chunk = ctx.link_pool.as_ref().map_or(ctx.pool.chunk_size(), |p| p.chunk_size());
        let bufs_max = usize::try_from(super::proto::PART_MAX).expect("128 KiB").div_ceil(chunk);
        let window = usize::from(LINK_WINDOW);
        super::keepalive(&sock);
        LinkServer {
            index,
            sock,
            addr,
            state: ServerState::Hello,
            hs: None,
            hs_buf: vec![0; HELLO_LEN],
            hs_pos: 0,
            refused: false,
            remote: None,
            reqs: ReqTable::new(window, bufs_max),
            meta: vec![Meta::default(); window],
            rx: FrameRx::new(),
            tx: FrameTx::new(),
            readable: true,
            stalled: false,
            stall_need: 0,
            since: Instant::now(),
            close_reason: None,
            sent: Vec::with_capacity(super::proto::BATCH_MAX),
        }
    }

    /// The state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Requests not free.
    pub fn active_requests(&self) -> u32 {
        self.reqs.active()
    }

    fn begin_close(&mut self, reason: String, ctx: &mut ReactorCtx) {
        if matches!(self.state, ServerState::Draining | ServerState::Closed) {
            return;
        }
        match self.remote {
            Some(p) => tracing::info!(peer = p.0, addr = %self.addr, "inbound peer link closed: {reason}"),
            None => tracing::warn!(addr = %self.addr, "inbound peer link refused: {reason}"),
        }
        self.close_reason = Some(reason);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.state = ServerState::Draining;
        // Answers that will never be sent: their requests are done.
        for token in self.tx.drain_tokens() {
            if token != NO_SLOT {
                let idx = u16::try_from(token).expect("a slot index");
                release(&mut self.reqs, idx, ctx);
                self.reqs.set_state(idx, ReqState::Free);
            }
        }
        self.maybe_closed(ctx);
    }

    /// Frees what can be freed of a draining link; Closed when every request is home.
    pub fn maybe_closed(&mut self, ctx: &mut ReactorCtx) {
        if self.state != ServerState::Draining {
            return;
        }
        for idx in 0..u16::try_from(self.reqs.len()).expect("at most LINK_WINDOW slots") {
            let r = self.reqs.req(idx);
            let rref = ReqRef { conn: self.index, req: idx };
            match r.state() {
                ReqState::Free | ReqState::Executing | ReqState::WaitingControl => {}
                ReqState::WaitingDevice | ReqState::WaitingOrder => {
                    ctx.dev_waiters.retain(|w| *w != rref);
                    ctx.order_waiters.retain(|w| *w != rref);
                    if r.outstanding() {
                        self.reqs.set_state(idx, ReqState::Executing);
                    } else {
                        let vol = VolumeId(self.meta[usize::from(idx)].volume);
                        vio::release_locks(&mut self.reqs, idx, Some(vol), ctx);
                        release(&mut self.reqs, idx, ctx);
                        self.reqs.set_state_closing(idx, ReqState::Free);
                    }
                }
                ReqState::NeedBuffer | ReqState::AwaitingH2C | ReqState::ReadyToComplete | ReqState::Transmitting => {
                    assert!(!r.outstanding(), "request {idx} in {:?} with work outstanding", r.state());
                    release(&mut self.reqs, idx, ctx);
                    self.reqs.set_state_closing(idx, ReqState::Free);
                }
                s => unreachable!("link request {idx} in {s:?} while draining"),
            }
        }
        if self.reqs.active() == 0 {
            ctx.stats.transitions.add(&self.reqs.take_transitions());
            self.state = ServerState::Closed;
        }
    }

    /// Reads and serves what the socket has.
    pub fn receive(&mut self, ctx: &mut ReactorCtx) {
        let fd = self.sock.as_raw_fd();
        loop {
            match self.state {
                ServerState::Hello | ServerState::Proof => match read_into(fd, &mut self.hs_buf[self.hs_pos..]) {
                    Ok(0) => return self.begin_close("the caller closed the link during the handshake".into(), ctx),
                    Ok(n) => {
                        self.hs_pos += n;
                        if self.hs_pos == self.hs_buf.len() {
                            self.handshake_step(ctx);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.readable = false;
                        return;
                    }
                    Err(e) => return self.begin_close(format!("handshake: {e}"), ctx),
                },
                ServerState::SendChallenge | ServerState::SendVerdict => {
                    self.flush_handshake(ctx);
                    if matches!(self.state, ServerState::SendChallenge | ServerState::SendVerdict) {
                        return;
                    }
                }
                ServerState::Ready => {
                    let LinkServer { rx, reqs, meta, tx, index, stall_need, remote, .. } = self;
                    let before = rx.bytes;
                    let mut ep = ServerEp { reqs, meta, tx, ctx, index: *index, remote: *remote, stall_need };
                    let end = rx.receive(fd, &mut ep);
                    add(&ctx.stats.link_rx_bytes, rx.bytes - before);
                    match end {
                        RxEnd::WouldBlock => {
                            self.readable = false;
                            self.stalled = false;
                        }
                        RxEnd::Stalled => {
                            add(&ctx.stats.link_stalls, 1);
                            self.stalled = true;
                        }
                        RxEnd::StalledWouldBlock => {
                            add(&ctx.stats.link_stalls, 1);
                            self.readable = false;
                            self.stalled = true;
                        }
                        RxEnd::Closed(e) => self.begin_close(e, ctx),
                    }
                    return;
                }
                ServerState::Draining | ServerState::Closed => return,
            }
        }
    }

    fn handshake_step(&mut self, ctx: &mut ReactorCtx) {
        let Some(dir) = ctx.links.directory().cloned() else {
            // Before the first directory this peer has no group: refuse, say why.
            return self.refuse(super::auth::not_ready(), ctx);
        };
        match self.state {
            ServerState::Hello => {
                match Server::on_hello(dir.me.0, Some(dir.group), &dir.secret, &hello_of(&self.hs_buf)) {
                    Ok((s, challenge)) => {
                        self.hs = Some(s);
                        self.hs_buf = challenge.to_vec();
                        self.hs_pos = 0;
                        self.state = ServerState::SendChallenge;
                    }
                    Err(r) => self.refuse(r, ctx),
                }
            }
            ServerState::Proof => {
                let proof: &[u8; PROOF_LEN] = self.hs_buf[..].try_into().expect("a proof's length");
                let s = self.hs.as_ref().expect("a proof follows our challenge");
                match s.on_proof(proof, LINK_WINDOW) {
                    Ok(verdict) => {
                        self.remote = Some(PeerId(s.caller()));
                        self.hs_buf = verdict.to_vec();
                        self.hs_pos = 0;
                        self.state = ServerState::SendVerdict;
                    }
                    Err(r) => self.refuse(r, ctx),
                }
            }
            s => unreachable!("handshake step in {s:?}"),
        }
    }

    fn refuse(&mut self, r: Refusal, ctx: &mut ReactorCtx) {
        tracing::warn!(addr = %self.addr, "inbound peer link refused: {}", r.reason);
        add(&ctx.stats.link_refusals, 1);
        self.hs_buf = r.verdict.to_vec();
        self.hs_pos = 0;
        self.refused = true;
        self.close_reason = Some(r.reason);
        self.state = ServerState::SendVerdict;
    }

    fn flush_handshake(&mut self, ctx: &mut ReactorCtx) {
        match write_from(self.sock.as_raw_fd(), &self.hs_buf[self.hs_pos..]) {
            Ok(n) => {
                self.hs_pos += n;
                if self.hs_pos < self.hs_buf.len() {
                    return;
                }
                self.hs_pos = 0;
                match self.state {
                    ServerState::SendChallenge => {
                        self.hs_buf = vec![0; PROOF_LEN];
                        self.state = ServerState::Proof;
                    }
                    ServerState::SendVerdict if self.refused => {
                        let why = self.close_reason.take().unwrap_or_default();
                        self.begin_close(why, ctx);
                    }
                    ServerState::SendVerdict => {
                        self.state = ServerState::Ready;
                        self.readable = true;
                        tracing::info!(peer = ?self.remote.map(|p| p.0), addr = %self.addr, "inbound peer link up");
                    }
                    s => unreachable!("handshake write in {s:?}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => self.begin_close(format!("handshake: {e}"), ctx),
        }
    }

    /// True when there is something to send.
    pub fn wants_flush(&self) -> bool {
        match self.state {
            ServerState::SendChallenge | ServerState::SendVerdict => true,
            ServerState::Ready => self.tx.wants_flush(),
            _ => false,
        }
    }

    /// The socket became writable.
    pub fn on_writable(&mut self) {
        self.tx.blocked = false;
    }

    /// Sends what is queued; frees requests whose answers are out.
    pub fn flush(&mut self, ctx: &mut ReactorCtx) {
        match self.state {
            ServerState::SendChallenge | ServerState::SendVerdict => return self.flush_handshake(ctx),
            ServerState::Ready => {}
            _ => return,
        }
        let mut done = std::mem::take(&mut self.sent);
        done.clear();
        let before = self.tx.sent_bytes;
        let res = self.tx.flush(self.sock.as_raw_fd(), &mut done);
        add(&ctx.stats.link_tx_bytes, self.tx.sent_bytes - before);
        for &token in &done {
            if token != NO_SLOT {
                let idx = u16::try_from(token).expect("a slot index");
                release(&mut self.reqs, idx, ctx);
                self.reqs.set_state(idx, ReqState::Free);
            }
        }
        self.sent = done;
        if let Err(e) = res {
            self.begin_close(format!("send failed: {e}"), ctx);
        }
    }

    /// Timers: a caller that does not finish its handshake is dropped.
    pub fn tick(&mut self, ctx: &mut ReactorCtx) {
        ctx.stats.transitions.add(&self.reqs.take_transitions());
        if matches!(self.state, ServerState::Hello | ServerState::Proof | ServerState::SendChallenge)
            && self.since.elapsed() >= HANDSHAKE_TIMEOUT
        {
            self.begin_close(format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()), ctx);
        }
        self.maybe_closed(ctx);
    }

    /// Buffers came back to the link shard: a stalled receive may go on.
    pub fn may_unstall(&self, ctx: &ReactorCtx) -> bool {
        self.stalled && ctx.link_pool.as_ref().is_some_and(|p| p.available() >= self.stall_need.max(1))
    }

    /// True when a receive pass could progress: bytes may be waiting (and either
    /// nothing is stalled, or payloads before the stalled message are still due), or
    /// buffers came back for a stalled message.
    pub fn may_receive(&self, ctx: &ReactorCtx) -> bool {
        if matches!(self.state, ServerState::Draining | ServerState::Closed) {
            return false;
        }
        self.readable && (!self.stalled || self.rx.has_pending()) || self.may_unstall(ctx)
    }

    /// A device part of request `idx` completed.
    pub fn on_device_completion(&mut self, idx: u16, result: Result<(), quire_drivers::IoError>, ctx: &mut ReactorCtx) {
        vio::on_part_done(&mut self.reqs, idx, result);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// A replica write request `idx` sent (as the leader of its page's set) was
    /// answered.
    pub fn on_forward_done(&mut self, idx: u16, result: Result<(), Status>, ctx: &mut ReactorCtx) {
        vio::on_forward_done(&mut self.reqs, idx, result);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// The control thread answered an allocation request `idx` waited for.
    pub fn on_alloc_done(&mut self, idx: u16, result: Result<(), Status>, ctx: &mut ReactorCtx) {
        self.reqs.req_mut(idx).alloc_answered(idx, result);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// The control thread answered a whole-page free of request `idx`.
    pub fn on_free_done(&mut self, idx: u16, result: Result<(), Status>, ctx: &mut ReactorCtx) {
        self.reqs.req_mut(idx).free_answered(idx, result);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// Room in the device queue for request `idx` (or, from `WaitingOrder`, another
    /// try at ordering its write).
    pub fn resume_device(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let r = self.reqs.req(idx);
        assert!(
            matches!(r.state(), ReqState::WaitingDevice | ReqState::WaitingOrder),
            "link request {idx} resumed from a waiting list in {:?}",
            r.state()
        );
        if r.state() == ReqState::WaitingOrder && std::time::Instant::now() >= r.started + ctx.hold() {
            // No leader took the page's set (or its pieces stayed taken) within the
            // hold time: a retryable path error, like a peer that cannot be reached.
            self.reqs.req_mut(idx).fail(crate::peer::client::PATH_ERROR);
        }
        let r = self.reqs.req(idx);
        let next = if self.state == ServerState::Ready && r.status.is_success() {
            ReqState::ReadyToExecute
        } else {
            ReqState::Executing
        };
        self.reqs.set_state(idx, next);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    fn process(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let draining = self.state != ServerState::Ready;
        process(&mut self.reqs, &mut self.meta, &mut self.tx, ctx, (self.index, self.remote), idx, draining);
    }
}

fn hello_of(b: &[u8]) -> [u8; HELLO_LEN] {
    b.try_into().expect("a Hello's length")
}

/// Gives request `idx`'s buffers back to the link shard.
fn release(reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) {
    let r = reqs.req_mut(idx);
    let pool = ctx.link_pool.as_mut().expect("a peer serving links has a link shard");
    for b in r.bufs.drain(..) {
        pool.put(b);
    }
}

/// Advances link request `idx` until it waits on something outside (the decisions of
/// the request state machine for a forwarded part, in one place).
fn process(
    reqs: &mut ReqTable,
    meta: &mut [Meta],
    tx: &mut FrameTx,
    ctx: &mut ReactorCtx,
    conn: (u32, Option<PeerId>),
    idx: u16,
    draining: bool,
) {
    loop {
        let state = reqs.req(idx).state();
        match state {
            ReqState::ReadyToExecute => {
                if draining || !reqs.req(idx).status.is_success() {
                    reqs.set_state(idx, ReqState::Executing);
                    continue;
                }
                execute(reqs, meta, ctx, conn, idx);
                if reqs.req(idx).state() == ReqState::ReadyToExecute {
                    reqs.set_state(idx, ReqState::Executing);
                }
            }
            ReqState::Executing => {
                if reqs.req(idx).outstanding() {
                    return;
                }
                let vol = VolumeId(meta[usize::from(idx)].volume);
                vio::release_locks(reqs, idx, Some(vol), ctx);
                reqs.set_state(idx, ReqState::ReadyToComplete);
            }
            ReqState::WaitingControl => {
                if reqs.req(idx).allocs_inflight > 0 {
                    return;
                }
                let next = if !draining && reqs.req(idx).status.is_success() {
                    ReqState::ReadyToExecute
                } else {
                    ReqState::Executing
                };
                reqs.set_state(idx, next);
            }
            ReqState::ReadyToComplete => {
                if draining {
                    release(reqs, idx, ctx);
                    reqs.set_state_closing(idx, ReqState::Free);
                    return;
                }
                respond(reqs, meta, tx, ctx, idx);
                return;
            }
            _ => return,
        }
    }
}

fn execute(reqs: &mut ReqTable, meta: &[Meta], ctx: &mut ReactorCtx, (index, remote): (u32, Option<PeerId>), idx: u16) {
    let m = meta[usize::from(idx)];
    let vol = VolumeId(m.volume);
    let rref = ReqRef { conn: index, req: idx };
    let cmd = reqs.req(idx).cmd;
    if !ctx.volumes.contains_key(&vol) {
        // Deleted meanwhile.
        reqs.req_mut(idx).fail(Status::INVALID_NAMESPACE.with_dnr());
        return;
    }
    let (slba, nlb) = (m.lba, u64::from(m.nlb));
    let origin = match remote {
        Some(leader) if m.replica => Origin::Replica(leader),
        _ => Origin::Peer,
    };
    match cmd.opcode {
        opcode::NVM_FLUSH => {
            let _ = vio::flush(reqs, idx, rref, (vol, Origin::Peer), ctx);
        }
        opcode::NVM_READ => {
            let _ = vio::run(reqs, idx, rref, (vol, origin), (slba, nlb, 0), Kind::Read, ctx);
        }
        opcode::NVM_WRITE => {
            let kind = Kind::Write { fua: m.fua };
            let _ = vio::run(reqs, idx, rref, (vol, origin), (slba, nlb, 0), kind, ctx);
        }
        opcode::NVM_WRITE_ZEROES => {
            let kind = if cmd.cdw12 & (1 << 25) != 0 { Kind::Deallocate } else { Kind::Zeroes };
            let _ = vio::run(reqs, idx, rref, (vol, origin), (slba, nlb, 0), kind, ctx);
        }
        op => unreachable!("link requests are built with known opcodes, not {op:#x}"),
    }
}

fn respond(reqs: &mut ReqTable, meta: &[Meta], tx: &mut FrameTx, ctx: &mut ReactorCtx, idx: u16) {
    let m = meta[usize::from(idx)];
    let r = reqs.req(idx);
    let epoch = ctx.volumes.get(&VolumeId(m.volume)).map_or(0, |v| v.routing.epoch.0);
    let read_ok = r.cmd.opcode == opcode::NVM_READ && r.status.is_success() && !m.digest;
    let digest = if m.digest && r.status.is_success() && m.refuse.is_none() && !r.misrouted {
        r.data_crc(0, r.data_len as usize)
    } else {
        0
    };
    let (payload, data) = if read_ok {
        let mut segs = quire_drivers::IoRequest::no_data(quire_drivers::Op::Flush, 0, 0, 0);
        r.segs_into(0, u64::from(r.data_len), &mut segs);
        (r.data_len, Segs::of(&segs.segs[..segs.nsegs]))
    } else {
        (0, Segs::NONE)
    };
    let (outcome, status) = match m.refuse {
        Some(o) => (o, Status::SUCCESS),
        None if r.misrouted => (Outcome::NotOwner, Status::SUCCESS),
        // A part this peer ordered as its page's leader and could not finish because it
        // stopped leading meanwhile (a move's cut-over: the members refuse the writes
        // of a leader that is no longer theirs): the sender takes it to the new
        // leader, as a host would through another path. Applying it again there is
        // harmless: the same data, and no write overlapping it can be in flight.
        None if r.status == crate::peer::client::PATH_ERROR && !m.replica && !leads(ctx, &m) => {
            (Outcome::NotOwner, Status::SUCCESS)
        }
        None => (Outcome::Done, r.status),
    };
    if outcome == Outcome::Done && !status.is_success() {
        add(&ctx.stats.link_errors, 1);
    }
    let msg = Message::Response { tag: m.tag, outcome, status, epoch, payload, digest };
    tx.push(OutMsg { msg, data, token: u32::from(idx) });
    reqs.set_state(idx, ReqState::Transmitting);
    add(&ctx.stats.link_served, 1);
}

/// Whether this peer leads the set of the page `m` addresses now.
fn leads(ctx: &ReactorCtx, m: &Meta) -> bool {
    ctx.volumes.get(&VolumeId(m.volume)).is_some_and(|v| {
        let page = m.lba / v.view.info.blocks_per_page();
        page < v.routing.len() && v.routing.set_of(page).leads_here()
    })
}

/// The owner's reading of forwarded requests.
struct ServerEp<'a> {
    reqs: &'a mut ReqTable,
    meta: &'a mut [Meta],
    tx: &'a mut FrameTx,
    ctx: &'a mut ReactorCtx,
    index: u32,
    /// The caller (proven at the handshake).
    remote: Option<PeerId>,
    stall_need: &'a mut usize,
}

impl ServerEp<'_> {
    fn answer(&mut self, tag: u32, outcome: Outcome, status: Status, epoch: u64) {
        let msg = Message::Response { tag, outcome, status, epoch, payload: 0, digest: 0 };
        self.tx.push(OutMsg { msg, data: Segs::NONE, token: NO_SLOT });
    }
}

impl Endpoint for ServerEp<'_> {
    fn on_message(&mut self, m: Message) -> Dispatch {
        let Message::Request { tag, op, flags, volume, epoch: m_epoch, lba, nlb, payload } = m else {
            return Dispatch::Fatal("an answer on the owner's end of a link".into());
        };
        let Some(vol) = self.ctx.volumes.get(&VolumeId(volume)) else {
            if payload > 0 {
                // Its data follows in the stream: it must be read somewhere. A volume
                // this peer does not know yet is rare (just created in the group);
                // refuse the link's framing no more than the caller's request: take a
                // slot as usual and fail it once the data is in.
                return self.take_and_refuse(m, Outcome::UnknownVolume);
            }
            self.answer(tag, Outcome::UnknownVolume, Status::SUCCESS, 0);
            return Dispatch::Done;
        };
        let info = &vol.view.info;
        let my_epoch = vol.routing.epoch.0;
        if op != Op::Flush {
            let bpp = info.blocks_per_page();
            let end = lba + u64::from(nlb);
            if end > info.num_blocks() {
                // The caller checked the range against its own view of the volume: one
                // of the two is stale (a grow not seen here yet). Route again.
                if payload > 0 {
                    return self.take_and_refuse(m, Outcome::NotOwner);
                }
                self.answer(tag, Outcome::NotOwner, Status::SUCCESS, my_epoch);
                return Dispatch::Done;
            }
            if lba / bpp != (end - 1) / bpp {
                return Dispatch::Fatal(format!("request {tag}: {lba}+{nlb} crosses a page boundary"));
            }
            if u64::from(payload) != if op == Op::Write { u64::from(nlb) * u64::from(info.block_size) } else { 0 } {
                return Dispatch::Fatal(format!("request {tag}: {payload} bytes of data for {nlb} blocks"));
            }
            let page = lba / bpp;
            let refusal = if flags & FLAG_REPLICA != 0 {
                // The leader's replica write (or its read or digest of this copy): this
                // peer's table must name the sender as the set's leader and this peer
                // as a member that takes its writes. A sender with a newer table than
                // ours is asked to send again once ours has caught up.
                let set = vol.routing.set_of(page);
                let member = set.me.is_some() && set.my_role() != Some(crate::replica::set::Role::Out);
                if m_epoch > my_epoch {
                    Some(Outcome::Behind)
                } else if Some(set.leader) != self.remote || !member {
                    Some(Outcome::NotOwner)
                } else {
                    None
                }
            } else {
                let route = if op == Op::Read { vol.routing.read_route(page) } else { vol.routing.write_route(page) };
                match route {
                    Route::Local => None,
                    // This peer leads the set but may not order writes yet.
                    Route::Hold => Some(Outcome::Behind),
                    Route::Remote(_) => Some(Outcome::NotOwner),
                }
            };
            if let Some(outcome) = refusal {
                if payload > 0 {
                    return self.take_and_refuse(m, outcome);
                }
                self.answer(tag, outcome, Status::SUCCESS, my_epoch);
                return Dispatch::Done;
            }
        }
        let bs = u64::from(info.block_size);
        let len = match op {
            Op::Read | Op::Write | Op::Digest => u64::from(nlb) * bs,
            _ => 0,
        };
        if len > u64::from(super::proto::PART_MAX) {
            return Dispatch::Fatal(format!(
                "request {tag}: {len} bytes of data (parts are at most {})",
                super::proto::PART_MAX
            ));
        }
        self.start(tag, op, flags, volume, lba, nlb, len)
    }

    fn on_payload(&mut self, token: u32) {
        let idx = u16::try_from(token).expect("a slot index");
        self.reqs.set_state(idx, ReqState::ReadyToExecute);
        let draining = false;
        process(self.reqs, self.meta, self.tx, self.ctx, (self.index, self.remote), idx, draining);
    }
}

impl ServerEp<'_> {
    /// Takes a slot (and buffers) for a request and starts it; its payload, if any,
    /// goes into its buffers.
    #[allow(clippy::too_many_arguments)]
    fn start(&mut self, tag: u32, op: Op, flags: u8, volume: u32, lba: u64, nlb: u32, len: u64) -> Dispatch {
        let chunk = self.ctx.link_pool.as_ref().expect("a link shard").chunk_size();
        let need = usize::try_from(len).expect("≤ PAYLOAD_MAX").div_ceil(chunk);
        if self.ctx.link_pool.as_ref().expect("a link shard").available() < need {
            *self.stall_need = need;
            return Dispatch::Stall;
        }
        let opc = match op {
            Op::Read | Op::Digest => opcode::NVM_READ,
            Op::Write => opcode::NVM_WRITE,
            Op::Flush => opcode::NVM_FLUSH,
            Op::WriteZeroes | Op::Deallocate => opcode::NVM_WRITE_ZEROES,
        };
        // The command carries the operation; the range stays in `Meta`.
        let mut cmd = Command { opcode: opc, nsid: 1, ..Command::default() };
        if op == Op::Deallocate {
            cmd.cdw12 |= 1 << 25;
        }
        let Some(idx) = self.reqs.get(cmd) else {
            return Dispatch::Fatal(format!("request {tag}: more requests than the window of {LINK_WINDOW}"));
        };
        self.meta[usize::from(idx)] = Meta {
            tag,
            volume,
            fua: flags & FLAG_FUA != 0,
            lba,
            nlb,
            refuse: None,
            replica: flags & FLAG_REPLICA != 0,
            digest: op == Op::Digest,
        };
        let pool = self.ctx.link_pool.as_mut().expect("a link shard");
        let r = self.reqs.req_mut(idx);
        for _ in 0..need {
            r.bufs.push(pool.get().expect("counted above"));
        }
        r.data_len = u32::try_from(len).expect("≤ PAYLOAD_MAX");
        if op == Op::Write {
            r.xfer = Xfer::H2C;
            self.reqs.set_state(idx, ReqState::NeedBuffer);
            self.reqs.set_state(idx, ReqState::AwaitingH2C);
            let mut segs = quire_drivers::IoRequest::no_data(quire_drivers::Op::Flush, 0, 0, 0);
            self.reqs.req(idx).segs_into(0, len, &mut segs);
            return Dispatch::Payload { token: u32::from(idx), into: Segs::of(&segs.segs[..segs.nsegs]) };
        }
        if matches!(op, Op::Read | Op::Digest) {
            r.xfer = Xfer::C2H;
            self.reqs.set_state(idx, ReqState::NeedBuffer);
        }
        self.reqs.set_state(idx, ReqState::ReadyToExecute);
        process(self.reqs, self.meta, self.tx, self.ctx, (self.index, self.remote), idx, false);
        Dispatch::Done
    }

    /// A write that cannot be served here, whose data is on its way: read the data
    /// into a slot's buffers like any write's (the stream must go on), then answer
    /// with `outcome` instead of executing.
    fn take_and_refuse(&mut self, m: Message, outcome: Outcome) -> Dispatch {
        let Message::Request { tag, op, flags, volume, lba, nlb, payload, .. } = m else { unreachable!("a request") };
        match self.start(tag, op, flags, volume, lba, nlb, u64::from(payload)) {
            Dispatch::Payload { token, into } => {
                let idx = u16::try_from(token).expect("a slot index");
                self.meta[usize::from(idx)].refuse = Some(outcome);
                // Not executed: a failed status makes `process` skip execution.
                self.reqs.req_mut(idx).fail(Status::ABORTED_BY_REQUEST);
                Dispatch::Payload { token, into }
            }
            other => other,
        }
    }
}
