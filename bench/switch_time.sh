#!/usr/bin/env bash
# Switch time of live rules: from the etcd put that flips the blue-green
# default to the last request Envoy still routed to the old colour.
#
# Starts a real etcd, two echo backends and Envoy (2 workers) with graylane
# reading its rules from etcd every INTERVAL_MS (default 1000), then flips the
# colour FLIPS times (default 10) under continuous traffic on 4 connections,
# and prints each switch time, the median and the worst. Not a test: it
# asserts nothing, it measures.
#
#   bench/switch_time.sh                 # 10 flips at 1 s
#   FLIPS=20 INTERVAL_MS=500 bench/switch_time.sh
#
# Needs: etcd (Debian etcd-server), Envoy (ENVOY_BIN, .tools/venv/bin/envoy or
# on PATH), python3, cargo with the wasm32-wasip1 target.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FLIPS="${FLIPS:-10}"
INTERVAL_MS="${INTERVAL_MS:-1000}"
WORK="$(mktemp -d /tmp/graylane-switch.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ENVOY="${ENVOY_BIN:-}"
if [[ -z "$ENVOY" ]]; then
    if [[ -x "$ROOT/.tools/venv/bin/envoy" ]]; then ENVOY="$ROOT/.tools/venv/bin/envoy"
    elif [[ -x /tmp/envoy-venv/bin/envoy ]]; then ENVOY=/tmp/envoy-venv/bin/envoy
    else ENVOY="$(command -v envoy)"; fi
fi
ETCD="$(command -v etcd || echo /usr/bin/etcd)"
[[ -x "$ETCD" ]] || { echo "no etcd (apt-get install etcd-server)" >&2; exit 1; }

echo "building the plugin…" >&2
CARGO_TARGET_DIR="$ROOT/target/wasm-for-bench" cargo build --quiet --release \
    --manifest-path "$ROOT/Cargo.toml" --target wasm32-wasip1 -p graylane
WASM="$ROOT/target/wasm-for-bench/wasm32-wasip1/release/graylane.wasm"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD_PORT=$(free_port); PEER_PORT=$(free_port); LISTEN=$(free_port); ADMIN=$(free_port)
BLUE=$(free_port); GREEN=$(free_port)

"$ETCD" --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/echo.py" <<'EOF'
import http.server, sys
name = sys.argv[2].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("x-echo-backend", name.decode())
        self.send_header("content-length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
python3 "$WORK/echo.py" "$BLUE" b-blue & PIDS+=($!)
python3 "$WORK/echo.py" "$GREEN" b-green & PIDS+=($!)

doc() { # live other
    printf '{"services":[{"name":"b","hosts":["b.example.com"],"default":"%s","subsets":[{"name":"%s","cluster":"b-%s"},{"name":"%s","cluster":"b-%s"}]}]}' "$1" "$1" "$1" "$2" "$2"
}
PLUGIN=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["source"]={"format":"etcd","cluster":"etcd","key":"/graylane/b","interval_ms":int(sys.argv[2]),"timeout_ms":500}; print(json.dumps(json.dumps(d)))' "$(doc blue green)" "$INTERVAL_MS")
cluster() { echo "  - {name: $1, type: STATIC, connect_timeout: 0.5s, load_assignment: {cluster_name: $1, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}}]}]}}"; }
cat >"$WORK/envoy.yaml" <<EOF
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: $LISTEN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/", headers: [{name: x-graylane-cluster, present_match: true}]}
                route: {cluster_header: x-graylane-cluster}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: graylane
                root_id: graylane
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: $PLUGIN
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: $WASM}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
$(cluster b-blue "$BLUE")
$(cluster b-green "$GREEN")
$(cluster etcd "$ETCD_PORT")
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $ADMIN}}}
EOF
"$ENVOY" -c "$WORK/envoy.yaml" --concurrency 2 --use-dynamic-base-id -l warning >"$WORK/envoy.log" 2>&1 &
PIDS+=($!)

python3 - "$ETCD_PORT" "$LISTEN" "$ADMIN" "$FLIPS" "$INTERVAL_MS" "$(doc blue green)" "$(doc green blue)" <<'EOF'
import base64, http.client, json, random, statistics, sys, threading, time
etcd, listen, admin, flips, interval = (int(a) for a in sys.argv[1:6])
docs = {"blue": sys.argv[6], "green": sys.argv[7]}

def wait(port, path, method="GET", body=None):
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request(method, path, body=body, headers={"host": "b.example.com"})
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"port {port} never answered")

def put(colour):
    c = http.client.HTTPConnection("127.0.0.1", etcd, timeout=5)
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    c.request("POST", "/v3/kv/put", json.dumps({"key": b64("/graylane/b"), "value": b64(docs[colour])}))
    reply = json.loads(c.getresponse().read())
    return int(reply["header"]["revision"])

wait(etcd, "/v3/kv/range", "POST", '{"key":"AA=="}')
put("blue")
wait(admin, "/ready")
wait(listen, "/")

state = {"old": None, "last_old": 0.0, "streak": 0, "failed": 0, "sent": 0}
lock = threading.Lock()
stop = False
def client():
    c = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
    while not stop:
        try:
            c.request("GET", "/", headers={"host": "b.example.com"})
            r = c.getresponse(); r.read()
            backend = r.getheader("x-echo-backend") if r.status == 200 else None
        except OSError:
            backend = None
            c = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        now = time.monotonic()
        with lock:
            state["sent"] += 1
            if backend is None:
                state["failed"] += 1
            elif backend == state["old"]:
                state["last_old"] = now
                state["streak"] = 0
            else:
                state["streak"] += 1
threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
for t in threads: t.start()

def settle(colour):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            state["old"] = "b-green" if colour == "blue" else "b-blue"
            state["streak"] = 0
        time.sleep(1.0)
        with lock:
            if state["streak"] > 30:
                return
    sys.exit(f"never settled on {colour}: {state}")

settle("blue")
times = []
colour = "blue"
for flip in range(flips):
    time.sleep(random.uniform(0, interval / 1000))  # sample every phase of the interval
    new = "green" if colour == "blue" else "blue"
    with lock:
        state["old"] = "b-" + colour
        state["last_old"] = 0.0
        state["streak"] = 0
    revision = put(new)
    changed = time.monotonic()
    deadline = changed + 30
    while True:
        time.sleep(0.02)
        with lock:
            done = state["streak"] >= 100 and time.monotonic() - max(state["last_old"], changed) > 3 * interval / 1000
            last_old = state["last_old"]
        if done:
            break
        if time.monotonic() > deadline:
            sys.exit("the flip never completed")
    switch = max(0.0, last_old - changed) * 1000
    times.append(switch)
    print(f"flip {flip + 1:2d} {colour:>5}→{new:<5} revision {revision}: {switch:7.1f} ms", flush=True)
    colour = new
stop = True
print(f"interval {interval} ms, {flips} flips: median {statistics.median(times):.0f} ms, "
      f"worst {max(times):.0f} ms, best {min(times):.0f} ms; "
      f"{state['sent']} requests, {state['failed']} failed")
EOF
