//! What a notification says: each event becomes an [`Item`] (headline, facts, log lines, what
//! to do next), and a batch of items becomes a [`Message`] (subject, plain text, HTML) through
//! the templates in `templates/`.
//!
//! Invariant: the subject alone tells an operator scanning an inbox what happened and where.

use minijinja::Environment;
use serde::Serialize;
use steward_events::{Event, EventData, ImageUpdated, ImageVersion, UpdateKind, Versions};
use time::macros::format_description;
use uuid::Uuid;

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something happened that went well or needs no action now.
    Info,
    /// Something failed and was contained (nothing is down because of it).
    Warning,
    /// A service is down, or data may be at risk: sent at once, even in quiet hours.
    Critical,
}

/// One event, told for a human.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// How urgent.
    pub severity: Severity,
    /// Event type.
    pub kind: &'static str,
    /// Its row in the TOLD table: the event type, or `rollback:<type>` for the `update.*`
    /// events of a `steward rollback` (told, counted and advised as rollbacks, not updates).
    #[serde(skip)]
    pub told: &'static str,
    /// Event id.
    pub id: Uuid,
    /// One line: what happened to what. Also the subject of a one-item message.
    pub headline: String,
    /// The container it is about, if any.
    pub container: Option<String>,
    /// When it happened (UTC).
    pub when: String,
    /// The host whose Steward saw it.
    pub host: String,
    /// Label/value rows.
    pub facts: Vec<(String, String)>,
    /// Log or stderr lines of the failing step.
    pub log_tail: Vec<String>,
    /// What the operator should do now.
    pub next: String,
    /// The update a decision is asked for (update.pending only).
    pub update_id: Option<Uuid>,
    /// The deployment a decision is asked for (deploy.pending only).
    pub deploy_id: Option<Uuid>,
    /// Signed approval page (update.pending and deploy.pending only), asked from the updater
    /// or the deployer when rendered.
    pub approval_url: Option<String>,
    /// Whether this item needs a human decision (never grouped with others).
    pub needs_decision: bool,
    /// The release notes or changes of a newer image, when its labels say where it comes from
    /// (only ever an `https` URL: `steward_events::release_notes`).
    pub release_notes: Option<String>,
}

/// A rendered notification.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
    /// The items, for the webhook's JSON.
    pub items: Vec<Item>,
}

const SUBJECT_PREFIX: &str = "[steward]";

fn utc(t: time::OffsetDateTime) -> String {
    let f = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_else(|_| t.to_string())
}

/// The host an event is about: its `host` (the agent's `STEWARD_HOST`), else, for an event
/// from before hosts or from the CLI, the machine in its `source`.
fn host_of(event: &Event) -> String {
    let source = event.source.as_str();
    event
        .host
        .clone()
        .unwrap_or_else(|| source.split_once('/').map_or(source, |(_, h)| h).to_owned())
}

/// `1.22.7 (3f2a…)` with tag tracking, else the moving tag's reference and the new digest.
fn version(image: &str, tag: Option<&str>, digest: &steward_events::Digest) -> String {
    match tag {
        Some(t) => format!("{t} ({})", digest.short()),
        None => format!("{image} ({})", digest.short()),
    }
}

fn ms(duration_ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(duration_ms.div_ceil(1000)))
        .to_string()
}

/// `3.2 GiB`: a size in binary units, one decimal (for the host checks' disk events).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(100) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

fn on_the_host(update_id: Uuid) -> String {
    format!("Run `steward approve {update_id}` or `steward reject {update_id}` on the host.")
}

fn deploy_on_the_host(deploy_id: Uuid) -> String {
    format!(
        "Approve it on the host: `steward deploy approve {deploy_id}` (or `steward deploy reject {deploy_id}`)."
    )
}

/// `Update` or `Rollback`: what a flow of `kind` is called at the start of a headline.
fn flow_name(kind: UpdateKind) -> &'static str {
    match kind {
        UpdateKind::Update => "Update",
        UpdateKind::Rollback => "Rollback",
    }
}

/// `, requested by alice@host`, or nothing when nobody is named.
fn requested(by: Option<&str>) -> String {
    by.map(|b| format!(", requested by {b}")).unwrap_or_default()
}

/// The TOLD row of `event`: its type, or `rollback:<type>` for a rollback's `update.*`.
fn told_key(event: &Event) -> &'static str {
    let kind = match &event.data {
        EventData::UpdateSucceeded(s) => s.kind,
        EventData::UpdateFailed(f) => f.kind,
        EventData::UpdateRolledBack(r) => r.kind,
        _ => UpdateKind::Update,
    };
    match (kind, event.event_type()) {
        (UpdateKind::Rollback, "update.succeeded") => "rollback:update.succeeded",
        (UpdateKind::Rollback, "update.failed") => "rollback:update.failed",
        (UpdateKind::Rollback, "update.rolled_back") => "rollback:update.rolled_back",
        (_, other) => other,
    }
}

impl Item {
    /// An approval request with its signed page.
    pub fn offer_link(&mut self, url: String, expires: time::OffsetDateTime) {
        let cli = match (self.update_id, self.deploy_id) {
            (Some(id), _) => format!("`steward approve {id}` / `steward reject {id}`"),
            (None, Some(id)) => {
                format!("`steward deploy approve {id}` / `steward deploy reject {id}`")
            }
            (None, None) => return,
        };
        self.next = format!(
            "Open the approval page to approve or reject (the link works once and expires {}), or run {cli} on the host.",
            utc(expires)
        );
        self.approval_url = Some(url);
    }

    /// An approval request whose link could not be had, and why.
    pub fn without_link(&mut self, why: &str) {
        let host = match (self.update_id, self.deploy_id) {
            (Some(id), _) => on_the_host(id),
            (None, Some(id)) => deploy_on_the_host(id),
            (None, None) => return,
        };
        self.approval_url = None;
        self.next = format!("{host} (No approval link: {why}.)");
    }
}

/// Tells `event` for a human.
pub fn describe(event: &Event) -> Item {
    let mut item = Item {
        severity: Severity::Info,
        kind: event.event_type(),
        told: told_key(event),
        id: event.id,
        headline: String::new(),
        container: event.data.container().or(event.container()).map(str::to_owned),
        when: utc(event.time),
        host: host_of(event),
        facts: vec![],
        log_tail: vec![],
        next: String::new(),
        update_id: None,
        deploy_id: None,
        approval_url: None,
        needs_decision: false,
        release_notes: None,
    };
    let fact = |k: &str, v: String| (k.to_owned(), v);
    match &event.data {
        EventData::ImageUpdated(_) => return describe_news(&[event]),
        EventData::UpdatePending(p) => {
            let new = version(&p.image, p.new_tag.as_deref(), &p.new_digest);
            item.headline = format!("Approve update of {} to {new}?", p.container);
            item.facts =
                vec![fact("Container", p.container.clone()), fact("Image", p.image.clone())];
            if p.reminder {
                // Still undecided, its link about to expire: the same question again.
                let until = p.expires_at.map(utc).unwrap_or_default();
                item.headline = format!("Reminder: {} (the link expires {until})", item.headline);
            }
            item.facts.extend(release_facts(
                &[(&p.current_digest, p.versions.current_version.as_ref(), None)],
                &p.new_digest,
                p.new_tag.as_deref(),
                &p.versions,
                event.time,
            ));
            item.facts.push(fact("Update id", p.update_id.to_string()));
            item.release_notes = p.versions.release_notes();
            if let Some(runs) = &p.runs {
                item.facts.push(fact("Once approved", runs.clone()));
            }
            // The link is added by the delivery, asked from the updater (`Item::offer_link`):
            // an event never carries it.
            item.next = on_the_host(p.update_id);
            item.update_id = Some(p.update_id);
            item.needs_decision = true;
        }
        EventData::UpdateSucceeded(s) if s.kind == UpdateKind::Rollback => {
            item.headline = format!(
                "Rolled back {} to {}{}",
                s.container,
                version(&s.image, None, &s.to_digest),
                requested(s.requested_by.as_deref())
            );
            item.facts = vec![
                fact("Container", s.container.clone()),
                fact("Image", s.image.clone()),
                fact("Rolled back from", s.from_digest.to_string()),
                fact("Now", s.to_digest.to_string()),
                fact("Took", ms(s.duration_ms)),
            ];
            if let Some(by) = &s.requested_by {
                item.facts.push(fact("Requested by", by.clone()));
            }
        }
        EventData::UpdateSucceeded(s) => {
            let how = if s.approved_by.is_none() { " automatically" } else { "" };
            item.headline = format!(
                "{} updated{how} to {}",
                s.container,
                version(&s.image, None, &s.to_digest)
            );
            item.facts = vec![
                fact("Container", s.container.clone()),
                fact("Image", s.image.clone()),
                fact("Before", s.from_digest.to_string()),
                fact("Now", s.to_digest.to_string()),
                fact("Took", ms(s.duration_ms)),
            ];
            if let Some(by) = &s.approved_by {
                item.facts.push(fact("Approved by", by.clone()));
            }
        }
        EventData::UpdateWrittenBack(w) => {
            item.headline = format!(
                "{} runs {}, but its compose project still names the old version",
                w.container, w.image
            );
            item.facts = vec![fact("Container", w.container.clone()), fact("Now", w.image.clone())];
            if let Some(why) = &w.refused {
                item.facts.push(fact("Not written because", why.clone()));
            }
            item.facts.push(fact("Update id", w.update_id.to_string()));
        }
        EventData::UpdateFailed(f) => {
            let what = flow_name(f.kind);
            item.headline = format!("{what} of {} failed: {}", f.container, first_line(&f.reason));
            item.facts = vec![
                fact("Container", f.container.clone()),
                fact("Image", f.image.clone()),
                fact("Reason", f.reason.clone()),
            ];
            if let Some(by) = &f.requested_by {
                item.facts.push(fact("Requested by", by.clone()));
            }
            item.log_tail = f.log_tail.clone();
        }
        EventData::UpdateRolledBack(r) => {
            let rollback = r.kind == UpdateKind::Rollback;
            item.headline = if rollback {
                // The image asked for failed its gate: the container is back where it was.
                format!("Rollback of {} undone: {}", r.container, first_line(&r.reason))
            } else {
                format!("Update of {} rolled back: {}", r.container, first_line(&r.reason))
            };
            item.facts = vec![
                fact("Container", r.container.clone()),
                fact("Image", r.image.clone()),
                fact("Refused", r.to_digest.to_string()),
                fact("Running again", r.from_digest.to_string()),
                fact("Reason", r.reason.clone()),
            ];
            if let Some(by) = &r.requested_by {
                item.facts.push(fact("Requested by", by.clone()));
            }
            item.log_tail = r.log_tail.clone();
            if r.old_healthy == Some(false) {
                // Down on both images: the most urgent mail Steward sends.
                item.headline = if rollback {
                    format!(
                        "DOWN: {} failed its rollback and going back did not bring it back",
                        r.container
                    )
                } else {
                    format!(
                        "DOWN: {} failed its update and the rollback did not bring it back",
                        r.container
                    )
                };
                item.facts.push(fact(
                    "Old container now",
                    r.old_reason.clone().unwrap_or_else(|| "not healthy".into()),
                ));
                item.log_tail
                    .push(format!("--- the old container ({}) ---", r.from_digest.short()));
                item.log_tail.extend(r.old_log_tail.iter().cloned());
                let (images, backup) = if rollback {
                    ("the image rolled back to or the one it ran before", "pre-rollback")
                } else {
                    ("the new image or the old", "pre-update")
                };
                item.next = format!(
                    "{} serves nothing healthy now, on {images}. The release may have changed data both use (a migration, a config file): read both logs below, check its volumes and database, then restore the {backup} backup if there is one (`steward backup list`, `steward restore <id>`; runbook: an update was rolled back).",
                    r.container
                );
            }
        }
        EventData::BackupFailed(b) => {
            item.headline = format!("Backup failed: {}", first_line(&b.reason));
            item.facts = vec![fact("Reason", b.reason.clone())];
            if let Some(id) = &b.backup_id {
                item.facts.insert(0, fact("Backup", id.clone()));
            }
            item.log_tail = b.stderr_tail.clone();
        }
        EventData::BackupStale(b) => {
            let bound = humantime::format_duration(std::time::Duration::from_secs(b.max_age_secs));
            item.headline = match (&b.newest, b.newest_at) {
                (Some(id), Some(at)) => format!("No backup since {} ({id})", utc(at)),
                _ => "No backup at all yet".to_owned(),
            };
            item.facts = vec![fact("Allowed age", bound.to_string())];
            if let Some(id) = &b.newest {
                item.facts.push(fact("Newest backup", id.clone()));
            }
        }
        EventData::BackupResumed(r) => {
            let by = r.requested_by.clone().unwrap_or_else(|| "?".into());
            item.headline = format!("Backups resumed without a restore by {by}");
            item.facts = vec![fact("Pause", r.token.clone()), fact("Requested by", by)];
            if let Some(why) = &r.reason {
                item.facts.push(fact("Reason", why.clone()));
            }
        }
        EventData::VerifyFailed(v) => {
            item.headline = format!("Backup {} failed verification", v.backup_id);
            item.facts =
                vec![fact("Backup", v.backup_id.clone()), fact("Reason", v.reason.clone())];
            item.log_tail = v.log_tail.clone();
        }
        EventData::RestoreDone(r) => {
            item.headline = format!("Restore of backup {} done", r.backup_id);
            item.facts = vec![
                fact("Backup", r.backup_id.clone()),
                fact("Restored", r.restored.join(", ")),
                fact("Took", ms(r.duration_ms)),
            ];
        }
        EventData::RestoreFailed(r) => {
            item.headline =
                format!("Restore of backup {} failed: {}", r.backup_id, first_line(&r.reason));
            item.facts =
                vec![fact("Backup", r.backup_id.clone()), fact("Reason", r.reason.clone())];
            item.log_tail = r.log_tail.clone();
        }
        EventData::HealthFailed(h) => {
            item.headline = format!("{} is unhealthy ({})", h.container, h.check);
            item.facts = vec![
                fact("Container", h.container.clone()),
                fact("Check", h.check.clone()),
                fact("Saw", h.reason.clone()),
                fact("Failed", format!("{} times in a row", h.consecutive_failures)),
            ];
        }
        EventData::HealthRecovered(h) => {
            item.headline = format!("{} recovered", h.container);
            item.facts =
                vec![fact("Container", h.container.clone()), fact("Down for", ms(h.down_for_ms))];
        }
        EventData::HealthRestarted(h) => {
            item.headline = format!("{} was down and has been restarted", h.container);
            item.facts = vec![
                fact("Container", h.container.clone()),
                fact("Saw", h.reason.clone()),
                fact("Restarts this hour", h.attempt.to_string()),
            ];
        }
        EventData::HealthRestartLimited(h) => {
            item.headline = format!("{} is down and restarting does not help", h.container);
            item.facts = vec![
                fact("Container", h.container.clone()),
                fact("Saw", h.reason.clone()),
                fact("Restarts this hour", h.restarts.to_string()),
            ];
        }
        EventData::EngineFailed(e) => {
            item.headline = format!("Docker engine not answering ({})", e.call);
            item.facts = vec![
                fact("Engine", e.engine.clone()),
                fact("Call", e.call.clone()),
                fact("Saw", e.reason.clone()),
                fact("Failed", format!("{} rounds in a row", e.consecutive_failures)),
            ];
        }
        EventData::EngineRecovered(e) => {
            item.headline = "Docker engine answers again".into();
            item.facts =
                vec![fact("Engine", e.engine.clone()), fact("Down for", ms(e.down_for_ms))];
        }
        EventData::RegistryFailed(r) => {
            item.headline = format!("Registry {} fails every check", r.registry);
            item.facts = vec![
                fact("Registry", r.registry.clone()),
                fact(
                    "Failed",
                    format!("{} checks in a row since {}", r.failed_checks, utc(r.since)),
                ),
                fact("Containers", r.containers.join(", ")),
                fact("Last error", r.reason.clone()),
            ];
        }
        EventData::RegistryRecovered(r) => {
            item.headline = format!("Registry {} answers again", r.registry);
            item.facts = vec![
                fact("Registry", r.registry.clone()),
                fact("Failed", format!("{} checks", r.failed_checks)),
                fact("Down for", ms(r.down_for_ms)),
            ];
        }
        EventData::CertsFailed(c) => {
            item.headline = format!("Certificate renewal failed: {}", first_line(&c.reason));
            item.facts =
                vec![fact("Container", c.container.clone()), fact("Reason", c.reason.clone())];
            if !c.renewed.is_empty() {
                item.facts.push(fact("Renewed anyway", c.renewed.join(", ")));
            }
            item.log_tail = c.log_tail.clone();
        }
        EventData::CertExpiring(c) => {
            let names = if c.names.is_empty() { c.certificate.clone() } else { c.names.join(", ") };
            item.headline = if c.days_left < 0 {
                format!("Certificate for {names} has expired")
            } else {
                format!("Certificate for {names} expires in {} days", c.days_left)
            };
            item.facts = vec![
                fact("Names", names),
                fact("Expires", utc(c.not_after)),
                fact("Days left", c.days_left.to_string()),
                fact("Level", c.level.as_str().to_owned()),
                where_cert(&c.certificate, &c.container),
            ];
        }
        EventData::CertRenewed(c) => {
            item.headline = format!("Certificate no longer expiring: {}", c.certificate);
            item.facts = vec![where_cert(&c.certificate, &c.container)];
            let gone = if steward_events::served_at(&c.certificate).is_some() {
                "the endpoint is no longer watched (steward.health.tls)"
            } else {
                "the file is gone from the live directory"
            };
            item.facts.push(match c.not_after {
                Some(t) => fact("Expires", utc(t)),
                None => fact("Expires", gone.to_owned()),
            });
        }
        EventData::DiskLow(d) => {
            item.headline = format!("Low disk space: {} ({}% free)", d.target, d.free_percent);
            item.facts = vec![
                fact("Filesystem", d.target.clone()),
                fact(
                    "Free",
                    format!(
                        "{} of {} ({}%)",
                        bytes(d.free_bytes),
                        bytes(d.total_bytes),
                        d.free_percent
                    ),
                ),
                fact("Level", d.level.as_str().to_owned()),
                fact("Measured in", d.measured_in.clone()),
            ];
        }
        EventData::DiskRecovered(d) => {
            item.headline = format!("Disk space recovered: {}", d.target);
            item.facts = vec![
                fact("Filesystem", d.target.clone()),
                fact("Free", format!("{} of {}", bytes(d.free_bytes), bytes(d.total_bytes))),
            ];
        }
        EventData::ConfigInvalid(c) => {
            item.headline = format!("{} configuration check failed (`{}`)", c.container, c.command);
            item.facts = vec![
                fact("Container", c.container.clone()),
                fact("Check", c.command.clone()),
                fact("Exit code", c.exit_code.to_string()),
            ];
            item.log_tail = c.output_tail.clone();
        }
        EventData::ConfigRecovered(c) => {
            item.headline = format!("{} configuration check passes again", c.container);
            item.facts =
                vec![fact("Container", c.container.clone()), fact("Check", c.command.clone())];
        }
        EventData::DeployPending(d) => {
            item.headline = format!(
                "Approve deployment of {} to {}?",
                d.change.short_commit(),
                d.change.environment
            );
            item.facts = deploy_facts(&d.change);
            item.facts.push(fact("Services", d.services.join(", ")));
            if let Some(by) = &d.pinned_by {
                // A pin goes back on purpose: the approver should know it is not a push.
                item.facts.push(fact("Pinned by", by.clone()));
            }
            item.needs_decision = true;
            // The link is added by the delivery, asked from the deployer (`Item::offer_link`).
            item.next = deploy_on_the_host(d.deploy_id);
            item.deploy_id = Some(d.deploy_id);
        }
        EventData::DeployDeferred(d) => {
            item.headline = format!(
                "Deployment of {} to {} waits for its window (opens {})",
                d.change.short_commit(),
                d.change.environment,
                d.opens
            );
            item.facts = deploy_facts(&d.change);
            item.facts.push(fact("Services", d.services.join(", ")));
            item.facts.push(fact("Window opens", d.opens.clone()));
            if let Some(by) = &d.approved_by {
                item.facts.push(fact("Approved by", by.clone()));
            }
        }
        EventData::DeploySucceeded(d) => {
            item.headline =
                format!("Deployed {} to {}", d.change.short_commit(), d.change.environment);
            item.facts = deploy_facts(&d.change);
            item.facts.push(fact("Services", d.services.join(", ")));
            item.facts.push(fact("Took", ms(d.duration_ms)));
        }
        EventData::DeployFailed(d) => {
            item.headline = format!(
                "Deployment of {} to {} failed: {}",
                d.change.short_commit(),
                d.change.environment,
                first_line(&d.reason)
            );
            item.facts = deploy_facts(&d.change);
            item.facts.push(fact("Reason", d.reason.clone()));
            item.log_tail = d.log_tail.clone();
        }
        EventData::DeployRolledBack(d) => {
            item.headline = format!(
                "Deployment of {} to {} rolled back",
                d.change.short_commit(),
                d.change.environment
            );
            item.facts = deploy_facts(&d.change);
            let back_to = d.previous_commit.clone().unwrap_or_else(|| "nothing (removed)".into());
            item.facts.push(fact("Running again", back_to));
            item.facts.push(fact("Services", d.services.join(", ")));
            item.facts.push(fact("Reason", d.reason.clone()));
            item.log_tail = d.log_tail.clone();
        }
        EventData::DeployWrittenBack(w) => {
            let branch = match w.branch.as_str() {
                "" => "its branch".to_owned(),
                b => format!("branch {b}"),
            };
            item.headline = match &w.pull_request {
                Some(pr) if w.refused.is_none() => format!(
                    "{} runs {}: merge {pr} so that {branch} names it",
                    w.container, w.image
                ),
                _ => format!(
                    "{} runs {}, but {branch} still names the old version",
                    w.container, w.image
                ),
            };
            item.facts = vec![
                fact("Container", w.container.clone()),
                fact("Now", w.image.clone()),
                fact("Environment", w.environment.clone()),
                fact("Repository", w.repository.clone()),
                fact("Branch", w.branch.clone()),
            ];
            if let Some(why) = &w.refused {
                item.facts.push(fact("Not committed because", why.clone()));
            }
            if let Some(pr) = &w.pull_request {
                item.facts.push(fact("Pull request", pr.clone()));
            }
            if let Some(b) = &w.proposal_branch {
                item.facts.push(fact("Proposed on branch", b.clone()));
            }
            item.facts.push(fact("Update id", w.update_id.to_string()));
        }
        EventData::NotifyTestRequested(t) => {
            item.headline = "Test notification: this channel works".into();
            item.facts = vec![fact("Requested by", t.by.clone()), fact("Host", item.host.clone())];
        }
        other => {
            item.headline = format!("{} event", other.event_type());
        }
    }
    if item.next.is_empty() {
        let container = item.container.as_deref().unwrap_or("the container");
        item.next = told(item.told).next.replace("{container}", container);
    }
    item.severity = match &event.data {
        // Down on both images.
        EventData::UpdateRolledBack(r) if r.old_healthy == Some(false) => Severity::Critical,
        // Host conditions carry their own level (warning, critical).
        EventData::CertExpiring(c) if c.level == steward_events::Level::Critical => {
            Severity::Critical
        }
        EventData::DiskLow(d) if d.level == steward_events::Level::Critical => Severity::Critical,
        _ => told(item.told).severity,
    };
    item
}

/// Where a certificate of `health.cert_*` is: a file in the certbot container, or served at a
/// `steward.health.tls` endpoint (`tls://ENDPOINT`, a NATS server's `nats://ENDPOINT`) by a
/// server container.
fn where_cert(certificate: &str, container: &str) -> (String, String) {
    match steward_events::served_at(certificate) {
        Some(endpoint) => ("Served at".to_owned(), format!("{endpoint} by {container}")),
        None => ("File".to_owned(), format!("{certificate} in {container}")),
    }
}

/// `1.22.7 (tag 1.22.7, sha256:…)`: what an image says it is, with its tag and digest.
fn release(tag: Option<&str>, digest: &steward_events::Digest, v: Option<&ImageVersion>) -> String {
    let tag = tag.map(|t| format!("tag {t}, ")).unwrap_or_default();
    match v.and_then(|v| v.version.as_deref()) {
        Some(version) => format!("{version} ({tag}{digest})"),
        None => format!("{tag}{digest}"),
    }
}

/// `2026-11-20 09:00:00 UTC (12 days before this notice)`.
fn released(v: &ImageVersion, created: time::OffsetDateTime, now: time::OffsetDateTime) -> String {
    let age = v.age(now).unwrap_or_default();
    format!("{} ({age} before this notice)", utc(created))
}

/// The rows telling the running and the new release: each running digest (with the
/// containers on it when there are several), the new one, and when it was built.
fn release_facts(
    running: &[(&steward_events::Digest, Option<&ImageVersion>, Option<String>)],
    new_digest: &steward_events::Digest,
    new_tag: Option<&str>,
    versions: &Versions,
    now: time::OffsetDateTime,
) -> Vec<(String, String)> {
    let mut facts = vec![];
    for (digest, v, who) in running {
        let label = match who {
            Some(who) => format!("Running in {who}"),
            None => "Running".to_owned(),
        };
        facts.push((label, release(None, digest, *v)));
    }
    facts.push(("New".to_owned(), release(new_tag, new_digest, versions.new_version.as_ref())));
    if let Some(v) = versions.new_version.as_ref() {
        if let Some(created) = v.created {
            facts.push(("Released".to_owned(), released(v, created, now)));
        }
    }
    facts
}

/// One report of a newer image for the containers of `events` (`image.updated` of one image,
/// tag and digest, at least one): the image once, every container named.
pub fn describe_news(events: &[&Event]) -> Item {
    let news: Vec<(&Event, &ImageUpdated)> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::ImageUpdated(u) => Some((*e, u)),
            _ => None,
        })
        .collect();
    let Some((first_event, first)) = news.first().copied() else {
        return describe(
            events.first().copied().unwrap_or_else(|| unreachable!("one event at least")),
        );
    };
    // Under host routing one image is news on every host that runs it, in one report: each
    // container is then named with its host (`gitea on vps-a`), or the report would name the
    // first event's host only, and a container name once for all the hosts that have it.
    let hosts: std::collections::BTreeSet<String> = news.iter().map(|(e, _)| host_of(e)).collect();
    let who = |e: &Event, u: &ImageUpdated| match hosts.len() {
        1 => u.container.clone(),
        _ => format!("{} on {}", u.container, host_of(e)),
    };
    let mut containers: Vec<String> = news.iter().map(|(e, u)| who(e, u)).collect();
    containers.sort_unstable();
    containers.dedup();
    let names = containers.join(", ");
    // Containers on the same image usually run the same digest; when not, each is told.
    let mut running: Vec<(&steward_events::Digest, Option<&ImageVersion>, Vec<String>)> = vec![];
    for (e, u) in &news {
        match running.iter_mut().find(|(d, _, _)| **d == u.current_digest) {
            Some((_, _, named)) => named.push(who(e, u)),
            None => running.push((
                &u.current_digest,
                u.versions.current_version.as_ref(),
                vec![who(e, u)],
            )),
        }
    }
    let several = running.len() > 1;
    let running: Vec<_> =
        running.into_iter().map(|(d, v, who)| (d, v, several.then(|| who.join(", ")))).collect();
    let new_name = first
        .versions
        .new_version
        .as_ref()
        .and_then(|v| v.version.clone())
        .or_else(|| first.new_tag.clone())
        .unwrap_or_else(|| first.new_digest.short().to_owned());
    let mut facts = vec![
        ("Image".to_owned(), first.image.clone()),
        (if containers.len() == 1 { "Container" } else { "Containers" }.to_owned(), names.clone()),
    ];
    facts.extend(release_facts(
        &running,
        &first.new_digest,
        first.new_tag.as_deref(),
        &first.versions,
        first_event.time,
    ));
    let mut item = Item {
        severity: Severity::Info,
        kind: first_event.event_type(),
        told: first_event.event_type(),
        id: first_event.id,
        headline: format!("Newer image {new_name} for {} ({})", at_most(&containers), first.image),
        container: Some(at_most(&containers)),
        when: utc(first_event.time),
        host: match hosts.len() {
            1 => host_of(first_event),
            n => format!("{n} hosts"),
        },
        facts,
        log_tail: vec![],
        next: String::new(),
        update_id: None,
        deploy_id: None,
        approval_url: None,
        needs_decision: false,
        release_notes: first.versions.release_notes(),
    };
    item.next = told(item.told).next.to_owned();
    item
}

/// The names for a headline or a subject: the first [`NAMED_IN_HEADLINE`], then how many
/// more (one image on fifty hosts would otherwise make a subject of hundreds of characters;
/// the item's facts name every one).
fn at_most(names: &[String]) -> String {
    match names.len().checked_sub(NAMED_IN_HEADLINE) {
        Some(more) if more > 0 => {
            format!("{} and {more} more", names[..NAMED_IN_HEADLINE].join(", "))
        }
        _ => names.join(", "),
    }
}

/// How many containers a headline names.
const NAMED_IN_HEADLINE: usize = 3;

/// The subject of a message of `items` (at least one).
pub fn subject(items: &[Item]) -> String {
    let hosts: std::collections::BTreeSet<&str> = items.iter().map(|i| i.host.as_str()).collect();
    let at = match hosts.len() {
        1 => format!(" {}:", hosts.iter().next().copied().unwrap_or_default()),
        _ => String::new(),
    };
    // Critical mail stands out in an inbox (and to a filter) by its subject alone.
    let at = if items.iter().any(|i| i.severity == Severity::Critical) {
        format!(" CRITICAL{at}")
    } else {
        at
    };
    if let [one] = items {
        return format!("{SUBJECT_PREFIX}{at} {}", one.headline);
    }
    // Ten containers failing at once: "10 unhealthy: a, b, c and 7 more".
    let mut kinds: Vec<(&str, usize)> = vec![];
    for i in items {
        match kinds.iter_mut().find(|(k, _)| *k == i.told) {
            Some((_, n)) => *n += 1,
            None => kinds.push((i.told, 1)),
        }
    }
    let summary = kinds
        .iter()
        .map(|(k, n)| format!("{n} {}", kind_phrase(k, *n)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut names: Vec<&str> = items.iter().filter_map(|i| i.container.as_deref()).collect();
    names.dedup();
    let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    let more = names.len().saturating_sub(3);
    let who = match (shown.is_empty(), more) {
        (true, _) => String::new(),
        (false, 0) => format!(": {shown}"),
        (false, n) => format!(": {shown} and {n} more"),
    };
    format!("{SUBJECT_PREFIX}{at} {summary}{who}")
}

/// What every deployment item says: where, which commit, by whom, why.
fn deploy_facts(c: &steward_events::Change) -> Vec<(String, String)> {
    let mut facts = vec![
        ("Environment".to_owned(), c.environment.clone()),
        ("Commit".to_owned(), format!("{} ({})", c.commit, c.branch)),
        ("Repository".to_owned(), c.repository.clone()),
    ];
    if let Some(a) = &c.author {
        facts.push(("Author".to_owned(), a.clone()));
    }
    if let Some(m) = &c.message {
        facts.push(("Message".to_owned(), m.clone()));
    }
    facts
}

fn kind_phrase(kind: &str, n: usize) -> &'static str {
    let t = told(kind);
    if n == 1 {
        t.one
    } else {
        t.many
    }
}

/// How one kind of event is told: counted in a grouped subject, and what to do about it.
struct Told {
    kind: &'static str,
    /// How urgent (quiet hours hold all but critical ones).
    severity: Severity,
    /// "3 updates failed": the phrase after the count, for one and for several.
    one: &'static str,
    many: &'static str,
    /// What the operator should do; `{container}` is the item's container.
    next: &'static str,
}

/// Every event the notifier tells, in one table (a test checks it covers what it consumes).
const TOLD: &[Told] = &[
    Told { kind: "image.updated", severity: Severity::Info, one: "newer image", many: "newer images",
        next: "Nothing changes by itself: these containers are labelled `steward.update.policy=notify` (the default). To update, pull and recreate them (`docker compose pull && docker compose up -d`), or label them `manual` (Steward asks for approval) or `automatic`." },
    Told { kind: "update.pending", severity: Severity::Info, one: "update awaiting approval", many: "updates awaiting approval",
        next: "" },
    Told { kind: "update.succeeded", severity: Severity::Info, one: "update done", many: "updates done",
        next: "Nothing to do: the container passed its health gate on the new image." },
    Told { kind: "rollback:update.succeeded", severity: Severity::Info, one: "rollback done", many: "rollbacks done",
        next: "Nothing to do: the container passed its health gate on the image it ran before. The rolled-back digest is not offered again; a newer one will be, as usual. To go forward at once: `steward rollback {container} --to <digest>` (runbook: rolling back by hand)." },
    Told { kind: "rollback:update.failed", severity: Severity::Warning, one: "rollback failed", many: "rollbacks failed",
        next: "The running container was not touched: {container} still runs the image it ran before the request. Fix the cause (often: the previous image is gone from the host and cannot be pulled), then run `steward rollback {container}` again (runbook: rolling back by hand)." },
    Told { kind: "rollback:update.rolled_back", severity: Severity::Warning, one: "rollback undone", many: "rollbacks undone",
        next: "The image rolled back to failed its health gate, so {container} runs again on the image it ran before the rollback, with the same configuration. Nothing is retried. The log lines below are from the failed container: fix the cause before `steward rollback {container}` again, or go to another digest with `--to` (runbook: rolling back by hand)." },
    Told { kind: "update.written_back", severity: Severity::Warning, one: "update not written back", many: "updates not written back",
        next: "The update stands, but the next `docker compose up -d` (an Ansible deploy runs one) recreates {container} from the old version: change the image where the project defines it (the `.env` variable or the `image:` line) to the version above (runbook: an update was not written back)." },
    Told { kind: "update.failed", severity: Severity::Warning, one: "update failed", many: "updates failed",
        next: "The running container was not touched. Fix the cause, then run `steward check` to offer the update again." },
    Told { kind: "update.rolled_back", severity: Severity::Warning, one: "update rolled back", many: "updates rolled back",
        next: "The previous image runs again with the same configuration. The refused digest is not retried; a newer one will be offered when it appears. The log lines below are from the failed container." },
    Told { kind: "backup.failed", severity: Severity::Warning, one: "backup failed", many: "backups failed",
        next: "No manifest was written, so this backup is never used; earlier backups are intact. Fix the cause and run `steward backup now` (runbook: a backup failed)." },
    Told { kind: "backup.stale", severity: Severity::Critical, one: "backups stale", many: "backups stale",
        next: "The nightly backup did not happen or keeps failing: look for `backup.failed` mails and `docker logs` of the backup service, then run `steward backup now` (runbook: a backup failed). Data changed since the newest backup is not protected." },
    Told { kind: "backup.resumed", severity: Severity::Warning, one: "backups resumed without a restore", many: "backups resumed without a restore",
        next: "This rebuilt host backs up its stack as it is from now on: its next backup becomes the latest, and the old host's backups age out by retention. If nobody here meant to give up the old data, restore it now, before the next backup (runbook: disaster recovery on an empty host, step 4)." },
    Told { kind: "verify.failed", severity: Severity::Warning, one: "backup failed verification", many: "backups failed verification",
        next: "Do not restore this backup. Take a new one with `steward backup now` and verify it." },
    Told { kind: "restore.done", severity: Severity::Info, one: "restore done", many: "restores done",
        next: "The containers are running and healthy; check the application." },
    Told { kind: "restore.failed", severity: Severity::Critical, one: "restore failed", many: "restores failed",
        next: "Containers may be stopped or partly restored. Follow the restore runbook; `steward restore` can be run again." },
    Told { kind: "health.failed", severity: Severity::Critical, one: "unhealthy", many: "unhealthy",
        next: "Look at `docker logs {container}` on the host. A recovery notice follows when it passes again." },
    Told { kind: "health.recovered", severity: Severity::Info, one: "recovered", many: "recovered", next: "Nothing to do." },
    Told { kind: "health.restarted", severity: Severity::Warning, one: "restarted", many: "restarted",
        next: "Nothing to do if a recovery notice follows. If it keeps failing, look at `docker logs {container}`: restarts stop after STEWARD_HEALTH_RESTART_LIMIT an hour." },
    Told { kind: "health.restart_limited", severity: Severity::Critical, one: "down, restarts used up", many: "down, restarts used up",
        next: "Restarting did not bring {container} back and no more restarts are made this hour. Look at `docker logs {container}` on the host; a recovery notice follows when it passes again." },
    Told { kind: "health.engine_failed", severity: Severity::Critical, one: "engine not answering", many: "engine not answering",
        next: "Updates, backups and health checks of containers wait for it. Check `systemctl status docker` and `journalctl -u docker` on the host; a deadlocked dockerd needs a restart. A recovery notice follows when it answers again." },
    Told { kind: "health.engine_recovered", severity: Severity::Info, one: "engine recovered", many: "engine recovered",
        next: "Nothing to do; an update or backup cut short by the outage was reported on its own." },
    Told { kind: "watch.registry_failed", severity: Severity::Warning, one: "registry failing", many: "registries failing",
        next: "Newer images there go unnoticed until it answers: check the host's DNS and network, the registry's status page, and the credentials in DOCKER_CONFIG (`docker login` on the host). `steward check` tries again now. A notice follows when it answers." },
    Told { kind: "watch.registry_recovered", severity: Severity::Info, one: "registry recovered", many: "registries recovered",
        next: "Nothing to do: the next check reports what it missed." },
    Told { kind: "health.cert_expiring", severity: Severity::Warning, one: "certificate expiring", many: "certificates expiring",
        next: "Run `steward certs renew` (or wait for the weekly renewal) and look for a `certs.failed` mail; if renewal keeps failing, check DNS and port 80 for the ACME challenge (runbook: a certificate is expiring). A notice follows when the certificate is renewed." },
    Told { kind: "health.cert_renewed", severity: Severity::Info, one: "certificate renewed", many: "certificates renewed",
        next: "Nothing to do." },
    Told { kind: "health.disk_low", severity: Severity::Warning, one: "disk space low", many: "disk space low",
        next: "Free space before writes fail: `docker system df` and `docker image prune` on the host, old logs, or grow the volume (runbook: disk space low). Backups and updates need room too. A notice follows when there is enough again." },
    Told { kind: "health.disk_recovered", severity: Severity::Info, one: "disk space recovered", many: "disk space recovered",
        next: "Nothing to do." },
    Told { kind: "health.config_invalid", severity: Severity::Warning, one: "configuration check failed", many: "configuration checks failed",
        next: "{container} still runs its last good configuration, but its next reload or restart will fail (the certificate renewal reloads nginx). Fix the file named in the output below and run the check by hand (`docker exec {container} nginx -t`) (runbook: a configuration check failed)." },
    Told { kind: "health.config_recovered", severity: Severity::Info, one: "configuration check passes", many: "configuration checks pass",
        next: "Nothing to do." },
    Told { kind: "certs.failed", severity: Severity::Warning, one: "certificate renewal failed", many: "certificate renewals failed",
        next: "The certificates in service are unchanged unless listed as renewed; check their expiry. Fix the cause and run `steward certs renew` (runbook: certificates)." },
    Told { kind: "deploy.pending", severity: Severity::Info, one: "deployment awaiting approval", many: "deployments awaiting approval",
        next: "Nothing is deployed until it is approved (runbook: approving a deployment)." },
    Told { kind: "deploy.deferred", severity: Severity::Info, one: "deployment waiting for its window", many: "deployments waiting for their window",
        next: "Nothing to do: it starts when the environment's deployment window opens. To deploy now, pin the commit (`steward deploy ENV COMMIT`); to cancel it, `steward deploy reject ENV` (runbook: approving a deployment)." },
    Told { kind: "deploy.succeeded", severity: Severity::Info, one: "deployment done", many: "deployments done",
        next: "Nothing to do: the changed services passed their health gate on the new commit." },
    Told { kind: "deploy.failed", severity: Severity::Warning, one: "deployment failed", many: "deployments failed",
        next: "No service was touched. Fix the cause in the repository and push again (runbook: a deployment failed)." },
    Told { kind: "deploy.rolled_back", severity: Severity::Warning, one: "deployment rolled back", many: "deployments rolled back",
        next: "The previous commit's definitions run again. Fix the commit and push again; the log lines below are from the failed service (runbook: a deployment was rolled back)." },
    Told { kind: "deploy.written_back", severity: Severity::Warning, one: "update not on its branch yet", many: "updates not on their branch yet",
        next: "The update stands, but until the branch names the version above, a deployment of the branch recreates {container} from the old version: merge the pull request above when there is one, else commit the version where the repository defines the image (the `.env` variable or the `image:` line) (runbook: an update was not written back)." },
    Told { kind: "notify.test_requested", severity: Severity::Info, one: "test notification", many: "test notifications",
        next: "Nothing to do: this is the test asked for with `steward notify test`. Mail about updates, backups and health comes the same way." },
    // Not events: Alertmanager's webhook (`alerts.rs`); severity comes from each alert's label.
    Told { kind: "alert.firing", severity: Severity::Warning, one: "alert firing", many: "alerts firing",
        next: "" },
    Told { kind: "alert.resolved", severity: Severity::Info, one: "alert resolved", many: "alerts resolved",
        next: "" },
];

/// Anything else (a type configured in `STEWARD_NOTIFY_EVENTS` that has no entry).
const OTHER: Told = Told {
    kind: "",
    severity: Severity::Info,
    one: "event",
    many: "events",
    next: "See `steward events replay` for details.",
};

fn told(kind: &str) -> &'static Told {
    TOLD.iter().find(|t| t.kind == kind).unwrap_or(&OTHER)
}

/// The templates, compiled once.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// Loads the built-in templates. The `.html` one auto-escapes everything it prints.
    pub fn builtin() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        env.add_template("mail.txt", include_str!("../templates/mail.txt"))?;
        env.add_template("mail.html", include_str!("../templates/mail.html"))?;
        Ok(Self { env })
    }

    /// Renders `items` (at least one) as one message.
    pub fn render(&self, items: Vec<Item>) -> Result<Message, minijinja::Error> {
        let subject = subject(&items);
        let ctx = minijinja::context! { subject => &subject, items => &items };
        let text = self.env.get_template("mail.txt")?.render(&ctx)?;
        let html = self.env.get_template("mail.html")?.render(&ctx)?;
        Ok(Message { subject, text, html, items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: &str) -> Event {
        let data = steward_events::samples::all("gitea")
            .into_iter()
            .find(|d| d.event_type() == kind)
            .expect("sample");
        Event::new("steward-updater/gitea-host", data)
    }

    #[test]
    fn a_mail_names_the_events_host_else_its_sources_machine() {
        let t = Templates::builtin().expect("templates");
        let on_vps1 = sample("health.failed").with_host(Some("vps1".into()));
        let m = t.render(vec![describe(&on_vps1)]).expect("render");
        assert!(m.subject.starts_with("[steward] CRITICAL vps1: "), "{}", m.subject);
        assert!(m.text.contains(" on vps1"), "{}", m.text);
        let old = t.render(vec![describe(&sample("health.failed"))]).expect("render");
        assert!(old.subject.starts_with("[steward] CRITICAL gitea-host: "), "{}", old.subject);
        // Two hosts in one message: the subject names neither, each item its own.
        let on_vps2 = sample("health.failed").with_host(Some("vps2".into()));
        let both = t.render(vec![describe(&on_vps1), describe(&on_vps2)]).expect("render");
        assert!(
            !both.subject.contains("vps1:") && !both.subject.contains("vps2:"),
            "{}",
            both.subject
        );
        assert!(both.text.contains(" on vps1") && both.text.contains(" on vps2"), "{}", both.text);
    }

    #[test]
    fn a_pending_update_asks_for_a_decision_and_carries_the_link_it_was_given() {
        let t = Templates::builtin().expect("templates");
        let mut item = describe(&sample("update.pending"));
        assert_eq!(item.approval_url, None, "an event never gives the link");
        let expires = time::macros::datetime!(2026-11-30 12:00 UTC);
        item.offer_link("https://steward.example/approve/token".into(), expires);
        let m = t.render(vec![item]).expect("render");
        assert!(
            m.subject.starts_with("[steward] gitea-host: Approve update of gitea to"),
            "{}",
            m.subject
        );
        assert!(m.text.contains("https://steward.example/approve/token"), "{}", m.text);
        assert!(m.text.contains("expires 2026-11-30 12:00:00 UTC"), "{}", m.text);
        // Auto-escaping writes `/` as `&#x2f;`, which every HTML reader decodes in attributes.
        let href = "href=\"https:&#x2f;&#x2f;steward.example&#x2f;approve&#x2f;token\"";
        assert!(m.html.contains(href), "{}", m.html);
        assert!(m.items[0].needs_decision);
    }

    #[test]
    fn a_rollback_that_left_the_old_container_failing_is_the_urgent_mail() {
        let mut e = sample("update.rolled_back");
        if let EventData::UpdateRolledBack(r) = &mut e.data {
            r.old_healthy = Some(false);
            r.old_reason = Some("the old container: GET http://gitea:3000/ answered 500".into());
            r.old_log_tail = vec!["database is locked".into()];
        }
        let item = describe(&e);
        assert!(item.headline.starts_with("DOWN: gitea"), "{}", item.headline);
        assert!(item.facts.iter().any(|(k, v)| k == "Old container now" && v.contains("500")));
        assert!(item.log_tail.iter().any(|l| l == "database is locked"), "{:?}", item.log_tail);
        assert!(item.next.contains("steward restore"), "{}", item.next);
        let healthy = describe(&sample("update.rolled_back"));
        assert!(
            healthy.headline.starts_with("Update of gitea rolled back"),
            "{}",
            healthy.headline
        );
    }

    #[test]
    fn an_outage_is_critical_and_says_so_in_the_subject_and_a_success_is_not() {
        let down = describe(&sample("health.failed"));
        assert_eq!(down.severity, Severity::Critical);
        assert!(subject(&[down]).starts_with("[steward] CRITICAL gitea-host: "));
        let done = describe(&sample("update.succeeded"));
        assert_eq!(done.severity, Severity::Info);
        assert!(!subject(std::slice::from_ref(&done)).contains("CRITICAL"));
        assert_eq!(describe(&sample("update.failed")).severity, Severity::Warning);
        // One critical item makes the grouped message critical.
        let both = subject(&[done, describe(&sample("health.failed"))]);
        assert!(both.contains("CRITICAL"), "{both}");
        // A rollback is a warning, unless the old container is not healthy either.
        assert_eq!(describe(&sample("update.rolled_back")).severity, Severity::Warning);
        let mut e = sample("update.rolled_back");
        if let EventData::UpdateRolledBack(r) = &mut e.data {
            r.old_healthy = Some(false);
        }
        assert_eq!(describe(&e).severity, Severity::Critical);
    }

    #[test]
    fn every_event_the_notifier_receives_is_told_by_the_table() {
        for kind in steward_events::Service::Notifier.consumes() {
            let t = told(kind);
            assert_eq!(t.kind, *kind, "{kind} has no entry in TOLD");
            // update.pending's next step depends on its link (`Item::offer_link`).
            assert!(*kind == "update.pending" || !t.next.is_empty(), "{kind} says nothing to do");
        }
        // A rollback's update.* events are told as rollbacks, each with a row of its own.
        for data in steward_events::samples::all("gitea") {
            let mut e = Event::new("steward-updater/gitea-host", data);
            let kind = match &mut e.data {
                EventData::UpdateSucceeded(s) => &mut s.kind,
                EventData::UpdateFailed(f) => &mut f.kind,
                EventData::UpdateRolledBack(r) => &mut r.kind,
                _ => continue,
            };
            *kind = UpdateKind::Rollback;
            let key = told_key(&e);
            assert_eq!(told(key).kind, key, "{key} has no entry in TOLD");
            assert!(key.starts_with("rollback:"), "{key}");
            assert!(!told(key).next.contains("update"), "a rollback advised as an update: {key}");
        }
        let told_kinds: Vec<&str> = TOLD.iter().map(|t| t.kind).collect();
        let mut unique = told_kinds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), told_kinds.len(), "a kind twice in TOLD");
    }

    #[test]
    fn a_served_certificate_says_where_it_is_served_not_a_file() {
        let mut e = sample("health.cert_expiring");
        if let EventData::CertExpiring(c) = &mut e.data {
            c.certificate = "tls://git.example.com@nginx:443".into();
            c.container = "nginx".into();
        }
        let item = describe(&e);
        assert!(
            item.facts
                .iter()
                .any(|(k, v)| k == "Served at" && v == "git.example.com@nginx:443 by nginx"),
            "{:?}",
            item.facts
        );
        assert!(!item.facts.iter().any(|(k, _)| k == "File"), "{:?}", item.facts);
        // The hub's leaf-node port, shown with its scheme (a NATS server, not a web server).
        let mut hub = sample("health.cert_renewed");
        if let EventData::CertRenewed(c) = &mut hub.data {
            c.certificate = "nats://hub.example.org@nats-hub:7422".into();
            c.container = "nats-hub".into();
            c.not_after = None;
        }
        let item = describe(&hub);
        let served = ("Served at", "nats://hub.example.org@nats-hub:7422 by nats-hub");
        assert!(item.facts.iter().any(|(k, v)| (k.as_str(), v.as_str()) == served), "{item:?}");
        assert!(item.facts.iter().any(|(_, v)| v.contains("no longer watched")), "{item:?}");
        let file = describe(&sample("health.cert_expiring"));
        assert!(file.facts.iter().any(|(k, _)| k == "File"), "{:?}", file.facts);
    }

    #[test]
    fn grouped_certificate_failures_are_named_not_counted_as_events() {
        let items = vec![describe(&sample("certs.failed")), describe(&sample("certs.failed"))];
        let s = subject(&items);
        assert!(s.contains("2 certificate renewals failed"), "{s}");
        let one = subject(&[describe(&sample("certs.failed")), describe(&sample("update.failed"))]);
        assert!(one.contains("1 certificate renewal failed"), "{one}");
    }

    fn news_for(container: &str) -> Event {
        let mut e = sample("image.updated");
        e.source = "steward-watcher/gitea-host".into();
        if let EventData::ImageUpdated(u) = &mut e.data {
            u.container = container.into();
        }
        e
    }

    #[test]
    fn a_newer_image_is_one_entry_naming_every_container_with_both_versions_and_the_notes() {
        let (a, b) = (news_for("gitea-b"), news_for("gitea-a"));
        let item = describe_news(&[&a, &b]);
        assert_eq!(item.headline, "Newer image 1.22.7 for gitea-a, gitea-b (gitea/gitea:1.22)");
        let fact = |k: &str| item.facts.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(fact("Containers"), Some("gitea-a, gitea-b"));
        assert!(fact("Running").is_some_and(|v| v.starts_with("1.22.6 (sha256:aaaa")), "{item:?}");
        assert!(
            fact("New").is_some_and(|v| v.starts_with("1.22.7 (tag 1.22.7, sha256:bbbb")),
            "{item:?}"
        );
        assert!(
            fact("Released").is_some_and(|v| v.starts_with("2026-11-20 09:00:00 UTC (")),
            "{item:?}"
        );
        assert_eq!(
            item.release_notes.as_deref(),
            Some("https://github.com/go-gitea/gitea/compare/5f3c9a1...9e2b4d7")
        );
        let m = Templates::builtin().expect("templates").render(vec![item]).expect("render");
        assert!(m.subject.contains("Newer image 1.22.7 for gitea-a, gitea-b"), "{}", m.subject);
        assert!(
            m.text.contains(
                "Release notes: https://github.com/go-gitea/gitea/compare/5f3c9a1...9e2b4d7"
            ),
            "{}",
            m.text
        );
        assert!(m.text.contains("steward.update.policy=notify"), "{}", m.text);
        // One event alone is told the same way.
        assert!(describe(&a).headline.starts_with("Newer image 1.22.7 for gitea-b"));
    }

    /// Issue 23's simulation (docs/scaling.md): one image, news on 50 hosts at once, was one
    /// report naming the first event's host and the container once.
    #[test]
    fn a_newer_image_on_several_hosts_names_every_host() {
        let on = |host: &str| news_for("gitea").with_host(Some(host.into()));
        let (a, b) = (on("vps-b"), on("vps-a"));
        let item = describe_news(&[&a, &b]);
        let fact = |k: &str| item.facts.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(fact("Containers"), Some("gitea on vps-a, gitea on vps-b"), "{item:?}");
        assert_eq!(item.host, "2 hosts");
        let m = Templates::builtin().expect("templates").render(vec![item]).expect("render");
        assert!(m.subject.contains("for gitea on vps-a, gitea on vps-b"), "{}", m.subject);
        assert!(m.text.contains(" on 2 hosts"), "{}", m.text);
        // Fifty hosts: every one in the facts, three and a count in the subject.
        let hosts: Vec<Event> = (1..=50).map(|n| on(&format!("vps-{n:02}"))).collect();
        let item = describe_news(&hosts.iter().collect::<Vec<_>>());
        let fact = |k: &str| item.facts.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(fact("Containers").map(|c| c.matches(" on vps-").count()), Some(50));
        let m = Templates::builtin().expect("templates").render(vec![item]).expect("render");
        assert!(m.subject.contains("gitea on vps-03 and 47 more"), "{}", m.subject);
        assert!(m.subject.len() < 200, "{}", m.subject);
        // One host: named as before.
        let same = describe_news(&[&on("vps-a"), &news_for("web").with_host(Some("vps-a".into()))]);
        assert_eq!(same.host, "vps-a");
        let fact = |k: &str| same.facts.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(fact("Containers").as_deref(), Some("gitea, web"));
    }

    #[test]
    fn containers_on_different_running_digests_are_told_apart() {
        let a = news_for("a");
        let mut b = news_for("b");
        if let EventData::ImageUpdated(u) = &mut b.data {
            u.current_digest =
                steward_events::Digest::parse(&format!("sha256:{}", "c".repeat(64))).expect("d");
            u.versions.current_version = None;
        }
        let item = describe_news(&[&a, &b]);
        let keys: Vec<&str> = item.facts.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"Running in a") && keys.contains(&"Running in b"), "{keys:?}");
    }

    #[test]
    fn hostile_image_labels_never_become_a_link_and_are_escaped() {
        let mut e = news_for("app");
        if let EventData::ImageUpdated(u) = &mut e.data {
            let v = u.versions.new_version.as_mut().expect("sample has one");
            v.source = Some("javascript:alert(1)".into());
            v.version = Some("<img src=x onerror=alert(1)>".into());
        }
        let item = describe(&e);
        assert_eq!(item.release_notes, None);
        let m = Templates::builtin().expect("templates").render(vec![item]).expect("render");
        assert!(!m.html.contains("javascript:") && !m.html.contains("<img"), "{}", m.html);
    }

    #[test]
    fn the_approval_request_shows_the_same_versions() {
        let item = describe(&sample("update.pending"));
        let fact = |k: &str| item.facts.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert!(fact("Running").is_some_and(|v| v.starts_with("1.22.6 (")), "{item:?}");
        assert!(fact("New").is_some_and(|v| v.starts_with("1.22.7 (")), "{item:?}");
        assert!(fact("Released").is_some(), "{item:?}");
        assert!(item.release_notes.as_deref().is_some_and(|l| l.contains("/compare/")));
    }

    #[test]
    fn an_automatic_update_is_told_as_such() {
        let mut e = sample("update.succeeded");
        if let EventData::UpdateSucceeded(s) = &mut e.data {
            s.approved_by = None;
        }
        assert!(describe(&e).headline.starts_with("gitea updated automatically to"));
    }

    /// `sample(kind)` as the event of a `steward rollback` requested by alice@host.
    fn rollback(kind: &str) -> Event {
        let mut e = sample(kind);
        let by = Some("alice@host".to_owned());
        match &mut e.data {
            EventData::UpdateSucceeded(s) => {
                (s.kind, s.requested_by, s.approved_by) = (UpdateKind::Rollback, by, None);
            }
            EventData::UpdateFailed(f) => (f.kind, f.requested_by) = (UpdateKind::Rollback, by),
            EventData::UpdateRolledBack(r) => (r.kind, r.requested_by) = (UpdateKind::Rollback, by),
            _ => unreachable!("not an update.* sample: {kind}"),
        }
        e
    }

    #[test]
    fn a_rollback_is_told_as_a_rollback_not_as_an_update() {
        let done = describe(&rollback("update.succeeded"));
        assert!(
            done.headline.starts_with("Rolled back gitea to gitea/gitea:1.22 (")
                && done.headline.ends_with(", requested by alice@host"),
            "{}",
            done.headline
        );
        assert!(!done.headline.contains("updated"), "{}", done.headline);
        assert!(done.next.contains("not offered again") && done.next.contains("newer one will be"));
        assert!(done.facts.iter().any(|(k, v)| k == "Requested by" && v == "alice@host"));
        assert_eq!(done.severity, Severity::Info);
        let subject_of = |items: &[Item]| subject(items);
        let two = [done.clone(), describe(&rollback("update.succeeded"))];
        assert!(subject_of(&two).contains(" 2 rollbacks done: gitea"), "{}", subject_of(&two));
        // Grouped with an update, each is counted as what it is.
        let mixed = [done, describe(&sample("update.succeeded"))];
        let s = subject_of(&mixed);
        assert!(s.contains("1 rollback done, 1 update done"), "{s}");

        let failed = describe(&rollback("update.failed"));
        assert!(failed.headline.starts_with("Rollback of gitea failed: "), "{}", failed.headline);
        assert!(failed.next.contains("steward rollback gitea"), "{}", failed.next);
        assert_eq!(failed.severity, Severity::Warning);

        let undone = describe(&rollback("update.rolled_back"));
        assert!(undone.headline.starts_with("Rollback of gitea undone: "), "{}", undone.headline);
        assert!(undone.next.contains("before the rollback"), "{}", undone.next);
        assert_eq!(undone.severity, Severity::Warning);
        let mut down = rollback("update.rolled_back");
        if let EventData::UpdateRolledBack(r) = &mut down.data {
            r.old_healthy = Some(false);
        }
        let down = describe(&down);
        assert!(down.headline.starts_with("DOWN: gitea failed its rollback"), "{}", down.headline);
        assert_eq!(down.severity, Severity::Critical);

        // The webhook's JSON still names the event type; the TOLD row is internal.
        let json = serde_json::to_value(&undone).expect("json");
        assert_eq!(json["kind"], "update.rolled_back");
        assert!(json.get("told").is_none(), "{json}");
        // An update is unchanged.
        let update = describe(&sample("update.succeeded"));
        assert!(update.headline.starts_with("gitea updated to"), "{}", update.headline);
    }

    #[test]
    fn a_health_failure_names_its_container_in_what_to_do() {
        let item = describe(&sample("health.failed"));
        assert!(item.next.contains("docker logs gitea"), "{}", item.next);
    }

    #[test]
    fn a_pending_update_without_its_link_says_why_and_how_to_decide_on_the_host() {
        let mut item = describe(&sample("update.pending"));
        item.offer_link(
            "https://steward.example/approve/token".into(),
            time::OffsetDateTime::now_utc(),
        );
        item.without_link("this update no longer waits for a decision");
        assert_eq!(item.approval_url, None);
        assert!(item.next.contains("steward approve"), "{}", item.next);
        assert!(item.next.contains("no longer waits for a decision"), "{}", item.next);
        // Only an approval request takes a link.
        let mut other = describe(&sample("update.succeeded"));
        other.offer_link(
            "https://steward.example/approve/token".into(),
            time::OffsetDateTime::now_utc(),
        );
        assert_eq!(other.approval_url, None);
    }

    #[test]
    fn a_pending_deployment_carries_its_link_and_the_deploy_commands() {
        let mut item = describe(&sample("deploy.pending"));
        assert_eq!(item.approval_url, None, "an event never gives the link");
        let url = "https://steward.example/deploy/approve/token";
        item.offer_link(url.into(), time::OffsetDateTime::now_utc());
        assert_eq!(item.approval_url.as_deref(), Some(url));
        assert!(item.next.contains("steward deploy approve"), "{}", item.next);
        item.without_link("this deployment no longer waits for approval");
        assert_eq!(item.approval_url, None);
        assert!(item.next.contains("steward deploy reject"), "{}", item.next);
        assert!(item.next.contains("no longer waits for approval"), "{}", item.next);
    }

    #[test]
    fn a_rolled_back_update_shows_reason_and_log_lines_escaped_in_html() {
        let mut e = sample("update.rolled_back");
        if let EventData::UpdateRolledBack(r) = &mut e.data {
            r.log_tail = vec!["<script>alert(1)</script> panic: boom".into()];
        }
        let t = Templates::builtin().expect("templates");
        let m = t.render(vec![describe(&e)]).expect("render");
        assert!(m.subject.contains("rolled back"), "{}", m.subject);
        assert!(m.text.contains("<script>alert(1)</script> panic: boom"), "{}", m.text);
        assert!(!m.html.contains("<script>"), "{}", m.html);
        assert!(m.html.contains("&lt;script&gt;"), "{}", m.html);
    }

    #[test]
    fn a_rolled_back_deployment_says_why_what_runs_again_and_its_log_escaped_in_html() {
        let mut e = sample("deploy.rolled_back");
        let EventData::DeployRolledBack(r) = &mut e.data else { panic!("a rollback sample") };
        r.reason = "web failed its health gate: <b>unhealthy</b> after 3 checks".into();
        r.log_tail = vec!["<script>alert(1)</script> listen: address in use".into()];
        r.previous_commit = Some("0123456789abcdef0123456789abcdef01234567".into());
        let environment = r.change.environment.clone();
        let t = Templates::builtin().expect("templates");
        let m = t.render(vec![describe(&e)]).expect("render");
        assert!(m.subject.contains("rolled back"), "{}", m.subject);
        assert!(m.text.contains(&environment), "{}", m.text);
        assert!(m.text.contains("web failed its health gate: <b>unhealthy</b>"), "{}", m.text);
        assert!(m.text.contains("0123456789abcdef"), "what runs again: {}", m.text);
        assert!(m.text.contains("listen: address in use"), "{}", m.text);
        assert!(!m.html.contains("<script>") && !m.html.contains("<b>unhealthy"), "{}", m.html);
        assert!(m.html.contains("&lt;b&gt;unhealthy&lt;"), "{}", m.html);
    }

    #[test]
    fn a_burst_gets_one_subject_naming_the_containers() {
        let items: Vec<Item> = (0..10)
            .map(|i| {
                let mut e = sample("health.failed");
                if let EventData::HealthFailed(h) = &mut e.data {
                    h.container = format!("app{i}");
                }
                describe(&e)
            })
            .collect();
        assert_eq!(
            subject(&items),
            "[steward] CRITICAL gitea-host: 10 unhealthy: app0, app1, app2 and 7 more"
        );
    }
}
