//! The optional `source` section and the `apisix_mode` switch of the plugin
//! configuration. [`crate::config`] lets both fields through; they are read
//! here, with the same reader and refusals (`source.interval_ms: must be …`).

use crate::config::{self, check_header_name};
use crate::json::Node;
use crate::read::{wrong_type, ConfigError, ConfigErrors, Object, Path};
use crate::registry::{read_service_settings, RegistryService};
use crate::rules::Rules;

pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_JITTER_PERCENT: u32 = 10;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
pub const ETCD_RANGE_PATH: &str = "/v3/kv/range";
/// How long a long-poll may be held by the control plane (push mode).
pub const DEFAULT_WAIT_MS: u64 = 30_000;
pub const MIN_WAIT_MS: u64 = 1_000;
/// Consul caps its blocking queries at 10 minutes; 5 keeps a hung
/// connection from going unnoticed for long.
pub const MAX_WAIT_MS: u64 = 300_000;

pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
pub const MIN_TIMEOUT_MS: u64 = 10;
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const MAX_JITTER_PERCENT: u32 = 50;
pub const MAX_BACKOFF_LIMIT_MS: u64 = 86_400_000;

/// How the control plane answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A plain endpoint serving `{"services": [...]}` (ETag honoured).
    Graylane,
    /// etcd v3 JSON gateway: `POST /v3/kv/range` on one key whose value is
    /// the document.
    Etcd { key: String },
    /// Consul's health or catalog answer for one service; instance meta
    /// becomes the rules ([`crate::registry`]).
    Consul { service: RegistryService },
    /// Nacos's instance list for one service; `gray-tag: "true"` metadata
    /// marks the gray instances.
    Nacos { service: RegistryService },
}

/// `source.mode`: whether the control plane tells the gateway of a change,
/// or the gateway asks every interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default on Envoy: a held request (long-poll) or a watch, per
    /// format ([`SourceConfig::delivery`]).
    Push,
    /// A request every `interval_ms`; the only mode in `apisix_mode`.
    Poll,
}

/// How a fetcher hears of a change: what [`Mode`] means for its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A request every `interval_ms`.
    Poll,
    /// A request the control plane holds until something changes or
    /// `wait_ms` passes (Consul blocking queries; the graylane format with
    /// `If-None-Match` and `Prefer: wait=N`), sent again as soon as it is
    /// answered.
    LongPoll,
    /// An etcd watch over a gRPC stream.
    Watch,
}

/// What push means for format `etcd`: the gRPC watch.
pub const ETCD_PUSH_DELIVERY: Delivery = Delivery::Watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub format: Format,
    pub mode: Mode,
    /// Longest hold of a long-poll (push mode).
    pub wait_ms: u64,
    /// Envoy cluster the callout goes through (on APISIX: `host:port`).
    pub cluster: String,
    pub path: String,
    pub authority: String,
    /// Extra request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub jitter_percent: u32,
    pub max_backoff_ms: u64,
}

impl SourceConfig {
    /// Whether the source is read over gRPC (the etcd watch of push mode):
    /// its Envoy cluster must then speak HTTP/2.
    pub fn uses_grpc(&self) -> bool {
        self.delivery() == Delivery::Watch
    }

    pub fn delivery(&self) -> Delivery {
        match (self.mode, &self.format) {
            (Mode::Poll, _) => Delivery::Poll,
            (Mode::Push, Format::Graylane | Format::Consul { .. }) => Delivery::LongPoll,
            (Mode::Push, Format::Etcd { .. }) => ETCD_PUSH_DELIVERY,
            // Nacos's instance list has no blocking query (README).
            (Mode::Push, Format::Nacos { .. }) => Delivery::Poll,
        }
    }
}

/// What the plugin reads beside the rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extensions {
    pub source: Option<SourceConfig>,
    pub apisix_mode: bool,
}

/// The whole plugin configuration: the rules and what rides beside them
/// (`source`, `apisix_mode`), with every refusal of either reported
/// together. The plugin's `on_configure` and `graylane check` both take a
/// document through here, so the command accepts exactly what the gateway
/// accepts.
pub fn configure(document: &[u8]) -> Result<(Rules, Extensions), ConfigErrors> {
    configure_node(&config::parse_document(document)?)
}

/// As [`configure`], for a document already parsed (the command reads YAML).
pub fn configure_node(document: &Node) -> Result<(Rules, Extensions), ConfigErrors> {
    let rules = config::compile_node(document);
    // A document that is not an object has no extensions to read: the rules
    // compiler refuses it already.
    let mut errors = ConfigErrors::default();
    let extensions = if document.as_object().is_some() {
        read_extensions(document, &mut errors)
    } else {
        Extensions::default()
    };
    match rules {
        Ok(rules) if errors.is_empty() => Ok((rules, extensions)),
        Ok(_) => Err(errors),
        Err(mut refused) => {
            refused.0.extend(errors.0);
            Err(refused)
        }
    }
}

fn read_extensions(document: &Node, errors: &mut ConfigErrors) -> Extensions {
    let mut extensions = Extensions::default();
    if let Some(flag) = document.get("apisix_mode") {
        match flag.as_bool() {
            Some(flag) => extensions.apisix_mode = flag,
            None => errors.push(&Path::of(&["apisix_mode"]), flag, wrong_type("true or false", flag)),
        }
    }
    match document.get("source") {
        None => {}
        Some(node) if node.is_null() => {}
        Some(node) => {
            extensions.source =
                read_source(node, &Path::of(&["source"]), extensions.apisix_mode, errors);
        }
    }
    extensions
}

fn read_source(
    node: &Node,
    path: &Path,
    apisix_mode: bool,
    errors: &mut ConfigErrors,
) -> Option<SourceConfig> {
    let before = errors.0.len();
    let mut object = Object::new(node, path, errors)?;
    let format_name = object
        .string("format", errors)
        .map_or_else(|| "graylane".to_string(), |(name, _)| name);
    let key = object.string("key", errors);
    let format = match format_name.as_str() {
        "graylane" => {
            if let Some((_, key_path)) = &key {
                refuse_at(errors, &object, "key", key_path,
                    "is only for format \"etcd\" (the graylane format serves the document at path)");
            }
            Some(Format::Graylane)
        }
        "etcd" => match key {
            Some((key, _)) if !key.is_empty() => Some(Format::Etcd { key }),
            Some((_, key_path)) => {
                refuse_at(errors, &object, "key", &key_path, "must not be empty");
                None
            }
            None => {
                object.missing("key", errors, Some(" for format \"etcd\"".into()));
                None
            }
        },
        "consul" | "nacos" => match object.get("service") {
            Some((service_node, service_path)) => {
                match read_service_settings(service_node, &service_path, errors) {
                    Some(service) if format_name == "consul" => Some(Format::Consul { service }),
                    Some(service) => Some(Format::Nacos { service }),
                    None => None,
                }
            }
            None => {
                object.missing(
                    "service",
                    errors,
                    Some(format!(" for format {format_name:?}: {{\"name\": …}}")),
                );
                None
            }
        },
        other => {
            let format_path = object.child("format");
            refuse_at(
                errors,
                &object,
                "format",
                &format_path,
                &format!("must be \"graylane\", \"etcd\", \"consul\" or \"nacos\", got {other:?}"),
            );
            None
        }
    };
    if object.has("service") && matches!(format_name.as_str(), "graylane" | "etcd") {
        let service_path = object.child("service");
        refuse_at(errors, &object, "service", &service_path,
            "is only for the formats \"consul\" and \"nacos\"");
    }
    object.handled("service");
    let cluster = match object.string("cluster", errors) {
        Some((cluster, _)) if !cluster.is_empty() => Some(cluster),
        Some((_, cluster_path)) => {
            refuse_at(errors, &object, "cluster", &cluster_path, "must not be empty");
            None
        }
        None if !object.has("cluster") => {
            object.missing("cluster", errors, None);
            None
        }
        None => None,
    };
    let path_setting = match object.string("path", errors) {
        Some((request_path, _)) if request_path.starts_with('/') && !request_path.contains([' ', '\r', '\n']) => {
            Some(request_path)
        }
        Some((request_path, field_path)) => {
            refuse_at(errors, &object, "path", &field_path,
                &format!("must start with '/' and hold no spaces, got {request_path:?}"));
            None
        }
        None if object.has("path") => None,
        // Keyed on the name, not the parsed format, so that a missing path
        // is reported beside a refusal elsewhere in the format's settings.
        None => match format_name.as_str() {
            "etcd" => Some(ETCD_RANGE_PATH.to_string()),
            "graylane" | "consul" | "nacos" => {
                object.missing("path", errors, Some(format!(" for format {format_name:?}")));
                None
            }
            _ => None,
        },
    };
    let authority = match object.string("authority", errors) {
        Some((authority, _)) if !authority.is_empty() && !authority.contains([' ', '/']) => {
            Some(authority)
        }
        Some((authority, field_path)) => {
            refuse_at(errors, &object, "authority", &field_path,
                &format!("must be a host name (with an optional port), got {authority:?}"));
            None
        }
        None => cluster.clone(),
    };
    let headers = read_headers(&mut object, errors);
    let interval_ms = object.integer(
        "interval_ms",
        (MIN_INTERVAL_MS, MAX_INTERVAL_MS),
        DEFAULT_INTERVAL_MS,
        errors,
    );
    let timeout_ms = object.integer(
        "timeout_ms",
        (MIN_TIMEOUT_MS, MAX_TIMEOUT_MS),
        DEFAULT_TIMEOUT_MS.min(interval_ms),
        errors,
    );
    let jitter_percent = object.integer(
        "jitter_percent",
        (0, u64::from(MAX_JITTER_PERCENT)),
        u64::from(DEFAULT_JITTER_PERCENT),
        errors,
    );
    let max_backoff_ms = object.integer(
        "max_backoff_ms",
        (MIN_INTERVAL_MS, MAX_BACKOFF_LIMIT_MS),
        DEFAULT_MAX_BACKOFF_MS.max(interval_ms),
        errors,
    );
    if max_backoff_ms < interval_ms {
        let field_path = object.child("max_backoff_ms");
        refuse_at(errors, &object, "max_backoff_ms", &field_path,
            &format!("must be at least interval_ms ({interval_ms}), got {max_backoff_ms}"));
    }
    let mode = read_mode(&mut object, apisix_mode, errors);
    let wait_ms = object.integer("wait_ms", (MIN_WAIT_MS, MAX_WAIT_MS), DEFAULT_WAIT_MS, errors);
    if object.has("wait_ms") && mode == Mode::Poll {
        let field_path = object.child("wait_ms");
        refuse_at(errors, &object, "wait_ms", &field_path,
            "is only for mode \"push\" (a poll is not held)");
    }
    object.finish(&[], errors);
    if errors.0.len() > before {
        return None;
    }
    Some(SourceConfig {
        format: format?,
        mode,
        wait_ms,
        cluster: cluster?,
        path: path_setting?,
        authority: authority?,
        headers,
        interval_ms,
        timeout_ms,
        jitter_percent: u32::try_from(jitter_percent).unwrap_or(DEFAULT_JITTER_PERCENT),
        max_backoff_ms,
    })
}

/// `mode`: push by default, except in `apisix_mode`, whose host can hold
/// nothing open and share nothing between workers.
fn read_mode(object: &mut Object<'_>, apisix_mode: bool, errors: &mut ConfigErrors) -> Mode {
    let default = if apisix_mode { Mode::Poll } else { Mode::Push };
    let Some((name, mode_path)) = object.string("mode", errors) else {
        return default;
    };
    match name.as_str() {
        "poll" => Mode::Poll,
        "push" if apisix_mode => {
            refuse_at(errors, object, "mode", &mode_path,
                "\"push\" is not possible with apisix_mode: APISIX's wasm host has no ticks, shared data or shared queues (use \"poll\")");
            default
        }
        "push" => Mode::Push,
        other => {
            refuse_at(errors, object, "mode", &mode_path,
                &format!("must be \"push\" or \"poll\", got {other:?}"));
            default
        }
    }
}

/// Refuses field `name` of `object`, pointing at its value.
fn refuse_at(errors: &mut ConfigErrors, object: &Object<'_>, name: &str, path: &Path, reason: &str) {
    let offset = object
        .members()
        .iter()
        .find(|member| member.key == name)
        .map_or(object.node().offset, |member| member.value.offset);
    errors.0.push(ConfigError::new(path.clone(), reason).at(offset));
}

fn read_headers(object: &mut Object<'_>, errors: &mut ConfigErrors) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    let Some((node, path)) = object.get("headers") else {
        return headers;
    };
    let Some(map) = Object::new(node, &path, errors) else {
        // Object::new said "must be an object"; say what for.
        if let Some(error) = errors.0.last_mut() {
            error.refusal = format!(
                "must be an object of header name to value, got {}",
                node.kind()
            )
            .into();
        }
        return headers;
    };
    for member in map.members() {
        let name = &member.key;
        let header_path = path.key(name);
        let lower = name.to_ascii_lowercase();
        if let Err(reason) = check_header_name(name) {
            errors.0.push(ConfigError::new(header_path, reason).at(member.key_offset));
            continue;
        }
        if matches!(
            lower.as_str(),
            "host" | "content-length" | "if-none-match" | "prefer" | "transfer-encoding"
        ) {
            errors.0.push(ConfigError::new(header_path, "is set by graylane itself").at(member.key_offset));
            continue;
        }
        match member.value.as_str() {
            Some(text) if !text.contains(['\r', '\n', '\0']) => {
                headers.push((lower, text.to_string()));
            }
            Some(_) => errors.push(&header_path, &member.value, "must not contain line breaks"),
            None => errors.push(&header_path, &member.value, wrong_type("a string", &member.value)),
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Extensions, String> {
        configure(text.as_bytes())
            .map(|(_, extensions)| extensions)
            .map_err(|errors| errors.to_string())
    }

    #[test]
    fn no_source_no_switch() {
        assert_eq!(read(r#"{"services":[]}"#), Ok(Extensions::default()));
    }

    #[test]
    fn etcd_defaults() {
        let extensions =
            read(r#"{"source":{"format":"etcd","cluster":"etcd","key":"/gl/rules"}}"#).unwrap();
        let source = extensions.source.unwrap();
        assert_eq!(
            source.format,
            Format::Etcd {
                key: "/gl/rules".into()
            }
        );
        assert_eq!(source.path, ETCD_RANGE_PATH);
        assert_eq!(source.authority, "etcd");
        assert_eq!(source.interval_ms, DEFAULT_INTERVAL_MS);
        assert_eq!(source.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(source.max_backoff_ms, DEFAULT_MAX_BACKOFF_MS);
        assert_eq!((source.mode, source.wait_ms), (Mode::Push, DEFAULT_WAIT_MS));
        assert_eq!(source.delivery(), ETCD_PUSH_DELIVERY);
        assert!(!extensions.apisix_mode);
    }

    #[test]
    fn push_by_default_poll_in_apisix_mode() {
        let source = |text: &str| read(text).unwrap().source.unwrap();
        let plain = source(r#"{"source":{"cluster":"cp","path":"/r"}}"#);
        assert_eq!((plain.mode, plain.delivery()), (Mode::Push, Delivery::LongPoll));
        let consul = source(
            r#"{"source":{"format":"consul","cluster":"c","path":"/v1/health/service/b","service":{"name":"b"},"wait_ms":5000}}"#,
        );
        assert_eq!((consul.delivery(), consul.wait_ms), (Delivery::LongPoll, 5_000));
        let nacos = source(
            r#"{"source":{"format":"nacos","cluster":"c","path":"/nacos/v1/ns/instance/list","service":{"name":"b"}}}"#,
        );
        assert_eq!((nacos.mode, nacos.delivery()), (Mode::Push, Delivery::Poll));
        let polled = source(r#"{"source":{"cluster":"cp","path":"/r","mode":"poll"}}"#);
        assert_eq!(polled.delivery(), Delivery::Poll);
        let apisix = source(r#"{"apisix_mode":true,"source":{"cluster":"cp:80","path":"/r"}}"#);
        assert_eq!(apisix.mode, Mode::Poll);
    }

    #[test]
    fn mode_and_wait_refusals_name_the_field() {
        let error = read(r#"{"apisix_mode":true,"source":{"cluster":"c","path":"/","mode":"push"}}"#)
            .unwrap_err();
        assert!(
            error.starts_with("source.mode: \"push\" is not possible with apisix_mode"),
            "{error}"
        );
        let error = read(r#"{"source":{"cluster":"c","path":"/","mode":"stream"}}"#).unwrap_err();
        assert_eq!(error, "source.mode: must be \"push\" or \"poll\", got \"stream\"");
        let error = read(r#"{"source":{"cluster":"c","path":"/","wait_ms":10}}"#).unwrap_err();
        assert_eq!(error, "source.wait_ms: must be an integer from 1000 to 300000, got 10");
        let error =
            read(r#"{"source":{"cluster":"c","path":"/","mode":"poll","wait_ms":5000}}"#).unwrap_err();
        assert!(error.starts_with("source.wait_ms: is only for mode \"push\""), "{error}");
        let error = read(r#"{"source":{"cluster":"c","path":"/","headers":{"Prefer":"wait=1"}}}"#)
            .unwrap_err();
        assert!(error.starts_with("source.headers.Prefer: is set by graylane"), "{error}");
    }

    #[test]
    fn graylane_full() {
        let extensions = read(
            r#"{"apisix_mode":true,"source":{"cluster":"cp","path":"/rules","authority":"cp.local",
               "headers":{"Authorization":"Bearer x"},"interval_ms":250,"timeout_ms":100,
               "jitter_percent":0,"max_backoff_ms":1000}}"#,
        )
        .unwrap();
        assert!(extensions.apisix_mode);
        let source = extensions.source.unwrap();
        assert_eq!(source.format, Format::Graylane);
        assert_eq!(
            source.headers,
            vec![("authorization".into(), "Bearer x".into())]
        );
        assert_eq!(
            (source.interval_ms, source.timeout_ms, source.jitter_percent),
            (250, 100, 0)
        );
    }

    #[test]
    fn only_an_etcd_source_in_push_mode_is_read_over_grpc() {
        let source = |text: &str| read(text).unwrap().source.unwrap();
        let etcd = r#""format":"etcd","cluster":"e","key":"/k""#;
        assert!(source(&format!(r#"{{"source":{{{etcd}}}}}"#)).uses_grpc());
        assert!(!source(&format!(r#"{{"source":{{{etcd},"mode":"poll"}}}}"#)).uses_grpc());
        assert!(!source(&format!(r#"{{"apisix_mode":true,"source":{{{etcd}}}}}"#)).uses_grpc());
        assert!(!source(r#"{"source":{"cluster":"c","path":"/r"}}"#).uses_grpc());
    }

    #[test]
    fn errors_name_the_field() {
        let error = read(r#"{"source":{"cluster":"cp","path":"/r","interval_ms":5}}"#).unwrap_err();
        assert_eq!(
            error,
            "source.interval_ms: must be an integer from 100 to 3600000, got 5"
        );
        let error = read(r#"{"source":{"format":"etcd","cluster":"e"}}"#).unwrap_err();
        assert_eq!(error, "source.key: is required for format \"etcd\"");
        let error = read(r#"{"source":{"format":"zk","cluster":"e","path":"/"}}"#).unwrap_err();
        assert!(error.starts_with("source.format: must be"), "{error}");
        let error = read(r#"{"source":{"path":"/r"}}"#).unwrap_err();
        assert_eq!(error, "source.cluster: is required");
        let error = read(r#"{"source":{"cluster":"c"}}"#).unwrap_err();
        assert_eq!(error, "source.path: is required for format \"graylane\"");
        let error = read(r#"{"source":{"cluster":"c","path":"/","intervall_ms":1}}"#).unwrap_err();
        assert!(
            error.starts_with("source.intervall_ms: unknown field"),
            "{error}"
        );
        let error = read(r#"{"apisix_mode":"yes","services":[]}"#).unwrap_err();
        assert_eq!(error, "apisix_mode: must be true or false, got a string");
        let error = read(r#"{"source":[]}"#).unwrap_err();
        assert_eq!(error, "source: must be an object, got a list");
        let error =
            read(r#"{"source":{"cluster":"c","path":"/","headers":{"a b":"x"}}}"#).unwrap_err();
        assert!(error.starts_with("source.headers.a b:"), "{error}");
        let error = read(
            r#"{"source":{"cluster":"c","path":"/","interval_ms":5000,"max_backoff_ms":1000}}"#,
        )
        .unwrap_err();
        assert!(
            error.starts_with("source.max_backoff_ms: must be at least"),
            "{error}"
        );
    }
}
