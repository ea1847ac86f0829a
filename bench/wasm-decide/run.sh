#!/usr/bin/env bash
# decide() in V8 (node), no host calls: graylane as configured, and with all
# of the regex crate's perf features for comparison.
set -euo pipefail
cd "$(dirname "$0")"
out=target/wasm32-unknown-unknown/release/wasm_decide.wasm
cargo build --quiet --release --target wasm32-unknown-unknown
cp "$out" target/current.wasm
cargo build --quiet --release --target wasm32-unknown-unknown --features all-regex-perf
cp "$out" target/all-regex-perf.wasm
node run.mjs target/current.wasm current
node run.mjs target/all-regex-perf.wasm all-regex-perf
