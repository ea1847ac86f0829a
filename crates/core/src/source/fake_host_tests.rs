//! The fetcher against a fake clock and a fake host: several workers sharing
//! one store, a control plane whose answers the test writes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use super::codec::base64_encode;
use super::*;

/// A shared queue: its name and the messages waiting.
type Queue = (String, VecDeque<Vec<u8>>);

#[derive(Default)]
struct World {
    now: Cell<u64>,
    store: RefCell<LocalStore>,
    calls: RefCell<Vec<(u32, CalloutRequest)>>,
    next_token: Cell<u32>,
    counters: RefCell<BTreeMap<String, u64>>,
    gauges: RefCell<BTreeMap<String, u64>>,
    logs: RefCell<Vec<(log::Level, String)>>,
    refuse_dispatch: Cell<bool>,
    grpc: RefCell<FakeGrpc>,
    /// Shared queues by id: (name, messages). The host keys them by name.
    queues: RefCell<BTreeMap<u32, Queue>>,
    refuse_queues: Cell<bool>,
}

/// What the fetcher did over gRPC, in order.
#[derive(Default)]
struct FakeGrpc {
    /// Unary calls: token, target, message.
    calls: Vec<(u32, GrpcTarget, Vec<u8>)>,
    /// Streams opened: token, target.
    streams: Vec<(u32, GrpcTarget)>,
    /// Messages sent on streams: token, message.
    sent: Vec<(u32, Vec<u8>)>,
    canceled: Vec<u32>,
    refuse: bool,
}

struct FakeHost<'w>(&'w World);

impl Clock for FakeHost<'_> {
    fn now_ms(&self) -> u64 {
        self.0.now.get()
    }
}

impl HttpCallout for FakeHost<'_> {
    fn dispatch(&mut self, request: &CalloutRequest) -> Result<u32, String> {
        if self.0.refuse_dispatch.get() {
            return Err("no such cluster".into());
        }
        let token = self.0.next_token.get() + 1;
        self.0.next_token.set(token);
        self.0.calls.borrow_mut().push((token, request.clone()));
        Ok(token)
    }
}

impl FakeHost<'_> {
    fn next_token(&self) -> u32 {
        let token = self.0.next_token.get() + 1;
        self.0.next_token.set(token);
        token
    }
}

impl GrpcChannel for FakeHost<'_> {
    fn call(&mut self, target: &GrpcTarget, message: &[u8], _timeout_ms: u64) -> Result<u32, String> {
        if self.0.grpc.borrow().refuse {
            return Err("no such cluster".into());
        }
        let token = self.next_token();
        self.0
            .grpc
            .borrow_mut()
            .calls
            .push((token, target.clone(), message.to_vec()));
        Ok(token)
    }
    fn open_stream(&mut self, target: &GrpcTarget) -> Result<u32, String> {
        if self.0.grpc.borrow().refuse {
            return Err("no such cluster".into());
        }
        let token = self.next_token();
        self.0.grpc.borrow_mut().streams.push((token, target.clone()));
        Ok(token)
    }
    fn send(&mut self, stream: u32, message: &[u8]) -> Result<(), String> {
        let mut grpc = self.0.grpc.borrow_mut();
        if grpc.canceled.contains(&stream) {
            return Err("host status 1".into());
        }
        grpc.sent.push((stream, message.to_vec()));
        Ok(())
    }
    fn cancel(&mut self, token: u32) {
        self.0.grpc.borrow_mut().canceled.push(token);
    }
}

impl SharedStore for FakeHost<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.store.borrow().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.0.store.borrow_mut().set(key, value, cas)
    }
}

impl SharedQueue for FakeHost<'_> {
    fn register_queue(&mut self, name: &str) -> Result<u32, String> {
        if self.0.refuse_queues.get() {
            return Err("host status 12".into());
        }
        let mut queues = self.0.queues.borrow_mut();
        if let Some((id, _)) = queues.iter().find(|(_, (known, _))| known == name) {
            return Ok(*id);
        }
        let id = queues.len() as u32 + 100;
        queues.insert(id, (name.to_string(), VecDeque::new()));
        Ok(id)
    }
    fn enqueue(&mut self, queue: u32, message: &[u8]) -> Result<(), String> {
        match self.0.queues.borrow_mut().get_mut(&queue) {
            Some((_, messages)) => {
                messages.push_back(message.to_vec());
                Ok(())
            }
            None => Err("host status 1".into()),
        }
    }
    fn dequeue(&mut self, queue: u32) -> Result<Option<Vec<u8>>, String> {
        match self.0.queues.borrow_mut().get_mut(&queue) {
            Some((_, messages)) => Ok(messages.pop_front()),
            None => Err("host status 1".into()),
        }
    }
}

impl Metrics for FakeHost<'_> {
    fn add(&mut self, counter: &str, delta: u64) {
        *self
            .0
            .counters
            .borrow_mut()
            .entry(counter.to_string())
            .or_default() += delta;
    }
    fn gauge(&mut self, gauge: &str, value: u64) {
        self.0.gauges.borrow_mut().insert(gauge.to_string(), value);
    }
}

impl Logger for FakeHost<'_> {
    fn log(&mut self, level: log::Level, message: &str) {
        self.0.logs.borrow_mut().push((level, message.to_string()));
    }
}

impl World {
    fn host(&self) -> FakeHost<'_> {
        FakeHost(self)
    }
    fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }
    fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }
    fn warnings(&self) -> Vec<String> {
        self.logs
            .borrow()
            .iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .map(|(_, message)| message.clone())
            .collect()
    }
    /// Queues holding a message, as the host would call them ready.
    fn ready_queues(&self) -> Vec<u32> {
        self.queues
            .borrow()
            .iter()
            .filter(|(_, (_, messages))| !messages.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }
    fn last_call(&self) -> (u32, CalloutRequest) {
        self.calls.borrow().last().cloned().expect("a call")
    }
}

fn base() -> Base {
    Base {
        cluster_header: "x-graylane-cluster".into(),
        tag_header: "x-gray-tag".into(),
        mirror_header: "x-graylane-mirror".into(),
        pin_header: "x-graylane-pin-cookie".into(),
        tag_baggage_key: None,
        trust_tag: true,
        lane_keys: Default::default(),
        limits: Default::default(),
        allowed_clusters: None,
    }
}

fn etcd_config() -> SourceConfig {
    SourceConfig {
        format: Format::Etcd {
            key: "/gl/rules".into(),
        },
        cluster: "etcd".into(),
        path: "/v3/kv/range".into(),
        authority: "etcd".into(),
        headers: vec![("authorization".into(), "Bearer t".into())],
        interval_ms: 1_000,
        timeout_ms: 300,
        jitter_percent: 10,
        max_backoff_ms: 8_000,
        mode: Mode::Poll,
        wait_ms: 30_000,
    }
}

fn plain_config() -> SourceConfig {
    SourceConfig {
        format: Format::Graylane,
        path: "/rules".into(),
        ..etcd_config()
    }
}

fn doc(weight: u32) -> String {
    format!(
        r#"{{"services":[{{"name":"b","default":"stable","subsets":[{{"name":"stable","cluster":"b-stable"}},{{"name":"canary","cluster":"b-canary","weight":{weight}}}]}}]}}"#
    )
}

fn etcd_reply(revision: u64, value: &str) -> CalloutResponse {
    CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: format!(
            r#"{{"header":{{"revision":"{revision}"}},"kvs":[{{"key":"L2dsL3J1bGVz","mod_revision":"{revision}","value":"{}"}}],"count":"1"}}"#,
            base64_encode(value.as_bytes())
        )
        .into_bytes(),
    }
}

fn etcd_unchanged() -> CalloutResponse {
    CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: br#"{"header":{"revision":"9"},"count":"1"}"#.to_vec(),
    }
}

fn canary_weight(installed: &Installed) -> u32 {
    installed.rules.services[0].subsets[1].weight
}

fn body_text(request: &CalloutRequest) -> String {
    String::from_utf8(request.body.clone().unwrap_or_default()).unwrap()
}

#[test]
fn etcd_fetch_then_conditional_refresh() {
    let world = World::default();
    world.now.set(1_000_000);
    let mut worker = Fetcher::new(etcd_config(), base(), 1);
    assert!(worker.on_tick(&mut world.host()).is_none());
    let (token, request) = world.last_call();
    assert_eq!(request.upstream, "etcd");
    assert!(request
        .headers
        .contains(&(":method".to_string(), "POST".to_string())));
    assert!(request
        .headers
        .contains(&("authorization".to_string(), "Bearer t".to_string())));
    assert_eq!(body_text(&request), r#"{"key":"L2dsL3J1bGVz"}"#);
    assert!(matches!(worker.state(), FetchState::InFlight { .. }));

    // A second tick while in flight sends nothing more.
    world.advance(100);
    worker.on_tick(&mut world.host());
    assert_eq!(world.calls.borrow().len(), 1);

    let installed = worker
        .on_response(&mut world.host(), token, &etcd_reply(5, &doc(30)))
        .expect("rules");
    assert_eq!(canary_weight(&installed), 3000);
    assert_eq!(installed.version, 5);
    assert_eq!(installed.generation, 1);
    assert_eq!(world.gauges.borrow()["graylane_source_version"], 5);
    assert_eq!(worker.state(), &FetchState::Idle);

    // Not due before the (jittered) interval.
    world.advance(850);
    worker.on_tick(&mut world.host());
    assert_eq!(world.calls.borrow().len(), 1);
    world.advance(300);
    worker.on_tick(&mut world.host());
    assert_eq!(world.calls.borrow().len(), 2);
    let (token, request) = world.last_call();
    assert_eq!(
        body_text(&request),
        r#"{"key":"L2dsL3J1bGVz","min_mod_revision":"6"}"#
    );
    assert!(worker
        .on_response(&mut world.host(), token, &etcd_unchanged())
        .is_none());
    assert_eq!(world.counter("graylane_source_not_modified_total"), 1);
    assert_eq!(world.counter("graylane_source_fetches_total"), 2);
    assert_eq!(world.counter("graylane_source_updates_total"), 1);
    assert_eq!(worker.generation(), 1);
}

#[test]
fn one_fetch_per_interval_for_the_whole_gateway() {
    let world = World::default();
    world.now.set(5_000);
    let mut workers: Vec<Fetcher> = (0..4)
        .map(|seed| Fetcher::new(etcd_config(), base(), seed))
        .collect();
    let mut revision = 10;
    let mut answered = 0;
    let mut adopted = vec![0u64; workers.len()];
    // 20 simulated seconds, ticking every 50 ms; each in-flight fetch is
    // answered on the next tick with a new revision.
    for _ in 0..400 {
        world.advance(50);
        let pending = world.calls.borrow().len();
        if pending > answered {
            let (token, _) = world.last_call();
            answered = pending;
            revision += 1;
            let reply = etcd_reply(revision, &doc(revision as u32 % 100));
            let mut installed = 0;
            for worker in &mut workers {
                if worker
                    .on_response(&mut world.host(), token, &reply)
                    .is_some()
                {
                    installed += 1;
                }
            }
            assert_eq!(installed, 1, "exactly the worker that asked installs");
        }
        for (index, worker) in workers.iter_mut().enumerate() {
            if worker.on_tick(&mut world.host()).is_some() {
                adopted[index] += 1;
            }
        }
    }
    let fetches = world.calls.borrow().len();
    assert!(
        (17..=23).contains(&fetches),
        "20 s at a 1 s interval (±10% jitter) is about 20 fetches for the gateway, got {fetches}"
    );
    // Whoever fetched, every worker ends on the newest document, and the
    // workers that did not fetch it adopted it from the store.
    let newest = world.counter("graylane_source_updates_total");
    assert_eq!(newest as usize, fetches);
    for worker in &mut workers {
        worker.on_tick(&mut world.host());
        assert_eq!(worker.generation(), newest);
    }
    assert!(
        adopted.iter().filter(|count| **count > 0).count() >= 3,
        "{adopted:?}"
    );
}

#[test]
fn failures_keep_the_rules_log_once_and_back_off() {
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(etcd_config(), base(), 7);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    assert!(worker
        .on_response(&mut world.host(), token, &etcd_reply(3, &doc(10)))
        .is_some());

    let failures = [
        CalloutResponse::default(),
        CalloutResponse::default(),
        CalloutResponse {
            status: Some(500),
            ..CalloutResponse::default()
        },
        CalloutResponse {
            status: Some(200),
            body: b"<html>garbage".to_vec(),
            ..CalloutResponse::default()
        },
        etcd_reply(4, "this is not json"),
        etcd_reply(4, "this is not json"),
        etcd_reply(5, &doc(250)),
        etcd_reply(6, &doc(250)),
    ];
    let mut gaps = Vec::new();
    let mut last_start = world.now.get();
    for reply in &failures {
        // Tick until the fetcher starts again.
        let before = world.calls.borrow().len();
        while world.calls.borrow().len() == before {
            world.advance(10);
            assert!(worker.on_tick(&mut world.host()).is_none());
        }
        let now = world.now.get();
        gaps.push(now - last_start);
        last_start = now;
        let (token, _) = world.last_call();
        assert!(worker
            .on_response(&mut world.host(), token, reply)
            .is_none());
        assert!(matches!(worker.state(), FetchState::Backoff { .. }));
    }
    assert_eq!(worker.generation(), 1, "the good rules stay in force");
    assert_eq!(world.counter("graylane_source_failures_total"), 8);
    assert_eq!(world.counter("graylane_source_rejected_total"), 4);
    // One warning per change of reason: no response, 500, garbage, not-JSON
    // document, invalid document at revision 5 … but revision 6 carries the
    // same refusal text.
    let warnings = world.warnings();
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(warnings[0].contains("no response"));
    assert!(warnings[1].contains("HTTP status 500"));
    assert!(warnings[2].contains("unexpected etcd reply: not JSON"));
    assert!(warnings[3].contains("document refused: $: not valid JSON"));
    assert!(warnings[4].contains("services[0].subsets[1].weight"));
    // Backoff: roughly 1, 2, 4, 8, 8… seconds (±10%), capped at 8 s.
    for (index, gap) in gaps.iter().enumerate().skip(1) {
        let expected = (1_000u64 << index.saturating_sub(1).min(3)).min(8_000);
        let low = expected * 89 / 100;
        let high = expected.min(8_000) * 111 / 100;
        assert!(
            (low..=high).contains(gap) && *gap <= 8_000 + 20,
            "gap {index} is {gap} ms, expected about {expected}: {gaps:?}"
        );
    }

    // Recovery: logged once, the counter of failures resets.
    let before = world.calls.borrow().len();
    while world.calls.borrow().len() == before {
        world.advance(10);
        worker.on_tick(&mut world.host());
    }
    let (token, _) = world.last_call();
    let installed = worker
        .on_response(&mut world.host(), token, &etcd_reply(7, &doc(40)))
        .expect("recovered");
    assert_eq!(canary_weight(&installed), 4000);
    assert!(world
        .logs
        .borrow()
        .iter()
        .any(|(_, message)| message.contains("answering again")));
    assert_eq!(worker.state(), &FetchState::Idle);
}

#[test]
fn a_lost_callout_is_given_up_after_timeout_and_grace() {
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(etcd_config(), base(), 3);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    world.advance(300 + 400);
    worker.on_tick(&mut world.host());
    assert!(matches!(worker.state(), FetchState::InFlight { .. }));
    world.advance(200);
    worker.on_tick(&mut world.host());
    assert!(matches!(
        worker.state(),
        FetchState::Backoff { failures: 1, .. }
    ));
    assert!(world.warnings()[0].contains("no answer from the host"));
    // The late answer is ignored.
    assert!(worker
        .on_response(&mut world.host(), token, &etcd_reply(2, &doc(1)))
        .is_none());
    assert_eq!(worker.generation(), 0);
}

#[test]
fn refused_dispatch_backs_off_without_panicking() {
    let world = World::default();
    world.refuse_dispatch.set(true);
    world.now.set(1_000);
    let mut worker = Fetcher::new(etcd_config(), base(), 3);
    worker.on_tick(&mut world.host());
    assert!(matches!(worker.state(), FetchState::Backoff { .. }));
    assert!(world.warnings()[0].contains("cannot send the request: no such cluster"));
    world.advance(100);
    worker.on_tick(&mut world.host());
    assert_eq!(world.warnings().len(), 1, "logged once");
}

#[test]
fn plain_endpoint_uses_etag_and_body_hash() {
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(plain_config(), base(), 3);
    worker.on_tick(&mut world.host());
    let (token, request) = world.last_call();
    assert!(request.body.is_none());
    assert!(!request
        .headers
        .iter()
        .any(|(name, _)| name == "if-none-match"));
    let reply = CalloutResponse {
        status: Some(200),
        headers: vec![("etag".into(), b"\"v1\"".to_vec())],
        body: doc(20).into_bytes(),
    };
    let installed = worker
        .on_response(&mut world.host(), token, &reply)
        .expect("rules");
    assert_eq!(
        installed.version, 1,
        "no version in the document: generation"
    );

    world.advance(1_200);
    worker.on_tick(&mut world.host());
    let (token, request) = world.last_call();
    assert!(request
        .headers
        .contains(&("if-none-match".to_string(), "\"v1\"".to_string())));
    let not_modified = CalloutResponse {
        status: Some(304),
        ..CalloutResponse::default()
    };
    assert!(worker
        .on_response(&mut world.host(), token, &not_modified)
        .is_none());

    // A server without ETags: the body hash stands in.
    world.advance(1_200);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    let body = format!(r#"{{"version":42,{}"#, doc(60).trim_start_matches('{'));
    let reply = CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: body.clone().into_bytes(),
    };
    let installed = worker
        .on_response(&mut world.host(), token, &reply)
        .expect("rules");
    assert_eq!(installed.version, 42);
    world.advance(1_200);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    assert!(worker
        .on_response(&mut world.host(), token, &reply)
        .is_none());
    assert_eq!(world.counter("graylane_source_not_modified_total"), 2);
    assert_eq!(world.counter("graylane_source_updates_total"), 2);
}

#[test]
fn missing_etcd_key_is_a_failure() {
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(etcd_config(), base(), 3);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    let reply = CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: br#"{"header":{"revision":"9"}}"#.to_vec(),
    };
    assert!(worker
        .on_response(&mut world.host(), token, &reply)
        .is_none());
    assert!(world.warnings()[0].contains("the etcd key does not exist"));
}

#[test]
fn request_path_refresh_for_hosts_without_ticks() {
    // APISIX: one fetcher per worker, a local store, refresh started from a
    // request when the rules are older than the interval.
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(plain_config(), base(), 3);
    assert!(worker.on_request(&mut world.host()));
    assert!(
        !worker.on_request(&mut world.host()),
        "one in flight at most"
    );
    let (token, _) = world.last_call();
    let reply = CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: doc(5).into_bytes(),
    };
    assert!(worker
        .on_response(&mut world.host(), token, &reply)
        .is_some());
    world.advance(500);
    assert!(!worker.on_request(&mut world.host()), "not due yet");
    world.advance(700);
    assert!(worker.on_request(&mut world.host()));
}

#[test]
fn a_refresh_abandoned_with_its_request_is_retried_by_the_next_request() {
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(plain_config(), base(), 3);
    // Clients that hang up while their request waits for the refresh.
    for hang_up in 0..5 {
        assert!(worker.on_request(&mut world.host()), "attempt {hang_up} dispatches at once");
        let (token, _) = world.last_call();
        world.advance(10);
        worker.abandon(&mut world.host(), token);
        assert_eq!(worker.state(), &FetchState::Idle);
    }
    // An answer to an abandoned token changes nothing.
    let (stale, _) = world.last_call();
    let reply = CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: doc(5).into_bytes(),
    };
    assert!(worker.on_response(&mut world.host(), stale, &reply).is_none());
    assert!(worker.on_request(&mut world.host()));
    let (token, _) = world.last_call();
    // Abandoning another token leaves the fetch in flight.
    worker.abandon(&mut world.host(), token + 1);
    assert!(worker.on_response(&mut world.host(), token, &reply).is_some());
    assert_eq!(world.counter("graylane_source_failures_total"), 0, "a hang-up is no failure");
}

#[test]
fn a_fresh_worker_adopts_the_stored_document() {
    let world = World::default();
    world.now.set(1_000);
    let mut worker = Fetcher::new(etcd_config(), base(), 3);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    assert!(worker
        .on_response(&mut world.host(), token, &etcd_reply(2, &doc(1)))
        .is_some());
    let mut fresh = Fetcher::new(etcd_config(), base(), 4);
    let adopted = fresh.sync(&mut world.host()).expect("adopted");
    assert_eq!(adopted.generation, 1);
    assert_eq!(adopted.version, 2);
    assert_eq!(canary_weight(&adopted), 100);
    assert!(fresh.sync(&mut world.host()).is_none(), "only once");
    // Another source configuration does not see it.
    let mut other = Fetcher::new(plain_config(), base(), 5);
    assert!(other.sync(&mut world.host()).is_none());
}

#[path = "fake_host_watch_tests.rs"]
mod watch;

/// Whatever the control plane answers, the fetcher neither panics nor puts
/// anything but a valid document in force.
#[test]
fn arbitrary_answers_never_panic() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"kvs\":",
        b"\"count\":\"1\"",
        b"\"value\":\"e30=\"",
        b"\"mod_revision\":\"x\"",
        b"\"services\":",
        b",",
        b"\xff\xfe",
        b"null",
    ];
    for format in [etcd_config(), plain_config()] {
        let world = World::default();
        world.now.set(1_000);
        let mut worker = Fetcher::new(format, base(), 9);
        for _ in 0..2_000 {
            world.advance(10_000);
            worker.on_tick(&mut world.host());
            let Some((token, _)) = world.calls.borrow().last().cloned() else {
                continue;
            };
            let mut body = Vec::new();
            for _ in 0..(next() % 12) {
                body.extend_from_slice(pieces[(next() % 12) as usize]);
            }
            let status = match next() % 5 {
                0 => None,
                1 => Some(304),
                2 => Some((next() % 600) as u16),
                _ => Some(200),
            };
            let headers = if next() % 2 == 0 {
                vec![("etag".to_string(), body.clone())]
            } else {
                vec![]
            };
            let response = CalloutResponse {
                status,
                headers,
                body,
            };
            if let Some(installed) = worker.on_response(&mut world.host(), token, &response) {
                // Only a document that compiles gets here.
                assert!(installed.rules.services.is_empty());
            }
        }
    }
}

fn consul_reply(index: u64, canary_weight: &str) -> CalloutResponse {
    CalloutResponse {
        status: Some(200),
        headers: vec![("x-consul-index".into(), index.to_string().into_bytes())],
        body: format!(
            r#"[{{"Service":{{"ID":"b-1","Meta":{{}}}}}},
                {{"Service":{{"ID":"b-2","Meta":{{"canary":"true","weight":"{canary_weight}"}}}}}}]"#
        )
        .into_bytes(),
    }
}

#[test]
fn consul_meta_becomes_rules_and_unchanged_rules_are_not_recompiled() {
    let world = World::default();
    world.now.set(1_000);
    let config = SourceConfig {
        format: Format::Consul {
            service: crate::registry::RegistryService::named("b"),
        },
        path: "/v1/health/service/b?passing=true".into(),
        ..etcd_config()
    };
    let mut worker = Fetcher::new(config, base(), 5);
    worker.on_tick(&mut world.host());
    let (token, request) = world.last_call();
    assert!(request.body.is_none());
    assert!(request.headers.contains(&(
        ":path".to_string(),
        "/v1/health/service/b?passing=true".to_string()
    )));
    let installed = worker
        .on_response(&mut world.host(), token, &consul_reply(17, "5"))
        .expect("rules from the registry");
    assert_eq!(
        installed.version, 17,
        "the Consul index is the version gauge"
    );
    let canary = installed.rules.services[0]
        .subset_named("canary")
        .expect("canary");
    assert_eq!((canary.cluster.as_str(), canary.weight), ("b-canary", 500));

    // Consul's index moved (a health check flapped) but the rules did not.
    world.advance(1_200);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    assert!(worker
        .on_response(&mut world.host(), token, &consul_reply(18, "5"))
        .is_none());
    assert_eq!(world.counter(crate::metrics::SOURCE_NOT_MODIFIED), 1);

    // Bad meta is refused and the rules in force stay.
    world.advance(1_200);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    assert!(worker
        .on_response(&mut world.host(), token, &consul_reply(19, "half"))
        .is_none());
    assert_eq!(worker.generation(), 1);
    assert_eq!(world.counter(crate::metrics::SOURCE_REJECTED), 1);
    assert!(world
        .warnings()
        .iter()
        .any(|w| w.contains("Consul: instance b-2: weight must be a number of percent")));

    // The weight rises: new rules.
    world.advance(20_000);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    let installed = worker
        .on_response(&mut world.host(), token, &consul_reply(20, "50"))
        .expect("new rules");
    assert_eq!(
        installed.rules.services[0]
            .subset_named("canary")
            .map(|s| s.weight),
        Some(5_000)
    );
}

#[test]
fn registry_source_settings_are_refused_with_their_paths() {
    let refusal = |source: &str| {
        let document = format!(r#"{{"source":{source}}}"#);
        super::settings::configure(document.as_bytes())
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        refusal(r#"{"format":"consul","cluster":"consul","path":"/v1/health/service/b"}"#),
        "source.service: is required for format \"consul\": {\"name\": …}"
    );
    assert_eq!(
        refusal(r#"{"format":"nacos","cluster":"nacos","service":{"name":"u","path_prefix":"x"}}"#),
        "source.service.path_prefix: must start with '/', got \"x\"; source.path: is required for format \"nacos\""
    );
    assert_eq!(
        refusal(r#"{"format":"etcd","cluster":"etcd","key":"/k","service":{"name":"u"}}"#),
        "source.service: is only for the formats \"consul\" and \"nacos\""
    );
}

#[test]
fn an_answer_over_the_size_limit_is_refused_before_it_is_read() {
    let world = World::default();
    world.now.set(1_000);
    let mut held = base();
    held.limits.document_bytes = 4_096;
    let mut worker = Fetcher::new(plain_config(), held, 3);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    let good = CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: doc(20).into_bytes(),
    };
    let installed = worker
        .on_response(&mut world.host(), token, &good)
        .expect("rules");
    assert_eq!(canary_weight(&installed), 2_000);

    world.advance(1_200);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    // Not even JSON: had it been parsed, the refusal would say so instead.
    let huge = CalloutResponse {
        status: Some(200),
        headers: vec![],
        body: vec![b'['; 4_097],
    };
    assert!(worker
        .on_response(&mut world.host(), token, &huge)
        .is_none());
    let logs = world.logs.borrow();
    assert!(
        logs.iter().any(|(_, line)| line
            .contains("document bytes: 4097, over the limit of 4096 (limits.document_bytes)")),
        "{logs:?}"
    );
    assert_eq!(world.counter("graylane_source_rejected_total"), 1);
    assert_eq!(world.counter("graylane_source_updates_total"), 1);
}

/// The worker that installs a document wakes every other worker's queue;
/// each adopts it from the wake, without waiting for its tick.
#[test]
fn the_installing_worker_wakes_the_others() {
    let world = World::default();
    world.now.set(1_000_000);
    let mut workers: Vec<Fetcher> = (0..3)
        .map(|seed| Fetcher::new(etcd_config(), base(), seed))
        .collect();
    // No queue before the first tick (Envoy's configuration VM never ticks).
    assert!(workers.iter().all(|worker| worker.wake_queue().is_none()));
    for worker in &mut workers {
        worker.on_tick(&mut world.host());
    }
    let queues: Vec<u32> = workers.iter().map(|w| w.wake_queue().unwrap()).collect();
    assert_eq!(world.queues.borrow().len(), 3, "one queue per worker, by name");
    let (token, _) = world.last_call();
    let holder = workers
        .iter()
        .position(|w| matches!(w.state(), FetchState::InFlight { .. }))
        .unwrap();
    assert!(workers[holder]
        .on_response(&mut world.host(), token, &etcd_reply(4, &doc(20)))
        .is_some());
    let mut ready = world.ready_queues();
    let holder_queue = queues[holder];
    assert!(!ready.contains(&holder_queue), "not itself");
    assert_eq!(ready.len(), 2);
    for (index, worker) in workers.iter_mut().enumerate() {
        if index == holder {
            continue;
        }
        // Another configuration's queue is not this fetcher's business.
        assert!(worker.on_queue_ready(&mut world.host(), 9_999).is_none());
        let adopted = worker
            .on_queue_ready(&mut world.host(), queues[index])
            .expect("adopted on the wake");
        assert_eq!(adopted.generation, 1);
        assert_eq!(canary_weight(&adopted), 2000);
        ready.retain(|queue| *queue != queues[index]);
        assert_eq!(world.ready_queues(), ready, "drained");
        // A second wake for the same document changes nothing.
        assert!(worker.on_queue_ready(&mut world.host(), queues[index]).is_none());
    }
}

/// Queues of VMs that stopped ticking (a configuration reload) drop out of
/// the record; the live ones stay listed as long as they tick.
#[test]
fn stale_queues_drop_out_and_live_ones_stay() {
    let world = World::default();
    world.now.set(1_000_000);
    let mut old = Fetcher::new(etcd_config(), base(), 1);
    let mut live = Fetcher::new(etcd_config(), base(), 2);
    let mut holder = Fetcher::new(etcd_config(), base(), 3);
    old.on_tick(&mut world.host());
    let mut revision = 1;
    for _ in 0..60 {
        world.advance(1_000);
        live.on_tick(&mut world.host());
        holder.on_tick(&mut world.host());
        for fetcher in [&mut live, &mut holder] {
            if let FetchState::InFlight { token, .. } = fetcher.state().clone() {
                revision += 1;
                fetcher.on_response(&mut world.host(), token, &etcd_reply(revision, &doc(1)));
            }
        }
    }
    let record = world
        .store
        .borrow()
        .entries_with_suffix(".wake")
        .expect("a wake record");
    let list = fetcher::wake::WakeList::parse(&record).unwrap();
    let listed: Vec<u32> = list.live(world.now.get()).collect();
    assert!(!listed.contains(&old.wake_queue().unwrap()), "{listed:?}");
    assert!(listed.contains(&live.wake_queue().unwrap()), "{listed:?}");
    assert!(listed.contains(&holder.wake_queue().unwrap()), "{listed:?}");
}

/// A host without shared queues: said once, and workers adopt on ticks.
#[test]
fn without_queues_workers_adopt_on_their_tick() {
    let world = World::default();
    world.now.set(1_000_000);
    world.refuse_queues.set(true);
    let mut first = Fetcher::new(etcd_config(), base(), 1);
    let mut second = Fetcher::new(etcd_config(), base(), 2);
    first.on_tick(&mut world.host());
    second.on_tick(&mut world.host());
    first.on_tick(&mut world.host());
    let infos = world
        .logs
        .borrow()
        .iter()
        .filter(|(_, message)| message.contains("no shared queue"))
        .count();
    assert_eq!(infos, 2, "once per worker");
    let (token, _) = world.last_call();
    for worker in [&mut first, &mut second] {
        worker.on_response(&mut world.host(), token, &etcd_reply(3, &doc(5)));
    }
    assert!(world.ready_queues().is_empty());
    world.advance(100);
    let adopted = first
        .on_tick(&mut world.host())
        .or_else(|| second.on_tick(&mut world.host()));
    assert_eq!(adopted.map(|installed| installed.generation), Some(1));
}

fn header<'r>(request: &'r CalloutRequest, name: &str) -> Option<&'r str> {
    request
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn plain_reply(status: u16, etag: &str, body: &str) -> CalloutResponse {
    CalloutResponse {
        status: Some(status),
        headers: vec![("etag".into(), etag.as_bytes().to_vec())],
        body: body.as_bytes().to_vec(),
    }
}

fn long_poll_config() -> SourceConfig {
    SourceConfig {
        mode: Mode::Push,
        ..plain_config()
    }
}

/// The graylane format in push mode: the version it has and `Prefer:
/// wait`, a host timeout covering the wait, and the next long-poll sent
/// from the answer itself, changed or not.
#[test]
fn graylane_long_poll_is_sent_again_from_its_answer() {
    let world = World::default();
    world.now.set(1_000_000);
    let mut worker = Fetcher::new(long_poll_config(), base(), 1);
    assert_eq!(worker.tick_period_ms(), 1_000);
    worker.on_tick(&mut world.host());
    let (token, first) = world.last_call();
    assert_eq!(first.timeout_ms, 30_000 + 30_000 / 16 + 300);
    assert_eq!(header(&first, "prefer"), None, "nothing to wait on yet");
    world.advance(5);
    assert!(worker
        .on_response(&mut world.host(), token, &plain_reply(200, "\"1\"", &doc(10)))
        .is_some());
    // A change: the next long-poll is sent at once, to be held.
    assert_eq!(world.calls.borrow().len(), 2);
    let (token, held) = world.last_call();
    assert_eq!(header(&held, "if-none-match"), Some("\"1\""));
    assert_eq!(header(&held, "prefer"), Some("wait=30"));
    // The control plane holds it 30 s and answers 304: at once again.
    world.advance(30_000);
    assert!(worker
        .on_response(&mut world.host(), token, &plain_reply(304, "\"1\"", ""))
        .is_none());
    assert_eq!(world.calls.borrow().len(), 3);
    // A change 2 s into the hold: installed, and the next is sent at once.
    let (token, _) = world.last_call();
    world.advance(2_000);
    let installed = worker
        .on_response(&mut world.host(), token, &plain_reply(200, "\"2\"", &doc(40)))
        .expect("the change");
    assert_eq!(canary_weight(&installed), 4000);
    assert_eq!(world.calls.borrow().len(), 4);
    assert_eq!(header(&world.last_call().1, "if-none-match"), Some("\"2\""));
    assert_eq!(world.counter("graylane_source_failures_total"), 0);
}

/// A server that ignores `Prefer` and answers 304 at once is asked about
/// once a second, not in a loop; so is one whose every answer is new.
#[test]
fn an_immediate_unchanged_answer_is_not_a_hot_loop() {
    let world = World::default();
    world.now.set(1_000_000);
    let mut worker = Fetcher::new(long_poll_config(), base(), 1);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    worker.on_response(&mut world.host(), token, &plain_reply(200, "\"1\"", &doc(10)));
    // 60 s of ticks every second, every answer an immediate 304.
    for step in 1..=600 {
        world.advance(100);
        if step % 10 == 0 {
            worker.on_tick(&mut world.host());
        }
        if let FetchState::InFlight { token, .. } = worker.state().clone() {
            world.advance(2);
            worker.on_response(&mut world.host(), token, &plain_reply(304, "\"1\"", ""));
        }
    }
    let calls = world.calls.borrow().len();
    assert!((25..=62).contains(&calls), "{calls} long-polls in 60 s");
    // Every answer a new document, at once: two in a row, then a floor.
    world.calls.borrow_mut().clear();
    let mut etag = 10;
    for step in 1..=600 {
        world.advance(100);
        if step % 10 == 0 {
            worker.on_tick(&mut world.host());
        }
        while let FetchState::InFlight { token, .. } = worker.state().clone() {
            world.advance(2);
            etag += 1;
            let reply = plain_reply(200, &format!("\"{etag}\""), &doc(etag as u32 % 100));
            worker.on_response(&mut world.host(), token, &reply);
        }
    }
    let calls = world.calls.borrow().len();
    assert!((50..=130).contains(&calls), "{calls} long-polls in 60 s");
}

/// A long-poll nobody answers: the host's timeout (wait + timeout) ends
/// it; the rules stay, the failure is logged once, and it backs off.
#[test]
fn a_hung_long_poll_keeps_the_rules_and_is_logged_once() {
    let world = World::default();
    world.now.set(1_000_000);
    let mut worker = Fetcher::new(long_poll_config(), base(), 1);
    worker.on_tick(&mut world.host());
    let (token, _) = world.last_call();
    worker.on_response(&mut world.host(), token, &plain_reply(200, "\"1\"", &doc(10)));
    world.advance(1_000);
    for _ in 0..3 {
        worker.on_tick(&mut world.host());
        let (token, request) = world.last_call();
        world.advance(request.timeout_ms);
        // What Envoy delivers when its timeout strikes: no status.
        assert!(worker
            .on_response(&mut world.host(), token, &CalloutResponse::default())
            .is_none());
        assert!(matches!(worker.state(), FetchState::Backoff { .. }));
        world.advance(20_000);
    }
    assert_eq!(worker.generation(), 1);
    assert_eq!(world.warnings().len(), 1, "{:?}", world.warnings());
    assert_eq!(world.counter("graylane_source_failures_total"), 3);
}

/// Consul in push mode: a blocking query on the index of the last answer;
/// an index that goes backwards starts over without one.
#[test]
fn consul_blocking_queries_follow_the_index() {
    let world = World::default();
    world.now.set(1_000_000);
    let config = SourceConfig {
        format: Format::Consul {
            service: crate::registry::RegistryService::named("b"),
        },
        path: "/v1/health/service/b?passing=true".into(),
        mode: Mode::Push,
        wait_ms: 10_000,
        ..etcd_config()
    };
    let mut worker = Fetcher::new(config, base(), 5);
    worker.on_tick(&mut world.host());
    let path = |world: &World| header(&world.last_call().1, ":path").unwrap().to_string();
    assert_eq!(path(&world), "/v1/health/service/b?passing=true");
    let (token, _) = world.last_call();
    world.advance(3_000);
    assert!(worker
        .on_response(&mut world.host(), token, &consul_reply(17, "5"))
        .is_some());
    assert_eq!(path(&world), "/v1/health/service/b?passing=true&index=17&wait=10s");
    assert_eq!(world.last_call().1.timeout_ms, 10_000 + 625 + 300);
    let (token, _) = world.last_call();
    world.advance(10_000);
    assert!(worker
        .on_response(&mut world.host(), token, &consul_reply(18, "5"))
        .is_none(), "the same rules: not recompiled");
    assert_eq!(path(&world), "/v1/health/service/b?passing=true&index=18&wait=10s");
    let (token, _) = world.last_call();
    world.advance(4_000);
    worker.on_response(&mut world.host(), token, &consul_reply(3, "5"));
    assert_eq!(path(&world), "/v1/health/service/b?passing=true");
}
