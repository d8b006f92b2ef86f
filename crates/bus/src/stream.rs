//! The `STEWARD` stream: every Steward subject, on file storage, for the retention period.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, External, Source, StorageType};
use steward_events::{EventData, MAX_EVENT_BYTES};

use crate::{Bus, BusError, Topology};

impl Bus {
    /// Creates the stream, or updates it to the current configuration. Provisioning only
    /// ([`Bus::setup`]): a service's NATS user may not do this.
    ///
    /// `create_or_update` rather than `get_or_create`: the latter ignores a changed subject
    /// list or duplicate window on an existing stream.
    pub async fn ensure_stream(&self) -> Result<(), BusError> {
        let ns = self.namespace();
        // A setup run without the routing table (a compose `up` whose setup lacks
        // STEWARD_HOSTS, an events import) must not turn a routed installation into an
        // unrouted one: every participant would be refused at its next start.
        if self.cfg.hosts.is_empty() {
            if let Ok(found) = self.js().get_stream(&ns.stream).await {
                let described = found.cached_info().config.description.as_deref();
                if let Some(table) = described.and_then(described_hosts).filter(|t| !t.is_empty()) {
                    return Err(BusError::Misrouted {
                        stream: ns.stream.clone(),
                        ours: "unset".into(),
                        provisioned: table.join(","),
                    });
                }
            }
        }
        let (subjects, sources) = match self.cfg.topology() {
            Topology::Single => (stream_subjects(&ns.prefix), None),
            // A host's leaf stores what its agents publish and what the centre addresses to
            // them, and its agents' dead letters; nothing else reaches it.
            Topology::Leaf { host } => {
                (vec![ns.host_subjects(host), ns.dead_letter_subject(">")], None)
            }
            // The hub stores the centre's own events and takes every host's from its leaf's
            // stream (in order, each once: a source keeps its position across a broken link).
            // It must not hold `host.>` itself: a request for a cut-off host would then be
            // acknowledged by the hub and never reach the host, instead of failing.
            Topology::Hub { hosts } => {
                let host_family = format!("{}{}.>", ns.prefix, steward_events::HOST_FAMILY);
                let mut subjects: Vec<String> =
                    stream_subjects(&ns.prefix).into_iter().filter(|s| *s != host_family).collect();
                subjects.extend(hosts.iter().map(|h| source_anchor(ns, h)));
                let sources = leaf_sources(ns, hosts, &ns.stream, |h| ns.host_subjects(h));
                (subjects, Some(sources))
            }
        };
        if let Topology::Hub { .. } = self.cfg.topology() {
            self.anchor_hub_stream(&subjects).await?;
        }
        let config = Config {
            name: ns.stream.clone(),
            description: Some(describe(&self.cfg.hosts)),
            subjects,
            sources,
            storage: StorageType::File,
            max_age: self.cfg.retention,
            duplicate_window: self.cfg.duplicate_window,
            discard: DiscardPolicy::Old,
            // Headers of a dead letter add a little to the largest event.
            max_message_size: (MAX_EVENT_BYTES + 16 * 1024) as i32,
            num_replicas: self.cfg.replicas,
            ..Default::default()
        };
        self.create_or_update_stream(config)
            .await
            .map_err(|e| BusError::Stream { stream: ns.stream.clone(), reason: e.to_string() })
    }

    /// Creates or updates the stream (or bucket stream) of `config`. On a host's leaf a new one
    /// begins at its creation time in microseconds ([`first_sequence_now`]), not at 1: the
    /// hub's source of it resumes after the last sequence it copied, and after a rebuild (the
    /// leaf's volume lost) nats-server starts that source past the new stream's last sequence
    /// when it is below, so what a rebuilt host made before its source came back would never
    /// reach the centre (`leaf_nodes.rs`, `a_rebuilt_hosts_new_events_reach_the_hub`).
    ///
    /// Created first with a subject nobody publishes to ([`starting_subject`]), moved to its
    /// first sequence (a purge up to it: nats-server 2.9 has no `first_seq`), then given its
    /// subjects: nothing can be stored, and so purged, before. Killed between, the
    /// next setup finds it still on that subject and finishes. Two setups at once: the purge
    /// is only of an empty stream still on that subject and never moved, read just before.
    pub(crate) async fn create_or_update_stream(&self, config: Config) -> Result<(), String> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        use async_nats::jetstream::ErrorCode;
        if let Topology::Leaf { .. } = self.cfg.topology() {
            let starting = starting_subject(&config.name);
            let first = first_sequence_now();
            let mut stream = match self.js().get_stream(&config.name).await {
                Ok(found) => found,
                Err(e) => match e.kind() {
                    GetStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        let placeholder = Config {
                            subjects: vec![starting.clone()],
                            sources: None,
                            ..config.clone()
                        };
                        let created = self.js().create_stream(placeholder).await;
                        let created = created.map_err(|e| e.to_string())?;
                        steward_failpoints::failpoint!("setup:stream-created");
                        created
                    }
                    _ => return Err(e.to_string()),
                },
            };
            // Read now, not from the lookup: still on its starting subject, empty and never
            // moved. One already moved (by this run, or by a setup killed or running
            // beside this one) is not purged again.
            let info = stream.info().await.map_err(|e| e.to_string())?;
            let unmoved = info.config.subjects == [starting]
                && info.state.messages == 0
                && info.state.first_sequence <= 1;
            if unmoved {
                stream
                    .purge()
                    .sequence(first)
                    .await
                    .map_err(|e| format!("move the new stream to its first sequence: {e}"))?;
                steward_failpoints::failpoint!("setup:stream-moved");
            }
        }
        self.js().create_or_update_stream(config).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// [`ensure_stream`](Self::ensure_stream), retried while NATS is not reachable yet.
    pub(crate) async fn ensure_stream_within(&self, bound: Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.ensure_stream().await {
                Ok(()) => return Ok(()),
                // An answer, not NATS starting: waiting changes nothing.
                Err(e @ BusError::Misrouted { .. }) => return Err(e),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "stream not ready yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(match e {
                        BusError::Stream { stream, reason } => BusError::Connect {
                            url: steward_events::redact_url(&self.cfg.url),
                            reason: format!("stream {stream} not ready after {bound:?}: {reason}"),
                        },
                        other => other,
                    })
                }
            }
        }
    }

    /// Waits up to `bound` for the stream to be there (NATS may still be starting, or
    /// `steward setup` may not have run yet); never creates or changes it.
    pub(crate) async fn await_stream(&self, bound: Duration) -> Result<(), BusError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        use async_nats::jetstream::ErrorCode;
        let stream = self.namespace().stream.clone();
        let deadline = tokio::time::Instant::now() + bound;
        let mut delay = Duration::from_millis(100);
        loop {
            let missing = match self.js().get_stream(&stream).await {
                Ok(found) => {
                    let description = found.cached_info().config.description.as_deref();
                    return self.check_routing(description);
                }
                Err(e) => match e.kind() {
                    GetStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        None
                    }
                    _ => Some(e),
                },
            };
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(match missing {
                    None => BusError::NotProvisioned { what: format!("stream {stream}") },
                    Some(e) => BusError::Nats {
                        op: "look up stream",
                        reason: format!("stream {stream} not reachable after {bound:?}: {e}"),
                    },
                });
            }
            match &missing {
                None => {
                    tracing::warn!(%stream, "stream does not exist yet; waiting for `steward setup`")
                }
                Some(e) => {
                    tracing::warn!(%stream, error = %e, "stream not reachable yet; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// The hub's sources of the stream (or bucket stream) `stream` of every host's leaf: through
/// the leaf's JetStream domain, delivered under that host's own prefix
/// ([`Namespace::leaf_delivery`], which only its link may publish under), each filtered on
/// that host's own subjects (`filter(host)`). One filter per source (NATS 2.9), and one source
/// per host: nats-server 2.9 indexes an external source by its stream name and API prefix
/// only, so a second source of the same leaf stream with another filter would be the same
/// source. The filter is the leaf's to apply, so it is not trusted alone: every central read
/// checks each message's origin ([`crate::origin`]).
pub(crate) fn leaf_sources(
    ns: &crate::Namespace,
    hosts: &[String],
    stream: &str,
    filter: impl Fn(&str) -> String,
) -> Vec<Source> {
    hosts
        .iter()
        .map(|h| Source {
            name: stream.to_owned(),
            filter_subject: Some(filter(h)),
            external: Some(External {
                api_prefix: crate::origin::leaf_api_prefix(h),
                delivery_prefix: Some(ns.leaf_delivery(h)),
            }),
            ..Default::default()
        })
        .collect()
}

/// A subject of `host`'s on the hub's stream that nothing publishes (`host.<host>._sourced`:
/// no event type is one token). nats-server 2.9 checks a source's filter against the
/// subjects of the *local* stream named as the source, which for the hub is the hub's own
/// `STEWARD`, when the stream is updated (not when it is created): without a subject
/// overlapping `host.<host>.>` every later `steward setup` of the hub would be refused ("filter
/// subject does not overlap with any origin stream subject"). The hub must not hold `host.>`
/// (a request for a cut-off host would be acknowledged there and never delivered); this one
/// subject is never a request. The host's link may not publish it (`LeafLink::deny`), and every
/// central read refuses it whatever its stamp (`origin`).
pub(crate) fn source_anchor(ns: &crate::Namespace, host: &str) -> String {
    ns.subject(&format!("{}.{host}._sourced", steward_events::HOST_FAMILY))
}

impl Bus {
    /// Before the hub's stream is given filtered sources, its subjects must already hold each
    /// host's anchor ([`source_anchor`]): a stream provisioned before (sources unfiltered, no
    /// anchors) is first updated with the new subjects and its sources as they are.
    async fn anchor_hub_stream(&self, subjects: &[String]) -> Result<(), BusError> {
        let ns = self.namespace();
        let Ok(found) = self.js().get_stream(&ns.stream).await else { return Ok(()) };
        let mut config = found.cached_info().config.clone();
        if subjects.iter().all(|s| config.subjects.contains(s)) {
            return Ok(());
        }
        config.subjects = subjects.to_vec();
        self.js()
            .update_stream(config)
            .await
            .map(|_| ())
            .map_err(|e| BusError::Stream { stream: ns.stream.clone(), reason: e.to_string() })
    }
}

/// The only subject of a leaf's new stream until its first sequence is set
/// ([`Bus::create_or_update_stream`]): outside every Steward subject and every user's
/// permissions, so nothing is published to it.
pub fn starting_subject(stream: &str) -> String {
    format!("_STEWARD_STARTING.{stream}")
}

/// The first sequence of a leaf's new stream: now, in microseconds since the epoch. A rebuilt
/// leaf's stream so begins past every sequence the one before it reached, unless that one
/// stored more than a message per microsecond of its life (or this host's clock went back).
/// Below 2^53 until the year 2255, so JSON readers keep it exact.
fn first_sequence_now() -> u64 {
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What `steward setup` writes as the stream's description: what it is for, and the routing
/// table it was provisioned with (`hosts: vps-a,vps-b`, or `hosts: none`), which every
/// participant compares with its own `STEWARD_HOSTS` when it connects.
fn describe(hosts: &[String]) -> String {
    let table = if hosts.is_empty() { "none".to_owned() } else { hosts.join(",") };
    format!("Steward events: every event is kept for the audit trail; {HOSTS_MARK}{table}")
}

const HOSTS_MARK: &str = "hosts: ";

/// The routing table a stream's description names: `None` when it names none (provisioned
/// before the description carried it), `Some(empty)` for `none`.
fn described_hosts(description: &str) -> Option<Vec<String>> {
    let (_, table) = description.rsplit_once(HOSTS_MARK)?;
    let table = table.trim();
    Some(match table {
        "none" => vec![],
        _ => table.split(',').map(|h| h.trim().to_owned()).collect(),
    })
}

impl Bus {
    /// A participant whose `STEWARD_HOSTS` is not the table `steward setup` provisioned
    /// would publish and ask where nobody reads (a notifier without the table asks for
    /// approval links no routed updater answers): refused at start, naming both. A stream
    /// whose description names no table (provisioned by an older setup) is not judged.
    fn check_routing(&self, description: Option<&str>) -> Result<(), BusError> {
        let Some(provisioned) = description.and_then(described_hosts) else { return Ok(()) };
        let mut ours = self.cfg.hosts.clone();
        let mut theirs = provisioned.clone();
        ours.sort();
        theirs.sort();
        if ours == theirs {
            return Ok(());
        }
        let show = |h: &[String]| if h.is_empty() { "unset".to_owned() } else { h.join(",") };
        Err(BusError::Misrouted {
            stream: self.namespace().stream.clone(),
            ours: show(&self.cfg.hosts),
            provisioned: show(&provisioned),
        })
    }
}

/// One wildcard per event family (`update.>` ...) plus the dead letters and the events
/// addressed to one host (`host.>`, host routing), all under `prefix`.
fn stream_subjects(prefix: &str) -> Vec<String> {
    let mut families: Vec<&str> =
        EventData::ALL_TYPES.iter().filter_map(|t| t.split('.').next()).collect();
    families.push("dlq");
    families.push(steward_events::HOST_FAMILY);
    families.sort_unstable();
    families.dedup();
    families.into_iter().map(|f| format!("{prefix}{f}.>")).collect()
}

impl Bus {
    /// Deletes this namespace's stream and KV buckets. For tests and uninstalls: every event
    /// and all state are gone afterwards.
    pub async fn destroy_namespace(&self) -> Result<(), BusError> {
        use futures::TryStreamExt;
        let ns = self.namespace();
        let kv_prefix = format!("KV_{}_", ns.stream);
        let names: Vec<String> = self
            .js()
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| BusError::nats("list streams", e))?;
        for name in names.into_iter().filter(|n| *n == ns.stream || n.starts_with(&kv_prefix)) {
            self.js().delete_stream(&name).await.map_err(|e| BusError::nats("delete stream", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subjects_cover_every_family_once() {
        let s = super::stream_subjects("p.");
        for want in [
            "p.watch.>",
            "p.image.>",
            "p.update.>",
            "p.backup.>",
            "p.restore.>",
            "p.verify.>",
            "p.health.>",
            "p.notify.>",
            "p.certs.>",
            "p.rollback.>",
            "p.deploy.>",
            "p.dlq.>",
            "p.host.>",
        ] {
            assert!(s.contains(&want.to_string()), "{want} missing from {s:?}");
        }
        assert_eq!(s.len(), 13);
    }

    #[test]
    fn the_description_carries_the_routing_table() {
        use super::{describe, described_hosts};
        let table = vec!["vps-a".to_owned(), "vps-b".to_owned()];
        assert_eq!(described_hosts(&describe(&table)), Some(table));
        assert_eq!(described_hosts(&describe(&[])), Some(vec![]));
        // An older setup's description names no table: not judged.
        assert_eq!(
            described_hosts("Steward events: every event is kept for the audit trail"),
            None
        );
    }
}
