//! The fetcher: one per worker (per root context), coordinated through the
//! gateway's [`SharedStore`] so that a gateway fetches once per interval
//! however many workers it runs.
//!
//! Three records live in the store, under a prefix derived from the source
//! configuration (two plugin configurations never share them):
//!
//! - `lease`: `L1|holder|next_at|failures|health`. A worker whose tick finds
//!   `now >= next_at` claims the lease by compare-and-swap, pushing `next_at`
//!   past the callout's timeout, and fetches. When the answer comes, it sets
//!   `next_at` to the next jittered interval (success) or to an exponential,
//!   jittered, capped backoff (failure), and `health` to the outcome, which is
//!   logged only when it differs from the previous one.
//! - `head`: `H1|generation|gauge|version`: small, read by every worker on
//!   every tick. `generation` counts the documents this gateway installed;
//!   `version` is the ETag or body hash (plain endpoint) or etcd
//!   `mod_revision`, sent back on the next fetch so that an unchanged
//!   document is neither resent in full (304, or an empty etcd range thanks
//!   to `min_mod_revision`) nor recompiled.
//! - `doc`: `D1|generation|gauge|version\n` then the document, read only
//!   when `head` shows a newer generation than the worker has.
//!
//! Only a document that compiles is stored: a worker never sees a bad one,
//! and a failure of any kind leaves the rules in force as they are.

use std::fmt;

use super::codec::{base64_decode, base64_encode};
use super::settings::{Format, SourceConfig};
use super::{compile_fetched, Base, CalloutRequest, CalloutResponse, Host, StoreError};
use crate::json::{self, Node};
use crate::metrics;
use crate::registry;
use crate::rules::Rules;
use crate::split::fnv1a64;

/// Added to the callout timeout before a worker gives up on an answer the
/// host never delivered, and before another worker may take the lease over.
const GRACE_MS: u64 = 500;
/// Longest `health` text kept (and logged) for one failure.
const MAX_REASON: usize = 300;

/// The worker's own view of its fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchState {
    /// Nothing in flight; the lease says when the gateway is next due.
    Idle,
    /// This worker holds the lease and waits for the answer to `token`.
    InFlight { token: u32, started_ms: u64 },
    /// This worker's last fetch failed; the gateway retries at `until_ms`.
    Backoff { until_ms: u64, failures: u32 },
}

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
        }
    }
}

/// A rule set ready to be put in force.
#[derive(Debug)]
pub struct Installed {
    pub rules: Rules,
    pub generation: u64,
    /// The version gauge: etcd `mod_revision`, the document's `version`, or
    /// else the generation.
    pub version: u64,
}

enum Outcome {
    NotModified,
    Document {
        body: Vec<u8>,
        version: String,
        gauge: Option<u64>,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Lease {
    holder: u64,
    next_at: u64,
    failures: u32,
    health: String,
}

impl Lease {
    fn parse(bytes: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(5, '|');
        if parts.next()? != "L1" {
            return None;
        }
        Some(Lease {
            holder: parts.next()?.parse().ok()?,
            next_at: parts.next()?.parse().ok()?,
            failures: parts.next()?.parse().ok()?,
            health: parts.next()?.to_string(),
        })
    }

    fn encode(&self) -> String {
        format!(
            "L1|{}|{}|{}|{}",
            self.holder, self.next_at, self.failures, self.health
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    generation: u64,
    gauge: u64,
    version: String,
}

impl Head {
    fn parse(text: &str) -> Option<Head> {
        let mut parts = text.splitn(4, '|');
        let tag = parts.next()?;
        if tag != "H1" && tag != "D1" {
            return None;
        }
        Some(Head {
            generation: parts.next()?.parse().ok()?,
            gauge: parts.next()?.parse().ok()?,
            version: parts.next()?.to_string(),
        })
    }

    fn encode(&self, tag: &str) -> String {
        format!("{tag}|{}|{}|{}", self.generation, self.gauge, self.version)
    }
}

pub struct Fetcher {
    config: SourceConfig,
    base: Base,
    keys: Keys,
    worker: u64,
    rng: u64,
    state: FetchState,
    /// Generation of the rules this worker has in force; 0: the inline ones.
    generation: u64,
    /// Version of those rules, sent back as the condition of the next fetch.
    version: Option<String>,
    /// Do not read the lease before this time: it said so.
    not_before: u64,
    /// A stored generation this worker could not compile (logged once).
    unusable_generation: u64,
}

struct Keys {
    lease: String,
    head: String,
    doc: String,
}

impl Fetcher {
    /// `seed` tells workers apart (any per-worker value: time, context id).
    pub fn new(config: SourceConfig, base: Base, seed: u64) -> Self {
        let identity = format!("{config:?}{base:?}");
        let prefix = format!("graylane.source.{:016x}", fnv1a64(&[identity.as_bytes()]));
        let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
        if rng == 0 {
            rng = 1;
        }
        let worker = splitmix(&mut rng) | 1;
        Fetcher {
            keys: Keys {
                lease: format!("{prefix}.lease"),
                head: format!("{prefix}.head"),
                doc: format!("{prefix}.doc"),
            },
            config,
            base,
            worker,
            rng,
            state: FetchState::Idle,
            generation: 0,
            version: None,
            not_before: 0,
            unusable_generation: 0,
        }
    }

    pub fn state(&self) -> &FetchState {
        &self.state
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// How often the plugin should tick: often enough that a document one
    /// worker fetched reaches the others well within an interval.
    pub fn tick_period_ms(&self) -> u64 {
        (self.config.interval_ms / 5).clamp(50, 1_000)
    }

    /// The whole tick: give up on a lost callout, adopt a document another
    /// worker stored, and fetch if this gateway is due and this worker wins
    /// the lease.
    pub fn on_tick(&mut self, host: &mut impl Host) -> Option<Installed> {
        let lost = self.watchdog(host);
        let adopted = self.sync(host);
        self.maybe_start(host);
        adopted.or(lost)
    }

    /// For hosts without ticks (APISIX): called from request handling.
    /// Returns whether a callout was dispatched (the caller then waits for
    /// its answer before letting the request go on).
    pub fn on_request(&mut self, host: &mut impl Host) -> bool {
        let _ = self.watchdog(host);
        self.maybe_start(host)
    }

    /// Gives up on a callout the host never answered.
    fn watchdog(&mut self, host: &mut impl Host) -> Option<Installed> {
        if let FetchState::InFlight { started_ms, .. } = self.state {
            let now = host.now_ms();
            if now >= started_ms + self.config.timeout_ms + GRACE_MS {
                return self.finish(host, Outcome::Failed(Failure::Lost));
            }
        }
        None
    }

    /// Adopts the newest document in the store, if newer than ours.
    pub fn sync(&mut self, host: &mut impl Host) -> Option<Installed> {
        let head = match host.get(&self.keys.head) {
            Ok(Some((bytes, _))) => std::str::from_utf8(&bytes).ok().and_then(Head::parse)?,
            _ => return None,
        };
        if head.generation <= self.generation || head.generation == self.unusable_generation {
            return None;
        }
        let Ok(Some((bytes, _))) = host.get(&self.keys.doc) else {
            return None;
        };
        let split = bytes.iter().position(|b| *b == b'\n')?;
        let (header, body) = bytes.split_at(split);
        let stored = std::str::from_utf8(header).ok().and_then(Head::parse)?;
        let body = body.get(1..).unwrap_or_default();
        if stored.generation <= self.generation {
            return None;
        }
        match compile_fetched(&self.base, body) {
            Ok((rules, _)) => {
                self.generation = stored.generation;
                self.version = Some(stored.version);
                host.gauge(metrics::SOURCE_VERSION, stored.gauge);
                Some(Installed {
                    rules,
                    generation: stored.generation,
                    version: stored.gauge,
                })
            }
            Err(error) => {
                // Cannot happen unless two graylane builds share the store.
                self.unusable_generation = stored.generation;
                host.log(
                    log::Level::Warn,
                    &format!(
                        "graylane: stored rules generation {} do not compile here: {error}",
                        stored.generation
                    ),
                );
                None
            }
        }
    }

    /// Starts a fetch when the gateway is due one and this worker wins the
    /// lease. Returns whether a callout is now in flight from here.
    pub fn maybe_start(&mut self, host: &mut impl Host) -> bool {
        if matches!(self.state, FetchState::InFlight { .. }) {
            return false;
        }
        let now = host.now_ms();
        if now < self.not_before {
            return false;
        }
        let reservation = now + self.config.timeout_ms + GRACE_MS;
        let mut claimed = None;
        for _ in 0..3 {
            let (mut lease, cas) = match host.get(&self.keys.lease) {
                Ok(Some((bytes, cas))) => (Lease::parse(&bytes).unwrap_or_default(), cas),
                Ok(None) => {
                    // Create the record first, so that the claim below is a
                    // real compare-and-swap even for the very first fetch.
                    if host
                        .set(&self.keys.lease, Lease::default().encode().as_bytes(), 0)
                        .is_err()
                    {
                        return false;
                    }
                    continue;
                }
                Err(_) => return false,
            };
            if now < lease.next_at {
                self.not_before = lease.next_at;
                return false;
            }
            lease.holder = self.worker;
            lease.next_at = reservation;
            match host.set(&self.keys.lease, lease.encode().as_bytes(), cas) {
                Ok(()) => {
                    claimed = Some(lease);
                    break;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable(_)) => return false,
            }
        }
        if claimed.is_none() {
            return false;
        }
        self.not_before = reservation;
        let request = self.request();
        host.add(metrics::SOURCE_FETCHES, 1);
        match host.dispatch(&request) {
            Ok(token) => {
                self.state = FetchState::InFlight {
                    token,
                    started_ms: now,
                };
                true
            }
            Err(why) => {
                let _ = self.finish(host, Outcome::Failed(Failure::Dispatch(why)));
                false
            }
        }
    }

    /// The answer to a callout. Answers to tokens this worker is not
    /// waiting for are ignored.
    pub fn on_response(
        &mut self,
        host: &mut impl Host,
        token: u32,
        response: &CalloutResponse,
    ) -> Option<Installed> {
        match self.state {
            FetchState::InFlight { token: waiting, .. } if waiting == token => {}
            _ => return None,
        }
        let outcome = match &self.config.format {
            Format::Graylane => self.read_plain(response),
            Format::Etcd { .. } => self.read_etcd(response),
            Format::Consul { service } => self.read_registry(response, "Consul", |body| {
                registry::consul_document(body, service)
            }),
            Format::Nacos { service } => self.read_registry(response, "Nacos", |body| {
                registry::nacos_document(body, service)
            }),
        };
        self.finish(host, outcome)
    }

    fn request(&self) -> CalloutRequest {
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
        headers.push((":method".to_string(), method.to_string()));
        headers.push((":path".to_string(), self.config.path.clone()));
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
            timeout_ms: self.config.timeout_ms,
        }
    }

    fn known_revision(&self) -> Option<u64> {
        self.version
            .as_deref()
            .and_then(|v| v.strip_prefix("rev:"))
            .and_then(|n| n.parse().ok())
    }

    fn read_plain(&self, response: &CalloutResponse) -> Outcome {
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
    fn read_registry(
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

    fn read_etcd(&self, response: &CalloutResponse) -> Outcome {
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

    fn finish(&mut self, host: &mut impl Host, outcome: Outcome) -> Option<Installed> {
        let mut installed = None;
        let result = match outcome {
            Outcome::NotModified => {
                host.add(metrics::SOURCE_NOT_MODIFIED, 1);
                Ok(())
            }
            Outcome::Document {
                body,
                version,
                gauge,
            } => match compile_fetched(&self.base, &body) {
                Ok((rules, document_version)) => {
                    let generation = self.next_generation(host);
                    let gauge = gauge.or(document_version).unwrap_or(generation);
                    let head = Head {
                        generation,
                        gauge,
                        version: version.clone(),
                    };
                    let mut record = head.encode("D1").into_bytes();
                    record.push(b'\n');
                    record.extend_from_slice(&body);
                    // The document first, then the head that announces it.
                    let stored = host.set(&self.keys.doc, &record, 0).is_ok()
                        && host
                            .set(&self.keys.head, head.encode("H1").as_bytes(), 0)
                            .is_ok();
                    if !stored {
                        host.log(
                            log::Level::Warn,
                            "graylane: cannot share the fetched rules with the other workers",
                        );
                    }
                    self.generation = generation;
                    self.version = Some(version);
                    host.add(metrics::SOURCE_UPDATES, 1);
                    host.gauge(metrics::SOURCE_VERSION, gauge);
                    host.log(
                        log::Level::Info,
                        &format!(
                            "graylane: rules from the source in force: generation {generation}, version {gauge}, {} service(s)",
                            rules.services.len()
                        ),
                    );
                    installed = Some(Installed {
                        rules,
                        generation,
                        version: gauge,
                    });
                    Ok(())
                }
                Err(why) => Err(Failure::Rejected(why)),
            },
            Outcome::Failed(failure) => Err(failure),
        };
        if let Err(failure) = &result {
            host.add(metrics::SOURCE_FAILURES, 1);
            if failure.is_rejection() {
                host.add(metrics::SOURCE_REJECTED, 1);
            }
        }
        self.release(host, result);
        installed
    }

    fn next_generation(&self, host: &mut impl Host) -> u64 {
        let stored = match host.get(&self.keys.head) {
            Ok(Some((bytes, _))) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(Head::parse)
                .map_or(0, |head| head.generation),
            _ => 0,
        };
        stored.max(self.generation) + 1
    }

    /// Hands the lease back with the next due time, and logs the outcome
    /// when it differs from the last one the gateway logged.
    fn release(&mut self, host: &mut impl Host, result: Result<(), Failure>) {
        let now = host.now_ms();
        let mut previous_health = String::new();
        let mut next = Lease::default();
        for _ in 0..4 {
            let (lease, cas) = match host.get(&self.keys.lease) {
                Ok(Some((bytes, cas))) => (Lease::parse(&bytes).unwrap_or_default(), cas),
                Ok(None) => (Lease::default(), 0),
                Err(_) => (Lease::default(), 0),
            };
            previous_health = lease.health.clone();
            next = match &result {
                Ok(()) => Lease {
                    holder: 0,
                    next_at: now + self.jittered(self.config.interval_ms),
                    failures: 0,
                    health: "ok".into(),
                },
                Err(failure) => {
                    let failures = lease.failures.saturating_add(1);
                    let mut reason = failure.to_string().replace('|', "/");
                    truncate(&mut reason, MAX_REASON);
                    Lease {
                        holder: 0,
                        next_at: now + self.backoff(failures),
                        failures,
                        health: reason,
                    }
                }
            };
            match host.set(&self.keys.lease, next.encode().as_bytes(), cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => break,
            }
        }
        if next.health != previous_health {
            match &result {
                Err(failure) => host.log(
                    log::Level::Warn,
                    &format!(
                        "graylane: rules source failing: {failure}; keeping the rules in force (generation {}); retrying with backoff",
                        self.generation
                    ),
                ),
                Ok(()) if !previous_health.is_empty() => host.log(
                    log::Level::Info,
                    "graylane: rules source answering again",
                ),
                Ok(()) => {}
            }
        }
        self.not_before = next.next_at;
        self.state = match result {
            Ok(()) => FetchState::Idle,
            Err(_) => FetchState::Backoff {
                until_ms: next.next_at,
                failures: next.failures,
            },
        };
    }

    fn random(&mut self) -> u64 {
        splitmix(&mut self.rng)
    }

    /// `base` ± jitter_percent.
    fn jittered(&mut self, base: u64) -> u64 {
        let jitter = u64::from(self.config.jitter_percent);
        if jitter == 0 {
            return base;
        }
        let factor = 100 - jitter + self.random() % (2 * jitter + 1);
        base.saturating_mul(factor) / 100
    }

    /// interval × 2^(failures-1), jittered, never over max_backoff_ms.
    fn backoff(&mut self, failures: u32) -> u64 {
        let exponent = failures.saturating_sub(1).min(20);
        let raw = self
            .config
            .interval_ms
            .saturating_mul(1u64 << exponent)
            .min(self.config.max_backoff_ms);
        self.jittered(raw).min(self.config.max_backoff_ms)
    }
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn as_integer(value: &Node) -> Option<u64> {
    match value.as_number() {
        Some(number) => number.as_u64(),
        None => value.as_str()?.parse().ok(),
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}
