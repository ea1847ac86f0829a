//! What goes over the wire: the request for each format, and how each
//! format's answer becomes an [`Outcome`] (a document, "not modified", or a
//! [`Failure`]).

use std::fmt;

use super::Fetcher;
use crate::json::{self, Node};
use crate::registry;
use crate::source::codec::{base64_decode, base64_encode};
use crate::source::settings::{Delivery, Format};
use crate::source::{CalloutRequest, CalloutResponse};
use crate::split::fnv1a64;

/// Why a fetch did not produce rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host would not send the request (unknown cluster, …).
    Dispatch(String),
    /// No answer: connection refused, reset, or the timeout struck.
    NoResponse,
    /// The host never called back within timeout + grace.
    Lost,
    Status(u16),
    /// etcd answered something that is not a range reply.
    Etcd(String),
    /// The etcd key does not exist.
    KeyMissing,
    /// A document arrived and the validator refused it (not JSON included).
    Rejected(String),
    /// A gRPC call or stream to etcd ended with this status (13: the
    /// connection ended, 14: unavailable).
    Grpc { what: &'static str, status: u32 },
    /// etcd canceled the watch for a reason other than compaction.
    Canceled(String),
    /// Nothing came on the watch stream, not even the answer to a progress
    /// request, for this long: etcd or the network hangs.
    Silent(u64),
}

impl Failure {
    pub fn is_rejection(&self) -> bool {
        matches!(self, Failure::Rejected(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Dispatch(why) => write!(f, "cannot send the request: {why}"),
            Failure::NoResponse => f.write_str("no response (connection failed or timed out)"),
            Failure::Lost => f.write_str("no answer from the host within the timeout"),
            Failure::Status(code) => write!(f, "HTTP status {code}"),
            Failure::Etcd(why) => write!(f, "unexpected etcd reply: {why}"),
            Failure::KeyMissing => f.write_str("the etcd key does not exist"),
            Failure::Rejected(why) => write!(f, "document refused: {why}"),
            Failure::Grpc { what, status } => write!(f, "{what} ended with gRPC status {status}"),
            Failure::Canceled(why) => write!(f, "etcd canceled the watch: {why}"),
            Failure::Silent(ms) => write!(f, "nothing from etcd on the watch for {ms} ms"),
        }
    }
}

pub(super) enum Outcome {
    NotModified,
    Document {
        body: Vec<u8>,
        version: String,
        gauge: Option<u64>,
    },
    Failed(Failure),
}

impl Fetcher {
    /// The answer, read as the source's format says.
    pub(super) fn read_answer(&self, response: &CalloutResponse) -> Outcome {
        // Refused before any parsing: a huge answer must not cost its parse.
        if let Err(refusal) = self.base.limits.check_size(response.body.len()) {
            return Outcome::Failed(Failure::Rejected(format!("the answer: {refusal}")));
        }
        match &self.config.format {
            Format::Graylane => self.read_plain(response),
            Format::Etcd { .. } => self.read_etcd(response),
            Format::Consul { service } => self.read_registry(response, "Consul", |body| {
                registry::consul_document(body, service)
            }),
            Format::Nacos { service } => self.read_registry(response, "Nacos", |body| {
                registry::nacos_document(body, service)
            }),
        }
    }

    pub(super) fn request(&self) -> CalloutRequest {
        let mut headers = Vec::new();
        let (method, body) = match &self.config.format {
            Format::Graylane | Format::Consul { .. } | Format::Nacos { .. } => ("GET", None),
            Format::Etcd { key } => {
                let mut body = format!("{{\"key\":\"{}\"", base64_encode(key.as_bytes()));
                if let Some(revision) = self.known_revision() {
                    body.push_str(&format!(
                        ",\"min_mod_revision\":\"{}\"",
                        revision.saturating_add(1)
                    ));
                }
                body.push('}');
                ("POST", Some(body.into_bytes()))
            }
        };
        let long_poll = self.config.delivery() == Delivery::LongPoll;
        let path = match (&self.config.format, self.consul_index) {
            // A blocking query: Consul answers when the index moves past
            // ours, or when the wait ends (plus up to wait/16 of its jitter).
            (Format::Consul { .. }, Some(index)) if long_poll => {
                let separator = if self.config.path.contains('?') { '&' } else { '?' };
                format!(
                    "{}{separator}index={index}&wait={}",
                    self.config.path,
                    consul_duration(self.config.wait_ms)
                )
            }
            _ => self.config.path.clone(),
        };
        headers.push((":method".to_string(), method.to_string()));
        headers.push((":path".to_string(), path));
        headers.push((":authority".to_string(), self.config.authority.clone()));
        match &self.config.format {
            Format::Graylane => {
                headers.push(("accept".into(), "application/json".into()));
                if let Some(etag) = self
                    .version
                    .as_deref()
                    .and_then(|v| v.strip_prefix("etag:"))
                {
                    headers.push(("if-none-match".into(), etag.to_string()));
                    if long_poll {
                        // RFC 7240: hold the answer up to this many seconds.
                        let seconds = self.config.wait_ms.div_ceil(1_000);
                        headers.push(("prefer".into(), format!("wait={seconds}")));
                    }
                }
            }
            Format::Etcd { .. } => {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Format::Consul { .. } | Format::Nacos { .. } => {
                headers.push(("accept".into(), "application/json".into()));
            }
        }
        for (name, value) in &self.config.headers {
            headers.push((name.clone(), value.clone()));
        }
        CalloutRequest {
            upstream: self.config.cluster.clone(),
            headers,
            body,
            timeout_ms: self.callout_timeout_ms(),
        }
    }

    /// The host's timeout for one callout: a long-poll's may be held for
    /// the wait, and Consul adds up to a sixteenth of it as jitter.
    pub(super) fn callout_timeout_ms(&self) -> u64 {
        match self.config.delivery() {
            Delivery::LongPoll => {
                self.config.wait_ms + self.config.wait_ms / 16 + self.config.timeout_ms
            }
            Delivery::Poll | Delivery::Watch => self.config.timeout_ms,
        }
    }

    /// Keeps Consul's index for the next blocking query. An index that goes
    /// backwards (a Consul restored from a snapshot, another server) starts
    /// over with a query that answers at once, as Consul's documentation
    /// asks; an index of 0 is never sent.
    pub(super) fn note_consul_index(&mut self, response: &CalloutResponse) {
        if !matches!(self.config.format, Format::Consul { .. }) {
            return;
        }
        if !response.status.is_some_and(|status| (200..300).contains(&status)) {
            return;
        }
        let index = response
            .header("x-consul-index")
            .and_then(|index| std::str::from_utf8(index).ok())
            .and_then(|index| index.trim().parse::<u64>().ok());
        self.consul_index = match (index, self.consul_index) {
            (None, _) => None,
            (Some(index), Some(previous)) if index < previous => None,
            (Some(index), _) => Some(index.max(1)),
        };
    }

    pub(super) fn known_revision(&self) -> Option<u64> {
        self.version
            .as_deref()
            .and_then(|v| v.strip_prefix("rev:"))
            .and_then(|n| n.parse().ok())
    }

    pub(super) fn read_plain(&self, response: &CalloutResponse) -> Outcome {
        let Some(status) = response.status else {
            return Outcome::Failed(Failure::NoResponse);
        };
        if status == 304 {
            return Outcome::NotModified;
        }
        if !(200..300).contains(&status) {
            return Outcome::Failed(Failure::Status(status));
        }
        let version = match response
            .header("etag")
            .and_then(|etag| std::str::from_utf8(etag).ok())
        {
            Some(etag) if !etag.is_empty() => format!("etag:{etag}"),
            _ => format!("hash:{:016x}", fnv1a64(&[&response.body])),
        };
        if self.version.as_deref() == Some(version.as_str()) {
            return Outcome::NotModified;
        }
        Outcome::Document {
            body: response.body.clone(),
            version,
            gauge: None,
        }
    }

    /// A registry answer becomes a rules document here, once per fetch, and
    /// is versioned by that document: health changes that leave the rules as
    /// they were (an instance more or less of a subset) cost no recompile.
    pub(super) fn read_registry(
        &self,
        response: &CalloutResponse,
        registry_name: &str,
        translate: impl Fn(&[u8]) -> Result<Node, String>,
    ) -> Outcome {
        let Some(status) = response.status else {
            return Outcome::Failed(Failure::NoResponse);
        };
        if !(200..300).contains(&status) {
            return Outcome::Failed(Failure::Status(status));
        }
        let document = match translate(&response.body) {
            Ok(document) => document.to_json().into_bytes(),
            Err(why) => {
                return Outcome::Failed(Failure::Rejected(format!("{registry_name}: {why}")))
            }
        };
        let version = format!("registry:{:016x}", fnv1a64(&[&document]));
        if self.version.as_deref() == Some(version.as_str()) {
            return Outcome::NotModified;
        }
        // Consul's index is a fine gauge: it rises with every change there.
        let gauge = response
            .header("x-consul-index")
            .and_then(|index| std::str::from_utf8(index).ok())
            .and_then(|index| index.trim().parse().ok());
        Outcome::Document {
            body: document,
            version,
            gauge,
        }
    }

    pub(super) fn read_etcd(&self, response: &CalloutResponse) -> Outcome {
        let Some(status) = response.status else {
            return Outcome::Failed(Failure::NoResponse);
        };
        if !(200..300).contains(&status) {
            return Outcome::Failed(Failure::Status(status));
        }
        let Ok(reply) = json::parse(&response.body) else {
            return Outcome::Failed(Failure::Etcd("not JSON".into()));
        };
        if reply.as_object().is_none() {
            return Outcome::Failed(Failure::Etcd("not a JSON object".into()));
        }
        let kv = match reply.get("kvs") {
            None => None,
            Some(kvs) => match kvs.as_array() {
                Some(kvs) => kvs.first(),
                None => return Outcome::Failed(Failure::Etcd("kvs is not a list".into())),
            },
        };
        let Some(kv) = kv else {
            // With min_mod_revision, an unchanged key is counted but not sent.
            let count = reply.get("count").and_then(as_integer).unwrap_or(0);
            return if count > 0 && self.known_revision().is_some() {
                Outcome::NotModified
            } else {
                Outcome::Failed(Failure::KeyMissing)
            };
        };
        let Some(revision) = kv.get("mod_revision").and_then(as_integer) else {
            return Outcome::Failed(Failure::Etcd("no mod_revision".into()));
        };
        let version = format!("rev:{revision}");
        if self.version.as_deref() == Some(version.as_str()) {
            return Outcome::NotModified;
        }
        let body = match kv.get("value") {
            None => Vec::new(),
            Some(value) => match value.as_str() {
                Some(encoded) => match base64_decode(encoded) {
                    Some(body) => body,
                    None => return Outcome::Failed(Failure::Etcd("value is not base64".into())),
                },
                None => return Outcome::Failed(Failure::Etcd("value is not a string".into())),
            },
        };
        Outcome::Document {
            body,
            version,
            gauge: Some(revision),
        }
    }
}

/// A Consul duration: whole seconds when it is, else milliseconds.
fn consul_duration(ms: u64) -> String {
    if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn as_integer(value: &Node) -> Option<u64> {
    match value.as_number() {
        Some(number) => number.as_u64(),
        None => value.as_str()?.parse().ok(),
    }
}
