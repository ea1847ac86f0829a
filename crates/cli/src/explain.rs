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
    /// (rule, entry, the condition that failed).
    pub rules_tried: Vec<(usize, usize, Option<Condition>)>,
    /// (service, the position of its first header condition that failed).
    pub services_tried: Vec<(usize, Option<usize>)>,
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

    fn rule_entry(&mut self, rule: usize, entry: usize, failed: Option<Condition>) {
        self.rules_tried.push((rule, entry, failed));
    }

    fn service_headers(&mut self, service: usize, failed: Option<usize>) {
        self.services_tried.push((service, failed));
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
        StringMatch::Greater(n) => format!("gt {n}"),
        StringMatch::GreaterOrEqual(n) => format!("ge {n}"),
        StringMatch::Less(n) => format!("lt {n}"),
        StringMatch::LessOrEqual(n) => format!("le {n}"),
        StringMatch::In(values) => format!(
            "in [{}]",
            values
                .iter()
                .map(|v| format!("{:?}", lossy(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A named condition in words: `header x-k exact "a"`, `not header …` when
/// inverted.
pub fn describe_named(what: &str, condition: &NamedMatch) -> String {
    let not = if condition.invert { "not " } else { "" };
    format!(
        "{not}{what} {} {}",
        condition.name,
        describe_match(&condition.matcher)
    )
}

fn describe_path(entry: &MatchEntry) -> Option<String> {
    let path = entry.path.as_ref()?;
    let not = if entry.path_invert { "not " } else { "" };
    Some(format!("{not}path {}", describe_match(path)))
}

fn describe_not(entry: &MatchEntry) -> Option<String> {
    let inner = entry.not.as_ref()?;
    Some(format!("not ({})", describe_entry(inner).join(" and ")))
}

/// The conditions of a match entry, in words.
pub fn describe_entry(entry: &MatchEntry) -> Vec<String> {
    let named = |what: &str, list: &[NamedMatch]| -> Vec<String> {
        list.iter().map(|c| describe_named(what, c)).collect()
    };
    let mut conditions = named("header", &entry.headers);
    conditions.extend(named("cookie", &entry.cookies));
    if let Some(regex) = &entry.cookie_regex {
        conditions.push(format!("cookie_regex {:?}", regex.as_str()));
    }
    conditions.extend(describe_path(entry));
    conditions.extend(named("query", &entry.query));
    conditions.extend(named("form", &entry.form));
    if !entry.methods.is_empty() {
        conditions.push(format!("method {}", entry.methods.join(" or ")));
    }
    conditions.extend(describe_not(entry));
    conditions
}

/// A service's header conditions and rules, a line each, for `graylane
/// check`: `    headers: header x-env exact "beta"`, `    rules[0]: 1 match
/// entry -> canary 30.00%, stable the rest`.
pub fn describe_rules(service: &Service) -> String {
    let mut out = String::new();
    if !service.headers.is_empty() {
        let held: Vec<String> = service
            .headers
            .iter()
            .map(|c| describe_named("header", c))
            .collect();
        let _ = writeln!(out, "    headers: {}", held.join(" and "));
    }
    let name = |index: usize| service.subsets.get(index).map_or(UNCLAIMED, |s| s.name.as_str());
    for (position, rule) in service.rules.iter().enumerate() {
        let mut split: Vec<String> = rule
            .split
            .iter()
            .map(|(subset, weight)| format!("{} {}", name(*subset), percent(*weight)))
            .collect();
        split.push(format!("{} the rest", name(service.default)));
        let entries = rule.matches.len();
        let _ = writeln!(
            out,
            "    rules[{position}]: {entries} match {} -> {}",
            if entries == 1 { "entry" } else { "entries" },
            split.join(", ")
        );
    }
    out
}

fn describe_edits(edits: &[HeaderEdit<'_>]) -> Vec<String> {
    edits
        .iter()
        .map(|edit| match edit.value() {
            None => format!("remove {}", edit.name()),
            Some(value) => format!("set {}: {value}", edit.name()),
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
        list.get(at)
            .map_or_else(String::new, |c| describe_named(what, c))
    };
    match failed {
        Condition::Method => format!("method {}", entry.methods.join(" or ")),
        Condition::Path => describe_path(entry).unwrap_or_default(),
        Condition::Not => describe_not(entry).unwrap_or_default(),
        Condition::CookieRegex => entry
            .cookie_regex
            .as_ref()
            .map_or_else(String::new, |r| format!("cookie_regex {:?}", r.as_str())),
        Condition::Header(at) => named("header", &entry.headers, at),
        Condition::Cookie(at) => named("cookie", &entry.cookies, at),
        Condition::Query(at) => named("query", &entry.query, at),
        Condition::Form(at) => named("form", &entry.form, at),
    }
}

/// The owner of the buckets and requests a service without a default
/// leaves unclaimed (the index past its subsets).
const UNCLAIMED: &str = "(unclaimed)";

/// Most entries a report lists as tried and failed.
const MAX_TRIED_SHOWN: usize = 12;

/// The report `graylane explain` prints.
pub fn explain(rules: &Rules, spec: &RequestSpec) -> String {
    let mut sequence = WeylSequence::new(0);
    let owned = spec.header_pairs();
    let pairs = borrow_pairs(&owned);
    let request = Request::new(&pairs)
        .with_source_ip(spec.source_ip_bytes())
        .with_now(super::request::clock(rules));
    let request = super::request::with_body(rules, request, spec);
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
        for (position, text) in services_passed_over(rules, &recorded, usize::MAX)
            .iter()
            .enumerate()
        {
            line(if position == 0 { "tried" } else { "" }, text);
        }
        return out;
    };
    let service_path = format!("services[{service_index}]");
    let scope = if service.headers.is_empty() {
        String::new()
    } else {
        let held: Vec<String> = service
            .headers
            .iter()
            .map(|c| describe_named("header", c))
            .collect();
        format!("; its headers held: {}", held.join(" and "))
    };
    line(
        "service",
        &format!("{} ({service_path}{scope})", service.name),
    );

    let reason_lines = reasons(rules, service, &service_path, &decision, &recorded);
    let drawn = drawn_from_sequence(&decision);
    if drawn {
        let outcomes = outcomes(rules, service, spec, rule_of(&decision));
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
            .map_or(UNCLAIMED, |s| s.name.as_str());
        let default_note = if subset_index == service.default {
            ", the default"
        } else {
            ""
        };
        match decision.local_reply() {
            Some(status) => {
                line("subset", &format!("none: {service_path} has no default"));
                line("reply", &format!("{status}, answered by the gateway itself (unclaimed_status)"));
            }
            None => line(
                "subset",
                &format!("{subset_name} ({service_path}.subsets[{subset_index}]{default_note})"),
            ),
        }
        line("cluster", decision.cluster.unwrap_or("none"));
        for (position, header) in headers.iter().enumerate() {
            line(if position == 0 { "headers" } else { "" }, header);
        }
    }
    for (position, reason) in reason_lines.iter().enumerate() {
        line(if position == 0 { "why" } else { "" }, reason);
    }
    let mut failed = services_passed_over(rules, &recorded, service_index);
    let subset_entries = |subset: usize| service.subsets.get(subset).map(|s| s.matches.as_slice());
    let rule_entries = |rule: usize| service.rules.get(rule).map(|r| r.matches.as_slice());
    failed.extend(did_not_hold(
        &recorded.tried,
        &format!("{service_path}.subsets"),
        subset_entries,
    ));
    failed.extend(did_not_hold(
        &recorded.rules_tried,
        &format!("{service_path}.rules"),
        rule_entries,
    ));
    for (position, text) in failed.iter().take(MAX_TRIED_SHOWN).enumerate() {
        line(if position == 0 { "tried" } else { "" }, text);
    }
    if failed.len() > MAX_TRIED_SHOWN {
        line(
            "",
            &format!("… and {} more", failed.len() - MAX_TRIED_SHOWN),
        );
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
                target.map_or(UNCLAIMED, |s| s.name.as_str()),
                target.map_or("?", |s| s.cluster.as_str()),
            ),
        );
    }
    let rule = rule_of(&decision);
    let split_table = match rule.and_then(|r| service.rules.get(r)) {
        Some(rule) => rule.weight_table(),
        None => service.weight_table(),
    };
    if !split_table.is_empty() {
        for (position, (first, last, subset)) in service.layout_of(rule).into_iter().enumerate() {
            let name = service.subsets.get(subset).map_or(UNCLAIMED, |s| s.name.as_str());
            let default_note = match (subset == service.default, service.unclaimed_status) {
                (true, Some(status)) => format!(" (no default: the rest is answered {status})"),
                (true, None) => " (default: the rest)".to_string(),
                (false, _) => String::new(),
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

/// The tried entries (of subsets or of rules, found by `entries`) that
/// failed, each with the condition it failed on: `{list}[i].match[j]: …`.
fn did_not_hold<'s>(
    tried: &[(usize, usize, Option<Condition>)],
    list: &str,
    entries: impl Fn(usize) -> Option<&'s [MatchEntry]>,
) -> Vec<String> {
    tried
        .iter()
        .filter_map(|(owner, entry, failed)| {
            let condition = entries(*owner)
                .and_then(|list| list.get(*entry))
                .zip(*failed)
                .map(|(entry, failed)| describe_condition(entry, failed))?;
            Some(format!(
                "{list}[{owner}].match[{entry}]: {condition} did not hold"
            ))
        })
        .collect()
}

/// The rule that decided, when one did.
fn rule_of(decision: &Decision<'_>) -> Option<usize> {
    match &decision.reason {
        Reason::Rule { rule, .. } => Some(*rule),
        Reason::Unclaimed { after, .. } => match **after {
            Reason::Rule { rule, .. } => Some(rule),
            _ => None,
        },
        _ => None,
    }
}

/// Services before `chosen` (all, for `usize::MAX`) that fit the host and
/// path but whose `headers` did not hold, in words.
fn services_passed_over(rules: &Rules, recorded: &Recorded, chosen: usize) -> Vec<String> {
    let mut seen: Vec<usize> = Vec::new();
    let mut lines = Vec::new();
    for (index, failed) in &recorded.services_tried {
        let (Some(at), true) = (failed, *index < chosen && !seen.contains(index)) else {
            continue;
        };
        seen.push(*index);
        if let Some(service) = rules.services.get(*index) {
            let condition = service
                .headers
                .get(*at)
                .map_or_else(String::new, |c| describe_named("header", c));
            lines.push(format!(
                "services[{index}] ({}): its headers[{at}], {condition}, did not hold",
                service.name
            ));
        }
    }
    lines
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
    let subset_name = subset.map_or(UNCLAIMED, |s| s.name.as_str());
    let mut reason = &decision.reason;
    if let Reason::Unclaimed { status, after } = reason {
        why.push(format!(
            "unclaimed: {service_path} has no default, so what nothing claims is answered {status} by the gateway (unclaimed_status)"
        ));
        reason = after;
    }
    match reason {
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
        Reason::Rule {
            rule,
            entry,
            bucket,
            sticky,
        } => {
            let conditions = service
                .rules
                .get(*rule)
                .and_then(|r| r.matches.get(*entry))
                .map(describe_entry)
                .unwrap_or_default();
            why.push(format!(
                "rule: {service_path}.rules[{rule}].match[{entry}] held: {}; its split decides (the rest goes to the default)",
                conditions.join(" and ")
            ));
            why.push("(tags are tried first, then the subsets' match entries, then rules in order, then the service's weights)".into());
            match bucket {
                Some(bucket) => why.extend(bucket_reasons(service, Some(*rule), recorded, *bucket, *sticky, subset_name)),
                None => why.push(format!("the rule's split gives nothing to any subset: {subset_name}, the default, takes it")),
            }
        }
        Reason::Weight { bucket, sticky }
        | Reason::Default {
            bucket: Some(bucket),
            sticky,
        } => why.extend(bucket_reasons(
            service,
            None,
            recorded,
            *bucket,
            *sticky,
            subset_name,
        )),
        Reason::Default { bucket: None, .. } => why.push(format!(
            "default: no tag, no match entry, and no subset has a weight, so {subset_name} takes it"
        )),
        Reason::Unclaimed { .. } => {}
        Reason::Affinity => {
            let cookie = service.affinity.as_ref().map_or("", |lane| lane.cookie.name.as_str());
            let signed = if rules.lane_keys.is_empty() { "" } else { ", signed by a lane key and not expired" };
            why.push(format!(
                "affinity: the request's lane cookie {cookie}{signed} names {subset_name}, which has affinity: routed as if it carried the tag"
            ));
        }
    }
    why
}

/// Why a weighted split (the service's, or `rules[rule]`'s) gave `bucket`
/// to `subset_name`.
fn bucket_reasons(
    service: &Service,
    rule: Option<usize>,
    recorded: &Recorded,
    bucket: u32,
    sticky: bool,
    subset_name: &str,
) -> Vec<String> {
    let mut why = Vec::new();
    let (label, claimed) = if rule.is_some() {
        ("rule split", "")
    } else {
        ("weight", "no tag, match entry or rule claimed it; ")
    };
    let key = sticky_key_name(service);
    let value = recorded.sticky.clone().flatten();
    let owner = service
        .layout_of(rule)
        .into_iter()
        .find(|(first, last, _)| (*first..=*last).contains(&bucket));
    let range = owner.map_or(String::new(), |(first, last, _)| {
        format!("buckets {first}-{last} belong to {subset_name}")
    });
    if sticky {
        why.push(format!(
            "{label}, sticky: {claimed}the sticky key ({key}) is {:?}, which hashes with the service name to bucket {bucket} of {BUCKETS}; {range}",
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
            "{label}, not sticky: {claimed}{missing}, so the bucket comes from the gateway worker's own sequence and differs from request to request"
        ));
        why.push(format!(
            "one draw here gave bucket {bucket} of {BUCKETS}: {range}; over many requests the split is within a point of the weights"
        ));
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
/// `rule`: the rule whose split decides, else the service's weights.
pub fn outcomes(
    rules: &Rules,
    service: &Service,
    spec: &RequestSpec,
    rule: Option<usize>,
) -> Vec<Outcome> {
    let shares = service.shares_of(rule);
    let mut found: Vec<Option<Outcome>> = service.subsets.iter().map(|_| None).collect();
    let mut unclaimed = None;
    let mut sequence = WeylSequence::new(0);
    // The sequence visits every bucket within a few tens of thousands of
    // draws; the bound only guards against a subset that cannot be reached.
    for _ in 0..(BUCKETS * 20) {
        let rest_seen = unclaimed.is_some()
            || service.unclaimed_status.is_none()
            || shares.iter().sum::<u32>() >= BUCKETS;
        if rest_seen
            && found
                .iter()
                .zip(&shares)
                .all(|(outcome, share)| outcome.is_some() || *share == 0)
        {
            break;
        }
        let decision = decide_spec(rules, spec, &mut sequence);
        if let Some(status) = decision.local_reply() {
            unclaimed.get_or_insert_with(|| Outcome {
                subset: UNCLAIMED.to_string(),
                cluster: format!("none: answered {status}"),
                share: BUCKETS - shares.iter().sum::<u32>(),
                headers: describe_edits(&decision.edits),
            });
            continue;
        }
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
    found.into_iter().flatten().chain(unclaimed).collect()
}
