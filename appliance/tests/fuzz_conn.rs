//! Connection fuzzing: random sequences of valid and mutated PDUs sent over a real
//! socket to one long-lived in-process target. After every case the host closes its
//! side and the target must close too (no connection is left behind), and the target
//! must still serve: a witness host connected before the first case writes and reads
//! back, and fresh hosts (whose admin and I/O connections land on both reactors) connect
//! and read it. A reactor that panicked would leave its connections unserved, which the
//! witness notices as a timeout.
//!
//! The number of cases comes from `PROPTEST_CASES` (default 64, so CI runs briefly),
//! the seed from `PROPTEST_RNG_SEED` (default fixed, so CI runs the same cases).
//! `FUZZ_SLOW=1` prints every case the target took more than 300 ms to close.
// Test constants and sizes are small: a truncating cast would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::cell::RefCell;
use std::net::Shutdown;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngSeed, TestRunner};
use quire_wire::nvme::cmd::Sgl;
use quire_wire::nvme::fabrics::{ConnectCmd, ConnectData, CC_EN, CNTLID_DYNAMIC, PROP_CC, PROP_CSTS};
use quire_wire::nvme::{opcode, Command};
use quire_wire::put_u32;
use quire_wire::tcp::digest::crc32c;
use quire_wire::tcp::{
    encode_capsule_cmd, encode_h2c_data, encode_icreq, encode_term_req, DataHeader, Digests, Fes, ICReq, Role,
};

/// Largest write or read a case sends (keeps a case's buffers well inside the pool,
/// so that cases test protocol handling, not pool exhaustion).
const NLB_MAX: u32 = 64;

/// One PDU of a case, before mutation.
#[derive(Clone, Debug)]
enum Step {
    /// ICReq (again).
    ICReq,
    /// Connect as an admin queue to `demo`, or as I/O queue `qid` of controller `cntlid`.
    Connect { qid: u16, cntlid: u16, in_capsule: bool },
    /// Property Set CC.EN.
    Enable,
    /// Property Get CSTS.
    GetCsts,
    /// Identify with a CNS.
    Identify { cns: u8, nsid: u32 },
    /// Read.
    Read { slba: u64, nlb: u32 },
    /// Write with its data in the capsule.
    WriteInCapsule { slba: u64, nlb: u32 },
    /// Write whose data waits for an R2T (the host never answers it here).
    WriteR2t { slba: u64, nlb: u32 },
    /// H2CData, matching nothing in particular.
    H2C { cccid: u16, ttag: u16, datao: u32, datal: u32 },
    /// Asynchronous Event Request.
    Aer,
    /// Any command, with random fields and an optional in-capsule payload.
    Random { opcode: u8, nsid: u32, cdw10: u32, cdw12: u32, sgl_len: u32, icd: u16 },
    /// H2CTermReq.
    TermReq,
    /// Random bytes.
    Raw(Vec<u8>),
}

/// How a step's bytes are damaged.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte.
    Flip { at: usize, xor: u8 },
    /// Keep only the first bytes.
    Truncate(usize),
    /// Set PLEN.
    Plen(u32),
    /// Set the PDU type.
    Type(u8),
    /// Set HLEN.
    Hlen(u8),
    /// Set PDO.
    Pdo(u8),
    /// Set the flags.
    Flags(u8),
}

#[derive(Clone, Debug)]
struct Case {
    /// Send ICReq first.
    icreq: bool,
    digests: Digests,
    steps: Vec<(Step, Option<Mutation>)>,
}

fn step() -> impl Strategy<Value = Step> {
    let slba = prop_oneof![0u64..20_000, Just(u64::MAX), (DEMO_SIZE / 4096 - 4)..(DEMO_SIZE / 4096 + 4)];
    prop_oneof![
        1 => Just(Step::ICReq),
        3 => (0u16..3, 0u16..4, any::<bool>()).prop_map(|(qid, cntlid, in_capsule)| Step::Connect { qid, cntlid, in_capsule }),
        2 => Just(Step::Enable),
        1 => Just(Step::GetCsts),
        1 => (0u8..5, 0u32..3).prop_map(|(cns, nsid)| Step::Identify { cns, nsid }),
        3 => (slba.clone(), 1..=NLB_MAX).prop_map(|(slba, nlb)| Step::Read { slba, nlb }),
        3 => (slba.clone(), 1u32..=2).prop_map(|(slba, nlb)| Step::WriteInCapsule { slba, nlb }),
        2 => (slba, 1..=NLB_MAX).prop_map(|(slba, nlb)| Step::WriteR2t { slba, nlb }),
        2 => (0u16..8, 0u16..48, prop_oneof![Just(0u32), 0u32..300_000], 0u32..9000)
            .prop_map(|(cccid, ttag, datao, datal)| Step::H2C { cccid, ttag, datao, datal }),
        1 => Just(Step::Aer),
        3 => (any::<u8>(), prop_oneof![Just(1u32), any::<u32>()], any::<u32>(), any::<u32>(), prop_oneof![Just(0u32), 0u32..70_000, any::<u32>()], prop_oneof![Just(0u16), 1u16..9000])
            .prop_map(|(opcode, nsid, cdw10, cdw12, sgl_len, icd)| Step::Random { opcode, nsid, cdw10, cdw12, sgl_len, icd }),
        1 => Just(Step::TermReq),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Step::Raw),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(Mutation::Truncate),
        prop_oneof![0u32..200, any::<u32>()].prop_map(Mutation::Plen),
        any::<u8>().prop_map(Mutation::Type),
        any::<u8>().prop_map(Mutation::Hlen),
        any::<u8>().prop_map(Mutation::Pdo),
        any::<u8>().prop_map(Mutation::Flags),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let steps = proptest::collection::vec((step(), proptest::option::weighted(0.25, mutation())), 0..12);
    (prop_oneof![9 => Just(true), 1 => Just(false)], any::<(bool, bool)>(), steps)
        .prop_map(|(icreq, (header, data), steps)| Case { icreq, digests: Digests { header, data }, steps })
}

/// A CapsuleCmd with in-capsule data `icd` (SGL set to match unless `keep_sgl`).
fn capsule(mut cmd: Command, icd: &[u8], d: Digests, keep_sgl: bool) -> Vec<u8> {
    if !keep_sgl {
        cmd.set_sgl(if icd.is_empty() { Sgl::transport(0) } else { Sgl::in_capsule(icd.len() as u32) });
    }
    let mut v = encode_capsule_cmd(&cmd, icd.len(), d).as_bytes().to_vec();
    v.extend_from_slice(icd);
    if d.data && !icd.is_empty() {
        v.extend_from_slice(&crc32c(icd).to_le_bytes());
    }
    v
}

fn rw(op: u8, cid: u16, slba: u64, nlb: u32) -> Command {
    let mut c = Command { opcode: op, cid, nsid: 1, cdw12: nlb - 1, ..Default::default() };
    c.set_slba(slba);
    c
}

fn encode(step: &Step, cid: u16, d: Digests) -> Vec<u8> {
    match step {
        Step::ICReq => encode_icreq(&ICReq { pfv: 0, hpda: 0, digests: d, maxr2t: 0 }).as_bytes().to_vec(),
        Step::Connect { qid, cntlid, in_capsule } => {
            let cmd = ConnectCmd { recfmt: 0, qid: *qid, sqsize: 15, cattr: 0, kato_ms: 0 }.to_command(cid);
            let cntlid = if *qid == 0 { CNTLID_DYNAMIC } else { *cntlid };
            let data = ConnectData { hostid: HOSTID, cntlid, subnqn: nqn("demo"), hostnqn: HOSTNQN.into() };
            if *in_capsule {
                capsule(cmd, &data.to_bytes(), d, false)
            } else {
                let mut cmd = cmd;
                cmd.set_sgl(Sgl::transport(1024));
                capsule(cmd, &[], d, true)
            }
        }
        Step::Enable => {
            let cmd = Command {
                opcode: opcode::FABRICS,
                cid,
                nsid: u32::from(opcode::FCTYPE_PROPERTY_SET),
                cdw11: PROP_CC,
                cdw12: CC_EN | (6 << 16) | (4 << 20),
                ..Default::default()
            };
            capsule(cmd, &[], d, false)
        }
        Step::GetCsts => {
            let cmd = Command {
                opcode: opcode::FABRICS,
                cid,
                nsid: u32::from(opcode::FCTYPE_PROPERTY_GET),
                cdw11: PROP_CSTS,
                ..Default::default()
            };
            capsule(cmd, &[], d, false)
        }
        Step::Identify { cns, nsid } => {
            let mut cmd = Command {
                opcode: opcode::ADMIN_IDENTIFY,
                cid,
                nsid: *nsid,
                cdw10: u32::from(*cns),
                ..Default::default()
            };
            cmd.set_sgl(Sgl::transport(4096));
            capsule(cmd, &[], d, true)
        }
        Step::Read { slba, nlb } => {
            let mut cmd = rw(opcode::NVM_READ, cid, *slba, *nlb);
            cmd.set_sgl(Sgl::transport(nlb * 4096));
            capsule(cmd, &[], d, true)
        }
        Step::WriteInCapsule { slba, nlb } => {
            capsule(rw(opcode::NVM_WRITE, cid, *slba, *nlb), &pattern(cid.into(), *nlb as usize * 4096), d, false)
        }
        Step::WriteR2t { slba, nlb } => {
            let mut cmd = rw(opcode::NVM_WRITE, cid, *slba, *nlb);
            cmd.set_sgl(Sgl::transport(nlb * 4096));
            capsule(cmd, &[], d, true)
        }
        Step::H2C { cccid, ttag, datao, datal } => {
            let hdr =
                DataHeader { cccid: *cccid, ttag: *ttag, datao: *datao, datal: *datal, last: true, success: false };
            let data = pattern(u32::from(*ttag), *datal as usize);
            let mut v = encode_h2c_data(&hdr, d).as_bytes().to_vec();
            v.extend_from_slice(&data);
            if d.data && !data.is_empty() {
                v.extend_from_slice(&crc32c(&data).to_le_bytes());
            }
            v
        }
        Step::Aer => {
            capsule(Command { opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST, cid, ..Default::default() }, &[], d, false)
        }
        Step::Random { opcode, nsid, cdw10, cdw12, sgl_len, icd } => {
            let mut cmd =
                Command { opcode: *opcode, cid, nsid: *nsid, cdw10: *cdw10, cdw12: *cdw12, ..Default::default() };
            let icd = pattern(u32::from(cid), usize::from(*icd));
            cmd.set_sgl(if *sgl_len % 2 == 0 { Sgl::transport(*sgl_len) } else { Sgl::in_capsule(*sgl_len) });
            capsule(cmd, &icd, d, true)
        }
        Step::TermReq => {
            let mut v = encode_term_req(Role::Host, Fes::InvalidHeaderField, 0, 8).as_bytes().to_vec();
            v.extend_from_slice(&[0; 8]);
            v
        }
        Step::Raw(b) => b.clone(),
    }
}

fn mutate(b: &mut Vec<u8>, m: &Mutation) {
    match *m {
        Mutation::Flip { at, xor } if !b.is_empty() => {
            let i = at % b.len();
            b[i] ^= xor;
        }
        Mutation::Truncate(n) if !b.is_empty() => b.truncate(n % b.len()),
        Mutation::Plen(p) if b.len() >= 8 => put_u32(b, 4, p),
        Mutation::Type(t) if !b.is_empty() => b[0] = t,
        Mutation::Hlen(h) if b.len() >= 3 => b[2] = h,
        Mutation::Pdo(p) if b.len() >= 4 => b[3] = p,
        Mutation::Flags(f) if b.len() >= 2 => b[1] = f,
        _ => {}
    }
}

/// The whole byte stream of a case.
fn stream(c: &Case) -> Vec<u8> {
    let mut out = Vec::new();
    if c.icreq {
        out.extend(encode(&Step::ICReq, 0, c.digests));
    }
    for (i, (s, m)) in c.steps.iter().enumerate() {
        let mut b = encode(s, i as u16 + 1, c.digests);
        if let Some(m) = m {
            mutate(&mut b, m);
        }
        out.extend(b);
    }
    out
}

/// Sends the case, closes the sending side and reads until the target closes.
fn run(t: &TestTarget, c: &Case) {
    let mut conn = Conn::open(t.io_addr);
    let bytes = stream(c);
    // The target may close early (a fatal error): later writes then fail, which is fine.
    let _ = conn.send_raw(&bytes);
    let _ = conn.sock.shutdown(Shutdown::Write);
    let start = std::time::Instant::now();
    conn.expect_closed();
    if std::env::var("FUZZ_SLOW").is_ok() && start.elapsed() > std::time::Duration::from_millis(300) {
        eprintln!("SLOW {:?}: {c:?}", start.elapsed());
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// `cases` cases from a fixed seed, so that CI runs the same cases every time;
/// `PROPTEST_RNG_SEED` picks another seed (for longer campaigns).
fn config(cases: u32) -> PtConfig {
    let mut c = PtConfig { cases, failure_persistence: None, ..PtConfig::default() };
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(0x0005_eed0_fa11);
    }
    c
}

#[test]
fn random_pdu_sequences_leave_the_target_serving() {
    let t = TestTarget::start();
    let witness = RefCell::new(Witness::new(&t));
    let mut runner = TestRunner::new(config(cases()));
    let result = runner.run(&case(), |c| {
        run(&t, &c);
        witness.borrow_mut().check(&t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The same sequences, valid PDUs only, with digests.
    let mut runner = TestRunner::new(config(cases() / 4 + 1));
    let valid = proptest::collection::vec(step(), 1..16).prop_map(|steps| Case {
        icreq: true,
        digests: Digests { header: true, data: true },
        steps: steps.into_iter().filter(|s| !matches!(s, Step::Raw(_) | Step::ICReq)).map(|s| (s, None)).collect(),
    });
    let result = runner.run(&valid, |c| {
        run(&t, &c);
        witness.borrow_mut().check(&t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Known sequences the fuzzer found (or that are worth keeping), replayed every run.
#[test]
fn regressions() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let d = Digests::default();
    let regressions = [
        // In-capsule data beyond IOCCSZ after a connect: used to leave a request slot in
        // `New` and panic the reactor at teardown.
        Case {
            icreq: true,
            digests: d,
            steps: vec![
                (Step::Connect { qid: 0, cntlid: 0, in_capsule: true }, None),
                (Step::Random { opcode: 1, nsid: 1, cdw10: 0, cdw12: 3, sgl_len: 9001, icd: 9001 }, None),
            ],
        },
        // H2CData for a free slot, and a zero-length H2CData.
        Case { icreq: true, digests: d, steps: vec![(Step::H2C { cccid: 1, ttag: 3, datao: 0, datal: 0 }, None)] },
        // A write waiting for data, then an H2CData of 0 bytes at its start.
        Case {
            icreq: true,
            digests: d,
            steps: vec![
                (Step::Connect { qid: 0, cntlid: 0, in_capsule: true }, None),
                (Step::Enable, None),
                (Step::WriteR2t { slba: 0, nlb: 4 }, None),
                (Step::H2C { cccid: 3, ttag: 36, datao: 0, datal: 0 }, None),
            ],
        },
    ];
    for c in &regressions {
        run(&t, c);
        w.check(&t);
    }
}
