//! Open conditions and their transitions: an event when a condition appears or changes
//! level, one when it clears, nothing while it stays as it was.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_events::{CertRenewed, EventData, Level};
use time::OffsetDateTime;

use super::{Finding, Report, Seen};

/// Key of the open conditions in the `HEALTH` bucket (starts with `_`, as no container name
/// does, so it never collides with a container's track).
pub const CONDITIONS_KEY: &str = "_conditions";

/// The conditions reported and not yet cleared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// By condition key.
    #[serde(default)]
    pub open: BTreeMap<String, Open>,
}

/// One open condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// The level last reported.
    pub level: Level,
    /// Correlation id of its first event: every later event of it joins that flow.
    pub flow: uuid::Uuid,
    /// When it was first reported.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// A change to publish, then to apply to [`Conditions`] once it is out.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The condition's key.
    pub key: String,
    /// The event to publish (absent when the condition goes quietly).
    pub event: Option<EventData>,
    /// Its flow: the open condition's, or `None` for a new one (the event's own id).
    pub flow: Option<uuid::Uuid>,
    /// The level after the change (`None`: cleared).
    pub level: Option<Level>,
}

impl Conditions {
    /// The changes `report` makes: new or changed levels, clearances, and conditions under
    /// the report's prefixes that it no longer mentions.
    pub fn changes(&self, report: &Report) -> Vec<Change> {
        let mut out = vec![];
        for Finding { key, seen, alert, recovery } in &report.findings {
            let open = self.open.get(key);
            match (seen, open) {
                (Seen::Alert(level), open) if open.map(|o| o.level) != Some(*level) => {
                    out.push(Change {
                        key: key.clone(),
                        event: alert.clone(),
                        flow: open.map(|o| o.flow),
                        level: Some(*level),
                    });
                }
                (Seen::Fine, Some(open)) => out.push(Change {
                    key: key.clone(),
                    event: recovery.clone(),
                    flow: Some(open.flow),
                    level: None,
                }),
                _ => {}
            }
        }
        for (key, open) in &self.open {
            let covered = report.covers.iter().any(|p| key.starts_with(p.as_str()));
            if covered && !report.findings.iter().any(|f| &f.key == key) {
                out.push(Change {
                    key: key.clone(),
                    event: gone(key),
                    flow: Some(open.flow),
                    level: None,
                });
            }
        }
        out
    }

    /// Applies a change whose event is out (`flow`: the flow it was published in).
    pub fn apply(&mut self, change: &Change, flow: uuid::Uuid, now: OffsetDateTime) {
        match change.level {
            None => {
                self.open.remove(&change.key);
            }
            Some(level) => {
                let since = self.open.get(&change.key).map_or(now, |o| o.since);
                self.open.insert(change.key.clone(), Open { level, flow, since });
            }
        }
    }
}

/// The event of a condition whose subject is gone: a certificate removed from the live
/// directory, or an endpoint no longer labelled, is no longer served, which ends its warning;
/// a volume or a check no longer labelled goes quietly (the operator removed it).
fn gone(key: &str) -> Option<EventData> {
    let mut parts = key.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("cert"), Some(container), Some(file)) => Some(
            CertRenewed {
                container: container.to_owned(),
                certificate: file.to_owned(),
                not_after: None,
            }
            .into(),
        ),
        (Some("tls"), Some(container), Some(endpoint)) => Some(
            CertRenewed {
                container: container.to_owned(),
                certificate: steward_events::served_certificate(endpoint),
                not_after: None,
            }
            .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_events::{ConfigInvalid, ConfigRecovered};

    #[test]
    fn a_gone_served_certificate_is_named_as_when_it_was_told() {
        let named = |key: &str| match gone(key) {
            Some(EventData::CertRenewed(c)) => c.certificate,
            other => panic!("{other:?}"),
        };
        assert_eq!(named("tls|nginx|git.example.com@nginx:443"), "tls://git.example.com@nginx:443");
        assert_eq!(named("tls|nats-hub|nats://hub@nats-hub:7422"), "nats://hub@nats-hub:7422");
    }

    fn finding(seen: Seen) -> Finding {
        Finding {
            key: "config|nginx".into(),
            seen,
            alert: Some(
                ConfigInvalid {
                    container: "nginx".into(),
                    command: "nginx -t".into(),
                    exit_code: 1,
                    output_tail: vec![],
                }
                .into(),
            ),
            recovery: Some(
                ConfigRecovered { container: "nginx".into(), command: "nginx -t".into() }.into(),
            ),
        }
    }

    /// Runs reports through the conditions; the event types and levels that came out.
    fn run(c: &mut Conditions, seen: &[Seen]) -> Vec<(&'static str, Option<Level>)> {
        let now = OffsetDateTime::now_utc();
        let mut out = vec![];
        for s in seen {
            let report =
                Report { findings: vec![finding(s.clone())], covers: vec!["config|".into()] };
            for change in c.changes(&report) {
                out.push((change.event.as_ref().map_or("-", |e| e.event_type()), change.level));
                let flow = change.flow.unwrap_or_else(uuid::Uuid::now_v7);
                c.apply(&change, flow, now);
            }
        }
        out
    }

    #[test]
    fn a_condition_is_told_when_it_appears_changes_level_and_clears_never_in_between() {
        let mut c = Conditions::default();
        let (w, cr) = (Seen::Alert(Level::Warning), Seen::Alert(Level::Critical));
        let seen = [
            Seen::Fine,
            w.clone(),
            w.clone(),
            Seen::Unknown,
            w,
            cr.clone(),
            cr,
            Seen::Fine,
            Seen::Fine,
        ];
        assert_eq!(
            run(&mut c, &seen),
            [
                ("health.config_invalid", Some(Level::Warning)),
                ("health.config_invalid", Some(Level::Critical)),
                ("health.config_recovered", None),
            ]
        );
        assert!(c.open.is_empty());
    }

    #[test]
    fn later_events_join_the_first_ones_flow_and_unknown_rounds_keep_it_open() {
        let mut c = Conditions::default();
        run(&mut c, &[Seen::Alert(Level::Warning), Seen::Unknown]);
        let flow = c.open["config|nginx"].flow;
        let report =
            Report { findings: vec![finding(Seen::Alert(Level::Critical))], covers: vec![] };
        assert_eq!(c.changes(&report)[0].flow, Some(flow));
    }

    #[test]
    fn a_gone_certificate_is_renewed_and_a_gone_check_goes_quietly() {
        let mut c = Conditions::default();
        let now = OffsetDateTime::now_utc();
        let flow = uuid::Uuid::now_v7();
        for key in
            ["cert|certbot|/etc/letsencrypt/live/a/fullchain.pem", "config|nginx", "disk|volume v"]
        {
            c.open.insert(key.into(), Open { level: Level::Warning, flow, since: now });
        }
        let report =
            Report { findings: vec![], covers: vec!["cert|certbot|".into(), "config|".into()] };
        let changes = c.changes(&report);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0].event, Some(EventData::CertRenewed(r))
            if r.certificate == "/etc/letsencrypt/live/a/fullchain.pem" && r.not_after.is_none()));
        assert_eq!(changes[1].event, None);
    }
}
