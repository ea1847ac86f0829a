//! Where the live rules are, and how a rollout replaces them without losing
//! anyone else's change: an etcd key (a transaction comparing the
//! `mod_revision` read; the gateways' version gauge is that revision), or a
//! rules endpoint of the plain `graylane` format that answers GET with an
//! `ETag` and takes PUT with `If-Match` (412 when the rules changed). On such
//! an endpoint the gauge is the document's `version`, so each write sets
//! `version` above the one read and above any generation number a gateway
//! may show (the time in milliseconds, when larger).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::etcd::{Etcd, Write as Written};
use crate::http::{self, Url};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum Store {
    Etcd { etcd: Etcd, key: String },
    Http { url: Url },
}

/// What a write is conditioned on: the state of the rules when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Revision(u64),
    ETag(String),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Revision(revision) => write!(f, "revision {revision}"),
            Token::ETag(etag) => write!(f, "ETag {etag}"),
        }
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Etcd { etcd, key } => write!(f, "{key} in etcd {}", etcd.url),
            Store::Http { url } => write!(f, "{url}"),
        }
    }
}

fn parse(bytes: &[u8], store: &Store) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the rules at {store} are not JSON: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// The rules and what a write must find unchanged.
    pub fn read(&self) -> Result<(Value, Token), String> {
        match self {
            Store::Etcd { etcd, key } => {
                let entry = etcd
                    .get(key)?
                    .ok_or_else(|| format!("the rules key {key} does not exist in etcd {}", etcd.url))?;
                Ok((parse(&entry.value, self)?, Token::Revision(entry.mod_revision)))
            }
            Store::Http { url } => {
                let response = http::request(url, "GET", "", &[("accept", "application/json")], None, TIMEOUT)?;
                if response.status != 200 {
                    return Err(format!("GET {url} answered {}: {}", response.status, response.text().trim()));
                }
                let etag = response
                    .header("etag")
                    .ok_or_else(|| format!("GET {url} answered without an ETag: a rollout needs one to replace the rules safely"))?;
                Ok((parse(&response.body, self)?, Token::ETag(etag.to_string())))
            }
        }
    }

    /// Writes `document` if the rules are still as `token` says; returns the
    /// version the gateways will show, or `None` when the rules changed
    /// since they were read.
    pub fn write_if(&self, token: &Token, document: &mut Value) -> Result<Option<u64>, String> {
        match (self, token) {
            (Store::Etcd { etcd, key }, Token::Revision(revision)) => {
                let text = serde_json::to_vec(document).map_err(|e| e.to_string())?;
                Ok(match etcd.put_if(key, *revision, &text, 0)? {
                    Written::Done(new) => Some(new),
                    Written::Conflict => None,
                })
            }
            (Store::Http { url }, Token::ETag(etag)) => {
                let read = document.get("version").and_then(Value::as_u64).unwrap_or(0);
                let version = read.saturating_add(1).max(now_ms());
                if let Some(object) = document.as_object_mut() {
                    object.insert("version".into(), Value::from(version));
                }
                let text = document.to_string();
                let headers = [("if-match", etag.as_str())];
                let response = http::request(url, "PUT", "", &headers, Some(&text), TIMEOUT)?;
                match response.status {
                    200..=299 => Ok(Some(version)),
                    412 => Ok(None),
                    status => Err(format!("PUT {url} answered {status}: {}", response.text().trim())),
                }
            }
            _ => Err(format!("the rules at {self} were read as {token}, which this store cannot check")),
        }
    }
}
