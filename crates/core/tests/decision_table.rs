//! The decision table, natively. The same table runs as WebAssembly in
//! `wasm_decision.rs`.

mod table;

#[test]
fn every_case_of_the_table_holds() {
    table::assert_every_case_holds();
}

#[test]
fn bucket_fingerprint_is_frozen() {
    table::assert_fingerprint_is_frozen();
}
