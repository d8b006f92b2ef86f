//! The proxy: one listener per role, each request checked against [`crate::rules`] and
//! forwarded to the engine's socket on a connection of its own; bodies are streamed both
//! ways and HTTP upgrades (exec start) are spliced once both sides switched protocols.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::rules::{self, Check, Role};

/// A body either way: the engine's or the client's streamed, or one of ours.
type Body = BoxBody<Bytes, hyper::Error>;

/// The largest exec or create body read for checking (Docker's are a few KiB).
const MAX_CHECKED_BODY: usize = 1 << 20;

/// What can go wrong setting up a listener.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket could not be bound (directory missing, permissions).
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds `path` for `role` (replacing a stale socket a previous run left), readable and
/// writable by its owner and group only.
pub fn bind(path: &Path) -> Result<UnixListener, ProxyError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let bind_err = |source| ProxyError::Bind { path: path.to_owned(), source };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves `role` on `listener` until `cancel`, forwarding what it may call to the engine at
/// `upstream`. Connections in progress are left to finish on their own tasks.
pub async fn serve(
    listener: UnixListener,
    role: Role,
    upstream: PathBuf,
    cancel: CancellationToken,
) {
    let upstream = Arc::new(upstream);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(%role, error = %e, "accept failed");
                    continue;
                }
            },
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let upstream = upstream.clone();
                async move { Ok::<_, Infallible>(handle(req, role, &upstream).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(%role, error = %e, "client connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, role: Role, upstream: &Path) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let rule = match rules::decide(role, &method, &path) {
        Ok(rule) => rule,
        Err(refusal) => {
            // Read what the client sends first (bounded): closing on a client still writing
            // its body would show it a broken pipe instead of the refusal.
            let _ = Limited::new(req.into_body(), MAX_CHECKED_BODY).collect().await;
            return refuse(role, &method, &path, &refusal.to_string());
        }
    };
    let checked = match rule.check {
        Check::None => Ok(req.map(|b| b.boxed())),
        Check::Target => check_target(req, upstream).await,
        Check::CertRead => match rules::check_cert_read(req.uri().query()) {
            Ok(()) => check_target(req, upstream).await,
            Err(reason) => Err(Denied::Refused(reason)),
        },
        Check::ImageRemove => {
            match rules::check_image_remove(req.uri().path(), req.uri().query()) {
                Ok(()) => Ok(req.map(|b| b.boxed())),
                Err(reason) => Err(Denied::Refused(reason)),
            }
        }
        Check::Exec | Check::Create | Check::VolumeCreate => {
            check_body(req, role, rule.check, upstream).await
        }
    };
    let req = match checked {
        Ok(req) => req,
        Err(Denied::Refused(reason)) => return refuse(role, &method, &path, &reason),
        Err(Denied::Failed(reason)) => return error(StatusCode::BAD_GATEWAY, &reason),
    };
    match forward(req, upstream).await {
        Ok(response) => {
            tracing::debug!(%role, %method, %path, status = response.status().as_u16(), "forwarded");
            response
        }
        Err(reason) => {
            tracing::warn!(%role, %method, %path, %reason, "engine unreachable");
            error(StatusCode::BAD_GATEWAY, &reason)
        }
    }
}

/// A request not forwarded: refused by policy, or its check could not be made.
enum Denied {
    Refused(String),
    Failed(String),
}

fn refuse(role: Role, method: &str, path: &str, reason: &str) -> Response<Body> {
    tracing::warn!(%role, %method, %path, %reason, "refused");
    error(StatusCode::FORBIDDEN, &format!("steward-sockproxy: {reason}"))
}

/// An error as Docker words its own: `{"message": "..."}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Reads an exec's or a create's body (bounded), checks it, and the containers it names.
async fn check_body(
    req: Request<Incoming>,
    role: Role,
    check: Check,
    upstream: &Path,
) -> Result<Request<Body>, Denied> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_CHECKED_BODY)
        .collect()
        .await
        .map_err(|e| Denied::Refused(format!("unreadable body: {e}")))?
        .to_bytes();
    let json: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Denied::Refused(format!("body is not JSON: {e}")))?
    };
    rules::check_unambiguous(&json).map_err(Denied::Refused)?;
    let targets = match check {
        Check::Exec => {
            rules::check_exec(role, &json).map_err(Denied::Refused)?;
            rules::container_of(parts.uri.path()).map(str::to_owned).into_iter().collect()
        }
        Check::VolumeCreate => {
            rules::check_volume_create(&json).map_err(Denied::Refused)?;
            vec![]
        }
        _ => {
            let named = rules::check_create(role, &json).map_err(Denied::Refused)?;
            // The deployer's creates come from a repository. (The updater recreates what runs:
            // Steward's own services mount their sockets' volumes, and a self-update must
            // recreate them; the backup's shapes mount no named volume.)
            if role == Role::Deployer {
                ensure_not_protected_volumes(&named.volumes, upstream).await?;
            }
            named.containers
        }
    };
    for target in targets {
        ensure_unprotected(&target, upstream).await?;
    }
    // What was checked is what is forwarded: the body as read here, written again (a key
    // given twice reaches the engine once, as the last of the twins that was checked; the
    // engine would have merged both).
    let mut json = json;
    // The one change the proxy makes to a request: a compose one-off made fit for Podman
    // (`rules::one_off_for_podman`). The deployer's test and pre-deployment commands are
    // such one-offs.
    if check == Check::Create && role == Role::Deployer {
        let mut changed = json.clone();
        let removed = rules::one_off_for_podman(&mut changed);
        if !removed.is_empty() && engine_is_podman(upstream).await? {
            tracing::debug!(%role, ?removed, "a compose one-off made fit for Podman");
            json = changed;
        }
    }
    let bytes = if json.is_null() { bytes } else { Bytes::from(json.to_string()) };
    let mut parts = parts;
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    parts.headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok(Request::from_parts(parts, full(bytes)))
}

/// Whether the engine at `upstream` is Podman (its version names a Podman component).
async fn engine_is_podman(upstream: &Path) -> Result<bool, Denied> {
    let version = engine_json("/version", "the engine's version", upstream).await?;
    let components = version.as_ref().and_then(|v| v.get("Components")).and_then(|c| c.as_array());
    Ok(components
        .into_iter()
        .flatten()
        .any(|c| c.get("Name").and_then(|n| n.as_str()).is_some_and(|n| n.starts_with("Podman"))))
}

async fn check_target(req: Request<Incoming>, upstream: &Path) -> Result<Request<Body>, Denied> {
    if let Some(target) = rules::container_of(req.uri().path()) {
        ensure_unprotected(target, upstream).await?;
    }
    Ok(req.map(|b| b.boxed()))
}

/// Refuses named volumes that a proxy's container mounts (they hold the other roles' sockets).
async fn ensure_not_protected_volumes(volumes: &[String], upstream: &Path) -> Result<(), Denied> {
    if volumes.is_empty() {
        return Ok(());
    }
    let filter = format!("{{\"label\":[\"{}\"]}}", rules::PROTECTED_LABEL);
    let path = format!("/containers/json?all=1&filters={}", url_encode(&filter));
    let json = engine_json(&path, "the proxy's containers", upstream).await?.unwrap_or_default();
    for container in json.as_array().map(Vec::as_slice).unwrap_or_default() {
        let theirs = rules::named_volumes(container);
        if let Some(v) = volumes.iter().find(|v| theirs.contains(v)) {
            return Err(Denied::Refused(format!(
                "volume {v} is the socket proxy's (it holds a role's socket)"
            )));
        }
    }
    Ok(())
}

/// The engine's JSON answer to `GET path` (`what` it is, for errors); `None` for a 404.
async fn engine_json(
    path: &str,
    what: &str,
    upstream: &Path,
) -> Result<Option<serde_json::Value>, Denied> {
    let request = Request::get(path)
        .header(HOST, "docker")
        .body(full(Bytes::new()))
        .map_err(|e| Denied::Refused(format!("cannot ask for {what}: {e}")))?;
    let response = forward(request, upstream).await.map_err(Denied::Failed)?;
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(Denied::Failed(format!(
            "cannot read {what} to check it: {}",
            response.status()
        )));
    }
    let body = Limited::new(response.into_body(), 16 * MAX_CHECKED_BODY)
        .collect()
        .await
        .map_err(|e| Denied::Failed(format!("cannot read {what}: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Denied::Failed(format!("cannot read {what}: {e}")))
}

/// `s` percent-encoded for a query value (everything but unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Refuses a container that is the proxy's own (or holds the socket); one the engine does not
/// know passes (the engine answers 404 for it itself).
async fn ensure_unprotected(container: &str, upstream: &Path) -> Result<(), Denied> {
    let what = format!("container {container}");
    let Some(json) = engine_json(&format!("/containers/{container}/json"), &what, upstream).await?
    else {
        return Ok(());
    };
    if rules::is_protected(&json) {
        return Err(Denied::Refused(format!(
            "{container} is the socket proxy's container (or holds the Docker socket)"
        )));
    }
    Ok(())
}

/// Sends `req` to the engine on a fresh connection; when both sides switch protocols (an
/// exec start), the two upgraded connections are spliced on a task of their own.
async fn forward(mut req: Request<Body>, upstream: &Path) -> Result<Response<Body>, String> {
    let client_upgrade = req.headers().contains_key(UPGRADE).then(|| hyper::upgrade::on(&mut req));
    let stream = UnixStream::connect(upstream)
        .await
        .map_err(|e| format!("cannot reach the engine at {}: {e}", upstream.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("engine handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "engine connection ended with an error");
        }
    });
    let mut response =
        sender.send_request(req).await.map_err(|e| format!("engine request failed: {e}"))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let engine_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, engine_upgrade) {
                    Ok((client, engine)) => {
                        let (mut client, mut engine) = (TokioIo::new(client), TokioIo::new(engine));
                        // Each direction's end is passed on as a shutdown (an exec's stdin EOF).
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut engine).await
                        {
                            tracing::debug!(error = %e, "upgraded stream ended with an error");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "upgrade failed"),
                }
            });
        }
    }
    Ok(response.map(|b| b.boxed()))
}

/// `GET /_ping` through the socket at `path`: what the healthcheck asks each listener.
pub async fn ping(path: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tokio::spawn(connection);
    let req = Request::get("/_ping")
        .header(HOST, "docker")
        .body(full(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response =
        sender.send_request(req).await.map_err(|e| format!("{}: {e}", path.display()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{}: {}", path.display(), response.status()))
    }
}
