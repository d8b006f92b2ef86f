//! The updater updating its own container: it runs from the Steward image (the locally built
//! `steward-local/steward:debug`, pushed to the test bed's registry) in a container, with the
//! Docker socket, on a network of the test's own with a NATS server of its own. A newer image
//! of itself is handed over to the successor, which takes the name and concludes the update;
//! a successor that never takes over is removed and the old updater reports the rollback.

use std::process::Command;
use std::time::Duration;

use steward_events::{Digest, Event, EventData, ImageUpdated};
use steward_system_tests::apps::wait_event;
use steward_testkit::docker::{docker, push, registry, Container, ImageTag, SwapLeftovers};
use steward_testkit::{bus_config, free_port, stored_events, unique_name, wait_for, TestBus};

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

async fn announce(bus: &TestBus, name: &str, image: &str, from: &str, to: &str) -> Event {
    let event = Event::new(
        "steward-watcher/test",
        ImageUpdated {
            container: name.to_owned(),
            image: image.to_owned(),
            current_digest: Digest::parse(from).expect("digest"),
            new_digest: Digest::parse(to).expect("digest"),
            new_tag: None,
            policy: None,
            versions: Default::default(),
        },
    );
    bus.publish(&event).await.expect("publish");
    event
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
    let url = format!("nats://127.0.0.1:{nats_port}");
    wait_for("NATS", Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).ok()
    });
    let bus = TestBus::with_config(bus_config(&url, "selfupd")).await;
    let ns = bus.namespace().clone();

    let name = unique_name("selfupd-updater");
    // Whichever instance holds the name, and any leftover under the temporary names.
    let leftovers = SwapLeftovers(name.clone());
    let updater = Container { name: name.clone() };
    let gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m).to_string())
        .expect("docker.sock");
    let settings = [
        format!("STEWARD_NATS_URL=nats://{}:4222", nats.name),
        format!("STEWARD_STREAM={}", ns.stream),
        format!("STEWARD_SUBJECT_PREFIX={}", ns.prefix),
        "STEWARD_HEALTH_TIMEOUT=20s".to_owned(),
        "STEWARD_LOG_FORMAT=pretty".to_owned(),
    ];
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
