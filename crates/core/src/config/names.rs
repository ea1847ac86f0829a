//! Names the rules give: header names and host patterns, validated where
//! they are read.

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
