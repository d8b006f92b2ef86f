//! Steward's Docker helpers.
//!
//! Invariant: only this crate talks to the Docker engine. The API version is negotiated with
//! the engine, never hard-coded: this machine's engine speaks 1.41, newer hosts 1.5x, and a
//! pinned old version is what made Watchtower crash-loop on Docker 28.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;

mod credentials;
mod deadline;
mod images;
pub mod listing;
mod ops;
mod own;
mod podman;
mod project;
pub mod recreate;
mod states;
mod streams;
mod unroot;
pub use credentials::{registry_credentials, CredentialsError, RegistryCredentials};
pub use deadline::{DEFAULT_DEADLINE, MAX_DEADLINE};
pub use images::ListedImage;
pub use ops::{ExecOutput, HealthView, ListedContainer};
pub use own::own_container_id;
pub use project::{ProjectDir, ProjectFile};
pub use recreate::Replacement;
pub use streams::{ExecSpec, ExecStream};

/// Something the engine could not do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No client could be built from `DOCKER_HOST` (or the default socket).
    #[error("cannot use Docker at {host}: {reason}")]
    Connect {
        /// `DOCKER_HOST` or the default socket.
        host: String,
        /// Why.
        reason: String,
    },
    /// An operation on a container or image failed.
    #[error("Docker at {host}: cannot {what}: {reason}")]
    Operation {
        /// Where the engine is.
        host: String,
        /// What was being done, naming the container.
        what: String,
        /// The engine's answer.
        reason: String,
    },
    /// The engine took the call but gave no answer (or no progress) within its deadline: a
    /// hung engine, not a refused or failed call.
    #[error("Docker engine at {host} did not answer {what} within {}s", after.as_secs())]
    Timeout {
        /// Where the engine is.
        host: String,
        /// The call that did not answer, naming its container or image (`inspect upd-x`).
        what: String,
        /// How long it was given.
        after: Duration,
    },
    /// The engine could not be reached.
    #[error("Docker engine at {host} unreachable: {reason}")]
    Unreachable {
        /// Where it was looked for.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A handle on the Docker engine. Cheap to clone.
///
/// The client is built on first use and rebuilt after failures: bollard refuses to build one
/// while the socket file is missing, and a service must stay up (reporting not-ready) while
/// the engine starts or restarts.
///
/// Every call has a deadline (see [`Engine::new`]); a call that does not answer in time is an
/// [`EngineError::Timeout`] naming it, and the handle stays usable.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: std::sync::Arc<std::sync::Mutex<Option<Docker>>>,
    host: String,
    deadline: Duration,
    /// Whether the engine is Podman, once asked ([`Engine::is_podman`]).
    podman: std::sync::Arc<std::sync::OnceLock<bool>>,
    /// The image of the container this process runs in, once known ([`Engine::own_image`]).
    own_image: std::sync::Arc<std::sync::OnceLock<Option<String>>>,
}

impl EngineError {
    /// Whether the engine did not answer in time (hung), as opposed to answering with an error.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

/// A running container as Steward sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// The image reference it was created from, e.g. `gitea/gitea:1.22`.
    pub image_ref: String,
    /// The image it runs (`sha256:` id of the image config).
    pub image_id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// What the engine knows of a local image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalImage {
    /// `repo@sha256:...`, one per registry repository it was pulled from or pushed to.
    pub repo_digests: Vec<String>,
    /// Its labels (`Config.Labels`).
    pub labels: HashMap<String, String>,
    /// When it was built (RFC 3339), as the engine reports it.
    pub created: Option<String>,
}

/// `sha256:<hex>` or bare 64-digit hex: what `docker ps` shows instead of a moved reference.
fn looks_like_image_id(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.len() >= 12
        && hex.len() <= 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && (s.starts_with("sha256:") || hex.len() == 64)
}

/// Whether the engine said the container or image asked about does not exist: 404, or
/// Podman's 500 for one removed while the call ran ("container ... does not exist in
/// database: no such container"; Docker answers 404 there too).
pub(crate) fn gone(e: &bollard::errors::Error) -> bool {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => true,
        bollard::errors::Error::DockerResponseServerError { status_code: 500, message } => {
            let message = message.to_ascii_lowercase();
            message.ends_with("no such container") || message.ends_with("no such image")
        }
        _ => false,
    }
}

/// Where the engine is looked for: `DOCKER_HOST`, else the default Unix socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Checks a `DOCKER_HOST` value's form (used to validate configuration at start).
pub fn validate_docker_host(value: &str) -> Result<(), String> {
    const SCHEMES: [&str; 5] = ["unix://", "tcp://", "http://", "https://", "npipe://"];
    match SCHEMES.iter().find(|s| value.starts_with(**s)) {
        Some(scheme) if value.len() > scheme.len() => Ok(()),
        _ => Err(format!("expected one of {} followed by an address", SCHEMES.join(", "))),
    }
}

impl Engine {
    /// A handle for `DOCKER_HOST` (or the default socket) with the default deadline
    /// ([`DEFAULT_DEADLINE`]). Does not contact the engine.
    pub fn from_env() -> Self {
        Self::new(docker_host(), DEFAULT_DEADLINE)
    }

    /// A handle for the engine at `host` (`unix:///var/run/docker.sock`, `tcp://...`) whose
    /// calls each get `deadline` to answer (rounded up to whole seconds, at least 1 s, at most
    /// [`MAX_DEADLINE`]); longer work gets more, see [`Engine::deadline`]. Does not contact
    /// the engine.
    pub fn new(host: impl Into<String>, deadline: Duration) -> Self {
        Self {
            docker: Default::default(),
            host: host.into(),
            deadline: deadline::whole(deadline).min(MAX_DEADLINE),
            podman: Default::default(),
            own_image: Default::default(),
        }
    }

    /// How long one call may go without an answer. A stop gets its grace period on top; a
    /// pull, a log read and an archive transfer get this much per chunk of progress, not for
    /// the whole transfer; an exec's output comes at its command's pace and is not bounded
    /// here (its create, start and result are).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The client, built now if needed. Its requests time out after the deadline (bollard's
    /// own timeout, up to the response head), so every call made with it has one, including
    /// those that do not go through [`Engine::within`].
    fn client(&self) -> Result<Docker, EngineError> {
        let mut slot = self.docker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let docker = Docker::connect_with_host(&self.host)
            .map_err(|e| EngineError::Connect { host: self.host.clone(), reason: e.to_string() })?
            .with_timeout(self.deadline);
        *slot = Some(docker.clone());
        Ok(docker)
    }

    /// Where this engine is.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::Unreachable { host: self.host.clone(), reason: e.to_string() }
    }

    /// Running containers whose labels satisfy `wanted`, with the reference each was created
    /// from (`Config.Image`, which stays the same when the tag later moves). Stand-ins are
    /// never listed, as in [`Engine::containers`].
    pub async fn running_containers(
        &self,
        wanted: impl Fn(&HashMap<String, String>) -> bool,
    ) -> Result<Vec<ContainerInfo>, EngineError> {
        use futures::StreamExt;
        let docker = self.client()?;
        let summaries = self
            .timed(self.list_containers(&docker, false))
            .await
            .map_err(|e| self.list_failed("list containers", e))?;
        let mut out = vec![];
        let mut to_inspect = vec![];
        for summary in summaries {
            let labels = summary.labels.unwrap_or_default();
            let Some(id) = summary.id else { continue };
            if steward_labels::stand_in(&labels) || !wanted(&labels) {
                continue;
            }
            let name = summary
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_owned());
            let image_id = summary.image_id.unwrap_or_default();
            match (name, summary.image) {
                // The list shows the reference the container was created from, unless that
                // reference now names another image: then it shows an image id, and only an
                // inspect still has the reference. Most containers need no inspect at all.
                (Some(name), Some(image_ref)) if !looks_like_image_id(&image_ref) => {
                    out.push(ContainerInfo { id, name, image_ref, image_id, labels })
                }
                _ => to_inspect.push((id, labels)),
            }
        }
        let inspected = futures::stream::iter(to_inspect)
            .map(|(id, labels)| {
                let docker = docker.clone();
                async move {
                    let inspect = match self.timed(self.inspect_container(&docker, &id)).await {
                        Ok(inspect) => inspect,
                        // A hung engine is not a container that went away.
                        Err(e @ bollard::errors::Error::RequestTimeoutError) => {
                            return Err(self.call_failed(&format!("inspect {id}"), e))
                        }
                        // Gone between list and inspect: not an error, just not running.
                        Err(_) => return Ok(None),
                    };
                    let name = inspect.name.unwrap_or_default().trim_start_matches('/').to_owned();
                    let image_ref = inspect.config.and_then(|c| c.image).unwrap_or_default();
                    let image_id = inspect.image.unwrap_or_default();
                    Ok(Some(ContainerInfo { id, name, image_ref, image_id, labels }))
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        for info in inspected {
            out.extend(info?);
        }
        Ok(out)
    }

    /// A failed listing: a timeout names the call, anything else means the engine is away.
    fn list_failed(&self, what: &str, e: bollard::errors::Error) -> EngineError {
        match e {
            e @ bollard::errors::Error::RequestTimeoutError => self.call_failed(what, e),
            e => self.unreachable(e),
        }
    }

    /// `RepoDigests` of a local image (`repo@sha256:...`, one per registry repository it was
    /// pulled from or pushed to).
    pub async fn repo_digests(&self, image_id: &str) -> Result<Vec<String>, EngineError> {
        Ok(self.local_image(image_id).await?.repo_digests)
    }

    /// A local image's repo digests, labels and build time, from one inspect.
    ///
    /// On Podman, as Docker keeps them ([`crate::podman::repo_digests`]).
    pub async fn local_image(&self, image_id: &str) -> Result<LocalImage, EngineError> {
        let image = self
            .timed(self.client()?.inspect_image(image_id))
            .await
            .map_err(|e| self.list_failed(&format!("inspect image {image_id}"), e))?;
        let mut repo_digests = image.repo_digests.unwrap_or_default();
        if self.is_podman().await.unwrap_or(false) {
            // Without the history the current names still count: a failed read costs the
            // former names only (a socket proxy not upgraded with the services refuses it).
            let names = self.names_history(image_id).await.unwrap_or_else(|e| {
                tracing::warn!(image = %image_id, error = %e, "cannot read the image's former names");
                Default::default()
            });
            repo_digests = crate::podman::repo_digests(repo_digests, &names);
        }
        Ok(LocalImage {
            repo_digests,
            labels: image.config.and_then(|c| c.labels).unwrap_or_default(),
            created: image
                .created
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        })
    }

    /// Pings the engine within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), EngineError> {
        let docker = self.client_within(timeout)?;
        self.within(timeout, docker.ping()).await.map(|_| ()).map_err(|e| match e {
            e @ bollard::errors::Error::RequestTimeoutError => {
                self.call_failed_within("ping", timeout, e)
            }
            e => self.unreachable(e),
        })
    }

    /// The engine's name for its machine (`Name` of `/info`: Docker's and Podman's hostname),
    /// `None` when it gives none.
    pub async fn name(&self) -> Result<Option<String>, EngineError> {
        let info =
            self.timed(self.client()?.info()).await.map_err(|e| self.list_failed("info", e))?;
        Ok(info.name.filter(|n| !n.trim().is_empty()))
    }

    /// The engine's version and API version, e.g. `("20.10.24", "1.41")`.
    pub async fn version(&self) -> Result<(String, String), EngineError> {
        let v = self
            .timed(self.client()?.version())
            .await
            .map_err(|e| self.list_failed("version", e))?;
        Ok((v.version.unwrap_or_default(), v.api_version.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gone_is_a_404_or_podmans_500_for_a_container_removed_meanwhile() {
        let answer =
            |status_code, message: &str| bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: message.to_owned(),
            };
        assert!(super::gone(&answer(404, "No such container: x")));
        let podman = "container 0fc3a4231b87 does not exist in database: no such container";
        assert!(super::gone(&answer(500, podman)));
        // Other refusals are failures, whatever they mention.
        let dependents = "container 0500d31f has dependent containers which must be removed \
                          before it: 2884a495: container already exists";
        assert!(!super::gone(&answer(500, dependents)));
        assert!(!super::gone(&answer(409, "no such container")));
        assert!(!super::gone(&answer(500, "no such container in the way: disk full")));
    }

    #[test]
    fn image_ids_are_told_from_references() {
        assert!(super::looks_like_image_id(&format!("sha256:{}", "ab".repeat(32))));
        assert!(super::looks_like_image_id(&"0f".repeat(32)));
        for reference in
            ["nginx", "gitea/gitea:1.22", "127.0.0.1:5000/app:1.0", "cafe", "deadbeef:1"]
        {
            assert!(!super::looks_like_image_id(reference), "{reference}");
        }
    }
}
