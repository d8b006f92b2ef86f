//! The container this process runs in, if any, as the engine names it: the updater updating
//! its own container hands over instead of stopping itself; the backup service lists a path
//! in a one-shot container of its own image when the app's image cannot.

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

impl crate::Engine {
    /// The image (its id) of the container this process runs in, when it runs in one of this
    /// engine's: Steward's own image, which has a shell, `find` and the like where an app's
    /// image (distroless, `scratch`) has not, for the helpers that work on its volumes.
    /// `None` when this process runs in no container, or in one this engine does not know
    /// (another engine's). An engine that does not answer is an error, never `None`: the
    /// callers would run the app's image instead. Asked once, then known.
    pub async fn own_image(&self) -> Result<Option<String>, crate::EngineError> {
        if let Some(known) = self.own_image.get() {
            return Ok(known.clone());
        }
        let image = match own_container_id() {
            None => None,
            Some(id) => {
                let docker = self.client()?;
                match self.timed(self.inspect_container(&docker, &id)).await {
                    Ok(c) => c.image,
                    Err(e) if crate::gone(&e) => {
                        tracing::warn!(container = %id, "this engine has no container of the id this process runs in: helpers take the app's image");
                        None
                    }
                    Err(e) => {
                        return Err(
                            self.call_failed("inspect the container this process runs in", e)
                        )
                    }
                }
            }
        };
        Ok(self.own_image.get_or_init(|| image).clone())
    }

    /// The image of a helper that works on container `like`'s files (its volumes, its
    /// project directory): Steward's own ([`Engine::own_image`]), else `like`'s own.
    pub async fn helper_image(&self, like: &str) -> Result<String, crate::EngineError> {
        if let Some(own) = self.own_image().await? {
            return Ok(own);
        }
        match self.brief(like).await? {
            Some(c) => Ok(c.image_id),
            None => {
                Err(self
                    .failed(&format!("take the image of {like} for a helper"), "no such container"))
            }
        }
    }
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
    // Podman orders these mounts differently from one start to the next. Then `hostname`,
    // then those two. Only mounts at these places count: a process on the host can see a
    // mount from a container's directory elsewhere (a bind of such a path, a mount that
    // propagated out of a container), and taking one of those made a backup service on the
    // host list a path in a one-shot of another container's image (CI, 2026-12-07).
    ["/run/.containerenv", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
        .iter()
        .find_map(|want| candidates.iter().find(|(at, _)| at == want))
        .map(|(_, id)| id.clone())
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

    /// The host's own mounts can come from a container's directory too (a bind of such a
    /// path, a mount propagated out of a container): none of them is at a container's own
    /// `hostname`, `hosts`, `resolv.conf` or `.containerenv`, and the host is in no container.
    #[test]
    fn a_hosts_mount_from_a_containers_directory_is_no_container_of_its_own() {
        let id = "4f2a".repeat(16);
        let host = format!(
            "25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
             90 25 8:1 /srv/containers/{id} /data rw - ext4 /dev/sda1 rw
             91 25 8:1 /var/lib/docker/containers/{id}/hostname /mnt/c/etc/hostname rw - ext4 /dev/sda1 rw
             92 25 0:60 / /var/lib/docker/containers/{id}/mounts/shm rw - tmpfs shm rw
"
        );
        assert_eq!(container_id_in(&host), None);
    }
}
