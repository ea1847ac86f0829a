//! The proxy-wasm glue: configuration in `on_configure`, and per request,
//! headers in → [`decide`] → header edits out. No routing logic lives here.

mod host;

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

use crate::config;
use crate::decision::{decide, HeaderEdit};
use crate::request::{ip_of_socket_address, parse_header_map, Request};
use crate::rules::Rules;
use crate::split::WeylSequence;

proxy_wasm::main! {{
    install_logger();
    proxy_wasm::set_root_context(|_| Box::new(GraylaneRoot::default()));
}}

#[derive(Default)]
struct GraylaneRoot {
    rules: Option<Rc<Rules>>,
    /// One sequence per worker, shared by its requests, so that the
    /// unweighted split is exact over the worker's whole stream.
    sequence: Rc<Cell<WeylSequence>>,
}

impl Context for GraylaneRoot {}

impl RootContext for GraylaneRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let document = match proxy_wasm::hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                log::error!(
                    "graylane: cannot read the plugin configuration: host status {status:?}"
                );
                return false;
            }
        };
        match config::compile(&document) {
            Ok(rules) => {
                log::info!(
                    "graylane: configured {} service(s), cluster header {:?}, tag header {:?}",
                    rules.services.len(),
                    rules.cluster_header,
                    rules.tag_header
                );
                self.rules = Some(Rc::new(rules));
                self.sequence.set(WeylSequence::new(clock_seed()));
                true
            }
            Err(errors) => {
                for error in &errors.0 {
                    log::error!("graylane: configuration refused: {error}");
                }
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GraylaneRequest {
            rules: self.rules.clone(),
            sequence: Rc::clone(&self.sequence),
        }))
    }
}

struct GraylaneRequest {
    rules: Option<Rc<Rules>>,
    sequence: Rc<Cell<WeylSequence>>,
}

impl Context for GraylaneRequest {}

impl HttpContext for GraylaneRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rules) = self.rules.as_deref() else {
            // Not configured: the host refuses to run a filter whose
            // on_configure failed, so this is only reachable through a host
            // bug. Refuse rather than forward a client's own cluster header.
            return self.refuse("graylane has no configuration");
        };
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
            host::property(&["source", "address"]).ok().flatten()
        } else {
            None
        };
        let request = Request::new(&pairs)
            .with_source_ip(source_address.as_deref().map(ip_of_socket_address));

        let mut sequence = self.sequence.get();
        let decision = decide(rules, &request, &mut sequence);
        self.sequence.set(sequence);

        for edit in &decision.edits {
            let applied = match edit {
                HeaderEdit::Remove(name) => host::remove_request_header(name),
                HeaderEdit::Set(name, value) => host::set_request_header(name, value),
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

fn clock_seed() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The SDK's logger unwraps the host's answer to every log call; this one
/// drops a line the host will not take instead of taking the worker down.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
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
