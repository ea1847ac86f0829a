//! The compiled rule set: what `config` builds once from the JSON document and
//! every request reads. Nothing here is mutated after compilation, so one
//! value is shared by all requests of a worker.

use std::collections::BTreeMap;

use crate::pattern::Pattern;
use crate::split::WeightTable;

#[derive(Debug)]
pub struct Rules {
    /// Lower-case, as Envoy presents header names to the plugin.
    pub cluster_header: String,
    pub tag_header: String,
    /// The header naming the cluster a copy of the request goes to
    /// (Envoy's `request_mirror_policies` reads it).
    pub mirror_header: String,
    /// The request header a pin cookie (or a lane affinity cookie) is put
    /// in, for the route to copy into the response as `set-cookie`.
    pub pin_header: String,
    /// `lane_keys`: the keys lane affinity cookies are signed with.
    pub lane_keys: crate::affinity::LaneKeys,
    /// Some service signs lane cookies: the plugin reads the clock for
    /// their expiry only then (a host call).
    pub needs_clock: bool,
    /// Also read and write the lane as this W3C Baggage member.
    pub tag_baggage_key: Option<String>,
    pub trust_tag: bool,
    /// The limits this rule set was compiled within; a fetched document is
    /// held to them.
    pub limits: crate::config::Limits,
    pub allowed_clusters: Option<Vec<String>>,
    pub services: Vec<Service>,
    pub(crate) host_index: HostIndex,
    /// Some service is sticky on the source address: the plugin asks the host
    /// for it only then, since each property read crosses the wasm boundary.
    pub needs_source_ip: bool,
    /// Some match entry has `form`: only then may a request wait for its
    /// body.
    pub reads_form: bool,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    /// Index into `subsets`; `subsets.len()` (no subset) for a service
    /// without a default, whose unclaimed requests get `unclaimed_status`.
    pub default: usize,
    pub sticky: Option<StickyKey>,
    /// `headers`: conditions on request headers that must all hold for the
    /// service to claim a request, beside its hosts and path prefix. Empty
    /// for most services, which then cost nothing more.
    pub headers: Vec<NamedMatch>,
    pub subsets: Vec<Subset>,
    /// `rules`: tried after the subsets' match entries, before the weights.
    pub rules: Vec<Rule>,
    pub(crate) weights: WeightTable,
    /// The subset that receives copies of the others' requests, if any.
    pub mirror: Option<MirrorTo>,
    /// Holds a browser without a sticky key in the bucket it was drawn.
    pub pin: Option<PinCookie>,
    /// `lane_cookie`, present when a subset has `affinity`: the cookie
    /// naming the lane a request was routed to by tag or match.
    pub affinity: Option<crate::affinity::LaneCookie>,
    /// Set exactly when the service has no default: the status of the
    /// local reply to a request no tag, match, rule or weight claimed.
    pub unclaimed_status: Option<u16>,
}

/// `pin_cookie`: the cookie carrying a user's bucket of the weighted split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinCookie {
    pub name: String,
    /// `; Max-Age=…; Path=…` and the rest, written after `name=bucket`.
    pub attributes: String,
}

impl PinCookie {
    /// The `set-cookie` value for `bucket`.
    pub fn set_cookie(&self, bucket: u32) -> String {
        format!("{}={bucket}{}", self.name, self.attributes)
    }

    /// The `set-cookie` value for a cookie of these settings holding `value`.
    pub fn set_cookie_value(&self, value: &str) -> String {
        format!("{}={value}{}", self.name, self.attributes)
    }
}

/// A subset receiving a copy of a share of the requests the service's
/// other subsets serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTo {
    /// Index into the service's subsets.
    pub subset: usize,
    /// Basis points of the eligible requests.
    pub share: u32,
    /// Upper-case; only requests of these methods are copied.
    pub methods: Vec<String>,
}

/// One entry of a service's `rules`: when one of its match entries holds,
/// the request is split by the rule's own weights, the rest going to the
/// service's default.
#[derive(Debug)]
pub struct Rule {
    pub matches: Vec<MatchEntry>,
    /// `(subset index, weight in basis points)` as the split lists them.
    pub split: Vec<(usize, u32)>,
    pub(crate) weights: WeightTable,
}

impl Rule {
    /// Who owns which bucket of this rule's split.
    pub fn weight_table(&self) -> &WeightTable {
        &self.weights
    }
}

#[derive(Debug)]
pub struct Subset {
    pub name: String,
    pub cluster: String,
    pub tag: String,
    /// Basis points: 500 is 5%.
    pub weight: u32,
    pub matches: Vec<MatchEntry>,
    pub canary: Option<bool>,
    pub bluegreen: Option<String>,
    /// `set_headers`: `(lower-case name, value)` written on every request
    /// routed to this subset.
    pub set_headers: Vec<(String, String)>,
    /// `mirror`: (share in basis points, methods), as written on the subset.
    pub mirror: Option<(u32, Vec<String>)>,
    /// `affinity`: a request routed here by tag or match gets the service's
    /// lane cookie, and the cookie routes later ones here.
    pub affinity: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` is kept as `.example.com`: the host must end with it
    /// and have at least one more character before it.
    Suffix(String),
    Any,
}

/// One entry of a subset's `match` list: every condition given must hold.
#[derive(Debug, Default)]
pub struct MatchEntry {
    pub headers: Vec<NamedMatch>,
    pub cookies: Vec<NamedMatch>,
    pub cookie_regex: Option<Pattern>,
    pub path: Option<StringMatch>,
    /// `path.invert`: the path condition holds when the match does not.
    pub path_invert: bool,
    pub query: Vec<NamedMatch>,
    /// `form`: parameters of an `application/x-www-form-urlencoded` body.
    pub form: Vec<NamedMatch>,
    /// Upper-case; compared case-insensitively.
    pub methods: Vec<String>,
    /// `not`: an entry that must not hold.
    pub not: Option<Box<MatchEntry>>,
}

#[derive(Debug)]
pub struct NamedMatch {
    /// Lower-case for headers; as written for cookies and query parameters.
    pub name: String,
    pub matcher: StringMatch,
    /// `invert`: the condition holds when it would not (a missing name,
    /// which fails every match but `present: false`, then holds).
    pub invert: bool,
}

#[derive(Debug)]
pub enum StringMatch {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Contains(Vec<u8>),
    /// Byte regex, so that values that are not UTF-8 can still be matched.
    Regex(Pattern),
    Present(bool),
    /// `gt`, `ge`, `lt`, `le`: the value read as a decimal number compares
    /// so with the given one; a value that is no decimal number never matches.
    Greater(f64),
    GreaterOrEqual(f64),
    Less(f64),
    LessOrEqual(f64),
    /// `in`: equal to one of these, kept sorted for a binary search.
    In(Vec<Vec<u8>>),
}

impl StringMatch {
    /// `value` is `None` when the header, cookie or parameter is absent:
    /// then only `present: false` matches.
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        let Some(value) = value else {
            return matches!(self, StringMatch::Present(false));
        };
        match self {
            StringMatch::Exact(want) => value == want.as_slice(),
            StringMatch::Prefix(want) => value.starts_with(want),
            StringMatch::Suffix(want) => value.ends_with(want),
            StringMatch::Contains(want) => contains(value, want),
            StringMatch::Regex(regex) => regex.is_match(value),
            StringMatch::Present(present) => *present,
            StringMatch::Greater(bound) => decimal(value).is_some_and(|v| v > *bound),
            StringMatch::GreaterOrEqual(bound) => decimal(value).is_some_and(|v| v >= *bound),
            StringMatch::Less(bound) => decimal(value).is_some_and(|v| v < *bound),
            StringMatch::LessOrEqual(bound) => decimal(value).is_some_and(|v| v <= *bound),
            StringMatch::In(values) => values
                .binary_search_by(|probe| probe.as_slice().cmp(value))
                .is_ok(),
        }
    }
}

/// A decimal number as a request carries it: an optional sign, digits, and
/// optionally a point followed by digits (`42`, `-1.5`, `+7`). Anything else
/// (`1e3`, `0x10`, `inf`, ` 5`, `5.`) is no number. Parsed without
/// allocating.
pub fn decimal(value: &[u8]) -> Option<f64> {
    let unsigned = match value.first() {
        Some(b'-' | b'+') => value.get(1..)?,
        _ => value,
    };
    let (whole, fraction) = match unsigned.iter().position(|&b| b == b'.') {
        Some(point) => (unsigned.get(..point)?, Some(unsigned.get(point + 1..)?)),
        None => (unsigned, None),
    };
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    if !digits(whole) || !fraction.map_or(true, digits) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Linear time in the haystack and the needle, whatever their contents.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Finds the services that may claim a host without scanning them all: exact
/// hosts and wildcard suffixes are looked up by key, and only the services
/// that listed no host are tried for every request.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: BTreeMap<String, Vec<usize>>,
    suffix: BTreeMap<String, Vec<usize>>,
    any_host: Vec<usize>,
}

impl HostIndex {
    pub(crate) fn new(services: &[Service]) -> Self {
        let mut index = HostIndex::default();
        for (position, service) in services.iter().enumerate() {
            for host in &service.hosts {
                let list = match host {
                    HostPattern::Exact(name) => index.exact.entry(name.clone()).or_default(),
                    HostPattern::Suffix(suffix) => index.suffix.entry(suffix.clone()).or_default(),
                    HostPattern::Any => &mut index.any_host,
                };
                if list.last() != Some(&position) {
                    list.push(position);
                }
            }
        }
        index
    }

    /// The first service, in declared order, whose hosts fit `host` (lower-case,
    /// no port) and whose path prefix fits `path`.
    /// A service with `headers` fits only when `claims(index, service)`
    /// says its header conditions hold.
    pub(crate) fn find(
        &self,
        services: &[Service],
        host: &str,
        path: &[u8],
        mut claims: impl FnMut(usize, &Service) -> bool,
    ) -> Option<usize> {
        let mut fits = |index: &usize| {
            services.get(*index).is_some_and(|service| {
                path.starts_with(service.path_prefix.as_bytes())
                    && (service.headers.is_empty() || claims(*index, service))
            })
        };
        // Each list is in declared order, so its first fit is its best; the
        // answer is the earliest of those.
        let mut best: Option<usize> = None;
        let mut consider = |list: &[usize]| {
            if let Some(&found) = list.iter().find(|i| fits(i)) {
                best = Some(best.map_or(found, |b| b.min(found)));
            }
        };
        if let Some(list) = self.exact.get(host) {
            consider(list);
        }
        // Every proper suffix starting at a dot: for "a.b.example.com" that is
        // ".b.example.com", ".example.com" and ".com".
        for (position, _) in host
            .match_indices('.')
            .filter(|(position, _)| *position > 0)
        {
            if let Some(list) = host
                .get(position..)
                .and_then(|suffix| self.suffix.get(suffix))
            {
                consider(list);
            }
        }
        consider(&self.any_host);
        best
    }
}

impl MatchEntry {
    /// Whether this entry, or an entry in its `not` chain, has `form`.
    pub fn uses_form(&self) -> bool {
        !self.form.is_empty() || self.not.as_ref().is_some_and(|inner| inner.uses_form())
    }
}

impl Service {
    /// Whether a match entry of its subsets or rules has `form`: its
    /// requests may wait for their body.
    pub fn reads_form(&self) -> bool {
        let entries = self.subsets.iter().flat_map(|s| &s.matches);
        entries
            .chain(self.rules.iter().flat_map(|r| &r.matches))
            .any(MatchEntry::uses_form)
    }
}

impl Rules {
    pub fn service_named(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|service| service.name == name)
    }
}

impl Service {
    pub fn default_subset(&self) -> Option<&Subset> {
        self.subsets.get(self.default)
    }

    /// Who owns which bucket of the weighted split.
    pub fn weight_table(&self) -> &WeightTable {
        &self.weights
    }

    pub fn subset_named(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|subset| subset.name == name)
    }

    /// Who owns which buckets: the weighted ranges and, filling the gaps,
    /// the default subset. `(first, last inclusive, subset index)` in bucket
    /// order, covering every bucket once.
    pub fn bucket_layout(&self) -> Vec<(u32, u32, usize)> {
        self.weights.layout(self.default)
    }

    /// Each subset's share of the weighted split in basis points, in subset
    /// order (the default's share is the rest).
    pub fn shares(&self) -> Vec<u32> {
        self.weights.shares(self.default, self.subsets.len())
    }

    /// [`Service::bucket_layout`] of `rules[rule]`'s split, or of the
    /// service's weights when `rule` is `None`.
    pub fn layout_of(&self, rule: Option<usize>) -> Vec<(u32, u32, usize)> {
        self.table_of(rule).layout(self.default)
    }

    /// [`Service::shares`] of `rules[rule]`'s split, or of the service's
    /// weights when `rule` is `None`.
    pub fn shares_of(&self, rule: Option<usize>) -> Vec<u32> {
        self.table_of(rule).shares(self.default, self.subsets.len())
    }

    fn table_of(&self, rule: Option<usize>) -> &WeightTable {
        rule.and_then(|rule| self.rules.get(rule))
            .map_or(&self.weights, |rule| &rule.weights)
    }
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn decimal_numbers_as_requests_carry_them() {
        for (text, want) in [
            ("42", Some(42.0)),
            ("-1.5", Some(-1.5)),
            ("+7", Some(7.0)),
            ("007.250", Some(7.25)),
            ("", None),
            ("-", None),
            (".5", None),
            ("5.", None),
            ("1e3", None),
            ("0x10", None),
            ("inf", None),
            ("NaN", None),
            (" 5", None),
            ("5 ", None),
            ("1.2.3", None),
            ("--1", None),
        ] {
            assert_eq!(decimal(text.as_bytes()), want, "{text:?}");
        }
        assert_eq!(decimal(b"\xff1"), None);
    }
}
