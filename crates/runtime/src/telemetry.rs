//! Logs and traces.
//!
//! Logs: JSON lines for machines or pretty text for people, filtered by `STEWARD_LOG`.
//!
//! Traces: only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the spans that pass the same filter go to
//! OpenTelemetry and are exported over OTLP/HTTP protobuf in batches from one thread; the
//! other standard variables (`OTEL_SERVICE_NAME`, default the service's binary name,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`...) are OpenTelemetry's own. Without the endpoint there is no exporter, no
//! OpenTelemetry layer and no propagator: nothing runs and events carry no new trace context.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use steward_events::Service;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::env::Env;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// The only OTLP transport built in (reqwest, which the services have anyway; no gRPC stack).
const HTTP_PROTOBUF: &str = "http/protobuf";

/// Whether this process exports traces, from the standard `OTEL_*` variables; a transport
/// other than OTLP/HTTP protobuf is a configuration error, reported with the others.
pub(crate) fn traces_wanted(env: &mut Env) -> bool {
    let set = |env: &mut Env, name: &str| env.optional(name).filter(|v| !v.trim().is_empty());
    let endpoint = set(env, ENDPOINT).or_else(|| set(env, TRACES_ENDPOINT));
    for name in [PROTOCOL, TRACES_PROTOCOL] {
        if let Some(p) = set(env, name) {
            if p.trim() != HTTP_PROTOBUF {
                env.error(name, &p, format!("only {HTTP_PROTOBUF} is supported"));
            }
        }
    }
    let disabled = set(env, SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set(env, TRACES_EXPORTER).is_some_and(|v| v.trim() == "none");
    endpoint.is_some() && !disabled
}

/// What must be flushed before the process exits.
#[must_use = "call Telemetry::shutdown before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by `OTEL_BSP_EXPORT_TIMEOUT`).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        // Joins the export thread: never on a runtime worker.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "could not export the last spans");
        }
    }
}

/// Installs the global subscriber (logs go to stderr), with traces if `traces`. A second
/// call installs nothing.
pub fn init(service: Service, format: LogFormat, filter: &str, traces: bool) -> Telemetry {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let (provider, problem) = match traces.then(|| provider(service)) {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer(service.binary())).with_threads(false)
    });
    let installed = tracing_subscriber::registry().with(filter).with(logs).with(otel).try_init();
    if installed.is_err() {
        return Telemetry { provider: None };
    }
    if let Some(e) = problem {
        // Traces are an aid: a service still does its work without them.
        tracing::error!(error = %e, "cannot set up trace export; running without traces");
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn provider(service: Service) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os(SERVICE_NAME).is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service.binary());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}
