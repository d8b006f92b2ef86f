//! Single operations the updater composes: pull, labels, health, logs.

use std::collections::HashMap;

use bollard::auth::DockerCredentials;
use bollard::models::HealthStatusEnum;
use bollard::query_parameters::{CreateImageOptions, LogsOptions};
use futures::StreamExt;
use steward_imageref::ImageRef;

use crate::{Engine, EngineError};

/// What the health gate needs to see of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    /// Running right now.
    pub running: bool,
    /// Restarts so far.
    pub restart_count: i64,
    /// Docker's health status when the container has a healthcheck: `starting`, `healthy`,
    /// `unhealthy`; `None` without one.
    pub health: Option<String>,
    /// Exit code, once it stopped.
    pub exit_code: Option<i64>,
}

impl Engine {
    /// Pulls `image`'s repository at `digest` and points its `tag` at it, so the container is
    /// created from its tag (and stays watchable) but gets exactly the digest that was checked.
    /// Credentials come from the operator's Docker config, as for `docker pull`.
    pub async fn pull_digest(
        &self,
        image: &ImageRef,
        digest: &str,
        tag: &str,
    ) -> Result<(), EngineError> {
        // Pulls come as progress messages: the deadline bounds each one, not the whole pull.
        let docker = self.client()?;
        // Docker's familiar form (`gitea/gitea`, `127.0.0.1:5000/app`): the same repository to
        // the engine, and the name Docker itself shows for it.
        let repository = image.familiar_name();
        let reference = format!("{repository}@{digest}");
        let registry = image.registry();
        // A login that cannot be read: pulled without, and a refusal says why.
        let (credentials, what) = match crate::registry_credentials(image) {
            Ok(c) => (c, format!("pull {reference}")),
            Err(e) => (None, format!("pull {reference} without credentials ({e})")),
        };
        let credentials = credentials.map(|c| match c {
            crate::RegistryCredentials::Basic(username, password) => DockerCredentials {
                username: Some(username),
                password: Some(password),
                serveraddress: Some(registry.to_owned()),
                ..Default::default()
            },
            crate::RegistryCredentials::IdentityToken(token) => DockerCredentials {
                identitytoken: Some(token),
                serveraddress: Some(registry.to_owned()),
                ..Default::default()
            },
        });
        let options =
            CreateImageOptions { from_image: Some(reference.clone()), ..Default::default() };
        let mut progress = crate::deadline::idle_bounded(
            docker.create_image(Some(options), None, credentials),
            self.deadline,
        );
        while let Some(step) = progress.next().await {
            let step = step.map_err(|e| self.call_failed(&what, e))?;
            if let Some(error) = step.error_detail.and_then(|d| d.message) {
                return Err(self.failed(&what, error));
            }
        }
        self.tag_checked(&reference, &repository, tag).await
    }

    /// A container's labels, or `None` if there is no such container.
    pub async fn container_labels(
        &self,
        name: &str,
    ) -> Result<Option<HashMap<String, String>>, EngineError> {
        match self.timed(self.inspect_container(&self.client()?, name)).await {
            Ok(c) => Ok(Some(c.config.and_then(|c| c.labels).unwrap_or_default())),
            Err(e) if crate::gone(&e) => Ok(None),
            Err(e) => Err(self.call_failed(&format!("inspect {name}"), e)),
        }
    }

    /// Where a proxy reaches container `id` on Docker network `network` (its only network
    /// when `None`): its address there, or why there is none. `Ok(Err(..))` is the
    /// container's configuration, not the engine's failure.
    pub async fn address_on(
        &self,
        id: &str,
        network: Option<&str>,
    ) -> Result<Result<std::net::IpAddr, String>, EngineError> {
        let c = match self.timed(self.inspect_container(&self.client()?, id)).await {
            Ok(c) => c,
            Err(e) if crate::gone(&e) => return Ok(Err(format!("no container {id}"))),
            Err(e) => return Err(self.call_failed(&format!("inspect {id}"), e)),
        };
        let networks = c.network_settings.and_then(|n| n.networks).unwrap_or_default();
        let endpoint = match network {
            Some(n) => networks.get(n),
            None if networks.len() == 1 => networks.values().next(),
            None => {
                return Ok(Err(format!(
                    "it is on {} networks; name one with steward.haproxy.network",
                    networks.len()
                )))
            }
        };
        let ip = endpoint.and_then(|e| e.ip_address.clone()).filter(|ip| !ip.is_empty());
        Ok(match ip.map(|ip| ip.parse()) {
            Some(Ok(ip)) => Ok(ip),
            Some(Err(_)) | None => {
                Err(format!("it has no address on network {}", network.unwrap_or("(its only one)")))
            }
        })
    }

    /// Whether container `id` publishes ports on the host (two of it cannot run at once).
    pub async fn publishes_ports(&self, id: &str) -> Result<bool, EngineError> {
        let c = self
            .timed(self.inspect_container(&self.client()?, id))
            .await
            .map_err(|e| self.call_failed(&format!("inspect {id}"), e))?;
        let bindings = c.host_config.and_then(|h| h.port_bindings).unwrap_or_default();
        Ok(bindings.values().any(|b| b.as_ref().is_some_and(|b| !b.is_empty())))
    }

    /// The id of the container called `name`, if there is one.
    pub async fn container_id(&self, name: &str) -> Result<Option<String>, EngineError> {
        match self.timed(self.inspect_container(&self.client()?, name)).await {
            Ok(c) => Ok(c.id),
            Err(e) if crate::gone(&e) => Ok(None),
            Err(e) => Err(self.call_failed(&format!("inspect {name}"), e)),
        }
    }

    /// Containers whose labels satisfy `wanted`, stopped ones included: id, name, labels,
    /// network mode. Stand-ins (compose one-offs, Steward's helpers) are never listed: they
    /// carry their image's or their service's labels without being the service
    /// (`steward_labels::stand_in`).
    pub async fn containers(
        &self,
        wanted: impl Fn(&HashMap<String, String>) -> bool,
    ) -> Result<Vec<ListedContainer>, EngineError> {
        self.containers_and_stand_ins(|l| !steward_labels::stand_in(l) && wanted(l)).await
    }

    /// [`Engine::containers`] with stand-ins too: for a helper's owner sweeping its leftovers.
    pub(crate) async fn containers_and_stand_ins(
        &self,
        wanted: impl Fn(&HashMap<String, String>) -> bool,
    ) -> Result<Vec<ListedContainer>, EngineError> {
        let summaries = self
            .timed(self.list_containers(&self.client()?, true))
            .await
            .map_err(|e| self.list_failed("list containers", e))?;
        Ok(summaries
            .into_iter()
            .filter_map(|s| {
                let labels = s.labels.unwrap_or_default();
                if !wanted(&labels) {
                    return None;
                }
                let name = s.names?.first()?.trim_start_matches('/').to_owned();
                let network_mode = s.host_config.and_then(|h| h.network_mode);
                Some(ListedContainer { id: s.id?, name, labels, network_mode })
            })
            .collect())
    }

    /// Running state, restart count and health status.
    /// On Podman without a healthcheck runner, runs a check that is due first
    /// ([`crate::podman`]).
    pub async fn health_view(&self, id: &str) -> Result<HealthView, EngineError> {
        let inspect = || async {
            self.timed(self.inspect_container(&self.client()?, id))
                .await
                .map_err(|e| self.call_failed(&format!("inspect {id}"), e))
        };
        let mut c = inspect().await?;
        if crate::podman::check_due(&c, time::OffsetDateTime::now_utc()) && self.is_podman().await?
        {
            self.run_podman_healthcheck(id, crate::podman::check_timeout(&c)).await?;
            c = inspect().await?;
        }
        let state = c.state.unwrap_or_default();
        let health = state.health.and_then(|h| h.status).and_then(|s| match s {
            HealthStatusEnum::STARTING => Some("starting".to_owned()),
            HealthStatusEnum::HEALTHY => Some("healthy".to_owned()),
            HealthStatusEnum::UNHEALTHY => Some("unhealthy".to_owned()),
            _ => None,
        });
        let running = state.running.unwrap_or(false);
        Ok(HealthView {
            running,
            restart_count: c.restart_count.unwrap_or(0),
            health,
            exit_code: if running { None } else { state.exit_code },
        })
    }

    /// The last `lines` lines of a container's stdout and stderr.
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream =
            crate::deadline::idle_bounded(self.client()?.logs(id, Some(options)), self.deadline);
        let mut out = vec![];
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.call_failed(&format!("read logs of {id}"), e))?;
            out.extend(chunk.to_string().lines().map(str::to_owned));
        }
        let skip = out.len().saturating_sub(lines);
        Ok(out.split_off(skip))
    }
}

/// A container as listed, running or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedContainer {
    /// Its id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// `HostConfig.NetworkMode`: a network's name, `host`, `none` or `container:<id>`.
    pub network_mode: Option<String>,
}

/// What a command run by exec left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code (read from the exec afterwards: a failing command is output, not an error).
    pub exit_code: i64,
    /// The last lines of its stdout and stderr.
    pub tail: Vec<String>,
}

impl Engine {
    /// Runs `cmd` in a running container and waits for it, keeping the last `keep` lines of
    /// output. Errors are the engine's; a non-zero exit is in the result.
    pub async fn exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        keep: usize,
    ) -> Result<ExecOutput, EngineError> {
        use bollard::exec::StartExecResults;
        let docker = self.client()?;
        let what = format!("exec in {container}");
        let config = bollard::models::ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd),
            ..Default::default()
        };
        let exec = self
            .timed(docker.create_exec(container, config))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        // The output comes at the command's pace: only the calls around it are bounded.
        if let StartExecResults::Attached { mut output, .. } = self
            .timed(docker.start_exec(&exec.id, None))
            .await
            .map_err(|e| self.call_failed(&what, e))?
        {
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(|e| self.call_failed(&what, e))?;
                for line in chunk.to_string().lines() {
                    lines.push_back(line.to_owned());
                    if lines.len() > keep {
                        lines.pop_front();
                    }
                }
            }
        }
        let inspect = self
            .timed(docker.inspect_exec(&exec.id))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        let exit_code = inspect
            .exit_code
            .ok_or_else(|| self.failed(&what, "the engine reported no exit code"))?;
        Ok(ExecOutput { exit_code, tail: lines.into() })
    }
}
