//! Write-back: a real compose project (a temp directory, a unique project name, brought up by
//! `docker-compose`) updated to a newer tag by the real `steward-updater` through the real
//! engine and registry, then `docker-compose up -d` again, as the next deploy runs it.
//!
//! Compose v2 recreates a container on a plain `up -d` when its image differs from the one the
//! project names; compose v1 (the test bed's 1.29) only when the service's configuration
//! changed or with `--force-recreate` (what the Ansible role runs after a secret changed), so
//! the "next deploy" here is `up -d --force-recreate`: whichever compose recreates, it takes
//! the image from the project's files.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use steward_bus::{Bus, StateStore};
use steward_events::records::{UpdateRecord, UPDATE_BUCKET};
use steward_events::{Digest, Event, EventData, ImageUpdated, UpdateWrittenBack};
use steward_system_tests::mail::{mails_to, testbed_maildir, testbed_notifier_env, unique_address};
use steward_system_tests::Proc;
use steward_testkit::docker::{build_and_push, docker, AppTags, ImageTag, SwapLeftovers};
use steward_testkit::{stored_events, unique_name, TestBus};

/// A compose project in a temp directory; brought down (containers, networks) and removed
/// when dropped.
struct Project {
    name: String,
    dir: PathBuf,
    files: Vec<String>,
    _leftovers: SwapLeftovers,
}

impl Project {
    /// Writes `files` (name, content) into a new directory.
    fn new(files: &[(&str, &str)]) -> Self {
        let name = unique_name("wb").replace('-', "");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("project dir");
        for (file, content) in files {
            std::fs::write(dir.join(file), content).expect("write");
        }
        steward_testkit::give_to_rootless_user(&dir);
        let container = format!("{name}_app_1");
        Self {
            _leftovers: SwapLeftovers(container),
            name,
            dir,
            files: vec!["docker-compose.yml".into()],
        }
    }

    fn container(&self) -> String {
        format!("{}_app_1", self.name)
    }

    fn compose(&self, args: &[&str]) {
        let mut all = vec!["-p", self.name.as_str()];
        for f in &self.files {
            all.extend(["-f", f.as_str()]);
        }
        all.extend_from_slice(args);
        let out = Command::new("docker-compose")
            .args(&all)
            .current_dir(&self.dir)
            .output()
            .expect("docker-compose");
        assert!(
            out.status.success(),
            "docker-compose {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).expect("read")
    }

    /// The reference the service's container was created from.
    fn running_ref(&self) -> String {
        docker(&["inspect", "--format", "{{.Config.Image}}", &self.container()])
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let mut args = vec!["-p".to_owned(), self.name.clone()];
        for f in &self.files {
            args.extend(["-f".to_owned(), f.clone()]);
        }
        args.extend(["down".into(), "--remove-orphans".into(), "-t".into(), "1".into()]);
        let _ = Command::new("docker-compose").args(&args).current_dir(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A repository of its own in the local registry: `:1.0` is v1, `:1.1` v2.
type Repo = AppTags;

fn repo() -> Repo {
    AppTags::push("steward-test/wb")
}

/// The compose file: service `app` watched in `scope`, its image `image` (as written).
fn compose_file(scope: &str, image: &str) -> String {
    format!(
        "# The app, kept by Steward.\nversion: \"2.4\"\n\nservices:\n  app:   # the one service\n    image: {image}  # tracked\n    labels:\n      steward.enable: \"true\"\n      steward.scope: \"{scope}\"\n      steward.update.policy: automatic\n      steward.update.backup: \"false\"\n    # no ports: nothing reaches it\n"
    )
}

/// One test's world: a project brought up (dropped first), its repository, scope and bus.
struct Stage {
    project: Project,
    repo: Repo,
    scope: String,
    bus: TestBus,
}

/// A bus named after `tag`, a scope, a repository, and a project of the files `files` makes
/// from the scope and the repository's name, brought up.
async fn stage(tag: &str, files: impl FnOnce(&str, &str) -> Vec<(&'static str, String)>) -> Stage {
    let bus = TestBus::new(tag).await;
    let scope = unique_name("scope");
    let repo = repo();
    let files = files(&scope, &repo.base);
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let project = Project::new(&refs);
    project.compose(&["up", "-d"]);
    Stage { project, repo, scope, bus }
}

/// `.env` naming the repository's 1.0 in `APP_IMAGE`, and a compose file interpolating it.
fn env_project(image: &'static str) -> impl FnOnce(&str, &str) -> Vec<(&'static str, String)> {
    move |scope, base| {
        vec![
            ("docker-compose.yml", compose_file(scope, image)),
            (".env", format!("APP_IMAGE={base}:1.0\n")),
        ]
    }
}

fn updater(bus: &Bus, scope: &str, extra: &[(&str, String)]) -> Proc {
    let mut env = vec![
        ("STEWARD_SCOPE", scope.to_owned()),
        ("STEWARD_HEALTH_TIMEOUT", "30s".into()),
        ("STEWARD_HEALTH_GRACE", "2s".into()),
        ("STEWARD_ACK_WAIT", "5s".into()),
    ];
    env.extend(extra.iter().cloned());
    Proc::service("steward-updater", bus, &env)
}

/// The watcher's news that `project`'s container runs `from` (digest `current`) and `tag`
/// (digest `new`) is newer.
fn news(project: &Project, from: &str, current: &str, tag: &str, new: &str) -> Event {
    Event::new(
        "steward-watcher/test",
        ImageUpdated {
            container: project.container(),
            image: from.to_owned(),
            current_digest: Digest::parse(current).expect("digest"),
            new_digest: Digest::parse(new).expect("digest"),
            new_tag: Some(tag.to_owned()),
            policy: Some("automatic".into()),
            versions: Default::default(),
        },
    )
}

/// The events of `event`'s flow once `what` is among them (within `bound`).
async fn wait_in_flow(bus: &Bus, event: &Event, what: &str, p: &Proc) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let flow: Vec<Event> = stored_events(bus)
            .await
            .into_iter()
            .filter(|e| e.correlation_id == event.correlation_id)
            .collect();
        if flow.iter().any(|e| e.event_type() == what) {
            return flow;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the flow: {:?}\n{}",
            flow.iter().map(Event::event_type).collect::<Vec<_>>(),
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No helper container of `w`'s update is left.
fn assert_no_helper(w: &UpdateWrittenBack) {
    let filter = format!("label=steward.project-helper={}", w.update_id);
    assert_eq!(docker(&["ps", "-aq", "--filter", &filter]), "", "helper containers left");
}

fn written_back(flow: &[Event]) -> Vec<&UpdateWrittenBack> {
    flow.iter()
        .filter_map(|e| match &e.data {
            EventData::UpdateWrittenBack(w) => Some(w),
            _ => None,
        })
        .collect()
}

/// Runs an update of `project` (running `repo`'s 1.0) to 1.1 with `updater`, and returns the
/// flow once it succeeded and (when `expect` names it) said what it wrote back.
async fn update_to_1_1(
    bus: &Bus,
    project: &Project,
    repo: &Repo,
    p: &Proc,
    expect: Option<&str>,
) -> Vec<Event> {
    let event = news(project, &format!("{}:1.0", repo.base), &repo.v1, "1.1", &repo.v2);
    bus.publish(&event).await.expect("publish");
    let flow = wait_in_flow(bus, &event, expect.unwrap_or("update.succeeded"), p).await;
    assert!(
        flow.iter().any(|e| e.event_type() == "update.succeeded"),
        "{:?}\n{}",
        flow.iter().map(Event::event_type).collect::<Vec<_>>(),
        p.logs()
    );
    flow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_write_back_the_next_compose_up_brings_the_old_tag_back() {
    // The defect, as the updater before write-back leaves it (the setting off is that code
    // path): the update succeeds, the project still names 1.0, compose recreates 1.0.
    let Stage { project, repo, scope, bus } =
        stage("wbdefect", env_project("${APP_IMAGE:-nothing:0}")).await;
    let env = project.read(".env");
    let p = updater(&bus, &scope, &[("STEWARD_UPDATE_WRITE_BACK", "false".into())]);
    let flow = update_to_1_1(&bus, &project, &repo, &p, None).await;
    assert_eq!(project.running_ref(), format!("{}:1.1", repo.base));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = stored_events(&bus).await;
    let flow: Vec<Event> =
        all.into_iter().filter(|e| e.correlation_id == flow[0].correlation_id).collect();
    assert!(written_back(&flow).is_empty());
    assert_eq!(project.read(".env"), env, "nothing written with the setting off");
    project.compose(&["up", "-d", "--force-recreate"]);
    assert_eq!(project.running_ref(), format!("{}:1.0", repo.base), "downgraded: the defect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_env_variable_follows_the_update_and_compose_up_keeps_it() {
    let Stage { project, repo, scope, bus } = stage("wbenv", |scope, base| {
        let env = format!(
            "# The stack's settings.\nPOSTGRES_DB=gitea\n\nexport APP_IMAGE=\"{base}:1.0\"   # kept by Steward\nOTHER_IMAGE={base}:1.0\n"
        );
        vec![("docker-compose.yml", compose_file(scope, "\"${APP_IMAGE:-nothing:0}\"")), (".env", env)]
    })
    .await;
    let (env, compose) = (project.read(".env"), project.read("docker-compose.yml"));
    let env_path = project.dir.join(".env");
    std::fs::set_permissions(&env_path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    // Not root's, nor the updater's (on the rootless leg 1234:2345 of its containers, ids of
    // its user's range: another host user's file a rootless engine cannot read).
    let (uid, gid) = steward_testkit::host_ids(1234, 2345);
    std::os::unix::fs::chown(&env_path, Some(uid), Some(gid)).expect("chown");
    let p = updater(&bus, &scope, &[]);

    let flow = update_to_1_1(&bus, &project, &repo, &p, Some("update.written_back")).await;
    let w = written_back(&flow);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].refused, None, "{w:?}");
    assert_eq!(w[0].key.as_deref(), Some("APP_IMAGE"));
    assert_eq!(w[0].file.as_deref(), Some(env_path.to_str().expect("utf-8")));
    assert_eq!(w[0].image, format!("{}:1.1", repo.base));
    // Only that value changed: comments, quotes, the other line naming 1.0, the compose file.
    let expected =
        env.replacen(&format!("\"{}:1.0\"", repo.base), &format!("\"{}:1.1\"", repo.base), 1);
    assert_eq!(project.read(".env"), expected);
    assert_eq!(project.read("docker-compose.yml"), compose);
    let meta = std::fs::metadata(&env_path).expect("stat");
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o640, uid, gid));
    // No helper container is left.
    assert_no_helper(w[0]);

    project.compose(&["up", "-d", "--force-recreate"]);
    assert_eq!(project.running_ref(), format!("{}:1.1", repo.base), "the next deploy keeps 1.1");
    let id = docker(&["inspect", "--format", "{{.Image}}", &project.container()]);
    let digests = docker(&["image", "inspect", "--format", "{{join .RepoDigests \" \"}}", &id]);
    assert!(digests.contains(&repo.v2), "{digests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_image_line_is_changed_in_place_and_nothing_else() {
    let Stage { project, repo, scope, bus } = stage("wblit", |scope, base| {
        let compose = compose_file(scope, &format!("'{base}:1.0'"))
            .replace("services:\n", "services:\n  # comment before app, naming 1.0: stays\n")
            + "\n# trailing comment\n";
        vec![("docker-compose.yml", compose)]
    })
    .await;
    let compose = project.read("docker-compose.yml");
    let p = updater(&bus, &scope, &[]);

    let flow = update_to_1_1(&bus, &project, &repo, &p, Some("update.written_back")).await;
    let w = written_back(&flow);
    assert_eq!((w[0].refused.as_deref(), w[0].key.as_deref()), (None, Some("services.app.image")));
    let expected =
        compose.replace(&format!("'{}:1.0'", repo.base), &format!("'{}:1.1'", repo.base));
    assert_eq!(project.read("docker-compose.yml"), expected);
    project.compose(&["up", "-d"]);
    assert_eq!(project.running_ref(), format!("{}:1.1", repo.base));
}

/// One refusal case: the project's files, how compose is run, what the reason must say.
struct Refusal {
    what: &'static str,
    files: Vec<(&'static str, String)>,
    compose_files: Vec<&'static str>,
    prepare: fn(&Path),
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_unwritable_definitions_are_refused_mailed_and_the_update_stands() {
    let bus = TestBus::new("wbrefuse").await;
    let scope = unique_name("scope");
    let to = unique_address("wbrefuse");
    let _notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));
    let p = updater(&bus, &scope, &[]);
    let interpolated = compose_file(&scope, "${APP_IMAGE:-REPO:1.0}");
    let literal = compose_file(&scope, "REPO:1.0");
    let nothing = |_: &Path| {};
    let cases = vec![
        Refusal {
            what: "the variable is not in .env (the default names the image)",
            files: vec![("docker-compose.yml", interpolated.clone()), (".env", "OTHER=1\n".into())],
            compose_files: vec!["docker-compose.yml"],
            prepare: nothing,
            reason: "APP_IMAGE is not set in",
        },
        Refusal {
            what: "a compose file its owner may not write",
            files: vec![("docker-compose.yml", literal.clone())],
            compose_files: vec!["docker-compose.yml"],
            prepare: |dir| {
                let f = dir.join("docker-compose.yml");
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).expect("chmod");
            },
            reason: "is not writable (mode 444)",
        },
        Refusal {
            what: "several compose files",
            files: vec![
                ("docker-compose.yml", literal.clone()),
                (
                    "override.yml",
                    "version: \"2.4\"\nservices:\n  app:\n    restart: \"no\"\n".into(),
                ),
            ],
            compose_files: vec!["docker-compose.yml", "override.yml"],
            prepare: nothing,
            reason: "several compose files",
        },
        Refusal {
            what: "a git checkout",
            files: vec![("docker-compose.yml", literal.clone())],
            compose_files: vec!["docker-compose.yml"],
            prepare: |dir| std::fs::create_dir(dir.join(".git")).expect("mkdir"),
            reason: "is a git checkout",
        },
    ];
    for case in cases {
        let repo = repo();
        let files: Vec<(&str, String)> =
            case.files.iter().map(|(n, c)| (*n, c.replace("REPO", &repo.base))).collect();
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let mut project = Project::new(&refs);
        project.files = case.compose_files.iter().map(|f| (*f).to_owned()).collect();
        (case.prepare)(&project.dir);
        let before: Vec<String> = files.iter().map(|(n, _)| project.read(n)).collect();
        project.compose(&["up", "-d"]);
        let flow = update_to_1_1(&bus, &project, &repo, &p, Some("update.written_back")).await;
        let w = written_back(&flow);
        let why =
            w[0].refused.as_deref().unwrap_or_else(|| panic!("{}: not refused: {w:?}", case.what));
        assert!(why.contains(case.reason), "{}: {why}", case.what);
        let after: Vec<String> = files.iter().map(|(n, _)| project.read(n)).collect();
        assert_eq!(after, before, "{}: a refused case changes no file", case.what);
        assert_eq!(
            project.running_ref(),
            format!("{}:1.1", repo.base),
            "{}: the update stands",
            case.what
        );
        // Mailed (alone, or with the others of a batch), with the reason.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !mails_to(&testbed_maildir(), &to).iter().any(|m| m.text.contains(why)) {
            assert!(Instant::now() < deadline, "{}: no mail says why", case.what);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_success_and_write_back_it_is_written_exactly_once() {
    let Stage { project, repo, scope, bus } = stage("wbkill", env_project("${APP_IMAGE}")).await;
    let compose = project.read("docker-compose.yml");
    // Killed after the success (before writing), after writing (before the record says so),
    // after announcing it (before the outbox is cleared): each restart finds the flag.
    let kills = ["writeback=1", "writeback:written=1", "published:update.written_back=1"];
    let event = news(&project, &format!("{}:1.0", repo.base), &repo.v1, "1.1", &repo.v2);
    for (i, kill) in kills.into_iter().enumerate() {
        let env = [
            ("STEWARD_SCOPE", scope.clone()),
            ("STEWARD_HEALTH_GRACE", "2s".into()),
            ("STEWARD_FAILPOINTS", kill.into()),
        ];
        // The first run takes the news; the others die in their recovery at start.
        let mut p = if i == 0 {
            let p = Proc::service("steward-updater", &bus, &env);
            bus.publish(&event).await.expect("publish");
            p
        } else {
            Proc::start("steward-updater", &steward_system_tests::service_env(&bus, &env))
        };
        assert!(p.exits_within(Duration::from_secs(90)), "never reached {kill}:\n{}", p.logs());
        assert!(
            p.logs().contains(&format!("failpoint: {}", kill.split('=').next().unwrap_or(kill))),
            "{}",
            p.logs()
        );
    }
    let p = updater(&bus, &scope, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let records: StateStore<UpdateRecord> =
        StateStore::open(&bus, UPDATE_BUCKET).await.expect("records");
    loop {
        let r = records.get(&project.container()).await.expect("get").expect("record");
        if !r.value.write_back && r.value.outbox.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never finished the write-back:\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flow = wait_in_flow(&bus, &event, "update.written_back", &p).await;
    let w = written_back(&flow);
    assert_eq!(w.len(), 1, "exactly one update.written_back: {w:?}");
    assert_eq!(w[0].refused, None);
    assert_eq!(flow.iter().filter(|e| e.event_type() == "update.succeeded").count(), 1);
    assert_eq!(project.read(".env"), format!("APP_IMAGE={}:1.1\n", repo.base));
    assert_eq!(project.read("docker-compose.yml"), compose);
    // The helper the kill after the write left is gone (removed by the next attempt).
    assert_no_helper(w[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_redelivered_image_updated_never_writes_an_older_tag() {
    let Stage { project, repo, scope, bus } = stage("wbold", env_project("${APP_IMAGE}")).await;
    let p = updater(&bus, &scope, &[]);
    let first = news(&project, &format!("{}:1.0", repo.base), &repo.v1, "1.1", &repo.v2);
    bus.publish(&first).await.expect("publish");
    wait_in_flow(&bus, &first, "update.written_back", &p).await;

    // A newer release, 1.2, and its update.
    let newer = format!("{}:1.2", repo.base);
    let _tag = ImageTag(newer.clone());
    let v12 = build_and_push(
        &newer,
        &format!("FROM steward-test/app:v2\nLABEL steward.test.run={scope}\n"),
    );
    let second = news(&project, &format!("{}:1.1", repo.base), &repo.v2, "1.2", &v12);
    bus.publish(&second).await.expect("publish");
    let flow = wait_in_flow(&bus, &second, "update.written_back", &p).await;
    assert_eq!(written_back(&flow)[0].refused, None, "{:?}", written_back(&flow));
    assert_eq!(project.read(".env"), format!("APP_IMAGE={}:1.2\n", repo.base));

    // The first news again, as a redelivery or replay brings it (its own time, a new id so
    // the stream stores it): acknowledged and ignored, nothing written.
    let mut again = news(&project, &format!("{}:1.0", repo.base), &repo.v1, "1.1", &repo.v2);
    again.time = first.time;
    bus.publish(&again).await.expect("publish");
    // Time for the updater to take it (it acknowledges without a trace in the stream).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(project.read(".env"), format!("APP_IMAGE={}:1.2\n", repo.base));
    assert_eq!(project.running_ref(), newer);
    let all = stored_events(&bus).await;
    assert!(
        all.iter().all(|e| e.correlation_id != again.correlation_id || e.id == again.id),
        "the old news started nothing: {:?}",
        all.iter()
            .filter(|e| e.correlation_id == again.correlation_id)
            .map(Event::event_type)
            .collect::<Vec<_>>()
    );
    // The container goes before the 1.2 tag it uses (a tag in use is not removed).
    drop(project);
}
