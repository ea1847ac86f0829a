//! `graylane image` through the command's entry point: the offline digest,
//! the layout, and the errors (a file that is not a .wasm, an unreadable
//! file, a registry that does not answer). Pushing to a real registry is
//! tested in tests/registry.rs (package graylane-e2e).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{graylane, repo_root};

/// A small valid module, and its image's digest (as frozen in src/image.rs).
const TINY: &[u8] = b"\0asm\x01\0\0\0\0\x05\x04test";
const TINY_DIGEST: &str = "sha256:a0185db87bb6646dff8b611945b559125b64c8168ee8648c4b9c7ad58c9745f1";

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = repo_root().join("target/tmp/image-cli").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn digest_and_build_print_the_same_digest_and_the_layout_names_it() {
    let dir = scratch("build");
    let wasm = dir.join("plugin.wasm");
    std::fs::write(&wasm, TINY).unwrap();
    let wasm = wasm.to_str().unwrap();
    let digest = graylane(&["image", "digest", "--wasm", wasm]);
    assert_eq!((digest.code, digest.stdout.as_str(), digest.stderr.as_str()), (0, &*format!("{TINY_DIGEST}\n"), ""));
    let layout = dir.join("layout");
    let build = graylane(&["image", "build", "--wasm", wasm, "-o", layout.to_str().unwrap(), "--tag", "v9"]);
    assert_eq!(build.code, 0, "{}", build.stderr);
    assert_eq!(build.stdout, digest.stdout);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], TINY_DIGEST);
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v9");
    let hex = TINY_DIGEST.trim_start_matches("sha256:");
    assert!(layout.join("blobs/sha256").join(hex).is_file());
}

#[test]
fn bad_inputs_are_refused_with_what_and_where() {
    let dir = scratch("bad");
    let script = dir.join("graylane");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let run = graylane(&["image", "digest", "--wasm", script.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(&format!("{}: not a WebAssembly module", script.display())), "{}", run.stderr);
    assert!(run.stderr.contains("-p graylane"), "{}", run.stderr);

    let missing = dir.join("missing.wasm");
    let run = graylane(&["image", "build", "--wasm", missing.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(&format!("{}: cannot read", missing.display())), "{}", run.stderr);

    let wasm = dir.join("plugin.wasm");
    std::fs::write(&wasm, TINY).unwrap();
    // Nothing listens on port 1 of loopback.
    let run = graylane(&["image", "push", "--wasm", wasm.to_str().unwrap(), "127.0.0.1:1/graylane/graylane:1"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("127.0.0.1:1/graylane/graylane:1: push failed"), "{}", run.stderr);

    let run = graylane(&["image", "push", "--wasm", wasm.to_str().unwrap(), "--username", "u", "r/x"]);
    assert_eq!(run.code, 2, "--username without --password is a usage error");
}
