//! Every YAML and JSON file under filters/ parses (every document of a
//! multi-document file), every graylane document embedded in it compiles with
//! the plugin's compiler, and each recipe's routing names every cluster its
//! graylane document can choose.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

mod common;

use common::repo_root;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

fn filters() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(
        &repo_root().join("filters"),
        &mut files,
    );
    files.sort();
    files
}

/// Every document of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        return vec![serde_json::from_str(&text).unwrap()];
    }
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()))
        })
        .collect()
}

/// A graylane document: an object with a `services` list, given as an
/// object (Envoy Gateway's `config`, Istio's `pluginConfig`, a rule file) or
/// as a string holding JSON (APISIX's `conf`, Envoy's StringValue `value`).
fn embedded_rules(value: &Value, found: &mut Vec<Value>, others: &mut Vec<String>) {
    match value {
        Value::Object(object) if object.get("services").is_some_and(Value::is_array) => {
            found.push(value.clone());
        }
        Value::Object(object) => {
            for item in object.values() {
                embedded_rules(item, found, others);
            }
        }
        Value::Array(items) => {
            for item in items {
                embedded_rules(item, found, others);
            }
        }
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(parsed @ Value::Object(_)) if parsed.get("services").is_some() => {
                found.push(parsed);
            }
            _ => others.push(text.clone()),
        },
        _ => {}
    }
}

/// The recipes whose routing turns the plugin's choice into a backend.
const ROUTING_RECIPES: &[&str] = &[
    "filters/envoy-gateway/graylane.yaml",
    "filters/istio/graylane.yaml",
    "filters/apisix/apisix.yaml",
];

#[test]
fn every_recipe_parses_and_its_rules_compile_and_route() {
    let files = filters();
    let schema = jsonschema::draft202012::new(&graylane_cli::schema::document_schema()).unwrap();
    let mut with_rules = 0;
    for file in &files {
        let name = file
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let mut rules = Vec::new();
        let mut strings = Vec::new();
        for document in documents(file) {
            embedded_rules(&document, &mut rules, &mut strings);
        }
        for document in &rules {
            let bytes = serde_json::to_vec(document).unwrap();
            let compiled = graylane_core::config::compile(&bytes)
                .unwrap_or_else(|e| panic!("{name}: the graylane document is refused: {e}"));
            let problems: Vec<String> = schema
                .iter_errors(document)
                .map(|error| format!("{}: {error}", error.instance_path))
                .collect();
            assert!(problems.is_empty(), "{name}: not valid by graylane schema: {problems:?}");
            // A recipe's routing must name every cluster but the default
            // (which its fallback route takes): as a header match value or
            // a traffic-split var.
            if !ROUTING_RECIPES.iter().any(|recipe| name.ends_with(recipe)) {
                continue;
            }
            for service in &compiled.services {
                for (index, subset) in service.subsets.iter().enumerate() {
                    if index == service.default {
                        continue;
                    }
                    assert!(
                        strings.iter().any(|s| s == &subset.cluster),
                        "{name}: nothing routes the cluster {:?}",
                        subset.cluster
                    );
                }
            }
        }
        with_rules += usize::from(!rules.is_empty());
    }
    // The recipes and examples that must carry rules do.
    for must in [
        "filters/envoy-gateway/graylane.yaml",
        "filters/envoy-gateway/extension-policy-http.yaml",
        "filters/istio/graylane.yaml",
        "filters/apisix/apisix.yaml",
        "filters/examples/canary.json",
        "filters/examples/bluegreen.yaml",
        "filters/examples/two-services.yaml",
    ] {
        let path = repo_root().join(must);
        assert!(files.contains(&path), "{must} is missing");
        let mut rules = Vec::new();
        for document in documents(&path) {
            embedded_rules(&document, &mut rules, &mut Vec::new());
        }
        assert!(!rules.is_empty(), "{must} carries no graylane document");
    }
    assert!(with_rules >= 7, "only {with_rules} files carry rules");
}

#[test]
fn the_scan_finds_rules_in_strings_and_objects_and_refuses_bad_ones() {
    let yaml = "a:\n  conf: '{\"services\": []}'\n---\nb:\n  config:\n    services:\n      - {name: s, default: x, subsets: [{name: y, cluster: c}]}\n";
    let mut found = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        embedded_rules(
            &Value::deserialize(document).unwrap(),
            &mut found,
            &mut Vec::new(),
        );
    }
    assert_eq!(found.len(), 2);
    assert!(graylane_core::config::compile(&serde_json::to_vec(&found[0]).unwrap()).is_ok());
    // The second names a default that is no subset: the check would fail.
    let refused = graylane_core::config::compile(&serde_json::to_vec(&found[1]).unwrap()).unwrap_err();
    assert_eq!(refused.0[0].path.to_string(), "services[0].default");
}

#[test]
fn the_examples_work_with_every_command() {
    for example in [
        "filters/examples/canary.json",
        "filters/examples/bluegreen.yaml",
        "filters/examples/two-services.yaml",
        "filters/examples/etcd-watch.json",
    ] {
        for args in [
            vec!["check", example],
            vec!["explain", example, "--host", "b.example.com"],
            vec!["simulate", example, "--users", "100"],
            vec!["envoy", example],
        ] {
            let run = common::graylane(&args);
            assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
            assert!(!run.stdout.is_empty(), "{args:?}");
        }
    }
}
