//! End-to-end: the plugin `.wasm` in a real Envoy, in front of echo backends
//! that report which cluster got each request and which headers reached it.
//! See `tests/support/mod.rs` for the harness. These tests need Envoy (see
//! [`support::envoy_bin`]) and fail without it.

// Test helpers fail their test by panicking, as the tests themselves do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]



use std::collections::BTreeMap;
use std::thread;

use graylane_core::decision::decide;
use graylane_core::request::Request as NativeRequest;
use graylane_core::split::WeylSequence;
use serde_json::{json, Value};
use support::*;

/// Runs `(description, request, expected backend)` cases on one connection
/// and fails once, listing every case that went elsewhere.
fn assert_routes(gateway: &Gateway, cases: &[(&str, Request, &str)]) {
    let mut client = gateway.client();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(what, request, expected)| {
            let response = client.send(request);
            let got = response
                .header("x-echo-backend")
                .unwrap_or_else(|| format!("status {} {:?}", response.status, response.text()));
            (got != *expected).then(|| format!("{what}: expected {expected}, got {got}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases misrouted:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    gateway.envoy.assert_no_wasm_errors();
}

/// One service per match kind under test, plus host and path-prefix services.
fn routing_document() -> Value {
    let on = |name: &str, entry: Value| json!({"name": name, "cluster": format!("m-{name}"), "match": [entry]});
    json!({
        "services": [
            {
                "name": "api",
                "hosts": ["exact.test"],
                "path_prefix": "/api/p",
                "default": "stable",
                "subsets": [{"name": "stable", "cluster": "api-stable"}]
            },
            {
                "name": "exact",
                "hosts": ["exact.test"],
                "default": "stable",
                "subsets": [{"name": "stable", "cluster": "exact-stable"}]
            },
            {
                "name": "wild",
                "hosts": ["*.wild.test"],
                "default": "stable",
                "subsets": [{"name": "stable", "cluster": "wild-stable"}]
            },
            {
                "name": "m",
                "hosts": ["m.test"],
                "default": "stable",
                "subsets": [
                    {"name": "stable", "cluster": "m-stable"},
                    on("h-exact", json!({"headers": [{"name": "x-exact", "exact": "yes"}]})),
                    on("h-prefix", json!({"headers": [{"name": "X-Prefix", "prefix": "pre"}]})),
                    on("h-suffix", json!({"headers": [{"name": "x-suffix", "suffix": "fix"}]})),
                    on("h-contains", json!({"headers": [{"name": "x-contains", "contains": "mid"}]})),
                    on("h-regex", json!({"headers": [{"name": "x-regex", "regex": "^v[0-9]+$"}]})),
                    on("h-present", json!({"headers": [{"name": "x-present", "present": true}]})),
                    on("h-absent", json!({"headers": [
                        {"name": "x-absent-case", "exact": "1"},
                        {"name": "x-flag", "present": false}
                    ]})),
                    on("h-bytes", json!({"headers": [{"name": "x-bytes", "regex": "^(?-u:\\xff)"}]})),
                    on("cookie", json!({"cookies": [{"name": "beta", "exact": "1"}]})),
                    on("cookie-regex", json!({
                        "cookie_regex": "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"
                    })),
                    on("path", json!({"path": {"prefix": "/api/user"}, "method": ["GET", "HEAD"]})),
                    on("query", json!({"query": [{"name": "q", "exact": "a b/é"}]})),
                    on("method", json!({"method": ["DELETE"]})),
                    {"name": "gray", "cluster": "m-gray", "tag": "g1"}
                ]
            }
        ]
    })
}

#[test]
fn each_match_kind_routes_to_its_subset() {
    let gateway = Gateway::start("match-kinds", &routing_document());
    let m = |target: &str| Request::get(target).host("m.test");
    assert_routes(
        &gateway,
        &[
            ("nothing matches", m("/"), "m-stable"),
            ("header exact", m("/").header("x-exact", "yes"), "m-h-exact"),
            (
                "header exact, other value",
                m("/").header("x-exact", "yes!"),
                "m-stable",
            ),
            (
                "header exact is case-sensitive",
                m("/").header("x-exact", "YES"),
                "m-stable",
            ),
            (
                "header name is case-insensitive",
                m("/").header("X-EXACT", "yes"),
                "m-h-exact",
            ),
            (
                "header prefix",
                m("/").header("x-prefix", "prefab"),
                "m-h-prefix",
            ),
            (
                "header prefix, miss",
                m("/").header("x-prefix", "xpre"),
                "m-stable",
            ),
            (
                "header suffix",
                m("/").header("x-suffix", "prefix"),
                "m-h-suffix",
            ),
            (
                "header suffix, miss",
                m("/").header("x-suffix", "fixed"),
                "m-stable",
            ),
            (
                "header contains",
                m("/").header("x-contains", "amidst"),
                "m-h-contains",
            ),
            (
                "header contains, miss",
                m("/").header("x-contains", "mi-d"),
                "m-stable",
            ),
            ("header regex", m("/").header("x-regex", "v42"), "m-h-regex"),
            (
                "header regex, miss",
                m("/").header("x-regex", "v42a"),
                "m-stable",
            ),
            (
                "header present",
                m("/").header("x-present", ""),
                "m-h-present",
            ),
            (
                "header present false holds",
                m("/").header("x-absent-case", "1"),
                "m-h-absent",
            ),
            (
                "header present false fails",
                m("/").header("x-absent-case", "1").header("x-flag", "0"),
                "m-stable",
            ),
            (
                "a repeated header matches on any value",
                m("/").header("x-exact", "no").header("x-exact", "yes"),
                "m-h-exact",
            ),
            (
                "header regex on bytes that are not UTF-8",
                Request::get("/")
                    .host("m.test")
                    .header_bytes(b"x-bytes", b"\xff\xfe"),
                "m-h-bytes",
            ),
            (
                "a header that is not UTF-8 does not stop routing",
                m("/")
                    .header_bytes(b"x-junk", b"\xfe\xfd")
                    .header("x-exact", "yes"),
                "m-h-exact",
            ),
            (
                "cookie by name",
                m("/").header("cookie", "a=1; beta=1; c=2"),
                "m-cookie",
            ),
            (
                "cookie, other value",
                m("/").header("cookie", "beta=2"),
                "m-stable",
            ),
            (
                "cookie, other name",
                m("/").header("cookie", "xbeta=1"),
                "m-stable",
            ),
            (
                "cookie in a second Cookie header",
                m("/").header("cookie", "a=1").header("cookie", "beta=1"),
                "m-cookie",
            ),
            (
                "whole-cookie regex",
                m("/").header("cookie", "email=jo@some-company-name.com; z=2"),
                "m-cookie-regex",
            ),
            (
                "whole-cookie regex, later cookie",
                m("/").header("cookie", "a=1;email=jo@some-company-name.com"),
                "m-cookie-regex",
            ),
            (
                // The contract's example pattern wants the name right after
                // the `;`, so the usual "; " separator defeats it.
                "whole-cookie regex is over the raw header",
                m("/").header("cookie", "a=1; email=jo@some-company-name.com"),
                "m-stable",
            ),
            (
                "whole-cookie regex, miss",
                m("/").header("cookie", "email=jo@other.com"),
                "m-stable",
            ),
            ("path prefix and method", m("/api/user/7"), "m-path"),
            (
                "path ignores the query string",
                m("/api/user?id=7"),
                "m-path",
            ),
            (
                "path, HEAD",
                Request::new("HEAD", "/api/user").host("m.test"),
                "m-path",
            ),
            (
                "path, method not listed",
                Request::new("POST", "/api/user").host("m.test"),
                "m-stable",
            ),
            ("path, miss", m("/api/admin"), "m-stable"),
            ("query", m("/x?a=1&q=a%20b%2F%C3%A9"), "m-query"),
            ("query, encoded name", m("/x?%71=a%20b%2F%C3%A9"), "m-query"),
            ("query, other value", m("/x?q=a%20b"), "m-stable"),
            (
                "query name in the path is no parameter",
                // (No %2F here: the shipped configuration redirects escaped
                // slashes to their unescaped form before the plugin runs.)
                m("/q=a%20b%C3%A9"),
                "m-stable",
            ),
            (
                "method",
                Request::new("DELETE", "/anything").host("m.test"),
                "m-method",
            ),
            (
                "method, other",
                Request::new("PUT", "/anything").host("m.test"),
                "m-stable",
            ),
            (
                "the first matching subset wins",
                m("/").header("x-prefix", "pre").header("x-exact", "yes"),
                "m-h-exact",
            ),
        ],
    );
}

#[test]
fn hosts_and_path_prefixes_pick_the_service() {
    let gateway = Gateway::start("hosts", &routing_document());
    let on = |host: &str, target: &str| Request::get(target).host(host);
    assert_routes(
        &gateway,
        &[
            ("exact host", on("exact.test", "/"), "exact-stable"),
            (
                "exact host with port",
                on("exact.test:8080", "/"),
                "exact-stable",
            ),
            (
                "exact host, other case",
                on("EXACT.Test", "/"),
                "exact-stable",
            ),
            (
                "exact host, not a suffix",
                on("notexact.test", "/"),
                FALLBACK_CLUSTER,
            ),
            (
                "exact host, longer",
                on("exact.test.evil", "/"),
                FALLBACK_CLUSTER,
            ),
            (
                "path prefix, earlier service",
                on("exact.test", "/api/p/1"),
                "api-stable",
            ),
            (
                "path prefix with port",
                on("exact.test:80", "/api/p"),
                "api-stable",
            ),
            (
                "path prefix, miss",
                on("exact.test", "/api/q"),
                "exact-stable",
            ),
            ("wildcard host", on("a.wild.test", "/"), "wild-stable"),
            (
                "wildcard host, two labels",
                on("a.b.wild.test", "/"),
                "wild-stable",
            ),
            (
                "wildcard host with port",
                on("a.wild.test:9000", "/"),
                "wild-stable",
            ),
            (
                "wildcard needs a label",
                on("wild.test", "/"),
                FALLBACK_CLUSTER,
            ),
            ("no service", on("nowhere.test", "/"), FALLBACK_CLUSTER),
        ],
    );
}

#[test]
fn gray_tag_is_honoured_written_and_passed_through() {
    let gateway = Gateway::start("tags", &routing_document());
    let mut client = gateway.client();
    let m = |target: &str| Request::get(target).host("m.test");

    // A match on a non-default subset writes its tag (the name, by default).
    let echo = client.send(&m("/").header("x-exact", "yes")).echo();
    assert_eq!(echo.backend, "m-h-exact");
    assert_eq!(echo.header("x-gray-tag"), Some("h-exact"));
    assert_eq!(echo.header("x-graylane-cluster"), Some("m-h-exact"));

    // The default subset gets no tag.
    let echo = client.send(&m("/")).echo();
    assert_eq!(echo.backend, "m-stable");
    assert_eq!(echo.header("x-gray-tag"), None);
    assert_eq!(echo.header("x-graylane-cluster"), Some("m-stable"));

    // An incoming tag selects its subset, by an explicit tag too, and comes
    // before any match.
    let echo = client.send(&m("/").header("x-gray-tag", "g1")).echo();
    assert_eq!(echo.backend, "m-gray");
    assert_eq!(echo.header("x-gray-tag"), Some("g1"));
    let echo = client
        .send(
            &m("/")
                .header("x-gray-tag", "h-regex")
                .header("x-exact", "yes"),
        )
        .echo();
    assert_eq!(echo.backend, "m-h-regex");
    assert_eq!(echo.header("x-gray-tag"), Some("h-regex"));
    let echo = client
        .send(
            &m("/")
                .header("x-gray-tag", "stable")
                .header("x-exact", "yes"),
        )
        .echo();
    assert_eq!(echo.backend, "m-stable");

    // A subset's name is not its tag when it has one.
    let echo = client.send(&m("/").header("x-gray-tag", "gray")).echo();
    assert_eq!(echo.backend, "m-stable");

    // A tag that names no subset is left as it came, for the services behind.
    let echo = client.send(&m("/").header("x-gray-tag", "nosuch")).echo();
    assert_eq!(echo.backend, "m-stable");
    assert_eq!(echo.header_values("x-gray-tag"), ["nosuch"]);
    let echo = client
        .send(
            &m("/")
                .header("x-gray-tag", "nosuch")
                .header("x-exact", "yes"),
        )
        .echo();
    assert_eq!(echo.backend, "m-h-exact");
    assert_eq!(echo.header_values("x-gray-tag"), ["h-exact"]);

    // Nor does a tag that is not UTF-8; it too passes as it came.
    let echo = client
        .send(&m("/").header_bytes(b"x-gray-tag", b"\xffx"))
        .echo();
    assert_eq!(echo.backend, "m-stable");
    assert_eq!(echo.header_values("x-gray-tag"), ["\u{fffd}x"]);

    // On a request no service claims, the tag passes untouched.
    let echo = client
        .send(
            &Request::get("/")
                .host("nowhere.test")
                .header("x-gray-tag", "h-exact"),
        )
        .echo();
    assert_eq!(echo.backend, FALLBACK_CLUSTER);
    assert_eq!(echo.header_values("x-gray-tag"), ["h-exact"]);
    gateway.envoy.assert_no_wasm_errors();
}

#[test]
fn a_spoofed_cluster_header_is_never_obeyed() {
    let gateway = Gateway::start("spoof", &routing_document());
    let mut client = gateway.client();
    let spoof = |request: Request, values: &[&str]| {
        values.iter().fold(request, |request, value| {
            request.header("x-graylane-cluster", value)
        })
    };
    let cases = [
        (Request::get("/").host("m.test"), "m-stable"),
        (
            Request::get("/").host("m.test").header("x-exact", "yes"),
            "m-h-exact",
        ),
        (Request::get("/").host("nowhere.test"), FALLBACK_CLUSTER),
        (Request::get("/").host("wild.test"), FALLBACK_CLUSTER),
    ];
    for (request, expected) in cases {
        for values in [
            &["m-gray"][..],
            &["m-gray", "m-h-exact"],
            &["fallback", "m-gray"],
            &[""],
        ] {
            let sent = spoof(request.clone(), values);
            let echo = client.send(&sent).echo();
            assert_eq!(echo.backend, expected, "spoofed {values:?} on {request:?}");
            let reached = echo.header_values("x-graylane-cluster");
            if expected == FALLBACK_CLUSTER {
                assert!(reached.is_empty(), "spoof {values:?} reached the upstream");
            } else {
                assert_eq!(reached, [expected], "spoofed {values:?}");
            }
        }
    }
    // A mixed-case name is the same header.
    assert_unclaimed_spoof_ignored(&mut client, "X-Graylane-Cluster");
    gateway.envoy.assert_no_wasm_errors();
}

/// A cluster header sent on a request no service claims: the fallback route
/// takes the request and the upstream never sees the header.
fn assert_unclaimed_spoof_ignored(client: &mut Client, header: &str) {
    let request = Request::get("/")
        .host("nowhere.test")
        .header(header, "m-gray");
    let echo = client.send(&request).echo();
    assert_eq!(echo.backend, FALLBACK_CLUSTER, "{request:?} was obeyed");
    assert!(
        echo.header_values(header).is_empty(),
        "{request:?} reached the upstream"
    );
}

#[test]
fn untrusted_tags_are_stripped_with_custom_header_names_behind_the_guard() {
    // trust_tag false, custom header names, and the shipped filter chain's
    // guard (a header_mutation filter removing the cluster header before the
    // plugin): the plugin must still route after the guard.
    let document = json!({
        "cluster_header": "x-route-to",
        "tag_header": "x-lane",
        "trust_tag": false,
        "services": [{
            "name": "b",
            "hosts": ["b.test"],
            "default": "stable",
            "subsets": [
                {"name": "stable", "cluster": "b-stable"},
                {"name": "canary", "cluster": "b-canary", "tag": "canary",
                 "match": [{"headers": [{"name": "userid", "exact": "123"}]}]}
            ]
        }]
    });
    let gateway = Gateway::start_with("untrusted", &document, |mut config| {
        config.guard_cluster_header = true;
        config
    });
    let mut client = gateway.client();
    let b = || Request::get("/").host("b.test");

    let echo = client.send(&b().header("x-lane", "canary")).echo();
    assert_eq!(echo.backend, "b-stable", "an untrusted tag was obeyed");
    assert!(
        echo.header_values("x-lane").is_empty(),
        "the tag was not stripped"
    );

    let echo = client
        .send(&b().header("x-lane", "canary").header("x-lane", "other"))
        .echo();
    assert_eq!(echo.backend, "b-stable");
    assert!(echo.header_values("x-lane").is_empty());

    let echo = client
        .send(&b().header("userid", "123").header("x-lane", "bogus"))
        .echo();
    assert_eq!(echo.backend, "b-canary");
    assert_eq!(echo.header_values("x-lane"), ["canary"]);
    assert_eq!(echo.header_values("x-route-to"), ["b-canary"]);

    let echo = client
        .send(
            &Request::get("/")
                .host("nowhere.test")
                .header("x-lane", "canary"),
        )
        .echo();
    assert_eq!(echo.backend, FALLBACK_CLUSTER);
    assert!(echo.header_values("x-lane").is_empty());

    let echo = client.send(&b().header("x-route-to", "b-canary")).echo();
    assert_eq!(echo.backend, "b-stable");
    assert_eq!(echo.header_values("x-route-to"), ["b-stable"]);
    // No service claims this one, so the plugin edits nothing: the guard
    // must not have let Envoy pick the route before it removed the header.
    assert_unclaimed_spoof_ignored(&mut client, "x-route-to");
    // The default name means nothing here: it passes as any other header.
    let echo = client
        .send(&b().header("x-graylane-cluster", "b-canary"))
        .echo();
    assert_eq!(echo.backend, "b-stable");
    gateway.envoy.assert_no_wasm_errors();
}

/// Sends `total` requests built by `request(i)` over `connections` keep-alive
/// connections in parallel; returns the echo of each, in order of `i`.
fn send_many(
    gateway: &Gateway,
    total: usize,
    connections: usize,
    request: impl Fn(usize) -> Request + Sync,
) -> Vec<Echo> {
    let request = &request;
    let mut echoes: Vec<(usize, Echo)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|worker| {
                scope.spawn(move || {
                    let mut client = gateway.client();
                    (worker..total)
                        .step_by(connections)
                        .map(|i| (i, client.send(&request(i)).echo()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a sender panicked"))
            .collect()
    });
    echoes.sort_by_key(|(i, _)| *i);
    echoes.into_iter().map(|(_, echo)| echo).collect()
}

fn count_backends(echoes: &[Echo]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for echo in echoes {
        *counts.entry(echo.backend.clone()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn weighted_split_without_sticky_key_is_within_one_point() {
    let document = json!({"services": [{
        "name": "s",
        "hosts": ["s.test"],
        "default": "stable",
        "subsets": [
            {"name": "stable", "cluster": "s-stable"},
            {"name": "canary", "cluster": "s-canary", "weight": 20},
            {"name": "blue", "cluster": "s-blue", "weight": 5.5}
        ]
    }]});
    let gateway = Gateway::start("split", &document);
    let total = 10_000;
    let echoes = send_many(&gateway, total, 4, |_| Request::get("/").host("s.test"));
    let counts = count_backends(&echoes);
    let percent = |name: &str| 100.0 * counts.get(name).copied().unwrap_or(0) as f64 / total as f64;
    for (name, want) in [("s-canary", 20.0), ("s-blue", 5.5), ("s-stable", 74.5)] {
        let got = percent(name);
        assert!(
            (got - want).abs() <= 1.0,
            "{name}: {got:.2}% where {want}% was configured; counts {counts:?}"
        );
    }
    // Split traffic carries its subset's tag; the default's does not.
    for echo in &echoes {
        let expected = match echo.backend.as_str() {
            "s-canary" => Some("canary"),
            "s-blue" => Some("blue"),
            _ => None,
        };
        assert_eq!(echo.header("x-gray-tag"), expected, "{echo:?}");
    }
    // Envoy counted the same split.
    for (name, count) in &counts {
        assert_eq!(
            gateway
                .envoy
                .stat(&format!("cluster.{name}.upstream_rq_total")),
            *count as u64,
            "Envoy's count for {name}"
        );
    }
    gateway.envoy.assert_no_wasm_errors();
}

fn sticky_document(canary_weight: f64) -> Value {
    json!({"services": [
        {
            "name": "by-header",
            "hosts": ["h.test"],
            "default": "stable",
            "sticky": {"header": "userid"},
            "subsets": [
                {"name": "stable", "cluster": "h-stable"},
                {"name": "canary", "cluster": "h-canary", "weight": canary_weight}
            ]
        },
        {
            "name": "by-cookie",
            "hosts": ["c.test"],
            "default": "green",
            "sticky": {"cookie": "uid"},
            "subsets": [
                {"name": "green", "cluster": "c-green"},
                {"name": "blue", "cluster": "c-blue", "weight": canary_weight}
            ]
        }
    ]})
}

/// The cluster the library's own decision picks for a request: what the
/// plugin in Envoy must agree with.
fn native_cluster(document: &Value, host: &str, headers: &[(&str, &str)]) -> String {
    let rules = graylane_core::config::compile(document.to_string().as_bytes())
        .expect("the test document compiles");
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b":authority", host.as_bytes()),
        (b":path", b"/"),
        (b":method", b"GET"),
    ];
    pairs.extend(
        headers
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_bytes())),
    );
    let decision = decide(
        &rules,
        &NativeRequest::new(&pairs),
        &mut WeylSequence::new(0),
    );
    decision.cluster.unwrap_or(FALLBACK_CLUSTER).to_string()
}

#[test]
fn sticky_split_keeps_users_and_raising_the_weight_only_moves_users_in() {
    let users = 1_000;
    let (low, high) = (sticky_document(10.0), sticky_document(40.0));
    // Two Envoys, before and after the weight is raised, started together.
    let (before, after) = thread::scope(|scope| {
        let before = scope.spawn(|| Gateway::start("sticky-10", &low));
        let after = scope.spawn(|| Gateway::start("sticky-40", &high));
        (before.join().unwrap(), after.join().unwrap())
    });
    let by_header = |i: usize| {
        Request::get("/")
            .host("h.test")
            .header("userid", &format!("user-{}", i % users))
    };
    let by_cookie = |i: usize| {
        Request::get("/")
            .host("c.test")
            .header("cookie", &format!("a=b; uid=u{}; z=1", i % users))
    };
    for (kind, request, canary, header) in [
        (
            "header",
            &by_header as &(dyn Fn(usize) -> Request + Sync),
            "h-canary",
            "userid",
        ),
        ("cookie", &by_cookie, "c-blue", "cookie"),
    ] {
        // Every user twice, on different connections (so through both
        // workers, likely), then once after the raise.
        let first = send_many(&before, 2 * users, 3, request);
        let raised = send_many(&after, users, 3, request);
        let mut moved_in = 0;
        for user in 0..users {
            let (a, b, c) = (&first[user], &first[user + users], &raised[user]);
            assert_eq!(a.backend, b.backend, "{kind} user {user} changed subset");
            if a.backend == canary {
                assert_eq!(c.backend, canary, "{kind} user {user} left the canary");
            } else if c.backend == canary {
                moved_in += 1;
            }
            // The plugin agrees with the library's decision.
            let sent = request(user);
            let value = sent
                .headers
                .iter()
                .find(|(name, _)| name == header.as_bytes())
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                .unwrap();
            let host = if kind == "header" { "h.test" } else { "c.test" };
            for (document, echo) in [(&low, a), (&high, c)] {
                assert_eq!(
                    native_cluster(document, host, &[(header, &value)]),
                    echo.backend,
                    "{kind} user {user}: the plugin and the library disagree"
                );
            }
        }
        let share = |echoes: &[Echo]| {
            100.0 * echoes.iter().filter(|e| e.backend == canary).count() as f64
                / echoes.len() as f64
        };
        let (low_share, high_share) = (share(&first[..users]), share(&raised));
        // 1,000 users: a standard deviation of about 1 point at 10%, 1.5 at 40%.
        assert!(
            (6.0..=14.0).contains(&low_share),
            "{kind}: {low_share}% at weight 10"
        );
        assert!(
            (34.0..=46.0).contains(&high_share),
            "{kind}: {high_share}% at weight 40"
        );
        assert!(moved_in > 200, "{kind}: only {moved_in} users moved in");
    }
    before.envoy.assert_no_wasm_errors();
    after.envoy.assert_no_wasm_errors();
}

/// Issue 19: a service scoped by header, comparisons, `in`, `invert`, `not`,
/// rules with a split of their own and headers set per subset.
fn expressive_document() -> Value {
    let on = |name: &str, entry: Value| json!({"name": name, "cluster": format!("e-{name}"), "match": [entry]});
    json!({"services": [
        {
            "name": "gated",
            "hosts": ["e.test"],
            "headers": [
                {"name": "x-env", "exact": "beta"},
                {"name": "x-block", "present": true, "invert": true}
            ],
            "default": "beta",
            "subsets": [{"name": "beta", "cluster": "e-gated", "set_headers": {"x-lane": "base-gated"}}]
        },
        {
            "name": "main",
            "hosts": ["e.test"],
            "default": "stable",
            "sticky": {"header": "userid"},
            "subsets": [
                {"name": "stable", "cluster": "e-stable", "set_headers": {"x-lane": "base", "X-Extra": "1"}},
                on("num", json!({"headers": [{"name": "x-version", "gt": 5}, {"name": "x-version", "le": 10.5}]})),
                on("low", json!({"query": [{"name": "v", "lt": 0}]})),
                on("listed", json!({"headers": [{"name": "x-region", "in": ["eu-1", "eu-2"]}]})),
                on("inv", json!({"path": {"prefix": "/inv"}, "headers": [{"name": "x-team", "exact": "core", "invert": true}]})),
                on("notpath", json!({"path": {"prefix": "/api", "invert": true}, "method": ["DELETE"]})),
                on("neg", json!({
                    "headers": [{"name": "x-not-test", "present": true}],
                    "not": {"headers": [{"name": "x-a", "exact": "1"}], "cookies": [{"name": "b", "exact": "2"}]}
                })),
                {"name": "canary", "cluster": "e-canary", "set_headers": {"x-lane": "canary"}}
            ],
            "rules": [
                {"match": [{"headers": [{"name": "x-app", "exact": "mobile"}]}],
                 "split": [{"subset": "canary", "weight": 30}]},
                {"match": [{"headers": [{"name": "x-app", "exact": "all-in"}]}],
                 "split": [{"subset": "canary", "weight": 100}]}
            ]
        }
    ]})
}

#[test]
fn rules_comparisons_negation_service_headers_and_set_headers_route_in_envoy() {
    let document = expressive_document();
    let gateway = Gateway::start("expressive", &document);
    let e = |target: &str| {
        Request::get(target)
            .host("e.test")
            .header("userid", "user-0")
    };
    assert_routes(
        &gateway,
        &[
            (
                "service headers hold",
                e("/").header("x-env", "beta"),
                "e-gated",
            ),
            (
                "service headers: the inverted present fails",
                e("/").header("x-env", "beta").header("x-block", "1"),
                "e-stable",
            ),
            (
                "service headers: other value",
                e("/").header("x-env", "prod"),
                "e-stable",
            ),
            ("gt and le", e("/").header("x-version", "7"), "e-num"),
            (
                "le at its bound",
                e("/").header("x-version", "10.5"),
                "e-num",
            ),
            (
                "gt at its bound",
                e("/").header("x-version", "5"),
                "e-stable",
            ),
            (
                "no decimal number",
                e("/").header("x-version", "7beta"),
                "e-stable",
            ),
            ("lt on a query parameter", e("/?v=-2"), "e-low"),
            ("lt, miss", e("/?v=0"), "e-stable"),
            ("in", e("/").header("x-region", "eu-2"), "e-listed"),
            ("in, miss", e("/").header("x-region", "us-1"), "e-stable"),
            (
                "inverted header, other value",
                e("/inv").header("x-team", "edge"),
                "e-inv",
            ),
            ("inverted header, absent", e("/inv"), "e-inv"),
            (
                "inverted header, the value",
                e("/inv").header("x-team", "core"),
                "e-stable",
            ),
            (
                "inverted path",
                Request::new("DELETE", "/other")
                    .host("e.test")
                    .header("userid", "user-0"),
                "e-notpath",
            ),
            (
                "inverted path, miss",
                Request::new("DELETE", "/api/x")
                    .host("e.test")
                    .header("userid", "user-0"),
                "e-stable",
            ),
            (
                "not: inner entry fails",
                e("/").header("x-not-test", "1").header("x-a", "1"),
                "e-neg",
            ),
            (
                "not: inner entry holds",
                e("/")
                    .header("x-not-test", "1")
                    .header("x-a", "1")
                    .header("cookie", "b=2"),
                "e-stable",
            ),
            (
                "rule with weight 100",
                e("/").header("x-app", "all-in"),
                "e-canary",
            ),
            (
                "subset matches before rules",
                e("/").header("x-app", "all-in").header("x-region", "eu-1"),
                "e-listed",
            ),
        ],
    );

    // set_headers: on the default too, replacing what the client sent.
    let mut client = gateway.client();
    let echo = client.send(&e("/").header("x-lane", "spoofed")).echo();
    assert_eq!(echo.backend, "e-stable");
    assert_eq!(echo.header_values("x-lane"), ["base"]);
    assert_eq!(echo.header("x-extra"), Some("1"));
    assert_eq!(echo.header("x-gray-tag"), None);
    let echo = client
        .send(&e("/").header("x-app", "all-in").header("x-lane", "spoofed"))
        .echo();
    assert_eq!(echo.backend, "e-canary");
    assert_eq!(echo.header_values("x-lane"), ["canary"]);
    assert_eq!(echo.header("x-gray-tag"), Some("canary"));
    assert_eq!(echo.header("x-extra"), None);
    let echo = client.send(&e("/").header("x-env", "beta")).echo();
    assert_eq!(echo.header("x-lane"), Some("base-gated"));

    // A rule's sticky split: about 30% of mobile users, each where the
    // library puts them, and the same on a second pass.
    let users = 1_000;
    let mobile = |i: usize| {
        Request::get("/")
            .host("e.test")
            .header("x-app", "mobile")
            .header("userid", &format!("user-{}", i % users))
    };
    let echoes = send_many(&gateway, 2 * users, 3, mobile);
    for user in 0..users {
        let (first, second) = (&echoes[user], &echoes[user + users]);
        assert_eq!(first.backend, second.backend, "user {user} changed subset");
        let expected = native_cluster(
            &document,
            "e.test",
            &[("x-app", "mobile"), ("userid", &format!("user-{user}"))],
        );
        assert_eq!(
            first.backend, expected,
            "user {user}: the plugin and the library disagree"
        );
    }
    let canary = echoes[..users]
        .iter()
        .filter(|e| e.backend == "e-canary")
        .count();
    assert!(
        (250..=350).contains(&canary),
        "{canary} of {users} mobile users on the canary"
    );
    gateway.envoy.assert_no_wasm_errors();
}

#[test]
fn a_refused_configuration_stops_envoy_and_names_the_field() {
    let weight_over_100 = json!({"services": [{
        "name": "b",
        "default": "stable",
        "subsets": [
            {"name": "stable", "cluster": "b-stable"},
            {"name": "canary", "cluster": "b-canary", "weight": 300}
        ]
    }]})
    .to_string();
    let bad_regex = json!({"services": [{
        "name": "b",
        "default": "stable",
        "subsets": [
            {"name": "stable", "cluster": "b-stable"},
            {"name": "canary", "cluster": "b-canary",
             "match": [{"headers": [{"name": "x", "regex": "(unclosed"}]}]}
        ]
    }]})
    .to_string();
    let subsets = |canary: Value| {
        json!({"services": [{"name": "b", "default": "stable",
            "subsets": [{"name": "stable", "cluster": "b-stable"}, canary]}]})
    };
    // About 1,200 regexes of ~600 KB compiled each: before the budget, this
    // 66 KB document exhausted the VM's memory and Envoy died unnamed.
    let regex_bomb = subsets(json!({"name": "canary", "cluster": "b-canary",
        "match": (0..1_200).map(|n| json!({"headers": [{"name": "x-user", "regex": format!("\\w{{20}}@c{n}")}]}))
            .collect::<Vec<_>>()}))
    .to_string();
    let mut smuggling_header = subsets(json!({"name": "canary", "cluster": "b-canary", "tag": "0"}));
    smuggling_header["tag_header"] = json!("content-length");
    let crlf_tag = subsets(json!({"name": "canary", "cluster": "b-canary", "tag": "a\r\nx-admin: 1"}));
    let cases = [
        (
            "regex-bomb",
            regex_bomb,
            "graylane: configuration refused: services[0].subsets[1].match[",
        ),
        (
            "content-length-tag",
            smuggling_header.to_string(),
            "graylane: configuration refused: tag_header: \"content-length\" is a header with a meaning of its own",
        ),
        (
            "crlf-tag",
            crlf_tag.to_string(),
            "graylane: configuration refused: services[0].subsets[1].tag: ",
        ),
        (
            "weight",
            weight_over_100,
            "graylane: configuration refused: services[0].subsets[1].weight:",
        ),
        (
            "regex",
            bad_regex,
            "graylane: configuration refused: services[0].subsets[1].match[0].headers[0].regex:",
        ),
        (
            "not-json",
            "{\"services\": [".to_string(),
            "graylane: configuration refused: $: not valid JSON",
        ),
    ];
    thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(label, document, expected)| {
                scope.spawn(move || {
                    let (config, _backends) = Gateway::prepare(label, document);
                    let exited = match Envoy::try_start(&config) {
                        Ok(envoy) => panic!(
                            "{label}: Envoy started with a refused configuration; log in {}",
                            envoy.log_path().display()
                        ),
                        Err(exited) => exited,
                    };
                    assert!(
                        !exited.status.success(),
                        "{label}: exit status {}",
                        exited.status
                    );
                    assert!(
                        exited.log.contains(expected),
                        "{label}: the log does not name the field ({expected}):\n{}",
                        exited.log
                    );
                    assert!(
                        *label != "regex-bomb"
                            || exited.log.contains("(limits.regex_memory_bytes)"),
                        "{label}: the log does not name the limit:\n{}",
                        exited.log
                    );
                    assert!(
                        exited.log.contains("Unable to create Wasm plugin graylane"),
                        "{label}: Envoy did not refuse the filter:\n{}",
                        exited.log
                    );
                    assert!(
                        !exited.log.contains("starting main dispatch loop"),
                        "{label}: Envoy served before exiting"
                    );
                })
            })
            .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
}

/// What Envoy does with requests once the plugin's VM has crashed, shown with
/// a stand-in plugin that traps on demand (tests/fixtures/crash-plugin). The
/// shipped FAIL_RELOAD must never forward a request unrouted, so a client's
/// own cluster header is never obeyed, and must route again after reloading;
/// FAIL_OPEN, for contrast, forwards it where the client asked.
#[test]
fn after_a_vm_crash_fail_reload_refuses_then_recovers_where_fail_open_obeys_the_client() {
    let document =
        json!({"services": [{"subsets": [{"cluster": "stable"}, {"cluster": "canary"}]}]});
    let start = |policy: &str| {
        let (mut config, backends) = Gateway::prepare(policy, &document.to_string());
        config.wasm = crash_plugin_wasm_path().to_path_buf();
        config.failure_policy = policy.to_string();
        Gateway {
            envoy: Envoy::start(&config),
            backends,
        }
    };
    let spoofed = || Request::get("/").header("x-graylane-cluster", "canary");
    let crash = || spoofed().header("x-crash", "1");
    let outcome = |response: Response| match response.header("x-echo-backend") {
        Some(backend) => backend,
        None => format!("status {}", response.status),
    };

    let (reload, open) = thread::scope(|scope| {
        let reload = scope.spawn(|| start("FAIL_RELOAD"));
        let open = scope.spawn(|| start("FAIL_OPEN"));
        (reload.join().unwrap(), open.join().unwrap())
    });

    // FAIL_RELOAD.
    assert_eq!(outcome(reload.send(&spoofed())), "stable");
    // Crash the VMs: eight connections reach both workers but once in 128.
    for _ in 0..8 {
        assert_eq!(outcome(reload.send(&crash())), "status 503");
    }
    assert!(
        !reload.envoy.wasm_errors().is_empty(),
        "no VM failure logged"
    );
    let started = std::time::Instant::now();
    let mut refused = 0;
    loop {
        let outcomes: Vec<String> = (0..8).map(|_| outcome(reload.send(&spoofed()))).collect();
        for outcome in &outcomes {
            assert!(
                outcome == "stable" || outcome == "status 503",
                "after a crash, FAIL_RELOAD answered {outcome}"
            );
        }
        refused += outcomes.iter().filter(|o| *o == "status 503").count();
        if outcomes.iter().all(|o| o == "stable") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "FAIL_RELOAD did not recover: {outcomes:?}"
        );
        thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(refused > 0, "no request was refused while the VM reloaded");

    // FAIL_OPEN, for contrast: once its VM has failed, the client's header wins.
    assert_eq!(outcome(open.send(&spoofed())), "stable");
    let obeyed = (0..8)
        .map(|_| {
            let _ = open.send(&crash());
            outcome(open.send(&spoofed()))
        })
        .any(|outcome| outcome == "canary");
    assert!(obeyed, "FAIL_OPEN no longer forwards unrouted requests after a crash; revisit the failure policy note");
}

/// Lanes in W3C Baggage (`tag_baggage_key`): a trusted hop routes by the
/// `lane` member and writes it; an untrusted edge strips only that member.
#[test]
fn lanes_travel_in_w3c_baggage() {
    let rules = |trust: bool| {
        json!({"tag_baggage_key": "lane", "trust_tag": trust, "services": [{
            "name": "b", "default": "stable",
            "subsets": [
                {"name": "stable", "cluster": "b-stable"},
                {"name": "canary", "cluster": "b-canary",
                 "match": [{"headers": [{"name": "x-tester", "present": true}]}]}
            ]}]})
    };
    let inner = Gateway::start("baggage-trusted", &rules(true));
    let edge = Gateway::start("baggage-edge", &rules(false));
    let baggage = |response: &Response| {
        let echo = response.echo();
        (echo.backend.clone(), echo.header("baggage").map(str::to_string), echo.header("x-gray-tag").map(str::to_string))
    };
    let mut inner_client = inner.client();
    let mut edge_client = edge.client();
    // (what, response, (backend, baggage, tag) the upstream must receive)
    type Expected<'a> = (&'a str, Option<&'a str>, Option<&'a str>);
    let cases: Vec<(&str, Response, Expected<'_>)> = vec![
        ("trusted: the lane member routes, the tag header is written too",
         inner_client.send(&Request::get("/").header("baggage", "userId=42,lane=canary;ttl=3")),
         ("b-canary", Some("userId=42,lane=canary;ttl=3"), Some("canary"))),
        ("trusted: a match writes the member, others kept",
         inner_client.send(&Request::get("/").header("x-tester", "1").header("baggage", "userId=42")),
         ("b-canary", Some("userId=42,lane=canary"), Some("canary"))),
        ("trusted: an unknown lane goes to the default and is kept for the next hop",
         inner_client.send(&Request::get("/").header("baggage", "lane=blue")),
         ("b-stable", Some("lane=blue"), None)),
        ("edge: the client's lane member is stripped, the others kept",
         edge_client.send(&Request::get("/").header("baggage", "userId=42, lane=canary")),
         ("b-stable", Some("userId=42"), None)),
        ("edge: a header of only the lane is removed",
         edge_client.send(&Request::get("/").header("baggage", "lane=canary")),
         ("b-stable", None, None)),
    ];
    let mut failures = Vec::new();
    for (what, response, (backend, bag, tag)) in &cases {
        let (got_backend, got_bag, got_tag) = baggage(response);
        if got_backend != *backend || got_bag.as_deref() != *bag || got_tag.as_deref() != *tag {
            failures.push(format!("{what}: want {backend} {bag:?} {tag:?}, got {got_backend} {got_bag:?} {got_tag:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A canary with no mainline (issue 19, item 7): what no match, tag or
/// weight claims is answered by the gateway itself, and reaches no backend.
#[test]
fn a_service_without_default_answers_what_nothing_claims() {
    let document = json!({"trust_tag": true, "services": [
        {"name": "nd", "hosts": ["nd.test"], "sticky": {"header": "userid"},
         "subsets": [
            {"name": "canary", "cluster": "nd-canary", "weight": 50,
             "match": [{"headers": [{"name": "x-canary", "exact": "always"}]}]},
            {"name": "beta", "cluster": "nd-beta", "set_headers": {"x-lane": "beta"}}
         ]},
        {"name": "teapot", "hosts": ["tea.test"], "unclaimed_status": 418,
         "subsets": [{"name": "v2", "cluster": "tea-v2",
                      "match": [{"headers": [{"name": "x-v2", "present": true}]}]}]}
    ]});
    let gateway = Gateway::start("no-default", &document);
    let reached = || -> usize { gateway.backends.values().map(EchoBackend::requests).sum() };
    let mut client = gateway.client();
    let nd = |userid: &str| Request::get("/").host("nd.test").header("userid", userid);

    let echo = client.send(&nd("u").header("x-canary", "always")).echo();
    assert_eq!(echo.backend, "nd-canary");
    let echo = client.send(&nd("u").header("x-gray-tag", "beta")).echo();
    assert_eq!((echo.backend.as_str(), echo.header("x-lane")), ("nd-beta", Some("beta")));

    // Unclaimed: answered on the same keep-alive connection, no backend sees it,
    // not even the one a spoofed cluster header names.
    let rules = graylane_core::config::compile(document.to_string().as_bytes()).unwrap();
    let reply_for = |userid: &str| {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"nd.test"),
            (b":method", b"GET"),
            (b":path", b"/"),
            (b"userid", userid.as_bytes()),
        ];
        decide(&rules, &NativeRequest::new(&pairs), &mut WeylSequence::new(1)).local_reply()
    };
    let outside = (0..)
        .map(|user| format!("user-{user}"))
        .find(|userid| reply_for(userid).is_some())
        .unwrap();
    let before = reached();
    let answer = client.send(&nd(&outside).header("x-canary", "never"));
    assert_eq!(answer.status, 404, "{:?}", answer.text());
    let answer = client.send(&nd(&outside).header("x-graylane-cluster", "nd-canary"));
    assert_eq!(answer.status, 404);
    let answer = client.send(&Request::get("/").host("tea.test").header("x-graylane-cluster", "tea-v2"));
    assert_eq!(answer.status, 418);
    assert_eq!(reached(), before, "an unclaimed request reached a backend");
    let echo = client.send(&Request::get("/").host("tea.test").header("x-v2", "1")).echo();
    assert_eq!(echo.backend, "tea-v2");
    let echo = client.send(&Request::get("/").host("elsewhere.test")).echo();
    assert_eq!(echo.backend, FALLBACK_CLUSTER);

    // The sticky split between the canary and the reply: every user where
    // the library puts them, about half answered 404.
    let mut answered = 0;
    for user in 0..400 {
        let userid = format!("user-{user}");
        let response = client.send(&nd(&userid));
        match reply_for(&userid) {
            Some(status) => {
                answered += 1;
                assert_eq!(response.status, status, "{userid}");
            }
            None => assert_eq!(response.echo().backend, "nd-canary", "{userid}"),
        }
    }
    assert!((160..=240).contains(&answered), "{answered} of 400 users answered 404");
    gateway.envoy.assert_no_wasm_errors();
}

/// Form bodies (issue 19, item 4): a POST of
/// `application/x-www-form-urlencoded` waits for its body, and the route
/// follows the cluster chosen after it; the body reaches the upstream byte
/// for byte; other requests, a body past `limits.max_body_bytes` and another
/// content type are decided on their headers, where `form` does not match.
#[test]
fn a_form_body_parameter_chooses_the_cluster_after_the_body() {
    let document = json!({
        "limits": {"max_body_bytes": 64},
        "services": [{
            "name": "f", "hosts": ["f.test"], "default": "stable",
            "subsets": [
                {"name": "stable", "cluster": "f-stable"},
                {"name": "canary", "cluster": "f-canary",
                 "match": [{"form": [{"name": "user id", "exact": "a&b c"}]}]}
            ]
        }, {
            "name": "plain", "hosts": ["p.test"], "default": "stable",
            "subsets": [{"name": "stable", "cluster": "p-stable"}]
        }]
    });
    let gateway = Gateway::start("form", &document);
    let mut client = gateway.client();
    let form = "application/x-www-form-urlencoded";
    let post = |host: &str, content_type: &str, body: &str| {
        Request::new("POST", "/submit")
            .host(host)
            .header("content-type", content_type)
            .body(body.as_bytes())
    };
    let cases: Vec<(&str, Request, &str, String)> = vec![
        ("form match", post("f.test", form, "x=1&user+id=a%26b+c&y=%E2%9C%93"), "f-canary", "x=1&user+id=a%26b+c&y=%E2%9C%93".into()),
        ("form with charset", post("f.test", "Application/X-WWW-Form-Urlencoded; charset=utf-8", "user%20id=a%26b%20c"), "f-canary", "user%20id=a%26b%20c".into()),
        ("form, other value", post("f.test", form, "user+id=a"), "f-stable", "user+id=a".into()),
        ("JSON with the same text", post("f.test", "application/json", "user+id=a%26b+c"), "f-stable", "user+id=a%26b+c".into()),
        ("over max_body_bytes", post("f.test", form, &format!("user+id=a%26b+c&pad={}", "p".repeat(80))), "f-stable",
            format!("user+id=a%26b+c&pad={}", "p".repeat(80))),
        ("chunked within the cap", post("f.test", form, "7\r\nuser+id\r\n9\r\n=a%26b+c&\r\n0\r\n\r\n").header("transfer-encoding", "chunked"),
            "f-canary", "user+id=a%26b+c&".into()),
        ("chunked past the cap", post("f.test", form, &format!("10\r\nuser+id=a%26b+c&\r\n50\r\n{}\r\n0\r\n\r\n", "q".repeat(80)))
            .header("transfer-encoding", "chunked"), "f-stable", format!("user+id=a%26b+c&{}", "q".repeat(80))),
        ("spoofed cluster on a form request", post("f.test", form, "user+id=a").header("x-graylane-cluster", "f-canary"), "f-stable", "user+id=a".into()),
        ("a service without form", post("p.test", form, "user+id=a%26b+c"), "p-stable", "user+id=a%26b+c".into()),
    ];
    for (what, request, backend, body) in cases {
        let echo = client.send(&request).echo();
        assert_eq!(echo.backend, backend, "{what}");
        assert_eq!(echo.body, body, "{what}: the body changed on its way");
        assert_eq!(echo.header("x-graylane-cluster"), Some(backend), "{what}");
    }
    let echo = client.send(&Request::get("/?user+id=a%26b+c").host("f.test")).echo();
    assert_eq!(echo.backend, "f-stable");
    gateway.envoy.assert_no_wasm_errors();
}
