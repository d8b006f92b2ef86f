//! Signed approval links and the page behind them, one implementation for both kinds of
//! decision: image updates (the updater) and deployments (the deployer).
//!
//! A crate of its own rather than part of `steward-bus`: it is HTTP (axum), HTML (minijinja)
//! and HMAC, none of which a bus client needs. What travels on the bus (the link request and
//! reply, [`LinkKind`] and its subjects) stays in `steward_bus::approval`.
//!
//! - [`links`]: minting and checking tokens (the kind is signed).
//! - [`page`]: the page's shell: the decision form, the refusal of a forged or expired
//!   token, the rendering with the headers that keep a token out of caches and referrers.
//! - [`used`]: a link decides once, claimed in its kind's KV bucket before the decision is
//!   published, across processes and restarts.
//! - [`read_links`]: the settings (public URL, secret, validity) by one rule for both.

pub mod links;
pub mod page;
pub mod used;

use std::time::Duration;

use steward_settings::{is_loopback_host, Env};

pub use links::{ApprovalLinks, LinkError, LinkKind};
pub use used::{UsedLink, UsedLinks};

/// The names of one service's link settings (each service has its own: see
/// `docs/configuration.md`).
#[derive(Debug, Clone, Copy)]
pub struct LinkVars {
    /// Base URL under which operators reach the service's HTTP port.
    pub public_url: &'static str,
    /// Key that signs the links.
    pub secret: &'static str,
    /// How long a link stays valid.
    pub ttl: &'static str,
}

/// Default validity of a link: a long weekend.
pub const DEFAULT_TTL: Duration = Duration::from_secs(72 * 3600);

/// Approval links travel in mail and are opened in a browser: over `https`, or `http` only to
/// this machine (a demo, a test), so the token is never readable on the way.
pub fn check_public_url(url: &str) -> Result<(), String> {
    let example = "e.g. https://git.example.com/steward";
    let u =
        reqwest::Url::parse(url).map_err(|e| format!("{e}: expected an https URL, {example}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" if u.host_str().is_some_and(is_loopback_host) => Ok(()),
        "http" => Err(format!(
            "http to a host that is not loopback would expose approval tokens: use https, {example}"
        )),
        _ => Err(format!("expected an https URL, {example}")),
    }
}

/// Reads the links of `kind` from `vars`: `None` when neither URL nor secret is set (approvals
/// by CLI only); one without the other, a URL that would expose tokens, a short secret or a
/// validity out of bounds are errors in `env`.
pub fn read_links(env: &mut Env, kind: LinkKind, vars: &LinkVars) -> Option<ApprovalLinks> {
    let url = env.optional(vars.public_url).filter(|s| !s.is_empty());
    let secret = env.optional(vars.secret).filter(|s| !s.is_empty());
    let ttl = env.duration(vars.ttl, DEFAULT_TTL);
    if !(links::MIN_TTL..=links::MAX_TTL).contains(&ttl) {
        env.error(
            vars.ttl,
            &format!("{ttl:?}"),
            "from 1m to 7d: a leaked link approves for that long",
        );
    }
    match (url, secret) {
        (None, None) => None,
        (Some(url), None) => {
            env.error(vars.public_url, &url, format!("set without {}", vars.secret));
            None
        }
        (None, Some(_)) => {
            env.error(vars.secret, "***", format!("set without {}", vars.public_url));
            None
        }
        (Some(url), Some(secret)) => {
            if let Err(reason) = check_public_url(&url) {
                env.error(vars.public_url, &url, reason);
                return None;
            }
            if secret.len() < links::MIN_SECRET_LEN {
                env.error(
                    vars.secret,
                    "***",
                    format!(
                        "{} bytes; at least {} are needed (e.g. `openssl rand -hex 32`)",
                        secret.len(),
                        links::MIN_SECRET_LEN
                    ),
                );
                return None;
            }
            Some(ApprovalLinks::new(kind, &url, secret.as_bytes(), ttl))
        }
    }
}
