//! Splitting an NVMe/TCP byte stream into PDUs, incrementally and without allocating.
//!
//! TCP delivers bytes in whatever pieces the kernel hands over: a `recv` may end in
//! the middle of a common header, a header digest or a data digest, or hold several
//! PDUs at once. [`PduReader`] is the receive state machine that turns those pieces
//! into events, whatever their sizes:
//!
//! 1. it gathers the 8-byte common header and checks it with
//!    [`CommonHeader::layout`] (role, negotiated digests, lengths);
//! 2. it gathers the rest of the header and its digest and [`decode`]s it, yielding
//!    [`Event::Header`];
//! 3. it skips the padding up to PDO and yields the data as [`Event::Data`] ranges of
//!    the caller's own input buffer, so the caller copies each byte once, straight to
//!    its destination (or, having read exactly [`PduReader::bytes_wanted`] bytes into
//!    the destination, copies nothing);
//! 4. it checks the data digest over the data it passed through and yields
//!    [`Event::Digest`]. A data digest error is not fatal in NVMe/TCP: the command
//!    completes with a transport error status, so this is an event, not an `Err`.
//!
//! A fatal protocol error is returned as the [`TermError`] to put in the termination
//! request; the reader then stays failed (every later call returns the same error)
//! and [`PduReader::header_bytes`] gives the offending header to echo back.
//!
//! After an ICReq (controller side) or ICResp (host side) the reader waits for the
//! caller to decide the digests with [`PduReader::set_digests`]: on the controller the
//! digests are what its ICResp grants, not what the ICReq asked for.
//!
//! The reader holds only the largest header (132 bytes) and a few counters; it never
//! allocates and never copies data.

use std::ops::Range;

use crate::get_u32;
use crate::tcp::digest::crc32c_append;
use crate::tcp::pdu::{
    decode, CommonHeader, Digests, Layout, Pdu, PduType, Role, TermError, CH_LEN, DIGEST_LEN, MAX_HEADER_LEN,
};

/// What the reader found in the input.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A complete, checked header. `Layout` says how much padding, data and digest
    /// follow; `Data` and `Digest` events for this PDU come next.
    Header(Layout, Pdu),
    /// Data bytes of the current PDU: a range of the input slice passed to
    /// [`PduReader::feed`] in this call. A PDU's data may come in several events.
    Data(Range<usize>),
    /// The data digest of the current PDU was received; `ok` tells whether it
    /// matched the data.
    Digest {
        /// The received digest equals the CRC32C of the data.
        ok: bool,
    },
}

/// The outcome of one [`PduReader::feed`] call.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Step {
    /// Bytes of the input used; feed the rest again. When `event` is `None` this is
    /// the whole input.
    pub consumed: usize,
    /// The event found, if any.
    pub event: Option<Event>,
}

/// Where the reader is within the current PDU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Gathering the common header; `have` bytes of it so far (0 = between PDUs).
    Common { have: usize },
    /// Gathering the PDU-specific header and header digest; `have` bytes so far.
    Header { layout: Layout, have: usize },
    /// Skipping `left` bytes of padding; `data_len` bytes of data follow.
    Pad { left: usize, data_len: usize, ddgst: bool },
    /// Passing through `left` more data bytes.
    Data { left: usize, ddgst: bool },
    /// Gathering the data digest; `have` bytes so far.
    DataDigest { have: usize },
    /// An ICReq/ICResp was delivered; waiting for [`PduReader::set_digests`].
    AwaitDigests,
    /// A fatal error was delivered; the connection must be terminated.
    Failed(TermError),
}

/// Incremental NVMe/TCP receive state machine (see the module documentation).
#[derive(Clone, Debug)]
pub struct PduReader {
    role: Role,
    digests: Option<Digests>,
    state: State,
    /// The current (or offending) header; `header_len` bytes of it are valid.
    header: [u8; MAX_HEADER_LEN],
    header_len: usize,
    /// CRC32C of the data passed through so far (when a data digest follows).
    data_crc: u32,
    ddgst: [u8; DIGEST_LEN],
}

impl PduReader {
    /// A reader for a new connection: it expects ICReq (controller) or ICResp (host).
    pub fn new(role: Role) -> PduReader {
        PduReader {
            role,
            digests: None,
            state: State::Common { have: 0 },
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            data_crc: 0,
            ddgst: [0; DIGEST_LEN],
        }
    }

    /// A reader for a connection whose initialization already completed.
    pub fn with_digests(role: Role, digests: Digests) -> PduReader {
        PduReader { digests: Some(digests), ..PduReader::new(role) }
    }

    /// Sets the negotiated digests. Call it after an ICReq/ICResp header event (the
    /// reader waits for it), or before any input to skip initialization.
    ///
    /// # Panics
    /// If the reader is in the middle of a PDU or digests were already set.
    pub fn set_digests(&mut self, digests: Digests) {
        assert!(self.digests.is_none(), "digests are negotiated once");
        assert!(
            matches!(self.state, State::AwaitDigests | State::Common { have: 0 }),
            "digests change only between PDUs"
        );
        self.digests = Some(digests);
        if self.state == State::AwaitDigests {
            self.state = State::Common { have: 0 };
        }
    }

    /// The receiving side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The negotiated digests (`None` before initialization).
    pub fn digests(&self) -> Option<Digests> {
        self.digests
    }

    /// True between PDUs: no partial PDU is held.
    pub fn is_idle(&self) -> bool {
        self.state == State::Common { have: 0 }
    }

    /// True once a fatal error was reported.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// True after ICReq/ICResp until [`set_digests`](Self::set_digests).
    pub fn awaits_digests(&self) -> bool {
        self.state == State::AwaitDigests
    }

    /// The bytes of the current header gathered so far, or after an error the
    /// offending header: the data of the termination request to send.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header[..self.header_len]
    }

    /// Bytes needed before the next event (or, in padding, before the data ends):
    /// a caller may read exactly this many bytes, e.g. data straight into its final
    /// buffer. 0 when waiting for digests or failed.
    pub fn bytes_wanted(&self) -> usize {
        match self.state {
            State::Common { have } => CH_LEN - have,
            State::Header { layout, have } => layout.header_total() - have,
            State::Pad { left, data_len, .. } => left + data_len,
            State::Data { left, .. } => left,
            State::DataDigest { have } => DIGEST_LEN - have,
            State::AwaitDigests | State::Failed(_) => 0,
        }
    }

    /// Consumes bytes from `input` up to and including the next event.
    ///
    /// Returns the bytes consumed and the event, or the fatal error (also on every
    /// later call). With `event: None`, all of `input` was consumed and more is
    /// needed. `Data` ranges index into this call's `input`.
    ///
    /// # Panics
    /// If `input` is not empty while the reader waits for
    /// [`set_digests`](Self::set_digests).
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, TermError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let outcome = match self.state {
                State::Failed(e) => return Err(e),
                State::AwaitDigests => {
                    assert!(input.is_empty(), "set_digests must follow ICReq/ICResp");
                    return Ok(Step { consumed: 0, event: None });
                }
                _ if rest.is_empty() => return Ok(Step { consumed: pos, event: None }),
                State::Common { have } => self.on_common(rest, have),
                State::Header { layout, have } => self.on_header(rest, layout, have),
                State::Pad { left, data_len, ddgst } => self.on_pad(rest, left, data_len, ddgst),
                State::Data { left, ddgst } => self.on_data(rest, pos, left, ddgst),
                State::DataDigest { have } => self.on_digest(rest, have),
            };
            let (used, event) = outcome?;
            assert!(used <= rest.len(), "a handler never uses more than it was given");
            pos += used;
            if event.is_some() {
                return Ok(Step { consumed: pos, event });
            }
        }
    }

    fn fail(&mut self, e: TermError) -> Result<(usize, Option<Event>), TermError> {
        self.state = State::Failed(e);
        Err(e)
    }

    /// Copies up to `want` bytes of `rest` after the `have` header bytes held.
    fn gather(&mut self, rest: &[u8], have: usize, want: usize) -> usize {
        assert!(have <= want && want <= MAX_HEADER_LEN);
        let n = (want - have).min(rest.len());
        self.header[have..have + n].copy_from_slice(&rest[..n]);
        self.header_len = have + n;
        n
    }

    fn on_common(&mut self, rest: &[u8], have: usize) -> Result<(usize, Option<Event>), TermError> {
        let n = self.gather(rest, have, CH_LEN);
        if have + n < CH_LEN {
            self.state = State::Common { have: have + n };
            return Ok((n, None));
        }
        match CommonHeader::parse(&self.header).layout(self.role, self.digests) {
            Ok(layout) => {
                assert!(layout.header_total() <= MAX_HEADER_LEN);
                self.state = State::Header { layout, have: CH_LEN };
                Ok((n, None))
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_header(&mut self, rest: &[u8], layout: Layout, have: usize) -> Result<(usize, Option<Event>), TermError> {
        let total = layout.header_total();
        let n = self.gather(rest, have, total);
        if have + n < total {
            self.state = State::Header { layout, have: have + n };
            return Ok((n, None));
        }
        let pdu = match decode(&layout, &self.header[..total]) {
            Ok(pdu) => pdu,
            Err(e) => return self.fail(e),
        };
        let ddgst = layout.ddgst_len != 0;
        self.data_crc = 0;
        self.state = if layout.pad_len != 0 {
            State::Pad { left: layout.pad_len, data_len: layout.data_len, ddgst }
        } else if layout.data_len != 0 {
            State::Data { left: layout.data_len, ddgst }
        } else if matches!(layout.pdu_type, PduType::ICReq | PduType::ICResp) {
            State::AwaitDigests
        } else {
            State::Common { have: 0 }
        };
        Ok((n, Some(Event::Header(layout, pdu))))
    }

    fn on_pad(
        &mut self,
        rest: &[u8],
        left: usize,
        data_len: usize,
        ddgst: bool,
    ) -> Result<(usize, Option<Event>), TermError> {
        let n = left.min(rest.len());
        // Layout guarantees data after padding: PDO never exceeds PLEN minus data.
        assert!(data_len > 0, "padding only precedes data");
        self.state = if n < left {
            State::Pad { left: left - n, data_len, ddgst }
        } else {
            State::Data { left: data_len, ddgst }
        };
        Ok((n, None))
    }

    fn on_data(
        &mut self,
        rest: &[u8],
        pos: usize,
        left: usize,
        ddgst: bool,
    ) -> Result<(usize, Option<Event>), TermError> {
        let n = left.min(rest.len());
        assert!(n > 0, "called with input");
        if ddgst {
            self.data_crc = crc32c_append(self.data_crc, &rest[..n]);
        }
        self.state = match (n < left, ddgst) {
            (true, _) => State::Data { left: left - n, ddgst },
            (false, true) => State::DataDigest { have: 0 },
            (false, false) => State::Common { have: 0 },
        };
        Ok((n, Some(Event::Data(pos..pos + n))))
    }

    fn on_digest(&mut self, rest: &[u8], have: usize) -> Result<(usize, Option<Event>), TermError> {
        let n = (DIGEST_LEN - have).min(rest.len());
        self.ddgst[have..have + n].copy_from_slice(&rest[..n]);
        if have + n < DIGEST_LEN {
            self.state = State::DataDigest { have: have + n };
            return Ok((n, None));
        }
        let ok = get_u32(&self.ddgst, 0) == self.data_crc;
        self.state = State::Common { have: 0 };
        Ok((n, Some(Event::Digest { ok })))
    }
}

#[cfg(test)]
// Test constants are small; a truncation would fail an assertion.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use crate::nvme::{Command, Completion, Status};
    use crate::tcp::digest::crc32c;
    use crate::tcp::pdu::*;

    const BOTH: Digests = Digests { header: true, data: true };

    fn capsule_with_data(data: &[u8], d: Digests) -> Vec<u8> {
        let cmd = Command { opcode: 1, cid: 9, nsid: 1, ..Default::default() };
        let mut v = encode_capsule_cmd(&cmd, data.len(), d).as_bytes().to_vec();
        v.extend_from_slice(data);
        if d.data {
            v.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        v
    }

    /// Feeds `input` in pieces of `chunk` bytes; returns events with data gathered.
    fn run(r: &mut PduReader, input: &[u8], chunk: usize) -> (Vec<Event>, Vec<u8>) {
        let (mut events, mut data) = (Vec::new(), Vec::new());
        for piece in input.chunks(chunk) {
            let mut off = 0;
            while off < piece.len() {
                let step = r.feed(&piece[off..]).expect("valid stream");
                if let Some(Event::Data(range)) = &step.event {
                    data.extend_from_slice(&piece[off + range.start..off + range.end]);
                }
                match step.event {
                    Some(Event::Data(_)) | None => {}
                    Some(e) => events.push(e),
                }
                off += step.consumed;
            }
        }
        (events, data)
    }

    #[test]
    fn byte_at_a_time_capsule_with_digests() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let stream = capsule_with_data(&data, BOTH);
        for chunk in [1, 3, 7, 76, 4096] {
            let mut r = PduReader::with_digests(Role::Controller, BOTH);
            let (events, got) = run(&mut r, &stream, chunk);
            assert_eq!(events.len(), 2, "header and digest");
            assert!(matches!(events[0], Event::Header(l, Pdu::CapsuleCmd(_)) if l.data_len == 1000));
            assert_eq!(events[1], Event::Digest { ok: true });
            assert_eq!(got, data);
            assert!(r.is_idle());
        }
    }

    #[test]
    fn bad_data_digest_is_an_event_not_an_error() {
        let mut stream = capsule_with_data(b"hello world!", BOTH);
        let last = stream.len() - 1;
        stream[last] ^= 0xff;
        let mut r = PduReader::with_digests(Role::Controller, BOTH);
        let (events, _) = run(&mut r, &stream, 5);
        assert_eq!(events[1], Event::Digest { ok: false });
        assert!(r.is_idle());
    }

    #[test]
    fn initialization_waits_for_digests() {
        let req = ICReq { pfv: 0, hpda: 0, digests: BOTH, maxr2t: 0 };
        let mut stream = encode_icreq(&req).as_bytes().to_vec();
        stream.extend(capsule_with_data(b"abcd", Digests::default()));
        let mut r = PduReader::new(Role::Controller);
        let step = r.feed(&stream).unwrap();
        assert_eq!(step.consumed, 128);
        assert!(matches!(step.event, Some(Event::Header(_, Pdu::ICReq(got))) if got == req));
        assert!(r.awaits_digests());
        assert_eq!(r.bytes_wanted(), 0);
        // The controller grants no digests although the host asked for both.
        r.set_digests(Digests::default());
        let step = r.feed(&stream[128..]).unwrap();
        assert_eq!(step.consumed, 72);
        let step = r.feed(&stream[200..]).unwrap();
        assert_eq!(step, Step { consumed: 4, event: Some(Event::Data(0..4)) });
        assert!(r.is_idle());
    }

    #[test]
    fn padding_is_skipped() {
        let d = Digests::default();
        let hdr = DataHeader { cccid: 1, ttag: 0, datao: 0, datal: 4, last: true, success: false };
        let mut stream = encode_c2h_data(&hdr, d).as_bytes().to_vec();
        stream[3] = 32; // PDO: 8 bytes of padding after the 24-byte header
        put_u32_le(&mut stream, 4, 24 + 8 + 4);
        stream.extend_from_slice(&[0xee; 8]);
        stream.extend_from_slice(b"DATA");
        let mut r = PduReader::with_digests(Role::Host, d);
        let step = r.feed(&stream).unwrap();
        assert!(matches!(step.event, Some(Event::Header(l, _)) if l.pad_len == 8));
        assert_eq!(r.bytes_wanted(), 12);
        let step = r.feed(&stream[24..]).unwrap();
        assert_eq!(step, Step { consumed: 12, event: Some(Event::Data(8..12)) });
    }

    fn put_u32_le(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn errors_are_sticky_and_keep_the_offending_header() {
        let d = Digests { header: true, data: false };
        let cqe = Completion::new(3, Status::SUCCESS);
        let mut stream = encode_capsule_resp(&cqe, d).as_bytes().to_vec();
        stream[10] ^= 1; // corrupt the CQE under the header digest
        let mut r = PduReader::with_digests(Role::Host, d);
        assert_eq!(r.feed(&stream[..5]).unwrap(), Step { consumed: 5, event: None });
        let e = r.feed(&stream[5..]).unwrap_err();
        assert_eq!(e.fes, Fes::HeaderDigestError);
        assert_eq!(r.header_bytes(), &stream[..]);
        assert!(r.is_failed());
        assert_eq!(r.feed(b"more").unwrap_err(), e);
    }

    #[test]
    fn wrong_pdu_for_the_role_fails_at_the_common_header() {
        let r2t = encode_r2t(&R2t { cccid: 1, ttag: 1, r2to: 0, r2tl: 8 }, Digests::default());
        let mut r = PduReader::with_digests(Role::Controller, Digests::default());
        assert_eq!(r.feed(r2t.as_bytes()).unwrap_err(), TermError::field(0));
        assert_eq!(r.header_bytes().len(), CH_LEN);
    }
}
