//! A root context: one plugin configuration in one VM (an Envoy worker, an
//! nginx worker). It holds the rules in force, the live-rules fetcher and
//! the request counts, and is the gateway as [`graylane_core::source`] sees
//! it ([`PluginHost`]).
//!
//! No `RefCell` borrow is held across a host call: the fetcher is taken out
//! of its cell while it talks to the host, and the rules are cloned out (an
//! `Rc`) before anything is called with them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use graylane_core::metrics::RequestCounts;
use graylane_core::request::{parse_header_map, serialise_header_map};
use graylane_core::rules::Rules;
use graylane_core::source::{
    self, Base, CalloutRequest, CalloutResponse, Clock, Fetcher, GrpcChannel, GrpcTarget,
    HttpCallout, Installed, LocalStore, Logger, Metrics, SharedQueue, SharedStore, StoreError,
};
use graylane_core::split::WeylSequence;

use crate::abi::{self, BufferType, MapType, MetricType, Status};

/// Without a source, metrics are still flushed this often.
const FLUSH_PERIOD_MS: u32 = 1_000;
/// Most metric ids remembered; past it the table starts again (the host
/// answers the same id for a name defined twice). Live rules can bring new
/// service and subset names for ever.
const MAX_METRIC_IDS: usize = 1_024;

/// A rule set in force and the requests counted against it.
pub struct Compiled {
    pub rules: Rules,
    pub counts: RequestCounts,
}

impl Compiled {
    fn new(rules: Rules) -> Rc<Self> {
        Rc::new(Compiled {
            counts: RequestCounts::new(&rules),
            rules,
        })
    }
}

pub struct Root {
    id: u32,
    current: RefCell<Option<Rc<Compiled>>>,
    /// Rule sets replaced since the last tick, kept until their counts are
    /// flushed. Only while the host ticks: without ticks (APISIX) nothing
    /// would flush them, and a replaced set is dropped at once.
    retired: RefCell<Vec<Rc<Compiled>>>,
    ticking: Cell<bool>,
    fetcher: RefCell<Option<Fetcher>>,
    apisix_mode: Cell<bool>,
    metric_ids: RefCell<BTreeMap<String, u32>>,
    /// APISIX has no shared data: its fetcher coordinates with itself.
    local_store: RefCell<LocalStore>,
    /// One sequence per worker, shared by its requests, so that the
    /// unweighted split is exact over the worker's whole stream.
    sequence: Cell<WeylSequence>,
}

impl Root {
    pub fn new(id: u32) -> Self {
        Root {
            id,
            current: RefCell::new(None),
            retired: RefCell::new(Vec::new()),
            ticking: Cell::new(false),
            fetcher: RefCell::new(None),
            apisix_mode: Cell::new(false),
            metric_ids: RefCell::new(BTreeMap::new()),
            local_store: RefCell::new(LocalStore::default()),
            sequence: Cell::new(WeylSequence::new(u64::from(id))),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The rules in force, if configured.
    pub fn current(&self) -> Option<Rc<Compiled>> {
        self.current.borrow().clone()
    }

    pub fn apisix_mode(&self) -> bool {
        self.apisix_mode.get()
    }

    /// The next bucket source for an unsticky split, taken and put back.
    pub fn sequence(&self) -> WeylSequence {
        self.sequence.get()
    }

    pub fn set_sequence(&self, sequence: WeylSequence) {
        self.sequence.set(sequence);
    }

    fn host(&self) -> PluginHost<'_> {
        PluginHost { root: self }
    }

    /// Runs `work` on the fetcher, taken out of its cell for the time, so
    /// that no borrow is held while it calls the host.
    fn with_fetcher<R>(
        &self,
        work: impl FnOnce(&mut Fetcher, &mut PluginHost<'_>) -> R,
    ) -> Option<R> {
        let mut fetcher = self.fetcher.take()?;
        let result = work(&mut fetcher, &mut self.host());
        let mut slot = self.fetcher.borrow_mut();
        // A configuration that came in meanwhile wins.
        if slot.is_none() {
            *slot = Some(fetcher);
        }
        Some(result)
    }

    fn install(&self, installed: Installed) {
        let old = self.current.replace(Some(Compiled::new(installed.rules)));
        if let Some(old) = old {
            if self.ticking.get() {
                self.retired.borrow_mut().push(old);
            }
        }
    }

    pub fn configure(&self, size: usize) -> bool {
        let document = match abi::buffer_bytes(BufferType::PluginConfiguration, size) {
            Ok(document) => document,
            Err(status) => {
                log::error!(
                    "graylane: cannot read the plugin configuration: host status {}",
                    status.code()
                );
                return false;
            }
        };
        let (rules, extensions) = match source::configure(document.bytes()) {
            Ok(configured) => configured,
            Err(errors) => {
                for error in errors.0 {
                    log::error!("graylane: configuration refused: {error}");
                }
                return false;
            }
        };
        drop(document);
        log::info!(
            "graylane: configured {} inline service(s), cluster header {:?}, tag header {:?}{}{} (graylane {})",
            rules.services.len(),
            rules.cluster_header,
            rules.tag_header,
            if extensions.source.is_some() {
                ", rules source configured"
            } else {
                ""
            },
            if extensions.apisix_mode {
                ", APISIX mode"
            } else {
                ""
            },
            graylane_core::VERSION
        );
        let now = now_ms();
        let context = u64::from(self.id);
        self.sequence.set(WeylSequence::new(now ^ context << 48));
        self.apisix_mode.set(extensions.apisix_mode);
        let fetcher = extensions
            .source
            .map(|config| Fetcher::new(config, Base::of(&rules), vm_seed(now) ^ context));
        let tick = fetcher.as_ref().map_or(FLUSH_PERIOD_MS, |fetcher| {
            u32::try_from(fetcher.tick_period_ms()).unwrap_or(FLUSH_PERIOD_MS)
        });
        self.current.replace(Some(Compiled::new(rules)));
        self.retired.take();
        self.fetcher.replace(fetcher);
        self.ticking.set(false);
        if !extensions.apisix_mode {
            // Which build runs, as a gauge of 1 named by its version.
            self.host()
                .gauge(&graylane_core::metrics::build_info_name(), 1);
            // Rules another worker already fetched serve from the start.
            if let Some(installed) = self
                .with_fetcher(|fetcher, host| fetcher.sync(host))
                .flatten()
            {
                self.install(installed);
            }
            match abi::set_tick_period_ms(tick) {
                Ok(()) => self.ticking.set(true),
                Err(status) => {
                    log::warn!(
                        "graylane: the host refused a tick period (status {}): metrics and live rules are off",
                        status.code()
                    );
                }
            }
        }
        true
    }

    pub fn tick(&self) {
        self.flush_counts();
        if let Some(installed) = self
            .with_fetcher(|fetcher, host| fetcher.on_tick(host))
            .flatten()
        {
            self.install(installed);
        }
    }

    /// Another worker stored a document and woke this one.
    pub fn queue_ready(&self, queue: u32) {
        if let Some(installed) = self
            .with_fetcher(|fetcher, host| fetcher.on_queue_ready(host, queue))
            .flatten()
        {
            self.install(installed);
        }
    }

    /// Hands the counted requests to the gateway's metrics, and drops the
    /// replaced rule sets (no request holds one between two callbacks).
    fn flush_counts(&self) {
        let mut host = self.host();
        if let Some(current) = self.current() {
            current.counts.drain(|name, count| host.add(name, count));
        }
        for old in self.retired.take() {
            old.counts.drain(|name, count| host.add(name, count));
        }
    }

    /// APISIX mode: starts a refresh when the rules are due. True when the
    /// request should wait for the answer.
    pub fn refresh_on_request(&self) -> bool {
        self.with_fetcher(|fetcher, host| fetcher.on_request(host))
            .unwrap_or(false)
    }

    /// The request that sent callout `token` is gone, and the callout with it.
    pub fn abandon_callout(&self, token: u32) {
        self.with_fetcher(|fetcher, host| fetcher.abandon(host, token));
    }

    /// A gRPC message for the fetcher (a watch event, a read's answer).
    pub fn grpc_message(&self, token: u32, size: usize) {
        let message = match abi::buffer_bytes(BufferType::GrpcReceiveBuffer, size) {
            Ok(message) => message,
            Err(status) => {
                log::warn!(
                    "graylane: cannot read a gRPC message: host status {}",
                    status.code()
                );
                return;
            }
        };
        let installed = self
            .with_fetcher(|fetcher, host| fetcher.on_grpc_message(host, token, message.bytes()))
            .flatten();
        drop(message);
        if let Some(installed) = installed {
            self.install(installed);
        }
    }

    pub fn grpc_close(&self, token: u32, status: u32) {
        self.with_fetcher(|fetcher, host| fetcher.on_grpc_close(host, token, status));
    }

    /// Reads a callout's answer and hands it to the fetcher.
    pub fn answer_callout(&self, token: u32, headers: usize, body_size: usize) {
        let mut response = CalloutResponse::default();
        let map = if headers > 0 {
            abi::header_map_pairs(MapType::HttpCallResponseHeaders).ok()
        } else {
            None
        };
        let pairs = map
            .as_ref()
            .and_then(|map| parse_header_map(map.bytes()))
            .unwrap_or_default();
        for (name, value) in pairs {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            if name == ":status" {
                response.status = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok());
            } else {
                response.headers.push((name, value.to_vec()));
            }
        }
        drop(map);
        if response.status.is_some() && body_size > 0 {
            if let Ok(body) = abi::buffer_bytes(BufferType::HttpCallResponseBody, body_size) {
                response.body = body.bytes().to_vec();
            }
        }
        let installed = self
            .with_fetcher(|fetcher, host| fetcher.on_response(host, token, &response))
            .flatten();
        if let Some(installed) = installed {
            self.install(installed);
        }
    }
}

/// Tells this VM's fetcher apart from the other workers' (its lease holder
/// id, its wake queue's name): workers configured in the same millisecond
/// with the same context id differ by the OS's random bytes (WASI), which
/// the standard library's hasher keys are drawn from.
fn vm_seed(now: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    now.rotate_left(17) ^ random
}

/// Wall-clock milliseconds: the host's clock, or WASI's where the host
/// answers without setting it (APISIX).
pub fn now_ms() -> u64 {
    match abi::current_time_ns() {
        Ok(nanos) if nanos > 0 => nanos / 1_000_000,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            }),
    }
}

/// The gateway as [`source`] sees it.
pub struct PluginHost<'r> {
    root: &'r Root,
}

impl Clock for PluginHost<'_> {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl HttpCallout for PluginHost<'_> {
    fn dispatch(&mut self, request: &CalloutRequest) -> Result<u32, String> {
        let pairs: Vec<(&[u8], &[u8])> = request
            .headers
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect();
        let headers = serialise_header_map(&pairs).ok_or("headers too large")?;
        let trailers = serialise_header_map(&[]).ok_or("trailers too large")?;
        let timeout = u32::try_from(request.timeout_ms).unwrap_or(u32::MAX);
        let body = request.body.as_deref().unwrap_or_default();
        let token = abi::http_call(&request.upstream, &headers, body, &trailers, timeout)
            .map_err(|status| format!("host status {} (is the cluster defined?)", status.code()))?;
        crate::note_callout(token);
        Ok(token)
    }
}

impl PluginHost<'_> {
    /// Runs `open` with the target as the ABI takes it.
    fn with_grpc_target<R>(
        &self,
        target: &GrpcTarget,
        open: impl FnOnce(&abi::GrpcTarget<'_>) -> Result<R, Status>,
    ) -> Result<R, String> {
        if self.root.apisix_mode.get() {
            return Err("APISIX's host has no gRPC calls".into());
        }
        let pairs: Vec<(&[u8], &[u8])> = target
            .metadata
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect();
        let metadata = serialise_header_map(&pairs).ok_or("metadata too large")?;
        open(&abi::GrpcTarget {
            upstream: &target.upstream,
            service: target.service,
            method: target.method,
            metadata: &metadata,
        })
        .map_err(|status| format!("host status {} (is the cluster defined?)", status.code()))
    }
}

impl GrpcChannel for PluginHost<'_> {
    fn call(&mut self, target: &GrpcTarget, message: &[u8], timeout_ms: u64) -> Result<u32, String> {
        let timeout = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        self.with_grpc_target(target, |target| abi::grpc_call(target, message, timeout))
    }

    fn open_stream(&mut self, target: &GrpcTarget) -> Result<u32, String> {
        self.with_grpc_target(target, abi::grpc_stream)
    }

    fn send(&mut self, stream: u32, message: &[u8]) -> Result<(), String> {
        abi::grpc_send(stream, message).map_err(|status| format!("host status {}", status.code()))
    }

    fn cancel(&mut self, token: u32) {
        // Gone already (the host closed it) is as good as canceled.
        let _ = abi::grpc_cancel(token);
    }
}

fn unavailable(status: Status) -> StoreError {
    StoreError::Unavailable(format!("host status {}", status.code()))
}

impl SharedStore for PluginHost<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        if self.root.apisix_mode.get() {
            return self.root.local_store.borrow().get(key);
        }
        match abi::shared_data(key) {
            Ok(found) => Ok(found.map(|(value, cas)| (value.bytes().to_vec(), cas))),
            Err(status) => Err(unavailable(status)),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.root.apisix_mode.get() {
            return self.root.local_store.borrow_mut().set(key, value, cas);
        }
        abi::set_shared_data(key, value, cas).map_err(|status| {
            if status == Status::CAS_MISMATCH {
                StoreError::CasMismatch
            } else {
                unavailable(status)
            }
        })
    }
}

fn queue_error(status: Status) -> String {
    format!("host status {}", status.code())
}

impl SharedQueue for PluginHost<'_> {
    fn register_queue(&mut self, name: &str) -> Result<u32, String> {
        if self.root.apisix_mode.get() {
            return Err("APISIX mode".into());
        }
        abi::register_shared_queue(name).map_err(queue_error)
    }

    fn enqueue(&mut self, queue: u32, message: &[u8]) -> Result<(), String> {
        if self.root.apisix_mode.get() {
            return Err("APISIX mode".into());
        }
        abi::enqueue_shared_queue(queue, message).map_err(queue_error)
    }

    fn dequeue(&mut self, queue: u32) -> Result<Option<Vec<u8>>, String> {
        abi::dequeue_shared_queue(queue)
            .map(|message| message.map(|buffer| buffer.bytes().to_vec()))
            .map_err(queue_error)
    }
}

impl PluginHost<'_> {
    fn metric_id(&self, metric_type: MetricType, name: &str) -> Option<u32> {
        if self.root.apisix_mode.get() {
            return None;
        }
        let known = self.root.metric_ids.borrow().get(name).copied();
        if known.is_some() {
            return known;
        }
        let id = abi::define_metric(metric_type, name).ok()?;
        let mut ids = self.root.metric_ids.borrow_mut();
        if ids.len() >= MAX_METRIC_IDS {
            ids.clear();
        }
        ids.insert(name.to_string(), id);
        Some(id)
    }
}

impl Metrics for PluginHost<'_> {
    fn add(&mut self, counter: &str, delta: u64) {
        if let Some(id) = self.metric_id(MetricType::Counter, counter) {
            let _ = abi::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn gauge(&mut self, gauge: &str, value: u64) {
        if let Some(id) = self.metric_id(MetricType::Gauge, gauge) {
            let _ = abi::record_metric(id, value);
        }
    }
}

impl Logger for PluginHost<'_> {
    fn log(&mut self, level: log::Level, message: &str) {
        log::log!(level, "{message}");
    }
}
