//! Reading a parsed document field by field: the one walker behind every
//! section graylane reads (the rules, `source`, `source.service`, a fetched
//! document, a registry's `match` meta), so that every refusal has the same
//! shape: a typed [`Path`] such as `services[0].subsets[1].weight`, a
//! [`Refusal`] saying why, and the byte offset of the value it is about.
//!
//! The walker refuses what a careless document would otherwise get away with:
//! a field nobody asked for (a misspelt `wieght` silently ignored is an
//! outage in waiting) and a key given twice (parsers disagree on which one
//! wins). Keys starting with `_` are left for the user's notes. All refusals
//! are collected, so that one run of `graylane check` lists them all.

use std::fmt;

use crate::json::{Member, Node};

/// Where a value stands in a document: `$` for the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl Path {
    /// The document itself.
    pub fn root() -> Path {
        Path(Vec::new())
    }

    /// A path of keys: `Path::of(&["source", "service"])`.
    pub fn of(keys: &[&str]) -> Path {
        Path(keys.iter().map(|key| Segment::Key(key.to_string())).collect())
    }

    pub fn key(&self, key: &str) -> Path {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_string()));
        Path(segments)
    }

    pub fn index(&self, index: usize) -> Path {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Path(segments)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The enclosing value's path; `None` for the document.
    pub fn parent(&self) -> Option<Path> {
        let (_, parent) = self.0.split_last()?;
        Some(Path(parent.to_vec()))
    }

    /// This path with `prefix` replaced by `by` (a section checked on its
    /// own, named where it stands in the whole document).
    pub fn rebased(&self, prefix: &Path, by: &Path) -> Path {
        match self.0.strip_prefix(prefix.0.as_slice()) {
            Some(rest) => {
                let mut segments = by.0.clone();
                segments.extend_from_slice(rest);
                Path(segments)
            }
            None => self.clone(),
        }
    }

    /// The value at this path in `node`, the first of repeated keys.
    pub fn find<'n>(&self, node: &'n Node) -> Option<&'n Node> {
        self.0.iter().try_fold(node, |node, segment| match segment {
            Segment::Key(key) => node.get(key),
            Segment::Index(index) => node.as_array()?.get(*index),
        })
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("$");
        }
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Why a value was refused. The `Display` text is what the gateway logs and
/// `graylane check` prints after the path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The text is not JSON (or YAML, for the command).
    Syntax(String),
    /// A value of the wrong kind: "must be {expected}, got {got}".
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    /// A required field is absent; `hint` says what it is for.
    Missing { hint: Option<String> },
    /// A field this object does not have.
    UnknownField { expected: Vec<String> },
    /// A key given a second time in one object.
    RepeatedKey,
    /// An empty string or list where that means nothing.
    Empty,
    /// A limit of the configuration (document size, services, regexes…).
    OverLimit {
        what: &'static str,
        limit: u64,
        got: u64,
        setting: &'static str,
    },
    /// Every other reason, said in words.
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Syntax(text) => write!(f, "not valid JSON: {text}"),
            Refusal::WrongType { expected, got } => write!(f, "must be {expected}, got {got}"),
            Refusal::Missing { hint: None } => f.write_str("is required"),
            Refusal::Missing { hint: Some(hint) } => write!(f, "is required{hint}"),
            Refusal::UnknownField { expected } => {
                write!(f, "unknown field; expected one of: {}", expected.join(", "))
            }
            Refusal::RepeatedKey => f.write_str(
                "repeats a key of this object (which one counts would depend on the parser)",
            ),
            Refusal::Empty => f.write_str("must not be empty"),
            Refusal::OverLimit {
                what,
                limit,
                got,
                setting,
            } => write!(
                f,
                "{what}: {got}, over the limit of {limit} (limits.{setting})"
            ),
            Refusal::Invalid(text) => f.write_str(text),
        }
    }
}

impl From<String> for Refusal {
    fn from(text: String) -> Self {
        Refusal::Invalid(text)
    }
}

impl From<&str> for Refusal {
    fn from(text: &str) -> Self {
        Refusal::Invalid(text.to_string())
    }
}

/// One reason the document was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: Path,
    pub refusal: Refusal,
    /// Byte offset of the value in the text, when known: for a missing
    /// field, the object that misses it.
    pub offset: Option<u32>,
}

impl ConfigError {
    pub fn new(path: Path, refusal: impl Into<Refusal>) -> Self {
        ConfigError {
            path,
            refusal: refusal.into(),
            offset: None,
        }
    }

    pub fn at(mut self, offset: u32) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.refusal)
    }
}

/// Every reason the document was refused, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuses `node` at `path`.
    pub fn push(&mut self, path: &Path, node: &Node, refusal: impl Into<Refusal>) {
        self.0
            .push(ConfigError::new(path.clone(), refusal).at(node.offset));
    }

    /// A refusal with no value to point at.
    pub fn push_unplaced(&mut self, path: &Path, refusal: impl Into<Refusal>) {
        self.0.push(ConfigError::new(path.clone(), refusal));
    }

    /// `Ok(value)` when nothing was refused.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, error) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A value being read, with its path.
#[derive(Debug, Clone, Copy)]
pub struct Field<'n, 'p> {
    pub node: &'n Node,
    pub path: &'p Path,
}

/// A JSON object being read: fields are asked for by name, and
/// [`Object::finish`] refuses the ones nobody asked for.
pub struct Object<'n> {
    node: &'n Node,
    members: &'n [Member],
    path: Path,
    asked: Vec<&'static str>,
    /// Fields refused by the caller for a reason of its own: not unknown.
    handled: Vec<&'static str>,
    /// Child paths, made once per field asked for.
    paths: Vec<(&'static str, Path)>,
}

impl<'n> Object<'n> {
    /// Reads `node` as an object; refuses another kind of value, and every
    /// key given twice.
    pub fn new(node: &'n Node, path: &Path, errors: &mut ConfigErrors) -> Option<Object<'n>> {
        let Some(members) = node.as_object() else {
            errors.push(
                path,
                node,
                Refusal::WrongType {
                    expected: "an object",
                    got: node.kind(),
                },
            );
            return None;
        };
        for (position, member) in members.iter().enumerate() {
            let earlier = members.get(..position).unwrap_or_default();
            if earlier.iter().any(|other| other.key == member.key) {
                errors
                    .0
                    .push(ConfigError::new(path.key(&member.key), Refusal::RepeatedKey).at(member.key_offset));
            }
        }
        Some(Object {
            node,
            members,
            path: path.clone(),
            asked: Vec::new(),
            handled: Vec::new(),
            paths: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn node(&self) -> &'n Node {
        self.node
    }

    /// Whether the object has this key (asking does not count as reading).
    pub fn has(&self, name: &str) -> bool {
        self.members.iter().any(|member| member.key == name)
    }

    /// Every member, for objects whose keys are data (`source.headers`).
    pub fn members(&self) -> &'n [Member] {
        self.members
    }

    /// The path of field `name`.
    pub fn child(&self, name: &str) -> Path {
        self.path.key(name)
    }

    /// Marks `name` as a field of this object and returns its value, if given.
    pub fn get(&mut self, name: &'static str) -> Option<(&'n Node, Path)> {
        if !self.asked.contains(&name) {
            self.asked.push(name);
        }
        let node = self
            .members
            .iter()
            .find(|member| member.key == name)
            .map(|member| &member.value)?;
        let path = match self.paths.iter().find(|(field, _)| *field == name) {
            Some((_, path)) => path.clone(),
            None => {
                let path = self.path.key(name);
                self.paths.push((name, path.clone()));
                path
            }
        };
        Some((node, path))
    }

    /// Marks `name` as dealt with by the caller (refused for a reason of its
    /// own): [`Object::finish`] neither refuses nor suggests it.
    pub fn handled(&mut self, name: &'static str) {
        self.handled.push(name);
    }

    /// Refuses the absence of a required field.
    pub fn missing(&mut self, name: &'static str, errors: &mut ConfigErrors, hint: Option<String>) {
        if !self.asked.contains(&name) {
            self.asked.push(name);
        }
        errors
            .0
            .push(ConfigError::new(self.path.key(name), Refusal::Missing { hint }).at(self.node.offset));
    }

    /// A string field; refuses another kind of value.
    pub fn string(&mut self, name: &'static str, errors: &mut ConfigErrors) -> Option<(String, Path)> {
        let (node, path) = self.get(name)?;
        match node.as_str() {
            Some(text) => Some((text.to_string(), path)),
            None => {
                errors.push(&path, node, wrong_type("a string", node));
                None
            }
        }
    }

    /// A string field that must be given.
    pub fn required_string(&mut self, name: &'static str, errors: &mut ConfigErrors) -> Option<(String, Path)> {
        if !self.has(name) {
            self.missing(name, errors, None);
            return None;
        }
        self.string(name, errors)
    }

    /// A string field that must not be empty when given (and must be given
    /// when `required`).
    pub fn non_empty_string(
        &mut self,
        name: &'static str,
        required: bool,
        errors: &mut ConfigErrors,
    ) -> Option<(String, Path)> {
        let (text, path) = if required {
            self.required_string(name, errors)?
        } else {
            self.string(name, errors)?
        };
        if text.is_empty() {
            if let Some((node, _)) = self.get(name) {
                errors.push(&path, node, Refusal::Empty);
            }
            return None;
        }
        Some((text, path))
    }

    pub fn bool(&mut self, name: &'static str, errors: &mut ConfigErrors) -> Option<(bool, Path)> {
        let (node, path) = self.get(name)?;
        match node.as_bool() {
            Some(flag) => Some((flag, path)),
            None => {
                errors.push(&path, node, wrong_type("true or false", node));
                None
            }
        }
    }

    pub fn array(&mut self, name: &'static str, errors: &mut ConfigErrors) -> Option<(&'n [Node], Path)> {
        let (node, path) = self.get(name)?;
        match node.as_array() {
            Some(items) => Some((items, path)),
            None => {
                errors.push(&path, node, wrong_type("a list", node));
                None
            }
        }
    }

    /// An integer field in `min..=max`, or `default` when absent (or refused).
    pub fn integer(
        &mut self,
        name: &'static str,
        (min, max): (u64, u64),
        default: u64,
        errors: &mut ConfigErrors,
    ) -> u64 {
        let Some((node, path)) = self.get(name) else {
            return default;
        };
        match node.as_number().and_then(|number| number.as_u64()) {
            Some(number) if (min..=max).contains(&number) => number,
            _ => {
                let shown = match node.as_number() {
                    Some(number) => number.to_string(),
                    None => node.to_json(),
                };
                errors.push(
                    &path,
                    node,
                    format!("must be an integer from {min} to {max}, got {shown}"),
                );
                default
            }
        }
    }

    /// Refuses the fields of this object that were never asked for, naming
    /// the ones it has; `allowed` are read elsewhere.
    pub fn finish(self, allowed: &[&str], errors: &mut ConfigErrors) {
        for member in self.members {
            let known = self.asked.contains(&member.key.as_str())
                || allowed.contains(&member.key.as_str())
                || self.handled.contains(&member.key.as_str())
                || member.key.starts_with('_');
            if !known {
                let mut expected: Vec<String> = self
                    .asked
                    .iter()
                    .chain(allowed)
                    .map(|field| field.to_string())
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                errors.0.push(
                    ConfigError::new(
                        self.path.key(&member.key),
                        Refusal::UnknownField { expected },
                    )
                    .at(member.key_offset),
                );
            }
        }
    }
}

/// "must be {expected}, got {kind of node}".
pub fn wrong_type(expected: &'static str, node: &Node) -> Refusal {
    Refusal::WrongType {
        expected,
        got: node.kind(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    #[test]
    fn paths_read_as_written() {
        let path = Path::root().key("services").index(0).key("subsets").index(1).key("weight");
        assert_eq!(path.to_string(), "services[0].subsets[1].weight");
        assert_eq!(Path::root().to_string(), "$");
        assert_eq!(path.parent().unwrap().to_string(), "services[0].subsets[1]");
        let rebased = Path::root()
            .key("services")
            .index(0)
            .key("sticky")
            .rebased(&Path::root().key("services").index(0), &Path::of(&["source", "service"]));
        assert_eq!(rebased.to_string(), "source.service.sticky");
    }

    #[test]
    fn unknown_and_repeated_keys_are_refused_where_they_stand() {
        let text = br#"{"name":"a","nmae":"b","name":"c","_note":1}"#;
        let node = parse(text).unwrap();
        let mut errors = ConfigErrors::default();
        let mut object = Object::new(&node, &Path::root().key("s"), &mut errors).unwrap();
        assert_eq!(object.string("name", &mut errors).unwrap().0, "a");
        object.finish(&[], &mut errors);
        let shown: Vec<(String, Option<u32>)> = errors
            .0
            .iter()
            .map(|e| (e.to_string(), e.offset))
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    "s.name: repeats a key of this object (which one counts would depend on the parser)"
                        .to_string(),
                    Some(23)
                ),
                ("s.nmae: unknown field; expected one of: name".to_string(), Some(12)),
            ]
        );
    }

    #[test]
    fn typed_fields() {
        let node = parse(br#"{"n":"5","i":5000.0,"b":1,"l":{},"e":""}"#).unwrap();
        let mut errors = ConfigErrors::default();
        let mut object = Object::new(&node, &Path::of(&["source"]), &mut errors).unwrap();
        assert_eq!(object.integer("i", (1, 10_000), 7, &mut errors), 7);
        assert_eq!(object.integer("absent", (1, 10), 7, &mut errors), 7);
        assert!(object.bool("b", &mut errors).is_none());
        assert!(object.array("l", &mut errors).is_none());
        assert!(object.non_empty_string("e", false, &mut errors).is_none());
        assert!(object.required_string("r", &mut errors).is_none());
        assert_eq!(
            errors.to_string(),
            "source.i: must be an integer from 1 to 10000, got 5000.0; \
             source.b: must be true or false, got a number; \
             source.l: must be a list, got an object; \
             source.e: must not be empty; \
             source.r: is required"
        );
        assert_eq!(errors.0.last().unwrap().offset, Some(0));
    }
}
