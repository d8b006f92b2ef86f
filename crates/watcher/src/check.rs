//! One check: every watched container against its registry, `image.updated` once per new
//! digest.
//!
//! For each running container that opted in (`steward.enable` / `diun.enable`):
//! 1. labels and image reference are parsed; a bad one is a warning and the container is
//!    skipped (nothing else is affected);
//! 2. the running digest is the local image's repo digest for that repository (an image never
//!    pulled from or pushed to a registry has none: skipped with a warning);
//! 3. the registry's digest for the tag (or, with tag tracking, for the newest newer tag);
//! 4. a digest that differs from the running one and was not reported before is published as
//!    `image.updated` (with the container's policy, the running image's version labels, and
//!    the new image's, read from its config in the registry: only then, never on every
//!    check), then recorded in the `WATCHER` KV bucket, so a second check or a
//!    restarted watcher does not repeat it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use steward_bus::{Bus, StateStore, Versioned};
use steward_engine::{ContainerInfo, Engine, LocalImage};
use steward_events::records::{WatchRecord, WATCH_BUCKET};
use steward_events::{Digest, Event, EventData, ImageUpdated, ImageVersion, Versions};
use steward_imageref::ImageRef;
use steward_labels::compose::{dependency_order, ComposeService};
use time::OffsetDateTime;

use crate::registry::{Registries, RegistryError};

/// Labels of the per-registry metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    /// Registry host.
    pub registry: String,
    /// `current`, `updated`, or an error kind.
    pub outcome: String,
}

/// What one check found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Containers looked at.
    pub checked: usize,
    /// `image.updated` events published.
    pub updated: Vec<String>,
    /// Containers skipped for bad labels, references or unknown digests, with why.
    pub skipped: Vec<(String, String)>,
    /// Registry failures, per container.
    pub failed: Vec<(String, String)>,
    /// How each registry fared.
    pub registries: crate::episodes::Tallies,
}

/// What a check needs; cheap to clone.
#[derive(Clone)]
pub struct Checker {
    /// The bus.
    pub bus: Bus,
    /// Docker.
    pub engine: Engine,
    /// Registry clients.
    pub registries: Arc<Registries>,
    /// The watch records.
    pub records: StateStore<WatchRecord>,
    /// Containers checked at once.
    pub concurrency: usize,
    /// `steward_registry_checks_total{registry,outcome}`.
    pub outcomes: Family<RegistryLabels, Counter>,
    /// CloudEvents source.
    pub source: String,
    /// Only containers of this `steward.scope`.
    pub scope: Option<String>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").field("concurrency", &self.concurrency).finish_non_exhaustive()
    }
}

/// A container that passed the label and reference checks.
struct Target {
    info: ContainerInfo,
    reference: ImageRef,
    labels: steward_labels::WatchLabels,
}

enum Outcome {
    Current,
    /// A newer digest, not published yet: [`Checker::run`] publishes them in compose's
    /// dependency order.
    Updated(Box<Found>),
    Skipped(String),
    Failed(RegistryError),
}

/// A newer image to report, and the watch record to save once it is published.
struct Found {
    event: Event,
    record: WatchRecord,
    revision: Option<u64>,
    compose: Option<ComposeService>,
}

impl Checker {
    /// Opens the watch records bucket.
    pub async fn records(bus: &Bus) -> Result<StateStore<WatchRecord>, steward_bus::BusError> {
        StateStore::open(bus, WATCH_BUCKET).await
    }

    /// Runs one check, for `only` one container or all; `cause` is the request, if any.
    pub async fn run(&self, only: Option<&str>, cause: Option<&Event>) -> anyhow::Result<Summary> {
        let containers = self
            .engine
            .running_containers(|labels| {
                steward_labels::mentions_watch(labels)
                    && steward_labels::in_scope(labels, self.scope.as_deref())
            })
            .await?;
        let mut summary = Summary::default();
        let mut targets = vec![];
        for info in containers {
            if only.is_some_and(|name| name != info.name) {
                continue;
            }
            match target(info) {
                Ok(Some(t)) => targets.push(t),
                Ok(None) => {}
                Err((name, why)) => {
                    tracing::warn!(container = %name, reason = %why, "container skipped");
                    summary.skipped.push((name, why));
                }
            }
        }
        summary.checked = targets.len();
        let listed: std::collections::HashSet<String> =
            targets.iter().map(|t| t.info.name.clone()).collect();
        // Containers often share an image: inspect each image once per check.
        let mut image_ids: Vec<String> = targets.iter().map(|t| t.info.image_id.clone()).collect();
        image_ids.sort();
        image_ids.dedup();
        let images: HashMap<String, Result<LocalImage, String>> = futures::stream::iter(image_ids)
            .map(|id| async move {
                let image = self.engine.local_image(&id).await.map_err(|e| e.to_string());
                (id, image)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let images = &images;
        // Every watch record in one read, not a request per container (they were a third of
        // a check's own time); a record missing from it is read on its own.
        let records = match self.records.all(Duration::from_secs(10)).await {
            Ok(all) => Some(all),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the watch records at once; one by one");
                None
            }
        };
        let records = &records;
        let results: Vec<(String, String, Outcome)> = futures::stream::iter(targets)
            .map(|t| async move {
                let name = t.info.name.clone();
                let registry = t.reference.as_oci().resolve_registry().to_owned();
                (name, registry, self.check(t, images, records, cause).await)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut found = vec![];
        for (name, registry, outcome) in results {
            let tally = summary.registries.entry(registry).or_default();
            tally.containers.push(name.clone());
            match &outcome {
                Outcome::Current | Outcome::Updated(_) => tally.ok += 1,
                Outcome::Failed(e) => {
                    tally.failed += 1;
                    tally.last_error = Some(e.to_string());
                }
                Outcome::Skipped(_) => {}
            }
            match outcome {
                Outcome::Current => {}
                Outcome::Updated(f) => found.push((name, f)),
                Outcome::Skipped(why) => {
                    tracing::warn!(container = %name, reason = %why, "container skipped");
                    summary.skipped.push((name, why));
                }
                Outcome::Failed(e) => {
                    tracing::error!(container = %name, error = %e, "registry check failed");
                    summary.failed.push((name, e.to_string()));
                }
            }
        }
        // Published dependencies first (compose's depends_on), so the updater, which takes the
        // events in order, starts a database's update before the app's that waits for it.
        let compose: Vec<_> = found.iter().map(|(_, f)| f.compose.clone()).collect();
        let mut found: Vec<_> = found.into_iter().map(Some).collect();
        for i in dependency_order(&compose) {
            let Some((name, f)) = found[i].take() else { continue };
            match self.publish(*f).await {
                Ok(()) => summary.updated.push(name),
                Err(why) => summary.skipped.push((name, why)),
            }
        }
        summary.updated.sort();
        if only.is_none() {
            self.forget_gone(&summary, &listed, records).await;
        }
        tracing::info!(
            checked = summary.checked,
            updated = summary.updated.len(),
            skipped = summary.skipped.len(),
            failed = summary.failed.len(),
            "check done"
        );
        Ok(summary)
    }

    async fn check(
        &self,
        t: Target,
        images: &HashMap<String, Result<LocalImage, String>>,
        records: &Option<HashMap<String, Versioned<WatchRecord>>>,
        cause: Option<&Event>,
    ) -> Outcome {
        let registry = t.reference.as_oci().resolve_registry().to_owned();
        let count = |outcome: &str| {
            self.outcomes
                .get_or_create(&RegistryLabels {
                    registry: registry.clone(),
                    outcome: outcome.into(),
                })
                .inc();
        };
        let image =
            images.get(&t.info.image_id).cloned().unwrap_or_else(|| Ok(LocalImage::default()));
        let known = match image.as_ref().map(|i| running_digests(&t, &i.repo_digests)) {
            Ok(known) if !known.is_empty() => known,
            Ok(_) => {
                // Said in `steward status` too: a container that can never be updated must
                // not look as if it were up to date (or not watched at all).
                let why = format!(
                    "not from a registry: cannot be updated (image {} has no digest from {}: built locally and never pushed or pulled?)",
                    t.info.image_ref, registry
                );
                self.remember_error(&t, None, &why).await;
                return Outcome::Skipped(why);
            }
            Err(e) => {
                return Outcome::Skipped(format!("cannot inspect image {}: {e}", t.info.image_id))
            }
        };
        let (newest_tag, newest) = match self.newest(&t).await {
            Ok(found) => found,
            Err(e) => {
                count(e.kind());
                self.remember_error(&t, Some(&known[0]), &e.to_string()).await;
                return Outcome::Failed(e);
            }
        };
        let read = match records.as_ref().and_then(|all| all.get(&t.info.name)) {
            Some(v) => Ok(Some(v.clone())),
            None => self.records.get(&t.info.name).await,
        };
        let previous = match read {
            Ok(r) => r,
            Err(e) => return Outcome::Skipped(format!("cannot read watch record: {e}")),
        };
        let prev = previous.as_ref().map(|v| &v.value);
        let running = self.running_digest(&t, &known, &newest).await;
        let now = OffsetDateTime::now_utc();
        let newest_seen_at = match prev {
            Some(p) if p.newest_digest.as_ref() == Some(&newest) => p.newest_seen_at.or(Some(now)),
            _ => Some(now),
        };
        let record = WatchRecord {
            container: t.info.name.clone(),
            image: t.info.image_ref.clone(),
            policy: t.labels.policy.as_str().to_owned(),
            running_digest: Some(running.clone()),
            newest_digest: Some(newest.clone()),
            newest_tag: newest_tag.clone(),
            newest_seen_at,
            // Reported digests are remembered per running image: a container recreated under
            // the watcher (compose down/up, a restore) on another image is a new situation,
            // and a newer digest for it is news again.
            reported_digest: prev
                .filter(|p| p.running_digest.as_ref().is_none_or(|r| known.contains(r)))
                .and_then(|p| p.reported_digest.clone()),
            checked_at: now,
            last_error: None,
            host: self.bus.host().map(str::to_owned),
        };
        // A pulled multi-arch image is known by its index digest and its platform manifest's:
        // either one equal to the registry's means nothing changed (and is what it runs).
        let current = known.contains(&newest);
        let is_new = !current && record.reported_digest.as_ref() != Some(&newest);
        if is_new {
            let current_version = image
                .as_ref()
                .ok()
                .and_then(|i| ImageVersion::from_labels(&i.labels, i.created.as_deref()));
            let data = ImageUpdated {
                container: t.info.name.clone(),
                image: t.info.image_ref.clone(),
                current_digest: running.clone(),
                new_digest: newest.clone(),
                new_tag: newest_tag,
                policy: Some(t.labels.policy.as_str().to_owned()),
                versions: Versions {
                    current_version,
                    new_version: self.new_version(&t, &newest).await,
                },
            };
            let event = match cause {
                Some(cause) => Event::caused_by(cause, &self.source, data),
                None => Event::new(&self.source, data),
            };
            count("updated");
            return Outcome::Updated(Box::new(Found {
                event,
                record,
                revision: previous.map(|v| v.revision),
                compose: ComposeService::from_labels(&t.info.labels),
            }));
        }
        count("current");
        if worth_saving(prev, &record) {
            if let Err(e) = self.save(record, previous.map(|v| v.revision)).await {
                tracing::warn!(container = %t.info.name, error = %e, "cannot save watch record");
            }
        }
        Outcome::Current
    }

    /// Publishes a newer image, then records it as reported. Publish first, then record: a
    /// crash in between repeats the event (the updater tolerates that) rather than losing it.
    async fn publish(&self, f: Found) -> Result<(), String> {
        let Found { event, mut record, revision, .. } = f;
        let EventData::ImageUpdated(u) = &event.data else {
            return Err("not an image.updated event".into());
        };
        if let Err(e) = self.bus.publish(&event).await {
            tracing::error!(container = %record.container, error = %e, "cannot publish image.updated; will retry next check");
            return Err(format!("cannot publish image.updated: {e}"));
        }
        tracing::info!(container = %record.container, from = %u.current_digest.short(), to = %u.new_digest.short(), "newer image");
        record.reported_digest = Some(u.new_digest.clone());
        if let Err(e) = self.save(record, revision).await {
            tracing::warn!(container = %u.container, error = %e, "cannot save watch record");
        }
        Ok(())
    }

    /// What the new image says about itself, from its config in the registry; `None` (logged)
    /// when it cannot be read: the announcement goes out without it.
    async fn new_version(&self, t: &Target, digest: &Digest) -> Option<ImageVersion> {
        match self.registries.image_config(&t.reference, digest).await {
            Ok(config) => ImageVersion::from_labels(&config.labels, config.created.as_deref()),
            Err(e) => {
                tracing::warn!(container = %t.info.name, digest = %digest.short(), error = %e,
                    "cannot read the new image's labels; announcing it without them");
                None
            }
        }
    }

    /// The newest digest: of a newer tracked tag if there is one, else of the tag itself.
    async fn newest(&self, t: &Target) -> Result<(Option<String>, Digest), RegistryError> {
        if let (Some(rule), Some(tag)) = (&t.labels.tags, t.reference.tag()) {
            let tags = self.registries.tags(&t.reference).await?;
            if let Some(newer) = rule.newest(tag, tags.iter().map(String::as_str)) {
                // A tag the registry listed that no reference can carry is its fault.
                let r = t.reference.with_tag(newer).map_err(|e| RegistryError::Protocol {
                    registry: t.reference.registry().to_owned(),
                    reason: format!("listed tag {newer:?}: {e}"),
                })?;
                return Ok((Some(newer.to_owned()), self.registries.manifest_digest(&r).await?));
            }
        }
        Ok((None, self.registries.manifest_digest(&t.reference).await?))
    }

    /// Which of the digests the container's image is `known` by it runs, as its repository
    /// knows it. Usually there is one, or two of one image (a pulled multi-arch index and its
    /// platform manifest, both in the repository). Podman lists an image with every digest
    /// any of its names ever had, most of them manifests of other repositories (another
    /// push of the same image): then the registry's `newest` if known (nothing changed), else
    /// the first one the repository holds (a `HEAD` each, in order, on every such check: a
    /// choice remembered from a check whose registry did not answer would be a guess), else
    /// the first.
    async fn running_digest(&self, t: &Target, known: &[Digest], newest: &Digest) -> Digest {
        if known.contains(newest) {
            return newest.clone();
        }
        if let [only] = known {
            return only.clone();
        }
        for d in known {
            match self.registries.holds_manifest(&t.reference, d).await {
                Ok(true) => return d.clone(),
                Ok(false) => {}
                // No answer: no better choice than the first.
                Err(_) => break,
            }
        }
        known[0].clone()
    }

    async fn remember_error(&self, t: &Target, running: Option<&Digest>, why: &str) {
        let Ok(previous) = self.records.get(&t.info.name).await else { return };
        let base = previous.as_ref().map(|v| v.value.clone());
        let record = WatchRecord {
            container: t.info.name.clone(),
            image: t.info.image_ref.clone(),
            policy: t.labels.policy.as_str().to_owned(),
            running_digest: running.cloned(),
            newest_digest: base.as_ref().and_then(|b| b.newest_digest.clone()),
            newest_tag: base.as_ref().and_then(|b| b.newest_tag.clone()),
            newest_seen_at: base.as_ref().and_then(|b| b.newest_seen_at),
            reported_digest: base.as_ref().and_then(|b| b.reported_digest.clone()),
            checked_at: OffsetDateTime::now_utc(),
            last_error: Some(why.to_owned()),
            host: self.bus.host().map(str::to_owned),
        };
        // An unchanged failure is not written again within the hour, like any record.
        if worth_saving(base.as_ref(), &record) {
            let _ = self.save(record, previous.map(|v| v.revision)).await;
        }
    }

    async fn save(
        &self,
        record: WatchRecord,
        revision: Option<u64>,
    ) -> Result<(), steward_bus::BusError> {
        let key = record.container.clone();
        match revision {
            Some(rev) => self.records.update(&key, &record, rev).await.map(|_| ()),
            None => self.records.create(&key, &record).await.map(|_| ()),
        }
    }

    /// Drops the records of containers that no longer exist on this host, so `steward status`
    /// lists what is there. (Records are keyed by container name: one watcher per Docker host
    /// and namespace.)
    async fn forget_gone(
        &self,
        summary: &Summary,
        listed: &std::collections::HashSet<String>,
        records: &Option<HashMap<String, Versioned<WatchRecord>>>,
    ) {
        // Records made during this check are of listed containers: the snapshot's keys do.
        let keys = match records {
            Some(all) => all.keys().cloned().collect(),
            None => match self.records.keys().await {
                Ok(keys) => keys,
                Err(_) => return,
            },
        };
        for key in keys {
            // A container listed running a moment ago exists: only the others are asked for.
            let seen = listed.contains(&key)
                || summary.skipped.iter().chain(&summary.failed).any(|(n, _)| *n == key)
                || summary.updated.contains(&key);
            if seen {
                continue;
            }
            if let Ok(None) = self.engine.container_id(&key).await {
                tracing::info!(container = %key, "container is gone; forgetting its watch record");
                let _ = self.records.delete(&key).await;
            }
        }
    }

    /// Records that a container now runs `digest` (after `update.succeeded`).
    pub async fn note_running(
        &self,
        container: &str,
        digest: &Digest,
    ) -> Result<(), steward_bus::BusError> {
        if let Some(v) = self.records.get(container).await? {
            let mut record = v.value;
            record.running_digest = Some(digest.clone());
            self.records.update(container, &record, v.revision).await?;
        }
        Ok(())
    }
}

/// The digests the container's image is known by in the repository its reference names:
/// one for a single-platform image, two (index and platform manifest) for a pulled multi-arch
/// one.
fn running_digests(t: &Target, repo_digests: &[String]) -> Vec<Digest> {
    repo_digests
        .iter()
        .filter_map(|rd| {
            let r = ImageRef::parse(rd).ok()?;
            let same = r.same_repository(&t.reference);
            same.then(|| r.digest().and_then(|d| Digest::parse(d).ok())).flatten()
        })
        .collect()
}

/// Labels and reference of a container, or why it is skipped. `Ok(None)`: not opted in.
fn target(info: ContainerInfo) -> Result<Option<Target>, (String, String)> {
    let labels: &HashMap<String, String> = &info.labels;
    match steward_labels::watched(labels) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => return Err((info.name, e.to_string())),
    }
    let watch =
        steward_labels::watch_labels(labels).map_err(|e| (info.name.clone(), e.to_string()))?;
    let reference =
        ImageRef::parse(&info.image_ref).map_err(|e| (info.name.clone(), e.to_string()))?;
    // One meaning with the updater: a digest pins the image even with a tag beside it (Docker
    // runs the digest), so there is nothing to update and nothing to watch.
    if reference.is_pinned() {
        return Err((
            info.name,
            format!("image {} is pinned by digest; nothing to watch", info.image_ref),
        ));
    }
    Ok(Some(Target { info, reference, labels: watch }))
}

/// How stale a record's `checked_at` may get before an unchanged check writes it again.
/// Within it, a check that changes nothing writes nothing (the KV writes were most of a
/// check's own time); the default schedule is weekly, so a scheduled check always writes.
pub const REFRESH_AFTER: time::Duration = time::Duration::HOUR;

/// Whether `record` says something `previous` does not: any field but `checked_at`, or a
/// `checked_at` more than [`REFRESH_AFTER`] newer.
fn worth_saving(previous: Option<&WatchRecord>, record: &WatchRecord) -> bool {
    let Some(p) = previous else { return true };
    let same = WatchRecord { checked_at: record.checked_at, ..p.clone() } == *record;
    !same || record.checked_at - p.checked_at >= REFRESH_AFTER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: OffsetDateTime) -> WatchRecord {
        WatchRecord {
            container: "gitea".into(),
            image: "gitea/gitea:1.22".into(),
            policy: "manual".into(),
            running_digest: None,
            newest_digest: None,
            newest_tag: None,
            newest_seen_at: None,
            reported_digest: None,
            checked_at: at,
            last_error: None,
            host: None,
        }
    }

    fn container(image_ref: &str) -> ContainerInfo {
        ContainerInfo {
            id: "id".into(),
            name: "app".into(),
            image_ref: image_ref.into(),
            image_id: "sha256:1".into(),
            labels: HashMap::from([("steward.enable".to_owned(), "true".to_owned())]),
        }
    }

    #[test]
    fn references_are_watched_unless_pinned_or_invalid() {
        let d = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        for watched in ["nginx", "gitea/gitea:1.22", "127.0.0.1:5000/app:v1"] {
            assert!(matches!(target(container(watched)), Ok(Some(_))), "{watched}");
        }
        // A tag beside the digest does not unpin it: Docker runs the digest, and the updater
        // would refuse every newer digest of the tag.
        for pinned in [format!("127.0.0.1:5000/app@{d}"), format!("127.0.0.1:5000/app:v1@{d}")] {
            let Err((_, why)) = target(container(&pinned)) else { panic!("{pinned} watched") };
            assert!(why.contains("pinned by digest"), "{why}");
        }
        let Err((name, why)) = target(container("App:1")) else { panic!("App:1 watched") };
        assert_eq!(name, "app");
        assert!(why.contains("\"App:1\"") && why.contains("lowercase"), "{why}");
    }

    #[test]
    fn an_unchanged_check_writes_only_once_its_record_is_stale() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let stored = record(t0);
        assert!(worth_saving(None, &record(t0)), "a first record is written");
        assert!(!worth_saving(Some(&stored), &record(t0 + time::Duration::minutes(5))));
        assert!(worth_saving(Some(&stored), &record(t0 + REFRESH_AFTER)));
        let mut changed = record(t0 + time::Duration::minutes(5));
        changed.last_error = Some("registry unreachable".into());
        assert!(worth_saving(Some(&stored), &changed), "any other change is written");
        let mut changed = record(t0 + time::Duration::minutes(5));
        changed.policy = "automatic".into();
        assert!(worth_saving(Some(&stored), &changed));
    }
}
