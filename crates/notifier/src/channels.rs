//! Delivering a rendered [`Message`]: SMTP (lettre) and a generic JSON webhook.

use std::time::Duration;

use lettre::message::{MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use steward_events::redact_url;

use crate::config::EmailConfig;
use crate::message::Message;
use crate::outbox::ChannelKind;

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
    /// JSON POST.
    Webhook {
        /// Where.
        url: reqwest::Url,
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

    /// A webhook channel posting to `url`.
    pub fn webhook(url: reqwest::Url) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self::Webhook { url, http })
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
            Channel::Webhook { url, .. } => vec![redact_url(url.as_str())],
        }
    }

    /// Delivers `m`; `message_id` is stable for a batch, so a resend after a crash between
    /// "accepted" and "recorded" is recognisable as the same message by mail clients.
    pub async fn deliver(&self, m: &Message, message_id: &str) -> Result<(), String> {
        match self {
            Channel::Email { cfg, transport } => send_mail(cfg, transport, m, message_id).await,
            Channel::Webhook { url, http } => {
                let body = serde_json::json!({
                    "title": m.subject,
                    "text": m.text,
                    "items": m.items,
                    "message_id": message_id,
                });
                let r = http.post(url.clone()).json(&body).send().await.map_err(|e| {
                    format!("POST {}: {}", redact_url(url.as_str()), e.without_url())
                })?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("POST {} answered {}", redact_url(url.as_str()), r.status()))
                }
            }
        }
    }
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
