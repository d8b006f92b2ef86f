//! The shell of an approval page, the same for an update and a deployment: `GET` shows the
//! pending change and two buttons; only `POST` (from that page) decides, because mail
//! scanners and link previews fetch every link they see. What the change is, whether it
//! still waits, and what deciding publishes are the service's.
//!
//! Invariant: every page, refusal or not, is sent with headers that keep the token (it is in
//! the URL) out of caches, referrers, frames and search indexes.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::links::LinkError;

/// Who decided, as recorded in `update.approved|rejected` and `deploy.approved|rejected`.
pub const PAGE_ACTOR: &str = "approval-page";

/// What the form sends.
#[derive(Debug, Deserialize)]
pub struct Decision {
    /// `approve` or `reject` (the button pressed).
    pub decision: String,
    /// Why, when rejecting (optional).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Decision {
    /// `Some(true)` to approve, `Some(false)` to reject, `None` for anything else.
    pub fn approves(&self) -> Option<bool> {
        match self.decision.as_str() {
            "approve" => Some(true),
            "reject" => Some(false),
            _ => None,
        }
    }

    /// The reason, trimmed and bounded (it goes into an event), if any.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .as_deref()
            .map(|r| r.trim().chars().take(200).collect::<String>())
            .filter(|r| !r.is_empty())
    }
}

/// One line of the table describing the change.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What it is.
    pub label: String,
    /// Its value (escaped by the template).
    pub value: String,
    /// A link to show it as (`https` only: the caller's to check).
    pub href: Option<String>,
}

/// A row.
pub fn row(label: &str, value: impl Into<String>) -> Row {
    Row { label: label.to_owned(), value: value.into(), href: None }
}

/// What one page says.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Heading.
    pub title: String,
    /// What happened or what to do.
    pub message: String,
    /// The change, when the token named one that exists.
    pub rows: Vec<Row>,
    /// Whether the decision form is shown.
    pub form: bool,
    /// The link's expiry, shown with the form.
    pub expires: Option<OffsetDateTime>,
    /// What approving does, under the form.
    pub note: String,
}

impl View {
    /// A page with a title and a message only.
    pub fn say(title: &str, message: impl Into<String>) -> Self {
        Self { title: title.to_owned(), message: message.into(), ..Self::default() }
    }

    /// With the change's description.
    pub fn with_rows(mut self, rows: Vec<Row>) -> Self {
        self.rows = rows;
        self
    }
}

/// The template and the rendering.
#[derive(Clone)]
pub struct Shell {
    template: Arc<minijinja::Environment<'static>>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell").finish_non_exhaustive()
    }
}

impl Shell {
    /// Loads the page's template.
    pub fn new() -> Result<Self, minijinja::Error> {
        let mut env = minijinja::Environment::new();
        env.add_template("approval.html", include_str!("../templates/approval.html"))?;
        Ok(Self { template: Arc::new(env) })
    }

    /// `view` with `status`, and the headers that keep the token private.
    pub fn render(&self, status: StatusCode, view: &View) -> Response {
        let ctx = minijinja::context! {
            title => view.title, message => view.message, rows => view.rows, form => view.form,
            expires => view.expires.map(|t| t.to_string()), note => view.note,
        };
        let body = self
            .template
            .get_template("approval.html")
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|e| format!("cannot render the page: {e}"));
        let mut response = (status, axum::response::Html(body)).into_response();
        let h = response.headers_mut();
        // The token is in the URL: keep it out of caches, referrers, frames and indexes.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
        response
    }

    /// Steward's state cannot be read: nothing changed, try again.
    pub fn unavailable(&self, error: &dyn std::fmt::Display) -> Response {
        tracing::warn!(%error, "approval page: state unavailable");
        self.render(
            StatusCode::SERVICE_UNAVAILABLE,
            &View::say(
                "Try again in a moment",
                "Steward cannot read its state right now; nothing was changed.",
            ),
        )
    }

    /// A token refused by [`crate::ApprovalLinks::verify`]; `on_the_host` says how to decide
    /// without the link.
    pub fn refuse_token(&self, e: &LinkError, on_the_host: &str) -> Response {
        match e {
            LinkError::Forged => {
                tracing::warn!("approval page: forged or altered link refused");
                self.render(StatusCode::FORBIDDEN, &View::say("Invalid link", e.to_string()))
            }
            LinkError::Expired(_) => self.render(
                StatusCode::GONE,
                &View::say("Link expired", format!("{e}. Nothing was changed. {on_the_host}")),
            ),
        }
    }

    /// A form that pressed neither button.
    pub fn unknown_decision(&self) -> Response {
        self.render(
            StatusCode::BAD_REQUEST,
            &View::say(
                "Unknown decision",
                "Use the Approve or Reject button. Nothing was changed.",
            ),
        )
    }
}
