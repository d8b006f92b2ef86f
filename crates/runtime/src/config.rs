//! The settings every service shares, their names and defaults, in one place.

use std::net::SocketAddr;
use std::time::Duration;

use steward_bus::{BusConfig, Namespace};
use steward_events::Service;

use crate::env::Env;

/// NATS server URL(s).
pub const ENV_NATS_URL: &str = "STEWARD_NATS_URL";
/// NATS user of this service (with [`ENV_NATS_PASSWORD`]); unset for a server without users.
pub const ENV_NATS_USER: &str = "STEWARD_NATS_USER";
/// NATS password (or `STEWARD_NATS_PASSWORD_FILE`).
pub const ENV_NATS_PASSWORD: &str = "STEWARD_NATS_PASSWORD";
/// Address of the health/metrics HTTP server.
pub const ENV_HTTP_ADDR: &str = "STEWARD_HTTP_ADDR";
/// `json` (default) or `pretty`.
pub const ENV_LOG_FORMAT: &str = "STEWARD_LOG_FORMAT";
/// Log filter, e.g. `info` or `steward_bus=debug,info`.
pub const ENV_LOG: &str = "STEWARD_LOG";
/// Stream name (default `STEWARD`).
pub const ENV_STREAM: &str = "STEWARD_STREAM";
/// Subject prefix, to run several installations on one NATS (default none).
pub const ENV_SUBJECT_PREFIX: &str = "STEWARD_SUBJECT_PREFIX";
/// How long events are kept (default 365d).
pub const ENV_EVENT_RETENTION: &str = "STEWARD_EVENT_RETENTION";
/// Duplicate window of the stream (default 2m).
pub const ENV_DUPLICATE_WINDOW: &str = "STEWARD_DUPLICATE_WINDOW";
/// How long a publish retries while NATS is away (default 30s).
pub const ENV_PUBLISH_TIMEOUT: &str = "STEWARD_PUBLISH_TIMEOUT";
/// Redelivery timeout of an unacked event (default 30s).
pub const ENV_ACK_WAIT: &str = "STEWARD_ACK_WAIT";
/// Deliveries before an event is dead-lettered (default 5).
pub const ENV_MAX_DELIVER: &str = "STEWARD_MAX_DELIVER";
/// How long shutdown waits for the event in hand (default 20s).
pub const ENV_SHUTDOWN_GRACE: &str = "STEWARD_SHUTDOWN_GRACE";
/// Docker engine address (read by the Docker client itself).
pub const ENV_DOCKER_HOST: &str = "DOCKER_HOST";
/// How long one Docker engine call may go unanswered (default 30s).
pub const ENV_ENGINE_TIMEOUT: &str = "STEWARD_ENGINE_TIMEOUT";

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
}

/// Default HTTP port of each service, so all of them can run on one host side by side.
pub fn default_http_addr(service: Service) -> SocketAddr {
    let port = match service {
        Service::Watcher => 9101,
        Service::Updater => 9102,
        Service::Backup => 9103,
        Service::Health => 9104,
        Service::Notifier => 9105,
        Service::Cli => 9100,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl RuntimeConfig {
    /// Reads the shared settings; errors are collected in `env`.
    pub fn read(service: Service, env: &mut Env) -> Self {
        let defaults = BusConfig::default();
        let url = match env.optional(ENV_NATS_URL) {
            None => defaults.url.clone(),
            Some(raw) => match steward_bus::validate_url(raw.trim()) {
                Ok(()) => raw.trim().to_owned(),
                Err(reason) => {
                    // Also `user:pass@host`, which has no scheme for `Env::error` to see.
                    env.error(ENV_NATS_URL, &steward_events::redact_url(&raw), reason);
                    defaults.url.clone()
                }
            },
        };
        let stream = env.parse_with(ENV_STREAM, defaults.namespace.stream.clone(), |s| {
            let ok = !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            ok.then(|| s.to_owned()).ok_or_else(|| "letters, digits, '_' and '-' only".to_owned())
        });
        let prefix = env.parse_with(ENV_SUBJECT_PREFIX, String::new(), |s| {
            let ok = s.is_empty()
                || (s.ends_with('.') && !s.contains(['*', '>', ' ']) && !s.starts_with('.'));
            ok.then(|| s.to_owned())
                .ok_or_else(|| "a subject prefix ending in '.', e.g. 'site1.'".to_owned())
        });
        if let Some(host) = env.optional(ENV_DOCKER_HOST) {
            if let Err(reason) = steward_engine::validate_docker_host(&host) {
                env.error(ENV_DOCKER_HOST, &host, reason);
            }
        }
        let credentials = match (env.optional(ENV_NATS_USER), env.optional(ENV_NATS_PASSWORD)) {
            (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
                Some(steward_bus::Credentials { user, password })
            }
            (None, None) => None,
            (Some(user), _) => {
                env.error(ENV_NATS_PASSWORD, "", format!("required with {ENV_NATS_USER}={user}"));
                None
            }
            (None, Some(_)) => {
                env.error(ENV_NATS_USER, "", format!("required with {ENV_NATS_PASSWORD}"));
                None
            }
        };
        let bus = BusConfig {
            url,
            credentials,
            namespace: Namespace { stream, prefix },
            retention: env.duration(ENV_EVENT_RETENTION, defaults.retention),
            duplicate_window: env.duration(ENV_DUPLICATE_WINDOW, defaults.duplicate_window),
            publish_timeout: env.duration(ENV_PUBLISH_TIMEOUT, defaults.publish_timeout),
            ..defaults
        };
        let log_format = match env.choice(ENV_LOG_FORMAT, "json", &["json", "pretty"]) {
            "pretty" => LogFormat::Pretty,
            _ => LogFormat::Json,
        };
        let log_filter = env.parse_with(ENV_LOG, "info".to_owned(), |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_owned())
                .map_err(|e| e.to_string())
        });
        let max_deliver = env.parse_with(ENV_MAX_DELIVER, 5, |s| match s.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err("a whole number from 1 to 1000".into()),
        });
        let engine_timeout = env.duration(ENV_ENGINE_TIMEOUT, steward_engine::DEFAULT_DEADLINE);
        if engine_timeout < Duration::from_secs(1) || engine_timeout > steward_engine::MAX_DEADLINE
        {
            env.error(ENV_ENGINE_TIMEOUT, &format!("{engine_timeout:?}"), "from 1s to 1h");
        }
        let ack_wait = env.duration(ENV_ACK_WAIT, Duration::from_secs(30));
        if ack_wait < Duration::from_secs(1) {
            env.error(ENV_ACK_WAIT, &format!("{ack_wait:?}"), "must be at least 1s");
        }
        Self {
            service,
            bus,
            http_addr: env.parse(ENV_HTTP_ADDR, default_http_addr(service)),
            log_format,
            log_filter,
            ack_wait,
            max_deliver,
            shutdown_grace: env.duration(ENV_SHUTDOWN_GRACE, Duration::from_secs(20)),
            uses_docker: !matches!(service, Service::Notifier | Service::Cli),
            engine_timeout,
        }
    }
}
