//! Backup, restore and verification on Podman: the backup service as a real process whose
//! engine is Podman's Docker-compatible service (`DOCKER_HOST` = the test bed's Podman
//! socket), a PostgreSQL and an app with a data volume run by Podman, the test bed's S3
//! server. This is the engine API the backup uses beyond the update's: exec with output
//! (`pg_dump`) and with stdin (`pg_restore`), the archive API both ways (the data path), a
//! stop and start for a consistent copy, and the scratch PostgreSQL the verification loads
//! each dump into. A backup of a stopped container's volume, which Podman 4.3 archives with
//! its entries named from `/`, is stored as Docker names it and restores.
//!
//! Skipped (with the reason printed) without a Podman service, unless
//! `STEWARD_TEST_ENGINE=podman` asks for it.

use std::time::{Duration, Instant};

use steward_events::{BackupReason, BackupRequested, Event, EventData};
use steward_system_tests::{service_env, steward_with, Proc, TestBucket};
use steward_testkit::docker::{build_and_push, docker, push, registry, ImageTag};
use steward_testkit::podman::{cli, pushed_app, Containers, Names};
use steward_testkit::{stored_events, testbed, unique_name, wait_for, TestBus};

/// `podman ARGS` that must succeed; its stdout, trimmed.
fn podman(args: &[&str]) -> String {
    let out = cli(args);
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn psql(db: &str, sql: &str) -> String {
    podman(&["exec", db, "psql", "-U", "app", "-d", "app", "-tAc", sql])
}

/// The `backup.done` or `backup.failed` answering a manual backup of `container`, within
/// 90 s (`logs`: the backup service's, for the failure message).
async fn backup_of(bus: &steward_bus::Bus, container: &str, logs: &dyn Fn() -> String) -> Event {
    let request = Event::new(
        "steward-cli/test",
        BackupRequested {
            reason: BackupReason::Manual,
            containers: vec![container.to_owned()],
            requested_by: None,
        },
    );
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let outcome = stored_events(bus).await.into_iter().find(|e| {
            e.correlation_id == request.correlation_id
                && matches!(e.data, EventData::BackupDone(_) | EventData::BackupFailed(_))
        });
        if let Some(e) = outcome {
            return e;
        }
        assert!(Instant::now() < deadline, "no outcome: {}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_on_podman_restores_and_verifies() {
    let Some(socket) = steward_testkit::podman::socket() else { return };
    let bus = TestBus::new("podbackup").await;
    let bucket = TestBucket::new("podman").await;
    let scope = unique_name("podbackup");

    // The test bed's images, through its registry (Podman cannot read Docker's store).
    let postgres = format!("{}/{}:15", registry(), unique_name("steward-test/podman-postgres"));
    docker(&["tag", &testbed::require("STEWARD_TEST_POSTGRES_IMAGE"), &postgres]);
    let pg_digest = push(&postgres);
    docker(&["rmi", &postgres]);
    let (app_repo, app_digest) = pushed_app("v1");
    let app_image = format!("{app_repo}:1.0");
    let pg_repo = postgres.trim_end_matches(":15");
    // Dropped after the containers.
    let _names = Names(vec![
        postgres.clone(),
        format!("{pg_repo}@{pg_digest}"),
        app_image.clone(),
        format!("{app_repo}@{app_digest}"),
    ]);
    podman(&["pull", "-q", &postgres]);
    podman(&["pull", "-q", &app_image]);

    let (db, app) = (format!("{scope}-db"), format!("{scope}-app"));
    let _containers = Containers(vec![db.clone(), app.clone()]);
    let scope_label = format!("steward.scope={scope}");
    podman(&[
        "run",
        "-d",
        "--name",
        &db,
        "--label",
        &scope_label,
        "--label",
        "steward.backup.postgres=true",
        "-e",
        "POSTGRES_USER=app",
        "-e",
        "POSTGRES_PASSWORD=secret",
        "-e",
        "POSTGRES_DB=app",
        &postgres,
    ]);
    podman(&[
        "run",
        "-d",
        "--name",
        &app,
        "--label",
        &scope_label,
        "--label",
        "steward.enable=true",
        "--label",
        "steward.backup.paths=/data",
        "-v",
        "/data",
        &app_image,
    ]);
    wait_for("PostgreSQL on Podman ready", Duration::from_secs(60), || {
        let out = cli(&["exec", &db, "pg_isready", "-h", "127.0.0.1", "-U", "app"]);
        out.status.success().then_some(())
    });
    psql(&db, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 5000) g");
    podman(&["exec", &app, "sh", "-c", "echo precious > /data/repo.txt"]);

    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    env.push(("DOCKER_HOST", format!("unix://{socket}")));
    let mut backup = Proc::service("steward-backup", &bus, &env);
    let done = backup_of(&bus, &app, &|| backup.logs()).await;
    let EventData::BackupDone(done) = done.data else {
        panic!("backup on Podman failed: {:?}\n{}", done.data, backup.logs())
    };
    let names: Vec<&str> = done.components.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&format!("postgres/{db}").as_str()), "{names:?}");
    assert!(names.contains(&format!("{app}:/data").as_str()), "{names:?}");

    // Lose data; restore through the CLI.
    psql(&db, "DELETE FROM t WHERE id > 10");
    podman(&["exec", &app, "sh", "-c", "rm /data/repo.txt && echo stray > /data/new.txt"]);
    let restored = steward_with(&bus, &env, &["restore", "latest", "--yes"]);
    assert!(
        restored.status.success(),
        "restore on Podman: {}\n{}",
        String::from_utf8_lossy(&restored.stderr),
        backup.logs()
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM t"), "5000");
    assert_eq!(podman(&["exec", &app, "cat", "/data/repo.txt"]), "precious");
    assert!(!cli(&["exec", &app, "test", "-e", "/data/new.txt"]).status.success());

    // The full verification: every dump loaded into a scratch PostgreSQL on Podman.
    let verified = steward_with(&bus, &env, &["backup", "verify", &done.backup_id]);
    assert!(
        verified.status.success(),
        "verify on Podman: {}\n{}",
        String::from_utf8_lossy(&verified.stderr),
        backup.logs()
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("database dumps load"));

    assert_eq!(backup.terminate(Duration::from_secs(20)), Some(0), "{}", backup.logs());

    // Stopped for a consistent copy, Podman 4.3 archives the volume with names from `/`
    // (the backup refused it, since such a copy could not be restored; before that it was
    // stored and no restore accepted it): the names are put back on the way, the copy
    // restores, and the container runs again.
    let stopped_scope = unique_name("podbackup-stop");
    let stopped = format!("{stopped_scope}-app");
    let _stopped = Containers(vec![stopped.clone()]);
    let stopped_label = format!("steward.scope={stopped_scope}");
    podman(&[
        "run",
        "-d",
        "--name",
        &stopped,
        "--label",
        &stopped_label,
        "--label",
        "steward.backup.paths=/data",
        "--label",
        "steward.backup.stop=true",
        "-v",
        "/data",
        &app_image,
    ]);
    // A name too long for a tar header once `data/` is in front, a hard link and a symbolic
    // link (whose target is its content, never renamed): each comes back as it was.
    let long = "n".repeat(97);
    let script = format!(
        "mkdir -p /data/sub && echo kept > /data/sub/a.txt && echo long > /data/{long} \
         && ln /data/sub/a.txt /data/hard && ln -s sub/a.txt /data/soft \
         && chown 1000:100 /data/sub /data/sub/a.txt && chown 33:44 /data/{long}"
    );
    podman(&["exec", &stopped, "sh", "-c", &script]);
    let mut stop_env = bucket.env();
    stop_env.push(("STEWARD_SCOPE", stopped_scope.clone()));
    stop_env.push(("DOCKER_HOST", format!("unix://{socket}")));
    let mut backup = Proc::service("steward-backup", &bus, &stop_env);
    let outcome = backup_of(&bus, &stopped, &|| backup.logs()).await;
    let EventData::BackupDone(_) = outcome.data else {
        panic!("a backup of a stopped volume on Podman: {:?}\n{}", outcome.data, backup.logs())
    };
    assert_eq!(podman(&["inspect", "-f", "{{.State.Running}}", &stopped]), "true");
    let lost = format!("rm -rf /data/sub /data/{long} /data/hard /data/soft && echo x > /data/y");
    podman(&["exec", &stopped, "sh", "-c", &lost]);
    let restored = steward_with(&bus, &stop_env, &["restore", "latest", "--yes"]);
    assert!(
        restored.status.success(),
        "restore of the stopped volume on Podman: {}\n{}",
        String::from_utf8_lossy(&restored.stderr),
        backup.logs()
    );
    let listing = podman(&[
        "exec",
        &stopped,
        "sh",
        "-c",
        &format!(
            "cat /data/sub/a.txt /data/{long}; readlink /data/soft; \
             [ /data/hard -ef /data/sub/a.txt ] && echo linked; ls /data; \
             stat -c %u:%g /data/sub /data/sub/a.txt /data/{long}"
        ),
    ]);
    // With their owners: the stopped container's volume is listed in a one-shot container
    // sharing it (before, Podman's archive read made every restored file root's).
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        [
            "kept",
            "long",
            "sub/a.txt",
            "linked",
            "hard",
            long.as_str(),
            "soft",
            "sub",
            "1000:100",
            "1000:100",
            "33:44"
        ],
        "{listing}"
    );
    assert_eq!(podman(&["inspect", "-f", "{{.State.Running}}", &stopped]), "true");
    assert_eq!(backup.terminate(Duration::from_secs(20)), Some(0), "{}", backup.logs());
    // No scratch or helper container of this test's left on Podman (other tests may be
    // running theirs on the same service).
    let format = r#"{{.Names}} {{index .Labels "steward.helper"}}"#;
    let left = podman(&["ps", "-a", "--format", format]);
    let ours: Vec<&str> = left
        .lines()
        .filter(|l| l.contains("steward") || l.split_whitespace().nth(1).is_some())
        .filter(|l| l.contains(&scope) || l.contains(&stopped_scope))
        .filter(|l| *l != format!("{stopped} ") && !l.starts_with(&format!("{scope}-")))
        .collect();
    assert!(ours.is_empty(), "left on Podman: {ours:?}");
    bucket.destroy().await;
}

/// A named Podman volume, removed when dropped (after the containers using it).
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = cli(&["volume", "rm", "-f", &self.0]);
    }
}

/// The backup service in a container of Steward's own image (as the stack runs it), backing
/// up and restoring the volume of a distroless app: its image holds one static binary, no
/// shell, `find` or `tar`, so nothing can run in it. On Podman, whose archive read makes every
/// entry root's, the owners come back only from a listing; before, the listing ran only in
/// the app's container (and every file of such an app restored as root's, each backup read
/// whole), and the restore's helpers ran the app's image (`/bin/sh` missing: the restore
/// failed unless `STEWARD_RESTORE_HELPER_IMAGE` was set). Now both run in Steward's image,
/// sharing the app's volumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_distroless_apps_volume_keeps_its_owners_with_stewards_image_listing_it() {
    let Some(socket) = steward_testkit::podman::socket() else { return };
    let bus = TestBus::new("poddistroless").await;
    let bucket = TestBucket::new("podman-distroless").await;
    let scope = unique_name("poddl");

    // Steward's image and the app's, through the registry (Podman cannot read Docker's store).
    let repository = |image: &str| image.rsplit_once(':').map(|(r, _)| r.to_owned());
    let steward = format!("{}/{}:1", registry(), unique_name("steward-test/poddl-steward"));
    let _steward_tag = ImageTag(steward.clone());
    docker(&["tag", &steward_system_tests::stack::steward_image(), &steward]);
    let steward_digest = push(&steward);
    let app_image = format!("{}/{}:1", registry(), unique_name("steward-test/poddl-app"));
    let _app_tag = ImageTag(app_image.clone());
    let app_digest = build_and_push(
        &app_image,
        "FROM steward-test/busybox:latest AS tools\nFROM scratch\n\
         COPY --from=tools /bin/busybox /busybox\nENTRYPOINT [\"/busybox\", \"sleep\", \"3600\"]\n",
    );
    let mut names = Names(vec![
        steward.clone(),
        format!("{}@{steward_digest}", repository(&steward).unwrap_or_default()),
        app_image.clone(),
        format!("{}@{app_digest}", repository(&app_image).unwrap_or_default()),
    ]);
    names.0.push(podman(&["pull", "-q", &steward]));
    names.0.push(podman(&["pull", "-q", &app_image]));

    // The app's data, with owners and modes of its own (written by a helper: the app cannot).
    let volume = unique_name("poddl-data");
    let _volume = Volume(volume.clone());
    podman(&["volume", "create", &volume]);
    let mount = format!("{volume}:/data");
    let in_volume = |script: &str| {
        podman(&["run", "--rm", "-v", &mount, "steward-test/busybox:latest", "sh", "-c", script])
    };
    in_volume(
        "mkdir /data/sub && echo precious > /data/sub/a.txt && echo top > /data/top.txt \
         && chown 1234:2345 /data/sub /data/sub/a.txt && chmod 640 /data/sub/a.txt \
         && chown 33:44 /data/top.txt",
    );
    let app = format!("{scope}-app");
    let backup = unique_name("poddl-backup");
    let _containers = Containers(vec![app.clone(), backup.clone()]);
    let scope_label = format!("steward.scope={scope}");
    podman(&[
        "run",
        "-d",
        "--name",
        &app,
        "--label",
        &scope_label,
        "--label",
        "steward.backup.paths=/data",
        // Its `sleep` ignores SIGTERM as PID 1: a restore's stop need not wait out a grace.
        "--stop-signal",
        "KILL",
        "-v",
        &mount,
        &app_image,
    ]);
    assert_eq!(podman(&["inspect", "-f", "{{.State.Running}}", &app]), "true");
    let exec = cli(&["exec", &app, "/bin/sh", "-c", "true"]);
    assert!(!exec.status.success(), "the app's image has a shell: the test would prove nothing");

    // The service as the stack runs it, in Steward's image, with the engine's socket (root in
    // the container: Podman's socket is root's; the stack has the socket proxy instead) and
    // the host's network for the test bed's NATS and S3 on 127.0.0.1.
    let mut settings = bucket.env();
    settings.push(("STEWARD_SCOPE", scope.clone()));
    settings.push(("STEWARD_BACKUP_INCREMENTAL", "true".into()));
    settings.push(("DOCKER_HOST", "unix:///run/steward-test-podman.sock".into()));
    let settings: Vec<String> =
        service_env(&bus, &settings).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let socket_mount = format!("{socket}:/run/steward-test-podman.sock");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &backup,
        "--network",
        "host",
        "--user",
        "0",
        "-v",
        &socket_mount,
    ];
    for setting in &settings {
        args.extend(["-e", setting.as_str()]);
    }
    args.extend([steward.as_str(), "steward-backup"]);
    podman(&args);
    let logs = || {
        let out = cli(&["logs", &backup]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    wait_for("the contained backup service consuming", Duration::from_secs(30), || {
        logs().contains("\"consuming\"").then_some(())
    });

    let first = backup_of(&bus, &app, &logs).await;
    assert!(matches!(first.data, EventData::BackupDone(_)), "{:?}\n{}", first.data, logs());
    in_volume("echo later > /data/later.txt && chown 5:6 /data/later.txt");
    let second = backup_of(&bus, &app, &logs).await;
    assert!(matches!(second.data, EventData::BackupDone(_)), "{:?}\n{}", second.data, logs());
    // Listed, so the second took the unchanged entries from the first (before: read whole).
    let log = logs();
    assert!(!log.contains("no listing of the path"), "{log}");
    assert!(log.contains("unchanged entries taken from the previous backup unread"), "{log}");

    in_volume("rm -rf /data/sub /data/later.txt && echo stray > /data/stray.txt");
    let mut cli_env = bucket.env();
    cli_env.push(("STEWARD_SCOPE", scope.clone()));
    cli_env.push(("DOCKER_HOST", format!("unix://{socket}")));
    let restored = steward_with(&bus, &cli_env, &["restore", "latest", "--yes"]);
    assert!(
        restored.status.success(),
        "restore of a distroless app on Podman: {}\n{}",
        String::from_utf8_lossy(&restored.stderr),
        logs()
    );
    let seen = in_volume(
        "cat /data/sub/a.txt /data/top.txt /data/later.txt; ls /data; \
         stat -c '%u:%g %a' /data/sub /data/sub/a.txt /data/top.txt /data/later.txt",
    );
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [
            "precious",
            "top",
            "later",
            "later.txt",
            "sub",
            "top.txt",
            "1234:2345 755",
            "1234:2345 640",
            "33:44 644",
            "5:6 644"
        ],
        "{seen}\n{}",
        logs()
    );
    assert_eq!(podman(&["inspect", "-f", "{{.State.Running}}", &app]), "true");
    // Every one-shot and helper of the app's is gone.
    let helpers = podman(&["ps", "-a", "-q", "--filter", &format!("label=steward.helper={app}")]);
    assert!(helpers.is_empty(), "left on Podman: {helpers}");
    podman(&["stop", "-t", "20", &backup]);
    let exit = podman(&["inspect", "-f", "{{.State.ExitCode}}", &backup]);
    assert_eq!(exit, "0", "{}", logs());
    bucket.destroy().await;
}
