//! The plugin in a real Envoy and the `graylane` command answer the same for
//! the same requests: every line of `tests/data/requests.jsonl` goes through
//! Envoy (to the echo backend of the cluster the plugin chose) and through
//! `graylane explain --json`, and both must equal the line's expectation.

// A test may unwrap and index: a failure is what it is there to show.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]



use std::net::IpAddr;

use graylane_cli::request::{OneOrMany, RequestSpec};
use serde_json::Value;
use support::{graylane, repo_root, Client, Gateway, Request};

struct Row {
    name: String,
    spec: RequestSpec,
    expect: Value,
}

fn rows() -> Vec<Row> {
    let text = std::fs::read_to_string(repo_root().join("tests/data/requests.jsonl")).unwrap();
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            Row {
                name: value["_case"].as_str().unwrap_or(line).to_string(),
                spec: RequestSpec::from_json_line(line).unwrap(),
                expect: value["expect"].clone(),
            }
        })
        .collect()
}

/// What the command says, through its own entry point.
fn command_answer(spec: &RequestSpec) -> Value {
    let rules = repo_root().join("tests/data/rules.json");
    let mut args: Vec<String> = vec![
        "explain".into(),
        rules.display().to_string(),
        "--json".into(),
    ];
    if let Some(host) = &spec.host {
        args.extend(["--host".into(), host.clone()]);
    }
    args.extend([
        "--path".into(),
        spec.path_or_root().to_string(),
        "--method".into(),
        spec.method_or_get().to_string(),
    ]);
    for (name, values) in &spec.headers {
        let values = match values {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        };
        for value in values {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
    }
    for (name, value) in &spec.cookies {
        args.extend(["--cookie".into(), format!("{name}={value}")]);
    }
    if let Some(ip) = &spec.source_ip {
        args.extend(["--source-ip".into(), ip.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = graylane(&args);
    assert_eq!(run.code, 0, "graylane explain failed: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// What the plugin did in Envoy: the backend that answered, and the tag it
/// received.
fn plugin_answer(gateway: &Gateway, spec: &RequestSpec) -> (String, Option<String>) {
    let mut request = Request::new(spec.method_or_get(), spec.path_or_root());
    // The pseudo headers become the request line and Host; the rest are sent
    // as the plugin would see them.
    for (name, value) in spec.header_pairs() {
        match name.as_slice() {
            b":authority" => request = request.header_bytes(b"host", &value),
            b":path" | b":method" | b":scheme" => {}
            _ => request = request.header_bytes(&name, &value),
        }
    }
    let mut client = match &spec.source_ip {
        Some(ip) => {
            Client::connect_from(gateway.envoy.listener(), ip.parse::<IpAddr>().unwrap()).unwrap()
        }
        None => gateway.client(),
    };
    let response = client.send(&request);
    let tag = response.echo().header("x-gray-tag").map(str::to_string);
    (response.backend(), tag)
}

#[test]
fn plugin_in_envoy_and_command_agree_on_every_row() {
    let rules: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/data/rules.json")).unwrap(),
    )
    .unwrap();
    let gateway = Gateway::start("plugin-vs-cli", &rules);
    let rows = rows();
    assert!(
        rows.len() >= 15,
        "the table should cover every reason; it has {} rows",
        rows.len()
    );
    let mut failures = Vec::new();
    for row in &rows {
        let command = command_answer(&row.spec);
        if command != row.expect {
            failures.push(format!(
                "{}: command says {command}, table says {}",
                row.name, row.expect
            ));
        }
        let (backend, tag) = plugin_answer(&gateway, &row.spec);
        let want_backend = row.expect["cluster"].as_str().unwrap_or("fallback");
        let want_tag = row.expect["upstream_tag"].as_str().map(str::to_string);
        if backend != want_backend || tag != want_tag {
            failures.push(format!(
                "{}: Envoy routed to {backend} with tag {tag:?}; the command says {want_backend} with tag {want_tag:?}",
                row.name
            ));
        }
    }
    gateway.envoy.assert_no_wasm_errors();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
