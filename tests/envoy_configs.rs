//! The Envoy configurations the project ships (`filters/` and `envoy-test/`)
//! are accepted by Envoy, plugin document included, and stay in step with
//! the example document. Needs Envoy (see `support::envoy_bin`).

// Test helpers fail their test by panicking, as the tests themselves do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]



use std::fs;
use std::path::{Path, PathBuf};
use std::thread;

use serde_json::Value;
use support::*;

/// Every `.yaml` under `dir` (recursively) that is an Envoy bootstrap.
fn envoy_configs_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "out") {
                continue; // run-local.sh's generated copies
            }
            found.extend(envoy_configs_under(&path));
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
            && fs::read_to_string(&path).is_ok_and(|text| text.contains("static_resources:"))
        {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn shipped_configs() -> Vec<PathBuf> {
    let root = repo_root();
    let configs: Vec<PathBuf> = ["filters", "envoy-test"]
        .iter()
        .flat_map(|dir| envoy_configs_under(&root.join(dir)))
        .collect();
    for expected in ["filters/envoy/envoy.yaml", "envoy-test/envoy.yaml"] {
        assert!(
            configs.contains(&root.join(expected)),
            "{expected} was not found among {configs:?}"
        );
    }
    configs
}

/// The plugin document embedded in a bootstrap: the block scalar that follows
/// `value: |` under the `google.protobuf.StringValue` of the wasm filter.
fn embedded_plugin_document(yaml: &str) -> Value {
    let lines: Vec<&str> = yaml.lines().collect();
    let string_value = lines
        .iter()
        .position(|line| line.contains("type.googleapis.com/google.protobuf.StringValue"))
        .expect("no StringValue configuration in the bootstrap");
    let value_line = (string_value..lines.len())
        .find(|&i| lines[i].trim() == "value: |")
        .expect("the configuration is not a `value: |` block");
    let indent = |line: &str| line.len() - line.trim_start().len();
    let key_indent = indent(lines[value_line]);
    let block: Vec<&str> = lines[value_line + 1..]
        .iter()
        .take_while(|line| line.trim().is_empty() || indent(line) > key_indent)
        .copied()
        .collect();
    serde_json::from_str(&block.join("\n"))
        .unwrap_or_else(|error| panic!("the embedded plugin document is not JSON: {error}"))
}

#[test]
fn every_shipped_envoy_config_passes_envoy_validate() {
    let configs = shipped_configs();
    let wasm = wasm_path(); // build before the threads share it
    thread::scope(|scope| {
        let runs: Vec<_> = configs
            .iter()
            .map(|path| {
                scope.spawn(move || {
                    let text = fs::read_to_string(path).unwrap();
                    let rewritten = with_test_wasm(&text);
                    assert!(
                        !text.contains("graylane.wasm")
                            || rewritten.contains(&wasm.display().to_string()),
                        "{}: the wasm path was not rewritten",
                        path.display()
                    );
                    let label = path
                        .strip_prefix(repo_root())
                        .unwrap()
                        .display()
                        .to_string();
                    let validation = envoy_validate(&label, &text);
                    assert!(
                        validation.status.success(),
                        "{} fails `envoy --mode validate`:\n{}",
                        path.display(),
                        validation.log
                    );
                    // Validation ran the plugin's own configuration check.
                    assert!(
                        validation.log.contains("graylane: configured"),
                        "{}: the plugin did not configure during validation:\n{}",
                        path.display(),
                        validation.log
                    );
                })
            })
            .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
}

#[test]
fn validate_refuses_a_bad_plugin_document_and_names_the_field() {
    let shipped = fs::read_to_string(repo_root().join("filters/envoy/envoy.yaml")).unwrap();
    let broken = shipped.replacen("\"weight\": 5,", "\"weight\": 5.001,", 1);
    assert_ne!(
        broken, shipped,
        "the example has no `\"weight\": 5,` to break"
    );
    let validation = envoy_validate("broken-weight", &broken);
    assert!(!validation.status.success(), "{}", validation.log);
    assert!(
        validation
            .log
            .contains("configuration refused: services[0].subsets[1].weight"),
        "the log does not name the field:\n{}",
        validation.log
    );
}

#[test]
fn shipped_envoy_config_embeds_graylane_json() {
    let dir = repo_root().join("filters/envoy");
    let yaml = fs::read_to_string(dir.join("envoy.yaml")).unwrap();
    let json: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("graylane.json")).unwrap()).unwrap();
    assert_eq!(
        embedded_plugin_document(&yaml),
        json,
        "filters/envoy/envoy.yaml and filters/envoy/graylane.json hold different documents"
    );
}

#[test]
fn shipped_plugin_documents_compile_and_name_only_defined_clusters() {
    for path in shipped_configs() {
        let yaml = fs::read_to_string(&path).unwrap();
        let document = embedded_plugin_document(&yaml);
        if let Err(errors) = graylane_core::config::compile(document.to_string().as_bytes()) {
            panic!("{}: {errors}", path.display());
        }
        // Every cluster the plugin may write exists in the bootstrap, and the
        // route's fallback does too.
        for cluster in clusters_named_in(&document)
            .into_iter()
            .chain(["fallback".to_string()])
        {
            assert!(
                yaml.contains(&format!("- name: {cluster}\n")),
                "{}: no cluster {cluster}",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// `graylane envoy`, validated by a real Envoy.

fn validate(label: &str, config: &str) -> (bool, String) {
    let validation = envoy_validate_as_is(label, config);
    (validation.status.success(), validation.log)
}

#[test]
fn envoy_configs_pass_envoy_validate() {
    let wasm = wasm_path().to_str().unwrap();
    for (name, file) in [
        ("canary", "filters/examples/canary.json"),
        ("bluegreen", "filters/examples/bluegreen.yaml"),
        ("two-services", "filters/examples/two-services.yaml"),
        ("test-rules", "tests/data/rules.json"),
    ] {
        let run = graylane(&[
            "envoy",
            file,
            "--wasm",
            wasm,
            "--port",
            "18080",
            "--fallback-cluster",
            "elsewhere",
            "--admin-port",
            "18901",
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let config: Value = serde_norway::from_str(&run.stdout).expect("the output is YAML");
        let text = &run.stdout;
        assert!(
            text.contains("cluster_header: x-graylane-cluster"),
            "{text}"
        );
        assert!(text.contains("present_match: true"));
        assert!(text.contains("cluster: elsewhere"));
        assert!(text.contains("port_value: 18080"));
        let clusters = config["static_resources"]["clusters"].as_array().unwrap();
        let document = graylane_cli::document::load(&repo_root().join(file)).unwrap();
        let mut wanted: Vec<&str> = document
            .rules
            .services
            .iter()
            .flat_map(|s| s.subsets.iter().map(|s| s.cluster.as_str()))
            .collect();
        wanted.push("elsewhere");
        for cluster in wanted {
            assert!(
                clusters.iter().any(|c| c["name"].as_str() == Some(cluster)),
                "{name}: no cluster {cluster}"
            );
        }
        let (ok, log) = validate(&format!("generated-{name}"), text);
        assert!(ok, "{name}: envoy refused the config:\n{log}");
        assert!(log.contains("OK"), "{log}");
    }
}

#[test]
fn envoy_validate_refuses_what_it_should() {
    // The check above can fail: a missing plugin file is refused...
    let run = graylane(&[
        "envoy",
        "filters/examples/canary.json",
        "--wasm",
        "/nonexistent/graylane.wasm",
    ]);
    assert_eq!(run.code, 0);
    let (ok, log) = validate("generated-missing-wasm", &run.stdout);
    assert!(!ok, "envoy accepted a config without its plugin:\n{log}");

    // ...and validation runs the plugin's own configure step: rules the
    // plugin refuses, slipped into a generated config, are refused there.
    let run = graylane(&[
        "envoy",
        "filters/examples/canary.json",
        "--wasm",
        wasm_path().to_str().unwrap(),
    ]);
    let tampered = run.stdout.replace("\"weight\":5", "\"weight\":500");
    assert_ne!(tampered, run.stdout);
    let (ok, log) = validate("generated-refused-rules", &tampered);
    assert!(!ok, "envoy accepted rules the plugin refuses:\n{log}");
    assert!(log.contains("services[0].subsets[1].weight"), "{log}");
}
