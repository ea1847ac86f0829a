//! What a document may cost: the `limits` section of the plugin
//! configuration, with defaults that keep a worker's VM well within its
//! memory and a recompile short, and the running count of one compile.
//!
//! Only the inline configuration sets limits; a document from a rules source
//! is held to them (a hostile control plane cannot raise its own limits).

use super::Base;
use crate::json::Node;
use crate::read::{ConfigErrors, Object, Path, Refusal};

/// The limits one document is compiled within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of a document (inline, or an answer of the rules source).
    pub document_bytes: u64,
    pub services: u64,
    pub subsets_per_service: u64,
    /// Match entries in the whole document.
    pub match_entries: u64,
    /// Regexes (`regex` and `cookie_regex`) in the whole document.
    pub regexes: u64,
    /// Memory all regexes may hold: compiled forms and lazy-DFA caches.
    pub regex_memory_bytes: u64,
    /// Names, tags, clusters and header names.
    pub name_bytes: u64,
    /// Strings matched against requests, and regex patterns.
    pub value_bytes: u64,
    /// Values of all `in` lists in the whole document.
    pub in_values: u64,
    /// Headers one subset's `set_headers` writes (each is a call into the
    /// gateway per request).
    pub set_headers: u64,
    /// The most of a form body (`form` conditions) a request is held for;
    /// past it, or with another content type, `form` does not match.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            document_bytes: 1 << 20,
            services: 1_000,
            subsets_per_service: 64,
            match_entries: 10_000,
            regexes: 1_000,
            regex_memory_bytes: 32 << 20,
            name_bytes: 256,
            value_bytes: 4_096,
            in_values: 10_000,
            set_headers: 16,
            max_body_bytes: 8_192,
        }
    }
}

/// Each setting's name, its largest allowed value, and where it is stored.
type Setting = (&'static str, u64, fn(&mut Limits) -> &mut u64);

/// A limit can be raised, within reason: these are the ceilings.
const SETTINGS: &[Setting] = &[
    ("document_bytes", 64 << 20, |l| &mut l.document_bytes),
    ("services", 100_000, |l| &mut l.services),
    ("subsets_per_service", 1_000, |l| &mut l.subsets_per_service),
    ("match_entries", 1_000_000, |l| &mut l.match_entries),
    ("regexes", 100_000, |l| &mut l.regexes),
    ("regex_memory_bytes", 1 << 30, |l| &mut l.regex_memory_bytes),
    ("name_bytes", 4_096, |l| &mut l.name_bytes),
    ("value_bytes", 1 << 20, |l| &mut l.value_bytes),
    ("in_values", 1_000_000, |l| &mut l.in_values),
    ("set_headers", 256, |l| &mut l.set_headers),
    // Below Envoy's 1 MiB per-connection buffer, with room for the last
    // read: past that buffer Envoy answers 413 to a paused HTTP/1.1 body.
    ("max_body_bytes", 512 << 10, |l| &mut l.max_body_bytes),
];

impl Limits {
    /// Each setting: its name, its default and its ceiling (the schema and
    /// the README are written from this).
    pub fn settings() -> impl Iterator<Item = (&'static str, u64, u64)> {
        let mut defaults = Limits::default();
        SETTINGS
            .iter()
            .map(move |(name, ceiling, field)| (*name, *field(&mut defaults), *ceiling))
    }

    /// Reads `limits` from the root of the inline document.
    pub(crate) fn read(root: &mut Object<'_>, errors: &mut ConfigErrors) -> Limits {
        let mut limits = Limits::default();
        let Some((node, path)) = root.get("limits") else {
            return limits;
        };
        let Some(mut object) = Object::new(node, &path, errors) else {
            return limits;
        };
        for (name, ceiling, field) in SETTINGS {
            let slot = field(&mut limits);
            *slot = object.integer(name, (1, *ceiling), *slot, errors);
        }
        object.finish(&[], errors);
        limits
    }

    /// Refuses a document longer than `document_bytes`.
    pub fn check_size(&self, bytes: usize) -> Result<(), Refusal> {
        let got = bytes as u64;
        if got > self.document_bytes {
            return Err(Refusal::OverLimit {
                what: "document bytes",
                limit: self.document_bytes,
                got,
                setting: "document_bytes",
            });
        }
        Ok(())
    }
}

/// What one compile has used of its limits so far.
#[derive(Debug)]
pub(crate) struct Budget {
    pub limits: Limits,
    allowed_clusters: Option<Vec<String>>,
    /// The headers the plugin writes itself: `set_headers` may not name them.
    pub cluster_header: String,
    pub tag_header: String,
    /// Whether incoming tags are honoured, and the keys lane cookies are
    /// signed with: a lane cookie at an edge that does not trust tags must
    /// be signed.
    pub trust_tag: bool,
    pub lane_keys: crate::affinity::LaneKeys,
    match_entries: u64,
    in_values: u64,
    regexes: u64,
    regex_memory: u64,
    /// Once a regex limit is crossed, no more regexes are compiled: the
    /// document is refused anyway, and compiling on would cost the memory
    /// the limit is there to protect.
    regexes_exhausted: bool,
}

impl Budget {
    /// Within the default limits, any cluster allowed: for checking a
    /// fragment of a document (a registry service) where it is written.
    pub fn fragment() -> Budget {
        Budget {
            limits: Limits::default(),
            allowed_clusters: None,
            cluster_header: super::DEFAULT_CLUSTER_HEADER.to_string(),
            tag_header: super::DEFAULT_TAG_HEADER.to_string(),
            trust_tag: true,
            lane_keys: crate::affinity::LaneKeys::default(),
            match_entries: 0,
            in_values: 0,
            regexes: 0,
            regex_memory: 0,
            regexes_exhausted: false,
        }
    }

    pub fn new(base: &Base) -> Budget {
        Budget {
            limits: base.limits,
            allowed_clusters: base.allowed_clusters.clone(),
            cluster_header: base.cluster_header.clone(),
            tag_header: base.tag_header.clone(),
            trust_tag: base.trust_tag,
            lane_keys: base.lane_keys.clone(),
            ..Budget::fragment()
        }
    }

    /// Counts `count` more items of a list at `path` against `limit`;
    /// refuses the list when over.
    pub fn list(
        &self,
        what: &'static str,
        setting: &'static str,
        limit: u64,
        count: usize,
        (path, node): (&Path, &Node),
        errors: &mut ConfigErrors,
    ) -> bool {
        let got = count as u64;
        if got > limit {
            refuse_over(errors, (path, node), what, setting, (limit, got));
            return false;
        }
        true
    }

    /// One more match entry; false (and refused) past the limit.
    pub fn match_entry(&mut self, path: &Path, node: &Node, errors: &mut ConfigErrors) -> bool {
        self.match_entries += 1;
        if self.match_entries == self.limits.match_entries + 1 {
            refuse_over(
                errors,
                (path, node),
                "match entries in the document",
                "match_entries",
                (self.limits.match_entries, self.match_entries),
            );
        }
        self.match_entries <= self.limits.match_entries
    }

    /// `count` more values of `in` lists; false (and refused) past the limit.
    pub fn in_values(
        &mut self,
        count: usize,
        path: &Path,
        node: &Node,
        errors: &mut ConfigErrors,
    ) -> bool {
        let before = self.in_values;
        self.in_values = self.in_values.saturating_add(count as u64);
        if self.in_values > self.limits.in_values {
            // Refused once, at the list that crosses the limit.
            if before <= self.limits.in_values {
                let counts = (self.limits.in_values, self.in_values);
                refuse_over(
                    errors,
                    (path, node),
                    "values of in lists in the document",
                    "in_values",
                    counts,
                );
            }
            return false;
        }
        true
    }

    /// Whether one more regex may be compiled; refuses the one that crosses
    /// the count.
    pub fn may_compile_regex(
        &mut self,
        path: &Path,
        node: &Node,
        errors: &mut ConfigErrors,
    ) -> bool {
        if self.regexes_exhausted {
            return false;
        }
        self.regexes += 1;
        if self.regexes > self.limits.regexes {
            self.regexes_exhausted = true;
            refuse_over(
                errors,
                (path, node),
                "regexes in the document",
                "regexes",
                (self.limits.regexes, self.regexes),
            );
            return false;
        }
        true
    }

    /// Counts a compiled regex's memory; refuses the one that crosses the
    /// budget.
    pub fn regex_compiled(
        &mut self,
        memory: usize,
        path: &Path,
        node: &Node,
        errors: &mut ConfigErrors,
    ) -> bool {
        self.regex_memory += memory as u64;
        if self.regex_memory > self.limits.regex_memory_bytes {
            self.regexes_exhausted = true;
            let what = "memory of the regexes up to this one, in bytes";
            let counts = (self.limits.regex_memory_bytes, self.regex_memory);
            refuse_over(errors, (path, node), what, "regex_memory_bytes", counts);
            return false;
        }
        true
    }

    /// Refuses a string longer than its limit.
    pub fn string(
        &self,
        text: &str,
        kind: Length,
        path: &Path,
        node: &Node,
        errors: &mut ConfigErrors,
    ) -> bool {
        let (limit, setting, what) = match kind {
            Length::Name => (self.limits.name_bytes, "name_bytes", "bytes in this name"),
            Length::Value => (
                self.limits.value_bytes,
                "value_bytes",
                "bytes in this value",
            ),
        };
        let got = text.len() as u64;
        if got > limit {
            refuse_over(errors, (path, node), what, setting, (limit, got));
            return false;
        }
        true
    }
}

impl Budget {
    /// Refuses a cluster outside `allowed_clusters`, when that list is given
    /// (an entry ending in `*` allows every cluster starting with the rest).
    pub fn cluster(
        &self,
        cluster: &str,
        path: &Path,
        node: &Node,
        errors: &mut ConfigErrors,
    ) -> bool {
        let Some(allowed) = &self.allowed_clusters else {
            return true;
        };
        let allows = |entry: &String| match entry.strip_suffix('*') {
            Some(prefix) => cluster.starts_with(prefix),
            None => entry == cluster,
        };
        if allowed.iter().any(allows) {
            return true;
        }
        errors.push(
            path,
            node,
            format!(
                "{cluster:?} is not in allowed_clusters ({})",
                allowed.join(", ")
            ),
        );
        false
    }
}

fn refuse_over(
    errors: &mut ConfigErrors,
    (path, node): (&Path, &Node),
    what: &'static str,
    setting: &'static str,
    (limit, got): (u64, u64),
) {
    errors.push(
        path,
        node,
        Refusal::OverLimit {
            what,
            limit,
            got,
            setting,
        },
    );
}

/// Which length limit a string is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Length {
    Name,
    Value,
}
