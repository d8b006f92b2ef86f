//! Disaster recovery, rehearsed end to end (issue 26): the compose stack runs with data in
//! PostgreSQL, a repository in Gitea's /data, a certificate in the certs volume and some
//! audit history; a backup is taken (encrypted, the age identity off the host) and the
//! off-host kit exported with the stack's own CLI. Then everything of the stack is destroyed:
//! containers, volumes (the NATS store among them), networks, the compose directory. From the
//! bucket (the S3 server's data, off-host) and the kit alone, `scripts/rebuild.sh` (the
//! runbook's steps, docs/runbooks.md "Disaster recovery on an empty host") rebuilds it:
//! the data, the repository, the certificate and the old flows in `steward audit` are back,
//! the kit's pause of backups was ended by the restore, and backups run again. The script
//! is killed twice on the way (step 2, step 4, with everything it started) and re-run.
//!
//! RTO printed: from "start rebuild" to "Gitea answers (healthy) with its data", beside the
//! restore's own duration (docs/benchmarks.md).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use steward_system_tests::stack::*;
use steward_testkit::docker::docker;
use steward_testkit::unique_name;

/// A path removed when dropped: what is kept off the host (the bucket's data, the kit, the
/// age identity; after the stack, which is declared later), or the rebuild's state file.
struct OffHost(PathBuf);

impl Drop for OffHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sql(stack: &Stack, query: &str) -> String {
    docker(&[
        "exec",
        &stack.container("postgres"),
        "psql",
        "-U",
        "gitea",
        "-d",
        "gitea",
        "-qtA",
        "-c",
        query,
    ])
}

/// Names of what Docker holds for `project` (containers, volumes, networks).
fn leftovers(project: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={project}");
    let mut all = vec![];
    for what in [
        vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        vec!["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"],
        vec!["network", "ls", "--filter", &filter, "--format", "{{.Name}}"],
    ] {
        all.extend(docker(&what).lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    all
}

#[test]
fn a_lost_host_is_rebuilt_from_the_bucket_and_the_kit_by_the_runbook() {
    let offhost = OffHost(std::env::temp_dir().join(unique_name("steward-offhost")));
    std::fs::create_dir_all(&offhost.0).expect("off-host directory");
    let stack = Stack::with_bucket(AgeKey::OffHost, false, Some(offhost.0.join("s3")), &["dr.yml"]);
    stack.up();

    // The data: rows, a repository, a certificate; the history: a registry check and a backup.
    sql(
        &stack,
        "CREATE TABLE repository (id int PRIMARY KEY, owner text, name text); \
         INSERT INTO repository SELECT g, 'ops', 'repo' || g FROM generate_series(1, 500) g;",
    );
    let head = "/data/git/repositories/ops/infra.git/HEAD";
    stack.exec(
        "gitea",
        &[
            "sh",
            "-c",
            &format!("mkdir -p $(dirname {head}) && echo 'ref: refs/heads/main' > {head}"),
        ],
    );
    let cert = "/etc/letsencrypt/live/gitea.test/fullchain.pem";
    let pem =
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----", unique_name("c"));
    stack.exec(
        "certbot",
        &["sh", "-c", &format!("mkdir -p $(dirname {cert}) && printf '%s\\n' '{pem}' > {cert}")],
    );
    // Two backups: each one's event export is taken while it runs; the extract adds the
    // restored backup's own `backup.done` (its signed manifest proves it), so both are whole.
    for _ in 0..2 {
        let backed_up = ok(&stack.steward(&["backup", "now", "--wait", "5m"]));
        assert!(backed_up.contains("done"), "{backed_up}");
    }
    let before = stack.audit();
    let backups = |audit: &[serde_json::Value]| {
        audit
            .iter()
            .filter(|f| event_types(f).iter().any(|t| t == "backup.done"))
            .filter_map(|f| f["correlation_id"].as_str().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    let old_backups = backups(&before);
    assert_eq!(old_backups.len(), 2, "{before:#?}");
    let old_flows: Vec<String> =
        before.iter().filter_map(|f| f["correlation_id"].as_str().map(str::to_owned)).collect();

    // The kit, as the runbook says to export it (the stack's CLI, as root for secrets/).
    let dir = stack.dir.display().to_string();
    let export = stack
        .compose()
        .args(["run", "--rm", "-T", "--no-deps", "--user", "0", "-v", &format!("{dir}:{dir}:ro")])
        .args(["steward", "kit", "export", &dir])
        .output()
        .expect("kit export");
    let told = String::from_utf8_lossy(&export.stderr).into_owned();
    assert!(export.status.success(), "kit export: {told}");
    assert!(told.contains(&format!("bucket {BUCKET}")) && told.contains(AGE_RECIPIENT), "{told}");
    let kit = offhost.0.join("kit.age");
    std::fs::write(&kit, &export.stdout).expect("kit");
    let identity = offhost.0.join("age.txt");
    std::fs::write(&identity, format!("{AGE_IDENTITY}\n")).expect("identity");

    // The host is lost: every container, volume and network of the stack, the NATS store
    // (a volume), the compose directory. Images stay (a new host pulls them).
    assert!(stack.down(), "docker-compose down");
    std::fs::remove_dir_all(&stack.dir).expect("remove the compose directory");
    assert_eq!(leftovers(&stack.project), Vec::<String>::new(), "not everything was destroyed");

    // The rebuild, by the runbook's script, from the kit and the bucket only. Its session
    // dies twice first (SIGKILL to the script and all it started): in step 2 (the events
    // import) and in step 4 (the restore); each re-run goes on from where the last stopped.
    // The script's own temporary directory (`mktemp -d`, removed by its trap) outlives a
    // SIGKILLed run: the runs make theirs in one of the test's, removed with it.
    let scratch = OffHost(std::env::temp_dir().join(unique_name("dr-rebuild-tmp")));
    std::fs::create_dir_all(&scratch.0).expect("a scratch directory");
    let rebuild = || {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/rebuild.sh"))
            .arg(&kit)
            .arg(&identity)
            .arg(&stack.dir)
            .env("TMPDIR", &scratch.0)
            .env("STEWARD_IMAGE", steward_image())
            .env("COMPOSE", stack.compose_line());
        cmd
    };
    let kills = std::env::var("STEWARD_DR_KILLS").as_deref() != Ok("none");
    // What a killed run got through, beside the directory (removed by a finished run).
    let state = OffHost(stack.dir.with_file_name(format!(
        ".{}.rebuild",
        stack.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    )));
    let started = Instant::now();
    if kills {
        let first = killed_at(&mut rebuild(), "step 2:");
        assert!(first.contains("step 1: the kit"), "{first}");
        let second = killed_at(&mut rebuild(), "step 4:");
        assert!(
            second.contains("stopped after step(s) 1") && second.contains("step 1: done already"),
            "{second}"
        );
    }
    let printed = stack.script_ok("rebuild.sh", &mut rebuild());
    if kills {
        assert!(printed.contains("step 2: done already"), "{printed}");
        assert!(printed.contains("step 4: the restore"), "{printed}");
    }
    let head_back =
        stack.wait("Gitea healthy with its repository", Duration::from_secs(120), || {
            (stack.health("gitea") == "healthy")
                .then(|| stack.exec("gitea", &["cat", head]))
                .filter(|h| h == "ref: refs/heads/main")
        });
    let rto = started.elapsed();
    assert_eq!(head_back, "ref: refs/heads/main");
    assert!(printed.contains("restored backup"), "{printed}");

    // The data and the certificate are the old ones, served by nginx.
    assert_eq!(sql(&stack, "SELECT count(*) FROM repository"), "500");
    assert_eq!(stack.exec("nginx", &["cat", cert]), pem);
    // The audit shows the old flows, and the restore.
    let after = stack.audit();
    for id in &old_flows {
        assert!(
            after.iter().any(|f| f["correlation_id"].as_str() == Some(id)),
            "flow {id} lost: {after:#?}"
        );
    }
    assert_eq!(backups(&after), old_backups, "both backups' flows, whole");
    // A restore killed in its CLI may have been finished by the service and run again.
    let restores = flows(&after, "restore", "done");
    assert!(!restores.is_empty() && restores.len() <= 2, "{after:#?}");
    let restore_ms = restores[0]["duration_ms"].as_u64().unwrap_or_default();
    eprintln!(
        "disaster recovery (RTO), scripts/rebuild.sh start → Gitea healthy with its data: {:.1} s{}; the restore alone: {:.1} s",
        rto.as_secs_f64(),
        if kills { " (two runs killed first; STEWARD_DR_KILLS=none for the plain figure)" } else { "" },
        restore_ms as f64 / 1000.0
    );

    // The kit paused backups; the restore ended the pause (recorded in the bucket), with
    // nothing to undo in .env, and backups run again.
    let env = std::fs::read_to_string(stack.dir.join(".env")).expect(".env");
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("STEWARD_BACKUP_RESTORE_PENDING="))
        .unwrap_or_else(|| panic!("no pause in .env: {env}"));
    let ended =
        offhost.0.join("s3").join(BUCKET).join(format!("steward/journal/restored/{token}.json"));
    assert!(ended.is_file(), "{} missing", ended.display());
    assert!(
        !after.iter().any(|f| event_types(f).iter().any(|t| t == "backup.failed")),
        "a backup was refused or failed: {after:#?}"
    );
    let again = ok(&stack.steward(&["backup", "now", "--wait", "5m"]));
    assert!(again.contains("backup"), "{again}");
    let last = stack.audit();
    let types: Vec<Vec<String>> = last.iter().map(event_types).collect();
    assert_eq!(backups(&last).len(), 3, "the new host's backup: {again}\n{types:?}");
    assert_eq!(backups(&last)[..2], old_backups, "{types:?}");

    // Finished, the script leaves no state behind and refuses to run over the stack again.
    assert!(!state.0.exists(), "{} left behind", state.0.display());
    let again = rebuild().output().expect("rebuild.sh again");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && said.contains("holds files already"), "{said}");
}

/// Runs `cmd` (rebuild.sh) in a process group of its own and SIGKILLs the whole group (the
/// script and every client it started: a dropped session) as soon as it prints `step`:
/// what it printed. Bounded: killed after 5 min whatever it printed.
fn killed_at(cmd: &mut Command, step: &str) -> String {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let mut child = cmd
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("rebuild.sh: {e}"));
    let group = format!("-{}", child.id());
    let kill = {
        let group = group.clone();
        move || {
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        }
    };
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    let bound = {
        let kill = kill.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(Duration::from_secs(300))
            {
                kill();
            }
        })
    };
    let mut printed = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains(step) {
            kill();
            break;
        }
    }
    let status = child.wait().unwrap_or_else(|e| panic!("rebuild.sh: {e}"));
    drop(done);
    let _ = bound.join();
    assert!(!status.success(), "rebuild.sh ended before {step}: {printed}");
    assert!(printed.contains(step), "killed by the bound before {step}: {printed}");
    printed
}
