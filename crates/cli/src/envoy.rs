//! The one Envoy configuration graylane ships, in every form it takes:
//! `graylane envoy` prints it, `filters/envoy/envoy.yaml` and
//! `envoy-test/envoy.yaml` are its output (a test regenerates them and
//! compares), and the end-to-end tests start Envoy with it. So the guards and
//! the failure policy users run with are the ones the tests prove.
//!
//! What every configuration holds, and why:
//! - the wasm filter with the rules, `failure_policy: FAIL_RELOAD` (a crashed
//!   VM answers 503 until a fresh one is loaded; never FAIL_OPEN, which would
//!   forward the request unrouted, with the client's own cluster header);
//! - an early header mutation removing any client-sent cluster header before
//!   the route is chosen (an HTTP `header_mutation` filter would act after the
//!   route was picked with the client's header in it);
//! - two routes: to the cluster the plugin names, only when it named one; else
//!   to the fallback cluster (what served the traffic before graylane);
//! - the edge hardening a routing plugin depends on: the client address is the
//!   connection's (`use_remote_address`; `X-Forwarded-For` is trusted only for
//!   the hops configured), headers with underscores are dropped (`x_gray_tag`
//!   reaches many stacks as `X-Gray-Tag`), and paths are normalised before the
//!   plugin matches them (`/api/b/../../admin` is not under `/api/b`);
//! - `stats_config` tags, so that Prometheus sees `service` and `subset` as
//!   labels of `graylane_requests_total`;
//! - an admin interface on 127.0.0.1 unless asked otherwise.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// One upstream endpoint: an IP address makes a STATIC cluster, a name a
/// STRICT_DNS one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: an endpoint is HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?}: the host is empty"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("{text:?}: the port must be a number from 0 to 65535"))?;
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl Endpoint {
    fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

/// An upstream cluster of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// gRPC and watch streams need HTTP/2 to the upstream (etcd), with
    /// HTTP/2 keepalive: a watch on a hung etcd or a silent network would
    /// otherwise wait for ever.
    pub http2: bool,
}

/// Everything the configuration is made of.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The plugin's document, as the filter's configuration string.
    pub plugin_json: String,
    /// The header the route reads the cluster from (`cluster_header`).
    pub cluster_header: String,
    /// The `.wasm`, as Envoy will find it.
    pub wasm: String,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub clusters: Vec<Cluster>,
    /// Where requests go that no service claims (among `clusters`).
    pub fallback_cluster: String,
    /// `FAIL_RELOAD` (shipped) or `FAIL_CLOSED`; the tests also try others.
    pub failure_policy: String,
    /// Remove a client-sent cluster header before routing (shipped: on).
    pub guard_cluster_header: bool,
    /// `X-Forwarded-For` hops before this gateway that are trusted.
    pub trusted_hops: u32,
    /// Subset clusters that fall back to their service's default cluster
    /// while none of their endpoints can take a request.
    pub fallbacks: Vec<Fallback>,
    /// The rules mirror (`subsets[].mirror`): the header the plugin names the
    /// copy's cluster in. Guarded like the cluster header.
    pub mirror_header: Option<String>,
    /// The rules pin browsers (`pin_cookie`): the request header the plugin
    /// puts the cookie in, copied into the response as `set-cookie`.
    pub pin_header: Option<String>,
    /// The rules route on form bodies (`form`): the wasm filter may pause a
    /// request in its headers callback until the body is in
    /// (`allow_on_headers_stop_iteration`; without it Envoy never calls the
    /// body callback of a request paused there).
    pub reads_body: bool,
}

/// A subset cluster and the default cluster its traffic goes to while the
/// subset is down. The cluster the plugin names becomes an aggregate of the
/// subset's own endpoints (`<cluster>~endpoints`, with outlier detection
/// that ejects an endpoint on its first connection failure) and then the
/// default cluster; the route retries connection failures, so the retry
/// finds the ejected endpoint gone and spills to the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub cluster: String,
    pub default: String,
}

/// The name the subset's own endpoints take when its cluster falls back.
pub fn endpoints_cluster_name(cluster: &str) -> String {
    format!("{cluster}~endpoints")
}

impl Bootstrap {
    /// The shipped configuration for a plugin document: FAIL_RELOAD, the
    /// guard on, admin on 127.0.0.1:9901, listener on 127.0.0.1:10000.
    pub fn new(plugin_json: String, cluster_header: &str, wasm: &str) -> Bootstrap {
        Bootstrap {
            plugin_json,
            cluster_header: cluster_header.to_string(),
            wasm: wasm.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 10_000)),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9_901))),
            clusters: Vec::new(),
            fallback_cluster: "fallback".to_string(),
            failure_policy: "FAIL_RELOAD".to_string(),
            guard_cluster_header: true,
            trusted_hops: 0,
            fallbacks: Vec::new(),
            mirror_header: None,
            pin_header: None,
            reads_body: false,
        }
    }

    /// Every cluster of the configuration: the plain ones, and for a subset
    /// that falls back, its endpoints and the aggregate the plugin names.
    fn cluster_values(&self) -> Vec<Value> {
        let mut values = Vec::new();
        for plain in &self.clusters {
            let Some(fallback) = self.fallbacks.iter().find(|f| f.cluster == plain.name) else {
                values.push(cluster(plain));
                continue;
            };
            let endpoints_name = endpoints_cluster_name(&plain.name);
            let mut endpoints = cluster(&Cluster {
                name: endpoints_name.clone(),
                ..plain.clone()
            });
            if let Some(object) = endpoints.as_object_mut() {
                object.insert(
                    "outlier_detection".into(),
                    json!({
                        "split_external_local_origin_errors": true,
                        "consecutive_local_origin_failure": 1,
                        "enforcing_consecutive_local_origin_failure": 100,
                        "consecutive_gateway_failure": 3,
                        "enforcing_consecutive_gateway_failure": 100,
                        "interval": "1s",
                        "base_ejection_time": "2s",
                        "max_ejection_time": "10s",
                        "max_ejection_percent": 100
                    }),
                );
            }
            values.push(endpoints);
            values.push(json!({
                "name": plain.name,
                "connect_timeout": "1s",
                "lb_policy": "CLUSTER_PROVIDED",
                "cluster_type": {
                    "name": "envoy.clusters.aggregate",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                        "clusters": [endpoints_name, fallback.default]
                    }
                }
            }));
        }
        values
    }

    /// The configuration as a JSON value (Envoy reads JSON as well as YAML).
    pub fn to_value(&self) -> Value {
        let header = self.cluster_header.as_str();
        let early_header_mutations: Vec<Value> = if self.guard_cluster_header {
            let mutations: Vec<Value> = std::iter::once(header)
                .chain(self.mirror_header.as_deref())
                .chain(self.pin_header.as_deref())
                .map(|name| json!({"remove": name}))
                .collect();
            vec![json!({
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    "mutations": mutations
                }
            })]
        } else {
            Vec::new()
        };
        let wasm_filter = json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "graylane",
                    "root_id": "graylane",
                    "failure_policy": self.failure_policy,
                    "vm_config": {
                        "vm_id": "graylane",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": self.wasm}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.plugin_json
                    }
                }
            }
        });
        let mut wasm_filter = wasm_filter;
        if self.reads_body {
            if let Some(config) = wasm_filter.pointer_mut("/typed_config/config").and_then(Value::as_object_mut) {
                config.insert("allow_on_headers_stop_iteration".into(), json!(true));
            }
        }
        let manager = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "use_remote_address": true,
                "xff_num_trusted_hops": self.trusted_hops,
                "normalize_path": true,
                "merge_slashes": true,
                "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
                "early_header_mutation_extensions": early_header_mutations,
                "route_config": {
                    "name": "graylane",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "name": "graylane-chosen-cluster",
                                "match": {"prefix": "/", "headers": [{"name": header, "present_match": true}]},
                                "route": chosen_route(header, !self.fallbacks.is_empty(), self.mirror_header.as_deref())
                            },
                            {
                                "name": "graylane-fallback",
                                "match": {"prefix": "/"},
                                "route": {"cluster": self.fallback_cluster}
                            }
                        ]
                    }]
                },
                "http_filters": [
                    wasm_filter,
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }
                ]
            }
        });
        let mut manager = manager;
        if let (Some(pin_header), Some(virtual_host)) = (
            self.pin_header.as_deref(),
            manager.pointer_mut("/typed_config/route_config/virtual_hosts/0"),
        ) {
            if let Some(object) = virtual_host.as_object_mut() {
                object.insert("response_headers_to_add".into(), pin_cookie_copy(pin_header));
            }
        }
        let mut config = json!({
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": socket_address(&self.listen.ip().to_string(), self.listen.port()),
                    "filter_chains": [{"filters": [manager]}]
                }],
                "clusters": self.cluster_values()
            },
            "stats_config": {"stats_tags": stats_tags()}
        });
        if let (Some(admin), Some(top)) = (self.admin, config.as_object_mut()) {
            top.insert(
                "admin".into(),
                json!({"address": socket_address(&admin.ip().to_string(), admin.port())}),
            );
        }
        config
    }

    /// The configuration as commented YAML, as users read and paste it.
    pub fn to_yaml(&self, header: &str) -> Result<String, String> {
        let body = serde_norway::to_string(&self.to_value()).map_err(|e| e.to_string())?;
        let mut out = String::from(header);
        for line in body.lines() {
            let content = line.trim_start();
            let indent = line.get(..line.len() - content.len()).unwrap_or_default();
            let item = content.strip_prefix("- ").unwrap_or(content);
            if let Some((_, comment)) = COMMENTS.iter().find(|(key, _)| item.starts_with(key)) {
                for comment_line in comment.lines() {
                    out.push_str(indent);
                    out.push_str("# ");
                    out.push_str(comment_line);
                    out.push('\n');
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }
}

/// Comments written before the first line starting with each key.
const COMMENTS: &[(&str, &str)] = &[
    (
        "use_remote_address:",
        "The client address is the connection's: a client cannot pick its sticky\n\
         bucket (sticky: {source_ip: true}) with X-Forwarded-For. Behind a proxy of\n\
         yours, count it in xff_num_trusted_hops.",
    ),
    (
        "normalize_path:",
        "Paths are normalised before the plugin matches them: /api/b/../../admin\n\
         is not under /api/b.",
    ),
    (
        "common_http_protocol_options:",
        "x_gray_tag would reach many upstreams as X-Gray-Tag, past trust_tag: false.",
    ),
    (
        "early_header_mutation_extensions:",
        "Guard: a client-sent cluster header is removed before the route is chosen\n\
         and before any filter runs (the plugin removes it too). An HTTP\n\
         header_mutation filter would act after the route was picked, client\n\
         header included.",
    ),
    (
        "name: graylane-chosen-cluster",
        "The plugin writes the chosen cluster into the cluster header: forward there.",
    ),
    (
        "name: graylane-fallback",
        "No service claimed the request: where it went before graylane.",
    ),
    (
        "failure_policy:",
        "A crashed VM answers 503 until a fresh one is loaded; never FAIL_OPEN,\n\
         which would forward requests unrouted, with the client's own header.",
    ),
    (
        "response_headers_to_add:",
        "A pin cookie (pin_cookie): the bucket the plugin drew for a browser without\n\
         a sticky key, or a lane cookie (subsets[].affinity): the lane a tag or match\n\
         chose; set on the response, nothing when the plugin wrote none.",
    ),
    (
        "request_mirror_policies:",
        "A copy of the request goes to the cluster the plugin names in the mirror\n\
         header (subsets[].mirror); its answer is dropped, the client gets the\n\
         chosen cluster's.",
    ),
    (
        "cluster_type:",
        "Falls back to the service's default cluster while every endpoint of the\n\
         subset is ejected; with several endpoints, traffic spills over in part as\n\
         they go (Envoy's priority levels, overprovisioning factor 1.4).",
    ),
    (
        "outlier_detection:",
        "An endpoint is ejected on its first connection failure and tried again\n\
         after 2 s (longer each time it fails again, at most 10 s).",
    ),
    (
        "stats_config:",
        "graylane_requests_total.service.<s>.subset.<x> as labels for Prometheus.",
    ),
];

/// The route to the cluster the plugin chose; with fallbacks, connection
/// failures are retried (the request was never sent, so even a POST is safe
/// to retry), which is what carries a request over to the default subset.
fn chosen_route(header: &str, fallbacks: bool, mirror_header: Option<&str>) -> Value {
    let mut route = json!({"cluster_header": header});
    let Some(object) = route.as_object_mut() else {
        return route;
    };
    if fallbacks {
        object.insert(
            "retry_policy".into(),
            json!({
                "retry_on": "connect-failure,refused-stream",
                "num_retries": 2,
                "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"}
            }),
        );
    }
    if let Some(mirror) = mirror_header {
        // A request without the header (not in the share) is not copied.
        object.insert(
            "request_mirror_policies".into(),
            json!([{"cluster_header": mirror}]),
        );
    }
    route
}

/// `set-cookie` from the pin header the plugin wrote on the request; an
/// empty value (no pin drawn) adds nothing.
fn pin_cookie_copy(header: &str) -> Value {
    json!([{
        "header": {"key": "set-cookie", "value": format!("%REQ({header})%")},
        "append_action": "APPEND_IF_EXISTS_OR_ADD",
        "keep_empty_value": false
    }])
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

fn cluster(cluster: &Cluster) -> Value {
    let dns = cluster.endpoints.iter().any(|endpoint| !endpoint.is_ip());
    let endpoints: Vec<Value> = cluster
        .endpoints
        .iter()
        .map(|endpoint| json!({"endpoint": {"address": socket_address(&endpoint.host, endpoint.port)}}))
        .collect();
    let mut value = json!({
        "name": cluster.name,
        "type": if dns { "STRICT_DNS" } else { "STATIC" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": cluster.name,
            "endpoints": [{"lb_endpoints": endpoints}]
        }
    });
    if cluster.http2 {
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "typed_extension_protocol_options".into(),
                json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        "connection_keepalive": {"interval": "2s", "timeout": "2s"}
                    }}
                }}),
            );
        }
    }
    value
}

/// `wasmcustom.graylane_requests_total.service.<s>.subset.<x>` → the tags
/// `graylane_service` and `graylane_subset`.
fn stats_tags() -> Value {
    json!([
        {
            "tag_name": "graylane_service",
            "regex": "^wasmcustom\\.graylane_requests_total(\\.service\\.([^.]+))\\.subset\\.[^.]+$"
        },
        {
            "tag_name": "graylane_subset",
            "regex": "^wasmcustom\\.graylane_requests_total\\.service\\.[^.]+(\\.subset\\.([^.]+))$"
        }
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_say_what_is_wrong() {
        assert_eq!(
            "b.internal:8080".parse::<Endpoint>(),
            Ok(Endpoint {
                host: "b.internal".into(),
                port: 8080
            })
        );
        assert_eq!(
            "[::1]:80".parse::<Endpoint>().map(|e| e.host),
            Ok("::1".to_string())
        );
        assert!("b.internal".parse::<Endpoint>().unwrap_err().contains("HOST:PORT"));
        assert!("b:99999".parse::<Endpoint>().unwrap_err().contains("port"));
    }

    #[test]
    fn comments_go_before_their_keys_at_their_indentation() {
        let mut bootstrap = Bootstrap::new("{}".into(), "x-c", "/g.wasm");
        bootstrap.clusters.push(Cluster {
            name: "fallback".into(),
            endpoints: vec!["127.0.0.1:1".parse().unwrap()],
            http2: false,
        });
        let yaml = bootstrap.to_yaml("# header\n").unwrap();
        assert!(yaml.starts_with("# header\n"));
        let lines: Vec<&str> = yaml.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("failure_policy:"))
            .unwrap();
        let indent = lines[at].len() - lines[at].trim_start().len();
        assert!(lines[at - 1].starts_with(&format!("{}# ", " ".repeat(indent))));
        // The YAML still reads as the value it was made from.
        let parsed: Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(parsed, bootstrap.to_value());
    }
}
