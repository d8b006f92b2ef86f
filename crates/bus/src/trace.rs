//! Trace context across the bus: the W3C `traceparent`/`tracestate` of the envelope
//! ([`steward_events::TraceContext`]) to and from OpenTelemetry, through the global
//! propagator.
//!
//! The runtime sets that propagator only when it exports traces
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise it is OpenTelemetry's no-op one, so nothing here
//! writes or reads anything, and an event keeps the trace context it inherited from its cause.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use steward_events::{Event, TraceContext};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

struct Fields<'a>(&'a mut TraceContext);

impl Injector for Fields<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.0.tracestate = Some(value),
            _ => {}
        }
    }
}

struct Read<'a>(&'a TraceContext);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.0.traceparent.as_deref(),
            TRACESTATE => self.0.tracestate.as_deref(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The trace context of the current span, if it is part of a trace (tracing on).
pub fn current() -> Option<TraceContext> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut trace = TraceContext::default();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Fields(&mut trace))
    });
    trace.traceparent.is_some().then_some(trace)
}

/// The context `event` was published in: the parent of the span that handles it. A missing or
/// malformed `traceparent` gives an empty context, so that span starts a new trace.
pub fn parent_of(event: &Event) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Read(&event.trace)))
}

/// Makes `span` a child of the span that published `event` (a new trace if `event` carries
/// no valid trace context): the span of its handling, or of work done for it later.
pub fn join(span: &tracing::Span, event: &Event) {
    // Refused only when the span is already started or disabled: then it keeps its parent.
    let _ = span.set_parent(parent_of(event));
}

/// `event` with the current span's trace context, if there is one (else as it is: the trace
/// it inherited from its cause, or none).
pub(crate) fn stamped(event: &Event) -> Option<Event> {
    current().map(|trace| Event { trace, ..event.clone() })
}
