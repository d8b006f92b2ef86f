//! The heartbeat: an HTTP GET to an off-host monitor (healthchecks.io, Uptime Kuma's push
//! monitor, cronitor) after each verified backup, so a dead host, a dead service or a stopped
//! schedule is noticed by the silence, which nothing on the host can report.
//!
//! Invariant: the URL is never logged or put into an event whole (such URLs are credentials);
//! only its origin is shown. A failed ping is logged and counted, never a failed backup.

use std::time::Duration;

use steward_runtime::Env;

/// The monitor's URL (`_FILE` variant: the URL is usually a credential).
pub const ENV_HEARTBEAT_URL: &str = "STEWARD_BACKUP_HEARTBEAT_URL";

/// How long one ping may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per ping (a monitor's brief hiccup must not read as a dead host).
const ATTEMPTS: u32 = 3;

/// Where to ping.
#[derive(Clone)]
pub struct Heartbeat {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat").field("origin", &self.origin()).finish_non_exhaustive()
    }
}

impl Heartbeat {
    /// Reads [`ENV_HEARTBEAT_URL`]; `None` when unset; errors go to `env` (never quoting the
    /// URL whole).
    pub fn read(env: &mut Env) -> Option<Self> {
        let raw = env.optional(ENV_HEARTBEAT_URL).filter(|s| !s.trim().is_empty())?;
        let url = match reqwest::Url::parse(raw.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(u) => {
                let shown = format!("{}://…", u.scheme());
                env.error(ENV_HEARTBEAT_URL, &shown, "expected an http(s) URL");
                return None;
            }
            Err(e) => {
                env.error(ENV_HEARTBEAT_URL, "(not shown)", e);
                return None;
            }
        };
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                env.error(ENV_HEARTBEAT_URL, "(not shown)", format!("no HTTP client: {e}"));
                return None;
            }
        };
        Some(Self { url, client })
    }

    /// The URL's origin, what logs show of it.
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    /// Pings; the error says why the last attempt failed.
    pub async fn ping(&self) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.client.get(self.url.clone()).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("{} answered {}", self.origin(), r.status()),
                // reqwest's error names the URL: only its kind is kept.
                Err(e) => {
                    last = format!(
                        "{}: {}",
                        self.origin(),
                        if e.is_timeout() { "timed out" } else { "no answer" }
                    )
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &str) -> (Option<Heartbeat>, String) {
        let mut env = Env::from_pairs([(ENV_HEARTBEAT_URL, value)]);
        let heartbeat = Heartbeat::read(&mut env);
        let errors = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        (heartbeat, errors)
    }

    #[test]
    fn only_http_urls_are_taken_and_never_shown_whole() {
        let (ok, errors) = read("https://hc-ping.com/0f1e2d3c-secret");
        assert!(errors.is_empty(), "{errors}");
        let ok = ok.unwrap_or_else(|| unreachable!());
        assert_eq!(ok.origin(), "https://hc-ping.com");
        assert!(!format!("{ok:?}").contains("secret"));
        for bad in ["ftp://host/secret", "not a url secret", "file:///etc/secret"] {
            let (none, errors) = read(bad);
            assert!(none.is_none(), "{bad}");
            assert!(errors.contains(ENV_HEARTBEAT_URL) && !errors.contains("secret"), "{errors}");
        }
        assert!(read("").0.is_none() && read("").1.is_empty(), "empty is unset");
    }
}
