//! What a restarted updater (or a redelivery, or the sweep) finds: a record whose flow no
//! task of this process holds. Each is driven on or ended, one container at a time, so one
//! container's trouble never stops the others:
//!
//! - its outbox is published (events decided but not confirmed);
//! - `Pending`, `Deferred`, `AwaitingBackup` keep waiting (for a human, the sweep, a backup);
//! - `Swapping` before the swap (nothing touched) is started again, once: a second restart
//!   there ends it with `update.failed`;
//! - a start-first swap whose HAProxy switch was recorded is finished forward (the new
//!   container passed its gate and serves);
//! - `Swapping` after it, and `Gating`, are rolled back: exactly one container under the name,
//!   the old one, running, its network-namespace dependents back in it. If the containers
//!   changed meanwhile (the old one removed, the name taken by a container someone else
//!   created), nothing is forced: `update.failed` says what was found;
//! - `HandingOver` is the self-update's business ([`super::handover`]), at start only;
//! - containers left under the swap names by finished updates are removed.

use std::collections::HashMap;

use steward_bus::Versioned;
use steward_engine::recreate::{is_swap_name, FAILED_SUFFIX, NEW_SUFFIX, OLD_SUFFIX, SWAP_LABEL};
use steward_engine::Replacement;
use steward_events::records::{UpdateRecord, UpdateStep};

use super::{Flow, FlowError};

/// Why a rolled-back or ended update stopped.
const INTERRUPTED: &str = "the update was interrupted (the updater restarted or gave up)";

impl Flow {
    /// At start: drives on every update no task holds. Never fails as a whole: a container
    /// whose update cannot be finished now is logged and left to the sweep.
    pub async fn resume(&self) -> Vec<(String, FlowError)> {
        let mut failures = vec![];
        let keys = match self.records.keys().await {
            Ok(keys) => keys,
            Err(e) => return vec![("(all)".into(), e.into())],
        };
        for key in keys {
            let Some(_hold) = self.records.hold(&key) else { continue };
            if let Err(e) = self.resume_one(&key).await {
                tracing::error!(container = %key, error = %e, "cannot finish an interrupted update now; the sweep tries again");
                failures.push((key, e));
            }
        }
        if let Err(e) = self.clean_leftovers().await {
            tracing::warn!(error = %e, "cannot remove leftover swap containers now");
        }
        failures
    }

    async fn resume_one(&self, key: &str) -> Result<(), FlowError> {
        let Some(v) = self.records.get(key).await? else { return Ok(()) };
        match v.value.step {
            UpdateStep::HandingOver => {
                let v = self.records.flush(v).await?;
                self.resume_handover(v).await
            }
            // Claimed (or deferred) before a restart: what is due starts now, not at the sweep.
            UpdateStep::Deferred => {
                let v = self.records.flush(v).await?;
                self.start_if_due(v).await
            }
            UpdateStep::Swapping if v.value.old_id.is_none() => {
                // A restart before the swap: counted, so an update that kills the updater
                // (a huge pull, a hook) ends instead of looping.
                let mut record = v.value;
                record.interruptions = record.interruptions.saturating_add(1);
                let v = self.records.save(record, v.revision).await?;
                if v.value.interruptions >= 2 {
                    let reason = format!(
                        "{INTERRUPTED} {} times before the containers were swapped; nothing was changed",
                        v.value.interruptions
                    );
                    let v = self.records.flush(v).await?;
                    return self.fail(v, reason, vec![]).await;
                }
                self.drive(v).await
            }
            _ => self.drive(v).await,
        }
    }

    /// Drives on an update whose flow no task holds (the caller holds it).
    pub async fn drive(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        let v = self.records.flush(v).await?;
        match v.value.step {
            UpdateStep::Pending | UpdateStep::Deferred | UpdateStep::AwaitingBackup => Ok(()),
            UpdateStep::Swapping if v.value.old_id.is_none() => {
                tracing::warn!(container = %v.value.container, "an update interrupted before its swap starts again");
                self.apply(v).await
            }
            UpdateStep::Swapping | UpdateStep::Gating => self.recover(v).await,
            // Only a start decides a handover (who is the successor).
            UpdateStep::HandingOver => Ok(()),
            // A success whose compose project was not told yet (a kill in between).
            UpdateStep::Succeeded if v.value.write_back => Box::pin(self.write_back(v)).await,
            UpdateStep::Succeeded
            | UpdateStep::RolledBack
            | UpdateStep::Failed
            | UpdateStep::Rejected => Ok(()),
        }
    }

    /// Rolls back an update interrupted between its swap and its verdict, or ends it with what
    /// it finds when the containers changed meanwhile.
    async fn recover(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        let name = v.value.container.clone();
        let Some(old_id) = v.value.old_id.clone() else { return self.apply(v).await };
        if let (Some(h), Some(new_id)) = (&v.value.haproxy, v.value.new_id.clone()) {
            if h.switched {
                let r = Replacement { name, old_id, new_id };
                return self.finish_start_first(v, &r).await;
            }
        }
        tracing::warn!(container = %name, "rolling back an interrupted update");
        let old = self.engine.brief(&old_id).await?;
        let holder = self.engine.brief(&name).await?;
        // The new container: by the id recorded, else under its temporary name, else the one
        // holding the name that the swap created.
        let mut new = match &v.value.new_id {
            Some(id) => self.engine.brief(id).await?,
            None => None,
        };
        if new.is_none() {
            new = self.engine.brief(&format!("{name}{NEW_SUFFIX}")).await?;
        }
        if new.is_none() {
            new = holder.clone().filter(|h| {
                h.id != old_id && h.labels.get(SWAP_LABEL).map(String::as_str) == Some(&name)
            });
        }
        if let Some(own) = new.as_ref().filter(|n| self.is_own(&n.id)) {
            // This process is the successor of a self-update that died while taking over or
            // after it: its start is its health gate, so the update stands. (Rolling back
            // would stop the container this process runs in, and nothing would start the
            // old updater again.)
            tracing::warn!(container = %name, "completing an interrupted takeover");
            let r = Replacement { name, old_id, new_id: own.id.clone() };
            self.engine.finish_take_over(&r).await?;
            return self.succeed(v, &r).await;
        }
        let is_new = |id: &str| new.as_ref().is_some_and(|n| n.id == id);
        let Some(old) = old else {
            // The old container was removed under the update (`docker rm`, `compose down`):
            // there is nothing to go back to, and what holds the name stays.
            let keep: Vec<&str> = holder.iter().map(|h| h.id.as_str()).collect();
            self.engine.remove_leftovers(&name, &keep).await?;
            let found = match &holder {
                Some(h) if is_new(&h.id) => {
                    self.engine.start(&h.id).await?;
                    format!("{name} runs the new image, started without its health gate")
                }
                Some(_) => format!("another container holds the name {name}"),
                None => format!("no container {name} exists any more"),
            };
            let reason = format!(
                "{INTERRUPTED}, and the old container was removed meanwhile: {found}; nothing was restored"
            );
            return self.fail(v, reason, vec![]).await;
        };
        if let Some(h) = holder.as_ref().filter(|h| h.id != old.id && !is_new(&h.id)) {
            if h.labels.get(SWAP_LABEL).map(String::as_str) != Some(&name) {
                // Someone recreated the container (`compose up`): theirs stands, ours go.
                self.engine.remove_leftovers(&name, &[&h.id]).await?;
                let reason = format!(
                    "{INTERRUPTED}, and {name} was recreated meanwhile: that container stands, the parked old one was removed"
                );
                return self.fail(v, reason, vec![]).await;
            }
        }
        let new_id = new.map(|n| n.id).unwrap_or_else(|| format!("{name}{NEW_SUFFIX}"));
        let r = Replacement { name, old_id: old.id, new_id };
        // A dependent caught half-way through joining the new container (or back the old
        // one) gets its name back first, so the rollback's rejoin finds it.
        let repaired =
            self.engine.repair_rejoins(&[r.old_id.as_str(), r.new_id.as_str(), &r.name]).await?;
        // Why the flow stopped, when it could say (an engine that stopped answering).
        let reason = v.value.reason.clone().unwrap_or_else(|| INTERRUPTED.to_owned());
        self.roll_back(v, &r, reason).await?;
        for dependent in repaired {
            tracing::warn!(%dependent, "a dependent's interrupted recreation was repaired");
            if self.engine.is_running(&dependent).await? == Some(false) {
                self.engine.start(&dependent).await?;
            }
        }
        Ok(())
    }

    /// One round of the sweep (every few seconds): drives on every update no task holds
    /// (outboxes, deferred updates whose time came, backups that did not come, flows a
    /// failed step left), and removes leftover swap containers of finished updates.
    pub async fn sweep(&self) -> Result<(), FlowError> {
        for key in self.records.keys().await? {
            let Some(_hold) = self.records.hold(&key) else { continue };
            let Some(v) = self.records.get(&key).await? else { continue };
            let result = match v.value.step {
                UpdateStep::Deferred => match self.records.flush(v).await {
                    Ok(v) => self.start_if_due(v).await,
                    Err(e) => Err(e.into()),
                },
                UpdateStep::AwaitingBackup => match self.records.flush(v).await {
                    Ok(v) => self.expire_backup(v).await,
                    Err(e) => Err(e.into()),
                },
                UpdateStep::Pending => match self.records.flush(v).await {
                    Ok(v) => self.remind_if_due(v).await,
                    Err(e) => Err(e.into()),
                },
                _ => self.drive(v).await,
            };
            if let Err(e) = result {
                tracing::warn!(container = %key, error = %e, "sweep: cannot drive this update on now");
            }
        }
        if let Err(e) = self.run_queue().await {
            tracing::warn!(error = %e, "sweep: cannot take up the images that wait");
        }
        if let Err(e) = self.follow_addresses().await {
            tracing::warn!(error = %e, "sweep: cannot compare HAProxy's servers with their containers now");
        }
        self.clean_leftovers().await
    }

    /// Removes containers under the swap names (or with the swap label under another name)
    /// whose update is finished and not held: the parked old container of a success, a
    /// failed new one of a rollback. Only containers this updater has a record for are
    /// looked at; the container an update ended on is never removed.
    pub async fn clean_leftovers(&self) -> Result<(), FlowError> {
        let all = self.engine.containers(|_| true).await?;
        let mut bases: HashMap<String, Vec<String>> = HashMap::new();
        for c in &all {
            let by_name = [OLD_SUFFIX, NEW_SUFFIX, FAILED_SUFFIX]
                .iter()
                .find_map(|s| c.name.strip_suffix(s))
                .filter(|_| is_swap_name(&c.name));
            let by_label = c.labels.get(SWAP_LABEL).filter(|base| **base != c.name);
            if let Some(base) = by_name.or(by_label.map(String::as_str)) {
                bases.entry(base.to_owned()).or_default().push(c.name.clone());
            }
        }
        for (base, leftovers) in bases {
            let Some(_hold) = self.records.hold(&base) else { continue };
            let Some(v) = self.records.get(&base).await? else { continue };
            let record = &v.value;
            if !record.step.is_terminal() {
                continue;
            }
            // What the update ended on stays: the new container after a success, the old
            // one otherwise (also if, against expectation, it is still parked).
            let mut keep: Vec<&str> = vec![];
            if record.step == UpdateStep::Succeeded {
                if let (Some(old_id), Some(new_id)) = (&record.old_id, &record.new_id) {
                    if self.engine.brief(new_id).await?.is_none()
                        && self.engine.brief(old_id).await?.is_some()
                    {
                        // The updated container is gone and the one it replaced is still
                        // here: a `compose up` at boot (a Podman stack's unit) keeps the first
                        // created of a service's two containers and removes the other. The old
                        // one is all that is left of the service: it runs again under its name
                        // (the watcher then finds the update again), never removed.
                        tracing::warn!(container = %base, "the updated container is gone (a compose up after a reboot?); its predecessor runs again under the name");
                        let r = Replacement {
                            name: base.clone(),
                            old_id: old_id.clone(),
                            new_id: new_id.clone(),
                        };
                        self.engine.restore(&r).await?;
                        continue;
                    }
                }
                keep.extend(record.new_id.as_deref());
            } else {
                keep.extend(record.old_id.as_deref());
                keep.extend(record.new_id.as_deref().filter(|_| record.step == UpdateStep::Failed));
            }
            let removed = self.engine.remove_leftovers(&base, &keep).await?;
            if !removed.is_empty() {
                tracing::info!(container = %base, ?removed, ?leftovers, "removed leftover swap containers");
            }
        }
        Ok(())
    }
}
