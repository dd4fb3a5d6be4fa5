//! A controller seen from the host: the admin queue and what it is used for.
//!
//! Bring-up follows `nvme_ctrlr.c`'s order: ICReq/ICResp, Fabrics Connect (queue 0,
//! dynamic controller ID), Property Get of CAP and VS, Property Set of CC (EN=1,
//! IOSQES=6, IOCQES=4), a wait for CSTS.RDY bounded by CAP.TO, Identify Controller.
//! The admin queue stays blocking: every command is sent and waited for, with a
//! deadline. While workers run, the owner calls [`Controller::keep_alive_if_due`]
//! often enough that a Keep Alive goes out every KATO/2.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quire_wire::nvme::fabrics::{
    ConnectCmd, ConnectData, CC_EN, CC_SHN_SHIFT, CNTLID_DYNAMIC, CSTS_CFS, CSTS_RDY, CSTS_SHST_COMPLETE, PROP_CAP,
    PROP_CC, PROP_CSTS, PROP_VS,
};
use quire_wire::nvme::identify::{
    self as ident, in_capsule_bytes, parse_controller, parse_namespace, parse_ns_list, ControllerIdentity,
    NamespaceIdentity, CNS_ACTIVE_NS_LIST, CNS_CONTROLLER, CNS_NAMESPACE, IDENTIFY_DATA_SIZE,
};
use quire_wire::nvme::log::{
    parse_discovery_header, DiscoveryEntry, DISCOVERY_RECORD_SIZE, LID_DISCOVERY, SUBTYPE_NVME, TRTYPE_TCP,
};
use quire_wire::nvme::{opcode, Command, DISCOVERY_NQN};
use quire_wire::tcp::Digests;

use super::connection::{Connection, ConnectionParams, DataDir, BLOCKING_SLICE};
use super::{Error, Result};

/// Admin queue depth.
const ADMIN_DEPTH: u16 = 8;
/// Admin slot buffer: Identify data, a discovery log of up to 63 entries.
const ADMIN_BUF_LEN: usize = 64 << 10;
/// CC.IOSQES: 64-byte submission queue entries (2^6).
const CC_IOSQES: u32 = 6 << 16;
/// CC.IOCQES: 16-byte completion queue entries (2^4).
const CC_IOCQES: u32 = 4 << 20;
/// Feature identifier: Number of Queues.
const FID_NUM_QUEUES: u32 = 0x07;
/// Discovery log records the admin buffer holds after the header.
const DISCOVERY_RECORDS_MAX: usize = ADMIN_BUF_LEN / DISCOVERY_RECORD_SIZE - 1;
const _: () = assert!(ADMIN_BUF_LEN >= 2 * DISCOVERY_RECORD_SIZE, "the admin buffer holds a header and a record");
const _: () = assert!(ADMIN_BUF_LEN >= IDENTIFY_DATA_SIZE, "the admin buffer holds an Identify page");

/// The length of an admin transfer, which fits the admin buffer.
fn admin_len(bytes: usize) -> u32 {
    assert!(bytes <= ADMIN_BUF_LEN, "admin transfer of {bytes} bytes beyond the admin buffer");
    u32::try_from(bytes).expect("the admin buffer is 64 KiB")
}

/// Identify Namespace as the host uses it: the shared parse, plus the block size of
/// the LBA format in use (the shared structure keeps LBA format 0 only, while a
/// namespace may be formatted with another).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// The Identify Namespace fields.
    pub id: NamespaceIdentity,
    /// Block size in bytes of the format in use (0 when the format is not one a host
    /// can use: LBADS outside 9..=16).
    pub block_size: u32,
}

impl NamespaceInfo {
    /// Parses Identify Namespace data (4096 bytes).
    pub fn parse(b: &[u8]) -> NamespaceInfo {
        assert!(b.len() >= IDENTIFY_DATA_SIZE, "Identify data is 4096 bytes");
        let id = parse_namespace(b);
        let format = usize::from(id.flbas & 0xf);
        let lbads = b[ident::ns_off::LBAF0 + 4 * format + 2];
        let block_size = if (9..=16).contains(&lbads) { 1u32 << lbads } else { 0 };
        assert!(block_size == 0 || block_size.is_power_of_two());
        NamespaceInfo { id, block_size }
    }

    /// Whether the namespace exists (inactive namespaces identify as all zeroes).
    pub fn is_active(&self) -> bool {
        self.id.nsze > 0 && self.block_size > 0
    }
}

/// Largest transfer of one command that MDTS allows, in bytes (`None`: no limit).
/// MDTS counts in units of the controller's minimum page size (CAP.MPSMIN).
pub fn mdts_limit_bytes(mdts: u8, cap: u64) -> Option<u64> {
    let mpsmin_shift = 12 + ((cap >> 48) & 0xf);
    (mdts != 0).then(|| 1u64 << (u64::from(mdts) + mpsmin_shift).min(63))
}

/// How to reach and identify to a controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Target address.
    pub addr: SocketAddr,
    /// Subsystem NQN; `None` discovers it (first NVM subsystem in the discovery log).
    pub subnqn: Option<String>,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Digests to ask for.
    pub digests: Digests,
    /// Keep Alive Timeout in milliseconds (0 = none).
    pub kato_ms: u32,
    /// Deadline of connects and of each admin command.
    pub timeout: Duration,
    /// Ask I/O queues to disable SQ flow control (Connect CATTR bit 2).
    pub disable_sqflow: bool,
}

impl ControllerOptions {
    /// Options with a fresh random host identity, no digests, KATO 10 s, 5 s deadlines.
    pub fn new(addr: SocketAddr, subnqn: Option<String>) -> ControllerOptions {
        let hostid = random_id();
        ControllerOptions {
            addr,
            subnqn,
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid_string(&hostid)),
            hostid,
            digests: Digests::default(),
            kato_ms: 10_000,
            timeout: Duration::from_secs(5),
            disable_sqflow: false,
        }
    }
}

/// A connected, enabled controller and its admin queue.
pub struct Controller {
    admin: Connection,
    opts: ControllerOptions,
    subnqn: String,
    cntlid: u16,
    cap: u64,
    vs: u32,
    ident: ControllerIdentity,
    last_keep_alive: Instant,
}

impl Controller {
    /// Connects the admin queue, enables the controller and identifies it. Discovers
    /// the subsystem NQN first when the options leave it out.
    pub fn connect(opts: &ControllerOptions) -> Result<Controller> {
        let subnqn = match &opts.subnqn {
            Some(n) => n.clone(),
            None => {
                let entries = discover(opts)?;
                // The first NVM subsystem, preferring one reachable over TCP.
                let nvm = |e: &&DiscoveryEntry| e.subtype == SUBTYPE_NVME;
                let e = entries
                    .iter()
                    .filter(nvm)
                    .find(|e| e.trtype == TRTYPE_TCP)
                    .or_else(|| entries.iter().find(nvm))
                    .ok_or(Error::NoSubsystem)?;
                e.subnqn.clone()
            }
        };
        Controller::attach(opts, subnqn)
    }

    fn attach(opts: &ControllerOptions, subnqn: String) -> Result<Controller> {
        let params = ConnectionParams {
            addr: opts.addr,
            digests: opts.digests,
            depth: ADMIN_DEPTH,
            buf_len: ADMIN_BUF_LEN,
            timeout: opts.timeout,
        };
        let mut admin = Connection::connect(&params)?;
        let cntlid = fabrics_connect(&mut admin, opts, &subnqn, 0, ADMIN_DEPTH * 4 - 1, CNTLID_DYNAMIC)?;
        let mut c = Controller {
            admin,
            opts: opts.clone(),
            subnqn,
            cntlid,
            cap: 0,
            vs: 0,
            ident: ControllerIdentity::default(),
            last_keep_alive: Instant::now(),
        };
        c.cap = c.property_get(PROP_CAP, true)?;
        c.vs = c.property_get4(PROP_VS)?;
        c.enable()?;
        let data = c.identify(CNS_CONTROLLER, 0)?;
        c.ident = parse_controller(&data);
        Ok(c)
    }

    /// Sets CC.EN and waits for CSTS.RDY within CAP.TO (500 ms units).
    fn enable(&mut self) -> Result<()> {
        let cc = CC_EN | CC_IOSQES | CC_IOCQES;
        self.property_set(PROP_CC, u64::from(cc), false)?;
        let to_ms = ((self.cap >> 24) & 0xff).max(1) * 500;
        let deadline = Instant::now() + Duration::from_millis(to_ms);
        loop {
            let csts = self.property_get4(PROP_CSTS)?;
            if csts & CSTS_CFS != 0 {
                return Err(Error::Controller("CSTS.CFS set while enabling".into()));
            }
            if csts & CSTS_RDY != 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout("CSTS.RDY after CC.EN=1"));
            }
            std::thread::sleep(BLOCKING_SLICE);
        }
    }

    /// The subsystem NQN connected to.
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }

    /// The controller ID the target gave this host.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Controller Capabilities.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Version register (major in bits 31:16, minor in 15:8).
    pub fn version(&self) -> u32 {
        self.vs
    }

    /// Identify Controller data.
    pub fn identity(&self) -> &ControllerIdentity {
        &self.ident
    }

    /// Largest transfer of one command in bytes (MDTS; `None` = no limit).
    pub fn max_transfer_bytes(&self) -> Option<u64> {
        mdts_limit_bytes(self.ident.mdts, self.cap)
    }

    /// The options this controller was connected with.
    pub fn options(&self) -> &ControllerOptions {
        &self.opts
    }

    /// Digests in force on the admin queue.
    pub fn digests(&self) -> Digests {
        self.admin.digests()
    }

    /// Reads a property (4 or 8 bytes).
    pub fn property_get(&mut self, offset: u32, size8: bool) -> Result<u64> {
        let cmd = Command {
            opcode: opcode::FABRICS,
            nsid: u32::from(opcode::FCTYPE_PROPERTY_GET),
            cdw10: u32::from(size8),
            cdw11: offset,
            ..Default::default()
        };
        let (d, _) = self.admin.execute(cmd, DataDir::None, &[], 0, "Property Get", self.opts.timeout)?;
        Ok(u64::from(d.dw0) | if size8 { u64::from(d.dw1) << 32 } else { 0 })
    }

    /// Reads a 4-byte property.
    fn property_get4(&mut self, offset: u32) -> Result<u32> {
        let v = self.property_get(offset, false)?;
        Ok(u32::try_from(v).expect("a 4-byte Property Get returns only DW0"))
    }

    /// Writes a property (4 or 8 bytes).
    pub fn property_set(&mut self, offset: u32, value: u64, size8: bool) -> Result<()> {
        let cmd = Command {
            opcode: opcode::FABRICS,
            nsid: u32::from(opcode::FCTYPE_PROPERTY_SET),
            cdw10: u32::from(size8),
            cdw11: offset,
            cdw12: quire_wire::lo32(value),
            cdw13: quire_wire::hi32(value),
            ..Default::default()
        };
        self.admin.execute(cmd, DataDir::None, &[], 0, "Property Set", self.opts.timeout)?;
        Ok(())
    }

    /// Identify with `cns` for `nsid`: the 4096 data bytes.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>> {
        let cmd = Command { opcode: opcode::ADMIN_IDENTIFY, nsid, cdw10: u32::from(cns), ..Default::default() };
        let t = self.opts.timeout;
        let (_, data) =
            self.admin.execute(cmd, DataDir::FromController, &[], admin_len(IDENTIFY_DATA_SIZE), "Identify", t)?;
        Ok(data)
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<NamespaceInfo> {
        Ok(NamespaceInfo::parse(&self.identify(CNS_NAMESPACE, nsid)?))
    }

    /// The active namespace IDs (Identify CNS 2), falling back to probing 1..=NN
    /// with Identify Namespace when the controller does not support the list.
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>> {
        match self.identify(CNS_ACTIVE_NS_LIST, 0) {
            Ok(list) => Ok(parse_ns_list(&list)),
            Err(Error::Status { .. }) => {
                let mut v = Vec::new();
                for nsid in 1..=self.ident.nn.min(1024) {
                    if self.identify_namespace(nsid)?.is_active() {
                        v.push(nsid);
                    }
                }
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }

    /// Set Features / Number of Queues: asks for `n` I/O queue pairs, returns how
    /// many the controller granted.
    pub fn set_num_queues(&mut self, n: u16) -> Result<u16> {
        assert!(n >= 1);
        let want = u32::from(n - 1);
        let cmd = Command {
            opcode: opcode::ADMIN_SET_FEATURES,
            cdw10: FID_NUM_QUEUES,
            cdw11: want | (want << 16),
            ..Default::default()
        };
        let t = self.opts.timeout;
        let (d, _) = self.admin.execute(cmd, DataDir::None, &[], 0, "Set Features (Number of Queues)", t)?;
        let sq = (d.dw0 & 0xffff) + 1;
        let cq = (d.dw0 >> 16) + 1;
        Ok(sq.min(cq).min(0xffff) as u16)
    }

    /// Sends a Keep Alive.
    pub fn keep_alive(&mut self) -> Result<()> {
        let cmd = Command { opcode: opcode::ADMIN_KEEP_ALIVE, ..Default::default() };
        self.admin.execute(cmd, DataDir::None, &[], 0, "Keep Alive", self.opts.timeout)?;
        self.last_keep_alive = Instant::now();
        Ok(())
    }

    /// Sends a Keep Alive when half the keep-alive timeout has passed since the last.
    /// Returns whether it sent one.
    pub fn keep_alive_if_due(&mut self) -> Result<bool> {
        if self.opts.kato_ms == 0 {
            return Ok(false);
        }
        let half = Duration::from_millis(u64::from(self.opts.kato_ms) / 2);
        if self.last_keep_alive.elapsed() < half {
            return Ok(false);
        }
        self.keep_alive()?;
        Ok(true)
    }

    /// Get Log Page `lid`: `len` bytes (a multiple of 4) from byte `offset`.
    pub fn get_log_page(&mut self, lid: u8, len: u32, offset: u64) -> Result<Vec<u8>> {
        assert!(len >= 4 && len.is_multiple_of(4), "log pages are read in dwords");
        assert!(len as usize <= ADMIN_BUF_LEN);
        let numd = len / 4 - 1;
        let cmd = Command {
            opcode: opcode::ADMIN_GET_LOG_PAGE,
            cdw10: u32::from(lid) | ((numd & 0xffff) << 16),
            cdw11: numd >> 16,
            cdw12: quire_wire::lo32(offset),
            cdw13: quire_wire::hi32(offset),
            ..Default::default()
        };
        let t = self.opts.timeout;
        let (_, data) = self.admin.execute(cmd, DataDir::FromController, &[], len, "Get Log Page", t)?;
        Ok(data)
    }

    /// Reads the whole discovery log page (header first, then every record).
    /// Reads the discovery log page: the header, then the records (at most
    /// [`DISCOVERY_RECORDS_MAX`], what the admin buffer holds).
    pub fn discovery_log(&mut self) -> Result<Vec<DiscoveryEntry>> {
        let head = self.get_log_page(LID_DISCOVERY, admin_len(DISCOVERY_RECORD_SIZE), 0)?;
        let numrec = parse_discovery_header(&head).map_err(|e| Error::Protocol(format!("discovery log: {e}")))?.numrec;
        let n = usize::try_from(numrec).unwrap_or(usize::MAX).min(DISCOVERY_RECORDS_MAX);
        if n == 0 {
            return Ok(Vec::new());
        }
        let page = self.get_log_page(LID_DISCOVERY, admin_len((n + 1) * DISCOVERY_RECORD_SIZE), 0)?;
        discovery_records(&page, n)
    }

    /// Connects I/O queue `qid` to this controller with `depth` command slots of
    /// `buf_len` bytes each; the connection comes back in polled (non-blocking) mode.
    pub fn connect_io_queue(&self, qid: u16, depth: u16, buf_len: usize) -> Result<Connection> {
        assert!(qid >= 1, "queue 0 is the admin queue");
        let params = ConnectionParams {
            addr: self.opts.addr,
            digests: self.opts.digests,
            depth,
            buf_len,
            timeout: self.opts.timeout,
        };
        let mut conn = Connection::connect(&params)?;
        let mqes = (self.cap & 0xffff) as u16;
        let sqsize = depth.min(mqes.max(1));
        fabrics_connect(&mut conn, &self.opts, &self.subnqn, qid, sqsize, self.cntlid)?;
        let icd = in_capsule_bytes(self.ident.ioccsz);
        conn.set_in_capsule_max(icd);
        conn.set_polled()?;
        Ok(conn)
    }

    /// Normal shutdown (CC.SHN = 01b, wait for CSTS.SHST complete), then closes the
    /// admin connection.
    pub fn shutdown(mut self) -> Result<()> {
        let cc = CC_EN | CC_IOSQES | CC_IOCQES | (1 << CC_SHN_SHIFT);
        self.property_set(PROP_CC, u64::from(cc), false)?;
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let csts = self.property_get4(PROP_CSTS)?;
            if csts & (3 << 2) == CSTS_SHST_COMPLETE {
                break;
            }
            if Instant::now() > deadline {
                self.admin.close();
                return Err(Error::Timeout("CSTS.SHST after CC.SHN"));
            }
            std::thread::sleep(BLOCKING_SLICE);
        }
        self.admin.close();
        Ok(())
    }
}

/// Connects to the discovery subsystem at `opts.addr` and reads its log page.
pub fn discover(opts: &ControllerOptions) -> Result<Vec<DiscoveryEntry>> {
    let mut o = opts.clone();
    o.kato_ms = 0;
    let mut c = Controller::attach(&o, DISCOVERY_NQN.to_string())?;
    let entries = c.discovery_log()?;
    // The log is what matters; a discovery controller that does not shut down
    // cleanly is closed anyway.
    let _ = c.shutdown();
    Ok(entries)
}

/// The first `n` records of a discovery log page read into `page` (header first).
fn discovery_records(page: &[u8], n: usize) -> Result<Vec<DiscoveryEntry>> {
    assert!(page.len() >= (n + 1) * DISCOVERY_RECORD_SIZE, "the page holds the records asked for");
    (1..=n)
        .map(|i| {
            DiscoveryEntry::parse(&page[i * DISCOVERY_RECORD_SIZE..])
                .map_err(|e| Error::Protocol(format!("discovery log record {i}: {e}")))
        })
        .collect()
}

/// Sends Fabrics Connect for queue `qid` and returns the controller ID.
fn fabrics_connect(
    conn: &mut Connection,
    opts: &ControllerOptions,
    subnqn: &str,
    qid: u16,
    sqsize: u16,
    cntlid: u16,
) -> Result<u16> {
    let kato_ms = if qid == 0 { opts.kato_ms } else { 0 };
    // CATTR bit 2: disable SQ flow control (I/O queues only, as Linux's --disable-sqflow).
    let cattr = if qid != 0 && opts.disable_sqflow { 0x4 } else { 0 };
    let cmd = ConnectCmd { recfmt: 0, qid, sqsize, cattr, kato_ms }.to_command(0);
    let data = ConnectData { hostid: opts.hostid, cntlid, subnqn: subnqn.to_string(), hostnqn: opts.hostnqn.clone() }
        .to_bytes();
    let what = if qid == 0 { "Fabrics Connect (admin queue)" } else { "Fabrics Connect (I/O queue)" };
    match conn.execute(cmd, DataDir::ToController, &data, 0, what, opts.timeout) {
        Ok((d, _)) => Ok((d.dw0 & 0xffff) as u16),
        Err(Error::Status { status, dw0, .. }) => {
            Err(Error::ConnectRejected { status, detail: connect_detail(status, dw0) })
        }
        Err(e) => Err(e),
    }
}

/// Names the parameter a Connect Invalid Parameters status points at (DW0: IATTR in
/// bits 23:16, bit 0 set for the Connect data; IPO, the byte offset, in bits 15:0).
fn connect_detail(status: quire_wire::nvme::Status, dw0: u32) -> String {
    let key = quire_wire::nvme::Status { dnr: false, more: false, ..status };
    if key != quire_wire::nvme::Status::CONNECT_INVALID_PARAMETERS {
        return String::new();
    }
    let in_data = (dw0 >> 16) & 1 == 1;
    let ipo = dw0 & 0xffff;
    let name = match (in_data, ipo) {
        (true, 0) => "HOSTID",
        (true, 16) => "CNTLID",
        (true, 256) => "SUBNQN (no such subsystem, or this host may not use it)",
        (true, 512) => "HOSTNQN",
        (false, 42) | (false, 40) => "QID",
        (false, 44) => "SQSIZE",
        (false, 48) => "KATO",
        _ => "?",
    };
    format!(": invalid {} at byte {ipo} of the {}", name, if in_data { "Connect data" } else { "command" })
}

/// 16 random bytes (host identifier), from the standard library's per-process
/// random hash keys mixed with the clock.
fn random_id() -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.write_u32(std::process::id());
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

fn uuid_string(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_identity_is_a_version_4_uuid() {
        let o = ControllerOptions::new("127.0.0.1:4420".parse().unwrap(), None);
        let u = o.hostnqn.rsplit(':').next().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(o.hostid, ControllerOptions::new(o.addr, None).hostid);
    }

    #[test]
    fn namespace_block_size_follows_the_format_in_use() {
        let mut b = vec![0u8; IDENTIFY_DATA_SIZE];
        b[..8].copy_from_slice(&1000u64.to_le_bytes());
        b[ident::ns_off::FLBAS] = 1;
        b[ident::ns_off::LBAF0 + 2] = 9;
        b[ident::ns_off::LBAF0 + 4 + 2] = 12;
        let n = NamespaceInfo::parse(&b);
        assert_eq!(n.block_size, 4096);
        assert_eq!(n.id.nsze, 1000);
        assert!(n.is_active());
        assert!(!NamespaceInfo::parse(&vec![0u8; IDENTIFY_DATA_SIZE]).is_active());
        b[ident::ns_off::LBAF0 + 4 + 2] = 30;
        assert_eq!(NamespaceInfo::parse(&b).block_size, 0, "an unusable LBADS gives no block size");
    }

    #[test]
    fn namespace_info_agrees_with_the_wire_crates_builder() {
        let id = NamespaceIdentity::thin_shared(1 << 20, 0, 4096, 4 << 20, 1, [7; 16]);
        let n = NamespaceInfo::parse(&ident::build_namespace(&id)[..]);
        assert_eq!((n.block_size, n.id.nsze, n.id.nguid), (4096, 1 << 20, [7; 16]));
    }

    #[test]
    fn controller_identity_gives_in_capsule_size_and_mdts() {
        let id = ControllerIdentity {
            serial: "S1".into(),
            model: "Quire".into(),
            cntlid: 9,
            mdts: 5,
            ioccsz: ident::ioccsz_for(8192),
            ..Default::default()
        };
        let c = parse_controller(&ident::build_controller(&id)[..]);
        assert_eq!((c.serial.as_str(), c.model.as_str(), c.cntlid), ("S1", "Quire", 9));
        assert_eq!(in_capsule_bytes(c.ioccsz), 8192);
        assert_eq!(mdts_limit_bytes(c.mdts, 0), Some(128 << 10));
        // CAP.MPSMIN = 1: 8 KiB pages.
        assert_eq!(mdts_limit_bytes(c.mdts, 1 << 48), Some(256 << 10));
        assert_eq!(mdts_limit_bytes(0, 0), None);
    }

    #[test]
    fn discovery_records_are_cut_at_what_was_read() {
        let entries: Vec<DiscoveryEntry> = (0..3)
            .map(|i| DiscoveryEntry::tcp_ipv4(SUBTYPE_NVME, i, "10.0.0.1", 4420 + i, &format!("nqn.a:{i}")))
            .collect();
        let page = quire_wire::nvme::log::build_discovery_log(1, &entries);
        let head = parse_discovery_header(&page).unwrap();
        assert_eq!(head.numrec, 3);
        let v = discovery_records(&page[..3 * DISCOVERY_RECORD_SIZE], 2).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].subnqn, "nqn.a:1");
        assert_eq!(v[1].trsvcid, "4421");
        assert_eq!(v[1].traddr, "10.0.0.1");
        assert_eq!(v[1].trtype, TRTYPE_TCP);
    }

    #[test]
    fn connect_rejections_name_the_parameter() {
        let s = quire_wire::nvme::Status::CONNECT_INVALID_PARAMETERS.with_dnr();
        assert!(connect_detail(s, 0x1_0100).contains("SUBNQN"));
        assert!(connect_detail(s, 44).contains("SQSIZE"));
        assert_eq!(connect_detail(quire_wire::nvme::Status::CONNECT_INVALID_HOST, 0), "");
    }
}
