//! `docs/events.md`, rendered from the catalog: the envelope and the flows (written here), the
//! subjects and who publishes and consumes each ([`Service`]), and per event type its
//! description (the catalog entry's doc comment) and an example ([`crate::samples`]).
//!
//! One implementation for the example that writes the file and the test that holds the file
//! to it, so the document cannot drift from the code without a failing test.

use uuid::Uuid;

use crate::{samples, EventData, Service};

/// The command that regenerates `docs/events.md` (the file names it; the test's failure says it).
pub const REGENERATE_EVENTS_MD: &str =
    "cargo run -q -p steward-events --example catalog > docs/events.md";

/// The envelope: attributes, decoding, trace context, dead letters, host routing.
const ENVELOPE: &str = r#"Every event is a CloudEvents 1.0 JSON envelope. `type` is also the NATS subject (behind
`STEWARD_SUBJECT_PREFIX`, empty by default). Attributes:

| attribute | meaning |
|---|---|
| `specversion` | always `1.0` |
| `id` | UUIDv7; also `Nats-Msg-Id`, so a re-published event is stored once (if another message took the id first, the event is published under `<id>.<random>` instead: see security.md) |
| `source` | `steward-<service>/<hostname>` or `steward/<hostname>` for the CLI |
| `type` | the subject, below |
| `time` | RFC 3339 |
| `datacontenttype` | `application/json` |
| `subject` | the container the event is about, when there is one |
| `correlationid` | the flow (one update, backup or restore) the event belongs to |
| `causationid` | the id of the event that caused this one |
| `host` | extension: the host (`STEWARD_HOST`) whose agent published it, or, under host routing, the host a CLI request is addressed to; absent from the notifier's events, from the CLI's without host routing and from events before hosts |
| `traceparent` | optional: W3C trace context of the span that published it (CloudEvents distributed-tracing extension), present when the publisher exports traces or the event continues a traced flow |
| `tracestate` | optional: W3C vendor trace state, with `traceparent` |
| `data` | the payload, below |

Decoders refuse unknown types, missing fields, other spec versions and messages over 1 MiB;
they ignore unknown extra fields, so producers can add fields without breaking consumers.

A `traceparent` or `tracestate` that is not a string or is over 512 bytes is dropped, and a
malformed one only starts a new trace: trace context never costs an event its handling. The
consumer's span for an event is the child of the span in its `traceparent`; the events it
publishes carry its own (`docs/architecture.md`, "Traces").

Dead letters go to `dlq.<consumer>` with headers `Steward-Dlq-Reason`, `Steward-Dlq-Subject`,
`Steward-Dlq-Sequence`, `Steward-Dlq-Deliveries`; the body is the original message.

Under host routing (`STEWARD_HOSTS` set, several hosts) an event about a host goes on
`host.<host>.<type>` instead (`host` is its `host` attribute: an agent's own, or the host the
CLI addresses a request to), and an agent's consumer reads only `host.<its host>.>`; a
consumer refuses an event whose `host` is not its subject's (`Event::decode_addressed`).
Events about no host (the notifier's, `notify.test_requested`) keep the plain subject.
"#;

/// What a flow (one correlation id) of several events guarantees.
const FLOWS: &str = r#"Every update flow (one correlation id) ends with exactly one of `update.succeeded`,
`update.rolled_back` or `update.failed`, also when the updater is killed at any step (twice):
the updater writes its decision before publishing and publishes it again with the same event
id after a crash, which the stream's duplicate window drops. `update.failed` means the
container was not changed (a failed backup, pull, hook, or an engine that did not answer before
the swap), or, after an interruption, that the containers changed while the updater was away
(the old one removed, the name taken by a container someone else created): its `reason` says
what was found.

After an `update.succeeded` to a newer tag (tag tracking), the same flow has one
`update.written_back` (`STEWARD_UPDATE_WRITE_BACK`, on by default): the compose project the
container came from names the new tag now (`file`, `key`), or it was left as it was and
`refused` says why (mailed; the update stands). It comes once, also when the updater is killed
between the success and the write (the record keeps a `write_back` flag until it is
announced). A container not made by compose, an update of the digest under the same tag, and a
`steward rollback` have none.

A `steward rollback` is an update flow too: `rollback.requested` opens it (its correlation id),
and the updater either refuses it at once with `rollback.refused` (nothing claimed or touched:
no such container, one Steward does not manage, no previous image recorded, an update of the
container in progress, the digest already running), or runs it as an update to the previous
digest with the same events and the same guarantee of exactly one terminal event.
`update.started`, `update.succeeded`, `update.failed` and `update.rolled_back` then carry
`"kind": "rollback"` and `requested_by` (both absent for an update): `update.succeeded` means
the container runs the previous image and passed the health gate; `update.rolled_back` means
the previous image failed the gate and the container runs the image it ran before the
rollback again; `update.failed` means nothing was changed (e.g. the previous image is no
longer on the host and cannot be pulled by digest, or the pre-update backup failed).

Every deployment flow (the correlation id of its `deploy.requested`) that claimed its
environment ends with exactly one of `deploy.succeeded`, `deploy.rolled_back` or
`deploy.failed`, also when the deployer is killed at any step: the deployer records its decision
in the environment's `DEPLOYS` record before publishing it. `deploy.failed` means no service
was touched (the commit could not be fetched, its compose file does not parse, an image exists
neither here nor in its registry, the repository's test (`steward.deploy.test`) failed or ran
past `STEWARD_DEPLOY_TEST_TIMEOUT`, with its output's last lines in `log_tail`, the
pre-deployment backup failed or timed out); a request naming an environment or branch that is
not configured is answered by a `deploy.failed` without `deploy_id`, and so is a request
superseded before it started (it came while a deployment of its environment was under way and
a newer one came after it, or it came older than the one already waiting: `reason` "superseded
by COMMIT (a newer push to BRANCH) before it started"). `deploy.rolled_back` means the changed
services failed, or a pre-deployment command of theirs (`steward.deploy.pre`) failed before
they started, or the deployer stopped between applying them and the verdict, and they run the
previous commit's definitions again (none touched when the new version never started; on
an environment's first deployment, with no previous commit, containers started by hand are
made again from the compose files they were started with, the rest removed, as the reason
says). A `deploy.requested` for the commit the environment runs
or last tried, for an ancestor of what runs, or older than the request in hand, is
acknowledged and ignored (no event). Every `deploy.*` payload carries the commit with
`repository`, `branch`, `environment`, `commit`, and `author` and `message` when known.
"#;

/// The examples' update and deployment id: fixed, so the document is reproducible.
const EXAMPLE_UPDATE_ID: Uuid = Uuid::from_u128(0x01a2_07d9_2100_7a3c_8e1f_5b2d_4c6a_8f01);
/// The event the examples' notifications are about.
const EXAMPLE_EVENT_ID: Uuid = Uuid::from_u128(0x01a2_07d9_2100_7b4d_9f20_6c3e_5d7b_9012);

/// The event catalog as Markdown: exactly the content of `docs/events.md` (a test holds the
/// file to it; [`REGENERATE_EVENTS_MD`] writes it). Pure: the same text on every call.
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str("# Event catalog\n\n");
    out.push_str(&format!(
        "<!-- Generated by `{REGENERATE_EVENTS_MD}` from crates/events/src/catalog (a test checks it is \
         current): edit the catalog, not this file. -->\n\n"
    ));
    out.push_str(ENVELOPE);
    out.push_str("\n## Flows\n\n");
    out.push_str(FLOWS);
    out.push_str("\n## Subjects\n\n| type | published by | consumed by |\n|---|---|---|\n");
    for t in EventData::ALL_TYPES {
        let by = |f: fn(Service) -> &'static [&'static str]| {
            let names: Vec<&str> =
                Service::ALL.iter().filter(|s| f(**s).contains(t)).map(|s| s.binary()).collect();
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(", ")
            }
        };
        out.push_str(&format!(
            "| `{t}` | {} | {} |\n",
            by(Service::publishes),
            by(Service::consumes)
        ));
    }
    out.push_str("\n## Events\n\nEach type's description, then an example of its `data`.\n");
    let samples = samples::with_ids("gitea", EXAMPLE_UPDATE_ID, EXAMPLE_EVENT_ID);
    for t in EventData::ALL_TYPES {
        out.push_str(&format!("\n### `{t}`\n"));
        if let Some(description) = EventData::description(t) {
            out.push('\n');
            for line in description.lines() {
                // A doc comment's text starts after `///` and one space.
                out.push_str(line.strip_prefix(' ').unwrap_or(line));
                out.push('\n');
            }
        }
        for data in samples.iter().filter(|d| d.event_type() == *t) {
            // A sample that does not serialize is a bug in the catalog; say so in the text,
            // where the test comparing the file shows it.
            let json = data.to_json_pretty().unwrap_or_else(|e| format!("not JSON: {e}"));
            out.push_str(&format!("\n```json\n{json}\n```\n"));
        }
    }
    out
}
