//! Pull the checked digest and swap the containers; then the health gate decides.

use steward_bus::Versioned;
use steward_engine::Replacement;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{UpdateKind, UpdateSucceeded};
use steward_imageref::{ImageRef, ImageRefError};
use time::OffsetDateTime;

use super::{Flow, FlowError};

/// What is pulled for an update of a container created from `image`: its repository under
/// the newer tag when tag tracking found one, else under its own tag (`latest` by default).
/// `None` for a reference pinned by digest (nothing to update). The tag is checked, as it came
/// in an event.
pub fn pull_target(
    image: &ImageRef,
    new_tag: Option<&str>,
) -> Result<Option<ImageRef>, ImageRefError> {
    if image.is_pinned() {
        return Ok(None);
    }
    match new_tag {
        Some(tag) => image.with_tag(tag).map(Some),
        None => Ok(Some(image.clone())),
    }
}

impl Flow {
    /// Runs the update from `Swapping` to a terminal step.
    pub async fn apply(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        // The swap's state (engine calls, health gate, rollback, write-back) is large in a
        // debug build; on the heap, every caller's future and stack stay small.
        Box::pin(self.apply_boxed(v)).await
    }

    async fn apply_boxed(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        let name = v.value.container.clone();
        let target = ImageRef::parse(&v.value.image)
            .and_then(|image| pull_target(&image, v.value.new_tag.as_deref()));
        let target = match target {
            Ok(Some(target)) => target,
            Ok(None) => {
                return self
                    .fail(v, "the image is pinned by digest; nothing to update".into(), vec![])
                    .await
            }
            Err(e) => return self.fail(v, e.to_string(), vec![]).await,
        };
        let (repository, tag) = (target.familiar_name(), target.tag().unwrap_or("latest"));
        let digest = v.value.to_digest.to_string();
        // The container as configured now: only its own repository is pulled.
        match self.engine.brief(&name).await {
            Ok(Some(c)) if c.image_ref == v.value.image => {}
            Ok(Some(c)) => {
                let reason = format!(
                    "container {name} was recreated from {} meanwhile; {} is not pulled for it",
                    c.image_ref, v.value.image
                );
                return self.fail(v, reason, vec![]).await;
            }
            Ok(None) => {
                return self.fail(v, format!("container {name} no longer exists"), vec![]).await
            }
            Err(e) => return self.engine_failed(v, e).await,
        }
        // Pull first: a failure here leaves the container untouched.
        steward_failpoints::failpoint!("pull");
        // A rollback's image is usually still here: used as it is (a digest is its content),
        // so a rollback works with the registry away. Pulled by digest otherwise.
        let local = match v.value.kind {
            UpdateKind::Rollback => self.engine.tag_local_digest(&target, &digest, tag).await,
            UpdateKind::Update => Ok(false),
        };
        match local {
            Ok(true) => {}
            Ok(false) => {
                if let Err(e) = self.engine.pull_digest(&target, &digest, tag).await {
                    let reason = match v.value.kind {
                        UpdateKind::Rollback => format!(
                            "the previous image {repository}@{digest} is no longer on this host and cannot be pulled: {e}; nothing was changed"
                        ),
                        UpdateKind::Update => format!("cannot pull {repository}@{digest}: {e}"),
                    };
                    return self.fail(v, reason, vec![]).await;
                }
            }
            Err(e) => return self.engine_failed(v, e).await,
        }
        steward_failpoints::failpoint!("pulled");
        let settings = match self.engine.container_labels(&name).await {
            Ok(labels) => labels.and_then(|l| steward_labels::update_labels(&l).ok()),
            Err(e) => return self.engine_failed(v, e).await,
        };
        let health_url = settings.as_ref().and_then(|s| s.health_url.clone());
        // The operator's hook (flush queues, ...) runs in the old container; a failure stops
        // the update with the container still running as it was.
        if let Some(hook) = settings.as_ref().and_then(|s| s.pre.clone()) {
            let cmd = vec!["sh".to_owned(), "-c".to_owned(), hook.clone()];
            let run =
                tokio::time::timeout(self.cfg.hook_timeout, self.engine.exec(&name, cmd, 20)).await;
            match run {
                Ok(Ok(out)) if out.exit_code == 0 => {
                    tracing::info!(container = %name, %hook, "pre-update hook done")
                }
                Ok(Ok(out)) => {
                    let reason = format!("pre-update hook `{hook}` exited with {}", out.exit_code);
                    return self.fail(v, reason, out.tail).await;
                }
                Ok(Err(e)) => {
                    return self
                        .fail(v, format!("pre-update hook `{hook}` could not run: {e}"), vec![])
                        .await
                }
                Err(_) => {
                    let reason = format!(
                        "pre-update hook `{hook}` did not finish within {:?}",
                        self.cfg.hook_timeout
                    );
                    return self.fail(v, reason, vec![]).await;
                }
            }
        }
        // Remembered before the swap (read after the pull and the hook, which take time), so
        // a restarted updater can put it back.
        let old_id = match self.engine.container_id(&name).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                return self.fail(v, format!("container {name} no longer exists"), vec![]).await
            }
            Err(e) => return self.engine_failed(v, e).await,
        };
        let mut dependents = vec![];
        let names = match self.engine.network_dependents(&[old_id.as_str(), name.as_str()]).await {
            Ok(names) => names,
            Err(e) => return self.engine_failed(v, e).await,
        };
        for d in names {
            match self.engine.is_running(&d).await {
                Ok(Some(true)) => dependents.push(d),
                Ok(_) => {}
                Err(e) => return self.engine_failed(v, e).await,
            }
        }
        let start_first = match settings.as_ref().map(|s| &s.strategy) {
            Some(steward_labels::Strategy::StartFirst(t)) => Some(t.clone()),
            _ => None,
        };
        let haproxy = match &start_first {
            Some(_) if !dependents.is_empty() => {
                let reason = format!(
                    "{name} is labelled start-first but {} share its network namespace; nothing was changed",
                    dependents.join(", ")
                );
                return self.fail(v, reason, vec![]).await;
            }
            Some(t) => match self.plan_start_first(&name, &old_id, t).await? {
                Ok(h) => Some(h),
                Err(reason) => return self.fail(v, reason, vec![]).await,
            },
            None => None,
        };
        let mut record = v.value;
        record.old_id = Some(old_id);
        record.dependents = dependents;
        record.haproxy = haproxy;
        let v = self.records.save(record, v.revision).await?;

        let image = format!("{repository}:{tag}");
        if self.is_own(v.value.old_id.as_deref().unwrap_or_default()) {
            return self.hand_over(v, &image).await;
        }
        if let Some(target) = &start_first {
            steward_failpoints::failpoint!("startfirst:planned");
            return self.swap_start_first(v, &image, target, health_url.as_deref()).await;
        }
        let replacement = match self.engine.replace(&name, &image).await {
            Ok(r) => r,
            Err(e) => {
                // `replace` puts the old container back when it fails, unless the engine
                // stops answering: then the update stays in progress (with why) and is rolled
                // back by the sweep or a restart once the engine answers.
                let old = v.value.old_id.clone().unwrap_or_default();
                if self
                    .engine
                    .brief(&name)
                    .await
                    .is_ok_and(|b| b.is_some_and(|b| b.id == old && b.running))
                {
                    let reason = format!("cannot start the new container: {e}");
                    return self.rolled_back(v, reason, vec![]).await;
                }
                let mut record = v.value;
                record.reason = Some(format!("the swap failed and could not be undone yet: {e}"));
                self.records.save(record, v.revision).await?;
                return Err(e.into());
            }
        };
        let mut record = v.value;
        record.new_id = Some(replacement.new_id.clone());
        record.step = UpdateStep::Gating;
        let v = self.records.save(record, v.revision).await?;

        // Containers in the old one's network namespace lost it with the stop: they join the
        // new one, or the update is undone (and they rejoin the old one).
        let from = [replacement.old_id.as_str(), name.as_str()];
        if let Err(reason) = self.rejoin_dependents(&from, &replacement.new_id).await {
            return self.roll_back(v, &replacement, reason).await;
        }
        steward_failpoints::failpoint!("gate");
        match self.health_gate(&replacement.new_id, health_url.as_deref()).await {
            Ok(()) => self.succeed(v, &replacement).await,
            Err(reason) => self.roll_back(v, &replacement, reason).await,
        }
    }

    /// Before the swap: an engine that did not answer ends the update (nothing was changed);
    /// one that cannot be reached is tried again.
    async fn engine_failed(
        &self,
        v: Versioned<UpdateRecord>,
        e: steward_engine::EngineError,
    ) -> Result<(), FlowError> {
        if e.is_timeout() {
            return self.fail(v, format!("{e}; nothing was changed"), vec![]).await;
        }
        Err(e.into())
    }

    /// Recreates every container in the network namespace of a container known by `from`
    /// in that of container `to`.
    pub(crate) async fn rejoin_dependents(&self, from: &[&str], to: &str) -> Result<(), String> {
        let dependents = self.engine.network_dependents(from).await.map_err(|e| e.to_string())?;
        for name in dependents {
            tracing::info!(dependent = %name, to, "joining the network namespace of the replaced container");
            self.engine
                .rejoin(&name, to)
                .await
                .map_err(|e| format!("{name} (network_mode container:) could not rejoin: {e}"))?;
        }
        Ok(())
    }

    pub(crate) async fn succeed(
        &self,
        v: Versioned<UpdateRecord>,
        r: &Replacement,
    ) -> Result<(), FlowError> {
        let record = &v.value;
        let duration_ms =
            (OffsetDateTime::now_utc() - record.started_at).whole_milliseconds().max(0) as u64;
        tracing::info!(container = %record.container, to = %record.to_digest.short(), duration_ms, "update succeeded");
        let data = UpdateSucceeded {
            update_id: record.update_id,
            container: record.container.clone(),
            image: record.image.clone(),
            from_digest: record.from_digest.clone(),
            to_digest: record.to_digest.clone(),
            duration_ms,
            approved_by: record.approved_by.clone(),
            kind: record.kind,
            requested_by: record.requested_by.clone(),
        };
        // The compose project is told the new tag after the verdict, never before (a kill in
        // between must not leave the file naming an image that was rolled back): the flag is
        // saved with the verdict, so a restart finds it (`crate::writeback`).
        let mut v = v;
        v.value.write_back = self.cfg.write_back && crate::writeback::wanted(&v.value);
        // The verdict is recorded before the old container goes: a crash after its removal
        // must not find an update "between swap and verdict" with nothing to roll back to.
        let v = self.records.conclude(v, UpdateStep::Succeeded, None, data).await?;
        // The old container goes; its image stays for a later rollback by hand. If this
        // fails, the sweep removes it as a leftover.
        if let Err(e) = self.engine.finish(r).await {
            tracing::warn!(container = %r.name, error = %e, "cannot remove the old container yet");
        }
        // Old images of its repository beyond STEWARD_KEEP_IMAGES go now that the update
        // stands (the one it ran before is kept for `steward rollback`). Never fails the flow.
        self.prune_after_update(&r.name).await;
        if v.value.write_back {
            if let Err(e) = Box::pin(self.write_back(v)).await {
                tracing::warn!(container = %r.name, error = %e, "cannot write the new tag into the compose project now; the sweep tries again");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pull_target;
    use steward_imageref::ImageRef;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// What is pulled: familiar repository and tag (`None`: pinned, nothing to pull).
    fn pulled(image: &str, new_tag: Option<&str>) -> Option<(String, String)> {
        let image = ImageRef::parse(image).expect("reference");
        let target = pull_target(&image, new_tag).expect("valid tag")?;
        Some((target.familiar_name(), target.tag().expect("a tag").to_owned()))
    }

    #[test]
    fn references_split_at_the_tag_not_the_port() {
        let s = |i, t| pulled(i, t).expect("not pinned");
        assert_eq!(s("127.0.0.1:5000/app:1.0", None), ("127.0.0.1:5000/app".into(), "1.0".into()));
        assert_eq!(s("127.0.0.1:5000/app", None), ("127.0.0.1:5000/app".into(), "latest".into()));
        assert_eq!(
            s("gitea/gitea:1.22.6", Some("1.22.7")),
            ("gitea/gitea".into(), "1.22.7".into())
        );
        assert_eq!(s("nginx", None), ("nginx".into(), "latest".into()));
        assert_eq!(s("docker.io/library/nginx:1", None), ("nginx".into(), "1".into()));
    }

    #[test]
    fn pinned_references_and_bad_tags_are_not_pulled() {
        assert_eq!(pulled(&format!("127.0.0.1:5000/app@{D}"), None), None);
        // A tag beside the digest does not unpin it: Docker runs the digest.
        assert_eq!(pulled(&format!("127.0.0.1:5000/app:1.0@{D}"), Some("1.1")), None);
        let image = ImageRef::parse("gitea/gitea:1.22").expect("reference");
        for bad in ["", "1.23 ; rm", "../x", "x/y"] {
            assert!(pull_target(&image, Some(bad)).is_err(), "{bad:?}");
        }
    }
}
