//! NVMe/TCP PDU headers: decode with validation, encode for sending.
//!
//! The receive side works in two steps, so that payloads can be read straight into
//! their final buffers: [`CommonHeader::parse`] reads the 8-byte common header and
//! [`CommonHeader::layout`] checks it against the receiver's role and the negotiated
//! digests, yielding where the rest of the header, the padding, the data and the data
//! digest sit. Once the whole header (and its digest) is in memory, [`decode`] turns it
//! into a [`Pdu`]. Every rejection carries the termination PDU's fatal error status
//! (FES) and field offset (FEI), so that the caller can send the right C2HTermReq or
//! H2CTermReq and close only that connection.

use crate::nvme::{Command, Completion};
use crate::tcp::digest::crc32c;
use crate::{get_u16, get_u32, put_u16, put_u32};

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// Header length of ICReq and ICResp.
pub const IC_HLEN: usize = 128;
/// Header length of a CapsuleCmd PDU (common header + SQE).
pub const CAPSULE_CMD_HLEN: usize = 72;
/// Header length of a CapsuleResp PDU (common header + CQE).
pub const CAPSULE_RESP_HLEN: usize = 24;
/// Header length of H2CData, C2HData, R2T and termination requests.
pub const DATA_HLEN: usize = 24;
/// Largest header this codec produces or accepts, digest included.
pub const MAX_HEADER_LEN: usize = IC_HLEN + DIGEST_LEN;
/// Largest amount of data a termination request may carry back (the offending header).
pub const TERM_REQ_MAX_DATA: usize = 152;
/// Largest PDU length any party may send to us (guards plen against nonsense).
pub const PLEN_MAX: u32 = 16 << 20;
/// Smallest MAXH2CDATA an ICResp may announce.
pub const ICRESP_MAXH2CDATA_MIN: u32 = 4096;

/// PDU flag: a header digest follows the header.
pub const FLAG_HDGST: u8 = 0x01;
/// PDU flag: a data digest follows the data.
pub const FLAG_DDGST: u8 = 0x02;
/// PDU flag: last PDU of a data transfer (H2CData, C2HData).
pub const FLAG_LAST_PDU: u8 = 0x04;
/// PDU flag (C2HData): the command succeeded and no CapsuleResp follows.
pub const FLAG_SUCCESS: u8 = 0x08;

/// ICReq/ICResp DGST bit: header digest enabled.
pub const DGST_HDGST: u8 = 0x01;
/// ICReq/ICResp DGST bit: data digest enabled.
pub const DGST_DDGST: u8 = 0x02;

/// PDU types.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PduType {
    /// Initialize connection request (host to controller).
    ICReq = 0x00,
    /// Initialize connection response (controller to host).
    ICResp = 0x01,
    /// Host to controller termination request.
    H2CTermReq = 0x02,
    /// Controller to host termination request.
    C2HTermReq = 0x03,
    /// Command capsule.
    CapsuleCmd = 0x04,
    /// Response capsule.
    CapsuleResp = 0x05,
    /// Host to controller data.
    H2CData = 0x06,
    /// Controller to host data.
    C2HData = 0x07,
    /// Ready to transfer.
    R2T = 0x09,
}

impl PduType {
    /// The type for a wire value, if it is one.
    pub fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::ICReq,
            0x01 => PduType::ICResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// The fixed header length of this PDU type.
    pub fn hlen(self) -> usize {
        match self {
            PduType::ICReq | PduType::ICResp => IC_HLEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            PduType::CapsuleResp => CAPSULE_RESP_HLEN,
            PduType::H2CTermReq | PduType::C2HTermReq | PduType::H2CData | PduType::C2HData | PduType::R2T => DATA_HLEN,
        }
    }

    /// Whether a header digest covers this PDU type once digests are on
    /// (never for ICReq/ICResp and termination requests).
    pub fn has_hdgst(self) -> bool {
        matches!(self, PduType::CapsuleCmd | PduType::CapsuleResp | PduType::H2CData | PduType::C2HData | PduType::R2T)
    }

    /// Whether this PDU type may carry data covered by a data digest.
    pub fn has_ddgst(self) -> bool {
        matches!(self, PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData)
    }
}

/// Fatal error status of a termination request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u16)]
pub enum Fes {
    /// Invalid PDU header field (FEI = byte offset of the field).
    InvalidHeaderField = 0x01,
    /// PDU sequence error (a PDU not valid in the connection's state).
    PduSequenceError = 0x02,
    /// Header digest error.
    HeaderDigestError = 0x03,
    /// Data transfer out of range (offset or length beyond the command's).
    DataTransferOutOfRange = 0x04,
    /// Data transfer limit exceeded (R2T limit or MAXH2CDATA).
    DataTransferLimitExceeded = 0x05,
    /// Unsupported parameter (FEI = byte offset of the field).
    UnsupportedParameter = 0x06,
}

impl Fes {
    /// The FES for a wire value.
    pub fn from_u16(v: u16) -> Option<Fes> {
        Some(match v {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::PduSequenceError,
            0x03 => Fes::HeaderDigestError,
            0x04 => Fes::DataTransferOutOfRange,
            0x05 => Fes::DataTransferLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// Why a received PDU is rejected: the termination request to send back.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("fatal NVMe/TCP error {fes:?} at header byte {fei}")]
pub struct TermError {
    /// Fatal error status.
    pub fes: Fes,
    /// Fatal error information: byte offset of the field in error, where it applies.
    pub fei: u32,
}

impl TermError {
    /// An error in the header field at byte offset `fei`.
    pub fn field(fei: u32) -> TermError {
        TermError { fes: Fes::InvalidHeaderField, fei }
    }

    /// A PDU that is not valid in the connection's state.
    pub fn sequence() -> TermError {
        TermError { fes: Fes::PduSequenceError, fei: 0 }
    }

    /// A header digest mismatch.
    pub fn header_digest() -> TermError {
        TermError { fes: Fes::HeaderDigestError, fei: 0 }
    }

    /// Data offset or length outside the command's transfer.
    pub fn out_of_range(fei: u32) -> TermError {
        TermError { fes: Fes::DataTransferOutOfRange, fei }
    }

    /// A limit exceeded (MAXH2CDATA, R2T).
    pub fn limit(fei: u32) -> TermError {
        TermError { fes: Fes::DataTransferLimitExceeded, fei }
    }

    /// An unsupported parameter at byte offset `fei`.
    pub fn unsupported(fei: u32) -> TermError {
        TermError { fes: Fes::UnsupportedParameter, fei }
    }
}

/// Which side receives: decides which PDU types are acceptable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// The controller (target) side: receives ICReq, CapsuleCmd, H2CData, H2CTermReq.
    Controller,
    /// The host (initiator) side: receives ICResp, CapsuleResp, C2HData, R2T, C2HTermReq.
    Host,
}

/// Digests negotiated by ICReq/ICResp.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Digests {
    /// Header digests on.
    pub header: bool,
    /// Data digests on.
    pub data: bool,
}

/// The 8-byte common header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommonHeader {
    /// PDU type (raw).
    pub pdu_type: u8,
    /// Flags.
    pub flags: u8,
    /// Header length.
    pub hlen: u8,
    /// PDU data offset (0 if no data).
    pub pdo: u8,
    /// Total PDU length.
    pub plen: u32,
}

/// Where the parts of a PDU lie, measured from its first byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Layout {
    /// PDU type.
    pub pdu_type: PduType,
    /// Header length (without digest).
    pub hlen: usize,
    /// Header digest length (0 or 4).
    pub hdgst_len: usize,
    /// Padding between the header digest and the data.
    pub pad_len: usize,
    /// Data length.
    pub data_len: usize,
    /// Data digest length (0 or 4).
    pub ddgst_len: usize,
}

impl Layout {
    /// Bytes of header plus header digest.
    pub fn header_total(&self) -> usize {
        self.hlen + self.hdgst_len
    }

    /// Bytes from the end of the header digest to the end of the PDU.
    pub fn after_header(&self) -> usize {
        self.pad_len + self.data_len + self.ddgst_len
    }
}

impl CommonHeader {
    /// Decodes the common header from the first 8 bytes of `b`.
    pub fn parse(b: &[u8]) -> CommonHeader {
        assert!(b.len() >= CH_LEN);
        CommonHeader { pdu_type: b[0], flags: b[1], hlen: b[2], pdo: b[3], plen: get_u32(b, 4) }
    }

    /// Encodes the common header into the first 8 bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        put_u32(b, 4, self.plen);
    }

    /// Checks the common header for a receiver in `role` with `digests` negotiated
    /// (`None` before ICReq/ICResp completed) and computes the PDU's layout.
    pub fn layout(&self, role: Role, digests: Option<Digests>) -> Result<Layout, TermError> {
        let pdu_type = PduType::from_u8(self.pdu_type).ok_or(TermError::field(0))?;
        let expected = match role {
            Role::Controller => {
                matches!(pdu_type, PduType::ICReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData)
            }
            Role::Host => matches!(
                pdu_type,
                PduType::ICResp | PduType::C2HTermReq | PduType::CapsuleResp | PduType::C2HData | PduType::R2T
            ),
        };
        if !expected {
            return Err(TermError::field(0));
        }
        let is_ic = matches!(pdu_type, PduType::ICReq | PduType::ICResp);
        let is_term = matches!(pdu_type, PduType::H2CTermReq | PduType::C2HTermReq);
        // Before initialization only ICReq/ICResp (or a termination) is valid; after
        // it, never again.
        match digests {
            None if !is_ic && !is_term => return Err(TermError::sequence()),
            Some(_) if is_ic => return Err(TermError::sequence()),
            _ => {}
        }
        let hlen = usize::from(self.hlen);
        if hlen != pdu_type.hlen() {
            return Err(TermError::field(2));
        }
        let plen = self.plen as usize;
        if self.plen > PLEN_MAX || plen < hlen {
            return Err(TermError::field(4));
        }
        let digests = digests.unwrap_or_default();
        let hdgst_len = if pdu_type.has_hdgst() && digests.header { DIGEST_LEN } else { 0 };
        if (self.flags & FLAG_HDGST != 0) != (hdgst_len != 0) {
            return Err(TermError::field(1));
        }
        if is_ic {
            if plen != IC_HLEN || self.pdo != 0 {
                return Err(TermError::field(if plen != IC_HLEN { 4 } else { 3 }));
            }
            return Ok(Layout { pdu_type, hlen, hdgst_len: 0, pad_len: 0, data_len: 0, ddgst_len: 0 });
        }
        if is_term {
            let data_len = plen - hlen;
            if data_len > TERM_REQ_MAX_DATA {
                return Err(TermError::field(4));
            }
            return Ok(Layout { pdu_type, hlen, hdgst_len: 0, pad_len: 0, data_len, ddgst_len: 0 });
        }
        let header_total = hlen + hdgst_len;
        if plen == header_total {
            // No data: PDO must be 0 and no data digest flag.
            if self.pdo != 0 {
                return Err(TermError::field(3));
            }
            if self.flags & FLAG_DDGST != 0 {
                return Err(TermError::field(1));
            }
            return Ok(Layout { pdu_type, hlen, hdgst_len, pad_len: 0, data_len: 0, ddgst_len: 0 });
        }
        if !pdu_type.has_ddgst() {
            return Err(TermError::field(4));
        }
        let ddgst_len = if digests.data { DIGEST_LEN } else { 0 };
        if (self.flags & FLAG_DDGST != 0) != (ddgst_len != 0) {
            return Err(TermError::field(1));
        }
        let pdo = usize::from(self.pdo);
        if pdo < header_total || pdo > plen {
            return Err(TermError::field(3));
        }
        let data_len = plen.checked_sub(pdo + ddgst_len).filter(|&n| n > 0).ok_or(TermError::field(4))?;
        Ok(Layout { pdu_type, hlen, hdgst_len, pad_len: pdo - header_total, data_len, ddgst_len })
    }
}

/// ICReq fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ICReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (0-based, in dwords).
    pub hpda: u8,
    /// Digests the host asks for.
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0-based.
    pub maxr2t: u32,
}

/// ICResp fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ICResp {
    /// PDU format version (0).
    pub pfv: u16,
    /// Controller PDU data alignment (0-based, in dwords).
    pub cpda: u8,
    /// Digests enabled.
    pub digests: Digests,
    /// Largest H2CData PDU data the controller accepts, in bytes.
    pub maxh2cdata: u32,
}

/// Fields of H2CData and C2HData headers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataHeader {
    /// Command capsule CID of the transfer.
    pub cccid: u16,
    /// Transfer tag from the R2T (H2CData only).
    pub ttag: u16,
    /// Offset of this PDU's data in the command's transfer.
    pub datao: u32,
    /// Length of this PDU's data.
    pub datal: u32,
    /// Last PDU of the transfer.
    pub last: bool,
    /// (C2HData) command succeeded, no CapsuleResp follows.
    pub success: bool,
}

/// Fields of an R2T.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct R2t {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag the host echoes in its H2CData PDUs.
    pub ttag: u16,
    /// Offset of the requested data.
    pub r2to: u32,
    /// Length of the requested data.
    pub r2tl: u32,
}

/// A decoded PDU header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pdu {
    /// Initialize connection request.
    ICReq(ICReq),
    /// Initialize connection response.
    ICResp(ICResp),
    /// Termination request (either direction).
    TermReq {
        /// Fatal error status (raw: an unknown value is still reported).
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// Command capsule (the SQE).
    CapsuleCmd(Command),
    /// Response capsule (the CQE).
    CapsuleResp(Completion),
    /// Host to controller data.
    H2CData(DataHeader),
    /// Controller to host data.
    C2HData(DataHeader),
    /// Ready to transfer.
    R2T(R2t),
}

/// Decodes a complete header `b` (its first `layout.hlen` bytes are the header, then
/// the header digest when `layout.hdgst_len` is 4), checking the header digest.
pub fn decode(layout: &Layout, b: &[u8]) -> Result<Pdu, TermError> {
    assert!(b.len() >= layout.header_total());
    let h = &b[..layout.hlen];
    if layout.hdgst_len != 0 {
        let got = get_u32(b, layout.hlen);
        if got != crc32c(h) {
            return Err(TermError::header_digest());
        }
    }
    let flags = h[1];
    Ok(match layout.pdu_type {
        PduType::ICReq => {
            let pfv = get_u16(h, 8);
            if pfv != 0 {
                return Err(TermError::unsupported(8));
            }
            let hpda = h[10];
            if hpda > 31 {
                return Err(TermError::field(10));
            }
            Pdu::ICReq(ICReq {
                pfv,
                hpda,
                digests: Digests { header: h[11] & DGST_HDGST != 0, data: h[11] & DGST_DDGST != 0 },
                maxr2t: get_u32(h, 12),
            })
        }
        PduType::ICResp => {
            let pfv = get_u16(h, 8);
            if pfv != 0 {
                return Err(TermError::unsupported(8));
            }
            let cpda = h[10];
            if cpda > 31 {
                return Err(TermError::field(10));
            }
            // MAXH2CDATA is at least 4096 and a multiple of 4 (NVMe/TCP 1.0, ICResp).
            let maxh2cdata = get_u32(h, 12);
            if maxh2cdata < ICRESP_MAXH2CDATA_MIN || !maxh2cdata.is_multiple_of(4) {
                return Err(TermError::field(12));
            }
            Pdu::ICResp(ICResp {
                pfv,
                cpda,
                digests: Digests { header: h[11] & DGST_HDGST != 0, data: h[11] & DGST_DDGST != 0 },
                maxh2cdata,
            })
        }
        PduType::H2CTermReq | PduType::C2HTermReq => Pdu::TermReq { fes: get_u16(h, 8), fei: get_u32(h, 10) },
        PduType::CapsuleCmd => {
            let mut sqe = [0u8; 64];
            sqe.copy_from_slice(&h[8..72]);
            Pdu::CapsuleCmd(Command::from_bytes(&sqe))
        }
        PduType::CapsuleResp => {
            let mut cqe = [0u8; 16];
            cqe.copy_from_slice(&h[8..24]);
            Pdu::CapsuleResp(Completion::from_bytes(&cqe))
        }
        PduType::H2CData | PduType::C2HData => {
            let is_h2c = layout.pdu_type == PduType::H2CData;
            // TTAG (bytes 10..12) and the SUCCESS flag exist only in one direction
            // each; in the other they are reserved and must not leak into the result.
            let d = DataHeader {
                cccid: get_u16(h, 8),
                ttag: if is_h2c { get_u16(h, 10) } else { 0 },
                datao: get_u32(h, 12),
                datal: get_u32(h, 16),
                last: flags & FLAG_LAST_PDU != 0,
                success: !is_h2c && flags & FLAG_SUCCESS != 0,
            };
            // SUCCESS is only valid on the last C2HData PDU of a transfer.
            if d.success && !d.last {
                return Err(TermError::field(1));
            }
            if d.datal as usize != layout.data_len {
                return Err(TermError::field(16));
            }
            if is_h2c {
                Pdu::H2CData(d)
            } else {
                Pdu::C2HData(d)
            }
        }
        PduType::R2T => {
            Pdu::R2T(R2t { cccid: get_u16(h, 8), ttag: get_u16(h, 10), r2to: get_u32(h, 12), r2tl: get_u32(h, 16) })
        }
    })
}

/// An encoded header ready to send: up to 128 header bytes plus a digest.
#[derive(Clone, Copy)]
pub struct HeaderBuf {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl Default for HeaderBuf {
    /// An empty buffer (no PDU yet), for slots filled later.
    fn default() -> HeaderBuf {
        HeaderBuf { bytes: [0; MAX_HEADER_LEN], len: 0 }
    }
}

impl std::fmt::Debug for HeaderBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderBuf").field("bytes", &self.as_bytes()).finish()
    }
}

impl HeaderBuf {
    /// The encoded bytes (header and, when on, its digest).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Number of encoded bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: every PDU has at least a common header.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn new(
        pdu_type: PduType,
        flags: u8,
        hdgst: bool,
        data_len: usize,
        ddgst: bool,
        fill: impl FnOnce(&mut [u8]),
    ) -> HeaderBuf {
        let hlen = pdu_type.hlen();
        let hdgst_len = if hdgst && pdu_type.has_hdgst() { DIGEST_LEN } else { 0 };
        let ddgst_len = if ddgst && data_len > 0 { DIGEST_LEN } else { 0 };
        let pdo = if data_len > 0 { hlen + hdgst_len } else { 0 };
        let plen = hlen + hdgst_len + data_len + ddgst_len;
        let mut flags = flags;
        if hdgst_len != 0 {
            flags |= FLAG_HDGST;
        }
        if ddgst_len != 0 {
            flags |= FLAG_DDGST;
        }
        let mut b = HeaderBuf { bytes: [0; MAX_HEADER_LEN], len: header_byte(hlen + hdgst_len) };
        CommonHeader {
            pdu_type: pdu_type as u8,
            flags,
            hlen: header_byte(hlen),
            pdo: header_byte(pdo),
            plen: u32::try_from(plen).expect("PDU length fits u32"),
        }
        .write(&mut b.bytes);
        fill(&mut b.bytes[..hlen]);
        if hdgst_len != 0 {
            let crc = crc32c(&b.bytes[..hlen]);
            put_u32(&mut b.bytes, hlen, crc);
        }
        b
    }
}

/// Encodes an ICReq.
pub fn encode_icreq(req: &ICReq) -> HeaderBuf {
    HeaderBuf::new(PduType::ICReq, 0, false, 0, false, |h| {
        put_u16(h, 8, req.pfv);
        h[10] = req.hpda;
        h[11] = digest_bits(req.digests);
        put_u32(h, 12, req.maxr2t);
    })
}

/// Encodes an ICResp.
pub fn encode_icresp(resp: &ICResp) -> HeaderBuf {
    HeaderBuf::new(PduType::ICResp, 0, false, 0, false, |h| {
        put_u16(h, 8, resp.pfv);
        h[10] = resp.cpda;
        h[11] = digest_bits(resp.digests);
        put_u32(h, 12, resp.maxh2cdata);
    })
}

/// A header length, data offset or padding as the byte-wide fields of the common header
/// hold it. They are bounded by the spec (HLEN at most 128, PDO at most 128 + digest,
/// padding under `(HPDA + 1) * 4` = 128), so a failure is a bug here, not bad input.
fn header_byte(n: usize) -> u8 {
    u8::try_from(n).expect("PDU header sizes and offsets fit a byte")
}

fn digest_bits(d: Digests) -> u8 {
    (if d.header { DGST_HDGST } else { 0 }) | (if d.data { DGST_DDGST } else { 0 })
}

/// Encodes a termination request header; `data_len` bytes of the offending PDU's
/// header follow it (at most [`TERM_REQ_MAX_DATA`]).
pub fn encode_term_req(role_sender: Role, fes: Fes, fei: u32, data_len: usize) -> HeaderBuf {
    assert!(data_len <= TERM_REQ_MAX_DATA);
    let t = match role_sender {
        Role::Controller => PduType::C2HTermReq,
        Role::Host => PduType::H2CTermReq,
    };
    let mut b = HeaderBuf::new(t, 0, false, 0, false, |h| {
        put_u16(h, 8, fes as u16);
        put_u32(h, 10, fei);
    });
    // Termination data carries no digest and PDO stays 0; PLEN covers the data.
    put_u32(&mut b.bytes, 4, u32::try_from(DATA_HLEN + data_len).expect("at most TERM_REQ_MAX_DATA: checked above"));
    b
}

/// Encodes a CapsuleCmd header for `cmd` with `data_len` bytes of in-capsule data.
pub fn encode_capsule_cmd(cmd: &Command, data_len: usize, d: Digests) -> HeaderBuf {
    HeaderBuf::new(PduType::CapsuleCmd, 0, d.header, data_len, d.data, |h| {
        h[8..72].copy_from_slice(&cmd.to_bytes());
    })
}

/// Encodes a CapsuleResp.
pub fn encode_capsule_resp(cqe: &Completion, d: Digests) -> HeaderBuf {
    HeaderBuf::new(PduType::CapsuleResp, 0, d.header, 0, false, |h| {
        h[8..24].copy_from_slice(&cqe.to_bytes());
    })
}

/// Encodes a C2HData header for `hdr.datal` bytes of data.
pub fn encode_c2h_data(hdr: &DataHeader, d: Digests) -> HeaderBuf {
    let flags = (if hdr.last { FLAG_LAST_PDU } else { 0 }) | (if hdr.success { FLAG_SUCCESS } else { 0 });
    HeaderBuf::new(PduType::C2HData, flags, d.header, hdr.datal as usize, d.data, |h| {
        put_u16(h, 8, hdr.cccid);
        put_u32(h, 12, hdr.datao);
        put_u32(h, 16, hdr.datal);
    })
}

/// Encodes a C2HData header whose data starts at a multiple of `(hpda + 1) * 4` bytes
/// from the start of the PDU, as a host that sent HPDA in its ICReq requires. Returns
/// the header and the number of zero bytes to send between it and the data.
pub fn encode_c2h_data_aligned(hdr: &DataHeader, d: Digests, hpda: u8) -> (HeaderBuf, u8) {
    assert!(hpda <= 31, "HPDA is 0..=31");
    let mut b = encode_c2h_data(hdr, d);
    let unit = (usize::from(hpda) + 1) * 4;
    let header = b.len();
    let pad = header.next_multiple_of(unit) - header;
    if pad == 0 || hdr.datal == 0 {
        return (b, 0);
    }
    // PDO and PLEN grow by the padding; the header digest covers them, so redo it.
    let hlen = PduType::C2HData.hlen();
    b.bytes[3] = header_byte(header + pad);
    let plen = get_u32(&b.bytes, 4) + u32::from(header_byte(pad));
    put_u32(&mut b.bytes, 4, plen);
    if d.header {
        let crc = crc32c(&b.bytes[..hlen]);
        put_u32(&mut b.bytes, hlen, crc);
    }
    (b, header_byte(pad))
}

/// Encodes an H2CData header for `hdr.datal` bytes of data.
pub fn encode_h2c_data(hdr: &DataHeader, d: Digests) -> HeaderBuf {
    let flags = if hdr.last { FLAG_LAST_PDU } else { 0 };
    HeaderBuf::new(PduType::H2CData, flags, d.header, hdr.datal as usize, d.data, |h| {
        put_u16(h, 8, hdr.cccid);
        put_u16(h, 10, hdr.ttag);
        put_u32(h, 12, hdr.datao);
        put_u32(h, 16, hdr.datal);
    })
}

/// Encodes an R2T.
pub fn encode_r2t(r: &R2t, d: Digests) -> HeaderBuf {
    HeaderBuf::new(PduType::R2T, 0, d.header, 0, false, |h| {
        put_u16(h, 8, r.cccid);
        put_u16(h, 10, r.ttag);
        put_u32(h, 12, r.r2to);
        put_u32(h, 16, r.r2tl);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(role: Role, d: Option<Digests>, h: &HeaderBuf) -> (Layout, Pdu) {
        let ch = CommonHeader::parse(h.as_bytes());
        let layout = ch.layout(role, d).expect("valid header");
        assert_eq!(layout.header_total(), h.len());
        let pdu = decode(&layout, h.as_bytes()).expect("decodes");
        (layout, pdu)
    }

    #[test]
    fn icreq_and_icresp_round_trip() {
        let req = ICReq { pfv: 0, hpda: 0, digests: Digests { header: true, data: false }, maxr2t: 0 };
        let (l, p) = round_trip(Role::Controller, None, &encode_icreq(&req));
        assert_eq!(l.hlen, 128);
        assert_eq!(p, Pdu::ICReq(req));
        let resp = ICResp { pfv: 0, cpda: 0, digests: req.digests, maxh2cdata: 131072 };
        let (_, p) = round_trip(Role::Host, None, &encode_icresp(&resp));
        assert_eq!(p, Pdu::ICResp(resp));
    }

    #[test]
    fn capsule_with_in_capsule_data_and_digests() {
        let d = Digests { header: true, data: true };
        let cmd = Command { opcode: 1, cid: 5, nsid: 1, ..Default::default() };
        let h = encode_capsule_cmd(&cmd, 4096, d);
        let ch = CommonHeader::parse(h.as_bytes());
        let l = ch.layout(Role::Controller, Some(d)).unwrap();
        assert_eq!(l.hdgst_len, 4);
        assert_eq!(l.data_len, 4096);
        assert_eq!(l.ddgst_len, 4);
        assert_eq!(ch.plen as usize, 72 + 4 + 4096 + 4);
        assert_eq!(decode(&l, h.as_bytes()).unwrap(), Pdu::CapsuleCmd(cmd));
    }

    #[test]
    fn corrupt_header_digest_is_a_digest_error() {
        let d = Digests { header: true, data: false };
        let cmd = Command { opcode: 2, cid: 1, ..Default::default() };
        let h = encode_capsule_cmd(&cmd, 0, d);
        let mut b = h.as_bytes().to_vec();
        b[20] ^= 1;
        let l = CommonHeader::parse(&b).layout(Role::Controller, Some(d)).unwrap();
        assert_eq!(decode(&l, &b).unwrap_err().fes, Fes::HeaderDigestError);
    }

    #[test]
    fn wrong_direction_and_wrong_state_are_rejected() {
        let r2t = encode_r2t(&R2t { cccid: 1, ttag: 2, r2to: 0, r2tl: 8192 }, Digests::default());
        let ch = CommonHeader::parse(r2t.as_bytes());
        assert_eq!(ch.layout(Role::Controller, Some(Digests::default())).unwrap_err().fei, 0);
        let cmd = encode_capsule_cmd(&Command::default(), 0, Digests::default());
        let ch = CommonHeader::parse(cmd.as_bytes());
        assert_eq!(ch.layout(Role::Controller, None).unwrap_err().fes, Fes::PduSequenceError);
        let ic = encode_icreq(&ICReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 });
        let ch = CommonHeader::parse(ic.as_bytes());
        assert_eq!(ch.layout(Role::Controller, Some(Digests::default())).unwrap_err().fes, Fes::PduSequenceError);
    }

    #[test]
    fn bad_lengths_name_the_field() {
        let mut b = encode_capsule_cmd(&Command::default(), 0, Digests::default()).as_bytes().to_vec();
        b[2] = 70;
        let e = CommonHeader::parse(&b).layout(Role::Controller, Some(Digests::default())).unwrap_err();
        assert_eq!(e, TermError::field(2));
        let mut b = encode_capsule_cmd(&Command::default(), 512, Digests::default()).as_bytes().to_vec();
        b[3] = 10; // PDO inside the header
        let e = CommonHeader::parse(&b).layout(Role::Controller, Some(Digests::default())).unwrap_err();
        assert_eq!(e, TermError::field(3));
        put_u32(&mut b, 4, 40); // PLEN shorter than the header
        let e = CommonHeader::parse(&b).layout(Role::Controller, Some(Digests::default())).unwrap_err();
        assert_eq!(e, TermError::field(4));
    }

    #[test]
    fn term_req_carries_offending_header() {
        let h = encode_term_req(Role::Controller, Fes::InvalidHeaderField, 2, 72);
        let ch = CommonHeader::parse(h.as_bytes());
        assert_eq!(ch.plen, 24 + 72);
        let l = ch.layout(Role::Host, Some(Digests::default())).unwrap();
        assert_eq!(l.data_len, 72);
        assert_eq!(decode(&l, h.as_bytes()).unwrap(), Pdu::TermReq { fes: 1, fei: 2 });
    }

    #[test]
    fn aligned_c2h_data_pads_to_hpda_and_stays_valid() {
        let d = Digests { header: true, data: true };
        let c2h = DataHeader { cccid: 9, ttag: 0, datao: 0, datal: 4096, last: true, success: false };
        let (plain, pad0) = encode_c2h_data_aligned(&c2h, d, 0);
        assert_eq!(pad0, 0);
        assert_eq!(plain.as_bytes(), encode_c2h_data(&c2h, d).as_bytes());
        // HPDA 7: data on a 32-byte boundary; the header plus digest is 28 bytes.
        let (h, pad) = encode_c2h_data_aligned(&c2h, d, 7);
        assert_eq!(pad, 4);
        let ch = CommonHeader::parse(h.as_bytes());
        assert_eq!(ch.pdo, 32);
        assert_eq!(ch.plen as usize, 28 + 4 + 4096 + 4);
        let l = ch.layout(Role::Host, Some(d)).unwrap();
        assert_eq!(l.pad_len, 4);
        assert_eq!(l.data_len, 4096);
        assert_eq!(decode(&l, h.as_bytes()).unwrap(), Pdu::C2HData(c2h));
    }

    #[test]
    fn data_pdus_round_trip() {
        let d = Digests { header: true, data: true };
        let c2h = DataHeader { cccid: 3, ttag: 0, datao: 4096, datal: 8192, last: true, success: true };
        let h = encode_c2h_data(&c2h, d);
        let l = CommonHeader::parse(h.as_bytes()).layout(Role::Host, Some(d)).unwrap();
        assert_eq!(l.data_len, 8192);
        assert_eq!(decode(&l, h.as_bytes()).unwrap(), Pdu::C2HData(c2h));
        let h2c = DataHeader { cccid: 3, ttag: 7, datao: 0, datal: 100, last: true, success: false };
        let h = encode_h2c_data(&h2c, d);
        let l = CommonHeader::parse(h.as_bytes()).layout(Role::Controller, Some(d)).unwrap();
        assert_eq!(decode(&l, h.as_bytes()).unwrap(), Pdu::H2CData(h2c));
    }

    #[test]
    fn reserved_direction_fields_do_not_leak_and_success_needs_last() {
        let d = Digests::default();
        let c2h = DataHeader { cccid: 3, ttag: 0, datao: 0, datal: 8, last: true, success: true };
        let mut b = encode_c2h_data(&c2h, d).as_bytes().to_vec();
        b[10] = 0x77; // reserved in C2HData
        let l = CommonHeader::parse(&b).layout(Role::Host, Some(d)).unwrap();
        assert_eq!(decode(&l, &b).unwrap(), Pdu::C2HData(c2h));
        b[1] &= !FLAG_LAST_PDU; // SUCCESS without LAST_PDU
        assert_eq!(decode(&l, &b).unwrap_err(), TermError::field(1));
        let h2c = DataHeader { cccid: 3, ttag: 9, datao: 0, datal: 8, last: false, success: false };
        let mut b = encode_h2c_data(&h2c, d).as_bytes().to_vec();
        b[1] |= FLAG_SUCCESS; // reserved in H2CData
        let l = CommonHeader::parse(&b).layout(Role::Controller, Some(d)).unwrap();
        assert_eq!(decode(&l, &b).unwrap(), Pdu::H2CData(h2c));
    }

    #[test]
    fn icresp_fields_are_validated() {
        let good = ICResp { pfv: 0, cpda: 0, digests: Digests::default(), maxh2cdata: 4096 };
        let check = |r: ICResp| {
            let h = encode_icresp(&r);
            let l = CommonHeader::parse(h.as_bytes()).layout(Role::Host, None).unwrap();
            decode(&l, h.as_bytes())
        };
        assert_eq!(check(good), Ok(Pdu::ICResp(good)));
        assert_eq!(check(ICResp { pfv: 1, ..good }), Err(TermError::unsupported(8)));
        assert_eq!(check(ICResp { cpda: 32, ..good }), Err(TermError::field(10)));
        assert_eq!(check(ICResp { maxh2cdata: 4092, ..good }), Err(TermError::field(12)));
        assert_eq!(check(ICResp { maxh2cdata: 8194, ..good }), Err(TermError::field(12)));
    }
}
