//! graylane, the plugin: canary (gray) and blue-green routing for API
//! gateways, loaded by Envoy and Apache APISIX as a proxy-wasm module.
//!
//! This crate is only the glue, on the proxy-wasm ABI 0.2.1 without an SDK:
//! configuration in `on_configure`, and per request, headers in →
//! [`graylane_core::decision::decide`] → header edits out. No routing logic
//! lives here, and no fetching logic either:
//! [`graylane_core::source::Fetcher`] decides when and what to fetch,
//! through the small host traits [`root::PluginHost`] implements.
//!
//! - [`abi`]: the exports the gateway calls and the host calls, the only
//!   `unsafe` code; every host status is a value.
//! - this module: the VM's contexts (roots, requests, callouts in flight),
//!   the logger.
//! - [`root`]: one plugin configuration: rules, fetcher, metrics.
//! - [`routing`]: one request's headers.
//!
//! Per request the plugin only bumps an in-memory counter; the counts reach
//! the gateway's metrics on the root context's tick.
//!
//! `apisix_mode` avoids every call APISIX's wasm-nginx-module does not
//! implement (ticks, shared data, metrics): rules are inline, or refreshed
//! from a request once they are older than the interval.

mod abi;
mod root;
mod routing;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use abi::{Action, LogLevel};
use root::Root;
use routing::Outcome;

/// A request (HTTP context) in progress.
struct RequestContext {
    root: Rc<Root>,
    /// Paused until a refresh it started is answered (APISIX mode).
    waiting: bool,
    /// Paused for its form body, up to this many bytes (rules with `form`).
    body_cap: Option<usize>,
}

/// Everything the VM keeps between callbacks. Each field is borrowed only
/// for a lookup or an update, never while the host is called.
#[derive(Default)]
struct Vm {
    roots: RefCell<Vec<Rc<Root>>>,
    requests: RefCell<HashMap<u32, RequestContext, BuildHasherDefault<IdHasher>>>,
    /// Callouts in flight: (token, context that sent it). Hosts that answer
    /// on the root context (APISIX) are routed back to the request.
    callouts: RefCell<Vec<(u32, u32)>>,
    /// The context whose callback is running.
    active: Cell<u32>,
}

thread_local! {
    static VM: Vm = Vm::default();
}

/// Context ids are small distinct integers: a multiply spreads them.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*byte));
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn root_by_id(vm: &Vm, id: u32) -> Option<Rc<Root>> {
    vm.roots
        .borrow()
        .iter()
        .find(|root| root.id() == id)
        .cloned()
}

/// The root context whose callback starts now.
fn enter_root(context_id: u32) -> Option<Rc<Root>> {
    VM.with(|vm| {
        vm.active.set(context_id);
        root_by_id(vm, context_id)
    })
}

fn on_vm_start() {
    install_logger();
}

fn on_context_create(context_id: u32, parent_context_id: u32) {
    VM.with(|vm| {
        vm.active.set(context_id);
        if parent_context_id == 0 {
            install_logger();
            let mut roots = vm.roots.borrow_mut();
            roots.retain(|root| root.id() != context_id);
            roots.push(Rc::new(Root::new(context_id)));
        } else if let Some(root) = root_by_id(vm, parent_context_id) {
            vm.requests.borrow_mut().insert(
                context_id,
                RequestContext {
                    root,
                    waiting: false,
                    body_cap: None,
                },
            );
        }
    });
}

fn on_configure(root_context_id: u32, configuration_size: usize) -> bool {
    enter_root(root_context_id).is_some_and(|root| root.configure(configuration_size))
}

fn on_tick(root_context_id: u32) {
    if let Some(root) = enter_root(root_context_id) {
        root.tick();
    }
}

fn on_queue_ready(root_context_id: u32, queue: u32) {
    let root = VM.with(|vm| {
        vm.active.set(root_context_id);
        root_by_id(vm, root_context_id)
    });
    if let Some(root) = root {
        root.queue_ready(queue);
    }
}

fn on_request_headers(context_id: u32, end_of_stream: bool) -> Action {
    let root = VM.with(|vm| {
        vm.active.set(context_id);
        vm.requests
            .borrow()
            .get(&context_id)
            .map(|request| Rc::clone(&request.root))
    });
    let outcome = match root {
        Some(root) => routing::on_request_headers(&root, end_of_stream),
        // A request of no root this VM knows: nothing to route it by.
        None => routing::on_request_headers(&Root::new(0), end_of_stream),
    };
    action_of(context_id, outcome)
}

/// What the host is told to do with the request after `outcome`.
fn action_of(context_id: u32, outcome: Outcome) -> Action {
    match outcome {
        Outcome::WaitForBody(cap) => {
            VM.with(|vm| {
                if let Some(request) = vm.requests.borrow_mut().get_mut(&context_id) {
                    request.body_cap = Some(cap);
                }
            });
            Action::Pause
        }
        Outcome::Continue => Action::Continue,
        Outcome::Refused => Action::Pause,
        Outcome::WaitForRefresh => {
            VM.with(|vm| {
                if let Some(request) = vm.requests.borrow_mut().get_mut(&context_id) {
                    request.waiting = true;
                }
            });
            Action::Pause
        }
    }
}

/// The request's body so far: buffered while the request waits for its form
/// body, decided on at its end or once past the cap. Any other request, and
/// the empty end-of-stream call HTTP/1.1 makes after the last bytes, go on.
fn on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action {
    let Some((root, cap)) = body_waiter(context_id) else {
        return Action::Continue;
    };
    if body_size <= cap && !end_of_stream {
        return Action::Pause;
    }
    finish_body(context_id, &root, cap)
}

/// Trailers end the body: decide on what came.
fn on_request_trailers(context_id: u32) -> Action {
    match body_waiter(context_id) {
        Some((root, cap)) => finish_body(context_id, &root, cap),
        None => Action::Continue,
    }
}

/// The root and cap of a request waiting for its body.
fn body_waiter(context_id: u32) -> Option<(Rc<Root>, usize)> {
    VM.with(|vm| {
        vm.active.set(context_id);
        let requests = vm.requests.borrow();
        let request = requests.get(&context_id)?;
        Some((Rc::clone(&request.root), request.body_cap?))
    })
}

fn finish_body(context_id: u32, root: &Root, cap: usize) -> Action {
    VM.with(|vm| {
        if let Some(request) = vm.requests.borrow_mut().get_mut(&context_id) {
            request.body_cap = None;
        }
    });
    action_of(context_id, routing::on_request_body_end(root, cap))
}

/// Most callouts remembered; past it the oldest is forgotten (a host that
/// never answers a callout must not grow the table for ever; the fetcher
/// gives up on it by itself).
const MAX_CALLOUTS: usize = 64;

/// Records which context sent the callout `token` (the one whose callback
/// is running).
fn note_callout(token: u32) {
    VM.with(|vm| {
        let sender = vm.active.get();
        let mut callouts = vm.callouts.borrow_mut();
        if callouts.len() >= MAX_CALLOUTS {
            callouts.remove(0);
        }
        callouts.push((token, sender));
    });
}

fn on_http_call_response(context_id: u32, token: u32, headers: usize, body_size: usize) {
    // The sender, as recorded; else the context the host names.
    let (sender, root, waiting) = VM.with(|vm| {
        let sender = {
            let mut callouts = vm.callouts.borrow_mut();
            match callouts.iter().position(|(t, _)| *t == token) {
                Some(at) => callouts.remove(at).1,
                None => context_id,
            }
        };
        vm.active.set(sender);
        let request = vm
            .requests
            .borrow_mut()
            .get_mut(&sender)
            .map(|request| (Rc::clone(&request.root), std::mem::take(&mut request.waiting)));
        match request {
            Some((root, waiting)) => (sender, Some(root), waiting),
            None => (sender, root_by_id(vm, sender), false),
        }
    });
    let Some(root) = root else {
        return;
    };
    // Read while the host's own context is in effect: the answer is there.
    root.answer_callout(token, headers, body_size);
    if waiting {
        // The request to resume is not the context the answer came on.
        if sender != context_id {
            if let Err(status) = abi::set_effective_context(sender) {
                log::warn!(
                    "graylane: cannot switch to the waiting request: host status {}",
                    status.code()
                );
            }
        }
        if let Err(status) = abi::continue_request() {
            log::warn!(
                "graylane: cannot resume the request after a refresh: host status {}",
                status.code()
            );
        }
    }
}

/// gRPC answers come to the root context that opened the call or stream.
fn on_grpc_receive(context_id: u32, token: u32, size: usize) {
    if let Some(root) = enter_root(context_id) {
        root.grpc_message(token, size);
    }
}

fn on_grpc_close(context_id: u32, token: u32, status_code: u32) {
    if let Some(root) = enter_root(context_id) {
        root.grpc_close(token, status_code);
    }
}

fn on_delete(context_id: u32) {
    let (request, root, abandoned) = VM.with(|vm| {
        let mut abandoned = Vec::new();
        vm.callouts.borrow_mut().retain(|(token, sender)| {
            let mine = *sender == context_id;
            if mine {
                abandoned.push(*token);
            }
            !mine
        });
        let request = vm.requests.borrow_mut().remove(&context_id);
        let mut roots = vm.roots.borrow_mut();
        let root = roots
            .iter()
            .position(|root| root.id() == context_id)
            .map(|at| roots.swap_remove(at));
        (request, root, abandoned)
    });
    // A request that goes (its client hung up) while it waits for a refresh
    // takes the host's callout with it (APISIX): the fetcher hands the lease
    // back at once, so the next request fetches instead of waiting out the
    // timeout; hang-ups cannot stall a rule change. Out of every borrow.
    if let Some(request) = &request {
        for token in abandoned {
            request.root.abandon_callout(token);
        }
    }
    drop((request, root));
}

/// Log lines go to the host's log; a line the host will not take is
/// dropped, never a reason to stop.
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
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

fn install_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        std::panic::set_hook(Box::new(|info| {
            let _ = abi::log(LogLevel::Critical, &format!("graylane: {info}"));
        }));
    }
}
