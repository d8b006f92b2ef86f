//! What each participant may do on the NATS server, derived from the routing table
//! ([`Service::publishes`], [`Service::consumes`], the buckets it writes and reads), so the
//! server's authorization cannot drift from what the code does.
//!
//! The rule: a participant publishes only its own event types and its own dead letters; it
//! reads (looks up, pulls from, acks) only its own durable consumer; it writes only its own
//! KV buckets (and its own keys of the markers bucket); it reads others' buckets without the
//! right to change them; it receives replies only on its own inbox prefix, and answers only
//! requests it received (the updater's and the deployer's approval links). Every participant
//! may read the event stream through JetStream (the audit trail is not secret among Steward's
//! services). No participant creates, updates, purges or deletes the stream, a durable
//! consumer or a bucket: that is the provisioning user's ([`SETUP_USER`], `steward setup`),
//! which has the JetStream API and nothing else (it publishes no event and writes no value).
//!
//! Under host routing (`STEWARD_HOSTS`) each agent has a user per host (`updater-<host>`),
//! confined to that host: it publishes only on the host's subjects (`host.<host>.<type>`), reads
//! only its host's consumer, writes only its host's keys of its buckets (`<host>.<key>`) and
//! answers only its host's approval link requests. So host B's updater can neither act on
//! host A's approval (its consumer never receives it) nor forge one for A (the server refuses
//! the publish). The notifier and the CLI are central: they read every host, and the CLI
//! addresses its requests to any host.

use steward_events::Service;

use crate::config::{Namespace, Topology};
use crate::setup::HANDLED_BUCKET;
use crate::PROGRESS_FAMILY;

/// The NATS user of the provisioning identity (`steward setup`).
pub const SETUP_USER: &str = "setup";

/// Inbox prefix of a NATS user (or, without users, of a client): replies to its requests
/// arrive under it.
pub fn inbox_prefix(user: &str) -> String {
    let token: String = user
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("_INBOX_{token}")
}

/// Subjects one NATS user may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// The participant.
    pub service: Service,
    /// Its NATS user: the service's name, or `<service>-<host>` for an agent under host
    /// routing ([`Service::identity`]).
    pub user: String,
    /// Subjects (with wildcards) it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may not publish to, although `publish` matches them.
    pub deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer the requests it receives (once each, to their reply subject)
    /// without the right to publish to anyone's inbox.
    pub allow_responses: bool,
}

impl Permissions {
    /// The permissions of `service` in namespace `ns`, without host routing.
    pub fn of(service: Service, ns: &Namespace) -> Self {
        Self::routed(service, ns, &[], None)
    }

    /// The permissions of `service` under the routing table's `hosts` (empty: no host
    /// routing): an agent's for `host` (one of `hosts`), a central participant's (`host` is
    /// `None` for them, and ignored).
    pub fn routed(service: Service, ns: &Namespace, hosts: &[String], host: Option<&str>) -> Self {
        let stream = &ns.stream;
        let api = |s: &str| format!("$JS.API.{s}");
        let routed = !hosts.is_empty();
        let host = host.filter(|_| routed && service.is_agent());
        let user = service.identity(host);
        let mut publish: Vec<String> = match host {
            // An agent publishes on its host's subjects only.
            Some(h) => service.publishes().iter().map(|t| ns.addressed(Some(h), t)).collect(),
            None => service.publishes().iter().map(|t| ns.subject(t)).collect(),
        };
        if routed && service == Service::Cli {
            // The CLI's requests go to any host's agents.
            let any = |t: &&str| ns.subject(&format!("{}.*.{t}", steward_events::HOST_FAMILY));
            publish.extend(service.publishes().iter().map(any));
        }
        let mut subscribe = vec![format!("{}.>", inbox_prefix(&user))];

        // Every connection checks JetStream and looks the stream up.
        publish.push(api("INFO"));
        publish.push(api(&format!("STREAM.INFO.{stream}")));
        // One stored message by sequence: a publish acked as a duplicate reads back what the
        // stream holds under its id (`publish::check_duplicate`). Every participant may read
        // every event already, so this exposes nothing new.
        publish.push(api(&format!("STREAM.MSG.GET.{stream}")));
        // Its own durable consumer (looked up, pulled from, acked); its own dead letters.
        if !service.consumes().is_empty() {
            let name = user.as_str();
            publish.push(ns.dead_letter_subject(name));
            for op in ["INFO", "MSG.NEXT"] {
                publish.push(api(&format!("CONSUMER.{op}.{stream}.{name}")));
            }
            publish.push(format!("$JS.ACK.{stream}.{name}.>"));
            // Idempotency markers: the shared bucket, its own keys only.
            let handled = ns.bucket(HANDLED_BUCKET);
            publish.extend(read_bucket(&handled));
            publish.push(format!("$KV.{handled}.{name}.>"));
        }
        // Its own buckets: read, write.
        for bucket in service.writes_buckets() {
            let bucket = ns.bucket(bucket);
            publish.extend(read_bucket(&bucket));
            match host {
                // An agent's keys are its host's (`StateStore` scopes them).
                Some(h) => publish.push(format!("$KV.{bucket}.{h}.>")),
                None => publish.push(format!("$KV.{bucket}.>")),
            }
        }
        // Others' buckets: read only.
        for bucket in service.reads_buckets() {
            publish.extend(read_bucket(&ns.bucket(bucket)));
        }
        // Replays (`steward events`, `audit`, waiting for an outcome; the backup's export of
        // the stream) use ephemeral consumers (created without a name; they go away by
        // themselves when idle), never a durable one: see `deny`.
        let replays = matches!(service, Service::Cli | Service::Backup);
        if replays {
            publish.push(api(&format!("CONSUMER.CREATE.{stream}")));
            for op in ["INFO", "MSG.NEXT"] {
                publish.push(api(&format!("CONSUMER.{op}.{stream}.*")));
            }
        }
        let progress = ns.subject(&format!("{PROGRESS_FAMILY}.>"));
        if service.publishes_progress() {
            // An agent reports on its host's subjects only (`Bus::publish_progress`).
            match host {
                Some(h) => publish.push(ns.subject(&format!("{PROGRESS_FAMILY}.{h}.>"))),
                None => publish.push(progress.clone()),
            }
        }
        if service.follows_progress() {
            subscribe.push(progress);
        }
        // Approval links: asked by the notifier, answered by the kind's service (the updater
        // for image updates, the deployer for deployments), never stored.
        for kind in crate::approval::LinkKind::ALL {
            let links = ns.subject(kind.subject());
            if service.requests_approval_links() {
                publish.push(links.clone());
                if routed {
                    publish.push(format!("{links}.*"));
                }
            }
            if service == kind.server() {
                match host {
                    Some(h) => subscribe.push(format!("{links}.{h}")),
                    None => subscribe.push(links),
                }
            }
        }
        publish.sort();
        publish.dedup();
        subscribe.sort();
        // The wildcards above must not reach the services' durable consumers: pulling from
        // one would steal (and, repeated, exhaust) another service's deliveries.
        let mut deny = vec![];
        if replays {
            let consumers = crate::Setup::for_hosts(hosts).consumers;
            for other in consumers.iter().map(|c| &c.name).filter(|c| **c != user) {
                for op in ["CREATE", "DURABLE.CREATE", "INFO", "MSG.NEXT", "DELETE"] {
                    deny.push(api(&format!("CONSUMER.{op}.{stream}.{other}")));
                }
                deny.push(api(&format!("CONSUMER.CREATE.{stream}.{other}.>")));
            }
            deny.sort();
        }
        let allow_responses = service.serves_approval_links();
        Self { service, user, publish, deny, subscribe, allow_responses }
    }

    /// Every NATS user of the routing table: each participant once, each agent once per host
    /// under host routing.
    pub fn users(ns: &Namespace, hosts: &[String]) -> Vec<Self> {
        let mut users = vec![];
        for service in Service::ALL {
            match hosts {
                _ if !service.is_agent() => users.push(Self::routed(service, ns, hosts, None)),
                [] => users.push(Self::of(service, ns)),
                _ => users.extend(hosts.iter().map(|h| Self::routed(service, ns, hosts, Some(h)))),
            }
        }
        users
    }

    /// The provisioning user's permissions: the JetStream API (create, update, purge, delete
    /// the stream, the consumers and the buckets), its own replies, and, for `steward events
    /// import` on a rebuilt host (before the consumers exist), publishing the stream's
    /// subjects and writing the state buckets; nothing else.
    pub fn setup(ns: &Namespace) -> (Vec<String>, Vec<String>) {
        let mut publish = vec!["$JS.API.>".to_owned()];
        let mut types: Vec<&str> =
            Service::ALL.iter().flat_map(|s| s.publishes()).copied().collect();
        types.sort_unstable();
        types.dedup();
        publish.extend(types.iter().map(|t| ns.subject(t)));
        publish.push(ns.subject("dlq.>"));
        publish.push(ns.subject(&format!("{}.>", steward_events::HOST_FAMILY)));
        publish.extend(
            crate::export::state_buckets().iter().map(|b| format!("$KV.{}.>", ns.bucket(b))),
        );
        (publish, vec![format!("{}.>", inbox_prefix(SETUP_USER))])
    }

    /// The NATS server's `authorization` block for every participant, each user's password
    /// taken from the server's environment variable `STEWARD_<NAME>_PASSWORD` (nats-server
    /// resolves `$NAME` from its environment; variables of an included file are not seen
    /// here), so no secret is in this text.
    pub fn server_config(ns: &Namespace) -> String {
        Self::server_config_for(ns, &[])
    }

    /// [`server_config`](Self::server_config) for the routing table's `hosts` (what `steward
    /// nats-authorization` prints): each agent's user once per host, its password from
    /// `STEWARD_<SERVICE>_<HOST>_PASSWORD` ([`user_password_variable`]).
    pub fn server_config_for(ns: &Namespace, hosts: &[String]) -> String {
        Self::server_config_on(ns, hosts, Topology::Single)
    }

    /// [`server_config_for`](Self::server_config_for) for one server of the leaf-node
    /// topology: a host's leaf gets that host's agents' users (and the provisioning user's);
    /// the hub the central participants' and one [`LeafLink`] user per host, the identity a
    /// host's leaf logs in to the hub as.
    pub fn server_config_on(ns: &Namespace, hosts: &[String], topology: Topology<'_>) -> String {
        let users: Vec<Self> = Self::users(ns, hosts)
            .into_iter()
            .filter(|p| match topology {
                Topology::Single => true,
                Topology::Hub { .. } => !p.service.is_agent(),
                Topology::Leaf { host } => {
                    p.service.is_agent() && p.user == p.service.identity(Some(host))
                }
            })
            .collect();
        let links: Vec<LeafLink> = match topology {
            Topology::Hub { hosts } => hosts.iter().map(|h| LeafLink::of(ns, h)).collect(),
            _ => vec![],
        };
        let mut out = String::from(
            "# Generated from Steward's routing table (steward_bus::Permissions); do not edit.\n",
        );
        if hosts.is_empty() {
            out.push_str(
                "# Regenerate: STEWARD_REGENERATE=1 cargo test -p steward-bus --test permissions\n",
            );
        } else {
            out.push_str(&format!(
                "# Regenerate: STEWARD_HOSTS={} steward nats-authorization\n",
                hosts.join(",")
            ));
        }
        // The hub's leaf-node port is published to the hosts; nats-server checks a leaf's
        // login against these same users, so each says how it may connect: the central ones
        // and `setup` as clients only, a host's link as a leaf node only (a `cli` password
        // must not open a link from the internet).
        let (client_only, leaf_only) = match topology {
            Topology::Hub { .. } => (
                "      allowed_connection_types: [\"STANDARD\"]\n",
                "      allowed_connection_types: [\"LEAFNODE\"]\n",
            ),
            _ => ("", ""),
        };
        out.push_str("authorization {\n  users = [\n");
        for p in users {
            out.push_str(&format!(
                "    {{\n      user: {}\n      password: ${}\n{client_only}      permissions: {{\n",
                p.user,
                user_password_variable(&p.user)
            ));
            if p.deny.is_empty() {
                out.push_str(&format!("        publish: {{ allow: {} }}\n", list(&p.publish)));
            } else {
                out.push_str(&format!(
                    "        publish: {{\n          allow: {}\n          deny: {}\n        }}\n",
                    list(&p.publish),
                    list(&p.deny)
                ));
            }
            out.push_str(&format!("        subscribe: {{ allow: {} }}\n", list(&p.subscribe)));
            if p.allow_responses {
                out.push_str("        allow_responses: true\n");
            }
            out.push_str("      }\n    }\n");
        }
        // The provisioning identity: `steward setup`, run once per install and upgrade.
        let (publish, subscribe) = Self::setup(ns);
        out.push_str(&format!(
            "    {{\n      user: {SETUP_USER}\n      password: ${}\n{client_only}      permissions: {{\n",
            setup_password_variable()
        ));
        out.push_str(&format!("        publish: {{ allow: {} }}\n", list(&publish)));
        out.push_str(&format!("        subscribe: {{ allow: {} }}\n", list(&subscribe)));
        out.push_str("      }\n    }\n");
        // A leaf node's connection is checked against these permissions from the hub's side:
        // what it may publish is what may cross from the host to the centre, what it may
        // subscribe to what may cross from the centre to the host.
        for link in links {
            out.push_str(&format!(
                "    {{\n      user: {}\n      password: ${}\n{leaf_only}      permissions: {{\n",
                link.user,
                user_password_variable(&link.user)
            ));
            out.push_str(&format!(
                "        publish: {{\n          allow: {}\n          deny: {}\n        }}\n",
                list(&link.publish),
                list(&link.deny)
            ));
            out.push_str(&format!("        subscribe: {{ allow: {} }}\n", list(&link.subscribe)));
            out.push_str("      }\n    }\n");
        }
        out.push_str("  ]\n}\n");
        out
    }
}

/// The identity a host's leaf node logs in to the hub as (`leaf-<host>`), under the leaf-node
/// topology (docs/scaling.md), and what may cross its link. The link carries that host's
/// subjects only: another host's leaf cannot pass events or requests off as this host's, nor
/// reach this host's JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafLink {
    /// The host.
    pub host: String,
    /// Its NATS user on the hub, `leaf-<host>` (no service is named `leaf`).
    pub user: String,
    /// What may cross from the host to the centre.
    pub publish: Vec<String>,
    /// What may not, although `publish` covers it: the hub stream's anchor subject of this
    /// host (`host.<host>._sourced`, the one host subject the hub's stream holds itself), so
    /// nothing the link publishes is stored at the hub unsourced, with a stamp of its choice.
    pub deny: Vec<String>,
    /// What may cross from the centre to the host.
    pub subscribe: Vec<String>,
}

impl LeafLink {
    /// The link of `host`'s leaf in namespace `ns`.
    pub fn of(ns: &Namespace, host: &str) -> Self {
        let user = leaf_user(host);
        let mut publish = vec![
            // Its host's events, for whoever follows them live at the centre (the hub's
            // stream does not hold them: it sources them).
            ns.host_subjects(host),
            // Its stream delivered to the hub's (the source's deliver prefix is this host's).
            format!("{}.>", ns.leaf_delivery(host)),
            // Answers to the hub's JetStream requests (creating the source's consumer).
            "$JSC.R.>".to_owned(),
            // Its jobs' progress, for the centre's `steward backup now` (never stored).
            ns.subject(&format!("{PROGRESS_FAMILY}.{host}.>")),
        ];
        // Answers to the centre's requests: the leaf stream's acks of what the CLI or the
        // notifier address to the host, the updater's approval links. `allow_responses` does
        // not apply across a leaf link (nats-server 2.9: the reply's interest never reaches
        // the leaf), hence the inbox prefixes of the central participants.
        for central in Service::ALL.into_iter().filter(|s| !s.is_agent()) {
            publish.push(format!("{}.>", inbox_prefix(central.name())));
        }
        let mut subscribe = vec![
            // What the centre addresses to the host (approvals, requests).
            ns.host_subjects(host),
            // The host's JetStream, for the hub's sources (no central user may publish here).
            format!("$JS.{host}.API.>"),
            // The sources' flow control, hub to leaf: the stream's and the agents' buckets'.
            format!("$JS.FC.{}.>", ns.stream),
        ];
        // The approval links the notifier asks the host's updater and deployer for.
        subscribe.extend(
            crate::approval::LinkKind::ALL
                .into_iter()
                .map(|kind| format!("{}.{host}", ns.subject(kind.subject()))),
        );
        subscribe.extend(
            crate::setup::sourced_buckets()
                .into_iter()
                .map(|b| format!("$JS.FC.KV_{}.>", ns.bucket(b))),
        );
        let deny = vec![crate::stream::source_anchor(ns, host)];
        Self { host: host.to_owned(), user, publish, deny, subscribe }
    }
}

/// The NATS user of `host`'s leaf node on the hub.
pub fn leaf_user(host: &str) -> String {
    format!("leaf-{host}")
}

/// The server variable holding a participant's password, e.g. `STEWARD_WATCHER_PASSWORD`.
pub fn password_variable(service: Service) -> String {
    user_password_variable(service.name())
}

/// The server variable holding a NATS user's password: `STEWARD_UPDATER_PASSWORD`, or
/// `STEWARD_UPDATER_VPS_1_PASSWORD` for `updater-vps-1` (`-` is `_`: `steward_events::check_hosts`
/// refuses two hosts that would share one).
pub fn user_password_variable(user: &str) -> String {
    format!("STEWARD_{}_PASSWORD", user.to_uppercase().replace('-', "_"))
}

/// The server variable holding the provisioning user's password, `STEWARD_SETUP_PASSWORD`.
pub fn setup_password_variable() -> String {
    format!("STEWARD_{}_PASSWORD", SETUP_USER.to_uppercase())
}

/// Get values (direct or through the API) and list keys or read every value (an ephemeral
/// ordered consumer).
fn read_bucket(bucket: &str) -> Vec<String> {
    let stream = format!("KV_{bucket}");
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        // Flow-control replies of the ordered consumer that lists keys or reads all values:
        // without them a large bucket's listing stalls.
        format!("$JS.FC.{stream}.>"),
    ]
}

/// One subject per line, so a review of the generated file reads like a table.
fn list(subjects: &[String]) -> String {
    let mut out = String::from("[\n");
    for s in subjects {
        out.push_str(&format!("          \"{s}\"\n"));
    }
    out.push_str("        ]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_in(config: &str) -> Vec<&str> {
        config.lines().filter_map(|l| l.trim().strip_prefix("user: ")).collect()
    }

    /// The backup's export fails on a state bucket it may not look up (`Bus::export`): its
    /// user must be allowed every one, with and without host routing.
    #[test]
    fn the_backup_may_look_up_every_state_bucket_it_exports() {
        let ns = Namespace::default();
        let hosts = vec!["vps-a".to_owned()];
        for user in [
            Permissions::of(Service::Backup, &ns),
            Permissions::routed(Service::Backup, &ns, &hosts, Some("vps-a")),
        ] {
            for bucket in crate::export::state_buckets() {
                let info = format!("$JS.API.STREAM.INFO.KV_{}", ns.bucket(&bucket));
                assert!(user.publish.contains(&info), "{}: {info}", user.user);
                assert!(!user.deny.contains(&info), "{}: {info}", user.user);
            }
        }
    }

    #[test]
    fn each_server_of_the_leaf_topology_gets_its_own_users() {
        let ns = Namespace::default();
        let hosts = vec!["vps-a".to_owned(), "vps-b".to_owned()];
        let leaf = Permissions::server_config_on(&ns, &hosts, Topology::Leaf { host: "vps-a" });
        let users = users_in(&leaf);
        assert!(users.contains(&"updater-vps-a") && users.contains(&SETUP_USER), "{users:?}");
        // Not another host's agents, not the centre's, not a link.
        assert!(!users.iter().any(|u| u.ends_with("vps-b") || u.starts_with("leaf-")), "{users:?}");
        assert!(!users.contains(&"notifier") && !users.contains(&"cli"), "{users:?}");
        let hub = Permissions::server_config_on(&ns, &hosts, Topology::Hub { hosts: &hosts });
        let users = users_in(&hub);
        for want in ["notifier", "cli", SETUP_USER, "leaf-vps-a", "leaf-vps-b"] {
            assert!(users.contains(&want), "{want} missing: {users:?}");
        }
        assert!(!users.iter().any(|u| u.starts_with("updater")), "{users:?}");
        assert!(hub.contains("password: $STEWARD_LEAF_VPS_A_PASSWORD"), "{hub}");
        // The hub's leaf-node port is public: a link user connects as a leaf only, every
        // other user as a client only.
        let blocks: Vec<&str> = hub.split("    {\n      user: ").skip(1).collect();
        assert_eq!(blocks.len(), users.len());
        for block in blocks {
            let want = if block.starts_with("leaf-") { "[\"LEAFNODE\"]" } else { "[\"STANDARD\"]" };
            assert!(block.contains(&format!("allowed_connection_types: {want}")), "{block}");
        }
        assert!(!leaf.contains("allowed_connection_types"), "{leaf}");
        // Without leaf nodes, as before.
        assert_eq!(
            Permissions::server_config_on(&ns, &hosts, Topology::Single),
            Permissions::server_config_for(&ns, &hosts)
        );
    }

    #[test]
    fn a_link_carries_its_own_hosts_subjects_only() {
        let ns = Namespace::default();
        let link = LeafLink::of(&ns, "vps-a");
        assert_eq!(link.user, "leaf-vps-a");
        for list in [&link.publish, &link.subscribe] {
            assert!(list.contains(&"host.vps-a.>".to_owned()), "{list:?}");
            // Nothing of another host's, no wildcard over hosts, no plain JetStream API.
            assert!(
                !list.iter().any(|s| s.contains("vps-b")
                    || s.starts_with("host.*")
                    || s == "host.>"
                    || s.starts_with("$JS.API")
                    || s == ">"),
                "{list:?}"
            );
        }
        assert!(link.publish.contains(&"leaf.vps-a.>".to_owned()), "{:?}", link.publish);
        assert!(link.subscribe.contains(&"$JS.vps-a.API.>".to_owned()), "{:?}", link.subscribe);
        for kind in crate::approval::LinkKind::ALL {
            let asked = format!("{}.vps-a", ns.subject(kind.subject()));
            assert!(link.subscribe.contains(&asked), "{kind:?}: {:?}", link.subscribe);
        }
    }

    use crate::approval::LinkKind;

    /// Under host routing each kind's service listens to its own host's link requests only,
    /// and the notifier asks any host's; nobody else touches either subject.
    #[test]
    fn link_subjects_are_per_host_and_per_kind() {
        let ns = Namespace::default();
        let hosts = vec!["a".to_owned(), "b".to_owned()];
        let users = Permissions::users(&ns, &hosts);
        let find = |user: &str| users.iter().find(|p| p.user == user).expect(user);
        for kind in LinkKind::ALL {
            let subject = ns.subject(kind.subject());
            let server = find(&format!("{}-a", kind.server().name()));
            assert!(server.subscribe.contains(&format!("{subject}.a")), "{kind:?}");
            assert!(!server.subscribe.iter().any(|s| s.starts_with(&format!("{subject}.b"))));
            assert!(server.allow_responses);
            let notifier = find("notifier");
            assert!(notifier.publish.contains(&format!("{subject}.*")), "{kind:?}");
            for other in users.iter().filter(|p| p.service != kind.server()) {
                assert!(
                    !other.subscribe.iter().any(|s| s.starts_with(&subject)),
                    "{} listens to {kind:?} links",
                    other.user
                );
            }
            for other in users.iter().filter(|p| p.service != Service::Notifier) {
                assert!(!other.publish.iter().any(|s| s.starts_with(&subject)), "{}", other.user);
            }
            // Its used links: the server of host `a` claims (and releases) only `a.<id>`
            // (`StateStore` scopes the keys), nobody else any.
            let used = format!("$KV.{}.", ns.bucket(kind.used_bucket()));
            assert!(
                server.publish.contains(&format!("{used}a.>")),
                "{kind:?}: {:?}",
                server.publish
            );
            for other in users.iter().filter(|p| p.user != server.user) {
                let writes: Vec<&String> =
                    other.publish.iter().filter(|s| s.starts_with(&used)).collect();
                let own = format!("{used}b.>");
                let allowed: Vec<&String> =
                    if other.service == kind.server() { vec![&own] } else { vec![] };
                assert_eq!(writes, allowed, "{} and {kind:?} claims", other.user);
            }
        }
    }
}
