//! The peer link's wire format: a handshake, then batches of fixed-size messages.
//!
//! ```text
//! handshake (fixed sizes, once per connection):
//!   client → server  Hello      "QPLH" version from to group-uuid client-nonce
//!   server → client  Challenge  "QPLC" version from to group-uuid server-nonce mac(server)
//!   client → server  Proof      "QPLP" mac(client)
//!   server → client  Verdict    "QPLV" code window reason-text
//! then, in each direction, batches:
//!   BatchHead (16 bytes)  "QPLB" count payload-bytes
//!   count × Message (48 bytes each)
//!   the payloads of those messages, in message order, back to back
//! ```
//!
//! Why batches: a receiver reads the batch head, then all the batch's headers in one
//! read (it knows exactly how many bytes they are, so it never reads into a
//! payload), then every payload straight into the buffer where it belongs (the
//! request's pool buffers), with the next batch head at the end of the same
//! `readv`. No payload byte is ever copied in userspace, and a busy link costs about
//! two receive system calls per batch, not two per message. A sender puts whatever
//! it has queued (up to [`BATCH_MAX`] messages) in one batch and one `writev`.
//!
//! Requests go from the peer that received a host's I/O to the peer that owns the
//! page; each names the volume, the routing epoch it was routed with, the operation,
//! its volume LBA range (within one page) and carries the write data. Responses carry
//! the NVMe status, the owner's routing epoch and the read data. Every field is
//! checked as it is decoded: a message that does not hold together ends the link
//! with the reason, it is never guessed at.

use quire_wire::nvme::Status;
use quire_wire::{get_u16 as u16_at, get_u32 as u32_at, get_u64 as u64_at, put_u16, put_u32, put_u64};

/// Version of this format; both ends must speak the same.
pub const VERSION: u16 = 1;
/// Bytes of a Hello.
pub const HELLO_LEN: usize = 64;
/// Bytes of a Challenge.
pub const CHALLENGE_LEN: usize = 96;
/// Bytes of a Proof.
pub const PROOF_LEN: usize = 48;
/// Bytes of a Verdict: as many as a Challenge, so that a caller reads one answer of
/// one size after its Hello (a Challenge, or a Verdict refusing it at once).
pub const VERDICT_LEN: usize = CHALLENGE_LEN;
/// Bytes of a batch head.
pub const BATCH_HEAD_LEN: usize = 16;
/// Bytes of one message header.
pub const MSG_LEN: usize = 48;
/// Messages in one batch at most.
pub const BATCH_MAX: usize = 64;
/// Largest read or write one request carries: the forwarding end splits a larger
/// part into requests of at most this many bytes, so that every owner can take one
/// whatever its own buffer configuration: 32 segments (a device request's most) of
/// the smallest pool chunk (4 KiB). Write Zeroes and Deallocate carry no data and may
/// cover a whole page.
pub const PART_MAX: u32 = 128 << 10;
/// Largest payload of one message.
pub const PAYLOAD_MAX: u32 = PART_MAX;

const _: () = assert!(
    PART_MAX as u64 <= quire_drivers::block::SEGS_MAX as u64 * quire_config::validate::CHUNK_SIZE_MIN,
    "any owner takes a whole part in one device request"
);

/// Longest refusal reason a Verdict carries.
pub const REASON_MAX: usize = VERDICT_LEN - 16;

const MAGIC_HELLO: &[u8; 4] = b"QPLH";
const MAGIC_CHALLENGE: &[u8; 4] = b"QPLC";
const MAGIC_PROOF: &[u8; 4] = b"QPLP";
const MAGIC_VERDICT: &[u8; 4] = b"QPLV";
const MAGIC_BATCH: &[u8; 4] = b"QPLB";

/// The first message of a connection: who is calling whom, in which group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Format version of the caller.
    pub version: u16,
    /// The caller's routing id.
    pub from: u16,
    /// The routing id the caller believes it reached.
    pub to: u16,
    /// The group's uuid as the caller knows it.
    pub group: [u8; 16],
    /// The caller's fresh random nonce.
    pub nonce: [u8; 32],
}

impl Hello {
    /// Wire bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(MAGIC_HELLO);
        put_u16(&mut b, 4, self.version);
        put_u16(&mut b, 6, self.from);
        put_u16(&mut b, 8, self.to);
        b[12..28].copy_from_slice(&self.group);
        b[28..60].copy_from_slice(&self.nonce);
        b
    }

    /// Decodes, or says why the bytes are not a Hello.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        if &b[0..4] != MAGIC_HELLO {
            return Err("not a Quire peer link (no Hello)".into());
        }
        Ok(Hello {
            version: u16_at(b, 4),
            from: u16_at(b, 6),
            to: u16_at(b, 8),
            group: b[12..28].try_into().expect("16 bytes"),
            nonce: b[28..60].try_into().expect("32 bytes"),
        })
    }
}

/// The server's answer to a Hello: its nonce and its proof that it knows the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Format version of the server.
    pub version: u16,
    /// The server's routing id.
    pub from: u16,
    /// The caller's routing id, as the server understood it.
    pub to: u16,
    /// The group's uuid as the server knows it.
    pub group: [u8; 16],
    /// The server's fresh random nonce.
    pub nonce: [u8; 32],
    /// HMAC of the handshake by the server (see `auth`).
    pub mac: [u8; 32],
}

impl Challenge {
    /// Wire bytes.
    pub fn encode(&self) -> [u8; CHALLENGE_LEN] {
        let mut b = [0u8; CHALLENGE_LEN];
        b[0..4].copy_from_slice(MAGIC_CHALLENGE);
        put_u16(&mut b, 4, self.version);
        put_u16(&mut b, 6, self.from);
        put_u16(&mut b, 8, self.to);
        b[12..28].copy_from_slice(&self.group);
        b[28..60].copy_from_slice(&self.nonce);
        b[60..92].copy_from_slice(&self.mac);
        b
    }

    /// Decodes, or says why the bytes are not a Challenge.
    pub fn decode(b: &[u8; CHALLENGE_LEN]) -> Result<Challenge, String> {
        if &b[0..4] != MAGIC_CHALLENGE {
            return Err("the peer did not answer the Hello with a Challenge".into());
        }
        Ok(Challenge {
            version: u16_at(b, 4),
            from: u16_at(b, 6),
            to: u16_at(b, 8),
            group: b[12..28].try_into().expect("16 bytes"),
            nonce: b[28..60].try_into().expect("32 bytes"),
            mac: b[60..92].try_into().expect("32 bytes"),
        })
    }
}

/// The caller's proof that it knows the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// HMAC of the handshake by the caller.
    pub mac: [u8; 32],
}

impl Proof {
    /// Wire bytes.
    pub fn encode(&self) -> [u8; PROOF_LEN] {
        let mut b = [0u8; PROOF_LEN];
        b[0..4].copy_from_slice(MAGIC_PROOF);
        b[16..48].copy_from_slice(&self.mac);
        b
    }

    /// Decodes, or says why the bytes are not a Proof.
    pub fn decode(b: &[u8; PROOF_LEN]) -> Result<Proof, String> {
        if &b[0..4] != MAGIC_PROOF {
            return Err("no Proof after the Challenge".into());
        }
        Ok(Proof { mac: b[16..48].try_into().expect("32 bytes") })
    }
}

/// Why a server refuses a link (or that it accepts it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum VerdictCode {
    /// Accepted: I/O may flow.
    Welcome = 0,
    /// Another format version.
    Version = 1,
    /// Another group (its uuid differs).
    OtherGroup = 2,
    /// The caller reached a peer other than the one it meant.
    WrongPeer = 3,
    /// The caller's proof does not verify: not the group's secret.
    BadProof = 4,
    /// The server is not ready for links yet (has not joined its group).
    NotReady = 5,
}

impl VerdictCode {
    fn from_u16(v: u16) -> Option<VerdictCode> {
        use VerdictCode::*;
        [Welcome, Version, OtherGroup, WrongPeer, BadProof, NotReady].into_iter().find(|c| *c as u16 == v)
    }
}

/// The server's last handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Accepted or why not.
    pub code: VerdictCode,
    /// Requests the caller may have outstanding on this link.
    pub window: u16,
    /// Why it was refused, in words (at most [`REASON_MAX`] bytes).
    pub reason: String,
}

impl Verdict {
    /// Wire bytes (the reason is cut to [`REASON_MAX`] bytes at a character boundary).
    pub fn encode(&self) -> [u8; VERDICT_LEN] {
        let mut b = [0u8; VERDICT_LEN];
        b[0..4].copy_from_slice(MAGIC_VERDICT);
        put_u16(&mut b, 4, self.code as u16);
        put_u16(&mut b, 6, self.window);
        let mut end = self.reason.len().min(REASON_MAX);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &self.reason.as_bytes()[..end];
        put_u16(&mut b, 8, u16::try_from(reason.len()).expect("≤ REASON_MAX"));
        b[16..16 + reason.len()].copy_from_slice(reason);
        b
    }

    /// True when `b` is a Verdict (and not a Challenge).
    pub fn is_verdict(b: &[u8]) -> bool {
        b.len() >= 4 && &b[0..4] == MAGIC_VERDICT
    }

    /// Decodes, or says why the bytes are not a Verdict.
    pub fn decode(b: &[u8; VERDICT_LEN]) -> Result<Verdict, String> {
        if &b[0..4] != MAGIC_VERDICT {
            return Err("no Verdict after the Proof".into());
        }
        let code = VerdictCode::from_u16(u16_at(b, 4)).ok_or_else(|| format!("unknown verdict {}", u16_at(b, 4)))?;
        let len = usize::from(u16_at(b, 8)).min(REASON_MAX);
        Ok(Verdict { code, window: u16_at(b, 6), reason: String::from_utf8_lossy(&b[16..16 + len]).into_owned() })
    }
}

/// The head of a batch of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHead {
    /// Messages in the batch, 1 to [`BATCH_MAX`].
    pub count: u16,
    /// Bytes of all their payloads together.
    pub payload: u64,
}

impl BatchHead {
    /// Wire bytes.
    pub fn encode(&self) -> [u8; BATCH_HEAD_LEN] {
        let mut b = [0u8; BATCH_HEAD_LEN];
        b[0..4].copy_from_slice(MAGIC_BATCH);
        put_u16(&mut b, 4, self.count);
        put_u64(&mut b, 8, self.payload);
        b
    }

    /// Decodes, or says why the bytes are not a batch head.
    pub fn decode(b: &[u8]) -> Result<BatchHead, String> {
        assert_eq!(b.len(), BATCH_HEAD_LEN);
        if &b[0..4] != MAGIC_BATCH {
            return Err("the stream lost its framing (no batch head where one belongs)".into());
        }
        let count = u16_at(b, 4);
        if count == 0 || usize::from(count) > BATCH_MAX {
            return Err(format!("a batch of {count} messages (1 to {BATCH_MAX} allowed)"));
        }
        let payload = u64_at(b, 8);
        if payload > u64::from(count) * u64::from(PAYLOAD_MAX) {
            return Err(format!("a batch of {count} messages with {payload} payload bytes"));
        }
        Ok(BatchHead { count, payload })
    }
}

/// What a request asks the owner to do with its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Read the range; the response carries the data.
    Read = 1,
    /// Write the request's data to the range.
    Write = 2,
    /// Make every write completed before it durable (the volume, not a range).
    Flush = 3,
    /// Write zeroes to the range.
    WriteZeroes = 4,
    /// Deallocate the range (reads back zeroes afterwards).
    Deallocate = 5,
    /// Read the range and answer with its CRC32C (`digest`), not the data: the leader
    /// of a replicated page comparing a member's copy with its own (rebuilds, scrub).
    Digest = 6,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        [Read, Write, Flush, WriteZeroes, Deallocate, Digest].into_iter().find(|o| *o as u8 == v)
    }
}

/// How the owner answered, beside the NVMe status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Executed; the NVMe status says how it went.
    Done = 0,
    /// The owner's routing table (epoch in the response) does not give it this page:
    /// route again with a newer table.
    NotOwner = 1,
    /// The owner does not serve this volume (yet): try again shortly.
    UnknownVolume = 2,
    /// The receiver's routing table is older than the request's epoch: send it again
    /// shortly (a member that has not seen its leader's newest table yet).
    Behind = 3,
}

impl Outcome {
    fn from_u8(v: u8) -> Option<Outcome> {
        use Outcome::*;
        [Done, NotOwner, UnknownVolume, Behind].into_iter().find(|o| *o as u8 == v)
    }
}

/// Request flag: Force Unit Access.
pub const FLAG_FUA: u8 = 1;
/// Request flag: the sender leads the page's replica set and this is its replica
/// write (or its read or digest of this member's copy): applied to, or read from, the
/// receiver's own copy only, whatever the receiver's own routes say.
pub const FLAG_REPLICA: u8 = 2;

/// One message: a request (to the owner) or a response (from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// Do `op` on `nlb` blocks at `lba` of `volume`.
    Request {
        /// Chosen by the sender, echoed in the response.
        tag: u32,
        /// What to do.
        op: Op,
        /// [`FLAG_FUA`].
        flags: u8,
        /// Group volume id.
        volume: u32,
        /// The routing epoch the sender routed with.
        epoch: u64,
        /// First volume block.
        lba: u64,
        /// Blocks (0 for Flush).
        nlb: u32,
        /// Bytes of write data that follow (Write only).
        payload: u32,
    },
    /// The answer to request `tag`.
    Response {
        /// The request's tag.
        tag: u32,
        /// Executed, or why not.
        outcome: Outcome,
        /// NVMe status of the execution.
        status: Status,
        /// The owner's routing epoch of the volume (0: it does not serve it).
        epoch: u64,
        /// Bytes of read data that follow (a successful Read only).
        payload: u32,
        /// The CRC32C of the range (a successful Digest only).
        digest: u32,
    },
}

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;

/// NVMe status as 16 bits: SC, SCT (3 bits), More, DNR.
fn status_bits(s: Status) -> u16 {
    u16::from(s.sc) | (u16::from(s.sct & 7) << 8) | (u16::from(s.more) << 14) | (u16::from(s.dnr) << 15)
}

fn status_from_bits(v: u16) -> Status {
    Status {
        sc: u8::try_from(v & 0xff).expect("masked"),
        sct: u8::try_from((v >> 8) & 7).expect("masked"),
        more: v & (1 << 14) != 0,
        dnr: v & (1 << 15) != 0,
    }
}

impl Message {
    /// Bytes of payload that follow this message in its batch.
    pub fn payload(&self) -> u32 {
        match *self {
            Message::Request { payload, .. } | Message::Response { payload, .. } => payload,
        }
    }

    /// Wire bytes.
    pub fn encode(&self, b: &mut [u8]) {
        assert_eq!(b.len(), MSG_LEN);
        b.fill(0);
        match *self {
            Message::Request { tag, op, flags, volume, epoch, lba, nlb, payload } => {
                b[0] = KIND_REQUEST;
                b[1] = op as u8;
                b[2] = flags;
                put_u32(b, 4, tag);
                put_u32(b, 8, volume);
                put_u32(b, 12, nlb);
                put_u64(b, 16, lba);
                put_u64(b, 24, epoch);
                put_u32(b, 32, payload);
            }
            Message::Response { tag, outcome, status, epoch, payload, digest } => {
                b[0] = KIND_RESPONSE;
                b[3] = outcome as u8;
                put_u32(b, 4, tag);
                put_u64(b, 24, epoch);
                put_u32(b, 32, payload);
                put_u16(b, 36, status_bits(status));
                put_u32(b, 40, digest);
            }
        }
    }

    /// Decodes, or says why the bytes are not a message that holds together.
    pub fn decode(b: &[u8]) -> Result<Message, String> {
        assert_eq!(b.len(), MSG_LEN);
        let tag = u32_at(b, 4);
        let payload = u32_at(b, 32);
        if payload > PAYLOAD_MAX {
            return Err(format!("message {tag}: {payload} payload bytes (at most {PAYLOAD_MAX})"));
        }
        match b[0] {
            KIND_REQUEST => {
                let op = Op::from_u8(b[1]).ok_or_else(|| format!("request {tag}: unknown operation {}", b[1]))?;
                let flags = b[2];
                if flags & !(FLAG_FUA | FLAG_REPLICA) != 0 {
                    return Err(format!("request {tag}: unknown flags {flags:#x}"));
                }
                if flags & FLAG_REPLICA == 0 && op == Op::Digest || flags & FLAG_REPLICA != 0 && op == Op::Flush {
                    return Err(format!("request {tag}: {op:?} with flags {flags:#x}"));
                }
                let nlb = u32_at(b, 12);
                let lba = u64_at(b, 16);
                match op {
                    Op::Write if payload == 0 || nlb == 0 => {
                        return Err(format!("request {tag}: a write of {nlb} blocks with {payload} bytes"));
                    }
                    Op::Flush if nlb != 0 || lba != 0 || payload != 0 => {
                        return Err(format!("request {tag}: a flush with a range or data"));
                    }
                    Op::Read | Op::WriteZeroes | Op::Deallocate | Op::Digest if nlb == 0 || payload != 0 => {
                        return Err(format!("request {tag}: {op:?} of {nlb} blocks with {payload} bytes"));
                    }
                    _ => {}
                }
                if lba.checked_add(u64::from(nlb)).is_none() {
                    return Err(format!("request {tag}: range {lba}+{nlb} wraps"));
                }
                Ok(Message::Request { tag, op, flags, volume: u32_at(b, 8), epoch: u64_at(b, 24), lba, nlb, payload })
            }
            KIND_RESPONSE => {
                let outcome =
                    Outcome::from_u8(b[3]).ok_or_else(|| format!("response {tag}: unknown outcome {}", b[3]))?;
                let status = status_from_bits(u16::from_le_bytes([b[36], b[37]]));
                if payload != 0 && (outcome != Outcome::Done || !status.is_success()) {
                    return Err(format!("response {tag}: {payload} bytes of data with {outcome:?} {status:?}"));
                }
                Ok(Message::Response { tag, outcome, status, epoch: u64_at(b, 24), payload, digest: u32_at(b, 40) })
            }
            k => Err(format!("message {tag}: unknown kind {k}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_messages_round_trip_and_refuse_strangers() {
        let h = Hello { version: VERSION, from: 2, to: 7, group: [9; 16], nonce: [3; 32] };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Hello::decode(&bad).unwrap_err().contains("not a Quire peer link"));
        let c = Challenge { version: VERSION, from: 7, to: 2, group: [9; 16], nonce: [4; 32], mac: [5; 32] };
        assert_eq!(Challenge::decode(&c.encode()), Ok(c));
        let p = Proof { mac: [6; 32] };
        assert_eq!(Proof::decode(&p.encode()), Ok(p));
        let v = Verdict { code: VerdictCode::BadProof, window: 0, reason: "wrong secret".into() };
        assert_eq!(Verdict::decode(&v.encode()), Ok(v));
        // A long reason is cut at a character boundary, never mid-character.
        let long = Verdict { code: VerdictCode::OtherGroup, window: 0, reason: "é".repeat(100) };
        let back = Verdict::decode(&long.encode()).unwrap();
        assert!(back.reason.len() <= REASON_MAX && back.reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            Message::Request {
                tag: 1,
                op: Op::Write,
                flags: FLAG_FUA,
                volume: 3,
                epoch: 9,
                lba: 1 << 40,
                nlb: 8,
                payload: 32768,
            },
            Message::Request { tag: 2, op: Op::Flush, flags: 0, volume: 3, epoch: 9, lba: 0, nlb: 0, payload: 0 },
            Message::Request { tag: 3, op: Op::Read, flags: 0, volume: 3, epoch: 9, lba: 5, nlb: 1, payload: 0 },
            Message::Response {
                tag: 3,
                outcome: Outcome::Done,
                status: Status::SUCCESS,
                epoch: 9,
                payload: 4096,
                digest: 0,
            },
            Message::Response {
                tag: 4,
                outcome: Outcome::Done,
                status: Status::LBA_OUT_OF_RANGE.with_dnr(),
                epoch: 9,
                payload: 0,
                digest: 0,
            },
            Message::Response {
                tag: 5,
                outcome: Outcome::NotOwner,
                status: Status::SUCCESS,
                epoch: 10,
                payload: 0,
                digest: 0,
            },
            Message::Response {
                tag: 6,
                outcome: Outcome::Behind,
                status: Status::SUCCESS,
                epoch: 11,
                payload: 0,
                digest: 0,
            },
            Message::Response {
                tag: 7,
                outcome: Outcome::Done,
                status: Status::SUCCESS,
                epoch: 11,
                payload: 0,
                digest: 0xdead_beef,
            },
            Message::Request {
                tag: 8,
                op: Op::Digest,
                flags: FLAG_REPLICA,
                volume: 3,
                epoch: 9,
                lba: 16,
                nlb: 16,
                payload: 0,
            },
        ];
        for m in msgs {
            let mut b = [0u8; MSG_LEN];
            m.encode(&mut b);
            assert_eq!(Message::decode(&b), Ok(m), "{m:?}");
        }
        let head = BatchHead { count: 3, payload: 4096 };
        assert_eq!(BatchHead::decode(&head.encode()), Ok(head));
    }

    #[test]
    fn messages_that_do_not_hold_together_are_refused_with_a_reason() {
        let enc = |m: Message| {
            let mut b = [0u8; MSG_LEN];
            m.encode(&mut b);
            b
        };
        let w = Message::Request { tag: 1, op: Op::Write, flags: 0, volume: 1, epoch: 1, lba: 0, nlb: 1, payload: 0 };
        assert!(Message::decode(&enc(w)).unwrap_err().contains("a write of 1 blocks with 0 bytes"));
        let r = Message::Request { tag: 1, op: Op::Read, flags: 0, volume: 1, epoch: 1, lba: 0, nlb: 1, payload: 8 };
        assert!(Message::decode(&enc(r)).is_err());
        let f = Message::Request { tag: 1, op: Op::Flush, flags: 0, volume: 1, epoch: 1, lba: 2, nlb: 0, payload: 0 };
        assert!(Message::decode(&enc(f)).is_err());
        let wrap =
            Message::Request { tag: 1, op: Op::Read, flags: 0, volume: 1, epoch: 1, lba: u64::MAX, nlb: 2, payload: 0 };
        assert!(Message::decode(&enc(wrap)).unwrap_err().contains("wraps"));
        let data_on_error = Message::Response {
            tag: 1,
            outcome: Outcome::NotOwner,
            status: Status::SUCCESS,
            epoch: 1,
            payload: 4096,
            digest: 0,
        };
        assert!(Message::decode(&enc(data_on_error)).is_err());
        let mut b = enc(w);
        b[0] = 9;
        assert!(Message::decode(&b).unwrap_err().contains("unknown kind"));
        let mut b = enc(r);
        b[1] = 77;
        assert!(Message::decode(&b).unwrap_err().contains("unknown operation"));
        let mut b = enc(r);
        put_u32(&mut b, 32, PAYLOAD_MAX + 1);
        assert!(Message::decode(&b).is_err());
        let d = Message::Request { tag: 1, op: Op::Digest, flags: 0, volume: 1, epoch: 1, lba: 0, nlb: 1, payload: 0 };
        assert!(Message::decode(&enc(d)).unwrap_err().contains("Digest with flags"), "a digest is the leader's");
        let mut h = BatchHead { count: 1, payload: 0 }.encode();
        h[4] = 0;
        assert!(BatchHead::decode(&h).is_err());
        let big = BatchHead { count: 2, payload: 3 * u64::from(PAYLOAD_MAX) }.encode();
        assert!(BatchHead::decode(&big).is_err());
        assert!(BatchHead::decode(&[0u8; BATCH_HEAD_LEN]).unwrap_err().contains("framing"));
    }
}
