//! Fixtures shared by the backend's tests.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::block::{Completion, QueuePair};

/// A temporary directory on a real disk: `/tmp` may be tmpfs, whose O_DIRECT and
/// fallocate support differ from the file systems the appliance runs on.
pub(super) fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).expect("a temporary directory")
}

/// True when `fd` becomes readable within `timeout_ms`.
pub(super) fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd on our stack, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// Polls until `n` completions arrived, sleeping on the completion eventfd between
/// polls; panics after 30 seconds.
pub(super) fn wait_for(qp: &mut dyn QueuePair, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = Vec::with_capacity(n);
    while done.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} completions after 30 s", done.len());
        let want = n - done.len();
        if qp.poll(want, &mut |c| done.push(c)) == 0 {
            if let Some(fd) = qp.completion_fd() {
                readable(fd, 100);
            }
        }
    }
    assert_eq!(done.len(), n, "poll reported more than asked");
    done
}
