//! `steward`: the operator's command line. Human commands are events too, so everything it
//! does lands in the audit trail.

#![allow(clippy::print_stdout)]

mod audit;
mod backups;
mod deploys;
mod events;
mod events_import;
mod hosts;
mod kit;
mod notify;
mod rollback;
mod setup;
mod status;
mod updates;
mod when;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use steward_bus::{Bus, BusConfig};
use steward_events::{Event, EventData, Service, WatchRequested};
use steward_settings::{
    ConfigError, Env, ENV_NATS_URL, ENV_NATS_USER, ENV_STREAM, ENV_SUBJECT_PREFIX,
};

/// Steward: keeps a self-hosted Gitea stack updated, backed up and watched.
#[derive(Debug, Parser)]
#[command(name = "steward", version, about)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

/// Where the bus is. Each flag stands for its variable and is read and checked as the
/// services read that variable (`steward_bus::BusConfig::read`): the flag wins over the
/// variable, and a value the services refuse is refused here with the same words.
#[derive(Debug, Args)]
struct Connection {
    /// NATS server URL(s) [env: STEWARD_NATS_URL] [default: nats://127.0.0.1:4222].
    #[arg(long, global = true)]
    nats_url: Option<String>,
    /// NATS user (the CLI's own: it may publish the human commands) [env: STEWARD_NATS_USER].
    /// The password comes from STEWARD_NATS_PASSWORD or the file named by
    /// STEWARD_NATS_PASSWORD_FILE.
    #[arg(long, global = true)]
    nats_user: Option<String>,
    /// Stream name [env: STEWARD_STREAM] [default: STEWARD].
    #[arg(long, global = true)]
    stream: Option<String>,
    /// Subject prefix of the installation [env: STEWARD_SUBJECT_PREFIX].
    #[arg(long, global = true)]
    subject_prefix: Option<String>,
    /// How long to wait for NATS.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask the watcher to check registries now (publishes `watch.requested`).
    Check {
        /// Only this container.
        container: Option<String>,
    },
    /// Watched containers: policy, running digest, newest known digest.
    Status {
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
        /// Only this host's containers (its agents' STEWARD_HOST); default every host.
        #[arg(long, value_parser = hosts::parse)]
        host: Option<String>,
    },
    /// Updates waiting for approval or in progress.
    Updates {
        /// Also finished ones.
        #[arg(long)]
        all: bool,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
        /// Only this host's updates; default every host.
        #[arg(long, value_parser = hosts::parse)]
        host: Option<String>,
    },
    /// Approve a pending update (id or a unique prefix of it).
    Approve {
        /// The update id, as `steward updates` shows it.
        id: String,
    },
    /// Reject a pending update.
    Reject {
        /// The update id.
        id: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Bring back the image a container ran before its last successful update, through the
    /// same backup, swap and health gate as an update; wait for the outcome. Refused when no
    /// previous image is recorded or an update of the container is in progress.
    Rollback {
        /// The container, by name.
        container: String,
        /// Another digest of the container's own repository to go back to (sha256:...).
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for the outcome (a backup may come first).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Backups: take one now, list them, verify one.
    #[command(subcommand)]
    Backup(backups::BackupCommand),
    /// TLS certificates: run the renewal now.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Notifications: send a test through every configured channel.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Restore a backup (checksums are checked before anything is touched).
    Restore(backups::RestoreArgs),
    /// The off-host kit: what rebuilding this host needs besides the bucket (.env, secrets/,
    /// the compose project), encrypted with age.
    #[command(subcommand)]
    Kit(kit::KitCommand),
    /// Deployments from git: list them, approve or reject one, or pin an environment to a
    /// commit (`steward deploy ENV COMMIT`).
    Deploy(deploys::DeployArgs),
    /// Read the event stream.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Every update, backup, restore and outage as one timeline, with outcome and duration.
    Audit(audit::AuditArgs),
    /// Create or update the stream, every service's consumer and the KV buckets (run once
    /// at install and after every upgrade, as the `setup` NATS user; services only look them
    /// up). Reads STEWARD_EVENT_RETENTION, STEWARD_DUPLICATE_WINDOW, STEWARD_ACK_WAIT and
    /// STEWARD_MAX_DELIVER.
    Setup,
    /// Print the NATS server's users and permissions for this installation (STEWARD_HOSTS:
    /// each agent's user once per host, confined to it), to include in nats-server's config.
    NatsAuthorization,
    /// Print the NATS server's own configuration (nats.conf) for where it sits: the compose
    /// stack's one server, or under the leaf-node topology (STEWARD_NATS_DOMAIN) the hub with
    /// its leaf-node port or a host's leaf with its link to the hub, TLS on that link unless
    /// --no-tls. It includes authorization.conf (`steward nats-authorization`).
    NatsConfig(setup::NatsConfigArgs),
    /// Exit 0 when the service in this container answers `/healthz` (the image's
    /// HEALTHCHECK); its address is the container's STEWARD_HTTP_ADDR.
    Healthcheck {
        /// The service's address; `0.0.0.0` means this host. Default: STEWARD_HTTP_ADDR, read
        /// as the services read it.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum NotifyCommand {
    /// Send a test message through every channel the notifier has (mail, webhook) and print
    /// what each answered; fails when one could not deliver it.
    Test {
        /// How long to wait for the first channel's answer.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Run `certbot renew` in the certbot container now (as the weekly schedule does) and
    /// reload nginx if a certificate changed; wait for the outcome.
    Renew {
        /// How long to wait for the outcome.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

impl Connection {
    /// The environment with the flags given set over their variables.
    fn env(&self) -> Env {
        let mut env = Env::from_process();
        let flags = [
            (ENV_NATS_URL, &self.nats_url),
            (ENV_NATS_USER, &self.nats_user),
            (ENV_STREAM, &self.stream),
            (ENV_SUBJECT_PREFIX, &self.subject_prefix),
        ];
        for (name, flag) in flags {
            if let Some(value) = flag {
                env.set(name, value.clone());
            }
        }
        env
    }

    /// The bus settings as the services read them (the password never from the command line:
    /// it would show in `ps` and the shell history); errors go to `env`.
    fn read(&self, env: &mut Env) -> BusConfig {
        BusConfig {
            connect_timeout: self.timeout,
            publish_timeout: self.timeout,
            ..BusConfig::read(env)
        }
    }

    async fn bus(&self) -> anyhow::Result<Bus> {
        let mut env = self.env();
        let cfg = self.read(&mut env);
        env.finish()?;
        let url = steward_events::redact_url(&cfg.url);
        Bus::connect(cfg, Service::Cli.binary())
            .await
            .with_context(|| format!("cannot reach the bus at {url}"))
    }
}

/// `user@host` of whoever runs the command, for the audit trail.
pub(crate) fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{user}@{host}")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { container } => {
            let bus = cli.conn.bus().await?;
            // Under host routing, every host's watcher, or the one STEWARD_HOST names.
            let named = {
                let mut env = cli.conn.env();
                let host = env.host();
                env.finish()?;
                host
            };
            let hosts: Vec<Option<String>> = match (bus.config().routes_by_host(), named) {
                (false, _) => vec![None],
                (true, Some(host)) => vec![Some(host)],
                (true, None) => bus.config().hosts.iter().cloned().map(Some).collect(),
            };
            for host in hosts {
                let event = Event::new(
                    steward_settings::event_source(Service::Cli),
                    WatchRequested { container: container.clone(), requested_by: Some(who()) },
                )
                .with_host(host.clone());
                bus.publish(&event).await?;
                match host {
                    Some(host) => println!("watch requested on {host} ({})", event.id),
                    None => println!("watch requested ({})", event.id),
                }
            }
            Ok(())
        }
        Command::Status { json, host } => status::run(&cli.conn, json, host.as_deref()).await,
        Command::Updates { all, json, host } => {
            updates::list(&cli.conn, all, json, host.as_deref()).await
        }
        Command::Approve { id } => updates::decide(&cli.conn, &id, true, None).await,
        Command::Reject { id, reason } => updates::decide(&cli.conn, &id, false, reason).await,
        Command::Rollback { container, to, wait } => {
            rollback::run(&cli.conn, container, to, wait).await
        }
        Command::Backup(cmd) => backups::run(cmd, &cli.conn).await,
        Command::Restore(args) => backups::restore(args, &cli.conn).await,
        Command::Kit(cmd) => kit::run(cmd),
        Command::Deploy(cmd) => deploys::run(cmd, &cli.conn).await,
        Command::Certs(CertsCommand::Renew { wait }) => renew_certs(&cli.conn, wait).await,
        Command::Notify(NotifyCommand::Test { wait }) => notify::test(&cli.conn, wait).await,
        Command::Events(cmd) => events::run(cmd, &cli.conn).await,
        Command::Audit(args) => audit::run(args, &cli.conn).await,
        Command::Setup => setup::run(&cli.conn).await,
        Command::NatsAuthorization => setup::authorization(&cli.conn),
        Command::NatsConfig(args) => setup::nats_config(&cli.conn, args),
        Command::Healthcheck { addr } => healthcheck(addr).await,
    }
}

/// `steward certs renew`: the updater runs the renewal; its outcome, told.
async fn renew_certs(conn: &Connection, wait: Duration) -> anyhow::Result<()> {
    let data = steward_events::CertsRequested { requested_by: Some(who()) };
    let outcome =
        backups::request(conn, None, data, &["certs.checked", "certs.failed"], wait, "renewing")
            .await?;
    match outcome.data {
        EventData::CertsChecked(c) if c.renewed.is_empty() => {
            println!("certificates checked in {}: none was due", c.container);
            Ok(())
        }
        EventData::CertsChecked(c) => {
            println!(
                "certificates renewed in {}: {}; reloaded: {}",
                c.container,
                c.renewed.join(", "),
                if c.reloaded.is_empty() { "nothing".into() } else { c.reloaded.join(", ") }
            );
            Ok(())
        }
        EventData::CertsFailed(f) => {
            backups::failed("certificate renewal FAILED", &f.reason, &f.log_tail)
        }
        _ => anyhow::bail!("unexpected outcome {}", outcome.event_type()),
    }
}

/// GET `/healthz` on `addr` within a few seconds.
async fn healthcheck(addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let mut addr = match addr {
        Some(addr) => addr,
        None => {
            let mut env = steward_settings::Env::from_process();
            let addr = env.http_addr(steward_events::Service::Cli);
            env.finish()?;
            addr
        }
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli).await;
    // The CLI logs nothing: what the hub's origin check left out of the output is said here
    // (docs/runbooks.md, "The centre refused a message from a host's leaf").
    let refused = steward_bus::refused_origins();
    if refused > 0 {
        eprintln!(
            "steward: warning: {refused} message(s) or record(s) at the hub were left out: a \
             host's leaf brought them about another host or about none (docs/runbooks.md, \
             \"The centre refused a message from a host's leaf\")"
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steward: {e:#}");
            // As the services: a bad setting is exit code 2, anything else 1.
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
