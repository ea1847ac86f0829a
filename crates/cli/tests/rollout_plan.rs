//! `graylane rollout` and `graylane status` without gateways: plans refused
//! with their line and column, usage errors, an etcd that does not answer.
//! (With real etcd and Envoy gateways: `tests/rollout.rs` in graylane-e2e.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;

use common::graylane;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graylane-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_plan_is_refused_with_line_and_column() {
    let plan = write(
        "typo.yaml",
        "source: {etcd: 'http://127.0.0.1:2379', key: /rules}\nservice: b\nsubset: canary\n\
         gateways: ['http://127.0.0.1:9901']\nsteps:\n  - wieght: 5\n  - pause: soon\n",
    );
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let file = plan.display();
    assert!(
        run.stderr.contains(&format!("{file}:6:5: steps[0]: must be exactly one of: weight: PERCENT")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("{file}:6:5: steps[0].wieght: unknown field")), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("{file}:7:5: steps[1].pause: \"soon\" is not a duration")),
        "{}",
        run.stderr
    );
    let json = write("plan.json", "{\"service\": \"b\", \"subset\": 5}");
    let run = graylane(&["rollout", "status", json.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("plan.json:1:1: source: is required: {etcd: URL"), "{}", run.stderr);
    assert!(run.stderr.contains("plan.json:1:18: subset: must be a string, got a number"), "{}", run.stderr);
}

#[test]
fn usage_errors_and_an_etcd_that_does_not_answer() {
    let run = graylane(&["rollout", "pause"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("give the plan too: graylane rollout pause PLAN"), "{}", run.stderr);
    let run = graylane(&["rollout", "stop", "plan.yaml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("must be one of status, pause, resume, abort"), "{}", run.stderr);
    let run = graylane(&["rollout", "/nonexistent/plan.yaml"]);
    assert_eq!(run.code, 2);
    let port = closed_port();
    let plan = write(
        "down.yaml",
        &format!(
            "source: {{etcd: 'http://127.0.0.1:{port}', key: /rules}}\nservice: b\nsubset: canary\n\
             gateways: ['http://127.0.0.1:{port}']\nsteps: [{{weight: 5}}]\n"
        ),
    );
    let run = graylane(&["rollout", "status", plan.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!("graylane: rollout status: POST http://127.0.0.1:{port}/v3/kv/range: cannot connect")),
        "{}",
        run.stderr
    );
    let run = graylane(&["rollout", plan.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("/v3/lease/grant: cannot connect"), "{}", run.stderr);
    let run = graylane(&["status", "--admin", &format!("http://127.0.0.1:{port}"), "--window", "0"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(&format!("graylane: status: GET http://127.0.0.1:{port}/stats?histogram_buckets=cumulative: cannot connect")), "{}", run.stderr);
    let run = graylane(&["status"]);
    assert_eq!(run.code, 2);
    // A live document (with its version) is read for the weights; a file
    // that is not JSON or YAML is named.
    let live = write("live.json", "{\"version\": 7, \"services\": []}");
    let admin = format!("http://127.0.0.1:{port}");
    let run = graylane(&["status", "--admin", &admin, "--window", "0", "--rules", live.to_str().unwrap()]);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    let bad = write("bad.json", "{\"services\": [");
    let run = graylane(&["status", "--admin", &admin, "--rules", bad.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("bad.json: $: not valid JSON"), "{}", run.stderr);
}
