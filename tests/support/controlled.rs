//! An upstream whose health the test sets while it runs: every answer has
//! the status and the delay last set ([`ControlledBackend::set`]), the header
//! `x-echo-backend: <name>` and a small body. HTTP/1.1 keep-alive, one
//! thread per connection; stops accepting on drop.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What every answer is, until changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    pub status: u16,
    pub delay: Duration,
}

impl Behaviour {
    pub const HEALTHY: Behaviour = Behaviour {
        status: 200,
        delay: Duration::ZERO,
    };
}

pub struct ControlledBackend {
    name: String,
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ControlledBackend {
    pub fn start(name: &str) -> ControlledBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a backend");
        let addr = listener.local_addr().expect("a backend without an address");
        let backend = ControlledBackend {
            name: name.to_string(),
            addr,
            behaviour: Arc::new(Mutex::new(Behaviour::HEALTHY)),
            requests: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (name, behaviour, requests, stop) = (
            name.to_string(),
            Arc::clone(&backend.behaviour),
            Arc::clone(&backend.requests),
            Arc::clone(&backend.stop),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (name, behaviour, requests) = (name.clone(), Arc::clone(&behaviour), Arc::clone(&requests));
                thread::spawn(move || {
                    let _ = serve(stream, &name, &behaviour, &requests);
                });
            }
        });
        backend
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// From now on, every answer is this.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ControlledBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, name: &str, behaviour: &Mutex<Behaviour>, requests: &AtomicUsize) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(head) = super::read_head(&mut reader)? else {
            return Ok(());
        };
        let headers = super::parse_header_lines(head.split(|&b| b == b'\n').skip(1));
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| String::from_utf8_lossy(value).trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        requests.fetch_add(1, Ordering::Relaxed);
        let now = *behaviour.lock().unwrap();
        if !now.delay.is_zero() {
            thread::sleep(now.delay);
        }
        let body = format!("{{\"backend\":\"{name}\",\"status\":{}}}", now.status);
        write!(
            writer,
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\nx-echo-backend: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            now.status,
            body.len()
        )?;
    }
}
