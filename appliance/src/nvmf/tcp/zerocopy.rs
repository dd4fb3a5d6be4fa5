//! Zero-copy sends (`MSG_ZEROCOPY`): the kernel sends straight from our pool buffers.
//!
//! A plain `writev` copies every payload byte into kernel socket buffers. With
//! `SO_ZEROCOPY` set, `sendmsg(MSG_ZEROCOPY)` pins the pages instead, and the memory must
//! stay untouched until the kernel says it is done with it: each successful zero-copy
//! `sendmsg` on a socket gets the next number of a 32-bit counter, and completions
//! arrive on the socket's error queue as ranges of those numbers (`recvmsg` with
//! `MSG_ERRQUEUE`; the socket reports `EPOLLERR` when one is queued). SPDK's posix sock
//! layer does the same for target sockets. On loopback the kernel still copies, but at
//! delivery, on the receiver's core; on a NIC the copy disappears.
//!
//! This module is only the system-call layer; `tx.rs` keeps request buffers alive until
//! their send is complete. All `unsafe` of the target's socket path is here.

use std::io;
use std::os::fd::RawFd;

/// `SO_ZEROCOPY` (asm-generic/socket.h; the same on x86-64 and arm64).
const SO_ZEROCOPY: libc::c_int = 60;
/// `SO_EE_ORIGIN_ZEROCOPY` (linux/errqueue.h).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;

/// Turns zero-copy sends on for `fd`; an error means the kernel or socket cannot.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; `fd` is a
    // socket the caller owns for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Cuts a TCP connection off at once (`connect(AF_UNSPEC)`: the kernel sends a reset
/// and drops what was queued to send), so that the pages zero-copy sends pinned are let
/// go and their completions reported. Errors are ignored: the socket is being closed.
pub fn abort(fd: RawFd) {
    // SAFETY: sockaddr is plain data; an all-zero one with family AF_UNSPEC is what
    // "disconnect" asks for.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::sa_family_t::try_from(libc::AF_UNSPEC).expect("AF_UNSPEC is 0");
    // SAFETY: `addr` is a live local of the size given; `fd` is a socket the caller owns.
    let _ = unsafe { libc::connect(fd, &addr, socklen_of::<libc::sockaddr>()) };
}

/// `sendmsg` of `iov` with `MSG_ZEROCOPY`: bytes sent, or the error (`WouldBlock` when
/// the socket buffer is full). Every call that returns `Ok(n > 0)` takes the next
/// completion number.
pub fn send(fd: RawFd, iov: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: `msg` points at `iov.len()` iovecs that borrow live memory for the call;
    // the kernel only reads them. The pages stay pinned after the call, which the
    // caller (tx.rs) accounts for by keeping the buffers until `completions` says so.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_ZEROCOPY | libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    // A negative return is an error; otherwise the count fits a usize.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The size of `T` as a socket-option / address length.
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("a small C struct")
}

/// Reads one zero-copy completion from the error queue: the inclusive range of
/// completion numbers it covers, or `None` when the queue is empty.
pub fn completion(fd: RawFd) -> io::Result<Option<(u32, u32)>> {
    // Room for one cmsg carrying a sock_extended_err (and its offender address).
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` has no data iovecs and a control buffer we own for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, within
    // msg_controllen; the extended error is read unaligned from the cmsg's data.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let is_err = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if is_err {
                let ee: libc::sock_extended_err = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 {
                    return Ok(Some((ee.ee_info, ee.ee_data)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // Something else on the error queue (not ours): report nothing.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSlice, Read};
    use std::os::fd::AsRawFd;

    #[test]
    fn zero_copy_sends_complete_in_order_and_deliver_the_bytes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut rx, _) = l.accept().unwrap();
        // SO_ZEROCOPY is in every kernel Quire runs on (Linux 4.14 and later): no skip.
        enable(tx.as_raw_fd()).expect("SO_ZEROCOPY");
        let data = vec![0x5au8; 8192];
        let mut sent = 0;
        for _ in 0..3 {
            sent += send(tx.as_raw_fd(), &[IoSlice::new(&data)]).unwrap();
        }
        let mut got = vec![0u8; sent];
        rx.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 0x5a));
        // Three calls: completions 0..=2, possibly in several ranges.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut upto = None;
        while upto != Some(2) {
            assert!(std::time::Instant::now() < deadline, "no completion for call 2");
            if let Some((lo, hi)) = completion(tx.as_raw_fd()).unwrap() {
                assert!(lo <= hi);
                upto = Some(hi);
            }
        }
    }
}
