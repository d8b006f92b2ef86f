//! Replacing a container by one from another image with the same configuration, and putting
//! the old one back.
//!
//! "The same configuration" is what the operator (or compose) gave, not what the old image
//! supplied: the engine merges image defaults (ENV, CMD, ENTRYPOINT, labels, healthcheck,
//! exposed ports, volumes, user, workdir) into the container's config, so a value equal to the
//! old image's default is left out and the new image supplies its own. Everything in
//! `HostConfig` (mounts, ports, restart policy, resources, ...) is the operator's and is copied
//! whole; networks are re-joined with their aliases, minus the engine-generated short-id alias;
//! anonymous volumes are re-attached by name so their data is not left behind.
//!
//! The swap keeps downtime to a stop and a start: the new container is created (and joined to
//! its networks) while the old one still runs; then the old one is stopped and parked under
//! `<name>-steward-old`, the new one takes the name and starts. [`Engine::restore`] undoes
//! it; [`Engine::finish`] removes the parked container.

use std::collections::HashMap;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
    Mount, MountType, NetworkConnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, RenameContainerOptions, StopContainerOptions,
};

use crate::{Engine, EngineError};

/// Suffix of the parked old container while an update is judged.
pub const OLD_SUFFIX: &str = "-steward-old";
/// Suffix of the new container before it takes the name.
pub const NEW_SUFFIX: &str = "-steward-new";
/// Suffix of a failed new container while it is being removed.
pub const FAILED_SUFFIX: &str = "-steward-failed";

/// Whether `name` is one of the updater's temporary names (the old container parked during a
/// swap, the new one before it takes the name, a failed one kept for inspection): such a
/// container is part of an update in progress, not a container of its own.
pub fn is_swap_name(name: &str) -> bool {
    [OLD_SUFFIX, NEW_SUFFIX, FAILED_SUFFIX].iter().any(|s| name.ends_with(s))
}

/// Label on every container the swap creates, naming the container it replaces: a leftover
/// is recognised by it even when its name says nothing.
pub const SWAP_LABEL: &str = "steward.swap.of";

/// What a swap needs to know of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brief {
    /// Its id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Running now.
    pub running: bool,
    /// The image it runs (`sha256:` id).
    pub image_id: String,
    /// The reference it was created from (`Config.Image`, e.g. `gitea/gitea:1.22`).
    pub image_ref: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// A created successor and what swapping it in needs.
struct Successor {
    replacement: Replacement,
    was_running: bool,
    stop_timeout: Option<i32>,
}

/// A swap in progress: enough to finish it or undo it, also after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The container's name.
    pub name: String,
    /// The old container, parked under `<name>-steward-old`.
    pub old_id: String,
    /// The new container, now under `<name>`.
    pub new_id: String,
}

fn minus<T: PartialEq + Clone>(
    values: &Option<Vec<T>>,
    defaults: &Option<Vec<T>>,
) -> Option<Vec<T>> {
    let values = values.as_ref()?;
    let defaults = defaults.as_deref().unwrap_or(&[]);
    let kept: Vec<T> = values.iter().filter(|v| !defaults.contains(v)).cloned().collect();
    (!kept.is_empty()).then_some(kept)
}

/// `env` without what Podman writes into every container's inspected environment: its own
/// `HOSTNAME` (the old container's, wrong for the replacement, which gets its own again) and
/// `container=podman` (set again). Docker writes neither there; a `HOSTNAME` the operator set
/// to something else than the hostname is kept.
fn engine_written_env_removed(env: Vec<String>, hostname: &Option<String>) -> Vec<String> {
    let own = hostname.as_deref().filter(|h| !h.is_empty()).map(|h| format!("HOSTNAME={h}"));
    env.into_iter().filter(|v| v != "container=podman" && Some(v) != own.as_ref()).collect()
}

fn unless_default<T: PartialEq + Clone>(value: &Option<T>, default: &Option<T>) -> Option<T> {
    match (value, default) {
        (Some(v), Some(d)) if v == d => None,
        (v, _) => v.clone(),
    }
}

/// The operator's part of a container's config, for a container of `image`.
pub(crate) fn creation_body(
    old: &ContainerInspectResponse,
    old_image: &ContainerConfig,
    image: &str,
) -> ContainerCreateBody {
    let cfg = old.config.clone().unwrap_or_default();
    let img = old_image;
    let id = old.id.clone().unwrap_or_default();
    let labels = cfg.labels.as_ref().map(|labels| {
        let defaults = img.labels.clone().unwrap_or_default();
        labels
            .iter()
            .filter(|(k, v)| defaults.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    });
    // The engine names a container's host after its short id unless told otherwise.
    let hostname = cfg.hostname.clone().filter(|h| !h.is_empty() && !id.starts_with(h.as_str()));
    ContainerCreateBody {
        image: Some(image.to_owned()),
        hostname,
        domainname: cfg.domainname.clone().filter(|d| !d.is_empty()),
        user: unless_default(&cfg.user, &img.user).filter(|u| !u.is_empty()),
        attach_stdin: cfg.attach_stdin,
        attach_stdout: cfg.attach_stdout,
        attach_stderr: cfg.attach_stderr,
        exposed_ports: minus(&cfg.exposed_ports, &img.exposed_ports),
        tty: cfg.tty,
        open_stdin: cfg.open_stdin,
        stdin_once: cfg.stdin_once,
        env: minus(&cfg.env, &img.env)
            .map(|env| engine_written_env_removed(env, &cfg.hostname))
            .filter(|env| !env.is_empty()),
        cmd: unless_default(&cfg.cmd, &img.cmd),
        healthcheck: unless_default(&cfg.healthcheck, &img.healthcheck),
        volumes: minus(&cfg.volumes, &img.volumes),
        working_dir: unless_default(&cfg.working_dir, &img.working_dir).filter(|w| !w.is_empty()),
        entrypoint: unless_default(&cfg.entrypoint, &img.entrypoint),
        labels: labels.filter(|l| !l.is_empty()),
        stop_signal: unless_default(&cfg.stop_signal, &img.stop_signal),
        stop_timeout: cfg.stop_timeout,
        host_config: Some(host_config(old)),
        networking_config: primary_network(old).map(|(net, endpoint)| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(net, endpoint)])),
        }),
        ..Default::default()
    }
}

/// `HostConfig` as it was, plus the anonymous volumes re-attached by name.
fn host_config(old: &ContainerInspectResponse) -> HostConfig {
    let mut hc = old.host_config.clone().unwrap_or_default();
    let binds = hc.binds.clone().unwrap_or_default();
    let mut mounts = hc.mounts.clone().unwrap_or_default();
    for m in old.mounts.iter().flatten() {
        let (Some(name), Some(target)) = (&m.name, &m.destination) else { continue };
        if m.typ.as_deref() != Some("volume") {
            continue;
        }
        let declared = binds.iter().any(|b| b.split(':').next() == Some(name.as_str()))
            || mounts.iter().any(|x| {
                x.source.as_deref() == Some(name.as_str())
                    || x.target.as_deref() == Some(target.as_str())
            })
            || binds.iter().any(|b| b.split(':').nth(1) == Some(target.as_str()));
        if !declared {
            mounts.push(Mount {
                target: Some(target.clone()),
                source: Some(name.clone()),
                typ: Some(MountType::VOLUME),
                read_only: m.rw.map(|rw| !rw),
                ..Default::default()
            });
        }
    }
    hc.mounts = (!mounts.is_empty()).then_some(mounts);
    for ulimit in hc.ulimits.iter_mut().flatten() {
        if let Some(name) = ulimit.name.as_mut() {
            *name = ulimit_name(name);
        }
    }
    cpu_limit_once(&mut hc);
    hc
}

/// A CPU limit given as a number of CPUs (`--cpus`, compose's `cpus:`) is copied as that
/// alone. Podman's inspect reports it twice, as `NanoCpus` and as the period and quota it
/// becomes (100000 and 50000 for 0.5), and its own create then refuses the copy ("NanoCpus
/// conflicts with CpuPeriod and CpuQuota"): every update of a service with a CPU limit failed
/// there. Docker refuses both at once too, so its inspect never has both: unchanged there. A
/// period and quota given without `--cpus` stay where the engine reports them so (Docker);
/// Podman reports a quota over its default period of 100000 as `NanoCpus` too, and it is
/// copied as that: the same limit.
fn cpu_limit_once(hc: &mut HostConfig) {
    if hc.nano_cpus.is_some_and(|n| n > 0) {
        hc.cpu_period = None;
        hc.cpu_quota = None;
    }
}

/// A ulimit's name as a create accepts it (`nofile`). Podman's inspect reports the kernel's
/// name (`RLIMIT_NOFILE`), which its own create then rejects ("invalid ulimit type"); Docker
/// reports and accepts `nofile`, unchanged here.
fn ulimit_name(name: &str) -> String {
    match name.strip_prefix("RLIMIT_") {
        Some(short) => short.to_ascii_lowercase(),
        None => name.to_owned(),
    }
}

/// Endpoint settings the operator chose on a network: aliases (minus the short id the engine
/// adds), static addresses, links, driver options. Never the MAC address: copying it makes
/// duplicates.
fn endpoint(
    old: &ContainerInspectResponse,
    network: &str,
    settings: &EndpointSettings,
) -> EndpointSettings {
    let id = old.id.clone().unwrap_or_default();
    // The default bridge network takes no aliases.
    let aliases = if network == "bridge" {
        None
    } else {
        settings
            .aliases
            .as_ref()
            .map(|a| a.iter().filter(|a| !id.starts_with(a.as_str())).cloned().collect::<Vec<_>>())
            .filter(|a| !a.is_empty())
    };
    EndpointSettings {
        aliases,
        ipam_config: settings.ipam_config.clone(),
        links: settings.links.clone(),
        driver_opts: settings.driver_opts.clone(),
        ..Default::default()
    }
}

/// The network the container is created on (its `NetworkMode`), with its endpoint.
fn primary_network(old: &ContainerInspectResponse) -> Option<(String, EndpointSettings)> {
    let mode = old.host_config.as_ref()?.network_mode.clone()?;
    let networks = old.network_settings.as_ref()?.networks.as_ref()?;
    // Docker's mode names the network (`default` is `bridge`). Podman reports `bridge` for
    // every container on its bridge networks and lists them by name: its default `podman`
    // when joined, else the first by name (created on it, the rest joined after, as on
    // Docker; before, a new container went to the default network and to these: one more).
    let name = match mode.as_str() {
        "default" | "bridge" if !networks.contains_key("bridge") => {
            if networks.contains_key(PODMAN_DEFAULT_NETWORK) {
                PODMAN_DEFAULT_NETWORK.to_owned()
            } else {
                networks.keys().min()?.clone()
            }
        }
        "default" => "bridge".to_owned(),
        _ => mode,
    };
    networks.get(&name).map(|s| (name.clone(), endpoint(old, &name, s)))
}

/// Podman's default network, which it lists for a container in network mode `bridge`.
const PODMAN_DEFAULT_NETWORK: &str = "podman";

/// The other networks, joined after create (API 1.41 accepts one network at create). None
/// for a container in another's network namespace (`container:X`), the host's, or none:
/// it joins no network itself. (Docker lists no network for such a container; Podman lists
/// the namespace owner's, and connecting to it is refused: "invalid network mode".)
fn other_networks(old: &ContainerInspectResponse) -> Vec<(String, EndpointSettings)> {
    let mode = old.host_config.as_ref().and_then(|h| h.network_mode.as_deref());
    if mode.is_some_and(|m| m.starts_with("container:") || m == "host" || m == "none") {
        return vec![];
    }
    let primary = primary_network(old).map(|(n, _)| n);
    let Some(networks) = old.network_settings.as_ref().and_then(|n| n.networks.as_ref()) else {
        return vec![];
    };
    let mut others: Vec<_> = networks
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != primary.as_deref())
        .map(|(n, s)| (n.clone(), endpoint(old, n, s)))
        .collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    others
}

impl Engine {
    pub(crate) fn failed(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Operation {
            host: self.host.clone(),
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Replaces container `name` by one created from `image` with the same configuration.
    /// On return the new container runs under `name` and the old one is parked, stopped.
    /// If the new container cannot be created or started, the old one is running again under
    /// its name before this returns the error.
    pub async fn replace(&self, name: &str, image: &str) -> Result<Replacement, EngineError> {
        self.replace_with(name, image, |_| {}).await
    }

    /// [`Engine::replace`] with a change to the new container's configuration.
    async fn replace_with(
        &self,
        name: &str,
        image: &str,
        adjust: impl FnOnce(&mut ContainerCreateBody),
    ) -> Result<Replacement, EngineError> {
        let s = self.create_successor(name, image, adjust).await?;
        steward_failpoints::failpoint!("swap:created");
        if s.was_running {
            self.stop_old(&s).await?;
            steward_failpoints::failpoint!("swap:stopped");
        }
        let swapped = async {
            self.rename(&s.replacement.old_id, &format!("{name}{OLD_SUFFIX}")).await?;
            steward_failpoints::failpoint!("swap:parked");
            self.rename(&s.replacement.new_id, name).await?;
            steward_failpoints::failpoint!("swap:named");
            if !s.was_running {
                return Ok(());
            }
            self.timed(self.client()?.start_container(&s.replacement.new_id, None))
                .await
                .map_err(|e| self.call_failed(&format!("start new {name}"), e))
        }
        .await;
        if let Err(e) = swapped {
            if let Err(undo) = self.restore(&s.replacement).await {
                tracing_free_log(&format!(
                    "restoring {name} after a failed swap also failed: {undo}"
                ));
            }
            return Err(e);
        }
        Ok(s.replacement)
    }

    /// Creates (not starts) the successor of container `name` from `image` under
    /// `<name>-steward-new`, joined to the old one's networks; the old one is untouched.
    async fn create_successor(
        &self,
        name: &str,
        image: &str,
        adjust: impl FnOnce(&mut ContainerCreateBody),
    ) -> Result<Successor, EngineError> {
        let docker = self.client()?;
        let old = self
            .timed(self.inspect_container(&docker, name))
            .await
            .map_err(|e| self.call_failed(&format!("inspect {name}"), e))?;
        let old_id = old.id.clone().unwrap_or_default();
        // The old image's defaults decide what is the operator's: an image that is gone
        // (pruned) has none, but one the engine did not describe in time stops the swap
        // (without its defaults every one of them would be copied as the operator's).
        let old_image = match &old.image {
            Some(id) => match self.timed(docker.inspect_image(id)).await {
                Ok(i) => i.config.map(image_config_as_container),
                Err(e) if crate::gone(&e) => None,
                Err(e) => return Err(self.call_failed(&format!("inspect image {id}"), e)),
            },
            None => None,
        }
        .unwrap_or_default();
        let mut body = creation_body(&old, &old_image, image);
        body.labels.get_or_insert_with(HashMap::new).insert(SWAP_LABEL.to_owned(), name.to_owned());
        adjust(&mut body);
        let was_running = old.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let new_name = format!("{name}{NEW_SUFFIX}");
        // Leftovers of interrupted attempts are ours to remove: under the swap names they
        // would make this swap's renames fail with a name conflict.
        self.remove_leftovers(name, &[&old_id]).await?;
        let options = CreateContainerOptions { name: Some(new_name.clone()), ..Default::default() };
        let created = self
            .timed(docker.create_container(Some(options), body))
            .await
            .map_err(|e| self.call_failed(&format!("create {new_name} from {image}"), e))?;
        let new_id = created.id;
        for (network, endpoint) in other_networks(&old) {
            let request = NetworkConnectRequest {
                container: new_id.clone(),
                endpoint_config: Some(endpoint),
            };
            if let Err(e) = self.timed(docker.connect_network(&network, request)).await {
                let _ = self.remove(&new_id, false).await;
                return Err(self.call_failed(&format!("connect {new_name} to {network}"), e));
            }
        }
        let stop_timeout = old.config.as_ref().and_then(|c| c.stop_timeout).map(|t| t as i32);
        Ok(Successor {
            replacement: Replacement { name: name.to_owned(), old_id, new_id },
            was_running,
            stop_timeout,
        })
    }

    async fn stop_old(&self, s: &Successor) -> Result<(), EngineError> {
        let limit = self.stop_limit(s.stop_timeout.map(i64::from));
        let options = StopContainerOptions { t: s.stop_timeout, ..Default::default() };
        match self
            .within(
                limit,
                self.client_within(limit)?.stop_container(&s.replacement.old_id, Some(options)),
            )
            .await
        {
            // Already stopped (a repeat after a crash): fine.
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {
                Ok(())
            }
            Err(e) => {
                Err(self.call_failed_within(&format!("stop {}", s.replacement.name), limit, e))
            }
        }
    }

    /// The first half of a handover (a container replaced by its own successor, such as the
    /// updater replacing itself): the successor is created, not started, under
    /// `<name>-steward-new`, joined to the old one's networks; the old one keeps running. Start
    /// it with [`Engine::start`]; from inside, it completes with [`Engine::take_over`].
    pub async fn create_successor_of(
        &self,
        name: &str,
        image: &str,
    ) -> Result<Replacement, EngineError> {
        Ok(self.create_successor(name, image, |_| {}).await?.replacement)
    }

    /// The second half of a handover, run by the successor: the old container is stopped and
    /// parked under `<name>-steward-old`, the successor takes the name. On failure the old one
    /// runs again under its name before this returns the error; the successor, still under
    /// its temporary name, is the caller's to remove (it may be the caller itself).
    pub async fn take_over(&self, r: &Replacement) -> Result<(), EngineError> {
        let old = self
            .timed(self.inspect_container(&self.client()?, &r.old_id))
            .await
            .map_err(|e| self.call_failed(&format!("inspect old {}", r.name), e))?;
        let stop_timeout = old.config.as_ref().and_then(|c| c.stop_timeout).map(|t| t as i32);
        let s = Successor { replacement: r.clone(), was_running: true, stop_timeout };
        let done = async {
            self.stop_old(&s).await?;
            self.rename(&r.old_id, &format!("{}{OLD_SUFFIX}", r.name)).await?;
            self.rename(&r.new_id, &r.name).await
        }
        .await;
        if let Err(e) = done {
            if let Err(undo) = self.bring_back_old(r).await {
                tracing_free_log(&format!(
                    "restarting the old {} after a failed handover also failed: {undo}",
                    r.name
                ));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Completes a takeover that a crash cut short, from wherever it stopped: the old
    /// container stopped and parked under `<name>-steward-old` (if it still exists), the
    /// successor under the name. Safe to repeat.
    pub async fn finish_take_over(&self, r: &Replacement) -> Result<(), EngineError> {
        if let Some(old) = self.brief(&r.old_id).await? {
            if old.running {
                self.stop(&old.id, 10).await?;
            }
            if old.name == r.name {
                self.rename(&old.id, &format!("{}{OLD_SUFFIX}", r.name)).await?;
            }
        }
        if let Some(new) = self.brief(&r.new_id).await? {
            if new.name != r.name {
                self.rename(&new.id, &r.name).await?;
            }
        }
        Ok(())
    }

    /// Undoes a replacement: the new container is removed and the old one runs again under
    /// its name. Safe to repeat after a crash at any point: the new container is found by id
    /// or by its temporary name and removed, so a repeat finds what is left; leftovers of
    /// earlier attempts under the swap names go with it. Where the engine refuses to remove
    /// it while containers share its network namespace (Podman), it is set aside (renamed
    /// `-steward-failed` if it holds the name) until they have joined the old one.
    pub async fn restore(&self, r: &Replacement) -> Result<(), EngineError> {
        let Some(old) = self.brief(&r.old_id).await? else {
            return Err(self.failed(&format!("inspect old {}", r.name), "no such container"));
        };
        let mut doomed: Vec<String> = vec![];
        let candidates = [
            r.new_id.clone(),
            r.name.clone(),
            format!("{}{NEW_SUFFIX}", r.name),
            format!("{}{FAILED_SUFFIX}", r.name),
        ];
        for candidate in candidates {
            let Some(found) = self.brief(&candidate).await? else { continue };
            // The name itself is doomed only when the new container (or a leftover of ours)
            // holds it; a container someone else created under the name is not ours.
            let ours = found.id == r.new_id
                || r.new_id.starts_with(&found.id)
                || candidate != r.name
                || found.labels.get(SWAP_LABEL) == Some(&r.name);
            if !found.id.is_empty() && found.id != old.id && ours && !doomed.contains(&found.id) {
                doomed.push(found.id);
            }
        }
        // Containers in a doomed one's network namespace (joined during the update): Podman
        // refuses to remove a container others share the namespace of ("has dependent
        // containers"), Docker removes it and they lose their network. There the doomed one
        // is set aside, its dependents join the old one once it runs again, and then it goes.
        let mut set_aside = vec![];
        for id in &doomed {
            // A graceful stop first: the failed container may be writing to shared volumes.
            // Its own stop timeout is not known here: the engine's default grace applies.
            let _ = self.stop(id, 10).await;
            if let Err(e) = self.remove(id, false).await {
                // The removal's own error is the one to tell when the look fails too.
                if self.network_dependents(&[id.as_str()]).await.unwrap_or_default().is_empty() {
                    return Err(e);
                }
                set_aside.push(id.clone());
                continue;
            }
            steward_failpoints::failpoint!("restore:removed");
        }
        // Only the one holding the name must make way (two under the failed name cannot be).
        for id in &set_aside {
            if self.brief(id).await?.is_some_and(|b| b.name == r.name) {
                self.rename(id, &format!("{}{FAILED_SUFFIX}", r.name)).await?;
            }
        }
        self.bring_back_old(r).await?;
        for id in &set_aside {
            for dependent in self.network_dependents(&[id.as_str()]).await? {
                // Boxed: a rejoin is a replacement, whose own undo is a restore.
                Box::pin(self.rejoin(&dependent, &r.old_id)).await?;
            }
            self.remove(id, false).await?;
            steward_failpoints::failpoint!("restore:removed");
        }
        Ok(())
    }

    /// A container's id, name, state and labels by id or name; `None` if there is none.
    pub async fn brief(&self, id_or_name: &str) -> Result<Option<Brief>, EngineError> {
        match self.timed(self.inspect_container(&self.client()?, id_or_name)).await {
            Ok(c) => Ok(Some(Brief {
                id: c.id.unwrap_or_default(),
                name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
                running: c.state.and_then(|s| s.running).unwrap_or(false),
                image_id: c.image.unwrap_or_default(),
                image_ref: c.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default(),
                labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
            })),
            Err(e) if crate::gone(&e) => Ok(None),
            Err(e) => Err(self.call_failed(&format!("inspect {id_or_name}"), e)),
        }
    }

    /// The registry digests (`sha256:...`) of the image container `name` runs, from its repo
    /// digests (empty for an image never pulled or pushed); `None` if there is no such
    /// container.
    pub async fn running_digests(&self, name: &str) -> Result<Option<Vec<String>>, EngineError> {
        let Some(c) = self.brief(name).await? else { return Ok(None) };
        let digests = self.repo_digests(&c.image_id).await?;
        Ok(Some(
            digests
                .iter()
                .filter_map(|rd| {
                    steward_imageref::ImageRef::parse(rd).ok()?.digest().map(str::to_owned)
                })
                .collect(),
        ))
    }

    /// Removes what interrupted swaps of container `name` left under the swap names (or
    /// carrying the swap label for `name` under another name), except `keep`. Returns the
    /// names removed.
    pub async fn remove_leftovers(
        &self,
        name: &str,
        keep: &[&str],
    ) -> Result<Vec<String>, EngineError> {
        let mut removed = vec![];
        let leftover = |c: &crate::ops::ListedContainer| {
            let named = [OLD_SUFFIX, NEW_SUFFIX, FAILED_SUFFIX]
                .iter()
                .any(|s| c.name.strip_suffix(s) == Some(name));
            let labelled =
                c.labels.get(SWAP_LABEL).map(String::as_str) == Some(name) && c.name != name;
            named || labelled
        };
        // Swap leftovers by name or label, whatever else they carry.
        for c in self.containers_and_stand_ins(|_| true).await? {
            let kept = keep.iter().any(|k| *k == c.id || c.id.starts_with(*k) || *k == c.name);
            if leftover(&c) && !kept {
                self.remove(&c.id, false).await?;
                removed.push(c.name);
            }
        }
        Ok(removed)
    }

    /// The old container under its name again, running.
    async fn bring_back_old(&self, r: &Replacement) -> Result<(), EngineError> {
        let Some(old) = self.brief(&r.old_id).await? else {
            return Err(self.failed(&format!("inspect old {}", r.name), "no such container"));
        };
        if old.name != r.name {
            self.rename(&r.old_id, &r.name).await?;
            steward_failpoints::failpoint!("restore:renamed");
        }
        if !old.running {
            self.timed(self.client()?.start_container(&r.old_id, None))
                .await
                .map_err(|e| self.call_failed(&format!("start old {}", r.name), e))?;
        }
        Ok(())
    }

    /// Completes a replacement: removes the parked old container (its image and volumes stay).
    pub async fn finish(&self, r: &Replacement) -> Result<(), EngineError> {
        // Removing a container that is gone is fine; one the engine did not answer for is not.
        self.remove(&r.old_id, false).await
    }

    /// Names of the containers (running or not) in the network namespace of a container
    /// known by any of `ids_or_names` (`network_mode: container:X`, compose's `service:X`;
    /// the engine stores the id even when given a name).
    pub async fn network_dependents(
        &self,
        ids_or_names: &[&str],
    ) -> Result<Vec<String>, EngineError> {
        let mut out = vec![];
        for c in self.containers_with_network_modes().await? {
            let mode = c.network_mode.unwrap_or_default();
            let Some(target) = mode.strip_prefix("container:") else { continue };
            let refers = |x: &&str| *x == target || (target.len() >= 12 && x.starts_with(target));
            if !is_swap_name(&c.name) && ids_or_names.iter().any(refers) {
                out.push(c.name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every container with its network mode. Docker's list gives the mode; Podman's has no
    /// `HostConfig` at all, so there each container is inspected (one call each; a container
    /// gone meanwhile is left out).
    async fn containers_with_network_modes(
        &self,
    ) -> Result<Vec<crate::ops::ListedContainer>, EngineError> {
        // With stand-ins: a one-off in the namespace (`compose run` of a service with
        // `network_mode: service:X`) depends on it like a service does.
        let mut all = self.containers_and_stand_ins(|_| true).await?;
        for c in &mut all {
            if c.network_mode.is_some() {
                continue;
            }
            match self.timed(self.inspect_container(&self.client()?, &c.id)).await {
                Ok(inspected) => {
                    c.network_mode = inspected.host_config.and_then(|h| h.network_mode);
                }
                Err(e) if crate::gone(&e) => c.id.clear(),
                Err(e) => return Err(self.call_failed(&format!("inspect {}", c.name), e)),
            }
        }
        all.retain(|c| !c.id.is_empty());
        Ok(all)
    }

    /// Dependents of a container known by any of `ids_or_names` whose rejoin was cut short
    /// (the process died between stopping the old dependent and removing it): each gets one
    /// container under its name again. If the name is taken, the leftovers under temporary
    /// names go; otherwise the parked old one (the known-good configuration) takes the name
    /// back, or else the new one. Returns the names given back; those containers are stopped,
    /// as the swap left them. Safe to repeat.
    pub async fn repair_rejoins(&self, ids_or_names: &[&str]) -> Result<Vec<String>, EngineError> {
        let all = self.containers_with_network_modes().await?;
        let refers = |c: &crate::ops::ListedContainer| {
            let mode = c.network_mode.as_deref().unwrap_or_default();
            mode.strip_prefix("container:").is_some_and(|target| {
                ids_or_names
                    .iter()
                    .any(|x| *x == target || (target.len() >= 12 && x.starts_with(target)))
            })
        };
        let mut bases: Vec<&str> = all
            .iter()
            .filter(|c| is_swap_name(&c.name) && refers(c))
            .filter_map(|c| {
                [OLD_SUFFIX, NEW_SUFFIX, FAILED_SUFFIX]
                    .iter()
                    .find_map(|suffix| c.name.strip_suffix(suffix))
            })
            .collect();
        bases.sort_unstable();
        bases.dedup();
        let mut given_back = vec![];
        for base in bases {
            let named = |suffix: &str| {
                let wanted = format!("{base}{suffix}");
                all.iter().find(|c| c.name == wanted).map(|c| c.id.clone())
            };
            let keep = if all.iter().any(|c| c.name == base) {
                None
            } else {
                named(OLD_SUFFIX).or_else(|| named(NEW_SUFFIX))
            };
            if let Some(id) = &keep {
                self.rename(id, base).await?;
                given_back.push(base.to_owned());
            }
            for suffix in [OLD_SUFFIX, NEW_SUFFIX, FAILED_SUFFIX] {
                if let Some(id) = named(suffix).filter(|id| Some(id) != keep.as_ref()) {
                    self.remove(&id, false).await?;
                }
            }
        }
        Ok(given_back)
    }

    /// Recreates `dependent` (its own image and configuration) in the network namespace of
    /// container `target` (an id or a name), running again if it ran. The old one is removed
    /// once the new one has its name; on failure the old one is back.
    pub async fn rejoin(&self, dependent: &str, target: &str) -> Result<(), EngineError> {
        let Some(image) = self.brief(dependent).await?.map(|b| b.image_id) else {
            return Err(self.failed(&format!("inspect {dependent}"), "no such container"));
        };
        let mode = format!("container:{target}");
        let r = self
            .replace_with(dependent, &image, |body| {
                // A shared namespace brings its own host name; setting one is refused.
                body.hostname = None;
                body.domainname = None;
                body.networking_config = None;
                if let Some(hc) = body.host_config.as_mut() {
                    hc.network_mode = Some(mode);
                }
            })
            .await?;
        self.finish(&r).await
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), EngineError> {
        let options = RenameContainerOptions { name: name.to_owned() };
        self.timed(self.client()?.rename_container(id, options))
            .await
            .map_err(|e| self.call_failed(&format!("rename {id} to {name}"), e))
    }
}

/// The engine crate has no logger; failures inside an error path go to stderr once.
pub(crate) fn tracing_free_log(message: &str) {
    eprintln!("steward-engine: {message}");
}

/// An image's config in the shape of a container's, for comparing defaults.
fn image_config_as_container(c: bollard::models::ImageConfig) -> ContainerConfig {
    ContainerConfig {
        user: c.user,
        exposed_ports: c.exposed_ports,
        env: c.env,
        cmd: c.cmd,
        healthcheck: c.healthcheck,
        volumes: c.volumes,
        working_dir: c.working_dir,
        entrypoint: c.entrypoint,
        labels: c.labels,
        stop_signal: c.stop_signal,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_own_environment_is_not_carried_over_an_operators_hostname_is() {
        let env = |vars: &[&str]| vars.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
        let host = Some("c415f3038b79".to_owned());
        let podman = env(&["KEPT=yes", "HOSTNAME=c415f3038b79", "TERM=xterm", "container=podman"]);
        assert_eq!(engine_written_env_removed(podman, &host), env(&["KEPT=yes", "TERM=xterm"]));
        let chosen = env(&["HOSTNAME=gitea.internal", "KEPT=yes"]);
        assert_eq!(engine_written_env_removed(chosen.clone(), &host), chosen);
        assert_eq!(engine_written_env_removed(chosen.clone(), &None), chosen);
    }

    #[test]
    fn a_cpu_limit_is_copied_once_as_podman_reports_it_twice() {
        let podman: HostConfig = serde_json::from_value(serde_json::json!({
            "NanoCpus": 500_000_000, "CpuPeriod": 100_000, "CpuQuota": 50_000, "Memory": 1 << 28
        }))
        .expect("HostConfig JSON");
        let mut hc = podman.clone();
        cpu_limit_once(&mut hc);
        assert_eq!((hc.nano_cpus, hc.cpu_period, hc.cpu_quota), (Some(500_000_000), None, None));
        assert_eq!(hc.memory, podman.memory);
        // A period and quota of the operator's own (no `--cpus`) are kept.
        let own: HostConfig = serde_json::from_value(serde_json::json!({
            "NanoCpus": 0, "CpuPeriod": 50_000, "CpuQuota": 25_000
        }))
        .expect("HostConfig JSON");
        let mut hc = own.clone();
        cpu_limit_once(&mut hc);
        assert_eq!(hc, own);
    }

    #[test]
    fn a_container_in_another_ones_namespace_joins_no_network_of_its_own() {
        let inspected = |mode: &str| -> ContainerInspectResponse {
            serde_json::from_value(serde_json::json!({
                "HostConfig": { "NetworkMode": mode },
                // What Podman lists for a container in another's namespace: the owner's.
                "NetworkSettings": { "Networks": { "podman": { "Aliases": ["7619a26e85cc"] } } }
            }))
            .expect("inspect JSON")
        };
        for mode in ["container:7619a26e85cc0fd8", "host", "none"] {
            assert!(other_networks(&inspected(mode)).is_empty(), "{mode}");
        }
        let joined: Vec<String> =
            other_networks(&inspected("backend")).into_iter().map(|(n, _)| n).collect();
        assert_eq!(joined, ["podman"]);
    }

    #[test]
    fn podmans_default_network_is_the_primary_of_a_bridge_mode_container() {
        let inspected = |networks: serde_json::Value| -> ContainerInspectResponse {
            serde_json::from_value(serde_json::json!({
                "HostConfig": { "NetworkMode": "bridge" },
                "NetworkSettings": { "Networks": networks }
            }))
            .expect("inspect JSON")
        };
        // Podman: created on its default network, nothing to join after create.
        let podman = inspected(serde_json::json!({ "podman": {} }));
        assert_eq!(primary_network(&podman).map(|(n, _)| n).as_deref(), Some("podman"));
        assert!(other_networks(&podman).is_empty());
        // Podman, on two networks of the user's: the first by name at create, the other after.
        let podman = inspected(serde_json::json!({ "sfnet": {}, "backend": {} }));
        assert_eq!(primary_network(&podman).map(|(n, _)| n).as_deref(), Some("backend"));
        let joined: Vec<String> = other_networks(&podman).into_iter().map(|(n, _)| n).collect();
        assert_eq!(joined, ["sfnet"]);
        // Docker: `bridge` is the primary, a compose network joined after.
        let docker = inspected(serde_json::json!({ "bridge": {}, "backend": {} }));
        assert_eq!(primary_network(&docker).map(|(n, _)| n).as_deref(), Some("bridge"));
        let joined: Vec<String> = other_networks(&docker).into_iter().map(|(n, _)| n).collect();
        assert_eq!(joined, ["backend"]);
    }
}
