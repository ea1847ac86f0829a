//! graylane, the plugin: canary (gray) and blue-green routing for API
//! gateways, loaded by Envoy and Apache APISIX as a proxy-wasm module.
//!
//! This crate is only the glue: configuration in `on_configure`, and per request,
//! headers in → [`decide`] → header edits out. No routing logic lives here,
//! and no fetching logic either: [`graylane_core::source::Fetcher`] decides when and
//! what to fetch, through the small host traits this module implements.
//!
//! Per request the plugin only bumps an in-memory counter; the counts reach
//! the gateway's metrics on the root context's tick.
//!
//! `apisix_mode` avoids every call APISIX's wasm-nginx-module does not
//! implement (ticks, shared data, metrics): rules are inline, or refreshed
//! from a request once they are older than the interval.

#![allow(unsafe_code)] // the host calls, in `host`

mod host;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use graylane_core::decision::{decide, HeaderEdit};
use graylane_core::metrics::RequestCounts;
use graylane_core::request::{ip_of_socket_address, parse_header_map, Request};
use graylane_core::rules::Rules;
use graylane_core::source::{
    self, Base, CalloutRequest, CalloutResponse, Clock, Fetcher, HttpCallout, Installed,
    LocalStore, Logger, Metrics, SharedStore, StoreError,
};
use graylane_core::split::WeylSequence;

/// Without a source, metrics are still flushed this often.
const FLUSH_PERIOD_MS: u32 = 1_000;

proxy_wasm::main! {{
    install_logger();
    proxy_wasm::set_root_context(|context_id| Box::new(GraylaneRoot::new(context_id)));
}}

/// A rule set in force and the requests counted against it.
struct Compiled {
    rules: Rules,
    counts: RequestCounts,
}

impl Compiled {
    fn new(rules: Rules) -> Rc<Self> {
        Rc::new(Compiled {
            counts: RequestCounts::new(&rules),
            rules,
        })
    }
}

/// What the root context shares with its requests.
#[derive(Default)]
struct Shared {
    current: RefCell<Option<Rc<Compiled>>>,
    /// Rule sets replaced while requests still held them: their counts are
    /// flushed on the next ticks, then they are dropped.
    retired: RefCell<Vec<Rc<Compiled>>>,
    fetcher: RefCell<Option<Fetcher>>,
    apisix_mode: Cell<bool>,
    metric_ids: RefCell<HashMap<String, u32>>,
    /// APISIX has no shared data: its fetcher coordinates with itself.
    local_store: RefCell<LocalStore>,
    /// One sequence per worker, shared by its requests, so that the
    /// unweighted split is exact over the worker's whole stream.
    sequence: Cell<WeylSequence>,
}

impl Shared {
    fn install(&self, installed: Installed) {
        let fresh = Compiled::new(installed.rules);
        if let Some(old) = self.current.replace(Some(fresh)) {
            self.retired.borrow_mut().push(old);
        }
    }

    fn host(&self) -> PluginHost<'_> {
        PluginHost { shared: self }
    }

    /// Hands the counted requests to the gateway's metrics.
    fn flush_counts(&self) {
        let mut host = self.host();
        if let Some(current) = self.current.borrow().as_ref() {
            current.counts.drain(|name, count| host.add(name, count));
        }
        self.retired.borrow_mut().retain(|old| {
            old.counts.drain(|name, count| host.add(name, count));
            // Still held by a request in progress: keep for the next flush.
            Rc::strong_count(old) > 1
        });
    }
}

/// The gateway as [`source`] sees it.
struct PluginHost<'s> {
    shared: &'s Shared,
}

impl Clock for PluginHost<'_> {
    fn now_ms(&self) -> u64 {
        host::now_ms()
    }
}

impl HttpCallout for PluginHost<'_> {
    fn dispatch(&mut self, request: &CalloutRequest) -> Result<u32, String> {
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        // The SDK's call is used (not a raw one) because only it registers
        // the token, so that the answer reaches this context. It returns an
        // error for the statuses hosts answer (bad argument: unknown
        // cluster; internal failure).
        proxy_wasm::hostcalls::dispatch_http_call(
            &request.upstream,
            headers,
            request.body.as_deref(),
            vec![],
            Duration::from_millis(request.timeout_ms),
        )
        .map_err(|status| format!("host status {status:?} (is the cluster defined?)"))
    }
}

impl SharedStore for PluginHost<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        if self.shared.apisix_mode.get() {
            return self.shared.local_store.borrow().get(key);
        }
        host::get_shared_data(key).map_err(|status| StoreError::Unavailable(format!("{status:?}")))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.shared.apisix_mode.get() {
            return self.shared.local_store.borrow_mut().set(key, value, cas);
        }
        host::set_shared_data(key, value, cas).map_err(|status| {
            if host::is_cas_mismatch(status) {
                StoreError::CasMismatch
            } else {
                StoreError::Unavailable(format!("{status:?}"))
            }
        })
    }
}

impl PluginHost<'_> {
    fn metric_id(&self, metric_type: u32, name: &str) -> Option<u32> {
        if self.shared.apisix_mode.get() {
            return None;
        }
        if let Some(id) = self.shared.metric_ids.borrow().get(name) {
            return Some(*id);
        }
        let id = host::define_metric(metric_type, name).ok()?;
        self.shared
            .metric_ids
            .borrow_mut()
            .insert(name.to_string(), id);
        Some(id)
    }
}

impl Metrics for PluginHost<'_> {
    fn add(&mut self, counter: &str, delta: u64) {
        if let Some(id) = self.metric_id(host::METRIC_COUNTER, counter) {
            let _ = host::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn gauge(&mut self, gauge: &str, value: u64) {
        if let Some(id) = self.metric_id(host::METRIC_GAUGE, gauge) {
            let _ = host::record_metric(id, value);
        }
    }
}

impl Logger for PluginHost<'_> {
    fn log(&mut self, level: log::Level, message: &str) {
        log::log!(level, "{message}");
    }
}

struct GraylaneRoot {
    context_id: u32,
    shared: Rc<Shared>,
}

impl GraylaneRoot {
    fn new(context_id: u32) -> Self {
        GraylaneRoot {
            context_id,
            shared: Rc::new(Shared::default()),
        }
    }
}

impl Context for GraylaneRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        answer_callout(&self.shared, token, num_headers, body_size);
    }
}

impl RootContext for GraylaneRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let document = match host::plugin_configuration(plugin_configuration_size) {
            Ok(bytes) => bytes,
            Err(status) => {
                log::error!(
                    "graylane: cannot read the plugin configuration: host status {}",
                    status.0
                );
                return false;
            }
        };
        let (rules, extensions) = match source::configure(&document) {
            Ok(configured) => configured,
            Err(errors) => {
                for error in errors.0 {
                    log::error!("graylane: configuration refused: {error}");
                }
                return false;
            }
        };
        log::info!(
            "graylane: configured {} inline service(s), cluster header {:?}, tag header {:?}{}{}",
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
            }
        );
        let now = host::now_ms();
        self.shared
            .sequence
            .set(WeylSequence::new(now ^ u64::from(self.context_id) << 48));
        self.shared.apisix_mode.set(extensions.apisix_mode);
        let fetcher = extensions.source.map(|config| {
            Fetcher::new(
                config,
                Base::of(&rules),
                now.rotate_left(17) ^ u64::from(self.context_id),
            )
        });
        self.shared.current.replace(Some(Compiled::new(rules)));
        self.shared.retired.borrow_mut().clear();
        let tick = fetcher
            .as_ref()
            .map_or(FLUSH_PERIOD_MS, |f| f.tick_period_ms() as u32);
        self.shared.fetcher.replace(fetcher);
        if !extensions.apisix_mode {
            // Rules another worker already fetched serve from the start.
            let adopted = self
                .shared
                .fetcher
                .borrow_mut()
                .as_mut()
                .and_then(|fetcher| fetcher.sync(&mut self.shared.host()));
            if let Some(installed) = adopted {
                self.shared.install(installed);
            }
            if let Err(status) = host::set_tick_period_ms(tick) {
                log::warn!(
                    "graylane: the host refused a tick period (status {}): metrics and live rules are off",
                    status.0
                );
            }
        }
        true
    }

    fn on_tick(&mut self) {
        self.shared.flush_counts();
        let installed = self
            .shared
            .fetcher
            .borrow_mut()
            .as_mut()
            .and_then(|fetcher| fetcher.on_tick(&mut self.shared.host()));
        if let Some(installed) = installed {
            self.shared.install(installed);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GraylaneRequest {
            shared: Rc::clone(&self.shared),
            waiting: false,
        }))
    }
}

/// Reads a callout's answer and hands it to the fetcher.
fn answer_callout(shared: &Shared, token: u32, num_headers: usize, body_size: usize) {
    let headers = if num_headers > 0 {
        host::http_call_response_headers().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut response = CalloutResponse::default();
    for (name, value) in parse_header_map(&headers).unwrap_or_default() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if name == ":status" {
            response.status = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok());
        } else {
            response.headers.push((name, value.to_vec()));
        }
    }
    if response.status.is_some() {
        response.body = host::http_call_response_body(body_size).unwrap_or_default();
    }
    let installed = shared
        .fetcher
        .borrow_mut()
        .as_mut()
        .and_then(|fetcher| fetcher.on_response(&mut shared.host(), token, &response));
    if let Some(installed) = installed {
        shared.install(installed);
    }
}

struct GraylaneRequest {
    shared: Rc<Shared>,
    /// A refresh (APISIX mode) holds this request until it is answered.
    waiting: bool,
}

impl Context for GraylaneRequest {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        answer_callout(&self.shared, token, num_headers, body_size);
        if self.waiting {
            self.waiting = false;
            if let Err(status) = host::resume_http_request() {
                log::warn!(
                    "graylane: cannot resume the request after a refresh: host status {}",
                    status.0
                );
            }
        }
    }
}

impl HttpContext for GraylaneRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(compiled) = self.shared.current.borrow().clone() else {
            // Not configured: the host refuses to run a filter whose
            // on_configure failed, so this is only reachable through a host
            // bug. Refuse rather than forward a client's own cluster header.
            return self.refuse("graylane has no configuration");
        };
        let rules = &compiled.rules;
        let buffer = match host::request_header_map() {
            Ok(buffer) => buffer,
            Err(status) => {
                return self.refuse(&format!(
                    "cannot read request headers: host status {}",
                    status.0
                ))
            }
        };
        let Some(pairs) = parse_header_map(&buffer) else {
            return self.refuse("the host's header map is malformed");
        };
        let source_address = if rules.needs_source_ip {
            // Envoy's `source.address`; APISIX's wasm-nginx-module looks a
            // property up as one nginx variable, where it is `remote_addr`.
            host::property(&["source", "address"])
                .ok()
                .flatten()
                .or_else(|| host::property(&["remote_addr"]).ok().flatten())
        } else {
            None
        };
        let request = Request::new(&pairs)
            .with_source_ip(source_address.as_deref().map(ip_of_socket_address));

        let mut sequence = self.shared.sequence.get();
        let decision = decide(rules, &request, &mut sequence);
        self.shared.sequence.set(sequence);

        for edit in &decision.edits {
            let applied = match edit {
                HeaderEdit::Remove(name) => host::remove_request_header(name),
                HeaderEdit::Set(name, value) => host::set_request_header(name, value),
                HeaderEdit::SetOwned(name, value) => host::set_request_header(name, value),
            };
            if let Err(status) = applied {
                // A header the plugin could not strip or set could let a
                // client's own cluster choice through: stop the request.
                return self.refuse(&format!(
                    "cannot edit header {edit:?}: host status {}",
                    status.0
                ));
            }
        }
        if let (Some(service), Some(subset)) = (decision.service, decision.subset) {
            compiled.counts.record(service, subset);
        }
        if self.shared.apisix_mode.get() {
            // No ticks: the request that finds the rules due for a refresh
            // fetches them, routed already by the rules in force, and goes on
            // once the answer (or the timeout) is in.
            let started = self
                .shared
                .fetcher
                .borrow_mut()
                .as_mut()
                .is_some_and(|fetcher| fetcher.on_request(&mut self.shared.host()));
            if started {
                self.waiting = true;
                return Action::Pause;
            }
        }
        Action::Continue
    }
}

impl GraylaneRequest {
    fn refuse(&self, why: &str) -> Action {
        log::error!("graylane: {why}; answering 503");
        if let Err(status) = proxy_wasm::hostcalls::send_http_response(
            503,
            vec![("x-graylane-error", "1")],
            Some(b"graylane: routing unavailable\n"),
        ) {
            log::error!("graylane: cannot send the 503 either: {status:?}");
        }
        Action::Pause
    }
}

/// The SDK's logger unwraps the host's answer to every log call; this one
/// drops a line the host will not take instead of taking the worker down.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = proxy_wasm::hostcalls::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

fn install_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("graylane: {info}"));
    }));
}
