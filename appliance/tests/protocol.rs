//! Positive protocol behaviour of the NVMe/TCP target, end to end over real sockets
//! against an in-process target: initialization, Fabrics, Identify, logs, features,
//! async events, data paths with and without digests, thin provisioning and management
//! changes seen by connected hosts.
// Test constants and sizes are small: a truncating cast would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use common::*;
use quire_wire::nvme::dsm::{write_ranges, DsmCommand, DsmRange};
use quire_wire::nvme::fabrics::{CNTLID_DYNAMIC, CSTS_RDY, PROP_CAP, PROP_CSTS, PROP_VS};
use quire_wire::nvme::features as feat;
use quire_wire::nvme::identify::{self as ident, NsDescriptor};
use quire_wire::nvme::log;
use quire_wire::nvme::{opcode, Command, Status, DISCOVERY_NQN};
use quire_wire::tcp::Digests;
use serde_json::json;

const NONE: Digests = Digests { header: false, data: false };
const BOTH: Digests = Digests { header: true, data: true };

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn icresp_echoes_digests_and_announces_maxh2cdata() {
    let t = TestTarget::start();
    for d in [NONE, Digests { header: true, data: false }, Digests { header: false, data: true }, BOTH] {
        let mut c = Conn::open(t.io_addr);
        let r = c.icreq(d);
        assert_eq!(r.pfv, 0);
        assert_eq!(r.cpda, 0);
        assert_eq!(r.digests, d, "digests echo what the host asked");
        assert_eq!(r.maxh2cdata, MAXH2CDATA);
    }
}

#[test]
fn connect_admin_properties_and_identify_controller() {
    let t = TestTarget::start();
    let mut a = Conn::init(t.io_addr, NONE);
    let cntlid = a.connect_admin(&nqn("demo"), HOSTNQN, 0);
    assert!((1..0xfff0).contains(&cntlid), "a dynamic controller ID: {cntlid}");
    let cap = a.prop_get(PROP_CAP, true).expect("CAP");
    assert_eq!(cap & 0xffff, u64::from(MAX_QUEUE_DEPTH) - 1, "MQES");
    assert_ne!(cap & (1 << 16), 0, "CQR");
    assert_ne!(cap & (1 << 37), 0, "CSS: NVM command set");
    assert_eq!(a.prop_get(PROP_VS, false), Ok(0x0001_0400));
    assert_eq!(a.prop_get(PROP_CSTS, false).expect("CSTS") as u32 & CSTS_RDY, 0, "not ready before CC.EN");
    // Admin commands other than Fabrics wait for CC.EN.
    let d = a.identify_raw(ident::CNS_CONTROLLER, 0);
    assert_eq!(d.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    a.enable();
    let id = ident::parse_controller(&a.identify(ident::CNS_CONTROLLER, 0));
    assert_eq!(id.model, "Quire");
    assert_eq!(id.subnqn, nqn("demo"));
    assert_eq!(id.cntlid, cntlid);
    assert_eq!(id.cntrltype, ident::CNTRLTYPE_IO);
    assert_eq!(ident::mdts_bytes(id.mdts), Some(MDTS_BYTES as u64), "MDTS = max_transfer_size");
    assert_eq!(ident::in_capsule_bytes(id.ioccsz), ICD_MAX as u32, "IOCCSZ = 64 + in_capsule_data_size");
    assert_eq!(id.iorcsz, 1);
    assert_ne!(id.sgls & ident::SGLS_SUPPORTED, 0);
    assert_ne!(id.sgls & ident::SGLS_OFFSET, 0, "in-capsule data offsets");
    assert_ne!(id.sgls & ident::SGLS_TRANSPORT_DATA_BLOCK, 0);
    assert_eq!(id.sqes, ident::SQES_64);
    assert_eq!(id.cqes, ident::CQES_16);
    assert_eq!(id.nn, 1);
    assert_eq!(id.maxcmd, MAX_QUEUE_DEPTH);
    assert_ne!(id.oncs & ident::ONCS_WRITE_ZEROES, 0);
    assert_ne!(id.oncs & ident::ONCS_DSM, 0);
    assert_ne!(id.oaes & ident::OAES_NS_ATTR, 0);
    assert!(!id.serial.is_empty());
}

#[test]
fn identify_namespace_descriptors_and_active_list() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let vol = t.volume("demo");
    let ns = ident::parse_namespace(&h.admin.identify(ident::CNS_NAMESPACE, 1));
    assert_eq!(ns.nsze, DEMO_SIZE / 4096);
    assert_eq!(ns.ncap, ns.nsze);
    assert_eq!(ns.nuse, 0, "nothing written yet");
    assert_eq!(ns.lbaf0.lbads, 12);
    assert_eq!(ns.block_bytes(), 4096);
    assert_ne!(ns.nsfeat & ident::NSFEAT_THIN, 0);
    assert_eq!(hex(&ns.nguid), vol["nguid"].as_str().expect("nguid"));
    let descs = ident::parse_ns_descriptors(&h.admin.identify(ident::CNS_NS_DESCRIPTORS, 1));
    assert!(descs.contains(&NsDescriptor::Nguid(ns.nguid)));
    assert!(descs.contains(&NsDescriptor::Csi(ident::CSI_NVM)));
    let uuid = descs
        .iter()
        .find_map(|d| if let NsDescriptor::Uuid(u) = d { Some(*u) } else { None })
        .expect("a UUID descriptor");
    assert_eq!(hex(&uuid), vol["uuid"].as_str().expect("uuid").replace('-', ""));
    assert_eq!(ident::parse_ns_list(&h.admin.identify(ident::CNS_ACTIVE_NS_LIST, 0)), vec![1]);
    assert!(ident::parse_ns_list(&h.admin.identify(ident::CNS_ACTIVE_NS_LIST, 1)).is_empty());
    // Another volume, another namespace identity.
    let mut s = Host::connect(t.io_addr, "small");
    let ns2 = ident::parse_namespace(&s.admin.identify(ident::CNS_NAMESPACE, 1));
    assert_eq!(ns2.nsze, (16 << 20) / 4096);
    assert_ne!(ns2.nguid, ns.nguid);
    // A namespace that does not exist.
    let d = s.admin.identify_raw(ident::CNS_NAMESPACE, 2);
    assert_eq!(d.status(), Status::INVALID_NAMESPACE.with_dnr());
}

#[test]
fn discovery_controller_lists_every_volume() {
    let t = TestTarget::start();
    let mut d = Conn::init(t.discovery_addr, NONE);
    d.connect_admin(DISCOVERY_NQN, HOSTNQN, 0);
    d.enable();
    let id = ident::parse_controller(&d.identify(ident::CNS_CONTROLLER, 0));
    assert_eq!(id.cntrltype, ident::CNTRLTYPE_DISCOVERY);
    assert_eq!(id.subnqn, DISCOVERY_NQN);
    // Header first (as Linux does), then the whole log.
    let hdr = log::parse_discovery_header(&d.get_log(log::LID_DISCOVERY, 0, 0, 1024).ok().data).expect("header");
    assert!(hdr.numrec >= 2);
    let len = log::discovery_log_len(hdr.numrec as usize) as u32;
    let (hdr2, entries) = log::parse_discovery_log(&d.get_log(log::LID_DISCOVERY, 0, 0, len).ok().data).unwrap();
    assert_eq!(hdr2.genctr, hdr.genctr);
    assert_eq!(entries.len() as u64, hdr.numrec);
    for v in ["demo", "small"] {
        let e = entries.iter().find(|e| e.subnqn == nqn(v)).unwrap_or_else(|| panic!("{v} listed"));
        assert_eq!(e.subtype, log::SUBTYPE_NVME);
        assert_eq!(e.trtype, log::TRTYPE_TCP);
        assert_eq!(e.traddr, "127.0.0.1");
        assert_eq!(e.trsvcid, t.io_addr.port().to_string());
    }
    // Discovery controllers serve no I/O logs.
    assert_eq!(d.get_log(log::LID_SMART, 0xffff_ffff, 0, 512).status(), Status::INVALID_FIELD.with_dnr());
    // A new volume shows up with a new generation.
    t.rpc("volume_create", json!({"name": "third", "size": 4u64 << 20, "page_size": 1u64 << 20}));
    let (hdr3, entries) = log::parse_discovery_log(&d.get_log(log::LID_DISCOVERY, 0, 0, 8192).ok().data).unwrap();
    assert!(hdr3.genctr > hdr.genctr);
    assert!(entries.iter().any(|e| e.subnqn == nqn("third")));
}

#[test]
fn discovery_tells_hosts_the_advertised_address() {
    for (advertise, ip, port) in
        [("192.0.2.7:14420", "192.0.2.7", Some(14420u16)), ("198.51.100.3", "198.51.100.3", None)]
    {
        let t = TestTarget::start_with(|c| c.target.advertise = Some(advertise.into()));
        let mut d = Conn::init(t.discovery_addr, NONE);
        d.connect_admin(DISCOVERY_NQN, HOSTNQN, 0);
        d.enable();
        let (_, entries) = log::parse_discovery_log(&d.get_log(log::LID_DISCOVERY, 0, 0, 8192).ok().data).unwrap();
        let e = entries.iter().find(|e| e.subnqn == nqn("demo")).expect("demo listed");
        assert_eq!(e.traddr, ip);
        assert_eq!(e.trsvcid, port.unwrap_or(t.io_addr.port()).to_string());
    }
}

fn round_trips(digests: Digests) {
    let t = TestTarget::start();
    let mut h = Host::connect_with(t.io_addr, "demo", HOSTNQN, digests, 1);
    let io = h.io();
    io.round_trip(0, &pattern(1, 4096)); // in the capsule
    io.round_trip(10, &pattern(2, 8192)); // in the capsule, the largest
    io.round_trip(300, &pattern(3, 128 << 10)); // R2T, two H2CData PDUs
    io.round_trip(1024, &pattern(4, MDTS_BYTES)); // R2T, 16 H2CData PDUs, page aligned
    io.round_trip(2000, &pattern(5, MDTS_BYTES)); // across a page boundary
                                                  // The data stays where it was written.
    assert!(io.read(0, 1).ok().data == pattern(1, 4096));
    assert!(io.read(300, 32).ok().data == pattern(3, 128 << 10));
}

#[test]
fn write_read_round_trip_without_digests() {
    round_trips(NONE);
}

#[test]
fn write_read_round_trip_with_header_and_data_digests() {
    round_trips(BOTH);
}

#[test]
fn write_read_round_trip_with_header_digest_only() {
    round_trips(Digests { header: true, data: false });
}

#[test]
fn io_across_page_boundaries() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    // 3 pages touched by one write: the tail of page 0, all of page 1, the head of page 2.
    let data = pattern(7, (256 + 10) * 4096);
    let slba = 256 - 5;
    io.round_trip(slba, &data[..MDTS_BYTES]);
    // Read back in pieces that straddle the boundaries differently.
    let a = io.read(250, 8).ok().data;
    assert!(a[..4096] == [0u8; 4096][..], "the block before the write is still zero");
    assert!(a[4096..] == data[..7 * 4096]);
    // Small pieces around the next boundary, in the capsule.
    io.round_trip(3 * 256 - 1, &pattern(8, 8192));
    assert!(io.read(3 * 256 - 2, 4).ok().data[4096..12288] == pattern(8, 8192)[..]);
}

#[test]
fn unwritten_pages_read_zeroes_and_allocate_only_when_written() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    assert_eq!(t.allocated_pages("demo"), 0);
    let z = h.io().read(5 * 256, 256).ok().data;
    assert!(z.iter().all(|&b| b == 0), "a never-written page reads zeroes");
    assert_eq!(t.allocated_pages("demo"), 0, "reading allocates nothing");
    h.io().write(5 * 256 + 3, &pattern(1, 4096)).ok();
    assert_eq!(t.allocated_pages("demo"), 1);
    h.io().write(7 * 256 - 1, &pattern(2, 8192)).ok();
    assert_eq!(t.allocated_pages("demo"), 3, "a write across a boundary allocates both pages");
    let r = h.io().read(5 * 256, 4).ok().data;
    assert!(r[..3 * 4096].iter().all(|&b| b == 0));
    assert!(r[3 * 4096..] == pattern(1, 4096));
    let ns = ident::parse_namespace(&h.admin.identify(ident::CNS_NAMESPACE, 1));
    assert_eq!(ns.nuse, 3 * 256, "NUSE counts allocated pages");
}

fn write_zeroes(io: &mut Conn, slba: u64, nlb: u32, deac: bool) -> Status {
    let mut c = io.rw_cmd(opcode::NVM_WRITE_ZEROES, slba, nlb);
    if deac {
        c.cdw12 |= 1 << 25;
    }
    io.exec(c, None, 0).status()
}

fn deallocate(io: &mut Conn, ranges: &[(u64, u32)]) -> Status {
    let rs: Vec<DsmRange> = ranges.iter().map(|&(slba, nlb)| DsmRange { context_attributes: 0, nlb, slba }).collect();
    let mut buf = vec![0u8; rs.len() * 16];
    write_ranges(&rs, &mut buf);
    let cmd = DsmCommand { ranges: rs.len(), idr: false, idw: false, deallocate: true }.to_command(0, 1);
    io.exec(cmd, Some(buf), 0).status()
}

#[test]
fn write_zeroes_and_deallocate_free_whole_pages_and_zero_partial_ranges() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    for p in 0..4u64 {
        io.write(p * 256, &pattern(p as u32, MDTS_BYTES)).ok();
    }
    assert_eq!(t.allocated_pages("demo"), 4);
    // Write Zeroes of the whole page 1: freed.
    assert!(write_zeroes(io, 256, 256, false).is_success());
    assert_eq!(t.allocated_pages("demo"), 3);
    assert!(io.read(256, 256).ok().data.iter().all(|&b| b == 0));
    // Deallocate of the whole page 2 (and a range of nothing): freed.
    assert!(deallocate(io, &[(512, 256), (0, 0)]).is_success());
    assert_eq!(t.allocated_pages("demo"), 2);
    assert!(io.read(512, 256).ok().data.iter().all(|&b| b == 0));
    // Partial ranges zero exactly their blocks.
    assert!(write_zeroes(io, 10, 3, true).is_success());
    assert!(deallocate(io, &[(3 * 256 + 100, 2)]).is_success());
    assert_eq!(t.allocated_pages("demo"), 2, "partial ranges keep the page");
    let p0 = io.read(0, 256).ok().data;
    let want0 = pattern(0, MDTS_BYTES);
    assert!(p0[..10 * 4096] == want0[..10 * 4096]);
    assert!(p0[10 * 4096..13 * 4096].iter().all(|&b| b == 0));
    assert!(p0[13 * 4096..] == want0[13 * 4096..]);
    let p3 = io.read(3 * 256, 256).ok().data;
    let want3 = pattern(3, MDTS_BYTES);
    assert!(p3[..100 * 4096] == want3[..100 * 4096]);
    assert!(p3[100 * 4096..102 * 4096].iter().all(|&b| b == 0));
    assert!(p3[102 * 4096..] == want3[102 * 4096..]);
    // A freed page can be written again.
    io.round_trip(256 + 17, &pattern(99, 4096));
    assert_eq!(t.allocated_pages("demo"), 3);
}

#[test]
fn flush_fua_and_keep_alive() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let flush = Command { opcode: opcode::NVM_FLUSH, nsid: 1, ..Default::default() };
    assert!(io.exec(flush, None, 0).status().is_success());
    let mut w = io.rw_cmd(opcode::NVM_WRITE, 40, 2);
    w.cdw12 |= 1 << 30;
    let data = pattern(4, 8192);
    assert!(io.exec(w, Some(data.clone()), 0).status().is_success());
    assert!(io.read(40, 2).ok().data == data);
    let mut r = io.rw_cmd(opcode::NVM_READ, 40, 2);
    r.cdw12 |= 1 << 30;
    assert!(io.exec(r, None, 8192).ok().data == data, "FUA read");
    let ka = Command { opcode: opcode::ADMIN_KEEP_ALIVE, ..Default::default() };
    assert!(h.admin.exec(ka, None, 0).status().is_success());
}

#[test]
fn set_and_get_features() {
    let t = TestTarget::start();
    let mut a = Conn::init(t.io_addr, NONE);
    a.connect_admin(&nqn("demo"), HOSTNQN, 0);
    a.enable();
    // Number of Queues: capped at max_io_queues (4), 0-based in both halves.
    let c = a.set_feature(feat::FID_NUMBER_OF_QUEUES, 7 | (7 << 16));
    assert!(c.status().is_success());
    assert_eq!(c.dw0, 3 | (3 << 16));
    let c = a.set_feature(feat::FID_NUMBER_OF_QUEUES, 1 | (1 << 16));
    assert_eq!(c.dw0, 1 | (1 << 16));
    assert_eq!(a.get_feature(feat::FID_NUMBER_OF_QUEUES, 0, 0, 0).ok().cpl.dw0, 1 | (1 << 16));
    // Keep Alive Timer.
    assert!(a.set_feature(feat::FID_KEEP_ALIVE_TIMER, 30_000).status().is_success());
    assert_eq!(a.get_feature(feat::FID_KEEP_ALIVE_TIMER, 0, 0, 0).ok().cpl.dw0, 30_000);
    // Async Event Configuration.
    let aec = feat::AEC_NS_ATTR | feat::AEC_ANA_CHANGE;
    assert!(a.set_feature(feat::FID_ASYNC_EVENT_CONFIG, aec).status().is_success());
    assert_eq!(a.get_feature(feat::FID_ASYNC_EVENT_CONFIG, 0, 0, 0).ok().cpl.dw0, aec);
    assert_eq!(a.get_feature(feat::FID_ASYNC_EVENT_CONFIG, feat::SEL_DEFAULT, 0, 0).ok().cpl.dw0, 0);
    // Volatile Write Cache.
    assert!(a.set_feature(feat::FID_VOLATILE_WRITE_CACHE, 0).status().is_success());
    assert_eq!(a.get_feature(feat::FID_VOLATILE_WRITE_CACHE, 0, 0, 0).ok().cpl.dw0, 0);
    assert!(a.set_feature(feat::FID_VOLATILE_WRITE_CACHE, 1).status().is_success());
    assert_eq!(a.get_feature(feat::FID_VOLATILE_WRITE_CACHE, 0, 0, 0).ok().cpl.dw0, 1);
    // Host Identifier: the 128-bit one given at Connect; not settable on fabrics.
    let d = a.get_feature(feat::FID_HOST_IDENTIFIER, 0, 1, 16).ok();
    assert_eq!(d.data, HOSTID);
    let d = a.get_feature(feat::FID_HOST_IDENTIFIER, 0, 0, 8);
    assert_eq!(d.status(), Status::INVALID_FIELD.with_dnr(), "the 64-bit host identifier does not exist");
    assert_eq!(a.set_feature(feat::FID_HOST_IDENTIFIER, 1).status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    // Unknown feature.
    assert_eq!(a.set_feature(0x7e, 0).status(), Status::INVALID_FIELD.with_dnr());
}

#[test]
fn smart_and_error_logs() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let smart =
        |h: &mut Host| log::SmartLog::parse(&h.admin.get_log(log::LID_SMART, 0xffff_ffff, 0, 512).ok().data).unwrap();
    let before = smart(&mut h);
    for i in 0..4 {
        h.io().write(i * 8, &pattern(i as u32, 128 << 10)).ok();
    }
    h.io().read(0, 32).ok();
    let after = smart(&mut h);
    assert_eq!(after.host_write_commands, before.host_write_commands + 4);
    assert_eq!(after.host_read_commands, before.host_read_commands + 1);
    assert!(after.data_units_written > before.data_units_written, "512 KiB is at least one unit of 1000 × 512 bytes");
    // An LBA out of range lands in the error log.
    let nsze = DEMO_SIZE / 4096;
    let cmd = h.io().rw_cmd(opcode::NVM_READ, nsze - 1, 2);
    let cid = h.io().submit(cmd, None, 8192);
    let d = h.io().wait(cid);
    assert_eq!(d.status(), Status::LBA_OUT_OF_RANGE.with_dnr());
    let raw = h.admin.get_log(log::LID_ERROR, 0, 0, 64 * 4).ok().data;
    let e = log::ErrorLogEntry::parse(&raw[..64]).expect("entry");
    assert!(e.error_count >= 1);
    assert_eq!(e.cid, cid);
    assert_eq!(e.sqid, 1);
    assert_eq!(e.nsid, 1);
    assert_eq!(e.lba, nsze - 1);
    assert_eq!(Status::from_field(e.status_field >> 1), Status::LBA_OUT_OF_RANGE.with_dnr());
    assert!(smart(&mut h).error_log_entries >= 1);
}

#[test]
fn async_event_after_volume_grow_and_changed_namespace_list() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    assert!(h.admin.set_feature(feat::FID_ASYNC_EVENT_CONFIG, feat::AEC_NS_ATTR).status().is_success());
    let aer = Command { opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST, ..Default::default() };
    let cid = h.admin.submit(aer, None, 0);
    // Other admin commands complete while the AER waits.
    let ka = Command { opcode: opcode::ADMIN_KEEP_ALIVE, ..Default::default() };
    assert!(h.admin.exec(ka, None, 0).status().is_success());
    let empty = h.admin.get_log(log::LID_CHANGED_NS, 0xffff_ffff, 0, 4096).ok().data;
    assert!(log::parse_changed_ns_log(&empty).is_empty());
    t.rpc("volume_grow", json!({"name": "demo", "size": DEMO_SIZE * 2}));
    let d = h.admin.wait(cid).ok();
    assert_eq!(d.cpl.dw0 & 0x7, 0x2, "a notice");
    assert_eq!((d.cpl.dw0 >> 8) & 0xff, 0x00, "namespace attribute changed");
    assert_eq!((d.cpl.dw0 >> 16) & 0xff, u32::from(log::LID_CHANGED_NS));
    let changed = h.admin.get_log(log::LID_CHANGED_NS, 0xffff_ffff, 0, 4096).ok().data;
    assert_eq!(log::parse_changed_ns_log(&changed), vec![1]);
    let again = h.admin.get_log(log::LID_CHANGED_NS, 0xffff_ffff, 0, 4096).ok().data;
    assert!(log::parse_changed_ns_log(&again).is_empty(), "reading the log clears it");
    let ns = ident::parse_namespace(&h.admin.identify(ident::CNS_NAMESPACE, 1));
    assert_eq!(ns.nsze, DEMO_SIZE * 2 / 4096);
    // The new blocks are usable.
    h.io().round_trip(DEMO_SIZE * 2 / 4096 - 8, &pattern(3, 32 << 10));
}

#[test]
fn several_io_queues_on_one_controller_and_two_controllers() {
    let t = TestTarget::start();
    let mut a = Host::connect_with(t.io_addr, "demo", HOSTNQN, NONE, 3);
    let other = "nqn.2014-08.org.nvmexpress:uuid:0b0e0f00-0000-4000-8000-000000000002";
    let mut b = Host::connect_with(t.io_addr, "demo", other, BOTH, 2);
    assert_ne!(a.cntlid, b.cntlid);
    for (i, q) in a.io.iter_mut().enumerate() {
        q.round_trip(i as u64 * 1000, &pattern(i as u32, 64 << 10));
    }
    for (i, q) in b.io.iter_mut().enumerate() {
        q.round_trip(5000 + i as u64 * 1000, &pattern(10 + i as u32, 64 << 10));
    }
    // Each sees the other's data: same namespace.
    assert!(a.io[2].read(6000, 16).ok().data == pattern(11, 64 << 10));
    assert!(b.io[0].read(0, 16).ok().data == pattern(0, 64 << 10));
    // Commands spread over queues in flight at once.
    let mut cids = Vec::new();
    for (i, q) in a.io.iter_mut().enumerate() {
        for j in 0..8u64 {
            let lba = 9000 + (i as u64 * 8 + j) * 4;
            let cmd = q.rw_cmd(opcode::NVM_WRITE, lba, 4);
            cids.push((i, q.submit(cmd, Some(pattern((i * 8) as u32 + j as u32, 16384)), 0)));
        }
    }
    for (i, cid) in cids {
        a.io[i].wait(cid).ok();
    }
    assert!(a.io[1].read(9000 + 8 * 4, 4).ok().data == pattern(8, 16384));
    // A fourth queue was not granted.
    let mut q = Conn::init(t.io_addr, NONE);
    let c = q.connect_raw(4, 15, &nqn("demo"), HOSTNQN, HOSTID, a.cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    let list = t.controllers();
    assert_eq!(list.len(), 2);
}

#[test]
fn volume_deleted_while_connected() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "small");
    h.io().round_trip(0, &pattern(1, 4096));
    assert!(h.admin.set_feature(feat::FID_ASYNC_EVENT_CONFIG, feat::AEC_NS_ATTR).status().is_success());
    let aer = Command { opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST, ..Default::default() };
    let cid = h.admin.submit(aer, None, 0);
    t.rpc("volume_delete", json!({"name": "small"}));
    let d = h.io().read(0, 8);
    assert_eq!(d.status(), Status::INVALID_NAMESPACE.with_dnr());
    let w = h.io().write(0, &pattern(2, 4096));
    assert_eq!(w.status(), Status::INVALID_NAMESPACE.with_dnr());
    let ev = h.admin.wait(cid).ok();
    assert_eq!(ev.cpl.dw0 & 0xff_ff07, 0x04_0002, "namespace attribute changed notice");
    assert!(ident::parse_ns_list(&h.admin.identify(ident::CNS_ACTIVE_NS_LIST, 0)).is_empty());
    // Other volumes are untouched.
    let mut d = Host::connect(t.io_addr, "demo");
    d.io().round_trip(0, &pattern(3, 8192));
}

#[test]
fn host_allow_list_refuses_other_hosts() {
    let t = TestTarget::start();
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:0b0e0f00-0000-4000-8000-0000000000aa";
    t.rpc("subsystem_allow_host", json!({"nqn": nqn("demo"), "host": allowed}));
    let mut c = Conn::init(t.io_addr, NONE);
    let cpl = c.connect_raw(0, 15, &nqn("demo"), HOSTNQN, HOSTID, CNTLID_DYNAMIC, 0);
    let s = cpl.status();
    assert_eq!((s.sct, s.sc, s.dnr), (1, 0x84, true), "Connect Invalid Host");
    // The allowed host connects; other subsystems still admit anyone.
    let mut h = Host::connect_with(t.io_addr, "demo", allowed, NONE, 1);
    h.io().round_trip(0, &pattern(1, 4096));
    Host::connect(t.io_addr, "small");
    // The discovery log shows the refused host only what it may connect to.
    let mut d = Conn::init(t.io_addr, NONE);
    d.connect_admin(DISCOVERY_NQN, HOSTNQN, 0);
    d.enable();
    let (_, entries) = log::parse_discovery_log(&d.get_log(log::LID_DISCOVERY, 0, 0, 8192).ok().data).unwrap();
    assert!(!entries.iter().any(|e| e.subnqn == nqn("demo")));
    assert!(entries.iter().any(|e| e.subnqn == nqn("small")));
}

#[test]
fn disconnect_and_controller_teardown() {
    let t = TestTarget::start();
    let h = Host::connect(t.io_addr, "demo");
    assert_eq!(t.controllers().len(), 1);
    t.wait_connections(2);
    drop(h);
    t.wait_connections(0);
    wait_until("the controller to go away", || t.controllers().is_empty());
    // Fabrics Disconnect on an I/O queue: answered, then the connection closes.
    let mut h = Host::connect(t.io_addr, "demo");
    let disc = Command { opcode: opcode::FABRICS, nsid: u32::from(opcode::FCTYPE_DISCONNECT), ..Default::default() };
    assert!(h.io().exec(disc, None, 0).status().is_success());
    h.io().expect_closed();
    h.admin.identify(ident::CNS_CONTROLLER, 0);
}

#[test]
fn keep_alive_timeout_tears_down_a_silent_host() {
    let t = TestTarget::start();
    let mut a = Conn::init(t.io_addr, NONE);
    a.connect_admin(&nqn("demo"), HOSTNQN, 200);
    a.enable();
    assert_eq!(t.controllers().len(), 1);
    // Say nothing: the controller goes away and the target closes the connection.
    a.expect_closed();
    wait_until("the controller to go away", || t.controllers().is_empty());
    t.wait_connections(0);
}

#[test]
fn volume_of_512_byte_blocks_reads_and_writes_across_pages() {
    let t = TestTarget::start_with(|c| {
        c.volumes.push(quire_config::Volume {
            name: "fine".into(),
            size: quire_config::ByteSize::mib(8),
            page_size: quire_config::ByteSize::kib(64),
            block_size: 512,
            allowed_hosts: Vec::new(),
        });
    });
    let mut h = Host::connect(t.io_addr, "fine");
    let ns = ident::parse_namespace(&h.admin.identify(ident::CNS_NAMESPACE, 1));
    assert_eq!(ns.lbaf0.lbads, 9, "512-byte logical blocks");
    assert_eq!(ns.nsze, (8 << 20) / 512);
    assert_eq!(ns.noiob, 128, "a 64 KiB page is 128 blocks");
    // 24 blocks from LBA 120: crosses the boundary of the first page at LBA 128.
    let data = pattern(512, 24 * 512);
    h.io().round_trip(120, &data);
    // An odd-sized write inside one page, and the blocks around it untouched (zeroes).
    let one = pattern(513, 512);
    h.io().round_trip(1001, &one);
    let around = h.io().read(1000, 3).ok().data;
    assert!(around[..512].iter().all(|&b| b == 0) && around[1024..].iter().all(|&b| b == 0));
    assert_eq!(&around[512..1024], &one[..]);
    assert_eq!(t.allocated_pages("fine"), 3, "pages 0, 1 and 7 were written");
    // The last block of the volume, and one past it.
    h.io().round_trip(ns.nsze - 1, &pattern(514, 512));
    let past = h.io().read(ns.nsze, 1);
    assert_eq!(past.status(), Status::LBA_OUT_OF_RANGE.with_dnr());
}

#[test]
fn zero_copy_sends_deliver_the_right_data_and_release_buffers() {
    let t = TestTarget::start_with(|c| c.target.zero_copy_send = true);
    let mut h = Host::connect(t.io_addr, "demo");
    // 1 MiB reads: big enough to go out zero-copy; each buffer must stay untouched
    // until the kernel is done, so later writes into reused buffers must not leak
    // into data already on the wire.
    let blocks = (1u64 << 20) / 4096;
    for round in 0..8u32 {
        let data = pattern(9000 + round, 1 << 20);
        let lba = u64::from(round % 4) * blocks;
        h.io().round_trip(lba, &data);
    }
    for round in 4..8u32 {
        let lba = u64::from(round % 4) * blocks;
        let got = h.io().read(lba, blocks as u32).ok().data;
        assert!(got == pattern(9000 + round, 1 << 20), "zero-copy read of round {round} differs");
    }
    let stats = t.rpc("stats_reactors", serde_json::json!({}));
    let zc: u64 = stats.as_array().unwrap().iter().map(|r| r["zero_copy_sends"].as_u64().unwrap()).sum();
    assert!(zc > 0, "reads of 1 MiB went out zero-copy: {stats}");
    // Buffers come back: many more reads than the pool could hold if they leaked.
    for i in 0..300u64 {
        h.io().read((i % 4) * blocks, blocks as u32).ok();
    }
}

#[test]
fn zeroes_and_deallocate_over_more_pages_than_one_window_of_parts() {
    // 256 pages of 64 KiB: one command covering all of them runs in several windows
    // of at most PARTS_MAX parts.
    let t = TestTarget::start_with(|c| {
        c.volumes.push(quire_config::Volume {
            name: "many".into(),
            size: quire_config::ByteSize::mib(16),
            page_size: quire_config::ByteSize::kib(64),
            block_size: 4096,
            allowed_hosts: Vec::new(),
        });
    });
    let mut h = Host::connect(t.io_addr, "many");
    let blocks_per_page = 16u64;
    let written = [0u64, 70, 140, 255];
    for &p in &written {
        h.io().round_trip(p * blocks_per_page, &pattern(p as u32, 8192));
    }
    assert_eq!(t.allocated_pages("many"), 4);
    // Write Zeroes over the whole volume frees every written page.
    assert_eq!(write_zeroes(h.io(), 0, 4096, false), Status::SUCCESS);
    wait_until("pages freed by Write Zeroes", || t.allocated_pages("many") == 0);
    for &p in &written {
        h.io().round_trip(p * blocks_per_page, &pattern(1000 + p as u32, 4096));
    }
    // One DSM range over the whole volume, starting mid-page: whole pages are freed,
    // the partial first page is zeroed in place.
    assert_eq!(deallocate(h.io(), &[(1, 4095)]), Status::SUCCESS);
    wait_until("pages freed by DSM", || t.allocated_pages("many") == 1);
    for &p in &written {
        let got = h.io().read(p * blocks_per_page + 1, 1).ok().data;
        assert!(got.iter().all(|&b| b == 0), "page {p} reads zeroes after deallocate");
    }
    // LBA 0 was outside the range: still there.
    assert_eq!(h.io().read(0, 1).ok().data, pattern(1000, 4096));
}

/// Volume limits (`volume::qos`): commands over a limit wait and then complete, none
/// fails; the limit bounds how soon they can all have completed; a queue closed while
/// commands wait (reads, in-capsule writes, writes by R2T) leaves nothing behind, and
/// the target serves the next host; the limits are in `volume_list`.
#[test]
fn commands_over_a_limit_wait_and_complete_and_a_closed_queue_leaves_nothing() {
    let t = TestTarget::start();
    let set = |iops: u32| assert_eq!(t.rpc("volume_set_limits", json!({"name": "demo", "iops": iops})), json!(true));
    set(50);
    assert_eq!(t.volume("demo")["limits"], json!({"iops": 50}));
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let start = std::time::Instant::now();
    let mut cids = Vec::new();
    // Writes, reads, Compares and Copies all count.
    for i in 0..30u64 {
        let cid = match i % 6 {
            0 | 3 => io.submit(io.rw_cmd(opcode::NVM_WRITE, i * 8, 1), Some(pattern(i as u32, 4096)), 0),
            1 => io.submit(io.rw_cmd(opcode::NVM_COMPARE, i * 8, 1), Some(vec![0; 4096]), 0),
            2 => {
                let (cmd, list) = copy_cmd(i * 8 + 1, &[(i * 8, 1)], false);
                io.submit(cmd, Some(list), 0)
            }
            _ => io.submit(io.rw_cmd(opcode::NVM_READ, i * 8, 1), None, 4096),
        };
        cids.push(cid);
    }
    for cid in cids {
        let d = io.wait(cid);
        assert!(d.status().is_success(), "a command over the limit failed: {}", d.status());
    }
    // 30 commands at 50 a second, one of them in the burst: at least 29 × 20 ms.
    let took = start.elapsed();
    assert!(took >= std::time::Duration::from_millis(560), "30 commands under 50 IOPS took {took:?}");
    let stats = t.rpc("stats_volumes", json!({}));
    let waits = stats.as_array().unwrap().iter().find(|v| v["name"] == "demo").unwrap()["qos_waits"].as_u64();
    assert!(waits.is_some_and(|w| w >= 25), "commands counted as waiting: {waits:?}");
    assert_eq!(io.read(0, 1).ok().data, pattern(0, 4096), "the write that waited landed");

    // Close the queue while 20 commands wait (a second's worth and more).
    for i in 0..20u64 {
        match i % 3 {
            0 => io.submit(io.rw_cmd(opcode::NVM_READ, i, 1), None, 4096),
            1 => io.submit(io.rw_cmd(opcode::NVM_WRITE, i, 1), Some(pattern(7, 4096)), 0),
            _ => io.submit(io.rw_cmd(opcode::NVM_WRITE, 512 + i * 64, 64), Some(pattern(8, 256 << 10)), 0),
        };
    }
    drop(h);
    t.wait_connections(0);
    // Lifted: a new host's commands go at once, and the target is unharmed.
    set(0);
    assert_eq!(t.volume("demo").get("limits"), None, "no limits, none listed");
    let mut h = Host::connect(t.io_addr, "demo");
    let before = t.rpc("stats_volumes", json!({}))[0]["qos_waits"].as_u64();
    for i in 0..20u64 {
        h.io().round_trip(4096 + i * 8, &pattern(9, 4096));
    }
    assert_eq!(t.rpc("stats_volumes", json!({}))[0]["qos_waits"].as_u64(), before, "nothing waits with no limit");
}

fn compare(io: &mut Conn, slba: u64, data: &[u8]) -> Status {
    let nlb = (data.len() / 4096) as u32;
    let c = io.rw_cmd(opcode::NVM_COMPARE, slba, nlb);
    io.exec(c, Some(data.to_vec()), 0).status()
}

#[test]
fn compare_matches_what_is_stored_and_fails_on_any_difference() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let id = ident::parse_controller(&h.admin.identify(ident::CNS_CONTROLLER, 0));
    assert!(id.oncs & ident::ONCS_COMPARE != 0, "Identify Controller announces Compare");
    assert_eq!(id.fuses, 0, "no fused operations are announced");
    let effects = h.admin.get_log(log::LID_CMD_EFFECTS, 0, 0, 4096).ok().data;
    let io_compare = 1024 + 4 * usize::from(opcode::NVM_COMPARE);
    assert_eq!(effects[io_compare] & 1, 1, "the effects log lists Compare as supported");

    let io = h.io();
    let failure = Status::COMPARE_FAILURE.with_dnr();
    // Never written: compares equal to zeroes, allocates nothing.
    assert_eq!(compare(io, 5 * 256, &[0u8; 8192]), Status::SUCCESS);
    assert_ne!(compare(io, 5 * 256, &pattern(1, 4096)), Status::SUCCESS);
    assert_eq!(t.allocated_pages("demo"), 0, "a Compare allocates nothing");
    // In the capsule (8 KiB) and by R2T (MDTS across a page boundary).
    let small = pattern(2, 8192);
    io.write(10, &small).ok();
    assert_eq!(compare(io, 10, &small), Status::SUCCESS);
    let big = pattern(3, MDTS_BYTES);
    let slba = 256 - 7;
    io.write(slba, &big).ok();
    assert_eq!(compare(io, slba, &big), Status::SUCCESS);
    // One byte off anywhere fails: first, last, and in the second page.
    for at in [0, MDTS_BYTES - 1, 7 * 4096 + 123] {
        let mut off = big.clone();
        off[at] ^= 0x40;
        assert_eq!(compare(io, slba, &off), failure, "a difference at byte {at} goes unnoticed");
    }
    let mut off = small.clone();
    off[4096] ^= 1;
    assert_eq!(compare(io, 10, &off), failure);
    // Shifted by one block: differs.
    assert_eq!(compare(io, 11, &small), failure);
    // Range and length are checked as for a write.
    assert_eq!(compare(io, 4 * 256 * 64, &small), Status::LBA_OUT_OF_RANGE.with_dnr());
    let c = io.rw_cmd(opcode::NVM_COMPARE, 10, 3);
    assert_eq!(io.exec(c, Some(small.clone()), 0).status(), Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    // The data is unchanged by all of it, and every buffer went back to the pool.
    assert!(io.read(10, 2).ok().data == small);
    assert!(io.read(slba, (MDTS_BYTES / 4096) as u32).ok().data == big);
    drop(h);
    t.wait_quiet();
}

#[test]
fn a_fused_pair_is_refused_and_its_write_never_lands() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let old = pattern(1, 4096);
    io.write(3, &old).ok();
    // Compare and Write as a fused pair, whose compare would fail: neither half may run
    // (the controller announces no fused operations).
    let mut first = io.rw_cmd(opcode::NVM_COMPARE, 3, 1);
    first.flags |= 1;
    let mut second = io.rw_cmd(opcode::NVM_WRITE, 3, 1);
    second.flags |= 2;
    let a = io.submit(first, Some(pattern(9, 4096)), 0);
    let b = io.submit(second, Some(pattern(8, 4096)), 0);
    assert_eq!(io.wait(a).status(), Status::INVALID_FIELD.with_dnr());
    assert_eq!(io.wait(b).status(), Status::INVALID_FIELD.with_dnr());
    assert!(io.read(3, 1).ok().data == old, "the second half of a fused pair wrote");
    drop(h);
    t.wait_quiet();
}

fn copy_cmd(sdlba: u64, ranges: &[(u64, u32)], fua: bool) -> (Command, Vec<u8>) {
    use quire_wire::nvme::copy::{write_ranges, CopyCommand, CopyRange};
    let list: Vec<CopyRange> = ranges.iter().map(|&(slba, nlb)| CopyRange { slba, nlb }).collect();
    let c = CopyCommand { sdlba, ranges: list.len(), format: 0, fua };
    (c.to_command(1), write_ranges(&list))
}

fn copy(io: &mut Conn, sdlba: u64, ranges: &[(u64, u32)]) -> Status {
    let (cmd, list) = copy_cmd(sdlba, ranges, false);
    io.exec(cmd, Some(list), 0).status()
}

#[test]
fn copy_moves_ranges_within_the_volume_across_pages() {
    let t = TestTarget::start();
    let mut h = Host::connect(t.io_addr, "demo");
    let id = ident::parse_controller(&h.admin.identify(ident::CNS_CONTROLLER, 0));
    assert!(id.oncs & ident::ONCS_COPY != 0 && id.ocfs & ident::OCFS_FORMAT_0 != 0, "Copy is announced");
    let ns = ident::parse_namespace(&h.admin.identify(ident::CNS_NAMESPACE, 1));
    let mdts_blocks = (MDTS_BYTES / 4096) as u32;
    assert_eq!((ns.mssrl, ns.mcl, ns.msrc), (mdts_blocks as u16, mdts_blocks, 255), "Copy's limits are MDTS's");
    let io = h.io();
    // Three sources: one across the boundary of pages 0 and 1, one on a page never
    // written (zeroes), one on page 3; the destination straddles pages 5 and 6.
    let a = pattern(1, 6 * 4096);
    io.write(256 - 3, &a).ok();
    let c = pattern(2, 40 * 4096);
    io.write(3 * 256 + 17, &c).ok();
    let dest = 6 * 256 - 20;
    assert_eq!(copy(io, dest, &[(256 - 3, 6), (4 * 256 + 9, 2), (3 * 256 + 17, 40)]), Status::SUCCESS);
    let mut want = a.clone();
    want.extend(vec![0u8; 2 * 4096]);
    want.extend(&c);
    assert!(io.read(dest, 48).ok().data == want, "the destination holds the sources, in order");
    assert!(io.read(dest - 1, 1).ok().data == [0u8; 4096] && io.read(dest + 48, 1).ok().data == [0u8; 4096]);
    assert!(io.read(256 - 3, 6).ok().data == a, "the source is unchanged");
    // Overlapping source and destination: the source as it was before the command.
    let o = pattern(3, 16 * 4096);
    io.write(8 * 256, &o).ok();
    assert_eq!(copy(io, 8 * 256 + 4, &[(8 * 256, 16)]), Status::SUCCESS);
    let got = io.read(8 * 256, 20).ok().data;
    assert!(got[..4 * 4096] == o[..4 * 4096] && got[4 * 4096..] == o[..], "an overlapping copy");
    // The largest copy (MCL blocks, in 2 ranges), with FUA.
    let big = pattern(4, MDTS_BYTES);
    io.write(10 * 256, &big).ok();
    let (cmd, list) = copy_cmd(12 * 256 + 100, &[(10 * 256 + 128, 128), (10 * 256, 128)], true);
    assert_eq!(io.exec(cmd, Some(list), 0).status(), Status::SUCCESS);
    let got = io.read(12 * 256 + 100, 256).ok().data;
    assert!(got[..MDTS_BYTES / 2] == big[MDTS_BYTES / 2..] && got[MDTS_BYTES / 2..] == big[..MDTS_BYTES / 2]);

    // What is refused, and how; nothing written by any of them.
    let too_long = Status::COMMAND_SIZE_LIMIT_EXCEEDED.with_dnr();
    let out = Status::LBA_OUT_OF_RANGE.with_dnr();
    assert_eq!(copy(io, 20 * 256, &[(0, 200), (0, 57)]), too_long, "over MCL");
    assert_eq!(copy(io, 20 * 256, &[(16384 - 4, 8)]), out, "a source past the end");
    assert_eq!(copy(io, 16384 - 4, &[(0, 8)]), out, "a destination past the end");
    let (mut cmd, list) = copy_cmd(20 * 256, &[(0, 8)], false);
    cmd.cdw12 |= 1 << 8;
    assert_eq!(io.exec(cmd, Some(list), 0).status(), Status::INVALID_FIELD.with_dnr(), "format 1");
    let (cmd, list) = copy_cmd(20 * 256, &[(0, 8), (8, 8)], false);
    assert_eq!(io.exec(cmd, Some(list[..40].to_vec()), 0).status(), Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    assert!(io.read(20 * 256, 8).ok().data == vec![0u8; 8 * 4096]);
    let stats = t.rpc("stats_volumes", json!({}));
    let demo = stats.as_array().unwrap().iter().find(|v| v["name"] == "demo").unwrap().clone();
    assert!(demo["other_ops"].as_u64().unwrap() >= 3, "copies counted: {demo}");
    drop(h);
    t.wait_quiet();
}

#[test]
fn a_copy_short_of_buffers_waits_for_them_and_completes() {
    use quire_wire::tcp::Pdu;
    // One reactor with 24 buffers of 128 KiB: two held 1 MiB writes leave too few for a
    // 1 MiB copy, which waits for them without failing.
    let t = TestTarget::start_with(|c| {
        c.reactors.count = Some(1);
        c.buffers.count = 24;
    });
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    let src = pattern(5, MDTS_BYTES);
    io.write(0, &src).ok();
    let (w1, w2) = (pattern(6, MDTS_BYTES), pattern(7, MDTS_BYTES));
    let c1 = io.submit(io.rw_cmd(opcode::NVM_WRITE, 2 * 256, 256), Some(w1.clone()), 0);
    let c2 = io.submit(io.rw_cmd(opcode::NVM_WRITE, 3 * 256, 256), Some(w2.clone()), 0);
    // Their R2Ts: their buffers are taken; the data is held back.
    let mut r2ts = Vec::new();
    while r2ts.len() < 2 {
        match io.recv().expect("an R2T").pdu {
            Pdu::R2T(r) => r2ts.push(r),
            other => panic!("expected R2T, got {other:?}"),
        }
    }
    let (cmd, list) = copy_cmd(5 * 256, &[(0, 256)], false);
    let cc = io.submit(cmd, Some(list), 0);
    wait_until("the copy waits for buffers", || {
        let list = t.rpc("stats_requests", json!({}));
        list.as_array().unwrap().iter().any(|e| e["from"] == "ReadyToExecute" && e["to"] == "NeedBuffer")
    });
    assert!(io.try_take(cc).is_none());
    for r in r2ts {
        io.answer_r2t(&r);
    }
    assert_eq!(io.wait(c1).status(), Status::SUCCESS);
    assert_eq!(io.wait(c2).status(), Status::SUCCESS);
    assert_eq!(io.wait(cc).status(), Status::SUCCESS);
    assert!(io.read(5 * 256, 256).ok().data == src);
    assert!(io.read(2 * 256, 256).ok().data == w1 && io.read(3 * 256, 256).ok().data == w2);
    drop(h);
    t.wait_quiet();
}
