//! Reactors: one thread per core, pinned, each owning its share of the work.
//!
//! A reactor owns its connections (queue pairs), its device queue pair, its shard of
//! the buffer pool and its copy of the volume tables, and runs one poll loop:
//!
//! 1. readiness of its sockets (and listeners, on the reactor that accepts),
//! 2. messages from the control thread (new connections, new volume tables, answers),
//! 3. receive and execute on every connection with bytes to read (host queue pairs and
//!    inbound peer links alike: [`Conn`]),
//! 4. device completions, requests parked on a full device queue or an empty pool,
//! 5. its outbound peer links ([`crate::peer::client::Links`]): answers of forwarded
//!    parts complete their host requests,
//! 6. sends, then one device kick for the whole batch,
//! 7. timers (keep-alive, teardown, link hold times, parts to route again) every
//!    [`TICK`].
//!
//! Nothing on this path takes a lock or writes memory another reactor writes. Poll
//! modes: `Busy` never sleeps (the appliance); `Hybrid` spins for a while after the last
//! work, then sleeps in `epoll_wait` until a socket, the device's completion event fd
//! or a message wakes it (development machines and CI, which have 2 cores).

pub mod msg;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use crossbeam_queue::ArrayQueue;
use mio::{Events, Interest, Poll, Token, Waker};
use quire_drivers::{IoRequest, PoolShard, QueuePair, SubmitError};

use crate::nvmf::subsystem::Registry;
use crate::nvmf::tcp::qpair::{ConnState, TcpQpair};
use crate::peer::client::{Finished, Forward, Links, PATH_ERROR};
use crate::peer::server::{LinkServer, ServerState};
use crate::volume::routing::{PeerId, Route, RoutingTable};
use crate::volume::{VolumeId, VolumeView};
pub use msg::{ControlMsg, ReactorMsg};
use stats::{add, ReactorStats, VolumeCounters};

/// Connections one reactor serves at most.
pub const CONNS_MAX: usize = 1024;
/// Timer period.
pub const TICK: Duration = Duration::from_millis(10);
/// Completions handled per device poll.
const COMPLETIONS_MAX: usize = 256;
/// A busy reactor reads the clock once every this many loop iterations.
const CLOCK_EVERY: u32 = 64;
/// How long a stopping reactor waits for its device requests to come back.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Sleep while device I/O is outstanding on a device without a completion fd.
const DEVICE_NAP: Duration = Duration::from_micros(50);
/// Sleep while requests wait for pieces of a replicated page (held by a request of
/// another reactor, which does not wake this one when it gives them back).
const ORDER_NAP: Duration = Duration::from_micros(200);

const TOKEN_WAKER: Token = Token(usize::MAX);
const TOKEN_DEVICE: Token = Token(usize::MAX - 1);
const TOKEN_LISTENER_BASE: usize = usize::MAX - 16;

/// How long a part the owner could not take is kept before it is routed again.
const REROUTE_DELAY: Duration = Duration::from_millis(20);
/// Hold time before the control thread says (the group's `hold_ms`).
const HOLD_DEFAULT: Duration = Duration::from_secs(25);

/// What a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// NVMe/TCP I/O.
    Io,
    /// NVMe/TCP discovery.
    Discovery,
    /// Links from other peers of the group (`group.listen`).
    Link,
}

/// One connection of a reactor: a host's NVMe/TCP queue pair, or a link another peer
/// opened to forward I/O here. Both run requests through the same state machine and
/// are found the same way by device completions and control answers ([`ReqRef`]).
pub enum Conn {
    /// A host queue pair.
    Host(TcpQpair),
    /// An inbound peer link.
    Link(LinkServer),
}

impl Conn {
    fn on_device_completion(&mut self, req: u16, r: Result<(), quire_drivers::IoError>, ctx: &mut ReactorCtx) {
        match self {
            Conn::Host(c) => c.on_device_completion(req, r, ctx),
            Conn::Link(l) => l.on_device_completion(req, r, ctx),
        }
    }

    fn on_alloc_done(&mut self, req: u16, r: Result<(), quire_wire::nvme::Status>, ctx: &mut ReactorCtx) {
        match self {
            Conn::Host(c) => c.on_alloc_done(req, r, ctx),
            Conn::Link(l) => l.on_alloc_done(req, r, ctx),
        }
    }

    fn on_free_done(&mut self, req: u16, r: Result<(), quire_wire::nvme::Status>, ctx: &mut ReactorCtx) {
        match self {
            Conn::Host(c) => c.on_free_done(req, r, ctx),
            Conn::Link(l) => l.on_free_done(req, r, ctx),
        }
    }

    /// Room in the device queue, or another try at ordering a replicated write.
    fn resume_device(&mut self, req: u16, ctx: &mut ReactorCtx) {
        match self {
            Conn::Host(c) => c.resume_device(req, ctx),
            Conn::Link(l) => l.resume_device(req, ctx),
        }
    }

    /// A forwarded part (or a leader's replica write) of request `req` was answered.
    fn on_forward_done(&mut self, req: u16, r: Result<(), quire_wire::nvme::Status>, ctx: &mut ReactorCtx) {
        match self {
            Conn::Host(c) => c.on_forward_done(req, r, ctx),
            Conn::Link(l) => l.on_forward_done(req, r, ctx),
        }
    }

    /// A digest request `req` sent was answered.
    fn on_digest(&mut self, req: u16, from: PeerId, r: Result<u32, quire_wire::nvme::Status>, ctx: &mut ReactorCtx) {
        let _ = ctx;
        match self {
            Conn::Host(_) | Conn::Link(_) => {
                unreachable!("request {req}: a digest from peer {} for a connection that asks none: {r:?}", from.0)
            }
        }
    }

    fn host(&mut self) -> &mut TcpQpair {
        match self {
            Conn::Host(c) => c,
            Conn::Link(_) => panic!("a host request's connection is a host queue pair"),
        }
    }

    fn active_requests(&self) -> u32 {
        match self {
            Conn::Host(c) => c.active_requests(),
            Conn::Link(l) => l.active_requests(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::Host(c) => c.state() == ConnState::Closed,
            Conn::Link(l) => l.state() == ServerState::Closed,
        }
    }

    fn is_closing(&self) -> bool {
        match self {
            Conn::Host(c) => matches!(c.state(), ConnState::Terminating | ConnState::Draining),
            Conn::Link(l) => l.state() == ServerState::Draining,
        }
    }

    fn sock(&mut self) -> &mut mio::net::TcpStream {
        match self {
            Conn::Host(c) => &mut c.sock,
            Conn::Link(l) => &mut l.sock,
        }
    }
}

/// How a reactor waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep.
    Busy,
    /// Spin for `spin` after the last work, then sleep until woken.
    Hybrid {
        /// How long to keep spinning.
        spin: Duration,
    },
}

/// A request of a connection on this reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqRef {
    /// Connection slot.
    pub conn: u32,
    /// Request slot.
    pub req: u16,
}

impl ReqRef {
    fn tag(self, parity: u8) -> u64 {
        (u64::from(parity) << 63) | (u64::from(self.conn) << 16) | u64::from(self.req)
    }

    fn from_tag(tag: u64) -> (ReqRef, u8) {
        let r = ReqRef { conn: ((tag >> 16) & 0xffff_ffff) as u32, req: (tag & 0xffff) as u16 };
        (r, (tag >> 63) as u8)
    }
}

/// What a reactor holds for one volume.
pub struct VolumeEntry {
    /// Facts and page table.
    pub view: Arc<VolumeView>,
    /// Routing table.
    pub routing: Arc<RoutingTable>,
    /// This reactor's counters.
    pub counters: Arc<VolumeCounters>,
    /// Every reactor's counters for the volume (SMART log).
    pub all_counters: Arc<[Arc<VolumeCounters>]>,
    /// This reactor's per-page load counters (`volume::load`).
    pub load: Arc<crate::volume::load::PageCounters>,
}

/// A handle to send a reactor messages.
#[derive(Clone)]
pub struct ReactorHandle {
    /// Inbound ring.
    pub inbox: Arc<ArrayQueue<ReactorMsg>>,
    /// Wakes the reactor's poller.
    pub waker: Arc<Waker>,
    /// The reactor's counters.
    pub stats: Arc<ReactorStats>,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
}

impl ReactorHandle {
    /// Puts a message on the reactor's ring and wakes it; a full ring gives the
    /// message back, for the sender to keep and offer again (see `msg`: nothing is
    /// dropped, nobody spins).
    pub fn try_send(&self, msg: ReactorMsg) -> Result<(), ReactorMsg> {
        let res = self.inbox.push(msg);
        let _ = self.waker.wake();
        res
    }
}

/// Grace periods: a generation is finished once every device request submitted before
/// it started has completed (requests carry the parity of the generation they were
/// submitted in).
#[derive(Default)]
struct Barrier {
    parity: u8,
    inflight: [u64; 2],
    draining: Option<(u64, u8)>,
    queued: VecDeque<u64>,
}

/// A reactor's map of volumes, looked up several times per I/O: keyed by a small
/// integer that this peer assigns, so hashed with FxHash rather than SipHash (whose
/// resistance to chosen keys buys nothing here and costs a few dozen ns per lookup).
pub type VolumeMap<V> = HashMap<VolumeId, V, rustc_hash::FxBuildHasher>;

/// Everything the request machinery of one reactor needs.
pub struct ReactorCtx {
    /// Reactor number.
    pub id: usize,
    /// The device queue pair.
    pub dev: Box<dyn QueuePair>,
    /// Device block size.
    pub dev_block_size: u64,
    /// Deallocated device blocks read back as zeroes.
    pub dev_dealloc_zeroes: bool,
    /// Buffer shard.
    pub pool: PoolShard,
    /// Volumes by id.
    pub volumes: VolumeMap<VolumeEntry>,
    /// Subsystems and controllers.
    pub registry: Arc<Registry>,
    /// Counters.
    pub stats: Arc<ReactorStats>,
    /// Requests waiting for buffers, in arrival order.
    pub buf_waiters: VecDeque<ReqRef>,
    /// Requests waiting for room in the device queue.
    pub dev_waiters: VecDeque<ReqRef>,
    /// The device request being built: reused for every part, so that no 800-byte
    /// request is built or copied per I/O (set it up with [`ReactorCtx::prepare`]).
    pub dev_req: IoRequest,
    /// When the reactor started (power-on hours).
    pub started: Instant,
    /// Alignment the device wants of segment addresses and lengths.
    pub dev_memory_align: u64,
    control: Sender<ControlMsg>,
    /// Messages the control channel could not take yet (at most the credits plus one
    /// barrier answer), in order.
    control_backlog: VecDeque<ControlMsg>,
    /// Allocations and frees this reactor may still ask for.
    control_credits: u32,
    /// Its credits in all (`reactors.control_credits`).
    credits_max: u32,
    /// Allocations and frees waiting for a credit, in order (at most one per part of
    /// the requests this reactor serves).
    credit_waiters: VecDeque<ControlMsg>,
    alloc_waiters: HashMap<(VolumeId, u64), Vec<ReqRef>>,
    free_waiters: HashMap<u64, ReqRef>,
    next_cookie: u64,
    barrier: Barrier,
    /// This reactor's links to the other peers of the group (empty for a single peer).
    pub links: Links,
    /// The pool buffers inbound peer links draw from, apart from the hosts' (see
    /// `peer`: no deadlock between peers forwarding to each other).
    pub link_pool: Option<PoolShard>,
    /// Forwarded parts whose owner did not take them, to route again after a pause.
    reroutes: Vec<(Instant, Forward)>,
    /// This peer's right to serve replicated pages (`replica::fence`).
    pub fence: Arc<crate::replica::fence::Fence>,
    /// Requests waiting for the right to order a replicated write (`WaitingOrder`),
    /// tried again on every pass.
    pub order_waiters: VecDeque<ReqRef>,
    /// Requests over their volume's limits (`WaitingQos`), soonest first.
    pub qos_waiters: std::collections::BinaryHeap<QosWaiter>,
}

/// A request waiting for its volume's limits (`volume::qos`) to admit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosWaiter {
    /// When it may go.
    pub at: Instant,
    /// The request.
    pub rref: ReqRef,
    /// Its volume (a volume whose limits are lifted lets its requests go at once).
    pub volume: VolumeId,
}

impl Ord for QosWaiter {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the soonest first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.rref.conn, other.rref.req).cmp(&(self.at, self.rref.conn, self.rref.req))
    }
}

impl PartialOrd for QosWaiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl ReactorCtx {
    /// How long I/O for an unreachable page owner is held.
    pub fn hold(&self) -> Duration {
        self.links.directory().map_or(HOLD_DEFAULT, |d| d.hold)
    }

    /// Routes part `f` again at the reactor's next pass, with its newest table.
    pub fn route_again(&mut self, f: Forward) {
        self.reroutes.push((Instant::now(), f));
    }

    /// Sends a part to the peer that owns its page.
    pub fn forward(&mut self, peer: PeerId, mut f: Forward) {
        f.to = peer;
        self.links.forward(peer, f);
    }

    /// Starts a new device request in `dev_req`: operation, range, no segments yet.
    #[inline]
    pub fn prepare(&mut self, op: quire_drivers::Op, lba: u64, num_blocks: u32) {
        self.dev_req.op = op;
        self.dev_req.lba = lba;
        self.dev_req.num_blocks = num_blocks;
        self.dev_req.nsegs = 0;
    }

    /// Submits the request prepared in `dev_req` for `rref`; the buffers it names belong
    /// to that request, which stays out of `Free` until the completion arrives.
    pub fn submit_prepared(&mut self, rref: ReqRef) -> Result<(), SubmitError> {
        self.dev_req.tag = rref.tag(self.barrier.parity);
        // SAFETY: the segments point into pool buffers owned by request `rref`. A request
        // with device parts outstanding stays in `Executing`/`WaitingDevice`, and its
        // connection keeps it (and its buffers) until the completion is polled, even
        // while closing (`TcpQpair::maybe_closed`), so the memory outlives the device's
        // use of it and nobody else touches it meanwhile.
        let res = unsafe { self.dev.submit(&self.dev_req) };
        if res.is_ok() {
            self.barrier.inflight[usize::from(self.barrier.parity)] += 1;
            add(&self.stats.device_requests, 1);
        }
        res
    }

    /// Parks `rref` until page `page` of `volume` is allocated.
    pub fn alloc_wait(&mut self, volume: VolumeId, page: u64, rref: ReqRef) {
        let waiters = self.alloc_waiters.entry((volume, page)).or_default();
        let first = waiters.is_empty();
        waiters.push(rref);
        if first {
            self.send_credited(ControlMsg::Alloc { reactor: self.id, volume, page });
        }
    }

    /// Asks the control thread to free whole `page` of `volume` for `rref`.
    pub fn free_wait(&mut self, volume: VolumeId, page: u64, rref: ReqRef) {
        self.next_cookie += 1;
        let cookie = self.next_cookie;
        self.free_waiters.insert(cookie, rref);
        self.send_credited(ControlMsg::Free { reactor: self.id, volume, page, cookie });
    }

    /// Sends an allocation or free, or keeps it until an answer returns a credit.
    fn send_credited(&mut self, msg: ControlMsg) {
        if self.control_credits == 0 {
            add(&self.stats.credit_waits, 1);
            self.credit_waiters.push_back(msg);
            return;
        }
        self.control_credits -= 1;
        self.send_control(msg);
    }

    /// An answer came back: its credit goes to the oldest message waiting for one.
    fn credit_returned(&mut self) {
        self.control_credits += 1;
        assert!(self.control_credits <= self.credits_max, "more answers than requests");
        if let Some(m) = self.credit_waiters.pop_front() {
            self.control_credits -= 1;
            self.send_control(m);
        }
    }

    fn send_control(&mut self, msg: ControlMsg) {
        if !self.control_backlog.is_empty() {
            self.control_backlog.push_back(msg);
            return;
        }
        match self.control.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(m)) => self.control_backlog.push_back(m),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn flush_control_backlog(&mut self) {
        while let Some(m) = self.control_backlog.pop_front() {
            match self.control.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    self.control_backlog.push_front(m);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    fn barrier_start(&mut self, generation: u64) {
        if self.barrier.draining.is_some() {
            self.barrier.queued.push_back(generation);
            return;
        }
        let old = self.barrier.parity;
        self.barrier.parity ^= 1;
        self.barrier.draining = Some((generation, old));
    }

    fn barrier_check(&mut self) {
        let Some((generation, old)) = self.barrier.draining else { return };
        if self.barrier.inflight[usize::from(old)] != 0 {
            return;
        }
        self.barrier.draining = None;
        self.send_control(ControlMsg::BarrierDone { reactor: self.id, generation });
        if let Some(next) = self.barrier.queued.pop_front() {
            self.barrier_start(next);
        }
    }
}

/// Parts a reactor is built from (see `serve`).
pub struct ReactorParts {
    /// Reactor number.
    pub id: usize,
    /// Core to pin to.
    pub core: Option<usize>,
    /// Poll mode.
    pub mode: PollMode,
    /// Device queue pair.
    pub dev: Box<dyn QueuePair>,
    /// Device block size.
    pub dev_block_size: u64,
    /// Deallocated blocks read zeroes.
    pub dev_dealloc_zeroes: bool,
    /// Buffer shard.
    pub pool: PoolShard,
    /// Registry.
    pub registry: Arc<Registry>,
    /// Channel to the control thread.
    pub control: Sender<ControlMsg>,
    /// Listeners to accept on; only one reactor has them.
    pub listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    /// Alignment the device wants of segment addresses and lengths.
    pub dev_memory_align: u32,
    /// Buffers for inbound peer links (a group peer).
    pub link_pool: Option<PoolShard>,
    /// Allocations and frees it may have outstanding at the control thread.
    pub control_credits: u32,
    /// This peer's right to serve replicated pages.
    pub fence: Arc<crate::replica::fence::Fence>,
}

/// A reactor, ready to run on its thread.
pub struct Reactor {
    ctx: ReactorCtx,
    poll: Poll,
    inbox: Arc<ArrayQueue<ReactorMsg>>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<u32>,
    listeners: Vec<(mio::net::TcpListener, ListenerKind)>,
    peers: Vec<ReactorHandle>,
    next_peer: usize,
    /// Accepted connections another reactor's full ring could not take yet.
    handoffs: VecDeque<(usize, std::net::TcpStream, ListenerKind)>,
    mode: PollMode,
    core: Option<usize>,
    last_work: Instant,
    last_tick: Instant,
    completions: Vec<quire_drivers::Completion>,
    /// The other half of the outbound links' answer list (see `deliver_forwards`).
    spare_finished: Vec<Finished>,
    /// Copy jobs of the rebuild driver (this peer leads the pages).
    copier: crate::replica::copier::Copier,
}

impl Reactor {
    /// Builds a reactor and the handle others use to reach it.
    pub fn new(parts: ReactorParts) -> std::io::Result<(Reactor, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), TOKEN_WAKER)?);
        let inbox = Arc::new(ArrayQueue::new(msg::inbox_capacity(parts.control_credits)));
        let stats = Arc::new(ReactorStats::default());
        if let Some(fd) = parts.dev.completion_fd() {
            poll.registry().register(&mut mio::unix::SourceFd(&fd), TOKEN_DEVICE, Interest::READABLE)?;
        }
        let mut listeners = Vec::new();
        for (i, (l, disc)) in parts.listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let mut l = mio::net::TcpListener::from_std(l);
            poll.registry().register(&mut l, Token(TOKEN_LISTENER_BASE + i), Interest::READABLE)?;
            listeners.push((l, disc));
        }
        let handle = ReactorHandle { inbox: inbox.clone(), waker, stats: stats.clone(), core: parts.core };
        let ctx = ReactorCtx {
            id: parts.id,
            dev: parts.dev,
            dev_block_size: parts.dev_block_size,
            dev_dealloc_zeroes: parts.dev_dealloc_zeroes,
            pool: parts.pool,
            volumes: VolumeMap::default(),
            registry: parts.registry,
            stats,
            buf_waiters: VecDeque::new(),
            dev_waiters: VecDeque::new(),
            dev_req: IoRequest::no_data(quire_drivers::Op::Flush, 0, 0, 0),
            started: Instant::now(),
            dev_memory_align: u64::from(parts.dev_memory_align.max(1)),
            control: parts.control,
            control_backlog: VecDeque::new(),
            control_credits: parts.control_credits,
            credits_max: parts.control_credits,
            credit_waiters: VecDeque::new(),
            alloc_waiters: HashMap::new(),
            free_waiters: HashMap::new(),
            next_cookie: 0,
            barrier: Barrier::default(),
            links: Links::default(),
            link_pool: parts.link_pool,
            reroutes: Vec::new(),
            fence: parts.fence,
            order_waiters: VecDeque::new(),
            qos_waiters: Default::default(),
        };
        let reactor = Reactor {
            ctx,
            poll,
            inbox,
            conns: Vec::new(),
            free_conns: Vec::new(),
            listeners,
            peers: Vec::new(),
            next_peer: 0,
            handoffs: VecDeque::new(),
            mode: parts.mode,
            core: parts.core,
            last_work: Instant::now(),
            last_tick: Instant::now(),
            completions: Vec::with_capacity(COMPLETIONS_MAX),
            spare_finished: Vec::new(),
            copier: crate::replica::copier::Copier::default(),
        };
        Ok((reactor, handle))
    }

    /// Gives the accepting reactor the handles of all reactors (itself included), to
    /// spread connections across them.
    pub fn set_peers(&mut self, peers: Vec<ReactorHandle>) {
        self.peers = peers;
    }

    /// Runs the poll loop until told to stop.
    pub fn run(mut self) {
        if let Some(core) = self.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::warn!(reactor = self.ctx.id, core, "could not pin the reactor to its core");
            }
        }
        tracing::info!(reactor = self.ctx.id, core = ?self.core, mode = ?self.mode, "reactor running");
        let mut events = Events::with_capacity(1024);
        let mut iteration: u32 = 0;
        loop {
            let timeout = self.timeout();
            // A sleep is timed (two clock reads, next to a system call that sleeps);
            // a busy poll is not.
            let asleep = (timeout != Some(Duration::ZERO)).then(Instant::now);
            if asleep.is_some() {
                add(&self.ctx.stats.sleeps, 1);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("poll failed: {e}");
                }
            }
            if let Some(t) = asleep {
                add(&self.ctx.stats.sleep_ns, u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            let mut work = !events.is_empty();
            for ev in events.iter() {
                self.on_event(ev);
            }
            match self.drain_inbox() {
                None => break,
                Some(w) => work |= w,
            }
            work |= self.hand_off();
            work |= self.receive_all();
            work |= self.poll_device();
            work |= self.retry_waiters();
            work |= self.links_turn();
            self.flush_all();
            self.ctx.dev.kick();
            self.ctx.flush_control_backlog();
            self.ctx.barrier_check();
            add(&self.ctx.stats.polls, 1);
            if work {
                add(&self.ctx.stats.busy_polls, 1);
            }
            // Reading the clock costs as much as a small request; a busy reactor looks
            // at it every CLOCK_EVERY iterations, a hybrid one every time (it needs the
            // time of the last work to decide when to sleep).
            iteration = iteration.wrapping_add(1);
            if self.mode != PollMode::Busy || iteration.is_multiple_of(CLOCK_EVERY) {
                let now = Instant::now();
                if work {
                    self.last_work = now;
                }
                if now.duration_since(self.last_tick) >= TICK {
                    self.tick();
                }
            }
        }
        self.drain_device();
        tracing::info!(reactor = self.ctx.id, "reactor stopped");
    }

    /// At shutdown: waits (bounded) for the device to finish what it was given, so that
    /// no request's memory goes away under a device still working on it. Completions
    /// are only counted; the hosts are gone.
    fn drain_device(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        self.ctx.dev.kick();
        while self.ctx.dev.outstanding() > 0 {
            if Instant::now() >= deadline {
                tracing::error!(
                    reactor = self.ctx.id,
                    outstanding = self.ctx.dev.outstanding(),
                    "device requests still out at shutdown"
                );
                return;
            }
            if self.ctx.dev.poll(COMPLETIONS_MAX, &mut |_| {}) == 0 {
                std::thread::sleep(DEVICE_NAP);
            }
        }
    }

    fn timeout(&self) -> Option<Duration> {
        let spin = match self.mode {
            PollMode::Busy => return Some(Duration::ZERO),
            PollMode::Hybrid { spin } => spin,
        };
        let pending_local = !self.handoffs.is_empty()
            || !self.ctx.buf_waiters.is_empty()
            || !self.ctx.dev_waiters.is_empty()
            || !self.ctx.control_backlog.is_empty()
            || !self.ctx.links.finished.is_empty()
            || self.ctx.links.wants_poll(Instant::now())
            || self.conns.iter().flatten().any(|c| match c {
                Conn::Host(c) => c.rx.staged_len() > 0 && c.rx.can_progress() || c.wants_flush(),
                Conn::Link(l) => l.wants_flush() || l.may_unstall(&self.ctx),
            });
        if pending_local || self.last_work.elapsed() < spin {
            return Some(Duration::ZERO);
        }
        let nap = if !self.ctx.order_waiters.is_empty() || !self.ctx.reroutes.is_empty() || self.copier.busy() {
            // Pieces another reactor holds come back within a device round trip.
            ORDER_NAP
        } else if self.ctx.dev.outstanding() > 0 && self.ctx.dev.completion_fd().is_none() {
            DEVICE_NAP
        } else {
            TICK
        };
        // No later than the soonest request over its limits may go.
        let qos = self.ctx.qos_waiters.peek().map_or(nap, |w| w.at.saturating_duration_since(Instant::now()));
        Some(nap.min(qos))
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        match ev.token() {
            TOKEN_WAKER | TOKEN_DEVICE => {}
            Token(t) if t >= TOKEN_LISTENER_BASE => self.accept(t - TOKEN_LISTENER_BASE),
            t if t.0 >= crate::peer::client::LINK_TOKEN_BASE => {
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.ctx.links.on_event(t, readable, ev.is_writable() || ev.is_write_closed());
            }
            Token(t) => {
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                match self.conns.get_mut(t) {
                    Some(Some(Conn::Host(c))) => {
                        if readable {
                            c.rx.readable = true;
                        }
                        if ev.is_error() {
                            // Zero-copy completions wait on the socket's error queue.
                            c.tx.zc_ready = true;
                        }
                        if ev.is_writable() {
                            c.tx.blocked = false;
                        }
                    }
                    Some(Some(Conn::Link(l))) => {
                        if readable {
                            l.readable = true;
                        }
                        if ev.is_writable() {
                            l.on_writable();
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn accept(&mut self, i: usize) {
        loop {
            let (stream, peer) = match self.listeners[i].0.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            let kind = self.listeners[i].1;
            let _ = stream.set_nodelay(true);
            // SAFETY-free conversion: mio hands out its own type; reactors take std streams.
            let std_stream: std::net::TcpStream = stream.into();
            tracing::debug!(%peer, ?kind, "accepted connection");
            if self.peers.is_empty() {
                self.add_connection(std_stream, kind);
            } else {
                let target = self.next_peer % self.peers.len();
                self.next_peer += 1;
                self.handoffs.push_back((target, std_stream, kind));
            }
        }
    }

    /// Hands accepted connections to their reactors (this one's own are added at
    /// once); a full ring keeps the rest for the next loop, in order.
    fn hand_off(&mut self) -> bool {
        let mut work = false;
        while let Some((target, stream, kind)) = self.handoffs.pop_front() {
            work = true;
            if target == self.ctx.id {
                self.add_connection(stream, kind);
                continue;
            }
            if let Err(ReactorMsg::NewConnection(stream, kind)) =
                self.peers[target].try_send(ReactorMsg::NewConnection(stream, kind))
            {
                self.handoffs.push_front((target, stream, kind));
                break;
            }
        }
        work
    }

    fn add_connection(&mut self, stream: std::net::TcpStream, kind: ListenerKind) {
        let Ok(peer) = stream.peer_addr() else { return };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let index = match self.free_conns.pop() {
            Some(i) => i,
            None if self.conns.len() < CONNS_MAX => {
                self.conns.push(None);
                u32::try_from(self.conns.len() - 1).expect("CONNS_MAX fits a u32")
            }
            None => {
                tracing::warn!(%peer, "reactor {} has {CONNS_MAX} connections; refusing", self.ctx.id);
                return;
            }
        };
        let mut sock = mio::net::TcpStream::from_std(stream);
        if let Err(e) =
            self.poll.registry().register(&mut sock, Token(index as usize), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(%peer, "cannot poll the connection: {e}");
            self.free_conns.push(index);
            return;
        }
        self.conns[index as usize] = Some(match kind {
            ListenerKind::Link => Conn::Link(LinkServer::new(index, sock, peer, &self.ctx)),
            ListenerKind::Io | ListenerKind::Discovery => {
                Conn::Host(TcpQpair::new(index, sock, peer, kind == ListenerKind::Discovery, &self.ctx))
            }
        });
        add(&self.ctx.stats.connections, 1);
    }

    /// Handles inbound messages; `None` means stop.
    fn drain_inbox(&mut self) -> Option<bool> {
        let mut work = false;
        while let Some(m) = self.inbox.pop() {
            work = true;
            match m {
                ReactorMsg::NewConnection(s, kind) => self.add_connection(s, kind),
                ReactorMsg::PeersUpdated(dir) => self.ctx.links.set_directory(dir, Instant::now()),
                ReactorMsg::VolumeUpdated { view, routing, counters, all_counters, load } => {
                    let id = view.info.id;
                    self.ctx.volumes.insert(id, VolumeEntry { view, routing, counters, all_counters, load });
                    // Parts still waiting for a link may belong elsewhere now (a new
                    // leader, a member evicted): route them again with this table.
                    let mut unsent = Vec::new();
                    self.ctx.links.take_unsent(id, &mut unsent);
                    let now = Instant::now();
                    self.ctx.reroutes.extend(unsent.into_iter().map(|f| (now, f)));
                }
                ReactorMsg::VolumeRemoved(id) => {
                    self.ctx.volumes.remove(&id);
                }
                ReactorMsg::AllocDone { volume, page, result } => {
                    self.ctx.credit_returned();
                    let waiters = self.ctx.alloc_waiters.remove(&(volume, page));
                    for w in waiters.expect("an allocation answer has its waiters") {
                        // A request that waits for an answer keeps its connection open.
                        let c = self.conns[w.conn as usize].as_mut().expect("a waiting request's connection lives");
                        c.on_alloc_done(w.req, result.map(|_| ()), &mut self.ctx);
                    }
                }
                ReactorMsg::FreeDone { cookie, result } => {
                    self.ctx.credit_returned();
                    let w = self.ctx.free_waiters.remove(&cookie).expect("a free answer has its waiter");
                    let c = self.conns[w.conn as usize].as_mut().expect("a waiting request's connection lives");
                    c.on_free_done(w.req, result, &mut self.ctx);
                }
                ReactorMsg::Barrier(g) => self.ctx.barrier_start(g),
                ReactorMsg::Copy(job) => self.copier.start(job),
                ReactorMsg::Shutdown => return None,
            }
        }
        Some(work)
    }

    fn receive_all(&mut self) -> bool {
        let mut work = false;
        for c in self.conns.iter_mut().flatten() {
            match c {
                Conn::Host(c) => {
                    if c.rx.may_unstarve(&self.ctx.pool) {
                        c.rx.starved = false;
                    }
                    if c.rx.can_progress() && matches!(c.state(), ConnState::AwaitingICReq | ConnState::Ready) {
                        let before = c.rx.staged_len();
                        c.receive(&mut self.ctx);
                        work |= c.rx.readable || before != c.rx.staged_len();
                    }
                }
                Conn::Link(l) => {
                    if l.may_receive(&self.ctx) {
                        l.receive(&mut self.ctx);
                        work = true;
                    }
                }
            }
        }
        work
    }

    fn poll_device(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.completions);
        self.ctx.dev.poll(COMPLETIONS_MAX, &mut |c| done.push(c));
        let work = !done.is_empty();
        for c in done.drain(..) {
            let (rref, parity) = ReqRef::from_tag(c.tag);
            let n = &mut self.ctx.barrier.inflight[usize::from(parity)];
            assert!(*n > 0, "completion for a request that was never counted");
            *n -= 1;
            if rref.conn == crate::replica::copier::COPIER_CONN {
                self.copier.on_device_completion(rref.req, c.result, &mut self.ctx);
                continue;
            }
            let conn = self.conns.get_mut(rref.conn as usize).and_then(Option::as_mut);
            let conn = conn.expect("a connection lives until its device I/O has come home");
            conn.on_device_completion(rref.req, c.result, &mut self.ctx);
        }
        self.completions = done;
        work
    }

    /// Requests parked on a full device queue or an empty pool try again. A request is
    /// in one of these lists exactly while it is in `WaitingDevice` / `NeedBuffer`
    /// (a closing connection takes its own out).
    fn retry_waiters(&mut self) -> bool {
        let mut work = false;
        for _ in 0..self.ctx.dev_waiters.len() {
            let Some(w) = self.ctx.dev_waiters.pop_front() else { break };
            let c = self.conns[w.conn as usize].as_mut().expect("a parked request's connection lives");
            c.resume_device(w.req, &mut self.ctx);
            work = true;
        }
        // Writes waiting for pieces: each tries once per pass (one that finds them
        // taken again goes to the back). Not counted as work: a reactor whose writes
        // wait on another reactor's naps instead of spinning.
        for _ in 0..self.ctx.order_waiters.len() {
            let Some(w) = self.ctx.order_waiters.pop_front() else { break };
            let c = self.conns[w.conn as usize].as_mut().expect("a parked request's connection lives");
            c.resume_device(w.req, &mut self.ctx);
        }
        if !self.ctx.qos_waiters.is_empty() {
            let now = Instant::now();
            while let Some(w) = self.ctx.qos_waiters.peek().copied() {
                let lifted = self.ctx.volumes.get(&w.volume).is_none_or(|v| !v.view.qos.active());
                if w.at > now && !lifted {
                    break;
                }
                self.ctx.qos_waiters.pop();
                let c = self.conns[w.rref.conn as usize].as_mut().expect("a parked request's connection lives");
                c.host().resume_qos(w.rref.req, &mut self.ctx);
                work = true;
            }
        }
        if self.copier.busy() || !self.copier.reports.is_empty() {
            work |= self.copier.poll(&mut self.ctx);
            for r in self.copier.reports.drain(..) {
                self.ctx.send_control(ControlMsg::CopyDone(r));
            }
        }
        while self.ctx.pool.available() > 0 {
            let Some(w) = self.ctx.buf_waiters.pop_front() else { break };
            let before = self.ctx.buf_waiters.len();
            let c = self.conns[w.conn as usize].as_mut().expect("a parked request's connection lives");
            c.host().resume_buffers(w.req, &mut self.ctx);
            work = true;
            if self.ctx.buf_waiters.len() > before {
                // It went back to the queue: not enough buffers yet.
                break;
            }
        }
        work
    }

    fn flush_all(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            match c {
                Conn::Host(c) => {
                    if c.wants_flush() {
                        c.flush(&mut self.ctx);
                    }
                    if c.state() == ConnState::Draining {
                        c.maybe_closed(&mut self.ctx);
                    }
                }
                Conn::Link(l) => {
                    if l.wants_flush() {
                        l.flush(&mut self.ctx);
                    }
                }
            }
        }
    }

    fn tick(&mut self) {
        self.last_tick = Instant::now();
        let active: u64 = self.conns.iter().flatten().map(|c| u64::from(c.active_requests())).sum();
        let forwards = u64::try_from(self.ctx.links.outstanding()).unwrap_or(u64::MAX);
        let st = &self.ctx.stats;
        st.requests_active.store(active, std::sync::atomic::Ordering::Relaxed);
        st.forwards_outstanding.store(forwards, std::sync::atomic::Ordering::Relaxed);
        for (peer, up, outstanding, ls) in self.ctx.links.report() {
            if let Some(c) = st.links.0.get(usize::from(peer.0)) {
                let set = |a: &std::sync::atomic::AtomicU64, v: u64| a.store(v, std::sync::atomic::Ordering::Relaxed);
                set(&c.up, u64::from(up));
                set(&c.outstanding, u64::try_from(outstanding).unwrap_or(u64::MAX));
                set(&c.forwarded, ls.forwarded);
                set(&c.held_out, ls.held_out);
                set(&c.connects, ls.connects);
                set(&c.tx_bytes, ls.tx_bytes);
                set(&c.rx_bytes, ls.rx_bytes);
            }
        }
        let closing = self.conns.iter().flatten().filter(|c| c.is_closing()).count();
        st.connections_closing.store(closing as u64, std::sync::atomic::Ordering::Relaxed);
        st.buffers_free.store(self.ctx.pool.available() as u64, std::sync::atomic::Ordering::Relaxed);
        st.buffers_total.store(self.ctx.pool.total() as u64, std::sync::atomic::Ordering::Relaxed);
        let now = self.last_tick;
        self.ctx.links.tick(self.poll.registry(), now);
        self.reroute_due(now);
        self.deliver_forwards();
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else { continue };
            match c {
                Conn::Host(c) => c.tick(&mut self.ctx),
                Conn::Link(l) => l.tick(&mut self.ctx),
            }
            if c.is_closed() {
                let mut c = self.conns[i].take().expect("checked above");
                if let Conn::Host(h) = &mut c {
                    h.on_closed(&self.ctx);
                }
                let _ = self.poll.registry().deregister(c.sock());
                let index = u32::try_from(i).expect("at most CONNS_MAX connections");
                self.free_conns.push(index);
                self.ctx.stats.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                // Nothing may refer to the slot any more: its next connection would get
                // the old one's answers.
                let mine = |w: &ReqRef| w.conn == index;
                assert!(!self.ctx.buf_waiters.iter().any(mine) && !self.ctx.dev_waiters.iter().any(mine));
                assert!(!self.ctx.qos_waiters.iter().any(|w| mine(&w.rref)));
                debug_assert!(!self.ctx.alloc_waiters.values().flatten().any(mine));
                debug_assert!(!self.ctx.free_waiters.values().any(mine));
            }
        }
    }

    /// Drives the outbound peer links and completes the host parts they answered.
    fn links_turn(&mut self) -> bool {
        let work = self.ctx.links.poll(self.poll.registry(), Instant::now());
        let delivered = self.deliver_forwards();
        work || delivered
    }

    /// Hands every answered forward to its host request; parts the owner did not take
    /// wait to be routed again.
    fn deliver_forwards(&mut self) -> bool {
        let mut work = false;
        while !self.ctx.links.finished.is_empty() {
            work = true;
            // Swapped with a spare list that keeps its capacity: no allocation per pass.
            let mut batch = std::mem::take(&mut self.spare_finished);
            std::mem::swap(&mut batch, &mut self.ctx.links.finished);
            for f in batch.drain(..) {
                match f {
                    Finished::Done(rref, result) if rref.conn == crate::replica::copier::COPIER_CONN => {
                        self.copier.on_forward_done(rref.req, result, &mut self.ctx);
                    }
                    Finished::Done(rref, result) => {
                        let c =
                            self.conns[rref.conn as usize].as_mut().expect("a forwarding request's connection lives");
                        // Counted where a host sees it: a peer link's part goes back to
                        // the peer that sent it (which counts it if its host gets it),
                        // or to the new leader when this one lost the page's lead.
                        if result == Err(PATH_ERROR) && matches!(c, Conn::Host(_)) {
                            add(&self.ctx.stats.path_errors, 1);
                        }
                        c.on_forward_done(rref.req, result, &mut self.ctx);
                    }
                    Finished::Reroute(fwd) => self.ctx.reroutes.push((Instant::now() + REROUTE_DELAY, *fwd)),
                    Finished::LostLead(fwd) => {
                        let c = self.conns[fwd.rref.conn as usize].as_mut().expect("a host write's connection lives");
                        c.host().on_lost_lead(fwd, &mut self.ctx);
                    }
                    Finished::Digest { rref, from: _, result } if rref.conn == crate::replica::copier::COPIER_CONN => {
                        self.copier.on_digest(rref.req, result, &mut self.ctx);
                    }
                    Finished::Digest { rref, from, result } => {
                        let c =
                            self.conns[rref.conn as usize].as_mut().expect("a forwarding request's connection lives");
                        c.on_digest(rref.req, from, result, &mut self.ctx);
                    }
                }
            }
            self.spare_finished = batch;
        }
        work
    }

    /// Routes again, with the reactor's newest table, the parts whose owner did not
    /// take them (or that waited for a link when the table changed): to the peer it
    /// names now, or back to the host to retry when the page is this peer's now; past
    /// its hold time, a part ends with a path error. A leader's replica write goes to
    /// its member again while the member still takes writes; once the member is
    /// evicted, the write completes without it and its pieces are marked as missed.
    fn reroute_due(&mut self, now: Instant) {
        if self.ctx.reroutes.is_empty() {
            return;
        }
        let (due, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.ctx.reroutes).into_iter().partition(|(at, _)| *at <= now);
        self.ctx.reroutes = wait;
        use crate::peer::proto::Op;
        for (_, mut f) in due {
            let Some(v) = self.ctx.volumes.get(&f.volume).filter(|v| f.page < v.routing.len()) else {
                // Deleted (or shrunk away) meanwhile.
                let s = quire_wire::nvme::Status::INVALID_NAMESPACE.with_dnr();
                self.ctx.links.finished.push(Finished::Done(f.rref, Err(s)));
                continue;
            };
            if now >= f.deadline {
                self.ctx.links.finished.push(Finished::Done(f.rref, Err(PATH_ERROR)));
                continue;
            }
            if f.replica {
                let set = v.routing.set_of(f.page);
                // (The copier's connection is no host connection: its copies fail
                // and the copy is tried again.)
                let host_write = matches!(f.op, Op::Write | Op::WriteZeroes | Op::Deallocate)
                    && matches!(self.conns.get(f.rref.conn as usize), Some(Some(Conn::Host(_))));
                if !set.leads_here() && host_write {
                    // No longer this peer's set to lead (a move cut over while the
                    // write was being replicated): the host's part goes to the new
                    // leader, which orders it and sends it to every member, this
                    // peer's copy included; the host sees no error.
                    self.ctx.links.finished.push(Finished::LostLead(Box::new(f)));
                } else if !set.leads_here() {
                    // No longer this peer's set to lead: the sender tries again (at
                    // the new leader, through any path).
                    self.ctx.links.finished.push(Finished::Done(f.rref, Err(PATH_ERROR)));
                } else if set.takes_writes(f.to) {
                    f.epoch = v.routing.epoch;
                    self.ctx.forward(f.to, f);
                } else if matches!(f.op, Op::Write | Op::WriteZeroes | Op::Deallocate) {
                    // The member was evicted: the write is complete without it.
                    if let Some(slot) = set.slot_of(f.to) {
                        let bpp = v.view.info.blocks_per_page();
                        let mask = crate::replica::locks::Pieces::of(bpp).mask(f.lba % bpp, u64::from(f.nlb));
                        v.view.pieces.mark_missed(f.page, 1 << slot, mask);
                    }
                    add(&self.ctx.stats.replica_skipped, 1);
                    self.ctx.links.finished.push(Finished::Done(f.rref, Ok(())));
                } else {
                    let s = quire_wire::nvme::Status::ABORTED_BY_REQUEST;
                    self.ctx.links.finished.push(Finished::Done(f.rref, Err(s)));
                }
                continue;
            }
            let route = match f.op {
                Op::Flush if v.routing.remote_peers().contains(&f.to) => Route::Remote(f.to),
                // The peer holds no copy any more: nothing of it to make durable.
                Op::Flush => {
                    self.ctx.links.finished.push(Finished::Done(f.rref, Ok(())));
                    continue;
                }
                Op::Read => v.routing.read_route(f.page),
                _ => v.routing.write_route(f.page),
            };
            match route {
                Route::Remote(peer) => {
                    f.epoch = v.routing.epoch;
                    self.ctx.forward(peer, f);
                }
                // The page is this peer's to serve now (its table changed while the
                // part waited, e.g. the set's leader died and this peer leads it): the
                // part goes through this peer's own link server, which orders and
                // replicates it like any forwarded part; the host sees no error.
                Route::Local => {
                    f.epoch = v.routing.epoch;
                    f.to = v.routing.local;
                    self.ctx.forward(v.routing.local, f);
                }
                Route::Hold => self.ctx.reroutes.push((now + REROUTE_DELAY, f)),
            }
        }
    }

    /// Describes the connections (management).
    pub fn id(&self) -> usize {
        self.ctx.id
    }
}
