//! `graylane envoy`: a ready Envoy configuration for a rule document.

use serde_json::{json, Value};

use super::document::Document;

/// What the generated configuration needs besides the rules.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The plugin, as Envoy will find it.
    pub wasm: String,
    pub listen_address: String,
    pub port: u16,
    /// Where requests no service claimed go.
    pub fallback_cluster: String,
    /// Stub endpoints: every cluster gets this address and its own port,
    /// counting up from `upstream_port_base`.
    pub upstream_address: String,
    pub upstream_port_base: u16,
    pub admin_port: Option<u16>,
}

/// Every cluster the rules name, in document order, then the fallback.
pub fn cluster_names(document: &Document, fallback: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let all = document
        .rules
        .services
        .iter()
        .flat_map(|service| service.subsets.iter().map(|s| s.cluster.as_str()))
        .chain(std::iter::once(fallback));
    for name in all {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

pub fn config(document: &Document, options: &EnvoyOptions) -> Value {
    let cluster_header = document.rules.cluster_header.as_str();
    let clusters: Vec<Value> = cluster_names(document, &options.fallback_cluster)
        .iter()
        .enumerate()
        .map(|(position, name)| {
            let port = u32::from(options.upstream_port_base).saturating_add(position as u32);
            json!({
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": options.upstream_address,
                        "port_value": port,
                    }}}}]}],
                },
            })
        })
        .collect();
    let wasm_filter = json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "graylane",
                "root_id": "graylane",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": document.json(),
                },
                "vm_config": {
                    "vm_id": "graylane",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": options.wasm}},
                },
            },
        },
    });
    let manager = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "graylane",
            "route_config": {
                "name": "graylane",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "graylane-chosen-cluster",
                            "match": {"prefix": "/", "headers": [{"name": cluster_header, "present_match": true}]},
                            "route": {"cluster_header": cluster_header},
                        },
                        {
                            "name": "graylane-fallback",
                            "match": {"prefix": "/"},
                            "route": {"cluster": options.fallback_cluster},
                        },
                    ],
                }],
            },
            "http_filters": [
                wasm_filter,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                },
            ],
        },
    });
    let mut config = json!({
        "static_resources": {
            "listeners": [{
                "name": "graylane",
                "address": {"socket_address": {"address": options.listen_address, "port_value": options.port}},
                "filter_chains": [{"filters": [manager]}],
            }],
            "clusters": clusters,
        },
    });
    if let (Some(port), Value::Object(object)) = (options.admin_port, &mut config) {
        object.insert(
            "admin".into(),
            json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}),
        );
    }
    config
}

/// The configuration as YAML, with a header saying what to replace.
pub fn render(document: &Document, options: &EnvoyOptions) -> Result<String, String> {
    let body = serde_norway::to_string(&config(document, options)).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Envoy configuration for the graylane rules in {}, written by `graylane envoy`.\n\
         # The plugin writes the chosen cluster into {}; the first route forwards to\n\
         # the cluster that header names, the second sends what no service claimed\n\
         # to {}. The clusters are stubs at {}: point them at your upstreams.\n{body}",
        document.file.display(),
        document.rules.cluster_header,
        options.fallback_cluster,
        options.upstream_address,
    ))
}
