//! `graylane explain`: the decision for one request, and why.

use std::fmt::Write as _;

use graylane_core::decision::{decide_traced, Condition, Decision, HeaderEdit, Reason, Trace};
use graylane_core::request::Request;
use graylane_core::rules::{MatchEntry, NamedMatch, Rules, Service, StickyKey, StringMatch};
use graylane_core::split::{WeylSequence, BUCKETS};

use super::request::{borrow_pairs, decide_spec, drawn_from_sequence, RequestSpec};

/// What the decision looked at, recorded for the report.
#[derive(Debug, Default)]
pub struct Recorded {
    pub tag: Option<(String, bool)>,
    /// (subset, entry, the condition that failed).
    pub tried: Vec<(usize, usize, Option<Condition>)>,
    /// `Some(value)` when the weighted split looked for the sticky key.
    pub sticky: Option<Option<String>>,
}

impl Trace for Recorded {
    fn tag(&mut self, value: &[u8], trusted: bool) {
        self.tag = Some((lossy(value), trusted));
    }

    fn entry(&mut self, subset: usize, entry: usize, failed: Option<Condition>) {
        self.tried.push((subset, entry, failed));
    }

    fn sticky(&mut self, value: Option<&[u8]>) {
        self.sticky = Some(value.map(lossy));
    }
}

pub fn percent(basis_points: u32) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn describe_match(matcher: &StringMatch) -> String {
    match matcher {
        StringMatch::Exact(v) => format!("exact {:?}", lossy(v)),
        StringMatch::Prefix(v) => format!("prefix {:?}", lossy(v)),
        StringMatch::Suffix(v) => format!("suffix {:?}", lossy(v)),
        StringMatch::Contains(v) => format!("contains {:?}", lossy(v)),
        StringMatch::Regex(r) => format!("regex {:?}", r.as_str()),
        StringMatch::Present(true) => "present".into(),
        StringMatch::Present(false) => "absent".into(),
    }
}

/// The conditions of a match entry, in words.
pub fn describe_entry(entry: &MatchEntry) -> Vec<String> {
    let named = |what: &str, list: &[NamedMatch]| -> Vec<String> {
        list.iter()
            .map(|c| format!("{what} {} {}", c.name, describe_match(&c.matcher)))
            .collect()
    };
    let mut conditions = named("header", &entry.headers);
    conditions.extend(named("cookie", &entry.cookies));
    if let Some(regex) = &entry.cookie_regex {
        conditions.push(format!("cookie_regex {:?}", regex.as_str()));
    }
    if let Some(path) = &entry.path {
        conditions.push(format!("path {}", describe_match(path)));
    }
    conditions.extend(named("query", &entry.query));
    if !entry.methods.is_empty() {
        conditions.push(format!("method {}", entry.methods.join(" or ")));
    }
    conditions
}

fn describe_edits(edits: &[HeaderEdit<'_>]) -> Vec<String> {
    edits
        .iter()
        .map(|edit| match edit {
            HeaderEdit::Remove(name) => format!("remove {name}"),
            HeaderEdit::Set(name, value) => format!("set {name}: {value}"),
            HeaderEdit::SetOwned(name, value) => format!("set {name}: {value}"),
        })
        .collect()
}

/// The sticky key a service splits by, in words.
fn sticky_key_name(service: &Service) -> String {
    match &service.sticky {
        None => "none".into(),
        Some(StickyKey::Header(name)) => format!("header {name}"),
        Some(StickyKey::Cookie(name)) => format!("cookie {name}"),
        Some(StickyKey::SourceIp) => "source_ip".into(),
    }
}

/// The condition of `entry` that `failed`, in words.
fn describe_condition(entry: &MatchEntry, failed: Condition) -> String {
    let named = |what: &str, list: &[NamedMatch], at: usize| {
        list.get(at).map_or_else(String::new, |c| {
            format!("{what} {} {}", c.name, describe_match(&c.matcher))
        })
    };
    match failed {
        Condition::Method => format!("method {}", entry.methods.join(" or ")),
        Condition::Path => entry
            .path
            .as_ref()
            .map_or_else(String::new, |p| format!("path {}", describe_match(p))),
        Condition::CookieRegex => entry
            .cookie_regex
            .as_ref()
            .map_or_else(String::new, |r| format!("cookie_regex {:?}", r.as_str())),
        Condition::Header(at) => named("header", &entry.headers, at),
        Condition::Cookie(at) => named("cookie", &entry.cookies, at),
        Condition::Query(at) => named("query", &entry.query, at),
    }
}

/// Most entries a report lists as tried and failed.
const MAX_TRIED_SHOWN: usize = 12;

/// The report `graylane explain` prints.
pub fn explain(rules: &Rules, spec: &RequestSpec) -> String {
    let mut sequence = WeylSequence::new(0);
    let owned = spec.header_pairs();
    let pairs = borrow_pairs(&owned);
    let request = Request::new(&pairs).with_source_ip(spec.source_ip_bytes());
    let mut recorded = Recorded::default();
    let decision = decide_traced(rules, &request, &mut sequence, &mut recorded);

    let mut out = String::new();
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "{label:<9}{text}");
    };
    line("request", &spec.summary());
    let headers = describe_edits(&decision.edits);
    let Some((service_index, service)) = decision
        .service
        .and_then(|i| rules.services.get(i).map(|s| (i, s)))
    else {
        line("service", "none");
        line("subset", "none");
        line(
            "cluster",
            "none (the route falls back to its default cluster)",
        );
        line(
            "headers",
            headers.first().map_or("no change", String::as_str),
        );
        line(
            "why",
            &format!(
                "no service's hosts and path_prefix fit host {:?} and path {:?}: the request passes untouched{}",
                request.host().unwrap_or_default(),
                lossy(request.path()),
                if headers.is_empty() {
                    ""
                } else {
                    " but for the client's own cluster header, which is always removed"
                }
            ),
        );
        return out;
    };
    let service_path = format!("services[{service_index}]");
    line("service", &format!("{} ({service_path})", service.name));

    let reason_lines = reasons(rules, service, &service_path, &decision, &recorded);
    let drawn = drawn_from_sequence(&decision);
    if drawn {
        let outcomes = outcomes(rules, service, spec);
        line(
            "subset",
            &format!(
                "depends on the worker's sequence: {}",
                outcomes
                    .iter()
                    .map(|o| format!("{} {}", o.subset, percent(o.share)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        for (position, outcome) in outcomes.iter().enumerate() {
            line(
                if position == 0 { "outcomes" } else { "" },
                &format!(
                    "{:>7}  {} -> cluster {}; headers: {}",
                    percent(outcome.share),
                    outcome.subset,
                    outcome.cluster,
                    outcome.headers.join(", ")
                ),
            );
        }
    } else {
        let subset_index = decision.subset.unwrap_or(service.default);
        let subset_name = service
            .subsets
            .get(subset_index)
            .map_or("?", |s| s.name.as_str());
        let default_note = if subset_index == service.default {
            ", the default"
        } else {
            ""
        };
        line(
            "subset",
            &format!("{subset_name} ({service_path}.subsets[{subset_index}]{default_note})"),
        );
        line("cluster", decision.cluster.unwrap_or("none"));
        for (position, header) in headers.iter().enumerate() {
            line(if position == 0 { "headers" } else { "" }, header);
        }
    }
    for (position, reason) in reason_lines.iter().enumerate() {
        line(if position == 0 { "why" } else { "" }, reason);
    }
    let failed: Vec<String> = recorded
        .tried
        .iter()
        .filter_map(|(subset, entry, failed)| {
            let condition = service
                .subsets
                .get(*subset)
                .and_then(|s| s.matches.get(*entry))
                .zip(*failed)
                .map(|(entry, failed)| describe_condition(entry, failed))?;
            Some(format!(
                "{service_path}.subsets[{subset}].match[{entry}]: {condition} did not hold"
            ))
        })
        .collect();
    for (position, text) in failed.iter().take(MAX_TRIED_SHOWN).enumerate() {
        line(if position == 0 { "tried" } else { "" }, text);
    }
    if failed.len() > MAX_TRIED_SHOWN {
        line("", &format!("… and {} more", failed.len() - MAX_TRIED_SHOWN));
    }
    if let Some(mirror) = &service.mirror {
        let target = service.subsets.get(mirror.subset);
        let copied = decision
            .edits
            .iter()
            .any(|edit| matches!(edit, HeaderEdit::Set(name, _) if *name == rules.mirror_header));
        let this_one = if copied {
            "this request is copied"
        } else if decision.subset == Some(mirror.subset) {
            "this request is served there, not copied"
        } else {
            "this request is not copied (not drawn, or not one of the methods)"
        };
        line(
            "mirror",
            &format!(
                "{} of the {} requests the other subsets serve are copied to {} (cluster {}), whose answers are dropped; {this_one}",
                percent(mirror.share),
                mirror.methods.join(", "),
                target.map_or("?", |s| s.name.as_str()),
                target.map_or("?", |s| s.cluster.as_str()),
            ),
        );
    }
    if !service.weight_table().is_empty() {
        for (position, (first, last, subset)) in service.bucket_layout().into_iter().enumerate() {
            let name = service.subsets.get(subset).map_or("?", |s| s.name.as_str());
            let default_note = if subset == service.default {
                " (default: the rest)"
            } else {
                ""
            };
            line(
                if position == 0 { "buckets" } else { "" },
                &format!(
                    "{first:>5}-{last:<5} {name} {}{default_note}",
                    percent(last + 1 - first)
                ),
            );
        }
    }
    out
}

fn reasons(
    rules: &Rules,
    service: &Service,
    service_path: &str,
    decision: &Decision<'_>,
    recorded: &Recorded,
) -> Vec<String> {
    let mut why = Vec::new();
    let tag_header = rules.tag_header.as_str();
    let incoming_tag = recorded.tag.as_ref().map(|(tag, _)| tag.clone());
    if let Some((tag, trusted)) = &recorded.tag {
        if !trusted {
            why.push(format!(
                "the request's {tag_header} {tag:?} was removed: trust_tag is false"
            ));
        } else if decision.reason != Reason::Tag {
            why.push(format!(
                "the request's {tag_header} {tag:?} names no subset of {}: left for the services behind",
                service.name
            ));
        }
    }
    let subset_index = decision.subset.unwrap_or(service.default);
    let subset = service.subsets.get(subset_index);
    let subset_name = subset.map_or("?", |s| s.name.as_str());
    match &decision.reason {
        Reason::NoService => {}
        Reason::Tag => why.push(format!(
            "tag: the request's {tag_header} is {:?}, the tag of subset {subset_name}",
            incoming_tag.unwrap_or_default()
        )),
        Reason::Match { entry } => {
            let conditions = subset
                .and_then(|s| s.matches.get(*entry))
                .map(describe_entry)
                .unwrap_or_default();
            why.push(format!(
                "match: {service_path}.subsets[{subset_index}].match[{entry}] held: {}",
                conditions.join(" and ")
            ));
            why.push("(tags are tried first, then match entries in subset order)".into());
        }
        Reason::Weight { bucket, sticky }
        | Reason::Default {
            bucket: Some(bucket),
            sticky,
        } => {
            let key = sticky_key_name(service);
            let value = recorded.sticky.clone().flatten();
            let owner = service
                .bucket_layout()
                .into_iter()
                .find(|(first, last, _)| (*first..=*last).contains(bucket));
            let range = owner.map_or(String::new(), |(first, last, _)| {
                format!("buckets {first}-{last} belong to {subset_name}")
            });
            if *sticky {
                why.push(format!(
                    "weight, sticky: no tag or match entry claimed it; the sticky key ({key}) is {:?}, which hashes with the service name to bucket {bucket} of {BUCKETS}; {range}",
                    value.unwrap_or_default()
                ));
                why.push(
                    "the same key always gets this bucket, on every gateway; raising a weight only moves keys into the raised subset".into(),
                );
            } else {
                let missing = match &service.sticky {
                    None => "the service has no sticky key".to_string(),
                    Some(_) => format!("the request has no sticky key ({key})"),
                };
                why.push(format!(
                    "weight, not sticky: no tag or match entry claimed it and {missing}, so the bucket comes from the gateway worker's own sequence and differs from request to request"
                ));
                why.push(format!(
                    "one draw here gave bucket {bucket} of {BUCKETS}: {range}; over many requests the split is within a point of the weights"
                ));
            }
        }
        Reason::Default { bucket: None, .. } => why.push(format!(
            "default: no tag, no match entry, and no subset has a weight, so {subset_name} takes it"
        )),
    }
    why
}

/// One possible outcome of an unsticky weighted decision.
pub struct Outcome {
    pub subset: String,
    pub cluster: String,
    pub share: u32,
    pub headers: Vec<String>,
}

/// The outcomes of the weighted split for this request, each found by
/// running the decision itself until a bucket of that subset was drawn.
pub fn outcomes(rules: &Rules, service: &Service, spec: &RequestSpec) -> Vec<Outcome> {
    let shares = service.shares();
    let mut found: Vec<Option<Outcome>> = service.subsets.iter().map(|_| None).collect();
    let mut sequence = WeylSequence::new(0);
    // The sequence visits every bucket within a few tens of thousands of
    // draws; the bound only guards against a subset that cannot be reached.
    for _ in 0..(BUCKETS * 20) {
        if found
            .iter()
            .zip(&shares)
            .all(|(outcome, share)| outcome.is_some() || *share == 0)
        {
            break;
        }
        let decision = decide_spec(rules, spec, &mut sequence);
        let Some(index) = decision.subset else { break };
        if let (Some(slot @ None), Some(subset), Some(share)) = (
            found.get_mut(index),
            service.subsets.get(index),
            shares.get(index),
        ) {
            *slot = Some(Outcome {
                subset: subset.name.clone(),
                cluster: subset.cluster.clone(),
                share: *share,
                headers: describe_edits(&decision.edits),
            });
        }
    }
    found.into_iter().flatten().collect()
}
