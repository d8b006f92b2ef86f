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
/// creates a new central consumer (a source nats-server has not heard from within
/// [`SOURCE_SILENT`] is not waited for).
pub const SOURCE_WAIT: Duration = Duration::from_secs(120);

/// A hub's source not heard from for this long (no message, no heartbeat: the leaf is
/// unreachable) is not waited for.
const SOURCE_SILENT: Duration = Duration::from_secs(5);

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
                match self.lookup_consumer(&spec.name).await {
                    Ok(_) => {}
                    Err(BusError::NotProvisioned { what })
                        if what.starts_with("durable consumer") =>
                    {
                        new = true
                    }
                    Err(e) => return Err(e),
                }
            }
            if new {
                let settled = self.settled_sources(hosts, setup.source_wait).await?;
                start = Some(settled.last.saturating_add(1));
                done.push(settled.describe());
            }
        }
        for spec in consumers {
            let created = self.ensure_consumer_at(spec, start).await?;
            done.push(format!(
                "consumer {}: {} (ack wait {:?}, {} attempts)",
                spec.name,
                if created { "created, starting at new events" } else { "updated" },
                spec.ack_wait,
                spec.max_deliver
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
        let existing = match self.lookup_consumer(&spec.name).await {
            Ok(consumer) => Some(
                pull::Config::try_from_consumer_config(consumer.cached_info().config.clone())
                    .map_err(|e| BusError::nats("read consumer config", e))?,
            ),
            Err(BusError::NotProvisioned { what }) if what.starts_with("durable consumer") => None,
            Err(e) => return Err(e),
        };
        let created = existing.is_none();
        let stream =
            self.js().get_stream(&ns.stream).await.map_err(|e| BusError::nats("get stream", e))?;
        let mut config = spec.config(ns, existing);
        if let (true, Some(start_sequence)) = (created, start) {
            config.deliver_policy =
                async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence };
        }
        stream.create_consumer(config).await.map_err(|e| BusError::nats("create consumer", e))?;
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
                "central consumers start at stream sequence {}: the sources of {} had not caught up after {:.1?} (leaf unreachable or still copying); what they copy later reaches the notifier as new (events older than the markers' 7 days are ignored)",
                self.last.saturating_add(1),
                self.behind.join(", "),
                self.waited
            )
        }
    }
}

impl Bus {
    /// At the hub: waits, up to `bound`, until every host's source has copied what its leaf
    /// holds (no lag, heard from lately) and the stream's last sequence is the same a second
    /// later; a source silent since setup began (its leaf unreachable) is not waited for
    /// beyond [`SOURCE_SILENT`].
    async fn settled_sources(
        &self,
        hosts: &[String],
        bound: Duration,
    ) -> Result<Settled, BusError> {
        let began = tokio::time::Instant::now();
        let mut previous = None;
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
            let waited = began.elapsed();
            let mut behind = sources_behind(&info, hosts);
            if waited >= SOURCE_SILENT {
                // Silent from the start: nothing to wait for until its leaf is back.
                behind.retain(|(_, heard)| *heard);
            }
            if (behind.is_empty() && previous == Some(last)) || waited >= bound {
                let behind =
                    sources_behind(&info, hosts).into_iter().map(|(host, _)| host).collect();
                return Ok(Settled { last, behind, waited });
            }
            previous = behind.is_empty().then_some(last);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The hosts (of `hosts`) whose source in a hub's stream info (`$JS.API.STREAM.INFO`'s
/// answer) has not caught up, each with whether nats-server has heard from it at all. Caught
/// up: no error, no lag, heard from within [`SOURCE_SILENT`]. A host without a source is
/// behind, never heard from.
fn sources_behind(info: &serde_json::Value, hosts: &[String]) -> Vec<(String, bool)> {
    let sources = info.get("sources").and_then(|s| s.as_array()).cloned().unwrap_or_default();
    hosts
        .iter()
        .filter_map(|host| {
            let api = crate::origin::leaf_api_prefix(host);
            let source = sources.iter().find(|s| {
                s.pointer("/external/api").and_then(|a| a.as_str()) == Some(api.as_str())
            });
            // `active`: nanoseconds since nats-server last heard from the source, -1 never.
            let active = source.and_then(|s| s.get("active")).and_then(|a| a.as_i64());
            let heard = active.is_some_and(|a| a >= 0);
            let caught_up = source.is_some_and(|s| {
                s.get("error").is_none_or(|e| e.is_null())
                    && s.get("lag").and_then(|l| l.as_u64()) == Some(0)
                    && active.is_some_and(|a| {
                        a >= 0 && u128::try_from(a).unwrap_or(u128::MAX) < SOURCE_SILENT.as_nanos()
                    })
            });
            (!caught_up).then(|| (host.clone(), heard))
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
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(str::parse::<u64>);
    let found = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
    (found < HUB_MIN_VERSION).then(|| {
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
    use super::{hub_version_warning, sources_behind};

    #[test]
    fn a_source_is_caught_up_without_lag_error_or_silence() {
        let hosts = vec!["vps-a".to_owned(), "vps-b".to_owned(), "vps-c".to_owned()];
        let source = |host: &str, lag: u64, active: i64| {
            serde_json::json!({
                "name": "STEWARD",
                "external": { "api": format!("$JS.{host}.API"), "deliver": "" },
                "lag": lag,
                "active": active,
            })
        };
        let info = |sources: Vec<serde_json::Value>| serde_json::json!({ "sources": sources });
        let up = info(vec![
            source("vps-a", 0, 900_000_000),
            source("vps-b", 0, 10_000_000),
            source("vps-c", 0, 0),
        ]);
        assert_eq!(sources_behind(&up, &hosts), vec![]);
        let mixed = info(vec![
            source("vps-a", 12, 1_000_000),    // still copying
            source("vps-b", 0, -1),            // never heard from
            source("vps-c", 0, 6_000_000_000), // silent for 6 s
        ]);
        let behind = sources_behind(&mixed, &hosts);
        assert_eq!(
            behind,
            vec![("vps-a".into(), true), ("vps-b".into(), false), ("vps-c".into(), true)]
        );
        let mut failing = source("vps-a", 0, 1_000);
        failing["error"] = serde_json::json!({ "code": 500, "description": "x" });
        let one = vec!["vps-a".to_owned(), "vps-d".to_owned()];
        // A failing source, and a host the stream has no source for.
        assert_eq!(
            sources_behind(&info(vec![failing]), &one),
            vec![("vps-a".into(), true), ("vps-d".into(), false)]
        );
    }

    #[test]
    fn a_hub_older_than_2_10_14_is_warned_about() {
        for old in ["2.9.10", "v2.9.25", "2.10.13", "2.10.0-RC.1", "1.4.1"] {
            let warning = hub_version_warning(old);
            assert!(warning.is_some_and(|w| w.contains(old) && w.contains("2.10.14")), "{old}");
        }
        for new in ["2.10.14", "2.10.26", "v2.11.0", "2.12.0-beta", "3.0.0"] {
            assert_eq!(hub_version_warning(new), None, "{new}");
        }
        // Unreadable: not judged.
        assert_eq!(hub_version_warning("dev"), None);
        assert_eq!(hub_version_warning(""), None);
    }
}
