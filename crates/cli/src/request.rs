//! A request described by hand (command-line flags or one JSON object per
//! line), turned into the header pairs a gateway hands the plugin.
//!
//! [`RequestSpec::header_pairs`] is the one place that construction happens,
//! so that `explain`, `simulate`, the native tests and the end-to-end harness
//! (which sends the same descriptions through a real Envoy) agree on what a
//! description means.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use graylane_core::decision::{decide, Decision, Reason};
use graylane_core::request::{ip_of_socket_address, HeaderPair, Request};
use graylane_core::rules::Rules;
use graylane_core::split::WeylSequence;

/// One request. Every field is optional: the host defaults to none (only
/// services without `hosts` can claim the request), the path to `/`, the
/// method to `GET`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default)]
    pub host: Option<String>,
    /// Path and query, as sent: `/api/b/list?canary=true`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Header name → value, or a list of values for a repeated header.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    /// Cookie name → value; all cookies go into one `cookie` header.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    #[serde(default)]
    pub source_ip: Option<String>,
    /// The request body, for `form` conditions.
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(value) => std::slice::from_ref(value),
            OneOrMany::Many(values) => values,
        }
    }
}

/// Owned header pairs; borrow them with [`borrow_pairs`] to build a
/// [`Request`].
pub type OwnedPairs = Vec<(Vec<u8>, Vec<u8>)>;

impl RequestSpec {
    /// Parses one line of a requests file. The field `expect` and fields
    /// starting with `_` are left out, so that a table of requests with their
    /// expected outcomes can be replayed as it is.
    pub fn from_json_line(line: &str) -> Result<RequestSpec, String> {
        let mut value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if let Value::Object(object) = &mut value {
            object.retain(|key, _| key != "expect" && !key.starts_with('_'));
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Adds a header given as `name: value`.
    pub fn add_header_line(&mut self, line: &str) -> Result<(), String> {
        let (name, value) = split_named(line, ':', "a header is written 'name: value'")?;
        let slot = self
            .headers
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| OneOrMany::Many(Vec::new()));
        match slot {
            OneOrMany::One(first) => *slot = OneOrMany::Many(vec![first.clone(), value]),
            OneOrMany::Many(values) => values.push(value),
        }
        Ok(())
    }

    /// Adds a cookie given as `name=value`.
    pub fn add_cookie(&mut self, pair: &str) -> Result<(), String> {
        let (name, value) = split_named(pair, '=', "a cookie is written 'name=value'")?;
        self.cookies.insert(name.to_string(), value);
        Ok(())
    }

    pub fn path_or_root(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }

    pub fn method_or_get(&self) -> &str {
        self.method.as_deref().unwrap_or("GET")
    }

    /// The request headers as Envoy hands them to the plugin: the pseudo
    /// headers `:authority`, `:path`, `:method` and `:scheme` first, then the
    /// headers with lower-case names (Envoy lower-cases them), then one
    /// `cookie` header carrying every cookie.
    pub fn header_pairs(&self) -> OwnedPairs {
        let mut pairs: OwnedPairs = Vec::new();
        let mut push = |name: &str, value: &str| {
            pairs.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        };
        if let Some(host) = &self.host {
            push(":authority", host);
        }
        push(":path", self.path_or_root());
        push(":method", &self.method_or_get().to_ascii_uppercase());
        push(":scheme", "http");
        for (name, values) in &self.headers {
            for value in values.values() {
                push(&name.to_ascii_lowercase(), value);
            }
        }
        if !self.cookies.is_empty() {
            let cookie = self
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            push("cookie", &cookie);
        }
        pairs
    }

    /// The client address as the plugin takes it from Envoy's
    /// `source.address`: the IP, any port dropped, so `10.0.0.1:5555` and
    /// `10.0.0.1` are the same sticky key.
    pub fn source_ip_bytes(&self) -> Option<&[u8]> {
        self.source_ip
            .as_deref()
            .map(|address| ip_of_socket_address(address.as_bytes()))
    }

    /// A short line naming the request, for reports.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} {}{}",
            self.method_or_get().to_ascii_uppercase(),
            self.host.as_deref().unwrap_or("(no host)"),
            self.path_or_root()
        );
        for (name, values) in &self.headers {
            for value in values.values() {
                text.push_str(&format!(" [{name}: {value}]"));
            }
        }
        for (name, value) in &self.cookies {
            text.push_str(&format!(" [cookie {name}={value}]"));
        }
        if let Some(ip) = &self.source_ip {
            text.push_str(&format!(" [from {ip}]"));
        }
        text
    }
}

/// `name<separator>value`, both trimmed; the name must not be empty.
fn split_named<'t>(
    text: &'t str,
    separator: char,
    form: &str,
) -> Result<(&'t str, String), String> {
    match text.split_once(separator) {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim(), value.trim().to_string()))
        }
        _ => Err(format!("{text:?}: {form}")),
    }
}

/// Whether the decision drew its bucket from the per-worker sequence (a
/// weighted split without a sticky key): then the same request may get
/// another subset next time.
pub fn drawn_from_sequence(decision: &Decision<'_>) -> bool {
    reason_drawn_from_sequence(&decision.reason)
}

fn reason_drawn_from_sequence(reason: &Reason) -> bool {
    if let Reason::Unclaimed { after, .. } = reason {
        return reason_drawn_from_sequence(after);
    }
    matches!(
        reason,
        Reason::Weight { sticky: false, .. }
            | Reason::Default {
                bucket: Some(_),
                sticky: false
            }
            | Reason::Rule {
                bucket: Some(_),
                sticky: false,
                ..
            }
    )
}

/// The decision as JSON, in the form of the `expect` objects of
/// `tests/data/requests.jsonl`: `service`, `subset`, `cluster` (null when no
/// service claims the request), `reason` (`tag`, `match`, `rule`, `weight`,
/// `default` or `none`), `entry` for a match (and `rule` with it for a rule), `bucket` and `sticky` when a
/// weight split was drawn, `edits` as the plugin applies them
/// (`["remove", name]`, `["set", name, value]`), and `upstream_tag`: the tag
/// header the upstream receives after the edits.
pub fn outcome_json(rules: &Rules, spec: &RequestSpec, decision: &Decision<'_>) -> Value {
    let service = decision.service(rules);
    let subset = service
        .zip(decision.subset)
        .and_then(|(s, i)| s.subsets.get(i));
    let mut outcome = serde_json::Map::new();
    outcome.insert("service".into(), json!(service.map(|s| s.name.as_str())));
    outcome.insert("subset".into(), json!(subset.map(|s| s.name.as_str())));
    outcome.insert("cluster".into(), json!(decision.cluster));
    let mut reason = &decision.reason;
    if let Reason::Unclaimed { status, after } = reason {
        outcome.insert("reply".into(), json!(status));
        reason = after;
    }
    let reason = match reason {
        Reason::NoService => "none",
        Reason::Tag => "tag",
        Reason::Match { entry } => {
            outcome.insert("entry".into(), json!(entry));
            "match"
        }
        Reason::Weight { bucket, sticky }
        | Reason::Default {
            bucket: Some(bucket),
            sticky,
        } => {
            outcome.insert("bucket".into(), json!(bucket));
            outcome.insert("sticky".into(), json!(sticky));
            if matches!(reason, Reason::Weight { .. }) {
                "weight"
            } else {
                "default"
            }
        }
        Reason::Default { bucket: None, .. } => "default",
        Reason::Rule {
            rule,
            entry,
            bucket,
            sticky,
        } => {
            outcome.insert("rule".into(), json!(rule));
            outcome.insert("entry".into(), json!(entry));
            if let Some(bucket) = bucket {
                outcome.insert("bucket".into(), json!(bucket));
                outcome.insert("sticky".into(), json!(sticky));
            }
            "rule"
        }
        Reason::Unclaimed { .. } => "unclaimed",
        Reason::Affinity => "affinity",
    };
    outcome.insert("reason".into(), json!(reason));
    let edits: Vec<Value> = decision
        .edits
        .iter()
        .map(|edit| match edit.value() {
            None => json!(["remove", edit.name()]),
            Some(value) => json!(["set", edit.name(), value]),
        })
        .collect();
    outcome.insert("edits".into(), Value::Array(edits));
    outcome.insert(
        "upstream_tag".into(),
        json!(upstream_header(spec, decision, &rules.tag_header)),
    );
    Value::Object(outcome)
}

/// The first value of a header after the decision's edits are applied.
pub fn upstream_header(
    spec: &RequestSpec,
    decision: &Decision<'_>,
    lower_name: &str,
) -> Option<String> {
    let mut value = spec
        .header_pairs()
        .into_iter()
        .find(|(name, _)| name.as_slice() == lower_name.as_bytes())
        .map(|(_, value)| String::from_utf8_lossy(&value).into_owned());
    for edit in &decision.edits {
        if edit.name() == lower_name {
            value = edit.value().map(str::to_string);
        }
    }
    value
}

pub fn borrow_pairs(owned: &[(Vec<u8>, Vec<u8>)]) -> Vec<HeaderPair<'_>> {
    owned
        .iter()
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .collect()
}

/// Decides a described request with the plugin's own [`decide`].
pub fn decide_spec<'r>(
    rules: &'r Rules,
    spec: &RequestSpec,
    sequence: &mut WeylSequence,
) -> Decision<'r> {
    let owned = spec.header_pairs();
    let pairs = borrow_pairs(&owned);
    let request = Request::new(&pairs)
        .with_source_ip(spec.source_ip_bytes())
        .with_now(clock(rules));
    let request = with_body(rules, request, spec);
    decide(rules, &request, sequence)
}

/// The request with its body, when the plugin would wait for it (a form
/// content type, rules with `form`, within `limits.max_body_bytes`).
pub fn with_body<'a>(rules: &Rules, request: Request<'a>, spec: &'a RequestSpec) -> Request<'a> {
    let body = spec.body.as_deref().filter(|body| {
        graylane_core::decision::body_wanted(rules, &request).is_some_and(|cap| body.len() <= cap)
    });
    request.with_form_body(body.map(str::as_bytes))
}

/// This machine's clock, as the gateway reads its own, for rules that sign
/// lane cookies (their expiry).
pub fn clock(rules: &Rules) -> Option<u64> {
    rules
        .needs_clock
        .then(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
        })
        .flatten()
        .map(|elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_from_a_description() {
        let mut spec = RequestSpec {
            host: Some("B.example.com".into()),
            path: Some("/api/b?x=1".into()),
            method: Some("post".into()),
            ..RequestSpec::default()
        };
        spec.add_header_line("UserID: 123").unwrap();
        spec.add_header_line("userid: 456").unwrap();
        spec.add_cookie("beta=1").unwrap();
        spec.add_cookie("a = b").unwrap();
        assert!(spec.add_header_line("no colon").is_err());
        assert!(spec.add_cookie("=1").is_err());
        let pairs = spec.header_pairs();
        let text: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            (":authority", "B.example.com"),
            (":path", "/api/b?x=1"),
            (":method", "POST"),
            (":scheme", "http"),
            ("userid", "123"),
            ("userid", "456"),
            ("cookie", "a=b; beta=1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(text, want);
    }

    #[test]
    fn json_lines_skip_expectations_and_refuse_typos() {
        let spec = RequestSpec::from_json_line(
            r#"{"host":"a","headers":{"x":["1","2"]},"cookies":{"c":"d"},"expect":{"subset":"s"},"_note":"n"}"#,
        )
        .unwrap();
        assert_eq!(spec.host.as_deref(), Some("a"));
        assert_eq!(
            spec.headers.get("x"),
            Some(&OneOrMany::Many(vec!["1".into(), "2".into()]))
        );
        let typo = RequestSpec::from_json_line(r#"{"cookie":{"c":"d"}}"#).unwrap_err();
        assert!(typo.contains("unknown field `cookie`"), "{typo}");
    }
}
