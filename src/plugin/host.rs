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
/// [`crate::request::parse_header_map`].
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
