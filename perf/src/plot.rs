//! `--plot FILE.svg`: the latency histogram and its CDF on a log-scaled time axis.
//!
//! A self-contained SVG (no scripts, no external fonts) so that it renders in a
//! browser or a README as is. Bars: share of I/Os per logarithmic bin (left axis);
//! line: cumulative share (right axis, 0–100 %); dashed lines: p50, p99, p99.9.
//!
//! The axis ends a little above p99.99, not at the maximum: one stall of a few
//! milliseconds would otherwise squeeze every other I/O into a single bar. I/Os
//! beyond the axis count in the last bar, and the maximum is printed under the title.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 900.0;
const H: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 830.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 390.0;
/// Bins across the latency range.
const BINS: usize = 60;
/// The axis ends at this quantile times [`AXIS_HEADROOM`] (or at the maximum).
const AXIS_QUANTILE: f64 = 0.9999;
/// Room above [`AXIS_QUANTILE`].
const AXIS_HEADROOM: f64 = 1.25;
/// Percentiles marked with a dashed line.
const MARKS: [(f64, &str); 3] = [(50.0, "p50"), (99.0, "p99"), (99.9, "p99.9")];

/// The SVG document for latencies `hist` (ns), titled `title`.
pub fn svg(hist: &Histogram<u64>, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#, W / 2.0, escape(title));
    if hist.is_empty() {
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">no I/O completed</text></svg>"#, W / 2.0, H / 2.0);
        return s;
    }
    let lo_us = (hist.min().max(1) as f64 / 1000.0).max(0.001);
    let max_us = hist.max() as f64 / 1000.0;
    let axis_us = hist.value_at_quantile(AXIS_QUANTILE) as f64 / 1000.0 * AXIS_HEADROOM;
    let hi_us = axis_us.min(max_us).max(lo_us * 1.01);
    assert!(hi_us > lo_us);
    if max_us > hi_us {
        // hi_us is positive and at most the histogram's max (a u64 of ns): the cast
        // neither drops a sign nor saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let hi_ns = (hi_us * 1000.0) as u64;
        let beyond = hist.count_between(hi_ns.saturating_add(1), hist.max());
        let _ = writeln!(
            s,
            r#"<text x="{}" y="40" text-anchor="middle" font-size="11">max {:.1} us; {beyond} I/Os ({:.4} %) beyond the axis, counted in the last bar</text>"#,
            W / 2.0,
            max_us,
            beyond as f64 * 100.0 / hist.len() as f64
        );
    }
    let (l0, l1) = (lo_us.log10(), hi_us.log10());
    let x_of = |us: f64| LEFT + (us.clamp(lo_us, hi_us).log10() - l0) / (l1 - l0) * (RIGHT - LEFT);
    let mut bins = [0u64; BINS];
    for v in hist.iter_recorded() {
        let us = v.value_iterated_to() as f64 / 1000.0;
        // Non-negative (us >= lo_us) and clamped to the last bin below; `as` saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let f = ((us.max(lo_us).log10() - l0) / (l1 - l0) * BINS as f64) as usize;
        bins[f.min(BINS - 1)] += v.count_since_last_iteration();
    }
    let total = hist.len() as f64;
    let peak = *bins.iter().max().expect("bins") as f64 / total;
    let bar_w = (RIGHT - LEFT) / BINS as f64;
    for (i, &n) in bins.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let h = n as f64 / total / peak * (BOTTOM - TOP);
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4c78a8"><title>{:.3}–{:.3} us: {n} I/Os</title></rect>"##,
            LEFT + i as f64 * bar_w,
            BOTTOM - h,
            (bar_w - 1.0).max(1.0),
            h,
            10f64.powf(l0 + (l1 - l0) * i as f64 / BINS as f64),
            10f64.powf(l0 + (l1 - l0) * (i + 1) as f64 / BINS as f64),
        );
    }
    let mut pts = String::new();
    let mut so_far = 0u64;
    let _ = write!(pts, "{LEFT:.1},{BOTTOM:.1} ");
    for v in hist.iter_recorded() {
        so_far += v.count_since_last_iteration();
        let x = x_of(v.value_iterated_to() as f64 / 1000.0);
        let y = BOTTOM - so_far as f64 / total * (BOTTOM - TOP);
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(s, r##"<polyline points="{pts}" fill="none" stroke="#e45756" stroke-width="2"/>"##);
    for (i, (pct, name)) in MARKS.iter().enumerate() {
        let us = hist.value_at_percentile(*pct) as f64 / 1000.0;
        let x = x_of(us);
        let y = TOP + 14.0 + 14.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" stroke="#555" stroke-dasharray="4 3"/><text x="{:.1}" y="{y:.1}" fill="#333" stroke="white" stroke-width="3" paint-order="stroke">{name} {us:.2} us</text>"##,
            x + 4.0
        );
    }
    axes(&mut s, lo_us, hi_us, &x_of, peak);
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, lo_us: f64, hi_us: f64, x_of: &dyn Fn(f64) -> f64, peak: f64) {
    let _ = writeln!(s, r#"<path d="M{LEFT},{TOP} V{BOTTOM} H{RIGHT} V{TOP}" fill="none" stroke="black"/>"#);
    let mut decade = 10f64.powf(lo_us.log10().floor());
    // Within about a decade, 1, 2, 5 leave too few ticks.
    let fine = hi_us / lo_us < 20.0;
    let steps: &[f64] = if fine { &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] } else { &[1.0, 2.0, 5.0] };
    while decade <= hi_us * 1.0001 {
        for &m in steps {
            let v = decade * m;
            if v < lo_us * 0.9999 || v > hi_us * 1.0001 {
                continue;
            }
            let x = x_of(v);
            let _ =
                writeln!(s, r#"<line x1="{x:.1}" y1="{BOTTOM}" x2="{x:.1}" y2="{}" stroke="black"/>"#, BOTTOM + 5.0);
            let _ = writeln!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, BOTTOM + 19.0, fmt_us(v));
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (us, log scale)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let y = BOTTOM - f * (BOTTOM - TOP);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.1}%</text>"#,
            LEFT - 6.0,
            y + 4.0,
            f * peak * 100.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}">{:.0}%</text>"#, RIGHT + 6.0, y + 4.0, f * 100.0);
    }
    let _ = writeln!(s, r##"<text x="{LEFT}" y="{}" fill="#4c78a8">share of I/Os per bin</text>"##, TOP - 8.0);
    let _ = writeln!(
        s,
        r##"<text x="{RIGHT}" y="{}" text-anchor="end" fill="#e45756">cumulative (CDF)</text>"##,
        TOP - 8.0
    );
}

fn fmt_us(v: f64) -> String {
    if v >= 1.0 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::new_histogram;

    #[test]
    fn svg_has_bars_a_cdf_and_log_ticks() {
        let mut h = new_histogram();
        for us in [5u64, 10, 10, 20, 150, 900] {
            h.record(us * 1000).unwrap();
        }
        let s = svg(&h, "a <test>");
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("a &lt;test&gt;"));
        assert!(s.contains("<polyline"));
        assert!(s.matches("<rect").count() > 5);
        for tick in [">10<", ">100<", ">500<"] {
            assert!(s.contains(tick), "tick {tick} missing");
        }
        assert!(svg(&new_histogram(), "x").contains("no I/O completed"));
        assert!(!s.contains("beyond the axis"), "the axis reaches the maximum of a short tail");
    }

    #[test]
    fn a_rare_stall_does_not_stretch_the_axis() {
        let mut h = new_histogram();
        h.record_n(5_000, 100_000).unwrap();
        h.record_n(6_000, 10_000).unwrap();
        h.record(3_000_000).unwrap();
        let s = svg(&h, "t");
        assert!(s.contains("max 3000.") && s.contains(" us; 1 I/Os (0.0009 %) beyond the axis"), "{s}");
        assert!(!s.contains(">1000<") && !s.contains(">2000<"), "the axis stops near p99.99: {s}");
        assert!(s.contains(">5<") && s.contains(">6<"), "fine ticks inside one decade: {s}");
        assert!(s.contains("p50 5.00 us") && s.contains("p99.9 6.00 us"), "{s}");
    }
}
