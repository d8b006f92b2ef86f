//! Who publishes and who consumes what: the routing table of the bus, as data.
//!
//! The bus crate turns `consumes` into durable consumer filters; the compose stack's NATS
//! permissions are derived from the same table, so the two cannot drift.

/// A Steward service (or the CLI) as a participant on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// `steward-watcher`.
    Watcher,
    /// `steward-updater`.
    Updater,
    /// `steward-backup`.
    Backup,
    /// `steward-health`.
    Health,
    /// `steward-notifier`.
    Notifier,
    /// `steward-deployer`.
    Deployer,
    /// The `steward` CLI.
    Cli,
}

impl Service {
    /// The long-running services.
    pub const DAEMONS: [Service; 6] = [
        Service::Watcher,
        Service::Updater,
        Service::Backup,
        Service::Health,
        Service::Notifier,
        Service::Deployer,
    ];

    /// Every participant: the five services and the CLI.
    pub const ALL: [Service; 7] = [
        Service::Watcher,
        Service::Updater,
        Service::Backup,
        Service::Health,
        Service::Notifier,
        Service::Deployer,
        Service::Cli,
    ];

    /// Short name: `watcher`, `updater`, ... `cli`. Used for consumer and metric names.
    pub fn name(self) -> &'static str {
        match self {
            Service::Watcher => "watcher",
            Service::Updater => "updater",
            Service::Backup => "backup",
            Service::Health => "health",
            Service::Notifier => "notifier",
            Service::Deployer => "deployer",
            Service::Cli => "cli",
        }
    }

    /// Name of the binary.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Watcher => "steward-watcher",
            Service::Updater => "steward-updater",
            Service::Backup => "steward-backup",
            Service::Health => "steward-health",
            Service::Notifier => "steward-notifier",
            Service::Deployer => "steward-deployer",
            Service::Cli => "steward",
        }
    }

    /// Whether it runs once per engine and looks after that engine's containers (an agent:
    /// watcher, updater, backup, health, deployer) rather than once for every host (the
    /// notifier, the CLI). Under host routing an agent is confined to its host.
    pub fn is_agent(self) -> bool {
        !matches!(self, Service::Notifier | Service::Cli)
    }

    /// Its NATS user and durable consumer name: `updater`, or `updater-<host>` for an agent
    /// under host routing (service names have no `-`, so the two parts never blur). A
    /// central participant has one identity whatever `host` says.
    pub fn identity(self, host: Option<&str>) -> String {
        match host {
            Some(host) if self.is_agent() => format!("{}-{host}", self.name()),
            _ => self.name().to_owned(),
        }
    }

    /// The agent and host an identity of [`Service::identity`] names (`updater-vps-a`), or
    /// `None` for a central identity or an agent's without a host.
    pub fn agent_and_host(identity: &str) -> Option<(Service, &str)> {
        Service::ALL.iter().filter(|s| s.is_agent()).find_map(|s| {
            let host = identity.strip_prefix(s.name())?.strip_prefix('-')?;
            (!host.is_empty()).then_some((*s, host))
        })
    }

    /// Event types this service's durable consumer receives.
    pub fn consumes(self) -> &'static [&'static str] {
        match self {
            Service::Watcher => &["watch.requested", "update.succeeded"],
            Service::Updater => &[
                "image.updated",
                "update.approved",
                "update.rejected",
                "backup.done",
                "backup.failed",
                "certs.requested",
                "rollback.requested",
            ],
            Service::Backup => &[
                "backup.requested",
                "verify.requested",
                "restore.requested",
                "backup.resume_requested",
            ],
            // Health leaves a container alone while it is being updated, re-baselines it
            // after an update or restore, and excuses a container stopped for a backup copy
            // while a backup runs.
            Service::Health => &[
                "update.started",
                "update.failed",
                "update.succeeded",
                "update.rolled_back",
                "restore.done",
                "backup.started",
                "backup.done",
                "backup.failed",
            ],
            // `image.updated` for containers whose policy is `notify`: nobody else tells the
            // operator about those.
            Service::Notifier => &[
                "image.updated",
                "update.pending",
                "update.succeeded",
                "update.failed",
                "update.rolled_back",
                "update.written_back",
                "backup.failed",
                "backup.stale",
                "backup.resumed",
                "verify.failed",
                "restore.done",
                "restore.failed",
                "health.failed",
                "health.recovered",
                "health.engine_failed",
                "health.engine_recovered",
                "health.restarted",
                "health.restart_limited",
                "health.cert_expiring",
                "health.cert_renewed",
                "health.disk_low",
                "health.disk_recovered",
                "health.config_invalid",
                "health.config_recovered",
                "certs.failed",
                "watch.registry_failed",
                "watch.registry_recovered",
                "notify.test_requested",
                "deploy.pending",
                "deploy.deferred",
                "deploy.succeeded",
                "deploy.failed",
                "deploy.rolled_back",
                "deploy.written_back",
            ],
            // Its own requests (webhook, polling, the CLI), approvals, and the outcome of the
            // pre-deployment backup it asked for.
            Service::Deployer => &[
                "deploy.requested",
                "deploy.pin_requested",
                "deploy.approved",
                "deploy.rejected",
                "backup.done",
                "backup.failed",
                // Handed over for a commit (`committer: deployer`); others are ignored.
                "update.written_back",
            ],
            Service::Cli => &[],
        }
    }

    /// Event types this participant may publish.
    pub fn publishes(self) -> &'static [&'static str] {
        match self {
            Service::Watcher => {
                &["image.updated", "watch.registry_failed", "watch.registry_recovered"]
            }
            Service::Updater => &[
                "update.pending",
                "update.approved",
                "update.rejected",
                "update.started",
                "update.succeeded",
                "update.failed",
                "update.rolled_back",
                "update.written_back",
                "backup.requested",
                "certs.checked",
                "certs.failed",
                "rollback.refused",
                "image.pruned",
            ],
            Service::Backup => &[
                "backup.started",
                "backup.done",
                "backup.failed",
                "backup.verified",
                "backup.pruned",
                "backup.stale",
                "backup.resumed",
                "backup.resume_failed",
                "verify.failed",
                "restore.done",
                "restore.failed",
            ],
            Service::Health => &[
                "health.failed",
                "health.recovered",
                "health.engine_failed",
                "health.engine_recovered",
                "health.restarted",
                "health.restart_limited",
                "health.cert_expiring",
                "health.cert_renewed",
                "health.disk_low",
                "health.disk_recovered",
                "health.config_invalid",
                "health.config_recovered",
            ],
            Service::Notifier => &["notify.sent", "notify.failed"],
            // `deploy.approved|rejected` from its approval page (the CLI's too).
            Service::Deployer => &[
                "deploy.requested",
                "deploy.pending",
                "deploy.deferred",
                "deploy.approved",
                "deploy.rejected",
                "deploy.started",
                "deploy.succeeded",
                "deploy.failed",
                "deploy.rolled_back",
                "deploy.written_back",
                "backup.requested",
            ],
            Service::Cli => &[
                "watch.requested",
                "update.approved",
                "update.rejected",
                "backup.requested",
                "verify.requested",
                "restore.requested",
                "backup.resume_requested",
                "certs.requested",
                "notify.test_requested",
                "rollback.requested",
                "deploy.requested",
                "deploy.pin_requested",
                "deploy.approved",
                "deploy.rejected",
            ],
        }
    }
}

impl Service {
    /// KV buckets (names within the namespace) this participant writes; it creates them.
    pub fn writes_buckets(self) -> &'static [&'static str] {
        use crate::records::*;
        match self {
            Service::Watcher => &[WATCH_BUCKET, REGISTRY_EPISODES_BUCKET],
            Service::Updater => &[UPDATE_BUCKET, UPDATE_QUEUE_BUCKET, USED_LINKS_BUCKET],
            Service::Health => &[HEALTH_BUCKET],
            Service::Notifier => &[OUTBOX_BUCKET, ANNOUNCED_BUCKET],
            Service::Deployer => &[DEPLOY_BUCKET, USED_DEPLOY_LINKS_BUCKET],
            Service::Backup | Service::Cli => &[],
        }
    }

    /// KV buckets of other participants this one reads (and may not change).
    pub fn reads_buckets(self) -> &'static [&'static str] {
        use crate::records::*;
        match self {
            // The restore guard reads UPDATES (no restore while an update swaps or gates a
            // container); every backup exports every state bucket with the stream.
            Service::Backup => &[
                WATCH_BUCKET,
                REGISTRY_EPISODES_BUCKET,
                UPDATE_BUCKET,
                UPDATE_QUEUE_BUCKET,
                USED_LINKS_BUCKET,
                HEALTH_BUCKET,
                OUTBOX_BUCKET,
                ANNOUNCED_BUCKET,
                DEPLOY_BUCKET,
                USED_DEPLOY_LINKS_BUCKET,
            ],
            // An `image.updated` is applied only while its digest is the newest the watcher
            // knows: a redelivered or replayed older one never downgrades a container.
            Service::Updater => &[WATCH_BUCKET],
            // `steward status` and `steward updates`.
            Service::Cli => &[WATCH_BUCKET, UPDATE_BUCKET, DEPLOY_BUCKET],
            _ => &[],
        }
    }

    /// Whether it reports progress of long jobs (`progress.*`), and whether it follows it.
    pub fn publishes_progress(self) -> bool {
        self == Service::Backup
    }

    /// Whether it follows progress reports (the CLI's progress bars).
    pub fn follows_progress(self) -> bool {
        self == Service::Cli
    }

    /// Whether it serves approval links on request (it holds an approval secret): the
    /// updater for image updates, the deployer for deployments.
    pub fn serves_approval_links(self) -> bool {
        matches!(self, Service::Updater | Service::Deployer)
    }

    /// Whether it may ask for an approval link (to mail it).
    pub fn requests_approval_links(self) -> bool {
        self == Service::Notifier
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
