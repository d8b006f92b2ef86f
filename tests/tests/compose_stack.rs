//! The shipped compose stack (`compose/`), brought up with docker-compose against local
//! stand-ins for the public images (`tests/compose/stand-ins.yml`; images from
//! `infra/testbed/stack-images.sh`), driven only through its running containers and what
//! an operator has: the stack's CLI container, the mail, the approval link.
//!
//! The stack's registry is private (basic auth, `registry-auth.yml`): the operator's `docker
//! login`, copied to `secrets/docker_config.json` as the runbook says, is all the watcher and
//! the updater have to check and pull with (issue 26: the updater had none).
//!
//! 1. The stack comes up by adoption (docs/migration.md, "Cutover", scripted as
//!    `scripts/adopt.sh`): an old stack with a repository, rows, a certificate in a host
//!    directory and Diun labels is moved under Steward, downtime printed, a second run refused.
//!    Everything comes up healthy in order, each service's NATS user is refused outside its
//!    role, only the socket proxy holds the Docker socket and the watcher's socket from it
//!    lists but cannot create or exec, and a backup requested with the stack's own CLI lands
//!    in the stack's S3 server, age-encrypted, and in the second copy's bucket. Without the
//!    age identity on the host it cannot be verified (a clear refusal); with the identity put
//!    in `secrets/age_identity` and the backup service restarted, it is.
//! 2. The whole story, encrypted backups with the identity on the host: a new Gitea version
//!    pushed to the private registry → a mail asking for approval → the link's POST → backup
//!    → update (pulled with the login) → healthy; a broken version → rollback with the reason
//!    in the mail; deleted data back from the latest (encrypted) backup; `steward audit`
//!    tells all of it.

use std::process::Command;
use std::time::{Duration, Instant};

use steward_system_tests::mail::mails_to;
use steward_system_tests::stack::*;
use steward_testkit::docker::docker;

#[test]
fn the_compose_stack_comes_up_healthy_and_keeps_each_service_to_its_role() {
    let stack = Stack::new(AgeKey::OffHost, true);
    stack.registry_up();

    // Migration, rehearsed: the old stack runs, with a repository, rows in its database, a
    // certificate in its host directory and a service of its own; scripts/adopt.sh (the
    // steps of docs/migration.md) brings it under Steward.
    let old = OldStack::start(&stack);
    let sql = |container: &str, query: &str| {
        docker(&["exec", container, "psql", "-U", "gitea", "-d", "gitea", "-qtA", "-c", query])
    };
    sql(
        &old.container("db"),
        "CREATE TABLE repository (id int PRIMARY KEY, owner text, name text); \
         INSERT INTO repository VALUES (1, 'ops', 'infra');",
    );
    let head = "/data/git/repositories/ops/infra.git/HEAD";
    docker(&[
        "exec",
        &old.container("server"),
        "sh",
        "-c",
        &format!("mkdir -p $(dirname {head}) && echo 'ref: refs/heads/main' > {head}"),
    ]);
    let certificate =
        std::fs::read_to_string(old.dir.join("letsencrypt/live/gitea.test/fullchain.pem"))
            .expect("certificate");
    let adopted = Instant::now();
    let out = stack.adopt(&old);
    eprintln!("adopted, every service healthy: {:.1} s", adopted.elapsed().as_secs_f64());
    let downtime = out
        .lines()
        .find_map(|l| l.strip_prefix("[adopt] downtime: "))
        .unwrap_or_else(|| panic!("no downtime in {out}"));
    eprintln!("migration downtime: {downtime}");
    // Data, repository and certificate are the old ones; the same Gitea image runs.
    assert_eq!(
        sql(&stack.container("postgres"), "SELECT owner || '/' || name FROM repository;"),
        "ops/infra"
    );
    assert_eq!(stack.exec("gitea", &["cat", head]), "ref: refs/heads/main");
    assert_eq!(
        stack.exec("nginx", &["cat", "/etc/letsencrypt/live/gitea.test/fullchain.pem"]),
        certificate.trim_end()
    );
    // The old containers are stopped, not removed; the old runner, not part of Steward's
    // stack, runs on and is watched through its Diun label (in the first check's status).
    for service in ["server", "db", "nginx"] {
        let state = docker(&["inspect", "-f", "{{.State.Status}}", &old.container(service)]);
        assert_eq!(state, "exited", "old {service}");
    }
    assert!(out.contains("labels to review on"), "{out}");
    let status = out.split("[adopt] step 6").nth(1).unwrap_or_default();
    assert!(status.contains(&old.container("runner")), "not watched: {status}");
    assert!(status.contains(&stack.container("gitea")), "not watched: {status}");
    // The first backup is the script's.
    assert!(status.contains("done"), "{status}");
    // Run again, it refuses (the new volumes exist) and changes nothing.
    let again = Command::new("bash")
        .arg(repo().join("scripts/adopt.sh"))
        .arg(&old.project)
        .arg(&stack.dir)
        .env("COMPOSE_PROJECT_NAME", &stack.project)
        .env("LETSENCRYPT", old.dir.join("letsencrypt"))
        .output()
        .expect("adopt.sh");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("is not empty"), "{stderr}");
    assert_eq!(stack.health("gitea"), "healthy");

    // Only the socket proxy has the Docker socket; the four services that talk to Docker
    // each have their own socket from it.
    let mounts = |service: &str| {
        ok(&Command::new("docker")
            .args(["inspect", "-f", "{{range .Mounts}}{{.Source}}={{.Destination}} {{end}}"])
            .arg(stack.container(service))
            .output()
            .expect("inspect"))
    };
    // The engine's socket is in /var/run (Docker) or a directory of its own (Podman's:
    // compose/podman.yml); none of the others mounts it, or that directory.
    let engine_dir = podman_socket()
        .and_then(|s| std::path::Path::new(&s).parent().map(|d| d.display().to_string()));
    let engine_dirs = match &engine_dir {
        Some(dir) => vec![dir.clone()],
        None => vec!["/var/run".to_owned(), "/run".to_owned()],
    };
    for service in SERVICES.iter().filter(|s| **s != "sockproxy") {
        let mounted = mounts(service);
        assert!(
            !mounted.contains("docker.sock")
                && !mounted.contains("podman.sock")
                && !mounted
                    .split(' ')
                    .any(|m| engine_dirs.iter().any(|d| m.starts_with(&format!("{d}=")))),
            "{service} mounts the engine's socket: {mounted}"
        );
    }
    // The directory holding the socket (a recreated socket stays reachable), not the file.
    let proxy_mounts = mounts("sockproxy");
    assert!(
        proxy_mounts
            .split(' ')
            .any(|m| engine_dirs.iter().any(|d| m == format!("{d}=/run/engine"))),
        "{proxy_mounts}"
    );
    let proxy_checked = Instant::now();
    let socket_of = |role: &str| {
        let volume = format!("{}_docker-{role}", stack.project);
        let dir = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &volume]);
        let mounted = mounts(role);
        assert!(mounted.contains(&format!("{dir}=/run/steward-docker")), "{role}: {mounted}");
        for other in ["watcher", "health", "updater", "backup"].iter().filter(|o| **o != role) {
            assert!(!mounts(other).contains(&dir), "{other} mounts {role}'s socket");
        }
        format!("unix://{dir}/docker.sock")
    };
    // The watcher's socket, as the watcher uses it, with the Docker CLI: listing works,
    // creating a container or an exec is refused.
    let watcher = socket_of("watcher");
    let cli = |host: &str, args: &[&str]| {
        Command::new("docker").args(["-H", host]).args(args).output().expect("docker CLI")
    };
    let listed = ok(&cli(&watcher, &["ps", "--format", "{{.Names}}"]));
    assert!(listed.contains(&stack.container("postgres")), "{listed}");
    let postgres = stack.container("postgres");
    let refusals: [(&str, Vec<&str>); 4] = [
        ("watcher", vec!["exec", &postgres, "true"]),
        ("watcher", vec!["create", "steward-test/busybox:latest", "true"]),
        ("watcher", vec!["stop", &postgres]),
        ("health", vec!["create", "steward-test/busybox:latest", "true"]),
    ];
    for (role, args) in &refusals {
        let out = cli(&socket_of(role), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("steward-sockproxy"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(stack.health("postgres"), "healthy", "the refused stop did not happen");
    eprintln!("socket proxy checks: {:.1} s", proxy_checked.elapsed().as_secs_f64());

    // Each service's NATS user is refused outside its role; the CLI's user may approve.
    let data = r#"{"update_id":"0190a0a0-0000-7000-8000-000000000000","by":"e2e"}"#;
    ok(&stack.steward(&["events", "publish", "update.approved", "--data", data]));
    let refused =
        stack.steward_as("notifier", &["events", "publish", "update.approved", "--data", data]);
    assert!(!refused.status.success(), "the notifier published update.approved");
    let refused = stack.steward_as(
        "watcher",
        &["events", "publish", "backup.requested", "--data", r#"{"reason":"manual"}"#],
    );
    assert!(!refused.status.success(), "the watcher published backup.requested");

    // The backup adopt.sh took through the stack's CLI: PostgreSQL dumped by exec, the app's
    // files archived, both in the stack's S3 server.
    let listed = ok(&stack.steward(&["backup", "list"]));
    assert_eq!(listed.lines().count(), 2, "a header and one backup: {listed}");

    // The two refusals above are in the server's log, and nothing the services did on their
    // own (the backup included) was refused.
    let violations = stack.nats_violations();
    let refused = |user: &str, subject: &str| {
        let needle = format!("User \"{user}\", Subject \"{subject}\"");
        violations.iter().any(|l| l.contains(&needle))
    };
    assert!(refused("notifier", "update.approved"), "{violations:#?}");
    assert!(refused("watcher", "backup.requested"), "{violations:#?}");
    assert_eq!(violations.len(), 2, "{violations:#?}");
    // Likewise the socket proxy: the four refusals above, and nothing the services did.
    let refused = stack.docker_refusals();
    assert_eq!(refused.len(), refusals.len(), "{refused:#?}");
    assert!(refused
        .iter()
        .all(|l| l.contains("\"role\":\"watcher\"") || l.contains("\"role\":\"health\"")));

    // The backup is encrypted to the recipient in .env and also in the second copy (written
    // right after backup.done), checked there with the same trusted keys.
    let encrypted = Instant::now();
    let id = listed.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("an id");
    let stored = stack.dir.join("s3").join(BUCKET);
    let objects =
        ok(&Command::new("find").arg(&stored).args(["-type", "f"]).output().expect("find"));
    let component = objects
        .lines()
        .find(|p| p.contains(id) && p.ends_with(".age"))
        .unwrap_or_else(|| panic!("no component of {id} in {objects}"));
    let head = std::fs::read(component).expect("component");
    assert!(head.starts_with(b"age-encryption.org/v1"), "{component} is not age-encrypted");
    stack.wait("the backup in the second copy", Duration::from_secs(60), || {
        let copy = stack.steward(&["backup", "list", "--from", "copy"]);
        let listed = String::from_utf8_lossy(&copy.stdout).into_owned();
        (copy.status.success() && listed.lines().skip(1).any(|l| l.starts_with(id))).then_some(())
    });
    // The identity off the host (as init-secrets.sh leaves secrets/age_identity): the backup
    // cannot be verified, and the refusal says what is missing.
    let refused = stack.steward(&["backup", "verify", "latest"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "verified without the identity");
    assert!(stderr.contains("STEWARD_BACKUP_AGE_IDENTITY_FILE"), "{stderr}");
    // The runbook's step: the key into secrets/age_identity, the backup service restarted.
    // The compose secret is a bind mount of that file: rewritten in place, the container
    // sees it.
    write(&stack.dir.join("secrets/age_identity"), &format!("{AGE_IDENTITY}\n"));
    ok(&stack.compose().args(["restart", "-t", "5", "backup"]).output().expect("restart"));
    stack.wait("the backup service healthy again", Duration::from_secs(60), || {
        (stack.health("backup") == "healthy").then_some(())
    });
    let verified = ok(&stack.steward(&["backup", "verify", "latest"]));
    assert!(verified.contains(&format!("backup {id} verified")), "{verified}");
    assert!(verified.contains("the database dumps load"), "{verified}");
    assert_eq!(stack.docker_refusals().len(), refusals.len(), "the backup service was refused");
    eprintln!(
        "encrypted backup: in the copy, refused, key put in place, verified: {:.1} s",
        encrypted.elapsed().as_secs_f64()
    );

    // Idle memory of each Steward service, for the record (benches/stack.sh reports it).
    for service in ["watcher", "updater", "backup", "health", "notifier"] {
        let pid = ok(&Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &stack.container(service)])
            .output()
            .expect("inspect"));
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?");
        eprintln!("idle {service}: {rss}");
    }
}

#[test]
fn an_update_goes_from_mail_to_approval_backup_update_rollback_and_restore_through_the_stack() {
    let stack = Stack::new(AgeKey::OnHost, false);
    let started = stack.up();
    eprintln!("stack healthy {:.1} s after `docker-compose up`", started.elapsed().as_secs_f64());
    let stage = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    stage("healthy");
    let v1 = stack.image_of("gitea");
    let v2 = docker(&["image", "inspect", "-f", "{{.Id}}", "steward-test/app:v2"]);

    // What a restore must bring back: rows in the database and a file in Gitea's /data.
    let psql = |sql: &str| {
        stack.exec(
            "postgres",
            &["psql", "-U", "gitea", "-d", "gitea", "-qtA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        )
    };
    psql(
        "CREATE TABLE repos (id int PRIMARY KEY, name text NOT NULL); \
          INSERT INTO repos SELECT g, 'repo-' || g FROM generate_series(1, 20000) g;",
    );
    stack.exec("gitea", &["sh", "-c", "echo precious > /data/repo.txt"]);

    // A new version in the registry; a check finds it; Gitea's policy is manual, so a mail
    // asks for approval, with a link.
    stack.push_app("v2");
    // The registry is private: without the operator's login the engine may not pull it, so
    // the update below works only if the updater pulls with secrets/docker_config.json.
    let no_login = stack.dir.join("no-login");
    std::fs::create_dir_all(&no_login).expect("empty docker config");
    let anonymous = Command::new("docker")
        .arg("--config")
        .arg(&no_login)
        .args(["pull", &stack.app_image])
        .output()
        .expect("docker pull");
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        !anonymous.status.success()
            && (stderr.contains("no basic auth credentials") || stderr.contains("unauthorized")),
        "an anonymous pull: {stderr}"
    );
    ok(&stack.steward(&["check"]));
    let link = stack.wait("a mail with an approval link", Duration::from_secs(120), || {
        mails_to(&stack.maildir(), MAIL_TO).iter().find_map(|m| {
            let at = m.text.find(PUBLIC_APPROVE)?;
            let token: String = m.text[at + PUBLIC_APPROVE.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            Some(format!("http://127.0.0.1:{}/approve/{token}", stack.updater_port))
        })
    });
    stage("approval mail received");
    assert_eq!(stack.image_of("gitea"), v1, "nothing changes before the approval");

    // The link's POST (what the page's button sends; nginx proxies /steward/ to the updater).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (status, page) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&link)
            .form(&[("decision", "approve")])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("POST the approval");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    });
    assert_eq!(status, 200, "{page}");

    // Backed up, updated, healthy.
    stack.wait("Gitea on v2, healthy", Duration::from_secs(180), || {
        (stack.image_now("gitea") == Some(v2.clone()) && stack.health("gitea") == "healthy")
            .then_some(())
    });

    stage("updated to v2");

    // A broken version: approved with the CLI this time; the health gate fails, the updater
    // rolls back to v2, and the mail says why, with the container's last log lines.
    let v3_digest = stack.push_app("v3");
    ok(&stack.steward(&["check"]));
    let id = stack.wait("the broken version pending", Duration::from_secs(60), || {
        ok(&stack.steward(&["updates", "--json"])).lines().find_map(|l| {
            let record: serde_json::Value = serde_json::from_str(l).ok()?;
            (record["to_digest"] == v3_digest.as_str())
                .then(|| record["update_id"].as_str().map(str::to_owned))?
        })
    });
    ok(&stack.steward(&["approve", &id]));
    stage("v3 approved");
    let rollback_mail = stack.wait("the rollback mail", Duration::from_secs(240), || {
        mails_to(&stack.maildir(), MAIL_TO).into_iter().find(|m| m.text.contains("rolled back"))
    });
    stage("rollback mail received");
    // The image's HEALTHCHECK said unhealthy before the label's probe gave up.
    assert!(rollback_mail.text.contains("healthcheck reports unhealthy"), "{}", rollback_mail.text);
    assert!(
        rollback_mail.text.contains("cannot read configuration"),
        "the mail carries the failed container's log: {}",
        rollback_mail.text
    );
    assert_eq!(stack.image_of("gitea"), v2, "rolled back to v2");
    stack.wait("Gitea healthy after the rollback", Duration::from_secs(60), || {
        (stack.health("gitea") == "healthy").then_some(())
    });

    // Data lost; the latest backup (taken before the broken update) brings it back.
    psql("DROP TABLE repos;");
    stack.exec("gitea", &["rm", "/data/repo.txt"]);
    let restored = ok(&stack.steward(&["restore", "latest", "--yes"]));
    assert!(restored.contains("restored backup"), "{restored}");
    assert_eq!(psql("SELECT count(*), max(name) FROM repos;"), "20000|repo-9999");
    assert_eq!(stack.exec("gitea", &["cat", "/data/repo.txt"]), "precious");
    assert_eq!(stack.health("gitea"), "healthy");
    stage("restored");

    // Certificates: the first one issued by hand (the runbook's first stage), then the weekly
    // renewal, run now: nothing due; then due: renewed, and nginx reloaded, once.
    stack.exec("certbot", &["sh", "/fake-certbot.sh"]);
    let checked = ok(&stack.steward(&["certs", "renew"]));
    assert!(checked.contains("none was due"), "{checked}");
    stack.exec("certbot", &["touch", "/etc/letsencrypt/.due"]);
    let renewed = ok(&stack.steward(&["certs", "renew"]));
    assert!(renewed.contains("renewed in") && renewed.contains("gitea.test"), "{renewed}");
    assert!(renewed.contains(&stack.container("nginx")), "{renewed}");
    assert_eq!(stack.exec("nginx", &["cat", "/reloads"]), "reloaded");
    stage("certificate renewed");

    // The audit tells the story: the approved update with its backup, the rollback, the
    // restore, the renewal.
    let audit = stack.audit();
    let succeeded = flows(&audit, "update", "succeeded");
    assert_eq!(succeeded.len(), 1, "{audit:#?}");
    let types = event_types(succeeded[0]);
    for t in
        ["image.updated", "update.pending", "update.approved", "backup.done", "update.succeeded"]
    {
        assert!(types.iter().any(|x| x == t), "{t} missing in the update's flow: {types:?}");
    }
    let approved = &succeeded[0]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["type"] == "update.approved").cloned())
        .expect("approved");
    assert_eq!(approved["data"]["by"], "approval-page");
    let rolled_back = flows(&audit, "update", "rolled back");
    assert_eq!(rolled_back.len(), 1, "{audit:#?}");
    assert!(event_types(rolled_back[0]).iter().any(|t| t == "backup.done"));
    assert_eq!(flows(&audit, "restore", "done").len(), 1, "{audit:#?}");
    assert_eq!(flows(&audit, "certs", "renewed").len(), 1, "{audit:#?}");
    // All of it within each service's NATS permissions and Docker allow-list.
    assert_eq!(stack.nats_violations(), Vec::<String>::new());
    assert_eq!(stack.docker_refusals(), Vec::<String>::new());

    // Monitoring (profile `monitoring`): Prometheus scrapes all five services, and every
    // metric the Grafana dashboard queries is one they expose.
    ok(&stack
        .compose()
        .args(["--profile", "monitoring", "up", "-d", "prometheus"])
        .output()
        .expect("up"));
    let prometheus = format!("http://127.0.0.1:{}/api/v1", stack.prometheus_port);
    let get = |path: &str| -> Option<serde_json::Value> {
        runtime.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{prometheus}/{path}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            r.json::<serde_json::Value>().await.ok()
        })
    };
    stack.wait("five services scraped and up", Duration::from_secs(90), || {
        let up = get("query?query=up%7Bjob%3D%22steward%22%7D")?;
        let results = up["data"]["result"].as_array()?.clone();
        (results.len() == 5 && results.iter().all(|r| r["value"][1] == "1")).then_some(())
    });
    // The shipped alert rules are loaded and evaluate without error.
    let rules = get("rules").unwrap_or_default();
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    // Every rule of the shipped file, however many it holds.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/monitoring/alerts.yml"),
    )
    .expect("compose/monitoring/alerts.yml");
    let shipped = shipped.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert!(shipped >= 17, "only {shipped} rules in alerts.yml: the count is read wrongly");
    assert_eq!(loaded.len(), shipped, "alert rules loaded: {rules}");
    assert!(loaded.iter().all(|r| r["health"] != "err"), "a rule fails to evaluate: {rules}");
    assert!(loaded.iter().any(|r| r["name"] == "StewardServiceDown"), "{rules}");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("compose/monitoring/grafana/dashboards/steward.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queried = vec![];
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for (at, _) in expr.match_indices("steward_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.push(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    // A family without samples is not in Prometheus' metadata (e.g. probe latency between a
    // restore and the next probe): wait for a scrape that has them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metadata = get("metadata").unwrap_or_default();
        let exposed: Vec<&String> =
            metadata["data"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
        let missing: Vec<&String> = queried
            .iter()
            .filter(|name| {
                let family = ["_total", "_bucket"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                !exposed.iter().any(|e| e == name || *e == family)
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard queries {missing:?}, which no service exposes: {exposed:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
