//! The floor of `bench/callgrind.py`: a routing filter written by hand on the
//! raw proxy-wasm ABI (0.2.1), without the SDK, exporting only the three
//! functions it needs. Per request it makes exactly the host calls that
//! issue 9 allows graylane:
//!
//! - one read of the request header map (`proxy_get_header_map_pairs`);
//! - one write of the cluster header (`proxy_replace_header_map_value`; a
//!   replace also drops any copy the client sent);
//! - the tag header write, only when it picks the canary and the request does
//!   not already carry the canary tag;
//! - a remove of the cluster header only when no service claims a request
//!   that carried one.
//!
//! Its decision knows rule set `d` of `bench/gen.py` by heart instead of
//! reading a rule document: hosts `s<i>.bench.local` and `*.s<i>.bench.local`
//! for i < 10 (port ignored, case-insensitive), clusters `s<i>-stable` and
//! `s<i>-canary`, the tag header picks a subset by its tag (`stable`,
//! `canary`), then `x-canary: true` or a `Cookie` header matching
//! `^(.*; ?)?group=beta(;.*)?$` (each `Cookie` header on its own) picks the
//! canary, then a weight of 5/10/20/50 % by i mod 4 (a per-VM golden-ratio
//! walk over 10,000 buckets, like graylane's unsticky split). So it routes
//! the benchmark's request mix as the contract says and goes through the
//! same routing check as graylane.
//!
//! No panic path: every read of the host's buffer is bounds-checked.

use std::alloc::{alloc, dealloc, Layout};
use std::ptr::null_mut;
use std::slice;
use std::sync::atomic::{AtomicU32, Ordering};

const HTTP_REQUEST_HEADERS: u32 = 0;
const STATUS_OK: u32 = 0;
const ACTION_CONTINUE: u32 = 0;

const CLUSTER_HEADER: &[u8] = b"x-graylane-cluster";
const TAG_HEADER: &[u8] = b"x-gray-tag";
const CANARY_TAG: &[u8] = b"canary";
const STABLE_TAG: &[u8] = b"stable";
const DOMAIN: &[u8] = b".bench.local";
const BETA_COOKIE: &[u8] = b"group=beta";
const SERVICES: u32 = 10;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
}

/// Marks the ABI version; never called.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host asks for the buffers it hands back (here: the header map).
/// Returns null when the allocation fails, which the host reports as an error.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    match Layout::from_size_align(size.max(1), 1) {
        // SAFETY: the layout's size is not zero.
        Ok(layout) => unsafe { alloc(layout) },
        Err(_) => null_mut(),
    }
}

/// A buffer the host allocated through `proxy_on_memory_allocate` and filled;
/// freed when dropped.
struct HostBuffer {
    data: *mut u8,
    size: usize,
}

impl HostBuffer {
    fn bytes(&self) -> &[u8] {
        if self.data.is_null() {
            return &[];
        }
        // SAFETY: the host wrote `size` bytes at `data`, which it got from
        // proxy_on_memory_allocate(size).
        unsafe { slice::from_raw_parts(self.data, self.size) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if self.data.is_null() {
            return;
        }
        if let Ok(layout) = Layout::from_size_align(self.size.max(1), 1) {
            // SAFETY: allocated by proxy_on_memory_allocate with this layout.
            unsafe { dealloc(self.data, layout) }
        }
    }
}

/// What the decision needs from the request headers.
#[derive(Default)]
struct Request<'a> {
    authority: Option<&'a [u8]>,
    tag: Option<&'a [u8]>,
    canary_header: bool,
    beta_cookie: bool,
    cluster_header: bool,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let four: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(four)).ok()
}

impl<'a> Request<'a> {
    /// Reads the serialized map: a u32 count, then count (key size, value
    /// size) u32 pairs, then each key and value followed by a NUL byte.
    /// A truncated map yields what was read before the truncation.
    fn read(map: &'a [u8]) -> Request<'a> {
        let mut request = Request::default();
        let Some(count) = u32_at(map, 0) else {
            return request;
        };
        let Some(mut offset) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
            return request;
        };
        for i in 0..count {
            let sizes = 4 + 8 * i;
            let (Some(key_size), Some(value_size)) = (u32_at(map, sizes), u32_at(map, sizes + 4)) else {
                break;
            };
            let Some(key) = offset.checked_add(key_size).and_then(|end| map.get(offset..end)) else {
                break;
            };
            offset += key_size + 1;
            let Some(value) = offset.checked_add(value_size).and_then(|end| map.get(offset..end)) else {
                break;
            };
            offset += value_size + 1;
            request.see(key, value);
        }
        request
    }

    fn see(&mut self, key: &[u8], value: &'a [u8]) {
        match key {
            b":authority" => self.authority = Some(value),
            b"x-gray-tag" => self.tag = self.tag.or(Some(value)),
            b"x-canary" => self.canary_header |= value == b"true",
            b"cookie" => self.beta_cookie |= beta_cookie(value),
            CLUSTER_HEADER => self.cluster_header = true,
            _ => {}
        }
    }
}

/// `^(.*; ?)?group=beta(;.*)?$` by hand.
fn beta_cookie(value: &[u8]) -> bool {
    let mut from = 0;
    while let Some(found) = value
        .get(from..)
        .and_then(|rest| rest.windows(BETA_COOKIE.len()).position(|w| w == BETA_COOKIE))
    {
        let at = from + found;
        let before = value.get(..at).unwrap_or_default();
        let after = value.get(at + BETA_COOKIE.len()..).unwrap_or_default();
        if (before.is_empty() || before.ends_with(b";") || before.ends_with(b"; "))
            && (after.is_empty() || after.starts_with(b";"))
        {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The service index of an `:authority`: `s<i>.bench.local` or
/// `<labels>.s<i>.bench.local`, any case, any port.
fn service(authority: &[u8]) -> Option<u32> {
    let host = authority.split(|&c| c == b':').next().unwrap_or_default();
    let cut = host.len().checked_sub(DOMAIN.len())?;
    let (rest, domain) = (host.get(..cut)?, host.get(cut..)?);
    if !domain.eq_ignore_ascii_case(DOMAIN) {
        return None;
    }
    let label = match rest.iter().rposition(|&c| c == b'.') {
        Some(0) => return None,
        Some(dot) => rest.get(dot + 1..)?,
        None => rest,
    };
    let (first, digits) = label.split_first()?;
    if !first.eq_ignore_ascii_case(&b's') || digits.is_empty() || (digits.len() > 1 && digits.first() == Some(&b'0')) {
        return None;
    }
    let mut index: u32 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        index = index.checked_mul(10)?.checked_add(u32::from(digit - b'0'))?;
    }
    (index < SERVICES).then_some(index)
}

static DRAWS: AtomicU32 = AtomicU32::new(0);

/// The weighted split of the requests no tag or match claimed.
fn weighted_to_canary(service: u32) -> bool {
    let percent = match service % 4 {
        0 => 5,
        1 => 10,
        2 => 20,
        _ => 50,
    };
    let draw = DRAWS.fetch_add(1, Ordering::Relaxed);
    draw.wrapping_mul(6180) % 10_000 < percent * 100
}

/// `s<i>-canary` or `s<i>-stable`, into `out`; returns its length.
fn cluster_name(service: u32, canary: bool, out: &mut [u8; 24]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = service;
    let mut count = 0;
    loop {
        if let Some(slot) = digits.get_mut(count) {
            *slot = b'0' + (n % 10) as u8;
        }
        count += 1;
        n /= 10;
        if n == 0 || count == digits.len() {
            break;
        }
    }
    let suffix: &[u8] = if canary { b"-canary" } else { b"-stable" };
    let mut len = 0;
    let mut push = |byte: u8| {
        if let Some(slot) = out.get_mut(len) {
            *slot = byte;
            len += 1;
        }
    };
    push(b's');
    for &digit in digits.iter().take(count).rev() {
        push(digit);
    }
    for &byte in suffix {
        push(byte);
    }
    len
}

fn replace(name: &[u8], value: &[u8]) {
    // SAFETY: pointers and lengths of live slices. A failing status leaves the
    // request as it was; the floor has nothing better to do with it.
    unsafe {
        proxy_replace_header_map_value(HTTP_REQUEST_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host writes a pointer and a size into these two locals.
    let status = unsafe { proxy_get_header_map_pairs(HTTP_REQUEST_HEADERS, &mut data, &mut size) };
    let map = HostBuffer { data, size };
    if status != STATUS_OK {
        return ACTION_CONTINUE;
    }
    let request = Request::read(map.bytes());
    let Some(service) = request.authority.and_then(service) else {
        if request.cluster_header {
            // SAFETY: pointer and length of a constant.
            unsafe {
                proxy_remove_header_map_value(HTTP_REQUEST_HEADERS, CLUSTER_HEADER.as_ptr(), CLUSTER_HEADER.len());
            }
        }
        return ACTION_CONTINUE;
    };
    let canary = match request.tag {
        Some(tag) if tag == CANARY_TAG => true,
        Some(tag) if tag == STABLE_TAG => false,
        _ => request.canary_header || request.beta_cookie || weighted_to_canary(service),
    };
    let mut cluster = [0u8; 24];
    let len = cluster_name(service, canary, &mut cluster);
    replace(CLUSTER_HEADER, cluster.get(..len).unwrap_or_default());
    if canary && request.tag != Some(CANARY_TAG) {
        replace(TAG_HEADER, CANARY_TAG);
    }
    ACTION_CONTINUE
}

/// With `--features every-callback` (the `floor-callbacks` arm of
/// bench/callgrind.py): the same floor, also exporting as no-ops the
/// callbacks that Envoy calls on every HTTP stream when a module exports them,
/// as the SDK's dispatcher does. The difference to the floor is what those
/// crossings into the VM cost the host, without any SDK code behind them.
#[cfg(feature = "every-callback")]
mod every_callback {
    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root_context_id: u32, _size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_context_id: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_request_body(_context_id: u32, _size: usize, _end_of_stream: u32) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_request_trailers(_context_id: u32, _trailers: usize) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_body(_context_id: u32, _size: usize, _end_of_stream: u32) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_trailers(_context_id: u32, _trailers: usize) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_log(_context_id: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(_context_id: u32) {}
}
