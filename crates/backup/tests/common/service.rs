//! `steward-backup` as a real process against a [`Stack`], and waiting on what it ships.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steward_testkit::unique_name;

use super::{Stack, DB_USER};

/// `steward-backup` as a process of its own, serving `stack`'s scope and bucket; killed on
/// drop.
pub struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Started with `failpoints` (`STEWARD_FAILPOINTS`: an empty value logs every point passed),
    /// a 4 s lag bound (the shipper looks every second); returns once it consumes.
    pub fn start(stack: &Stack, bus: &steward_bus::Bus, failpoints: &str) -> Self {
        Self::start_with(stack, bus, failpoints, &[])
    }

    /// [`Service::start`] with `extra` settings.
    pub fn start_with(
        stack: &Stack,
        bus: &steward_bus::Bus,
        failpoints: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let ns = bus.namespace();
        let log = std::env::temp_dir().join(unique_name("steward-backup")).with_extension("log");
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward-backup"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(steward_testkit::engine_env())
            .envs(super::bucket_env(stack))
            .envs([
                ("STEWARD_NATS_URL", bus.config().url.clone()),
                ("STEWARD_STREAM", ns.stream.clone()),
                ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
                ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{}", steward_testkit::free_port())),
                ("STEWARD_SCOPE", stack.scope.clone()),
                ("STEWARD_PITR_MAX_LAG", "4s".into()),
                // Only what the test asks for: no scheduled backup in a run.
                ("STEWARD_BACKUP_SCHEDULE", "0 3 1 1 *".into()),
                ("STEWARD_BACKUP_STOP_TIMEOUT", "5s".into()),
                ("STEWARD_RESTORE_HEALTH_TIMEOUT", "60s".into()),
                ("STEWARD_FAILPOINTS", failpoints.into()),
            ])
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("steward-backup: {e}"));
        let service = Self { child, log };
        let started = Instant::now();
        while !service.logs().contains("\"consuming\"") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not consuming: {}",
                service.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines logged, for a failure's message.
    pub fn tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits up to `bound` for the process to end by itself (a failpoint's abort).
    pub async fn exits_within(&mut self, bound: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Polls `probe` every 200 ms until it holds, for at most `bound`; panics with `what` and
/// `context()` otherwise.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    bound: Duration,
    context: &dyn Fn() -> String,
    mut probe: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !probe().await {
        assert!(started.elapsed() < bound, "{what} not within {bound:?}:\n{}", context());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the segment holding everything committed so far has its signed record in the
/// bucket: shipping works, and has caught up.
pub async fn caught_up(stack: &Stack, service: &Service, when: &str) {
    let file = super::current_segment(&stack.db.name);
    let (what, file) = (format!("{file} shipped ({when})"), &file);
    until(&what, Duration::from_secs(60), &|| service.tail(), || async move {
        stack.backups.wal_record(&stack.db.name, file).await.ok().flatten().is_some()
    })
    .await;
}

/// Waits until the shipper's slot is held by a running receiver.
pub async fn receiving(stack: &Stack, service: &Service) {
    let slot = steward_backup::wal::slot_name(&stack.db.name);
    let sql =
        format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active");
    let sql = &sql;
    until("the receiver", Duration::from_secs(30), &|| service.tail(), || async move {
        try_psql(stack, sql).as_deref() == Some("1")
    })
    .await;
}

/// `psql` that may fail (the server is restarting): its output, or None.
pub fn try_psql(stack: &Stack, sql: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["exec", &stack.db.name, "psql", "-U", DB_USER, "-d", DB_USER, "-tAc", sql])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
