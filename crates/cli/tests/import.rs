//! `graylane import`: the peers' documented canary examples (written anew
//! here, in the shape their documentation gives them) translate into
//! documents that `check` accepts and that route, under `simulate` and
//! `explain`, as the peer documents.
// Tests may unwrap and panic, helpers included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use serde_json::Value;

mod common;

use common::graylane;

fn scratch(name: &str, text: &str) -> PathBuf {
    common::scratch_in("import-tests", name, text)
}

struct Imported {
    code: i32,
    /// The imported document, written to a file of its own.
    document: PathBuf,
    stderr: String,
}

impl Imported {
    /// The lines that name something not translated.
    fn losses(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("graylane import: not translated: "))
            .collect()
    }

    /// The subset `explain --json` gives a request.
    fn subset(&self, args: &[&str]) -> String {
        let mut all = vec!["explain", self.document.to_str().unwrap(), "--json"];
        all.extend_from_slice(args);
        let run = graylane(&all);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let outcome: Value = serde_json::from_str(&run.stdout).unwrap();
        outcome["subset"].as_str().unwrap_or("none").to_string()
    }

    /// Percent of 10,000 requests per subset, from `simulate --json`.
    fn split(&self, args: &[&str]) -> Vec<(String, f64)> {
        let mut all = vec![
            "simulate",
            self.document.to_str().unwrap(),
            "-n",
            "10000",
            "--json",
        ];
        all.extend_from_slice(args);
        let run = graylane(&all);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let split: Value = serde_json::from_str(&run.stdout).unwrap();
        split["split"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["subset"].as_str().unwrap();
                let subset = name.split_once('/').map_or(name, |(_, subset)| subset);
                (subset.to_string(), s["percent"].as_f64().unwrap())
            })
            .collect()
    }

    fn share(&self, subset: &str, args: &[&str]) -> f64 {
        self.split(args)
            .into_iter()
            .find(|(name, _)| name == subset)
            .map_or(0.0, |(_, percent)| percent)
    }
}

fn import(peer: &str, name: &str, text: &str, extra: &[&str]) -> Imported {
    let input = scratch(name, text);
    let mut args = vec!["import", peer, input.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = graylane(&args);
    let document = scratch(&format!("{name}.graylane.json"), &run.stdout);
    if run.code != 2 {
        let check = graylane(&["check", document.to_str().unwrap()]);
        assert_eq!(
            check.code, 0,
            "check refused the import: {}\n{}",
            check.stderr, run.stdout
        );
    }
    Imported {
        code: run.code,
        document,
        stderr: run.stderr,
    }
}

/// APISIX's canary release: upstream_A takes 3 of every 5 requests, the
/// route's own upstream (the entry without an upstream) 2.
const APISIX_CANARY: &str = r#"{
  "uri": "/index.html",
  "plugins": {
    "traffic-split": {
      "rules": [
        {
          "weighted_upstreams": [
            {
              "upstream": {
                "name": "upstream_A",
                "type": "roundrobin",
                "nodes": { "127.0.0.1:1981": 10 },
                "timeout": { "connect": 15, "send": 15, "read": 15 }
              },
              "weight": 3
            },
            { "weight": 2 }
          ]
        }
      ]
    }
  },
  "upstream": { "type": "roundrobin", "nodes": { "127.0.0.1:1980": 1 } }
}"#;

#[test]
fn apisix_canary_release_splits_three_to_two() {
    let strict = import("apisix", "canary.json", APISIX_CANARY, &[]);
    assert_eq!(strict.code, 1, "{}", strict.stderr);
    assert_eq!(
        strict.losses(),
        ["uri \"/index.html\" is an exact path in APISIX; graylane's path_prefix also takes longer paths"]
    );
    assert!(strict.stderr.contains("--lossy accepts it"));
    let lossy = import("apisix", "canary.json", APISIX_CANARY, &["--lossy"]);
    assert_eq!(lossy.code, 0, "{}", lossy.stderr);
    let share = lossy.share("upstream_A", &["--path", "/index.html"]);
    assert!((59.0..=61.0).contains(&share), "{share}");
    assert_eq!(
        lossy.share("route-upstream", &["--path", "/index.html"]),
        100.0 - share
    );
}

/// APISIX's blue-green release: a request with `release: new_release` goes
/// to upstream_A, every other to the route's upstream.
const APISIX_BLUE_GREEN: &str = r#"{
  "uri": "/*",
  "plugins": {
    "traffic-split": {
      "rules": [
        {
          "match": [ { "vars": [ ["http_release", "==", "new_release"] ] } ],
          "weighted_upstreams": [
            { "upstream": { "name": "upstream_A", "type": "roundrobin", "nodes": { "127.0.0.1:1981": 10 } } }
          ]
        }
      ]
    }
  },
  "upstream": { "name": "upstream_B", "type": "roundrobin", "nodes": { "127.0.0.1:1980": 1 } }
}"#;

#[test]
fn apisix_blue_green_by_header() {
    let imported = import("apisix", "blue-green.json", APISIX_BLUE_GREEN, &[]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert_eq!(
        imported.share("upstream_A", &["-H", "release: new_release"]),
        100.0
    );
    assert_eq!(imported.share("upstream_B", &["-H", "release: old"]), 100.0);
    assert_eq!(imported.share("upstream_B", &[]), 100.0);
}

/// APISIX's custom release: only requests with `?name=jack`, a `user-id`
/// header above 23 and an `apisix-key` header with a lower-case letter are
/// split 3:2 between upstream 1 and the route's upstream 2.
const APISIX_CUSTOM: &str = r#"{
  "uri": "/index.html*",
  "plugins": {
    "traffic-split": {
      "rules": [
        {
          "match": [
            {
              "vars": [
                ["arg_name", "==", "jack"],
                ["http_user-id", ">", "23"],
                ["http_apisix-key", "~~", "[a-z]+"]
              ]
            }
          ],
          "weighted_upstreams": [
            { "upstream_id": 1, "weight": 3 },
            { "weight": 2 }
          ]
        }
      ]
    }
  },
  "upstream_id": 2
}"#;

#[test]
fn apisix_custom_release_splits_only_the_matching_requests() {
    let imported = import("apisix", "custom.json", APISIX_CUSTOM, &[]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    let matching = [
        "--path",
        "/index.html?name=jack",
        "-H",
        "user-id: 30",
        "-H",
        "apisix-key: hello",
    ];
    let share = imported.share("upstream-1", &matching);
    assert!((59.0..=61.0).contains(&share), "{share}");
    for (what, args) in [
        (
            "user-id 23 is not above 23",
            [
                "--path",
                "/index.html?name=jack",
                "-H",
                "user-id: 23",
                "-H",
                "apisix-key: hello",
            ],
        ),
        (
            "no lower-case letter",
            [
                "--path",
                "/index.html?name=jack",
                "-H",
                "user-id: 30",
                "-H",
                "apisix-key: 123",
            ],
        ),
        (
            "another name",
            [
                "--path",
                "/index.html?name=rose",
                "-H",
                "user-id: 30",
                "-H",
                "apisix-key: hello",
            ],
        ),
    ] {
        assert_eq!(imported.share("upstream-2", &args), 100.0, "{what}");
    }
}

/// Two rules choosing an upstream by the `x-api-id` header, one upstream
/// each; other requests stay on the route's upstream.
const APISIX_TWO_RULES: &str = r#"{
  "uri": "/hello*",
  "plugins": {
    "traffic-split": {
      "rules": [
        {
          "match": [ { "vars": [ ["http_x-api-id", "==", "1"] ] } ],
          "weighted_upstreams": [ { "upstream_id": 1, "weight": 1 } ]
        },
        {
          "match": [ { "vars": [ ["http_x-api-id", "==", "2"] ] } ],
          "weighted_upstreams": [ { "upstream_id": 2, "weight": 1 } ]
        }
      ]
    }
  },
  "upstream": { "name": "route_upstream", "type": "roundrobin", "nodes": { "127.0.0.1:1980": 1 } }
}"#;

#[test]
fn apisix_one_upstream_per_rule() {
    let imported = import("apisix", "two-rules.json", APISIX_TWO_RULES, &[]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert_eq!(
        imported.subset(&["--path", "/hello", "-H", "x-api-id: 1"]),
        "upstream-1"
    );
    assert_eq!(
        imported.subset(&["--path", "/hello", "-H", "x-api-id: 2"]),
        "upstream-2"
    );
    assert_eq!(
        imported.subset(&["--path", "/hello", "-H", "x-api-id: 3"]),
        "route_upstream"
    );
}

/// Every operator, `!`, alternatives in `match`, `OR` and `!AND` groups;
/// a form body parameter (`post_arg_*`, graylane's `form`).
const APISIX_OPERATORS: &str = r#"{
  "uri": "/*",
  "hosts": ["shop.example.com"],
  "plugins": {
    "traffic-split": {
      "rules": [
        {
          "match": [
            { "vars": [ ["http_x-version", ">=", 5], ["http_x-version", "<", "10"], ["cookie_tier", "~=", "free"] ] },
            { "vars": [ ["arg_region", "IN", ["eu", "us"]], ["http_user-agent", "~*", "^mobile"], ["http_x-beta", "!", "==", "off"] ] },
            { "vars": [ "OR", ["http_x-group", "HAS", "qa"], ["http_x-score", "<=", 0.5] ] },
            { "vars": [ "!AND", ["request_method", "==", "GET"], ["uri", "~~", "^/static/"] ] }
          ],
          "weighted_upstreams": [ { "upstream_id": "canary", "weight": 1 } ]
        },
        {
          "match": [ { "vars": [ ["post_arg_plan", "==", "pro"] ] } ],
          "weighted_upstreams": [ { "upstream_id": "canary", "weight": 1 } ]
        }
      ]
    }
  },
  "upstream_id": "stable"
}"#;

#[test]
fn apisix_operators_negation_and_groups() {
    let imported = import("apisix", "operators.json", APISIX_OPERATORS, &[]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(imported.losses().is_empty(), "{}", imported.stderr);
    // GET /static/a.css unless the arguments say otherwise.
    let on = |args: &[&str]| {
        let mut all = vec!["--host", "shop.example.com"];
        for (flag, default) in [("--method", "GET"), ("--path", "/static/a.css")] {
            if !args.contains(&flag) {
                all.extend([flag, default]);
            }
        }
        all.extend_from_slice(args);
        imported.subset(&all)
    };
    let canary = "upstream-canary";
    let stable = "upstream-stable";
    // match[0]: 5 <= x-version < 10 and the tier cookie is not "free".
    assert_eq!(on(&["-H", "x-version: 5"]), canary);
    assert_eq!(
        on(&["-H", "x-version: 9.5", "--cookie", "tier=gold"]),
        canary
    );
    assert_eq!(on(&["-H", "x-version: 10"]), stable);
    assert_eq!(on(&["-H", "x-version: 7", "--cookie", "tier=free"]), stable);
    // match[1]: region in the list, a mobile user agent in any case, x-beta not "off".
    assert_eq!(
        on(&[
            "--path",
            "/static/x?region=eu",
            "-H",
            "user-agent: Mobile Safari"
        ]),
        canary
    );
    assert_eq!(
        on(&[
            "--path",
            "/static/x?region=eu",
            "-H",
            "user-agent: Mobile Safari",
            "-H",
            "x-beta: off"
        ]),
        stable
    );
    assert_eq!(
        on(&[
            "--path",
            "/static/x?region=asia",
            "-H",
            "user-agent: mobile"
        ]),
        stable
    );
    // match[2]: either condition.
    assert_eq!(on(&["-H", "x-group: qa"]), canary);
    assert_eq!(on(&["-H", "x-score: 0.25"]), canary);
    assert_eq!(on(&["-H", "x-score: 0.75"]), stable);
    // match[3]: not (GET and a /static/ path).
    assert_eq!(on(&["--method", "POST"]), canary);
    assert_eq!(on(&["--path", "/api/items"]), canary);
    assert_eq!(on(&[]), stable);
    // rules[1]: the form body's plan.
    let form = "content-type: application/x-www-form-urlencoded";
    assert_eq!(on(&["-H", form, "--body", "plan=pro"]), canary);
    assert_eq!(on(&["-H", form, "--body", "plan=free"]), stable);
    assert_eq!(on(&["-H", "content-type: application/json", "--body", "plan=pro"]), stable);
}

#[test]
fn apisix_input_that_is_no_route_is_a_usage_error() {
    let imported = import(
        "apisix",
        "no-plugin.json",
        r#"{"uri": "/*", "upstream_id": 1}"#,
        &[],
    );
    assert_eq!(imported.code, 2);
    assert!(
        imported
            .stderr
            .contains("the route has no plugins.traffic-split"),
        "{}",
        imported.stderr
    );
}

/// An Ingress routing `host` and `path` (pathType Prefix) to `service` on
/// `port`, with these annotations, as ingress-nginx's documentation writes
/// them.
fn ingress(
    name: &str,
    namespace: &str,
    annotations: &[(&str, &str)],
    (host, path): (&str, &str),
    (service, port): (&str, u16),
) -> String {
    let mut text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    );
    if !annotations.is_empty() {
        text.push_str("  annotations:\n");
        for (key, value) in annotations {
            text.push_str(&format!(
                "    nginx.ingress.kubernetes.io/{key}: \"{value}\"\n"
            ));
        }
    }
    text.push_str(&format!(
        "spec:\n  ingressClassName: nginx\n  rules:\n    - host: {host}\n      http:\n        paths:\n          - path: {path}\n            pathType: Prefix\n            backend:\n              service:\n                name: {service}\n                port:\n                  number: {port}\n"
    ));
    text
}

/// ingress-nginx: a mainline Ingress and a canary Ingress with a header, a
/// cookie and a weight, as its documentation combines them.
fn nginx_canary(path: &str, extra: &[(&str, &str)]) -> String {
    let route = ("canary.example.com", path);
    let mut annotations = vec![
        ("canary", "true"),
        ("canary-by-header", "Region"),
        ("canary-by-cookie", "user_from_cd"),
        ("canary-weight", "20"),
    ];
    annotations.extend_from_slice(extra);
    format!(
        "{}---\n{}",
        ingress("demo", "shop", &[], route, ("production", 80)),
        ingress("demo-canary", "shop", &annotations, route, ("canary", 80))
    )
}

#[test]
fn ingress_nginx_header_then_cookie_then_weight() {
    let imported = import("ingress-nginx", "canary.yaml", &nginx_canary("/", &[]), &[]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    let host = ["--host", "canary.example.com"];
    let on = |args: &[&str]| {
        let mut all = host.to_vec();
        all.extend_from_slice(args);
        imported.share("canary", &all)
    };
    assert_eq!(on(&["-H", "Region: always"]), 100.0);
    assert_eq!(
        on(&["-H", "Region: always", "--cookie", "user_from_cd=never"]),
        100.0
    );
    assert_eq!(
        on(&["-H", "Region: never", "--cookie", "user_from_cd=always"]),
        0.0
    );
    assert_eq!(on(&["--cookie", "user_from_cd=always"]), 100.0);
    assert_eq!(
        on(&["-H", "Region: us", "--cookie", "user_from_cd=always"]),
        100.0
    );
    assert_eq!(on(&["--cookie", "user_from_cd=never"]), 0.0);
    for args in [
        &[][..],
        &["-H", "Region: us"],
        &["--cookie", "user_from_cd=maybe"],
    ] {
        let share = on(args);
        assert!((19.0..=21.0).contains(&share), "{args:?}: {share}");
    }
    // The cluster names follow the backends.
    let run = graylane(&["check", imported.document.to_str().unwrap()]);
    assert!(
        run.stdout
            .contains("mainline -> production.shop.svc:80 (default)")
            && run.stdout.contains("canary -> canary.shop.svc:80"),
        "{}",
        run.stdout
    );
}

/// A header value (the pattern beside it is ignored, as nginx does) and a
/// weight out of a total of 200.
fn nginx_header_value() -> String {
    let route = ("api.example.com", "/v1/");
    let annotations = [
        ("canary", "true"),
        ("canary-by-header", "X-Canary"),
        ("canary-by-header-value", "v2"),
        ("canary-by-header-pattern", "^v[0-9]$"),
        ("canary-weight", "50"),
        ("canary-weight-total", "200"),
    ];
    format!(
        "{}---\n{}",
        ingress("api", "default", &[], route, ("api-v1", 8080)),
        ingress(
            "api-canary",
            "default",
            &annotations,
            route,
            ("api-v2", 8080)
        )
    )
}

#[test]
fn ingress_nginx_header_value_and_weight_total() {
    let imported = import("ingress-nginx", "value.yaml", &nginx_header_value(), &[]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    let on = |args: &[&str]| {
        let mut all = vec!["--host", "api.example.com", "--path", "/v1/items"];
        all.extend_from_slice(args);
        imported.share("canary", &all)
    };
    assert_eq!(on(&["-H", "X-Canary: v2"]), 100.0);
    for args in [
        &[][..],
        &["-H", "X-Canary: v3"],
        &["-H", "X-Canary: never"],
        &["-H", "X-Canary: always"],
    ] {
        let share = on(args);
        assert!((24.0..=26.0).contains(&share), "{args:?}: {share}");
    }
    assert!(imported
        .stderr
        .contains("canary-by-header-pattern is ignored beside canary-by-header-value"));
}

#[test]
fn ingress_nginx_lists_what_it_cannot_say() {
    let text = nginx_canary("/shop", &[("affinity-canary-behavior", "sticky")]);
    let imported = import("ingress-nginx", "affinity.yaml", &text, &[]);
    assert_eq!(imported.code, 1, "{}", imported.stderr);
    assert_eq!(
        imported.losses(),
        [
            "demo: path /shop (Prefix) takes /shop/… but not /shopx in nginx; graylane's path_prefix takes both",
            "demo-canary: path /shop (Prefix) takes /shop/… but not /shopx in nginx; graylane's path_prefix takes both",
            "the canary's annotation nginx.ingress.kubernetes.io/affinity-canary-behavior",
        ]
    );
    let lossy = import("ingress-nginx", "affinity.yaml", &text, &["--lossy"]);
    assert_eq!(lossy.code, 0);
}

#[test]
fn ingress_nginx_needs_a_mainline_and_a_canary() {
    let whole = nginx_canary("/", &[]);
    let mainline_only = whole.split("---").next().unwrap();
    let imported = import("ingress-nginx", "mainline.yaml", mainline_only, &[]);
    assert_eq!(imported.code, 2);
    assert!(
        imported
            .stderr
            .contains("expected at most one mainline Ingress and one canary Ingress"),
        "{}",
        imported.stderr
    );
}

/// nginx merges a canary only into a mainline location of the same host
/// and path; a canary without one is dropped and nginx's default backend
/// answers 404, whatever the header: the import answers 404 there too.
#[test]
fn ingress_nginx_canary_without_mainline_answers_404() {
    let annotations = [("canary", "true"), ("canary-by-header", "Region"), ("canary-weight", "50")];
    let text = format!(
        "{}---\n{}",
        ingress("demo", "shop", &[], ("shop.example.com", "/"), ("production", 80)),
        ingress("demo-canary", "shop", &annotations, ("beta.example.com", "/"), ("canary", 80))
    );
    // The mainline's host without a canary is left out (a loss of its own).
    let imported = import("ingress-nginx", "unmerged.yaml", &text, &["--lossy"]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(imported.stderr.contains("host beta.example.com path /: no mainline backend"), "{}", imported.stderr);
    let reply = |args: &[&str]| {
        let mut all = vec!["explain", imported.document.to_str().unwrap(), "--json"];
        all.extend_from_slice(args);
        let run = graylane(&all);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let outcome: Value = serde_json::from_str(&run.stdout).unwrap();
        (outcome["cluster"].as_str().map(str::to_string), outcome["reply"].as_u64())
    };
    for header in ["Region: always", "Region: us"] {
        assert_eq!(reply(&["--host", "beta.example.com", "-H", header]), (None, Some(404)));
    }
    assert_eq!(reply(&["--host", "shop.example.com"]), (None, None));
    assert_eq!(imported.share("(unclaimed: 404)", &["--host", "beta.example.com"]), 100.0);

    // With no mainline Ingress at all, every canary path is answered 404.
    let canary_only = text.split("---").nth(1).unwrap();
    let alone = import("ingress-nginx", "canary-only.yaml", canary_only, &[]);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    assert_eq!(alone.share("(unclaimed: 404)", &["--host", "beta.example.com", "-H", "Region: always"]), 100.0);
}
