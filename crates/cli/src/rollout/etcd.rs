//! etcd's v3 JSON gateway, as much as a rollout needs: read a key with its
//! `mod_revision`, replace it only if it still has the revision read (a
//! transaction), create a key only if absent, attached to a lease, and keep
//! that lease alive. Keys and values travel in base64; 64-bit integers come
//! back as strings.

use std::time::Duration;

use graylane_core::source::codec::{base64_decode, base64_encode};
use serde_json::{json, Value};

use crate::http::{self, Url};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One etcd endpoint.
#[derive(Debug, Clone)]
pub struct Etcd {
    pub url: Url,
}

/// A key's value and the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written; the key's new `mod_revision`.
    Done(u64),
    /// The key had changed (or existed) since it was read: nothing written.
    Conflict,
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => text.parse().ok(),
        other => other.as_u64(),
    }
}

impl Etcd {
    pub fn new(url: Url) -> Etcd {
        Etcd { url }
    }

    fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let response = http::post_json(&self.url, path, &body.to_string(), TIMEOUT)?;
        let text = response.text();
        if response.status != 200 {
            return Err(format!("etcd {}{path} answered {}: {}", self.url, response.status, text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("etcd {}{path}: the answer is not JSON ({e}): {text}", self.url))
    }

    /// The key's value, `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, String> {
        let reply = self.call("/v3/kv/range", &json!({"key": base64_encode(key.as_bytes())}))?;
        let Some(kv) = reply.get("kvs").and_then(Value::as_array).and_then(|kvs| kvs.first()) else {
            return Ok(None);
        };
        let value = match kv.get("value").and_then(Value::as_str) {
            Some(encoded) => base64_decode(encoded)
                .ok_or_else(|| format!("etcd {}: the value of {key} is not base64", self.url))?,
            None => Vec::new(),
        };
        let mod_revision = kv
            .get("mod_revision")
            .and_then(integer)
            .ok_or_else(|| format!("etcd {}: no mod_revision for {key}", self.url))?;
        Ok(Some(Entry {
            value,
            mod_revision,
            lease: kv.get("lease").and_then(integer).unwrap_or(0),
        }))
    }

    /// Puts `value` at `key` if the key's `mod_revision` is still `expected`
    /// (0: the key must not exist), attached to `lease` when not 0.
    pub fn put_if(&self, key: &str, expected: u64, value: &[u8], lease: u64) -> Result<Write, String> {
        let encoded_key = base64_encode(key.as_bytes());
        let put = if lease == 0 {
            json!({"key": encoded_key, "value": base64_encode(value)})
        } else {
            json!({"key": encoded_key, "value": base64_encode(value), "lease": lease.to_string()})
        };
        let body = json!({
            "compare": [{"key": encoded_key, "target": "MOD", "result": "EQUAL",
                         "mod_revision": expected.to_string()}],
            "success": [{"request_put": put}],
        });
        let reply = self.call("/v3/kv/txn", &body)?;
        if reply.get("succeeded").and_then(Value::as_bool) != Some(true) {
            return Ok(Write::Conflict);
        }
        reply
            .get("header")
            .and_then(|header| header.get("revision"))
            .and_then(integer)
            .map(Write::Done)
            .ok_or_else(|| format!("etcd {}: a transaction answer without a revision", self.url))
    }

    /// Deletes `key` if its `mod_revision` is still `expected`.
    pub fn delete_if(&self, key: &str, expected: u64) -> Result<Write, String> {
        let encoded_key = base64_encode(key.as_bytes());
        let body = json!({
            "compare": [{"key": encoded_key, "target": "MOD", "result": "EQUAL",
                         "mod_revision": expected.to_string()}],
            "success": [{"request_delete_range": {"key": encoded_key}}],
        });
        let reply = self.call("/v3/kv/txn", &body)?;
        Ok(if reply.get("succeeded").and_then(Value::as_bool) == Some(true) {
            Write::Done(0)
        } else {
            Write::Conflict
        })
    }

    /// A new lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> Result<u64, String> {
        let reply = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
        reply
            .get("ID")
            .and_then(integer)
            .ok_or_else(|| format!("etcd {}: no lease granted: {reply}", self.url))
    }

    /// Renews the lease; `false` when it has expired.
    pub fn keep_alive(&self, lease: u64) -> Result<bool, String> {
        let reply = self.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        let result = reply.get("result").unwrap_or(&reply);
        Ok(result.get("TTL").and_then(integer).unwrap_or(0) > 0)
    }

    /// Ends the lease at once (its keys go with it).
    pub fn revoke(&self, lease: u64) -> Result<(), String> {
        self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .map(|_| ())
    }

    /// Seconds left on a lease (0 when it has expired).
    pub fn time_to_live(&self, lease: u64) -> Result<u64, String> {
        let reply = self.call("/v3/lease/timetolive", &json!({"ID": lease.to_string()}))?;
        Ok(reply
            .get("TTL")
            .and_then(|ttl| match ttl {
                Value::String(text) => text.parse::<i64>().ok(),
                other => other.as_i64(),
            })
            .unwrap_or(0)
            .max(0) as u64)
    }
}
