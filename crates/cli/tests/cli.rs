//! The `graylane` command: every subcommand, its output and exit codes.
// Tests may unwrap and panic, helpers included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use graylane_cli::document;
use graylane_cli::request::{borrow_pairs, decide_spec, outcome_json, RequestSpec};
use graylane_core::decision::decide;
use graylane_core::request::{ip_of_socket_address, parse_header_map, serialise_header_map, Request};
use graylane_core::split::WeylSequence;
use serde_json::Value;

mod common;

use common::{graylane, repo_root};

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The 1-based line and column where `needle` first occurs on the line
/// holding `line_marker`, found in the text independently of the tool.
fn position(text: &str, line_marker: &str, needle: &str) -> (usize, usize) {
    for (number, line) in text.lines().enumerate() {
        if line.contains(line_marker) {
            let byte = line.find(needle).expect("needle on the marked line");
            return (number + 1, line[..byte].chars().count() + 1);
        }
    }
    panic!("no line holds {line_marker:?}");
}

const BAD_JSON: &str = r#"{
  "services": [
    {
      "name": "bservice",
      "default": "stabel",
      "subsets": [
        { "name": "stable", "cluster": "bservice-stable" },
        {
          "name": "canary",
          "wieght": 5,
          "weight": 150,
          "match": [ { "headers": [ { "name": "userid", "exactly": "123" } ] } ]
        }
      ]
    }
  ]
}
"#;

const BAD_YAML: &str = r#"# a broken rule document
services:
  - name: bservice
    default: stabel
    subsets:
      - name: stable
        cluster: bservice-stable
      - name: canary
        wieght: 5
        weight: 150
        match:
          - headers:
              - {name: userid, exactly: "123"}
"#;

/// Each refusal the bad documents must give: path, reason fragment, and the
/// (marker, needle) that finds its line and column in the text.
const EXPECTED_REFUSALS: &[(&str, &str, &str, &str)] = &[
    (
        "services[0].default",
        "names no subset of this service: \"stabel\"",
        "stabel",
        "default",
    ),
    (
        "services[0].subsets[1].wieght",
        "unknown field; expected one of:",
        "wieght",
        "wieght",
    ),
    (
        "services[0].subsets[1].weight",
        "must be between 0 and 100 (percent), got 150",
        "150",
        "weight",
    ),
    (
        "services[0].subsets[1].match[0].headers[0].exactly",
        "unknown string-match kind",
        "exactly",
        "exactly",
    ),
];

/// `quoted`: JSON keys are located at their opening quote.
fn assert_refusals(file: &Path, text: &str, quoted: bool, missing_cluster_at: (usize, usize)) {
    let run = graylane(&["check", file.to_str().unwrap()]);
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    let shown = file.display().to_string();
    for (path, reason, marker, needle) in EXPECTED_REFUSALS {
        let needle = if quoted {
            format!("\"{needle}\"")
        } else {
            needle.to_string()
        };
        let (line, column) = position(text, marker, &needle);
        let prefix = format!("{shown}:{line}:{column}: {path}: ");
        let found = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line starts with {prefix:?} in:\n{}", run.stderr));
        assert!(found.contains(reason), "{found:?} lacks {reason:?}");
    }
    // A missing field is placed at the object that misses it.
    let (line, column) = missing_cluster_at;
    assert!(
        run.stderr.contains(&format!(
            "{shown}:{line}:{column}: services[0].subsets[1].cluster: is required"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), EXPECTED_REFUSALS.len() + 1);
}

#[test]
fn check_refuses_a_json_document_with_paths_reasons_lines_and_columns() {
    let file = scratch("bad.json", BAD_JSON);
    // The second subset's object opens with `{` on line 8, column 9.
    assert_refusals(&file, BAD_JSON, true, (8, 9));
}

#[test]
fn check_refuses_a_yaml_document_with_paths_reasons_lines_and_columns() {
    let file = scratch("bad.yaml", BAD_YAML);
    // The second subset's mapping begins at its first key, line 8 column 9.
    assert_refusals(&file, BAD_YAML, false, (8, 9));
}

#[test]
fn check_detects_yaml_by_content_and_json_by_content() {
    let yaml = scratch("bad-yaml-no-extension", BAD_YAML);
    let run = graylane(&["check", yaml.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(":10:9: services[0].subsets[1].weight"));
    let json = scratch("bad-json-no-extension", BAD_JSON);
    let run = graylane(&["check", json.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(":11:11: services[0].subsets[1].weight"));
}

/// `check` takes a document through the plugin's own entry point: what
/// the gateway would refuse in `source` or `apisix_mode`, it refuses too.
#[test]
fn check_refuses_what_the_plugin_refuses_beside_the_rules() {
    let text = "{\n  \"apisix_mode\": \"yes\",\n  \"source\": {\"format\": \"etcd\", \"cluster\": \"etcd\",\n             \"key\": \"/k\", \"interval_ms\": 5},\n  \"services\": []\n}\n";
    let file = scratch("bad-source.json", text);
    let run = graylane(&["check", file.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("bad-source.json:2:3: apisix_mode: must be true or false, got a string"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("bad-source.json:4:27: source.interval_ms: must be an integer from 100 to 3600000, got 5"),
        "{}",
        run.stderr
    );
}

/// Push needs what APISIX's host lacks: `check` says so where it is written.
#[test]
fn check_refuses_push_in_apisix_mode() {
    let text = "{\n  \"apisix_mode\": true,\n  \"source\": {\"cluster\": \"cp:80\", \"path\": \"/r\",\n             \"mode\": \"push\"},\n  \"services\": []\n}\n";
    let file = scratch("apisix-push.json", text);
    let run = graylane(&["check", file.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "apisix-push.json:4:14: source.mode: \"push\" is not possible with apisix_mode"
        ),
        "{}",
        run.stderr
    );
    let polled = scratch("apisix-poll.json", &text.replace("push", "poll"));
    assert_eq!(graylane(&["check", polled.to_str().unwrap()]).code, 0);
}

#[test]
fn check_reports_syntax_errors_where_they_are() {
    let json = scratch(
        "syntax.json",
        "{\"services\": [\n  {\"name\": \"x\",}\n]}\n",
    );
    let run = graylane(&["check", json.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("syntax.json:2:16: $: not valid JSON: trailing comma"),
        "{}",
        run.stderr
    );
    let yaml = scratch("syntax.yaml", "services:\n  - name: x\n   bad: [\n");
    let run = graylane(&["check", yaml.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("syntax.yaml:3:7: $: not valid YAML: while parsing a block collection, did not find expected '-' indicator at line 3 column 7"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_accepts_the_examples_and_the_test_rules() {
    for file in [
        "filters/examples/canary.json",
        "filters/examples/bluegreen.yaml",
        "filters/examples/two-services.yaml",
        "tests/data/rules.json",
    ] {
        let run = graylane(&["check", file]);
        assert_eq!(run.code, 0, "{file}: {}", run.stderr);
        assert!(
            run.stdout.starts_with(&format!("{file}: ok")),
            "{}",
            run.stdout
        );
        assert_eq!(run.stderr, "");
    }
    let run = graylane(&["check", "filters/examples/canary.json"]);
    assert!(run
        .stdout
        .contains("bservice: stable -> bservice-stable (default) 95.00%; canary -> bservice-canary 5.00%, 5 match entries"));
    let quiet = graylane(&["check", "--quiet", "filters/examples/canary.json"]);
    assert_eq!((quiet.code, quiet.stdout.as_str()), (0, ""));
}

#[test]
fn exit_codes_for_usage_errors_and_help() {
    let missing = graylane(&["check", "no/such/file.json"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("no/such/file.json: cannot read"));
    assert_eq!(graylane(&["check"]).code, 2);
    assert_eq!(graylane(&["frobnicate"]).code, 2);
    assert_eq!(
        graylane(&["explain", "tests/data/rules.json", "-H", "no colon"]).code,
        2
    );
    assert_eq!(
        graylane(&["simulate", "tests/data/rules.json", "--user-key", "x"]).code,
        2
    );
    let help = graylane(&["--help"]);
    assert_eq!(help.code, 0);
    for command in ["check", "explain", "simulate", "envoy"] {
        assert!(help.stdout.contains(command), "{}", help.stdout);
        let sub = graylane(&[command, "--help"]);
        assert_eq!(sub.code, 0, "{command}");
        assert!(sub.stdout.contains("Usage: graylane"), "{}", sub.stdout);
    }
    // A refused document is exit 1 for every command that reads one.
    let bad = scratch("bad-for-commands.json", BAD_JSON);
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["explain", bad],
        vec!["simulate", bad],
        vec!["envoy", bad],
    ] {
        let run = graylane(&args);
        assert_eq!(run.code, 1, "{args:?}");
        assert!(run.stderr.contains("services[0].subsets[1].weight"));
    }
}

fn explain(args: &[&str]) -> String {
    let mut all = vec!["explain", "tests/data/rules.json"];
    all.extend_from_slice(args);
    let run = graylane(&all);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

/// `explain` for a request to b.example.com at `path`.
fn explain_b(path: &str, extra: &[&str]) -> String {
    let mut args = vec!["--host", "b.example.com", "--path", path];
    args.extend_from_slice(extra);
    explain(&args)
}

fn field<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label).filter(|_| l.len() > 9).map(str::trim))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"))
}

/// The entries the decision tried before it settled, each with the
/// condition that failed: what the decision itself reported, not a re-run.
#[test]
fn explain_names_the_condition_each_tried_entry_failed_on() {
    let report = explain_b("/api/b/items", &["--cookie", "beta=2", "-H", "userid: 42"]);
    let tried: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("tried"))
        .take_while(|l| !l.starts_with("buckets"))
        .map(|l| l.get(9..).unwrap_or_default())
        .collect();
    assert!(
        tried.contains(&"services[0].subsets[1].match[0]: header userid exact \"123\" did not hold"),
        "{report}"
    );
    assert!(
        tried.contains(&"services[0].subsets[1].match[2]: cookie beta exact \"1\" did not hold"),
        "{report}"
    );
    // An entry that held ends the list: nothing after it was tried.
    let report = explain_b("/api/b/items", &["--cookie", "beta=1"]);
    assert_eq!(field(&report, "subset"), "canary (services[0].subsets[1])");
    assert!(!report.contains("match[2]: cookie"), "{report}");
    assert!(!report.contains("match[3]"), "{report}");
}

#[test]
fn explain_a_tag() {
    let report = explain_b("/api/b/items", &["-H", "x-gray-tag: canary"]);
    assert_eq!(field(&report, "service"), "bservice (services[0])");
    assert_eq!(field(&report, "subset"), "canary (services[0].subsets[1])");
    assert_eq!(field(&report, "cluster"), "bservice-canary");
    assert_eq!(
        field(&report, "headers"),
        "set x-graylane-cluster: bservice-canary"
    );
    assert_eq!(
        field(&report, "why"),
        "tag: the request's x-gray-tag is \"canary\", the tag of subset canary"
    );
}

#[test]
fn explain_a_match_entry_and_its_conditions() {
    let report = explain_b("/api/b/preview/x", &["--method", "HEAD"]);
    assert_eq!(field(&report, "subset"), "canary (services[0].subsets[1])");
    assert_eq!(
        field(&report, "why"),
        "match: services[0].subsets[1].match[3] held: path prefix \"/api/b/preview\" and method GET or HEAD"
    );
    assert!(
        report.contains("         set x-gray-tag: canary\n"),
        "{report}"
    );
    let cookie = explain_b("/api/b", &["--cookie", "beta=1"]);
    assert_eq!(
        field(&cookie, "why"),
        "match: services[0].subsets[1].match[2] held: cookie beta exact \"1\""
    );
}

#[test]
fn explain_a_sticky_weight_bucket_and_its_range() {
    // u34 hashes to bucket 89 of bservice (tests/data/requests.jsonl).
    let canary = explain_b("/api/b/items", &["-H", "userid: u34"]);
    assert_eq!(field(&canary, "subset"), "canary (services[0].subsets[1])");
    let why = field(&canary, "why");
    assert!(why.starts_with("weight, sticky:"), "{why}");
    assert!(why.contains("(header userid) is \"u34\""), "{why}");
    assert!(
        why.contains("bucket 89 of 10000; buckets 0-499 belong to canary"),
        "{why}"
    );
    assert!(
        canary.contains("buckets      0-499   canary 5.00%\n"),
        "{canary}"
    );
    assert!(
        canary.contains("           500-9999  stable 95.00% (default: the rest)\n"),
        "{canary}"
    );
    // User 42: bucket 2503, the default's range.
    let stable = explain_b("/api/b/items", &["-H", "userid: 42"]);
    assert_eq!(
        field(&stable, "subset"),
        "stable (services[0].subsets[0], the default)"
    );
    assert!(
        field(&stable, "why").contains("bucket 2503 of 10000; buckets 500-9999 belong to stable")
    );
}

#[test]
fn explain_an_unsticky_split_gives_the_probabilities() {
    let report = explain_b("/api/b/items", &[]);
    assert_eq!(
        field(&report, "subset"),
        "depends on the worker's sequence: stable 95.00%, canary 5.00%"
    );
    assert!(report.contains(
        "outcomes  95.00%  stable -> cluster bservice-stable; headers: set x-graylane-cluster: bservice-stable\n"
    ), "{report}");
    assert!(report.contains(
        "           5.00%  canary -> cluster bservice-canary; headers: set x-graylane-cluster: bservice-canary, set x-gray-tag: canary\n"
    ), "{report}");
    assert!(field(&report, "why").contains("the request has no sticky key (header userid)"));
}

#[test]
fn explain_the_default_and_no_service() {
    let report = explain(&[
        "--host",
        "shop.example.com",
        "-H",
        "x-graylane-cluster: shop-blue",
    ]);
    assert_eq!(
        field(&report, "subset"),
        "green (services[1].subsets[0], the default)"
    );
    assert!(
        report.contains(
            "headers  remove x-graylane-cluster\n         set x-graylane-cluster: shop-green\n"
        ),
        "{report}"
    );
    assert_eq!(
        field(&report, "why"),
        "default: no tag, no match entry, and no subset has a weight, so green takes it"
    );
    assert!(!report.contains("buckets"));

    let nobody = explain(&["--host", "nobody.example.org"]);
    assert_eq!(field(&nobody, "service"), "none");
    assert!(field(&nobody, "why")
        .starts_with("no service's hosts and path_prefix fit host \"nobody.example.org\""));
}

#[test]
fn explain_json_is_the_expect_form() {
    let run = graylane(&[
        "explain",
        "tests/data/rules.json",
        "--json",
        "--host",
        "web.example.com",
        "--cookie",
        "session=s1",
    ]);
    assert_eq!(run.code, 0);
    let outcome: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(outcome["subset"], "canary");
    assert_eq!(outcome["reason"], "weight");
    assert_eq!(outcome["bucket"], 338);
    assert_eq!(outcome["sticky"], true);

    // A source address with a port is the same sticky key as the bare IP,
    // as the plugin reduces Envoy's `source.address`.
    let bucket = |address: &str| {
        let run = graylane(&[
            "explain",
            "tests/data/rules.json",
            "--json",
            "--host",
            "edge.example.com",
            "--source-ip",
            address,
        ]);
        let outcome: Value = serde_json::from_str(&run.stdout).unwrap();
        outcome["bucket"].clone()
    };
    assert_eq!(bucket("127.0.0.3"), 6358);
    assert_eq!(bucket("127.0.0.3:5555"), 6358);
    assert_eq!(bucket("[::1]:443"), bucket("::1"));
    assert_ne!(bucket("127.0.0.2"), bucket("127.0.0.3"));
}

fn simulate_json(args: &[&str]) -> Value {
    let mut all = vec!["simulate", "--json"];
    all.extend_from_slice(args);
    let run = graylane(&all);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

fn requests_of(split: &Value, subset: &str) -> u64 {
    split["split"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["subset"] == subset)
        .map_or(0, |row| row["requests"].as_u64().unwrap())
}

#[test]
fn simulate_five_percent_of_ten_thousand_sticky_users() {
    let split = simulate_json(&[
        "filters/examples/canary.json",
        "--host",
        "b.example.com",
        "--path",
        "/api/b",
        "--users",
        "10000",
    ]);
    assert_eq!(split["requests"], 10000);
    assert_eq!(split["unsticky"], 0);
    let canary = requests_of(&split, "bservice/canary");
    assert!((400..=600).contains(&canary), "canary got {canary}");
    assert_eq!(requests_of(&split, "bservice/stable"), 10000 - canary);
    // The same users again: the same split, user by user.
    let again = simulate_json(&[
        "filters/examples/canary.json",
        "--host",
        "b.example.com",
        "--path",
        "/api/b",
        "--users",
        "10000",
        "--seed",
        "99",
    ]);
    assert_eq!(requests_of(&again, "bservice/canary"), canary);
}

#[test]
fn simulate_without_a_sticky_key_is_within_a_point() {
    let split = simulate_json(&[
        "filters/examples/two-services.yaml",
        "--host",
        "api.example.com",
        "--path",
        "/v2/orders",
        "-n",
        "10000",
        "--seed",
        "7",
    ]);
    assert_eq!(split["unsticky"], 10000);
    let canary = requests_of(&split, "api/canary");
    let experiment = requests_of(&split, "api/experiment");
    assert!((900..=1100).contains(&canary), "{canary}");
    assert!((0..=200).contains(&experiment), "{experiment}");
    assert_eq!(
        canary + experiment + requests_of(&split, "api/stable"),
        10000
    );
}

#[test]
fn simulate_prints_a_table_with_bars() {
    let run = graylane(&[
        "simulate",
        "filters/examples/canary.json",
        "--host",
        "b.example.com",
        "--path",
        "/api/b",
        "--users",
        "1000",
    ]);
    assert_eq!(run.code, 0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("subset "), "{}", run.stdout);
    assert!(lines[1].starts_with("bservice/stable  bservice-stable"));
    assert!(lines[1].contains("%  ####"), "{}", lines[1]);
    assert!(lines[2].starts_with("bservice/canary  bservice-canary"));
    assert_eq!(lines[3], "1000 requests");
}

#[test]
fn simulate_replays_a_requests_file() {
    let split = simulate_json(&[
        "tests/data/rules.json",
        "--requests",
        "tests/data/requests.jsonl",
    ]);
    let table = requests_table();
    assert_eq!(split["requests"], table.len());
    for (service, subset) in [("bservice", "canary"), ("shop", "blue"), ("web", "stable")] {
        let want = table
            .iter()
            .filter(|(_, expect)| expect["service"] == service && expect["subset"] == subset)
            .count() as u64;
        assert_eq!(requests_of(&split, &format!("{service}/{subset}")), want);
    }
    let nobody = table.iter().filter(|(_, e)| e["service"].is_null()).count() as u64;
    assert_eq!(requests_of(&split, "(no service)"), nobody);
}

fn with_weight(weight: &str) -> PathBuf {
    let text = std::fs::read_to_string(
        repo_root().join("filters/examples/canary.json"),
    )
    .unwrap();
    let changed = text.replace("\"weight\": 5,", &format!("\"weight\": {weight},"));
    assert_ne!(text, changed);
    scratch(&format!("canary-{weight}.json"), &changed)
}

#[test]
fn compare_raising_five_to_twenty_moves_fifteen_percent_and_none_out_of_canary() {
    let new = with_weight("20");
    let comparison = simulate_json(&[
        "--compare",
        "filters/examples/canary.json",
        new.to_str().unwrap(),
        "--host",
        "b.example.com",
        "--path",
        "/api/b",
        "--users",
        "10000",
    ]);
    let cells = comparison["cells"].as_array().unwrap();
    let cell = |from: &str, to: &str| {
        cells
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .map_or(0, |c| c["requests"].as_u64().unwrap())
    };
    let moved = comparison["moved"].as_u64().unwrap();
    assert!((1400..=1600).contains(&moved), "moved {moved}");
    assert_eq!(cell("bservice/stable", "bservice/canary"), moved);
    assert_eq!(cell("bservice/canary", "bservice/stable"), 0);
    assert!(cell("bservice/canary", "bservice/canary") > 0);
    assert_eq!(comparison["unsticky"], 0);

    // Lowering it again moves the same users back, and only them.
    let back = simulate_json(&[
        "--compare",
        new.to_str().unwrap(),
        "filters/examples/canary.json",
        "--host",
        "b.example.com",
        "--path",
        "/api/b",
        "--users",
        "10000",
    ]);
    assert_eq!(back["moved"].as_u64().unwrap(), moved);

    let table = graylane(&[
        "simulate",
        "--compare",
        "filters/examples/canary.json",
        new.to_str().unwrap(),
        "--host",
        "b.example.com",
        "--path",
        "/api/b",
        "--users",
        "10000",
    ]);
    assert!(table.stdout.starts_with(&format!(
        "{moved} of 10000 requests move ({:.2}%)\n",
        moved as f64 / 100.0
    )));
    assert!(table
        .stdout
        .contains(&format!("bservice/stable -> bservice/canary: {moved} ")));
}

// ---------------------------------------------------------------------------
// The requests table shared with the end-to-end harness.

fn requests_table() -> Vec<(RequestSpec, Value)> {
    let text = std::fs::read_to_string(
        repo_root().join("tests/data/requests.jsonl"),
    )
    .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            let spec = RequestSpec::from_json_line(line).unwrap();
            (spec, value["expect"].clone())
        })
        .collect()
}

#[test]
fn the_cli_request_construction_decides_as_the_plugin_path_does() {
    let document =
        document::load(&repo_root().join("tests/data/rules.json"))
            .unwrap();
    let rules = &document.rules;
    let table = requests_table();
    assert!(table.len() >= 15, "{} cases", table.len());
    let reasons: std::collections::BTreeSet<String> = table
        .iter()
        .map(|(_, e)| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        ["default", "match", "none", "tag", "weight"]
    );
    for (spec, expect) in &table {
        // The CLI's path.
        let cli = decide_spec(rules, spec, &mut WeylSequence::new(0));
        // The plugin's path: the header map as the host hands it over,
        // parsed by the plugin's parser.
        let owned = spec.header_pairs();
        let buffer = serialise_header_map(&borrow_pairs(&owned)).unwrap();
        let pairs = parse_header_map(&buffer).expect("a well-formed map");
        assert_eq!(pairs, borrow_pairs(&owned));
        // Envoy reports `source.address` with the client's port.
        let source_address = spec.source_ip.as_ref().map(|ip| format!("{ip}:40000"));
        let request = Request::new(&pairs).with_source_ip(
            source_address
                .as_deref()
                .map(|address| ip_of_socket_address(address.as_bytes())),
        );
        let plugin = decide(rules, &request, &mut WeylSequence::new(12345));
        assert_eq!(cli, plugin, "{}", spec.summary());
        assert_eq!(
            &outcome_json(rules, spec, &plugin),
            expect,
            "{}",
            spec.summary()
        );
    }
}

#[test]
fn simulate_without_a_request_sends_each_service_its_own_requests() {
    let run = graylane(&["simulate", "filters/examples/two-services.yaml", "--users", "1000"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("no request described"),
        "{}",
        run.stdout
    );
    for service in ["api/stable", "api/canary", "web/stable", "web/canary"] {
        assert!(run.stdout.contains(service), "{service}: {}", run.stdout);
    }
    assert!(run.stdout.contains("2000 requests"), "{}", run.stdout);
    assert!(!run.stdout.contains("(no service)"), "{}", run.stdout);
}

#[test]
fn simulate_where_no_request_reaches_a_service_says_so_and_fails() {
    let run = graylane(&["simulate", "filters/examples/canary.json", "--host", "nope.example"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("no request reaches a service"), "{}", run.stderr);
    let run = graylane(&[
        "simulate",
        "--compare",
        "filters/examples/canary.json",
        "filters/examples/canary.json",
        "--host",
        "nope.example",
    ]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("no request reaches a service"), "{}", run.stderr);
}
