//! Rules from a service registry: the instances of one service, with their
//! labels, become one graylane service document, which then goes through the
//! same validator as any other document.
//!
//! - Consul (`GET /v1/health/service/NAME?passing=true`, or the catalog's
//!   `/v1/catalog/service/NAME`): service meta `canary: "true"`,
//!   `bluegreen: "blue"|"green"`, `weight: "5"`, `match: "<JSON>"`, and
//!   `live: "true"` on the blue-green colour that takes the rest.
//! - Nacos (`GET /nacos/v1/ns/instance/list?serviceName=NAME`, or the v2
//!   answer wrapped in `data`): instance metadata `gray-tag: "true"` marks the
//!   gray instances; requests carrying the header `gray-tag: true` go to them,
//!   all others to the rest (unhealthy and disabled instances are left out).
//!
//! Instances are grouped into subsets by label: `canary`, `blue`, `green`,
//! `gray`, and `stable` for the unlabelled ones. A subset with no instance left
//! disappears, so its traffic falls back to the default instead of failing.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::config::ConfigError;

/// How registry instances become a graylane service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryService {
    /// The graylane service name (the registry's service name by default).
    pub name: String,
    pub hosts: Option<Vec<String>>,
    pub path_prefix: Option<String>,
    /// `sticky` object, as in the contract.
    pub sticky: Option<Value>,
    /// Cluster name for a subset: `{service}` and `{subset}` are replaced.
    pub cluster_template: String,
}

pub const DEFAULT_CLUSTER_TEMPLATE: &str = "{service}-{subset}";

impl RegistryService {
    pub fn named(name: &str) -> Self {
        RegistryService {
            name: name.to_string(),
            hosts: None,
            path_prefix: None,
            sticky: None,
            cluster_template: DEFAULT_CLUSTER_TEMPLATE.to_string(),
        }
    }

    fn cluster(&self, subset: &str) -> String {
        self.cluster_template
            .replace("{service}", &self.name)
            .replace("{subset}", subset)
    }
}

/// Reads `source.service` of a registry source: `{"name", "hosts"?,
/// "path_prefix"?, "sticky"?, "cluster_template"?}`. The fields are checked
/// now, when the plugin is configured, by compiling the service they would
/// make with one stable subset; a refusal names `source.service.…`.
pub fn read_service_settings(value: &Value) -> Result<RegistryService, Vec<ConfigError>> {
    const PATH: &str = "source.service";
    const FIELDS: &[&str] = &["name", "hosts", "path_prefix", "sticky", "cluster_template"];
    let refuse = |path: &str, reason: String| {
        vec![ConfigError {
            path: path.to_string(),
            reason,
        }]
    };
    let Some(object) = value.as_object() else {
        return Err(refuse(
            PATH,
            "must be an object with the service name".into(),
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !FIELDS.contains(&k.as_str()) && !k.starts_with('_'))
    {
        return Err(refuse(
            &format!("{PATH}.{unknown}"),
            format!("unknown field; expected one of: {}", FIELDS.join(", ")),
        ));
    }
    let Some(name) = object
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Err(refuse(
            &format!("{PATH}.name"),
            "is required: the graylane service name".into(),
        ));
    };
    let mut service = RegistryService::named(name);
    if let Some(template) = object.get("cluster_template") {
        match template.as_str() {
            Some(text) if text.contains("{subset}") => service.cluster_template = text.to_string(),
            _ => {
                return Err(refuse(
                    &format!("{PATH}.cluster_template"),
                    "must be a string containing {subset}, such as \"{service}-{subset}\"".into(),
                ))
            }
        }
    }
    let mut probe = Map::new();
    probe.insert("name".into(), json!(name));
    for field in ["hosts", "path_prefix", "sticky"] {
        if let Some(value) = object.get(field) {
            probe.insert(field.into(), value.clone());
        }
    }
    probe.insert("default".into(), json!("stable"));
    probe.insert(
        "subsets".into(),
        json!([{ "name": "stable", "cluster": service.cluster("stable") }]),
    );
    if let Err(errors) =
        crate::config::compile_value(&json!({ "services": [Value::Object(probe)] }))
    {
        return Err(errors
            .0
            .into_iter()
            .map(|error| ConfigError {
                path: error.path.replacen("services[0]", PATH, 1),
                reason: error.reason,
            })
            .collect());
    }
    service.hosts = object
        .get("hosts")
        .and_then(|h| serde_json::from_value(h.clone()).ok());
    service.path_prefix = object
        .get("path_prefix")
        .and_then(Value::as_str)
        .map(str::to_string);
    service.sticky = object.get("sticky").cloned();
    Ok(service)
}

/// One instance's labels, as the registry carried them.
#[derive(Debug, Default, Clone)]
struct Labels {
    id: String,
    canary: bool,
    colour: Option<String>,
    live: bool,
    weight: Option<String>,
    matches: Option<String>,
}

/// What one subset gathers from its instances; they must agree.
#[derive(Debug, Default)]
struct Gathered {
    instances: usize,
    weight: Option<(String, String)>,
    matches: Option<(String, String)>,
    live: bool,
}

/// A Consul health or catalog answer → `{"services": [one service]}`.
pub fn consul_document(body: &[u8], service: &RegistryService) -> Result<Value, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Consul answer is not JSON: {e}"))?;
    let Value::Array(entries) = value else {
        return Err("Consul answer must be a list of service instances".into());
    };
    let mut instances = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        // Health endpoint: {"Service": {"ID", "Meta"}}; catalog: {"ServiceID", "ServiceMeta"}.
        let (id, meta) = match entry.get("Service") {
            Some(inner) => (inner.get("ID"), inner.get("Meta")),
            None => (entry.get("ServiceID"), entry.get("ServiceMeta")),
        };
        let id = id
            .and_then(Value::as_str)
            .map_or_else(|| format!("[{position}]"), str::to_string);
        let meta = match meta {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(meta)) => meta.clone(),
            Some(_) => return Err(format!("instance {id}: Meta must be an object")),
        };
        let text = |key: &str| meta.get(key).and_then(Value::as_str).map(str::to_string);
        let flag = |key: &str| text(key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        instances.push(Labels {
            id,
            canary: flag("canary"),
            colour: text("bluegreen").map(|c| c.to_ascii_lowercase()),
            live: flag("live"),
            weight: text("weight"),
            matches: text("match"),
        });
    }
    build(instances, service)
}

/// A Nacos instance list (v1, or v2 with its `data` wrapper) →
/// `{"services": [one service]}`.
pub fn nacos_document(body: &[u8], service: &RegistryService) -> Result<Value, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Nacos answer is not JSON: {e}"))?;
    let list = value.get("data").unwrap_or(&value);
    let Some(hosts) = list.get("hosts").and_then(Value::as_array) else {
        return Err("Nacos answer must carry a hosts list".into());
    };
    let mut instances = Vec::new();
    for (position, host) in hosts.iter().enumerate() {
        let usable = |key: &str| host.get(key).and_then(Value::as_bool).unwrap_or(true);
        if !usable("healthy") || !usable("enabled") {
            continue;
        }
        let id = host
            .get("instanceId")
            .and_then(Value::as_str)
            .map_or_else(|| format!("hosts[{position}]"), str::to_string);
        let gray = host
            .get("metadata")
            .and_then(|m| m.get("gray-tag"))
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let mut labels = Labels {
            id,
            ..Labels::default()
        };
        if gray {
            labels.colour = Some("gray".into());
            labels.matches = Some(r#"[{"headers":[{"name":"gray-tag","exact":"true"}]}]"#.into());
        }
        instances.push(labels);
    }
    build(instances, service)
}

fn subset_of(labels: &Labels) -> Result<&str, String> {
    match (labels.canary, labels.colour.as_deref()) {
        (true, None) => Ok("canary"),
        (true, Some(colour)) => Err(format!(
            "instance {}: canary and bluegreen {colour} at once",
            labels.id
        )),
        (false, None) => Ok("stable"),
        (false, Some(colour @ ("blue" | "green" | "gray"))) => Ok(colour),
        (false, Some(other)) => Err(format!(
            "instance {}: bluegreen must be blue or green, got {other:?}",
            labels.id
        )),
    }
}

fn agree(
    slot: &mut Option<(String, String)>,
    value: Option<&String>,
    id: &str,
    what: &str,
    subset: &str,
) -> Result<(), String> {
    let Some(value) = value else { return Ok(()) };
    match slot {
        Some((first, first_id)) if first != value => Err(format!(
            "instances of subset {subset} disagree on {what}: {first_id} says {first:?}, {id} says {value:?}"
        )),
        Some(_) => Ok(()),
        None => {
            *slot = Some((value.clone(), id.to_string()));
            Ok(())
        }
    }
}

fn build(instances: Vec<Labels>, service: &RegistryService) -> Result<Value, String> {
    let mut subsets: BTreeMap<&str, Gathered> = BTreeMap::new();
    for labels in &instances {
        let name = subset_of(labels)?;
        let gathered = subsets.entry(name).or_default();
        gathered.instances += 1;
        gathered.live |= labels.live;
        agree(
            &mut gathered.weight,
            labels.weight.as_ref(),
            &labels.id,
            "weight",
            name,
        )?;
        agree(
            &mut gathered.matches,
            labels.matches.as_ref(),
            &labels.id,
            "match",
            name,
        )?;
    }
    if subsets.is_empty() {
        return Err("the registry lists no usable instance".into());
    }
    let default = choose_default(&subsets)?;

    let mut subset_list = Vec::new();
    // Declared order decides match precedence and the weight layout: the
    // default first, then canary, green, blue, gray.
    let order = [default, "canary", "green", "blue", "gray", "stable"];
    let mut seen = Vec::new();
    for name in order {
        let Some(gathered) = subsets.get(name) else {
            continue;
        };
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let mut subset = Map::new();
        subset.insert("name".into(), json!(name));
        subset.insert("cluster".into(), json!(service.cluster(name)));
        if name == "canary" {
            subset.insert("canary".into(), json!(true));
        }
        if name == "blue" || name == "green" {
            subset.insert("bluegreen".into(), json!(name));
        }
        if let Some((weight, id)) = &gathered.weight {
            let number: f64 = weight.trim().parse().map_err(|_| {
                format!("instance {id}: weight must be a number of percent, got {weight:?}")
            })?;
            subset.insert("weight".into(), json!(number));
        }
        if let Some((matches, id)) = &gathered.matches {
            subset.insert(
                "match".into(),
                match_entries(matches).map_err(|e| format!("instance {id}: match {e}"))?,
            );
        }
        subset_list.push(Value::Object(subset));
    }

    let mut document = Map::new();
    document.insert("name".into(), json!(service.name));
    if let Some(hosts) = &service.hosts {
        document.insert("hosts".into(), json!(hosts));
    }
    if let Some(prefix) = &service.path_prefix {
        document.insert("path_prefix".into(), json!(prefix));
    }
    if let Some(sticky) = &service.sticky {
        document.insert("sticky".into(), sticky.clone());
    }
    document.insert("default".into(), json!(default));
    document.insert("subsets".into(), Value::Array(subset_list));
    Ok(json!({ "services": [Value::Object(document)] }))
}

/// Unlabelled instances are the default. Without them, a blue-green service's
/// default is the colour whose instances say `live: "true"`, else blue.
fn choose_default(subsets: &BTreeMap<&str, Gathered>) -> Result<&'static str, String> {
    if subsets.contains_key("stable") {
        return Ok("stable");
    }
    let live: Vec<&str> = ["blue", "green"]
        .into_iter()
        .filter(|c| subsets.get(c).is_some_and(|g| g.live))
        .collect();
    match live.as_slice() {
        [colour] => Ok(if *colour == "blue" { "blue" } else { "green" }),
        [] if subsets.contains_key("blue") => Ok("blue"),
        [] if subsets.contains_key("green") => Ok("green"),
        [] => {
            Err("no instance can take the default traffic: every instance is canary or gray".into())
        }
        _ => Err("both blue and green instances say live: \"true\"".into()),
    }
}

/// `match` meta: the contract's list of match entries, or the registry
/// convention of the source article, where each entry may hold
/// `header: [{key, value_match}]`, `cookie: {regex}` and
/// `uri: [{prefix: [..]}]`.
fn match_entries(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("is not JSON: {e}"))?;
    let Value::Array(entries) = value else {
        return Err("must be a JSON list of match entries".into());
    };
    let mut out = Vec::new();
    for entry in entries {
        let Some(object) = entry.as_object() else {
            return Err("entries must be objects".into());
        };
        let article_style = ["header", "cookie", "uri"]
            .iter()
            .any(|k| object.contains_key(*k));
        if !article_style {
            out.push(entry.clone());
            continue;
        }
        let mut converted = Map::new();
        if let Some(headers) = object.get("header").and_then(Value::as_array) {
            let list: Vec<Value> = headers
                .iter()
                .map(|h| json!({ "name": h.get("key").cloned().unwrap_or(Value::Null), "exact": h.get("value_match").cloned().unwrap_or(Value::Null) }))
                .collect();
            converted.insert("headers".into(), Value::Array(list));
        }
        if let Some(regex) = object.get("cookie").and_then(|c| c.get("regex")) {
            converted.insert("cookie_regex".into(), regex.clone());
        }
        let prefixes: Vec<Value> = object
            .get("uri")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|u| u.get("prefix"))
            .flat_map(|p| match p {
                Value::Array(list) => list.clone(),
                single => vec![single.clone()],
            })
            .collect();
        if prefixes.is_empty() {
            out.push(Value::Object(converted));
            continue;
        }
        // One path per entry: each prefix makes its own entry with the rest.
        for prefix in prefixes {
            let mut with_path = converted.clone();
            with_path.insert("path".into(), json!({ "prefix": prefix }));
            out.push(Value::Object(with_path));
        }
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_value;

    fn compiled(document: &Value) -> crate::rules::Rules {
        compile_value(document).unwrap()
    }

    #[test]
    fn consul_health_answer_with_the_article_meta() {
        let body = br#"[
          {"Node": {"Node": "n1"}, "Service": {"ID": "b-1", "Service": "bservice", "Meta": {"version": "1.4"}}},
          {"Node": {"Node": "n2"}, "Service": {"ID": "b-2", "Service": "bservice", "Meta": null}},
          {"Node": {"Node": "n3"}, "Service": {"ID": "b-3", "Service": "bservice", "Meta": {
            "canary": "true", "weight": "10",
            "match": "[{\"header\":[{\"key\":\"userid\",\"value_match\":\"123\"}],\"cookie\":{\"regex\":\"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$\"},\"uri\":[{\"prefix\":[\"/api/user\",\"/api/me\"]}]}]"
          }}}
        ]"#;
        let document = consul_document(body, &RegistryService::named("bservice")).unwrap();
        let rules = compiled(&document);
        let service = &rules.services[0];
        assert_eq!(service.subsets[service.default].name, "stable");
        let canary = service.subset_named("canary").unwrap();
        assert_eq!(
            (canary.cluster.as_str(), canary.weight, canary.canary),
            ("bservice-canary", 1000, Some(true))
        );
        // Two prefixes: two entries, each with the header and cookie conditions.
        assert_eq!(canary.matches.len(), 2);
        assert!(canary
            .matches
            .iter()
            .all(|m| m.headers.len() == 1 && m.cookie_regex.is_some() && m.path.is_some()));
    }

    #[test]
    fn consul_catalog_answer_blue_green_live_colour() {
        let body = br#"[
          {"ServiceID": "b-blue", "ServiceMeta": {"bluegreen": "blue"}},
          {"ServiceID": "b-green", "ServiceMeta": {"bluegreen": "green", "live": "true"}},
          {"ServiceID": "b-green-2", "ServiceMeta": {"bluegreen": "green", "live": "true"}}
        ]"#;
        let mut service = RegistryService::named("shop");
        service.cluster_template =
            "outbound|80|{subset}|{service}.default.svc.cluster.local".into();
        let rules = compiled(&consul_document(body, &service).unwrap());
        let shop = &rules.services[0];
        assert_eq!(shop.subsets[shop.default].name, "green");
        assert_eq!(
            shop.subset_named("blue").unwrap().cluster,
            "outbound|80|blue|shop.default.svc.cluster.local"
        );
    }

    #[test]
    fn disagreeing_instances_are_refused() {
        let body = br#"[
          {"ServiceID": "a", "ServiceMeta": {}},
          {"ServiceID": "c1", "ServiceMeta": {"canary": "true", "weight": "5"}},
          {"ServiceID": "c2", "ServiceMeta": {"canary": "true", "weight": "50"}}
        ]"#;
        let error = consul_document(body, &RegistryService::named("b")).unwrap_err();
        assert_eq!(
            error,
            "instances of subset canary disagree on weight: c1 says \"5\", c2 says \"50\""
        );
    }

    #[test]
    fn bad_meta_is_refused_with_the_instance() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"x":1}"#, "Consul answer must be a list of service instances"),
            (br#"[{"ServiceID":"a","ServiceMeta":{"canary":"true","weight":"five"}}, {"ServiceID":"s"}]"#, "instance a: weight must be a number of percent, got \"five\""),
            (br#"[{"ServiceID":"a","ServiceMeta":{"bluegreen":"red"}}]"#, "instance a: bluegreen must be blue or green, got \"red\""),
            (br#"[{"ServiceID":"a","ServiceMeta":{"canary":"true"}}]"#, "no instance can take the default traffic: every instance is canary or gray"),
            (br#"[{"ServiceID":"s"},{"ServiceID":"a","ServiceMeta":{"canary":"true","match":"{"}}]"#, "instance a: match is not JSON: EOF while parsing an object at line 1 column 1"),
        ];
        for (body, want) in cases {
            assert_eq!(
                consul_document(body, &RegistryService::named("b")).unwrap_err(),
                want
            );
        }
    }

    #[test]
    fn a_weight_over_100_reaches_the_validator() {
        let body = br#"[{"ServiceID":"s"},{"ServiceID":"a","ServiceMeta":{"canary":"true","weight":"120"}}]"#;
        let document = consul_document(body, &RegistryService::named("b")).unwrap();
        let errors = compile_value(&document).unwrap_err().to_string();
        assert_eq!(
            errors,
            "services[0].subsets[1].weight: must be between 0 and 100 (percent), got 120"
        );
    }

    #[test]
    fn service_settings_are_checked_when_configured() {
        let good = json!({"name": "b", "hosts": ["b.example.com"], "path_prefix": "/api/b", "sticky": {"header": "userid"}, "cluster_template": "outbound|80|{subset}|b"});
        let service = read_service_settings(&good).unwrap();
        assert_eq!(service.cluster("canary"), "outbound|80|canary|b");
        assert_eq!(service.hosts, Some(vec!["b.example.com".to_string()]));
        let cases = [
            (json!({"hosts": ["x"]}), "source.service.name: is required: the graylane service name"),
            (json!({"name": "b", "hosts": ["a.*.com"]}), "source.service.hosts[0]: \"a.*.com\": '*' is allowed only as a leading '*.'"),
            (json!({"name": "b", "sticky": {"source_ip": false}}), "source.service.sticky.source_ip: must be true (leave sticky out for no sticky key)"),
            (json!({"name": "b", "cluster_template": "{service}"}), "source.service.cluster_template: must be a string containing {subset}, such as \"{service}-{subset}\""),
            (json!({"name": "b", "weight": 5}), "source.service.weight: unknown field; expected one of: name, hosts, path_prefix, sticky, cluster_template"),
        ];
        for (value, want) in cases {
            let errors = read_service_settings(&value).unwrap_err();
            assert_eq!(errors[0].to_string(), want);
        }
    }

    #[test]
    fn nacos_gray_instances_by_header_and_health() {
        let body = br#"{"name":"DEFAULT_GROUP@@user","hosts":[
            {"instanceId":"u1","ip":"10.0.0.1","port":8080,"healthy":true,"enabled":true,"metadata":{}},
            {"instanceId":"u2","ip":"10.0.0.2","port":8080,"healthy":true,"enabled":true,"metadata":{"gray-tag":"true"}}
        ]}"#;
        let rules = compiled(&nacos_document(body, &RegistryService::named("user")).unwrap());
        let user = &rules.services[0];
        assert_eq!(user.subsets[user.default].name, "stable");
        let gray = user.subset_named("gray").unwrap();
        assert_eq!(gray.cluster, "user-gray");
        assert_eq!(gray.matches[0].headers[0].name, "gray-tag");

        // v2 wrapper, and the only gray instance unhealthy: no gray subset, so
        // tagged requests fall back to the stable instances.
        let v2 = br#"{"code":0,"data":{"hosts":[
            {"instanceId":"u1","healthy":true,"metadata":{}},
            {"instanceId":"u2","healthy":false,"metadata":{"gray-tag":"true"}}
        ]}}"#;
        let rules = compiled(&nacos_document(v2, &RegistryService::named("user")).unwrap());
        assert_eq!(rules.services[0].subsets.len(), 1);
    }

    #[test]
    fn registry_rules_route_through_the_decision() {
        use crate::decision::decide;
        use crate::request::Request;
        use crate::split::WeylSequence;
        let body = br#"{"hosts":[{"instanceId":"u1"},{"instanceId":"u2","metadata":{"gray-tag":"true"}}]}"#;
        let mut service = RegistryService::named("user");
        service.hosts = Some(vec!["user.example.com".into()]);
        let rules = compiled(&nacos_document(body, &service).unwrap());
        let tagged: [(&[u8], &[u8]); 3] = [
            (b":authority", b"user.example.com"),
            (b":path", b"/"),
            (b"gray-tag", b"true"),
        ];
        let plain: [(&[u8], &[u8]); 2] = [(b":authority", b"user.example.com"), (b":path", b"/")];
        let mut sequence = WeylSequence::new(0);
        assert_eq!(
            decide(&rules, &Request::new(&tagged), &mut sequence).cluster,
            Some("user-gray")
        );
        assert_eq!(
            decide(&rules, &Request::new(&plain), &mut sequence).cluster,
            Some("user-stable")
        );
    }
}
