//! Copy (NVM command set): source ranges of a volume copied, in order, to one
//! destination range of the same volume, without the data crossing to the host.
//!
//! A Copy runs in two phases, each through the paths every Read and Write take (so
//! its parts go to whichever peer serves each page, replicated pages included):
//!
//! ```text
//! ReadyToExecute ─ parse the range list, give its buffers back ─┬─► NeedBuffer (no buffers for the data yet)
//!      ▲                                                         ▼
//!      │                                           Read: every source range into the buffers,
//!      │                                                 one after the other
//!      │                                                         ▼
//!      └──── Executing, nothing outstanding, no error ◄──── Executing
//!                   (next_phase: Write)
//!                                 Write: the buffers to [SDLBA, SDLBA + blocks) ─► Executing ─► ReadyToComplete
//! ```
//!
//! The data a Copy moves is at most MCL blocks, which is the transfer size limit
//! (MDTS): it fits the buffers one request may hold. It is read whole before any of it
//! is written, so source ranges that overlap the destination copy what they held when
//! the command started. A Copy is not atomic: a write to the source or the destination
//! meanwhile may land before or after it, as with a host that reads and then writes.

use quire_wire::nvme::copy::{self as wire, CopyCommand, COPY_FORMAT_0, COPY_RANGES_MAX};
use quire_wire::nvme::Status;

use crate::nvmf::tcp::req::{ReqState, ReqTable};
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef};
use crate::volume::io::{self as vio, Kind, Origin};
use crate::volume::VolumeId;

/// Which half of a Copy runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CopyPhase {
    /// The source ranges are read into the request's buffers.
    Read,
    /// The buffers are written to the destination.
    Write,
}

/// A Copy whose range list was parsed and checked.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CopyPlan {
    /// Source ranges (first block, blocks), in order.
    pub ranges: Vec<(u64, u64)>,
    /// Blocks in all ranges together.
    pub blocks: u64,
    /// Bytes in all ranges together.
    pub bytes: u64,
    /// Destination's first block.
    pub dest: u64,
    /// Force unit access on the write.
    pub fua: bool,
    /// The phase running.
    pub phase: CopyPhase,
}

/// What one Copy may ask for (Identify Namespace MSSRL, MCL, MSRC).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CopyLimits {
    /// Most blocks in one source range.
    pub mssrl: u64,
    /// Most blocks in all of them.
    pub mcl: u64,
    /// Most source ranges.
    pub ranges: usize,
}

impl CopyLimits {
    /// The limits for volumes of `block_size` blocks on a target whose largest
    /// transfer is `max_transfer` bytes: a Copy moves no more than a Read may.
    pub fn new(max_transfer: u32, block_size: u32) -> CopyLimits {
        let mcl = u64::from(max_transfer / block_size.max(1)).max(1);
        CopyLimits { mssrl: mcl.min(u64::from(u16::MAX)), mcl, ranges: COPY_RANGES_MAX }
    }
}

/// Parses and checks a Copy of a namespace of `num_blocks` blocks of `block_size`
/// bytes whose range list is `list`.
pub fn plan(
    cmd: &quire_wire::nvme::Command,
    list: &[u8],
    (num_blocks, block_size): (u64, u32),
    limits: CopyLimits,
) -> Result<CopyPlan, Status> {
    let c = CopyCommand::from_command(cmd);
    if c.format != COPY_FORMAT_0 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    if c.ranges > limits.ranges {
        return Err(Status::COMMAND_SIZE_LIMIT_EXCEEDED.with_dnr());
    }
    let ranges = wire::parse_ranges(list, c.ranges).ok_or(Status::DATA_SGL_LENGTH_INVALID.with_dnr())?;
    let mut blocks = 0u64;
    let mut out = Vec::with_capacity(ranges.len());
    for r in &ranges {
        let nlb = u64::from(r.nlb);
        if nlb > limits.mssrl {
            return Err(Status::COMMAND_SIZE_LIMIT_EXCEEDED.with_dnr());
        }
        blocks += nlb;
        if r.slba.checked_add(nlb).is_none_or(|end| end > num_blocks) {
            return Err(Status::LBA_OUT_OF_RANGE.with_dnr());
        }
        out.push((r.slba, nlb));
    }
    if blocks > limits.mcl {
        return Err(Status::COMMAND_SIZE_LIMIT_EXCEEDED.with_dnr());
    }
    if c.sdlba.checked_add(blocks).is_none_or(|end| end > num_blocks) {
        return Err(Status::LBA_OUT_OF_RANGE.with_dnr());
    }
    let bytes = blocks * u64::from(block_size);
    Ok(CopyPlan { ranges: out, blocks, bytes, dest: c.sdlba, fua: c.fua, phase: CopyPhase::Read })
}

/// Runs (or goes on with) Copy `idx` on volume `vol_id`; `cache_on` is the
/// controller's volatile write cache setting.
pub fn execute(
    reqs: &mut ReqTable,
    idx: u16,
    rref: ReqRef,
    vol_id: VolumeId,
    cache_on: bool,
    ctx: &mut ReactorCtx,
) -> Result<(), Status> {
    if reqs.req(idx).copy.is_none() {
        let vol = &ctx.volumes[&vol_id];
        let info = &vol.view.info;
        let limits = CopyLimits::new(ctx.registry.params.max_transfer_size, info.block_size);
        let r = reqs.req_mut(idx);
        let list = r.data_vec(0, (r.data_len as usize).min(COPY_RANGES_MAX * wire::COPY_RANGE_SIZE));
        let plan = plan(&r.cmd, &list, (info.num_blocks(), info.block_size), limits)?;
        add(&vol.counters.other_ops, 1);
        // The list is read: its buffers go back (an in-capsule list frees the receive
        // chunk it pinned) before the command asks for buffers for its data.
        for b in r.bufs.drain(..) {
            ctx.pool.put(b);
        }
        r.copy = Some(Box::new(plan));
        if !take_buffers(reqs, idx, ctx) {
            // The connection's state machine puts it on the reactor's buffer list.
            reqs.set_state(idx, ReqState::NeedBuffer);
            return Ok(());
        }
    }
    let plan = reqs.req(idx).copy.as_ref().expect("planned above");
    match plan.phase {
        CopyPhase::Read => {
            let mut base = 0;
            for i in 0..plan.ranges.len() {
                let (slba, nlb) = reqs.req(idx).copy.as_ref().expect("planned").ranges[i];
                if !vio::run(reqs, idx, rref, (vol_id, Origin::Host), (slba, nlb, base), Kind::Read, ctx) {
                    return Ok(());
                }
                base += nlb;
            }
        }
        CopyPhase::Write => {
            let (dest, blocks) = (plan.dest, plan.blocks);
            let kind = Kind::Write { fua: plan.fua || !cache_on };
            vio::run(reqs, idx, rref, (vol_id, Origin::Host), (dest, blocks, 0), kind, ctx);
        }
    }
    Ok(())
}

/// Takes the buffers Copy `idx` moves its data through; all or nothing.
pub fn take_buffers(reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> bool {
    let r = reqs.req_mut(idx);
    assert!(r.bufs.is_empty(), "a Copy takes buffers for its data once");
    let plan = r.copy.as_ref().expect("a Copy takes buffers once planned");
    let need = usize::try_from(plan.bytes).expect("at most MDTS").div_ceil(ctx.pool.chunk_size()).max(1);
    if ctx.pool.available() < need {
        return false;
    }
    for _ in 0..need {
        r.bufs.push(ctx.pool.get().expect("counted above"));
    }
    true
}

/// Copy `idx` finished a phase with nothing outstanding: true when it goes on to
/// write (its reads are in and nothing failed).
pub fn next_phase(reqs: &mut ReqTable, idx: u16) -> bool {
    let r = reqs.req_mut(idx);
    let Some(plan) = r.copy.as_mut() else { return false };
    if plan.phase != CopyPhase::Read || !r.status.is_success() {
        return false;
    }
    plan.phase = CopyPhase::Write;
    r.cursor = 0;
    true
}
