//! The approval page behind a signed link: `GET /approve/TOKEN` shows the update and two
//! buttons; only `POST /approve/TOKEN` (from that page) decides, because mail scanners and
//! link previews fetch every link they see. The page's shell (form, rendering, refusal of a
//! bad token) is `steward_approval::page`'s, shared with the deployer's.
//!
//! Invariants: a forged, expired, used or no-longer-pending link changes nothing and says
//! why; a link decides at most once (claimed in the `APPROVAL_LINKS` bucket before the
//! decision is published, released again if publishing fails: `steward_approval::used`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Form, Router};
use steward_approval::links::expiry_of;
use steward_approval::page::{row, Decision, Row, Shell, View};
use steward_approval::{ApprovalLinks, LinkKind, UsedLinks};
use steward_bus::BusError;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{Event, UpdateApproved, UpdateRejected};
use time::OffsetDateTime;

use crate::flow::Flow;

pub use steward_approval::page::PAGE_ACTOR;
pub use steward_approval::UsedLink;
pub use steward_events::records::USED_LINKS_BUCKET;

/// How to decide without the link.
const ON_THE_HOST: &str =
    "Use `steward approve` or `steward reject` on the host, or wait for the next newer image.";
/// What approving does.
const NOTE: &str = "Approving backs up first, then recreates the container on the new image, checks its health and rolls back if it fails. This link works once.";

#[derive(Clone)]
struct Page {
    flow: Flow,
    links: ApprovalLinks,
    used: UsedLinks,
    shell: Shell,
}

/// The page's routes.
pub async fn router(flow: Flow, links: ApprovalLinks) -> anyhow::Result<Router> {
    let used = UsedLinks::open(&flow.bus, LinkKind::Update).await?;
    let page = Page { flow, links, used, shell: Shell::new()? };
    Ok(Router::new().route("/approve/{token}", get(show).post(decide)).with_state(page))
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

/// The update as the page tells it.
fn rows(r: &UpdateRecord) -> Vec<Row> {
    let mut rows = vec![
        row("Container", r.container.clone()),
        row("Image", r.image.clone()),
        row("Running now", told(r.versions.current_version.as_ref(), None, &r.from_digest)),
        row(
            "New version",
            told(r.versions.new_version.as_ref(), r.new_tag.as_deref(), &r.to_digest),
        ),
    ];
    // The build time and its age, as the mail says it.
    let released = r.versions.new_version.as_ref().and_then(|v| {
        let at = v.created?.format(&time::format_description::well_known::Rfc3339).ok()?;
        let age = v.age(OffsetDateTime::now_utc())?;
        Some(format!("{at} ({age} ago)"))
    });
    if let Some(released) = released {
        rows.push(row("Released", released));
    }
    // Release notes or changes: `https` only (`steward_events::release_notes`).
    if let Some(notes) = r.versions.release_notes() {
        rows.push(Row { label: "Release notes".into(), value: notes.clone(), href: Some(notes) });
    }
    rows.push(row("Update id", r.update_id.to_string()));
    rows
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
        let view = View {
            title: title.to_owned(),
            message: message.to_owned(),
            rows: record.map(rows).unwrap_or_default(),
            form,
            expires,
            note: NOTE.to_owned(),
        };
        self.shell.render(status, &view)
    }

    fn unavailable(&self, e: &BusError) -> Response {
        self.shell.unavailable(e)
    }

    /// Checks a token and the update it names; `Err` is the page to show instead.
    async fn check(&self, token: &str) -> Result<UpdateRecord, Response> {
        let now = OffsetDateTime::now_utc();
        let update_id = match self.links.verify(token, now) {
            Ok(id) => id,
            Err(e) => return Err(self.shell.refuse_token(&e, ON_THE_HOST)),
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
        match self.used.used(update_id).await {
            Ok(Some(used)) => {
                let message = used.refusal(record.step == UpdateStep::Pending, ON_THE_HOST);
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
    let Some(approve) = form.approves() else { return page.shell.unknown_decision() };
    let record = match page.check(&token).await {
        Err(response) => return response,
        Ok(record) => record,
    };
    match page.used.claim(record.update_id, &form.decision, OffsetDateTime::now_utc()).await {
        Ok(true) => {}
        // Another click got there first.
        Ok(false) => {
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
    let reason = form.reason();
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
        // The link is released when the decision was certainly not recorded, kept spent when
        // it may have been (`Shell::not_published`).
        return page.shell.not_published(&e, &page.used, record.update_id, ON_THE_HOST).await;
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
