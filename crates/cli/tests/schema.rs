//! `graylane schema`: the published file is what the command prints; every
//! object of the schema names exactly the fields the plugin's reader knows;
//! every plugin document in the README validates and compiles; wrong
//! documents that `graylane check` refuses are refused by the schema too,
//! where a schema can say it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use graylane_cli::schema::{document_schema, document_schema_text};
use graylane_core::source::configure;
use serde_json::{json, Value};

mod common;

use common::{graylane, repo_root};

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&document_schema()).expect("the schema is a valid 2020-12 schema")
}

#[test]
fn the_published_schema_is_what_the_command_prints() {
    let published = std::fs::read_to_string(repo_root().join("schema/graylane.schema.json")).unwrap();
    let run = graylane(&["schema"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, document_schema_text());
    assert!(
        published == run.stdout,
        "schema/graylane.schema.json is stale: regenerate it with `graylane schema > schema/graylane.schema.json`"
    );
}

/// Where to put an unknown field in a valid document, and the schema object
/// that describes that place.
fn places() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let valid = || {
        json!({
            "services": [{
                "name": "b", "default": "stable", "sticky": {"header": "u"},
                "subsets": [
                    {"name": "stable", "cluster": "s"},
                    {"name": "canary", "cluster": "c",
                     "match": [{"headers": [{"name": "x", "exact": "1"}], "path": {"prefix": "/"}}]}
                ]
            }],
            "limits": {"services": 10},
            "source": {"format": "consul", "cluster": "consul", "path": "/v1/health/service/b",
                       "service": {"name": "b"}}
        })
    };
    let mut places = Vec::new();
    let mut add = |what: &'static str, pointer: &'static str, schema: Vec<&'static str>| {
        let mut document = valid();
        document
            .pointer_mut(pointer)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert("zzz".into(), json!(1));
        places.push((what, document, schema));
    };
    add("root", "", vec![]);
    add("service", "/services/0", vec!["services", "items"]);
    add("subset", "/services/0/subsets/1", vec!["services", "items", "subsets", "items"]);
    add(
        "match entry",
        "/services/0/subsets/1/match/0",
        vec!["services", "items", "subsets", "items", "match", "items"],
    );
    add("limits", "/limits", vec!["limits"]);
    add("source", "/source", vec!["source"]);
    add("registry service", "/source/service", vec!["source", "service"]);
    places
}

fn schema_at<'s>(schema: &'s Value, steps: &[&str]) -> &'s Value {
    steps.iter().fold(schema, |node, step| match *step {
        "items" => &node["items"],
        name => &node["properties"][name],
    })
}

#[test]
fn every_schema_object_names_the_fields_the_reader_knows() {
    let schema = document_schema();
    for (what, document, steps) in places() {
        let errors = configure(document.to_string().as_bytes()).unwrap_err().to_string();
        let listed = errors
            .lines()
            .find_map(|line| line.split("unknown field; expected one of: ").nth(1))
            .unwrap_or_else(|| panic!("{what}: no unknown-field refusal in {errors}"));
        let reader: BTreeSet<&str> = listed.split(", ").collect();
        let object = schema_at(&schema, &steps);
        let properties: BTreeSet<&str> = object["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no properties in the schema at {steps:?}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(properties, reader, "{what}: schema properties vs the reader's fields");
        assert_eq!(object["additionalProperties"], json!(false), "{what}");
        assert!(
            !validator().is_valid(&document),
            "{what}: the schema accepts the unknown field"
        );
    }
    // The string-match kinds, named by the reader's own refusal.
    let document = json!({"services": [{"name": "b", "default": "a", "subsets": [{"name": "a", "cluster": "a",
        "match": [{"path": {"equals": "/"}}]}]}]});
    let errors = configure(document.to_string().as_bytes()).unwrap_err().to_string();
    let listed = errors.split("expected exactly one of: ").nth(1).unwrap().trim();
    let kinds: BTreeSet<&str> = listed.split(", ").collect();
    let path_match = schema_at(
        &schema,
        &["services", "items", "subsets", "items", "match", "items", "path"],
    );
    let properties: BTreeSet<&str> = path_match["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|property| *property != "invert")
        .collect();
    assert_eq!(properties, kinds);
}

/// The JSON code blocks of the README that are plugin documents.
fn readme_documents() -> Vec<Value> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    readme
        .split("```json")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .filter(|value| value.get("services").is_some_and(Value::is_array))
        .collect()
}

#[test]
fn every_readme_document_validates_and_compiles() {
    let documents = readme_documents();
    assert!(documents.len() >= 2, "found {} documents", documents.len());
    let validator = validator();
    for document in documents {
        let problems: Vec<String> = validator.iter_errors(&document).map(|e| e.to_string()).collect();
        assert!(problems.is_empty(), "{document}\n{problems:?}");
        configure(document.to_string().as_bytes()).unwrap();
    }
}

#[test]
fn wrong_documents_are_refused_by_the_schema_and_by_check() {
    let with_subset = |subset: Value| {
        json!({"services": [{"name": "b", "default": "stable",
            "subsets": [{"name": "stable", "cluster": "s"}, subset]}]})
    };
    let corpus = [
        ("no services and no source", json!({"trust_tag": true})),
        ("misspelt field", with_subset(json!({"name": "c", "cluster": "c", "wieght": 5}))),
        ("weight over 100", with_subset(json!({"name": "c", "cluster": "c", "weight": 101}))),
        ("weight as a string", with_subset(json!({"name": "c", "cluster": "c", "weight": "5"}))),
        ("cluster with CR LF", with_subset(json!({"name": "c", "cluster": "c\r\nx: 1"}))),
        ("tag with a space", with_subset(json!({"name": "c", "cluster": "c", "tag": "a b"}))),
        ("two match kinds", with_subset(json!({"name": "c", "cluster": "c",
            "match": [{"path": {"prefix": "/a", "suffix": "b"}}]}))),
        ("empty match entry", with_subset(json!({"name": "c", "cluster": "c", "match": [{}]}))),
        ("bad method", with_subset(json!({"name": "c", "cluster": "c", "match": [{"method": ["GET /"]}]}))),
        ("bluegreen purple", with_subset(json!({"name": "c", "cluster": "c", "bluegreen": "purple"}))),
        ("reserved tag header", json!({"tag_header": "Content-Length", "services": []})),
        ("gateway cluster header", json!({"cluster_header": "x-envoy-upstream", "services": []})),
        ("limit over its ceiling", json!({"limits": {"services": 100_000_000}, "services": []})),
        ("source interval too short", json!({"source": {"cluster": "c", "path": "/r", "interval_ms": 50}})),
        ("unknown source format", json!({"source": {"format": "zookeeper", "cluster": "c", "path": "/r"}})),
        ("unknown source mode", json!({"source": {"cluster": "c", "path": "/r", "mode": "stream"}})),
        ("long-poll wait too short", json!({"source": {"cluster": "c", "path": "/r", "wait_ms": 10}})),
        ("path prefix without slash", json!({"services": [{"name": "b", "path_prefix": "api",
            "default": "a", "subsets": [{"name": "a", "cluster": "a"}]}]})),
        ("sticky with two keys", json!({"services": [{"name": "b", "sticky": {"header": "u", "cookie": "u"},
            "default": "a", "subsets": [{"name": "a", "cluster": "a"}]}]})),
        ("no subsets", json!({"services": [{"name": "b", "default": "a", "subsets": []}]})),
        ("empty allow-list", json!({"allowed_clusters": [], "services": []})),
    ];
    let validator = validator();
    for (what, document) in corpus {
        assert!(
            configure(document.to_string().as_bytes()).is_err(),
            "{what}: check accepts it"
        );
        assert!(!validator.is_valid(&document), "{what}: the schema accepts it");
    }
}
