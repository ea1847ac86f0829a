//! The built `graylane` binary answers as the command's entry point does
//! in-process (which the other command tests use), with the same exit codes.
//! Needs the binary: built by `cargo test` at the root (which switches on the
//! `bin` feature), or `cargo test -p graylane-cli --features bin`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{graylane, repo_root};

#[test]
fn the_binary_answers_as_the_entry_point_does() {
    let bad = repo_root().join("target/tmp/binary-bad.json");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, r#"{"services":[{"name":"b","default":"x","subsets":[]}]}"#).unwrap();
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["check", "filters/examples/canary.json"],
        vec!["check", bad],
        vec!["explain", "filters/examples/canary.json", "--host", "b.example.com", "-H", "userid: 123"],
        vec!["simulate", "filters/examples/two-services.yaml", "--users", "50"],
        vec!["check"],
        vec!["--version"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_graylane"))
            .args(&args)
            .current_dir(repo_root())
            .output()
            .unwrap();
        let run = graylane(&args);
        assert_eq!(output.status.code(), Some(run.code), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), run.stdout, "{args:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), run.stderr, "{args:?}");
    }
}
