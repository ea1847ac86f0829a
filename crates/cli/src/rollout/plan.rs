//! A rollout plan: YAML or JSON, read with the walker that reads rule
//! documents, so that every refusal comes with its path, line and column
//! (and a misspelt field is refused, not ignored). The format is described
//! in the README, "Progressive delivery: graylane rollout".

use std::path::{Path as FilePath, PathBuf};
use std::time::Duration;

use graylane_core::json::Node;
use graylane_core::read::{ConfigErrors, Object, Path};

use crate::document::{self, Format, LoadError};
use crate::http::Url;
use super::etcd::Etcd;
use super::store::Store;
use crate::stats::{parse_duration, Endpoint};

/// Where the plan says the rules are.
enum Rules {
    Key(String),
    Http(Url),
}

/// What one step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Set the subset's weight (in hundredths of a percent, 0–10,000).
    Weight(u32),
    /// Hold the weight this long, watching (with the plan's analysis, if any).
    Pause(Duration),
    /// Watch this long with the analysis; the step passes only when the
    /// checks pass on at least `min_requests`.
    Analysis(Duration),
    /// Blue-green: the subset becomes the live colour (the default).
    Switch,
}

/// What happens after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The subset becomes the default; its weight goes back to 0.
    Promote,
    /// The rules stay as the last step left them.
    Keep,
    /// The subset's weight is set to this (hundredths) and stays.
    StopAt(u32),
}

/// The checks run on the gateways' statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub window: Duration,
    /// Below this many requests to the subset in a window, nothing is judged.
    pub min_requests: u64,
    /// Fractions (the plan says percent).
    pub max_error_rate: Option<f64>,
    pub max_error_rate_over_default: Option<f64>,
    pub latency_percentile: f64,
    pub max_latency_ms: Option<f64>,
    pub max_latency_over_default: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    /// etcd: the rollout's state and lock (and the rules, with `key`).
    pub etcd: Url,
    /// The live rules the gateways' `source` reads.
    pub rules: Store,
    /// Where the rollout's state is kept, and its lock.
    pub state_key: String,
    pub lock_key: String,
    pub service: String,
    pub subset: String,
    pub gateways: Vec<Endpoint>,
    pub poll: Duration,
    pub adopt_timeout: Duration,
    pub lock_ttl: u64,
    pub analysis: Option<Analysis>,
    pub steps: Vec<Step>,
    pub finish: Finish,
    /// Identifies the plan's content, to tell a resume from another plan.
    pub fingerprint: String,
}

/// Reads, parses and checks a plan.
pub fn load(file: &FilePath) -> Result<Plan, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|error| LoadError::Unreadable {
        file: file.to_path_buf(),
        reason: error.to_string(),
    })?;
    let refused = |refusals| LoadError::Refused {
        file: file.to_path_buf(),
        refusals,
    };
    let format = Format::detect(file, &text);
    let node = document::parse(format, &text).map_err(|refusal| refused(vec![refusal]))?;
    read(&node, file).map_err(|errors| {
        refused(
            errors
                .0
                .iter()
                .map(|error| document::locate(&node, &text, error))
                .collect(),
        )
    })
}

fn duration(object: &mut Object<'_>, name: &'static str, default: Duration, errors: &mut ConfigErrors) -> Duration {
    let Some((node, path)) = object.get(name) else {
        return default;
    };
    match duration_of(node) {
        Ok(duration) => duration,
        Err(why) => {
            errors.push(&path, node, why);
            default
        }
    }
}

fn duration_of(node: &Node) -> Result<Duration, String> {
    let text = match (node.as_str(), node.as_number()) {
        (Some(text), _) => text.to_string(),
        (None, Some(number)) => number.to_string(),
        _ => return Err(format!("must be a duration such as 30s or 2m, got {}", node.kind())),
    };
    parse_duration(&text)
}

fn number(object: &mut Object<'_>, name: &'static str, (min, max): (f64, f64), errors: &mut ConfigErrors) -> Option<f64> {
    let (node, path) = object.get(name)?;
    match node.as_number().and_then(|number| number.as_f64()) {
        Some(value) if (min..=max).contains(&value) => Some(value),
        _ => {
            errors.push(&path, node, format!("must be a number from {min} to {max}, got {}", node.to_json()));
            None
        }
    }
}

/// A weight in hundredths of a percent, as the rules allow it.
fn weight_of(node: &Node) -> Result<u32, String> {
    let value = node
        .as_number()
        .and_then(|number| number.as_f64())
        .ok_or_else(|| format!("must be a percentage, got {}", node.kind()))?;
    let hundredths = (value * 100.0).round();
    if !(0.0..=100.0).contains(&value) || (hundredths - value * 100.0).abs() > 1e-6 {
        return Err(format!("must be a percentage from 0 to 100 with two decimals at most, got {}", node.to_json()));
    }
    Ok(hundredths as u32)
}

fn url(object: &mut Object<'_>, name: &'static str, errors: &mut ConfigErrors) -> Option<Url> {
    let (text, path) = object.non_empty_string(name, true, errors)?;
    match Url::parse(&text) {
        Ok(url) => Some(url),
        Err(why) => {
            if let Some((node, _)) = object.get(name) {
                errors.push(&path, node, why);
            }
            None
        }
    }
}

/// Checks the plan tree; every refusal at once.
pub fn read(node: &Node, file: &FilePath) -> Result<Plan, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let root_path = Path::root();
    let Some(mut root) = Object::new(node, &root_path, &mut errors) else {
        return Err(errors);
    };
    // `key` or `http`, and what the state key defaults to.
    let (etcd, rules) = match root.get("source") {
        Some((source, path)) => match Object::new(source, &path, &mut errors) {
            Some(mut source) => {
                let etcd = url(&mut source, "etcd", &mut errors);
                let rules = match (source.has("key"), source.has("http")) {
                    (true, false) => source
                        .non_empty_string("key", true, &mut errors)
                        .map(|(key, _)| (Rules::Key(key.clone()), format!("{key}.rollout"))),
                    (false, true) => url(&mut source, "http", &mut errors)
                        .map(|url| (Rules::Http(url), "/graylane/rollout".to_string())),
                    _ => {
                        errors.push(&path, source.node(), "must have one of key: ETCD-KEY (the rules in etcd), http: URL (a rules endpoint taking PUT with If-Match)");
                        source.get("key");
                        source.get("http");
                        None
                    }
                };
                source.finish(&[], &mut errors);
                (etcd, rules)
            }
            None => (None, None),
        },
        None => {
            root.missing("source", &mut errors, Some(": {etcd: URL of etcd's JSON gateway, key: the rules key the gateways read}".into()));
            (None, None)
        }
    };
    let service = root.non_empty_string("service", true, &mut errors).map(|(s, _)| s);
    let subset = root.non_empty_string("subset", true, &mut errors).map(|(s, _)| s);
    let mut gateways = Vec::new();
    match root.array("gateways", &mut errors) {
        Some((items, path)) => {
            if items.is_empty() {
                if let Some((node, _)) = root.get("gateways") {
                    errors.push(&path, node, "must name at least one gateway's admin URL");
                }
            }
            for (index, item) in items.iter().enumerate() {
                if let Some(gateway) = read_gateway(item, &path.index(index), &mut errors) {
                    gateways.push(gateway);
                }
            }
        }
        None if !root.has("gateways") => root.missing("gateways", &mut errors, Some(": the admin URLs of the gateways to watch".into())),
        None => {}
    }
    let poll = duration(&mut root, "poll", Duration::from_secs(1), &mut errors);
    let adopt_timeout = duration(&mut root, "adopt_timeout", Duration::from_secs(30), &mut errors);
    let lock_ttl = duration(&mut root, "lock_ttl", Duration::from_secs(15), &mut errors).as_secs().max(2);
    let analysis = root.get("analysis").and_then(|(node, path)| read_analysis(node, &path, &mut errors));
    let mut steps = Vec::new();
    match root.array("steps", &mut errors) {
        Some((items, path)) => {
            for (index, item) in items.iter().enumerate() {
                if let Some(step) = read_step(item, &path.index(index), analysis.as_ref(), &mut errors) {
                    steps.push(step);
                }
            }
        }
        None if !root.has("steps") => root.missing("steps", &mut errors, Some(": a list of weight, pause, analysis and switch steps".into())),
        None => {}
    }
    let finish = match root.get("finish") {
        None => Finish::Promote,
        Some((node, path)) => match (node.as_str(), node.get("stop_at")) {
            (Some("promote"), _) => Finish::Promote,
            (Some("keep"), _) => Finish::Keep,
            (None, Some(weight)) if node.as_object().is_some_and(|m| m.len() == 1) => {
                match weight_of(weight) {
                    Ok(weight) => Finish::StopAt(weight),
                    Err(why) => {
                        errors.push(&path.key("stop_at"), weight, why);
                        Finish::Keep
                    }
                }
            }
            _ => {
                errors.push(&path, node, "must be promote, keep or {stop_at: WEIGHT}");
                Finish::Keep
            }
        },
    };
    let state_key = root.non_empty_string("state_key", false, &mut errors).map(|(k, _)| k);
    root.finish(&[], &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(etcd), Some((rules, state_base)), Some(service), Some(subset)) = (etcd, rules, service, subset) else {
        return Err(errors);
    };
    let state_key = state_key.unwrap_or_else(|| format!("{state_base}.{service}"));
    let rules = match rules {
        Rules::Key(key) => Store::Etcd {
            etcd: Etcd::new(etcd.clone()),
            key,
        },
        Rules::Http(url) => Store::Http { url },
    };
    Ok(Plan {
        file: file.to_path_buf(),
        etcd,
        lock_key: format!("{state_key}.lock"),
        state_key,
        rules,
        service,
        subset,
        gateways,
        poll,
        adopt_timeout,
        lock_ttl,
        analysis,
        steps,
        finish,
        fingerprint: format!("{:016x}", fnv1a(node.to_json().as_bytes())),
    })
}

/// `"http://host:port"` (the admin interface), `{admin: URL}` or
/// `{prometheus: URL}`.
fn read_gateway(node: &Node, path: &Path, errors: &mut ConfigErrors) -> Option<Endpoint> {
    if let Some(text) = node.as_str() {
        return Url::parse(text)
            .map(Endpoint::Admin)
            .map_err(|why| errors.push(path, node, why))
            .ok();
    }
    if node.as_object().is_none() {
        errors.push(path, node, graylane_core::read::wrong_type("an admin URL or {admin: URL} or {prometheus: URL}", node));
        return None;
    }
    let mut object = Object::new(node, path, errors)?;
    let given = (object.has("admin"), object.has("prometheus"));
    let endpoint = match given {
        (true, false) => url(&mut object, "admin", errors).map(Endpoint::Admin),
        (false, true) => url(&mut object, "prometheus", errors).map(Endpoint::Prometheus),
        _ => {
            errors.push(path, node, "must have one of admin: URL, prometheus: URL");
            object.get("admin");
            object.get("prometheus");
            None
        }
    };
    object.finish(&[], errors);
    endpoint
}

fn read_analysis(node: &Node, path: &Path, errors: &mut ConfigErrors) -> Option<Analysis> {
    let mut object = Object::new(node, path, errors)?;
    let analysis = Analysis {
        window: duration(&mut object, "window", Duration::from_secs(30), errors),
        min_requests: object.integer("min_requests", (1, 1_000_000_000), 20, errors),
        max_error_rate: number(&mut object, "max_error_rate", (0.0, 100.0), errors).map(|p| p / 100.0),
        max_error_rate_over_default: number(&mut object, "max_error_rate_over_default", (0.0, 100.0), errors)
            .map(|p| p / 100.0),
        latency_percentile: number(&mut object, "latency_percentile", (1.0, 100.0), errors).unwrap_or(99.0),
        max_latency_ms: number(&mut object, "max_latency_ms", (0.0, 3_600_000.0), errors),
        max_latency_over_default: number(&mut object, "max_latency_over_default", (1.0, 1000.0), errors),
    };
    if analysis.max_error_rate.is_none()
        && analysis.max_error_rate_over_default.is_none()
        && analysis.max_latency_ms.is_none()
        && analysis.max_latency_over_default.is_none()
    {
        errors.push(path, node, "sets no check: give max_error_rate, max_error_rate_over_default, max_latency_ms or max_latency_over_default");
    }
    object.finish(&[], errors);
    Some(analysis)
}

fn read_step(node: &Node, path: &Path, analysis: Option<&Analysis>, errors: &mut ConfigErrors) -> Option<Step> {
    let mut object = Object::new(node, path, errors)?;
    let kinds = ["weight", "pause", "analysis", "switch"];
    let given: Vec<&str> = kinds.iter().copied().filter(|kind| object.has(kind)).collect();
    if given.len() != 1 {
        errors.push(path, node, "must be exactly one of: weight: PERCENT, pause: DURATION, analysis: DURATION, switch: true");
        for kind in kinds {
            object.get(kind);
        }
        object.finish(&[], errors);
        return None;
    }
    let step = if let Some((value, at)) = object.get("weight") {
        weight_of(value).map(Step::Weight).map_err(|why| errors.push(&at, value, why)).ok()
    } else if let Some((value, at)) = object.get("pause") {
        duration_of(value).map(Step::Pause).map_err(|why| errors.push(&at, value, why)).ok()
    } else if let Some((value, at)) = object.get("analysis") {
        if analysis.is_none() {
            errors.push(&at, value, "an analysis step needs the plan's analysis section (the checks to run)");
        }
        let window = analysis.map_or(Duration::from_secs(30), |a| a.window);
        match value.as_bool() {
            Some(true) => Some(Step::Analysis(window)),
            _ => duration_of(value).map(Step::Analysis).map_err(|why| errors.push(&at, value, why)).ok(),
        }
    } else if let Some((value, at)) = object.get("switch") {
        if value.as_bool() != Some(true) {
            errors.push(&at, value, "must be true");
        }
        Some(Step::Switch)
    } else {
        None
    };
    object.finish(&[], errors);
    step
}

/// FNV-1a, 64 bits: stable across builds, unlike the standard hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A weight in hundredths as the rules write it: `5`, `12.5`, `0.05`.
pub fn weight_json(hundredths: u32) -> serde_json::Value {
    if hundredths % 100 == 0 {
        serde_json::json!(hundredths / 100)
    } else {
        serde_json::json!(f64::from(hundredths) / 100.0)
    }
}

/// `5%`, `12.5%`.
pub fn show_weight(hundredths: u32) -> String {
    format!("{}%", weight_json(hundredths))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, String> {
        let node = crate::yaml::parse(text).map_err(|e| e.message)?;
        read(&node, FilePath::new("plan.yaml")).map_err(|errors| errors.to_string())
    }

    const GOOD: &str = "source: {etcd: 'http://127.0.0.1:2379', key: /graylane/rules}\n\
        service: b\nsubset: canary\ngateways: ['http://127.0.0.1:9901', {prometheus: 'http://127.0.0.1:9902/metrics'}]\n\
        analysis: {window: 10s, min_requests: 20, max_error_rate: 5, max_latency_ms: 500}\n\
        steps:\n  - weight: 5\n  - pause: 2m\n  - analysis: true\n  - weight: 12.5\n  - analysis: 30s\n";

    #[test]
    fn a_plan_reads() {
        let plan = plan(GOOD).unwrap();
        assert_eq!(plan.state_key, "/graylane/rules.rollout.b");
        assert_eq!(plan.rules.to_string(), "/graylane/rules in etcd http://127.0.0.1:2379");
        assert_eq!(plan.lock_key, "/graylane/rules.rollout.b.lock");
        assert_eq!(
            plan.steps,
            vec![
                Step::Weight(500),
                Step::Pause(Duration::from_secs(120)),
                Step::Analysis(Duration::from_secs(10)),
                Step::Weight(1250),
                Step::Analysis(Duration::from_secs(30)),
            ]
        );
        assert_eq!(plan.finish, Finish::Promote);
        assert_eq!(plan.gateways[1].to_string(), "http://127.0.0.1:9902/metrics (Prometheus)");
        let analysis = plan.analysis.unwrap();
        assert_eq!(analysis.max_error_rate, Some(0.05));
        assert_eq!(analysis.latency_percentile, 99.0);
        assert_eq!(show_weight(1250), "12.5%");
        assert_eq!(weight_json(500), serde_json::json!(5));
    }

    #[test]
    fn rules_behind_an_http_endpoint() {
        let plan = plan(&GOOD.replace("key: /graylane/rules", "http: 'http://rules:8080/b.json'")).unwrap();
        assert_eq!(plan.rules.to_string(), "http://rules:8080/b.json");
        assert_eq!(plan.state_key, "/graylane/rollout.b");
        let both = plan_error(&GOOD.replace("key: /graylane/rules", "key: /k, http: 'http://r'"));
        assert!(both.contains("source: must have one of key: ETCD-KEY"), "{both}");
    }

    fn plan_error(text: &str) -> String {
        plan(text).err().unwrap_or_default()
    }

    #[test]
    fn every_mistake_is_named() {
        let text = "source: {etcd: 'https://x', key: ''}\nservice: b\ngateways: [{admin: 'http://a', prometheus: 'http://b'}, 7]\nanalysis: {window: 5 days}\n\
                    steps:\n  - weight: 101\n  - {pause: 1s, weight: 5}\n  - wieght: 5\nfinish: {stop_at: 0.001}\n";
        let errors = plan(text).unwrap_err();
        for expected in [
            "source.etcd: \"https://x\": only http:// URLs are supported",
            "source.key: must not be empty",
            "subset: is required",
            "gateways[0]: must have one of admin: URL, prometheus: URL",
            "gateways[1]: must be an admin URL or {admin: URL} or {prometheus: URL}, got a number",
            "analysis.window: \"5 days\"",
            "analysis: sets no check",
            "steps[0].weight: must be a percentage from 0 to 100",
            "steps[1]: must be exactly one of",
            "steps[2]: must be exactly one of",
            "finish.stop_at: must be a percentage",
        ] {
            assert!(errors.contains(expected), "{expected:?} not in {errors}");
        }
    }
}
