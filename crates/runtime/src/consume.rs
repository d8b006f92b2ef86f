//! The consume loop: one delivery at a time, handled at most once, settled every time.
//!
//! For each delivery:
//! 1. not decodable, or its `type` is not its subject's → dead letter with the reason (never
//!    retried: it cannot improve; the subject is what the server's permissions checked, so an
//!    event smuggled under another participant's subject is never handled);
//! 2. older than the idempotency horizon (the handled markers' TTL: a replayed old event could
//!    no longer be recognised as handled; for a message the hub copied from a host's leaf,
//!    also by the event's own `time`, as a rebuilt hub copies old history stored "now")
//!    → ack and ignore, count it expired, log it;
//!    already handled (idempotency marker) → ack, count a duplicate;
//! 3. run the handler, sending `in progress` so long work keeps its ack timer alive;
//! 4. success → write the marker (retried while NATS is away), then a confirmed ack;
//!    `Reject` or a panic → dead letter; `Retry` → nak with backoff, dead letter on the last
//!    attempt; a delivery past the last attempt (the process died during each) → dead letter
//!    without running the handler again;
//! 5. on shutdown the handler in hand gets the grace period (one deadline shared with the
//!    background tasks); if it does not finish it is abandoned and the event nak'd for
//!    immediate redelivery to the next instance.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::FutureExt;
use steward_bus::{Delivery, Idempotency, Inbox};
use steward_events::{DecodeError, Event};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::metrics::Metrics;
use crate::tasks::Grace;
use crate::Context;

/// Why a handler did not finish an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try later (a dependency was down): nak with backoff.
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// Will never work (bad input): dead-letter now.
    #[error("{0:#}")]
    Reject(anyhow::Error),
}

/// What a service does with the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// Handles one event. Must be safe to run again for the same event if the process dies
    /// before the event is marked handled.
    fn handle(
        &self,
        ctx: &Context,
        event: Event,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

pub(crate) struct Loop<'a, H> {
    pub ctx: &'a Context,
    pub handler: &'a H,
    pub idempotency: Idempotency,
    /// Deliveries older than this are acked and ignored (the markers' TTL).
    pub horizon: Duration,
    pub metrics: &'a Metrics,
    pub shutdown: CancellationToken,
    pub grace: Grace,
    pub ack_wait: Duration,
}

/// Whether the loop goes on after a delivery.
enum Next {
    Continue,
    Stop,
}

impl<H: Handler> Loop<'_, H> {
    pub async fn run(&self, mut inbox: Inbox) {
        loop {
            let delivery = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                d = inbox.next() => d,
            };
            if let Next::Stop = self.process(delivery).await {
                break;
            }
        }
    }

    async fn process(&self, d: Delivery) -> Next {
        let label = Metrics::label(&d.event_type);
        self.metrics.consumer_pending.set(d.pending.try_into().unwrap_or(i64::MAX));
        self.metrics.delivery_lag_seconds.set(d.age_seconds);
        let event = match &d.event {
            Ok(event) => event.clone(),
            Err(e) => {
                self.metrics.failed.get_or_create(&label).inc();
                tracing::warn!(subject = %d.event_type, seq = d.stream_sequence, error = %e, "undecodable message");
                let reason = match e {
                    DecodeError::WrongSubject { .. } => format!("refused: {e}"),
                    _ => format!("cannot decode: {e}"),
                };
                self.dead_letter(&d, &reason).await;
                return Next::Continue;
            }
        };
        if d.is_exhausted() {
            self.metrics.failed.get_or_create(&label).inc();
            tracing::error!(id = %event.id, subject = %d.event_type, deliveries = d.attempt,
                "event was never settled; dead-lettering it without handling it again");
            let reason = format!(
                "delivered {} time(s) without being settled: the service died or hung while handling it",
                d.attempt - 1
            );
            self.dead_letter(&d, &reason).await;
            return Next::Continue;
        }
        // The span of this event's handling: a child of the span that published it (a new
        // trace if it carries no valid trace context). Attached to the future, never entered
        // across an await.
        let (image, from, to) = event.data.image_and_digests();
        let span = tracing::info_span!("event", id = %event.id, subject = %d.event_type,
            correlation = %event.correlation_id, attempt = d.attempt,
            otel.name = %format_args!("handle {}", d.event_type), otel.kind = "consumer",
            container = event.container(), image, digest.from = from, digest.to = to);
        steward_bus::trace::join(&span, &event);
        self.handle(&d, event, &label).instrument(span).await
    }

    /// Handles a decoded delivery that is not exhausted, inside its span.
    async fn handle(&self, d: &Delivery, event: Event, label: &crate::metrics::TypeLabel) -> Next {
        let age = delivery_age(d, &event);
        if Duration::try_from_secs_f64(age).is_ok_and(|age| age > self.horizon) {
            self.metrics.expired.get_or_create(label).inc();
            tracing::warn!(age_seconds = age, horizon = ?self.horizon, seq = d.stream_sequence,
                sourced = d.is_sourced(), event_time = %event.time,
                "event older than the idempotency horizon (a replay?); acknowledging it without handling it");
            self.ack(d).await;
            return Next::Continue;
        }

        match self.idempotency.is_done(&event).await {
            Ok(true) => {
                self.metrics.duplicates.get_or_create(label).inc();
                tracing::info!("already handled; acknowledging redelivery");
                self.ack(d).await;
                return Next::Continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check idempotency marker; retrying later");
                let _ = d.nak(Duration::from_secs(1)).await;
                return Next::Continue;
            }
        }

        tracing::info!(container = event.container().unwrap_or("-"), source = %event.source, "received");
        let started = Instant::now();
        let Some(result) = self.run_handler(d, event.clone()).await else {
            tracing::warn!(grace = ?self.grace.period, "handler did not finish within the shutdown grace; returning the event for redelivery");
            let _ = d.nak(Duration::ZERO).await;
            return Next::Stop;
        };
        self.metrics.handler_seconds.get_or_create(label).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.mark_done(&event).await;
                self.ack(d).await;
                self.metrics.handled.get_or_create(label).inc();
            }
            Err(HandlerError::Reject(e)) => {
                self.metrics.failed.get_or_create(label).inc();
                tracing::error!(error = %format!("{e:#}"), "handler rejected the event");
                self.dead_letter(d, &format!("rejected: {e:#}")).await;
            }
            Err(HandlerError::Retry(e)) if d.is_last_attempt() => {
                self.metrics.failed.get_or_create(label).inc();
                tracing::error!(error = %format!("{e:#}"), "handler failed on the last attempt");
                self.dead_letter(d, &format!("failed after {} deliveries: {e:#}", d.attempt)).await;
            }
            Err(HandlerError::Retry(e)) => {
                self.metrics.failed.get_or_create(label).inc();
                let delay = Duration::from_secs(1 << d.attempt.min(6));
                tracing::warn!(error = %format!("{e:#}"), ?delay, "handler failed; will retry");
                let _ = d.nak(delay).await;
            }
        }
        if self.shutdown.is_cancelled() {
            Next::Stop
        } else {
            Next::Continue
        }
    }

    /// Runs the handler; `None` if shutdown's grace ran out first.
    async fn run_handler(&self, d: &Delivery, event: Event) -> Option<Result<(), HandlerError>> {
        // A panicking handler must not take the service down and come back forever: it
        // becomes a rejection, dead-lettered with the panic message.
        let work = std::panic::AssertUnwindSafe(self.handler.handle(self.ctx, event))
            .catch_unwind()
            .map(|outcome| {
                outcome.unwrap_or_else(|panic| Err(HandlerError::Reject(panicked(panic))))
            });
        tokio::pin!(work);
        // First tick one period out: awaiting an interval's immediate first tick still goes
        // through the timer wheel and cost ~1 ms per event (measured in benches/bus.rs).
        let period = self.ack_wait / 3;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let grace_over = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut work => return Some(result),
                _ = progress.tick() => {
                    if let Err(e) = d.in_progress().await {
                        tracing::debug!(error = %e, "cannot extend ack timer");
                    }
                }
                _ = self.shutdown.cancelled(), if deadline.is_none() => {
                    tracing::info!(grace = ?self.grace.period, "shutdown requested; finishing the event in hand");
                    deadline = Some(self.grace.deadline());
                }
                _ = grace_over => return None,
            }
        }
    }

    /// Writes the handled marker, retrying while NATS is away (a lost marker would let a
    /// redelivery run the handler a second time).
    async fn mark_done(&self, event: &Event) {
        let mut delay = Duration::from_millis(100);
        let deadline = Instant::now() + self.ack_wait.max(Duration::from_secs(30));
        loop {
            match self.idempotency.mark_done(event).await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot write handled marker; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, "gave up writing handled marker; a redelivery may repeat this event");
                    return;
                }
            }
        }
    }

    async fn ack(&self, d: &Delivery) {
        if let Err(e) = d.ack().await {
            // The marker is written: a redelivery will be recognised and acked then.
            tracing::warn!(error = %e, "ack not confirmed; a redelivery will be skipped as a duplicate");
        }
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) {
        match d.dead_letter(reason).await {
            Ok(()) => {
                self.metrics.dead_lettered.get_or_create(&Metrics::label(&d.event_type)).inc();
            }
            Err(e) => {
                // Not acked: it comes back after ack_wait and is dead-lettered then.
                tracing::error!(error = %e, "cannot dead-letter message; it will be redelivered");
            }
        }
    }
}

pub(crate) fn panicked(panic: Box<dyn std::any::Any + Send>) -> anyhow::Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    anyhow::anyhow!("handler panicked: {message}")
}

/// How old a delivery is, for the idempotency horizon: seconds since it was stored, or, for a
/// message the hub copied from a host's leaf, since the event's own CloudEvents `time` when
/// that is older. A rebuilt hub copies each leaf's history with the hub's current time as the
/// stored time, so only the event's time tells an old event there from a new one. The event's
/// time is the publisher's word; it only ever makes a delivery older (ignored), never younger.
fn delivery_age(d: &Delivery, event: &Event) -> f64 {
    if !d.is_sourced() {
        return d.age_seconds;
    }
    let made = std::time::SystemTime::now()
        .duration_since(event.time.into())
        .map_or(0.0, |made| made.as_secs_f64());
    d.age_seconds.max(made)
}
