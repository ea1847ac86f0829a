//! What the command tests share: the repository root, and the command run
//! through its own entry point in this process (`tests/binary.rs` checks that
//! the built binary answers the same).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `graylane ARGS`, from the repository root as a user would run it.
pub fn graylane(args: &[&str]) -> Run {
    static AT_ROOT: OnceLock<()> = OnceLock::new();
    // Every test wants the same directory: set once, never changed.
    AT_ROOT.get_or_init(|| std::env::set_current_dir(repo_root()).unwrap());
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let argv = std::iter::once("graylane").chain(args.iter().copied());
    let code = graylane_cli::run_with(argv, &mut stdout, &mut stderr);
    Run {
        code: i32::from(code),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

/// Writes `text` to `name` in this test binary's scratch directory `dir`
/// and returns the path.
pub fn scratch_in(dir: &str, name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
