//! Approval links by request and reply, on the plain NATS subject `<prefix>approval.link`,
//! outside the stream.
//!
//! An approval link holds a live token: whoever has it approves a production update. So it
//! is never an event (the stream keeps events for a year and every service reads them): the
//! notifier asks the updater for it when it mails, and the updater mints it again from the
//! pending update's record. The NATS permissions let only the notifier ask and only the
//! updater answer, and the updater may answer only the requests it received
//! (`allow_responses`), never publish to anyone's inbox ([`crate::Permissions`]).

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Bus, BusError};

/// Subject (under the namespace's prefix) of approval link requests. Not an event family:
/// the stream never captures it.
pub const APPROVAL_LINK_SUBJECT: &str = "approval.link";

/// Longest request body the updater reads: a request is a UUID in JSON.
const MAX_REQUEST: usize = 256;

/// What the notifier asks: the link of one pending update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRequest {
    /// The pending update (from its `update.pending`).
    pub update_id: Uuid,
}

/// What the updater answers.
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
    /// No link: the update no longer waits for a decision, is unknown, or links are off.
    Unavailable {
        /// Why, for the mail.
        reason: String,
    },
}

/// One request received by the updater; answer it with [`LinkAsk::answer`].
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
    /// `approval.link`, or under host routing `approval.link.<host>`: only the updater of the
    /// update's host answers (and only its NATS user may).
    fn approval_link_subject(&self, host: Option<&str>) -> String {
        match host.filter(|_| self.config().routes_by_host()) {
            Some(host) => self.namespace().subject(&format!("{APPROVAL_LINK_SUBJECT}.{host}")),
            None => self.namespace().subject(APPROVAL_LINK_SUBJECT),
        }
    }

    /// Asks the updater of `host` (the pending update's event's) for the approval link of
    /// `update_id`, waiting at most `timeout`. No updater listening is an error at once (NATS
    /// answers "no responders").
    pub async fn request_approval_link(
        &self,
        update_id: Uuid,
        host: Option<&str>,
        timeout: Duration,
    ) -> Result<LinkReply, BusError> {
        let body = serde_json::to_vec(&LinkRequest { update_id })
            .map_err(|e| BusError::Nats { op: "encode link request", reason: e.to_string() })?;
        let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout));
        let answer = self
            .client
            .send_request(self.approval_link_subject(host), request)
            .await
            .map_err(|e| BusError::nats("ask for an approval link", e))?;
        serde_json::from_slice(&answer.payload)
            .map_err(|e| BusError::Nats { op: "read the link reply", reason: e.to_string() })
    }

    /// The approval link requests from now on (the updater's). Lost while nobody listens:
    /// the asker gets "no responders" and tries again later.
    pub async fn approval_link_requests(
        &self,
    ) -> Result<impl Stream<Item = LinkAsk> + Send + Unpin + 'static, BusError> {
        let subscriber = self
            .client
            .subscribe(self.approval_link_subject(self.config().route_host()))
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
    fn the_link_subject_is_not_captured_by_the_stream() {
        let family = APPROVAL_LINK_SUBJECT.split('.').next().unwrap_or_default();
        assert!(
            !steward_events::EventData::ALL_TYPES
                .iter()
                .any(|t| t.split('.').next() == Some(family)),
            "`{family}` is an event family: links would be stored in the stream"
        );
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
