//! Bus settings and the namespace that isolates one Steward installation (or one test).

use std::time::Duration;

use steward_settings::{
    Env, ENV_DUPLICATE_WINDOW, ENV_EVENT_RETENTION, ENV_NATS_DOMAIN, ENV_NATS_PASSWORD,
    ENV_NATS_REPLICAS, ENV_NATS_URL, ENV_NATS_USER, ENV_PUBLISH_TIMEOUT, ENV_STREAM,
    ENV_SUBJECT_PREFIX,
};

/// Where Steward's subjects and state live on a NATS server.
///
/// Production uses the defaults (stream `STEWARD`, no prefix). Tests give each test its own
/// stream and subject prefix so they can run in parallel on one server: JetStream refuses two
/// streams whose subjects overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Stream name; also the prefix of KV bucket names.
    pub stream: String,
    /// Prepended to every subject, e.g. `t1a2b.`; empty in production.
    pub prefix: String,
}

impl Default for Namespace {
    fn default() -> Self {
        Self { stream: "STEWARD".into(), prefix: String::new() }
    }
}

impl Namespace {
    /// A namespace with a unique stream and prefix, for one test.
    pub fn unique(tag: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        Self { stream: format!("T_{tag}_{id}").to_uppercase(), prefix: format!("t{id}.") }
    }

    /// The NATS subject of an event type.
    pub fn subject(&self, event_type: &str) -> String {
        format!("{}{}", self.prefix, event_type)
    }

    /// The NATS subject of an event type addressed to `host` (`<prefix>host.<host>.<type>`),
    /// or the plain subject for none ([`steward_events::address`]).
    pub fn addressed(&self, host: Option<&str>, event_type: &str) -> String {
        self.subject(&steward_events::address(host, event_type))
    }

    /// Every subject addressed to `host`: an agent's consumer filter and its permissions.
    pub fn host_subjects(&self, host: &str) -> String {
        self.subject(&format!("{}.{host}.>", steward_events::HOST_FAMILY))
    }

    /// A NATS subject without this namespace's prefix (`<type>`, `host.<host>.<type>`,
    /// `dlq.<consumer>`), if it is in this namespace.
    pub fn unprefixed<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())
    }

    /// The event type of a NATS subject, if it is in this namespace (the host an addressed
    /// subject names left out).
    pub fn event_type<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.unprefixed(subject).map(|s| steward_events::split_address(s).1)
    }

    /// The prefix of the subjects on which a host's leaf delivers its stream to the hub's
    /// (`<prefix>leaf.<host>`, the source's deliver prefix): only that host's leaf link may
    /// publish under it, so no other host can pass events off as its.
    pub fn leaf_delivery(&self, host: &str) -> String {
        self.subject(&format!("leaf.{host}"))
    }

    /// The dead-letter subject of a consumer.
    pub fn dead_letter_subject(&self, consumer: &str) -> String {
        format!("{}dlq.{}", self.prefix, consumer)
    }

    /// Name of a KV bucket belonging to this namespace.
    pub fn bucket(&self, name: &str) -> String {
        format!("{}_{}", self.stream, name)
    }
}

/// Settings of the bus connection and the stream.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// Stream and subject namespace.
    pub namespace: Namespace,
    /// How long events are kept (stream `max_age`).
    pub retention: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// How long a publish may keep retrying while NATS is away before it fails.
    pub publish_timeout: Duration,
    /// How long `connect` waits for NATS at start.
    pub connect_timeout: Duration,
    /// Timeout of one JetStream API request or publish ack.
    pub request_timeout: Duration,
    /// The NATS user to log in as; `None` for a server without authorization.
    pub credentials: Option<Credentials>,
    /// The host an engine-bound agent looks after (`STEWARD_HOST`, resolved by the runtime):
    /// every event it publishes without a host of its own is stamped with it. `None` for the
    /// central participants (notifier, CLI).
    pub host: Option<String>,
    /// The routing table's hosts (`STEWARD_HOSTS`); empty: one host, no host routing (every
    /// subject as before hosts). Set, the events of an agent and those addressed to it go on
    /// its host's subjects ([`Namespace::addressed`]).
    pub hosts: Vec<String>,
    /// Copies of the stream and of every KV bucket `steward setup` provisions
    /// (`STEWARD_NATS_REPLICAS`): 1 on one server, 3 on a three-node cluster. Durable
    /// consumers take the stream's.
    pub replicas: usize,
    /// The JetStream domain of the server this participant connects to
    /// (`STEWARD_NATS_DOMAIN`), under the leaf-node topology: one of `hosts` on that host's
    /// leaf node, another name at the hub. `None`: one NATS system, no leaf nodes.
    pub domain: Option<String>,
}

/// Where the NATS server a participant connects to sits ([`BusConfig::topology`]); decides
/// what `steward setup` provisions there ([`Bus::setup`](crate::Bus::setup)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology<'a> {
    /// One NATS system (one server, or a cluster) for every participant: the stream holds
    /// every subject, every consumer and bucket is on it.
    Single,
    /// The centre's server under the leaf-node topology: its stream holds the centre's own
    /// subjects and sources every host's leaf stream; the central consumers are on it.
    Hub {
        /// The hosts whose leaf streams it sources (their domains are their names).
        hosts: &'a [String],
    },
    /// A host's leaf node: its stream holds that host's subjects (and its dead letters); its
    /// agents' consumers and the buckets are on it.
    Leaf {
        /// The host (its leaf's JetStream domain).
        host: &'a str,
    },
}

/// A NATS user and password. The password never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name, e.g. `watcher`.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            namespace: Namespace::default(),
            retention: Duration::from_secs(365 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            publish_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            credentials: None,
            host: None,
            hosts: vec![],
            replicas: 1,
            domain: None,
        }
    }
}

impl BusConfig {
    /// Reads the bus settings every participant shares (URL, user and password, stream,
    /// subject prefix, retention, duplicate window, publish timeout), with their defaults;
    /// errors go to `env`. The services and the CLI read them here, so both accept and refuse
    /// the same values with the same words.
    pub fn read(env: &mut Env) -> Self {
        let defaults = Self::default();
        let url = match env.optional(ENV_NATS_URL) {
            None => defaults.url.clone(),
            Some(raw) => match validate_url(raw.trim()) {
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
        let credentials = match (env.optional(ENV_NATS_USER), env.optional(ENV_NATS_PASSWORD)) {
            (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
                Some(Credentials { user, password })
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
        let hosts = env.hosts();
        let domain = match env.optional(ENV_NATS_DOMAIN).map(|d| d.trim().to_owned()) {
            None => None,
            Some(d) if d.is_empty() => None,
            Some(d) => match steward_events::check_host(&d) {
                Err(rule) => {
                    env.error(ENV_NATS_DOMAIN, &d, rule);
                    None
                }
                // Leaf nodes are one per host: without the routing table there is no host to
                // give a leaf, nor a stream of its subjects for the hub to source.
                Ok(()) if hosts.is_empty() => {
                    env.error(ENV_NATS_DOMAIN, &d, "needs STEWARD_HOSTS (leaf nodes are per host)");
                    None
                }
                // The kit's hub would take itself for that host's leaf.
                Ok(()) if hosts.iter().any(|h| h == steward_events::HUB_DOMAIN) => {
                    env.error(
                        ENV_NATS_DOMAIN,
                        &d,
                        format!(
                            "STEWARD_HOSTS names a host {:?}, the compose kit's hub domain: under leaf nodes name the host otherwise",
                            steward_events::HUB_DOMAIN
                        ),
                    );
                    None
                }
                Ok(()) => Some(d),
            },
        };
        Self {
            url,
            credentials,
            namespace: Namespace { stream, prefix },
            hosts,
            domain,
            retention: env.duration(ENV_EVENT_RETENTION, defaults.retention),
            duplicate_window: env.duration(ENV_DUPLICATE_WINDOW, defaults.duplicate_window),
            publish_timeout: env.duration(ENV_PUBLISH_TIMEOUT, defaults.publish_timeout),
            replicas: env.parse_with(ENV_NATS_REPLICAS, defaults.replicas, |s| {
                match s.trim().parse::<usize>() {
                    Ok(n) if (1..=5).contains(&n) => Ok(n),
                    _ => Err(
                        "1 (one server) to 5 (JetStream's limit), e.g. 3 on a three-node cluster"
                            .to_owned(),
                    ),
                }
            }),
            ..defaults
        }
    }
}

impl BusConfig {
    /// Where the server this participant connects to sits: a domain naming one of the hosts
    /// is that host's leaf, another domain the hub; no domain, one NATS system.
    pub fn topology(&self) -> Topology<'_> {
        match &self.domain {
            None => Topology::Single,
            Some(d) => match self.hosts.iter().find(|h| *h == d) {
                Some(host) => Topology::Leaf { host },
                None => Topology::Hub { hosts: &self.hosts },
            },
        }
    }

    /// Whether this installation routes by host (`STEWARD_HOSTS` set).
    pub fn routes_by_host(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The host this participant is confined to: an agent's under host routing, else `None`
    /// (no host routing, or a central participant).
    pub fn route_host(&self) -> Option<&str> {
        self.host.as_deref().filter(|_| self.routes_by_host())
    }

    /// Under host routing, the host whose agent alone may write state key `key` (`<host>.<key>`:
    /// the server enforces it, so a central reader takes a record's host from here, never from
    /// the `host` the record says); `None` without routing or for a key from before it.
    pub fn host_of_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        let (host, _) = key.split_once('.').filter(|_| self.routes_by_host())?;
        self.hosts.iter().any(|h| h == host).then_some(host)
    }

    /// The subject `event` goes on: its host's (its own `host`, else this agent's) under host
    /// routing, the plain one otherwise. An event for the agents that names no host, or a
    /// host the table does not know, has no subject: no consumer would ever read it.
    pub fn subject_of(&self, event: &steward_events::Event) -> Result<String, String> {
        let event_type = event.event_type();
        let ns = &self.namespace;
        if !self.routes_by_host() {
            return Ok(ns.subject(event_type));
        }
        match event.host.as_deref().or(self.host.as_deref()) {
            Some(host) if self.hosts.iter().any(|h| h == host) => {
                Ok(ns.addressed(Some(host), event_type))
            }
            Some(host) => Err(format!(
                "host {host:?} is not in STEWARD_HOSTS ({}): nothing would read it",
                self.hosts.join(",")
            )),
            None if steward_events::Service::DAEMONS
                .iter()
                .any(|s| s.is_agent() && s.consumes().contains(&event_type)) =>
            {
                Err(format!(
                    "{event_type} names no host: under host routing it must name one of {}",
                    self.hosts.join(",")
                ))
            }
            None => Ok(ns.subject(event_type)),
        }
    }
}

/// Checks a NATS URL list (`nats://host:port`, comma-separated) as the client will parse it.
pub fn validate_url(urls: &str) -> Result<(), String> {
    if urls.trim().is_empty() {
        return Err("empty".into());
    }
    for url in urls.split(',') {
        url.trim().parse::<async_nats::ServerAddr>().map_err(|e| {
            let shown = steward_events::redact_url(url);
            steward_events::redact_urls_in(&format!("{shown:?}: {e}"))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_events::{Event, NotifySent, UpdateApproved};

    fn approval(host: Option<&str>) -> Event {
        let data = UpdateApproved { update_id: uuid::Uuid::now_v7(), by: "op".into() };
        Event::new("t", data).with_host(host.map(str::to_owned))
    }

    #[test]
    fn the_domain_says_where_the_server_sits() {
        let read = |pairs: &[(&str, &str)]| {
            let mut env = steward_settings::Env::from_pairs(pairs.iter().copied());
            let cfg = BusConfig::read(&mut env);
            (cfg, env.finish().err().map(|e| e.to_string()))
        };
        let (cfg, err) = read(&[]);
        assert_eq!((cfg.topology(), err), (Topology::Single, None));
        let hosts = ("STEWARD_HOSTS", "vps-a,vps-b");
        let (cfg, err) = read(&[hosts, ("STEWARD_NATS_DOMAIN", "vps-b")]);
        assert_eq!((cfg.topology(), err), (Topology::Leaf { host: "vps-b" }, None));
        let (cfg, err) = read(&[hosts, ("STEWARD_NATS_DOMAIN", "hub")]);
        let table = ["vps-a".to_owned(), "vps-b".to_owned()];
        assert_eq!((cfg.topology(), err), (Topology::Hub { hosts: &table }, None));
        // Leaf nodes are per host: a domain without the routing table is refused, and so is
        // one that cannot be a subject token.
        let (_, err) = read(&[("STEWARD_NATS_DOMAIN", "hub")]);
        assert!(err.is_some_and(|e| e.contains("needs STEWARD_HOSTS")));
        let (_, err) = read(&[("STEWARD_HOSTS", "vps-a,hub"), ("STEWARD_NATS_DOMAIN", "vps-a")]);
        assert!(err.is_some_and(|e| e.contains("the compose kit's hub domain")));
        // One NATS system: a host may be named so.
        let (cfg, err) = read(&[("STEWARD_HOSTS", "vps-a,hub")]);
        assert!(err.is_none() && cfg.hosts.len() == 2, "{err:?}");
        let (_, err) = read(&[hosts, ("STEWARD_NATS_DOMAIN", "a.b")]);
        assert!(err.is_some_and(|e| e.contains("STEWARD_NATS_DOMAIN")));
    }

    #[test]
    fn a_keys_host_is_its_prefix_when_the_table_knows_it() {
        let single = BusConfig::default();
        assert_eq!(single.host_of_key("vps-a.gitea"), None);
        let central = BusConfig { hosts: vec!["vps-a".into(), "b".into()], ..single };
        assert_eq!(central.host_of_key("vps-a.gitea"), Some("vps-a"));
        assert_eq!(central.host_of_key("b.my.app"), Some("b"));
        // From before routing: a container name, dotted or not.
        assert_eq!(central.host_of_key("gitea"), None);
        assert_eq!(central.host_of_key("my.app"), None);
    }

    #[test]
    fn one_rule_gives_an_events_subject() {
        let ns = Namespace { stream: "S".into(), prefix: "p.".into() };
        let single =
            BusConfig { namespace: ns.clone(), host: Some("a".into()), ..BusConfig::default() };
        // Without a host table, as before hosts, whatever host an event names.
        assert_eq!(single.subject_of(&approval(Some("a"))).as_deref(), Ok("p.update.approved"));
        assert_eq!(single.route_host(), None);
        let hosts = vec!["a".to_owned(), "b".to_owned()];
        let agent = BusConfig { hosts: hosts.clone(), ..single };
        assert_eq!(agent.route_host(), Some("a"));
        // An agent's own events are its host's; an event naming its host keeps it.
        assert_eq!(agent.subject_of(&approval(None)).as_deref(), Ok("p.host.a.update.approved"));
        assert_eq!(
            agent.subject_of(&approval(Some("b"))).as_deref(),
            Ok("p.host.b.update.approved")
        );
        let central = BusConfig { namespace: ns, hosts, ..BusConfig::default() };
        assert!(central.subject_of(&approval(None)).is_err_and(|e| e.contains("names no host")));
        assert!(central.subject_of(&approval(Some("c"))).is_err_and(|e| e.contains("not in")));
        // What only the centre reads needs no host.
        let sent = Event::new(
            "t",
            NotifySent {
                channel: "email".into(),
                recipients: vec![],
                title: "x".into(),
                about: vec![],
            },
        );
        assert_eq!(central.subject_of(&sent).as_deref(), Ok("p.notify.sent"));
        assert_eq!(
            central.namespace.event_type("p.host.b.update.approved"),
            Some("update.approved")
        );
    }
}
