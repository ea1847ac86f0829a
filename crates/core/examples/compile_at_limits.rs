//! How long one worker spends compiling documents at the default limits:
//! the figure the README gives for "a new document holds a worker up for".
//! Native; under V8 expect about two to three times as long.
//!
//! cargo run --release -p graylane-core --example compile_at_limits

use std::time::Instant;

use graylane_core::config::compile;

fn service(n: usize, subsets: usize, entries_per_subset: usize, regex: Option<&str>) -> String {
    let subsets: Vec<String> = (0..subsets)
        .map(|s| {
            let entries: Vec<String> = (0..entries_per_subset)
                .map(|e| match regex {
                    Some(pattern) => format!(
                        r#"{{"headers":[{{"name":"x-user","regex":"{pattern}{n}x{s}x{e}"}}]}}"#
                    ),
                    None => format!(r#"{{"headers":[{{"name":"x-user","exact":"user-{n}-{s}-{e}"}}]}}"#),
                })
                .collect();
            format!(
                r#"{{"name":"s{s}","cluster":"svc{n}-s{s}","weight":{},"match":[{}]}}"#,
                if s == 0 { 0 } else { 1 },
                entries.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"name":"svc{n}","hosts":["svc{n}.example.com"],"default":"s0","subsets":[{}]}}"#,
        subsets.join(",")
    )
}

fn document(services: usize, subsets: usize, entries: usize, regex: Option<&str>) -> String {
    let list: Vec<String> = (0..services)
        .map(|n| service(n, subsets, entries, regex))
        .collect();
    format!(r#"{{"services":[{}]}}"#, list.join(","))
}

fn measure(what: &str, text: &str) {
    let runs = 5;
    let mut best = f64::MAX;
    let mut outcome = String::new();
    for _ in 0..runs {
        let started = Instant::now();
        let result = compile(text.as_bytes());
        best = best.min(started.elapsed().as_secs_f64());
        outcome = match result {
            Ok(rules) => format!("compiled, {} services", rules.services.len()),
            Err(errors) => format!(
                "refused: {}",
                errors.0.first().map(|e| e.to_string()).unwrap_or_default()
            ),
        };
    }
    println!(
        "{what:<58} {:>8} bytes {:>9.1} ms  {outcome}",
        text.len(),
        best * 1e3
    );
}

fn main() {
    // 1,000 services of 10 subsets, one exact entry each: 10,000 entries.
    measure("1,000 services x 10 subsets x 1 exact entry", &document(1_000, 10, 1, None));
    // The same shape with a light regex per entry (1,000 regexes in all).
    measure("100 services x 10 subsets x 1 regex ^u-..$", &document(100, 10, 1, Some("^u-")));
    // The regex bomb: stops at the memory budget (64 MiB).
    measure(
        "1 service x 2 subsets x 600 regexes \\w{20}@c..",
        &document(1, 2, 600, Some("\\\\w{20}@c")),
    );
}
