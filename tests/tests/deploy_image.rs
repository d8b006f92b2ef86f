//! The deployer's image (`steward-local/deployer:debug`: the test bed's build of the
//! Dockerfile's `deployer` stage, made by `infra/testbed/stack-images.sh`) deploys a commit as
//! it runs in the compose stack: its own user (10001), `git` and `docker-compose` from the
//! image, the engine only through the socket proxy's `deployer` role, and the checkouts on a
//! directory mounted at the same path as on the host (compose's bind mounts name host paths).
//! Real NATS, `git daemon`, socket proxy and engine; the container joins the host's network so
//! it reaches them on 127.0.0.1.

mod deploy_common;

use std::os::unix::fs::PermissionsExt as _;

use deploy_common::*;
use steward_testkit::docker::{docker, try_docker};

fn image() -> String {
    std::env::var("STEWARD_DEPLOYER_IMAGE")
        .unwrap_or_else(|_| "steward-local/deployer:debug".into())
}

/// The deployer's container, removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = try_docker(&["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployers_image_deploys_through_the_socket_proxy_as_its_own_user() {
    if let Some(socket) = steward_system_tests::stack::podman_socket() {
        // The test bed builds with Docker; Podman's store gets copies (the stack's own
        // set-up does the same for its images).
        let images = [image(), "steward-test/app:v1".into(), "steward-test/app:v2".into()];
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        steward_system_tests::podman::copy_images_from_docker(&socket, &images);
    }
    assert!(
        try_docker(&["image", "inspect", &image()]).is_some(),
        "{} is missing: infra/testbed/stack-images.sh stand-ins && infra/testbed/stack-images.sh steward debug",
        image()
    );
    let bus = TestBus::new("deployimage").await;
    let repo = Repo::new();
    let port = free_port();
    // The socket proxy with the deployer's role only, its socket open to the image's user (the
    // stack gives it through a volume that user owns).
    let sockets = repo.root.join("sockets");
    std::fs::create_dir_all(&sockets).expect("socket dir");
    let socket = sockets.join("docker.sock");
    // In front of the engine under test (before, on Podman, it fronted Docker's socket, and the
    // test passed there).
    let proxy = deployer_proxy(&socket);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let deploy_dir = repo.root.join("deploy");
    std::fs::create_dir_all(&deploy_dir).expect("deploy dir");
    // The image's user, as the host sees it (on rootless Podman, in its user's range).
    let (uid, gid) = steward_testkit::host_ids(10001, 10001);
    std::os::unix::fs::chown(&deploy_dir, Some(uid), Some(gid)).expect("chown");

    let name = unique_name("deployer-image");
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(["-v".into(), format!("{}:/run/steward-docker", sockets.display())]);
    args.extend(["-v".into(), format!("{0}:{0}", deploy_dir.display())]);
    let mut env = repo.env(&bus, port, &[]);
    env.retain(|(k, _)| *k != "HOME");
    env.push(("DOCKER_HOST", "unix:///run/steward-docker/docker.sock".into()));
    env.push(("STEWARD_LOG_FORMAT", "json".into()));
    for (k, v) in &env {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.extend([image(), "steward-deployer".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&refs);
    let container = Container(name);
    // The service logs to stderr, which `docker logs` gives back on its own stderr.
    let logs = || {
        let out = std::process::Command::new("docker").args(["logs", &container.0]).output();
        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !logs().contains("\"consuming\"") {
        assert!(Instant::now() < deadline, "the deployer is not consuming: {}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}\n{}", logs());
    assert!(serves(repo.web, "v1"), "web does not serve v1");
    // The checkout is the image user's, at the host's path; compose labelled the containers
    // with that path.
    let checkout = deploy_dir.join("dev");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(checkout.join(".git")).expect("checkout").uid(), uid);
    let web = repo.container("web").unwrap_or_else(|| {
        let all = docker(&["ps", "-a", "--format", "{{.Names}} {{.Labels}}"]);
        panic!("no web container of project {}: {all}", repo.compose_project())
    });
    let dir = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"com.docker.compose.project.working_dir\"}}",
        &web,
    ]);
    assert_eq!(dir.trim(), checkout.display().to_string());
    // A new commit recreates only web, through the same proxy.
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v2", "web: v2").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}\n{}", logs());
    assert!(serves(repo.web, "v2"), "web does not serve v2");
    // Nothing the deployer asked for was refused on the way.
    assert!(!proxy.logs().contains("refused"), "the proxy refused a call: {}", proxy.logs());
    drop(container);
}
