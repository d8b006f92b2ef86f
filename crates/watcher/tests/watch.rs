//! The watcher against the real Docker engine, the test bed's registry and NATS.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use steward_bus::ReplayQuery;
use steward_events::{EventData, ImageUpdated};
use steward_testkit::docker::{docker, push_app, registry, Container, ImageTag};
use steward_testkit::{unique_name, TestBus};
use steward_watcher::check::{Checker, Summary};
use steward_watcher::registry::{Registries, RegistryConfig};

async fn checker(bus: &TestBus, scope: &str, timeout: Duration) -> Checker {
    Checker {
        bus: bus.bus.clone(),
        engine: steward_engine::Engine::from_env(),
        registries: Arc::new(
            Registries::new(RegistryConfig {
                timeout,
                max_wait: Duration::from_secs(10),
                insecure: vec![],
            })
            .expect("registries"),
        ),
        records: Checker::records(bus).await.expect("records"),
        concurrency: 8,
        outcomes: Family::default(),
        source: "steward-watcher/test".into(),
        scope: Some(scope.to_owned()),
    }
}

async fn image_updates(bus: &TestBus) -> Vec<(uuid::Uuid, ImageUpdated)> {
    let query = ReplayQuery { subjects: vec!["image.updated".into()], ..Default::default() };
    let mut replay = bus.replay(query).await.expect("replay");
    let mut out = vec![];
    while let Some(item) = replay.next().await {
        let event = item.expect("item").event.expect("event");
        let correlation = event.correlation_id;
        if let EventData::ImageUpdated(u) = event.data {
            out.push((correlation, u));
        }
    }
    out
}

/// A watched app container from `image`, in `scope`, with extra labels.
fn run_app(name: &str, image: &str, scope: &str, labels: &[&str]) -> Container {
    let scope_label = format!("steward.scope={scope}");
    let mut args = vec!["--label", "steward.enable=true", "--label", &scope_label];
    for l in labels {
        args.extend_from_slice(&["--label", l]);
    }
    args.push(image);
    Container::run(name, &args)
}

#[tokio::test]
async fn a_newer_digest_is_reported_once_even_across_restarts() {
    let bus = TestBus::new("watch").await;
    let scope = unique_name("scope");
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/watch"));
    let _tag = ImageTag(image.clone());
    let v1 = push_app("v1", &image);
    let name = unique_name("watched");
    let c = run_app(&name, &image, &scope, &["steward.update.policy=automatic"]);

    let watcher = checker(&bus, &scope, Duration::from_secs(5)).await;
    let first = watcher.run(None, None).await.expect("check");
    let tally = steward_watcher::episodes::Tally {
        containers: vec![name.clone()],
        ok: 1,
        failed: 0,
        last_error: None,
    };
    let expected = Summary {
        checked: 1,
        registries: [(registry(), tally)].into_iter().collect(),
        ..Summary::default()
    };
    assert_eq!(first, expected, "v1 is current, its registry answered");

    let v2 = push_app("v2", &image);
    assert_ne!(v1, v2);
    let second = watcher.run(None, None).await.expect("check");
    assert_eq!(second.updated, std::slice::from_ref(&name));
    let updates = image_updates(&bus).await;
    assert_eq!(updates.len(), 1);
    let u = &updates[0].1;
    assert_eq!((u.container.as_str(), u.image.as_str()), (name.as_str(), image.as_str()));
    assert_eq!((u.current_digest.as_str(), u.new_digest.as_str()), (v1.as_str(), v2.as_str()));

    // Again, and from a fresh watcher (a restart): nothing new.
    assert!(watcher.run(None, None).await.expect("check").updated.is_empty());
    let restarted = checker(&bus, &scope, Duration::from_secs(5)).await;
    assert!(restarted.run(Some(&name), None).await.expect("check").updated.is_empty());
    assert_eq!(image_updates(&bus).await.len(), 1);

    let record = watcher.records.get(&name).await.expect("get").expect("record").value;
    assert_eq!(record.policy, "automatic");
    assert_eq!(record.running_digest.map(|d| d.to_string()), Some(v1));
    assert_eq!(record.reported_digest.map(|d| d.to_string()), Some(v2.clone()));

    // Someone recreates the container on v1 (compose down/up, a restore): v2 is news again.
    drop(c);
    docker(&["tag", "steward-test/app:v1", &image]);
    let _again = run_app(&name, &image, &scope, &["steward.update.policy=automatic"]);
    // Pretend the container ran v2 in between (as after a successful update).
    watcher
        .note_running(&name, &steward_events::Digest::parse(&v2).expect("digest"))
        .await
        .expect("note");
    assert_eq!(watcher.run(None, None).await.expect("check").updated, std::slice::from_ref(&name));
    assert_eq!(image_updates(&bus).await.len(), 2);
}

#[tokio::test]
async fn tag_tracking_reports_the_newest_matching_tag() {
    let bus = TestBus::new("tags").await;
    let scope = unique_name("scope");
    let repo = format!("{}/{}", registry(), unique_name("steward-test/tags"));
    let tags: Vec<ImageTag> = ["1.0.1", "1.0.2", "1.0.10", "1.1.0"]
        .iter()
        .map(|t| ImageTag(format!("{repo}:{t}")))
        .collect();
    push_app("v1", &tags[0].0);
    push_app("v2", &tags[1].0);
    let newest = push_app("v2", &tags[2].0);
    push_app("v1", &tags[3].0);
    let name = unique_name("tracked");
    let c = run_app(&name, &tags[0].0, &scope, &[r"steward.watch.tags=^1\.0\.\d+$"]);

    let watcher = checker(&bus, &scope, Duration::from_secs(5)).await;
    let summary = watcher.run(None, None).await.expect("check");
    assert_eq!(summary.updated, std::slice::from_ref(&name));
    let updates = image_updates(&bus).await;
    assert_eq!(
        updates[0].1.new_tag.as_deref(),
        Some("1.0.10"),
        "highest version matching the rule, not 1.1.0"
    );
    assert_eq!(updates[0].1.new_digest.as_str(), newest);

    // The container goes away: the next full check forgets it, so `steward status` does too.
    assert!(watcher.records.get(&name).await.expect("get").is_some());
    drop(c);
    watcher.run(None, None).await.expect("check");
    assert!(watcher.records.get(&name).await.expect("get").is_none());
}

/// A newer image found by the very first check (no record to go by) names as the current
/// digest the one the repository holds. On Podman the image is listed with every digest any
/// of its names ever had (the test bed's app v1 has several: other tests push and pull it
/// elsewhere), and the first of them was reported before, a digest of another repository.
#[tokio::test]
async fn an_update_found_by_the_first_check_names_the_digest_the_repository_holds() {
    let bus = TestBus::new("watchfirst").await;
    let scope = unique_name("scope");
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/watchfirst"));
    let _tag = ImageTag(image.clone());
    let v1 = push_app("v1", &image);
    let name = unique_name("watchedfirst");
    let _c = run_app(&name, &image, &scope, &["steward.update.policy=automatic"]);
    let v2 = push_app("v2", &image);
    let repository = image.trim_end_matches(":1.0");
    let listed = docker(&["image", "inspect", "-f", "{{json .RepoDigests}}", &v1_image(&name)]);
    let known = listed.matches(&format!("\"{repository}@")).count();
    eprintln!("{name}'s image is listed with {known} digest(s) of {repository}");
    if steward_testkit::on_podman() {
        assert!(known > 1, "one digest only: this would prove nothing on Podman");
    }

    let watcher = checker(&bus, &scope, Duration::from_secs(5)).await;
    let summary = watcher.run(None, None).await.expect("check");
    assert_eq!(summary.updated, std::slice::from_ref(&name));
    let updates = image_updates(&bus).await;
    assert_eq!(updates.len(), 1);
    let u = &updates[0].1;
    assert_eq!((u.current_digest.as_str(), u.new_digest.as_str()), (v1.as_str(), v2.as_str()));
    let record = watcher.records.get(&name).await.expect("get").expect("record").value;
    assert_eq!(record.running_digest.as_ref().map(|d| d.as_str()), Some(v1.as_str()));
}

/// The image id container `name` runs.
fn v1_image(name: &str) -> String {
    docker(&["inspect", "-f", "{{.Image}}", name])
}

#[tokio::test]
async fn bad_labels_and_unknown_images_are_skipped_with_a_reason_and_others_still_checked() {
    let bus = TestBus::new("badlabels").await;
    let scope = unique_name("scope");
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/bad"));
    let _tag = ImageTag(image.clone());
    push_app("v1", &image);
    let scope_label = format!("steward.scope={scope}");
    let bad_enable = unique_name("badenable");
    let _a = Container::run(
        &bad_enable,
        &["--label", "steward.enable=maybe", "--label", &scope_label, &image],
    );
    let bad_policy = unique_name("badpolicy");
    let _b = run_app(&bad_policy, &image, &scope, &["steward.update.policy=sometimes"]);
    let bad_regex = unique_name("badregex");
    let _c = run_app(&bad_regex, &image, &scope, &["steward.watch.tags=1.("]);
    let local_only = unique_name("localonly");
    let _d = run_app(&local_only, "steward-test/app:v1", &scope, &[]);
    let good = unique_name("good");
    let _e = run_app(&good, &image, &scope, &[]);
    push_app("v2", &image);

    let summary =
        checker(&bus, &scope, Duration::from_secs(5)).await.run(None, None).await.expect("check");
    assert_eq!(summary.updated, [good], "skipping the others did not affect it");
    assert_eq!(summary.skipped.len(), 4, "{summary:?}");
    let reason = |n: &str| {
        summary.skipped.iter().find(|(c, _)| c == n).map(|(_, r)| r.clone()).unwrap_or_default()
    };
    assert!(reason(&bad_enable).contains("steward.enable=\"maybe\""), "{summary:?}");
    assert!(reason(&bad_policy).contains("expected automatic, manual or notify"), "{summary:?}");
    assert!(reason(&bad_regex).contains("not a regular expression"), "{summary:?}");
    assert!(reason(&local_only).contains("no digest"), "{summary:?}");
    // `steward status` shows it as what it is (issue 26): never updatable, not "up to date"
    // and not missing from the list.
    let checker = checker(&bus, &scope, Duration::from_secs(5)).await;
    let record = checker.records.get(&local_only).await.expect("get").expect("a watch record");
    let why = record.value.last_error.unwrap_or_default();
    assert!(why.starts_with("not from a registry: cannot be updated"), "{why}");
    assert_eq!(record.value.running_digest, None);
}

/// Pushes a two-platform index (`amd64` = `amd64_version`, `arm64` = v2) as `REPO:multi`;
/// returns its digest.
fn push_index(repo: &str, amd64_version: &str) -> String {
    push_app(amd64_version, &format!("{repo}:amd64"));
    push_app("v2", &format!("{repo}:arm64"));
    let list = format!("{repo}:multi");
    docker(&[
        "manifest",
        "create",
        "--amend",
        "--insecure",
        &list,
        &format!("{repo}:amd64"),
        &format!("{repo}:arm64"),
    ]);
    docker(&["manifest", "annotate", &list, &format!("{repo}:arm64"), "--arch", "arm64"]);
    let out = docker(&["manifest", "push", "--purge", "--insecure", &list]);
    out.lines().last().unwrap_or_default().trim().to_owned()
}

#[tokio::test]
async fn a_pulled_multi_arch_image_is_current_and_a_new_index_is_news() {
    let bus = TestBus::new("multiarch").await;
    let scope = unique_name("scope");
    let repo = format!("{}/{}", registry(), unique_name("steward-test/multi"));
    let _tags: Vec<ImageTag> =
        ["amd64", "arm64", "multi"].iter().map(|t| ImageTag(format!("{repo}:{t}"))).collect();
    let first = push_index(&repo, "v1");
    docker(&["pull", "-q", &format!("{repo}:multi")]);
    let name = unique_name("multi");
    let _c = run_app(&name, &format!("{repo}:multi"), &scope, &[]);

    // The image is known by the index digest and by its amd64 manifest's: unchanged.
    let watcher = checker(&bus, &scope, Duration::from_secs(5)).await;
    let summary = watcher.run(None, None).await.expect("check");
    assert_eq!((summary.checked, summary.updated.len()), (1, 0), "{summary:?}");

    let second = push_index(&repo, "v3");
    assert_ne!(first, second);
    let summary = watcher.run(None, None).await.expect("check");
    assert_eq!(summary.updated, std::slice::from_ref(&name));
    let updates = image_updates(&bus).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0].1.new_digest.as_str(),
        second,
        "reported as the index digest docker pull records"
    );
}

#[tokio::test]
async fn a_compose_project_s_updates_are_published_dependencies_first() {
    // A chain as compose v2 labels it: app → cache → queue → db (each depends on the next).
    let bus = TestBus::new("watchdeps").await;
    let scope = unique_name("scope");
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/watchdeps"));
    let _tag = ImageTag(image.clone());
    push_app("v1", &image);
    let project = format!("com.docker.compose.project={}", unique_name("deps"));
    let chain = [("db", ""), ("queue", "db"), ("cache", "queue"), ("app", "cache")];
    // Created dependencies first, so the engine lists (and the watcher checks) them last.
    let containers: Vec<(String, Container)> = chain
        .iter()
        .map(|(service, depends_on)| {
            let name = unique_name(&format!("dep{service}"));
            let service_label = format!("com.docker.compose.service={service}");
            let depends_label = format!(
                "com.docker.compose.depends_on={}",
                if depends_on.is_empty() {
                    String::new()
                } else {
                    format!("{depends_on}:service_healthy:false")
                }
            );
            let labels = [project.as_str(), service_label.as_str(), depends_label.as_str()];
            let c = run_app(&name, &image, &scope, &labels);
            (name, c)
        })
        .collect();
    let watcher = checker(&bus, &scope, Duration::from_secs(5)).await;
    assert_eq!(watcher.run(None, None).await.expect("check").checked, 4);

    push_app("v2", &image);
    assert_eq!(watcher.run(None, None).await.expect("check").updated.len(), 4);
    let published: Vec<String> =
        image_updates(&bus).await.into_iter().map(|(_, u)| u.container).collect();
    let expected: Vec<String> = containers.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(published, expected, "db, queue, cache, app");
}
