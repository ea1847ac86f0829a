//! Exports for bench/wasm-decide/run.mjs: load a rule set and a request mix,
//! then decide many requests in one call, so that the time measured from
//! JavaScript is the decision's and not the boundary's.

use graylane_core::config;
use graylane_core::decision::decide;
use graylane_core::request::{parse_header_map, HeaderPair, Request};
use graylane_core::rules::Rules;
use graylane_core::split::WeylSequence;

pub struct Bench {
    rules: Rules,
    owned: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    serialised: Vec<Vec<u8>>,
    sequence: WeylSequence,
}

/// A buffer of `len` bytes for the caller to fill; never freed (a benchmark).
#[no_mangle]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buffer = vec![0u8; len];
    let pointer = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    pointer
}

/// # Safety
/// `pointer` and `len` describe a buffer from `alloc`.
unsafe fn bytes<'a>(pointer: *const u8, len: usize) -> &'a [u8] {
    std::slice::from_raw_parts(pointer, len)
}

fn serialise(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        for part in [name, value] {
            out.extend_from_slice(part);
            out.push(0);
        }
    }
    out
}

/// Compiles the rules and reads the request mix; null if either fails.
///
/// # Safety
/// Both buffers come from `alloc`.
#[no_mangle]
pub unsafe extern "C" fn setup(
    rules: *const u8,
    rules_len: usize,
    requests: *const u8,
    requests_len: usize,
) -> *mut Bench {
    let Ok(rules) = config::compile(bytes(rules, rules_len)) else {
        return std::ptr::null_mut();
    };
    let Ok(parsed) =
        serde_json::from_slice::<Vec<Vec<(String, String)>>>(bytes(requests, requests_len))
    else {
        return std::ptr::null_mut();
    };
    let owned: Vec<Vec<(Vec<u8>, Vec<u8>)>> = parsed
        .into_iter()
        .map(|pairs| {
            pairs
                .into_iter()
                .map(|(n, v)| (n.into_bytes(), v.into_bytes()))
                .collect()
        })
        .collect();
    let serialised = owned.iter().map(|p| serialise(p)).collect();
    Box::into_raw(Box::new(Bench {
        rules,
        owned,
        serialised,
        sequence: WeylSequence::new(1),
    }))
}

/// `decide` on `iterations` requests, cycling through the mix; the header
/// views are built once before the loop. Returns a checksum.
///
/// # Safety
/// `bench` comes from `setup`.
#[no_mangle]
pub unsafe extern "C" fn run_decide(bench: *mut Bench, iterations: u32) -> u32 {
    let bench = &mut *bench;
    let borrowed: Vec<Vec<HeaderPair>> = bench
        .owned
        .iter()
        .map(|p| {
            p.iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect()
        })
        .collect();
    let views: Vec<Request> = borrowed.iter().map(|p| Request::new(p)).collect();
    let mut sum = 0u32;
    for (_, request) in (0..iterations).zip(views.iter().cycle()) {
        let decision = decide(&bench.rules, request, &mut bench.sequence);
        sum = sum.wrapping_add(decision.edits.len() as u32);
    }
    sum
}

/// What the plugin does per request besides host calls: parse the
/// serialised header map, build the view, decide.
///
/// # Safety
/// `bench` comes from `setup`.
#[no_mangle]
pub unsafe extern "C" fn run_path(bench: *mut Bench, iterations: u32) -> u32 {
    let bench = &mut *bench;
    let mut sum = 0u32;
    for (_, buffer) in (0..iterations).zip(bench.serialised.iter().cycle()) {
        if let Some(pairs) = parse_header_map(buffer) {
            let decision = decide(&bench.rules, &Request::new(&pairs), &mut bench.sequence);
            sum = sum.wrapping_add(decision.edits.len() as u32);
        }
    }
    sum
}

/// Compiles a document `iterations` times (the plugin's on_configure);
/// returns the number of services, 0 if refused.
///
/// # Safety
/// The buffer comes from `alloc`.
#[no_mangle]
pub unsafe extern "C" fn run_compile(document: *const u8, len: usize, iterations: u32) -> u32 {
    let mut services = 0;
    for _ in 0..iterations {
        services = config::compile(bytes(document, len)).map_or(0, |r| r.services.len() as u32);
    }
    services
}
