//! Admin and Fabrics command execution.
//!
//! Runs on the reactor that serves the admin queue. Commands here build small replies
//! (Identify pages, log pages) into the request's pool buffer and complete at once,
//! except Asynchronous Event Requests, which wait (`AwaitingEvent`) until the
//! controller has an event. Connect creates a controller (admin queue) or attaches an
//! I/O queue to one; the registry checks the subsystem NQN, the host allow-list and
//! the controller ID.

use std::sync::Arc;

use quire_wire::nvme::fabrics::{
    ConnectCmd, ConnectData, PropertyCmd, CNTLID_DYNAMIC, CONNECT_DATA_SIZE, PROP_CAP, PROP_CC, PROP_CSTS, PROP_VS,
};
use quire_wire::nvme::features::{self as feat, FeatureRequest};
use quire_wire::nvme::identify::{self as ident, ControllerIdentity, NamespaceIdentity, NsDescriptor};
use quire_wire::nvme::log::{self, AnaGroup, DiscoveryEntry, LogPageRequest};
use quire_wire::nvme::{opcode, Status, DISCOVERY_NQN};

use crate::cast::{hi32, lo32, usize_from};
use crate::nvmf::ctrlr::{NvmfController, AER_MAX, ERROR_LOG_MAX};
use crate::nvmf::subsystem::{Registry, SubsystemKind};
use crate::nvmf::tcp::qpair::QueueInfo;
use crate::nvmf::tcp::req::{ReqState, ReqTable};
use crate::reactor::stats::get;
use crate::reactor::{ReactorCtx, ReqRef};

/// NVMe version reported in the VS property and Identify Controller (1.4).
pub const NVME_VERSION: u32 = ident::VER_1_4;
/// CAP.TO: worst-case time to become ready, in 500 ms units.
const CAP_TO: u64 = 15;
/// Model number in Identify Controller.
pub const MODEL: &str = "Quire";

/// What the connection does after the command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Next {
    /// Carry on.
    Continue,
    /// Send the response, then close the connection (Disconnect).
    CloseAfterResponse,
}

/// A command's result: status and completion dwords.
struct Done {
    status: Status,
    dw0: u32,
    dw1: u32,
}

impl Done {
    fn ok(dw0: u32) -> Done {
        Done { status: Status::SUCCESS, dw0, dw1: 0 }
    }

    fn err(status: Status) -> Done {
        Done { status, dw0: 0, dw1: 0 }
    }

    /// Connect Invalid Parameters, pointing at byte `offset` of the command (`data` =
    /// false) or of the Connect data (`data` = true).
    fn invalid_param(data: bool, offset: u32) -> Done {
        Done { status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(), dw0: (u32::from(data) << 16) | offset, dw1: 0 }
    }
}

/// Executes admin or Fabrics command `idx`; sets its next state.
pub fn execute(q: &mut QueueInfo, reqs: &mut ReqTable, idx: u16, rref: ReqRef, ctx: &mut ReactorCtx) -> Next {
    let cmd = reqs.req(idx).cmd;
    let (done, next) = if cmd.opcode == opcode::FABRICS {
        fabrics(q, reqs, idx, ctx)
    } else if q.qid != Some(0) {
        (Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()), Next::Continue)
    } else {
        let ctrlr = q.ctrlr.clone().expect("admin queue has a controller once connected");
        if !ctrlr.is_ready() {
            (Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()), Next::Continue)
        } else {
            ctrlr.touch_keepalive();
            if cmd.opcode == opcode::ADMIN_ASYNC_EVENT_REQUEST {
                if q.aers.len() >= AER_MAX {
                    (Done::err(Status::AER_LIMIT_EXCEEDED.with_dnr()), Next::Continue)
                } else {
                    q.aers.push(cmd.cid);
                    reqs.set_state(idx, ReqState::AwaitingEvent);
                    return Next::Continue;
                }
            } else {
                let done = admin(q, &ctrlr, reqs, idx, ctx);
                if done.status.is_success() && disables_write_cache(&cmd) {
                    // What the caches held must be on stable media before the host
                    // hears that the cache is off: this peer's device, and in a group
                    // every other peer that owns pages of the volume (`volume::io`).
                    reqs.req_mut(idx).dw0 = done.dw0;
                    if let Some(vol) = ctrlr.volume.filter(|v| ctx.volumes.contains_key(v)) {
                        let origin = crate::volume::io::Origin::Host;
                        if crate::volume::io::flush(reqs, idx, rref, (vol, origin), ctx) {
                            // Submitted (or failed): completes when the flushes are back.
                            reqs.set_state(idx, ReqState::Executing);
                        }
                        // Otherwise parked on a full device queue; it runs again
                        // (idempotently) when the device has room.
                        return Next::Continue;
                    }
                }
                (done, Next::Continue)
            }
        }
    };
    let r = reqs.req_mut(idx);
    r.fail(done.status);
    r.dw0 = done.dw0;
    r.dw1 = done.dw1;
    reqs.set_state(idx, ReqState::ReadyToComplete);
    next
}

/// Set Features: Volatile Write Cache, off.
fn disables_write_cache(cmd: &quire_wire::nvme::Command) -> bool {
    let f = FeatureRequest::from_command(cmd);
    cmd.opcode == opcode::ADMIN_SET_FEATURES
        && f.fid == feat::FID_VOLATILE_WRITE_CACHE
        && f.cdw11 & feat::VWC_ENABLE == 0
}

// ----- Fabrics ------------------------------------------------------------------------

fn fabrics(q: &mut QueueInfo, reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> (Done, Next) {
    let cmd = reqs.req(idx).cmd;
    match cmd.fctype() {
        opcode::FCTYPE_CONNECT => (connect(q, reqs, idx, ctx), Next::Continue),
        _ if q.qid.is_none() => (Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()), Next::Continue),
        opcode::FCTYPE_PROPERTY_GET if q.qid == Some(0) => {
            (property_get(q, &PropertyCmd::from_command(&cmd), ctx), Next::Continue)
        }
        opcode::FCTYPE_PROPERTY_SET if q.qid == Some(0) => {
            let p = PropertyCmd::from_command(&cmd);
            let c = q.ctrlr.clone().expect("connected");
            c.touch_keepalive();
            match p.offset {
                PROP_CC => {
                    c.set_cc(lo32(p.value)); // CC is a 4-byte property
                    (Done::ok(0), Next::Continue)
                }
                _ => (Done::err(Status::INVALID_FIELD.with_dnr()), Next::Continue),
            }
        }
        opcode::FCTYPE_DISCONNECT => (Done::ok(0), Next::CloseAfterResponse),
        opcode::FCTYPE_PROPERTY_GET | opcode::FCTYPE_PROPERTY_SET => {
            (Done::err(Status::INVALID_FIELD.with_dnr()), Next::Continue)
        }
        _ => (Done::err(Status::INVALID_OPCODE.with_dnr()), Next::Continue),
    }
}

fn property_get(q: &QueueInfo, p: &PropertyCmd, ctx: &ReactorCtx) -> Done {
    let c = q.ctrlr.as_ref().expect("connected");
    c.touch_keepalive();
    let value: u64 = match p.offset {
        PROP_CAP => {
            let mqes = u64::from(ctx.registry.params.max_queue_depth - 1);
            // MQES, CQR (contiguous queues required), TO, CSS bit 37 (NVM command set).
            mqes | (1 << 16) | (CAP_TO << 24) | (1 << 37)
        }
        PROP_VS => u64::from(NVME_VERSION),
        PROP_CC => u64::from(c.state().cc),
        PROP_CSTS => u64::from(c.state().csts),
        _ => return Done::err(Status::INVALID_FIELD.with_dnr()),
    };
    Done { status: Status::SUCCESS, dw0: lo32(value), dw1: if p.size8 { hi32(value) } else { 0 } }
}

fn connect(q: &mut QueueInfo, reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> Done {
    let r = reqs.req(idx);
    let cc = ConnectCmd::from_command(&r.cmd);
    if q.qid.is_some() {
        return Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    if cc.recfmt != 0 {
        return Done::err(Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
    }
    if (r.data_len as usize) < CONNECT_DATA_SIZE || r.bufs.is_empty() {
        return Done::err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    let Some(data) = ConnectData::from_bytes(&r.data_vec(0, CONNECT_DATA_SIZE)) else {
        return Done::err(Status::INVALID_FIELD.with_dnr());
    };
    let registry = ctx.registry.clone();
    let p = &registry.params;
    if cc.sqsize == 0 || cc.sqsize >= p.max_queue_depth {
        // SQSIZE is CDW11 bits 15:0: byte 44 of the command.
        return Done::invalid_param(false, 44);
    }
    if data.hostid == [0; 16] {
        return Done::invalid_param(true, 0);
    }
    if cc.qid == 0 {
        connect_admin(q, &registry, &cc, &data, ctx.id)
    } else {
        connect_io(q, &registry, &cc, &data)
    }
}

fn connect_admin(q: &mut QueueInfo, registry: &Registry, cc: &ConnectCmd, data: &ConnectData, reactor: usize) -> Done {
    let mut r = registry.lock();
    let Some(sub) = r.subsystems.get(&data.subnqn) else {
        tracing::info!(subnqn = %data.subnqn, host = %data.hostnqn, "connect to an unknown subsystem");
        return Done::invalid_param(true, 256);
    };
    if !sub.allows(&data.hostnqn) {
        tracing::info!(subnqn = %data.subnqn, host = %data.hostnqn, "host not on the allow-list");
        return Done::err(Status::CONNECT_INVALID_HOST.with_dnr());
    }
    if data.cntlid != CNTLID_DYNAMIC && data.cntlid != 0 {
        // The dynamic controller model: the host must let the target choose.
        return Done::invalid_param(true, 16);
    }
    let discovery = matches!(sub.kind, SubsystemKind::Discovery);
    let volume = sub.volume().map(|v| v.id);
    let Some(cntlid) = Registry::next_cntlid(&mut r) else {
        return Done::err(Status::CONNECT_CONTROLLER_BUSY);
    };
    let ctrlr = Arc::new(NvmfController::new(
        cntlid,
        data.subnqn.clone(),
        data.hostnqn.clone(),
        data.hostid,
        volume,
        discovery,
        cc.kato_ms,
        registry.params.max_io_queues,
        reactor,
    ));
    ctrlr.touch_keepalive();
    ctrlr.set_inaccessible(r.ana_state == Some(log::AnaState::Inaccessible));
    r.controllers.insert(cntlid, ctrlr.clone());
    tracing::info!(cntlid, subnqn = %data.subnqn, host = %data.hostnqn, kato_ms = cc.kato_ms, "controller created");
    q.qid = Some(0);
    q.sqsize = cc.sqsize + 1;
    q.ctrlr = Some(ctrlr);
    Done::ok(u32::from(cntlid))
}

fn connect_io(q: &mut QueueInfo, registry: &Registry, cc: &ConnectCmd, data: &ConnectData) -> Done {
    let ctrlr = registry.lock().controllers.get(&data.cntlid).cloned();
    let Some(ctrlr) = ctrlr else {
        return Done::invalid_param(true, 16);
    };
    if ctrlr.subnqn != data.subnqn {
        return Done::invalid_param(true, 256);
    }
    if ctrlr.hostnqn != data.hostnqn || ctrlr.hostid != data.hostid {
        return Done::invalid_param(true, 512);
    }
    if ctrlr.discovery || ctrlr.is_dead() {
        return Done::invalid_param(true, 16);
    }
    if !ctrlr.is_enabled() {
        return Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    let mut st = ctrlr.state();
    if cc.qid > st.io_queues_granted || st.connected_qids.contains(&cc.qid) {
        // QID is CDW10 bits 31:16: byte 42 of the command.
        return Done::invalid_param(false, 42);
    }
    st.connected_qids.insert(cc.qid);
    drop(st);
    q.qid = Some(cc.qid);
    q.sqsize = cc.sqsize + 1;
    q.sqflow_disabled = cc.cattr & 0x4 != 0;
    q.host_io = Some(ctrlr.queue_io());
    q.ctrlr = Some(ctrlr.clone());
    tracing::debug!(cntlid = ctrlr.cntlid, qid = cc.qid, sqsize = q.sqsize, "I/O queue connected");
    Done::ok(u32::from(ctrlr.cntlid))
}

// ----- Admin commands -------------------------------------------------------------------

fn admin(q: &QueueInfo, c: &NvmfController, reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> Done {
    let cmd = reqs.req(idx).cmd;
    match cmd.opcode {
        opcode::ADMIN_IDENTIFY => identify(c, reqs, idx, ctx),
        opcode::ADMIN_GET_LOG_PAGE => get_log_page(q, c, reqs, idx, ctx),
        opcode::ADMIN_SET_FEATURES => set_features(c, &FeatureRequest::from_command(&cmd)),
        opcode::ADMIN_GET_FEATURES => get_features(c, reqs, idx, &FeatureRequest::from_command(&cmd)),
        opcode::ADMIN_KEEP_ALIVE => Done::ok(0),
        // Commands here finish in microseconds; report "not aborted" (DW0 bit 0).
        opcode::ADMIN_ABORT => Done::ok(1),
        _ => Done::err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// Copies `page` into the request's data (at most its length) and zeroes the rest of
/// what the host asked for.
fn reply(reqs: &mut ReqTable, idx: u16, page: &[u8], want: usize) -> Done {
    let r = reqs.req_mut(idx);
    let len = want.min(r.data_len as usize);
    if len == 0 || r.bufs.is_empty() {
        return Done::err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    let n = page.len().min(len);
    r.put_data(0, &page[..n]);
    if len > n {
        r.zero_data(n as u64, (len - n) as u64);
    }
    r.c2h_len = u32::try_from(len).expect("a command's data length is a u32 (NLB or SGL length)");
    Done::ok(0)
}

fn controller_identity(c: &NvmfController, ctx: &ReactorCtx) -> ControllerIdentity {
    let p = &ctx.registry.params;
    let serial = ctx.registry.lock().subsystems.get(&c.subnqn).map(|s| s.serial.clone()).unwrap_or_default();
    let mut id = ControllerIdentity {
        serial,
        model: MODEL.into(),
        firmware: env!("CARGO_PKG_VERSION").chars().take(8).collect(),
        cmic: ident::CMIC_MULTI_PORT | ident::CMIC_MULTI_CTRL | ident::CMIC_ANA,
        mdts: ident::mdts_for(p.max_transfer_size),
        cntlid: c.cntlid,
        ver: NVME_VERSION,
        oaes: ident::OAES_NS_ATTR | ident::OAES_ANA_CHANGE,
        cntrltype: ident::CNTRLTYPE_IO,
        acl: 3,
        aerl: u8::try_from(AER_MAX - 1).expect("AER_MAX ≤ 256"),
        frmw: ident::FRMW_SLOT1_RO | (1 << ident::FRMW_SLOTS_SHIFT),
        lpa: ident::LPA_CMD_EFFECTS | ident::LPA_EXTENDED_DATA,
        elpe: u8::try_from(ERROR_LOG_MAX - 1).expect("ERROR_LOG_MAX ≤ 256"),
        wctemp: 343,
        cctemp: 373,
        kas: 10,
        anatt: 10,
        anacap: ident::ANACAP_OPTIMIZED | ident::ANACAP_NON_OPTIMIZED | ident::ANACAP_INACCESSIBLE,
        anagrpmax: crate::nvmf::subsystem::ANA_GROUP_MAX,
        // Each controller reports one group, its peer's.
        nanagrpid: 1,
        maxcmd: p.max_queue_depth,
        nn: 1,
        // Linux rejects an ANA-reporting controller whose MNAN is 0 or above NN.
        mnan: 1,
        oncs: ident::ONCS_COMPARE | ident::ONCS_DSM | ident::ONCS_WRITE_ZEROES | ident::ONCS_COPY,
        ocfs: ident::OCFS_FORMAT_0,
        vwc: ident::VWC_PRESENT | ident::VWC_FLUSH_ALL_UNSUPPORTED,
        sgls: ident::SGLS_SUPPORTED | ident::SGLS_OFFSET | ident::SGLS_TRANSPORT_DATA_BLOCK,
        subnqn: c.subnqn.clone(),
        ioccsz: ident::ioccsz_for(p.in_capsule_data_size),
        ..ControllerIdentity::default()
    };
    if c.discovery {
        id.cntrltype = ident::CNTRLTYPE_DISCOVERY;
        id.oaes = ident::OAES_DISCOVERY_CHANGE;
        id.cmic = 0;
        id.nn = 0;
        id.mnan = 0;
        id.oncs = 0;
        id.ocfs = 0;
        id.vwc = 0;
        id.anacap = 0;
        id.anagrpmax = 0;
        id.nanagrpid = 0;
        id.subnqn = DISCOVERY_NQN.into();
    }
    id
}

fn identify(c: &NvmfController, reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> Done {
    let cmd = reqs.req(idx).cmd;
    let cns = (cmd.cdw10 & 0xff) as u8;
    let vol = c.volume.and_then(|v| ctx.volumes.get(&v));
    let page: Box<[u8; ident::IDENTIFY_DATA_SIZE]> = match cns {
        ident::CNS_CONTROLLER => ident::build_controller(&controller_identity(c, ctx)),
        _ if c.discovery => return Done::err(Status::INVALID_FIELD.with_dnr()),
        ident::CNS_NAMESPACE => {
            if cmd.nsid != 1 && cmd.nsid != 0xffff_ffff {
                return Done::err(Status::INVALID_NAMESPACE.with_dnr());
            }
            match vol {
                // An inactive (deleted) namespace reads as zeroes.
                None => Box::new([0u8; ident::IDENTIFY_DATA_SIZE]),
                Some(v) if cmd.nsid == 1 => {
                    let info = &v.view.info;
                    let allocated = v.view.pages.allocated() * info.blocks_per_page();
                    let page_bytes = u32::try_from(info.page_size).unwrap_or(1 << 30);
                    let mut ns = NamespaceIdentity::thin_shared(
                        info.num_blocks(),
                        allocated,
                        info.block_size,
                        page_bytes,
                        ctx.registry.ana_group(),
                        info.nguid,
                    );
                    let limits =
                        crate::nvmf::copy::CopyLimits::new(ctx.registry.params.max_transfer_size, info.block_size);
                    ns.mssrl = u16::try_from(limits.mssrl).expect("clamped to u16");
                    ns.mcl = u32::try_from(limits.mcl).unwrap_or(u32::MAX);
                    ns.msrc = u8::try_from(limits.ranges - 1).expect("at most 256 ranges");
                    ident::build_namespace(&ns)
                }
                Some(_) => Box::new([0u8; ident::IDENTIFY_DATA_SIZE]),
            }
        }
        ident::CNS_ACTIVE_NS_LIST => {
            let active: &[u32] = if vol.is_some() { &[1] } else { &[] };
            ident::build_active_ns_list(active, cmd.nsid)
        }
        ident::CNS_NS_DESCRIPTORS => match (cmd.nsid, vol) {
            (1, Some(v)) => ident::build_ns_descriptors(&[
                NsDescriptor::Nguid(v.view.info.nguid),
                NsDescriptor::Uuid(v.view.info.uuid),
                NsDescriptor::Csi(ident::CSI_NVM),
            ]),
            _ => return Done::err(Status::INVALID_NAMESPACE.with_dnr()),
        },
        _ => return Done::err(Status::INVALID_FIELD.with_dnr()),
    };
    reply(reqs, idx, &page[..], ident::IDENTIFY_DATA_SIZE)
}

fn get_log_page(q: &QueueInfo, c: &NvmfController, reqs: &mut ReqTable, idx: u16, ctx: &mut ReactorCtx) -> Done {
    let lp = LogPageRequest::from_command(&reqs.req(idx).cmd);
    let data: Vec<u8> = match lp.lid {
        log::LID_DISCOVERY if c.discovery => discovery_log(q, c, ctx),
        _ if c.discovery => return Done::err(Status::INVALID_FIELD.with_dnr()),
        log::LID_ERROR => {
            let st = c.state();
            let entries: Vec<log::ErrorLogEntry> = st
                .errors
                .iter()
                .rev()
                .map(|e| log::ErrorLogEntry {
                    error_count: e.count,
                    sqid: e.sqid,
                    cid: e.cid,
                    status_field: e.status.to_field() << 1,
                    param_error_location: 0xffff,
                    lba: e.lba,
                    nsid: e.nsid,
                    trtype: 0,
                    command_specific: 0,
                })
                .collect();
            let mut out = vec![0u8; ERROR_LOG_MAX * log::ERROR_ENTRY_SIZE];
            log::write_error_log(&entries, ERROR_LOG_MAX, &mut out);
            out
        }
        log::LID_SMART => smart_log(c, ctx).to_bytes().to_vec(),
        log::LID_FW_SLOT => log::FirmwareSlotLog::single(env!("CARGO_PKG_VERSION")).to_bytes().to_vec(),
        log::LID_CHANGED_NS => {
            let mut st = c.state();
            let changed: Vec<u32> = st.changed_ns.iter().copied().collect();
            if !lp.rae {
                st.changed_ns.clear();
            }
            log::build_changed_ns_log(&changed).to_vec()
        }
        log::LID_CMD_EFFECTS => log::CommandEffects::io_controller().to_bytes().to_vec(),
        log::LID_ANA => {
            let nsids = if c.volume.is_some_and(|v| ctx.volumes.contains_key(&v)) { vec![1] } else { vec![] };
            let grpid = ctx.registry.ana_group();
            let (state, chgcnt) = ctx.registry.ana_for(&c.hostnqn, c.volume);
            let groups = [AnaGroup { grpid, chgcnt, state, nsids }];
            log::build_ana_log(chgcnt, &groups, lp.lsp & log::LSP_ANA_RGO != 0)
        }
        _ => return Done::err(Status::INVALID_FIELD.with_dnr()),
    };
    let Some(window) = lp.window(data.len()) else {
        return Done::err(Status::INVALID_FIELD.with_dnr());
    };
    reply(reqs, idx, &data[window], usize_from(lp.len_bytes()))
}

fn smart_log(c: &NvmfController, ctx: &ReactorCtx) -> log::SmartLog {
    let (mut rb, mut wb, mut ro, mut wo, mut errors) = (0u64, 0u64, 0u64, 0u64, 0u64);
    if let Some(v) = c.volume.and_then(|v| ctx.volumes.get(&v)) {
        for counters in v.all_counters.iter() {
            rb += get(&counters.read_bytes);
            wb += get(&counters.write_bytes);
            ro += get(&counters.read_ops);
            wo += get(&counters.write_ops);
            errors += get(&counters.errors);
        }
    }
    let uptime_hours = ctx.started.elapsed().as_secs() / 3600;
    log::SmartLog {
        critical_warning: 0,
        temperature_k: 313,
        available_spare: 100,
        spare_threshold: 10,
        percentage_used: 0,
        data_units_read: log::data_units(u128::from(rb)),
        data_units_written: log::data_units(u128::from(wb)),
        host_read_commands: u128::from(ro),
        host_write_commands: u128::from(wo),
        controller_busy_minutes: 0,
        power_cycles: 1,
        power_on_hours: u128::from(uptime_hours),
        unsafe_shutdowns: 0,
        media_errors: u128::from(errors),
        error_log_entries: u128::from(c.state().error_count),
    }
}

fn discovery_log(q: &QueueInfo, c: &NvmfController, ctx: &ReactorCtx) -> Vec<u8> {
    let r = ctx.registry.lock();
    // The group's other live peers serve every volume too (any peer takes any I/O):
    // one more path per peer, at the address its hosts reach it; the peers less loaded
    // than this one first (hosts that take the first path take the least loaded).
    // A peer's port id follows its address, not its place in the order.
    let mut by_addr = r.group_paths.clone();
    by_addr.sort();
    let others = |range: std::ops::Range<usize>, entries: &mut Vec<DiscoveryEntry>| {
        for addr in &r.group_paths[range] {
            let i = by_addr.binary_search(addr).expect("the same addresses");
            let portid = 0x100 + port_id(i);
            for s in r.subsystems.values() {
                if matches!(s.kind, SubsystemKind::Volume(_)) && s.allows(&c.hostnqn) {
                    let mut e = DiscoveryEntry::tcp_ipv4(
                        log::SUBTYPE_NVME,
                        portid,
                        &addr.ip().to_string(),
                        addr.port(),
                        &s.nqn,
                    );
                    e.asqsz = ctx.registry.params.max_queue_depth;
                    e.treq |= log::TREQ_DISABLE_SQFLOW;
                    entries.push(e);
                }
            }
        }
    };
    let mut entries = Vec::new();
    let before = r.paths_before.min(r.group_paths.len());
    others(0..before, &mut entries);
    for (portid, l) in r.listeners.iter().enumerate() {
        let ip = if l.addr.ip().is_unspecified() { q.local_ip } else { l.addr.ip() };
        // Behind NAT or port forwarding hosts reach the advertised address; the
        // advertised port stands for the I/O listener (a discovery listener keeps its
        // own port).
        let advertise = ctx.registry.params.advertise;
        let addr = advertise.map_or(ip, |(a, _)| a).to_string();
        if l.discovery {
            entries.push(DiscoveryEntry::tcp_ipv4(
                log::SUBTYPE_CURRENT_DISCOVERY,
                port_id(portid),
                &addr,
                l.addr.port(),
                DISCOVERY_NQN,
            ));
            continue;
        }
        let port = advertise.and_then(|(_, p)| p).unwrap_or(l.addr.port());
        for s in r.subsystems.values() {
            let subtype = match s.kind {
                SubsystemKind::Discovery => log::SUBTYPE_CURRENT_DISCOVERY,
                SubsystemKind::Volume(_) if s.allows(&c.hostnqn) => log::SUBTYPE_NVME,
                SubsystemKind::Volume(_) => continue,
            };
            let mut e = DiscoveryEntry::tcp_ipv4(subtype, port_id(portid), &addr, port, &s.nqn);
            e.asqsz = ctx.registry.params.max_queue_depth;
            // Hosts may disable SQ flow control on these queues (then reads end with
            // their C2HData PDU alone).
            e.treq |= log::TREQ_DISABLE_SQFLOW;
            entries.push(e);
        }
    }
    others(before..r.group_paths.len(), &mut entries);
    log::build_discovery_log(r.discovery_genctr, &entries)
}

/// A listener's index as its discovery-log port id (listeners are a handful).
fn port_id(index: usize) -> u16 {
    u16::try_from(index).expect("fewer than 65536 listeners")
}

fn set_features(c: &NvmfController, f: &FeatureRequest) -> Done {
    if f.save {
        return Done::err(Status::FEATURE_NOT_SAVEABLE.with_dnr());
    }
    let mut st = c.state();
    match f.fid {
        feat::FID_NUMBER_OF_QUEUES => {
            let (nsqr, ncqr) = (f.cdw11 & 0xffff, f.cdw11 >> 16);
            if nsqr == 0xffff || ncqr == 0xffff {
                return Done::err(Status::INVALID_FIELD.with_dnr());
            }
            if !st.connected_qids.is_empty() {
                return Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
            }
            let max = u32::from(st.io_queues_granted.max(1));
            let granted = (nsqr.min(ncqr) + 1).min(max);
            st.io_queues_granted = u16::try_from(granted).expect("granted ≤ io_queues_granted, a u16");
            Done::ok((granted - 1) | ((granted - 1) << 16))
        }
        feat::FID_KEEP_ALIVE_TIMER => {
            drop(st);
            c.set_kato_ms(f.cdw11);
            Done::ok(0)
        }
        feat::FID_ASYNC_EVENT_CONFIG => {
            st.async_event_config = f.cdw11;
            Done::ok(0)
        }
        feat::FID_VOLATILE_WRITE_CACHE => {
            // Turning it off also flushes what the cache holds: `execute` submits a
            // device Flush before the command completes.
            c.set_write_cache(f.cdw11 & feat::VWC_ENABLE != 0);
            Done::ok(0)
        }
        // The host identifier is fixed by Connect on fabrics.
        feat::FID_HOST_IDENTIFIER => Done::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
        feat::FID_ARBITRATION
        | feat::FID_POWER_MANAGEMENT
        | feat::FID_TEMPERATURE_THRESHOLD
        | feat::FID_ERROR_RECOVERY
        | feat::FID_INTERRUPT_COALESCING
        | feat::FID_WRITE_ATOMICITY => {
            st.features.insert(f.fid, f.cdw11);
            Done::ok(0)
        }
        _ => Done::err(Status::INVALID_FIELD.with_dnr()),
    }
}

fn get_features(c: &NvmfController, reqs: &mut ReqTable, idx: u16, f: &FeatureRequest) -> Done {
    let changeable = matches!(
        f.fid,
        feat::FID_NUMBER_OF_QUEUES
            | feat::FID_KEEP_ALIVE_TIMER
            | feat::FID_ASYNC_EVENT_CONFIG
            | feat::FID_VOLATILE_WRITE_CACHE
            | feat::FID_ARBITRATION
            | feat::FID_POWER_MANAGEMENT
            | feat::FID_TEMPERATURE_THRESHOLD
            | feat::FID_ERROR_RECOVERY
            | feat::FID_INTERRUPT_COALESCING
            | feat::FID_WRITE_ATOMICITY
            | feat::FID_HOST_IDENTIFIER
    );
    if !changeable {
        return Done::err(Status::INVALID_FIELD.with_dnr());
    }
    if f.sel == feat::SEL_SUPPORTED_CAPABILITIES {
        // Bit 2: changeable.
        return Done::ok(if f.fid == feat::FID_HOST_IDENTIFIER { 0 } else { 0b100 });
    }
    let default = f.sel == feat::SEL_DEFAULT;
    let st = c.state();
    let value = match f.fid {
        feat::FID_NUMBER_OF_QUEUES => {
            let n = u32::from(st.io_queues_granted.max(1)) - 1;
            n | (n << 16)
        }
        feat::FID_KEEP_ALIVE_TIMER => {
            if default {
                0
            } else {
                c.kato_ms()
            }
        }
        feat::FID_ASYNC_EVENT_CONFIG => {
            if default {
                0
            } else {
                st.async_event_config
            }
        }
        feat::FID_VOLATILE_WRITE_CACHE => u32::from(default || c.write_cache_enabled()),
        feat::FID_TEMPERATURE_THRESHOLD if default || !st.features.contains_key(&f.fid) => 343,
        feat::FID_HOST_IDENTIFIER => {
            if f.cdw11 & 1 == 0 {
                // Only the 128-bit host identifier exists on fabrics.
                return Done::err(Status::INVALID_FIELD.with_dnr());
            }
            let hostid = c.hostid;
            drop(st);
            return reply(reqs, idx, &hostid, 16);
        }
        fid => {
            if default {
                0
            } else {
                st.features.get(&fid).copied().unwrap_or(0)
            }
        }
    };
    Done::ok(value)
}
