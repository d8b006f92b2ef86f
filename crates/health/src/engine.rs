//! The Docker engine as a tracked target of its own.
//!
//! While the engine does not answer, container rounds stay neutral (a hung engine says
//! nothing about the containers); the engine's own state is tracked here with the same
//! thresholds as a container's, so a hung engine is `health.engine_failed` once and
//! `health.engine_recovered` once when it answers again.

use serde::{Deserialize, Serialize};
use steward_engine::EngineError;
use steward_events::{EngineFailed, EngineRecovered};
use time::OffsetDateTime;

/// Key of the engine's track in the `HEALTH` bucket: never a container name (those start
/// with a letter or digit), so it cannot collide with a container's track.
pub const ENGINE_KEY: &str = "_engine";

/// What one round learned about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineRound {
    /// Every call of the round was answered (errors included: an answer is an answer).
    Answered,
    /// A call was not answered, or the engine could not be reached.
    Silent {
        /// The call, e.g. `list containers`.
        call: String,
        /// What was seen.
        reason: String,
    },
}

impl EngineRound {
    /// The round's verdict from an error of the listing that starts it: any error there
    /// means the engine cannot be used.
    pub fn from_listing(e: &EngineError) -> Self {
        match e {
            EngineError::Timeout { what, after, .. } => Self::timeout(what, after.as_secs()),
            EngineError::Connect { reason, .. } | EngineError::Unreachable { reason, .. } => {
                Self::Silent {
                    call: "list containers".into(),
                    reason: format!("engine unreachable: {reason}"),
                }
            }
            EngineError::Operation { what, reason, .. } => Self::Silent {
                call: what.clone(),
                reason: format!("engine failed {what}: {reason}"),
            },
        }
    }

    /// The verdict from a probe's error, if it says the engine hung (other errors are about
    /// one container, and its round is neutral).
    pub fn from_probe(e: &EngineError) -> Option<Self> {
        match e {
            EngineError::Timeout { what, after, .. } => Some(Self::timeout(what, after.as_secs())),
            _ => None,
        }
    }

    fn timeout(call: &str, secs: u64) -> Self {
        Self::Silent {
            call: call.to_owned(),
            reason: format!("engine did not answer {call} within {secs}s"),
        }
    }
}

/// What is known about the engine; saved only after its transition is out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineTrack {
    /// Declared down (`health.engine_failed` published, no recovery yet).
    pub down: bool,
    /// Consecutive silent rounds.
    pub failures: u32,
    /// Consecutive answered rounds.
    pub passes: u32,
    /// First silent round of the streak (or of the outage, once down).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Correlation id of the outage, so the recovery joins its flow.
    #[serde(default)]
    pub outage: Option<uuid::Uuid>,
}

/// A change of the engine's state worth an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineTransition {
    /// Stopped answering.
    Failed(EngineFailed),
    /// Answers again.
    Recovered(EngineRecovered),
}

impl EngineTrack {
    /// Takes one round into account (`engine`: where it is, for the events).
    pub fn observe(
        &mut self,
        round: &EngineRound,
        engine: &str,
        now: OffsetDateTime,
        failures_needed: u32,
        passes_needed: u32,
    ) -> Option<EngineTransition> {
        match round {
            EngineRound::Answered => {
                self.failures = 0;
                if !self.down {
                    // Passes count only towards a recovery: an engine that keeps answering
                    // leaves its track (and the bucket) unchanged.
                    self.passes = 0;
                    self.failing_since = None;
                    return None;
                }
                self.passes = self.passes.saturating_add(1);
                if self.passes < passes_needed {
                    return None;
                }
                self.down = false;
                let since = self.failing_since.take().unwrap_or(now);
                Some(EngineTransition::Recovered(EngineRecovered {
                    engine: engine.to_owned(),
                    down_for_ms: (now - since).whole_milliseconds().max(0) as u64,
                }))
            }
            EngineRound::Silent { call, reason } => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                self.failing_since.get_or_insert(now);
                if self.down || self.failures < failures_needed {
                    return None;
                }
                self.down = true;
                Some(EngineTransition::Failed(EngineFailed {
                    engine: engine.to_owned(),
                    call: call.clone(),
                    reason: reason.clone(),
                    consecutive_failures: self.failures,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_engine_is_one_failure_and_one_recovery() {
        let silent = EngineRound::from_listing(&EngineError::Timeout {
            host: "unix:///x.sock".into(),
            what: "list containers".into(),
            after: std::time::Duration::from_secs(30),
        });
        assert_eq!(
            silent,
            EngineRound::Silent {
                call: "list containers".into(),
                reason: "engine did not answer list containers within 30s".into()
            }
        );
        let mut track = EngineTrack::default();
        let t0 = OffsetDateTime::now_utc();
        let rounds = [&silent, &silent, &silent, &silent, &EngineRound::Answered, &silent]
            .into_iter()
            .chain([&EngineRound::Answered, &EngineRound::Answered, &EngineRound::Answered]);
        let out: Vec<_> = rounds
            .enumerate()
            .filter_map(|(i, r)| {
                track.observe(r, "e", t0 + time::Duration::seconds(10 * i as i64), 3, 2)
            })
            .collect();
        assert!(
            matches!(&out[..], [EngineTransition::Failed(f), EngineTransition::Recovered(r)]
                if f.consecutive_failures == 3 && f.call == "list containers" && r.down_for_ms == 70_000),
            "{out:?}"
        );
    }

    #[test]
    fn only_a_timeout_of_a_probe_says_the_engine_hung() {
        let other = EngineError::Operation {
            host: "h".into(),
            what: "inspect app".into(),
            reason: "500".into(),
        };
        assert_eq!(EngineRound::from_probe(&other), None);
    }
}
