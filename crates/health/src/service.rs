//! The probe loop and the event handler.
//!
//! Every interval: list the containers to probe (watched, databases, or with an HTTP probe,
//! in scope), probe them (at most 8 at once), feed each round to its [`Track`], persist the
//! track, publish transitions, and update `/metrics`. Events from other services only adjust
//! what a round means (re-baseline after an update or restore; backup running).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use steward_bus::StateStore;
use steward_engine::Engine;
use steward_events::{Event, EventData, HealthRestartLimited, HealthRestarted};
use steward_runtime::{Context, Handler, HandlerError};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::config::HealthConfig;
use crate::engine::{EngineRound, EngineTrack, EngineTransition, ENGINE_KEY};
use crate::host::conditions::{Conditions, CONDITIONS_KEY};
use crate::host::{Finding, Report};
use crate::probe::{Prober, Verdict};
use crate::track::{Heal, Track, Transition, HEALTH_BUCKET};

/// A container removed for good (down, and gone this long) is no longer probed.
const FORGET_GONE: time::Duration = time::Duration::hours(24);
/// An update that never reported its end stops excusing its container after this long.
const UPDATE_EXCUSE: Duration = Duration::from_secs(3600);
/// A backup that never reported its end stops excusing stopped containers after this long.
const BACKUP_EXCUSE: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabel {
    container: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabel {
    container: String,
    check: String,
}

struct Inner {
    cfg: HealthConfig,
    engine: Engine,
    prober: Prober,
    store: StateStore<Track>,
    tracks: Mutex<HashMap<String, Track>>,
    backup_since: Mutex<Option<Instant>>,
    /// Containers in an update (swap and health gate are the updater's to judge).
    updating: Mutex<HashMap<String, Instant>>,
    up: Family<ContainerLabel, Gauge>,
    latency: Family<ProbeLabel, Gauge<f64, AtomicU64>>,
    /// The engine's own track, in the same bucket under [`ENGINE_KEY`].
    engine_store: StateStore<EngineTrack>,
    engine_track: Mutex<EngineTrack>,
    engine_up: Gauge,
    host_gauges: crate::host::gauges::HostGauges,
    /// The host checks' open conditions, in the same bucket under [`CONDITIONS_KEY`].
    conditions_store: StateStore<Conditions>,
    conditions: Mutex<Conditions>,
}

/// The health service.
#[derive(Clone)]
pub struct HealthService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthService").field("cfg", &self.inner.cfg).finish_non_exhaustive()
    }
}

impl HealthService {
    /// Loads the tracks, registers the metrics and starts the probe loop.
    pub async fn start(cfg: HealthConfig, ctx: &Context) -> anyhow::Result<Self> {
        let engine = ctx.engine.clone().ok_or_else(|| anyhow::anyhow!("health needs Docker"))?;
        let prober = Prober::new(engine.clone(), &cfg.probe)?;
        let store: StateStore<Track> = StateStore::open(&ctx.bus, HEALTH_BUCKET).await?;
        let mut tracks = HashMap::new();
        for key in store.keys().await? {
            // `_engine`, `_conditions`: not container tracks (no container name starts so).
            if key.starts_with('_') {
                continue;
            }
            if let Some(v) = store.get(&key).await? {
                tracks.insert(v.value.container.clone(), v.value);
            }
        }
        let engine_store: StateStore<EngineTrack> =
            StateStore::open(&ctx.bus, HEALTH_BUCKET).await?;
        let engine_track = engine_store.get(ENGINE_KEY).await?.map(|v| v.value).unwrap_or_default();
        let conditions_store: StateStore<Conditions> =
            StateStore::open(&ctx.bus, HEALTH_BUCKET).await?;
        let conditions =
            conditions_store.get(CONDITIONS_KEY).await?.map(|v| v.value).unwrap_or_default();
        let engine_up = Gauge::default();
        engine_up.set(i64::from(!engine_track.down));
        ctx.metrics.register(
            "health_engine_up",
            "1 while the Docker engine answers, 0 once declared not answering",
            engine_up.clone(),
        );
        let up = Family::<ContainerLabel, Gauge>::default();
        let latency = Family::<ProbeLabel, Gauge<f64, AtomicU64>>::default();
        ctx.metrics.register(
            "health_up",
            "1 while the container passes its probes, 0 once declared down",
            up.clone(),
        );
        ctx.metrics.register(
            "health_probe_latency_seconds",
            "Latency of the last HTTP probe",
            latency.clone(),
        );
        let service = Self {
            inner: Arc::new(Inner {
                cfg,
                engine,
                prober,
                store,
                tracks: Mutex::new(tracks),
                backup_since: Mutex::new(None),
                updating: Mutex::new(HashMap::new()),
                up,
                latency,
                host_gauges: crate::host::gauges::HostGauges::register(&ctx.metrics),
                engine_store,
                engine_track: Mutex::new(engine_track),
                engine_up,
                conditions_store,
                conditions: Mutex::new(conditions),
            }),
        };
        let hosting = service.clone();
        let ctx_for_hosts = ctx.clone();
        ctx.spawn("health host checks", async move {
            let ctx = ctx_for_hosts;
            let interval = hosting.inner.cfg.host.interval;
            loop {
                if let Err(e) = hosting.host_round(&ctx).await {
                    tracing::warn!(error = %e, "host checks skipped");
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        let looping = service.clone();
        let ctx_for_loop = ctx.clone();
        ctx.spawn("health rounds", async move {
            let ctx = ctx_for_loop;
            let interval = looping.inner.cfg.interval;
            loop {
                if let Err(e) = looping.round(&ctx).await {
                    tracing::warn!(error = %e, "probe round skipped");
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        Ok(service)
    }

    fn probed(&self, labels: &HashMap<String, String>) -> bool {
        // One-offs and helpers are never listed by the engine (`steward_labels::stand_in`).
        if !steward_labels::in_scope(labels, self.inner.cfg.scope.as_deref()) {
            return false;
        }
        steward_labels::watched(labels).unwrap_or(false)
            || labels.contains_key(steward_labels::HEALTH_URL)
            || steward_labels::backup_labels(labels).is_ok_and(|b| b.postgres)
    }

    /// One round over every container, and over the engine itself.
    pub async fn round(&self, ctx: &Context) -> anyhow::Result<()> {
        let mut listed = match self.inner.engine.containers(|l| self.probed(l)).await {
            Ok(listed) => listed,
            Err(e) => {
                // No container is judged; the engine is.
                self.observe_engine(ctx, &EngineRound::from_listing(&e)).await?;
                return Err(e.into());
            }
        };
        // The updater's parked and half-made containers come and go with a swap; the
        // container under its own name is what is probed (and re-baselined afterwards).
        listed.retain(|c| !steward_engine::recreate::is_swap_name(&c.name));
        let backup_running =
            self.inner.backup_since.lock().await.is_some_and(|t| t.elapsed() < BACKUP_EXCUSE);
        let mut targets: HashMap<String, HashMap<String, String>> =
            listed.into_iter().map(|c| (c.name, c.labels)).collect();
        // A container removed (compose down, recreated by hand) is not an outage: its track
        // goes quietly. One already down stays probed, so its return is reported.
        let mut removed = vec![];
        {
            let mut tracks = self.inner.tracks.lock().await;
            tracks.retain(|name, track| {
                let keep = targets.contains_key(name) || track.down;
                if !keep {
                    removed.push(name.clone());
                }
                keep
            });
        }
        for name in removed {
            self.inner.up.remove(&ContainerLabel { container: name.clone() });
            self.inner.store.delete(&name).await?;
        }
        let previous = self.inner.tracks.lock().await.clone();
        for name in previous.keys().filter(|n| !steward_engine::recreate::is_swap_name(n)) {
            targets.entry(name.clone()).or_default();
        }
        {
            let mut updating = self.inner.updating.lock().await;
            updating.retain(|_, since| since.elapsed() < UPDATE_EXCUSE);
            targets.retain(|name, _| !updating.contains_key(name));
        }
        let rounds: Vec<_> = futures::stream::iter(targets)
            .map(|(name, labels)| {
                let last =
                    previous.get(&name).and_then(|t| t.id.clone().map(|id| (id, t.restarts)));
                let heals = match steward_labels::health_restart(&labels) {
                    Ok(heals) => heals,
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "bad label; not restarted when down");
                        false
                    }
                };
                async move {
                    let last = last.as_ref().map(|(id, r)| (id.as_str(), *r));
                    let round = self.inner.prober.round(&name, &labels, last, backup_running).await;
                    (name, (heals, round))
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let engine_round = rounds
            .iter()
            .find_map(|(_, (_, round)): &(String, (bool, crate::probe::Round))| {
                round.engine.clone()
            })
            .unwrap_or(EngineRound::Answered);
        self.observe_engine(ctx, &engine_round).await?;
        let now = OffsetDateTime::now_utc();
        for (name, (heals, round)) in rounds {
            if let Some(latency) = round.http_latency {
                let label = ProbeLabel { container: name.clone(), check: "http".into() };
                self.inner.latency.get_or_create(&label).set(latency.as_secs_f64());
            }
            // The track changes under the lock; the lock is not held while publishing (NATS
            // may take its retry bound), so the event handlers are never kept waiting.
            let (before, event) = {
                let mut tracks = self.inner.tracks.lock().await;
                let track = tracks.entry(name.clone()).or_insert_with(|| Track::new(&name));
                let before = track.clone();
                let transition =
                    track.observe(&round, now, self.inner.cfg.failures, self.inner.cfg.recoveries);
                self.inner.up.get_or_create(&label_of(&name)).set(i64::from(!track.down));
                let event = match transition {
                    Some(Transition::Failed(f)) => {
                        tracing::warn!(container = %name, check = %f.check, reason = %f.reason, "container unhealthy");
                        let event = Event::new(ctx.source(), f);
                        track.outage = Some(event.correlation_id);
                        Some(event)
                    }
                    Some(Transition::Recovered(r)) => {
                        tracing::info!(container = %name, down_for_ms = r.down_for_ms, "container recovered");
                        Some(in_outage(ctx, r, track.outage.take()))
                    }
                    None => None,
                };
                (before, event)
            };
            // Publish first: a transition lost to a crash is found again by the next round,
            // because the track is only saved after its event is out.
            if let Some(event) = &event {
                if let Err(e) = ctx.bus.publish(event).await {
                    // Not out: forget this round, so the next one declares the transition
                    // again (unless a handler changed the track meanwhile: its word stands).
                    let mut tracks = self.inner.tracks.lock().await;
                    if let Some(track) = tracks.get_mut(&name) {
                        if event_of(track, event) {
                            *track = before;
                        }
                    }
                    return Err(e.into());
                }
            }
            let mut tracks = self.inner.tracks.lock().await;
            let Some(track) = tracks.get_mut(&name) else { continue };
            let gone = round.id.is_none() && matches!(round.verdict, Verdict::Fail { .. });
            let forgotten = track.failing_since.is_some_and(|t| now - t > FORGET_GONE);
            if gone && track.down && forgotten {
                // Reported once; a container removed for good is not probed forever.
                let key = track.container.clone();
                tracks.remove(&name);
                drop(tracks);
                self.inner.up.remove(&label_of(&name));
                self.inner.store.delete(&key).await?;
                continue;
            }
            let changed = (*track != before).then(|| track.clone());
            // Never held across an await below (heal takes it again).
            drop(tracks);
            if let Some(saved) = changed {
                self.inner.store.put(&name, &saved).await?;
            }
            if heals {
                self.heal(ctx, &name).await?;
            }
        }
        Ok(())
    }

    /// Self-healing of a container labelled `steward.health.restart=true` that is down:
    /// restart it (bounded by back-off and the hourly limit), or say the limit is reached.
    async fn heal(&self, ctx: &Context, name: &str) -> anyhow::Result<()> {
        let now = OffsetDateTime::now_utc();
        let (decision, outage, reason) = {
            let mut tracks = self.inner.tracks.lock().await;
            let Some(track) = tracks.get_mut(name) else { return Ok(()) };
            let reason = track.last_failure.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
            (track.heal(now, self.inner.cfg.restart_limit), track.outage, reason)
        };
        match decision {
            None => Ok(()),
            Some(Heal::Restart { attempt }) => {
                tracing::warn!(container = %name, attempt, %reason, "restarting a container that is down");
                self.inner.engine.restart(name, 10).await?;
                // Recorded before it is announced: a crash in between costs the event, never
                // a restart beyond the limit.
                let saved = {
                    let mut tracks = self.inner.tracks.lock().await;
                    let Some(track) = tracks.get_mut(name) else { return Ok(()) };
                    track.heals.push(now.unix_timestamp());
                    track.clone()
                };
                self.inner.store.put(name, &saved).await?;
                let data = HealthRestarted { container: name.to_owned(), attempt, reason };
                ctx.bus.publish(&in_outage(ctx, data, outage)).await?;
                Ok(())
            }
            Some(Heal::Limited { restarts }) => {
                tracing::error!(container = %name, restarts, "down, and its restarts for the hour are used up");
                let data = HealthRestartLimited { container: name.to_owned(), restarts, reason };
                ctx.bus.publish(&in_outage(ctx, data, outage)).await?;
                let saved = {
                    let mut tracks = self.inner.tracks.lock().await;
                    let Some(track) = tracks.get_mut(name) else { return Ok(()) };
                    track.heal_limited = true;
                    track.clone()
                };
                self.inner.store.put(name, &saved).await?;
                Ok(())
            }
        }
    }
}

fn label_of(name: &str) -> ContainerLabel {
    ContainerLabel { container: name.to_owned() }
}

impl HealthService {
    /// One round of the host checks: certificates, free space, configuration checks; each
    /// condition's change published, then the open conditions saved.
    pub async fn host_round(&self, ctx: &Context) -> anyhow::Result<()> {
        use steward_labels as labels;
        let scope = self.inner.cfg.scope.as_deref();
        let wanted = |l: &HashMap<String, String>| {
            labels::in_scope(l, scope)
                && [
                    labels::HEALTH_CHECK,
                    labels::HEALTH_DISK,
                    labels::HEALTH_TLS,
                    labels::CERTS_RENEW,
                ]
                .iter()
                .any(|k| l.contains_key(*k))
        };
        // An engine that does not answer is the probe loop's to report.
        let mut listed = self.inner.engine.containers(wanted).await?;
        listed.retain(|c| !steward_engine::recreate::is_swap_name(&c.name));
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let cfg = &self.inner.cfg.host;
        let now = OffsetDateTime::now_utc();
        let mut reports = vec![];
        let (mut checks, mut disks, mut served) = (vec![], vec![], vec![]);
        let (mut unknown_checks, mut disk_complete, mut tls_complete) = (vec![], true, true);
        for c in &listed {
            // A bad label is said in the log each round and leaves that check out; it never
            // stops the others.
            let running = match self.inner.engine.is_running(&c.name).await {
                Ok(r) => r.unwrap_or(false),
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "cannot inspect for host checks");
                    false
                }
            };
            match labels::health_check(&c.labels) {
                Ok(Some(argv)) if running => checks.push((c.name.clone(), argv)),
                // Stopped: `health.failed` is its news; its check is unknown meanwhile.
                Ok(Some(_)) => unknown_checks.push(Finding::unknown(format!("config|{}", c.name))),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(container = %c.name, error = %e, "bad label: no configuration check")
                }
            }
            match labels::health_disk(&c.labels) {
                Ok(Some(watch)) if running => disks.push((c.name.clone(), watch)),
                Ok(Some(_)) => disk_complete = false,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(container = %c.name, error = %e, "bad label: free space not watched")
                }
            }
            // Served certificates are asked for whether the container runs or not: what
            // clients get at the endpoint is what counts (a stopped server answers nothing,
            // which is unknown, not renewed).
            match labels::health_tls(&c.labels) {
                Ok(Some(endpoints)) => served.push((c.name.clone(), endpoints)),
                Ok(None) => {}
                Err(e) => {
                    // Its open conditions stay open rather than end as if renewed.
                    tls_complete = false;
                    tracing::error!(container = %c.name, error = %e, "bad label: served certificates not watched")
                }
            }
            match labels::certs_labels(&c.labels) {
                // Read through the archive API, so a stopped certbot container still counts.
                Ok(certs) if certs.renew.is_some() => {
                    let report = crate::host::certs::check(
                        &self.inner.engine,
                        &c.name,
                        &certs.path,
                        now,
                        cfg.cert_warn,
                        cfg.cert_critical,
                    )
                    .await;
                    reports.push(report);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(container = %c.name, error = %e, "bad label: certificates not watched")
                }
            }
        }
        let mut config = crate::host::config::check(&self.inner.engine, &checks).await;
        config.findings.extend(unknown_checks);
        reports.push(config);
        let (mut tls, answers) = crate::host::tls::check(
            &served,
            now,
            cfg.cert_warn,
            cfg.cert_critical,
            self.inner.cfg.probe.timeout,
        )
        .await;
        if !tls_complete {
            tls.covers.clear();
        }
        self.inner.host_gauges.tls(&answers);
        reports.push(tls);
        let known = self.inner.conditions.lock().await.clone();
        let mut disk = crate::host::disk::check(&self.inner.engine, &disks, cfg, &known).await;
        if !disk_complete {
            disk.covers.clear();
        }
        reports.push(disk);
        // Certificates of a certbot container no longer labelled (or removed) are gone.
        let certbots: Vec<String> = reports
            .iter()
            .flat_map(|r| r.covers.iter().filter(|p| p.starts_with("cert|")).cloned())
            .collect();
        let orphans: Vec<String> = known
            .open
            .keys()
            .filter(|k| k.starts_with("cert|"))
            .filter_map(|k| k.split('|').nth(1).map(|c| format!("cert|{c}|")))
            .filter(|p| {
                !certbots.contains(p) && !listed.iter().any(|c| p == &format!("cert|{}|", c.name))
            })
            .collect();
        reports.push(Report { findings: vec![], covers: orphans });
        self.inner.host_gauges.observe(&reports);
        for report in &reports {
            self.conclude(ctx, report).await?;
        }
        Ok(())
    }

    /// Publishes a report's changes, each then applied; saves the conditions once they are
    /// out (a crash in between repeats an event, never loses one).
    async fn conclude(&self, ctx: &Context, report: &Report) -> anyhow::Result<()> {
        let mut conditions = self.inner.conditions.lock().await;
        let changes = conditions.changes(report);
        if changes.is_empty() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let mut result = Ok(());
        for change in &changes {
            let flow = match &change.event {
                Some(data) => {
                    let event = match change.flow {
                        Some(flow) => in_outage(ctx, data.clone(), Some(flow)),
                        None => Event::new(ctx.source(), data.clone()),
                    };
                    tracing::warn!(condition = %change.key, event = event.event_type(), "host condition changed");
                    if let Err(e) = ctx.bus.publish(&event).await {
                        // Not out: the next round finds the change again.
                        result = Err(e.into());
                        break;
                    }
                    event.correlation_id
                }
                None => change.flow.unwrap_or_else(uuid::Uuid::now_v7),
            };
            conditions.apply(change, flow, now);
        }
        let saved = conditions.clone();
        drop(conditions);
        self.inner.conditions_store.put(CONDITIONS_KEY, &saved).await?;
        result
    }
}

/// Whether `track` is still as the round that made `event` left it (its outage is the
/// event's flow, or was just closed by it).
fn event_of(track: &Track, event: &Event) -> bool {
    match &event.data {
        steward_events::EventData::HealthFailed(_) => track.outage == Some(event.correlation_id),
        _ => track.outage.is_none() && !track.down,
    }
}

impl HealthService {
    /// Feeds one round to the engine's track, publishes its transition, then saves it.
    async fn observe_engine(&self, ctx: &Context, round: &EngineRound) -> anyhow::Result<()> {
        let mut track = self.inner.engine_track.lock().await;
        let before = track.clone();
        let host = self.inner.engine.host();
        let (failures, recoveries) = (self.inner.cfg.failures, self.inner.cfg.recoveries);
        let transition =
            track.observe(round, host, OffsetDateTime::now_utc(), failures, recoveries);
        let published = match transition {
            Some(EngineTransition::Failed(f)) => {
                tracing::error!(engine = %host, call = %f.call, reason = %f.reason, "Docker engine not answering");
                let event = Event::new(ctx.source(), f);
                track.outage = Some(event.correlation_id);
                ctx.bus.publish(&event).await.map(|_| ())
            }
            Some(EngineTransition::Recovered(r)) => {
                tracing::info!(engine = %host, down_for_ms = r.down_for_ms, "Docker engine answers again");
                let event = in_outage(ctx, r, track.outage.take());
                ctx.bus.publish(&event).await.map(|_| ())
            }
            None => Ok(()),
        };
        if let Err(e) = published {
            // Not out: the next round declares it again.
            *track = before;
            return Err(e.into());
        }
        self.inner.engine_up.set(i64::from(!track.down));
        if *track != before {
            self.inner.engine_store.put(ENGINE_KEY, &track).await?;
        }
        Ok(())
    }
}

impl Handler for HealthService {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        match &event.data {
            EventData::UpdateStarted(u) => {
                self.inner.updating.lock().await.insert(u.container.clone(), Instant::now());
            }
            EventData::UpdateFailed(u) => {
                self.inner.updating.lock().await.remove(&u.container);
            }
            EventData::UpdateSucceeded(_) | EventData::UpdateRolledBack(_) => {
                let Some(name) = event.container() else { return Ok(()) };
                self.inner.updating.lock().await.remove(name);
                if let Some(track) = self.inner.tracks.lock().await.get_mut(name) {
                    track.rebaseline();
                }
            }
            EventData::RestoreDone(_) => {
                for track in self.inner.tracks.lock().await.values_mut() {
                    track.rebaseline();
                }
            }
            EventData::BackupStarted(_) => {
                *self.inner.backup_since.lock().await = Some(Instant::now());
            }
            EventData::BackupDone(_) | EventData::BackupFailed(_) => {
                *self.inner.backup_since.lock().await = None;
            }
            _ => {}
        }
        Ok(())
    }
}

/// An event in the flow of its outage (same correlation id, caused by it): the recovery that
/// ends it, a restart during it; so an outage is one flow in the audit.
fn in_outage(
    ctx: &Context,
    data: impl Into<steward_events::EventData>,
    outage: Option<uuid::Uuid>,
) -> Event {
    let mut event = Event::new(ctx.source(), data);
    if let Some(outage) = outage {
        event = event.with_correlation(outage);
        event.causation_id = Some(outage);
    }
    event
}
