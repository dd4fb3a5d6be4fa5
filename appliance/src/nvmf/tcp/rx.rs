//! The receive path: bytes from the socket into a pool chunk, payloads without a copy.
//!
//! Each connection receives into a chunk of the reactor's buffer pool (taken when bytes
//! arrive, given back when the connection falls idle). Headers are many and small, so
//! they are read in bulk: one `read` brings in dozens of command capsules. What lands
//! there and is payload stays there:
//! - **in-capsule data** (writes up to `in_capsule_data_size`, Connect data, DSM
//!   ranges) becomes the request's buffer as it is: a read-only view of the chunk
//!   ([`quire_drivers::PoolShard::view`]), handed to the device as it is. The chunk goes
//!   back to the pool when the connection and every view have let go of it. A view the
//!   device cannot take (an `O_DIRECT` file on a device that wants 512-byte aligned
//!   memory) is copied once into a buffer of its own, and counted;
//! - **H2CData payloads** (larger writes, after an R2T) are read with `readv` straight
//!   into the request's own buffers, with the chunk as the last slice so that the next
//!   headers arrive in the same system call. Payload bytes of an H2CData PDU that came
//!   in the same read as its header are copied into the request's buffers, and counted.
//!
//! Both counted copies go to the reactor's `rx_copied_bytes`.
//!
//! A capsule must lie in one chunk for its data to become a view, so a read never
//! goes further than [`Rx::reserve`] bytes before the end of the chunk: every PDU that
//! starts inside a read then ends inside the chunk. When less room than that is left,
//! the unparsed bytes (never more than a partial header) move to the start of the chunk
//! if no view holds it, or to a fresh chunk otherwise.
//!
//! The phases ([`RxPhase`]) form the receive state machine; each is a point where the
//! connection may have to wait for more bytes from the socket (or for a chunk).

use std::io::{IoSliceMut, Read};

use quire_drivers::DmaBuf;
use quire_wire::tcp::{decode, CommonHeader, DataHeader, Layout, Role, TermError, CH_LEN, DIGEST_LEN, MAX_HEADER_LEN};

use crate::cast::usize_from;
use crate::nvmf::tcp::qpair::{ConnState, TcpQpair, TRANSIENT_TRANSPORT_ERROR};
use crate::nvmf::tcp::req::{ReqState, ReqTable};
use crate::reactor::stats::add;
use crate::reactor::ReactorCtx;

/// Most bytes one bulk read brings into the chunk (headers and in-capsule data).
pub const READ_MAX: usize = 16 << 10;
/// Slices of one direct read: a command's chunks and the receive chunk.
const IOV_RX_MAX: usize = usize_from(quire_config::validate::CHUNKS_PER_COMMAND_MAX) + 1;
/// PDUs handled per call before the reactor moves on to other connections.
const PDU_BUDGET: u32 = 64;
/// Largest padding a PDU may carry before its data (PDO is one byte).
const PAD_MAX: usize = 255;
/// Most in-capsule data on an admin queue (Linux sends up to 8 KiB there).
pub const ADMIN_IN_CAPSULE_MAX: usize = usize_from(quire_config::validate::ADMIN_IN_CAPSULE_MAX);

/// Room a chunk needs for one whole capsule with the most in-capsule data `icd`.
pub fn reserve_for(icd: usize) -> usize {
    MAX_HEADER_LEN + PAD_MAX + icd.max(ADMIN_IN_CAPSULE_MAX) + DIGEST_LEN
}

// The configuration admits a chunk size when `in_capsule_data_size` plus
// `RX_CHUNK_OVERHEAD` fits it; the receive path needs, after moving a partial header
// (< MAX_HEADER_LEN) to the chunk's start, its reserve plus a common header more.
const _: () = assert!(
    MAX_HEADER_LEN + PAD_MAX + DIGEST_LEN + CH_LEN + MAX_HEADER_LEN
        <= usize_from(quire_config::validate::RX_CHUNK_OVERHEAD)
);

/// Where the receive path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxPhase {
    /// Reading the next PDU header.
    Header,
    /// Dropping bytes (termination data, data of a command that failed early).
    Discard {
        /// Bytes left to drop.
        remaining: usize,
    },
    /// In-capsule data of request `req` is arriving in the chunk, after `pad` bytes of
    /// padding; it becomes the request's buffer once all `len` bytes (and the digest)
    /// are in.
    CapsuleData {
        /// The request.
        req: u16,
        /// Padding before the data.
        pad: usize,
        /// Data length.
        len: usize,
        /// A data digest follows the data.
        ddgst: bool,
    },
    /// Reading an H2CData payload into request `req`'s buffers.
    Data {
        /// The request.
        req: u16,
        /// Padding still to drop before the data.
        pad: usize,
        /// Next data offset to fill.
        off: u32,
        /// Bytes still to read.
        remaining: u32,
        /// Offset where this PDU's data began (for the digest).
        start: u32,
        /// A data digest follows.
        ddgst: bool,
    },
    /// Reading the data digest of `len` bytes at `start` (H2CData).
    DataDigest {
        /// The request.
        req: u16,
        /// Offset where the PDU's data began.
        start: u32,
        /// Length of the PDU's data.
        len: u32,
    },
}

/// Receive state of one connection.
pub struct Rx {
    /// The chunk bytes arrive in (none while the connection is idle).
    buf: Option<DmaBuf>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Room a chunk keeps after a bulk read: one whole capsule.
    reserve: usize,
    /// The phase.
    pub phase: RxPhase,
    /// The socket may have bytes (edge-triggered readiness: set by an event, cleared
    /// when a read would block).
    pub readable: bool,
    /// No chunk to read into (the pool is empty, or views hold the chunk and no other
    /// is free): the reactor retries when buffers come back.
    pub starved: bool,
    /// Bytes arrived since the last tick (a connection idle for a whole tick gives its
    /// chunk back).
    active: bool,
}

enum Fill {
    Got,
    WouldBlock,
    NoChunk,
    Closed(String),
}

impl Rx {
    /// An empty receive state expecting a header; capsules carry at most `icd` bytes of
    /// data on I/O queues.
    pub fn new(icd: usize) -> Rx {
        Rx {
            buf: None,
            start: 0,
            end: 0,
            reserve: reserve_for(icd),
            phase: RxPhase::Header,
            readable: true,
            starved: false,
            active: false,
        }
    }

    /// Bytes waiting in the chunk.
    pub fn staged_len(&self) -> usize {
        self.end - self.start
    }

    /// True when a call to `receive` could make progress.
    pub fn can_progress(&self) -> bool {
        !self.starved && (self.readable || self.staged_len() > 0)
    }

    fn staged(&self) -> &[u8] {
        match &self.buf {
            Some(b) => b.bytes(self.start, self.end),
            None => &[],
        }
    }

    fn consume(&mut self, n: usize) {
        assert!(n <= self.staged_len());
        self.start += n;
    }

    /// Bytes of the current PDU known to be missing (what the next read must be
    /// allowed to bring even when the chunk's room is down to its reserve).
    fn missing(&self) -> usize {
        let staged = self.staged_len();
        match self.phase {
            RxPhase::CapsuleData { pad, len, ddgst, .. } => {
                (pad + len + if ddgst { DIGEST_LEN } else { 0 }).saturating_sub(staged)
            }
            RxPhase::Header if staged < CH_LEN => CH_LEN - staged,
            RxPhase::Header => {
                let hlen = usize::from(self.staged()[2]);
                let hdgst = if self.staged()[1] & 1 != 0 { DIGEST_LEN } else { 0 };
                (hlen + hdgst).saturating_sub(staged).max(1)
            }
            RxPhase::DataDigest { .. } => DIGEST_LEN.saturating_sub(staged).max(1),
            RxPhase::Discard { .. } | RxPhase::Data { .. } => 1,
        }
    }

    /// Bytes of the current PDU the next read must bring even when the chunk is down to
    /// its reserve (0 when the next byte starts a new PDU).
    fn need_current(&self) -> usize {
        if self.staged_len() > 0 || matches!(self.phase, RxPhase::CapsuleData { .. }) {
            self.missing()
        } else {
            0
        }
    }

    /// Bytes a bulk read may bring: every PDU that starts inside it ends inside the
    /// chunk.
    fn bulk_limit(&self) -> usize {
        let cap = self.buf.as_ref().map_or(0, DmaBuf::len);
        cap.saturating_sub(self.end + self.reserve).min(READ_MAX)
    }

    /// Makes room for a read: a chunk with at least `reserve` bytes after `end`, or the
    /// current PDU's missing bytes. False when no chunk can be had now.
    fn make_room(&mut self, ctx: &mut ReactorCtx) -> bool {
        let need = self.need_current();
        let staged = self.staged_len();
        let Some(buf) = &mut self.buf else {
            match ctx.pool.get() {
                Some(b) => {
                    self.buf = Some(b);
                    self.start = 0;
                    self.end = 0;
                    return true;
                }
                None => return false,
            }
        };
        let room = buf.len() - self.end;
        if room >= self.reserve + CH_LEN || (need > 0 && room >= need) {
            return true;
        }
        // Only a partial header (or digest) is staged — a capsule's data always fits
        // where its header landed: move it to the start of this chunk, or of a fresh
        // one when views still hold this one.
        assert!(staged < MAX_HEADER_LEN, "only a partial header is ever moved ({staged} bytes, {:?})", self.phase);
        if ctx.pool.holders(buf) == 1 {
            buf.as_mut_slice().copy_within(self.start..self.end, 0);
        } else {
            let Some(mut fresh) = ctx.pool.get() else { return false };
            fresh.as_mut_slice()[..staged].copy_from_slice(buf.bytes(self.start, self.end));
            let old = std::mem::replace(buf, fresh);
            ctx.pool.put(old);
        }
        self.start = 0;
        self.end = staged;
        true
    }

    /// How many bytes the next read into the chunk may bring.
    fn read_limit(&self) -> usize {
        let cap = self.buf.as_ref().map_or(0, DmaBuf::len);
        self.bulk_limit().max(self.need_current()).min(cap - self.end)
    }

    fn fill(&mut self, sock: &mut impl Read, ctx: &mut ReactorCtx) -> Fill {
        if !self.make_room(ctx) {
            self.starved = true;
            return Fill::NoChunk;
        }
        let limit = self.read_limit();
        debug_assert!(limit > 0);
        let end = self.end;
        let buf = self.buf.as_mut().expect("make_room gave a chunk");
        match sock.read(&mut buf.tail_mut(end)[..limit]) {
            Ok(0) => Fill::Closed("host closed the connection".into()),
            Ok(n) => {
                self.end += n;
                self.active = true;
                add(&ctx.stats.rx_bytes, n as u64);
                Fill::Got
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.readable = false;
                Fill::WouldBlock
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Fill::Got,
            Err(e) => Fill::Closed(format!("receive failed: {e}")),
        }
    }

    /// True when a starved receive path could get going again: a free chunk, or its
    /// own chunk no longer shared with views.
    pub fn may_unstarve(&self, pool: &quire_drivers::PoolShard) -> bool {
        self.starved && (pool.available() > 0 || self.buf.as_ref().is_some_and(|b| pool.holders(b) == 1))
    }

    /// Gives the chunk back if nothing is staged and nothing arrived for a tick (an
    /// idle connection holds no pool memory). Views keep the chunk's memory until they
    /// go. `needed`: requests of the connection wait for data (R2T sent): the chunk
    /// stays, for those requests may hold every other buffer and only this connection's
    /// receive path can free them.
    pub fn tick(&mut self, ctx: &mut ReactorCtx, needed: bool) {
        let idle = !std::mem::take(&mut self.active);
        if idle && !needed && self.staged_len() == 0 && self.phase == RxPhase::Header {
            self.release(ctx);
        }
    }

    /// Gives the chunk back (teardown).
    pub fn release(&mut self, ctx: &mut ReactorCtx) {
        if let Some(b) = self.buf.take() {
            ctx.pool.put(b);
        }
        self.start = 0;
        self.end = 0;
    }

    /// Checks an H2CData header against its request and starts reading its data.
    pub fn on_h2c_data(
        &mut self,
        h: &DataHeader,
        layout: &Layout,
        reqs: &mut ReqTable,
        max_h2c_data: u32,
    ) -> Result<(), TermError> {
        if usize::from(h.ttag) >= reqs.len() {
            return Err(TermError::field(10));
        }
        let r = reqs.req(h.ttag);
        // A tag that names no transfer in progress is an error in TTAG (byte 10), not
        // in CCCID; only a live tag with another command's ID is a CCCID error (as
        // SPDK reports them; found by tests/bad_input.rs).
        if r.state() != ReqState::AwaitingH2C {
            return Err(TermError::field(10));
        }
        if r.cmd.cid != h.cccid {
            return Err(TermError::field(8));
        }
        if h.datal > max_h2c_data {
            return Err(TermError::limit(16));
        }
        if h.datao != r.h2c_done {
            return Err(TermError::out_of_range(12));
        }
        if u64::from(h.datao) + u64::from(h.datal) > u64::from(r.data_len) {
            return Err(TermError::out_of_range(16));
        }
        self.phase = RxPhase::Data {
            req: h.ttag,
            pad: layout.pad_len,
            off: h.datao,
            remaining: h.datal,
            start: h.datao,
            ddgst: layout.ddgst_len != 0,
        };
        Ok(())
    }
}

impl TcpQpair {
    /// Reads and handles what the socket has, up to a budget of PDUs.
    pub fn receive(&mut self, ctx: &mut ReactorCtx) {
        self.rx.starved = false;
        let mut budget = PDU_BUDGET;
        while budget > 0 && matches!(self.state, ConnState::AwaitingICReq | ConnState::Ready) {
            let progressed = match self.rx.phase {
                RxPhase::Header => self.rx_header(ctx),
                RxPhase::Discard { remaining } => self.rx_discard(remaining, ctx),
                RxPhase::CapsuleData { req, pad, len, ddgst } => self.rx_capsule_data(req, pad, len, ddgst, ctx),
                RxPhase::Data { .. } => self.rx_data(ctx),
                RxPhase::DataDigest { req, start, len } => self.rx_digest(req, start, len, ctx),
            };
            if !progressed {
                return;
            }
            budget -= 1;
        }
    }

    /// Makes sure `n` bytes are staged; false when the socket has no more for now.
    fn staged_at_least(&mut self, n: usize, ctx: &mut ReactorCtx) -> bool {
        while self.rx.staged_len() < n {
            match self.rx.fill(&mut self.sock, ctx) {
                Fill::Got => {}
                Fill::WouldBlock | Fill::NoChunk => return false,
                Fill::Closed(why) => {
                    self.begin_close(why);
                    self.shutdown_socket();
                    return false;
                }
            }
        }
        true
    }

    fn rx_header(&mut self, ctx: &mut ReactorCtx) -> bool {
        if !self.staged_at_least(CH_LEN, ctx) {
            return false;
        }
        let ch = CommonHeader::parse(self.rx.staged());
        let layout = match ch.layout(Role::Controller, self.q.digests) {
            Ok(l) => l,
            Err(e) => {
                let mut h = [0u8; CH_LEN];
                h.copy_from_slice(&self.rx.staged()[..CH_LEN]);
                self.fatal(e, &h);
                return false;
            }
        };
        let total = layout.header_total();
        if !self.staged_at_least(total, ctx) {
            return false;
        }
        let mut hdr = [0u8; MAX_HEADER_LEN];
        hdr[..total].copy_from_slice(&self.rx.staged()[..total]);
        self.rx.consume(total);
        let pdu = match decode(&layout, &hdr[..total]) {
            Ok(p) => p,
            Err(e) => {
                self.fatal(e, &hdr[..total]);
                return false;
            }
        };
        if let Err(e) = self.on_pdu(pdu, &layout, ctx) {
            self.fatal(e, &hdr[..total]);
            return false;
        }
        true
    }

    fn rx_discard(&mut self, remaining: usize, ctx: &mut ReactorCtx) -> bool {
        if remaining == 0 {
            self.rx.phase = RxPhase::Header;
            return true;
        }
        if !self.staged_at_least(1, ctx) {
            return false;
        }
        let n = remaining.min(self.rx.staged_len());
        self.rx.consume(n);
        self.rx.phase = if n == remaining { RxPhase::Header } else { RxPhase::Discard { remaining: remaining - n } };
        true
    }

    /// In-capsule data: waits until it is all in the chunk, then hands it to the
    /// request as a view.
    fn rx_capsule_data(&mut self, req: u16, pad: usize, len: usize, ddgst: bool, ctx: &mut ReactorCtx) -> bool {
        let dlen = if ddgst { DIGEST_LEN } else { 0 };
        if !self.staged_at_least(pad + len + dlen, ctx) {
            return false;
        }
        let at = self.rx.start + pad;
        let buf = self.rx.buf.as_ref().expect("staged bytes live in the chunk");
        let view = ctx.pool.view(buf, at, len);
        let ok = !ddgst || {
            let got = quire_wire::get_u32(buf.bytes(at + len, at + len + DIGEST_LEN), 0);
            quire_wire::tcp::digest::crc32c(view.as_slice()) == got
        };
        self.rx.consume(pad + len + dlen);
        self.rx.phase = RxPhase::Header;
        let r = self.reqs.req_mut(req);
        assert_eq!(r.state(), ReqState::ReceivingCapsuleData);
        assert!(r.bufs.is_empty(), "in-capsule data is the request's only buffer");
        r.bufs.push(view);
        if !ok {
            tracing::warn!(peer = %self.peer, cid = r.cmd.cid, "data digest mismatch");
            r.fail(TRANSIENT_TRANSPORT_ERROR);
        }
        self.in_capsule_received(req, ctx);
        true
    }

    fn rx_data(&mut self, ctx: &mut ReactorCtx) -> bool {
        let RxPhase::Data { req, pad, off, remaining, start, ddgst } = self.rx.phase else { unreachable!() };
        if pad > 0 {
            if !self.staged_at_least(1, ctx) {
                return false;
            }
            let n = pad.min(self.rx.staged_len());
            self.rx.consume(n);
            self.rx.phase = RxPhase::Data { req, pad: pad - n, off, remaining, start, ddgst };
            return true;
        }
        let got = if self.rx.staged_len() > 0 {
            // H2C payload that arrived together with its header: copied, and counted.
            let n = (remaining as usize).min(self.rx.staged_len());
            let buf = self.rx.buf.as_ref().expect("staged bytes live in the chunk");
            self.reqs.req_mut(req).put_data(off as usize, buf.bytes(self.rx.start, self.rx.start + n));
            self.rx.consume(n);
            add(&ctx.stats.rx_copied_bytes, n as u64);
            u32::try_from(n).expect("at most `remaining`")
        } else {
            match self.read_direct(req, off, remaining, ctx) {
                Some(n) => n,
                None => return false,
            }
        };
        let (off, remaining) = (off + got, remaining - got);
        if remaining > 0 {
            self.rx.phase = RxPhase::Data { req, pad: 0, off, remaining, start, ddgst };
            return true;
        }
        if ddgst {
            self.rx.phase = RxPhase::DataDigest { req, start, len: off - start };
        } else {
            self.rx.phase = RxPhase::Header;
            self.h2c_received(req, off - start, true, ctx);
        }
        true
    }

    /// `readv` into the request's buffers and then the chunk; returns the payload bytes
    /// received, or `None` when nothing came.
    fn read_direct(&mut self, req: u16, off: u32, remaining: u32, ctx: &mut ReactorCtx) -> Option<u32> {
        debug_assert_eq!(self.rx.staged_len(), 0);
        // Nothing is staged, so the chunk (if any, and if it has room) takes what comes
        // after the payload; without one the read takes the payload only.
        let tail = if self.rx.make_room(ctx) { self.rx.bulk_limit() } else { 0 };
        let r = self.reqs.req_mut(req);
        let chunk = r.bufs[0].len();
        // No allocation per read: the slices live on the stack (a command spans at most
        // CHUNKS_PER_COMMAND_MAX chunks, one more for the receive chunk).
        let mut iov: [IoSliceMut<'_>; IOV_RX_MAX] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
        let mut n_iov = 0;
        let (mut pos, mut left) = (off as usize, remaining as usize);
        let first = pos / chunk;
        for b in r.bufs[first..].iter_mut() {
            if left == 0 {
                break;
            }
            let o = pos % chunk;
            let n = left.min(chunk - o);
            iov[n_iov] = IoSliceMut::new(&mut b.as_mut_slice()[o..o + n]);
            n_iov += 1;
            pos += n;
            left -= n;
        }
        assert_eq!(left, 0, "the request's buffers hold its data");
        let end = self.rx.end;
        if let (Some(b), true) = (self.rx.buf.as_mut(), tail > 0) {
            iov[n_iov] = IoSliceMut::new(&mut b.tail_mut(end)[..tail]);
            n_iov += 1;
        }
        let res = self.sock.read_vectored(&mut iov[..n_iov]);
        match res {
            Ok(0) => {
                self.begin_close("host closed the connection".into());
                self.shutdown_socket();
                None
            }
            Ok(n) => {
                add(&ctx.stats.rx_bytes, n as u64);
                self.rx.active = true;
                let payload = n.min(remaining as usize);
                self.rx.end += n - payload;
                Some(u32::try_from(payload).expect("at most `remaining`"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.rx.readable = false;
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Some(0),
            Err(e) => {
                self.begin_close(format!("receive failed: {e}"));
                self.shutdown_socket();
                None
            }
        }
    }

    fn rx_digest(&mut self, req: u16, start: u32, len: u32, ctx: &mut ReactorCtx) -> bool {
        if !self.staged_at_least(DIGEST_LEN, ctx) {
            return false;
        }
        let got = quire_wire::get_u32(self.rx.staged(), 0);
        self.rx.consume(DIGEST_LEN);
        let ok = self.reqs.req(req).data_crc(start as usize, len as usize) == got;
        self.rx.phase = RxPhase::Header;
        self.h2c_received(req, len, ok, ctx);
        true
    }

    fn h2c_received(&mut self, req: u16, len: u32, digest_ok: bool, ctx: &mut ReactorCtx) {
        let r = self.reqs.req_mut(req);
        if !digest_ok {
            tracing::warn!(peer = %self.peer, cid = r.cmd.cid, "data digest mismatch");
            r.fail(TRANSIENT_TRANSPORT_ERROR);
        }
        assert_eq!(r.state(), ReqState::AwaitingH2C, "H2C data for a request in state {:?}", r.state());
        r.h2c_done += len;
        if r.h2c_done == r.data_len {
            self.reqs.set_state(req, ReqState::ReadyToExecute);
            self.process(req, ctx);
        }
    }
}
