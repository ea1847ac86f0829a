//! The built graylane.wasm under a proxy-wasm host written here (wasmtime):
//! every host call the plugin imports is answered by the test, as Envoy or
//! APISIX's host would answer it, or with a failing status chosen by the
//! test. The tests count the calls the plugin makes (how many, which) on
//! configure, on each request, on ticks and on callout answers, and check
//! that no host answer, however bad, makes the module trap.
//!
//! The module is built for wasm32-wasip1; the few WASI functions its
//! standard library imports are stubbed (see `WASI`).

// A test may unwrap and index: a failure is what it is there to show.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::OnceLock;

use serde_json::{json, Value};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Module, Store};

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const UNIMPLEMENTED: i32 = 12;
/// Statuses each host call is made to fail with in turn.
const FAILURES: [i32; 4] = [NOT_FOUND, 2, 10, UNIMPLEMENTED];

const ROOT: i32 = 1;
const CLUSTER: &str = "x-graylane-cluster";
const TAG: &str = "x-gray-tag";

/// The WASI functions the module may import; each answers "nothing": no
/// environment, a clock, no output.
const WASI: [&str; 6] = [
    "random_get",
    "environ_get",
    "environ_sizes_get",
    "clock_time_get",
    "fd_write",
    "proc_exit",
];

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// One HTTP callout the plugin sent.
#[derive(Debug, Clone)]
struct Callout {
    upstream: String,
    headers: Headers,
    timeout_ms: u32,
}

/// The scripted host: what it answers and what it saw.
#[derive(Default)]
struct Host {
    /// Every host call, by import name, in order.
    calls: Vec<String>,
    /// Fail the host call of this ordinal (over `calls`) with this status.
    fail_at: Option<(usize, i32)>,
    /// Calls this host does not implement (APISIX: ticks, shared data, time).
    unimplemented: BTreeSet<&'static str>,
    /// Show at most this many request headers, pseudo headers apart (APISIX).
    header_cap: Option<usize>,
    configuration: Vec<u8>,
    /// The request headers, as edited by the plugin.
    request: Headers,
    call_headers: Headers,
    call_body: Vec<u8>,
    /// The request body buffered so far (buffer type 0).
    request_body: Vec<u8>,
    properties: BTreeMap<Vec<u8>, Vec<u8>>,
    shared: BTreeMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Shared queues by id: (name, messages); ids from 1.
    queues: BTreeMap<u32, (Vec<u8>, VecDeque<Vec<u8>>)>,
    next_token: u32,
    callouts: Vec<Callout>,
    local_replies: Vec<u32>,
    logs: Vec<(i32, String)>,
    tick_period: Option<u32>,
    metric_names: Vec<String>,
    metric_values: BTreeMap<u32, i64>,
    /// gRPC: calls and streams opened (token, service/method), messages sent
    /// (token, bytes), tokens canceled; the message `proxy_on_grpc_receive`
    /// hands over.
    grpc_opened: Vec<(i32, String)>,
    grpc_sent: Vec<(i32, Vec<u8>)>,
    grpc_canceled: Vec<i32>,
    grpc_message: Vec<u8>,
    /// The contexts resumed by `proxy_continue_stream`.
    resumed: Vec<i32>,
    /// The context host calls act on: the one whose callback runs, or the
    /// one `proxy_set_effective_context` named.
    current: i32,
    now_ns: u64,
}

impl Host {
    /// Records a call; returns the status to fail it with, if any.
    fn enter(&mut self, name: &'static str) -> Option<i32> {
        self.calls.push(name.to_string());
        match self.fail_at {
            Some((at, status)) if at + 1 == self.calls.len() => return Some(status),
            _ => {}
        }
        self.unimplemented.contains(name).then_some(UNIMPLEMENTED)
    }

    fn header_cap_view(&self) -> Headers {
        let mut shown = 0;
        self.request
            .iter()
            .filter(|(name, _)| {
                if name.starts_with(b":") {
                    return true;
                }
                shown += 1;
                self.header_cap.is_none_or(|cap| shown <= cap)
            })
            .cloned()
            .collect()
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.request
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Guest memory.

type Ctx<'a> = Caller<'a, Host>;

fn memory(caller: &mut Ctx<'_>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| wasmtime::format_err!("the module exports no memory"))
}

fn read(caller: &mut Ctx<'_>, at: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let mut bytes = vec![0; len as u32 as usize];
    memory(caller)?.read(&*caller, at as u32 as usize, &mut bytes)?;
    Ok(bytes)
}

fn read_str(caller: &mut Ctx<'_>, at: i32, len: i32) -> wasmtime::Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, at, len)?).into_owned())
}

fn write(caller: &mut Ctx<'_>, at: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    memory(caller)?.write(&mut *caller, at as u32 as usize, bytes)?;
    Ok(())
}

fn write_u32(caller: &mut Ctx<'_>, at: i32, value: u32) -> wasmtime::Result<()> {
    write(caller, at, &value.to_le_bytes())
}

/// Hands the plugin a buffer as hosts do: allocated through the module's
/// `proxy_on_memory_allocate`, its address and size written to `data_out`
/// and `size_out`.
fn give(caller: &mut Ctx<'_>, bytes: &[u8], data_out: i32, size_out: i32) -> wasmtime::Result<i32> {
    let allocate = caller
        .get_export("proxy_on_memory_allocate")
        .and_then(Extern::into_func)
        .ok_or_else(|| wasmtime::format_err!("no proxy_on_memory_allocate"))?
        .typed::<i32, i32>(&*caller)?;
    let len = i32::try_from(bytes.len())?;
    let at = allocate.call(&mut *caller, len)?;
    if at == 0 {
        return Ok(10);
    }
    write(caller, at, bytes)?;
    write_u32(caller, data_out, at as u32)?;
    write_u32(caller, size_out, len as u32)?;
    Ok(OK)
}

fn serialise(pairs: &Headers) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .collect();
    graylane_core::request::serialise_header_map(&pairs).unwrap()
}

fn parse(bytes: &[u8]) -> Headers {
    graylane_core::request::parse_header_map(bytes)
        .unwrap()
        .into_iter()
        .map(|(name, value)| (name.to_vec(), value.to_vec()))
        .collect()
}

// ---------------------------------------------------------------------------
// The host functions.

/// `service/method` of a gRPC call, read from the guest.
fn grpc_name(caller: &mut Ctx<'_>, service: (i32, i32), method: (i32, i32)) -> wasmtime::Result<String> {
    Ok(format!(
        "{}/{}",
        read_str(caller, service.0, service.1)?,
        read_str(caller, method.0, method.1)?
    ))
}

macro_rules! fail {
    ($caller:expr, $name:literal) => {
        if let Some(status) = $caller.data_mut().enter($name) {
            return Ok(status);
        }
    };
}

fn link(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut caller: Ctx<'_>, level: i32, at: i32, len: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_log");
            let message = read_str(&mut caller, at, len)?;
            caller.data_mut().logs.push((level, message));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Ctx<'_>, map: i32, data: i32, size: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_get_header_map_pairs");
            let pairs = match map {
                0 => caller.data().header_cap_view(),
                6 => caller.data().call_headers.clone(),
                _ => return Ok(2),
            };
            give(&mut caller, &serialise(&pairs), data, size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Ctx<'_>,
         map: i32,
         key: i32,
         key_len: i32,
         data: i32,
         size: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_get_header_map_value");
            if map != 0 {
                return Ok(2);
            }
            let key = read_str(&mut caller, key, key_len)?;
            let found = caller.data().values(&key).into_iter().next();
            match found {
                Some(value) => give(&mut caller, value.as_bytes(), data, size),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut caller: Ctx<'_>,
         map: i32,
         key: i32,
         key_len: i32,
         value: i32,
         value_len: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_replace_header_map_value");
            if map != 0 {
                return Ok(2);
            }
            let key = read(&mut caller, key, key_len)?;
            let value = read(&mut caller, value, value_len)?;
            // As Envoy: every value goes, one is added.
            let request = &mut caller.data_mut().request;
            request.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
            request.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Ctx<'_>, map: i32, key: i32, key_len: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_remove_header_map_value");
            if map != 0 {
                return Ok(2);
            }
            let key = read(&mut caller, key, key_len)?;
            let request = &mut caller.data_mut().request;
            request.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Ctx<'_>,
         path: i32,
         path_len: i32,
         data: i32,
         size: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_get_property");
            let path = read(&mut caller, path, path_len)?;
            let found = caller.data().properties.get(&path).cloned();
            match found {
                Some(value) => give(&mut caller, &value, data, size),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Ctx<'_>,
         buffer: i32,
         start: i32,
         max: i32,
         data: i32,
         size: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_get_buffer_bytes");
            let bytes = match buffer {
                0 => caller.data().request_body.clone(),
                4 => caller.data().call_body.clone(),
                5 => caller.data().grpc_message.clone(),
                7 => caller.data().configuration.clone(),
                _ => return Ok(2),
            };
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(max as usize).min(bytes.len());
            give(&mut caller, &bytes[start..end], data, size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Ctx<'_>,
         status: i32,
         _details: i32,
         _details_len: i32,
         _body: i32,
         _body_len: i32,
         headers: i32,
         headers_len: i32,
         _grpc: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_send_local_response");
            let headers = parse(&read(&mut caller, headers, headers_len)?);
            // A refusal says so; the reply to an unclaimed request (a
            // service without a default) carries no header.
            if status == 503 {
                assert_eq!(headers, [(b"x-graylane-error".to_vec(), b"1".to_vec())]);
            } else {
                assert!(headers.is_empty(), "{headers:?}");
            }
            caller.data_mut().local_replies.push(status as u32);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Ctx<'_>,
         upstream: i32,
         upstream_len: i32,
         headers: i32,
         headers_len: i32,
         _body: i32,
         _body_len: i32,
         trailers: i32,
         trailers_len: i32,
         timeout_ms: i32,
         token_out: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_http_call");
            let upstream = read_str(&mut caller, upstream, upstream_len)?;
            let headers = parse(&read(&mut caller, headers, headers_len)?);
            assert!(parse(&read(&mut caller, trailers, trailers_len)?).is_empty());
            let host = caller.data_mut();
            host.next_token += 1;
            let token = host.next_token;
            host.callouts.push(Callout {
                upstream,
                headers,
                timeout_ms: timeout_ms as u32,
            });
            write_u32(&mut caller, token_out, token)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Ctx<'_>,
         _upstream: i32,
         _upstream_len: i32,
         service: i32,
         service_len: i32,
         method: i32,
         method_len: i32,
         _metadata: i32,
         _metadata_len: i32,
         message: i32,
         message_len: i32,
         _timeout_ms: i32,
         token_out: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_grpc_call");
            let name = grpc_name(&mut caller, (service, service_len), (method, method_len))?;
            let message = read(&mut caller, message, message_len)?;
            let host = caller.data_mut();
            host.next_token += 1;
            let token = host.next_token as i32;
            host.grpc_opened.push((token, name));
            host.grpc_sent.push((token, message));
            write_u32(&mut caller, token_out, token as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: Ctx<'_>,
         _upstream: i32,
         _upstream_len: i32,
         service: i32,
         service_len: i32,
         method: i32,
         method_len: i32,
         _metadata: i32,
         _metadata_len: i32,
         token_out: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_grpc_stream");
            let name = grpc_name(&mut caller, (service, service_len), (method, method_len))?;
            let host = caller.data_mut();
            host.next_token += 1;
            let token = host.next_token as i32;
            host.grpc_opened.push((token, name));
            write_u32(&mut caller, token_out, token as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: Ctx<'_>,
         token: i32,
         message: i32,
         message_len: i32,
         end_stream: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_grpc_send");
            assert_eq!(end_stream, 0, "the watch stream stays open");
            let message = read(&mut caller, message, message_len)?;
            caller.data_mut().grpc_sent.push((token, message));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut caller: Ctx<'_>, token: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_grpc_cancel");
            caller.data_mut().grpc_canceled.push(token);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: Ctx<'_>, stream: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_continue_stream");
            assert_eq!(stream, 0, "only the request is ever resumed");
            let host = caller.data_mut();
            host.resumed.push(host.current);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: Ctx<'_>, context: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_set_effective_context");
            caller.data_mut().current = context;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Ctx<'_>, period: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_set_tick_period_milliseconds");
            caller.data_mut().tick_period = Some(period as u32);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Ctx<'_>, out: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_get_current_time_nanoseconds");
            let now = caller.data().now_ns;
            write(&mut caller, out, &now.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Ctx<'_>,
         key: i32,
         key_len: i32,
         data: i32,
         size: i32,
         cas_out: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_get_shared_data");
            let key = read(&mut caller, key, key_len)?;
            let Some((value, cas)) = caller.data().shared.get(&key).cloned() else {
                return Ok(NOT_FOUND);
            };
            write_u32(&mut caller, cas_out, cas)?;
            give(&mut caller, &value, data, size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut caller: Ctx<'_>,
         key: i32,
         key_len: i32,
         value: i32,
         value_len: i32,
         cas: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_set_shared_data");
            let key = read(&mut caller, key, key_len)?;
            let value = read(&mut caller, value, value_len)?;
            let host = caller.data_mut();
            if let Some((_, current)) = host.shared.get(&key) {
                if cas != 0 && cas as u32 != *current {
                    return Ok(8);
                }
            }
            host.next_cas += 1;
            let next = host.next_cas;
            host.shared.insert(key, (value, next));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Ctx<'_>, name: i32, name_len: i32, id_out: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_register_shared_queue");
            let name = read(&mut caller, name, name_len)?;
            let queues = &mut caller.data_mut().queues;
            let id = match queues.iter().find(|(_, (known, _))| *known == name) {
                Some((id, _)) => *id,
                None => {
                    let id = queues.len() as u32 + 1;
                    queues.insert(id, (name, VecDeque::new()));
                    id
                }
            };
            write_u32(&mut caller, id_out, id)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut caller: Ctx<'_>, id: i32, value: i32, value_len: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_enqueue_shared_queue");
            let value = read(&mut caller, value, value_len)?;
            match caller.data_mut().queues.get_mut(&(id as u32)) {
                Some((_, messages)) => {
                    messages.push_back(value);
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Ctx<'_>, id: i32, data: i32, size: i32| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_dequeue_shared_queue");
            let message = match caller.data_mut().queues.get_mut(&(id as u32)) {
                Some((_, messages)) => messages.pop_front(),
                None => return Ok(NOT_FOUND),
            };
            match message {
                Some(message) => give(&mut caller, &message, data, size),
                None => Ok(7), // empty
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Ctx<'_>,
         _kind: i32,
         name: i32,
         name_len: i32,
         id_out: i32|
         -> wasmtime::Result<i32> {
            fail!(caller, "proxy_define_metric");
            let name = read_str(&mut caller, name, name_len)?;
            let names = &mut caller.data_mut().metric_names;
            let id = match names.iter().position(|known| *known == name) {
                Some(at) => at,
                None => {
                    names.push(name);
                    names.len() - 1
                }
            };
            write_u32(&mut caller, id_out, id as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut caller: Ctx<'_>, id: i32, delta: i64| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_increment_metric");
            *caller
                .data_mut()
                .metric_values
                .entry(id as u32)
                .or_default() += delta;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut caller: Ctx<'_>, id: i32, value: i64| -> wasmtime::Result<i32> {
            fail!(caller, "proxy_record_metric");
            caller.data_mut().metric_values.insert(id as u32, value);
            Ok(OK)
        },
    )?;
    // WASI, as little as the standard library needs.
    let wasi = "wasi_snapshot_preview1";
    linker.func_wrap(
        wasi,
        "random_get",
        |mut caller: Ctx<'_>, at: i32, len: i32| {
            write(&mut caller, at, &vec![7; len as usize])?;
            wasmtime::Result::<i32>::Ok(0)
        },
    )?;
    linker.func_wrap(wasi, "environ_get", |_: Ctx<'_>, _: i32, _: i32| 0i32)?;
    linker.func_wrap(
        wasi,
        "environ_sizes_get",
        |mut caller: Ctx<'_>, count: i32, size: i32| {
            write_u32(&mut caller, count, 0)?;
            write_u32(&mut caller, size, 0)?;
            wasmtime::Result::<i32>::Ok(0)
        },
    )?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut caller: Ctx<'_>, _id: i32, _precision: i64, out: i32| {
            caller.data_mut().calls.push("clock_time_get".into());
            let now: u64 = 1_700_000_000_000_000_000;
            write(&mut caller, out, &now.to_le_bytes())?;
            wasmtime::Result::<i32>::Ok(0)
        },
    )?;
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut caller: Ctx<'_>, _fd: i32, _iovs: i32, _count: i32, written: i32| {
            caller.data_mut().calls.push("fd_write".into());
            write_u32(&mut caller, written, 0)?;
            wasmtime::Result::<i32>::Ok(8) // EBADF: no output here
        },
    )?;
    linker.func_wrap(
        wasi,
        "proc_exit",
        |_: Ctx<'_>, code: i32| -> wasmtime::Result<()> { wasmtime::bail!("proc_exit({code})") },
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The plugin, driven as a host drives it.

fn module() -> &'static (Engine, Module) {
    static MODULE: OnceLock<(Engine, Module)> = OnceLock::new();
    MODULE.get_or_init(|| {
        let engine = Engine::default();
        let module = Module::from_file(&engine, support::wasm_path()).unwrap();
        (engine, module)
    })
}

struct Plugin {
    store: Store<Host>,
    instance: Instance,
}

impl Plugin {
    fn start(host: Host) -> Plugin {
        let (engine, module) = module();
        let mut linker = Linker::new(engine);
        link(&mut linker).unwrap();
        let mut store = Store::new(engine, host);
        let instance = linker.instantiate(&mut store, module).unwrap();
        Plugin { store, instance }
    }

    fn host(&mut self) -> &mut Host {
        self.store.data_mut()
    }

    /// Calls an export; `context` is the context the host runs it on.
    fn call_on<P, R>(&mut self, context: i32, name: &str, params: P) -> R
    where
        P: wasmtime::WasmParams,
        R: wasmtime::WasmResults,
    {
        self.host().current = context;
        self.call(name, params)
    }

    fn call<P, R>(&mut self, name: &str, params: P) -> R
    where
        P: wasmtime::WasmParams,
        R: wasmtime::WasmResults,
    {
        let function = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .unwrap();
        match function.call(&mut self.store, params) {
            Ok(result) => result,
            Err(trap) => panic!(
                "{name} trapped: {trap:?}\nhost calls: {:?}",
                self.store.data().calls
            ),
        }
    }

    /// Root context `ROOT`, started and configured with `document`.
    fn configure(&mut self, document: &Value) -> bool {
        self.host().configuration = document.to_string().into_bytes();
        self.call_on::<(i32, i32), i32>(ROOT, "proxy_on_vm_start", (ROOT, 0));
        self.call_on::<(i32, i32), ()>(ROOT, "proxy_on_context_create", (ROOT, 0));
        let size = self.host().configuration.len() as i32;
        self.call_on::<(i32, i32), i32>(ROOT, "proxy_on_configure", (ROOT, size)) == 1
    }

    /// A request through context `id`: its headers in, the plugin's action
    /// out. The context stays open (see `close`).
    fn request(&mut self, id: i32, headers: &[(&str, &str)]) -> i32 {
        self.host().request = headers
            .iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect();
        self.call_on::<(i32, i32), ()>(id, "proxy_on_context_create", (id, ROOT));
        let count = headers.len() as i32;
        self.call_on::<(i32, i32, i32), i32>(id, "proxy_on_request_headers", (id, count, 1))
    }

    /// A request whose headers do not end the stream, then its body in
    /// `pieces` (the last with end of stream): each callback's answer.
    fn request_with_body(&mut self, id: i32, headers: &[(&str, &str)], pieces: &[&str]) -> Vec<i32> {
        self.host().request = headers
            .iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect();
        self.host().request_body.clear();
        self.call_on::<(i32, i32), ()>(id, "proxy_on_context_create", (id, ROOT));
        let count = headers.len() as i32;
        let mut answers = vec![self.call_on::<(i32, i32, i32), i32>(id, "proxy_on_request_headers", (id, count, 0))];
        for (position, piece) in pieces.iter().enumerate() {
            self.host().request_body.extend_from_slice(piece.as_bytes());
            let size = self.host().request_body.len() as i32;
            let end = i32::from(position + 1 == pieces.len());
            answers.push(self.call_on::<(i32, i32, i32), i32>(id, "proxy_on_request_body", (id, size, end)));
        }
        answers
    }

    fn close(&mut self, id: i32) {
        assert_eq!(self.call_on::<i32, i32>(id, "proxy_on_done", id), 1);
        self.call_on::<i32, ()>(id, "proxy_on_delete", id);
    }

    fn tick(&mut self) {
        self.call_on::<i32, ()>(ROOT, "proxy_on_tick", ROOT);
    }

    fn queue_ready(&mut self, queue: u32) {
        self.call_on::<(i32, i32), ()>(ROOT, "proxy_on_queue_ready", (ROOT, queue as i32));
    }

    /// Answers callout `token` on context `id` with `status` and `body`.
    fn answer(&mut self, id: i32, token: i32, status: &str, headers: &[(&str, &str)], body: &str) {
        let mut map: Headers = vec![(b":status".to_vec(), status.as_bytes().to_vec())];
        map.extend(
            headers
                .iter()
                .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec())),
        );
        let count = map.len() as i32;
        let host = self.host();
        host.call_headers = map;
        host.call_body = body.as_bytes().to_vec();
        let size = body.len() as i32;
        self.call_on::<(i32, i32, i32, i32, i32), ()>(
            id,
            "proxy_on_http_call_response",
            (id, token, count, size, 0),
        );
    }

    /// Hands `message` to the plugin as gRPC message `token`'s.
    fn grpc_receive(&mut self, token: i32, message: Vec<u8>) {
        let size = message.len() as i32;
        self.host().grpc_message = message;
        self.call_on::<(i32, i32, i32), ()>(ROOT, "proxy_on_grpc_receive", (ROOT, token, size));
    }

    /// The host calls made since the last `take_calls`.
    fn take_calls(&mut self) -> Vec<String> {
        std::mem::take(&mut self.host().calls)
    }
}

fn rules() -> Value {
    json!({
        "services": [{
            "name": "b",
            "hosts": ["b.test"],
            "default": "stable",
            "subsets": [
                {"name": "stable", "cluster": "b-stable"},
                {"name": "canary", "cluster": "b-canary",
                 "match": [{"headers": [{"name": "x-canary", "exact": "1"}]}]}
            ]
        }]
    })
}

fn get(host: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":path", "/"), (":authority", host)]
}

fn with<'a>(
    mut headers: Vec<(&'a str, &'a str)>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    headers.extend_from_slice(more);
    headers
}

const PAIRS: &str = "proxy_get_header_map_pairs";
const REPLACE: &str = "proxy_replace_header_map_value";
const REMOVE: &str = "proxy_remove_header_map_value";

// ---------------------------------------------------------------------------
// The module as built.

#[test]
fn the_module_exports_the_callbacks_it_needs_and_imports_only_known_calls() {
    let (_, module) = module();
    let exports: BTreeSet<&str> = module.exports().map(|export| export.name()).collect();
    let wanted = [
        "memory",
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_vm_start",
        "proxy_on_context_create",
        "proxy_on_configure",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_http_call_response",
        "proxy_on_grpc_receive",
        "proxy_on_grpc_close",
        "proxy_on_tick",
        "proxy_on_queue_ready",
        "proxy_on_done",
        "proxy_on_delete",
    ];
    assert_eq!(exports, BTreeSet::from(wanted));
    for import in module.imports() {
        match import.module() {
            "env" => assert!(import.name().starts_with("proxy_"), "{}", import.name()),
            "wasi_snapshot_preview1" => assert!(WASI.contains(&import.name()), "{}", import.name()),
            other => panic!("import from {other}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Per request: exactly the calls issue 9 allows.

#[test]
fn configure_reads_the_configuration_and_asks_for_a_tick() {
    let mut plugin = Plugin::start(Host::default());
    assert!(plugin.configure(&rules()));
    let calls = plugin.take_calls();
    assert_eq!(
        calls,
        [
            "proxy_get_buffer_bytes",
            "proxy_log",
            "proxy_get_current_time_nanoseconds",
            "clock_time_get",
            // graylane_build_info.version.<v> = 1, once per configuration.
            "proxy_define_metric",
            "proxy_record_metric",
            "proxy_set_tick_period_milliseconds",
        ]
    );
    assert_eq!(plugin.host().tick_period, Some(1_000));
}

#[test]
fn a_routed_request_costs_one_map_read_and_one_cluster_write() {
    let mut plugin = Plugin::start(Host::default());
    assert!(plugin.configure(&rules()));
    plugin.take_calls();

    // Claimed: the cluster is written, nothing else.
    assert_eq!(plugin.request(2, &get("b.test")), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE]);
    assert_eq!(plugin.host().values(CLUSTER), ["b-stable"]);
    plugin.close(2);

    // The client's own cluster headers (two) go with the one replace.
    let spoofed = with(get("b.test"), &[(CLUSTER, "evil"), (CLUSTER, "evil2")]);
    assert_eq!(plugin.request(3, &spoofed), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE]);
    assert_eq!(plugin.host().values(CLUSTER), ["b-stable"]);
    plugin.close(3);

    // The canary: cluster and tag.
    assert_eq!(
        plugin.request(4, &with(get("b.test"), &[("x-canary", "1")])),
        0
    );
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE, REPLACE]);
    assert_eq!(plugin.host().values(TAG), ["canary"]);
    plugin.close(4);

    // Already tagged canary: the tag is not written again.
    assert_eq!(
        plugin.request(5, &with(get("b.test"), &[(TAG, "canary")])),
        0
    );
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE]);
    assert_eq!(plugin.host().values(CLUSTER), ["b-canary"]);
    plugin.close(5);

    // Unclaimed with a cluster header: one remove.
    assert_eq!(
        plugin.request(6, &with(get("other.test"), &[(CLUSTER, "evil")])),
        0
    );
    assert_eq!(plugin.take_calls(), [PAIRS, REMOVE]);
    assert!(plugin.host().values(CLUSTER).is_empty());
    plugin.close(6);

    // Unclaimed without: the read only.
    assert_eq!(plugin.request(7, &get("other.test")), 0);
    assert_eq!(plugin.take_calls(), [PAIRS]);
    plugin.close(7);
    assert!(plugin.host().local_replies.is_empty());
}

#[test]
fn an_unclaimed_request_of_a_service_without_default_is_answered_with_one_call() {
    let mut document = rules();
    document["services"][0]
        .as_object_mut()
        .unwrap()
        .remove("default");
    document["services"][0]["unclaimed_status"] = json!(418);
    let mut plugin = Plugin::start(Host::default());
    assert!(plugin.configure(&document));
    plugin.take_calls();
    // Claimed by a match: routed as with a default.
    assert_eq!(plugin.request(2, &with(get("b.test"), &[("x-canary", "1")])), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE, REPLACE]);
    plugin.close(2);
    // Unclaimed: the map read and the reply, paused (1), nothing written.
    assert_eq!(plugin.request(3, &get("b.test")), 1);
    assert_eq!(plugin.take_calls(), [PAIRS, "proxy_send_local_response"]);
    assert_eq!(plugin.host().local_replies, [418]);
    plugin.close(3);
    // With a cluster header: removed first, then the reply.
    assert_eq!(plugin.request(4, &with(get("b.test"), &[(CLUSTER, "b-canary")])), 1);
    assert_eq!(plugin.take_calls(), [PAIRS, REMOVE, "proxy_send_local_response"]);
    assert!(plugin.host().values(CLUSTER).is_empty());
    assert_eq!(plugin.host().local_replies, [418, 418]);
}

#[test]
fn the_clock_is_read_per_request_only_for_signed_lane_cookies_and_never_in_apisix_mode() {
    let mut document = rules();
    document["lane_keys"] = json!(["0123456789abcdef"]);
    document["services"][0]["subsets"][1]["affinity"] = json!(true);
    for (apisix_mode, clock) in [(false, true), (true, false)] {
        document["apisix_mode"] = json!(apisix_mode);
        let mut plugin = Plugin::start(Host::default());
        assert!(plugin.configure(&document));
        plugin.take_calls();
        assert_eq!(plugin.request(2, &with(get("b.test"), &[("x-canary", "1")])), 0);
        let mut expected = vec![PAIRS];
        if clock {
            expected.push("proxy_get_current_time_nanoseconds");
        }
        // The cluster, the tag and the lane cookie in the pin header.
        expected.extend([REPLACE, REPLACE, REPLACE]);
        assert_eq!(plugin.take_calls(), expected, "apisix_mode {apisix_mode}");
        assert!(plugin.host().values("x-graylane-pin-cookie")[0].starts_with("graylane_lane=canary."));
    }
    // Unsigned cookies need no clock.
    document["services"][0]["subsets"][1]["affinity"] = json!(true);
    document.as_object_mut().unwrap().remove("lane_keys");
    document["apisix_mode"] = json!(false);
    let mut plugin = Plugin::start(Host::default());
    assert!(plugin.configure(&document));
    plugin.take_calls();
    assert_eq!(plugin.request(2, &with(get("b.test"), &[("x-canary", "1")])), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE, REPLACE, REPLACE]);
    assert_eq!(plugin.host().values("x-graylane-pin-cookie"), ["graylane_lane=canary; Max-Age=86400; Path=/; Secure; HttpOnly; SameSite=Lax"]);
}

#[test]
fn only_a_form_post_to_a_service_with_form_waits_for_its_body() {
    let mut document = rules();
    document["limits"] = json!({"max_body_bytes": 16});
    document["services"][0]["subsets"][1]["match"] = json!([{"form": [{"name": "u", "exact": "1"}]}]);
    let mut plugin = Plugin::start(Host::default());
    assert!(plugin.configure(&document));
    plugin.take_calls();
    let form_post = |host: &'static str| {
        vec![(":method", "POST"), (":path", "/"), (":authority", host),
             ("content-type", "application/x-www-form-urlencoded")]
    };
    // Held (1) through the first piece, decided at the end of the body:
    // the map read again, the body read, the cluster and tag written; the
    // empty end-of-stream call HTTP/1.1 makes after that goes on.
    assert_eq!(plugin.request_with_body(2, &form_post("b.test"), &["a=0&", "u=1"]), [1, 1, 0]);
    assert_eq!(plugin.take_calls(), [PAIRS, PAIRS, "proxy_get_buffer_bytes", REPLACE, REPLACE]);
    assert_eq!(plugin.host().values(CLUSTER), ["b-canary"]);
    let late: i32 = plugin.call_on(2, "proxy_on_request_body", (2, 7, 1));
    assert_eq!((late, plugin.take_calls().len()), (0, 0));
    plugin.close(2);
    // Past the cap: decided without the body as soon as it is over.
    assert_eq!(plugin.request_with_body(3, &form_post("b.test"), &["u=1&padding=xxxxxxxxxxx", "more"]), [1, 0, 0]);
    assert_eq!(plugin.host().values(CLUSTER), ["b-stable"]);
    plugin.close(3);
    // Not held: JSON, a GET, another service, a known length over the cap.
    let json_post = with(get("b.test"), &[(":method", "POST"), ("content-type", "application/json")]);
    let too_long = with(form_post("b.test"), &[("content-length", "17")]);
    for (id, headers) in [(4, json_post), (5, get("b.test")), (6, form_post("other.test")), (7, too_long)] {
        let answers = plugin.request_with_body(id, &headers, &["u=1"]);
        assert_eq!(answers, [0, 0], "request {id}");
        plugin.close(id);
    }
}

#[test]
fn an_untrusted_tag_is_replaced_or_removed_never_both() {
    let mut document = rules();
    document["trust_tag"] = json!(false);
    let mut plugin = Plugin::start(Host::default());
    assert!(plugin.configure(&document));
    plugin.take_calls();
    // Picked the canary: the tag is replaced, not removed first.
    let tagged = with(get("b.test"), &[(TAG, "stable"), ("x-canary", "1")]);
    assert_eq!(plugin.request(2, &tagged), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, REPLACE, REPLACE]);
    assert_eq!(plugin.host().values(TAG), ["canary"]);
    // The default subset: the client's tag is removed.
    assert_eq!(
        plugin.request(3, &with(get("b.test"), &[(TAG, "canary")])),
        0
    );
    assert_eq!(plugin.take_calls(), [PAIRS, REMOVE, REPLACE]);
    assert!(plugin.host().values(TAG).is_empty());
    assert_eq!(plugin.host().values(CLUSTER), ["b-stable"]);
}

#[test]
fn the_source_address_is_read_only_when_a_rule_is_sticky_on_it() {
    let mut document = rules();
    document["services"][0]["sticky"] = json!({"source_ip": true});
    document["services"][0]["subsets"][1]["weight"] = json!(50);
    let mut host = Host::default();
    host.properties
        .insert(b"source\0address".to_vec(), b"10.0.0.7:5555".to_vec());
    let mut plugin = Plugin::start(host);
    assert!(plugin.configure(&document));
    plugin.take_calls();
    assert_eq!(plugin.request(2, &get("b.test")), 0);
    let calls = plugin.take_calls();
    assert_eq!(calls[..2], [PAIRS, "proxy_get_property"]);
    let first = plugin.host().values(CLUSTER);
    // Sticky: the same address, the same cluster, every time.
    for id in 3..10 {
        plugin.request(id, &get("b.test"));
        assert_eq!(plugin.host().values(CLUSTER), first);
        plugin.close(id);
    }
    // Not found under Envoy's name: APISIX's.
    let mut host = Host::default();
    host.properties
        .insert(b"remote_addr".to_vec(), b"10.0.0.7".to_vec());
    let mut plugin = Plugin::start(host);
    assert!(plugin.configure(&document));
    plugin.take_calls();
    plugin.request(2, &get("b.test"));
    let calls = plugin.take_calls();
    assert_eq!(
        calls[..3],
        [PAIRS, "proxy_get_property", "proxy_get_property"]
    );
    assert_eq!(plugin.host().values(CLUSTER), first);
}

/// APISIX's host shows 100 headers; when the map is that full the plugin
/// reads the cluster and tag headers one by one, so a client's copy past the
/// 100th is seen and removed.
#[test]
fn a_full_header_map_makes_the_plugin_look_for_hidden_cluster_and_tag_headers() {
    let mut document = rules();
    document["trust_tag"] = json!(false);
    let host = Host {
        header_cap: Some(100),
        ..Host::default()
    };
    let mut plugin = Plugin::start(host);
    assert!(plugin.configure(&document));
    plugin.take_calls();
    let names: Vec<String> = (0..99).map(|i| format!("x-filler-{i}")).collect();
    let filled = |host: &'static str, names: &[String]| {
        let mut headers = get(host);
        headers.push(("host", host));
        for name in names {
            headers.push((name.as_str(), "v"));
        }
        headers
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let send = |plugin: &mut Plugin, id: i32, headers: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        plugin.request(id, &refs)
    };

    // 98 headers shown: no extra read.
    let mut headers = filled("other.test", &names[..97]);
    headers.push((CLUSTER.into(), "b-canary".into()));
    assert_eq!(send(&mut plugin, 2, &headers), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, REMOVE]);

    // Host + 99 fillers shown, the spoofed cluster and tag hidden.
    let mut headers = filled("other.test", &names);
    headers.push((CLUSTER.into(), "b-canary".into()));
    headers.push((TAG.into(), "canary".into()));
    assert_eq!(send(&mut plugin, 3, &headers), 0);
    let value = "proxy_get_header_map_value";
    assert_eq!(plugin.take_calls(), [PAIRS, value, value, REMOVE, REMOVE]);
    assert!(plugin.host().values(CLUSTER).is_empty());
    assert!(plugin.host().values(TAG).is_empty());

    // Claimed: the replace covers the hidden copy.
    let mut headers = filled("b.test", &names);
    headers.push((CLUSTER.into(), "b-canary".into()));
    assert_eq!(send(&mut plugin, 4, &headers), 0);
    assert_eq!(plugin.take_calls(), [PAIRS, value, value, REPLACE]);
    assert_eq!(plugin.host().values(CLUSTER), ["b-stable"]);
    assert!(plugin.host().local_replies.is_empty());
}

// ---------------------------------------------------------------------------
// Live rules: ticks, callouts, shared data, metrics.

fn with_source(interval_ms: u64) -> Value {
    let mut document = rules();
    document["source"] = json!({"cluster": "rules", "path": "/rules", "mode": "poll",
                                "interval_ms": interval_ms, "timeout_ms": 100});
    document
}

fn fetched() -> String {
    json!({"services": [{"name": "b", "hosts": ["b.test"], "default": "new",
        "subsets": [{"name": "new", "cluster": "b-fetched"}]}]})
    .to_string()
}

#[test]
fn a_tick_fetches_and_the_answer_installs_the_rules() {
    let mut plugin = Plugin::start(Host {
        now_ns: 1_700_000_000_000_000_000,
        ..Host::default()
    });
    assert!(plugin.configure(&with_source(1_000)));
    assert_eq!(plugin.host().tick_period, Some(200));
    plugin.take_calls();
    plugin.tick();
    let calls = plugin.take_calls();
    assert!(calls.contains(&"proxy_http_call".to_string()), "{calls:?}");
    let callout = plugin.host().callouts[0].clone();
    assert_eq!(callout.upstream, "rules");
    assert_eq!(callout.timeout_ms, 100);
    assert!(callout
        .headers
        .contains(&(b":path".to_vec(), b"/rules".to_vec())));

    plugin.answer(ROOT, 1, "200", &[("etag", "\"1\"")], &fetched());
    let calls = plugin.take_calls();
    assert!(
        calls.contains(&"proxy_get_buffer_bytes".to_string()),
        "{calls:?}"
    );
    plugin.request(2, &get("b.test"));
    assert_eq!(plugin.host().values(CLUSTER), ["b-fetched"]);
    plugin.close(2);

    // The next tick flushes the count of that request and the fetch.
    plugin.tick();
    let host = plugin.host();
    let id = host
        .metric_names
        .iter()
        .position(|name| name == "graylane_requests_total.service.b.subset.new")
        .unwrap();
    assert_eq!(host.metric_values[&(id as u32)], 1);
}

/// Push mode on etcd: the tick reads the key over gRPC (`KV/Range`), the
/// answer installs the rules and opens the watch (`Watch/Watch` and one
/// create request from the read's revision + 1), a put event installs the
/// next document, a close of the stream is taken calmly.
#[test]
fn an_etcd_watch_reads_then_streams_events_into_the_rules() {
    use graylane_core::source::etcd_proto::{
        Event, KeyValue, RangeResponse, ResponseHeader, WatchRequest, WatchRequestUnion,
        WatchResponse,
    };
    use prost::Message;

    let document_for = |cluster: &str| {
        json!({"services": [{"name": "b", "hosts": ["b.test"], "default": "new",
            "subsets": [{"name": "new", "cluster": cluster}]}]})
        .to_string()
        .into_bytes()
    };
    let kv = |revision: i64, cluster: &str| KeyValue {
        key: b"/graylane/b".to_vec(),
        mod_revision: revision,
        value: document_for(cluster),
    };
    let mut plugin = Plugin::start(Host {
        now_ns: 1_700_000_000_000_000_000,
        ..Host::default()
    });
    let mut document = rules();
    document["source"] = json!({"format": "etcd", "cluster": "etcd", "key": "/graylane/b"});
    assert!(plugin.configure(&document));
    assert_eq!(plugin.host().tick_period, Some(1_000));
    plugin.take_calls();
    plugin.tick();
    let calls = plugin.take_calls();
    assert!(calls.contains(&"proxy_grpc_call".to_string()), "{calls:?}");
    assert!(!calls.contains(&"proxy_http_call".to_string()), "{calls:?}");
    let (read, name) = plugin.host().grpc_opened[0].clone();
    assert_eq!(name, "etcdserverpb.KV/Range");

    let answer = RangeResponse {
        header: Some(ResponseHeader { revision: 7 }),
        kvs: vec![kv(5, "b-read")],
        count: 1,
    };
    plugin.grpc_receive(read, answer.encode_to_vec());
    let calls = plugin.take_calls();
    for wanted in ["proxy_get_buffer_bytes", "proxy_grpc_stream", "proxy_grpc_send"] {
        assert!(calls.contains(&wanted.to_string()), "{wanted}: {calls:?}");
    }
    let (stream, name) = plugin.host().grpc_opened[1].clone();
    assert_eq!(name, "etcdserverpb.Watch/Watch");
    let (sent_on, create) = plugin.host().grpc_sent.last().cloned().unwrap();
    assert_eq!(sent_on, stream);
    match WatchRequest::decode(create.as_slice()).unwrap().request {
        Some(WatchRequestUnion::Create(create)) => {
            assert_eq!((create.key.as_slice(), create.start_revision), (&b"/graylane/b"[..], 8));
        }
        other => panic!("not a create request: {other:?}"),
    }
    plugin.request(2, &get("b.test"));
    assert_eq!(plugin.host().values(CLUSTER), ["b-read"]);
    plugin.close(2);

    let created = WatchResponse {
        created: true,
        ..WatchResponse::default()
    };
    plugin.grpc_receive(stream, created.encode_to_vec());
    let event = WatchResponse {
        events: vec![Event {
            kind: 0,
            kv: Some(kv(9, "b-watched")),
        }],
        ..WatchResponse::default()
    };
    plugin.grpc_receive(stream, event.encode_to_vec());
    plugin.request(3, &get("b.test"));
    assert_eq!(plugin.host().values(CLUSTER), ["b-watched"]);
    plugin.close(3);

    // etcd goes away: the stream closes; the rules stay, nothing is
    // canceled (the host closed it), and the next ticks wait for the backoff.
    plugin.call_on::<(i32, i32, i32), ()>(ROOT, "proxy_on_grpc_close", (ROOT, stream, 13));
    assert!(plugin.host().grpc_canceled.is_empty());
    plugin.request(4, &get("b.test"));
    assert_eq!(plugin.host().values(CLUSTER), ["b-watched"]);
    plugin.close(4);
}

/// Two VMs of one gateway (each its own host here, their shared data copied
/// across as Envoy shares it): the first tick registers a queue and lists
/// it; the VM that installs a document enqueues a wake on the other's
/// queue, and the woken VM adopts the document on `proxy_on_queue_ready`.
#[test]
fn the_worker_that_installs_rules_wakes_the_other() {
    let host = || Host {
        now_ns: 1_700_000_000_000_000_000,
        ..Host::default()
    };
    /// What Envoy shares between VMs: shared data and the queues.
    fn share(from: &mut Plugin, to: &mut Plugin) {
        to.host().shared = from.host().shared.clone();
        to.host().next_cas = from.host().next_cas;
        to.host().queues = from.host().queues.clone();
    }
    // The first VM to tick registers queue 1 and takes the lease.
    let mut holder = Plugin::start(host());
    assert!(holder.configure(&with_source(1_000)));
    holder.take_calls();
    holder.tick();
    let calls = holder.take_calls();
    assert!(
        calls.contains(&"proxy_register_shared_queue".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"proxy_http_call".to_string()), "{calls:?}");
    holder.tick();
    let calls = holder.take_calls();
    assert!(
        !calls.contains(&"proxy_register_shared_queue".to_string()),
        "registered once: {calls:?}"
    );

    // The second registers queue 2 and lists it beside the first. (This
    // host's random bytes are constant: the VMs differ by their clock.)
    let mut follower = Plugin::start(Host {
        now_ns: 1_700_000_000_001_000_000,
        ..Host::default()
    });
    assert!(follower.configure(&with_source(1_000)));
    share(&mut holder, &mut follower);
    follower.tick();
    assert_eq!(follower.host().queues.len(), 2);
    assert!(follower.host().callouts.is_empty(), "the lease is taken");

    share(&mut follower, &mut holder);
    holder.answer(ROOT, 1, "200", &[("etag", "\"1\"")], &fetched());
    let calls = holder.take_calls();
    assert!(
        calls.contains(&"proxy_enqueue_shared_queue".to_string()),
        "{calls:?}"
    );
    assert!(holder.host().queues[&1].1.is_empty(), "not the holder itself");
    assert_eq!(holder.host().queues[&2].1.len(), 1, "the follower is woken");

    share(&mut holder, &mut follower);
    follower.take_calls();
    follower.queue_ready(2);
    let calls = follower.take_calls();
    assert!(
        calls.contains(&"proxy_dequeue_shared_queue".to_string()),
        "{calls:?}"
    );
    assert!(follower.host().queues[&2].1.is_empty(), "drained");
    follower.request(2, &get("b.test"));
    assert_eq!(follower.host().values(CLUSTER), ["b-fetched"]);
}

/// APISIX: no ticks, no shared data, no clock; the request that finds the
/// rules due fetches, waits, and is resumed when the answer comes (on the
/// root context, as that host delivers it).
#[test]
fn apisix_mode_refreshes_from_a_request_and_resumes_it() {
    let mut document = with_source(100);
    document["apisix_mode"] = json!(true);
    let mut plugin = Plugin::start(Host {
        unimplemented: BTreeSet::from([
            "proxy_set_tick_period_milliseconds",
            "proxy_get_shared_data",
            "proxy_set_shared_data",
            "proxy_get_current_time_nanoseconds",
        ]),
        ..Host::default()
    });
    assert!(plugin.configure(&document));
    let calls = plugin.take_calls();
    assert!(!calls.iter().any(|call| call.contains("tick")), "{calls:?}");
    assert!(
        !calls.iter().any(|call| call.contains("shared")),
        "{calls:?}"
    );
    // The first request is due: routed by the inline rules, then held.
    assert_eq!(plugin.request(2, &get("b.test")), 1);
    assert_eq!(plugin.host().values(CLUSTER), ["b-stable"]);
    assert_eq!(plugin.host().callouts.len(), 1);
    // Envoy and APISIX both deliver it on the root context: the plugin
    // switches to the request before resuming it.
    plugin.answer(ROOT, 1, "200", &[("etag", "\"1\"")], &fetched());
    assert_eq!(plugin.host().resumed, [2]);
    plugin.close(2);
    assert_eq!(plugin.request(3, &get("b.test")), 0);
    assert_eq!(plugin.host().values(CLUSTER), ["b-fetched"]);
}

// ---------------------------------------------------------------------------
// Every host call failing, in turn.

/// A script that makes every host call graylane has: configure with a
/// source, requests (one with a spoofed cluster header, one sticky on the
/// source address, one with a full header map), ticks, a callout answer.
fn script(plugin: &mut Plugin, apisix: bool) -> Vec<(i32, Vec<String>)> {
    let mut document = with_source(100);
    document["services"][0]["sticky"] = json!({"source_ip": true});
    document["services"][0]["subsets"][1]["weight"] = json!(50);
    if apisix {
        document["apisix_mode"] = json!(true);
    }
    plugin.configure(&document);
    let mut outcomes = Vec::new();
    let fillers: Vec<String> = (0..101).map(|i| format!("x-filler-{i}")).collect();
    for (id, host) in [(2, "b.test"), (3, "other.test"), (4, "b.test")] {
        let mut headers = get(host);
        if id == 4 {
            headers.extend(fillers.iter().map(|name| (name.as_str(), "v")));
        }
        headers.push((CLUSTER, "evil"));
        let action = plugin.request(id, &headers);
        outcomes.push((action, plugin.host().values(CLUSTER)));
        if !apisix {
            plugin.tick();
        }
        let tokens = plugin.host().next_token;
        if tokens > 0 {
            // Envoy answers on the sender (the root: the fetch started on
            // a tick); APISIX on the root whatever the sender.
            plugin.answer(ROOT, tokens as i32, "200", &[("etag", "\"1\"")], &fetched());
        }
        plugin.close(id);
    }
    plugin.tick();
    outcomes
}

fn host_for(apisix: bool) -> Host {
    let mut host = Host {
        now_ns: 1_700_000_000_000_000_000,
        header_cap: apisix.then_some(100),
        ..Host::default()
    };
    host.properties
        .insert(b"source\0address".to_vec(), b"10.0.0.7:5555".to_vec());
    if apisix {
        host.unimplemented = BTreeSet::from([
            "proxy_set_tick_period_milliseconds",
            "proxy_get_shared_data",
            "proxy_set_shared_data",
            "proxy_get_current_time_nanoseconds",
        ]);
    }
    host
}

fn every_call_failing(apisix: bool) {
    let mut clean = Plugin::start(host_for(apisix));
    let outcomes = script(&mut clean, apisix);
    let calls = clean.host().calls.clone();
    for (action, cluster) in &outcomes {
        assert!(*action == 0 || *action == 1, "{outcomes:?}");
        assert_ne!(cluster, &["evil"], "{outcomes:?}");
    }
    assert!(
        !clean.host().resumed.contains(&ROOT),
        "resumed the root: {:?}",
        clean.host().resumed
    );
    let made: BTreeSet<&str> = calls.iter().map(String::as_str).collect();
    for wanted in [
        "proxy_log",
        PAIRS,
        REPLACE,
        REMOVE,
        "proxy_get_header_map_value",
        "proxy_get_property",
        "proxy_get_buffer_bytes",
        "proxy_http_call",
    ] {
        assert!(made.contains(wanted), "{wanted} not made: {calls:?}");
    }
    if apisix {
        for wanted in ["proxy_set_effective_context", "proxy_continue_stream"] {
            assert!(made.contains(wanted), "{wanted} not made: {calls:?}");
        }
    } else {
        for wanted in [
            "proxy_set_tick_period_milliseconds",
            "proxy_get_shared_data",
            "proxy_set_shared_data",
            "proxy_define_metric",
            "proxy_increment_metric",
        ] {
            assert!(made.contains(wanted), "{wanted} not made: {calls:?}");
        }
    }
    let mut runs = 0;
    for (at, call) in calls.iter().enumerate() {
        if !call.starts_with("proxy_") {
            continue;
        }
        for status in FAILURES {
            let mut host = host_for(apisix);
            host.fail_at = Some((at, status));
            let mut plugin = Plugin::start(host);
            // Plugin::call panics on a trap.
            let outcomes = script(&mut plugin, apisix);
            runs += 1;
            let replies = plugin.host().local_replies.clone();
            for (action, cluster) in &outcomes {
                // A spoofed cluster header never goes on: either it is gone
                // (or replaced), or the request was stopped.
                assert!(
                    cluster.as_slice() != ["evil"] || *action == 1,
                    "call {at} ({call}) failing with {status}: {outcomes:?}"
                );
            }
            assert!(replies.iter().all(|reply| *reply == 503));
        }
    }
    assert!(runs > 40, "{runs} runs");
}

#[test]
fn no_failing_host_call_traps_under_envoy_answers() {
    every_call_failing(false);
}

#[test]
fn no_failing_host_call_traps_under_apisix_answers() {
    every_call_failing(true);
}

#[test]
fn a_request_of_an_unconfigured_root_is_refused() {
    let mut plugin = Plugin::start(Host::default());
    plugin.call::<(i32, i32), ()>("proxy_on_context_create", (ROOT, 0));
    assert_eq!(
        plugin.request(2, &with(get("b.test"), &[(CLUSTER, "evil")])),
        1
    );
    assert_eq!(plugin.host().local_replies, [503]);
    // And a context whose root the VM never saw.
    plugin.call::<(i32, i32), ()>("proxy_on_context_create", (9, 77));
    assert_eq!(
        plugin.call::<(i32, i32, i32), i32>("proxy_on_request_headers", (9, 0, 1)),
        1
    );
    assert_eq!(plugin.host().local_replies, [503, 503]);
}
