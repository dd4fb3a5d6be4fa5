//! Fuzz-style harness for `tcp::stream::PduReader`, runnable on stable Rust.
//!
//! cargo-fuzz needs nightly; this harness gets most of its value with proptest
//! instead: byte streams built from valid PDUs of random types, sizes, padding and
//! digests, then mutated and truncated, plus pure noise, are fed to the reader in
//! random chunk sizes. Each run is checked against
//!
//! - the same stream fed in one piece (chunking never changes the result), and
//! - a plain reference splitter over the whole buffer written here from the codec's
//!   primitives (common header → layout → header → decode → data → digest), so the
//!   incremental state machine agrees with the obvious non-incremental reading.
//!
//! Unmutated streams must also decode to exactly the PDUs generated, digests good.
//!
//! CI runs it briefly; raise `PROPTEST_CASES` (default 2000) for a longer soak.
// Test constants are small; a truncation would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use common::*;
use proptest::prelude::*;
use quire_wire::tcp::digest::crc32c;
use quire_wire::tcp::stream::{Event, PduReader};
use quire_wire::tcp::*;

/// What the stream contained, with data gathered so that chunking cannot show.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Seen {
    Header(Layout, Pdu),
    Data(Vec<u8>),
    Digest(bool),
    Error(TermError),
}

fn push_data(out: &mut Vec<Seen>, bytes: &[u8]) {
    if let Some(Seen::Data(v)) = out.last_mut() {
        v.extend_from_slice(bytes);
    } else {
        out.push(Seen::Data(bytes.to_vec()));
    }
}

/// The digests a side adopts after its ICReq/ICResp: in these tests the controller
/// grants what the host asked for, and the host takes what the ICResp says.
fn negotiated(pdu: &Pdu) -> Option<Digests> {
    match pdu {
        Pdu::ICReq(req) => Some(req.digests),
        Pdu::ICResp(resp) => Some(resp.digests),
        _ => None,
    }
}

fn new_reader(role: Role, initial: Option<Digests>) -> PduReader {
    match initial {
        Some(d) => PduReader::with_digests(role, d),
        None => PduReader::new(role),
    }
}

/// Feeds `bytes` to a reader in pieces whose sizes cycle through `chunks`.
fn drive(role: Role, initial: Option<Digests>, bytes: &[u8], chunks: &[usize]) -> Vec<Seen> {
    let mut r = new_reader(role, initial);
    let mut out = Vec::new();
    let mut start = 0;
    for &size in chunks.iter().cycle() {
        if start >= bytes.len() {
            break;
        }
        let piece = &bytes[start..(start + size.max(1)).min(bytes.len())];
        start += piece.len();
        let mut off = 0;
        while off < piece.len() {
            let input = &piece[off..];
            let step = match r.feed(input) {
                Ok(step) => step,
                Err(e) => {
                    assert_eq!(r.feed(b"x"), Err(e), "errors are sticky");
                    assert!(!r.header_bytes().is_empty(), "the offending header is kept");
                    out.push(Seen::Error(e));
                    return out;
                }
            };
            assert!(step.consumed <= input.len());
            match step.event {
                None => assert_eq!(step.consumed, input.len(), "no event: all input used"),
                Some(Event::Data(range)) => {
                    assert_eq!(range.end, step.consumed, "data ends the step");
                    assert!(!range.is_empty());
                    push_data(&mut out, &input[range]);
                }
                Some(Event::Header(layout, pdu)) => {
                    assert!(step.consumed > 0);
                    if let Some(d) = negotiated(&pdu) {
                        assert!(r.awaits_digests());
                        r.set_digests(d);
                    }
                    out.push(Seen::Header(layout, pdu));
                }
                Some(Event::Digest { ok }) => out.push(Seen::Digest(ok)),
            }
            off += step.consumed;
        }
    }
    out
}

/// The obvious whole-buffer reading of the same stream.
fn reference(role: Role, initial: Option<Digests>, bytes: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut digests = initial;
    let mut pos = 0;
    while bytes.len() - pos >= CH_LEN {
        let ch = CommonHeader::parse(&bytes[pos..]);
        let layout = match ch.layout(role, digests) {
            Ok(l) => l,
            Err(e) => {
                out.push(Seen::Error(e));
                break;
            }
        };
        let total = layout.header_total();
        if bytes.len() - pos < total {
            break;
        }
        let pdu = match decode(&layout, &bytes[pos..pos + total]) {
            Ok(p) => p,
            Err(e) => {
                out.push(Seen::Error(e));
                break;
            }
        };
        out.push(Seen::Header(layout, pdu));
        if let Some(d) = negotiated(&pdu) {
            digests = Some(d);
        }
        pos += total;
        if bytes.len() - pos < layout.pad_len {
            break;
        }
        pos += layout.pad_len;
        let n = layout.data_len.min(bytes.len() - pos);
        if n > 0 {
            out.push(Seen::Data(bytes[pos..pos + n].to_vec()));
        }
        let data = &bytes[pos..pos + n];
        pos += n;
        if n < layout.data_len {
            break;
        }
        if layout.ddgst_len != 0 {
            if bytes.len() - pos < DIGEST_LEN {
                break;
            }
            let got = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap());
            out.push(Seen::Digest(got == crc32c(data)));
            pos += DIGEST_LEN;
        }
    }
    out
}

/// One PDU to put in a stream.
#[derive(Clone, Debug)]
struct Spec {
    kind: u8,
    cid: u16,
    word: u32,
    data_len: usize,
    pad: usize,
    seed: u8,
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (any::<u8>(), any::<u16>(), any::<u32>(), 0usize..=600, 0usize..=32, any::<u8>())
        .prop_map(|(kind, cid, word, data_len, pad, seed)| Spec { kind, cid, word, data_len, pad, seed })
}

/// A stream for `role` to receive and what reading it must give.
#[derive(Clone, Debug)]
struct Stream {
    role: Role,
    initial: Option<Digests>,
    bytes: Vec<u8>,
    expect: Vec<Seen>,
}

fn data_for(spec: &Spec, len: usize) -> Vec<u8> {
    (0..len).map(|i| spec.seed.wrapping_add((i as u8).wrapping_mul(31))).collect()
}

/// Appends one PDU built from `spec` that `role` may receive with digests `d`.
fn append_pdu(s: &mut Stream, spec: &Spec, d: Digests) {
    let data_pdu = |len: usize| len.max(1);
    let (header, data): (Vec<u8>, Vec<u8>) = match (s.role, spec.kind % 4) {
        (Role::Controller, 0) => {
            let cmd =
                quire_wire::nvme::Command { opcode: spec.seed, cid: spec.cid, nsid: spec.word, ..Default::default() };
            let data = data_for(spec, spec.data_len);
            (encode_capsule_cmd(&cmd, data.len(), d).as_bytes().to_vec(), data)
        }
        (Role::Controller, 1 | 2) => {
            let data = data_for(spec, data_pdu(spec.data_len));
            let hdr = DataHeader {
                cccid: spec.cid,
                ttag: spec.cid ^ 0x5a5a,
                datao: spec.word,
                datal: data.len() as u32,
                last: spec.seed & 1 == 1,
                success: false,
            };
            (encode_h2c_data(&hdr, d).as_bytes().to_vec(), data)
        }
        (Role::Host, 0) => {
            let data = data_for(spec, data_pdu(spec.data_len));
            let success = spec.seed & 2 == 2;
            let hdr = DataHeader {
                cccid: spec.cid,
                ttag: 0,
                datao: spec.word,
                datal: data.len() as u32,
                last: success || spec.seed & 1 == 1,
                success,
            };
            (encode_c2h_data(&hdr, d).as_bytes().to_vec(), data)
        }
        (Role::Host, 1) => {
            let mut cqe = quire_wire::nvme::Completion::new(spec.cid, Default::default());
            cqe.dw0 = spec.word;
            (encode_capsule_resp(&cqe, d).as_bytes().to_vec(), Vec::new())
        }
        (Role::Host, 2) => {
            let r = R2t { cccid: spec.cid, ttag: 7, r2to: spec.word, r2tl: 4096 };
            (encode_r2t(&r, d).as_bytes().to_vec(), Vec::new())
        }
        (receiver, _) => {
            // A termination request carrying part of a header, no digests.
            let len = spec.data_len % (TERM_REQ_MAX_DATA + 1);
            let h = encode_term_req(peer(receiver), Fes::PduSequenceError, spec.word, len);
            (h.as_bytes().to_vec(), data_for(spec, len))
        }
    };
    let is_term = header[0] == PduType::C2HTermReq as u8 || header[0] == PduType::H2CTermReq as u8;
    // Termination requests carry neither padding nor a data digest.
    let has_ddgst = d.data && !data.is_empty() && !is_term;
    let pad = if is_term { 0 } else { spec.pad };
    let pdu_bytes = full_pdu(&header, pad, &data, has_ddgst);
    let ch = CommonHeader::parse(&pdu_bytes);
    let layout = ch.layout(s.role, Some(d)).expect("generated PDU is valid");
    assert_eq!(layout.header_total() + layout.after_header(), pdu_bytes.len());
    assert_eq!(layout.pad_len, if data.is_empty() { 0 } else { pad });
    let pdu = decode(&layout, &pdu_bytes[..layout.header_total()]).expect("decodes");
    s.expect.push(Seen::Header(layout, pdu));
    if !data.is_empty() {
        s.expect.push(Seen::Data(data));
    }
    if has_ddgst {
        s.expect.push(Seen::Digest(true));
    }
    s.bytes.extend(pdu_bytes);
}

fn arb_stream() -> impl Strategy<Value = Stream> {
    let role = prop_oneof![Just(Role::Controller), Just(Role::Host)];
    (role, arb_digests(), any::<bool>(), proptest::collection::vec(arb_spec(), 0..8)).prop_map(
        |(role, d, with_ic, specs)| {
            let mut s = Stream { role, initial: Some(d), bytes: Vec::new(), expect: Vec::new() };
            if with_ic {
                s.initial = None;
                let ic = match role {
                    Role::Controller => encode_icreq(&ICReq { pfv: 0, hpda: 0, digests: d, maxr2t: 0 }),
                    Role::Host => encode_icresp(&ICResp { pfv: 0, cpda: 0, digests: d, maxh2cdata: 8192 }),
                };
                let l = CommonHeader::parse(ic.as_bytes()).layout(role, None).unwrap();
                s.expect.push(Seen::Header(l, decode(&l, ic.as_bytes()).unwrap()));
                s.bytes.extend_from_slice(ic.as_bytes());
            }
            for spec in &specs {
                append_pdu(&mut s, spec, d);
            }
            s
        },
    )
}

/// A stream, possibly damaged, or plain noise.
fn arb_damaged() -> impl Strategy<Value = (Role, Option<Digests>, Vec<u8>)> {
    let damaged = (
        arb_stream(),
        proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
        proptest::option::of(any::<usize>()),
    )
        .prop_map(|(s, flips, cut)| {
            let mut b = s.bytes;
            if !b.is_empty() {
                for (i, x) in flips {
                    let i = i % b.len();
                    b[i] ^= x;
                }
                if let Some(c) = cut {
                    b.truncate(c % (b.len() + 1));
                }
            }
            (s.role, s.initial, b)
        });
    let noise = (
        prop_oneof![Just(Role::Controller), Just(Role::Host)],
        proptest::option::of(arb_digests()),
        proptest::collection::vec(any::<u8>(), 0..600),
    );
    prop_oneof![4 => damaged, 1 => noise]
}

fn arb_chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1usize..=8, 1usize..=200, 1usize..=4096], 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn chunking_never_changes_the_result(
        (role, initial, bytes) in arb_damaged(),
        chunks in arb_chunks(),
    ) {
        let whole = drive(role, initial, &bytes, &[bytes.len().max(1)]);
        prop_assert_eq!(&drive(role, initial, &bytes, &chunks), &whole);
        prop_assert_eq!(&drive(role, initial, &bytes, &[1]), &whole);
        prop_assert_eq!(&reference(role, initial, &bytes), &whole);
    }

    #[test]
    fn valid_streams_read_back_exactly(s in arb_stream(), chunks in arb_chunks()) {
        let seen = drive(s.role, s.initial, &s.bytes, &chunks);
        prop_assert_eq!(&seen, &s.expect);
        // And the reader ends between PDUs.
        let mut r = new_reader(s.role, s.initial);
        let mut off = 0;
        while off < s.bytes.len() {
            let step = r.feed(&s.bytes[off..]).expect("valid stream");
            if let Some(Event::Header(_, pdu)) = step.event {
                if let Some(d) = negotiated(&pdu) {
                    r.set_digests(d);
                }
            }
            off += step.consumed;
        }
        prop_assert!(r.is_idle());
        prop_assert_eq!(r.bytes_wanted(), CH_LEN);
    }
}
