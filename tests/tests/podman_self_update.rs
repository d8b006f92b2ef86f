//! The updater updating its own container on Podman: it runs from the Steward image (the
//! locally built `steward-local/steward:debug`, pushed to the test bed's registry and pulled
//! by Podman) in a Podman container with Podman's socket, on a Podman network of the test's
//! own with a NATS server of its own. A newer image of itself is handed over to the successor, which
//! takes the name and concludes the update. Before, the updater did not recognise its own
//! container on Podman (it read Docker's mount layout only) and would have replaced itself
//! without a handover, stopping itself half-way.
//!
//! Skipped (with the reason printed) without a Podman service, unless
//! `STEWARD_TEST_ENGINE=podman` asks for it.

use std::time::Duration;

use steward_events::{Event, EventData};
use steward_system_tests::apps::{announce, bus_on_published_nats, contained_updater_settings};
use steward_testkit::docker::{build_and_push, docker, push, registry, ImageTag};
use steward_testkit::podman::{cli, Containers, Names};
use steward_testkit::{free_port, stored_events, unique_name, wait_for};

const BASE: &str = "steward-local/steward:debug";

/// `podman ARGS` that must succeed; its stdout, trimmed.
fn podman(args: &[&str]) -> String {
    let out = cli(args);
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Podman's containers named `name` or `name-steward-*` (the swap's temporary names).
fn instances(name: &str) -> Vec<String> {
    podman(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| *n == name || n.starts_with(&format!("{name}-steward-")))
        .map(str::to_owned)
        .collect()
}

/// Removes every instance of `name` when dropped.
struct Instances(String);

impl Drop for Instances {
    fn drop(&mut self) {
        for n in instances(&self.0) {
            let _ = cli(&["rm", "-f", "-t", "1", &n]);
        }
    }
}

/// Removes a Podman network when dropped (after the containers on it).
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = cli(&["network", "rm", "-f", &self.0]);
    }
}

/// The updater's output (it logs to stderr), for failure messages.
fn logs(name: &str) -> String {
    let out = cli(&["logs", name]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_updater_on_podman_hands_over_to_its_new_image() {
    let Some(socket) = steward_testkit::podman::socket() else { return };
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/podself"));
    let repository = image.trim_end_matches(":1.0").to_owned();
    let _docker_tag = ImageTag(image.clone());
    docker(&["tag", BASE, &image]);
    let v1 = push(&image);
    // Removed after the containers (dropped after them).
    let mut names = Names(vec![image.clone(), format!("{repository}@{v1}")]);
    names.0.push(podman(&["pull", "-q", &image]));

    // NATS of the test's own on a Podman network of its own, published for the test's client
    // (the updater and its successor each have a network namespace, as in the stack).
    let nats_image = format!("{}/{}:1", registry(), unique_name("steward-test/podself-nats"));
    let _nats_tag = ImageTag(nats_image.clone());
    docker(&["tag", "steward-local/nats:latest", &nats_image]);
    let nats_digest = push(&nats_image);
    let nats_repository = nats_image.trim_end_matches(":1").to_owned();
    names.0.extend([nats_image.clone(), format!("{nats_repository}@{nats_digest}")]);
    names.0.push(podman(&["pull", "-q", &nats_image]));
    let network = unique_name("podself");
    let _network = Network(network.clone());
    podman(&["network", "create", &network]);
    let nats = unique_name("podself-nats");
    let _nats = Containers(vec![nats.clone()]);
    let nats_port = free_port();
    podman(&[
        "run",
        "-d",
        "--name",
        &nats,
        "--network",
        &network,
        "-p",
        &format!("127.0.0.1:{nats_port}:4222"),
        &nats_image,
        "nats-server",
        "-js",
        "-sd",
        "/tmp/jetstream",
    ]);
    let bus = bus_on_published_nats(nats_port, "podself").await;

    let name = unique_name("podself-updater");
    let _instances = Instances(name.clone());
    let socket_mount = format!("{socket}:/var/run/docker.sock");
    let settings = contained_updater_settings(&nats, &bus, "30s");
    // Root in the container: Podman's socket is root's (the stack runs the updater behind
    // the socket proxy instead).
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &network,
        "--user",
        "0",
        "--restart",
        "unless-stopped",
        "-v",
        &socket_mount,
    ];
    for e in &settings {
        args.extend(["-e", e.as_str()]);
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
    podman(&args);
    wait_for("the updater consuming", Duration::from_secs(60), || {
        logs(&name).contains("consuming").then_some(())
    });
    let old_id = podman(&["inspect", "-f", "{{.Id}}", &name]);

    // v2 of itself: handed over, the successor takes the name and concludes.
    let v2 = build_and_push(&image, &format!("FROM {BASE}\nLABEL steward.test.build=v2\n"));
    names.0.push(format!("{repository}@{v2}"));
    let announced = announce(&bus, &name, &image, &v1, &v2).await;
    let ended = |e: &Event| matches!(e.event_type(), "update.succeeded" | "update.rolled_back");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let all = loop {
        let all = stored_events(&bus).await;
        if all.iter().any(ended) || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(r) = all.iter().find_map(|e| match &e.data {
        EventData::UpdateRolledBack(r) => Some(r),
        _ => None,
    }) {
        panic!("rolled back: {}\n{:?}\nold updater:\n{}", r.reason, r.log_tail, logs(&name));
    }
    let flow: Vec<&Event> =
        all.iter().filter(|e| e.correlation_id == announced.correlation_id).collect();
    let kinds: Vec<&str> = flow.iter().map(|e| e.event_type()).collect();
    assert_eq!(kinds, ["image.updated", "update.started", "update.succeeded"], "{}", logs(&name));
    wait_for("one updater container", Duration::from_secs(30), || {
        (instances(&name) == [name.clone()]).then_some(())
    });
    let new_id = podman(&["inspect", "-f", "{{.Id}}", &name]);
    assert_ne!(new_id, old_id, "a new container holds the name");
    let v2_id = podman(&["image", "inspect", "-f", "{{.Id}}", &format!("{repository}@{v2}")]);
    names.0.push(v2_id.clone());
    let running_image = podman(&["inspect", "-f", "{{.Image}}", &name]);
    assert_eq!(running_image, v2_id, "running v2");
    assert_eq!(podman(&["inspect", "-f", "{{.State.Running}}", &name]), "true");
    let logs = logs(&name);
    assert!(logs.contains("taking over from the previous updater"), "{logs}");
    assert_eq!(
        podman(&["inspect", "-f", "{{index .Config.Labels \"steward.update.policy\"}}", &name]),
        "automatic",
        "same configuration"
    );
    // Once: no second success, no rollback.
    let events = stored_events(&bus).await;
    let count = |t: &str| events.iter().filter(|e| e.event_type() == t).count();
    assert_eq!((count("update.succeeded"), count("update.rolled_back")), (1, 0));
    assert!(
        !events.iter().any(|e| matches!(&e.data, EventData::UpdateFailed(_))),
        "an update failed"
    );
}
