//! Signed approval links: `PUBLIC_URL/approve/TOKEN` (an image update, the updater's) or
//! `PUBLIC_URL/deploy/approve/TOKEN` (a deployment, the deployer's), where the token names the
//! pending change and an expiry time, signed with HMAC-SHA256 under the service's secret.
//!
//! Invariants: a token is accepted only with a valid signature (checked in constant time)
//! and before its expiry; the signature is checked first, so a forged token learns nothing
//! about expiry. The kind ([`LinkKind`]) is part of what is signed, so a token minted for an
//! update never decides on a deployment (or back), even when both services were given the
//! same secret. Single use is the page's and the flow's to enforce, not the token's.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

pub use steward_bus::approval::LinkKind;

/// Shortest accepted secret, in bytes: an HMAC-SHA256 key shorter than its output is weak.
pub const MIN_SECRET_LEN: usize = 32;

/// Longest accepted validity of a link: a leaked link approves for at most this long.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest accepted validity: a link must outlive the mail that carries it.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token at all, or a signature that does not match.
    #[error("this link is not valid: it was not issued by this Steward, or it was altered")]
    Forged,
    /// Genuine, but too old.
    #[error("this link expired at {0}")]
    Expired(OffsetDateTime),
}

/// Mints and checks approval links of one kind.
#[derive(Clone)]
pub struct ApprovalLinks {
    kind: LinkKind,
    base: String,
    secret: Vec<u8>,
    ttl: Duration,
    /// How long before a link's expiry a still pending update is mailed again (zero: never).
    remind_before: Duration,
}

/// The default of [`ApprovalLinks::with_reminder`]: a day before the link expires.
pub const DEFAULT_REMIND_BEFORE: Duration = Duration::from_secs(24 * 3600);

impl std::fmt::Debug for ApprovalLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret mints approvals: never print it.
        f.debug_struct("ApprovalLinks")
            .field("kind", &self.kind)
            .field("base", &self.base)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ApprovalLinks {
    /// Links of `kind` under `public_url` (no trailing slash needed), signed with `secret`,
    /// valid `ttl`.
    pub fn new(kind: LinkKind, public_url: &str, secret: &[u8], ttl: Duration) -> Self {
        Self {
            kind,
            base: public_url.trim_end_matches('/').to_owned(),
            secret: secret.to_vec(),
            ttl,
            remind_before: DEFAULT_REMIND_BEFORE,
        }
    }

    /// Reminds `before` a link expires (zero: never).
    pub fn with_reminder(mut self, before: Duration) -> Self {
        self.remind_before = before;
        self
    }

    /// Whether an update pending since `since`, its link expiring at `expires`, is due for
    /// its reminder at `now`: within the reminder's bound of the expiry, not expired, and past
    /// half the link's life (with a link shorter than the bound, the first mail is still
    /// fresh at its start).
    pub fn reminder_due(
        &self,
        since: OffsetDateTime,
        expires: OffsetDateTime,
        now: OffsetDateTime,
    ) -> bool {
        let before = time::Duration::try_from(self.remind_before).unwrap_or(time::Duration::MAX);
        if before.is_zero() || now >= expires {
            return false;
        }
        let halfway = since + (expires - since) / 2;
        expires - now <= before && now >= halfway
    }

    /// What these links decide on.
    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    fn mac(&self, id: Uuid, expires: i64) -> Hmac<Sha256> {
        // `new_from_slice` accepts keys of any length for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // The kind is signed. An update's message keeps the form it had before deployments
        // had links (links already mailed stay good across the upgrade); it cannot be mistaken
        // for a deployment's, whose second field is the word `deploy`, never a UUID.
        let message = match self.kind {
            LinkKind::Update => format!("steward-approval-v1:{id}:{expires}"),
            LinkKind::Deploy => format!("steward-approval-v1:deploy:{id}:{expires}"),
        };
        mac.update(message.as_bytes());
        mac
    }

    /// A link for `update_id`, and when it expires.
    pub fn mint(&self, update_id: Uuid, now: OffsetDateTime) -> (String, OffsetDateTime) {
        let expires = self.expiry(now);
        (self.link_for(update_id, expires), expires)
    }

    /// When a link minted at `now` expires (to the second: what the token carries).
    pub fn expiry(&self, now: OffsetDateTime) -> OffsetDateTime {
        // Checked: the TTL is bounded by the configuration, `now` is the caller's.
        let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::MAX);
        let expires = now.saturating_add(ttl);
        expires.replace_nanosecond(0).unwrap_or(expires)
    }

    /// The link for `update_id` expiring at `expires`: the same link every time, so it is
    /// minted again on request instead of being stored anywhere.
    pub fn link_for(&self, update_id: Uuid, expires: OffsetDateTime) -> String {
        let ts = expires.unix_timestamp();
        let sig = URL_SAFE_NO_PAD.encode(self.mac(update_id, ts).finalize().into_bytes());
        let path = match self.kind {
            LinkKind::Update => "approve",
            LinkKind::Deploy => "deploy/approve",
        };
        format!("{}/{path}/{}.{ts}.{sig}", self.base, update_id.simple())
    }

    /// The update a token approves, if it is genuine and not expired at `now`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Uuid, LinkError> {
        let parts = Parts::parse(token).ok_or(LinkError::Forged)?;
        self.mac(parts.update_id, parts.expires)
            .verify_slice(&parts.signature)
            .map_err(|_| LinkError::Forged)?;
        let expires =
            OffsetDateTime::from_unix_timestamp(parts.expires).map_err(|_| LinkError::Forged)?;
        if expires <= now {
            return Err(LinkError::Expired(expires));
        }
        Ok(parts.update_id)
    }
}

/// A token taken apart: `<update id>.<expiry, unix seconds>.<signature, base64url>`.
struct Parts {
    update_id: Uuid,
    expires: i64,
    signature: Vec<u8>,
}

impl Parts {
    fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (Some(id), Some(ts), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Self {
            update_id: Uuid::try_parse(id).ok()?,
            expires: ts.parse().ok()?,
            signature: URL_SAFE_NO_PAD.decode(sig).ok()?,
        })
    }
}

/// When a token says it expires (for display; only [`ApprovalLinks::verify`] vouches for it).
pub fn expiry_of(token: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(Parts::parse(token)?.expires).ok()
}

/// The token part of a link (what follows `/approve/`, of either kind).
pub fn token_of(url: &str) -> Option<&str> {
    url.rsplit_once("/approve/").map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reminder_is_due_near_the_expiry_past_half_the_links_life_and_never_after() {
        let links = ApprovalLinks::new(
            LinkKind::Update,
            "https://s.test",
            &[1u8; 32],
            Duration::from_secs(72 * 3600),
        );
        let t0 = time::macros::datetime!(2026-11-30 00:00 UTC);
        let expires = t0 + time::Duration::hours(72);
        let at = |h: i64| t0 + time::Duration::hours(h);
        assert!(!links.reminder_due(t0, expires, at(47)), "more than a day left");
        assert!(links.reminder_due(t0, expires, at(48)));
        assert!(links.reminder_due(t0, expires, at(71)));
        assert!(!links.reminder_due(t0, expires, at(72)), "expired");
        // A link shorter than the bound: at half its life, not at once.
        let short = t0 + time::Duration::hours(2);
        assert!(!links.reminder_due(t0, short, t0 + time::Duration::minutes(59)));
        assert!(links.reminder_due(t0, short, t0 + time::Duration::minutes(60)));
        let never = links.with_reminder(Duration::ZERO);
        assert!(!never.reminder_due(t0, expires, at(71)));
    }

    fn links() -> ApprovalLinks {
        ApprovalLinks::new(
            LinkKind::Update,
            "https://git.example.com/steward/",
            &[7u8; 32],
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_minted_link_verifies_until_it_expires() {
        let l = links();
        let id = Uuid::now_v7();
        let now = OffsetDateTime::now_utc();
        let (url, expires) = l.mint(id, now);
        assert!(url.starts_with("https://git.example.com/steward/approve/"), "{url}");
        let token = token_of(&url).expect("token");
        assert_eq!(l.verify(token, now), Ok(id));
        assert_eq!(
            l.verify(token, now + Duration::from_secs(3601)),
            Err(LinkError::Expired(expires.replace_nanosecond(0).expect("ns")))
        );
    }

    #[test]
    fn altered_or_foreign_tokens_are_forged() {
        let l = links();
        let now = OffsetDateTime::now_utc();
        let (url, _) = l.mint(Uuid::now_v7(), now);
        let token = token_of(&url).expect("token");
        // Another update id, a later expiry, another key, garbage: all refused as forged.
        let (id, rest) = token.split_once('.').expect("id");
        let other_id = format!("{}.{rest}", Uuid::now_v7().simple());
        assert_eq!(l.verify(&other_id, now), Err(LinkError::Forged));
        let (head, sig) = token.rsplit_once('.').expect("sig");
        let (_, ts) = head.split_once('.').expect("ts");
        let later = format!("{id}.{}.{sig}", ts.parse::<i64>().expect("ts") + 86400);
        assert_eq!(l.verify(&later, now), Err(LinkError::Forged));
        let other_key = ApprovalLinks::new(
            LinkKind::Update,
            "https://x",
            &[8u8; 32],
            Duration::from_secs(3600),
        );
        assert_eq!(other_key.verify(token, now), Err(LinkError::Forged));
        for junk in ["", "a.b.c", "x", &format!("{token}.extra")] {
            assert_eq!(l.verify(junk, now), Err(LinkError::Forged), "{junk}");
        }
        // An expired forgery is still reported as forged, not expired.
        assert_eq!(l.verify(&later, now + Duration::from_secs(10 * 86400)), Err(LinkError::Forged));
    }

    #[test]
    fn a_token_of_one_kind_never_decides_on_the_other() {
        let now = OffsetDateTime::now_utc();
        let id = Uuid::now_v7();
        let update = links();
        let deploy = ApprovalLinks::new(
            LinkKind::Deploy,
            "https://git.example.com/steward-deploy",
            &[7u8; 32],
            Duration::from_secs(3600),
        );
        let (url, _) = deploy.mint(id, now);
        assert!(url.starts_with("https://git.example.com/steward-deploy/deploy/approve/"), "{url}");
        let token = token_of(&url).expect("token");
        assert_eq!(deploy.verify(token, now), Ok(id));
        // The same key, the same id and expiry: still refused by the other kind.
        assert_eq!(update.verify(token, now), Err(LinkError::Forged));
        let (url, _) = update.mint(id, now);
        assert_eq!(deploy.verify(token_of(&url).expect("token"), now), Err(LinkError::Forged));
    }
}
