//! The push webhook (`POST /deploy/webhook`): Gitea's `X-Gitea-Signature` (or GitHub's
//! `X-Hub-Signature-256: sha256=...`), HMAC-SHA256 in hex over the raw body with the
//! webhook secret, checked in constant time before the body is parsed. Unsigned or badly
//! signed requests get 401 and are counted (`steward_deploy_webhook_refused_total`); a body
//! over [`MAX_WEBHOOK_BYTES`] gets 413 unread; a push to a repository or branch that is not
//! configured gets 422; a valid push becomes `deploy.requested` (202).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use sha2::Sha256;
use steward_bus::Bus;
use steward_events::{Change, DeployRequested, Event};

use crate::config::{DeployerConfig, Environment, MAX_WEBHOOK_BYTES};
use crate::git::is_commit_id;

/// Where the webhook is served.
pub const PATH: &str = "/deploy/webhook";

/// Why a request was refused, as the metric's label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    /// `unsigned`, `bad_signature`.
    pub reason: String,
}

#[derive(Clone)]
struct Hook {
    bus: Bus,
    cfg: Arc<DeployerConfig>,
    secret: Arc<Vec<u8>>,
    source: String,
    refused: Family<RefusedLabel, Counter>,
}

/// The webhook's routes, its refusals counted in `refused`.
pub fn router(
    bus: Bus,
    cfg: Arc<DeployerConfig>,
    secret: String,
    source: String,
    refused: Family<RefusedLabel, Counter>,
) -> axum::Router {
    let hook = Hook { bus, cfg, secret: Arc::new(secret.into_bytes()), source, refused };
    axum::Router::new()
        .route(PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(hook)
}

/// Whether `signature` (hex, optionally `sha256=`) is the HMAC-SHA256 of `body` under
/// `secret`; compared in constant time (`verify_slice`).
pub fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let hex_sig = signature.trim().strip_prefix("sha256=").unwrap_or(signature.trim());
    let Ok(expected) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The part of Gitea's (and GitHub's) push payload the deployer reads.
#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    repository: Repository,
    #[serde(default)]
    head_commit: Option<Commit>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Commit {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    author: Option<Person>,
}

#[derive(Debug, Deserialize)]
struct Person {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// A repository URL as compared: no credentials, no trailing `/` or `.git`, lower-case host.
fn comparable(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_ascii_lowercase() };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{}/{path}", host.to_ascii_lowercase())
}

async fn receive(
    State(hook): State<Hook>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let signature = headers
        .get("x-gitea-signature")
        .or_else(|| headers.get("x-hub-signature-256"))
        .and_then(|v| v.to_str().ok());
    let refuse = |reason: &str| {
        hook.refused.get_or_create(&RefusedLabel { reason: reason.into() }).inc();
        tracing::warn!(reason, "webhook request refused");
        (StatusCode::UNAUTHORIZED, "signature missing or wrong\n".to_owned())
    };
    let Some(signature) = signature else { return refuse("unsigned") };
    if !signature_ok(&hook.secret, &body, signature) {
        return refuse("bad_signature");
    }
    let event_kind = headers.get("x-gitea-event").or_else(|| headers.get("x-github-event"));
    if let Some(kind) = event_kind.and_then(|v| v.to_str().ok()) {
        if kind != "push" {
            return (StatusCode::ACCEPTED, format!("{kind} events are not deployed; ignored\n"));
        }
    }
    let push: Push = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a push payload: {e}\n")),
    };
    let named = [&push.repository.clone_url, &push.repository.ssh_url, &push.repository.html_url];
    let named: Vec<String> = named.iter().filter_map(|u| u.as_deref().map(comparable)).collect();
    // One URL may be configured under several names (two compose projects in one repository).
    let repositories: Vec<&str> = (hook.cfg.repositories.iter())
        .filter(|r| named.contains(&comparable(&r.url)))
        .map(|r| r.project.as_str())
        .collect();
    if repositories.is_empty() {
        return (StatusCode::UNPROCESSABLE_ENTITY, "not a configured repository\n".into());
    }
    let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
        return (StatusCode::ACCEPTED, format!("{} is not a branch; ignored\n", push.git_ref));
    };
    let environments: Vec<&Environment> =
        repositories.iter().filter_map(|r| hook.cfg.environment_of_branch(r, branch)).collect();
    if environments.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("branch {branch} deploys to no environment\n"),
        );
    }
    if push.after.bytes().all(|b| b == b'0') {
        return (StatusCode::ACCEPTED, format!("branch {branch} deleted; nothing deployed\n"));
    }
    if !is_commit_id(&push.after) {
        return (StatusCode::BAD_REQUEST, "`after` is not a commit id\n".into());
    }
    let head = push.head_commit.as_ref();
    let author = head.and_then(|c| c.author.as_ref()).and_then(|a| match (&a.name, &a.email) {
        (Some(n), Some(e)) => Some(format!("{n} <{e}>")),
        (Some(n), None) => Some(n.clone()),
        _ => None,
    });
    let message =
        head.and_then(|c| c.message.as_deref()).and_then(|m| m.lines().next()).map(str::to_owned);
    let mut ids = vec![];
    for env in environments {
        let change = Change {
            repository: hook.cfg.repository_of(&env.name).shown(),
            branch: branch.to_owned(),
            environment: env.name.clone(),
            commit: push.after.clone(),
            author: author.clone(),
            message: message.clone(),
        };
        let requested_by = Some("webhook".into());
        let event = Event::new(&hook.source, DeployRequested { change, requested_by });
        if let Err(e) = hook.bus.publish(&event).await {
            // Gitea delivers again on a 5xx; what was published is not news then.
            tracing::error!(error = %e, "could not publish deploy.requested");
            let busy = "the bus did not take the request; try again\n";
            return (StatusCode::SERVICE_UNAVAILABLE, busy.into());
        }
        tracing::info!(branch, commit = %push.after, environment = %env.name, "push received");
        ids.push(format!("\"{}\"", event.id));
    }
    let body = match ids.as_slice() {
        [one] => format!("{{\"event\":{one}}}\n"),
        all => format!("{{\"events\":[{}]}}\n", all.join(",")),
    };
    (StatusCode::ACCEPTED, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("key");
        mac.update(b"body");
        let sig = hex::encode(mac.finalize().into_bytes());
        assert!(signature_ok(b"k", b"body", &sig));
        assert!(signature_ok(b"k", b"body", &format!("sha256={sig}")));
        assert!(!signature_ok(b"k", b"body!", &sig));
        assert!(!signature_ok(b"k", b"body", "zz"));
        assert!(!signature_ok(b"k", b"body", ""));
    }

    #[test]
    fn repositories_compare_without_credentials_and_suffixes() {
        assert_eq!(
            comparable("https://u:p@Git.example.com/o/r.git/"),
            comparable("https://git.example.com/o/r")
        );
    }
}
