//! Start-first deployments behind HAProxy: a changed service labelled
//! `steward.update.strategy=start-first` in the commit is not recreated in place. Compose makes
//! its new container beside the running one ([`Compose::up_beside`]), the new one passes the
//! health gate while the old one serves, HAProxy is switched to it through its runtime API
//! ([`steward_haproxy::Runtime::switch`], the updater's switch), and the old container is
//! removed only once the whole deployment passed its gate.
//!
//! Every step is saved in the record's [`DeploySwap`] before the next begins. Until the
//! deployment is `retiring`, a kill is rolled back like any deployment: HAProxy is switched
//! back to the old container (which never stopped) and every other container of the service
//! is removed; once `retiring`, it is finished forward (the old containers removed).
//!
//! [`Compose::up_beside`]: crate::compose::Compose::up_beside

use std::net::SocketAddr;

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, DeploySwap, HaproxySwitch};
use steward_haproxy::{HaproxyError, Name, Runtime, SwitchBounds};
use steward_labels::Strategy;

use super::{Flow, FlowError};
use crate::compose::{Config, SERVICE_LABEL};

/// Seconds an old container is given to stop once HAProxy no longer sends it anything.
const RETIRE_GRACE_SECS: i32 = 10;

/// A step that failed: the record as it is now, why, and the failing container's log tail.
type Failed = (Versioned<DeployRecord>, String, Vec<String>);

/// What undoing a deployment's swaps did.
#[derive(Debug, Default)]
pub(super) struct Undone {
    /// The services whose old container serves again (the previous version's health counts
    /// them).
    pub back: Vec<String>,
    /// What could not be undone, for the rollback's reason.
    pub notes: Vec<String>,
}

impl Flow {
    /// The changed `services` to deploy start-first, from the commit's configuration (a
    /// service the commit adds has nothing to keep serving: it is simply made). `Err`: why the
    /// deployment cannot run; nothing was touched.
    pub(super) fn swaps_of(
        &self,
        config: &Config,
        services: &[String],
        new_services: &[String],
    ) -> Result<Vec<DeploySwap>, String> {
        let labels = config.labels();
        let mut swaps = vec![];
        for service in services.iter().filter(|s| !new_services.contains(s)) {
            let Some(labels) = labels.get(service) else { continue };
            let target = match steward_labels::strategy(labels) {
                Ok(Strategy::StartFirst(t)) => t,
                Ok(_) => continue,
                Err(e) => return Err(format!("{service}: {e}; nothing was changed")),
            };
            let refuse = |why: &str| {
                Err(format!("{service} is labelled start-first but {why}; nothing was changed"))
            };
            if self.cfg.haproxy_socket.is_none() {
                return refuse(&format!("{} is not set", crate::config::ENV_HAPROXY_SOCKET));
            }
            let Some(server) = target.server else {
                // The updater's default (the container's name) does not hold here.
                return refuse(
                    "has no steward.haproxy.server: compose numbers a deployed service's \
                     containers, so their names change from one deployment to the next",
                );
            };
            if config.sets(service, "ports") {
                return refuse(
                    "publishes ports on the host, which two containers cannot share; let \
                     HAProxy reach it over a network",
                );
            }
            if config.sets(service, "container_name") {
                return refuse("sets container_name, which two containers cannot share");
            }
            let names = Name::new(&target.backend)
                .and_then(|_| Name::new(&server))
                .and_then(|_| Name::new(&format!("{server}-b")));
            if let Err(e) = names {
                return refuse(&e.to_string());
            }
            swaps.push(DeploySwap {
                service: service.clone(),
                backend: target.backend,
                server,
                port: target.port,
                network: target.network,
                old_id: None,
                new_id: None,
                haproxy: None,
            });
        }
        Ok(swaps)
    }

    /// Plans the record's swaps before anything is touched: each service's one running
    /// container, and which HAProxy server serves it now at that container's address.
    /// `Err`: why the deployment cannot go on (nothing was touched).
    pub(super) async fn plan_swaps(
        &self,
        v: Versioned<DeployRecord>,
    ) -> Result<Result<Versioned<DeployRecord>, Failed>, FlowError> {
        if v.value.swaps.iter().all(|s| s.haproxy.is_some()) {
            return Ok(Ok(v));
        }
        let env = v.value.change.environment.clone();
        let Some(socket) = self.cfg.haproxy_socket.clone() else {
            let why =
                format!("{} is not set; nothing was changed", crate::config::ENV_HAPROXY_SOCKET);
            return Ok(Err((v, why, vec![])));
        };
        let runtime = Runtime::new(&socket);
        let mut record = v.value.clone();
        for swap in &mut record.swaps {
            let service = swap.service.clone();
            let refuse = |why: String| format!("{service}: {why}; nothing was changed");
            // Exactly one, in any state: compose's `--scale` counts stopped ones too (it would
            // start a stopped leftover instead of making the new one, or scale two down).
            let all = self.service_containers(&env, std::slice::from_ref(&service)).await?;
            let old_id = match all.as_slice() {
                [c] if self.engine.is_running(&c.id).await? == Some(true) => &c.id,
                _ => {
                    let why = format!(
                        "start-first needs exactly one container, running, to serve while the \
                         new one starts; it has {} (one stopped counts)",
                        all.len()
                    );
                    return Ok(Err((v, refuse(why), vec![])));
                }
            };
            let names = Name::new(&swap.backend).and_then(|b| Ok((b, Name::new(&swap.server)?)));
            let planned = match names {
                Ok((backend, server)) => runtime.plan_swap(&backend, &server).await,
                Err(e) => Err(e.into()),
            };
            let slots = match planned {
                Ok(s) => s,
                Err(e) => return Ok(Err((v, refuse(e.to_string()), vec![]))),
            };
            // The server must be this container: HAProxy pointed elsewhere (an address that
            // drifted, a server set up by hand) would be switched away from the wrong one.
            let at = format!("{}:{}", slots.old.addr, slots.old.port);
            match self.engine.address_on(old_id, swap.network.as_deref()).await? {
                Ok(ip) if SocketAddr::new(ip, swap.port).to_string() == at => {}
                Ok(ip) => {
                    let why = format!(
                        "HAProxy's server {}/{} is at {at}, but the running container is at {}; \
                         see docs/runbooks.md (HAProxy switched wrong)",
                        swap.backend,
                        slots.old.name,
                        SocketAddr::new(ip, swap.port)
                    );
                    return Ok(Err((v, refuse(why), vec![])));
                }
                Err(why) => {
                    return Ok(Err((v, refuse(format!("HAProxy cannot reach it: {why}")), vec![])))
                }
            }
            swap.old_id = Some(old_id.clone());
            swap.haproxy = Some(HaproxySwitch {
                socket: socket.display().to_string(),
                backend: swap.backend.clone(),
                old_server: slots.old.name.clone(),
                old_addr: at,
                new_server: slots.new.to_string(),
                new_addr: None,
                switched: false,
            });
        }
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("swap:planned");
        Ok(Ok(v))
    }

    /// Swap `i`: the new container made beside the old one, gated, HAProxy switched to it.
    /// Each fact saved before the next step. `Err`: why it failed (to be rolled back).
    pub(super) async fn swap_in(
        &self,
        v: Versioned<DeployRecord>,
        i: usize,
    ) -> Result<Result<Versioned<DeployRecord>, Failed>, FlowError> {
        let env = v.value.change.environment.clone();
        let Some(swap) = v.value.swaps.get(i).cloned() else { return Ok(Ok(v)) };
        let service = swap.service.clone();
        let Some(mut h) = swap.haproxy.clone() else {
            return Ok(Err((v, format!("{service}: its swap was never planned"), vec![])));
        };
        let old_id = swap.old_id.clone().unwrap_or_default();
        steward_failpoints::failpoint!("swap:up");
        if let Err(e) = self.compose(&env).up_beside(&service).await {
            return Ok(Err((v, e.to_string(), e.tail)));
        }
        let made: Vec<_> = self
            .service_containers(&env, std::slice::from_ref(&service))
            .await?
            .into_iter()
            .filter(|c| c.id != old_id)
            .collect();
        let [new] = made.as_slice() else {
            let why = format!(
                "compose made {} containers of {service} beside the old one, not one",
                made.len()
            );
            return Ok(Err((v, why, vec![])));
        };
        let mut record = v.value;
        record.swaps[i].new_id = Some(new.id.clone());
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("swap:created");
        if let Err(why) = self.judge(&new.id, &new.labels).await {
            let logs =
                self.engine.logs_tail(&new.id, super::apply::LOG_LINES).await.unwrap_or_default();
            return Ok(Err((v, format!("the new {service}: {why}"), logs)));
        }
        let ip = match self.engine.address_on(&new.id, swap.network.as_deref()).await? {
            Ok(ip) => ip,
            Err(why) => {
                let why = format!("HAProxy cannot reach the new {service}: {why}");
                return Ok(Err((v, why, vec![])));
            }
        };
        let addr = SocketAddr::new(ip, swap.port).to_string();
        h.new_addr = Some(addr.clone());
        let mut record = v.value;
        record.swaps[i].haproxy = Some(h.clone());
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("swap:switch");
        let servers = (h.old_server.as_str(), h.new_server.as_str());
        let runtime = Runtime::new(&h.socket);
        if let Err(e) = runtime.switch_recorded(&h.backend, servers, &addr, self.bounds()).await {
            let why = format!("HAProxy was not switched to the new {service}: {e}");
            return Ok(Err((v, why, vec![])));
        }
        let mut record = v.value;
        if let Some(h) = record.swaps[i].haproxy.as_mut() {
            h.switched = true;
        }
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("swap:switched");
        tracing::info!(environment = %env, %service, new = %new.name, "HAProxy serves the new container");
        Ok(Ok(v))
    }

    /// The swaps' old containers removed (the deployment passed its gate; HAProxy no longer
    /// sends them anything). Idempotent: a container already gone is fine.
    pub(super) async fn retire(&self, record: &DeployRecord) -> Result<(), FlowError> {
        for swap in &record.swaps {
            let Some(old) = &swap.old_id else { continue };
            if swap.new_id.is_none() {
                continue;
            }
            if self.engine.brief(old).await?.is_some_and(|b| b.running) {
                self.engine.stop(old, RETIRE_GRACE_SECS).await?;
            }
            // Its anonymous volumes are left: a volume is never deleted on a guess.
            self.engine.remove(old, false).await?;
            tracing::info!(environment = %record.change.environment, service = %swap.service, "old container removed");
        }
        Ok(())
    }

    /// The swaps undone, last first: HAProxy back on each old container (started again if it
    /// stopped), then every other container of its service removed. Where that cannot be
    /// done safely, both containers are left running and a note says why; HAProxy that
    /// cannot be reached at all is an error (tried again). Idempotent: runs again after a
    /// kill.
    pub(super) async fn undo_swaps(&self, record: &DeployRecord) -> Result<Undone, FlowError> {
        let env = &record.change.environment;
        let mut undone = Undone::default();
        for swap in record.swaps.iter().rev() {
            let Some(old) = &swap.old_id else { continue };
            let service = &swap.service;
            let old_state = self.engine.brief(old).await?;
            let Some(old_state) = old_state else {
                // Nothing to go back to: whatever the new container is, it stays.
                undone.notes.push(format!(
                    "the old container of {service} was gone, so its new one was left as it is \
                     and HAProxy was not switched back (see docs/runbooks.md, HAProxy switched wrong)"
                ));
                continue;
            };
            if let Some(h) = swap.haproxy.as_ref().filter(|h| h.new_addr.is_some()) {
                if !old_state.running {
                    self.engine.start(old).await?;
                }
                let now = match self.engine.address_on(old, swap.network.as_deref()).await? {
                    Ok(ip) => SocketAddr::new(ip, swap.port).to_string(),
                    Err(_) => h.old_addr.clone(),
                };
                match self.switch_back(h, &now).await {
                    Ok(()) => {}
                    Err(e) if e.is_unreachable() => return Err(FlowError::Switch(e.to_string())),
                    Err(e) => {
                        // Removing the new container now could leave HAProxy with nothing.
                        tracing::error!(environment = %env, %service, error = %e, "HAProxy could not be switched back");
                        undone.notes.push(format!(
                            "HAProxy could not be switched back to the old container of \
                             {service} ({e}), so both of its containers were left running (see \
                             docs/runbooks.md, HAProxy switched wrong)"
                        ));
                        continue;
                    }
                }
            }
            steward_failpoints::failpoint!("swap:back");
            for c in self.service_containers(env, std::slice::from_ref(service)).await? {
                if c.id != *old && c.labels.get(SERVICE_LABEL) == Some(service) {
                    self.engine.remove(&c.id, false).await?;
                }
            }
            undone.back.push(service.clone());
        }
        Ok(undone)
    }

    /// The swaps' new containers still serve, checked once more just before the old ones are
    /// removed (the other services' gate ran in between). `Err`: which one does not, and why.
    pub(super) async fn still_serving(&self, record: &DeployRecord) -> Result<(), String> {
        for swap in &record.swaps {
            let Some(new) = &swap.new_id else { continue };
            let view = self.engine.health_view(new).await.map_err(|e| e.to_string())?;
            if let steward_probe::Verdict::Fail(f) = steward_probe::judge_state(&view, None) {
                return Err(format!(
                    "the new {} stopped serving after HAProxy was switched to it: {}",
                    swap.service, f.reason
                ));
            }
        }
        Ok(())
    }

    async fn switch_back(&self, h: &HaproxySwitch, now: &str) -> Result<(), HaproxyError> {
        let servers = (h.new_server.as_str(), h.old_server.as_str());
        Runtime::new(&h.socket)
            .switch_back_recorded(&h.backend, servers, &h.old_addr, now, self.bounds())
            .await
    }

    fn bounds(&self) -> SwitchBounds {
        let bound = self.cfg.haproxy_switch_timeout;
        SwitchBounds { up: bound, drain: bound }
    }
}
