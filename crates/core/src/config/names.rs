//! Names the rules give: header names and host patterns, validated where
//! they are read.

use crate::read::Refusal;
use crate::rules::HostPattern;

/// A header the plugin reads or writes must be a plain HTTP token: a pseudo
/// header such as `:path` cannot carry a cluster or a tag.
pub fn check_header_name(name: &str) -> Result<(), String> {
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

/// Headers the plugin must never write: framing, routing and credentials
/// that Envoy or the upstream read with a meaning of their own.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "forwarded",
    "via",
];

/// Prefixes of headers the gateway itself sets or trusts.
pub const RESERVED_PREFIXES: &[&str] = &["x-envoy-", "x-forwarded-", "x-request-id", "grpc-"];

/// A header the plugin writes (the cluster and tag headers): a valid name,
/// and none the gateway or the upstream give a meaning of their own.
pub fn check_written_header_name(name: &str) -> Result<(), String> {
    check_header_name(name)?;
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "{name:?} is a header with a meaning of its own to the gateway or the upstream; the plugin will not write it"
        ));
    }
    if let Some(prefix) = RESERVED_PREFIXES
        .iter()
        .find(|prefix| lower.starts_with(**prefix))
    {
        return Err(format!(
            "{name:?}: headers starting with {prefix:?} belong to the gateway; the plugin will not write them"
        ));
    }
    Ok(())
}

/// A value the plugin writes into a header (a cluster or a tag): visible
/// ASCII only, so no CR, LF or NUL can split or end the header, and within
/// the name limit.
pub fn check_header_value(value: &str, limit: u64) -> Result<(), Refusal> {
    if value.is_empty() {
        return Err(Refusal::Empty);
    }
    if let Some(bad) = value.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(Refusal::Invalid(format!(
            "{value:?} is written into a header: only visible ASCII is allowed (byte 0x{bad:02x})"
        )));
    }
    let got = value.len() as u64;
    if got > limit {
        return Err(Refusal::OverLimit {
            what: "bytes in this name",
            limit,
            got,
            setting: "name_bytes",
        });
    }
    Ok(())
}

/// `b.example.com`, `*.b.example.com` (one or more labels before the
/// suffix) or `*` (any host); the port, if given, is dropped.
pub fn parse_host_pattern(host: &str) -> Result<HostPattern, String> {
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
pub fn strip_port(authority: &str) -> &str {
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
