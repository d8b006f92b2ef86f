//! Replacing containers on the real Docker engine: every configuration item survives, image
//! defaults come from the new image, data survives, and `restore` puts everything back; and
//! which containers the engine lists as services (the ones a replacement and every service
//! look for).

use std::time::Duration;

use serde_json::Value;
use steward_engine::Engine;
use steward_testkit::docker::{docker, Container};
use steward_testkit::{free_port, http_get, unique_name, wait_for};

fn inspect(name: &str) -> Value {
    let out = docker(&["inspect", name]);
    let mut all: Vec<Value> = serde_json::from_str(&out).expect("inspect json");
    all.remove(0)
}

fn exists(name: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Removes networks and volumes when dropped.
struct Cleanup(Vec<Vec<String>>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let _ = std::process::Command::new("docker").args(args).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_keeps_every_configuration_item_and_the_data() {
    let (name, net, net2, vol) =
        (unique_name("rc"), unique_name("rc-net"), unique_name("rc-net2"), unique_name("rc-vol"));
    // Containers go before networks and volumes (declaration order is drop order, reversed).
    let _cleanup = Cleanup(vec![
        vec!["rm".into(), "-f".into(), format!("{name}-steward-old")],
        vec!["network".into(), "rm".into(), net.clone()],
        vec!["network".into(), "rm".into(), net2.clone()],
        vec!["volume".into(), "rm".into(), vol.clone()],
    ]);
    docker(&["network", "create", &net]);
    docker(&["network", "create", &net2]);
    docker(&["volume", "create", &vol]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let mount = format!("{vol}:/data");
    let c = Container::run(
        &name,
        &[
            "--label",
            "com.docker.compose.project=demo",
            "--label",
            "com.docker.compose.service=web",
            "--label",
            "steward.enable=true",
            "-v",
            &mount,
            "--network",
            &net,
            "--network-alias",
            "web",
            "-e",
            "FOO=bar",
            "-p",
            &publish,
            "--restart",
            "unless-stopped",
            "--memory",
            "64m",
            // Podman reports a CPU limit twice and refused its own copy (issue 22).
            "--cpus",
            "0.5",
            "--pids-limit",
            "64",
            "--health-cmd",
            "wget -q -O /dev/null http://127.0.0.1:8080/",
            "--health-interval",
            "2s",
            "--user",
            "0:0",
            "--hostname",
            "apphost",
            "steward-test/app:v1",
        ],
    );
    docker(&["network", "connect", "--alias", "web2", &net2, &name]);
    docker(&["exec", &name, "sh", "-c", "echo keep > /data/f"]);
    wait_for("v1 served", Duration::from_secs(10), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    let before = inspect(&name);

    let engine = Engine::from_env();
    let r = engine.replace(&name, "steward-test/app:v2").await.expect("replace");
    wait_for("v2 served", Duration::from_secs(10), || {
        http_get(port).filter(|b| b.contains("app v2"))
    });

    let after = inspect(&name);
    assert_eq!(after["Id"], Value::from(r.new_id.clone()));
    assert_ne!(after["Id"], before["Id"]);
    let image = after["Config"]["Image"].as_str().unwrap_or_default();
    assert!(steward_testkit::is_image_name(image, "steward-test/app:v2"), "{image}");
    let env: Vec<&str> =
        after["Config"]["Env"].as_array().expect("env").iter().filter_map(Value::as_str).collect();
    assert!(env.contains(&"FOO=bar"), "{env:?}");
    for label in ["com.docker.compose.project", "com.docker.compose.service", "steward.enable"] {
        assert_eq!(after["Config"]["Labels"][label], before["Config"]["Labels"][label], "{label}");
    }
    assert_eq!(after["HostConfig"]["PortBindings"], before["HostConfig"]["PortBindings"]);
    assert_eq!(after["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    // Rootless Podman on cgroup v1 drops resource limits at create (its log says so, its
    // answer nothing): there the new container has what the old one was given.
    for (key, given) in [("Memory", 64 * 1024 * 1024), ("NanoCpus", 500_000_000), ("PidsLimit", 64)]
    {
        let want = match steward_testkit::on_rootless_podman() {
            true => before["HostConfig"][key].clone(),
            false => Value::from(given),
        };
        assert_eq!(after["HostConfig"][key], want, "{key}");
    }
    assert_eq!(after["HostConfig"]["Binds"], before["HostConfig"]["Binds"]);
    assert_eq!(after["Config"]["Healthcheck"], before["Config"]["Healthcheck"]);
    assert_eq!(after["Config"]["User"], "0:0");
    assert_eq!(after["Config"]["Hostname"], "apphost");
    let short_old = before["Id"].as_str().expect("id")[..12].to_owned();
    for (network, alias) in [(&net, "web"), (&net2, "web2")] {
        let aliases: Vec<&str> = after["NetworkSettings"]["Networks"][network]["Aliases"]
            .as_array()
            .unwrap_or_else(|| panic!("not on {network}: {}", after["NetworkSettings"]))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(aliases.contains(&alias), "{network}: {aliases:?}");
        assert!(!aliases.contains(&short_old.as_str()), "old id alias copied: {aliases:?}");
    }
    // The engine derives a MAC from the IP; we never set one (a copied MAC makes duplicates).
    let mac = after["Config"].get("MacAddress").and_then(Value::as_str).unwrap_or("");
    assert_eq!(mac, "", "no MAC address was configured");
    assert_eq!(docker(&["exec", &name, "cat", "/data/f"]), "keep");

    // The old one is parked, stopped, until finished.
    let parked = inspect(&format!("{name}-steward-old"));
    assert_eq!(parked["State"]["Running"], false);
    engine.finish(&r).await.expect("finish");
    assert!(!exists(&format!("{name}-steward-old")));
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_defaults_come_from_the_new_image_and_anonymous_volumes_keep_their_data() {
    let tag = unique_name("steward-test/defaults");
    let ctx = std::env::temp_dir().join(unique_name("ctx"));
    std::fs::create_dir_all(&ctx).expect("ctx");
    for v in ["1", "2"] {
        let dockerfile = format!(
            "FROM steward-test/busybox:latest\nENV APP_VERSION={v}\nLABEL app.version={v}\nVOLUME /state\nCMD [\"sleep\", \"360{v}\"]\n"
        );
        std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("write");
        let out = std::process::Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &format!("{tag}:{v}"), ctx.to_str().expect("path")])
            .output()
            .expect("build");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&ctx);
    let _images = Cleanup(vec![
        vec!["rmi".into(), format!("{tag}:1")],
        vec!["rmi".into(), format!("{tag}:2")],
    ]);

    let (plain, custom) = (unique_name("defaults"), unique_name("custom"));
    // `sleep` as PID 1 ignores SIGTERM: a 1 s stop timeout instead of the default 10 s.
    let c1 = Container::run(
        &plain,
        &["--stop-timeout", "1", "-e", "FOO=bar", "--label", "mine=yes", &format!("{tag}:1")],
    );
    let c2 = Container::run(&custom, &["--stop-timeout", "1", &format!("{tag}:1"), "sleep", "999"]);
    docker(&["exec", &plain, "sh", "-c", "echo kept > /state/f"]);
    let before = inspect(&plain);
    let volume = |v: &Value| v["Mounts"][0]["Name"].as_str().unwrap_or_default().to_owned();
    // Re-attached by name, these volumes outlive `docker rm -v`: remove them explicitly.
    let _volumes = Cleanup(
        [volume(&before), volume(&inspect(&custom))]
            .into_iter()
            .map(|v| vec!["volume".into(), "rm".into(), v])
            .collect(),
    );
    let engine = Engine::from_env();
    for name in [&plain, &custom] {
        let r = engine.replace(name, &format!("{tag}:2")).await.expect("replace");
        engine.finish(&r).await.expect("finish");
    }

    let after = inspect(&plain);
    let env: Vec<&str> =
        after["Config"]["Env"].as_array().expect("env").iter().filter_map(Value::as_str).collect();
    assert!(env.contains(&"APP_VERSION=2") && !env.contains(&"APP_VERSION=1"), "{env:?}");
    assert!(env.contains(&"FOO=bar"));
    assert_eq!(after["Config"]["Labels"]["app.version"], "2");
    assert_eq!(after["Config"]["Labels"]["mine"], "yes");
    assert_eq!(
        after["Config"]["Cmd"],
        serde_json::json!(["sleep", "3602"]),
        "the new image's default"
    );
    assert_eq!(
        inspect(&custom)["Config"]["Cmd"],
        serde_json::json!(["sleep", "999"]),
        "the operator's command"
    );
    // The anonymous volume was re-attached, not replaced by an empty one.
    assert_eq!(volume(&after), volume(&before));
    assert_eq!(docker(&["exec", &plain, "cat", "/state/f"]), "kept");
    drop((c1, c2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_puts_the_old_container_back_and_leaves_nothing_behind() {
    let name = unique_name("restore");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let c = Container::run(&name, &["-p", &publish, "steward-test/app:v1"]);
    wait_for("v1 served", Duration::from_secs(10), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    let old_id = inspect(&name)["Id"].clone();

    let engine = Engine::from_env();
    let r =
        engine.replace(&name, "steward-test/app:v3").await.expect("replace starts the broken v3");
    assert!(http_get(port).is_none_or(|b| !b.contains("app v1")));
    engine.restore(&r).await.expect("restore");
    // Twice is harmless (a crash may repeat it).
    engine.restore(&r).await.expect("restore again");
    wait_for("v1 served again", Duration::from_secs(10), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    assert_eq!(inspect(&name)["Id"], old_id);
    for suffix in ["-steward-old", "-steward-new", "-steward-failed"] {
        assert!(!exists(&format!("{name}{suffix}")), "{suffix} left behind");
    }
    assert!(!exists(&r.new_id), "the failed container is removed");
    drop(c);
}

/// A container inherits its image's labels, so a helper of an image labelled for Steward
/// (`steward.enable`, `steward.backup.paths`, a scope) is labelled so too, and so is a compose
/// one-off of a labelled service. The engine's lists leave both out, so no service watches,
/// probes, backs up or updates one. Before (issue 22), a scratch or a listing's one-shot of
/// the app's image was listed as one more watched container of the scope while it lived. A
/// write-back's helper of the same owner left behind is still found and swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_and_one_offs_of_a_labelled_image_are_never_listed_as_services() {
    use steward_testkit::docker::{build, ImageTag};
    let scope = unique_name("stand-in");
    let image = format!("steward-test/{scope}:1");
    let _tag = ImageTag(image.clone());
    build(
        &image,
        &format!(
            "FROM steward-test/app:v1\nLABEL steward.enable=true steward.scope={scope} \
             steward.backup.paths=/data steward.health.url=http://127.0.0.1:8080/\n"
        ),
    );
    let (service, one_off, scratch) =
        (unique_name("svc"), unique_name("svc-run"), unique_name("svc-scratch"));
    let owner = unique_name("update");
    let helper_filter = format!("label={}={owner}", steward_labels::PROJECT_HELPER);
    // Dropped before the image's tag, also when an assertion fails: the write-back helpers
    // (nothing else removes a never-started helper) and the project directory.
    let _helpers = Labelled(helper_filter.clone());
    let dir = steward_testkit::TempDir::new("stand-in-project");
    let _service = Container::run(&service, &[&image]);
    let _one_off = Container::run(&one_off, &["--label", "com.docker.compose.oneoff=True", &image]);
    let _scratch = Container::adopt(scratch.clone());
    let dir_s = dir.0.to_str().expect("utf-8 path").to_owned();

    let engine = Engine::from_env();
    engine.start_scratch(&scratch, &image, vec![]).await.expect("start a scratch");
    // Two write-back helpers of one owner: the second open sweeps the first, as after a kill.
    let left = engine.open_project_dir(&dir_s, &service, &owner).await.expect("open the project");
    drop(left);
    let project = engine.open_project_dir(&dir_s, &service, &owner).await.expect("open again");
    let helpers = docker(&["ps", "-aq", "--filter", &helper_filter]);
    assert_eq!(helpers.lines().count(), 1, "the left helper swept: {helpers}");
    // Every container of the image, as the engine sees them (they all carry the scope).
    let everything = docker(&["ps", "-a", "--filter", &format!("label=steward.scope={scope}")]);
    assert_eq!(everything.lines().count(), 1 + 4, "{everything}");

    let ours =
        |l: &std::collections::HashMap<String, String>| steward_labels::in_scope(l, Some(&scope));
    let listed: Vec<String> =
        engine.containers(ours).await.expect("list").into_iter().map(|c| c.name).collect();
    assert_eq!(listed, vec![service.clone()], "stopped ones included");
    let running: Vec<String> =
        engine.running_containers(ours).await.expect("list").into_iter().map(|c| c.name).collect();
    assert_eq!(running, vec![service.clone()], "running ones");

    project.close().await.expect("close the project");
    let helpers = docker(&["ps", "-aq", "--filter", &helper_filter]);
    assert_eq!(helpers.trim(), "", "the helper removed");
}

/// Removes the containers the `docker ps` filter selects when dropped.
struct Labelled(String);

impl Drop for Labelled {
    fn drop(&mut self) {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &self.0])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = std::process::Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
    }
}
