//! The randomized campaign: generated documents through the compiler,
//! generated answers through the fetcher (plain, etcd and Consul formats),
//! generated requests through the decision. Nothing may panic, a document
//! that compiles keeps every limit and rule of the configuration, and every
//! decision keeps its invariants.
//!
//! Seeded and reproducible. `cargo test` runs a small campaign; the CI scale
//! (ten million of each) runs in release mode from `scripts/test.sh`:
//!
//! ```text
//! GRAYLANE_CAMPAIGN=10000000 cargo test --release -p graylane-core --test campaign -- --nocapture
//! ```
//!
//! `GRAYLANE_CAMPAIGN_SEED` picks another seed.

// Indexing with a random position taken modulo the length.
#![allow(clippy::indexing_slicing)]

mod random;
mod table;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use graylane_core::config::{check_written_header_name, compile, Base, Limits};
use graylane_core::registry::RegistryService;
use graylane_core::rules::Rules;
use graylane_core::source::codec::base64_encode;
use graylane_core::source::{
    CalloutRequest, CalloutResponse, Clock, Fetcher, Format, GrpcChannel, GrpcTarget, HttpCallout,
    LocalStore, Logger, Mode,
    Metrics, SharedQueue, SharedStore, SourceConfig, StoreError,
};
use graylane_core::split::WeylSequence;
use random::{decide_and_check, Random};

fn count() -> u64 {
    std::env::var("GRAYLANE_CAMPAIGN")
        .ok()
        .and_then(|text| text.replace('_', "").parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("GRAYLANE_CAMPAIGN_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x5eed_1e55_ca11_ab1e)
        | 1
}

const HEADERS: &[&str] = &[
    "x-graylane-cluster",
    "x-gray-tag",
    "x-route",
    "content-length",
    "Transfer-Encoding",
    "host",
    ":path",
    "x-envoy-original-path",
    "x_lane",
    "",
];
const NAMES: &[&str] = &["stable", "canary", "blue", "green", "v2", "a b", "", "x\u{0}"];
const CLUSTERS: &[&str] = &[
    "b-stable",
    "b-canary",
    "outbound|80|v2|b",
    "admin",
    "c d",
    "c\r\nx-admin: 1",
    "\u{0}",
    "é",
];
const WEIGHTS: &[&str] = &["0", "5", "33.33", "50", "66.67", "100", "101", "-1", "0.125", "\"5\"", "1e2", "4294967296"];
const STRINGS: &[&str] = &["beta", "", "a@some-company-name.com", "/api/b", "1", "%zz", "\\u0000"];
const PATTERNS: &[&str] = &["^canary$", ".*@c1\\.com", "\\w{20}@c1", "(a", "[", "a{1000}{1000}", "\\p{Greek}+", "(?i)beta"];
const KINDS: &[&str] = &["exact", "prefix", "suffix", "contains", "regex", "present", "equals"];

/// A document built from the grammar of the configuration, with the values
/// the configuration must refuse mixed in, then sometimes damaged.
fn document(random: &mut Random, fetched: bool) -> String {
    let mut root = Vec::new();
    if !fetched {
        if random.next() % 4 == 0 {
            root.push(format!("\"cluster_header\":{:?}", random.pick(HEADERS)));
        }
        if random.next() % 4 == 0 {
            root.push(format!("\"tag_header\":{:?}", random.pick(HEADERS)));
        }
        if random.next() % 3 == 0 {
            root.push(format!("\"trust_tag\":{}", random.next() % 2 == 0));
        }
        if random.next() % 6 == 0 {
            root.push(format!(
                "\"limits\":{{\"services\":{},\"regexes\":{},\"match_entries\":{},\"name_bytes\":{}}}",
                1 + random.next() % 3,
                random.next() % 3,
                1 + random.next() % 6,
                1 + random.next() % 12
            ));
        }
        if random.next() % 6 == 0 {
            root.push("\"allowed_clusters\":[\"b-stable\",\"outbound|80|*\"]".into());
        }
    } else if random.next() % 20 == 0 {
        root.push("\"limits\":{\"services\":100000}".into());
    }
    let services: Vec<String> = (0..random.next() % 4).map(|_| service(random)).collect();
    root.push(format!("\"services\":[{}]", services.join(",")));
    let mut text = format!("{{{}}}", root.join(","));
    if random.next() % 4 == 0 {
        damage(random, &mut text);
    }
    text
}

fn service(random: &mut Random) -> String {
    let subsets: Vec<String> = (0..1 + random.next() % 4).map(|_| subset(random)).collect();
    let mut fields = vec![
        format!("\"name\":{:?}", random.pick(&["b", "c", "b", ""])),
        format!("\"default\":{:?}", random.pick(NAMES)),
        format!("\"subsets\":[{}]", subsets.join(",")),
    ];
    match random.next() % 6 {
        0 => fields.push("\"hosts\":[\"b.example.com\",\"*.b.example.com\"]".into()),
        1 => fields.push("\"path_prefix\":\"/api/b\"".into()),
        2 => fields.push("\"sticky\":{\"header\":\"userid\"}".into()),
        3 => fields.push("\"sticky\":{\"source_ip\":true}".into()),
        _ => {}
    }
    format!("{{{}}}", fields.join(","))
}

fn subset(random: &mut Random) -> String {
    let mut fields = vec![
        format!("\"name\":{:?}", random.pick(NAMES)),
        format!("\"cluster\":{:?}", random.pick(CLUSTERS)),
    ];
    if random.next() % 2 == 0 {
        fields.push(format!("\"weight\":{}", random.pick(WEIGHTS)));
    }
    if random.next() % 3 == 0 {
        fields.push(format!("\"tag\":{:?}", random.pick(NAMES)));
    }
    if random.next() % 2 == 0 {
        let entries: Vec<String> = (0..random.next() % 3).map(|_| match_entry(random)).collect();
        fields.push(format!("\"match\":[{}]", entries.join(",")));
    }
    format!("{{{}}}", fields.join(","))
}

fn match_entry(random: &mut Random) -> String {
    // Regexes are rare: compiling one costs far more than the rest of a
    // document, and ten million of them would be the whole campaign.
    let kind = match random.next() % 64 {
        0 => "regex",
        _ => random.pick(&KINDS[..4]),
    };
    let value = if kind == "regex" {
        format!("{:?}", random.pick(PATTERNS))
    } else {
        format!("{:?}", random.pick(STRINGS))
    };
    match random.next() % 6 {
        0 => format!("{{\"headers\":[{{\"name\":{:?},\"{kind}\":{value}}}]}}", random.pick(HEADERS)),
        1 => format!("{{\"cookies\":[{{\"name\":\"email\",\"{}\":{value}}}]}}", random.pick(KINDS)),
        2 => format!("{{\"query\":[{{\"name\":\"canary\",\"present\":{}}}]}}", random.next() % 2 == 0),
        3 => format!("{{\"path\":{{\"{kind}\":{value}}}}}"),
        4 => "{\"method\":[\"GET\",\"post\"]}".into(),
        _ => "{}".into(),
    }
}

/// Truncation, a flipped byte, a repeated key or a deep nest.
fn damage(random: &mut Random, text: &mut String) {
    let mut bytes = std::mem::take(text).into_bytes();
    match random.next() % 4 {
        0 => bytes.truncate((random.next() % (bytes.len() as u64 + 1)) as usize),
        1 => {
            let at = (random.next() % bytes.len() as u64) as usize;
            bytes[at] = *random.pick(b"{}[]\",:0\\\x00\xff ");
        }
        2 => {
            let repeated = b"\"name\":\"x\",".to_vec();
            let at = bytes.iter().position(|b| *b == b'{').map_or(0, |p| p + 1);
            bytes.splice(at..at, repeated);
        }
        _ => {
            let depth = (random.next() % 200) as usize;
            bytes = [vec![b'['; depth], bytes, vec![b']'; depth]].concat();
        }
    }
    *text = String::from_utf8_lossy(&bytes).into_owned();
}

/// What every compiled rule set keeps, whoever sent it.
fn check_rules(rules: &Rules, limits: &Limits, allowed: Option<&[&str]>) {
    assert_ne!(rules.cluster_header, rules.tag_header);
    assert!(check_written_header_name(&rules.cluster_header).is_ok(), "{}", rules.cluster_header);
    assert!(check_written_header_name(&rules.tag_header).is_ok(), "{}", rules.tag_header);
    assert!(rules.services.len() as u64 <= limits.services);
    for service in &rules.services {
        assert!(service.subsets.len() as u64 <= limits.subsets_per_service);
        // The default is a subset, or the service has none and says what it
        // answers instead.
        match service.unclaimed_status {
            None => assert!(service.default < service.subsets.len()),
            Some(status) => {
                assert_eq!(service.default, service.subsets.len());
                assert!((200..=599).contains(&status));
            }
        }
        let weights: u64 = service
            .subsets
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != service.default)
            .map(|(_, subset)| u64::from(subset.weight))
            .sum();
        assert!(weights <= 10_000, "weights sum to {weights} basis points");
        for subset in &service.subsets {
            for written in [&subset.cluster, &subset.tag] {
                assert!(!written.is_empty());
                assert!(written.len() as u64 <= limits.name_bytes);
                assert!(written.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{written:?}");
            }
            if let Some(allowed) = allowed {
                assert!(
                    allowed.iter().any(|entry| match entry.strip_suffix('*') {
                        Some(prefix) => subset.cluster.starts_with(prefix),
                        None => *entry == subset.cluster,
                    }),
                    "{} escaped the allow-list",
                    subset.cluster
                );
            }
        }
    }
}

#[test]
fn generated_documents_never_panic_and_what_compiles_keeps_the_rules() {
    let total = count();
    let mut random = Random(seed());
    let mut sequence = WeylSequence::new(7);
    let started = Instant::now();
    let (mut compiled, mut decided) = (0u64, 0u64);
    for _ in 0..total {
        let text = document(&mut random, false);
        let Ok(rules) = compile(text.as_bytes()) else {
            continue;
        };
        compiled += 1;
        let allowed = text
            .contains("allowed_clusters")
            .then_some(&["b-stable", "outbound|80|*"][..]);
        check_rules(&rules, &rules.limits, allowed);
        // A few requests through what compiled, so the rare shapes route too.
        for _ in 0..4 {
            decide_and_check(&rules, &mut random, &mut sequence);
            decided += 1;
        }
    }
    println!(
        "campaign: {total} documents, {compiled} compiled, {decided} requests through them, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(compiled > total / 20, "the generator should reach valid documents, {compiled} did");
    assert!(compiled < total, "the generator should reach refusals");
}

/// The fake gateway the fetcher runs against: one worker, a clock the test
/// moves, a control plane whose answers the test writes.
#[derive(Default)]
struct Gateway {
    now: Cell<u64>,
    store: RefCell<LocalStore>,
    last_token: Cell<u32>,
    counters: RefCell<BTreeMap<String, u64>>,
}

impl Clock for &Gateway {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

impl HttpCallout for &Gateway {
    fn dispatch(&mut self, _request: &CalloutRequest) -> Result<u32, String> {
        self.last_token.set(self.last_token.get() + 1);
        Ok(self.last_token.get())
    }
}

/// The campaign polls: no gRPC.
impl GrpcChannel for &Gateway {
    fn call(&mut self, _: &GrpcTarget, _: &[u8], _: u64) -> Result<u32, String> {
        Err("no gRPC here".into())
    }
    fn open_stream(&mut self, _: &GrpcTarget) -> Result<u32, String> {
        Err("no gRPC here".into())
    }
    fn send(&mut self, _: u32, _: &[u8]) -> Result<(), String> {
        Err("no gRPC here".into())
    }
    fn cancel(&mut self, _: u32) {}
}

impl SharedStore for &Gateway {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.store.borrow().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.store.borrow_mut().set(key, value, cas)
    }
}

/// One worker: nobody to wake.
impl SharedQueue for &Gateway {
    fn register_queue(&mut self, _name: &str) -> Result<u32, String> {
        Ok(1)
    }
    fn enqueue(&mut self, _queue: u32, _message: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn dequeue(&mut self, _queue: u32) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

impl Metrics for &Gateway {
    fn add(&mut self, counter: &str, delta: u64) {
        *self.counters.borrow_mut().entry(counter.into()).or_default() += delta;
    }
    fn gauge(&mut self, _gauge: &str, _value: u64) {}
}

impl Logger for &Gateway {
    fn log(&mut self, _level: log::Level, _message: &str) {}
}

fn source(format: Format) -> SourceConfig {
    SourceConfig {
        format,
        cluster: "rules".into(),
        path: "/rules".into(),
        authority: "rules".into(),
        headers: vec![],
        interval_ms: 1_000,
        timeout_ms: 300,
        jitter_percent: 10,
        max_backoff_ms: 8_000,
        mode: Mode::Poll,
        wait_ms: 30_000,
    }
}

/// An answer in the source's format around a generated document.
fn answer(random: &mut Random, format: usize, revision: u64) -> CalloutResponse {
    let status = *random.pick(&[Some(200), Some(200), Some(200), Some(304), Some(500), None]);
    let document = document(random, true);
    let body = match format {
        0 => document.into_bytes(),
        1 => format!(
            r#"{{"header":{{"revision":"{revision}"}},"kvs":[{{"key":"L2dsL3J1bGVz","mod_revision":"{revision}","value":"{}"}}],"count":"1"}}"#,
            base64_encode(document.as_bytes())
        )
        .into_bytes(),
        _ => {
            let meta = random.pick(&[
                r#"{"canary":"true","weight":"5"}"#,
                r#"{"canary":"true","weight":"101"}"#,
                r#"{"bluegreen":"green","weight":"100"}"#,
                r#"{"canary":"true","match":"{\"headers\":[{\"name\":\"x\",\"regex\":\"\\\\w{20}@c1\"}]}"}"#,
                r#"{"canary":"yes"}"#,
                r#"{}"#,
            ]);
            let mut body = format!(r#"[{{"Service":{{"ID":"b-1","Meta":{{}}}}}},{{"Service":{{"ID":"b-2","Meta":{meta}}}}}]"#);
            if random.next() % 4 == 0 {
                damage(random, &mut body);
            }
            body.into_bytes()
        }
    };
    CalloutResponse {
        status,
        headers: vec![],
        body,
    }
}

#[test]
fn generated_answers_never_panic_and_what_installs_keeps_the_inline_limits() {
    let total = count();
    let mut random = Random(seed() ^ 0xa5a5);
    let limits = Limits {
        services: 2,
        regexes: 1,
        document_bytes: 2_048,
        ..Limits::default()
    };
    let base = Base {
        cluster_header: "x-graylane-cluster".into(),
        tag_header: "x-gray-tag".into(),
        mirror_header: "x-graylane-mirror".into(),
        pin_header: "x-graylane-pin-cookie".into(),
        tag_baggage_key: None,
        trust_tag: false,
        lane_keys: Default::default(),
        limits,
        allowed_clusters: Some(vec!["b-stable".into(), "b-canary".into(), "outbound|80|*".into()]),
    };
    let allowed = ["b-stable", "b-canary", "outbound|80|*"];
    let formats = [
        Format::Graylane,
        Format::Etcd { key: "/gl/rules".into() },
        Format::Consul { service: RegistryService::named("b") },
    ];
    let started = Instant::now();
    let mut installed = 0u64;
    for (index, format) in formats.iter().enumerate() {
        let gateway = Gateway::default();
        let mut fetcher = Fetcher::new(source(format.clone()), base.clone(), index as u64);
        let mut sequence = WeylSequence::new(3);
        for round in 0..total / formats.len() as u64 {
            gateway.now.set(gateway.now.get() + 10_000);
            fetcher.on_tick(&mut &gateway);
            let reply = answer(&mut random, index, round + 1);
            if let Some(new) = fetcher.on_response(&mut &gateway, gateway.last_token.get(), &reply) {
                installed += 1;
                check_rules(&new.rules, &limits, Some(&allowed));
                assert!(!new.rules.trust_tag, "a source cannot turn trust on");
                decide_and_check(&new.rules, &mut random, &mut sequence);
            }
        }
    }
    println!(
        "campaign: {total} answers through the fetcher, {installed} installed, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(installed > 0, "some answers should install");
}

#[test]
fn generated_requests_keep_the_decision_invariants() {
    let total = count();
    let documents = [table::CONTRACT, table::EDGE, table::KINDS, table::WEIGHTS, table::MIRROR, table::BAGGAGE, table::BAGGAGE_EDGE, table::PIN];
    let rules: Vec<_> = documents
        .iter()
        .filter_map(|document| compile(document.as_bytes()).ok())
        .collect();
    assert_eq!(rules.len(), documents.len());
    let mut random = Random(seed() ^ 0x5a5a);
    let mut sequence = WeylSequence::new(11);
    let started = Instant::now();
    let mut routed = 0u64;
    for _ in 0..total {
        if decide_and_check(random.pick(&rules), &mut random, &mut sequence) {
            routed += 1;
        }
    }
    println!(
        "campaign: {total} requests, {routed} routed, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(routed > total / 10, "{routed} of {total} routed");
}
