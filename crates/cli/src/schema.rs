//! `graylane schema`: a JSON Schema (draft 2020-12) of the plugin's
//! document, for editors completing and checking `graylane.json` and
//! `WasmPlugin.pluginConfig`.
//!
//! The reader in graylane-core is the authority; the schema is written from
//! the same tables it reads with (the string-match kinds, the limits with
//! their defaults and ceilings, the source settings' ranges, the reserved
//! header names), and a test walks every object of the schema against the
//! reader's own list of fields, so the two cannot drift apart. What a schema
//! cannot say (a `default` naming a subset of its service, weights summing to
//! at most 100, repeated names, regexes that compile, the limits) only
//! `graylane check` refuses.

use graylane_core::config::limits::Limits;
use graylane_core::config::matching::MATCH_KINDS;
use graylane_core::config::names::{RESERVED_HEADERS, RESERVED_PREFIXES};
use graylane_core::config::{DEFAULT_CLUSTER_HEADER, DEFAULT_MIRROR_HEADER, DEFAULT_PIN_HEADER, DEFAULT_TAG_HEADER};
use graylane_core::source::settings as source;
use serde_json::{json, Map, Value};

pub const SCHEMA_ID: &str = "https://graylane.dev/schema/graylane.schema.json";

/// An object with exactly these properties, plus `_notes`.
fn closed(description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "patternProperties": {"^_": {"description": "a note: ignored"}},
        "additionalProperties": false,
        "required": required,
    })
}

fn non_empty_string(description: &str) -> Value {
    json!({"type": "string", "minLength": 1, "description": description})
}

/// A header name graylane writes: an HTTP token, none of the reserved ones.
fn written_header_name(description: &str, default: &str) -> Value {
    let reserved: Vec<String> = RESERVED_HEADERS
        .iter()
        .map(|name| regex_escape(name))
        .chain(RESERVED_PREFIXES.iter().map(|prefix| format!("{}.*", regex_escape(prefix))))
        .collect();
    json!({
        "type": "string",
        "description": description,
        "default": default,
        "pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        "not": {"pattern": format!("^(?i:{})$", reserved.join("|"))},
    })
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '\\' => {
                vec!['\\', c]
            }
            _ => vec![c],
        })
        .collect()
}

/// Cluster and tag values: written into a header, so visible ASCII.
fn header_value(description: &str) -> Value {
    json!({"type": "string", "pattern": "^[!-~]+$", "description": description})
}

fn string_match_properties() -> Map<String, Value> {
    let mut properties = Map::new();
    for kind in MATCH_KINDS {
        let schema = match *kind {
            "present" => json!({"type": "boolean", "description": "whether the value is there at all"}),
            "gt" | "ge" | "lt" | "le" => json!({"type": "number",
                "description": format!("{kind}: the value read as a decimal number; a value that is none does not match")}),
            "in" => json!({"type": "array", "minItems": 1, "items": {"type": "string"},
                "description": "equal to one of these"}),
            "regex" => json!({"type": "string", "minLength": 1,
                "description": "Rust regex syntax, found anywhere in the value (anchor with ^…$)"}),
            other => json!({"type": "string", "description": format!("{other} comparison on the bytes")}),
        };
        properties.insert((*kind).to_string(), schema);
    }
    properties
}

/// `invert`, beside a string match: the condition holds when it would not.
fn invert() -> (&'static str, Value) {
    (
        "invert",
        json!({"type": "boolean", "default": false,
            "description": "the condition holds when it would not (a missing name then holds)"}),
    )
}

/// Exactly one string-match kind, beside `extra` properties.
fn string_match(description: &str, extra: &[(&str, Value)], required: &[&str]) -> Value {
    let mut properties = string_match_properties();
    for (name, schema) in extra {
        properties.insert((*name).to_string(), schema.clone());
    }
    let one_of: Vec<Value> = MATCH_KINDS
        .iter()
        .map(|kind| json!({"required": [kind]}))
        .collect();
    let mut schema = closed(description, Value::Object(properties), required);
    if let Some(object) = schema.as_object_mut() {
        object.insert("oneOf".into(), Value::Array(one_of));
    }
    schema
}

fn named_matches(what: &str) -> Value {
    json!({
        "type": "array",
        "minItems": 1,
        "description": format!("conditions on {what}; all must hold"),
        "items": string_match(
            &format!("one condition on {what}"),
            &[("name", non_empty_string("the name")), invert()],
            &["name"],
        ),
    })
}

/// Where the match entry's schema stands, for `not` and `rules[].match`.
const MATCH_ENTRY_REF: &str = "#/properties/services/items/properties/subsets/items/properties/match/items";

fn match_entry() -> Value {
    let mut entry = closed(
        "one match entry: every condition given must hold",
        json!({
            "headers": named_matches("request headers (names case-insensitive)"),
            "cookies": named_matches("one cookie's value"),
            "query": named_matches("form-decoded query parameters"),
            "form": named_matches("parameters of an application/x-www-form-urlencoded body, up to limits.max_body_bytes"),
            "cookie_regex": {"type": "string", "minLength": 1,
                "description": "a regex over the whole Cookie header"},
            "path": string_match("a string match on the path without the query", &[invert()], &[]),
            "not": {"$ref": MATCH_ENTRY_REF, "description": "an entry that must not hold"},
            "method": {"type": "array", "minItems": 1,
                "items": {"type": "string", "pattern": "^[A-Za-z_-]+$"},
                "description": "HTTP methods, compared case-insensitively"},
        }),
        &[],
    );
    if let Some(object) = entry.as_object_mut() {
        let conditions = ["headers", "cookies", "query", "form", "cookie_regex", "path", "method", "not"];
        let any: Vec<Value> = conditions.iter().map(|c| json!({"required": [c]})).collect();
        object.insert("anyOf".into(), Value::Array(any));
    }
    entry
}

fn subset() -> Value {
    closed(
        "one version of the service",
        json!({
            "name": non_empty_string("unique in the service; written as the tag when there is no tag"),
            "cluster": header_value("the upstream cluster requests of this subset go to"),
            "tag": header_value("the tag that selects this subset and is written for it; unique in the service"),
            "weight": {"type": "number", "minimum": 0, "maximum": 100, "default": 0,
                "description": "percent (two decimals at most) of what no tag or match claimed; non-default weights sum to at most 100"},
            "match": {"type": "array", "items": match_entry(),
                "description": "match entries: any one may hold"},
            "canary": {"type": "boolean", "description": "registry label, informational"},
            "bluegreen": {"type": "string", "pattern": "^([Bb][Ll][Uu][Ee]|[Gg][Rr][Ee][Ee][Nn])$",
                "description": "registry label, informational"},
            "set_headers": {"type": "object", "minProperties": 1,
                "propertyNames": {"pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"},
                "additionalProperties": header_value("the value written"),
                "description": "headers written on every request routed to this subset, the default included"},
            "affinity": {"type": "boolean", "default": false,
                "description": "a request routed here by tag or match gets the service's lane cookie, which routes later requests here"},
            "mirror": closed(
                "this subset receives a copy of a share of the requests the service's other subsets serve",
                json!({
                    "percent": {"type": "number", "minimum": 0, "maximum": 100},
                    "methods": {"type": "array", "minItems": 1,
                        "items": {"type": "string", "pattern": "^[A-Za-z]+$"},
                        "description": "the methods copied; default GET and HEAD"},
                }),
                &["percent"],
            ),
        }),
        &["name", "cluster"],
    )
}

fn sticky() -> Value {
    let kinds = [
        ("header", non_empty_string("the header carrying the sticky key")),
        ("cookie", non_empty_string("the cookie carrying the sticky key")),
        ("source_ip", json!({"const": true, "description": "the client's address"})),
    ];
    let one_of: Vec<Value> = kinds
        .iter()
        .map(|(name, schema)| closed("", json!({ *name: schema }), &[name]))
        .collect();
    json!({"description": "the key of the weighted split: the same key always gets the same subset",
           "oneOf": one_of})
}

fn service() -> Value {
    closed(
        "one service: where it applies and its subsets",
        json!({
            "name": non_empty_string("unique; also the seed of the sticky hash"),
            "hosts": {"type": "array", "minItems": 1,
                "items": {"type": "string", "minLength": 1, "pattern": "^(\\*|(\\*\\.)?[^*/ ]+)$"},
                "description": "exact hosts or *.suffix; absent: any host"},
            "path_prefix": {"type": "string", "pattern": "^/", "default": "/",
                "description": "plain prefix of the path"},
            "default": non_empty_string("the subset taking what nothing else claimed; absent: unclaimed requests get unclaimed_status"),
            "unclaimed_status": {"type": "integer", "minimum": 200, "maximum": 599, "default": 404,
                "description": "for a service without a default: the status the gateway answers unclaimed requests with"},
            "sticky": sticky(),
            "headers": named_matches("request headers that must all hold for the service to claim a request"),
            "rules": {"type": "array", "minItems": 1,
                "description": "tried after the subsets' match entries: the first rule with a matching entry splits the request",
                "items": closed(
                    "match entries with a split of their own; the rest goes to the default",
                    json!({
                        "match": {"type": "array", "minItems": 1, "items": {"$ref": MATCH_ENTRY_REF}},
                        "split": {"type": "array", "items": closed(
                            "a share of the requests the rule selects",
                            json!({
                                "subset": non_empty_string("a subset of this service, not the default"),
                                "weight": {"type": "number", "minimum": 0, "maximum": 100},
                            }),
                            &["subset", "weight"],
                        )},
                    }),
                    &["match", "split"],
                )},
            "pin_cookie": cookie_settings(
                "holds a browser without a sticky key in the bucket the weight gave it",
                "graylane_pin",
            ),
            "lane_cookie": cookie_settings(
                "the cookie naming the lane of a subset with affinity; signed with lane_keys when given",
                "graylane_lane",
            ),
            "subsets": {"type": "array", "minItems": 1, "items": subset()},
        }),
        &["name", "subsets"],
    )
}

/// `pin_cookie` and `lane_cookie`: one reader, the same settings.
fn cookie_settings(description: &str, default_name: &str) -> Value {
    closed(
        description,
        json!({
            "name": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", "default": default_name},
            "max_age_s": {"type": "integer", "minimum": 1, "maximum": 34_560_000, "default": 86_400},
            "path": {"type": "string", "pattern": "^/[^;]*$", "default": "/"},
            "domain": {"type": "string", "pattern": "^[^;]+$"},
            "secure": {"type": "boolean", "default": true},
            "http_only": {"type": "boolean", "default": true},
            "same_site": {"enum": ["Strict", "Lax", "None"], "default": "Lax"},
        }),
        &[],
    )
}

fn limits() -> Value {
    let mut properties = Map::new();
    for (name, default, ceiling) in Limits::settings() {
        properties.insert(
            name.to_string(),
            json!({"type": "integer", "minimum": 1, "maximum": ceiling, "default": default}),
        );
    }
    closed(
        "what a document may cost; only the plugin's configuration sets it",
        Value::Object(properties),
        &[],
    )
}

fn integer(min: u64, max: u64, default: u64, description: &str) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max, "default": default, "description": description})
}

fn source_settings() -> Value {
    let registry_service = closed(
        "the registry service read (consul, nacos)",
        json!({
            "name": non_empty_string("the service name in the registry and in the rules"),
            "hosts": {"type": "array", "items": {"type": "string"}},
            "path_prefix": {"type": "string", "pattern": "^/"},
            "sticky": sticky(),
            "cluster_template": {"type": "string", "pattern": "\\{subset\\}",
                "description": "cluster per subset; {service} and {subset} are replaced"},
        }),
        &[],
    );
    closed(
        "fetch the services from a control plane while the gateway runs",
        json!({
            "format": {"enum": ["graylane", "etcd", "consul", "nacos"], "default": "graylane"},
            "cluster": non_empty_string("the gateway cluster to call (APISIX: host:port)"),
            "path": {"type": "string", "pattern": "^/", "description": "request path"},
            "key": non_empty_string("the etcd key (format etcd)"),
            "service": registry_service,
            "authority": non_empty_string(":authority of the call; default the cluster"),
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "extra request headers"},
            "interval_ms": integer(source::MIN_INTERVAL_MS, source::MAX_INTERVAL_MS,
                source::DEFAULT_INTERVAL_MS, "refresh interval"),
            "timeout_ms": integer(source::MIN_TIMEOUT_MS, source::MAX_TIMEOUT_MS,
                source::DEFAULT_TIMEOUT_MS, "callout timeout"),
            "jitter_percent": integer(0, u64::from(source::MAX_JITTER_PERCENT),
                u64::from(source::DEFAULT_JITTER_PERCENT), "± jitter on interval and backoff"),
            "max_backoff_ms": integer(source::MIN_INTERVAL_MS, source::MAX_BACKOFF_LIMIT_MS,
                source::DEFAULT_MAX_BACKOFF_MS, "cap of the exponential backoff"),
            "mode": {"enum": ["push", "poll"],
                "description": "push (default; poll in apisix_mode): long-poll, or for etcd a watch over gRPC (its cluster HTTP/2), workers woken at once; poll: a request every interval_ms"},
            "wait_ms": integer(source::MIN_WAIT_MS, source::MAX_WAIT_MS,
                source::DEFAULT_WAIT_MS, "longest hold of a long-poll (mode push)"),
        }),
        &["cluster"],
    )
}

/// The schema of the plugin's document.
pub fn document_schema() -> Value {
    let mut root = closed(
        "graylane: canary and blue-green routing rules for the proxy-wasm plugin",
        json!({
            "cluster_header": written_header_name("request header the chosen cluster is written into", DEFAULT_CLUSTER_HEADER),
            "tag_header": written_header_name("the gray tag header, read and written", DEFAULT_TAG_HEADER),
            "mirror_header": written_header_name("request header naming the cluster a copy goes to", DEFAULT_MIRROR_HEADER),
            "pin_header": written_header_name("request header carrying a pin cookie to the route's response_headers_to_add", DEFAULT_PIN_HEADER),
            "tag_baggage_key": {"type": "string", "pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
                "description": "also read and write the lane as this W3C Baggage member (baggage: lane=canary)"},
            "trust_tag": {"type": "boolean", "default": true,
                "description": "honour an incoming tag; false strips it"},
            "lane_keys": {"type": "array", "minItems": 1,
                "items": {"type": "string", "minLength": graylane_core::affinity::MIN_KEY_BYTES},
                "description": "secrets lane cookies are signed with (HMAC-SHA256): the first signs, any verifies"},
            "services": {"type": "array", "items": service()},
            "limits": limits(),
            "allowed_clusters": {"type": "array", "minItems": 1,
                "items": header_value("a cluster, or a prefix ending in *"),
                "description": "the only clusters a subset may name, inline or fetched"},
            "source": source_settings(),
            "apisix_mode": {"type": "boolean", "default": false},
            "$schema": {"type": "string", "description": "where an editor finds this schema; ignored"},
        }),
        &[],
    );
    if let Some(object) = root.as_object_mut() {
        object.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
        object.insert("$id".into(), json!(SCHEMA_ID));
        object.insert("title".into(), json!("graylane plugin configuration"));
        object.insert(
            "anyOf".into(),
            json!([{"required": ["services"]}, {"required": ["source"]}]),
        );
    }
    root
}

/// The schema as the command prints it and the repository publishes it.
pub fn document_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&document_schema()).unwrap_or_default();
    text.push('\n');
    text
}
