//! NVMe base and NVMe over Fabrics formats: 64-byte commands, 16-byte completions,
//! status codes, opcodes, Identify data structures, log pages, features, Dataset
//! Management ranges and Copy source ranges.

pub mod cmd;
pub mod copy;
pub mod cpl;
pub mod dsm;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod status;

pub use cmd::Command;
pub use cpl::Completion;
pub use status::Status;

/// Size of a submission queue entry in bytes.
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry in bytes.
pub const CQE_SIZE: usize = 16;
/// Size of an NQN field in Connect data and Identify Controller.
pub const NQN_SIZE: usize = 256;
/// The well-known NQN of a discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
