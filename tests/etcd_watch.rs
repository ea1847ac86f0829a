//! The etcd watch (`source.mode: push`, the default for an etcd source on
//! Envoy) in a real Envoy with two workers against a real etcd: flips reach
//! every worker under load with no failed request, an idle gateway keeps one
//! watch and reads nothing (etcd's own request counters say so), and etcd
//! killed for 10 s, restarted with a new document and compacted loses
//! nothing. Needs `etcd` (Debian `etcd-server`) and Envoy.
//!
//! The figures (flip p50/p99/max over 20 flips, etcd's counters over a quiet
//! minute) come from the ignored benchmark at the end:
//! `cargo test -p graylane-e2e --test etcd_watch -- --ignored --nocapture`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::etcd::Etcd;
use support::*;

const HOST: &str = "b.example.com";
const KEY: &str = "/graylane/b";

/// Service `b`, all of it to `live`; `other` is the colour it flips to.
fn bluegreen(live: &str, other: &str) -> Value {
    json!({"services": [{
        "name": "b",
        "hosts": [HOST],
        "default": live,
        "subsets": [
            {"name": live, "cluster": format!("b-{live}"), "bluegreen": live},
            {"name": other, "cluster": format!("b-{other}"), "bluegreen": other, "weight": 0}
        ]
    }]})
}

/// A gateway whose inline rules send `b` to blue, reading the rules from
/// etcd with the default settings: only what must be said.
fn watch_gateway(label: &str, etcd: &Etcd) -> Gateway {
    let mut document = bluegreen("blue", "green");
    document["source"] = json!({"format": "etcd", "cluster": "control", "key": KEY});
    Gateway::start_with(label, &document, |config| {
        config.cluster("control", etcd.client)
    })
}

fn probe() -> Request {
    Request::get("/worker-probe").host("worker-probe.invalid")
}

fn request_b() -> Request {
    Request::get("/").host(HOST)
}

fn stat(gateway: &Gateway, name: &str) -> u64 {
    gateway.envoy.stat(&format!("wasmcustom.{name}"))
}

/// One answer of the steady load.
#[derive(Clone, Copy)]
struct Answer {
    sent: Instant,
    /// `Some(true)`: routed to green; `None`: the request failed.
    green: Option<bool>,
}

/// A steady stream of requests for `b` over one keep-alive connection per
/// Envoy worker, each from its own thread, every answer recorded.
struct Load {
    answers: Vec<Arc<Mutex<Vec<Answer>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(gateway: &Gateway) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut answers = Vec::new();
        let mut threads = Vec::new();
        for worker in 0..WORKERS {
            let mut client = gateway.envoy.client_on_worker(worker, &probe());
            let record = Arc::new(Mutex::new(Vec::new()));
            answers.push(Arc::clone(&record));
            let stop = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                let opened = client.connections_opened();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let green = match client.try_send(&request_b()) {
                        Ok(response) if response.status == 200 => {
                            Some(response.header("x-echo-backend").as_deref() == Some("b-green"))
                        }
                        _ => None,
                    };
                    record.lock().unwrap().push(Answer { sent, green });
                    // Each worker keeps its own connection: a reopened one
                    // could be on the other worker.
                    assert_eq!(
                        client.connections_opened(),
                        opened,
                        "worker {worker}: reconnected"
                    );
                    thread::sleep(Duration::from_micros(500));
                }
            }));
        }
        Load {
            answers,
            stop,
            threads,
        }
    }

    /// Waits until every worker has answered `green` for a request sent
    /// after `since`; then the send time of the last answer of the other
    /// colour, over every worker.
    fn wait_every_worker(&self, since: Instant, green: bool, what: &str) -> Option<Instant> {
        let started = Instant::now();
        loop {
            let reached = self.answers.iter().all(|answers| {
                answers
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|answer| answer.sent >= since && answer.green == Some(green))
            });
            if reached {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: not every worker answers the new way"
            );
            thread::sleep(Duration::from_millis(2));
        }
        self.answers
            .iter()
            .filter_map(|answers| {
                answers
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|answer| answer.green == Some(!green))
                    .map(|answer| answer.sent)
                    .max()
            })
            .max()
    }

    /// Answers after `since` that went the `green` way; and all after it.
    fn routed_since(&self, since: Instant, green: bool) -> (usize, usize) {
        let mut routed = 0;
        let mut total = 0;
        for answers in &self.answers {
            for answer in answers.lock().unwrap().iter().filter(|a| a.sent >= since) {
                total += 1;
                routed += usize::from(answer.green == Some(green));
            }
        }
        (routed, total)
    }

    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let mut failed = 0;
        let mut total = 0;
        for answers in &self.answers {
            let answers = answers.lock().unwrap();
            total += answers.len();
            failed += answers
                .iter()
                .filter(|answer| answer.green.is_none())
                .count();
        }
        (failed, total)
    }
}

/// Writes the flipped document; returns the time from the start of the
/// write (the put sent to etcd) to the send of the last request still routed
/// the old way on any worker, once every worker answers the new way. etcd's
/// own disk write is in it (its answer to the put comes about as late as
/// the watch event).
fn flip(etcd: &Etcd, load: &Load, to_green: bool) -> Duration {
    timed_flip(etcd, load, to_green).0
}

/// As [`flip`], with how long etcd took to answer the put (its disk write
/// is in both).
fn timed_flip(etcd: &Etcd, load: &Load, to_green: bool) -> (Duration, Duration, Instant) {
    let (live, other) = if to_green {
        ("green", "blue")
    } else {
        ("blue", "green")
    };
    let before = Instant::now();
    etcd.put(KEY, &bluegreen(live, other).to_string());
    let put = before.elapsed();
    let last_old = load.wait_every_worker(before, to_green, &format!("flip to {live}"));
    let took = last_old.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(before)
    });
    (took, put, before)
}

/// Waits until `condition` holds; panics after `deadline`.
fn wait_for(deadline: Duration, what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The gateway has the first document (blue) from etcd on every worker.
fn started_on_blue(label: &str) -> (Etcd, Gateway, Load) {
    let etcd = Etcd::start(label);
    let revision = etcd.put(KEY, &bluegreen("blue", "green").to_string());
    let gateway = watch_gateway(label, &etcd);
    wait_for(Duration::from_secs(20), "the first document", || {
        stat(&gateway, "graylane_source_version") == revision
    });
    let load = Load::start(&gateway);
    let since = Instant::now();
    load.wait_every_worker(since, false, "the first document");
    (etcd, gateway, load)
}

#[test]
fn flips_reach_every_worker_through_the_watch_without_failures() {
    let (etcd, gateway, load) = started_on_blue("watch-flips");
    let mut times = Vec::new();
    for flip_number in 0..6 {
        let took = flip(&etcd, &load, flip_number % 2 == 0);
        times.push(took);
        thread::sleep(Duration::from_millis(150));
    }
    eprintln!("write → last old answer per flip: {times:?}");
    let (failed, total) = load.stop();
    assert_eq!(failed, 0, "{failed} of {total} requests failed");
    // One read at start, one watch, every change over it.
    assert_eq!(stat(&gateway, "graylane_source_fetches_total"), 1);
    assert_eq!(stat(&gateway, "graylane_source_watches_total"), 1);
    assert_eq!(stat(&gateway, "graylane_source_updates_total"), 7);
    assert_eq!(stat(&gateway, "graylane_source_failures_total"), 0);
    gateway.envoy.assert_no_wasm_errors();
}

/// etcd's gRPC counters by method: (Range calls started, Watch streams
/// started, Watch messages received).
fn etcd_requests(etcd: &Etcd) -> (u64, u64, u64) {
    let text = etcd.metrics();
    let sum = |name: &str, method: &str| {
        support::etcd::metric_sum(&text, name, &[&format!("grpc_method=\"{method}\"")])
    };
    (
        sum("grpc_server_started_total", "Range"),
        sum("grpc_server_started_total", "Watch"),
        sum("grpc_server_msg_received_total", "Watch"),
    )
}

/// Over a quiet spell: one watch stream stays open (no new one), no read;
/// on the stream only the heartbeat's progress requests.
fn quiet_spell(seconds: u64) -> ((u64, u64, u64), (u64, u64, u64)) {
    let (etcd, gateway, load) = started_on_blue("watch-idle");
    let (failed, _) = load.stop();
    assert_eq!(failed, 0);
    let fetches = stat(&gateway, "graylane_source_fetches_total");
    let before = etcd_requests(&etcd);
    thread::sleep(Duration::from_secs(seconds));
    let after = etcd_requests(&etcd);
    assert_eq!(after.0, before.0, "reads during the quiet spell");
    assert_eq!(
        after.1, before.1,
        "a new watch stream during the quiet spell"
    );
    let heartbeats = after.2 - before.2;
    assert!(
        (seconds / 3..=seconds + 2).contains(&heartbeats),
        "{heartbeats} progress requests in {seconds} s"
    );
    assert_eq!(stat(&gateway, "graylane_source_fetches_total"), fetches);
    assert_eq!(stat(&gateway, "graylane_source_watches_total"), 1);
    gateway.envoy.assert_no_wasm_errors();
    (before, after)
}

#[test]
fn at_idle_one_watch_and_no_reads() {
    let (before, after) = quiet_spell(12);
    eprintln!(
        "etcd (Range started, Watch started, Watch messages received): {before:?} → {after:?}"
    );
}

#[test]
fn etcd_killed_under_load_restarted_with_a_new_document_and_compacted() {
    let (mut etcd, gateway, load) = started_on_blue("watch-kill");
    etcd.stop();
    let down = Instant::now();
    thread::sleep(Duration::from_secs(10));
    let (blue, total) = load.routed_since(down, false);
    assert_eq!(
        blue, total,
        "while etcd was down, every request stayed on blue"
    );
    assert!(total > 1_000, "{total} requests while etcd was down");

    // Back, with a new document written twice and the history compacted to
    // the last write: the revision the watch was on is gone.
    etcd.spawn();
    let restarted = Instant::now();
    etcd.put(KEY, &bluegreen("blue", "green").to_string());
    let revision = etcd.put(KEY, &bluegreen("green", "blue").to_string());
    etcd.compact(revision);
    load.wait_every_worker(restarted, true, "the document written after the restart");
    let adopted = restarted.elapsed();
    eprintln!("etcd restarted: the new document on every worker {adopted:?} later");
    let (failed, total) = load.stop();
    assert_eq!(failed, 0, "{failed} of {total} requests failed");
    assert_eq!(stat(&gateway, "graylane_source_version"), revision);
    let log = gateway.envoy.log();
    // Once per change of state: the stream closed, the reads refused while
    // etcd was down; once back.
    let failing = log.matches("rules source failing").count();
    assert!(
        (1..=3).contains(&failing),
        "{failing} failure lines:\n{}",
        tail(&log, 40)
    );
    assert_eq!(log.matches("rules source answering again").count(), 1);
    gateway.envoy.assert_no_wasm_errors();
}

/// A hung etcd fires nothing on the stream: the heartbeat notices the
/// silence, the watcher reconnects once etcd answers again, and the change
/// written then is adopted; routing never moves meanwhile.
#[test]
fn a_hung_etcd_is_noticed_and_the_watch_comes_back() {
    let (etcd, gateway, load) = started_on_blue("watch-hung");
    etcd.freeze();
    let frozen = Instant::now();
    wait_for(Duration::from_secs(10), "the silence noticed", || {
        gateway
            .envoy
            .log()
            .contains("nothing from etcd on the watch")
    });
    let noticed = frozen.elapsed();
    thread::sleep(Duration::from_secs(1));
    etcd.thaw();
    let (blue, total) = load.routed_since(frozen, false);
    assert_eq!(blue, total, "while etcd hung, every request stayed on blue");
    let took = flip(&etcd, &load, true);
    eprintln!("silence noticed after {noticed:?}; the flip after the thaw took {took:?}");
    let (failed, total) = load.stop();
    assert_eq!(failed, 0, "{failed} of {total} requests failed");
    assert!(
        stat(&gateway, "graylane_source_watches_total") >= 2,
        "a new watch"
    );
    assert_eq!(
        gateway
            .envoy
            .log()
            .matches("nothing from etcd on the watch")
            .count(),
        1
    );
    gateway.envoy.assert_no_wasm_errors();
}

#[test]
fn a_document_that_does_not_compile_keeps_the_rules_and_the_watch() {
    let (etcd, gateway, load) = started_on_blue("watch-refused");
    let mut refused = bluegreen("green", "blue");
    refused["services"][0]["subsets"][1]["weight"] = json!(250);
    for _ in 0..3 {
        etcd.put(KEY, &refused.to_string());
    }
    wait_for(Duration::from_secs(10), "three refusals", || {
        stat(&gateway, "graylane_source_rejected_total") == 3
    });
    let since = Instant::now();
    thread::sleep(Duration::from_millis(300));
    let (blue, total) = load.routed_since(since, false);
    assert_eq!(blue, total, "the last good rules route");
    assert!(flip(&etcd, &load, true) < Duration::from_secs(1));
    let (failed, total) = load.stop();
    assert_eq!(failed, 0, "{failed} of {total} requests failed");
    assert_eq!(
        stat(&gateway, "graylane_source_watches_total"),
        1,
        "the watch stayed"
    );
    let log = gateway.envoy.log();
    assert_eq!(log.matches("document refused").count(), 1, "said once");
    assert_eq!(log.matches("rules source answering again").count(), 1);
    gateway.envoy.assert_no_wasm_errors();
}

/// A watch of the key by a plain etcd client (etcd's JSON gateway, which
/// streams the watch over HTTP/1): when etcd itself delivers each change,
/// to tell etcd's delays from the gateway's.
struct DirectWatch {
    events: Arc<Mutex<Vec<Instant>>>,
}

impl DirectWatch {
    fn start(etcd: &Etcd) -> DirectWatch {
        use std::io::{Read, Write};
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let mut stream = std::net::TcpStream::connect(etcd.client).unwrap();
        let key = graylane_core::source::codec::base64_encode(KEY.as_bytes());
        let body = json!({"create_request": {"key": key}}).to_string();
        write!(
            stream,
            "POST /v3/watch HTTP/1.1\r\nhost: etcd\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            while let Ok(read) = stream.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                if String::from_utf8_lossy(&buffer[..read]).contains("\"events\"") {
                    seen.lock().unwrap().push(Instant::now());
                }
            }
        });
        // Its `created` answer is in when a first read comes back.
        thread::sleep(Duration::from_millis(300));
        DirectWatch { events }
    }

    /// When the first event after `since` arrived, counted from `since`.
    fn after(&self, since: Instant) -> Option<Duration> {
        wait_for(Duration::from_secs(5), "the direct watch's event", || {
            self.events.lock().unwrap().iter().any(|at| *at >= since)
        });
        let events = self.events.lock().unwrap();
        events.iter().find(|at| **at >= since).map(|at| *at - since)
    }
}

/// p50, p99 and max of `samples` (sorted here).
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

/// The figures: 20 flips under load with the default settings (write →
/// last old answer, p50/p99/max), then etcd's request counters over a quiet
/// minute.
#[test]
#[ignore = "a benchmark: prints figures (--ignored --nocapture)"]
fn watch_flip_benchmark() {
    let (etcd, gateway, load) = started_on_blue("watch-bench");
    let direct = DirectWatch::start(&etcd);
    let flips: Vec<(Duration, Duration, Duration)> = (0..20)
        .map(|flip_number| {
            let (took, put, before) = timed_flip(&etcd, &load, flip_number % 2 == 0);
            let seen = direct.after(before).unwrap();
            thread::sleep(Duration::from_millis(200));
            (took, put, seen)
        })
        .collect();
    let (failed, total) = load.stop();
    let (p50, p99, max) = percentiles(&mut flips.iter().map(|flip| flip.0).collect::<Vec<_>>());
    println!(
        "20 flips, 2 workers, default settings: write → last old answer p50 {p50:?}, p99 {p99:?}, max {max:?}; {failed} of {total} requests failed"
    );
    let (p50, p99, max) = percentiles(&mut flips.iter().map(|flip| flip.2).collect::<Vec<_>>());
    println!(
        "write → the event at a plain etcd watch client: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    let (p50, p99, max) = percentiles(
        &mut flips
            .iter()
            .map(|flip| flip.0.saturating_sub(flip.2))
            .collect::<Vec<_>>(),
    );
    println!("the gateway's part (last old answer after the plain client's event): p50 {p50:?}, p99 {p99:?}, max {max:?}");
    println!("each (write → last old answer, etcd's answer to the put, the plain client's event): {flips:?}");
    assert_eq!(failed, 0);
    drop(gateway);
    drop(etcd);
    let (before, after) = quiet_spell(60);
    println!(
        "etcd over a quiet minute: Range started {} → {}, Watch started {} → {}, Watch messages received {} → {}",
        before.0, after.0, before.1, after.1, before.2, after.2
    );
}
