//! Identify data structures (filled in by a later change).
