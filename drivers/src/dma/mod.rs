//! DMA-able buffer pool.
//!
//! One pool per peer: a single mapping (2 MiB hugepages through hugetlbfs where the
//! machine has them, normal pages otherwise) cut into fixed-size chunks at start-up.
//! The VFIO driver maps the whole region into the IOMMU once; every chunk then has an
//! IOVA as well as a virtual address. The pool is split into shards, one per reactor,
//! so that taking and returning a buffer is a push or pop on a reactor-local stack.
//!
//! A [`DmaBuf`] is a unique handle on one chunk. While a device reads or writes it,
//! the handle stays with the request that owns the I/O; the unsafe contract of
//! [`crate::QueuePair::submit`] covers that period.

mod pool;

pub use pool::{DmaBuf, DmaPool, DmaSeg, PoolError, PoolShard};
