//! io_uring backend (written in the next change).
