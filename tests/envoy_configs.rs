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

/// The plugin document embedded in a bootstrap: the `value` of the wasm
/// filter's `google.protobuf.StringValue` configuration.
fn embedded_plugin_document(yaml: &str) -> Value {
    let bootstrap: Value = serde_norway::from_str(yaml).expect("the bootstrap is YAML");
    let manager = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    let filters = manager["typed_config"]["http_filters"].as_array().unwrap();
    let wasm = filters
        .iter()
        .find(|filter| filter["name"] == "envoy.filters.http.wasm")
        .expect("no wasm filter");
    let text = wasm["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("the configuration is not a string");
    serde_json::from_str(text)
        .unwrap_or_else(|error| panic!("the embedded plugin document is not JSON: {error}"))
}

/// The shipped bootstraps are the generator's output: each says which
/// `graylane envoy` command wrote it, and running that command again gives
/// the file (after its own leading comment), byte for byte.
#[test]
fn shipped_envoy_configs_are_what_graylane_envoy_writes() {
    for expected in ["filters/envoy/envoy.yaml", "envoy-test/envoy.yaml"] {
        let text = fs::read_to_string(repo_root().join(expected)).unwrap();
        let marker = "# Envoy configuration for the graylane rules in ";
        let at = text
            .find(marker)
            .unwrap_or_else(|| panic!("{expected} does not say it was generated"));
        let generated = &text[at..];
        let command = generated
            .lines()
            .nth(1)
            .and_then(|line| line.trim_start_matches('#').trim().strip_prefix("graylane "))
            .unwrap_or_else(|| panic!("{expected}: no command on the second line"));
        let args: Vec<&str> = command.split(' ').collect();
        let run = graylane(&args);
        assert_eq!(run.code, 0, "{expected}: {}", run.stderr);
        assert_eq!(
            run.stdout, generated,
            "{expected} differs from what `graylane {command}` writes: regenerate it"
        );
    }
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
                yaml.contains(&format!("- name: {cluster}\n"))
                    || yaml.contains(&format!("name: {cluster}\n")),
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
            "--listen",
            "127.0.0.1:18080",
            "--fallback-cluster",
            "elsewhere",
            "--admin",
            "127.0.0.1:18901",
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
        assert!(text.contains("failure_policy: FAIL_RELOAD"));
        assert!(text.contains("- remove: x-graylane-cluster"));
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
fn a_configuration_with_fallbacks_passes_envoy_validate() {
    let wasm = wasm_path().to_str().unwrap();
    let run = graylane(&[
        "envoy",
        "filters/examples/two-services.yaml",
        "--wasm",
        wasm,
        "--fallback-to-default",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = &run.stdout;
    assert!(text.contains("--fallback-to-default"), "the header records the flag");
    assert!(text.contains("envoy.clusters.aggregate"), "{text}");
    assert!(text.contains("~endpoints"), "{text}");
    assert!(text.contains("retry_on: connect-failure,refused-stream"), "{text}");
    let (ok, log) = validate("generated-fallbacks", text);
    assert!(ok, "envoy refused the config:\n{log}");
}

#[test]
fn configurations_that_mirror_or_pin_pass_envoy_validate() {
    let wasm = wasm_path().to_str().unwrap();
    let run = graylane(&["envoy", "filters/examples/mirror.json", "--wasm", wasm]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = &run.stdout;
    assert!(text.contains("cluster_header: x-graylane-mirror"), "{text}");
    assert!(text.contains("- remove: x-graylane-mirror"), "the guard covers the mirror header: {text}");
    let (ok, log) = validate("generated-mirror", text);
    assert!(ok, "envoy refused the config:\n{log}");
    // Rules that do not mirror (or pin) get no mirror policy (or cookie copy).
    let plain = graylane(&["envoy", "filters/examples/canary.json", "--wasm", wasm]);
    assert!(!plain.stdout.contains("request_mirror_policies"));
    assert!(!plain.stdout.contains("response_headers_to_add"));
    let run = graylane(&["envoy", "filters/examples/pin.json", "--wasm", wasm]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("value: '%REQ(x-graylane-pin-cookie)%'"), "{}", run.stdout);
    assert!(run.stdout.contains("- remove: x-graylane-pin-cookie"), "{}", run.stdout);
    let (ok, log) = validate("generated-pin", &run.stdout);
    assert!(ok, "envoy refused the config:\n{log}");
}

/// An etcd source (push mode by default) is watched over gRPC: its cluster,
/// and only its, speaks HTTP/2 with keepalive, and Envoy accepts that.
#[test]
fn an_etcd_watch_gets_an_http2_cluster_with_keepalive() {
    let wasm = wasm_path().to_str().unwrap();
    let run = graylane(&["envoy", "filters/examples/etcd-watch.json", "--wasm", wasm]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let config: Value = serde_norway::from_str(&run.stdout).unwrap();
    let clusters = config["static_resources"]["clusters"].as_array().unwrap();
    let http2: Vec<&str> = clusters
        .iter()
        .filter(|cluster| !cluster["typed_extension_protocol_options"].is_null())
        .map(|cluster| cluster["name"].as_str().unwrap())
        .collect();
    assert_eq!(http2, ["etcd"]);
    let etcd = clusters.iter().find(|cluster| cluster["name"] == "etcd").unwrap();
    let options = &etcd["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
        ["http2_protocol_options"]["connection_keepalive"];
    assert_eq!(options["interval"], "2s");
    assert_eq!(options["timeout"], "2s");
    let (ok, log) = validate("generated-etcd-watch", &run.stdout);
    assert!(ok, "envoy refused the config:\n{log}");
    // Polling reads etcd's JSON gateway: HTTP/1.
    let polling = run.stdout.replace("\"key\": \"/graylane/rules\"", "\"key\": \"/graylane/rules\", \"mode\": \"poll\"");
    assert_ne!(polling, run.stdout);
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
    let tampered = run.stdout.replace("\"weight\": 5", "\"weight\": 500");
    assert_ne!(tampered, run.stdout);
    let (ok, log) = validate("generated-refused-rules", &tampered);
    assert!(!ok, "envoy accepted rules the plugin refuses:\n{log}");
    assert!(log.contains("services[0].subsets[1].weight"), "{log}");
}

/// What `graylane envoy` prints, run as printed (bar the addresses) in a
/// real Envoy, against the attacks its settings are there for.
#[test]
fn a_generated_configuration_serves_and_holds_against_client_tricks() {
    let rules = serde_json::json!({
        "tag_header": "x-gray-tag",
        "trust_tag": false,
        "services": [{
            "name": "b",
            "hosts": ["b.test"],
            "path_prefix": "/api/b",
            "default": "stable",
            "sticky": {"source_ip": true},
            "subsets": [
                {"name": "stable", "cluster": "b-stable"},
                {"name": "canary", "cluster": "b-canary", "weight": 50}
            ]
        }]
    });
    let file = repo_root().join("target/tmp/generated-config-rules.json");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, rules.to_string()).unwrap();
    let backends: Vec<EchoBackend> = ["b-stable", "b-canary", "fallback"]
        .into_iter()
        .map(EchoBackend::start)
        .collect();
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("{}={}", b.name(), b.addr()))
        .collect();
    let mut args = vec![
        "envoy",
        file.to_str().unwrap(),
        "--wasm",
        wasm_path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    for endpoint in &endpoints {
        args.extend(["--endpoint", endpoint.as_str()]);
    }
    let run = graylane(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let envoy = Envoy::start_bootstrap("generated-config", &run.stdout, "yaml");
    let mut client = envoy.client();

    // It serves: a claimed request reaches a subset of b.
    let echo = client.send(&Request::get("/api/b/items").host("b.test")).echo();
    assert!(echo.backend.starts_with("b-"), "{}", echo.backend);
    let own_subset = echo.backend.clone();

    // A spoofed cluster header on a request no service claims is not obeyed
    // and never reaches the upstream.
    let echo = client
        .send(&Request::get("/").host("elsewhere.test").header("x-graylane-cluster", "b-canary"))
        .echo();
    assert_eq!(echo.backend, "fallback");
    assert!(echo.header_values("x-graylane-cluster").is_empty());

    // The sticky client address is the connection's: X-Forwarded-For cannot
    // move a client between subsets (at 50% one of these 40 would, were it
    // the key).
    for n in 0..40 {
        let echo = client
            .send(
                &Request::get("/api/b/items")
                    .host("b.test")
                    .header("x-forwarded-for", &format!("198.18.0.{n}")),
            )
            .echo();
        assert_eq!(echo.backend, own_subset, "X-Forwarded-For 198.18.0.{n} moved the client");
    }

    // An untrusted tag spelt with underscores does not slip past trust_tag.
    let echo = client
        .send(&Request::get("/api/b/items").host("b.test").header("x_gray_tag", "canary"))
        .echo();
    assert!(echo.header_values("x_gray_tag").is_empty(), "{:?}", echo.headers);

    // The plugin matches the normalised path: this one is not under /api/b.
    let echo = client
        .send(&Request::get("/api/b/../../admin").host("b.test"))
        .echo();
    assert_eq!(echo.backend, "fallback");
    assert_eq!(echo.path, "/admin");
    envoy.assert_no_wasm_errors();
}
