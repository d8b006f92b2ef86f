//! The webhook channel's formats: Steward's own JSON, or the documented message shape of the
//! chat and push tools operators use (`STEWARD_WEBHOOK_FORMAT`): Slack incoming webhooks,
//! Matrix, ntfy and Gotify. [`prepare`] turns a rendered [`Message`] into the one HTTP request
//! its format wants; `channels.rs` sends it.
//!
//! Idempotency: every attempt of a message carries its stable id ([`stable_id`], from the
//! outbox's `MessageMark`), so a resend after a crash between "accepted" and "recorded" is the
//! same message. Matrix deduplicates it on the homeserver (the id is the transaction id);
//! ntfy replaces the notification on the subscribers' devices (the id is the sequence id);
//! Slack incoming webhooks and Gotify have no idempotency key at all: a resend after such a
//! crash posts the message twice there (the outbox's one at-least-once window).
//!
//! Secrets: a token comes from `STEWARD_WEBHOOK_TOKEN` (usually `_FILE`) and goes only into a
//! header, never into a URL; Slack's and ntfy's URLs are secrets themselves (the path is the
//! credential), so only their origin is ever shown. Every error text goes through
//! [`WebhookConfig::scrub`].

use std::fmt;

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::json;
use steward_events::{redact_url, redact_urls_in};

use crate::message::{Item, Message, Severity};

/// What the webhook's requests look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Steward's own JSON (`title`, `text`, `items`, `message_id`, `severity`).
    Steward,
    /// A Slack incoming webhook.
    Slack,
    /// A Matrix room, through the client-server API.
    Matrix,
    /// An ntfy topic.
    Ntfy,
    /// A Gotify application.
    Gotify,
}

impl WebhookFormat {
    /// Every format, as named in `STEWARD_WEBHOOK_FORMAT`.
    pub const ALL: [WebhookFormat; 5] =
        [Self::Steward, Self::Slack, Self::Matrix, Self::Ntfy, Self::Gotify];

    /// Its name in `STEWARD_WEBHOOK_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Steward => "steward",
            Self::Slack => "slack",
            Self::Matrix => "matrix",
            Self::Ntfy => "ntfy",
            Self::Gotify => "gotify",
        }
    }

    /// The format named `raw`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|f| f.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|f| f.as_str()).collect();
            format!("unknown format (one of {})", names.join(", "))
        })
    }
}

/// The webhook channel's settings.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Where: Steward's receiver, the Slack webhook URL, the Matrix homeserver's base URL, the
    /// ntfy topic URL, the Gotify server's base URL.
    pub url: Url,
    /// Which format.
    pub format: WebhookFormat,
    /// The token (Matrix access token, ntfy access token, Gotify application token, or a
    /// bearer token for Steward's JSON).
    pub token: Option<String>,
    /// Matrix only: the room id (`!abc:example.org`).
    pub matrix_room: Option<String>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token, nor a URL whose path is a credential.
        f.debug_struct("WebhookConfig")
            .field("url", &self.shown())
            .field("format", &self.format)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("matrix_room", &self.matrix_room)
            .finish()
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// `application/json`.
    Json(serde_json::Value),
    /// `text/plain; charset=utf-8`.
    Text(String),
}

/// One message as its format's HTTP request.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// POST or PUT.
    pub method: Method,
    /// Where.
    pub url: Url,
    /// Headers besides the content type (the token among them: never print these).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Body,
}

/// A message id usable in a URL path segment and a header: `<0190…-….3@steward>` becomes
/// `0190…-…-3-steward` (ASCII letters, digits and `-` only, at most 64 characters).
pub fn stable_id(message_id: &str) -> String {
    let id: String = message_id
        .trim_matches(['<', '>'])
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect();
    id.chars().take(64).collect()
}

/// The worst severity of `m`'s items.
pub fn severity(m: &Message) -> Severity {
    m.items.iter().map(|i| i.severity).max().unwrap_or(Severity::Info)
}

impl WebhookConfig {
    /// Where messages go, as logs, errors and `notify.sent` may show it: no credentials, no
    /// query; only the origin of a Slack or ntfy URL (its path is the secret).
    pub fn shown(&self) -> String {
        match self.format {
            WebhookFormat::Slack | WebhookFormat::Ntfy => {
                format!("{}/…", self.url.origin().ascii_serialization())
            }
            WebhookFormat::Matrix => format!(
                "{} (room {})",
                self.url.origin().ascii_serialization(),
                self.matrix_room.as_deref().unwrap_or("?")
            ),
            WebhookFormat::Steward | WebhookFormat::Gotify => redact_url(self.url.as_str()),
        }
    }

    /// `text` without URLs' credentials and queries, without the token, and without a Slack or
    /// ntfy URL's secret path: for every error message and log line.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        if let Some(t) = self.token.as_deref().filter(|t| !t.is_empty()) {
            out = out.replace(t, "***");
        }
        if matches!(self.format, WebhookFormat::Slack | WebhookFormat::Ntfy) {
            out = out.replace(self.url.as_str(), &self.shown());
            if let Some(path) = Some(self.url.path()).filter(|p| p.len() > 1) {
                out = out.replace(path, "/…");
            }
        }
        redact_urls_in(&out)
    }

    fn bearer(&self) -> Result<Option<(HeaderName, HeaderValue)>, String> {
        let Some(token) = self.token.as_deref() else { return Ok(None) };
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token has characters a header cannot carry".to_owned())?;
        v.set_sensitive(true);
        Ok(Some((reqwest::header::AUTHORIZATION, v)))
    }

    /// `m` as this format's request; `message_id` is the message's stable id (the same for
    /// every attempt).
    pub fn prepare(&self, m: &Message, message_id: &str) -> Result<Prepared, String> {
        let id = stable_id(message_id);
        let mut headers = vec![];
        let (method, url, body) = match self.format {
            WebhookFormat::Steward => {
                headers.extend(self.bearer()?);
                let body = json!({
                    "title": m.subject,
                    "text": m.text,
                    "items": m.items,
                    "message_id": message_id,
                    "severity": severity(m),
                });
                (Method::POST, self.url.clone(), Body::Json(body))
            }
            WebhookFormat::Slack => (Method::POST, self.url.clone(), Body::Json(slack(m))),
            WebhookFormat::Matrix => {
                headers.extend(self.bearer()?);
                let room = self.matrix_room.as_deref().ok_or("no Matrix room configured")?;
                // Client-server API, "PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
                // (https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid):
                // the homeserver answers a repeated transaction id (same access token) with the
                // first event's id instead of sending it again. The stable id makes a resend after
                // a crash that repeat.
                let mut url = self.url.clone();
                url.set_query(None);
                url.path_segments_mut()
                    .map_err(|()| "the Matrix homeserver URL cannot have a path".to_owned())?
                    .pop_if_empty()
                    .extend([
                        "_matrix",
                        "client",
                        "v3",
                        "rooms",
                        room,
                        "send",
                        "m.room.message",
                        &id,
                    ]);
                (Method::PUT, url, Body::Json(matrix(m)))
            }
            WebhookFormat::Ntfy => {
                headers.extend(self.bearer()?);
                headers.extend(ntfy_headers(m, &id)?);
                // A plain-text body (ntfy's limit is 4096 bytes before it becomes an attachment).
                (Method::POST, self.url.clone(), Body::Text(cut(&m.text, 4000)))
            }
            WebhookFormat::Gotify => {
                let token =
                    self.token.as_deref().ok_or("no Gotify application token configured")?;
                let mut key = HeaderValue::from_str(token)
                    .map_err(|_| "the token has characters a header cannot carry".to_owned())?;
                key.set_sensitive(true);
                headers.push((HeaderName::from_static("x-gotify-key"), key));
                let mut url = self.url.clone();
                if !url.path().trim_end_matches('/').ends_with("/message") {
                    url.path_segments_mut()
                        .map_err(|()| "the Gotify URL cannot have a path".to_owned())?
                        .pop_if_empty()
                        .push("message");
                }
                (Method::POST, url, Body::Json(gotify(m)))
            }
        };
        Ok(Prepared { method, url, headers, body })
    }
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Slack's mrkdwn needs only `&`, `<` and `>` escaped
/// (https://api.slack.com/reference/surfaces/formatting#escaping).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn slack_item(i: &Item) -> String {
    let mark = match i.severity {
        Severity::Critical => ":rotating_light: ",
        Severity::Warning => ":warning: ",
        Severity::Info => "",
    };
    let mut s = format!("{mark}*{}*\n", slack_escape(&i.headline));
    s.push_str(&format!("When: {} on {}\n", slack_escape(&i.when), slack_escape(&i.host)));
    for (k, v) in &i.facts {
        s.push_str(&format!("*{}:* {}\n", slack_escape(k), slack_escape(v)));
    }
    // Links only ever `https` (release notes) or the updater's own page.
    if let Some(u) = &i.release_notes {
        s.push_str(&format!("<{}|Release notes>\n", slack_escape(u)));
    }
    if let Some(u) = &i.approval_url {
        s.push_str(&format!("<{}|Approval page>\n", slack_escape(u)));
    }
    s.push_str(&format!("*What to do:* {}", slack_escape(&i.next)));
    if !i.log_tail.is_empty() {
        s.push_str(&format!("\n```{}```", slack_escape(&i.log_tail.join("\n"))));
    }
    s
}

/// A Slack incoming webhook's message (https://api.slack.com/messaging/webhooks): `text` is
/// the notification's fallback, `blocks` (Block Kit, https://api.slack.com/reference/block-kit/blocks)
/// a header with the subject (plain text, at most 150 characters) and a `mrkdwn` section per
/// item (at most 3000 characters each, at most 50 blocks per message). Slack's incoming
/// webhooks take no idempotency key: a resend after a crash posts twice.
fn slack(m: &Message) -> serde_json::Value {
    const MAX_SECTIONS: usize = 48;
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": m.subject.chars().take(150).collect::<String>()},
    })];
    let shown = if m.items.len() > MAX_SECTIONS { MAX_SECTIONS - 1 } else { m.items.len() };
    for i in &m.items[..shown] {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&slack_item(i), 3000)},
        }));
    }
    if shown < m.items.len() {
        let more = m.items.len() - shown;
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("…and {more} more: see the mail or `steward audit`.")},
        }));
    }
    json!({ "text": slack_escape(&m.subject), "blocks": blocks })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An `m.room.message` (https://spec.matrix.org/latest/client-server-api/#mroommessage): the
/// plain text in `body`, and HTML of the tags the spec recommends in `formatted_body`
/// (`org.matrix.custom.html`). Critical messages are `m.text` (clients notify); everything
/// else `m.notice`, the msgtype for automated messages that clients may show quietly.
fn matrix(m: &Message) -> serde_json::Value {
    let mut html = format!("<h4>{}</h4>", html_escape(&m.subject));
    for i in &m.items {
        html.push_str(&format!("<p><strong>{}</strong><br>", html_escape(&i.headline)));
        html.push_str(&format!("When: {} on {}", html_escape(&i.when), html_escape(&i.host)));
        for (k, v) in &i.facts {
            html.push_str(&format!("<br><em>{}:</em> {}", html_escape(k), html_escape(v)));
        }
        for (label, u) in [("Release notes", &i.release_notes), ("Approval page", &i.approval_url)]
        {
            if let Some(u) = u {
                html.push_str(&format!("<br><a href=\"{}\">{label}</a>", html_escape(u)));
            }
        }
        html.push_str(&format!("<br><em>What to do:</em> {}</p>", html_escape(&i.next)));
        if !i.log_tail.is_empty() {
            html.push_str(&format!(
                "<pre><code>{}</code></pre>",
                html_escape(&i.log_tail.join("\n"))
            ));
        }
    }
    let msgtype = if severity(m) == Severity::Critical { "m.text" } else { "m.notice" };
    json!({
        "msgtype": msgtype,
        "body": m.text,
        "format": "org.matrix.custom.html",
        "formatted_body": html,
    })
}

/// ntfy's priority (https://docs.ntfy.sh/publish/#message-priority): 5 "urgent" for critical
/// (a long vibration and pop-over), 4 "high" for warning, 3 "default" for info.
pub fn ntfy_priority(s: Severity) -> u8 {
    match s {
        Severity::Critical => 5,
        Severity::Warning => 4,
        Severity::Info => 3,
    }
}

/// Gotify's priority (https://gotify.net/docs/msgextras; the Android app: 1-3 a silent
/// notification, 4-7 with sound, 8-10 also popping up): 9 for critical, 6 for warning, 3
/// for info.
pub fn gotify_priority(s: Severity) -> u8 {
    match s {
        Severity::Critical => 9,
        Severity::Warning => 6,
        Severity::Info => 3,
    }
}

/// A header value; text beyond ASCII as an RFC 2047 encoded word, which ntfy decodes in its
/// headers (https://docs.ntfy.sh/publish/, "message title": UTF-8 titles).
fn header_text(s: &str) -> Result<HeaderValue, String> {
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let raw = if one_line.is_ascii() {
        one_line
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(one_line.as_bytes());
        format!("=?UTF-8?B?{b64}?=")
    };
    HeaderValue::from_str(&raw).map_err(|e| format!("cannot put {s:?} into a header: {e}"))
}

/// ntfy's publish headers (https://docs.ntfy.sh/publish/): `Title`, `Priority`, `Tags` (emoji
/// short codes and words), `Click` (the one item's approval page or release notes), and
/// `X-Sequence-ID` (ntfy 2.16 and later, https://docs.ntfy.sh/publish/#updating-notifications):
/// a message published again with the same sequence id replaces the notification on the
/// subscribers' devices instead of adding one, so a resend after a crash is not a second alert.
/// Older servers ignore the header.
fn ntfy_headers(m: &Message, id: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let sev = severity(m);
    let tag = match sev {
        Severity::Critical => "rotating_light,critical",
        Severity::Warning => "warning",
        Severity::Info => "information_source",
    };
    let mut h = vec![
        (HeaderName::from_static("title"), header_text(&cut(&m.subject, 250))?),
        (HeaderName::from_static("priority"), HeaderValue::from(u16::from(ntfy_priority(sev)))),
        (HeaderName::from_static("tags"), header_text(&format!("{tag},steward"))?),
        (HeaderName::from_static("x-sequence-id"), header_text(id)?),
    ];
    if let [one] = m.items.as_slice() {
        if let Some(link) = one.approval_url.as_ref().or(one.release_notes.as_ref()) {
            h.push((HeaderName::from_static("click"), header_text(link)?));
        }
    }
    Ok(h)
}

/// A Gotify message (https://gotify.net/docs/pushmsg, `POST /message` with the application
/// token in `X-Gotify-Key`): `title`, `message` (plain text, said so in
/// `extras.client::display`), `priority`. Gotify takes no idempotency key: a resend after a
/// crash posts twice.
fn gotify(m: &Message) -> serde_json::Value {
    json!({
        "title": m.subject,
        "message": m.text,
        "priority": gotify_priority(severity(m)),
        "extras": {"client::display": {"contentType": "text/plain"}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(severity: Severity, headline: &str) -> Item {
        Item {
            severity,
            kind: "health.failed",
            told: "health.failed",
            id: uuid::Uuid::nil(),
            headline: headline.into(),
            container: Some("gitea".into()),
            when: "2026-11-30 12:00:00 UTC".into(),
            host: "host".into(),
            facts: vec![("Saw".into(), "GET / answered <502> & died".into())],
            log_tail: vec!["panic: <boom>".into()],
            next: "Look.".into(),
            update_id: None,
            deploy_id: None,
            approval_url: None,
            needs_decision: false,
            release_notes: None,
        }
    }

    fn message(items: Vec<Item>) -> Message {
        Message {
            subject: "[steward] host: gitea is unhealthy".into(),
            text: "plain".into(),
            html: String::new(),
            items,
        }
    }

    fn cfg(format: WebhookFormat, url: &str, token: Option<&str>) -> WebhookConfig {
        WebhookConfig {
            url: Url::parse(url).expect("url"),
            format,
            token: token.map(Into::into),
            matrix_room: (format == WebhookFormat::Matrix).then(|| "!room:example.org".into()),
        }
    }

    const ID: &str = "<01a20903-c44e-766b-a4d4-a8f1720c0a5e.3@steward>";

    #[test]
    fn the_stable_id_fits_a_path_segment_and_a_header() {
        assert_eq!(stable_id(ID), "01a20903-c44e-766b-a4d4-a8f1720c0a5e-3-steward");
        assert!(stable_id(&"x".repeat(100)).len() <= 64);
    }

    #[test]
    fn matrix_puts_to_the_room_with_the_stable_transaction_id_and_a_bearer_token() {
        let c = cfg(WebhookFormat::Matrix, "https://matrix.example.org/", Some("syt_secret"));
        let p = c.prepare(&message(vec![item(Severity::Critical, "down")]), ID).expect("prepare");
        assert_eq!(p.method, Method::PUT);
        assert_eq!(
            p.url.as_str(),
            "https://matrix.example.org/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/01a20903-c44e-766b-a4d4-a8f1720c0a5e-3-steward"
        );
        let auth = p.headers.iter().find(|(k, _)| k == reqwest::header::AUTHORIZATION);
        assert!(auth.is_some_and(|(_, v)| v.as_bytes() == b"Bearer syt_secret" && v.is_sensitive()));
        let Body::Json(b) = p.body else { panic!("json") };
        assert_eq!(b["msgtype"], "m.text");
        assert_eq!(b["format"], "org.matrix.custom.html");
        assert!(
            b["formatted_body"].as_str().is_some_and(|h| h.contains("&lt;502&gt; &amp; died")),
            "{b}"
        );
        let quiet = c.prepare(&message(vec![item(Severity::Warning, "x")]), ID).expect("prepare");
        let Body::Json(b) = quiet.body else { panic!("json") };
        assert_eq!(b["msgtype"], "m.notice");
    }

    #[test]
    fn slack_escapes_mrkdwn_and_stays_within_block_limits() {
        let c =
            cfg(WebhookFormat::Slack, "https://hooks.slack.com/services/T0/B0/secretpath", None);
        let items = (0..50).map(|i| item(Severity::Info, &format!("item {i}"))).collect();
        let p = c.prepare(&message(items), ID).expect("prepare");
        let Body::Json(b) = p.body else { panic!("json") };
        let blocks = b["blocks"].as_array().expect("blocks");
        assert!(blocks.len() <= 50, "{}", blocks.len());
        assert_eq!(blocks[0]["type"], "header");
        let first = blocks[1]["text"]["text"].as_str().expect("text");
        assert!(
            first.contains("&lt;502&gt; &amp; died") && first.contains("```panic: &lt;boom&gt;```"),
            "{first}"
        );
        assert!(blocks
            .last()
            .and_then(|l| l["text"]["text"].as_str())
            .is_some_and(|t| t.contains("3 more")));
        assert!(p.headers.is_empty(), "Slack takes no header and no idempotency key");
        assert_eq!(c.shown(), "https://hooks.slack.com/…");
        let e = c.scrub("POST https://hooks.slack.com/services/T0/B0/secretpath failed");
        assert!(!e.contains("secretpath"), "{e}");
    }

    #[test]
    fn ntfy_and_gotify_map_severity_to_their_priorities() {
        let c = cfg(WebhookFormat::Ntfy, "https://ntfy.example.org/steward-alerts", Some("tk_x"));
        for (sev, want) in [(Severity::Critical, 5u8), (Severity::Warning, 4), (Severity::Info, 3)]
        {
            let p = c.prepare(&message(vec![item(sev, "h")]), ID).expect("prepare");
            let get = |n: &str| {
                p.headers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.to_str().unwrap_or_default().to_owned())
            };
            assert_eq!(get("priority"), Some(want.to_string()));
            assert_eq!(
                get("x-sequence-id").as_deref(),
                Some("01a20903-c44e-766b-a4d4-a8f1720c0a5e-3-steward")
            );
            assert!(matches!(p.body, Body::Text(_)));
        }
        let mut m = message(vec![item(Severity::Info, "h")]);
        m.subject = "[steward] host: Newer image 1.22.7 — für gitea".into();
        let p = c.prepare(&m, ID).expect("prepare");
        let title = p
            .headers
            .iter()
            .find(|(k, _)| k == "title")
            .map(|(_, v)| v.to_str().unwrap_or_default().to_owned());
        assert!(
            title.is_some_and(|t| t.starts_with("=?UTF-8?B?")),
            "non-ASCII titles are encoded words"
        );
        assert_eq!(
            c.shown(),
            "https://ntfy.example.org/…",
            "the topic is a secret on a public server"
        );

        let g = cfg(WebhookFormat::Gotify, "https://push.example.org", Some("AbCdEf"));
        let p = g.prepare(&message(vec![item(Severity::Critical, "h")]), ID).expect("prepare");
        assert_eq!(p.url.as_str(), "https://push.example.org/message");
        let Body::Json(b) = p.body else { panic!("json") };
        assert_eq!(b["priority"], 9);
        assert!(p.headers.iter().any(|(k, v)| k == "x-gotify-key" && v.as_bytes() == b"AbCdEf"));
        assert_eq!(
            g.scrub("GET x answered 401: token AbCdEf unknown"),
            "GET x answered 401: token *** unknown"
        );
        assert!(!format!("{g:?}").contains("AbCdEf"));
    }
}
