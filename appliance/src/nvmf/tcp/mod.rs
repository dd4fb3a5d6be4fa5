//! NVMe/TCP transport, controller side.
//!
//! One TCP connection carries one queue pair ([`qpair::TcpQpair`]). The receive path
//! ([`rx`]) reads PDU headers through a small staging buffer and payloads straight into
//! pool buffers; the send path ([`tx`]) writes PDU headers and pool buffers with
//! vectored writes, never copying a payload. Each command is a [`req::Req`] moving
//! through an explicit state machine. See `quire_wire::tcp` for a primer on the PDUs.

pub mod qpair;
pub mod req;
pub mod rx;
pub mod tx;
pub mod zerocopy;
