//! `check`, `explain` and `simulate` on rules with a split, comparisons,
//! `in`, `invert`, `not`, a service scoped by header and headers set per
//! subset (issue 19).
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

/// Users of service "main" by sticky bucket: user-16 is bucket 210, user-1
/// bucket 2047, user-0 bucket 3812.
const RULES: &str = r#"{
  "services": [
    { "name": "gated", "hosts": ["x.example.com"], "default": "beta",
      "headers": [ { "name": "x-env", "exact": "beta" }, { "name": "x-block", "present": true, "invert": true } ],
      "subsets": [ { "name": "beta", "cluster": "gated-beta", "set_headers": { "x-lane": "base" } } ] },
    { "name": "main", "hosts": ["x.example.com"], "default": "stable", "sticky": { "header": "userid" },
      "subsets": [
        { "name": "stable", "cluster": "main-stable", "set_headers": { "x-lane": "base" } },
        { "name": "numbers", "cluster": "c-num", "match": [ { "headers": [ { "name": "x-version", "gt": 5 }, { "name": "x-version", "le": 10.5 } ] } ] },
        { "name": "listed", "cluster": "c-in", "match": [ { "headers": [ { "name": "x-region", "in": ["eu-2", "eu-1"] } ] } ] },
        { "name": "inverted", "cluster": "c-inv", "match": [ { "path": { "prefix": "/inv" }, "headers": [ { "name": "x-team", "exact": "core", "invert": true } ] } ] },
        { "name": "negated", "cluster": "c-not", "match": [ { "headers": [ { "name": "x-not-test", "present": true } ],
            "not": { "headers": [ { "name": "x-a", "exact": "1" } ], "cookies": [ { "name": "b", "exact": "2" } ] } } ] },
        { "name": "canary", "cluster": "c-canary", "weight": 10, "set_headers": { "x-lane": "canary" } }
      ],
      "rules": [
        { "match": [ { "headers": [ { "name": "x-app", "exact": "mobile" } ] } ], "split": [ { "subset": "canary", "weight": 30 } ] },
        { "match": [ { "headers": [ { "name": "x-app", "exact": "pinned" } ] } ], "split": [] }
      ]
    }
  ]
}"#;

fn scratch(name: &str, text: &str) -> PathBuf {
    common::scratch_in("expressive-tests", name, text)
}

fn run_ok(args: &[&str]) -> String {
    let run = graylane(args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

fn explain(args: &[&str]) -> String {
    // Written once: tests run in parallel and must not read it half-written.
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| scratch("rules.json", RULES));
    let mut all = vec!["explain", file.to_str().unwrap(), "--host", "x.example.com"];
    all.extend_from_slice(args);
    run_ok(&all)
}

/// The lines of a report's `label` field and its continuation lines.
fn section<'a>(report: &'a str, label: &str) -> Vec<&'a str> {
    let mut lines = report.lines().skip_while(|l| !l.starts_with(label));
    let first = lines
        .next()
        .map(|l| l.get(9..).unwrap_or_default().trim_end());
    first
        .into_iter()
        .chain(
            lines
                .take_while(|l| l.starts_with("         "))
                .map(|l| l.get(9..).unwrap_or_default().trim_end()),
        )
        .collect()
}

#[test]
fn check_lists_service_headers_and_rules() {
    let file = scratch("check.json", RULES);
    let out = run_ok(&["check", file.to_str().unwrap()]);
    assert!(
        out.contains("    headers: header x-env exact \"beta\" and not header x-block present\n"),
        "{out}"
    );
    assert!(
        out.contains("    rules[0]: 1 match entry -> canary 30.00%, stable the rest\n"),
        "{out}"
    );
    assert!(
        out.contains("    rules[1]: 1 match entry -> stable the rest\n"),
        "{out}"
    );
}

#[test]
fn explain_a_rule_with_a_sticky_split() {
    let report = explain(&["-H", "x-app: mobile", "-H", "userid: user-1"]);
    assert_eq!(
        section(&report, "subset"),
        ["canary (services[1].subsets[5])"]
    );
    assert_eq!(
        section(&report, "headers"),
        [
            "set x-graylane-cluster: c-canary",
            "set x-gray-tag: canary",
            "set x-lane: canary"
        ]
    );
    let why = section(&report, "why");
    assert_eq!(
        why[0],
        "rule: services[1].rules[0].match[0] held: header x-app exact \"mobile\"; its split decides (the rest goes to the default)"
    );
    assert!(
        why[2].starts_with("rule split, sticky: the sticky key (header userid) is \"user-1\", which hashes with the service name to bucket 2047 of 10000; buckets 0-2999 belong to canary"),
        "{report}"
    );
    assert_eq!(
        section(&report, "buckets"),
        [
            "    0-2999  canary 30.00%",
            " 3000-9999  stable 70.00% (default: the rest)"
        ]
    );
    // Without the rule's match the service's own 10% leaves this user out.
    let plain = explain(&["-H", "userid: user-1"]);
    assert_eq!(
        section(&plain, "subset"),
        ["stable (services[1].subsets[0], the default)"]
    );
    assert!(section(&plain, "tried")
        .contains(&"services[1].rules[0].match[0]: header x-app exact \"mobile\" did not hold"));
}

#[test]
fn explain_an_unsticky_rule_split_gives_its_probabilities() {
    let report = explain(&["-H", "x-app: mobile"]);
    assert_eq!(
        section(&report, "subset"),
        ["depends on the worker's sequence: stable 70.00%, canary 30.00%"]
    );
    assert!(
        section(&report, "why").iter().any(|l| l
            .starts_with("rule split, not sticky: the request has no sticky key (header userid)")),
        "{report}"
    );
}

#[test]
fn explain_an_empty_split_pins_to_the_default() {
    let report = explain(&["-H", "x-app: pinned", "-H", "userid: user-16"]);
    assert_eq!(
        section(&report, "subset"),
        ["stable (services[1].subsets[0], the default)"]
    );
    assert!(section(&report, "why")
        .contains(&"the rule's split gives nothing to any subset: stable, the default, takes it"));
}

#[test]
fn explain_names_comparisons_lists_inversions_and_not() {
    let report = explain(&[
        "--path",
        "/inv",
        "-H",
        "x-team: core",
        "-H",
        "x-not-test: 1",
        "-H",
        "x-a: 1",
        "--cookie",
        "b=2",
        "-H",
        "x-env: beta",
        "-H",
        "x-block: 1",
        "-H",
        "userid: user-0",
    ]);
    let tried = section(&report, "tried");
    for line in [
        "services[0] (gated): its headers[1], not header x-block present, did not hold",
        "services[1].subsets[1].match[0]: header x-version gt 5 did not hold",
        "services[1].subsets[2].match[0]: header x-region in [\"eu-1\", \"eu-2\"] did not hold",
        "services[1].subsets[3].match[0]: not header x-team exact \"core\" did not hold",
        "services[1].subsets[4].match[0]: not (header x-a exact \"1\" and cookie b exact \"2\") did not hold",
    ] {
        assert!(tried.contains(&line), "{line:?} not in:\n{report}");
    }
    let held = explain(&["-H", "x-version: 7.5", "-H", "userid: user-0"]);
    assert_eq!(
        section(&held, "why")[0],
        "match: services[1].subsets[1].match[0] held: header x-version gt 5 and header x-version le 10.5"
    );
    let scoped = explain(&["-H", "x-env: beta"]);
    assert_eq!(
        section(&scoped, "service"),
        ["gated (services[0]; its headers held: header x-env exact \"beta\" and not header x-block present)"]
    );
    assert_eq!(
        section(&scoped, "headers"),
        ["set x-graylane-cluster: gated-beta", "set x-lane: base"]
    );
}

#[test]
fn explain_json_names_the_rule() {
    let outcome: Value = serde_json::from_str(&explain(&[
        "--json",
        "-H",
        "x-app: mobile",
        "-H",
        "userid: user-1",
    ]))
    .unwrap();
    assert_eq!(outcome["reason"], "rule");
    assert_eq!(outcome["rule"], 0);
    assert_eq!(outcome["entry"], 0);
    assert_eq!(outcome["bucket"], 2047);
    assert_eq!(outcome["sticky"], true);
    assert_eq!(outcome["subset"], "canary");
}

#[test]
fn simulate_a_rule_split_and_raising_its_weight_only_moves_users_in() {
    let old = scratch("old.json", RULES);
    let new = scratch(
        "new.json",
        &RULES.replace(
            r#""subset": "canary", "weight": 30"#,
            r#""subset": "canary", "weight": 50"#,
        ),
    );
    let split: Value = serde_json::from_str(&run_ok(&[
        "simulate",
        old.to_str().unwrap(),
        "--host",
        "x.example.com",
        "-H",
        "x-app: mobile",
        "--users",
        "10000",
        "--json",
    ]))
    .unwrap();
    let canary = split["split"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subset"] == "main/canary")
        .unwrap();
    let percent = canary["percent"].as_f64().unwrap();
    assert!((28.5..=31.5).contains(&percent), "{split}");

    let compared: Value = serde_json::from_str(&run_ok(&[
        "simulate",
        "--compare",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--host",
        "x.example.com",
        "-H",
        "x-app: mobile",
        "--users",
        "10000",
        "--json",
    ]))
    .unwrap();
    for cell in compared["cells"].as_array().unwrap() {
        assert!(
            cell["from"] == cell["to"] || cell["to"] == "main/canary",
            "a user moved out of the canary or elsewhere: {cell}"
        );
    }
    let moved = compared["moved"].as_u64().unwrap();
    assert!((1_700..=2_300).contains(&moved), "{compared}");
}

#[test]
fn simulate_without_a_request_reaches_a_service_scoped_by_header() {
    let file = scratch("per-service.json", RULES);
    let split: Value = serde_json::from_str(&run_ok(&[
        "simulate",
        file.to_str().unwrap(),
        "-n",
        "100",
        "--json",
    ]))
    .unwrap();
    let gated = split["split"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subset"] == "gated/beta")
        .unwrap();
    assert_eq!(gated["requests"], 100, "{split}");
}

#[test]
fn the_published_schema_accepts_the_new_fields() {
    let schema = graylane_cli::schema::document_schema();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let document: Value = serde_json::from_str(RULES).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| e.to_string())
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    let mut wrong = document.clone();
    wrong["services"][1]["rules"][0]["split"][0]["weight"] = serde_json::json!(101);
    assert!(!validator.is_valid(&wrong));
    let mut wrong = document;
    wrong["services"][1]["subsets"][1]["match"][0]["headers"][0]["gt"] = serde_json::json!("5");
    assert!(!validator.is_valid(&wrong));
}
