//! Reading what the notifier mailed: the test bed's SMTP server (aiosmtpd) stores every
//! accepted message as a file in a maildir; tests tell their mail apart by a unique recipient.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Subject line.
    pub subject: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Plain-text part.
    pub text: String,
    /// HTML part.
    pub html: String,
    /// `Message-ID`.
    pub message_id: Option<String>,
}

/// A recipient address no other test uses.
pub fn unique_address(tag: &str) -> String {
    format!("{}@steward.test", steward_testkit::unique_name(tag).to_lowercase())
}

/// The test bed's maildir.
pub fn testbed_maildir() -> PathBuf {
    PathBuf::from(steward_testkit::testbed::require("STEWARD_TEST_MAILDIR"))
}

/// Notifier settings for mail to `to` through `smtp` (`host:port`), bursts collected for 1 s.
pub fn notifier_env(smtp: &str, to: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STEWARD_SMTP_URL", format!("smtp://{smtp}")),
        ("STEWARD_MAIL_FROM", "Steward <steward@steward.test>".into()),
        ("STEWARD_MAIL_TO", to.to_owned()),
        ("STEWARD_NOTIFY_GROUP_WINDOW", "1s".into()),
    ]
}

/// Notifier settings for the test bed's SMTP server.
pub fn testbed_notifier_env(to: &str) -> Vec<(&'static str, String)> {
    notifier_env(&steward_testkit::testbed::require("STEWARD_TEST_SMTP"), to)
}

/// Every message in `maildir` addressed to `to`, oldest first.
pub fn mails_to(maildir: &Path, to: &str) -> Vec<Mail> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(maildir.join("new"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, path)| std::fs::read(&path).ok())
        .filter_map(|raw| {
            let m = mail_parser::MessageParser::default().parse(&raw)?;
            let recipients: Vec<String> = m
                .to()
                .map(|a| a.iter().filter_map(|x| x.address()).map(str::to_owned).collect())
                .unwrap_or_default();
            if !recipients.iter().any(|r| r == to) {
                return None;
            }
            Some(Mail {
                subject: m.subject().unwrap_or_default().to_owned(),
                to: recipients,
                text: m.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
                html: m.body_html(0).map(|t| t.into_owned()).unwrap_or_default(),
                message_id: m.message_id().map(str::to_owned),
            })
        })
        .collect()
}

/// Waits until at least `n` messages to `to` arrived; all of them.
pub fn wait_mails(maildir: &Path, to: &str, n: usize, bound: Duration) -> Vec<Mail> {
    let deadline = Instant::now() + bound;
    loop {
        let got = mails_to(maildir, to);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} mail(s) to {to} within {bound:?}: {got:#?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The approval link `mail` carries (its `Approval page: ` line), which must be served under
/// `public` (the updater's `STEWARD_PUBLIC_URL`); `context` goes into a failure's message.
pub fn approval_link(mail: &Mail, public: &str, context: &str) -> String {
    let link = mail
        .text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Approval page: "))
        .unwrap_or_else(|| panic!("no link in the mail: {}\n{context}", mail.text))
        .to_owned();
    assert!(link.starts_with(&format!("{public}/approve/")), "not {public}'s link: {link}");
    link
}

/// POSTs the decision `approve` to an approval link, as its page's button does; the link
/// must take it.
pub async fn approve_by_link(link: &str) {
    let posted = reqwest::Client::new()
        .post(link)
        .form(&[("decision", "approve")])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("POST the link");
    assert!(posted.status().is_success(), "{link}: {}", posted.status());
}

/// An SMTP server of the test's own (aiosmtpd in a container of its own,
/// `steward_testkit::servers::Own`), for taking SMTP away and back.
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its maildir.
    pub maildir: PathBuf,
    server: Option<steward_testkit::servers::Own>,
}

impl SmtpServer {
    /// A server that is not running yet, on a free port.
    pub fn stopped() -> Self {
        let maildir = std::env::temp_dir().join(steward_testkit::unique_name("maildir"));
        Self { port: steward_testkit::free_port(), maildir, server: None }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it greets.
    pub fn start(&mut self) {
        self.server = Some(steward_testkit::servers::Own::smtp(self.port, &self.maildir));
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

/// What a [`webhook_sink`] received: each JSON body, in order.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver on 127.0.0.1 (a task of the calling runtime): its URL, and the JSON
/// bodies it received.
pub async fn webhook_sink() -> (String, Received) {
    let received: Received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/hook"), received)
}

/// A `health.failed` of `container` (HTTP check, three failures): the notifier mails it.
pub fn health_failed(container: &str) -> steward_events::Event {
    steward_events::Event::new(
        "steward-health/test",
        steward_events::HealthFailed {
            container: container.into(),
            check: "http".into(),
            reason: "GET http://127.0.0.1:1/ failed: connection refused".into(),
            consecutive_failures: 3,
        },
    )
}

/// One request an [`http_sink`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST`, `PUT`, ...
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Headers, names in lower case (the last value of a repeated one).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
}

impl Recorded {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What an [`http_sink`] received, in order.
pub type Requests = std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>;

/// An HTTP receiver on 127.0.0.1 (a task of the calling runtime) that records every request,
/// whatever its method and path, and answers `status` with `{"event_id": ..., "id": 1}` (what
/// a Matrix homeserver and Gotify answer): its base URL (`http://127.0.0.1:PORT`) and what it
/// received. A stand-in for Slack, Matrix, ntfy and Gotify, none of which runs here.
pub async fn http_sink(status: u16) -> (String, Requests) {
    let received: Requests = Requests::default();
    let sink = received.clone();
    let status = axum::http::StatusCode::from_u16(status).expect("a status code");
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: String| {
            let sink = sink.clone();
            async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| {
                        (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
                    })
                    .collect();
                let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                let r = Recorded { method: method.to_string(), path, headers, body };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                (status, axum::Json(serde_json::json!({"event_id": "$steward-test", "id": 1})))
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}"), received)
}

/// Waits (at most `bound`) until `sink` received at least `n` requests; all of them.
pub async fn wait_requests(sink: &Requests, n: usize, bound: Duration) -> Vec<Recorded> {
    let deadline = Instant::now() + bound;
    loop {
        let got = sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} request(s) within {bound:?}: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
