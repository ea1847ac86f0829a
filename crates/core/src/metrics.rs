//! Metric names, and the per-worker request counts that the plugin flushes
//! to the gateway on its tick rather than with a host call per request.
//!
//! Envoy shows metrics a Wasm plugin defines under the `wasmcustom.` prefix
//! in `/stats` (`wasmcustom.graylane_requests_total.service.b.subset.stable`).
//! The request counter keeps its labels in the name as `.service.<name>` and
//! `.subset.<name>` so that two `stats_tags` regexes in the bootstrap turn
//! them into Prometheus labels (see the README).

use std::cell::Cell;

use crate::rules::Rules;

pub const REQUESTS: &str = "graylane_requests_total";
pub const SOURCE_FETCHES: &str = "graylane_source_fetches_total";
pub const SOURCE_FAILURES: &str = "graylane_source_failures_total";
pub const SOURCE_REJECTED: &str = "graylane_source_rejected_total";
pub const SOURCE_NOT_MODIFIED: &str = "graylane_source_not_modified_total";
pub const SOURCE_UPDATES: &str = "graylane_source_updates_total";
pub const SOURCE_VERSION: &str = "graylane_source_version";
/// etcd watch streams opened (push mode): one at start, one per recovery.
pub const SOURCE_WATCHES: &str = "graylane_source_watches_total";
/// Watch messages received, progress answers included.
pub const SOURCE_WATCH_MESSAGES: &str = "graylane_source_watch_messages_total";
pub const BUILD_INFO: &str = "graylane_build_info";

/// The gauge that says which graylane runs (set to 1):
/// `graylane_build_info.version.0_1_0`, the version as a name segment, so
/// that a `stats_tags` regex can make it a Prometheus label.
pub fn build_info_name() -> String {
    format!("{BUILD_INFO}.version.{}", segment(crate::VERSION))
}

/// A name segment safe inside a dotted stat name: anything but ASCII
/// letters, digits, `_` and `-` becomes `_`.
pub fn segment(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn request_metric_name(service: &str, subset: &str) -> String {
    format!(
        "{REQUESTS}.service.{}.subset.{}",
        segment(service),
        segment(subset)
    )
}

/// Requests counted per (service, subset) of one rule set, in memory.
#[derive(Debug)]
pub struct RequestCounts {
    /// Start of each service's subsets in `counts`.
    offsets: Vec<usize>,
    names: Vec<String>,
    counts: Vec<Cell<u64>>,
}

impl RequestCounts {
    pub fn new(rules: &Rules) -> Self {
        let mut offsets = Vec::with_capacity(rules.services.len());
        let mut names = Vec::new();
        for service in &rules.services {
            offsets.push(names.len());
            for subset in &service.subsets {
                names.push(request_metric_name(&service.name, &subset.name));
            }
        }
        let counts = names.iter().map(|_| Cell::new(0)).collect();
        RequestCounts {
            offsets,
            names,
            counts,
        }
    }

    pub fn record(&self, service: usize, subset: usize) {
        if let Some(cell) = self
            .offsets
            .get(service)
            .and_then(|offset| self.counts.get(offset + subset))
        {
            cell.set(cell.get().wrapping_add(1));
        }
    }

    /// Hands every non-zero count to `sink` and resets it.
    pub fn drain(&self, mut sink: impl FnMut(&str, u64)) {
        for (name, cell) in self.names.iter().zip(&self.counts) {
            let count = cell.replace(0);
            if count > 0 {
                sink(name, count);
            }
        }
    }

    pub fn pending(&self) -> u64 {
        self.counts.iter().map(Cell::get).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_drains() {
        let rules = crate::config::compile(
            br#"{"services":[
              {"name":"a.b","default":"s","subsets":[{"name":"s","cluster":"c1"},{"name":"k","cluster":"c2"}]},
              {"name":"z","default":"s","subsets":[{"name":"s","cluster":"c3"}]}]}"#,
        )
        .unwrap();
        let counts = RequestCounts::new(&rules);
        counts.record(0, 1);
        counts.record(0, 1);
        counts.record(1, 0);
        counts.record(7, 0);
        counts.record(1, 9);
        assert_eq!(counts.pending(), 3);
        let mut seen = Vec::new();
        counts.drain(|name, count| seen.push((name.to_string(), count)));
        assert_eq!(
            seen,
            vec![
                (
                    "graylane_requests_total.service.a_b.subset.k".to_string(),
                    2
                ),
                ("graylane_requests_total.service.z.subset.s".to_string(), 1),
            ]
        );
        assert_eq!(counts.pending(), 0);
    }

    #[test]
    fn build_info_names_the_workspace_version() {
        assert_eq!(crate::VERSION, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            build_info_name(),
            format!("graylane_build_info.version.{}", crate::VERSION.replace('.', "_"))
        );
    }
}
