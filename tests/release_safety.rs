//! Release safety in a real Envoy:
//! - fallback when a subset is down (`graylane envoy --fallback-to-default`):
//!   the canary's only backend is killed under steady traffic, its share goes
//!   to the default subset instead of failing, and it takes its share again
//!   when the backend returns;
//! - mirroring (`subsets[].mirror`);
//! - pin cookies (`services[].pin_cookie`);
//! - lane affinity cookies (`subsets[].affinity`), signed at an edge.

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

/// Mirroring (`subsets[].mirror`): the shadow subset receives a copy of the
/// share of requests the others serve; the client's answer always comes from
/// the chosen subset; POST is not copied by default; a client's own mirror
/// header is never obeyed.
#[test]
fn a_mirror_subset_receives_copies_and_never_answers() {
    let document = json!({"services": [{
        "name": "b", "default": "stable",
        "subsets": [
            {"name": "stable", "cluster": "b-stable"},
            {"name": "shadow", "cluster": "b-shadow", "mirror": {"percent": 25}}
        ]
    }]});
    let admin = EchoBackend::start("admin");
    let admin_addr = admin.addr();
    let gateway = Gateway::start_with("mirror", &document, |config| config.cluster("admin", admin_addr));
    let mut client = gateway.client();
    for _ in 0..400 {
        let response = client.send(&Request::get("/"));
        assert_eq!(response.backend(), "b-stable", "the client is answered by the chosen subset");
    }
    for _ in 0..100 {
        let response = client.send(&Request::new("POST", "/"));
        assert_eq!(response.backend(), "b-stable");
    }
    for _ in 0..100 {
        let response = client.send(&Request::get("/").header("x-graylane-mirror", "admin"));
        assert_eq!(response.backend(), "b-stable");
    }
    // Copies are sent asynchronously: give the last ones a moment.
    let shadow = &gateway.backends["b-shadow"];
    let deadline = Instant::now() + Duration::from_secs(5);
    while shadow.requests() < 124 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    // 25% of the 500 GETs, within one request: the worker's golden-ratio
    // sequence, not a coin toss; and no POST (which would push it past 130).
    let copies = shadow.requests();
    assert!((124..=126).contains(&copies), "the shadow's share of the GETs, and no POST: {copies}");
    assert_eq!(admin.requests(), 0, "a client-sent mirror header went somewhere");
    gateway.envoy.assert_no_wasm_errors();
}

/// Pin cookies (`pin_cookie`): a browser without a sticky key is answered
/// with the bucket it was drawn, and its later requests carrying it go where
/// that bucket belongs, every time.
#[test]
fn a_pinned_browser_stays_in_its_bucket() {
    let document = json!({"services": [{
        "name": "web", "default": "stable",
        "pin_cookie": {"name": "gl_pin", "secure": false},
        "subsets": [
            {"name": "stable", "cluster": "web-stable"},
            {"name": "canary", "cluster": "web-canary", "weight": 30}
        ]
    }]});
    let gateway = Gateway::start("pin", &document);
    let mut client = gateway.client();
    let mut pinned = std::collections::BTreeMap::<String, usize>::new();
    for browser in 0..40 {
        let first = client.send(&Request::get("/"));
        let set_cookie = first.header("set-cookie").unwrap_or_else(|| panic!("browser {browser}: no pin"));
        assert!(set_cookie.contains("; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"), "{set_cookie}");
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        let bucket: u32 = cookie.strip_prefix("gl_pin=").unwrap().parse().unwrap();
        // The first 30% of the buckets belong to the canary.
        let owner = if bucket < 3_000 { "web-canary" } else { "web-stable" };
        assert_eq!(first.backend(), owner, "browser {browser}: bucket {bucket}");
        for _ in 0..5 {
            let again = client.send(&Request::get("/").header("cookie", &format!("a=1; {cookie}")));
            assert_eq!(again.backend(), owner, "browser {browser} left its bucket {bucket}");
            assert_eq!(again.header("set-cookie"), None, "a pinned browser is not pinned again");
        }
        *pinned.entry(owner.to_string()).or_default() += 1;
    }
    // A client's own pin header is not turned into its set-cookie.
    let spoofed = client.send(&Request::get("/").header("cookie", "gl_pin=10").header("x-graylane-pin-cookie", "admin=1"));
    assert_eq!(spoofed.header("set-cookie"), None);
    assert!(pinned.len() == 2, "both versions got browsers: {pinned:?}");
}

/// A document with a canary reached by a header, whose lane sticks by a
/// cookie; `keys` signs it (an edge: tags not trusted).
fn affinity_document(keys: &[&str]) -> serde_json::Value {
    let mut document = json!({"trust_tag": keys.is_empty(), "services": [{
        "name": "shop", "default": "stable",
        "lane_cookie": {"name": "gl_lane", "max_age_s": 3600, "secure": false},
        "subsets": [
            {"name": "stable", "cluster": "shop-stable"},
            {"name": "canary", "cluster": "shop-canary", "affinity": true,
             "match": [{"headers": [{"name": "x-canary", "exact": "always"}]}]}
        ]
    }]});
    if !keys.is_empty() {
        document["lane_keys"] = json!(keys);
    }
    document
}

/// The `name=value` of a `set-cookie`.
fn cookie_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// Lane affinity (`subsets[].affinity`): a request the header sent to the
/// canary is answered with a lane cookie, and the browser's later requests
/// carrying it go to the canary without the header. At an edge the cookie
/// is signed: a forged, altered, foreign or expired cookie is ignored, and a
/// gateway whose keys were rotated (new first, old kept) honours the old one.
#[test]
fn a_lane_cookie_keeps_a_browser_in_the_lane_a_header_chose() {
    const OLD: &str = "graylane-test-key-old";
    const NEW: &str = "graylane-test-key-new";
    let edge_document = affinity_document(&[OLD]);
    let edge = Gateway::start("affinity-edge", &edge_document);
    let rotated = Gateway::start("affinity-rotated", &affinity_document(&[NEW, OLD]));
    let mut client = edge.client();

    let first = client.send(&Request::get("/").header("x-canary", "always"));
    assert_eq!(first.backend(), "shop-canary");
    let set_cookie = first.header("set-cookie").expect("a lane cookie");
    assert!(set_cookie.starts_with("gl_lane=canary."), "{set_cookie}");
    assert!(set_cookie.ends_with("; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax"), "{set_cookie}");
    let cookie = cookie_of(&set_cookie);
    for _ in 0..5 {
        let again = client.send(&Request::get("/").header("cookie", &format!("a=1; {cookie}")));
        assert_eq!(again.backend(), "shop-canary", "the cookie did not hold the lane");
        assert_eq!(again.header("set-cookie"), None, "the cookie routed it: not set again");
        assert_eq!(again.echo().header("x-gray-tag"), Some("canary"));
    }
    let plain = client.send(&Request::get("/"));
    assert_eq!((plain.backend(), plain.header("set-cookie")), ("shop-stable".to_string(), None));

    // Signed elsewhere, expired, altered or bare: each goes to the default.
    let rules = graylane_core::config::compile(edge_document.to_string().as_bytes()).unwrap();
    let lane = rules.services[0].affinity.as_ref().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = cookie_of(&lane.set_cookie("shop", "canary", Some(now - 7_200)));
    let fresh = cookie_of(&lane.set_cookie("shop", "canary", Some(now)));
    let foreign = cookie_of(&lane.set_cookie("other-service", "canary", Some(now)));
    let (head, signature) = fresh.rsplit_once('.').unwrap();
    let flipped = format!("{head}.{}{}", if signature.starts_with('0') { '1' } else { '0' }, &signature[1..]);
    assert_eq!(client.send(&Request::get("/").header("cookie", &fresh)).backend(), "shop-canary");
    for forged in [expired, foreign, flipped, "gl_lane=canary".to_string()] {
        let response = client.send(&Request::get("/").header("cookie", &forged));
        assert_eq!(response.backend(), "shop-stable", "{forged} was honoured");
        assert_eq!(response.echo().header("x-gray-tag"), None);
    }
    // The edge strips a client's tag: only the signed cookie picks a lane.
    let tagged = client.send(&Request::get("/").header("x-gray-tag", "canary"));
    assert_eq!(tagged.backend(), "shop-stable");

    // Rotation: the old key's cookie still holds; new cookies use the new key.
    let mut rotated_client = rotated.client();
    let carried = rotated_client.send(&Request::get("/").header("cookie", &cookie));
    assert_eq!(carried.backend(), "shop-canary");
    let renewed = rotated_client.send(&Request::get("/").header("x-canary", "always"));
    let renewed = cookie_of(&renewed.header("set-cookie").unwrap());
    assert_ne!(client.send(&Request::get("/").header("cookie", &renewed)).backend(), "shop-canary",
        "the edge without the new key honoured a cookie signed with it");
    assert_eq!(rotated_client.send(&Request::get("/").header("cookie", &renewed)).backend(), "shop-canary");

    // Behind a trusted hop, without keys: the tag sets the cookie, and the
    // bare lane is the cookie.
    let inner = Gateway::start("affinity-inner", &affinity_document(&[]));
    let mut inner_client = inner.client();
    let tagged = inner_client.send(&Request::get("/").header("x-gray-tag", "canary"));
    assert_eq!(tagged.backend(), "shop-canary");
    let cookie = cookie_of(&tagged.header("set-cookie").unwrap());
    assert_eq!(cookie, "gl_lane=canary");
    assert_eq!(inner_client.send(&Request::get("/").header("cookie", &cookie)).backend(), "shop-canary");
    for gateway in [&edge, &rotated, &inner] {
        gateway.envoy.assert_no_wasm_errors();
    }
}
