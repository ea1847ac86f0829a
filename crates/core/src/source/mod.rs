//! Live rules: fetching `services` from a control plane while the gateway
//! runs. Nothing here depends on proxy-wasm: the fetcher talks to the gateway
//! through the small traits below ([`Clock`], [`HttpCallout`],
//! [`GrpcChannel`], [`SharedStore`], [`SharedQueue`], [`Metrics`], [`Logger`]), which `plugin` implements with
//! host calls and the tests implement with a fake clock and a fake host.
//!
//! - [`settings`]: the `source` section and the `apisix_mode` switch.
//! - [`fetcher`]: the per-worker state machine, the gateway-wide lease and
//!   the document hand-over between workers.
//! - [`codec`]: base64 and a body hash.
//! - [`etcd_proto`]: the etcd gRPC messages of the watch.

pub mod codec;
pub mod etcd_proto;
#[cfg(test)]
mod fake_host_tests;
pub mod fetcher;
pub mod settings;

use std::collections::BTreeMap;

use crate::config;
use crate::rules::Rules;

pub use fetcher::{FetchState, Fetcher, Installed};
pub use settings::{configure, configure_node, Delivery, Extensions, Format, Mode, SourceConfig};

/// Milliseconds since the Unix epoch (any monotonic-enough origin will do).
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// One HTTP request to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    /// Envoy cluster (APISIX: `host:port`).
    pub upstream: String,
    /// Pseudo headers (`:method`, `:path`, `:authority`) first.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

/// The control plane's answer. `status` is `None` when there was none: the
/// connection failed, or the host's timeout struck.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CalloutResponse {
    pub status: Option<u16>,
    /// Names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
}

pub trait HttpCallout {
    /// Sends the request; the answer comes later, tagged with the token.
    fn dispatch(&mut self, request: &CalloutRequest) -> Result<u32, String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The value changed since it was read.
    CasMismatch,
    /// The host refused the call.
    Unavailable(String),
}

/// Gateway-wide key/value memory with compare-and-swap (proxy-wasm shared
/// data): what the workers of one gateway coordinate through.
pub trait SharedStore {
    /// The value and its CAS token.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// `cas == 0` writes unconditionally; otherwise only if the value still
    /// has that CAS token.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// Where a gRPC call or stream goes and what it carries besides messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTarget {
    /// What the host names the upstream by (for Envoy, an encoded
    /// `GrpcService`: [`etcd_proto::grpc_service`]).
    pub upstream: Vec<u8>,
    pub service: &'static str,
    pub method: &'static str,
    /// Initial metadata (an etcd `token`, say), names lower-case.
    pub metadata: Vec<(String, String)>,
}

/// gRPC to the control plane (proxy-wasm's gRPC calls): a unary call, and a
/// bidirectional stream. Messages are bare protobuf; the host frames them.
/// Answers come later, tagged with the token: a message, or the close.
pub trait GrpcChannel {
    fn call(&mut self, target: &GrpcTarget, message: &[u8], timeout_ms: u64)
        -> Result<u32, String>;
    fn open_stream(&mut self, target: &GrpcTarget) -> Result<u32, String>;
    fn send(&mut self, stream: u32, message: &[u8]) -> Result<(), String>;
    /// Ends a call or stream at once; no close comes for it afterwards.
    fn cancel(&mut self, token: u32);
}

/// Gateway-wide message queues (proxy-wasm shared queues): how the worker
/// that stores a document wakes the others. Each queue is served by the VM
/// that registered it.
pub trait SharedQueue {
    /// Registers this VM's queue named `name`; the id others enqueue to.
    fn register_queue(&mut self, name: &str) -> Result<u32, String>;
    /// Fails when the queue does not exist (any more).
    fn enqueue(&mut self, queue: u32, message: &[u8]) -> Result<(), String>;
    /// The oldest message; `None` when the queue is empty.
    fn dequeue(&mut self, queue: u32) -> Result<Option<Vec<u8>>, String>;
}

pub trait Metrics {
    fn add(&mut self, counter: &str, delta: u64);
    fn gauge(&mut self, gauge: &str, value: u64);
}

pub trait Logger {
    fn log(&mut self, level: log::Level, message: &str);
}

/// Everything the fetcher needs from the gateway.
pub trait Host:
    Clock + HttpCallout + GrpcChannel + SharedStore + SharedQueue + Metrics + Logger
{
}
impl<T: Clock + HttpCallout + GrpcChannel + SharedStore + SharedQueue + Metrics + Logger> Host
    for T
{
}

/// An in-process [`SharedStore`] with the same CAS rules as Envoy's shared
/// data. Used where the host has no shared data (APISIX: one fetcher per
/// worker) and by the tests.
#[derive(Debug, Default)]
pub struct LocalStore {
    entries: BTreeMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

#[cfg(test)]
impl LocalStore {
    /// The value of the one key ending in `suffix`.
    fn entries_with_suffix(&self, suffix: &str) -> Option<Vec<u8>> {
        self.entries
            .iter()
            .find(|(key, _)| key.ends_with(suffix))
            .map(|(_, (value, _))| value.clone())
    }
}

impl SharedStore for LocalStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some((_, current)) = self.entries.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.entries
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

pub use crate::config::Base;

/// Compiles a fetched document: `{"services": [...]}`, with an optional
/// integer `version` shown as the version gauge. Header names and
/// `trust_tag` come from `base`; the document may not set them. The error
/// names fields as paths, as for the inline configuration.
pub fn compile_fetched(base: &Base, body: &[u8]) -> Result<(Rules, Option<u64>), String> {
    config::check_document_size(&base.limits, body).map_err(|errors| errors.to_string())?;
    let document = config::parse_document(body).map_err(|errors| errors.to_string())?;
    config::compile_fetched(base, &document).map_err(|errors| errors.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Base {
        Base {
            cluster_header: "x-c".into(),
            tag_header: "x-t".into(),
            mirror_header: "x-graylane-mirror".into(),
            pin_header: "x-graylane-pin-cookie".into(),
            tag_baggage_key: None,
            trust_tag: false,
            lane_keys: Default::default(),
            limits: Default::default(),
            allowed_clusters: None,
        }
    }

    #[test]
    fn fetched_document_keeps_the_inline_headers() {
        let (rules, version) = compile_fetched(
            &base(),
            br#"{"version":7,"services":[{"name":"b","default":"s","subsets":[{"name":"s","cluster":"c"}]}]}"#,
        )
        .unwrap();
        assert_eq!(version, Some(7));
        assert_eq!(rules.cluster_header, "x-c");
        assert_eq!(rules.tag_header, "x-t");
        assert!(!rules.trust_tag);
        assert_eq!(rules.services.len(), 1);
    }

    #[test]
    fn fetched_document_refusals_name_the_field() {
        let error = compile_fetched(&base(), b"not json").unwrap_err();
        assert!(error.starts_with("$: not valid JSON"), "{error}");
        let error = compile_fetched(&base(), b"[]").unwrap_err();
        assert!(error.starts_with("$: must be an object"), "{error}");
        let error = compile_fetched(&base(), br#"{"services":[],"services":[]}"#).unwrap_err();
        assert!(error.starts_with("services: repeats a key"), "{error}");
        let error = compile_fetched(&base(), br#"{"servics":[]}"#).unwrap_err();
        assert!(error.contains("servics: unknown field"), "{error}");
        assert!(error.contains("services: is required"), "{error}");
        let error = compile_fetched(
            &base(),
            br#"{"services":[{"name":"b","default":"s","subsets":[{"name":"s","cluster":"c","weight":101}]}]}"#,
        )
        .unwrap_err();
        assert!(
            error.starts_with("services[0].subsets[0].weight: must be between 0 and 100"),
            "{error}"
        );
        let error =
            compile_fetched(&base(), br#"{"cluster_header":"x","services":[]}"#).unwrap_err();
        assert!(
            error.starts_with("cluster_header: comes from the plugin"),
            "{error}"
        );
        // A rules source cannot raise its own limits or widen the clusters.
        let error = compile_fetched(&base(), br#"{"limits":{"services":100000},"services":[]}"#)
            .unwrap_err();
        assert!(
            error.starts_with("limits: comes from the plugin"),
            "{error}"
        );
        let error =
            compile_fetched(&base(), br#"{"allowed_clusters":["x"],"services":[]}"#).unwrap_err();
        assert!(
            error.starts_with("allowed_clusters: comes from the plugin"),
            "{error}"
        );
    }

    #[test]
    fn fetched_document_is_held_to_the_inline_limits_and_clusters() {
        let mut held = base();
        held.limits.document_bytes = 100;
        held.limits.regexes = 1;
        held.allowed_clusters = Some(vec!["c".into()]);
        let service = |cluster: &str, matches: &str| {
            format!(
                r#"{{"services":[{{"name":"b","default":"s","subsets":[{{"name":"s","cluster":"{cluster}"{matches}}}]}}]}}"#
            )
        };
        assert!(compile_fetched(&held, service("c", "").as_bytes()).is_ok());
        let error = compile_fetched(&held, service("evil", "").as_bytes()).unwrap_err();
        assert!(
            error.starts_with(
                r#"services[0].subsets[0].cluster: "evil" is not in allowed_clusters (c)"#
            ),
            "{error}"
        );
        let big = format!(r#"{{"services":[],"_pad":"{}"}}"#, "x".repeat(100));
        let error = compile_fetched(&held, big.as_bytes()).unwrap_err();
        assert!(
            error.starts_with(
                "$: document bytes: 125, over the limit of 100 (limits.document_bytes)"
            ),
            "{error}"
        );
        held.limits.document_bytes = 1000;
        let two = service(
            "c",
            r#","match":[{"cookie_regex":"a"},{"cookie_regex":"b"}]"#,
        );
        let error = compile_fetched(&held, two.as_bytes()).unwrap_err();
        assert!(error.contains("(limits.regexes)"), "{error}");
    }

    #[test]
    fn local_store_compare_and_swap() {
        let mut store = LocalStore::default();
        assert_eq!(store.get("k"), Ok(None));
        store.set("k", b"1", 0).unwrap();
        let (_, cas) = store.get("k").unwrap().unwrap();
        store.set("k", b"2", cas).unwrap();
        assert_eq!(store.set("k", b"3", cas), Err(StoreError::CasMismatch));
        assert_eq!(store.get("k").unwrap().unwrap().0, b"2");
    }
}
