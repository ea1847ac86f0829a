//! The decision table and the bucket fingerprint, compiled to
//! wasm32-unknown-unknown and run under node by wasm-bindgen-test-runner:
//! the code that ships as WebAssembly gives the native answers.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]

mod table;

use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn every_case_of_the_table_holds_in_wasm() {
    table::assert_every_case_holds();
}

#[wasm_bindgen_test]
fn buckets_equal_the_native_ones() {
    table::assert_fingerprint_is_frozen();
}

#[wasm_bindgen_test]
fn configuration_errors_are_the_same_in_wasm() {
    let document = br#"{"services":[{"name":"b","default":"x","subsets":[{"name":"a","cluster":"c","weight":100.5}]}]}"#;
    let errors = graylane_core::config::compile(document)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        errors.as_deref(),
        Some(
            "services[0].subsets[0].weight: must be between 0 and 100 (percent), got 100.5; \
             services[0].default: names no subset of this service: \"x\" (subsets: a)"
        )
    );
}
