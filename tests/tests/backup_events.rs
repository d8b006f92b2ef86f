//! The audit trail and the stack survive the host: every backup holds an export of the event
//! stream and the state buckets, and the compose project's directory (encrypted); `steward-backup
//! extract` gives them back checked, and `steward events import` brings the stream onto a
//! fresh NATS server (Steward's users, as the setup user) where `steward audit` shows the old
//! flows. A second import skips everything; a forged or garbled export and a stream that has
//! the services' consumers already are refused with nothing imported.

use std::path::Path;
use std::process::{Command, Output};

use steward_bus::{check_import, ExportRecord};
use steward_events::Service;
use steward_system_tests::{binary, service_env, steward_with, Proc, TestBucket};
use steward_testkit::docker::Container;
use steward_testkit::{unique_name, NatsServer, TestBus};

/// A key pair for this test only (never used elsewhere), as in `compose_stack.rs`.
const AGE_IDENTITY: &str =
    "AGE-SECRET-KEY-1TQ0UG4Y3YZAUMMR7LJCUP96AD9H89VMU2TN6HM6Q5DQ8F4N3TA4QJ89FME";
const AGE_RECIPIENT: &str = "age1n0q6qa4nn35xq034he2a5rrcj7g9fl58w7d25wnnvzd2a3lhcdks2vcp8m";
/// What the project's `.env` holds: it must come back, and never stand in the bucket in clear.
const SECRET: &str = "GITEA_DB_PASSWORD=s3cret-of-the-project";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `steward ARGS` against the fresh server as `user` (default namespace).
fn on_fresh(server: &NatsServer, user: &str, password: String, args: &[&str]) -> Output {
    Command::new(binary("steward"))
        .env_clear()
        .env("STEWARD_NATS_URL", server.url())
        .env("STEWARD_NATS_USER", user)
        .env("STEWARD_NATS_PASSWORD", password)
        .env("USER", "tester")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("steward {args:?}: {e}"))
}

fn import(server: &NatsServer, file: &Path) -> Output {
    let file = file.to_string_lossy();
    on_fresh(server, "setup", NatsServer::setup_password(), &["events", "import", &file])
}

/// Messages in the fresh server's stream, as the CLI user replays them (dead letters too).
fn stored(server: &NatsServer) -> usize {
    let password = NatsServer::password(Service::Cli);
    let out = on_fresh(server, "cli", password, &["events", "replay", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_and_the_project_come_back_onto_a_fresh_nats() {
    let bus = TestBus::new("bkevents").await;
    let bucket = TestBucket::new("events").await;
    let scope = unique_name("bkevents");
    let project = std::env::temp_dir().join(unique_name("steward-project"));
    std::fs::create_dir_all(&project).unwrap_or_else(|e| panic!("mkdir: {e}"));
    std::fs::write(project.join("docker-compose.yml"), "services: {}\n").expect("write");
    std::fs::write(project.join(".env"), format!("{SECRET}\n")).expect("write");
    let dir = project.to_string_lossy().into_owned();
    // A labelled container of the project that mounts its directory (in the stack: the
    // backup service itself).
    let app = Container::run(
        &format!("{scope}-app"),
        &[
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            "steward.backup.paths=/data",
            "--label",
            &format!("com.docker.compose.project.working_dir={dir}"),
            "-v",
            "/data",
            "-v",
            &format!("{dir}:/project:ro"),
            &format!("{}:v1", steward_testkit::testbed::require("STEWARD_TEST_APP_IMAGE")),
        ],
    );
    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    env.push(("STEWARD_BACKUP_AGE_RECIPIENTS", AGE_RECIPIENT.into()));
    env.push(("STEWARD_BACKUP_AGE_IDENTITY", AGE_IDENTITY.into()));
    let backup = Proc::service("steward-backup", &bus, &env);

    // Two backups: the second's export holds the whole flow of the first.
    let mut ids = vec![];
    // Often within one second: retention (one a day) must keep the second, not tie on the
    // ids' whole seconds.
    for _ in 0..2 {
        let out = steward_with(&bus, &env, &["backup", "now"]);
        assert!(out.status.success(), "{}\n{}", text(&out), backup.logs());
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = said.split_whitespace().nth(1).unwrap_or_default().to_owned();
        assert!(said.starts_with("backup ") && id.len() > 16, "{said}");
        ids.push(id);
    }
    let extract = |what: &str| {
        Command::new(binary("steward-backup"))
            .env_clear()
            .envs(service_env(&bus, &env))
            .args(["extract", &ids[1], what])
            .output()
            .unwrap_or_else(|e| panic!("steward-backup extract: {e}"))
    };

    // The project: back whole, through the container that mounts it; encrypted in the bucket.
    let tar = extract("project");
    let store = bucket.store().await;
    if !tar.status.success() {
        let objects = store.list_objects(&ids[1]).await;
        panic!("{}: {objects:?}\n{}", String::from_utf8_lossy(&tar.stderr), backup.logs());
    }
    let tar_text = String::from_utf8_lossy(&tar.stdout);
    assert!(
        tar_text.contains("docker-compose.yml") && tar_text.contains(SECRET),
        "{tar_text:.300}"
    );
    for object in store.list_objects(&ids[1]).await.unwrap_or_else(|e| panic!("list: {e}")) {
        let (body, _) = store
            .get_pinned(&object, None)
            .await
            .unwrap_or_else(|e| panic!("get {object}: {e}"))
            .unwrap_or_else(|| panic!("{object} missing"));
        let mut bytes = vec![];
        tokio::io::AsyncReadExt::read_to_end(&mut Box::pin(body), &mut bytes)
            .await
            .unwrap_or_else(|e| panic!("read {object}: {e}"));
        let clear = String::from_utf8_lossy(&bytes);
        assert!(!clear.contains(SECRET), "{object} holds the project's secret in clear");
    }

    // The stream: every record an export record, the first backup's flow among them.
    let events = extract("events");
    assert!(events.status.success(), "{}", String::from_utf8_lossy(&events.stderr));
    let lines: Vec<ExportRecord> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let messages = lines.iter().filter(|r| matches!(r, ExportRecord::Message(_))).count();
    assert!(messages >= 4, "{lines:?}");
    let file = std::env::temp_dir().join(unique_name("steward-export")).with_extension("ndjson");
    std::fs::write(&file, &events.stdout).expect("write export");

    // A rebuilt host: a fresh NATS server with Steward's users; the import runs as setup's.
    let fresh = NatsServer::start_with_steward_users();
    let first = import(&fresh, &file);
    assert!(first.status.success(), "{}\n{}", text(&first), fresh.log());
    assert!(
        text(&first).contains(&format!("imported {messages} events (0 already")),
        "{}",
        text(&first)
    );
    let cli = NatsServer::password(Service::Cli);
    let audit = on_fresh(&fresh, "cli", cli.clone(), &["audit", "--json"]);
    assert!(audit.status.success(), "{}", text(&audit));
    let flows = String::from_utf8_lossy(&audit.stdout);
    let first_flow = flows
        .lines()
        .find(|l| l.contains(&format!("\"backup_id\":\"{}\"", ids[0])) && l.contains("backup.done"))
        .unwrap_or_else(|| panic!("the first backup's flow is not in the audit: {flows}"));
    assert!(first_flow.contains("backup.requested"), "{first_flow}");
    // The restored backup's own flow: its export was taken while it ran, so the extract adds
    // the `backup.done` its signed manifest proves; the flow is done, not begun.
    let own = flows
        .lines()
        .find(|l| l.contains(&format!("\"backup_id\":\"{}\"", ids[1])))
        .unwrap_or_else(|| panic!("the second backup's flow is not in the audit: {flows}"));
    let own: serde_json::Value = serde_json::from_str(own).unwrap_or_else(|e| panic!("{e}: {own}"));
    assert_eq!(own["outcome"], "done", "{own:#}");
    let types: Vec<&str> =
        own["events"].as_array().into_iter().flatten().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["backup.requested", "backup.started", "backup.done"], "{own:#}");
    let count = stored(&fresh);

    // Again: every message is there already, nothing is added.
    let again = import(&fresh, &file);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains(&format!("imported 0 events ({messages} already")),
        "{}",
        text(&again)
    );
    assert_eq!(stored(&fresh), count);

    // The backup service's own NATS user may export what was imported: the same messages,
    // the same ids, in the same order.
    let ids_of = |records: &[ExportRecord]| -> Vec<String> {
        records
            .iter()
            .filter_map(|r| match r {
                ExportRecord::Message(m) => m.msg_id().map(str::to_owned),
                _ => None,
            })
            .collect()
    };
    let backup_config = fresh.bus_config_as(Service::Backup);
    // A message the stream took but the consumers refuse (a participant's malformed publish
    // on its own subject): left out of the export, which stays importable, and counted.
    let credentials = backup_config.credentials.clone().expect("the backup user");
    let raw = async_nats::ConnectOptions::with_user_and_password(
        credentials.user.clone(),
        credentials.password.clone(),
    )
    .custom_inbox_prefix(steward_bus::inbox_prefix(&credentials.user))
    .connect(backup_config.url.as_str())
    .await
    .unwrap_or_else(|e| panic!("connect as backup: {e}"));
    let mut poison = async_nats::HeaderMap::new();
    poison.insert("Nats-Msg-Id", "poison-1");
    let subject = backup_config.namespace.subject("backup.done");
    async_nats::jetstream::new(raw)
        .publish_with_headers(subject, poison, "{\"not\": \"an event\"}".into())
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"))
        .await
        .unwrap_or_else(|e| panic!("stored: {e}"));
    let count = count + 1;
    let as_backup = steward_bus::Bus::connect(backup_config, "backup")
        .await
        .unwrap_or_else(|e| panic!("the backup user connects: {e}"));
    let mut export =
        as_backup.export().await.unwrap_or_else(|e| panic!("the backup user exports: {e}"));
    let mut again_records = vec![];
    while let Some(record) = export.next().await {
        again_records.push(record.unwrap_or_else(|e| panic!("export: {e}\n{}", fresh.log())));
    }
    assert_eq!(ids_of(&again_records), ids_of(&lines));
    assert_eq!(export.skipped(), 1, "the malformed message is counted as left out");
    assert!(check_import(&again_records).is_empty(), "{:?}", check_import(&again_records));

    // Hostile exports: refused whole, nothing imported.
    let original = String::from_utf8_lossy(&events.stdout).into_owned();
    let forged_line = original
        .lines()
        .find(|l| l.contains("\"subject\":\"backup.done\""))
        .expect("a backup.done line")
        .replace("\"subject\":\"backup.done\"", "\"subject\":\"restore.requested\"");
    let extra = format!("{original}{forged_line}\n");
    let garbled = format!("{original}not json\n");
    let headless: String = original.lines().skip(1).map(|l| format!("{l}\n")).collect();
    for (what, body, says) in [
        ("a message whose subject is not its event's type", extra, "not an event of its subject"),
        ("a line that is not JSON", garbled, "not a Steward export"),
        ("no header", headless, "not an export header"),
    ] {
        let path = std::env::temp_dir().join(unique_name("steward-hostile"));
        std::fs::write(&path, body).expect("write");
        let out = import(&fresh, &path);
        let _ = std::fs::remove_file(&path);
        assert!(!out.status.success(), "{what}: imported: {}", text(&out));
        assert!(
            text(&out).contains(says) && text(&out).contains("nothing was imported"),
            "{what}: {}",
            text(&out)
        );
        assert_eq!(stored(&fresh), count, "{what}: the stream changed");
    }

    // Once `steward setup` made the services' consumers, they would take old events for new.
    let setup = on_fresh(&fresh, "setup", NatsServer::setup_password(), &["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let late = import(&fresh, &file);
    assert!(!late.status.success() && text(&late).contains("durable consumers"), "{}", text(&late));

    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&project);
    drop(app);
    drop(backup);
    bucket.destroy().await;
}
