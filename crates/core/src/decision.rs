//! The request decision: which service, which subset, and which headers to
//! remove and set. This is the whole routing contract; the proxy-wasm glue
//! only feeds it headers and applies what it returns, and the command-line
//! tool calls the very same function.

use crate::affinity::LaneCookie;
use crate::request::Request;
use crate::rules::{MatchEntry, MirrorTo, NamedMatch, Rules, Service, StickyKey, StringMatch};
use crate::split::WeylSequence;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'r> {
    /// Index into `Rules::services`; `None` when no service claims the request.
    pub service: Option<usize>,
    /// Index into the service's subsets.
    pub subset: Option<usize>,
    pub reason: Reason,
    /// The cluster written into the cluster header.
    pub cluster: Option<&'r str>,
    /// Header changes, to be applied in order. Only real changes are listed,
    /// since each one is a call into the gateway and may make it re-match the
    /// route.
    pub edits: Vec<HeaderEdit<'r>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit<'r> {
    Remove(&'r str),
    Set(&'r str, &'r str),
    /// A value made for this request (the `baggage` header with its lane
    /// member rewritten); only rules with `tag_baggage_key` make one.
    SetOwned(&'r str, String),
}

impl HeaderEdit<'_> {
    pub fn name(&self) -> &str {
        match self {
            HeaderEdit::Remove(name) | HeaderEdit::Set(name, _) | HeaderEdit::SetOwned(name, _) => name,
        }
    }

    /// The value set, if this edit sets one.
    pub fn value(&self) -> Option<&str> {
        match self {
            HeaderEdit::Remove(_) => None,
            HeaderEdit::Set(_, value) => Some(value),
            HeaderEdit::SetOwned(_, value) => Some(value),
        }
    }
}

const BAGGAGE: &str = "baggage";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No service's hosts and path prefix fit the request.
    NoService,
    /// The incoming gray tag named the subset.
    Tag,
    /// The subset's `match[entry]` held.
    Match { entry: usize },
    /// The weight split put the request in `bucket` (of 10,000), owned by the
    /// chosen subset. `sticky` says whether the bucket came from the sticky
    /// key or from the per-worker sequence.
    Weight { bucket: u32, sticky: bool },
    /// Nothing claimed the request; `bucket` is set when a weight split was
    /// drawn and fell to the default.
    Default { bucket: Option<u32>, sticky: bool },
    /// `rules[rule].match[entry]` held and the rule's split put the request
    /// in `bucket` (drawn as for [`Reason::Weight`]; `None` when the split
    /// gives everything to the default), owned by the chosen subset or, for
    /// the rest, the default.
    Rule {
        rule: usize,
        entry: usize,
        bucket: Option<u32>,
        sticky: bool,
    },
    /// The request carried the service's lane cookie naming this subset
    /// (signed, where the rules have `lane_keys`), which has `affinity`.
    Affinity,
    /// The service has no default and nothing claimed the request (`after`
    /// says how it got there: `Default`, or a `Rule` whose split left it to
    /// the rest): the gateway answers it itself with `status`.
    Unclaimed { status: u16, after: Box<Reason> },
}

impl<'r> Decision<'r> {
    pub fn service<'a>(&self, rules: &'a Rules) -> Option<&'a Service> {
        rules.services.get(self.service?)
    }

    /// The status the gateway answers the request with itself, instead of
    /// routing it: set for the unclaimed requests of a service without a
    /// default.
    pub fn local_reply(&self) -> Option<u16> {
        match self.reason {
            Reason::Unclaimed { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// What a decision looked at on its way, for `graylane explain`. The plugin
/// decides with [`NoTrace`], whose empty methods compile to nothing.
pub trait Trace {
    /// The request carried the tag header with this value; `trusted` is
    /// false when `trust_tag: false` removed it.
    fn tag(&mut self, _value: &[u8], _trusted: bool) {}
    /// Match entry `entry` of subset `subset` was tried: `None` when it held,
    /// else the first of its conditions that did not.
    fn entry(&mut self, _subset: usize, _entry: usize, _failed: Option<Condition>) {}
    /// The weighted split looked for the sticky key and found this value
    /// (`None`: absent or empty).
    fn sticky(&mut self, _value: Option<&[u8]>) {}
    /// Match entry `entry` of `rules[rule]` was tried, as for
    /// [`Trace::entry`].
    fn rule_entry(&mut self, _rule: usize, _entry: usize, _failed: Option<Condition>) {}
    /// Service `service` fits the host and path and has `headers`:
    /// `None` when they all held, else the position of the first that did not.
    fn service_headers(&mut self, _service: usize, _failed: Option<usize>) {}
}

/// A trace that records nothing: what the plugin decides with.
pub struct NoTrace;

impl Trace for NoTrace {}

/// One condition of a match entry, as [`Trace::entry`] names the one that
/// failed. Indices are positions in the entry's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Method,
    Path,
    CookieRegex,
    Header(usize),
    Cookie(usize),
    Query(usize),
    Form(usize),
    /// The entry's `not` held.
    Not,
}

/// Decides one request. `sequence` supplies buckets for weighted splits when
/// the request has no sticky key.
pub fn decide<'r>(
    rules: &'r Rules,
    request: &Request<'_>,
    sequence: &mut WeylSequence,
) -> Decision<'r> {
    decide_traced(rules, request, sequence, &mut NoTrace)
}

/// [`decide`], telling `trace` what it looked at.
pub fn decide_traced<'r>(
    rules: &'r Rules,
    request: &Request<'_>,
    sequence: &mut WeylSequence,
    trace: &mut impl Trace,
) -> Decision<'r> {
    let mut edits = Vec::new();
    // A client never chooses the cluster: whatever it sent is dropped, even
    // when no service claims the request.
    if request.has_header(&rules.cluster_header) {
        edits.push(HeaderEdit::Remove(rules.cluster_header.as_str()));
    }
    // Nor where a copy of the request goes.
    if request.has_header(&rules.mirror_header) {
        edits.push(HeaderEdit::Remove(rules.mirror_header.as_str()));
    }
    // Nor what the gateway answers it as a cookie.
    if request.has_header(&rules.pin_header) {
        edits.push(HeaderEdit::Remove(rules.pin_header.as_str()));
    }
    let mut incoming_tags = request.header_values(&rules.tag_header);
    let mut incoming_tag = incoming_tags.next();
    let single_incoming_tag = incoming_tags.next().is_none();
    if let Some(tag) = incoming_tag {
        trace.tag(tag, rules.trust_tag);
    }
    if !rules.trust_tag && incoming_tag.is_some() {
        edits.push(HeaderEdit::Remove(rules.tag_header.as_str()));
        incoming_tag = None;
    }
    // The lane as a baggage member: read only when the rules ask for it, and
    // honoured only where tags are trusted and no tag header gave one.
    let baggage_lane = rules
        .tag_baggage_key
        .as_deref()
        .and_then(|key| crate::baggage::member(request.header_values(BAGGAGE), key));
    let lane_from_baggage = baggage_lane.as_deref().filter(|_| rules.trust_tag);
    // A lane from baggage is not on the tag header yet: write it there too.
    let single_incoming_tag = if incoming_tag.is_none() && lane_from_baggage.is_some() {
        incoming_tag = lane_from_baggage;
        false
    } else {
        single_incoming_tag
    };

    let host = request.host();
    let found = rules.host_index.find(
        &rules.services,
        host.as_deref().unwrap_or(""),
        request.path(),
        |index, service| service_headers_hold(index, service, request, trace),
    );
    let Some((service_index, service)) = found.and_then(|i| rules.services.get(i).map(|s| (i, s)))
    else {
        push_baggage_edit(&mut edits, rules, request, baggage_lane.as_deref(), None);
        return Decision {
            service: None,
            subset: None,
            reason: Reason::NoService,
            cluster: None,
            edits,
        };
    };

    let (subset_index, reason) = choose_subset(service, request, incoming_tag, sequence, trace);
    let mut cluster = None;
    if let Some(subset) = service.subsets.get(subset_index) {
        cluster = Some(subset.cluster.as_str());
        edits.push(HeaderEdit::Set(
            rules.cluster_header.as_str(),
            subset.cluster.as_str(),
        ));
        let already_tagged = single_incoming_tag && incoming_tag == Some(subset.tag.as_bytes());
        if subset_index != service.default && !already_tagged {
            edits.push(HeaderEdit::Set(
                rules.tag_header.as_str(),
                subset.tag.as_str(),
            ));
        }
        for (name, value) in &subset.set_headers {
            edits.push(HeaderEdit::Set(name.as_str(), value.as_str()));
        }
    } else if let Some(status) = service.unclaimed_status {
        return unclaimed(service_index, status, reason, edits);
    }
    if let Some(lane_cookie) = &service.affinity {
        push_lane_cookie(&mut edits, rules, service, lane_cookie, subset_index, &reason, request);
    }
    let written_lane = service
        .subsets
        .get(subset_index)
        .filter(|_| subset_index != service.default)
        .map(|subset| subset.tag.as_str());
    push_baggage_edit(&mut edits, rules, request, baggage_lane.as_deref(), written_lane);
    // A bucket drawn for a browser without a key: pin it there.
    if let (
        Some(pin),
        Reason::Weight { bucket, sticky: false }
        | Reason::Default {
            bucket: Some(bucket),
            sticky: false,
        }
        | Reason::Rule {
            bucket: Some(bucket),
            sticky: false,
            ..
        },
    ) = (&service.pin, &reason)
    {
        edits.push(HeaderEdit::SetOwned(rules.pin_header.as_str(), pin.set_cookie(*bucket)));
    }
    if let Some(mirror) = &service.mirror {
        if let Some(target) = mirror_target(service, mirror, subset_index, request, sequence) {
            edits.push(HeaderEdit::Set(rules.mirror_header.as_str(), target));
        }
    }
    Decision {
        service: Some(service_index),
        subset: Some(subset_index),
        reason,
        cluster,
        edits,
    }
}

/// The subset with `affinity` whose tag the request's lane cookie names
/// (the first cookie of that name that is honoured). Out of line: only
/// services with affinity come here.
#[inline(never)]
fn lane_by_cookie(service: &Service, lane_cookie: &LaneCookie, request: &Request<'_>) -> Option<usize> {
    request
        .cookie_values(&lane_cookie.cookie.name)
        .filter_map(|value| lane_cookie.lane(&service.name, value, request.now_s()))
        .find_map(|lane| {
            service
                .subsets
                .iter()
                .position(|s| s.affinity && s.tag.as_bytes() == lane)
        })
}

/// The lane cookie for a request sent to a subset with `affinity` by its
/// tag or a match entry, through the pin header (the route copies it into
/// the response). Not re-sent to a request the cookie itself routed.
#[inline(never)]
fn push_lane_cookie<'r>(
    edits: &mut Vec<HeaderEdit<'r>>,
    rules: &'r Rules,
    service: &Service,
    lane_cookie: &LaneCookie,
    subset_index: usize,
    reason: &Reason,
    request: &Request<'_>,
) {
    if !matches!(reason, Reason::Tag | Reason::Match { .. }) {
        return;
    }
    let Some(subset) = service.subsets.get(subset_index).filter(|s| s.affinity) else {
        return;
    };
    let cookie = lane_cookie.set_cookie(&service.name, &subset.tag, request.now_s());
    edits.push(HeaderEdit::SetOwned(rules.pin_header.as_str(), cookie));
}

/// A request of a service without a default that nothing claimed: no
/// subset, no cluster, no pin or mirror; only the removals that protect the
/// request stay. Out of line: services with a default never come here.
#[cold]
#[inline(never)]
fn unclaimed<'r>(
    service_index: usize,
    status: u16,
    after: Reason,
    edits: Vec<HeaderEdit<'r>>,
) -> Decision<'r> {
    Decision {
        service: Some(service_index),
        subset: None,
        reason: Reason::Unclaimed {
            status,
            after: Box::new(after),
        },
        cluster: None,
        edits,
    }
}

/// The `baggage` header's edit, if any: the lane member set to the lane a
/// non-default subset writes, or, at an edge that does not trust tags,
/// removed; every other member kept. A removal goes with the others, before
/// any header is set.
fn push_baggage_edit<'r>(
    edits: &mut Vec<HeaderEdit<'r>>,
    rules: &'r Rules,
    request: &Request<'_>,
    baggage_lane: Option<&[u8]>,
    written_lane: Option<&'r str>,
) {
    let Some(key) = rules.tag_baggage_key.as_deref() else {
        return;
    };
    let unchanged = match written_lane {
        Some(lane) => baggage_lane == Some(lane.as_bytes()),
        None => rules.trust_tag || baggage_lane.is_none(),
    };
    if unchanged {
        return;
    }
    match crate::baggage::rewrite(request.header_values(BAGGAGE), key, written_lane) {
        Some(value) => edits.push(HeaderEdit::SetOwned(BAGGAGE, value)),
        None => {
            let first_set = edits
                .iter()
                .position(|edit| !matches!(edit, HeaderEdit::Remove(_)))
                .unwrap_or(edits.len());
            edits.insert(first_set, HeaderEdit::Remove(BAGGAGE));
        }
    }
}

/// The mirror subset's cluster when this request is one of the share it
/// copies: served by another subset, of a method it copies, and drawn from
/// the worker's sequence (an exact share over consecutive requests).
fn mirror_target<'r>(
    service: &'r Service,
    mirror: &MirrorTo,
    served_by: usize,
    request: &Request<'_>,
    sequence: &mut WeylSequence,
) -> Option<&'r str> {
    if served_by == mirror.subset || mirror.share == 0 {
        return None;
    }
    let method = request.method().unwrap_or_default();
    if !mirror.methods.iter().any(|m| m.as_bytes().eq_ignore_ascii_case(method)) {
        return None;
    }
    if sequence.next_bucket() >= mirror.share {
        return None;
    }
    service.subsets.get(mirror.subset).map(|subset| subset.cluster.as_str())
}

fn choose_subset(
    service: &Service,
    request: &Request<'_>,
    incoming_tag: Option<&[u8]>,
    sequence: &mut WeylSequence,
    trace: &mut impl Trace,
) -> (usize, Reason) {
    if let Some(tag) = incoming_tag {
        if let Some(index) = service.subsets.iter().position(|s| s.tag.as_bytes() == tag) {
            return (index, Reason::Tag);
        }
    } else if let Some(lane_cookie) = &service.affinity {
        if let Some(index) = lane_by_cookie(service, lane_cookie, request) {
            return (index, Reason::Affinity);
        }
    }
    for (index, subset) in service.subsets.iter().enumerate() {
        for (position, entry) in subset.matches.iter().enumerate() {
            let failed = first_failure(entry, request);
            trace.entry(index, position, failed);
            if failed.is_none() {
                return (index, Reason::Match { entry: position });
            }
        }
    }
    if !service.rules.is_empty() {
        if let Some(chosen) = choose_by_rule(service, request, sequence, trace) {
            return chosen;
        }
    }
    if service.weights.is_empty() {
        return (
            service.default,
            Reason::Default {
                bucket: None,
                sticky: false,
            },
        );
    }
    let (bucket, sticky) = draw::<true>(service, request, sequence, trace);
    match service.weights.owner(bucket) {
        Some(index) => (index, Reason::Weight { bucket, sticky }),
        None => (
            service.default,
            Reason::Default {
                bucket: Some(bucket),
                sticky,
            },
        ),
    }
}

/// The first rule with a matching entry, and what its split gives. Out of
/// line, so that services without rules keep the path they had.
#[inline(never)]
fn choose_by_rule(
    service: &Service,
    request: &Request<'_>,
    sequence: &mut WeylSequence,
    trace: &mut impl Trace,
) -> Option<(usize, Reason)> {
    for (rule_index, rule) in service.rules.iter().enumerate() {
        for (position, entry) in rule.matches.iter().enumerate() {
            let failed = entry_failure::<false>(entry, request);
            trace.rule_entry(rule_index, position, failed);
            if failed.is_some() {
                continue;
            }
            let (subset, bucket, sticky) = if rule.weights.is_empty() {
                (service.default, None, false)
            } else {
                let (bucket, sticky) = draw::<false>(service, request, sequence, trace);
                let owner = rule.weights.owner(bucket).unwrap_or(service.default);
                (owner, Some(bucket), sticky)
            };
            let reason = Reason::Rule {
                rule: rule_index,
                entry: position,
                bucket,
                sticky,
            };
            return Some((subset, reason));
        }
    }
    None
}

/// Whether a service's `headers` all hold, told to `trace`. Out of line:
/// most services have none and are not asked.
#[inline(never)]
fn service_headers_hold(
    index: usize,
    service: &Service,
    request: &Request<'_>,
    trace: &mut impl Trace,
) -> bool {
    let failed = service
        .headers
        .iter()
        .position(|c| !named_holds::<false, _, _>(c, request.header_values(&c.name)));
    trace.service_headers(index, failed);
    failed.is_none()
}

/// A bucket for a weighted split: from the sticky key when the request has
/// it, else from its pin cookie, else from the worker's sequence. Whether it came from the key. `HOT`
/// as for [`entry_failure`]: the service's split and the rules' get a copy
/// each.
fn draw<const HOT: bool>(
    service: &Service,
    request: &Request<'_>,
    sequence: &mut WeylSequence,
    trace: &mut impl Trace,
) -> (u32, bool) {
    let key = sticky_key::<HOT>(service, request);
    trace.sticky(key);
    match (key, pinned_bucket(service, request)) {
        (Some(key), _) => (crate::split::sticky_bucket(&service.name, key), true),
        (None, Some(bucket)) => (bucket, true),
        (None, None) => (sequence.next_bucket(), false),
    }
}

/// The bucket a pin cookie carries: a decimal below 10,000; anything else
/// counts as no pin (and a new one is drawn and set).
fn pinned_bucket(service: &Service, request: &Request<'_>) -> Option<u32> {
    let pin = service.pin.as_ref()?;
    let value = request.cookie_values(&pin.name).next()?;
    if value.is_empty() || value.len() > 4 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let bucket = std::str::from_utf8(value).ok()?.parse().ok()?;
    (bucket < crate::split::BUCKETS).then_some(bucket)
}

/// The sticky key's value; an empty value counts as absent, or every client
/// without the key would share one bucket.
fn sticky_key<'a, const HOT: bool>(service: &Service, request: &Request<'a>) -> Option<&'a [u8]> {
    let value = match service.sticky.as_ref()? {
        StickyKey::Header(name) => request.header(name),
        StickyKey::Cookie(name) => request.cookie_values(name).next(),
        StickyKey::SourceIp => request.source_ip(),
    }?;
    (!value.is_empty()).then_some(value)
}

/// All the conditions an entry gives must hold.
pub fn entry_matches(entry: &MatchEntry, request: &Request<'_>) -> bool {
    first_failure(entry, request).is_none()
}

/// The first condition of `entry` that does not hold for the request, if any.
pub fn first_failure(entry: &MatchEntry, request: &Request<'_>) -> Option<Condition> {
    entry_failure::<true>(entry, request)
}

/// [`first_failure`] in two copies: `HOT` for the subsets' entries, which
/// every request walks, the other for rules and `not`. Each copy then has a
/// single caller on the request path and is inlined into it, as the one
/// function was before rules existed (with a second caller it was not, and a
/// decision cost about 100 instructions more under callgrind).
#[inline]
fn entry_failure<const HOT: bool>(entry: &MatchEntry, request: &Request<'_>) -> Option<Condition> {
    if let Some(failed) = failed_condition::<HOT>(entry, request) {
        return Some(failed);
    }
    match &entry.not {
        Some(inner) if chain_holds(inner, request) => Some(Condition::Not),
        _ => None,
    }
}

/// Whether `entry` holds, its own `not`s included, walked as a chain rather
/// than by recursion: an entry holds when its conditions do and its `not`
/// does not, so the first level (counting from 0) whose conditions fail
/// decides, by its parity; a chain whose every level holds ends on a level
/// without `not`, which holds. Kept out of line: recursion would stop the
/// common path from being inlined, and few entries have a `not`.
#[cold]
#[inline(never)]
fn chain_holds(entry: &MatchEntry, request: &Request<'_>) -> bool {
    let mut level = entry;
    let mut depth = 0usize;
    loop {
        if failed_condition::<false>(level, request).is_some() {
            return depth % 2 == 1;
        }
        match &level.not {
            Some(next) => {
                level = next;
                depth += 1;
            }
            None => return depth % 2 == 0,
        }
    }
}

/// The first of `entry`'s own conditions (its `not` aside) that does not
/// hold.
#[inline]
fn failed_condition<const HOT: bool>(
    entry: &MatchEntry,
    request: &Request<'_>,
) -> Option<Condition> {
    if !entry.methods.is_empty() {
        let method = request.method().unwrap_or_default();
        if !entry
            .methods
            .iter()
            .any(|m| m.as_bytes().eq_ignore_ascii_case(method))
        {
            return Some(Condition::Method);
        }
    }
    if let Some(path) = &entry.path {
        if path.matches(Some(request.path())) == entry.path_invert {
            return Some(Condition::Path);
        }
    }
    if let Some(regex) = &entry.cookie_regex {
        if !request
            .cookie_header()
            .is_some_and(|cookies| regex.is_match(&cookies))
        {
            return Some(Condition::CookieRegex);
        }
    }
    if let Some(at) = entry
        .headers
        .iter()
        .position(|c| !named_holds::<HOT, _, _>(c, request.header_values(&c.name)))
    {
        return Some(Condition::Header(at));
    }
    if let Some(at) = entry
        .cookies
        .iter()
        .position(|c| !named_holds::<HOT, _, _>(c, request.cookie_values(&c.name)))
    {
        return Some(Condition::Cookie(at));
    }
    if let Some(at) = entry
        .query
        .iter()
        .position(|c| !named_holds::<HOT, _, _>(c, request.query_values(&c.name)))
    {
        return Some(Condition::Query(at));
    }
    if entry.form.is_empty() {
        return None;
    }
    form_failure(entry, request)
}

/// The first `form` condition that does not hold. Out of line: few entries
/// have one.
#[cold]
#[inline(never)]
fn form_failure(entry: &MatchEntry, request: &Request<'_>) -> Option<Condition> {
    entry
        .form
        .iter()
        .position(|c| !named_holds::<false, _, _>(c, request.form_values(&c.name)))
        .map(Condition::Form)
}

/// How many body bytes to wait for before deciding this request, if any:
/// only for rules with `form`, a request to a service whose entries use it,
/// of content type `application/x-www-form-urlencoded`, with a body
/// (`content-length` above 0 and within `limits.max_body_bytes`, or none
/// given; the glue does not wait when the headers end the stream).
/// Any other request is decided on its headers, where `form` does not match.
pub fn body_wanted(rules: &Rules, request: &Request<'_>) -> Option<usize> {
    if !rules.reads_form {
        return None;
    }
    let form_type = request.header("content-type").is_some_and(|value| {
        let media = value.split(|&b| b == b';').next().unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    });
    if !form_type {
        return None;
    }
    let cap = usize::try_from(rules.limits.max_body_bytes).ok()?;
    // Without a length (chunked, or HTTP/2) the body callbacks count.
    if let Some(length) = request.header("content-length") {
        let length: usize = std::str::from_utf8(length).ok()?.trim().parse().ok()?;
        if length == 0 || length > cap {
            return None;
        }
    }
    let host = request.host();
    let service = rules.host_index.find(
        &rules.services,
        host.as_deref().unwrap_or(""),
        request.path(),
        |index, service| service_headers_hold(index, service, request, &mut NoTrace),
    )?;
    rules
        .services
        .get(service)
        .filter(|service| service.reads_form())
        .map(|_| cap)
}

/// [`holds`], turned round by the condition's `invert`.
fn named_holds<const HOT: bool, V: AsRef<[u8]>, I: Iterator<Item = V>>(
    condition: &NamedMatch,
    values: I,
) -> bool {
    holds::<HOT, V, I>(&condition.matcher, values) != condition.invert
}

/// A named condition holds when any occurrence of the name matches, or, when
/// the name does not occur at all, when the matcher accepts absence
/// (`present: false`).
fn holds<const HOT: bool, V: AsRef<[u8]>, I: Iterator<Item = V>>(
    matcher: &StringMatch,
    values: I,
) -> bool {
    let mut occurred = false;
    for value in values {
        if matcher.matches(Some(value.as_ref())) {
            return true;
        }
        occurred = true;
    }
    !occurred && matcher.matches(None)
}
