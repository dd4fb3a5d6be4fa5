//! Bad input from a host: each case gets the right NVMe status, or the right
//! C2HTermReq (FES and FEI, with the offending header echoed) followed by the target
//! closing that connection — and nothing else is affected. After every case a
//! [`Witness`] host that was connected before it shows that every connection of the
//! case is gone, that it can still write and read back, and that the target still
//! accepts new hosts.
// Test constants and sizes are small: a truncating cast would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use common::*;
use quire_wire::nvme::cmd::Sgl;
use quire_wire::nvme::fabrics::{ConnectCmd, ConnectData, CC_EN, CNTLID_DYNAMIC, PROP_CC};
use quire_wire::nvme::identify as ident;
use quire_wire::nvme::{opcode, Command, Status};
use quire_wire::tcp::{
    encode_c2h_data, encode_capsule_resp, encode_icreq, encode_icresp, encode_r2t, DataHeader, Digests, Fes, ICReq,
    ICResp, Pdu, R2t,
};
use quire_wire::{put_u32, put_u64};

const NONE: Digests = Digests { header: false, data: false };
const BOTH: Digests = Digests { header: true, data: true };
const INVALID_HEADER: u16 = Fes::InvalidHeaderField as u16;
const SEQUENCE: u16 = Fes::PduSequenceError as u16;
const HEADER_DIGEST: u16 = Fes::HeaderDigestError as u16;
const OUT_OF_RANGE: u16 = Fes::DataTransferOutOfRange as u16;
const LIMIT: u16 = Fes::DataTransferLimitExceeded as u16;
/// Transient Transport Error: what a data digest error completes a command with.
const TRANSIENT_TRANSPORT_ERROR: Status = Status { sct: 0, sc: 0x22, dnr: false, more: false };

fn icreq_bytes(d: Digests) -> Vec<u8> {
    encode_icreq(&ICReq { pfv: 0, hpda: 0, digests: d, maxr2t: 0 }).as_bytes().to_vec()
}

/// A capsule for a no-data command.
fn plain_capsule(c: &Conn, op: u8) -> Vec<u8> {
    let mut cmd = Command { opcode: op, cid: 7, nsid: 1, ..Default::default() };
    cmd.set_sgl(Sgl::transport(0));
    c.capsule_bytes(&cmd, &[])
}

/// Sends `bytes` on a fresh initialized connection and expects a termination request
/// with `fes`/`fei` that echoes the start of `bytes`.
fn expect_fatal(t: &TestTarget, d: Digests, bytes: impl FnOnce(&Conn) -> Vec<u8>, fes: u16, fei: u32) {
    let mut c = Conn::init(t.io_addr, d);
    let b = bytes(&c);
    let _ = c.send_raw(&b);
    let term = c.expect_term_data();
    assert_eq!((term.fes, term.fei), (fes, fei), "termination for {:02x?}", &b[..b.len().min(24)]);
    let n = term.data.len().min(b.len());
    assert!(n >= 8, "the offending header is echoed");
    assert_eq!(term.data[..n], b[..n], "the echoed header is the one sent");
}

#[test]
fn wrong_pdu_types_and_sequence() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    // Unknown PDU type.
    expect_fatal(
        &t,
        NONE,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            b[0] = 0x0f;
            b
        },
        INVALID_HEADER,
        0,
    );
    w.check(&t);
    // PDU types only a controller sends.
    let r2t = |_: &Conn| encode_r2t(&R2t { cccid: 1, ttag: 0, r2to: 0, r2tl: 4096 }, NONE).as_bytes().to_vec();
    expect_fatal(&t, NONE, r2t, INVALID_HEADER, 0);
    let c2h = |_: &Conn| {
        let h = DataHeader { cccid: 1, ttag: 0, datao: 0, datal: 8, last: true, success: false };
        let mut b = encode_c2h_data(&h, NONE).as_bytes().to_vec();
        b.extend_from_slice(&[0; 8]);
        b
    };
    expect_fatal(&t, NONE, c2h, INVALID_HEADER, 0);
    let resp = |_: &Conn| encode_capsule_resp(&Default::default(), NONE).as_bytes().to_vec();
    expect_fatal(&t, NONE, resp, INVALID_HEADER, 0);
    w.check(&t);
    // ICResp instead of ICReq, before initialization.
    let mut c = Conn::open(t.io_addr);
    let resp = ICResp { pfv: 0, cpda: 0, digests: NONE, maxh2cdata: 4096 };
    c.send_raw(encode_icresp(&resp).as_bytes()).expect("send");
    assert_eq!(c.expect_term(), (INVALID_HEADER, 0));
    // A CapsuleCmd before ICReq.
    let mut c = Conn::open(t.io_addr);
    let b = plain_capsule(&c, opcode::NVM_FLUSH);
    c.send_raw(&b).expect("send");
    assert_eq!(c.expect_term(), (SEQUENCE, 0));
    // A second ICReq.
    expect_fatal(&t, NONE, |_| icreq_bytes(NONE), SEQUENCE, 0);
    // ICReq with an unsupported PDU format version / a bad HPDA.
    let mut c = Conn::open(t.io_addr);
    let mut b = icreq_bytes(NONE);
    b[8] = 1;
    c.send_raw(&b).expect("send");
    assert_eq!(c.expect_term(), (Fes::UnsupportedParameter as u16, 8));
    let mut c = Conn::open(t.io_addr);
    let mut b = icreq_bytes(NONE);
    b[10] = 32;
    c.send_raw(&b).expect("send");
    assert_eq!(c.expect_term(), (INVALID_HEADER, 10));
    w.check(&t);
}

#[test]
fn bad_lengths_offsets_and_header_digest() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    // HLEN wrong.
    expect_fatal(
        &t,
        NONE,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            b[2] = 64;
            b
        },
        INVALID_HEADER,
        2,
    );
    // PLEN smaller than HLEN.
    expect_fatal(
        &t,
        NONE,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            put_u32(&mut b, 4, 40);
            b
        },
        INVALID_HEADER,
        4,
    );
    // PLEN absurdly large.
    expect_fatal(
        &t,
        NONE,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            put_u32(&mut b, 4, 0xffff_fff0);
            b
        },
        INVALID_HEADER,
        4,
    );
    w.check(&t);
    // PDO inside the header (a capsule with in-capsule data).
    expect_fatal(
        &t,
        NONE,
        |c| {
            let mut cmd = c.rw_cmd(opcode::NVM_WRITE, 0, 1);
            cmd.cid = 3;
            cmd.set_sgl(Sgl::in_capsule(4096));
            let mut b = c.capsule_bytes(&cmd, &[0u8; 4096]);
            b[3] = 16;
            b
        },
        INVALID_HEADER,
        3,
    );
    // The header digest flag without negotiated digests.
    expect_fatal(
        &t,
        NONE,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            b[1] |= 0x01;
            b
        },
        INVALID_HEADER,
        1,
    );
    // A wrong header digest (digests on).
    expect_fatal(
        &t,
        BOTH,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            b[72] ^= 0x5a;
            b
        },
        HEADER_DIGEST,
        0,
    );
    // A header digest that is right for a different header.
    expect_fatal(
        &t,
        BOTH,
        |c| {
            let mut b = plain_capsule(c, opcode::NVM_FLUSH);
            b[40] ^= 1;
            b
        },
        HEADER_DIGEST,
        0,
    );
    w.check(&t);
}

#[test]
fn data_digest_errors_fail_the_command_and_keep_the_connection() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect_with(t.io_addr, "demo", HOSTNQN, BOTH, 1);
    let io = h.io();
    io.round_trip(64, &pattern(1, 4096));
    io.round_trip(128, &pattern(2, 128 << 10));
    // In-capsule data with a wrong data digest.
    let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 64, 1);
    cmd.cid = io.cid();
    cmd.set_sgl(Sgl::in_capsule(4096));
    let mut b = io.capsule_bytes(&cmd, &pattern(9, 4096));
    let last = b.len() - 1;
    b[last] ^= 0xff;
    io.send_raw(&b).expect("send");
    let rx = io.recv().expect("response");
    let Pdu::CapsuleResp(cpl) = rx.pdu else { panic!("expected a response, got {:?}", rx.pdu) };
    assert_eq!(cpl.cid, cmd.cid);
    assert_eq!(cpl.status(), TRANSIENT_TRANSPORT_ERROR);
    // H2CData with a wrong data digest (the second of two PDUs).
    let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 128, 32);
    cmd.cid = io.cid();
    cmd.set_sgl(Sgl::transport(128 << 10));
    let b = io.capsule_bytes(&cmd, &[]);
    io.send_raw(&b).expect("send");
    let rx = io.recv().expect("R2T");
    let Pdu::R2T(r2t) = rx.pdu else { panic!("expected R2T, got {:?}", rx.pdu) };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (cmd.cid, 0, 128 << 10));
    let data = pattern(10, 128 << 10);
    let half = 64 << 10;
    for (i, chunk) in data.chunks(half).enumerate() {
        let hdr = DataHeader {
            cccid: cmd.cid,
            ttag: r2t.ttag,
            datao: (i * half) as u32,
            datal: half as u32,
            last: i == 1,
            success: false,
        };
        let mut b = io.h2c_bytes(&hdr, chunk);
        if i == 1 {
            let last = b.len() - 1;
            b[last] ^= 0x01;
        }
        io.send_raw(&b).expect("send");
    }
    let rx = io.recv().expect("response");
    let Pdu::CapsuleResp(cpl) = rx.pdu else { panic!("expected a response, got {:?}", rx.pdu) };
    assert_eq!(cpl.status(), TRANSIENT_TRANSPORT_ERROR);
    // Nothing was written, and the connection still works.
    assert!(io.read(64, 1).ok().data == pattern(1, 4096));
    assert!(io.read(128, 32).ok().data == pattern(2, 128 << 10));
    io.round_trip(300, &pattern(11, 256 << 10));
    drop(h);
    w.check(&t);
}

#[test]
fn truncated_pdus_then_close_free_everything() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let stats_before = t.rpc("stats_volumes", serde_json::json!({}));
    // Half a common header; half an ICReq.
    for cut in [3usize, 60] {
        let mut c = Conn::open(t.io_addr);
        c.send_raw(&icreq_bytes(NONE)[..cut]).expect("send");
        drop(c);
        w.check(&t);
    }
    // Half a capsule header; a capsule with half its in-capsule data.
    for cut in [40usize, 72 + 2000] {
        let mut h = Host::connect(t.io_addr, "demo");
        let io = h.io();
        let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 0, 2);
        cmd.cid = 99;
        cmd.set_sgl(Sgl::in_capsule(8192));
        let b = io.capsule_bytes(&cmd, &pattern(3, 8192));
        io.send_raw(&b[..cut]).expect("send");
        drop(h);
        w.check(&t);
    }
    // A write waiting for its H2CData (holding buffers), then half an H2CData PDU.
    for cut in [0usize, 24 + 1000] {
        let mut h = Host::connect(t.io_addr, "demo");
        let io = h.io();
        let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 0, 256);
        cmd.cid = 5;
        cmd.set_sgl(Sgl::transport(1 << 20));
        let b = io.capsule_bytes(&cmd, &[]);
        io.send_raw(&b).expect("send");
        let Pdu::R2T(r) = io.recv().expect("R2T").pdu else { panic!("expected R2T") };
        let hdr = DataHeader { cccid: 5, ttag: r.ttag, datao: 0, datal: 65536, last: false, success: false };
        let b = io.h2c_bytes(&hdr, &pattern(4, 65536));
        io.send_raw(&b[..cut]).expect("send");
        drop(h);
        w.check(&t);
    }
    // Many writes holding buffers at once, then close: the pool must come back whole
    // (the witness' 256K round trips need buffers on whichever reactor it is on).
    for _ in 0..3 {
        let mut h = Host::connect(t.io_addr, "demo");
        let io = h.io();
        for cid in 1..=24u16 {
            let mut cmd = io.rw_cmd(opcode::NVM_WRITE, u64::from(cid) * 256, 256);
            cmd.cid = cid;
            cmd.set_sgl(Sgl::transport(1 << 20));
            let b = io.capsule_bytes(&cmd, &[]);
            io.send_raw(&b).expect("send");
        }
        drop(h);
        w.check(&t);
    }
    // None of the cut-off writes reached the volume.
    let stats_after = t.rpc("stats_volumes", serde_json::json!({}));
    let demo = |v: &serde_json::Value| v.as_array().unwrap().iter().find(|e| e["name"] == "demo").unwrap().clone();
    let (b, a) = (demo(&stats_before), demo(&stats_after));
    let witness_writes = 2 * 9; // two round trips per witness check
    assert_eq!(a["write_ops"].as_u64().unwrap(), b["write_ops"].as_u64().unwrap() + witness_writes);
}

/// A connected I/O queue with a 256K write waiting for data; returns the R2T.
fn pending_write(t: &TestTarget) -> (Host, R2t) {
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 0, 64);
    cmd.cid = 0x42;
    cmd.set_sgl(Sgl::transport(256 << 10));
    let b = io.capsule_bytes(&cmd, &[]);
    io.send_raw(&b).expect("send");
    let rx = io.recv().expect("R2T");
    let Pdu::R2T(r) = rx.pdu else { panic!("expected R2T, got {:?}", rx.pdu) };
    assert_eq!((r.cccid, r.r2to, r.r2tl), (0x42, 0, 256 << 10));
    (h, r)
}

fn bad_h2c(t: &TestTarget, edit: impl FnOnce(&R2t) -> DataHeader, fes: u16, fei: u32) {
    let (mut h, r) = pending_write(t);
    let hdr = edit(&r);
    let io = h.io();
    let b = io.h2c_bytes(&hdr, &pattern(1, hdr.datal as usize));
    let _ = io.send_raw(&b);
    let term = io.expect_term_data();
    assert_eq!((term.fes, term.fei), (fes, fei), "H2CData {hdr:?}");
    assert_eq!(term.data[..24], b[..24]);
}

#[test]
fn bad_h2c_data() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let good =
        |r: &R2t| DataHeader { cccid: r.cccid, ttag: r.ttag, datao: 0, datal: 4096, last: false, success: false };
    // A transfer tag beyond every slot, and one naming a free slot.
    bad_h2c(&t, |r| DataHeader { ttag: 0xfff0, ..good(r) }, INVALID_HEADER, 10);
    bad_h2c(&t, |r| DataHeader { ttag: r.ttag.wrapping_add(1), ..good(r) }, INVALID_HEADER, 10);
    w.check(&t);
    // The right tag with another command's identifier.
    bad_h2c(&t, |r| DataHeader { cccid: r.cccid + 1, ..good(r) }, INVALID_HEADER, 8);
    // Data out of order, beyond the transfer, above MAXH2CDATA.
    bad_h2c(&t, |r| DataHeader { datao: 4096, ..good(r) }, OUT_OF_RANGE, 12);
    bad_h2c(&t, |r| DataHeader { datal: (256 << 10) + 4096, ..good(r) }, LIMIT, 16);
    bad_h2c(&t, |r| DataHeader { datal: MAXH2CDATA + 4096, ..good(r) }, LIMIT, 16);
    w.check(&t);
    // Beyond the transfer within MAXH2CDATA: a 4K piece, then 64K pieces; the last
    // one runs 4K past the end.
    let (mut h, r) = pending_write(&t);
    let io = h.io();
    let mut off = 0u32;
    while off < 256 << 10 {
        let len = if off == 0 { 4096 } else { MAXH2CDATA };
        let hdr = DataHeader { datao: off, datal: len, ..good(&r) };
        let b = io.h2c_bytes(&hdr, &pattern(2, len as usize));
        let _ = io.send_raw(&b);
        off += len;
    }
    assert_eq!(io.expect_term(), (OUT_OF_RANGE, 16));
    drop(h);
    // H2CData with no write waiting at all.
    expect_fatal(
        &t,
        NONE,
        |c| {
            let hdr = DataHeader { cccid: 1, ttag: 0, datao: 0, datal: 512, last: true, success: false };
            c.h2c_bytes(&hdr, &[0; 512])
        },
        INVALID_HEADER,
        10,
    );
    w.check(&t);
}

#[test]
fn in_capsule_data_beyond_ioccsz() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 0, 4);
    cmd.cid = 9;
    cmd.set_sgl(Sgl::in_capsule(16384));
    let b = io.capsule_bytes(&cmd, &pattern(1, 16384));
    let _ = io.send_raw(&b);
    let term = io.expect_term_data();
    assert_eq!((term.fes, term.fei), (LIMIT, 4), "in-capsule data beyond IOCCSZ");
    assert_eq!(term.data[..72], b[..72]);
    drop(h);
    w.check(&t);
    // An SGL that does not describe the in-capsule data: a status, not a fatal error.
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let mut cmd = io.rw_cmd(opcode::NVM_WRITE, 0, 1);
    cmd.cid = 10;
    cmd.set_sgl(Sgl::in_capsule(2048));
    let b = io.capsule_bytes(&cmd, &pattern(1, 4096));
    io.send_raw(&b).expect("send");
    let Pdu::CapsuleResp(c) = io.recv().expect("response").pdu else { panic!("expected a response") };
    assert_eq!(c.status(), Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    cmd.cid = 11;
    cmd.set_sgl(Sgl::transport(4096));
    let b = io.capsule_bytes(&cmd, &pattern(1, 4096));
    io.send_raw(&b).expect("send");
    let Pdu::CapsuleResp(c) = io.recv().expect("response").pdu else { panic!("expected a response") };
    assert_eq!(c.status(), Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
    io.round_trip(0, &pattern(2, 4096));
    drop(h);
    w.check(&t);
}

#[test]
fn in_capsule_data_on_commands_that_read_or_carry_none() {
    // In-capsule data becomes a request's buffer where it landed, read-only: a command
    // that would write into it (a Read, an Identify) is refused with a status, and the
    // connection goes on.
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    h.io().write(0, &pattern(3, 4096)).ok();
    let io = h.io();
    let mut cmd = io.rw_cmd(opcode::NVM_READ, 0, 1);
    cmd.cid = 20;
    cmd.set_sgl(Sgl::in_capsule(4096));
    io.send_raw(&io.capsule_bytes(&cmd, &pattern(1, 4096))).expect("send");
    let Pdu::CapsuleResp(c) = io.recv().expect("response").pdu else { panic!("expected a response") };
    assert_eq!(c.status(), Status::INVALID_FIELD.with_dnr());
    let mut id = Command { opcode: opcode::ADMIN_IDENTIFY, cid: 21, nsid: 0, cdw10: 1, ..Default::default() };
    id.set_sgl(Sgl::in_capsule(4096));
    let admin = &mut h.admin;
    admin.send_raw(&admin.capsule_bytes(&id, &pattern(2, 4096))).expect("send");
    let Pdu::CapsuleResp(c) = admin.recv().expect("response").pdu else { panic!("expected a response") };
    assert_eq!(c.status(), Status::INVALID_FIELD.with_dnr());
    assert_eq!(h.io().read(0, 1).ok().data, pattern(3, 4096), "the data the Read carried was not written");
    drop(h);
    w.check(&t);
}

#[test]
fn transfer_limits_and_lba_ranges() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let nsze = DEMO_SIZE / 4096;
    // More than MDTS: Invalid Field, before any data moves.
    let cmd = io.rw_cmd(opcode::NVM_READ, 0, 512);
    assert_eq!(io.exec(cmd, None, 2 << 20).status(), Status::INVALID_FIELD.with_dnr());
    let cmd = io.rw_cmd(opcode::NVM_WRITE, 0, 512);
    let cid = io.submit(cmd, Some(vec![0; 2 << 20]), 0);
    let rx = io.recv().expect("response");
    let Pdu::CapsuleResp(c) = rx.pdu else { panic!("no R2T for a write beyond MDTS, got {:?}", rx.pdu) };
    assert_eq!((c.cid, c.status()), (cid, Status::INVALID_FIELD.with_dnr()));
    // The SGL and NLB disagree.
    let cmd = io.rw_cmd(opcode::NVM_READ, 0, 2);
    assert_eq!(io.exec(cmd, None, 4096).status(), Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    // LBA out of range: past the end, straddling the end, wrapping u64.
    let lba_oor = Status::LBA_OUT_OF_RANGE.with_dnr();
    assert_eq!(io.read(nsze, 1).status(), lba_oor);
    assert_eq!(io.read(nsze - 1, 2).status(), lba_oor);
    assert_eq!(io.read(u64::MAX, 2).status(), lba_oor);
    assert_eq!(io.read(u64::MAX - 1, 8).status(), lba_oor);
    assert_eq!(io.write(nsze - 1, &pattern(1, 8192)).status(), lba_oor);
    assert_eq!(io.write(u64::MAX, &pattern(1, 128 << 10)).status(), lba_oor);
    let mut wz = io.rw_cmd(opcode::NVM_WRITE_ZEROES, u64::MAX - 3, 8);
    wz.cdw12 |= 1 << 25;
    assert_eq!(io.exec(wz, None, 0).status(), lba_oor);
    let mut range = [0u8; 16];
    put_u32(&mut range, 4, 16);
    put_u64(&mut range, 8, u64::MAX - 7);
    let dsm = Command { opcode: opcode::NVM_DATASET_MANAGEMENT, nsid: 1, cdw11: 1 << 2, ..Default::default() };
    assert_eq!(io.exec(dsm, Some(range.to_vec()), 0).status(), lba_oor);
    assert_eq!(t.allocated_pages("demo"), 0, "nothing was allocated by failed commands");
    // The last block works.
    io.round_trip(nsze - 1, &pattern(2, 4096));
    drop(h);
    w.check(&t);
}

#[test]
fn unknown_opcodes_and_commands_out_of_sequence() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    // Unknown admin, I/O and Fabrics opcodes.
    for op in [0x7e, 0xc1, 0x03] {
        let c = Command { opcode: op, ..Default::default() };
        assert_eq!(h.admin.exec(c, None, 0).status(), Status::INVALID_OPCODE.with_dnr(), "admin {op:#x}");
    }
    for op in [0x7e, 0x03, 0x0c, 0x80] {
        let c = Command { opcode: op, nsid: 1, ..Default::default() };
        assert_eq!(h.io().exec(c, None, 0).status(), Status::INVALID_OPCODE.with_dnr(), "I/O {op:#x}");
    }
    let f = Command { opcode: opcode::FABRICS, nsid: 0x7f, ..Default::default() };
    assert_eq!(h.admin.exec(f, None, 0).status(), Status::INVALID_OPCODE.with_dnr());
    // I/O to a namespace that does not exist.
    let mut c = h.io().rw_cmd(opcode::NVM_READ, 0, 1);
    c.nsid = 2;
    assert_eq!(h.io().exec(c, None, 4096).status(), Status::INVALID_NAMESPACE.with_dnr());
    // A second Connect on a connected queue.
    let cntlid = h.cntlid;
    let c = h.io().connect_raw(1, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid, 0);
    assert_eq!(c.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    // Admin, I/O and property commands before Connect.
    let mut c = Conn::init(t.io_addr, NONE);
    assert_eq!(c.identify_raw(ident::CNS_CONTROLLER, 0).status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    assert_eq!(c.read(0, 1).status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    assert_eq!(c.prop_get(PROP_CC, false), Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()));
    let ka = Command { opcode: opcode::ADMIN_KEEP_ALIVE, ..Default::default() };
    assert_eq!(c.exec(ka, None, 0).status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    // ... and the same connection can still connect afterwards.
    c.connect_admin(&nqn("small"), HOSTNQN, 0);
    c.enable();
    drop(c);
    // An I/O queue before the controller is enabled, and I/O after it is disabled.
    let mut a = Conn::init(t.io_addr, NONE);
    let cntlid = a.connect_admin(&nqn("demo"), HOSTNQN, 0);
    let mut q = Conn::init(t.io_addr, NONE);
    let c = q.connect_raw(1, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid, 0);
    assert_eq!(c.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    a.enable();
    let c = q.connect_raw(1, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid, 0);
    assert!(c.status().is_success());
    q.round_trip(0, &pattern(1, 4096));
    assert!(a.prop_set(PROP_CC, 0).is_success());
    assert_eq!(q.read(0, 1).status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    assert!(a.prop_set(PROP_CC, CC_EN | (6 << 16) | (4 << 20)).is_success());
    assert!(q.read(0, 1).ok().data == pattern(1, 4096));
    // Enabling with the wrong queue entry sizes sets CSTS.CFS.
    let mut b = Conn::init(t.io_addr, NONE);
    b.connect_admin(&nqn("demo"), HOSTNQN, 0);
    assert!(b.prop_set(PROP_CC, CC_EN | (7 << 16) | (4 << 20)).is_success());
    let csts = b.prop_get(quire_wire::nvme::fabrics::PROP_CSTS, false).expect("CSTS") as u32;
    assert_eq!(csts & 0x3, 0x2, "CFS set, RDY clear");
    drop((h, a, q, b));
    w.check(&t);
}

#[test]
fn bad_connects() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let invalid = Status::CONNECT_INVALID_PARAMETERS.with_dnr();
    let data_at = |off: u32| (1 << 16) | off;
    // Unknown subsystem NQN: IATTR = data, IPO = SUBNQN.
    let mut c = Conn::init(t.io_addr, NONE);
    let cpl = c.connect_raw(0, 15, &nqn("nope"), HOSTNQN, HOSTID, CNTLID_DYNAMIC, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, data_at(256)));
    // All-zero host identifier.
    let cpl = c.connect_raw(0, 15, &nqn("demo"), HOSTNQN, [0; 16], CNTLID_DYNAMIC, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, data_at(0)));
    // SQSIZE 0, and above MQES: IATTR = command, IPO = byte 44.
    let cpl = c.connect_raw(0, 0, &nqn("demo"), HOSTNQN, HOSTID, CNTLID_DYNAMIC, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, 44));
    let cpl = c.connect_raw(0, MAX_QUEUE_DEPTH, &nqn("demo"), HOSTNQN, HOSTID, CNTLID_DYNAMIC, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, 44));
    // A static controller ID on an admin queue (the target is dynamic).
    let cpl = c.connect_raw(0, 15, &nqn("demo"), HOSTNQN, HOSTID, 5, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, data_at(16)));
    // Record format other than 0.
    let cmd = ConnectCmd { recfmt: 1, qid: 0, sqsize: 15, cattr: 0, kato_ms: 0 }.to_command(0);
    let data = ConnectData { hostid: HOSTID, cntlid: CNTLID_DYNAMIC, subnqn: nqn("demo"), hostnqn: HOSTNQN.into() };
    let d = c.exec(cmd, Some(data.to_bytes().to_vec()), 0);
    assert_eq!(d.status(), Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
    // Connect data too short.
    let cmd = ConnectCmd { recfmt: 0, qid: 0, sqsize: 15, cattr: 0, kato_ms: 0 }.to_command(0);
    let d = c.exec(cmd, Some(data.to_bytes()[..512].to_vec()), 0);
    assert_eq!(d.status(), Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    // Connect data sent by R2T rather than in the capsule works too.
    c.icd_max = 0;
    c.connect_admin(&nqn("demo"), HOSTNQN, 0);
    c.icd_max = ICD_MAX;
    c.enable();
    let cntlid = c.cntlid;
    // I/O queues: unknown controller, wrong host, wrong subsystem, QID not granted.
    let mut q = Conn::init(t.io_addr, NONE);
    let cpl = q.connect_raw(1, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid.wrapping_add(100), 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, data_at(16)));
    let other = "nqn.2014-08.org.nvmexpress:uuid:0b0e0f00-0000-4000-8000-0000000000bb";
    let cpl = q.connect_raw(1, 15, &nqn("demo"), other, HOSTID, cntlid, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, data_at(512)));
    let cpl = q.connect_raw(1, 15, &nqn("small"), HOSTNQN, HOSTID, cntlid, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, data_at(256)));
    assert!(c.set_feature(quire_wire::nvme::features::FID_NUMBER_OF_QUEUES, 1 | (1 << 16)).status().is_success());
    let cpl = q.connect_raw(3, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, 42), "qid above the granted queues");
    let cpl = q.connect_raw(2, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid, 0);
    assert!(cpl.status().is_success());
    // The same QID twice.
    let mut q2 = Conn::init(t.io_addr, NONE);
    let cpl = q2.connect_raw(2, 15, &nqn("demo"), HOSTNQN, HOSTID, cntlid, 0);
    assert_eq!((cpl.status(), cpl.dw0), (invalid, 42));
    // An I/O queue for a discovery controller.
    let mut d = Conn::init(t.io_addr, NONE);
    let dc = d.connect_admin(quire_wire::nvme::DISCOVERY_NQN, HOSTNQN, 0);
    let mut q3 = Conn::init(t.io_addr, NONE);
    let cpl = q3.connect_raw(1, 15, quire_wire::nvme::DISCOVERY_NQN, HOSTNQN, HOSTID, dc, 0);
    assert_eq!(cpl.status(), invalid);
    drop((c, q, q2, d, q3));
    w.check(&t);
}

#[test]
fn more_outstanding_commands_than_the_queue_holds() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    // Writes that wait for their data hold their slots. The target has request slots
    // for MQES + 1 commands plus the AERs an admin queue may hold; one more is fatal.
    let slots = usize::from(MAX_QUEUE_DEPTH) + 4 + 1;
    let mut bytes = Vec::new();
    for i in 0..=slots {
        let mut cmd = io.rw_cmd(opcode::NVM_WRITE, i as u64, 1);
        cmd.cid = i as u16 + 1;
        cmd.set_sgl(Sgl::transport(4096));
        bytes.extend(io.capsule_bytes(&cmd, &[]));
    }
    let _ = io.send_raw(&bytes);
    assert_eq!(io.expect_term(), (SEQUENCE, 0));
    drop(h);
    w.check(&t);
}

#[test]
fn silent_hosts_do_not_disturb_others() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    // A host that connects and sends nothing; one that stops after ICReq; one that
    // stops after Connect (no keep-alive timeout asked).
    let silent = Conn::open(t.io_addr);
    let after_ic = Conn::init(t.io_addr, NONE);
    let mut after_connect = Conn::init(t.io_addr, NONE);
    after_connect.connect_admin(&nqn("demo"), HOSTNQN, 0);
    t.wait_connections(w.baseline + 3);
    w.baseline += 3;
    w.check(&t);
    w.baseline -= 3;
    drop((silent, after_ic, after_connect));
    w.check(&t);
}

#[test]
fn host_termination_request_closes_only_that_connection() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    let mut b =
        quire_wire::tcp::encode_term_req(quire_wire::tcp::Role::Host, Fes::PduSequenceError, 0, 8).as_bytes().to_vec();
    b.extend_from_slice(&[0xee; 8]);
    h.io().send_raw(&b).expect("send");
    h.io().expect_closed();
    // The controller lives on: its admin queue is still there.
    h.admin.identify(ident::CNS_CONTROLLER, 0);
    drop(h);
    w.check(&t);
}

#[test]
fn in_capsule_write_while_r2t_writes_hold_the_pool() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    // 20 writes of 1M (8 chunks each) need more than a reactor's share of the pool
    // (128 chunks of 128K): 16 get their buffers and an R2T, the rest wait for buffers.
    let mut cids = Vec::new();
    for i in 0..20u64 {
        let cmd = io.rw_cmd(opcode::NVM_WRITE, i * 256, 256);
        cids.push((i, io.submit(cmd, Some(pattern(i as u32, MDTS_BYTES)), 0)));
    }
    // A write with its data in the capsule needs one more buffer. Its data must not
    // block the receive path for good: the H2CData of the writes above comes after it.
    let cmd = io.rw_cmd(opcode::NVM_WRITE, 20 * 256, 1);
    let small = io.submit(cmd, Some(pattern(99, 4096)), 0);
    for &(_, cid) in &cids {
        io.wait(cid).ok();
    }
    let s = io.wait(small).status();
    assert!(s.is_success() || (s == Status { sct: 0, sc: 0x21, dnr: false, more: false }), "{s}");
    // Everything arrived (the in-capsule write again, if it was interrupted).
    io.round_trip(20 * 256, &pattern(99, 4096));
    for (i, _) in cids {
        assert!(io.read(i * 256, 256).ok().data == pattern(i as u32, MDTS_BYTES), "write {i}");
    }
    drop(h);
    w.check(&t);
}

#[test]
fn sockets_that_never_connect_are_dropped_after_the_connect_timeout() {
    let t = TestTarget::start();
    let mut w = Witness::new(&t);
    // One socket that sends nothing, one that stops after ICReq: neither becomes a
    // queue, so the target lets go of both once CONNECT_TIMEOUT (10 s) has passed.
    let silent = Conn::open(t.io_addr);
    let after_ic = Conn::init(t.io_addr, NONE);
    t.wait_connections(w.baseline + 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while t.connections() > w.baseline {
        assert!(std::time::Instant::now() < deadline, "the idle sockets were not dropped within 20 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop((silent, after_ic));
    w.check(&t);
}
