//! A rule document as the command reads it: JSON or YAML from a file,
//! compiled by the plugin's own entry point, every refusal placed at a line and
//! column of the file.

use std::fmt;
use std::path::{Path, PathBuf};

use graylane_core::json::{self, Node};
use graylane_core::read::{ConfigError, Refusal as Reason};
use graylane_core::rules::Rules;
use graylane_core::source::Extensions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// By extension (`.json`, `.yaml`, `.yml`); otherwise by content: a text
    /// whose first character that is not a space is `{` or `[` is JSON.
    pub fn detect(path: &Path, text: &str) -> Format {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ if text.trim_start().starts_with(['{', '[']) => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// A 1-based line and column; the column counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    fn of(text: &str, offset: u32) -> Location {
        let (line, column) = json::line_column(text.as_bytes(), offset as usize);
        Location { line, column }
    }
}

/// One reason a document was refused, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Path, as the compiler names it.
    pub path: String,
    pub reason: String,
    /// Where the path stands; for a missing field, the enclosing object.
    pub location: Option<Location>,
}

/// A document that could not be used, and why.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read: a usage error (exit 2).
    Unreadable { file: PathBuf, reason: String },
    /// The file was read and refused: not JSON/YAML, or rules the plugin
    /// would refuse (exit 1).
    Refused {
        file: PathBuf,
        refusals: Vec<Refusal>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unreadable { file, reason } => {
                write!(f, "{}: cannot read: {reason}", file.display())
            }
            LoadError::Refused { file, refusals } => {
                for (position, refusal) in refusals.iter().enumerate() {
                    if position > 0 {
                        writeln!(f)?;
                    }
                    write_refusal(f, file, refusal)?;
                }
                Ok(())
            }
        }
    }
}

/// `file:line:column: path: reason`, the form editors and CI annotate from.
fn write_refusal(f: &mut fmt::Formatter<'_>, file: &Path, refusal: &Refusal) -> fmt::Result {
    match refusal.location {
        Some(Location { line, column }) => write!(
            f,
            "{}:{line}:{column}: {}: {}",
            file.display(),
            refusal.path,
            refusal.reason
        ),
        None => write!(
            f,
            "{}: {}: {}",
            file.display(),
            refusal.path,
            refusal.reason
        ),
    }
}

impl LoadError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Unreadable { .. } => super::EXIT_USAGE,
            LoadError::Refused { .. } => super::EXIT_INVALID,
        }
    }
}

/// A rule document that compiled.
#[derive(Debug)]
pub struct Document {
    pub file: PathBuf,
    pub format: Format,
    /// The document as read, as the plugin is configured with it.
    pub node: Node,
    pub rules: Rules,
    /// `source` and `apisix_mode`, as the plugin reads them.
    pub extensions: Extensions,
}

impl Document {
    /// The document as the one-line JSON the gateway's configuration carries.
    pub fn json(&self) -> String {
        self.node.to_json()
    }

    /// The document as indented JSON, for configurations people read.
    pub fn json_pretty(&self) -> String {
        self.node.to_json_pretty()
    }
}

/// Reads, parses and compiles a rule document.
pub fn load(file: &Path) -> Result<Document, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|error| LoadError::Unreadable {
        file: file.to_path_buf(),
        reason: error.to_string(),
    })?;
    load_text(file, &text)
}

/// As [`load`], for a text already read; `file` names it in messages and
/// decides the format by its extension.
pub fn load_text(file: &Path, text: &str) -> Result<Document, LoadError> {
    let format = Format::detect(file, text);
    let refused = |refusals| LoadError::Refused {
        file: file.to_path_buf(),
        refusals,
    };
    let node = parse(format, text).map_err(|refusal| refused(vec![refusal]))?;
    // The plugin's own entry point: `source` and `apisix_mode` are checked
    // too, so what passes here passes the gateway.
    match graylane_core::source::configure_node(&node) {
        Ok((rules, extensions)) => Ok(Document {
            file: file.to_path_buf(),
            format,
            node,
            rules,
            extensions,
        }),
        Err(errors) => Err(refused(
            errors
                .0
                .iter()
                .map(|error| locate(&node, text, error))
                .collect(),
        )),
    }
}

/// Where a refusal stands in the text: a field at its key, a list item at
/// the item, a missing field at the object that misses it; a repeated key at
/// the repetition.
pub fn locate(node: &Node, text: &str, error: &ConfigError) -> Refusal {
    let offset = match (&error.refusal, error.offset) {
        (Reason::RepeatedKey | Reason::Syntax(_), Some(offset)) => offset,
        _ => node.locate(&error.path).0,
    };
    Refusal {
        path: error.path.to_string(),
        reason: error.refusal.to_string(),
        location: Some(Location::of(text, offset)),
    }
}

/// The text as a tree, or a refusal at `$` with the parser's position.
pub fn parse(format: Format, text: &str) -> Result<Node, Refusal> {
    match format {
        Format::Json => json::parse(text.as_bytes()).map_err(|error| Refusal {
            path: "$".into(),
            location: Some(Location::of(text, error.offset as u32)),
            reason: format!("not valid JSON: {}", error.describe(text.as_bytes())),
        }),
        Format::Yaml => crate::yaml::parse(text).map_err(|error| {
            let location = Location::of(text, error.offset as u32);
            Refusal {
                path: "$".into(),
                reason: format!(
                    "not valid YAML: {} at line {} column {}",
                    error.message, location.line, location.column
                ),
                location: Some(location),
            }
        }),
    }
}
