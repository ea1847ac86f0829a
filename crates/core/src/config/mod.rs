//! The plugin's document, compiled once into [`Rules`] when the plugin is
//! configured (or a new document arrives from the rules source), then shared
//! read-only by every request.
//!
//! Reading goes through [`crate::read`]: every refusal names its field as a
//! path (`services[0].subsets[1].weight`) with the reason, all refusals are
//! reported at once, and unknown fields and repeated keys are refused.
//! Regexes compile here, once.
//!
//! - [`service`]: a service, its hosts, path prefix, sticky key and weights.
//! - [`subset`]: a subset: cluster, tag, weight, labels.
//! - [`matching`]: match entries and string matches.
//! - [`rule`]: a service's rules: match entries with a split of their own.
//! - [`names`]: header names and host patterns.
//! - [`limits`]: what a document may cost, and the running count.

pub mod limits;
pub mod matching;
pub mod names;
pub mod rule;
pub mod service;
pub mod subset;

use std::collections::BTreeSet;

use crate::json::{self, Node};
use crate::read::{ConfigErrors, Object, Path, Refusal};
use crate::affinity::{LaneKeys, MIN_KEY_BYTES};
use crate::rules::{HostIndex, Rules, Service, StickyKey};

pub use crate::read::ConfigError;
pub use limits::Limits;
pub use names::{check_header_name, check_written_header_name, strip_port};

use limits::Budget;

pub const DEFAULT_CLUSTER_HEADER: &str = "x-graylane-cluster";
pub const DEFAULT_TAG_HEADER: &str = "x-gray-tag";
pub const DEFAULT_MIRROR_HEADER: &str = "x-graylane-mirror";
pub const DEFAULT_PIN_HEADER: &str = "x-graylane-pin-cookie";

/// What a document may carry besides the rules themselves: [`crate::source`]
/// reads these sections.
/// `$schema` lets an editor find `graylane schema`'s output; it is ignored.
const EXTENSION_FIELDS: &[&str] = &["source", "apisix_mode", "$schema"];

/// Root fields only the inline configuration may set.
const INLINE_ONLY_FIELDS: &[&str] = &[
    "cluster_header",
    "tag_header",
    "mirror_header",
    "pin_header",
    "tag_baggage_key",
    "trust_tag",
    "lane_keys",
    "limits",
    "allowed_clusters",
    "source",
    "apisix_mode",
];

/// The headers and trust a rule set routes with: from the inline document,
/// and kept when a rules source replaces the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub cluster_header: String,
    pub tag_header: String,
    pub mirror_header: String,
    pub pin_header: String,
    pub tag_baggage_key: Option<String>,
    pub trust_tag: bool,
    /// Lane affinity cookies are signed with the first and accepted with
    /// any: secrets of the plugin's configuration, never of a rules source.
    pub lane_keys: LaneKeys,
    /// A fetched document is held to the inline document's limits.
    pub limits: Limits,
    /// When given, the only clusters a subset may name, inline or fetched:
    /// a compromised control plane cannot send traffic anywhere else.
    pub allowed_clusters: Option<Vec<String>>,
}

impl Base {
    pub fn of(rules: &Rules) -> Self {
        Base {
            cluster_header: rules.cluster_header.clone(),
            tag_header: rules.tag_header.clone(),
            mirror_header: rules.mirror_header.clone(),
            pin_header: rules.pin_header.clone(),
            tag_baggage_key: rules.tag_baggage_key.clone(),
            trust_tag: rules.trust_tag,
            lane_keys: rules.lane_keys.clone(),
            limits: rules.limits,
            allowed_clusters: rules.allowed_clusters.clone(),
        }
    }
}

/// Parses and compiles a plugin configuration.
pub fn compile(document: &[u8]) -> Result<Rules, ConfigErrors> {
    compile_node(&parse_document(document)?)
}

/// Refuses a document over `limits.document_bytes` before it is parsed.
pub fn check_document_size(limits: &Limits, document: &[u8]) -> Result<(), ConfigErrors> {
    limits.check_size(document.len()).map_err(|refusal| {
        let mut errors = ConfigErrors::default();
        errors.0.push(ConfigError::new(Path::root(), refusal));
        errors
    })
}

/// The document as a JSON tree, or the refusal naming the syntax error's
/// place.
pub fn parse_document(document: &[u8]) -> Result<Node, ConfigErrors> {
    json::parse(document).map_err(|error| {
        let mut errors = ConfigErrors::default();
        errors.0.push(
            ConfigError::new(Path::root(), Refusal::Syntax(error.describe(document)))
                .at(u32::try_from(error.offset).unwrap_or(u32::MAX)),
        );
        errors
    })
}

/// Compiles a document already parsed (the command reads YAML too).
pub fn compile_node(document: &Node) -> Result<Rules, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let root_path = Path::root();
    let Some(mut root) = Object::new(document, &root_path, &mut errors) else {
        return Err(errors);
    };
    let cluster_header = read_header_name(
        &mut root,
        "cluster_header",
        DEFAULT_CLUSTER_HEADER,
        &mut errors,
    );
    let tag_header = read_header_name(&mut root, "tag_header", DEFAULT_TAG_HEADER, &mut errors);
    let mirror_header = read_header_name(&mut root, "mirror_header", DEFAULT_MIRROR_HEADER, &mut errors);
    let pin_header = read_header_name(&mut root, "pin_header", DEFAULT_PIN_HEADER, &mut errors);
    refuse_shared_header_names(
        &mut root,
        &[
            ("cluster_header", &cluster_header),
            ("tag_header", &tag_header),
            ("mirror_header", &mirror_header),
            ("pin_header", &pin_header),
        ],
        &mut errors,
    );
    let trust_tag = root
        .bool("trust_tag", &mut errors)
        .map_or(true, |(flag, _)| flag);
    let limits = Limits::read(&mut root, &mut errors);
    let tag_baggage_key = read_baggage_key(&mut root, &mut errors);
    let lane_keys = read_lane_keys(&mut root, &mut errors);
    let allowed_clusters = read_allowed_clusters(&mut root, &limits, &mut errors);
    let base = Base {
        cluster_header,
        tag_header,
        mirror_header,
        pin_header,
        tag_baggage_key,
        trust_tag,
        lane_keys,
        limits,
        allowed_clusters,
    };
    // Without a source the rules are all there is; with one, the inline
    // services only serve until the first good fetch.
    let required = !root.has("source");
    let mut budget = Budget::new(&base);
    let services = read_services(&mut root, required, &mut budget, &mut errors);
    root.finish(EXTENSION_FIELDS, &mut errors);
    errors.into_result(build_rules(base, services))
}

/// Compiles a document that a rules source delivered: `{"services": [...],
/// "version": N?}`. Header names and trust come from `base`; the document may
/// not set them. Returns the document's `version`, if any.
pub fn compile_fetched(base: &Base, document: &Node) -> Result<(Rules, Option<u64>), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let root_path = Path::root();
    let Some(mut root) = Object::new(document, &root_path, &mut errors) else {
        return Err(errors);
    };
    let mut version = None;
    if let Some((node, path)) = root.get("version") {
        match node.as_number().and_then(|number| number.as_u64()) {
            Some(number) => version = Some(number),
            None => errors.push(
                &path,
                node,
                format!("must be a non-negative integer, got {}", node.to_json()),
            ),
        }
    }
    for field in INLINE_ONLY_FIELDS.iter().copied() {
        root.handled(field);
        if let Some(member) = root.members().iter().find(|member| member.key == field) {
            errors.0.push(
                ConfigError::new(
                    root.child(field),
                    "comes from the plugin configuration, not from the rules source",
                )
                .at(member.key_offset),
            );
        }
    }
    let mut budget = Budget::new(base);
    let services = read_services(&mut root, true, &mut budget, &mut errors);
    root.finish(&["$schema"], &mut errors);
    errors.into_result((build_rules(base.clone(), services), version))
}

fn build_rules(base: Base, services: Vec<Service>) -> Rules {
    let host_index = HostIndex::new(&services);
    let needs_source_ip = services
        .iter()
        .any(|s| s.sticky == Some(StickyKey::SourceIp));
    let reads_form = services.iter().any(Service::reads_form);
    let needs_clock = !base.lane_keys.is_empty() && services.iter().any(|s| s.affinity.is_some());
    Rules {
        cluster_header: base.cluster_header,
        tag_header: base.tag_header,
        mirror_header: base.mirror_header,
        pin_header: base.pin_header,
        tag_baggage_key: base.tag_baggage_key,
        trust_tag: base.trust_tag,
        lane_keys: base.lane_keys,
        needs_clock,
        limits: base.limits,
        allowed_clusters: base.allowed_clusters,
        services,
        host_index,
        needs_source_ip,
        reads_form,
    }
}

fn read_services(
    root: &mut Object<'_>,
    required: bool,
    budget: &mut Budget,
    errors: &mut ConfigErrors,
) -> Vec<Service> {
    let mut services = Vec::new();
    match root.array("services", errors) {
        Some((items, path)) => {
            let limit = budget.limits.services;
            if let Some((node, _)) = root.get("services") {
                if !budget.list(
                    "services",
                    "services",
                    limit,
                    items.len(),
                    (&path, node),
                    errors,
                ) {
                    return services;
                }
            }
            let mut names = BTreeSet::new();
            for (position, item) in items.iter().enumerate() {
                let item_path = path.index(position);
                if let Some(service) = service::read_service(item, &item_path, budget, errors) {
                    if !names.insert(service.name.clone()) {
                        let name_node = item.get("name").unwrap_or(item);
                        errors.push(
                            &item_path.key("name"),
                            name_node,
                            format!("repeats the service name {:?}", service.name),
                        );
                    }
                    services.push(service);
                }
            }
        }
        None if required && !root.has("services") => root.missing("services", errors, None),
        None => {}
    }
    services
}

/// Each header the plugin writes must differ from those before it in
/// `fields` (one header cannot carry two meanings); the refusal names them.
fn refuse_shared_header_names(root: &mut Object<'_>, fields: &[(&'static str, &String)], errors: &mut ConfigErrors) {
    for (position, (field, name)) in fields.iter().enumerate() {
        let earlier = fields.get(..position).unwrap_or_default();
        if !earlier.iter().any(|(_, other)| other == name) {
            continue;
        }
        let names: Vec<&str> = earlier.iter().map(|(other, _)| *other).collect();
        let listed = match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => continue,
        };
        errors.push_unplaced(&root.child(field), format!("must differ from {listed}"));
        if let Some(error) = errors.0.last_mut() {
            error.offset = root.get(field).map(|(node, _)| node.offset);
        }
    }
}

/// `lane_keys`: a non-empty list of secrets, each at least
/// [`MIN_KEY_BYTES`] long.
fn read_lane_keys(root: &mut Object<'_>, errors: &mut ConfigErrors) -> LaneKeys {
    let Some((items, path)) = root.array("lane_keys", errors) else {
        return LaneKeys::default();
    };
    if items.is_empty() {
        if let Some((node, _)) = root.get("lane_keys") {
            errors.push(&path, node, "must list at least one key (leave the field out for unsigned lane cookies)");
        }
    }
    let mut keys = Vec::new();
    for (position, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(key) if key.len() >= MIN_KEY_BYTES => keys.push(key.as_bytes().to_vec()),
            // The key itself is a secret: not echoed in the refusal.
            Some(key) => errors.push(
                &path.index(position),
                item,
                format!("a key of {} bytes is too short to keep secret: at least {MIN_KEY_BYTES}", key.len()),
            ),
            None => errors.push(&path.index(position), item, crate::read::wrong_type("a string", item)),
        }
    }
    LaneKeys::new(keys)
}

/// A baggage key is an HTTP token (W3C Baggage).
fn read_baggage_key(root: &mut Object<'_>, errors: &mut ConfigErrors) -> Option<String> {
    let (key, path) = root.string("tag_baggage_key", errors)?;
    match check_header_name(&key) {
        Ok(()) => Some(key),
        Err(reason) => {
            if let Some((node, _)) = root.get("tag_baggage_key") {
                errors.push(&path, node, reason.replace("header name", "baggage key"));
            }
            None
        }
    }
}

fn read_allowed_clusters(
    root: &mut Object<'_>,
    limits: &Limits,
    errors: &mut ConfigErrors,
) -> Option<Vec<String>> {
    let (items, path) = root.array("allowed_clusters", errors)?;
    let mut clusters = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let item_path = path.index(position);
        match item.as_str() {
            Some(cluster) => match names::check_header_value(
                cluster.strip_suffix('*').unwrap_or(cluster),
                limits.name_bytes,
            ) {
                Ok(()) => clusters.push(cluster.to_string()),
                Err(refusal) => errors.push(&item_path, item, refusal),
            },
            None => errors.push(&item_path, item, crate::read::wrong_type("a string", item)),
        }
    }
    if items.is_empty() {
        if let Some((node, _)) = root.get("allowed_clusters") {
            errors.push(
                &path,
                node,
                "must list at least one cluster (leave the field out to allow any)",
            );
        }
    }
    Some(clusters)
}

fn read_header_name(
    object: &mut Object<'_>,
    field: &'static str,
    default: &str,
    errors: &mut ConfigErrors,
) -> String {
    let Some((name, path)) = object.string(field, errors) else {
        return default.to_string();
    };
    match check_written_header_name(&name) {
        Ok(()) => name.to_ascii_lowercase(),
        Err(reason) => {
            if let Some((node, _)) = object.get(field) {
                errors.push(&path, node, reason);
            }
            default.to_string()
        }
    }
}
