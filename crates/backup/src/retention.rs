//! Which backups to keep: the newest backup of each of the last N days, ISO weeks and months
//! that have one (the grandfather-father-son scheme of restic's and borg's `keep-*`).
//!
//! A restore's safety backup (reason `pre_restore`) is counted apart: it is kept for
//! [`KEEP_SAFETY`] after it was taken, whatever the classes say, and takes no place in them
//! (a day with a restore keeps its regular backup too); after that it is pruned.
//!
//! Invariants: the newest complete backup and the newest verified backup are always kept; a
//! backup without a manifest is only pruned once it is older than [`INCOMPLETE_GRACE`], so a
//! backup still being written is never removed under the writer.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Datelike, Utc};

/// Age after which a backup without a manifest is considered abandoned.
pub const INCOMPLETE_GRACE: chrono::Duration = chrono::Duration::hours(24);

/// How long a restore's safety backup is kept: the time to notice that a restore was wrong
/// and undo it.
pub const KEEP_SAFETY: chrono::Duration = chrono::Duration::days(7);

/// How many backups of each age class to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// One per day, for this many days that have backups.
    pub daily: u32,
    /// One per ISO week.
    pub weekly: u32,
    /// One per calendar month.
    pub monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { daily: 7, weekly: 4, monthly: 6 }
    }
}

impl Retention {
    /// Parses `daily=7,weekly=4,monthly=6` (any subset; missing classes keep none).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut r = Self { daily: 0, weekly: 0, monthly: 0 };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: expected class=count"))?;
            let n: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: count must be a whole number"))?;
            match key.trim() {
                "daily" => r.daily = n,
                "weekly" => r.weekly = n,
                "monthly" => r.monthly = n,
                other => return Err(format!("unknown class {other:?} (daily, weekly, monthly)")),
            }
        }
        if r.daily + r.weekly + r.monthly == 0 {
            return Err("keeps nothing; give at least one class a count".into());
        }
        Ok(r)
    }
}

/// What retention needs to know of a stored backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub id: String,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// Its manifest exists.
    pub complete: bool,
    /// It passed `verify`.
    pub verified: bool,
    /// A restore's safety backup.
    pub safety: bool,
}

/// The calendar period a time falls in, as (year, number within the year).
type Period = fn(&DateTime<Utc>) -> (i32, u32);

/// The ids to delete, oldest first.
pub fn to_prune(policy: Retention, backups: &[Candidate], now: DateTime<Utc>) -> Vec<String> {
    let mut keep: HashSet<&str> = HashSet::new();
    for b in backups.iter().filter(|b| b.complete && b.safety) {
        if now - b.taken_at <= KEEP_SAFETY {
            keep.insert(&b.id);
        }
    }
    let newest = |list: &mut Vec<&Candidate>| {
        list.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.id.cmp(&a.id)));
    };
    // Only safety backups left: the newest of them is still the newest state there is.
    let mut any: Vec<&Candidate> = backups.iter().filter(|b| b.complete).collect();
    newest(&mut any);
    if any.iter().all(|b| b.safety) {
        if let Some(b) = any.first() {
            keep.insert(&b.id);
        }
    }
    let mut complete: Vec<&Candidate> =
        backups.iter().filter(|b| b.complete && !b.safety).collect();
    newest(&mut complete);
    if let Some(newest) = complete.first() {
        keep.insert(&newest.id);
    }
    if let Some(newest_verified) = complete.iter().find(|b| b.verified) {
        keep.insert(&newest_verified.id);
    }
    let classes: [(u32, Period); 3] = [
        (policy.daily, |t| (t.year(), t.ordinal())),
        (policy.weekly, |t| (t.iso_week().year(), t.iso_week().week())),
        (policy.monthly, |t| (t.year(), t.month())),
    ];
    for (count, period) in classes {
        let mut seen = BTreeSet::new();
        for b in &complete {
            if seen.len() as u32 >= count {
                break;
            }
            // Newest first: the first backup met in a period is that period's keeper.
            if seen.insert(period(&b.taken_at)) {
                keep.insert(&b.id);
            }
        }
    }
    let mut prune: Vec<&Candidate> = backups
        .iter()
        .filter(|b| !keep.contains(b.id.as_str()))
        .filter(|b| b.complete || now - b.taken_at > INCOMPLETE_GRACE)
        .collect();
    prune.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.id.cmp(&b.id)));
    prune.into_iter().map(|b| b.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().unwrap_or_default()
    }

    fn backup(t: DateTime<Utc>) -> Candidate {
        Candidate {
            id: t.format("%Y%m%dT%H%M%SZ").to_string(),
            taken_at: t,
            complete: true,
            verified: false,
            safety: false,
        }
    }

    fn kept(policy: Retention, all: &[Candidate], now: DateTime<Utc>) -> Vec<String> {
        let pruned = to_prune(policy, all, now);
        let mut kept: Vec<String> =
            all.iter().map(|b| b.id.clone()).filter(|id| !pruned.contains(id)).collect();
        kept.sort();
        kept
    }

    #[test]
    fn parses_policies() {
        assert_eq!(Retention::parse("daily=7,weekly=4,monthly=6"), Ok(Retention::default()));
        assert_eq!(
            Retention::parse(" daily = 3 "),
            Ok(Retention { daily: 3, weekly: 0, monthly: 0 })
        );
        assert!(Retention::parse("daily=-1").is_err());
        assert!(Retention::parse("hourly=2").is_err());
        assert!(Retention::parse("daily").is_err());
        assert!(Retention::parse("daily=0").is_err());
    }

    /// Two backups a day (02:00 and 14:00) for 120 days, ending Monday 2026-11-23.
    fn history() -> Vec<Candidate> {
        let end = at(2026, 11, 23, 14);
        (0..240).map(|i| backup(end - chrono::Duration::hours(12 * i))).collect()
    }

    #[test]
    fn keeps_exactly_what_the_policy_says() {
        let all = history();
        let now = at(2026, 11, 23, 15);
        let kept = kept(Retention { daily: 3, weekly: 2, monthly: 3 }, &all, now);
        assert_eq!(
            kept,
            vec![
                "20260930T140000Z", // monthly: September
                "20261031T140000Z", // monthly: October
                "20261122T140000Z", // weekly: ISO week 47 (ends Sunday 22nd); daily
                "20261121T140000Z", // daily
                "20261123T140000Z", // newest: daily, weekly (week 48), monthly (November)
            ]
            .into_iter()
            .map(String::from)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn newest_verified_survives_and_fresh_incomplete_is_left_alone() {
        let mut all = history();
        // The only verified backup is old enough to fall out of every class.
        let old = all.len() - 1;
        all[old].verified = true;
        let old_id = all[old].id.clone();
        // A backup in progress (no manifest yet) and an abandoned one.
        let now = at(2026, 11, 23, 15);
        all.push(Candidate {
            complete: false,
            ..backup(at(2026, 11, 23, 14) + chrono::Duration::minutes(30))
        });
        let abandoned = Candidate { complete: false, ..backup(at(2026, 11, 20, 3)) };
        all.push(abandoned.clone());
        let pruned = to_prune(Retention { daily: 1, weekly: 0, monthly: 0 }, &all, now);
        assert!(!pruned.contains(&old_id), "the newest verified backup was pruned");
        assert!(pruned.contains(&abandoned.id));
        assert!(!pruned.contains(&"20261123T143000Z".to_string()));
        // Everything else but the newest complete one goes.
        assert_eq!(pruned.len(), all.len() - 3);
        // Oldest first.
        assert!(pruned.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn safety_backups_are_kept_a_week_and_take_no_place() {
        let all = history();
        let now = at(2026, 11, 23, 15);
        let policy = Retention { daily: 3, weekly: 2, monthly: 3 };
        let regular = kept(policy, &all, now);
        let mut with = all.clone();
        // The newest backup of its day (it would be that day's keeper were it counted), and
        // one older than a week.
        let fresh = Candidate {
            safety: true,
            ..backup(at(2026, 11, 23, 14) + chrono::Duration::minutes(5))
        };
        let old = Candidate { safety: true, ..backup(at(2026, 11, 10, 9)) };
        with.push(fresh.clone());
        with.push(old.clone());
        let pruned = to_prune(policy, &with, now);
        assert!(!pruned.contains(&fresh.id), "a fresh safety backup was pruned");
        assert!(pruned.contains(&old.id), "a safety backup older than a week was kept");
        let mut kept_now = kept(policy, &with, now);
        kept_now.retain(|id| id != &fresh.id);
        assert_eq!(kept_now, regular, "a safety backup changed what the classes keep");
        // Nothing but an old safety backup: it is the newest state there is.
        let alone = [old.clone()];
        assert!(to_prune(policy, &alone, now).is_empty());
    }

    #[test]
    fn nothing_is_pruned_when_nothing_exceeds_the_policy() {
        // One a day for three days: within every class.
        let all: Vec<Candidate> = history().into_iter().step_by(2).take(3).collect();
        assert!(to_prune(Retention::default(), &all, at(2026, 11, 23, 15)).is_empty());
    }
}
