//! NVM command execution: Read, Write, Flush, Write Zeroes, Dataset Management.
//!
//! A command is checked (controller enabled, namespace, LBA range, transfer length,
//! and in a group that this peer owns every page it touches: see `check_owned`),
//! then split at page boundaries ([`crate::volume::split`]). Each part goes to the
//! page's slot on this peer's device, pointing the device at the part's slice of the
//! request's pool buffers (no copy). Pages never written read as zeroes without a device
//! access; the first write to a page first asks the control thread to allocate its slot
//! (the request waits in `WaitingControl`); Write Zeroes and Deallocate that cover a
//! whole page give the page back. When the device queue is full, the request parks in
//! `WaitingDevice` and resumes where it stopped (`Req::cursor`).
//!
//! A pass over the command submits what it can and counts what went out
//! (`dev_inflight`, `frees_inflight`, `allocs_inflight`); it never decides that the
//! command is complete. It leaves the request in `Executing` (all submitted),
//! `WaitingDevice` or `WaitingControl`, and the connection's state machine
//! (`TcpQpair::process`) moves it on as the answers come back.

use quire_drivers::{IoError, Op, SubmitError};
use quire_wire::nvme::{opcode, Status};

use crate::nvmf::tcp::qpair::QueueInfo;
use crate::nvmf::tcp::req::{ReqState, ReqTable};
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef, VolumeEntry};
use crate::volume::split::{split, PARTS_MAX};

/// Write Zeroes: deallocate allowed (CDW12 bit 25).
const WZ_DEAC: u32 = 1 << 25;
/// Dataset Management: attribute Deallocate (CDW11 bit 2).
const DSM_AD: u32 = 1 << 2;
/// Size of one Dataset Management range.
const DSM_RANGE_LEN: usize = 16;

/// What a part does on the device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Read,
    Write { fua: bool },
    Zeroes,
    Deallocate,
}

/// Executes (or resumes) NVM command `idx`.
pub fn execute(q: &QueueInfo, reqs: &mut ReqTable, idx: u16, rref: ReqRef, ctx: &mut ReactorCtx) {
    let status = check_and_run(q, reqs, idx, rref, ctx);
    let r = reqs.req_mut(idx);
    if let Err(s) = status {
        r.fail(s);
        if let Some(v) = q.ctrlr.as_ref().and_then(|c| c.volume).and_then(|v| ctx.volumes.get(&v)) {
            add(&v.counters.errors, 1);
        }
    }
    if r.state() == ReqState::ReadyToExecute {
        // Not parked: everything is submitted (or the command failed); what is out
        // comes back to `TcpQpair::process`.
        reqs.set_state(idx, ReqState::Executing);
    }
}

fn check_and_run(
    q: &QueueInfo,
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    ctx: &mut ReactorCtx,
) -> Result<(), Status> {
    let ctrlr = q.ctrlr.as_ref().expect("an I/O queue is connected before it executes I/O");
    if !ctrlr.is_enabled() {
        return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    let cmd = reqs.req(idx).cmd;
    if cmd.nsid != 1 {
        return Err(Status::INVALID_NAMESPACE.with_dnr());
    }
    let vol_id = ctrlr.volume.expect("an NVM controller has a volume");
    let Some(vol) = ctx.volumes.get(&vol_id) else {
        // The volume was deleted while the host was connected.
        return Err(Status::INVALID_NAMESPACE.with_dnr());
    };
    let info = &vol.view.info;
    let bs = u64::from(info.block_size);
    match cmd.opcode {
        opcode::NVM_READ | opcode::NVM_WRITE => {
            let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
            check_range(slba, nlb, info.num_blocks())?;
            check_owned(vol, slba, nlb)?;
            let len = nlb * bs;
            let r = reqs.req_mut(idx);
            if len != u64::from(r.data_len) {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            let write = cmd.opcode == opcode::NVM_WRITE;
            // Counted once: a write that waited for page allocation (or a command
            // parked on a full device queue) runs again from cursor 0.
            if !std::mem::replace(&mut r.counted, true) {
                count_rw(vol, write, len);
            }
            if write {
                if wait_for_pages(reqs, idx, rref, slba, nlb, vol_id, ctx) {
                    return Ok(());
                }
                // With the volatile write cache turned off (Set Features), a write is
                // complete only once it is on stable media.
                let fua = cmd.fua() || !ctrlr.write_cache_enabled();
                run_parts(reqs, idx, rref, vol_id, slba, nlb, Kind::Write { fua }, 0, ctx);
            } else {
                reqs.req_mut(idx).c2h_len = u32::try_from(len).expect("len == data_len, a u32");
                run_parts(reqs, idx, rref, vol_id, slba, nlb, Kind::Read, 0, ctx);
            }
            Ok(())
        }
        opcode::NVM_FLUSH => {
            if !std::mem::replace(&mut reqs.req_mut(idx).counted, true) {
                add(&vol.counters.other_ops, 1);
            }
            if reqs.req(idx).cursor == 0 {
                ctx.prepare(Op::Flush, 0, 0);
                let _parked_or_done = submit_part(reqs, idx, rref, 1, ctx);
            }
            Ok(())
        }
        opcode::NVM_WRITE_ZEROES => {
            let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
            check_range(slba, nlb, info.num_blocks())?;
            check_owned(vol, slba, nlb)?;
            if !std::mem::replace(&mut reqs.req_mut(idx).counted, true) {
                add(&vol.counters.other_ops, 1);
            }
            let kind = if cmd.cdw12 & WZ_DEAC != 0 { Kind::Deallocate } else { Kind::Zeroes };
            run_parts(reqs, idx, rref, vol_id, slba, nlb, kind, 0, ctx);
            Ok(())
        }
        opcode::NVM_DATASET_MANAGEMENT => dataset_management(reqs, idx, rref, vol_id, ctx),
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// Refuses I/O that touches a page another peer owns. Forwarding to the owner is
/// not built yet (issue 8 goes on): until it is, such I/O is answered Namespace Not
/// Ready without DNR, a status hosts retry, and never with data from the wrong peer.
fn check_owned(vol: &VolumeEntry, slba: u64, nlb: u64) -> Result<(), Status> {
    if nlb == 0 {
        return Ok(());
    }
    let bpp = vol.view.info.blocks_per_page();
    if vol.routing.all_local(slba / bpp, (slba + nlb - 1) / bpp) {
        Ok(())
    } else {
        Err(Status::NAMESPACE_NOT_READY)
    }
}

fn check_range(slba: u64, nlb: u64, num_blocks: u64) -> Result<(), Status> {
    match slba.checked_add(nlb) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE.with_dnr()),
    }
}

fn count_rw(vol: &VolumeEntry, write: bool, len: u64) {
    if write {
        add(&vol.counters.write_ops, 1);
        add(&vol.counters.write_bytes, len);
    } else {
        add(&vol.counters.read_ops, 1);
        add(&vol.counters.read_bytes, len);
    }
}

/// Asks the control thread for every unmapped page the write touches; true when the
/// request must wait for the answers.
fn wait_for_pages(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    slba: u64,
    nlb: u64,
    vol_id: crate::volume::VolumeId,
    ctx: &mut ReactorCtx,
) -> bool {
    // Find the unmapped pages first, borrowing the page table: it is shared by every
    // reactor, so cloning its Arc per I/O would bounce its count between cores. A write
    // is at most MDTS long, so its parts fit the window.
    let start = slba + reqs.req(idx).cursor;
    let mut unmapped = [0u64; PARTS_MAX];
    let mut n = 0;
    {
        let vol = &ctx.volumes[&vol_id];
        let info = &vol.view.info;
        for part in split(start, slba + nlb - start, info.blocks_per_page(), u64::from(info.block_size)) {
            if vol.view.pages.get(part.page).is_none() {
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

/// Hands the parts from the request's cursor on to the device (or serves them without
/// it). `base` is the number of blocks of the command before this range (Dataset
/// Management runs several ranges through one cursor).
#[allow(clippy::too_many_arguments)]
fn run_parts(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    vol_id: crate::volume::VolumeId,
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
        // Look up a window of parts' slots while borrowing the page table (shared by every
        // reactor: no Arc clone, no count bouncing between cores per I/O), then run them.
        // Write Zeroes and DSM ranges may have more parts than a window.
        let mut slots = [None; PARTS_MAX];
        let (bpp, bs, n) = {
            let vol = &ctx.volumes[&vol_id];
            let (bpp, bs) = (vol.view.info.blocks_per_page(), u64::from(vol.view.info.block_size));
            let mut n = 0;
            for part in split(slba + done_here, nlb - done_here, bpp, bs).take(PARTS_MAX) {
                slots[n] = vol.view.pages.get(part.page);
                n += 1;
            }
            (bpp, bs, n)
        };
        match run_window(
            reqs,
            idx,
            rref,
            vol_id,
            (slba + done_here, nlb - done_here, done_here),
            (bpp, bs),
            &slots[..n],
            kind,
            ctx,
        ) {
            Step::Continue => assert!(reqs.req(idx).cursor > cursor, "a window of parts always advances the cursor"),
            Step::Parked => return false,
            Step::Stop => return true,
        }
    }
}

/// Runs the parts of `[lba, lba + blocks)` whose slots are `slots` (one per part, in
/// order, possibly fewer than the range has: the rest waits for the next window);
/// `done` blocks of the command's range precede `lba` (its data offset).
#[allow(clippy::too_many_arguments)]
fn run_window(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    vol_id: crate::volume::VolumeId,
    (lba, blocks, done): (u64, u64, u64),
    (bpp, bs): (u64, u64),
    slots: &[Option<u64>],
    kind: Kind,
    ctx: &mut ReactorCtx,
) -> Step {
    let dev_bs = ctx.dev_block_size;
    for (part, &slot) in split(lba, blocks, bpp, bs).zip(slots) {
        let data_off = part.data_offset + done * bs;
        let whole_page = part.num_blocks == bpp;
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
    }
    Step::Continue
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

fn dataset_management(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    vol_id: crate::volume::VolumeId,
    ctx: &mut ReactorCtx,
) -> Result<(), Status> {
    let cmd = reqs.req(idx).cmd;
    let nr = (cmd.cdw10 & 0xff) as usize + 1;
    let len = nr * DSM_RANGE_LEN;
    if (reqs.req(idx).data_len as usize) < len {
        return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    let vol = &ctx.volumes[&vol_id];
    let num_blocks = vol.view.info.num_blocks();
    if !std::mem::replace(&mut reqs.req_mut(idx).counted, true) {
        add(&vol.counters.other_ops, 1);
    }
    if cmd.cdw11 & DSM_AD == 0 {
        // Only deallocation has an effect here; other attributes are hints.
        return Ok(());
    }
    let ranges = reqs.req(idx).data_vec(0, len);
    let mut base = 0u64;
    let mut parsed = Vec::with_capacity(nr);
    for c in ranges.chunks_exact(DSM_RANGE_LEN) {
        let nlb = u64::from(quire_wire::get_u32(c, 4));
        let slba = quire_wire::get_u64(c, 8);
        check_range(slba, nlb, num_blocks)?;
        check_owned(vol, slba, nlb)?;
        parsed.push((slba, nlb));
    }
    for (slba, nlb) in parsed {
        if nlb == 0 {
            continue;
        }
        if !run_parts(reqs, idx, rref, vol_id, slba, nlb, Kind::Deallocate, base, ctx) {
            return Ok(());
        }
        base += nlb;
    }
    Ok(())
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
