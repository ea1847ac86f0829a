//! A YAML rule document read into the core's JSON tree, with the byte offset
//! of every value and key, so that YAML documents are compiled, refused and
//! located exactly as JSON ones are.
//!
//! yaml-rust2's event parser gives the structure and a position for each
//! node; scalars are typed here by YAML 1.2's core schema (plain `true`,
//! `5`, `0.5`, `null`; anything quoted is a string). Repeated keys stay in the
//! tree, so the reader refuses them as it does in JSON. Only the first
//! document of a stream is read: a second one is refused rather than ignored.

use graylane_core::json::{Member, Node, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Why a text is not a usable YAML document, and where (byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub message: String,
    pub offset: usize,
}

/// Reads the first (and only) document of `text`.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let offsets = LineOffsets::new(text);
    let mut builder = Builder {
        offsets: &offsets,
        stack: Vec::new(),
        anchors: Vec::new(),
        root: None,
        documents: 0,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(error) = parser.load(&mut builder, true) {
        return Err(YamlError {
            message: error.info().to_string(),
            offset: offsets.of(error.marker()),
        });
    }
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root.unwrap_or(Node::new(Value::Null)))
}

/// Byte offsets of line starts: yaml-rust2 marks positions by line and
/// character column.
struct LineOffsets<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineOffsets<'t> {
    fn new(text: &'t str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        LineOffsets { text, starts }
    }

    fn of(&self, mark: &Marker) -> usize {
        // Lines count from 1, columns from 0 (in characters).
        let start = self
            .starts
            .get(mark.line().saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len());
        let line = self.text.get(start..).unwrap_or_default();
        start
            + line
                .char_indices()
                .nth(mark.col())
                .map_or(line.len(), |(at, _)| at)
    }
}

enum Frame {
    List {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        /// A key read, waiting for its value.
        key: Option<(String, u32)>,
    },
}

struct Builder<'o, 't> {
    offsets: &'o LineOffsets<'t>,
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
    documents: usize,
    error: Option<YamlError>,
}

impl Builder<'_, '_> {
    fn fail(&mut self, message: &str, offset: usize) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                message: message.to_string(),
                offset,
            });
        }
    }

    /// A complete value: into its parent, or as the document.
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::List { node: list, .. }) => {
                if let Value::Array(items) = &mut list.value {
                    items.push(node);
                }
            }
            Some(Frame::Map { node: map, key, .. }) => match key.take() {
                Some((name, key_offset)) => {
                    if let Value::Object(members) = &mut map.value {
                        members.push(Member {
                            key: name,
                            key_offset,
                            value: node,
                        });
                    }
                    // A block mapping's own mark may come after its first
                    // key: the mapping starts where its first key does.
                    map.offset = map.offset.min(key_offset);
                }
                None => match node.value {
                    Value::String(name) => *key = Some((name, node.offset)),
                    // Scalars typed as other kinds still name keys by text.
                    Value::Null | Value::Bool(_) | Value::Number(_) => {
                        let name = node.to_json();
                        *key = Some((name, node.offset));
                    }
                    Value::Array(_) | Value::Object(_) => {
                        *key = Some(("?".into(), node.offset));
                        let offset = node.offset as usize;
                        self.fail("a mapping key must be a plain value, not a list or a mapping", offset);
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_, '_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let offset = self.offsets.of(&mark);
        let at = u32::try_from(offset).unwrap_or(u32::MAX);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail("a second document in the stream; give one rule document", offset);
                }
            }
            _ if self.documents > 1 => {}
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let as_string = quoted || tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if as_string { Value::String(text) } else { plain(text) };
                self.finish(Node { value, offset: at }, anchor);
            }
            Event::Alias(anchor) => {
                match self.anchors.iter().rev().find(|(id, _)| *id == anchor) {
                    Some((_, node)) => {
                        let mut node = node.clone();
                        node.offset = at;
                        self.finish(node, 0);
                    }
                    None => self.fail("an alias to an unknown anchor", offset),
                }
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::List {
                node: Node {
                    value: Value::Array(Vec::new()),
                    offset: at,
                },
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                node: Node {
                    value: Value::Object(Vec::new()),
                    offset: at,
                },
                anchor,
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::List { node, anchor } | Frame::Map { node, anchor, .. }) => {
                    self.finish(node, anchor);
                }
                None => {}
            },
            _ => {}
        }
    }
}

/// A plain scalar typed by YAML 1.2's core schema.
fn plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    match number(&text) {
        Some(number) => Value::Number(number),
        None => Value::String(text),
    }
}

/// A YAML number as a JSON number: `+5` → `5`, `.5` → `0.5`, `0x1f` → `31`.
fn number(text: &str) -> Option<Number> {
    let json = if let Some(hex) = text.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?.to_string()
    } else if let Some(octal) = text.strip_prefix("0o") {
        u64::from_str_radix(octal, 8).ok()?.to_string()
    } else {
        let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
        let is_decimal = !unsigned.is_empty()
            && unsigned
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
            && unsigned.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.');
        if !is_decimal {
            return None;
        }
        if unsigned.bytes().all(|b| b.is_ascii_digit()) {
            let sign = if text.starts_with('-') { "-" } else { "" };
            let digits = unsigned.trim_start_matches('0');
            format!("{sign}{}", if digits.is_empty() { "0" } else { digits })
        } else {
            let value: f64 = text.parse().ok()?;
            if !value.is_finite() {
                return None;
            }
            format!("{value:?}")
        }
    };
    // Checked by the JSON grammar, so that what the tree holds is JSON.
    let node = graylane_core::json::parse(json.as_bytes()).ok()?;
    node.as_number().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yaml_document_reads_as_its_json_twin() {
        let text = "services:\n  - name: b\n    weight: +5\n    share: .5\n    on: true\n    tag: \"007\"\n    hex: 0x1f\n    none: ~\n    list: [a, 'b', 3]\n";
        let node = parse(text).unwrap();
        assert_eq!(
            node.to_json(),
            r#"{"services":[{"name":"b","weight":5,"share":0.5,"on":true,"tag":"007","hex":31,"none":null,"list":["a","b",3]}]}"#
        );
    }

    #[test]
    fn offsets_point_at_keys_and_items() {
        let text = "# rules\nservices:\n  - name: é\n    subsets:\n      - {name: s, cluster: c}\n";
        let node = parse(text).unwrap();
        let services = node.as_object().unwrap();
        assert_eq!(services[0].key_offset as usize, text.find("services").unwrap());
        let service = &services[0].value.as_array().unwrap()[0];
        assert_eq!(service.offset as usize, text.find("name").unwrap());
        let subsets = &service.as_object().unwrap()[1];
        assert_eq!(subsets.key_offset as usize, text.find("subsets").unwrap());
        let first = &subsets.value.as_array().unwrap()[0];
        assert_eq!(first.offset as usize, text.find('{').unwrap());
        let cluster = &first.as_object().unwrap()[1];
        assert_eq!(cluster.key_offset as usize, text.find("cluster").unwrap());
    }

    #[test]
    fn repeated_keys_anchors_and_streams() {
        let node = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(node.as_object().unwrap().len(), 2);
        let node = parse("x: &s {cluster: c}\ny: *s\n").unwrap();
        assert_eq!(node.to_json(), r#"{"x":{"cluster":"c"},"y":{"cluster":"c"}}"#);
        let error = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(error.message.contains("second document"), "{error:?}");
        let error = parse("a:\n  ? [x, y]\n  : 1\n").unwrap_err();
        assert!(error.message.contains("mapping key"), "{error:?}");
        let error = parse("services:\n  - name: x\n   bad: [\n").unwrap_err();
        assert_eq!(graylane_core::json::line_column(b"services:\n  - name: x\n   bad: [\n", error.offset).0, 3);
    }
}
