//! Replicated pages: every page of a volume with replicas lives on several peers, and a
//! peer can die without losing an acknowledged write or failing a host's I/O.
//!
//! # The pieces
//!
//! - [`set`]: a page's replica set (leader, members, how far each copy is), as etcd
//!   stores it and as a reactor reads it.
//! - [`locks`]: per page, the pieces with a write or a copy in flight on this peer
//!   (writes to one piece are applied one at a time, in the same order everywhere), and
//!   the pieces each member missed (what a delta rebuild copies).
//! - [`fence`]: this peer's right to serve replicated pages, bounded by its etcd lease.
//! - [`plan`]: the coordinator's decisions (evict a member whose peer is gone, admit it
//!   back, replace it after a while, change the replication factor, pick a new
//!   leader), as a pure function of the group's state.
//! - [`copier`] (reactor) and [`rebuild`] (control thread of the set's leader): the
//!   leader copying to a member what it lacks, piece by piece under the piece locks,
//!   rate-limited, then asking the group to promote it; the scrub runs on the same
//!   machinery, comparing each in-sync member's CRC32C of every piece with the
//!   leader's (the peer protocol's `Digest` request) and repairing what differs.
//! - [`sim`]: these rules (the real [`plan`]) under a deterministic simulator with
//!   crashes, partitions and reordering, checked by a model host
//!   (`appliance/tests/replica_sim.rs`).
//!
//! The scrub takes the leader's copy as the reference (it orders every write) when
//! there are two copies: nothing else can tell which of two differing copies is
//! right. With three in sync, a difference is settled by the third copy: if it
//! agrees with the member, the leader's own copy is repaired from the member's.
//!
//! # Writes
//!
//! A page's writes go to the leader of its set (a host's write to another peer is
//! forwarded there, as any I/O for a page owned elsewhere). The leader:
//! 1. takes the pieces the write covers in its page's lock word (another write to the
//!    same piece waits: overlapping writes are applied one after the other, at every
//!    member in the same order, so the copies cannot diverge);
//! 2. writes to its own device and sends the write, with the same buffers (no copy),
//!    to every member but the `Out` ones, marked as a replica write;
//! 3. completes the host's command when all of them have applied it. FUA goes along;
//!    a Flush goes to every member of every set.
//!
//! A member applies a replica write only if its own table names the sender as the
//! set's leader and itself as a member (with its current incarnation); otherwise it
//! answers that the sender is not the owner, and a member whose table is older than
//! the sender's says so, for the leader to send again shortly.
//!
//! A member that cannot be reached is never skipped on the leader's own say-so: its
//! writes wait (the hold time of the group covers it) until the coordinator evicts the
//! member by a new epoch, which it does only once the member can no longer serve
//! anything (its lease expired, or was revoked a TTL ago: [`fence`]). The waiting
//! writes then complete without it, and the leader marks their pieces as missed by it.
//!
//! # Reads
//!
//! A read is served by the receiving peer if it is an in-sync member of the page's set
//! (and holds its lease), else forwarded to the leader.
//!
//! # A part held for a leader that died
//!
//! A host's part forwarded to a leader that died waits on the link; when the new table
//! names another leader it is sent there, and when it names this peer it goes through
//! this peer's own link server (a link to itself, opened only then), which orders and
//! replicates it like any forwarded part: the host sees no error. A part that no leader
//! takes within the hold time ends with a retryable path error.
//!
//! # Failure, fencing and a new leader
//!
//! Every peer stops serving replicated pages when its lease could have expired: its
//! etcd keep-alive is older than 90% of the lease TTL ([`fence`]). The coordinator
//! evicts a member only when its peer's lease is gone, so at that moment the member
//! serves nothing; an evicted leader is replaced by an in-sync member, and the other
//! survivors become `Reconcile` (they may differ where the dead leader's last writes
//! were in flight) until the new leader has compared them. A peer that just became
//! leader orders no write until every one of its reactors has installed the new table
//! and finished the old leader's replica writes it had accepted (a barrier).
//!
//! # Rebuild
//!
//! A member that comes back (a new incarnation of its peer) is admitted as `Rebuild`:
//! it receives every write from then on, and the leader copies what it lacks: the
//! pieces it tracked as missed (delta), or, when nobody tracked them, every written
//! piece whose checksum differs (compare). A member that does not come back within
//! `replication.replace_after_s` is replaced by a new member on another peer, copied in
//! full. Copies take the piece lock like writes, are rate-limited, and end with the
//! leader promoting the member to `Sync`.

pub mod copier;
pub mod fence;
pub mod locks;
pub mod migration;
pub mod plan;
pub mod rebalance;
pub mod rebuild;
pub mod set;
pub mod sim;
