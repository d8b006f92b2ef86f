//! Old-image cleanup: images of a managed repository beyond the newest `STEWARD_KEEP_IMAGES`
//! that no container uses are removed once the update has stood for `STEWARD_PRUNE_GRACE`
//! (checked then, at start and daily); each repository's removals are one `image.pruned`.
//!
//! The grace is counted from the engine's own record of each of the repository's containers:
//! running, not unhealthy, and started at least the grace ago. The updated container started
//! at its swap, so its start plus the grace is the due time; the engine keeps it across a
//! restart of the updater (nothing of Steward's to lose or to repeat: removing what is already
//! gone removes nothing), and a container that crashed or was restarted since starts its grace
//! again. A stopped container holds its repository's cleanup back until it runs again.
//!
//! What is never removed: an image any container uses, running or stopped; the image an
//! update in progress works with (its repository is left alone until it ends); the image
//! `steward rollback` would bring back; an image also known under another repository; any
//! image of a repository Steward has no update record for. The engine is asked without
//! force, so it refuses what a container created meanwhile uses.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use steward_engine::ListedImage;
use steward_events::records::UpdateRecord;
use steward_events::{Event, ImagePruned, PrunedImage};
use steward_imageref::ImageRef;
use time::OffsetDateTime;

use super::{Flow, FlowError};

/// The repository of a reference as Docker names it, or `None` when it does not parse.
fn repository_of(reference: &str) -> Option<String> {
    ImageRef::parse(reference).ok().map(|r| r.familiar_name())
}

/// What a repository's cleanup decides, from the listed images: the ids to remove.
///
/// `images` are every local image; only those whose every reference is of `repository` are
/// considered. Walking them newest first, an image is kept when it is `protected` or while
/// fewer than `keep` are kept; the rest go. `keep == 0` keeps everything (cleanup off).
pub fn plan(
    repository: &str,
    images: &[ListedImage],
    protected: &HashSet<String>,
    keep: u32,
) -> Vec<ListedImage> {
    if keep == 0 {
        return vec![];
    }
    let mut ours: Vec<&ListedImage> = images
        .iter()
        .filter(|i| {
            let refs: Vec<&String> = i.repo_tags.iter().chain(&i.repo_digests).collect();
            !refs.is_empty() && refs.iter().all(|r| repository_of(r).as_deref() == Some(repository))
        })
        .collect();
    ours.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    let mut kept: u32 = 0;
    let mut remove = vec![];
    for image in ours {
        let is_protected = protected.contains(&image.id)
            || image.repo_digests.iter().any(|d| protected.contains(d));
        if is_protected || kept < keep {
            kept = kept.saturating_add(1);
        } else {
            remove.push(image.clone());
        }
    }
    remove
}

/// Whether a repository's images may go now, as its containers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Every container has stood for the grace (or is gone).
    Yes,
    /// Not before this time (the latest container's start plus the grace).
    At(OffsetDateTime),
    /// A container is stopped or unhealthy: no time can be said.
    No,
}

/// Whether one container, as the engine describes it (`inspect`), has stood for `grace` at
/// `now`.
pub fn settled(inspect: &serde_json::Value, grace: Duration, now: OffsetDateTime) -> Settled {
    let state = &inspect["State"];
    if state["Running"].as_bool() != Some(true)
        || state["Restarting"].as_bool() == Some(true)
        || state["Health"]["Status"].as_str() == Some("unhealthy")
    {
        return Settled::No;
    }
    let started = state["StartedAt"].as_str().and_then(|s| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    });
    let Some(started) = started else { return Settled::No };
    let Ok(grace) = time::Duration::try_from(grace) else { return Settled::No };
    match started.checked_add(grace) {
        Some(due) if due <= now => Settled::Yes,
        Some(due) => Settled::At(due),
        None => Settled::No,
    }
}

impl Settled {
    /// Both must be settled: the later time wins, `No` over any.
    fn and(self, other: Settled) -> Settled {
        match (self, other) {
            (Settled::No, _) | (_, Settled::No) => Settled::No,
            (Settled::Yes, x) | (x, Settled::Yes) => x,
            (Settled::At(a), Settled::At(b)) => Settled::At(a.max(b)),
        }
    }
}

/// Most times the cleanup after an update waits again for a container restarted within its
/// grace; past it, the daily cleanup takes over.
const GRACE_RETRIES: u32 = 5;

impl Flow {
    /// The cleanup after `container`'s update succeeded: its repository only, once the grace
    /// has passed (waited for in the background; the flow goes on at once). Logged, never an
    /// error of the flow.
    pub async fn prune_after_update(&self, container: &str) {
        if self.cfg.keep_images == 0 {
            return;
        }
        if self.cfg.prune_grace.is_zero() {
            if let Err(e) = self.prune(Some(container)).await {
                tracing::warn!(%container, error = %e, "old images not cleaned up now");
            }
            return;
        }
        let (flow, container) = (self.clone(), container.to_owned());
        tokio::spawn(async move {
            let mut wait = flow.cfg.prune_grace;
            for _ in 0..GRACE_RETRIES {
                tokio::time::sleep(wait).await;
                match flow.prune_when_settled(&container).await {
                    Ok(Settled::At(due)) => {
                        // Restarted within its grace: its clock started again.
                        let left = due - OffsetDateTime::now_utc();
                        wait = Duration::try_from(left).unwrap_or(Duration::ZERO)
                            + Duration::from_secs(1);
                    }
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(%container, error = %e, "old images not cleaned up now; tried again daily");
                        return;
                    }
                }
            }
        });
    }

    /// Whether the containers of `records` (one repository's) have stood for the grace.
    async fn settled(&self, records: &[&UpdateRecord]) -> Result<Settled, FlowError> {
        let grace = self.cfg.prune_grace;
        let mut all = Settled::Yes;
        if grace.is_zero() {
            return Ok(all);
        }
        let now = OffsetDateTime::now_utc();
        for r in records {
            // A container that is gone uses nothing and holds nothing back.
            if self.engine.is_running(&r.container).await?.is_none() {
                continue;
            }
            let inspect = self.engine.inspect_json(&r.container).await?;
            all = all.and(settled(&inspect, grace, now));
        }
        Ok(all)
    }

    /// Prunes `container`'s repository if its grace has passed; what stood in the way if not
    /// ([`Settled::Yes`] once done or when there is nothing to do).
    async fn prune_when_settled(&self, container: &str) -> Result<Settled, FlowError> {
        let mut records: Vec<UpdateRecord> = vec![];
        for key in self.records.keys().await? {
            if let Some(v) = self.records.get(&key).await? {
                records.push(v.value);
            }
        }
        let Some(repository) =
            records.iter().find(|r| r.container == container).and_then(|r| repository_of(&r.image))
        else {
            return Ok(Settled::Yes);
        };
        let of_repo: Vec<&UpdateRecord> = records
            .iter()
            .filter(|r| repository_of(&r.image).as_ref() == Some(&repository))
            .collect();
        let settled = self.settled(&of_repo).await?;
        if settled == Settled::Yes {
            self.prune(Some(container)).await?;
        }
        Ok(settled)
    }

    /// Removes old images of the repositories of `only`'s record (every record's, when
    /// `None`); returns one `image.pruned` per repository that lost images, as published.
    pub async fn prune(&self, only: Option<&str>) -> Result<Vec<ImagePruned>, FlowError> {
        let keep = self.cfg.keep_images;
        if keep == 0 {
            return Ok(vec![]);
        }
        let mut records: Vec<UpdateRecord> = vec![];
        for key in self.records.keys().await? {
            if let Some(v) = self.records.get(&key).await? {
                records.push(v.value);
            }
        }
        // Repository → its containers' records.
        let mut repos: BTreeMap<String, Vec<&UpdateRecord>> = BTreeMap::new();
        for r in &records {
            if let Some(repo) = repository_of(&r.image) {
                repos.entry(repo).or_default().push(r);
            }
        }
        let wanted = match only {
            Some(name) => records
                .iter()
                .find(|r| r.container == name)
                .and_then(|r| repository_of(&r.image))
                .into_iter()
                .collect::<Vec<_>>(),
            None => repos.keys().cloned().collect(),
        };
        let mut told = vec![];
        for repository in wanted {
            let Some(of_repo) = repos.get(&repository) else { continue };
            // An update in progress may have pulled an image no container uses yet.
            if of_repo.iter().any(|r| !r.step.is_terminal()) {
                continue;
            }
            // Its last update has not stood for the grace yet: the images it may need stay.
            let settled = self.settled(of_repo).await?;
            if settled != Settled::Yes {
                tracing::info!(%repository, ?settled, "old images kept until the update has stood for STEWARD_PRUNE_GRACE");
                continue;
            }
            let mut protected: HashSet<String> = self.engine.images_in_use().await?;
            for r in of_repo {
                if let Some(d) = r.rollback_target() {
                    protected.insert(format!("{repository}@{d}"));
                }
            }
            let images = self.engine.images().await?;
            let doomed = plan(&repository, &images, &protected, keep);
            let mut removed = vec![];
            for image in doomed {
                match self.engine.remove_image(&image.id).await {
                    Ok(true) => removed.push(PrunedImage {
                        id: image.id.clone(),
                        repo_digests: image.repo_digests.clone(),
                        size_bytes: image.size_bytes,
                    }),
                    Ok(false) => {}
                    // A container created meanwhile, a tag added elsewhere: the engine says no.
                    Err(e) => tracing::warn!(image = %image.id, error = %e, "old image kept"),
                }
            }
            if removed.is_empty() {
                continue;
            }
            let bytes_freed = removed.iter().fold(0u64, |sum, i| sum.saturating_add(i.size_bytes));
            let data = ImagePruned {
                repository: repository.clone(),
                container: only.map(str::to_owned),
                images: removed,
                bytes_freed,
                kept: keep,
            };
            tracing::info!(%repository, count = data.images.len(), bytes_freed, "old images removed");
            // A flow of its own: the update's flow ends with its terminal event.
            self.bus.publish(&Event::new(&self.source, data.clone())).await?;
            told.push(data);
        }
        Ok(told)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, created: i64, refs: &[&str]) -> ListedImage {
        let (digests, tags) = refs.iter().map(|r| r.to_string()).partition(|r| r.contains('@'));
        ListedImage {
            id: id.into(),
            repo_tags: tags,
            repo_digests: digests,
            created,
            size_bytes: 10,
        }
    }

    #[test]
    fn a_container_has_stood_for_the_grace_once_running_unrestarted_and_not_unhealthy() {
        let now = time::macros::datetime!(2026-11-30 12:00 UTC);
        let grace = Duration::from_secs(3600);
        let c = |running: bool, started: &str, health: Option<&str>| {
            let mut v = serde_json::json!({"State": {"Running": running, "StartedAt": started}});
            if let Some(h) = health {
                v["State"]["Health"] = serde_json::json!({"Status": h});
            }
            v
        };
        let ago = |mins: i64| {
            (now - time::Duration::minutes(mins))
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format")
        };
        assert_eq!(settled(&c(true, &ago(61), None), grace, now), Settled::Yes);
        assert_eq!(settled(&c(true, &ago(61), Some("healthy")), grace, now), Settled::Yes);
        assert_eq!(
            settled(&c(true, &ago(10), None), grace, now),
            Settled::At(now + time::Duration::minutes(50))
        );
        assert_eq!(settled(&c(false, &ago(600), None), grace, now), Settled::No, "stopped");
        assert_eq!(settled(&c(true, &ago(600), Some("unhealthy")), grace, now), Settled::No);
        assert_eq!(settled(&c(true, "garbage", None), grace, now), Settled::No);
        assert_eq!(settled(&serde_json::json!(null), grace, now), Settled::No);
        // The engine's nanoseconds read.
        let nanos = serde_json::json!({"State": {"Running": true,
            "StartedAt": "2026-11-30T10:00:00.123456789Z"}});
        assert_eq!(settled(&nanos, grace, now), Settled::Yes);
        assert_eq!(settled(&nanos, Duration::from_secs(u64::MAX), now), Settled::No, "no overflow");
        let at = |m: i64| Settled::At(now + time::Duration::minutes(m));
        assert_eq!(at(5).and(at(9)), at(9));
        assert_eq!(Settled::Yes.and(at(5)), at(5));
        assert_eq!(at(5).and(Settled::No), Settled::No);
    }

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn ids(v: Vec<ListedImage>) -> Vec<String> {
        v.into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn keeps_the_newest_and_every_protected_one_and_only_touches_its_repository() {
        let d = |n: u8| format!("127.0.0.1:5000/app@sha256:{}", format!("{n:02x}").repeat(32));
        let images = vec![
            image("v5", 50, &["127.0.0.1:5000/app:1.0", &d(5)]),
            image("v4", 40, &[&d(4)]),
            image("v3", 30, &[&d(3)]),
            image("v2", 20, &[&d(2)]),
            image("v1", 10, &[&d(1)]),
            // Another repository, and one known under two: never ours to remove.
            image("other", 5, &["nginx:1", &format!("nginx@{D}")]),
            image("both", 1, &["127.0.0.1:5000/app:old", "mirror.local/app:old"]),
            image("dangling", 0, &[]),
        ];
        // v3 is used by a stopped container; v1 is what a rollback would bring back.
        let protected: HashSet<String> = ["v3".to_owned(), d(1)].into();
        assert_eq!(ids(plan("127.0.0.1:5000/app", &images, &protected, 2)), ["v2"]);
        assert_eq!(
            ids(plan("127.0.0.1:5000/app", &images, &HashSet::new(), 2)),
            ["v3", "v2", "v1"]
        );
        assert_eq!(
            ids(plan("127.0.0.1:5000/app", &images, &HashSet::new(), 5)),
            Vec::<String>::new()
        );
        assert!(plan("127.0.0.1:5000/app", &images, &HashSet::new(), 0).is_empty(), "0: off");
        assert_eq!(ids(plan("nginx", &images, &HashSet::new(), 1)), Vec::<String>::new());
    }
}
