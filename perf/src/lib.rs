//! quire-perf: IOPS and latency benchmarks in the style of `spdk_nvme_perf`.
//!
//! - [`initiator`]: an NVMe/TCP host (initiator) library: connections, controller
//!   bring-up, polled I/O queue pairs.
#![deny(missing_docs)]

pub mod args;
pub mod initiator;
pub mod plot;
pub mod report;
pub mod run;
pub mod signal;
pub mod target;
pub mod tid;
pub mod workload;
