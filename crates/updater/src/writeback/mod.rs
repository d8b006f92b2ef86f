//! Write-back: after a successful update to a newer tag, the compose project names it too, so
//! the next `compose up -d` (the Ansible role runs one on every deploy) keeps the new version
//! instead of silently recreating the old one.
//!
//! Where: the container's compose labels give the project's directory, its compose file and
//! the service. When the service's `image:` interpolates a variable, the variable's line in the
//! project's `.env` (or the env file compose v2 records) changes; when it is literal, that line
//! of the compose file. Only the value changes ([`edit`]). How: the updater runs in a container
//! and has the Docker API, not the host's files: the directory is mounted in a helper container
//! that is created and never started, and the file is read and written through the archive API
//! with its owner and mode kept ([`steward_engine::ProjectDir`]; why this route:
//! docs/security.md).
//!
//! When: the success sets `write_back` in the record (one save with `Succeeded`); this step
//! does the write, then clears the flag and announces `update.written_back` in one save. A kill
//! in between finds the flag on the next start (or the sweep) and does it again; the edit is
//! idempotent (a file that already names the new tag is left alone). It never writes an older
//! tag over a newer one: it writes only while the container is still the one this update made,
//! and only over the exact value the old container was created from.
//!
//! Handed over (`update.written_back` with `committer: deployer`): the deployer's checkout
//! (marked by one of [`DEPLOYER_MARKS`] naming the container's compose project); the deployer
//! commits the change to the environment's branch.
//!
//! Refused (the update stands; `update.written_back` with `refused`, mailed): no single
//! compose file, an operator's git checkout (the change belongs in a commit), a service that `extends` or is not found, the variable not in the env file (the
//! shell's environment or the default names the image), a file without its owner's write
//! permission, a value that is not what the container was created from.

use steward_bus::Versioned;
use steward_definition::{edit, Change, Env, Found, Text, DEPLOYER, DEPLOYER_MARKS};
use steward_engine::{EngineError, ProjectDir, ProjectFile};
use steward_events::records::UpdateRecord;
use steward_events::{UpdateKind, UpdateWrittenBack};
use steward_imageref::ImageRef;

use crate::flow::{Flow, FlowError};

/// Compose v1 and v2: the compose files of the project, comma-separated absolute paths.
pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
/// Compose v2: the env file the project was brought up with, when one was used.
pub const ENVIRONMENT_FILE: &str = "com.docker.compose.project.environment_file";

/// Whether a success of `record` has a definition to update: an update (not a rollback) to
/// another tag.
pub fn wanted(record: &UpdateRecord) -> bool {
    let old_tag = ImageRef::parse(&record.image).ok().and_then(|i| i.tag().map(str::to_owned));
    record.kind == UpdateKind::Update
        && record.new_tag.as_deref().is_some_and(|t| Some(t) != old_tag.as_deref())
}

/// What the write-back did.
enum Outcome {
    /// Not a compose project: nothing defines the image; nothing to tell.
    NotCompose,
    /// Written (or already naming it).
    Written { file: String, key: String },
    /// Not written, and why.
    Refused(String),
    /// A checkout the deployer deploys from git: it commits the change.
    ToDeployer,
}

/// A file of the project: its path on the host, relative to the working directory.
struct Place {
    host: String,
    rel: String,
}

fn place(working_dir: &str, path: &str) -> Result<Place, String> {
    let dir = working_dir.trim_end_matches('/');
    // Compose v2 records absolute paths; v1 the `-f` argument as given, relative to the
    // working directory.
    let path = match path.strip_prefix("./").unwrap_or(path) {
        p if p.starts_with('/') => p.to_owned(),
        p => format!("{dir}/{p}"),
    };
    let rel = path
        .strip_prefix(dir)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".." || c == "." || c.is_empty()))
        .ok_or_else(|| format!("{path} is not inside the project's directory {working_dir}"))?;
    Ok(Place { rel: rel.to_owned(), host: path })
}

impl Flow {
    /// Callers box this future (`Box::pin(flow.write_back(v))`): its state (the project's
    /// files, a tar, the helper's engine calls) made the update flow's future overflow a 2 MiB
    /// thread stack (the updater's `crash` tests aborted).
    ///
    /// Writes the new tag into the project of a succeeded update whose record asks for it,
    /// then clears the flag with `update.written_back`. An engine that does not answer is an
    /// error (the sweep tries again); everything else ends the step.
    pub async fn write_back(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        steward_failpoints::failpoint!("writeback");
        let record = &v.value;
        let image = match record.new_tag.as_deref().map(|t| edit::retagged(&record.image, t)) {
            Some(Ok(image)) => image,
            Some(Err(e)) => return self.written_back(v, String::new(), Outcome::Refused(e)).await,
            None => return self.written_back(v, String::new(), Outcome::NotCompose).await,
        };
        let outcome = match self.write_back_outcome(record, &image).await {
            Ok(outcome) => outcome,
            // The engine answered with a failure (a directory that is not there, a read-only
            // file system): doing it again will not help.
            Err(e @ EngineError::Operation { .. }) => Outcome::Refused(e.to_string()),
            // Not answering or not reachable: the sweep tries again.
            Err(e) => return Err(e.into()),
        };
        self.written_back(v, image, outcome).await
    }

    async fn written_back(
        &self,
        v: Versioned<UpdateRecord>,
        image: String,
        outcome: Outcome,
    ) -> Result<(), FlowError> {
        let mut record = v.value;
        record.write_back = false;
        let data = |file, key, refused| UpdateWrittenBack {
            update_id: record.update_id,
            container: record.container.clone(),
            image: image.clone(),
            file,
            key,
            refused,
            from_image: Some(record.image.clone()),
            committer: None,
        };
        let data = match outcome {
            Outcome::NotCompose => None,
            Outcome::Written { file, key } => {
                tracing::info!(container = %record.container, %file, %key, %image, "the compose project names the new tag");
                Some(data(Some(file), Some(key), None))
            }
            Outcome::Refused(why) => {
                tracing::warn!(container = %record.container, %image, reason = %why, "the compose project still names the old tag");
                Some(data(None, None, Some(why)))
            }
            Outcome::ToDeployer => {
                tracing::info!(container = %record.container, %image, "deployed from git: the deployer commits the new tag");
                Some(UpdateWrittenBack {
                    committer: Some(DEPLOYER.to_owned()),
                    ..data(None, None, None)
                })
            }
        };
        if let Some(data) = data {
            self.records.stage(&mut record, data);
        }
        self.records.announce(record, v.revision).await?;
        Ok(())
    }

    async fn write_back_outcome(
        &self,
        record: &UpdateRecord,
        image: &str,
    ) -> Result<Outcome, EngineError> {
        let name = &record.container;
        // Only while the container is the one this update made: a later update, a rollback
        // or a `compose up` since then decided otherwise, and is not written over.
        let Some(now) = self.engine.brief(name).await? else {
            return Ok(Outcome::Refused(format!("container {name} no longer exists")));
        };
        if record.new_id.as_deref() != Some(now.id.as_str()) {
            return Ok(Outcome::Refused(format!(
                "container {name} was recreated since this update (now from {})",
                now.image_ref
            )));
        }
        let labels = &now.labels;
        let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let (Some(dir), Some(service)) =
            (label(steward_labels::compose::WORKING_DIR), label(steward_labels::compose::SERVICE))
        else {
            return Ok(Outcome::NotCompose);
        };
        let files: Vec<&str> = label(CONFIG_FILES)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let file = match files.as_slice() {
            [one] => *one,
            [] => {
                return Ok(Outcome::Refused(format!(
                    "the container does not say which compose file of {dir} defines it"
                )))
            }
            _ => {
                return Ok(Outcome::Refused(format!(
                    "the project is brought up from several compose files ({}): which one to change is ambiguous",
                    files.join(", ")
                )))
            }
        };
        let compose = match place(dir, file) {
            Ok(p) => p,
            Err(e) => return Ok(Outcome::Refused(e)),
        };
        let env = match label(ENVIRONMENT_FILE) {
            Some(env) => place(dir, env),
            None => place(dir, &format!("{}/.env", dir.trim_end_matches('/'))),
        };
        let owner = record.update_id.to_string();
        // The helper's image (and, on Podman, the owner listing's, which runs): Steward's own
        // when the updater runs in a container this engine knows, not the updated app's;
        // else the updated container's (an updater run on the host, or in a container of
        // another engine).
        let project = self.engine.open_project_dir(dir, name, &owner).await?;
        let compose_project = label(steward_labels::compose::PROJECT).unwrap_or_default();
        let result = match deployer_mark(&project, compose_project).await {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => {
                self.edit_project(&project, dir, record, image, service, &compose, env).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = project.close().await {
            tracing::warn!(error = %e, "cannot remove the write-back's helper container");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn edit_project(
        &self,
        project: &ProjectDir,
        dir: &str,
        record: &UpdateRecord,
        image: &str,
        service: &str,
        compose: &Place,
        env: Result<Place, String>,
    ) -> Result<Outcome, EngineError> {
        let refused = |why: String| Ok(Outcome::Refused(why));
        if project.exists(".git").await? {
            return refused(format!(
                "{dir} is a git checkout (deployed from git?): the new tag belongs in a commit, not in the working tree"
            ));
        }
        let Some(file) = project.read(&compose.rel).await? else {
            return refused(format!("{} does not exist", compose.host));
        };
        let Ok(text) = String::from_utf8(file.content.clone()) else {
            return refused(format!("{} is not UTF-8", compose.host));
        };
        let found = steward_definition::find(
            Text { name: &compose.host, text: &text },
            service,
            &record.image,
            image,
        );
        let var = match found {
            Ok(Found::Literal(change)) => {
                return self.replace_value(project, compose, file, &text, change).await
            }
            Ok(Found::Variable(var)) => var,
            Err(why) => return refused(why),
        };
        // Interpolated: the variable's line in the env file.
        let env = match env {
            Ok(env) => env,
            Err(e) => return refused(e),
        };
        let env_file = project.read(&env.rel).await?;
        let env_text = env_file.as_ref().map(|f| String::from_utf8(f.content.clone()));
        let not_utf8 = format!("{} is not UTF-8", env.host);
        let read = match &env_text {
            None => Env::Missing(&env.host),
            Some(Err(_)) => Env::Unusable(&not_utf8),
            Some(Ok(text)) => Env::Read(Text { name: &env.host, text }),
        };
        let change = match var.change(read) {
            Ok(change) => change,
            Err(why) => return refused(why),
        };
        match (env_file, &env_text) {
            (Some(file), Some(Ok(text))) => {
                self.replace_value(project, &env, file, text, change).await
            }
            // `change` succeeds only on a file read as text.
            _ => refused(format!("{} could not be read", env.host)),
        }
    }

    /// Writes `change` into `file` (at `at`, now `text`) when its owner may write it; leaves a
    /// file that already says it as it is; refuses anything else.
    async fn replace_value(
        &self,
        project: &ProjectDir,
        at: &Place,
        file: ProjectFile,
        text: &str,
        change: Change,
    ) -> Result<Outcome, EngineError> {
        let written = Outcome::Written { file: at.host.clone(), key: change.key.clone() };
        let content = match change.apply(text) {
            Ok(None) => return Ok(written),
            Ok(Some(content)) => content.into_bytes(),
            Err(why) => return Ok(Outcome::Refused(why)),
        };
        if file.mode & 0o200 == 0 {
            return Ok(Outcome::Refused(format!(
                "{} is not writable (mode {:o}): left as it is",
                at.host,
                file.mode & 0o7777
            )));
        }
        project.write(&at.rel, &ProjectFile { content, ..file }).await?;
        steward_failpoints::failpoint!("writeback:written");
        Ok(written)
    }
}

/// The deployer's checkout: the change belongs in a commit to the environment's branch, which
/// the deployer makes (and pushes) with its own credentials. A mark naming another project is
/// a checkout nobody here writes into.
async fn deployer_mark(project: &ProjectDir, name: &str) -> Result<Option<Outcome>, EngineError> {
    for mark in DEPLOYER_MARKS {
        if let Some(file) = project.read(mark).await? {
            let marked = String::from_utf8_lossy(&file.content).trim().to_owned();
            return Ok(Some(if marked == name {
                Outcome::ToDeployer
            } else {
                Outcome::Refused(format!(
                    "{mark} marks this directory as the deployer's checkout of project `{marked}`, not of `{name}`: the new tag belongs in a commit; left as it is"
                ))
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn project_files_resolve_inside_the_working_directory_only() {
        let p = place("/opt/gitea", "/opt/gitea/docker-compose.yml").expect("absolute (v2)");
        assert_eq!(
            (p.host.as_str(), p.rel.as_str()),
            ("/opt/gitea/docker-compose.yml", "docker-compose.yml")
        );
        let p = place("/opt/gitea/", "docker-compose.yml").expect("relative (v1)");
        assert_eq!(p.host, "/opt/gitea/docker-compose.yml");
        assert_eq!(place("/opt/gitea", "./env/.env").expect("./").rel, "env/.env");
        for outside in [
            "/opt/other/docker-compose.yml",
            "/opt/gitea-x/docker-compose.yml",
            "/opt/gitea/../etc/passwd",
            "../x.yml",
            "/opt/gitea",
            "/opt/gitea//x.yml",
        ] {
            assert!(place("/opt/gitea", outside).is_err(), "{outside}");
        }
    }
}
