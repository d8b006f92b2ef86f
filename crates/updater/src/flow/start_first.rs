//! Start-first swaps behind HAProxy (`steward.update.strategy=start-first`): the new container
//! starts beside the old one under `<name>-steward-new`, passes the same health gate while the
//! old one still serves, HAProxy is switched to it through its runtime API
//! ([`steward_haproxy::Runtime::switch`]), and only then is the old one stopped and the new
//! one given the name ([`steward_engine::Engine::take_over`], the self-update's takeover).
//!
//! The HAProxy part is in the record ([`HaproxySwitch`]), saved before HAProxy or any
//! container is touched. A kill before `switched` is saved is rolled back like any swap
//! (HAProxy switched back to the old server first); once `switched`, the new container passed
//! its gate and serves, so the swap is finished forward. The HAProxy server names alternate
//! between `<server>` and `<server>-b`, so the backend never holds two servers of one name.

use std::net::SocketAddr;

use steward_bus::Versioned;
use steward_engine::Replacement;
use steward_events::records::{HaproxySwitch, UpdateRecord, UpdateStep};
use steward_haproxy::{Name, Runtime, SwitchBounds};
use steward_labels::HaproxyTarget;

use super::{Flow, FlowError};

impl Flow {
    /// What a start-first swap of container `name` (running as `old_id`) will switch, read
    /// from HAProxy before anything is touched; `Err` says why it cannot run (the update then
    /// fails with nothing changed).
    pub(crate) async fn plan_start_first(
        &self,
        name: &str,
        old_id: &str,
        target: &HaproxyTarget,
    ) -> Result<Result<HaproxySwitch, String>, FlowError> {
        let Some(socket) = self.cfg.haproxy_socket.clone() else {
            return Ok(Err(format!(
                "{name} is labelled start-first but {} is not set; nothing was changed",
                crate::config::ENV_HAPROXY_SOCKET
            )));
        };
        if self.engine.publishes_ports(old_id).await? {
            return Ok(Err(format!(
                "{name} is labelled start-first but publishes ports on the host, which two containers cannot share; let HAProxy reach it over a Docker network; nothing was changed"
            )));
        }
        let names = Name::new(&target.backend)
            .and_then(|b| Ok((b, Name::new(target.server.as_deref().unwrap_or(name))?)));
        let (backend, server) = match names {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("{e}; nothing was changed"))),
        };
        let slots = match Runtime::new(&socket).plan_swap(&backend, &server).await {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("{e}; nothing was changed"))),
        };
        let (old, new) = (slots.old, slots.new);
        Ok(Ok(HaproxySwitch {
            socket: socket.display().to_string(),
            backend: backend.to_string(),
            old_server: old.name.clone(),
            old_addr: format!("{}:{}", old.addr, old.port),
            new_server: new.to_string(),
            new_addr: None,
            switched: false,
        }))
    }

    /// The swap itself, from a record saved with `old_id` and its [`HaproxySwitch`].
    pub(crate) async fn swap_start_first(
        &self,
        v: Versioned<UpdateRecord>,
        image: &str,
        target: &HaproxyTarget,
        health_url: Option<&str>,
    ) -> Result<(), FlowError> {
        let name = v.value.container.clone();
        let r = match self.engine.create_successor_of(&name, image).await {
            Ok(r) => r,
            Err(e) => {
                return self.fail(v, format!("cannot create the new container: {e}"), vec![]).await
            }
        };
        let mut record = v.value;
        record.new_id = Some(r.new_id.clone());
        record.step = UpdateStep::Gating;
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("startfirst:created");
        if let Err(e) = self.engine.start(&r.new_id).await {
            return self.roll_back(v, &r, format!("cannot start the new container: {e}")).await;
        }
        steward_failpoints::failpoint!("startfirst:gate");
        if let Err(reason) = self.health_gate(&r.new_id, health_url).await {
            return self.roll_back(v, &r, reason).await;
        }
        let ip = match self.engine.address_on(&r.new_id, target.network.as_deref()).await? {
            Ok(ip) => ip,
            Err(why) => {
                let reason = format!("HAProxy cannot reach the new container: {why}");
                return self.roll_back(v, &r, reason).await;
            }
        };
        let addr = SocketAddr::new(ip, target.port);
        let mut record = v.value;
        if let Some(h) = record.haproxy.as_mut() {
            h.new_addr = Some(addr.to_string());
        }
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("startfirst:switch");
        if let Err(e) = self.switch_forward(&v.value).await {
            return self.roll_back(v, &r, format!("HAProxy was not switched: {e}")).await;
        }
        let mut record = v.value;
        if let Some(h) = record.haproxy.as_mut() {
            h.switched = true;
        }
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("startfirst:switched");
        if let Err(e) = self.engine.take_over(&r).await {
            // From `switched` on, only forward: HAProxy serves the new container, and a
            // rollback now would switch back to an address the stopped old one may have lost.
            // The handler's retry (or the sweep) finishes the takeover.
            tracing::error!(container = %r.name, error = %e, "the old container could not be stopped for the new one; the takeover is retried");
            return Err(e.into());
        }
        steward_failpoints::failpoint!("startfirst:taken");
        self.succeed(v, &r).await
    }

    /// A start-first swap interrupted after HAProxy was switched: the new container passed
    /// its gate and serves, so the takeover is finished and the update stands.
    pub(crate) async fn finish_start_first(
        &self,
        v: Versioned<UpdateRecord>,
        r: &Replacement,
    ) -> Result<(), FlowError> {
        tracing::warn!(container = %r.name, "finishing an interrupted start-first swap (HAProxy already serves the new container)");
        // Never finish a takeover by a new container that is not there to serve: forward is
        // impossible, so the old one comes back. `switched` is cleared first, so a kill
        // during this rollback resumes it as a rollback, never as a takeover.
        let new = self.engine.brief(&r.new_id).await?;
        if !new.as_ref().is_some_and(|n| n.running) {
            let state = if new.is_some() { "stopped" } else { "gone" };
            let reason = format!(
                "the new container stopped serving ({state}) after HAProxy was switched to it; the old one is brought back"
            );
            let mut record = v.value;
            if let Some(h) = record.haproxy.as_mut() {
                h.switched = false;
            }
            let v = self.records.save(record, v.revision).await?;
            return self.roll_back(v, r, reason).await;
        }
        self.engine.finish_take_over(r).await?;
        self.succeed(v, r).await
    }

    async fn switch_forward(&self, record: &UpdateRecord) -> Result<(), String> {
        let Some(h) = &record.haproxy else { return Ok(()) };
        let addr = h.new_addr.as_deref().ok_or("no address of the new container recorded")?;
        let servers = (h.old_server.as_str(), h.new_server.as_str());
        Runtime::new(&h.socket)
            .switch_recorded(&h.backend, servers, addr, self.bounds())
            .await
            .map_err(|e| e.to_string())
    }

    /// HAProxy back on the old container `old_id` (a rollback): the same switch backwards,
    /// to where the old container is now ([`Runtime::switch_back`]).
    pub(crate) async fn switch_back(&self, h: &HaproxySwitch, old_id: &str) -> Result<(), String> {
        let addr = self.old_addr_now(h, old_id).await;
        let servers = (h.new_server.as_str(), h.old_server.as_str());
        Runtime::new(&h.socket)
            .switch_back_recorded(&h.backend, servers, &h.old_addr, &addr, self.bounds())
            .await
            .map_err(|e| e.to_string())
    }

    /// The old container's address on HAProxy's network now, at the recorded port. A stopped
    /// container the rollback started again may have another address than the recorded one
    /// (Podman gives it a new one; Docker mostly the same); while none can be read (it is
    /// stopped, or its labels no longer say start-first) the recorded one stands.
    async fn old_addr_now(&self, h: &HaproxySwitch, old_id: &str) -> String {
        let Ok(recorded) = h.old_addr.parse::<SocketAddr>() else { return h.old_addr.clone() };
        let network = match self.engine.container_labels(old_id).await {
            Ok(Some(labels)) => match steward_labels::strategy(&labels) {
                Ok(steward_labels::Strategy::StartFirst(t)) => t.network,
                _ => return h.old_addr.clone(),
            },
            _ => return h.old_addr.clone(),
        };
        match self.engine.address_on(old_id, network.as_deref()).await {
            Ok(Ok(ip)) => SocketAddr::new(ip, recorded.port()).to_string(),
            _ => h.old_addr.clone(),
        }
    }

    /// Keeps each start-first container's HAProxy server at the container's address. A
    /// swapped-in server is added by address (HAProxy's dynamic servers take no resolver),
    /// so a container that comes back with another address (Podman gives a restarted one a
    /// new address; Docker may, when another took its old one) would leave HAProxy sending
    /// its traffic nowhere until a reload. Every sweep, for each running start-first
    /// container of this installation: when exactly one container (in any state) carries its
    /// server name, no update of it is in hand, and exactly one of `SERVER` and `SERVER-b` is
    /// in its backend, at another address than the container's, that server is moved there
    /// (`set server ... addr`). Anything less clear is left alone (a swap of the deployer
    /// under way holds two containers, or both servers).
    pub async fn follow_addresses(&self) -> Result<(), FlowError> {
        let Some(socket) = self.cfg.haproxy_socket.clone() else { return Ok(()) };
        // The installation's scope (`STEWARD_SCOPE`, kept with the renewal's settings).
        let scope = self.cfg.renewal.scope.clone();
        let listed = self
            .engine
            .containers(|l| {
                l.contains_key(steward_labels::HAPROXY_BACKEND)
                    && steward_labels::in_scope(l, scope.as_deref())
            })
            .await?;
        let mut by_server: std::collections::HashMap<(String, String), Vec<_>> =
            std::collections::HashMap::new();
        for c in listed.into_iter().filter(|c| !steward_engine::recreate::is_swap_name(&c.name)) {
            let Ok(steward_labels::Strategy::StartFirst(t)) = steward_labels::strategy(&c.labels)
            else {
                continue;
            };
            let server = t.server.clone().unwrap_or_else(|| c.name.clone());
            by_server.entry((t.backend.clone(), server)).or_default().push((c, t));
        }
        let runtime = Runtime::new(&socket);
        for ((backend, server), containers) in by_server {
            // One container of that name, in any state (a deployer's swap holds two, one of
            // them perhaps stopped for a moment), and running.
            let [(c, t)] = containers.as_slice() else { continue };
            if self.engine.is_running(&c.id).await? != Some(true) {
                continue;
            }
            let Some(_hold) = self.records.hold(&c.name) else { continue };
            if self.records.get(&c.name).await?.is_some_and(|v| !v.value.step.is_terminal()) {
                continue;
            }
            let (Ok(backend), Ok(server), Ok(alternate)) =
                (Name::new(&backend), Name::new(&server), Name::new(&format!("{server}-b")))
            else {
                continue;
            };
            let Ok(servers) = runtime.servers(&backend).await else { continue };
            let present: Vec<_> = servers
                .iter()
                .filter(|s| s.name == server.as_str() || s.name == alternate.as_str())
                .collect();
            let [held] = present.as_slice() else { continue };
            let Ok(ip) = self.engine.address_on(&c.id, t.network.as_deref()).await? else {
                continue;
            };
            let to = SocketAddr::new(ip, t.port);
            let Ok(from) = format!("{}:{}", held.addr, held.port).parse::<SocketAddr>() else {
                continue;
            };
            if from == to {
                continue;
            }
            let name = if held.name == server.as_str() { &server } else { &alternate };
            match runtime.move_server(&backend, name, from, to).await {
                Ok(()) => {
                    tracing::warn!(container = %c.name, %backend, server = %name, %from, %to, "HAProxy's server followed its container to a new address")
                }
                Err(e) => {
                    tracing::warn!(container = %c.name, %backend, server = %name, error = %e, "HAProxy's server could not follow its container")
                }
            }
        }
        Ok(())
    }

    fn bounds(&self) -> SwitchBounds {
        let bound = self.cfg.haproxy_switch_timeout;
        SwitchBounds { up: bound, drain: bound }
    }
}
