//! Notifications: `notify.sent`, `notify.failed`, and `notify.test_requested`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Payload;

/// A notification was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifySent {
    /// `email` or `webhook`.
    pub channel: String,
    /// Recipients (addresses, or the webhook's host).
    pub recipients: Vec<String>,
    /// Subject line (email) or title.
    pub title: String,
    /// Ids of the events this notification was about.
    pub about: Vec<Uuid>,
}

impl Payload for NotifySent {}

/// A notification could not be delivered within its retry bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyFailed {
    /// `email` or `webhook`.
    pub channel: String,
    /// Ids of the events it was about.
    pub about: Vec<Uuid>,
    /// Last error.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// `false`: the first failure, delivery is still being retried; `true`: the retry bound
    /// was reached and the notification was dropped.
    #[serde(default)]
    pub gave_up: bool,
}

impl Payload for NotifyFailed {}

/// Someone asks for a test notification through every configured channel (`steward notify
/// test`): the answer is a `notify.sent` or `notify.failed` per channel, in its flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyTestRequested {
    /// Who asked (user@host).
    pub by: String,
}

impl Payload for NotifyTestRequested {}
