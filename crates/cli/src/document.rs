//! A rule document as the command reads it: JSON or YAML from a file,
//! compiled by the plugin's own compiler, every refusal placed at a line and
//! column of the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::locate::{self, Location, Locations};
use graylane_core::rules::Rules;

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

/// One reason a document was refused, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// JSON path, as the compiler names it.
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
    /// The document as JSON, as the plugin is configured with it.
    pub value: Value,
    pub rules: Rules,
}

impl Document {
    /// The document as the one-line JSON the gateway's configuration carries.
    pub fn json(&self) -> String {
        self.value.to_string()
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
    let value = parse(format, text).map_err(|refusal| refused(vec![refusal]))?;
    // The plugin's own entry point: `source` and `apisix_mode` are checked
    // too, so what passes here passes the gateway.
    match graylane_core::source::configure_value(&value) {
        Ok((rules, _)) => Ok(Document {
            file: file.to_path_buf(),
            format,
            value,
            rules,
        }),
        Err(errors) => {
            let locations = locations(format, text);
            let refusals = errors
                .0
                .into_iter()
                .map(|error| Refusal {
                    location: locations.find(&error.path).map(|(location, _)| location),
                    path: error.path,
                    reason: error.reason,
                })
                .collect();
            Err(refused(refusals))
        }
    }
}

pub fn locations(format: Format, text: &str) -> Locations {
    match format {
        Format::Json => locate::json(text),
        Format::Yaml => locate::yaml(text),
    }
}

/// The text as a JSON value, or a refusal at `$` with the parser's position.
pub fn parse(format: Format, text: &str) -> Result<Value, Refusal> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|error| Refusal {
            path: "$".into(),
            location: (error.line() > 0).then_some(Location {
                line: error.line(),
                column: error.column(),
            }),
            reason: format!("not valid JSON: {error}"),
        }),
        Format::Yaml => serde_norway::from_str::<Value>(text).map_err(|error| Refusal {
            path: "$".into(),
            location: error.location().map(|at| Location {
                line: at.line(),
                column: at.column(),
            }),
            reason: format!("not valid YAML: {error}"),
        }),
    }
}
