//! The receive path: PDU headers through a staging buffer, payloads into pool buffers.
//!
//! Headers are small and many, so they are read in bulk into a 16 KiB staging buffer:
//! one `read` brings in dozens of command capsules. Payloads are read with `readv`
//! straight into the request's pool buffers, with the staging buffer as the last slice
//! so that the next PDU headers arrive in the same system call. Only payload bytes that
//! happened to arrive in the staging buffer together with their header are copied; the
//! reactor counts them (`rx_copied_bytes`).
//!
//! The phases ([`RxPhase`]) form the receive state machine; each is a point where the
//! connection may have to wait for more bytes from the socket.

use std::io::{IoSliceMut, Read};

use quire_wire::tcp::{decode, CommonHeader, DataHeader, Layout, Role, TermError, CH_LEN, MAX_HEADER_LEN};

use crate::reactor::stats::add;
use crate::reactor::ReactorCtx;
use crate::target::tcp::qpair::{data_crc, ConnState, TcpQpair, TRANSIENT_TRANSPORT_ERROR};
use crate::target::tcp::req::{ReqState, ReqTable};

/// Size of the header staging buffer.
pub const STAGING_SIZE: usize = 16 << 10;
/// Slices of one direct read: a command's chunks and the staging buffer.
const IOV_RX_MAX: usize = quire_config::validate::CHUNKS_PER_COMMAND_MAX as usize + 1;
/// PDUs handled per call before the reactor moves on to other connections.
const PDU_BUDGET: u32 = 64;

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
    /// In-capsule data is next but its request has no buffers yet: stop reading.
    WaitBuffer {
        /// The request.
        req: u16,
        /// Padding before the data.
        pad: usize,
        /// A data digest follows the data.
        ddgst: bool,
    },
    /// Reading payload into request `req`'s buffers.
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
    /// Reading the data digest of `len` bytes at `start`.
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
    staging: Box<[u8]>,
    start: usize,
    end: usize,
    /// The phase.
    pub phase: RxPhase,
    /// The socket may have bytes (edge-triggered readiness: set by an event, cleared
    /// when a read would block).
    pub readable: bool,
}

enum Fill {
    Got,
    WouldBlock,
    Closed(String),
}

impl Default for Rx {
    fn default() -> Self {
        Rx::new()
    }
}

impl Rx {
    /// An empty receive state expecting a header.
    pub fn new() -> Rx {
        Rx {
            staging: vec![0; STAGING_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            phase: RxPhase::Header,
            readable: true,
        }
    }

    /// Bytes waiting in the staging buffer.
    pub fn staged_len(&self) -> usize {
        self.end - self.start
    }

    /// True when a call to `receive` could make progress.
    pub fn can_progress(&self) -> bool {
        !matches!(self.phase, RxPhase::WaitBuffer { .. }) && (self.readable || self.staged_len() > 0)
    }

    fn staged(&self) -> &[u8] {
        &self.staging[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        assert!(n <= self.staged_len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn fill(&mut self, sock: &mut impl Read, ctx: &ReactorCtx) -> Fill {
        if self.start > 0 && STAGING_SIZE - self.end < MAX_HEADER_LEN {
            self.staging.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match sock.read(&mut self.staging[self.end..]) {
            Ok(0) => Fill::Closed("host closed the connection".into()),
            Ok(n) => {
                self.end += n;
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

    /// Starts reading in-capsule data for `req` now that it has buffers.
    pub fn start_in_capsule(&mut self, req: u16, len: u32) {
        let RxPhase::WaitBuffer { req: waiting, pad, ddgst } = self.phase else {
            unreachable!("in-capsule data without a waiting receive phase")
        };
        assert_eq!(waiting, req);
        self.phase = RxPhase::Data { req, pad, off: 0, remaining: len, start: 0, ddgst };
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
        let mut budget = PDU_BUDGET;
        while budget > 0 && matches!(self.state, ConnState::AwaitingICReq | ConnState::Ready) {
            let progressed = match self.rx.phase {
                RxPhase::Header => self.rx_header(ctx),
                RxPhase::Discard { remaining } => self.rx_discard(remaining, ctx),
                RxPhase::WaitBuffer { .. } => return,
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
    fn staged_at_least(&mut self, n: usize, ctx: &ReactorCtx) -> bool {
        while self.rx.staged_len() < n {
            match self.rx.fill(&mut self.sock, ctx) {
                Fill::Got => {}
                Fill::WouldBlock => return false,
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
            // Payload that arrived together with its header: the one copy on this path.
            let n = (remaining as usize).min(self.rx.staged_len());
            let (s, e) = (self.rx.start, self.rx.start + n);
            self.reqs.req_mut(req).put_data(off as usize, &self.rx.staging[s..e]);
            self.rx.consume(n);
            add(&ctx.stats.rx_copied_bytes, n as u64);
            n as u32
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
            self.data_received(req, off - start, true, ctx);
        }
        true
    }

    /// `readv` into the request's buffers and then the staging buffer; returns the
    /// payload bytes received, or `None` when nothing came.
    fn read_direct(&mut self, req: u16, off: u32, remaining: u32, ctx: &mut ReactorCtx) -> Option<u32> {
        debug_assert_eq!(self.rx.staged_len(), 0);
        self.rx.start = 0;
        self.rx.end = 0;
        let r = self.reqs.req_mut(req);
        let chunk = r.bufs[0].len();
        // No allocation per read: the slices live on the stack (a command spans at most
        // CHUNKS_PER_COMMAND_MAX chunks, one more for the staging buffer).
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
        iov[n_iov] = IoSliceMut::new(&mut self.rx.staging[..]);
        n_iov += 1;
        let res = self.sock.read_vectored(&mut iov[..n_iov]);
        match res {
            Ok(0) => {
                self.begin_close("host closed the connection".into());
                self.shutdown_socket();
                None
            }
            Ok(n) => {
                add(&ctx.stats.rx_bytes, n as u64);
                let payload = n.min(remaining as usize);
                self.rx.end = n - payload;
                Some(payload as u32)
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
        if !self.staged_at_least(4, ctx) {
            return false;
        }
        let got = quire_wire::get_u32(self.rx.staged(), 0);
        self.rx.consume(4);
        let r = self.reqs.req(req);
        let chunk = r.bufs[0].len();
        let first = start as usize / chunk;
        let ok = if (start as usize).is_multiple_of(chunk) {
            data_crc(&r.bufs[first..], len as usize) == got
        } else {
            let v = r.data_vec(start as usize, len as usize);
            quire_wire::tcp::digest::crc32c(&v) == got
        };
        self.rx.phase = RxPhase::Header;
        self.data_received(req, len, ok, ctx);
        true
    }

    fn data_received(&mut self, req: u16, len: u32, digest_ok: bool, ctx: &mut ReactorCtx) {
        let r = self.reqs.req_mut(req);
        if !digest_ok {
            tracing::warn!(peer = %self.peer, cid = r.cmd.cid, "data digest mismatch");
            r.fail(TRANSIENT_TRANSPORT_ERROR);
        }
        match r.state() {
            ReqState::ReceivingCapsuleData => {
                self.reqs.set_state(req, ReqState::ReadyToExecute);
                self.process(req, ctx);
            }
            ReqState::AwaitingH2C => {
                r.h2c_done += len;
                if r.h2c_done == r.data_len {
                    self.reqs.set_state(req, ReqState::ReadyToExecute);
                    self.process(req, ctx);
                }
            }
            s => unreachable!("data received for a request in state {s:?}"),
        }
    }
}
