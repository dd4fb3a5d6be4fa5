//! The send path: a bounded queue of PDUs written with vectored writes.
//!
//! A queued PDU is a header (with its digest), optional padding (when the host asked
//! for data alignment with HPDA), optional data that stays in the request's pool
//! buffers, and an optional data digest. [`Tx::flush`] gathers as many queued PDUs as
//! fit in one `writev` and remembers how far a partial write got.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};

use quire_wire::tcp::HeaderBuf;

use crate::target::tcp::req::ReqTable;

/// Most slices handed to one `writev`.
const IOV_MAX: usize = 128;
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
        TxEntry { hdr, pad: 0, data_req: None, data_len: 0, ddgst: None, term_len: 0, after, sent: 0 }
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
            pad: 0,
            data_req: None,
            data_len: 0,
            ddgst: None,
            term_len: term_len as u8,
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

    /// Writes as much as the socket takes; `freed` lists requests whose PDUs are all out.
    pub fn flush(&mut self, sock: &mut impl Write, reqs: &ReqTable, out: &mut Flushed) -> std::io::Result<()> {
        while !self.queue.is_empty() && !self.blocked {
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let n = self.gather(reqs, &mut iov);
            assert!(n > 0);
            match sock.write_vectored(&iov[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    out.bytes += written;
                    self.advance(written, out);
                    if out.close {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.blocked = true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn gather<'a>(&'a self, reqs: &'a ReqTable, iov: &mut [IoSlice<'a>; IOV_MAX]) -> usize {
        let mut n = 0;
        for e in &self.queue {
            // Every entry needs at most 4 slices plus its data buffers.
            let bufs = e.data_req.map_or(0, |r| reqs.req(r).bufs.len());
            if n + 4 + bufs > IOV_MAX {
                break;
            }
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
            push(e.hdr.as_bytes());
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
            if let Some(d) = &e.ddgst {
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
        let reqs = ReqTable::new(2, 1);
        let mut tx = Tx::new(8);
        let a = encode_capsule_resp(&Completion::new(1, Status::SUCCESS), Digests::default());
        let b = encode_capsule_resp(&Completion::new(2, Status::SUCCESS), Digests { header: true, data: false });
        tx.push(TxEntry::header(a, AfterSend::FreeReq(0)));
        tx.push(TxEntry::header(b, AfterSend::FreeReq(1)));
        let mut sock = Trickle { out: Vec::new(), max: 5 };
        let mut out = Flushed::default();
        tx.flush(&mut sock, &reqs, &mut out).unwrap();
        assert!(tx.is_empty());
        assert_eq!(out.freed, vec![0, 1]);
        let mut expect = a.as_bytes().to_vec();
        expect.extend_from_slice(b.as_bytes());
        assert_eq!(sock.out, expect);
        assert_eq!(out.bytes, expect.len());
    }
}
