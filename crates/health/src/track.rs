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
}

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
