//! The backup service's own settings, names and defaults in one place (the bucket's are
//! `steward_store::config`'s, shared with `steward backup list`).

use std::time::Duration;

use steward_runtime::Env;
use steward_store::config::{CopyConfig, S3Config};
use steward_store::signing::{self, SigningKey, Trust};

use crate::encryption::Keys;
// The key variables are encryption's, which reads them; named here with the other settings.
pub use crate::encryption::{ENV_AGE_IDENTITY, ENV_AGE_IDENTITY_FILE, ENV_AGE_RECIPIENTS};
use crate::retention::Retention;

/// Cron expression of the regular backup (host time zone).
pub const ENV_SCHEDULE: &str = "STEWARD_BACKUP_SCHEDULE";
/// How many backups of each age class to keep.
pub const ENV_RETENTION: &str = "STEWARD_BACKUP_RETENTION";
/// Grace period for a container stopped for a consistent copy.
pub const ENV_STOP_TIMEOUT: &str = "STEWARD_BACKUP_STOP_TIMEOUT";
/// Image of the throw-away containers that share a container's volumes for a restore (default:
/// Steward's own when the service runs in a container of the engine, else the container's
/// own image, which must then have `/bin/sh`).
pub const ENV_HELPER_IMAGE: &str = "STEWARD_RESTORE_HELPER_IMAGE";
/// How long a restore waits for the restarted containers to be healthy.
pub const ENV_RESTORE_HEALTH_TIMEOUT: &str = "STEWARD_RESTORE_HEALTH_TIMEOUT";
/// zstd level of the stored components.
pub const ENV_ZSTD_LEVEL: &str = "STEWARD_BACKUP_ZSTD_LEVEL";

/// Daily 02:00.
pub const DEFAULT_SCHEDULE: &str = "0 2 * * *";
/// Paths stored as deduplicated chunks ([`crate::chunks`]): `true` or `false` (default).
pub const ENV_INCREMENTAL: &str = "STEWARD_BACKUP_INCREMENTAL";
/// Hourly, on the hour: the default schedule when backups are incremental.
pub const DEFAULT_INCREMENTAL_SCHEDULE: &str = "0 * * * *";
/// Cron expression of the full verification of the newest backup (host time zone).
pub const ENV_VERIFY_SCHEDULE: &str = "STEWARD_BACKUP_VERIFY_SCHEDULE";
/// Weekly, Sunday 04:00 (after the nightly backup).
pub const DEFAULT_VERIFY_SCHEDULE: &str = "0 4 * * 0";
/// The newest complete backup may be at most this old before `backup.stale` is published.
pub const ENV_MAX_AGE: &str = "STEWARD_BACKUP_MAX_AGE";

/// The longest a committed transaction may wait before its WAL is in the bucket
/// (`steward.backup.pitr` clusters).
pub const ENV_PITR_MAX_LAG: &str = "STEWARD_PITR_MAX_LAG";
/// The most WAL (MiB) a replication slot may make PostgreSQL keep for a shipper that does not
/// read it (`max_slot_wal_keep_size`); beyond it the slot is lost and a gap reported.
pub const ENV_PITR_SLOT_KEEP_MB: &str = "STEWARD_PITR_SLOT_KEEP_MB";
/// The most WAL (MiB) the receiver's spool in the data volume may hold while uploads fail;
/// at it the receiver is stopped (the slot then keeps the WAL in `pg_wal`, up to
/// [`ENV_PITR_SLOT_KEEP_MB`]) and an alarm raised.
pub const ENV_PITR_SPOOL_MAX_MB: &str = "STEWARD_PITR_SPOOL_MAX_MB";

/// WAL shipping's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PitrConfig {
    /// [`ENV_PITR_MAX_LAG`], default 60 s.
    pub max_lag: Duration,
    /// [`ENV_PITR_SLOT_KEEP_MB`], default 8192.
    pub slot_keep_mb: u32,
    /// [`ENV_PITR_SPOOL_MAX_MB`], default 1024.
    pub spool_max_mb: u32,
}

impl Default for PitrConfig {
    fn default() -> Self {
        Self { max_lag: Duration::from_secs(60), slot_keep_mb: 8192, spool_max_mb: 1024 }
    }
}

impl PitrConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let d = Self::default();
        let max_lag = env.duration(ENV_PITR_MAX_LAG, d.max_lag);
        if max_lag < Duration::from_secs(4) {
            env.error(ENV_PITR_MAX_LAG, &format!("{max_lag:?}"), "at least 4s");
        }
        let slot_keep_mb =
            env.parse_with(ENV_PITR_SLOT_KEEP_MB, d.slot_keep_mb, |s| match s.parse::<u32>() {
                Ok(n) if n >= 64 => Ok(n),
                _ => Err("a whole number of MiB, at least 64".into()),
            });
        // The receiver's partial segment and two complete ones (16 MiB each by default).
        let spool_max_mb =
            env.parse_with(ENV_PITR_SPOOL_MAX_MB, d.spool_max_mb, |s| match s.parse::<u32>() {
                Ok(n) if n >= 48 => Ok(n),
                _ => Err("a whole number of MiB, at least 48".into()),
            });
        Self { max_lag, slot_keep_mb, spool_max_mb }
    }

    /// How often the shipper looks: a tenth of the lag, from 1 to 10 seconds.
    pub fn tick(&self) -> Duration {
        (self.max_lag / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

/// The backup service's settings.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// When to back up.
    pub schedule: croner::Cron,
    /// When to verify the newest backup fully (its dumps loaded into a scratch server).
    pub verify_schedule: croner::Cron,
    /// The off-host monitor pinged after each verified backup.
    pub heartbeat: Option<crate::heartbeat::Heartbeat>,
    /// The newest complete backup's greatest allowed age (`backup.stale` beyond it).
    pub max_age: Duration,
    /// Where.
    pub s3: S3Config,
    /// The second copy, if any (`STEWARD_BACKUP_COPY_*`).
    pub copy: Option<CopyConfig>,
    /// What to keep.
    pub retention: Retention,
    /// Grace given to a container stopped for the copy.
    pub stop_timeout: Duration,
    /// Image for emptying a path before a restore.
    pub helper_image: Option<String>,
    /// Wait for health after a restore.
    pub restore_health_timeout: Duration,
    /// How a restored container is probed: the health service's and the update gate's
    /// setting (`STEWARD_HEALTH_PROBE_TIMEOUT`), read the same way.
    pub probe: steward_probe::ProbeConfig,
    /// zstd level.
    pub zstd_level: i32,
    /// The installation's scope.
    pub scope: Option<String>,
    /// Client-side encryption keys.
    pub keys: Keys,
    /// The key new manifests and verification marks are signed with
    /// (`STEWARD_BACKUP_SIGNING_KEY_FILE`).
    pub signing: SigningKey,
    /// The public keys whose backups are used: the signing key's own and
    /// `STEWARD_BACKUP_TRUSTED_KEYS`.
    pub trust: Trust,
    /// On a rebuilt host, backups are refused until a restore ends this pause
    /// ([`crate::pause`], `STEWARD_BACKUP_RESTORE_PENDING`).
    pub restore_pending: Option<String>,
    /// WAL shipping of `steward.backup.pitr` clusters.
    pub pitr: PitrConfig,
    /// Paths are stored as deduplicated chunks (`STEWARD_BACKUP_INCREMENTAL`).
    pub incremental: bool,
}

impl BackupConfig {
    /// These settings for `host`'s agent under host routing: the primary's and the copy's
    /// prefixes become the host's own ([`steward_store::config::host_prefix`]), and only
    /// backups whose signed manifest names this host (or none) are usable.
    pub fn for_host(mut self, host: &str) -> Self {
        use steward_store::config::host_prefix;
        self.s3.prefix = host_prefix(&self.s3.prefix, host);
        // And only its own: a manifest naming another host is refused, wherever it lies.
        self.trust = self.trust.for_host(host);
        if let Some(copy) = &mut self.copy {
            copy.s3.prefix = host_prefix(&copy.s3.prefix, host);
        }
        self
    }

    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let incremental = env.choice(ENV_INCREMENTAL, "false", &["true", "false"]) == "true";
        let schedule = env.cron(
            ENV_SCHEDULE,
            if incremental { DEFAULT_INCREMENTAL_SCHEDULE } else { DEFAULT_SCHEDULE },
        );
        let verify_schedule = env.cron(ENV_VERIFY_SCHEDULE, DEFAULT_VERIFY_SCHEDULE);
        let heartbeat = crate::heartbeat::Heartbeat::read(env);
        let s3 = S3Config::read(env);
        let copy = CopyConfig::read(env);
        if copy.as_ref().is_some_and(|c| {
            c.s3.bucket == s3.bucket && c.s3.prefix == s3.prefix && c.s3.endpoint == s3.endpoint
        }) {
            env.error(
                steward_store::config::ENV_COPY_BUCKET,
                &s3.bucket,
                "the copy is the primary bucket and prefix: a second copy must be elsewhere",
            );
        }
        let retention = env.parse_with(ENV_RETENTION, Retention::default(), Retention::parse);
        let zstd_level = env.parse_with(ENV_ZSTD_LEVEL, 3, |s| match s.parse::<i32>() {
            Ok(n) if (1..=19).contains(&n) => Ok(n),
            _ => Err("a whole number from 1 to 19".into()),
        });
        let keys = Keys::read(env);
        let (signing, trust) = signing::read_keys(env);
        // Without a key the service does not start (`env` holds the error); this one is
        // never used.
        let signing = signing.unwrap_or_else(SigningKey::generate);
        // A day and two hours: a daily backup that ran late is not stale yet.
        let max_age = env.duration(ENV_MAX_AGE, Duration::from_secs(26 * 3600));
        if max_age < Duration::from_secs(1) {
            env.error(ENV_MAX_AGE, &format!("{max_age:?}"), "at least 1s");
        }
        let restore_pending =
            env.optional(crate::pause::ENV_RESTORE_PENDING).filter(|s| !s.trim().is_empty());
        if let Some(token) = &restore_pending {
            if let Err(reason) = crate::pause::valid_token(token) {
                env.error(crate::pause::ENV_RESTORE_PENDING, token, reason);
            }
        }
        Self {
            restore_pending,
            schedule,
            verify_schedule,
            heartbeat,
            max_age,
            s3,
            copy,
            retention,
            stop_timeout: env.duration(ENV_STOP_TIMEOUT, Duration::from_secs(30)),
            helper_image: env.optional(ENV_HELPER_IMAGE).filter(|s| !s.is_empty()),
            restore_health_timeout: env
                .duration(ENV_RESTORE_HEALTH_TIMEOUT, Duration::from_secs(180)),
            probe: steward_probe::ProbeConfig::read(env),
            zstd_level,
            scope: env.scope(),
            keys,
            signing,
            trust,
            pitr: PitrConfig::read(env),
            incremental,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_store::config::{ENV_BUCKET, ENV_ENDPOINT};

    #[test]
    fn bad_values_are_named() {
        let mut env = Env::from_pairs([
            (ENV_BUCKET, "Bad_Bucket"),
            (ENV_RETENTION, "daily=x"),
            (ENV_ENDPOINT, "localhost:9000"),
            (ENV_SCHEDULE, "every day"),
        ]);
        let _ = BackupConfig::read(&mut env);
        let message = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        for name in [ENV_BUCKET, ENV_RETENTION, ENV_ENDPOINT, ENV_SCHEDULE] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
    }

    #[test]
    fn age_key_errors_name_their_variable_and_never_show_an_identity() {
        let secret = "AGE-SECRET-KEY-1NOTAREALKEYATALL";
        let mut env = Env::from_pairs([
            (ENV_BUCKET, "steward"),
            (ENV_AGE_RECIPIENTS, "age1typo"),
            (ENV_AGE_IDENTITY, secret),
        ]);
        let _ = BackupConfig::read(&mut env);
        let message = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(ENV_AGE_RECIPIENTS) && message.contains("age1typo"), "{message}");
        assert!(!message.contains("NOTAREALKEY"), "the identity leaked: {message}");

        let mut env = Env::from_pairs([(ENV_BUCKET, "steward"), (ENV_AGE_IDENTITY, secret)]);
        let _ = BackupConfig::read(&mut env);
        let message = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(ENV_AGE_IDENTITY), "{message}");
        assert!(!message.contains("NOTAREALKEY"), "the identity leaked: {message}");
    }

    #[test]
    fn the_defaults_parse() {
        let key = SigningKey::generate().to_pem();
        let mut env = Env::from_pairs([
            (steward_store::config::ENV_BUCKET, "steward"),
            (signing::ENV_SIGNING_KEY, key.as_str()),
        ]);
        let config = BackupConfig::read(&mut env);
        assert!(env.finish().is_ok());
        assert_eq!(config.schedule.as_str(), DEFAULT_SCHEDULE);
        assert_eq!(config.pitr, PitrConfig::default());
        assert_eq!(config.pitr.tick(), Duration::from_secs(6));
        assert!(!config.incremental);
    }

    #[test]
    fn incremental_backups_are_hourly_unless_scheduled() {
        let key = SigningKey::generate().to_pem();
        let read = |pairs: &[(&str, &str)]| {
            let mut all = vec![(ENV_BUCKET, "steward"), (signing::ENV_SIGNING_KEY, key.as_str())];
            all.extend_from_slice(pairs);
            let mut env = Env::from_pairs(all);
            let config = BackupConfig::read(&mut env);
            env.finish().map(|()| config).map_err(|e| e.to_string())
        };
        let on = read(&[(ENV_INCREMENTAL, "true")]).expect("incremental");
        assert!(on.incremental);
        assert_eq!(on.schedule.as_str(), DEFAULT_INCREMENTAL_SCHEDULE);
        let set = read(&[(ENV_INCREMENTAL, "true"), (ENV_SCHEDULE, "0 3 * * *")]).expect("set");
        assert_eq!(set.schedule.as_str(), "0 3 * * *");
        let e = read(&[(ENV_INCREMENTAL, "sometimes")]).expect_err("not a boolean");
        assert!(e.contains(ENV_INCREMENTAL), "{e}");
    }

    #[test]
    fn pitr_settings_are_bounded() {
        let mut env = Env::from_pairs([
            (ENV_PITR_MAX_LAG, "1s"),
            (ENV_PITR_SLOT_KEEP_MB, "10"),
            (ENV_PITR_SPOOL_MAX_MB, "16"),
        ]);
        let _ = PitrConfig::read(&mut env);
        let message = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(ENV_PITR_MAX_LAG) && message.contains("at least 4s"), "{message}");
        assert!(message.contains(ENV_PITR_SLOT_KEEP_MB), "{message}");
        assert!(message.contains(ENV_PITR_SPOOL_MAX_MB), "{message}");
        let mut env = Env::from_pairs([(ENV_PITR_MAX_LAG, "10s")]);
        let pitr = PitrConfig::read(&mut env);
        assert!(env.finish().is_ok());
        assert_eq!(pitr.tick(), Duration::from_secs(1));
    }

    #[test]
    fn the_copy_must_be_elsewhere() {
        use steward_store::config::{ENV_COPY_BUCKET, ENV_COPY_PREFIX, ENV_PREFIX};
        let key = SigningKey::generate().to_pem();
        let read = |copy_prefix: &str| {
            let mut env = Env::from_pairs([
                (ENV_BUCKET, "steward"),
                (ENV_PREFIX, "gitea"),
                (ENV_COPY_BUCKET, "steward"),
                (ENV_COPY_PREFIX, copy_prefix),
                (signing::ENV_SIGNING_KEY, key.as_str()),
            ]);
            let config = BackupConfig::read(&mut env);
            env.finish().map(|()| config).map_err(|e| e.to_string())
        };
        let e = read("gitea/").expect_err("the copy is the primary");
        assert!(e.contains(ENV_COPY_BUCKET) && e.contains("elsewhere"), "{e}");
        let config = read("offsite").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.copy.map(|c| c.s3.prefix).as_deref(), Some("offsite/"));
    }

    #[test]
    fn bucket_is_required() {
        let mut env = Env::from_pairs(Vec::<(String, String)>::new());
        let _ = BackupConfig::read(&mut env);
        assert!(env.finish().is_err());
    }
}
