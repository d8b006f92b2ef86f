//! The notifier's settings, names and defaults in one place.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use steward_events::redact_url;
use steward_runtime::env::is_loopback_host;
use steward_runtime::Env;

use crate::webhook::{WebhookConfig, WebhookFormat};

/// SMTP server: `smtps://user:pass@host:465`, `smtp://user:pass@host:587?tls=required`
/// (STARTTLS), or `smtp://host:25` (plain, loopback only). Usually given as `_FILE`.
pub const ENV_SMTP_URL: &str = "STEWARD_SMTP_URL";
/// Hosts (comma-separated) that may receive mail without TLS although they are not loopback:
/// a relay on the same private network, e.g. a compose service. Never with credentials.
pub const ENV_SMTP_PLAINTEXT_HOSTS: &str = "STEWARD_SMTP_PLAINTEXT_HOSTS";
/// Sender address.
pub const ENV_MAIL_FROM: &str = "STEWARD_MAIL_FROM";
/// Recipients, comma-separated.
pub const ENV_MAIL_TO: &str = "STEWARD_MAIL_TO";
/// Optional webhook: Steward's JSON receiver, a Slack incoming webhook URL, a Matrix
/// homeserver's base URL, an ntfy topic URL or a Gotify server's base URL (see
/// [`ENV_WEBHOOK_FORMAT`]). Usually given as `_FILE` for Slack and ntfy (the URL is the secret).
pub const ENV_WEBHOOK_URL: &str = "STEWARD_WEBHOOK_URL";
/// What the webhook's requests look like: `steward` (default), `slack`, `matrix`, `ntfy`,
/// `gotify`. Said, never guessed from the URL.
pub const ENV_WEBHOOK_FORMAT: &str = "STEWARD_WEBHOOK_FORMAT";
/// The webhook's token, usually as `_FILE`: the Matrix access token and the Gotify
/// application token (required), an ntfy access token or a bearer token for Steward's JSON
/// (optional). Sent only in a header.
pub const ENV_WEBHOOK_TOKEN: &str = "STEWARD_WEBHOOK_TOKEN";
/// Matrix only: the room id messages go to (`!abc:example.org`; the bot's user must have
/// joined it).
pub const ENV_WEBHOOK_MATRIX_ROOM: &str = "STEWARD_WEBHOOK_MATRIX_ROOM";
/// Whether webhook messages carry approval links too (default no: a link approves a
/// production update, and a chat channel is read by more people than the operator's inbox).
pub const ENV_WEBHOOK_APPROVAL_LINKS: &str = "STEWARD_WEBHOOK_APPROVAL_LINKS";
/// Quiet hours, e.g. `22:00-07:00` (host time; days allowed as for maintenance windows:
/// `Mon-Fri 19:00-08:00`): info and warning notifications wait until they end and then go
/// out together; critical ones go at once.
pub const ENV_QUIET: &str = "STEWARD_NOTIFY_QUIET";
/// Which event types are notified (comma-separated); default: all the notifier receives.
pub const ENV_EVENTS: &str = "STEWARD_NOTIFY_EVENTS";
/// How long a burst is collected into one message.
pub const ENV_GROUP_WINDOW: &str = "STEWARD_NOTIFY_GROUP_WINDOW";
/// How long an undeliverable message is retried before it is dropped (`notify.failed`).
pub const ENV_RETRY_FOR: &str = "STEWARD_NOTIFY_RETRY_FOR";
/// How long the notifier's NATS connection may be down before it mails directly.
pub const ENV_BUS_DOWN_AFTER: &str = "STEWARD_NOTIFY_BUS_DOWN_AFTER";
/// The bearer token Alertmanager sends with its webhook (`POST /alerts`), usually as `_FILE`;
/// without it the route is not served.
pub const ENV_ALERTS_TOKEN: &str = "STEWARD_ALERTS_TOKEN";
/// The shortest alert token taken: it is the only thing between the network and a mail.
const MIN_ALERTS_TOKEN: usize = 24;

/// Where mail goes.
#[derive(Clone)]
pub struct EmailConfig {
    /// Connection settings and credentials (the transport is built inside the runtime: its
    /// connection pool spawns a task).
    pub smtp: AsyncSmtpTransportBuilder,
    /// SMTP server, without credentials, for logs and events.
    pub server: String,
    /// Sender.
    pub from: Mailbox,
    /// Recipients.
    pub to: Vec<Mailbox>,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the SMTP password: never print it.
        f.debug_struct("EmailConfig")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("to", &self.to.iter().map(ToString::to_string).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The notifier's settings.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Email channel, if configured.
    pub email: Option<EmailConfig>,
    /// Webhook channel, if configured.
    pub webhook: Option<WebhookConfig>,
    /// Whether the webhook gets approval links.
    pub webhook_links: bool,
    /// Quiet hours, if any.
    pub quiet: Option<steward_labels::Window>,
    /// Event types to notify.
    pub events: Vec<&'static str>,
    /// Burst collection window.
    pub group_window: Duration,
    /// Retry bound of one message.
    pub retry_for: Duration,
    /// NATS unreachable this long: mailed directly (the outbox lives in NATS).
    pub bus_down_after: Duration,
    /// Alertmanager's bearer token: `POST /alerts` is served when set.
    pub alerts_token: Option<String>,
}

/// Event types notified by default (`image.updated` only for `notify` containers).
pub fn default_events() -> Vec<&'static str> {
    steward_events::Service::Notifier.consumes().to_vec()
}

impl NotifierConfig {
    /// Reads the settings; errors go to `env`. At least one channel must be configured.
    pub fn read(env: &mut Env) -> Self {
        let email = read_email(env);
        let webhook = read_webhook(env);
        let webhook_links = env.parse(ENV_WEBHOOK_APPROVAL_LINKS, false);
        let quiet = env.optional(ENV_QUIET).filter(|s| !s.trim().is_empty()).and_then(|raw| {
            steward_labels::Window::parse(&raw)
                .map_err(|reason| env.error(ENV_QUIET, &raw, reason))
                .ok()
        });
        let events = env.parse_with(ENV_EVENTS, default_events(), parse_events);
        let group_window = env.duration(ENV_GROUP_WINDOW, Duration::from_secs(15));
        let retry_for = env.duration(ENV_RETRY_FOR, Duration::from_secs(24 * 3600));
        if email.is_none() && webhook.is_none() && !env.has_errors() {
            env.error(
                ENV_SMTP_URL,
                "",
                format!("no channel configured: set {ENV_SMTP_URL}, {ENV_MAIL_FROM} and {ENV_MAIL_TO}, or {ENV_WEBHOOK_URL}"),
            );
        }
        let bus_down_after = env.duration(ENV_BUS_DOWN_AFTER, Duration::from_secs(300));
        let alerts_token = env.optional(ENV_ALERTS_TOKEN).map(|t| t.trim().to_owned()).filter(|t| {
            let ok = t.len() >= MIN_ALERTS_TOKEN && t.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                env.error(
                    ENV_ALERTS_TOKEN,
                    "(not shown)",
                    format!("at least {MIN_ALERTS_TOKEN} printable characters without spaces (compose/init-secrets.sh makes one)"),
                );
            }
            ok
        });
        Self {
            email,
            webhook,
            webhook_links,
            quiet,
            events,
            group_window,
            retry_for,
            bus_down_after,
            alerts_token,
        }
    }
}

fn read_webhook(env: &mut Env) -> Option<WebhookConfig> {
    let raw = env.optional(ENV_WEBHOOK_URL).filter(|s| !s.is_empty());
    let format = env.optional(ENV_WEBHOOK_FORMAT).filter(|s| !s.trim().is_empty());
    let token = env.optional(ENV_WEBHOOK_TOKEN).filter(|s| !s.is_empty());
    let room = env.optional(ENV_WEBHOOK_MATRIX_ROOM).filter(|s| !s.trim().is_empty());
    let Some(raw) = raw else {
        for (name, set) in [
            (ENV_WEBHOOK_FORMAT, format.is_some()),
            (ENV_WEBHOOK_TOKEN, token.is_some()),
            (ENV_WEBHOOK_MATRIX_ROOM, room.is_some()),
        ] {
            if set {
                env.error(name, "", format!("set without {ENV_WEBHOOK_URL}"));
            }
        }
        return None;
    };
    let format = match format.as_deref().map(WebhookFormat::parse) {
        None => WebhookFormat::Steward,
        Some(Ok(f)) => f,
        Some(Err(reason)) => {
            env.error(ENV_WEBHOOK_FORMAT, format.as_deref().unwrap_or_default(), reason);
            return None;
        }
    };
    // Errors never quote the URL whole: Slack's and ntfy's paths are credentials.
    let shown = |u: &str| match reqwest::Url::parse(u) {
        Ok(u) => format!("{}/…", u.origin().ascii_serialization()),
        Err(_) => "(not a URL)".to_owned(),
    };
    let url = match reqwest::Url::parse(&raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(_) => {
            env.error(ENV_WEBHOOK_URL, &redact_url(&shown(&raw)), "expected an http(s) URL");
            return None;
        }
        Err(e) => {
            env.error(ENV_WEBHOOK_URL, "(not shown)", e);
            return None;
        }
    };
    let mut ok = true;
    let mut refuse = |env: &mut Env, name: &str, value: &str, reason: String| {
        env.error(name, value, reason);
        ok = false;
    };
    if url.query_pairs().any(|(k, _)| k == "token" || k == "access_token") {
        refuse(
            env,
            ENV_WEBHOOK_URL,
            &shown(&raw),
            format!("a token in the URL ends up in proxy and server logs: put it into {ENV_WEBHOOK_TOKEN}_FILE"),
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        refuse(
            env,
            ENV_WEBHOOK_URL,
            &shown(&raw),
            format!("credentials in the URL: put a token into {ENV_WEBHOOK_TOKEN}_FILE"),
        );
    }
    let name = format.as_str();
    match format {
        WebhookFormat::Matrix | WebhookFormat::Gotify if token.is_none() => refuse(
            env,
            ENV_WEBHOOK_TOKEN,
            "",
            format!("required with {ENV_WEBHOOK_FORMAT}={name} (as {ENV_WEBHOOK_TOKEN}_FILE)"),
        ),
        WebhookFormat::Slack if token.is_some() => refuse(
            env,
            ENV_WEBHOOK_TOKEN,
            "***",
            format!("not used with {ENV_WEBHOOK_FORMAT}=slack: the webhook URL is its credential"),
        ),
        _ => {}
    }
    match (&room, format) {
        (None, WebhookFormat::Matrix) => refuse(
            env,
            ENV_WEBHOOK_MATRIX_ROOM,
            "",
            format!("required with {ENV_WEBHOOK_FORMAT}=matrix (a room id, !abc:example.org)"),
        ),
        (Some(r), WebhookFormat::Matrix) if !r.starts_with('!') || !r.contains(':') => refuse(
            env,
            ENV_WEBHOOK_MATRIX_ROOM,
            r,
            "expected a room id (!abc:example.org; an alias #name:server is not resolved: the room's settings show its id)".into(),
        ),
        (Some(r), f) if f != WebhookFormat::Matrix => {
            refuse(env, ENV_WEBHOOK_MATRIX_ROOM, r, format!("only used with {ENV_WEBHOOK_FORMAT}=matrix"))
        }
        _ => {}
    }
    if format == WebhookFormat::Ntfy && url.path().trim_matches('/').is_empty() {
        refuse(
            env,
            ENV_WEBHOOK_URL,
            &shown(&raw),
            "expected the topic's URL (https://ntfy.example.org/TOPIC)".into(),
        );
    }
    if let Some(t) = &token {
        if t.chars().any(|c| c.is_control() || c == ' ') {
            refuse(
                env,
                ENV_WEBHOOK_TOKEN,
                "***",
                "a token has no blanks or control characters".into(),
            );
        }
    }
    ok.then(|| WebhookConfig { url, format, token, matrix_room: room.map(|r| r.trim().to_owned()) })
}

fn read_email(env: &mut Env) -> Option<EmailConfig> {
    let url = env.optional(ENV_SMTP_URL).filter(|s| !s.is_empty());
    let from = env.optional(ENV_MAIL_FROM).filter(|s| !s.is_empty());
    let to = env.optional(ENV_MAIL_TO).filter(|s| !s.is_empty());
    let Some(url) = url else {
        for (name, v) in [(ENV_MAIL_FROM, &from), (ENV_MAIL_TO, &to)] {
            if let Some(v) = v {
                env.error(name, v, format!("set without {ENV_SMTP_URL}"));
            }
        }
        return None;
    };
    let shown = redact_url(&url);
    let plaintext_hosts = env.optional(ENV_SMTP_PLAINTEXT_HOSTS).unwrap_or_default();
    if let Err(reason) = check_smtp_tls(&url, &plaintext_hosts) {
        env.error(ENV_SMTP_URL, &shown, reason);
    }
    let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(&url) {
        Ok(b) => Some(b.timeout(Some(Duration::from_secs(30)))),
        Err(e) => {
            env.error(ENV_SMTP_URL, &shown, format!("{e} (expected smtps:// with port 465, or smtp:// with ?tls=required and port 587)"));
            None
        }
    };
    let from = match from {
        None => {
            env.error(ENV_MAIL_FROM, "", format!("required with {ENV_SMTP_URL}"));
            None
        }
        Some(raw) => match raw.parse::<Mailbox>() {
            Ok(m) => Some(m),
            Err(e) => {
                env.error(ENV_MAIL_FROM, &raw, e);
                None
            }
        },
    };
    let to = match to {
        None => {
            env.error(ENV_MAIL_TO, "", format!("required with {ENV_SMTP_URL}"));
            None
        }
        Some(raw) => match parse_recipients(&raw) {
            Ok(list) => Some(list),
            Err(e) => {
                env.error(ENV_MAIL_TO, &raw, e);
                None
            }
        },
    };
    Some(EmailConfig { smtp: transport?, server: shown, from: from?, to: to? })
}

/// Mail and the SMTP password leave this host only encrypted: implicit TLS (`smtps://`) or
/// STARTTLS that must succeed (`smtp://...?tls=required`). Without either (`tls=opportunistic`
/// falls back to plain text when the server, or whoever sits in between, does not offer
/// STARTTLS) only a loopback server is accepted, or a relay named in `plaintext_hosts` to which
/// no credentials are sent.
fn check_smtp_tls(url: &str, plaintext_hosts: &str) -> Result<(), String> {
    // Unparsable URLs are reported by the transport's own parser.
    let Ok(u) = reqwest::Url::parse(url) else { return Ok(()) };
    let tls_required = u.query_pairs().any(|(k, v)| k == "tls" && v == "required");
    if u.scheme() != "smtp" || tls_required {
        return Ok(());
    }
    let host = u.host_str().unwrap_or_default();
    if is_loopback_host(host) {
        return Ok(());
    }
    // Said without a URL: configuration errors drop a URL's user and query.
    let fix = "use implicit TLS (scheme smtps://, port 465) or STARTTLS that must succeed \
               (smtp:// with ?tls=required, port 587)";
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "would send the SMTP password unencrypted to {host}, which is not loopback: {fix}"
        ));
    }
    let listed = plaintext_hosts.split(',').map(str::trim).any(|h| h.eq_ignore_ascii_case(host));
    if listed {
        return Ok(());
    }
    Err(format!(
        "mail (and its approval links) would go unencrypted to {host}, which is not loopback: \
         {fix}, or name a relay on a private network in {ENV_SMTP_PLAINTEXT_HOSTS}"
    ))
}

fn parse_recipients(raw: &str) -> Result<Vec<Mailbox>, String> {
    let list: Vec<Mailbox> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Mailbox>().map_err(|e| format!("{s:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err("no address".into());
    }
    Ok(list)
}

fn parse_events(raw: &str) -> Result<Vec<&'static str>, String> {
    let receivable = steward_events::Service::Notifier.consumes();
    let mut out = vec![];
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let known = receivable.iter().copied().find(|t| *t == name).ok_or_else(|| {
            format!("{name:?} is not an event the notifier receives ({})", receivable.join(", "))
        })?;
        out.push(known);
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<NotifierConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let cfg = NotifierConfig::read(&mut env);
        env.finish().map(|()| cfg).map_err(|e| e.to_string())
    }

    #[test]
    fn email_settings_are_read_and_the_password_never_shows() {
        let cfg = read(&[
            (ENV_SMTP_URL, "smtp://ops:hunter2@127.0.0.1:2525"),
            (ENV_MAIL_FROM, "Steward <steward@example.com>"),
            (ENV_MAIL_TO, "a@example.com, b@example.com"),
        ])
        .expect("valid");
        let email = cfg.email.as_ref().expect("email");
        assert_eq!(email.to.len(), 2);
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(!email.server.contains("hunter2"), "{}", email.server);
        assert_eq!(cfg.events, default_events());
    }

    fn mail(url: &str, extra: &[(&str, &str)]) -> Result<NotifierConfig, String> {
        let mut pairs = vec![
            (ENV_SMTP_URL, url),
            (ENV_MAIL_FROM, "s@example.com"),
            (ENV_MAIL_TO, "o@example.com"),
        ];
        pairs.extend_from_slice(extra);
        read(&pairs)
    }

    #[test]
    fn smtp_beyond_loopback_needs_tls_and_a_password_never_goes_in_clear() {
        for url in [
            "smtp://ops:hunter2@mail.example.com:587",
            "smtp://ops:hunter2@mail.example.com:587?tls=opportunistic",
            "smtp://ops:hunter2@10.0.0.5:25",
            "smtp://mail.example.com:25",
        ] {
            let e = mail(url, &[]).expect_err(url);
            assert!(e.contains(ENV_SMTP_URL) && e.contains("unencrypted"), "{url}: {e}");
            assert!(e.contains("tls=required"), "says how to fix it: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // A relay named as plain-text capable takes mail, but never a password.
        mail("smtp://smtp:2525", &[(ENV_SMTP_PLAINTEXT_HOSTS, "relay, smtp")])
            .expect("listed relay");
        let e = mail("smtp://ops:hunter2@smtp:2525", &[(ENV_SMTP_PLAINTEXT_HOSTS, "smtp")])
            .expect_err("password to a listed relay");
        assert!(e.contains("password unencrypted"), "{e}");
        for url in [
            "smtps://ops:hunter2@mail.example.com:465",
            "smtp://ops:hunter2@mail.example.com:587?tls=required",
            "smtp://ops:hunter2@127.0.0.1:2525",
            "smtp://localhost:25",
            "smtp://[::1]:25",
        ] {
            mail(url, &[]).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn quiet_hours_are_a_window_and_a_bad_one_is_named() {
        let cfg = mail("smtp://127.0.0.1:25", &[(ENV_QUIET, "22:00-07:00")]).expect("valid");
        let quiet = cfg.quiet.expect("quiet hours");
        let at = |h, m| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, 30)
                .and_then(|d| d.and_hms_opt(h, m, 0))
                .expect("a time")
        };
        assert!(quiet.contains(at(23, 30)) && quiet.contains(at(6, 59)));
        assert!(!quiet.contains(at(7, 0)) && !quiet.contains(at(12, 0)));
        assert!(mail("smtp://127.0.0.1:25", &[]).expect("valid").quiet.is_none());
        let e = mail("smtp://127.0.0.1:25", &[(ENV_QUIET, "late")]).expect_err("bad");
        assert!(e.contains(ENV_QUIET) && e.contains("HH:MM-HH:MM"), "{e}");
    }

    fn hook(pairs: &[(&str, &str)]) -> Result<WebhookConfig, String> {
        read(pairs).map(|c| c.webhook.expect("a webhook"))
    }

    #[test]
    fn webhook_formats_need_their_settings_and_never_show_a_secret() {
        let dir = std::env::temp_dir().join(format!("steward-hooktoken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "syt_sekrit\n").expect("write");
        let file = file.to_string_lossy().into_owned();
        let token_file = format!("{ENV_WEBHOOK_TOKEN}_FILE");

        let h = hook(&[(ENV_WEBHOOK_URL, "https://hooks.example.org/x")]).expect("default");
        assert_eq!(h.format, WebhookFormat::Steward);
        let m = hook(&[
            (ENV_WEBHOOK_URL, "https://matrix.example.org"),
            (ENV_WEBHOOK_FORMAT, "Matrix"),
            (&token_file, &file),
            (ENV_WEBHOOK_MATRIX_ROOM, "!abc:example.org"),
        ])
        .expect("matrix");
        assert_eq!(m.token.as_deref(), Some("syt_sekrit"), "from the file, newline trimmed");
        assert!(!format!("{m:?}").contains("syt_sekrit"));

        let e = read(&[
            (ENV_WEBHOOK_URL, "https://matrix.example.org"),
            (ENV_WEBHOOK_FORMAT, "matrix"),
        ])
        .expect_err("no token, no room");
        assert!(e.contains(ENV_WEBHOOK_TOKEN) && e.contains(ENV_WEBHOOK_MATRIX_ROOM), "{e}");
        let e = read(&[
            (ENV_WEBHOOK_URL, "https://matrix.example.org"),
            (ENV_WEBHOOK_FORMAT, "matrix"),
            (&token_file, &file),
            (ENV_WEBHOOK_MATRIX_ROOM, "#ops:example.org"),
        ])
        .expect_err("an alias");
        assert!(e.contains("room id"), "{e}");
        let e = read(&[
            (ENV_WEBHOOK_URL, "https://push.example.org/message?token=AbCdEf"),
            (ENV_WEBHOOK_FORMAT, "gotify"),
        ])
        .expect_err("token in the URL");
        assert!(e.contains("_FILE") && !e.contains("AbCdEf"), "{e}");
        let e = read(&[
            (ENV_WEBHOOK_URL, "https://hooks.slack.com/services/T0/B0/slacksecret"),
            (ENV_WEBHOOK_FORMAT, "slack"),
            (ENV_WEBHOOK_TOKEN, "x"),
        ])
        .expect_err("a token for Slack");
        assert!(e.contains("credential") && !e.contains("slacksecret"), "{e}");
        let e =
            read(&[(ENV_WEBHOOK_URL, "https://ntfy.example.org/"), (ENV_WEBHOOK_FORMAT, "ntfy")])
                .expect_err("no topic");
        assert!(e.contains("topic"), "{e}");
        let e = read(&[(ENV_WEBHOOK_URL, "https://x.example.org/"), (ENV_WEBHOOK_FORMAT, "teams")])
            .expect_err("unknown");
        assert!(e.contains("slack, matrix, ntfy, gotify"), "{e}");
        let e = read(&[
            (ENV_WEBHOOK_FORMAT, "ntfy"),
            (ENV_SMTP_URL, "smtp://127.0.0.1:25"),
            (ENV_MAIL_FROM, "a@b.c"),
            (ENV_MAIL_TO, "a@b.c"),
        ])
        .expect_err("format without URL");
        assert!(e.contains(ENV_WEBHOOK_FORMAT), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_channel_and_bad_values_are_named() {
        let e = read(&[]).expect_err("no channel");
        assert!(e.contains(ENV_SMTP_URL) && e.contains(ENV_WEBHOOK_URL), "{e}");

        let e =
            read(&[(ENV_SMTP_URL, "smtp://u:secretpw@host:25"), (ENV_MAIL_TO, "not an address")])
                .expect_err("bad");
        assert!(e.contains(ENV_MAIL_FROM) && e.contains(ENV_MAIL_TO), "{e}");
        assert!(!e.contains("secretpw"), "{e}");

        let e =
            read(&[(ENV_SMTP_URL, "ftp://host"), (ENV_MAIL_FROM, "a@b.c"), (ENV_MAIL_TO, "a@b.c")])
                .expect_err("bad scheme");
        assert!(e.contains(ENV_SMTP_URL), "{e}");

        let e = read(&[
            (ENV_WEBHOOK_URL, "http://127.0.0.1:1/hook"),
            (ENV_EVENTS, "update.pending,backup.done"),
        ])
        .expect_err("event not received");
        assert!(e.contains("backup.done"), "{e}");
    }
}
