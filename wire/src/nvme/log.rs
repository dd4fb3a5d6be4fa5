//! Log pages: Get Log Page command fields, log page builders and parsers.
//!
//! A controller answers Get Log Page by building the whole log and returning the
//! window the host asked for (`LPOL/LPOU` offset, `NUMDL/NUMDU` length in dwords).
//! Hosts read logs in pieces: the Linux host reads the discovery log header first to
//! learn NUMREC and GENCTR, then the entries, then the header again to check that
//! GENCTR did not change meanwhile; it reads the ANA log after every ANA change
//! notice. So builders produce the complete log and [`LogPageRequest::window`] picks
//! the bytes to send.
//!
//! Layouts follow the NVMe Base Specification 2.0 ("Error Information Log Entry",
//! "SMART / Health Information Log", "Firmware Slot Information Log", "Changed
//! Namespace List", "Commands Supported and Effects", "Asymmetric Namespace Access")
//! and NVMe over Fabrics ("Discovery Log Page"), cross-checked with Linux
//! `include/linux/nvme.h` (`nvme_error_slot`, `nvme_smart_log`,
//! `nvme_fw_slot_info_log`, `nvme_effects_log`, `nvme_ana_rsp_hdr`,
//! `nvme_ana_group_desc`, `nvmf_disc_rsp_page_hdr`, `nvmf_disc_rsp_page_entry`).

use std::ops::Range;

use crate::nvme::{Command, NQN_SIZE};
use crate::{get_str, get_u16, get_u32, get_u64, put_str_nul, put_str_padded, put_u16, put_u32, put_u64};

/// Log identifier: Supported Log Pages.
pub const LID_SUPPORTED: u8 = 0x00;
/// Log identifier: Error Information.
pub const LID_ERROR: u8 = 0x01;
/// Log identifier: SMART / Health Information.
pub const LID_SMART: u8 = 0x02;
/// Log identifier: Firmware Slot Information.
pub const LID_FW_SLOT: u8 = 0x03;
/// Log identifier: Changed Namespace List.
pub const LID_CHANGED_NS: u8 = 0x04;
/// Log identifier: Commands Supported and Effects.
pub const LID_CMD_EFFECTS: u8 = 0x05;
/// Log identifier: Asymmetric Namespace Access.
pub const LID_ANA: u8 = 0x0c;
/// Log identifier: Discovery (discovery controllers only).
pub const LID_DISCOVERY: u8 = 0x70;

/// Errors from parsing log pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum LogError {
    /// The buffer ends before the structure it should hold.
    #[error("log data truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

fn need(b: &[u8], n: usize) -> Result<(), LogError> {
    if b.len() < n {
        return Err(LogError::Truncated { need: n, have: b.len() });
    }
    Ok(())
}

/// Fields of a Get Log Page command.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LogPageRequest {
    /// Log page identifier.
    pub lid: u8,
    /// Log specific field (7 bits; for the ANA log bit 0 = return groups only).
    pub lsp: u8,
    /// Retain asynchronous event.
    pub rae: bool,
    /// Number of dwords to return, 1-based (NUMDU:NUMDL + 1).
    pub numd: u64,
    /// Log specific identifier.
    pub lsi: u16,
    /// Byte offset into the log (LPOU:LPOL).
    pub offset: u64,
    /// Command set identifier.
    pub csi: u8,
    /// Namespace identifier.
    pub nsid: u32,
}

/// ANA log LSP bit: return ANA group descriptors only, without NSIDs.
pub const LSP_ANA_RGO: u8 = 1 << 0;

impl LogPageRequest {
    /// Reads the Get Log Page fields: CDW10 LID 7:0, LSP 14:8, RAE 15, NUMDL 31:16;
    /// CDW11 NUMDU 15:0, LSI 31:16; CDW12 LPOL; CDW13 LPOU; CDW14 CSI 31:24.
    pub fn from_command(c: &Command) -> LogPageRequest {
        let numd0 = u64::from(c.cdw10 >> 16) | (u64::from(c.cdw11 & 0xffff) << 16);
        LogPageRequest {
            lid: (c.cdw10 & 0xff) as u8,
            lsp: ((c.cdw10 >> 8) & 0x7f) as u8,
            rae: c.cdw10 & (1 << 15) != 0,
            numd: numd0 + 1,
            lsi: (c.cdw11 >> 16) as u16,
            offset: u64::from(c.cdw12) | (u64::from(c.cdw13) << 32),
            csi: (c.cdw14 >> 24) as u8,
            nsid: c.nsid,
        }
    }

    /// A Get Log Page command with these fields.
    ///
    /// # Panics
    /// If `numd` is 0 or above 2^32, or `lsp` has more than 7 bits.
    pub fn to_command(&self, cid: u16) -> Command {
        assert!(self.numd >= 1 && self.numd <= 1 << 32, "NUMD is 1..=2^32 dwords");
        assert!(self.lsp < 0x80, "LSP is 7 bits");
        let numd0 = u32::try_from(self.numd - 1).expect("NUMD checked to be at most 2^32");
        Command {
            opcode: crate::nvme::opcode::ADMIN_GET_LOG_PAGE,
            cid,
            nsid: self.nsid,
            cdw10: u32::from(self.lid)
                | (u32::from(self.lsp) << 8)
                | (u32::from(self.rae) << 15)
                | ((numd0 & 0xffff) << 16),
            cdw11: (numd0 >> 16) | (u32::from(self.lsi) << 16),
            cdw12: crate::lo32(self.offset),
            cdw13: crate::hi32(self.offset),
            cdw14: u32::from(self.csi) << 24,
            ..Default::default()
        }
    }

    /// A request for `len_bytes` (a multiple of 4, at least 4) at `offset` of log `lid`.
    pub fn new(lid: u8, nsid: u32, offset: u64, len_bytes: u32) -> LogPageRequest {
        assert!(len_bytes >= 4 && len_bytes.is_multiple_of(4), "log reads are whole dwords");
        LogPageRequest { lid, nsid, offset, numd: u64::from(len_bytes / 4), ..Default::default() }
    }

    /// Bytes the host expects to receive.
    pub fn len_bytes(&self) -> u64 {
        self.numd * 4
    }

    /// The part of a `log_len`-byte log this request covers. The controller sends
    /// these bytes followed by zeroes up to [`len_bytes`](Self::len_bytes). `None`
    /// when the offset is not dword aligned or lies beyond the log: the command then
    /// completes with Invalid Field in Command.
    pub fn window(&self, log_len: usize) -> Option<Range<usize>> {
        if !self.offset.is_multiple_of(4) || self.offset > log_len as u64 {
            return None;
        }
        let start = usize::try_from(self.offset).expect("offset checked to be at most log_len, a usize");
        let end = usize::try_from(self.offset.saturating_add(self.len_bytes()).min(log_len as u64))
            .expect("at most log_len, a usize");
        assert!(start <= end && end <= log_len);
        Some(start..end)
    }
}

/// Size of one Error Information log entry.
pub const ERROR_ENTRY_SIZE: usize = 64;

/// One Error Information log entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ErrorLogEntry {
    /// Unique, incrementing error count (0 = empty entry).
    pub error_count: u64,
    /// Submission queue of the failed command.
    pub sqid: u16,
    /// Command identifier of the failed command.
    pub cid: u16,
    /// Status field (bits 15:1) and phase tag (bit 0), as in the CQE's DW3 31:16.
    pub status_field: u16,
    /// Parameter error location: byte (7:0) and bit (10:8) in the command.
    pub param_error_location: u16,
    /// First LBA with an error.
    pub lba: u64,
    /// Namespace of the error.
    pub nsid: u32,
    /// Transport type (3 = TCP) when transport specific information is present.
    pub trtype: u8,
    /// Command specific information.
    pub command_specific: u64,
}

impl ErrorLogEntry {
    /// Writes the entry into 64 bytes.
    pub fn write(&self, out: &mut [u8]) {
        assert!(out.len() >= ERROR_ENTRY_SIZE);
        out[..ERROR_ENTRY_SIZE].fill(0);
        put_u64(out, 0, self.error_count);
        put_u16(out, 8, self.sqid);
        put_u16(out, 10, self.cid);
        put_u16(out, 12, self.status_field);
        put_u16(out, 14, self.param_error_location);
        put_u64(out, 16, self.lba);
        put_u32(out, 24, self.nsid);
        out[29] = self.trtype;
        put_u64(out, 32, self.command_specific);
    }

    /// Reads an entry.
    pub fn parse(b: &[u8]) -> Result<ErrorLogEntry, LogError> {
        need(b, ERROR_ENTRY_SIZE)?;
        Ok(ErrorLogEntry {
            error_count: get_u64(b, 0),
            sqid: get_u16(b, 8),
            cid: get_u16(b, 10),
            status_field: get_u16(b, 12),
            param_error_location: get_u16(b, 14),
            lba: get_u64(b, 16),
            nsid: get_u32(b, 24),
            trtype: b[29],
            command_specific: get_u64(b, 32),
        })
    }
}

/// Writes an Error Information log of `slots` entries (ELPE + 1), newest first as
/// `entries` gives them; slots without an entry stay zero. Returns the log length.
pub fn write_error_log(entries: &[ErrorLogEntry], slots: usize, out: &mut [u8]) -> usize {
    let len = slots * ERROR_ENTRY_SIZE;
    assert!(out.len() >= len, "output holds every slot");
    assert!(entries.len() <= slots, "no more entries than slots");
    out[..len].fill(0);
    for (i, e) in entries.iter().enumerate() {
        e.write(&mut out[i * ERROR_ENTRY_SIZE..]);
    }
    len
}

/// Size of the SMART / Health Information log.
pub const SMART_LOG_SIZE: usize = 512;

/// SMART critical warning bit: available spare below threshold.
pub const SMART_CRIT_SPARE: u8 = 1 << 0;
/// SMART critical warning bit: temperature outside thresholds.
pub const SMART_CRIT_TEMPERATURE: u8 = 1 << 1;
/// SMART critical warning bit: reliability degraded.
pub const SMART_CRIT_RELIABILITY: u8 = 1 << 2;
/// SMART critical warning bit: media placed in read-only mode.
pub const SMART_CRIT_READ_ONLY: u8 = 1 << 3;
/// SMART critical warning bit: volatile memory backup failed.
pub const SMART_CRIT_VOLATILE_MEMORY: u8 = 1 << 4;

/// SMART / Health Information log contents. Counters are 128-bit on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SmartLog {
    /// Critical warning bits (`SMART_CRIT_*`).
    pub critical_warning: u8,
    /// Composite temperature in kelvin (e.g. 313 = 40 °C).
    pub temperature_k: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub spare_threshold: u8,
    /// Percentage used (may exceed 100).
    pub percentage_used: u8,
    /// Data units read, in thousands of 512-byte units (see [`data_units`]).
    pub data_units_read: u128,
    /// Data units written, in thousands of 512-byte units.
    pub data_units_written: u128,
    /// Host read commands completed.
    pub host_read_commands: u128,
    /// Host write commands completed.
    pub host_write_commands: u128,
    /// Controller busy time in minutes.
    pub controller_busy_minutes: u128,
    /// Power cycles.
    pub power_cycles: u128,
    /// Power-on hours.
    pub power_on_hours: u128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u128,
    /// Media and data integrity errors.
    pub media_errors: u128,
    /// Number of error information log entries over the controller's life.
    pub error_log_entries: u128,
}

/// Data units (1000 × 512 bytes, rounded up) for `bytes` transferred.
pub fn data_units(bytes: u128) -> u128 {
    bytes.div_ceil(512 * 1000)
}

fn put_u128(b: &mut [u8], off: usize, v: u128) {
    b[off..off + 16].copy_from_slice(&v.to_le_bytes());
}

fn get_u128(b: &[u8], off: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    u128::from_le_bytes(a)
}

impl SmartLog {
    /// Encodes the 512-byte log.
    pub fn to_bytes(&self) -> [u8; SMART_LOG_SIZE] {
        let mut b = [0u8; SMART_LOG_SIZE];
        b[0] = self.critical_warning;
        put_u16(&mut b, 1, self.temperature_k);
        b[3] = self.available_spare;
        b[4] = self.spare_threshold;
        b[5] = self.percentage_used;
        let counters = [
            self.data_units_read,
            self.data_units_written,
            self.host_read_commands,
            self.host_write_commands,
            self.controller_busy_minutes,
            self.power_cycles,
            self.power_on_hours,
            self.unsafe_shutdowns,
            self.media_errors,
            self.error_log_entries,
        ];
        for (i, v) in counters.into_iter().enumerate() {
            put_u128(&mut b, 32 + 16 * i, v);
        }
        b
    }

    /// Decodes the log.
    pub fn parse(b: &[u8]) -> Result<SmartLog, LogError> {
        need(b, SMART_LOG_SIZE)?;
        let c = |i: usize| get_u128(b, 32 + 16 * i);
        Ok(SmartLog {
            critical_warning: b[0],
            temperature_k: get_u16(b, 1),
            available_spare: b[3],
            spare_threshold: b[4],
            percentage_used: b[5],
            data_units_read: c(0),
            data_units_written: c(1),
            host_read_commands: c(2),
            host_write_commands: c(3),
            controller_busy_minutes: c(4),
            power_cycles: c(5),
            power_on_hours: c(6),
            unsafe_shutdowns: c(7),
            media_errors: c(8),
            error_log_entries: c(9),
        })
    }
}

/// Size of the Firmware Slot Information log.
pub const FW_SLOT_LOG_SIZE: usize = 512;

/// Firmware Slot Information log: active slot and the revision in each of 7 slots.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FirmwareSlotLog {
    /// Active slot (1..=7) (AFI bits 2:0).
    pub active_slot: u8,
    /// Slot activated at the next reset, 0 = none (AFI bits 6:4).
    pub next_slot: u8,
    /// Revision per slot (empty = slot unused), at most 8 ASCII characters each.
    pub revisions: [String; 7],
}

impl FirmwareSlotLog {
    /// One firmware revision, active in slot 1.
    pub fn single(revision: &str) -> FirmwareSlotLog {
        let mut log = FirmwareSlotLog { active_slot: 1, ..Default::default() };
        log.revisions[0] = revision.to_string();
        log
    }

    /// Encodes the 512-byte log.
    pub fn to_bytes(&self) -> [u8; FW_SLOT_LOG_SIZE] {
        assert!(self.active_slot <= 7 && self.next_slot <= 7, "slots are 1..=7");
        let mut b = [0u8; FW_SLOT_LOG_SIZE];
        b[0] = (self.active_slot & 0x7) | ((self.next_slot & 0x7) << 4);
        for (i, rev) in self.revisions.iter().enumerate() {
            if !rev.is_empty() {
                put_str_padded(&mut b[8 + 8 * i..16 + 8 * i], rev);
            }
        }
        b
    }

    /// Decodes the log.
    pub fn parse(b: &[u8]) -> Result<FirmwareSlotLog, LogError> {
        need(b, FW_SLOT_LOG_SIZE)?;
        Ok(FirmwareSlotLog {
            active_slot: b[0] & 0x7,
            next_slot: (b[0] >> 4) & 0x7,
            revisions: std::array::from_fn(|i| get_str(&b[8 + 8 * i..16 + 8 * i])),
        })
    }
}

/// Entries in the Changed Namespace List log.
pub const CHANGED_NS_MAX: usize = 1024;
/// Size of the Changed Namespace List log.
pub const CHANGED_NS_LOG_SIZE: usize = CHANGED_NS_MAX * 4;

/// Encodes the Changed Namespace List: up to 1024 NSIDs, zero-terminated; with more
/// than 1024 changes the first entry is FFFFFFFFh and the rest zero, telling the host
/// to rescan everything.
pub fn build_changed_ns_log(changed: &[u32]) -> [u8; CHANGED_NS_LOG_SIZE] {
    let mut b = [0u8; CHANGED_NS_LOG_SIZE];
    if changed.len() > CHANGED_NS_MAX {
        put_u32(&mut b, 0, 0xffff_ffff);
        return b;
    }
    for (i, &nsid) in changed.iter().enumerate() {
        assert!(nsid != 0, "NSID 0 never changes");
        put_u32(&mut b, i * 4, nsid);
    }
    b
}

/// Reads a Changed Namespace List up to its first zero entry.
pub fn parse_changed_ns_log(b: &[u8]) -> Vec<u32> {
    crate::nvme::identify::parse_ns_list(b)
}

/// Size of the Commands Supported and Effects log.
pub const CMD_EFFECTS_LOG_SIZE: usize = 4096;
/// Effects bit: command supported.
pub const EFFECTS_CSUPP: u32 = 1 << 0;
/// Effects bit: logical block content change.
pub const EFFECTS_LBCC: u32 = 1 << 1;
/// Effects bit: namespace capability change.
pub const EFFECTS_NCC: u32 = 1 << 2;
/// Effects bit: namespace inventory change.
pub const EFFECTS_NIC: u32 = 1 << 3;
/// Effects bit: controller capability change.
pub const EFFECTS_CCC: u32 = 1 << 4;
/// Effects: command submission and execution field shift (bits 18:16).
pub const EFFECTS_CSE_SHIFT: u32 = 16;

/// Commands Supported and Effects: one dword per admin and per I/O opcode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommandEffects {
    /// Admin command effects, indexed by opcode.
    pub admin: [u32; 256],
    /// I/O command effects, indexed by opcode.
    pub io: [u32; 256],
}

impl Default for CommandEffects {
    fn default() -> CommandEffects {
        CommandEffects { admin: [0; 256], io: [0; 256] }
    }
}

impl CommandEffects {
    /// What a Quire I/O controller supports: the admin commands of a fabrics I/O
    /// controller, and Read, Write, Flush, Compare, Write Zeroes, Dataset Management
    /// and Copy.
    pub fn io_controller() -> CommandEffects {
        use crate::nvme::opcode as op;
        let mut e = CommandEffects::default();
        for opc in [
            op::ADMIN_GET_LOG_PAGE,
            op::ADMIN_IDENTIFY,
            op::ADMIN_ABORT,
            op::ADMIN_SET_FEATURES,
            op::ADMIN_GET_FEATURES,
            op::ADMIN_ASYNC_EVENT_REQUEST,
            op::ADMIN_KEEP_ALIVE,
        ] {
            e.admin[usize::from(opc)] = EFFECTS_CSUPP;
        }
        e.io[usize::from(op::NVM_READ)] = EFFECTS_CSUPP;
        e.io[usize::from(op::NVM_FLUSH)] = EFFECTS_CSUPP;
        e.io[usize::from(op::NVM_COMPARE)] = EFFECTS_CSUPP;
        for opc in [op::NVM_WRITE, op::NVM_WRITE_ZEROES, op::NVM_DATASET_MANAGEMENT, op::NVM_COPY] {
            e.io[usize::from(opc)] = EFFECTS_CSUPP | EFFECTS_LBCC;
        }
        e
    }

    /// Encodes the 4096-byte log (admin at 0, I/O at 1024, reserved after).
    pub fn to_bytes(&self) -> Box<[u8; CMD_EFFECTS_LOG_SIZE]> {
        let mut b = Box::new([0u8; CMD_EFFECTS_LOG_SIZE]);
        for i in 0..256 {
            put_u32(&mut b[..], i * 4, self.admin[i]);
            put_u32(&mut b[..], 1024 + i * 4, self.io[i]);
        }
        b
    }

    /// Decodes the log.
    pub fn parse(b: &[u8]) -> Result<CommandEffects, LogError> {
        need(b, 2048)?;
        Ok(CommandEffects {
            admin: std::array::from_fn(|i| get_u32(b, i * 4)),
            io: std::array::from_fn(|i| get_u32(b, 1024 + i * 4)),
        })
    }
}

/// ANA states.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum AnaState {
    /// Optimized: the preferred path.
    Optimized = 0x01,
    /// Non-optimized: usable, slower.
    NonOptimized = 0x02,
    /// Inaccessible: commands fail with an ANA status; may become accessible.
    Inaccessible = 0x03,
    /// Persistent loss: will not come back on this controller.
    PersistentLoss = 0x04,
    /// Change: the state is changing.
    Change = 0x0f,
}

impl AnaState {
    /// The state for a wire value (bits 3:0).
    pub fn from_u8(v: u8) -> Option<AnaState> {
        Some(match v & 0xf {
            0x01 => AnaState::Optimized,
            0x02 => AnaState::NonOptimized,
            0x03 => AnaState::Inaccessible,
            0x04 => AnaState::PersistentLoss,
            0x0f => AnaState::Change,
            _ => return None,
        })
    }
}

/// One ANA group descriptor.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AnaGroup {
    /// ANA group identifier.
    pub grpid: u32,
    /// Change count of this group.
    pub chgcnt: u64,
    /// State of the group on this controller.
    pub state: AnaState,
    /// Namespaces in the group (left out when the host asks for groups only).
    pub nsids: Vec<u32>,
}

/// Size of the ANA log header.
pub const ANA_HEADER_SIZE: usize = 16;
/// Size of an ANA group descriptor without its NSIDs.
pub const ANA_GROUP_SIZE: usize = 32;

/// Length of the ANA log for `groups`; `groups_only` is LSP bit RGO.
pub fn ana_log_len(groups: &[AnaGroup], groups_only: bool) -> usize {
    let nsids: usize = if groups_only { 0 } else { groups.iter().map(|g| g.nsids.len()).sum() };
    ANA_HEADER_SIZE + groups.len() * ANA_GROUP_SIZE + nsids * 4
}

/// Writes the ANA log; returns its length ([`ana_log_len`]).
pub fn write_ana_log(chgcnt: u64, groups: &[AnaGroup], groups_only: bool, out: &mut [u8]) -> usize {
    let len = ana_log_len(groups, groups_only);
    assert!(out.len() >= len, "output holds the log");
    let ngrps = u16::try_from(groups.len()).expect("NGRPS is 16 bits");
    out[..len].fill(0);
    put_u64(out, 0, chgcnt);
    put_u16(out, 8, ngrps);
    let mut off = ANA_HEADER_SIZE;
    for g in groups {
        let nsids: &[u32] = if groups_only { &[] } else { &g.nsids };
        put_u32(out, off, g.grpid);
        put_u32(out, off + 4, u32::try_from(nsids.len()).expect("NNSID is 32 bits"));
        put_u64(out, off + 8, g.chgcnt);
        out[off + 16] = g.state as u8;
        off += ANA_GROUP_SIZE;
        for &nsid in nsids {
            put_u32(out, off, nsid);
            off += 4;
        }
    }
    assert_eq!(off, len);
    len
}

/// The ANA log as a vector.
pub fn build_ana_log(chgcnt: u64, groups: &[AnaGroup], groups_only: bool) -> Vec<u8> {
    let mut v = vec![0u8; ana_log_len(groups, groups_only)];
    write_ana_log(chgcnt, groups, groups_only, &mut v);
    v
}

/// Reads the ANA log: its change count and groups. A group with an unknown state is
/// reported as [`AnaState::Inaccessible`], the safe reading for path selection.
pub fn parse_ana_log(b: &[u8]) -> Result<(u64, Vec<AnaGroup>), LogError> {
    need(b, ANA_HEADER_SIZE)?;
    let chgcnt = get_u64(b, 0);
    let ngrps = usize::from(get_u16(b, 8));
    let mut groups = Vec::with_capacity(ngrps);
    let mut off = ANA_HEADER_SIZE;
    for _ in 0..ngrps {
        need(b, off + ANA_GROUP_SIZE)?;
        let nnsid = get_u32(b, off + 4) as usize;
        let end = nnsid
            .checked_mul(4)
            .and_then(|n| n.checked_add(off + ANA_GROUP_SIZE))
            .ok_or(LogError::Truncated { need: usize::MAX, have: b.len() })?;
        need(b, end)?;
        groups.push(AnaGroup {
            grpid: get_u32(b, off),
            chgcnt: get_u64(b, off + 8),
            state: AnaState::from_u8(b[off + 16]).unwrap_or(AnaState::Inaccessible),
            nsids: (0..nnsid).map(|i| get_u32(b, off + ANA_GROUP_SIZE + 4 * i)).collect(),
        });
        off = end;
    }
    Ok((chgcnt, groups))
}

/// Size of the discovery log header and of each discovery log entry.
pub const DISCOVERY_RECORD_SIZE: usize = 1024;

/// TRTYPE: RDMA.
pub const TRTYPE_RDMA: u8 = 1;
/// TRTYPE: TCP.
pub const TRTYPE_TCP: u8 = 3;
/// ADRFAM: IPv4.
pub const ADRFAM_IPV4: u8 = 1;
/// ADRFAM: IPv6.
pub const ADRFAM_IPV6: u8 = 2;
/// SUBTYPE: referral to another discovery subsystem.
pub const SUBTYPE_DISCOVERY_REFERRAL: u8 = 1;
/// SUBTYPE: NVM subsystem.
pub const SUBTYPE_NVME: u8 = 2;
/// SUBTYPE: the current discovery subsystem.
pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
/// TREQ bits 1:0: secure channel requirements not specified.
pub const TREQ_SECURE_CHANNEL_NOT_SPECIFIED: u8 = 0b00;
/// TREQ bits 1:0: secure channel required.
pub const TREQ_SECURE_CHANNEL_REQUIRED: u8 = 0b01;
/// TREQ bits 1:0: secure channel not required.
pub const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 0b10;
/// TREQ bit: the controller supports disabling SQ flow control.
pub const TREQ_DISABLE_SQFLOW: u8 = 1 << 2;
/// TCP TSAS SECTYPE: no security.
pub const SECTYPE_NONE: u8 = 0;

/// Discovery log header.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DiscoveryHeader {
    /// Generation counter: changes whenever the log changes.
    pub genctr: u64,
    /// Number of records.
    pub numrec: u64,
    /// Record format (0).
    pub recfmt: u16,
}

/// One discovery log entry.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DiscoveryEntry {
    /// Transport type (`TRTYPE_*`).
    pub trtype: u8,
    /// Address family (`ADRFAM_*`).
    pub adrfam: u8,
    /// Subsystem type (`SUBTYPE_*`).
    pub subtype: u8,
    /// Transport requirements (`TREQ_*`).
    pub treq: u8,
    /// NVM subsystem port ID.
    pub portid: u16,
    /// Controller ID (0xffff: dynamic model).
    pub cntlid: u16,
    /// Admin max SQ size the host may use with this subsystem.
    pub asqsz: u16,
    /// Entry flags.
    pub eflags: u16,
    /// Transport service identifier: the TCP port as ASCII.
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Transport address: the IP address as ASCII.
    pub traddr: String,
    /// TCP security type (TSAS byte 0).
    pub sectype: u8,
}

impl DiscoveryEntry {
    /// An NVMe/TCP over IPv4 entry without TLS (TREQ secure channel "not specified",
    /// SECTYPE none, as Linux nvmet reports by default), dynamic controller model.
    ///
    /// Not "not required": libnvme 1.3 (Debian bookworm's `nvme connect-all`) asks the
    /// kernel for TLS whenever TREQ says required *or not required*, and a kernel
    /// without TLS refuses the connect ("unknown parameter 'tls'"); libnvme issue 612.
    pub fn tcp_ipv4(subtype: u8, portid: u16, addr: &str, port: u16, subnqn: &str) -> DiscoveryEntry {
        DiscoveryEntry {
            trtype: TRTYPE_TCP,
            adrfam: ADRFAM_IPV4,
            subtype,
            treq: TREQ_SECURE_CHANNEL_NOT_SPECIFIED,
            portid,
            cntlid: crate::nvme::fabrics::CNTLID_DYNAMIC,
            asqsz: 32,
            eflags: 0,
            trsvcid: port.to_string(),
            subnqn: subnqn.to_string(),
            traddr: addr.to_string(),
            sectype: SECTYPE_NONE,
        }
    }

    /// Writes the 1024-byte entry.
    pub fn write(&self, out: &mut [u8]) {
        assert!(out.len() >= DISCOVERY_RECORD_SIZE);
        let e = &mut out[..DISCOVERY_RECORD_SIZE];
        e.fill(0);
        e[0] = self.trtype;
        e[1] = self.adrfam;
        e[2] = self.subtype;
        e[3] = self.treq;
        put_u16(e, 4, self.portid);
        put_u16(e, 6, self.cntlid);
        put_u16(e, 8, self.asqsz);
        put_u16(e, 10, self.eflags);
        put_str_nul(&mut e[32..64], &self.trsvcid);
        put_str_nul(&mut e[256..256 + NQN_SIZE], &self.subnqn);
        put_str_nul(&mut e[512..768], &self.traddr);
        e[768] = self.sectype;
    }

    /// Reads an entry.
    pub fn parse(b: &[u8]) -> Result<DiscoveryEntry, LogError> {
        need(b, DISCOVERY_RECORD_SIZE)?;
        Ok(DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: get_u16(b, 4),
            cntlid: get_u16(b, 6),
            asqsz: get_u16(b, 8),
            eflags: get_u16(b, 10),
            trsvcid: get_str(&b[32..64]),
            subnqn: get_str(&b[256..256 + NQN_SIZE]),
            traddr: get_str(&b[512..768]),
            sectype: b[768],
        })
    }
}

/// Length of a discovery log with `n` entries.
pub fn discovery_log_len(n: usize) -> usize {
    DISCOVERY_RECORD_SIZE * (1 + n)
}

/// Writes the discovery log (header, then one record per entry); returns its length.
pub fn write_discovery_log(genctr: u64, entries: &[DiscoveryEntry], out: &mut [u8]) -> usize {
    let len = discovery_log_len(entries.len());
    assert!(out.len() >= len, "output holds the log");
    out[..DISCOVERY_RECORD_SIZE].fill(0);
    put_u64(out, 0, genctr);
    put_u64(out, 8, entries.len() as u64);
    put_u16(out, 16, 0);
    for (i, e) in entries.iter().enumerate() {
        e.write(&mut out[DISCOVERY_RECORD_SIZE * (i + 1)..]);
    }
    len
}

/// The discovery log as a vector.
pub fn build_discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut v = vec![0u8; discovery_log_len(entries.len())];
    write_discovery_log(genctr, entries, &mut v);
    v
}

/// Reads the discovery log header (the first 20 bytes suffice).
pub fn parse_discovery_header(b: &[u8]) -> Result<DiscoveryHeader, LogError> {
    need(b, 18)?;
    Ok(DiscoveryHeader { genctr: get_u64(b, 0), numrec: get_u64(b, 8), recfmt: get_u16(b, 16) })
}

/// Reads a whole discovery log: the header and the NUMREC entries that follow.
pub fn parse_discovery_log(b: &[u8]) -> Result<(DiscoveryHeader, Vec<DiscoveryEntry>), LogError> {
    let hdr = parse_discovery_header(b)?;
    let n = usize::try_from(hdr.numrec).unwrap_or(usize::MAX);
    let len = n
        .checked_add(1)
        .and_then(|r| r.checked_mul(DISCOVERY_RECORD_SIZE))
        .ok_or(LogError::Truncated { need: usize::MAX, have: b.len() })?;
    need(b, len)?;
    let entries =
        (1..=n).map(|i| DiscoveryEntry::parse(&b[i * DISCOVERY_RECORD_SIZE..])).collect::<Result<Vec<_>, _>>()?;
    Ok((hdr, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_fields_round_trip_through_the_command() {
        let r = LogPageRequest {
            lid: LID_ANA,
            lsp: LSP_ANA_RGO,
            rae: true,
            numd: 0x1_2345,
            lsi: 9,
            offset: 0x1_0000_0004,
            csi: 0,
            nsid: 0xffff_ffff,
        };
        let c = r.to_command(5);
        assert_eq!(c.cdw10 & 0xff, 0x0c);
        assert_eq!((c.cdw10 >> 8) & 0x7f, 1);
        assert_ne!(c.cdw10 & (1 << 15), 0);
        assert_eq!(c.cdw10 >> 16, 0x2344, "NUMDL is 0-based");
        assert_eq!(c.cdw11 & 0xffff, 1, "NUMDU");
        assert_eq!((c.cdw12, c.cdw13), (4, 1));
        assert_eq!(LogPageRequest::from_command(&c), r);
        let full = LogPageRequest { numd: 1 << 32, ..r };
        assert_eq!(LogPageRequest::from_command(&full.to_command(1)).numd, 1 << 32);
    }

    #[test]
    fn window_clips_to_the_log_and_rejects_bad_offsets() {
        let r = LogPageRequest::new(LID_DISCOVERY, 0, 0, 4096);
        assert_eq!(r.window(3072), Some(0..3072));
        assert_eq!(LogPageRequest::new(LID_DISCOVERY, 0, 1024, 16).window(3072), Some(1024..1040));
        assert_eq!(LogPageRequest::new(LID_DISCOVERY, 0, 3072, 16).window(3072), Some(3072..3072));
        assert_eq!(LogPageRequest::new(LID_DISCOVERY, 0, 3076, 16).window(3072), None);
        assert_eq!(LogPageRequest::new(LID_DISCOVERY, 0, 2, 16).window(3072), None);
    }

    #[test]
    fn error_log_entries_land_at_spec_offsets() {
        let e = ErrorLogEntry {
            error_count: 3,
            sqid: 1,
            cid: 0x42,
            status_field: crate::nvme::Status::LBA_OUT_OF_RANGE.to_field() << 1,
            param_error_location: 40,
            lba: 0xdead,
            nsid: 2,
            trtype: TRTYPE_TCP,
            command_specific: 7,
        };
        let mut log = [0xffu8; 4 * ERROR_ENTRY_SIZE];
        assert_eq!(write_error_log(&[e], 4, &mut log), 256);
        assert_eq!(get_u64(&log, 0), 3);
        assert_eq!(get_u16(&log, 10), 0x42);
        assert_eq!(get_u16(&log, 12), 0x80 << 1);
        assert_eq!(get_u64(&log, 16), 0xdead);
        assert_eq!(get_u32(&log, 24), 2);
        assert_eq!(ErrorLogEntry::parse(&log).unwrap(), e);
        assert_eq!(ErrorLogEntry::parse(&log[64..]).unwrap(), ErrorLogEntry::default());
        assert!(ErrorLogEntry::parse(&log[..10]).is_err());
    }

    #[test]
    fn smart_log_layout() {
        let s = SmartLog {
            temperature_k: 313,
            available_spare: 100,
            spare_threshold: 10,
            percentage_used: 3,
            data_units_read: data_units(1_024_000),
            data_units_written: u128::from(u64::MAX) + 5,
            power_on_hours: 17,
            error_log_entries: 2,
            ..Default::default()
        };
        let b = s.to_bytes();
        assert_eq!(get_u16(&b, 1), 313);
        assert_eq!((b[3], b[4], b[5]), (100, 10, 3));
        assert_eq!(get_u128(&b, 32), 2, "1 024 000 bytes = 2 data units");
        assert_eq!(get_u64(&b, 56), 1, "128-bit counter carries into the upper half");
        assert_eq!(get_u128(&b, 128), 17);
        assert_eq!(get_u128(&b, 176), 2);
        assert_eq!(SmartLog::parse(&b).unwrap(), s);
        assert_eq!(data_units(1), 1, "partial units round up");
    }

    #[test]
    fn firmware_slot_log_layout() {
        let f = FirmwareSlotLog::single("0.1.0");
        let b = f.to_bytes();
        assert_eq!(b[0], 1);
        assert_eq!(&b[8..16], b"0.1.0   ");
        assert_eq!(&b[16..24], &[0; 8]);
        assert_eq!(FirmwareSlotLog::parse(&b).unwrap(), f);
    }

    #[test]
    fn changed_ns_list_overflows_to_all_ones() {
        assert_eq!(parse_changed_ns_log(&build_changed_ns_log(&[3, 1])), vec![3, 1]);
        let many: Vec<u32> = (1..=1025).collect();
        let b = build_changed_ns_log(&many);
        assert_eq!(get_u32(&b, 0), 0xffff_ffff);
        assert_eq!(get_u32(&b, 4), 0);
    }

    #[test]
    fn command_effects_layout() {
        let e = CommandEffects::io_controller();
        let b = e.to_bytes();
        assert_eq!(get_u32(&b[..], 0x06 * 4), EFFECTS_CSUPP, "Identify");
        assert_eq!(get_u32(&b[..], 1024 + 4), EFFECTS_CSUPP | EFFECTS_LBCC, "Write");
        assert_eq!(get_u32(&b[..], 1024 + 0x02 * 4), EFFECTS_CSUPP, "Read");
        assert_eq!(get_u32(&b[..], 1024 + 0x05 * 4), EFFECTS_CSUPP, "Compare: supported, changes nothing");
        assert_eq!(get_u32(&b[..], 1024 + 0x19 * 4), EFFECTS_CSUPP | EFFECTS_LBCC, "Copy");
        assert_eq!(CommandEffects::parse(&b[..]).unwrap(), e);
    }

    #[test]
    fn ana_log_layout_and_groups_only() {
        let groups = vec![
            AnaGroup { grpid: 1, chgcnt: 4, state: AnaState::Optimized, nsids: vec![1, 2] },
            AnaGroup { grpid: 2, chgcnt: 5, state: AnaState::Inaccessible, nsids: vec![3] },
        ];
        let b = build_ana_log(9, &groups, false);
        assert_eq!(b.len(), 16 + 32 + 8 + 32 + 4);
        assert_eq!(get_u64(&b, 0), 9);
        assert_eq!(get_u16(&b, 8), 2);
        assert_eq!(get_u32(&b, 16), 1);
        assert_eq!(get_u32(&b, 20), 2, "NNSID");
        assert_eq!(b[32], 1, "state at descriptor byte 16");
        assert_eq!(get_u32(&b, 48), 1);
        assert_eq!(get_u32(&b, 52), 2);
        assert_eq!(b[56 + 16], 3);
        assert_eq!(parse_ana_log(&b).unwrap(), (9, groups.clone()));
        let rgo = build_ana_log(9, &groups, true);
        assert_eq!(rgo.len(), 16 + 64);
        let (_, g) = parse_ana_log(&rgo).unwrap();
        assert!(g.iter().all(|g| g.nsids.is_empty()));
        assert!(parse_ana_log(&b[..60]).is_err());
    }

    #[test]
    fn discovery_log_layout_and_round_trip() {
        let entries = vec![
            DiscoveryEntry::tcp_ipv4(SUBTYPE_CURRENT_DISCOVERY, 1, "127.0.0.1", 8009, crate::nvme::DISCOVERY_NQN),
            DiscoveryEntry::tcp_ipv4(SUBTYPE_NVME, 1, "127.0.0.1", 4420, "nqn.2026-11.io.quire:v"),
        ];
        let b = build_discovery_log(7, &entries);
        assert_eq!(b.len(), 3 * 1024);
        assert_eq!(get_u64(&b, 0), 7);
        assert_eq!(get_u64(&b, 8), 2);
        let e = &b[2048..];
        // TCP, IPv4, NVM subsystem, secure channel not specified (see `tcp_ipv4`).
        assert_eq!((e[0], e[1], e[2], e[3]), (3, 1, 2, 0));
        assert_eq!(get_u16(e, 6), 0xffff);
        assert_eq!(&e[32..36], b"4420");
        assert_eq!(&e[256..262], b"nqn.20");
        assert_eq!(&e[512..521], b"127.0.0.1");
        assert_eq!(e[768], 0);
        let (hdr, parsed) = parse_discovery_log(&b).unwrap();
        assert_eq!(hdr, DiscoveryHeader { genctr: 7, numrec: 2, recfmt: 0 });
        assert_eq!(parsed, entries);
        assert_eq!(parse_discovery_header(&b[..20]).unwrap().numrec, 2);
        assert!(matches!(parse_discovery_log(&b[..2048]), Err(LogError::Truncated { .. })));
    }
}
