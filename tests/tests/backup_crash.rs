//! The real `steward-backup` killed at every point (a) a requested backup and (b) a restore
//! pass (a persisted step, a published event, an uploaded part, the manifest, a destructive
//! step of the restore, mid-way through a `pg_restore` or an extraction): once; and twice in
//! a row (the restarted service killed again at the first point its recovery passes). The
//! points are not listed by hand: a first, clean flow logs every point it passes
//! (`STEWARD_FAILPOINTS` set empty), and each is then a kill.
//!
//! After each run, with a clean service started again: it consumes; the flow (correlation
//! id) has exactly one terminal event, and it is the success (a kill is not a reason to fail),
//! and no event twice; the service settles the redelivered request and stops cleanly.
//! Backups: every backup the catalog lists as complete has every object of its manifest, each
//! matching its checksums; no incomplete backup is left behind; no multipart upload is left
//! open in the bucket (read from the test bed's s3s-fs directory, which does not implement
//! ListMultipartUploads). Restores: after each kill (before any restart), the database and
//! the path each hold either their data from before the restore or the backup's, never a mix,
//! nothing or a half-loaded database; at the end both hold the backup's (its rows and files,
//! nothing written after it), no restore copy or replaced data is left beside them, and the
//! app runs again.
//!
//! Two more variants: (c) the scheduled backup (no request is redelivered: the restarted
//! service concludes it at start, or publishes the outcome its killed run had decided), and
//! (d) the app container removed (`docker rm -fv`) while its backup or restore is
//! interrupted: the flow still ends with exactly one terminal event, nothing incomplete is
//! left in the bucket, the database holds its data from before the restore or the backup's,
//! and the service stops cleanly.
//!
//! `STEWARD_CRASH_POINTS=all` runs every point of every variant (the full matrix); by default
//! (a) and (b) run every fourth point, offset by variant and by the crash seed, so each point is
//! killed in each variant over four days, and (c) and (d), which need a bed or a schedule of
//! their own per run, two points each, from an offset that moves with the seed. The seed is
//! the day unless `STEWARD_CRASH_SEED` sets it, and is printed (`steward_system_tests::crash`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_bus::Bus;
use steward_events::{
    BackupReason, BackupRequested, Event, EventData, RestoreRequested, RestoreScope,
};
use steward_store::store::Store;
use steward_system_tests::apps::backed_up_pair;
use steward_system_tests::{crash, Proc, TestBucket};
use steward_testkit::docker::{docker, Container};
use steward_testkit::{stored_events, testbed, unique_name, TestBus};

const BACKUP_TERMINAL: [&str; 2] = ["backup.done", "backup.failed"];
const RESTORE_TERMINAL: [&str; 2] = ["restore.done", "restore.failed"];
/// Rows of the test table.
const ROWS: &str = "20000";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Once,
    Twice,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flow {
    Backup,
    Restore,
}

impl Flow {
    fn terminal(self) -> [&'static str; 2] {
        match self {
            Flow::Backup => BACKUP_TERMINAL,
            Flow::Restore => RESTORE_TERMINAL,
        }
    }

    fn request_subject(self) -> &'static str {
        match self {
            Flow::Backup => "backup.requested",
            Flow::Restore => "restore.requested",
        }
    }

    /// Points only a recovering service passes (a clean flow never does).
    fn recovery(self) -> &'static [&'static str] {
        match self {
            Flow::Backup => &["backup:resumed", "backup:cleaned", "backup:republished"],
            Flow::Restore => &["restore:resumed", "restore:republished"],
        }
    }
}

/// A database and an app with a data volume in a scope of their own, a bucket, and the
/// service's settings for them. Removed on drop.
struct Bed {
    db: Container,
    app: Container,
    bucket: Option<TestBucket>,
    store: Store,
    env: Vec<(&'static str, String)>,
}

impl Bed {
    /// `blob_mib` of random bytes in the app's `/data`: over 5 MiB makes its upload multipart.
    async fn new(tag: &str, blob_mib: u32) -> Self {
        let scope = unique_name(tag);
        let (db, app) = backed_up_pair(&scope);
        psql(
            &db.name,
            &format!(
                "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {ROWS}) g"
            ),
        );
        sh(
            &app.name,
            &format!(
                "head -c {}k /dev/urandom > /data/blob && echo precious > /data/repo.txt",
                blob_mib * 1024
            ),
        );
        let bucket = TestBucket::new("crash").await;
        let mut env = bucket.env();
        env.push(("STEWARD_SCOPE", scope.clone()));
        env.push(("STEWARD_RESTORE_HEALTH_TIMEOUT", "30s".into()));
        let store = Store::connect_static(
            &steward_store::config::S3Config {
                bucket: bucket.name.clone(),
                prefix: "steward/".into(),
                endpoint: Some(testbed::require("STEWARD_TEST_S3_ENDPOINT")),
            },
            &testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
            &testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
        )
        .await;
        Self { db, app, bucket: Some(bucket), store, env }
    }

    fn service(&self, bus: &Bus, failpoints: Option<&str>) -> Service {
        self.service_with(bus, failpoints, &[])
    }

    /// [`Bed::service`] with `extra` settings.
    fn service_with(
        &self,
        bus: &Bus,
        failpoints: Option<&str>,
        extra: &[(&'static str, String)],
    ) -> Service {
        let ns = bus.namespace();
        let port = steward_testkit::free_port();
        let mut env = vec![
            ("STEWARD_NATS_URL", bus.config().url.clone()),
            ("STEWARD_STREAM", ns.stream.clone()),
            ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
            ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
            // The event in hand at a kill comes back within the run.
            ("STEWARD_ACK_WAIT", "2s".into()),
        ];
        env.extend(self.env.iter().cloned());
        env.extend(extra.iter().cloned());
        if let Some(points) = failpoints {
            env.push(("STEWARD_FAILPOINTS", points.to_owned()));
        }
        Service { proc: Proc::start("steward-backup", &env), port }
    }

    fn backup_request(&self) -> Event {
        Event::new(
            "steward-updater/test",
            BackupRequested {
                reason: BackupReason::PreUpdate,
                containers: vec![self.app.name.clone()],
                requested_by: None,
            },
        )
    }

    /// Open multipart uploads of this bucket.
    fn open_uploads(&self) -> Vec<String> {
        self.bucket.as_ref().map(TestBucket::open_uploads).unwrap_or_default()
    }

    /// Database rows, the blob's checksum and whether the file written after the backup is
    /// there.
    fn content(&self) -> (String, String, bool) {
        let rows = psql(&self.db.name, "SELECT count(*) FROM t");
        let blob = sh(&self.app.name, "md5sum /data/blob 2>/dev/null | cut -d' ' -f1");
        let stray = sh(&self.app.name, "test -e /data/stray && echo yes || echo no") == "yes";
        (rows, blob, stray)
    }

    /// Rows, and the blob's checksum and the stray file, read while the app may be stopped
    /// (through a helper with its volumes).
    fn content_offline(&self) -> (String, (String, bool)) {
        let rows = psql(&self.db.name, "SELECT count(*) FROM t");
        let image = docker(&["inspect", "-f", "{{.Config.Image}}", &self.app.name]);
        let out = docker(&[
            "run",
            "--rm",
            "--volumes-from",
            &self.app.name,
            "--entrypoint",
            "/bin/sh",
            &image,
            "-c",
            "md5sum /data/blob 2>/dev/null | cut -d' ' -f1; echo; test -e /data/stray && echo yes || echo no",
        ]);
        let mut lines = out.lines().map(str::trim);
        let blob = lines.next().unwrap_or_default().to_owned();
        let stray = out.lines().last().map(str::trim) == Some("yes");
        (rows, (blob, stray))
    }

    /// The database and the path each hold their data from `before` or the backup's.
    fn old_or_new(
        &self,
        before: &(String, String, bool),
        backed_up: &(String, String, bool),
        when: &str,
    ) {
        let (rows, path) = self.content_offline();
        assert!(
            rows == before.0 || rows == backed_up.0,
            "{when}: the database holds {rows} rows, neither {} (before) nor {} (the backup's)",
            before.0,
            backed_up.0
        );
        let old = (before.1.clone(), before.2);
        let new = (backed_up.1.clone(), backed_up.2);
        assert!(
            path == old || path == new,
            "{when}: the path holds {path:?}, neither {old:?} (before) nor {new:?} (the backup's)"
        );
    }

    /// Nothing a restore keeps beside the data is left once it concluded.
    fn no_leftovers(&self, when: &str) {
        let dbs =
            psql(&self.db.name, "SELECT count(*) FROM pg_database WHERE datname LIKE '%steward%'");
        assert_eq!(dbs, "0", "{when}: a restore's database left");
        let dirs = sh(&self.app.name, "ls -A /data | grep -c steward || true");
        assert_eq!(dirs, "0", "{when}: a restore's directory left in /data");
    }

    /// Changes everything a restore brings back.
    fn diverge(&self) {
        docker(&["start", &self.app.name]);
        docker(&["start", &self.db.name]);
        wait_pg(&self.db.name);
        psql(&self.db.name, "DELETE FROM t WHERE id > 10");
        sh(&self.app.name, "head -c 64k /dev/urandom > /data/blob && echo new > /data/stray");
    }

    /// Every backup the catalog lists: complete ones intact, no incomplete one left.
    async fn check_catalog(&self, context: &dyn Fn() -> String) -> Vec<String> {
        match &self.bucket {
            Some(bucket) => bucket.check_catalog(context).await,
            None => vec![],
        }
    }

    /// The usable safety backups (reason `pre_restore`) in the bucket.
    async fn safety_backups(&self) -> Vec<String> {
        let trust = steward_store::signing::Trust::new(
            self.bucket.iter().map(|b| b.signing.public()).collect(),
        );
        let listed =
            steward_store::catalog::list(&self.store, &trust, time::OffsetDateTime::now_utc())
                .await
                .unwrap_or_else(|e| panic!("list: {e}"));
        listed
            .iter()
            .filter(|l| l.usable().is_some_and(|m| m.reason == BackupReason::PreRestore))
            .map(|l| l.backup_id.clone())
            .collect()
    }

    async fn destroy(mut self) {
        if let Some(bucket) = self.bucket.take() {
            bucket.destroy().await;
        }
    }
}

impl Drop for Bed {
    /// A failed test still removes its bucket (the containers remove themselves).
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(bucket.destroy());
                }
            })
            .join();
        }
    }
}

struct Service {
    proc: Proc,
    port: u16,
}

impl Service {
    fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Waits until it exits (`true`) or `bound` passes (`false`).
    fn exits_within(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// For the twice variant: waits until it exits at the first point its recovery passes,
    /// or (when the recovery passes none) it has settled the redelivered request; it is then
    /// stopped. Bounded: 30 s, as the fixed wait this replaces, which every run whose
    /// recovery passed no point waited out in full.
    async fn ends(&mut self, flow: Flow) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return;
            }
            if self.settled(flow.request_subject()).await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "second service passed no armed point; stopped after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        self.proc.terminate(Duration::from_secs(30));
    }

    fn consuming(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.logs().contains("\"consuming\"") {
            assert!(
                !matches!(self.proc.child.try_wait(), Ok(Some(_))),
                "the service exited at start:\n{}",
                self.logs()
            );
            assert!(Instant::now() < deadline, "the service never consumed:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deliveries of `subject` this process settled (handled, skipped as handled, or
    /// dead-lettered), from its `/metrics`.
    async fn settled(&self, subject: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Ok(answer) = reqwest::get(&url).await else { return 0 };
        let text = answer.text().await.unwrap_or_default();
        let label = format!("subject=\"{subject}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .filter(|l| {
                ["events_handled", "events_duplicate", "events_dead_lettered"]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

fn psql(db: &str, sql: &str) -> String {
    docker(&["exec", db, "psql", "-U", "app", "-d", "app", "-tAc", sql])
}

fn sh(container: &str, script: &str) -> String {
    docker(&["exec", container, "sh", "-c", script])
}

fn wait_pg(db: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::process::Command::new("docker")
        .args(["exec", db, "pg_isready", "-h", "127.0.0.1", "-U", "app"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{db} not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn flow_events(all: &[Event], correlation: uuid::Uuid) -> Vec<&'static str> {
    all.iter().filter(|e| e.correlation_id == correlation).map(Event::event_type).collect()
}

async fn wait_terminal(bus: &Bus, flow: Flow, correlation: uuid::Uuid, s: &Service) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = stored_events(bus).await;
        if flow_events(&all, correlation).iter().any(|t| flow.terminal().contains(t)) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "no terminal event: {:?}\n{}",
            flow_events(&all, correlation),
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `s` has settled the redelivered request (every kill leaves it unacked).
async fn wait_settled(s: &Service, flow: Flow, context: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.settled(flow.request_subject()).await == 0 {
        assert!(Instant::now() < deadline, "the request was never settled: {}", context());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CI run kills one point in this many per variant (the suite's 45-minute budget); the
/// offset moves with the crash seed (the day by default), so every point is killed in both
/// variants over as many seeds.
const SHARES: usize = 6;

/// The points this variant runs: all, or one in [`SHARES`] (offset by variant and by the
/// crash seed, printed).
fn sample(what: &str, points: &[String], offset: u64) -> Vec<String> {
    if crash::full() {
        return points.to_vec();
    }
    let seed = crash::seed();
    let chosen: Vec<String> = crash::shared(points.len(), SHARES, offset, seed)
        .into_iter()
        .map(|i| points[i].clone())
        .collect();
    crash::announce(what, &chosen, points.len(), seed);
    chosen
}

/// Every point name, each aborting at its first hit.
fn all_names(flow: Flow, points: &[String]) -> String {
    let mut names: Vec<&str> = points.iter().filter_map(|s| s.split('=').next()).collect();
    names.extend(flow.recovery());
    names.sort_unstable();
    names.dedup();
    names.join(",")
}

/// Publishes `request` to a service killed at `spec` (not before `not_before`: the service
/// starts meanwhile); for `Twice`, a second one killed at the first point it passes; then a
/// clean one, which concludes the flow. Returns the clean service and the stored events once
/// the flow has a terminal one.
#[allow(clippy::too_many_arguments)] // one call per flow; a struct would only rename them
async fn kill_and_recover(
    bed: &Bed,
    bus: &Bus,
    flow: Flow,
    request: &Event,
    spec: &str,
    variant: Variant,
    points: &[String],
    after_kill: &dyn Fn(&str),
    extra: &[(&'static str, String)],
    not_before: Option<tokio::time::Instant>,
) -> (Service, Vec<Event>) {
    let mut first = bed.service_with(bus, Some(spec), extra);
    first.consuming();
    if let Some(at) = not_before {
        tokio::time::sleep_until(at).await;
    }
    bus.publish(request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    assert!(first.exits_within(Duration::from_secs(90)), "{spec}: never reached\n{}", first.logs());
    assert!(first.logs().contains("aborting"), "{spec}: exited otherwise:\n{}", first.logs());
    if spec.starts_with("backup:part") || spec.starts_with("backup:completing") {
        // The check below sees what a kill mid-upload leaves.
        assert!(!bed.open_uploads().is_empty(), "{spec}: no open upload seen after the kill");
    }
    after_kill(&format!("after the kill at {spec}"));
    if variant == Variant::Twice {
        let mut second = bed.service_with(bus, Some(&all_names(flow, points)), extra);
        second.ends(flow).await;
        after_kill(&format!("after the kill at {spec} and the second kill"));
    }
    let mut last = bed.service_with(bus, None, extra);
    last.consuming();
    let all = wait_terminal(bus, flow, request.correlation_id, &last).await;
    (last, all)
}

/// Exactly one terminal event, the success, and no event twice.
fn check_flow(
    flow: Flow,
    events: &[Event],
    correlation: uuid::Uuid,
    context: &dyn Fn() -> String,
) -> Vec<Event> {
    let mine: Vec<Event> =
        events.iter().filter(|e| e.correlation_id == correlation).cloned().collect();
    let types: Vec<&str> = mine.iter().map(Event::event_type).collect();
    let terminal: Vec<&&str> = types.iter().filter(|t| flow.terminal().contains(t)).collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {types:?}: {}", context());
    assert_eq!(*terminal[0], flow.terminal()[0], "{types:?}: {:?}: {}", mine, context());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &types {
        *counts.entry(t).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "an event twice: {types:?}: {}", context());
    mine
}

/// A backup killed at `spec` (by services with `extra` settings, requested not before
/// `not_before`), concluded and checked; the clean service's log.
async fn backup_run(
    bed: &Bed,
    spec: &str,
    variant: Variant,
    points: &[String],
    extra: &[(&'static str, String)],
    not_before: Option<tokio::time::Instant>,
) -> String {
    let bus = TestBus::new("bkcrash").await;
    let request = bed.backup_request();
    let (mut last, _) = kill_and_recover(
        bed,
        &bus,
        Flow::Backup,
        &request,
        spec,
        variant,
        points,
        &|_| {},
        extra,
        not_before,
    )
    .await;
    let log = last.proc.log.clone();
    let context = move || {
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        format!("backup killed at {spec} ({variant:?})\n{logs}")
    };
    wait_settled(&last, Flow::Backup, &context).await;
    let all = stored_events(&bus).await;
    let mine = check_flow(Flow::Backup, &all, request.correlation_id, &context);
    let done = mine
        .iter()
        .find_map(|e| match &e.data {
            EventData::BackupDone(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no backup.done: {}", context()));
    for e in &mine {
        if let EventData::BackupStarted(s) = &e.data {
            assert_eq!(
                s.backup_id,
                done.backup_id,
                "a started backup never concluded: {}",
                context()
            );
        }
    }
    let complete = bed.check_catalog(&context).await;
    assert!(complete.contains(&done.backup_id), "{complete:?}: {}", context());
    let open = bed.open_uploads();
    assert!(open.is_empty(), "open multipart uploads: {open:?}: {}", context());
    let logs = last.logs();
    assert_eq!(last.proc.terminate(Duration::from_secs(30)), Some(0), "{}", context());
    logs
}

async fn restore_run(
    bed: &Bed,
    backup_id: &str,
    backed_up: &(String, String, bool),
    spec: &str,
    variant: Variant,
    points: &[String],
) {
    let bus = TestBus::new("rscrash").await;
    let safety_before = bed.safety_backups().await;
    bed.diverge();
    let before = bed.content();
    let request = restore_request(backup_id);
    let check = |when: &str| bed.old_or_new(&before, backed_up, when);
    let (mut last, _) = kill_and_recover(
        bed,
        &bus,
        Flow::Restore,
        &request,
        spec,
        variant,
        points,
        &check,
        &[],
        None,
    )
    .await;
    let log = last.proc.log.clone();
    let context = move || {
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        format!("restore killed at {spec} ({variant:?})\n{logs}")
    };
    wait_settled(&last, Flow::Restore, &context).await;
    let all = stored_events(&bus).await;
    let mine = check_flow(Flow::Restore, &all, request.correlation_id, &context);
    // Exactly one safety backup for this restore, complete (the catalog check panics on an
    // incomplete one), and it is the one the outcome names.
    bed.check_catalog(&context).await;
    let safety: Vec<String> =
        bed.safety_backups().await.into_iter().filter(|id| !safety_before.contains(id)).collect();
    let named = mine.iter().find_map(|e| match &e.data {
        EventData::RestoreDone(d) => d.safety_backup_id.clone(),
        _ => None,
    });
    assert_eq!(safety.len(), 1, "safety backups of this restore: {safety:?}: {}", context());
    assert_eq!(named.as_ref(), safety.first(), "restore.done names another: {}", context());
    let running = docker(&["inspect", "-f", "{{.State.Running}}", &bed.app.name]);
    assert_eq!(running, "true", "the app does not run: {}", context());
    let open = bed.open_uploads();
    assert!(open.is_empty(), "open multipart uploads: {open:?}: {}", context());
    assert_eq!(last.proc.terminate(Duration::from_secs(30)), Some(0), "{}", context());
    bed.no_leftovers(&format!("restore killed at {spec} ({variant:?})"));
    // Checked by the caller against the backup's content.
}

fn restore_request(backup_id: &str) -> Event {
    Event::new(
        "steward-cli/test",
        RestoreRequested {
            backup_id: backup_id.to_owned(),
            scope: RestoreScope::All,
            requested_by: Some("tester".into()),
            allow_unsigned: false,
            no_safety_backup: false,
            from: None,
            to_time: None,
        },
    )
}

/// A clean backup of `bed` with points logged: its id and the points it passed.
async fn clean_backup(bed: &Bed) -> (String, Vec<String>) {
    let bus = TestBus::new("bkfind").await;
    let mut s = bed.service(&bus, Some(""));
    s.consuming();
    let request = bed.backup_request();
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let all = wait_terminal(&bus, Flow::Backup, request.correlation_id, &s).await;
    let done = all
        .iter()
        .filter(|e| e.correlation_id == request.correlation_id)
        .find_map(|e| match &e.data {
            EventData::BackupDone(d) => Some(d.backup_id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the clean backup failed: {}", s.logs()));
    wait_settled(&s, Flow::Backup, &|| s.logs()).await;
    assert_eq!(s.proc.terminate(Duration::from_secs(30)), Some(0));
    let points = steward_system_tests::failpoints_passed(&s.logs());
    (done, points)
}

/// A clean restore of `backup_id` with points logged (one terminal event, the success, no
/// event twice; a clean stop): the events, the request and the points it passed.
async fn clean_restore(bed: &Bed, bus: &Bus, backup_id: &str) -> (Vec<Event>, Event, Vec<String>) {
    let mut s = bed.service(bus, Some(""));
    s.consuming();
    let request = restore_request(backup_id);
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let all = wait_terminal(bus, Flow::Restore, request.correlation_id, &s).await;
    check_flow(Flow::Restore, &all, request.correlation_id, &|| s.logs());
    assert_eq!(s.proc.terminate(Duration::from_secs(30)), Some(0));
    let points = steward_system_tests::failpoints_passed(&s.logs());
    (all, request, points)
}

/// Undoing a restore, end to end: the clean restore's safety backup, restored, brings back
/// exactly the data from before that restore (and takes a safety backup of its own).
async fn undo_once(
    bed: &Bed,
    before: &(String, String, bool),
    backed_up: &(String, String, bool),
    events: &[Event],
    correlation: uuid::Uuid,
) {
    let safety = events
        .iter()
        .filter(|e| e.correlation_id == correlation)
        .find_map(|e| match &e.data {
            EventData::RestoreDone(d) => d.safety_backup_id.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the clean restore names no safety backup"));
    assert_ne!(before, backed_up, "the data before the restore should differ from the backup's");
    let bus = TestBus::new("rsundo").await;
    let mut s = bed.service(&bus, None);
    s.consuming();
    let request = restore_request(&safety);
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let all = wait_terminal(&bus, Flow::Restore, request.correlation_id, &s).await;
    check_flow(Flow::Restore, &all, request.correlation_id, &|| s.logs());
    assert_eq!(&bed.content(), before, "restoring the safety backup undoes the restore");
    assert_eq!(s.proc.terminate(Duration::from_secs(30)), Some(0));
    bed.no_leftovers("the undo");
}

async fn backup_campaign(variant: Variant, offset: u64) {
    let started = Instant::now();
    // 8 MiB: two parts of the store's 5 MiB.
    let bed = Bed::new("bkcrash", 8).await;
    let (_, points) = clean_backup(&bed).await;
    assert!(
        points.iter().any(|p| p.starts_with("backup:part=2")),
        "the blob should be a multipart upload of two parts: {points:?}"
    );
    let chosen = sample(&format!("backup {variant:?}"), &points, offset);
    for spec in &chosen {
        let t = Instant::now();
        backup_run(&bed, spec, variant, &points, &[], None).await;
        eprintln!("backup {variant:?} {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
    }
    bed.destroy().await;
    eprintln!("backup {variant:?}: {:.0}s", started.elapsed().as_secs_f64());
}

async fn restore_campaign(variant: Variant, offset: u64) {
    let started = Instant::now();
    let bed = Bed::new("rscrash", 2).await;
    let backed_up = bed.content();
    let (backup_id, _) = clean_backup(&bed).await;
    // The points of a clean restore.
    let bus = TestBus::new("rsfind").await;
    bed.diverge();
    let before_clean = bed.content();
    let (all, request, points) = clean_restore(&bed, &bus, &backup_id).await;
    assert_eq!(bed.content(), backed_up, "a clean restore restores");
    drop(bus);
    bed.no_leftovers("a clean restore");
    undo_once(&bed, &before_clean, &backed_up, &all, request.correlation_id).await;
    for p in [
        "restore:safety_recorded",
        "backup:stored:database",
        "backup:stored:paths",
        "backup:manifest",
        "restore:safety",
        "restore:loading",
        "restore:createdb",
        "restore:pg_restore",
        "restore:staged",
        "restore:extracting",
        "restore:swapping",
        "restore:database_swapped",
        "restore:path_swapped",
        "restore:swapped",
        "restore:cleaned",
    ] {
        assert!(points.iter().any(|s| s.starts_with(p)), "{p} not passed: {points:?}");
    }
    let chosen = sample(&format!("restore {variant:?}"), &points, offset);
    for spec in &chosen {
        let t = Instant::now();
        restore_run(&bed, &backup_id, &backed_up, spec, variant, &points).await;
        assert_eq!(
            bed.content(),
            backed_up,
            "restore killed at {spec} ({variant:?}) concluded with restore.done, but the content is not the backup's"
        );
        eprintln!("restore {variant:?} {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
    }
    bed.destroy().await;
    eprintln!("restore {variant:?}: {:.0}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_killed_once_at_each_point() {
    backup_campaign(Variant::Once, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_killed_twice_in_a_row_at_each_point() {
    backup_campaign(Variant::Twice, 1).await;
}

// The two restore campaigns take about half of this binary's time; named to sort first (the
// test harness starts tests in name order), they start first on its two threads and the
// shorter tests fill in beside them, instead of one of them running alone at the end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_once_at_each_point() {
    restore_campaign(Variant::Once, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_twice_in_a_row_at_each_point() {
    restore_campaign(Variant::Twice, 1).await;
}

/// How long a changed file takes to settle: a file changed less than 2 s before a listing
/// starts is read again by the next backup.
const SETTLE: Duration = Duration::from_millis(2100);

/// Incremental backups: the service with `STEWARD_BACKUP_INCREMENTAL=true`.
fn incremental() -> [(&'static str, String); 1] {
    [("STEWARD_BACKUP_INCREMENTAL", "true".into())]
}

/// An incremental backup that splices the path from the previous one, killed at its steps:
/// after the listing, after the chunks are stored (before the index and the tree), after the
/// path's component, at the manifest; once and twice in a row. Each run changes a file first,
/// so every splice reads something. Ends with a restore of the last backup, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_backup_killed_while_it_splices_once_and_twice() {
    let started = Instant::now();
    let bed = Bed::new("spcrash", 8).await;
    let change = |n: u32| {
        sh(
            &bed.app.name,
            &format!(
                "echo change {n} >> /data/repo.txt && mkdir -p /data/d{n} && echo x > /data/d{n}/f"
            ),
        );
    };
    // The parent: a clean incremental backup; then a clean splice by a service of its own,
    // which names the points (counted from its start).
    let bus = TestBus::new("spfind").await;
    let mut points = vec![];
    for n in 0..2 {
        change(n);
        // Settled: a file changed less than 2 s before its listing is read again next time
        // (the service starts meanwhile; the backup is requested once the wait is over).
        // (A `Sleep`'s deadline is fixed when it is made.)
        let settled = tokio::time::sleep(SETTLE);
        let mut s = bed.service_with(&bus, Some(""), &incremental());
        s.consuming();
        settled.await;
        let request = bed.backup_request();
        bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
        let all = wait_terminal(&bus, Flow::Backup, request.correlation_id, &s).await;
        check_flow(Flow::Backup, &all, request.correlation_id, &|| s.logs());
        assert_eq!(s.proc.terminate(Duration::from_secs(30)), Some(0));
        if n == 1 {
            assert!(s.logs().contains("unread"), "the second backup did not splice:\n{}", s.logs());
            points = steward_system_tests::failpoints_passed(&s.logs());
        }
    }
    let wanted = ["chunks:listed", "chunks:spliced", "backup:stored:paths", "backup:manifest"];
    for p in wanted {
        assert!(points.iter().any(|q| q.starts_with(p)), "{p} not passed: {points:?}");
    }
    // The splice's own points always; the rest of the flow is the other campaigns'.
    let chosen: Vec<String> =
        points.iter().filter(|p| wanted.iter().any(|w| p.starts_with(w))).cloned().collect();
    let mut n = 2;
    for variant in [Variant::Once, Variant::Twice] {
        for spec in &chosen {
            change(n);
            n += 1;
            // Settled as above, the first service starting meanwhile.
            let settled = tokio::time::Instant::now() + SETTLE;
            let t = Instant::now();
            let logs =
                backup_run(&bed, spec, variant, &points, &incremental(), Some(settled)).await;
            // A recovery that takes the backup again still takes the unchanged entries from
            // an earlier one (one killed after its manifest only concludes it).
            if logs.contains("stored as chunks") {
                assert!(
                    logs.contains("unread"),
                    "killed at {spec} ({variant:?}), the recovery read the path whole:\n{logs}"
                );
            }
            eprintln!("incremental {variant:?} {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
        }
    }
    // The last backup restores what the path held.
    let backed_up = bed.content();
    let dirs = sh(&bed.app.name, "ls /data | sort | tr '\n' ' '");
    let last = {
        let trust = steward_store::signing::Trust::new(
            bed.bucket.iter().map(|b| b.signing.public()).collect(),
        );
        let listed =
            steward_store::catalog::list(&bed.store, &trust, time::OffsetDateTime::now_utc())
                .await
                .unwrap_or_else(|e| panic!("list: {e}"));
        let usable: Vec<String> =
            listed.iter().filter(|l| l.usable().is_some()).map(|l| l.backup_id.clone()).collect();
        usable.into_iter().max().unwrap_or_else(|| panic!("no usable backup"))
    };
    let bus = TestBus::new("sprestore").await;
    bed.diverge();
    assert_ne!(bed.content(), backed_up);
    let mut s = bed.service_with(&bus, None, &incremental());
    s.consuming();
    let request = restore_request(&last);
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let all = wait_terminal(&bus, Flow::Restore, request.correlation_id, &s).await;
    check_flow(Flow::Restore, &all, request.correlation_id, &|| s.logs());
    assert_eq!(bed.content(), backed_up, "the last spliced backup restores the path's content");
    assert_eq!(sh(&bed.app.name, "ls /data | sort | tr '\n' ' '"), dirs);
    assert_eq!(s.proc.terminate(Duration::from_secs(30)), Some(0));
    bed.destroy().await;
    eprintln!("incremental: {:.0}s", started.elapsed().as_secs_f64());
}

/// A schedule (seconds first) that fires once, `secs` from now, and then not for a year.
fn once_in(secs: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    format!("{} {} {} {} {} *", at.second(), at.minute(), at.hour(), at.day(), u8::from(at.month()))
}

/// A schedule that does not fire during a test.
const NEVER: &str = "0 0 0 1 1 *";

/// Two consecutive of `points` from an offset that moves with the crash seed (printed; all
/// with `STEWARD_CRASH_POINTS=all`, those `STEWARD_CRASH_ONLY` names when set).
fn daily_sample(what: &str, points: &[String]) -> Vec<String> {
    if let Some(only) = crash::only(points) {
        return only;
    }
    if crash::full() {
        return points.to_vec();
    }
    let seed = crash::seed();
    let chosen: Vec<String> =
        crash::window(points.len(), 2, seed).into_iter().map(|i| points[i].clone()).collect();
    crash::announce(what, &chosen, points.len(), seed);
    chosen
}

/// The backup flows of `all` (by correlation) with their event types.
fn backup_flows(all: &[Event]) -> HashMap<uuid::Uuid, Vec<&'static str>> {
    let mut flows: HashMap<uuid::Uuid, Vec<&'static str>> = HashMap::new();
    for e in all.iter().filter(|e| e.event_type().starts_with("backup.")) {
        flows.entry(e.correlation_id).or_default().push(e.event_type());
    }
    flows
}

/// Waits until every scheduled flow of `bus` has ended; the events.
async fn wait_scheduled_ended(bus: &Bus, s: &Service, context: &dyn Fn() -> String) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = stored_events(bus).await;
        let flows = backup_flows(&all);
        let ended = |types: &Vec<&str>| types.iter().any(|t| BACKUP_TERMINAL.contains(t));
        if !flows.is_empty() && flows.values().all(ended) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "a scheduled backup never concluded: {flows:?}: {}\n{}",
            context(),
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Exactly one scheduled flow with exactly one terminal event and no event twice; the
/// catalog holds no incomplete backup and no upload is open.
async fn check_scheduled(bed: &Bed, all: &[Event], context: &dyn Fn() -> String) {
    let flows = backup_flows(all);
    assert_eq!(flows.len(), 1, "one scheduled flow: {flows:?}: {}", context());
    for types in flows.values() {
        let terminal = types.iter().filter(|t| BACKUP_TERMINAL.contains(t)).count();
        assert_eq!(terminal, 1, "exactly one terminal event: {types:?}: {}", context());
        let mut seen = std::collections::HashSet::new();
        assert!(types.iter().all(|t| seen.insert(*t)), "an event twice: {types:?}: {}", context());
    }
    bed.check_catalog(context).await;
    let open = bed.open_uploads();
    assert!(open.is_empty(), "open multipart uploads: {open:?}: {}", context());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_backup_killed_is_concluded_when_the_service_starts_again() {
    let started = Instant::now();
    let bed = Bed::new("bksched", 1).await;
    // The points of a clean scheduled backup.
    let bus = TestBus::new("bkschedfind").await;
    let mut s = bed.service_with(&bus, Some(""), &[("STEWARD_BACKUP_SCHEDULE", once_in(3))]);
    s.consuming();
    let all = wait_scheduled_ended(&bus, &s, &String::new).await;
    check_scheduled(&bed, &all, &|| s.logs()).await;
    assert_eq!(s.proc.terminate(Duration::from_secs(30)), Some(0));
    let points = steward_system_tests::failpoints_passed(&s.logs());
    drop(bus);
    assert!(points.iter().any(|p| p.starts_with("backup:outcome")), "{points:?}");
    for spec in daily_sample("scheduled backup", &points) {
        let t = Instant::now();
        let bus = TestBus::new("bksched").await;
        let schedule = [("STEWARD_BACKUP_SCHEDULE", once_in(3))];
        let mut first = bed.service_with(&bus, Some(&spec), &schedule);
        first.consuming();
        assert!(
            first.exits_within(Duration::from_secs(60)),
            "{spec}: never reached\n{}",
            first.logs()
        );
        assert!(first.logs().contains("aborting"), "{spec}: exited otherwise:\n{}", first.logs());
        let mut last = bed.service_with(&bus, None, &[("STEWARD_BACKUP_SCHEDULE", NEVER.into())]);
        last.consuming();
        let log = last.proc.log.clone();
        let at = spec.clone();
        let context = move || {
            let (spec, logs) = (&at, std::fs::read_to_string(&log).unwrap_or_default());
            format!("scheduled backup killed at {spec}\n{logs}")
        };
        let all = wait_scheduled_ended(&bus, &last, &context).await;
        // Nothing more comes once it is concluded.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stored_events(&bus).await.len(), all.len(), "more events: {}", context());
        check_scheduled(&bed, &all, &context).await;
        assert_eq!(last.proc.terminate(Duration::from_secs(30)), Some(0), "{}", context());
        eprintln!("scheduled backup {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
    }
    bed.destroy().await;
    eprintln!("scheduled backups: {:.0}s", started.elapsed().as_secs_f64());
}

/// Removes the app (and its volume) as `compose down -v` would.
fn remove_app(bed: &Bed) {
    docker(&["rm", "-fv", &bed.app.name]);
}

/// `request` published to a service killed at `spec`; the app then removed; a clean service
/// started, which ends the flow with exactly one terminal event (either) and settles the
/// request. The clean service, the events, and what a failure should show.
async fn killed_then_removed(
    bed: &Bed,
    bus: &Bus,
    flow: Flow,
    request: &Event,
    spec: &str,
) -> (Service, Vec<Event>, impl Fn() -> String) {
    let mut first = bed.service(bus, Some(spec));
    first.consuming();
    bus.publish(request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    assert!(first.exits_within(Duration::from_secs(90)), "{spec}: never reached\n{}", first.logs());
    assert!(first.logs().contains("aborting"), "{spec}: exited otherwise:\n{}", first.logs());
    remove_app(bed);
    let mut last = bed.service(bus, None);
    last.consuming();
    let log = last.proc.log.clone();
    let at = format!("{flow:?} killed at {spec}, then the app removed");
    let context = move || format!("{at}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let all = wait_terminal(bus, flow, request.correlation_id, &last).await;
    wait_settled(&last, flow, &context).await;
    check_ended(flow, &all, request.correlation_id, &context);
    (last, all, context)
}

/// Exactly one terminal event and no event twice (the outcome may be either).
fn check_ended(flow: Flow, all: &[Event], correlation: uuid::Uuid, context: &dyn Fn() -> String) {
    let types = flow_events(all, correlation);
    let terminal = types.iter().filter(|t| flow.terminal().contains(t)).count();
    assert_eq!(terminal, 1, "exactly one terminal event: {types:?}: {}", context());
    let mut seen = std::collections::HashSet::new();
    assert!(types.iter().all(|t| seen.insert(*t)), "an event twice: {types:?}: {}", context());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_killed_then_its_container_removed() {
    let started = Instant::now();
    let bed = Bed::new("bkgone", 12).await;
    let (_, points) = clean_backup(&bed).await;
    bed.destroy().await;
    for spec in daily_sample("backup, container removed", &points) {
        let t = Instant::now();
        let bed = Bed::new("bkgone", 12).await;
        let bus = TestBus::new("bkgone").await;
        let request = bed.backup_request();
        let (mut last, _, context) =
            killed_then_removed(&bed, &bus, Flow::Backup, &request, &spec).await;
        bed.check_catalog(&context).await;
        let open = bed.open_uploads();
        assert!(open.is_empty(), "open multipart uploads: {open:?}: {}", context());
        assert_eq!(psql(&bed.db.name, "SELECT count(*) FROM t"), ROWS, "{}", context());
        assert_eq!(last.proc.terminate(Duration::from_secs(30)), Some(0), "{}", context());
        bed.destroy().await;
        eprintln!("backup, app removed, {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
    }
    eprintln!("backups, app removed: {:.0}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_killed_then_its_container_removed() {
    let started = Instant::now();
    // The points of a clean restore.
    let bed = Bed::new("rsgone", 1).await;
    let (backup_id, _) = clean_backup(&bed).await;
    bed.diverge();
    let bus = TestBus::new("rsgonefind").await;
    let (_, _, points) = clean_restore(&bed, &bus, &backup_id).await;
    drop(bus);
    bed.destroy().await;
    for spec in daily_sample("restore, container removed", &points) {
        let t = Instant::now();
        let bed = Bed::new("rsgone", 1).await;
        let backed_up = bed.content();
        let (backup_id, _) = clean_backup(&bed).await;
        bed.diverge();
        let rows_before = psql(&bed.db.name, "SELECT count(*) FROM t");
        let bus = TestBus::new("rsgone").await;
        let request = restore_request(&backup_id);
        let (mut last, all, context) =
            killed_then_removed(&bed, &bus, Flow::Restore, &request, &spec).await;
        wait_pg(&bed.db.name);
        let rows = psql(&bed.db.name, "SELECT count(*) FROM t");
        assert!(
            rows == rows_before || rows == backed_up.0,
            "the database holds {rows} rows, neither {rows_before} (before) nor {} (the backup's): {}",
            backed_up.0,
            context()
        );
        let dbs = psql(
            &bed.db.name,
            "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '%steward%'",
        );
        let outcome: Vec<String> = all
            .iter()
            .filter(|e| e.correlation_id == request.correlation_id)
            .filter_map(|e| match &e.data {
                EventData::RestoreFailed(f) => Some(f.reason.clone()),
                _ => None,
            })
            .collect();
        // Past the swap's commit point the replaced database stays beside the restored one,
        // named in the failure; nothing else may be left.
        for db in dbs.split(',').filter(|d| !d.is_empty()) {
            assert!(
                db.contains("_steward_old_") && outcome.iter().any(|r| r.contains(db)),
                "a restore's database {db} left, not named in the outcome ({outcome:?}): {}",
                context()
            );
        }
        bed.check_catalog(&context).await;
        let open = bed.open_uploads();
        assert!(open.is_empty(), "open multipart uploads: {open:?}: {}", context());
        assert_eq!(last.proc.terminate(Duration::from_secs(30)), Some(0), "{}", context());
        bed.destroy().await;
        eprintln!("restore, app removed, {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
    }
    eprintln!("restores, app removed: {:.0}s", started.elapsed().as_secs_f64());
}
