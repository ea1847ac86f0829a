//! Match entries (`subsets[].match[]`) and the string matches inside them.

use super::limits::{Budget, Length};
use super::names::check_header_name;
use crate::json::Node;
use crate::pattern::Pattern;
use crate::read::{wrong_type, ConfigErrors, Object, Path, Refusal};
use crate::rules::{MatchEntry, NamedMatch, StringMatch};

/// The string-match kinds, exactly one of which a string match gives.
pub const MATCH_KINDS: &[&str] = &[
    "exact", "prefix", "suffix", "contains", "regex", "present", "gt", "ge", "lt", "le", "in",
];

pub(crate) fn read_match_entry(
    value: &Node,
    path: &Path,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<MatchEntry> {
    let mut object = Object::new(value, path, errors)?;
    let mut entry = MatchEntry {
        headers: read_named_matches(&mut object, "headers", budget, errors, |name| {
            check_header_name(name).map(|()| name.to_ascii_lowercase())
        }),
        cookies: read_named_matches(&mut object, "cookies", budget, errors, |name| {
            Ok(name.to_string())
        }),
        query: read_named_matches(&mut object, "query", budget, errors, |name| {
            Ok(name.to_string())
        }),
        form: read_named_matches(&mut object, "form", budget, errors, |name| {
            Ok(name.to_string())
        }),
        ..MatchEntry::default()
    };
    if let Some((pattern, regex_path)) = object.non_empty_string("cookie_regex", false, errors) {
        if let Some((node, _)) = object.get("cookie_regex") {
            entry.cookie_regex = compile_regex(&pattern, &regex_path, node, budget, errors);
        }
    }
    if let Some((node, match_path)) = object.get("path") {
        if let Some((matcher, invert)) = read_string_match(node, &match_path, budget, errors) {
            entry.path = Some(matcher);
            entry.path_invert = invert;
        }
    }
    if let Some((node, not_path)) = object.get("not") {
        if budget.match_entry(&not_path, node, errors) {
            entry.not = read_match_entry(node, &not_path, budget, errors).map(Box::new);
        }
    }
    if let Some((items, methods_path)) = object.array("method", errors) {
        for (position, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(method)
                    if !method.is_empty()
                        && method
                            .bytes()
                            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') =>
                {
                    entry.methods.push(method.to_ascii_uppercase());
                }
                _ => errors.push(
                    &methods_path.index(position),
                    item,
                    format!(
                        "must be an HTTP method such as \"GET\", got {}",
                        item.to_json()
                    ),
                ),
            }
        }
        if items.is_empty() {
            if let Some((node, _)) = object.get("method") {
                errors.push(&methods_path, node, "must list at least one method");
            }
        }
    }
    let notes_only = object
        .members()
        .iter()
        .all(|member| member.key.starts_with('_'));
    if notes_only {
        errors.push(
            path,
            value,
            "has no condition; an empty entry would match every request",
        );
    }
    object.finish(&[], errors);
    Some(entry)
}

/// A `match` list: each entry counted against `limits.match_entries`, the
/// list cut short at the first one over.
pub(crate) fn read_match_list(
    items: &[Node],
    list_path: &Path,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Vec<MatchEntry> {
    let mut matches = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let entry_path = list_path.index(position);
        if !budget.match_entry(&entry_path, item, errors) {
            break;
        }
        if let Some(entry) = read_match_entry(item, &entry_path, budget, errors) {
            matches.push(entry);
        }
    }
    matches
}

/// A list of `{name, <string match>, invert?}` conditions; `normalise_name`
/// checks a name and gives the form it is looked up by.
pub(crate) fn read_named_matches(
    object: &mut Object<'_>,
    field: &'static str,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
    normalise_name: impl Fn(&str) -> Result<String, String>,
) -> Vec<NamedMatch> {
    let Some((items, list_path)) = object.array(field, errors) else {
        return Vec::new();
    };
    if items.is_empty() {
        if let Some((node, _)) = object.get(field) {
            errors.push(&list_path, node, "must list at least one condition");
        }
    }
    let mut named = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let item_path = list_path.index(position);
        let Some(mut condition) = Object::new(item, &item_path, errors) else {
            continue;
        };
        let name = match condition.get("name") {
            Some((node, name_path)) => match node.as_str() {
                Some(name) if !name.is_empty() => match normalise_name(name) {
                    Ok(name) if budget.string(&name, Length::Name, &name_path, node, errors) => {
                        Some(name)
                    }
                    Ok(_) => None,
                    Err(reason) => {
                        errors.push(&name_path, node, reason);
                        None
                    }
                },
                _ => {
                    errors.push(&name_path, node, "must be a non-empty string");
                    None
                }
            },
            None => {
                condition.missing("name", errors, None);
                None
            }
        };
        let matcher = string_match_of(
            &condition,
            &item_path,
            item,
            &["name", "invert"],
            budget,
            errors,
        );
        let invert = read_invert(&condition, &item_path, errors);
        if let (Some(name), Some(matcher)) = (name, matcher) {
            named.push(NamedMatch {
                name,
                matcher,
                invert,
            });
        }
    }
    named
}

/// `invert`, when given: true or false.
fn read_invert(object: &Object<'_>, path: &Path, errors: &mut ConfigErrors) -> bool {
    let Some(member) = object
        .members()
        .iter()
        .find(|member| member.key == "invert")
    else {
        return false;
    };
    match member.value.as_bool() {
        Some(flag) => flag,
        None => {
            errors.push(
                &path.key("invert"),
                &member.value,
                wrong_type("true or false", &member.value),
            );
            false
        }
    }
}

/// Exactly one of the string-match kinds, and whether it is inverted.
pub(crate) fn read_string_match(
    value: &Node,
    path: &Path,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<(StringMatch, bool)> {
    if value.as_object().is_none() {
        errors.push(
            path,
            value,
            format!(
                "must be an object with one of {}, got {}",
                MATCH_KINDS.join(", "),
                value.kind()
            ),
        );
        return None;
    }
    let object = Object::new(value, path, errors)?;
    let invert = read_invert(&object, path, errors);
    string_match_of(&object, path, value, &["invert"], budget, errors).map(|m| (m, invert))
}

/// The string match an object gives, beside `other_fields` (a named
/// condition's `name`).
fn string_match_of(
    object: &Object<'_>,
    path: &Path,
    value: &Node,
    other_fields: &[&str],
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<StringMatch> {
    let mut found = None;
    let mut kinds = 0;
    for member in object.members() {
        let key = member.key.as_str();
        if key.starts_with('_') || other_fields.contains(&key) {
            continue;
        }
        kinds += 1;
        let field_path = path.key(key);
        let node = &member.value;
        if !MATCH_KINDS.contains(&key) {
            errors.0.push(
                crate::read::ConfigError::new(
                    field_path,
                    format!(
                        "unknown string-match kind; expected exactly one of: {}",
                        MATCH_KINDS.join(", ")
                    ),
                )
                .at(member.key_offset),
            );
            continue;
        }
        found = match (key, node.as_str(), node.as_bool()) {
            ("present", _, Some(flag)) => Some(StringMatch::Present(flag)),
            ("present", _, None) => {
                errors.push(&field_path, node, wrong_type("true or false", node));
                None
            }
            ("gt" | "ge" | "lt" | "le", _, _) => read_bound(key, node, &field_path, errors),
            ("in", _, _) => read_in(node, &field_path, budget, errors),
            (_, Some(text), _)
                if !budget.string(text, Length::Value, &field_path, node, errors) =>
            {
                None
            }
            (_, Some(text), _) => {
                let bytes = text.as_bytes().to_vec();
                match key {
                    "exact" => Some(StringMatch::Exact(bytes)),
                    "prefix" => Some(StringMatch::Prefix(bytes)),
                    "suffix" => Some(StringMatch::Suffix(bytes)),
                    "contains" => Some(StringMatch::Contains(bytes)),
                    _ => compile_regex(text, &field_path, node, budget, errors)
                        .map(StringMatch::Regex),
                }
            }
            (_, None, _) => {
                errors.push(&field_path, node, wrong_type("a string", node));
                None
            }
        };
    }
    if kinds == 0 {
        errors.push(
            path,
            value,
            format!("needs one of: {}", MATCH_KINDS.join(", ")),
        );
        return None;
    }
    if kinds > 1 {
        errors.push(
            path,
            value,
            format!(
                "gives {kinds} match kinds; give exactly one of: {}",
                MATCH_KINDS.join(", ")
            ),
        );
        return None;
    }
    found
}

/// `gt`, `ge`, `lt`, `le`: a JSON number.
fn read_bound(
    kind: &str,
    node: &Node,
    path: &Path,
    errors: &mut ConfigErrors,
) -> Option<StringMatch> {
    let Some(bound) = node.as_number().and_then(|number| number.as_f64()) else {
        errors.push(path, node, wrong_type("a number", node));
        return None;
    };
    Some(match kind {
        "gt" => StringMatch::Greater(bound),
        "ge" => StringMatch::GreaterOrEqual(bound),
        "lt" => StringMatch::Less(bound),
        _ => StringMatch::LessOrEqual(bound),
    })
}

/// `in`: a non-empty list of strings, each held to the value length, all of
/// them counted against `limits.in_values`.
fn read_in(
    node: &Node,
    path: &Path,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<StringMatch> {
    let Some(items) = node.as_array() else {
        errors.push(path, node, wrong_type("a list of strings", node));
        return None;
    };
    if items.is_empty() {
        errors.push(path, node, "must list at least one value");
        return None;
    }
    if !budget.in_values(items.len(), path, node, errors) {
        return None;
    }
    let mut values = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let item_path = path.index(position);
        match item.as_str() {
            Some(text) if budget.string(text, Length::Value, &item_path, item, errors) => {
                values.push(text.as_bytes().to_vec());
            }
            Some(_) => {}
            None => errors.push(&item_path, item, wrong_type("a string", item)),
        }
    }
    values.sort_unstable();
    values.dedup();
    Some(StringMatch::In(values))
}

fn compile_regex(
    pattern: &str,
    path: &Path,
    node: &Node,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Option<Pattern> {
    if !budget.string(pattern, Length::Value, path, node, errors)
        || !budget.may_compile_regex(path, node, errors)
    {
        return None;
    }
    match Pattern::new(pattern) {
        Ok(pattern) if budget.regex_compiled(pattern.memory(), path, node, errors) => Some(pattern),
        Ok(_) => None,
        Err(message) => {
            errors.push(path, node, Refusal::Invalid(message));
            None
        }
    }
}
