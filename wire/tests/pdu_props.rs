//! Property tests of the NVMe/TCP PDU codec (`quire_wire::tcp::pdu`).
//!
//! - every PDU type survives encode → layout → decode with random fields, digests on
//!   and off;
//! - `CommonHeader::layout` never panics on any 8 bytes and, when it accepts them,
//!   describes a PDU whose parts add up to PLEN;
//! - `decode` never panics on arbitrary header bytes that passed `layout`;
//! - a valid header with bytes flipped is either rejected or decodes to a PDU whose
//!   re-encoding agrees with the mutated bytes on every field the codec defines
//!   (reserved bytes excepted), so the decoder neither ignores a defined field nor
//!   reads a reserved one.
//!
//! Case counts follow `PROPTEST_CASES` (default 512 here).

mod common;

use common::*;
use proptest::prelude::*;
use quire_wire::tcp::digest::crc32c;
use quire_wire::tcp::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(512), ..ProptestConfig::default() }
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Controller), Just(Role::Host)]
}

/// Common headers biased towards plausible values so that `layout` gets past its
/// first checks often, plus fully random ones.
fn arb_common_header() -> impl Strategy<Value = [u8; 8]> {
    let plausible = (
        0u8..=10,
        0u8..=0x0f,
        prop_oneof![Just(24u8), Just(72u8), Just(128u8), any::<u8>()],
        prop_oneof![Just(0u8), 20u8..=80, any::<u8>()],
        prop_oneof![0u32..=300, 0u32..=(PLEN_MAX + 8), any::<u32>()],
    )
        .prop_map(|(t, f, h, p, l)| {
            let mut b = [t, f, h, p, 0, 0, 0, 0];
            b[4..8].copy_from_slice(&l.to_le_bytes());
            b
        });
    prop_oneof![plausible, any::<[u8; 8]>()]
}

/// Significant bits of header byte `i` of a PDU of type `t`: 0 for reserved bytes.
fn significant(t: PduType, i: usize) -> u8 {
    let flags = match t {
        PduType::ICReq | PduType::ICResp | PduType::H2CTermReq | PduType::C2HTermReq => FLAG_HDGST,
        PduType::CapsuleCmd | PduType::CapsuleResp | PduType::R2T => FLAG_HDGST | FLAG_DDGST,
        PduType::H2CData => FLAG_HDGST | FLAG_DDGST | FLAG_LAST_PDU,
        PduType::C2HData => FLAG_HDGST | FLAG_DDGST | FLAG_LAST_PDU | FLAG_SUCCESS,
    };
    let is_term = matches!(t, PduType::H2CTermReq | PduType::C2HTermReq);
    match (i, t) {
        (0 | 2 | 4..=7, _) => 0xff,
        (1, _) => flags,
        (3, _) => {
            if is_term {
                0
            } else {
                0xff
            }
        }
        (11, PduType::ICReq | PduType::ICResp) => DGST_HDGST | DGST_DDGST,
        (8..=15, PduType::ICReq | PduType::ICResp) => 0xff,
        (8..=13, PduType::H2CTermReq | PduType::C2HTermReq) => 0xff,
        (8..=71, PduType::CapsuleCmd) => 0xff,
        (8..=23, PduType::CapsuleResp) => 0xff,
        (8..=19, PduType::H2CData | PduType::R2T) => 0xff,
        (8..=9 | 12..=19, PduType::C2HData) => 0xff,
        _ => 0,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_pdu_type_round_trips(case in arb_case()) {
        let bytes = case.header.as_bytes();
        let ch = CommonHeader::parse(bytes);
        let layout = ch.layout(case.role, case.digests).expect("encoder output is valid");
        prop_assert_eq!(layout.header_total(), bytes.len());
        prop_assert_eq!(layout.data_len, case.data_len);
        prop_assert_eq!(layout.pad_len, 0);
        prop_assert_eq!(layout.header_total() + layout.after_header(), ch.plen as usize);
        let digests = case.digests.unwrap_or_default();
        let hdgst = digests.header && layout.pdu_type.has_hdgst();
        prop_assert_eq!(layout.hdgst_len, if hdgst { 4 } else { 0 });
        let ddgst = digests.data && case.data_len > 0 && layout.pdu_type.has_ddgst();
        prop_assert_eq!(layout.ddgst_len, if ddgst { 4 } else { 0 });
        prop_assert_eq!(decode(&layout, bytes), Ok(case.expect));
        prop_assert_eq!(encode_bytes(&case.expect, case.role, case.digests, case.data_len), bytes);
    }

    #[test]
    fn layout_never_panics_and_is_self_consistent(
        ch_bytes in arb_common_header(),
        role in arb_role(),
        digests in proptest::option::of(arb_digests()),
    ) {
        let ch = CommonHeader::parse(&ch_bytes);
        if let Ok(l) = ch.layout(role, digests) {
            prop_assert_eq!(l.header_total() + l.after_header(), ch.plen as usize);
            prop_assert_eq!(l.hlen, l.pdu_type.hlen());
            prop_assert_eq!(l.hlen, usize::from(ch.hlen));
            prop_assert!(l.header_total() <= MAX_HEADER_LEN);
            prop_assert!(l.hdgst_len == 0 || l.hdgst_len == DIGEST_LEN);
            prop_assert!(l.ddgst_len == 0 || (l.ddgst_len == DIGEST_LEN && l.data_len > 0));
            prop_assert!(l.pad_len == 0 || l.data_len > 0, "padding only before data");
            prop_assert!(ch.plen <= PLEN_MAX);
            if l.data_len > 0 && !matches!(l.pdu_type, PduType::H2CTermReq | PduType::C2HTermReq) {
                prop_assert_eq!(usize::from(ch.pdo), l.header_total() + l.pad_len);
            }
        }
    }

    #[test]
    fn decode_never_panics_on_arbitrary_headers(
        ch_bytes in arb_common_header(),
        rest in proptest::collection::vec(any::<u8>(), MAX_HEADER_LEN - CH_LEN),
        role in arb_role(),
        digests in proptest::option::of(arb_digests()),
        seal in any::<bool>(),
    ) {
        let ch = CommonHeader::parse(&ch_bytes);
        let Ok(l) = ch.layout(role, digests) else { return Ok(()) };
        let mut b = ch_bytes.to_vec();
        b.extend_from_slice(&rest[..l.header_total() - CH_LEN]);
        if seal && l.hdgst_len != 0 {
            let crc = crc32c(&b[..l.hlen]);
            b[l.hlen..l.hlen + 4].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok(Pdu::H2CData(d) | Pdu::C2HData(d)) = decode(&l, &b) {
            prop_assert_eq!(d.datal as usize, l.data_len);
            prop_assert!(!d.success || d.last);
        }
    }

    #[test]
    fn mutated_headers_are_rejected_or_re_encode_alike(
        case in arb_case(),
        flips in proptest::collection::vec((0usize..MAX_HEADER_LEN, 1u8..=255), 1..4),
        reseal in any::<bool>(),
    ) {
        let original = case.header.as_bytes();
        let hlen = usize::from(original[2]);
        let mut m = original.to_vec();
        for (i, x) in flips {
            let i = i % m.len();
            m[i] ^= x;
        }
        if reseal && m.len() > hlen {
            let crc = crc32c(&m[..hlen]);
            m[hlen..hlen + 4].copy_from_slice(&crc.to_le_bytes());
        }
        let ch = CommonHeader::parse(&m);
        let Ok(l) = ch.layout(case.role, case.digests) else { return Ok(()) };
        if l.header_total() > m.len() {
            // A longer header than the buffer holds: a stream reader would wait.
            return Ok(());
        }
        let Ok(pdu) = decode(&l, &m[..l.header_total()]) else { return Ok(()) };
        let r = encode_bytes(&pdu, case.role, case.digests, l.data_len);
        let rl = CommonHeader::parse(&r).layout(case.role, case.digests).expect("re-encoding is valid");
        prop_assert_eq!(rl, Layout { pad_len: 0, ..l });
        prop_assert_eq!(decode(&rl, &r), Ok(pdu));
        for i in 0..l.hlen {
            let mut mask = significant(l.pdu_type, i);
            if l.pad_len != 0 && (3..8).contains(&i) {
                // The encoder never pads: PDO and PLEN differ by the padding.
                mask = 0;
            }
            prop_assert_eq!(
                (m[i] ^ r[i]) & mask, 0,
                "byte {} of {:?}: mutated {:#04x}, re-encoded {:#04x}", i, l.pdu_type, m[i], r[i]
            );
        }
    }
}

#[test]
fn a_header_digest_catches_every_single_bit_flip() {
    let d = Digests { header: true, data: false };
    let h = encode_capsule_cmd(&Default::default(), 0, d);
    for bit in CH_LEN * 8..h.len() * 8 {
        let mut m = h.as_bytes().to_vec();
        m[bit / 8] ^= 1 << (bit % 8);
        let l = CommonHeader::parse(&m).layout(Role::Controller, Some(d)).unwrap();
        assert_eq!(decode(&l, &m).unwrap_err().fes, Fes::HeaderDigestError, "bit {bit}");
    }
}
