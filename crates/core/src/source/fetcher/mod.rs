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
//!
//! A fourth, `wake`, lists the workers' shared queues ([`wake`]): the worker
//! that stores a document wakes the others, which adopt it at once.
//!
//! An etcd source in push mode fetches nothing every interval: the lease's
//! holder keeps the lease while it watches the key (`watch`), and `next_at`
//! is when its hold lapses unless renewed.
//!
//! Only a document that compiles is stored: a worker never sees a bad one,
//! and a failure of any kind leaves the rules in force as they are.

mod protocol;
mod records;
mod watch;
pub mod wake;

use super::settings::{Delivery, Format, SourceConfig};
use super::{compile_fetched, Base, CalloutResponse, Host, StoreError};
use crate::metrics;
use crate::rules::Rules;
use crate::split::fnv1a64;

pub use protocol::Failure;
use protocol::Outcome;
use records::{Head, Lease};
use watch::Watch;
pub use watch::{WatchState, HEARTBEAT_MS, RETRY_BASE_MS, SILENCE_MS, WATCH_LEASE_MS};
use wake::Wake;

/// Added to the callout timeout before a worker gives up on an answer the
/// host never delivered, and before another worker may take the lease over.
const GRACE_MS: u64 = 500;
/// The tick in push mode (see [`Fetcher::tick_period_ms`]).
pub const PUSH_TICK_MS: u64 = 1_000;
/// A long-poll starts no sooner than this after the previous one started
/// when that one came back unchanged: a server that ignores the wait and
/// answers at once is asked about once a second, not in a hot loop.
pub const UNCHANGED_REPOLL_FLOOR_MS: u64 = 1_000;
/// A change answered sooner than this after its request was sent is a
/// quick change. After a change the next long-poll goes at once, so that
/// the following change is held for; after a second quick change in a row
/// (a server whose every answer differs) the unchanged floor applies.
pub const QUICK_CHANGE_MS: u64 = 100;
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


/// A rule set ready to be put in force.
#[derive(Debug)]
pub struct Installed {
    pub rules: Rules,
    pub generation: u64,
    /// The version gauge: etcd `mod_revision`, the document's `version`, or
    /// else the generation.
    pub version: u64,
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
    /// Push mode (etcd): the watch instead of the polling fetch.
    watch: Option<Watch>,
    wake: Wake,
    /// Consul's `X-Consul-Index` of the last answer: the next blocking
    /// query waits for a change past it.
    consul_index: Option<u64>,
    /// The last long-poll brought a change and was answered within
    /// [`QUICK_CHANGE_MS`].
    quick_change: bool,
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
        let watch = watch_key(&config).map(Watch::new);
        let wake = Wake::new(&prefix, worker);
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
            watch,
            wake,
            consul_index: None,
            quick_change: false,
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

    /// How often the plugin should tick. Polling: often enough that the
    /// gateway's next fetch starts close to its due time (any worker may
    /// hold the lease). Push: a held request is sent again from its answer
    /// and woken workers adopt at once, so the tick only flushes metrics,
    /// retries after a failure and takes over from a holder that went away.
    pub fn tick_period_ms(&self) -> u64 {
        match self.config.delivery() {
            Delivery::Poll => (self.config.interval_ms / 5).clamp(50, 1_000),
            Delivery::LongPoll | Delivery::Watch => PUSH_TICK_MS,
        }
    }

    /// The whole tick: give up on a lost callout, adopt a document another
    /// worker stored, and fetch if this gateway is due and this worker wins
    /// the lease.
    pub fn on_tick(&mut self, host: &mut impl Host) -> Option<Installed> {
        self.wake.maintain(host);
        if self.watch.is_some() {
            let adopted = self.sync(host);
            self.watch_tick(host);
            return adopted;
        }
        let lost = self.watchdog(host);
        let adopted = self.sync(host);
        self.maybe_start(host);
        adopted.or(lost)
    }

    /// This VM's shared queue, once registered (on its first tick).
    pub fn wake_queue(&self) -> Option<u32> {
        self.wake.queue()
    }

    /// A message on a shared queue: another worker stored a document.
    /// Drains the queue and adopts the document; `None` for a queue that
    /// is not this fetcher's (another plugin configuration's).
    pub fn on_queue_ready(&mut self, host: &mut impl Host, queue: u32) -> Option<Installed> {
        if !self.wake.drain(host, queue) {
            return None;
        }
        self.sync(host)
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
            if now >= started_ms + self.callout_timeout_ms() + GRACE_MS {
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
        let reservation = now + self.callout_timeout_ms() + GRACE_MS;
        if self
            .take_lease(host, reservation, |lease| now >= lease.next_at)
            .is_none()
        {
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

    /// Makes this worker the lease's holder until `until`, by
    /// compare-and-swap, when `may_take` allows it on the lease as read;
    /// otherwise remembers not to ask before the lease's `next_at`. Returns
    /// the lease written.
    fn take_lease(
        &mut self,
        host: &mut impl Host,
        until: u64,
        may_take: impl Fn(&Lease) -> bool,
    ) -> Option<Lease> {
        for _ in 0..3 {
            let (mut lease, cas) = match host.get(&self.keys.lease) {
                Ok(Some((bytes, cas))) => (Lease::parse(&bytes).unwrap_or_default(), cas),
                Ok(None) => {
                    // Create the record first, so that the claim below is a
                    // real compare-and-swap even for the very first one.
                    host.set(&self.keys.lease, Lease::default().encode().as_bytes(), 0)
                        .ok()?;
                    continue;
                }
                Err(_) => return None,
            };
            if !may_take(&lease) {
                self.not_before = lease.next_at;
                return None;
            }
            lease.holder = self.worker;
            lease.next_at = until;
            match host.set(&self.keys.lease, lease.encode().as_bytes(), cas) {
                Ok(()) => return Some(lease),
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable(_)) => return None,
            }
        }
        None
    }

    /// The request that carried the callout ended before its answer came (a
    /// host without ticks, APISIX, cancels the callout with it). The lease
    /// is handed back due now and without a failure counted, so the next
    /// request fetches at once: clients hanging up cannot stall a refresh.
    pub fn abandon(&mut self, host: &mut impl Host, token: u32) {
        match self.state {
            FetchState::InFlight { token: waiting, .. } if waiting == token => {}
            _ => return,
        }
        self.state = FetchState::Idle;
        self.not_before = 0;
        let now = host.now_ms();
        for _ in 0..4 {
            let Ok(Some((bytes, cas))) = host.get(&self.keys.lease) else {
                return;
            };
            let mut lease = Lease::parse(&bytes).unwrap_or_default();
            if lease.holder != self.worker {
                return;
            }
            lease.holder = 0;
            lease.next_at = now;
            match host.set(&self.keys.lease, lease.encode().as_bytes(), cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => return,
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
        if self.config.delivery() == Delivery::LongPoll {
            self.note_consul_index(response);
        }
        let outcome = self.read_answer(response);
        let installed = self.finish(host, outcome);
        // A long-poll is sent again as soon as it is answered (or once its
        // floor has passed: then on a tick).
        if self.config.delivery() == Delivery::LongPoll && self.state == FetchState::Idle {
            self.maybe_start(host);
        }
        installed
    }

    fn finish(&mut self, host: &mut impl Host, outcome: Outcome) -> Option<Installed> {
        let started_ms = match self.state {
            FetchState::InFlight { started_ms, .. } => Some(started_ms),
            _ => None,
        };
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
            } => self
                .install_document(host, body, version, gauge)
                .map(|new| installed = Some(new)),
            Outcome::Failed(failure) => Err(failure),
        };
        if let Err(failure) = &result {
            host.add(metrics::SOURCE_FAILURES, 1);
            if failure.is_rejection() {
                host.add(metrics::SOURCE_REJECTED, 1);
            }
        }
        let repoll_at = started_ms.map_or(0, |started| {
            let quick = host.now_ms() < started + QUICK_CHANGE_MS;
            let again_at_once = installed.is_some() && !(quick && self.quick_change);
            self.quick_change = installed.is_some() && quick;
            if again_at_once {
                0
            } else {
                started + UNCHANGED_REPOLL_FLOOR_MS
            }
        });
        self.release(host, result, repoll_at);
        installed
    }

    /// Compiles a document from the source and, when it compiles, puts it
    /// in force here and stores it for the other workers: the one way a
    /// fetch and a watch event change the rules.
    fn install_document(
        &mut self,
        host: &mut impl Host,
        body: Vec<u8>,
        version: String,
        gauge: Option<u64>,
    ) -> Result<Installed, Failure> {
        let (rules, document_version) =
            compile_fetched(&self.base, &body).map_err(Failure::Rejected)?;
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
        if stored {
            self.wake.wake_others(host);
        } else {
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
        Ok(Installed {
            rules,
            generation,
            version: gauge,
        })
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
    /// when it differs from the last one the gateway logged. After a
    /// successful long-poll the next is due at `repoll_at` (or now).
    fn release(&mut self, host: &mut impl Host, result: Result<(), Failure>, repoll_at: u64) {
        let long_poll = self.config.delivery() == Delivery::LongPoll;
        let now = host.now_ms();
        let next = self.update_lease(host, &result, |fetcher, lease| match &result {
            Ok(()) => Lease {
                holder: 0,
                next_at: if long_poll {
                    repoll_at.max(now)
                } else {
                    now + fetcher.jittered(fetcher.config.interval_ms)
                },
                failures: 0,
                health: "ok".into(),
            },
            Err(failure) => {
                let failures = lease.failures.saturating_add(1);
                Lease {
                    holder: 0,
                    next_at: now + fetcher.backoff(failures),
                    failures,
                    health: health_text(failure),
                }
            }
        });
        self.not_before = next.next_at;
        self.state = match result {
            Ok(()) => FetchState::Idle,
            Err(_) => FetchState::Backoff {
                until_ms: next.next_at,
                failures: next.failures,
            },
        };
    }

    /// Rewrites the lease as `change` says (compare-and-swap, retried), and
    /// logs `result` when the health it writes differs from the one the
    /// gateway logged last: a failure is told once, not once per attempt.
    /// Returns the lease written.
    fn update_lease(
        &mut self,
        host: &mut impl Host,
        result: &Result<(), Failure>,
        mut change: impl FnMut(&mut Self, &Lease) -> Lease,
    ) -> Lease {
        let mut previous_health = String::new();
        let mut next = Lease::default();
        for _ in 0..4 {
            let (lease, cas) = match host.get(&self.keys.lease) {
                Ok(Some((bytes, cas))) => (Lease::parse(&bytes).unwrap_or_default(), cas),
                Ok(None) => (Lease::default(), 0),
                Err(_) => (Lease::default(), 0),
            };
            previous_health = lease.health.clone();
            next = change(self, &lease);
            match host.set(&self.keys.lease, next.encode().as_bytes(), cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => break,
            }
        }
        if next.health != previous_health {
            match result {
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
        next
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


/// The etcd key to watch, when the source is etcd in push mode.
fn watch_key(config: &SourceConfig) -> Option<&str> {
    match &config.format {
        Format::Etcd { key } if config.uses_grpc() => Some(key),
        _ => None,
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A failure as the lease's `health` keeps it: no field separator, bounded.
fn health_text(failure: &Failure) -> String {
    let mut reason = failure.to_string().replace('|', "/");
    truncate(&mut reason, MAX_REASON);
    reason
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
