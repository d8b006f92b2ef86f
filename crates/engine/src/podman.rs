//! Podman's differences that need more than a translated field.
//!
//! Podman runs healthchecks from systemd timers. Where it has no systemd (a container, a minimal
//! host; its service logs "unable to get systemd connection to add healthchecks") it runs none:
//! a container's health stays `starting` for ever, and every health gate would time out. There
//! the engine runs a check itself when one is due, through libpod's API (`GET
//! /libpod/containers/{id}/healthcheck` runs the container's own check and records its result
//! as Podman's timer would), and reads the status Podman keeps: streaks, retries and the start
//! period stay Podman's. Where the timers work, no check is ever due here.

use std::time::Duration;

use bollard::models::{ContainerInspectResponse, HealthcheckResult};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;

use crate::{Engine, EngineError};

/// Docker's (and Podman's) default healthcheck interval and timeout.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// A healthcheck's answer is a small JSON object; anything bigger is not one.
const MAX_ANSWER: usize = 64 << 10;
/// The libpod API version asked for: the oldest Podman 4 serves.
const LIBPOD_VERSION: &str = "v4.0.0";

/// Whether a container's next healthcheck is due and nobody ran it: it has a healthcheck and
/// runs, and its newest result (or its start, before any) is older than one and a half
/// intervals (a timer that works never lets it get that old; the half interval keeps this from
/// racing one that does).
pub(crate) fn check_due(c: &ContainerInspectResponse, now: OffsetDateTime) -> bool {
    let state = c.state.as_ref();
    if !state.and_then(|s| s.running).unwrap_or(false) {
        return false;
    }
    let Some(health) = state.and_then(|s| s.health.as_ref()) else { return false };
    let Some(config) = c.config.as_ref().and_then(|c| c.healthcheck.as_ref()) else {
        return false;
    };
    // `NONE` disables an image's check; an empty test inherits one (there is none here then).
    match config.test.as_deref() {
        Some([first, ..]) if first != "NONE" => {}
        _ => return false,
    }
    let interval = positive_nanos(config.interval).unwrap_or(DEFAULT_INTERVAL);
    let newest = health.log.as_deref().unwrap_or_default().iter().filter_map(result_end).max();
    let since = newest.or_else(|| state.and_then(|s| s.started_at.as_deref()).and_then(parse));
    match since {
        Some(since) => now - since >= interval + interval / 2,
        // No time to count from: run one rather than wait for ever.
        None => true,
    }
}

/// A duration in nanoseconds as the engine reports it; zero or less means "the default".
fn positive_nanos(n: Option<i64>) -> Option<Duration> {
    n.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0).map(Duration::from_nanos)
}

fn result_end(r: &HealthcheckResult) -> Option<OffsetDateTime> {
    r.end
}

fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The time a container's healthcheck may take: its timeout, or the default.
pub(crate) fn check_timeout(c: &ContainerInspectResponse) -> Duration {
    c.config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| positive_nanos(h.timeout))
        .unwrap_or(DEFAULT_INTERVAL)
}

/// Whether a version answer comes from Podman (its components name "Podman Engine").
pub(crate) fn is_podman(v: &bollard::models::SystemVersion) -> bool {
    v.components.as_deref().unwrap_or_default().iter().any(|c| c.name.starts_with("Podman"))
}

/// Podman's name prefix of images in its local storage only (built or loaded on the host).
const LOCAL: &str = "localhost/";
/// A libpod image inspect lists every name the image ever had: large on a busy host.
const MAX_IMAGE_ANSWER: usize = 16 << 20;

/// An image's repo digests on Podman as Docker keeps them, from Podman's `listed` ones (every
/// current name × every digest the image has) and the image's `history` of names.
///
/// - A repository the image *was* named in keeps its digests: Podman drops a repository from
///   the list once its tag moves to another image (a newer release pulled, the updater's
///   pull before a swap that is then rolled back), and the watcher then took the container
///   for one never pulled from a registry. Docker keeps `repo@digest`.
/// - `localhost/...` names are left out: Podman names an image built or loaded on the host
///   so and gives it digests there, which name no registry (Docker gives it none).
pub(crate) fn repo_digests(listed: Vec<String>, names: &Names) -> Vec<String> {
    let history = &names.history;
    // An image whose names are all gone (its only tag moved) lists no digest at all: its
    // own digest (libpod's `Digest`) and those in its former `repo@digest` names stand in.
    let digests: std::collections::BTreeSet<&str> = listed
        .iter()
        .chain(history)
        .filter_map(|d| d.split_once('@').map(|(_, d)| d))
        .chain(names.digest.as_deref())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    let former = history
        .iter()
        .filter_map(|name| repository_of(name))
        .flat_map(|repository| digests.iter().map(move |d| format!("{repository}@{d}")));
    for d in listed.iter().cloned().chain(former.collect::<Vec<_>>()) {
        if !d.starts_with(LOCAL) && seen.insert(d.clone()) {
            out.push(d);
        }
    }
    out
}

/// What libpod says of an image beyond the compatible API: every name it ever had, and its
/// own digest.
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub(crate) history: Vec<String>,
    pub(crate) digest: Option<String>,
}

/// The repository of an image name (`host/repo:tag` or `host/repo@digest`): the name
/// without its tag or digest.
fn repository_of(name: &str) -> Option<&str> {
    let name = name.split_once('@').map_or(name, |(r, _)| r);
    let tag_at = name.rfind(':').filter(|&i| !name[i..].contains('/'));
    let repository = tag_at.map_or(name, |i| &name[..i]);
    (!repository.is_empty()).then_some(repository)
}

impl Engine {
    /// Every name image `id` ever had (libpod's `NamesHistory`) and its digest.
    pub(crate) async fn names_history(&self, id: &str) -> Result<Names, EngineError> {
        let what = format!("inspect image {id} (its former names)");
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':') {
            return Err(self.operation(&what, "not an image id".into()));
        }
        let path = format!("/{LIBPOD_VERSION}/libpod/images/{id}/json");
        let body = self.libpod_get(&what, &path, MAX_IMAGE_ANSWER, self.deadline).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(rename = "NamesHistory", default)]
            names_history: Option<Vec<String>>,
            #[serde(rename = "Digest", default)]
            digest: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| self.operation(&what, format!("unreadable answer: {e}")))?;
        Ok(Names {
            history: answer.names_history.unwrap_or_default(),
            digest: answer.digest.filter(|d| d.starts_with("sha256:")),
        })
    }

    /// Whether this engine is Podman, asked once and remembered (an engine does not change
    /// kind under a running service; a failed question is asked again next time).
    pub async fn is_podman(&self) -> Result<bool, EngineError> {
        if let Some(known) = self.podman.get() {
            return Ok(*known);
        }
        let v = self
            .timed(self.client()?.version())
            .await
            .map_err(|e| self.call_failed("version", e))?;
        Ok(*self.podman.get_or_init(|| is_podman(&v)))
    }

    /// Runs container `id`'s healthcheck through libpod's API, within its own timeout and
    /// the deadline; Podman records the result in the container's health.
    pub(crate) async fn run_podman_healthcheck(
        &self,
        id: &str,
        check_timeout: Duration,
    ) -> Result<(), EngineError> {
        let what = format!("run the healthcheck of {id}");
        let path = format!("/{LIBPOD_VERSION}/libpod/containers/{id}/healthcheck");
        let limit = self.deadline.saturating_add(check_timeout);
        self.libpod_get(&what, &path, MAX_ANSWER, limit).await.map(|_| ())
    }

    /// One GET of a libpod endpoint (`what`, for errors) within `limit`: its body (up to
    /// `max` bytes) when answered 200, else the error saying what Podman said.
    async fn libpod_get(
        &self,
        what: &str,
        path: &str,
        max: usize,
        limit: Duration,
    ) -> Result<Bytes, EngineError> {
        let answer = tokio::time::timeout(limit, self.raw_get(path, max)).await.map_err(|_| {
            EngineError::Timeout { host: self.host.clone(), what: what.to_owned(), after: limit }
        })?;
        let (status, body) = answer.map_err(|reason| self.operation(what, reason))?;
        if status != 200 {
            return Err(self.operation(what, format!("HTTP {status}: {}", message_of(&body))));
        }
        Ok(body)
    }

    fn operation(&self, what: &str, reason: String) -> EngineError {
        EngineError::Operation { host: self.host.clone(), what: what.to_owned(), reason }
    }

    /// One GET on the engine's address outside bollard, which knows no libpod endpoint:
    /// `unix://` and `tcp://`/`http://` only (Podman's service is not served over TLS). The
    /// answer's body is read up to `max` bytes.
    pub(crate) async fn raw_get(&self, path: &str, max: usize) -> Result<(u16, Bytes), String> {
        let host = self.host.as_str();
        if let Some(socket) = host.strip_prefix("unix://") {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| format!("connect {socket}: {e}"))?;
            get_over(stream, path, max).await
        } else if let Some(address) = host.strip_prefix("tcp://").or(host.strip_prefix("http://")) {
            let address = address.trim_end_matches('/');
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| format!("connect {address}: {e}"))?;
            get_over(stream, path, max).await
        } else {
            Err(format!("libpod's API is reached over unix:// or tcp:// only, not {host}"))
        }
    }
}

/// What an engine's error answer says: its `{"message": ...}`, else its first 200 characters.
pub(crate) fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// An HTTP/1.1 GET of `path` on a fresh connection; the answer's status and body (bounded).
async fn get_over<S>(stream: S, path: &str, max: usize) -> Result<(u16, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // Ends when the answer is read and the sender dropped.
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "podman")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let answer = sender.send_request(request).await.map_err(|e| format!("GET {path}: {e}"))?;
    let status = answer.status().as_u16();
    let body = Limited::new(answer.into_body(), max)
        .collect()
        .await
        .map_err(|e| format!("read the answer to GET {path}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, ContainerState, Health, HealthConfig};

    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        parse(s).expect("time")
    }

    fn container(test: &[&str], started: &str, ends: &[&str]) -> ContainerInspectResponse {
        let log = ends
            .iter()
            .map(|e| HealthcheckResult { end: Some(at(e)), ..Default::default() })
            .collect();
        ContainerInspectResponse {
            state: Some(ContainerState {
                running: Some(true),
                started_at: Some(started.to_owned()),
                health: Some(Health { log: Some(log), ..Default::default() }),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                healthcheck: Some(HealthConfig {
                    test: Some(test.iter().map(|s| (*s).to_owned()).collect()),
                    interval: Some(2_000_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What Podman 4.3's compat API and Docker send (read off both on 2026-12-07; Docker's
    /// differ only in the values): bollard's `time` feature parses these dates, and one that
    /// does not parse fails the whole answer.
    #[test]
    fn the_engines_dates_parse_and_a_malformed_one_fails_the_answer() {
        let inspect = r#"{"Created": "2026-12-07T07:59:44.997526862Z",
            "State": {"Running": true, "StartedAt": "2026-12-07T07:59:45.131285692Z",
              "Health": {"Status": "healthy", "FailingStreak": 0, "Log": [{"Start":
                "2026-12-07T07:59:58.824732547Z", "End": "2026-12-07T07:59:58.937637792Z",
                "ExitCode": 0, "Output": ""}]}},
            "Config": {"Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 1000000000}}}"#;
        let c: ContainerInspectResponse = serde_json::from_str(inspect).expect("an inspect");
        assert_eq!(c.created, Some(at("2026-12-07T07:59:44.997526862Z")));
        let end = c.state.as_ref().and_then(|s| s.health.as_ref()).and_then(|h| h.log.clone());
        assert_eq!(
            end.as_deref().and_then(|l| l.first()).and_then(result_end),
            Some(at("2026-12-07T07:59:58.937637792Z"))
        );
        assert!(!check_due(&c, at("2026-12-07T07:59:59.500Z")), "0.6 s after a 1 s check");
        assert!(check_due(&c, at("2026-12-07T08:00:00.500Z")), "1.6 s after it");

        let image = r#"{"Id": "sha256:00", "Created": "2026-12-07T02:16:36.872791345Z",
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"}}"#;
        let i: bollard::models::ImageInspect = serde_json::from_str(image).expect("an image");
        assert_eq!(i.created, Some(at("2026-12-07T02:16:36.872791345Z")));

        let empty = image.replace("2026-12-07T02:16:36.872791345Z", "");
        assert!(serde_json::from_str::<bollard::models::ImageInspect>(&empty).is_err());
    }

    #[test]
    fn a_repository_keeps_its_digests_after_its_tag_moved_and_localhost_names_none() {
        let listed = vec![
            "localhost/app@sha256:aa".to_owned(),
            "127.0.0.1:5000/app@sha256:aa".to_owned(),
            "127.0.0.1:5000/app@sha256:bb".to_owned(),
        ];
        let history = [
            "127.0.0.1:5000/app:1.0".to_owned(),
            "127.0.0.1:5000/old:1.0".to_owned(),
            "registry.example:443/team/web@sha256:cc".to_owned(),
            "localhost/app:v1".to_owned(),
        ];
        let names = Names { history: history.to_vec(), digest: None };
        let got = repo_digests(listed, &names);
        assert_eq!(
            got,
            // Podman's own way: every repository × every digest (`cc` from a former
            // `repo@digest` name); the watcher picks the one a repository holds.
            [
                "127.0.0.1:5000/app@sha256:aa",
                "127.0.0.1:5000/app@sha256:bb",
                "127.0.0.1:5000/app@sha256:cc",
                "127.0.0.1:5000/old@sha256:aa",
                "127.0.0.1:5000/old@sha256:bb",
                "127.0.0.1:5000/old@sha256:cc",
                "registry.example:443/team/web@sha256:aa",
                "registry.example:443/team/web@sha256:bb",
                "registry.example:443/team/web@sha256:cc",
            ]
        );
        // No name left (its only tag moved): its own digest under its former repository.
        let gone = Names {
            history: vec!["127.0.0.1:5000/app:1.0".to_owned(), "localhost/x:1".to_owned()],
            digest: Some("sha256:dd".to_owned()),
        };
        assert_eq!(repo_digests(vec![], &gone), ["127.0.0.1:5000/app@sha256:dd"]);
        // Nothing known at all: no digest to give anyone.
        assert!(repo_digests(vec![], &Names::default()).is_empty());
    }

    #[test]
    fn a_names_repository_is_it_without_tag_or_digest() {
        assert_eq!(repository_of("127.0.0.1:5000/app:1.0"), Some("127.0.0.1:5000/app"));
        assert_eq!(repository_of("127.0.0.1:5000/app"), Some("127.0.0.1:5000/app"));
        assert_eq!(
            repository_of("docker.io/library/nginx@sha256:aa"),
            Some("docker.io/library/nginx")
        );
        assert_eq!(repository_of(":1.0"), None);
    }

    const CHECK: &[&str] = &["CMD-SHELL", "true"];

    #[test]
    fn a_check_is_due_after_one_and_a_half_intervals_without_a_result() {
        let c = container(CHECK, "2026-11-30T08:00:00.5Z", &[]);
        assert!(!check_due(&c, at("2026-11-30T08:00:03.4Z")));
        assert!(check_due(&c, at("2026-11-30T08:00:03.5Z")));
    }

    #[test]
    fn the_newest_result_counts_whatever_the_log_order() {
        let c = container(
            CHECK,
            "2026-11-30T08:00:00Z",
            &["2026-11-30T08:00:10.123456789Z", "2026-11-30T08:00:05Z"],
        );
        assert!(!check_due(&c, at("2026-11-30T08:00:12Z")));
        assert!(check_due(&c, at("2026-11-30T08:00:13.2Z")));
    }

    #[test]
    fn no_check_is_due_without_one_or_when_stopped() {
        let none = container(&["NONE"], "2026-11-30T08:00:00Z", &[]);
        assert!(!check_due(&none, at("2026-11-30T09:00:00Z")));
        let mut stopped = container(CHECK, "2026-11-30T08:00:00Z", &[]);
        stopped.state.as_mut().expect("state").running = Some(false);
        assert!(!check_due(&stopped, at("2026-11-30T09:00:00Z")));
        let mut without = container(CHECK, "2026-11-30T08:00:00Z", &[]);
        without.state.as_mut().expect("state").health = None;
        assert!(!check_due(&without, at("2026-11-30T09:00:00Z")));
    }

    #[test]
    fn an_unreadable_start_time_makes_it_due_rather_than_never() {
        let c = container(CHECK, "0001-01-01T00:00:00Z-garbage", &[]);
        assert!(check_due(&c, at("2026-11-30T08:00:00Z")));
    }
}
