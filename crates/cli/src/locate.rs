//! Where each JSON path of a rule document stands in its source file, so that
//! a refusal such as `services[0].subsets[1].weight: must be between 0 and
//! 100` can point at a line and a column.
//!
//! Paths are spelt as the compiler spells them (`config::compile`): `$` for
//! the document, `field` under the document, `parent.field` and `parent[3]`
//! below. An object member is located at its key (that is where an unknown or
//! misspelt field is to be fixed), a list item at the item itself.
//!
//! JSON is scanned here by hand, tracking lines and columns; YAML is read with
//! yaml-rust2's event parser, which marks every node. Both only run on a
//! document that already parsed, so they give up (return what they have)
//! rather than report syntax errors of their own.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column; the column counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// JSON path → where it stands.
#[derive(Debug, Default, Clone)]
pub struct Locations {
    map: HashMap<String, Location>,
}

impl Locations {
    /// Where `path` stands; for a path that is not in the file (a required
    /// field that is missing) the nearest enclosing node that is, with
    /// `false`.
    pub fn find(&self, path: &str) -> Option<(Location, bool)> {
        let mut current = path;
        let mut exact = true;
        loop {
            if let Some(location) = self.map.get(current) {
                return Some((*location, exact));
            }
            current = parent(current)?;
            exact = false;
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn record(&mut self, path: String, location: Location) {
        self.map.insert(path, location);
    }
}

/// `a.b[2]` → `a.b`; `a.b` → `a`; `a` → `$`; `$` → none.
pub fn parent(path: &str) -> Option<&str> {
    if path == "$" {
        return None;
    }
    if path.ends_with(']') {
        if let Some(open) = path.rfind('[') {
            return Some(match path.get(..open) {
                Some("") | None => "$",
                Some(rest) => rest,
            });
        }
    }
    Some(match path.rfind('.') {
        Some(dot) => path.get(..dot).unwrap_or("$"),
        None => "$",
    })
}

pub fn child_field(parent: &str, field: &str) -> String {
    if parent == "$" {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

pub fn child_item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Locations of every node of a JSON text.
pub fn json(text: &str) -> Locations {
    let mut scan = JsonScan {
        bytes: text.as_bytes(),
        at: 0,
        line: 1,
        column: 1,
        out: Locations::default(),
    };
    scan.skip_space();
    let here = scan.location();
    scan.out.record("$".into(), here);
    // A failure leaves the locations found so far: the document parsed with
    // serde_json already, so this happens only on input the two read
    // differently, and a missing location is then reported as such.
    let _ = scan.value("$");
    scan.out
}

struct JsonScan<'t> {
    bytes: &'t [u8],
    at: usize,
    line: usize,
    column: usize,
    out: Locations,
}

impl JsonScan<'_> {
    fn location(&self) -> Location {
        Location {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        if byte == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if byte & 0xc0 != 0x80 {
            // Not a UTF-8 continuation byte: a new character.
            self.column += 1;
        }
        Some(byte)
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.bump();
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.bump()? == byte).then_some(())
    }

    /// The value starting at the current position (spaces already skipped).
    fn value(&mut self, path: &str) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(path),
            b'[' => self.array(path),
            b'"' => self.string().map(|_| ()),
            _ => {
                // Number, true, false or null: up to the next delimiter.
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                ) {
                    self.bump();
                }
                Some(())
            }
        }
    }

    fn object(&mut self, path: &str) -> Option<()> {
        self.expect(b'{')?;
        self.skip_space();
        if self.peek()? == b'}' {
            self.bump();
            return Some(());
        }
        loop {
            self.skip_space();
            let key_location = self.location();
            let key = self.string()?;
            let child = child_field(path, &key);
            self.out.record(child.clone(), key_location);
            self.skip_space();
            self.expect(b':')?;
            self.skip_space();
            self.value(&child)?;
            self.skip_space();
            match self.bump()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self, path: &str) -> Option<()> {
        self.expect(b'[')?;
        self.skip_space();
        if self.peek()? == b']' {
            self.bump();
            return Some(());
        }
        let mut index = 0;
        loop {
            self.skip_space();
            let child = child_item(path, index);
            let here = self.location();
            self.out.record(child.clone(), here);
            self.value(&child)?;
            index += 1;
            self.skip_space();
            match self.bump()? {
                b',' => continue,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string, decoded (a key may use escapes).
    fn string(&mut self) -> Option<String> {
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match self.bump()? {
                b'\\' => {
                    self.bump()?;
                }
                b'"' => break,
                _ => {}
            }
        }
        let raw = self.bytes.get(start..self.at)?;
        serde_json::from_slice(raw).ok()
    }
}

/// Locations of every node of the first document of a YAML text.
pub fn yaml(text: &str) -> Locations {
    let mut receiver = YamlReceiver::default();
    let mut parser = Parser::new_from_str(text);
    // As for JSON: a text serde_norway accepted but yaml-rust2 does not leaves
    // the locations found so far.
    let _ = parser.load(&mut receiver, false);
    receiver.out
}

enum Frame {
    Mapping {
        path: String,
        /// The key just read, waiting for its value.
        key: Option<(String, Location)>,
        /// Until the first key is read, where the mapping's start event was
        /// marked. The parser marks a block mapping's start after its first
        /// key (where it noticed the mapping), a flow mapping's at its `{`:
        /// whichever comes first in the text is where the mapping begins.
        start: Option<usize>,
    },
    Sequence {
        path: String,
        next: usize,
    },
    /// Inside a node this tool does not map (a key that is itself a mapping
    /// or a list).
    Skipped,
}

#[derive(Default)]
struct YamlReceiver {
    stack: Vec<Frame>,
    documents: usize,
    out: Locations,
}

fn location_of(mark: Marker) -> Location {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Location {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl YamlReceiver {
    /// A node starts at `mark`: which path is it, and where? `None` when it
    /// is a mapping key (recorded as pending) or inside a skipped node.
    fn place(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<(String, Location)> {
        let here = location_of(mark);
        match self.stack.last_mut() {
            None => Some(("$".to_string(), here)),
            Some(Frame::Skipped) => None,
            Some(Frame::Sequence { path, next }) => {
                let child = child_item(path, *next);
                *next += 1;
                Some((child, here))
            }
            Some(Frame::Mapping { path, key, start }) => match key.take() {
                Some((name, key_location)) => Some((child_field(path, &name), key_location)),
                None => {
                    if let Some(start_index) = start.take() {
                        if mark.index() < start_index {
                            let path = path.clone();
                            self.out.record(path, here);
                        }
                    }
                    if let Some(name) = scalar_key {
                        *key = Some((name.to_string(), here));
                    } else {
                        // A complex key: its contents and its value are not
                        // mapped; a placeholder keeps keys and values paired.
                        *key = Some(("?".to_string(), here));
                    }
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for YamlReceiver {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => self.documents += 1,
            _ if self.documents > 1 => {}
            Event::Scalar(value, ..) => {
                if let Some((path, location)) = self.place(Some(&value), mark) {
                    self.out.record(path, location);
                }
            }
            Event::Alias(_) => {
                if let Some((path, location)) = self.place(None, mark) {
                    self.out.record(path, location);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_mapping = matches!(event, Event::MappingStart(..));
                let placed = self.place(None, mark);
                let frame = match placed {
                    Some((path, location)) => {
                        self.out.record(path.clone(), location);
                        if is_mapping {
                            Frame::Mapping {
                                path,
                                key: None,
                                start: Some(mark.index()),
                            }
                        } else {
                            Frame::Sequence { path, next: 0 }
                        }
                    }
                    None => Frame::Skipped,
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(locations: &Locations, path: &str) -> (usize, usize, bool) {
        let (location, exact) = locations.find(path).unwrap();
        (location.line, location.column, exact)
    }

    #[test]
    fn parents() {
        assert_eq!(
            parent("services[0].subsets[1].weight"),
            Some("services[0].subsets[1]")
        );
        assert_eq!(
            parent("services[0].subsets[1]"),
            Some("services[0].subsets")
        );
        assert_eq!(parent("services[0]"), Some("services"));
        assert_eq!(parent("services"), Some("$"));
        assert_eq!(parent("$[0]"), Some("$"));
        assert_eq!(parent("$"), None);
    }

    #[test]
    fn json_locations() {
        let text = "{\n  \"services\": [\n    {\"name\": \"b\", \"k\\u0065y\": 1,\n     \"é\": [true, {\"x\": null}]}\n  ]\n}\n";
        let locations = json(text);
        assert_eq!(at(&locations, "$"), (1, 1, true));
        assert_eq!(at(&locations, "services"), (2, 3, true));
        assert_eq!(at(&locations, "services[0]"), (3, 5, true));
        assert_eq!(at(&locations, "services[0].name"), (3, 6, true));
        // An escaped key is found by its decoded name.
        assert_eq!(at(&locations, "services[0].key"), (3, 19, true));
        assert_eq!(at(&locations, "services[0].é"), (4, 6, true));
        // Columns count characters: "é" is two bytes.
        assert_eq!(at(&locations, "services[0].é[0]"), (4, 12, true));
        assert_eq!(at(&locations, "services[0].é[1]"), (4, 18, true));
        assert_eq!(at(&locations, "services[0].é[1].x"), (4, 19, true));
        // Missing: the nearest enclosing node, not exact.
        assert_eq!(at(&locations, "services[0].default"), (3, 5, false));
    }

    #[test]
    fn yaml_locations() {
        let text = "# rules\nservices:\n  - name: b\n    subsets:\n      - {name: s, cluster: c}\n      - name: t\n        weight: 5\n        match:\n          - headers: [{name: u, exact: \"1\"}]\n";
        let locations = yaml(text);
        assert_eq!(at(&locations, "services"), (2, 1, true));
        assert_eq!(at(&locations, "services[0]"), (3, 5, true));
        assert_eq!(at(&locations, "services[0].name"), (3, 5, true));
        assert_eq!(at(&locations, "services[0].subsets"), (4, 5, true));
        assert_eq!(at(&locations, "services[0].subsets[0]"), (5, 9, true));
        assert_eq!(
            at(&locations, "services[0].subsets[0].cluster"),
            (5, 19, true)
        );
        assert_eq!(
            at(&locations, "services[0].subsets[1].weight"),
            (7, 9, true)
        );
        assert_eq!(
            at(
                &locations,
                "services[0].subsets[1].match[0].headers[0].exact"
            ),
            (9, 33, true)
        );
        assert_eq!(at(&locations, "services[0].default"), (3, 5, false));
    }

    #[test]
    fn yaml_complex_keys_and_later_documents_are_passed_over() {
        let text = "a:\n  ? [x, y]\n  : 1\n  b: 2\n---\nc: 3\n";
        let locations = yaml(text);
        assert_eq!(at(&locations, "a.b"), (4, 3, true));
        assert_eq!(at(&locations, "c"), (1, 1, false));
    }
}
