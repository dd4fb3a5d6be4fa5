//! The lifetime of one command on an NVMe/TCP queue pair, as an explicit state machine.
//!
//! ```text
//! Free ─► New ─► NeedBuffer ─┬─► ReceivingCapsuleData ─┐      (write, data in the capsule)
//!                     ├─► AwaitingH2C ──────────┤      (write, R2T sent, H2CData flows)
//!                     └─────────────────────────┴─► ReadyToExecute ─► Executing ─► ReadyToComplete ─► Transmitting ─► Free
//!                                                        ▲    │  ▲ WaitingDevice (device queue full)
//!                                                        │    └─► WaitingControl (page allocation / free at the control thread)
//!                                                        └────────┘
//! ```
//! Transitions go through [`ReqTable::set_state`], which keeps a count of requests in
//! each state, so that teardown can check that every request came home (SPDK's
//! `nvmf_tcp_req_set_state`).

use quire_drivers::DmaBuf;
use quire_wire::nvme::{Command, Status};

/// Where a request is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReqState {
    /// Unused slot.
    Free,
    /// Just parsed from a capsule; its data path is being decided.
    New,
    /// Parsed; waits for pool buffers for its data (kicked when buffers return).
    NeedBuffer,
    /// The receive path is reading in-capsule data into the buffers.
    ReceivingCapsuleData,
    /// R2T sent; the receive path reads H2CData PDUs into the buffers.
    AwaitingH2C,
    /// Has everything it needs; execute on the next pass.
    ReadyToExecute,
    /// Device parts or control-thread answers outstanding (kicked by completions).
    Executing,
    /// The device queue was full; sits in the reactor's retry list.
    WaitingDevice,
    /// Waits for page allocations at the control thread (kicked by `AllocDone`).
    WaitingControl,
    /// An Asynchronous Event Request, held until the controller has an event.
    AwaitingEvent,
    /// Done; queue the response PDUs on the next pass.
    ReadyToComplete,
    /// Response PDUs queued; the slot is freed when the socket has taken them.
    Transmitting,
}

/// Number of states (for the per-state counts).
pub const REQ_STATES: usize = 12;

impl ReqState {
    fn index(self) -> usize {
        match self {
            ReqState::Free => 0,
            ReqState::New => 1,
            ReqState::NeedBuffer => 2,
            ReqState::ReceivingCapsuleData => 3,
            ReqState::AwaitingH2C => 4,
            ReqState::ReadyToExecute => 5,
            ReqState::Executing => 6,
            ReqState::WaitingDevice => 7,
            ReqState::WaitingControl => 8,
            ReqState::AwaitingEvent => 9,
            ReqState::ReadyToComplete => 10,
            ReqState::Transmitting => 11,
        }
    }
}

/// Which way a command's data flows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Xfer {
    /// No data.
    None,
    /// Host to controller (write), in the capsule.
    InCapsule,
    /// Host to controller (write), by R2T/H2CData.
    H2C,
    /// Controller to host (read), by C2HData.
    C2H,
}

/// One command slot.
#[derive(Debug)]
pub struct Req {
    /// State (change it only through [`ReqTable::set_state`]).
    state: ReqState,
    /// The command.
    pub cmd: Command,
    /// Data direction.
    pub xfer: Xfer,
    /// Data length of the transfer in bytes (from the SGL).
    pub data_len: u32,
    /// H2C bytes received so far.
    pub h2c_done: u32,
    /// Bytes of data to send back with C2HData (admin reads may return less than
    /// `data_len`).
    pub c2h_len: u32,
    /// Buffers holding the data, in order; each is the pool's chunk size.
    pub bufs: Vec<DmaBuf>,
    /// Completion status.
    pub status: Status,
    /// Completion dword 0.
    pub dw0: u32,
    /// Completion dword 1.
    pub dw1: u32,
    /// Device parts plus control-thread answers still outstanding.
    pub pending: u32,
    /// Blocks of the command already handed to the device (resumption point after a
    /// full device queue).
    pub cursor: u64,
    /// Copies of this request's PDU headers (0: R2T or C2HData, 1: CapsuleResp) that
    /// stay put until the request is freed, so that a zero-copy send may point at them.
    pub hdrs: [quire_wire::tcp::HeaderBuf; 2],
    /// Data digest of the C2HData PDU, likewise stable.
    pub ddgst: [u8; 4],
    /// The last zero-copy send that carried bytes of this request: its buffers and
    /// headers stay untouched until the kernel reports that send complete.
    pub zc_id: Option<u32>,
    /// Allocations requested in the current pass.
    pub alloc_waits: u32,
    /// The command was counted in the volume's statistics. A command executes again
    /// after waiting for page allocations or room in the device queue, with nothing
    /// submitted yet; this flag keeps it from being counted twice.
    pub counted: bool,
}

impl Req {
    fn new(bufs_max: usize) -> Req {
        Req {
            state: ReqState::Free,
            cmd: Command::default(),
            xfer: Xfer::None,
            data_len: 0,
            h2c_done: 0,
            c2h_len: 0,
            bufs: Vec::with_capacity(bufs_max),
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            pending: 0,
            cursor: 0,
            hdrs: [quire_wire::tcp::HeaderBuf::default(); 2],
            ddgst: [0; 4],
            zc_id: None,
            alloc_waits: 0,
            counted: false,
        }
    }

    /// The state.
    pub fn state(&self) -> ReqState {
        self.state
    }

    /// Sets the completion status unless an earlier error already set one.
    pub fn fail(&mut self, status: Status) {
        if self.status.is_success() {
            self.status = status;
        }
    }

    /// Fills `len` bytes at data offset `off` with zeroes.
    pub fn zero_data(&mut self, off: u64, len: u64) {
        let chunk = self.bufs.first().map(|b| b.len() as u64).unwrap_or(1);
        let (mut off, mut len) = (off, len);
        while len > 0 {
            let i = (off / chunk) as usize;
            let o = (off % chunk) as usize;
            let n = len.min(chunk - o as u64) as usize;
            self.bufs[i].as_mut_slice()[o..o + n].fill(0);
            off += n as u64;
            len -= n as u64;
        }
    }

    /// Copies `src` into the data at offset `off` (admin replies only: small, built by
    /// the target itself).
    pub fn put_data(&mut self, off: usize, src: &[u8]) {
        let chunk = self.bufs[0].len();
        let mut done = 0;
        while done < src.len() {
            let pos = off + done;
            let (i, o) = (pos / chunk, pos % chunk);
            let n = (src.len() - done).min(chunk - o);
            self.bufs[i].as_mut_slice()[o..o + n].copy_from_slice(&src[done..done + n]);
            done += n;
        }
    }

    /// Reads `len` bytes of data at `off` into a new vector (admin commands only:
    /// Connect data, DSM ranges, host identifiers).
    pub fn data_vec(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let chunk = self.bufs.first().map(|b| b.len()).unwrap_or(1);
        let mut done = 0;
        while done < len {
            let pos = off + done;
            let (i, o) = (pos / chunk, pos % chunk);
            let n = (len - done).min(chunk - o);
            v[done..done + n].copy_from_slice(&self.bufs[i].as_slice()[o..o + n]);
            done += n;
        }
        v
    }

    /// Appends to `req` the device segments covering `len` bytes of data at `off`.
    pub fn segs_into(&self, off: u64, len: u64, req: &mut quire_drivers::IoRequest) {
        let chunk = self.bufs[0].len() as u64;
        let (mut off, mut len) = (off, len);
        while len > 0 {
            let i = (off / chunk) as usize;
            let o = off % chunk;
            let n = len.min(chunk - o);
            assert!(req.nsegs < quire_drivers::block::SEGS_MAX, "a part spans at most SEGS_MAX chunks");
            req.segs[req.nsegs] = self.bufs[i].seg(o as usize, n as usize);
            req.nsegs += 1;
            off += n;
            len -= n;
        }
    }
}

/// The request slots of one queue pair, with per-state counts.
#[derive(Debug)]
pub struct ReqTable {
    reqs: Vec<Req>,
    free: Vec<u16>,
    counts: [u32; REQ_STATES],
}

impl ReqTable {
    /// `n` free slots, each able to hold `bufs_max` buffers.
    pub fn new(n: usize, bufs_max: usize) -> ReqTable {
        assert!(n > 0 && n <= usize::from(u16::MAX));
        let mut counts = [0; REQ_STATES];
        counts[ReqState::Free.index()] = n as u32;
        ReqTable { reqs: (0..n).map(|_| Req::new(bufs_max)).collect(), free: (0..n as u16).rev().collect(), counts }
    }

    /// Takes a free slot for `cmd`, or `None` when the host has more commands
    /// outstanding than its queue allows.
    pub fn get(&mut self, cmd: Command) -> Option<u16> {
        let idx = self.free.pop()?;
        let r = &mut self.reqs[usize::from(idx)];
        assert_eq!(r.state, ReqState::Free);
        assert!(r.bufs.is_empty());
        r.cmd = cmd;
        r.xfer = Xfer::None;
        r.data_len = 0;
        r.h2c_done = 0;
        r.c2h_len = 0;
        r.status = Status::SUCCESS;
        r.dw0 = 0;
        r.dw1 = 0;
        r.pending = 0;
        r.cursor = 0;
        r.zc_id = None;
        r.alloc_waits = 0;
        r.counted = false;
        r.state = ReqState::New;
        self.counts[ReqState::Free.index()] -= 1;
        self.counts[ReqState::New.index()] += 1;
        Some(idx)
    }

    /// Moves request `idx` to `state`.
    pub fn set_state(&mut self, idx: u16, state: ReqState) {
        let r = &mut self.reqs[usize::from(idx)];
        assert_ne!(r.state, ReqState::Free, "request {idx} is free");
        self.counts[r.state.index()] -= 1;
        self.counts[state.index()] += 1;
        r.state = state;
        if state == ReqState::Free {
            assert!(r.bufs.is_empty(), "buffers must go back to the pool before the slot is freed");
            self.free.push(idx);
        }
    }

    /// Number of requests in `state`.
    pub fn count(&self, state: ReqState) -> u32 {
        self.counts[state.index()]
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.reqs.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Requests not free.
    pub fn active(&self) -> u32 {
        self.reqs.len() as u32 - self.count(ReqState::Free)
    }

    /// The request in slot `idx`.
    pub fn req(&self, idx: u16) -> &Req {
        &self.reqs[usize::from(idx)]
    }

    /// The request in slot `idx`, writable.
    pub fn req_mut(&mut self, idx: u16) -> &mut Req {
        &mut self.reqs[usize::from(idx)]
    }

    /// Indices of requests in `state`.
    pub fn in_state(&self, state: ReqState) -> impl Iterator<Item = u16> + '_ {
        self.reqs.iter().enumerate().filter(move |(_, r)| r.state == state).map(|(i, _)| i as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_transitions_and_slots_recycle() {
        let mut t = ReqTable::new(2, 1);
        let a = t.get(Command::default()).unwrap();
        let b = t.get(Command::default()).unwrap();
        assert_eq!(t.get(Command::default()), None);
        t.set_state(a, ReqState::ReadyToExecute);
        t.set_state(b, ReqState::NeedBuffer);
        assert_eq!(t.count(ReqState::Free), 0);
        assert_eq!(t.count(ReqState::ReadyToExecute), 1);
        t.set_state(a, ReqState::Free);
        assert_eq!(t.active(), 1);
        assert_eq!(t.get(Command::default()), Some(a));
    }
}
