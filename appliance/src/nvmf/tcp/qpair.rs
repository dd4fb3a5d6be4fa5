//! One NVMe/TCP connection: one queue pair of one controller.
//!
//! The connection's own life is a state machine ([`ConnState`]): it waits for the
//! host's ICReq, serves commands, and on a fatal protocol error sends a termination
//! request and closes — this connection only. Before its memory is released it drains:
//! every request that the device still works on must come home first, because the
//! device may be writing into that request's buffers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quire_wire::nvme::opcode::{self, Direction};
use quire_wire::nvme::{Command, Completion, Status};
use quire_wire::tcp::{
    encode_c2h_data_aligned, encode_capsule_resp, encode_icresp, encode_r2t, encode_term_req, DataHeader, Digests,
    ICReq, ICResp, Layout, Pdu, R2t, Role, TermError,
};

use crate::cast::usize_from;
use crate::nvmf::ctrlr::{NvmfController, AER_MAX};
use crate::nvmf::tcp::req::{ReqState, ReqTable, Xfer};
use crate::nvmf::tcp::rx::{Rx, RxPhase, ADMIN_IN_CAPSULE_MAX};
use crate::nvmf::tcp::tx::{AfterSend, Flushed, Tx, TxEntry};
use crate::nvmf::tcp::zerocopy;
use crate::nvmf::{admin, io};
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef};
use std::os::fd::AsRawFd;

/// Whether new connections send zero-copy.
fn params_zero_copy(ctx: &ReactorCtx) -> bool {
    ctx.registry.params.zero_copy_send
}

/// Held zero-copy requests that make a flush collect completions even without an
/// error-queue event (a safety net; the event normally comes first).
const ZC_REAP_BATCH: usize = 16;

/// How long a closed connection waits for the kernel to finish its zero-copy sends
/// before it gives their buffers up for good (retires them, never reuses them).
const ZC_TEARDOWN_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Time a new connection has to complete ICReq and Connect.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Status: Transient Transport Error (data digest mismatch).
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status { sct: 0, sc: 0x22, dnr: false, more: false };

/// Status: Command Interrupted (retryable: the host tries the command again).
pub const COMMAND_INTERRUPTED: Status = Status { sct: 0, sc: 0x21, dnr: false, more: false };

/// Where the connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnState {
    /// Waiting for the host's ICReq.
    AwaitingICReq,
    /// Initialized: commands flow.
    Ready,
    /// Fatal error or host termination: the termination PDU (if any) is being sent;
    /// nothing more is received.
    Terminating,
    /// The socket is shut; waiting for the device to finish with the remaining
    /// requests' buffers.
    Draining,
    /// Everything came home; the reactor may drop the connection.
    Closed,
}

/// Facts of the queue this connection carries, fixed by ICReq and Connect.
#[derive(Debug)]
pub struct QueueInfo {
    /// Queue ID once connected (0 = admin).
    pub qid: Option<u16>,
    /// Submission queue size (1-based).
    pub sqsize: u16,
    /// The controller once connected.
    pub ctrlr: Option<Arc<NvmfController>>,
    /// An I/O queue's counts for `quire stats hosts` (its controller sums them).
    pub host_io: Option<Arc<crate::nvmf::ctrlr::HostIo>>,
    /// Its volume's limiter (one for the volume's life) and block size, taken by the
    /// first command that asks: no volume lookup per command.
    pub qos: Option<(Arc<crate::volume::qos::Limiter>, u32)>,
    /// Its host's limits on the volume (`volume::qos`), taken by the first command
    /// that waits for them.
    pub qos_host: Option<Arc<crate::volume::qos::Pair>>,
    /// Digests negotiated by ICReq (None before).
    pub digests: Option<Digests>,
    /// Host PDU data alignment from ICReq: C2H data starts at a multiple of
    /// `(hpda + 1) * 4` bytes into its PDU.
    pub hpda: u8,
    /// SQ flow control disabled by the host at Connect (allows C2H SUCCESS).
    pub sqflow_disabled: bool,
    /// Submission queue head reported in completions.
    pub sqhd: u16,
    /// Command IDs of outstanding Asynchronous Event Requests (admin queue).
    pub aers: Vec<u16>,
    /// The reactor serving this connection.
    pub reactor: usize,
    /// Accepted on the discovery port.
    pub discovery_port: bool,
    /// The local address the host reached (for discovery log entries).
    pub local_ip: std::net::IpAddr,
}

/// One connection.
pub struct TcpQpair {
    /// Slot in the reactor's connection table.
    pub index: u32,
    /// The socket.
    pub sock: mio::net::TcpStream,
    /// The host's address.
    pub peer: SocketAddr,
    pub(crate) state: ConnState,
    /// The queue's facts.
    pub q: QueueInfo,
    pub(crate) rx: Rx,
    pub(crate) tx: Tx,
    /// What the last flush sent and freed (kept so that its list is not allocated
    /// anew per flush; empty between flushes).
    flushed: Flushed,
    pub(crate) reqs: ReqTable,
    /// Why the connection closed (for the log).
    pub close_reason: Option<String>,
    /// When teardown started.
    pub closing_since: Option<Instant>,
    /// When the connection was accepted (to bound the time to a Connect).
    pub accepted: Instant,
}

impl TcpQpair {
    /// A new connection in slot `index`, with request slots for the deepest queue the
    /// target allows (plus AERs).
    pub fn new(
        index: u32,
        sock: mio::net::TcpStream,
        peer: SocketAddr,
        discovery_port: bool,
        ctx: &ReactorCtx,
    ) -> TcpQpair {
        let p = &ctx.registry.params;
        let slots = usize::from(p.max_queue_depth) + AER_MAX + 1;
        let bufs_max = (p.max_transfer_size as usize).div_ceil(ctx.pool.chunk_size()).max(1);
        let local_ip = sock.local_addr().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let zerocopy = params_zero_copy(ctx) && zerocopy::enable(sock.as_raw_fd()).is_ok();
        let mut tx = Tx::new(slots * 3 + 4);
        tx.zerocopy = zerocopy;
        TcpQpair {
            index,
            sock,
            peer,
            state: ConnState::AwaitingICReq,
            q: QueueInfo {
                qid: None,
                sqsize: 0,
                ctrlr: None,
                host_io: None,
                qos: None,
                qos_host: None,
                digests: None,
                hpda: 0,
                sqflow_disabled: false,
                sqhd: 0,
                aers: Vec::with_capacity(AER_MAX),
                reactor: ctx.id,
                discovery_port,
                local_ip,
            },
            rx: Rx::new(p.in_capsule_data_size as usize),
            tx,
            flushed: Flushed { freed: Vec::with_capacity(slots), ..Flushed::default() },
            reqs: ReqTable::new(slots, bufs_max),
            close_reason: None,
            closing_since: None,
            accepted: Instant::now(),
        }
    }

    /// The connection's state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Requests not yet free.
    pub fn active_requests(&self) -> u32 {
        self.reqs.active()
    }

    fn rref(&self, req: u16) -> ReqRef {
        ReqRef { conn: self.index, req }
    }

    // ----- PDUs from the host -------------------------------------------------------

    /// Handles one decoded PDU header (the receive path calls this).
    pub(crate) fn on_pdu(&mut self, pdu: Pdu, layout: &Layout, ctx: &mut ReactorCtx) -> Result<(), TermError> {
        match pdu {
            Pdu::ICReq(req) => self.on_icreq(req, ctx.registry.params.max_h2c_data),
            Pdu::TermReq { fes, fei } => {
                self.rx.phase = RxPhase::Discard { remaining: layout.data_len };
                self.begin_close(format!("host terminated the connection (fes {fes:#x}, fei {fei})"));
                Ok(())
            }
            Pdu::CapsuleCmd(cmd) => self.on_capsule(cmd, layout, ctx),
            Pdu::H2CData(h) => self.rx.on_h2c_data(&h, layout, &mut self.reqs, ctx.registry.params.max_h2c_data),
            Pdu::ICResp(_) | Pdu::CapsuleResp(_) | Pdu::C2HData(_) | Pdu::R2T(_) => {
                unreachable!("layout() rejects host-bound PDUs on the controller side")
            }
        }
    }

    fn on_icreq(&mut self, req: ICReq, maxh2cdata: u32) -> Result<(), TermError> {
        assert_eq!(self.state, ConnState::AwaitingICReq);
        self.q.digests = Some(req.digests);
        self.q.hpda = req.hpda;
        let resp = ICResp { pfv: 0, cpda: 0, digests: req.digests, maxh2cdata };
        self.tx.push(TxEntry::header(encode_icresp(&resp), AfterSend::Nothing));
        self.state = ConnState::Ready;
        Ok(())
    }

    fn on_capsule(&mut self, cmd: Command, layout: &Layout, ctx: &mut ReactorCtx) -> Result<(), TermError> {
        let p = &ctx.registry.params;
        let in_capsule = u32::try_from(layout.data_len).map_err(|_| TermError::limit(4))?;
        // Checked before a request slot is taken: a fatal error must not leave a slot
        // in `New`, which teardown cannot free (it asserted "every request must be home
        // before close" and took the reactor down; found by tests/bad_input.rs).
        let limit =
            if self.q.qid.unwrap_or(0) == 0 { ADMIN_IN_CAPSULE_MAX } else { usize_from(p.in_capsule_data_size.into()) };
        if layout.data_len > limit.max(quire_wire::nvme::fabrics::CONNECT_DATA_SIZE) {
            return Err(TermError::limit(4));
        }
        let Some(idx) = self.reqs.get(cmd) else {
            // The host has more commands outstanding than its queue holds.
            return Err(TermError::sequence());
        };
        self.q.sqhd = if self.q.sqsize == 0 { 0 } else { (self.q.sqhd + 1) % self.q.sqsize };
        let sgl = cmd.sgl();
        // A Fabrics command's data direction is in its command type, not its opcode.
        let dir =
            if cmd.opcode == opcode::FABRICS { opcode::direction(cmd.fctype()) } else { opcode::direction(cmd.opcode) };
        if in_capsule > 0 {
            let r = self.reqs.req_mut(idx);
            let bad = if !sgl.is_in_capsule() {
                Some(Status::SGL_DESCRIPTOR_TYPE_INVALID)
            } else if sgl.len != in_capsule || sgl.addr != 0 {
                Some(Status::DATA_SGL_LENGTH_INVALID)
            } else if dir != Direction::HostToController {
                // Data in the capsule of a command that reads or carries none: the
                // data would become a buffer the command writes into.
                Some(Status::INVALID_FIELD)
            } else {
                None
            };
            if let Some(status) = bad {
                // Receive and drop the data; fail the command.
                r.status = status.with_dnr();
                self.rx.phase = RxPhase::Discard { remaining: layout.after_header() };
                self.reqs.set_state(idx, ReqState::ReadyToComplete);
                self.process(idx, ctx);
                return Ok(());
            }
            // The data arrives in the receive chunk and becomes the request's buffer
            // there (rx.rs); no buffer to wait for.
            r.xfer = Xfer::InCapsule;
            r.data_len = in_capsule;
            self.rx.phase = RxPhase::CapsuleData {
                req: idx,
                pad: layout.pad_len,
                len: layout.data_len,
                ddgst: layout.ddgst_len != 0,
            };
            self.reqs.set_state(idx, ReqState::ReceivingCapsuleData);
            return Ok(());
        }
        let r = self.reqs.req_mut(idx);
        let len = if sgl.is_transport() || sgl.is_in_capsule() { sgl.len } else { 0 };
        if len == 0 || dir == Direction::None {
            self.admit(idx, ReqState::ReadyToExecute, ctx);
        } else if !sgl.is_transport() {
            r.status = Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr();
            self.reqs.set_state(idx, ReqState::ReadyToComplete);
        } else if len > p.max_transfer_size {
            r.status = Status::INVALID_FIELD.with_dnr();
            self.reqs.set_state(idx, ReqState::ReadyToComplete);
        } else {
            r.data_len = len;
            r.xfer = match dir {
                Direction::HostToController => Xfer::H2C,
                _ => Xfer::C2H,
            };
            self.admit(idx, ReqState::NeedBuffer, ctx);
        }
        self.process(idx, ctx);
        Ok(())
    }

    // ----- the request state machine ------------------------------------------------

    /// Advances request `idx` until it waits on something outside. Every event that
    /// concerns a request (data received, a buffer, a device completion, a control
    /// answer, room in the device queue) updates its counters and then calls this: the
    /// decisions live here, in one place.
    pub fn process(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        loop {
            let r = self.reqs.req(idx);
            let state = r.state();
            match state {
                ReqState::Free => return,
                ReqState::New => unreachable!("a new request is given a path when its capsule arrives"),
                ReqState::NeedBuffer => self.need_buffer(idx, ctx),
                ReqState::ReceivingCapsuleData
                | ReqState::AwaitingH2C
                | ReqState::AwaitingEvent
                | ReqState::WaitingQos => return,
                ReqState::ReadyToExecute => self.execute(idx, ctx),
                ReqState::Executing => {
                    if r.outstanding() {
                        return;
                    }
                    if r.flush_after && r.status.is_success() && self.state == ConnState::Ready {
                        // The command's zeroes are done; now make them durable (the
                        // write cache is off).
                        let vol = self.q.ctrlr.as_ref().and_then(|c| c.volume);
                        match vol {
                            Some(v) => {
                                let rref = self.rref(idx);
                                crate::volume::io::flush_after(&mut self.reqs, idx, rref, v, ctx);
                            }
                            None => self.reqs.req_mut(idx).flush_after = false,
                        }
                        continue;
                    }
                    let vol = self.q.ctrlr.as_ref().and_then(|c| c.volume);
                    crate::volume::io::release_locks(&mut self.reqs, idx, vol, ctx);
                    if self.state == ConnState::Ready && crate::nvmf::copy::next_phase(&mut self.reqs, idx) {
                        // A Copy's reads are in: now its write.
                        self.reqs.set_state(idx, ReqState::ReadyToExecute);
                        continue;
                    }
                    if self.reqs.req(idx).cmp_swapped {
                        io::compare_done(&mut self.reqs, idx);
                        let r = self.reqs.req_mut(idx);
                        for b in r.cmp_bufs.drain(..) {
                            ctx.pool.put(b);
                        }
                    }
                    self.reqs.set_state(idx, ReqState::ReadyToComplete);
                }
                // Parked with more to submit; `resume` moves it on.
                ReqState::WaitingDevice | ReqState::WaitingOrder => return,
                ReqState::WaitingControl => {
                    if r.allocs_inflight > 0 {
                        return;
                    }
                    // Every allocation answered: go on from the cursor, unless there is
                    // no point any more (failed, or the connection is closing); then
                    // only wait for what is still out.
                    let next = if self.state == ConnState::Ready && r.status.is_success() {
                        ReqState::ReadyToExecute
                    } else {
                        ReqState::Executing
                    };
                    self.reqs.set_state(idx, next);
                }
                ReqState::ReadyToComplete => self.queue_response(idx, ctx),
                ReqState::Transmitting => return,
            }
            if self.reqs.req(idx).state() == state {
                return;
            }
        }
    }

    /// In-capsule data of request `idx` is in (as a view of the receive chunk).
    pub(crate) fn in_capsule_received(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let r = self.reqs.req(idx);
        let io_write = self.q.qid.is_some_and(|q| q != 0) && r.cmd.opcode != opcode::FABRICS;
        let seg = r.bufs[0].seg(0, r.bufs[0].len());
        let align = ctx.dev_memory_align.max(1);
        let in_place =
            !io_write || ((seg.addr as u64) | u64::from(seg.len)).is_multiple_of(align) || self.all_remote(idx, ctx);
        // A Compare's data never reaches a device, but its read needs buffers.
        let next = if in_place && !self.is_compare(idx) { ReqState::ReadyToExecute } else { ReqState::NeedBuffer };
        self.admit(idx, next, ctx);
        self.process(idx, ctx);
    }

    /// Moves request `idx` on to `next`, unless its volume's limits (`volume::qos`)
    /// make it wait first: then it waits in `WaitingQos`, in the reactor's timer list,
    /// holding no pool buffer (in-capsule data stays where it arrived).
    fn admit(&mut self, idx: u16, next: ReqState, ctx: &mut ReactorCtx) {
        match self.qos_due(idx, ctx) {
            None => self.reqs.set_state(idx, next),
            Some((at, volume)) => {
                self.reqs.req_mut(idx).qos_next = next;
                self.reqs.set_state(idx, ReqState::WaitingQos);
                ctx.qos_waiters.push(crate::reactor::QosWaiter { at, rref: self.rref(idx), volume });
            }
        }
    }

    /// When request `idx` may go, if its volume's limits hold it back: reads, writes,
    /// Compares, Copies and Write Zeroes of an I/O queue count (bytes for the data the
    /// host sends or receives: reads, writes and Compares; a Copy, like Write Zeroes,
    /// moves none over the fabric).
    fn qos_due(&mut self, idx: u16, ctx: &ReactorCtx) -> Option<(std::time::Instant, crate::volume::VolumeId)> {
        let cmd = self.reqs.req(idx).cmd;
        let limited = matches!(
            cmd.opcode,
            opcode::NVM_READ | opcode::NVM_WRITE | opcode::NVM_COMPARE | opcode::NVM_COPY | opcode::NVM_WRITE_ZEROES
        );
        if self.q.qid.unwrap_or(0) == 0 || !limited {
            return None;
        }
        let c = self.q.ctrlr.as_ref()?;
        let id = c.volume?;
        if self.q.qos.is_none() {
            let v = ctx.volumes.get(&id)?;
            self.q.qos = Some((v.view.qos.clone(), v.view.info.block_size));
        }
        let (qos, block_size) = self.q.qos.as_ref()?;
        if !qos.active() {
            return None;
        }
        let host = self.q.qos_host.get_or_insert_with(|| qos.host(&c.hostnqn));
        let bytes = match cmd.opcode {
            opcode::NVM_WRITE_ZEROES | opcode::NVM_COPY => 0,
            _ => u64::from(cmd.nlb()) * u64::from(*block_size),
        };
        qos.admit(std::time::Instant::now(), Some(host), bytes).map(|at| (at, id))
    }

    /// Request `idx`'s volume's limits admit it now (or were lifted).
    pub fn resume_qos(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let r = self.reqs.req(idx);
        assert_eq!(r.state(), ReqState::WaitingQos, "request {idx} resumed from the QoS timer list");
        let next = r.qos_next;
        self.reqs.set_state(idx, next);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// True when every block command `idx` addresses lies on pages other peers own: its
    /// data goes to a peer link, which takes it wherever it landed (no device alignment
    /// to meet, no copy to make).
    fn all_remote(&self, idx: u16, ctx: &ReactorCtx) -> bool {
        let cmd = self.reqs.req(idx).cmd;
        let Some(vol) = self.q.ctrlr.as_ref().and_then(|c| c.volume).and_then(|v| ctx.volumes.get(&v)) else {
            return false;
        };
        let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
        let Some(end) = slba.checked_add(nlb).filter(|&e| e <= vol.view.info.num_blocks()) else { return false };
        let bpp = vol.view.info.blocks_per_page();
        (slba / bpp..=(end - 1) / bpp).all(|p| vol.routing.write_route(p) != crate::volume::routing::Route::Local)
    }

    fn need_buffer(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        if self.state != ConnState::Ready {
            // A closing connection takes no more buffers.
            release_buffers(&mut self.reqs, idx, ctx);
            self.reqs.set_state(idx, ReqState::ReadyToComplete);
            return;
        }
        if self.reqs.req(idx).copy.is_some() {
            // A Copy whose range list was read, waiting for buffers for its data.
            if crate::nvmf::copy::take_buffers(&mut self.reqs, idx, ctx) {
                self.reqs.set_state(idx, ReqState::ReadyToExecute);
            } else {
                ctx.buf_waiters.push_back(self.rref(idx));
            }
            return;
        }
        let compare = self.is_compare(idx);
        if self.reqs.req(idx).xfer == Xfer::InCapsule {
            self.copy_in_capsule(idx, compare, ctx);
            return;
        }
        if !take_buffers(&mut self.reqs, idx, compare, ctx) {
            ctx.buf_waiters.push_back(self.rref(idx));
            return;
        }
        let r = self.reqs.req(idx);
        match r.xfer {
            Xfer::H2C => {
                let r2t = R2t { cccid: r.cmd.cid, ttag: idx, r2to: 0, r2tl: r.data_len };
                let d = self.q.digests.unwrap_or_default();
                let h = encode_r2t(&r2t, d);
                self.reqs.req_mut(idx).hdrs[0] = h;
                self.tx.push(TxEntry::req_header(h, idx, 0, AfterSend::Nothing));
                self.reqs.set_state(idx, ReqState::AwaitingH2C);
            }
            Xfer::C2H => self.reqs.set_state(idx, ReqState::ReadyToExecute),
            Xfer::None | Xfer::InCapsule => unreachable!("only transfers by R2T or C2HData take buffers here"),
        }
    }

    /// In-capsule data the device cannot take where it landed (its memory alignment):
    /// copied once into a buffer of its own, and counted. A Compare's data stays where
    /// it landed (it is only compared): it takes the buffers its read will fill.
    fn copy_in_capsule(&mut self, idx: u16, compare: bool, ctx: &mut ReactorCtx) {
        let ready = if compare {
            take_cmp_buffers(&mut self.reqs, idx, ctx)
        } else if let Some(mut b) = ctx.pool.get() {
            let r = self.reqs.req_mut(idx);
            let view = r.bufs.pop().expect("in-capsule data is a view");
            let n = view.len();
            b.as_mut_slice()[..n].copy_from_slice(view.as_slice());
            ctx.pool.put(view);
            r.bufs.push(b);
            add(&ctx.stats.rx_copied_bytes, n as u64);
            true
        } else {
            false
        };
        if ready {
            self.reqs.set_state(idx, ReqState::ReadyToExecute);
        } else if self.reqs.count(ReqState::AwaitingH2C) > 0 {
            // Waiting could deadlock: this connection's R2T writes hold buffers and need
            // its receive path, whose chunk this request's data pins. Drop the data and
            // let the host retry.
            self.reqs.req_mut(idx).fail(COMMAND_INTERRUPTED);
            release_buffers(&mut self.reqs, idx, ctx);
            self.reqs.set_state(idx, ReqState::ReadyToComplete);
        } else {
            ctx.buf_waiters.push_back(self.rref(idx));
        }
    }

    /// True when request `idx` is a Compare on an I/O queue.
    fn is_compare(&self, idx: u16) -> bool {
        let cmd = &self.reqs.req(idx).cmd;
        self.q.qid.is_some_and(|q| q != 0) && cmd.opcode == opcode::NVM_COMPARE
    }

    fn execute(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let cmd = self.reqs.req(idx).cmd;
        if cmd.fuse() != 0 && self.reqs.req(idx).status.is_success() {
            // Fused operations are not supported (Identify Controller's FUSES is 0):
            // executing the two halves of a Compare and Write apart would write
            // whatever the compare found.
            self.reqs.req_mut(idx).fail(Status::INVALID_FIELD.with_dnr());
        }
        if !self.reqs.req(idx).status.is_success() {
            self.reqs.set_state(idx, ReqState::Executing);
            return;
        }
        if cmd.opcode == opcode::FABRICS || self.q.qid == Some(0) || self.q.qid.is_none() {
            let rref = self.rref(idx);
            let next = admin::execute(&mut self.q, &mut self.reqs, idx, rref, ctx);
            if next == admin::Next::CloseAfterResponse {
                self.process(idx, ctx);
                self.begin_close("host disconnected".into());
            }
            return;
        }
        let rref = self.rref(idx);
        io::execute(&self.q, &mut self.reqs, idx, rref, ctx);
    }

    fn queue_response(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let d = self.q.digests.unwrap_or_default();
        let r = self.reqs.req(idx);
        if r.status.is_success() {
            add(&ctx.stats.commands, 1);
        } else if let Some(c) = &self.q.ctrlr {
            c.log_error(self.q.qid.unwrap_or(0), r.cmd.cid, r.status, r.cmd.nsid, r.cmd.slba());
        }
        if self.q.qid.is_some_and(|q| q > 0) && matches!(r.cmd.opcode, opcode::NVM_READ | opcode::NVM_WRITE) {
            let volume = self.q.ctrlr.as_ref().and_then(|c| c.volume).and_then(|v| ctx.volumes.get(&v));
            if let Some(v) = volume {
                let ns = u64::try_from(r.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let h =
                    if r.cmd.opcode == opcode::NVM_READ { &v.counters.read_latency } else { &v.counters.write_latency };
                h.record(ns);
                if let Some(io) = &self.q.host_io {
                    io.record(u64::from(r.cmd.nlb()) * u64::from(v.view.info.block_size), ns);
                }
            }
        }
        if self.state == ConnState::Draining || self.state == ConnState::Closed || self.state == ConnState::Terminating
        {
            release_buffers(&mut self.reqs, idx, ctx);
            self.reqs.set_state_closing(idx, ReqState::Free);
            return;
        }
        let mut cpl = Completion::new(r.cmd.cid, r.status);
        cpl.dw0 = r.dw0;
        cpl.dw1 = r.dw1;
        cpl.sqid = self.q.qid.unwrap_or(0);
        cpl.sqhd = self.q.sqhd;
        if r.xfer == Xfer::C2H && r.status.is_success() && r.c2h_len > 0 {
            let success = self.q.sqflow_disabled;
            let hdr = DataHeader { cccid: r.cmd.cid, ttag: 0, datao: 0, datal: r.c2h_len, last: true, success };
            let ddgst = d.data.then(|| r.data_crc(0, r.c2h_len as usize));
            let after = if success { AfterSend::FreeReq(idx) } else { AfterSend::Nothing };
            // The host's HPDA says where C2H data must start; 0 (what Linux and SPDK
            // ask for) needs no padding.
            let (header, pad) = encode_c2h_data_aligned(&hdr, d, self.q.hpda);
            // Stable copies for a zero-copy send (tx.rs); the queue keeps its own.
            let r = self.reqs.req_mut(idx);
            r.hdrs[0] = header;
            r.ddgst = ddgst.unwrap_or(0).to_le_bytes();
            self.tx.push(TxEntry::with_data(header, pad, idx, r.c2h_len, ddgst, after));
            if success {
                self.reqs.set_state(idx, ReqState::Transmitting);
                return;
            }
        }
        let h = encode_capsule_resp(&cpl, d);
        self.reqs.req_mut(idx).hdrs[1] = h;
        self.tx.push(TxEntry::req_header(h, idx, 1, AfterSend::FreeReq(idx)));
        self.reqs.set_state(idx, ReqState::Transmitting);
    }

    /// A device part of request `idx` completed.
    pub fn on_device_completion(&mut self, idx: u16, result: Result<(), quire_drivers::IoError>, ctx: &mut ReactorCtx) {
        crate::volume::io::on_part_done(&mut self.reqs, idx, result);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// The owner of a page answered a part of request `idx` forwarded to it.
    pub fn on_forward_done(&mut self, idx: u16, result: Result<(), Status>, ctx: &mut ReactorCtx) {
        crate::volume::io::on_forward_done(&mut self.reqs, idx, result);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// A replica write of request `f.rref.req`, ordered here as its page's leader, was
    /// refused because this peer leads the page no more (`Finished::LostLead`). The
    /// request gives back its pieces of the page (the new leader's replica write to
    /// this peer needs them) and its part goes to the new leader, once per part
    /// however many members refused it; the new leader applies it at every member
    /// (the same data: this peer's own copy already has it, or will have it from
    /// the device write in flight, which the request still waits for).
    pub fn on_lost_lead(&mut self, mut f: Box<crate::peer::client::Forward>, ctx: &mut ReactorCtx) {
        let idx = f.rref.req;
        let r = self.reqs.req_mut(idx);
        let table = ctx.volumes.get(&f.volume).map(|v| &v.view.pieces);
        r.locks.retain(|&(page, mask)| {
            if page != f.page {
                return true;
            }
            if let Some(t) = table {
                t.unlock(page, mask);
            }
            false
        });
        if r.releads.contains(&f.lba) {
            // Sent to the new leader already (another member refused it first).
            crate::volume::io::on_forward_done(&mut self.reqs, idx, Ok(()));
            self.process(idx, ctx);
            self.maybe_closed(ctx);
            return;
        }
        r.releads.push(f.lba);
        add(&ctx.stats.releads, 1);
        f.replica = false;
        ctx.route_again(*f);
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

    /// Room in the device queue for request `idx`, parked in `WaitingDevice`.
    pub fn resume_device(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        let r = self.reqs.req(idx);
        assert!(
            matches!(r.state(), ReqState::WaitingDevice | ReqState::WaitingOrder),
            "request {idx} resumed from a waiting list in {:?}",
            r.state()
        );
        if r.state() == ReqState::WaitingOrder && std::time::Instant::now() >= r.started + ctx.hold() {
            // No leader took the page's set (or its pieces stayed taken) within the
            // hold time: a retryable path error, like a peer that cannot be reached.
            self.reqs.req_mut(idx).fail(crate::peer::client::PATH_ERROR);
        }
        let r = self.reqs.req(idx);
        let next = if self.state == ConnState::Ready && r.status.is_success() {
            ReqState::ReadyToExecute
        } else {
            ReqState::Executing
        };
        self.reqs.set_state(idx, next);
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    /// Buffers for request `idx`, parked in `NeedBuffer`; false when it went back to
    /// waiting (not enough yet).
    pub fn resume_buffers(&mut self, idx: u16, ctx: &mut ReactorCtx) {
        assert_eq!(self.reqs.req(idx).state(), ReqState::NeedBuffer, "request {idx} resumed from the buffer list");
        self.process(idx, ctx);
        self.maybe_closed(ctx);
    }

    // ----- sending ------------------------------------------------------------------

    /// Writes queued PDUs; frees requests whose responses went out.
    pub fn flush(&mut self, ctx: &mut ReactorCtx) {
        if matches!(self.state, ConnState::Draining | ConnState::Closed) {
            return;
        }
        // The record of what went out is kept from flush to flush: no allocation per
        // flush for the list of requests it freed.
        let mut out = std::mem::take(&mut self.flushed);
        out.bytes = 0;
        out.close = false;
        debug_assert!(out.freed.is_empty());
        if !self.tx.held.is_empty() && (self.tx.zc_ready || self.tx.held.len() >= ZC_REAP_BATCH) {
            self.tx.reap(self.sock.as_raw_fd(), &self.reqs, &mut out.freed);
        }
        let zc_before = self.tx.zc_sends;
        let res = if self.tx.is_empty() || self.tx.blocked {
            Ok(())
        } else {
            self.tx.flush(&mut self.sock, &mut self.reqs, &mut out)
        };
        add(&ctx.stats.tx_bytes, out.bytes as u64);
        add(&ctx.stats.zero_copy_sends, self.tx.zc_sends - zc_before);
        for idx in out.freed.drain(..) {
            // A request whose bytes went out zero-copy keeps its buffers until the kernel
            // is done with them.
            // A request reaches `freed` once from the send path (never held before) or
            // from `reap` (popped from `held` because its send is complete), so it is
            // never pushed twice.
            if self.reqs.req(idx).zc_id.is_some_and(|id| !self.tx.zc_complete(id)) {
                debug_assert!(!self.tx.held.contains(&idx), "request {idx} held twice");
                self.tx.held.push_back(idx);
                continue;
            }
            release_buffers(&mut self.reqs, idx, ctx);
            self.reqs.set_state(idx, ReqState::Free);
        }
        let close = out.close;
        self.flushed = out;
        if let Err(e) = res {
            self.begin_close(format!("send failed: {e}"));
            self.shutdown_socket();
        } else if close || (self.state == ConnState::Terminating && self.tx.is_empty()) {
            // A closing connection (host termination request, Disconnect) closes as
            // soon as its last queued PDU is out, not at the 2 s fallback in `tick`
            // (found by tests/fuzz_conn.rs: every such case took 2 s).
            self.shutdown_socket();
        }
    }

    /// True when there is something to send and the socket may take it, or zero-copy
    /// completions to collect.
    pub fn wants_flush(&self) -> bool {
        (!self.tx.is_empty() && !self.tx.blocked) || (self.tx.zc_ready && !self.tx.held.is_empty())
    }

    // ----- errors and teardown ------------------------------------------------------

    /// A fatal transport error: send the termination request, then close.
    pub fn fatal(&mut self, err: TermError, header: &[u8]) {
        if self.state != ConnState::AwaitingICReq && self.state != ConnState::Ready {
            return;
        }
        let n = header.len().min(self.tx.term_data.len());
        self.tx.term_data[..n].copy_from_slice(&header[..n]);
        self.tx.push(TxEntry::term(encode_term_req(Role::Controller, err.fes, err.fei, n), n));
        self.begin_close(format!("fatal transport error {:?} at byte {}", err.fes, err.fei));
    }

    /// Stops receiving; the connection closes once its queued PDUs are out (or at once
    /// when the socket is gone) and its requests have come home.
    pub fn begin_close(&mut self, reason: String) {
        if matches!(self.state, ConnState::Terminating | ConnState::Draining | ConnState::Closed) {
            return;
        }
        tracing::info!(peer = %self.peer, qid = ?self.q.qid, "closing connection: {reason}");
        self.close_reason = Some(reason);
        self.state = ConnState::Terminating;
        self.closing_since = Some(Instant::now());
        if self.tx.is_empty() {
            self.shutdown_socket();
        }
    }

    /// Shuts the socket and starts draining. A connection that sent zero-copy cuts the
    /// connection off hard (RST), so that the kernel drops the queued data and lets go
    /// of the pool pages it pinned; the requests holding them are freed as its
    /// completions arrive (`maybe_closed`).
    pub fn shutdown_socket(&mut self) {
        if matches!(self.state, ConnState::Draining | ConnState::Closed) {
            return;
        }
        if !self.tx.held.is_empty() {
            zerocopy::abort(self.sock.as_raw_fd());
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.state = ConnState::Draining;
        if self.closing_since.is_none() {
            self.closing_since = Some(Instant::now());
        }
    }

    /// Frees what can be freed of a draining connection; moves it to Closed when every
    /// request has come home.
    ///
    /// A request is freed here only when nothing outside refers to it: no device part
    /// (the device may still write into its buffers), no control-thread answer on its
    /// way (it would find the slot reused), no place in a reactor wait list, no
    /// zero-copy send the kernel has not finished with. Requests with work out drain:
    /// they complete as their answers arrive, and `queue_response` frees them.
    pub fn maybe_closed(&mut self, ctx: &mut ReactorCtx) {
        if self.state != ConnState::Draining {
            return;
        }
        if !self.tx.held.is_empty() {
            let mut released = Vec::new();
            self.tx.reap(self.sock.as_raw_fd(), &self.reqs, &mut released);
            if !self.tx.held.is_empty() && self.closing_since.is_some_and(|t| t.elapsed() >= ZC_TEARDOWN_MAX) {
                // The kernel never reported these sends complete. Their buffers may
                // still be read by it: they never go back to the pool.
                tracing::error!(
                    peer = %self.peer,
                    requests = self.tx.held.len(),
                    "zero-copy sends not completed {} s after close; their buffers are retired",
                    ZC_TEARDOWN_MAX.as_secs()
                );
                while let Some(idx) = self.tx.held.pop_front() {
                    let r = self.reqs.req_mut(idx);
                    add(&ctx.stats.retired_buffers, r.bufs.len() as u64);
                    r.bufs.drain(..).for_each(std::mem::forget);
                    released.push(idx);
                }
            }
            for idx in released {
                release_buffers(&mut self.reqs, idx, ctx);
                self.reqs.set_state(idx, ReqState::Free);
            }
        }
        for idx in 0..u16::try_from(self.reqs.len()).expect("at most 65535 slots") {
            let r = self.reqs.req(idx);
            let rref = self.rref(idx);
            match r.state() {
                ReqState::Free | ReqState::Executing | ReqState::WaitingControl => {}
                ReqState::Transmitting if self.tx.held.contains(&idx) => {}
                ReqState::NeedBuffer => {
                    ctx.buf_waiters.retain(|w| *w != rref);
                    release_buffers(&mut self.reqs, idx, ctx);
                    self.reqs.set_state_closing(idx, ReqState::Free);
                }
                ReqState::WaitingQos => {
                    ctx.qos_waiters.retain(|w| w.rref != rref);
                    release_buffers(&mut self.reqs, idx, ctx);
                    self.reqs.set_state_closing(idx, ReqState::Free);
                }
                ReqState::WaitingDevice | ReqState::WaitingOrder => {
                    ctx.dev_waiters.retain(|w| *w != rref);
                    ctx.order_waiters.retain(|w| *w != rref);
                    if r.outstanding() {
                        // Earlier parts are still on the device: drain.
                        self.reqs.set_state(idx, ReqState::Executing);
                    } else {
                        let vol = self.q.ctrlr.as_ref().and_then(|c| c.volume);
                        crate::volume::io::release_locks(&mut self.reqs, idx, vol, ctx);
                        release_buffers(&mut self.reqs, idx, ctx);
                        self.reqs.set_state_closing(idx, ReqState::Free);
                    }
                }
                ReqState::ReceivingCapsuleData
                | ReqState::AwaitingH2C
                | ReqState::AwaitingEvent
                | ReqState::ReadyToComplete
                | ReqState::Transmitting => {
                    assert!(!r.outstanding(), "request {idx} in {:?} with work outstanding", r.state());
                    release_buffers(&mut self.reqs, idx, ctx);
                    self.reqs.set_state_closing(idx, ReqState::Free);
                }
                s @ (ReqState::New | ReqState::ReadyToExecute) => {
                    unreachable!("request {idx} left in the passing state {s:?}")
                }
            }
        }
        if self.reqs.active() == 0 {
            self.rx.release(ctx);
            ctx.stats.transitions.add(&self.reqs.take_transitions());
            self.state = ConnState::Closed;
        }
    }

    /// Periodic checks: keep-alive, dead controller, async events, stuck termination.
    pub fn tick(&mut self, ctx: &mut ReactorCtx) {
        ctx.stats.transitions.add(&self.reqs.take_transitions());
        if let Some(io) = &self.q.host_io {
            io.active.store(self.reqs.active(), std::sync::atomic::Ordering::Relaxed);
        }
        if !self.tx.held.is_empty() {
            // Collect zero-copy completions at least once a tick, event or not.
            self.tx.zc_ready = true;
        }
        // A socket that never becomes a queue (no ICReq, or no Connect after it) would
        // hold its slot and memory forever: Linux nvmet and SPDK drop those too.
        if self.q.qid.is_none()
            && matches!(self.state, ConnState::AwaitingICReq | ConnState::Ready)
            && self.accepted.elapsed() >= CONNECT_TIMEOUT
        {
            self.begin_close(format!("no Connect within {} s", CONNECT_TIMEOUT.as_secs()));
        }
        if let Some(c) = self.q.ctrlr.clone() {
            if self.state == ConnState::Ready {
                if c.is_dead() {
                    self.begin_close("controller torn down".into());
                } else if self.q.qid == Some(0) && c.keepalive_expired() {
                    tracing::warn!(cntlid = c.cntlid, host = %c.hostnqn, "keep-alive timeout: tearing the controller down");
                    c.kill();
                    ctx.registry.remove_controller(c.cntlid);
                    self.begin_close("keep-alive timeout".into());
                } else if self.q.qid == Some(0) {
                    self.deliver_events(&c);
                }
            }
        }
        if self.state == ConnState::Ready {
            let needed = self.reqs.count(ReqState::AwaitingH2C) > 0;
            self.rx.tick(ctx, needed);
        }
        if self.state == ConnState::Terminating {
            // A host that does not read its termination PDU does not hold us forever.
            if self.closing_since.is_some_and(|t| t.elapsed().as_secs() >= 2) {
                self.shutdown_socket();
            }
        }
        self.maybe_closed(ctx);
    }

    fn deliver_events(&mut self, c: &NvmfController) {
        while !self.q.aers.is_empty() {
            let Some(ev) = c.take_event() else { return };
            let cid = self.q.aers.remove(0);
            let d = self.q.digests.unwrap_or_default();
            let mut cpl = Completion::new(cid, Status::SUCCESS);
            cpl.dw0 = ev;
            cpl.sqhd = self.q.sqhd;
            // The AER's request slot is found by its command ID.
            let idx = (0..u16::try_from(self.reqs.len()).expect("a queue holds ≤ 1024 requests"))
                .find(|&i| {
                    self.reqs.req(i).state() == ReqState::AwaitingEvent
                        && self.reqs.req(i).cmd.cid == cid
                        && self.reqs.req(i).cmd.opcode == opcode::ADMIN_ASYNC_EVENT_REQUEST
                })
                .expect("an outstanding AER has a slot");
            self.reqs.set_state(idx, ReqState::Transmitting);
            let h = encode_capsule_resp(&cpl, d);
            self.reqs.req_mut(idx).hdrs[1] = h;
            self.tx.push(TxEntry::req_header(h, idx, 1, AfterSend::FreeReq(idx)));
        }
    }

    /// Ends the association when the admin queue goes away.
    pub fn on_closed(&mut self, ctx: &ReactorCtx) {
        if let Some(io) = &self.q.host_io {
            io.active.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        if let (Some(0), Some(c)) = (self.q.qid, &self.q.ctrlr) {
            c.kill();
            ctx.registry.remove_controller(c.cntlid);
        }
        if let (Some(q), Some(c)) = (self.q.qid, &self.q.ctrlr) {
            if q != 0 {
                c.state().connected_qids.remove(&q);
            }
        }
    }
}

/// Takes enough pool buffers for request `idx`'s data, and for a Compare as many
/// again for its read (`Req::cmp_bufs`); all or nothing.
fn take_buffers(reqs: &mut ReqTable, idx: u16, compare: bool, ctx: &mut ReactorCtx) -> bool {
    let r = reqs.req_mut(idx);
    let chunk = ctx.pool.chunk_size();
    let need = (r.data_len as usize).div_ceil(chunk).max(1);
    if ctx.pool.available() < need * (1 + usize::from(compare)) {
        return false;
    }
    for _ in 0..need {
        r.bufs.push(ctx.pool.get().expect("counted above"));
        if compare {
            r.cmp_bufs.push(ctx.pool.get().expect("counted above"));
        }
    }
    true
}

/// Takes the buffers a Compare's read fills (`Req::cmp_bufs`), its data being in
/// the capsule; all or nothing.
fn take_cmp_buffers(reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> bool {
    let r = reqs.req_mut(idx);
    let need = (r.data_len as usize).div_ceil(ctx.pool.chunk_size()).max(1);
    if ctx.pool.available() < need {
        return false;
    }
    for _ in 0..need {
        r.cmp_bufs.push(ctx.pool.get().expect("counted above"));
    }
    true
}

/// Gives request `idx`'s buffers back to the pool.
pub fn release_buffers(reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) {
    let r = reqs.req_mut(idx);
    for b in r.bufs.drain(..).chain(r.cmp_bufs.drain(..)) {
        ctx.pool.put(b);
    }
}
