//! `graylane import`: a peer gateway's canary rules as a graylane document.
//!
//! - [`apisix`]: an APISIX route with the `traffic-split` plugin.
//! - [`ingress_nginx`]: a mainline Ingress and its canary Ingress.
//!
//! Each translator returns the document, everything it could not translate
//! (`losses`: the routing would differ) and notes (the routing is the same,
//! but something is worth knowing). The document is compiled with the
//! plugin's own compiler before it is printed.

pub mod apisix;
pub mod ingress_nginx;

use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};

/// What a translator made of its input.
#[derive(Debug, Default)]
pub struct Translation {
    pub services: Vec<Value>,
    /// What could not be said in graylane: the routing would differ.
    pub losses: Vec<String>,
    /// Said differently, or left to the gateway; the routing is the same.
    pub notes: Vec<String>,
}

impl Translation {
    /// The document: `trust_tag` is false, since neither peer lets a client
    /// pick a version by a header of graylane's.
    pub fn document(&self) -> Value {
        json!({ "trust_tag": false, "services": self.services })
    }
}

/// The peers `graylane import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// An APISIX route (JSON or YAML) with the traffic-split plugin
    Apisix,
    /// A YAML stream with a mainline Ingress and its canary Ingress
    IngressNginx,
}

/// Reads `file`, translates it, prints the document on `stdout` and every
/// loss and note on `stderr`. Exit 0; 1 when something could not be
/// translated (unless `lossy`) or the translation is refused; 2 when the
/// file cannot be read or is not what the peer writes.
pub fn run(
    peer: Peer,
    file: &Path,
    lossy: bool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    let shown = file.display();
    let translated = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|text| documents(&text))
        .and_then(|documents| match peer {
            Peer::Apisix => apisix::translate(&documents),
            Peer::IngressNginx => ingress_nginx::translate(&documents),
        });
    let translation = match translated {
        Ok(translation) => translation,
        Err(message) => {
            let _ = writeln!(stderr, "graylane import: {shown}: {message}");
            return EXIT_USAGE;
        }
    };
    let document = translation.document();
    let text = serde_json::to_string_pretty(&document).unwrap_or_default();
    if let Err(errors) = graylane_core::config::compile(text.as_bytes()) {
        let _ = writeln!(
            stderr,
            "graylane import: {shown}: the translation is refused by the compiler (a bug of the importer, or an input the peer would refuse too): {errors}"
        );
        return EXIT_INVALID;
    }
    let _ = writeln!(stdout, "{text}");
    let _ = writeln!(
        stderr,
        "graylane import: note: trust_tag is false, so that a client cannot pick a version by sending x-gray-tag, as with the peer; make it true behind another graylane gateway"
    );
    for note in &translation.notes {
        let _ = writeln!(stderr, "graylane import: note: {note}");
    }
    for loss in &translation.losses {
        let _ = writeln!(stderr, "graylane import: not translated: {loss}");
    }
    if translation.losses.is_empty() || lossy {
        return EXIT_OK;
    }
    let _ = writeln!(
        stderr,
        "graylane import: {} thing(s) could not be translated; the document above routes differently there (--lossy accepts it)",
        translation.losses.len()
    );
    EXIT_INVALID
}

/// Every document of a YAML stream (JSON is YAML too).
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut all = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("not JSON or YAML: {e}"))?;
        if !value.is_null() {
            all.push(value);
        }
    }
    Ok(all)
}

/// Integer weights as graylane percent in basis points, for the subsets that
/// are not the default: each share rounded down to two decimals, the default
/// taking the rest. When the default has no weight of its own, the last
/// subset takes the rest, so that nothing falls to it by rounding. `exact`
/// says whether every share was already a whole number of basis points.
pub(crate) fn basis_points(weights: &[u64], default_weight: u64) -> (Vec<u32>, bool) {
    let total: u128 =
        weights.iter().map(|w| u128::from(*w)).sum::<u128>() + u128::from(default_weight);
    if total == 0 {
        return (vec![0; weights.len()], true);
    }
    let mut exact = true;
    let mut shares: Vec<u32> = weights
        .iter()
        .map(|w| {
            let scaled = u128::from(*w) * 10_000;
            exact &= scaled % total == 0;
            u32::try_from(scaled / total).unwrap_or(10_000)
        })
        .collect();
    if default_weight == 0 {
        let given: u32 = shares.iter().sum();
        if let Some(last) = shares.iter_mut().rev().find(|s| **s > 0) {
            *last += 10_000u32.saturating_sub(given);
        }
    }
    (shares, exact)
}

/// Basis points as the JSON number of percent a document carries.
pub(crate) fn percent_value(basis_points: u32) -> Value {
    if basis_points % 100 == 0 {
        json!(basis_points / 100)
    } else {
        json!(f64::from(basis_points) / 100.0)
    }
}

/// A name the document may write as a tag: visible ASCII, with anything
/// else replaced by '-'.
pub(crate) fn header_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .collect();
    if safe.is_empty() {
        "unnamed".into()
    } else {
        safe
    }
}

/// A string for a scalar JSON value as the peer compares it.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}
