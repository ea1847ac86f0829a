//! `graylane simulate`: many requests through the decision, the split they
//! get, and (with two rule documents) who moves where.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use graylane_core::rules::{HostPattern, Rules, Service, StickyKey, StringMatch};
use graylane_core::split::WeylSequence;

use super::request::{decide_spec, drawn_from_sequence, OneOrMany, RequestSpec};

/// Where a population of requests comes from.
#[derive(Debug, Clone)]
pub enum Population {
    /// `count` copies of `base`; with `users`, request `i` carries user
    /// `user-(i mod users)` in `key` (the sticky key of the service `base`
    /// reaches, unless given).
    Synthetic {
        base: RequestSpec,
        count: usize,
        users: Option<usize>,
        key: Option<StickyKey>,
    },
    /// Requests read from a file, one JSON object per line.
    Listed(Vec<RequestSpec>),
    /// No request described: `count` requests for each service, at its first
    /// host and its path prefix (with `users`, as for `Synthetic`).
    PerService {
        count: usize,
        users: Option<usize>,
        key: Option<StickyKey>,
    },
}

impl Population {
    /// The requests, with the sticky key filled in from `rules` when none
    /// was given. `rules` lists every document the requests go through: a
    /// per-service population covers the services of each.
    pub fn requests(&self, rules: &[&Rules]) -> Vec<RequestSpec> {
        match self {
            Population::Listed(list) => list.clone(),
            Population::PerService { count, users, key } => {
                let mut seen: Vec<&str> = Vec::new();
                let mut requests = Vec::new();
                for rules in rules {
                    for service in &rules.services {
                        if seen.contains(&service.name.as_str()) {
                            continue;
                        }
                        seen.push(&service.name);
                        let mut base = RequestSpec {
                            host: Some(reaching_host(service)),
                            path: Some(service.path_prefix.clone()),
                            ..RequestSpec::default()
                        };
                        add_scoping_headers(&mut base, service);
                        let synthetic = Population::Synthetic {
                            base,
                            count: *count,
                            users: *users,
                            key: key.clone().or_else(|| service.sticky.clone()),
                        };
                        requests.extend(synthetic.requests(&[rules]));
                    }
                }
                requests
            }
            Population::Synthetic {
                base,
                count,
                users,
                key,
            } => {
                let key = key.clone().or_else(|| {
                    rules.iter().find_map(|rules| {
                        let decision = decide_spec(rules, base, &mut WeylSequence::new(0));
                        decision.service(rules).and_then(|s| s.sticky.clone())
                    })
                });
                (0..*count)
                    .map(|i| match (users, &key) {
                        (Some(users), Some(key)) if *users > 0 => with_user(base, key, i % users),
                        _ => base.clone(),
                    })
                    .collect()
            }
        }
    }
}

/// Headers that a service's `headers` conditions accept, where a value is
/// plain to see (exact, in, prefix, suffix, contains, present): so that a
/// service scoped by header gets its requests.
fn add_scoping_headers(spec: &mut RequestSpec, service: &Service) {
    for condition in service.headers.iter().filter(|c| !c.invert) {
        let value = match &condition.matcher {
            StringMatch::Exact(v)
            | StringMatch::Prefix(v)
            | StringMatch::Suffix(v)
            | StringMatch::Contains(v) => Some(String::from_utf8_lossy(v).into_owned()),
            StringMatch::In(values) => values.first().map(|v| String::from_utf8_lossy(v).into_owned()),
            StringMatch::Present(true) => Some("1".into()),
            _ => None,
        };
        if let Some(value) = value {
            spec.headers
                .insert(condition.name.clone(), OneOrMany::One(value));
        }
    }
}

/// A host that a service's first host pattern accepts.
fn reaching_host(service: &Service) -> String {
    match service.hosts.first() {
        Some(HostPattern::Exact(host)) => host.clone(),
        // `*.example.com` needs one label more than the suffix.
        Some(HostPattern::Suffix(suffix)) => format!("simulated{suffix}"),
        Some(HostPattern::Any) | None => "simulated.example".to_string(),
    }
}

/// A sticky key given on the command line: `header:NAME`, `cookie:NAME` or
/// `source_ip`.
pub fn parse_key(text: &str) -> Result<StickyKey, String> {
    match text.split_once(':') {
        Some(("header", name)) if !name.is_empty() => {
            Ok(StickyKey::Header(name.to_ascii_lowercase()))
        }
        Some(("cookie", name)) if !name.is_empty() => Ok(StickyKey::Cookie(name.to_string())),
        None if text == "source_ip" => Ok(StickyKey::SourceIp),
        _ => Err(format!(
            "{text:?}: a user key is header:NAME, cookie:NAME or source_ip"
        )),
    }
}

fn with_user(base: &RequestSpec, key: &StickyKey, user: usize) -> RequestSpec {
    let mut spec = base.clone();
    match key {
        StickyKey::Header(name) => {
            spec.headers
                .insert(name.clone(), OneOrMany::One(format!("user-{user}")));
        }
        StickyKey::Cookie(name) => {
            spec.cookies.insert(name.clone(), format!("user-{user}"));
        }
        StickyKey::SourceIp => {
            // Addresses from 198.18.0.0/15, the benchmarking range: only ever
            // hashed here, never contacted.
            spec.source_ip = Some(format!(
                "198.{}.{}.{}",
                18 + (user >> 16) % 2,
                (user >> 8) & 0xff,
                user & 0xff
            ));
        }
    }
    spec
}

/// Where one request went: `service/subset`, or `(no service)`.
fn label(rules: &Rules, spec: &RequestSpec, sequence: &mut WeylSequence) -> (String, bool) {
    let decision = decide_spec(rules, spec, sequence);
    let drawn_unsticky = drawn_from_sequence(&decision);
    let name = match (decision.service(rules), decision.subset) {
        (Some(service), Some(subset)) => format!(
            "{}/{}",
            service.name,
            service.subsets.get(subset).map_or("?", |s| s.name.as_str())
        ),
        (Some(service), None) if decision.local_reply().is_some() => unclaimed_label(service),
        _ => NO_SERVICE.to_string(),
    };
    (name, drawn_unsticky)
}

/// The row of the requests a service without a default answers itself.
fn unclaimed_label(service: &graylane_core::rules::Service) -> String {
    let status = service.unclaimed_status.unwrap_or_default();
    format!("{}/(unclaimed: {status})", service.name)
}

const NO_SERVICE: &str = "(no service)";

/// Every `service/subset` of the rules, in document order, then `(no service)`.
fn labels_in_order(rules: &[&Rules]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for rules in rules {
        for service in &rules.services {
            for subset in &service.subsets {
                let label = format!("{}/{}", service.name, subset.name);
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
            if service.unclaimed_status.is_some() && !labels.contains(&unclaimed_label(service)) {
                labels.push(unclaimed_label(service));
            }
        }
    }
    labels.push(NO_SERVICE.to_string());
    labels
}

/// The split: requests per `service/subset`.
pub struct Split {
    pub total: usize,
    /// `(label, cluster, requests)` in document order; subsets of services no
    /// request reached are left out.
    pub rows: Vec<(String, String, usize)>,
    /// Requests whose subset came from the per-worker sequence.
    pub unsticky: usize,
}

pub fn split(rules: &Rules, requests: &[RequestSpec], seed: u64) -> Split {
    let mut sequence = WeylSequence::new(seed);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut unsticky = 0;
    for spec in requests {
        let (name, drawn) = label(rules, spec, &mut sequence);
        unsticky += usize::from(drawn);
        *counts.entry(name).or_default() += 1;
    }
    let mut rows = Vec::new();
    for service in &rules.services {
        let unclaimed = service.unclaimed_status.map(|_| unclaimed_label(service));
        let reached = service
            .subsets
            .iter()
            .any(|s| counts.contains_key(&format!("{}/{}", service.name, s.name)))
            || unclaimed.as_ref().is_some_and(|label| counts.contains_key(label));
        if !reached {
            continue;
        }
        for subset in &service.subsets {
            let label = format!("{}/{}", service.name, subset.name);
            let count = counts.get(&label).copied().unwrap_or(0);
            rows.push((label, subset.cluster.clone(), count));
        }
        if let Some(label) = unclaimed {
            let count = counts.get(&label).copied().unwrap_or(0);
            rows.push((label, "-".to_string(), count));
        }
    }
    if let Some(count) = counts.get(NO_SERVICE) {
        rows.push((NO_SERVICE.to_string(), "-".to_string(), *count));
    }
    Split {
        total: requests.len(),
        rows,
        unsticky,
    }
}

fn share(count: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 * 100.0 / total as f64
    }
}

const BAR_WIDTH: f64 = 40.0;

impl Split {
    /// Whether any request reached a service.
    pub fn reached_a_service(&self) -> bool {
        self.rows.iter().any(|(label, _, count)| label != NO_SERVICE && *count > 0)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let cluster_width = self
            .rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let _ = writeln!(
            out,
            "{:<width$}  {:<cluster_width$}  {:>9}  {:>7}",
            "subset", "cluster", "requests", "share"
        );
        for (label, cluster, count) in &self.rows {
            let percent = share(*count, self.total);
            let bar = "#".repeat((percent / 100.0 * BAR_WIDTH).round() as usize);
            let _ = writeln!(
                out,
                "{label:<width$}  {cluster:<cluster_width$}  {count:>9}  {percent:>6.2}%  {bar}"
            );
        }
        let _ = writeln!(out, "{} requests", self.total);
        if self.unsticky > 0 {
            let _ = writeln!(
                out,
                "{} of them had no sticky key: their subset came from a per-worker sequence (seeded here, so the run repeats); a gateway's split is within a point of the weights",
                self.unsticky
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "requests": self.total,
            "unsticky": self.unsticky,
            "split": self.rows.iter().map(|(label, cluster, count)| json!({
                "subset": label,
                "cluster": cluster,
                "requests": count,
                "percent": share(*count, self.total),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Who moves where between two rule documents.
pub struct Comparison {
    pub total: usize,
    pub labels: Vec<String>,
    /// `(from, to) → requests`.
    pub cells: BTreeMap<(String, String), usize>,
    pub unsticky: usize,
}

pub fn compare(old: &Rules, new: &Rules, requests: &[RequestSpec], seed: u64) -> Comparison {
    let mut old_sequence = WeylSequence::new(seed);
    let mut new_sequence = WeylSequence::new(seed);
    let mut cells: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut unsticky = 0;
    for spec in requests {
        let (from, old_drawn) = label(old, spec, &mut old_sequence);
        let (to, new_drawn) = label(new, spec, &mut new_sequence);
        unsticky += usize::from(old_drawn || new_drawn);
        *cells.entry((from, to)).or_default() += 1;
    }
    let labels = labels_in_order(&[old, new])
        .into_iter()
        .filter(|label| cells.keys().any(|(from, to)| from == label || to == label))
        .collect();
    Comparison {
        total: requests.len(),
        labels,
        cells,
        unsticky,
    }
}

impl Comparison {
    /// Whether any request reached a service under either document.
    pub fn reached_a_service(&self) -> bool {
        self.cells
            .keys()
            .any(|(from, to)| from != NO_SERVICE || to != NO_SERVICE)
    }

    pub fn moved(&self) -> usize {
        self.cells
            .iter()
            .filter(|((from, to), _)| from != to)
            .map(|(_, count)| count)
            .sum()
    }

    fn cell(&self, from: &str, to: &str) -> usize {
        self.cells
            .get(&(from.to_string(), to.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let moved = self.moved();
        let _ = writeln!(
            out,
            "{moved} of {} requests move ({:.2}%)",
            self.total,
            share(moved, self.total)
        );
        let first = self
            .labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(11);
        let column = self
            .labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(9);
        let _ = write!(out, "\n{:<first$}", "old \\ new");
        for label in &self.labels {
            let _ = write!(out, "  {label:>column$}");
        }
        let _ = writeln!(out);
        for from in &self.labels {
            let _ = write!(out, "{from:<first$}");
            for to in &self.labels {
                let _ = write!(out, "  {:>column$}", self.cell(from, to));
            }
            let _ = writeln!(out);
        }
        let moves: Vec<_> = self.cells.iter().filter(|((f, t), _)| f != t).collect();
        if !moves.is_empty() {
            let _ = writeln!(out);
            for ((from, to), count) in moves {
                let _ = writeln!(
                    out,
                    "{from} -> {to}: {count} ({:.2}%)",
                    share(*count, self.total)
                );
            }
        }
        if self.unsticky > 0 {
            let _ = writeln!(
                out,
                "\nnote: {} requests had no sticky key; each of them is drawn afresh per request, so their moves are chance, not a prediction",
                self.unsticky
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "requests": self.total,
            "moved": self.moved(),
            "unsticky": self.unsticky,
            "cells": self.cells.iter().map(|((from, to), count)| json!({
                "from": from, "to": to, "requests": count,
            })).collect::<Vec<_>>(),
        })
    }
}
