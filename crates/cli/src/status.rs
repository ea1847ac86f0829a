//! `graylane status --admin URL…`: what each gateway does now, from its own
//! statistics ([`crate::stats`]): per service and subset the configured
//! weight beside the share of requests the plugin counted, and the upstream
//! error rate, over a window; and the live-rules source's state.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::http::Url;
use crate::rollout::{etcd::Etcd, plan::show_weight, rules};
use crate::stats::{parse_duration, percent, show_duration, table, Endpoint, Snapshot};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A gateway's admin URL, http://HOST:PORT (repeatable)
    #[arg(long = "admin", value_name = "URL", required_unless_present = "prometheus")]
    pub admin: Vec<String>,
    /// A gateway's Prometheus endpoint, instead of its admin URL (repeatable; /stats/prometheus when the URL has no path)
    #[arg(long = "prometheus", value_name = "URL")]
    pub prometheus: Vec<String>,
    /// Read the statistics twice this long apart and show what happened in between; 0: totals since start
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub window: Duration,
    /// The rules, for the configured weights and each subset's cluster: a rule document (JSON or YAML)
    #[arg(long, value_name = "FILE", conflicts_with = "etcd")]
    pub rules: Option<PathBuf>,
    /// … or the live rules in etcd: the JSON gateway's URL (with --key)
    #[arg(long, value_name = "URL", requires = "key")]
    pub etcd: Option<String>,
    /// The etcd key of the rules
    #[arg(long, requires = "etcd")]
    pub key: Option<String>,
}

/// The rules as a JSON value, when asked for.
fn rules_document(args: &StatusArgs) -> Result<Option<Value>, String> {
    if let Some(file) = &args.rules {
        // Read, not compiled: a fetched document (with its `version`) will do.
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
        let format = crate::document::Format::detect(file, &text);
        let node = crate::document::parse(format, &text)
            .map_err(|refusal| format!("{}: {}: {}", file.display(), refusal.path, refusal.reason))?;
        return serde_json::from_str(&node.to_json()).map(Some).map_err(|e| e.to_string());
    }
    let (Some(url), Some(key)) = (&args.etcd, &args.key) else {
        return Ok(None);
    };
    let etcd = Etcd::new(Url::parse(url)?);
    let entry = etcd.get(key)?.ok_or_else(|| format!("etcd {url}: no key {key}"))?;
    serde_json::from_slice(&entry.value)
        .map(Some)
        .map_err(|e| format!("etcd {url} {key}: not JSON: {e}"))
}

/// One row: service, subset, configured weight, cluster.
fn configured(document: &Value) -> Vec<(String, String, String, Option<String>)> {
    let mut rows = Vec::new();
    let services = document.get("services").and_then(Value::as_array).cloned().unwrap_or_default();
    for service in services {
        let name = service.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let default = rules::default_of(document, &name).unwrap_or_default();
        let subsets = service.get("subsets").and_then(Value::as_array).cloned().unwrap_or_default();
        let names: Vec<String> = subsets
            .iter()
            .map(|subset| subset.get("name").and_then(Value::as_str).unwrap_or_default().to_string())
            .collect();
        let weight = |subset: &str| rules::weight_of(document, &name, subset).unwrap_or(0);
        // The default takes what the weights leave (of the traffic no tag
        // or match entry claimed).
        let weighted: u32 = names.iter().filter(|n| **n != default).map(|n| weight(n)).sum();
        for (subset, subset_name) in subsets.iter().zip(names.iter().cloned()) {
            let weight = if subset_name == default {
                format!("rest {}", show_weight(10_000u32.saturating_sub(weighted)))
            } else {
                show_weight(weight(&subset_name))
            };
            let cluster = subset.get("cluster").and_then(Value::as_str).map(str::to_string);
            rows.push((name.clone(), subset_name, weight, cluster));
        }
    }
    rows
}

/// `graylane status`.
pub fn status(args: &StatusArgs) -> Result<String, String> {
    let mut gateways = Vec::new();
    for url in &args.admin {
        gateways.push(Endpoint::Admin(Url::parse(url)?));
    }
    for url in &args.prometheus {
        gateways.push(Endpoint::Prometheus(Url::parse(url)?));
    }
    let document = rules_document(args)?;
    let timeout = Duration::from_secs(5);
    let first: Vec<Option<Snapshot>> = if args.window.is_zero() {
        gateways.iter().map(|_| None).collect()
    } else {
        let readings = gateways
            .iter()
            .map(|gateway| gateway.fetch(timeout).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        std::thread::sleep(args.window);
        readings
    };
    let mut out = String::new();
    for (gateway, older) in gateways.iter().zip(first) {
        let newer = gateway.fetch(timeout)?;
        let source = newer.source();
        let over = if args.window.is_zero() {
            "since start".to_string()
        } else {
            format!("over {}", show_duration(args.window))
        };
        out.push_str(&format!("gateway {gateway} ({over})\n"));
        out.push_str(&format!(
            "  source: version {}, fetches {}, failures {}, rejected {}, not modified {}, updates {}\n",
            source.version.map_or_else(|| "- (no live source)".into(), |v| v.to_string()),
            source.fetches,
            source.failures,
            source.rejected,
            source.not_modified,
            source.updates
        ));
        let counted = |snapshot: &Snapshot, service: &str, subset: &str| snapshot.subset_requests(service, subset);
        let rows: Vec<(String, String, String, Option<String>)> = match &document {
            Some(document) => configured(document),
            None => newer
                .requests()
                .into_keys()
                .map(|(service, subset)| (service, subset, "-".to_string(), None))
                .collect(),
        };
        let requests = |service: &str, subset: &str| {
            let now = counted(&newer, service, subset);
            let before = older.as_ref().map_or(0, |older| counted(older, service, subset));
            now.saturating_sub(before)
        };
        let mut lines = vec![["service", "subset", "weight", "share", "requests", "upstream errors"].map(String::from).to_vec()];
        for (service, subset, weight, cluster) in &rows {
            let total: u64 = rows
                .iter()
                .filter(|(other, ..)| other == service)
                .map(|(_, name, ..)| requests(service, name))
                .sum();
            let count = requests(service, subset);
            let share = if total == 0 { "-".into() } else { percent(count as f64 / total as f64) };
            let errors = match cluster {
                Some(cluster) => {
                    let now = newer.cluster(cluster);
                    let window = match &older {
                        Some(older) => now.since(&older.cluster(cluster)),
                        None => now,
                    };
                    format!("{} of {}", percent(window.error_rate()), window.requests)
                }
                None => "-".into(),
            };
            lines.push(vec![service.clone(), subset.clone(), weight.clone(), share, count.to_string(), errors]);
        }
        if lines.len() == 1 {
            out.push_str("  no service counted yet\n");
        } else {
            out.push_str(&table(&lines));
        }
    }
    Ok(out)
}
