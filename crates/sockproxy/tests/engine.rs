//! The proxy in front of the real Docker engine: each role's socket lets through what its
//! service's code calls (through `steward_engine::Engine`, as the services make them,
//! including exec output, stdin and archives over the upgrade and streaming paths) and
//! answers 403 to the rest (raw bollard calls and the Docker CLI).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    RemoveContainerOptions, StartContainerOptions,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use steward_engine::Engine;
use steward_engine::ExecSpec;
use steward_sockproxy::{proxy, Role};
use steward_testkit::docker::{docker, try_docker, Container, SwapLeftovers};
use steward_testkit::unique_name;
use tokio_util::sync::CancellationToken;

const BUSYBOX: &str = "steward-test/busybox:latest";

/// One socket per role in a temporary directory, served in this process until dropped.
struct Proxies {
    dir: PathBuf,
    cancel: CancellationToken,
}

impl Proxies {
    fn start() -> Self {
        Self::start_before(steward_testkit::stall::engine_socket())
    }

    /// Proxies in front of the engine at `upstream` (a socket path).
    fn start_before(upstream: PathBuf) -> Self {
        // The proxy's refusals and errors, with STEWARD_LOG=debug for every forwarded call.
        let filter = tracing_subscriber::EnvFilter::try_from_env("STEWARD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let dir = std::env::temp_dir().join(unique_name("sockproxy"));
        std::fs::create_dir_all(&dir).expect("socket directory");
        let cancel = CancellationToken::new();
        for role in Role::ALL {
            let listener = proxy::bind(&dir.join(format!("{role}.sock"))).expect("bind");
            tokio::spawn(proxy::serve(listener, role, upstream.clone(), cancel.clone()));
        }
        Self { dir, cancel }
    }

    fn host(&self, role: Role) -> String {
        format!("unix://{}", self.dir.join(format!("{role}.sock")).display())
    }

    fn engine(&self, role: Role) -> Engine {
        Engine::new(self.host(role), Duration::from_secs(20))
    }

    fn bollard(&self, role: Role) -> bollard::Docker {
        let path = self.dir.join(format!("{role}.sock"));
        bollard::Docker::connect_with_unix(
            &path.to_string_lossy(),
            20,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("bollard client")
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts of calls checked, for the record.
#[derive(Default)]
struct Tally {
    allowed: usize,
    refused: usize,
}

impl Tally {
    fn ok<T, E: std::fmt::Debug>(&mut self, what: &str, r: Result<T, E>) -> T {
        self.allowed += 1;
        r.unwrap_or_else(|e| panic!("{what} should pass the proxy: {e:?}"))
    }

    /// A refusal by the proxy: 403 with its message, from bollard or from the engine crate.
    fn refused<T: std::fmt::Debug, E: std::fmt::Display>(&mut self, what: &str, r: Result<T, E>) {
        self.refused += 1;
        match r {
            Ok(v) => panic!("{what} should be refused, got {v:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("steward-sockproxy") && e.contains("403"), "{what}: {e}");
            }
        }
    }
}

fn busybox(name: &str, labels: &[&str]) -> Container {
    let mut args = vec![];
    for l in labels {
        args.extend(["--label", l]);
    }
    // `sleep` as PID 1 ignores SIGTERM: stops would wait out the default 10 s.
    args.extend(["--stop-timeout", "1", BUSYBOX, "sleep", "600"]);
    Container::run(name, &args)
}

fn create_body(host: bollard::models::HostConfig) -> bollard::models::ContainerCreateBody {
    bollard::models::ContainerCreateBody {
        image: Some(BUSYBOX.into()),
        cmd: Some(vec!["true".into()]),
        host_config: Some(host),
        ..Default::default()
    }
}

fn named(name: &str) -> Option<CreateContainerOptions> {
    Some(CreateContainerOptions { name: Some(name.into()), ..Default::default() })
}

fn exec_config(cmd: &[&str]) -> bollard::models::ExecConfig {
    bollard::models::ExecConfig {
        attach_stdout: Some(true),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_what_its_service_calls_and_nothing_else() {
    let started = Instant::now();
    let proxies = Proxies::start();
    let mut tally = Tally::default();
    let tag = unique_name("sockproxy");
    let app = busybox(&format!("{tag}-app"), &[&format!("steward.test={tag}")]);
    let guard = busybox(&format!("{tag}-guard"), &["steward.sockproxy=true"]);
    let never = format!("{tag}-never");
    let ours = |labels: &std::collections::HashMap<String, String>| {
        labels.get("steward.test").is_some_and(|v| *v == tag)
    };

    // Watcher: lists, inspects, reads digests; nothing that changes anything.
    let watcher = proxies.engine(Role::Watcher);
    tally.ok("ping", watcher.ping(Duration::from_secs(5)).await);
    tally.ok("version", watcher.version().await);
    let listed = tally.ok("running_containers", watcher.running_containers(ours).await);
    assert_eq!(listed.len(), 1, "{listed:?}");
    tally.ok("container_id", watcher.container_id(&app.name).await).expect("found");
    tally.ok("repo_digests", watcher.repo_digests(&listed[0].image_id).await);
    let raw = proxies.bollard(Role::Watcher);
    tally.refused(
        "create",
        raw.create_container(named(&never), create_body(Default::default())).await,
    );
    tally.refused("exec", raw.create_exec(&app.name, exec_config(&["true"])).await);
    let remove = Some(RemoveContainerOptions { force: true, ..Default::default() });
    tally.refused("delete", raw.remove_container(&app.name, remove.clone()).await);
    tally.refused("start", raw.start_container(&app.name, None::<StartContainerOptions>).await);
    tally.refused("stop", raw.stop_container(&app.name, None).await);
    let pull = Some(CreateImageOptions { from_image: Some(BUSYBOX.into()), ..Default::default() });
    let pulled: Result<Vec<_>, _> = raw.create_image(pull, None, None).try_collect().await;
    tally.refused("pull", pulled);
    let archive = Some(DownloadFromContainerOptions { path: "/etc".into() });
    let read: Result<Vec<_>, _> =
        raw.download_from_container(&app.name, archive).try_collect().await;
    tally.refused("archive read", read);
    // The Docker CLI (versioned paths, its own ping first) through the watcher's socket.
    let cli = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(["-H", &proxies.host(Role::Watcher)])
            .args(args)
            .output()
            .expect("docker CLI")
    };
    let ps = cli(&["ps", "-q", "--filter", &format!("label=steward.test={tag}")]);
    tally.ok("docker ps", if ps.status.success() { Ok(()) } else { Err(ps) });
    for args in [vec!["exec", app.name.as_str(), "true"], vec!["run", "--rm", BUSYBOX, "true"]] {
        let out = cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        tally.refused(
            &format!("docker {}", args[0]),
            if out.status.success() { Ok(()) } else { Err(format!("403 {stderr}")) },
        );
        assert!(stderr.contains("steward-sockproxy"), "{stderr}");
    }
    eprintln!("watcher: {:.1} s", started.elapsed().as_secs_f64());

    // Health: reads, and `pg_isready` by exec (busybox has none: the exec itself passes, and
    // its exit code comes back), nothing else.
    let health = proxies.engine(Role::Health);
    tally.ok("containers", health.containers(ours).await);
    let view = tally.ok("health_view", health.health_view(&app.name).await);
    assert!(view.running);
    let cmd = ["pg_isready", "-h", "127.0.0.1", "-t", "1"].map(str::to_owned).to_vec();
    let out = tally.ok("exec pg_isready", health.exec(&app.name, cmd, 3).await);
    assert_ne!(out.exit_code, 0, "busybox has no pg_isready: {out:?}");
    tally.refused(
        "exec sh",
        health.exec(&app.name, vec!["sh".into(), "-c".into(), "id".into()], 3).await,
    );
    let raw = proxies.bollard(Role::Health);
    tally.refused(
        "create",
        raw.create_container(named(&never), create_body(Default::default())).await,
    );
    tally.refused("delete", raw.remove_container(&app.name, remove.clone()).await);
    eprintln!("health: {:.1} s", started.elapsed().as_secs_f64());

    // Updater: an exec with output through the upgrade, logs, an archive read, a whole
    // replace (inspect, create, network, stop, rename, start) and its finish (remove).
    let updater = proxies.engine(Role::Updater);
    let echo = vec!["echo".into(), "through the proxy".into()];
    let out = tally.ok("exec echo", updater.exec(&app.name, echo, 3).await);
    assert_eq!(
        (out.exit_code, out.tail.as_slice()),
        (0, ["through the proxy".to_owned()].as_slice())
    );
    tally.ok("logs", updater.logs_tail(&app.name, 5).await);
    let tar: Vec<Bytes> =
        updater.download_path(&app.name, "/bin/sh").try_collect().await.expect("archive read");
    tally.allowed += 1;
    assert!(tar.iter().map(Bytes::len).sum::<usize>() > 512);
    let _leftovers = SwapLeftovers(app.name.clone());
    let replaced = tally.ok("replace", updater.replace(&app.name, BUSYBOX).await);
    tally.ok("finish", updater.finish(&replaced).await);
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &app.name]), replaced.new_id);
    tally.refused(
        "exec in the proxy's container",
        updater.exec(&guard.name, vec!["true".into()], 3).await,
    );
    let raw = proxies.bollard(Role::Updater);
    let socket = bollard::models::HostConfig {
        binds: Some(vec!["/var/run/docker.sock:/var/run/docker.sock".into()]),
        ..Default::default()
    };
    tally.refused(
        "create binding the socket",
        raw.create_container(named(&never), create_body(socket)).await,
    );
    let borrow = bollard::models::HostConfig {
        volumes_from: Some(vec![guard.name.clone()]),
        ..Default::default()
    };
    tally.refused(
        "create with the proxy's volumes",
        raw.create_container(named(&never), create_body(borrow)).await,
    );
    // The write-back: a helper bind-mounting a project directory, a file read and written.
    let project = std::env::temp_dir().join(unique_name("sockproxy-project"));
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(project.join(".env"), "APP_IMAGE=app:1.0\n").expect("write");
    steward_testkit::give_to_rootless_user(&project);
    let dir = tally.ok(
        "open a project directory",
        updater.open_project_dir(&project.to_string_lossy(), &app.name, &tag).await,
    );
    let file = tally.ok("archive read", dir.read(".env").await).expect("the file");
    let file = steward_engine::ProjectFile { content: b"APP_IMAGE=app:1.1\n".to_vec(), ..file };
    tally.ok("archive write", dir.write(".env", &file).await);
    tally.ok("close", dir.close().await);
    let written = std::fs::read_to_string(project.join(".env")).expect("read");
    let _ = std::fs::remove_dir_all(&project);
    assert_eq!(written, "APP_IMAGE=app:1.1\n");
    eprintln!("updater: {:.1} s", started.elapsed().as_secs_f64());

    // Backup: stdin and stdout of execs, archives both ways, a helper with another
    // container's volumes, a scratch container; no host access in what it creates.
    let backup = proxies.engine(Role::Backup);
    let write = ExecSpec {
        cmd: vec!["sh".into(), "-c".into(), "mkdir -p /copy && cat > /in.txt".into()],
        ..Default::default()
    };
    let input = futures::stream::iter([
        Ok(Bytes::from_static(b"dumped ")),
        Ok(Bytes::from_static(b"bytes")),
    ]);
    let fed = tally.ok("exec stdin", backup.exec_stdin(&app.name, &write, input, 3).await);
    assert_eq!(fed.exit_code, 0, "{fed:?}");
    // Read whole before writing: the engine locks a container for an archive write, so a
    // write fed by a read of the same container can deadlock (without the proxy as well).
    let copy: Vec<Bytes> =
        backup.download_path(&app.name, "/in.txt").try_collect().await.expect("read");
    tally.allowed += 1;
    let copy = futures::stream::iter(copy.into_iter().map(Ok));
    tally.ok("archive write", backup.upload_tar(&app.name, "/copy", copy).await);
    let read = ExecSpec { cmd: vec!["cat".into(), "/copy/in.txt".into()], ..Default::default() };
    let mut stream = tally.ok("exec stdout", backup.exec_stdout(&app.name, &read, 3).await);
    let mut text = vec![];
    while let Some(chunk) = stream.stdout.next().await {
        text.extend_from_slice(&chunk.expect("stdout"));
    }
    assert_eq!(String::from_utf8_lossy(&text), "dumped bytes");
    assert_eq!(stream.finish().await.expect("exit").exit_code, 0);
    let helper = backup
        .run_with_volumes_of(
            &app.name,
            BUSYBOX,
            vec!["sh".into(), "-c".into()],
            vec!["echo helped".into()],
            3,
        )
        .await;
    let helper = tally.ok("helper with volumes", helper);
    assert_eq!(helper.exit_code, 0, "{helper:?}");
    let scratch = format!("{tag}-scratch");
    let id = tally.ok(
        "scratch",
        backup.start_scratch(&scratch, "steward-test/app:v1", vec!["A=1".into()]).await,
    );
    tally.ok("remove scratch", backup.remove(&id, true).await);
    tally.ok("stop", backup.stop(&app.name, 1).await);
    tally.ok("start", backup.start(&app.name).await);
    let helper =
        backup.run_with_volumes_of(&guard.name, BUSYBOX, vec!["true".into()], vec![], 3).await;
    tally.refused("helper with the proxy's volumes", helper);
    let stolen: Result<Vec<_>, _> = backup.download_path(&guard.name, "/").try_collect().await;
    tally.refused("archive read of the proxy's container", stolen);
    let raw = proxies.bollard(Role::Backup);
    for (what, host) in [
        (
            "a host bind",
            bollard::models::HostConfig {
                binds: Some(vec!["/etc:/host".into()]),
                ..Default::default()
            },
        ),
        (
            "privileged",
            bollard::models::HostConfig { privileged: Some(true), ..Default::default() },
        ),
        (
            "host network",
            bollard::models::HostConfig { network_mode: Some("host".into()), ..Default::default() },
        ),
    ] {
        tally.refused(
            &format!("create with {what}"),
            raw.create_container(named(&never), create_body(host)).await,
        );
    }
    let pull = Some(CreateImageOptions { from_image: Some(BUSYBOX.into()), ..Default::default() });
    let pulled: Result<Vec<_>, _> = raw.create_image(pull, None, None).try_collect().await;
    tally.refused("pull", pulled);
    let privileged = bollard::models::ExecConfig { privileged: Some(true), ..exec_config(&["id"]) };
    tally.refused("privileged exec", raw.create_exec(&app.name, privileged).await);
    eprintln!("backup: {:.1} s", started.elapsed().as_secs_f64());

    // No refused create left anything behind.
    assert_eq!(try_docker(&["inspect", &never]), None);
    drop(proxies);
    eprintln!(
        "{} calls allowed, {} refused, in {:.1} s",
        tally.allowed,
        tally.refused,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_each_socket_and_passes_its_healthcheck() {
    let dir = std::env::temp_dir().join(unique_name("sockproxy-bin"));
    std::fs::create_dir_all(&dir).expect("dir");
    let sockets = format!("watcher={0}/w.sock,updater={0}/u.sock", dir.display());
    let bin = env!("CARGO_BIN_EXE_steward-sockproxy");
    let mut child = tokio::process::Command::new(bin)
        .env("STEWARD_SOCKPROXY_SOCKETS", &sockets)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let healthy = |sockets: String| async move {
        let out = tokio::process::Command::new(bin)
            .arg("healthcheck")
            .env("STEWARD_SOCKPROXY_SOCKETS", sockets)
            .output()
            .await
            .expect("healthcheck");
        out.status.success()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(sockets.clone()).await {
        assert!(Instant::now() < deadline, "the proxy never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watcher = Engine::new(format!("unix://{}/w.sock", dir.display()), Duration::from_secs(10));
    watcher.ping(Duration::from_secs(5)).await.expect("ping through the binary");
    // A bad configuration is one line naming the variable, exit code 2.
    let bad = std::process::Command::new(bin)
        .env("STEWARD_SOCKPROXY_SOCKETS", "notifier=/tmp/x.sock")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("STEWARD_SOCKPROXY_SOCKETS"));
    // SIGTERM: it stops and removes its sockets.
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert!(!dir.join("w.sock").exists() && !dir.join("u.sock").exists());
    assert!(!healthy(sockets).await);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On Podman without systemd the engine runs a due healthcheck through libpod's API
/// (`steward_engine`'s `podman` module): the roles whose services read health let that call
/// through (without it every health gate behind the proxy on Podman timed out at `starting`),
/// and the watcher's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_podman_healthcheck_run_passes_the_roles_that_read_health() {
    use steward_testkit::podman::{cli, pushed_app, Containers, Names};
    let Some(socket) = steward_testkit::podman::socket() else { return };
    let proxies = Proxies::start_before(PathBuf::from(socket));
    let (image, digest) = pushed_app("v1");
    let tagged = format!("{image}:1.0");
    let _names = Names(vec![tagged.clone(), format!("{image}@{digest}")]);
    let pull = cli(&["pull", "-q", &tagged]);
    assert!(pull.status.success(), "podman pull: {}", String::from_utf8_lossy(&pull.stderr));
    let name = unique_name("sockproxy-podman-hc");
    let _containers = Containers(vec![name.clone()]);
    let run = cli(&["run", "-d", "--name", &name, &tagged]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));

    let mut tally = Tally::default();
    for role in [Role::Health, Role::Updater, Role::Backup] {
        let engine = proxies.engine(role);
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = loop {
            let view = tally.ok("health_view on Podman", engine.health_view(&name).await);
            if view.health.as_deref() == Some("healthy") || Instant::now() >= deadline {
                break view.health;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(health.as_deref(), Some("healthy"), "through the {role} socket");
    }
    // The watcher never reads health: its socket refuses the run.
    let path = format!("/v4.0.0/libpod/containers/{name}/healthcheck");
    let watcher = proxies.dir.join("watcher.sock");
    let status =
        tokio::task::spawn_blocking(move || steward_testkit::podman::get_status(&watcher, &path))
            .await
            .expect("raw GET")
            .unwrap_or_else(|e| panic!("GET through the watcher's socket: {e}"));
    tally.refused += 1;
    assert_eq!(status, 403, "the watcher's socket let a healthcheck run through");
    assert_eq!((tally.allowed > 0, tally.refused), (true, 1));
}

/// A compose project's containers, network, volumes and directory, removed when dropped.
struct ComposeProject {
    name: String,
    dir: PathBuf,
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        for id in try_docker(&["ps", "-aq", "--filter", &filter]).unwrap_or_default().lines() {
            let _ = try_docker(&["rm", "-f", "-v", id]);
        }
        let _ = try_docker(&["network", "rm", &format!("{}_default", self.name)]);
        for v in ["data", "opts", "sockets"] {
            let _ = try_docker(&["volume", "rm", "-f", &format!("{}_{v}", self.name)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `docker-compose` (the test bed's 1.29, the deployer's) against the deployer's socket: the
/// commands the deployer runs on its projects pass (`config`, `up -d` with a named volume and
/// the project's network, `run --rm --no-deps -T` attached, `up` recreating a changed service,
/// `rm -s -f`); a compose file that binds the engine's socket, that makes a volume binding a
/// host path through driver options, or that mounts a volume of the proxy's container (where
/// the other roles' sockets are) is refused at its create, and nothing of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_runs_a_project_through_the_deployer_socket_but_never_reaches_a_socket() {
    let proxies = Proxies::start();
    let name = unique_name("sockproxy-compose").replace('-', "");
    let project = ComposeProject { dir: std::env::temp_dir().join(&name), name };
    std::fs::create_dir_all(&project.dir).expect("project dir");
    let file = |note: &str, volumes: &str, declared: &str| {
        format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [\"sleep\", \"600\"]\n    stop_grace_period: 1s\n    environment: [NOTE={note}]\n    volumes: [{volumes}]\nvolumes:\n{declared}"
        )
    };
    let plain = |note: &str| file(note, "\"data:/data\"", "  data: {}\n");
    let host = proxies.host(Role::Deployer);
    let compose = |args: &[&str]| {
        let out = std::process::Command::new("docker-compose")
            .current_dir(&project.dir)
            .env("DOCKER_HOST", &host)
            .args(["-p", &project.name])
            .args(args)
            .output()
            .expect("docker-compose");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let write = |text: String| std::fs::write(project.dir.join("docker-compose.yml"), text);
    let running = || {
        let filter = format!("label=com.docker.compose.project={}", project.name);
        docker(&["ps", "-q", "--filter", &filter])
    };
    write(plain("a")).expect("write");
    let steps: [(&str, &[&str]); 3] = [
        ("config", &["config", "--hash=*"]),
        ("up", &["up", "-d", "--no-deps", "web"]),
        ("run", &["run", "--rm", "--no-deps", "-T", "web", "touch", "/data/ran"]),
    ];
    for (what, args) in steps {
        let (ok, err) = compose(args);
        assert!(ok, "{what} through the deployer's socket: {err}");
    }
    let (ok, err) = compose(&["run", "--rm", "--no-deps", "-T", "web", "ls", "/data/ran"]);
    assert!(ok, "the one-off's file is not in the project's volume: {err}");
    // A changed definition: compose stops, renames and replaces the container.
    write(plain("b")).expect("write");
    let (ok, err) = compose(&["up", "-d", "--no-deps", "web"]);
    assert!(ok, "up of a changed definition: {err}");
    let env = docker(&["inspect", "-f", "{{.Config.Env}}", running().trim()]);
    assert!(env.contains("NOTE=b"), "not recreated: {env}");
    let (ok, err) = compose(&["rm", "-s", "-f", "web"]);
    assert!(ok, "rm -s -f: {err}");

    // The proxy's container (labelled as the stack labels it) and the volume it holds.
    let proxy_volume = format!("{}_sockets", project.name);
    let proxy_name = format!("{}-proxy", project.name);
    let _proxy = Container::run(
        &proxy_name,
        &[
            "--label",
            "steward.sockproxy=true",
            "-v",
            &format!("{proxy_volume}:/run/steward-docker"),
            "--stop-timeout",
            "1",
            BUSYBOX,
            "sleep",
            "600",
        ],
    );
    let hostile = [
        (
            "a bind of the socket",
            file("c", "\"/var/run/docker.sock:/var/run/docker.sock\"", "  data: {}\n"),
        ),
        (
            "a volume binding /var/run through driver options",
            file(
                "c",
                "\"opts:/engine\"",
                "  opts:\n    driver_opts: {type: none, o: bind, device: /var/run}\n",
            ),
        ),
        (
            "the proxy's volume",
            file(
                "c",
                "\"sockets:/s\"",
                &format!("  sockets:\n    external: true\n    name: {proxy_volume}\n"),
            ),
        ),
    ];
    for (what, text) in hostile {
        write(text).expect("write");
        let (ok, err) = compose(&["up", "-d", "--no-deps", "web"]);
        assert!(!ok, "{what} went through");
        assert!(err.contains("steward-sockproxy"), "{what}: not the proxy's refusal: {err}");
        assert!(running().trim().is_empty(), "{what}: a container runs");
    }
}

/// `POST path` with `body` on the Unix socket at `socket` (HTTP/1.1, the connection closed
/// after): the status. For bodies no client library sends.
async fn raw_post(socket: &std::path::Path, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut answer));
    read.await.expect("answered in time").expect("read");
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The engine decodes JSON as Go does (a key matches a field whatever its case; a key given
/// twice is merged): a bind of the engine's socket spelled so that the checks did not see it
/// never reaches the engine. Each of these was created with the bind before (201). Spelled
/// otherwise, it is refused; given twice, the body goes on as the proxy read it (the last
/// `HostConfig`, empty): created without the bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_spelled_for_the_engine_but_not_for_the_checks_never_gets_its_bind() {
    let proxies = Proxies::start();
    let socket = proxies.dir.join(format!("{}.sock", Role::Deployer));
    let bind = r#"{"Binds": ["/var/run:/engine"]}"#;
    let bodies = [
        (format!(r#"{{"Image": "{BUSYBOX}", "Cmd": ["true"], "hostConfig": {bind}}}"#), 403),
        (
            format!(
                r#"{{"Image": "{BUSYBOX}", "Cmd": ["true"], "HostConfig": {{"binds": ["/var/run:/engine"]}}}}"#
            ),
            403,
        ),
        (
            format!(
                r#"{{"Image": "{BUSYBOX}", "Cmd": ["true"], "HostConfig": {bind}, "HostConfig": {{}}}}"#
            ),
            201,
        ),
    ];
    for (body, expected) in &bodies {
        let name = unique_name("sockproxy-smuggled");
        let status =
            raw_post(&socket, &format!("/v1.41/containers/create?name={name}"), body).await;
        let binds = try_docker(&["inspect", "-f", "{{json .HostConfig.Binds}}", &name]);
        if binds.is_some() {
            let _ = try_docker(&["rm", "-f", &name]);
        }
        assert_eq!(status, *expected, "{body}");
        assert!(
            binds.as_deref().is_none_or(|b| !b.contains("/var/run")),
            "created with the bind ({binds:?}): {body}"
        );
    }
}
