//! Provisioning: the one identity that creates or changes the stream, the services' durable
//! consumers and the KV buckets (`steward setup`, and `TestBus` in tests, which plays its
//! role). Services only look these up; their NATS users may not change them.

use std::time::Duration;

use steward_events::Service;

use crate::idempotency::{open_bucket, open_sourced_bucket, MARKER_TTL};
use crate::{Bus, BusError, ConsumerSpec, Topology};

/// Bucket of the idempotency markers; every service writes only keys under its own name.
pub const HANDLED_BUCKET: &str = "HANDLED";

/// What provisioning creates or updates in a namespace.
#[derive(Debug, Clone)]
pub struct Setup {
    /// One durable consumer per consuming service ([`ConsumerSpec::of`]).
    pub consumers: Vec<ConsumerSpec>,
    /// State buckets (names within the namespace): values never expire, 5 revisions kept.
    pub state_buckets: Vec<String>,
    /// TTL of the idempotency markers (bucket [`HANDLED_BUCKET`]); also the horizon beyond
    /// which the runtime ignores deliveries.
    pub marker_ttl: Duration,
    /// At a hub whose central consumers are new (a rebuilt centre): how long setup waits for
    /// the hosts' sources to copy their leaves' history before it creates them
    /// ([`SOURCE_WAIT`]).
    pub source_wait: Duration,
}

/// How long a hub's setup waits for the sources still copying a leaf's history before it
/// creates a new central consumer (a silent source is not waited for: [`SourceState`]).
pub const SOURCE_WAIT: Duration = Duration::from_secs(120);

/// How long a hub's setup gives a new source to be heard from before it takes the source's
/// leaf for unreachable.
const SOURCE_GRACE: Duration = Duration::from_secs(5);

/// A caught-up source is heard from every second (nats-server's heartbeat): one heard from
/// within this is current...
const SOURCE_CURRENT: Duration = Duration::from_secs(2);

/// ...and one not heard from for longer than this is silent (its leaf unreachable: nats-server
/// 2.10 re-sets a silent source every 10 s, which makes it look heard from for a moment).
const SOURCE_SILENT: Duration = Duration::from_secs(3);

/// Polls in a row, a second apart, in which every source is caught up or silent and the
/// stream's last sequence stays the same, before setup stops waiting.
const SOURCE_STEADY_POLLS: usize = 3;

impl Setup {
    /// Everything Steward's routing table needs: every consuming service's consumer, every
    /// bucket a participant writes, and the markers bucket.
    pub fn steward() -> Self {
        Self::for_hosts(&[])
    }

    /// [`Setup::steward`] under host routing (`STEWARD_HOSTS`): each agent's consumer once per
    /// host (`updater-<host>`, reading that host's subjects), the central ones once. Without
    /// hosts, the consumers of one host as before routing.
    pub fn for_hosts(hosts: &[String]) -> Self {
        let consumers = Service::ALL
            .into_iter()
            .filter(|s| !s.consumes().is_empty())
            .flat_map(|s| match hosts {
                [] => vec![ConsumerSpec::of(s, None)],
                _ if !s.is_agent() => vec![ConsumerSpec::of(s, None)],
                _ => hosts.iter().map(|h| ConsumerSpec::of(s, Some(h))).collect(),
            })
            .collect();
        let mut state_buckets: Vec<String> = Service::ALL
            .into_iter()
            .flat_map(|s| s.writes_buckets().iter().map(|b| (*b).to_owned()))
            .collect();
        state_buckets.sort();
        state_buckets.dedup();
        Self { consumers, state_buckets, marker_ttl: MARKER_TTL, source_wait: SOURCE_WAIT }
    }

    /// Every consumer with this ack wait and number of handler attempts
    /// (`STEWARD_ACK_WAIT`, `STEWARD_MAX_DELIVER`).
    pub fn with_delivery(mut self, ack_wait: Duration, max_deliver: i64) -> Self {
        for c in &mut self.consumers {
            c.ack_wait = ack_wait;
            c.max_deliver = max_deliver;
        }
        self
    }
}

impl Bus {
    /// Creates or updates the stream, then every consumer and bucket of `setup`; returns one
    /// line per thing done. Safe to run again (an install and every upgrade run it once).
    /// An existing consumer keeps its position and delivery policy; a new one starts at new
    /// events. Needs the provisioning identity's NATS user (`setup`).
    ///
    /// Under the leaf-node topology ([`BusConfig::topology`](crate::BusConfig::topology)) it
    /// provisions the server it is connected to only: on a host's leaf, the stream of that
    /// host's subjects and that host's agents' consumers; on the hub, the stream sourcing
    /// every leaf's and the central consumers. Buckets are made on both (a leaf's hold its
    /// agents' records; the hub's its centre's). It first checks that the server's JetStream
    /// domain is the one `STEWARD_NATS_DOMAIN` names: provisioning a leaf as the hub, or the
    /// other way round, would leave events where nobody reads them.
    pub async fn setup(&self, setup: &Setup) -> Result<Vec<String>, BusError> {
        let ns = self.namespace().clone();
        let mut done = vec![];
        let topology = self.cfg.topology();
        if let Some(domain) = &self.cfg.domain {
            let found = self.domain_within(self.cfg.connect_timeout).await?;
            if found.as_deref() != Some(domain.as_str()) {
                return Err(BusError::Nats {
                    op: "check the JetStream domain",
                    reason: format!(
                        "STEWARD_NATS_DOMAIN is {domain}, but the server's JetStream domain is {} (its `jetstream {{ domain: ... }}`)",
                        found.as_deref().unwrap_or("unset")
                    ),
                });
            }
        }
        self.ensure_stream_within(self.cfg.connect_timeout).await?;
        let consumers: Vec<&ConsumerSpec> = setup
            .consumers
            .iter()
            .filter(|c| match topology {
                Topology::Single => true,
                Topology::Hub { .. } => c.host.is_none(),
                Topology::Leaf { host } => c.host.as_deref() == Some(host),
            })
            .collect();
        match topology {
            Topology::Single => {}
            Topology::Hub { hosts } => {
                done.push(format!(
                    "JetStream domain {}: the hub, sourcing the streams of {}",
                    self.cfg.domain.as_deref().unwrap_or_default(),
                    hosts.join(", ")
                ));
                let version = self.client.server_info().version;
                if let Some(warning) = hub_version_warning(&version) {
                    tracing::warn!(%version, "{warning}");
                    done.push(warning);
                }
            }
            Topology::Leaf { host } => {
                done.push(format!("JetStream domain {host}: the leaf node of host {host}"))
            }
        }
        done.push(format!(
            "stream {}: {} retention, {:?} duplicate window",
            ns.stream,
            humanize(self.cfg.retention),
            self.cfg.duplicate_window
        ));
        // A rebuilt hub's sources copy every leaf's history anew, each copy stored now: a
        // central consumer made at once and starting at new messages would be handed that
        // history as new (the notifier mailing the last week again). Made once the sources
        // have caught up, it starts after what they copied.
        let mut start = None;
        if let Topology::Hub { hosts } = topology {
            let mut new = false;
            for spec in &consumers {
                new |= self.existing_consumer(&spec.name).await?.is_none();
            }
            if new {
                let settled = self.settled_sources(hosts, setup.source_wait).await?;
                start = Some(settled.last.saturating_add(1));
                done.push(settled.describe());
            }
        }
        for spec in consumers {
            let created = self.ensure_consumer_at(spec, start).await?;
            steward_failpoints::failpoint!("setup:consumer-ensured");
            let how = match (created, start) {
                (false, _) => "updated",
                (true, None) => "created, starting at new events",
                (true, Some(_)) => "created, starting after the hosts' history",
            };
            done.push(format!(
                "consumer {}: {} (ack wait {:?}, {} attempts)",
                spec.name, how, spec.ack_wait, spec.max_deliver
            ));
        }
        for name in &setup.state_buckets {
            self.ensure_state_bucket(name).await?;
            done.push(format!("bucket {}", ns.bucket(name)));
        }
        let handled = ns.bucket(HANDLED_BUCKET);
        open_bucket(self, &handled, setup.marker_ttl, 1).await?;
        done.push(format!("bucket {handled}: markers kept {}", humanize(setup.marker_ttl)));
        // Upgraded to host routing: the agents' consumers from before are read by nobody now.
        // Setup never deletes one (its unread events would go with it): it says so.
        let wanted: Vec<&str> = setup.consumers.iter().map(|c| c.name.as_str()).collect();
        for service in
            Service::DAEMONS.into_iter().filter(|s| s.is_agent() && !s.consumes().is_empty())
        {
            let name = service.name();
            if wanted.contains(&name) {
                continue;
            }
            match self.lookup_consumer(name).await {
                Ok(_) => done.push(format!(
                    "consumer {name}: from before host routing, read by nobody now; delete it once its agents are stopped (docs/migration.md)"
                )),
                Err(BusError::NotProvisioned { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The JetStream domain of the server (`$JS.API.INFO`), asked again while NATS is not
    /// reachable yet. Read raw: async-nats' account type does not parse nats-server 2.9's
    /// answer.
    pub(crate) async fn domain_within(&self, bound: Duration) -> Result<Option<String>, BusError> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut delay = Duration::from_millis(100);
        loop {
            let answer = tokio::time::timeout(
                self.cfg.request_timeout,
                self.client.request("$JS.API.INFO", bytes::Bytes::new()),
            )
            .await;
            let last = match answer {
                Ok(Ok(reply)) => {
                    let info: serde_json::Value = serde_json::from_slice(&reply.payload)
                        .map_err(|e| BusError::nats("JetStream info", e))?;
                    if let Some(e) = info.get("error") {
                        return Err(BusError::nats("JetStream info", e));
                    }
                    return Ok(info.get("domain").and_then(|d| d.as_str()).map(str::to_owned));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_owned(),
            };
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(BusError::nats("JetStream info", last));
            }
            tracing::warn!(error = %last, "JetStream not answering yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Creates the durable consumer of `spec`, or updates an existing one's settings keeping
    /// its position. Returns whether it was created. Provisioning only.
    pub async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<bool, BusError> {
        self.ensure_consumer_at(spec, None).await
    }

    /// [`Bus::ensure_consumer`]; a consumer it creates starts at stream sequence `start` when
    /// given (else at new messages).
    async fn ensure_consumer_at(
        &self,
        spec: &ConsumerSpec,
        start: Option<u64>,
    ) -> Result<bool, BusError> {
        use async_nats::jetstream::consumer::{pull, FromConsumer};
        let ns = self.namespace();
        let existing = match self.existing_consumer(&spec.name).await? {
            Some(consumer) => Some(
                pull::Config::try_from_consumer_config(consumer.cached_info().config.clone())
                    .map_err(|e| BusError::nats("read consumer config", e))?,
            ),
            None => None,
        };
        let created = existing.is_none();
        let stream =
            self.js().get_stream(&ns.stream).await.map_err(|e| BusError::nats("get stream", e))?;
        stream
            .create_consumer(spec.config(ns, existing, start))
            .await
            .map_err(|e| BusError::nats("create consumer", e))?;
        Ok(created)
    }

    /// Creates (or updates) the state bucket `name` of this namespace: values never expire,
    /// 5 revisions kept. Provisioning only.
    pub async fn ensure_state_bucket(&self, name: &str) -> Result<(), BusError> {
        let bucket = self.namespace().bucket(name);
        // The hub's copy of a bucket the hosts' agents write is fed by their leaves' (keys
        // are `<host>.<key>`, so the hosts' records never collide): `steward status`,
        // `updates` and `approve` read them at the centre. Nobody writes it there.
        let sources = match self.cfg.topology() {
            Topology::Hub { hosts } if sourced_buckets().contains(&name) => {
                // Each host's keys only (`<host>.<key>`).
                let filter = |h: &str| format!("$KV.{bucket}.{h}.>");
                Some(crate::stream::leaf_sources(
                    self.namespace(),
                    hosts,
                    &format!("KV_{bucket}"),
                    filter,
                ))
            }
            _ => None,
        };
        open_sourced_bucket(self, &bucket, Duration::ZERO, 5, sources).await.map(|_| ())
    }
}

/// Where a hub's sources stood when setup stopped waiting for them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settled {
    /// The hub's stream's last sequence then.
    last: u64,
    /// The hosts whose source had not caught up (silent, failing or still copying).
    behind: Vec<String>,
    /// How long setup waited.
    waited: Duration,
}

impl Settled {
    fn describe(&self) -> String {
        if self.behind.is_empty() {
            format!(
                "central consumers start after the hosts' history (stream sequence {}; every host's source caught up in {:.1?})",
                self.last, self.waited
            )
        } else {
            format!(
                "central consumers start after stream sequence {}: the sources of {} had not caught up after {:.1?} (leaf unreachable or still copying); what they copy later reaches the notifier as new (events older than the markers' 7 days are ignored)",
                self.last,
                self.behind.join(", "),
                self.waited
            )
        }
    }
}

/// A hub's source of a host's leaf at one look at the hub's stream info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceState {
    /// No lag, heard from within [`SOURCE_CURRENT`].
    CaughtUp,
    /// Lagging but heard from, or in between: waited for.
    Copying,
    /// Never heard from, failing, without a source, or not heard from for [`SOURCE_SILENT`].
    Silent,
}

impl Bus {
    /// At the hub: waits, up to `bound`, until [`SOURCE_STEADY_POLLS`] looks in a row, a
    /// second apart, find every host's source caught up (or silent, once [`SOURCE_GRACE`] has
    /// passed) and the stream's last sequence unchanged. A host is named behind when its source
    /// was not caught up at one of those last looks.
    async fn settled_sources(
        &self,
        hosts: &[String],
        bound: Duration,
    ) -> Result<Settled, BusError> {
        let began = tokio::time::Instant::now();
        let mut looks: Vec<(u64, Vec<(String, SourceState)>)> = vec![];
        loop {
            let subject = format!("STREAM.INFO.{}", self.namespace().stream);
            let info: serde_json::Value = self
                .js()
                .request(subject, &serde_json::json!({}))
                .await
                .map_err(|e| BusError::nats("stream info", e))?;
            if let Some(e) = info.get("error") {
                return Err(BusError::nats("stream info", e));
            }
            let last = info.pointer("/state/last_seq").and_then(|v| v.as_u64()).unwrap_or(0);
            looks.push((last, source_states(&info, hosts)));
            steward_failpoints::failpoint!("setup:sources-looked");
            let waited = began.elapsed();
            let recent = &looks[looks.len().saturating_sub(SOURCE_STEADY_POLLS)..];
            let steady = recent.len() == SOURCE_STEADY_POLLS
                && recent.iter().all(|(l, states)| {
                    *l == last
                        && states.iter().all(|(_, state)| match state {
                            SourceState::CaughtUp => true,
                            SourceState::Silent => waited >= SOURCE_GRACE,
                            SourceState::Copying => false,
                        })
                });
            if steady || waited >= bound {
                let behind = hosts
                    .iter()
                    .filter(|h| {
                        recent.iter().any(|(_, states)| {
                            states.iter().any(|(host, s)| host == *h && *s != SourceState::CaughtUp)
                        })
                    })
                    .cloned()
                    .collect();
                return Ok(Settled { last, behind, waited });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Each host's source in a hub's stream info (`$JS.API.STREAM.INFO`'s answer): found by its
/// leaf's API prefix; `lag` is what it has still to copy, `active` nanoseconds since
/// nats-server last heard from it (-1: never).
fn source_states(info: &serde_json::Value, hosts: &[String]) -> Vec<(String, SourceState)> {
    let sources = info.get("sources").and_then(|s| s.as_array()).cloned().unwrap_or_default();
    hosts
        .iter()
        .map(|host| {
            let api = crate::origin::leaf_api_prefix(host);
            let source = sources.iter().find(|s| {
                s.pointer("/external/api").and_then(|a| a.as_str()) == Some(api.as_str())
            });
            let state = match source {
                None => SourceState::Silent,
                Some(s) if s.get("error").is_some_and(|e| !e.is_null()) => SourceState::Silent,
                Some(s) => {
                    let lag = s.get("lag").and_then(|l| l.as_u64()).unwrap_or(u64::MAX);
                    let active = s
                        .get("active")
                        .and_then(|a| a.as_i64())
                        .and_then(|a| u64::try_from(a).ok())
                        .map(Duration::from_nanos);
                    match active {
                        None => SourceState::Silent,
                        Some(a) if a > SOURCE_SILENT => SourceState::Silent,
                        Some(a) if lag == 0 && a <= SOURCE_CURRENT => SourceState::CaughtUp,
                        Some(_) => SourceState::Copying,
                    }
                }
            };
            (host.clone(), state)
        })
        .collect()
}

/// The first nats-server release whose hub drops a sourced message's `Nats-Expected-…`
/// headers (nats-server commit 352b9090a, in 2.10.14 and 2.11).
const HUB_MIN_VERSION: (u64, u64, u64) = (2, 10, 14);

/// What setup says about a hub running nats-server `version` older than [`HUB_MIN_VERSION`]:
/// such a hub checks the expected-revision header of a host's conditional record write (an
/// update record saved by revision) against its own copy of the bucket, where the sequences
/// differ, refuses it, and retries it for ever: that host's records stop reaching the centre
/// (`leaf_nodes.rs`, `a_hosts_record_written_by_revision_reaches_the_hubs_copy`). A version
/// that does not read as `x.y.z` is not judged.
fn hub_version_warning(version: &str) -> Option<String> {
    let (release, pre) = match version.trim_start_matches('v').split_once('-') {
        Some((release, _)) => (release, true),
        None => (version.trim_start_matches('v'), false),
    };
    let mut parts = release.split('.').map(str::parse::<u64>);
    let found = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
    // A pre-release of the first fixed version may predate the fix.
    (found < HUB_MIN_VERSION || (found == HUB_MIN_VERSION && pre)).then(|| {
        let (a, b, c) = HUB_MIN_VERSION;
        format!(
            "WARNING: the hub runs nats-server {version}; the leaf-node topology needs {a}.{b}.{c} or later at the hub (the image compose/hub.yml names, nats:2.10-alpine, is): an older hub stops copying a host's records at its first write by revision, so `steward status` and `approve` at the centre go stale for that host"
        )
    })
}

/// The state buckets the hosts' agents write: under the leaf-node topology each host's are
/// on its leaf, and the hub's copies source them.
pub fn sourced_buckets() -> Vec<&'static str> {
    let mut buckets: Vec<&'static str> = Service::ALL
        .into_iter()
        .filter(|s| s.is_agent())
        .flat_map(|s| s.writes_buckets().iter().copied())
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

fn humanize(d: Duration) -> String {
    let days = d.as_secs() / 86_400;
    if days > 0 && d.as_secs().is_multiple_of(86_400) {
        format!("{days} days")
    } else {
        format!("{d:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::{hub_version_warning, source_states, SourceState};

    #[test]
    fn a_source_is_caught_up_without_lag_heard_from_lately() {
        use SourceState::*;
        let hosts: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        let source = |host: &str, lag: u64, active_ms: i64| {
            serde_json::json!({
                "name": "STEWARD",
                "external": { "api": format!("$JS.{host}.API"), "deliver": "" },
                "lag": lag,
                "active": if active_ms < 0 { -1 } else { active_ms * 1_000_000 },
            })
        };
        let mut failing = source("e", 0, 100);
        failing["error"] = serde_json::json!({ "code": 500, "description": "x" });
        let info = serde_json::json!({ "sources": [
            source("a", 0, 900),    // heartbeats: caught up
            source("b", 12, 10),    // still copying
            source("c", 0, -1),     // never heard from
            source("d", 0, 6_000),  // silent for 6 s (its lag is from before)
            failing,
            // f: no source at all
        ] });
        let states: Vec<SourceState> =
            source_states(&info, &hosts).into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, [CaughtUp, Copying, Silent, Silent, Silent, Silent]);
        // Between current and silent: waited for.
        let info = serde_json::json!({ "sources": [source("a", 0, 2_500)] });
        assert_eq!(source_states(&info, &hosts[..1]), [("a".to_owned(), Copying)]);
    }

    #[test]
    fn a_hub_older_than_2_10_14_is_warned_about() {
        for old in ["2.9.10", "v2.9.25", "2.10.13", "2.10.0-RC.1", "2.10.14-RC.1", "1.4.1"] {
            let warning = hub_version_warning(old);
            assert!(warning.is_some_and(|w| w.contains(old) && w.contains("2.10.14")), "{old}");
        }
        for new in ["2.10.14", "2.10.26", "v2.11.0", "2.12.0-beta", "2.10.15-RC.2", "3.0.0"] {
            assert_eq!(hub_version_warning(new), None, "{new}");
        }
        // Unreadable: not judged.
        assert_eq!(hub_version_warning("dev"), None);
        assert_eq!(hub_version_warning(""), None);
    }
}
