//! Management JSON-RPC 2.0 over a Unix stream socket, in SPDK's manner.
//!
//! # The protocol
//! A client connects to the socket (default `<data_dir>/quire.sock`, see
//! `quire_config::Config::rpc_socket_path`) and writes JSON-RPC 2.0 request objects,
//! one after the other; newlines between them are allowed and not required (the server
//! reads a stream of JSON values, so a request may arrive split over many writes, and
//! several requests may arrive in one). Each request is answered in order on the same
//! connection, one response object per request followed by a newline:
//!
//! ```text
//! → {"jsonrpc":"2.0","id":1,"method":"volume_create","params":{"name":"db","size":10737418240}}
//! ← {"jsonrpc":"2.0","id":1,"result":{"name":"db","id":2,"size":10737418240,...}}
//! → {"jsonrpc":"2.0","id":2,"method":"volume_delete","params":{"name":"nope"}}
//! ← {"jsonrpc":"2.0","id":2,"error":{"code":1000,"message":"no volume named \"nope\""}}
//! ```
//!
//! A request without `id` is a notification: it is executed and gets no answer. An
//! array of requests is a batch, answered by an array of the answers (notifications
//! left out). Text that is not JSON gets a parse error (`id: null`) and the connection
//! is closed, because nothing after it can be trusted to start at a value boundary.
//! Method names are SPDK-style `noun_verb` in snake case; `params` is an object.
//!
//! # Who does what
//! [`socket`] owns the socket: it frames and checks requests and forwards each one to
//! the control thread as an [`RpcCall`] on a channel, then waits for the reply on the
//! call's own channel and writes it back. It knows no method: the control thread
//! dispatches on [`RpcCall::method`] (the names are in [`methods`]), reads its
//! parameters with [`RpcCall::params`] (which turns a serde error into
//! [`code::INVALID_PARAMS`]) and answers [`RpcError::method_not_found`] for anything
//! else. [`client`] is the other end, used by the CLI (`crate::cli`).
//!
//! # Errors
//! `error.code` is one of JSON-RPC's codes ([`code::PARSE_ERROR`] …
//! [`code::INTERNAL_ERROR`]), a server code in JSON-RPC's implementation range
//! (−32000 ..= −32099: [`code::SERVER_BUSY`], [`code::SHUTTING_DOWN`]), or one of
//! Quire's application codes, 1000 ..= 1999 ([`code::NOT_FOUND`],
//! [`code::ALREADY_EXISTS`], [`code::NO_SPACE`], [`code::INVALID_STATE`]).
//! `error.message` is a sentence for a human; `error.data` optionally carries details.
//!
//! # Methods (the reference)
//! Sizes are integers in bytes; NQNs are strings; a method that changes something and
//! has nothing better to return answers `true`. Typed forms of every params and result
//! object are in [`methods`].
//!
//! | method | params | result |
//! |---|---|---|
//! | `volume_create` | `{name, size, page_size?, block_size?, replicas?}` | the new volume, as one `volume_list` entry |
//! | `volume_list` | none | `[{name, id, size, page_size, block_size, pages, allocated_pages, nqn, uuid, nguid, replicas, health, degraded_pages, rebuild_percent?, limits?}]` |
//! | `volume_grow` | `{name, size}` (the new size, larger) | the volume, as one `volume_list` entry |
//! | `volume_delete` | `{name}` | `true` |
//! | `volume_set_replicas` | `{name, replicas}` | the volume, as one `volume_list` entry |
//! | `volume_set_limits` | `{name, iops?, mib_s?, host_iops?, host_mib_s?}` (those given change; 0 removes one) | `true` |
//! | `scrub_start` | `{name}` | `true` |
//! | `scrub_status` | none | `[{volume, state, pages, compared, repaired}]` |
//! | `page_move` | `{volume, page, to, from?}` | the volume's moves under way, as `migration_list` entries |
//! | `migration_list` | none | `[{id, volume, first_page, pages, from, to, phase}]` |
//! | `migration_cancel` | `{volume, id}` | `true` |
//! | `peer_drain` | `{name, undo?}` | `true` |
//! | `page_pin` | `{volume, page, undo?}` | `true` |
//! | `peer_remove` | `{name}` | `true` |
//! | `group_set_limits` | `{rebuild_mb_s?, migration_mb_s?, scrub_mb_s?}` (those given change; 0: each peer's configuration) | `true` |
//! | `rebalance_status` | none | `{enabled, paused, state, tolerance_pct, moves_max, moves, pinned, peers: [{name, weight, held_bytes, ideal_bytes, share_pct, eligible}], history: [{at_ms, volume, page, pages, from, to, why}]}` |
//! | `rebalance_pause` | `{paused}` | `true` |
//! | `volume_pages` | `{name}` | `{name, epoch, page_size, pages, replicas, runs: [{first, count, owner, set}], owners: [{owner, pages, copies}], sets: [{set, leader, pages, members: [{peer, state, inc}]}]}` |
//! | `subsystem_list` | none | `[{nqn, volume, allowed_hosts: [hostnqn], controllers}]` |
//! | `subsystem_allow_host` | `{nqn, host}` | `true` |
//! | `subsystem_disallow_host` | `{nqn, host}` | `true` |
//! | `controller_list` | none | `[{cntlid, subnqn, hostnqn, hostid, kato_ms, queues: [{qid, reactor, depth, peer}]}]` |
//! | `stats_volumes` | none | `[{name, read_ops, write_ops, read_bytes, write_bytes, other_ops, errors}]` |
//! | `stats_reactors` | none | `[{reactor, core, connections, polls, busy_polls, sleeps, io_ops, rx_bytes, tx_bytes, rx_copied_bytes, tx_copied_bytes}]` |
//! | `stats_requests` | none | `[{from, to, count}]` |
//! | `stats_pages` | `{name, top?}` | `{name, pages, ops_s, kib_s, top: [{page, ops_s, kib_s, peers: [name]}]}` |
//! | `stats_peers` | none | `[{name, ops_s, kib_s, volumes}]` |
//! | `stats_hosts` | none | `[{host, volume, ops_s, kib_s, latency_us, peers}]` |
//! | `store_info` | none | `{device, size, used, free, volumes}` |
//! | `stats_metrics` | none | the Prometheus text exposition, as one string (what `GET /metrics` serves) |
//! | `group_status` | none | `{mode, peer, coordinator, etcd: [url], etcd_state, etcd_error, etcd_since_ms, revision, ignored, peers: [{name, state, target, discovery, link, lease_age_s, coordinator, weight, capacity_bytes, used_bytes, version, gone_since_ms}]}` |
//!
//! Field meanings:
//! - `volume_create`: `name` is `[a-z0-9._-]{1,64}` and becomes the subsystem NQN's
//!   suffix; `size` must be a multiple of `page_size` (default 4 MiB, a power of two
//!   from 64 KiB to 1 GiB); `block_size` is 512 or 4096 (default 4096). Errors:
//!   `ALREADY_EXISTS`, `NO_SPACE`, `INVALID_PARAMS`.
//! - `volume_list`: `id` is the group-wide volume id; `pages` = size / page_size;
//!   `allocated_pages` have been written at least once (thin provisioning); `uuid` is
//!   the namespace UUID in the 8-4-4-4-12 form, `nguid` 32 hex digits.
//! - `volume_create` / `volume_set_replicas`: `replicas` is the number of copies of
//!   each page, on distinct peers (1 ..= 3, at most the live peers; default 2 in a
//!   group of at least two live peers, else 1); a single peer refuses more than 1.
//! - `volume_list` in a group also gives `replicas`, `health` (`healthy`, `degraded`:
//!   some page has fewer in-sync copies, `rebuilding`: and a copy is being built),
//!   `degraded_pages` and, while rebuilding, `rebuild_percent` (the leaders' progress
//!   as they last reported it to the group).
//! - `scrub_start`: every leader of the volume's replica sets compares each in-sync
//!   member's copy with its own, piece by piece (CRC32C), and repairs what differs
//!   from its copy; `scrub_status` sums the leaders' reports of the last scrub:
//!   `state` `running`, `done` or `never`.
//! - `page_move`: the page gets a replica set of its own with `to` added; both copies
//!   take every write while the set's leader copies the page (at
//!   `replication.migration_mb_s`); then `to` takes over (`phase` `cut over`: `from`
//!   serves no read) and a lease TTL later `from` leaves the set and frees its copy.
//!   Refused (`INVALID_STATE`) while a copy of the page is not in sync or the page
//!   moves already, or when `to` holds it, is not live or is being drained.
//!   `migration_cancel` drops the new copy of a move not cut over yet.
//! - `peer_drain`: the coordinator moves the peer's copy out of every set, one move per
//!   set at a time, to the live peers holding the fewest copies; a drained peer takes
//!   no new copies (new volumes, new replicas) until `undo`.
//! - `peer_remove`: forgets a peer for good (its routing id, drain mark, revocation
//!   and rebuild records); refused (`INVALID_STATE`) while it is live or any set of
//!   any volume names it (drain it, stop it, then remove it).
//! - `stats_pages` / `stats_peers`: the load monitor (`volume::load`): per page, the
//!   operations and KiB per second each peer serves from its copy (a leader's writes,
//!   any copy's reads), decaying with a half-life of 10 s; a peer publishes its totals
//!   and its 16 hottest pages per volume to the group every 5 s, and these calls
//!   read every live peer's last report (this peer's as it is now). `top` defaults
//!   to 10.
//! - `stats_hosts`: per host NQN and volume, the reads and writes per second and KiB
//!   per second each peer served it (counted per I/O queue, decaying the same way),
//!   summed over the peers it goes through, and their mean latency (capsule in to
//!   completion out, as the peers measure it).
//! - `rebalance_status`: the coordinator moves pages (as `page_move` does) so that
//!   every live, undrained peer with a weight holds copies in proportion to its
//!   weight (`ideal_bytes`, counted as the records will stand once the moves under
//!   way are done); it starts one when a peer is more than `tolerance_pct` off its
//!   ideal and fewer than `moves_max` moves copy (up to `batch_pages` pages of one
//!   set each), and never moves a page so far that its source ends below its target. `state` is its last word (why nothing moves, or
//!   the move it started and why), `history` its last 32 moves. `rebalance_pause`
//!   stops it group-wide until resumed; `page_pin` keeps a page where it is.
//! - `volume_pages`: `runs` are consecutive pages of one replica set, `owner` its
//!   leader (the peer that orders its writes); `owners[].pages` counts the pages a peer
//!   leads, `copies` the copies it holds; a member's `state` is `sync`, `reconcile`,
//!   `rebuild (delta|compare|full)`, `leaving` (a move's source after its cut-over) or
//!   `out`, `inc` the lease of the run it names.
//! - `volume_grow`: `size` is the new total size, larger than the current one and a
//!   multiple of the page size; hosts see a namespace-attribute-changed event.
//! - `volume_delete`: allowed while hosts are connected: their I/O to it then completes
//!   with Invalid Namespace and their controllers get a namespace-changed event.
//! - `subsystem_list`: `allowed_hosts` empty means any host may connect;
//!   `controllers` is the number connected now.
//! - `subsystem_allow_host` / `subsystem_disallow_host`: `nqn` is the subsystem,
//!   `host` the host NQN; allowing the first host closes the subsystem to all others.
//! - `controller_list`: `hostid` is the host identifier as a UUID string; `kato_ms` the
//!   keep-alive timeout in ms (0 = none); each queue names its `reactor` index, its
//!   `depth` (SQ size) and the `peer` socket address of the host.
//! - `stats_volumes`: counters since start; `other_ops` counts flush, write zeroes and
//!   deallocate; `errors` counts commands completed with a non-zero status.
//! - `stats_reactors`: `core` is the pinned core or `null`; `polls` counts poll-loop
//!   iterations, `busy_polls` those that found work, `sleeps` hybrid-mode sleeps;
//!   `*_copied_bytes` count payload bytes copied in userspace (zero on the fast path);
//!   `buffers_free` / `buffers_total` the reactor's pool buffers, `requests_active` and
//!   `connections_closing` what its connections hold (the last four as of its last
//!   tick, every 10 ms).
//! - `stats_requests`: request state transitions (`Executing` → `ReadyToComplete`, ...)
//!   counted since start, summed over the reactors, the ones that happened only.
//! - `store_info`: `device` describes the backing device(s); `size`, `used`, `free` in
//!   bytes; `volumes` is the number of volumes; `zeroed_spares` the slots zeroed ahead
//!   of first writes (counted in `free`).
//! - `group_status`: `mode` is `"single"` for a peer without `group.etcd` (then the
//!   rest is empty) or `"group"`; `etcd_state` is `"connected"` or `"unreachable"`
//!   (group changes are frozen, I/O to single-copy pages goes on, replicated pages only
//!   while the lease is certainly alive; `etcd_error` says why); `revision` is
//!   the etcd revision of the view shown; `peers` lists the live peers (`state`
//!   `"live"`, `lease_age_s` the seconds since its last keep-alive reached etcd) and
//!   the peers this one saw leave (`"gone"`, `gone_since_ms`).

pub mod client;
pub mod envelope;
pub mod methods;
pub mod socket;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use client::{call, ClientError};
pub use socket::{spawn, RpcServerHandle};

/// JSON-RPC error codes.
pub mod code {
    /// The text is not JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// The JSON is not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Missing, extra or ill-typed parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// A bug or an unexpected failure inside the daemon.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// Server: too many clients, try again.
    pub const SERVER_BUSY: i32 = -32000;
    /// Server: the daemon is stopping.
    pub const SHUTTING_DOWN: i32 = -32001;
    /// Application: the named volume, subsystem or host does not exist.
    pub const NOT_FOUND: i32 = 1000;
    /// Application: the name is taken.
    pub const ALREADY_EXISTS: i32 = 1001;
    /// Application: not enough free space on the devices.
    pub const NO_SPACE: i32 = 1002;
    /// Application: the object is in a state that forbids the operation.
    pub const INVALID_STATE: i32 = 1003;

    /// JSON-RPC's implementation-defined server-error range.
    pub const SERVER_RANGE: std::ops::RangeInclusive<i32> = -32099..=-32000;
    /// Quire's application range.
    pub const APPLICATION_RANGE: std::ops::RangeInclusive<i32> = 1000..=1999;
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// One of [`code`].
    pub code: i32,
    /// A sentence for a human.
    pub message: String,
    /// Optional details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with `code` and `message` and no data.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into(), data: None }
    }

    /// [`code::PARSE_ERROR`].
    pub fn parse_error(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(code::PARSE_ERROR, format!("parse error: {detail}"))
    }

    /// [`code::INVALID_REQUEST`].
    pub fn invalid_request(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(code::INVALID_REQUEST, format!("invalid request: {detail}"))
    }

    /// [`code::METHOD_NOT_FOUND`], naming the method.
    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(code::METHOD_NOT_FOUND, format!("method not found: {method:?}"))
    }

    /// [`code::INVALID_PARAMS`].
    pub fn invalid_params(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(code::INVALID_PARAMS, format!("invalid params: {detail}"))
    }

    /// [`code::INTERNAL_ERROR`].
    pub fn internal(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(code::INTERNAL_ERROR, format!("internal error: {detail}"))
    }

    /// [`code::NOT_FOUND`].
    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(code::NOT_FOUND, message)
    }

    /// [`code::ALREADY_EXISTS`].
    pub fn already_exists(message: impl Into<String>) -> RpcError {
        RpcError::new(code::ALREADY_EXISTS, message)
    }

    /// [`code::NO_SPACE`].
    pub fn no_space(message: impl Into<String>) -> RpcError {
        RpcError::new(code::NO_SPACE, message)
    }

    /// [`code::SERVER_BUSY`].
    pub fn server_busy(message: impl Into<String>) -> RpcError {
        RpcError::new(code::SERVER_BUSY, message)
    }

    /// [`code::INVALID_STATE`].
    pub fn invalid_state(message: impl Into<String>) -> RpcError {
        RpcError::new(code::INVALID_STATE, message)
    }

    /// The same error with `data` attached.
    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }
}

/// What the control thread answers for one call.
pub type RpcResult = Result<Value, RpcError>;

/// One request, handed by the server to the control thread.
#[derive(Debug)]
pub struct RpcCall {
    /// The method name, as sent.
    pub method: String,
    /// The params object or array as sent; `Value::Null` when the request had none.
    pub params: Value,
    /// Where to send the answer, exactly once. Sending fails only when the client has
    /// gone, which the control thread may ignore.
    pub reply: crossbeam_channel::Sender<RpcResult>,
}

impl RpcCall {
    /// The params as `T`; absent params read as `{}` (so a struct whose fields are all
    /// optional accepts them). A mismatch is [`code::INVALID_PARAMS`] with serde's
    /// message, which names the field.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        let params = match &self.params {
            Value::Null => Value::Object(serde_json::Map::new()),
            other => other.clone(),
        };
        serde_json::from_value(params).map_err(RpcError::invalid_params)
    }

    /// Sends the answer; a client that has gone is not an error.
    pub fn respond(self, result: RpcResult) {
        let _ = self.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call_with(params: Value) -> (RpcCall, crossbeam_channel::Receiver<RpcResult>) {
        let (reply, answers) = crossbeam_channel::bounded(1);
        (RpcCall { method: "volume_delete".into(), params, reply }, answers)
    }

    #[test]
    fn params_read_into_a_struct() {
        let (call, _answers) = call_with(json!({"name": "db"}));
        let params: methods::VolumeNameParams = call.params().unwrap();
        assert_eq!(params.name, "db");
    }

    #[test]
    fn bad_params_are_invalid_params_naming_the_field() {
        let (call, _answers) = call_with(json!({"nmae": "db"}));
        let error = call.params::<methods::VolumeNameParams>().unwrap_err();
        assert_eq!(error.code, code::INVALID_PARAMS);
        assert!(error.message.contains("nmae"), "{}", error.message);
        let (call, _answers) = call_with(Value::Null);
        let error = call.params::<methods::VolumeNameParams>().unwrap_err();
        assert!(error.message.contains("missing field `name`"), "{}", error.message);
    }

    #[test]
    fn respond_delivers_once_and_tolerates_a_gone_client() {
        let (call, answers) = call_with(Value::Null);
        call.respond(Ok(json!(true)));
        assert_eq!(answers.recv().unwrap(), Ok(json!(true)));
        let (call, answers) = call_with(Value::Null);
        drop(answers);
        call.respond(Err(RpcError::internal("x")));
    }

    #[test]
    fn error_serializes_without_empty_data() {
        let error = RpcError::not_found("no volume named \"x\"");
        assert_eq!(serde_json::to_value(&error).unwrap(), json!({"code": 1000, "message": "no volume named \"x\""}));
        let error = error.with_data(json!({"name": "x"}));
        assert_eq!(serde_json::to_value(&error).unwrap()["data"]["name"], "x");
        assert!(code::APPLICATION_RANGE.contains(&code::INVALID_STATE));
        assert!(code::SERVER_RANGE.contains(&code::SHUTTING_DOWN));
    }
}
