//! Signed approval links of manual environments, as image updates have them
//! (`steward_approval`): the notifier asks for the link of a pending deployment by NATS
//! request ([`serve_links`], subject `approval.deploy`), the mail carries it, and the page at
//! `PUBLIC_URL/deploy/approve/TOKEN` ([`router`]) shows the commit and decides on `POST`
//! only, publishing the same `deploy.approved` / `deploy.rejected` as `steward deploy
//! approve|reject` (by `approval-page`). The flow then treats it as it treats the CLI's.
//!
//! A link is minted again on each request from the deployment's record (its id, and an
//! expiry of the link's validity from the deployment's claim), so the token is never stored
//! nor put in an event.
//!
//! Invariants: a link is given, and decides, only while its deployment is the environment's
//! current one and waits for approval, before its expiry, and is not given once used; a token
//! for an update, another deployment or altered is refused; a link decides at most once,
//! across processes and restarts: it is claimed in the deployer's `DEPLOY_LINKS` bucket (a KV
//! `create`, `steward_approval::used`, as the updater claims its links in `APPROVAL_LINKS`)
//! before the decision is published, and released if publishing fails. (A claim kept only in
//! memory let a restarted deployer take a second decision on a deployment still pending, and
//! the page said "rejected" of a deployment being approved.)

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Form, Router};
use futures::StreamExt as _;
use steward_approval::links::expiry_of;
use steward_approval::page::{row, Decision, Row, Shell, View, PAGE_ACTOR};
use steward_approval::{ApprovalLinks, UsedLinks};
use steward_bus::approval::{LinkKind, LinkReply};
use steward_events::records::{DeployRecord, DeployStep};
use steward_events::{DeployApproved, DeployRejected, Event};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::flow::Flow;

/// Where the page is served (next to the webhook's `/deploy/webhook`).
pub const PATH: &str = "/deploy/approve/{token}";
/// How to decide without the link.
const ON_THE_HOST: &str =
    "Use `steward deploy approve` or `steward deploy reject` on the host, or push again.";
/// What approving does.
const NOTE: &str = "Approving backs up first, then recreates the services whose definition changed, checks their health and rolls back to the running commit if it fails. This link works once.";

/// When the link of `record` expires: its validity from the deployment's claim (the record
/// keeps nothing else, so every request mints the same link).
pub fn expiry(links: &ApprovalLinks, record: &DeployRecord) -> OffsetDateTime {
    links.expiry(record.started_at)
}

/// What the deployer answers for deployment `id` at `now`.
pub async fn answer(
    flow: &Flow,
    links: &ApprovalLinks,
    used: &UsedLinks,
    id: Uuid,
    now: OffsetDateTime,
) -> LinkReply {
    let unavailable = |reason: &str| LinkReply::Unavailable { reason: reason.to_owned() };
    let record = match flow.by_deploy_id(id).await {
        Ok(Some(v)) => v.value,
        Ok(None) => return unavailable("this deployment is not known (any more)"),
        Err(e) => return unavailable(&format!("the deployer cannot read its state: {e}")),
    };
    if record.step != DeployStep::Pending || record.approved_by.is_some() {
        return unavailable("this deployment no longer waits for approval");
    }
    let expires = expiry(links, &record);
    if expires <= now {
        return unavailable("the approval link has expired");
    }
    match used.used(id).await {
        Ok(None) => {}
        Ok(Some(_)) => return unavailable("the approval link was already used"),
        Err(e) => return unavailable(&format!("the deployer cannot read its state: {e}")),
    }
    LinkReply::Link { url: links.link_for(id, expires), expires_at: expires }
}

/// Answers the notifier's link requests until `shutdown`.
pub async fn serve_links(
    flow: Flow,
    links: ApprovalLinks,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let used = UsedLinks::open(&flow.bus, LinkKind::Deploy).await?;
    let mut asks = flow.bus.approval_link_requests(LinkKind::Deploy).await?;
    tracing::info!("answering deployment approval link requests");
    loop {
        let ask = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ask = asks.next() => match ask {
                Some(ask) => ask,
                None => anyhow::bail!("the approval link subscription ended"),
            },
        };
        let reply = match &ask.request {
            Ok(r) => answer(&flow, &links, &used, r.id, OffsetDateTime::now_utc()).await,
            Err(why) => {
                tracing::warn!(%why, "unreadable approval link request");
                LinkReply::Unavailable { reason: why.clone() }
            }
        };
        if let LinkReply::Unavailable { reason } = &reply {
            tracing::info!(%reason, "no deployment approval link given");
        }
        if let Err(e) = ask.answer(&reply).await {
            tracing::warn!(error = %e, "cannot answer an approval link request");
        }
    }
}

#[derive(Clone)]
struct Page {
    flow: Flow,
    links: ApprovalLinks,
    shell: Shell,
    /// The links already used (`DEPLOY_LINKS`).
    used: UsedLinks,
}

/// The page's routes.
pub async fn router(flow: Flow, links: ApprovalLinks) -> anyhow::Result<Router> {
    let used = UsedLinks::open(&flow.bus, LinkKind::Deploy).await?;
    let page = Page { flow, links, shell: Shell::new()?, used };
    Ok(Router::new().route(PATH, get(show).post(decide)).with_state(page))
}

/// The deployment as the page tells it: what the mail tells.
fn rows(r: &DeployRecord) -> Vec<Row> {
    let mut rows = vec![
        row("Environment", r.change.environment.clone()),
        row("Branch", r.change.branch.clone()),
        row("Commit", r.change.commit.clone()),
    ];
    if let Some(author) = &r.change.author {
        rows.push(row("Author", author.clone()));
    }
    if let Some(message) = &r.change.message {
        rows.push(row("Message", message.clone()));
    }
    rows.push(row("Running now", r.deployed_commit.clone().unwrap_or_else(|| "nothing".into())));
    rows.push(row("Services", r.services.join(", ")));
    if let Some(by) = &r.pinned_by {
        rows.push(row("Pinned by", by.clone()));
    }
    rows.push(row("Deployment id", r.deploy_id.to_string()));
    rows
}

impl Page {
    fn gone(&self, title: &str, message: String, record: &DeployRecord) -> Response {
        self.shell.render(StatusCode::GONE, &View::say(title, message).with_rows(rows(record)))
    }

    /// Checks a token and the deployment it names; `Err` is the page to show instead.
    async fn check(&self, token: &str) -> Result<DeployRecord, Response> {
        let id = self
            .links
            .verify(token, OffsetDateTime::now_utc())
            .map_err(|e| self.shell.refuse_token(&e, ON_THE_HOST))?;
        let record = match self.flow.by_deploy_id(id).await {
            Ok(Some(v)) => v.value,
            Ok(None) => {
                return Err(self.shell.render(
                    StatusCode::NOT_FOUND,
                    &View::say(
                        "No such deployment",
                        "This deployment is not known (any more): a later push replaced it. Nothing was changed.",
                    ),
                ))
            }
            Err(e) => return Err(self.shell.unavailable(&e)),
        };
        match self.used.used(id).await {
            Ok(Some(used)) => {
                let message = used.refusal(
                    record.step == DeployStep::Pending && record.approved_by.is_none(),
                    ON_THE_HOST,
                );
                return Err(self.gone("Link already used", message, &record));
            }
            Ok(None) => {}
            Err(e) => return Err(self.shell.unavailable(&e)),
        }
        if record.step != DeployStep::Pending || record.approved_by.is_some() {
            let state = match &record.approved_by {
                Some(by) if record.step == DeployStep::Pending => {
                    format!("approved by {by}; its test and start are under way")
                }
                _ => format!("it is {}", record.step.name()),
            };
            let message = format!(
                "This deployment no longer waits for approval ({state}). Nothing was changed."
            );
            return Err(self.gone("Already decided", message, &record));
        }
        Ok(record)
    }
}

async fn show(State(page): State<Page>, Path(token): Path<String>) -> Response {
    match page.check(&token).await {
        Err(response) => response,
        Ok(record) => {
            let view = View {
                title: format!(
                    "Deploy {} to {}?",
                    record.change.short_commit(),
                    record.change.environment
                ),
                message: "Review the deployment and approve or reject it.".into(),
                rows: rows(&record),
                form: true,
                expires: expiry_of(&token),
                note: NOTE.into(),
            };
            page.shell.render(StatusCode::OK, &view)
        }
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
    // Claimed before publishing: a second click (or the other button), on this process or a
    // restarted one, finds it.
    match page.used.claim(record.deploy_id, &form.decision, OffsetDateTime::now_utc()).await {
        Ok(true) => {}
        Ok(false) => {
            let message =
                "This link was used a moment ago; a link works once. Nothing more was changed.";
            return page.gone("Link already used", message.into(), &record);
        }
        Err(e) => return page.shell.unavailable(&e),
    }
    steward_failpoints::failpoint!("link_claimed");
    let data: steward_events::EventData = if approve {
        DeployApproved { deploy_id: record.deploy_id, by: PAGE_ACTOR.into() }.into()
    } else {
        DeployRejected { deploy_id: record.deploy_id, by: PAGE_ACTOR.into(), reason: form.reason() }
            .into()
    };
    let mut event = Event::new(&page.flow.source, data)
        .with_correlation(record.correlation_id)
        .with_trace(record.trace.clone());
    event.causation_id = Some(record.last_event_id);
    if let Err(e) = page.flow.bus.publish(&event).await {
        // The link is released when the decision was certainly not recorded, kept spent when
        // it may have been (`Shell::not_published`).
        return page.shell.not_published(&e, &page.used, record.deploy_id, ON_THE_HOST).await;
    }
    tracing::info!(deploy = %record.deploy_id, environment = %record.change.environment, approve, "decided on the approval page");
    let steps = "backup, the changed services, health check, and rollback if it fails. You will be notified of the outcome.";
    let windowed = !record.by_hand
        && page
            .flow
            .cfg
            .environment(&record.change.environment)
            .is_some_and(|e| e.window.is_some());
    let (title, message) = match (approve, page.flow.waits_until(&record)) {
        (true, None) if windowed => (
            "Approved",
            format!(
                "The deployment starts now, inside the deployment window of {} (should its test outlast the window, at the window's next opening): {steps}",
                record.change.environment
            ),
        ),
        (true, None) => ("Approved", format!("The deployment starts now: {steps}")),
        (true, Some(until)) => (
            "Approved",
            format!(
                "The deployment starts when the deployment window of {} opens ({until}, host time): {steps}",
                record.change.environment
            ),
        ),
        (false, _) => (
            "Rejected",
            "Nothing was deployed; the environment stays on its running commit.".to_owned(),
        ),
    };
    page.shell.render(StatusCode::OK, &View::say(title, message).with_rows(rows(&record)))
}
