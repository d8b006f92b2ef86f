//! What each participant may do on the NATS server, derived from the routing table
//! ([`Service::publishes`], [`Service::consumes`], the buckets it writes and reads), so the
//! server's authorization cannot drift from what the code does.
//!
//! The rule: a participant publishes only its own event types and its own dead letters; it
//! manages only its own durable consumer and its own KV buckets; it reads others' buckets
//! without the right to change them; it receives replies only on its own inbox prefix. Every
//! participant may read the event stream through JetStream (the audit trail is not secret
//! among Steward's services); none may delete the stream or another's consumer.

use steward_events::Service;

use crate::config::Namespace;
use crate::PROGRESS_FAMILY;

/// Bucket of the idempotency markers; every service writes only keys under its own name.
pub(crate) const HANDLED_BUCKET: &str = "HANDLED";

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
    /// Subjects (with wildcards) it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// The permissions of `service` in namespace `ns`.
    pub fn of(service: Service, ns: &Namespace) -> Self {
        let stream = &ns.stream;
        let api = |s: &str| format!("$JS.API.{s}");
        let mut publish: Vec<String> = service.publishes().iter().map(|t| ns.subject(t)).collect();
        let mut subscribe = vec![format!("{}.>", inbox_prefix(service.name()))];

        // Every connection checks JetStream and creates or updates the stream.
        publish.push(api("INFO"));
        for op in ["INFO", "CREATE", "UPDATE"] {
            publish.push(api(&format!("STREAM.{op}.{stream}")));
        }
        // Its own durable consumer and the acks of its deliveries; its own dead letters.
        if !service.consumes().is_empty() {
            let name = service.name();
            publish.push(ns.dead_letter_subject(name));
            for op in ["CREATE", "DURABLE.CREATE", "INFO", "MSG.NEXT"] {
                publish.push(api(&format!("CONSUMER.{op}.{stream}.{name}")));
            }
            publish.push(api(&format!("CONSUMER.CREATE.{stream}.{name}.>")));
            publish.push(format!("$JS.ACK.{stream}.{name}.>"));
            // Idempotency markers: the shared bucket, its own keys only.
            let handled = ns.bucket(HANDLED_BUCKET);
            publish.extend(manage_bucket(&handled));
            publish.extend(read_bucket(&handled));
            publish.push(format!("$KV.{handled}.{name}.>"));
        }
        // Its own buckets: create, read, write.
        for bucket in service.writes_buckets() {
            let bucket = ns.bucket(bucket);
            publish.extend(manage_bucket(&bucket));
            publish.extend(read_bucket(&bucket));
            publish.push(format!("$KV.{bucket}.>"));
        }
        // Others' buckets: read only.
        for bucket in service.reads_buckets() {
            publish.extend(read_bucket(&ns.bucket(bucket)));
        }
        // Replays (`steward events`, `audit`, waiting for an outcome) use ephemeral consumers.
        if service == Service::Cli {
            for op in ["CREATE", "INFO", "DELETE", "MSG.NEXT"] {
                publish.push(api(&format!("CONSUMER.{op}.{stream}.>")));
            }
            publish.push(api(&format!("CONSUMER.CREATE.{stream}")));
        }
        let progress = ns.subject(&format!("{PROGRESS_FAMILY}.>"));
        if service.publishes_progress() {
            publish.push(progress.clone());
        }
        if service.follows_progress() {
            subscribe.push(progress);
        }
        publish.sort();
        publish.dedup();
        subscribe.sort();
        Self { service, publish, subscribe }
    }

    /// The NATS server's `authorization` block for every participant, each user's password
    /// taken from the server's environment variable `STEWARD_<NAME>_PASSWORD` (nats-server
    /// resolves `$NAME` from its environment; variables of an included file are not seen
    /// here), so no secret is in this text.
    pub fn server_config(ns: &Namespace) -> String {
        let mut out = String::from(
            "# Generated from Steward's routing table (steward_bus::Permissions); do not edit.\n\
             # Regenerate: STEWARD_REGENERATE=1 cargo test -p steward-bus --test permissions\n\
             authorization {\n  users = [\n",
        );
        for service in Service::ALL {
            let p = Self::of(service, ns);
            out.push_str(&format!(
                "    {{\n      user: {}\n      password: ${}\n      permissions: {{\n",
                service.name(),
                password_variable(service)
            ));
            out.push_str(&format!("        publish: {{ allow: {} }}\n", list(&p.publish)));
            out.push_str(&format!("        subscribe: {{ allow: {} }}\n", list(&p.subscribe)));
            out.push_str("      }\n    }\n");
        }
        out.push_str("  ]\n}\n");
        out
    }
}

/// The server variable holding a participant's password, e.g. `STEWARD_WATCHER_PASSWORD`.
pub fn password_variable(service: Service) -> String {
    format!("STEWARD_{}_PASSWORD", service.name().to_uppercase())
}

/// Create or update a bucket's stream (what opening it does).
fn manage_bucket(bucket: &str) -> Vec<String> {
    ["CREATE", "UPDATE"].iter().map(|op| format!("$JS.API.STREAM.{op}.KV_{bucket}")).collect()
}

/// Get values (direct or through the API) and list keys (an ephemeral ordered consumer).
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
