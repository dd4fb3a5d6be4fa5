//! Identify data structures: what a host learns about a controller and its namespaces.
//!
//! A host's first admin commands after Connect are Identify Controller (CNS 01h),
//! Identify Active Namespace ID list (CNS 02h), and per namespace Identify Namespace
//! (CNS 00h) and the Namespace Identification Descriptor list (CNS 03h). Each answer is
//! one 4096-byte page. The Linux and SPDK hosts size their I/O (MDTS, NOIOB, NPWG),
//! choose in-capsule data (IOCCSZ), enable multipath (CMIC, ANA fields, NMIC) and match
//! namespaces across paths (NGUID/UUID) from these bytes, so every offset here matters.
//!
//! Offsets follow the NVMe Base Specification 2.0 figure "Identify Controller Data
//! Structure" and the NVM Command Set specification's "Identify Namespace Data
//! Structure", cross-checked against Linux `include/linux/nvme.h` (`struct
//! nvme_id_ctrl`, `struct nvme_id_ns`, `struct nvme_id_power_state`, `struct
//! nvme_ns_id_desc`); the unit tests below recompute the offsets from that struct's
//! field sizes. Builders write into a caller's page (so the target can fill a pool
//! buffer) or return a fresh array; parsers serve the initiator and the tests.

use crate::nvme::{Command, NQN_SIZE};
use crate::{get_str, get_u16, get_u32, get_u64, put_str_nul, put_str_padded, put_u16, put_u32, put_u64};

/// Size of every Identify data structure.
pub const IDENTIFY_DATA_SIZE: usize = 4096;

/// CNS 00h: Identify Namespace.
pub const CNS_NAMESPACE: u8 = 0x00;
/// CNS 01h: Identify Controller.
pub const CNS_CONTROLLER: u8 = 0x01;
/// CNS 02h: Active Namespace ID list.
pub const CNS_ACTIVE_NS_LIST: u8 = 0x02;
/// CNS 03h: Namespace Identification Descriptor list.
pub const CNS_NS_DESCRIPTORS: u8 = 0x03;

/// Byte offsets in the Identify Controller data structure (NVMe base spec 2.0).
pub mod ctrl_off {
    /// PCI Vendor ID (2 bytes).
    pub const VID: usize = 0;
    /// PCI Subsystem Vendor ID (2 bytes).
    pub const SSVID: usize = 2;
    /// Serial Number (20 ASCII bytes, space padded).
    pub const SN: usize = 4;
    /// Model Number (40 ASCII bytes, space padded).
    pub const MN: usize = 24;
    /// Firmware Revision (8 ASCII bytes, space padded).
    pub const FR: usize = 64;
    /// Recommended Arbitration Burst.
    pub const RAB: usize = 72;
    /// IEEE OUI Identifier (3 bytes, least significant first).
    pub const IEEE: usize = 73;
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub const CMIC: usize = 76;
    /// Maximum Data Transfer Size (power of two of the minimum page size).
    pub const MDTS: usize = 77;
    /// Controller ID (2 bytes).
    pub const CNTLID: usize = 78;
    /// Version (4 bytes).
    pub const VER: usize = 80;
    /// Optional Asynchronous Events Supported (4 bytes).
    pub const OAES: usize = 92;
    /// Controller Attributes (4 bytes).
    pub const CTRATT: usize = 96;
    /// Controller Type.
    pub const CNTRLTYPE: usize = 111;
    /// Optional Admin Command Support (2 bytes).
    pub const OACS: usize = 256;
    /// Abort Command Limit (0-based).
    pub const ACL: usize = 258;
    /// Asynchronous Event Request Limit (0-based).
    pub const AERL: usize = 259;
    /// Firmware Updates.
    pub const FRMW: usize = 260;
    /// Log Page Attributes.
    pub const LPA: usize = 261;
    /// Error Log Page Entries (0-based).
    pub const ELPE: usize = 262;
    /// Number of Power States Support (0-based).
    pub const NPSS: usize = 263;
    /// Warning Composite Temperature Threshold (2 bytes, kelvin).
    pub const WCTEMP: usize = 266;
    /// Critical Composite Temperature Threshold (2 bytes, kelvin).
    pub const CCTEMP: usize = 268;
    /// Keep Alive Support granularity (2 bytes, 100 ms units).
    pub const KAS: usize = 320;
    /// ANA Transition Time (seconds).
    pub const ANATT: usize = 342;
    /// ANA Capabilities.
    pub const ANACAP: usize = 343;
    /// ANA Group Identifier Maximum (4 bytes).
    pub const ANAGRPMAX: usize = 344;
    /// Number of ANA Group Identifiers (4 bytes).
    pub const NANAGRPID: usize = 348;
    /// Submission Queue Entry Size (required 3:0, maximum 7:4).
    pub const SQES: usize = 512;
    /// Completion Queue Entry Size.
    pub const CQES: usize = 513;
    /// Maximum Outstanding Commands (2 bytes).
    pub const MAXCMD: usize = 514;
    /// Number of Namespaces (4 bytes).
    pub const NN: usize = 516;
    /// Optional NVM Command Support (2 bytes).
    pub const ONCS: usize = 520;
    /// Fused Operation Support (2 bytes).
    pub const FUSES: usize = 522;
    /// Format NVM Attributes.
    pub const FNA: usize = 524;
    /// Volatile Write Cache.
    pub const VWC: usize = 525;
    /// Atomic Write Unit Normal (2 bytes, 0-based blocks).
    pub const AWUN: usize = 526;
    /// Atomic Write Unit Power Fail (2 bytes, 0-based blocks).
    pub const AWUPF: usize = 528;
    /// Optional Copy Formats Supported (2 bytes).
    pub const OCFS: usize = 534;
    /// SGL Support (4 bytes).
    pub const SGLS: usize = 536;
    /// Maximum Number of Allowed Namespaces (4 bytes).
    pub const MNAN: usize = 540;
    /// NVM Subsystem NVMe Qualified Name (256 bytes, NUL padded).
    pub const SUBNQN: usize = 768;
    /// I/O Queue Command Capsule Supported Size (4 bytes, 16-byte units).
    pub const IOCCSZ: usize = 1792;
    /// I/O Queue Response Capsule Supported Size (4 bytes, 16-byte units).
    pub const IORCSZ: usize = 1796;
    /// In Capsule Data Offset (2 bytes, 16-byte units).
    pub const ICDOFF: usize = 1800;
    /// Fabrics Controller Attributes.
    pub const FCATT: usize = 1802;
    /// Maximum SGL Data Block Descriptors.
    pub const MSDBD: usize = 1803;
    /// Power State 0 Descriptor (32 bytes).
    pub const PSD0: usize = 2048;
}

/// Byte offsets in the Identify Namespace data structure (NVM command set).
pub mod ns_off {
    /// Namespace Size in blocks (8 bytes).
    pub const NSZE: usize = 0;
    /// Namespace Capacity in blocks (8 bytes).
    pub const NCAP: usize = 8;
    /// Namespace Utilization in blocks (8 bytes).
    pub const NUSE: usize = 16;
    /// Namespace Features.
    pub const NSFEAT: usize = 24;
    /// Number of LBA Formats (0-based).
    pub const NLBAF: usize = 25;
    /// Formatted LBA Size.
    pub const FLBAS: usize = 26;
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub const NMIC: usize = 30;
    /// Reservation Capabilities.
    pub const RESCAP: usize = 31;
    /// Deallocate Logical Block Features.
    pub const DLFEAT: usize = 33;
    /// Namespace Atomic Write Unit Normal (2 bytes).
    pub const NAWUN: usize = 34;
    /// Namespace Atomic Write Unit Power Fail (2 bytes).
    pub const NAWUPF: usize = 36;
    /// Namespace Optimal I/O Boundary (2 bytes, blocks).
    pub const NOIOB: usize = 46;
    /// Namespace Preferred Write Granularity (2 bytes, 0-based blocks).
    pub const NPWG: usize = 64;
    /// Namespace Preferred Write Alignment (2 bytes, 0-based blocks).
    pub const NPWA: usize = 66;
    /// Namespace Preferred Deallocate Granularity (2 bytes, 0-based blocks).
    pub const NPDG: usize = 68;
    /// Namespace Preferred Deallocate Alignment (2 bytes, 0-based blocks).
    pub const NPDA: usize = 70;
    /// Namespace Optimal Write Size (2 bytes, 0-based blocks).
    pub const NOWS: usize = 72;
    /// Maximum Single Source Range Length of a Copy (2 bytes, blocks).
    pub const MSSRL: usize = 74;
    /// Maximum Copy Length (4 bytes, blocks).
    pub const MCL: usize = 76;
    /// Maximum Source Range Count of a Copy (0-based).
    pub const MSRC: usize = 80;
    /// ANA Group Identifier (4 bytes).
    pub const ANAGRPID: usize = 92;
    /// Namespace Attributes.
    pub const NSATTR: usize = 99;
    /// Namespace Globally Unique Identifier (16 bytes).
    pub const NGUID: usize = 104;
    /// IEEE Extended Unique Identifier (8 bytes).
    pub const EUI64: usize = 120;
    /// LBA Format 0 (4 bytes: MS 2 bytes, LBADS, RP).
    pub const LBAF0: usize = 128;
}

/// CMIC bit: the subsystem may have more than one port.
pub const CMIC_MULTI_PORT: u8 = 1 << 0;
/// CMIC bit: the subsystem may have two or more controllers.
pub const CMIC_MULTI_CTRL: u8 = 1 << 1;
/// CMIC bit: the controller supports Asymmetric Namespace Access reporting.
pub const CMIC_ANA: u8 = 1 << 3;

/// VER value for NVMe 1.4.
pub const VER_1_4: u32 = 0x0001_0400;
/// VER value for NVMe 2.0.
pub const VER_2_0: u32 = 0x0002_0000;

/// OAES bit: Namespace Attribute Notices.
pub const OAES_NS_ATTR: u32 = 1 << 8;
/// OAES bit: Firmware Activation Notices.
pub const OAES_FW_ACTIVATION: u32 = 1 << 9;
/// OAES bit: Asymmetric Namespace Access Change Notices.
pub const OAES_ANA_CHANGE: u32 = 1 << 11;
/// OAES bit: Discovery Log Page Change Notification (discovery controllers).
pub const OAES_DISCOVERY_CHANGE: u32 = 1 << 31;

/// CTRATT bit: 128-bit Host Identifier supported (mandatory over fabrics).
pub const CTRATT_HOSTID_128: u32 = 1 << 0;

/// CNTRLTYPE: I/O controller.
pub const CNTRLTYPE_IO: u8 = 1;
/// CNTRLTYPE: discovery controller.
pub const CNTRLTYPE_DISCOVERY: u8 = 2;
/// CNTRLTYPE: administrative controller.
pub const CNTRLTYPE_ADMIN: u8 = 3;

/// OACS bit: Security Send/Receive.
pub const OACS_SECURITY: u16 = 1 << 0;
/// OACS bit: Format NVM.
pub const OACS_FORMAT: u16 = 1 << 1;
/// OACS bit: Firmware Download/Commit.
pub const OACS_FIRMWARE: u16 = 1 << 2;
/// OACS bit: Namespace Management.
pub const OACS_NS_MGMT: u16 = 1 << 3;

/// FRMW bit: firmware slot 1 is read only.
pub const FRMW_SLOT1_RO: u8 = 1 << 0;
/// FRMW: number of firmware slots, bits 3:1.
pub const FRMW_SLOTS_SHIFT: u8 = 1;

/// LPA bit: SMART / Health log per namespace.
pub const LPA_SMART_PER_NS: u8 = 1 << 0;
/// LPA bit: Commands Supported and Effects log page.
pub const LPA_CMD_EFFECTS: u8 = 1 << 1;
/// LPA bit: extended data for Get Log Page (NUMDU, LPOL/LPOU).
pub const LPA_EXTENDED_DATA: u8 = 1 << 2;

/// SQES for 64-byte entries (required and maximum 2^6).
pub const SQES_64: u8 = 0x66;
/// CQES for 16-byte entries (required and maximum 2^4).
pub const CQES_16: u8 = 0x44;

/// ONCS bit: Compare.
pub const ONCS_COMPARE: u16 = 1 << 0;
/// ONCS bit: Write Uncorrectable.
pub const ONCS_WRITE_UNCORRECTABLE: u16 = 1 << 1;
/// ONCS bit: Dataset Management.
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit: Write Zeroes.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// ONCS bit: Save field in Set/Get Features.
pub const ONCS_SAVE_FEATURES: u16 = 1 << 4;
/// ONCS bit: Reservations.
pub const ONCS_RESERVATIONS: u16 = 1 << 5;
/// ONCS bit: Timestamp feature.
pub const ONCS_TIMESTAMP: u16 = 1 << 6;
/// ONCS bit: Verify.
pub const ONCS_VERIFY: u16 = 1 << 7;

/// ONCS bit: Copy.
pub const ONCS_COPY: u16 = 1 << 8;
/// OCFS bit: Copy source range descriptor format 0.
pub const OCFS_FORMAT_0: u16 = 1 << 0;
/// FUSES bit: Compare and Write fused operation.
pub const FUSES_COMPARE_AND_WRITE: u16 = 1 << 0;

/// FNA bit: Format NVM applies to all namespaces.
pub const FNA_FORMAT_ALL: u8 = 1 << 0;
/// FNA bit: secure erase applies to all namespaces.
pub const FNA_SECURE_ERASE_ALL: u8 = 1 << 1;
/// FNA bit: cryptographic erase supported.
pub const FNA_CRYPTO_ERASE: u8 = 1 << 2;

/// VWC bit: a volatile write cache is present.
pub const VWC_PRESENT: u8 = 1 << 0;
/// VWC bits 2:1 = 10b: Flush with NSID FFFFFFFFh is not supported.
pub const VWC_FLUSH_ALL_UNSUPPORTED: u8 = 0b10 << 1;
/// VWC bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
pub const VWC_FLUSH_ALL_SUPPORTED: u8 = 0b11 << 1;

/// SGLS bits 1:0 = 01b: SGLs supported, no alignment requirement.
pub const SGLS_SUPPORTED: u32 = 0b01;
/// SGLS bits 1:0 = 10b: SGLs supported, dword alignment required.
pub const SGLS_SUPPORTED_DWORD_ALIGNED: u32 = 0b10;
/// SGLS bit: Keyed SGL Data Block descriptor supported (RDMA).
pub const SGLS_KEYED: u32 = 1 << 2;
/// SGLS bit: the Address field may be an offset (in-capsule data).
pub const SGLS_OFFSET: u32 = 1 << 20;
/// SGLS bit: Transport SGL Data Block descriptor supported.
pub const SGLS_TRANSPORT_DATA_BLOCK: u32 = 1 << 21;

/// ANACAP bit: reports ANA Optimized state.
pub const ANACAP_OPTIMIZED: u8 = 1 << 0;
/// ANACAP bit: reports ANA Non-Optimized state.
pub const ANACAP_NON_OPTIMIZED: u8 = 1 << 1;
/// ANACAP bit: reports ANA Inaccessible state.
pub const ANACAP_INACCESSIBLE: u8 = 1 << 2;
/// ANACAP bit: reports ANA Persistent Loss state.
pub const ANACAP_PERSISTENT_LOSS: u8 = 1 << 3;
/// ANACAP bit: reports ANA Change state.
pub const ANACAP_CHANGE: u8 = 1 << 4;
/// ANACAP bit: ANAGRPID does not change while the namespace is attached.
pub const ANACAP_GRPID_STATIC: u8 = 1 << 6;

/// FCATT bit 0 = 0: dynamic controller model.
pub const FCATT_DYNAMIC: u8 = 0;

/// The minimum memory page size MDTS is counted in (CAP.MPSMIN = 4 KiB).
pub const MIN_PAGE_SIZE: u32 = 4096;

/// Power state descriptor 0 (the only one Quire reports).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PowerState {
    /// Maximum power in centiwatts.
    pub max_power_cw: u16,
    /// Entry latency in microseconds.
    pub entry_lat_us: u32,
    /// Exit latency in microseconds.
    pub exit_lat_us: u32,
}

/// Everything Quire reports in Identify Controller.
///
/// Field names follow the specification; bit masks for the flag fields are the
/// `CMIC_*`, `OAES_*`, `ONCS_*`, … constants of this module.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ControllerIdentity {
    /// PCI Vendor ID.
    pub vid: u16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// Serial number (at most 20 ASCII characters).
    pub serial: String,
    /// Model number (at most 40 ASCII characters).
    pub model: String,
    /// Firmware revision (at most 8 ASCII characters).
    pub firmware: String,
    /// Recommended arbitration burst (power of two).
    pub rab: u8,
    /// IEEE OUI (24 bits).
    pub ieee_oui: u32,
    /// Multi-path and sharing capabilities (`CMIC_*`).
    pub cmic: u8,
    /// Maximum data transfer size as a power of two of 4 KiB (0 = no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version ([`VER_1_4`], [`VER_2_0`]).
    pub ver: u32,
    /// Optional asynchronous events supported (`OAES_*`).
    pub oaes: u32,
    /// Controller attributes (`CTRATT_*`).
    pub ctratt: u32,
    /// Controller type (`CNTRLTYPE_*`).
    pub cntrltype: u8,
    /// Optional admin command support (`OACS_*`).
    pub oacs: u16,
    /// Abort command limit, 0-based.
    pub acl: u8,
    /// Asynchronous event request limit, 0-based.
    pub aerl: u8,
    /// Firmware updates (`FRMW_*`).
    pub frmw: u8,
    /// Log page attributes (`LPA_*`).
    pub lpa: u8,
    /// Error log page entries, 0-based.
    pub elpe: u8,
    /// Number of power states supported, 0-based.
    pub npss: u8,
    /// Power state descriptor 0.
    pub power_state0: PowerState,
    /// Warning composite temperature threshold in kelvin.
    pub wctemp: u16,
    /// Critical composite temperature threshold in kelvin.
    pub cctemp: u16,
    /// Keep alive granularity in 100 ms units (0 = keep alive not supported).
    pub kas: u16,
    /// ANA transition time in seconds.
    pub anatt: u8,
    /// ANA capabilities (`ANACAP_*`).
    pub anacap: u8,
    /// Largest ANA group identifier.
    pub anagrpmax: u32,
    /// Number of ANA group identifiers supported.
    pub nanagrpid: u32,
    /// Submission queue entry sizes ([`SQES_64`]).
    pub sqes: u8,
    /// Completion queue entry sizes ([`CQES_16`]).
    pub cqes: u8,
    /// Maximum outstanding commands per queue.
    pub maxcmd: u16,
    /// Number of namespaces (largest valid NSID).
    pub nn: u32,
    /// Optional NVM command support (`ONCS_*`).
    pub oncs: u16,
    /// Fused operations (`FUSES_*`).
    pub fuses: u16,
    /// Copy source range formats (`OCFS_*`).
    pub ocfs: u16,
    /// Format NVM attributes (`FNA_*`).
    pub fna: u8,
    /// Volatile write cache (`VWC_*`).
    pub vwc: u8,
    /// Atomic write unit normal, 0-based blocks.
    pub awun: u16,
    /// Atomic write unit power fail, 0-based blocks.
    pub awupf: u16,
    /// SGL support (`SGLS_*`).
    pub sgls: u32,
    /// Maximum number of allowed namespaces (0 = not reported).
    pub mnan: u32,
    /// Subsystem NQN.
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units (see [`ioccsz_for`]).
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units (1).
    pub iorcsz: u32,
    /// In-capsule data offset in 16-byte units (0).
    pub icdoff: u16,
    /// Fabrics controller attributes ([`FCATT_DYNAMIC`]).
    pub fcatt: u8,
    /// Maximum SGL data block descriptors per command (1).
    pub msdbd: u8,
}

impl Default for ControllerIdentity {
    /// A baseline NVMe 2.0 I/O controller over fabrics: 64/16-byte queue entries,
    /// 128-bit host IDs, SGLs with offsets, one SGL descriptor, response capsules of
    /// one CQE, no in-capsule data. Identity strings, limits and namespaces are left
    /// for the caller.
    fn default() -> ControllerIdentity {
        ControllerIdentity {
            vid: 0,
            ssvid: 0,
            serial: String::new(),
            model: String::new(),
            firmware: String::new(),
            rab: 0,
            ieee_oui: 0,
            cmic: 0,
            mdts: 0,
            cntlid: 0,
            ver: VER_2_0,
            oaes: 0,
            ctratt: CTRATT_HOSTID_128,
            cntrltype: CNTRLTYPE_IO,
            oacs: 0,
            acl: 0,
            aerl: 0,
            frmw: 0,
            lpa: 0,
            elpe: 0,
            npss: 0,
            power_state0: PowerState::default(),
            wctemp: 0,
            cctemp: 0,
            kas: 0,
            anatt: 0,
            anacap: 0,
            anagrpmax: 0,
            nanagrpid: 0,
            sqes: SQES_64,
            cqes: CQES_16,
            maxcmd: 0,
            nn: 0,
            oncs: 0,
            fuses: 0,
            ocfs: 0,
            fna: 0,
            vwc: 0,
            awun: 0,
            awupf: 0,
            sgls: SGLS_SUPPORTED | SGLS_OFFSET,
            mnan: 0,
            subnqn: String::new(),
            ioccsz: ioccsz_for(0),
            iorcsz: 1,
            icdoff: 0,
            fcatt: FCATT_DYNAMIC,
            msdbd: 1,
        }
    }
}

/// MDTS for a largest transfer of `max_transfer_bytes` (a power of two, at least 4 KiB).
pub fn mdts_for(max_transfer_bytes: u32) -> u8 {
    assert!(max_transfer_bytes.is_power_of_two(), "MDTS is a power of two");
    assert!(max_transfer_bytes >= MIN_PAGE_SIZE, "MDTS is at least one page");
    trailing_zeros_u8(max_transfer_bytes / MIN_PAGE_SIZE)
}

/// `v.trailing_zeros()` as the byte-wide exponent fields (MDTS, LBADS) hold it.
fn trailing_zeros_u8(v: u32) -> u8 {
    // The trailing zeros of a u32 number at most 32: they fit a u8.
    #[allow(clippy::cast_possible_truncation)]
    let n = v.trailing_zeros() as u8;
    n
}

/// Largest transfer in bytes that an MDTS value allows (`None` = no limit).
pub fn mdts_bytes(mdts: u8) -> Option<u64> {
    (mdts != 0).then(|| u64::from(MIN_PAGE_SIZE) << mdts.min(52))
}

/// IOCCSZ for `in_capsule_bytes` of in-capsule data: (64 + data) / 16.
pub fn ioccsz_for(in_capsule_bytes: u32) -> u32 {
    assert!(in_capsule_bytes.is_multiple_of(16), "in-capsule data size is a multiple of 16");
    let v = (64 + in_capsule_bytes) / 16;
    assert!(v >= 4);
    v
}

/// In-capsule data bytes an IOCCSZ value allows.
pub fn in_capsule_bytes(ioccsz: u32) -> u32 {
    ioccsz.saturating_mul(16).saturating_sub(64)
}

/// Writes Identify Controller for `id` into `out` (the whole page is rewritten).
pub fn write_controller(id: &ControllerIdentity, out: &mut [u8; IDENTIFY_DATA_SIZE]) {
    use ctrl_off as o;
    assert!(id.ieee_oui < (1 << 24), "IEEE OUI is 24 bits");
    out.fill(0);
    put_u16(out, o::VID, id.vid);
    put_u16(out, o::SSVID, id.ssvid);
    put_str_padded(&mut out[o::SN..o::SN + 20], &id.serial);
    put_str_padded(&mut out[o::MN..o::MN + 40], &id.model);
    put_str_padded(&mut out[o::FR..o::FR + 8], &id.firmware);
    out[o::RAB] = id.rab;
    out[o::IEEE..o::IEEE + 3].copy_from_slice(&id.ieee_oui.to_le_bytes()[..3]);
    out[o::CMIC] = id.cmic;
    out[o::MDTS] = id.mdts;
    put_u16(out, o::CNTLID, id.cntlid);
    put_u32(out, o::VER, id.ver);
    put_u32(out, o::OAES, id.oaes);
    put_u32(out, o::CTRATT, id.ctratt);
    out[o::CNTRLTYPE] = id.cntrltype;
    put_u16(out, o::OACS, id.oacs);
    out[o::ACL] = id.acl;
    out[o::AERL] = id.aerl;
    out[o::FRMW] = id.frmw;
    out[o::LPA] = id.lpa;
    out[o::ELPE] = id.elpe;
    out[o::NPSS] = id.npss;
    put_u16(out, o::WCTEMP, id.wctemp);
    put_u16(out, o::CCTEMP, id.cctemp);
    put_u16(out, o::KAS, id.kas);
    out[o::ANATT] = id.anatt;
    out[o::ANACAP] = id.anacap;
    put_u32(out, o::ANAGRPMAX, id.anagrpmax);
    put_u32(out, o::NANAGRPID, id.nanagrpid);
    out[o::SQES] = id.sqes;
    out[o::CQES] = id.cqes;
    put_u16(out, o::MAXCMD, id.maxcmd);
    put_u32(out, o::NN, id.nn);
    put_u16(out, o::ONCS, id.oncs);
    put_u16(out, o::FUSES, id.fuses);
    put_u16(out, o::OCFS, id.ocfs);
    out[o::FNA] = id.fna;
    out[o::VWC] = id.vwc;
    put_u16(out, o::AWUN, id.awun);
    put_u16(out, o::AWUPF, id.awupf);
    put_u32(out, o::SGLS, id.sgls);
    put_u32(out, o::MNAN, id.mnan);
    put_str_nul(&mut out[o::SUBNQN..o::SUBNQN + NQN_SIZE], &id.subnqn);
    put_u32(out, o::IOCCSZ, id.ioccsz);
    put_u32(out, o::IORCSZ, id.iorcsz);
    put_u16(out, o::ICDOFF, id.icdoff);
    out[o::FCATT] = id.fcatt;
    out[o::MSDBD] = id.msdbd;
    let ps = &mut out[o::PSD0..o::PSD0 + 32];
    put_u16(ps, 0, id.power_state0.max_power_cw);
    put_u32(ps, 4, id.power_state0.entry_lat_us);
    put_u32(ps, 8, id.power_state0.exit_lat_us);
}

/// Identify Controller for `id` as a fresh page.
pub fn build_controller(id: &ControllerIdentity) -> Box<[u8; IDENTIFY_DATA_SIZE]> {
    let mut page = Box::new([0u8; IDENTIFY_DATA_SIZE]);
    write_controller(id, &mut page);
    page
}

/// Reads Identify Controller.
///
/// # Panics
/// If `b` is shorter than [`IDENTIFY_DATA_SIZE`].
pub fn parse_controller(b: &[u8]) -> ControllerIdentity {
    use ctrl_off as o;
    assert!(b.len() >= IDENTIFY_DATA_SIZE, "Identify data is 4096 bytes");
    let ps = &b[o::PSD0..o::PSD0 + 32];
    ControllerIdentity {
        vid: get_u16(b, o::VID),
        ssvid: get_u16(b, o::SSVID),
        serial: get_str(&b[o::SN..o::SN + 20]),
        model: get_str(&b[o::MN..o::MN + 40]),
        firmware: get_str(&b[o::FR..o::FR + 8]),
        rab: b[o::RAB],
        ieee_oui: u32::from_le_bytes([b[o::IEEE], b[o::IEEE + 1], b[o::IEEE + 2], 0]),
        cmic: b[o::CMIC],
        mdts: b[o::MDTS],
        cntlid: get_u16(b, o::CNTLID),
        ver: get_u32(b, o::VER),
        oaes: get_u32(b, o::OAES),
        ctratt: get_u32(b, o::CTRATT),
        cntrltype: b[o::CNTRLTYPE],
        oacs: get_u16(b, o::OACS),
        acl: b[o::ACL],
        aerl: b[o::AERL],
        frmw: b[o::FRMW],
        lpa: b[o::LPA],
        elpe: b[o::ELPE],
        npss: b[o::NPSS],
        power_state0: PowerState {
            max_power_cw: get_u16(ps, 0),
            entry_lat_us: get_u32(ps, 4),
            exit_lat_us: get_u32(ps, 8),
        },
        wctemp: get_u16(b, o::WCTEMP),
        cctemp: get_u16(b, o::CCTEMP),
        kas: get_u16(b, o::KAS),
        anatt: b[o::ANATT],
        anacap: b[o::ANACAP],
        anagrpmax: get_u32(b, o::ANAGRPMAX),
        nanagrpid: get_u32(b, o::NANAGRPID),
        sqes: b[o::SQES],
        cqes: b[o::CQES],
        maxcmd: get_u16(b, o::MAXCMD),
        nn: get_u32(b, o::NN),
        oncs: get_u16(b, o::ONCS),
        fuses: get_u16(b, o::FUSES),
        ocfs: get_u16(b, o::OCFS),
        fna: b[o::FNA],
        vwc: b[o::VWC],
        awun: get_u16(b, o::AWUN),
        awupf: get_u16(b, o::AWUPF),
        sgls: get_u32(b, o::SGLS),
        mnan: get_u32(b, o::MNAN),
        subnqn: get_str(&b[o::SUBNQN..o::SUBNQN + NQN_SIZE]),
        ioccsz: get_u32(b, o::IOCCSZ),
        iorcsz: get_u32(b, o::IORCSZ),
        icdoff: get_u16(b, o::ICDOFF),
        fcatt: b[o::FCATT],
        msdbd: b[o::MSDBD],
    }
}

/// NSFEAT bit: thin provisioning (NCAP may be below NSZE, NUSE reports allocation).
pub const NSFEAT_THIN: u8 = 1 << 0;
/// NSFEAT bit: NAWUN, NAWUPF and NACWU are defined.
pub const NSFEAT_ATOMICS: u8 = 1 << 1;
/// NSFEAT bit: the Deallocated or Unwritten Logical Block error is supported (DAE).
pub const NSFEAT_DAE: u8 = 1 << 2;
/// NSFEAT bit: NGUID and EUI64 are never reused.
pub const NSFEAT_UIDREUSE: u8 = 1 << 3;
/// NSFEAT bit: NPWG, NPWA, NPDG, NPDA and NOWS are defined (OPTPERF).
pub const NSFEAT_OPTPERF: u8 = 1 << 4;

/// NMIC bit: the namespace may be attached to two or more controllers.
pub const NMIC_SHARED: u8 = 1 << 0;

/// DLFEAT bits 2:0 = 001b: reading a deallocated block returns zeroes.
pub const DLFEAT_READ_ZEROES: u8 = 0b001;
/// DLFEAT bit: Write Zeroes supports the Deallocate bit.
pub const DLFEAT_WRITE_ZEROES_DEALLOCATE: u8 = 1 << 3;
/// DLFEAT bit: the guard field of deallocated blocks is the data's CRC.
pub const DLFEAT_GUARD_CRC: u8 = 1 << 4;

/// One LBA format descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// log2 of the block size in bytes.
    pub lbads: u8,
    /// Relative performance (0 = best).
    pub rp: u8,
}

/// Everything Quire reports in Identify Namespace.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NamespaceIdentity {
    /// Namespace size in blocks.
    pub nsze: u64,
    /// Namespace capacity in blocks.
    pub ncap: u64,
    /// Allocated blocks (thin provisioning).
    pub nuse: u64,
    /// Namespace features (`NSFEAT_*`).
    pub nsfeat: u8,
    /// Number of LBA formats, 0-based.
    pub nlbaf: u8,
    /// Formatted LBA size: index of the format in use (bits 3:0).
    pub flbas: u8,
    /// Multi-path and sharing (`NMIC_*`).
    pub nmic: u8,
    /// Reservation capabilities (0).
    pub rescap: u8,
    /// Deallocate features (`DLFEAT_*`).
    pub dlfeat: u8,
    /// Atomic write unit normal, 0-based blocks (valid with [`NSFEAT_ATOMICS`]).
    pub nawun: u16,
    /// Atomic write unit power fail, 0-based blocks.
    pub nawupf: u16,
    /// Optimal I/O boundary in blocks (0 = none).
    pub noiob: u16,
    /// Preferred write granularity, 0-based blocks.
    pub npwg: u16,
    /// Preferred write alignment, 0-based blocks.
    pub npwa: u16,
    /// Preferred deallocate granularity, 0-based blocks.
    pub npdg: u16,
    /// Preferred deallocate alignment, 0-based blocks.
    pub npda: u16,
    /// Optimal write size, 0-based blocks.
    pub nows: u16,
    /// Copy: most blocks in one source range (0: Copy not supported).
    pub mssrl: u16,
    /// Copy: most blocks in all source ranges together.
    pub mcl: u32,
    /// Copy: most source ranges, 0-based.
    pub msrc: u8,
    /// ANA group of the namespace.
    pub anagrpid: u32,
    /// Namespace attributes (bit 0: write protected).
    pub nsattr: u8,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier (zero: not reported).
    pub eui64: [u8; 8],
    /// LBA format 0.
    pub lbaf0: LbaFormat,
}

impl NamespaceIdentity {
    /// The namespace Quire exports: thin provisioned, shared across controllers,
    /// deallocated blocks read as zeroes, and `page_bytes` pages announced as the
    /// optimal I/O boundary and the preferred write/deallocate granularity, so that
    /// hosts split I/O at page boundaries and trim whole pages.
    pub fn thin_shared(
        blocks: u64,
        allocated_blocks: u64,
        block_bytes: u32,
        page_bytes: u32,
        anagrpid: u32,
        nguid: [u8; 16],
    ) -> NamespaceIdentity {
        assert!(block_bytes.is_power_of_two() && block_bytes >= 512);
        assert!(page_bytes.is_power_of_two() && page_bytes >= block_bytes);
        let page_blocks = page_bytes / block_bytes;
        let page_blocks_u16 = u16::try_from(page_blocks).unwrap_or(u16::MAX);
        let page_blocks_0 = page_blocks_u16.saturating_sub(1);
        NamespaceIdentity {
            nsze: blocks,
            ncap: blocks,
            nuse: allocated_blocks.min(blocks),
            nsfeat: NSFEAT_THIN | NSFEAT_OPTPERF,
            nlbaf: 0,
            flbas: 0,
            nmic: NMIC_SHARED,
            rescap: 0,
            dlfeat: DLFEAT_READ_ZEROES | DLFEAT_WRITE_ZEROES_DEALLOCATE,
            nawun: 0,
            nawupf: 0,
            noiob: page_blocks_u16,
            npwg: page_blocks_0,
            npwa: page_blocks_0,
            npdg: page_blocks_0,
            npda: page_blocks_0,
            nows: page_blocks_0,
            mssrl: 0,
            mcl: 0,
            msrc: 0,
            anagrpid,
            nsattr: 0,
            nguid,
            eui64: [0; 8],
            lbaf0: LbaFormat { ms: 0, lbads: trailing_zeros_u8(block_bytes), rp: 0 },
        }
    }

    /// Block size of LBA format 0 in bytes.
    pub fn block_bytes(&self) -> u64 {
        1u64 << self.lbaf0.lbads.min(63)
    }
}

/// Writes Identify Namespace for `ns` into `out` (the whole page is rewritten).
pub fn write_namespace(ns: &NamespaceIdentity, out: &mut [u8; IDENTIFY_DATA_SIZE]) {
    use ns_off as o;
    assert!(ns.ncap <= ns.nsze, "capacity never exceeds size");
    assert!(ns.nuse <= ns.ncap, "utilization never exceeds capacity");
    out.fill(0);
    put_u64(out, o::NSZE, ns.nsze);
    put_u64(out, o::NCAP, ns.ncap);
    put_u64(out, o::NUSE, ns.nuse);
    out[o::NSFEAT] = ns.nsfeat;
    out[o::NLBAF] = ns.nlbaf;
    out[o::FLBAS] = ns.flbas;
    out[o::NMIC] = ns.nmic;
    out[o::RESCAP] = ns.rescap;
    out[o::DLFEAT] = ns.dlfeat;
    put_u16(out, o::NAWUN, ns.nawun);
    put_u16(out, o::NAWUPF, ns.nawupf);
    put_u16(out, o::NOIOB, ns.noiob);
    put_u16(out, o::NPWG, ns.npwg);
    put_u16(out, o::NPWA, ns.npwa);
    put_u16(out, o::NPDG, ns.npdg);
    put_u16(out, o::NPDA, ns.npda);
    put_u16(out, o::NOWS, ns.nows);
    put_u16(out, o::MSSRL, ns.mssrl);
    put_u32(out, o::MCL, ns.mcl);
    out[o::MSRC] = ns.msrc;
    put_u32(out, o::ANAGRPID, ns.anagrpid);
    out[o::NSATTR] = ns.nsattr;
    out[o::NGUID..o::NGUID + 16].copy_from_slice(&ns.nguid);
    out[o::EUI64..o::EUI64 + 8].copy_from_slice(&ns.eui64);
    put_u16(out, o::LBAF0, ns.lbaf0.ms);
    out[o::LBAF0 + 2] = ns.lbaf0.lbads;
    out[o::LBAF0 + 3] = ns.lbaf0.rp & 0x3;
}

/// Identify Namespace for `ns` as a fresh page.
pub fn build_namespace(ns: &NamespaceIdentity) -> Box<[u8; IDENTIFY_DATA_SIZE]> {
    let mut page = Box::new([0u8; IDENTIFY_DATA_SIZE]);
    write_namespace(ns, &mut page);
    page
}

/// Reads Identify Namespace.
///
/// # Panics
/// If `b` is shorter than [`IDENTIFY_DATA_SIZE`].
pub fn parse_namespace(b: &[u8]) -> NamespaceIdentity {
    use ns_off as o;
    assert!(b.len() >= IDENTIFY_DATA_SIZE, "Identify data is 4096 bytes");
    let mut nguid = [0u8; 16];
    nguid.copy_from_slice(&b[o::NGUID..o::NGUID + 16]);
    let mut eui64 = [0u8; 8];
    eui64.copy_from_slice(&b[o::EUI64..o::EUI64 + 8]);
    NamespaceIdentity {
        nsze: get_u64(b, o::NSZE),
        ncap: get_u64(b, o::NCAP),
        nuse: get_u64(b, o::NUSE),
        nsfeat: b[o::NSFEAT],
        nlbaf: b[o::NLBAF],
        flbas: b[o::FLBAS],
        nmic: b[o::NMIC],
        rescap: b[o::RESCAP],
        dlfeat: b[o::DLFEAT],
        nawun: get_u16(b, o::NAWUN),
        nawupf: get_u16(b, o::NAWUPF),
        noiob: get_u16(b, o::NOIOB),
        npwg: get_u16(b, o::NPWG),
        npwa: get_u16(b, o::NPWA),
        npdg: get_u16(b, o::NPDG),
        npda: get_u16(b, o::NPDA),
        nows: get_u16(b, o::NOWS),
        mssrl: get_u16(b, o::MSSRL),
        mcl: get_u32(b, o::MCL),
        msrc: b[o::MSRC],
        anagrpid: get_u32(b, o::ANAGRPID),
        nsattr: b[o::NSATTR],
        nguid,
        eui64,
        lbaf0: LbaFormat { ms: get_u16(b, o::LBAF0), lbads: b[o::LBAF0 + 2], rp: b[o::LBAF0 + 3] & 0x3 },
    }
}

/// Most NSIDs one Active Namespace ID list holds.
pub const NS_LIST_MAX: usize = IDENTIFY_DATA_SIZE / 4;

/// Writes the Active Namespace ID list: the NSIDs of `active` (strictly ascending)
/// greater than `after` (the command's NSID), at most [`NS_LIST_MAX`], zero-terminated.
/// Returns how many were listed.
pub fn write_active_ns_list(active: &[u32], after: u32, out: &mut [u8; IDENTIFY_DATA_SIZE]) -> usize {
    assert!(active.windows(2).all(|w| w[0] < w[1]), "NSIDs must be strictly ascending");
    assert!(!active.contains(&0), "NSID 0 is never active");
    out.fill(0);
    let mut n = 0;
    for &nsid in active.iter().filter(|&&id| id > after).take(NS_LIST_MAX) {
        put_u32(out, n * 4, nsid);
        n += 1;
    }
    n
}

/// The Active Namespace ID list as a fresh page (see [`write_active_ns_list`]).
pub fn build_active_ns_list(active: &[u32], after: u32) -> Box<[u8; IDENTIFY_DATA_SIZE]> {
    let mut page = Box::new([0u8; IDENTIFY_DATA_SIZE]);
    write_active_ns_list(active, after, &mut page);
    page
}

/// Reads a namespace ID list up to its first zero entry.
pub fn parse_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).take_while(|&id| id != 0).collect()
}

/// NIDT: IEEE extended unique identifier (8 bytes).
pub const NIDT_EUI64: u8 = 0x01;
/// NIDT: namespace globally unique identifier (16 bytes).
pub const NIDT_NGUID: u8 = 0x02;
/// NIDT: namespace UUID (16 bytes).
pub const NIDT_UUID: u8 = 0x03;
/// NIDT: command set identifier (1 byte).
pub const NIDT_CSI: u8 = 0x04;
/// CSI: NVM command set.
pub const CSI_NVM: u8 = 0x00;

/// One Namespace Identification Descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NsDescriptor {
    /// IEEE EUI-64.
    Eui64([u8; 8]),
    /// NGUID.
    Nguid([u8; 16]),
    /// UUID.
    Uuid([u8; 16]),
    /// Command set identifier.
    Csi(u8),
}

impl NsDescriptor {
    fn nidt(&self) -> u8 {
        match self {
            NsDescriptor::Eui64(_) => NIDT_EUI64,
            NsDescriptor::Nguid(_) => NIDT_NGUID,
            NsDescriptor::Uuid(_) => NIDT_UUID,
            NsDescriptor::Csi(_) => NIDT_CSI,
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            NsDescriptor::Eui64(v) => v,
            NsDescriptor::Nguid(v) | NsDescriptor::Uuid(v) => v,
            NsDescriptor::Csi(v) => std::slice::from_ref(v),
        }
    }
}

/// Writes a Namespace Identification Descriptor list; the zeroed rest of the page
/// ends it. Returns the bytes used.
pub fn write_ns_descriptors(descs: &[NsDescriptor], out: &mut [u8; IDENTIFY_DATA_SIZE]) -> usize {
    out.fill(0);
    let mut off = 0;
    for d in descs {
        let v = d.value();
        assert!(off + 4 + v.len() <= IDENTIFY_DATA_SIZE, "descriptors fit in a page");
        out[off] = d.nidt();
        out[off + 1] = u8::try_from(v.len()).expect("NIDL: a descriptor value is at most 16 bytes");
        out[off + 4..off + 4 + v.len()].copy_from_slice(v);
        off += 4 + v.len();
    }
    off
}

/// The Namespace Identification Descriptor list as a fresh page.
pub fn build_ns_descriptors(descs: &[NsDescriptor]) -> Box<[u8; IDENTIFY_DATA_SIZE]> {
    let mut page = Box::new([0u8; IDENTIFY_DATA_SIZE]);
    write_ns_descriptors(descs, &mut page);
    page
}

/// Reads a Namespace Identification Descriptor list. Stops at a zero type, at a
/// descriptor that would run past the buffer, or at one whose length does not match
/// its type; skips unknown types.
pub fn parse_ns_descriptors(b: &[u8]) -> Vec<NsDescriptor> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= b.len() {
        let (nidt, nidl) = (b[off], usize::from(b[off + 1]));
        let Some(v) = b.get(off + 4..off + 4 + nidl) else { break };
        let d = match (nidt, nidl) {
            (0, _) => break,
            (NIDT_EUI64, 8) => NsDescriptor::Eui64(v.try_into().expect("8 bytes")),
            (NIDT_NGUID, 16) => NsDescriptor::Nguid(v.try_into().expect("16 bytes")),
            (NIDT_UUID, 16) => NsDescriptor::Uuid(v.try_into().expect("16 bytes")),
            (NIDT_CSI, 1) => NsDescriptor::Csi(v[0]),
            (NIDT_EUI64 | NIDT_NGUID | NIDT_UUID | NIDT_CSI, _) => break,
            _ => {
                off += 4 + nidl;
                continue;
            }
        };
        out.push(d);
        off += 4 + nidl;
    }
    out
}

/// Fields of an Identify command.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IdentifyRequest {
    /// Controller or Namespace Structure.
    pub cns: u8,
    /// Controller identifier (CNS values that name a controller).
    pub cntid: u16,
    /// CNS specific identifier.
    pub cnssid: u16,
    /// Command set identifier.
    pub csi: u8,
    /// Namespace identifier.
    pub nsid: u32,
}

impl IdentifyRequest {
    /// Reads the Identify fields from a command (CDW10: CNS 7:0, CNTID 31:16;
    /// CDW11: CNSSID 15:0, CSI 31:24).
    pub fn from_command(c: &Command) -> IdentifyRequest {
        IdentifyRequest {
            cns: (c.cdw10 & 0xff) as u8,
            cntid: (c.cdw10 >> 16) as u16,
            cnssid: (c.cdw11 & 0xffff) as u16,
            csi: (c.cdw11 >> 24) as u8,
            nsid: c.nsid,
        }
    }

    /// An Identify command with these fields.
    pub fn to_command(&self, cid: u16) -> Command {
        Command {
            opcode: crate::nvme::opcode::ADMIN_IDENTIFY,
            cid,
            nsid: self.nsid,
            cdw10: u32::from(self.cns) | (u32::from(self.cntid) << 16),
            cdw11: u32::from(self.cnssid) | (u32::from(self.csi) << 24),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field sizes of Linux `struct nvme_id_ctrl` (include/linux/nvme.h) in order;
    /// the running sum gives each field's offset independently of `ctrl_off`.
    #[rustfmt::skip]
    const LINUX_ID_CTRL: &[(&str, usize)] = &[
        ("vid", 2), ("ssvid", 2), ("sn", 20), ("mn", 40), ("fr", 8), ("rab", 1),
        ("ieee", 3), ("cmic", 1), ("mdts", 1), ("cntlid", 2), ("ver", 4), ("rtd3r", 4),
        ("rtd3e", 4), ("oaes", 4), ("ctratt", 4), ("rsvd100", 11), ("cntrltype", 1),
        ("fguid", 16), ("crdt1", 2), ("crdt2", 2), ("crdt3", 2), ("rsvd134", 122),
        ("oacs", 2), ("acl", 1), ("aerl", 1), ("frmw", 1), ("lpa", 1), ("elpe", 1),
        ("npss", 1), ("avscc", 1), ("apsta", 1), ("wctemp", 2), ("cctemp", 2),
        ("mtfa", 2), ("hmpre", 4), ("hmmin", 4), ("tnvmcap", 16), ("unvmcap", 16),
        ("rpmbs", 4), ("edstt", 2), ("dsto", 1), ("fwug", 1), ("kas", 2), ("hctma", 2),
        ("mntmt", 2), ("mxtmt", 2), ("sanicap", 4), ("hmminds", 4), ("hmmaxd", 2),
        ("nvmsetidmax", 2), ("endgidmax", 2), ("anatt", 1), ("anacap", 1),
        ("anagrpmax", 4), ("nanagrpid", 4), ("rsvd352", 160), ("sqes", 1), ("cqes", 1),
        ("maxcmd", 2), ("nn", 4), ("oncs", 2), ("fuses", 2), ("fna", 1), ("vwc", 1),
        ("awun", 2), ("awupf", 2), ("nvscc", 1), ("nwpc", 1), ("acwu", 2),
        ("ocfs", 2), ("sgls", 4), ("mnan", 4), ("rsvd544", 224), ("subnqn", 256),
        ("rsvd1024", 768), ("ioccsz", 4), ("iorcsz", 4), ("icdoff", 2), ("ctrattr", 1),
        ("msdbd", 1), ("rsvd1804", 2), ("dctype", 1), ("rsvd1807", 241), ("psd", 1024),
        ("vs", 1024),
    ];

    /// Field sizes of Linux `struct nvme_id_ns`.
    #[rustfmt::skip]
    const LINUX_ID_NS: &[(&str, usize)] = &[
        ("nsze", 8), ("ncap", 8), ("nuse", 8), ("nsfeat", 1), ("nlbaf", 1), ("flbas", 1),
        ("mc", 1), ("dpc", 1), ("dps", 1), ("nmic", 1), ("rescap", 1), ("fpi", 1),
        ("dlfeat", 1), ("nawun", 2), ("nawupf", 2), ("nacwu", 2), ("nabsn", 2),
        ("nabo", 2), ("nabspf", 2), ("noiob", 2), ("nvmcap", 16), ("npwg", 2),
        ("npwa", 2), ("npdg", 2), ("npda", 2), ("nows", 2), ("mssrl", 2), ("mcl", 4),
        ("msrc", 1), ("rsvd81", 11),
        ("anagrpid", 4), ("rsvd96", 3), ("nsattr", 1), ("nvmsetid", 2), ("endgid", 2),
        ("nguid", 16), ("eui64", 8), ("lbaf", 256), ("vs", 3712),
    ];

    fn linux_offset(table: &[(&str, usize)], name: &str) -> usize {
        let mut off = 0;
        for &(n, size) in table {
            if n == name {
                return off;
            }
            off += size;
        }
        panic!("no field {name}");
    }

    #[test]
    fn linux_tables_cover_a_page() {
        assert_eq!(LINUX_ID_CTRL.iter().map(|f| f.1).sum::<usize>(), IDENTIFY_DATA_SIZE);
        assert_eq!(LINUX_ID_NS.iter().map(|f| f.1).sum::<usize>(), IDENTIFY_DATA_SIZE);
    }

    #[test]
    fn controller_offsets_match_linux_nvme_id_ctrl() {
        use ctrl_off as o;
        #[rustfmt::skip]
        let expect = [
            ("vid", o::VID), ("ssvid", o::SSVID), ("sn", o::SN), ("mn", o::MN),
            ("fr", o::FR), ("rab", o::RAB), ("ieee", o::IEEE), ("cmic", o::CMIC),
            ("mdts", o::MDTS), ("cntlid", o::CNTLID), ("ver", o::VER), ("oaes", o::OAES),
            ("ctratt", o::CTRATT), ("cntrltype", o::CNTRLTYPE), ("oacs", o::OACS),
            ("acl", o::ACL), ("aerl", o::AERL), ("frmw", o::FRMW), ("lpa", o::LPA),
            ("elpe", o::ELPE), ("npss", o::NPSS), ("wctemp", o::WCTEMP),
            ("cctemp", o::CCTEMP), ("kas", o::KAS), ("anatt", o::ANATT),
            ("anacap", o::ANACAP), ("anagrpmax", o::ANAGRPMAX),
            ("nanagrpid", o::NANAGRPID), ("sqes", o::SQES), ("cqes", o::CQES),
            ("maxcmd", o::MAXCMD), ("nn", o::NN), ("oncs", o::ONCS), ("fuses", o::FUSES),
            ("fna", o::FNA), ("vwc", o::VWC), ("awun", o::AWUN), ("awupf", o::AWUPF),
            ("ocfs", o::OCFS), ("sgls", o::SGLS), ("mnan", o::MNAN), ("subnqn", o::SUBNQN),
            ("ioccsz", o::IOCCSZ), ("iorcsz", o::IORCSZ), ("icdoff", o::ICDOFF),
            ("ctrattr", o::FCATT), ("msdbd", o::MSDBD), ("psd", o::PSD0),
        ];
        for (name, ours) in expect {
            assert_eq!(linux_offset(LINUX_ID_CTRL, name), ours, "offset of {name}");
        }
        // The offsets the brief names, spelled out.
        assert_eq!((o::MDTS, o::CNTLID, o::VER, o::OACS), (77, 78, 80, 256));
        assert_eq!((o::SQES, o::NN, o::ONCS, o::VWC, o::SGLS), (512, 516, 520, 525, 536));
        assert_eq!((o::SUBNQN, o::IOCCSZ), (768, 1792));
    }

    #[test]
    fn namespace_offsets_match_linux_nvme_id_ns() {
        use ns_off as o;
        #[rustfmt::skip]
        let expect = [
            ("nsze", o::NSZE), ("ncap", o::NCAP), ("nuse", o::NUSE), ("nsfeat", o::NSFEAT),
            ("nlbaf", o::NLBAF), ("flbas", o::FLBAS), ("nmic", o::NMIC),
            ("rescap", o::RESCAP), ("dlfeat", o::DLFEAT), ("nawun", o::NAWUN),
            ("nawupf", o::NAWUPF), ("noiob", o::NOIOB), ("npwg", o::NPWG),
            ("npwa", o::NPWA), ("npdg", o::NPDG), ("npda", o::NPDA), ("nows", o::NOWS),
            ("mssrl", o::MSSRL), ("mcl", o::MCL), ("msrc", o::MSRC),
            ("anagrpid", o::ANAGRPID), ("nsattr", o::NSATTR), ("nguid", o::NGUID),
            ("eui64", o::EUI64), ("lbaf", o::LBAF0),
        ];
        for (name, ours) in expect {
            assert_eq!(linux_offset(LINUX_ID_NS, name), ours, "offset of {name}");
        }
        assert_eq!(o::NGUID, 104);
    }

    fn sample_controller() -> ControllerIdentity {
        ControllerIdentity {
            vid: 0x1d1d,
            ssvid: 0x1d1e,
            serial: "QUIRE0001".into(),
            model: "Quire NVMe/TCP volume".into(),
            firmware: "0.1.0".into(),
            rab: 6,
            ieee_oui: 0x00_ab_cd_ef,
            cmic: CMIC_MULTI_PORT | CMIC_MULTI_CTRL | CMIC_ANA,
            mdts: mdts_for(1 << 20),
            cntlid: 0x1234,
            ver: VER_2_0,
            oaes: OAES_NS_ATTR | OAES_ANA_CHANGE,
            ctratt: CTRATT_HOSTID_128,
            cntrltype: CNTRLTYPE_IO,
            oacs: 0,
            acl: 3,
            aerl: 3,
            frmw: FRMW_SLOT1_RO | (1 << FRMW_SLOTS_SHIFT),
            lpa: LPA_CMD_EFFECTS | LPA_EXTENDED_DATA,
            elpe: 127,
            npss: 0,
            power_state0: PowerState { max_power_cw: 2500, entry_lat_us: 10, exit_lat_us: 20 },
            wctemp: 343,
            cctemp: 353,
            kas: 10,
            anatt: 10,
            anacap: ANACAP_OPTIMIZED | ANACAP_NON_OPTIMIZED | ANACAP_INACCESSIBLE,
            anagrpmax: 32,
            nanagrpid: 32,
            sqes: SQES_64,
            cqes: CQES_16,
            maxcmd: 128,
            nn: 1024,
            oncs: ONCS_DSM | ONCS_WRITE_ZEROES,
            fuses: 0,
            ocfs: 0,
            fna: 0,
            vwc: VWC_PRESENT | VWC_FLUSH_ALL_SUPPORTED,
            awun: 7,
            awupf: 7,
            sgls: SGLS_SUPPORTED | SGLS_OFFSET | SGLS_TRANSPORT_DATA_BLOCK,
            mnan: 0,
            subnqn: "nqn.2026-11.io.quire:vol0".into(),
            ioccsz: ioccsz_for(8192),
            iorcsz: 1,
            icdoff: 0,
            fcatt: FCATT_DYNAMIC,
            msdbd: 1,
        }
    }

    #[test]
    fn controller_fields_land_at_spec_offsets() {
        let id = sample_controller();
        let b = build_controller(&id);
        assert_eq!(&b[4..13], b"QUIRE0001");
        assert_eq!(b[13], b' ', "serial is space padded");
        assert_eq!(&b[73..76], &[0xef, 0xcd, 0xab]);
        assert_eq!(b[76], 0b1011);
        assert_eq!(b[77], 8, "1 MiB = 2^8 * 4 KiB");
        assert_eq!(get_u16(&b[..], 78), 0x1234);
        assert_eq!(get_u32(&b[..], 80), 0x0002_0000);
        assert_eq!(get_u32(&b[..], 92), (1 << 8) | (1 << 11));
        assert_eq!(b[111], 1);
        assert_eq!(b[261], 0b110);
        assert_eq!(b[262], 127);
        assert_eq!(get_u16(&b[..], 320), 10);
        assert_eq!(b[512], 0x66);
        assert_eq!(b[513], 0x44);
        assert_eq!(get_u32(&b[..], 516), 1024);
        assert_eq!(get_u16(&b[..], 520), 0b1100);
        assert_eq!(b[525], 0b111);
        assert_eq!(get_u32(&b[..], 536), 1 | (1 << 20) | (1 << 21));
        assert_eq!(&b[768..768 + 25], b"nqn.2026-11.io.quire:vol0");
        assert_eq!(b[768 + 25], 0, "NQN is NUL padded");
        assert_eq!(get_u32(&b[..], 1792), (64 + 8192) / 16);
        assert_eq!(get_u32(&b[..], 1796), 1);
        assert_eq!(b[1803], 1);
        assert_eq!(get_u16(&b[..], 2048), 2500);
        assert_eq!(parse_controller(&b[..]), id);
    }

    #[test]
    fn default_controller_is_a_valid_fabrics_io_controller() {
        let d = parse_controller(&build_controller(&ControllerIdentity::default())[..]);
        assert_eq!(d.cntrltype, CNTRLTYPE_IO);
        assert_eq!(in_capsule_bytes(d.ioccsz), 0);
        assert_eq!((d.sqes, d.cqes, d.iorcsz, d.msdbd), (0x66, 0x44, 1, 1));
        assert_ne!(d.ctratt & CTRATT_HOSTID_128, 0);
    }

    #[test]
    fn mdts_and_ioccsz_helpers() {
        assert_eq!(mdts_for(4096), 0);
        assert_eq!(mdts_for(128 * 1024), 5);
        assert_eq!(mdts_bytes(5), Some(128 * 1024));
        assert_eq!(mdts_bytes(0), None);
        assert_eq!(ioccsz_for(0), 4);
        assert_eq!(in_capsule_bytes(ioccsz_for(4096)), 4096);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn mdts_rejects_odd_sizes() {
        mdts_for(3 * 4096);
    }

    #[test]
    fn namespace_round_trips_and_fields_land_at_spec_offsets() {
        let ns = NamespaceIdentity::thin_shared(1 << 30, 12345, 4096, 1 << 20, 7, [0xa5; 16]);
        let b = build_namespace(&ns);
        assert_eq!(get_u64(&b[..], 0), 1 << 30);
        assert_eq!(get_u64(&b[..], 16), 12345);
        assert_eq!(b[24], NSFEAT_THIN | NSFEAT_OPTPERF);
        assert_eq!(b[30], 1);
        assert_eq!(b[33], 0b1001);
        assert_eq!(get_u16(&b[..], 46), 256, "1 MiB page = 256 blocks of 4 KiB");
        assert_eq!(get_u16(&b[..], 64), 255, "NPWG is 0-based");
        assert_eq!(get_u32(&b[..], 92), 7);
        assert_eq!(&b[104..120], &[0xa5; 16]);
        assert_eq!(&b[120..128], &[0; 8]);
        assert_eq!(b[130], 12, "LBADS = log2(4096)");
        let d = parse_namespace(&b[..]);
        assert_eq!(d, ns);
        assert_eq!(d.block_bytes(), 4096);
    }

    #[test]
    fn active_ns_list_starts_after_the_given_nsid() {
        let b = build_active_ns_list(&[1, 2, 5, 9], 2);
        assert_eq!(parse_ns_list(&b[..]), vec![5, 9]);
        let many: Vec<u32> = (1..=2000).collect();
        let mut page = [0u8; IDENTIFY_DATA_SIZE];
        assert_eq!(write_active_ns_list(&many, 0, &mut page), NS_LIST_MAX);
        assert_eq!(get_u32(&page, 4092), 1024);
    }

    #[test]
    fn ns_descriptors_round_trip() {
        let descs = [NsDescriptor::Nguid([1; 16]), NsDescriptor::Uuid([2; 16]), NsDescriptor::Csi(CSI_NVM)];
        let b = build_ns_descriptors(&descs);
        assert_eq!(&b[0..4], &[2, 16, 0, 0]);
        assert_eq!(&b[20..24], &[3, 16, 0, 0]);
        assert_eq!(&b[40..45], &[4, 1, 0, 0, 0]);
        assert_eq!(parse_ns_descriptors(&b[..]), descs.to_vec());
        // A truncated buffer yields only the complete descriptors.
        assert_eq!(parse_ns_descriptors(&b[..30]), descs[..1].to_vec());
    }

    #[test]
    fn identify_request_round_trips() {
        let r = IdentifyRequest { cns: CNS_NS_DESCRIPTORS, cntid: 3, cnssid: 0, csi: 0, nsid: 9 };
        let c = r.to_command(77);
        assert_eq!(c.cdw10, 0x0003_0003);
        assert_eq!(IdentifyRequest::from_command(&c), r);
    }
}
