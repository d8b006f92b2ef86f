//! Delivering a rendered [`Message`]: SMTP (lettre), and a webhook in one of the formats of
//! [`crate::webhook`] (Steward's JSON, Slack, Matrix, ntfy, Gotify).

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::EmailConfig;
use crate::message::Message;
use crate::outbox::ChannelKind;
use crate::webhook::{Body, WebhookConfig};

/// A configured channel.
#[derive(Debug, Clone)]
pub enum Channel {
    /// Mail over SMTP.
    Email {
        /// Settings.
        cfg: Box<EmailConfig>,
        /// The transport (pooled connections).
        transport: AsyncSmtpTransport<Tokio1Executor>,
    },
    /// An HTTP request per message, in the configured format.
    Webhook {
        /// Where and how.
        hook: Arc<WebhookConfig>,
        /// Client with timeouts.
        http: reqwest::Client,
    },
}

impl Channel {
    /// A mail channel; must be called inside the Tokio runtime.
    pub fn email(cfg: EmailConfig) -> Self {
        let transport = cfg.smtp.clone().build();
        Self::Email { cfg: Box::new(cfg), transport }
    }

    /// A webhook channel.
    pub fn webhook(hook: WebhookConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            // A redirect would carry the token elsewhere (and Slack's and ntfy's URLs are
            // secrets): a webhook answers where it was configured, or fails.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self::Webhook { hook: Arc::new(hook), http })
    }

    /// Which kind.
    pub fn kind(&self) -> ChannelKind {
        match self {
            Channel::Email { .. } => ChannelKind::Email,
            Channel::Webhook { .. } => ChannelKind::Webhook,
        }
    }

    /// Recipients as shown in `notify.sent`: addresses, or the webhook's host.
    pub fn recipients(&self) -> Vec<String> {
        match self {
            Channel::Email { cfg, .. } => cfg.to.iter().map(|m| m.email.to_string()).collect(),
            Channel::Webhook { hook, .. } => vec![hook.shown()],
        }
    }

    /// Delivers `m`; `message_id` is stable for a batch, so a resend after a crash between
    /// "accepted" and "recorded" is recognisable as the same message by mail clients.
    pub async fn deliver(&self, m: &Message, message_id: &str) -> Result<(), String> {
        match self {
            Channel::Email { cfg, transport } => send_mail(cfg, transport, m, message_id).await,
            Channel::Webhook { hook, http } => send_hook(hook, http, m, message_id).await,
        }
    }
}

/// Sends `m` on every channel at once, outside the outbox (what the bus cannot carry: the NATS
/// notice, Alertmanager's alerts), logging each outcome as `what`; whether one took it.
pub async fn tell_all(channels: &[Channel], m: &Message, message_id: &str, what: &str) -> bool {
    let mut any = false;
    for channel in channels {
        match channel.deliver(m, message_id).await {
            Ok(()) => {
                tracing::info!(channel = channel.kind().as_str(), subject = %m.subject, "{what} told");
                any = true;
            }
            Err(e) => {
                tracing::warn!(channel = channel.kind().as_str(), error = %e, "cannot tell the {what}")
            }
        }
    }
    any
}

/// Sends `m` as `hook`'s format wants it. Every error is scrubbed of the token and of secret
/// URL parts (the client's own error text is taken without its URL).
async fn send_hook(
    hook: &WebhookConfig,
    http: &reqwest::Client,
    m: &Message,
    message_id: &str,
) -> Result<(), String> {
    let p = hook.prepare(m, message_id).map_err(|e| hook.scrub(&e))?;
    let what = format!("{} {} ({})", p.method, hook.shown(), hook.format.as_str());
    let mut request = http.request(p.method, p.url);
    for (name, value) in p.headers {
        request = request.header(name, value);
    }
    request = match p.body {
        Body::Json(v) => request.json(&v),
        Body::Text(t) => {
            request.header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8").body(t)
        }
    };
    let r =
        request.send().await.map_err(|e| hook.scrub(&format!("{what}: {}", e.without_url())))?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    // The service's own words help (Matrix: `M_UNKNOWN_TOKEN`, Gotify: "invalid token"), cut
    // short and scrubbed like everything else.
    let body = r.text().await.unwrap_or_default();
    let said: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    Err(hook.scrub(&format!("{what} answered {status}: {said}")))
}

async fn send_mail(
    e: &EmailConfig,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    m: &Message,
    message_id: &str,
) -> Result<(), String> {
    let mut builder = lettre::Message::builder()
        .from(e.from.clone())
        .subject(&m.subject)
        .message_id(Some(message_id.to_owned()));
    for to in &e.to {
        builder = builder.to(to.clone());
    }
    let mail = builder
        .multipart(
            MultiPart::alternative()
                .singlepart(SinglePart::plain(m.text.clone()))
                .singlepart(SinglePart::html(m.html.clone())),
        )
        .map_err(|err| format!("cannot build the mail: {err}"))?;
    transport.send(mail).await.map(|_| ()).map_err(|err| format!("SMTP {}: {err}", e.server))
}
