//! The proxy-wasm ABI 0.2.1, by hand: the functions the gateway calls
//! (`proxy_on_*` exports) and the host calls the plugin makes, and nothing
//! else. This is the only module with `unsafe` code (and the only one with
//! `#[no_mangle]`, which the `unsafe_code` lint counts too).
//!
//! - Every host call returns a raw `u32` status, read as a number: a code the
//!   plugin does not know is an [`Status`] like any other, never undefined
//!   behaviour, and nothing here panics on any status.
//! - Every buffer the host hands over was allocated by the host through
//!   [`proxy_on_memory_allocate`], which keeps the size it allocated in front
//!   of the bytes: a [`HostBuffer`] frees exactly what was allocated, and
//!   reads no further than that, whatever size the host reports.
//! - The exports only convert the ABI's integers and call the safe
//!   callbacks in the crate root, which hold all the plugin's logic.

#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, Layout};
use std::ptr::null_mut;

// ---------------------------------------------------------------------------
// Statuses and the numbers the ABI names things by.

/// A host call's answer other than OK (0). Known codes of ABI 0.2.1:
/// 1 not found, 2 bad argument, 3 serialization failure, 4 parse failure,
/// 6 invalid memory access, 7 empty, 8 CAS mismatch, 10 internal failure,
/// 12 unimplemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(u32);

impl Status {
    pub const NOT_FOUND: Status = Status(1);
    pub const EMPTY: Status = Status(7);
    pub const CAS_MISMATCH: Status = Status(8);

    pub fn code(self) -> u32 {
        self.0
    }
}

fn check(code: u32) -> Result<(), Status> {
    if code == 0 {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// `proxy_on_request_headers`'s answer: go on, or stop iteration (the
/// request waits for `proxy_continue_stream` or a local reply).
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// The header maps the plugin reads or edits (ABI numbers).
pub enum MapType {
    RequestHeaders = 0,
    HttpCallResponseHeaders = 6,
}

/// The buffers it reads: a callout's answer, a gRPC message, its own
/// configuration.
pub enum BufferType {
    HttpRequestBody = 0,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    PluginConfiguration = 7,
}

pub enum MetricType {
    Counter = 0,
    Gauge = 1,
}

/// `proxy_log` levels, as `log`'s plus critical.
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

// ---------------------------------------------------------------------------
// Memory the host fills.

/// Bytes in front of each host buffer, holding its allocated size (8, not 4,
/// so that the buffer stays aligned as the host may expect).
const SIZE_PREFIX: usize = 8;

fn prefixed_layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(SIZE_PREFIX)?, SIZE_PREFIX).ok()
}

/// The host asks for memory it then fills and hands back (a header map, a
/// property, a buffer). Null when the allocation fails, which hosts report
/// as a failing status.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let Some(layout) = prefixed_layout(size) else {
        return null_mut();
    };
    // SAFETY: the layout is at least SIZE_PREFIX bytes, never zero-sized.
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        return base;
    }
    // SAFETY: `base` is valid for the layout's size and aligned to 8, so the
    // size fits in front; the bytes after it are the host's.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(SIZE_PREFIX)
    }
}

/// A buffer the host allocated through [`proxy_on_memory_allocate`] and
/// filled; freed when dropped. Empty when the host wrote no pointer.
pub struct HostBuffer {
    data: *mut u8,
    len: usize,
}

impl HostBuffer {
    /// # Safety
    /// `data` is null or a pointer [`proxy_on_memory_allocate`] returned that
    /// nothing else owns; `reported` is the size the host says it wrote.
    unsafe fn take(data: *mut u8, reported: usize) -> HostBuffer {
        if data.is_null() {
            return HostBuffer { data, len: 0 };
        }
        // SAFETY: the allocator wrote the allocated size in front of `data`.
        let allocated = unsafe { data.sub(SIZE_PREFIX).cast::<usize>().read() };
        HostBuffer {
            data,
            len: reported.min(allocated),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        if self.data.is_null() {
            return &[];
        }
        // SAFETY: `len` bytes at `data` are within the allocation, and the
        // host filled them before handing the pointer over.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if self.data.is_null() {
            return;
        }
        // SAFETY: as in `take`: the allocation starts SIZE_PREFIX bytes
        // before `data` and its size is written there.
        unsafe {
            let base = self.data.sub(SIZE_PREFIX);
            let allocated = base.cast::<usize>().read();
            if let Some(layout) = prefixed_layout(allocated) {
                dealloc(base, layout);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Host calls.

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_grpc_call(
        upstream: *const u8,
        upstream_size: usize,
        service: *const u8,
        service_size: usize,
        method: *const u8,
        method_size: usize,
        initial_metadata: *const u8,
        initial_metadata_size: usize,
        message: *const u8,
        message_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_grpc_stream(
        upstream: *const u8,
        upstream_size: usize,
        service: *const u8,
        service_size: usize,
        method: *const u8,
        method_size: usize,
        initial_metadata: *const u8,
        initial_metadata_size: usize,
        token: *mut u32,
    ) -> u32;
    fn proxy_grpc_send(token: u32, message: *const u8, message_size: usize, end_stream: u32)
        -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period_ms: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_register_shared_queue(name: *const u8, name_size: usize, queue: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(queue: u32, value: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(queue: u32, value: *mut *mut u8, value_size: *mut usize) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name: *const u8,
        name_size: usize,
        id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// Runs a host call that hands back one buffer through two out-parameters.
/// `call` gets the addresses of a null pointer and a zero size.
fn read_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<HostBuffer, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let code = call(&mut data, &mut size);
    // SAFETY: the host wrote into `data` null or a pointer it got from
    // proxy_on_memory_allocate; it is taken (and freed) even when the status
    // is not OK, so that nothing leaks.
    let buffer = unsafe { HostBuffer::take(data, size) };
    check(code).map(|()| buffer)
}

pub fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live string.
    check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// A whole header map, serialised (see `graylane_core::request::parse_header_map`).
pub fn header_map_pairs(map: MapType) -> Result<HostBuffer, Status> {
    // SAFETY: the out-parameters are valid for writes.
    read_buffer(|data, size| unsafe { proxy_get_header_map_pairs(map as u32, data, size) })
}

/// One header's value (the first, on hosts that keep several); `None` when
/// absent.
pub fn header_map_value(map: MapType, name: &str) -> Result<Option<HostBuffer>, Status> {
    // SAFETY: a live slice in, valid out-parameters.
    let read = read_buffer(|data, size| unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size)
    });
    match read {
        Ok(buffer) => Ok(Some(buffer)),
        Err(Status::NOT_FOUND) => Ok(None),
        Err(status) => Err(status),
    }
}

/// Sets a header, replacing every value it had.
pub fn replace_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    check(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property, given as its path serialised (components joined by NUL);
/// `None` when the host has none by that name.
pub fn property(path: &[u8]) -> Result<Option<HostBuffer>, Status> {
    // SAFETY: a live slice in, valid out-parameters.
    let read = read_buffer(|data, size| unsafe {
        proxy_get_property(path.as_ptr(), path.len(), data, size)
    });
    match read {
        Ok(buffer) => Ok(Some(buffer)),
        Err(Status::NOT_FOUND) => Ok(None),
        Err(status) => Err(status),
    }
}

/// Up to `max_size` bytes of a buffer from its start; empty when the host
/// has none.
pub fn buffer_bytes(buffer: BufferType, max_size: usize) -> Result<HostBuffer, Status> {
    // SAFETY: valid out-parameters.
    let read = read_buffer(|data, size| unsafe {
        proxy_get_buffer_bytes(buffer as u32, 0, max_size, data, size)
    });
    match read {
        Err(Status::NOT_FOUND) => Ok(HostBuffer {
            data: null_mut(),
            len: 0,
        }),
        other => other,
    }
}

/// Answers the current request locally. `headers` is a serialised map.
pub fn send_local_response(status_code: u32, body: &[u8], headers: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices; no gRPC status (-1).
    check(unsafe {
        proxy_send_local_response(
            status_code,
            b"".as_ptr(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Sends an HTTP request to `upstream`; the answer comes to
/// `proxy_on_http_call_response` with the returned token. `headers` and
/// `trailers` are serialised maps.
pub fn http_call(
    upstream: &str,
    headers: &[u8],
    body: &[u8],
    trailers: &[u8],
    timeout_ms: u32,
) -> Result<u32, Status> {
    let mut token: u32 = 0;
    // SAFETY: pointers and lengths of live slices; the host writes one u32.
    check(unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Where a gRPC call or stream goes: `upstream` as the host names it (for
/// Envoy, an encoded `GrpcService` or a cluster name), the service and
/// method, and the initial metadata as a serialised map.
pub struct GrpcTarget<'a> {
    pub upstream: &'a [u8],
    pub service: &'a str,
    pub method: &'a str,
    pub metadata: &'a [u8],
}

/// A unary gRPC call; its answer comes to `proxy_on_grpc_receive` (or
/// `proxy_on_grpc_close` on failure) with the returned token.
pub fn grpc_call(target: &GrpcTarget<'_>, message: &[u8], timeout_ms: u32) -> Result<u32, Status> {
    let mut token: u32 = 0;
    // SAFETY: pointers and lengths of live slices; the host writes one u32.
    check(unsafe {
        proxy_grpc_call(
            target.upstream.as_ptr(),
            target.upstream.len(),
            target.service.as_ptr(),
            target.service.len(),
            target.method.as_ptr(),
            target.method.len(),
            target.metadata.as_ptr(),
            target.metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Opens a bidirectional gRPC stream; its messages come to
/// `proxy_on_grpc_receive`, its end to `proxy_on_grpc_close`.
pub fn grpc_stream(target: &GrpcTarget<'_>) -> Result<u32, Status> {
    let mut token: u32 = 0;
    // SAFETY: pointers and lengths of live slices; the host writes one u32.
    check(unsafe {
        proxy_grpc_stream(
            target.upstream.as_ptr(),
            target.upstream.len(),
            target.service.as_ptr(),
            target.service.len(),
            target.method.as_ptr(),
            target.method.len(),
            target.metadata.as_ptr(),
            target.metadata.len(),
            &mut token,
        )
    })?;
    Ok(token)
}

/// Sends one message on a stream (the host frames it), leaving it open.
pub fn grpc_send(token: u32, message: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { proxy_grpc_send(token, message.as_ptr(), message.len(), 0) })
}

/// Ends a call or stream at once; the host calls nothing back for it.
pub fn grpc_cancel(token: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_grpc_cancel(token) })
}

/// Lets the current (paused) request go on.
pub fn continue_request() -> Result<(), Status> {
    // SAFETY: no pointers. Stream type 0: the HTTP request.
    check(unsafe { proxy_continue_stream(0) })
}

/// Makes the next host calls act on `context_id`: a callout's answer comes
/// on the context that owns the callout (Envoy: the root, whoever sent it;
/// APISIX: the root), not on the request that waits for it.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

pub fn set_tick_period_ms(period_ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// The host's wall clock in nanoseconds (0 on hosts that answer OK without
/// writing it).
pub fn current_time_ns() -> Result<u64, Status> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

/// A shared-data value and its CAS token; `None` when absent, or when the
/// host answers OK without a value.
pub fn shared_data(key: &str) -> Result<Option<(HostBuffer, u32)>, Status> {
    let mut cas: u32 = 0;
    // SAFETY: a live slice in, valid out-parameters.
    let read = read_buffer(|data, size| unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), data, size, &mut cas)
    });
    match read {
        Ok(buffer) if buffer.data.is_null() => Ok(None),
        Ok(buffer) => Ok(Some((buffer, cas))),
        Err(Status::NOT_FOUND) => Ok(None),
        Err(status) => Err(status),
    }
}

/// `Err(Status::CAS_MISMATCH)` when the value changed since `cas`.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Registers a shared queue served by the current (root) context; the same
/// name gives the same id, and the first context to register it is served.
pub fn register_shared_queue(name: &str) -> Result<u32, Status> {
    let mut queue: u32 = 0;
    // SAFETY: a live slice in; the host writes one u32.
    check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut queue) })?;
    Ok(queue)
}

pub fn enqueue_shared_queue(queue: u32, message: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { proxy_enqueue_shared_queue(queue, message.as_ptr(), message.len()) })
}

/// The oldest message of a queue; `None` when it is empty.
pub fn dequeue_shared_queue(queue: u32) -> Result<Option<HostBuffer>, Status> {
    // SAFETY: valid out-parameters.
    let read = read_buffer(|data, size| unsafe { proxy_dequeue_shared_queue(queue, data, size) });
    match read {
        Ok(buffer) => Ok(Some(buffer)),
        Err(Status::EMPTY) => Ok(None),
        Err(status) => Err(status),
    }
}

pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: a live slice in; the host writes one u32.
    check(unsafe { proxy_define_metric(metric_type as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}

// ---------------------------------------------------------------------------
// What the gateway calls. Booleans go out as 0 and 1.

/// Marks the ABI version; never called.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    crate::on_vm_start();
    1
}

/// `parent_context_id` is 0 for a root context (one per plugin
/// configuration), else the root of the new HTTP context.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    crate::on_context_create(context_id, parent_context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> u32 {
    u32::from(crate::on_configure(root_context_id, configuration_size))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    crate::on_tick(root_context_id);
}

/// A message arrived on a shared queue this root context registered.
#[no_mangle]
pub extern "C" fn proxy_on_queue_ready(root_context_id: u32, queue: u32) {
    crate::on_queue_ready(root_context_id, queue);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: usize,
    end_of_stream: u32,
) -> u32 {
    crate::on_request_headers(context_id, end_of_stream != 0) as u32
}

/// A piece of the request body; `body_size` is all of it buffered so far.
#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: u32) -> u32 {
    crate::on_request_body(context_id, body_size, end_of_stream != 0) as u32
}

/// Trailers end a body without the end-of-stream flag on it.
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
    crate::on_request_trailers(context_id) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    crate::on_http_call_response(context_id, token, headers, body_size);
}

/// A message on a gRPC stream, or a unary call's answer: `size` bytes in
/// the gRPC receive buffer.
#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, size: usize) {
    crate::on_grpc_receive(context_id, token, size);
}

/// A gRPC call or stream ended (a unary call only when it failed).
#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status_code: u32) {
    crate::on_grpc_close(context_id, token, status_code);
}

/// Always done at once: nothing is left to finish. APISIX's host calls this
/// for every context and logs an error when the answer is not true (as for
/// a module that does not export it).
#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
    1
}

/// The context is gone: its state goes too.
#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    crate::on_delete(context_id);
}
