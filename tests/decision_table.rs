//! The decision table, natively. The same table runs as WebAssembly in
//! `wasm_decision.rs`.

mod table;

#[test]
fn every_case_of_the_table_holds() {
    let failures = table::failures();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table::CASES.len(),
        failures.join("\n")
    );
}

/// The wasm build must bucket exactly as the native one; both compare with
/// these figures, taken natively and frozen.
#[test]
fn bucket_fingerprint_is_frozen() {
    let (sum, first) = table::bucket_fingerprint();
    assert_eq!(
        (sum, first),
        (table::FINGERPRINT_SUM, table::FINGERPRINT_FIRST.to_vec())
    );
}
