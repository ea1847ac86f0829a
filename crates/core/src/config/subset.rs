//! One entry of a service's `subsets`: its cluster, tag, weight, match
//! entries and registry labels.

use super::limits::{Budget, Length};
use super::matching::read_match_list;
use super::names::{check_header_value, check_written_header_name};
use crate::json::Node;
use crate::read::{wrong_type, ConfigErrors, Object, Path};
use crate::rules::Subset;

pub(crate) fn read_subset(
    value: &Node,
    path: &Path,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<Subset> {
    let mut object = Object::new(value, path, errors)?;
    let name = object
        .non_empty_string("name", true, errors)
        .filter(|(name, name_path)| {
            let node = value.get("name").unwrap_or(value);
            budget.string(name, Length::Name, name_path, node, errors)
        });
    // The cluster and the tag are written into request headers.
    let name_bytes = budget.limits.name_bytes;
    let written = |field: &str, (text, field_path): (String, Path), errors: &mut ConfigErrors| {
        let node = value.get(field).unwrap_or(value);
        match check_header_value(&text, name_bytes) {
            Ok(()) => Some((text, field_path)),
            Err(refusal) => {
                errors.push(&field_path, node, refusal);
                None
            }
        }
    };
    let cluster = object
        .non_empty_string("cluster", true, errors)
        .and_then(|given| written("cluster", given, errors))
        .filter(|(cluster, cluster_path)| {
            let node = value.get("cluster").unwrap_or(value);
            budget.cluster(cluster, cluster_path, node, errors)
        })
        .map(|(cluster, _)| cluster);
    let tag = object
        .non_empty_string("tag", false, errors)
        .and_then(|given| written("tag", given, errors))
        .map(|(tag, _)| tag);
    // Without a tag the name is the tag, and so is written too.
    let name = match (&tag, name) {
        (None, Some((name, name_path))) if !object.has("tag") => {
            written("name", (name, name_path), errors)
        }
        (_, name) => name,
    };
    let weight = read_weight(&mut object, errors);
    let canary = object.bool("canary", errors).map(|(flag, _)| flag);
    let bluegreen = read_bluegreen(&mut object, errors);
    let mirror = read_mirror(&mut object, errors);
    let matches = match object.array("match", errors) {
        Some((items, list_path)) => read_match_list(items, &list_path, budget, errors),
        None => Vec::new(),
    };
    let set_headers = read_set_headers(&mut object, budget, errors);
    let affinity = object.bool("affinity", errors).is_some_and(|(flag, _)| flag);
    object.finish(&[], errors);
    let (name, _) = name?;
    let tag = tag.unwrap_or_else(|| name.clone());
    // The lane goes into a cookie value as it is.
    if affinity && !tag.bytes().all(is_cookie_octet) {
        let node = value.get("affinity").unwrap_or(value);
        errors.push(
            &path.key("affinity"),
            node,
            format!("the tag {tag:?} cannot be a cookie value (no '\"', ',', ';' or '\\')"),
        );
    }
    Some(Subset {
        set_headers,
        tag,
        name,
        cluster: cluster?,
        weight,
        matches,
        canary,
        bluegreen,
        mirror,
        affinity,
    })
}

/// RFC 6265's cookie-octet.
fn is_cookie_octet(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// `set_headers`: `{name: value}` written on every request routed to the
/// subset. Names as the cluster header's (and neither it nor the tag header),
/// values visible ASCII within `limits.value_bytes`.
fn read_set_headers(
    object: &mut Object<'_>,
    budget: &Budget,
    errors: &mut ConfigErrors,
) -> Vec<(String, String)> {
    let Some((node, path)) = object.get("set_headers") else {
        return Vec::new();
    };
    let Some(headers) = Object::new(node, &path, errors) else {
        return Vec::new();
    };
    // Keys starting with `_` are notes, as anywhere in the document.
    let members: Vec<_> = headers
        .members()
        .iter()
        .filter(|member| !member.key.starts_with('_'))
        .collect();
    if members.is_empty() {
        errors.push(
            &path,
            node,
            "must set at least one header (leave the field out to set none)",
        );
    }
    let limit = budget.limits.set_headers;
    if !budget.list(
        "headers this subset sets",
        "set_headers",
        limit,
        members.len(),
        (&path, node),
        errors,
    ) {
        return Vec::new();
    }
    let mut written: Vec<(String, String)> = Vec::new();
    for member in members {
        let field_path = path.key(&member.key);
        let lower = member.key.to_ascii_lowercase();
        let refusal = if let Err(reason) = check_written_header_name(&member.key) {
            Some(reason)
        } else if lower == budget.cluster_header || lower == budget.tag_header {
            Some(format!(
                "{:?} is the cluster or the tag header, which the plugin writes itself",
                member.key
            ))
        } else if written.iter().any(|(name, _)| *name == lower) {
            Some(format!(
                "{:?} is set twice (header names are case-insensitive)",
                member.key
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            errors
                .0
                .push(crate::read::ConfigError::new(field_path, reason).at(member.key_offset));
            continue;
        }
        let Some(value) = member.value.as_str() else {
            errors.push(
                &field_path,
                &member.value,
                wrong_type("a string", &member.value),
            );
            continue;
        };
        match check_header_value(value, u64::MAX) {
            Ok(()) if budget.string(value, Length::Value, &field_path, &member.value, errors) => {
                written.push((lower, value.to_string()));
            }
            Ok(()) => {}
            Err(refusal) => errors.push(&field_path, &member.value, refusal),
        }
    }
    written
}

/// The safe methods: a copy of a request that changes state would change it
/// twice.
const SAFE_METHODS: &[&str] = &["GET", "HEAD"];

/// `mirror: {"percent": P, "methods": [...]?}`.
fn read_mirror(object: &mut Object<'_>, errors: &mut ConfigErrors) -> Option<(u32, Vec<String>)> {
    let (node, path) = object.get("mirror")?;
    let mut mirror = Object::new(node, &path, errors)?;
    let share = match mirror.get("percent") {
        Some((value, percent_path)) => match weight_basis_points(value) {
            Ok(share) => share,
            Err(reason) => {
                errors.push(&percent_path, value, reason);
                0
            }
        },
        None => {
            mirror.missing("percent", errors, Some(" (percent of the service's other requests to copy here)".into()));
            0
        }
    };
    let mut methods: Vec<String> = SAFE_METHODS.iter().map(|m| (*m).to_string()).collect();
    if let Some((items, methods_path)) = mirror.array("methods", errors) {
        methods.clear();
        for (position, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(method) if !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    methods.push(method.to_ascii_uppercase());
                }
                _ => errors.push(
                    &methods_path.index(position),
                    item,
                    format!("must be an HTTP method such as \"GET\", got {}", item.to_json()),
                ),
            }
        }
        if items.is_empty() {
            if let Some((list, _)) = mirror.get("methods") {
                errors.push(&methods_path, list, "must list at least one method");
            }
        }
    }
    mirror.finish(&[], errors);
    Some((share, methods))
}

fn read_bluegreen(object: &mut Object<'_>, errors: &mut ConfigErrors) -> Option<String> {
    let (colour, path) = object.string("bluegreen", errors)?;
    let lower = colour.to_ascii_lowercase();
    if lower == "blue" || lower == "green" {
        Some(lower)
    } else {
        if let Some((node, _)) = object.get("bluegreen") {
            errors.push(
                &path,
                node,
                format!("must be \"blue\" or \"green\", got {colour:?}"),
            );
        }
        None
    }
}

/// Percent with at most two decimals, returned in basis points.
fn read_weight(object: &mut Object<'_>, errors: &mut ConfigErrors) -> u32 {
    let Some((value, path)) = object.get("weight") else {
        return 0;
    };
    match weight_basis_points(value) {
        Ok(weight) => weight,
        Err(reason) => {
            errors.push(&path, value, reason);
            0
        }
    }
}

/// A weight value (percent, 0–100, two decimals at most) in basis points.
pub(crate) fn weight_basis_points(value: &Node) -> Result<u32, crate::read::Refusal> {
    let Some(number) = value.as_number().and_then(|number| number.as_f64()) else {
        return Err(match value.as_number() {
            Some(number) => format!("must be a number of percent, got {number}").into(),
            None => wrong_type("a number of percent", value),
        });
    };
    let shown = value
        .as_number()
        .map_or_else(String::new, |n| n.to_string());
    if !(0.0..=100.0).contains(&number) {
        return Err(format!("must be between 0 and 100 (percent), got {shown}").into());
    }
    let scaled = number * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        return Err(format!("must have at most two decimals, got {shown}").into());
    }
    // In range 0..=10000 after the checks above.
    Ok(rounded as u32)
}

/// Basis points as percent: 500 → "5", 1250 → "12.5", 1234 → "12.34".
pub(crate) fn percent(basis_points: u64) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}"),
        cents if cents % 10 == 0 => format!("{whole}.{}", cents / 10),
        cents => format!("{whole}.{cents:02}"),
    }
}
