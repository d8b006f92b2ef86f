//! Pull requests through Gitea's API: the commit-back's variant for branches a human reviews
//! (`STEWARD_DEPLOY_GITEA_TOKEN`). Only two calls of API v1: the repository's pull requests
//! listed (`GET /repos/{owner}/{repo}/pulls?state=all`), and one created (`POST` to the same
//! path with `head`, `base`, `title`, `body`). The list is read before every creation, so a
//! repeat (a redelivery, a kill after the creation) finds the one made before instead of a
//! second one, and a request a human closed is never opened again.
//!
//! Failure modes: Gitea unreachable, 5xx or 429 ([`GiteaError::Retry`]: the hand-over is
//! delivered again); any other refusal ([`GiteaError::Refused`], with Gitea's message: a
//! wrong token, a repository it does not have). The token is sent only to the configured URL
//! (https, or http to a loopback or single-label host such as the stack's `server`), never
//! logged; redirects are not followed.

use std::time::Duration;

use serde::Deserialize;

/// Pages of 50 read when looking for a request (Gitea lists the most recently updated
/// first): a proposal is found among the 500 latest.
const PAGES: u32 = 10;
/// Most of Gitea's message kept in a refusal.
const MESSAGE_CHARS: usize = 300;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum GiteaError {
    /// Gitea could not answer now: tried again later.
    #[error("Gitea's API did not answer: {0}")]
    Retry(String),
    /// Gitea refused: a human has to act.
    #[error("Gitea's API refused: {0}")]
    Refused(String),
}

/// A pull request as Gitea describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    /// Its number in the repository.
    pub number: u64,
    /// Its page.
    pub html_url: String,
    /// `open` or `closed`.
    pub state: String,
    /// Whether it was merged (closed then too).
    #[serde(default)]
    pub merged: bool,
    /// The commit the merge made on the base branch, once merged.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    head: Branch,
    base: Branch,
}

#[derive(Debug, Clone, Deserialize)]
struct Branch {
    /// The branch's name, also once it is deleted (then `ref` is `refs/pull/N/head`).
    #[serde(default)]
    label: Option<String>,
    #[serde(rename = "ref")]
    name: String,
}

impl Branch {
    fn is(&self, branch: &str) -> bool {
        self.label.as_deref() == Some(branch) || self.name == branch
    }
}

/// Gitea's API at `url` with `token`.
#[derive(Clone)]
pub struct Gitea {
    url: String,
    token: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Gitea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gitea").field("url", &self.url).field("token", &"<set>").finish()
    }
}

/// Whether `url` may carry the token: https, or http to a host that never leaves the machine
/// or the stack's network (loopback, or one label such as `server`).
pub fn check_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let local = host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || (!host.is_empty() && !host.contains('.') && !host.contains(':'));
    let ok = match parsed.scheme() {
        "https" => !host.is_empty(),
        "http" => local,
        _ => false,
    };
    let plain = parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !ok || !plain {
        return Err("https://HOST[:PORT][/PATH] (http only to localhost or a single-label host such as the stack's server; no credentials, query or fragment: the token is its own setting)".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Whether `token` can go in a header as it is (Gitea's are hex; anything printable passes).
pub fn check_token(token: &str) -> Result<(), String> {
    let ok = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(()).ok_or_else(|| "printable characters without spaces".to_owned())
}

/// The owner and name of a repository from its git URL (`https://host/ops/site.git`,
/// `ssh://git@host:2222/ops/site.git`, `git@host:ops/site.git`): its last two path segments.
pub fn owner_and_name(url: &str) -> Option<(String, String)> {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => url.split_once(':')?.1,
    };
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let name = parts.next()?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    let owner = parts.next()?;
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    (ok(owner) && ok(name)).then(|| (owner.to_owned(), name.to_owned()))
}

impl Gitea {
    /// The API of the Gitea at `url` (checked by [`check_url`]) with `token`.
    pub fn new(url: String, token: String, timeout: Duration) -> Result<Self, String> {
        check_token(&token).map_err(|e| format!("the token: {e}"))?;
        let mut client =
            reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
        // Plain http is allowed only to a host on this machine or the stack's network: never
        // through a proxy from the environment.
        if url.starts_with("http://") {
            client = client.no_proxy();
        }
        let client = client.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { url, token, client })
    }

    /// The header Gitea takes a token in.
    fn authorization(&self) -> String {
        format!("token {}", self.token)
    }

    fn pulls(&self, owner: &str, name: &str) -> String {
        format!("{}/api/v1/repos/{owner}/{name}/pulls", self.url)
    }

    /// The pull request from `head` into `base`, open or closed, if there is one.
    pub async fn find(
        &self,
        owner: &str,
        name: &str,
        head: &str,
        base: &str,
    ) -> Result<Option<PullRequest>, GiteaError> {
        for page in 1..=PAGES {
            let url = format!(
                "{}?state=all&sort=recentupdate&limit=50&page={page}",
                self.pulls(owner, name)
            );
            let resp = self
                .client
                .get(url)
                .header("Authorization", self.authorization())
                .send()
                .await
                .map_err(|e| GiteaError::Retry(without_url(&e)))?;
            let resp = checked(resp).await?;
            let list: Vec<PullRequest> = resp.json().await.map_err(|e| {
                GiteaError::Refused(format!("the list of pull requests did not read: {e}"))
            })?;
            if let Some(found) = list.iter().find(|p| p.head.is(head) && p.base.is(base)) {
                return Ok(Some(found.clone()));
            }
            if list.len() < 50 {
                break;
            }
        }
        Ok(None)
    }

    /// The pull request from `head` into `base`: the one there is, else a new one.
    pub async fn ensure(
        &self,
        owner: &str,
        name: &str,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, GiteaError> {
        if let Some(found) = self.find(owner, name, head, base).await? {
            return Ok(found);
        }
        steward_failpoints::failpoint!("propose:listed");
        let resp = self
            .client
            .post(self.pulls(owner, name))
            .header("Authorization", self.authorization())
            .json(&serde_json::json!({"head": head, "base": base, "title": title, "body": body}))
            .send()
            .await
            .map_err(|e| GiteaError::Retry(without_url(&e)))?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            // Made meanwhile (by an earlier attempt whose answer was lost): that one.
            return self.find(owner, name, head, base).await?.ok_or_else(|| {
                GiteaError::Retry("409 on creation, but no such pull request listed".into())
            });
        }
        let resp = checked(resp).await?;
        resp.json()
            .await
            .map_err(|e| GiteaError::Refused(format!("the created pull request did not read: {e}")))
    }
}

/// `resp` when it is a success; else Retry for 5xx and 429, Refused with Gitea's message.
async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, GiteaError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or(text);
    let message: String = message.chars().take(MESSAGE_CHARS).collect();
    let said = format!("{status}: {}", message.trim());
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(GiteaError::Retry(said))
    } else {
        Err(GiteaError::Refused(said))
    }
}

/// A client error without its URL's query (nothing secret is in it, but it is noise).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), url.path());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_name_come_from_the_last_two_segments_of_any_git_url() {
        let on = |u: &str| owner_and_name(u).map(|(o, n)| format!("{o}/{n}"));
        assert_eq!(on("https://bot:t@git.example.com/ops/site.git").as_deref(), Some("ops/site"));
        assert_eq!(on("ssh://git@git.example.com:2222/ops/site.git").as_deref(), Some("ops/site"));
        assert_eq!(on("git@git.example.com:ops/site").as_deref(), Some("ops/site"));
        assert_eq!(on("https://git.example.com/sub/ops/site/").as_deref(), Some("ops/site"));
        for bad in [
            "https://git.example.com/site.git",
            "file:///x",
            "ops",
            "https://h/o/..",
            "https://h/o/a%2fb",
        ] {
            assert_eq!(on(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_token_goes_only_over_https_or_to_a_local_host() {
        for ok in [
            "https://git.example.com",
            "https://git.example.com/gitea/",
            "http://server:3000",
            "http://127.0.0.1:3000",
            "http://[::1]:3000",
            "http://localhost",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        assert_eq!(check_url("https://git.example.com/").as_deref(), Ok("https://git.example.com"));
        for bad in [
            "http://git.example.com",
            "http://10.0.0.5:3000",
            "ftp://server",
            "https://u:p@git.example.com",
            "https://g.example.com/?x=1",
            "https://g.example.com/#x",
            "git.example.com",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
