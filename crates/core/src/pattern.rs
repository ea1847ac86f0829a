//! Regexes in rules, compiled once with a bound on the memory each may take:
//! its compiled form (measured after compiling) and the lazy DFA's cache
//! (capped). The configuration adds these up against `limits`, so that no
//! document, however small, can exhaust the VM (1,200 patterns such as
//! `\w{20}@c1`, 66 KB of JSON, once took about 1.3 GB).
//!
//! Built on the `regex` crate's own engine (regex-automata's meta regex),
//! which reports its memory where the `regex` wrapper does not. Syntax and
//! matching are the `regex` crate's: linear time, found anywhere in the value,
//! and bytes that are not UTF-8 can be matched with `(?-u:…)`.

use regex_automata::meta;
use regex_automata::util::syntax;

/// Largest compiled form of one regex (its Thompson NFA).
pub const MAX_COMPILED_BYTES: usize = 1 << 20;

/// Cache of the lazy DFA, per regex: a hundred states or so, plenty for rule
/// patterns (the contract's e-mail cookie regex uses about 6 KB). A pattern
/// that needs more falls back to a slower engine, still in linear time.
pub const CACHE_BYTES: usize = 16 << 10;

/// A compiled regex and the pattern it came from.
#[derive(Debug, Clone)]
pub struct Pattern {
    regex: meta::Regex,
    source: Box<str>,
    memory: usize,
}

impl Pattern {
    /// Compiles `source`; the error is one line, for a gateway log.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let regex = meta::Builder::new()
            .syntax(syntax::Config::new().utf8(false))
            .configure(
                meta::Config::new()
                    .utf8_empty(false)
                    .nfa_size_limit(Some(MAX_COMPILED_BYTES))
                    .hybrid_cache_capacity(CACHE_BYTES),
            )
            .build(source)
            .map_err(|error| {
                if let Some(limit) = error.size_limit() {
                    return format!(
                        "regex does not compile: the compiled regex exceeds size limit of {limit} bytes"
                    );
                }
                let text = match error.syntax_error() {
                    Some(syntax) => syntax.to_string(),
                    None => error.to_string(),
                };
                // regex-syntax's message spans several lines with a caret
                // under the fault.
                let text: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                format!("regex does not compile: {}", text.join(" "))
            })?;
        let memory = regex.memory_usage() + CACHE_BYTES;
        Ok(Pattern {
            regex,
            source: source.into(),
            memory,
        })
    }

    /// Whether the pattern is found anywhere in `haystack`.
    pub fn is_match(&self, haystack: &[u8]) -> bool {
        self.regex.is_match(haystack)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The most memory this regex holds: its compiled form and its cache.
    pub fn memory(&self) -> usize {
        self.memory
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_as_the_regex_crate_does() {
        let email = Pattern::new(r"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$").unwrap();
        assert!(email.is_match(b"a=1;email=x@some-company-name.com"));
        assert!(!email.is_match(b"a=1; email=x@other.com"));
        // Found anywhere unless anchored; bytes that are not UTF-8.
        assert!(Pattern::new("b+").unwrap().is_match(b"abbc"));
        assert!(Pattern::new(r"(?-u:\xff)").unwrap().is_match(b"a\xffb"));
        assert!(!Pattern::new("[^;]").unwrap().is_match(b"\xff"));
    }

    #[test]
    fn memory_is_measured_and_bounded() {
        let small = Pattern::new("^canary$").unwrap();
        assert!(
            small.memory() < CACHE_BYTES + (16 << 10),
            "{}",
            small.memory()
        );
        let big = Pattern::new(r"\w{20}@c1").unwrap();
        assert!(big.memory() > 500 << 10, "{}", big.memory());
        let error = Pattern::new(r"\w{5000}").unwrap_err();
        assert!(error.contains("exceeds size limit"), "{error}");
        let error = Pattern::new("(a").unwrap_err();
        assert!(
            error.starts_with("regex does not compile: regex parse error:"),
            "{error}"
        );
        assert!(!error.contains('\n'));
    }
}
