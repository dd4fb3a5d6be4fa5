//! Peer links: how the peers of a group carry each other's I/O.
//!
//! A host may send any I/O to any peer. The peer that receives it splits it at page
//! boundaries (`volume::io`); a part whose page another peer owns is forwarded over
//! this reactor's link to that peer ([`client`]), which executes it on its own page
//! store like a local request ([`server`]) and answers; the answer completes the host
//! request's part, on the host's own connection. Payloads are never copied in
//! userspace: write data goes from the pool buffer it was received into straight to
//! the link socket, and read data is received from the link straight into the host
//! request's pool buffer, from which it is sent to the host.
//!
//! The protocol is our own ([`proto`]), not NVMe/TCP between peers:
//! - a forwarded part must carry what NVMe has no field for: the group volume and the
//!   routing epoch it was routed with, so that an owner can refuse a part routed with
//!   a table that no longer names it, instead of serving stale data;
//! - the owner must execute it locally, never route it again (an NVMe/TCP target would
//!   treat it as host I/O and could forward it onward in a loop);
//! - peers authenticate each other with the group secret before any I/O ([`auth`]);
//!   NVMe/TCP's in-band authentication (DH-HMAC-CHAP) would need a controller per
//!   reactor pair, a Connect, keep-alives, admin queues: machinery with no use here;
//! - fixed-size headers in batches let a receiver read every payload straight into its
//!   destination with about two system calls per batch ([`frame`]); NVMe/TCP's
//!   variable PDUs and R2T round trips for large writes cost more on a hop that both
//!   ends control.
//!
//! Topology: each reactor keeps one outbound link per other peer (so nothing on the
//! forwarding path is shared between reactors); each peer's link listener
//! (`group.listen`) hands inbound links round-robin to its reactors. Each inbound link
//! has a window of requests ([`LINK_WINDOW`]) and draws its buffers from the reactor's
//! own link shard of the pool, apart from the buffers host connections use: a peer
//! whose hosts hold every host buffer while waiting on other peers can still serve
//! those peers' requests, so two peers forwarding to each other cannot deadlock.

pub mod auth;
pub mod client;
pub mod frame;
pub mod proto;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::volume::routing::PeerId;

/// Requests an inbound link may have outstanding (the caller's window).
pub const LINK_WINDOW: u16 = 128;

/// TCP keepalive on a link socket: a peer that vanishes without closing (power lost,
/// cable pulled) is noticed within about 10 s even when the link is idle.
pub fn keepalive(sock: &mio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(5))
        .with_interval(std::time::Duration::from_secs(1))
        .with_retries(5);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
        tracing::warn!("peer link: cannot set TCP keepalive: {e}");
    }
}

/// What a reactor knows of its group's peers, from the control thread (replaced as a
/// whole, read-copy-update, whenever the group changes).
#[derive(Debug)]
pub struct PeerDirectory {
    /// This peer's routing id.
    pub me: PeerId,
    /// The group's uuid.
    pub group: [u8; 16],
    /// The group's secret.
    pub secret: auth::Secret,
    /// Every peer known by routing id (this one too).
    pub peers: BTreeMap<u16, PeerEntry>,
    /// How long I/O for a page whose owner cannot be reached is held before it is
    /// answered with a retryable path error.
    pub hold: Duration,
}

/// One peer as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// Its name.
    pub name: String,
    /// Its link listener (the last known, for a peer that is gone).
    pub link: Option<SocketAddr>,
    /// Registered under a live lease.
    pub alive: bool,
}
