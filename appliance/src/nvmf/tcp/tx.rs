//! The send path: a bounded queue of PDUs written with vectored writes.
//!
//! A queued PDU is a header (with its digest), optional padding (when the host asked
//! for data alignment with HPDA), optional data that stays in the request's pool
//! buffers, and an optional data digest. [`Tx::flush`] gathers as many queued PDUs as
//! fit in one `writev` and remembers how far a partial write got.
//!
//! Zero copy: when every PDU of a batch belongs to a request and the batch carries at
//! least [`ZC_MIN_BYTES`] of payload, the batch goes out with `sendmsg(MSG_ZEROCOPY)`
//! ([`super::zerocopy`]); its headers then come from the requests' own header slots,
//! which stay put (the queue's entries do not), and each request remembers the
//! zero-copy call that last carried its bytes. A request whose last PDU went out that
//! way is held ([`Tx::held`]) until the kernel reports the call complete.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};

use quire_wire::tcp::HeaderBuf;

use crate::nvmf::tcp::req::ReqTable;
use crate::nvmf::tcp::zerocopy;

/// Most slices handed to one `writev`.
const IOV_MAX: usize = 128;
/// Least payload in one send for it to go zero-copy: below it, pinning pages costs
/// more than copying them.
pub const ZC_MIN_BYTES: usize = 16 << 10;
static ZEROES: [u8; 128] = [0; 128];

/// What to do once a PDU has been written completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterSend {
    /// Nothing.
    Nothing,
    /// The request's last PDU: free it.
    FreeReq(u16),
    /// A termination request: close the connection.
    Close,
}

/// One queued PDU.
#[derive(Clone, Copy, Debug)]
pub struct TxEntry {
    hdr: HeaderBuf,
    /// The request and header slot holding a stable copy of `hdr` (and of the data
    /// digest), which a zero-copy send points at; `None` for connection-level PDUs.
    owner: Option<(u16, u8)>,
    pad: u8,
    data_req: Option<u16>,
    data_len: u32,
    ddgst: Option<[u8; 4]>,
    term_len: u8,
    after: AfterSend,
    sent: usize,
}

impl TxEntry {
    /// A PDU without data.
    pub fn header(hdr: HeaderBuf, after: AfterSend) -> TxEntry {
        TxEntry { hdr, owner: None, pad: 0, data_req: None, data_len: 0, ddgst: None, term_len: 0, after, sent: 0 }
    }

    /// A PDU without data of request `req`, whose header slot `slot` holds a copy of
    /// `hdr`.
    pub fn req_header(hdr: HeaderBuf, req: u16, slot: u8, after: AfterSend) -> TxEntry {
        TxEntry { owner: Some((req, slot)), ..TxEntry::header(hdr, after) }
    }

    /// A PDU whose data is the first `data_len` bytes of request `req`'s buffers.
    pub fn with_data(
        hdr: HeaderBuf,
        pad: u8,
        req: u16,
        data_len: u32,
        ddgst: Option<u32>,
        after: AfterSend,
    ) -> TxEntry {
        TxEntry {
            hdr,
            owner: Some((req, 0)),
            pad,
            data_req: Some(req),
            data_len,
            ddgst: ddgst.map(u32::to_le_bytes),
            term_len: 0,
            after,
            sent: 0,
        }
    }

    /// A termination request followed by `term_len` bytes of the connection's saved
    /// offending header.
    pub fn term(hdr: HeaderBuf, term_len: usize) -> TxEntry {
        TxEntry {
            hdr,
            owner: None,
            pad: 0,
            data_req: None,
            data_len: 0,
            ddgst: None,
            term_len: u8::try_from(term_len).expect("a saved header is at most MAX_HEADER_LEN bytes"),
            after: AfterSend::Close,
            sent: 0,
        }
    }

    fn total(&self) -> usize {
        self.hdr.len()
            + usize::from(self.pad)
            + self.data_len as usize
            + self.ddgst.map_or(0, |_| 4)
            + usize::from(self.term_len)
    }
}

/// The send queue of one connection.
pub struct Tx {
    queue: VecDeque<TxEntry>,
    cap: usize,
    /// The offending header of a termination request.
    pub term_data: [u8; quire_wire::tcp::TERM_REQ_MAX_DATA],
    /// The socket said "would block": wait for a writable event.
    pub blocked: bool,
    /// Zero-copy sends are on for this socket.
    pub zerocopy: bool,
    /// The socket reported its error queue readable (zero-copy completions).
    pub zc_ready: bool,
    /// Number the next zero-copy send will get.
    zc_next: u32,
    /// Highest zero-copy send number the kernel reported complete.
    zc_done: Option<u32>,
    /// Requests whose PDUs are all sent but whose last zero-copy send is not complete,
    /// in send order.
    pub held: VecDeque<u16>,
    /// Zero-copy sends made (statistics).
    pub zc_sends: u64,
}

/// What a flush achieved.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Bytes written.
    pub bytes: usize,
    /// Requests whose last PDU went out.
    pub freed: Vec<u16>,
    /// A termination request went out: close now.
    pub close: bool,
}

impl Tx {
    /// A queue of at most `cap` PDUs.
    pub fn new(cap: usize) -> Tx {
        Tx {
            queue: VecDeque::with_capacity(cap),
            cap,
            term_data: [0; quire_wire::tcp::TERM_REQ_MAX_DATA],
            blocked: false,
            zerocopy: false,
            zc_ready: false,
            zc_next: 0,
            zc_done: None,
            held: VecDeque::with_capacity(cap),
            zc_sends: 0,
        }
    }

    /// True when zero-copy send number `id` is complete.
    pub fn zc_complete(&self, id: u32) -> bool {
        // Numbers wrap at 2^32; "done ≥ id" in the wrapping sense.
        self.zc_done.is_some_and(|done| done.wrapping_sub(id) < (1 << 31))
    }

    /// Reads zero-copy completions and appends to `released` the held requests that are
    /// now complete.
    pub fn reap(&mut self, fd: RawFd, reqs: &ReqTable, released: &mut Vec<u16>) {
        self.zc_ready = false;
        while let Ok(Some((_lo, hi))) = zerocopy::completion(fd) {
            if !self.zc_complete(hi) {
                self.zc_done = Some(hi);
            }
        }
        while let Some(&r) = self.held.front() {
            let id = reqs.req(r).zc_id.expect("held requests went out zero-copy");
            if !self.zc_complete(id) {
                break;
            }
            self.held.pop_front();
            released.push(r);
        }
    }

    /// Queues a PDU. The queue is sized so that every request can have its PDUs queued
    /// at once; running out is a programming error.
    pub fn push(&mut self, e: TxEntry) {
        assert!(self.queue.len() < self.cap, "send queue over its bound of {}", self.cap);
        self.queue.push_back(e);
    }

    /// True when nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// PDUs queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Writes as much as the socket takes; `freed` lists requests whose PDUs are all out
    /// (a request that went out zero-copy may still be referenced by the kernel: see
    /// [`Request::zc_id`](crate::nvmf::tcp::req::Req::zc_id)).
    pub fn flush(
        &mut self,
        sock: &mut (impl Write + AsRawFd),
        reqs: &mut ReqTable,
        out: &mut Flushed,
    ) -> std::io::Result<()> {
        while !self.queue.is_empty() && !self.blocked {
            let zc = self.zerocopy && self.batch_can_go_zero_copy(reqs);
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let n = self.gather(reqs, &mut iov, zc);
            assert!(n > 0);
            let res = if zc { zerocopy::send(sock.as_raw_fd(), &iov[..n]) } else { sock.write_vectored(&iov[..n]) };
            match res {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    out.bytes += written;
                    if zc {
                        let id = self.zc_next;
                        self.zc_next = id.wrapping_add(1);
                        self.zc_sends += 1;
                        self.mark_zero_copy(reqs, written, id);
                    }
                    self.advance(written, out);
                    if out.close {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.blocked = true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The kernel's option memory for pinned pages ran out: carry on copying.
                Err(e) if zc && e.raw_os_error() == Some(libc::ENOBUFS) => self.zerocopy = false,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether the batch `gather` will take is all request-owned and carries enough
    /// payload to be worth sending zero-copy.
    fn batch_can_go_zero_copy(&self, reqs: &ReqTable) -> bool {
        let (mut n, mut payload) = (0, 0usize);
        for e in &self.queue {
            let bufs = e.data_req.map_or(0, |r| reqs.req(r).bufs.len());
            if n + 4 + bufs > IOV_MAX {
                break;
            }
            if e.owner.is_none() {
                return false;
            }
            n += 4 + bufs;
            payload += e.data_len as usize;
        }
        payload >= ZC_MIN_BYTES
    }

    /// Records zero-copy send `id` (which took `written` bytes from the front of the
    /// queue) in every request it carried bytes of.
    fn mark_zero_copy(&self, reqs: &mut ReqTable, written: usize, id: u32) {
        let mut left = written;
        for e in &self.queue {
            if left == 0 {
                break;
            }
            let (r, _) = e.owner.expect("zero-copy batches are request-owned");
            reqs.req_mut(r).zc_id = Some(id);
            left = left.saturating_sub(e.total() - e.sent);
        }
    }

    fn gather<'a>(&'a self, reqs: &'a ReqTable, iov: &mut [IoSlice<'a>; IOV_MAX], zc: bool) -> usize {
        let mut n = 0;
        for e in &self.queue {
            // Every entry needs at most 4 slices plus its data buffers.
            let bufs = e.data_req.map_or(0, |r| reqs.req(r).bufs.len());
            if n + 4 + bufs > IOV_MAX {
                break;
            }
            // A zero-copy send must point at memory that stays put: the request's copy.
            let (hdr, ddgst) = match (zc, e.owner) {
                (true, Some((r, slot))) => {
                    let req = reqs.req(r);
                    (&req.hdrs[usize::from(slot)], e.ddgst.map(|_| &req.ddgst))
                }
                _ => (&e.hdr, e.ddgst.as_ref()),
            };
            let mut skip = e.sent;
            let mut push = |s: &'a [u8]| {
                if skip >= s.len() {
                    skip -= s.len();
                } else {
                    iov[n] = IoSlice::new(&s[skip..]);
                    skip = 0;
                    n += 1;
                }
            };
            push(hdr.as_bytes());
            push(&ZEROES[..usize::from(e.pad)]);
            if let Some(r) = e.data_req {
                let mut left = e.data_len as usize;
                for b in &reqs.req(r).bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(b.len());
                    push(&b.as_slice()[..take]);
                    left -= take;
                }
                assert_eq!(left, 0, "request data shorter than the PDU says");
            }
            if let Some(d) = ddgst {
                push(d);
            }
            push(&self.term_data[..usize::from(e.term_len)]);
        }
        n
    }

    fn advance(&mut self, mut written: usize, out: &mut Flushed) {
        while written > 0 {
            let e = self.queue.front_mut().expect("wrote more than was queued");
            let left = e.total() - e.sent;
            if written < left {
                e.sent += written;
                return;
            }
            written -= left;
            let e = self.queue.pop_front().expect("checked above");
            match e.after {
                AfterSend::Nothing => {}
                AfterSend::FreeReq(r) => out.freed.push(r),
                AfterSend::Close => {
                    out.close = true;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_wire::nvme::{Completion, Status};
    use quire_wire::tcp::{encode_capsule_resp, Digests};

    /// A socket that takes at most `max` bytes per write.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
    }

    impl AsRawFd for Trickle {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(self.max);
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut reqs = ReqTable::new(2, 1);
        let mut tx = Tx::new(8);
        let a = encode_capsule_resp(&Completion::new(1, Status::SUCCESS), Digests::default());
        let b = encode_capsule_resp(&Completion::new(2, Status::SUCCESS), Digests { header: true, data: false });
        tx.push(TxEntry::header(a, AfterSend::FreeReq(0)));
        tx.push(TxEntry::header(b, AfterSend::FreeReq(1)));
        let mut sock = Trickle { out: Vec::new(), max: 5 };
        let mut out = Flushed::default();
        tx.flush(&mut sock, &mut reqs, &mut out).unwrap();
        assert!(tx.is_empty());
        assert_eq!(out.freed, vec![0, 1]);
        let mut expect = a.as_bytes().to_vec();
        expect.extend_from_slice(b.as_bytes());
        assert_eq!(sock.out, expect);
        assert_eq!(out.bytes, expect.len());
    }
}
