//! A real etcd for the tests (v3 JSON gateway), on free loopback ports with
//! a temporary data directory: `etcd` at `/usr/bin/etcd` or on `PATH`
//! (Debian package `etcd-server`); the tests fail without it.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A free loopback port (free when asked: another process may take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free port")
}

pub fn etcd_bin() -> PathBuf {
    let fixed = PathBuf::from("/usr/bin/etcd");
    if fixed.is_file() {
        return fixed;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        })
        .expect("no etcd found (install the Debian package etcd-server): the live-rules tests need a real etcd")
}

/// A real etcd on free loopback ports with a temporary data directory; can be
/// stopped and started again on the same ports and data.
pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: u16,
    dir: PathBuf,
}

impl Etcd {
    pub fn start(label: &str) -> Etcd {
        let dir = super::scratch_dir(&format!("etcd-{label}"));
        let mut etcd = Etcd {
            child: None,
            client: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peer: free_port(),
            dir,
        };
        etcd.spawn();
        etcd
    }

    pub fn spawn(&mut self) {
        let client_url = format!("http://{}", self.client);
        let peer_url = format!("http://127.0.0.1:{}", self.peer);
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new(etcd_bin())
            .args(["--name", "graylane-test"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("graylane-test={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.child = Some(child);
        let started = Instant::now();
        while http_post(self.client, "/v3/kv/range", r#"{"key":"AA=="}"#).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "etcd did not come up; its log:\n{}",
                fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd; its port refuses connections afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): its connections stay open and answer
    /// nothing, as a hung server or a silent network does.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen etcd go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("etcd is not running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill {signal} etcd");
    }

    /// Puts `value` at `key`; returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> u64 {
        let b64 = |data: &[u8]| graylane_core::source::codec::base64_encode(data);
        let body = json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
        let (status, reply) = http_post(self.client, "/v3/kv/put", &body.to_string()).unwrap();
        assert_eq!(status, 200, "etcd put: {reply}");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        reply["header"]["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Etcd {
    /// Compacts the history up to `revision` (physically: the revisions
    /// before it are gone when this returns).
    pub fn compact(&self, revision: u64) {
        let body = json!({"revision": revision.to_string(), "physical": true});
        let (status, reply) =
            http_post(self.client, "/v3/kv/compaction", &body.to_string()).unwrap();
        assert_eq!(status, 200, "etcd compaction: {reply}");
    }

    /// etcd's own Prometheus metrics (`/metrics`, no gRPC involved).
    pub fn metrics(&self) -> String {
        let mut stream = TcpStream::connect_timeout(&self.client, Duration::from_secs(2)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.client
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    }

    /// The sum of metric `name` over the series whose labels contain every
    /// `label="value"` given, from [`Etcd::metrics`].
    pub fn counter(&self, name: &str, labels: &[&str]) -> u64 {
        metric_sum(&self.metrics(), name, labels)
    }
}

/// The sum of metric `name` in a Prometheus text over the series whose
/// labels contain every entry of `labels` (`grpc_method="Range"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|label| rest.contains(label))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|value| value as u64)
        .sum()
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 POST on a fresh connection; status and body.
pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
