//! One entry of `services`: where it applies (hosts, path prefix), its
//! subsets, the default, the sticky key, and the weight layout.

use std::collections::BTreeSet;

use super::limits::{Budget, Length};
use super::matching::read_named_matches;
use super::names::{check_header_name, parse_host_pattern};
use super::rule::{read_rules, weights_over_100};
use super::subset::read_subset;
use crate::json::Node;
use crate::read::{wrong_type, ConfigErrors, Object, Path, Refusal};
use crate::affinity::LaneCookie;
use crate::rules::{HostPattern, MirrorTo, PinCookie, Service, StickyKey, Subset};
use crate::split::WeightTable;

pub(crate) fn read_service(
    value: &Node,
    path: &Path,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<Service> {
    let mut object = Object::new(value, path, errors)?;
    let name = object
        .non_empty_string("name", true, errors)
        .filter(|(name, name_path)| {
            let node = value.get("name").unwrap_or(value);
            budget.string(name, Length::Name, name_path, node, errors)
        })
        .map(|(name, _)| name);
    let hosts = read_hosts(&mut object, errors);
    let path_prefix = match object.string("path_prefix", errors) {
        Some((prefix, _)) if prefix.starts_with('/') => prefix,
        Some((prefix, prefix_path)) => {
            if let Some((node, _)) = object.get("path_prefix") {
                errors.push(
                    &prefix_path,
                    node,
                    format!("must start with '/', got {prefix:?}"),
                );
            }
            "/".into()
        }
        None => "/".into(),
    };
    let headers = read_named_matches(&mut object, "headers", budget, errors, |name| {
        check_header_name(name).map(|()| name.to_ascii_lowercase())
    });
    let default = object.non_empty_string("default", false, errors);
    let unclaimed_status = read_unclaimed_status(&mut object, default.is_some(), errors);
    let sticky = read_sticky(&mut object, errors);
    let pin = read_cookie(&mut object, "pin_cookie", "graylane_pin", errors).map(|(cookie, _)| cookie);
    let lane_cookie = read_cookie(&mut object, "lane_cookie", "graylane_lane", errors);

    let mut subsets: Vec<(usize, Subset, &Node)> = Vec::new();
    let mut subsets_path = object.child("subsets");
    let mut subsets_node = value;
    match object.array("subsets", errors) {
        Some((items, list_path)) => {
            subsets_path = list_path;
            if let Some((node, _)) = object.get("subsets") {
                subsets_node = node;
                if items.is_empty() {
                    errors.push(&subsets_path, node, "must list at least one subset");
                }
                let limit = budget.limits.subsets_per_service;
                let what = "subsets in this service";
                if !budget.list(
                    what,
                    "subsets_per_service",
                    limit,
                    items.len(),
                    (&subsets_path, node),
                    errors,
                ) {
                    return None;
                }
            }
            for (position, item) in items.iter().enumerate() {
                if let Some(subset) =
                    read_subset(item, &subsets_path.index(position), budget, errors)
                {
                    subsets.push((position, subset, item));
                }
            }
        }
        None if !object.has("subsets") => object.missing("subsets", errors, None),
        None => {}
    }
    let names: Vec<&str> = subsets.iter().map(|(_, s, _)| s.name.as_str()).collect();
    let default_index = default
        .as_ref()
        .and_then(|(name, _)| names.iter().position(|n| n == name));
    let rules = read_rules(&mut object, &names, default_index, budget, errors);
    object.finish(&[], errors);

    check_unique(errors, &subsets_path, &subsets, "name", |subset| {
        &subset.name
    });
    check_unique(errors, &subsets_path, &subsets, "tag", |subset| &subset.tag);

    // Without a default, the index past the subsets stands for "no
    // subset": the weight layout fills its gaps with it, and what lands
    // there gets the local reply.
    let default = match default {
        None => Some(subsets.len()),
        Some((default_name, default_path)) => {
            let found = subsets
                .iter()
                .position(|(_, subset, _)| subset.name == default_name);
            if found.is_none() {
                let known: Vec<&str> = subsets.iter().map(|(_, s, _)| s.name.as_str()).collect();
                let node = value.get("default").unwrap_or(value);
                errors.push(
                    &default_path,
                    node,
                    format!(
                        "names no subset of this service: {default_name:?} (subsets: {})",
                        known.join(", ")
                    ),
                );
            }
            found
        }
    };
    let default = default?;

    let weighted: Vec<(usize, u32)> = subsets
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != default)
        .map(|(index, (_, subset, _))| (index, subset.weight))
        .collect();
    let parts: Vec<(String, u32)> = subsets
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != default)
        .map(|(_, (position, subset, _))| (format!("subsets[{position}]"), subset.weight))
        .collect();
    if let Some(reason) = weights_over_100("the non-default subsets", &parts) {
        errors.push(&subsets_path, subsets_node, reason);
    }

    let mirror = read_mirror_subset(&subsets, default, &subsets_path, errors);
    let lane_cookie_at = (value.get("lane_cookie").unwrap_or(value), path.key("lane_cookie"));
    let affinity = read_affinity(lane_cookie_at, lane_cookie, pin.as_ref(), &subsets, &subsets_path, budget, errors);

    Some(Service {
        name: name?,
        hosts,
        path_prefix,
        default,
        sticky,
        headers,
        rules,
        weights: WeightTable::new(&weighted),
        subsets: subsets.into_iter().map(|(_, subset, _)| subset).collect(),
        mirror,
        pin,
        affinity,
        unclaimed_status,
    })
}

/// The service's lane cookie, when a subset has `affinity`: `lane_cookie`'s
/// settings (or the defaults) and the configuration's keys. An edge that
/// does not trust tags honours only signed cookies, so there affinity needs
/// `lane_keys`.
fn read_affinity(
    (lane_cookie_node, lane_cookie_path): (&Node, Path),
    lane_cookie: Option<(PinCookie, u64)>,
    pin: Option<&PinCookie>,
    subsets: &[(usize, Subset, &Node)],
    subsets_path: &Path,
    budget: &Budget,
    errors: &mut ConfigErrors,
) -> Option<LaneCookie> {
    let with_affinity: Vec<(usize, &Node)> = subsets
        .iter()
        .filter(|(_, subset, _)| subset.affinity)
        .map(|(position, _, node)| (*position, *node))
        .collect();
    let Some(&(first, first_node)) = with_affinity.first() else {
        if lane_cookie.is_some() {
            errors.push(
                &lane_cookie_path,
                lane_cookie_node,
                "no subset of this service has affinity: true, so no lane cookie is ever set",
            );
        }
        return None;
    };
    if !budget.trust_tag && budget.lane_keys.is_empty() {
        errors.push(
            &subsets_path.index(first).key("affinity"),
            first_node.get("affinity").unwrap_or(first_node),
            "trust_tag is false, so only a signed lane cookie may pick a lane: give lane_keys in the plugin configuration",
        );
        return None;
    }
    let (cookie, max_age_s) = match lane_cookie {
        Some(settings) => settings,
        None => cookie_settings("graylane_lane", CookieAttributes::default()),
    };
    if pin.is_some_and(|pin| pin.name == cookie.name) {
        errors.push(
            &lane_cookie_path.key("name"),
            lane_cookie_node.get("name").unwrap_or(lane_cookie_node),
            "must differ from pin_cookie's name",
        );
    }
    Some(LaneCookie {
        cookie,
        max_age_s,
        keys: budget.lane_keys.clone(),
    })
}

/// `unclaimed_status`: the status answered, for a service without a
/// default, to the requests nothing claimed. Only such a service may give
/// it, since with a default nothing is left unclaimed.
fn read_unclaimed_status(
    object: &mut Object<'_>,
    has_default: bool,
    errors: &mut ConfigErrors,
) -> Option<u16> {
    const NOT_FOUND: u64 = 404;
    if has_default {
        if let Some((node, path)) = object.get("unclaimed_status") {
            errors.push(
                &path,
                node,
                "applies only to a service without a default (with one, the default takes what nothing else claimed)",
            );
        }
        return None;
    }
    let status = object.integer("unclaimed_status", (200, 599), NOT_FOUND, errors);
    u16::try_from(status).ok()
}

/// At most one subset of a service receives copies (the gateway mirrors to
/// the one cluster its header names), and not the default, which serves the
/// requests it would copy.
fn read_mirror_subset(
    subsets: &[(usize, Subset, &Node)],
    default: usize,
    subsets_path: &Path,
    errors: &mut ConfigErrors,
) -> Option<MirrorTo> {
    let mut mirrors = subsets
        .iter()
        .enumerate()
        .filter_map(|(index, (position, subset, node))| Some((index, *position, subset.mirror.as_ref()?, *node)));
    let (index, position, (share, methods), node) = mirrors.next()?;
    for (_, other, _, other_node) in mirrors {
        let at = other_node.get("mirror").unwrap_or(other_node);
        errors.push(
            &subsets_path.index(other).key("mirror"),
            at,
            format!("a second mirror in this service (subsets[{position}] has one); the gateway copies to one cluster"),
        );
    }
    if index == default {
        let at = node.get("mirror").unwrap_or(node);
        errors.push(
            &subsets_path.index(position).key("mirror"),
            at,
            "the default subset serves what it would copy; put the mirror on another subset",
        );
        return None;
    }
    Some(MirrorTo {
        subset: index,
        share: *share,
        methods: methods.clone(),
    })
}

fn check_unique<T>(
    errors: &mut ConfigErrors,
    list_path: &Path,
    items: &[(usize, T, &Node)],
    field: &str,
    key: impl Fn(&T) -> &String,
) {
    let mut seen = BTreeSet::new();
    for (position, item, node) in items {
        let value = key(item);
        if !seen.insert(value.as_str()) {
            let at = node.get(field).unwrap_or(node);
            errors.push(
                &list_path.index(*position).key(field),
                at,
                format!("repeats the {field} {value:?} of an earlier subset"),
            );
        }
    }
}

fn read_hosts(object: &mut Object<'_>, errors: &mut ConfigErrors) -> Vec<HostPattern> {
    let Some((items, path)) = object.array("hosts", errors) else {
        return vec![HostPattern::Any];
    };
    if items.is_empty() {
        if let Some((node, _)) = object.get("hosts") {
            errors.push(
                &path,
                node,
                "must list at least one host (leave the field out to match any host)",
            );
        }
    }
    let mut hosts = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let item_path = path.index(position);
        match item.as_str() {
            Some(host) => match parse_host_pattern(host) {
                Ok(pattern) => hosts.push(pattern),
                Err(reason) => errors.push(&item_path, item, reason),
            },
            None => errors.push(&item_path, item, wrong_type("a string", item)),
        }
    }
    hosts
}

/// `pin_cookie` and `lane_cookie`: `{"name"?, "max_age_s"?, "path"?,
/// "domain"?, "secure"?, "http_only"?, "same_site"?}`. The cookie and its
/// `Max-Age`.
fn read_cookie(
    object: &mut Object<'_>,
    field: &'static str,
    default_name: &str,
    errors: &mut ConfigErrors,
) -> Option<(PinCookie, u64)> {
    let (value, path) = object.get(field)?;
    let mut pin = Object::new(value, &path, errors)?;
    let cookie_token = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    let attribute_value = |text: &str| text.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b';');
    let mut text_field = |pin: &mut Object<'_>, field: &'static str, ok: &dyn Fn(&str) -> bool, what: &str| {
        let (text, field_path) = pin.string(field, errors)?;
        if ok(&text) {
            return Some(text);
        }
        if let Some((node, _)) = pin.get(field) {
            errors.push(&field_path, node, format!("{text:?} is not {what}"));
        }
        None
    };
    let name = text_field(&mut pin, "name", &cookie_token, "a cookie name").unwrap_or_else(|| default_name.into());
    let defaults = CookieAttributes::default();
    let path = text_field(&mut pin, "path", &|t: &str| t.starts_with('/') && attribute_value(t), "a path starting with '/'")
        .unwrap_or(defaults.path);
    let domain = text_field(&mut pin, "domain", &|t: &str| !t.is_empty() && attribute_value(t), "a domain");
    let same_site = text_field(&mut pin, "same_site", &|t: &str| matches!(t, "Strict" | "Lax" | "None"), "Strict, Lax or None")
        .unwrap_or(defaults.same_site);
    let max_age = pin.integer("max_age_s", (1, 34_560_000), defaults.max_age, errors);
    let secure = pin.bool("secure", errors).map_or(defaults.secure, |(flag, _)| flag);
    let http_only = pin.bool("http_only", errors).map_or(defaults.http_only, |(flag, _)| flag);
    pin.finish(&[], errors);
    let attributes = CookieAttributes { max_age, path, domain, secure, http_only, same_site };
    Some(cookie_settings(&name, attributes))
}

/// A cookie's attributes after its value, as `pin_cookie` and
/// `lane_cookie` give them.
struct CookieAttributes {
    max_age: u64,
    path: String,
    domain: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: String,
}

impl Default for CookieAttributes {
    fn default() -> Self {
        CookieAttributes {
            max_age: 86_400,
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: "Lax".into(),
        }
    }
}

fn cookie_settings(name: &str, settings: CookieAttributes) -> (PinCookie, u64) {
    let CookieAttributes { max_age, path, domain, secure, http_only, same_site } = settings;
    let mut attributes = format!("; Max-Age={max_age}; Path={path}");
    if let Some(domain) = domain {
        attributes.push_str(&format!("; Domain={domain}"));
    }
    if secure {
        attributes.push_str("; Secure");
    }
    if http_only {
        attributes.push_str("; HttpOnly");
    }
    attributes.push_str(&format!("; SameSite={same_site}"));
    (PinCookie { name: name.to_string(), attributes }, max_age)
}

fn read_sticky(object: &mut Object<'_>, errors: &mut ConfigErrors) -> Option<StickyKey> {
    let (value, path) = object.get("sticky")?;
    let mut sticky = Object::new(value, &path, errors)?;
    let header = sticky.non_empty_string("header", false, errors);
    let cookie = sticky.non_empty_string("cookie", false, errors);
    let source_ip = sticky.bool("source_ip", errors);
    sticky.finish(&[], errors);
    let given = usize::from(header.is_some())
        + usize::from(cookie.is_some())
        + usize::from(source_ip.is_some());
    if given != 1 {
        errors.push(
            &path,
            value,
            "must give exactly one of header, cookie or source_ip",
        );
        return None;
    }
    if let Some((name, header_path)) = header {
        if let Err(reason) = check_header_name(&name) {
            let node = value.get("header").unwrap_or(value);
            errors.push(&header_path, node, reason);
            return None;
        }
        return Some(StickyKey::Header(name.to_ascii_lowercase()));
    }
    if let Some((name, _)) = cookie {
        return Some(StickyKey::Cookie(name));
    }
    match source_ip {
        Some((true, _)) => Some(StickyKey::SourceIp),
        Some((false, flag_path)) => {
            let node = value.get("source_ip").unwrap_or(value);
            errors.push(
                &flag_path,
                node,
                Refusal::Invalid("must be true (leave sticky out for no sticky key)".into()),
            );
            None
        }
        None => None,
    }
}
