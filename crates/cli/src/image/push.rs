//! Pushing an [`Image`] to a registry over the OCI distribution API, with
//! oci-client: the layer and the config as blobs (skipped when the registry
//! has them), then the manifest, byte for byte as [`Image`] made it, so that
//! the registry's digest is the one `graylane image digest` prints.

use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::{Image, ImageError, MANIFEST_MEDIA_TYPE};

/// Who pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `--username` and `--password`.
    Given { username: String, password: String },
    /// From Docker's `config.json` (`$DOCKER_CONFIG`, else `~/.docker`):
    /// `auths` entries and credential helpers; none there is anonymous.
    DockerConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    pub credentials: Credentials,
    /// One PUT per blob instead of a chunked upload (POST, PATCH…, PUT).
    pub monolithic: bool,
    /// Plain HTTP for this registry even if it is not on loopback.
    pub plain_http: bool,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// Blobs sent (the others were in the registry already).
    pub blobs_sent: usize,
    pub elapsed: Duration,
    /// Anything the user should know (an HTTP Basic registry Istio cannot
    /// pull from, credentials not found).
    pub notes: Vec<String>,
}

/// Pushes `image` to `reference` (`registry/repository[:tag][@sha256:…]`;
/// no tag means `latest`). Plain HTTP for a registry on loopback
/// (`localhost`, `127.0.0.0/8`, `[::1]`) or with `plain_http`, HTTPS
/// otherwise.
pub fn push(image: &Image, reference: &str, options: &PushOptions) -> Result<Pushed, ImageError> {
    let parsed: Reference = reference.parse().map_err(|e| {
        ImageError(format!(
            "{reference}: not an image reference ({e}); write REGISTRY/REPOSITORY[:TAG]"
        ))
    })?;
    if let Some(pinned) = parsed.digest() {
        if pinned != image.digest() {
            return Err(ImageError(format!(
                "{reference}: the reference pins {pinned}, but this .wasm's image is {}",
                image.digest()
            )));
        }
    }
    // Installing twice (a second push in the same process) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ImageError(format!("cannot start the I/O runtime: {e}")))?;
    runtime.block_on(push_async(image, reference, &parsed, options))
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The key of the registry in Docker's config.json.
fn docker_config_key(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    }
}

fn credentials(
    registry: &str,
    options: &PushOptions,
    notes: &mut Vec<String>,
) -> Result<RegistryAuth, ImageError> {
    use docker_credential::{CredentialRetrievalError as Missing, DockerCredential};
    match &options.credentials {
        Credentials::Given { username, password } => Ok(RegistryAuth::Basic(username.clone(), password.clone())),
        Credentials::DockerConfig => match docker_credential::get_credential(docker_config_key(registry)) {
            Ok(DockerCredential::UsernamePassword(username, password)) => Ok(RegistryAuth::Basic(username, password)),
            Ok(DockerCredential::IdentityToken(_)) => Err(ImageError(format!(
                "{registry}: Docker's config.json holds an identity token for this registry, which graylane cannot \
                 use; give --username and --password"
            ))),
            Err(Missing::NoCredentialConfigured | Missing::ConfigNotFound | Missing::ConfigReadError) => {
                notes.push(format!(
                    "no credentials for {registry} in Docker's config.json: pushing anonymously"
                ));
                Ok(RegistryAuth::Anonymous)
            }
            Err(e) => Err(ImageError(format!(
                "{registry}: cannot read the credentials in Docker's config.json: {e}"
            ))),
        },
    }
}

/// What the registry's `/v2/` answers without credentials: `Some(true)` for
/// an HTTP Basic challenge.
async fn basic_challenge(client: &reqwest::Client, scheme: &str, registry: &str) -> Option<bool> {
    let answer = client
        .get(format!("{scheme}://{registry}/v2/"))
        .send()
        .await
        .ok()?;
    let challenge = answer.headers().get(reqwest::header::WWW_AUTHENTICATE)?;
    let challenge = challenge.to_str().ok()?.trim_start();
    Some(
        challenge.len() >= 5
            && challenge
                .get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("basic")),
    )
}

async fn push_async(
    image: &Image,
    reference: &str,
    parsed: &Reference,
    options: &PushOptions,
) -> Result<Pushed, ImageError> {
    let started = Instant::now();
    let registry = parsed.resolve_registry().to_string();
    let plain = options.plain_http || is_loopback(&registry);
    let mut notes = Vec::new();
    let auth = credentials(&registry, options, &mut notes)?;
    let config = ClientConfig {
        protocol: if plain {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: options.monolithic,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    let client = Client::new(config);
    let failed =
        |step: &str, error: OciDistributionError| explain(reference, &registry, step, &auth, error);
    client
        .auth(parsed, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| failed("authenticating", e))?;
    let mut blobs_sent = 0;
    for blob in [&image.layer, &image.config] {
        let present = client
            .blob_exists(parsed, &blob.digest)
            .await
            .map_err(|e| failed("asking for a blob", e))?;
        if !present {
            client
                .push_blob(parsed, blob.bytes.clone(), &blob.digest)
                .await
                .map_err(|e| failed(&format!("uploading {}", blob.digest), e))?;
            blobs_sent += 1;
        }
    }
    client
        .push_manifest_raw(
            parsed,
            image.manifest.bytes.clone(),
            reqwest::header::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(|e| failed("uploading the manifest", e))?;
    let elapsed = started.elapsed();
    // Istio 1.27.8+, 1.28.5+, 1.29.1+ and 1.30+ pull only from registries
    // that use token auth or none: say so when this one asks for Basic.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ImageError(format!("cannot make an HTTP client: {e}")))?;
    if basic_challenge(&probe, if plain { "http" } else { "https" }, &registry).await == Some(true)
    {
        notes.push(format!(
            "{registry} asks for HTTP Basic authentication: Istio 1.27.8+, 1.28.5+, 1.29.1+ and 1.30+ cannot \
             pull from it (they pull only from token-auth or anonymous registries)"
        ));
    }
    Ok(Pushed {
        digest: image.digest().to_string(),
        blobs_sent,
        elapsed,
        notes,
    })
}

/// A registry error as the user should read it: what was being done, where,
/// and what to do about a refusal.
fn explain(
    reference: &str,
    registry: &str,
    step: &str,
    auth: &RegistryAuth,
    error: OciDistributionError,
) -> ImageError {
    let refused = match &error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RequestError(error) => error
            .status()
            .is_some_and(|status| status.as_u16() == 401 || status.as_u16() == 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                oci_client::errors::OciErrorCode::Unauthorized
                    | oci_client::errors::OciErrorCode::Denied
            )
        }),
        _ => false,
    };
    let hint = if !refused {
        String::new()
    } else if matches!(auth, RegistryAuth::Anonymous) {
        format!(
            "; the registry wants credentials: give --username and --password, or log in to {registry} with \
             docker login (graylane reads Docker's config.json)"
        )
    } else {
        "; the registry refused these credentials (check the user name, the password and the right to push to \
         this repository)"
            .to_string()
    };
    ImageError(format!(
        "{reference}: push failed while {step}: {error}{hint}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for registry in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in [
            "registry.example.com",
            "10.0.0.1:5000",
            "ghcr.io",
            "[2001:db8::1]:443",
        ] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }

    #[test]
    fn a_reference_pinning_another_digest_is_refused_before_any_connection() {
        let image = Image::from_wasm(b"\0asm\x01\0\0\0", "x.wasm").unwrap();
        let options = PushOptions {
            credentials: Credentials::DockerConfig,
            monolithic: false,
            plain_http: false,
        };
        let other = format!("127.0.0.1:9/graylane@sha256:{}", "a".repeat(64));
        let error = push(&image, &other, &options).unwrap_err();
        assert!(
            error.0.contains("the reference pins sha256:aaaa"),
            "{error}"
        );
        let bad = push(&image, "Not A Reference", &options).unwrap_err();
        assert!(
            bad.0.starts_with("Not A Reference: not an image reference"),
            "{bad}"
        );
    }
}
