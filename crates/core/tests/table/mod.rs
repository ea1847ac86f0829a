//! The routing contract as a table: rules, headers in → cluster and header
//! edits out. `decision_table.rs` runs it natively and `wasm_decision.rs` runs
//! the same table compiled to WebAssembly under node, so the code that ships
//! is held to the same answers.
//!
//! Edits read as: `-name` removes a header, `name=value` sets it; `!404`
//! last says the gateway answers the request itself with that status.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use graylane_core::decision::{decide, HeaderEdit};
use graylane_core::request::Request;
use graylane_core::split::WeylSequence;

/// The contract's own example document, verbatim.
pub const CONTRACT: &str = r#"{
  "cluster_header": "x-graylane-cluster",
  "tag_header": "x-gray-tag",
  "trust_tag": true,
  "services": [
    {
      "name": "bservice",
      "hosts": ["b.example.com", "*.b.example.com"],
      "path_prefix": "/api/b",
      "default": "stable",
      "sticky": { "header": "userid" },
      "subsets": [
        { "name": "stable", "cluster": "bservice-stable" },
        {
          "name": "canary",
          "cluster": "bservice-canary",
          "tag": "canary",
          "weight": 5,
          "match": [
            { "headers": [ { "name": "userid", "exact": "123" } ] },
            { "cookie_regex": "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$" },
            { "cookies": [ { "name": "beta", "exact": "1" } ] },
            { "path": { "prefix": "/api/user" }, "method": ["GET", "HEAD"] },
            { "query": [ { "name": "canary", "exact": "true" } ] }
          ]
        }
      ]
    }
  ]
}"#;

/// An edge gateway: clients must not pick a version by tag.
pub const EDGE: &str = r#"{
  "trust_tag": false,
  "services": [{
    "name": "shop", "default": "stable",
    "subsets": [
      { "name": "stable", "cluster": "shop-v1" },
      { "name": "canary", "cluster": "shop-v2",
        "match": [ { "headers": [ { "name": "x-tester", "present": true } ] } ] }
    ]
  }]
}"#;

/// Every string-match kind and condition, one subset each, with custom
/// header names; two services to check first-declared-wins and path prefixes.
pub const KINDS: &str = r#"{
  "cluster_header": "X-Route-To",
  "tag_header": "X-Lane",
  "services": [
    {
      "name": "api", "hosts": ["api.example.com"], "path_prefix": "/v2", "default": "blue",
      "subsets": [
        { "name": "blue", "cluster": "api-blue", "bluegreen": "blue" },
        { "name": "exact", "cluster": "c-exact", "match": [ { "headers": [ { "name": "x-k", "exact": "exact" } ] } ] },
        { "name": "prefix", "cluster": "c-prefix", "match": [ { "headers": [ { "name": "x-k", "prefix": "pre-" } ] } ] },
        { "name": "suffix", "cluster": "c-suffix", "match": [ { "headers": [ { "name": "x-k", "suffix": "-suf" } ] } ] },
        { "name": "contains", "cluster": "c-contains", "match": [ { "headers": [ { "name": "x-k", "contains": "-mid-" } ] } ] },
        { "name": "regex", "cluster": "c-regex", "match": [ { "headers": [ { "name": "x-k", "regex": "^r[0-9]+$" } ] } ] },
        { "name": "absent", "cluster": "c-absent", "match": [ { "headers": [ { "name": "x-need", "present": false }, { "name": "x-k", "exact": "absent" } ] } ] },
        { "name": "present", "cluster": "c-present", "match": [ { "headers": [ { "name": "x-flag", "present": true } ] } ] },
        { "name": "method", "cluster": "c-method", "match": [ { "path": { "prefix": "/v2/write" }, "method": ["POST", "PUT"] } ] },
        { "name": "pathre", "cluster": "c-pathre", "match": [ { "path": { "regex": "^/v2/items/[0-9]+$" } } ] },
        { "name": "cookie", "cluster": "c-cookie", "match": [ { "cookies": [ { "name": "lane", "suffix": "green" } ] } ] },
        { "name": "query", "cluster": "c-query", "match": [ { "query": [ { "name": "q x", "contains": "é" } ] } ] },
        { "name": "green", "cluster": "api-green", "bluegreen": "green" }
      ]
    },
    { "name": "later", "hosts": ["api.example.com"], "path_prefix": "/", "default": "only",
      "subsets": [ { "name": "only", "cluster": "later" } ] },
    { "name": "anyhost", "path_prefix": "/any", "default": "only",
      "subsets": [ { "name": "only", "cluster": "anyhost" } ] }
  ]
}"#;

/// Weights at the ends of their range, and sticky keys of each kind.
pub const WEIGHTS: &str = r#"{
  "services": [
    { "name": "all-in", "hosts": ["all.example.com"], "default": "old",
      "subsets": [ { "name": "old", "cluster": "old", "weight": 40 }, { "name": "new", "cluster": "new", "weight": 100 } ] },
    { "name": "none", "hosts": ["none.example.com"], "default": "old",
      "subsets": [ { "name": "old", "cluster": "old" }, { "name": "new", "cluster": "new", "weight": 0 } ] },
    { "name": "by-ip", "hosts": ["ip.example.com"], "default": "old", "sticky": { "source_ip": true },
      "subsets": [ { "name": "old", "cluster": "old" }, { "name": "new", "cluster": "new", "weight": 50 } ] },
    { "name": "by-cookie", "hosts": ["cookie.example.com"], "default": "old", "sticky": { "cookie": "uid" },
      "subsets": [ { "name": "old", "cluster": "old" }, { "name": "new", "cluster": "new", "weight": 50 } ] }
  ]
}"#;

/// Rules with a split, comparisons, `in`, `invert` and `not`, a service
/// scoped by header, and headers set per subset (issue 19).
pub const EXPRESSIVE: &str = r#"{
  "services": [
    { "name": "gated", "hosts": ["x.example.com"], "default": "beta",
      "headers": [ { "name": "x-env", "exact": "beta" }, { "name": "x-block", "present": true, "invert": true } ],
      "subsets": [ { "name": "beta", "cluster": "gated-beta", "set_headers": { "x-lane": "base", "X-Env-Seen": "beta" } } ] },
    { "name": "main", "hosts": ["x.example.com"], "default": "stable", "sticky": { "header": "userid" },
      "subsets": [
        { "name": "stable", "cluster": "main-stable", "set_headers": { "x-lane": "base" } },
        { "name": "numbers", "cluster": "c-num", "match": [ { "headers": [ { "name": "x-version", "gt": 5 }, { "name": "x-version", "le": 10.5 } ] } ] },
        { "name": "low", "cluster": "c-low", "match": [ { "headers": [ { "name": "x-version", "lt": 0 } ] }, { "query": [ { "name": "v", "ge": 100 } ] } ] },
        { "name": "listed", "cluster": "c-in", "match": [ { "headers": [ { "name": "x-region", "in": ["eu-2", "eu-1"] } ] } ] },
        { "name": "inverted", "cluster": "c-inv", "match": [ { "path": { "prefix": "/inv" }, "headers": [ { "name": "x-team", "exact": "core", "invert": true } ] } ] },
        { "name": "notpath", "cluster": "c-notpath", "match": [ { "path": { "prefix": "/api", "invert": true }, "method": ["DELETE"] } ] },
        { "name": "negated", "cluster": "c-not", "match": [ { "headers": [ { "name": "x-not-test", "present": true } ],
            "not": { "headers": [ { "name": "x-a", "exact": "1" } ], "cookies": [ { "name": "b", "exact": "2" } ] } } ] },
        { "name": "canary", "cluster": "c-canary", "weight": 10, "set_headers": { "x-lane": "canary" } },
        { "name": "nested", "cluster": "c-nested", "match": [ { "headers": [ { "name": "x-n0", "present": true } ],
            "not": { "headers": [ { "name": "x-n1", "present": true } ], "not": { "headers": [ { "name": "x-n2", "present": true } ] } } } ] }
      ],
      "rules": [
        { "match": [ { "headers": [ { "name": "x-app", "exact": "mobile" } ] } ], "split": [ { "subset": "canary", "weight": 30 } ] },
        { "match": [ { "headers": [ { "name": "x-app", "exact": "all-in" } ] } ], "split": [ { "subset": "canary", "weight": 100 } ] },
        { "match": [ { "headers": [ { "name": "x-app", "exact": "pinned" } ] } ], "split": [] }
      ]
    }
  ]
}"#;

/// Mirroring: `shadow` receives a copy of every GET and HEAD the service's
/// other subsets serve (100% keeps the table deterministic).
pub const MIRROR: &str = r#"{
  "services": [
    { "name": "m", "hosts": ["mirror.example.com"], "default": "stable",
      "subsets": [
        { "name": "stable", "cluster": "m-stable" },
        { "name": "canary", "cluster": "m-canary", "match": [ { "headers": [ { "name": "x-canary", "present": true } ] } ] },
        { "name": "shadow", "cluster": "m-shadow", "mirror": { "percent": 100 } } ] },
    { "name": "posts", "hosts": ["posts.example.com"], "default": "stable",
      "subsets": [
        { "name": "stable", "cluster": "p-stable" },
        { "name": "shadow", "cluster": "p-shadow", "mirror": { "percent": 100, "methods": ["POST"] } } ] }
  ]
}"#;

/// Service `l` of the baggage documents.
macro_rules! lane_services {
    () => {
        r#""services": [
    { "name": "l", "hosts": ["lane.example.com"], "default": "stable",
      "subsets": [
        { "name": "stable", "cluster": "l-stable" },
        { "name": "canary", "cluster": "l-canary", "match": [ { "headers": [ { "name": "x-canary", "present": true } ] } ] } ] }
  ]"#
    };
}

/// The lane as a W3C Baggage member (`tag_baggage_key`), trusted.
pub const BAGGAGE: &str = concat!(r#"{ "tag_baggage_key": "lane", "#, lane_services!(), "}");

/// The same at an edge that trusts no lane.
pub const BAGGAGE_EDGE: &str = concat!(
    r#"{ "tag_baggage_key": "lane", "trust_tag": false, "#,
    lane_services!(),
    "}"
);

/// A pin cookie holding browsers without a sticky key in their bucket.
pub const PIN: &str = r#"{
  "services": [
    { "name": "p", "hosts": ["pin.example.com"], "default": "stable", "sticky": { "header": "userid" },
      "pin_cookie": { "name": "gl_pin", "secure": false },
      "subsets": [ { "name": "stable", "cluster": "p-stable" }, { "name": "canary", "cluster": "p-canary", "weight": 50 } ] }
  ]
}"#;

/// A pin cookie with a rule's split: the rule draws the bucket, pins it,
/// and takes a pinned one.
pub const PIN_RULE: &str = r#"{
  "services": [
    { "name": "pr", "hosts": ["pin-rule.example.com"], "default": "stable", "sticky": { "header": "userid" },
      "pin_cookie": { "name": "gl_pin", "secure": false },
      "subsets": [ { "name": "stable", "cluster": "pr-stable" }, { "name": "canary", "cluster": "pr-canary" } ],
      "rules": [ { "match": [ { "headers": [ { "name": "x-app", "exact": "mobile" } ] } ],
                   "split": [ { "subset": "canary", "weight": 50 } ] } ] }
  ]
}"#;

/// Services without a default (issue 19, item 7): what nothing claims is
/// answered by the gateway. Sticky on `userid`: in this service user-98 is
/// bucket 5, user-23 bucket 640, user-0 bucket 8261.
pub const NO_DEFAULT: &str = r#"{
  "services": [
    { "name": "canary-only", "hosts": ["nd.example.com"], "sticky": { "header": "userid" },
      "subsets": [
        { "name": "canary", "cluster": "nd-canary", "weight": 5,
          "match": [ { "headers": [ { "name": "x-canary", "exact": "always" } ] } ] },
        { "name": "beta", "cluster": "nd-beta", "tag": "beta", "set_headers": { "x-lane": "beta" } }
      ],
      "rules": [ { "match": [ { "headers": [ { "name": "x-app", "exact": "mobile" } ] } ],
                   "split": [ { "subset": "beta", "weight": 50 } ] } ] },
    { "name": "teapot", "hosts": ["tea.example.com"], "unclaimed_status": 418,
      "subsets": [ { "name": "v2", "cluster": "tea-v2", "match": [ { "headers": [ { "name": "x-v2", "present": true } ] } ] } ] }
  ]
}"#;

/// Lane affinity at an edge (issue 19, item 8), decided without a clock
/// as on APISIX's host: the signed cookie carries expiry 0. Its MAC,
/// HMAC-SHA256 over (u64 length, "shop", u64 length, "canary", "0") with the
/// key, was computed apart (Python's `hmac`): a test vector of the format.
pub const AFFINITY: &str = r#"{"trust_tag": false, "lane_keys": ["graylane-table-key-1"],
  "services": [
    { "name": "shop", "hosts": ["aff.example.com"], "default": "stable",
      "lane_cookie": { "name": "gl_lane", "secure": false },
      "subsets": [
        { "name": "stable", "cluster": "aff-stable" },
        { "name": "canary", "cluster": "aff-canary", "affinity": true,
          "match": [ { "headers": [ { "name": "x-canary", "exact": "always" } ] } ] },
        { "name": "beta", "cluster": "aff-beta",
          "match": [ { "headers": [ { "name": "x-beta", "exact": "1" } ] } ] }
      ] }
  ]
}"#;

/// The cookie the table's edge sets for the canary, without a clock.
const LANE_COOKIE: &str = "gl_lane=canary.0.07bce733a06880f98ed84e180adf8a78a612e43a146121091ea25c8bb4f35a3e";

pub struct Case {
    pub name: &'static str,
    pub rules: &'static str,
    pub headers: &'static [(&'static [u8], &'static [u8])],
    pub source_ip: Option<&'static [u8]>,
    pub cluster: Option<&'static str>,
    pub edits: &'static [&'static str],
}

const fn case(
    name: &'static str,
    rules: &'static str,
    headers: &'static [(&'static [u8], &'static [u8])],
    cluster: Option<&'static str>,
    edits: &'static [&'static str],
) -> Case {
    Case {
        name,
        rules,
        headers,
        source_ip: None,
        cluster,
        edits,
    }
}

const B: (&[u8], &[u8]) = (b":authority", b"b.example.com");
const GET: (&[u8], &[u8]) = (b":method", b"GET");
const API: (&[u8], &[u8]) = (b":authority", b"api.example.com");
const X: (&[u8], &[u8]) = (b":authority", b"x.example.com");
const ND: (&[u8], &[u8]) = (b":authority", b"nd.example.com");
const AFF: (&[u8], &[u8]) = (b":authority", b"aff.example.com");

pub const CASES: &[Case] = &[
    // --- the contract's example ---
    case(
        "no rule claims it: default",
        CONTRACT,
        &[B, GET, (b":path", b"/api/b/orders"), (b"userid", b"user-2")],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "header match, tag written",
        CONTRACT,
        &[B, GET, (b":path", b"/api/b/orders"), (b"userid", b"123")],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "upper-case header name still matches",
        CONTRACT,
        &[B, GET, (b":path", b"/api/b"), (b"UserID", b"123")],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "sticky user inside the 5% (bucket 104)",
        CONTRACT,
        &[B, GET, (b":path", b"/api/b/x"), (b"userid", b"user-1")],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "company e-mail cookie, whole-cookie regex",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x"),
            (b"userid", b"user-2"),
            (
                b"cookie",
                b"sid=9;email=ann@some-company-name.com;theme=dark",
            ),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "the contract's regex allows no space after ';': applied as written",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x"),
            (b"userid", b"user-2"),
            (b"cookie", b"sid=9; email=ann@some-company-name.com"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "Cookie headers are joined with '; ' before the whole-cookie regex",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x"),
            (b"userid", b"user-2"),
            (b"cookie", b"email=ann@some-company-name.com"),
            (b"cookie", b"sid=9"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "other company's e-mail stays stable",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x"),
            (b"userid", b"user-2"),
            (b"cookie", b"email=bob@example.org"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "beta cookie in a second Cookie header",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x"),
            (b"userid", b"user-2"),
            (b"cookie", b"a=1"),
            (b"cookie", b"beta=1"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "cookie without '=' is a name with an empty value",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x"),
            (b"userid", b"user-2"),
            (b"cookie", b"beta; other=1"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "query parameter",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x?canary=true"),
            (b"userid", b"user-2"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "percent-encoded query value",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x?canary=%74rue"),
            (b"userid", b"user-2"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "repeated query key: any value may match",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b/x?canary=false&canary=true"),
            (b"userid", b"user-2"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "query in the path is not part of the path prefix",
        CONTRACT,
        &[B, GET, (b":path", b"/api?b"), (b"userid", b"123")],
        None,
        &[],
    ),
    case(
        "host with a port",
        CONTRACT,
        &[
            (b":authority", b"b.example.com:8443"),
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"123"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "host in capitals",
        CONTRACT,
        &[
            (b":authority", b"B.Example.COM"),
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "wildcard host",
        CONTRACT,
        &[
            (b":authority", b"eu.prod.b.example.com"),
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "look-alike host is not claimed",
        CONTRACT,
        &[
            (b":authority", b"b.example.com.evil.net"),
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"123"),
        ],
        None,
        &[],
    ),
    case(
        "label look-alike is not claimed by the wildcard",
        CONTRACT,
        &[
            (b":authority", b"xb.example.com"),
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"123"),
        ],
        None,
        &[],
    ),
    case(
        "other path is not the service",
        CONTRACT,
        &[B, GET, (b":path", b"/api/user/1"), (b"userid", b"123")],
        None,
        &[],
    ),
    case(
        "tag selects the subset and is not written twice",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
            (b"x-gray-tag", b"canary"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary"],
    ),
    case(
        "tag of the default subset's name selects the default",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"123"),
            (b"x-gray-tag", b"stable"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "a tag naming no subset is left for the services behind",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
            (b"x-gray-tag", b"gray"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "a foreign tag is replaced when this service picks a non-default subset",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"123"),
            (b"x-gray-tag", b"gray"),
        ],
        Some("bservice-canary"),
        &["x-graylane-cluster=bservice-canary", "x-gray-tag=canary"],
    ),
    case(
        "tag compared exactly: case matters",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
            (b"x-gray-tag", b"Canary"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "spoofed cluster header is removed, the plugin sets its own",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
            (b"x-graylane-cluster", b"bservice-canary"),
        ],
        Some("bservice-stable"),
        &["-x-graylane-cluster", "x-graylane-cluster=bservice-stable"],
    ),
    case(
        "spoofed cluster headers removed even when no service claims the request",
        CONTRACT,
        &[
            (b":authority", b"other.example.com"),
            GET,
            (b":path", b"/"),
            (b"X-Graylane-Cluster", b"a"),
            (b"x-graylane-cluster", b"b"),
        ],
        None,
        &["-x-graylane-cluster"],
    ),
    case(
        "empty sticky value counts as no key; empty header value matches nothing",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b""),
            (b"x-gray-tag", b""),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "non-UTF-8 bytes in a cookie do not match a Unicode regex class",
        CONTRACT,
        &[
            B,
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"user-2"),
            (b"cookie", b"email=\xff\xfe@some-company-name.com"),
        ],
        Some("bservice-stable"),
        &["x-graylane-cluster=bservice-stable"],
    ),
    case(
        "non-UTF-8 authority is no host",
        CONTRACT,
        &[
            (b":authority", b"b.example.com\xff"),
            GET,
            (b":path", b"/api/b"),
            (b"userid", b"123"),
        ],
        None,
        &[],
    ),
    // --- an edge gateway that does not trust tags ---
    case(
        "untrusted tag is stripped and not obeyed",
        EDGE,
        &[
            (b":authority", b"shop"),
            GET,
            (b":path", b"/"),
            (b"x-gray-tag", b"canary"),
        ],
        Some("shop-v1"),
        &["-x-gray-tag", "x-graylane-cluster=shop-v1"],
    ),
    case(
        "untrusted tag stripped, then the plugin writes its own",
        EDGE,
        &[
            (b":authority", b"shop"),
            GET,
            (b":path", b"/"),
            (b"x-gray-tag", b"canary"),
            (b"x-tester", b""),
        ],
        Some("shop-v2"),
        &[
            "-x-gray-tag",
            "x-graylane-cluster=shop-v2",
            "x-gray-tag=canary",
        ],
    ),
    case(
        "spoofed cluster header and untrusted tag both dropped",
        EDGE,
        &[
            GET,
            (b":path", b"/"),
            (b"x-gray-tag", b"canary"),
            (b"x-graylane-cluster", b"shop-v2"),
        ],
        Some("shop-v1"),
        &[
            "-x-graylane-cluster",
            "-x-gray-tag",
            "x-graylane-cluster=shop-v1",
        ],
    ),
    // --- every string-match kind, custom header names ---
    case(
        "custom cluster and tag header names, lower-cased",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"exact")],
        Some("c-exact"),
        &["x-route-to=c-exact", "x-lane=exact"],
    ),
    case(
        "exact is whole-value",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"exactly")],
        Some("api-blue"),
        &["x-route-to=api-blue"],
    ),
    case(
        "prefix",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"pre-1")],
        Some("c-prefix"),
        &["x-route-to=c-prefix", "x-lane=prefix"],
    ),
    case(
        "suffix",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"1-suf")],
        Some("c-suffix"),
        &["x-route-to=c-suffix", "x-lane=suffix"],
    ),
    case(
        "contains",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"a-mid-b")],
        Some("c-contains"),
        &["x-route-to=c-contains", "x-lane=contains"],
    ),
    case(
        "regex, anchored",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"r42")],
        Some("c-regex"),
        &["x-route-to=c-regex", "x-lane=regex"],
    ),
    case(
        "regex, anchored, no partial",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"r42x")],
        Some("api-blue"),
        &["x-route-to=api-blue"],
    ),
    case(
        "repeated header: any value may match",
        KINDS,
        &[
            API,
            GET,
            (b":path", b"/v2/x"),
            (b"x-k", b"nothing"),
            (b"X-K", b"r7"),
        ],
        Some("c-regex"),
        &["x-route-to=c-regex", "x-lane=regex"],
    ),
    case(
        "present:false holds when the header is absent",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-k", b"absent")],
        Some("c-absent"),
        &["x-route-to=c-absent", "x-lane=absent"],
    ),
    case(
        "present:false fails when the header is there, even empty",
        KINDS,
        &[
            API,
            GET,
            (b":path", b"/v2/x"),
            (b"x-k", b"absent"),
            (b"x-need", b""),
        ],
        Some("api-blue"),
        &["x-route-to=api-blue"],
    ),
    case(
        "present:true holds for an empty value",
        KINDS,
        &[API, GET, (b":path", b"/v2/x"), (b"x-flag", b"")],
        Some("c-present"),
        &["x-route-to=c-present", "x-lane=present"],
    ),
    case(
        "method and path together",
        KINDS,
        &[API, (b":method", b"PUT"), (b":path", b"/v2/write/1")],
        Some("c-method"),
        &["x-route-to=c-method", "x-lane=method"],
    ),
    case(
        "method must be one of the list",
        KINDS,
        &[API, GET, (b":path", b"/v2/write/1")],
        Some("api-blue"),
        &["x-route-to=api-blue"],
    ),
    case(
        "path regex ignores the query string",
        KINDS,
        &[API, GET, (b":path", b"/v2/items/12?expand=1")],
        Some("c-pathre"),
        &["x-route-to=c-pathre", "x-lane=pathre"],
    ),
    case(
        "cookie by name, suffix",
        KINDS,
        &[
            API,
            GET,
            (b":path", b"/v2/x"),
            (b"cookie", b"a=b;lane=blue-green ; c"),
        ],
        Some("c-cookie"),
        &["x-route-to=c-cookie", "x-lane=cookie"],
    ),
    case(
        "query name and value are form-decoded",
        KINDS,
        &[API, GET, (b":path", b"/v2/x?q+x=caf%C3%A9")],
        Some("c-query"),
        &["x-route-to=c-query", "x-lane=query"],
    ),
    case(
        "path prefix of the first service does not fit: the next one claims it",
        KINDS,
        &[API, GET, (b":path", b"/v1/x"), (b"x-k", b"exact")],
        Some("later"),
        &["x-route-to=later"],
    ),
    case(
        "service without hosts takes any host on its path",
        KINDS,
        &[
            (b":authority", b"whatever.test:81"),
            GET,
            (b":path", b"/any/thing"),
        ],
        Some("anyhost"),
        &["x-route-to=anyhost"],
    ),
    case(
        "no authority at all: only host-less services",
        KINDS,
        &[GET, (b":path", b"/any")],
        Some("anyhost"),
        &["x-route-to=anyhost"],
    ),
    case(
        "the plugin's own default header names are not special here",
        KINDS,
        &[
            API,
            GET,
            (b":path", b"/v2/x"),
            (b"x-graylane-cluster", b"c-exact"),
            (b"x-route-to", b"c-regex"),
        ],
        Some("api-blue"),
        &["-x-route-to", "x-route-to=api-blue"],
    ),
    // --- weights at the ends, sticky keys ---
    case(
        "weight 100 takes everything; the default's weight is ignored",
        WEIGHTS,
        &[(b":authority", b"all.example.com"), GET, (b":path", b"/")],
        Some("new"),
        &["x-graylane-cluster=new", "x-gray-tag=new"],
    ),
    case(
        "mirror: a GET the default serves is copied to the shadow",
        MIRROR,
        &[(b":authority", b"mirror.example.com"), GET, (b":path", b"/")],
        Some("m-stable"),
        &["x-graylane-cluster=m-stable", "x-graylane-mirror=m-shadow"],
    ),
    case(
        "mirror: a matched canary request is copied too, tagged as the canary",
        MIRROR,
        &[(b":authority", b"mirror.example.com"), GET, (b":path", b"/"), (b"x-canary", b"1")],
        Some("m-canary"),
        &["x-graylane-cluster=m-canary", "x-gray-tag=canary", "x-graylane-mirror=m-shadow"],
    ),
    case(
        "mirror: POST is not a safe method, not copied by default",
        MIRROR,
        &[(b":authority", b"mirror.example.com"), (b":method", b"POST"), (b":path", b"/")],
        Some("m-stable"),
        &["x-graylane-cluster=m-stable"],
    ),
    case(
        "mirror: methods given: only those",
        MIRROR,
        &[(b":authority", b"posts.example.com"), (b":method", b"POST"), (b":path", b"/")],
        Some("p-stable"),
        &["x-graylane-cluster=p-stable", "x-graylane-mirror=p-shadow"],
    ),
    case(
        "mirror: the client's mirror header is never obeyed",
        MIRROR,
        &[(b":authority", b"mirror.example.com"), (b":method", b"POST"), (b":path", b"/"), (b"x-graylane-mirror", b"admin")],
        Some("m-stable"),
        &["-x-graylane-mirror", "x-graylane-cluster=m-stable"],
    ),
    case(
        "mirror: nor on a request no service claims",
        MIRROR,
        &[(b":authority", b"elsewhere.example.com"), GET, (b":path", b"/"), (b"X-Graylane-Mirror", b"admin")],
        None,
        &["-x-graylane-mirror"],
    ),
    case(
        "baggage: the lane member picks the subset; the tag header is written, baggage already says it",
        BAGGAGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"baggage", b"userId=42, lane=canary;ttl=1")],
        Some("l-canary"),
        &["x-graylane-cluster=l-canary", "x-gray-tag=canary"],
    ),
    case(
        "baggage: a match writes the lane member, other members kept",
        BAGGAGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"x-canary", b"1"), (b"baggage", b"userId=42,sampled=%2C")],
        Some("l-canary"),
        &["x-graylane-cluster=l-canary", "x-gray-tag=canary", "baggage=userId=42,sampled=%2C,lane=canary"],
    ),
    case(
        "baggage: a lane with no subset here goes to the default and is kept for the next hop",
        BAGGAGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"baggage", b"lane=blue")],
        Some("l-stable"),
        &["x-graylane-cluster=l-stable"],
    ),
    case(
        "baggage: the tag header wins over the member, and the member follows it",
        BAGGAGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"x-gray-tag", b"canary"), (b"baggage", b"lane=blue,a=1")],
        Some("l-canary"),
        &["x-graylane-cluster=l-canary", "baggage=a=1,lane=canary"],
    ),
    case(
        "baggage at an untrusted edge: the lane member is stripped, the others kept",
        BAGGAGE_EDGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"baggage", b"a=1, lane=canary")],
        Some("l-stable"),
        &["x-graylane-cluster=l-stable", "baggage=a=1"],
    ),
    case(
        "baggage at an untrusted edge: a header holding only the lane goes, before anything is set",
        BAGGAGE_EDGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"baggage", b"lane=canary")],
        Some("l-stable"),
        &["-baggage", "x-graylane-cluster=l-stable"],
    ),
    case(
        "baggage at an untrusted edge: stripped from a request no service claims too",
        BAGGAGE_EDGE,
        &[(b":authority", b"else.example.com"), GET, (b":path", b"/"), (b"baggage", b"lane=canary")],
        None,
        &["-baggage"],
    ),
    case(
        "baggage at an untrusted edge: a match still writes its lane",
        BAGGAGE_EDGE,
        &[(b":authority", b"lane.example.com"), GET, (b":path", b"/"), (b"x-canary", b"1"), (b"baggage", b"lane=evil,a=1")],
        Some("l-canary"),
        &["x-graylane-cluster=l-canary", "x-gray-tag=canary", "baggage=a=1,lane=canary"],
    ),
    case(
        "pin: a browser without a key gets the drawn bucket (712, the canary's) as a cookie",
        PIN,
        &[(b":authority", b"pin.example.com"), GET, (b":path", b"/")],
        Some("p-canary"),
        &["x-graylane-cluster=p-canary", "x-gray-tag=canary", "x-graylane-pin-cookie=gl_pin=712; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"],
    ),
    case(
        "pin: the cookie's bucket decides (42: the canary's first half)",
        PIN,
        &[(b":authority", b"pin.example.com"), GET, (b":path", b"/"), (b"cookie", b"a=1; gl_pin=42")],
        Some("p-canary"),
        &["x-graylane-cluster=p-canary", "x-gray-tag=canary"],
    ),
    case(
        "pin: bucket 9000 is the default's",
        PIN,
        &[(b":authority", b"pin.example.com"), GET, (b":path", b"/"), (b"cookie", b"gl_pin=9000")],
        Some("p-stable"),
        &["x-graylane-cluster=p-stable"],
    ),
    case(
        "pin: the sticky key (user 1: the default's bucket) wins over the cookie, and sets none",
        PIN,
        &[(b":authority", b"pin.example.com"), GET, (b":path", b"/"), (b"userid", b"1"), (b"cookie", b"gl_pin=42")],
        Some("p-stable"),
        &["x-graylane-cluster=p-stable"],
    ),
    case(
        "pin: a bucket out of range is no pin, and the client's own set-cookie header is dropped",
        PIN,
        &[(b":authority", b"pin.example.com"), GET, (b":path", b"/"), (b"cookie", b"gl_pin=10000"), (b"x-graylane-pin-cookie", b"admin=1")],
        Some("p-canary"),
        &["-x-graylane-pin-cookie", "x-graylane-cluster=p-canary", "x-gray-tag=canary", "x-graylane-pin-cookie=gl_pin=712; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"],
    ),
    case(
        "weight 0 takes nothing",
        WEIGHTS,
        &[(b":authority", b"none.example.com"), GET, (b":path", b"/")],
        Some("old"),
        &["x-graylane-cluster=old"],
    ),
    case(
        "sticky cookie (bucket 4716 of the 50%)",
        WEIGHTS,
        &[
            (b":authority", b"cookie.example.com"),
            GET,
            (b":path", b"/"),
            (b"cookie", b"uid=user-3"),
        ],
        Some("new"),
        &["x-graylane-cluster=new", "x-gray-tag=new"],
    ),
    case(
        "sticky cookie, other user",
        WEIGHTS,
        &[
            (b":authority", b"cookie.example.com"),
            GET,
            (b":path", b"/"),
            (b"cookie", b"uid=user-1"),
        ],
        Some("old"),
        &["x-graylane-cluster=old"],
    ),
    Case {
        name: "sticky source IP (bucket 22)",
        rules: WEIGHTS,
        headers: &[(b":authority", b"ip.example.com"), GET, (b":path", b"/")],
        source_ip: Some(b"10.0.0.8"),
        cluster: Some("new"),
        edits: &["x-graylane-cluster=new", "x-gray-tag=new"],
    },
    Case {
        name: "sticky source IP, other client",
        rules: WEIGHTS,
        headers: &[(b":authority", b"ip.example.com"), GET, (b":path", b"/")],
        source_ip: Some(b"10.0.0.7"),
        cluster: Some("old"),
        edits: &["x-graylane-cluster=old"],
    },
    // --- issue 19: rules with a split, comparisons, in, invert, not,
    // service headers, set_headers (users of "main": user-16 is bucket 210,
    // user-1 bucket 2047, user-0 bucket 3812) ---
    case(
        "service headers hold: the scoped service, set_headers on its default",
        EXPRESSIVE,
        &[X, GET, (b":path", b"/"), (b"x-env", b"beta")],
        Some("gated-beta"),
        &[
            "x-graylane-cluster=gated-beta",
            "x-lane=base",
            "x-env-seen=beta",
        ],
    ),
    case(
        "service headers: an inverted present fails when the header is there",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-env", b"beta"),
            (b"x-block", b""),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "service headers: other value, the next service",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-env", b"alpha"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "gt 5 and le 10.5 on one header",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"7"),
            (b"userid", b"user-0"),
        ],
        Some("c-num"),
        &["x-graylane-cluster=c-num", "x-gray-tag=numbers"],
    ),
    case(
        "le holds at its bound",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"10.50"),
            (b"userid", b"user-0"),
        ],
        Some("c-num"),
        &["x-graylane-cluster=c-num", "x-gray-tag=numbers"],
    ),
    case(
        "gt fails at its bound",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"5"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "le fails above its bound",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"10.51"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "a value that is no decimal number never compares",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"7a"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "an exponent is no decimal number",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"1e1"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "lt 0 on a negative value",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-version", b"-0.5"),
            (b"userid", b"user-0"),
        ],
        Some("c-low"),
        &["x-graylane-cluster=c-low", "x-gray-tag=low"],
    ),
    case(
        "ge 100 on a query parameter",
        EXPRESSIVE,
        &[X, GET, (b":path", b"/?v=100"), (b"userid", b"user-0")],
        Some("c-low"),
        &["x-graylane-cluster=c-low", "x-gray-tag=low"],
    ),
    case(
        "ge 100 fails below",
        EXPRESSIVE,
        &[X, GET, (b":path", b"/?v=99.99"), (b"userid", b"user-0")],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "in: one of the listed values",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-region", b"eu-1"),
            (b"userid", b"user-0"),
        ],
        Some("c-in"),
        &["x-graylane-cluster=c-in", "x-gray-tag=listed"],
    ),
    case(
        "in: a value not listed",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-region", b"eu-3"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "invert: the header has another value",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/inv"),
            (b"x-team", b"edge"),
            (b"userid", b"user-0"),
        ],
        Some("c-inv"),
        &["x-graylane-cluster=c-inv", "x-gray-tag=inverted"],
    ),
    case(
        "invert: an absent header fails the match, so its inversion holds",
        EXPRESSIVE,
        &[X, GET, (b":path", b"/inv"), (b"userid", b"user-0")],
        Some("c-inv"),
        &["x-graylane-cluster=c-inv", "x-gray-tag=inverted"],
    ),
    case(
        "invert: any occurrence matching fails the inverted condition",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/inv"),
            (b"x-team", b"edge"),
            (b"x-team", b"core"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "inverted path",
        EXPRESSIVE,
        &[
            X,
            (b":method", b"DELETE"),
            (b":path", b"/other"),
            (b"userid", b"user-0"),
        ],
        Some("c-notpath"),
        &["x-graylane-cluster=c-notpath", "x-gray-tag=notpath"],
    ),
    case(
        "inverted path, the path matches",
        EXPRESSIVE,
        &[
            X,
            (b":method", b"DELETE"),
            (b":path", b"/api/x"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "not: the inner entry fails, so the entry holds",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-not-test", b"1"),
            (b"x-a", b"1"),
            (b"userid", b"user-0"),
        ],
        Some("c-not"),
        &["x-graylane-cluster=c-not", "x-gray-tag=negated"],
    ),
    case(
        "not: the whole inner entry holds, so the entry fails",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-not-test", b"1"),
            (b"x-a", b"1"),
            (b"cookie", b"b=2"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "rule: mobile user in the rule's 30% (bucket 2047), set_headers of the subset",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-app", b"mobile"),
            (b"userid", b"user-1"),
        ],
        Some("c-canary"),
        &[
            "x-graylane-cluster=c-canary",
            "x-gray-tag=canary",
            "x-lane=canary",
        ],
    ),
    case(
        "the same user without the rule's match: the service's 10% leaves it",
        EXPRESSIVE,
        &[X, GET, (b":path", b"/"), (b"userid", b"user-1")],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "rule: mobile user outside the 30% (bucket 3812) goes to the default",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-app", b"mobile"),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "rule with weight 100",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-app", b"all-in"),
            (b"userid", b"user-0"),
        ],
        Some("c-canary"),
        &[
            "x-graylane-cluster=c-canary",
            "x-gray-tag=canary",
            "x-lane=canary",
        ],
    ),
    case(
        "service weight: user-16 (bucket 210) in the 10%",
        EXPRESSIVE,
        &[X, GET, (b":path", b"/"), (b"userid", b"user-16")],
        Some("c-canary"),
        &[
            "x-graylane-cluster=c-canary",
            "x-gray-tag=canary",
            "x-lane=canary",
        ],
    ),
    case(
        "an empty split pins to the default, before the service's weights",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-app", b"pinned"),
            (b"userid", b"user-16"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "subset matches come before rules",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-app", b"all-in"),
            (b"x-region", b"eu-2"),
        ],
        Some("c-in"),
        &["x-graylane-cluster=c-in", "x-gray-tag=listed"],
    ),
    case(
        "the tag comes first; set_headers follow the tag",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-gray-tag", b"canary"),
            (b"x-app", b"pinned"),
        ],
        Some("c-canary"),
        &["x-graylane-cluster=c-canary", "x-lane=canary"],
    ),
    case(
        "nested not: x-n0 and not (x-n1 and not x-n2); x-n1 absent",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-n0", b""),
            (b"userid", b"user-0"),
        ],
        Some("c-nested"),
        &["x-graylane-cluster=c-nested", "x-gray-tag=nested"],
    ),
    case(
        "nested not: x-n1 without x-n2 makes the inner entry hold",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-n0", b""),
            (b"x-n1", b""),
            (b"userid", b"user-0"),
        ],
        Some("main-stable"),
        &["x-graylane-cluster=main-stable", "x-lane=base"],
    ),
    case(
        "nested not: x-n2 turns the inner entry round again",
        EXPRESSIVE,
        &[
            X,
            GET,
            (b":path", b"/"),
            (b"x-n0", b""),
            (b"x-n1", b""),
            (b"x-n2", b""),
            (b"userid", b"user-0"),
        ],
        Some("c-nested"),
        &["x-graylane-cluster=c-nested", "x-gray-tag=nested"],
    ),
    case(
        "no default: a match still routes",
        NO_DEFAULT,
        &[ND, GET, (b":path", b"/"), (b"x-canary", b"always")],
        Some("nd-canary"),
        &["x-graylane-cluster=nd-canary", "x-gray-tag=canary"],
    ),
    case(
        "no default: a tag still routes, with its set_headers",
        NO_DEFAULT,
        &[ND, GET, (b":path", b"/"), (b"x-gray-tag", b"beta")],
        Some("nd-beta"),
        &["x-graylane-cluster=nd-beta", "x-lane=beta"],
    ),
    case(
        "no default: a sticky user inside the 5% (bucket 5)",
        NO_DEFAULT,
        &[ND, GET, (b":path", b"/"), (b"userid", b"user-98")],
        Some("nd-canary"),
        &["x-graylane-cluster=nd-canary", "x-gray-tag=canary"],
    ),
    case(
        "no default: a user outside the weights (bucket 8261) is answered 404",
        NO_DEFAULT,
        &[ND, GET, (b":path", b"/"), (b"userid", b"user-0")],
        None,
        &["!404"],
    ),
    case(
        "no default: a rule's rest (bucket 8261 of a 50% split) is answered 404",
        NO_DEFAULT,
        &[ND, GET, (b":path", b"/"), (b"x-app", b"mobile"), (b"userid", b"user-0")],
        None,
        &["!404"],
    ),
    case(
        "no default: a rule's share (bucket 640) routes",
        NO_DEFAULT,
        &[ND, GET, (b":path", b"/"), (b"x-app", b"mobile"), (b"userid", b"user-23")],
        Some("nd-beta"),
        &["x-graylane-cluster=nd-beta", "x-gray-tag=beta", "x-lane=beta"],
    ),
    case(
        "no default: a spoofed cluster header is still removed before the reply",
        NO_DEFAULT,
        &[(b":authority", b"tea.example.com"), GET, (b":path", b"/"), (b"x-graylane-cluster", b"tea-v2")],
        None,
        &["-x-graylane-cluster", "!418"],
    ),
    case(
        "no default: unclaimed_status chooses the status",
        NO_DEFAULT,
        &[(b":authority", b"tea.example.com"), GET, (b":path", b"/")],
        None,
        &["!418"],
    ),
    case(
        "no default: another host is no service's, and passes untouched",
        NO_DEFAULT,
        &[(b":authority", b"other.example.com"), GET, (b":path", b"/")],
        None,
        &[],
    ),
    case(
        "affinity: a match sets the signed lane cookie",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"x-canary", b"always")],
        Some("aff-canary"),
        &[
            "x-graylane-cluster=aff-canary",
            "x-gray-tag=canary",
            "x-graylane-pin-cookie=gl_lane=canary.0.07bce733a06880f98ed84e180adf8a78a612e43a146121091ea25c8bb4f35a3e; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax",
        ],
    ),
    case(
        "affinity: the signed cookie routes as the tag would, and is not set again",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"cookie", LANE_COOKIE.as_bytes())],
        Some("aff-canary"),
        &["x-graylane-cluster=aff-canary", "x-gray-tag=canary"],
    ),
    case(
        "affinity: the cookie comes before match entries, as a tag does",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"x-beta", b"1"), (b"cookie", LANE_COOKIE.as_bytes())],
        Some("aff-canary"),
        &["x-graylane-cluster=aff-canary", "x-gray-tag=canary"],
    ),
    case(
        "affinity: an unsigned cookie at the edge is ignored",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"cookie", b"gl_lane=canary")],
        Some("aff-stable"),
        &["x-graylane-cluster=aff-stable"],
    ),
    case(
        "affinity: a cookie signed for another lane's name is ignored",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"cookie", b"gl_lane=beta.0.07bce733a06880f98ed84e180adf8a78a612e43a146121091ea25c8bb4f35a3e")],
        Some("aff-stable"),
        &["x-graylane-cluster=aff-stable"],
    ),
    case(
        "affinity: the untrusted tag is stripped and sets no cookie",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"x-gray-tag", b"canary")],
        Some("aff-stable"),
        &["-x-gray-tag", "x-graylane-cluster=aff-stable"],
    ),
    case(
        "affinity: a subset without affinity sets no cookie",
        AFFINITY,
        &[AFF, GET, (b":path", b"/"), (b"x-beta", b"1")],
        Some("aff-beta"),
        &["x-graylane-cluster=aff-beta", "x-gray-tag=beta"],
    ),
    case(
        "pin and rule: a rule's draw without a key is pinned (bucket 712)",
        PIN_RULE,
        &[(b":authority", b"pin-rule.example.com"), GET, (b":path", b"/"), (b"x-app", b"mobile")],
        Some("pr-canary"),
        &["x-graylane-cluster=pr-canary", "x-gray-tag=canary", "x-graylane-pin-cookie=gl_pin=712; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"],
    ),
    case(
        "pin and rule: the rule takes a pinned bucket (9000: the default's) and sets none",
        PIN_RULE,
        &[(b":authority", b"pin-rule.example.com"), GET, (b":path", b"/"), (b"x-app", b"mobile"), (b"cookie", b"gl_pin=9000")],
        Some("pr-stable"),
        &["x-graylane-cluster=pr-stable"],
    ),
    case(
        "pin and rule: without the rule's match nothing is drawn or pinned",
        PIN_RULE,
        &[(b":authority", b"pin-rule.example.com"), GET, (b":path", b"/")],
        Some("pr-stable"),
        &["x-graylane-cluster=pr-stable"],
    ),
];

pub fn render(edit: &HeaderEdit<'_>) -> String {
    match edit.value() {
        None => format!("-{}", edit.name()),
        Some(value) => format!("{}={value}", edit.name()),
    }
}

/// Runs every case and returns the failures, described.
pub fn failures() -> Vec<String> {
    let mut failures = Vec::new();
    for case in CASES {
        let rules = match graylane_core::config::compile(case.rules.as_bytes()) {
            Ok(rules) => rules,
            Err(errors) => {
                failures.push(format!("{}: rules refused: {errors}", case.name));
                continue;
            }
        };
        let request = Request::new(case.headers).with_source_ip(case.source_ip);
        let decision = decide(&rules, &request, &mut WeylSequence::new(7));
        let mut edits: Vec<String> = decision.edits.iter().map(render).collect();
        edits.extend(decision.local_reply().map(|status| format!("!{status}")));
        if decision.cluster != case.cluster || edits != case.edits {
            failures.push(format!(
                "{}: got cluster {:?} edits {:?}; want {:?} {:?}",
                case.name, decision.cluster, edits, case.cluster, case.edits
            ));
        }
    }
    failures
}

/// Sticky buckets for a spread of keys, to compare the native and wasm
/// builds bucket for bucket.
pub fn bucket_fingerprint() -> (u64, Vec<u32>) {
    let mut sum = 0u64;
    let mut first = Vec::new();
    for i in 0..20_000u32 {
        let key = format!("user-{i}");
        let bucket = graylane_core::split::sticky_bucket("bservice", key.as_bytes());
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(bucket));
        if i < 8 {
            first.push(bucket);
        }
    }
    let mut sequence = WeylSequence::new(12345);
    for _ in 0..20_000 {
        sum = sum
            .wrapping_mul(31)
            .wrapping_add(u64::from(sequence.next_bucket()));
    }
    (sum, first)
}

pub const FINGERPRINT_SUM: u64 = 17_536_830_011_290_352_925;
pub const FINGERPRINT_FIRST: [u32; 8] = [7067, 104, 9895, 5146, 9373, 1019, 1909, 5803];

pub fn assert_every_case_holds() {
    let failures = failures();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// The figures were taken natively and frozen; the wasm build must give them too.
pub fn assert_fingerprint_is_frozen() {
    assert_eq!(
        bucket_fingerprint(),
        (FINGERPRINT_SUM, FINGERPRINT_FIRST.to_vec())
    );
}
