//! The one reader of a gateway's statistics, for `graylane status` and
//! `graylane rollout`: Envoy's admin `/stats` (text), asked with
//! `histogram_buckets=cumulative` so that latency histograms come as bucket
//! counts that two readings can be subtracted, giving percentiles over a
//! window rather than since start-up.
//!
//! What is read from a [`Snapshot`]:
//! - the live-rules source: `wasmcustom.graylane_source_version` and the
//!   fetch counters ([`SourceStats`]);
//! - the plugin's requests per service and subset,
//!   `wasmcustom.graylane_requests_total.service.<s>.subset.<x>`;
//! - per upstream cluster ([`ClusterStats`]): `cluster.<c>.upstream_rq_completed`,
//!   `upstream_rq_5xx` (answers of 500 and above from the upstream, and the
//!   503s Envoy answers itself after a reset or a failed connect), resets,
//!   connect failures and the `upstream_rq_time` histogram.
//!
//! The same [`Snapshot`] comes from a Prometheus endpoint when one is given
//! ([`Endpoint::Prometheus`]: Envoy's `/stats/prometheus`, on the admin
//! interface or a listener that exposes it): its names are mapped back to the
//! `/stats` names (`envoy_cluster_upstream_rq_5xx{envoy_cluster_name="c"}` →
//! `cluster.c.upstream_rq_5xx`, `graylane_source_version` →
//! `wasmcustom.graylane_source_version`, the request counter with or without
//! the README's `stats_tags`), histograms from their `_bucket` lines.
//!
//! Envoy merges histograms on its stats flush (`stats_flush_interval`, 5 s by
//! default), so latency lags counters by up to that long.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::http::{self, Url};

/// The prefix Envoy gives a Wasm plugin's own metrics in `/stats`.
pub const PLUGIN_PREFIX: &str = "wasmcustom.";

/// A latency histogram: cumulative counts at each bucket's upper bound (ms).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// Samples recorded (the count of the last bucket).
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, count)| *count)
    }

    /// What was recorded since `older` (same buckets; a reset counts as new).
    pub fn since(&self, older: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(bound, count)| {
                let before = older
                    .buckets
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0, |(_, c)| *c);
                (*bound, count.checked_sub(before).unwrap_or(*count))
            })
            .collect();
        Histogram { buckets }
    }

    /// The upper bound (ms) of the bucket holding the `percentile`-th sample;
    /// `None` without samples. Envoy's default buckets are 0.5, 1, 5, 10,
    /// 25, 50, 100, 250, 500, 1000, 2500 … ms: a coarse, upper estimate.
    pub fn percentile(&self, percentile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((percentile / 100.0) * total as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, count)| *count >= rank)
            .map(|(bound, _)| *bound)
    }

    /// Sums two histograms of the same buckets (two gateways).
    pub fn add(&mut self, other: &Histogram) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
            return;
        }
        for (bound, count) in &mut self.buckets {
            if let Some((_, more)) = other.buckets.iter().find(|(b, _)| b == bound) {
                *count = count.saturating_add(*more);
            }
        }
    }
}

/// Where a gateway's statistics are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The admin interface: `/stats` below this URL.
    Admin(Url),
    /// A Prometheus exposition of Envoy's statistics, at this URL
    /// (`/stats/prometheus` when the URL has no path).
    Prometheus(Url),
}

impl Endpoint {
    /// Reads the statistics once.
    pub fn fetch(&self, timeout: Duration) -> Result<Snapshot, String> {
        let (url, path) = match self {
            Endpoint::Admin(url) => (url, "/stats?histogram_buckets=cumulative"),
            Endpoint::Prometheus(url) if url.prefix.is_empty() => (url, "/stats/prometheus"),
            Endpoint::Prometheus(url) => (url, ""),
        };
        let response = http::get(url, path, timeout)?;
        if response.status != 200 {
            return Err(format!("{url}{path} answered {}: {}", response.status, response.text().trim()));
        }
        Ok(match self {
            Endpoint::Admin(_) => Snapshot::parse(&response.text()),
            Endpoint::Prometheus(_) => Snapshot::parse_prometheus(&response.text()),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Admin(url) => write!(f, "{url}"),
            Endpoint::Prometheus(url) => write!(f, "{url} (Prometheus)"),
        }
    }
}

/// One sample of a Prometheus exposition: name, labels, value.
type Sample<'t> = (&'t str, Vec<(&'t str, &'t str)>, f64);

/// `name{a="x",b="y"} value` → (name, labels, value); `None` for comments
/// and other shapes.
fn prometheus_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let labels = rest
                .strip_suffix('}')?
                .split("\",")
                .filter_map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((key, value.trim_end_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// One reading of a gateway's `/stats`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// Counters and gauges by full name.
    pub values: BTreeMap<String, u64>,
    pub histograms: BTreeMap<String, Histogram>,
}

/// The live-rules source as one gateway reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// `graylane_source_version`; `None` when the gateway has no source (or
    /// has not fetched yet).
    pub version: Option<u64>,
    pub fetches: u64,
    pub failures: u64,
    pub rejected: u64,
    pub not_modified: u64,
    pub updates: u64,
}

/// One upstream cluster's request outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStats {
    pub requests: u64,
    pub errors: u64,
    pub resets: u64,
    pub connect_failures: u64,
    pub latency: Histogram,
}

impl ClusterStats {
    /// Errors per request, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// What happened since `older`.
    pub fn since(&self, older: &ClusterStats) -> ClusterStats {
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        ClusterStats {
            requests: delta(self.requests, older.requests),
            errors: delta(self.errors, older.errors),
            resets: delta(self.resets, older.resets),
            connect_failures: delta(self.connect_failures, older.connect_failures),
            latency: self.latency.since(&older.latency),
        }
    }

    /// Adds another gateway's figures.
    pub fn add(&mut self, other: &ClusterStats) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.resets = self.resets.saturating_add(other.resets);
        self.connect_failures = self.connect_failures.saturating_add(other.connect_failures);
        self.latency.add(&other.latency);
    }
}

impl Snapshot {
    /// Parses the text form: `name: value` for counters and gauges,
    /// `name: B0.5(i,c) B1(i,c) …` for histograms with cumulative buckets
    /// (`i` since the last flush, `c` since start: `c` is kept). Lines of
    /// another shape are skipped.
    pub fn parse(text: &str) -> Snapshot {
        let mut values = BTreeMap::new();
        let mut histograms = BTreeMap::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            let value = value.trim();
            if let Ok(number) = value.parse::<u64>() {
                values.insert(name.to_string(), number);
            } else if value.starts_with('B') {
                let buckets: Vec<(f64, u64)> = value
                    .split_whitespace()
                    .filter_map(|bucket| {
                        let (bound, counts) = bucket.strip_prefix('B')?.split_once('(')?;
                        let (_, cumulative) = counts.strip_suffix(')')?.split_once(',')?;
                        Some((bound.parse().ok()?, cumulative.parse::<f64>().ok()? as u64))
                    })
                    .collect();
                if !buckets.is_empty() {
                    histograms.insert(name.to_string(), Histogram { buckets });
                }
            }
        }
        Snapshot {
            at: Instant::now(),
            values,
            histograms,
        }
    }

    /// Parses a Prometheus exposition of Envoy's statistics into the
    /// `/stats` names this module reads (others are kept under their
    /// Prometheus names).
    pub fn parse_prometheus(text: &str) -> Snapshot {
        let mut values = BTreeMap::new();
        let mut histograms: BTreeMap<String, Histogram> = BTreeMap::new();
        let requests = graylane_core::metrics::REQUESTS;
        for (name, labels, value) in text.lines().filter_map(prometheus_line) {
            let label = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            let count = if value.is_finite() && value > 0.0 { value as u64 } else { 0 };
            if let (Some(stat), Some(cluster)) = (name.strip_prefix("envoy_cluster_"), label("envoy_cluster_name")) {
                match (stat.strip_suffix("_bucket"), label("le")) {
                    (Some(histogram), Some(bound)) => {
                        if let Ok(bound) = bound.parse::<f64>() {
                            if bound.is_finite() {
                                histograms
                                    .entry(format!("cluster.{cluster}.{histogram}"))
                                    .or_default()
                                    .buckets
                                    .push((bound, count));
                            }
                        }
                    }
                    _ => {
                        values.insert(format!("cluster.{cluster}.{stat}"), count);
                    }
                }
            } else if let (Some(service), Some(subset), true) =
                (label("graylane_service"), label("graylane_subset"), name == requests)
            {
                values.insert(format!("{PLUGIN_PREFIX}{requests}.service.{service}.subset.{subset}"), count);
            } else if let Some((service, subset)) = name
                .strip_prefix(&format!("{requests}_service_"))
                .and_then(|rest| rest.rsplit_once("_subset_"))
            {
                values.insert(format!("{PLUGIN_PREFIX}{requests}.service.{service}.subset.{subset}"), count);
            } else if name.starts_with("graylane_") {
                values.insert(format!("{PLUGIN_PREFIX}{name}"), count);
            } else if labels.is_empty() {
                values.insert(name.to_string(), count);
            }
        }
        for histogram in histograms.values_mut() {
            histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Snapshot {
            at: Instant::now(),
            values,
            histograms,
        }
    }

    pub fn value(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }

    fn plugin(&self, name: &str) -> Option<u64> {
        self.value(&format!("{PLUGIN_PREFIX}{name}"))
    }

    pub fn source(&self) -> SourceStats {
        use graylane_core::metrics as m;
        let counter = |name| self.plugin(name).unwrap_or(0);
        SourceStats {
            version: self.plugin(m::SOURCE_VERSION).filter(|_| counter(m::SOURCE_FETCHES) > 0 || counter(m::SOURCE_UPDATES) > 0),
            fetches: counter(m::SOURCE_FETCHES),
            failures: counter(m::SOURCE_FAILURES),
            rejected: counter(m::SOURCE_REJECTED),
            not_modified: counter(m::SOURCE_NOT_MODIFIED),
            updates: counter(m::SOURCE_UPDATES),
        }
    }

    /// Requests the plugin counted, by (service, subset) as the metric names
    /// spell them ([`graylane_core::metrics::segment`]).
    pub fn requests(&self) -> BTreeMap<(String, String), u64> {
        let prefix = format!("{PLUGIN_PREFIX}{}.service.", graylane_core::metrics::REQUESTS);
        self.values
            .iter()
            .filter_map(|(name, count)| {
                let (service, subset) = name.strip_prefix(&prefix)?.rsplit_once(".subset.")?;
                Some(((service.to_string(), subset.to_string()), *count))
            })
            .collect()
    }

    /// The plugin's request count for one service and subset (names as in
    /// the rules).
    pub fn subset_requests(&self, service: &str, subset: &str) -> u64 {
        self.plugin(&graylane_core::metrics::request_metric_name(service, subset))
            .unwrap_or(0)
    }

    pub fn cluster(&self, name: &str) -> ClusterStats {
        let stat = |what: &str| self.value(&format!("cluster.{name}.{what}")).unwrap_or(0);
        ClusterStats {
            requests: stat("upstream_rq_completed"),
            errors: stat("upstream_rq_5xx"),
            resets: stat("upstream_rq_rx_reset").saturating_add(stat("upstream_rq_tx_reset")),
            connect_failures: stat("upstream_cx_connect_fail"),
            latency: self
                .histograms
                .get(&format!("cluster.{name}.upstream_rq_time"))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// A duration as plans and flags write it: `500ms`, `30s`, `2m`, `1h`, or a
/// plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write 500ms, 30s, 2m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?}; write ms, s, m or h")),
    };
    if !seconds.is_finite() || !(0.0..=31_536_000.0).contains(&seconds) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `1.5s`, `250ms`, `2m05s`: a duration for people.
pub fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis < 60_000 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        format!("{}m{:02}s", millis / 60_000, (millis / 1000) % 60)
    }
}

/// A share or rate as a percentage with two decimals.
pub fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

/// Rows as aligned columns, each line indented by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|row| row.get(c).map_or(0, |cell| cell.chars().count())).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str("  ");
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "cluster.b-canary.upstream_rq_completed: 200\n\
        cluster.b-canary.upstream_rq_5xx: 10\n\
        cluster.b-canary.upstream_rq_rx_reset: 1\n\
        cluster.b-canary.upstream_rq_time: B0.5(0,0) B1(0,10) B5(0,100) B10(0,150) B25(0,190) B50(0,200) B100(0,200)\n\
        cluster.b-stable.upstream_rq_completed: 1000\n\
        wasmcustom.graylane_requests_total.service.b.subset.canary: 200\n\
        wasmcustom.graylane_requests_total.service.b.subset.stable: 1000\n\
        wasmcustom.graylane_source_fetches_total: 7\n\
        wasmcustom.graylane_source_version: 42\n\
        server.uptime: 5\n\
        http.admin.downstream_rq_time: P0(nan,1) P50(nan,2)\n";

    #[test]
    fn reads_counters_histograms_and_plugin_metrics() {
        let snapshot = Snapshot::parse(STATS);
        let canary = snapshot.cluster("b-canary");
        assert_eq!((canary.requests, canary.errors, canary.resets), (200, 10, 1));
        assert!((canary.error_rate() - 0.05).abs() < 1e-9);
        assert_eq!(canary.latency.count(), 200);
        assert_eq!(canary.latency.percentile(50.0), Some(5.0));
        assert_eq!(canary.latency.percentile(99.0), Some(50.0));
        assert_eq!(snapshot.source().version, Some(42));
        assert_eq!(snapshot.source().fetches, 7);
        assert_eq!(snapshot.subset_requests("b", "canary"), 200);
        assert_eq!(snapshot.requests().len(), 2);
        // Percentile summaries without buckets are not histograms here.
        assert!(!snapshot.histograms.contains_key("http.admin.downstream_rq_time"));
        assert_eq!(Snapshot::parse("").source().version, None);
    }

    #[test]
    fn windows_subtract_readings() {
        let before = Snapshot::parse(STATS).cluster("b-canary");
        let after = Snapshot::parse(
            "cluster.b-canary.upstream_rq_completed: 300\n\
             cluster.b-canary.upstream_rq_5xx: 60\n\
             cluster.b-canary.upstream_rq_time: B0.5(0,0) B1(0,10) B5(0,100) B10(0,150) B25(0,190) B50(0,200) B100(0,300)\n",
        )
        .cluster("b-canary");
        let window = after.since(&before);
        assert_eq!((window.requests, window.errors), (100, 50));
        assert_eq!(window.latency.count(), 100);
        assert_eq!(window.latency.percentile(1.0), Some(100.0));
        let mut both = window.clone();
        both.add(&window);
        assert_eq!((both.requests, both.latency.count()), (200, 200));
    }

    #[test]
    fn prometheus_names_map_to_stats_names() {
        let text = "# TYPE envoy_cluster_upstream_rq_completed counter\n\
            envoy_cluster_upstream_rq_completed{envoy_cluster_name=\"b-canary\"} 200\n\
            envoy_cluster_upstream_rq_5xx{envoy_cluster_name=\"b-canary\"} 10\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"b-canary\",le=\"5\"} 100\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"b-canary\",le=\"0.5\"} 0\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"b-canary\",le=\"50\"} 200\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"b-canary\",le=\"+Inf\"} 200\n\
            envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"b-canary\"} 900.5\n\
            graylane_source_version 42\n\
            graylane_source_fetches_total 7\n\
            graylane_requests_total{graylane_service=\"b\",graylane_subset=\"canary\"} 150\n\
            graylane_requests_total_service_b_subset_stable 1000\n\
            envoy_server_uptime 5\n";
        let snapshot = Snapshot::parse_prometheus(text);
        let canary = snapshot.cluster("b-canary");
        assert_eq!((canary.requests, canary.errors), (200, 10));
        assert_eq!(canary.latency.buckets, vec![(0.5, 0), (5.0, 100), (50.0, 200)]);
        assert_eq!(canary.latency.percentile(99.0), Some(50.0));
        assert_eq!(snapshot.source().version, Some(42));
        assert_eq!(snapshot.subset_requests("b", "canary"), 150);
        assert_eq!(snapshot.subset_requests("b", "stable"), 1000);
        assert_eq!(snapshot.value("envoy_server_uptime"), Some(5));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(show_duration(Duration::from_millis(1530)), "1.5s");
        assert_eq!(show_duration(Duration::from_secs(125)), "2m05s");
    }
}
