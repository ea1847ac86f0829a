//! The few host calls on the request path, made directly rather than through
//! the SDK's wrappers: those panic on any status they did not expect (and a
//! panic takes the worker's traffic down), copy every header into a `String`
//! (which panics on a header that is not UTF-8), and allocate per header.
//! Here every status is an `Err`, and the header map is read into one buffer
//! that the decision borrows from.

use std::ptr::null_mut;

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
const MAP_HTTP_REQUEST_HEADERS: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
}

/// A status the host answered with other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostStatus(pub u32);

/// Takes ownership of a buffer the host wrote through
/// `proxy_on_memory_allocate`, which the SDK implements as a boxed slice of
/// exactly `size` bytes.
///
/// # Safety
/// `data` must be null or a pointer the host returned with `size`.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// All request headers in one call, serialised; parse with
/// [`graylane_core::request::parse_header_map`].
pub fn request_header_map() -> Result<Vec<u8>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through our allocator.
    unsafe {
        match proxy_get_header_map_pairs(MAP_HTTP_REQUEST_HEADERS, &mut data, &mut size) {
            STATUS_OK => Ok(take_host_buffer(data, size)),
            status => Err(HostStatus(status)),
        }
    }
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths come from live slices.
    let status = unsafe {
        proxy_replace_header_map_value(
            MAP_HTTP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(HostStatus(status))
    }
}

pub fn remove_request_header(name: &str) -> Result<(), HostStatus> {
    // SAFETY: pointer and length come from a live slice.
    let status = unsafe {
        proxy_remove_header_map_value(MAP_HTTP_REQUEST_HEADERS, name.as_ptr(), name.len())
    };
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(HostStatus(status))
    }
}

/// A property such as `source.address`, given as its path components.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
    let serialised = path.join("\0");
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as for the header map.
    unsafe {
        match proxy_get_property(serialised.as_ptr(), serialised.len(), &mut data, &mut size) {
            STATUS_OK => Ok(Some(take_host_buffer(data, size))),
            STATUS_NOT_FOUND => Ok(None),
            status => Err(HostStatus(status)),
        }
    }
}

// ---------------------------------------------------------------------------
// Live rules: shared data, metrics, ticks, time and callout answers. Each is
// made raw for the same reason as above: the SDK's wrappers panic on a
// status they did not expect, and hosts differ (APISIX's wasm-nginx-module
// answers "OK" to shared data and time without writing anything).

const STATUS_CAS_MISMATCH: u32 = 8;
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const STREAM_HTTP_REQUEST: u32 = 0;
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        metric_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
}

fn status(code: u32) -> Result<(), HostStatus> {
    if code == STATUS_OK {
        Ok(())
    } else {
        Err(HostStatus(code))
    }
}

/// A shared-data value and its CAS token; `None` when absent.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the host writes a buffer it allocated through our allocator.
    unsafe {
        match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            // A host that answers OK without a value (APISIX) has none.
            STATUS_OK if data.is_null() => Ok(None),
            STATUS_OK => Ok(Some((take_host_buffer(data, size), cas))),
            STATUS_NOT_FOUND => Ok(None),
            code => Err(HostStatus(code)),
        }
    }
}

/// `Err(HostStatus(8))` on a CAS mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths come from live slices.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn is_cas_mismatch(status: HostStatus) -> bool {
    status.0 == STATUS_CAS_MISMATCH
}

pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, HostStatus> {
    let mut id: u32 = 0;
    // SAFETY: pointer and length come from a live slice.
    status(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { proxy_record_metric(id, value) })
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Wall-clock milliseconds: the host's clock, or WASI's where the host
/// answers without setting it (APISIX).
pub fn now_ms() -> u64 {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64.
    let code = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if code == STATUS_OK && nanos > 0 {
        return nanos / 1_000_000;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn buffer(buffer_type: u32, size: usize) -> Result<Vec<u8>, HostStatus> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut data: *mut u8 = null_mut();
    let mut returned: usize = 0;
    // SAFETY: as for the header map.
    unsafe {
        match proxy_get_buffer_bytes(buffer_type, 0, size, &mut data, &mut returned) {
            STATUS_OK => Ok(take_host_buffer(data, returned)),
            STATUS_NOT_FOUND => Ok(Vec::new()),
            code => Err(HostStatus(code)),
        }
    }
}

pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, HostStatus> {
    buffer(BUFFER_PLUGIN_CONFIGURATION, size)
}

pub fn http_call_response_body(size: usize) -> Result<Vec<u8>, HostStatus> {
    buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, size)
}

/// The callout answer's headers, serialised like the request header map.
pub fn http_call_response_headers() -> Result<Vec<u8>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as for the request header map.
    unsafe {
        match proxy_get_header_map_pairs(MAP_HTTP_CALL_RESPONSE_HEADERS, &mut data, &mut size) {
            STATUS_OK => Ok(take_host_buffer(data, size)),
            STATUS_NOT_FOUND => Ok(Vec::new()),
            code => Err(HostStatus(code)),
        }
    }
}

pub fn resume_http_request() -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}
