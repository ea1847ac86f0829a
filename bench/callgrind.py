#!/usr/bin/env python3
"""Instruction counts of the gateway under callgrind: per request, at start-up
and at idle, for native Envoy routing, Lua, the floor filter, the SDK minimal
filter and graylane. Not part of the tests: nothing here asserts a time or a
count; it prints figures.

Run through bench/callgrind.sh, which builds the modules and generates the
configurations first (bench/gen.py --sets d --out bench/out/callgrind). See
bench/README.md.

Per arm (one gateway at a time unless --jobs 2):

1. without valgrind: start the gateway (--concurrency 1), run the routing
   check of bench.py (the request mix once, per-cluster counts against the
   contract), warm up, read VmRSS;
2. under `valgrind --tool=callgrind --smc-check=all-non-file`: connect to the
   listener as soon as it accepts, send the first request of the mix and dump
   when it is answered (start-up: the instructions from exec to first answer);
   warm up over the same keep-alive connection (the warm-up is the routing
   check again), then per repeat: wait until idle, `callgrind_control -z`,
   N requests on that one connection, `callgrind_control -d`; zero, stay
   idle as long, dump; (busy - idle) / N.

The instruction counts are the `summary:` lines of the dumps: every thread's
instructions since the last zero or dump (Envoy is stripped: totals only).
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (the wall-clock benchmark: real_envoy, Envoy, check_routing)

RESULTS_DIR = os.path.join(HERE, "results")
# Arms routed by the rules, and so routing-checked; the minimal filters always
# write s0's cluster.
ROUTED = ("native", "lua", "floor", "floor-callbacks", "graylane", "graylane-b", "graylane-c")
# Arms run with another arm's configuration and their own .wasm (--module).
DERIVED = {"floor-callbacks": "floor", "graylane-b": "graylane", "graylane-c": "graylane"}
DESCRIPTIONS = {
    "native": "Envoy's own route table, no filter",
    "lua": "envoy.filters.http.lua, the same rules",
    "floor": "bench/floor-filter: raw ABI, one header-map read, the cluster write, the tag when canary",
    "floor-callbacks": "the floor also exporting, as no-ops, the HTTP stream callbacks the SDK exports",
    "minimal": "bench/minimal-filter through the SDK: reads x-canary, writes s0's cluster (not routing)",
    "minimal-raw": "bench/minimal-filter on the raw ABI: reads x-canary, writes s0's cluster (not routing)",
    "graylane": "the graylane .wasm",
    "graylane-b": "another graylane .wasm (--module graylane-b=PATH), on graylane's configuration",
    "graylane-c": "a third graylane .wasm (--module graylane-c=PATH)",
}

log_lock = threading.Lock()


def log(*args):
    with log_lock:
        print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- .wasm


def _leb(data, i):
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _name(data, i):
    n, i = _leb(data, i)
    return data[i:i + n].decode("utf-8", "replace"), i + n


def wasm_summary(path):
    """Size, code section size, imports and exported functions of a module."""
    data = open(path, "rb").read()
    out = {"path": path, "bytes": len(data), "code_bytes": 0, "imports": [], "exports": []}
    i = 8
    while i < len(data):
        section = data[i]
        size, j = _leb(data, i + 1)
        end = j + size
        if section == 2:  # imports: only function imports are expected here
            count, j = _leb(data, j)
            for _ in range(count):
                module, j = _name(data, j)
                field, j = _name(data, j)
                kind = data[j]
                j += 1
                if kind == 0:
                    _, j = _leb(data, j)
                elif kind == 1:  # table: reftype, limits
                    flags, j = _leb(data, j + 1)
                    _, j = _leb(data, j)
                    if flags & 1:
                        _, j = _leb(data, j)
                elif kind == 2:  # memory: limits
                    flags, j = _leb(data, j)
                    _, j = _leb(data, j)
                    if flags & 1:
                        _, j = _leb(data, j)
                elif kind == 3:  # global: type, mutability
                    j += 2
                out["imports"].append(f"{module}.{field}")
        elif section == 7:
            count, j = _leb(data, j)
            for _ in range(count):
                field, j = _name(data, j)
                kind = data[j]
                _, j = _leb(data, j + 1)
                if kind == 0:
                    out["exports"].append(field)
        elif section == 10:
            out["code_bytes"] = size
        i = end
    return out


# ---------------------------------------------------------------- where the instructions run

COST_LINE_START = set("0123456789+-*")
NAME_LINE = re.compile(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$")


def read_maps(pid):
    """Executable mappings of a process: (start, end, path), path "" when anonymous."""
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 5 or "x" not in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            maps.append((start, end, parts[5].strip() if len(parts) > 5 else ""))
    return maps


def where(path, envoy):
    if path == envoy:
        return "envoy"
    if path == "" or path.startswith("["):
        return "jit"  # anonymous executable memory: V8's wasm code and wrappers, LuaJIT's traces
    return "libs"


def by_category(dump, maps, envoy):
    """Self cost of a dump split into envoy (the binary), jit (anonymous
    executable memory) and libs (libc, libm, ld.so, valgrind's preload).
    callgrind names code it has no object for `???`; such a function's
    address is looked up in the process's mappings (part of Envoy's own text
    shows up that way)."""
    obj_names, fn_names = {}, {}
    costs = {"envoy": 0, "jit": 0, "libs": 0}
    ob = fn = None
    skip_next = False
    cache = {}

    def category():
        name = obj_names.get(ob, "???")
        if name != "???":
            return where(name, envoy)
        key = fn_names.get(fn, "")
        if key not in cache:
            try:
                addr = int(key, 16)
            except ValueError:
                addr = None
            cache[key] = next((where(p, envoy) for lo, hi, p in maps if addr is not None and lo <= addr < hi),
                              "jit")
        return cache[key]

    with open(dump) as f:
        for line in f:
            if line[0] in COST_LINE_START:
                if skip_next:  # the line after calls= is the call's inclusive cost
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) > 1:
                    costs[category()] += int(parts[1])
                continue
            m = NAME_LINE.match(line.rstrip("\n"))
            if m:
                kind, ident, name = m.groups()
                table = obj_names if kind.endswith("ob") else fn_names
                if name:
                    table[ident] = name
                if kind == "ob":
                    ob = ident
                elif kind == "fn":
                    fn = ident
            elif line.startswith("calls="):
                skip_next = True
    return costs


# ---------------------------------------------------------------- client


class KeepAlive:
    """HTTP/1.1 requests, one at a time, on one connection."""

    def __init__(self, port, deadline):
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw):
        self.sock.sendall(raw)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._read()
        head = self.buf[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise RuntimeError("chunked answer: not expected from the upstream")
        while len(self.buf) < end + 4 + length:
            self._read()
        self.buf = self.buf[end + 4 + length:]
        return int(head[0].split(" ")[1])

    def _read(self):
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the gateway closed the connection")
        self.buf += data

    def close(self):
        self.sock.close()


def raw_request(req):
    lines = [f"{req['method']} {req['path']} HTTP/1.1"] + [f"{k}: {v}" for k, v in req["headers"]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_all(client, raws, count, start=0):
    statuses = {}
    for k in range(count):
        status = client.request(raws[(start + k) % len(raws)])
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


# bench.check_routing sends with bench.send, a new connection per request;
# inside checked_over(client) it goes over this thread's keep-alive client.
_routed = threading.local()
_new_connection_send = bench.send


def _send(port, method, path, headers):
    client = getattr(_routed, "client", None)
    if client is None:
        return _new_connection_send(port, method, path, headers)
    return client.request(raw_request({"method": method, "path": path, "headers": headers}))


bench.send = _send


@contextlib.contextmanager
def checked_over(client):
    _routed.client = client
    try:
        yield
    finally:
        _routed.client = None


# ---------------------------------------------------------------- gateway


LIVE = set()


class Gateway(bench.Envoy):
    """An Envoy, optionally under callgrind (valgrind execs the tool in the
    same process: the pid is Envoy's)."""

    def __init__(self, envoy, config, admin_port, name, logdir, callgrind_base=None):
        self.admin_port = admin_port
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log_file = open(self.log_path, "w")
        cmd = []
        if callgrind_base:
            cmd = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=yes",
                   f"--callgrind-out-file={callgrind_base}.%p"]
        cmd += [envoy, "-c", config, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        LIVE.add(self)
        self.callgrind_base = f"{callgrind_base}.{self.pid}" if callgrind_base else None
        self.dumps = 0

    def control(self, flag):
        out = subprocess.run(["callgrind_control", flag, str(self.pid)], capture_output=True, text=True,
                             timeout=300)
        if out.returncode != 0 or "OK" not in out.stdout:
            raise RuntimeError(f"callgrind_control {flag} {self.pid}: {out.stdout} {out.stderr}")

    def zero(self):
        self.control("-z")

    def dump(self):
        """Dumps and returns the instructions since the last zero or dump."""
        self.control("-d")
        self.dumps += 1
        with open(self.last_dump()) as f:
            for line in f:
                if line.startswith("summary:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no summary line in {self.last_dump()}")

    def last_dump(self):
        return f"{self.callgrind_base}.{self.dumps}"

    def wait_idle(self, window=0.5, quiet=0.05, windows=3, timeout=120):
        """Until the process used less than `quiet` of a CPU in `windows`
        consecutive windows. Returns the seconds waited."""
        start = time.monotonic()
        calm = 0
        before = self.cpu_seconds()
        while calm < windows:
            if time.monotonic() - start > timeout:
                log(f"{self.name}: not idle after {timeout} s; measuring anyway")
                break
            time.sleep(window)
            now = self.cpu_seconds()
            calm = calm + 1 if now - before < quiet * window else 0
            before = now
        return time.monotonic() - start

    def stop(self, timeout=300):
        LIVE.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def slot_config(path, slot, ports, callgrind=False, stats_flush=False):
    """The arm's configuration with the gateway and admin ports of a slot (so
    that two arms can run side by side with --jobs 2). For callgrind without
    `stats_flush`, stats are flushed only when the admin asks
    (`stats_flush_on_admin`): Envoy's 5-second flush costs about 1.4 M
    instructions, which lands in one window and not in the other and would
    move a per-request figure by 1.4 M / N."""
    with open(path) as f:
        config = json.load(f)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = ports["gateway"]
    config["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    if callgrind and not stats_flush:
        config["stats_flush_on_admin"] = True
    if callgrind:
        # Under callgrind the first request waits for code valgrind has not
        # translated yet: a 300 s route timeout instead of 15 s, and a long
        # connect timeout, so that the first answer is the upstream's. (Not
        # "0s": without a timeout Envoy arms no timer per request, about 3.7 k
        # instructions less than a gateway as deployed.)
        for cluster in config["static_resources"]["clusters"]:
            cluster["connect_timeout"] = "60s"
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for vhost in hcm["route_config"]["virtual_hosts"]:
            for route in vhost["routes"]:
                if "route" in route:
                    route["route"]["timeout"] = "300s"
    out = f"{path[:-len('.json')]}{'.callgrind' if callgrind else ''}.slot{slot}.json"
    with open(out, "w") as f:
        json.dump(config, f, indent=1)
    return out


# ---------------------------------------------------------------- one arm


def measure_arm(args, arm, slot, check, raws, logdir):
    ports = {"gateway": args.port + 10 * slot, "admin": args.port + 10 * slot + 1}
    source = os.path.join(args.out, args.set, f"{arm}.json")
    if arm in DERIVED:
        base = os.path.join(args.out, args.set, f"{DERIVED[arm]}.json")
        with open(base) as f:
            config = json.load(f)
        wasm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]
        wasm["filename"] = os.path.abspath(args.modules[arm])
        with open(source, "w") as f:
            json.dump(config, f, indent=1)
    config = slot_config(source, slot, ports)
    result = {"arm": arm, "description": DESCRIPTIONS.get(arm, arm), "checks": []}
    if arm in args.modules:
        result["wasm"] = wasm_summary(args.modules[arm])

    # 1. RSS, without valgrind
    if not args.no_rss:
        rss = []
        for k in range(args.rss_runs):
            gw = Gateway(args.envoy, config, ports["admin"], f"{arm}-rss{k}", logdir)
            try:
                gw.wait_ready()
                if arm in ROUTED and not args.no_check and k == 0:
                    res = bench.check_routing(gw, ports["gateway"], check)
                    result["checks"].append({"run": "native", "result": res})
                    log(f"{arm}: routing check without valgrind: {'ok' if res['ok'] else 'FAILED'} {res}")
                client = KeepAlive(ports["gateway"], time.monotonic() + 10)
                statuses = send_all(client, raws, args.warmup)
                client.close()
                time.sleep(1)
                rss.append(gw.rss_kib())
                if set(statuses) != {200}:
                    log(f"{arm}: warm-up answers {statuses}")
            finally:
                gw.stop()
        result["rss_kib"] = rss
        log(f"{arm}: VmRSS after warm-up {[round(r / 1024, 1) for r in rss]} MiB")

    # 2. callgrind
    base = os.path.join(logdir, arm, "cg")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    callgrind_config = slot_config(source, slot, ports, callgrind=True, stats_flush=args.stats_flush)
    # further start-ups only (--startups): V8 compiles on background threads,
    # and a module's start-up count moves between runs more than a request's
    extra = []
    for k in range(1, args.startups):
        gw = Gateway(args.envoy, callgrind_config, ports["admin"], f"{arm}-startup{k}", logdir, callgrind_base=base)
        try:
            client = KeepAlive(ports["gateway"], time.monotonic() + args.start_timeout)
            first = client.request(raws[0])
            count = gw.dump()
            client.close()
            extra.append({"instructions": count, "wall_s": round(time.monotonic() - gw.started, 2),
                          "first_status": first})
            log(f"{arm}: start-up {count / 1e6:.1f} M instructions (extra start {k}), status {first}")
        finally:
            gw.stop()
    gw = Gateway(args.envoy, callgrind_config, ports["admin"], f"{arm}-callgrind", logdir, callgrind_base=base)
    client = None
    try:
        client = KeepAlive(ports["gateway"], time.monotonic() + args.start_timeout)
        first = client.request(raws[0])
        startup = gw.dump()
        startup_wall = time.monotonic() - gw.started
        result["startup"] = {"instructions": startup, "wall_s": round(startup_wall, 2), "first_status": first}
        if extra:
            counts = sorted([startup] + [e["instructions"] for e in extra])
            result["startup"].update({"instructions": statistics.median(counts), "all": counts, "extra": extra,
                                      "first_status": max([first] + [e["first_status"] for e in extra],
                                                          key=lambda st: st != 200)})
        log(f"{arm}: start-up {startup / 1e6:.1f} M instructions (exec to first answer, {startup_wall:.1f} s "
            f"under callgrind), status {first}")
        # warm-up: the rest of the mix, then the mix once more as the routing check
        statuses = send_all(client, raws, len(raws) - 1, start=1)
        if arm in ROUTED and not args.no_check:
            with checked_over(client):
                res = bench.check_routing(gw, ports["gateway"], check)
            result["checks"].append({"run": "callgrind", "result": res})
            log(f"{arm}: routing check under callgrind: {'ok' if res['ok'] else 'FAILED'} {res}")
        else:
            more = send_all(client, raws, len(raws))
            for k, v in more.items():
                statuses[k] = statuses.get(k, 0) + v
        if set(statuses) != {200}:
            log(f"{arm}: warm-up answers {statuses}")
        result["repeats"] = []
        for r in range(args.repeats):
            waited = gw.wait_idle()
            gw.zero()
            t0 = time.monotonic()
            statuses = send_all(client, raws, args.requests)
            busy_s = time.monotonic() - t0
            busy = gw.dump()
            busy_dump = gw.last_dump()
            maps = read_maps(gw.pid)
            gw.zero()
            t1 = time.monotonic()
            time.sleep(busy_s)
            idle_s = time.monotonic() - t1
            idle = gw.dump()
            busy_by = by_category(busy_dump, maps, args.envoy)
            idle_by = by_category(gw.last_dump(), maps, args.envoy)
            rep = {
                "busy_instructions": busy, "busy_s": round(busy_s, 3),
                "idle_instructions": idle, "idle_s": round(idle_s, 3),
                "per_request": (busy - idle * busy_s / idle_s) / args.requests,
                "idle_per_s": idle / idle_s,
                "statuses": statuses, "waited_for_idle_s": round(waited, 1),
                "per_request_by": {k: (busy_by[k] - idle_by[k] * busy_s / idle_s) / args.requests for k in busy_by},
            }
            result["repeats"].append(rep)
            log(f"{arm}: repeat {r + 1}/{args.repeats}: {rep['per_request']:.0f} instructions/request "
                f"({args.requests} requests in {busy_s:.1f} s), idle {rep['idle_per_s'] / 1e3:.0f} k/s, "
                f"answers {statuses}")
    finally:
        if client:
            client.close()
        gw.stop()
    per = [r["per_request"] for r in result["repeats"]]
    med = statistics.median(per)
    result["per_request"] = med
    result["spread"] = (max(per) - min(per)) / med if med else None
    result["idle_per_s"] = statistics.median(r["idle_per_s"] for r in result["repeats"])
    result["per_request_by"] = {k: statistics.median(r["per_request_by"][k] for r in result["repeats"])
                                for k in ("envoy", "jit", "libs")}
    return result


# ---------------------------------------------------------------- report


def fmt_k(x):
    return f"{x / 1e3:.1f}k"


def fmt_g(x):
    return f"{x / 1e9:.3f} G" if x >= 1e9 else f"{x / 1e6:.0f} M"


def ratios(arms):
    by = {a["arm"]: a for a in arms}
    out = {}
    g = by.get("graylane")
    if g:
        for other in ("floor", "lua", "native", "minimal"):
            o = by.get(other)
            if o:
                out[f"graylane/{other} instructions/request"] = g["per_request"] / o["per_request"]
                out[f"graylane - {other} instructions/request"] = g["per_request"] - o["per_request"]
        if by.get("floor") and by["floor"].get("startup") and g.get("startup"):
            out["graylane/floor start-up instructions"] = (
                g["startup"]["instructions"] / by["floor"]["startup"]["instructions"])
        if by.get("floor") and by["floor"].get("rss_kib") and g.get("rss_kib"):
            out["graylane - floor RSS MiB"] = (min(g["rss_kib"]) - min(by["floor"]["rss_kib"])) / 1024
    if by.get("floor") and by.get("lua"):
        out["floor/lua instructions/request"] = by["floor"]["per_request"] / by["lua"]["per_request"]
    if by.get("floor") and by.get("floor-callbacks"):
        out["floor-callbacks - floor instructions/request"] = (
            by["floor-callbacks"]["per_request"] - by["floor"]["per_request"])
    if by.get("minimal") and by.get("minimal-raw"):
        out["minimal (SDK) - minimal-raw instructions/request"] = (
            by["minimal"]["per_request"] - by["minimal-raw"]["per_request"])
    return out


def startup_range(startup):
    counts = startup.get("all")
    if not counts:
        return ""
    return f" ({fmt_g(counts[0])} – {fmt_g(counts[-1])}, {len(counts)} starts)"


def wasm_cell(wasm):
    if not wasm:
        return "–"
    return f"{wasm['bytes']:,} ({wasm['code_bytes']:,}; {len(wasm['exports'])} exports)"


def check_cell(arm):
    if not arm["checks"]:
        return "not routing" if arm["arm"] not in ROUTED else "skipped"
    return ", ".join(f"{c['run']} {'ok' if c['result']['ok'] else 'FAILED'}" for c in arm["checks"])


def render(meta, arms):
    lines = ["# graylane gateway under callgrind", ""]
    lines.append(f"- when: {meta['when']}; machine: {meta['nproc']} CPUs, {meta['cpu_model']}, {meta['kernel']}")
    lines.append(f"- Envoy {meta['envoy_version']}, V8; {meta['valgrind']}, "
                 "`--tool=callgrind --smc-check=all-non-file`, gateway `--concurrency 1`; upstream: a plain "
                 "Envoy (direct_response), not under valgrind")
    lines.append(f"- rule set {meta['set']} (10 services, header and cookie-regex rules, weights; the mix of "
                 f"{meta['mix']} requests: matching header, matching cookie, spoofed cluster header, tags, plain, "
                 "unknown hosts); one keep-alive connection")
    lines.append(f"- per request: (busy - idle) / N with N = {meta['requests']}, the idle window as long as the "
                 f"busy one; {meta['repeats']} repeats in one process after a warm-up (the mix twice, the second "
                 "pass being the routing check); median, spread = (max - min) / median; stats flushed "
                 + ("every 5 s" if meta.get("stats_flush") else "only on admin requests (`stats_flush_on_admin`)"))
    lines.append("- start-up: instructions from exec to the first answer (one request sent as soon as the "
                 "listener accepts; median of the starts when several); RSS: VmRSS after the routing check and a warm-up, in a run without valgrind")
    for arm, error in meta.get("failed", {}).items():
        lines.append(f"- **{arm} FAILED**: {error}")
    lines.append("")
    lines.append("| arm | instructions/request | spread | start-up instructions | idle instructions/s | "
                 "RSS MiB | .wasm bytes (code section; exported functions) | routing check |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for a in arms:
        wasm = a.get("wasm")
        lines.append(
            f"| {a['arm']} | {fmt_k(a['per_request'])} | {a['spread'] * 100:.3f} % | "
            f"{fmt_g(a['startup']['instructions'])}{startup_range(a['startup'])}"
            f"{'' if a['startup']['first_status'] == 200 else ' (first answer ' + str(a['startup']['first_status']) + ')'}"
            f" | {a['idle_per_s'] / 1e3:.0f}k | "
            f"{(min(a['rss_kib']) / 1024) if a.get('rss_kib') else float('nan'):.1f} | "
            f"{wasm_cell(wasm)} | {check_cell(a)} |")
    lines.append("")
    lines.append("| ratio | value |")
    lines.append("| --- | ---: |")
    for name, value in ratios(arms).items():
        if " - " in name:
            unit = " MiB" if "MiB" in name else ""
            lines.append(f"| {name} | {value:+.1f}{unit} |" if unit else f"| {name} | {value:+.0f} |")
        else:
            lines.append(f"| {name} | {value:.3f} |")
    lines.append("")
    lines.append("Where the instructions of a request run (median over the repeats; self cost by object: "
                 "`envoy` the binary, `jit` anonymous executable memory (V8's wasm code and wrappers, LuaJIT "
                 "traces), `libs` libc, libm, ld.so):")
    lines.append("")
    lines.append("| arm | envoy | jit | libs |")
    lines.append("| --- | ---: | ---: | ---: |")
    for a in arms:
        by = a["per_request_by"]
        lines.append(f"| {a['arm']} | {fmt_k(by['envoy'])} | {fmt_k(by['jit'])} | {fmt_k(by['libs'])} |")
    lines.append("")
    lines.append("Repeats (instructions/request):")
    lines.append("")
    for a in arms:
        lines.append(f"- {a['arm']} ({a['description']}): "
                     + ", ".join(f"{r['per_request']:.0f}" for r in a["repeats"]))
    lines.append("")
    return "\n".join(lines)


def machine(envoy):
    cpu_model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout.strip()
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": os.uname().release,
        "envoy_version": re.sub(r"^.*version:\s*", "", version),
        "valgrind": valgrind,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envoy", default=os.environ.get("ENVOY", os.path.join(HERE, "..", ".tools/venv/bin/envoy")))
    p.add_argument("--arms", default="native,lua,floor,minimal,graylane")
    p.add_argument("--set", default="d")
    p.add_argument("--out", default=os.path.join(HERE, "out", "callgrind"),
                   help="where bench/gen.py wrote the configurations")
    p.add_argument("--module", action="append", default=[], metavar="ARM=PATH",
                   help="the .wasm of a wasm arm, for its size in the report")
    p.add_argument("--requests", type=int, default=2000, help="N, per repeat (a multiple of the mix's size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None, help="requests of the warm-up (default: the mix's size)")
    p.add_argument("--rss-runs", type=int, default=1)
    p.add_argument("--startups", type=int, default=1,
                   help="start-ups under callgrind per arm (median; the per-request windows run in the last)")
    p.add_argument("--no-rss", action="store_true", help="skip the run without valgrind (RSS, routing check)")
    p.add_argument("--no-check", action="store_true", help="skip the routing checks")
    p.add_argument("--stats-flush", action="store_true",
                   help="keep Envoy's periodic stats flush under callgrind (default: flush on admin only)")
    p.add_argument("--jobs", type=int, default=1, help="arms measured side by side (counts do not depend on it)")
    p.add_argument("--port", type=int, default=28180, help="gateway port of the first slot (admin: +1)")
    p.add_argument("--upstream-admin", type=int, default=28171)
    p.add_argument("--start-timeout", type=float, default=900)
    p.add_argument("--label", default="")
    p.add_argument("--render", metavar="JSON", help="only print the table of an earlier result (and rewrite its .md)")
    args = p.parse_args()
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        text = render(data["meta"], data["arms"]) + f"\nWhole run: {data['meta']['duration_s']} s.\n"
        print(text)
        with open(args.render[:-len(".json")] + ".md", "w") as f:
            f.write(text)
        return 0
    args.envoy = os.path.realpath(bench.real_envoy(args.envoy))
    args.out = os.path.abspath(args.out)
    args.modules = dict(m.split("=", 1) for m in args.module)
    arms = args.arms.split(",")

    with open(os.path.join(args.out, args.set, "check.json")) as f:
        check = json.load(f)
    raws = [raw_request(r) for r in check["requests"]]
    if args.warmup is None:
        args.warmup = len(raws)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logdir = os.path.join(args.out, "logs", stamp)
    os.makedirs(logdir, exist_ok=True)
    meta = machine(args.envoy)
    meta.update({"set": args.set, "mix": len(raws), "requests": args.requests, "repeats": args.repeats,
                 "arms": arms, "modules": args.modules, "jobs": args.jobs, "stats_flush": args.stats_flush})
    log(f"{meta}")
    t_start = time.monotonic()

    def interrupted(signum, _frame):
        for gw in list(LIVE):
            if gw.proc.poll() is None:
                gw.proc.send_signal(signal.SIGTERM)
        log(f"signal {signum}: stopped the gateways")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    upstream = Gateway(args.envoy, os.path.join(args.out, "upstream.json"), args.upstream_admin, "upstream", logdir)
    results = {}
    try:
        upstream.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            slots = list(range(args.jobs))
            slot_lock = threading.Lock()

            def job(arm):
                with slot_lock:
                    slot = slots.pop()
                try:
                    return measure_arm(args, arm, slot, check, raws, logdir)
                except Exception as e:  # keep the other arms' figures
                    log(f"{arm}: FAILED: {type(e).__name__}: {e}")
                    return {"arm": arm, "description": DESCRIPTIONS.get(arm, arm), "error": f"{type(e).__name__}: {e}",
                            "checks": []}
                finally:
                    with slot_lock:
                        slots.append(slot)

            # graylane's start-up is the longest: first, so that it does not run alone at the end
            futures = {arm: pool.submit(job, arm) for arm in sorted(arms, key=lambda a: a != "graylane")}
            for arm, fut in futures.items():
                results[arm] = fut.result()
    finally:
        upstream.stop()
    meta["duration_s"] = round(time.monotonic() - t_start)
    ordered = [results[a] for a in arms if "error" not in results[a]]
    meta["failed"] = {a: results[a]["error"] for a in arms if "error" in results[a]}
    text = render(meta, ordered)
    text += f"\nWhole run: {meta['duration_s']} s.\n"
    print(text)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    name = f"{stamp}-callgrind{('-' + args.label) if args.label else ''}"
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "ratios": ratios(ordered), "arms": ordered}, f, indent=1)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w") as f:
        f.write(text)
    log(f"wrote bench/results/{name}.md and .json")
    ok = not meta["failed"] and all(c["result"]["ok"] for a in ordered for c in a["checks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
