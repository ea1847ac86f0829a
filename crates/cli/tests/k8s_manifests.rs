//! Every Kubernetes manifest under filters/ (each YAML document with an
//! `apiVersion` and a `kind`) is checked against its CustomResourceDefinition
//! as the API server would check it, without a cluster: the CRDs of Istio,
//! Envoy Gateway and Gateway API come from the vendored `shared/vendor/crds/`
//! beside the repository (found in an ancestor folder, or under
//! `GRAYLANE_VENDOR`, as the APISIX host build finds its sources; its
//! `README.md` says where each comes from and how a manifest is validated
//! against it, which is what this file does). The project keeps no copy.
//!
//! Done here: the version's `openAPIV3Schema` (served versions only) as JSON
//! Schema draft 4; unknown fields refused (`additionalProperties: false` on
//! every structural object node without `additionalProperties` or
//! `x-kubernetes-preserve-unknown-fields`, as strict field validation does);
//! `nullable`; list-type `map` and `set` uniqueness; `metadata` checked as
//! ObjectMeta (name, namespace, labels). Not done: the CEL rules
//! (`x-kubernetes-validations`) are not evaluated; the ones the recipes meet
//! were read by hand (WasmPlugin's url scheme, one of selector / targetRefs;
//! Envoy Gateway's `code.type` with its matching `http` or `image`), and
//! the sha256 patterns that Envoy Gateway only states in a description are
//! checked below.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

mod common;

use common::repo_root;

fn crd_dir() -> PathBuf {
    if let Some(vendor) = std::env::var_os("GRAYLANE_VENDOR") {
        return PathBuf::from(vendor).join("crds");
    }
    let root = repo_root();
    root.ancestors()
        .map(|dir| dir.join("shared/vendor/crds"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no shared/vendor/crds in any folder above {} (set GRAYLANE_VENDOR)",
                root.display()
            )
        })
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()))
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn files_under(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, extensions, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
        {
            out.push(path);
        }
    }
    out.sort();
}

/// A served version of a CRD: its schema, made ready for a JSON Schema
/// validator, and whether it is deprecated.
struct Version {
    schema: Value,
    deprecated: bool,
}

/// The vendored CRDs by (group, version, kind).
fn crds() -> BTreeMap<(String, String, String), Version> {
    let mut files = Vec::new();
    files_under(&crd_dir(), &["yaml"], &mut files);
    let mut index = BTreeMap::new();
    for file in files {
        for crd in yaml_documents(&file) {
            assert_eq!(crd["kind"], "CustomResourceDefinition", "{}", file.display());
            let group = crd["spec"]["group"].as_str().unwrap().to_string();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                if version["served"] != true {
                    continue;
                }
                let mut schema = version["schema"]["openAPIV3Schema"].clone();
                kubernetes_schema(&mut schema, false);
                // apiVersion, kind and metadata are always allowed at the
                // root; metadata is checked on its own (ObjectMeta).
                let properties = schema["properties"].as_object_mut().unwrap();
                properties.insert("apiVersion".into(), json!({"type": "string"}));
                properties.insert("kind".into(), json!({"type": "string"}));
                properties.insert("metadata".into(), json!({"type": "object"}));
                index.insert(
                    (group.clone(), version["name"].as_str().unwrap().to_string(), kind.clone()),
                    Version {
                        schema,
                        deprecated: version["deprecated"] == true,
                    },
                );
            }
        }
    }
    index
}

/// Turns a CRD's structural schema into what a plain draft-4 validator
/// checks as the API server does: unknown fields refused, `nullable`
/// honoured. `value_check`: inside allOf / anyOf / oneOf / not, which only
/// check values and must not refuse fields.
fn kubernetes_schema(node: &mut Value, value_check: bool) {
    let Value::Object(map) = node else { return };
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(kind)) = map.get("type").cloned() {
            map.insert("type".into(), json!([kind, "null"]));
        }
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let is_object = map
        .get("type")
        .is_some_and(|t| t.as_str() == Some("object") || *t == json!(["object", "null"]))
        || map.contains_key("properties");
    if is_object && !preserve && !value_check && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for property in properties.values_mut() {
            kubernetes_schema(property, value_check);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child @ Value::Object(_)) = map.get_mut(key) {
            kubernetes_schema(child, value_check);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = map.get_mut(key) {
            for child in children {
                kubernetes_schema(child, true);
            }
        }
    }
    if let Some(child) = map.get_mut("not") {
        kubernetes_schema(child, true);
    }
}

/// `x-kubernetes-list-type: map` (unique by the map keys) and `set` (unique
/// items), which JSON Schema cannot say.
fn list_types(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            match schema["x-kubernetes-list-type"].as_str() {
                Some("map") => {
                    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                        .as_array()
                        .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let mut seen = Vec::new();
                    for (index, item) in items.iter().enumerate() {
                        let key: Vec<&Value> = keys.iter().map(|k| &item[*k]).collect();
                        if seen.contains(&key) {
                            errors.push(format!("{path}[{index}]: duplicate entry for the keys {keys:?}: {key:?}"));
                        }
                        seen.push(key);
                    }
                }
                Some("set") => {
                    for (index, item) in items.iter().enumerate() {
                        if items[..index].contains(item) {
                            errors.push(format!("{path}[{index}]: duplicate item in a set: {item}"));
                        }
                    }
                }
                _ => {}
            }
            for (index, item) in items.iter().enumerate() {
                list_types(&schema["items"], item, &format!("{path}[{index}]"), errors);
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                let child = schema["properties"]
                    .get(name)
                    .unwrap_or(&schema["additionalProperties"]);
                list_types(child, field, &format!("{path}.{name}"), errors);
            }
        }
        _ => {}
    }
}

fn dns_label(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(|label| dns_label(label, 63))
}

/// ObjectMeta as the API server checks it, for the fields a recipe uses.
fn check_metadata(metadata: &Value, errors: &mut Vec<String>) {
    let Some(fields) = metadata.as_object() else {
        errors.push("metadata: not an object".into());
        return;
    };
    for (name, value) in fields {
        match name.as_str() {
            "name" => {
                if !value.as_str().is_some_and(dns_subdomain) {
                    errors.push(format!("metadata.name: {value} is not a DNS-1123 subdomain"));
                }
            }
            "namespace" => {
                if !value.as_str().is_some_and(|n| dns_label(n, 63)) {
                    errors.push(format!("metadata.namespace: {value} is not a DNS-1123 label"));
                }
            }
            "labels" | "annotations" => {
                for (key, text) in value.as_object().map(Map::iter).into_iter().flatten() {
                    let (prefix, local) = key.rsplit_once('/').unwrap_or(("", key));
                    let local_ok = !local.is_empty()
                        && local.len() <= 63
                        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                    if !local_ok || !(prefix.is_empty() || dns_subdomain(prefix)) {
                        errors.push(format!("metadata.{name}: bad key {key:?}"));
                    }
                    if !text.is_string() {
                        errors.push(format!("metadata.{name}.{key}: not a string: {text}"));
                    }
                }
            }
            "generateName" => {}
            other => errors.push(format!("metadata.{other}: unknown field")),
        }
    }
    if fields.get("name").is_none() && fields.get("generateName").is_none() {
        errors.push("metadata.name: required".into());
    }
}

/// Every refusal for one manifest document, each as `PATH: REASON`.
fn validate(crds: &BTreeMap<(String, String, String), Version>, document: &Value) -> Result<(), Vec<String>> {
    let api_version = document["apiVersion"].as_str().unwrap_or_default();
    let kind = document["kind"].as_str().unwrap_or_default();
    let Some((group, version)) = api_version.rsplit_once('/') else {
        return Err(vec![format!(
            "apiVersion {api_version:?}: not GROUP/VERSION (core kinds are not among the vendored CRDs)"
        )]);
    };
    let key = (group.to_string(), version.to_string(), kind.to_string());
    let Some(crd) = crds.get(&key) else {
        let served: Vec<String> = crds
            .keys()
            .filter(|(g, _, k)| g == group && k == kind)
            .map(|(g, v, _)| format!("{g}/{v}"))
            .collect();
        return Err(vec![format!(
            "{kind} {api_version}: no served version of a vendored CRD (served: {served:?})"
        )]);
    };
    let mut errors = Vec::new();
    if crd.deprecated {
        errors.push(format!("{kind} {api_version}: deprecated version"));
    }
    let validator = jsonschema::draft4::new(&crd.schema).unwrap();
    for error in validator.iter_errors(document) {
        errors.push(format!("{}: {error}", error.instance_path));
    }
    list_types(&crd.schema, document, "", &mut errors);
    check_metadata(&document["metadata"], &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The Kubernetes manifests under filters/: (file, index, document).
fn manifests() -> Vec<(String, usize, Value)> {
    let mut files = Vec::new();
    files_under(&repo_root().join("filters"), &["yaml", "yml"], &mut files);
    let mut found = Vec::new();
    for file in files {
        let name = file.strip_prefix(repo_root()).unwrap().display().to_string();
        for (index, document) in yaml_documents(&file).into_iter().enumerate() {
            if document.get("apiVersion").is_some() || document.get("kind").is_some() {
                found.push((name.clone(), index, document));
            }
        }
    }
    found
}

#[test]
fn every_kubernetes_manifest_in_filters_fits_its_crd() {
    let crds = crds();
    let mut checked = Vec::new();
    let mut refused = Vec::new();
    for (file, index, document) in manifests() {
        let what = format!("{file} document {index} ({})", document["kind"].as_str().unwrap_or("?"));
        match validate(&crds, &document) {
            Ok(()) => checked.push(what),
            Err(errors) => refused.extend(errors.into_iter().map(|e| format!("{what}: {e}"))),
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
    // WasmPlugin, Gateway, VirtualService, DestinationRule; two
    // EnvoyExtensionPolicies, an HTTPRoute, an EnvoyPatchPolicy.
    assert!(checked.len() >= 8, "only {} manifests checked: {checked:#?}", checked.len());
}

fn wasm_plugin() -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "graylane", "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": "oci://registry.example.com/graylane/graylane:0.1.0",
            "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "pluginConfig": {"services": [], "anything": {"goes": true}},
        }
    })
}

#[test]
fn the_check_refuses_what_the_api_server_refuses() {
    let crds = crds();
    assert_eq!(validate(&crds, &wasm_plugin()), Ok(()));
    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut document = wasm_plugin();
        edit(&mut document);
        validate(&crds, &document)
            .map(|()| format!("accepted: {document}"))
            .unwrap_or_else(|errors| errors.join("\n"))
    };
    // An unknown field (strict field validation).
    let errors = refused(&|d| d["spec"]["imagePullPolicyy"] = json!("Always"));
    assert!(errors.contains("imagePullPolicyy"), "{errors}");
    // An unquoted all-digit hash is a number to Kubernetes' YAML reader
    // (64 zeros: the octal integer 0), though serde_norway keeps a number
    // that large as a string: the_recipes_pull_the_bundled_image… checks
    // the quotes in the text.
    let errors = refused(&|d| d["spec"]["sha256"] = json!(0));
    assert!(errors.contains("/spec/sha256"), "{errors}");
    // A digest with its prefix, or upper case.
    let errors = refused(&|d| d["spec"]["sha256"] = json!(format!("sha256:{}", "a".repeat(64))));
    assert!(errors.contains("/spec/sha256"), "{errors}");
    // An enum.
    let errors = refused(&|d| d["spec"]["failStrategy"] = json!("FAIL_SOMETIMES"));
    assert!(errors.contains("/spec/failStrategy"), "{errors}");
    // A list-type map with a repeated key.
    let errors = refused(&|d| {
        d["spec"]["vmConfig"] = json!({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]});
    });
    assert!(errors.contains("duplicate entry"), "{errors}");
    // Metadata.
    let errors = refused(&|d| d["metadata"]["name"] = json!("Gray_Lane"));
    assert!(errors.contains("metadata.name"), "{errors}");
    let errors = refused(&|d| d["metadata"]["nmespace"] = json!("x"));
    assert!(errors.contains("metadata.nmespace: unknown field"), "{errors}");
    // A version that does not exist, and a kind none of the CRDs defines.
    let errors = refused(&|d| d["apiVersion"] = json!("extensions.istio.io/v1"));
    assert!(errors.contains("no served version"), "{errors}");
    let errors = refused(&|d| d["apiVersion"] = json!("v1"));
    assert!(errors.contains("not GROUP/VERSION"), "{errors}");
}

#[test]
fn the_vendored_crds_are_the_upstream_files() {
    let sums = std::fs::read_to_string(crd_dir().join("SHA256SUMS")).unwrap();
    let mut count = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, file) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(crd_dir().join(file)).unwrap();
        let actual: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actual, hash, "vendored crds/{file} differs from the upstream file");
        count += 1;
    }
    assert_eq!(count, 7);
}

/// Every `sha256` under a path of the document (recursively).
fn sha256_fields<'v>(value: &'v Value, path: String, out: &mut Vec<(String, &'v Value)>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                if name == "sha256" {
                    out.push((format!("{path}.{name}"), field));
                } else if name != "config" && name != "pluginConfig" {
                    sha256_fields(field, format!("{path}.{name}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                sha256_fields(item, format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

/// The recipes use the image the release bundle makes and pin it: Istio's
/// WasmPlugin and Envoy Gateway's `code.image` pull `oci://…` / `registry/…`
/// with a `sha256` of 64 lower-case hex digits (Envoy Gateway states that
/// pattern only in a description, so its schema does not check it).
#[test]
fn the_recipes_pull_the_bundled_image_and_pin_its_digest() {
    let mut files = Vec::new();
    files_under(&repo_root().join("filters"), &["yaml", "yml"], &mut files);
    for file in files {
        for (number, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            if let Some(value) = line.trim_start().strip_prefix("sha256:") {
                let value = value.trim();
                assert!(
                    value.starts_with('"') || value.starts_with('\''),
                    "{}:{}: quote the hash ({value}): unquoted, Kubernetes reads digits as a number",
                    file.display(),
                    number + 1
                );
            }
        }
    }
    let mut images = 0;
    for (file, index, document) in manifests() {
        let mut fields = Vec::new();
        sha256_fields(&document, String::new(), &mut fields);
        for (path, value) in &fields {
            let hex = value.as_str().unwrap_or_default();
            assert!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{file} document {index}: {path} is {value}, not 64 lower-case hex digits (quote it in YAML)"
            );
        }
        match document["kind"].as_str() {
            Some("WasmPlugin") => {
                assert!(document["spec"]["url"].as_str().unwrap().starts_with("oci://"), "{file}");
                assert!(document["spec"]["sha256"].is_string(), "{file}: WasmPlugin without sha256");
                images += 1;
            }
            Some("EnvoyExtensionPolicy") => {
                for wasm in document["spec"]["wasm"].as_array().unwrap() {
                    let code = &wasm["code"];
                    let source = if code["type"] == "Image" { &code["image"] } else { &code["http"] };
                    assert!(source["sha256"].is_string(), "{file}: {} code without sha256", code["type"]);
                    images += usize::from(code["type"] == "Image");
                }
            }
            _ => {}
        }
    }
    assert_eq!(images, 2, "one Istio and one Envoy Gateway recipe pull the image");
}

/// Every build command in the recipes builds the plugin, not the command.
#[test]
fn every_build_command_in_the_recipes_builds_the_plugin() {
    let mut files = Vec::new();
    files_under(&repo_root().join("filters"), &["md", "yaml", "yml", "json"], &mut files);
    let mut commands = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // A command continued with a backslash is one line; in Markdown,
        // inline code may wrap.
        let mut joined = text.replace("\\\n", " ");
        if file.extension().is_some_and(|e| e == "md") {
            joined = joined.replace('\n', " ");
        }
        for (at, _) in joined.match_indices("cargo build") {
            let command: String = joined[at..]
                .chars()
                .take_while(|c| !matches!(c, '`' | ')' | '\n'))
                .collect();
            let words: Vec<&str> = command.split_whitespace().collect();
            assert!(
                words.windows(2).any(|w| w == ["--target", "wasm32-wasip1"])
                    && words.windows(2).any(|w| w == ["-p", "graylane"]),
                "{}: {command:?} does not build the plugin (cargo build --release --target wasm32-wasip1 -p graylane)",
                file.display()
            );
            commands += 1;
        }
    }
    assert!(commands >= 2, "no build command found in the recipes");
}
