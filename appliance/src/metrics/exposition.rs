//! The Prometheus text exposition format (version 0.0.4), written by hand: a few
//! lines of `# HELP`, `# TYPE` and `name{label="value"} number`.
//!
//! The writer keeps every family's samples together (the format requires it) by
//! having the caller emit one family at a time, and escapes label values.

use std::fmt::{Display, Write};

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets at restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text of one scrape.
#[derive(Default)]
pub struct Exposition {
    text: String,
    family: Option<(String, Kind)>,
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    /// Starts family `name` of `kind`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
        self.family = Some((name.to_string(), kind));
    }

    fn current(&self) -> (&str, Kind) {
        let (name, kind) = self.family.as_ref().expect("a sample belongs to a family");
        (name, *kind)
    }

    /// One sample of the current (counter or gauge) family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        let (name, kind) = self.current();
        assert_ne!(kind, Kind::Histogram, "histograms take histogram()");
        let line = format!("{name}{} {value}\n", labels_text(labels));
        self.text.push_str(&line);
    }

    /// One histogram of the current histogram family: `counts[k]` observations in
    /// bucket `k` (not cumulative), whose upper bound is `bounds[k]` (`None`: +Inf,
    /// the last), and the sum of the observations.
    pub fn histogram(&mut self, labels: &[(&str, &str)], counts: &[u64], bounds: &[Option<f64>], sum: f64) {
        let (name, kind) = self.current();
        assert_eq!(kind, Kind::Histogram);
        assert_eq!(counts.len(), bounds.len());
        assert_eq!(bounds.last(), Some(&None), "the last bucket is +Inf");
        let name = name.to_string();
        let mut cumulative = 0u64;
        for (count, bound) in counts.iter().zip(bounds) {
            cumulative += count;
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            let _ = writeln!(self.text, "{name}_bucket{} {cumulative}", labels_text(&with_le));
        }
        let l = labels_text(labels);
        let _ = writeln!(self.text, "{name}_sum{l} {sum}");
        let _ = writeln!(self.text, "{name}_count{l} {cumulative}");
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_in_the_text_format() {
        let mut e = Exposition::default();
        e.family("quire_x_total", Kind::Counter, "Things.\nMore.");
        e.sample(&[("volume", "a\"b\\c")], 3);
        e.sample(&[], 4);
        e.family("quire_lat_seconds", Kind::Histogram, "Latency.");
        e.histogram(&[("volume", "v")], &[1, 0, 2], &[Some(0.000001), Some(0.000002), None], 0.5);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP quire_x_total Things.\\nMore.\n# TYPE quire_x_total counter\n\
             quire_x_total{volume=\"a\\\"b\\\\c\"} 3\nquire_x_total 4\n\
             # HELP quire_lat_seconds Latency.\n# TYPE quire_lat_seconds histogram\n\
             quire_lat_seconds_bucket{volume=\"v\",le=\"0.000001\"} 1\n\
             quire_lat_seconds_bucket{volume=\"v\",le=\"0.000002\"} 1\n\
             quire_lat_seconds_bucket{volume=\"v\",le=\"+Inf\"} 3\n\
             quire_lat_seconds_sum{volume=\"v\"} 0.5\nquire_lat_seconds_count{volume=\"v\"} 3\n"
        );
    }
}
