//! The lifetime of one command on an NVMe/TCP queue pair, as an explicit state machine.
//!
//! ```text
//! Free ─► New ─┬─► NeedBuffer ─┬─► AwaitingH2C (write: R2T sent, H2CData flows) ──┐
//!              │               └──────────────────────────── (read) ──────────────┤
//!              ├─► ReceivingCapsuleData (write: data in the capsule) ─────────────┤
//!              └───────────────────────────────────── (no data) ──────────────────┤
//!                                                                                 ▼
//!        ┌────────────────────────────────────────────────────────────► ReadyToExecute
//!        │                                                            │   │   │   │
//!        │                            (admin AER) AwaitingEvent ◄─────┘   │   │   │
//!        ├──── WaitingDevice  ◄── device queue full ──────────────────────┘   │   │
//!        ├──── WaitingControl ◄── page allocations asked for ─────────────────┘   │
//!        └──── WaitingOrder   ◄── pieces of a replicated page taken, or ──────────┤
//!                                 nobody may order its writes yet (`replica`)      ▼
//!                     Executing (everything submitted; waits for what is out) ──► ReadyToComplete ─► Transmitting ─► Free
//! ```
//!
//! Arrows the picture leaves out: `Executing ─► WaitingDevice`, when the flush that
//! ends a Write Zeroes or Deallocate on a controller with its write cache off finds
//! the device queue full (`flush_after`); and a Copy's two (`nvmf::copy`):
//! `ReadyToExecute ─► NeedBuffer` once its range list is read, to wait for buffers for
//! its data, and `Executing ─► ReadyToExecute` from its reads to its write.
//!
//! What a request waits on outside its connection is counted apart, so that each
//! answer knows what it completes: `dev_inflight` device parts, `fwd_inflight` parts
//! forwarded to the peers that own their pages, `frees_inflight`
//! whole-page frees at the control thread (they are parts of the command too), and
//! `allocs_inflight` page allocations (execution resumes when they are all answered).
//! A write to a replicated page holds the pieces it covers (`locks`, see
//! `replica::locks`) from before it reaches a device until nothing is outstanding:
//! they are given back before it completes or is freed, which the table checks.
//! A request in `WaitingDevice` or `WaitingControl` may have device parts and frees
//! outstanding from before it parked; it goes on from its cursor when it resumes, and
//! only `Executing` turns into `ReadyToComplete`, once nothing is outstanding.
//!
//! Transitions go through [`ReqTable::set_state`], which checks that the transition is
//! one of the arrows above, that a request leaves for `Free` with no buffer and
//! nothing outstanding, and keeps a count of requests in each state (SPDK's
//! `nvmf_tcp_req_set_state`). A closing connection may free a request from most
//! states, but never one that anything outside still refers to (see
//! [`Req::outstanding`]).

use quire_drivers::DmaBuf;
use quire_wire::nvme::{Command, Status};

use crate::cast::usize_from;

/// Where a request is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
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
    /// Has everything it needs; execute (or go on from the cursor) now.
    ReadyToExecute,
    /// Everything the command needs has been submitted (or it failed): waits for the
    /// device parts and frees still out.
    Executing,
    /// The device queue was full: sits in the reactor's retry list, with more to
    /// submit (and maybe parts still out).
    WaitingDevice,
    /// Waits for page allocations at the control thread (kicked by `AllocDone`), with
    /// more to submit (and maybe parts still out).
    WaitingControl,
    /// Waits for the right to order a replicated write: pieces another write holds,
    /// or a set whose leader may not order writes yet. Sits in the reactor's list of
    /// such requests, tried again on every pass (maybe with parts still out).
    WaitingOrder,
    /// An Asynchronous Event Request, held until the controller has an event.
    AwaitingEvent,
    /// Done; queue the response PDUs on the next pass.
    ReadyToComplete,
    /// Response PDUs queued; the slot is freed when the socket has taken them.
    Transmitting,
    /// Over its volume's limits (`volume::qos`): sits in the reactor's timer list
    /// until its time, holding no pool buffer (only in-capsule data), then goes on to
    /// `Req::qos_next`.
    WaitingQos,
}

impl ReqState {
    /// Every state, in discriminant order.
    pub const ALL: [ReqState; 14] = [
        ReqState::Free,
        ReqState::New,
        ReqState::NeedBuffer,
        ReqState::ReceivingCapsuleData,
        ReqState::AwaitingH2C,
        ReqState::ReadyToExecute,
        ReqState::Executing,
        ReqState::WaitingDevice,
        ReqState::WaitingControl,
        ReqState::WaitingOrder,
        ReqState::AwaitingEvent,
        ReqState::ReadyToComplete,
        ReqState::Transmitting,
        ReqState::WaitingQos,
    ];

    fn index(self) -> usize {
        usize::from(self as u8)
    }

    /// Whether a request may move from `self` to `to`. `closing` allows what a closing
    /// connection does with requests it will not serve: free them where nothing
    /// outside refers to them, or let them drain.
    pub fn may_become(self, to: ReqState, closing: bool) -> bool {
        use ReqState::*;
        let normal = match (self, to) {
            (Free, _) => false,
            (New, NeedBuffer | ReceivingCapsuleData | ReadyToExecute | ReadyToComplete | WaitingQos) => true,
            // Admitted by its volume's limits: on to what it would have done at once.
            (WaitingQos, NeedBuffer | ReadyToExecute) => true,
            (NeedBuffer, AwaitingH2C | ReadyToExecute | ReadyToComplete) => true,
            (ReceivingCapsuleData | AwaitingH2C, ReadyToExecute) => true,
            // In-capsule data the device cannot take in place waits for a buffer to be
            // copied into, or is dropped for the host to retry.
            (ReceivingCapsuleData, NeedBuffer | ReadyToComplete | WaitingQos) => true,
            (
                ReadyToExecute,
                Executing | WaitingDevice | WaitingControl | WaitingOrder | AwaitingEvent | ReadyToComplete,
            ) => true,
            // A Copy, its range list read, waits for buffers for the data it moves.
            (ReadyToExecute, NeedBuffer) => true,
            // A Copy's reads are in: on to its write (`nvmf::copy`).
            (Executing, ReadyToExecute) => true,
            (WaitingDevice | WaitingControl | WaitingOrder, ReadyToExecute | Executing) => true,
            (Executing, ReadyToComplete) => true,
            // The flush that follows a command's zeroes (write cache off) found the
            // device queue full.
            (Executing, WaitingDevice) => true,
            (AwaitingEvent | ReadyToComplete, Transmitting) => true,
            (Transmitting, Free) => true,
            _ => false,
        };
        normal
            || closing
                && matches!(
                    (self, to),
                    (
                        NeedBuffer
                            | ReceivingCapsuleData
                            | AwaitingH2C
                            | WaitingDevice
                            | WaitingOrder
                            | AwaitingEvent
                            | ReadyToComplete
                            | WaitingQos,
                        Free
                    ) | (AwaitingH2C, ReadyToComplete)
                )
    }
}

/// Number of states (for the per-state counts), tied to the enum: the last state's
/// discriminant plus one, and `ALL` lists them in order.
pub const REQ_STATES: usize = ReqState::WaitingQos as usize + 1;

const _: () = {
    assert!(ReqState::ALL.len() == REQ_STATES);
    let mut i = 0;
    while i < REQ_STATES {
        assert!(ReqState::ALL[i] as usize == i);
        i += 1;
    }
};

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
    /// A Compare's other buffers. Until it executes they are the empty buffers its
    /// read will fill, and `bufs` holds the host's data; from then on (`cmp_swapped`)
    /// the two are swapped: the read goes into `bufs` through the paths every read
    /// takes, and this holds the host's data to compare with.
    pub cmp_bufs: Vec<DmaBuf>,
    /// `bufs` and `cmp_bufs` of a Compare were swapped (see `cmp_bufs`).
    pub cmp_swapped: bool,
    /// A Copy's parsed ranges and phase (`nvmf::copy`), once its range list was read.
    pub copy: Option<Box<crate::nvmf::copy::CopyPlan>>,
    /// Completion status.
    pub status: Status,
    /// Completion dword 0.
    pub dw0: u32,
    /// Completion dword 1.
    pub dw1: u32,
    /// Device parts submitted and not yet completed.
    pub dev_inflight: u32,
    /// Parts forwarded to the peers that own their pages and not yet answered (their
    /// segments of this request's buffers are on a peer link).
    pub fwd_inflight: u32,
    /// Whole-page frees asked of the control thread and not yet answered.
    pub frees_inflight: u32,
    /// Page allocations asked of the control thread and not yet answered.
    pub allocs_inflight: u32,
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
    /// A part forwarded here by a peer lies on a page this peer's routing table no
    /// longer gives it (the table changed after the link checked): nothing more is
    /// executed and the peer is told to route it again.
    pub misrouted: bool,
    /// With the volatile write cache off, Write Zeroes and Deallocate that reached the
    /// device (without FUA) are followed by a flush before they complete.
    pub flush_after: bool,
    /// The command was counted in the volume's statistics. A command executes again
    /// after waiting for page allocations or room in the device queue, with nothing
    /// submitted yet; this flag keeps it from being counted twice.
    pub counted: bool,
    /// Where a request in `WaitingQos` goes once its volume's limits admit it.
    pub qos_next: ReqState,
    /// When the command's capsule arrived (the start of its latency).
    pub started: std::time::Instant,
    /// Pieces of replicated pages this request holds: (page, pieces), all of one
    /// volume (`replica::locks`); given back before it completes.
    pub locks: Vec<(u64, u64)>,
    /// First blocks of the parts this request ordered as its page's leader and sent,
    /// once this peer stopped leading the page, to the new leader instead (one send
    /// per part, however many members refused it; empty, and never allocated, but for
    /// a request that straddled a move's cut-over).
    pub releads: Vec<u64>,
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
            cmp_bufs: Vec::with_capacity(bufs_max),
            cmp_swapped: false,
            copy: None,
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            dev_inflight: 0,
            fwd_inflight: 0,
            frees_inflight: 0,
            allocs_inflight: 0,
            cursor: 0,
            hdrs: [quire_wire::tcp::HeaderBuf::default(); 2],
            ddgst: [0; 4],
            zc_id: None,
            misrouted: false,
            flush_after: false,
            counted: false,
            qos_next: ReqState::New,
            started: std::time::Instant::now(),
            locks: Vec::with_capacity(2),
            releads: Vec::new(),
        }
    }

    /// The pieces of `page` this request holds.
    pub fn held(&self, page: u64) -> u64 {
        self.locks.iter().filter(|l| l.0 == page).fold(0, |a, l| a | l.1)
    }

    /// True while anything outside the connection (the device, the control thread)
    /// still works for this request, or will answer it: it must not be freed, and its
    /// buffers must stay where the device may write them.
    pub fn outstanding(&self) -> bool {
        self.dev_inflight + self.fwd_inflight + self.frees_inflight + self.allocs_inflight > 0
    }

    /// The state.
    pub fn state(&self) -> ReqState {
        self.state
    }

    /// The control thread answered one of the page allocations this request (slot
    /// `idx`) waited for.
    pub fn alloc_answered(&mut self, idx: u16, result: Result<(), Status>) {
        assert!(self.allocs_inflight > 0, "request {idx}: allocation answer it did not wait for: {self:?}");
        self.allocs_inflight -= 1;
        if let Err(s) = result {
            self.fail(s);
        }
    }

    /// The control thread answered one of this request's whole-page frees.
    pub fn free_answered(&mut self, idx: u16, result: Result<(), Status>) {
        assert!(self.frees_inflight > 0, "request {idx}: free answer it did not wait for: {self:?}");
        self.frees_inflight -= 1;
        if let Err(s) = result {
            self.fail(s);
        }
    }

    /// Sets the completion status unless an earlier error already set one.
    pub fn fail(&mut self, status: Status) {
        if self.status.is_success() {
            self.status = status;
        }
    }

    /// A Compare's verdict, once its read is in `bufs`: true when the `len` bytes read
    /// equal the host's data in `cmp_bufs`.
    pub fn compare_matches(&self, len: usize) -> bool {
        assert!(self.cmp_swapped, "a Compare's read is in `bufs` only once swapped");
        // Both are runs of buffers, not always of one size (the host's data may be one
        // in-capsule view): compare the overlapping stretches.
        let (mut a, mut b) = (self.bufs.iter().map(DmaBuf::as_slice), self.cmp_bufs.iter().map(DmaBuf::as_slice));
        let (mut sa, mut sb): (&[u8], &[u8]) = (&[], &[]);
        let mut left = len;
        while left > 0 {
            if sa.is_empty() {
                sa = a.next().expect("the read fills `len` bytes");
            }
            if sb.is_empty() {
                sb = b.next().expect("the host sent `len` bytes");
            }
            let n = left.min(sa.len()).min(sb.len());
            if sa[..n] != sb[..n] {
                return false;
            }
            (sa, sb, left) = (&sa[n..], &sb[n..], left - n);
        }
        true
    }

    /// Fills `len` bytes at data offset `off` with zeroes.
    pub fn zero_data(&mut self, off: u64, len: u64) {
        let chunk = self.bufs.first().map(|b| b.len() as u64).unwrap_or(1);
        let (mut off, mut len) = (off, len);
        while len > 0 {
            let i = usize_from(off / chunk);
            let o = usize_from(off % chunk);
            let n = usize_from(len.min(chunk - o as u64));
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

    /// CRC32C of `len` bytes of data at `off` (data digests), read in place.
    pub fn data_crc(&self, off: usize, len: usize) -> u32 {
        let chunk = self.bufs.first().map(|b| b.len()).unwrap_or(1);
        let (mut crc, mut done) = (0u32, 0);
        while done < len {
            let pos = off + done;
            let (i, o) = (pos / chunk, pos % chunk);
            let n = (len - done).min(chunk - o);
            crc = quire_wire::tcp::digest::crc32c_append(crc, &self.bufs[i].as_slice()[o..o + n]);
            done += n;
        }
        crc
    }

    /// Appends to `req` the device segments covering `len` bytes of data at `off`.
    pub fn segs_into(&self, off: u64, len: u64, req: &mut quire_drivers::IoRequest) {
        let chunk = self.bufs[0].len() as u64;
        let (mut off, mut len) = (off, len);
        while len > 0 {
            let i = usize_from(off / chunk);
            let o = off % chunk;
            let n = len.min(chunk - o);
            assert!(req.nsegs < quire_drivers::block::SEGS_MAX, "a part spans at most SEGS_MAX chunks");
            req.segs[req.nsegs] = self.bufs[i].seg(usize_from(o), usize_from(n));
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
    /// Transitions made since the last [`ReqTable::take_transitions`], by from × to
    /// (statistics: tests check that their workloads reach every arrow).
    transitions: [[u32; REQ_STATES]; REQ_STATES],
}

impl ReqTable {
    /// `n` free slots, each able to hold `bufs_max` buffers.
    pub fn new(n: usize, bufs_max: usize) -> ReqTable {
        assert!(n > 0 && n <= usize::from(u16::MAX));
        let mut counts = [0; REQ_STATES];
        let slots = u16::try_from(n).expect("checked above");
        counts[ReqState::Free.index()] = u32::from(slots);
        ReqTable {
            reqs: (0..n).map(|_| Req::new(bufs_max)).collect(),
            free: (0..slots).rev().collect(),
            counts,
            transitions: [[0; REQ_STATES]; REQ_STATES],
        }
    }

    /// Takes a free slot for `cmd`, or `None` when the host has more commands
    /// outstanding than its queue allows.
    pub fn get(&mut self, cmd: Command) -> Option<u16> {
        let idx = self.free.pop()?;
        let r = &mut self.reqs[usize::from(idx)];
        assert_eq!(r.state, ReqState::Free);
        assert!(r.bufs.is_empty() && r.cmp_bufs.is_empty());
        r.cmd = cmd;
        r.cmp_swapped = false;
        r.copy = None;
        r.xfer = Xfer::None;
        r.data_len = 0;
        r.h2c_done = 0;
        r.c2h_len = 0;
        r.status = Status::SUCCESS;
        r.dw0 = 0;
        r.dw1 = 0;
        debug_assert!(!r.outstanding());
        debug_assert!(r.locks.is_empty());
        r.cursor = 0;
        r.zc_id = None;
        r.misrouted = false;
        r.flush_after = false;
        r.counted = false;
        r.qos_next = ReqState::New;
        r.releads.clear();
        r.started = std::time::Instant::now();
        r.state = ReqState::New;
        self.transitions[ReqState::Free.index()][ReqState::New.index()] += 1;
        self.counts[ReqState::Free.index()] -= 1;
        self.counts[ReqState::New.index()] += 1;
        Some(idx)
    }

    /// Moves request `idx` to `state`; panics on a transition the state machine does
    /// not have (see the module documentation).
    pub fn set_state(&mut self, idx: u16, state: ReqState) {
        self.transition(idx, state, false);
    }

    /// [`ReqTable::set_state`] for a closing connection, which may also free requests
    /// it will not serve (those nothing outside refers to) and end transfers early.
    pub fn set_state_closing(&mut self, idx: u16, state: ReqState) {
        self.transition(idx, state, true);
    }

    fn transition(&mut self, idx: u16, state: ReqState, closing: bool) {
        let r = &mut self.reqs[usize::from(idx)];
        assert!(r.state.may_become(state, closing), "request {idx}: no transition {:?} -> {state:?}", r.state);
        match state {
            ReqState::Free => {
                assert!(
                    r.bufs.is_empty() && r.cmp_bufs.is_empty(),
                    "request {idx}: buffers must go back to the pool before the slot is freed"
                );
                assert!(!r.outstanding(), "request {idx}: freed with work outstanding: {r:?}");
                assert!(r.locks.is_empty(), "request {idx}: freed holding pieces: {r:?}");
            }
            ReqState::ReadyToComplete => {
                assert!(!r.outstanding(), "request {idx}: completing with work outstanding: {r:?}");
                assert!(r.locks.is_empty(), "request {idx}: completing holding pieces: {r:?}");
            }
            _ => {}
        }
        self.counts[r.state.index()] -= 1;
        self.counts[state.index()] += 1;
        self.transitions[r.state.index()][state.index()] += 1;
        r.state = state;
        if state == ReqState::Free {
            self.free.push(idx);
        }
    }

    /// The transitions counted since the last call, by from × to; resets them.
    pub fn take_transitions(&mut self) -> [[u32; REQ_STATES]; REQ_STATES] {
        std::mem::replace(&mut self.transitions, [[0; REQ_STATES]; REQ_STATES])
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
        u32::try_from(self.reqs.len()).expect("at most 65535 slots") - self.count(ReqState::Free)
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
        (0..u16::try_from(self.reqs.len()).expect("at most 65535 slots"))
            .filter(move |&i| self.reqs[usize::from(i)].state == state)
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
        t.set_state(a, ReqState::ReadyToComplete);
        t.set_state(a, ReqState::Transmitting);
        t.set_state(a, ReqState::Free);
        assert_eq!(t.active(), 1);
        assert_eq!(t.get(Command::default()), Some(a));
    }

    #[test]
    #[should_panic(expected = "no transition Executing -> Free")]
    fn an_executing_request_is_never_freed() {
        let mut t = ReqTable::new(1, 1);
        let a = t.get(Command::default()).unwrap();
        t.set_state(a, ReqState::ReadyToExecute);
        t.set_state(a, ReqState::Executing);
        t.set_state_closing(a, ReqState::Free);
    }

    #[test]
    #[should_panic(expected = "freed with work outstanding")]
    fn a_request_with_a_device_part_out_is_never_freed() {
        let mut t = ReqTable::new(1, 1);
        let a = t.get(Command::default()).unwrap();
        t.set_state(a, ReqState::ReadyToExecute);
        t.req_mut(a).dev_inflight = 1;
        t.set_state(a, ReqState::WaitingDevice);
        t.set_state_closing(a, ReqState::Free);
    }

    #[test]
    #[should_panic(expected = "completing with work outstanding")]
    fn a_request_completes_only_when_nothing_is_out() {
        let mut t = ReqTable::new(1, 1);
        let a = t.get(Command::default()).unwrap();
        t.set_state(a, ReqState::ReadyToExecute);
        t.req_mut(a).frees_inflight = 1;
        t.set_state(a, ReqState::Executing);
        t.set_state(a, ReqState::ReadyToComplete);
    }

    #[test]
    fn every_state_but_free_has_a_way_out_and_free_only_leads_to_new() {
        for s in ReqState::ALL {
            let exits = ReqState::ALL.iter().filter(|&&t| s.may_become(t, false)).count();
            if s == ReqState::Free {
                assert_eq!(exits, 0, "Free leaves only through ReqTable::get");
            } else {
                assert!(exits > 0, "{s:?} is a dead end");
            }
        }
    }
}
