//! The JSON reader every document graylane reads goes through: the plugin
//! configuration, fetched rule documents, etcd replies, Consul and Nacos
//! answers.
//!
//! A parser of our own rather than a general-purpose one, for what the rules
//! need and such parsers do not give:
//! - **Repeated keys are kept.** `{"cluster":"c1","cluster":"c3"}` is valid
//!   JSON that parsers resolve silently (the last wins, or the first); here the
//!   tree keeps both, so that [`crate::read`] refuses the document with the
//!   path of the second.
//! - **Every value knows where it stands** (its byte offset), so that a
//!   refusal can point at a line and a column without parsing the text again.
//! - **Bounded work.** Nesting depth is capped, and the caller caps the size
//!   before parsing; a hostile control plane cannot make the worker recurse
//!   or allocate without bound.
//! - **Small code.** No serde, no formatting machinery: the plugin's `.wasm`
//!   is compiled by V8 before a gateway serves its first request, and every
//!   kilobyte of code costs start-up time.
//!
//! The grammar is RFC 8259's, exactly: no comments, no trailing commas, no
//! leading zeros, strings of valid UTF-8 with `\uXXXX` escapes and surrogate
//! pairs. `tests/json_parser.rs` checks it against serde_json on generated
//! documents.

use std::fmt;

/// Deepest nesting of lists and objects accepted. Rule documents nest about
/// eight levels deep; registry answers about five.
pub const MAX_DEPTH: usize = 64;

/// A parsed value and the byte offset where it starts in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Value,
    pub offset: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Node>),
    /// Members in document order, repeated keys included.
    Object(Vec<Member>),
}

/// One `"key": value` of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    /// Where the key starts (an unknown or repeated field is fixed there).
    pub key_offset: u32,
    pub value: Node,
}

/// A JSON number as written, read on demand as the type a field needs: an
/// integer field must not silently round `1e3` or `5.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(Box<str>);

impl Number {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number when it is written as a non-negative integer (no fraction,
    /// no exponent) that fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }

    pub fn as_f64(&self) -> Option<f64> {
        self.0.parse().ok()
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Node {
    /// Where the value at `path` stands, as a refusal about it should point:
    /// an object member at its key (where a misspelt or unwanted field is
    /// fixed), a list item at the item. A path that is not there (a missing
    /// field) gives its nearest enclosing value, with `false`.
    pub fn locate(&self, path: &crate::read::Path) -> (u32, bool) {
        use crate::read::Segment;
        let mut node = self;
        let mut offset = self.offset;
        for segment in path.segments() {
            let next = match segment {
                Segment::Key(key) => node
                    .as_object()
                    .and_then(|members| members.iter().find(|member| &member.key == key))
                    .map(|member| (member.key_offset, &member.value)),
                Segment::Index(index) => node
                    .as_array()
                    .and_then(|items| items.get(*index))
                    .map(|item| (item.offset, item)),
            };
            match next {
                Some((at, child)) => {
                    offset = at;
                    node = child;
                }
                None => return (node.offset, false),
            }
        }
        (offset, true)
    }

    /// The kind of value, as refusals name it: "a string", "a list", …
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Bool(flag) => Some(flag),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<&Number> {
        match &self.value {
            Value::Number(number) => Some(number),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[Member]> {
        match &self.value {
            Value::Object(members) => Some(members),
            _ => None,
        }
    }

    /// The first member named `key`, for documents read leniently (registry
    /// answers); rule documents go through [`crate::read`], which refuses
    /// repeated keys.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_object()?
            .iter()
            .find(|member| member.key == key)
            .map(|member| &member.value)
    }

    /// A value built in code (offset 0), for documents graylane writes
    /// itself (a registry answer turned into rules).
    pub fn new(value: Value) -> Node {
        Node { value, offset: 0 }
    }

    pub fn string(text: impl Into<String>) -> Node {
        Node::new(Value::String(text.into()))
    }

    pub fn list(items: Vec<Node>) -> Node {
        Node::new(Value::Array(items))
    }

    /// An object of `(key, value)` pairs, in this order.
    pub fn object<K: Into<String>>(members: impl IntoIterator<Item = (K, Node)>) -> Node {
        Node::new(Value::Object(
            members
                .into_iter()
                .map(|(key, value)| Member {
                    key: key.into(),
                    key_offset: 0,
                    value,
                })
                .collect(),
        ))
    }

    /// Adds (or replaces) member `key` of an object; other values are left
    /// as they are.
    pub fn insert(&mut self, key: &str, value: Node) {
        if let Value::Object(members) = &mut self.value {
            match members.iter_mut().find(|member| member.key == key) {
                Some(member) => member.value = value,
                None => members.push(Member {
                    key: key.to_string(),
                    key_offset: 0,
                    value,
                }),
            }
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value as compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    /// The value as JSON text indented by two spaces, one member or item a
    /// line.
    pub fn to_json_pretty(&self) -> String {
        let mut out = String::new();
        self.write_pretty(&mut out, 0);
        out
    }

    fn write_pretty(&self, out: &mut String, depth: usize) {
        let newline = |out: &mut String, depth: usize| {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        };
        match &self.value {
            Value::Array(items) if !items.is_empty() => {
                out.push('[');
                for (position, item) in items.iter().enumerate() {
                    if position > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    item.write_pretty(out, depth + 1);
                }
                newline(out, depth);
                out.push(']');
            }
            Value::Object(members) if !members.is_empty() => {
                out.push('{');
                for (position, member) in members.iter().enumerate() {
                    if position > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    write_string(&member.key, out);
                    out.push_str(": ");
                    member.value.write_pretty(out, depth + 1);
                }
                newline(out, depth);
                out.push('}');
            }
            _ => self.write_json(out),
        }
    }

    fn write_json(&self, out: &mut String) {
        match &self.value {
            Value::Null => out.push_str("null"),
            Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
            Value::Number(number) => out.push_str(number.as_str()),
            Value::String(text) => write_string(text, out),
            Value::Array(items) => {
                out.push('[');
                for (position, item) in items.iter().enumerate() {
                    if position > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (position, member) in members.iter().enumerate() {
                    if position > 0 {
                        out.push(',');
                    }
                    write_string(&member.key, out);
                    out.push(':');
                    member.value.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

/// `text` as a JSON string literal.
pub fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a text is not JSON, and where (byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: &'static str,
}

impl SyntaxError {
    /// "expected value at line 1 column 2", with the position in `text`.
    pub fn describe(&self, text: &[u8]) -> String {
        let (line, column) = line_column(text, self.offset);
        format!("{} at line {line} column {column}", self.message)
    }
}

/// The 1-based line and column of a byte offset; the column counts
/// characters, not bytes.
pub fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or_default();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before
        .get(line_start..)
        .unwrap_or_default()
        .iter()
        // Count the first byte of each UTF-8 character.
        .filter(|&&b| b & 0xc0 != 0x80)
        .count()
        + 1;
    (line, column)
}

/// Parses a whole JSON text.
pub fn parse(text: &[u8]) -> Result<Node, SyntaxError> {
    let mut parser = Parser { text, at: 0 };
    parser.skip_space();
    let node = parser.value(0)?;
    parser.skip_space();
    if parser.at < text.len() {
        return Err(parser.error("trailing characters"));
    }
    Ok(node)
}

struct Parser<'t> {
    text: &'t [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, message: &'static str) -> SyntaxError {
        SyntaxError {
            offset: self.at,
            message,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn offset(&self) -> u32 {
        u32::try_from(self.at).unwrap_or(u32::MAX)
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let offset = self.offset();
        let value = match self.peek() {
            None => return Err(self.error("EOF while parsing a value")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b't') => self.literal(b"true", Value::Bool(true))?,
            Some(b'f') => self.literal(b"false", Value::Bool(false))?,
            Some(b'n') => self.literal(b"null", Value::Null)?,
            Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
            Some(_) => return Err(self.error("expected value")),
        };
        Ok(Node { value, offset })
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, SyntaxError> {
        if self.text.get(self.at..self.at + word.len()) == Some(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("expected value"))
        }
    }

    fn enter(&self, depth: usize) -> Result<usize, SyntaxError> {
        if depth >= MAX_DEPTH {
            Err(self.error("nested too deeply (more than 64 levels)"))
        } else {
            Ok(depth + 1)
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let depth = self.enter(depth)?;
        self.at += 1; // [
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_space();
            if self.peek() == Some(b']') && !items.is_empty() {
                return Err(self.error("trailing comma"));
            }
            items.push(self.value(depth)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.error("EOF while parsing a list")),
                Some(_) => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let depth = self.enter(depth)?;
        self.at += 1; // {
        let mut members = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_space();
            match self.peek() {
                Some(b'"') => {}
                Some(b'}') if !members.is_empty() => return Err(self.error("trailing comma")),
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("key must be a string")),
            }
            let key_offset = self.offset();
            let key = self.string()?;
            self.skip_space();
            match self.peek() {
                Some(b':') => self.at += 1,
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("expected `:`")),
            }
            self.skip_space();
            let value = self.value(depth)?;
            members.push(Member {
                key,
                key_offset,
                value,
            });
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<Number, SyntaxError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.error("invalid number: leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number: no digit after the decimal point"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number: no digit in the exponent"));
            }
        }
        let lexeme = self.text.get(start..self.at).unwrap_or_default();
        // Digits, signs, '.', 'e': always ASCII.
        let text = std::str::from_utf8(lexeme).map_err(|_| self.error("invalid number"))?;
        Ok(Number(text.into()))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                None => return Err(self.error("EOF while parsing a string")),
                Some(_) => return Err(self.error("invalid escape")),
            };
            value = value * 16 + u32::from(digit);
            self.at += 1;
        }
        Ok(value)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.at += 1; // "
        let mut out: Vec<u8> = Vec::new();
        loop {
            // Copy the run of plain bytes at once.
            let run_start = self.at;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.at += 1;
            }
            let run = self.text.get(run_start..self.at).unwrap_or_default();
            // A run ends at an ASCII byte, so it never splits a character.
            if let Err(error) = std::str::from_utf8(run) {
                return Err(SyntaxError {
                    offset: run_start + error.valid_up_to(),
                    message: "invalid UTF-8 in a string",
                });
            }
            out.extend_from_slice(run);
            match self.peek() {
                None => return Err(self.error("EOF while parsing a string")),
                Some(b'"') => {
                    self.at += 1;
                    return String::from_utf8(out)
                        .map_err(|_| self.error("invalid UTF-8 in a string"));
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'b') => 0x08,
                        Some(b'f') => 0x0c,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'u') => {
                            self.at += 1;
                            let c = self.unicode_escape()?;
                            let mut buffer = [0; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                            continue;
                        }
                        None => return Err(self.error("EOF while parsing a string")),
                        Some(_) => return Err(self.error("invalid escape")),
                    };
                    self.at += 1;
                    out.push(escaped);
                }
                Some(_) => {
                    return Err(
                        self.error("control character (\\u0000-\\u001F) found while parsing a string")
                    )
                }
            }
        }
    }

    /// After `\u`: one escape, or a surrogate pair of two.
    fn unicode_escape(&mut self) -> Result<char, SyntaxError> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if self.text.get(self.at..self.at + 2) != Some(b"\\u") {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(self.error("lone trailing surrogate in hex escape")),
            other => other,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid unicode code point"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Node {
        parse(text.as_bytes()).unwrap()
    }

    fn err(text: &[u8]) -> String {
        parse(text).unwrap_err().describe(text)
    }

    #[test]
    fn values_and_offsets() {
        let node = ok(r#" {"a": [1, -2.5e3, true, null], "b": "x\u00e9\ud83d\ude00"} "#);
        assert_eq!(node.offset, 1);
        let members = node.as_object().unwrap();
        assert_eq!(members[0].key, "a");
        assert_eq!(members[0].key_offset, 2);
        let list = members[0].value.as_array().unwrap();
        assert_eq!(list[0].as_number().unwrap().as_u64(), Some(1));
        assert_eq!(list[1].as_number().unwrap().as_f64(), Some(-2500.0));
        assert_eq!(list[1].as_number().unwrap().as_u64(), None);
        assert_eq!(list[1].offset, 11);
        assert_eq!(node.get("b").unwrap().as_str(), Some("xé😀"));
    }

    #[test]
    fn repeated_keys_are_kept_in_order() {
        let node = ok(r#"{"cluster":"c1","cluster":"c3"}"#);
        let members = node.as_object().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].value.as_str(), Some("c3"));
        assert_eq!(members[1].key_offset, 16);
        // The lenient lookup takes the first.
        assert_eq!(node.get("cluster").unwrap().as_str(), Some("c1"));
    }

    #[test]
    fn refusals_say_what_and_where() {
        assert_eq!(err(b"{services: []}"), "key must be a string at line 1 column 2");
        assert_eq!(err(b"{\"a\":1,}"), "trailing comma at line 1 column 8");
        assert_eq!(err(b"[1,]"), "trailing comma at line 1 column 4");
        assert_eq!(err(b"[,]"), "expected value at line 1 column 2");
        assert_eq!(err(b"[1 2]"), "expected `,` or `]` at line 1 column 4");
        assert_eq!(err(b"{\n  \"a\": 01}"), "invalid number: leading zero at line 2 column 9");
        assert_eq!(err(b"1."), "invalid number: no digit after the decimal point at line 1 column 3");
        assert_eq!(err(b"\"a\x01\""), "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 3");
        assert_eq!(err(b"\"\\x\""), "invalid escape at line 1 column 3");
        assert_eq!(err(b"\"\\ud800\""), "lone leading surrogate in hex escape at line 1 column 8");
        assert_eq!(err(b"\"\\udc00\""), "lone trailing surrogate in hex escape at line 1 column 8");
        assert_eq!(err(b"\"\xff\""), "invalid UTF-8 in a string at line 1 column 2");
        assert_eq!(err(b"{} x"), "trailing characters at line 1 column 4");
        assert_eq!(err(b""), "EOF while parsing a value at line 1 column 1");
        assert_eq!(err(b"{\"a\""), "EOF while parsing an object at line 1 column 5");
        assert_eq!(err(b"tru"), "expected value at line 1 column 1");
        // Columns count characters: "é" is one.
        assert_eq!(err("[\"é\" x]".as_bytes()), "expected `,` or `]` at line 1 column 6");
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(deep.as_bytes()).is_ok());
        let deeper = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(err(deeper.as_bytes()).starts_with("nested too deeply"));
        // A hostile answer a million levels deep is refused, not recursed.
        let hostile = "[".repeat(1_000_000);
        assert!(err(hostile.as_bytes()).starts_with("nested too deeply"));
    }

    #[test]
    fn writes_back_what_it_read() {
        let text = r#"{"a":[1,-2.5e3,true,null,{}],"b":"q\"\\\n\u0001é","a":[]}"#;
        let node = ok(text);
        assert_eq!(node.to_json(), text);
        assert_eq!(
            ok(r#"{"a":[1,{}],"b":[]}"#).to_json_pretty(),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
        assert_eq!(ok(&node.to_json()), node.clone().with_offsets_of(&ok(&node.to_json())));
    }

    impl Node {
        /// For comparing trees of texts that differ only in spacing.
        fn with_offsets_of(mut self, other: &Node) -> Node {
            self.offset = other.offset;
            match (&mut self.value, &other.value) {
                (Value::Array(mine), Value::Array(theirs)) => {
                    for (a, b) in mine.iter_mut().zip(theirs) {
                        *a = a.clone().with_offsets_of(b);
                    }
                }
                (Value::Object(mine), Value::Object(theirs)) => {
                    for (a, b) in mine.iter_mut().zip(theirs) {
                        a.key_offset = b.key_offset;
                        a.value = a.value.clone().with_offsets_of(&b.value);
                    }
                }
                _ => {}
            }
            self
        }
    }
}
