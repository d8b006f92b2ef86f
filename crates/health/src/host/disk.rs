//! Free space, measured by `df -Pk PATH` by exec in the running containers labelled
//! `steward.health.disk`: `/` there is the container's overlay root, whose free space is the
//! engine's data root's filesystem (overlay2 reports its upper directory's); a volume's mount
//! point is the volume's filesystem (a tmpfs or NFS volume its own, a local one the data
//! root's). No helper container, no host path: works through the socket proxy and with
//! Debian's dockerd 20.10, whose `/system/df` counts usage but never free space.

use std::collections::BTreeMap;

use steward_engine::Engine;
use steward_events::{DiskLow, DiskRecovered, Level};
use steward_labels::DiskWatch;

use super::conditions::Conditions;
use super::{Finding, Report, Seen};
use crate::config::{HostConfig, Threshold};

/// The target name of the engine's data root.
pub const DATA_ROOT: &str = "docker data root";

/// A filesystem's size and free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes.
    pub total: u64,
    /// Bytes available to unprivileged writers.
    pub free: u64,
}

impl Space {
    /// Free space in whole percent of the size (0 for an empty filesystem).
    pub fn free_percent(self) -> u8 {
        let pct = u128::from(self.free) * 100 / u128::from(self.total.max(1));
        u8::try_from(pct.min(100)).unwrap_or(100)
    }
}

/// Parses `df -Pk` output (POSIX: a header, then `FS 1024-blocks used available capacity
/// mountpoint`). The numbers are found after the first field, so a file system name with
/// spaces still reads.
pub fn parse_df(output: &[String]) -> Option<Space> {
    let line = output.iter().rev().find(|l| {
        l.chars().next().is_some_and(|c| !c.is_whitespace()) && !l.starts_with("Filesystem")
    })?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let numbers = fields.windows(3).skip(1).find(|w| w.iter().all(|f| f.parse::<u64>().is_ok()))?;
    let total: u64 = numbers[0].parse().ok()?;
    let free: u64 = numbers[2].parse().ok()?;
    Some(Space { total: total.checked_mul(1024)?, free: free.checked_mul(1024)? })
}

/// The level of `space` under the thresholds, each raised by `margin`.
fn level_with(space: Space, cfg: &HostConfig, margin: Threshold) -> Option<Level> {
    if cfg.disk_critical.below_with(margin, space.free, space.total) {
        Some(Level::Critical)
    } else if cfg.disk_warn.below_with(margin, space.free, space.total) {
        Some(Level::Warning)
    } else {
        None
    }
}

/// The level of `space`, given the level its condition has open (`None`: none). A level is
/// entered at its threshold but left only once free space is above that threshold plus the
/// margin (`STEWARD_HEALTH_DISK_MARGIN`): a filesystem hovering at a threshold, as a log
/// rotating or a cache filling and emptying, is one episode, not an event every round.
pub fn level(space: Space, cfg: &HostConfig, open: Option<Level>) -> Option<Level> {
    let entered = level_with(space, cfg, Threshold::Bytes(0));
    let Some(open) = open else { return entered };
    // Held at most at the open level: the margin never raises one.
    let held = level_with(space, cfg, cfg.disk_margin).min(Some(open));
    entered.max(held)
}

/// What to measure in one container: target name → mount point.
pub fn targets(
    container: &str,
    watch: &DiskWatch,
    mounts: &serde_json::Value,
) -> BTreeMap<String, String> {
    let mounts: Vec<(String, Option<String>)> = mounts
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    let dest = m.get("Destination")?.as_str()?.to_owned();
                    let volume = (m.get("Type").and_then(|t| t.as_str()) == Some("volume"))
                        .then(|| m.get("Name").and_then(|n| n.as_str()).map(str::to_owned))
                        .flatten();
                    Some((dest, volume))
                })
                .collect()
        })
        .unwrap_or_default();
    let name_of = |path: &str| -> String {
        if path == "/" {
            return DATA_ROOT.to_owned();
        }
        match mounts.iter().find(|(d, _)| d == path) {
            Some((_, Some(volume))) => format!("volume {volume}"),
            _ => format!("{container}:{path}"),
        }
    };
    let paths: Vec<String> = match watch {
        DiskWatch::All => std::iter::once("/".to_owned())
            .chain(mounts.iter().filter(|(_, v)| v.is_some()).map(|(d, _)| d.clone()))
            .collect(),
        DiskWatch::Paths(p) => p.clone(),
    };
    paths.into_iter().map(|p| (name_of(&p), p)).collect()
}

/// Measures every target of the labelled containers (`(name, watch)`, running ones only);
/// `known`: the open conditions, whose levels the margin holds.
pub async fn check(
    engine: &Engine,
    labelled: &[(String, DiskWatch)],
    cfg: &HostConfig,
    known: &Conditions,
) -> Report {
    let mut findings: BTreeMap<String, Finding> = BTreeMap::new();
    for (container, watch) in labelled {
        let mounts = match engine.inspect_json(container).await {
            Ok(json) => json.get("Mounts").cloned().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%container, error = %e, "cannot inspect for its free space");
                serde_json::Value::Null
            }
        };
        for (target, path) in targets(container, watch, &mounts) {
            let key = format!("disk|{target}");
            // Measured once a round, wherever it answers first (a volume shared by two
            // containers, the data root seen from every labelled one).
            if findings.get(&key).is_some_and(|f| f.seen != Seen::Unknown) {
                continue;
            }
            let cmd = vec!["df".to_owned(), "-Pk".to_owned(), path.clone()];
            let space = match engine.exec(container, cmd, 5).await {
                Ok(out) if out.exit_code == 0 => parse_df(&out.tail),
                Ok(out) => {
                    tracing::warn!(%container, %path, exit_code = out.exit_code, output = ?out.tail, "df failed");
                    None
                }
                Err(e) => {
                    tracing::warn!(%container, %path, error = %e, "cannot run df");
                    None
                }
            };
            let Some(space) = space else {
                findings.insert(key.clone(), Finding::unknown(key));
                continue;
            };
            let level = level(space, cfg, known.open.get(&key).map(|o| o.level));
            let measured_in = format!("{container}:{path}");
            findings.insert(
                key.clone(),
                Finding {
                    key,
                    seen: level.map_or(Seen::Fine, Seen::Alert),
                    alert: level.map(|level| {
                        DiskLow {
                            target: target.clone(),
                            measured_in,
                            free_bytes: space.free,
                            total_bytes: space.total,
                            free_percent: space.free_percent(),
                            level,
                        }
                        .into()
                    }),
                    recovery: Some(
                        DiskRecovered { target, free_bytes: space.free, total_bytes: space.total }
                            .into(),
                    ),
                },
            );
        }
    }
    Report { findings: findings.into_values().collect(), covers: vec!["disk|".into()] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Threshold;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn df_output_of_busybox_and_coreutils_reads() {
        let busybox = "Filesystem           1024-blocks    Used Available Capacity Mounted on\n\
                       tmpfs                     4096      1024      3072  25% /data";
        assert_eq!(
            parse_df(&lines(busybox)),
            Some(Space { total: 4096 * 1024, free: 3072 * 1024 })
        );
        let spaces = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                      my share 100 90 10 90% /mnt/x y";
        assert_eq!(parse_df(&lines(spaces)), Some(Space { total: 102_400, free: 10_240 }));
        assert_eq!(parse_df(&lines("df: /nope: No such file or directory")), None);
        assert_eq!(
            parse_df(&lines("x 99999999999999999999 1 1 1% /")),
            None,
            "overflow is no answer"
        );
    }

    #[test]
    fn levels_and_targets() {
        let cfg = HostConfig {
            disk_warn: Threshold::Percent(10),
            disk_critical: Threshold::Bytes(1000),
            ..HostConfig::default()
        };
        let fresh = |free| level(Space { total: 100_000, free }, &cfg, None);
        assert_eq!(fresh(50_000), None);
        assert_eq!(fresh(9_000), Some(Level::Warning));
        assert_eq!(fresh(999), Some(Level::Critical));
        let mounts = serde_json::json!([
            {"Type": "volume", "Name": "gitea-data", "Destination": "/data"},
            {"Type": "bind", "Source": "/srv/x", "Destination": "/x"}
        ]);
        let all: Vec<_> = targets("gitea", &DiskWatch::All, &mounts).into_iter().collect();
        assert_eq!(
            all,
            [(DATA_ROOT.to_owned(), "/".to_owned()), ("volume gitea-data".into(), "/data".into())]
        );
        let some = targets("gitea", &DiskWatch::Paths(vec!["/x".into()]), &mounts);
        assert_eq!(some.keys().collect::<Vec<_>>(), ["gitea:/x"]);
    }

    /// Free space measured round after round through the open conditions, as the service
    /// does: the event types and levels that come out.
    fn episode(cfg: &HostConfig, frees: &[u64]) -> Vec<(&'static str, Option<Level>)> {
        use super::super::conditions::Conditions;
        let mut c = Conditions::default();
        let now = time::OffsetDateTime::now_utc();
        let mut out = vec![];
        for &free in frees {
            let space = Space { total: 100_000, free };
            let key = "disk|docker data root".to_owned();
            let level = level(space, cfg, c.open.get(&key).map(|o| o.level));
            let target = DATA_ROOT.to_owned();
            let finding = Finding {
                key,
                seen: level.map_or(Seen::Fine, Seen::Alert),
                alert: level.map(|level| {
                    DiskLow {
                        target: target.clone(),
                        measured_in: "gitea:/".into(),
                        free_bytes: free,
                        total_bytes: space.total,
                        free_percent: space.free_percent(),
                        level,
                    }
                    .into()
                }),
                recovery: Some(
                    DiskRecovered { target, free_bytes: free, total_bytes: space.total }.into(),
                ),
            };
            let report = Report { findings: vec![finding], covers: vec!["disk|".into()] };
            for change in c.changes(&report) {
                out.push((change.event.as_ref().map_or("-", |e| e.event_type()), change.level));
                c.apply(&change, uuid::Uuid::now_v7(), now);
            }
        }
        out
    }

    #[test]
    fn free_space_hovering_at_a_threshold_is_one_episode() {
        // Warning below 10%, critical below 5%, left 2 points above each.
        let cfg = HostConfig::default();
        let (low, crit, clear) = (
            ("health.disk_low", Some(Level::Warning)),
            ("health.disk_low", Some(Level::Critical)),
            ("health.disk_recovered", None),
        );
        // Around the warning threshold: raised once at it, cleared only above 12%.
        let hover = [10_500, 9_900, 10_100, 9_800, 11_999, 9_990, 12_000, 11_000, 9_999];
        assert_eq!(episode(&cfg, &hover), [low, clear, low]);
        // Around the critical one: critical once, back to warning only above 7%.
        let hover = [9_000, 4_900, 5_100, 6_999, 4_999, 7_000, 5_500, 12_500];
        assert_eq!(episode(&cfg, &hover), [low, crit, low, clear]);
        // A fall straight to critical and a rise straight to plenty.
        assert_eq!(episode(&cfg, &[50_000, 1_000, 60_000]), [crit, clear]);
        // Without a margin the same hovering flaps: what the margin is for.
        let none = HostConfig { disk_margin: Threshold::Bytes(0), ..HostConfig::default() };
        assert_eq!(episode(&none, &[9_900, 10_100, 9_800]), [low, clear, low]);
        // An absolute margin on a percentage threshold.
        let bytes = HostConfig { disk_margin: Threshold::Bytes(500), ..HostConfig::default() };
        assert_eq!(episode(&bytes, &[9_900, 10_499, 9_800, 10_500]), [low, clear]);
    }
}
