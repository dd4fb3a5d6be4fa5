//! Volume I/O: a command's range split at page boundaries, each part routed to where
//! its page lives and executed there.
//!
//! The NVMe target (`nvmf::io`) decodes and checks a host's command and hands its
//! range here; a peer link's server (`peer::server`) hands the part another peer
//! forwarded. For each part ([`crate::volume::split`]):
//! - a page another peer owns (host I/O only): the part is forwarded to the owner over
//!   this reactor's link ([`crate::peer::client`]), with the segments of the request's
//!   own buffers (no copy), and counted in `fwd_inflight`;
//! - a page of this peer's store: the part goes to the page's slot on the device,
//!   pointing the device at the part's slice of the request's pool buffers. Pages never
//!   written read as zeroes without a device access; the first write to a page first
//!   asks the control thread to allocate its slot (the request waits in
//!   `WaitingControl`); Write Zeroes and Deallocate covering a whole page give it back.
//!   When the device queue is full, the request parks in `WaitingDevice` and resumes
//!   where it stopped (`Req::cursor`).
//!
//! A flush goes to this peer's device and, for host I/O, to every other peer that holds
//! copies of the volume's pages: writes the host saw complete may sit in their write
//! caches.
//!
//! Replicated pages (`replica`): a write goes to the leader of the page's set; the
//! leader takes the pieces it covers (`WaitingOrder` while another write holds one),
//! applies it to its own device and sends it, with the same buffers, to every other
//! member that takes writes (`Origin::Replica` there: applied locally, never sent on);
//! the command completes when all of them have. Reads are served here when this peer
//! is an in-sync member. Both need this peer's lease (`replica::fence`): without it the
//! command ends with a retryable path error, for the host to use another path.
//!
//! A pass submits what it can and counts what went out (`dev_inflight`,
//! `fwd_inflight`, `frees_inflight`, `allocs_inflight`); it never decides that the
//! command is complete. It leaves the request in `Executing` (all submitted),
//! `WaitingDevice` or `WaitingControl`, and the connection's state machine moves it on
//! as the answers come back. Routing decisions read the reactor's own immutable copy of
//! the volume's routing table; the page table (slots) is read as the control thread
//! published it.

use quire_drivers::{IoError, Op, SubmitError};
use quire_wire::nvme::{opcode, Status};

use crate::nvmf::tcp::req::{ReqState, ReqTable};
use crate::peer::client::Forward;
use crate::peer::client::PATH_ERROR;
use crate::peer::frame::Segs;
use crate::peer::proto;
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef};
use crate::replica::locks::Pieces;
use crate::replica::set::SetView;
use crate::volume::routing::{PeerId, Route};
use crate::volume::split::{split, PARTS_MAX};
use crate::volume::VolumeId;

/// What a part does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Read into the request's buffers.
    Read,
    /// Write from the request's buffers.
    Write {
        /// On stable media before completion.
        fua: bool,
    },
    /// Write zeroes.
    Zeroes,
    /// Deallocate (reads back zeroes).
    Deallocate,
}

/// Where the command came from, which decides what a page owned elsewhere means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Origin {
    /// A host: parts on pages served elsewhere are forwarded.
    Host,
    /// A peer forwarded it: every part is this peer's to serve (the link server
    /// checked; a part whose route changed since is answered "not the owner"); never
    /// forwarded again. A write is ordered and replicated here like a host's.
    Peer,
    /// The leader of the page's set (this peer) sent its replica write: applied to this
    /// peer's copy only.
    Replica(PeerId),
}

impl Origin {
    /// True when this peer orders the command's writes (and replicates them).
    fn orders(self) -> bool {
        matches!(self, Origin::Host | Origin::Peer)
    }
}

/// Runs `kind` over `[slba, slba + nlb)` of `vol` from the request's cursor; `base`
/// blocks of the command precede this range (Dataset Management runs several ranges
/// through one cursor). False when the request parked.
#[allow(clippy::too_many_arguments)]
pub fn run(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    (vol, origin): (VolumeId, Origin),
    (slba, nlb, base): (u64, u64, u64),
    kind: Kind,
    ctx: &mut ReactorCtx,
) -> bool {
    if matches!(kind, Kind::Write { .. }) && wait_for_pages(reqs, idx, rref, (slba, nlb), (vol, origin), ctx) {
        return false;
    }
    run_parts(reqs, idx, rref, (vol, origin), slba, nlb, kind, base, ctx)
}

/// Asks the control thread for every unmapped page of this peer the write touches;
/// true when the request must wait for the answers.
fn wait_for_pages(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    (slba, nlb): (u64, u64),
    (vol_id, origin): (VolumeId, Origin),
    ctx: &mut ReactorCtx,
) -> bool {
    // Find the unmapped pages first, borrowing the page table: it is shared by every
    // reactor, so cloning its Arc per I/O would bounce its count between cores. A write
    // is at most MDTS long, so its parts fit the window.
    let start = slba + reqs.req(idx).cursor;
    if start >= slba + nlb {
        return false;
    }
    let mut unmapped = [0u64; PARTS_MAX];
    let mut n = 0;
    {
        let vol = &ctx.volumes[&vol_id];
        let info = &vol.view.info;
        for part in split(start, slba + nlb - start, info.blocks_per_page(), u64::from(info.block_size)) {
            let here = match origin {
                Origin::Replica(_) => true,
                Origin::Host | Origin::Peer => vol.routing.write_route(part.page) == Route::Local,
            };
            if here && vol.view.pages.get(part.page).is_none() {
                unmapped[n] = part.page;
                n += 1;
            }
        }
    }
    for &page in &unmapped[..n] {
        ctx.alloc_wait(vol_id, page, rref);
    }
    if n == 0 {
        return false;
    }
    let r = reqs.req_mut(idx);
    r.allocs_inflight += u32::try_from(n).expect("at most PARTS_MAX");
    reqs.set_state(idx, ReqState::WaitingControl);
    true
}

/// Hands the parts from the request's cursor on (or serves them without a device).
#[allow(clippy::too_many_arguments)]
fn run_parts(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    (vol_id, origin): (VolumeId, Origin),
    slba: u64,
    nlb: u64,
    kind: Kind,
    base: u64,
    ctx: &mut ReactorCtx,
) -> bool {
    loop {
        let cursor = reqs.req(idx).cursor;
        if cursor >= base + nlb {
            return true;
        }
        let done_here = cursor.saturating_sub(base);
        // Look up a window of parts' routes and slots while borrowing the tables (the
        // page table is shared by every reactor: no Arc clone, no count bouncing
        // between cores per I/O), then run them. Write Zeroes and DSM ranges may have
        // more parts than a window.
        let mut slots = [None; PARTS_MAX];
        let mut routes = [Route::Local; PARTS_MAX];
        let mut sets = [None; PARTS_MAX];
        let (bpp, bs, n) = {
            let vol = &ctx.volumes[&vol_id];
            let (bpp, bs) = (vol.view.info.blocks_per_page(), u64::from(vol.view.info.block_size));
            let replicated = vol.routing.replicated();
            let mut n = 0;
            for part in split(slba + done_here, nlb - done_here, bpp, bs).take(PARTS_MAX) {
                routes[n] = match (origin, kind) {
                    // Checked against the set below.
                    (Origin::Replica(_), _) => Route::Local,
                    (_, Kind::Read) => vol.routing.read_route(part.page),
                    _ => vol.routing.write_route(part.page),
                };
                if replicated {
                    sets[n] = Some(*vol.routing.set_of(part.page));
                }
                slots[n] = vol.view.pages.get(part.page);
                n += 1;
            }
            (bpp, bs, n)
        };
        // The data of this range follows that of the `base` blocks before it (a Copy
        // reads several ranges into one run of buffers).
        let window = Window { lba: slba + done_here, blocks: nlb - done_here, done: base + done_here, bpp, bs };
        let parts = Parts { routes: &routes[..n], slots: &slots[..n], sets: &sets[..n] };
        match run_window(reqs, idx, rref, (vol_id, origin), &window, &parts, kind, ctx) {
            Step::Continue => assert!(reqs.req(idx).cursor > cursor, "a window of parts always advances the cursor"),
            Step::Parked => return false,
            Step::Stop => return true,
        }
    }
}

/// A window of parts: `[lba, lba + blocks)`, with `done` blocks of the command's range
/// before `lba` (its data offset); pages of `bpp` blocks of `bs` bytes.
struct Window {
    lba: u64,
    blocks: u64,
    done: u64,
    bpp: u64,
    bs: u64,
}

/// Per part of a window, in order: its route, its slot here, and its replica set
/// (for a volume with replicas).
struct Parts<'a> {
    routes: &'a [Route],
    slots: &'a [Option<u64>],
    sets: &'a [Option<SetView>],
}

/// Runs the parts of a window whose routes, slots and sets are given (one per part,
/// in order, possibly fewer than the range has: the rest waits for the next window).
#[allow(clippy::too_many_arguments)]
fn run_window(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    (vol_id, origin): (VolumeId, Origin),
    w: &Window,
    parts: &Parts<'_>,
    kind: Kind,
    ctx: &mut ReactorCtx,
) -> Step {
    let dev_bs = ctx.dev_block_size;
    let bs = w.bs;
    let split_parts = split(w.lba, w.blocks, w.bpp, bs).zip(parts.routes).zip(parts.slots).zip(parts.sets);
    for (((part, &route), &slot), set) in split_parts {
        let data_off = part.data_offset + w.done * bs;
        let lba = part.page * w.bpp + part.block_in_page;
        match route {
            Route::Remote(_) | Route::Hold if origin != Origin::Host => {
                if route == Route::Hold && origin == Origin::Peer {
                    // This peer leads the set but may not order its writes yet: the part
                    // waits here (the peer that sent it holds it meanwhile).
                    return park_order(reqs, idx, rref, ctx);
                }
                // The link checked the route when the part arrived; a newer table has
                // changed it since (the part waited for its data, a page allocation or
                // the device). Never forwarded again from here: the peer that sent it
                // routes it anew.
                let r = reqs.req_mut(idx);
                r.misrouted = true;
                r.fail(Status::ABORTED_BY_REQUEST);
                return Step::Stop;
            }
            Route::Remote(peer) => {
                forward_part(reqs, idx, rref, (peer, false), vol_id, (lba, part.num_blocks), data_off, kind, ctx);
                reqs.req_mut(idx).cursor += part.num_blocks;
                continue;
            }
            Route::Hold => return park_order(reqs, idx, rref, ctx),
            Route::Local => {}
        }
        if let Some(set) = set.filter(SetView::replicated) {
            if let Origin::Replica(sender) = origin {
                if set.leader != sender || set.me.is_none() || set.my_role() == Some(crate::replica::set::Role::Out) {
                    // The sender does not lead the set any more, or this peer is no
                    // member that takes its writes (its table changed while the part
                    // waited).
                    let r = reqs.req_mut(idx);
                    r.misrouted = true;
                    r.fail(Status::ABORTED_BY_REQUEST);
                    return Step::Stop;
                }
            } else if !ctx.fence.holds(std::time::Instant::now(), set.my_inc()) {
                // This peer's lease may have expired: it serves no replicated page.
                add(&ctx.stats.fenced, 1);
                reqs.req_mut(idx).fail(PATH_ERROR);
                return Step::Stop;
            }
            if kind != Kind::Read {
                let pieces = Pieces::of(w.bpp);
                let mask = pieces.mask(part.block_in_page, part.num_blocks);
                let need = mask & !reqs.req(idx).held(part.page);
                if need != 0 {
                    let table = &ctx.volumes[&vol_id].view.pieces;
                    if !table.try_lock(part.page, need) {
                        add(&ctx.stats.order_waits, 1);
                        return park_order(reqs, idx, rref, ctx);
                    }
                    reqs.req_mut(idx).locks.push((part.page, need));
                    table.written(part.page, mask);
                    if origin.orders() && set.out_slots != 0 {
                        table.mark_missed(part.page, set.out_slots, mask);
                    }
                }
            }
        }
        let whole_page = part.num_blocks == w.bpp;
        let dev_lba = slot.map(|s| (s + part.block_in_page * bs) / dev_bs);
        let dev_blocks = u32::try_from(part.num_blocks * bs / dev_bs).expect("a part lies within one page");
        let step = match (kind, dev_lba) {
            (Kind::Read, None) => {
                reqs.req_mut(idx).zero_data(data_off, part.num_blocks * bs);
                add(&ctx.stats.zero_filled_bytes, part.num_blocks * bs);
                reqs.req_mut(idx).cursor += part.num_blocks;
                Step::Continue
            }
            (Kind::Write { .. }, None) => {
                // The page was freed again after its allocation: allocate anew.
                ctx.alloc_wait(vol_id, part.page, rref);
                reqs.req_mut(idx).allocs_inflight += 1;
                reqs.set_state(idx, ReqState::WaitingControl);
                Step::Parked
            }
            (Kind::Zeroes | Kind::Deallocate, None) => {
                reqs.req_mut(idx).cursor += part.num_blocks;
                Step::Continue
            }
            (Kind::Zeroes | Kind::Deallocate, Some(_)) if whole_page => {
                ctx.free_wait(vol_id, part.page, rref);
                let r = reqs.req_mut(idx);
                r.frees_inflight += 1;
                r.cursor += part.num_blocks;
                Step::Continue
            }
            (Kind::Zeroes | Kind::Deallocate, Some(lba)) => {
                let op =
                    if kind == Kind::Deallocate && ctx.dev_dealloc_zeroes { Op::Deallocate } else { Op::WriteZeroes };
                ctx.prepare(op, lba, dev_blocks);
                submit_part(reqs, idx, rref, part.num_blocks, ctx)
            }
            (Kind::Read | Kind::Write { .. }, Some(lba)) => {
                let op = if let Kind::Write { fua } = kind { Op::Write { fua } } else { Op::Read };
                ctx.prepare(op, lba, dev_blocks);
                reqs.req(idx).segs_into(data_off, part.num_blocks * bs, &mut ctx.dev_req);
                submit_part(reqs, idx, rref, part.num_blocks, ctx)
            }
        };
        if !matches!(step, Step::Continue) {
            return step;
        }
        if let Some(v) = ctx.volumes.get(&vol_id).filter(|_| origin.orders()) {
            // Served here (once: the part advanced): the load monitor's count.
            v.load.record(part.page, part.num_blocks * bs);
        }
        if let Some(set) = set.filter(|s| s.replicated() && kind != Kind::Read && origin.orders()) {
            // Applied (or on its way) here: now to every other member that takes
            // writes, from the same buffers.
            for &peer in set.targets() {
                forward_part(reqs, idx, rref, (peer, true), vol_id, (lba, part.num_blocks), data_off, kind, ctx);
            }
        }
    }
    Step::Continue
}

/// Parks request `idx` until it may order its write (`WaitingOrder`).
fn park_order(reqs: &mut ReqTable, idx: u16, rref: ReqRef, ctx: &mut ReactorCtx) -> Step {
    ctx.order_waiters.push_back(rref);
    reqs.set_state(idx, ReqState::WaitingOrder);
    Step::Parked
}

/// Gives back every piece request `idx` holds (it has nothing outstanding any more).
pub fn release_locks(reqs: &mut ReqTable, idx: u16, vol_id: Option<VolumeId>, ctx: &ReactorCtx) {
    let r = reqs.req_mut(idx);
    if r.locks.is_empty() {
        return;
    }
    debug_assert!(!r.outstanding(), "pieces are given back once nothing is outstanding");
    // A volume deleted meanwhile took its table with it: nobody waits for those pieces.
    if let Some(v) = vol_id.and_then(|v| ctx.volumes.get(&v)) {
        for &(page, mask) in &r.locks {
            v.view.pieces.unlock(page, mask);
        }
    }
    r.locks.clear();
}

/// Sends one part to the peer that serves its page (or, `replica`, to a member of the
/// page's set as the leader's replica write), as requests of at most
/// [`proto::PART_MAX`] bytes of data (what any peer can take in one go).
#[allow(clippy::too_many_arguments)]
fn forward_part(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    (peer, replica): (PeerId, bool),
    vol_id: VolumeId,
    (lba, blocks): (u64, u64),
    data_off: u64,
    kind: Kind,
    ctx: &mut ReactorCtx,
) {
    let (op, fua) = match kind {
        Kind::Read => (proto::Op::Read, false),
        Kind::Write { fua } => (proto::Op::Write, fua),
        Kind::Zeroes => (proto::Op::WriteZeroes, false),
        Kind::Deallocate => (proto::Op::Deallocate, false),
    };
    let vol = &ctx.volumes[&vol_id];
    let bs = u64::from(vol.view.info.block_size);
    let (epoch, bpp) = (vol.routing.epoch, vol.view.info.blocks_per_page());
    let with_data = matches!(kind, Kind::Read | Kind::Write { .. });
    let step = if with_data { u64::from(proto::PART_MAX) / bs } else { blocks };
    let deadline = reqs.req(idx).started + ctx.hold();
    let mut done = 0;
    while done < blocks {
        let n = step.min(blocks - done);
        let data = if with_data {
            // This piece's slice of the request's buffers, as segments (the same helper
            // that points the device at them).
            ctx.dev_req.nsegs = 0;
            reqs.req(idx).segs_into(data_off + done * bs, n * bs, &mut ctx.dev_req);
            add(if replica { &ctx.stats.replica_bytes } else { &ctx.stats.forwarded_bytes }, n * bs);
            Segs::of(&ctx.dev_req.segs[..ctx.dev_req.nsegs])
        } else {
            Segs::NONE
        };
        let f = Forward {
            rref,
            to: peer,
            op,
            fua,
            volume: vol_id,
            epoch,
            page: (lba + done) / bpp,
            lba: lba + done,
            nlb: u32::try_from(n).expect("a part lies within one page"),
            data,
            deadline,
            replica,
        };
        add(if replica { &ctx.stats.replica_parts } else { &ctx.stats.forwarded_parts }, 1);
        ctx.forward(peer, f);
        reqs.req_mut(idx).fwd_inflight += 1;
        done += n;
    }
}

/// A flush: this peer's device, then (host I/O) every other owner of the volume's
/// pages. False when the request parked on a full device queue.
pub fn flush(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    (vol_id, origin): (VolumeId, Origin),
    ctx: &mut ReactorCtx,
) -> bool {
    if reqs.req(idx).cursor != 0 {
        return true;
    }
    ctx.prepare(Op::Flush, 0, 0);
    match submit_part(reqs, idx, rref, 1, ctx) {
        Step::Continue => {}
        Step::Parked => return false,
        Step::Stop => return true,
    }
    if origin == Origin::Host {
        forward_flushes(reqs, idx, rref, vol_id, ctx);
    }
    true
}

/// The flush that ends a command whose zeroes went to the device without FUA (the
/// write cache is off): this peer's device and every other owner of the volume's
/// pages, after every part has completed (a flush covers what completed before it).
/// False when the device queue is full (the request parks and tries again).
pub fn flush_after(reqs: &mut ReqTable, idx: u16, rref: ReqRef, vol_id: VolumeId, ctx: &mut ReactorCtx) -> bool {
    debug_assert!(!reqs.req(idx).outstanding(), "a command's tail flush follows its parts");
    ctx.prepare(Op::Flush, 0, 0);
    match ctx.submit_prepared(rref) {
        Ok(()) => reqs.req_mut(idx).dev_inflight += 1,
        Err(SubmitError::QueueFull) => {
            ctx.dev_waiters.push_back(rref);
            reqs.set_state(idx, ReqState::WaitingDevice);
            return false;
        }
        Err(SubmitError::Invalid(why)) => {
            tracing::error!("device rejected a flush: {why}");
            reqs.req_mut(idx).fail(Status::INTERNAL_ERROR);
        }
    }
    reqs.req_mut(idx).flush_after = false;
    if ctx.volumes.contains_key(&vol_id) {
        forward_flushes(reqs, idx, rref, vol_id, ctx);
    }
    true
}

/// A flush to every other owner of the volume's pages, counted in `fwd_inflight`.
fn forward_flushes(reqs: &mut ReqTable, idx: u16, rref: ReqRef, vol_id: VolumeId, ctx: &mut ReactorCtx) {
    let vol = &ctx.volumes[&vol_id];
    let routing = vol.routing.clone();
    let deadline = reqs.req(idx).started + ctx.hold();
    for &peer in routing.remote_peers() {
        let f = Forward {
            rref,
            to: peer,
            op: proto::Op::Flush,
            fua: false,
            volume: vol_id,
            epoch: routing.epoch,
            page: 0,
            lba: 0,
            nlb: 0,
            data: Segs::NONE,
            deadline,
            replica: false,
        };
        add(&ctx.stats.forwarded_parts, 1);
        ctx.forward(peer, f);
        reqs.req_mut(idx).fwd_inflight += 1;
    }
}

/// What to do after one part.
enum Step {
    /// Go on with the next part.
    Continue,
    /// The request parked (device queue full, allocation needed): stop here.
    Parked,
    /// The request failed: submit nothing more.
    Stop,
}

/// Submits the device request prepared in `ctx.dev_req` for `blocks` blocks of the
/// command; on a full queue the request parks in `WaitingDevice`.
fn submit_part(reqs: &mut ReqTable, idx: u16, rref: ReqRef, blocks: u64, ctx: &mut ReactorCtx) -> Step {
    match ctx.submit_prepared(rref) {
        Ok(()) => {
            let r = reqs.req_mut(idx);
            r.dev_inflight += 1;
            r.cursor += blocks;
            Step::Continue
        }
        Err(SubmitError::QueueFull) => {
            ctx.dev_waiters.push_back(rref);
            reqs.set_state(idx, ReqState::WaitingDevice);
            Step::Parked
        }
        Err(SubmitError::Invalid(why)) => {
            tracing::error!("device rejected a request: {why}");
            reqs.req_mut(idx).fail(Status::INTERNAL_ERROR);
            Step::Stop
        }
    }
}

/// Accounts a finished device part of request `idx`.
pub fn on_part_done(reqs: &mut ReqTable, idx: u16, result: Result<(), IoError>) {
    let r = reqs.req_mut(idx);
    assert!(r.dev_inflight > 0, "request {idx}: device completion with no part outstanding: {r:?}");
    r.dev_inflight -= 1;
    if let Err(e) = result {
        let write = r.cmd.opcode == opcode::NVM_WRITE;
        r.fail(match e {
            IoError::Media(_) if write => Status::WRITE_FAULT,
            IoError::Media(_) => Status::UNRECOVERED_READ_ERROR,
            IoError::Aborted => Status::ABORTED_BY_REQUEST,
            IoError::OutOfRange | IoError::Unsupported => Status::INTERNAL_ERROR,
        });
    }
}

/// Accounts a forwarded part of request `idx` that the owner answered.
pub fn on_forward_done(reqs: &mut ReqTable, idx: u16, result: Result<(), Status>) {
    let r = reqs.req_mut(idx);
    assert!(r.fwd_inflight > 0, "request {idx}: forward answer with no part forwarded: {r:?}");
    r.fwd_inflight -= 1;
    if let Err(s) = result {
        r.fail(s);
    }
}
