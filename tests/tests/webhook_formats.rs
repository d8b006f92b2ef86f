//! The webhook presets (issue 19, `STEWARD_WEBHOOK_FORMAT`) through the real `steward-notifier`
//! and NATS, each against a local HTTP receiver that records the request: the exact method,
//! path, headers and body each service documents (Slack incoming webhooks, Matrix client-server
//! API, ntfy, Gotify), severity mapped to each priority, tokens read from `_FILE` and only ever
//! in headers, never in an error or log line, and a Matrix message resent after the notifier
//! was killed between the homeserver's answer and the outbox's record carrying the same
//! transaction id (which a homeserver deduplicates).
//!
//! No Slack, Matrix, ntfy or Gotify server runs on this machine (none is packaged in Debian,
//! and a Matrix homeserver from PyPI is too heavy for the test bed): the receiver stands in,
//! and the shapes are checked against the services' documentation (cited in
//! `crates/notifier/src/webhook.rs`).

use std::path::PathBuf;
use std::time::Duration;

use steward_bus::Bus;
use steward_events::{Event, EventData, HealthFailed, HealthRecovered, UpdateFailed};
use steward_system_tests::mail::{http_sink, wait_requests, Recorded};
use steward_system_tests::{service_env, Proc};
use steward_testkit::{stored_events, unique_name, TestBus};

/// A token file of the test's own (the way operators give secrets: `_FILE`).
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(token: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name("hooktoken"));
        std::fs::write(&path, format!("{token}\n")).expect("write the token file");
        Self(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn settings(
    url: &str,
    format: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("STEWARD_WEBHOOK_URL", url.to_owned()),
        ("STEWARD_WEBHOOK_FORMAT", format.to_owned()),
        ("STEWARD_NOTIFY_GROUP_WINDOW", "1s".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn down(container: &str) -> Event {
    Event::new(
        "steward-health/test",
        HealthFailed {
            container: container.into(),
            check: "http".into(),
            reason: "GET / answered <502> & closed".into(),
            consecutive_failures: 3,
        },
    )
}

fn failed(container: &str) -> Event {
    Event::new(
        "steward-updater/test",
        UpdateFailed {
            update_id: uuid::Uuid::now_v7(),
            container: container.into(),
            image: "127.0.0.1:5000/steward-test/app:v1".into(),
            reason: "pre-update backup failed".into(),
            log_tail: vec![],
            kind: Default::default(),
            requested_by: None,
        },
    )
}

fn recovered(container: &str) -> Event {
    Event::new(
        "steward-health/test",
        HealthRecovered { container: container.into(), down_for_ms: 60_000 },
    )
}

/// The `notify.sent` and `notify.failed` events in the stream.
async fn outcomes(bus: &Bus) -> (Vec<Event>, Vec<Event>) {
    let all = stored_events(bus).await;
    let sent = all.iter().filter(|e| matches!(e.data, EventData::NotifySent(_))).cloned().collect();
    let failed =
        all.iter().filter(|e| matches!(e.data, EventData::NotifyFailed(_))).cloned().collect();
    (sent, failed)
}

fn is_stable_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_a_fallback_text_and_mrkdwn_blocks_and_its_secret_path_is_never_shown() {
    let bus = TestBus::new("hookslack").await;
    let (base, sink) = http_sink(200).await;
    let url = format!("{base}/services/T000/B000/slacksecretpath");
    let _n = Proc::service("steward-notifier", &bus, &settings(&url, "slack", &[]));
    let container = unique_name("slackapp");
    bus.publish(&down(&container)).await.expect("publish");

    let r = wait_requests(&sink, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/services/T000/B000/slacksecretpath")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("authorization"), None, "Slack's URL is its credential");
    let body = r.json();
    let text = body["text"].as_str().expect("text: the notification's fallback");
    assert!(text.starts_with("[steward] CRITICAL ") && text.contains(&container), "{body}");
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2, "a header and one section: {body}");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    let section = blocks[1]["text"]["text"].as_str().expect("mrkdwn");
    assert!(section.starts_with(":rotating_light: *"), "{section}");
    assert!(
        section.contains("*Saw:* GET / answered &lt;502&gt; &amp; closed"),
        "escaped: {section}"
    );
    assert!(section.contains("*What to do:* "), "{section}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, _) = outcomes(&bus).await;
    let [sent] = sent.as_slice() else { panic!("one notify.sent: {sent:?}") };
    let EventData::NotifySent(s) = &sent.data else { unreachable!() };
    assert_eq!(s.recipients, vec![format!("{base}/…")], "only the origin");
    assert!(!format!("{sent:?}").contains("slacksecretpath"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntfy_gets_title_priority_tags_and_sequence_headers_per_severity_and_a_plain_body() {
    let bus = TestBus::new("hookntfy").await;
    let (base, sink) = http_sink(200).await;
    let token = TokenFile::new("tk_ntfytesttoken");
    let url = format!("{base}/steward-alerts");
    let extra = [("STEWARD_WEBHOOK_TOKEN_FILE", token.path())];
    let _n = Proc::service("steward-notifier", &bus, &settings(&url, "ntfy", &extra));
    let container = unique_name("ntfyapp");
    // One at a time: each is a message of its own, with its own priority.
    let cases = [
        (down(&container), "5", "rotating_light"),
        (failed(&container), "4", "warning"),
        (recovered(&container), "3", "information_source"),
    ];
    for (i, (event, priority, tag)) in cases.iter().enumerate() {
        bus.publish(event).await.expect("publish");
        let r: Recorded = wait_requests(&sink, i + 1, Duration::from_secs(20)).await.remove(i);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/steward-alerts"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("authorization"), Some("Bearer tk_ntfytesttoken"));
        assert_eq!(r.header("priority"), Some(*priority), "{}: {r:?}", event.event_type());
        let title = r.header("title").unwrap_or_default();
        assert!(title.starts_with("[steward]") && title.contains(&container), "{title}");
        let tags = r.header("tags").unwrap_or_default();
        assert!(
            tags.split(',').any(|t| t == *tag) && tags.split(',').any(|t| t == "steward"),
            "{tags}"
        );
        assert!(r.header("x-sequence-id").is_some_and(is_stable_id), "{r:?}");
        assert!(r.body.contains("What to do:") && r.body.contains(&container), "{}", r.body);
        assert!(
            serde_json::from_str::<serde_json::Value>(&r.body).is_err(),
            "plain text, not JSON"
        );
    }
    let all = sink.lock().expect("lock").clone();
    let ids: std::collections::BTreeSet<_> =
        all.iter().filter_map(|r| r.header("x-sequence-id")).collect();
    assert_eq!(ids.len(), 3, "each message its own sequence id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gotify_gets_title_message_and_priority_with_the_key_in_a_header_never_in_the_url() {
    let bus = TestBus::new("hookgotify").await;
    let (base, sink) = http_sink(200).await;
    let token = TokenFile::new("AgotifyAppToken");
    let extra = [("STEWARD_WEBHOOK_TOKEN_FILE", token.path())];
    let _n = Proc::service("steward-notifier", &bus, &settings(&base, "gotify", &extra));
    let container = unique_name("gotifyapp");
    for (i, (event, priority)) in
        [(down(&container), 9), (failed(&container), 6), (recovered(&container), 3)]
            .iter()
            .enumerate()
    {
        bus.publish(event).await.expect("publish");
        let r = wait_requests(&sink, i + 1, Duration::from_secs(20)).await.remove(i);
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/message"),
            "no token in the query"
        );
        assert_eq!(r.header("x-gotify-key"), Some("AgotifyAppToken"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["priority"], *priority, "{}: {body}", event.event_type());
        assert!(
            body["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("[steward]") && t.contains(&container)),
            "{body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| m.contains("What to do:")), "{body}");
        assert_eq!(body["extras"]["client::display"]["contentType"], "text/plain");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_gotify_is_retried_and_its_token_is_in_no_event_and_no_log_line() {
    let bus = TestBus::new("hookdeny").await;
    let (base, sink) = http_sink(401).await;
    let token = TokenFile::new("SecretGotifyToken42");
    let extra = [("STEWARD_WEBHOOK_TOKEN_FILE", token.path())];
    let n = Proc::service("steward-notifier", &bus, &settings(&base, "gotify", &extra));
    bus.publish(&down(&unique_name("denyapp"))).await.expect("publish");
    // The first attempt, then the retry after 2 s.
    wait_requests(&sink, 2, Duration::from_secs(20)).await;
    let (sent, failed) = outcomes(&bus).await;
    assert!(sent.is_empty(), "{sent:?}");
    let [failed] = failed.as_slice() else {
        panic!("one notify.failed (the first failure): {failed:?}")
    };
    let EventData::NotifyFailed(f) = &failed.data else { unreachable!() };
    assert!(f.reason.contains("401") && f.reason.contains("gotify"), "{}", f.reason);
    assert!(!f.gave_up);
    let logs = n.logs();
    assert!(logs.contains("401"), "the failure is logged: {logs}");
    for place in [format!("{failed:?}"), logs] {
        assert!(!place.contains("SecretGotifyToken42"), "the token shows: {place}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_puts_into_the_room_and_a_resend_after_a_kill_carries_the_same_transaction_id() {
    let bus = TestBus::new("hookmatrix").await;
    let (base, sink) = http_sink(200).await;
    let token = TokenFile::new("syt_matrix_access_token");
    let extra = [
        ("STEWARD_WEBHOOK_TOKEN_FILE", token.path()),
        ("STEWARD_WEBHOOK_MATRIX_ROOM", "!ops:steward.test".to_owned()),
        ("STEWARD_ACK_WAIT", "2s".to_owned()),
    ];
    let env = settings(&base, "matrix", &extra);
    // Killed right after the homeserver answered, before the outbox recorded it.
    let mut killed = env.clone();
    killed.push(("STEWARD_FAILPOINTS", "notify:delivered".to_owned()));
    let mut first = Proc::service("steward-notifier", &bus, &killed);
    let container = unique_name("matrixapp");
    let event = down(&container);
    bus.publish(&event).await.expect("publish");
    assert!(
        first.exits_within(Duration::from_secs(30)),
        "never reached notify:delivered: {}",
        first.logs()
    );
    assert!(first.logs().contains("aborting"), "{}", first.logs());
    let once = wait_requests(&sink, 1, Duration::from_secs(1)).await;
    assert_eq!(once.len(), 1);

    let again = Proc::start("steward-notifier", &service_env(&bus, &env));
    let both = wait_requests(&sink, 2, Duration::from_secs(30)).await;
    let (a, b) = (&both[0], &both[1]);
    let prefix = "/_matrix/client/v3/rooms/!ops:steward.test/send/m.room.message/";
    assert_eq!(a.method, "PUT");
    let txn = a
        .path
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("not the room's send API: {}", a.path));
    assert!(is_stable_id(txn), "{txn}");
    assert_eq!(
        b.path, a.path,
        "the resend has the same transaction id: the homeserver deduplicates it"
    );
    assert_eq!(b.body, a.body, "and is the same message");
    assert_eq!(a.header("authorization"), Some("Bearer syt_matrix_access_token"));
    let body = a.json();
    assert_eq!(body["msgtype"], "m.text", "critical: a message clients notify about");
    assert_eq!(body["format"], "org.matrix.custom.html");
    assert!(body["body"].as_str().is_some_and(|t| t.contains(&container)), "{body}");
    let html = body["formatted_body"].as_str().unwrap_or_default();
    assert!(html.contains("<strong>") && html.contains("&lt;502&gt; &amp; closed"), "{html}");

    // Nothing a third time, and one notify.sent (the resend's repeat dropped by the stream).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.lock().expect("lock").len(), 2);
    let (sent, _) = outcomes(&bus).await;
    let about: Vec<_> = sent
        .iter()
        .filter(|s| matches!(&s.data, EventData::NotifySent(n) if n.about.contains(&event.id)))
        .collect();
    assert_eq!(about.len(), 1, "{sent:?}");
    let EventData::NotifySent(n) = &about[0].data else { unreachable!() };
    assert_eq!(n.recipients, vec![format!("{base} (room !ops:steward.test)")]);
    drop(again);
}
