//! Reading configuration from environment variables, with `NAME_FILE` secrets.
//!
//! Every variable is read and checked before a service starts; all problems are collected and
//! reported together on one line, each naming its variable, so a bad deployment fails at once
//! and says what to fix.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// Bad configuration: one entry per offending variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// A snapshot of the environment that collects errors while values are read.
#[derive(Debug)]
pub struct Env {
    vars: HashMap<String, String>,
    errors: Vec<String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// An explicit environment (tests).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            errors: vec![],
        }
    }

    /// Records a problem with `name`. Credentials of any URL in `value` or `reason` are
    /// redacted ([`steward_events::redact_urls_in`]): a configuration error never shows them.
    pub fn error(&mut self, name: &str, value: &str, reason: impl Display) {
        let value = steward_events::redact_urls_in(value);
        let reason = steward_events::redact_urls_in(&reason.to_string());
        self.errors.push(format!("{name}={value:?}: {reason}"));
    }

    /// The raw value of `name`, or of the file named by `name_FILE` (trailing newline trimmed).
    pub fn optional(&mut self, name: &str) -> Option<String> {
        let file_var = format!("{name}_FILE");
        match (self.vars.get(name).cloned(), self.vars.get(&file_var).cloned()) {
            (Some(_), Some(path)) => {
                self.error(&file_var, &path, format!("set together with {name}; set only one"));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_owned()),
                Err(e) => {
                    self.error(&file_var, &path, format!("cannot read file: {e}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// A required value; missing → an error naming the variable.
    pub fn required(&mut self, name: &str) -> String {
        match self.optional(name) {
            Some(v) if !v.is_empty() => v,
            _ => {
                self.errors.push(format!("{name} is required but not set"));
                String::new()
            }
        }
    }

    /// A string with a default.
    pub fn string(&mut self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// A parsed value with a default; an unparsable value is an error naming the variable.
    pub fn parse<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        self.parse_with(name, default, |s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    /// A value parsed by `parse`, with a default.
    pub fn parse_with<T>(
        &mut self,
        name: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.optional(name) {
            None => default,
            Some(raw) => match parse(raw.trim()) {
                Ok(v) => v,
                Err(reason) => {
                    self.error(name, &raw, reason);
                    default
                }
            },
        }
    }

    /// A duration such as `30s`, `5m`, `365d`.
    pub fn duration(&mut self, name: &str, default: Duration) -> Duration {
        self.parse_with(name, default, |s| {
            humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 7d)"))
        })
    }

    /// One of a fixed set of words.
    pub fn choice(
        &mut self,
        name: &str,
        default: &'static str,
        allowed: &[&'static str],
    ) -> &'static str {
        self.parse_with(name, default, |s| {
            allowed
                .iter()
                .copied()
                .find(|a| a.eq_ignore_ascii_case(s))
                .ok_or_else(|| format!("expected one of: {}", allowed.join(", ")))
        })
    }

    /// Whether a problem was recorded so far (to skip checks that would only repeat it).
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Ends reading: all errors, or nothing.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }
}

/// Whether `host` (a URL's host: a name, an IPv4 address or a bracketed IPv6 address) is this
/// machine's loopback: `localhost`, `127.0.0.0/8` or `::1`. Traffic to it never leaves the
/// host, so it may go unencrypted; traffic to any other host may not.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_bad_variable_on_one_line() {
        let mut env = Env::from_pairs([("A", "x"), ("B", "10q"), ("C", "7")]);
        let _: u16 = env.parse("A", 1);
        let _ = env.duration("B", Duration::ZERO);
        assert_eq!(env.parse::<u16>("C", 1), 7);
        let _ = env.required("D");
        let err = env.finish().expect_err("three errors");
        let line = err.to_string();
        assert!(!line.contains('\n'));
        for name in ["A=\"x\"", "B=\"10q\"", "D is required"] {
            assert!(line.contains(name), "{line}");
        }
    }

    #[test]
    fn loopback_is_localhost_127_and_ipv6_one_only() {
        for host in ["localhost", "LOCALHOST.", "127.0.0.1", "127.1.2.3", "[::1]", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "0.0.0.0", "[::]", "localhost.example.com", "smtp"]
        {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn url_credentials_never_reach_the_error_line() {
        let mut env = Env::from_pairs([("U", "nats://steward:hunter2@bad host:4222")]);
        env.parse_with("U", (), |s| Err(format!("{s:?} is not a URL")));
        env.error("W", "https://h/hook?token=hunter3", "answered 500 for https://u:hunter4@h/");
        let line = env.finish().expect_err("errors").to_string();
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!line.contains(secret), "{secret} leaked: {line}");
        }
        assert!(line.contains("U=\"nats://***@bad host:4222\""), "{line}");
    }

    #[test]
    fn file_variant_reads_secret_and_conflicts_are_errors() {
        let dir = std::env::temp_dir().join(format!("steward-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cr3t\n").expect("write");
        let path = secret.to_string_lossy().to_string();
        let mut env = Env::from_pairs([("TOKEN_FILE", path.as_str())]);
        assert_eq!(env.optional("TOKEN").as_deref(), Some("s3cr3t"));
        assert!(env.finish().is_ok());

        let mut env =
            Env::from_pairs([("TOKEN_FILE", "/nonexistent/x"), ("BOTH", "1"), ("BOTH_FILE", "/x")]);
        assert_eq!(env.optional("TOKEN"), None);
        assert_eq!(env.optional("BOTH"), None);
        let line = env.finish().expect_err("errors").to_string();
        assert!(line.contains("TOKEN_FILE") && line.contains("BOTH_FILE"), "{line}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
