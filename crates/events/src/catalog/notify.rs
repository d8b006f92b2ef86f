//! Notifications: `notify.sent`, `notify.failed`.

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
