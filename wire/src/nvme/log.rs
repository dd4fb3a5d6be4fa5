//! Log pages (filled in by a later change).
