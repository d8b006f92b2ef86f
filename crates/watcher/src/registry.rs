//! Asking registries for the digest behind a tag, politely.
//!
//! - Auth: anonymous, basic and the bearer-token flow (Docker Hub, GHCR) come from the
//!   `oci-client` crate (challenge parsing, token request per repository scope); credentials
//!   from the operator's Docker `config.json` (`docker_credential`, incl. credential helpers).
//! - The digest comes from a `HEAD` of the manifest with every manifest and index media type
//!   accepted, so the registry answers with the digest `docker pull` records (the index digest
//!   for multi-arch images) and Docker Hub does not count it against pull limits. We send the
//!   HEAD ourselves rather than through `oci-client`, whose digest call hides `Retry-After`
//!   and falls back to a counted `GET` when rate-limited.
//! - Per registry: a bounded number of requests in flight, and a gate closed until the time a
//!   429's `Retry-After` names; one slow or dead registry only costs its own timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use steward_events::Digest;
use steward_imageref::ImageRef;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

/// Media types accepted for a manifest HEAD: indexes first, as `docker pull` sends them.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or index read (Docker Hub's limit is 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config read (labels and history; real ones are a few KiB).
const MAX_CONFIG: usize = 8 << 20;

/// What the watcher reads of a new image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `config.Labels`.
    pub labels: HashMap<String, String>,
    /// `created` (RFC 3339), as the image says.
    pub created: Option<String>,
}

impl ImageConfig {
    /// Reads `config.Labels` and `created`; anything of another shape is left out.
    fn from_json(config: &serde_json::Value) -> Self {
        let labels = config
            .get("config")
            .and_then(|c| c.get("Labels"))
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
            })
            .unwrap_or_default();
        let created = config.get("created").and_then(|c| c.as_str()).map(str::to_owned);
        Self { labels, created }
    }
}

/// Whether `body` is the content `digest` names (sha256 or sha512); why not, if not.
fn matches_digest(body: &[u8], digest: &Digest) -> Result<(), String> {
    use sha2::Digest as _;
    let text = digest.to_string();
    let Some((algorithm, want)) = text.split_once(':') else {
        return Err(format!("{text}: not a digest"));
    };
    let got = match algorithm {
        "sha256" => format!("{:x}", sha2::Sha256::digest(body)),
        "sha512" => format!("{:x}", sha2::Sha512::digest(body)),
        other => return Err(format!("{text}: cannot check a {other} digest")),
    };
    if got == want {
        Ok(())
    } else {
        Err(format!("the registry served content of {algorithm}:{got} for {text}"))
    }
}

/// Whether an index entry is the manifest for this host (attestations have `unknown`).
fn is_host_platform(entry: &serde_json::Value) -> bool {
    let platform = entry.get("platform");
    let field = |name: &str| platform.and_then(|p| p.get(name)).and_then(|v| v.as_str());
    field("os") == Some("linux") && field("architecture") == Some(oci_arch())
}

/// This host's architecture in OCI's words.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Requests in flight per registry.
const PER_REGISTRY: usize = 8;

/// How long an auth decision (token or "anonymous is fine") is reused. Docker Hub's tokens
/// live 300 s.
const AUTH_TTL: Duration = Duration::from_secs(60);

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Timeout of one request.
    pub timeout: Duration,
    /// Longest `Retry-After` waited for within one check; longer ones skip the registry until
    /// the next check.
    pub max_wait: Duration,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

/// Why a registry could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// HTTP 429 (or still inside an earlier 429's `Retry-After`).
    #[error("{registry} is rate limiting (HTTP 429); retry after {retry_after:?}")]
    RateLimited {
        /// Registry host.
        registry: String,
        /// What its `Retry-After` asked for.
        retry_after: Duration,
    },
    /// Any other unexpected status.
    #[error("{registry} answered HTTP {status} for {url}")]
    Status {
        /// Registry host.
        registry: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The tag does not exist (any more).
    #[error("{registry} has no manifest for {reference}")]
    NotFound {
        /// Registry host.
        registry: String,
        /// The reference asked for.
        reference: String,
    },
    /// No connection, or no answer in time.
    #[error("{registry} unreachable: {reason}")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// Why.
        reason: String,
    },
    /// Credentials refused or the token flow failed.
    #[error("{registry} refused authentication: {reason}")]
    Auth {
        /// Registry host.
        registry: String,
        /// Why.
        reason: String,
    },
    /// An answer that breaks the distribution spec.
    #[error("{registry}: {reason}")]
    Protocol {
        /// Registry host.
        registry: String,
        /// What was wrong.
        reason: String,
    },
}

impl RegistryError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::RateLimited { .. } => "rate_limited",
            RegistryError::Status { .. } => "status",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Unreachable { .. } => "unreachable",
            RegistryError::Auth { .. } => "auth",
            RegistryError::Protocol { .. } => "protocol",
        }
    }
}

struct Host {
    name: String,
    scheme: &'static str,
    oci: oci_client::Client,
    permits: Semaphore,
    closed_until: Mutex<Option<Instant>>,
    /// Authorization header per repository (None: anonymous works), and when it was decided.
    auth: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

/// Every registry the watcher talks to.
pub struct Registries {
    cfg: RegistryConfig,
    http: reqwest::Client,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Loopback registries are reached over plain HTTP, as the Docker engine itself allows.
fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

impl Registries {
    /// A client for all registries.
    pub fn new(cfg: RegistryConfig) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("steward-watcher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Protocol { registry: "-".into(), reason: e.to_string() })?;
        Ok(Self { cfg, http, hosts: Mutex::default() })
    }

    fn host(&self, registry: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(registry.to_owned())
            .or_insert_with(|| {
                let plain =
                    is_loopback(registry) || self.cfg.insecure.iter().any(|h| h == registry);
                let oci = oci_client::Client::new(ClientConfig {
                    protocol: if plain { ClientProtocol::Http } else { ClientProtocol::Https },
                    read_timeout: Some(self.cfg.timeout),
                    connect_timeout: Some(self.cfg.timeout),
                    ..Default::default()
                });
                Arc::new(Host {
                    name: registry.to_owned(),
                    scheme: if plain { "http" } else { "https" },
                    oci,
                    permits: Semaphore::new(PER_REGISTRY),
                    closed_until: Mutex::default(),
                    auth: Mutex::default(),
                })
            })
            .clone()
    }

    /// The digest the registry holds for `reference`'s tag.
    pub async fn manifest_digest(&self, reference: &ImageRef) -> Result<Digest, RegistryError> {
        let tag = reference.tag().unwrap_or("latest");
        let (headers, _) = self
            .fetch(reference, reqwest::Method::HEAD, "manifests", tag, MANIFEST_TYPES, 0)
            .await?;
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                registry: reference.as_oci().resolve_registry().to_owned(),
                reason: format!("HEAD of {reference} returned no Docker-Content-Digest"),
            })?;
        Digest::parse(digest).map_err(|e| RegistryError::Protocol {
            registry: reference.as_oci().resolve_registry().to_owned(),
            reason: e.to_string(),
        })
    }

    /// Whether `reference`'s repository holds the manifest `digest` (one `HEAD`).
    pub async fn holds_manifest(
        &self,
        reference: &ImageRef,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let head = self
            .fetch(
                reference,
                reqwest::Method::HEAD,
                "manifests",
                digest.as_str(),
                MANIFEST_TYPES,
                0,
            )
            .await;
        match head {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The labels and build time in the config of the image `digest` of `reference`'s
    /// repository (for an index, of its manifest for this host's platform): two or three
    /// `GET`s, asked only for a newer image, never on every check.
    pub async fn image_config(
        &self,
        reference: &ImageRef,
        digest: &Digest,
    ) -> Result<ImageConfig, RegistryError> {
        let registry = reference.as_oci().resolve_registry().to_owned();
        let protocol =
            |reason: String| RegistryError::Protocol { registry: registry.clone(), reason };
        let mut manifest_digest = digest.clone();
        // An index points at platform manifests; one level of indirection only.
        for _ in 0..2 {
            let (_, body) = self
                .fetch(
                    reference,
                    reqwest::Method::GET,
                    "manifests",
                    &manifest_digest.to_string(),
                    MANIFEST_TYPES,
                    MAX_MANIFEST,
                )
                .await?;
            // Content-addressed: what a registry (or a proxy) serves must be what was asked.
            matches_digest(&body, &manifest_digest).map_err(protocol)?;
            let manifest: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| protocol(format!("manifest {manifest_digest}: {e}")))?;
            if let Some(config) = manifest.get("config") {
                let config_digest = config
                    .get("digest")
                    .and_then(|d| d.as_str())
                    .ok_or_else(|| "no digest".to_owned())
                    .and_then(|d| Digest::parse(d).map_err(|e| e.to_string()))
                    .map_err(|e| protocol(format!("config digest of {manifest_digest}: {e}")))?;
                let (_, blob) = self
                    .fetch(
                        reference,
                        reqwest::Method::GET,
                        "blobs",
                        &config_digest.to_string(),
                        "application/json, */*",
                        MAX_CONFIG,
                    )
                    .await?;
                matches_digest(&blob, &config_digest).map_err(protocol)?;
                let config: serde_json::Value = serde_json::from_slice(&blob)
                    .map_err(|e| protocol(format!("image config {config_digest}: {e}")))?;
                return Ok(ImageConfig::from_json(&config));
            }
            let platform = manifest
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .find(|m| is_host_platform(m))
                .and_then(|m| m.get("digest"))
                .and_then(|d| d.as_str())
                .ok_or_else(|| {
                    protocol(format!(
                        "index {manifest_digest} has no manifest for linux/{}",
                        oci_arch()
                    ))
                })?;
            manifest_digest = Digest::parse(platform)
                .map_err(|e| protocol(format!("platform manifest of {manifest_digest}: {e}")))?;
        }
        Err(protocol(format!("index {digest} points at another index")))
    }

    /// One request to `reference`'s repository (`/v2/<repo>/<kind>/<name>`) through the
    /// registry's gate, permits and auth, retried once for a stale token and for 429s within
    /// the bound; the headers and at most `limit` bytes of body of its 200 answer.
    ///
    /// Inside a traced span (a check) it is a `registry <method> <kind>` child span.
    async fn fetch(
        &self,
        reference: &ImageRef,
        method: reqwest::Method,
        kind: &str,
        name: &str,
        accept: &str,
        limit: usize,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), RegistryError> {
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!("registry", otel.name = %format_args!("registry {method} {kind}"),
                otel.kind = "client", registry = reference.as_oci().resolve_registry(),
                repository = reference.repository(), reference = name)
        };
        let fetch = async {
            let host = self.host(reference.as_oci().resolve_registry());
            let url = format!(
                "{}://{}/v2/{}/{kind}/{name}",
                host.scheme,
                host.name,
                reference.repository(),
            );
            let mut refreshed_auth = false;
            for _ in 0..4 {
                self.wait_for_gate(&host).await?;
                let _permit =
                    host.permits.acquire().await.map_err(|_| RegistryError::Unreachable {
                        registry: host.name.clone(),
                        reason: "shutting down".into(),
                    })?;
                let auth = self.authorization(&host, reference).await?;
                let mut request =
                    self.http.request(method.clone(), &url).header(reqwest::header::ACCEPT, accept);
                if let Some(auth) = &auth {
                    request = request.header(reqwest::header::AUTHORIZATION, auth);
                }
                let mut response = request.send().await.map_err(|e| unreachable(&host, e))?;
                let status = response.status();
                match status.as_u16() {
                    200 => {
                        let headers = response.headers().clone();
                        let mut body = vec![];
                        while let Some(chunk) =
                            response.chunk().await.map_err(|e| unreachable(&host, e))?
                        {
                            if body.len().saturating_add(chunk.len()) > limit {
                                return Err(RegistryError::Protocol {
                                    registry: host.name.clone(),
                                    reason: format!("{url} is larger than {limit} bytes"),
                                });
                            }
                            body.extend_from_slice(&chunk);
                        }
                        return Ok((headers, body));
                    }
                    401 | 403 if !refreshed_auth && auth.is_some() => {
                        refreshed_auth = true;
                        self.forget_auth(&host, reference);
                    }
                    401 | 403 => {
                        return Err(RegistryError::Auth {
                            registry: host.name.clone(),
                            reason: format!("HTTP {status} for {url}"),
                        })
                    }
                    404 => {
                        return Err(RegistryError::NotFound {
                            registry: host.name.clone(),
                            reference: format!("{reference} ({kind}/{name})"),
                        })
                    }
                    429 => {
                        let retry_after =
                            retry_after(response.headers()).unwrap_or(Duration::from_secs(60));
                        self.close_gate(&host, retry_after);
                        if retry_after > self.cfg.max_wait {
                            return Err(RegistryError::RateLimited {
                                registry: host.name.clone(),
                                retry_after,
                            });
                        }
                        tracing::warn!(registry = %host.name, ?retry_after, "registry rate limiting; waiting");
                    }
                    _ => {
                        return Err(RegistryError::Status {
                            registry: host.name.clone(),
                            url,
                            status: status.as_u16(),
                        })
                    }
                }
            }
            Err(RegistryError::Protocol {
                registry: host.name.clone(),
                reason: format!("gave up on {url} after retries"),
            })
        };
        fetch.instrument(span).await
    }

    /// Every tag of `reference`'s repository (all pages).
    pub async fn tags(&self, reference: &ImageRef) -> Result<Vec<String>, RegistryError> {
        let host = self.host(reference.as_oci().resolve_registry());
        self.wait_for_gate(&host).await?;
        let _permit = host.permits.acquire().await.map_err(|_| RegistryError::Unreachable {
            registry: host.name.clone(),
            reason: "shutting down".into(),
        })?;
        let auth = credentials(reference).unwrap_or(RegistryAuth::Anonymous);
        let mut tags: Vec<String> = vec![];
        let mut last: Option<String> = None;
        // Bounded: 100 pages of 1,000 tags.
        for _ in 0..100 {
            let page = tokio::time::timeout(
                self.cfg.timeout,
                host.oci.list_tags(reference.as_oci(), &auth, Some(1000), last.as_deref()),
            )
            .await
            .map_err(|_| RegistryError::Unreachable {
                registry: host.name.clone(),
                reason: "timed out listing tags".into(),
            })?
            .map_err(|e| RegistryError::Protocol {
                registry: host.name.clone(),
                reason: format!("listing tags: {e}"),
            })?;
            let done = page.tags.len() < 1000;
            last = page.tags.last().cloned();
            tags.extend(page.tags);
            if done || last.is_none() {
                break;
            }
        }
        Ok(tags)
    }

    async fn wait_for_gate(&self, host: &Host) -> Result<(), RegistryError> {
        let until = *host.closed_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                let wait = until - now;
                if wait > self.cfg.max_wait {
                    return Err(RegistryError::RateLimited {
                        registry: host.name.clone(),
                        retry_after: wait,
                    });
                }
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    fn close_gate(&self, host: &Host, for_: Duration) {
        let mut until = host.closed_until.lock().unwrap_or_else(|p| p.into_inner());
        let new = Instant::now() + for_;
        if until.is_none_or(|u| u < new) {
            *until = Some(new);
        }
    }

    fn forget_auth(&self, host: &Host, reference: &ImageRef) {
        host.auth.lock().unwrap_or_else(|p| p.into_inner()).remove(reference.repository());
    }

    /// The Authorization header for a repository: a bearer token from the registry's token
    /// service, basic credentials, or none (anonymous).
    async fn authorization(
        &self,
        host: &Host,
        reference: &ImageRef,
    ) -> Result<Option<String>, RegistryError> {
        if let Some((header, at)) =
            host.auth.lock().unwrap_or_else(|p| p.into_inner()).get(reference.repository())
        {
            if at.elapsed() < AUTH_TTL {
                return Ok(header.clone());
            }
        }
        let creds = credentials(reference);
        let auth = creds.clone().unwrap_or(RegistryAuth::Anonymous);
        let token = tokio::time::timeout(
            self.cfg.timeout,
            host.oci.auth(reference.as_oci(), &auth, RegistryOperation::Pull),
        )
        .await
        .map_err(|_| RegistryError::Unreachable {
            registry: host.name.clone(),
            reason: "timed out during authentication".into(),
        })?
        .map_err(|e| auth_error(host, e))?;
        let header = match (token, creds) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(RegistryAuth::Basic(user, pass))) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )),
            (None, _) => None,
        };
        host.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.repository().to_owned(), (header.clone(), Instant::now()));
        Ok(header)
    }
}

fn unreachable(host: &Host, e: reqwest::Error) -> RegistryError {
    let reason = if e.is_timeout() { "no answer in time".to_owned() } else { format!("{e}") };
    RegistryError::Unreachable { registry: host.name.clone(), reason }
}

fn auth_error(host: &Host, e: oci_client::errors::OciDistributionError) -> RegistryError {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(e) => unreachable(host, e),
        other => RegistryError::Auth { registry: host.name.clone(), reason: other.to_string() },
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The operator's `docker login` credentials for `reference`'s registry, in oci-client's terms.
fn credentials(reference: &ImageRef) -> Option<RegistryAuth> {
    let found = steward_engine::registry_credentials(reference).unwrap_or_else(|e| {
        // Asked anonymously: a public registry still answers, a private one's refusal is
        // explained by this line.
        tracing::warn!(error = %e, "registry login unusable; asking without credentials");
        None
    });
    found.map(|c| match c {
        steward_engine::RegistryCredentials::Basic(user, pass) => RegistryAuth::Basic(user, pass),
        steward_engine::RegistryCredentials::IdentityToken(token) => RegistryAuth::Bearer(token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sha256:<hex>` of `body`.
    fn digest_of(body: &str) -> String {
        use sha2::Digest as _;
        format!("sha256:{:x}", sha2::Sha256::digest(body.as_bytes()))
    }

    /// A registry on 127.0.0.1 serving one multi-arch index (content-addressed, as a registry
    /// does), its platform manifests and one config per platform, plus `lie`: a manifest
    /// served under a digest that is not its own. The index's digest, the lie's, and the
    /// requests it saw.
    async fn fake_registry() -> (String, String, String, Arc<Mutex<Vec<String>>>) {
        use axum::extract::Path;
        let other = match oci_arch() {
            "amd64" => "arm64",
            _ => "amd64",
        };
        let config = serde_json::json!({
            "created": "2026-01-02T03:04:05Z",
            "config": {"Labels": {"org.opencontainers.image.version": "2.0.0", "odd": 7}}
        })
        .to_string();
        let other_config = serde_json::json!({"config": {"Labels": {}}}).to_string();
        let manifest = |config: &str| {
            serde_json::json!({"schemaVersion": 2, "config": {"digest": digest_of(config)}, "layers": []})
                .to_string()
        };
        let (ours, theirs) = (manifest(&config), manifest(&other_config));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": digest_of(&theirs), "platform": {"os": "linux", "architecture": other}},
                {"digest": format!("sha256:{}", "9".repeat(64)), "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": digest_of(&ours), "platform": {"os": "linux", "architecture": oci_arch()}},
            ]
        })
        .to_string();
        let lie = format!("sha256:{}", "7".repeat(64));
        let index_digest = digest_of(&index);
        let answers: HashMap<String, String> = [
            (format!("manifests/{index_digest}"), index),
            (format!("manifests/{}", digest_of(&theirs)), theirs),
            (format!("manifests/{}", digest_of(&ours)), ours.clone()),
            (format!("manifests/{lie}"), ours),
            (format!("blobs/{}", digest_of(&config)), config),
            (format!("blobs/{}", digest_of(&other_config)), other_config),
        ]
        .into_iter()
        .collect();
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/v2/app/{kind}/{name}",
            axum::routing::get(move |Path((kind, name)): Path<(String, String)>| {
                let key = format!("{kind}/{name}");
                log.lock().unwrap_or_else(|p| p.into_inner()).push(key.clone());
                let body = answers.get(&key).cloned();
                async move {
                    match body {
                        Some(b) => (axum::http::StatusCode::OK, b),
                        None => (axum::http::StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr.to_string(), index_digest, lie, seen)
    }

    #[tokio::test]
    async fn the_config_of_an_index_is_read_for_this_hosts_platform() {
        let (registry, index, lie, seen) = fake_registry().await;
        let registries = Registries::new(RegistryConfig {
            timeout: Duration::from_secs(5),
            max_wait: Duration::from_secs(1),
            insecure: vec![],
        })
        .expect("client");
        let reference = ImageRef::parse(&format!("{registry}/app:1.0")).expect("reference");
        let index = Digest::parse(&index).expect("digest");
        let config = registries.image_config(&reference, &index).await.expect("config");
        assert_eq!(
            config.labels.get("org.opencontainers.image.version").map(String::as_str),
            Some("2.0.0")
        );
        assert!(!config.labels.contains_key("odd"), "a label that is no string is left out");
        assert_eq!(config.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(seen.len(), 3, "index, platform manifest, config: {seen:?}");
        // Only the host's platform's config has the version label: it was the one read.

        let missing = Digest::parse(&format!("sha256:{}", "5".repeat(64))).expect("digest");
        let e = registries.image_config(&reference, &missing).await.expect_err("no such");
        assert_eq!(e.kind(), "not_found");

        // Content that is not what its digest names is refused, not shown.
        let lie = Digest::parse(&lie).expect("digest");
        let e = registries.image_config(&reference, &lie).await.expect_err("a lie");
        assert!(e.to_string().contains("served content of sha256:"), "{e}");
    }

    #[test]
    fn loopback_hosts_are_plain_http() {
        for h in ["127.0.0.1:5000", "localhost:5000", "localhost", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["ghcr.io", "index.docker.io", "registry.example.com:5000", "10.0.0.1:5000"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        h.insert(reqwest::header::RETRY_AFTER, later.parse().expect("header"));
        assert!(retry_after(&h).is_some_and(|d| d > Duration::from_secs(100)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&h), None);
    }
}
