//! The Quire appliance: an NVMe/TCP target over page-partitioned thin volumes.
//!
//! Data flows host socket → [`nvmf::tcp`] (PDUs, request state machine) →
//! [`volume`] (page lookup, split) → a device queue pair from `quire-drivers` → back
//! the same way. Each [`reactor`] thread owns its connections, its device queue pair and
//! its buffer shard. The [`control`] thread owns the page store's metadata, serves the
//! management [`rpc`] and hands new state to reactors by message.

pub mod cast;
pub mod cli;
pub mod control;
pub mod group;
pub mod metrics;
pub mod nvmf;
pub mod peer;
pub mod reactor;
pub mod replica;
pub mod rpc;
pub mod serve;
pub mod volume;
