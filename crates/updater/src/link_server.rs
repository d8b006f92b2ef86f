//! Answers the notifier's requests for approval links (`steward_bus::approval`).
//!
//! The link of a pending update is minted again from its record (update id and expiry), so
//! the token lives only in this process, in the mail, and in whatever the operator clicks.
//!
//! Invariant: a link is given only for the update a container currently waits on a decision
//! for, before its expiry, and never for a link already used.

use futures::StreamExt as _;
use steward_approval::{ApprovalLinks, UsedLinks};
use steward_bus::approval::{LinkKind, LinkReply};
use steward_events::records::UpdateStep;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::flow::Flow;

/// What the updater answers for `update_id` at `now`.
pub async fn answer(
    flow: &Flow,
    links: &ApprovalLinks,
    used: &UsedLinks,
    update_id: Uuid,
    now: OffsetDateTime,
) -> LinkReply {
    let unavailable = |reason: &str| LinkReply::Unavailable { reason: reason.to_owned() };
    let record = match flow.by_update_id(update_id).await {
        Ok(Some(v)) => v.value,
        Ok(None) => return unavailable("this update is not known (any more)"),
        Err(e) => return unavailable(&format!("the updater cannot read its state: {e}")),
    };
    if record.step != UpdateStep::Pending {
        return unavailable("this update no longer waits for a decision");
    }
    let Some(expires) = record.approval_expires else {
        return unavailable("this update was announced without an approval link");
    };
    if expires <= now {
        return unavailable("the approval link has expired");
    }
    match used.used(update_id).await {
        Ok(None) => {}
        Ok(Some(_)) => return unavailable("the approval link was already used"),
        Err(e) => return unavailable(&format!("the updater cannot read its state: {e}")),
    }
    LinkReply::Link { url: links.link_for(update_id, expires), expires_at: expires }
}

/// Serves link requests until `shutdown`.
pub async fn serve(
    flow: Flow,
    links: ApprovalLinks,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let used = UsedLinks::open(&flow.bus, LinkKind::Update).await?;
    let mut asks = flow.bus.approval_link_requests(LinkKind::Update).await?;
    tracing::info!("answering approval link requests");
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
            tracing::info!(%reason, "no approval link given");
        }
        if let Err(e) = ask.answer(&reply).await {
            tracing::warn!(error = %e, "cannot answer an approval link request");
        }
    }
}
