//! The per-request slots of one queue pair.
//!
//! The kernel reads a vectored request's iovec array when it takes the submission and
//! may read it again if it has to retry the request from a worker thread, so the array
//! must stay put until the completion arrives. Each queue pair therefore owns `depth`
//! slots, allocated once, each with room for [`SEGS_MAX`] iovecs; a request borrows a
//! slot from the free list for its whole life, and the slot's index is the `user_data`
//! of its submission entry, which maps the completion back to the caller's tag.
//!
//! A slot also remembers how far its transfer got: the kernel may complete a read or a
//! write short (fewer bytes than asked), in which case the slot trims its iovecs and the
//! queue pair submits the rest at the advanced file offset.

use std::collections::VecDeque;

use io_uring::{opcode, squeue, types};

use crate::block::{Completion, IoError, IoRequest, Op, SEGS_MAX};

use super::sys;

/// Where a slot is in a request's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    /// On the free list; describes nothing.
    Free,
    /// Its entry sits in the submission ring; the next `kick` hands it to the kernel.
    Queued,
    /// The kernel owns the entry, the iovecs and the request's memory until its
    /// completion is reaped.
    InFlight,
    /// Failed before reaching the kernel; its completion waits in the rejected list and
    /// is reported by the next poll.
    Rejected(IoError),
}

/// What the queue pair does with a reaped completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The request is finished: report this, then free the slot.
    Complete(Completion),
    /// The transfer was short; the slot now describes the rest, submit it again.
    Continue,
}

/// One request's kernel-visible state.
struct Slot {
    state: SlotState,
    /// The caller's tag.
    tag: u64,
    op: Op,
    /// File offset of the next byte to transfer (or of the range, for fallocate).
    offset: u64,
    /// Bytes still to transfer (Read, Write) or the range length (WriteZeroes, Deallocate).
    remaining: u64,
    /// `iovecs[first..count]` is what remains to transfer.
    iovecs: [libc::iovec; SEGS_MAX],
    first: usize,
    count: usize,
}

const IOVEC_EMPTY: libc::iovec = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };

impl Slot {
    const EMPTY: Slot = Slot {
        state: SlotState::Free,
        tag: 0,
        op: Op::Flush,
        offset: 0,
        remaining: 0,
        iovecs: [IOVEC_EMPTY; SEGS_MAX],
        first: 0,
        count: 0,
    };

    /// The submission entry for what the slot still has to do, on registered file 0.
    fn entry(&self, user_data: u64) -> squeue::Entry {
        let file = types::Fixed(0);
        let rest = &self.iovecs[self.first..self.count];
        let entry = match self.op {
            Op::Read if rest.len() == 1 => {
                opcode::Read::new(file, rest[0].iov_base.cast(), iovec_len(&rest[0])).offset(self.offset).build()
            }
            Op::Read => opcode::Readv::new(file, rest.as_ptr(), iovec_count(rest)).offset(self.offset).build(),
            Op::Write { fua } if rest.len() == 1 => {
                opcode::Write::new(file, rest[0].iov_base.cast_const().cast(), iovec_len(&rest[0]))
                    .offset(self.offset)
                    .rw_flags(if fua { sys::RWF_DSYNC } else { 0 })
                    .build()
            }
            Op::Write { fua } => opcode::Writev::new(file, rest.as_ptr(), iovec_count(rest))
                .offset(self.offset)
                .rw_flags(if fua { sys::RWF_DSYNC } else { 0 })
                .build(),
            Op::Flush => opcode::Fsync::new(file).flags(types::FsyncFlags::DATASYNC).build(),
            Op::WriteZeroes => {
                opcode::Fallocate::new(file, self.remaining).offset(self.offset).mode(sys::FALLOCATE_ZERO_RANGE).build()
            }
            Op::Deallocate => {
                opcode::Fallocate::new(file, self.remaining).offset(self.offset).mode(sys::FALLOCATE_PUNCH_HOLE).build()
            }
        };
        entry.user_data(user_data)
    }

    /// Interprets the kernel's result `res` for this slot's request.
    fn on_result(&mut self, res: i32) -> Outcome {
        let result = if res < 0 {
            Err(errno_to_io_error(-res))
        } else {
            match self.op {
                Op::Read | Op::Write { .. } => match self.advance(res.unsigned_abs()) {
                    Advance::Done => Ok(()),
                    Advance::Partial => return Outcome::Continue,
                    // A read at end of file (someone truncated it) or a write that the
                    // kernel refuses to make progress on: give up rather than spin.
                    Advance::NoProgress => Err(IoError::Media(libc::EIO)),
                },
                Op::Flush | Op::WriteZeroes | Op::Deallocate => Ok(()),
            }
        };
        Outcome::Complete(Completion { tag: self.tag, result })
    }

    /// Accounts for `bytes` transferred: trims the iovecs and moves the offset.
    fn advance(&mut self, bytes: u32) -> Advance {
        let mut left = u64::from(bytes);
        assert!(left <= self.remaining, "kernel transferred {left} of {} bytes", self.remaining);
        if left == 0 {
            return Advance::NoProgress;
        }
        self.remaining -= left;
        self.offset += left;
        while left > 0 {
            let iov = &mut self.iovecs[self.first];
            let len = iov.iov_len as u64;
            if left >= len {
                self.first += 1;
                left -= len;
            } else {
                let part = usize::try_from(left).expect("below iov_len, a usize");
                // SAFETY: `part < iov_len`, so the advanced pointer stays inside the
                // segment the caller described.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(part) }.cast();
                iov.iov_len -= part;
                left = 0;
            }
        }
        if self.remaining == 0 {
            assert_eq!(self.first, self.count, "bytes done but iovecs left");
            Advance::Done
        } else {
            assert!(self.first < self.count, "bytes left but no iovec");
            Advance::Partial
        }
    }
}

/// How far a read or write got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Advance {
    /// Every byte is transferred.
    Done,
    /// Some bytes are left.
    Partial,
    /// The kernel transferred nothing.
    NoProgress,
}

/// The number of iovecs for `readv`/`writev`.
fn iovec_count(iovecs: &[libc::iovec]) -> u32 {
    u32::try_from(iovecs.len()).expect("at most SEGS_MAX iovecs")
}

fn iovec_len(iov: &libc::iovec) -> u32 {
    u32::try_from(iov.iov_len).expect("segments are at most u32::MAX bytes")
}

/// Maps a kernel errno to the block interface's error.
pub(super) fn errno_to_io_error(errno: i32) -> IoError {
    assert!(errno > 0, "errno {errno}");
    if errno == libc::EOPNOTSUPP {
        IoError::Unsupported
    } else {
        IoError::Media(errno)
    }
}

/// The queue pair's `depth` slots and the lists that move them between states.
pub(super) struct SlotTable {
    /// Never reallocated: the kernel holds pointers into the iovec arrays.
    slots: Box<[Slot]>,
    /// Indices of Free slots.
    free: Vec<u16>,
    /// Indices of Queued slots, in the order their entries sit in the submission ring.
    queued: VecDeque<u16>,
    /// Indices of Rejected slots, in the order they failed.
    rejected: VecDeque<u16>,
}

/// Most slots (requests in flight) of one queue pair; slot indices fit a u16.
pub(super) const SLOTS_MAX: u32 = 4096;
const _: () = assert!(SLOTS_MAX <= u16::MAX as u32 + 1);

impl SlotTable {
    /// `depth` free slots.
    pub(super) fn new(depth: u32) -> SlotTable {
        assert!(depth > 0 && depth <= SLOTS_MAX, "depth {depth}");
        let n = depth as usize;
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::EMPTY).collect();
        SlotTable {
            slots,
            free: (0..depth).rev().map(|i| u16::try_from(i).expect("depth <= SLOTS_MAX: indices fit a u16")).collect(),
            queued: VecDeque::with_capacity(n),
            rejected: VecDeque::with_capacity(n),
        }
    }

    /// Slots in use (Queued, InFlight or Rejected).
    pub(super) fn outstanding(&self) -> u32 {
        u32::try_from(self.slots.len() - self.free.len()).expect("at most SLOTS_MAX")
    }

    /// Entries in the submission ring not yet handed to the kernel.
    pub(super) fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Takes a free slot for `req` at file `offset`; `None` when every slot is in use.
    pub(super) fn take(&mut self, req: &IoRequest, offset: u64, range_bytes: u64) -> Option<u16> {
        let index = self.free.pop()?;
        let slot = &mut self.slots[usize::from(index)];
        assert_eq!(slot.state, SlotState::Free);
        slot.tag = req.tag;
        slot.op = req.op;
        slot.offset = offset;
        slot.remaining = range_bytes;
        slot.first = 0;
        slot.count = req.nsegs;
        for (iov, seg) in slot.iovecs.iter_mut().zip(req.segs()) {
            *iov = libc::iovec { iov_base: seg.addr.cast(), iov_len: seg.len as usize };
        }
        debug_assert!(matches!(req.op, Op::Flush | Op::WriteZeroes | Op::Deallocate) || req.data_len() == range_bytes);
        Some(index)
    }

    /// The submission entry of a slot just taken or just told to continue.
    pub(super) fn entry(&self, index: u16) -> squeue::Entry {
        let slot = &self.slots[usize::from(index)];
        assert!(matches!(slot.state, SlotState::Free | SlotState::InFlight), "{:?}", slot.state);
        slot.entry(u64::from(index))
    }

    /// Gives back a slot taken but never queued (the submission ring was full).
    pub(super) fn untake(&mut self, index: u16) {
        assert_eq!(self.slots[usize::from(index)].state, SlotState::Free);
        self.free.push(index);
    }

    /// The slot's entry was pushed to the submission ring.
    pub(super) fn mark_queued(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        assert!(matches!(slot.state, SlotState::Free | SlotState::InFlight), "{:?}", slot.state);
        slot.state = SlotState::Queued;
        self.queued.push_back(index);
    }

    /// The kernel consumed the first `n` queued entries.
    pub(super) fn mark_in_flight(&mut self, n: usize) {
        assert!(n <= self.queued.len(), "kernel took {n} of {} entries", self.queued.len());
        for index in self.queued.drain(..n) {
            let slot = &mut self.slots[usize::from(index)];
            assert_eq!(slot.state, SlotState::Queued);
            slot.state = SlotState::InFlight;
        }
    }

    /// The request failed before reaching the kernel; its completion is reported later.
    pub(super) fn reject(&mut self, index: u16, error: IoError) {
        let slot = &mut self.slots[usize::from(index)];
        assert_eq!(slot.state, SlotState::Free);
        slot.state = SlotState::Rejected(error);
        self.rejected.push_back(index);
    }

    /// Frees the oldest rejected slot and returns its completion.
    pub(super) fn pop_rejected(&mut self) -> Option<Completion> {
        let index = self.rejected.pop_front()?;
        let slot = &mut self.slots[usize::from(index)];
        let SlotState::Rejected(error) = slot.state else {
            panic!("slot {index} on the rejected list is {:?}", slot.state);
        };
        let completion = Completion { tag: slot.tag, result: Err(error) };
        self.release(index);
        Some(completion)
    }

    /// The kernel completed the entry with `user_data` and result `res`. A finished
    /// request's slot is freed; a short one stays in flight, ready to be resubmitted.
    pub(super) fn on_cqe(&mut self, user_data: u64, res: i32) -> (u16, Outcome) {
        let index = u16::try_from(user_data).expect("user_data is a slot index");
        let slot = &mut self.slots[usize::from(index)];
        assert_eq!(slot.state, SlotState::InFlight, "completion for slot {index}");
        let outcome = slot.on_result(res);
        if let Outcome::Complete(_) = outcome {
            self.release(index);
        }
        (index, outcome)
    }

    /// True when some request is in the kernel's hands.
    pub(super) fn any_in_flight(&self) -> bool {
        self.slots.iter().any(|s| s.state == SlotState::InFlight)
    }

    fn release(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        assert!(slot.state != SlotState::Free, "double free of slot {index}");
        slot.state = SlotState::Free;
        self.free.push(index);
        assert!(self.free.len() <= self.slots.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaSeg;

    fn seg(addr: usize, len: u32) -> DmaSeg {
        DmaSeg { addr: addr as *mut u8, iova: addr as u64, len }
    }

    #[test]
    fn short_transfers_trim_the_iovecs_and_move_the_offset() {
        let mut table = SlotTable::new(2);
        let req = IoRequest::with_segs(Op::Read, 0, 3, 7, &[seg(0x1000, 4096), seg(0x8000, 8192)]);
        let index = table.take(&req, 65536, 12288).unwrap();
        table.mark_queued(index);
        table.mark_in_flight(1);
        // 6000 bytes: the first segment and 1904 bytes of the second.
        assert_eq!(table.on_cqe(u64::from(index), 6000), (index, Outcome::Continue));
        let slot = &table.slots[usize::from(index)];
        assert_eq!((slot.first, slot.offset, slot.remaining), (1, 65536 + 6000, 12288 - 6000));
        assert_eq!(slot.iovecs[1].iov_base as usize, 0x8000 + 1904);
        assert_eq!(slot.iovecs[1].iov_len, 8192 - 1904);
        let entry = table.entry(index);
        assert_eq!(entry.get_opcode(), u32::from(opcode::Read::CODE), "one iovec left: plain read");
        assert_eq!(table.outstanding(), 1);
        let done = Completion { tag: 7, result: Ok(()) };
        assert_eq!(table.on_cqe(u64::from(index), 6288), (index, Outcome::Complete(done)));
        assert_eq!(table.outstanding(), 0);
    }

    #[test]
    fn zero_progress_and_errors_complete_the_request() {
        let mut table = SlotTable::new(1);
        let req = IoRequest::with_segs(Op::Write { fua: true }, 0, 1, 9, &[seg(0x1000, 4096), seg(0x3000, 4096)]);
        let index = table.take(&req, 0, 8192).unwrap();
        assert_eq!(table.entry(index).get_opcode(), u32::from(opcode::Writev::CODE));
        table.mark_queued(index);
        table.mark_in_flight(1);
        assert_eq!(table.on_cqe(0, 4096).1, Outcome::Continue);
        let eio = Completion { tag: 9, result: Err(IoError::Media(libc::EIO)) };
        assert_eq!(table.on_cqe(0, 0).1, Outcome::Complete(eio));
        let index = table.take(&IoRequest::no_data(Op::Deallocate, 0, 1, 10), 0, 4096).unwrap();
        table.mark_queued(index);
        table.mark_in_flight(1);
        let unsupported = Completion { tag: 10, result: Err(IoError::Unsupported) };
        assert_eq!(table.on_cqe(0, -libc::EOPNOTSUPP).1, Outcome::Complete(unsupported));
        assert_eq!(errno_to_io_error(libc::ENOSPC), IoError::Media(libc::ENOSPC));
    }

    #[test]
    fn slots_run_out_at_depth_and_rejections_come_back_in_order() {
        let mut table = SlotTable::new(2);
        let a = table.take(&IoRequest::no_data(Op::Flush, 0, 0, 1), 0, 0).unwrap();
        let b = table.take(&IoRequest::no_data(Op::Flush, 0, 0, 2), 0, 0).unwrap();
        assert!(table.take(&IoRequest::no_data(Op::Flush, 0, 0, 3), 0, 0).is_none());
        table.reject(b, IoError::OutOfRange);
        table.reject(a, IoError::OutOfRange);
        assert_eq!(table.pop_rejected().unwrap().tag, 2);
        assert_eq!(table.pop_rejected().unwrap().tag, 1);
        assert!(table.pop_rejected().is_none());
        assert_eq!(table.outstanding(), 0);
    }
}
