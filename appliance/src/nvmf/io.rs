//! NVM command execution: Read, Write, Flush, Compare, Write Zeroes, Dataset
//! Management, Copy (`nvmf::copy`).
//!
//! The target's half: a command is decoded and checked (controller enabled,
//! namespace, LBA range, transfer length), counted, and its range handed to the
//! volume I/O layer ([`crate::volume::io`]), which splits it at pages and routes each
//! part to this peer's page store or to the peer that owns the page. Nothing here
//! knows where a page lives. The connection's state machine (`TcpQpair::process`)
//! moves the request on as the parts' answers come back.

use quire_wire::nvme::{opcode, Status};

use crate::nvmf::tcp::qpair::QueueInfo;
use crate::nvmf::tcp::req::{ReqState, ReqTable};
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef, VolumeEntry};
use crate::volume::io::{self as vio, Kind, Origin};

/// Write Zeroes: deallocate allowed (CDW12 bit 25).
const WZ_DEAC: u32 = 1 << 25;
/// Dataset Management: attribute Deallocate (CDW11 bit 2).
const DSM_AD: u32 = 1 << 2;
/// Size of one Dataset Management range.
const DSM_RANGE_LEN: usize = 16;

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
    if ctrlr.is_inaccessible() {
        // The peer is leaving: a path error the host retries on another path.
        return Err(Status::ANA_INACCESSIBLE);
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
            let kind = if write {
                // With the volatile write cache turned off (Set Features), a write is
                // complete only once it is on stable media.
                Kind::Write { fua: cmd.fua() || !ctrlr.write_cache_enabled() }
            } else {
                reqs.req_mut(idx).c2h_len = u32::try_from(len).expect("len == data_len, a u32");
                Kind::Read
            };
            vio::run(reqs, idx, rref, (vol_id, Origin::Host), (slba, nlb, 0), kind, ctx);
            Ok(())
        }
        opcode::NVM_COMPARE => {
            // The range is read, wherever its pages live, the way a Read is (into the
            // buffers taken for it, `Req::cmp_bufs`), and compared with the host's
            // data once every part is in (`compare_done`).
            let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
            check_range(slba, nlb, info.num_blocks())?;
            let r = reqs.req_mut(idx);
            if nlb * bs != u64::from(r.data_len) {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            if !std::mem::replace(&mut r.counted, true) {
                add(&vol.counters.other_ops, 1);
            }
            if !r.cmp_swapped {
                assert!(!r.cmp_bufs.is_empty(), "a Compare took the buffers for its read");
                std::mem::swap(&mut r.bufs, &mut r.cmp_bufs);
                r.cmp_swapped = true;
            }
            vio::run(reqs, idx, rref, (vol_id, Origin::Host), (slba, nlb, 0), Kind::Read, ctx);
            Ok(())
        }
        opcode::NVM_FLUSH => {
            if !std::mem::replace(&mut reqs.req_mut(idx).counted, true) {
                add(&vol.counters.other_ops, 1);
            }
            let _parked_or_done = vio::flush(reqs, idx, rref, (vol_id, Origin::Host), ctx);
            Ok(())
        }
        opcode::NVM_WRITE_ZEROES => {
            let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
            check_range(slba, nlb, info.num_blocks())?;
            if !std::mem::replace(&mut reqs.req_mut(idx).counted, true) {
                add(&vol.counters.other_ops, 1);
            }
            let kind = if cmd.cdw12 & WZ_DEAC != 0 { Kind::Deallocate } else { Kind::Zeroes };
            if !ctrlr.write_cache_enabled() && reqs.req(idx).cursor == 0 {
                // Zeroes that reach a device go without FUA: flushed before completion.
                reqs.req_mut(idx).flush_after = true;
            }
            vio::run(reqs, idx, rref, (vol_id, Origin::Host), (slba, nlb, 0), kind, ctx);
            Ok(())
        }
        opcode::NVM_DATASET_MANAGEMENT => {
            if !ctrlr.write_cache_enabled() && reqs.req(idx).cursor == 0 && cmd.cdw11 & DSM_AD != 0 {
                reqs.req_mut(idx).flush_after = true;
            }
            dataset_management(reqs, idx, rref, vol_id, ctx)
        }
        opcode::NVM_COPY => {
            let cache_on = ctrlr.write_cache_enabled();
            crate::nvmf::copy::execute(reqs, idx, rref, vol_id, cache_on, ctx)
        }
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// A Compare's read is complete: its verdict becomes the command's status (unless
/// the read failed).
pub fn compare_done(reqs: &mut ReqTable, idx: u16) {
    let r = reqs.req_mut(idx);
    if r.status.is_success() && !r.compare_matches(r.data_len as usize) {
        r.status = Status::COMPARE_FAILURE.with_dnr();
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
        parsed.push((slba, nlb));
    }
    for (slba, nlb) in parsed {
        if nlb == 0 {
            continue;
        }
        if !vio::run(reqs, idx, rref, (vol_id, Origin::Host), (slba, nlb, base), Kind::Deallocate, ctx) {
            return Ok(());
        }
        base += nlb;
    }
    Ok(())
}
