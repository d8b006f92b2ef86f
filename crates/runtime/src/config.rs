//! The settings every service shares, their names and defaults, in one place.

use std::net::SocketAddr;
use std::time::Duration;

use steward_bus::BusConfig;
use steward_events::Service;

use crate::env::Env;

// The names live with `Env` in steward-settings (the CLI reads some of them too).
pub use steward_settings::names::*;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (for containers and log shippers).
    Json,
    /// Human-readable.
    Pretty,
}

/// Settings shared by every service.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Which service this is.
    pub service: Service,
    /// Bus settings.
    pub bus: BusConfig,
    /// Health/metrics server address.
    pub http_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_filter: String,
    /// Redelivery timeout.
    pub ack_wait: Duration,
    /// Deliveries before dead-lettering.
    pub max_deliver: i64,
    /// Shutdown grace for the event in hand.
    pub shutdown_grace: Duration,
    /// Whether this service needs the Docker engine (and `/readyz` checks it).
    pub uses_docker: bool,
    /// Deadline of one Docker engine call.
    pub engine_timeout: Duration,
    /// `STEWARD_HOST` as set, for an engine-bound service; unset, [`Runtime::start`] takes the
    /// engine's name (else the hostname).
    ///
    /// [`Runtime::start`]: crate::Runtime::start
    pub host: Option<String>,
    /// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` set; see `telemetry`).
    pub traces: bool,
}

pub use steward_settings::default_http_addr;

impl RuntimeConfig {
    /// Reads the shared settings; errors are collected in `env`.
    pub fn read(service: Service, env: &mut Env) -> Self {
        let bus = BusConfig::read(env);
        if let Some(host) = env.optional(ENV_DOCKER_HOST) {
            if let Err(reason) = steward_engine::validate_docker_host(&host) {
                env.error(ENV_DOCKER_HOST, &host, reason);
            }
        }
        let log_format = match env.choice(ENV_LOG_FORMAT, "json", &["json", "pretty"]) {
            "pretty" => LogFormat::Pretty,
            _ => LogFormat::Json,
        };
        let log_filter = env.parse_with(ENV_LOG, "info".to_owned(), |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_owned())
                .map_err(|e| e.to_string())
        });
        let engine_timeout = env.duration(ENV_ENGINE_TIMEOUT, steward_engine::DEFAULT_DEADLINE);
        if engine_timeout < Duration::from_secs(1) || engine_timeout > steward_engine::MAX_DEADLINE
        {
            env.error(ENV_ENGINE_TIMEOUT, &format!("{engine_timeout:?}"), "from 1s to 1h");
        }
        let uses_docker = !matches!(service, Service::Notifier | Service::Cli);
        Self {
            host: if uses_docker { env.host() } else { None },
            service,
            bus,
            http_addr: env.http_addr(service),
            log_format,
            log_filter,
            ack_wait: env.ack_wait(),
            max_deliver: env.max_deliver(),
            shutdown_grace: env.duration(ENV_SHUTDOWN_GRACE, Duration::from_secs(20)),
            uses_docker,
            engine_timeout,
            traces: crate::telemetry::traces_wanted(env),
        }
    }
}
