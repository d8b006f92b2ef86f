//! Updating from a registry that requires a login: the pull uses the operator's Docker
//! `config.json` (`DOCKER_CONFIG`). Its own test binary: `DOCKER_CONFIG` is process-wide.

use std::time::Duration;

use steward_events::{Digest, Event, EventData, ImageUpdated};
use steward_testkit::docker::{docker, Container, ImageTag, LoggedIn};
use steward_testkit::{free_port, http_get, stored_events, unique_name, wait_for, TestBus};
use steward_updater::config::UpdaterConfig;
use steward_updater::flow::Flow;

fn push(config: &str, version: &str, image: &str) -> String {
    docker(&["tag", &format!("steward-test/app:{version}"), image]);
    let out = docker(&["--config", config, "push", image]);
    out.split_whitespace().skip_while(|w| *w != "digest:").nth(1).expect("digest").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_uses_the_operators_docker_login() {
    let login = LoggedIn::auth_registry();
    let (registry, config) = (login.registry.clone(), login.config.clone());

    let repo = format!("{registry}/{}", unique_name("steward-test/private"));
    let image = format!("{repo}:1.0");
    let _tag = ImageTag(image.clone());
    let v1 = push(&config, "v1", &image);
    let (name, port) = (unique_name("private"), free_port());
    let publish = format!("127.0.0.1:{port}:8080");
    let _c = Container::run(
        &name,
        &[
            "-p",
            &publish,
            "--label",
            "steward.update.policy=automatic",
            "--label",
            "steward.update.backup=false",
            &image,
        ],
    );
    wait_for("v1 served", Duration::from_secs(15), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    let v2 = push(&config, "v2", &image);
    // Forget v2 locally, so the update has to fetch it from the registry.
    let _ = std::process::Command::new("docker").args(["rmi", &image]).output();
    let _ = std::process::Command::new("docker").args(["rmi", &format!("{repo}@{v2}")]).output();

    let bus = TestBus::new("private").await;
    let cfg = UpdaterConfig {
        backup_timeout: Duration::from_secs(60),
        health_timeout: Duration::from_secs(30),
        health_grace: Duration::from_secs(3),
        hook_timeout: Duration::from_secs(10),
        links: None,
        renewal: Default::default(),
        keep_images: 2,
        prune_grace: Duration::ZERO,
        write_back: true,
        haproxy_socket: None,
        haproxy_switch_timeout: Duration::from_secs(10),
        probe: Default::default(),
    };
    let flow = Flow::open(bus.bus.clone(), steward_engine::Engine::from_env(), cfg, "test".into())
        .await
        .expect("flow");
    let update = |_: ()| {
        let data = ImageUpdated {
            container: name.clone(),
            image: image.clone(),
            current_digest: Digest::parse(&v1).expect("digest"),
            new_digest: Digest::parse(&v2).expect("digest"),
            new_tag: None,
            policy: None,
            versions: Default::default(),
        };
        (Event::new("test", data.clone()), data)
    };

    std::env::set_var("DOCKER_CONFIG", std::env::temp_dir().join(unique_name("no-login")));
    let (event, u) = update(());
    flow.on_image_updated(&event, &u).await.expect("flow");
    let all = stored_events(&bus).await;
    let Some(EventData::UpdateFailed(f)) = all.last().map(|e| &e.data) else { panic!("{all:?}") };
    assert!(f.reason.contains("cannot pull"), "{}", f.reason);
    assert!(http_get(port).is_some_and(|b| b.contains("app v1")), "untouched");

    std::env::set_var("DOCKER_CONFIG", &config);
    let (event, u) = update(());
    flow.on_image_updated(&event, &u).await.expect("flow");
    assert!(
        http_get(port).is_some_and(|b| b.contains("app v2")),
        "{:?}",
        stored_events(&bus).await.last()
    );
    for suffix in ["-steward-old", "-steward-new", "-steward-failed"] {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &format!("{name}{suffix}")])
            .output();
    }
}
