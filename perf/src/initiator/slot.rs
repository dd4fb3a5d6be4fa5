//! Command slots: one per command identifier, each with its buffer and its state.
//!
//! A slot is taken when a command is submitted and given back when its completion
//! has been handed to the caller. The state says what the slot waits for, so that a
//! PDU that arrives for a slot in the wrong state is a protocol error, never a
//! silent corruption of another command's buffer.

use quire_wire::nvme::Completion;

use super::connection::DataDir;

/// Where a command stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Unused; on the free list.
    Free,
    /// The capsule (with any in-capsule data) is queued or sent; waits for the
    /// response, or for C2HData when it is a read.
    Sent,
    /// A write whose data did not fit in the capsule: waits for the next R2T.
    AwaitingR2T,
    /// H2CData PDUs answering an R2T are queued; the send path moves the slot on
    /// once they have left.
    SendingData,
    /// A read whose first C2HData PDU has arrived: more data or the response follows.
    AwaitingData,
    /// The completion is in; the slot goes back to the free list once the caller has
    /// seen it and the send path no longer references its buffer.
    Completed,
}

/// One command slot.
pub(crate) struct Slot {
    /// Where the command stands.
    pub state: SlotState,
    /// The caller's tag, returned with the completion.
    pub tag: u64,
    /// Data buffer: the command's data lives here from submission to completion.
    pub buf: Vec<u8>,
    /// Bytes this command transfers (≤ `buf.len()`).
    pub len: u32,
    /// Direction of the transfer.
    pub dir: DataDir,
    /// Write: bytes already queued in H2CData PDUs. Read: bytes received.
    pub progress: u32,
    /// Send-queue items that still reference `buf`.
    pub tx_refs: u32,
    /// The completion, once in.
    pub cpl: Completion,
}

impl Slot {
    pub fn new(buf_len: usize) -> Slot {
        Slot {
            state: SlotState::Free,
            tag: 0,
            buf: vec![0u8; buf_len],
            len: 0,
            dir: DataDir::None,
            progress: 0,
            tx_refs: 0,
            cpl: Completion::default(),
        }
    }
}
