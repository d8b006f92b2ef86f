//! The approval page behind a signed link: `GET /approve/TOKEN` shows the update and two
//! buttons; only `POST /approve/TOKEN` (from that page) decides, because mail scanners and
//! link previews fetch every link they see.
//!
//! Invariants: a forged, expired, used or no-longer-pending link changes nothing and says
//! why; a link decides at most once (claimed in the `APPROVAL_LINKS` bucket before the
//! decision is published, released again if publishing fails).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::{Deserialize, Serialize};
use steward_bus::{BusError, StateStore};
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{Event, UpdateApproved, UpdateRejected};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::flow::Flow;
use crate::links::{expiry_of, ApprovalLinks, LinkError};

pub use steward_events::records::USED_LINKS_BUCKET;
/// Who decided, as recorded in `update.approved` / `update.rejected`.
pub const PAGE_ACTOR: &str = "approval-page";

/// A used link: what it decided, when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsedLink {
    /// `approve` or `reject`.
    pub decision: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Clone)]
struct Page {
    flow: Flow,
    links: ApprovalLinks,
    used: StateStore<UsedLink>,
    template: Arc<minijinja::Environment<'static>>,
}

/// The page's routes.
pub async fn router(flow: Flow, links: ApprovalLinks) -> anyhow::Result<Router> {
    let used = StateStore::open(&flow.bus, USED_LINKS_BUCKET).await?;
    let mut env = minijinja::Environment::new();
    env.add_template("approval.html", include_str!("../templates/approval.html"))?;
    let page = Page { flow, links, used, template: Arc::new(env) };
    Ok(Router::new().route("/approve/{token}", get(show).post(decide)).with_state(page))
}

/// What the form sends.
#[derive(Debug, Deserialize)]
struct Decision {
    decision: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
struct UpdateView {
    container: String,
    image: String,
    current: String,
    new: String,
    /// When the new image was built, if it says.
    released: Option<String>,
    /// Its release notes or changes (`https` only: `steward_events::release_notes`).
    notes: Option<String>,
    id: Uuid,
}

/// `1.22.7 (tag 1.22.7, sha256:…)`, as the approval mail tells it.
fn told(
    version: Option<&steward_events::ImageVersion>,
    tag: Option<&str>,
    digest: &steward_events::Digest,
) -> String {
    let tag = tag.map(|t| format!("tag {t}, ")).unwrap_or_default();
    match version.and_then(|v| v.version.as_deref()) {
        Some(v) => format!("{v} ({tag}{digest})"),
        None => format!("{tag}{digest}"),
    }
}

impl Page {
    fn render(
        &self,
        status: StatusCode,
        title: &str,
        message: &str,
        record: Option<&UpdateRecord>,
        form: bool,
        expires: Option<OffsetDateTime>,
    ) -> Response {
        let update = record.map(|r| UpdateView {
            container: r.container.clone(),
            image: r.image.clone(),
            current: told(r.versions.current_version.as_ref(), None, &r.from_digest),
            new: told(r.versions.new_version.as_ref(), r.new_tag.as_deref(), &r.to_digest),
            // The build time and its age, as the mail says it.
            released: r.versions.new_version.as_ref().and_then(|v| {
                let at = v.created?.format(&time::format_description::well_known::Rfc3339).ok()?;
                let age = v.age(OffsetDateTime::now_utc())?;
                Some(format!("{at} ({age} ago)"))
            }),
            notes: r.versions.release_notes(),
            id: r.update_id,
        });
        let ctx = minijinja::context! {
            title, message, update, form, expires => expires.map(|t| t.to_string()),
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

    fn unavailable(&self, e: &BusError) -> Response {
        tracing::warn!(error = %e, "approval page: state unavailable");
        self.render(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again in a moment",
            "Steward cannot read its state right now; nothing was changed.",
            None,
            false,
            None,
        )
    }

    /// Checks a token and the update it names; `Err` is the page to show instead.
    async fn check(&self, token: &str) -> Result<UpdateRecord, Response> {
        let now = OffsetDateTime::now_utc();
        let update_id = match self.links.verify(token, now) {
            Ok(id) => id,
            Err(e @ LinkError::Forged) => {
                tracing::warn!("approval page: forged or altered link refused");
                return Err(self.render(
                    StatusCode::FORBIDDEN,
                    "Invalid link",
                    &e.to_string(),
                    None,
                    false,
                    None,
                ));
            }
            Err(e @ LinkError::Expired(_)) => {
                return Err(self.render(
                    StatusCode::GONE,
                    "Link expired",
                    &format!("{e}. Nothing was changed. Use `steward approve` or `steward reject` on the host, or wait for the next newer image."),
                    None,
                    false,
                    None,
                ));
            }
        };
        let record = match self.flow.by_update_id(update_id).await {
            Ok(Some(v)) => v.value,
            Ok(None) => {
                return Err(self.render(
                    StatusCode::NOT_FOUND,
                    "No such update",
                    "This update is not known (any more). Nothing was changed.",
                    None,
                    false,
                    None,
                ));
            }
            Err(e) => return Err(self.unavailable(&e)),
        };
        match self.used.get(&update_id.simple().to_string()).await {
            Ok(Some(used)) => {
                let message = format!(
                    "This link was already used: {} at {}. A link works once; nothing was changed.",
                    if used.value.decision == "approve" { "approved" } else { "rejected" },
                    used.value.at
                );
                return Err(self.render(
                    StatusCode::GONE,
                    "Link already used",
                    &message,
                    Some(&record),
                    false,
                    None,
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(self.unavailable(&e)),
        }
        if record.step != UpdateStep::Pending {
            let message = format!(
                "This update no longer waits for a decision (it is {}). Nothing was changed.",
                step_words(record.step)
            );
            return Err(self.render(
                StatusCode::GONE,
                "Already decided",
                &message,
                Some(&record),
                false,
                None,
            ));
        }
        Ok(record)
    }
}

fn step_words(step: UpdateStep) -> String {
    format!("{step:?}").to_lowercase()
}

async fn show(State(page): State<Page>, Path(token): Path<String>) -> Response {
    match page.check(&token).await {
        Err(response) => response,
        Ok(record) => page.render(
            StatusCode::OK,
            &format!("Update {}?", record.container),
            "Review the update and approve or reject it.",
            Some(&record),
            true,
            expiry_of(&token),
        ),
    }
}

async fn decide(
    State(page): State<Page>,
    Path(token): Path<String>,
    Form(form): Form<Decision>,
) -> Response {
    let approve = match form.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return page.render(
                StatusCode::BAD_REQUEST,
                "Unknown decision",
                "Use the Approve or Reject button. Nothing was changed.",
                None,
                false,
                None,
            );
        }
    };
    let record = match page.check(&token).await {
        Err(response) => return response,
        Ok(record) => record,
    };
    let key = record.update_id.simple().to_string();
    let used = UsedLink { decision: form.decision.clone(), at: OffsetDateTime::now_utc() };
    match page.used.create(&key, &used).await {
        Ok(_) => {}
        // Another click got there first.
        Err(BusError::Conflict { .. }) => {
            return page.render(
                StatusCode::GONE,
                "Link already used",
                "This link was used a moment ago; a link works once. Nothing more was changed.",
                Some(&record),
                false,
                None,
            );
        }
        Err(e) => return page.unavailable(&e),
    }
    let reason = form
        .reason
        .map(|r| r.trim().chars().take(200).collect::<String>())
        .filter(|r| !r.is_empty());
    let mut event = if approve {
        Event::new(
            &page.flow.source,
            UpdateApproved { update_id: record.update_id, by: PAGE_ACTOR.into() },
        )
    } else {
        Event::new(
            &page.flow.source,
            UpdateRejected { update_id: record.update_id, by: PAGE_ACTOR.into(), reason },
        )
    }
    .with_correlation(record.correlation_id)
    .with_trace(record.trace.clone());
    event.causation_id = Some(record.last_event_id);
    if let Err(e) = page.flow.bus.publish(&event).await {
        // Release the link: the decision was not recorded, so the operator may try again.
        let _ = page.used.delete(&key).await;
        return page.unavailable(&e);
    }
    tracing::info!(container = %record.container, update = %record.update_id, approve, "decided on the approval page");
    let (title, message) = if approve {
        // Said as the updater will decide it: the same gate as an automatic update.
        let waits = match page.flow.settings(&record.container).await {
            Ok(Ok(settings)) => page.flow.waits_for(&record, &settings).await.unwrap_or_default(),
            _ => vec![],
        };
        let message = if waits.is_empty() {
            "The update starts now: backup, new image, health check, and rollback if it fails. You will be notified of the outcome.".to_owned()
        } else {
            format!("The update waits for {}, then starts: backup, new image, health check, and rollback if it fails. You will be notified of the outcome.", waits.join(", "))
        };
        ("Approved", message)
    } else {
        ("Rejected", "The container stays on its current image.".to_owned())
    };
    page.render(StatusCode::OK, title, &message, Some(&record), false, None)
}
