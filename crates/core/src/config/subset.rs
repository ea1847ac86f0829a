//! One entry of a service's `subsets`: its cluster, tag, weight, match
//! entries and registry labels.

use super::limits::{Budget, Length};
use super::matching::read_match_entry;
use super::names::check_header_value;
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
    let mut matches = Vec::new();
    if let Some((items, list_path)) = object.array("match", errors) {
        for (position, item) in items.iter().enumerate() {
            let entry_path = list_path.index(position);
            if !budget.match_entry(&entry_path, item, errors) {
                break;
            }
            if let Some(entry) = read_match_entry(item, &entry_path, budget, errors) {
                matches.push(entry);
            }
        }
    }
    object.finish(&[], errors);
    let (name, _) = name?;
    Some(Subset {
        tag: tag.unwrap_or_else(|| name.clone()),
        name,
        cluster: cluster?,
        weight,
        matches,
        canary,
        bluegreen,
        mirror,
    })
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
