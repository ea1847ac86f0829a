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
//! - [`names`]: header names and host patterns.

pub mod matching;
pub mod names;
pub mod service;
pub mod subset;

use std::collections::BTreeSet;

use crate::json::{self, Node};
use crate::read::{ConfigErrors, Object, Path, Refusal};
use crate::rules::{HostIndex, Rules, Service, StickyKey};

pub use crate::read::ConfigError;
pub use names::{check_header_name, strip_port};

pub const DEFAULT_CLUSTER_HEADER: &str = "x-graylane-cluster";
pub const DEFAULT_TAG_HEADER: &str = "x-gray-tag";

/// What a document may carry besides the rules themselves: [`crate::source`]
/// reads these sections.
const EXTENSION_FIELDS: &[&str] = &["source", "apisix_mode"];

/// The headers and trust a rule set routes with: from the inline document,
/// and kept when a rules source replaces the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub cluster_header: String,
    pub tag_header: String,
    pub trust_tag: bool,
}

impl Base {
    pub fn of(rules: &Rules) -> Self {
        Base {
            cluster_header: rules.cluster_header.clone(),
            tag_header: rules.tag_header.clone(),
            trust_tag: rules.trust_tag,
        }
    }
}

/// Parses and compiles a plugin configuration.
pub fn compile(document: &[u8]) -> Result<Rules, ConfigErrors> {
    compile_node(&parse_document(document)?)
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
    let cluster_header = read_header_name(&mut root, "cluster_header", DEFAULT_CLUSTER_HEADER, &mut errors);
    let tag_header = read_header_name(&mut root, "tag_header", DEFAULT_TAG_HEADER, &mut errors);
    if cluster_header == tag_header {
        let path = root.child("tag_header");
        errors.push_unplaced(&path, "must differ from cluster_header");
        if let Some(error) = errors.0.last_mut() {
            error.offset = root.get("tag_header").map(|(node, _)| node.offset);
        }
    }
    let trust_tag = root.bool("trust_tag", &mut errors).map_or(true, |(flag, _)| flag);
    let base = Base {
        cluster_header,
        tag_header,
        trust_tag,
    };
    // Without a source the rules are all there is; with one, the inline
    // services only serve until the first good fetch.
    let required = !root.has("source");
    let services = read_services(&mut root, required, &mut errors);
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
    for field in ["cluster_header", "tag_header", "trust_tag", "source", "apisix_mode"] {
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
    let services = read_services(&mut root, true, &mut errors);
    root.finish(&[], &mut errors);
    errors.into_result((build_rules(base.clone(), services), version))
}

fn build_rules(base: Base, services: Vec<Service>) -> Rules {
    let host_index = HostIndex::new(&services);
    let needs_source_ip = services
        .iter()
        .any(|s| s.sticky == Some(StickyKey::SourceIp));
    Rules {
        cluster_header: base.cluster_header,
        tag_header: base.tag_header,
        trust_tag: base.trust_tag,
        services,
        host_index,
        needs_source_ip,
    }
}

fn read_services(root: &mut Object<'_>, required: bool, errors: &mut ConfigErrors) -> Vec<Service> {
    let mut services = Vec::new();
    match root.array("services", errors) {
        Some((items, path)) => {
            let mut names = BTreeSet::new();
            for (position, item) in items.iter().enumerate() {
                let item_path = path.index(position);
                if let Some(service) = service::read_service(item, &item_path, errors) {
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

fn read_header_name(
    object: &mut Object<'_>,
    field: &'static str,
    default: &str,
    errors: &mut ConfigErrors,
) -> String {
    let Some((name, path)) = object.string(field, errors) else {
        return default.to_string();
    };
    match check_header_name(&name) {
        Ok(()) => name.to_ascii_lowercase(),
        Err(reason) => {
            if let Some((node, _)) = object.get(field) {
                errors.push(&path, node, reason);
            }
            default.to_string()
        }
    }
}
