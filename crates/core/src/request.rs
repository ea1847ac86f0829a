//! A read-only view of one request's headers, as the gateway hands them over:
//! names and values as raw bytes (a value need not be UTF-8), pseudo headers
//! (`:authority`, `:path`, `:method`) among them, a header possibly repeated.
//!
//! Nothing is copied or decoded up front: cookies and query parameters are
//! parsed only when a rule asks for them, and only percent-encoded values are
//! copied when decoded.

use std::borrow::Cow;

pub type HeaderPair<'a> = (&'a [u8], &'a [u8]);

#[derive(Debug, Clone)]
pub struct Request<'a> {
    headers: &'a [HeaderPair<'a>],
    source_ip: Option<&'a [u8]>,
    now_s: Option<u64>,
    form_body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    pub fn new(headers: &'a [HeaderPair<'a>]) -> Self {
        Request {
            headers,
            source_ip: None,
            now_s: None,
            form_body: None,
        }
    }

    /// The request's `application/x-www-form-urlencoded` body, whole, for
    /// `form` conditions: given only when the plugin waited for it.
    pub fn with_form_body(mut self, body: Option<&'a [u8]>) -> Self {
        self.form_body = body;
        self
    }

    /// The gateway's clock, seconds since the epoch, for signed lane
    /// cookies (`Rules::needs_clock`); none on a host without a clock.
    pub fn with_now(mut self, now_s: Option<u64>) -> Self {
        self.now_s = now_s;
        self
    }

    pub fn now_s(&self) -> Option<u64> {
        self.now_s
    }

    /// The client address, without port, for `sticky: {"source_ip": true}`.
    pub fn with_source_ip(mut self, source_ip: Option<&'a [u8]>) -> Self {
        self.source_ip = source_ip;
        self
    }

    pub fn source_ip(&self) -> Option<&'a [u8]> {
        self.source_ip
    }

    /// Every value of a header, in arrival order. `lower_name` must be
    /// lower-case; the request's names are compared without regard to case.
    pub fn header_values<'s>(&'s self, lower_name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        let wanted = lower_name.as_bytes();
        self.headers
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| *value)
    }

    pub fn header(&self, lower_name: &str) -> Option<&'a [u8]> {
        self.header_values(lower_name).next()
    }

    pub fn has_header(&self, lower_name: &str) -> bool {
        self.header(lower_name).is_some()
    }

    /// The `:authority` (or `host`, for hosts that present HTTP/1 requests
    /// that way), lower-cased, without port or trailing dot.
    pub fn host(&self) -> Option<Cow<'a, str>> {
        let raw = self.header(":authority").or_else(|| self.header("host"))?;
        let text = std::str::from_utf8(raw).ok()?;
        let host = crate::config::strip_port(text).trim_end_matches('.');
        Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        })
    }

    /// The path without the query string.
    pub fn path(&self) -> &'a [u8] {
        let full = self.header(":path").unwrap_or(b"/");
        match full.iter().position(|&b| b == b'?' || b == b'#') {
            Some(end) => full.get(..end).unwrap_or(full),
            None => full,
        }
    }

    pub fn method(&self) -> Option<&'a [u8]> {
        self.header(":method")
    }

    fn query_string(&self) -> Option<&'a [u8]> {
        let full = self.header(":path")?;
        let start = full.iter().position(|&b| b == b'?')?;
        let rest = full.get(start + 1..)?;
        let end = rest.iter().position(|&b| b == b'#').unwrap_or(rest.len());
        rest.get(..end)
    }

    /// Every decoded value of a query parameter (`?a=1&a=2` gives both).
    /// A parameter written without `=` has the empty value.
    pub fn query_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Cow<'a, [u8]>> + 's {
        form_values(self.query_string(), name)
    }

    /// Every decoded value of a parameter of the form body, as
    /// [`Request::query_values`] decodes a query; none without a body.
    pub fn form_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Cow<'a, [u8]>> + 's {
        form_values(self.form_body, name)
    }
}

/// The values of `name` in form-urlencoded text (`a=1&b=x+y%21`): `+` is a
/// space and `%XX` a byte, in names and values.
fn form_values<'a, 's>(encoded: Option<&'a [u8]>, name: &'s str) -> impl Iterator<Item = Cow<'a, [u8]>> + 's
where
    'a: 's,
{
    {
        encoded
            .into_iter()
            .flat_map(|query| query.split(|&b| b == b'&'))
            .filter(|pair| !pair.is_empty())
            .filter_map(move |pair| {
                let (raw_name, raw_value) = split_once(pair, b'=');
                (percent_decode(raw_name).as_ref() == name.as_bytes())
                    .then(|| percent_decode(raw_value))
            })
    }
}

impl<'a> Request<'a> {

    /// Every value of a cookie, across all `Cookie` headers (HTTP/2 clients
    /// send one per cookie). A cookie written without `=` is taken as a name
    /// with the empty value.
    pub fn cookie_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.header_values("cookie")
            .flat_map(|header| header.split(|&b| b == b';'))
            .filter_map(move |pair| {
                let (cookie_name, value) = split_once(trim(pair), b'=');
                (trim(cookie_name) == name.as_bytes()).then(|| trim(value))
            })
    }

    /// The whole cookie string, as one `Cookie` header would carry it; several
    /// headers are joined with "; " as an HTTP/1 upstream would receive them.
    pub fn cookie_header(&self) -> Option<Cow<'a, [u8]>> {
        let mut values = self.header_values("cookie");
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = Vec::with_capacity(first.len() + second.len() + 2);
        for value in [first, second].into_iter().chain(values) {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(value);
        }
        Some(Cow::Owned(joined))
    }
}

/// Reads the header map as the proxy-wasm ABI serialises it: a `u32` count,
/// then a `(name length, value length)` pair of `u32`s per header, then each
/// name and value followed by a NUL. Borrowed, not copied. A buffer that does
/// not hold together gives `None` rather than a guess.
pub fn parse_header_map(buffer: &[u8]) -> Option<Vec<HeaderPair<'_>>> {
    if buffer.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = buffer.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    let count = read_u32(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > buffer.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    for index in 0..count {
        let sizes = 4 + index * 8;
        let (name_len, value_len) = (read_u32(sizes)?, read_u32(sizes + 4)?);
        let name = buffer.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?.checked_add(1)?;
        let value = buffer.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?.checked_add(1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// The inverse of [`parse_header_map`]: the buffer a proxy-wasm host hands
/// over, for tests and tools that feed the plugin's own parser. `None` when a
/// length does not fit the format's `u32`.
pub fn serialise_header_map(pairs: &[HeaderPair<'_>]) -> Option<Vec<u8>> {
    let length = |n: usize| u32::try_from(n).ok().map(u32::to_le_bytes);
    let mut out = length(pairs.len())?.to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&length(name.len())?);
        out.extend_from_slice(&length(value.len())?);
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    Some(out)
}

fn split_once(bytes: &[u8], separator: u8) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == separator) {
        Some(at) => (
            bytes.get(..at).unwrap_or(bytes),
            bytes.get(at + 1..).unwrap_or_default(),
        ),
        None => (bytes, &[]),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |last| last + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Form decoding of a query component: `+` is a space, `%XX` a byte; a `%`
/// not followed by two hex digits stays as it is.
pub fn percent_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&byte, tail)) = rest.split_first() {
        match (byte, tail) {
            (b'+', _) => {
                decoded.push(b' ');
                rest = tail;
            }
            (b'%', [high, low, after @ ..])
                if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
            {
                decoded.push(hex_value(*high) << 4 | hex_value(*low));
                rest = after;
            }
            _ => {
                decoded.push(byte);
                rest = tail;
            }
        }
    }
    Cow::Owned(decoded)
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:5555` → `::1`: the address Envoy
/// reports as `source.address`, reduced to the IP so that a client keeps its
/// bucket across connections.
pub fn ip_of_socket_address(address: &[u8]) -> &[u8] {
    if let Some(inner) = address.strip_prefix(b"[") {
        let end = inner.iter().position(|&b| b == b']').unwrap_or(inner.len());
        return inner.get(..end).unwrap_or(inner);
    }
    let colons = address.iter().filter(|&&b| b == b':').count();
    if colons == 1 {
        let end = address
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(address.len());
        return address.get(..end).unwrap_or(address);
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(pairs: &'a [HeaderPair<'a>]) -> Request<'a> {
        Request::new(pairs)
    }

    #[test]
    fn query_values_decode_and_repeat() {
        let pairs: [HeaderPair<'_>; 1] = [(
            b":path",
            b"/x?a=1&canary=tr%75e&canary=no&flag&sp=a+b&bad=%zz&%63anary=enc#frag",
        )];
        let req = request(&pairs);
        let values: Vec<_> = req.query_values("canary").map(|v| v.into_owned()).collect();
        assert_eq!(
            values,
            vec![b"true".to_vec(), b"no".to_vec(), b"enc".to_vec()]
        );
        assert_eq!(req.query_values("flag").next().as_deref(), Some(&b""[..]));
        assert_eq!(req.query_values("sp").next().as_deref(), Some(&b"a b"[..]));
        assert_eq!(req.query_values("bad").next().as_deref(), Some(&b"%zz"[..]));
        assert_eq!(req.query_values("missing").next(), None);
        assert_eq!(req.path(), b"/x");
    }

    #[test]
    fn cookies_across_headers_and_without_equals() {
        let pairs: [HeaderPair<'_>; 3] = [
            (b"cookie", b"a=1; lonely ;b = 2"),
            (b"Cookie", b"beta=1"),
            (b"cookie", b""),
        ];
        let req = request(&pairs);
        assert_eq!(
            req.cookie_values("beta").collect::<Vec<_>>(),
            vec![&b"1"[..]]
        );
        assert_eq!(req.cookie_values("b").collect::<Vec<_>>(), vec![&b"2"[..]]);
        assert_eq!(
            req.cookie_values("lonely").collect::<Vec<_>>(),
            vec![&b""[..]]
        );
        assert_eq!(
            req.cookie_header().as_deref(),
            Some(&b"a=1; lonely ;b = 2; beta=1; "[..])
        );
    }

    #[test]
    fn host_strips_port_case_and_dot() {
        for (raw, want) in [
            (&b"B.Example.COM:8080"[..], "b.example.com"),
            (b"b.example.com.", "b.example.com"),
            (b"[::1]:10000", "[::1]"),
            (b"127.0.0.1", "127.0.0.1"),
        ] {
            let pairs: [HeaderPair<'_>; 1] = [(b":authority", raw)];
            assert_eq!(request(&pairs).host().as_deref(), Some(want));
        }
        let not_utf8: [HeaderPair<'_>; 1] = [(b":authority", b"\xff\xfe")];
        assert_eq!(request(&not_utf8).host(), None);
    }

    fn serialise(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        serialise_header_map(pairs).unwrap()
    }

    #[test]
    fn header_map_round_trip_and_damage() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a?b=c"),
            (b"x-bin", b"\xff\x00z"),
            (b"empty", b""),
        ];
        let buffer = serialise(&pairs);
        assert_eq!(parse_header_map(&buffer), Some(pairs.clone()));
        assert_eq!(parse_header_map(&[]), Some(vec![]));
        // Every truncation is refused, never read past the end.
        for cut in 1..buffer.len() - 1 {
            assert_eq!(parse_header_map(&buffer[..cut]), None, "cut at {cut}");
        }
        // A count that would overflow the size arithmetic.
        assert_eq!(parse_header_map(&[0xff, 0xff, 0xff, 0xff]), None);
        let mut lying = buffer.clone();
        lying[4] = 200; // first name length far past the end
        assert_eq!(parse_header_map(&lying), None);
    }

    #[test]
    fn socket_address_to_ip() {
        assert_eq!(ip_of_socket_address(b"10.1.2.3:5555"), b"10.1.2.3");
        assert_eq!(ip_of_socket_address(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(ip_of_socket_address(b"2001:db8::1"), b"2001:db8::1");
        assert_eq!(ip_of_socket_address(b"10.1.2.3"), b"10.1.2.3");
    }
}
