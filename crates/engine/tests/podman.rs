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
use steward_testkit::docker::{docker, push_app, registry};
use steward_testkit::{testbed, unique_name};

/// Held by each test for its whole run: these tests share one image (the stand-in app) under
/// different names. Run at once, a tag one test had just made was sometimes gone when
/// another untagged the same image (about one run in ten; suspected: Podman 4.3 loses an
/// update of an image's names made concurrently with another).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Podman engine, or `None` (with the reason printed) when it is absent and not asked for.
async fn podman() -> Option<Engine> {
    let required = std::env::var("STEWARD_TEST_ENGINE").is_ok_and(|e| e == "podman");
    let Some(socket) = testbed::var("STEWARD_TEST_PODMAN_SOCKET") else {
        assert!(
            !required,
            "STEWARD_TEST_ENGINE=podman but STEWARD_TEST_PODMAN_SOCKET is not set: run infra/testbed/up.sh with podman installed"
        );
        eprintln!("skipped: no Podman service (STEWARD_TEST_PODMAN_SOCKET unset; infra/testbed/up.sh starts one when podman is installed)");
        return None;
    };
    let engine = Engine::new(format!("unix://{socket}"), Duration::from_secs(30));
    match engine.ping(Duration::from_secs(5)).await {
        Ok(()) => Some(engine),
        Err(e) if !required => {
            eprintln!("skipped: the Podman service at {socket} does not answer: {e}");
            None
        }
        Err(e) => panic!("STEWARD_TEST_ENGINE=podman but Podman at {socket} does not answer: {e}"),
    }
}

/// A repository of the test bed's registry holding the stand-in app v1 as `1.0`, known to
/// Docker only by its registry digest (the tag is removed from Docker again): its name and
/// that digest.
fn pushed_app() -> (String, String) {
    let image = format!("{}/{}", registry(), unique_name("steward-test/podman"));
    let tagged = format!("{image}:1.0");
    let digest = push_app("v1", &tagged);
    docker(&["rmi", &tagged]);
    (image, digest)
}

/// Removes Podman's names for the pulled image when dropped (the image itself stays while
/// other names hold it, as Docker's does).
struct Untag(Engine, Vec<String>);
impl Drop for Untag {
    fn drop(&mut self) {
        let (engine, names) = (self.0.clone(), std::mem::take(&mut self.1));
        // Drop cannot await: a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                for name in names {
                    let _ = engine.remove_image(&name).await;
                }
            });
        })
        .join();
    }
}

/// What the watcher reads (the local image's repo digests) and the updater's pruning reads
/// (the listed tags) after the updater's pull (by digest, then tagged) on Podman.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_has_its_registry_digest_and_only_tags_as_tags() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman().await else { return };
    let (image, digest) = pushed_app();
    let tagged = format!("{image}:1.0");
    let by_digest = format!("{image}@{digest}");
    let again = format!("{image}:1.0-again");
    let _untag = Untag(engine.clone(), vec![tagged.clone(), by_digest.clone(), again]);
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
    let Some(engine) = podman().await else { return };
    let (image, _) = pushed_app();
    let missing = format!("sha256:{}", "0".repeat(64));
    let reference = ImageRef::parse(&format!("{image}:1.0")).expect("reference");
    let err = engine
        .pull_digest(&reference, &missing, "1.0")
        .await
        .expect_err("a pull of a digest the registry lacks must fail");
    assert!(err.to_string().contains(&missing), "error does not name the digest: {err}");
}

/// Runs `podman ARGS` with the test bed's Podman configuration (the service's own).
fn podman_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", testbed::dir().join("podman/containers.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", testbed::dir().join("podman/registries.conf"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman: {e}"))
}

/// Removes Podman containers when dropped.
struct Containers(Vec<String>);
impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman_cli(&["rm", "-f", name]);
        }
    }
}

/// The updater's replacement (create from the old container's configuration, rename, start,
/// stop) on Podman. Podman's inspect names ulimits as the kernel does (`RLIMIT_NOFILE`) and
/// sets some on every rootful container, while its create accepts only `nofile`: every
/// replacement failed before the engine translated them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_replaced_with_its_configuration() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(engine) = podman().await else { return };
    let (image, digest) = pushed_app();
    let tagged = format!("{image}:1.0");
    let _untag = Untag(engine.clone(), vec![tagged.clone(), format!("{image}@{digest}")]);
    let reference = ImageRef::parse(&tagged).expect("reference");
    engine.pull_digest(&reference, &digest, "1.0").await.expect("pull on Podman");
    let name = unique_name("podman-rc");
    let _containers = Containers(vec![name.clone(), format!("{name}-steward-old")]);
    let run = podman_cli(&["run", "-d", "--name", &name, "-e", "KEPT=yes", &tagged]);
    assert!(run.status.success(), "podman run: {}", String::from_utf8_lossy(&run.stderr));

    let replacement = engine.replace(&name, &tagged).await.expect("replace on Podman");
    engine.finish(&replacement).await.expect("finish");
    assert_eq!(engine.is_running(&name).await.expect("state"), Some(true));
    let inspect = engine.inspect_json(&name).await.expect("inspect");
    let env = inspect["Config"]["Env"].to_string();
    assert!(env.contains("KEPT=yes"), "environment not carried over: {env}");
    assert_ne!(inspect["Id"].as_str(), Some(replacement_old_id(&run).as_str()), "not replaced");
}

/// The id `podman run -d` printed.
fn replacement_old_id(run: &std::process::Output) -> String {
    String::from_utf8_lossy(&run.stdout).trim().to_owned()
}
