//! One entry of a service's `rules`: match entries and the split the
//! requests they select get (`{"match": [...], "split": [{"subset", "weight"}]}`),
//! the rest going to the service's default.

use super::limits::Budget;
use super::matching::read_match_list;
use super::subset::{percent, weight_basis_points};
use crate::json::Node;
use crate::read::{ConfigErrors, Object, Path};
use crate::rules::Rule;
use crate::split::{WeightTable, BUCKETS};

/// `rules`, given the service's subset names and its default (when known).
pub(crate) fn read_rules(
    service: &mut Object<'_>,
    subsets: &[&str],
    default: Option<usize>,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Vec<Rule> {
    let Some((items, path)) = service.array("rules", errors) else {
        return Vec::new();
    };
    if items.is_empty() {
        if let Some((node, _)) = service.get("rules") {
            errors.push(
                &path,
                node,
                "must list at least one rule (leave the field out for none)",
            );
        }
    }
    let mut rules = Vec::new();
    for (position, item) in items.iter().enumerate() {
        if let Some(rule) = read_rule(
            item,
            &path.index(position),
            subsets,
            default,
            budget,
            errors,
        ) {
            rules.push(rule);
        }
    }
    rules
}

fn read_rule(
    value: &Node,
    path: &Path,
    subsets: &[&str],
    default: Option<usize>,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<Rule> {
    let mut object = Object::new(value, path, errors)?;
    let mut matches = Vec::new();
    match object.array("match", errors) {
        Some((items, list_path)) => {
            if items.is_empty() {
                errors.push(&list_path, value.get("match").unwrap_or(value), "must list at least one match entry (a rule for every request is the service's own weights)");
            }
            matches = read_match_list(items, &list_path, budget, errors);
        }
        None if !object.has("match") => object.missing("match", errors, None),
        None => {}
    }
    let split = match object.array("split", errors) {
        Some((items, split_path)) => read_split(
            items,
            &split_path,
            value.get("split").unwrap_or(value),
            subsets,
            default,
            errors,
        ),
        None if !object.has("split") => {
            object.missing("split", errors, Some(": [{\"subset\": NAME, \"weight\": PERCENT}], [] sends every request the rule selects to the default".into()));
            Vec::new()
        }
        None => Vec::new(),
    };
    object.finish(&[], errors);
    Some(Rule {
        matches,
        weights: WeightTable::new(&split),
        split,
    })
}

/// `split`: each subset once, not the default, weights summing to at most 100.
fn read_split(
    items: &[Node],
    path: &Path,
    node: &Node,
    subsets: &[&str],
    default: Option<usize>,
    errors: &mut ConfigErrors,
) -> Vec<(usize, u32)> {
    let mut split: Vec<(usize, u32)> = Vec::new();
    let mut parts: Vec<(String, u32)> = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let item_path = path.index(position);
        let Some(mut part) = Object::new(item, &item_path, errors) else {
            continue;
        };
        let subset = part.required_string("subset", errors);
        let weight = match part.get("weight") {
            Some((weight_node, weight_path)) => match weight_basis_points(weight_node) {
                Ok(weight) => Some(weight),
                Err(reason) => {
                    errors.push(&weight_path, weight_node, reason);
                    None
                }
            },
            None => {
                part.missing("weight", errors, None);
                None
            }
        };
        part.finish(&[], errors);
        let Some((name, name_path)) = subset else {
            continue;
        };
        let name_node = item.get("subset").unwrap_or(item);
        let Some(index) = subsets.iter().position(|known| *known == name) else {
            errors.push(
                &name_path,
                name_node,
                format!(
                    "names no subset of this service: {name:?} (subsets: {})",
                    subsets.join(", ")
                ),
            );
            continue;
        };
        if Some(index) == default {
            errors.push(&name_path, name_node, format!("{name:?} is the service's default, which takes the rest of the split: leave it out"));
            continue;
        }
        if split.iter().any(|(known, _)| *known == index) {
            errors.push(
                &name_path,
                name_node,
                format!("repeats the subset {name:?} of an earlier part of the split"),
            );
            continue;
        }
        if let Some(weight) = weight {
            split.push((index, weight));
            parts.push((format!("split[{position}]"), weight));
        }
    }
    if let Some(reason) = weights_over_100("the split", &parts) {
        errors.push(path, node, reason);
    }
    split
}

/// The refusal for weights summing over 100 percent: "weights of {what} sum
/// to 100.01, over 100 (subsets[1] 60 + subsets[2] 40.01)". Summed wide: many
/// weights of 100 must not wrap into a valid sum.
pub(crate) fn weights_over_100(what: &str, parts: &[(String, u32)]) -> Option<String> {
    let total: u64 = parts.iter().map(|(_, weight)| u64::from(*weight)).sum();
    if total <= u64::from(BUCKETS) {
        return None;
    }
    let shown: Vec<String> = parts
        .iter()
        .filter(|(_, weight)| *weight > 0)
        .map(|(label, weight)| format!("{label} {}", percent(u64::from(*weight))))
        .collect();
    Some(format!(
        "weights of {what} sum to {}, over 100 ({})",
        percent(total),
        shown.join(" + ")
    ))
}
