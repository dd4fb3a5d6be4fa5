//! NVMe/TCP transport (NVMe/TCP Transport Specification 1.0).
//!
//! # Primer
//! An NVMe/TCP connection carries one NVMe queue pair. Everything on it is a PDU:
//! an 8-byte common header (type, flags, header length HLEN, PDU data offset PDO,
//! PDU length PLEN), the rest of the PDU-specific header, an optional header digest
//! (CRC32C of the header, 4 bytes), padding up to PDO, data, and an optional data
//! digest (CRC32C of the data). The first exchange is ICReq/ICResp, which fixes the
//! digests, the data alignment (CPDA) and the largest H2CData PDU (MAXH2CDATA).
//!
//! Commands travel in CapsuleCmd PDUs (the 64-byte SQE, optionally followed by
//! in-capsule write data); responses in CapsuleResp (the 16-byte CQE). Read data
//! comes back in C2HData PDUs, the last of which may carry the SUCCESS flag instead of
//! a CapsuleResp. Write data that did not fit in the capsule is requested by the
//! controller with R2T PDUs and sent by the host in H2CData PDUs. Fatal protocol errors
//! end the connection with a termination request PDU (H2CTermReq from the host,
//! C2HTermReq from the controller) that names the error (FES) and the offending byte
//! offset in the header (FEI).
//!
//! [`stream::PduReader`] splits a received byte stream into these PDUs incrementally.

pub mod digest;
pub mod pdu;
pub mod stream;

pub use pdu::*;
pub use stream::PduReader;
