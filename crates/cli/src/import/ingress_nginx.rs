//! A mainline Ingress and its canary Ingress (ingress-nginx's
//! `nginx.ingress.kubernetes.io/canary-*` annotations), as graylane services.
//!
//! One service per host and path of the mainline Ingress, its backend the
//! default subset `mainline`, the canary Ingress's backend for the same host
//! and path the subset `canary` (clusters named `SERVICE.NAMESPACE.svc:PORT`).
//! nginx's precedence, header, then cookie, then weight, becomes the order of
//! the service's rules: `canary-by-header` with `always` and `never` (or only
//! `canary-by-header-value`, else `canary-by-header-pattern`), then
//! `canary-by-cookie` with `always` and `never`, then `canary-weight` out of
//! `canary-weight-total` as the canary's weight. A value that is neither is
//! ignored by nginx and falls through to the next rule here too.

use serde_json::{json, Map, Value};

use super::{basis_points, header_safe, percent_value, scalar_text, Translation};

const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The annotations this translation reads on the canary Ingress.
const CANARY_ANNOTATIONS: &[&str] = &[
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
];

pub fn translate(documents: &[Value]) -> Result<Translation, String> {
    let mut out = Translation::default();
    let mut mainline = Vec::new();
    let mut canary = Vec::new();
    for document in documents {
        let kind = document.get("kind").and_then(Value::as_str).unwrap_or("?");
        if kind != "Ingress" {
            out.notes.push(format!("a {kind} is not routing: left out"));
            continue;
        }
        if annotation(document, "canary").as_deref() == Some("true") {
            canary.push(document);
        } else {
            mainline.push(document);
        }
    }
    let (mainline, canary) = match (mainline.as_slice(), canary.as_slice()) {
        ([mainline], [canary]) => (Some(*mainline), *canary),
        ([], [canary]) => (None, *canary),
        _ => {
            return Err(format!(
                "expected at most one mainline Ingress and one canary Ingress (annotation {PREFIX}canary: \"true\"), got {} and {}",
                mainline.len(),
                canary.len()
            ))
        }
    };
    let routes = mainline.map_or_else(Vec::new, |mainline| backends(mainline, &mut out));
    let canary_routes = backends(canary, &mut out);
    if mainline.is_some() && routes.is_empty() {
        return Err("the mainline Ingress routes no host and path to a service".into());
    }
    for annotation_name in mainline.map_or_else(Vec::new, annotations) {
        out.losses
            .push(format!("the mainline's annotation {annotation_name}"));
    }
    for annotation_name in annotations(canary) {
        let short = annotation_name
            .strip_prefix(PREFIX)
            .unwrap_or(&annotation_name);
        if !CANARY_ANNOTATIONS.contains(&short) {
            out.losses
                .push(format!("the canary's annotation {annotation_name}"));
        }
    }
    let rules = canary_rules(canary, &mut out);
    let weight = canary_weight(canary, &mut out)?;
    let base = mainline.map_or_else(|| name_of(canary), name_of);
    for (position, route) in routes.iter().enumerate() {
        let Some(canary_route) = canary_routes
            .iter()
            .find(|c| c.host == route.host && c.path == route.path)
        else {
            out.losses.push(format!(
                "host {} path {}: the canary Ingress has no backend for it, so nginx sends it all to the mainline; it is left out here",
                route.host.as_deref().unwrap_or("(any)"),
                route.path
            ));
            continue;
        };
        let mut service = Map::new();
        let name = if routes.len() == 1 {
            base.clone()
        } else {
            format!("{base}-{position}")
        };
        service.insert("name".into(), json!(name));
        if let Some(host) = &route.host {
            service.insert("hosts".into(), json!([host]));
        }
        if route.path != "/" {
            service.insert("path_prefix".into(), json!(route.path));
        }
        service.insert("default".into(), json!("mainline"));
        let mut canary_subset = Map::new();
        canary_subset.insert("name".into(), json!("canary"));
        canary_subset.insert("cluster".into(), json!(canary_route.cluster));
        if weight > 0 {
            canary_subset.insert("weight".into(), percent_value(weight));
        }
        service.insert(
            "subsets".into(),
            json!([{"name": "mainline", "cluster": route.cluster}, canary_subset]),
        );
        if !rules.is_empty() {
            service.insert("rules".into(), Value::Array(rules.clone()));
        }
        out.services.push(Value::Object(service));
    }
    unmerged_canaries(canary, &routes, &canary_routes, &mut out);
    out.notes.push(
        "graylane writes the gray tag header (x-gray-tag: canary) on requests it sends to the canary; nginx writes none"
            .into(),
    );
    Ok(out)
}

/// The canary's hosts and paths that no mainline backend has. nginx merges
/// a canary only into a mainline location of the same host and path and
/// drops the others ("unable to find real backend for alternative
/// backend"), so its default backend answers them 404 whatever the header,
/// cookie or weight: here a service without a default answers 404 too. It
/// comes after the mainline's services, so a mainline prefix that takes
/// the path in nginx still takes it first here.
fn unmerged_canaries(canary: &Value, routes: &[Route], canary_routes: &[Route], out: &mut Translation) {
    let base = name_of(canary);
    for (position, route) in canary_routes.iter().enumerate() {
        if routes
            .iter()
            .any(|mainline| mainline.host == route.host && mainline.path == route.path)
        {
            continue;
        }
        let mut service = Map::new();
        service.insert("name".into(), json!(format!("{base}-unmerged-{position}")));
        if let Some(host) = &route.host {
            service.insert("hosts".into(), json!([host]));
        }
        if route.path != "/" {
            service.insert("path_prefix".into(), json!(route.path));
        }
        service.insert("unclaimed_status".into(), json!(404));
        service.insert(
            "subsets".into(),
            json!([{"name": "canary", "cluster": route.cluster}]),
        );
        out.services.push(Value::Object(service));
        out.notes.push(format!(
            "host {} path {}: no mainline backend, so nginx drops the canary there and its default backend answers 404; a service without a default answers 404 here",
            route.host.as_deref().unwrap_or("(any)"),
            route.path
        ));
    }
}

/// One host and path of an Ingress and the cluster of its backend.
#[derive(Debug)]
struct Route {
    host: Option<String>,
    path: String,
    cluster: String,
}

fn backends(ingress: &Value, out: &mut Translation) -> Vec<Route> {
    let namespace = ingress
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let which = name_of(ingress);
    let empty = Vec::new();
    let mut routes = Vec::new();
    let rules = ingress
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for rule in rules {
        let host = rule.get("host").and_then(Value::as_str).map(str::to_string);
        let paths = rule
            .pointer("/http/paths")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for path in paths {
            let text = path
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            let kind = path
                .get("pathType")
                .and_then(Value::as_str)
                .unwrap_or("ImplementationSpecific");
            if kind == "Exact" {
                out.losses.push(format!(
                    "{which}: path {text} is Exact; graylane's path_prefix also takes longer paths"
                ));
            } else if text != "/" && !text.ends_with('/') {
                out.losses.push(format!(
                    "{which}: path {text} ({kind}) takes {text}/… but not {text}x in nginx; graylane's path_prefix takes both"
                ));
            }
            let Some(cluster) = backend_cluster(path.get("backend"), namespace) else {
                out.losses
                    .push(format!("{which}: path {text} has no service backend"));
                continue;
            };
            routes.push(Route {
                host: host.clone(),
                path: text,
                cluster,
            });
        }
    }
    if let Some(default) = ingress.pointer("/spec/defaultBackend") {
        out.losses.push(format!(
            "{which}: the defaultBackend ({}): graylane passes unclaimed requests on untouched",
            backend_cluster(Some(default), namespace).unwrap_or_default()
        ));
    }
    routes
}

/// `SERVICE.NAMESPACE.svc:PORT` (the port's number, or its name).
fn backend_cluster(backend: Option<&Value>, namespace: &str) -> Option<String> {
    let service = backend?.get("service")?;
    let name = service.get("name").and_then(Value::as_str)?;
    let port = service
        .pointer("/port/number")
        .or_else(|| service.pointer("/port/name"))
        .and_then(scalar_text)
        .unwrap_or_else(|| "80".into());
    Some(header_safe(&format!("{name}.{namespace}.svc:{port}")))
}

fn name_of(ingress: &Value) -> String {
    ingress
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("ingress")
        .to_string()
}

fn annotation(ingress: &Value, short: &str) -> Option<String> {
    ingress
        .pointer("/metadata/annotations")?
        .get(format!("{PREFIX}{short}"))
        .and_then(scalar_text)
}

/// The ingress-nginx annotations an Ingress carries.
fn annotations(ingress: &Value) -> Vec<String> {
    ingress
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|all| {
            all.keys()
                .filter(|k| k.starts_with(PREFIX))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The header and cookie rules, in nginx's order.
fn canary_rules(canary: &Value, out: &mut Translation) -> Vec<Value> {
    let to_canary = json!([{"subset": "canary", "weight": 100}]);
    let mut rules = Vec::new();
    let rule = |entry: Value, split: &Value| json!({"match": [entry], "split": split});
    if let Some(header) = annotation(canary, "canary-by-header") {
        let named = |matcher: Value| {
            let mut condition = json!({"name": header.to_ascii_lowercase()});
            if let (Some(c), Some(m)) = (condition.as_object_mut(), matcher.as_object()) {
                c.extend(m.clone());
            }
            json!({"headers": [condition]})
        };
        match (
            annotation(canary, "canary-by-header-value"),
            annotation(canary, "canary-by-header-pattern"),
        ) {
            (Some(value), pattern) => {
                if pattern.is_some() {
                    out.notes.push("canary-by-header-pattern is ignored beside canary-by-header-value, as in nginx".into());
                }
                rules.push(rule(named(json!({"exact": value})), &to_canary));
            }
            (None, Some(pattern)) => {
                out.notes.push(format!(
                    "canary-by-header-pattern {pattern:?} is a PCRE in nginx and a Rust regex here (the same for the usual patterns)"
                ));
                rules.push(rule(named(json!({"regex": pattern})), &to_canary));
            }
            (None, None) => {
                rules.push(rule(named(json!({"exact": "always"})), &to_canary));
                rules.push(rule(named(json!({"exact": "never"})), &json!([])));
            }
        }
    }
    if let Some(cookie) = annotation(canary, "canary-by-cookie") {
        let named = |value: &str| json!({"cookies": [{"name": cookie, "exact": value}]});
        rules.push(rule(named("always"), &to_canary));
        rules.push(rule(named("never"), &json!([])));
    }
    rules
}

/// `canary-weight` out of `canary-weight-total` (default 100), in basis points.
fn canary_weight(canary: &Value, out: &mut Translation) -> Result<u32, String> {
    let number = |short: &str| -> Result<Option<u64>, String> {
        annotation(canary, short)
            .map(|text| {
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{PREFIX}{short}: {text:?} is not a whole number"))
            })
            .transpose()
    };
    let Some(weight) = number("canary-weight")? else {
        return Ok(0);
    };
    let total = number("canary-weight-total")?.unwrap_or(100).max(1);
    let weight = weight.min(total);
    let (shares, exact) = basis_points(&[weight], total - weight);
    if !exact {
        out.notes.push(format!(
            "canary-weight {weight} of {total} is rounded down to two decimals of a percent"
        ));
    }
    Ok(shares.first().copied().unwrap_or(0))
}
