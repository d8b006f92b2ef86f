//! Where backups are stored: the bucket settings both the backup service and `steward backup
//! list` read, under the same variable names.

use steward_settings::Env;

/// The bucket backups go to.
pub const ENV_BUCKET: &str = "STEWARD_S3_BUCKET";
/// Key prefix inside the bucket (e.g. `gitea/`).
pub const ENV_PREFIX: &str = "STEWARD_S3_PREFIX";
/// Endpoint of an S3-compatible store; unset for AWS.
pub const ENV_ENDPOINT: &str = "STEWARD_S3_ENDPOINT";

/// Where backups are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// Endpoint of an S3-compatible store (path-style addressing); `None` for AWS.
    pub endpoint: Option<String>,
}

impl S3Config {
    /// Reads [`ENV_BUCKET`] (required, S3's naming rules), [`ENV_PREFIX`] and
    /// [`ENV_ENDPOINT`] (`http(s)://`); errors go to `env`. The backup service and `steward
    /// backup list` both read the bucket here.
    pub fn read(env: &mut Env) -> Self {
        let bucket = env.required(ENV_BUCKET);
        if !bucket.is_empty() {
            if let Err(reason) = validate_bucket(&bucket) {
                env.error(ENV_BUCKET, &bucket, reason);
            }
        }
        let prefix = normalise_prefix(&env.string(ENV_PREFIX, ""));
        let endpoint = env.optional(ENV_ENDPOINT).filter(|s| !s.is_empty());
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                let shown = steward_events::redact_url(endpoint);
                env.error(ENV_ENDPOINT, &shown, "expected an http:// or https:// URL");
            }
        }
        Self { bucket, prefix, endpoint }
    }
}

/// The second copy's bucket (3-2-1); unset: no copy.
pub const ENV_COPY_BUCKET: &str = "STEWARD_BACKUP_COPY_BUCKET";
/// Key prefix inside the copy's bucket.
pub const ENV_COPY_PREFIX: &str = "STEWARD_BACKUP_COPY_PREFIX";
/// Endpoint of the copy's S3-compatible store; unset for AWS.
pub const ENV_COPY_ENDPOINT: &str = "STEWARD_BACKUP_COPY_ENDPOINT";
/// The copy's access key id (best as `STEWARD_BACKUP_COPY_ACCESS_KEY_ID_FILE`); with the
/// secret key, or neither (then the standard AWS chain, as for the primary).
pub const ENV_COPY_ACCESS_KEY: &str = "STEWARD_BACKUP_COPY_ACCESS_KEY_ID";
/// The copy's secret access key (best as `STEWARD_BACKUP_COPY_SECRET_ACCESS_KEY_FILE`).
pub const ENV_COPY_SECRET_KEY: &str = "STEWARD_BACKUP_COPY_SECRET_ACCESS_KEY";

/// The second copy of every backup: another bucket, usually on another provider, with its
/// own credentials (a leaked primary key must not reach the copy).
#[derive(Clone, PartialEq, Eq)]
pub struct CopyConfig {
    /// Its bucket, prefix and endpoint.
    pub s3: S3Config,
    /// Access key id and secret key; `None`: the standard AWS chain.
    pub credentials: Option<(String, String)>,
}

// By hand: the secret key never reaches a log line.
impl std::fmt::Debug for CopyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyConfig")
            .field("s3", &self.s3)
            .field("access_key", &self.credentials.as_ref().map(|(id, _)| id))
            .finish()
    }
}

impl CopyConfig {
    /// Reads the `STEWARD_BACKUP_COPY_*` settings: `None` without [`ENV_COPY_BUCKET`]
    /// (nothing else may be set then); errors go to `env`, naming the variable.
    pub fn read(env: &mut Env) -> Option<Self> {
        let bucket = env.optional(ENV_COPY_BUCKET).filter(|s| !s.is_empty());
        let prefix = normalise_prefix(&env.string(ENV_COPY_PREFIX, ""));
        let endpoint = env.optional(ENV_COPY_ENDPOINT).filter(|s| !s.is_empty());
        let access = env.optional(ENV_COPY_ACCESS_KEY).filter(|s| !s.is_empty());
        let secret = env.optional(ENV_COPY_SECRET_KEY).filter(|s| !s.is_empty());
        let Some(bucket) = bucket else {
            // A half-configured copy is an error, not a silent single copy.
            for (name, set) in [
                (ENV_COPY_ENDPOINT, endpoint.is_some()),
                (ENV_COPY_ACCESS_KEY, access.is_some()),
                (ENV_COPY_SECRET_KEY, secret.is_some()),
            ] {
                if set {
                    env.error(
                        name,
                        "(set)",
                        "the copy has no bucket: set STEWARD_BACKUP_COPY_BUCKET too",
                    );
                }
            }
            return None;
        };
        if let Err(reason) = validate_bucket(&bucket) {
            env.error(ENV_COPY_BUCKET, &bucket, reason);
        }
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                let shown = steward_events::redact_url(endpoint);
                env.error(ENV_COPY_ENDPOINT, &shown, "expected an http:// or https:// URL");
            }
        }
        let credentials = match (access, secret) {
            (Some(a), Some(s)) => Some((a, s)),
            (None, None) => None,
            (Some(_), None) => {
                env.error(
                    ENV_COPY_SECRET_KEY,
                    "",
                    "required with STEWARD_BACKUP_COPY_ACCESS_KEY_ID",
                );
                None
            }
            (None, Some(_)) => {
                env.error(
                    ENV_COPY_ACCESS_KEY,
                    "",
                    "required with STEWARD_BACKUP_COPY_SECRET_ACCESS_KEY",
                );
                None
            }
        };
        Some(Self { s3: S3Config { bucket, prefix, endpoint }, credentials })
    }
}

/// Where one host's backups live under host routing (`STEWARD_HOSTS`): `<prefix>hosts/<host>/`.
/// Hosts sharing a bucket never see each other's backups, WAL, chunks or journal: a host's
/// retention, chunk collection and `latest` can touch only its own. (`hosts` is no backup
/// id, so a listing of the prefix itself skips it.)
pub fn host_prefix(prefix: &str, host: &str) -> String {
    format!("{prefix}hosts/{host}/")
}

/// A prefix as stored: no leading `/`, a trailing `/` unless empty.
pub fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim().trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// S3's bucket naming rules, checked at start so a typo is one clear line, not a failed
/// backup at 02:00.
pub fn validate_bucket(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if (3..=63).contains(&name.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err("3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(validate_bucket("steward-backups").is_ok());
        assert!(validate_bucket("a.b-c1").is_ok());
        for bad in ["", "ab", "Upper", "-dash", "dash-", "under_score", &"x".repeat(64)] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
    }

    fn read(pairs: &[(&str, &str)]) -> Result<S3Config, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let config = S3Config::read(&mut env);
        env.finish().map(|()| config).map_err(|e| e.to_string())
    }

    #[test]
    fn the_bucket_settings_are_read_and_every_bad_one_is_named() {
        let config = read(&[
            (ENV_BUCKET, "steward-backups"),
            (ENV_PREFIX, "/gitea"),
            (ENV_ENDPOINT, "http://127.0.0.1:9000"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.bucket, "steward-backups");
        assert_eq!(config.prefix, "gitea/");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));

        let e = read(&[]).expect_err("the bucket is required");
        assert!(e.contains("STEWARD_S3_BUCKET is required"), "{e}");
        let e = read(&[(ENV_BUCKET, "Bad_Bucket"), (ENV_ENDPOINT, "minio:9000")])
            .expect_err("bad values");
        assert!(e.contains("STEWARD_S3_BUCKET=\"Bad_Bucket\": 3 to 63 lowercase"), "{e}");
        assert!(e.contains("STEWARD_S3_ENDPOINT=\"minio:9000\": expected an http"), "{e}");
    }

    #[test]
    fn the_copy_is_optional_complete_and_its_secret_never_shown() {
        let read_copy = |pairs: &[(&str, &str)]| {
            let mut env = Env::from_pairs(pairs.iter().copied());
            let config = CopyConfig::read(&mut env);
            env.finish().map(|()| config).map_err(|e| e.to_string())
        };
        assert_eq!(read_copy(&[]), Ok(None));
        let copy = read_copy(&[
            (ENV_COPY_BUCKET, "offsite"),
            (ENV_COPY_PREFIX, "gitea"),
            (ENV_COPY_ENDPOINT, "https://s3.example.net"),
            (ENV_COPY_ACCESS_KEY, "AKIDCOPY"),
            (ENV_COPY_SECRET_KEY, "SECRETCOPY"),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no copy"));
        assert_eq!(copy.s3.prefix, "gitea/");
        assert!(!format!("{copy:?}").contains("SECRETCOPY"));
        let e = read_copy(&[(ENV_COPY_ACCESS_KEY, "AKID")]).expect_err("no bucket");
        assert!(e.contains(ENV_COPY_ACCESS_KEY), "{e}");
        let e = read_copy(&[(ENV_COPY_BUCKET, "offsite"), (ENV_COPY_SECRET_KEY, "SECRETCOPY")])
            .expect_err("half the credentials");
        assert!(e.contains(ENV_COPY_ACCESS_KEY) && !e.contains("SECRETCOPY"), "{e}");
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/"), "");
        assert_eq!(normalise_prefix("gitea"), "gitea/");
        assert_eq!(normalise_prefix("/a/b/"), "a/b/");
        assert_eq!(host_prefix("", "vps-a"), "hosts/vps-a/");
        assert_eq!(host_prefix("gitea/", "vps-a"), "gitea/hosts/vps-a/");
    }
}
