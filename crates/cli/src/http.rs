//! A small blocking HTTP/1.1 client for plain `http://` URLs: what
//! `graylane status` and `graylane rollout` need to read Envoy's admin
//! interface and to talk to etcd's JSON gateway. One request per connection
//! (`connection: close`), a timeout on connecting and on every read, bodies
//! with `content-length`, chunked or read to the end. No TLS: admin
//! interfaces and control planes are reached on a private network or through
//! a local tunnel.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Bodies above this size are refused (an admin `/stats` of a large
/// gateway is a few MB).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// An `http://host:port/prefix` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    /// Path prefix without the trailing `/` (often empty).
    pub prefix: String,
}

impl Url {
    /// Reads `http://host[:port][/prefix]`; port 80 when absent.
    pub fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("{text:?}: only http:// URLs are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(at) => (rest.get(..at).unwrap_or(rest), rest.get(at..).unwrap_or("")),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// GET `path` (with its query) below `url`.
pub fn get(url: &Url, path: &str, timeout: Duration) -> Result<Response, String> {
    request(url, "GET", path, &[], None, timeout)
}

/// POST a JSON body to `path` below `url`.
pub fn post_json(url: &Url, path: &str, body: &str, timeout: Duration) -> Result<Response, String> {
    request(url, "POST", path, &[], Some(body), timeout)
}

/// Any method, with extra headers and an optional JSON body.
pub fn request(
    url: &Url,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, String> {
    let target = match format!("{}{path}", url.prefix) {
        target if target.is_empty() => "/".to_string(),
        target => target,
    };
    let place = format!("{method} {url}{path}");
    let fail = |why: String| format!("{place}: {why}");
    let address = url
        .authority
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {}: {e}", url.authority)))?
        .next()
        .ok_or_else(|| fail(format!("{} resolves to no address", url.authority)))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| fail(format!("cannot connect: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", url.authority);
    for (name, value) in headers {
        if value.contains(['\r', '\n']) {
            return Err(fail(format!("header {name}: a value with CR or LF")));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream
        .write_all(head.as_bytes())
        .map_err(|e| fail(format!("cannot send: {e}")))?;
    read_response(&mut BufReader::new(stream)).map_err(fail)
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

fn read_response(reader: &mut impl BufRead) -> Result<Response, String> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        headers.push((name.to_ascii_lowercase(), value.to_string()));
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad content-length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size_line = read_line(reader)?;
            let size_text = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                break;
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(format!("answer over {MAX_BODY} bytes"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader
                .read_exact(body.get_mut(start..).unwrap_or_default())
                .map_err(|e| format!("cannot read the answer: {e}"))?;
            read_line(reader)?;
        }
    } else if let Some(length) = length {
        if length > MAX_BODY {
            return Err(format!("answer over {MAX_BODY} bytes"));
        }
        body.resize(length, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| format!("cannot read the answer: {e}"))?;
    } else {
        reader
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read the answer: {e}"))?;
    }
    Ok(Response { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = Url::parse("http://127.0.0.1:9901/").unwrap();
        assert_eq!((url.authority.as_str(), url.prefix.as_str()), ("127.0.0.1:9901", ""));
        let url = Url::parse("http://admin.local/envoy/").unwrap();
        assert_eq!((url.authority.as_str(), url.prefix.as_str()), ("admin.local:80", "/envoy"));
        assert_eq!(url.to_string(), "http://admin.local:80/envoy");
        assert!(Url::parse("https://x").unwrap_err().contains("only http://"));
        assert!(Url::parse("http:///x").is_err());
    }

    #[test]
    fn bodies_by_length_chunks_and_end() {
        let read = |raw: &str| read_response(&mut raw.as_bytes()).unwrap();
        let answer = read("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"7\"\r\n\r\nhello");
        assert_eq!((answer.status, answer.text().as_str()), (200, "hello"));
        assert_eq!(answer.header("etag"), Some("\"7\""));
        let answer = read("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n");
        assert_eq!(answer.text(), "abcde");
        let answer = read("HTTP/1.1 404 Not Found\r\n\r\nrest");
        assert_eq!((answer.status, answer.text().as_str()), (404, "rest"));
        assert!(read_response(&mut "garbage\r\n\r\n".as_bytes()).is_err());
    }
}
