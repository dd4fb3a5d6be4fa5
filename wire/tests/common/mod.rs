//! Generators shared by the PDU property tests and the stream fuzz harness.
#![allow(dead_code)]
// Test constants are small; a truncation would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use proptest::prelude::*;
use quire_wire::nvme::{Command, Completion};
use quire_wire::tcp::digest::crc32c;
use quire_wire::tcp::*;

/// Test cases per property: `PROPTEST_CASES` from the environment, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The side that receives what `sender` sends.
pub fn peer(sender: Role) -> Role {
    match sender {
        Role::Controller => Role::Host,
        Role::Host => Role::Controller,
    }
}

pub fn arb_digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

pub fn arb_command() -> impl Strategy<Value = Command> {
    proptest::collection::vec(any::<u8>(), 64).prop_map(|v| {
        let mut b = [0u8; 64];
        b.copy_from_slice(&v);
        Command::from_bytes(&b)
    })
}

pub fn arb_completion() -> impl Strategy<Value = Completion> {
    proptest::collection::vec(any::<u8>(), 16).prop_map(|v| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&v);
        Completion::from_bytes(&b)
    })
}

pub fn arb_fes() -> impl Strategy<Value = Fes> {
    prop_oneof![
        Just(Fes::InvalidHeaderField),
        Just(Fes::PduSequenceError),
        Just(Fes::HeaderDigestError),
        Just(Fes::DataTransferOutOfRange),
        Just(Fes::DataTransferLimitExceeded),
        Just(Fes::UnsupportedParameter),
    ]
}

/// One encoded header with what decoding it must give.
#[derive(Clone, Debug)]
pub struct Case {
    /// The receiving side.
    pub role: Role,
    /// Digests in force at the receiver (`None` before ICReq/ICResp).
    pub digests: Option<Digests>,
    pub header: HeaderBuf,
    pub data_len: usize,
    pub expect: Pdu,
}

const DATA_MAX: u32 = 1 << 20;

fn icreq_case() -> impl Strategy<Value = Case> {
    (0u8..=31, arb_digests(), any::<u32>()).prop_map(|(hpda, digests, maxr2t)| {
        let req = ICReq { pfv: 0, hpda, digests, maxr2t };
        Case { role: Role::Controller, digests: None, header: encode_icreq(&req), data_len: 0, expect: Pdu::ICReq(req) }
    })
}

fn icresp_case() -> impl Strategy<Value = Case> {
    (0u8..=31, arb_digests(), 1024u32..=(1 << 22)).prop_map(|(cpda, digests, dwords)| {
        let resp = ICResp { pfv: 0, cpda, digests, maxh2cdata: dwords * 4 };
        Case { role: Role::Host, digests: None, header: encode_icresp(&resp), data_len: 0, expect: Pdu::ICResp(resp) }
    })
}

fn term_case() -> impl Strategy<Value = Case> {
    let sender = prop_oneof![Just(Role::Controller), Just(Role::Host)];
    (sender, arb_fes(), any::<u32>(), 0..=TERM_REQ_MAX_DATA, proptest::option::of(arb_digests())).prop_map(
        |(sender, fes, fei, data_len, digests)| Case {
            role: peer(sender),
            digests,
            header: encode_term_req(sender, fes, fei, data_len),
            data_len,
            expect: Pdu::TermReq { fes: fes as u16, fei },
        },
    )
}

fn capsule_cmd_case() -> impl Strategy<Value = Case> {
    let data_len = prop_oneof![Just(0usize), 1usize..=8192, 1usize..=DATA_MAX as usize];
    (arb_command(), data_len, arb_digests()).prop_map(|(cmd, data_len, d)| Case {
        role: Role::Controller,
        digests: Some(d),
        header: encode_capsule_cmd(&cmd, data_len, d),
        data_len,
        expect: Pdu::CapsuleCmd(cmd),
    })
}

fn capsule_resp_case() -> impl Strategy<Value = Case> {
    (arb_completion(), arb_digests()).prop_map(|(cqe, d)| Case {
        role: Role::Host,
        digests: Some(d),
        header: encode_capsule_resp(&cqe, d),
        data_len: 0,
        expect: Pdu::CapsuleResp(cqe),
    })
}

fn h2c_case() -> impl Strategy<Value = Case> {
    (any::<u16>(), any::<u16>(), any::<u32>(), 1..=DATA_MAX, any::<bool>(), arb_digests()).prop_map(
        |(cccid, ttag, datao, datal, last, d)| {
            let hdr = DataHeader { cccid, ttag, datao, datal, last, success: false };
            Case {
                role: Role::Controller,
                digests: Some(d),
                header: encode_h2c_data(&hdr, d),
                data_len: datal as usize,
                expect: Pdu::H2CData(hdr),
            }
        },
    )
}

fn c2h_case() -> impl Strategy<Value = Case> {
    (any::<u16>(), any::<u32>(), 1..=DATA_MAX, any::<bool>(), any::<bool>(), arb_digests()).prop_map(
        |(cccid, datao, datal, last, success, d)| {
            // SUCCESS is only valid together with LAST_PDU.
            let hdr = DataHeader { cccid, ttag: 0, datao, datal, last: last || success, success };
            Case {
                role: Role::Host,
                digests: Some(d),
                header: encode_c2h_data(&hdr, d),
                data_len: datal as usize,
                expect: Pdu::C2HData(hdr),
            }
        },
    )
}

fn r2t_case() -> impl Strategy<Value = Case> {
    (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), arb_digests()).prop_map(|(cccid, ttag, r2to, r2tl, d)| {
        let r = R2t { cccid, ttag, r2to, r2tl };
        Case { role: Role::Host, digests: Some(d), header: encode_r2t(&r, d), data_len: 0, expect: Pdu::R2T(r) }
    })
}

/// Every PDU type, with random fields and digests on or off.
pub fn arb_case() -> impl Strategy<Value = Case> {
    prop_oneof![
        icreq_case(),
        icresp_case(),
        term_case(),
        capsule_cmd_case(),
        capsule_resp_case(),
        h2c_case(),
        c2h_case(),
        r2t_case(),
    ]
}

/// The header bytes of `pdu` as received by `role` with `digests` and `data_len`
/// bytes of data. A termination request with an FES value the enum lacks is encoded
/// with a known one and then patched.
pub fn encode_bytes(pdu: &Pdu, role: Role, digests: Option<Digests>, data_len: usize) -> Vec<u8> {
    let d = digests.unwrap_or_default();
    let h = match *pdu {
        Pdu::ICReq(req) => encode_icreq(&req),
        Pdu::ICResp(resp) => encode_icresp(&resp),
        Pdu::TermReq { fes, fei } => {
            let known = Fes::from_u16(fes).unwrap_or(Fes::InvalidHeaderField);
            let mut b = encode_term_req(peer(role), known, fei, data_len).as_bytes().to_vec();
            b[8..10].copy_from_slice(&fes.to_le_bytes());
            return b;
        }
        Pdu::CapsuleCmd(cmd) => encode_capsule_cmd(&cmd, data_len, d),
        Pdu::CapsuleResp(cqe) => encode_capsule_resp(&cqe, d),
        Pdu::H2CData(hdr) => encode_h2c_data(&hdr, d),
        Pdu::C2HData(hdr) => encode_c2h_data(&hdr, d),
        Pdu::R2T(r) => encode_r2t(&r, d),
    };
    h.as_bytes().to_vec()
}

/// A complete PDU: `header` (whose PLEN covers `data`), `pad` bytes of padding
/// (PDO and PLEN are adjusted and the header digest recomputed), the data, and the
/// data digest when `ddgst`.
pub fn full_pdu(header: &[u8], pad: usize, data: &[u8], ddgst: bool) -> Vec<u8> {
    let mut h = header.to_vec();
    let hlen = usize::from(h[2]);
    if pad > 0 && !data.is_empty() {
        h[3] += pad as u8;
        let plen = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) + pad as u32;
        h[4..8].copy_from_slice(&plen.to_le_bytes());
        if h.len() > hlen {
            let crc = crc32c(&h[..hlen]);
            h[hlen..hlen + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut v = h;
    if !data.is_empty() {
        v.extend(std::iter::repeat_n(0u8, pad));
    }
    v.extend_from_slice(data);
    if ddgst && !data.is_empty() {
        v.extend_from_slice(&crc32c(data).to_le_bytes());
    }
    v
}
