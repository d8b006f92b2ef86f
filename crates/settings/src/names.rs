//! The names of the settings more than one crate reads, in one place.

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
/// How many copies of the stream and the KV buckets a NATS cluster keeps (`steward setup`
/// reads it): 1 on a single server, 3 on a three-node cluster (any one node may be lost).
pub const ENV_NATS_REPLICAS: &str = "STEWARD_NATS_REPLICAS";
/// The JetStream domain of the NATS server this participant connects to, under the leaf-node
/// topology (docs/scaling.md): a host's name on that host's leaf node, another name (`hub`) at
/// the centre; unset: one NATS system without leaf nodes.
pub const ENV_NATS_DOMAIN: &str = "STEWARD_NATS_DOMAIN";
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
/// The host an engine-bound agent looks after (default: the engine's name, else the hostname).
pub const ENV_HOST: &str = "STEWARD_HOST";
/// The routing table's hosts, comma-separated (default none: one host, no host routing). Set,
/// every participant routes by host: an agent's events and the requests for it go on its
/// host's subjects, which its NATS user alone may use (docs/security.md).
pub const ENV_HOSTS: &str = "STEWARD_HOSTS";
/// Only containers labelled `steward.scope=<this>` (unset: only containers without the label).
pub const ENV_SCOPE: &str = "STEWARD_SCOPE";
/// HAProxy's admin socket (`stats socket ... level admin`), through which start-first swaps
/// (`steward.update.strategy=start-first`, of the updater and the deployer) switch traffic;
/// unset: a start-first update or deployment fails before touching anything.
pub const ENV_HAPROXY_SOCKET: &str = "STEWARD_HAPROXY_SOCKET";
/// How long a start-first swap waits for HAProxy to see the new server up, and then for the
/// old server's sessions to end.
pub const ENV_HAPROXY_SWITCH_TIMEOUT: &str = "STEWARD_HAPROXY_SWITCH_TIMEOUT";
