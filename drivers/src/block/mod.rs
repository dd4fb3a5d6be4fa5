//! The polled block-device interface every backend implements.
//!
//! The life of a request: the caller fills an [`IoRequest`] (operation, block range,
//! memory segments, a 64-bit tag of its own), calls [`QueuePair::submit`] (which may
//! answer [`SubmitError::QueueFull`]: back-pressure, try again after polling), calls
//! [`QueuePair::kick`] once per poll-loop iteration to push the batch to the device
//! (one doorbell write or one `io_uring_enter`), and collects completions with
//! [`QueuePair::poll`], which hands back each request's tag and result.

use std::os::fd::RawFd;

use crate::dma::DmaSeg;

/// Most memory segments one request may carry.
pub const SEGS_MAX: usize = 32;

/// What a device is and what it can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human-readable name (path, PCI address, "ram").
    pub name: String,
    /// Size of a device block in bytes; offsets and lengths are multiples of it.
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Largest transfer of one request in bytes (larger ones must be split by the caller).
    pub max_transfer_bytes: u32,
    /// The device has a volatile write cache: Flush is needed for durability.
    pub volatile_write_cache: bool,
    /// Deallocated blocks read back as zeroes.
    pub deallocate_reads_zeroes: bool,
    /// Alignment (a power of two) that every segment's address and length must have
    /// (1: none; 4: NVMe PRPs; the logical block size for `O_DIRECT` on most devices).
    pub memory_align: u32,
}

impl DeviceInfo {
    /// Device capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size)
    }
}

/// The operation of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `num_blocks` from `lba` into the segments.
    Read,
    /// Write the segments to `lba`; with `fua`, durable before completion.
    Write {
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Set the range to zeroes.
    WriteZeroes,
    /// Deallocate the range (reads zeroes afterwards when the device says so).
    Deallocate,
}

/// One request. `segs[..nsegs]` must add up to `num_blocks * block_size` bytes for
/// Read and Write, and be empty for the other operations.
#[derive(Clone, Copy, Debug)]
pub struct IoRequest {
    /// The operation.
    pub op: Op,
    /// First device block.
    pub lba: u64,
    /// Number of device blocks (0 for Flush).
    pub num_blocks: u32,
    /// The caller's tag, returned in the completion.
    pub tag: u64,
    /// Memory segments (Read, Write).
    pub segs: [DmaSeg; SEGS_MAX],
    /// Number of valid segments.
    pub nsegs: usize,
}

impl IoRequest {
    /// A request without memory (Flush, WriteZeroes, Deallocate).
    pub fn no_data(op: Op, lba: u64, num_blocks: u32, tag: u64) -> IoRequest {
        IoRequest { op, lba, num_blocks, tag, segs: [DmaSeg::EMPTY; SEGS_MAX], nsegs: 0 }
    }

    /// A Read or Write over `segs`.
    pub fn with_segs(op: Op, lba: u64, num_blocks: u32, tag: u64, segs: &[DmaSeg]) -> IoRequest {
        assert!(segs.len() <= SEGS_MAX, "too many segments: {}", segs.len());
        let mut r = IoRequest::no_data(op, lba, num_blocks, tag);
        r.segs[..segs.len()].copy_from_slice(segs);
        r.nsegs = segs.len();
        r
    }

    /// The valid segments.
    pub fn segs(&self) -> &[DmaSeg] {
        &self.segs[..self.nsegs]
    }

    /// Total bytes in the segments.
    pub fn data_len(&self) -> u64 {
        self.segs().iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Why a completed request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The device reported a media or I/O error (errno or NVMe status).
    #[error("device I/O error (code {0})")]
    Media(i32),
    /// The request was outside the device.
    #[error("request outside the device")]
    OutOfRange,
    /// The device does not support the operation.
    #[error("operation not supported by the device")]
    Unsupported,
    /// The request was aborted (timeout, reset, device gone).
    #[error("request aborted")]
    Aborted,
}

/// A completion: the request's tag and its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// Success, or why not.
    pub result: Result<(), IoError>,
}

/// Why a request could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: poll completions, then try again.
    #[error("queue full")]
    QueueFull,
    /// The request is malformed (lengths, alignment, range); a programming error upstream.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// A device: gives out queue pairs and says what it is.
pub trait BlockDevice: Send + Sync {
    /// What the device is.
    fn info(&self) -> &DeviceInfo;

    /// A new queue pair of at least `depth` entries, for one thread to own.
    fn create_qpair(&self, depth: u32) -> std::io::Result<Box<dyn QueuePair>>;
}

/// One submission/completion queue pair, owned and polled by one thread.
pub trait QueuePair: Send {
    /// Queues `req`. Nothing reaches the device before [`QueuePair::kick`].
    ///
    /// # Safety
    /// The memory that `req`'s segments describe must stay valid, and must be neither
    /// read (for Read) nor written (for Write) by anyone else, until this queue pair
    /// has reported the request's completion through [`QueuePair::poll`].
    unsafe fn submit(&mut self, req: &IoRequest) -> Result<(), SubmitError>;

    /// Pushes every queued request to the device (one doorbell or syscall per batch).
    fn kick(&mut self);

    /// Reports up to `max` completions through `on_complete`; returns how many.
    fn poll(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize;

    /// Requests submitted and not yet reported complete.
    fn outstanding(&self) -> u32;

    /// A file descriptor that becomes readable when completions arrive, if the backend
    /// has one (hybrid polling sleeps on it). Without one, a sleeping reactor must wake
    /// on a short timer while requests are outstanding.
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
}
