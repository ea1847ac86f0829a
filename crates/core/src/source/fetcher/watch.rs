//! Push mode for etcd: the gateway's rules come over one etcd watch (a gRPC
//! stream) instead of a range read every interval.
//!
//! - **One watch per gateway.** The worker holding the lease watches; it
//!   renews the lease while the watch lives ([`WATCH_LEASE_MS`]), and any
//!   other worker takes it over once the holder stops renewing (its VM went
//!   away), watching from the revision it has.
//! - **Start.** From the revision of the document in force + 1 when there is
//!   one (a takeover, a restart of the stream); else, and after every
//!   failure, a range read (gRPC `KV/Range`: the cluster speaks HTTP/2, so
//!   etcd's JSON gateway, HTTP/1 on the same port, is not reachable through
//!   it) installs the current value, and the watch starts at that read's
//!   revision + 1. A revision etcd compacted is therefore never a lost value:
//!   etcd cancels the watch with `compact_revision`, and the read brings
//!   the latest document.
//! - **Events.** A put installs its value as a fetch does (only a document
//!   that compiles, stored for the other workers); a delete keeps the rules
//!   in force. Both, and every failure, go to the lease's `health`, so the
//!   log tells each change of state once.
//! - **Heartbeat.** A stream to a hung etcd (stopped, or a silent network)
//!   fires nothing. After [`HEARTBEAT_MS`] without a message the watcher
//!   sends a progress request, which etcd answers on the stream; after
//!   [`SILENCE_MS`] without one it gives the stream up. No reads at idle.
//! - **Failures** (the stream or the read closed, a message that does not
//!   decode, a cancel, silence) cancel what is open and retry after a
//!   jittered exponential backoff from [`RETRY_BASE_MS`] up to the interval.

use prost::Message;

use super::protocol::Failure;
use super::records::Lease;
use super::{Fetcher, Installed, GRACE_MS};
use crate::metrics;
use crate::source::etcd_proto::{
    self, RangeRequest, RangeResponse, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchRequestUnion, WatchResponse, EVENT_DELETE,
};
use crate::source::{GrpcTarget, Host};

/// How long the watcher's hold on the lease lasts without a renewal: how
/// long the gateway goes without a watch when the watching VM disappears.
pub const WATCH_LEASE_MS: u64 = 4_000;
/// A stream silent this long gets a progress request.
pub const HEARTBEAT_MS: u64 = 1_000;
/// A stream silent this long (no answer to the progress request) is given up.
pub const SILENCE_MS: u64 = 3_000;
/// The first retry's pause after a failure; it doubles per failure.
pub const RETRY_BASE_MS: u64 = 250;

/// The watcher's own view (only the worker holding the lease leaves
/// `Standby`). Each state in which something is open carries its token:
/// answers to any other token are stale and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchState {
    /// Another worker watches, or nobody yet: this one adopts what is
    /// stored, and takes the lease over when it lapses.
    Standby,
    /// The range read `call` is in flight.
    Reading { call: u32, started_ms: u64 },
    /// The watch stream is open. `watch_id` comes with etcd's `created`;
    /// `heard_ms` is the last message; `probed` says a progress request is
    /// out since then.
    Watching {
        stream: u32,
        watch_id: Option<i64>,
        heard_ms: u64,
        probed: bool,
    },
    /// After a failure: the next read at `until_ms`, the lease kept.
    Backoff { until_ms: u64, failures: u32 },
}

#[derive(Debug)]
pub(super) struct Watch {
    pub(super) state: WatchState,
    /// When this worker's hold on the lease ends unless renewed.
    lease_until: u64,
    key: Vec<u8>,
}

impl Watch {
    pub(super) fn new(key: &str) -> Watch {
        Watch {
            state: WatchState::Standby,
            lease_until: 0,
            key: key.as_bytes().to_vec(),
        }
    }
}

impl Fetcher {
    /// The watch's state; `None` when this source polls.
    pub fn watch_state(&self) -> Option<&WatchState> {
        self.watch.as_ref().map(|watch| &watch.state)
    }

    fn set_watch_state(&mut self, state: WatchState) {
        if let Some(watch) = self.watch.as_mut() {
            watch.state = state;
        }
    }

    fn grpc_target(&self, service: &'static str, method: &'static str) -> GrpcTarget {
        GrpcTarget {
            upstream: etcd_proto::grpc_service(&self.config.cluster, &self.config.authority),
            service,
            method,
            metadata: self.config.headers.clone(),
        }
    }

    /// The tick of a watching source: take the lease over if it lapsed,
    /// keep it while watching, heartbeat, retry after a failure.
    pub(super) fn watch_tick(&mut self, host: &mut impl Host) {
        let Some(watch) = self.watch.as_ref() else {
            return;
        };
        let now = host.now_ms();
        let state = watch.state.clone();
        if state == WatchState::Standby {
            if now >= self.not_before && self.hold_lease(host, now) {
                self.begin(host);
            }
            return;
        }
        if now + WATCH_LEASE_MS / 2 >= watch.lease_until && !self.hold_lease(host, now) {
            // Another worker holds the watch now (this VM missed its
            // renewals): two watches would do no harm, but one is the rule.
            self.cancel_open(host);
            self.set_watch_state(WatchState::Standby);
            return;
        }
        match state {
            WatchState::Reading { started_ms, .. }
                if now >= started_ms + self.config.timeout_ms + GRACE_MS =>
            {
                self.watch_failed(host, Failure::Lost);
            }
            WatchState::Watching {
                stream,
                watch_id,
                heard_ms,
                probed,
            } => {
                if now >= heard_ms + SILENCE_MS {
                    self.watch_failed(host, Failure::Silent(now - heard_ms));
                } else if now >= heard_ms + HEARTBEAT_MS && !probed {
                    let progress = WatchRequest {
                        request: Some(WatchRequestUnion::Progress(WatchProgressRequest {})),
                    };
                    match host.send(stream, &progress.encode_to_vec()) {
                        Ok(()) => self.set_watch_state(WatchState::Watching {
                            stream,
                            watch_id,
                            heard_ms,
                            probed: true,
                        }),
                        Err(why) => self.watch_failed(host, Failure::Dispatch(why)),
                    }
                }
            }
            WatchState::Backoff { until_ms, .. } if now >= until_ms => self.read(host),
            _ => {}
        }
    }

    /// Takes or renews this worker's hold on the lease: free, lapsed or
    /// already its own.
    fn hold_lease(&mut self, host: &mut impl Host, now: u64) -> bool {
        let me = self.worker;
        let until = now + WATCH_LEASE_MS;
        let held = self
            .take_lease(host, until, |lease| {
                lease.holder == me || lease.holder == 0 || now >= lease.next_at
            })
            .is_some();
        if held {
            if let Some(watch) = self.watch.as_mut() {
                watch.lease_until = until;
            }
        }
        held
    }

    /// The first step once the lease is this worker's.
    fn begin(&mut self, host: &mut impl Host) {
        match self.known_revision() {
            Some(revision) => self.open_watch(host, revision.saturating_add(1)),
            None => self.read(host),
        }
    }

    fn read(&mut self, host: &mut impl Host) {
        let Some(watch) = self.watch.as_ref() else {
            return;
        };
        let request = RangeRequest {
            key: watch.key.clone(),
            range_end: Vec::new(),
        };
        let target = self.grpc_target(etcd_proto::KV_SERVICE, etcd_proto::RANGE_METHOD);
        host.add(metrics::SOURCE_FETCHES, 1);
        match host.call(&target, &request.encode_to_vec(), self.config.timeout_ms) {
            Ok(call) => {
                let started_ms = host.now_ms();
                self.set_watch_state(WatchState::Reading { call, started_ms });
            }
            Err(why) => self.watch_failed(host, Failure::Dispatch(why)),
        }
    }

    fn open_watch(&mut self, host: &mut impl Host, start_revision: u64) {
        let Some(watch) = self.watch.as_ref() else {
            return;
        };
        let create = WatchRequest {
            request: Some(WatchRequestUnion::Create(WatchCreateRequest {
                key: watch.key.clone(),
                range_end: Vec::new(),
                start_revision: i64::try_from(start_revision).unwrap_or(i64::MAX),
            })),
        };
        let target = self.grpc_target(etcd_proto::WATCH_SERVICE, etcd_proto::WATCH_METHOD);
        let stream = match host.open_stream(&target) {
            Ok(stream) => stream,
            Err(why) => return self.watch_failed(host, Failure::Dispatch(why)),
        };
        host.add(metrics::SOURCE_WATCHES, 1);
        let heard_ms = host.now_ms();
        self.set_watch_state(WatchState::Watching {
            stream,
            watch_id: None,
            heard_ms,
            probed: false,
        });
        if let Err(why) = host.send(stream, &create.encode_to_vec()) {
            self.watch_failed(host, Failure::Dispatch(why));
        }
    }

    /// Cancels the read or the stream in flight, if any.
    fn cancel_open(&mut self, host: &mut impl Host) {
        match self.watch_state() {
            Some(WatchState::Reading { call: token, .. })
            | Some(WatchState::Watching { stream: token, .. }) => host.cancel(*token),
            _ => {}
        }
    }

    /// Gives up what is open, tells the failure (once per change of
    /// health) and waits for the backoff.
    fn watch_failed(&mut self, host: &mut impl Host, failure: Failure) {
        self.cancel_open(host);
        host.add(metrics::SOURCE_FAILURES, 1);
        let failures = self.note_watch_health(host, Err(failure), true);
        let now = host.now_ms();
        let pause = self.retry_pause(failures);
        self.set_watch_state(WatchState::Backoff {
            until_ms: now + pause,
            failures,
        });
    }

    /// RETRY_BASE_MS × 2^(failures-1), jittered, at most the interval (and
    /// max_backoff_ms): etcd back after an outage is watched again within
    /// an interval.
    fn retry_pause(&mut self, failures: u32) -> u64 {
        let cap = self.config.interval_ms.min(self.config.max_backoff_ms);
        let exponent = failures.saturating_sub(1).min(20);
        let raw = RETRY_BASE_MS.saturating_mul(1u64 << exponent).min(cap);
        self.jittered(raw).min(cap)
    }

    /// Writes the source's health to the lease (logged when it changed);
    /// `stream_failed` counts one more failure for the backoff. Returns the
    /// failures counted.
    fn note_watch_health(
        &mut self,
        host: &mut impl Host,
        result: Result<(), Failure>,
        stream_failed: bool,
    ) -> u32 {
        let me = self.worker;
        let until = self.watch.as_ref().map_or(0, |watch| watch.lease_until);
        let health = match &result {
            Ok(()) => "ok".to_string(),
            Err(failure) => super::health_text(failure),
        };
        self.update_lease(host, &result, |_, lease| Lease {
            holder: me,
            next_at: until,
            failures: lease.failures.saturating_add(u32::from(stream_failed)),
            health: health.clone(),
        })
        .failures
    }

    /// The stream is healthy again: the next failure backs off from the
    /// start.
    fn reset_failures(&mut self, host: &mut impl Host) {
        let me = self.worker;
        let until = self.watch.as_ref().map_or(0, |watch| watch.lease_until);
        // The health stays: only a document, or its absence, says "ok".
        let _ = self.update_lease(host, &Ok(()), |_, lease| Lease {
            holder: me,
            next_at: until,
            failures: 0,
            health: lease.health.clone(),
        });
    }

    /// A gRPC message on `token`: the read's answer or a watch response.
    pub fn on_grpc_message(
        &mut self,
        host: &mut impl Host,
        token: u32,
        message: &[u8],
    ) -> Option<Installed> {
        match self.watch_state()? {
            WatchState::Reading { call, .. } if *call == token => self.on_range(host, message),
            WatchState::Watching { stream, .. } if *stream == token => {
                self.on_watch_response(host, message)
            }
            _ => None,
        }
    }

    /// The read or the stream `token` ended (the host closed it: etcd went
    /// away, refused, or answered with an error status).
    pub fn on_grpc_close(&mut self, host: &mut impl Host, token: u32, status: u32) {
        let what = match self.watch_state() {
            Some(WatchState::Reading { call, .. }) if *call == token => "the etcd read",
            Some(WatchState::Watching { stream, .. }) if *stream == token => {
                "the etcd watch stream"
            }
            _ => return,
        };
        // Closed already: nothing to cancel.
        self.set_watch_state(WatchState::Standby);
        self.watch_failed(host, Failure::Grpc { what, status });
    }

    fn on_range(&mut self, host: &mut impl Host, message: &[u8]) -> Option<Installed> {
        let key = self.watch.as_ref()?.key.clone();
        let revision = match RangeResponse::decode(message) {
            Ok(range) => match range.header.as_ref().map(|header| header.revision) {
                Some(revision) if revision > 0 => Some((range, revision.unsigned_abs())),
                _ => None,
            },
            Err(_) => None,
        };
        let Some((range, revision)) = revision else {
            self.set_watch_state(WatchState::Standby);
            self.watch_failed(
                host,
                Failure::Etcd("the range answer is not a RangeResponse with a revision".into()),
            );
            return None;
        };
        let installed = match range.kvs.into_iter().find(|kv| kv.key == key) {
            Some(kv) => self.take_value(host, kv.mod_revision, kv.value),
            None => {
                host.add(metrics::SOURCE_FAILURES, 1);
                self.note_watch_health(host, Err(Failure::KeyMissing), false);
                None
            }
        };
        // Watching from the read's revision + 1 also catches the key's
        // creation when it is missing.
        self.open_watch(host, revision.saturating_add(1));
        installed
    }

    /// A value read or watched at `mod_revision`: installed when newer than
    /// the rules in force and it compiles; else the rules stay.
    fn take_value(
        &mut self,
        host: &mut impl Host,
        mod_revision: i64,
        value: Vec<u8>,
    ) -> Option<Installed> {
        let revision = mod_revision.unsigned_abs();
        if self.known_revision().is_some_and(|known| revision <= known) {
            // What is in force already (or older: an event replayed).
            self.note_watch_health(host, Ok(()), false);
            return None;
        }
        match self.install_document(host, value, format!("rev:{revision}"), Some(revision)) {
            Ok(installed) => {
                self.note_watch_health(host, Ok(()), false);
                Some(installed)
            }
            Err(failure) => {
                host.add(metrics::SOURCE_FAILURES, 1);
                if failure.is_rejection() {
                    host.add(metrics::SOURCE_REJECTED, 1);
                }
                self.note_watch_health(host, Err(failure), false);
                None
            }
        }
    }

    fn on_watch_response(&mut self, host: &mut impl Host, message: &[u8]) -> Option<Installed> {
        let Some(WatchState::Watching {
            stream, watch_id, ..
        }) = self.watch_state().cloned()
        else {
            return None;
        };
        host.add(metrics::SOURCE_WATCH_MESSAGES, 1);
        let Ok(response) = WatchResponse::decode(message) else {
            self.watch_failed(
                host,
                Failure::Etcd("a watch message is not a WatchResponse".into()),
            );
            return None;
        };
        let now = host.now_ms();
        let mut ours = watch_id;
        if response.created && ours.is_none() {
            ours = Some(response.watch_id);
            self.reset_failures(host);
        }
        self.set_watch_state(WatchState::Watching {
            stream,
            watch_id: ours,
            heard_ms: now,
            probed: false,
        });
        // Another watch's answer (a progress answer to the whole stream
        // carries -1): only liveness.
        if ours != Some(response.watch_id) {
            return None;
        }
        if response.canceled {
            if response.compact_revision > 0 {
                host.log(
                    log::Level::Info,
                    &format!(
                        "graylane: etcd compacted the watch's revisions (up to {}): reading the key again",
                        response.compact_revision
                    ),
                );
                self.cancel_open(host);
                self.read(host);
            } else {
                let reason = if response.cancel_reason.is_empty() {
                    "no reason given".to_string()
                } else {
                    response.cancel_reason
                };
                self.watch_failed(host, Failure::Canceled(reason));
            }
            return None;
        }
        let key = self.watch.as_ref()?.key.clone();
        // Events come in revision order: the last one of the key decides.
        let last = response
            .events
            .into_iter()
            .filter_map(|event| Some((event.kind, event.kv?)))
            .rfind(|(_, kv)| kv.key == key);
        match last {
            Some((EVENT_DELETE, _)) => {
                host.add(metrics::SOURCE_FAILURES, 1);
                self.note_watch_health(host, Err(Failure::KeyMissing), false);
                None
            }
            Some((_, kv)) => self.take_value(host, kv.mod_revision, kv.value),
            None => None,
        }
    }
}
