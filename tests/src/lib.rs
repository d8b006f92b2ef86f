//! Helpers to run Steward's binaries as real processes in tests.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; the README's test
//! command does it): a test of one package cannot ask Cargo to build another's binaries.

pub mod apps;
pub mod backup_bed;
pub mod crash;
pub mod leafnodes;
pub mod mail;
pub mod podman;
pub mod stack;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the running test (same profile).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir =
        exe.parent().and_then(|p| p.parent()).unwrap_or_else(|| panic!("odd test path {exe:?}"));
    let path = dir.join(name);
    assert!(path.exists(), "{path:?} not built: run `cargo build --workspace --bins` first");
    path
}

/// A service process; killed on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where its stderr (the logs) goes.
    pub log: PathBuf,
    /// What it runs with (a socket proxy in front of its engine and its directory), dropped
    /// after it ends.
    pub companions: Vec<Box<dyn std::any::Any + Send>>,
}

impl Proc {
    /// Starts `name` with `env` (on top of a clean environment), logs to a temp file.
    pub fn start(name: &str, env: &[(&str, String)]) -> Self {
        Self::spawn(name, Command::new(binary(name)), env)
    }

    /// Like [`Proc::start`], the process's stack limit (`ulimit -s`, which sizes its main
    /// thread) set to `kib` KiB by util-linux's `prlimit`, which then runs the binary in its
    /// place.
    pub fn start_with_stack(name: &str, env: &[(&str, String)], kib: u64) -> Self {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--stack={}", kib * 1024)).arg("--").arg(binary(name));
        Self::spawn(name, cmd, env)
    }

    fn spawn(name: &str, mut cmd: Command, env: &[(&str, String)]) -> Self {
        let log =
            std::env::temp_dir().join(steward_testkit::unique_name(name)).with_extension("log");
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
        let child = cmd
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(steward_testkit::engine_env())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { child, log, companions: vec![] }
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process exits (`true`) or `bound` passes (`false`).
    pub fn exits_within(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends SIGTERM and waits up to `bound` for the exit code.
    pub fn terminate(&mut self, bound: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The five service binaries.
pub const SERVICES: [&str; 5] =
    ["steward-watcher", "steward-updater", "steward-backup", "steward-health", "steward-notifier"];

/// Runs `steward ARGS` against `bus`'s namespace (a clean environment, `USER=tester`).
pub fn steward(bus: &steward_bus::Bus, args: &[&str]) -> Output {
    steward_with(bus, &[], args)
}

/// [`steward`] with extra environment (e.g. the S3 settings for `backup list`).
pub fn steward_with(bus: &steward_bus::Bus, env: &[(&str, String)], args: &[&str]) -> Output {
    let ns = bus.namespace();
    Command::new(binary("steward"))
        .env_clear()
        .envs(steward_testkit::engine_env())
        .env("STEWARD_NATS_URL", &bus.config().url)
        .env("STEWARD_STREAM", &ns.stream)
        .env("STEWARD_SUBJECT_PREFIX", &ns.prefix)
        .env("USER", "tester")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("steward {args:?}: {e}"))
}

/// [`steward`] that must succeed; its stdout.
pub fn steward_ok(bus: &steward_bus::Bus, args: &[&str]) -> String {
    let out = steward(bus, args);
    assert!(
        out.status.success(),
        "steward {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Proc {
    /// Starts a service binary in `bus`'s namespace with `extra` settings and waits until its
    /// consumer is up.
    pub fn service(name: &str, bus: &steward_bus::Bus, extra: &[(&str, String)]) -> Self {
        Self::consuming(name, Self::start(name, &service_env(bus, extra)))
    }

    /// Like [`Proc::service`], with a stack limit of `kib` KiB ([`Proc::start_with_stack`]).
    pub fn service_with_stack(
        name: &str,
        bus: &steward_bus::Bus,
        extra: &[(&str, String)],
        kib: u64,
    ) -> Self {
        Self::consuming(name, Self::start_with_stack(name, &service_env(bus, extra), kib))
    }

    fn consuming(name: &str, p: Self) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.logs().contains("\"consuming\"") {
            assert!(Instant::now() < deadline, "{name} not consuming: {}", p.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }
}

/// Nothing any participant needed was refused: the server logged no permissions violation and
/// no process logged a NATS server error (`procs`: a name for the message, the process).
pub fn assert_nothing_refused<N: std::fmt::Display>(
    server: &steward_testkit::NatsServer,
    procs: &[(N, Proc)],
) {
    let log = server.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "refused by the server: {violations:#?}");
    for (name, proc) in procs {
        let logs = proc.logs();
        assert!(!logs.contains("NATS server error"), "{name}: {logs}");
    }
}

/// The environment of a service binary in `bus`'s namespace (NATS, stream, subject prefix, a
/// free HTTP port), plus `extra` settings.
pub fn service_env<'a>(
    bus: &steward_bus::Bus,
    extra: &[(&'a str, String)],
) -> Vec<(&'a str, String)> {
    let ns = bus.namespace();
    let mut env = vec![
        ("STEWARD_NATS_URL", bus.config().url.clone()),
        ("STEWARD_STREAM", ns.stream.clone()),
        ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
        ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{}", steward_testkit::free_port())),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// A bucket of its own on the test bed's S3 server, emptied and removed when dropped, with
/// the settings `steward-backup` and `steward backup list` need to use it, and the key its
/// backups are signed with.
pub struct TestBucket {
    /// Its name.
    pub name: String,
    /// The key `steward-backup` signs this bucket's manifests with (its public key is the
    /// trusted one for `steward backup list`).
    pub signing: steward_store::signing::SigningKey,
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        // Drop cannot be async and may run inside a runtime: empty and remove the bucket
        // through S3 on a thread of its own (a test that removed it already leaves nothing).
        let name = self.name.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let store = Self::store_of(&name).await;
                if let Err(e) = store.destroy().await {
                    if !format!("{e:?}").contains("NoSuchBucket") {
                        eprintln!("warning: could not remove test bucket {name}: {e}");
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

impl TestBucket {
    /// Creates the bucket.
    pub async fn new(tag: &str) -> Self {
        let name = steward_testkit::unique_name(&format!("steward-{tag}"))
            .to_lowercase()
            .replace('_', "-");
        let store = Self::store_of(&name).await;
        store.create_bucket().await.unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        Self { name, signing: steward_store::signing::SigningKey::generate() }
    }

    async fn store_of(name: &str) -> steward_store::store::Store {
        Self::connect(&Self::store_config(name)).await
    }

    /// The store as `steward-backup` sees it (prefix `steward/`), for tests that read or
    /// tamper with it.
    pub async fn store(&self) -> steward_store::store::Store {
        let mut config = Self::store_config(&self.name);
        config.prefix = "steward/".into();
        Self::connect(&config).await
    }

    fn store_config(name: &str) -> steward_store::config::S3Config {
        steward_store::config::S3Config {
            bucket: name.to_owned(),
            prefix: String::new(),
            endpoint: Some(steward_testkit::testbed::require("STEWARD_TEST_S3_ENDPOINT")),
        }
    }

    async fn connect(config: &steward_store::config::S3Config) -> steward_store::store::Store {
        let require = steward_testkit::testbed::require;
        steward_store::store::Store::connect_static(
            config,
            &require("STEWARD_TEST_S3_ACCESS_KEY"),
            &require("STEWARD_TEST_S3_SECRET_KEY"),
        )
        .await
    }

    /// `STEWARD_S3_*`, the AWS credential variables and the signing and trusted keys for this
    /// bucket.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let require = steward_testkit::testbed::require;
        vec![
            ("STEWARD_S3_BUCKET", self.name.clone()),
            ("STEWARD_S3_PREFIX", "steward".into()),
            ("STEWARD_S3_ENDPOINT", require("STEWARD_TEST_S3_ENDPOINT")),
            ("AWS_ACCESS_KEY_ID", require("STEWARD_TEST_S3_ACCESS_KEY")),
            ("AWS_SECRET_ACCESS_KEY", require("STEWARD_TEST_S3_SECRET_KEY")),
            ("AWS_REGION", "us-east-1".into()),
            (steward_store::signing::ENV_SIGNING_KEY, self.signing.to_pem()),
            (steward_store::signing::ENV_TRUSTED_KEYS, self.signing.public().to_string()),
        ]
    }

    /// Open multipart uploads of this bucket, from s3s-fs's directory (the test bed's server
    /// keeps a metadata file per open upload, named by the base64 of bucket and key, and
    /// removes it on completion or abort).
    pub fn open_uploads(&self) -> Vec<String> {
        let marker = format!(".bucket-{}.object-", base64url(self.name.as_bytes()));
        let dir = steward_testkit::testbed::s3_dir();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&marker) && n.contains(".upload-"))
            .collect()
    }

    /// Every backup the catalog lists (signed by this bucket's key): complete ones have all
    /// their parts, each matching its manifest; none is incomplete. Panics naming the first
    /// that is not, with `context()`; the complete ones' ids.
    pub async fn check_catalog(&self, context: &dyn Fn() -> String) -> Vec<String> {
        let store = self.store().await;
        let trust = steward_store::signing::Trust::new(vec![self.signing.public()]);
        let listed = steward_store::catalog::list(&store, &trust, time::OffsetDateTime::now_utc())
            .await
            .unwrap_or_else(|e| panic!("list: {e}: {}", context()));
        let keys = steward_backup::encryption::Keys::new(vec![], vec![]);
        let meter = std::sync::Arc::default();
        let io = steward_backup::pipeline::Io { store: &store, keys: &keys, meter: &meter };
        let mut complete = vec![];
        for l in listed {
            let objects = store
                .list_objects(&l.backup_id)
                .await
                .unwrap_or_else(|e| panic!("list objects: {e}: {}", context()));
            let Some(m) = &l.manifest else {
                panic!("incomplete backup {} left: {objects:?}: {}", l.backup_id, context());
            };
            for c in &m.components {
                assert!(
                    objects.contains(&c.object),
                    "{} listed complete without {}: {}",
                    l.backup_id,
                    c.object,
                    context()
                );
                if let Err(e) = steward_backup::pipeline::check_component(io, c).await {
                    panic!("{} listed complete, {}: {e}: {}", l.backup_id, c.name, context());
                }
            }
            complete.push(l.backup_id);
        }
        complete
    }

    /// Empties and removes the bucket.
    pub async fn destroy(self) {
        if let Err(e) = Self::store_of(&self.name).await.destroy().await {
            eprintln!("could not remove test bucket {}: {e}", self.name);
        }
    }
}

/// The first event of one of `types` in `request`'s flow (correlation), waited for up to
/// `bound`.
pub async fn wait_outcome(
    bus: &steward_bus::Bus,
    request: &steward_events::Event,
    types: &[&str],
    bound: Duration,
) -> steward_events::Event {
    let correlation = request.correlation_id;
    let deadline = Instant::now() + bound;
    loop {
        let found = steward_testkit::stored_events(bus)
            .await
            .into_iter()
            .find(|e| e.correlation_id == correlation && types.contains(&e.event_type()));
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "no {types:?} in flow {correlation}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The failpoints a process passed, from its logs, in order, as kill specs (`name=n`: the
/// point's n-th hit), for `STEWARD_FAILPOINTS`.
pub fn failpoints_passed(logs: &str) -> Vec<String> {
    let mut seen: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut specs = vec![];
    for line in logs.lines() {
        let Some(name) = line.strip_prefix("failpoint: ") else { continue };
        if name.ends_with(": aborting") || name.contains(": aborting (") {
            continue;
        }
        let n = seen.entry(name).or_insert(0);
        *n += 1;
        specs.push(format!("{name}={n}"));
    }
    specs
}

/// URL-safe base64 without padding (how s3s-fs names its upload files).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS server with the generated users of host routing over `hosts` (`STEWARD_HOSTS`),
/// provisioned by `steward setup` as the setup user (with `setup_extra` settings, e.g. the
/// services' `STEWARD_ACK_WAIT`); the setup user's bus and the CLI's.
pub async fn routed_bus(
    hosts: &[String],
    setup_extra: &[(&str, String)],
) -> (steward_testkit::NatsServer, steward_bus::Bus, steward_bus::Bus) {
    use steward_bus::{Bus, BusConfig};
    use steward_testkit::NatsServer;
    let server = NatsServer::start_with_users_for(hosts);
    let setup = Bus::open(
        BusConfig { hosts: hosts.to_vec(), ..server.bus_config_as_setup() },
        "steward-setup",
    )
    .await
    .unwrap_or_else(|e| panic!("the setup user connects: {e}"));
    let mut env = vec![
        ("STEWARD_NATS_USER", steward_bus::SETUP_USER.to_owned()),
        ("STEWARD_NATS_PASSWORD", NatsServer::setup_password()),
        ("STEWARD_HOSTS", hosts.join(",")),
    ];
    env.extend(setup_extra.iter().cloned());
    let out = steward_with(&setup, &env, &["setup"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "steward setup: {}", String::from_utf8_lossy(&out.stderr));
    for host in hosts {
        assert!(stdout.contains(&format!("consumer updater-{host}")), "{stdout}");
    }
    let cli = Bus::connect(
        BusConfig { hosts: hosts.to_vec(), ..server.bus_config_as(steward_events::Service::Cli) },
        steward_events::Service::Cli.binary(),
    )
    .await
    .unwrap_or_else(|e| panic!("the CLI's user connects: {e}"));
    (server, setup, cli)
}
