#!/usr/bin/env python3
"""One description of each benchmark rule set, rendered four ways.

From the description of a rule set this writes:
  bench/rules/<set>.json           the graylane document (also read by `cargo bench`)
  bench/rules/<set>.requests.json  the request mix, as the filter sees it (also read by `cargo bench`)
  bench/rules/compile-<n>.json     documents of 1, 100 and 1,000 services for the compile benchmark
  bench/out/<set>/...              Envoy configurations (native, graylane, lua, minimal),
                                   the Lua filter script, the wrk script, and the expected routing

Rule sets:
  a    1 service, 2 subsets, one header rule
  b    10 services, each with a header rule, a header-regex rule and a weight
  c    100 services, the same per service as b
  d    10 services, each with a header rule, a cookie regex rule and a weight;
       its request mix also carries spoofed cluster headers (bench/callgrind.py)

Every service of b and c:
  hosts      s<i>.bench.local and *.s<i>.bench.local
  default    stable  (cluster s<i>-stable)
  canary     cluster s<i>-canary, tag "canary", weight 5/10/20/50 % (by i mod 4),
             match: x-canary == "true"  OR  userid ~ ^beta-[0-9]+$
Service a has the first match entry only and no weight. Set d replaces the
userid rule by   Cookie ~ ^(.*; ?)?group=beta(;.*)?$   (a cookie_regex).

Usage: gen.py [--ports GATEWAY UPSTREAM GATEWAY_ADMIN] [--graylane-wasm PATH]
              [--minimal-wasm PATH] [--floor-wasm PATH] [--sets a,b,c,d] [--out DIR]
"""

import argparse
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
RULES_DIR = os.path.join(HERE, "rules")
OUT_DIR = os.path.join(HERE, "out")

CLUSTER_HEADER = "x-graylane-cluster"
TAG_HEADER = "x-gray-tag"
FALLBACK = "fallback"
WEIGHTS = [5, 10, 20, 50]
REQUESTS_PER_SET = 1000
# Set d's cookie rule: the group cookie anywhere in the Cookie header.
COOKIE_REGEX = "^(.*; ?)?group=beta(;.*)?$"

# ---------------------------------------------------------------- description


def describe(n_services, with_weight=True, with_regex=True, with_cookie=False):
    """The rule set as plain data: the single source of the four renderings."""
    services = []
    for i in range(n_services):
        matches = [{"header": "x-canary", "kind": "exact", "value": "true"}]
        if with_cookie:
            matches.append({"header": "cookie", "kind": "cookie_regex", "value": COOKIE_REGEX})
        elif with_regex:
            matches.append({"header": "userid", "kind": "regex", "value": "^beta-[0-9]+$"})
        services.append(
            {
                "name": f"s{i}",
                "exact_host": f"s{i}.bench.local",
                "suffix_host": f".s{i}.bench.local",
                "default": {"name": "stable", "cluster": f"s{i}-stable", "tag": "stable"},
                "canary": {
                    "name": "canary",
                    "cluster": f"s{i}-canary",
                    "tag": "canary",
                    "weight": WEIGHTS[i % len(WEIGHTS)] if with_weight else 0,
                    # one condition per entry: entries are OR-ed
                    "matches": matches,
                },
            }
        )
    return services


RULE_SETS = {
    "a": lambda: describe(1, with_weight=False, with_regex=False),
    "b": lambda: describe(10),
    "c": lambda: describe(100),
    "d": lambda: describe(10, with_cookie=True),
}

# ---------------------------------------------------------------- graylane


def graylane_document(services):
    out = []
    for s in services:
        canary = s["canary"]
        subset = {"name": canary["name"], "cluster": canary["cluster"], "tag": canary["tag"]}
        if canary["weight"]:
            subset["weight"] = canary["weight"]
        subset["match"] = [
            {"cookie_regex": m["value"]}
            if m["kind"] == "cookie_regex"
            else {"headers": [{"name": m["header"], m["kind"]: m["value"]}]}
            for m in canary["matches"]
        ]
        out.append(
            {
                "name": s["name"],
                "hosts": [s["exact_host"], "*" + s["suffix_host"]],
                "default": s["default"]["name"],
                "subsets": [
                    {"name": s["default"]["name"], "cluster": s["default"]["cluster"]},
                    subset,
                ],
            }
        )
    return {
        "cluster_header": CLUSTER_HEADER,
        "tag_header": TAG_HEADER,
        "trust_tag": True,
        "services": out,
    }


# ---------------------------------------------------------------- native Envoy


def tag_header_to_add(tag):
    return [
        {
            "header": {"key": TAG_HEADER, "value": tag},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]


def envoy_header_matcher(m):
    if m["kind"] == "exact":
        return {"name": m["header"], "string_match": {"exact": m["value"]}}
    if m["kind"] in ("regex", "cookie_regex"):
        # Envoy's safe_regex is a full match; the graylane patterns are anchored.
        # A cookie_regex is a regex over the Cookie header (one header in HTTP/1).
        pattern = m["value"].lstrip("^").rstrip("$")
        return {"name": m["header"], "string_match": {"safe_regex": {"regex": pattern}}}
    raise ValueError(m["kind"])


def native_virtual_hosts(services):
    """The contract's order per service: tag, then match entries, then weight."""
    vhosts = []
    for s in services:
        stable, canary = s["default"], s["canary"]
        routes = []
        # 1. an incoming tag naming a subset picks it (already tagged: no edit)
        for subset in (stable, canary):
            routes.append(
                {
                    "match": {
                        "prefix": "/",
                        "headers": [{"name": TAG_HEADER, "string_match": {"exact": subset["tag"]}}],
                    },
                    "route": {"cluster": subset["cluster"]},
                }
            )
        # 2. match entries, in order
        for m in canary["matches"]:
            routes.append(
                {
                    "match": {"prefix": "/", "headers": [envoy_header_matcher(m)]},
                    "route": {"cluster": canary["cluster"]},
                    "request_headers_to_add": tag_header_to_add(canary["tag"]),
                }
            )
        # 3. weight, the default taking the rest
        if canary["weight"]:
            bp = canary["weight"] * 100
            action = {
                "weighted_clusters": {
                    "clusters": [
                        {
                            "name": canary["cluster"],
                            "weight": bp,
                            "request_headers_to_add": tag_header_to_add(canary["tag"]),
                        },
                        {"name": stable["cluster"], "weight": 10000 - bp},
                    ]
                }
            }
        else:
            action = {"cluster": stable["cluster"]}
        routes.append({"match": {"prefix": "/"}, "route": action})
        vhosts.append(
            {
                "name": s["name"],
                "domains": [s["exact_host"], "*" + s["suffix_host"]],
                "routes": routes,
            }
        )
    vhosts.append(
        {"name": "fallback", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": FALLBACK}}]}
    )
    return vhosts


def cluster_header_virtual_hosts():
    return [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]},
                    "route": {"cluster_header": CLUSTER_HEADER},
                },
                {"match": {"prefix": "/"}, "route": {"cluster": FALLBACK}},
            ],
        }
    ]


# ---------------------------------------------------------------- Lua


def lua_string(s):
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal here (ASCII)


def lua_pattern(regex):
    # The generator only emits these regexes; translate them by hand as a Lua
    # user would. The cookie regex has an optional group, which Lua patterns
    # lack: it becomes a plain find in ";" .. cookie .. ";" (kind "cookie").
    if regex == COOKIE_REGEX:
        return "; ?group=beta;"
    assert regex == "^beta-[0-9]+$", regex
    return "^beta%-%d+$"


def lua_script(services):
    lines = [
        "-- generated by bench/gen.py: the rule set as a careful Lua user writes it",
        "-- (tables built once at load; per request: hash lookups, no closures, no regex engine)",
        f"local CLUSTER_HEADER = {lua_string(CLUSTER_HEADER)}",
        f"local TAG_HEADER = {lua_string(TAG_HEADER)}",
        "local random = math.random",
        "local lower, find, sub, match = string.lower, string.find, string.sub, string.match",
        "",
        "-- service: { tags = {tag = 1 (stable) or 2 (canary)}, matches = {{header, kind, value}},",
        "--            canary = cluster, canary_tag = tag, weight = basis points, stable = cluster }",
        "local S = {}",
    ]
    for i, s in enumerate(services):
        c = s["canary"]
        matches = ", ".join(
            "{%s, %s, %s}"
            % (
                lua_string(m["header"]),
                lua_string("cookie" if m["kind"] == "cookie_regex" else m["kind"]),
                lua_string(m["value"] if m["kind"] == "exact" else lua_pattern(m["value"])),
            )
            for m in c["matches"]
        )
        lines.append(
            "S[%d] = {stable = %s, canary = %s, canary_tag = %s, weight = %d, "
            "tags = {[%s] = 1, [%s] = 2}, matches = {%s}}"
            % (
                i + 1,
                lua_string(s["default"]["cluster"]),
                lua_string(c["cluster"]),
                lua_string(c["tag"]),
                c["weight"] * 100,
                lua_string(s["default"]["tag"]),
                lua_string(c["tag"]),
                matches,
            )
        )
    lines.append("local EXACT = {}")
    lines.append("local SUFFIX = {}")
    for i, s in enumerate(services):
        lines.append(f"EXACT[{lua_string(s['exact_host'])}] = S[{i + 1}]")
        lines.append(f"SUFFIX[{lua_string(s['suffix_host'])}] = S[{i + 1}]")
    lines.append(
        """
local function service_for(host)
  if host == nil then return nil end
  local colon = find(host, ":", 1, true)
  if colon then host = sub(host, 1, colon - 1) end
  host = lower(host)
  local s = EXACT[host]
  if s then return s end
  -- wildcard hosts: every proper suffix that starts at a dot
  local from = 2
  while true do
    local dot = find(host, ".", from, true)
    if not dot then return nil end
    s = SUFFIX[sub(host, dot)]
    if s then return s end
    from = dot + 1
  end
end

local function matches(headers, m)
  local value = headers:get(m[1])
  if value == nil then return false end
  if m[2] == "exact" then return value == m[3] end
  return match(value, m[3]) ~= nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- a client never picks the cluster
  headers:remove(CLUSTER_HEADER)
  local s = service_for(headers:get(":authority"))
  if s == nil then return end
  local tag = headers:get(TAG_HEADER)
  local which = tag and s.tags[tag]
  if which == nil then
    for i = 1, #s.matches do
      if matches(headers, s.matches[i]) then which = 2; break end
    end
  end
  if which == nil then
    which = (s.weight > 0 and random(10000) <= s.weight) and 2 or 1
  end
  if which == 2 then
    headers:replace(CLUSTER_HEADER, s.canary)
    if tag ~= s.canary_tag then headers:replace(TAG_HEADER, s.canary_tag) end
  else
    headers:replace(CLUSTER_HEADER, s.stable)
  end
end
"""
    )
    text = "\n".join(lines)
    if any(m["kind"] == "cookie_regex" for s in services for m in s["canary"]["matches"]):
        exact = '  if m[2] == "exact" then return value == m[3] end\n'
        assert exact in text
        text = text.replace(
            exact, exact + '  if m[2] == "cookie" then return find(";" .. value .. ";", m[3]) ~= nil end\n'
        )
    return text


# ---------------------------------------------------------------- Envoy files


def cluster(name, upstream_port):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}
            ],
        },
    }


def gateway_config(services, variant, ports, graylane_wasm, minimal_wasm, lua_path, minimal_raw_wasm=None,
                   floor_wasm=None):
    gateway_port, upstream_port, admin_port = ports
    http_filters = []
    if variant == "native":
        vhosts = native_virtual_hosts(services)
    else:
        vhosts = cluster_header_virtual_hosts()
    if variant in ("graylane", "minimal", "minimal-raw", "floor"):
        wasm = {"graylane": graylane_wasm, "minimal": minimal_wasm, "minimal-raw": minimal_raw_wasm,
                "floor": floor_wasm}[variant]
        configuration = json.dumps(graylane_document(services)) if variant == "graylane" else ""
        http_filters.append(
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": variant.split("-")[0],
                        "root_id": variant.split("-")[0],
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": configuration,
                        },
                        "vm_config": {
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": wasm}},
                        },
                    },
                },
            }
        )
    if variant == "lua":
        http_filters.append(
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"filename": lua_path},
                },
            }
        )
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    clusters = [cluster(FALLBACK, upstream_port)]
    for s in services:
        clusters.append(cluster(s["default"]["cluster"], upstream_port))
        clusters.append(cluster(s["canary"]["cluster"], upstream_port))
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "ingress",
                                        "strip_any_host_port": True,
                                        "route_config": {"name": "bench", "virtual_hosts": vhosts},
                                        "http_filters": http_filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
    }


def upstream_config(upstream_port, admin_port):
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "upstream",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
    }


# ---------------------------------------------------------------- requests


def request_mix(services, n, seed):
    """Client requests: a mix of hosts (exact, wildcard, mixed case, unknown),
    some with a matching header, some tagged. Deterministic."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        headers = []
        roll = rng.random()
        if roll < 0.05:
            host = "www.unknown.local"
        else:
            s = services[rng.randrange(len(services))]
            style = rng.random()
            if style < 0.6:
                host = s["exact_host"]
            elif style < 0.9:
                host = "api" + s["suffix_host"]
            else:
                host = s["exact_host"].upper()
        headers.append(("host", host))
        headers.append(("user-agent", "bench/1.0"))
        headers.append(("accept", "application/json"))
        pick = rng.random()
        if pick < 0.15:
            headers.append(("x-canary", "true"))
        elif pick < 0.25:
            headers.append(("userid", f"beta-{rng.randrange(1000)}"))
        elif pick < 0.35:
            headers.append(("userid", f"{rng.randrange(100000)}"))
        elif pick < 0.40:
            headers.append((TAG_HEADER, "canary"))
        elif pick < 0.43:
            headers.append((TAG_HEADER, "stable"))
        if rng.random() < 0.5:
            headers.append(("cookie", f"session={rng.randrange(1 << 30):x}; theme=dark"))
        path = f"/api/items/{rng.randrange(1000)}" + ("?page=2" if rng.random() < 0.3 else "")
        out.append({"method": "GET", "path": path, "headers": headers})
    return out


def cookie_request_mix(services, n, seed):
    """Set d's client requests: hosts as in request_mix; 15 % with the matching
    header, 12 % with the group=beta cookie (first, or after other cookies),
    10 % with another group, 8 % with a tag, the rest plain (half of those with
    a session cookie); independently, 10 % carry a spoofed cluster header
    naming a canary. Deterministic."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        headers = []
        roll = rng.random()
        if roll < 0.05:
            host = "www.unknown.local"
        else:
            s = services[rng.randrange(len(services))]
            style = rng.random()
            if style < 0.6:
                host = s["exact_host"]
            elif style < 0.9:
                host = "api" + s["suffix_host"]
            else:
                host = s["exact_host"].upper()
        headers.append(("host", host))
        headers.append(("user-agent", "bench/1.0"))
        headers.append(("accept", "application/json"))
        session = f"session={rng.randrange(1 << 30):x}"
        pick = rng.random()
        cookie = None
        if pick < 0.15:
            headers.append(("x-canary", "true"))
        elif pick < 0.27:
            cookie = rng.choice(["group=beta", f"{session}; group=beta; theme=dark", f"{session};group=beta"])
        elif pick < 0.37:
            cookie = rng.choice([f"{session}; group=alpha", "group=betamax", f"{session}; xgroup=beta"])
        elif pick < 0.42:
            headers.append((TAG_HEADER, "canary"))
        elif pick < 0.45:
            headers.append((TAG_HEADER, "stable"))
        if cookie is None and rng.random() < 0.5:
            cookie = f"{session}; theme=dark"
        if cookie is not None:
            headers.append(("cookie", cookie))
        if rng.random() < 0.10:
            headers.append((CLUSTER_HEADER, f"s{rng.randrange(len(services))}-canary"))
        path = f"/api/items/{rng.randrange(1000)}" + ("?page=2" if rng.random() < 0.3 else "")
        out.append({"method": "GET", "path": path, "headers": headers})
    return out


REQUEST_MIXES = {"d": cookie_request_mix}


def as_filter_sees_it(req):
    """The header map as Envoy hands it to a filter (HTTP/1.1 downstream)."""
    host = next(value for name, value in req["headers"] if name == "host")
    pairs = [(":authority", host), (":path", req["path"]), (":method", req["method"]), (":scheme", "http")]
    pairs += [h for h in req["headers"] if h[0] != "host"]
    pairs += [("x-forwarded-proto", "http"), ("x-request-id", "2f1c1a52-6b1e-4c55-9a43-3f0a3d2c9b11")]
    return [list(p) for p in pairs]


def expected(services, req):
    """What the contract says for one request: ('cluster', name) or
    ('weighted', service index)."""
    headers = {}
    for name, value in req["headers"]:
        headers.setdefault(name.lower(), value)
    host = headers["host"].split(":")[0].lower()
    found = None
    for i, s in enumerate(services):
        if host == s["exact_host"] or (host.endswith(s["suffix_host"]) and len(host) > len(s["suffix_host"])):
            found = i
            break
    if found is None:
        return ("cluster", FALLBACK)
    s = services[found]
    tag = headers.get(TAG_HEADER)
    for subset in (s["default"], s["canary"]):
        if tag == subset["tag"]:
            return ("cluster", subset["cluster"])
    import re

    for m in s["canary"]["matches"]:
        value = headers.get(m["header"])
        if value is None:
            continue
        if (m["kind"] == "exact" and value == m["value"]) or (
            m["kind"] in ("regex", "cookie_regex") and re.search(m["value"], value)
        ):
            return ("cluster", s["canary"]["cluster"])
    if s["canary"]["weight"]:
        return ("weighted", found)
    return ("cluster", s["default"]["cluster"])


def wrk_script(reqs):
    lines = [
        "-- generated by bench/gen.py: cycles through a fixed request mix",
        "local raw = {",
    ]
    for r in reqs:
        hdrs = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in r["headers"])
        lines.append(f"  {{{lua_string(r['path'])}, {{{hdrs}}}}},")
    lines.append("}")
    lines.append(
        """
local reqs = {}
local n = 0
local i = 0

function init(args)
  for _, r in ipairs(raw) do
    n = n + 1
    reqs[n] = wrk.format("GET", r[1], r[2])
  end
  -- threads start at different points of the mix
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def write_json(path, value, compact=False):
    with open(path, "w") as f:
        if compact:
            json.dump(value, f, separators=(",", ":"))
        else:
            json.dump(value, f, indent=1)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", nargs=3, type=int, default=[28080, 28081, 28901])
    parser.add_argument("--upstream-admin", type=int, default=28902)
    parser.add_argument("--graylane-wasm", default="graylane.wasm")
    parser.add_argument("--minimal-wasm", default="minimal.wasm")
    parser.add_argument("--minimal-raw-wasm", default="minimal-raw.wasm")
    parser.add_argument("--floor-wasm", default="floor.wasm")
    parser.add_argument("--sets", default=",".join(RULE_SETS), help="the rule sets to write, e.g. d")
    parser.add_argument("--out", default=OUT_DIR, help="where the Envoy configurations go")
    parser.add_argument("--rules-only", action="store_true", help="write bench/rules/ only")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out)

    os.makedirs(RULES_DIR, exist_ok=True)
    for n in (1, 100, 1000):
        write_json(os.path.join(RULES_DIR, f"compile-{n}.json"), graylane_document(describe(n)), compact=True)

    for name, make in RULE_SETS.items():
        if name not in args.sets.split(","):
            continue
        services = make()
        reqs = REQUEST_MIXES.get(name, request_mix)(services, REQUESTS_PER_SET, seed=ord(name))
        write_json(os.path.join(RULES_DIR, f"{name}.json"), graylane_document(services))
        with open(os.path.join(RULES_DIR, f"{name}.requests.json"), "w") as f:
            f.write("[\n" + ",\n".join(json.dumps(as_filter_sees_it(r)) for r in reqs) + "\n]\n")
        if args.rules_only:
            continue
        out = os.path.join(out_dir, name)
        os.makedirs(out, exist_ok=True)
        lua_path = os.path.join(out, "route.lua")
        with open(lua_path, "w") as f:
            f.write(lua_script(services))
        for variant in ("native", "graylane", "lua", "minimal", "minimal-raw", "floor"):
            write_json(
                os.path.join(out, f"{variant}.json"),
                gateway_config(
                    services, variant, args.ports, args.graylane_wasm, args.minimal_wasm, lua_path,
                    args.minimal_raw_wasm, args.floor_wasm,
                ),
            )
        with open(os.path.join(out, "wrk.lua"), "w") as f:
            f.write(wrk_script(reqs))
        write_json(
            os.path.join(out, "check.json"),
            {
                "requests": reqs,
                "expected": [expected(services, r) for r in reqs],
                "weights": {i: s["canary"]["weight"] for i, s in enumerate(services)},
                "clusters": {i: [s["default"]["cluster"], s["canary"]["cluster"]] for i, s in enumerate(services)},
            },
        )
    up = os.path.join(out_dir, "upstream.json")
    write_json(up, upstream_config(args.ports[1], args.upstream_admin))


if __name__ == "__main__":
    main()
