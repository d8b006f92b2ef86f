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

/// Media types accepted for a manifest HEAD: indexes first, as `docker pull` sends them.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

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
        let host = self.host(reference.as_oci().resolve_registry());
        let tag = reference.tag().unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            host.scheme,
            host.name,
            reference.repository(),
            tag
        );
        // One retry for a stale token, and for 429s whose wait is within the bound.
        let mut refreshed_auth = false;
        for _ in 0..4 {
            self.wait_for_gate(&host).await?;
            let _permit = host.permits.acquire().await.map_err(|_| RegistryError::Unreachable {
                registry: host.name.clone(),
                reason: "shutting down".into(),
            })?;
            let auth = self.authorization(&host, reference).await?;
            let mut request = self.http.head(&url).header(reqwest::header::ACCEPT, MANIFEST_TYPES);
            if let Some(auth) = &auth {
                request = request.header(reqwest::header::AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(|e| unreachable(&host, e))?;
            let status = response.status();
            match status.as_u16() {
                200 => {
                    let digest = response
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| RegistryError::Protocol {
                            registry: host.name.clone(),
                            reason: format!("HEAD {url} returned no Docker-Content-Digest"),
                        })?;
                    return Digest::parse(digest).map_err(|e| RegistryError::Protocol {
                        registry: host.name.clone(),
                        reason: e.to_string(),
                    });
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
                        reference: reference.to_string(),
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
    steward_engine::registry_credentials(reference).map(|c| match c {
        steward_engine::RegistryCredentials::Basic(user, pass) => RegistryAuth::Basic(user, pass),
        steward_engine::RegistryCredentials::IdentityToken(token) => RegistryAuth::Bearer(token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
