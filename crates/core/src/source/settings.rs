//! The optional `source` section and the `apisix_mode` switch of the plugin
//! configuration. [`crate::config`] lets both fields through; they are read
//! here, with the same JSON-path error style (`source.interval_ms: must be …`).

use serde_json::{Map, Value};

use crate::config::{self, check_header_name, kind, ConfigError, ConfigErrors};
use crate::registry::{read_service_settings, RegistryService};
use crate::rules::Rules;

pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_JITTER_PERCENT: u32 = 10;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
pub const ETCD_RANGE_PATH: &str = "/v3/kv/range";

const MIN_INTERVAL_MS: u64 = 100;
const MAX_INTERVAL_MS: u64 = 3_600_000;
const MIN_TIMEOUT_MS: u64 = 10;
const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_JITTER_PERCENT: u32 = 50;
const MAX_BACKOFF_LIMIT_MS: u64 = 86_400_000;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub format: Format,
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
    configure_value(&config::parse_document(document)?)
}

/// As [`configure`], for a document already parsed (the command reads YAML).
pub fn configure_value(value: &Value) -> Result<(Rules, Extensions), ConfigErrors> {
    let rules = config::compile_value(value);
    // A document that is not an object has no extensions to read: the rules
    // compiler refuses it already.
    let extensions = value
        .as_object()
        .map_or_else(|| Ok(Extensions::default()), read_extensions_value);
    match (rules, extensions) {
        (Ok(rules), Ok(extensions)) => Ok((rules, extensions)),
        (rules, extensions) => Err(ConfigErrors(
            rules
                .err()
                .into_iter()
                .chain(extensions.err())
                .flat_map(|errors| errors.0)
                .collect(),
        )),
    }
}

pub fn read_extensions_value(root: &Map<String, Value>) -> Result<Extensions, ConfigErrors> {
    let mut errors = Vec::new();
    let apisix_mode = match root.get("apisix_mode") {
        None => false,
        Some(Value::Bool(flag)) => *flag,
        Some(other) => {
            push(
                &mut errors,
                "apisix_mode",
                format!("must be true or false, got {}", kind(other)),
            );
            false
        }
    };
    let source = match root.get("source") {
        None | Some(Value::Null) => None,
        Some(Value::Object(object)) => read_source(object, &mut errors),
        Some(other) => {
            push(
                &mut errors,
                "source",
                format!("must be an object, got {}", kind(other)),
            );
            None
        }
    };
    if errors.is_empty() {
        Ok(Extensions {
            source,
            apisix_mode,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

const SOURCE_FIELDS: &[&str] = &[
    "format",
    "cluster",
    "path",
    "authority",
    "headers",
    "key",
    "service",
    "interval_ms",
    "timeout_ms",
    "jitter_percent",
    "max_backoff_ms",
];

fn read_source(object: &Map<String, Value>, errors: &mut Vec<ConfigError>) -> Option<SourceConfig> {
    let before = errors.len();
    for key in object.keys() {
        if !SOURCE_FIELDS.contains(&key.as_str()) && !key.starts_with('_') {
            push(
                errors,
                &format!("source.{key}"),
                format!(
                    "unknown field; expected one of: {}",
                    sorted(SOURCE_FIELDS).join(", ")
                ),
            );
        }
    }
    let format_name = string_field(object, "format", errors).unwrap_or_else(|| "graylane".into());
    let key = string_field(object, "key", errors);
    let format = match format_name.as_str() {
        "graylane" => {
            if key.is_some() {
                push(
                    errors,
                    "source.key",
                    "is only for format \"etcd\" (the graylane format serves the document at path)",
                );
            }
            Some(Format::Graylane)
        }
        "etcd" => match key {
            Some(key) if !key.is_empty() => Some(Format::Etcd { key }),
            Some(_) => {
                push(errors, "source.key", "must not be empty");
                None
            }
            None => {
                push(errors, "source.key", "is required for format \"etcd\"");
                None
            }
        },
        "consul" | "nacos" => match object.get("service").map(read_service_settings) {
            Some(Ok(service)) if format_name == "consul" => Some(Format::Consul { service }),
            Some(Ok(service)) => Some(Format::Nacos { service }),
            Some(Err(refusals)) => {
                errors.extend(refusals);
                None
            }
            None => {
                push(
                    errors,
                    "source.service",
                    format!("is required for format {format_name:?}: {{\"name\": …}}"),
                );
                None
            }
        },
        other => {
            push(
                errors,
                "source.format",
                format!("must be \"graylane\", \"etcd\", \"consul\" or \"nacos\", got {other:?}"),
            );
            None
        }
    };
    if object.contains_key("service")
        && !matches!(
            format,
            Some(Format::Consul { .. } | Format::Nacos { .. }) | None
        )
    {
        push(
            errors,
            "source.service",
            "is only for the formats \"consul\" and \"nacos\"",
        );
    }
    let cluster = match string_field(object, "cluster", errors) {
        Some(cluster) if !cluster.is_empty() => Some(cluster),
        Some(_) => {
            push(errors, "source.cluster", "must not be empty");
            None
        }
        None if !object.contains_key("cluster") => {
            push(errors, "source.cluster", "is required");
            None
        }
        None => None,
    };
    let path = match string_field(object, "path", errors) {
        Some(path) if path.starts_with('/') && !path.contains([' ', '\r', '\n']) => Some(path),
        Some(path) => {
            push(
                errors,
                "source.path",
                format!("must start with '/' and hold no spaces, got {path:?}"),
            );
            None
        }
        None if object.contains_key("path") => None,
        // Keyed on the name, not the parsed format, so that a missing path
        // is reported beside a refusal elsewhere in the format's settings.
        None => match format_name.as_str() {
            "etcd" => Some(ETCD_RANGE_PATH.to_string()),
            "graylane" | "consul" | "nacos" => {
                push(
                    errors,
                    "source.path",
                    format!("is required for format {format_name:?}"),
                );
                None
            }
            _ => None,
        },
    };
    let authority = match string_field(object, "authority", errors) {
        Some(authority) if !authority.is_empty() && !authority.contains([' ', '/']) => {
            Some(authority)
        }
        Some(authority) => {
            push(
                errors,
                "source.authority",
                format!("must be a host name (with an optional port), got {authority:?}"),
            );
            None
        }
        None => cluster.clone(),
    };
    let headers = read_headers(object, errors);
    let interval_ms = integer_field(
        object,
        "interval_ms",
        MIN_INTERVAL_MS,
        MAX_INTERVAL_MS,
        DEFAULT_INTERVAL_MS,
        errors,
    );
    let timeout_ms = integer_field(
        object,
        "timeout_ms",
        MIN_TIMEOUT_MS,
        MAX_TIMEOUT_MS,
        DEFAULT_TIMEOUT_MS.min(interval_ms),
        errors,
    );
    let jitter_percent = integer_field(
        object,
        "jitter_percent",
        0,
        u64::from(MAX_JITTER_PERCENT),
        u64::from(DEFAULT_JITTER_PERCENT),
        errors,
    );
    let max_backoff_ms = integer_field(
        object,
        "max_backoff_ms",
        MIN_INTERVAL_MS,
        MAX_BACKOFF_LIMIT_MS,
        DEFAULT_MAX_BACKOFF_MS.max(interval_ms),
        errors,
    );
    if max_backoff_ms < interval_ms {
        push(
            errors,
            "source.max_backoff_ms",
            format!("must be at least interval_ms ({interval_ms}), got {max_backoff_ms}"),
        );
    }
    if errors.len() > before {
        return None;
    }
    Some(SourceConfig {
        format: format?,
        cluster: cluster?,
        path: path?,
        authority: authority?,
        headers,
        interval_ms,
        timeout_ms,
        jitter_percent: u32::try_from(jitter_percent).unwrap_or(DEFAULT_JITTER_PERCENT),
        max_backoff_ms,
    })
}

fn read_headers(
    object: &Map<String, Value>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    match object.get("headers") {
        None => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let path = format!("source.headers.{name}");
                let lower = name.to_ascii_lowercase();
                if let Err(reason) = check_header_name(name) {
                    push(errors, &path, reason);
                    continue;
                }
                if matches!(
                    lower.as_str(),
                    "host" | "content-length" | "if-none-match" | "transfer-encoding"
                ) {
                    push(errors, &path, "is set by graylane itself");
                    continue;
                }
                match value {
                    Value::String(text) if !text.contains(['\r', '\n', '\0']) => {
                        headers.push((lower, text.clone()));
                    }
                    Value::String(_) => push(errors, &path, "must not contain line breaks"),
                    other => push(
                        errors,
                        &path,
                        format!("must be a string, got {}", kind(other)),
                    ),
                }
            }
        }
        Some(other) => push(
            errors,
            "source.headers",
            format!(
                "must be an object of header name to value, got {}",
                kind(other)
            ),
        ),
    }
    headers
}

fn string_field(
    object: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    match object.get(field)? {
        Value::String(text) => Some(text.clone()),
        other => {
            push(
                errors,
                &format!("source.{field}"),
                format!("must be a string, got {}", kind(other)),
            );
            None
        }
    }
}

fn integer_field(
    object: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
    default: u64,
    errors: &mut Vec<ConfigError>,
) -> u64 {
    let Some(value) = object.get(field) else {
        return default;
    };
    match value.as_u64() {
        Some(number) if (min..=max).contains(&number) => number,
        _ => {
            push(
                errors,
                &format!("source.{field}"),
                format!("must be an integer from {min} to {max}, got {value}"),
            );
            default
        }
    }
}

fn push(errors: &mut Vec<ConfigError>, path: &str, reason: impl Into<String>) {
    errors.push(ConfigError {
        path: path.to_string(),
        reason: reason.into(),
    });
}

fn sorted<'a>(items: &[&'a str]) -> Vec<&'a str> {
    let mut items = items.to_vec();
    items.sort_unstable();
    items
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
        assert!(!extensions.apisix_mode);
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
