//! Fallback when a subset is down (`graylane envoy --fallback-to-default`):
//! the canary's only backend is killed under steady traffic, and the
//! canary's share goes to the default subset instead of failing; when the
//! backend returns, the canary takes its share again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use graylane_cli::envoy::Fallback;
use serde_json::json;
use support::*;

/// A backend that can be stopped for real: it closes every connection after
/// one answer (no pooled connection outlives it) and, stopped, closes its
/// port, so Envoy's next connection is refused.
struct Killable {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
}

impl Killable {
    fn start(name: &'static str) -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        serve(listener, name, Arc::clone(&up));
        Killable { addr, up }
    }

    fn kill(&self) {
        self.up.store(false, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = std::net::TcpStream::connect(self.addr);
        thread::sleep(Duration::from_millis(50));
    }

    fn revive(&self, name: &'static str) {
        let listener = TcpListener::bind(self.addr).expect("the port is free again");
        self.up.store(true, Ordering::SeqCst);
        serve(listener, name, Arc::clone(&self.up));
    }
}

fn serve(listener: TcpListener, name: &'static str, up: Arc<AtomicBool>) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            if !up.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = format!(r#"{{"backend":"{name}"}}"#);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nx-echo-backend: {name}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[test]
fn a_dead_canary_falls_back_to_the_default_and_returns() {
    let document = json!({"services": [{
        "name": "b", "default": "stable",
        "subsets": [
            {"name": "stable", "cluster": "b-stable"},
            {"name": "canary", "cluster": "b-canary", "weight": 50}
        ]
    }]});
    let canary = Killable::start("b-canary");
    let canary_addr = canary.addr;
    let gateway = Gateway::start_with("fallback", &document, |mut config| {
        for (name, addr) in &mut config.clusters {
            if name == "b-canary" {
                *addr = canary_addr;
            }
        }
        config.fallbacks = vec![Fallback {
            cluster: "b-canary".into(),
            default: "b-stable".into(),
        }];
        config
    });
    let mut client = gateway.client();
    let mut send = |count: usize| {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..count {
            let response = client.send(&Request::get("/"));
            let key = if response.status == 200 {
                response.backend()
            } else {
                format!("status {}", response.status)
            };
            *seen.entry(key).or_default() += 1;
        }
        seen
    };
    let before = send(200);
    assert!(before.get("b-canary").copied().unwrap_or(0) > 60, "{before:?}");

    canary.kill();
    let started = Instant::now();
    let down = send(400);
    eprintln!("canary down: {down:?} in {:?}", started.elapsed());
    assert_eq!(down.get("b-canary"), None, "{down:?}");
    assert_eq!(down.get("b-stable"), Some(&400), "every request answered by the default: {down:?}");

    canary.revive("b-canary");
    let revived = Instant::now();
    let mut back = None;
    while revived.elapsed() < Duration::from_secs(30) {
        let seen = send(20);
        if seen.get("b-canary").copied().unwrap_or(0) > 0 {
            back = Some(revived.elapsed());
            break;
        }
        assert_eq!(seen.get("b-stable").copied().unwrap_or(0), 20, "{seen:?}");
    }
    let back = back.expect("the canary takes traffic again within 30 s");
    eprintln!("canary back after {back:?}");
    let after = send(400);
    let share = after.get("b-canary").copied().unwrap_or(0);
    assert!((120..=280).contains(&share), "the canary's share again: {after:?}");
    assert!(gateway.envoy.stat("cluster.b-canary~endpoints.outlier_detection.ejections_enforced_total") >= 1);
}
