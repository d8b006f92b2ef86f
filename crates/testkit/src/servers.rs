//! The shared servers from containers of the test binary's own (testcontainers).
//!
//! The test bed's server variables ([`crate::testbed::var`]) are answered by containers this
//! process starts on first use, from the images `infra/testbed/stack-images.sh stand-ins`
//! builds on this machine: NATS with JetStream (`steward-local/nats`), S3 (`steward-local/s3`,
//! s3s-fs; `steward-local/moto` for Object Lock), SMTP (`steward-local/smtp`, aiosmtpd writing
//! a maildir) and the OCI registries, plain and with basic auth (`steward-local/registry`).
//! Each binary then has its own instances: nothing it stores or mails is seen by another
//! binary, and `cargo test` needs only a running engine and the images. A test that takes a
//! server away and back uses one of its own ([`Own`]), so that the binary's other tests keep
//! theirs; a [`crate::NatsServer`] is one too.
//!
//! With `STEWARD_TEST_SERVERS=testbed`, the shared servers `infra/testbed/up.sh --servers`
//! started are used instead (what the demo runs on).
//!
//! - The servers publish on 127.0.0.1 only, on ports from [`crate::free_port`] (a
//!   [`crate::NatsServer`] runs on the host's network, listening on 127.0.0.1 itself).
//! - They run on the engine `DOCKER_HOST` names (Docker's socket when unset): on a Podman leg
//!   of the engine matrix, Podman's, each image copied from Docker's store on first use; on
//!   the rootless leg, the directories they write are the rootless user's.
//! - The images must be in the engine's store: a missing one fails the test with what to run,
//!   never a pull (testcontainers would pull it from Docker Hub by that name).
//! - The containers are removed when the process ends, however it ends (a panic, an exit, a
//!   SIGKILL of the process): a reaper process started with the first one waits on a pipe
//!   that only this process holds, then removes every container labelled with this process's
//!   run and the run's directory (the maildir, S3's data, the registries' configuration). A
//!   static's `Drop` never runs at exit, which is why testcontainers' own removal on drop is
//!   not relied on. If the reaper dies with the process (its whole session killed), the next
//!   run's start removes what runs of dead processes left.
//! - testcontainers and the `docker` CLI the reaper and [`Own::kill`] run read the same
//!   `DOCKER_HOST` (its `properties-config` feature, which would let a file override it, is
//!   off).

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use testcontainers::core::{IntoContainerPort as _, Mount, WaitFor};
use testcontainers::runners::SyncRunner as _;
use testcontainers::{Container, ContainerRequest, GenericImage, Image as _, ImageExt as _};

/// Selects where the servers come from: `containers` (the default) or `testbed`.
pub const MODE_VARIABLE: &str = "STEWARD_TEST_SERVERS";
/// The label every container of a run carries, valued with the run's id.
pub const RUN_LABEL: &str = "steward.test.servers";

/// The credentials of the S3 server and the authenticating registry (the test bed's, so a test
/// reads the same either way).
const S3_ACCESS_KEY: &str = "steward-test";
const S3_SECRET_KEY: &str = "steward-test-secret";
const REGISTRY_USER: &str = "steward";
const REGISTRY_PASSWORD: &str = "steward-test";
/// `htpasswd -Bbn -C 5 steward steward-test`: a fixed bcrypt line, so that no `htpasswd` needs
/// to be installed (only the engine and the images are).
const REGISTRY_HTPASSWD: &str =
    "steward:$2y$05$skoWJC8MQUYECS0cvVXAc.QVHrlQX.Dj/eFq7.NTEHVPs2lOu2MJy\n";

/// A run's directory is this followed by the run's id, under the temp dir.
const DIR_PREFIX: &str = "steward-test-servers-";

/// How long a server may take to answer after its container started.
const READY_BOUND: Duration = Duration::from_secs(60);

/// Whether this process's servers come from its own containers: unless
/// `STEWARD_TEST_SERVERS=testbed` asks for the shared ones `infra/testbed/up.sh --servers`
/// starts. Another value fails the test: a typo would otherwise pick one silently.
pub fn in_containers() -> bool {
    match std::env::var(MODE_VARIABLE) {
        Err(std::env::VarError::NotPresent) => true,
        Ok(v) if v.is_empty() || v == "containers" => true,
        Ok(v) if v == "testbed" => false,
        other => panic!("{MODE_VARIABLE}={other:?}: expected `containers` or `testbed`"),
    }
}

/// A test bed variable answered by this process's containers (starting the server it names
/// on first use); `None` when the mode is off or `name` is not a server's variable.
pub(crate) fn var(name: &str) -> Option<String> {
    if !in_containers() {
        return None;
    }
    let address = |server: &Server| format!("127.0.0.1:{}", server.port);
    Some(match name {
        "STEWARD_TEST_NATS_URL" => format!("nats://{}", address(nats())),
        "STEWARD_TEST_S3_ENDPOINT" => format!("http://{}", address(s3())),
        "STEWARD_TEST_MOTO_ENDPOINT" => format!("http://{}", address(moto())),
        "STEWARD_TEST_S3_ACCESS_KEY" => S3_ACCESS_KEY.into(),
        "STEWARD_TEST_S3_SECRET_KEY" => S3_SECRET_KEY.into(),
        "STEWARD_TEST_SMTP" => address(smtp()),
        "STEWARD_TEST_MAILDIR" => run().dir.join("maildir").to_string_lossy().into_owned(),
        "STEWARD_TEST_REGISTRY" => address(registry()),
        "STEWARD_TEST_REGISTRY_AUTH" => address(auth_registry()),
        "STEWARD_TEST_REGISTRY_USER" => REGISTRY_USER.into(),
        "STEWARD_TEST_REGISTRY_PASSWORD" => REGISTRY_PASSWORD.into(),
        _ => return None,
    })
}

/// The S3 server's data directory on this machine (s3s-fs keeps a bucket as a directory and
/// an open upload as a file beside it, which some tests read).
pub(crate) fn s3_dir() -> Option<PathBuf> {
    in_containers().then(|| {
        s3();
        run().dir.join("s3")
    })
}

/// This process's run id: the value of [`RUN_LABEL`] on its containers.
pub fn run_id() -> &'static str {
    &run().id
}

/// This process's run directory (the maildir, S3's data, the registries' configuration),
/// removed with the containers when the process ends.
pub fn run_dir() -> &'static Path {
    &run().dir
}

/// One server: its container and the host port it is published on.
pub struct Server {
    /// What it is, for messages.
    pub name: &'static str,
    /// Its port on 127.0.0.1.
    pub port: u16,
    container: Container<GenericImage>,
    ready: fn(u16) -> Result<(), String>,
}

impl Server {
    /// The container's id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Stops the server (SIGTERM, then SIGKILL after `grace`); what it stored stays in the
    /// container.
    pub fn stop(&self, grace: Duration) {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        off_runtime(|| self.container.stop_with_timeout(Some(seconds)))
            .unwrap_or_else(|e| panic!("stop {}: {e}", self.name));
    }

    /// Starts the stopped server again, on the same port, and waits until it answers.
    pub fn start(&self) {
        off_runtime(|| {
            self.container.start().unwrap_or_else(|e| panic!("start {}: {e}", self.name));
            wait_ready(self.name, self.port, self.ready, &self.container);
        });
    }

    /// What the server printed (stdout and stderr), for a test's failure message.
    pub fn logs(&self) -> String {
        off_runtime(|| logs(&self.container))
    }
}

/// This process's NATS server (JetStream, its store in the container).
pub fn nats() -> &'static Server {
    static NATS: OnceLock<Server> = OnceLock::new();
    NATS.get_or_init(|| {
        let request = GenericImage::new("steward-local/nats", "latest")
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
            .with_cmd(["nats-server", "-js", "-sd", "/data", "-a", "0.0.0.0", "-p", "4222"]);
        start_on("nats", request, crate::free_port(), Some(4222), nats_ready)
    })
}

/// This process's S3 server (s3s-fs, its data in the run's directory).
pub fn s3() -> &'static Server {
    static S3: OnceLock<Server> = OnceLock::new();
    S3.get_or_init(|| {
        start_on(
            "s3",
            s3_request(&run().dir.join("s3")),
            crate::free_port(),
            Some(9000),
            http_ready,
        )
    })
}

fn s3_request(data: &Path) -> ContainerRequest<GenericImage> {
    let data = make_dir(data);
    GenericImage::new("steward-local/s3", "latest")
        .with_cmd([
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--access-key",
            S3_ACCESS_KEY,
            "--secret-key",
            S3_SECRET_KEY,
            "/data",
        ])
        .with_mount(Mount::bind_mount(path_text(&data), "/data"))
}

/// This process's S3 server with Object Lock (moto: versions, retention, legal holds; s3s-fs
/// has none), in memory (any key).
pub fn moto() -> &'static Server {
    static MOTO: OnceLock<Server> = OnceLock::new();
    MOTO.get_or_init(|| {
        let request = GenericImage::new("steward-local/moto", "latest");
        start_on("moto", request, crate::free_port(), Some(5000), http_ready)
    })
}

/// This process's SMTP server (aiosmtpd, writing every message to the run's maildir).
pub fn smtp() -> &'static Server {
    static SMTP: OnceLock<Server> = OnceLock::new();
    SMTP.get_or_init(|| {
        let request = smtp_request(&run().dir.join("maildir"));
        start_on("smtp", request, crate::free_port(), Some(2525), smtp_ready)
    })
}

fn smtp_request(maildir: &Path) -> ContainerRequest<GenericImage> {
    let maildir = make_dir(maildir);
    // Python's Maildir makes its subdirectories only with the directory itself, which the
    // bind mount already is.
    for sub in ["cur", "new", "tmp"] {
        make_dir(&maildir.join(sub));
    }
    GenericImage::new("steward-local/smtp", "latest")
        .with_mount(Mount::bind_mount(path_text(&maildir), "/maildir"))
}

/// A server of one test's own, for taking it away and bringing it back without touching
/// what other tests use: a container of its own from the same image, whatever
/// `STEWARD_TEST_SERVERS` says, removed when dropped (and by the run's reaper if the process
/// dies first). Its data directory stays the caller's.
pub struct Own(Option<Server>);

impl Own {
    /// An S3 server on 127.0.0.1:`port` keeping its buckets in `dir` (made if missing).
    pub fn s3(port: u16, dir: &Path) -> Self {
        Self(Some(start_on("s3", s3_request(dir), port, Some(9000), http_ready)))
    }

    /// An SMTP server on 127.0.0.1:`port` writing each message to the maildir `dir`.
    pub fn smtp(port: u16, dir: &Path) -> Self {
        Self(Some(start_on("smtp", smtp_request(dir), port, Some(2525), smtp_ready)))
    }

    /// A nats-server started as `command` (the program first: `nats-server`, or `sh` and a
    /// launcher script) on the host's network, listening on 127.0.0.1:`port` as `command`
    /// says: the [`crate::NatsServer`] of a test, in a container. On the host's network, a
    /// cluster's routes and a leaf's link reach the other servers on loopback as between
    /// processes, and the ports are the ones the test chose. Each of `paths` (its store, its
    /// configuration, a launcher) is mounted at the same path inside, so that the command's
    /// paths mean the same there; `env` is its whole environment besides the image's.
    pub fn nats_on_host(
        port: u16,
        command: &[String],
        env: &[(String, String)],
        paths: &[PathBuf],
    ) -> Self {
        // The network mode set directly: testcontainers' `with_network` creates a network of
        // that name when the engine does not list it, as Podman does not list `host`.
        let mut request = GenericImage::new("steward-local/nats", "latest")
            .with_cmd(command.iter().cloned())
            .with_host_config_modifier(|host| host.network_mode = Some("host".into()));
        for path in paths {
            let path = path_text(path);
            request = request.with_mount(Mount::bind_mount(path.clone(), path));
        }
        for (name, value) in env {
            request = request.with_env_var(name.clone(), value.clone());
        }
        Self(Some(start_on("nats", request, port, None, nats_ready)))
    }

    /// SIGKILLs the server: no goodbye to its clients, nothing flushed. [`Server::start`]
    /// brings it back on the same port with what it had written. Returns when the container
    /// has stopped.
    pub fn kill(&self) {
        // A server that already exited cannot be killed (the engine refuses): it is down all
        // the same.
        let _ = crate::docker::try_docker(&["kill", self.id()]);
        crate::docker::docker(&["wait", self.id()]);
    }

    /// Freezes the server (the engine's pause: the cgroup freezer, as SIGSTOP would):
    /// connections stay open and nothing is answered. [`Own::resume`] lets it go on.
    pub fn pause(&self) {
        crate::docker::docker(&["pause", self.id()]);
    }

    /// Lets a [`Own::pause`]d server go on.
    pub fn resume(&self) {
        crate::docker::docker(&["unpause", self.id()]);
    }
}

impl std::ops::Deref for Own {
    type Target = Server;

    fn deref(&self) -> &Server {
        self.0.as_ref().unwrap_or_else(|| unreachable!("taken only when dropped"))
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        // testcontainers removes it on drop, on a runtime of its own: not on this thread if
        // an async test drops it.
        if let Some(server) = self.0.take() {
            off_runtime(move || drop(server));
        }
    }
}

/// This process's plain OCI registry.
pub fn registry() -> &'static Server {
    static REGISTRY: OnceLock<Server> = OnceLock::new();
    REGISTRY.get_or_init(|| start_registry("registry", false))
}

/// This process's OCI registry with basic auth (the test bed's user and password).
pub fn auth_registry() -> &'static Server {
    static REGISTRY: OnceLock<Server> = OnceLock::new();
    REGISTRY.get_or_init(|| start_registry("registry-auth", true))
}

fn start_registry(name: &'static str, auth: bool) -> Server {
    let dir = make_dir(&run().dir.join(name));
    let mut config = String::from(
        "version: 0.1\nlog: {level: warn}\nstorage:\n  filesystem: {rootdirectory: /var/lib/registry}\n  delete: {enabled: true}\nhttp: {addr: 0.0.0.0:5000}\n",
    );
    let mut request = GenericImage::new("steward-local/registry", "latest").with_mount(
        Mount::bind_mount(path_text(&dir.join("config.yml")), "/etc/docker/registry/config.yml"),
    );
    if auth {
        config.push_str(
            "auth: {htpasswd: {realm: steward-test, path: /etc/docker/registry/htpasswd}}\n",
        );
        write(&dir.join("htpasswd"), REGISTRY_HTPASSWD);
        request = request.with_mount(Mount::bind_mount(
            path_text(&dir.join("htpasswd")),
            "/etc/docker/registry/htpasswd",
        ));
    }
    write(&dir.join("config.yml"), &config);
    // Podman takes a registry on 127.0.0.1 as plain http only on the ports its configuration
    // lists (the test bed's); Docker on any. Docker-leg binaries drive Podman too (the
    // engine's `podman` tests pull through it), so the registries take those ports whenever
    // the test bed lists them: two per binary, twelve in all (two binaries at a time).
    let port = match crate::testbed::var("STEWARD_TEST_PODMAN_PLAIN_HTTP_PORTS") {
        Some(_) => crate::testbed::podman_plain_http_port(),
        None => crate::free_port(),
    };
    start_on(name, request, port, Some(5000), http_ready)
}

/// Starts `request` labelled with the run, its `container_port` published on `port` of
/// 127.0.0.1 (only; `None`: on the host's network, listening on `port` itself), and waits
/// until `ready` says it answers there.
fn start_on(
    name: &'static str,
    request: impl Into<ContainerRequest<GenericImage>>,
    port: u16,
    container_port: Option<u16>,
    ready: fn(u16) -> Result<(), String>,
) -> Server {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let request = request.into();
    // testcontainers pulls an image the engine lacks, from Docker Hub by this name: never
    // that. Podman gets Docker's copy; Docker must have built it.
    let image = format!("{}:{}", request.image().name(), request.image().tag());
    match std::env::var("DOCKER_HOST") {
        Ok(host) if crate::on_podman() => {
            let socket = host.strip_prefix("unix://").unwrap_or(&host);
            crate::podman::copy_images_from_docker(socket, &[&image]);
        }
        _ => assert!(
            crate::docker::try_docker(&["image", "inspect", "-f", "{{.Id}}", &image]).is_some(),
            "{image} is not in the engine's store: run infra/testbed/stack-images.sh stand-ins"
        ),
    }
    let run = run();
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let mut request = request
        .with_container_name(format!("steward-test-{name}-{}-{n}", run.id))
        .with_label(RUN_LABEL, run.id.clone())
        .with_startup_timeout(READY_BOUND);
    if let Some(container_port) = container_port {
        request = request
            .with_mapped_port(port, container_port.tcp())
            // testcontainers publishes on every address; the network rule is loopback only.
            .with_host_config_modifier(|host| {
                for bindings in host.port_bindings.iter_mut().flat_map(|b| b.values_mut()).flatten()
                {
                    for binding in bindings {
                        binding.host_ip = Some("127.0.0.1".into());
                    }
                }
            });
    }
    // Waited for on the helper thread too: a server that never answers is dropped there
    // (testcontainers removes it on a runtime of its own, which an async test's thread
    // cannot enter: a panic in that drop would abort the whole binary).
    let container = off_runtime(|| {
        let container =
            request.start().unwrap_or_else(|e| panic!("start the {name} container: {e}"));
        wait_ready(name, port, ready, &container);
        container
    });
    Server { name, port, container, ready }
}

/// Waits until `ready` says the server answers on `port`; fails with what the container
/// printed when it does not within [`READY_BOUND`], or at once when it has exited. Blocking
/// testcontainers calls: off an async test's runtime ([`off_runtime`]).
fn wait_ready(
    name: &str,
    port: u16,
    ready: fn(u16) -> Result<(), String>,
    container: &Container<GenericImage>,
) {
    let deadline = std::time::Instant::now() + READY_BOUND;
    loop {
        let why = match ready(port) {
            Ok(()) => return,
            Err(why) => why,
        };
        let exited = !container.is_running().unwrap_or(true);
        if exited || std::time::Instant::now() >= deadline {
            let what = if exited { "exited" } else { "did not answer in time" };
            panic!(
                "the {name} container {what} (127.0.0.1:{port}: {why}); it printed:\n{}",
                logs(container)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the container printed (stdout, then stderr).
fn logs(container: &Container<GenericImage>) -> String {
    let text = |r: Result<Vec<u8>, testcontainers::TestcontainersError>| match r {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(unreadable: {e})"),
    };
    format!("{}{}", text(container.stdout_to_vec()), text(container.stderr_to_vec()))
}

// Each probe speaks the server's protocol: the engine's port proxy accepts a connection before
// the server in the container listens, so a connection alone proves nothing.

fn nats_ready(port: u16) -> Result<(), String> {
    first_line(port).and_then(|l| if l.starts_with("INFO ") { Ok(()) } else { Err(l) })
}

fn smtp_ready(port: u16) -> Result<(), String> {
    first_line(port).and_then(|l| if l.starts_with("220") { Ok(()) } else { Err(l) })
}

fn http_ready(port: u16) -> Result<(), String> {
    crate::http_get_why(SocketAddr::from(([127, 0, 0, 1], port)), "/").map(|_| ())
}

fn first_line(port: u16) -> Result<String, String> {
    let bound = Duration::from_secs(2);
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), bound)
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(bound)).map_err(|e| format!("socket: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        Err("closed before a greeting".into())
    } else {
        Ok(line)
    }
}

/// Runs `f` on a thread of its own: testcontainers' blocking calls run their own Tokio
/// runtime, which must not be entered from a thread already in one (an async test's).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
}

/// This process's run: its id, its directory, and the reaper that removes both.
struct Run {
    id: String,
    dir: PathBuf,
    /// The write end of the reaper's pipe: closed only when this process ends.
    _pipe: Mutex<ChildStdin>,
    _reaper: Mutex<Child>,
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        // The process id leads: a run whose process is gone is known by it (below).
        let id = format!("{}-{}", std::process::id(), crate::unique_name("run"));
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        let version =
            Command::new("docker").args(["version", "-f", "{{.Server.Version}}"]).output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "the servers need the docker CLI and an engine that answers it: {version:?}"
        );
        sweep_dead_runs();
        make_dir(&dir);
        // Reads until this process's end closes the pipe, then removes the run's containers
        // (anonymous volumes too) and its directory; once more a little later, for a container
        // whose creation was under way. In a process group of its own, so that a Ctrl-C to the
        // tests does not end it before it has cleaned up. A reaper killed with its process
        // (a whole cgroup or session killed) leaves the run to the next run's sweep.
        let script = r#"trap '' INT TERM HUP
cat >/dev/null
for pass in 1 2; do
  ids=$(docker ps -aq --filter "label=$1=$2")
  [ -z "$ids" ] || docker rm -fv $ids >/dev/null 2>&1
  [ "$pass" = 2 ] || sleep 3
done
rm -rf -- "$3""#;
        use std::os::unix::process::CommandExt as _;
        let mut reaper = Command::new("sh")
            .args(["-c", script, "steward-test-reaper", RUN_LABEL, &id])
            .arg(&dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the servers' reaper (sh): {e}"));
        let pipe = reaper.stdin.take().unwrap_or_else(|| panic!("the reaper has no stdin"));
        Run { id, dir, _pipe: Mutex::new(pipe), _reaper: Mutex::new(reaper) }
    })
}

/// Removes the containers and directories of runs whose process is gone and whose reaper did
/// not clean up (both killed at once).
fn sweep_dead_runs() {
    let dead = |run: &str| {
        let pid = run.split('-').next().and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let format = format!("{{{{.ID}}}} {{{{.Label \"{RUN_LABEL}\"}}}}");
    let listed = Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("label={RUN_LABEL}"), "--format", &format])
        .output();
    if let Ok(out) = listed {
        let text = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, run)| dead(run))
            .map(|(id, _)| id)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-fv"]).args(&ids).output();
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(DIR_PREFIX).is_some_and(dead) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Makes `dir` for a server to write in: on the rootless leg, the rootless user's (a
/// container's root is that user there).
fn make_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
    crate::give_to_rootless_user(dir);
    dir.to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap_or_else(|| panic!("{path:?} is not UTF-8")).to_owned()
}
