//! The real `steward-watcher` binary: `steward check` makes it compare a running container
//! with the registry; the resulting `image.updated` belongs to the request's flow, and
//! `steward status` shows what the watcher knows.

use std::time::{Duration, Instant};

use steward_bus::ReplayQuery;
use steward_events::EventData;
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::{push_app, registry, Container, ImageTag};
use steward_testkit::{unique_name, TestBus};

/// A watched container of its own scope on image v1 while v2 is in the registry: (scope,
/// name, v2's digest, what removes them).
fn watched(tag: &str, labels: &[&str]) -> (String, String, String, (Container, ImageTag)) {
    let scope = unique_name("scope");
    let image = format!("{}/{}:1.0", registry(), unique_name(&format!("steward-test/{tag}")));
    let image_tag = ImageTag(image.clone());
    push_app("v1", &image);
    let name = unique_name(tag);
    let scope_label = format!("steward.scope={scope}");
    let mut args = vec!["--label", "steward.enable=true", "--label", &scope_label];
    for label in labels {
        args.extend(["--label", label]);
    }
    args.push(&image);
    let container = Container::run(&name, &args);
    let v2 = push_app("v2", &image);
    // The container goes first (a tuple drops in order), then its image.
    (scope, name, v2, (container, image_tag))
}

/// The first `image.updated` in the stream, waited for.
async fn first_news(bus: &TestBus, watcher: &Proc) -> steward_events::Event {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let query = ReplayQuery { subjects: vec!["image.updated".into()], ..Default::default() };
        let mut replay = bus.replay(query).await.expect("replay");
        if let Some(item) = replay.next().await {
            return item.expect("item").event.expect("event");
        }
        assert!(Instant::now() < deadline, "no image.updated: {}", watcher.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn steward_check_finds_the_newer_image_and_status_shows_it() {
    let bus = TestBus::new("watchflow").await;
    let (scope, name, v2, _gone) = watched("flow", &["steward.update.policy=manual"]);

    let mut watcher = Proc::service("steward-watcher", &bus, &[("STEWARD_SCOPE", scope.clone())]);

    let out = steward(&bus, &["check"]);
    let request: uuid::Uuid = out
        .trim()
        .trim_end_matches(')')
        .rsplit('(')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out:?}"));
    let update = first_news(&bus, &watcher).await;
    assert_eq!(update.causation_id, Some(request));
    assert_eq!(update.correlation_id, request, "the check's flow");
    let EventData::ImageUpdated(u) = update.data else { panic!("not image.updated") };
    assert_eq!((u.container.as_str(), u.new_digest.as_str()), (name.as_str(), v2.as_str()));

    let table = steward(&bus, &["status"]);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("manual") && row.contains("update available") && row.contains(&v2[7..19]),
        "{row}"
    );
    let json = steward(&bus, &["status", "--json"]);
    let record: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a line")).expect("json");
    assert_eq!(record["reported_digest"].as_str(), Some(v2.as_str()));

    assert_eq!(watcher.terminate(Duration::from_secs(10)), Some(0));
}

/// The engine's name as `docker info` gives it.
fn engine_name() -> String {
    let out = std::process::Command::new("docker")
        .args(["info", "--format", "{{.Name}}"])
        .output()
        .expect("docker info");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits for the watch record of `name` to name `host` (`steward status --json`).
async fn wait_record_host(bus: &TestBus, name: &str, host: &str, watcher: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let json = steward(bus, &["status", "--json"]);
        let found = json
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|r| r["container"] == name && r["host"] == host);
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "no record on {host}: {json} {}", watcher.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An agent names its host: by default the engine's name (`docker info`), or `STEWARD_HOST`;
/// its events and watch records carry it, the CLI's (central) events carry none.
#[tokio::test]
async fn the_watcher_names_its_host_by_default_the_engines() {
    let bus = TestBus::new("watchhost").await;
    let (scope, name, _, _gone) = watched("host", &[]);
    let default = steward_events::host_from_name(&engine_name()).expect("the engine has a name");

    let scoped = [("STEWARD_SCOPE", scope.clone())];
    let mut watcher = Proc::service("steward-watcher", &bus, &scoped);
    assert!(watcher.logs().contains(&format!("\"host\":\"{default}\"")), "{}", watcher.logs());
    steward(&bus, &["check"]);
    let update = first_news(&bus, &watcher).await;
    assert_eq!(update.host.as_deref(), Some(default.as_str()));
    let query = ReplayQuery { subjects: vec!["watch.requested".into()], ..Default::default() };
    let mut replay = bus.replay(query).await.expect("replay");
    let request = replay.next().await.expect("the check").expect("item").event.expect("event");
    assert_eq!(request.host, None, "the CLI is central: it names no host of its own");
    wait_record_host(&bus, &name, &default, &watcher).await;
    assert_eq!(watcher.terminate(Duration::from_secs(10)), Some(0));

    // Set, it wins; the record is written again with it at the next check.
    let host = unique_name("vps");
    let env = [scoped[0].clone(), ("STEWARD_HOST", host.clone())];
    let mut watcher = Proc::service("steward-watcher", &bus, &env);
    steward(&bus, &["check"]);
    wait_record_host(&bus, &name, &host, &watcher).await;
    assert_eq!(watcher.terminate(Duration::from_secs(10)), Some(0));

    // The central view: a HOST column, and `--host` narrows it to one host.
    let table = steward(&bus, &["status"]);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().nth(1), Some(host.as_str()), "{table}");
    assert!(steward(&bus, &["status", "--host", &host]).contains(&name));
    assert!(!steward(&bus, &["status", "--host", &default]).contains(&name));
    let refused = steward_system_tests::steward(&bus, &["status", "--host", "Not.A.Host"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("a-z, 0-9"), "{said}");
}
