//! Per-container health over time: consecutive failures and passes, and the transitions they
//! cause. Only transitions become events, so a container that stays down is reported once,
//! and one that flaps (fail, pass, fail, ...) never reaches either threshold.

use serde::{Deserialize, Serialize};
use steward_events::{HealthFailed, HealthRecovered};
use time::OffsetDateTime;

use crate::probe::{Round, Verdict};

pub use steward_events::records::HEALTH_BUCKET;

/// What is known about one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// Container name.
    pub container: String,
    /// Declared down (`health.failed` published, no `health.recovered` yet).
    pub down: bool,
    /// Consecutive failed rounds.
    pub failures: u32,
    /// Consecutive passed rounds.
    pub passes: u32,
    /// First failure of the current streak (or of the outage, once down).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Last failed check and what it saw.
    #[serde(default)]
    pub last_failure: Option<(String, String)>,
    /// Container id at the last round (restart counts compare within one id).
    #[serde(default)]
    pub id: Option<String>,
    /// Restart count at the last round.
    #[serde(default)]
    pub restarts: i64,
    /// Correlation id of the current outage (its `health.failed`), so the recovery joins the
    /// same flow in the audit trail.
    #[serde(default)]
    pub outage: Option<uuid::Uuid>,
    /// Restarts this service made (self-healing) within the last hour, as unix seconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heals: Vec<i64>,
    /// The restart limit was reached and reported in this outage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub heal_limited: bool,
}

/// What self-healing does about a container this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heal {
    /// Restart it: the `attempt`-th restart within the hour.
    Restart {
        /// This restart's number within the hour.
        attempt: u32,
    },
    /// The hour's restarts are used up: say so (once per outage).
    Limited {
        /// Restarts within the hour.
        restarts: u32,
    },
}

/// The wait before the first restart after the one before it; doubled for each further one.
pub const HEAL_BACKOFF: time::Duration = time::Duration::seconds(30);

/// A change worth an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Became unhealthy.
    Failed(HealthFailed),
    /// Healthy again.
    Recovered(HealthRecovered),
}

impl Track {
    /// A container seen for the first time.
    pub fn new(container: &str) -> Self {
        Self { container: container.to_owned(), ..Self::default() }
    }

    /// Takes one round's result into account.
    pub fn observe(
        &mut self,
        round: &Round,
        now: OffsetDateTime,
        failures_needed: u32,
        passes_needed: u32,
    ) -> Option<Transition> {
        if let Some(id) = &round.id {
            self.id = Some(id.clone());
            self.restarts = round.restarts;
        }
        match &round.verdict {
            Verdict::Neutral(_) => None,
            Verdict::Pass => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if !self.down {
                    self.failing_since = None;
                    return None;
                }
                if self.passes < passes_needed {
                    return None;
                }
                self.down = false;
                let since = self.failing_since.take().unwrap_or(now);
                let down_for_ms = (now - since).whole_milliseconds().max(0) as u64;
                Some(Transition::Recovered(HealthRecovered {
                    container: self.container.clone(),
                    down_for_ms,
                }))
            }
            Verdict::Fail { check, reason } => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                self.failing_since.get_or_insert(now);
                self.last_failure = Some(((*check).to_owned(), reason.clone()));
                if self.down || self.failures < failures_needed {
                    return None;
                }
                self.down = true;
                Some(Transition::Failed(HealthFailed {
                    container: self.container.clone(),
                    check: (*check).to_owned(),
                    reason: reason.clone(),
                    consecutive_failures: self.failures,
                }))
            }
        }
    }

    /// Whether to restart a container that is down (self-healing), at `now`, with at most
    /// `limit` restarts an hour: the first at once, then after 30 s, 1 min, 2 min ... since
    /// the previous one. Nothing while it is up, nor during the back-off.
    pub fn heal(&mut self, now: OffsetDateTime, limit: u32) -> Option<Heal> {
        if !self.down {
            self.heal_limited = false;
            return None;
        }
        let hour_ago = (now - time::Duration::HOUR).unix_timestamp();
        self.heals.retain(|t| *t > hour_ago);
        let made = u32::try_from(self.heals.len()).unwrap_or(u32::MAX);
        if made >= limit {
            return (!self.heal_limited).then_some(Heal::Limited { restarts: made });
        }
        if let Some(last) = self.heals.iter().max() {
            let backoff = HEAL_BACKOFF * 2i32.saturating_pow(made.saturating_sub(1).min(10));
            if now.unix_timestamp() < last.saturating_add(backoff.whole_seconds()) {
                return None;
            }
        }
        Some(Heal::Restart { attempt: made.saturating_add(1) })
    }

    /// After an update or restore proved the container healthy: forget a failure streak
    /// that has not become an outage (the swap itself looks like failures from outside).
    pub fn rebaseline(&mut self) {
        self.id = None;
        if !self.down {
            self.failures = 0;
            self.failing_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_container_is_restarted_with_back_off_and_at_most_the_limit_an_hour() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let at = |s: i64| t0 + time::Duration::seconds(s);
        let mut track = Track { down: false, ..Track::new("web") };
        assert_eq!(track.heal(at(0), 3), None, "up: nothing");
        track.down = true;
        assert_eq!(track.heal(at(0), 3), Some(Heal::Restart { attempt: 1 }), "at once");
        track.heals.push(at(0).unix_timestamp());
        assert_eq!(track.heal(at(29), 3), None, "30 s back-off");
        assert_eq!(track.heal(at(30), 3), Some(Heal::Restart { attempt: 2 }));
        track.heals.push(at(30).unix_timestamp());
        assert_eq!(track.heal(at(89), 3), None, "then 60 s");
        assert_eq!(track.heal(at(90), 3), Some(Heal::Restart { attempt: 3 }));
        track.heals.push(at(90).unix_timestamp());
        assert_eq!(track.heal(at(600), 3), Some(Heal::Limited { restarts: 3 }), "the hour's three");
        track.heal_limited = true;
        assert_eq!(track.heal(at(601), 3), None, "said once per outage");
        // An hour after the first, one restart is free again.
        assert_eq!(track.heal(at(3601), 3), Some(Heal::Restart { attempt: 3 }));
        // Up again: the next outage may report the limit again.
        track.down = false;
        assert_eq!(track.heal(at(3602), 3), None);
        assert!(!track.heal_limited);
        // No restarts at all with a limit of 0.
        let mut never = Track { down: true, ..Track::new("db") };
        assert_eq!(never.heal(at(0), 0), Some(Heal::Limited { restarts: 0 }));
    }

    fn round(verdict: Verdict) -> Round {
        Round { verdict, id: Some("c1".into()), restarts: 0, http_latency: None, engine: None }
    }
    fn fail() -> Round {
        round(Verdict::Fail { check: "http", reason: "GET / answered 503".into() })
    }
    fn pass() -> Round {
        round(Verdict::Pass)
    }

    /// Feeds rounds one second apart; the event types that came out.
    fn run(track: &mut Track, rounds: &[Round]) -> Vec<&'static str> {
        let t0 = OffsetDateTime::now_utc();
        rounds
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                track.observe(r, t0 + time::Duration::seconds(i as i64), 3, 2).map(|t| match t {
                    Transition::Failed(_) => "health.failed",
                    Transition::Recovered(_) => "health.recovered",
                })
            })
            .collect()
    }

    #[test]
    fn an_outage_is_one_failed_and_one_recovered() {
        let mut t = Track::new("gitea");
        let rounds = [pass(), fail(), fail(), fail(), fail(), fail(), pass(), pass(), pass()];
        assert_eq!(run(&mut t, &rounds), ["health.failed", "health.recovered"]);
        assert!(!t.down);
    }

    #[test]
    fn flapping_never_reaches_a_threshold() {
        let mut t = Track::new("gitea");
        let rounds: Vec<Round> =
            (0..20).map(|i| if i % 2 == 0 { fail() } else { pass() }).collect();
        assert!(run(&mut t, &rounds).is_empty());
        // Down, then flapping: one pass is not a recovery.
        let mut t = Track::new("gitea");
        let mut rounds = vec![fail(), fail(), fail()];
        rounds.extend((0..10).map(|i| if i % 2 == 0 { pass() } else { fail() }));
        assert_eq!(run(&mut t, &rounds), ["health.failed"]);
        assert!(t.down);
    }

    #[test]
    fn the_recovery_reports_how_long_it_was_down_and_neutral_rounds_count_for_nothing() {
        let mut t = Track::new("db");
        let t0 = OffsetDateTime::now_utc();
        let neutral = round(Verdict::Neutral("starting".into()));
        let mut out = vec![];
        for (i, r) in
            [fail(), neutral.clone(), fail(), fail(), pass(), neutral, pass()].iter().enumerate()
        {
            out.extend(t.observe(r, t0 + time::Duration::seconds(10 * i as i64), 3, 2));
        }
        assert!(
            matches!(&out[0], Transition::Failed(f) if f.consecutive_failures == 3 && f.check == "http")
        );
        assert!(matches!(&out[1], Transition::Recovered(r) if r.down_for_ms == 60_000), "{out:?}");
    }

    #[test]
    fn a_rebaseline_forgets_a_short_streak_but_not_an_outage() {
        let mut t = Track::new("app");
        run(&mut t, &[fail(), fail()]);
        t.rebaseline();
        assert_eq!(run(&mut t, &[fail(), fail()]), Vec::<&str>::new());
        let mut t = Track::new("app");
        run(&mut t, &[fail(), fail(), fail()]);
        t.rebaseline();
        assert!(t.down);
    }
}
