//! A scripted control plane that holds requests, as a long-poll server
//! does: the graylane format (`If-None-Match` and `Prefer: wait=N`, 304 when
//! the wait ends) or Consul's blocking queries (`?index=N&wait=Ns`, the index
//! in `X-Consul-Index`). The test changes the document with [`LongPoll::set`],
//! which answers every held request at once, or makes the server misbehave
//! ([`Behaviour`]).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Graylane,
    Consul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Holds a request until the document changes or the wait ends.
    Hold,
    /// Never answers (the connection stays open).
    Hang,
    /// Answers at once with a body that is not JSON.
    Garbage,
    /// Ignores the wait: answers at once, 304 (or the same index) when
    /// nothing changed.
    Immediate,
}

struct State {
    version: u64,
    document: String,
    behaviour: Behaviour,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    requests: AtomicUsize,
    /// Requests that carried a wait (Prefer, or Consul's index and wait).
    waiting_requests: AtomicUsize,
    stop: AtomicBool,
}

pub struct LongPoll {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl LongPoll {
    pub fn start(flavour: Flavour, document: &str) -> LongPoll {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version: 1,
                document: document.to_string(),
                behaviour: Behaviour::Hold,
            }),
            changed: Condvar::new(),
            requests: AtomicUsize::new(0),
            waiting_requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let server = LongPoll {
            addr: listener.local_addr().unwrap(),
            shared: Arc::clone(&shared),
        };
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = serve(stream, flavour, &shared);
                });
            }
        });
        server
    }

    /// A new document: every held request is answered with it now. Returns
    /// the instant of the change.
    pub fn set(&self, document: &str) -> Instant {
        let mut state = self.shared.state.lock().unwrap();
        state.version += 1;
        state.document = document.to_string();
        let at = Instant::now();
        self.shared.changed.notify_all();
        at
    }

    pub fn behave(&self, behaviour: Behaviour) {
        self.shared.state.lock().unwrap().behaviour = behaviour;
        self.shared.changed.notify_all();
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub fn waiting_requests(&self) -> usize {
        self.shared.waiting_requests.load(Ordering::Relaxed)
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        let _ = TcpStream::connect(self.addr);
    }
}

/// The version the client has and how long it may be held, from its
/// request line and headers.
fn read_request(
    reader: &mut impl BufRead,
    flavour: Flavour,
) -> std::io::Result<Option<(Option<u64>, Option<Duration>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let target = line.split(' ').nth(1).unwrap_or_default().to_string();
    let (mut known, mut wait) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        if flavour == Flavour::Graylane && name.eq_ignore_ascii_case("if-none-match") {
            known = value.trim_matches('"').parse().ok();
        }
        if flavour == Flavour::Graylane && name.eq_ignore_ascii_case("prefer") {
            wait = value
                .strip_prefix("wait=")
                .and_then(|seconds| seconds.parse().ok())
                .map(Duration::from_secs);
        }
    }
    if flavour == Flavour::Consul {
        let query = target.split_once('?').map(|(_, query)| query).unwrap_or_default();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("index", index)) => known = index.parse().ok(),
                Some(("wait", duration)) => {
                    wait = duration
                        .strip_suffix('s')
                        .and_then(|seconds| seconds.parse().ok())
                        .map(Duration::from_secs);
                }
                _ => {}
            }
        }
    }
    Ok(Some((known, wait)))
}

fn serve(stream: TcpStream, flavour: Flavour, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some((known, wait)) = read_request(&mut reader, flavour)? {
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if wait.is_some() {
            shared.waiting_requests.fetch_add(1, Ordering::Relaxed);
        }
        let deadline = Instant::now() + wait.unwrap_or_default();
        let mut state = shared.state.lock().unwrap();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let held = match state.behaviour {
                Behaviour::Hang => true,
                Behaviour::Hold => known == Some(state.version) && Instant::now() < deadline,
                Behaviour::Garbage | Behaviour::Immediate => false,
            };
            if !held {
                break;
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            state = shared.changed.wait_timeout(state, left).unwrap().0;
        }
        let (version, document, behaviour) =
            (state.version, state.document.clone(), state.behaviour);
        drop(state);
        let (status, body) = match (behaviour, flavour) {
            (Behaviour::Garbage, _) => (200, "<html>\u{1f4a5} not json".to_string()),
            (_, Flavour::Graylane) if known == Some(version) => (304, String::new()),
            _ => (200, document),
        };
        let version_header = match (flavour, behaviour) {
            // Garbage must not look like the version the client has.
            (Flavour::Graylane, Behaviour::Garbage) => "etag: \"garbage\"".to_string(),
            (Flavour::Graylane, _) => format!("etag: \"{version}\""),
            (Flavour::Consul, _) => format!("x-consul-index: {version}"),
        };
        // One write: a head and a body in two would wait on Nagle and the
        // peer's delayed ACK (40 ms).
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{version_header}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(answer.as_bytes())?;
        writer.flush()?;
    }
    Ok(())
}
