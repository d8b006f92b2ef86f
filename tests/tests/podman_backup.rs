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
use steward_system_tests::{steward_with, Proc, TestBucket};
use steward_testkit::docker::{docker, push, registry};
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

/// The `backup.done` or `backup.failed` answering a manual backup of `container` asked of
/// `backup`, within 90 s.
async fn backup_of(bus: &steward_bus::Bus, container: &str, backup: &Proc) -> Event {
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
        assert!(Instant::now() < deadline, "no outcome: {}", backup.logs());
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
    let done = backup_of(&bus, &app, &backup).await;
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
    let outcome = backup_of(&bus, &stopped, &backup).await;
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
