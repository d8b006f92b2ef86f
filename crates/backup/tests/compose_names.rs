//! A backup taken where compose v1 named the containers `<project>_<service>_1` restores where
//! compose v2 names them `<project>-<service>-1`, and the reverse: the containers are found by
//! the compose project and service the backup recorded (real containers, real PostgreSQL, the
//! test bed's S3). No container, or several, for a service is a refusal that changes nothing.

mod common;

use common::{Stack, DB_USER};
use steward_events::RestoreScope;
use steward_testkit::docker::{docker, postgres, Container};
use steward_testkit::{testbed, unique_name};

/// Which compose named the containers.
#[derive(Clone, Copy, Debug)]
enum Naming {
    V1,
    V2,
}

fn name(naming: Naming, project: &str, service: &str) -> String {
    match naming {
        Naming::V1 => format!("{project}_{service}_1"),
        Naming::V2 => format!("{project}-{service}-1"),
    }
}

/// The database and the app of compose project `project`, as compose would make them.
fn compose_pair(naming: Naming, scope: &str, project: &str) -> (Container, Container) {
    compose_pair_with(naming, scope, project, &[])
}

/// [`compose_pair`], the database with `db_extra` labels too.
fn compose_pair_with(
    naming: Naming,
    scope: &str,
    project: &str,
    db_extra: &[&str],
) -> (Container, Container) {
    let labels = |service: &str| {
        vec![
            format!("steward.scope={scope}"),
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={service}"),
        ]
    };
    let mut db_labels = labels("db");
    db_labels.push("steward.backup.postgres=true".into());
    db_labels.extend(db_extra.iter().map(|l| l.to_string()));
    let db_labels: Vec<&str> = db_labels.iter().map(String::as_str).collect();
    let db = postgres(&name(naming, project, "db"), &db_labels, DB_USER);
    (db, app_container(naming, project, "app", &labels("app")))
}

fn app_container(naming: Naming, project: &str, service: &str, labels: &[String]) -> Container {
    let mut args: Vec<&str> = vec!["-v", "/data", "--label", "steward.backup.paths=/data"];
    for l in labels {
        args.extend(["--label", l]);
    }
    let image = format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE"));
    args.push(&image);
    Container::run(&name(naming, project, service), &args)
}

fn psql(db: &Container, sql: &str) -> String {
    docker(&["exec", &db.name, "psql", "-U", DB_USER, "-d", DB_USER, "-tAc", sql])
}

fn sh(c: &Container, script: &str) -> String {
    docker(&["exec", &c.name, "sh", "-c", script])
}

/// A bucket and the backups' configuration of a scope of its own, without the library stack's
/// own containers (these tests make theirs as compose would).
async fn bare_stack(tag: &str) -> Stack {
    let stack = Stack::start(tag, &[]).await;
    docker(&["rm", "-f", "-v", &stack.db.name, &stack.app.name]);
    stack
}

/// Backs up a pair named by `from`, removes it, restores into a fresh pair named by `to`.
async fn restores_across(from: Naming, to: Naming) {
    let stack = bare_stack("cnames").await;
    let project = unique_name("proj").replace('-', "");
    let (db, app) = compose_pair(from, &stack.scope, &project);
    psql(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 500)",
    );
    sh(&app, "mkdir -p /data/repos && echo 'the old host' > /data/repos/README");
    let (id, manifest) = stack.back_up().await;
    let named: Vec<String> = manifest.components.iter().map(|c| c.name.clone()).collect();
    assert!(named.iter().any(|n| n.contains(&db.name)), "{named:?}");
    drop((db, app));

    // The rebuilt host: the same project and services, named by the other compose.
    let (db, app) = compose_pair(to, &stack.scope, &project);
    assert_eq!(psql(&db, "SELECT count(*) FROM pg_tables WHERE tablename = 'items'"), "0");
    let restored = stack
        .backups
        .restore(&id, RestoreScope::All)
        .await
        .unwrap_or_else(|e| panic!("{from:?} -> {to:?}: restore failed: {e}"));
    assert_eq!(restored.restored.len(), 2, "{:?}", restored.restored);
    assert_eq!(psql(&db, "SELECT count(*) FROM items"), "500");
    assert_eq!(sh(&app, "cat /data/repos/README"), "the old host");
    drop((db, app));
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compose_v1_backup_restores_into_compose_v2_containers() {
    restores_across(Naming::V1, Naming::V2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compose_v2_backup_restores_into_compose_v1_containers() {
    restores_across(Naming::V2, Naming::V1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_container_or_two_for_a_service_is_a_refusal_that_changes_nothing() {
    let stack = bare_stack("cnamesno").await;
    let project = unique_name("proj").replace('-', "");
    let (db, app) = compose_pair(Naming::V1, &stack.scope, &project);
    sh(&app, "echo backed-up > /data/mark");
    let (id, _) = stack.back_up().await;
    drop((db, app));

    // Only the database exists under the new naming: the app's service has no container.
    let labels = |service: &str| {
        vec![
            format!("steward.scope={}", stack.scope),
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={service}"),
        ]
    };
    let mut db_labels = labels("db");
    db_labels.push("steward.backup.postgres=true".into());
    let db_labels: Vec<&str> = db_labels.iter().map(String::as_str).collect();
    let db = postgres(&name(Naming::V2, &project, "db"), &db_labels, DB_USER);
    psql(&db, "CREATE TABLE kept (id int)");
    let e = stack.backups.restore(&id, RestoreScope::All).await.expect_err("no app container");
    assert!(
        e.reason.contains("service app") && e.reason.contains("no container runs that service"),
        "{}",
        e.reason
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM pg_tables WHERE tablename = 'kept'"), "1");

    // Two containers of the app's service (scaled): which one is ambiguous.
    let one = app_container(Naming::V2, &project, "app", &labels("app"));
    let two = Container::run(
        &format!("{project}-app-2"),
        &[
            "--label",
            &format!("steward.scope={}", stack.scope),
            "--label",
            &format!("com.docker.compose.project={project}"),
            "--label",
            "com.docker.compose.service=app",
            "--label",
            "steward.backup.paths=/data",
            "-v",
            "/data",
            &format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE")),
        ],
    );
    sh(&one, "echo new > /data/mark");
    let e = stack.backups.restore(&id, RestoreScope::All).await.expect_err("two app containers");
    assert!(
        e.reason.contains("2 containers run that service")
            && e.reason.contains(&one.name)
            && e.reason.contains(&two.name),
        "{}",
        e.reason
    );
    assert_eq!(sh(&one, "cat /data/mark"), "new", "the refused restore touched the data");
    assert_eq!(psql(&db, "SELECT count(*) FROM pg_tables WHERE tablename = 'kept'"), "1");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &one.name]), "true");
    drop((db, one, two));
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_point_in_time_restore_onto_a_rebuilt_host_replays_the_wal_shipped_under_the_old_name() {
    use steward_backup::journal::RestoreJournal;
    use steward_backup::pitr::PointInTime;
    use steward_backup::restore::{Busy, RestoreOptions};
    let stack = bare_stack("cnamespitr").await;
    let project = unique_name("proj").replace('-', "");
    let pitr = ["steward.backup.pitr=true"];
    let (db, app) = compose_pair_with(Naming::V1, &stack.scope, &project, &pitr);
    let backups = common::pitr_stack_config(&stack);
    common::ship_round(&backups, &mut Default::default()).await;
    let (id, _) = stack.back_up().await;
    // Committed after the base: only the shipped WAL, under the v1 name, holds it.
    psql(&db, "CREATE TABLE after_base AS SELECT generate_series(1, 300) AS id");
    common::ship_until_current_of(&db.name, &backups).await;
    drop((db, app));

    // The rebuilt host: compose v2 names, a fresh cluster; nothing shipped under these names.
    let (db, app) = compose_pair_with(Naming::V2, &stack.scope, &project, &pitr);
    let options =
        RestoreOptions { physical: true, to_time: Some(PointInTime::Latest), ..Default::default() };
    let restored = stack
        .backups
        .restore_journaled(
            &id,
            RestoreScope::Db,
            options,
            &Busy::new(),
            &mut RestoreJournal::none(),
        )
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(
        restored.restored,
        vec![format!("postgres-base/{}", name(Naming::V1, &project, "db"))]
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM pg_tables WHERE tablename = 'after_base'"), "1");
    assert_eq!(psql(&db, "SELECT count(*) FROM after_base"), "300");
    drop((db, app));
    stack.destroy_bucket().await;
}
