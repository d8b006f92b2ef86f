//! What ran before an environment's first deployment. With no deployed commit there are no
//! previous definitions to put back, but a stack started by hand (the usual way to adopt
//! one) was made by compose, which labels each container with its project directory,
//! compose files and configuration hash. The apply reads those just before its `up`
//! ([`Flow::prior_services`]); a rollback makes the containers again from the same files,
//! only while the files still give the same configuration ([`Flow::put_back_prior`]), and
//! removes what it cannot put back, saying why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use steward_events::records::{DeployRecord, PriorService};

use super::{Flow, FlowError};
use crate::compose::{Compose, CONFIG_FILES_LABEL, HASH_LABEL, SERVICE_LABEL, WORKING_DIR_LABEL};

/// What a rollback of a first deployment could put back.
#[derive(Debug, Default)]
pub struct PutBack {
    /// The services whose container is still the one started by hand (the `up` stopped before
    /// it, or was never reached): left as they are.
    pub untouched: Vec<String>,
    /// The services made again from their own compose files.
    pub back: Vec<String>,
    /// Of those, the ones stopped again, as they were.
    pub stopped: Vec<String>,
    /// Why each of the others could not be (they are removed).
    pub refused: Vec<String>,
}

impl Flow {
    /// The containers of `services` in `env`'s project that the deployer did not make (their
    /// project directory is not its checkout), one per service.
    pub(super) async fn prior_services(
        &self,
        env: &str,
        services: &[String],
    ) -> Result<Vec<PriorService>, FlowError> {
        let checkout = self.cfg.checkout_of(env);
        let containers = self.service_containers(env, services).await?;
        let mut prior: BTreeMap<String, PriorService> = BTreeMap::new();
        for c in containers {
            if let Some(mut p) = prior_of(&c.id, &c.labels, &checkout) {
                if prior.contains_key(&p.service) {
                    continue;
                }
                // A container gone meanwhile did not run.
                p.running = self.engine.is_running(&c.id).await? == Some(true);
                prior.insert(p.service.clone(), p);
            }
        }
        Ok(prior.into_values().collect())
    }

    /// Makes the record's prior services again (`up -d --no-deps` with their own files, in
    /// their own project directory), each group of files only for the services whose
    /// configuration hash those files still give. `Err`: an `up` failed (the rollback is
    /// tried again).
    pub(super) async fn put_back_prior(&self, record: &DeployRecord) -> Result<PutBack, FlowError> {
        let env = &record.change.environment;
        let now = self.service_containers(env, &record.services).await?;
        let mut out = PutBack::default();
        let mut groups: BTreeMap<(&str, &[String]), Vec<&PriorService>> = BTreeMap::new();
        for p in record.prior.iter().filter(|p| record.services.contains(&p.service)) {
            // Untouched: still the service's only container, and running as it did (compose
            // stops and renames the old one before it makes the new: a kill there leaves it
            // stopped).
            let of_service: Vec<&str> = now
                .iter()
                .filter(|c| c.labels.get(SERVICE_LABEL) == Some(&p.service))
                .map(|c| c.id.as_str())
                .collect();
            if of_service == [p.container.as_str()]
                && self.engine.is_running(&p.container).await? == Some(p.running)
            {
                out.untouched.push(p.service.clone());
                continue;
            }
            groups.entry((p.working_dir.as_str(), p.config_files.as_slice())).or_default().push(p);
        }
        for ((dir, files), services) in groups {
            let compose = Compose {
                project: self.cfg.project_of(env),
                dir: PathBuf::from(dir),
                files: files.to_vec(),
                project_directory: Some(PathBuf::from(dir)),
                timeout: self.cfg.command_timeout,
            };
            let shown = files.join(", ");
            if let Err(why) = trusted(Path::new(dir), files) {
                for p in services {
                    out.refused.push(format!("{} ({why})", p.service));
                }
                continue;
            }
            let hashes = match compose.hashes().await {
                Ok(h) => h,
                Err(e) => {
                    for p in services {
                        out.refused.push(format!("{} ({shown} cannot be read: {e})", p.service));
                    }
                    continue;
                }
            };
            let mut back = vec![];
            for p in &services {
                if hashes.get(&p.service) == Some(&p.config_hash) {
                    back.push(p.service.clone());
                } else {
                    out.refused.push(format!(
                        "{} ({shown} no longer gives the configuration it ran with)",
                        p.service
                    ));
                }
            }
            // A file that no longer starts (a port taken since, an image gone) must not hold
            // the rollback forever: refused like the others, and removed.
            match compose.up(&back).await {
                Ok(()) => {
                    // One the operator had stopped stays stopped (`up` starts what it makes).
                    let was_stopped: Vec<String> = (services.iter())
                        .filter(|p| !p.running && back.contains(&p.service))
                        .map(|p| p.service.clone())
                        .collect();
                    compose.stop(&was_stopped).await?;
                    out.stopped.extend(was_stopped);
                    out.back.extend(back);
                    steward_failpoints::failpoint!("put_back");
                }
                Err(e) => {
                    out.refused.extend(back.iter().map(|s| format!("{s} ({shown}: {e})")));
                }
            }
        }
        Ok(out)
    }
}

/// Whether the deployer may run compose on `files` in `dir`: each of them, and the directory's
/// `.env` (which compose reads for its own settings), owned by root or the deployer's user and
/// not writable by anybody else. `Err`: which one is not, and why.
fn trusted(dir: &Path, files: &[String]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is this process's effective user (no libc call needed).
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
    let env = dir.join(".env");
    let paths = files.iter().map(|f| dir.join(f)).chain(std::iter::once(env.clone()));
    for path in paths {
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if path == env && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!("{} is owned by uid {}", path.display(), meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!("{} is writable by others than its owner", path.display()));
        }
    }
    Ok(())
}

/// A container's compose labels as a [`PriorService`], unless it has none or was made from
/// the deployer's own checkout (whose files move with every deployment).
fn prior_of(
    container: &str,
    labels: &std::collections::HashMap<String, String>,
    checkout: &Path,
) -> Option<PriorService> {
    let working_dir = labels.get(WORKING_DIR_LABEL)?;
    if Path::new(working_dir).starts_with(checkout) {
        return None;
    }
    let config_files: Vec<String> = labels
        .get(CONFIG_FILES_LABEL)?
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    if config_files.is_empty() {
        return None;
    }
    Some(PriorService {
        service: labels.get(SERVICE_LABEL)?.clone(),
        container: container.to_owned(),
        working_dir: working_dir.clone(),
        config_files,
        config_hash: labels.get(HASH_LABEL)?.clone(),
        running: true,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn only_containers_compose_made_outside_the_checkout_are_prior() {
        let labels = |dir: &str, files: &str| {
            HashMap::from([
                (SERVICE_LABEL.to_owned(), "web".to_owned()),
                (HASH_LABEL.to_owned(), "abc".to_owned()),
                (WORKING_DIR_LABEL.to_owned(), dir.to_owned()),
                (CONFIG_FILES_LABEL.to_owned(), files.to_owned()),
            ])
        };
        let checkout = Path::new("/var/lib/steward/deploy/prod");
        let by_hand =
            prior_of("c1", &labels("/srv/gitea", "/srv/gitea/a.yml,/srv/gitea/b.yml"), checkout)
                .expect("a container started by hand");
        assert_eq!(by_hand.config_files, ["/srv/gitea/a.yml", "/srv/gitea/b.yml"]);
        assert_eq!((by_hand.service.as_str(), by_hand.config_hash.as_str()), ("web", "abc"));
        assert_eq!(by_hand.container, "c1");
        // The deployer's own, one without files, one compose did not label: none.
        let own = labels("/var/lib/steward/deploy/prod", "docker-compose.yml");
        assert!(prior_of("c1", &own, checkout).is_none());
        assert!(prior_of("c1", &labels("/srv/gitea", ""), checkout).is_none());
        let mut unlabelled = labels("/srv/gitea", "/srv/gitea/a.yml");
        unlabelled.remove(HASH_LABEL);
        assert!(prior_of("c1", &unlabelled, checkout).is_none());
    }

    #[test]
    fn files_anybody_may_write_are_not_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("steward-prior-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("docker-compose.yml");
        std::fs::write(&file, "services: {}\n").expect("file");
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        mode(&file, 0o644);
        let files = ["docker-compose.yml".to_owned()];
        assert_eq!(trusted(&dir, &files), Ok(()));
        mode(&file, 0o664);
        let e = trusted(&dir, &files).expect_err("group-writable");
        assert!(e.contains("writable by others"), "{e}");
        mode(&file, 0o644);
        // compose reads the directory's .env for its own settings (DOCKER_HOST): the same rule.
        std::fs::write(dir.join(".env"), "DOCKER_HOST=tcp://elsewhere:2375\n").expect(".env");
        mode(&dir.join(".env"), 0o666);
        assert!(trusted(&dir, &files).expect_err(".env").contains(".env"));
        let missing = ["gone.yml".to_owned()];
        assert!(trusted(&dir, &missing).is_err());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
