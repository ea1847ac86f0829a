//! HTTP/2 and gRPC through a real Envoy with the plugin: clients speak
//! HTTP/2 (curl with prior knowledge, as a gRPC client does over h2c), so
//! the plugin sees HTTP/2's header map: cookies split into one header per
//! crumb, pseudo-headers, gRPC metadata as headers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::*;

const HOST: &str = "b.example.com";

fn document() -> Value {
    json!({
        "trust_tag": true,
        "services": [
            {
                "name": "greeter",
                "path_prefix": "/pkg.Greeter/",
                "default": "stable",
                "subsets": [
                    {"name": "stable", "cluster": "greeter-stable"},
                    {"name": "canary", "cluster": "greeter-canary", "tag": "canary",
                     "match": [{"headers": [{"name": "x-lane", "exact": "canary"}]}]}
                ]
            },
            {
                "name": "web",
                "hosts": [HOST],
                "default": "stable",
                "subsets": [
                    {"name": "stable", "cluster": "web-stable"},
                    {"name": "beta", "cluster": "web-beta",
                     "match": [{"cookies": [{"name": "beta", "exact": "1"}]}]},
                    {"name": "staff", "cluster": "web-staff",
                     "match": [{"cookie_regex": "(^|;\\s*)email=[^;]*@c1\\.com(;|$)"}]}
                ]
            }
        ]
    })
}

/// One HTTP/2 request with prior knowledge (h2c), as curl sends it: each
/// `-H` its own header field, so two `cookie` headers stay two.
fn h2(gateway: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let port = gateway.envoy.listener().port();
    let mut command = Command::new("curl");
    command.args([
        "--http2-prior-knowledge",
        "--silent",
        "--show-error",
        "--include",
        "--max-time",
        "10",
        "--request",
        method,
        "--resolve",
        &format!("{HOST}:{port}:127.0.0.1"),
        &format!("http://{HOST}:{port}{path}"),
    ]);
    for (name, value) in headers {
        command.args(["--header", &format!("{name}: {value}")]);
    }
    if method == "POST" {
        command.args(["--data-binary", "@-"]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    // A gRPC frame: uncompressed, an empty message.
    child.stdin.take().unwrap().write_all(&[0; 5]).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "curl: {}", String::from_utf8_lossy(&output.stderr));
    parse_response(&output.stdout)
}

fn parse_response(bytes: &[u8]) -> Response {
    let split = bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/2 "), "not HTTP/2: {status_line}");
    let status = status_line[7..].trim().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().as_bytes().to_vec()))
        .collect();
    Response {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    }
}

fn routed(response: &Response) -> (String, Option<String>) {
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.echo();
    let tag = echo.header("x-gray-tag").map(str::to_string);
    (echo.backend, tag)
}

#[test]
fn http2_clients_and_grpc_calls_route_by_the_rules() {
    let gateway = Gateway::start("http2-grpc", &document());
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let cases: Vec<(&str, Response, &str, Option<&str>)> = vec![
        (
            "gRPC call, no metadata: the default",
            h2(&gateway, "POST", "/pkg.Greeter/SayHello", &grpc),
            "greeter-stable",
            None,
        ),
        (
            "gRPC call with metadata x-lane: canary",
            h2(&gateway, "POST", "/pkg.Greeter/SayHello", &[grpc[0], grpc[1], ("x-lane", "canary")]),
            "greeter-canary",
            Some("canary"),
        ),
        (
            "gRPC call carrying the lane as metadata (x-gray-tag)",
            h2(&gateway, "POST", "/pkg.Greeter/SayHello", &[grpc[0], grpc[1], ("x-gray-tag", "canary")]),
            "greeter-canary",
            Some("canary"),
        ),
        (
            "another gRPC service is not the greeter's: the next service (by host) takes it",
            h2(&gateway, "POST", "/pkg.Other/SayHello", &[grpc[0], grpc[1], ("x-lane", "canary")]),
            "web-stable",
            None,
        ),
        (
            "HTTP/2 cookie crumbs: beta=1 in the second crumb",
            h2(&gateway, "GET", "/", &[("cookie", "a=2"), ("cookie", "beta=1")]),
            "web-beta",
            Some("beta"),
        ),
        (
            "HTTP/2 cookie crumbs: the regex over the crumbs joined",
            h2(&gateway, "GET", "/", &[("cookie", "a=2"), ("cookie", "email=x@c1.com"), ("cookie", "z=1")]),
            "web-staff",
            Some("staff"),
        ),
        (
            "HTTP/2 cookie crumbs: no crumb matches",
            h2(&gateway, "GET", "/", &[("cookie", "beta=0"), ("cookie", "email=x@c2.com")]),
            "web-stable",
            None,
        ),
        (
            "HTTP/2 spoofed cluster header on a claimed request",
            h2(&gateway, "GET", "/x", &[("x-graylane-cluster", "web-beta")]),
            "web-stable",
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (what, response, backend, tag) in &cases {
        let (got_backend, got_tag) = routed(response);
        if got_backend != *backend || got_tag.as_deref() != *tag {
            failures.push(format!(
                "{what}: want {backend} tag {tag:?}, got {got_backend} tag {got_tag:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gateway.envoy.assert_no_wasm_errors();
}
