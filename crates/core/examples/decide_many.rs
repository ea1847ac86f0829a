//! N decisions on the contract's document over five kinds of request (plain,
//! a cookie match, a query match, no service, a foreign tag): run under
//! callgrind with N and with 0, the difference over N is the instructions
//! one decision costs, the figure the README gives.
//!
//! cargo build --release -p graylane-core --example decide_many
//! valgrind --tool=callgrind target/release/examples/decide_many 100000
//! valgrind --tool=callgrind target/release/examples/decide_many 0

use graylane_core::decision::decide;
use graylane_core::request::{HeaderPair, Request};
use graylane_core::split::WeylSequence;

const DOCUMENT: &str = r#"{"services":[
  {"name":"bservice","hosts":["b.example.com","*.b.example.com"],"path_prefix":"/api/b","default":"stable",
   "sticky":{"header":"userid"},
   "subsets":[{"name":"stable","cluster":"bservice-stable"},
     {"name":"canary","cluster":"bservice-canary","tag":"canary","weight":5,"match":[
       {"headers":[{"name":"userid","exact":"123"}]},
       {"cookies":[{"name":"beta","exact":"1"}]},
       {"path":{"prefix":"/api/user"},"method":["GET","HEAD"]},
       {"query":[{"name":"canary","exact":"true"}]}]}]},
  {"name":"other","hosts":["o.example.com"],"default":"a","subsets":[{"name":"a","cluster":"a"}]}]}"#;

const REQUESTS: [&[HeaderPair<'static>]; 5] = [
    &[
        (b":authority", b"b.example.com"),
        (b":method", b"GET"),
        (b":path", b"/api/b/orders"),
        (b"userid", b"user-2"),
    ],
    &[
        (b":authority", b"b.example.com"),
        (b":method", b"GET"),
        (b":path", b"/api/b/x"),
        (b"cookie", b"a=1; beta=1"),
    ],
    &[
        (b":authority", b"b.example.com"),
        (b":method", b"GET"),
        (b":path", b"/api/b/x?canary=true"),
    ],
    &[
        (b":authority", b"nowhere.example.com"),
        (b":method", b"GET"),
        (b":path", b"/"),
    ],
    &[
        (b":authority", b"o.example.com"),
        (b":method", b"GET"),
        (b":path", b"/"),
        (b"x-gray-tag", b"t"),
    ],
];

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let rules = match graylane_core::config::compile(DOCUMENT.as_bytes()) {
        Ok(rules) => rules,
        Err(errors) => {
            eprintln!("{errors}");
            std::process::exit(1);
        }
    };
    let mut sequence = WeylSequence::new(1);
    let mut edits = 0usize;
    for request in REQUESTS.iter().cycle().take(count) {
        edits += decide(&rules, &Request::new(request), &mut sequence)
            .edits
            .len();
    }
    println!("{count} decisions, {edits} header edits");
}
