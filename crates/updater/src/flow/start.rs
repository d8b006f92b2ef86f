//! `image.updated`: decide by policy, and claim the container for this update.

use steward_bus::{StateStore, Versioned};
use steward_engine::recreate::is_swap_name;
use steward_events::records::{UpdateRecord, UpdateStep, WatchRecord, WATCH_BUCKET};
use steward_events::{Event, ImageUpdated, UpdateKind, UpdatePending, UpdateStarted};
use steward_labels::compose::ComposeService;
use steward_labels::Policy;
use time::OffsetDateTime;

use super::{Flow, FlowError, Hold};

impl Flow {
    /// Handles a newer image for a container on this host.
    pub async fn on_image_updated(&self, event: &Event, u: &ImageUpdated) -> Result<(), FlowError> {
        let Some(hold) = self.records.hold(&u.container) else {
            // A task of this process works on the container: the news waits for it to end.
            return self.queue_news(event, u).await;
        };
        self.take_news(event, u, hold).await
    }

    /// [`Flow::on_image_updated`] with the container held by the caller.
    pub(super) async fn take_news(
        &self,
        event: &Event,
        u: &ImageUpdated,
        _hold: Hold,
    ) -> Result<(), FlowError> {
        let current = match self.records.get(&u.container).await? {
            // The last update still owes its write-back (a kill after its success): done
            // first, so a newer update finds the project naming what the container runs.
            Some(v) if v.value.step == UpdateStep::Succeeded && v.value.write_back => {
                Box::pin(self.write_back(v)).await?;
                self.records.get(&u.container).await?
            }
            current => current,
        };
        if let Some(v) = current.as_ref() {
            if v.value.news_id == Some(event.id) {
                // A redelivery: its flow ended, or was left by a task that died or gave up.
                return self.drive(v.clone()).await;
            }
            // Not newer than the news of the update already made (a tie too: a replayed copy
            // of an event carries its time, and two releases are never announced at once).
            if v.value.news_time.is_some_and(|t| t >= event.time) {
                tracing::info!(container = %u.container, newer = %v.value.update_id,
                    "not newer than the update already made for this container; ignoring");
                return Ok(());
            }
            // A human rolled the container back from this digest: announced again (the
            // watcher saw the container on another image), it is not re-applied behind
            // their back. A newer digest is news as always.
            if v.value.kind == UpdateKind::Rollback
                && v.value.step == UpdateStep::Succeeded
                && v.value.from_digest == u.new_digest
            {
                tracing::info!(container = %u.container, digest = %u.new_digest.short(),
                    by = ?v.value.requested_by, "rolled back from this digest by hand; not re-applied");
                return Ok(());
            }
        }
        let Some(labels) = self.engine.container_labels(&u.container).await? else {
            tracing::info!(container = %u.container, "no such container on this host; ignoring");
            return Ok(());
        };
        let settings = match steward_labels::update_labels(&labels) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(container = %u.container, error = %e, "bad update labels; not updating");
                return Ok(());
            }
        };
        if settings.policy == Policy::Notify {
            tracing::info!(container = %u.container, "policy notify: nothing to do");
            return Ok(());
        }
        // Only the repository the container is configured with: an event naming another
        // one (a forged or confused publisher) never changes what the container runs.
        let configured = self.engine.brief(&u.container).await?.map(|b| b.image_ref);
        if configured.as_deref() != Some(u.image.as_str()) {
            tracing::warn!(container = %u.container, named = %u.image, configured = ?configured,
                "the event names another image than the container is configured with; ignoring");
            return Ok(());
        }
        if let Some(why) = self.not_news(event, u).await? {
            tracing::info!(container = %u.container, digest = %u.new_digest.short(), %why, "not applied");
            return Ok(());
        }
        let step = if settings.policy == Policy::Manual {
            UpdateStep::Pending
        } else {
            // An automatic update is claimed as waiting to start: `update.started` is
            // published with the step that follows, never twice for one claim.
            UpdateStep::Deferred
        };
        let update_id = uuid::Uuid::now_v7();
        let mut record = UpdateRecord::from_news(
            (update_id, self.host()),
            event,
            u,
            settings.policy.as_str(),
            step,
        );
        record.not_before = settings.not_before(event.time);
        // What `steward rollback` brings back, carried over the update this one replaces.
        record.previous_digest = current.as_ref().and_then(|v| v.value.rollback_target().cloned());
        if settings.policy == Policy::Manual {
            // The link is minted again when the notifier asks for it (`crate::link_server`):
            // only its expiry is kept, never the token.
            record.approval_expires =
                self.cfg.links.as_ref().map(|l| l.expiry(OffsetDateTime::now_utc()));
            let why = self.waits_for(&record, &settings).await?;
            let data = UpdatePending {
                runs: (!why.is_empty()).then(|| format!("waits for {}", why.join(", "))),
                ..super::approval::pending_of(&record, false)
            };
            self.records.stage(&mut record, data);
        }
        // Claim the container: only over a finished update, or over a pending one (a newer
        // digest supersedes what waits for approval). An active update keeps the container.
        let revision = match current {
            None => self.records.create(&u.container, &record).await?,
            Some(v) if v.value.step.is_terminal() || v.value.step == UpdateStep::Pending => {
                self.records.update(&u.container, &record, v.revision).await?
            }
            Some(v) => {
                // An update in progress keeps the container: this newer image waits for it to
                // end. A flow that died or gave up is driven on meanwhile.
                self.queue_news(event, u).await?;
                return self.drive(v).await;
            }
        };
        steward_failpoints::failpoint!("claimed", record.step);
        let v = self.records.flush(steward_bus::Versioned { value: record, revision }).await?;
        if settings.policy == Policy::Manual {
            return Ok(());
        }
        self.begin_or_defer(v, &settings).await
    }

    /// Why `u` is not news, if it is not: the container already runs its digest, or the
    /// watcher has since seen another digest as the newest for it (a redelivered or replayed
    /// older event).
    async fn not_news(&self, event: &Event, u: &ImageUpdated) -> Result<Option<String>, FlowError> {
        let running = self.engine.running_digests(&u.container).await?.unwrap_or_default();
        if running.iter().any(|d| *d == u.new_digest.to_string()) {
            return Ok(Some("the container already runs this digest".into()));
        }
        let Some(watched) =
            StateStore::<WatchRecord>::open_existing(&self.bus, WATCH_BUCKET).await?
        else {
            return Ok(None);
        };
        let Some(w) = watched.get(&u.container).await? else { return Ok(None) };
        // The watcher records a digest after publishing it: the record may lag behind the
        // event, so only a newest digest seen after the event was published outranks it.
        match (&w.value.newest_digest, w.value.newest_seen_at) {
            (Some(newest), Some(seen)) if *newest != u.new_digest && seen > event.time => {
                Ok(Some(format!("the watcher has seen {} as the newest since", newest.short())))
            }
            _ => Ok(None),
        }
    }

    /// Begins now if the minimum age has passed and the window is open; otherwise waits in
    /// `Deferred` for the sweep ([`Flow::sweep`]).
    pub async fn begin_or_defer(
        &self,
        v: steward_bus::Versioned<UpdateRecord>,
        settings: &steward_labels::UpdateLabels,
    ) -> Result<(), FlowError> {
        let why = self.waits_for(&v.value, settings).await?;
        if why.is_empty() {
            return self.begin(v, settings.backup).await;
        }
        let mut record = v.value;
        let reason = format!("waiting: {}", why.join(", "));
        tracing::info!(container = %record.container, %reason, "update deferred");
        record.step = UpdateStep::Deferred;
        record.reason = Some(reason);
        self.records.save(record, v.revision).await?;
        Ok(())
    }

    /// The update settings of container `name` as labelled now; `Err` says why there are
    /// none (the container is gone, or its labels are bad).
    pub async fn settings(
        &self,
        name: &str,
    ) -> Result<Result<steward_labels::UpdateLabels, String>, FlowError> {
        Ok(match self.engine.container_labels(name).await? {
            None => Err(format!("container {name} no longer exists")),
            Some(labels) => steward_labels::update_labels(&labels)
                .map_err(|e| format!("bad update labels: {e}")),
        })
    }

    /// Starts a deferred update whose minimum age, window and dependencies allow it (the
    /// caller holds it).
    pub(crate) async fn start_if_due(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        let settings = match self.settings(&v.value.container).await? {
            Ok(s) => s,
            Err(reason) => return self.fail(v, reason, vec![]).await,
        };
        // A rollback asked by a human does not wait for a window: it is claimed `Deferred`
        // only so that `update.started` goes out once, and starts at once after a restart.
        let rollback = v.value.kind == UpdateKind::Rollback;
        if rollback || self.waits_for(&v.value, &settings).await?.is_empty() {
            tracing::info!(container = %v.value.container, "deferred update starts");
            self.begin(v, settings.backup).await?;
        }
        Ok(())
    }

    /// What an update still waits for before it may start (empty: it may start now): its
    /// minimum age, its maintenance window, the updates of what it depends on. The one gate
    /// of automatic and approved updates, and what the approval page and mail say.
    pub async fn waits_for(
        &self,
        record: &UpdateRecord,
        settings: &steward_labels::UpdateLabels,
    ) -> Result<Vec<String>, FlowError> {
        let now = OffsetDateTime::now_utc();
        let local = chrono::Local::now().naive_local();
        let mut why = vec![];
        if let Some(t) = record.not_before.filter(|t| *t > now) {
            why.push(format!("minimum age until {t}"));
        }
        if let Some(w) = settings.window.as_ref().filter(|w| !w.contains(local)) {
            why.push(format!("maintenance window opens {}", w.next_open(local)));
        }
        let busy = self.busy_dependencies(&record.container).await?;
        if !busy.is_empty() {
            why.push(format!("the update of {} (depends_on) first", busy.join(", ")));
        }
        Ok(why)
    }

    /// Containers of `container`'s compose project that it depends on (compose v2's
    /// `depends_on` label) and whose own update is under way or waiting to start: compose
    /// starts dependencies first, and updates keep that order. One waiting for approval does
    /// not hold the others back.
    pub async fn busy_dependencies(&self, container: &str) -> Result<Vec<String>, FlowError> {
        let Some(labels) = self.engine.container_labels(container).await? else {
            return Ok(vec![]);
        };
        let Some(me) = ComposeService::from_labels(&labels) else { return Ok(vec![]) };
        if me.depends_on.is_empty() {
            return Ok(vec![]);
        }
        let dependencies = self
            .engine
            .containers(|l| ComposeService::from_labels(l).is_some_and(|o| me.depends_on(&o)))
            .await?;
        let mut busy = vec![];
        for d in dependencies.into_iter().filter(|d| !is_swap_name(&d.name)) {
            if let Some(v) = self.records.get(&d.name).await? {
                if !v.value.step.is_terminal() && v.value.step != UpdateStep::Pending {
                    busy.push(d.name);
                }
            }
        }
        busy.sort();
        Ok(busy)
    }

    /// `update.started`, then the backup or the swap.
    pub async fn begin(
        &self,
        v: steward_bus::Versioned<UpdateRecord>,
        backup: bool,
    ) -> Result<(), FlowError> {
        let mut record = v.value;
        let data = UpdateStarted {
            update_id: record.update_id,
            container: record.container.clone(),
            image: record.image.clone(),
            from_digest: record.from_digest.clone(),
            to_digest: record.to_digest.clone(),
            kind: record.kind,
            requested_by: record.requested_by.clone(),
        };
        self.records.stage(&mut record, data);
        record.reason = None;
        if backup {
            return self.request_backup(record, v.revision).await;
        }
        record.step = UpdateStep::Swapping;
        let v = self.records.announce(record, v.revision).await?;
        self.apply(v).await
    }
}
