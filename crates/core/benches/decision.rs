//! Per-request cost of the decision, and the cost of compiling a document.
//!
//! Run with `cargo bench --bench decision`. The rule sets and request mixes
//! are the ones the gateway benchmark uses (bench/rules/, written by
//! bench/gen.py from one description):
//! - `decide/<set>`: `decision::decide` on one request of the mix (cycling
//!   through it), the header map already parsed.
//! - `request_path/<set>`: what the plugin does in wasm besides host calls:
//!   parse the serialised header map, build the request view, decide.
//! - `compile/<n>`: `config::compile` of a document with n services.
//! - `decide/cookie_regex`: the contract's example `cookie_regex` over a
//!   600-byte `Cookie` header that does not match (the regex engine scans
//!   all of it): what the regex crate's `perf` features buy.
//!
//! Set a: 1 service, 2 subsets, a header rule. Sets b and c: 10 and 100
//! services, each with a header rule, a header-regex rule and a weight.

// A benchmark that cannot read its inputs has nothing to measure: stopping at
// once with the reason is the right outcome here, unlike in the plugin.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::hint::black_box;

    use criterion::{BenchmarkId, Criterion};
    use graylane_core::config;
    use graylane_core::decision::decide;
    use graylane_core::request::{parse_header_map, HeaderPair, Request};
    use graylane_core::split::WeylSequence;

    type OwnedRequest = Vec<(Vec<u8>, Vec<u8>)>;

    fn read(name: &str) -> Vec<u8> {
        let path = format!("{}/bench/rules/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run bench/gen.py)"))
    }

    fn requests(set: &str) -> Vec<OwnedRequest> {
        let parsed: Vec<Vec<(String, String)>> =
            serde_json::from_slice(&read(&format!("{set}.requests.json")))
                .expect("request mix is a list of header-pair lists");
        parsed
            .into_iter()
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(n, v)| (n.into_bytes(), v.into_bytes()))
                    .collect()
            })
            .collect()
    }

    /// The proxy-wasm serialisation of a header map, as the host hands it over.
    fn serialise(pairs: &OwnedRequest) -> Vec<u8> {
        let count = u32::try_from(pairs.len()).expect("few headers");
        let mut out = count.to_le_bytes().to_vec();
        for (name, value) in pairs {
            for len in [name.len(), value.len()] {
                out.extend_from_slice(&u32::try_from(len).expect("short").to_le_bytes());
            }
        }
        for (name, value) in pairs {
            for part in [name, value] {
                out.extend_from_slice(part);
                out.push(0);
            }
        }
        out
    }

    pub fn decisions(c: &mut Criterion) {
        for set in ["a", "b", "c"] {
            let rules = config::compile(&read(&format!("{set}.json"))).expect("rule set compiles");
            let owned = requests(set);
            let borrowed: Vec<Vec<HeaderPair<'_>>> = owned
                .iter()
                .map(|pairs| {
                    pairs
                        .iter()
                        .map(|(n, v)| (n.as_slice(), v.as_slice()))
                        .collect()
                })
                .collect();
            let views: Vec<Request<'_>> = borrowed.iter().map(|p| Request::new(p)).collect();
            let serialised: Vec<Vec<u8>> = owned.iter().map(serialise).collect();

            let mut sequence = WeylSequence::new(1);
            let mut next = 0usize;
            c.bench_with_input(BenchmarkId::new("decide", set), &views, |b, views| {
                b.iter(|| {
                    next = (next + 1) % views.len();
                    black_box(decide(&rules, &views[next], &mut sequence).edits.len())
                })
            });
            c.bench_with_input(
                BenchmarkId::new("request_path", set),
                &serialised,
                |b, buffers| {
                    b.iter(|| {
                        next = (next + 1) % buffers.len();
                        let pairs = parse_header_map(black_box(&buffers[next])).expect("valid map");
                        let request = Request::new(&pairs);
                        black_box(decide(&rules, &request, &mut sequence).edits.len())
                    })
                },
            );
        }
    }

    /// The contract's example service; only the cookie regex can claim the
    /// request, and it does not match, so every entry before it is tried too.
    const COOKIE_RULES: &str = r#"{"services": [{"name": "bservice", "hosts": ["b.example.com"],
        "default": "stable", "subsets": [{"name": "stable", "cluster": "bservice-stable"},
        {"name": "canary", "cluster": "bservice-canary", "match": [
          {"headers": [{"name": "userid", "exact": "123"}]},
          {"cookie_regex": "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"}]}]}]}"#;

    pub fn cookie_regex(c: &mut Criterion) {
        let rules = config::compile(COOKIE_RULES.as_bytes()).expect("example compiles");
        let cookie: String = (0..30)
            .map(|i| format!("cookie{i:02}=value{i:04}"))
            .collect::<Vec<_>>()
            .join("; ");
        let pairs: Vec<HeaderPair<'_>> = vec![
            (b":authority", b"b.example.com"),
            (b":path", b"/api/b/items"),
            (b":method", b"GET"),
            (b"cookie", cookie.as_bytes()),
        ];
        let request = Request::new(&pairs);
        let mut sequence = WeylSequence::new(1);
        c.bench_function("decide/cookie_regex", |b| {
            b.iter(|| {
                black_box(
                    decide(&rules, black_box(&request), &mut sequence)
                        .edits
                        .len(),
                )
            })
        });
    }

    pub fn compiles(c: &mut Criterion) {
        let mut group = c.benchmark_group("compile");
        group.sample_size(20);
        for n in [1, 100, 1000] {
            let document = read(&format!("compile-{n}.json"));
            group.bench_with_input(BenchmarkId::from_parameter(n), &document, |b, document| {
                b.iter(|| config::compile(black_box(document)).map(|rules| rules.services.len()))
            });
        }
        group.finish();
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let mut criterion = criterion::Criterion::default().configure_from_args();
    native::decisions(&mut criterion);
    native::cookie_regex(&mut criterion);
    native::compiles(&mut criterion);
    criterion.final_summary();
}

#[cfg(target_arch = "wasm32")]
fn main() {}
