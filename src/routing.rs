//! One request's headers: read the header map once, decide, write what
//! changes. Per routed request the host sees:
//!
//! - one `proxy_get_header_map_pairs`;
//! - one `proxy_replace_header_map_value` of the cluster header (a replace
//!   also drops every copy the client sent, so no remove goes before it);
//! - the tag header's replace only when the tag changes, its remove only when
//!   an untrusted tag is dropped and no tag is written;
//! - a remove of the cluster header only when no service claims a request
//!   that carried one;
//! - the source address property only when a rule is sticky on it;
//! - on a host that shows at most [`HOST_HEADER_CAP`] headers (APISIX), when
//!   the map is that full, one `proxy_get_header_map_value` each for the
//!   cluster and the tag header, so that a copy hidden past the cap is seen.

use graylane_core::decision::{decide, HeaderEdit};
use graylane_core::request::{ip_of_socket_address, parse_header_map, HeaderPair, Request};
use graylane_core::rules::Rules;

use crate::abi::{self, BufferType, HostBuffer, MapType, Status};
use crate::root::Root;

/// APISIX's host hands the plugin the first 100 request headers (pseudo
/// headers apart): lua-nginx-module caps "all headers" there. A map with
/// that many may hide more.
pub const HOST_HEADER_CAP: usize = 100;

/// What becomes of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Answered locally: a 503 refusal, or the reply to an unclaimed
    /// request of a service without a default.
    Refused,
    /// Routed; held until the refresh it started is answered (APISIX mode).
    WaitForRefresh,
    /// Not routed yet: held for its form body, up to this many bytes.
    WaitForBody(usize),
}

/// Where a request is decided: on its headers (`end_of_stream` when they
/// end it), or at the end of the form body it was held for.
#[derive(Clone, Copy)]
enum Phase {
    Headers { end_of_stream: bool },
    BodyEnd { cap: usize },
}

pub fn on_request_headers(root: &Root, end_of_stream: bool) -> Outcome {
    route(root, Phase::Headers { end_of_stream })
}

/// The form body is in (or past `cap`): decide with it, the headers read
/// again. A header written here makes Envoy choose the route again.
pub fn on_request_body_end(root: &Root, cap: usize) -> Outcome {
    route(root, Phase::BodyEnd { cap })
}

fn route(root: &Root, phase: Phase) -> Outcome {
    let Some(compiled) = root.current() else {
        // The host refuses to run a filter whose on_configure failed, so this
        // is only reachable through a host bug. Refuse rather than forward a
        // client's own cluster header.
        return refuse("graylane has no configuration");
    };
    let rules = &compiled.rules;
    let map = match abi::header_map_pairs(MapType::RequestHeaders) {
        Ok(map) => map,
        Err(status) => return refuse_status("cannot read request headers", status),
    };
    let Some(mut pairs) = parse_header_map(map.bytes()) else {
        return refuse("the host's header map is malformed");
    };
    let hidden = if may_hide_headers(&pairs) {
        match Hidden::read(rules, &pairs) {
            Ok(hidden) => hidden,
            Err(status) => return refuse_status("cannot read the cluster and tag headers", status),
        }
    } else {
        Hidden::default()
    };
    hidden.add_to(rules, &mut pairs);
    let source_address = if rules.needs_source_ip {
        source_address()
    } else {
        None
    };
    let mut request = Request::new(&pairs).with_source_ip(
        source_address
            .as_ref()
            .map(|address| ip_of_socket_address(address.bytes())),
    );
    if rules.needs_clock {
        request = request.with_now(now_s(root));
    }
    let body;
    match phase {
        Phase::Headers { end_of_stream } => {
            if rules.reads_form && !end_of_stream && !root.apisix_mode() {
                if let Some(cap) = graylane_core::decision::body_wanted(rules, &request) {
                    return Outcome::WaitForBody(cap);
                }
            }
        }
        Phase::BodyEnd { cap } => {
            // One byte past the cap tells a body over it: that one does not
            // match `form`, and goes on as it came.
            body = abi::buffer_bytes(BufferType::HttpRequestBody, cap.saturating_add(1)).ok();
            let whole = body.as_ref().map(HostBuffer::bytes).filter(|bytes| bytes.len() <= cap);
            request = request.with_form_body(whole);
        }
    }

    let mut sequence = root.sequence();
    let decision = decide(rules, &request, &mut sequence);
    root.set_sequence(sequence);

    for edit in needed(&decision.edits) {
        let applied = match edit.value() {
            None => abi::remove_header(MapType::RequestHeaders, edit.name()),
            Some(value) => abi::replace_header(MapType::RequestHeaders, edit.name(), value),
        };
        if let Err(status) = applied {
            // A header the plugin could not strip or set could let a
            // client's own cluster choice through: stop the request.
            return refuse_status(&format!("cannot edit header {edit:?}"), status);
        }
    }
    if let (Some(service), Some(subset)) = (decision.service, decision.subset) {
        compiled.counts.record(service, subset);
    } else if let Some(status) = decision.local_reply() {
        return reply_unclaimed(status);
    }
    drop(compiled);
    // No ticks: the request that finds the rules due for a refresh fetches
    // them, routed already by the rules in force, and goes on once the
    // answer (or the timeout) is in.
    if root.apisix_mode() && root.refresh_on_request() {
        return Outcome::WaitForRefresh;
    }
    Outcome::Continue
}

/// The clock for signed lane cookies, in seconds; none on APISIX's host,
/// which has none (its cookies then carry no expiry).
fn now_s(root: &Root) -> Option<u64> {
    if root.apisix_mode() {
        return None;
    }
    abi::current_time_ns().ok().map(|nanos| nanos / 1_000_000_000)
}

/// Envoy's `source.address`; APISIX's host looks a property up as one nginx
/// variable, where it is `remote_addr`.
fn source_address() -> Option<HostBuffer> {
    abi::property(b"source\0address")
        .ok()
        .flatten()
        .or_else(|| abi::property(b"remote_addr").ok().flatten())
}

/// True when the map holds as many headers as a capping host shows.
pub fn may_hide_headers(pairs: &[HeaderPair<'_>]) -> bool {
    pairs
        .iter()
        .filter(|(name, _)| !name.starts_with(b":"))
        .count()
        >= HOST_HEADER_CAP
}

/// The cluster and tag headers read one by one, for a map that may have
/// left them out.
#[derive(Default)]
struct Hidden {
    cluster: Option<HostBuffer>,
    tag: Option<HostBuffer>,
}

impl Hidden {
    fn read(rules: &Rules, pairs: &[HeaderPair<'_>]) -> Result<Hidden, Status> {
        let absent = |name: &str| {
            !pairs
                .iter()
                .any(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
        };
        let mut hidden = Hidden::default();
        if absent(&rules.cluster_header) {
            hidden.cluster = abi::header_map_value(MapType::RequestHeaders, &rules.cluster_header)?;
        }
        if absent(&rules.tag_header) {
            hidden.tag = abi::header_map_value(MapType::RequestHeaders, &rules.tag_header)?;
        }
        Ok(hidden)
    }

    fn add_to<'a>(&'a self, rules: &'a Rules, pairs: &mut Vec<HeaderPair<'a>>) {
        if let Some(value) = &self.cluster {
            pairs.push((rules.cluster_header.as_bytes(), value.bytes()));
        }
        if let Some(value) = &self.tag {
            pairs.push((rules.tag_header.as_bytes(), value.bytes()));
        }
    }
}

/// The decision's edits less the removes a replace of the same header makes
/// needless (a replace drops every value the header had).
pub fn needed<'e, 'r>(edits: &'e [HeaderEdit<'r>]) -> impl Iterator<Item = &'e HeaderEdit<'r>> {
    edits.iter().filter(move |edit| match edit {
        HeaderEdit::Remove(name) => !edits
            .iter()
            .any(|other| other.value().is_some() && other.name() == *name),
        HeaderEdit::Set(..) | HeaderEdit::SetOwned(..) => true,
    })
}

/// The reply to a request its service has no subset for (a service without
/// a default).
fn reply_unclaimed(status: u16) -> Outcome {
    let no_headers = graylane_core::request::serialise_header_map(&[]).unwrap_or_default();
    if let Err(host) = abi::send_local_response(u32::from(status), b"", &no_headers) {
        return refuse_status(&format!("cannot answer {status} to an unclaimed request"), host);
    }
    Outcome::Refused
}

fn refuse_status(what: &str, status: Status) -> Outcome {
    refuse(&format!("{what}: host status {}", status.code()))
}

/// Answers 503 (the request must not reach an upstream it was not routed
/// to).
fn refuse(why: &str) -> Outcome {
    log::error!("graylane: {why}; answering 503");
    let headers = [(&b"x-graylane-error"[..], &b"1"[..])];
    let headers = graylane_core::request::serialise_header_map(&headers).unwrap_or_default();
    if let Err(status) = abi::send_local_response(503, b"graylane: routing unavailable\n", &headers)
    {
        log::error!(
            "graylane: cannot send the 503 either: host status {}",
            status.code()
        );
    }
    Outcome::Refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replace_makes_the_remove_of_its_header_needless() {
        let edits = [
            HeaderEdit::Remove("x-c"),
            HeaderEdit::Remove("x-t"),
            HeaderEdit::Set("x-c", "b-stable"),
        ];
        let kept: Vec<_> = needed(&edits).cloned().collect();
        assert_eq!(
            kept,
            [
                HeaderEdit::Remove("x-t"),
                HeaderEdit::Set("x-c", "b-stable")
            ]
        );
        let edits = [HeaderEdit::Remove("x-c")];
        assert_eq!(needed(&edits).count(), 1);
    }

    #[test]
    fn a_full_map_may_hide_headers() {
        let names: Vec<String> = (0..HOST_HEADER_CAP).map(|i| format!("h{i}")).collect();
        let mut pairs: Vec<HeaderPair<'_>> = vec![(b":path", b"/"), (b":method", b"GET")];
        pairs.extend(names.iter().skip(1).map(|n| (n.as_bytes(), &b"v"[..])));
        assert!(!may_hide_headers(&pairs));
        pairs.push((b"host", b"b.test"));
        assert!(may_hide_headers(&pairs));
    }
}
