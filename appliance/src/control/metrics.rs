//! What the metrics endpoint exports, from the counters `quire stats` reads.
//!
//! Names follow the Prometheus conventions: `quire_` prefix, base units (seconds,
//! bytes), `_total` for counters. Labels: `reactor` (index), `volume` (name).
//! Reactor counters are single-writer atomics read here without stopping anyone, so
//! a scrape is a consistent-enough snapshot, never a lock on the I/O path.

use std::sync::atomic::AtomicU64;

use super::Control;
use crate::metrics::exposition::{Exposition, Kind};
use crate::reactor::stats::{get, latency_bound_us, LatencyHistogram, ReactorStats, VolumeCounters, LATENCY_BUCKETS};

type ReactorField = fn(&ReactorStats) -> &AtomicU64;
type VolumeField = fn(&VolumeCounters) -> &AtomicU64;

/// Per-reactor counters: name, help, accessor.
const REACTOR_COUNTERS: &[(&str, &str, ReactorField)] = &[
    ("quire_reactor_polls_total", "Poll-loop iterations.", |s| &s.polls),
    ("quire_reactor_busy_polls_total", "Poll-loop iterations that found work.", |s| &s.busy_polls),
    ("quire_reactor_sleeps_total", "Times the reactor slept (hybrid polling).", |s| &s.sleeps),
    ("quire_reactor_commands_total", "Host commands completed successfully.", |s| &s.commands),
    ("quire_reactor_rx_bytes_total", "Bytes received from host sockets.", |s| &s.rx_bytes),
    ("quire_reactor_tx_bytes_total", "Bytes sent to host sockets.", |s| &s.tx_bytes),
    ("quire_reactor_rx_copied_bytes_total", "Received payload bytes copied in userspace.", |s| &s.rx_copied_bytes),
    ("quire_reactor_tx_copied_bytes_total", "Sent payload bytes copied in userspace (none).", |s| &s.tx_copied_bytes),
    ("quire_reactor_device_requests_total", "Requests submitted to the reactor's device queue.", |s| {
        &s.device_requests
    }),
    ("quire_reactor_zero_filled_bytes_total", "Read bytes of never-written pages, zero-filled.", |s| {
        &s.zero_filled_bytes
    }),
    ("quire_reactor_zero_copy_sends_total", "Sends with MSG_ZEROCOPY.", |s| &s.zero_copy_sends),
    ("quire_reactor_credit_waits_total", "Allocations and frees that waited for a control credit.", |s| {
        &s.credit_waits
    }),
    ("quire_reactor_forwarded_parts_total", "Parts of host I/O forwarded to the peers owning their pages.", |s| {
        &s.forwarded_parts
    }),
    ("quire_reactor_forwarded_bytes_total", "Data bytes of forwarded parts (not copied).", |s| &s.forwarded_bytes),
    ("quire_reactor_path_errors_total", "Forwarded parts failed with a path error after the hold.", |s| &s.path_errors),
    ("quire_replica_releads_total", "Host writes sent to a page's new leader after a cut-over.", |s| &s.releads),
    ("quire_replica_writes_total", "Replica writes sent as a page set's leader, one per member.", |s| &s.replica_parts),
    ("quire_replica_write_bytes_total", "Data bytes of replica writes (not copied).", |s| &s.replica_bytes),
    ("quire_replica_order_waits_total", "Writes that waited for their pieces or for a leader.", |s| &s.order_waits),
    ("quire_replica_fenced_total", "Commands refused while this peer's lease might have expired.", |s| &s.fenced),
    ("quire_replica_skipped_total", "Replica writes completed without a member evicted meanwhile.", |s| {
        &s.replica_skipped
    }),
    ("quire_rebuild_bytes_total", "Data bytes copied to members being rebuilt.", |s| &s.rebuild_bytes),
    ("quire_scrub_mismatches_total", "Units a scrub found different on a member, and repaired.", |s| {
        &s.scrub_mismatches
    }),
    ("quire_peer_link_served_total", "Requests of other peers served on inbound links.", |s| &s.link_served),
    ("quire_peer_link_errors_total", "Requests of other peers answered with an error.", |s| &s.link_errors),
    ("quire_peer_link_refusals_total", "Inbound peer links refused at the handshake.", |s| &s.link_refusals),
    ("quire_peer_link_stalls_total", "Times an inbound peer link waited for buffers.", |s| &s.link_stalls),
    ("quire_peer_link_rx_bytes_total", "Bytes received on inbound peer links.", |s| &s.link_rx_bytes),
    ("quire_peer_link_tx_bytes_total", "Bytes sent on inbound peer links.", |s| &s.link_tx_bytes),
];

/// Per-reactor gauges.
const REACTOR_GAUGES: &[(&str, &str, ReactorField)] = &[
    ("quire_reactor_connections", "Host connections served.", |s| &s.connections),
    ("quire_reactor_buffers_free", "Free pool buffers of the reactor's shard.", |s| &s.buffers_free),
    ("quire_reactor_buffers", "Pool buffers of the reactor's shard.", |s| &s.buffers_total),
    ("quire_reactor_requests_active", "Requests its connections hold.", |s| &s.requests_active),
    ("quire_reactor_connections_closing", "Connections closing (draining I/O).", |s| &s.connections_closing),
    ("quire_reactor_retired_buffers", "Buffers retired after a zero-copy send never completed.", |s| {
        &s.retired_buffers
    }),
    ("quire_reactor_forwards_outstanding", "Forwarded parts waiting for their owner's answer.", |s| {
        &s.forwards_outstanding
    }),
];

/// Per-volume counters, summed over the reactors.
const VOLUME_COUNTERS: &[(&str, &str, VolumeField)] = &[
    ("quire_volume_read_ops_total", "Read commands.", |c| &c.read_ops),
    ("quire_volume_write_ops_total", "Write commands.", |c| &c.write_ops),
    ("quire_volume_read_bytes_total", "Bytes read.", |c| &c.read_bytes),
    ("quire_volume_write_bytes_total", "Bytes written.", |c| &c.write_bytes),
    ("quire_volume_other_ops_total", "Flush, Write Zeroes and Dataset Management commands.", |c| &c.other_ops),
    ("quire_volume_errors_total", "Commands completed with an error status.", |c| &c.errors),
];

fn seconds(ns: u64) -> f64 {
    // Precision is not a concern at these magnitudes (2^53 ns is 104 days of latency sum).
    #[allow(clippy::cast_precision_loss)]
    let s = ns as f64 / 1e9;
    s
}

impl Control {
    /// The text of one scrape.
    pub(super) fn metrics_text(&self) -> String {
        let mut e = Exposition::default();
        e.family("quire_build_info", Kind::Gauge, "The running quire's version.");
        e.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
        e.family("quire_uptime_seconds", Kind::Gauge, "Seconds since the peer started.");
        e.sample(&[], self.started.elapsed().as_secs_f64());

        let reactors: Vec<(String, &ReactorStats)> =
            self.reactors.iter().enumerate().map(|(i, r)| (i.to_string(), &*r.stats)).collect();
        for (name, help, field) in REACTOR_COUNTERS {
            e.family(name, Kind::Counter, help);
            for (i, s) in &reactors {
                e.sample(&[("reactor", i)], get(field(s)));
            }
        }
        e.family("quire_reactor_sleep_seconds_total", Kind::Counter, "Time asleep waiting for work (hybrid polling).");
        for (i, s) in &reactors {
            e.sample(&[("reactor", i)], seconds(get(&s.sleep_ns)));
        }
        for (name, help, field) in REACTOR_GAUGES {
            e.family(name, Kind::Gauge, help);
            for (i, s) in &reactors {
                e.sample(&[("reactor", i)], get(field(s)));
            }
        }

        // Each reactor's link to each other peer of the group.
        type LinkField = fn(&crate::reactor::stats::LinkCounters) -> &std::sync::atomic::AtomicU64;
        const LINK_SERIES: &[(&str, Kind, &str, LinkField)] = &[
            ("quire_peer_link_up", Kind::Gauge, "1 while the reactor's link to the peer is up.", |c| &c.up),
            ("quire_peer_link_forwarded_total", Kind::Counter, "Forwards the peer answered on the link.", |c| {
                &c.forwarded
            }),
            ("quire_peer_link_outstanding", Kind::Gauge, "Forwards waiting or in flight on the link.", |c| {
                &c.outstanding
            }),
            (
                "quire_peer_link_held_out_total",
                Kind::Counter,
                "Forwards failed with a path error after the hold.",
                |c| &c.held_out,
            ),
            ("quire_peer_link_connects_total", Kind::Counter, "Connections the link made.", |c| &c.connects),
            ("quire_peer_link_sent_bytes_total", Kind::Counter, "Bytes the link sent.", |c| &c.tx_bytes),
            ("quire_peer_link_received_bytes_total", Kind::Counter, "Bytes the link received.", |c| &c.rx_bytes),
        ];
        let peers: Vec<(u16, String)> = self
            .peer_names
            .iter()
            .filter(|&(&id, _)| id != self.me.0 && usize::from(id) < crate::reactor::stats::LINK_PEERS_MAX)
            .map(|(&id, n)| (id, n.clone()))
            .collect();
        if !peers.is_empty() {
            for (name, kind, help, field) in LINK_SERIES {
                e.family(name, *kind, help);
                for (i, s) in &reactors {
                    for (id, peer) in &peers {
                        e.sample(&[("reactor", i), ("peer", peer)], get(field(&s.links.0[usize::from(*id)])));
                    }
                }
            }
        }

        let volumes = self.store.volumes();
        let sum =
            |id, f: VolumeField| -> u64 { self.counters.get(&id).map_or(0, |cs| cs.iter().map(|c| get(f(c))).sum()) };
        for (name, help, field) in VOLUME_COUNTERS {
            e.family(name, Kind::Counter, help);
            for v in &volumes {
                e.sample(&[("volume", &v.info.name)], sum(v.info.id, *field));
            }
        }
        e.family(
            "quire_volume_qos_waits_total",
            Kind::Counter,
            "Commands that waited for the volume's limits on this peer (quire volume set-limits).",
        );
        for v in &volumes {
            e.sample(&[("volume", &v.info.name)], get(&v.qos.volume.waited));
        }
        e.family(
            "quire_volume_qos_host_waits_total",
            Kind::Counter,
            "Commands that waited for the per-host limit, by host (hosts with an I/O queue here).",
        );
        for v in &volumes {
            let mut hosts = v.qos.hosts();
            hosts.sort_by(|a, b| a.0.cmp(&b.0));
            for (host, p) in hosts {
                e.sample(&[("volume", &v.info.name), ("host", &host)], get(&p.waited));
            }
        }
        e.family("quire_volume_limit", Kind::Gauge, "The volume's group-wide limits (0: none), by kind.");
        for v in &volumes {
            let l = self.limits_of(v.info.id);
            for (kind, x) in
                [("iops", l.iops), ("mib_s", l.mib_s), ("host_iops", l.host_iops), ("host_mib_s", l.host_mib_s)]
            {
                e.sample(&[("volume", &v.info.name), ("kind", kind)], u64::from(x));
            }
        }
        e.family("quire_volume_size_bytes", Kind::Gauge, "Volume size.");
        for v in &volumes {
            e.sample(&[("volume", &v.info.name)], v.info.size_bytes());
        }
        e.family("quire_volume_allocated_pages", Kind::Gauge, "Pages written at least once (thin provisioning).");
        for v in &volumes {
            e.sample(&[("volume", &v.info.name)], v.pages.allocated());
        }
        let health: Vec<(u8, String, u64)> = volumes
            .iter()
            .map(|v| self.records.get(&v.info.id).map_or((1, "healthy".into(), 0), |(r, _)| super::health_of(r)))
            .collect();
        e.family("quire_volume_replicas", Kind::Gauge, "Copies of each page the group keeps.");
        for (v, h) in volumes.iter().zip(&health) {
            e.sample(&[("volume", &v.info.name)], u64::from(h.0));
        }
        e.family("quire_volume_degraded_pages", Kind::Gauge, "Pages with fewer in-sync copies than replicas.");
        for (v, h) in volumes.iter().zip(&health) {
            e.sample(&[("volume", &v.info.name)], h.2);
        }
        e.family(
            "quire_volume_rebuilding",
            Kind::Gauge,
            "1 while a copy is being built for a degraded page of the volume.",
        );
        for (v, h) in volumes.iter().zip(&health) {
            e.sample(&[("volume", &v.info.name)], u64::from(h.1 == "rebuilding"));
        }
        let bounds: Vec<Option<f64>> =
            (0..LATENCY_BUCKETS).map(|k| latency_bound_us(k).map(|us| seconds(us * 1000))).collect();
        for (name, help, write) in [
            ("quire_volume_read_latency_seconds", "Read latency, capsule received to response queued.", false),
            ("quire_volume_write_latency_seconds", "Write latency, capsule received to response queued.", true),
        ] {
            e.family(name, Kind::Histogram, help);
            for v in &volumes {
                let mut counts = [0u64; LATENCY_BUCKETS];
                let mut sum_ns = 0u64;
                for c in self.counters.get(&v.info.id).iter().flat_map(|cs| cs.iter()) {
                    let h: &LatencyHistogram = if write { &c.write_latency } else { &c.read_latency };
                    for (k, n) in counts.iter_mut().enumerate() {
                        *n += get(&h.buckets[k]);
                    }
                    sum_ns += get(&h.sum_ns);
                }
                e.histogram(&[("volume", &v.info.name)], &counts, &bounds, seconds(sum_ns));
            }
        }

        let cap = self.store.capacity();
        for (name, help, value) in [
            ("quire_store_capacity_bytes", "Bytes of the page store's data region.", cap.total_bytes),
            ("quire_store_used_bytes", "Bytes of it in use.", cap.used_bytes),
            ("quire_store_free_bytes", "Bytes of it free.", cap.free_bytes),
            ("quire_store_volumes", "Volumes in the page store.", u64::try_from(volumes.len()).unwrap_or(u64::MAX)),
        ] {
            e.family(name, Kind::Gauge, help);
            e.sample(&[], value);
        }
        let controllers = self.registry.lock().controllers.len();
        e.family("quire_controllers", Kind::Gauge, "Connected NVMe-oF controllers (host associations).");
        e.sample(&[], controllers);

        if let Some(g) = &self.group {
            let st = g.status();
            e.family("quire_group_etcd_up", Kind::Gauge, "1 while etcd is reachable.");
            e.sample(&[], u8::from(st.etcd_state == "connected"));
            e.family("quire_group_peers", Kind::Gauge, "Peers of the group by state.");
            for state in ["live", "gone"] {
                e.sample(&[("state", state)], st.peers.iter().filter(|p| p.state == state).count());
            }
            e.family("quire_group_coordinator", Kind::Gauge, "1 on the coordinator.");
            e.sample(&[], u8::from(st.coordinator.as_deref() == Some(st.peer.as_str())));
        }
        e.finish()
    }
}
