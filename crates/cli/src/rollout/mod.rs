//! `graylane rollout PLAN`: progressive delivery over the live rules in etcd.
//!
//! Each step rewrites the rules key in one etcd transaction conditioned on
//! the revision it read, then waits until every gateway's
//! `graylane_source_version` gauge shows the new revision before its clock
//! starts. Between weight steps the gateways' own statistics are read every
//! `poll` ([`crate::stats`]) and judged over the plan's window; a failed
//! check rolls back at once (the subset's weight to 0, the old default back)
//! and waits until every gateway has adopted the rollback.
//!
//! The rollout's state (next step, baseline, decisions) is kept in etcd
//! beside the rules (`state_key`), so a rollout that was killed continues
//! where it stopped when run again with the same plan; a lock key attached
//! to a lease kept alive while the command runs lets one rollout of a
//! service run at a time. `status`, `pause`, `resume` and `abort` read and
//! write the same state.

mod command;
pub mod etcd;
pub mod plan;
pub mod rules;
pub mod store;

pub use command::{command, RolloutArgs};

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::{show_duration, ClusterStats, Snapshot};
use etcd::{Etcd, Write as Written};
use plan::{Finish, Plan, Step};

/// Exit code of a rollout that was rolled back (or aborted).
pub const EXIT_ROLLED_BACK: u8 = 1;
/// Exit code when another rollout of the service holds the lock, or a
/// rollout of another plan is in progress.
pub const EXIT_BUSY: u8 = 3;

/// What the rollout keeps in etcd at `state_key`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The plan's fingerprint: a resume must bring the same plan.
    pub plan: String,
    pub file: String,
    pub service: String,
    pub subset: String,
    /// `running`, `promoted`, `finished`, `rolled back`, `aborted`.
    pub phase: String,
    /// Index of the next step to run (a step cut short runs again).
    pub next_step: usize,
    pub started_ms: u64,
    /// The default subset when the rollout started: what a rollback restores.
    pub baseline_default: String,
    #[serde(default)]
    pub paused: bool,
    /// `abort`, asked by `graylane rollout abort` while the rollout runs.
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub decisions: Vec<Decision>,
}

/// One thing the rollout did, for the summary and for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// `1/5`, or `rollback`, `finish`.
    pub step: String,
    pub action: String,
    /// When it began (for a rollback: when the check failed), Unix ms.
    pub started_ms: u64,
    /// When it was done (for a write: when every gateway had adopted it).
    pub done_ms: u64,
    pub revision: Option<u64>,
    /// The slowest gateway's adoption of the write, ms.
    pub adopted_ms: Option<u64>,
    pub result: String,
}

pub const RUNNING: &str = "running";
/// Written before a rollback: a rollout resumed in this phase finishes the
/// rollback rather than going on with its steps.
pub const ROLLING_BACK: &str = "rolling back";

/// Whether a rollout in this phase has not ended.
pub fn in_progress(phase: &str) -> bool {
    phase == RUNNING || phase == ROLLING_BACK
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Who runs this rollout: shown to the one that is refused.
fn holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("pid {} on {}", std::process::id(), host.trim())
}

/// The state, with the revision to write it back on.
fn read_state(etcd: &Etcd, plan: &Plan) -> Result<Option<(State, u64)>, String> {
    let Some(entry) = etcd.get(&plan.state_key)? else {
        return Ok(None);
    };
    let state = serde_json::from_slice(&entry.value)
        .map_err(|e| format!("the rollout state at {} is not readable ({e}); delete the key to start over", plan.state_key))?;
    Ok(Some((state, entry.mod_revision)))
}

/// Reads the state, changes it and writes it back on the revision read,
/// again while someone else writes in between.
fn update_state(etcd: &Etcd, plan: &Plan, change: impl Fn(&mut State)) -> Result<State, String> {
    for _ in 0..20 {
        let Some((mut state, revision)) = read_state(etcd, plan)? else {
            return Err(format!("no rollout of service {} has started (no state at {})", plan.service, plan.state_key));
        };
        change(&mut state);
        let text = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
        if let Written::Done(_) = etcd.put_if(&plan.state_key, revision, &text, 0)? {
            return Ok(state);
        }
    }
    Err(format!("the rollout state at {} keeps changing under this write", plan.state_key))
}

/// The lock: a key that exists while its lease lives, renewed by a thread.
struct Lock {
    etcd: Etcd,
    lease: u64,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
}

impl Lock {
    fn acquire(etcd: &Etcd, plan: &Plan) -> Result<Lock, (u8, String)> {
        let fail = |why: String| (crate::EXIT_INVALID, why);
        let lease = etcd.grant(plan.lock_ttl).map_err(fail)?;
        let value = serde_json::json!({"holder": holder(), "plan": plan.file.display().to_string()});
        match etcd.put_if(&plan.lock_key, 0, value.to_string().as_bytes(), lease).map_err(fail)? {
            Written::Done(_) => {}
            Written::Conflict => {
                let _ = etcd.revoke(lease);
                let entry = etcd.get(&plan.lock_key).map_err(fail)?;
                let (who, left) = match entry {
                    Some(entry) => (
                        String::from_utf8_lossy(&entry.value).into_owned(),
                        etcd.time_to_live(entry.lease).unwrap_or(0),
                    ),
                    None => ("(just released)".into(), 0),
                };
                return Err((
                    EXIT_BUSY,
                    format!(
                        "graylane: another rollout of service {} is running: {who} holds {} (if that process is gone, the lock expires in {left}s)",
                        plan.service, plan.lock_key
                    ),
                ));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_lost, thread_etcd) = (Arc::clone(&stop), Arc::clone(&lost), etcd.clone());
        let period = Duration::from_millis(plan.lock_ttl * 1000 / 3);
        thread::spawn(move || {
            let mut last = Instant::now();
            while !thread_stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
                if last.elapsed() < period {
                    continue;
                }
                last = Instant::now();
                if let Ok(false) = thread_etcd.keep_alive(lease) {
                    thread_lost.store(true, Ordering::Relaxed);
                }
            }
        });
        Ok(Lock {
            etcd: etcd.clone(),
            lease,
            stop,
            lost,
        })
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.etcd.revoke(self.lease);
    }
}

/// How a watch ended.
enum Watched {
    Passed(String),
    Failed { why: String, at_ms: u64 },
    Aborted { at_ms: u64 },
}

/// A rollout in progress.
struct Rollout<'a> {
    plan: &'a Plan,
    etcd: Etcd,
    out: &'a mut dyn Write,
    lock: Lock,
    /// The subset's cluster, and the baseline default's.
    candidate: String,
    baseline: String,
}

impl Rollout<'_> {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    /// Applies `change` to the rules and writes them on the revision read;
    /// returns the new revision.
    fn write_rules(&self, change: &dyn Fn(&mut Value) -> Result<(), String>) -> Result<u64, String> {
        let plan = self.plan;
        for _ in 0..10 {
            let (mut document, token) = plan.rules.read()?;
            change(&mut document)?;
            rules::check(&document)?;
            if let Some(version) = plan.rules.write_if(&token, &mut document)? {
                return Ok(version);
            }
        }
        Err(format!("the rules at {} keep changing under this write; is another tool writing them?", plan.rules))
    }

    /// Waits until every gateway reports `revision` (or later); the slowest
    /// gateway's time, counted from `started` (just before the write).
    fn wait_adopted(&self, revision: u64, started: Instant) -> Result<Duration, String> {
        let mut pending: Vec<usize> = (0..self.plan.gateways.len()).collect();
        let mut last = vec![String::new(); self.plan.gateways.len()];
        loop {
            let mut still = Vec::new();
            for index in pending {
                let Some(gateway) = self.plan.gateways.get(index) else { continue };
                match gateway.fetch(Duration::from_secs(2)) {
                    Ok(snapshot) => {
                        let source = snapshot.source();
                        let seen = snapshot.value("wasmcustom.graylane_source_version").unwrap_or(0);
                        if seen < revision {
                            if let Some(text) = last.get_mut(index) {
                                *text = format!(
                                    "it reports version {seen} (fetches {}, failures {}, rejected {})",
                                    source.fetches, source.failures, source.rejected
                                );
                            }
                            still.push(index);
                        }
                    }
                    Err(why) => {
                        if let Some(text) = last.get_mut(index) {
                            *text = why;
                        }
                        still.push(index);
                    }
                }
            }
            if still.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > self.plan.adopt_timeout {
                let names: Vec<String> = still
                    .iter()
                    .filter_map(|&i| Some(format!("{}: {}", self.plan.gateways.get(i)?, last.get(i)?)))
                    .collect();
                return Err(format!(
                    "not every gateway adopted revision {revision} within {}: {}",
                    show_duration(self.plan.adopt_timeout),
                    names.join("; ")
                ));
            }
            pending = still;
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a change and waits for every gateway; records the decision.
    fn apply(&mut self, step: &str, action: &str, change: &dyn Fn(&mut Value) -> Result<(), String>) -> Result<Decision, String> {
        let started_ms = now_ms();
        let started = Instant::now();
        let revision = self.write_rules(change)?;
        let adopted = self.wait_adopted(revision, started).map_err(|why| format!("{action} (revision {revision}): {why}"))?;
        let decision = Decision {
            step: step.into(),
            action: action.into(),
            started_ms,
            done_ms: now_ms(),
            revision: Some(revision),
            adopted_ms: Some(u64::try_from(adopted.as_millis()).unwrap_or(u64::MAX)),
            result: "ok".into(),
        };
        self.say(&format!(
            "[{step}] {action}: revision {revision}, adopted by {} gateway(s) in {}",
            self.plan.gateways.len(),
            show_duration(adopted)
        ));
        Ok(decision)
    }

    fn snapshots(&self) -> Result<Vec<Snapshot>, String> {
        self.plan
            .gateways
            .iter()
            .map(|gateway| gateway.fetch(Duration::from_secs(2)))
            .collect()
    }

    /// Candidate and baseline figures between two readings, summed over the
    /// gateways.
    fn window(&self, older: &[Snapshot], newer: &[Snapshot]) -> (ClusterStats, ClusterStats) {
        let mut candidate = ClusterStats::default();
        let mut baseline = ClusterStats::default();
        for (old, new) in older.iter().zip(newer) {
            candidate.add(&new.cluster(&self.candidate).since(&old.cluster(&self.candidate)));
            baseline.add(&new.cluster(&self.baseline).since(&old.cluster(&self.baseline)));
        }
        (candidate, baseline)
    }

    /// Watches for `duration` (paused time not counted), judging each
    /// window; with `judge`, the watch passes only on a window with enough
    /// requests (waiting up to three times as long for one).
    fn watch(&mut self, duration: Duration, judge: bool) -> Result<Watched, String> {
        let plan = self.plan;
        let mut history: Vec<(Instant, Vec<Snapshot>)> = vec![(Instant::now(), self.snapshots()?)];
        let mut active = Duration::ZERO;
        let mut last_tick = Instant::now();
        let mut verdict: Option<analysis::Verdict> = None;
        let mut read_failures = 0u32;
        loop {
            thread::sleep(plan.poll);
            if self.lock.lost() {
                return Err(format!("lost the lock {} (its lease expired): stopping", plan.lock_key));
            }
            let (state, _) = read_state(&self.etcd, plan)?.unwrap_or_default();
            if state.request.as_deref() == Some("abort") {
                return Ok(Watched::Aborted { at_ms: now_ms() });
            }
            if !state.paused {
                active += last_tick.elapsed();
            }
            last_tick = Instant::now();
            let snapshots = match self.snapshots() {
                Ok(snapshots) => {
                    read_failures = 0;
                    snapshots
                }
                Err(why) => {
                    read_failures += 1;
                    if plan.poll * read_failures > plan.adopt_timeout {
                        return Err(format!("cannot read the gateways' statistics: {why}"));
                    }
                    continue;
                }
            };
            let now = Instant::now();
            if let Some(analysis) = &plan.analysis {
                // The reading that starts the window: the newest one at
                // least `window` old, else the first.
                let start = history
                    .iter()
                    .rev()
                    .find(|(at, _)| now.duration_since(*at) >= analysis.window)
                    .or(history.first());
                if let Some((_, older)) = start {
                    let (candidate, baseline) = self.window(older, &snapshots);
                    let judged = analysis::judge(analysis, &candidate, &baseline);
                    if judged.enough && !judged.passed {
                        return Ok(Watched::Failed {
                            why: judged.text,
                            at_ms: now_ms(),
                        });
                    }
                    verdict = Some(judged);
                }
                let keep_after = now.checked_sub(analysis.window.saturating_mul(2));
                history.retain(|(at, _)| keep_after.map_or(true, |limit| *at >= limit));
            }
            history.push((now, snapshots));
            if active >= duration {
                let text = verdict.as_ref().map_or_else(|| "no analysis".to_string(), |v| v.text.clone());
                let enough = verdict.as_ref().is_some_and(|v| v.enough);
                if !judge || enough {
                    return Ok(Watched::Passed(text));
                }
                if active >= duration.saturating_mul(3) {
                    return Ok(Watched::Failed {
                        why: format!("not enough requests to judge after {}: {text}", show_duration(active)),
                        at_ms: now_ms(),
                    });
                }
            }
        }
    }
}

pub mod analysis {
    //! The checks of a plan's analysis on one window's figures.

    use super::plan::Analysis;
    use crate::stats::{percent, ClusterStats};

    #[derive(Debug, Clone, PartialEq)]
    pub struct Verdict {
        /// The subset had at least `min_requests` in the window.
        pub enough: bool,
        pub passed: bool,
        /// What was seen, and what failed.
        pub text: String,
    }

    fn latency(stats: &ClusterStats, percentile: f64) -> Option<f64> {
        stats.latency.percentile(percentile)
    }

    /// Judges the subset (`candidate`) against the thresholds, absolute and
    /// relative to the default subset (`baseline`, when it had enough
    /// requests too).
    pub fn judge(analysis: &Analysis, candidate: &ClusterStats, baseline: &ClusterStats) -> Verdict {
        let enough = candidate.requests >= analysis.min_requests;
        let baseline_enough = baseline.requests >= analysis.min_requests;
        let rate = candidate.error_rate();
        let base_rate = baseline.error_rate();
        let p = analysis.latency_percentile;
        let p_candidate = latency(candidate, p);
        let p_baseline = latency(baseline, p);
        let mut failures = Vec::new();
        if let Some(max) = analysis.max_error_rate {
            if rate > max {
                failures.push(format!("error rate {} over {}", percent(rate), percent(max)));
            }
        }
        if let (Some(over), true) = (analysis.max_error_rate_over_default, baseline_enough) {
            if rate > base_rate + over {
                failures.push(format!(
                    "error rate {} over the default's {} + {}",
                    percent(rate),
                    percent(base_rate),
                    percent(over)
                ));
            }
        }
        if let (Some(max), Some(seen)) = (analysis.max_latency_ms, p_candidate) {
            if seen > max {
                failures.push(format!("p{p} latency ≤ {seen} ms bucket, over {max} ms"));
            }
        }
        if let (Some(ratio), Some(seen), Some(base), true) =
            (analysis.max_latency_over_default, p_candidate, p_baseline, baseline_enough)
        {
            if seen > base * ratio {
                failures.push(format!("p{p} latency ≤ {seen} ms bucket, over {ratio} × the default's {base} ms"));
            }
        }
        let shown_latency = p_candidate.map_or_else(|| "-".to_string(), |ms| format!("≤ {ms} ms"));
        let mut text = format!(
            "subset {} errors of {} requests ({} resets, {} connect failures), p{p} {shown_latency}; default {} of {}",
            percent(rate),
            candidate.requests,
            candidate.resets,
            candidate.connect_failures,
            percent(base_rate),
            baseline.requests
        );
        if !failures.is_empty() {
            text = format!("{}: {text}", failures.join(", "));
        }
        if !enough {
            text.push_str(&format!(" (fewer than {} requests: not judged)", analysis.min_requests));
        }
        Verdict {
            enough,
            passed: failures.is_empty(),
            text,
        }
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Weight(weight) => format!("weight {}", plan::show_weight(*weight)),
        Step::Pause(duration) => format!("pause {}", show_duration(*duration)),
        Step::Analysis(duration) => format!("analysis {}", show_duration(*duration)),
        Step::Switch => "switch".into(),
    }
}

/// The end of a run: the exit code and its last message.
pub struct Ended {
    pub code: u8,
    pub message: String,
}

/// Runs (or resumes) the plan, writing a progress line per step and a
/// summary at the end to `out`.
pub fn run(plan: &Plan, out: &mut dyn Write) -> Result<Ended, (u8, String)> {
    let etcd = Etcd::new(plan.etcd.clone());
    let fail = |why: String| (crate::EXIT_INVALID, format!("graylane: rollout of {}/{}: {why}", plan.service, plan.subset));
    let lock = Lock::acquire(&etcd, plan)?;
    let (document, _) = plan.rules.read().map_err(fail)?;
    let previous = read_state(&etcd, plan).map_err(fail)?;
    if let Some((state, _)) = previous.as_ref().filter(|(state, _)| in_progress(&state.phase)) {
        if state.plan != plan.fingerprint {
            return Err((
                EXIT_BUSY,
                format!(
                    "graylane: a rollout of service {} with another plan ({}) is in progress at step {}; resume it with that plan, or end it with `graylane rollout abort`",
                    plan.service, state.file, state.next_step + 1
                ),
            ));
        }
    }
    let resumed = previous
        .as_ref()
        .filter(|(state, _)| in_progress(&state.phase))
        .map(|(state, _)| state.clone());
    let baseline_default = match &resumed {
        Some(state) => state.baseline_default.clone(),
        None => rules::default_of(&document, &plan.service).map_err(fail)?,
    };
    if resumed.is_none() && baseline_default == plan.subset {
        return Err(fail(format!("{} is already the default subset of {}", plan.subset, plan.service)));
    }
    let candidate = rules::cluster_of(&document, &plan.service, &plan.subset).map_err(fail)?;
    let baseline = rules::cluster_of(&document, &plan.service, &baseline_default).map_err(fail)?;
    let state = match resumed {
        Some(state) => {
            let _ = writeln!(out, "resuming the rollout of {}/{} at step {}/{}", plan.service, plan.subset, state.next_step + 1, plan.steps.len());
            state
        }
        None => {
            let state = State {
                plan: plan.fingerprint.clone(),
                file: plan.file.display().to_string(),
                service: plan.service.clone(),
                subset: plan.subset.clone(),
                phase: RUNNING.into(),
                next_step: 0,
                started_ms: now_ms(),
                baseline_default,
                ..State::default()
            };
            let text = serde_json::to_vec(&state).map_err(|e| fail(e.to_string()))?;
            let expected = previous.map_or(0, |(_, revision)| revision);
            if etcd.put_if(&plan.state_key, expected, &text, 0).map_err(fail)? == Written::Conflict {
                return Err(fail(format!("the state at {} changed while starting", plan.state_key)));
            }
            let _ = writeln!(out, "rollout of {}/{}: {} step(s), gateways {}", plan.service, plan.subset, plan.steps.len(), plan.gateways.len());
            state
        }
    };
    let mut rollout = Rollout {
        plan,
        etcd: etcd.clone(),
        out,
        lock,
        candidate,
        baseline,
    };
    // A rollback that was cut short is finished, never undone.
    let outcome = if state.phase == ROLLING_BACK {
        Err(Stop::Failed {
            why: "a rollback was interrupted; finishing it".into(),
            at_ms: now_ms(),
        })
    } else {
        rollout.steps(&state)
    };
    let ended = match outcome {
        Ok(()) => rollout.finish(),
        Err(Stop::Failed { why, at_ms }) => rollout.roll_back(&why, at_ms, "rolled back"),
        Err(Stop::Aborted { at_ms }) => rollout.roll_back("aborted by request", at_ms, "aborted"),
    };
    let ended = ended.map_err(fail)?;
    let (state, _) = read_state(&etcd, plan).map_err(fail)?.unwrap_or_default();
    let _ = writeln!(rollout.out, "{}", summary(&state));
    Ok(ended)
}

enum Stop {
    Failed { why: String, at_ms: u64 },
    Aborted { at_ms: u64 },
}

impl Rollout<'_> {
    fn record(&self, decision: Decision, next_step: Option<usize>) -> Result<(), String> {
        update_state(&self.etcd, self.plan, |state| {
            state.decisions.push(decision.clone());
            if let Some(next) = next_step {
                state.next_step = next;
            }
        })
        .map(|_| ())
    }

    fn steps(&mut self, state: &State) -> Result<(), Stop> {
        let plan = self.plan;
        let total = plan.steps.len();
        let failed = |why: String| Stop::Failed { why, at_ms: now_ms() };
        for (index, step) in plan.steps.iter().enumerate().skip(state.next_step) {
            self.hold_while_paused()?;
            let label = format!("{}/{total}", index + 1);
            let action = describe(step);
            let (service, subset) = (plan.service.clone(), plan.subset.clone());
            let decision = match step {
                Step::Weight(weight) => {
                    let weight = *weight;
                    self.apply(&label, &action, &move |d| rules::set_weight(d, &service, &subset, weight))
                        .map_err(failed)?
                }
                Step::Switch => {
                    let old = state.baseline_default.clone();
                    self.apply(&label, &action, &move |d| {
                        rules::set_default(d, &service, &subset)?;
                        rules::set_weight(d, &service, &subset, 0)?;
                        rules::set_weight(d, &service, &old, 0)
                    })
                    .map_err(failed)?
                }
                Step::Pause(duration) | Step::Analysis(duration) => {
                    let started_ms = now_ms();
                    let judge = matches!(step, Step::Analysis(_));
                    match self.watch(*duration, judge).map_err(failed)? {
                        Watched::Passed(text) => {
                            self.say(&format!("[{label}] {action}: ok; {text}"));
                            Decision {
                                step: label.clone(),
                                action: action.clone(),
                                started_ms,
                                done_ms: now_ms(),
                                result: format!("ok; {text}"),
                                ..Decision::default()
                            }
                        }
                        Watched::Failed { why, at_ms } => {
                            self.say(&format!("[{label}] {action}: FAILED: {why}"));
                            return Err(Stop::Failed { why, at_ms });
                        }
                        Watched::Aborted { at_ms } => return Err(Stop::Aborted { at_ms }),
                    }
                }
            };
            self.record(decision, Some(index + 1)).map_err(failed)?;
        }
        Ok(())
    }

    /// Before a step: waits while the rollout is paused; an abort asked
    /// meanwhile stops it.
    fn hold_while_paused(&mut self) -> Result<(), Stop> {
        let mut said = false;
        loop {
            let (state, _) = read_state(&self.etcd, self.plan)
                .map_err(|why| Stop::Failed { why, at_ms: now_ms() })?
                .unwrap_or_default();
            if state.request.as_deref() == Some("abort") {
                return Err(Stop::Aborted { at_ms: now_ms() });
            }
            if !state.paused {
                return Ok(());
            }
            if self.lock.lost() {
                return Err(Stop::Failed {
                    why: format!("lost the lock {} (its lease expired)", self.plan.lock_key),
                    at_ms: now_ms(),
                });
            }
            if !said {
                self.say("paused: waiting for graylane rollout resume");
                said = true;
            }
            thread::sleep(self.plan.poll);
        }
    }

    fn finish(&mut self) -> Result<Ended, String> {
        let plan = self.plan;
        let (service, subset) = (plan.service.clone(), plan.subset.clone());
        let (state, _) = read_state(&self.etcd, plan)?.unwrap_or_default();
        let old = state.baseline_default.clone();
        let (action, phase) = match plan.finish {
            Finish::Promote => ("promote".to_string(), "promoted"),
            Finish::StopAt(weight) => (format!("stop at {}", plan::show_weight(weight)), "finished"),
            Finish::Keep => ("keep".to_string(), "finished"),
        };
        let decision = match plan.finish {
            Finish::Promote => Some(self.apply("finish", &action, &move |d| {
                rules::set_default(d, &service, &subset)?;
                rules::set_weight(d, &service, &subset, 0)?;
                rules::set_weight(d, &service, &old, 0)
            })),
            Finish::StopAt(weight) => Some(self.apply("finish", &action, &move |d| rules::set_weight(d, &service, &subset, weight))),
            Finish::Keep => None,
        };
        match decision {
            Some(Ok(decision)) => self.record(decision, None)?,
            Some(Err(why)) => return self.roll_back(&why, now_ms(), "rolled back"),
            None => {}
        }
        update_state(&self.etcd, plan, |state| state.phase = phase.into())?;
        Ok(Ended {
            code: crate::EXIT_OK,
            message: format!("rollout of {}/{}: {phase}", plan.service, plan.subset),
        })
    }

    /// Back to the baseline: the subset's weight 0, the old default live.
    fn roll_back(&mut self, why: &str, failed_ms: u64, phase: &str) -> Result<Ended, String> {
        let plan = self.plan;
        let (state, _) = read_state(&self.etcd, plan)?.unwrap_or_default();
        let (service, subset, old) = (plan.service.clone(), plan.subset.clone(), state.baseline_default.clone());
        self.say(&format!("rolling back: {why}"));
        update_state(&self.etcd, plan, |state| state.phase = ROLLING_BACK.into())?;
        let started = Instant::now();
        let revision = self.write_rules(&move |d| {
            rules::set_default(d, &service, &old)?;
            rules::set_weight(d, &service, &subset, 0)
        })?;
        let adopted = self.wait_adopted(revision, started);
        let result = match &adopted {
            Ok(time) => {
                self.say(&format!(
                    "[rollback] revision {revision} adopted by {} gateway(s) in {}",
                    plan.gateways.len(),
                    show_duration(*time)
                ));
                format!("{phase}: {why}")
            }
            Err(not) => {
                self.say(&format!("[rollback] revision {revision}: {not}"));
                format!("{phase}: {why}; {not}")
            }
        };
        let decision = Decision {
            step: "rollback".into(),
            action: format!("{} weight 0, default {}", plan.subset, state.baseline_default),
            started_ms: failed_ms,
            done_ms: now_ms(),
            revision: Some(revision),
            adopted_ms: adopted.as_ref().ok().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            result: result.clone(),
        };
        update_state(&self.etcd, plan, |state| {
            state.decisions.push(decision.clone());
            state.phase = phase.into();
            state.request = None;
            state.paused = false;
        })?;
        Ok(Ended {
            code: EXIT_ROLLED_BACK,
            message: format!("graylane: rollout of {}/{} {result}", plan.service, plan.subset),
        })
    }
}

/// The decisions as a table.
pub fn summary(state: &State) -> String {
    let mut rows = vec![["step", "action", "revision", "adopted in", "result"].map(String::from).to_vec()];
    for decision in &state.decisions {
        rows.push(vec![
            decision.step.clone(),
            decision.action.clone(),
            decision.revision.map_or_else(|| "-".into(), |r| r.to_string()),
            decision.adopted_ms.map_or_else(|| "-".into(), |ms| show_duration(Duration::from_millis(ms))),
            decision.result.clone(),
        ]);
    }
    format!("rollout of {}/{}: {}\n{}", state.service, state.subset, state.phase, crate::stats::table(&rows))
}

/// `graylane rollout status PLAN`.
pub fn status(plan: &Plan) -> Result<String, String> {
    let etcd = Etcd::new(plan.etcd.clone());
    let Some((state, _)) = read_state(&etcd, plan)? else {
        return Ok(format!("no rollout of service {} has started (no state at {})\n", plan.service, plan.state_key));
    };
    let mut text = summary(&state);
    let step = if in_progress(&state.phase) {
        format!("next step {}/{}{}", state.next_step + 1, plan.steps.len(), if state.paused { ", paused" } else { "" })
    } else {
        "ended".into()
    };
    text.push_str(&format!("{step}; baseline default {}\n", state.baseline_default));
    match etcd.get(&plan.lock_key)? {
        Some(entry) => text.push_str(&format!(
            "lock held by {} (lease {}s left)\n",
            String::from_utf8_lossy(&entry.value),
            etcd.time_to_live(entry.lease).unwrap_or(0)
        )),
        None => text.push_str("no rollout process holds the lock\n"),
    }
    match plan.rules.read() {
        Ok((document, token)) => text.push_str(&format!(
            "rules at {token}: default {}, {} weight {}\n",
            rules::default_of(&document, &plan.service).unwrap_or_default(),
            plan.subset,
            plan::show_weight(rules::weight_of(&document, &plan.service, &plan.subset).unwrap_or(0))
        )),
        Err(why) => text.push_str(&format!("rules: {why}\n")),
    }
    for gateway in &plan.gateways {
        match gateway.fetch(Duration::from_secs(2)) {
            Ok(snapshot) => {
                let source = snapshot.source();
                text.push_str(&format!(
                    "gateway {gateway}: version {}, fetches {}, failures {}, rejected {}\n",
                    source.version.map_or_else(|| "-".into(), |v| v.to_string()),
                    source.fetches,
                    source.failures,
                    source.rejected
                ));
            }
            Err(why) => text.push_str(&format!("gateway {gateway}: {why}\n")),
        }
    }
    Ok(text)
}

/// `graylane rollout pause|resume PLAN`: asks the running rollout.
pub fn set_paused(plan: &Plan, paused: bool) -> Result<String, String> {
    let etcd = Etcd::new(plan.etcd.clone());
    let state = update_state(&etcd, plan, |state| state.paused = paused)?;
    if state.phase != RUNNING {
        return Err(format!("the rollout of {} has ended ({})", plan.service, state.phase));
    }
    Ok(format!(
        "rollout of {}/{}: {}\n",
        plan.service,
        plan.subset,
        if paused { "paused (the clock stops; analysis goes on)" } else { "resumed" }
    ))
}

/// `graylane rollout abort PLAN`: rolls back now, or asks the running
/// rollout to and waits for it.
pub fn abort(plan: &Plan, out: &mut dyn Write) -> Result<Ended, (u8, String)> {
    let etcd = Etcd::new(plan.etcd.clone());
    let fail = |why: String| (crate::EXIT_INVALID, format!("graylane: abort {}: {why}", plan.service));
    let Some((state, _)) = read_state(&etcd, plan).map_err(fail)? else {
        return Err(fail(format!("no rollout has started (no state at {})", plan.state_key)));
    };
    if !in_progress(&state.phase) {
        return Err(fail(format!("the rollout has ended ({}); nothing to abort", state.phase)));
    }
    match Lock::acquire(&etcd, plan) {
        Ok(lock) => {
            let (document, _) = plan.rules.read().map_err(fail)?;
            let mut rollout = Rollout {
                plan,
                etcd: etcd.clone(),
                out,
                lock,
                candidate: rules::cluster_of(&document, &plan.service, &plan.subset).map_err(fail)?,
                baseline: rules::cluster_of(&document, &plan.service, &state.baseline_default).map_err(fail)?,
            };
            let ended = rollout.roll_back("aborted by request", now_ms(), "aborted").map_err(fail)?;
            Ok(ended)
        }
        Err((EXIT_BUSY, _)) => {
            update_state(&etcd, plan, |state| state.request = Some("abort".into())).map_err(fail)?;
            let _ = writeln!(out, "asked the running rollout to abort; waiting for its rollback");
            let deadline = Instant::now() + plan.adopt_timeout + plan.poll * 4 + Duration::from_secs(5);
            loop {
                let (state, _) = read_state(&etcd, plan).map_err(fail)?.unwrap_or_default();
                if !in_progress(&state.phase) {
                    return Ok(Ended {
                        code: EXIT_ROLLED_BACK,
                        message: format!("rollout of {}/{}: {}", plan.service, plan.subset, state.phase),
                    });
                }
                if Instant::now() > deadline {
                    return Err(fail("the running rollout has not rolled back yet; see graylane rollout status".into()));
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::analysis::judge;
    use super::plan::Analysis;
    use super::*;
    use crate::stats::Histogram;

    fn analysis() -> Analysis {
        Analysis {
            window: Duration::from_secs(10),
            min_requests: 20,
            max_error_rate: Some(0.05),
            max_error_rate_over_default: Some(0.01),
            latency_percentile: 99.0,
            max_latency_ms: Some(250.0),
            max_latency_over_default: Some(2.0),
        }
    }

    fn stats(requests: u64, errors: u64, slow: u64) -> ClusterStats {
        ClusterStats {
            requests,
            errors,
            latency: Histogram {
                buckets: vec![(5.0, requests - slow), (500.0, requests)],
            },
            ..ClusterStats::default()
        }
    }

    #[test]
    fn the_checks() {
        let healthy = judge(&analysis(), &stats(100, 1, 0), &stats(1000, 5, 0));
        assert!(healthy.enough && healthy.passed, "{healthy:?}");
        let failing = judge(&analysis(), &stats(100, 30, 0), &stats(1000, 5, 0));
        assert!(!failing.passed);
        assert!(failing.text.starts_with("error rate 30.00% over 5.00%, error rate 30.00% over the default's 0.50% + 1.00%"), "{}", failing.text);
        let slow = judge(&analysis(), &stats(100, 0, 50), &stats(1000, 0, 0));
        assert!(slow.text.contains("p99 latency ≤ 500 ms bucket, over 250 ms"), "{}", slow.text);
        assert!(slow.text.contains("over 2 × the default's 5 ms"), "{}", slow.text);
        let few = judge(&analysis(), &stats(10, 10, 0), &stats(1000, 0, 0));
        assert!(!few.enough && !few.passed);
        assert!(few.text.contains("not judged"));
    }

    #[test]
    fn the_summary_table() {
        let state = State {
            service: "b".into(),
            subset: "canary".into(),
            phase: "promoted".into(),
            decisions: vec![Decision {
                step: "1/2".into(),
                action: "weight 5%".into(),
                revision: Some(7),
                adopted_ms: Some(420),
                result: "ok".into(),
                ..Decision::default()
            }],
            ..State::default()
        };
        let table = summary(&state);
        assert!(table.starts_with("rollout of b/canary: promoted\n  step  action     revision  adopted in  result"), "{table}");
        assert!(table.contains("  1/2   weight 5%  7         420ms       ok\n"), "{table}");
    }
}
