#!/usr/bin/env bash
# Push: how fast a flip reaches every worker, and what push costs at idle.
#
# 1. Flips: the Envoy tests of tests/live_rules.rs that flip the blue-green
#    default FLIPS times (default 20) through a long-polled control plane
#    (the graylane format with Prefer: wait, and Consul blocking queries),
#    default settings, Envoy with 2 workers and traffic on both; a flip
#    counts when every worker answers with the new colour. Prints p50, p99
#    and max of change → every worker switched. Then the etcd watch's
#    benchmark (tests/etcd_watch.rs, 20 flips: write → last old answer,
#    beside a plain etcd watch client's event; etcd's request counters over
#    a quiet minute).
# 2. Idle (unless NO_IDLE=1): bench/idle_cost.py under callgrind, arms:
#    no source; BEFORE_WASM (a build before push, if given) polling at its
#    defaults (interval 5 s, tick 1 s) and at interval 250 ms (tick 50 ms:
#    the short-tick way to adopt within 50 ms); this build with push.
#
#   bench/flip_time.sh
#   FLIPS=50 BEFORE_WASM=/tmp/main/graylane.wasm WINDOW=30 bench/flip_time.sh
#
# Needs Envoy (ENVOY_BIN), valgrind for the idle part, python3, cargo.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
FLIPS="${FLIPS:-20}"
out="$(mktemp /tmp/graylane-flips.XXXXXX)"
trap 'rm -f "$out"' EXIT

echo "== flips ($FLIPS per source)" >&2
GRAYLANE_FLIPS="$FLIPS" cargo test -q -p graylane-e2e --test live_rules -- --nocapture --test-threads 1 \
    graylane_long_poll_flips_reach_every_worker consul_blocking_query_flips_reach_every_worker >"$out" 2>&1 \
    || { cat "$out"; exit 1; }
grep -oE 'push-(graylane|consul): .*' "$out"

echo "== etcd watch (20 flips, then a quiet minute)" >&2
cargo test -q -p graylane-e2e --test etcd_watch watch_flip_benchmark -- --ignored --nocapture >"$out" 2>&1 \
    || { cat "$out"; exit 1; }
grep -oE '(20 flips|write → the event|the gateway.s part|etcd over a quiet minute).*' "$out"

[[ "${NO_IDLE:-}" == 1 ]] && exit 0
echo "== idle cost" >&2
cargo build --quiet --release --target wasm32-wasip1 -p graylane
wasm="$ROOT/target/wasm32-wasip1/release/graylane.wasm"
arms=(--arm "no-source=$wasm=null")
if [[ -n "${BEFORE_WASM:-}" ]]; then
    arms+=(--arm "before-poll-5s=$BEFORE_WASM={}")
    arms+=(--arm "before-poll-250ms=$BEFORE_WASM={\"interval_ms\": 250, \"timeout_ms\": 200}")
fi
arms+=(--arm "push=$wasm={}")
python3 bench/idle_cost.py --window "${WINDOW:-20}" "${arms[@]}"
