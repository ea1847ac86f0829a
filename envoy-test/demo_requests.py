#!/usr/bin/env python3
"""Sends the demo requests to the graylane demo gateway and prints where each
went as a table. Exits non-zero when a request did not go where the demo
configuration says it must. Usage: demo_requests.py [HOST:PORT] [SPLIT_COUNT]"""

import collections
import http.client
import json
import sys

TARGET = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:10000"
SPLIT = int(sys.argv[2]) if len(sys.argv) > 2 else 4000

# (what, host, extra headers, expected backend, expected tag at the upstream)
CASES = [
    ("plain request", "shop.local", [], None, None),
    ("header-tagged canary", "shop.local", [("x-gray-tag", "canary")], "shop-canary", "canary"),
    ("user id 123 matches", "shop.local", [("userid", "123")], "shop-canary", "canary"),
    ("cookie beta=1 matches", "shop.local", [("cookie", "a=1; beta=1")], "shop-canary", "canary"),
    ("spoofed cluster header", "shop.local",
     [("x-graylane-cluster", "shop-canary"), ("userid", "7")], None, None),
    ("spoofed, no service", "other.local",
     [("x-graylane-cluster", "shop-canary")], "fallback", None),
    ("blue-green: live colour", "colour.local", [], "colour-blue", None),
    ("blue-green: preview header", "colour.local", [("x-preview", "green")], "colour-green", "green"),
    ("blue-green: tag", "colour.local", [("x-gray-tag", "green")], "colour-green", "green"),
    ("tag naming no subset", "colour.local", [("x-gray-tag", "purple")], "colour-blue", "purple"),
]


def send(connection, host, headers):
    connection.request("GET", "/", headers={"host": host, **dict(headers)})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        return f"HTTP {response.status}", None, None
    echo = json.loads(body)
    seen = dict(echo["headers"])
    return echo["backend"], seen.get("x-gray-tag"), seen.get("x-graylane-cluster")


def main():
    connection = http.client.HTTPConnection(TARGET, timeout=10)
    failures = 0
    rows = [("request", "backend", "tag upstream", "cluster header upstream", "ok")]
    for what, host, headers, expected, expected_tag in CASES:
        backend, tag, cluster = send(connection, host, headers)
        # A plain request without userid may land in the 10% canary split;
        # "None" means either shop subset is right, as long as the tag agrees.
        if expected is None:
            good = backend in ("shop-stable", "shop-canary") and (
                tag == ("canary" if backend == "shop-canary" else None))
            # What a spoofed header asked for must never be what reached the
            # upstream unless the plugin itself chose it.
            good = good and cluster == backend
        else:
            good = backend == expected and tag == expected_tag
            good = good and cluster == (None if backend == "fallback" else backend)
        failures += not good
        rows.append((what, backend, tag or "-", cluster or "-", "yes" if good else "NO"))

    counts = collections.Counter(send(connection, "shop.local", [])[0] for _ in range(SPLIT))
    for backend, count in sorted(counts.items()):
        rows.append((f"split of {SPLIT}, no user id", backend, f"{100 * count / SPLIT:.1f}%", "", ""))
    canary_share = 100 * counts.get("shop-canary", 0) / SPLIT
    split_good = abs(canary_share - 10) <= 1 and set(counts) <= {"shop-stable", "shop-canary"}
    failures += not split_good
    rows.append(("split within 1 point of 10%", "", "", "", "yes" if split_good else "NO"))

    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    if failures:
        print(f"\n{failures} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
