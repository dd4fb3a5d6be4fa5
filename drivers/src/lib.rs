//! Polled block devices for Quire.
//!
//! Every backend implements one interface, [`block::BlockDevice`], which hands out
//! [`block::QueuePair`]s: one per reactor, owned by that reactor, never shared. A queue
//! pair takes requests ([`block::IoRequest`]) that point at memory from the DMA buffer
//! pool ([`dma`]) and reports their completions when polled. Nothing here blocks or
//! takes a lock on the I/O path; a full queue is an error value the caller handles.
//!
//! Backends:
//! - [`ram`]: memory, for tests and benchmarks.
//! - [`uring`]: files and kernel block devices through `io_uring` (`O_DIRECT` where the
//!   file system allows it).
//! - [`nvme`]: the userspace NVMe driver over VFIO.
//! - [`fault`]: a wrapper that injects faults (full queues, late and out-of-order
//!   completions, media errors) into another device, for tests.
#![deny(missing_docs)]

pub mod block;
pub mod dma;
pub mod fault;
pub mod nvme;
pub mod ram;
pub mod uring;

pub use block::{BlockDevice, Completion, DeviceInfo, IoError, IoRequest, Op, QueuePair, SubmitError};
pub use dma::{DmaBuf, DmaPool, DmaSeg, PoolShard};
