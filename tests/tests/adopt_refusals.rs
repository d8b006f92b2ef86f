//! What `scripts/adopt.sh` refuses (docs/migration.md, "Cutover", step 1), each with a check
//! that it changed nothing: the old containers as they were, no volume of the new project
//! made or written, the prepared directory's `.env` the same, and nothing past step 1 done.
//! The old stack is made of created (not started) containers with compose's labels: step 1
//! only reads them. (Watchtower running is not tried: a container of that name would make
//! every adoption on this shared engine refuse meanwhile.)

use std::path::{Path, PathBuf};
use std::process::Command;

use steward_system_tests::stack::repo;
use steward_testkit::docker::{docker, Container};
use steward_testkit::{testbed, unique_name};

/// One refusal's world: a prepared directory, the old project's containers, its data
/// directories and certificate directory; removed when dropped.
struct World {
    root: PathBuf,
    project: String,
    new: String,
    containers: Vec<Container>,
    volumes: Vec<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.containers.clear();
        for v in &self.volumes {
            let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What to break in an otherwise adoptable old stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    NoEnv,
    NoServer,
    TwoDbs,
    PostgresUser,
    NoPassword,
    NoGiteaData,
    NoCertificates,
    NewVolumeHasData,
}

impl World {
    fn new(flaw: Flaw) -> Self {
        let root = std::env::temp_dir().join(unique_name("adopt-refusal"));
        let dir = root.join("steward");
        std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
        if flaw != Flaw::NoEnv {
            std::fs::write(dir.join(".env"), "GITEA_DOMAIN=gitea.test\n").expect(".env");
        }
        std::fs::create_dir_all(root.join("gitea")).expect("gitea data");
        std::fs::create_dir_all(root.join("postgres")).expect("postgres data");
        if flaw != Flaw::NoCertificates {
            std::fs::create_dir_all(root.join("letsencrypt/live")).expect("certificates");
        }
        let project = unique_name("adoptold").replace('-', "");
        let new = unique_name("adoptnew").replace('-', "");
        let mut world = Self { root, project, new, containers: vec![], volumes: vec![] };
        let app = format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE"));
        let pg = testbed::require("STEWARD_TEST_POSTGRES_IMAGE");
        if flaw != Flaw::NoServer {
            let data = format!("{}:/data", world.root.join("gitea").display());
            let mut args = vec!["-v", data.as_str()];
            if flaw == Flaw::NoGiteaData {
                args.clear();
            }
            world.create("server", 1, &args, &app);
        }
        let user = if flaw == Flaw::PostgresUser {
            "POSTGRES_USER=postgres"
        } else {
            "POSTGRES_USER=gitea"
        };
        let data = format!("{}:/var/lib/postgresql/data", world.root.join("postgres").display());
        let mut db = vec!["-e", user, "-e", "POSTGRES_DB=gitea", "-v", data.as_str()];
        if flaw != Flaw::NoPassword {
            db.extend(["-e", "POSTGRES_PASSWORD=old-password"]);
        }
        world.create("db", 1, &db, &pg);
        if flaw == Flaw::TwoDbs {
            world.create("db", 2, &db, &pg);
        }
        world.create("nginx", 1, &[], &app);
        if flaw == Flaw::NewVolumeHasData {
            let volume = format!("{}_postgres", world.new);
            docker(&["volume", "create", &volume]);
            world.volumes.push(volume.clone());
            docker(&[
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                "-v",
                &format!("{volume}:/v"),
                &pg,
                "-c",
                "echo precious > /v/PG_VERSION",
            ]);
        }
        world
    }

    /// `docker create` of the old project's `service` (container number `n`).
    fn create(&mut self, service: &str, n: u32, args: &[&str], image: &str) {
        let name = format!("{}_{service}_{n}", self.project);
        let project = format!("com.docker.compose.project={}", self.project);
        let svc = format!("com.docker.compose.service={service}");
        let mut all = vec!["create", "--name", &name, "--label", &project, "--label", &svc];
        all.extend_from_slice(args);
        all.push(image);
        docker(&all);
        self.containers.push(Container::adopt(name));
    }

    fn dir(&self) -> PathBuf {
        self.root.join("steward")
    }

    /// What adopt.sh could change: each old container's state, the new project's volumes
    /// with what the postgres one holds, the directory's files.
    fn state(&self) -> String {
        let mut out = vec![];
        for c in &self.containers {
            out.push(docker(&["inspect", "-f", "{{.Name}} {{.State.Status}}", &c.name]));
        }
        let filter = format!("name={}_", self.new);
        out.push(docker(&["volume", "ls", "-q", "--filter", &filter]));
        out.push(listing(&self.dir()));
        out.push(listing(&self.root.join("gitea")));
        out.join("\n")
    }
}

fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    let env = std::fs::read_to_string(dir.join(".env")).unwrap_or_default();
    format!("{}: {names:?} {env:?}", dir.display())
}

#[test]
fn adopt_refuses_what_it_cannot_move_and_changes_nothing() {
    let cases = [
        (Flaw::NoEnv, "has no .env or secrets/"),
        (Flaw::NoServer, "no container of service server"),
        (Flaw::TwoDbs, "has several containers"),
        (Flaw::PostgresUser, "expects gitea/gitea"),
        (Flaw::NoPassword, "has no POSTGRES_PASSWORD"),
        (Flaw::NoGiteaData, "mounts nothing at /data"),
        (Flaw::NoCertificates, "live does not exist"),
        (Flaw::NewVolumeHasData, "exists and is not empty"),
    ];
    for (flaw, why) in cases {
        let world = World::new(flaw);
        let before = world.state();
        let out = Command::new("bash")
            .arg(repo().join("scripts/adopt.sh"))
            .arg(&world.project)
            .arg(world.dir())
            .env("COMPOSE_PROJECT_NAME", &world.new)
            .env("LETSENCRYPT", world.root.join("letsencrypt"))
            .env("COMPOSE", "false")
            .output()
            .expect("adopt.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flaw:?}: {stdout}\n{stderr}");
        assert!(stderr.contains(why), "{flaw:?}: {stderr}");
        assert!(!stdout.contains("step 2"), "{flaw:?}: went on: {stdout}");
        assert_eq!(world.state(), before, "{flaw:?}: the refused adoption changed something");
        if flaw == Flaw::NewVolumeHasData {
            let volume = format!("{}_postgres", world.new);
            let kept = docker(&[
                "run",
                "--rm",
                "--entrypoint",
                "cat",
                "-v",
                &format!("{volume}:/v:ro"),
                &testbed::require("STEWARD_TEST_POSTGRES_IMAGE"),
                "/v/PG_VERSION",
            ]);
            assert_eq!(kept, "precious", "the volume's data was touched");
        }
    }
}
