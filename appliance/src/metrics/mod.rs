//! Metrics a monitoring system scrapes: a Prometheus text-format endpoint
//! (`[metrics] listen`, off by default).
//!
//! [`exposition`] writes the format; [`http`] serves it; what is exported, and from
//! which counters, is `control/metrics.rs` (the same counters `quire stats` shows).

pub mod exposition;
pub mod http;
