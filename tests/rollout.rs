//! `graylane rollout` and `graylane status` with real parts: a real etcd
//! holding the rules, two Envoy gateways with the plugin, each with a
//! `source` on the etcd key, a stable and a canary backend whose answers the
//! test sets, and steady traffic through both gateways all along. The tests
//! run one at a time (each starts two Envoys; their timings are asserted).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graylane_cli::http::Url;
use graylane_cli::stats::Endpoint;
use graylane_cli::rollout::store::{Store, Token};
use graylane_cli::rollout::{etcd::Etcd as EtcdClient, State, EXIT_BUSY, EXIT_ROLLED_BACK, ROLLING_BACK};
use serde_json::{json, Value};
use support::controlled::{Behaviour, ControlledBackend};
use support::etcd::Etcd;
use support::rules_store::RulesStore;
use support::*;

const KEY: &str = "/graylane/rules";
const HOST: &str = "b.example.com";

/// One test at a time: each runs two Envoys and measures timings.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rules() -> Value {
    json!({"services": [{
        "name": "b",
        "hosts": [HOST],
        "default": "stable",
        "subsets": [
            {"name": "stable", "cluster": "b-stable"},
            {"name": "canary", "cluster": "b-canary"}
        ]
    }]})
}

/// etcd, the two backends and two gateways reading the rules from etcd.
struct Rig {
    etcd: Etcd,
    _stable: ControlledBackend,
    canary: ControlledBackend,
    _fallback: EchoBackend,
    gateways: Vec<Envoy>,
    /// With the rules on a plain endpoint rather than in etcd.
    store: Option<RulesStore>,
    dir: PathBuf,
}

impl Rig {
    /// The rules in etcd.
    fn start(label: &str) -> Rig {
        Rig::start_on(label, false)
    }

    /// With `http`, the rules on a writable plain endpoint (etcd keeps the
    /// rollout's state and lock).
    fn start_on(label: &str, http: bool) -> Rig {
        let etcd = Etcd::start(&format!("rollout-{label}"));
        // Polled: these tests are about the rollout, not about push.
        let timing = json!({"mode": "poll", "interval_ms": 200, "timeout_ms": 150,
            "max_backoff_ms": 1000});
        let (mut source, control, store, revision) = if http {
            let mut document = rules();
            document["version"] = json!(1);
            let store = RulesStore::start(&document.to_string());
            let source = json!({"format": "graylane", "cluster": "control", "path": "/rules",
                "authority": store.addr().to_string()});
            (source, store.addr(), Some(store), 1)
        } else {
            let revision = etcd.put(KEY, &rules().to_string());
            let source = json!({"format": "etcd", "cluster": "control", "key": KEY,
                "authority": etcd.client.to_string()});
            (source, etcd.client, None, revision)
        };
        for (name, value) in timing.as_object().unwrap() {
            source[name] = value.clone();
        }
        let stable = ControlledBackend::start("b-stable");
        let canary = ControlledBackend::start("b-canary");
        let fallback = EchoBackend::start(FALLBACK_CLUSTER);
        let mut document = rules();
        document["source"] = source;
        let gateways: Vec<Envoy> = (0..2)
            .map(|n| {
                let config = EnvoyConfig::new(&format!("rollout-{label}-{n}"), document.to_string())
                    .cluster("b-stable", stable.addr())
                    .cluster("b-canary", canary.addr())
                    .cluster("control", control)
                    .cluster(FALLBACK_CLUSTER, fallback.addr());
                // Histograms (the latency check) are merged on the stats
                // flush: every second here, not every 5 s.
                let mut bootstrap = config.bootstrap();
                bootstrap["stats_flush_interval"] = json!("1s");
                Envoy::start_bootstrap(&config.label, &bootstrap.to_string(), "json")
            })
            .collect();
        for gateway in &gateways {
            wait_for(Duration::from_secs(30), "the gateway fetched the rules", || version(gateway.admin()) >= revision);
        }
        let dir = repo_root().join("target/tmp").join(format!("rollout-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Rig {
            etcd,
            _stable: stable,
            canary,
            _fallback: fallback,
            gateways,
            store,
            dir,
        }
    }

    /// Writes a plan: the common head, then `body` (analysis, steps, …).
    fn plan(&self, name: &str, lock_ttl: &str, body: &str) -> PathBuf {
        self.plan_with(name, lock_ttl, body, false)
    }

    /// As [`Rig::plan`]; with `prometheus`, the second gateway is read from
    /// its Prometheus endpoint rather than its admin `/stats`.
    fn plan_with(&self, name: &str, lock_ttl: &str, body: &str, prometheus: bool) -> PathBuf {
        let gateways: Vec<String> = self
            .gateways
            .iter()
            .enumerate()
            .map(|(n, g)| match (n, prometheus) {
                (1, true) => format!("{{prometheus: 'http://{}/stats/prometheus'}}", g.admin()),
                _ => format!("'http://{}'", g.admin()),
            })
            .collect();
        let rules = match &self.store {
            Some(store) => format!("http: 'http://{}/rules'", store.addr()),
            None => format!("key: {KEY}"),
        };
        let text = format!(
            "source: {{etcd: 'http://{}', {rules}}}\nservice: b\nsubset: canary\ngateways: [{}]\n\
             poll: 500ms\nadopt_timeout: 10s\nlock_ttl: {lock_ttl}\n{body}",
            self.etcd.client,
            gateways.join(", ")
        );
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn client(&self) -> EtcdClient {
        EtcdClient::new(Url::parse(&format!("http://{}", self.etcd.client)).unwrap())
    }

    fn state_key(&self) -> String {
        match self.store {
            Some(_) => "/graylane/rollout.b".into(),
            None => format!("{KEY}.rollout.b"),
        }
    }

    fn state(&self) -> Option<State> {
        let entry = self.client().get(&self.state_key()).unwrap()?;
        Some(serde_json::from_slice(&entry.value).unwrap())
    }

    fn lock_held(&self) -> bool {
        self.client().get(&format!("{}.lock", self.state_key())).unwrap().is_some()
    }

    fn admin_urls(&self) -> Vec<String> {
        self.gateways.iter().map(|g| format!("http://{}", g.admin())).collect()
    }
}

/// The gateway's `graylane_source_version` gauge.
fn version(admin: SocketAddr) -> u64 {
    let Ok(mut client) = Client::connect(admin) else { return 0 };
    let Ok(response) = client.try_send(&Request::get("/stats?filter=^wasmcustom.graylane_source_version$")) else {
        return 0;
    };
    response
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("wasmcustom.graylane_source_version: "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for(deadline: Duration, what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < deadline, "{what}: not within {deadline:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// What one request got: the backend that answered (and its status), or
/// nothing (a transport error or an answer no backend gave: a lost request).
#[derive(Debug, Clone)]
struct Answer {
    at_ms: u64,
    gateway: usize,
    backend: Option<String>,
}

/// Steady traffic through every gateway (two connections each) and a
/// watcher of every gateway's version gauge, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    versions: Arc<Mutex<Vec<Vec<u64>>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(rig: &Rig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let versions = Arc::new(Mutex::new(vec![Vec::new(); rig.gateways.len()]));
        let mut threads = Vec::new();
        for (gateway, envoy) in rig.gateways.iter().enumerate() {
            for _ in 0..2 {
                let (stop, answers, listener) = (Arc::clone(&stop), Arc::clone(&answers), envoy.listener());
                threads.push(thread::spawn(move || {
                    let mut client = Client::connect(listener).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let response = client.try_send(&Request::get("/").host(HOST));
                        let backend = response.ok().and_then(|r| r.header("x-echo-backend"));
                        answers.lock().unwrap().push(Answer {
                            at_ms: now_ms(),
                            gateway,
                            backend,
                        });
                        thread::sleep(Duration::from_millis(4));
                    }
                }));
            }
            let (stop, versions, admin) = (Arc::clone(&stop), Arc::clone(&versions), envoy.admin());
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let seen = version(admin);
                    let mut versions = versions.lock().unwrap();
                    if versions[gateway].last() != Some(&seen) {
                        versions[gateway].push(seen);
                    }
                    drop(versions);
                    thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        Load {
            stop,
            answers,
            versions,
            threads,
        }
    }

    /// Stops; returns the answers and each gateway's versions in the order
    /// seen.
    fn finish(mut self) -> (Vec<Answer>, Vec<Vec<u64>>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        let versions = self.versions.lock().unwrap().clone();
        (answers, versions)
    }
}

fn lost(answers: &[Answer]) -> usize {
    answers.iter().filter(|a| a.backend.is_none()).count()
}

/// Runs `graylane ARGS` in this process on a thread of its own.
fn spawn_graylane(args: Vec<String>) -> thread::JoinHandle<Run> {
    thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        graylane(&args)
    })
}

/// The rollout was promoted after `writes` writes, and every gateway
/// showed each of them, in order.
fn assert_promoted_in_order(rig: &Rig, versions: &[Vec<u64>], writes: usize) -> State {
    let state = rig.state().unwrap();
    assert_eq!(state.phase, "promoted");
    let written: Vec<u64> = state.decisions.iter().filter_map(|d| d.revision).collect();
    assert_eq!(written.len(), writes, "{state:?}");
    for (gateway, seen) in versions.iter().enumerate() {
        let in_order: Vec<u64> = seen.iter().copied().filter(|v| written.contains(v)).collect();
        assert_eq!(in_order, written, "gateway {gateway} saw versions {seen:?}");
    }
    state
}

const ANALYSIS: &str = "analysis: {window: 3s, min_requests: 10, max_error_rate: 10, max_latency_ms: 1000}\n";

#[test]
fn a_healthy_rollout_reaches_promotion_seen_by_both_gateways_in_order() {
    let _one = one_at_a_time();
    let rig = Rig::start("healthy");
    // One gateway read from its admin /stats, the other from its
    // Prometheus endpoint.
    let plan = rig.plan_with(
        "healthy.yaml",
        "5s",
        &format!("{ANALYSIS}steps:\n  - weight: 10\n  - pause: 1s\n  - weight: 50\n  - analysis: 2s\n  - weight: 80\nfinish: promote\n"),
        true,
    );
    let load = Load::start(&rig);
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    thread::sleep(Duration::from_millis(500));
    let (answers, versions) = load.finish();
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    eprintln!("{}", run.stdout);
    for expected in ["[1/5] weight 10%: revision", "[2/5] pause 1.0s: ok", "[4/5] analysis 2.0s: ok; subset 0.00% errors", "[finish] promote", "rollout of b/canary: promoted"] {
        assert!(run.stdout.contains(expected), "{expected:?} not in:\n{}", run.stdout);
    }
    // Every write (three weights, the promotion) seen by both gateways, in order.
    let state = assert_promoted_in_order(&rig, &versions, 4);
    let rules: Value = serde_json::from_slice(&rig.client().get(KEY).unwrap().unwrap().value).unwrap();
    assert_eq!(rules["services"][0]["default"], "canary");
    assert!(rules["services"][0]["subsets"][1].get("weight").is_none());
    // After promotion the canary takes everything, on both gateways.
    let promoted = state.decisions.last().unwrap().done_ms;
    let late: Vec<&Answer> = answers.iter().filter(|a| a.at_ms > promoted + 300).collect();
    assert!(late.iter().any(|a| a.gateway == 0) && late.iter().any(|a| a.gateway == 1));
    assert!(late.iter().all(|a| a.backend.as_deref() == Some("b-canary")));
    assert_eq!(lost(&answers), 0, "requests lost during the rollout");
    eprintln!(
        "healthy rollout: {} requests, 0 lost; versions seen per gateway {versions:?}",
        answers.len()
    );
    // The Prometheus endpoint reads as the admin /stats does (no traffic now).
    let admin = format!("http://{}", rig.gateways[1].admin());
    let read = |endpoint: Endpoint| endpoint.fetch(Duration::from_secs(5)).unwrap();
    let by_admin = read(Endpoint::Admin(Url::parse(&admin).unwrap()));
    let by_prometheus = read(Endpoint::Prometheus(Url::parse(&format!("{admin}/stats/prometheus")).unwrap()));
    for cluster in ["b-stable", "b-canary"] {
        let (a, p) = (by_admin.cluster(cluster), by_prometheus.cluster(cluster));
        assert!(a.requests > 0);
        assert_eq!((a.requests, a.errors), (p.requests, p.errors), "{cluster}");
        assert_eq!(a.latency.count(), p.latency.count(), "{cluster}");
        assert_eq!(
            by_admin.subset_requests("b", &cluster[2..]),
            by_prometheus.subset_requests("b", &cluster[2..])
        );
    }
    // Read one after the other: the gateway may have fetched in between.
    let (a, p) = (by_admin.source(), by_prometheus.source());
    assert_eq!(a.version, p.version);
    assert!(a.fetches > 0 && a.fetches <= p.fetches && a.updates == p.updates, "{a:?} {p:?}");
    // A second run: the service's default is now the subset.
    let again = graylane(&["rollout", plan.to_str().unwrap()]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("canary is already the default subset of b"), "{}", again.stderr);
}

/// What a rollback took, from the test's clock and the rollout's state.
struct RolledBack {
    run: Run,
    state: State,
    answers: Vec<Answer>,
    /// From the fault to the failed check, ms.
    detected: u64,
    /// From the failed check to the last answer of the subset, on either
    /// gateway (negative: none after the check), ms.
    last_answer: i64,
}

/// Runs `plan` under traffic; once its first step is done, the subset's
/// backend turns to `fault`. Waits for the rollout's end and checks that the
/// rollback reached both gateways, with no request lost.
fn roll_back_on(rig: &Rig, plan: &std::path::Path, fault: Behaviour) -> RolledBack {
    let load = Load::start(rig);
    let rollout = spawn_graylane(vec!["rollout".into(), plan.display().to_string()]);
    wait_for(Duration::from_secs(30), "the first step done", || {
        rig.state().is_some_and(|s| s.next_step == 1)
    });
    thread::sleep(Duration::from_secs(1));
    let failing_from = now_ms();
    rig.canary.set(fault);
    let run = rollout.join().unwrap();
    // Answers after the rollback, once the slow ones still in flight are in.
    thread::sleep(Duration::from_secs(1) + fault.delay);
    let (answers, versions) = load.finish();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, i32::from(EXIT_ROLLED_BACK));
    let state = rig.state().unwrap();
    assert_eq!(state.phase, "rolled back");
    let rollback = state.decisions.last().unwrap().clone();
    let revision = rollback.revision.unwrap();
    for (gateway, seen) in versions.iter().enumerate() {
        assert!(seen.contains(&revision), "gateway {gateway} never showed the rollback {revision}: {seen:?}");
    }
    let last_canary = answers
        .iter()
        .filter(|a| a.backend.as_deref() == Some("b-canary"))
        .map(|a| a.at_ms)
        .max()
        .unwrap();
    // Both gateways answered after the subset's last answer, all from the
    // default, and the subset's last answer came before every gateway had
    // adopted the rollback (its request may have been sent just before).
    let after: Vec<&Answer> = answers.iter().filter(|a| a.at_ms > last_canary).collect();
    assert!(after.iter().any(|a| a.gateway == 0) && after.iter().any(|a| a.gateway == 1));
    assert!(
        last_canary <= rollback.done_ms + fault.delay.as_millis() as u64 + 200,
        "the subset answered {} ms after every gateway adopted the rollback",
        last_canary.saturating_sub(rollback.done_ms)
    );
    assert_eq!(lost(&answers), 0, "requests lost during the rollback");
    assert!(
        rollback.started_ms >= failing_from,
        "the check failed before the fault (a busy machine?):\n{}",
        run.stdout
    );
    let rolled = RolledBack {
        detected: rollback.started_ms - failing_from,
        last_answer: last_canary as i64 - rollback.started_ms as i64,
        run,
        state,
        answers,
    };
    eprintln!(
        "rollback: failure found {} ms after the fault; rollback adopted by both gateways {} ms after the failed check; \
         last answer of the subset {} ms after the failed check; {} requests, {} lost",
        rolled.detected,
        rollback.done_ms - rollback.started_ms,
        rolled.last_answer,
        rolled.answers.len(),
        lost(&rolled.answers)
    );
    rolled
}

#[test]
fn a_failing_canary_is_rolled_back_within_a_window_and_a_poll() {
    let _one = one_at_a_time();
    let rig = Rig::start("failing");
    let plan = rig.plan(
        "failing.yaml",
        "5s",
        &format!("{ANALYSIS}steps:\n  - weight: 30\n  - analysis: 20s\nfinish: promote\n"),
    );
    let rolled = roll_back_on(&rig, &plan, Behaviour { status: 500, delay: Duration::ZERO });
    assert!(rolled.run.stdout.contains("[2/2] analysis 20.0s: FAILED: error rate"), "{}", rolled.run.stdout);
    assert!(rolled.run.stderr.contains("rolled back: error rate"), "{}", rolled.run.stderr);
    // One analysis window (3 s) plus one poll (0.5 s); slack for a busy machine.
    assert!(rolled.detected <= 3000 + 500 + 1000, "failure found after {} ms", rolled.detected);
    let revision = rolled.state.decisions.last().unwrap().revision.unwrap();
    // graylane status shows the weights beside the shares, and the source.
    let mut args = vec!["status".to_string(), "--window".into(), "1s".into()];
    for url in rig.admin_urls() {
        args.extend(["--admin".to_string(), url]);
    }
    args.extend(["--etcd".into(), format!("http://{}", rig.etcd.client), "--key".into(), KEY.into()]);
    let load = Load::start(&rig);
    let status = spawn_graylane(args).join().unwrap();
    load.finish();
    assert_eq!(status.code, 0, "{}", status.stderr);
    eprintln!("{}", status.stdout);
    assert!(status.stdout.contains(&format!("source: version {revision}, fetches")), "{}", status.stdout);
    assert!(status.stdout.contains("b        stable  rest 100%  100.00%"), "{}", status.stdout);
    assert!(status.stdout.contains("b        canary  0%         0.00%"), "{}", status.stdout);
}

#[test]
fn a_slow_canary_is_rolled_back_on_latency() {
    let _one = one_at_a_time();
    let rig = Rig::start("slow");
    let plan = rig.plan(
        "slow.yaml",
        "5s",
        "analysis: {window: 3s, min_requests: 3, latency_percentile: 90, max_latency_ms: 1000}\n\
         steps:\n  - weight: 30\n  - analysis: 20s\nfinish: promote\n",
    );
    // Slow enough to tell from a healthy canary on a machine under load.
    let rolled = roll_back_on(&rig, &plan, Behaviour { status: 200, delay: Duration::from_millis(1200) });
    assert!(rolled.run.stdout.contains("FAILED: p90 latency ≤ 2500 ms bucket, over 1000 ms"), "{}", rolled.run.stdout);
    // A window and a poll, plus Envoy's stats flush (1 s here) and the
    // slow answer itself (counted when it completes); slack for a busy machine.
    assert!(rolled.detected <= 3000 + 500 + 1000 + 1200 + 1000, "failure found after {} ms", rolled.detected);
}

#[test]
fn a_blue_green_switch_is_switched_back_when_the_new_colour_fails() {
    let _one = one_at_a_time();
    let rig = Rig::start("bluegreen");
    let plan = rig.plan(
        "bluegreen.yaml",
        "5s",
        &format!("{ANALYSIS}steps:\n  - switch: true\n  - analysis: 20s\nfinish: keep\n"),
    );
    let rolled = roll_back_on(&rig, &plan, Behaviour { status: 503, delay: Duration::ZERO });
    assert!(rolled.run.stdout.contains("[1/2] switch: revision"), "{}", rolled.run.stdout);
    assert!(rolled.run.stdout.contains("FAILED: error rate 100.00% over 10.00%") || rolled.run.stdout.contains("FAILED: error rate"), "{}", rolled.run.stdout);
    let rules: Value = serde_json::from_slice(&rig.client().get(KEY).unwrap().unwrap().value).unwrap();
    assert_eq!(rules["services"][0]["default"], "stable");
}

/// Run by `a_killed_rollout_resumes_where_it_stopped` as a process of its
/// own (this test binary again), so that it can be killed.
#[test]
#[ignore = "a helper process of the resume test"]
fn rollout_child_process() {
    let Some(plan) = std::env::var_os("GRAYLANE_ROLLOUT_PLAN") else {
        return;
    };
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    std::process::exit(run.code);
}

/// Runs the rollout in a process of its own and kills it once its next
/// step is `step`.
fn kill_rollout_at_step(rig: &Rig, plan: &std::path::Path, step: usize) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["rollout_child_process", "--exact", "--ignored", "--nocapture"])
        .env("GRAYLANE_ROLLOUT_PLAN", plan)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(40), "the rollout at its step", || {
        rig.state().is_some_and(|s| s.next_step == step)
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_interrupted_rollback_is_finished_on_resume_not_undone() {
    let _one = one_at_a_time();
    let rig = Rig::start("interrupted");
    let plan = rig.plan(
        "interrupted.yaml",
        "2s",
        &format!("{ANALYSIS}steps:\n  - weight: 40\n  - pause: 30s\nfinish: promote\n"),
    );
    kill_rollout_at_step(&rig, &plan, 1);
    // As if it had been killed after deciding to roll back, before writing
    // the rollback.
    let key = format!("{KEY}.rollout.b");
    let entry = rig.client().get(&key).unwrap().unwrap();
    let mut state: State = serde_json::from_slice(&entry.value).unwrap();
    state.phase = ROLLING_BACK.into();
    rig.client()
        .put_if(&key, entry.mod_revision, &serde_json::to_vec(&state).unwrap(), 0)
        .unwrap();
    wait_for(Duration::from_secs(10), "the lease expired", || !rig.lock_held());
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(EXIT_ROLLED_BACK), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("rolled back: a rollback was interrupted; finishing it"), "{}", run.stderr);
    assert!(!run.stdout.contains("[2/2]"), "{}", run.stdout);
    let rules: Value = serde_json::from_slice(&rig.client().get(KEY).unwrap().unwrap().value).unwrap();
    assert_eq!(rules["services"][0]["default"], "stable");
    assert!(rules["services"][0]["subsets"][1].get("weight").is_none());
    assert_eq!(rig.state().unwrap().phase, "rolled back");
}

#[test]
fn a_killed_rollout_resumes_where_it_stopped() {
    let _one = one_at_a_time();
    let rig = Rig::start("resume");
    let plan = rig.plan(
        "resume.yaml",
        "2s",
        &format!("{ANALYSIS}steps:\n  - weight: 10\n  - pause: 1s\n  - weight: 40\n  - pause: 3s\nfinish: promote\n"),
    );
    let load = Load::start(&rig);
    kill_rollout_at_step(&rig, &plan, 3);
    // The dead process's lock holds until its lease expires.
    let refused = graylane(&["rollout", plan.to_str().unwrap()]);
    assert_eq!(refused.code, i32::from(EXIT_BUSY), "{}", refused.stderr);
    assert!(refused.stderr.contains("lock expires in"), "{}", refused.stderr);
    wait_for(Duration::from_secs(10), "the lease expired", || !rig.lock_held());
    let resumed = graylane(&["rollout", plan.to_str().unwrap()]);
    let (answers, _) = load.finish();
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    assert!(resumed.stdout.starts_with("resuming the rollout of b/canary at step 4/4"), "{}", resumed.stdout);
    assert!(!resumed.stdout.contains("[1/4]") && !resumed.stdout.contains("[3/4]"), "{}", resumed.stdout);
    let state = rig.state().unwrap();
    let steps: Vec<&str> = state.decisions.iter().map(|d| d.step.as_str()).collect();
    assert_eq!(steps, ["1/4", "2/4", "3/4", "4/4", "finish"]);
    assert_eq!(state.phase, "promoted");
    assert_eq!(lost(&answers), 0);
}

#[test]
fn a_second_rollout_is_refused_and_abort_rolls_back_the_first() {
    let _one = one_at_a_time();
    let rig = Rig::start("second");
    let plan = rig.plan(
        "first.yaml",
        "5s",
        &format!("{ANALYSIS}steps:\n  - weight: 20\n  - pause: 30s\nfinish: promote\n"),
    );
    let other = rig.plan("other.yaml", "5s", "steps:\n  - weight: 50\nfinish: {stop_at: 50}\n");
    let first = spawn_graylane(vec!["rollout".into(), plan.display().to_string()]);
    wait_for(Duration::from_secs(30), "the first rollout in its pause", || {
        rig.state().is_some_and(|s| s.next_step == 1)
    });
    let second = graylane(&["rollout", other.to_str().unwrap()]);
    assert_eq!(second.code, i32::from(EXIT_BUSY));
    assert!(second.stderr.contains("another rollout of service b is running: {\"holder\":\"pid"), "{}", second.stderr);
    let paused = graylane(&["rollout", "pause", plan.to_str().unwrap()]);
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    let status = graylane(&["rollout", "status", plan.to_str().unwrap()]);
    assert!(status.stdout.contains("next step 2/2, paused"), "{}", status.stdout);
    assert!(status.stdout.contains("canary weight 20%"), "{}", status.stdout);
    let aborted = graylane(&["rollout", "abort", plan.to_str().unwrap()]);
    assert_eq!(aborted.code, i32::from(EXIT_ROLLED_BACK), "{}\n{}", aborted.stdout, aborted.stderr);
    let first = first.join().unwrap();
    assert_eq!(first.code, i32::from(EXIT_ROLLED_BACK), "{}\n{}", first.stdout, first.stderr);
    assert!(first.stderr.contains("aborted: aborted by request"), "{}", first.stderr);
    let state = rig.state().unwrap();
    assert_eq!(state.phase, "aborted");
    let rules: Value = serde_json::from_slice(&rig.client().get(KEY).unwrap().unwrap().value).unwrap();
    assert_eq!(rules["services"][0]["default"], "stable");
    assert!(rules["services"][0]["subsets"][1].get("weight").is_none());
    assert!(!rig.lock_held(), "the lock is released at the end");
}

#[test]
fn a_gateway_that_does_not_adopt_stops_the_rollout_naming_it() {
    let _one = one_at_a_time();
    let rig = Rig::start("stale");
    let plan = rig.plan("stale.yaml", "5s", "steps:\n  - weight: 20\nfinish: promote\n");
    // A third gateway whose admin interface does not answer, and a short
    // adoption timeout.
    let silent = format!("http://127.0.0.1:{}", support::etcd::free_port());
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("adopt_timeout: 10s", "adopt_timeout: 2s")
        .replace("gateways: [", &format!("gateways: ['{silent}', "));
    std::fs::write(&plan, text).unwrap();
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(EXIT_ROLLED_BACK), "{}\n{}", run.stdout, run.stderr);
    let expected = format!("rolled back: weight 20% (revision 5): not every gateway adopted revision 5 within 2.0s: {silent}: GET {silent}/stats?histogram_buckets=cumulative: cannot connect");
    assert!(run.stderr.contains(&expected), "{expected:?} not in {}", run.stderr);
    assert!(run.stderr.contains("; not every gateway adopted revision 7 within 2.0s"), "{}", run.stderr);
    // The two gateways that answer did adopt the rollback.
    for gateway in &rig.gateways {
        assert!(version(gateway.admin()) >= 7);
    }
    let rules: Value = serde_json::from_slice(&rig.client().get(KEY).unwrap().unwrap().value).unwrap();
    assert!(rules["services"][0]["subsets"][1].get("weight").is_none());
}

#[test]
fn a_rollout_over_a_plain_rules_endpoint_replaced_with_if_match() {
    let _one = one_at_a_time();
    let rig = Rig::start_on("http", true);
    let store = rig.store.as_ref().unwrap();
    let plan = rig.plan(
        "http.yaml",
        "5s",
        &format!("{ANALYSIS}steps:\n  - weight: 20\n  - pause: 1s\n  - weight: 60\n  - analysis: 2s\nfinish: promote\n"),
    );
    let load = Load::start(&rig);
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    let (answers, versions) = load.finish();
    eprintln!("{}", run.stdout);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // The document's version is what the gateways show: each write's seen
    // by both, in order.
    let state = assert_promoted_in_order(&rig, &versions, 3);
    let written: Vec<u64> = state.decisions.iter().filter_map(|d| d.revision).collect();
    let document: Value = serde_json::from_str(&store.document()).unwrap();
    assert_eq!(document["services"][0]["default"], "canary");
    assert_eq!(document["version"], json!(written[2]));
    assert_eq!(lost(&answers), 0);
    // A write on an ETag that is no longer current is refused, not applied.
    let rules = Store::Http {
        url: Url::parse(&format!("http://{}/rules", store.addr())).unwrap(),
    };
    let (mut read, token) = rules.read().unwrap();
    assert!(matches!(token, Token::ETag(_)));
    store.replace(&document.to_string());
    assert_eq!(rules.write_if(&token, &mut read).unwrap(), None);
}
