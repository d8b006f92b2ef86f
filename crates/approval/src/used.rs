//! A link decides once, across processes and restarts: the page claims it in its kind's KV
//! bucket ([`LinkKind::used_bucket`]: the updater's `APPROVAL_LINKS`, the deployer's
//! `DEPLOY_LINKS`) with a `create`, which fails when the key exists, before it publishes the
//! decision. Two clicks at once, on one process or two, or one before a restart and one
//! after: the second finds the claim.
//!
//! The claim and the publish are two writes, so there are two gaps, each said rather than
//! hidden:
//! - the publish fails: when the event was certainly not stored (refused, never sent), the
//!   page releases the claim (the operator may click again) and says so; when it may have
//!   been (no ack within the retry bound), or the release fails too, the link stays spent and
//!   the page names the command that decides on the host ([`Shell::not_published`]): a
//!   second click must not publish a second decision, possibly the other way;
//! - the process dies between the two: the claim stays and nothing was published. A later
//!   click is refused, and while the change still waits the refusal says the decision may not
//!   have been recorded and names the command ([`UsedLink::refusal`]). Releasing it instead
//!   would need to know the publish did not land, which the process that died cannot tell.
//!
//! Keys are the decided id (`Uuid::simple`), scoped to the host by `StateStore` under host
//! routing (`<host>.<id>`, which the NATS permissions let only that host's agent write).

use serde::{Deserialize, Serialize};
use steward_bus::approval::LinkKind;
use steward_bus::{Bus, BusError, StateStore};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::page::{Shell, View};

/// A used link: what it decided, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedLink {
    /// `approve` or `reject`.
    pub decision: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl UsedLink {
    /// `approved` or `rejected`.
    pub fn decided(&self) -> &'static str {
        if self.decision == "approve" {
            "approved"
        } else {
            "rejected"
        }
    }

    /// What the page says to a click on a used link. `still_waits`: the change still waits for
    /// a decision, so the first one may never have been published (the process stopped
    /// between its claim and its publish); `on_the_host` names the command that decides.
    pub fn refusal(&self, still_waits: bool, on_the_host: &str) -> String {
        let used = format!("This link was already used: {} at {}.", self.decided(), self.at);
        if still_waits {
            format!(
                "{used} It still waits for a decision: if it does not move on within a minute, \
                 that decision was not recorded (Steward stopped while taking it). A link works \
                 once; nothing more was changed. {on_the_host}"
            )
        } else {
            format!("{used} A link works once; nothing more was changed.")
        }
    }
}

/// The claims of one kind of link.
#[derive(Clone)]
pub struct UsedLinks {
    store: StateStore<UsedLink>,
}

impl std::fmt::Debug for UsedLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsedLinks").finish_non_exhaustive()
    }
}

fn key(id: Uuid) -> String {
    id.simple().to_string()
}

impl UsedLinks {
    /// Opens `kind`'s bucket (provisioned by the setup, written by the kind's service only).
    pub async fn open(bus: &Bus, kind: LinkKind) -> Result<Self, BusError> {
        Ok(Self { store: StateStore::open(bus, kind.used_bucket()).await? })
    }

    /// The claim of `id`'s link, if it was used.
    pub async fn used(&self, id: Uuid) -> Result<Option<UsedLink>, BusError> {
        Ok(self.store.get(&key(id)).await?.map(|v| v.value))
    }

    /// Claims `id`'s link for `decision` at `at`: `Ok(true)` when this call took it,
    /// `Ok(false)` when it was already used (by any process, before any restart).
    pub async fn claim(
        &self,
        id: Uuid,
        decision: &str,
        at: OffsetDateTime,
    ) -> Result<bool, BusError> {
        let used = UsedLink { decision: decision.to_owned(), at };
        match self.store.create(&key(id), &used).await {
            Ok(_) => Ok(true),
            Err(BusError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives `id`'s link back after its decision could not be published.
    pub async fn release(&self, id: Uuid) -> Result<(), BusError> {
        self.store.delete(&key(id)).await
    }
}

impl Shell {
    /// The decision on `id`'s link could not be published (`error`) after its claim in
    /// `used`. When the error says the event was certainly not stored (refused, never sent,
    /// not encodable), the claim is given back and the operator may click again. When it
    /// does not (no ack within the retry bound: the event may have landed, its ack lost),
    /// the claim stays, so the link cannot decide a second time, possibly the other way; the
    /// page says the decision may not have been recorded and names the command.
    pub async fn not_published(
        &self,
        error: &BusError,
        used: &UsedLinks,
        id: Uuid,
        on_the_host: &str,
    ) -> axum::response::Response {
        use axum::http::StatusCode;
        let certainly_not_stored = matches!(
            error,
            BusError::PublishRefused { .. } | BusError::NotConnected | BusError::Encode(_)
        );
        let spent = |why: String| {
            self.render(
                StatusCode::SERVICE_UNAVAILABLE,
                &View::say("Not confirmed", format!("{why} {on_the_host}")),
            )
        };
        if !certainly_not_stored {
            tracing::error!(%error, "approval page: the decision's publish is unconfirmed; the link stays spent");
            return spent(
                "Steward could not confirm that the decision was recorded, so this link no longer \
                 works (it must not decide twice). If the change still waits for a decision in a \
                 few minutes, the decision was not recorded."
                    .into(),
            );
        }
        match used.release(id).await {
            Ok(()) => self.unavailable(error),
            Err(release) => {
                tracing::error!(%error, %release, "approval page: decision not published and the link not released: it is spent");
                spent(
                    "Steward could not record the decision, nor free the link again: nothing was \
                     changed, and this link no longer works."
                        .into(),
                )
            }
        }
    }
}
