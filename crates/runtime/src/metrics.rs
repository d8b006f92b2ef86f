//! Prometheus metrics every service exposes on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-event-type metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// Event type (subject without prefix).
    pub subject: String,
}

/// Counters and histograms of the consume loop.
#[derive(Debug)]
pub struct Metrics {
    // Behind a lock so a service can add its own metrics after start.
    registry: std::sync::Mutex<Registry>,
    /// Events a handler finished successfully.
    pub handled: Family<TypeLabel, Counter>,
    /// Handler failures (each failed attempt) and undecodable messages.
    pub failed: Family<TypeLabel, Counter>,
    /// Messages moved to the dead-letter subject.
    pub dead_lettered: Family<TypeLabel, Counter>,
    /// Redeliveries of events already handled (skipped by the idempotency check).
    pub duplicates: Family<TypeLabel, Counter>,
    /// Deliveries older than the idempotency horizon, acknowledged without being handled.
    pub expired: Family<TypeLabel, Counter>,
    /// Handler latency.
    pub handler_seconds: Family<TypeLabel, Histogram>,
    /// 1 while connected to NATS.
    pub nats_connected: Gauge,
    /// Messages waiting for this service's consumer, as of the last delivery.
    pub consumer_pending: Gauge,
    /// Age of the last delivered message when it arrived (publish to delivery).
    pub delivery_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// At the hub of leaf nodes: messages refused because a host's leaf brought them about
    /// another host (`steward_bus::refused_origins`, brought up to date when rendered).
    origin_refused: Counter,
    origin_refused_seen: std::sync::atomic::AtomicU64,
}

impl Metrics {
    /// Registers the metrics with a `steward_` prefix and a `service` label.
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "steward",
            [(std::borrow::Cow::Borrowed("service"), std::borrow::Cow::Owned(service.to_owned()))]
                .into_iter(),
        );
        let handled = Family::<TypeLabel, Counter>::default();
        let failed = Family::<TypeLabel, Counter>::default();
        let dead_lettered = Family::<TypeLabel, Counter>::default();
        let duplicates = Family::<TypeLabel, Counter>::default();
        let expired = Family::<TypeLabel, Counter>::default();
        // 0.25 ms .. ~68 s.
        let handler_seconds = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
        });
        let nats_connected = Gauge::default();
        let consumer_pending = Gauge::default();
        let delivery_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register("events_handled", "Events handled successfully", handled.clone());
        registry.register(
            "events_failed",
            "Failed handling attempts and undecodable messages",
            failed.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Messages moved to the dead-letter subject",
            dead_lettered.clone(),
        );
        registry.register(
            "events_duplicate",
            "Redeliveries skipped because already handled",
            duplicates.clone(),
        );
        registry.register(
            "events_expired",
            "Deliveries older than the idempotency horizon, acknowledged and ignored",
            expired.clone(),
        );
        registry.register("handler_duration_seconds", "Handler latency", handler_seconds.clone());
        registry.register("nats_connected", "1 while connected to NATS", nats_connected.clone());
        registry.register(
            "consumer_pending",
            "Messages waiting for this service's consumer, as of the last delivery (bus lag)",
            consumer_pending.clone(),
        );
        registry.register(
            "delivery_lag_seconds",
            "Seconds from publish to delivery of the last message (bus lag)",
            delivery_lag_seconds.clone(),
        );
        let origin_refused = Counter::default();
        registry.register(
            "leaf_origin_refused",
            "Messages read at the hub that a host's leaf brought about another host (or about no host), refused",
            origin_refused.clone(),
        );
        Self {
            registry: std::sync::Mutex::new(registry),
            handled,
            failed,
            dead_lettered,
            duplicates,
            expired,
            handler_seconds,
            nats_connected,
            consumer_pending,
            delivery_lag_seconds,
            origin_refused,
            origin_refused_seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Adds a service's own metric (named without the `steward_` prefix).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.register(name, help, metric);
    }

    /// The label for an event type.
    pub fn label(subject: &str) -> TypeLabel {
        TypeLabel { subject: subject.to_owned() }
    }

    /// Exposes the per-type counters at 0 for every type the service consumes: a series
    /// that first appears at 1 is invisible to `increase()`, so the first failure would be.
    pub fn start_at_zero(&self, event_types: &[&str]) {
        for t in event_types {
            let label = Self::label(t);
            for family in
                [&self.handled, &self.failed, &self.dead_lettered, &self.duplicates, &self.expired]
            {
                let _ = family.get_or_create(&label);
            }
        }
    }

    /// Prometheus/OpenMetrics text.
    pub fn render(&self) -> String {
        // The bus counts refusals process-wide (it knows no registry); the counter follows it.
        let now = steward_bus::refused_origins();
        let seen = self.origin_refused_seen.swap(now, std::sync::atomic::Ordering::Relaxed);
        self.origin_refused.inc_by(now.saturating_sub(seen));
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
