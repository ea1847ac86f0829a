//! An APISIX route with the `traffic-split` plugin, as a graylane service.
//!
//! The route's upstream is the default subset; every other upstream of
//! `weighted_upstreams` a subset (cluster: its `upstream_id`, or its `name`).
//! A rule with `match` becomes one of the service's `rules`, each `match`
//! item a match entry (items are alternatives, `vars` inside one all hold);
//! the first rule without `match` gives the service's own weights, and the
//! rules after it are never reached. Weights become percent of the rule's
//! total, the route's upstream taking the rest.
//!
//! `vars`: `arg_NAME` is a query parameter, `http_NAME` a header (`_` read
//! as `-`), `cookie_NAME` a cookie, `uri` the path, `request_method` the
//! method. Operators: `==` exact, `~=` exact inverted, `>` `<` `>=` `<=`
//! comparisons, `~~` regex, `~*` case-insensitive regex, `IN` in, `HAS`
//! exact on any occurrence, `!` before an operator inverts it; `AND`, `OR`,
//! `!AND` and `!OR` groups one level deep.

use serde_json::{json, Map, Value};

use super::{basis_points, header_safe, percent_value, scalar_text, Translation};

/// One condition of a `vars` expression, as graylane states it.
#[derive(Debug, Clone)]
enum Cond {
    /// `("headers" | "cookies" | "query" | "form", condition object)`.
    Named(&'static str, Value),
    /// A string-match object for the path.
    Path(Value),
    Method(Vec<String>),
    /// An entry that must not hold.
    Not(Vec<Cond>),
}

impl Cond {
    fn inverted(self) -> Cond {
        let flip = |mut object: Value| {
            let was = object
                .get("invert")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if let Some(map) = object.as_object_mut() {
                if was {
                    map.remove("invert");
                } else {
                    map.insert("invert".into(), json!(true));
                }
            }
            object
        };
        match self {
            Cond::Named(kind, object) => Cond::Named(kind, flip(object)),
            Cond::Path(object) => Cond::Path(flip(object)),
            Cond::Method(_) => Cond::Not(vec![self]),
            Cond::Not(inner) => match inner.as_slice() {
                [single] => single.clone(),
                _ => Cond::Not(inner),
            },
        }
    }
}

/// Most match entries one `vars` expression may expand to.
const MAX_ALTERNATIVES: usize = 64;

/// `documents`: the route (one document), or an Admin API answer with the
/// route under `value`.
pub fn translate(documents: &[Value]) -> Result<Translation, String> {
    let [document] = documents else {
        return Err(format!(
            "expected one APISIX route, got {} documents",
            documents.len()
        ));
    };
    let route = match document.get("value") {
        Some(value) if value.get("plugins").is_some() => value,
        _ => document,
    };
    let route = route
        .as_object()
        .ok_or("an APISIX route is a JSON object")?;
    let split = route
        .get("plugins")
        .and_then(|plugins| plugins.get("traffic-split"))
        .ok_or("the route has no plugins.traffic-split")?;
    let mut out = Translation::default();
    let name = route
        .get("name")
        .or_else(|| route.get("id"))
        .and_then(scalar_text)
        .unwrap_or_else(|| "route".into());
    let mut service = Map::new();
    service.insert("name".into(), json!(name));
    read_route_match(route, &mut service, &mut out);

    let mut subsets = Subsets::default();
    let default = subsets.route_default(route, &mut out);
    service.insert("default".into(), json!(default));

    let plugin = split
        .as_object()
        .ok_or("plugins.traffic-split is not an object")?;
    for key in plugin
        .keys()
        .filter(|key| *key != "rules" && *key != "_meta")
    {
        out.losses.push(format!("plugins.traffic-split.{key}"));
    }
    let empty = Vec::new();
    let rules = plugin
        .get("rules")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut graylane_rules = Vec::new();
    for (position, rule) in rules.iter().enumerate() {
        let at = format!("traffic-split.rules[{position}]");
        let weighted = rule
            .get("weighted_upstreams")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let (split, shares_exact) = subsets.split(weighted, position, &at, &mut out);
        if !shares_exact {
            out.notes.push(format!(
                "{at}: the weights are shares of their total, rounded down to two decimals of a percent here, the route's upstream taking what rounding leaves"
            ));
        }
        let matches = rule
            .get("match")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty());
        let Some(matches) = matches else {
            for (subset, weight) in &split {
                subsets.set_weight(subset, *weight);
            }
            if position + 1 < rules.len() {
                out.notes.push(format!(
                    "{at} has no match, so it takes every request: the rules after it are never reached in APISIX either and are left out"
                ));
            }
            break;
        };
        let entries = match_entries(matches, &at, &mut out);
        if entries.is_empty() {
            continue;
        }
        let split: Vec<Value> = split
            .iter()
            .filter(|(_, weight)| *weight > 0)
            .map(|(subset, weight)| json!({"subset": subset, "weight": percent_value(*weight)}))
            .collect();
        graylane_rules.push(json!({"match": entries, "split": split}));
    }
    service.insert("subsets".into(), Value::Array(subsets.into_values()));
    if !graylane_rules.is_empty() {
        service.insert("rules".into(), Value::Array(graylane_rules));
    }
    if let Some(plugins) = route.get("plugins").and_then(Value::as_object) {
        for plugin in plugins.keys().filter(|p| *p != "traffic-split") {
            out.notes.push(format!(
                "plugin {plugin} is not part of a graylane document: keep it on the gateway's route"
            ));
        }
    }
    out.notes.push(
        "graylane writes the gray tag header (x-gray-tag: SUBSET) on requests routed to a non-default upstream; APISIX's traffic-split writes none"
            .into(),
    );
    out.services.push(Value::Object(service));
    Ok(out)
}

/// The route's own matching: `hosts`, the path, and `vars` on headers as the
/// service's `headers`; what else selects requests cannot be said.
fn read_route_match(
    route: &Map<String, Value>,
    service: &mut Map<String, Value>,
    out: &mut Translation,
) {
    let hosts: Vec<String> = match (route.get("hosts"), route.get("host")) {
        (Some(Value::Array(hosts)), _) => hosts.iter().filter_map(scalar_text).collect(),
        (_, Some(host)) => scalar_text(host).into_iter().collect(),
        _ => Vec::new(),
    };
    if !hosts.is_empty() {
        service.insert("hosts".into(), json!(hosts));
    }
    let uris: Vec<String> = match (route.get("uris"), route.get("uri")) {
        (Some(Value::Array(uris)), _) => uris.iter().filter_map(scalar_text).collect(),
        (_, Some(uri)) => scalar_text(uri).into_iter().collect(),
        _ => Vec::new(),
    };
    if let Some(uri) = uris.first() {
        let prefix = match uri.strip_suffix('*') {
            Some(prefix) => prefix.to_string(),
            None => {
                out.losses.push(format!(
                    "uri {uri:?} is an exact path in APISIX; graylane's path_prefix also takes longer paths"
                ));
                uri.clone()
            }
        };
        if prefix != "/" {
            service.insert("path_prefix".into(), json!(prefix));
        }
    }
    if uris.len() > 1 {
        out.losses.push(format!(
            "uris beyond the first ({}): a graylane service has one path_prefix",
            uris.get(1..).unwrap_or_default().join(", ")
        ));
    }
    for key in ["methods", "remote_addrs", "remote_addr", "filter_func"] {
        if route.contains_key(key) {
            out.losses.push(format!(
                "the route's {key}: a graylane service selects by host, path and headers"
            ));
        }
    }
    if let Some(vars) = route.get("vars").and_then(Value::as_array) {
        let mut entries = Vec::new();
        let mut losses = Vec::new();
        match expression(vars, &mut losses) {
            Some(alternatives) if alternatives.len() == 1 => {
                for cond in alternatives.into_iter().flatten() {
                    match cond {
                        Cond::Named("headers", condition) => entries.push(condition),
                        _ => losses.push("a condition that is not on a header".to_string()),
                    }
                }
            }
            Some(_) => losses.push("alternatives (OR)".into()),
            None => {}
        }
        for loss in losses {
            out.losses.push(format!(
                "the route's vars: {loss}: a graylane service is scoped by header conditions only"
            ));
        }
        if !entries.is_empty() {
            service.insert("headers".into(), Value::Array(entries));
        }
    }
}

/// The match entries of a rule's `match` list.
fn match_entries(matches: &[Value], at: &str, out: &mut Translation) -> Vec<Value> {
    let mut entries = Vec::new();
    for (position, item) in matches.iter().enumerate() {
        let item_at = format!("{at}.match[{position}]");
        let Some(vars) = item.get("vars").and_then(Value::as_array) else {
            out.losses.push(format!("{item_at}: no vars list"));
            continue;
        };
        let mut losses = Vec::new();
        if let Some(alternatives) = expression(vars, &mut losses) {
            for conds in alternatives {
                match entry(&conds) {
                    Ok(entry) => entries.push(entry),
                    Err(loss) => losses.push(loss),
                }
            }
        }
        for loss in losses {
            out.losses.push(format!("{item_at}.vars: {loss}"));
        }
    }
    entries
}

/// A `vars` expression as alternatives, each a list of conditions that all
/// hold; `None` (with the reason in `losses`) when it cannot be said.
fn expression(items: &[Value], losses: &mut Vec<String>) -> Option<Vec<Vec<Cond>>> {
    let (operator, operands) = match items.first().and_then(Value::as_str) {
        Some(op) if ["AND", "OR", "!AND", "!OR"].contains(&op.to_ascii_uppercase().as_str()) => {
            (op.to_ascii_uppercase(), items.get(1..).unwrap_or_default())
        }
        _ if items.first().is_some_and(Value::is_string) => {
            // A single condition written without a list around it.
            return condition(items, losses).map(|c| vec![vec![c]]);
        }
        _ => ("AND".to_string(), items),
    };
    let mut parts: Vec<Vec<Vec<Cond>>> = Vec::new();
    for operand in operands {
        let Some(list) = operand.as_array() else {
            losses.push(format!("{} is not a condition", operand));
            return None;
        };
        parts.push(expression(list, losses)?);
    }
    let simple = |parts: &[Vec<Vec<Cond>>]| -> Option<Vec<Cond>> {
        parts
            .iter()
            .map(|alternatives| match alternatives.as_slice() {
                [single] if single.len() == 1 => single.first().cloned(),
                _ => None,
            })
            .collect()
    };
    match operator.as_str() {
        "OR" => Some(parts.into_iter().flatten().collect()),
        "AND" => {
            let mut product: Vec<Vec<Cond>> = vec![Vec::new()];
            for alternatives in parts {
                let mut next = Vec::new();
                for done in &product {
                    for alternative in &alternatives {
                        let mut joined = done.clone();
                        joined.extend(alternative.iter().cloned());
                        next.push(joined);
                    }
                }
                if next.len() > MAX_ALTERNATIVES {
                    losses.push(format!(
                        "an expression of more than {MAX_ALTERNATIVES} alternatives"
                    ));
                    return None;
                }
                product = next;
            }
            Some(product)
        }
        "!AND" => match parts.as_slice() {
            [alternatives] if alternatives.len() == 1 => Some(vec![vec![Cond::Not(
                alternatives.first().cloned().unwrap_or_default(),
            )]]),
            _ => match simple(&parts) {
                Some(conds) => Some(vec![vec![Cond::Not(conds)]]),
                None => {
                    losses.push("!AND over groups".into());
                    None
                }
            },
        },
        _ => match simple(&parts) {
            // not (a or b) = not a and not b
            Some(conds) => Some(vec![conds.into_iter().map(Cond::inverted).collect()]),
            None => {
                losses.push("!OR over groups".into());
                None
            }
        },
    }
}

/// `[var, op, value]` or `[var, "!", op, value]`.
fn condition(items: &[Value], losses: &mut Vec<String>) -> Option<Cond> {
    let shown = Value::Array(items.to_vec()).to_string();
    let (var, negated, op, value) = match items {
        [Value::String(var), Value::String(bang), Value::String(op), value] if bang == "!" => {
            (var, true, op, value)
        }
        [Value::String(var), Value::String(op), value] => (var, false, op, value),
        _ => {
            losses.push(format!("{shown} is not [var, operator, value]"));
            return None;
        }
    };
    let op = op.to_ascii_uppercase();
    let translated = match (var.as_str(), op.as_str()) {
        ("request_method", "==") => {
            scalar_text(value).map(|m| Cond::Method(vec![m.to_ascii_uppercase()]))
        }
        ("request_method", "IN") => value
            .as_array()
            .and_then(|list| {
                list.iter()
                    .map(|m| scalar_text(m).map(|m| m.to_ascii_uppercase()))
                    .collect()
            })
            .map(Cond::Method),
        ("request_method", "~=") => {
            scalar_text(value).map(|m| Cond::Method(vec![m.to_ascii_uppercase()]).inverted())
        }
        ("request_method", _) => None,
        _ => string_match(&op, value).and_then(|(matcher, invert)| target(var, matcher, invert)),
    };
    match translated {
        Some(cond) if negated => Some(cond.inverted()),
        Some(cond) => Some(cond),
        None => {
            losses.push(format!("{shown}: {}", why_not(var, &op)));
            None
        }
    }
}

fn why_not(var: &str, op: &str) -> String {
    if !["arg_", "http_", "cookie_", "post_arg_"]
        .iter()
        .any(|p| var.starts_with(p))
        && !["uri", "request_method"].contains(&var)
    {
        return format!("the variable {var} has no graylane counterpart (arg_*, http_*, cookie_*, uri and request_method do)");
    }
    format!("the operator {op} with this value has no graylane counterpart here")
}

/// A string match for an operator and its value, and whether it is inverted.
fn string_match(op: &str, value: &Value) -> Option<(Value, bool)> {
    // Whole numbers stay whole in the document (`23`, not `23.0`).
    let number = || -> Option<Value> {
        match value {
            Value::Number(n) => Some(Value::Number(n.clone())),
            Value::String(text) => match text.trim().parse::<i64>() {
                Ok(whole) => Some(json!(whole)),
                Err(_) => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .map(|n| json!(n)),
            },
            _ => None,
        }
    };
    Some(match op {
        "==" | "HAS" => (json!({"exact": scalar_text(value)?}), false),
        "~=" => (json!({"exact": scalar_text(value)?}), true),
        ">" => (json!({"gt": number()?}), false),
        ">=" => (json!({"ge": number()?}), false),
        "<" => (json!({"lt": number()?}), false),
        "<=" => (json!({"le": number()?}), false),
        "~~" => (json!({"regex": scalar_text(value)?}), false),
        "~*" => (
            json!({"regex": format!("(?i){}", scalar_text(value)?)}),
            false,
        ),
        "IN" => {
            let values: Option<Vec<String>> = value.as_array()?.iter().map(scalar_text).collect();
            (json!({"in": values.filter(|v| !v.is_empty())?}), false)
        }
        _ => return None,
    })
}

/// Where a variable's value is read: `arg_`, `http_`, `cookie_`, `uri`.
fn target(var: &str, mut matcher: Value, invert: bool) -> Option<Cond> {
    if invert {
        if let Some(map) = matcher.as_object_mut() {
            map.insert("invert".into(), json!(true));
        }
    }
    let named = |kind: &'static str, name: String, matcher: Value| {
        let mut condition = Map::new();
        condition.insert("name".into(), json!(name));
        if let Some(map) = matcher.as_object() {
            condition.extend(map.clone());
        }
        Cond::Named(kind, Value::Object(condition))
    };
    if let Some(name) = var.strip_prefix("http_") {
        return Some(named(
            "headers",
            name.replace('_', "-").to_ascii_lowercase(),
            matcher,
        ));
    }
    if let Some(name) = var.strip_prefix("arg_") {
        return Some(named("query", name.to_string(), matcher));
    }
    if let Some(name) = var.strip_prefix("cookie_") {
        return Some(named("cookies", name.to_string(), matcher));
    }
    if let Some(name) = var.strip_prefix("post_arg_") {
        return Some(named("form", name.to_string(), matcher));
    }
    (var == "uri").then_some(Cond::Path(matcher))
}

/// One graylane match entry holding every condition of `conds`.
fn entry(conds: &[Cond]) -> Result<Value, String> {
    let mut entry = Map::new();
    for cond in conds {
        match cond {
            Cond::Named(kind, condition) => {
                let list = entry.entry(kind.to_string()).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(condition.clone());
                }
            }
            Cond::Path(matcher) if !entry.contains_key("path") => {
                entry.insert("path".into(), matcher.clone());
            }
            Cond::Method(methods) if !entry.contains_key("method") => {
                entry.insert("method".into(), json!(methods));
            }
            Cond::Not(inner) if !entry.contains_key("not") => {
                entry.insert("not".into(), self::entry(inner)?);
            }
            Cond::Path(_) => return Err("two conditions on uri in one group".into()),
            Cond::Method(_) => return Err("two conditions on request_method in one group".into()),
            Cond::Not(_) => return Err("two negated groups in one group".into()),
        }
    }
    if entry.is_empty() {
        return Err("an empty group".into());
    }
    Ok(Value::Object(entry))
}

/// The subsets the route's upstreams become, in order of first mention; the
/// first is the route's own upstream, the default.
#[derive(Debug, Default)]
struct Subsets {
    /// (identity, subset object).
    list: Vec<(String, Map<String, Value>)>,
}

impl Subsets {
    /// The route's upstream as the default subset; its name.
    fn route_default(&mut self, route: &Map<String, Value>, out: &mut Translation) -> String {
        if let Some(id) = route.get("upstream_id").and_then(scalar_text) {
            return self.add(format!("id:{id}"), format!("upstream-{id}"), id);
        }
        if let Some(upstream) = route.get("upstream") {
            return self.inline(upstream, "route-upstream", out);
        }
        if let Some(id) = route.get("service_id").and_then(scalar_text) {
            out.notes.push(format!(
                "the route's upstream comes from service {id}: its cluster is named service-{id} here"
            ));
            return self.add(
                format!("service:{id}"),
                format!("service-{id}"),
                format!("service-{id}"),
            );
        }
        out.losses.push(
            "the route names no upstream: its default is the cluster route-upstream here".into(),
        );
        self.add(
            "route".into(),
            "route-upstream".into(),
            "route-upstream".into(),
        )
    }

    fn inline(&mut self, upstream: &Value, fallback: &str, out: &mut Translation) -> String {
        let identity = format!("inline:{upstream}");
        if let Some((_, subset)) = self.list.iter().find(|(known, _)| *known == identity) {
            return subset.get("name").and_then(scalar_text).unwrap_or_default();
        }
        let name = header_safe(
            &upstream
                .get("name")
                .and_then(scalar_text)
                .unwrap_or_else(|| fallback.to_string()),
        );
        out.notes.push(format!(
            "the inline upstream {name} is the cluster {name}: define it on the gateway with its nodes ({})",
            upstream.get("nodes").map_or_else(|| "none given".to_string(), Value::to_string)
        ));
        self.add(identity, name.clone(), name)
    }

    fn add(&mut self, identity: String, name: String, cluster: String) -> String {
        let mut subset = Map::new();
        subset.insert("name".into(), json!(name));
        subset.insert("cluster".into(), json!(cluster));
        self.list.push((identity, subset));
        name
    }

    /// A rule's `weighted_upstreams` as `(subset name, basis points)` for
    /// the upstreams other than the route's, and whether the shares are exact.
    fn split(
        &mut self,
        weighted: &[Value],
        rule: usize,
        at: &str,
        out: &mut Translation,
    ) -> (Vec<(String, u32)>, bool) {
        let default_identity = self.list.first().map(|(identity, _)| identity.clone());
        let mut names: Vec<String> = Vec::new();
        let mut weights: Vec<u64> = Vec::new();
        let mut default_weight = 0u64;
        for (position, upstream) in weighted.iter().enumerate() {
            let weight = upstream.get("weight").and_then(Value::as_u64).unwrap_or(1);
            let name = if let Some(id) = upstream.get("upstream_id").and_then(scalar_text) {
                let identity = format!("id:{id}");
                match self.list.iter().find(|(known, _)| *known == identity) {
                    Some((_, subset)) => {
                        subset.get("name").and_then(scalar_text).unwrap_or_default()
                    }
                    None => self.add(identity, format!("upstream-{id}"), id),
                }
            } else if let Some(inline) = upstream.get("upstream") {
                self.inline(inline, &format!("rule{rule}-upstream{position}"), out)
            } else {
                default_weight += weight;
                continue;
            };
            let is_default = self
                .list
                .iter()
                .find(|(_, subset)| {
                    subset.get("name").and_then(Value::as_str) == Some(name.as_str())
                })
                .map(|(identity, _)| Some(identity) == default_identity.as_ref())
                .unwrap_or(false);
            if is_default {
                default_weight += weight;
            } else if let Some(at) = names.iter().position(|n| *n == name) {
                if let Some(w) = weights.get_mut(at) {
                    *w += weight;
                }
            } else {
                names.push(name);
                weights.push(weight);
            }
        }
        if weights.iter().sum::<u64>() + default_weight == 0 {
            out.losses.push(format!(
                "{at}: every weight is 0: graylane sends these requests to the route's upstream"
            ));
        }
        let (shares, exact) = basis_points(&weights, default_weight);
        (names.into_iter().zip(shares).collect(), exact)
    }

    fn set_weight(&mut self, name: &str, basis_points: u32) {
        if let Some((_, subset)) = self
            .list
            .iter_mut()
            .find(|(_, subset)| subset.get("name").and_then(Value::as_str) == Some(name))
        {
            if basis_points > 0 {
                subset.insert("weight".into(), percent_value(basis_points));
            }
        }
    }

    fn into_values(self) -> Vec<Value> {
        self.list
            .into_iter()
            .map(|(_, subset)| Value::Object(subset))
            .collect()
    }
}
