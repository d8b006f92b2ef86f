//! Approval links by request and reply, on plain NATS subjects outside the stream: one per
//! kind of decision ([`LinkKind`]): `<prefix>approval.link` (image updates, answered by the
//! updater) and `<prefix>approval.deploy` (deployments, answered by the deployer).
//!
//! An approval link holds a live token: whoever has it approves a production change. So it
//! is never an event (the stream keeps events for a year and every service reads them): the
//! notifier asks the service that decides for it when it mails, and that service mints it
//! again from the pending record. The NATS permissions let only the notifier ask and only the
//! kind's service answer, and that service may answer only the requests it received
//! (`allow_responses`), never publish to anyone's inbox ([`crate::Permissions`]).

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use steward_events::Service;

use crate::{Bus, BusError};

/// Subject (under the namespace's prefix) of image update approval link requests. Not an
/// event family: the stream never captures it.
pub const APPROVAL_LINK_SUBJECT: &str = "approval.link";
/// Subject of deployment approval link requests (same family, outside the stream).
pub const DEPLOY_LINK_SUBJECT: &str = "approval.deploy";

/// What an approval link decides on. Part of what a token signs, so a link minted for one
/// kind never decides on the other, even under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// A pending image update (`update.pending`), decided by the updater.
    Update,
    /// A pending deployment (`deploy.pending`), decided by the deployer.
    Deploy,
}

impl LinkKind {
    /// Every kind.
    pub const ALL: [LinkKind; 2] = [LinkKind::Update, LinkKind::Deploy];

    /// Its request subject, under the namespace's prefix (and the host's suffix when routed).
    pub fn subject(self) -> &'static str {
        match self {
            LinkKind::Update => APPROVAL_LINK_SUBJECT,
            LinkKind::Deploy => DEPLOY_LINK_SUBJECT,
        }
    }

    /// The one service that mints and answers its links.
    pub fn server(self) -> Service {
        match self {
            LinkKind::Update => Service::Updater,
            LinkKind::Deploy => Service::Deployer,
        }
    }

    /// The KV bucket (the server's own) where its links are claimed once used.
    pub fn used_bucket(self) -> &'static str {
        match self {
            LinkKind::Update => steward_events::records::USED_LINKS_BUCKET,
            LinkKind::Deploy => steward_events::records::USED_DEPLOY_LINKS_BUCKET,
        }
    }

    /// `update` or `deploy`, as logs and pages say it.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Update => "update",
            LinkKind::Deploy => "deploy",
        }
    }
}

/// Longest request body a service reads: a request is a UUID in JSON.
const MAX_REQUEST: usize = 256;

/// What the notifier asks: the link of one pending update or deployment (the kind is the
/// subject's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRequest {
    /// The pending update (from its `update.pending`) or deployment (`deploy.pending`).
    /// Read under its former name too, from a notifier of the previous release.
    #[serde(alias = "update_id")]
    pub id: Uuid,
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum LinkReply {
    /// The link, and until when it works.
    Link {
        /// The approval page, token included.
        url: String,
        /// Expiry.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// No link: the change no longer waits for a decision, is unknown, or links are off.
    Unavailable {
        /// Why, for the mail.
        reason: String,
    },
}

/// One request received by the kind's service; answer it with [`LinkAsk::answer`].
#[derive(Debug)]
pub struct LinkAsk {
    /// The request, or why it could not be read (answered as unavailable).
    pub request: Result<LinkRequest, String>,
    reply_to: Option<async_nats::Subject>,
    client: async_nats::Client,
}

impl LinkAsk {
    /// Sends `reply` to the asker. A request without a reply subject is dropped.
    pub async fn answer(self, reply: &LinkReply) -> Result<(), BusError> {
        let Some(to) = self.reply_to else { return Ok(()) };
        let body = serde_json::to_vec(reply)
            .map_err(|e| BusError::Nats { op: "encode link reply", reason: e.to_string() })?;
        self.client.publish(to, body.into()).await.map_err(|e| BusError::nats("answer link", e))
    }
}

impl Bus {
    /// `approval.link`, or under host routing `approval.link.<host>` (`approval.deploy[.<host>]`
    /// for deployments): only the kind's service of the change's host answers (and only its
    /// NATS user may).
    fn approval_link_subject(&self, kind: LinkKind, host: Option<&str>) -> String {
        let subject = kind.subject();
        match host.filter(|_| self.config().routes_by_host()) {
            Some(host) => self.namespace().subject(&format!("{subject}.{host}")),
            None => self.namespace().subject(subject),
        }
    }

    /// Asks the service of `kind` on `host` (the pending event's) for the approval link of
    /// `id`, waiting at most `timeout`. No service listening is an error at once (NATS
    /// answers "no responders").
    pub async fn request_approval_link(
        &self,
        kind: LinkKind,
        id: Uuid,
        host: Option<&str>,
        timeout: Duration,
    ) -> Result<LinkReply, BusError> {
        let body = serde_json::to_vec(&LinkRequest { id })
            .map_err(|e| BusError::Nats { op: "encode link request", reason: e.to_string() })?;
        let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout));
        let subject = self.approval_link_subject(kind, host);
        let answer =
            self.client.send_request(subject.clone(), request).await.map_err(|e| {
                match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        BusError::NoResponders { subject }
                    }
                    _ => BusError::nats("ask for an approval link", e),
                }
            })?;
        serde_json::from_slice(&answer.payload)
            .map_err(|e| BusError::Nats { op: "read the link reply", reason: e.to_string() })
    }

    /// The approval link requests of `kind` from now on (its service's). Lost while nobody
    /// listens: the asker gets "no responders" and tries again later.
    pub async fn approval_link_requests(
        &self,
        kind: LinkKind,
    ) -> Result<impl Stream<Item = LinkAsk> + Send + Unpin + 'static, BusError> {
        let subscriber = self
            .client
            .subscribe(self.approval_link_subject(kind, self.config().route_host()))
            .await
            .map_err(|e| BusError::nats("subscribe to approval link requests", e))?;
        let client = self.client.clone();
        Ok(subscriber.map(move |m| {
            let request = if m.payload.len() > MAX_REQUEST {
                Err(format!("request of {} bytes refused", m.payload.len()))
            } else {
                serde_json::from_slice(&m.payload).map_err(|e| format!("unreadable request: {e}"))
            };
            LinkAsk { request, reply_to: m.reply, client: client.clone() }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_subjects_are_not_captured_by_the_stream() {
        for kind in LinkKind::ALL {
            let family = kind.subject().split('.').next().unwrap_or_default();
            assert!(
                !steward_events::EventData::ALL_TYPES
                    .iter()
                    .any(|t| t.split('.').next() == Some(family)),
                "`{family}` is an event family: links would be stored in the stream"
            );
        }
    }

    /// Each kind's links are claimed in a bucket its server alone writes: neither service can
    /// spend, or free again, the other's links.
    #[test]
    fn each_kind_claims_its_links_in_its_servers_own_bucket() {
        let [a, b] = LinkKind::ALL;
        assert_ne!(a.used_bucket(), b.used_bucket());
        for kind in LinkKind::ALL {
            for service in Service::ALL {
                let writes = service.writes_buckets().contains(&kind.used_bucket());
                assert_eq!(writes, service == kind.server(), "{service:?} and {kind:?}'s claims");
            }
        }
    }

    #[test]
    fn a_request_of_the_previous_release_reads() {
        let id = Uuid::now_v7();
        let old = format!(r#"{{"update_id":"{id}"}}"#);
        assert_eq!(serde_json::from_str::<LinkRequest>(&old).expect("read"), LinkRequest { id });
    }

    #[test]
    fn replies_read_back() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        for reply in [
            LinkReply::Link { url: "https://x/approve/t".into(), expires_at: now },
            LinkReply::Unavailable { reason: "decided".into() },
        ] {
            let json = serde_json::to_vec(&reply).expect("encode");
            assert_eq!(serde_json::from_slice::<LinkReply>(&json).expect("decode"), reply);
        }
    }
}
