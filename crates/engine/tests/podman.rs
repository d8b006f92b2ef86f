//! The engine crate against Podman's Docker-compatible API (`podman system service`).
//!
//! Runs when the test bed started Podman's service (`STEWARD_TEST_PODMAN_SOCKET` in its env
//! file). Without it each test prints why and passes, unless `STEWARD_TEST_ENGINE=podman`
//! asks for Podman: then a missing or silent service fails the test. Images come from the
//! test bed's registry (pushed with Docker, pulled by Podman): Podman cannot reach the
//! internet here.

use std::time::Duration;

use steward_engine::Engine;
use steward_imageref::ImageRef;
use steward_testkit::podman::{cli, pushed_app, Containers, Names};
use steward_testkit::unique_name;

/// Held by each test for its whole run: these tests share one image (the stand-in app) under
/// different names. Run at once, a tag one test had just made was sometimes gone when
/// another untagged the same image (about one run in ten; suspected: Podman 4.3 loses an
/// update of an image's names made concurrently with another).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Podman engine, or `None` (with the reason printed) when it is absent and not asked for.
fn podman() -> Option<Engine> {
    let socket = steward_testkit::podman::socket()?;
    Some(Engine::new(format!("unix://{socket}"), Duration::from_secs(30)))
}

/// The stand-in app v1 pulled by `engine` as the updater pulls (by digest, then tagged): its
/// tag, and Podman's names for it, removed when dropped.
async fn pulled_app(engine: &Engine) -> (String, Names) {
    let (image, digest) = pushed_app("v1");
    let tagged = format!("{image}:1.0");
    let names = Names(vec![tagged.clone(), format!("{image}@{digest}")]);
    let reference = ImageRef::parse(&tagged).expect("reference");
    engine.pull_digest(&reference, &digest, "1.0").await.expect("pull on Podman");
    (tagged, names)
}

/// What the watcher reads (the local image's repo digests) and the updater's pruning reads
/// (the listed tags) after the updater's pull (by digest, then tagged) on Podman.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_has_its_registry_digest_and_only_tags_as_tags() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let (image, digest) = pushed_app("v1");
    let tagged = format!("{image}:1.0");
    let by_digest = format!("{image}@{digest}");
    let again = format!("{image}:1.0-again");
    let _untag = Names(vec![tagged.clone(), by_digest.clone(), again]);
    let reference = ImageRef::parse(&tagged).expect("reference");
    engine.pull_digest(&reference, &digest, "1.0").await.expect("pull on Podman");

    let listed = engine.images().await.expect("list images");
    let ours = listed
        .iter()
        .find(|i| i.repo_tags.contains(&tagged))
        .unwrap_or_else(|| panic!("Podman lists no image tagged {tagged}: {listed:?}"));
    // Podman lists the `repo@sha256:` name pulled by among the tags; Docker never does.
    assert!(
        ours.repo_tags.iter().all(|t| !t.contains('@')),
        "a digest listed as a tag: {:?}",
        ours.repo_tags
    );
    assert!(ours.repo_digests.contains(&by_digest), "listed digests: {:?}", ours.repo_digests);

    // The watcher's read: the local image (by the id a container would show) knows the
    // digest the registry has for its repository.
    let local = engine.local_image(&ours.id).await.expect("inspect image");
    assert!(
        local.repo_digests.contains(&by_digest),
        "Podman's image {} has no digest {by_digest}: {:?}",
        ours.id,
        local.repo_digests
    );
    // And the rollback's read: that digest is on the host, no registry needed.
    assert!(engine.tag_local_digest(&reference, &digest, "1.0-again").await.expect("tag"));
}

/// A digest the registry does not have: a clear error naming it, not a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_a_missing_digest_fails_naming_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let (image, _) = pushed_app("v1");
    let missing = format!("sha256:{}", "0".repeat(64));
    let reference = ImageRef::parse(&format!("{image}:1.0")).expect("reference");
    let err = engine
        .pull_digest(&reference, &missing, "1.0")
        .await
        .expect_err("a pull of a digest the registry lacks must fail");
    assert!(err.to_string().contains(&missing), "error does not name the digest: {err}");
}

/// The updater's replacement (create from the old container's configuration, rename, start,
/// stop) on Podman. Podman's inspect names ulimits as the kernel does (`RLIMIT_NOFILE`) and
/// sets some on every rootful container, while its create accepts only `nofile`: every
/// replacement failed before the engine translated them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_replaced_with_its_configuration() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let (tagged, _untag) = pulled_app(&engine).await;
    let name = unique_name("podman-rc");
    let _containers = Containers(vec![name.clone(), format!("{name}-steward-old")]);
    let run = cli(&["run", "-d", "--name", &name, "-e", "KEPT=yes", &tagged]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));

    let replacement = engine.replace(&name, &tagged).await.expect("replace on Podman");
    engine.finish(&replacement).await.expect("finish");
    assert_eq!(engine.is_running(&name).await.expect("state"), Some(true));
    let inspect = engine.inspect_json(&name).await.expect("inspect");
    let env = inspect["Config"]["Env"].to_string();
    assert!(env.contains("KEPT=yes"), "environment not carried over: {env}");
    let old_id = replacement_old_id(&run);
    assert_ne!(inspect["Id"].as_str(), Some(old_id.as_str()), "not replaced");
    // Podman writes the container's own `HOSTNAME` and `container=podman` into the
    // environment inspect reports: the replacement gets its own, not the old container's.
    let hostname = inspect["Config"]["Hostname"].as_str().unwrap_or_default().to_owned();
    let vars: Vec<&str> = inspect["Config"]["Env"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let hostnames: Vec<&&str> = vars.iter().filter(|v| v.starts_with("HOSTNAME=")).collect();
    assert!(!old_id.starts_with(&hostname), "the old hostname kept: {hostname}");
    assert!(
        hostnames.iter().all(|v| **v == format!("HOSTNAME={hostname}")),
        "HOSTNAME is not the replacement's own ({hostname}): {vars:?}"
    );
    assert!(vars.iter().filter(|v| **v == "container=podman").count() <= 1, "{vars:?}");
}

/// The id `podman run -d` printed.
fn replacement_old_id(run: &std::process::Output) -> String {
    String::from_utf8_lossy(&run.stdout).trim().to_owned()
}

/// Polls `health_view` (as the health gate does, every 200 ms) until the health is `want`,
/// for at most `limit`; the last health seen.
async fn health_within(engine: &Engine, name: &str, want: &str, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let health = engine.health_view(name).await.expect("health_view on Podman").health;
        if health.as_deref() == Some(want) || tokio::time::Instant::now() >= deadline {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Podman runs healthchecks from systemd timers, and the test bed's service has no systemd
/// (its log says "unable to get systemd connection to add healthchecks"): a container's health
/// stayed `starting` for ever, and every health gate on Podman timed out. The engine now runs
/// a due check through libpod's API; Podman keeps the streaks, so a failing check turns
/// `unhealthy` after its retries, as on Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthchecks_run_on_podman_without_systemd() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    assert!(engine.is_podman().await.expect("version"), "the test bed's Podman not told apart");
    let (tagged, _untag) = pulled_app(&engine).await;
    let good = unique_name("podman-hc-ok");
    let bad = unique_name("podman-hc-bad");
    let _containers = Containers(vec![good.clone(), bad.clone()]);
    // The stand-in app's own check (wget of its page every second).
    let run = cli(&["run", "-d", "--name", &good, &tagged]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));
    let run = cli(&[
        "run",
        "-d",
        "--name",
        &bad,
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        &tagged,
    ]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));

    let limit = Duration::from_secs(30);
    assert_eq!(health_within(&engine, &good, "healthy", limit).await.as_deref(), Some("healthy"));
    assert_eq!(
        health_within(&engine, &bad, "unhealthy", limit).await.as_deref(),
        Some("unhealthy")
    );
    // Podman recorded the runs: its own inspect shows them, not only Steward's view.
    let inspect = engine.inspect_json(&good).await.expect("inspect");
    let runs = inspect["State"]["Health"]["Log"].as_array().map_or(0, Vec::len);
    assert!(runs >= 1, "no healthcheck result in Podman's record: {inspect}");
}

/// A container without a healthcheck is never checked, and a stopped one answers as stopped:
/// no libpod call is made for either (it would fail: Podman refuses a check without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_check_is_run_for_a_container_without_one_or_stopped() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let (tagged, _untag) = pulled_app(&engine).await;
    let plain = unique_name("podman-hc-none");
    let _containers = Containers(vec![plain.clone()]);
    let run = cli(&["run", "-d", "--name", &plain, "--no-healthcheck", &tagged]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = engine.health_view(&plain).await.expect("health_view without a check");
    assert_eq!((view.running, view.health), (true, None));
    let stop = cli(&["stop", "-t", "1", &plain]);
    assert!(stop.status.success(), "podman stop: {}", String::from_utf8_lossy(&stop.stderr));
    let view = engine.health_view(&plain).await.expect("health_view of a stopped container");
    assert!(!view.running);
}

/// Tags set on one image two at a time (two updates pulling the same image, or a rollback's
/// tag beside an operator's) all stay: Podman 4.3 loses some of them (a lost update of the
/// image's names), and the engine reads each tag back and sets it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_set_two_at_a_time_on_one_image_all_stay() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let (image, digest) = pushed_app("v1");
    let reference = ImageRef::parse(&format!("{image}:1.0")).expect("reference");
    let _names = Names(vec![format!("{image}@{digest}")]);
    engine.pull_digest(&reference, &digest, "1.0").await.expect("pull on Podman");
    const PAIRS: usize = 20;
    let mut names = Names(vec![format!("{image}:1.0")]);
    for n in 0..PAIRS {
        let (a, b) = (format!("a{n}"), format!("b{n}"));
        names.0.extend([format!("{image}:{a}"), format!("{image}:{b}")]);
        let (ta, tb) = tokio::join!(
            engine.tag_local_digest(&reference, &digest, &a),
            engine.tag_local_digest(&reference, &digest, &b),
        );
        assert!(ta.expect("tag a") && tb.expect("tag b"), "the digest is on the host");
    }
    let listed = engine.images().await.expect("list images");
    let tags: Vec<&String> = listed.iter().flat_map(|i| &i.repo_tags).collect();
    let lost: Vec<&String> = names.0.iter().filter(|n| !tags.contains(n)).collect();
    assert!(lost.is_empty(), "tags lost: {lost:?}");
}

/// A container that exits at once under a restart policy is in Podman's state `stopped`
/// (ended, not cleaned up yet) most of the time, a state Docker's API has no name for. Every
/// read of it, and every list of the host it is on, still answers, with its state read as
/// Docker's `exited`. Before, the list failed whole (the engine looked unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_in_podmans_stopped_state_is_read_and_the_host_still_listed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let name = unique_name("podman-loop");
    let _containers = Containers(vec![name.clone()]);
    let args = ["run", "-d", "--name", &name, "--restart=always", "--label", "steward.test=loop"];
    let run = cli(&[&args[..], &["steward-test/busybox:latest", "sh", "-c", "exit 1"]].concat());
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));
    let loops = |labels: &std::collections::HashMap<String, String>| {
        labels.get("steward.test").is_some_and(|v| v == "loop")
    };
    // Bounded: the state is `stopped` in about nine reads of ten here.
    let mut seen_stopped = 0;
    for _ in 0..20 {
        let state = cli(&["inspect", "--format", "{{.State.Status}}", &name]);
        let stopped = String::from_utf8_lossy(&state.stdout).trim() == "stopped";
        let listed = engine.containers(loops).await.expect("list the host's containers");
        assert!(listed.iter().any(|c| c.name == name), "{name} not listed: {listed:?}");
        engine.images_in_use().await.expect("the images of every container");
        let brief = engine.brief(&name).await.expect("inspect it").expect("it exists");
        let view = engine.health_view(&brief.id).await.expect("its health view");
        if stopped && !brief.running && !view.running {
            seen_stopped += 1;
        }
        if seen_stopped >= 3 {
            return;
        }
    }
    panic!("{name} was seen stopped {seen_stopped} times in 20 reads: this proved nothing");
}

/// An image pulled by tag whose tag then moves to another image (a newer release pulled)
/// keeps its digest in that repository, as on Docker: Podman drops the repository from the
/// image's list, and the watcher took a container still running it for one never pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_keeps_its_repositorys_digest_after_its_tag_moved() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman() else { return };
    let (image, digest) = pushed_app("v1");
    let tagged = format!("{image}:1.0");
    let _names = Names(vec![tagged.clone()]);
    let pull = cli(&["pull", "--tls-verify=false", &tagged]);
    assert!(pull.status.success(), "podman pull: {}", String::from_utf8_lossy(&pull.stderr));
    let id = String::from_utf8_lossy(&cli(&["image", "inspect", "-f", "{{.Id}}", &tagged]).stdout)
        .trim()
        .to_owned();
    let wanted = format!("{image}@{digest}");
    let before = engine.repo_digests(&id).await.expect("repo digests");
    assert!(before.contains(&wanted), "{wanted} not in {before:?}");

    let moved = cli(&["tag", "localhost/steward-test/app:v2", &tagged]);
    assert!(moved.status.success(), "podman tag: {}", String::from_utf8_lossy(&moved.stderr));
    let after = engine.repo_digests(&id).await.expect("repo digests after the tag moved");
    assert!(after.contains(&wanted), "{wanted} lost when the tag moved: {after:?}");
    assert!(after.iter().all(|d| !d.starts_with("localhost/")), "{after:?}");
}

/// A project directory of its own (mode 0755, so any uid in a container can reach it), with
/// `.env` owned 1234:2345, mode 0640; removed when dropped.
struct ProjectDir(std::path::PathBuf);

impl ProjectDir {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(unique_name("podman-project"));
        std::fs::create_dir_all(&dir).expect("project dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let env = dir.join(".env");
        std::fs::write(&env, "APP_IMAGE=app:1.0\n").expect("write .env");
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::os::unix::fs::chown(&env, Some(1234), Some(2345)).expect("chown");
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp dir")
    }

    /// `.env`'s mode, owner and group on the host.
    fn env_stat(&self) -> (u32, u32, u32) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(self.0.join(".env")).expect("stat .env");
        (meta.mode() & 0o7777, meta.uid(), meta.gid())
    }
}

impl Drop for ProjectDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// No container labelled as `owner`'s project helper (or owner listing) is left on Podman.
fn assert_no_project_helper(owner: &str) {
    let filter = format!("label={}={owner}", steward_labels::PROJECT_HELPER);
    let left = cli(&["ps", "-aq", "--filter", &filter]);
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "", "helper containers left");
}

/// The updater's write-back reads a project file's owner to write the new content back as
/// that owner's. Podman's archive read gives every file root's owner, and the write-back made
/// an operator's `.env` root's (`tests/tests/write_back.rs` on Podman). The owner read is the
/// file's, and the write keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_files_owner_is_the_files_not_root_and_a_write_keeps_it() {
    let Some(engine) = podman() else { return };
    let project = ProjectDir::new();
    let like = unique_name("podman-like");
    let _containers = Containers(vec![like.clone()]);
    let create = cli(&["create", "--name", &like, "steward-test/busybox:latest", "true"]);
    assert!(create.status.success(), "podman create: {}", String::from_utf8_lossy(&create.stderr));
    let owner = unique_name("owner");

    let dir = engine.open_project_dir(project.path(), &like, &owner).await.expect("open");
    let file = dir.read(".env").await.expect("read .env").expect(".env is there");
    assert_eq!(file.content, b"APP_IMAGE=app:1.0\n");
    assert_eq!((file.mode & 0o7777, file.uid, file.gid), (0o640, 1234, 2345), "{file:?}");
    let new = steward_engine::ProjectFile { content: b"APP_IMAGE=app:1.1\n".to_vec(), ..file };
    dir.write(".env", &new).await.expect("write .env");
    dir.close().await.expect("close");

    assert_eq!(std::fs::read(project.0.join(".env")).expect("read back"), b"APP_IMAGE=app:1.1\n");
    assert_eq!(project.env_stat(), (0o640, 1234, 2345), "the owner or mode changed");
    assert_no_project_helper(&owner);
}

/// Where the owner cannot be listed (an image without a shell: distroless, `scratch`), the
/// read fails saying why, rather than hand back root's owner for the write to put on the file;
/// the updater then refuses the write-back and the file stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_files_owner_that_cannot_be_listed_fails_the_read() {
    let Some(engine) = podman() else { return };
    let project = ProjectDir::new();
    // An image of one file and nothing else, imported from a tar (no registry, no build).
    let image = format!("localhost/{}:1", unique_name("steward-test/no-shell"));
    let rootfs = project.0.join("rootfs.tar");
    let tar = std::process::Command::new("tar")
        .args(["-cf", rootfs.to_str().expect("utf-8"), "-C", project.path(), ".env"])
        .status()
        .expect("run tar");
    assert!(tar.success(), "tar");
    let imported = cli(&["import", rootfs.to_str().expect("utf-8"), &image]);
    assert!(imported.status.success(), "import: {}", String::from_utf8_lossy(&imported.stderr));
    let _image = Names(vec![image.clone()]);
    std::fs::remove_file(&rootfs).expect("remove the tar");
    let like = unique_name("podman-no-shell");
    let _containers = Containers(vec![like.clone()]);
    let create = cli(&["create", "--name", &like, &image, "/nothing"]);
    assert!(create.status.success(), "podman create: {}", String::from_utf8_lossy(&create.stderr));
    let owner = unique_name("owner");

    let dir = engine.open_project_dir(project.path(), &like, &owner).await.expect("open");
    let read = dir.read(".env").await;
    dir.close().await.expect("close");
    let e = read.expect_err("root's owner handed back");
    assert!(e.to_string().contains("could not be listed"), "{e}");
    assert!(matches!(e, steward_engine::EngineError::Operation { .. }), "{e:?}");
    assert_eq!(project.env_stat(), (0o640, 1234, 2345));
    assert_no_project_helper(&owner);
}

/// The owners in an archive read of `path` of `container` through `engine`, by entry name.
async fn archived_owners(
    engine: &Engine,
    container: &str,
    path: &str,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    use futures::StreamExt as _;
    let mut tar = vec![];
    let mut stream = engine.download_path_listed(container, path, None);
    while let Some(chunk) = stream.next().await {
        tar.extend_from_slice(&chunk.expect("archive read"));
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut owners = std::collections::BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let entry = entry.expect("an entry");
        let h = entry.header();
        let name = entry.path().expect("a name").to_string_lossy().trim_end_matches('/').to_owned();
        owners.insert(name, (h.uid().expect("uid"), h.gid().expect("gid")));
    }
    owners
}

/// A backup that stops its container (`steward.backup.stop=true`) reads the path of a stopped
/// container, which cannot be listed by exec. Its files came back root's on Podman. A path on
/// a volume is listed in a one-shot container sharing the volumes read-only, and keeps its
/// owners; one in the container's own layer cannot be (the loss docs/podman.md states).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_containers_volume_is_read_with_its_owners() {
    let Some(engine) = podman() else { return };
    let name = unique_name("podman-stopped");
    let _containers = Containers(vec![name.clone()]);
    let script = "mkdir -p /data/d /layer && echo hi > /data/d/f && chown 1000:100 /data/d \
        && chown 33:44 /data/d/f && echo hi > /layer/f && chown 1000:100 /layer/f";
    let run = cli(&[
        "run",
        "--name",
        &name,
        "-v",
        "/data",
        "steward-test/busybox:latest",
        "sh",
        "-c",
        script,
    ]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));
    let brief = engine.brief(&name).await.expect("inspect").expect("it exists");
    assert!(!brief.running, "the container ended");

    let owners = archived_owners(&engine, &name, "/data").await;
    assert_eq!(owners.get("data/d"), Some(&(1000, 100)), "{owners:?}");
    assert_eq!(owners.get("data/d/f"), Some(&(33, 44)), "{owners:?}");
    // The container's own layer: no other container can see it, so no listing.
    let owners = archived_owners(&engine, &name, "/layer").await;
    assert_eq!(owners.get("layer/f"), Some(&(0, 0)), "the stated loss changed: {owners:?}");
    let filter = format!("label={}={name}", steward_labels::HELPER);
    let left = cli(&["ps", "-aq", "--filter", &filter]);
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "", "listing containers left");
}
