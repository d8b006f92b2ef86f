//! A service's durable pull consumer, and what it hands out: one [`Delivery`] at a time.
//!
//! NATS 2.9 (Debian 12's server) has no multi-subject consumer filter. A consumer of exactly
//! one event type filters on the server; one of several reads the whole stream and acks what
//! it does not consume without handing it out (Steward's event rate is low, and one consumer
//! keeps the stream's order across the service's subjects, except for a message redelivered
//! after a failed attempt or one a dead pull request took: see [`Inbox::open`]). Under host routing an agent's
//! consumer filters on its host's subjects (`host.<host>.>`, one filter), and acks the types
//! of its host it does not consume in the same way.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, FromConsumer, PullConsumer};
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use futures::StreamExt;
use steward_events::{DecodeError, Event, Service};

use crate::{publish, Bus, BusError};

/// Header on a dead letter: why it was dead-lettered.
pub const DLQ_REASON: &str = "Steward-Dlq-Reason";
/// Header on a dead letter: the original subject.
pub const DLQ_SUBJECT: &str = "Steward-Dlq-Subject";
/// Header on a dead letter: the original stream sequence.
pub const DLQ_SEQUENCE: &str = "Steward-Dlq-Sequence";
/// Header on a dead letter: how often it had been delivered.
pub const DLQ_DELIVERIES: &str = "Steward-Dlq-Deliveries";

/// How a service consumes the stream.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable consumer name (also names the dead-letter subject), e.g. `updater`.
    pub name: String,
    /// Event types handed out.
    pub event_types: Vec<String>,
    /// Under host routing, the agent's host: the consumer reads only subjects addressed to it.
    pub host: Option<String>,
    /// Time the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Handler attempts before a message is given up on (then dead-lettered). The server is
    /// told one more: that extra delivery only happens when the process died during every
    /// attempt (or a killed process's pull request took one, [`Inbox::open`]), and is
    /// dead-lettered without running the handler (see [`Delivery::is_exhausted`]), so such a
    /// message is never silently dropped.
    pub max_deliver: i64,
    /// Unacked messages the server lets the consumer have at once: with one message per pull
    /// ([`Inbox::open`]), the one being handled and any a killed process's pull took.
    pub max_ack_pending: i64,
}

impl ConsumerSpec {
    /// A spec with Steward's defaults (30 s ack wait, 5 deliveries, 16 unacked at most).
    pub fn new(name: impl Into<String>, event_types: &[&str]) -> Self {
        Self {
            name: name.into(),
            event_types: event_types.iter().map(|s| (*s).to_owned()).collect(),
            host: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 16,
        }
    }

    /// The consumer of `service` as the routing table describes it, with Steward's defaults:
    /// what `steward setup` creates and what the service's runtime looks up (one meaning).
    /// `host`: an agent's host under host routing ([`crate::BusConfig::route_host`]); the
    /// consumer is then `<service>-<host>` ([`Service::identity`]) and reads that host only.
    pub fn of(service: Service, host: Option<&str>) -> Self {
        let host = host.filter(|_| service.is_agent());
        Self {
            host: host.map(str::to_owned),
            ..Self::new(service.identity(host), service.consumes())
        }
    }

    /// The server-side filter: an agent's host's subjects under host routing; else exact for a
    /// consumer of one type, none for several (NATS 2.9 has one filter subject; the inbox
    /// acks what it does not consume).
    pub(crate) fn filter_subject(&self, ns: &crate::Namespace) -> String {
        match (&self.host, self.event_types.as_slice()) {
            (Some(host), _) => ns.host_subjects(host),
            (None, [one]) => ns.subject(one),
            (None, _) => String::new(),
        }
    }

    /// The consumer configuration for this spec. A consumer that does not exist yet starts
    /// at new events (`DeliverPolicy::New`), never at the start of the year-long retention:
    /// a re-created consumer must not hand a service events it handled long ago (their
    /// idempotency markers have expired); or at stream sequence `start` when given (a rebuilt
    /// hub's, after the history its sources copied). An existing consumer keeps its delivery
    /// policy and position; only the settings below are changed.
    pub(crate) fn config(
        &self,
        ns: &crate::Namespace,
        existing: Option<pull::Config>,
        start: Option<u64>,
    ) -> pull::Config {
        let base = existing.unwrap_or_else(|| pull::Config {
            durable_name: Some(self.name.clone()),
            deliver_policy: match start {
                Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
                None => DeliverPolicy::New,
            },
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        });
        pull::Config {
            description: Some(format!("steward {} inbox", self.name)),
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver + 1,
            max_ack_pending: self.max_ack_pending,
            filter_subject: self.filter_subject(ns),
            ..base
        }
    }

    /// Whether `config` (a consumer on the server) has this spec's settings.
    pub(crate) fn matches(&self, ns: &crate::Namespace, config: &pull::Config) -> bool {
        config.ack_wait == self.ack_wait
            && config.max_deliver == self.max_deliver + 1
            && config.max_ack_pending == self.max_ack_pending
            && config.filter_subject == self.filter_subject(ns)
    }
}

/// A service's stream of deliveries; survives NATS restarts.
pub struct Inbox {
    bus: Bus,
    spec: ConsumerSpec,
    /// The consumer, looked up once and again after an error.
    consumer: Option<PullConsumer>,
    /// The open pull request: one message at most, ends when it came or the request expired.
    messages: Option<pull::Batch>,
    consecutive_errors: u32,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Bus {
    /// Looks up the durable consumer `spec.name` (created by `steward setup`, see
    /// [`Bus::setup`]) and returns its inbox. A missing consumer is
    /// [`BusError::NotProvisioned`].
    ///
    /// When the consumer's settings differ from `spec` (a service started with its own
    /// `STEWARD_ACK_WAIT` or `STEWARD_MAX_DELIVER`), this asks once to tune them, keeping the
    /// consumer's position and delivery policy. A service's NATS user may not do that (the
    /// consumers' configuration is `steward setup`'s): then the consumer's own settings are
    /// used, with a warning, so the runtime's view never differs from the server's.
    pub async fn inbox(&self, mut spec: ConsumerSpec) -> Result<Inbox, BusError> {
        let ns = self.namespace().clone();
        let consumer = self.lookup_consumer(&spec.name).await?;
        let config = pull::Config::try_from_consumer_config(consumer.cached_info().config.clone())
            .map_err(|e| BusError::nats("read consumer config", e))?;
        if !spec.matches(&ns, &config) {
            let wanted = spec.config(&ns, Some(config.clone()), None);
            let stream = self
                .js()
                .get_stream(&ns.stream)
                .await
                .map_err(|e| BusError::nats("get stream", e))?;
            match stream.create_consumer(wanted).await {
                Ok(_) => tracing::info!(consumer = %spec.name, ack_wait = ?spec.ack_wait,
                    max_deliver = spec.max_deliver, "consumer settings tuned to this service's configuration"),
                Err(e) => {
                    tracing::warn!(consumer = %spec.name, error = %e,
                        server_ack_wait = ?config.ack_wait, server_max_deliver = config.max_deliver - 1,
                        "this service's STEWARD_ACK_WAIT / STEWARD_MAX_DELIVER differ from its consumer's, which only `steward setup` may change; using the consumer's");
                    spec.ack_wait = config.ack_wait;
                    spec.max_deliver = (config.max_deliver - 1).max(1);
                    spec.max_ack_pending = config.max_ack_pending;
                }
            }
        }
        let mut inbox = Inbox {
            bus: self.clone(),
            spec,
            consumer: None,
            messages: None,
            consecutive_errors: 0,
        };
        inbox.messages = Some(inbox.open().await?);
        Ok(inbox)
    }

    /// The durable consumer `name`, or `None` when the stream has none of that name.
    pub(crate) async fn existing_consumer(
        &self,
        name: &str,
    ) -> Result<Option<PullConsumer>, BusError> {
        match self.lookup_consumer(name).await {
            Ok(consumer) => Ok(Some(consumer)),
            Err(BusError::NotProvisioned { what }) if what.starts_with("durable consumer") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The durable consumer `name`, or [`BusError::NotProvisioned`].
    pub(crate) async fn lookup_consumer(&self, name: &str) -> Result<PullConsumer, BusError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        use async_nats::jetstream::ErrorCode;
        let ns = self.namespace();
        let stream = self.js().get_stream(&ns.stream).await.map_err(|e| match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                BusError::NotProvisioned { what: format!("stream {}", ns.stream) }
            }
            _ => BusError::nats("get stream", e),
        })?;
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        stream.consumer_info(name).await.map_err(|e| match e.kind() {
            ConsumerInfoErrorKind::NotFound => BusError::NotProvisioned {
                what: format!("durable consumer {name} on stream {}", ns.stream),
            },
            _ => BusError::nats("get consumer", e),
        })?;
        stream.get_consumer(name).await.map_err(|e| BusError::nats("get consumer", e))
    }
}

impl Inbox {
    /// The consumer's spec.
    pub fn spec(&self) -> &ConsumerSpec {
        &self.spec
    }

    async fn open(&mut self) -> Result<pull::Batch, BusError> {
        // One pull request for one message at a time, a new request once it came (or the
        // request expired). A server with leaf nodes (the hub, each host's leaf) hands a
        // message to a pull request received in the last 2 s without checking that its client
        // is still there, and nats-server 2.9 hands it again at once to the same request while
        // the request has room: with room for 16, a service killed just after a pull made the
        // next message of its consumer spend every delivery the server allows on nobody, and
        // it was never handed out again (a host's agents restarted, and the watch request that
        // waited for them was gone; tests/tests/leaf_flow.rs). With room for one, a dead
        // request takes at most one of the handler's attempts.
        // Not async-nats' continuous pull (`messages()`): it counts a request's room when the
        // request's publish completes, and a message that arrives first is counted before it,
        // so the stream came to believe delivered messages were still to come and asked for
        // nothing more until its requests expired: 30 s and more of a consumer's messages
        // waiting, under load (crates/runtime/tests/trust.rs failed so in CI, with room for
        // one and for two). A single request has nothing to count. No idle heartbeat: a
        // batch that receives one stops watching for the message after it until its timer.
        let consumer = match self.consumer.clone() {
            Some(c) => c,
            None => {
                let c = self.bus.lookup_consumer(&self.spec.name).await?;
                self.consumer = Some(c.clone());
                c
            }
        };
        consumer
            .batch()
            .max_messages(1)
            // The server forgets a request when the connection drops: a short one is renewed
            // soon after a reconnect.
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| BusError::nats("pull messages", e))
    }

    /// The next delivery for this service. Waits as long as it takes; NATS outages are
    /// survived by looking the consumer up again with backoff, and a deleted consumer by
    /// waiting (saying so) until `steward setup` has created it again.
    pub async fn next(&mut self) -> Delivery {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.open().await {
                    Ok(m) => {
                        self.messages = Some(m);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        // Looked up again: it may have been deleted and created anew.
                        self.consumer = None;
                        tracing::warn!(consumer = %self.spec.name, error = %e, "cannot open consumer; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(msg)) => {
                    self.consecutive_errors = 0;
                    if let Some(delivery) = self.accept(msg).await {
                        return delivery;
                    }
                }
                Some(Err(e)) => {
                    // After a reconnect with the consumer gone the stream can keep yielding
                    // errors instead of ending (nats.rs#1584): re-create it after a few.
                    self.consecutive_errors += 1;
                    tracing::warn!(consumer = %self.spec.name, error = %e, "consumer error");
                    if self.consecutive_errors >= 3 {
                        self.messages = None;
                        self.consumer = None;
                        self.consecutive_errors = 0;
                        tokio::time::sleep(backoff).await;
                    }
                }
                None => self.messages = None,
            }
        }
    }

    /// Turns a message into a delivery, or acks and skips one this service does not consume.
    async fn accept(&self, msg: async_nats::jetstream::Message) -> Option<Delivery> {
        let ns = self.bus.namespace();
        let subject = ns.unprefixed(msg.subject.as_str()).unwrap_or("").to_owned();
        let event_type = steward_events::split_address(&subject).1.to_owned();
        // At the hub: a message a host's leaf brought that is not about that host is nobody's
        // to handle (logged and counted there), and must never come again.
        let headers = msg.headers.as_ref();
        if !crate::origin::stream_message(self.bus.config(), &msg.subject, headers, &self.spec.name)
        {
            // Confirmed: a termination lost on the way would bring it back, counted twice.
            if let Err(e) = msg.double_ack_with(AckKind::Term).await {
                tracing::debug!(error = %e, "terminating a refused message failed; it will come again");
            }
            return None;
        }
        if !self.spec.event_types.contains(&event_type) {
            if let Err(e) = msg.ack().await {
                tracing::debug!(error = %e, "skip-ack failed; the message will come again");
            }
            return None;
        }
        let (attempt, stream_sequence, pending, age) = msg
            .info()
            .map(|i| {
                let age = (time::OffsetDateTime::now_utc() - i.published).as_seconds_f64();
                (i.delivered.max(1) as u64, i.stream_sequence, i.pending, age.max(0.0))
            })
            .unwrap_or((1, 0, 0, 0.0));
        // The subject is what the server's permissions checked; the payload's `type` and
        // `host` are the publisher's word. One that differs is refused here, before any handler.
        let event = Event::decode_addressed(&subject, &msg.payload);
        Some(Delivery {
            bus: self.bus.clone(),
            consumer: self.spec.name.clone(),
            max_deliver: self.spec.max_deliver,
            event_type,
            event,
            attempt,
            stream_sequence,
            pending,
            age_seconds: age,
            msg,
        })
    }
}

/// One message handed to a service, with what it needs to settle it.
pub struct Delivery {
    bus: Bus,
    consumer: String,
    max_deliver: i64,
    msg: async_nats::jetstream::Message,
    /// Event type (the subject without the namespace prefix).
    pub event_type: String,
    /// The decoded event, or why it is not one.
    pub event: Result<Event, DecodeError>,
    /// Which delivery this is (1 = first).
    pub attempt: u64,
    /// Stream sequence of the message.
    pub stream_sequence: u64,
    /// Messages still waiting for this consumer behind this one (the bus lag, in messages).
    pub pending: u64,
    /// Seconds since the message was stored (the bus lag, in time).
    pub age_seconds: f64,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event_type", &self.event_type)
            .field("attempt", &self.attempt)
            .field("stream_sequence", &self.stream_sequence)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// True when a failure now would exhaust `max_deliver`.
    pub fn is_last_attempt(&self) -> bool {
        self.max_deliver > 0 && self.attempt >= self.max_deliver as u64
    }

    /// True when the hub copied this message from a host's leaf (it carries the hub's
    /// `Nats-Stream-Source` stamp). Its stored time is then when the hub copied it, not when
    /// it was made: a rebuilt hub copies each leaf's whole history at once, all of it
    /// "fresh" by the stored time.
    pub fn is_sourced(&self) -> bool {
        self.msg.headers.as_ref().is_some_and(|h| h.get(crate::origin::STREAM_SOURCE).is_some())
    }

    /// True when every handler attempt was used up without the message being settled: the
    /// process died (or hung past `ack_wait`) while handling it each time. Dead-letter it
    /// without handling it again.
    pub fn is_exhausted(&self) -> bool {
        self.max_deliver > 0 && self.attempt > self.max_deliver as u64
    }

    /// Acks and waits for the server to confirm it. A plain ack after `ack_wait` is silently
    /// lost (nats.rs#1042); the confirmed ack tells us.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.msg.double_ack().await.map_err(|e| BusError::nats("ack", e))
    }

    /// Asks for redelivery after `delay`.
    pub async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.msg.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| BusError::nats("nak", e))
    }

    /// Resets the ack timer during long work.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.msg.ack_with(AckKind::Progress).await.map_err(|e| BusError::nats("progress", e))
    }

    /// Copies the message to the consumer's dead-letter subject with `reason`, then
    /// terminates it so it is never redelivered and does not block the consumer.
    pub async fn dead_letter(&self, reason: &str) -> Result<(), BusError> {
        let ns = self.bus.namespace();
        let mut headers = HeaderMap::new();
        headers.insert(DLQ_REASON, header_safe(reason).as_str());
        headers.insert(DLQ_SUBJECT, self.msg.subject.as_str());
        headers.insert(DLQ_SEQUENCE, self.stream_sequence.to_string().as_str());
        headers.insert(DLQ_DELIVERIES, self.attempt.to_string().as_str());
        // One dead letter per (consumer, message), however often this is retried. The id is
        // predictable: one another participant stored first (on its own dead-letter subject)
        // is found out by reading it back, and this one goes out under a fresh id.
        let id = format!("dlq-{}-{}-{}", ns.stream, self.consumer, self.stream_sequence);
        let subject = ns.dead_letter_subject(&self.consumer);
        let payload = self.msg.payload.clone();
        let published =
            publish::publish_raw(&self.bus, subject.clone(), headers.clone(), payload.clone(), &id)
                .await?;
        if published.duplicate {
            let ours = |stored: &[u8]| stored == payload.as_ref();
            publish::check_duplicate(
                &self.bus,
                subject,
                headers,
                payload.clone(),
                published,
                &id,
                ours,
            )
            .await?;
        }
        self.msg.double_ack_with(AckKind::Term).await.map_err(|e| BusError::nats("term", e))
    }
}

/// NATS header values cannot hold CR/LF; long reasons are cut.
fn header_safe(s: &str) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    flat.chars().take(1000).collect()
}
