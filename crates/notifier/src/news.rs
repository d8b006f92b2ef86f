//! Newer images of `notify` containers: grouped one report per image, tag and digest (not per
//! container), and reported once per channel, also when the containers on that image are
//! announced in different bursts.
//!
//! The outbox keeps one entry per event as for everything else; what is new here is the
//! grouping of a burst's `image.updated` entries ([`group`]) and a marker per (channel, image,
//! tag, digest) in the `NOTIFY_ANNOUNCED` bucket, written after the report went out
//! ([`Announcements::mark`]). An entry whose image already has its marker is finished without
//! being sent again ([`Announcements::split_announced`]). A crash between the send and the
//! marker repeats the report once, the outbox's own at-least-once window.

use serde::{Deserialize, Serialize};
use steward_bus::{Bus, BusError, StateStore};
use steward_events::records::ANNOUNCED_BUCKET;
use steward_events::{Digest, Event, EventData};
use time::OffsetDateTime;

use crate::outbox::{ChannelKind, Queued};

/// A newer image reported on one channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announced {
    /// Image reference the containers run.
    pub image: String,
    /// The newer tag, with tag tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The new digest.
    pub digest: Digest,
    /// The containers named in the report.
    pub containers: Vec<String>,
    /// When it was reported.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What makes two `image.updated` events one report: the image (reference with its tag), the
/// newer tag and the new digest. `None` for any other event.
pub fn key(event: &Event) -> Option<(&str, Option<&str>, &Digest)> {
    match &event.data {
        EventData::ImageUpdated(u) => Some((&u.image, u.new_tag.as_deref(), &u.new_digest)),
        _ => None,
    }
}

/// `queued` in units of one report: the `image.updated` entries of one image, tag and digest
/// together (at the place of the first), every other entry alone; the order otherwise kept.
pub fn group(queued: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut units: Vec<Vec<Queued>> = vec![];
    for q in queued {
        let same =
            key(&q.event).and_then(|k| units.iter().position(|u| key(&u[0].event) == Some(k)));
        match same {
            Some(i) => units[i].push(q),
            None => units.push(vec![q]),
        }
    }
    units
}

/// Lower-case hex of `bytes` (KV keys allow only `[-/_=.a-zA-Z0-9]`; a reference has `:`).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The marker key of `event`'s report on `channel`: `<channel>.<algorithm>.<digest>.<hex of
/// image and tag>` (collision-free, unlike a character substitution).
fn marker_key(channel: ChannelKind, event: &Event) -> Option<String> {
    let (image, tag, digest) = key(event)?;
    let digest = digest.to_string().replace(':', ".");
    let what = format!("{image}\n{}", tag.unwrap_or_default());
    Some(format!("{}.{digest}.{}", channel.as_str(), hex(what.as_bytes())))
}

/// How long a reported image is remembered: long enough that no redelivery or late container
/// reports it again, short enough that the bucket does not grow forever (a digest still the
/// newest after this long is reported once more: a reminder, not noise).
pub const KEEP_ANNOUNCED: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// The markers of reported images.
#[derive(Debug, Clone)]
pub struct Announcements {
    store: StateStore<Announced>,
}

impl Announcements {
    /// Opens the bucket (provisioned by `steward setup`).
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        Ok(Self { store: StateStore::open(bus, ANNOUNCED_BUCKET).await? })
    }

    /// Splits `batch` into what is still to be sent and the `image.updated` entries whose
    /// image was already reported on `channel` (by an earlier message).
    pub async fn split_announced(
        &self,
        channel: ChannelKind,
        batch: Vec<Queued>,
    ) -> Result<(Vec<Queued>, Vec<Queued>), BusError> {
        let (mut fresh, mut seen) = (vec![], vec![]);
        for q in batch {
            let reported = match marker_key(channel, &q.event) {
                Some(k) => self.store.get(&k).await?.is_some(),
                None => false,
            };
            if reported {
                seen.push(q);
            } else {
                fresh.push(q);
            }
        }
        Ok((fresh, seen))
    }

    /// Deletes the markers reported before `horizon`; returns how many.
    pub async fn purge(&self, horizon: OffsetDateTime) -> Result<usize, BusError> {
        let mut purged = 0;
        for key in self.store.keys().await? {
            let Some(v) = self.store.get(&key).await? else { continue };
            if v.value.at < horizon {
                self.store.delete(&key).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Records the reports of `unit` (one image, tag and digest) as sent on `channel`.
    pub async fn mark(&self, channel: ChannelKind, unit: &[&Event]) -> Result<(), BusError> {
        let Some(first) = unit.first() else { return Ok(()) };
        let (Some(k), Some((image, tag, digest))) = (marker_key(channel, first), key(first)) else {
            return Ok(());
        };
        let value = Announced {
            image: image.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.clone(),
            containers: unit.iter().filter_map(|e| e.data.container().map(str::to_owned)).collect(),
            at: OffsetDateTime::now_utc(),
        };
        match self.store.create(&k, &value).await {
            // Another notifier or an earlier attempt wrote it: reported either way.
            Ok(_) | Err(BusError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_events::ImageUpdated;

    fn news(container: &str, image: &str, tag: Option<&str>, fill: char) -> Event {
        Event::new(
            "steward-watcher/host",
            ImageUpdated {
                container: container.into(),
                image: image.into(),
                current_digest: Digest::parse(&format!("sha256:{}", "0".repeat(64)))
                    .expect("digest"),
                new_digest: Digest::parse(&format!("sha256:{}", fill.to_string().repeat(64)))
                    .expect("digest"),
                new_tag: tag.map(Into::into),
                policy: Some("notify".into()),
                versions: Default::default(),
            },
        )
    }

    fn queued(event: Event) -> Queued {
        let entry = crate::outbox::Entry {
            channel: ChannelKind::Email,
            event: String::new(),
            queued_at: OffsetDateTime::now_utc(),
            state: crate::outbox::EntryState::Queued,
            attempts: 0,
            next_attempt: OffsetDateTime::now_utc(),
            last_error: None,
            failure_reported: false,
            done_at: None,
            message: None,
        };
        Queued {
            key: event.id.to_string(),
            entry: steward_bus::Versioned { value: entry, revision: 1 },
            event,
        }
    }

    fn containers(unit: &[Queued]) -> Vec<&str> {
        unit.iter().filter_map(|q| q.event.data.container()).collect()
    }

    #[test]
    fn one_unit_per_image_tag_and_digest_in_the_order_first_seen() {
        let health = Event::new(
            "steward-health/host",
            steward_events::HealthFailed {
                container: "db".into(),
                check: "http".into(),
                reason: "down".into(),
                consecutive_failures: 3,
            },
        );
        let units = group(vec![
            queued(news("a", "app:1.0", None, 'b')),
            queued(health),
            queued(news("b", "app:1.0", None, 'b')),
            queued(news("c", "app:latest", None, 'b')),
            queued(news("d", "app:1.0", None, 'c')),
            queued(news("e", "app:1.0", Some("1.1"), 'b')),
            queued(news("f", "app:1.0", None, 'b')),
        ]);
        let shape: Vec<Vec<&str>> = units.iter().map(|u| containers(u)).collect();
        assert_eq!(
            shape,
            vec![vec!["a", "b", "f"], vec!["db"], vec!["c"], vec!["d"], vec!["e"]],
            "same image and digest together; another tag, digest or newer tag apart"
        );
    }

    #[test]
    fn marker_keys_are_valid_kv_keys_and_tell_images_apart() {
        let a = marker_key(ChannelKind::Email, &news("a", "127.0.0.1:5000/x/app:1.0", None, 'b'))
            .expect("key");
        assert!(a.starts_with("email.sha256.bbbb"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '=')),
            "{a}"
        );
        let same =
            marker_key(ChannelKind::Email, &news("b", "127.0.0.1:5000/x/app:1.0", None, 'b'));
        assert_eq!(Some(&a), same.as_ref(), "another container on the image: the same report");
        let other_tag = marker_key(
            ChannelKind::Email,
            &news("a", "127.0.0.1:5000/x/app:1.0", Some("1.1"), 'b'),
        );
        let webhook =
            marker_key(ChannelKind::Webhook, &news("a", "127.0.0.1:5000/x/app:1.0", None, 'b'));
        assert_ne!(Some(&a), other_tag.as_ref());
        assert_ne!(Some(&a), webhook.as_ref(), "each channel reports once");
    }
}
