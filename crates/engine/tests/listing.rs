//! Where a path cannot be listed in its own container, the engine lists it in a one-shot
//! container sharing its volumes, but only where that one-shot sees what the container sees:
//! checked against the engine's own account of a `--tmpfs` under the path, and a path
//! reached through a symbolic link (which would resolve in the one-shot's image). Stopped
//! containers, whose one-shot takes their own image, so that no image of Steward's is needed:
//! busybox's tools, and GNU's (Debian's, as in Steward's shipped image), whose NUL-separated
//! records carry any name.

use steward_engine::{listing, Engine};
use steward_testkit::docker::{docker, Container};
use steward_testkit::unique_name;

/// A container of the test bed's busybox image with `args` before the image, idling, stopped
/// after `script` ran in it.
fn stopped(name: &str, args: &[&str], script: &str) -> Container {
    stopped_of("steward-test/busybox:latest", name, args, script)
}

/// [`stopped`], of `image`.
fn stopped_of(image: &str, name: &str, args: &[&str], script: &str) -> Container {
    let mut all = vec!["--stop-signal", "KILL", "--entrypoint", "sleep"];
    all.extend_from_slice(args);
    all.extend([image, "3600"]);
    let c = Container::run(name, &all);
    docker(&["exec", name, "sh", "-c", script]);
    docker(&["stop", name]);
    c
}

/// The containers labelled as `name`'s helpers (a listing's one-shot), running or not.
fn helpers_of(name: &str) -> String {
    docker(&["ps", "-aq", "--filter", &format!("label=steward.helper={name}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_containers_volume_is_listed_beside_it_only_where_the_one_shot_sees_it_alike() {
    let engine = Engine::from_env();

    // Listed beside it: the volume, with what is in it.
    let plain = unique_name("lst-plain");
    let _plain = stopped(
        &plain,
        &["-v", "/data"],
        "mkdir -p /data/real/sub && echo hi > /data/real/f && ln -s real /data/link",
    );
    let listed = listing::list(&engine, &plain, "/data")
        .await
        .unwrap_or_else(|e| panic!("a stopped container's volume: {e}"));
    for name in ["data", "data/real", "data/real/sub", "data/real/f", "data/link"] {
        assert!(listed.get(name).is_some(), "{name} not listed");
    }
    assert!(!listed.tar, "a one-shot's listing says no tar");
    assert!(listing::list(&engine, &plain, "/data/real/").await.is_ok());

    // Through a symbolic link: in the one-shot it would resolve in the one-shot's image.
    let through = listing::list(&engine, &plain, "/data/link/sub").await;
    assert!(
        through.as_ref().is_err_and(|e| e.contains("does not resolve to itself")),
        "{through:?}"
    );

    // A tmpfs under the path is not shared: the one-shot would list the volume beneath it.
    // Docker and Podman name `--tmpfs` in `HostConfig.Tmpfs`, not in `Mounts`.
    let tmpfs = unique_name("lst-tmpfs");
    let _tmpfs = stopped(&tmpfs, &["-v", "/data", "--tmpfs", "/data/cache"], "echo x > /data/y");
    let under = listing::list(&engine, &tmpfs, "/data").await;
    assert!(under.as_ref().is_err_and(|e| e.contains("tmpfs mount at /data/cache")), "{under:?}");
    // Its own layer is never shared.
    let layer = listing::list(&engine, &tmpfs, "/etc").await;
    assert!(layer.as_ref().is_err_and(|e| e.contains("own layer")), "{layer:?}");

    // GNU's tools in the one-shot (the stopped container's own Debian image): NUL-separated
    // records, so a name with a newline is one entry, with its owner, mode and size.
    let gnu = unique_name("lst-gnu");
    let image = steward_testkit::testbed::require("STEWARD_TEST_POSTGRES_IMAGE");
    let _gnu = stopped_of(
        &image,
        &gnu,
        &["-v", "/data"],
        "printf 'abc' > \"/data/two\nlines\" && chown 1234:2345 \"/data/two\nlines\" && \
         chmod 640 \"/data/two\nlines\" && mkdir /data/d && chown 33:44 /data/d",
    );
    let listed = listing::list(&engine, &gnu, "/data")
        .await
        .unwrap_or_else(|e| panic!("a stopped container with GNU's tools: {e}"));
    let odd = listed.get("data/two\nlines").unwrap_or_else(|| panic!("the name with a newline"));
    assert_eq!((odd.uid, odd.gid, odd.perms & 0o7777, odd.size), (1234, 2345, 0o640, 3));
    let dir = listed.get("data/d").unwrap_or_else(|| panic!("data/d not listed"));
    assert_eq!((dir.uid, dir.gid), (33, 44));
    assert!(listed.get("data/two").is_none() && listed.get("lines").is_none());

    for name in [&plain, &tmpfs, &gnu] {
        assert_eq!(helpers_of(name), "", "a listing's container of {name} left");
    }
}

/// The volumes holding file `mark` (with `mark` in it) at their top, by the engine's own
/// account of where each volume is on the host.
fn volumes_holding(mark: &str) -> Vec<String> {
    let all = docker(&["volume", "ls", "-q"]);
    all.lines()
        .filter(|v| {
            let at = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", v]);
            std::fs::read_to_string(std::path::Path::new(&at).join("mark"))
                .is_ok_and(|m| m.trim() == mark)
        })
        .map(str::to_owned)
        .collect()
}

/// A helper sharing a container's volumes (a restore's, a listing's) whose image declares a
/// `VOLUME` where the container has none gets an anonymous volume of its own there: it goes
/// with the helper (before, one was left behind per helper: found as CI's stray volumes), and
/// the volume it borrowed stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helpers_own_volumes_go_with_it_and_the_borrowed_ones_stay() {
    let engine = Engine::from_env();
    // The PostgreSQL stand-in declares `VOLUME /var/lib/postgresql/data`; this container keeps
    // a tmpfs there and its data in a volume at /data.
    let image = steward_testkit::testbed::require("STEWARD_TEST_POSTGRES_IMAGE");
    let owner = unique_name("hlp-owner");
    let _owner = stopped_of(
        &image,
        &owner,
        &["-v", "/data", "--tmpfs", "/var/lib/postgresql/data"],
        "echo kept > /data/f",
    );
    let mark = unique_name("mark");
    let out = engine
        .run_with_volumes_of(
            &owner,
            &image,
            vec!["sh".into(), "-c".into()],
            vec![format!("echo {mark} > /var/lib/postgresql/data/mark && cat /data/f")],
            10,
        )
        .await
        .unwrap_or_else(|e| panic!("the helper: {e}"));
    assert_eq!((out.exit_code, out.tail.join("\n")), (0, "kept".to_owned()), "{out:?}");
    assert_eq!(volumes_holding(&mark), Vec::<String>::new(), "the helper's own volume was left");
    assert_eq!(helpers_of(&owner), "", "the helper was left");
    // The borrowed volume is the owner's still, with its file.
    let data = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Name}}{{end}}{{end}}",
        &owner,
    ]);
    let at = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &data]);
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&at).join("f")).ok().as_deref(),
        Some("kept\n")
    );
}
