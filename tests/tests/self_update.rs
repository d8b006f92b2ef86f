//! The updater updating its own container: it runs from the Steward image (the locally built
//! `steward-local/steward:debug`, pushed to the test bed's registry) in a container, with the
//! Docker socket, on a network of the test's own with a NATS server of its own. A newer image
//! of itself is handed over to the successor, which takes the name and concludes the update;
//! a successor that never takes over is removed and the old updater reports the rollback.
//! The self-update's kill matrix (issue 16) kills the old updater and its successor at every
//! point a clean self-update passes, once and twice.

use std::process::Command;
use std::time::Duration;

use steward_events::{Event, EventData};
use steward_system_tests::apps::{
    announce, bus_on_published_nats, contained_updater_settings, wait_event,
};
use steward_testkit::docker::{docker, push, registry, Container, ImageTag, SwapLeftovers};
use steward_testkit::{free_port, stored_events, unique_name, wait_for, TestBus};

const BASE: &str = "steward-local/steward:debug";

/// Removes the network when dropped (after the containers on it).
struct Network(String);
impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}

/// Builds `FROM steward-local/steward:debug` plus `lines` as `image` and pushes it; its digest.
fn build_and_push(image: &str, lines: &str) -> String {
    steward_testkit::docker::build_and_push(image, &format!("FROM {BASE}\n{lines}\n"))
}

/// Containers named `name` or `name-steward-*`.
fn instances(name: &str) -> Vec<String> {
    docker(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| *n == name || n.starts_with(&format!("{name}-steward-")))
        .map(str::to_owned)
        .collect()
}

/// The updater in a container of its image (pushed as `image`, v1), on a network of the
/// test's own with a NATS server of its own; `env` adds `-e` settings.
struct Stack {
    image: String,
    v1: String,
    name: String,
    bus: TestBus,
    // Dropped in this order: the updater (and leftovers), NATS, the network, the tag.
    _updater: Container,
    _leftovers: SwapLeftovers,
    _nats: Container,
    _network: Network,
    _tag: ImageTag,
}

async fn stack(env: &[&str]) -> Stack {
    stack_with(env, &[]).await
}

/// [`stack`] with more `docker run` arguments (e.g. a volume).
async fn stack_with(env: &[&str], run_args: &[&str]) -> Stack {
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/self"));
    let tag = ImageTag(image.clone());
    docker(&["tag", BASE, &image]);
    let v1 = push(&image);

    // NATS of the test's own, on a network of its own, published for the test's client.
    let network = Network(unique_name("selfupd"));
    docker(&["network", "create", &network.0]);
    let nats_port = free_port();
    let nats = Container::run(
        &unique_name("selfupd-nats"),
        &[
            "--network",
            &network.0,
            "-p",
            &format!("127.0.0.1:{nats_port}:4222"),
            "steward-local/nats:latest",
            "nats-server",
            "-js",
            "-sd",
            "/tmp/jetstream",
        ],
    );
    let bus = bus_on_published_nats(nats_port, "selfupd").await;

    let name = unique_name("selfupd-updater");
    // Whichever instance holds the name, and any leftover under the temporary names.
    let leftovers = SwapLeftovers(name.clone());
    let updater = Container::adopt(name.clone());
    let gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m).to_string())
        .expect("docker.sock");
    let settings = contained_updater_settings(&nats.name, &bus, "20s");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &network.0,
        "--restart",
        "unless-stopped",
        "--group-add",
        &gid,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "--health-interval",
        "1s",
    ];
    for e in settings.iter().map(String::as_str).chain(env.iter().copied()) {
        args.extend(["-e", e]);
    }
    args.extend(run_args.iter().copied());
    args.extend([
        "--label",
        "steward.enable=true",
        "--label",
        "steward.update.policy=automatic",
        "--label",
        "steward.update.backup=false",
        &image,
        "steward-updater",
    ]);
    docker(&args);
    let health = || docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
    wait_for("the updater healthy", Duration::from_secs(60), || {
        (health() == "healthy").then_some(())
    });
    Stack {
        image,
        v1,
        name,
        bus,
        _updater: updater,
        _leftovers: leftovers,
        _nats: nats,
        _network: network,
        _tag: tag,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_updater_hands_over_to_its_new_image_and_removes_a_successor_that_never_takes_over() {
    let stack = stack(&[]).await;
    let (image, v1, name, bus) = (&stack.image, &stack.v1, &stack.name, &stack.bus);
    let name = name.clone();
    let old_id = docker(&["inspect", "-f", "{{.Id}}", &name]);

    // v2 of itself: handed over, the successor takes the name and concludes.
    let v2 = build_and_push(image, "LABEL steward.test.build=v2");
    let v2_id = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
    let announced = announce(bus, &name, image, v1, &v2).await;
    let all = wait_event(bus, "update.succeeded", Duration::from_secs(90)).await;
    let flow: Vec<&Event> =
        all.iter().filter(|e| e.correlation_id == announced.correlation_id).collect();
    let kinds: Vec<&str> = flow.iter().map(|e| e.event_type()).collect();
    assert_eq!(kinds, ["image.updated", "update.started", "update.succeeded"]);
    wait_for("one updater container", Duration::from_secs(30), || {
        (instances(&name) == [name.clone()]).then_some(())
    });
    let new_id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    assert_ne!(new_id, old_id, "a new container holds the name");
    assert_eq!(docker(&["inspect", "-f", "{{.Image}}", &name]), v2_id, "running v2");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &name]), "true");
    // The services log to stderr.
    let logs = Command::new("docker").args(["logs", &name]).output().expect("docker logs");
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("taking over from the previous updater"), "{logs}");
    assert_eq!(
        docker(&["inspect", "-f", "{{index .Config.Labels \"steward.update.policy\"}}", &name]),
        "automatic",
        "same configuration"
    );

    // v3 cannot run the updater (its entrypoint turns the command into a CLI call that
    // fails): never takes over; the running v2 removes it and reports why.
    let v3 = build_and_push(image, "ENTRYPOINT [\"steward\"]");
    let announced = announce(bus, &name, image, &v2, &v3).await;
    let all = wait_event(bus, "update.rolled_back", Duration::from_secs(90)).await;
    let rolled_back = all
        .iter()
        .filter(|e| e.correlation_id == announced.correlation_id)
        .find_map(|e| match &e.data {
            EventData::UpdateRolledBack(r) => Some(r.clone()),
            _ => None,
        })
        .expect("update.rolled_back of v3");
    assert!(rolled_back.reason.contains("did not take over within 20s"), "{}", rolled_back.reason);
    assert!(
        rolled_back.log_tail.iter().any(|l| l.contains("steward-updater")),
        "the failed successor's log: {:?}",
        rolled_back.log_tail
    );
    assert_eq!(instances(&name), std::slice::from_ref(&name), "the successor is gone");
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &name]), new_id, "v2 still runs");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &name]), "true");
    assert_eq!(
        stored_events(bus).await.iter().filter(|e| e.event_type() == "update.succeeded").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_killed_right_after_taking_over_concludes_the_update_when_it_restarts() {
    // Every instance has the failpoint; only the successor passes it, once per process.
    let stack = stack(&["STEWARD_FAILPOINTS=takeover:done"]).await;
    let (image, v1, name, bus) = (&stack.image, &stack.v1, &stack.name, &stack.bus);
    let old_id = docker(&["inspect", "-f", "{{.Id}}", name]);
    let v2 = build_and_push(image, "LABEL steward.test.build=v2");
    let v2_id = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
    let announced = announce(bus, name, image, v1, &v2).await;
    // The successor dies after taking the name; its restart policy brings it back, and it
    // finds the update it was concluding.
    let all = wait_event(bus, "update.succeeded", Duration::from_secs(120)).await;
    let kinds: Vec<&str> = all
        .iter()
        .filter(|e| e.correlation_id == announced.correlation_id)
        .map(Event::event_type)
        .collect();
    assert_eq!(kinds, ["image.updated", "update.started", "update.succeeded"]);
    wait_for("one updater container", Duration::from_secs(30), || {
        (instances(name) == [name.clone()]).then_some(())
    });
    assert_ne!(docker(&["inspect", "-f", "{{.Id}}", name]), old_id);
    assert_eq!(docker(&["inspect", "-f", "{{.Image}}", name]), v2_id, "running v2");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", name]), "true");
    assert!(
        docker(&["inspect", "-f", "{{.RestartCount}}", name]).parse::<u32>().unwrap_or(0) >= 1,
        "the successor was killed and restarted"
    );
}

// ---------------------------------------------------------------------------------------------
// The self-update's kill matrix (issue 16): every point a clean self-update passes, in the old
// updater and in its successor, killed once (Docker's restart policy starts the container
// again) and twice (the restarted process dies again at the first point its recovery passes).
// The processes run in containers the test does not start itself, so they share a directory
// with the test (`STEWARD_FAILPOINTS_DIR`, see the failpoints crate): it records the points
// passed and the aborts, and keeps a restarted process from dying at the same point forever.

/// A host directory mounted into every updater container of a run; removed when dropped.
struct SharedDir(std::path::PathBuf);

impl SharedDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("selfupd-failpoints"));
        std::fs::create_dir_all(&dir).expect("failpoints dir");
        // The updater in the image may run as another user.
        let _ = Command::new("chmod").args(["0777", &dir.display().to_string()]).status();
        Self(dir)
    }

    fn mount(&self) -> String {
        format!("{}:/failpoints", self.0.display())
    }

    /// `(process token, point)` per line of `file`.
    fn lines(&self, file: &str) -> Vec<(String, String)> {
        std::fs::read_to_string(self.0.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_owned(), p.to_owned()))
            .collect()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SELF_TERMINAL: [&str; 3] = ["update.succeeded", "update.rolled_back", "update.failed"];

/// Runs one self-update (v1 → a new build) in a stack whose updaters have `failpoints`
/// (`STEWARD_FAILPOINTS=...` and the like); checks the invariants; returns the points passed
/// as kill specs (`name=n`: the n-th hit in its process), in order, and the aborts.
async fn self_update_run(failpoints: &[&str], context: &str) -> (Vec<String>, Vec<String>) {
    let dir = SharedDir::new();
    let mut env = vec!["STEWARD_FAILPOINTS_DIR=/failpoints"];
    env.extend(failpoints);
    let mount = dir.mount();
    let stack = stack_with(&env, &["-v", &mount]).await;
    let (image, v1, name, bus) = (&stack.image, &stack.v1, &stack.name, &stack.bus);
    let v1_id = docker(&["inspect", "-f", "{{.Image}}", name]);
    let v2 = build_and_push(image, &format!("LABEL steward.test.build={}", unique_name("v2")));
    let v2_id = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
    let announced = announce(bus, name, image, v1, &v2).await;

    // One outcome, then one updater container, running, healthy.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let outcome = loop {
        let all = stored_events(bus).await;
        let flow: Vec<&Event> =
            all.iter().filter(|e| e.correlation_id == announced.correlation_id).collect();
        if let Some(t) = flow.iter().find(|e| SELF_TERMINAL.contains(&e.event_type())) {
            break t.event_type();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: no outcome; flow {:?}; containers {:?}",
            flow.iter().map(|e| e.event_type()).collect::<Vec<_>>(),
            instances(name)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    wait_for("one updater container, healthy", Duration::from_secs(90), || {
        let healthy = docker(&["inspect", "-f", "{{.State.Health.Status}}", name]) == "healthy";
        (instances(name) == [name.clone()] && healthy).then_some(())
    });
    // Whatever a dead process left is settled (a redelivery after the ack wait, the sweep).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let all = stored_events(bus).await;
    let kinds: Vec<&str> = all
        .iter()
        .filter(|e| e.correlation_id == announced.correlation_id)
        .map(Event::event_type)
        .collect();
    let terminal = kinds.iter().filter(|k| SELF_TERMINAL.contains(k)).count();
    assert_eq!(terminal, 1, "{context}: one terminal event: {kinds:?}");
    let mut seen = std::collections::HashSet::new();
    assert!(kinds.iter().all(|k| seen.insert(*k)), "{context}: an event twice: {kinds:?}");
    let running = docker(&["inspect", "-f", "{{.Image}}", name]);
    let expected = if outcome == "update.succeeded" { &v2_id } else { &v1_id };
    assert_eq!(&running, expected, "{context}: {outcome}, but another image runs");
    assert_eq!(instances(name), std::slice::from_ref(name), "{context}: containers left");

    let mut counts: std::collections::HashMap<(String, String), u32> = Default::default();
    let passed = dir
        .lines("passed")
        .into_iter()
        .map(|(token, point)| {
            let n = counts.entry((token, point.clone())).or_insert(0);
            *n += 1;
            format!("{point}={n}")
        })
        .collect();
    let aborts = dir.lines("aborts").into_iter().map(|(_, p)| p).collect();
    (passed, aborts)
}

/// The points to kill at: all with `STEWARD_CRASH_POINTS=all`, else `STEWARD_SELF_UPDATE_SAMPLE`
/// of them (default 3), evenly spread, starting at `STEWARD_SELF_UPDATE_OFFSET` (default: the
/// crash seed, `STEWARD_CRASH_SEED` or the day, so successive CI runs cover other points;
/// printed for a replay).
fn self_update_sample(points: &[String]) -> Vec<String> {
    if std::env::var("STEWARD_CRASH_POINTS").as_deref() == Ok("all") {
        return points.to_vec();
    }
    let count: usize = std::env::var("STEWARD_SELF_UPDATE_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, points.len().max(1));
    let offset: u64 = std::env::var("STEWARD_SELF_UPDATE_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(steward_system_tests::crash::seed);
    eprintln!(
        "self-update matrix: {count} of {} points from offset {offset} (replay: \
         STEWARD_SELF_UPDATE_OFFSET={offset} STEWARD_SELF_UPDATE_SAMPLE={count})",
        points.len()
    );
    steward_system_tests::crash::spread(points.len(), count, offset)
        .into_iter()
        .map(|i| points[i].clone())
        .collect()
}

/// Kill runs at once. Each has its own network, NATS, updater, image and failpoints
/// directory, and mostly waits (on Docker, the health checks, the settling time).
const RUNS_AT_ONCE: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_update_killed_at_its_points_once_and_twice_ends_on_one_healthy_updater() {
    let (points, aborts) = self_update_run(&["STEWARD_FAILPOINTS="], "clean run").await;
    assert!(aborts.is_empty(), "a clean run aborted: {aborts:?}");
    let mut specs: Vec<String> = vec![];
    for p in points {
        if !specs.contains(&p) {
            specs.push(p);
        }
    }
    assert!(
        specs.iter().any(|s| s.starts_with("takeover:done")),
        "the successor's points are not seen: {specs:?}"
    );
    eprintln!("self-update matrix: {} points: {specs:?}", specs.len());
    let mut names: Vec<&str> = specs.iter().filter_map(|s| s.split('=').next()).collect();
    names.sort_unstable();
    names.dedup();
    let all_names = std::sync::Arc::new(names.join(","));
    let mut runs: Vec<(String, bool)> = vec![];
    for (i, spec) in self_update_sample(&specs).into_iter().enumerate() {
        // Alternating variants; with `all`, both for every point.
        let twice_too = std::env::var("STEWARD_CRASH_POINTS").as_deref() == Ok("all");
        let variants: &[bool] = if twice_too {
            &[false, true]
        } else if i % 2 == 0 {
            &[false]
        } else {
            &[true]
        };
        runs.extend(variants.iter().map(|&twice| (spec.clone(), twice)));
    }
    steward_system_tests::crash::at_once(runs, RUNS_AT_ONCE, move |(spec, twice)| {
        let all_names = all_names.clone();
        async move {
            let started = std::time::Instant::now();
            let first = format!("STEWARD_FAILPOINTS={spec}");
            let then = format!("STEWARD_FAILPOINTS_THEN={all_names}");
            let mut env = vec![first.as_str()];
            if twice {
                env.push(then.as_str());
            }
            let variant = if twice { "twice" } else { "once" };
            let context = format!("{spec} ({variant})");
            let (_, aborts) = self_update_run(&env, &context).await;
            let point = spec.split('=').next().unwrap_or_default();
            assert_eq!(
                aborts.first().map(String::as_str),
                Some(point),
                "{context}: not killed there"
            );
            eprintln!(
                "self-update matrix: {context}: ok in {:.0}s, aborts {aborts:?}",
                started.elapsed().as_secs_f64()
            );
        }
    })
    .await;
}
