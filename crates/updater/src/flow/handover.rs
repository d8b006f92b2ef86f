//! The updater updating its own container. It cannot stop itself and then start its
//! successor, so the order changes: the successor is created and started next to it
//! (`HandingOver`), and the successor, at its start, takes the name, stops its predecessor and
//! concludes the update from the persisted record. Taking over is its health gate: it
//! started, read its configuration, reached NATS and its state. If it has not taken over
//! within `STEWARD_HEALTH_TIMEOUT`, the old updater removes it and reports the rollback. The
//! record's compare-and-set decides a race between the two.

use std::time::{Duration, Instant};

use steward_bus::{BusError, Versioned};
use steward_engine::Replacement;
use steward_events::records::{UpdateRecord, UpdateStep};

use super::{Flow, FlowError};

use super::rollback::LOG_LINES;

/// The id of the container this process runs in, if it runs in one: Docker bind-mounts the
/// container's own `hostname`, `hosts` and `resolv.conf` from
/// `/var/lib/docker/containers/<id>/`, Podman from
/// `.../containers/storage/overlay-containers/<id>/userdata/` (rootful and rootless), which
/// `/proc/self/mountinfo` lists. (Podman's was not recognised: an updater updating its own
/// container there replaced itself without a handover, stopping itself half-way.)
pub fn own_container_id() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    container_id_in(&mountinfo)
}

fn container_id_in(mountinfo: &str) -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    // (where it is mounted, the id its source names) for each mount from a container's
    // directory. The mount's root within its file system is the fourth field, where it is
    // mounted the fifth (escaped, so a field never holds a space).
    let candidates: Vec<(&str, String)> = mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ').skip(3);
            let (root, at) = (fields.next()?, fields.next()?);
            let segments: Vec<&str> = root.split('/').collect();
            let id = segments.windows(2).find_map(|pair| match pair {
                ["containers" | "overlay-containers", id] if is_id(id) => Some((*id).to_owned()),
                _ => None,
            })?;
            Some((at, id))
        })
        .collect();
    // Podman's `/run/.containerenv` is the container's own; `hosts` and `resolv.conf` are the
    // namespace's (another container's in a pod or with `network_mode: container:`), and
    // Podman orders these mounts differently from one start to the next. Then `hostname`;
    // then any.
    ["/run/.containerenv", "/etc/hostname"]
        .iter()
        .find_map(|want| candidates.iter().find(|(at, _)| at == want))
        .or_else(|| candidates.first())
        .map(|(_, id)| id.clone())
}

impl Flow {
    /// Whether container `id` is the one this updater runs in.
    pub fn is_own(&self, id: &str) -> bool {
        self.own_id.as_deref() == Some(id)
    }

    /// The old updater's half: start the successor and wait for it to take over.
    pub async fn hand_over(
        &self,
        v: Versioned<UpdateRecord>,
        image: &str,
    ) -> Result<(), FlowError> {
        let name = v.value.container.clone();
        let r = match self.engine.create_successor_of(&name, image).await {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("cannot create the new container: {e}");
                return self.fail(v, reason, vec![]).await;
            }
        };
        // Recorded before it starts: the successor looks for exactly this at its start.
        let mut record = v.value;
        record.new_id = Some(r.new_id.clone());
        record.step = UpdateStep::HandingOver;
        let v = self.records.save(record, v.revision).await?;
        if let Err(e) = self.engine.start(&r.new_id).await {
            let reason = format!("cannot start the new container: {e}");
            return self.abandon_handover(v, &r, reason).await;
        }
        tracing::info!(container = %name, successor = %r.new_id, "handing over to the new updater");
        let deadline = Instant::now() + self.cfg.health_timeout;
        loop {
            // The successor stops this container once it has taken over: this wait usually
            // ends with the process.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(now) = self.records.get(&name).await? else { return Ok(()) };
            if now.value.update_id != v.value.update_id || now.value.step != UpdateStep::HandingOver
            {
                return Ok(()); // taken over (or concluded)
            }
            if Instant::now() >= deadline {
                let reason = format!(
                    "the new updater did not take over within {:?}",
                    self.cfg.health_timeout
                );
                return self.abandon_handover(now, &r, reason).await;
            }
        }
    }

    /// Removes a successor that did not take over and reports the rollback, unless it took
    /// over meanwhile (the claim decides).
    async fn abandon_handover(
        &self,
        v: Versioned<UpdateRecord>,
        r: &Replacement,
        reason: String,
    ) -> Result<(), FlowError> {
        let mut record = v.value;
        record.step = UpdateStep::Gating;
        let v = match self.records.save(record, v.revision).await {
            Ok(v) => v,
            Err(BusError::Conflict { .. }) => return Ok(()), // the successor took over
            Err(e) => return Err(e.into()),
        };
        let log_tail = self.engine.logs_tail(&r.new_id, LOG_LINES).await.unwrap_or_default();
        self.engine.remove(&r.new_id, false).await?;
        self.rolled_back(v, reason, log_tail).await
    }

    /// At start: a handover this process is part of. The successor takes over and concludes;
    /// a restarted predecessor (or another updater, when the successor is not running)
    /// abandons it.
    pub(crate) async fn resume_handover(
        &self,
        v: Versioned<UpdateRecord>,
    ) -> Result<(), FlowError> {
        let (Some(old_id), Some(new_id)) = (v.value.old_id.clone(), v.value.new_id.clone()) else {
            return Ok(());
        };
        let r = Replacement { name: v.value.container.clone(), old_id, new_id };
        if !self.is_own(&r.new_id) {
            let successor_runs = self.engine.is_running(&r.new_id).await? == Some(true);
            if self.is_own(&r.old_id) || !successor_runs {
                let reason = "the updater restarted during the handover".to_owned();
                return self.abandon_handover(v, &r, reason).await;
            }
            return Ok(()); // the successor's own business
        }
        let mut record = v.value;
        record.step = UpdateStep::Gating;
        let v = match self.records.save(record, v.revision).await {
            Ok(v) => v,
            Err(BusError::Conflict { .. }) => return Ok(()), // abandoned: we are being removed
            Err(e) => return Err(e.into()),
        };
        tracing::info!(container = %r.name, "taking over from the previous updater");
        if let Err(e) = self.engine.take_over(&r).await {
            // The old updater runs again; this container goes once the rollback is recorded.
            let reason = format!("the new updater could not take over: {e}");
            self.rolled_back(v, reason, vec![]).await?;
            self.engine.remove(&r.new_id, false).await?;
            return Ok(());
        }
        steward_failpoints::failpoint!("takeover:done");
        self.succeed(v, &r).await
    }
}

#[cfg(test)]
mod tests {
    use super::container_id_in;

    #[test]
    fn the_own_id_is_read_from_the_mounts_docker_gives_a_container() {
        let id = "4f2a".repeat(16);
        let mountinfo = format!(
            "612 590 0:52 / / rw,relatime - overlay overlay rw\n\
             631 590 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_id_in(&mountinfo), Some(id));
        assert_eq!(container_id_in("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
        let short = "631 590 8:1 /var/lib/docker/containers/abc/hosts /etc/hosts rw - ext4 x rw\n";
        assert_eq!(container_id_in(short), None);
    }

    /// As Podman 4.3 (rootful) gives a container its mounts, read here on 2026-12-05: the
    /// root's upper layer (another id) comes first and is not the container's.
    #[test]
    fn the_own_id_is_read_from_the_mounts_podman_gives_a_container() {
        let id = "52701aa7725382531156071a375da3f5bff2f8cde3b137a9a3e048a45df8ae7a";
        let layer = "53220d7cfe0e87dd7467037a87de8d12cdb204a6a9e04c270ae36aa51fabef4e";
        let mountinfo = format!(
            "180 72 0:48 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/GELR2GS7BN6KMH2YZM7CAZHAL7,upperdir=/var/lib/containers/storage/overlay/{layer}/diff,workdir=/var/lib/containers/storage/overlay/{layer}/work\n\
             186 180 254:0 /run/containers/storage/overlay-containers/{id}/userdata/.containerenv /run/.containerenv rw,relatime - ext4 /dev/vda rw\n\
             187 180 254:0 /run/containers/storage/overlay-containers/{id}/userdata/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n"
        );
        assert_eq!(container_id_in(&mountinfo).as_deref(), Some(id));
        // Rootless: under the user's storage.
        let rootless = format!(
            "201 180 0:40 /home/u/.local/share/containers/storage/overlay-containers/{id}/userdata/hosts /etc/hosts rw - ext4 x rw\n"
        );
        assert_eq!(container_id_in(&rootless).as_deref(), Some(id));
        // Rootless, its run root: the root field starts at the run root's own file system.
        let run_root = format!(
            "202 180 0:41 /containers/overlay-containers/{id}/userdata/hostname /etc/hostname rw - tmpfs x rw\n"
        );
        assert_eq!(container_id_in(&run_root).as_deref(), Some(id));
        // A volume or bind whose path merely names a 64-hex directory after something else.
        let other = format!("90 1 8:1 /srv/overlay/{layer} /data rw - ext4 x rw\n");
        assert_eq!(container_id_in(&other), None);
        // In a pod (or `network_mode: container:`), `hosts` and `resolv.conf` come from the
        // infra container's directory, listed before the container's own in some starts; a
        // bind whose source path names a container's directory comes first too.
        let infra = "9f".repeat(32);
        let pod = format!(
            "90 180 8:1 /srv/containers/{layer} /data rw - ext4 x rw\n\
             188 180 254:0 /run/containers/storage/overlay-containers/{infra}/userdata/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw\n\
             189 180 254:0 /run/containers/storage/overlay-containers/{infra}/userdata/hosts /etc/hosts rw - ext4 /dev/vda rw\n\
             186 180 254:0 /run/containers/storage/overlay-containers/{id}/userdata/.containerenv /run/.containerenv rw - ext4 /dev/vda rw\n\
             187 180 254:0 /run/containers/storage/overlay-containers/{id}/userdata/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
        );
        assert_eq!(container_id_in(&pod).as_deref(), Some(id));
    }
}
