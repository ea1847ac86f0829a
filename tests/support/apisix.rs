//! Test harness for APISIX's wasm host: nginx with api7's wasm-nginx-module
//! (built by `scripts/apisix-host/build.sh`), the plugin loaded and driven
//! the way APISIX's `wasm` plugin does it (see
//! `scripts/apisix-host/nginx.conf.template`), in front of the echo backends
//! of `tests/support/mod.rs`.
//!
//! - [`host_prefix`]: runs the build script once per test binary (it skips a
//!   finished build) and returns the prefix. A build that fails panics with
//!   the script's output: the tests fail, they never skip.
//! - [`Route`]: one APISIX route running graylane: the plugin's `conf` string
//!   (passed to `on_configure` byte for byte), the phase, and the cluster
//!   header the upstream is picked by. Each route gets its own port.
//! - [`Nginx`]: the host on free loopback ports, `worker_processes` as asked,
//!   ready when every worker has loaded the plugin; stopped (master and
//!   workers) on drop. Its files stay in `target/tmp/apisix-<label>-<pid>-<n>/`.
//! - [`Nginx::pinned_clients`]: one keep-alive [`Client`] per worker (each
//!   response says which worker answered in `x-nginx-pid`), so that a test
//!   can look at every worker's state.
//! - [`ApisixGateway`]: a document, an echo backend per cluster it names plus
//!   `fallback`, and the host in front.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    clusters_named_in, repo_root, wasm_path, Client, EchoBackend, Request, Response,
    FALLBACK_CLUSTER,
};

/// How long nginx may take to start: each worker compiles the plugin with
/// wasmtime (about a second on an idle machine; CI machines are busy).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The prefix holding the built host (`GRAYLANE_APISIX_HOST`, else
/// `~/.cache/graylane/apisix-host`), built on first use by
/// `scripts/apisix-host/build.sh`.
pub fn host_prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let script = repo_root().join("scripts/apisix-host/build.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "building APISIX's wasm host failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        let prefix = std::env::var_os("GRAYLANE_APISIX_HOST")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
                    .join(".cache/graylane/apisix-host")
            });
        let module = prefix.join("modules/ngx_http_wasm_module.so");
        assert!(
            module.is_file(),
            "the build script succeeded but left no {}:\n{stdout}",
            module.display()
        );
        prefix
    })
}

/// The nginx binary: Debian's (the module is built against it).
pub fn nginx_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("NGINX_BIN").unwrap_or_else(|| "/usr/sbin/nginx".into()))
}

/// Where APISIX runs the plugin's request-headers callback
/// (`http_request_phase` in `config.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Rewrite,
    Access,
}

/// One route that runs graylane.
#[derive(Debug, Clone)]
pub struct Route {
    /// The plugin's `conf`, handed to `on_configure` as it is.
    pub conf: String,
    pub phase: Phase,
    /// The header whose value names the upstream after the plugin ran.
    pub cluster_header: String,
}

impl Route {
    /// A route for `conf` in the rewrite phase (as `filters/apisix/config.yaml`
    /// declares the plugin), the cluster header read from `conf` when it is
    /// JSON and names one.
    pub fn new(conf: impl Into<String>) -> Route {
        let conf = conf.into();
        let cluster_header = serde_json::from_str::<Value>(&conf)
            .ok()
            .and_then(|document| document["cluster_header"].as_str().map(str::to_string))
            .unwrap_or_else(|| "x-graylane-cluster".to_string());
        Route {
            conf,
            phase: Phase::Rewrite,
            cluster_header,
        }
    }

    pub fn phase(mut self, phase: Phase) -> Route {
        self.phase = phase;
        self
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = repo_root().join("target").join("tmp").join(format!(
        "apisix-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("tmp")).unwrap();
    dir
}

/// nginx with the wasm host and graylane, on loopback.
pub struct Nginx {
    child: Child,
    pub dir: PathBuf,
    /// One port per route, in the order the routes were given.
    pub ports: Vec<u16>,
    pub workers: usize,
}

impl Nginx {
    /// Starts nginx with `workers` worker processes, one listening port per
    /// route, and `upstreams` (cluster name → address; `fallback` among them).
    pub fn start(
        label: &str,
        routes: &[Route],
        upstreams: &BTreeMap<String, SocketAddr>,
        workers: usize,
    ) -> Nginx {
        let prefix = host_prefix();
        let wasm = wasm_path();
        // Free ports are picked before nginx binds them: another test may take
        // one in between, so a start that failed to bind is tried again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let dir = scratch_dir(label);
            let ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
            let mut route_table = serde_json::Map::new();
            let mut listen = String::new();
            for (index, (route, port)) in routes.iter().zip(&ports).enumerate() {
                let conf_file = dir.join(format!("route-{index}.conf"));
                fs::write(&conf_file, &route.conf).unwrap();
                route_table.insert(
                    port.to_string(),
                    json!({
                        "id": format!("route-{index}"),
                        "conf_file": conf_file,
                        "phase": match route.phase { Phase::Rewrite => "rewrite", Phase::Access => "access" },
                        "cluster_header": route.cluster_header,
                    }),
                );
                listen.push_str(&format!("        listen 127.0.0.1:{port} reuseport;\n"));
            }
            let upstream_table: serde_json::Map<String, Value> = upstreams
                .iter()
                .map(|(name, addr)| (name.clone(), json!(addr.to_string())))
                .collect();
            fs::write(
                dir.join("routes.json"),
                serde_json::to_string_pretty(&json!({
                    "wasm": wasm,
                    "routes": route_table,
                    "upstreams": upstream_table,
                }))
                .unwrap(),
            )
            .unwrap();
            let template =
                fs::read_to_string(repo_root().join("scripts/apisix-host/nginx.conf.template"))
                    .unwrap();
            let conf = template
                .replace("@HOST@", &prefix.display().to_string())
                .replace("@DIR@", &dir.display().to_string())
                .replace("@WORKERS@", &workers.to_string())
                .replace("@LISTEN@\n", &listen);
            for placeholder in ["@HOST@", "@DIR@", "@WORKERS@", "@LISTEN@"] {
                assert!(
                    !conf.contains(placeholder),
                    "{placeholder} left in the nginx conf"
                );
            }
            fs::write(dir.join("nginx.conf"), conf).unwrap();
            let out = fs::File::create(dir.join("nginx.out")).unwrap();
            let child = Command::new(nginx_bin())
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot run {}: {error}", nginx_bin().display()));
            let mut nginx = Nginx {
                child,
                dir,
                ports,
                workers,
            };
            match nginx.wait_ready() {
                Ok(()) => return nginx,
                Err(why) if why.contains("Address already in use") && attempts < 4 => continue,
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Waits until the master listens and every worker has loaded the plugin.
    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!(
                    "nginx exited ({status}) before it was ready; its output:\n{}\nerror.log:\n{}",
                    fs::read_to_string(self.dir.join("nginx.out")).unwrap_or_default(),
                    self.log()
                ));
            }
            let loaded = self.loaded_workers();
            // The master binds the ports before it starts the workers.
            if loaded.len() >= self.workers
                && self
                    .ports
                    .iter()
                    .all(|port| TcpStream::connect(("127.0.0.1", *port)).is_ok())
            {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!(
                    "nginx not ready after {STARTUP_TIMEOUT:?} ({} of {} workers loaded the plugin); error.log:\n{}",
                    loaded.len(),
                    self.workers,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Workers that logged the plugin loaded.
    fn loaded_workers(&self) -> BTreeSet<u32> {
        self.log()
            .lines()
            .filter_map(|line| {
                let rest = line.split("apisix-host: worker ").nth(1)?;
                let (pid, tail) = rest.split_once(' ')?;
                tail.starts_with("loaded").then(|| pid.parse().ok())?
            })
            .collect()
    }

    /// The worker pids (those that loaded the plugin).
    pub fn worker_pids(&self) -> BTreeSet<u32> {
        self.loaded_workers()
    }

    pub fn addr(&self, route: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[route]))
    }

    pub fn client(&self, route: usize) -> Client {
        Client::connect(self.addr(route)).expect("cannot connect to nginx")
    }

    /// nginx's error log (where the plugin's log lines go).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// Lines at level error or above (`[error]`, `[crit]`, `[alert]`, `[emerg]`).
    pub fn errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| {
                ["[error]", "[crit]", "[alert]", "[emerg]"]
                    .iter()
                    .any(|level| line.contains(level))
            })
            .map(str::to_string)
            .collect()
    }

    /// Panics, listing them, when anything was logged at error level or above.
    pub fn assert_no_errors(&self) {
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "nginx logged errors ({}):\n{}",
            self.log_path().display(),
            errors.join("\n")
        );
    }

    /// Log lines containing `needle` written by worker `pid`.
    pub fn worker_log_count(&self, pid: u32, needle: &str) -> usize {
        let tag = format!(" {pid}#");
        self.log()
            .lines()
            .filter(|line| line.contains(&tag) && line.contains(needle))
            .count()
    }

    /// One keep-alive client per worker of route `route`'s port: new
    /// connections are opened (the kernel spreads them over the workers, the
    /// port being `reuseport`) until each worker has one. The probe request
    /// goes to `/_apisix_host/pid`, which nginx answers itself, so the plugin
    /// sees none of it.
    pub fn pinned_clients(&self, route: usize) -> BTreeMap<u32, Client> {
        let started = Instant::now();
        let mut pinned = BTreeMap::new();
        while pinned.len() < self.workers {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "connections reached only workers {:?} of {:?}",
                pinned.keys().collect::<Vec<_>>(),
                self.worker_pids()
            );
            let mut client = self.client(route);
            let response = client.send(&Request::get("/_apisix_host/pid"));
            let pid = worker_of(&response);
            pinned.entry(pid).or_insert(client);
        }
        pinned
    }

    fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// The pids whose parent is the master.
    fn children(&self) -> Vec<u32> {
        let master = self.master_pid();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        let after = stat.rsplit_once(')')?.1;
                        after.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(master)
            })
            .collect()
    }
}

/// The worker that answered (`x-nginx-pid`).
pub fn worker_of(response: &Response) -> u32 {
    response
        .header("x-nginx-pid")
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no x-nginx-pid in the response: status {}, {:?}",
                response.status,
                response.text()
            )
        })
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers = self.children();
        // TERM: fast shutdown; the master stops its workers and exits.
        signal(self.master_pid(), "TERM");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for worker in workers {
            if Path::new(&format!("/proc/{worker}")).exists() {
                signal(worker, "KILL");
            }
        }
    }
}

/// One plugin document behind the host: an echo backend for every cluster it
/// names, one for `fallback`, and nginx with a single route.
pub struct ApisixGateway {
    pub nginx: Nginx,
    pub backends: BTreeMap<String, EchoBackend>,
}

impl ApisixGateway {
    /// Two workers, the route in the rewrite phase.
    pub fn start(label: &str, document: &Value) -> ApisixGateway {
        ApisixGateway::start_routes(label, &[Route::new(document.to_string())], 2)
    }

    /// Several routes (one port each) over the union of their clusters.
    pub fn start_routes(label: &str, routes: &[Route], workers: usize) -> ApisixGateway {
        ApisixGateway::start_with_clusters(label, routes, workers, &[])
    }

    /// As [`ApisixGateway::start_routes`], with backends for `extra` clusters
    /// too (those that fetched rules name).
    pub fn start_with_clusters(
        label: &str,
        routes: &[Route],
        workers: usize,
        extra: &[&str],
    ) -> ApisixGateway {
        let mut names = vec![FALLBACK_CLUSTER.to_string()];
        names.extend(extra.iter().map(|name| name.to_string()));
        for route in routes {
            if let Ok(document) = serde_json::from_str::<Value>(&route.conf) {
                names.extend(clusters_named_in(&document));
            }
        }
        let mut backends = BTreeMap::new();
        for name in names {
            backends
                .entry(name.clone())
                .or_insert_with(|| EchoBackend::start(&name));
        }
        let upstreams = backends
            .iter()
            .map(|(name, backend)| (name.clone(), backend.addr()))
            .collect();
        let nginx = Nginx::start(label, routes, &upstreams, workers);
        ApisixGateway { nginx, backends }
    }

    pub fn client(&self) -> Client {
        self.nginx.client(0)
    }

    pub fn send(&self, request: &Request) -> Response {
        self.client().send(request)
    }
}

// ---------------------------------------------------------------------------
// Control planes: a plain rules endpoint the test steers, and a real etcd
// ---------------------------------------------------------------------------

/// What the rules endpoint answers.
#[derive(Clone, Debug)]
pub enum Serve {
    /// 200 with this document and ETag; 304 when the ETag is presented.
    Good { document: String, etag: String },
    /// This status, with a short text body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with this JSON document (one the validator refuses, in tests).
    Document(String),
    /// This document, after `delay`.
    Slow { delay: Duration, document: String },
}

/// A plain (`format: graylane`) rules endpoint on a loopback port. It can be
/// stopped (connections refused) and started again on the same port. Every
/// request's arrival time is recorded.
pub struct RulesServer {
    pub addr: SocketAddr,
    serve: Arc<Mutex<Serve>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    running: Option<Arc<AtomicBool>>,
    /// Open connections, shut on [`RulesServer::stop`] (clients keep theirs
    /// alive: resty.proxy-wasm's HTTP client pools them).
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl RulesServer {
    pub fn start(first: Serve) -> RulesServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut server = RulesServer {
            addr: listener.local_addr().unwrap(),
            serve: Arc::new(Mutex::new(first)),
            arrivals: Arc::default(),
            running: None,
            connections: Arc::default(),
        };
        server.listen(listener);
        server
    }

    fn listen(&mut self, listener: TcpListener) {
        let running = Arc::new(AtomicBool::new(true));
        let (serve, arrivals, flag, connections) = (
            Arc::clone(&self.serve),
            Arc::clone(&self.arrivals),
            Arc::clone(&running),
            Arc::clone(&self.connections),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if !flag.load(Ordering::SeqCst) {
                    break; // drops the listener: the port refuses connections
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    connections.lock().unwrap().push(clone);
                }
                let (serve, arrivals) = (Arc::clone(&serve), Arc::clone(&arrivals));
                thread::spawn(move || {
                    let _ = serve_rules(stream, &serve, &arrivals);
                });
            }
        });
        self.running = Some(running);
    }

    pub fn set(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// When each request arrived.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }

    /// As a control plane that went down: open connections are closed and
    /// new ones refused until [`RulesServer::resume`].
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.store(false, Ordering::SeqCst);
            for connection in self.connections.lock().unwrap().drain(..) {
                let _ = connection.shutdown(std::net::Shutdown::Both);
            }
            // Wake the accept loop so that it sees the flag and drops the
            // listener; wait until the port refuses.
            let _ = TcpStream::connect(self.addr);
            let started = Instant::now();
            while TcpStream::connect(self.addr).is_ok() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the rules server does not stop"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        if self.running.is_none() {
            let listener = TcpListener::bind(self.addr).unwrap();
            self.listen(listener);
        }
    }
}

impl Drop for RulesServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_rules(
    stream: TcpStream,
    serve: &Mutex<Serve>,
    arrivals: &Mutex<Vec<Instant>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut if_none_match = None;
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("if-none-match") {
                    if_none_match = Some(value.trim().to_string());
                } else if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        arrivals.lock().unwrap().push(Instant::now());
        let mode = serve.lock().unwrap().clone();
        let (status, etag, body) = match mode {
            Serve::Good { document, etag } => {
                if if_none_match.as_deref() == Some(etag.as_str()) {
                    (304, Some(etag), String::new())
                } else {
                    (200, Some(etag), document)
                }
            }
            Serve::Status(code) => (code, None, "control plane down".to_string()),
            Serve::Garbage => (200, None, "<html>\u{1f4a5} not json".to_string()),
            Serve::Document(document) => (200, None, document),
            Serve::Slow { delay, document } => {
                thread::sleep(delay);
                (200, None, document)
            }
        };
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(etag) = etag {
            head.push_str(&format!("etag: {etag}\r\n"));
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        writer.write_all(body.as_bytes())?;
        writer.flush()?;
    }
}

pub use super::etcd::{http_post, Etcd};
