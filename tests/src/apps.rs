//! A watched app container in the test's scope, and waiting for events in the stream.

use std::time::{Duration, Instant};

use steward_bus::Bus;
use steward_events::Event;
use steward_testkit::docker::{push_app, registry, Container, ImageTag, SwapLeftovers};
use steward_testkit::{free_port, http_get, unique_name, wait_for};

/// Publishes what the watcher would on finding `to` for container `name` (running `image` at
/// `from`, digest-tracked): the event, whose correlation id names the flow.
pub async fn announce(bus: &Bus, name: &str, image: &str, from: &str, to: &str) -> Event {
    let event = Event::new(
        "steward-watcher/test",
        steward_events::ImageUpdated {
            container: name.to_owned(),
            image: image.to_owned(),
            current_digest: steward_events::Digest::parse(from).expect("digest"),
            new_digest: steward_events::Digest::parse(to).expect("digest"),
            new_tag: None,
            policy: None,
            versions: Default::default(),
        },
    );
    bus.publish(&event).await.expect("publish");
    event
}

/// The test's bus on a NATS server a container of the test publishes on loopback `port`,
/// once it takes connections; namespaced by `name`.
pub async fn bus_on_published_nats(port: u16, name: &str) -> steward_testkit::TestBus {
    wait_for("NATS", Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("nats://127.0.0.1:{port}");
    steward_testkit::TestBus::with_config(steward_testkit::bus_config(&url, name)).await
}

/// The settings (`-e` values) of an updater in a container reaching NATS as `nats` on the
/// test's network, in `bus`'s namespace, with health gate `health_timeout`.
pub fn contained_updater_settings(nats: &str, bus: &Bus, health_timeout: &str) -> Vec<String> {
    let ns = bus.namespace();
    vec![
        format!("STEWARD_NATS_URL=nats://{nats}:4222"),
        format!("STEWARD_STREAM={}", ns.stream),
        format!("STEWARD_SUBJECT_PREFIX={}", ns.prefix),
        format!("STEWARD_HEALTH_TIMEOUT={health_timeout}"),
        "STEWARD_LOG_FORMAT=pretty".to_owned(),
    ]
}

/// Waits until the stream holds an event of type `what`; every event stored by then. A read
/// that cannot finish (a server restarting) is retried; one slow read may overrun `bound` by
/// its own timeouts (seconds).
pub async fn wait_event(bus: &Bus, what: &str, bound: Duration) -> Vec<Event> {
    let deadline = Instant::now() + bound;
    loop {
        // A stream that cannot be read now (its server restarting, its cluster electing a
        // leader) is read again until the bound.
        let all = steward_testkit::try_stored_events(bus).await;
        if let Ok(all) = &all {
            if all.iter().any(|e| e.event_type() == what) {
                return all.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {what}; saw {:?}",
            all.map(|all| all.iter().map(Event::event_type).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The test app (v1) from the local registry, published on 127.0.0.1, watched in `scope`.
pub struct App {
    /// Container name.
    pub name: String,
    /// Image reference (in the local registry, unique to the test).
    pub image: String,
    /// Published port of its HTTP server.
    pub port: u16,
    /// The digest it runs (v1, as pushed).
    pub v1: String,
    _c: Container,
    _tag: ImageTag,
    _leftovers: SwapLeftovers,
}

/// Starts an [`App`] with update policy `policy`, no pre-update backup, and `labels` (where
/// `{port}` stands for the published port, e.g. for `steward.health.url`).
pub fn app(scope: &str, policy: &str, labels: &[String]) -> App {
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/e2e"));
    let tag = ImageTag(image.clone());
    let v1 = push_app("v1", &image);
    let name = unique_name("e2e");
    let port = free_port();
    let mut args = vec![
        "-p".to_owned(),
        format!("127.0.0.1:{port}:8080"),
        "--label".into(),
        "steward.enable=true".into(),
        "--label".into(),
        format!("steward.scope={scope}"),
        "--label".into(),
        format!("steward.update.policy={policy}"),
        "--label".into(),
        "steward.update.backup=false".into(),
    ];
    for l in labels {
        args.extend(["--label".to_owned(), l.replace("{port}", &port.to_string())]);
    }
    args.push(image.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Container::run(&name, &args);
    // Returns as soon as it serves; the bound is for a loaded CI machine (2 cores, the crash
    // campaigns starting several apps at once beside other binaries): 15 s ran out there once.
    wait_for("v1 served", Duration::from_secs(60), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    App { _leftovers: SwapLeftovers(name.clone()), name, image, port, v1, _c: c, _tag: tag }
}

/// A database (labelled for `pg_dump`, owner `app`) and an app with `/data` labelled as a
/// backup path, both in `scope`: what the backup tests back up and restore.
pub fn backed_up_pair(scope: &str) -> (Container, Container) {
    let scope_label = format!("steward.scope={scope}");
    let db = steward_testkit::docker::postgres(
        &format!("{scope}-db"),
        &[&scope_label, "steward.backup.postgres=true"],
        "app",
    );
    (db, backed_up_app(scope))
}

/// The app of [`backed_up_pair`] alone: `{scope}-app`, its `/data` volume labelled as a
/// backup path.
pub fn backed_up_app(scope: &str) -> Container {
    Container::run(
        &format!("{scope}-app"),
        &[
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            "steward.enable=true",
            "--label",
            "steward.backup.paths=/data",
            "-v",
            "/data",
            &format!("{}:v1", steward_testkit::testbed::require("STEWARD_TEST_APP_IMAGE")),
        ],
    )
}

/// `psql` as the database user of [`backed_up_pair`] in its database; the output, trimmed.
pub fn pair_psql(db: &str, sql: &str) -> String {
    steward_testkit::docker::docker(&["exec", db, "psql", "-U", "app", "-d", "app", "-tAc", sql])
}

/// The first `update.pending` among `events`, with its event.
pub fn pending_in(events: &[Event]) -> Option<(Event, steward_events::UpdatePending)> {
    events.iter().find_map(|e| match &e.data {
        steward_events::EventData::UpdatePending(p) => Some((e.clone(), p.clone())),
        _ => None,
    })
}

/// The test app (v1) from the local registry, pulled and run by Podman, published on
/// 127.0.0.1, watched in `scope` with `policy`: [`app`] on the other engine. Its containers,
/// the swap's names and the images' names are removed when dropped (in that order).
pub struct PodmanApp {
    /// Container name.
    pub name: String,
    /// Image reference (in the local registry, unique to the test).
    pub image: String,
    /// Published port of its HTTP server.
    pub port: u16,
    _containers: steward_testkit::podman::Containers,
    /// Image names Podman holds for it; a test adds the digests an update pulls.
    pub names: steward_testkit::podman::Names,
    _tag: ImageTag,
}

impl PodmanApp {
    /// Pushes `version` of the app and keeps the name Podman will give it when pulled by
    /// digest (removed with the app).
    pub fn push(&mut self, version: &str) -> String {
        let digest = push_app(version, &self.image);
        let repository = self.image.rsplit_once(':').map_or(self.image.as_str(), |(r, _)| r);
        self.names.0.push(format!("{repository}@{digest}"));
        digest
    }
}

/// See [`PodmanApp`].
pub fn podman_app(scope: &str, policy: &str) -> PodmanApp {
    use steward_testkit::podman::{cli, Containers, Names};
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/podapp"));
    let repository = image.trim_end_matches(":1.0").to_owned();
    // The push tags it in Docker too.
    let tag = ImageTag(image.clone());
    let v1 = push_app("v1", &image);
    let mut names = Names(vec![image.clone(), format!("{repository}@{v1}")]);
    let pull = cli(&["pull", "-q", &image]);
    assert!(pull.status.success(), "podman pull: {}", String::from_utf8_lossy(&pull.stderr));
    // The first image by id: the updater's cleanup leaves it without a name.
    names.0.push(String::from_utf8_lossy(&pull.stdout).trim().to_owned());
    let name = unique_name("podapp");
    let port = free_port();
    let containers = Containers(
        ["", "-steward-old", "-steward-new", "-steward-failed"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
    );
    let (publish, scope_label, policy_label) = (
        format!("127.0.0.1:{port}:8080"),
        format!("steward.scope={scope}"),
        format!("steward.update.policy={policy}"),
    );
    let run = cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &publish,
        "--label",
        "steward.enable=true",
        "--label",
        &scope_label,
        "--label",
        &policy_label,
        "--label",
        "steward.update.backup=false",
        &image,
    ]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));
    wait_for("v1 served by Podman", Duration::from_secs(60), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    PodmanApp { name, image, port, _containers: containers, names, _tag: tag }
}
