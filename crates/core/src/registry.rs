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

use crate::config::service::read_service;
use crate::json::{self, Node, Value};
use crate::read::{ConfigErrors, Object, Path};

/// How registry instances become a graylane service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryService {
    /// The graylane service name (the registry's service name by default).
    pub name: String,
    /// `hosts`, `path_prefix` and `sticky` as given in `source.service`,
    /// copied into the service the registry's answer makes.
    pub hosts: Option<Node>,
    pub path_prefix: Option<Node>,
    pub sticky: Option<Node>,
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

    /// The service these settings make, given its default and subsets.
    fn service_node(&self, default: &str, subsets: Vec<Node>) -> Node {
        let mut service = Node::object([("name", Node::string(self.name.as_str()))]);
        for (key, value) in [
            ("hosts", &self.hosts),
            ("path_prefix", &self.path_prefix),
            ("sticky", &self.sticky),
        ] {
            if let Some(value) = value {
                service.insert(key, value.clone());
            }
        }
        service.insert("default", Node::string(default));
        service.insert("subsets", Node::list(subsets));
        service
    }
}

/// Reads `source.service` of a registry source: `{"name", "hosts"?,
/// "path_prefix"?, "sticky"?, "cluster_template"?}`. The fields are checked
/// now, when the plugin is configured, by compiling the service they would
/// make with one stable subset; a refusal names `source.service.…`.
pub fn read_service_settings(
    node: &Node,
    path: &Path,
    errors: &mut ConfigErrors,
) -> Option<RegistryService> {
    let before = errors.0.len();
    let mut object = Object::new(node, path, errors)?;
    let name = match object.non_empty_string("name", false, errors) {
        Some((name, _)) => Some(name),
        None if !object.has("name") => {
            object.missing("name", errors, Some(": the graylane service name".into()));
            None
        }
        None => None,
    };
    let mut service = RegistryService::named(name.as_deref().unwrap_or("-"));
    if let Some((template, template_node)) = object.get("cluster_template") {
        match template.as_str() {
            Some(text) if text.contains("{subset}") => service.cluster_template = text.to_string(),
            _ => errors.push(
                &template_node,
                template,
                "must be a string containing {subset}, such as \"{service}-{subset}\"",
            ),
        }
    }
    service.hosts = object.get("hosts").map(|(node, _)| node.clone());
    service.path_prefix = object.get("path_prefix").map(|(node, _)| node.clone());
    service.sticky = object.get("sticky").map(|(node, _)| node.clone());
    object.finish(&[], errors);
    name.as_ref()?;
    // The same checks as a service of the rules, named where they stand.
    let stable = Node::object([
        ("name", Node::string("stable")),
        ("cluster", Node::string(service.cluster("stable"))),
    ]);
    let probe = service.service_node("stable", vec![stable]);
    read_service(
        &probe,
        path,
        &mut crate::config::limits::Budget::fragment(),
        errors,
    );
    (errors.0.len() == before).then_some(service)
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

/// Parses a registry's answer.
fn parse_answer(body: &[u8], registry: &str) -> Result<Node, String> {
    json::parse(body).map_err(|e| format!("{registry} answer is not JSON: {}", e.describe(body)))
}

/// A Consul health or catalog answer → `{"services": [one service]}`.
pub fn consul_document(body: &[u8], service: &RegistryService) -> Result<Node, String> {
    let answer = parse_answer(body, "Consul")?;
    let Some(entries) = answer.as_array() else {
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
            .and_then(Node::as_str)
            .map_or_else(|| format!("[{position}]"), str::to_string);
        let meta = match meta {
            None => None,
            Some(meta) if meta.is_null() => None,
            Some(meta) if meta.as_object().is_some() => Some(meta),
            Some(_) => return Err(format!("instance {id}: Meta must be an object")),
        };
        let text = |key: &str| {
            meta.and_then(|m| m.get(key))
                .and_then(Node::as_str)
                .map(str::to_string)
        };
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
pub fn nacos_document(body: &[u8], service: &RegistryService) -> Result<Node, String> {
    let answer = parse_answer(body, "Nacos")?;
    let list = answer.get("data").unwrap_or(&answer);
    let Some(hosts) = list.get("hosts").and_then(Node::as_array) else {
        return Err("Nacos answer must carry a hosts list".into());
    };
    let mut instances = Vec::new();
    for (position, host) in hosts.iter().enumerate() {
        let usable = |key: &str| host.get(key).and_then(Node::as_bool).unwrap_or(true);
        if !usable("healthy") || !usable("enabled") {
            continue;
        }
        let id = host
            .get("instanceId")
            .and_then(Node::as_str)
            .map_or_else(|| format!("hosts[{position}]"), str::to_string);
        let gray = host
            .get("metadata")
            .and_then(|m| m.get("gray-tag"))
            .and_then(Node::as_str)
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

fn build(instances: Vec<Labels>, service: &RegistryService) -> Result<Node, String> {
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
        let mut subset = Node::object([
            ("name", Node::string(name)),
            ("cluster", Node::string(service.cluster(name))),
        ]);
        if name == "canary" {
            subset.insert("canary", Node::new(Value::Bool(true)));
        }
        if name == "blue" || name == "green" {
            subset.insert("bluegreen", Node::string(name));
        }
        if let Some((weight, id)) = &gathered.weight {
            let number = json::parse(weight.trim().as_bytes())
                .ok()
                .filter(|node| node.as_number().is_some())
                .ok_or_else(|| {
                    format!("instance {id}: weight must be a number of percent, got {weight:?}")
                })?;
            subset.insert("weight", number);
        }
        if let Some((matches, id)) = &gathered.matches {
            subset.insert(
                "match",
                match_entries(matches).map_err(|e| format!("instance {id}: match {e}"))?,
            );
        }
        subset_list.push(subset);
    }
    let service = service.service_node(default, subset_list);
    Ok(Node::object([("services", Node::list(vec![service]))]))
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
fn match_entries(text: &str) -> Result<Node, String> {
    let value = json::parse(text.as_bytes())
        .map_err(|e| format!("is not JSON: {}", e.describe(text.as_bytes())))?;
    let Some(entries) = value.as_array() else {
        return Err("must be a JSON list of match entries".into());
    };
    let mut out = Vec::new();
    for entry in entries {
        let Some(members) = entry.as_object() else {
            return Err("entries must be objects".into());
        };
        let article_style = members
            .iter()
            .any(|member| ["header", "cookie", "uri"].contains(&member.key.as_str()));
        if !article_style {
            out.push(entry.clone());
            continue;
        }
        let mut converted = Node::object(Vec::<(String, Node)>::new());
        if let Some(headers) = entry.get("header").and_then(Node::as_array) {
            let null = Node::new(Value::Null);
            let list: Vec<Node> = headers
                .iter()
                .map(|h| {
                    Node::object([
                        ("name", h.get("key").unwrap_or(&null).clone()),
                        ("exact", h.get("value_match").unwrap_or(&null).clone()),
                    ])
                })
                .collect();
            converted.insert("headers", Node::list(list));
        }
        if let Some(regex) = entry.get("cookie").and_then(|c| c.get("regex")) {
            converted.insert("cookie_regex", regex.clone());
        }
        let prefixes: Vec<Node> = entry
            .get("uri")
            .and_then(Node::as_array)
            .into_iter()
            .flatten()
            .filter_map(|u| u.get("prefix"))
            .flat_map(|p| match p.as_array() {
                Some(list) => list.to_vec(),
                None => vec![p.clone()],
            })
            .collect();
        if prefixes.is_empty() {
            out.push(converted);
            continue;
        }
        // One path per entry: each prefix makes its own entry with the rest.
        for prefix in prefixes {
            let mut with_path = converted.clone();
            with_path.insert("path", Node::object([("prefix", prefix)]));
            out.push(with_path);
        }
    }
    Ok(Node::list(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_node;

    fn compiled(document: &Node) -> crate::rules::Rules {
        compile_node(document).unwrap()
    }

    fn node(text: &str) -> Node {
        json::parse(text.as_bytes()).unwrap()
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
            (br#"[{"ServiceID":"s"},{"ServiceID":"a","ServiceMeta":{"canary":"true","match":"{"}}]"#, "instance a: match is not JSON: EOF while parsing an object at line 1 column 2"),
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
        let errors = compile_node(&document).unwrap_err().to_string();
        assert_eq!(
            errors,
            "services[0].subsets[1].weight: must be between 0 and 100 (percent), got 120"
        );
    }

    #[test]
    fn service_settings_are_checked_when_configured() {
        let path = Path::of(&["source", "service"]);
        let good = node(
            r#"{"name": "b", "hosts": ["b.example.com"], "path_prefix": "/api/b", "sticky": {"header": "userid"}, "cluster_template": "outbound|80|{subset}|b"}"#,
        );
        let mut errors = ConfigErrors::default();
        let service = read_service_settings(&good, &path, &mut errors).unwrap();
        assert!(errors.is_empty());
        assert_eq!(service.cluster("canary"), "outbound|80|canary|b");
        assert_eq!(service.hosts.unwrap().to_json(), r#"["b.example.com"]"#);
        let cases = [
            (r#"{"hosts": ["x"]}"#, "source.service.name: is required: the graylane service name"),
            (r#"{"name": "b", "hosts": ["a.*.com"]}"#, "source.service.hosts[0]: \"a.*.com\": '*' is allowed only as a leading '*.'"),
            (r#"{"name": "b", "sticky": {"source_ip": false}}"#, "source.service.sticky.source_ip: must be true (leave sticky out for no sticky key)"),
            (r#"{"name": "b", "cluster_template": "{service}"}"#, "source.service.cluster_template: must be a string containing {subset}, such as \"{service}-{subset}\""),
            (r#"{"name": "b", "weight": 5}"#, "source.service.weight: unknown field; expected one of: cluster_template, hosts, name, path_prefix, sticky"),
            (r#"{"name": "b", "name": "c"}"#, "source.service.name: repeats a key of this object (which one counts would depend on the parser)"),
        ];
        for (value, want) in cases {
            let mut errors = ConfigErrors::default();
            assert!(
                read_service_settings(&node(value), &path, &mut errors).is_none(),
                "{value}"
            );
            assert_eq!(errors.0[0].to_string(), want);
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
        service.hosts = Some(node(r#"["user.example.com"]"#));
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
