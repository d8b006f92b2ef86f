//! A registry that fails every check is an alarm, not a log line: after
//! `STEWARD_WATCH_REGISTRY_FAILURES` full checks in a row in which none of its images could
//! be checked, `watch.registry_failed` is published once; the first check that reaches it
//! again publishes `watch.registry_recovered`. The count is kept in a KV bucket, so a restart
//! neither repeats the alarm nor forgets the episode.
//!
//! Only full checks count (a check of one container says little about a registry), and a
//! registry counts as failing in a check only when no image of it could be checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_bus::{Bus, BusError, StateStore};
use steward_events::records::REGISTRY_EPISODES_BUCKET;
use steward_events::{Event, RegistryFailed, RegistryRecovered};
use time::OffsetDateTime;

/// How one registry fared in one check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// The containers whose images live there.
    pub containers: Vec<String>,
    /// Of which checked without error.
    pub ok: usize,
    /// Of which the registry check failed.
    pub failed: usize,
    /// The last error.
    pub last_error: Option<String>,
}

/// Tallies per registry host.
pub type Tallies = BTreeMap<String, Tally>;

/// A registry failing in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// The registry host.
    pub registry: String,
    /// Full checks in a row in which it failed.
    pub failed_checks: u32,
    /// The first of them.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Whether `watch.registry_failed` was published.
    pub told: bool,
}

/// The episodes of one installation.
#[derive(Clone)]
pub struct Episodes {
    bus: Bus,
    store: StateStore<Episode>,
    threshold: u32,
    source: String,
}

impl std::fmt::Debug for Episodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Episodes").field("threshold", &self.threshold).finish_non_exhaustive()
    }
}

/// KV keys allow only `[-/_=.a-zA-Z0-9]`; a host may have a port.
fn key(registry: &str) -> String {
    registry.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Episodes {
    /// Opens the bucket; `threshold` full checks in a row make an alarm.
    pub async fn open(bus: &Bus, threshold: u32, source: String) -> Result<Self, BusError> {
        let store = StateStore::open(bus, REGISTRY_EPISODES_BUCKET).await?;
        Ok(Self { bus: bus.clone(), store, threshold: threshold.max(1), source })
    }

    /// Counts a full check's outcome per registry; tells what began or ended.
    pub async fn after_check(&self, tallies: &Tallies) -> Result<(), BusError> {
        for (registry, tally) in tallies {
            let k = key(registry);
            let found = self.store.get(&k).await?;
            if tally.ok > 0 {
                let Some(v) = found else { continue };
                if v.value.told {
                    let down = OffsetDateTime::now_utc() - v.value.since;
                    let data = RegistryRecovered {
                        registry: registry.clone(),
                        failed_checks: v.value.failed_checks,
                        down_for_ms: u64::try_from(down.whole_milliseconds()).unwrap_or(0),
                    };
                    tracing::info!(%registry, "registry answers again");
                    self.bus.publish(&Event::new(self.source.clone(), data)).await?;
                }
                self.store.delete(&k).await?;
                continue;
            }
            if tally.failed == 0 {
                continue;
            }
            let mut episode = found.map(|v| v.value).unwrap_or_else(|| Episode {
                registry: registry.clone(),
                failed_checks: 0,
                since: OffsetDateTime::now_utc(),
                told: false,
            });
            episode.failed_checks = episode.failed_checks.saturating_add(1);
            if episode.failed_checks >= self.threshold && !episode.told {
                let data = RegistryFailed {
                    registry: registry.clone(),
                    failed_checks: episode.failed_checks,
                    since: episode.since,
                    containers: tally.containers.clone(),
                    reason: tally.last_error.clone().unwrap_or_default(),
                };
                tracing::error!(%registry, checks = episode.failed_checks, "registry failing; telling the operator");
                // Published before it is recorded: a crash in between tells it once more,
                // never not at all.
                self.bus.publish(&Event::new(self.source.clone(), data)).await?;
                episode.told = true;
            }
            self.store.put(&k, &episode).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_kv_safe_and_distinct() {
        let a = super::key("127.0.0.1:5000");
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, super::key("127.0.0.1:5001"));
    }
}
