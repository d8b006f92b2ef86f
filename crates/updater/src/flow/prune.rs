//! Old-image cleanup: images of a managed repository beyond the newest `STEWARD_KEEP_IMAGES`
//! that no container uses are removed, after a successful update and at start; each
//! repository's removals are one `image.pruned`.
//!
//! What is never removed: an image any container uses, running or stopped; the image an
//! update in progress works with (its repository is left alone until it ends); the image
//! `steward rollback` would bring back; an image also known under another repository; any
//! image of a repository Steward has no update record for. The engine is asked without
//! force, so it refuses what a container created meanwhile uses.

use std::collections::{BTreeMap, HashSet};

use steward_engine::ListedImage;
use steward_events::records::UpdateRecord;
use steward_events::{Event, ImagePruned, PrunedImage};
use steward_imageref::ImageRef;

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

impl Flow {
    /// The cleanup after `container`'s update succeeded: its repository only. Logged, never
    /// an error of the flow.
    pub async fn prune_after_update(&self, container: &str) {
        if let Err(e) = self.prune(Some(container)).await {
            tracing::warn!(%container, error = %e, "old images not cleaned up now");
        }
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
