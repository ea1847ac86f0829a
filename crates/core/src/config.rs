//! Reads the plugin's JSON document and compiles it into [`Rules`].
//!
//! The document is walked by hand rather than derived with serde so that
//! every refusal names the exact field as a JSON path
//! (`services[0].subsets[1].weight`) with the reason, all refusals are
//! reported at once, and unknown fields (a misspelt `wieght` silently ignored
//! would be an outage in waiting) are refused too. Regexes compile here, once.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::rules::{
    HostIndex, HostPattern, MatchEntry, NamedMatch, Rules, Service, StickyKey, StringMatch, Subset,
};
use crate::split::{WeightTable, BUCKETS};

pub const DEFAULT_CLUSTER_HEADER: &str = "x-graylane-cluster";
pub const DEFAULT_TAG_HEADER: &str = "x-gray-tag";

/// Compiled regexes are bounded so that a hostile or careless pattern cannot
/// take a worker's memory; the `regex` crate already guarantees linear time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One reason the document was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field; `$` for the document itself.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Every reason the document was refused, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, error) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What a document may carry besides the rules themselves. Other modules
/// (the rules source) read their own sections; the compiler only needs to know
/// that they are allowed.
const EXTENSION_FIELDS: &[&str] = &["source", "apisix_mode"];

/// Parses and compiles a plugin configuration.
pub fn compile(document: &[u8]) -> Result<Rules, ConfigErrors> {
    compile_value(&parse_document(document)?)
}

/// The document as JSON, or the refusal naming the syntax error's place.
pub fn parse_document(document: &[u8]) -> Result<Value, ConfigErrors> {
    serde_json::from_slice(document).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            path: "$".into(),
            reason: format!("not valid JSON: {error}"),
        }])
    })
}

/// Compiles a document that is already parsed (the command-line tool reads
/// YAML too).
pub fn compile_value(value: &Value) -> Result<Rules, ConfigErrors> {
    let mut errors = Errors::default();
    let rules = Reader::new(value, "$".to_string(), &mut errors).and_then(|root| read_rules(root));
    match rules {
        Some(rules) if errors.list.is_empty() => Ok(rules),
        _ => Err(ConfigErrors(errors.list)),
    }
}

#[derive(Default)]
struct Errors {
    list: Vec<ConfigError>,
}

impl Errors {
    fn push(&mut self, path: &str, reason: impl Into<String>) {
        self.list.push(ConfigError {
            path: path.to_string(),
            reason: reason.into(),
        });
    }
}

/// A JSON object being read, with its path, that refuses the fields nobody
/// asked for once reading is done.
struct Reader<'v, 'e> {
    object: &'v Map<String, Value>,
    path: String,
    errors: &'e mut Errors,
    read: BTreeSet<&'static str>,
}

impl<'v, 'e> Reader<'v, 'e> {
    fn new(value: &'v Value, path: String, errors: &'e mut Errors) -> Option<Self> {
        match value {
            Value::Object(object) => Some(Reader {
                object,
                path,
                errors,
                read: BTreeSet::new(),
            }),
            other => {
                errors.push(&path, format!("must be an object, got {}", kind(other)));
                None
            }
        }
    }

    fn child_path(&self, field: &str) -> String {
        if self.path == "$" {
            field.to_string()
        } else {
            format!("{}.{}", self.path, field)
        }
    }

    fn field(&mut self, field: &'static str) -> Option<(&'v Value, String)> {
        self.read.insert(field);
        let value = self.object.get(field)?;
        Some((value, self.child_path(field)))
    }

    fn error(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(path, reason);
    }

    fn missing(&mut self, field: &'static str) {
        let path = self.child_path(field);
        self.errors.push(&path, "is required");
    }

    fn string(&mut self, field: &'static str) -> Option<(String, String)> {
        let (value, path) = self.field(field)?;
        match value {
            Value::String(text) => Some((text.clone(), path)),
            other => {
                self.error(&path, format!("must be a string, got {}", kind(other)));
                None
            }
        }
    }

    fn required_string(&mut self, field: &'static str) -> Option<(String, String)> {
        if !self.object.contains_key(field) {
            self.read.insert(field);
            self.missing(field);
            return None;
        }
        self.string(field)
    }

    fn non_empty_string(
        &mut self,
        field: &'static str,
        required: bool,
    ) -> Option<(String, String)> {
        let (text, path) = if required {
            self.required_string(field)?
        } else {
            self.string(field)?
        };
        if text.is_empty() {
            self.error(&path, "must not be empty");
            return None;
        }
        Some((text, path))
    }

    fn bool(&mut self, field: &'static str) -> Option<(bool, String)> {
        let (value, path) = self.field(field)?;
        match value {
            Value::Bool(flag) => Some((*flag, path)),
            other => {
                self.error(&path, format!("must be true or false, got {}", kind(other)));
                None
            }
        }
    }

    fn array(&mut self, field: &'static str) -> Option<(&'v [Value], String)> {
        let (value, path) = self.field(field)?;
        match value {
            Value::Array(items) => Some((items.as_slice(), path)),
            other => {
                self.error(&path, format!("must be a list, got {}", kind(other)));
                None
            }
        }
    }

    /// Refuses the fields of this object that were never asked for. Keys
    /// starting with `_` are left for the user's own notes.
    fn finish(self, allowed_extra: &[&str]) {
        for key in self.object.keys() {
            let known = self.read.contains(key.as_str()) || allowed_extra.contains(&key.as_str());
            if !known && !key.starts_with('_') {
                let mut expected: Vec<&str> = self.read.iter().copied().collect();
                expected.extend(allowed_extra);
                expected.sort_unstable();
                let path = self.child_path(key);
                self.errors.push(
                    &path,
                    format!("unknown field; expected one of: {}", expected.join(", ")),
                );
            }
        }
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn read_rules(mut root: Reader<'_, '_>) -> Option<Rules> {
    let cluster_header = read_header_name(&mut root, "cluster_header", DEFAULT_CLUSTER_HEADER);
    let tag_header = read_header_name(&mut root, "tag_header", DEFAULT_TAG_HEADER);
    if cluster_header == tag_header {
        let path = root.child_path("tag_header");
        root.error(&path, "must differ from cluster_header");
    }
    let trust_tag = root.bool("trust_tag").map_or(true, |(flag, _)| flag);
    let has_source = root.object.contains_key("source");

    let mut services = Vec::new();
    match root.array("services") {
        Some((items, path)) => {
            let mut names = BTreeSet::new();
            for (position, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{position}]");
                if let Some(service) = read_service(item, &item_path, root.errors) {
                    if !names.insert(service.name.clone()) {
                        root.error(
                            &format!("{item_path}.name"),
                            format!("repeats the service name {:?}", service.name),
                        );
                    }
                    services.push(service);
                }
            }
        }
        None if !root.object.contains_key("services") && !has_source => root.missing("services"),
        None => {}
    }
    root.finish(EXTENSION_FIELDS);

    let host_index = HostIndex::new(&services);
    let needs_source_ip = services
        .iter()
        .any(|s| s.sticky == Some(StickyKey::SourceIp));
    Some(Rules {
        cluster_header,
        tag_header,
        trust_tag,
        services,
        host_index,
        needs_source_ip,
    })
}

fn read_header_name(reader: &mut Reader<'_, '_>, field: &'static str, default: &str) -> String {
    let Some((name, path)) = reader.string(field) else {
        return default.to_string();
    };
    match check_header_name(&name) {
        Ok(()) => name.to_ascii_lowercase(),
        Err(reason) => {
            reader.error(&path, reason);
            default.to_string()
        }
    }
}

/// A header the plugin reads or writes must be a plain HTTP token: a pseudo
/// header such as `:path` cannot carry a cluster or a tag.
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    const TOKEN_PUNCTUATION: &str = "!#$%&'*+-.^_`|~";
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || TOKEN_PUNCTUATION.contains(*c)))
    {
        Some(bad) => Err(format!(
            "{name:?} is not a valid header name (character {bad:?})"
        )),
        None => Ok(()),
    }
}

fn read_service(value: &Value, path: &str, errors: &mut Errors) -> Option<Service> {
    let mut reader = Reader::new(value, path.to_string(), errors)?;
    let name = reader.non_empty_string("name", true).map(|(name, _)| name);
    let hosts = read_hosts(&mut reader);
    let path_prefix = match reader.string("path_prefix") {
        Some((prefix, _)) if prefix.starts_with('/') => prefix,
        Some((prefix, prefix_path)) => {
            reader.error(&prefix_path, format!("must start with '/', got {prefix:?}"));
            "/".into()
        }
        None => "/".into(),
    };
    let default = reader.non_empty_string("default", true);
    let sticky = read_sticky(&mut reader);

    let mut subsets = Vec::new();
    let mut subsets_path = reader.child_path("subsets");
    match reader.array("subsets") {
        Some((items, list_path)) => {
            subsets_path = list_path;
            if items.is_empty() {
                reader.error(&subsets_path, "must list at least one subset");
            }
            for (position, item) in items.iter().enumerate() {
                if let Some(subset) =
                    read_subset(item, &format!("{subsets_path}[{position}]"), reader.errors)
                {
                    subsets.push((position, subset));
                }
            }
        }
        None if !reader.object.contains_key("subsets") => reader.missing("subsets"),
        None => {}
    }
    reader.finish(&[]);

    check_unique(errors, &subsets_path, &subsets, "name", |subset| {
        &subset.name
    });
    check_unique(errors, &subsets_path, &subsets, "tag", |subset| &subset.tag);

    let (default_name, default_path) = default?;
    let Some(default) = subsets
        .iter()
        .position(|(_, subset)| subset.name == default_name)
    else {
        let known: Vec<&str> = subsets.iter().map(|(_, s)| s.name.as_str()).collect();
        errors.push(
            &default_path,
            format!(
                "names no subset of this service: {default_name:?} (subsets: {})",
                known.join(", ")
            ),
        );
        return None;
    };

    let weighted: Vec<(usize, u32)> = subsets
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != default)
        .map(|(index, (_, subset))| (index, subset.weight))
        .collect();
    let total: u32 = weighted.iter().map(|(_, weight)| weight).sum();
    if total > BUCKETS {
        let parts: Vec<String> = subsets
            .iter()
            .enumerate()
            .filter(|(index, (_, subset))| *index != default && subset.weight > 0)
            .map(|(_, (position, subset))| {
                format!("subsets[{position}] {}", percent(subset.weight))
            })
            .collect();
        errors.push(
            &subsets_path,
            format!(
                "weights of the non-default subsets sum to {}, over 100 ({})",
                percent(total),
                parts.join(" + ")
            ),
        );
    }

    Some(Service {
        name: name?,
        hosts,
        path_prefix,
        default,
        sticky,
        weights: WeightTable::new(&weighted),
        subsets: subsets.into_iter().map(|(_, subset)| subset).collect(),
    })
}

fn percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}"),
        cents if cents % 10 == 0 => format!("{whole}.{}", cents / 10),
        cents => format!("{whole}.{cents:02}"),
    }
}

fn check_unique<T>(
    errors: &mut Errors,
    list_path: &str,
    items: &[(usize, T)],
    field: &str,
    key: impl Fn(&T) -> &String,
) {
    let mut seen = BTreeSet::new();
    for (position, item) in items {
        let value = key(item);
        if !seen.insert(value.as_str()) {
            errors.push(
                &format!("{list_path}[{position}].{field}"),
                format!("repeats the {field} {value:?} of an earlier subset"),
            );
        }
    }
}

fn read_hosts(reader: &mut Reader<'_, '_>) -> Vec<HostPattern> {
    let Some((items, path)) = reader.array("hosts") else {
        return vec![HostPattern::Any];
    };
    if items.is_empty() {
        reader.error(
            &path,
            "must list at least one host (leave the field out to match any host)",
        );
    }
    let mut hosts = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{position}]");
        match item {
            Value::String(host) => match parse_host_pattern(host) {
                Ok(pattern) => hosts.push(pattern),
                Err(reason) => reader.error(&item_path, reason),
            },
            other => reader.error(&item_path, format!("must be a string, got {}", kind(other))),
        }
    }
    hosts
}

fn parse_host_pattern(host: &str) -> Result<HostPattern, String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(format!(
                "{host:?}: a wildcard host is '*.' followed by a domain"
            ));
        }
        return Ok(HostPattern::Suffix(format!(".{suffix}")));
    }
    if lower.is_empty() {
        return Err("must not be empty".into());
    }
    if lower.contains('*') {
        return Err(format!("{host:?}: '*' is allowed only as a leading '*.'"));
    }
    if lower.contains(['/', ' ']) {
        return Err(format!("{host:?} is not a host name"));
    }
    // The port is ignored when routing, so it is dropped here too rather than
    // making a rule that could never match.
    Ok(HostPattern::Exact(strip_port(&lower).to_string()))
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub(crate) fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

fn read_sticky(reader: &mut Reader<'_, '_>) -> Option<StickyKey> {
    let (value, path) = reader.field("sticky")?;
    let mut sticky = Reader::new(value, path.clone(), reader.errors)?;
    let header = sticky.non_empty_string("header", false);
    let cookie = sticky.non_empty_string("cookie", false);
    let source_ip = sticky.bool("source_ip");
    sticky.finish(&[]);
    let given = usize::from(header.is_some())
        + usize::from(cookie.is_some())
        + usize::from(source_ip.is_some());
    if given != 1 {
        reader.error(
            &path,
            "must give exactly one of header, cookie or source_ip",
        );
        return None;
    }
    if let Some((name, header_path)) = header {
        if let Err(reason) = check_header_name(&name) {
            reader.error(&header_path, reason);
            return None;
        }
        return Some(StickyKey::Header(name.to_ascii_lowercase()));
    }
    if let Some((name, _)) = cookie {
        return Some(StickyKey::Cookie(name));
    }
    match source_ip {
        Some((true, _)) => Some(StickyKey::SourceIp),
        Some((false, flag_path)) => {
            reader.error(
                &flag_path,
                "must be true (leave sticky out for no sticky key)",
            );
            None
        }
        None => None,
    }
}

fn read_subset(value: &Value, path: &str, errors: &mut Errors) -> Option<Subset> {
    let mut reader = Reader::new(value, path.to_string(), errors)?;
    let name = reader.non_empty_string("name", true).map(|(name, _)| name);
    let cluster = reader
        .non_empty_string("cluster", true)
        .map(|(cluster, _)| cluster);
    let tag = reader.non_empty_string("tag", false).map(|(tag, _)| tag);
    let weight = read_weight(&mut reader);
    let canary = reader.bool("canary").map(|(flag, _)| flag);
    let bluegreen = read_bluegreen(&mut reader);
    let mut matches = Vec::new();
    if let Some((items, list_path)) = reader.array("match") {
        for (position, item) in items.iter().enumerate() {
            if let Some(entry) =
                read_match_entry(item, &format!("{list_path}[{position}]"), reader.errors)
            {
                matches.push(entry);
            }
        }
    }
    reader.finish(&[]);
    let name = name?;
    Some(Subset {
        tag: tag.unwrap_or_else(|| name.clone()),
        name,
        cluster: cluster?,
        weight,
        matches,
        canary,
        bluegreen,
    })
}

fn read_bluegreen(reader: &mut Reader<'_, '_>) -> Option<String> {
    let (colour, path) = reader.string("bluegreen")?;
    let lower = colour.to_ascii_lowercase();
    if lower == "blue" || lower == "green" {
        Some(lower)
    } else {
        reader.error(
            &path,
            format!("must be \"blue\" or \"green\", got {colour:?}"),
        );
        None
    }
}

/// Percent with at most two decimals, returned in basis points.
fn read_weight(reader: &mut Reader<'_, '_>) -> u32 {
    let Some((value, path)) = reader.field("weight") else {
        return 0;
    };
    let Some(number) = value.as_f64() else {
        reader.error(
            &path,
            format!("must be a number of percent, got {}", kind(value)),
        );
        return 0;
    };
    if !(0.0..=100.0).contains(&number) {
        reader.error(
            &path,
            format!("must be between 0 and 100 (percent), got {number}"),
        );
        return 0;
    }
    let scaled = number * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        reader.error(
            &path,
            format!("must have at most two decimals, got {number}"),
        );
        return 0;
    }
    // In range 0..=10000 after the checks above.
    rounded as u32
}

fn read_match_entry(value: &Value, path: &str, errors: &mut Errors) -> Option<MatchEntry> {
    let mut reader = Reader::new(value, path.to_string(), errors)?;
    let mut entry = MatchEntry {
        headers: read_named_matches(&mut reader, "headers", |name| {
            check_header_name(name).map(|()| name.to_ascii_lowercase())
        }),
        cookies: read_named_matches(&mut reader, "cookies", |name| Ok(name.to_string())),
        query: read_named_matches(&mut reader, "query", |name| Ok(name.to_string())),
        ..MatchEntry::default()
    };
    if let Some((pattern, regex_path)) = reader.non_empty_string("cookie_regex", false) {
        entry.cookie_regex = compile_regex(&mut reader, &regex_path, &pattern);
    }
    if let Some((value, match_path)) = reader.field("path") {
        entry.path = read_string_match(value, &match_path, reader.errors);
    }
    if let Some((items, methods_path)) = reader.array("method") {
        for (position, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(method)
                    if !method.is_empty()
                        && method
                            .bytes()
                            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') =>
                {
                    entry.methods.push(method.to_ascii_uppercase());
                }
                _ => reader.error(
                    &format!("{methods_path}[{position}]"),
                    format!("must be an HTTP method such as \"GET\", got {item}"),
                ),
            }
        }
        if items.is_empty() {
            reader.error(&methods_path, "must list at least one method");
        }
    }
    let conditions = reader
        .read
        .iter()
        .filter(|field| reader.object.contains_key(**field))
        .count();
    if conditions == 0 && reader.object.keys().all(|key| key.starts_with('_')) {
        reader.error(
            path,
            "has no condition; an empty entry would match every request",
        );
    }
    reader.finish(&[]);
    Some(entry)
}

fn read_named_matches(
    reader: &mut Reader<'_, '_>,
    field: &'static str,
    normalise_name: impl Fn(&str) -> Result<String, String>,
) -> Vec<NamedMatch> {
    let Some((items, list_path)) = reader.array(field) else {
        return Vec::new();
    };
    if items.is_empty() {
        reader.error(&list_path, "must list at least one condition");
    }
    let mut named = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let item_path = format!("{list_path}[{position}]");
        let Some(object) = item.as_object() else {
            reader.error(&item_path, format!("must be an object, got {}", kind(item)));
            continue;
        };
        let name = match object.get("name") {
            Some(Value::String(name)) if !name.is_empty() => match normalise_name(name) {
                Ok(name) => Some(name),
                Err(reason) => {
                    reader.error(&format!("{item_path}.name"), reason);
                    None
                }
            },
            Some(_) => {
                reader.error(&format!("{item_path}.name"), "must be a non-empty string");
                None
            }
            None => {
                reader.error(&format!("{item_path}.name"), "is required");
                None
            }
        };
        let mut rest = object.clone();
        rest.remove("name");
        let matcher = read_string_match(&Value::Object(rest), &item_path, reader.errors);
        if let (Some(name), Some(matcher)) = (name, matcher) {
            named.push(NamedMatch { name, matcher });
        }
    }
    named
}

const MATCH_KINDS: &[&str] = &["exact", "prefix", "suffix", "contains", "regex", "present"];

/// Exactly one of the string-match kinds.
fn read_string_match(value: &Value, path: &str, errors: &mut Errors) -> Option<StringMatch> {
    let object = match value {
        Value::Object(object) => object,
        other => {
            errors.push(
                path,
                format!(
                    "must be an object with one of {}, got {}",
                    MATCH_KINDS.join(", "),
                    kind(other)
                ),
            );
            return None;
        }
    };
    let mut found = None;
    let mut kinds = 0;
    for (key, value) in object {
        if key.starts_with('_') {
            continue;
        }
        let field_path = format!("{path}.{key}");
        if !MATCH_KINDS.contains(&key.as_str()) {
            errors.push(
                &field_path,
                format!(
                    "unknown string-match kind; expected exactly one of: {}",
                    MATCH_KINDS.join(", ")
                ),
            );
            kinds += 1;
            continue;
        }
        kinds += 1;
        found = match (key.as_str(), value) {
            ("present", Value::Bool(flag)) => Some(StringMatch::Present(*flag)),
            ("present", other) => {
                errors.push(
                    &field_path,
                    format!("must be true or false, got {}", kind(other)),
                );
                None
            }
            (_, Value::String(text)) => {
                let bytes = text.as_bytes().to_vec();
                match key.as_str() {
                    "exact" => Some(StringMatch::Exact(bytes)),
                    "prefix" => Some(StringMatch::Prefix(bytes)),
                    "suffix" => Some(StringMatch::Suffix(bytes)),
                    "contains" => Some(StringMatch::Contains(bytes)),
                    _ => compile_regex_into(errors, &field_path, text).map(StringMatch::Regex),
                }
            }
            (_, other) => {
                errors.push(
                    &field_path,
                    format!("must be a string, got {}", kind(other)),
                );
                None
            }
        };
    }
    if kinds == 0 {
        errors.push(path, format!("needs one of: {}", MATCH_KINDS.join(", ")));
        return None;
    }
    if kinds > 1 {
        errors.push(
            path,
            format!(
                "gives {kinds} match kinds; give exactly one of: {}",
                MATCH_KINDS.join(", ")
            ),
        );
        return None;
    }
    found
}

fn compile_regex(
    reader: &mut Reader<'_, '_>,
    path: &str,
    pattern: &str,
) -> Option<regex::bytes::Regex> {
    compile_regex_into(reader.errors, path, pattern)
}

fn compile_regex_into(
    errors: &mut Errors,
    path: &str,
    pattern: &str,
) -> Option<regex::bytes::Regex> {
    match regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(regex) => Some(regex),
        Err(error) => {
            // The regex crate's message spans several lines with a caret
            // under the fault; one line reads better in a gateway log.
            let message = error
                .to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            errors.push(path, format!("regex does not compile: {message}"));
            None
        }
    }
}
