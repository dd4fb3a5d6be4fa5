//! A small raw NVMe/TCP host for the target's integration tests.
//!
//! The tests run the whole appliance in-process ([`TestTarget`], via
//! `quire_appliance::serve::start`) on a RAM device and talk to it over real sockets
//! with [`Conn`]: a blocking `std::net::TcpStream` with read and write timeouts, so that
//! a target that hangs fails the test instead of hanging it. The client is built on
//! `quire_wire` (the same codec the target uses) but makes its own decisions: it
//! sends commands in-capsule when they fit and answers R2Ts with H2CData PDUs of at
//! most MAXH2CDATA bytes, checks every digest it receives and can also send raw,
//! deliberately broken bytes and then expect a termination request or a close.
//!
//! Not every test binary uses every helper.
// Test constants and sizes are small: a truncating cast would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quire_appliance::serve::Running;
use quire_config::Config;
use quire_wire::nvme::cmd::Sgl;
use quire_wire::nvme::fabrics::{ConnectCmd, ConnectData, CC_EN, CNTLID_DYNAMIC, CSTS_RDY, PROP_CC, PROP_CSTS};
use quire_wire::nvme::identify::IdentifyRequest;
use quire_wire::nvme::log::LogPageRequest;
use quire_wire::nvme::{opcode, Command, Completion, Status};
use quire_wire::tcp::digest::crc32c;
use quire_wire::tcp::{
    decode, encode_capsule_cmd, encode_h2c_data, encode_icreq, CommonHeader, DataHeader, Digests, ICReq, ICResp,
    Layout, Pdu, Role, TermError, CH_LEN,
};
use serde_json::{json, Value};

/// How long any single wait of the client may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The NQN prefix of volume subsystems.
pub const NQN_PREFIX: &str = "nqn.2026-11.io.quire:";
/// The host NQN the tests use unless they need another.
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0b0e0f00-0000-4000-8000-000000000001";
/// The host identifier that goes with [`HOSTNQN`].
pub const HOSTID: [u8; 16] = [0x0b, 0x0e, 0x0f, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1];
/// In-capsule data the test target accepts (its `in_capsule_data_size`).
pub const ICD_MAX: usize = 8192;
/// `target.max_queue_depth` of the test target.
pub const MAX_QUEUE_DEPTH: u16 = 32;
/// `target.max_transfer_size` of the test target.
pub const MDTS_BYTES: usize = 1 << 20;
/// `target.max_h2c_data` of the test target.
pub const MAXH2CDATA: u32 = 64 << 10;
/// Page size of the `demo` volume.
pub const DEMO_PAGE: usize = 1 << 20;
/// Size of the `demo` volume.
pub const DEMO_SIZE: u64 = 64 << 20;

/// The subsystem NQN of volume `name`.
pub fn nqn(name: &str) -> String {
    format!("{NQN_PREFIX}{name}")
}

/// `len` bytes of a pattern that differs for every `seed` and every 4-byte word.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    let mut v = Vec::with_capacity(len + 4);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Runs `check` until it returns true or [`TIMEOUT`] passes; panics with `what` then.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

// ----- the target ---------------------------------------------------------------------

/// An in-process target on a RAM device, stopped when dropped.
pub struct TestTarget {
    running: Option<Running>,
    /// Where the I/O listener is.
    pub io_addr: SocketAddr,
    /// Where discovery is (the I/O listener: the test config has no separate one).
    pub discovery_addr: SocketAddr,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestTarget {
    /// A target with the test configuration: volumes `demo` (64M, 1M pages) and
    /// `small` (16M, 1M pages), 2 reactors. (Both have 4K blocks: `serve` opens RAM
    /// and file devices with 4K blocks, and a volume's blocks are at least the
    /// device's, so a 512-byte volume cannot be configured on them.)
    pub fn start() -> TestTarget {
        TestTarget::start_with(|_| {})
    }

    /// A target with the test configuration changed by `edit`.
    pub fn start_with(edit: impl FnOnce(&mut Config)) -> TestTarget {
        TestTarget::start_on(edit, None)
    }

    /// A target with the test configuration changed by `edit`, on `device` (instead of
    /// the configuration's RAM device) when given.
    pub fn start_on(
        edit: impl FnOnce(&mut Config),
        device: Option<std::sync::Arc<dyn quire_drivers::BlockDevice>>,
    ) -> TestTarget {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"
[peer]
name = "test"
data_dir = "{dir}"
rpc_socket = "{dir}/quire.sock"

[reactors]
count = 2
poll = "hybrid"
spin_us = 20

[target]
listen = "127.0.0.1"
port = 4420
discovery_port = 0
max_queue_depth = {MAX_QUEUE_DEPTH}
max_io_queues = 4
in_capsule_data_size = "{ICD_MAX}"
max_transfer_size = "{MDTS_BYTES}"
max_h2c_data = "{MAXH2CDATA}"

[buffers]
chunk_size = "128K"
count = 256
hugepages = false

[log]
level = "warn"

[[device]]
kind = "ram"
size = "256M"

[[volume]]
name = "demo"
size = "{DEMO_SIZE}"
page_size = "{DEMO_PAGE}"

[[volume]]
name = "small"
size = "16M"
page_size = "1M"
"#,
            dir = dir.path().display()
        );
        let mut cfg = Config::from_str(&text).expect("test config parses");
        edit(&mut cfg);
        // The configuration refuses port 0, so take a port the kernel says is free;
        // another socket may grab it before the target binds, so retry then.
        let mut attempts = 0;
        let running = loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
            cfg.target.port = probe.local_addr().expect("probe address").port();
            drop(probe);
            let started = match &device {
                Some(d) => quire_appliance::serve::start_with_device(cfg.clone(), d.clone(), "test device"),
                None => quire_appliance::serve::start(cfg.clone()),
            };
            match started {
                Ok(r) => break r,
                Err(quire_appliance::serve::ServeError::Listen { .. }) if attempts < 10 => attempts += 1,
                Err(e) => panic!("target does not start: {e}"),
            }
        };
        TestTarget {
            io_addr: running.io_addr,
            discovery_addr: running.discovery_addr,
            socket: running.socket().to_path_buf(),
            running: Some(running),
            _dir: dir,
        }
    }

    /// The metrics endpoint's address, when the configuration turns it on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::metrics_addr)
    }

    /// Calls a management method; panics on an RPC error.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        quire_appliance::rpc::client::call(&self.socket, method, params)
            .unwrap_or_else(|e| panic!("RPC {method} failed: {e}"))
    }

    /// The `volume_list` entry of volume `name`.
    pub fn volume(&self, name: &str) -> Value {
        let list = self.rpc("volume_list", json!({}));
        list.as_array().expect("a list").iter().find(|v| v["name"] == name).cloned().expect("volume listed")
    }

    /// Pages of volume `name` written at least once.
    pub fn allocated_pages(&self, name: &str) -> u64 {
        self.volume(name)["allocated_pages"].as_u64().expect("allocated_pages")
    }

    /// Every reactor's `stats_reactors` entry.
    pub fn reactor_stats(&self) -> Vec<Value> {
        self.rpc("stats_reactors", json!({})).as_array().expect("a list").clone()
    }

    /// `field` of `stats_reactors`, summed over the reactors.
    pub fn reactor_sum(&self, field: &str) -> u64 {
        self.reactor_stats().iter().map(|r| r[field].as_u64().unwrap_or_else(|| panic!("{field} in {r}"))).sum()
    }

    /// Waits until no request is left on any connection and every pool buffer is back
    /// (what a quiet target looks like once its hosts have gone): nothing leaked.
    pub fn wait_quiet(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let s = self.reactor_stats();
            let sum = |f: &str| s.iter().map(|r| r[f].as_u64().expect("a counter")).sum::<u64>();
            if sum("requests_active") == 0 && sum("buffers_free") == sum("buffers_total") && sum("connections") == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the target did not come back to rest: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Host connections the reactors serve now.
    pub fn connections(&self) -> u64 {
        let list = self.rpc("stats_reactors", json!({}));
        list.as_array().expect("a list").iter().map(|r| r["connections"].as_u64().expect("connections")).sum()
    }

    /// Waits until the reactors serve exactly `n` connections.
    pub fn wait_connections(&self, n: u64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.connections();
            if now == n {
                return;
            }
            assert!(Instant::now() < deadline, "connections stayed at {now}, expected {n}");
            std::thread::yield_now();
        }
    }

    /// Live controllers.
    pub fn controllers(&self) -> Vec<Value> {
        self.rpc("controller_list", json!({})).as_array().expect("a list").clone()
    }
}

impl TestTarget {
    /// Stops the target; panics if any of its threads panicked (a reactor that died
    /// is a failure even when the test's own checks passed).
    pub fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().unwrap_or_else(|e| panic!("the target's {e}"));
        }
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let result = r.shutdown();
            if !std::thread::panicking() {
                result.unwrap_or_else(|e| panic!("the target's {e}"));
            }
        }
    }
}

// ----- one connection -----------------------------------------------------------------

/// Why receiving failed.
#[derive(Debug)]
pub enum RecvError {
    /// The target closed (EOF or reset).
    Closed,
    /// Nothing arrived within the timeout.
    Timeout,
    /// The target sent something this host rejects.
    Bad(TermError),
    /// Another socket error.
    Io(std::io::Error),
}

/// One received PDU.
#[derive(Debug)]
pub struct RxPdu {
    /// Its layout.
    pub layout: Layout,
    /// Its header.
    pub pdu: Pdu,
    /// Its data (termination requests: the echoed header).
    pub data: Vec<u8>,
    /// The data digest matched (true when there was none).
    pub ddgst_ok: bool,
}

/// A received termination request.
#[derive(Debug)]
pub struct Term {
    /// Fatal error status.
    pub fes: u16,
    /// Fatal error information.
    pub fei: u32,
    /// The offending PDU header the target echoed.
    pub data: Vec<u8>,
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct Done {
    /// The completion.
    pub cpl: Completion,
    /// Data the controller sent (reads).
    pub data: Vec<u8>,
}

impl Done {
    /// The completion status.
    pub fn status(&self) -> Status {
        self.cpl.status()
    }

    /// Panics unless the command succeeded.
    pub fn ok(self) -> Done {
        assert!(self.status().is_success(), "command {} failed: {}", self.cpl.cid, self.status());
        self
    }
}

struct Pending {
    write: Option<Vec<u8>>,
    read: Vec<u8>,
    /// C2HData bytes received.
    got: usize,
}

/// One NVMe/TCP connection (one queue).
pub struct Conn {
    /// The socket.
    pub sock: TcpStream,
    /// Digests negotiated (before ICResp: none).
    pub digests: Digests,
    negotiated: bool,
    /// MAXH2CDATA from the ICResp.
    pub maxh2cdata: u32,
    /// Queue ID once connected.
    pub qid: u16,
    /// Controller ID once connected.
    pub cntlid: u16,
    /// Logical block size of namespace 1 (for read/write helpers).
    pub block_size: u32,
    /// Largest write sent in the capsule.
    pub icd_max: usize,
    next_cid: u16,
    pending: HashMap<u16, Pending>,
    done: HashMap<u16, Done>,
}

fn io_err(e: std::io::Error) -> RecvError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => RecvError::Closed,
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => RecvError::Timeout,
        _ => RecvError::Io(e),
    }
}

impl Conn {
    /// A TCP connection to `addr`, nothing sent yet.
    pub fn open(addr: SocketAddr) -> Conn {
        let sock = TcpStream::connect_timeout(&addr, TIMEOUT).expect("TCP connect");
        sock.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        sock.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        sock.set_nodelay(true).expect("nodelay");
        Conn {
            sock,
            digests: Digests::default(),
            negotiated: false,
            maxh2cdata: 0,
            qid: 0,
            cntlid: 0,
            block_size: 4096,
            icd_max: ICD_MAX,
            next_cid: 1,
            pending: HashMap::new(),
            done: HashMap::new(),
        }
    }

    /// A connection that completed ICReq/ICResp with `digests`.
    pub fn init(addr: SocketAddr, digests: Digests) -> Conn {
        let mut c = Conn::open(addr);
        let resp = c.icreq(digests);
        assert_eq!(resp.digests, digests, "the target grants the digests asked for");
        c
    }

    /// Sends ICReq and reads the ICResp.
    pub fn icreq(&mut self, digests: Digests) -> ICResp {
        let req = ICReq { pfv: 0, hpda: 0, digests, maxr2t: 0 };
        self.send_raw(encode_icreq(&req).as_bytes()).expect("send ICReq");
        let rx = self.recv().expect("ICResp");
        let Pdu::ICResp(resp) = rx.pdu else { panic!("expected ICResp, got {:?}", rx.pdu) };
        self.digests = resp.digests;
        self.negotiated = true;
        self.maxh2cdata = resp.maxh2cdata;
        resp
    }

    /// Marks the connection initialized with `digests` without an exchange (for tests
    /// that send their own ICReq bytes).
    pub fn assume_initialized(&mut self, digests: Digests, maxh2cdata: u32) {
        self.digests = digests;
        self.negotiated = true;
        self.maxh2cdata = maxh2cdata;
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(b)
    }

    fn read_exact(&mut self, b: &mut [u8]) -> Result<(), RecvError> {
        self.sock.read_exact(b).map_err(io_err)
    }

    /// Receives one PDU.
    pub fn recv(&mut self) -> Result<RxPdu, RecvError> {
        let mut ch = [0u8; CH_LEN];
        self.read_exact(&mut ch)?;
        let h = CommonHeader::parse(&ch);
        let layout = h.layout(Role::Host, self.negotiated.then_some(self.digests)).map_err(RecvError::Bad)?;
        let mut hdr = vec![0u8; layout.header_total()];
        hdr[..CH_LEN].copy_from_slice(&ch);
        self.read_exact(&mut hdr[CH_LEN..])?;
        let pdu = decode(&layout, &hdr).map_err(RecvError::Bad)?;
        let mut pad = vec![0u8; layout.pad_len];
        self.read_exact(&mut pad)?;
        let mut data = vec![0u8; layout.data_len];
        self.read_exact(&mut data)?;
        let mut ddgst_ok = true;
        if layout.ddgst_len != 0 {
            let mut d = [0u8; 4];
            self.read_exact(&mut d)?;
            ddgst_ok = u32::from_le_bytes(d) == crc32c(&data);
        }
        Ok(RxPdu { layout, pdu, data, ddgst_ok })
    }

    /// A fresh command identifier.
    pub fn cid(&mut self) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        cid
    }

    /// The bytes of a CapsuleCmd for `cmd` carrying `icd` in the capsule.
    pub fn capsule_bytes(&self, cmd: &Command, icd: &[u8]) -> Vec<u8> {
        let mut v = encode_capsule_cmd(cmd, icd.len(), self.digests).as_bytes().to_vec();
        v.extend_from_slice(icd);
        if self.digests.data && !icd.is_empty() {
            v.extend_from_slice(&crc32c(icd).to_le_bytes());
        }
        v
    }

    /// The bytes of an H2CData PDU.
    pub fn h2c_bytes(&self, hdr: &DataHeader, data: &[u8]) -> Vec<u8> {
        assert_eq!(hdr.datal as usize, data.len());
        let mut v = encode_h2c_data(hdr, self.digests).as_bytes().to_vec();
        v.extend_from_slice(data);
        if self.digests.data && !data.is_empty() {
            v.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        v
    }

    /// Sends `cmd` (its cid is set here when 0) with `write` data (in the capsule when
    /// it fits, else on R2T) or expecting `read_len` bytes back. Returns the cid.
    pub fn submit(&mut self, mut cmd: Command, write: Option<Vec<u8>>, read_len: usize) -> u16 {
        if cmd.cid == 0 {
            cmd.cid = self.cid();
        }
        let icd = match &write {
            Some(w) if w.len() <= self.icd_max => {
                cmd.set_sgl(Sgl::in_capsule(w.len() as u32));
                w.clone()
            }
            Some(w) => {
                cmd.set_sgl(Sgl::transport(w.len() as u32));
                Vec::new()
            }
            None => {
                cmd.set_sgl(Sgl::transport(read_len as u32));
                Vec::new()
            }
        };
        let r2t = write.filter(|w| w.len() > self.icd_max);
        let bytes = self.capsule_bytes(&cmd, &icd);
        assert!(self.pending.insert(cmd.cid, Pending { write: r2t, read: vec![0; read_len], got: 0 }).is_none());
        self.send_raw(&bytes).expect("send capsule");
        cmd.cid
    }

    /// Command `cid`'s result, if it has already arrived (while waiting for another).
    pub fn try_take(&mut self, cid: u16) -> Option<Done> {
        self.done.remove(&cid)
    }

    /// Handles PDUs until command `cid` completes.
    pub fn wait(&mut self, cid: u16) -> Done {
        loop {
            if let Some(d) = self.done.remove(&cid) {
                return d;
            }
            self.step().unwrap_or_else(|e| panic!("waiting for cid {cid}: {e:?}"));
        }
    }

    /// Sends the H2CData PDUs R2T `r` asks for, from its pending write's data (a test
    /// that took the R2T with [`Conn::recv`] to hold a write's data back sends it with
    /// this when it wants).
    pub fn answer_r2t(&mut self, r: &quire_wire::tcp::R2t) {
        let p = self.pending.get(&r.cccid).expect("R2T for a pending command");
        let w = p.write.clone().expect("R2T for a write");
        assert!(r.r2to as usize + r.r2tl as usize <= w.len(), "R2T inside the transfer");
        let (mut off, end) = (r.r2to as usize, (r.r2to + r.r2tl) as usize);
        let mut out = Vec::new();
        while off < end {
            let n = (end - off).min(self.maxh2cdata as usize);
            let hdr = DataHeader {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off as u32,
                datal: n as u32,
                last: off + n == end,
                success: false,
            };
            out.extend(self.h2c_bytes(&hdr, &w[off..off + n]));
            off += n;
        }
        self.send_raw(&out).expect("send H2CData");
    }

    /// Handles one received PDU: R2T → H2CData, C2HData → data, CapsuleResp → done.
    /// A termination request is an error here.
    pub fn step(&mut self) -> Result<(), RecvError> {
        let rx = self.recv()?;
        match rx.pdu {
            Pdu::R2T(r) => self.answer_r2t(&r),
            Pdu::C2HData(h) => {
                assert!(rx.ddgst_ok, "C2HData data digest");
                let p = self.pending.get_mut(&h.cccid).expect("C2HData for a pending command");
                let (o, n) = (h.datao as usize, h.datal as usize);
                assert!(o + n <= p.read.len(), "C2HData within the transfer");
                p.read[o..o + n].copy_from_slice(&rx.data);
                p.got += n;
                if h.success {
                    let p = self.pending.remove(&h.cccid).expect("pending");
                    let cpl = Completion { cid: h.cccid, sqid: self.qid, ..Default::default() };
                    self.done.insert(h.cccid, Done { cpl, data: p.read });
                }
            }
            Pdu::CapsuleResp(cpl) => {
                let p = self.pending.remove(&cpl.cid).unwrap_or_else(|| panic!("response for unknown cid {}", cpl.cid));
                let mut data = p.read;
                if !cpl.status().is_success() {
                    data.truncate(p.got);
                }
                self.done.insert(cpl.cid, Done { cpl, data });
            }
            Pdu::TermReq { fes, fei } => panic!("unexpected C2HTermReq fes {fes:#x} fei {fei}"),
            other => panic!("unexpected PDU {other:?}"),
        }
        Ok(())
    }

    /// Sends `cmd` and waits for it.
    pub fn exec(&mut self, cmd: Command, write: Option<Vec<u8>>, read_len: usize) -> Done {
        let cid = self.submit(cmd, write, read_len);
        self.wait(cid)
    }

    /// Reads PDUs until a termination request arrives; returns (FES, FEI) and checks
    /// that the connection is closed after it.
    pub fn expect_term(&mut self) -> (u16, u32) {
        let t = self.expect_term_data();
        (t.fes, t.fei)
    }

    /// [`Conn::expect_term`], also returning the offending header the target echoed.
    pub fn expect_term_data(&mut self) -> Term {
        loop {
            match self.recv() {
                Ok(RxPdu { pdu: Pdu::TermReq { fes, fei }, data, .. }) => {
                    self.expect_closed();
                    return Term { fes, fei, data };
                }
                Ok(_) => continue,
                Err(e) => panic!("expected a C2HTermReq, got {e:?}"),
            }
        }
    }

    /// Reads until the target closes the connection; panics on a timeout.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) => match io_err(e) {
                    RecvError::Closed => return,
                    other => panic!("expected the target to close the connection: {other:?}"),
                },
            }
        }
    }

    // ----- Fabrics ------------------------------------------------------------------

    /// Sends Connect; returns the completion.
    #[allow(clippy::too_many_arguments)]
    pub fn connect_raw(
        &mut self,
        qid: u16,
        sqsize: u16,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        cntlid: u16,
        kato_ms: u32,
    ) -> Completion {
        let cmd = ConnectCmd { recfmt: 0, qid, sqsize, cattr: 0, kato_ms }.to_command(0);
        let data = ConnectData { hostid, cntlid, subnqn: subnqn.into(), hostnqn: hostnqn.into() };
        let d = self.exec(cmd, Some(data.to_bytes().to_vec()), 0);
        if d.status().is_success() {
            self.qid = qid;
            self.cntlid = d.cpl.dw0 as u16;
        }
        d.cpl
    }

    /// Connects this connection as the admin queue of a new controller.
    pub fn connect_admin(&mut self, subnqn: &str, hostnqn: &str, kato_ms: u32) -> u16 {
        let c = self.connect_raw(0, MAX_QUEUE_DEPTH - 1, subnqn, hostnqn, HOSTID, CNTLID_DYNAMIC, kato_ms);
        assert!(c.status().is_success(), "admin connect: {}", c.status());
        self.cntlid
    }

    /// Property Get.
    pub fn prop_get(&mut self, offset: u32, size8: bool) -> Result<u64, Status> {
        let cmd = Command {
            opcode: opcode::FABRICS,
            nsid: u32::from(opcode::FCTYPE_PROPERTY_GET),
            cdw10: u32::from(size8),
            cdw11: offset,
            ..Default::default()
        };
        let d = self.exec(cmd, None, 0);
        if d.status().is_success() {
            Ok(u64::from(d.cpl.dw0) | (u64::from(d.cpl.dw1) << 32))
        } else {
            Err(d.status())
        }
    }

    /// Property Set (4 bytes).
    pub fn prop_set(&mut self, offset: u32, value: u32) -> Status {
        let cmd = Command {
            opcode: opcode::FABRICS,
            nsid: u32::from(opcode::FCTYPE_PROPERTY_SET),
            cdw11: offset,
            cdw12: value,
            ..Default::default()
        };
        self.exec(cmd, None, 0).status()
    }

    /// Enables the controller (CC.EN with IOSQES 6, IOCQES 4) and waits for CSTS.RDY.
    pub fn enable(&mut self) {
        assert!(self.prop_set(PROP_CC, CC_EN | (6 << 16) | (4 << 20)).is_success());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let csts = self.prop_get(PROP_CSTS, false).expect("CSTS");
            if csts as u32 & CSTS_RDY != 0 {
                return;
            }
            assert!(Instant::now() < deadline, "CSTS.RDY never came");
        }
    }

    // ----- admin --------------------------------------------------------------------

    /// Identify; returns the 4096-byte page (panics on failure).
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Vec<u8> {
        self.identify_raw(cns, nsid).ok().data
    }

    /// Identify.
    pub fn identify_raw(&mut self, cns: u8, nsid: u32) -> Done {
        let cmd = IdentifyRequest { cns, nsid, ..Default::default() }.to_command(0);
        self.exec(cmd, None, 4096)
    }

    /// Get Log Page of `len` bytes at `offset`.
    pub fn get_log(&mut self, lid: u8, nsid: u32, offset: u64, len: u32) -> Done {
        let cmd = LogPageRequest::new(lid, nsid, offset, len).to_command(0);
        self.exec(cmd, None, len as usize)
    }

    /// Set Features.
    pub fn set_feature(&mut self, fid: u8, cdw11: u32) -> Completion {
        let cmd = Command { opcode: opcode::ADMIN_SET_FEATURES, cdw10: u32::from(fid), cdw11, ..Default::default() };
        self.exec(cmd, None, 0).cpl
    }

    /// Get Features (`sel` in CDW10 bits 10:8), with `data_len` bytes of data back.
    pub fn get_feature(&mut self, fid: u8, sel: u8, cdw11: u32, data_len: usize) -> Done {
        let cmd = Command {
            opcode: opcode::ADMIN_GET_FEATURES,
            cdw10: u32::from(fid) | (u32::from(sel) << 8),
            cdw11,
            ..Default::default()
        };
        self.exec(cmd, None, data_len)
    }

    // ----- NVM ----------------------------------------------------------------------

    /// A read or write command for namespace 1.
    pub fn rw_cmd(&self, op: u8, slba: u64, nlb: u32) -> Command {
        assert!(nlb >= 1);
        let mut c = Command { opcode: op, nsid: 1, cdw12: nlb - 1, ..Default::default() };
        c.set_slba(slba);
        c
    }

    /// Writes `data` at `slba`.
    pub fn write(&mut self, slba: u64, data: &[u8]) -> Done {
        let nlb = (data.len() / self.block_size as usize) as u32;
        let cmd = self.rw_cmd(opcode::NVM_WRITE, slba, nlb);
        self.exec(cmd, Some(data.to_vec()), 0)
    }

    /// Reads `nlb` blocks at `slba`.
    pub fn read(&mut self, slba: u64, nlb: u32) -> Done {
        let cmd = self.rw_cmd(opcode::NVM_READ, slba, nlb);
        let len = nlb as usize * self.block_size as usize;
        self.exec(cmd, None, len)
    }

    /// Writes `data` at `slba` and reads it back; panics when it differs.
    pub fn round_trip(&mut self, slba: u64, data: &[u8]) {
        self.write(slba, data).ok();
        let got = self.read(slba, (data.len() / self.block_size as usize) as u32).ok().data;
        assert!(got == data, "data read back at LBA {slba} differs from what was written");
    }
}

// ----- a whole host ---------------------------------------------------------------------

/// A controller: an admin queue and I/O queues.
pub struct Host {
    /// The admin queue.
    pub admin: Conn,
    /// I/O queues (qid = index + 1).
    pub io: Vec<Conn>,
    /// Controller ID.
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    addr: SocketAddr,
    digests: Digests,
}

impl Host {
    /// A controller on volume `volume` with one I/O queue, no digests.
    pub fn connect(addr: SocketAddr, volume: &str) -> Host {
        Host::connect_with(addr, volume, HOSTNQN, Digests::default(), 1)
    }

    /// A controller with `queues` I/O queues.
    pub fn connect_with(addr: SocketAddr, volume: &str, hostnqn: &str, digests: Digests, queues: u16) -> Host {
        let subnqn = nqn(volume);
        let mut admin = Conn::init(addr, digests);
        let cntlid = admin.connect_admin(&subnqn, hostnqn, 0);
        admin.enable();
        let n = u32::from(queues.max(1) - 1);
        let c = admin.set_feature(quire_wire::nvme::features::FID_NUMBER_OF_QUEUES, n | (n << 16));
        assert!(c.status().is_success(), "set number of queues: {}", c.status());
        let block_size = quire_wire::nvme::identify::parse_namespace(&admin.identify(0, 1)).block_bytes() as u32;
        admin.block_size = block_size;
        let mut h = Host { admin, io: Vec::new(), cntlid, subnqn, hostnqn: hostnqn.into(), addr, digests };
        for _ in 0..queues {
            h.add_io_queue();
        }
        h
    }

    /// Connects one more I/O queue.
    pub fn add_io_queue(&mut self) -> &mut Conn {
        let qid = self.io.len() as u16 + 1;
        let mut io = Conn::init(self.addr, self.digests);
        let c = io.connect_raw(qid, MAX_QUEUE_DEPTH - 1, &self.subnqn, &self.hostnqn, HOSTID, self.cntlid, 0);
        assert!(c.status().is_success(), "I/O connect qid {qid}: {}", c.status());
        assert_eq!(io.cntlid, self.cntlid);
        io.block_size = self.admin.block_size;
        self.io.push(io);
        self.io.last_mut().expect("just pushed")
    }

    /// The first I/O queue.
    pub fn io(&mut self) -> &mut Conn {
        &mut self.io[0]
    }
}

/// A host already connected before a bad-input case, used to show afterwards that
/// the case affected nobody else: it still does I/O and the target still accepts.
pub struct Witness {
    host: Host,
    round: u32,
    /// Connections the target served when the witness was ready.
    pub baseline: u64,
}

impl Witness {
    /// Connects the witness to `demo`.
    pub fn new(t: &TestTarget) -> Witness {
        let host = Host::connect(t.io_addr, "demo");
        t.wait_connections(2);
        Witness { host, round: 0, baseline: 2 }
    }

    /// Proves the target is unharmed: every connection of the case is gone, the
    /// witness writes and reads back (4K in-capsule and 256K by R2T, across a page
    /// boundary), and a new host can connect and do the same.
    pub fn check(&mut self, t: &TestTarget) {
        t.wait_connections(self.baseline);
        self.round += 1;
        let lba = u64::from(self.round % 32) * 256 + 200;
        let io = self.host.io();
        io.round_trip(lba, &pattern(self.round, 4096));
        io.round_trip(lba, &pattern(self.round + 1000, 256 << 10));
        let mut fresh = Host::connect(t.io_addr, "demo");
        let got = fresh.io().read(lba, 64).ok().data;
        assert!(got == pattern(self.round + 1000, 256 << 10), "a fresh host reads the witness' data");
        drop(fresh);
        t.wait_connections(self.baseline);
    }
}
