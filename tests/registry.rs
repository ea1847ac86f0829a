//! `graylane image push` against a real registry: Debian's `docker-registry`
//! (CNCF distribution 2.8), started on a free loopback port with its own
//! configuration and storage. The image is read back over plain HTTP, not
//! with the pusher's client, and checked as Istio's and Envoy Gateway's
//! fetchers read it: one OCI image manifest whose last layer is a gzipped tar
//! holding `plugin.wasm`, byte-equal to the plugin pushed, under the digest
//! the command printed. A second registry asks for HTTP Basic credentials
//! (htpasswd with bcrypt), a third Bearer tokens from a token service run
//! here (RS256, signed with a key the `openssl` command makes). Needs
//! `docker-registry` (`/usr/bin` or `PATH`) and `openssl`; scripts/test.sh
//! installs both: the tests fail without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{graylane, wasm_path, Client, Request, Response};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn registry_bin() -> PathBuf {
    let fixed = PathBuf::from("/usr/bin/docker-registry");
    if fixed.is_file() {
        return fixed;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("docker-registry"))
                .find(|candidate| candidate.is_file())
        })
        .expect("no docker-registry found (install the Debian package docker-registry): the registry tests need one")
}

/// Where Docker's config.json is looked for, for the whole test process: a
/// directory of its own, so that the user's credentials play no part.
fn docker_config_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("graylane-docker-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Set once, before any push reads it, and never changed.
        std::env::set_var("DOCKER_CONFIG", &dir);
        dir
    })
}

/// How a test registry authenticates.
enum Auth<'a> {
    None,
    /// HTTP Basic against an htpasswd file (bcrypt).
    Htpasswd { user: &'a str, password: &'a str },
    /// Bearer tokens from `realm`, signed by the key of `certificate`.
    Token { realm: String, certificate: PathBuf },
}

const TOKEN_SERVICE: &str = "graylane-test-registry";
const TOKEN_ISSUER: &str = "graylane-test-issuer";

/// A registry on a free loopback port, with a temporary configuration and
/// storage directory; stopped and removed when dropped.
struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Registry {
    fn start(label: &str, auth: &Auth<'_>) -> Registry {
        let dir = std::env::temp_dir().join(format!("graylane-registry-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: graylane-test-secret\n",
            dir.join("storage").display()
        );
        match auth {
            Auth::None => {}
            Auth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 5).unwrap();
                std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: graylane-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                ));
            }
            Auth::Token { realm, certificate } => {
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    certificate.display()
                ));
            }
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(registry_bin())
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        let mut registry = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = Client::connect(addr) {
                if let Ok(answer) = client.try_send(&Request::get("/v2/")) {
                    if matches!(answer.status, 200 | 401) {
                        return registry;
                    }
                }
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", registry.log());
            }
            assert!(Instant::now() < deadline, "docker-registry did not answer in 30 s:\n{}", registry.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// GET with an optional `Accept` and `Authorization` value.
    fn get(&self, path: &str, accept: Option<&str>, authorization: Option<&str>) -> Response {
        let mut request = Request::get(path).host(&self.addr.to_string());
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        Client::connect(self.addr).unwrap().send(&request)
    }

    fn reference(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * index)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64url(bytes: &[u8]) -> String {
    base64(bytes).trim_end_matches('=').replace('+', "-").replace('/', "_")
}

fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn plugin() -> (&'static str, Vec<u8>) {
    let path = wasm_path();
    (path.to_str().unwrap(), std::fs::read(path).unwrap())
}

/// `graylane image push`, its printed digest, its stderr and how long it took.
fn push(args: &[&str]) -> (i32, String, String, Duration) {
    docker_config_dir();
    let started = Instant::now();
    let run = graylane(&[&["image", "push"], args].concat());
    (run.code, run.stdout.trim().to_string(), run.stderr, started.elapsed())
}

/// Reads the image at `repository/manifests/tag` back over HTTP and checks
/// it as Istio's fetcher reads it; returns the registry's digest.
fn read_back(registry: &Registry, repository: &str, tag: &str, wasm: &[u8], authorization: Option<&str>) -> String {
    let answer = registry.get(&format!("/v2/{repository}/manifests/{tag}"), Some(MANIFEST), authorization);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("content-type").as_deref(), Some(MANIFEST));
    let digest = answer.header("docker-content-digest").expect("no Docker-Content-Digest");
    assert_eq!(sha256(&answer.body), digest, "the manifest's bytes are not what its digest names");
    let manifest: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], CONFIG);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let last = layers.last().unwrap();
    assert_eq!(last["mediaType"], TAR_GZIP);
    let blob = |descriptor: &Value| {
        let digest = descriptor["digest"].as_str().unwrap();
        let answer = registry.get(&format!("/v2/{repository}/blobs/{digest}"), None, authorization);
        assert_eq!(answer.status, 200, "blob {digest}");
        assert_eq!(sha256(&answer.body), digest);
        assert_eq!(answer.body.len() as u64, descriptor["size"].as_u64().unwrap());
        answer.body
    };
    let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
    let gzipped = blob(last);
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut tar_bytes).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&tar_bytes));
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "plugin.wasm" {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            assert!(content == wasm, "plugin.wasm in the layer differs from the .wasm pushed");
        }
        names.push(name);
    }
    assert_eq!(names, ["plugin.wasm"]);
    digest
}

#[test]
fn a_pushed_image_reads_back_as_istio_and_envoy_gateway_read_it() {
    let registry = Registry::start("anonymous", &Auth::None);
    let (wasm_file, wasm) = plugin();
    let offline = graylane(&["image", "digest", "--wasm", wasm_file]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    let offline = offline.stdout.trim().to_string();
    assert!(offline.starts_with("sha256:") && offline.len() == 7 + 64, "{offline}");

    // Chunked upload (the default).
    let reference = registry.reference("graylane/graylane:0.1.0");
    let (code, printed, stderr, took) = push(&["--wasm", wasm_file, &reference]);
    assert_eq!(code, 0, "{stderr}\n{}", registry.log());
    eprintln!(
        "pushed {} bytes of .wasm to a loopback registry in {} ms (chunked): {stderr}",
        wasm.len(),
        took.as_millis()
    );
    assert_eq!(printed, offline);
    assert_eq!(read_back(&registry, "graylane/graylane", "0.1.0", &wasm, None), printed);
    assert!(!stderr.contains("HTTP Basic"), "{stderr}");

    // Again: the same digest, nothing to upload but the manifest.
    let (code, again, stderr, _) = push(&["--wasm", wasm_file, &reference]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again, offline);
    assert!(stderr.contains("0 of 2 blobs sent"), "{stderr}");

    // Monolithic uploads, to a repository of their own: the same digest.
    let other = registry.reference("other/plugin:v1");
    let (code, monolithic, stderr, took) = push(&["--monolithic", "--wasm", wasm_file, &other]);
    assert_eq!(code, 0, "{stderr}");
    eprintln!("monolithic push: {} ms", took.as_millis());
    assert_eq!(monolithic, offline);
    assert!(stderr.contains("2 of 2 blobs sent"), "{stderr}");
    assert_eq!(read_back(&registry, "other/plugin", "v1", &wasm, None), offline);

    // By digest, as a WasmPlugin url may name it.
    assert_eq!(read_back(&registry, "other/plugin", &offline, &wasm, None), offline);

    // A reference pinning another digest is refused.
    let pinned = registry.reference(&format!("other/plugin@sha256:{}", "0".repeat(64)));
    let (code, _, stderr, _) = push(&["--wasm", wasm_file, &pinned]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the reference pins sha256:0000"), "{stderr}");
}

#[test]
fn a_registry_with_basic_auth_takes_credentials_and_refuses_without() {
    let (user, password) = ("graylane", "s3cret-pass");
    let registry = Registry::start("basic", &Auth::Htpasswd { user, password });
    let (wasm_file, wasm) = plugin();
    let reference = registry.reference("graylane/graylane:0.1.0");

    let (code, printed, stderr, _) = push(&["--wasm", wasm_file, &reference]);
    assert_eq!(code, 1, "a push without credentials succeeded: {printed}");
    assert!(printed.is_empty());
    assert!(
        stderr.contains("push failed") && stderr.contains("wants credentials") && stderr.contains("--username"),
        "{stderr}"
    );

    let (code, _, stderr, _) = push(&["--username", user, "--password", "wrong", "--wasm", wasm_file, &reference]);
    assert_eq!(code, 1);
    assert!(stderr.contains("refused these credentials"), "{stderr}");

    let (code, printed, stderr, _) = push(&["--username", user, "--password", password, "--wasm", wasm_file, &reference]);
    assert_eq!(code, 0, "{stderr}\n{}", registry.log());
    let offline = graylane(&["image", "digest", "--wasm", wasm_file]).stdout.trim().to_string();
    assert_eq!(printed, offline);
    // Istio cannot pull from such a registry: the command says so.
    assert!(stderr.contains("HTTP Basic") && stderr.contains("Istio"), "{stderr}");
    let basic = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
    assert_eq!(read_back(&registry, "graylane/graylane", "0.1.0", &wasm, Some(&basic)), printed);
    let anonymous = registry.get("/v2/graylane/graylane/manifests/0.1.0", Some(MANIFEST), None);
    assert_eq!(anonymous.status, 401);

    // Credentials from Docker's config.json (written whole, then renamed in,
    // so that a push of the other test never reads half a file).
    let dir = docker_config_dir();
    let auths = serde_json::json!({
        "auths": {registry.addr.to_string(): {"auth": base64(format!("{user}:{password}").as_bytes())}}
    });
    std::fs::write(dir.join("config.json.tmp"), auths.to_string()).unwrap();
    std::fs::rename(dir.join("config.json.tmp"), dir.join("config.json")).unwrap();
    let (code, printed, stderr, _) = push(&["--wasm", wasm_file, &registry.reference("from/config:1")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(printed, offline);
}

/// The token service of a registry with `auth: token` (the scheme Istio can
/// pull through): an RSA key and its self-signed certificate (made with the
/// openssl command), and one token, signed RS256 with the certificate in
/// `x5c`, granting pull and push on `repositories`. It is handed out over
/// HTTP to a client that sends `user` and `password` as Basic credentials;
/// others get 401.
struct TokenServer {
    addr: SocketAddr,
    token: String,
    certificate: PathBuf,
}

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run openssl (Debian package openssl)");
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

impl TokenServer {
    fn start(label: &str, user: &str, password: &str, repositories: &[&str]) -> TokenServer {
        let dir = std::env::temp_dir().join(format!("graylane-token-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        let certificate = dir.join("cert.pem");
        let (key_arg, certificate_arg) = (key.to_str().unwrap(), certificate.to_str().unwrap());
        openssl(
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key_arg, "-out", certificate_arg,
              "-days", "2", "-subj", "/CN=graylane-test-token"],
            None,
        );
        let der = openssl(&["x509", "-in", certificate_arg, "-outform", "DER"], None);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [base64(&der)]});
        let access: Vec<Value> = repositories
            .iter()
            .map(|name| serde_json::json!({"type": "repository", "name": name, "actions": ["pull", "push"]}))
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60,
            "jti": format!("graylane-test-{}", std::process::id()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let signature = openssl(&["dgst", "-sha256", "-sign", key_arg], Some(signing_input.as_bytes()));
        let token = format!("{signing_input}.{}", base64url(&signature));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = format!("basic {}", base64(format!("{user}:{password}").as_bytes()));
        let answer_token = token.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    let lower = line.trim().to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("authorization:") {
                        authorized = value.trim() == expected.to_ascii_lowercase();
                    }
                }
                let (status, body) = if authorized {
                    ("200 OK", serde_json::json!({"token": answer_token, "expires_in": 3600}).to_string())
                } else {
                    ("401 Unauthorized", r#"{"details":"wrong or no credentials"}"#.to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer { addr, token, certificate }
    }
}

#[test]
fn a_registry_with_token_auth_takes_credentials_and_refuses_without() {
    let (user, password) = ("graylane", "token-pass");
    let tokens = TokenServer::start("token", user, password, &["graylane/graylane"]);
    let registry = Registry::start(
        "token",
        &Auth::Token {
            realm: format!("http://{}/token", tokens.addr),
            certificate: tokens.certificate.clone(),
        },
    );
    let (wasm_file, wasm) = plugin();
    let reference = registry.reference("graylane/graylane:0.1.0");

    let (code, printed, stderr, _) = push(&["--wasm", wasm_file, &reference]);
    assert_eq!(code, 1, "a push without credentials succeeded: {printed}");
    assert!(stderr.contains("push failed") && stderr.contains("wants credentials"), "{stderr}");

    let (code, printed, stderr, _) = push(&["--username", user, "--password", password, "--wasm", wasm_file, &reference]);
    assert_eq!(code, 0, "{stderr}\n{}", registry.log());
    let offline = graylane(&["image", "digest", "--wasm", wasm_file]).stdout.trim().to_string();
    assert_eq!(printed, offline);
    // A token registry is one Istio pulls from: no warning.
    assert!(!stderr.contains("HTTP Basic"), "{stderr}");
    let bearer = format!("Bearer {}", tokens.token);
    assert_eq!(read_back(&registry, "graylane/graylane", "0.1.0", &wasm, Some(&bearer)), printed);
}

#[test]
fn the_test_base64_is_base64() {
    assert_eq!(base64(b"graylane:s3cret"), "Z3JheWxhbmU6czNjcmV0");
    assert_eq!(base64(b"a"), "YQ==");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}
