#!/usr/bin/env python3
"""Runs the gateway benchmark: native Envoy routing, graylane, Lua and the
minimal wasm filter, one gateway at a time, alternating over several rounds.

Run through bench/run.sh, which builds the modules and generates the
configurations first. See bench/README.md.
"""

import argparse
import datetime
import glob
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "out")
RESULTS_DIR = os.path.join(HERE, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def real_envoy(path):
    """The pip-installed `envoy` is a Python wrapper that execs the binary;
    use the binary itself so the process measured is Envoy from the start."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"#!":
                return path
    except OSError:
        return path
    root = os.path.dirname(os.path.dirname(os.path.realpath(path)))
    found = glob.glob(os.path.join(root, "lib", "python*", "site-packages", "envoy", "_bin", "envoy"))
    return found[0] if found else path


# ---------------------------------------------------------------- processes


class Envoy:
    def __init__(self, envoy, config, admin_port, cpus, name, logdir):
        self.admin_port = admin_port
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log_file = open(self.log_path, "w")
        cmd = ["taskset", "-c", cpus, envoy, "-c", config, "--concurrency", "1",
               "--disable-hot-restart", "-l", "warning"]
        # taskset execs Envoy: the pid is Envoy's
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.read().strip() == b"LIVE":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def stats(self, pattern):
        url = f"http://127.0.0.1:{self.admin_port}/stats?format=json&filter={pattern}"
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)
        return {s["name"]: s.get("value", 0) for s in data.get("stats", []) if "value" in s}

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the ")": state is field 3, utime 14, stime 15 (1-based)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def run_wrk(args, script, seconds):
    cmd = ["taskset", "-c", args.load_cpus, "wrk", "-t", str(args.threads), "-c", str(args.connections),
           "-d", f"{seconds}s", "--timeout", "5s", "-s", script, f"http://127.0.0.1:{args.ports[0]}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk printed no result: {out.stdout}\n{out.stderr}")


# ---------------------------------------------------------------- routing check


def send(port, method, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def check_routing(gateway, port, check):
    """Sends the request mix once and compares where the gateway sent each
    service's requests with what the contract says."""
    before = gateway.stats(r"^cluster\..*\.upstream_rq_total$")
    statuses = {}
    for r in check["requests"]:
        status = send(port, r["method"], r["path"], r["headers"])
        statuses[status] = statuses.get(status, 0) + 1
    time.sleep(0.5)
    after = gateway.stats(r"^cluster\..*\.upstream_rq_total$")
    got = {}
    for name, value in after.items():
        cluster = name[len("cluster."):-len(".upstream_rq_total")]
        got[cluster] = value - before.get(name, 0)
    exact = {}
    weighted = {}
    for kind, value in check["expected"]:
        if kind == "cluster":
            exact[value] = exact.get(value, 0) + 1
        else:
            weighted[str(value)] = weighted.get(str(value), 0) + 1
    problems = []
    if got.get("fallback", 0) != exact.get("fallback", 0):
        problems.append(f"fallback: got {got.get('fallback', 0)}, want {exact.get('fallback', 0)}")
    drawn = expected_canary = drawn_canary = 0
    for index, (stable, canary) in check["clusters"].items():
        want_total = exact.get(stable, 0) + exact.get(canary, 0) + weighted.get(index, 0)
        got_total = got.get(stable, 0) + got.get(canary, 0)
        if got_total != want_total:
            problems.append(f"service {index}: got {got_total} requests, want {want_total}")
        # only the requests that went to the weight split can differ
        extra_canary = got.get(canary, 0) - exact.get(canary, 0)
        if not 0 <= extra_canary <= weighted.get(index, 0):
            problems.append(f"service {index}: {extra_canary} weighted requests to canary of {weighted.get(index, 0)}")
        drawn += weighted.get(index, 0)
        drawn_canary += extra_canary
        expected_canary += weighted.get(index, 0) * check["weights"][index] / 100
    return {
        "ok": not problems and statuses.get(200, 0) == len(check["requests"]),
        "statuses": statuses,
        "problems": problems[:10],
        "weighted_requests": drawn,
        "weighted_to_canary": drawn_canary,
        "weighted_to_canary_expected": round(expected_canary, 1),
    }


# ---------------------------------------------------------------- statistics


def summary(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


METRICS = [
    ("rps", "req/s", "{:.0f}", True),
    ("p50_us", "p50 µs", "{:.0f}", False),
    ("p99_us", "p99 µs", "{:.0f}", False),
    ("cpu_us_per_req", "CPU µs/req", "{:.2f}", False),
    ("rss_mib", "RSS MiB", "{:.1f}", False),
]


def aggregate(runs, sets, variants):
    table = {}
    for s in sets:
        table[s] = {}
        for v in variants:
            rows = [r for r in runs if r["set"] == s and r["variant"] == v]
            table[s][v] = {m: summary([r[m] for r in rows]) for m, *_ in METRICS}
        # per-round paired ratios, so that drift between rounds cancels
        ratios = {}
        for other in ("native", "minimal", "lua"):
            if "graylane" not in variants or other not in variants:
                continue
            for m, *_ in METRICS:
                per_round = []
                for rnd in sorted({r["round"] for r in runs}):
                    g = [r for r in runs if r["set"] == s and r["variant"] == "graylane" and r["round"] == rnd]
                    o = [r for r in runs if r["set"] == s and r["variant"] == other and r["round"] == rnd]
                    if g and o and o[0][m]:
                        per_round.append(g[0][m] / o[0][m])
                ratios[f"graylane/{other}"] = ratios.get(f"graylane/{other}", {})
                ratios[f"graylane/{other}"][m] = summary(per_round)
        if "graylane" in variants and "minimal" in variants:
            per_round = []
            for rnd in sorted({r["round"] for r in runs}):
                g = [r for r in runs if r["set"] == s and r["variant"] == "graylane" and r["round"] == rnd]
                o = [r for r in runs if r["set"] == s and r["variant"] == "minimal" and r["round"] == rnd]
                if g and o:
                    per_round.append(g[0]["cpu_us_per_req"] - o[0]["cpu_us_per_req"])
            ratios["cpu_us_above_minimal"] = summary(per_round)
        table[s]["_ratios"] = ratios
    return table


def fmt_summary(s, pattern):
    if s is None:
        return "–"
    return f"{pattern.format(s['median'])} ({pattern.format(s['min'])}–{pattern.format(s['max'])})"


def render(table, sets, variants, machine, settings, checks):
    lines = []
    lines.append("# graylane gateway benchmark")
    lines.append("")
    lines.append(f"- when: {machine['when']}")
    lines.append(f"- machine: {machine['nproc']} CPUs, {machine['cpu_model']}, {machine['kernel']}; "
                 f"load average at start {machine['loadavg_start']}, at end {machine.get('loadavg_end', '?')}")
    lines.append(f"- Envoy: {machine['envoy_version']}; load generator: {machine['wrk_version']}")
    lines.append(f"- settings: {settings['rounds']} rounds, {settings['duration']} s per measurement after "
                 f"{settings['warmup']} s warm-up, wrk -t{settings['threads']} -c{settings['connections']}, HTTP/1.1; "
                 f"gateway --concurrency 1 on CPU {settings['gateway_cpus']}, upstream Envoy (direct_response) and "
                 f"wrk on CPU {settings['load_cpus']}")
    lines.append(f"- graylane module: {settings['graylane_wasm']} ({settings['graylane_wasm_bytes']} bytes)")
    if settings.get("wasm_sizes"):
        lines.append("- .wasm sizes (bytes):")
        lines.append("")
        lines.append("```")
        lines.append(settings["wasm_sizes"])
        lines.append("```")
        lines.append("")
    lines.append("- figures: median over the rounds, (min–max) in brackets; ratios are the median of the per-round ratios")
    lines.append("")
    if checks:
        lines.append("## Routing check (each gateway sent the request mix once; compared with the contract)")
        lines.append("")
        lines.append("| set | variant | result | weighted requests to canary (got / expected) |")
        lines.append("| --- | --- | --- | --- |")
        for c in checks:
            res = c["result"]
            verdict = "ok" if res["ok"] else "FAILED: " + "; ".join(res["problems"] + [str(res["statuses"])])
            lines.append(f"| {c['set']} | {c['variant']} | {verdict} | {res['weighted_to_canary']} / "
                         f"{res['weighted_to_canary_expected']} of {res['weighted_requests']} |")
        lines.append("")
    for s in sets:
        lines.append(f"## Rule set {s}")
        lines.append("")
        lines.append("| variant | " + " | ".join(label for _, label, _, _ in METRICS) + " |")
        lines.append("| --- |" + " --- |" * len(METRICS))
        for v in variants:
            row = table[s][v]
            lines.append(f"| {v} | " + " | ".join(fmt_summary(row[m], p) for m, _, p, _ in METRICS) + " |")
        ratios = table[s]["_ratios"]
        if ratios:
            lines.append("")
            lines.append("| ratio | " + " | ".join(label for _, label, _, _ in METRICS) + " |")
            lines.append("| --- |" + " --- |" * len(METRICS))
            for name, per in ratios.items():
                if name == "cpu_us_above_minimal":
                    continue
                lines.append(f"| {name} | " + " | ".join(fmt_summary(per.get(m), "{:.3f}") for m, *_ in METRICS) + " |")
            if ratios.get("cpu_us_above_minimal"):
                lines.append("")
                lines.append("graylane CPU above the minimal filter: "
                             + fmt_summary(ratios["cpu_us_above_minimal"], "{:.2f}") + " µs per request")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def machine_description(envoy):
    cpu_model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout.strip()
    version = re.sub(r"^.*version:\s*", "", version)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk.stdout + wrk.stderr).strip().splitlines()[0] if (wrk.stdout + wrk.stderr).strip() else "wrk"
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "envoy_version": version,
        "wrk_version": wrk_version,
        "loadavg_start": load,
        "shared_machine_note": "other builds and tests may have been running on this machine during the run",
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--envoy", default=os.environ.get("ENVOY", "/tmp/envoy-venv/bin/envoy"))
    p.add_argument("--sets", default="a,b,c")
    p.add_argument("--variants", default="native,graylane,lua,minimal")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ports", nargs=3, type=int, default=[28080, 28081, 28901])
    p.add_argument("--upstream-admin", type=int, default=28902)
    p.add_argument("--gateway-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    p.add_argument("--graylane-wasm", required=True)
    p.add_argument("--check-only", action="store_true", help="only run the routing check")
    p.add_argument("--no-check", action="store_true", help="skip the routing check")
    p.add_argument("--label", default="", help="added to the result file names")
    p.add_argument("--module", action="append", default=[], metavar="NAME=PATH",
                   help="another graylane .wasm (e.g. after wasm-opt): routing-checked always, "
                        "timed when NAME is in --variants")
    p.add_argument("--sizes", help="file with the .wasm sizes, copied into the results")
    args = p.parse_args()

    envoy = real_envoy(args.envoy)
    sets = args.sets.split(",")
    variants = args.variants.split(",")
    modules = dict(m.split("=", 1) for m in args.module)
    for s in sets:
        # the graylane gateway, with another module
        with open(os.path.join(OUT_DIR, s, "graylane.json")) as f:
            config = f.read()
        for name, path in modules.items():
            with open(os.path.join(OUT_DIR, s, f"{name}.json"), "w") as f:
                f.write(config.replace(json.dumps(args.graylane_wasm), json.dumps(os.path.abspath(path))))
    # the floors (minimal, minimal-raw) do not route by the rules
    check_variants = [v for v in variants if not v.startswith("minimal")]
    check_variants += [m for m in modules if m not in check_variants]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logdir = os.path.join(OUT_DIR, "logs", stamp)
    os.makedirs(logdir, exist_ok=True)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    machine = machine_description(envoy)
    settings = {
        "rounds": args.rounds, "duration": args.duration, "warmup": args.warmup,
        "connections": args.connections, "threads": args.threads,
        "gateway_cpus": args.gateway_cpus, "load_cpus": args.load_cpus,
        "graylane_wasm": args.graylane_wasm, "graylane_wasm_bytes": os.path.getsize(args.graylane_wasm),
        "sets": sets, "variants": variants,
        "wasm_sizes": open(args.sizes).read().strip() if args.sizes else None,
    }
    log(f"machine: {machine}")

    upstream = Envoy(envoy, os.path.join(OUT_DIR, "upstream.json"), args.upstream_admin, args.load_cpus,
                     "upstream", logdir)
    gateway = None
    checks, runs = [], []
    try:
        upstream.wait_ready()
        if not args.no_check:
            for s in sets:
                with open(os.path.join(OUT_DIR, s, "check.json")) as f:
                    check = json.load(f)
                for v in check_variants:
                    gateway = Envoy(envoy, os.path.join(OUT_DIR, s, f"{v}.json"), args.ports[2],
                                    args.gateway_cpus, f"check-{s}-{v}", logdir)
                    gateway.wait_ready()
                    result = check_routing(gateway, args.ports[0], check)
                    gateway.stop()
                    gateway = None
                    log(f"check {s} {v}: {'ok' if result['ok'] else 'FAILED'} {result}")
                    checks.append({"set": s, "variant": v, "result": result})
        if args.check_only:
            return 0 if all(c["result"]["ok"] for c in checks) else 1

        for rnd in range(args.rounds):
            # rotate the order each round so that no variant always runs first
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for s in sets:
                script = os.path.join(OUT_DIR, s, "wrk.lua")
                for v in order:
                    gateway = Envoy(envoy, os.path.join(OUT_DIR, s, f"{v}.json"), args.ports[2],
                                    args.gateway_cpus, f"r{rnd}-{s}-{v}", logdir)
                    gateway.wait_ready()
                    run_wrk(args, script, args.warmup)
                    rq = "^http\\.ingress\\.downstream_rq_total$"
                    served0 = gateway.stats(rq).get("http.ingress.downstream_rq_total", 0)
                    cpu0 = gateway.cpu_seconds()
                    result = run_wrk(args, script, args.duration)
                    cpu1 = gateway.cpu_seconds()
                    served1 = gateway.stats(rq).get("http.ingress.downstream_rq_total", 0)
                    rss = gateway.rss_kib()
                    gateway.stop()
                    gateway = None
                    # admin requests go to the admin listener, not to ingress
                    served = max(served1 - served0, 1)
                    errors = sum(result["errors"].values())
                    row = {
                        "round": rnd, "set": s, "variant": v,
                        "rps": result["requests"] / (result["duration_us"] / 1e6),
                        "p50_us": result["p50_us"], "p90_us": result["p90_us"], "p99_us": result["p99_us"],
                        "cpu_us_per_req": (cpu1 - cpu0) * 1e6 / served,
                        "cpu_seconds": cpu1 - cpu0, "served": served,
                        "rss_mib": rss / 1024, "wrk": result, "errors": errors,
                    }
                    runs.append(row)
                    log(f"round {rnd + 1}/{args.rounds} set {s} {v:9s} {row['rps']:8.0f} req/s "
                        f"p50 {row['p50_us']} µs p99 {row['p99_us']} µs cpu {row['cpu_us_per_req']:.2f} µs/req "
                        f"rss {row['rss_mib']:.1f} MiB errors {errors}")
    finally:
        if gateway:
            gateway.stop()
        upstream.stop()

    with open("/proc/loadavg") as f:
        machine["loadavg_end"] = " ".join(f.read().split()[:3])
    table = aggregate(runs, sets, variants)
    text = render(table, sets, variants, machine, settings, checks)
    print(text)
    name = f"{stamp}{('-' + args.label) if args.label else ''}"
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as f:
        json.dump({"machine": machine, "settings": settings, "checks": checks, "summary": table, "runs": runs},
                  f, indent=1)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w") as f:
        f.write(text + "\n")
    log(f"wrote bench/results/{name}.json and .md")
    return 0 if all(c["result"]["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
