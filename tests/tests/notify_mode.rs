//! Notify mode through the real watcher, updater and notifier, with a real SMTP server: a
//! newer image of `notify` containers is reported once (one entry per image naming every
//! container on it, with both versions and a release-notes link from the images' labels),
//! never again for the same digest, also for a container announced later; an automatic
//! update is reported after it succeeded.

use std::time::Duration;

use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::mail::{
    mails_to, testbed_maildir, testbed_notifier_env, unique_address, wait_mails, webhook_sink,
};
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::{build_and_push, docker, push_app, registry, Container, ImageTag};
use steward_testkit::{stored_events, unique_name, TestBus};

/// The stand-in app `version` with the OCI labels a release carries.
fn labelled(version: &str, semver: &str, revision: &str) -> String {
    format!(
        "FROM steward-test/app:{version}\n\
         LABEL org.opencontainers.image.version={semver} \
         org.opencontainers.image.source=https://github.com/example/app \
         org.opencontainers.image.revision={revision}\n"
    )
}

fn notify_container(scope: &str, image: &str) -> Container {
    Container::run(
        &unique_name("notify"),
        &[
            "--label",
            "steward.enable=true",
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            "steward.update.policy=notify",
            image,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_image_of_notify_containers_is_reported_once_per_digest_naming_all_of_them() {
    let bus = TestBus::new("notifymode").await;
    let scope = unique_name("scope");
    let to = unique_address("notifymode");
    let maildir = testbed_maildir();
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/notify"));
    let _tag = ImageTag(image.clone());
    build_and_push(&image, &labelled("v1", "1.0.0", "aaaaaaa1"));
    let v1_id = docker(&["image", "inspect", "-f", "{{.Id}}", &image]);
    let a = notify_container(&scope, &image);
    let b = notify_container(&scope, &image);

    let scoped = vec![("STEWARD_SCOPE", scope.clone())];
    let _watcher = Proc::service("steward-watcher", &bus, &scoped);
    let _updater = Proc::service("steward-updater", &bus, &scoped);
    let (hook, received) = webhook_sink().await;
    let mut settings = testbed_notifier_env(&to);
    settings.push(("STEWARD_NOTIFY_GROUP_WINDOW", "3s".into()));
    settings.push(("STEWARD_WEBHOOK_URL", hook));
    let _notifier = Proc::service("steward-notifier", &bus, &settings);

    build_and_push(&image, &labelled("v2", "2.0.0", "bbbbbbb2"));
    steward(&bus, &["check"]);
    let mails = wait_mails(&maildir, &to, 1, Duration::from_secs(40));
    let mail = &mails[0];
    for name in [&a.name, &b.name] {
        assert!(mail.subject.contains(name.as_str()), "{}", mail.subject);
        assert!(mail.text.contains(name.as_str()), "{}", mail.text);
    }
    assert!(mail.subject.contains("Newer image 2.0.0"), "{}", mail.subject);
    // One entry for the image, not one per container.
    assert_eq!(mail.text.matches("Newer image 2.0.0").count(), 1, "{}", mail.text);
    assert!(mail.text.contains("Running: 1.0.0 (sha256:"), "{}", mail.text);
    assert!(mail.text.contains("New: 2.0.0 (sha256:"), "{}", mail.text);
    assert!(mail.text.contains("Released: "), "{}", mail.text);
    let notes = "https://github.com/example/app/compare/aaaaaaa1...bbbbbbb2";
    assert!(mail.text.contains(&format!("Release notes: {notes}")), "{}", mail.text);
    assert!(mail.html.contains("Release notes: <a href="), "{}", mail.html);
    assert!(mail.text.contains("steward.update.policy=notify"), "{}", mail.text);
    let hooked = steward_testkit::wait_for("the webhook call", Duration::from_secs(20), || {
        received.lock().expect("lock").first().cloned()
    });
    assert_eq!(hooked["items"].as_array().map(Vec::len), Some(1), "{hooked}");
    assert_eq!(hooked["items"][0]["release_notes"], notes, "{hooked}");

    // The updater leaves notify containers alone.
    let all = stored_events(&bus).await;
    assert!(
        !all.iter().any(|e| e.event_type().starts_with("update.")),
        "{:?}",
        all.iter().map(|e| e.event_type()).collect::<Vec<_>>()
    );

    // Checked again: nothing new. A third container on the old image, announced in a later
    // burst: the image was reported already, so nothing either.
    steward(&bus, &["check"]);
    docker(&["tag", &v1_id, &image]);
    let c = notify_container(&scope, &image);
    steward(&bus, &["check"]);
    wait_event_for(&bus, &c.name).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(mails_to(&maildir, &to).len(), 1, "{:#?}", mails_to(&maildir, &to));
    assert_eq!(received.lock().expect("lock").len(), 1, "webhook once too");
}

/// Waits for the `image.updated` of `container`.
async fn wait_event_for(bus: &steward_bus::Bus, container: &str) {
    steward_testkit::wait_for(
        "image.updated of the third container",
        Duration::from_secs(30),
        || {
            let all = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(stored_events(bus))
            });
            all.iter()
                .any(|e| e.event_type() == "image.updated" && e.data.container() == Some(container))
                .then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_update_is_reported_once_it_succeeded() {
    let bus = TestBus::new("autoreport").await;
    let scope = unique_name("scope");
    let to = unique_address("autoreport");
    let maildir = testbed_maildir();
    let app = app(&scope, "automatic", &[]);
    let _watcher = Proc::service("steward-watcher", &bus, &[("STEWARD_SCOPE", scope.clone())]);
    let _updater = Proc::service(
        "steward-updater",
        &bus,
        &[("STEWARD_SCOPE", scope.clone()), ("STEWARD_HEALTH_GRACE", "3s".into())],
    );
    let mut settings = testbed_notifier_env(&to);
    settings.push(("STEWARD_NOTIFY_GROUP_WINDOW", "2s".into()));
    let _notifier = Proc::service("steward-notifier", &bus, &settings);

    push_app("v2", &app.image);
    steward(&bus, &["check"]);
    wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    let mails = wait_mails(&maildir, &to, 1, Duration::from_secs(30));
    assert!(
        mails[0].subject.contains(&format!("{} updated automatically to", app.name)),
        "{}",
        mails[0].subject
    );
    // Its newer image is not reported besides (the policy is not notify).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(mails_to(&maildir, &to).len(), 1, "{:#?}", mails_to(&maildir, &to));
}

/// The reported-image markers do not grow forever: those older than the horizon are purged,
/// the others stay (a purged digest still the newest is reported once more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_image_markers_older_than_the_horizon_are_purged() {
    use steward_bus::StateStore;
    use steward_events::records::ANNOUNCED_BUCKET;
    use steward_notifier::news::{Announced, Announcements};
    use steward_notifier::outbox::ChannelKind;

    let bus = TestBus::new("announcedpurge").await;
    let announcements = Announcements::open(&bus).await.expect("bucket");
    let news = |container: &str, fill: char| {
        steward_events::Event::new(
            "steward-watcher/test",
            steward_events::ImageUpdated {
                container: container.into(),
                image: format!("example.org/{container}:1"),
                current_digest: steward_events::Digest::parse(&format!(
                    "sha256:{}",
                    "a".repeat(64)
                ))
                .expect("digest"),
                new_digest: steward_events::Digest::parse(&format!(
                    "sha256:{}",
                    fill.to_string().repeat(64)
                ))
                .expect("digest"),
                new_tag: None,
                policy: Some("notify".into()),
                versions: Default::default(),
            },
        )
    };
    let (old, fresh) = (news("old", 'b'), news("fresh", 'c'));
    announcements.mark(ChannelKind::Email, &[&old]).await.expect("mark");
    announcements.mark(ChannelKind::Email, &[&fresh]).await.expect("mark");
    let store: StateStore<Announced> =
        StateStore::open(&bus, ANNOUNCED_BUCKET).await.expect("open");
    let keys = store.keys().await.expect("keys");
    assert_eq!(keys.len(), 2);
    for key in &keys {
        let v = store.get(key).await.expect("get").expect("marker");
        if v.value.containers == ["old"] {
            let mut aged = v.value.clone();
            aged.at -= steward_notifier::news::KEEP_ANNOUNCED + Duration::from_secs(60);
            store.update(key, &aged, v.revision).await.expect("age it");
        }
    }
    let horizon = time::OffsetDateTime::now_utc() - steward_notifier::news::KEEP_ANNOUNCED;
    assert_eq!(announcements.purge(horizon).await.expect("purge"), 1);
    let left = store.keys().await.expect("keys");
    assert_eq!(left.len(), 1);
    let kept = store.get(&left[0]).await.expect("get").expect("marker").value;
    assert_eq!(kept.containers, ["fresh"]);
    assert_eq!(announcements.purge(horizon).await.expect("purge"), 0, "nothing more");
}
