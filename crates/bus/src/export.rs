//! The stream and the state buckets as records, out and back in: what a backup stores so the
//! audit trail survives the host (`steward-backup` exports, `steward events import` imports).
//!
//! An export is a header, then every message of the stream in order (subject without the
//! namespace's prefix, headers, payload), then every value of the state buckets. An import
//! checks every record before it publishes one, keeps each message's `Nats-Msg-Id` (so a
//! message the stream holds already is skipped, however long ago it was imported), and never
//! overwrites a value.
//!
//! Invariant: an import publishes only into a stream without durable consumers, so no service
//! acts on the old events as new ones: `steward setup` creates the consumers after it, and
//! they start at new events. At the hub of the leaf-node topology (docs/scaling.md) it
//! publishes no host's subject and writes no host's record: the hub's stream does not hold
//! `host.<h>.>`, so such a publish is stored by that host's leaf, across its link, where the
//! host's agents' consumers run (an old `update.approved` would be applied again); and the
//! hub gets every host's history back from its leaf by its sources anyway. On a host's leaf it
//! publishes none of the host's events (`host.<h>.…`): the hub holds them already, and the
//! leaf's stream (begun past the old one's sequences) would hand them to the hub again as new
//! (docs/runbooks.md, "A rebuilt host under leaf nodes"); its dead letters and records, which
//! only the leaf held, are imported.

use std::collections::{BTreeSet, HashSet};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use steward_events::Event;
use time::OffsetDateTime;

use crate::{publish, Bus, BusError, Setup, Topology};

/// The export format this build writes and reads.
pub const EXPORT_FORMAT: u32 = 1;

/// The largest payload or value accepted back (the catalog's bound on an event).
const MAX_PAYLOAD: usize = 1 << 20;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum ExportRecord {
    /// First: what follows.
    Header {
        /// [`EXPORT_FORMAT`].
        format: u32,
        /// The stream it was read from.
        stream: String,
        /// When the export began.
        #[serde(with = "time::serde::rfc3339")]
        exported_at: OffsetDateTime,
    },
    /// A message of the stream.
    Message(ExportedMessage),
    /// A value of a state bucket.
    Value(ExportedValue),
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedMessage {
    /// Its sequence in the exported stream.
    pub sequence: u64,
    /// When the stream stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub stored_at: OffsetDateTime,
    /// Its subject without the namespace's prefix (the event type, or `dlq.<consumer>`).
    pub subject: String,
    /// Its headers (`Nats-Msg-Id` among them), in order.
    pub headers: Vec<(String, String)>,
    /// The payload, when it is UTF-8 (every event is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<Vec<u8>>,
}

/// A value of a state bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedValue {
    /// The bucket's name without the namespace.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Its revision when exported.
    pub revision: u64,
    /// The value (UTF-8: every record is JSON).
    pub value: String,
}

impl ExportedMessage {
    /// Its payload's bytes.
    pub fn payload(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_bytes) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(bytes)) => bytes.clone(),
            (None, None) => vec![],
        }
    }

    /// `event` as a message of an export, under its own id (what an import keys on), at
    /// `sequence` (0: not read from a stream).
    pub fn of_event(
        sequence: u64,
        stored_at: OffsetDateTime,
        event: &Event,
    ) -> Result<Self, steward_events::EncodeError> {
        let payload = String::from_utf8_lossy(&event.encode()?).into_owned();
        Ok(Self {
            sequence,
            stored_at,
            subject: event.event_type().to_owned(),
            headers: vec![(NATS_MSG_ID.to_owned(), event.id.to_string())],
            payload: Some(payload),
            payload_bytes: None,
        })
    }

    /// Its `Nats-Msg-Id`.
    pub fn msg_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(NATS_MSG_ID))
            .map(|(_, value)| value.as_str())
    }
}

const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// An export being read: [`Export::next`] until `None`.
pub struct Export {
    header: Option<ExportRecord>,
    messages: Option<crate::replay::StreamReader>,
    remaining: u64,
    skipped: u64,
    prefix: String,
    values: std::vec::IntoIter<ExportedValue>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export").field("remaining", &self.remaining).finish_non_exhaustive()
    }
}

/// The state buckets of an installation (the markers of handled events are not state: a
/// rebuilt host's consumers start at new events).
pub fn state_buckets() -> Vec<String> {
    Setup::steward().state_buckets
}

impl Bus {
    /// Starts exporting the stream (the messages it holds now) and the state buckets. The
    /// buckets are read first (they are small); one the server says does not exist is
    /// skipped, one it cannot be asked about fails the export (a backup must not leave a
    /// bucket out without a word because NATS was slow to answer).
    pub async fn export(&self) -> Result<Export, BusError> {
        let ns = self.namespace().clone();
        let mut values = vec![];
        for bucket in state_buckets() {
            let Some(kv) = crate::state::existing_kv(self, &ns.bucket(&bucket)).await? else {
                continue;
            };
            let mut keys = kv.keys().await.map_err(|e| BusError::nats("list keys", e))?;
            let mut names = vec![];
            while let Some(key) = keys.next().await {
                names.push(key.map_err(|e| BusError::nats("list keys", e))?);
            }
            for key in names {
                let Some(entry) =
                    kv.entry(&key).await.map_err(|e| BusError::nats("kv entry", e))?
                else {
                    continue;
                };
                // Every state record is JSON; anything else is not Steward's to carry over.
                let Ok(value) = String::from_utf8(entry.value.to_vec()) else { continue };
                values.push(ExportedValue {
                    bucket: bucket.clone(),
                    key,
                    revision: entry.revision,
                    value,
                });
            }
        }
        let (messages, remaining) = self.read_all().await?;
        let header = ExportRecord::Header {
            format: EXPORT_FORMAT,
            stream: ns.stream.clone(),
            exported_at: OffsetDateTime::now_utc(),
        };
        Ok(Export {
            header: Some(header),
            messages: Some(messages),
            remaining,
            skipped: 0,
            prefix: ns.prefix.clone(),
            values: values.into_iter(),
        })
    }

    /// An ephemeral consumer of everything the stream holds, and how many messages that is.
    async fn read_all(&self) -> Result<(crate::replay::StreamReader, u64), BusError> {
        self.read_stream(DeliverPolicy::All, String::new()).await
    }
}

impl Export {
    /// Messages left out so far: those no import would take, by this build or a later one (a
    /// participant's forged or malformed publish the consumers refused, a message without an
    /// id), so that one such message in the stream cannot make every export refused at
    /// import. An event of a type or schema this build does not know is kept (a newer build
    /// may import it).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next record; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<ExportRecord, BusError>> {
        if let Some(header) = self.header.take() {
            return Some(Ok(header));
        }
        if let Some(messages) = &mut self.messages {
            while self.remaining > 0 {
                let msg = match messages.next().await {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => return Some(Err(e)),
                    None => return Some(Err(BusError::NotConnected)),
                };
                self.remaining = self.remaining.saturating_sub(1);
                let Ok(info) = msg.info() else { continue };
                let (sequence, stored_at) = (info.stream_sequence, info.published);
                let subject = msg
                    .subject
                    .as_str()
                    .strip_prefix(self.prefix.as_str())
                    .unwrap_or("")
                    .to_owned();
                let headers = msg
                    .headers
                    .as_ref()
                    .map(|h| {
                        h.iter()
                            .flat_map(|(name, values)| {
                                values.iter().map(move |v| (name.to_string(), v.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let (payload, payload_bytes) = match String::from_utf8(msg.payload.to_vec()) {
                    Ok(text) => (Some(text), None),
                    Err(e) => (None, Some(e.into_bytes())),
                };
                let m = ExportedMessage {
                    sequence,
                    stored_at,
                    subject,
                    headers,
                    payload,
                    payload_bytes,
                };
                if let Err((why, true)) = check_message_kind(&m) {
                    tracing::warn!(sequence, subject = %m.subject, reason = %why, "not exported: no import would take it");
                    self.skipped = self.skipped.saturating_add(1);
                    continue;
                }
                return Some(Ok(ExportRecord::Message(m)));
            }
            self.messages = None;
        }
        self.values.next().map(|v| Ok(ExportRecord::Value(v)))
    }
}

/// Why an import did nothing, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Records that are not a Steward export's; nothing was imported.
    #[error("refused, nothing was imported: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// The stream has durable consumers: they would take the old events for new ones.
    #[error("refused, nothing was imported: the stream has durable consumers ({0}), which would deliver the old events to the services as new ones; import into a NATS server before `steward setup` creates them")]
    ConsumersExist(String),
    /// The server has a JetStream domain (the leaf-node topology) but the import was not told
    /// it: it would provision the server as a single one (a hub's stream holding `host.>`).
    #[error("refused, nothing was imported: the server's JetStream domain is {0} (the leaf-node topology), but STEWARD_NATS_DOMAIN is unset; give the import the settings of this server's `steward setup` (STEWARD_NATS_DOMAIN, STEWARD_HOSTS): at the hub it leaves the hosts' events out (docs/runbooks.md, \"A rebuilt centre under leaf nodes\")")]
    DomainUnset(String),
    /// NATS failed (what was published before stays; importing again skips it).
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Messages stored.
    pub messages: u64,
    /// Messages the stream held already (same `Nats-Msg-Id`), skipped.
    pub duplicates: u64,
    /// Values written.
    pub values: u64,
    /// Values skipped because the key holds a value already.
    pub values_kept: u64,
    /// At the hub: messages on a host's subjects (`host.<h>.…`) left out (they belong to the
    /// host's leaf, which the hub's sources read them from).
    pub left_to_leaves: u64,
    /// At the hub: values of the buckets the hosts' agents write, left out (the hub's copies
    /// source each host's leaf bucket).
    pub values_left_to_leaves: u64,
    /// The hosts those left-out records name (a hostile or foreign export may name a host
    /// this installation does not have).
    pub hosts_left: BTreeSet<String>,
    /// On a host's leaf: the host's events left out (the hub holds them; published again
    /// they would reach it a second time).
    pub left_to_hub: u64,
}

/// Checks records before anything is imported: the first is a header of a format this build
/// reads, every message names an event type of the catalog (or a dead letter), carries a
/// message id and, unless a dead letter, an event of its subject's type; every value is of a
/// state bucket. Returns each problem, by record number (1-based).
pub fn check_import(records: &[ExportRecord]) -> Vec<String> {
    let mut problems = vec![];
    match records.first() {
        Some(ExportRecord::Header { format, .. }) if *format == EXPORT_FORMAT => {}
        Some(ExportRecord::Header { format, .. }) => problems
            .push(format!("record 1: export format {format} (this build reads {EXPORT_FORMAT})")),
        _ => problems.push("record 1: not an export header".into()),
    }
    let buckets = state_buckets();
    for (i, record) in records.iter().enumerate().skip(1) {
        let n = i.saturating_add(1);
        match record {
            ExportRecord::Header { .. } => problems.push(format!("record {n}: a second header")),
            ExportRecord::Message(m) => {
                if let Err(why) = check_message(m) {
                    problems.push(format!("record {n} (sequence {}): {why}", m.sequence));
                }
            }
            ExportRecord::Value(v) => {
                if !buckets.contains(&v.bucket) {
                    problems.push(format!("record {n}: {:?} is not a state bucket", v.bucket));
                } else if !valid_key(&v.key) {
                    problems.push(format!("record {n}: {:?} is not a valid key", v.key));
                } else if v.value.len() > MAX_PAYLOAD {
                    problems.push(format!("record {n}: the value is over {MAX_PAYLOAD} bytes"));
                }
            }
        }
    }
    problems
}

fn check_message(m: &ExportedMessage) -> Result<(), String> {
    check_message_kind(m).map_err(|(why, _)| why)
}

/// [`check_message`], with whether the refusal holds for any build: a message without an id,
/// with bad headers, too large, not JSON, or forged (its type or host not its subject's)
/// never imports; one of a type or schema this build does not know may import into a newer
/// one, so an export keeps it.
fn check_message_kind(m: &ExportedMessage) -> Result<(), (String, bool)> {
    // Any other subject is checked by decoding its event for it (an unknown type is refused).
    let dead_letter = m.subject.strip_prefix("dlq.").is_some_and(valid_token);
    match m.msg_id() {
        Some(id) if !id.is_empty() && id.len() <= 256 => {}
        _ => {
            return Err(("no Nats-Msg-Id (it is what makes a second import skip it)".into(), true))
        }
    }
    for (name, value) in &m.headers {
        // A NATS header name is printable ASCII without ':' (async-nats panics on any other
        // name given as a `&str`, so one here would end the import half done).
        let bad_name = name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if bad_name || value.chars().any(char::is_control) {
            return Err((format!("header {name:?} is not a valid NATS header"), true));
        }
    }
    let payload = m.payload();
    if payload.len() > MAX_PAYLOAD {
        return Err((format!("the payload is over {MAX_PAYLOAD} bytes"), true));
    }
    if !dead_letter {
        Event::decode_addressed(&m.subject, &payload).map_err(|e| {
            use steward_events::DecodeError as D;
            let forever = matches!(
                e,
                D::TooLarge { .. }
                    | D::Envelope(_)
                    | D::WrongSubject { .. }
                    | D::WrongHost { .. }
                    | D::Host { .. }
            );
            (format!("not an event of its subject {:?}: {e}", m.subject), forever)
        })?;
    }
    Ok(())
}

fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c))
}

/// The host of a host's agent's dead letter (`dlq.<service>-<host>`): kept on the host's leaf,
/// never the hub's to hold (its consumer lives on the leaf). A central consumer's dead
/// letter (`dlq.notifier`) names none.
fn dead_letter_host(subject: &str) -> Option<&str> {
    let consumer = subject.strip_prefix("dlq.")?;
    steward_events::Service::agent_and_host(consumer).map(|(_, host)| host)
}

impl Bus {
    /// Imports checked `records` ([`check_import`]; refused whole if one is wrong): creates the
    /// stream and the state buckets when missing (the provisioning identity's rights), refuses
    /// a stream with durable consumers, publishes every message the stream does not hold yet
    /// with its own `Nats-Msg-Id` and headers, in order, and writes every value whose key is
    /// empty. At the hub, a host's messages and the hosts' buckets' values are left out and
    /// counted ([`Imported::left_to_leaves`]); on a host's leaf, the host's events
    /// ([`Imported::left_to_hub`]): see the module's invariant.
    pub async fn import(&self, records: &[ExportRecord]) -> Result<Imported, ImportError> {
        let problems = check_import(records);
        if !problems.is_empty() {
            return Err(ImportError::Refused(problems));
        }
        // Without its domain the import would provision a hub or a leaf as a single server
        // (its stream holding every subject), and publish hosts' events there as new.
        if self.cfg.domain.is_none() {
            if let Some(found) = self.domain_within(self.cfg.connect_timeout).await? {
                return Err(ImportError::DomainUnset(found));
            }
        }
        let setup = Setup { consumers: vec![], ..Setup::steward() };
        self.setup(&setup).await?;
        let ns = self.namespace().clone();
        let stream =
            self.js().get_stream(&ns.stream).await.map_err(|e| BusError::nats("get stream", e))?;
        let mut durable = vec![];
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| BusError::nats("list consumers", e))?;
            if info.config.durable_name.is_some() {
                durable.push(info.name);
            }
        }
        if !durable.is_empty() {
            durable.sort();
            return Err(ImportError::ConsumersExist(durable.join(", ")));
        }
        let held = self.held_ids().await?;
        let hub = matches!(self.cfg.topology(), Topology::Hub { .. });
        let leaf = matches!(self.cfg.topology(), Topology::Leaf { .. });
        let sourced = crate::setup::sourced_buckets();
        let mut done = Imported::default();
        for record in records {
            match record {
                ExportRecord::Header { .. } => {}
                ExportRecord::Message(m) => {
                    let host = steward_events::split_address(&m.subject)
                        .0
                        .or_else(|| dead_letter_host(&m.subject));
                    if let (true, Some(host)) = (hub, host) {
                        done.left_to_leaves = done.left_to_leaves.saturating_add(1);
                        done.hosts_left.insert(host.to_owned());
                        continue;
                    }
                    if leaf && steward_events::split_address(&m.subject).0.is_some() {
                        done.left_to_hub = done.left_to_hub.saturating_add(1);
                        continue;
                    }
                    let id = m.msg_id().unwrap_or_default();
                    if held.contains(id) {
                        done.duplicates = done.duplicates.saturating_add(1);
                        continue;
                    }
                    let mut headers = HeaderMap::new();
                    for (name, value) in &m.headers {
                        // publish_raw sets the id itself; an origin stamp is the hub's to
                        // write on what it sources, never an import's (`origin`).
                        if !name.eq_ignore_ascii_case(NATS_MSG_ID)
                            && !name.eq_ignore_ascii_case(crate::origin::STREAM_SOURCE)
                        {
                            headers.append(name.as_str(), value.as_str());
                        }
                    }
                    let subject = ns.subject(&m.subject);
                    let published =
                        publish::publish_raw(self, subject, headers, Bytes::from(m.payload()), id)
                            .await?;
                    if published.duplicate {
                        done.duplicates = done.duplicates.saturating_add(1);
                    } else {
                        done.messages = done.messages.saturating_add(1);
                    }
                }
                ExportRecord::Value(v) if hub && sourced.contains(&v.bucket.as_str()) => {
                    done.values_left_to_leaves = done.values_left_to_leaves.saturating_add(1);
                    if let Some((host, _)) = v.key.split_once('.') {
                        done.hosts_left.insert(host.to_owned());
                    }
                }
                ExportRecord::Value(v) => {
                    let kv = self
                        .js()
                        .get_key_value(ns.bucket(&v.bucket))
                        .await
                        .map_err(|e| BusError::nats("get bucket", e))?;
                    match kv.create(&v.key, Bytes::from(v.value.clone())).await {
                        Ok(_) => done.values = done.values.saturating_add(1),
                        Err(e)
                            if e.kind()
                                == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists =>
                        {
                            done.values_kept = done.values_kept.saturating_add(1)
                        }
                        Err(e) => return Err(BusError::nats("write value", e).into()),
                    }
                }
            }
        }
        Ok(done)
    }

    /// The `Nats-Msg-Id` of every message the stream holds (the duplicate window forgets
    /// them after minutes; an import run again a week later must not).
    async fn held_ids(&self) -> Result<HashSet<String>, BusError> {
        let (mut messages, mut remaining) = self.read_all().await?;
        let mut ids = HashSet::new();
        while remaining > 0 {
            let msg = match messages.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return Err(BusError::nats("read stream", e)),
                None => return Err(BusError::NotConnected),
            };
            remaining = remaining.saturating_sub(1);
            if let Some(id) = msg.headers.as_ref().and_then(|h| h.get(NATS_MSG_ID)) {
                ids.insert(id.as_str().to_owned());
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(format: u32) -> ExportRecord {
        ExportRecord::Header {
            format,
            stream: "STEWARD".into(),
            exported_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn message(subject: &str, payload: &str, headers: Vec<(String, String)>) -> ExportRecord {
        ExportRecord::Message(ExportedMessage {
            sequence: 1,
            stored_at: OffsetDateTime::UNIX_EPOCH,
            subject: subject.into(),
            headers,
            payload: Some(payload.into()),
            payload_bytes: None,
        })
    }

    fn event() -> (String, Vec<(String, String)>) {
        let e = Event::new("test", steward_events::WatchRequested::default());
        let payload = String::from_utf8(e.encode().unwrap_or_default()).unwrap_or_default();
        (payload, vec![(NATS_MSG_ID.into(), e.id.to_string())])
    }

    fn value(bucket: &str, key: &str) -> ExportRecord {
        ExportRecord::Value(ExportedValue {
            bucket: bucket.into(),
            key: key.into(),
            revision: 1,
            value: "{}".into(),
        })
    }

    #[test]
    fn a_good_export_passes_and_round_trips_as_lines() {
        let (payload, headers) = event();
        let records = vec![
            header(EXPORT_FORMAT),
            message("watch.requested", &payload, headers),
            message("dlq.updater", "\u{0}not json", vec![(NATS_MSG_ID.into(), "dlq-1".into())]),
            value("UPDATES", "gitea"),
        ];
        assert_eq!(check_import(&records), Vec::<String>::new());
        for r in &records {
            let line = serde_json::to_string(r).unwrap_or_default();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(serde_json::from_str::<ExportRecord>(&line).ok().as_ref(), Some(r));
        }
    }

    #[test]
    fn a_hosts_agents_dead_letters_name_the_host() {
        assert_eq!(dead_letter_host("dlq.updater-vps-a"), Some("vps-a"));
        assert_eq!(dead_letter_host("dlq.backup-b"), Some("b"));
        assert_eq!(dead_letter_host("dlq.notifier"), None);
        assert_eq!(dead_letter_host("dlq.updater"), None);
        assert_eq!(dead_letter_host("dlq.updater-"), None);
        assert_eq!(dead_letter_host("update.pending"), None);
    }

    #[test]
    fn hostile_records_are_named() {
        let (payload, headers) = event();
        let cases: Vec<(Vec<ExportRecord>, &str)> = vec![
            (vec![], "not an export header"),
            (vec![header(2)], "export format 2"),
            (vec![header(1), header(1)], "a second header"),
            (
                vec![header(1), message("restore.requested", &payload, headers.clone())],
                "not an event of its subject",
            ),
            (vec![header(1), message("no.such.type", &payload, headers.clone())], "not an event"),
            (vec![header(1), message("watch.requested", &payload, vec![])], "no Nats-Msg-Id"),
            (
                vec![
                    header(1),
                    message(
                        "watch.requested",
                        &payload,
                        [headers.clone(), vec![("Bad\r\nName".into(), "x".into())]].concat(),
                    ),
                ],
                "not a valid NATS header",
            ),
            // Not ASCII: async-nats would panic on it in the middle of an import.
            (
                vec![
                    header(1),
                    message(
                        "watch.requested",
                        &payload,
                        [headers.clone(), vec![("Nätz".into(), "x".into())]].concat(),
                    ),
                ],
                "\"Nätz\" is not a valid NATS header",
            ),
            (vec![header(1), message("dlq.>", "x", headers.clone())], "not an event"),
            (vec![header(1), value("KV_STEWARD_HANDLED", "k")], "not a state bucket"),
            (vec![header(1), value("UPDATES", "../x")], "not a valid key"),
            (vec![header(1), value("UPDATES", "a b")], "not a valid key"),
        ];
        for (records, says) in cases {
            let problems = check_import(&records);
            assert!(problems.iter().any(|p| p.contains(says)), "{says}: {problems:?}");
        }
        let big = "x".repeat(MAX_PAYLOAD + 1);
        let problems = check_import(&[header(1), message("dlq.updater", &big, headers)]);
        assert!(problems.iter().any(|p| p.contains("over")), "{problems:?}");
    }
}
