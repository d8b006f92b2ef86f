//! Reading configuration from environment variables, with `NAME_FILE` secrets.
//!
//! Every variable is read and checked before a service starts; all problems are collected and
//! reported together on one line, each naming its variable, so a bad deployment fails at once
//! and says what to fix.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// [`Env::ack_wait`]'s default.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// [`Env::max_deliver`]'s default.
pub const DEFAULT_MAX_DELIVER: i64 = 5;

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

    /// Sets `name` as if the environment had it, over `name` and `name_FILE` (a command-line
    /// flag: it is then read and checked as the variable is).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars.remove(&format!("{name}_FILE"));
        self.vars.insert(name.to_owned(), value.into());
    }

    /// A cron expression (host time zone; `L` and `#` supported) with a default.
    ///
    /// `default` is a constant of the caller's; one that does not parse is a bug, caught by
    /// the caller's tests.
    pub fn cron(&mut self, name: &str, default: &'static str) -> croner::Cron {
        let parsed = self.parse_with(name, None, |s| {
            // Five fields as cron has them, or six with seconds first (a schedule a test can
            // wait for).
            croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build()
                .parse(s)
                .map(Some)
                .map_err(|e| format!("not a cron expression: {e}"))
        });
        // A bad value was reported above; the default keeps the snapshot usable meanwhile.
        parsed.unwrap_or_else(|| {
            croner::Cron::from_str(default)
                .unwrap_or_else(|e| panic!("the default of {name}, {default:?}, is no cron: {e}"))
        })
    }

    /// [`ENV_SCOPE`](crate::ENV_SCOPE): the installation's scope; unset or empty is `None`
    /// (the installation owning the containers without a `steward.scope` label).
    pub fn scope(&mut self) -> Option<String> {
        self.optional(crate::ENV_SCOPE).filter(|s| !s.is_empty())
    }

    /// [`ENV_HOST`](crate::ENV_HOST) as set (an agent's host, or the CLI's `--host`), checked
    /// by [`steward_events::check_host`]; `None` when unset, so the agent takes its default
    /// (the engine's name). A bad value is an error naming the rule.
    pub fn host(&mut self) -> Option<String> {
        let name = crate::ENV_HOST;
        let raw = self.optional(name)?;
        match steward_events::check_host(raw.trim()) {
            Ok(()) => Some(raw.trim().to_owned()),
            Err(rule) => {
                self.error(name, &raw, rule);
                None
            }
        }
    }

    /// [`ENV_HOSTS`](crate::ENV_HOSTS): the routing table's hosts, checked by
    /// [`steward_events::check_hosts`]; empty when unset (no host routing).
    pub fn hosts(&mut self) -> Vec<String> {
        let name = crate::ENV_HOSTS;
        let Some(raw) = self.optional(name) else { return vec![] };
        match steward_events::check_hosts(&raw) {
            Ok(hosts) => hosts,
            Err(reason) => {
                self.error(name, &raw, reason);
                vec![]
            }
        }
    }

    /// [`ENV_ACK_WAIT`](crate::ENV_ACK_WAIT): redelivery timeout of an unacknowledged event,
    /// at least 1s.
    pub fn ack_wait(&mut self) -> Duration {
        let name = crate::ENV_ACK_WAIT;
        let ack_wait = self.duration(name, DEFAULT_ACK_WAIT);
        if ack_wait < Duration::from_secs(1) {
            self.error(name, &format!("{ack_wait:?}"), "must be at least 1s");
        }
        ack_wait
    }

    /// [`ENV_MAX_DELIVER`](crate::ENV_MAX_DELIVER): deliveries before an event is
    /// dead-lettered, 1 to 1000.
    pub fn max_deliver(&mut self) -> i64 {
        self.parse_with(crate::ENV_MAX_DELIVER, DEFAULT_MAX_DELIVER, |s| match s.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err("a whole number from 1 to 1000".into()),
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

    fn error_of(env: Env) -> String {
        env.finish().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_host_is_a_token_or_a_clear_error() {
        assert_eq!(Env::from_pairs([("STEWARD_HOST", " vps-1 ")]).host().as_deref(), Some("vps-1"));
        assert_eq!(Env::from_pairs([("OTHER", "x")]).host(), None);
        for bad in ["vps.1", "VPS1", "a>", ""] {
            let mut env = Env::from_pairs([("STEWARD_HOST", bad)]);
            assert_eq!(env.host(), None);
            let line = error_of(env);
            assert!(line.contains("STEWARD_HOST=") && line.contains("a-z, 0-9"), "{bad}: {line}");
        }
    }

    #[test]
    fn cron_reads_good_values_keeps_the_default_and_names_a_bad_one() {
        let next = |c: &croner::Cron| c.as_str().to_owned();
        let mut env = Env::from_pairs([("S", " 0 4 * * 1 ")]);
        assert_eq!(next(&env.cron("S", "0 3 * * 0")), "0 4 * * 1");
        assert_eq!(next(&env.cron("UNSET", "0 3 * * 0")), "0 3 * * 0");
        assert!(env.finish().is_ok());
        let mut env = Env::from_pairs([("S", "30 0 4 * * 1")]);
        assert_eq!(next(&env.cron("S", "0 3 * * 0")), "30 0 4 * * 1");
        assert!(env.finish().is_ok());
        for bad in ["every day", "61 * * * *", ""] {
            let mut env = Env::from_pairs([("S", bad)]);
            assert_eq!(next(&env.cron("S", "0 3 * * 0")), "0 3 * * 0", "{bad}");
            let line = error_of(env);
            assert!(line.contains(&format!("S={bad:?}: not a cron expression")), "{line}");
        }
    }

    #[test]
    fn scope_is_the_variable_or_none() {
        let mut env = Env::from_pairs([(crate::ENV_SCOPE, "site1")]);
        assert_eq!(env.scope().as_deref(), Some("site1"));
        for pairs in [vec![], vec![(crate::ENV_SCOPE, "")]] {
            let mut env = Env::from_pairs(pairs);
            assert_eq!(env.scope(), None);
            assert!(env.finish().is_ok());
        }
    }

    #[test]
    fn delivery_settings_are_bounded_and_named() {
        let mut env = Env::from_pairs(Vec::<(String, String)>::new());
        assert_eq!((env.ack_wait(), env.max_deliver()), (DEFAULT_ACK_WAIT, DEFAULT_MAX_DELIVER));
        let mut env =
            Env::from_pairs([(crate::ENV_ACK_WAIT, "2m"), (crate::ENV_MAX_DELIVER, "1000")]);
        assert_eq!((env.ack_wait(), env.max_deliver()), (Duration::from_secs(120), 1000));
        assert!(env.finish().is_ok());
        for (ack, max) in [("0s", "0"), ("500ms", "1001"), ("soon", "x")] {
            let mut env =
                Env::from_pairs([(crate::ENV_ACK_WAIT, ack), (crate::ENV_MAX_DELIVER, max)]);
            let _ = (env.ack_wait(), env.max_deliver());
            let line = error_of(env);
            for name in [crate::ENV_ACK_WAIT, crate::ENV_MAX_DELIVER] {
                assert!(line.contains(&format!("{name}=")), "{ack} {max}: {line}");
            }
        }
    }

    #[test]
    fn a_set_value_wins_over_the_variable_and_its_file() {
        let mut env = Env::from_pairs([("U", "a"), ("V_FILE", "/nonexistent")]);
        env.set("U", "b");
        env.set("V", "c");
        assert_eq!((env.optional("U"), env.optional("V")), (Some("b".into()), Some("c".into())));
        assert!(env.finish().is_ok());
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
