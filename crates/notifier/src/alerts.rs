//! Alerts from Prometheus' Alertmanager, told on the notifier's channels (issue 24).
//!
//! Alertmanager posts its webhook (payload version 4) to `POST /alerts` with the bearer token
//! of `STEWARD_ALERTS_TOKEN`; each post (one alert group) becomes one message on every
//! channel, like the NATS notice of [`crate::watchdog`]: rendered with the same templates,
//! sent through the same SMTP settings and TLS rules, and with no second copy of the SMTP
//! credentials in Alertmanager's configuration. Alertmanager is the queue: it groups,
//! repeats, silences and retries; the answer is 200 once a channel took the message and 503
//! otherwise, which Alertmanager tries again. Delivery does not go through the bus: an alert
//! is often about the bus. (The route exists once the notifier has started, which needs NATS
//! at start: a notifier that cannot start shows as `StewardServiceDown` on Prometheus' page,
//! and Alertmanager's refused posts in its log.)

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::channels::Channel;
use crate::message::{Item, Severity, Templates};

/// Where Alertmanager posts.
pub const PATH: &str = "/alerts";
/// The largest post taken (Alertmanager's `max_alerts` bounds it on its side).
const MAX_BODY: usize = 1 << 20;
/// Alerts told in one message; the rest are counted.
const MAX_ITEMS: usize = 50;
/// Characters kept of a label or annotation value.
const MAX_VALUE: usize = 500;

/// What the alert route needs.
pub struct Alerts {
    /// SHA-256 of the bearer token (compared as digests: no timing on the token itself).
    token: [u8; 32],
    /// Where to tell it.
    pub channels: Vec<Channel>,
    /// Templates.
    pub templates: Arc<Templates>,
    /// The host named in the message when an alert has no `instance` label.
    pub host: String,
}

impl Alerts {
    /// The route's state; `token` is what Alertmanager must send as `Bearer`.
    pub fn new(
        token: &str,
        channels: Vec<Channel>,
        templates: Arc<Templates>,
        host: String,
    ) -> Self {
        Self { token: Sha256::digest(token.as_bytes()).into(), channels, templates, host }
    }

    /// `POST /alerts`.
    pub fn router(self) -> Router {
        Router::new().route(PATH, post(receive)).with_state(Arc::new(self))
    }
}

/// Alertmanager's webhook body (version 4); only what is told.
#[derive(Debug, Deserialize)]
struct Payload {
    version: String,
    #[serde(default)]
    alerts: Vec<Alert>,
    #[serde(default, rename = "truncatedAlerts")]
    truncated: u64,
    #[serde(default, rename = "externalURL")]
    external_url: String,
}

#[derive(Debug, Deserialize)]
struct Alert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "startsAt")]
    starts_at: String,
    #[serde(default, rename = "endsAt")]
    ends_at: String,
}

async fn receive(State(alerts): State<Arc<Alerts>>, request: Request) -> (StatusCode, String) {
    // The token before the body: an unauthenticated client gets nothing read or buffered.
    let (parts, body) = request.into_parts();
    let given = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| <[u8; 32]>::from(Sha256::digest(t.trim().as_bytes())));
    if given != Some(alerts.token) {
        tracing::warn!("alert post refused: no or a wrong bearer token");
        return (StatusCode::UNAUTHORIZED, "a valid bearer token is required\n".into());
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            tracing::warn!("alert post refused: over 1 MiB, or cut off");
            return (StatusCode::PAYLOAD_TOO_LARGE, "over 1 MiB, or cut off\n".into());
        }
    };
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "alert post refused: not Alertmanager's webhook JSON");
            return (StatusCode::BAD_REQUEST, format!("not Alertmanager's webhook JSON: {e}\n"));
        }
    };
    if payload.version != "4" {
        return (
            StatusCode::BAD_REQUEST,
            format!("webhook payload version {:?}: only 4 is understood\n", clip(&payload.version)),
        );
    }
    if payload.alerts.is_empty() {
        return (StatusCode::OK, "nothing to tell\n".into());
    }
    let items = alerts.items(&payload);
    let message = match alerts.templates.render(items) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot render an alert");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the alert\n".into());
        }
    };
    let message_id = format!("<{}.alert@steward>", uuid::Uuid::now_v7());
    let any = crate::channels::tell_all(&alerts.channels, &message, &message_id, "alert").await;
    if any {
        (StatusCode::OK, "told\n".into())
    } else {
        // Alertmanager tries again with its backoff.
        (StatusCode::SERVICE_UNAVAILABLE, "no channel took the alert; try again\n".into())
    }
}

impl Alerts {
    fn items(&self, payload: &Payload) -> Vec<Item> {
        let mut items: Vec<Item> =
            payload.alerts.iter().take(MAX_ITEMS).map(|a| self.item(a, payload)).collect();
        let left = (payload.alerts.len().saturating_sub(MAX_ITEMS) as u64)
            .saturating_add(payload.truncated);
        if left > 0 {
            if let Some(last) = items.last_mut() {
                last.facts.push((
                    "Not shown".to_owned(),
                    format!(
                        "{left} more alerts of this group (Prometheus' /alerts page lists them)"
                    ),
                ));
            }
        }
        items
    }

    fn item(&self, a: &Alert, payload: &Payload) -> Item {
        let firing = a.status != "resolved";
        let name = a.labels.get("alertname").map_or("alert", |s| s.as_str());
        let severity = match (firing, a.labels.get("severity").map(String::as_str)) {
            (false, _) => Severity::Info,
            (true, Some("critical")) => Severity::Critical,
            (true, _) => Severity::Warning,
        };
        let summary = a.annotations.get("summary").map(|s| clip(s));
        let headline = match (firing, summary) {
            (true, Some(s)) => format!("{}: {s}", clip(name)),
            (true, None) => format!("{} is firing", clip(name)),
            (false, Some(s)) => format!("resolved: {}: {s}", clip(name)),
            (false, None) => format!("resolved: {}", clip(name)),
        };
        let mut facts = vec![("Since".to_owned(), clip(&a.starts_at))];
        if !firing {
            facts.push(("Ended".to_owned(), clip(&a.ends_at)));
        }
        if let Some(d) = a.annotations.get("description") {
            facts.push(("Description".to_owned(), clip(d)));
        }
        for (k, v) in a.labels.iter().filter(|(k, _)| !matches!(k.as_str(), "alertname")) {
            facts.push((format!("Label {}", clip(k)), clip(v)));
        }
        let runbook = a.annotations.get("runbook_url").or_else(|| a.annotations.get("runbook"));
        let next = match (firing, runbook) {
            (false, _) => "Nothing to do: the condition has ended.".to_owned(),
            (true, Some(r)) => format!("Runbook: {}", clip(r)),
            (true, None) if !payload.external_url.is_empty() => format!(
                "See the alert in Alertmanager ({}) and Prometheus' /alerts page (compose profile `monitoring`).",
                clip(&payload.external_url)
            ),
            (true, None) => "See Prometheus' /alerts page (compose profile `monitoring`).".to_owned(),
        };
        Item {
            severity,
            kind: if firing { "alert.firing" } else { "alert.resolved" },
            told: if firing { "alert.firing" } else { "alert.resolved" },
            id: uuid::Uuid::now_v7(),
            headline,
            container: a.labels.get("container").or_else(|| a.labels.get("name")).map(|s| clip(s)),
            when: clip(if firing { &a.starts_at } else { &a.ends_at }),
            // An alert's `host` label if it has one; `instance` is a scrape address
            // (`backup:9100`), shown among the labels.
            host: a.labels.get("host").map(|s| clip(s)).unwrap_or_else(|| self.host.clone()),
            facts,
            log_tail: vec![],
            next,
            update_id: None,
            deploy_id: None,
            approval_url: None,
            needs_decision: false,
            release_notes: None,
        }
    }
}

/// `s` on one line (no control characters: the headline is a mail subject) and at most
/// [`MAX_VALUE`] characters.
fn clip(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_VALUE).collect();
    if s.chars().count() > MAX_VALUE {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(json: &str) -> Payload {
        serde_json::from_str(json).expect("payload")
    }

    fn alerts() -> Alerts {
        Alerts::new(
            "t0ken",
            vec![],
            Arc::new(Templates::builtin().expect("templates")),
            "vm".into(),
        )
    }

    #[test]
    fn a_firing_group_is_told_with_its_labels_and_severity_and_a_resolved_one_as_info() {
        let p = payload(
            r#"{"version":"4","status":"firing","externalURL":"http://am:9093","alerts":[
              {"status":"firing","labels":{"alertname":"StewardBackupStale","severity":"critical","service":"backup"},
               "annotations":{"summary":"no verified backup for 26h","description":"line1\nline2"},
               "startsAt":"2026-11-30T10:00:00Z","endsAt":"0001-01-01T00:00:00Z"},
              {"status":"resolved","labels":{"alertname":"GiteaDown"},"annotations":{},
               "startsAt":"2026-11-30T09:00:00Z","endsAt":"2026-11-30T09:05:00Z"}]}"#,
        );
        let items = alerts().items(&p);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].severity, Severity::Critical);
        assert_eq!(items[0].headline, "StewardBackupStale: no verified backup for 26h");
        assert!(items[0].facts.contains(&("Description".into(), "line1 line2".into())));
        assert!(items[0].facts.contains(&("Label service".into(), "backup".into())));
        assert!(items[0].next.contains("http://am:9093"), "{}", items[0].next);
        assert_eq!(items[1].severity, Severity::Info);
        assert_eq!(items[1].headline, "resolved: GiteaDown");
        let m = alerts().templates.render(items).expect("render");
        assert!(m.subject.contains("CRITICAL"), "{}", m.subject);
    }

    #[test]
    fn hostile_values_are_one_line_and_bounded_and_a_huge_group_is_counted() {
        let long = "x".repeat(10_000);
        let many: Vec<String> = (0..120)
            .map(|i| {
                format!(
                    r#"{{"status":"firing","labels":{{"alertname":"A{i}\r\nBcc: evil@example.org","v":"{long}"}},"annotations":{{}}}}"#
                )
            })
            .collect();
        let p = payload(&format!(
            r#"{{"version":"4","truncatedAlerts":7,"alerts":[{}]}}"#,
            many.join(",")
        ));
        let items = alerts().items(&p);
        assert_eq!(items.len(), MAX_ITEMS);
        assert!(!items[0].headline.contains(['\r', '\n']), "{}", items[0].headline);
        assert!(items[0].facts.iter().all(|(_, v)| v.chars().count() <= MAX_VALUE + 1));
        let last = items.last().expect("last");
        assert!(last.facts.contains(&(
            "Not shown".into(),
            format!(
                "{} more alerts of this group (Prometheus' /alerts page lists them)",
                120 - MAX_ITEMS + 7
            )
        )));
    }
}
