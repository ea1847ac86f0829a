//! `graylane envoy`: a ready Envoy configuration for a rule document.

use serde_norway::{Mapping, Value as Yaml};

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

/// A YAML mapping that keeps the order given, so the output reads as a
/// person would write it (`name` first).
fn map<const N: usize>(pairs: [(&str, Yaml); N]) -> Yaml {
    let mut mapping = Mapping::new();
    for (key, value) in pairs {
        mapping.insert(Yaml::from(key), value);
    }
    Yaml::Mapping(mapping)
}

fn text(value: &str) -> Yaml {
    Yaml::from(value)
}

fn typed(type_url: &str) -> (&'static str, Yaml) {
    ("@type", text(&format!("type.googleapis.com/{type_url}")))
}

fn socket_address(address: &str, port: u32) -> Yaml {
    map([(
        "socket_address",
        map([("address", text(address)), ("port_value", Yaml::from(port))]),
    )])
}

pub fn config(document: &Document, options: &EnvoyOptions) -> Yaml {
    let cluster_header = document.rules.cluster_header.as_str();
    let clusters: Vec<Yaml> = cluster_names(document, &options.fallback_cluster)
        .iter()
        .enumerate()
        .map(|(position, name)| {
            let port = u32::from(options.upstream_port_base).saturating_add(position as u32);
            let endpoint = map([(
                "endpoint",
                map([("address", socket_address(&options.upstream_address, port))]),
            )]);
            map([
                ("name", text(name)),
                ("type", text("STATIC")),
                ("connect_timeout", text("1s")),
                (
                    "load_assignment",
                    map([
                        ("cluster_name", text(name)),
                        (
                            "endpoints",
                            Yaml::Sequence(vec![map([(
                                "lb_endpoints",
                                Yaml::Sequence(vec![endpoint]),
                            )])]),
                        ),
                    ]),
                ),
            ])
        })
        .collect();
    let wasm_filter = map([
        ("name", text("envoy.filters.http.wasm")),
        (
            "typed_config",
            map([
                typed("envoy.extensions.filters.http.wasm.v3.Wasm"),
                (
                    "config",
                    map([
                        ("name", text("graylane")),
                        ("root_id", text("graylane")),
                        (
                            "configuration",
                            map([
                                typed("google.protobuf.StringValue"),
                                ("value", text(&document.json())),
                            ]),
                        ),
                        (
                            "vm_config",
                            map([
                                ("vm_id", text("graylane")),
                                ("runtime", text("envoy.wasm.runtime.v8")),
                                (
                                    "code",
                                    map([("local", map([("filename", text(&options.wasm))]))]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ]),
        ),
    ]);
    let chosen_route = map([
        ("name", text("graylane-chosen-cluster")),
        (
            "match",
            map([
                ("prefix", text("/")),
                (
                    "headers",
                    Yaml::Sequence(vec![map([
                        ("name", text(cluster_header)),
                        ("present_match", Yaml::from(true)),
                    ])]),
                ),
            ]),
        ),
        ("route", map([("cluster_header", text(cluster_header))])),
    ]);
    let fallback_route = map([
        ("name", text("graylane-fallback")),
        ("match", map([("prefix", text("/"))])),
        ("route", map([("cluster", text(&options.fallback_cluster))])),
    ]);
    let manager = map([
        ("name", text("envoy.filters.network.http_connection_manager")),
        (
            "typed_config",
            map([
                typed("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
                ("stat_prefix", text("graylane")),
                (
                    "route_config",
                    map([
                        ("name", text("graylane")),
                        (
                            "virtual_hosts",
                            Yaml::Sequence(vec![map([
                                ("name", text("all")),
                                ("domains", Yaml::Sequence(vec![text("*")])),
                                ("routes", Yaml::Sequence(vec![chosen_route, fallback_route])),
                            ])]),
                        ),
                    ]),
                ),
                (
                    "http_filters",
                    Yaml::Sequence(vec![
                        wasm_filter,
                        map([
                            ("name", text("envoy.filters.http.router")),
                            (
                                "typed_config",
                                map([typed("envoy.extensions.filters.http.router.v3.Router")]),
                            ),
                        ]),
                    ]),
                ),
            ]),
        ),
    ]);
    let listener = map([
        ("name", text("graylane")),
        (
            "address",
            socket_address(&options.listen_address, u32::from(options.port)),
        ),
        (
            "filter_chains",
            Yaml::Sequence(vec![map([("filters", Yaml::Sequence(vec![manager]))])]),
        ),
    ]);
    let mut config = map([(
        "static_resources",
        map([
            ("listeners", Yaml::Sequence(vec![listener])),
            ("clusters", Yaml::Sequence(clusters)),
        ]),
    )]);
    if let (Some(port), Yaml::Mapping(top)) = (options.admin_port, &mut config) {
        top.insert(
            text("admin"),
            map([("address", socket_address("127.0.0.1", u32::from(port)))]),
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
