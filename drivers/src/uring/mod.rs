//! io_uring backend: a regular file or a kernel block device as a [`BlockDevice`].
//!
//! Why it exists: the appliance must run where it cannot take an NVMe controller away
//! from the kernel (development machines, CI, VMs without an IOMMU), and operators may
//! want to serve a file or an existing block device (a RAID volume, a loop device). The
//! io_uring interface keeps the same polled rhythm as the userspace NVMe driver:
//!
//! - `submit` writes a submission entry into the ring shared with the kernel (no system
//!   call); the request's iovecs live in a per-queue-pair slot ([`slot`]) whose index is
//!   the entry's `user_data`.
//! - `kick` is one `io_uring_enter` for the whole batch, and only when something was
//!   queued.
//! - `poll` reads completion entries straight from the shared ring (no system call).
//!   The ring is registered with an eventfd, returned by
//!   [`QueuePair::completion_fd`](crate::block::QueuePair::completion_fd), so an idle
//!   reactor can sleep until a completion arrives; poll drains that eventfd whenever it
//!   reaps completions so it does not stay readable forever.
//!
//! `O_DIRECT` bypasses the page cache, which is what a storage appliance wants (the host
//! has its own cache, and a second copy of every block in our RAM is waste). Some file
//! systems refuse it (`EINVAL` at open); with [`DirectIo::Auto`] the device then falls
//! back to buffered I/O and says so through [`UringDevice::is_direct`]. Either way the
//! device reports a volatile write cache: durability needs a Flush (`fdatasync`) or a
//! FUA write (`RWF_DSYNC`).
//!
//! WriteZeroes and Deallocate are `fallocate` (zero range, punch hole); both keep the
//! file size, and both are understood by the kernel for block devices too (as write
//! zeroes and discard-with-zeroing). Where the file system or device cannot do them the
//! request completes with [`IoError::Unsupported`](crate::block::IoError::Unsupported).
//!
//! Teardown: dropping a queue pair waits for the requests the kernel still owns, but the
//! kernel releases the ring (and its reference to the file) asynchronously, so a block
//! device may stay open for a few milliseconds after the last queue pair and the device
//! are dropped.
//!
//! Every raw system call of the backend (block-device ioctls, the eventfd) is in
//! [`sys`]; the ring itself is driven through the `io-uring` crate.

mod device;
mod qpair;
mod slot;
mod sys;
#[cfg(test)]
mod test_utils;

use std::path::PathBuf;

pub use device::{Backing, UringDevice};
pub use qpair::UringQueuePair;

/// Largest transfer of one request.
pub const MAX_TRANSFER_BYTES: u32 = 1 << 20;
/// Deepest queue pair (slots, and so requests in flight, per ring).
pub const DEPTH_MAX: u32 = slot::SLOTS_MAX;
/// Largest block size a hint may ask for.
pub const BLOCK_SIZE_MAX: u32 = 64 << 10;

/// Whether to bypass the page cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// `O_DIRECT` if the file system accepts it, buffered otherwise.
    #[default]
    Auto,
    /// `O_DIRECT` or fail to open.
    On,
    /// Buffered (page cache).
    Off,
}

/// How to open a [`UringDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringOptions {
    /// `O_DIRECT` policy.
    pub direct: DirectIo,
    /// Create the file, sparse, with this size if it is missing (or empty). Ignored for
    /// block devices and for files that already have data.
    pub create_size: Option<u64>,
    /// Block size wanted: a power of two from 512 to [`BLOCK_SIZE_MAX`]. It is raised to
    /// what the backing needs (4096 for an `O_DIRECT` file, the logical block size of a
    /// block device); without a hint, files get 4096 and block devices their logical
    /// block size.
    pub block_size_hint: Option<u32>,
}

/// Errors opening a [`UringDevice`].
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// The file or device could not be opened (with `O_DIRECT` when asked).
    #[error("opening {path}: {source}")]
    Open {
        /// What was opened.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The size (or logical block size) could not be read or set.
    #[error("sizing {path}: {source}")]
    Size {
        /// What was opened.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{path} is neither a regular file nor a block device")]
    NotFileOrBlockDevice {
        /// What was opened.
        path: PathBuf,
    },
    /// The block size hint is not a power of two from 512 to [`BLOCK_SIZE_MAX`].
    #[error("block size hint {0} must be a power of two from 512 to 65536")]
    BlockSizeHint(u32),
    /// The file or device is smaller than one block.
    #[error("{path} holds no whole block of {block_size} bytes")]
    Empty {
        /// What was opened.
        path: PathBuf,
        /// The block size chosen.
        block_size: u32,
    },
}
