//! The few raw system calls the io_uring backend needs and `std` does not offer: the
//! block-device size ioctls and the eventfd that wakes a sleeping reactor.
//!
//! Everything that calls `libc` in this backend lives here, one function per call, each
//! returning an `io::Result`, so the rest of the backend is safe code (the ring itself is
//! driven through the `io-uring` crate).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `fallocate(2)` mode of a WriteZeroes: zero the range, keep the file size.
pub(super) const FALLOCATE_ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
/// `fallocate(2)` mode of a Deallocate: punch a hole, keep the file size.
pub(super) const FALLOCATE_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// `pwritev2(2)` flag that makes one write durable before it completes (FUA).
pub(super) const RWF_DSYNC: i32 = libc::RWF_DSYNC;

// `BLKGETSIZE64` is `_IOR(0x12, 114, size_t)`; the `libc` crate does not export it. The
// direction bits sit in a different place on powerpc, mips and sparc.
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const BLKGETSIZE64: libc::Ioctl = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const BLKGETSIZE64: libc::Ioctl = (2 << 29) | (8 << 16) | (0x12 << 8) | 114;

const _: () = assert!(std::mem::size_of::<libc::size_t>() == 8, "BLKGETSIZE64 encodes an 8-byte size");

/// Size in bytes of the block device open on `fd`.
pub(super) fn block_device_size_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live,
    // writable, aligned u64 on our stack; `fd` is a valid descriptor for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical block size in bytes of the block device open on `fd`.
pub(super) fn block_device_logical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live,
    // writable, aligned c_int on our stack; `fd` is a valid descriptor for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET, &mut size as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative logical block size"))
}

/// A new nonblocking, close-on-exec eventfd with a zero counter.
pub(super) fn eventfd_new() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is valid, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resets the eventfd's counter to zero; true when it was signalled. Never blocks.
pub(super) fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut value: u64 = 0;
    // SAFETY: reads exactly 8 bytes into a live, writable u64 on our stack.
    let rc = unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    if rc == 8 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if rc < 0 && err.kind() == io::ErrorKind::WouldBlock {
        return Ok(false);
    }
    Err(err)
}

/// Adds one to the eventfd's counter, making it readable.
pub(super) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let value: u64 = 1;
    // SAFETY: writes exactly 8 bytes from a live u64 on our stack.
    let rc = unsafe { libc::write(fd.as_raw_fd(), (&value as *const u64).cast(), 8) };
    if rc != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn eventfd_signal_then_drain_resets_the_counter() {
        let fd = eventfd_new().unwrap();
        assert!(!eventfd_drain(fd.as_fd()).unwrap(), "a new eventfd is not signalled");
        eventfd_signal(fd.as_fd()).unwrap();
        eventfd_signal(fd.as_fd()).unwrap();
        assert!(eventfd_drain(fd.as_fd()).unwrap());
        assert!(!eventfd_drain(fd.as_fd()).unwrap(), "one drain clears every signal");
    }

    #[test]
    fn block_ioctls_fail_cleanly_on_a_regular_file() {
        let file = tempfile::tempfile().unwrap();
        assert!(block_device_size_bytes(file.as_fd()).is_err());
        assert!(block_device_logical_block_size(file.as_fd()).is_err());
    }
}
