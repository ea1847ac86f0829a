#!/usr/bin/env python3
"""Idle cost of live rules: instructions per second of an idle Envoy
(--concurrency 2, so three graylane VMs: two workers and the main thread's)
under callgrind, per arm, and the requests the control plane got meanwhile.

Method (as bench/callgrind.py): start Envoy under callgrind, warm up with
requests on several connections (both workers), wait until idle, zero the
counters (callgrind_control -z), wait a fixed window, dump (-d), read the
summary. The control plane is a small long-poll server here: it honours
If-None-Match, and holds a request that carries `Prefer: wait=N` for N
seconds before answering 304.

  bench/idle_cost.py --arm NAME=WASM=SOURCE_JSON ... [--window 20]

SOURCE_JSON is the plugin's `source` section ("null": no source). The arms
bench/flip_time.sh runs: the build before push with its defaults and with a
short interval (the short-tick alternative), and this build with push.
"""
import argparse
import http.client
import http.server
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the real Envoy binary behind pip's launcher)

DOCUMENT = json.dumps({"services": [{"name": "b", "hosts": ["b.example.com"], "default": "blue",
                                      "subsets": [{"name": "blue", "cluster": "backend"}]}]})


class ControlPlane(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    requests = 0

    def handle_error(self, request, client_address):
        pass  # Envoy going away between arms resets its connections


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests += 1
        if self.headers.get("if-none-match") == '"1"':
            wait = re.match(r"wait=(\d+)", self.headers.get("prefer", ""))
            if wait:
                time.sleep(int(wait.group(1)))
            self.send_response(304)
            self.send_header("etag", '"1"')
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = DOCUMENT.encode()
        self.send_response(200)
        self.send_header("etag", '"1"')
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_config(wasm, source, listen, admin, control, backend):
    document = json.loads(DOCUMENT)
    if source is not None:
        document["source"] = source
    plugin = json.dumps(json.dumps(document))
    cluster = lambda name, port: (
        f"  - {{name: {name}, type: STATIC, connect_timeout: 0.5s, load_assignment: {{cluster_name: {name}, "
        f"endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}}}")
    return f"""static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
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
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: graylane
                root_id: graylane
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {plugin}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{cluster("control", control)}
{cluster("backend", backend)}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
"""


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(port, path, host="b.example.com", timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path, headers={"host": host})
    r = c.getresponse()
    r.read()
    return r.status


def callgrind_control(flag, pid):
    out = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or "OK" not in out.stdout:
        sys.exit(f"callgrind_control {flag} {pid}: {out.stdout} {out.stderr}")


def measure(envoy, name, wasm, source, window, workdir, control_port, control):
    listen, admin = free_port(), free_port()
    config = os.path.join(workdir, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(envoy_config(wasm, source, listen, admin, control_port, free_port()))
    out = os.path.join(workdir, f"{name}.callgrind")
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--smc-check=all-non-file",
                             f"--callgrind-out-file={out}", envoy, "-c", config, "--concurrency", "2",
                             "--use-dynamic-base-id", "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if get(admin, "/ready", timeout=5) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"{name}: Envoy never got ready (see {log.name})")
            time.sleep(1)
        # Warm up: connections land on both workers.
        for _ in range(3):
            threads = [threading.Thread(target=lambda: [get(listen, "/") for _ in range(5)]) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        time.sleep(5)
        calm, before = 0, cpu_seconds(proc.pid)
        calm_deadline = time.monotonic() + 120
        while calm < 3 and time.monotonic() < calm_deadline:
            time.sleep(1)
            now = cpu_seconds(proc.pid)
            calm = calm + 1 if now - before < 0.3 else 0
            before = now
        callgrind_control("-z", proc.pid)
        requests_before = control.requests
        started = time.monotonic()
        time.sleep(window)
        callgrind_control("-d", proc.pid)
        elapsed = time.monotonic() - started
        requests = control.requests - requests_before
        total = 0
        for dump in os.listdir(workdir):
            if dump.startswith(f"{name}.callgrind") and dump.endswith(".1"):
                with open(os.path.join(workdir, dump)) as f:
                    for line in f:
                        if line.startswith("summary:"):
                            total += int(line.split()[1])
        return total / elapsed, requests / elapsed * 60
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, help="NAME=WASM=SOURCE_JSON")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured at idle")
    parser.add_argument("--envoy", default=os.environ.get("ENVOY_BIN", "envoy"))
    args = parser.parse_args()
    # Valgrind must run the binary itself, not pip's Python launcher.
    args.envoy = os.path.realpath(bench.real_envoy(args.envoy))
    control = ControlPlane(("127.0.0.1", 0), Handler)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    control_port = control.server_address[1]
    results = []
    with tempfile.TemporaryDirectory(prefix="graylane-idle.") as workdir:
        for arm in args.arm:
            name, wasm, source = arm.split("=", 2)
            source = json.loads(source)
            if source is not None:
                source = {"cluster": "control", "path": "/rules", **source}
            per_s, per_min = measure(args.envoy, name, wasm, source, args.window, workdir, control_port, control)
            results.append((name, per_s, per_min))
            print(f"{name}: {per_s / 1e3:.0f} k instructions/s at idle (whole Envoy, 2 workers), "
                  f"{per_min:.1f} control-plane requests/min", flush=True)
    base = next((per_s for name, per_s, _ in results if name == "no-source"), None)
    if base is not None:
        print("\nabove the arm without a source, per graylane VM (3: two workers and the main thread's):")
        for name, per_s, per_min in results:
            if name != "no-source":
                print(f"  {name}: {(per_s - base) / 3 / 1e3:.0f} k instructions/s per VM, {per_min:.1f} requests/min")


if __name__ == "__main__":
    main()
