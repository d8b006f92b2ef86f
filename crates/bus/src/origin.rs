//! Where a message read at the hub came from, under the leaf-node topology (docs/scaling.md):
//! the one check between what a host's leaf hands the hub and what the centre acts on.
//!
//! The hub's stream and its copies of the agents' buckets source every host's leaf with a
//! filter on that host's subjects (`host.<h>.>`, `$KV.<bucket>.<h>.>`), but the filter is
//! applied by the source's consumer on the leaf, which whoever is root on that host controls:
//! B's root can run its own consumer on the hub's delivery subject and hand the hub anything
//! (`crates/bus/tests/leaf_nodes.rs`, `a_hostile_leaf_that_ignores_its_filter_...`). What
//! the server does enforce is the origin stamp: the hub writes `Nats-Stream-Source` itself on
//! every sourced message, naming the source it came in by (a header the leaf set is
//! replaced, seen on nats-server 2.9.10), and each host's source is its leaf's API prefix,
//! reachable only through that host's link. So every central read (the central services'
//! consumers, replays, the CLI's reads of the sourced buckets) asks here whether the
//! message's origin is the host its subject or key names, and drops it if not.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use sha2::{Digest, Sha256};

use crate::{BusConfig, Topology};

/// The header nats-server 2.9 writes on a message a stream took from one of its sources:
/// `<source index name> <sequence in the origin stream>`.
pub const STREAM_SOURCE: &str = "Nats-Stream-Source";

static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Messages this process refused because their origin was not the host they name (since it
/// started): each is also logged as a warning.
pub fn refused_origins() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// The API prefix through which the hub reaches `host`'s leaf (its JetStream domain).
pub(crate) fn leaf_api_prefix(host: &str) -> String {
    format!("$JS.{host}.API")
}

/// nats-server 2.9's index name of an external source (`setIndexName`): the origin stream's
/// name, `:`, and the 8-character hash of its API prefix (sha256, each of the first 8 bytes
/// mod 62 into `0-9A-Za-z`). It is the first word of the `Nats-Stream-Source` header.
fn source_index_name(stream: &str, api_prefix: &str) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let digest = Sha256::digest(api_prefix.as_bytes());
    let hash: String =
        digest.iter().take(8).map(|b| char::from(DIGITS[usize::from(*b) % DIGITS.len()])).collect();
    format!("{stream}:{hash}")
}

/// The source index name the hub stamps on what it takes from `host`'s leaf for `stream`.
fn stamp_of(stream: &str, host: &str) -> String {
    source_index_name(stream, &leaf_api_prefix(host))
}

/// Whether a message the hub holds may be believed: one taken from a host's leaf (stamped by
/// the hub with that source's index name) must be about that host (`about`: the host its
/// subject or key names; `None` for a central subject or a key of no host). The stamp
/// expected is worked out from `about` alone, not looked up in this process's host list: a
/// host added since it started is believed once its source brings its own, and a removed
/// host's history stays readable. Off the hub every message passes (a leaf and a single
/// server have no sources). `hosted_subject`: `about` comes from a stream subject
/// (`host.<h>.…`), which only the host's source may bring to the hub; a key of a sourced
/// bucket may also be a central participant's. `anchor`: the hub stream's own subject of a
/// host (`stream::source_anchor`), refused whatever it carries.
fn judge(
    cfg: &BusConfig,
    stream: &str,
    headers: Option<&HeaderMap>,
    about: Option<&str>,
    hosted_subject: bool,
    anchor: bool,
) -> Result<(), String> {
    if !matches!(cfg.topology(), Topology::Hub { .. }) {
        return Ok(());
    }
    if anchor {
        return Err("the hub stream's anchor subject, which nothing may publish".into());
    }
    let mut stamps = headers.into_iter().flat_map(|h| h.get_all(STREAM_SOURCE));
    let stamp = stamps.next();
    if stamps.next().is_some() {
        return Err(format!("more than one {STREAM_SOURCE} header"));
    }
    // The header's first word; later servers append more words (filter, transform).
    let index = stamp.map(|s| s.as_str().split(' ').next().unwrap_or_default());
    // Which leaf a refused message came by, for the warning: the hub writes the stamp of
    // every sourced message itself (a leaf's own is replaced), and the anchor, the one host
    // subject a stamp could be forged on at the hub, is refused above.
    let came_by = |index: &str| {
        cfg.hosts
            .iter()
            .find(|h| stamp_of(stream, h) == index)
            .map_or_else(|| format!("source {index}"), |h| format!("host {h}'s leaf"))
    };
    match (index, about) {
        (Some(index), Some(host)) if index == stamp_of(stream, host) => Ok(()),
        (Some(index), Some(host)) => Err(format!("from {}, about {host}", came_by(index))),
        (Some(index), None) => {
            Err(format!("from {}, about no host (a central subject or key)", came_by(index)))
        }
        (None, Some(host)) if hosted_subject => {
            Err(format!("about {host}, but not taken from {host}'s leaf"))
        }
        (None, _) => Ok(()),
    }
}

/// [`judge`] for a stream message on `subject` (namespace prefix included); a refusal is
/// logged and counted here, so every reader says the same.
pub(crate) fn stream_message(
    cfg: &BusConfig,
    subject: &str,
    headers: Option<&HeaderMap>,
    reader: &str,
) -> bool {
    let ns = &cfg.namespace;
    let unprefixed = ns.unprefixed(subject);
    let about = unprefixed.and_then(|s| steward_events::split_address(s).0);
    let anchor = about.is_some_and(|h| crate::stream::source_anchor(ns, h) == subject);
    verdict(judge(cfg, &ns.stream, headers, about, true, anchor), subject, reader)
}

/// [`judge`] for the entry of `key` in the bucket stream `stream` (`KV_<bucket>`).
pub(crate) fn bucket_entry(
    cfg: &BusConfig,
    stream: &str,
    key: &str,
    headers: Option<&HeaderMap>,
    reader: &str,
) -> bool {
    let about = key.split_once('.').map(|(host, _)| host);
    verdict(
        judge(cfg, stream, headers, about, false, false),
        &format!("{stream} key {key}"),
        reader,
    )
}

fn verdict(judged: Result<(), String>, what: &str, reader: &str) -> bool {
    match judged {
        Ok(()) => true,
        Err(reason) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(what, reader, reason = %reason,
                "refused a message whose origin is not the host it names (a host's leaf passing off another's events or records)");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_name_is_nats_servers() {
        // Read off the `Nats-Stream-Source` headers nats-server 2.9.10 wrote at a hub.
        assert_eq!(source_index_name("STEWARD", "$JS.vps-a.API"), "STEWARD:VTo6fgI0");
        assert_eq!(source_index_name("STEWARD", "$JS.vps-b.API"), "STEWARD:J7OS1RmN");
        assert_eq!(
            source_index_name("KV_STEWARD_UPDATES", "$JS.vps-b.API"),
            "KV_STEWARD_UPDATES:J7OS1RmN"
        );
    }

    fn hub() -> BusConfig {
        BusConfig {
            hosts: vec!["vps-a".into(), "vps-b".into()],
            domain: Some("hub".into()),
            ..BusConfig::default()
        }
    }

    fn stamped(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(STREAM_SOURCE, value);
        h
    }

    #[test]
    fn only_a_hosts_own_source_may_bring_its_subjects_and_keys() {
        let cfg = hub();
        let from_b = stamped("STEWARD:J7OS1RmN 12");
        assert!(stream_message(&cfg, "host.vps-b.health.failed", Some(&from_b), "t"));
        assert!(!stream_message(&cfg, "host.vps-a.health.failed", Some(&from_b), "t"));
        assert!(!stream_message(&cfg, "notify.sent", Some(&from_b), "t"));
        assert!(!stream_message(&cfg, "dlq.updater-vps-b", Some(&from_b), "t"));
        // Published at the hub: central subjects yes, a host's subject no.
        assert!(stream_message(&cfg, "notify.sent", None, "t"));
        assert!(!stream_message(&cfg, "host.vps-a._sourced", None, "t"));
        // The anchor subject: refused whatever its stamp, its own host's included.
        assert!(!stream_message(&cfg, "host.vps-b._sourced", Some(&from_b), "t"));
        let from_a = stamped("STEWARD:VTo6fgI0 1");
        assert!(!stream_message(&cfg, "host.vps-b._sourced", Some(&from_a), "t"));
        // A host the process does not know yet (added since it started): its own stamp is
        // believed, another's is not.
        let from_c = stamped(&format!("{} 4", stamp_of("STEWARD", "vps-c")));
        assert!(stream_message(&cfg, "host.vps-c.health.failed", Some(&from_c), "t"));
        assert!(!stream_message(&cfg, "host.vps-a.health.failed", Some(&from_c), "t"));
        // The longer stamp of later servers (filter and transform appended).
        let longer = stamped("STEWARD:J7OS1RmN 12 host.vps-b.> >");
        assert!(stream_message(&cfg, "host.vps-b.health.failed", Some(&longer), "t"));
        assert!(!stream_message(&cfg, "host.vps-a.health.failed", Some(&longer), "t"));
        // A stamp of no known source, or two stamps.
        assert!(!stream_message(&cfg, "host.vps-b.x.y", Some(&stamped("STEWARD:forged 1")), "t"));
        let mut two = from_b.clone();
        two.append(STREAM_SOURCE, "STEWARD:J7OS1RmN 13");
        assert!(!stream_message(&cfg, "host.vps-b.x.y", Some(&two), "t"));
        // The stamp names the stream it came from: a bucket's stamp is not the stream's.
        let kv_b = stamped("KV_STEWARD_UPDATES:J7OS1RmN 3");
        assert!(!stream_message(&cfg, "host.vps-b.x.y", Some(&kv_b), "t"));
        assert!(bucket_entry(&cfg, "KV_STEWARD_UPDATES", "vps-b.gitea", Some(&kv_b), "t"));
        assert!(!bucket_entry(&cfg, "KV_STEWARD_UPDATES", "vps-a.gitea", Some(&kv_b), "t"));
        assert!(!bucket_entry(&cfg, "KV_STEWARD_UPDATES", "gitea", Some(&kv_b), "t"));
        assert!(bucket_entry(&cfg, "KV_STEWARD_UPDATES", "vps-a.gitea", None, "t"));
        // Off the hub nothing is judged.
        let leaf = BusConfig { domain: Some("vps-b".into()), ..hub() };
        assert!(stream_message(&leaf, "host.vps-a.health.failed", Some(&from_b), "t"));
        let single = BusConfig::default();
        assert!(stream_message(&single, "host.vps-a.health.failed", Some(&from_b), "t"));
        assert!(bucket_entry(&single, "KV_STEWARD_UPDATES", "vps-a.gitea", Some(&from_b), "t"));
    }
}
