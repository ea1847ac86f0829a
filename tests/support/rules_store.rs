//! A rules endpoint of the plain `graylane` format that can be written:
//! GET answers the document with an `ETag` (304 to a matching
//! `If-None-Match`); PUT with `If-Match` equal to the current ETag replaces
//! the document (204), with any other `If-Match` (or none) answers 412.
//! Any path. HTTP/1.1 keep-alive, one thread per connection.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The document and its ETag (a counter, quoted).
#[derive(Debug, Clone)]
struct Stored {
    document: String,
    etag: u64,
}

pub struct RulesStore {
    addr: SocketAddr,
    stored: Arc<Mutex<Stored>>,
    stop: Arc<AtomicBool>,
}

impl RulesStore {
    pub fn start(document: &str) -> RulesStore {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the rules store");
        let addr = listener.local_addr().expect("no address");
        let store = RulesStore {
            addr,
            stored: Arc::new(Mutex::new(Stored {
                document: document.to_string(),
                etag: 1,
            })),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (stored, stop) = (Arc::clone(&store.stored), Arc::clone(&store.stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let stored = Arc::clone(&stored);
                thread::spawn(move || {
                    let _ = serve(stream, &stored);
                });
            }
        });
        store
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The document now.
    pub fn document(&self) -> String {
        self.stored.lock().unwrap().document.clone()
    }

    /// Replaces the document as another writer would (a new ETag).
    pub fn replace(&self, document: &str) {
        let mut stored = self.stored.lock().unwrap();
        stored.document = document.to_string();
        stored.etag += 1;
    }
}

impl Drop for RulesStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, stored: &Mutex<Stored>) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(head) = super::read_head(&mut reader)? else {
            return Ok(());
        };
        let mut lines = head.split(|&b| b == b'\n');
        let method = String::from_utf8_lossy(lines.next().unwrap_or_default())
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let headers = super::parse_header_lines(lines);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(header, _)| header == name)
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        let length: usize = header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut stored = stored.lock().unwrap();
        let etag = format!("\"{}\"", stored.etag);
        let (status, answer) = match method.as_str() {
            "GET" if header("if-none-match").as_deref() == Some(etag.as_str()) => (304, String::new()),
            "GET" => (200, stored.document.clone()),
            "PUT" if header("if-match").as_deref() == Some(etag.as_str()) => {
                stored.document = String::from_utf8_lossy(&body).into_owned();
                stored.etag += 1;
                (204, String::new())
            }
            "PUT" => (412, "the rules changed".to_string()),
            _ => (405, String::new()),
        };
        let etag = format!("\"{}\"", stored.etag);
        drop(stored);
        write!(
            writer,
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\netag: {etag}\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        )?;
    }
}
