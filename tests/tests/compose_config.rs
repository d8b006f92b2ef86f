//! The shipped compose file as docker-compose renders it (issue 26): every service that talks
//! to a registry has the operator's registry login, and the backup service can be given the
//! age identity that verifies and restores encrypted backups. (A private registry broke updates
//! in the stack: the watcher had the login, the updater pulled without it.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `docker-compose config` of `compose/`, with the variables it requires set.
fn rendered() -> String {
    rendered_with(&[])
}

/// The same with `overlays` (paths from `compose/`) layered over the compose file with `-f`.
fn rendered_with(overlays: &[&str]) -> String {
    rendered_in(overlays, &[])
}

/// The same with `vars` set as an operator's `.env` would.
fn rendered_in(overlays: &[&str], vars: &[(&str, &str)]) -> String {
    let dir = compose_dir();
    // An empty env file: a `.env` an operator left in the checkout changes nothing here.
    let empty = std::env::temp_dir().join(steward_testkit::unique_name("compose-env"));
    std::fs::write(&empty, "").expect("env file");
    let mut files = vec!["-f", "docker-compose.yml"];
    for overlay in overlays {
        files.extend(["-f", overlay]);
    }
    let out = Command::new("docker-compose")
        .current_dir(&dir)
        .arg("--env-file")
        .arg(&empty)
        .args(files)
        .arg("config")
        .env("STEWARD_S3_BUCKET", "gitea-backups")
        .env("STEWARD_MAIL_FROM", "steward@example.com")
        .env("STEWARD_MAIL_TO", "ops@example.com")
        .env("GITEA_DOMAIN", "git.example.com")
        .env("E2E_SCOPE", "e2e-scope")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(vars.iter().copied())
        .output()
        .expect("run docker-compose");
    let _ = std::fs::remove_file(&empty);
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shipped stack's directory, as compose resolves it (`.` in a volume, the project's
/// working-directory label).
fn compose_dir() -> std::path::PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose"))
        .expect("compose/")
}

fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The items of a service block's list `key:` (`volumes`, ...), trimmed.
fn list(block: &[String], key: &str) -> Vec<String> {
    block
        .iter()
        .skip_while(|l| l.trim() != format!("{key}:"))
        .skip(1)
        .take_while(|l| l.starts_with("    - "))
        .map(|l| l.trim().trim_start_matches("- ").to_owned())
        .collect()
}

/// The `labels:` map of a service block.
fn labels(block: &[String]) -> BTreeMap<String, String> {
    block
        .iter()
        .skip_while(|l| l.trim() != "labels:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// One service's block of the rendered file: its lines, indentation kept.
fn service(rendered: &str, name: &str) -> Vec<String> {
    let opening = format!("  {name}:");
    let mut lines = rendered.lines().skip_while(|l| *l != opening);
    lines.next().unwrap_or_else(|| panic!("no service {name}"));
    lines.take_while(|l| l.starts_with("    ")).map(str::to_owned).collect()
}

/// The `environment:` map of a service block.
fn environment(block: &[String]) -> BTreeMap<String, String> {
    block
        .iter()
        .skip_while(|l| l.trim() != "environment:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The `(source, target)` of each secret a service mounts.
fn secrets(block: &[String]) -> Vec<(String, String)> {
    let list: Vec<&String> = block
        .iter()
        .skip_while(|l| l.trim() != "secrets:")
        .skip(1)
        .take_while(|l| l.starts_with("    - ") || l.starts_with("      "))
        .collect();
    let mut out = vec![];
    for (i, line) in list.iter().enumerate() {
        if let Some(source) = line.trim().strip_prefix("- source: ") {
            let target =
                list.get(i + 1).and_then(|l| l.trim().strip_prefix("target: ")).unwrap_or(source);
            out.push((source.to_owned(), target.to_owned()));
        }
    }
    out
}

#[test]
fn every_service_that_talks_to_a_registry_has_the_registry_login() {
    let file = rendered();
    for name in ["watcher", "updater"] {
        let block = service(&file, name);
        let env = environment(&block);
        assert_eq!(
            env.get("DOCKER_CONFIG").map(String::as_str),
            Some("/run/secrets/docker_config"),
            "{name}: {env:?}"
        );
        assert!(
            secrets(&block)
                .contains(&("docker_config".to_owned(), "docker_config/config.json".to_owned())),
            "{name} does not mount the registry login: {:?}",
            secrets(&block)
        );
    }
}

#[test]
fn the_backup_service_can_be_given_the_age_identity() {
    let file = rendered();
    let block = service(&file, "backup");
    let env = environment(&block);
    assert_eq!(
        env.get("STEWARD_BACKUP_AGE_IDENTITY_FILE").map(String::as_str),
        Some("/run/secrets/age_identity"),
        "{env:?}"
    );
    assert!(
        secrets(&block)
            .iter()
            .any(|(source, target)| source == "age_identity" && target == "age_identity"),
        "{:?}",
        secrets(&block)
    );
    // init-secrets.sh creates it (only comments: a stack without the key still starts).
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/init-secrets.sh"),
    )
    .expect("init-secrets.sh");
    assert!(init.lines().any(|l| l.starts_with("put age_identity ")), "init-secrets.sh");
}

#[test]
fn the_backup_service_signs_with_its_key_and_the_cli_checks_with_public_keys() {
    let file = rendered();
    let block = service(&file, "backup");
    let env = environment(&block);
    assert_eq!(
        env.get("STEWARD_BACKUP_SIGNING_KEY_FILE").map(String::as_str),
        Some("/run/secrets/backup_signing_key"),
        "{env:?}"
    );
    assert!(
        secrets(&block).iter().any(|(s, t)| s == "backup_signing_key" && t == "backup_signing_key"),
        "{:?}",
        secrets(&block)
    );
    // The CLI gets the public keys, never the private key.
    let cli = service(&file, "steward");
    assert!(environment(&cli).contains_key("STEWARD_BACKUP_TRUSTED_KEYS"));
    assert!(!secrets(&cli).iter().any(|(s, _)| s == "backup_signing_key"));
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/init-secrets.sh"),
    )
    .expect("init-secrets.sh");
    assert!(init.contains("openssl genpkey -algorithm ed25519 -out secrets/backup_signing_key"));
}

#[test]
fn the_second_copy_is_wired_to_the_backup_service_and_the_cli_with_keys_of_its_own() {
    let file = rendered();
    for name in ["backup", "steward"] {
        let block = service(&file, name);
        let env = environment(&block);
        // Off by default: an empty bucket is no copy (and nothing else set, which the
        // service would refuse as a half-configured copy).
        for var in [
            "STEWARD_BACKUP_COPY_BUCKET",
            "STEWARD_BACKUP_COPY_PREFIX",
            "STEWARD_BACKUP_COPY_ENDPOINT",
        ] {
            assert_eq!(env.get(var).map(String::as_str), Some("''"), "{name}: {var} in {env:?}");
        }
        let mounted = secrets(&block);
        for (var, secret) in [
            ("STEWARD_BACKUP_COPY_ACCESS_KEY_ID_FILE", "backup_copy_access_key_id"),
            ("STEWARD_BACKUP_COPY_SECRET_ACCESS_KEY_FILE", "backup_copy_secret_access_key"),
        ] {
            assert_eq!(
                env.get(var).map(String::as_str),
                Some(format!("/run/secrets/{secret}").as_str()),
                "{name}: {env:?}"
            );
            assert!(
                mounted.contains(&(secret.to_owned(), secret.to_owned())),
                "{name}: {mounted:?}"
            );
        }
    }
    // init-secrets.sh makes both files, empty (no keys of the copy's own).
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/init-secrets.sh"),
    )
    .expect("init-secrets.sh");
    for secret in ["backup_copy_access_key_id", "backup_copy_secret_access_key"] {
        assert!(
            init.lines().any(|l| l == format!("put {secret} \"\"")),
            "init-secrets.sh: {secret}"
        );
    }
}

#[test]
fn the_backup_service_mounts_the_project_it_backs_up_read_only() {
    let file = rendered();
    let block = service(&file, "backup");
    // The backup service reads the project from a running container of the project that
    // bind-mounts exactly the directory of compose's working-directory label (the compose
    // file's directory): this one, read-only.
    let dir = compose_dir();
    let mount = format!("{}:/project:ro", dir.display());
    let volumes = list(&block, "volumes");
    assert!(volumes.contains(&mount), "backup: {mount} not in {volumes:?}");
    for name in ["watcher", "updater", "health", "notifier", "steward", "setup"] {
        let other = list(&service(&file, name), "volumes");
        assert!(!other.iter().any(|v| v.starts_with(&format!("{}:", dir.display()))), "{name}");
    }
    // And it must be in the scope of the containers it backs up: in the stack tests' scope
    // overlay, labelled like the app (a container out of scope is never the one read from).
    let scoped = rendered_with(&["../tests/compose/scope.yml"]);
    let app = labels(&service(&scoped, "gitea"));
    let backup = labels(&service(&scoped, "backup"));
    assert_eq!(app.get("steward.scope").map(String::as_str), Some("e2e-scope"), "{app:?}");
    assert_eq!(backup.get("steward.scope"), app.get("steward.scope"), "{backup:?}");
    assert!(list(&service(&scoped, "backup"), "volumes").contains(&mount));
}

/// The nginx template resolves the deployer's name per request (the deployer is optional: a
/// name in `proxy_pass` itself must resolve when nginx starts) with `resolver
/// ${NGINX_LOCAL_RESOLVERS}`, which the image's entrypoint exports only when asked.
#[test]
fn nginx_is_given_the_engines_dns_for_the_optional_deployer() {
    let file = rendered();
    let env = environment(&service(&file, "nginx"));
    let asked = env.get("NGINX_ENTRYPOINT_LOCAL_RESOLVERS").map(|v| v.trim_matches(['\'', '"']));
    assert_eq!(asked, Some("1"), "{env:?}");
    let template = read_repo_file("compose/nginx/templates/gitea.conf.template");
    assert!(template.contains("resolver ${NGINX_LOCAL_RESOLVERS} "), "the template's resolver");
}

#[test]
fn the_backup_service_verifies_weekly_and_can_be_given_a_heartbeat_url() {
    use steward_backup::config::{DEFAULT_VERIFY_SCHEDULE, ENV_VERIFY_SCHEDULE};
    use steward_backup::heartbeat::ENV_HEARTBEAT_URL;
    let file = rendered();
    let block = service(&file, "backup");
    let env = environment(&block);
    assert_eq!(
        env.get(ENV_VERIFY_SCHEDULE).map(String::as_str),
        Some(DEFAULT_VERIFY_SCHEDULE),
        "{env:?}"
    );
    // The URL is a credential: a secret file, never the variable itself.
    assert!(!env.contains_key(ENV_HEARTBEAT_URL), "{env:?}");
    assert_eq!(
        env.get(&format!("{ENV_HEARTBEAT_URL}_FILE")).map(String::as_str),
        Some("/run/secrets/backup_heartbeat_url"),
        "{env:?}"
    );
    assert!(
        secrets(&block)
            .contains(&("backup_heartbeat_url".to_owned(), "backup_heartbeat_url".to_owned())),
        "{:?}",
        secrets(&block)
    );
    let top: Vec<&str> = file.lines().skip_while(|l| *l != "secrets:").collect();
    let declared = top.iter().position(|l| *l == "  backup_heartbeat_url:");
    let declared_file = declared.and_then(|i| top.get(i + 1)).map(|l| l.trim());
    assert_eq!(
        declared_file,
        Some(format!("file: {}/secrets/backup_heartbeat_url", compose_dir().display()).as_str())
    );
    // init-secrets.sh makes it empty (the service reads an empty URL as no heartbeat), and
    // .env.example documents both settings.
    let init = read_repo_file("compose/init-secrets.sh");
    assert!(init.lines().any(|l| l == "put backup_heartbeat_url \"\""), "init-secrets.sh");
    let example = read_repo_file("compose/.env.example");
    assert!(
        example.lines().any(|l| l == format!("{ENV_VERIFY_SCHEDULE}={DEFAULT_VERIFY_SCHEDULE}")),
        ".env.example: {ENV_VERIFY_SCHEDULE}"
    );
    assert!(example.contains("secrets/backup_heartbeat_url"), ".env.example: heartbeat");
}

#[test]
fn the_runbooks_events_import_runs_as_the_setup_user_through_the_setup_service() {
    // `steward events import` needs the NATS user `setup`; the runbook runs it through the
    // compose service that has that user and its password, with the export on stdin.
    let file = rendered();
    let block = service(&file, "setup");
    let env = environment(&block);
    assert_eq!(env.get("STEWARD_NATS_USER").map(String::as_str), Some("setup"), "{env:?}");
    assert_eq!(
        env.get("STEWARD_NATS_PASSWORD_FILE").map(String::as_str),
        Some("/run/secrets/nats_password")
    );
    assert!(
        secrets(&block).contains(&("nats_setup_password".to_owned(), "nats_password".to_owned())),
        "{:?}",
        secrets(&block)
    );
    assert_eq!(list(&block, "entrypoint"), ["steward"], "{block:?}");
    // No other service holds the setup password (the CLI's user may not create streams).
    for name in ["steward", "watcher", "updater", "backup", "health", "notifier"] {
        assert!(
            !secrets(&service(&file, name)).iter().any(|(s, _)| s == "nats_setup_password"),
            "{name}"
        );
    }
    let runbooks = read_repo_file("docs/runbooks.md");
    let dr: String = runbooks
        .split("\n## ")
        .find(|s| s.starts_with("Disaster recovery"))
        .expect("the runbook's disaster recovery section")
        .to_owned();
    let command = "compose run --rm -T setup events import - < events.ndjson";
    assert!(dr.contains(command), "docs/runbooks.md, disaster recovery: `{command}`");
    assert!(read_repo_file("compose/docker-compose.yml").contains(command), "compose file");
}

#[test]
fn traces_go_to_the_monitoring_profiles_jaeger_only_when_asked() {
    const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let services = ["watcher", "updater", "backup", "health", "notifier"];
    // Off unless asked: an empty endpoint is no exporter at all.
    let plain = rendered();
    for name in services {
        let env = environment(&service(&plain, name));
        assert_eq!(env.get(ENDPOINT).map(String::as_str), Some("''"), "{name}");
    }
    // Asked (compose/README.md): every service exports to the profile's Jaeger.
    let traced = rendered_in(&[], &[(ENDPOINT, "http://jaeger:4318")]);
    for name in services {
        let env = environment(&service(&traced, name));
        assert_eq!(env.get(ENDPOINT).map(String::as_str), Some("http://jaeger:4318"), "{name}");
    }
    // Jaeger: in the monitoring profile, on the stack's network only, receiving OTLP/HTTP on
    // the port the services are told, and Grafana's data source on its query port.
    let jaeger = service(&traced, "jaeger");
    assert_eq!(list(&jaeger, "profiles"), ["monitoring"]);
    assert!(!jaeger.iter().any(|l| l.trim() == "ports:"), "Jaeger publishes no port");
    let config = read_repo_file("compose/monitoring/jaeger.yml");
    assert!(config.contains("endpoint: 0.0.0.0:4318"), "{config}");
    assert!(!config.contains("grpc"), "no gRPC receiver: the services send OTLP/HTTP");
    let source = read_repo_file("compose/monitoring/grafana/provisioning/datasources/jaeger.yml");
    assert!(source.contains("type: jaeger") && source.contains("url: http://jaeger:16686"));
    assert!(config.contains("endpoint: 0.0.0.0:16686"), "{config}");
    let docs = read_repo_file("compose/README.md");
    assert!(docs.contains("OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318"), "compose/README.md");
}

#[test]
fn alerts_go_from_prometheus_through_alertmanager_to_the_notifier_with_the_token_they_share() {
    let plain = rendered();
    // Prometheus sends to the profile's Alertmanager.
    let prometheus = read_repo_file("compose/monitoring/prometheus.yml");
    assert!(prometheus.contains("targets: [\"alertmanager:9093\"]"), "{prometheus}");
    let alertmanager = service(&plain, "alertmanager");
    assert_eq!(list(&alertmanager, "profiles"), ["monitoring"]);
    assert!(!alertmanager.iter().any(|l| l.trim() == "ports:"), "Alertmanager publishes no port");
    // It posts to the notifier's HTTP port, with the token file it mounts...
    let notifier = service(&plain, "notifier");
    let env = environment(&notifier);
    let port = env
        .get("STEWARD_HTTP_ADDR")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("the notifier's STEWARD_HTTP_ADDR");
    let config = read_repo_file("compose/monitoring/alertmanager.yml");
    assert!(config.contains(&format!("url: http://notifier:{port}/alerts")), "{config}");
    let token_file = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("credentials_file: "))
        .expect("the webhook's credentials_file");
    let mounted = |block: &[String], file: &str| {
        secrets(block).iter().any(|(_, target)| format!("/run/secrets/{target}") == file)
    };
    assert!(mounted(&alertmanager, token_file), "{alertmanager:?}");
    // ...which is the secret the notifier checks it against.
    let expected = env.get("STEWARD_ALERTS_TOKEN_FILE").expect("STEWARD_ALERTS_TOKEN_FILE");
    assert_eq!(expected, token_file);
    assert!(mounted(&notifier, expected), "{notifier:?}");
    // Gitea's /metrics: enabled with a token Prometheus mounts too.
    let gitea = environment(&service(&plain, "gitea"));
    let enabled = gitea.get("GITEA__metrics__ENABLED").map(|v| v.trim_matches(['\'', '"']));
    assert_eq!(enabled, Some("true"));
    let gitea_token = gitea.get("GITEA__metrics__TOKEN__FILE").expect("Gitea's metrics token");
    assert!(mounted(&service(&plain, "gitea"), gitea_token));
    assert!(mounted(&service(&plain, "prometheus"), gitea_token));
    assert!(prometheus.contains(&format!("credentials_file: {gitea_token}")), "{prometheus}");
    // The host's metrics, read-only.
    let node = service(&plain, "node-exporter");
    assert_eq!(list(&node, "profiles"), ["monitoring"]);
    assert!(!node.iter().any(|l| l.trim() == "ports:"), "node-exporter publishes no port");
    assert!(prometheus.contains("targets: [\"node-exporter:9100\"]"), "{prometheus}");
}

/// The names of the rendered file's services (every profile's: `config` lists them all).
fn service_names(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .skip_while(|l| *l != "services:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|name| !name.starts_with(' '))
        .map(str::to_owned)
        .collect()
}

/// The value of a service block's scalar `key:`.
fn scalar(block: &[String], key: &str) -> Option<String> {
    let prefix = format!("    {key}: ");
    block.iter().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim_matches('\'').to_owned())
}

#[test]
fn every_service_has_memory_cpu_and_process_limits_and_memory_and_cpus_are_settings() {
    let file = rendered();
    let names = service_names(&file);
    assert!(names.len() >= 18, "{names:?}");
    let raw = read_repo_file("compose/docker-compose.yml");
    let example = read_repo_file("compose/.env.example");
    for name in &names {
        let block = service(&file, name);
        let mem = scalar(&block, "mem_limit").unwrap_or_else(|| panic!("{name}: no mem_limit"));
        let cpus: f64 = scalar(&block, "cpus")
            .unwrap_or_else(|| panic!("{name}: no cpus"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: cpus: {e}"));
        let pids: u32 = scalar(&block, "pids_limit")
            .unwrap_or_else(|| panic!("{name}: no pids_limit"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: pids_limit: {e}"));
        // A 1-vCPU host must start every service: the engine refuses more CPUs than it has.
        assert!(cpus > 0.0 && cpus <= 1.0, "{name}: cpus {cpus}");
        assert!((32..=4096).contains(&pids), "{name}: pids_limit {pids}");
        // Memory and CPUs are settings with these defaults, each listed in .env.example.
        let var = match name.as_str() {
            "steward" => "CLI".to_owned(),
            other => other.to_uppercase().replace('-', "_"),
        };
        for (key, value) in [("MEM_LIMIT", mem.clone()), ("CPUS", cpus.to_string())] {
            let setting = format!("{var}_{key}");
            assert!(
                raw.contains(&format!("${{{setting}:-")),
                "{name}: {key} is not the setting {setting}"
            );
            let listed = example
                .lines()
                .find_map(|l| l.trim_start_matches('#').strip_prefix(&format!("{setting}=")));
            let listed: Option<String> = listed.map(|v| {
                if key == "CPUS" {
                    v.parse::<f64>().map(|c| c.to_string()).unwrap_or_default()
                } else {
                    v.to_owned()
                }
            });
            assert_eq!(listed.as_deref(), Some(value.as_str()), ".env.example: {setting}");
        }
    }
    // A setting reaches its service.
    let raised = rendered_in(&[], &[("GITEA_MEM_LIMIT", "3g"), ("BACKUP_CPUS", "0.75")]);
    assert_eq!(scalar(&service(&raised, "gitea"), "mem_limit").as_deref(), Some("3g"));
    assert_eq!(scalar(&service(&raised, "backup"), "cpus").as_deref(), Some("0.75"));
}

/// `(host address, host port, container port)` of a service block's published ports.
fn published(block: &[String]) -> Vec<(String, String, String)> {
    list(block, "ports")
        .iter()
        .filter_map(|p| {
            let p = p.trim_matches(['\'', '"']);
            let p = p.split('/').next()?;
            let mut parts = p.rsplitn(3, ':');
            let target = parts.next()?.to_owned();
            let port = parts.next()?.to_owned();
            let addr = parts.next().unwrap_or("0.0.0.0").to_owned();
            Some((addr, port, target))
        })
        .collect()
}

#[test]
fn only_nginx_is_published_beyond_loopback_by_default() {
    // A published port passes the engine's forwarding rules ahead of ufw or firewalld: every
    // port but 80/443 stays on loopback unless the operator names an address.
    let file = rendered();
    let mut public = vec![];
    for name in service_names(&file) {
        for (addr, port, target) in published(&service(&file, &name)) {
            if addr != "127.0.0.1" && addr != "::1" {
                public.push(format!("{name} {addr}:{port}->{target}"));
            }
        }
    }
    public.sort();
    assert_eq!(public, ["nginx 0.0.0.0:443->443", "nginx 0.0.0.0:80->80"], "published widely");
    assert!(
        published(&service(&file, "gitea")).contains(&(
            "127.0.0.1".into(),
            "2222".into(),
            "22".into()
        )),
        "{:?}",
        published(&service(&file, "gitea"))
    );
    // Git over SSH for everyone is the operator's choice.
    let open = rendered_in(&[], &[("GITEA_SSH_ADDR", "0.0.0.0")]);
    assert!(published(&service(&open, "gitea"))
        .iter()
        .any(|(a, p, _)| a == "0.0.0.0" && p == "2222"));
    // The application ports of seed 003 and the stack's own are never published.
    for port in ["3000", "3100", "3200", "5432", "4222", "8222", "9100", "9090", "9093"] {
        for name in service_names(&file) {
            assert!(
                !published(&service(&file, &name))
                    .iter()
                    .any(|(a, p, _)| p == port && a != "127.0.0.1"),
                "{name} publishes {port}"
            );
        }
    }
}

#[test]
fn the_selinux_overlay_labels_the_stacks_bind_mounts_and_never_the_hosts_paths() {
    let file = rendered_with(&["selinux.yml"]);
    let dir = compose_dir().display().to_string();
    let mut labelled = 0;
    for name in service_names(&file) {
        let block = service(&file, &name);
        let security: Vec<String> = list(&block, "security_opt");
        for volume in list(&block, "volumes") {
            let mut parts = volume.splitn(3, ':');
            let (source, mode) = (parts.next().unwrap_or(""), parts.nth(1).unwrap_or(""));
            let modes: Vec<&str> = mode.split(',').collect();
            if source.starts_with(&dir) {
                // The stack's own files: relabelled, shared (others mount the same tree).
                assert!(modes.contains(&"z"), "{name}: {volume} not labelled");
                labelled += 1;
            } else if source.starts_with('/') {
                // The host's paths and the engine's socket: never relabelled; the container
                // runs unconfined instead.
                assert!(!modes.contains(&"z") && !modes.contains(&"Z"), "{name}: {volume}");
                assert!(security.contains(&"label=disable".to_owned()), "{name}: {volume}");
            }
        }
    }
    assert!(labelled >= 9, "{labelled} bind mounts labelled");
    // Without the overlay nothing is relabelled (Docker on Debian/Ubuntu has no SELinux).
    let plain = rendered();
    for name in service_names(&plain) {
        for volume in list(&service(&plain, &name), "volumes") {
            assert!(!volume.ends_with(",z") && !volume.ends_with(":z"), "{name}: {volume}");
        }
    }
}

#[test]
fn the_podman_overlay_gives_the_socket_proxy_podmans_socket_and_nothing_else() {
    // The socket's directory is mounted, never the socket file (whose inode a recreated socket
    // leaves dead: infra/ansible/tests/test_engine_socket.py), and the proxy is told the
    // socket's name in it. Docker's by default, Podman's with the overlay, or where .env says.
    let engine = |file: &str| {
        let block = service(file, "sockproxy");
        // The deployer's proxy (profile deploy) is given the same.
        let deploy = service(file, "deploy-sockproxy");
        assert_eq!(
            list(&deploy, "volumes").iter().find(|v| v.contains(":/run/engine")),
            list(&block, "volumes").iter().find(|v| v.contains(":/run/engine")),
        );
        assert_eq!(
            environment(&deploy).get("STEWARD_SOCKPROXY_UPSTREAM"),
            environment(&block).get("STEWARD_SOCKPROXY_UPSTREAM")
        );
        let volumes = list(&block, "volumes");
        let mounted: Vec<String> =
            volumes.iter().filter(|v| v.contains(":/run/engine")).cloned().collect();
        for volume in &volumes {
            assert!(!volume.split(':').next().unwrap_or("").ends_with(".sock"), "{volume}");
        }
        (mounted, environment(&block).get("STEWARD_SOCKPROXY_UPSTREAM").cloned())
    };
    let plain = rendered();
    assert_eq!(
        engine(&plain),
        (vec!["/var/run:/run/engine:ro".to_owned()], Some("/run/engine/docker.sock".to_owned()))
    );
    let file = rendered_with(&["podman.yml"]);
    assert_eq!(
        engine(&file),
        (vec!["/run/podman:/run/engine:ro".to_owned()], Some("/run/engine/podman.sock".to_owned()))
    );
    let moved = rendered_in(
        &["podman.yml"],
        &[("ENGINE_SOCKET_DIR", "/run/podman-api"), ("ENGINE_SOCKET_NAME", "api.sock")],
    );
    assert_eq!(
        engine(&moved),
        (
            vec!["/run/podman-api:/run/engine:ro".to_owned()],
            Some("/run/engine/api.sock".to_owned())
        )
    );
    for name in service_names(&plain) {
        if name == "sockproxy" || name == "deploy-sockproxy" {
            continue;
        }
        // The same lines (a layered file reorders a service's volumes).
        let (mut layered, mut alone) = (service(&file, &name), service(&plain, &name));
        layered.sort();
        alone.sort();
        assert_eq!(layered, alone, "{name} changed on Podman");
    }
}

/// No service but the socket proxy reaches the engine's socket through a mount: not by the
/// socket's file (compose_stack.rs checks `docker.sock` on a running stack), nor by its
/// directory (`/run/engine`, the host's /run, /var/run or a directory under them such as
/// /run/podman), on Docker or Podman, with every profile. node-exporter alone mounts the host's
/// root read-only for its filesystem metrics: it runs as `nobody`, outside the engine's group,
/// so the socket under it (mode 0660) does not open for it.
#[test]
fn no_service_but_the_socket_proxy_mounts_the_engines_socket_or_its_directory() {
    let all = [("COMPOSE_PROFILES", "*")];
    for overlays in [&[][..], &["podman.yml"][..]] {
        let file = rendered_in(overlays, &all);
        let names = service_names(&file);
        assert!(names.iter().any(|n| n == "node-exporter"), "profiles not rendered: {names:?}");
        for name in names.iter().filter(|n| *n != "sockproxy" && *n != "deploy-sockproxy") {
            for volume in list(&service(&file, name), "volumes") {
                let mut parts = volume.split(':');
                let (source, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let source = source.trim_end_matches('/');
                let under_run = ["/run", "/var/run"]
                    .iter()
                    .any(|run| source == *run || source.starts_with(&format!("{run}/")));
                let host_root = volume.starts_with('/') && source.is_empty();
                assert!(
                    !target.starts_with("/run/engine")
                        && !under_run
                        && !source.ends_with(".sock")
                        && (!host_root || name == "node-exporter"),
                    "{name} ({overlays:?}) mounts {volume}: the engine's socket is the proxy's alone"
                );
            }
        }
    }
}

#[test]
fn the_haproxy_overlay_makes_haproxy_the_front_with_the_swappers_socket_and_its_metrics() {
    let file = rendered_with(&["haproxy.yml"]);
    // nginx is left out (its profile is never asked for); HAProxy publishes 80 and 443 only.
    assert_eq!(list(&service(&file, "nginx"), "profiles"), ["nginx"]);
    let haproxy = service(&file, "haproxy");
    let mut ports = published(&haproxy);
    ports.sort();
    assert_eq!(
        ports,
        [
            ("0.0.0.0".into(), "443".into(), "443".into()),
            ("0.0.0.0".into(), "80".into(), "80".into())
        ]
    );
    // The admin socket: in a volume only HAProxy, the updater and the deployer (start-first
    // deployments) mount, where both are told it is; the configuration's default path is the
    // same.
    let socket = "/run/haproxy/admin.sock";
    for swapping in ["updater", "deployer"] {
        assert_eq!(
            environment(&service(&file, swapping))
                .get("STEWARD_HAPROXY_SOCKET")
                .map(String::as_str),
            Some(socket),
            "{swapping}"
        );
    }
    let mut mounting = vec![];
    for name in service_names(&file) {
        if list(&service(&file, &name), "volumes").iter().any(|v| v.starts_with("haproxy-admin:")) {
            mounting.push(name);
        }
    }
    mounting.sort();
    assert_eq!(mounting, ["deployer", "haproxy", "updater"]);
    assert!(list(&haproxy, "volumes").contains(&"haproxy-admin:/run/haproxy:rw".to_owned()));
    let cfg = read_repo_file("compose/haproxy/haproxy.cfg");
    assert!(
        cfg.contains(&format!("\"${{HAPROXY_SOCKET-{socket}}}\"")),
        "socket path in haproxy.cfg"
    );
    // The key's PEM file on a tmpfs, where front.sh and haproxy.cfg put it.
    assert_eq!(list(&haproxy, "tmpfs"), ["/run/haproxy-tls:mode=0700"]);
    assert!(cfg.contains("\"${HAPROXY_CERT-/run/haproxy-tls/front.pem}\""));
    assert!(read_repo_file("compose/haproxy/front.sh")
        .contains("PEM=${HAPROXY_CERT:-/run/haproxy-tls/front.pem}"));
    // Renewals reload it through front.sh; its served certificate is watched.
    let labels = labels(&haproxy);
    assert_eq!(
        labels.get("steward.certs.reload").map(String::as_str),
        Some("sh /usr/local/etc/haproxy/front.sh reload")
    );
    assert_eq!(
        labels.get("steward.health.tls").map(String::as_str),
        Some("git.example.com@haproxy:443")
    );
    // Metrics on 8405, never published, scraped by the monitoring profile's Prometheus.
    assert!(cfg.contains("bind \"${HAPROXY_STATS_BIND-:8405}\""));
    let prometheus = read_repo_file("compose/monitoring/prometheus.yml");
    assert!(prometheus.contains("names: [\"haproxy\"]") && prometheus.contains("port: 8405"));
    // Limits and the rate limit are settings, listed in .env.example.
    let example = read_repo_file("compose/.env.example");
    for (setting, value) in [
        ("HAPROXY_MEM_LIMIT", "256m"),
        ("HAPROXY_CPUS", "0.5"),
        ("HAPROXY_RATE_LIMIT", "200"),
        ("HAPROXY_RATE_PERIOD", "10"),
        ("HAPROXY_MAXCONN", "1000"),
    ] {
        let listed = example
            .lines()
            .find_map(|l| l.trim_start_matches('#').strip_prefix(&format!("{setting}=")));
        assert_eq!(listed, Some(value), ".env.example: {setting}");
    }
    assert_eq!(scalar(&haproxy, "mem_limit").as_deref(), Some("256m"));
    assert_eq!(scalar(&haproxy, "pids_limit").as_deref(), Some("128"));
    // One thread under that pids_limit; the connection bound and the redirect's domain (never
    // the client's Host) from the environment.
    assert!(cfg.contains("    nbthread 1\n"), "nbthread in haproxy.cfg");
    assert!(cfg.contains("maxconn \"${HAPROXY_MAXCONN-1000}\""), "maxconn in haproxy.cfg");
    // Its healthcheck asks the running process (front.sh health), not only `haproxy -c`.
    let probe: Vec<&str> = haproxy
        .iter()
        .map(|l| l.trim())
        .skip_while(|l| *l != "test:")
        .skip(1)
        .take_while(|l| l.starts_with("- "))
        .collect();
    assert_eq!(probe, ["- CMD", "- sh", "- /usr/local/etc/haproxy/front.sh", "- health"]);
    let env = environment(&haproxy);
    assert_eq!(env.get("HAPROXY_MAXCONN").map(String::as_str), Some("'1000'"));
    assert!(env.get("GITEA_DOMAIN").is_some_and(|d| d.contains("git.example.com")), "{env:?}");
    let tuned = rendered_in(&["haproxy.yml"], &[("HAPROXY_RATE_LIMIT", "50")]);
    assert_eq!(
        environment(&service(&tuned, "haproxy")).get("HAPROXY_RATE_LIMIT").map(String::as_str),
        Some("'50'")
    );
    // Nothing else changes; without the overlay there is no HAProxy and nginx is the front.
    let plain = rendered();
    for name in service_names(&plain) {
        if ["nginx", "updater", "deployer"].contains(&name.as_str()) {
            continue;
        }
        let (mut layered, mut alone) = (service(&file, &name), service(&plain, &name));
        layered.sort();
        alone.sort();
        assert_eq!(layered, alone, "{name} changed with HAProxy");
    }
    assert!(!service_names(&plain).contains(&"haproxy".to_owned()));
    assert!(list(&service(&plain, "nginx"), "profiles").is_empty());
    for swapping in ["updater", "deployer"] {
        assert!(!environment(&service(&plain, swapping)).contains_key("STEWARD_HAPROXY_SOCKET"));
    }
}

#[test]
fn the_deployer_runs_in_its_profile_with_its_own_image_socket_user_and_checkouts_at_the_hosts_path()
{
    let file = rendered();
    let deployer = service(&file, "deployer");
    assert_eq!(list(&deployer, "profiles"), ["deploy"]);
    assert_eq!(scalar(&deployer, "image").as_deref(), Some("steward/deployer:0.1.0"));
    let env = environment(&deployer);
    assert_eq!(env.get("STEWARD_NATS_USER").map(String::as_str), Some("deployer"));
    assert_eq!(
        env.get("DOCKER_HOST").map(String::as_str),
        Some("unix:///run/steward-docker/docker.sock")
    );
    // Its socket is the `deployer` role of a proxy of its own in the same profile (without the
    // profile no such socket is served), in a volume only the two share.
    let proxy = service(&file, "deploy-sockproxy");
    assert_eq!(list(&proxy, "profiles"), ["deploy"]);
    assert_eq!(labels(&proxy).get("steward.sockproxy").map(String::as_str), Some("true"));
    let sockets = environment(&proxy).get("STEWARD_SOCKPROXY_SOCKETS").cloned().unwrap_or_default();
    assert_eq!(sockets, "deployer=/run/steward-docker/deployer/docker.sock");
    let main = environment(&service(&file, "sockproxy")).get("STEWARD_SOCKPROXY_SOCKETS").cloned();
    assert!(!main.unwrap_or_default().contains("deployer"), "the main proxy serves the deployer");
    let volumes = list(&deployer, "volumes");
    assert!(volumes.contains(&"docker-deployer:/run/steward-docker:rw".to_owned()), "{volumes:?}");
    for name in service_names(&file) {
        let theirs = list(&service(&file, &name), "volumes");
        let shares = theirs.iter().any(|v| v.starts_with("docker-deployer:"));
        assert_eq!(shares, name == "deployer" || name == "deploy-sockproxy", "{name}: {theirs:?}");
    }
    // The checkouts: the same path inside as on the host (compose gives the engine host paths),
    // moved by one setting.
    assert!(volumes.contains(&"/var/lib/steward/deploy:/var/lib/steward/deploy:rw".to_owned()));
    let moved = rendered_in(&[], &[("STEWARD_DEPLOY_DIR", "/srv/deploy")]);
    let moved = service(&moved, "deployer");
    assert!(list(&moved, "volumes").contains(&"/srv/deploy:/srv/deploy:rw".to_owned()));
    assert_eq!(
        environment(&moved).get("STEWARD_DEPLOY_DIR").map(String::as_str),
        Some("/srv/deploy")
    );
    // Its secrets: its NATS password, the webhook's secret and the approval links' key (made
    // by init-secrets.sh).
    let mounted: Vec<String> = secrets(&deployer).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        mounted,
        [
            "nats_deployer_password",
            "deploy_webhook_secret",
            "deploy_approval_secret",
            "docker_config"
        ]
    );
    assert_eq!(env.get("DOCKER_CONFIG").map(String::as_str), Some("/run/secrets/docker_config"));
    let init = read_repo_file("compose/init-secrets.sh");
    assert!(
        init.contains("put deploy_webhook_secret") && init.contains("put deploy_approval_secret")
    );
}

/// Several hosts on leaf nodes (`leaf.yml` on every host, `hub.yml` after it at the centre):
/// every agent logs in as its per-host user to its host's leaf under the host's domain, the
/// leaf's server is given those users' passwords under their per-host names, the notifier
/// runs only where the `centre` profile is asked for and, with `hub.yml`, talks to the hub as
/// the CLI does. (compose_leaf.rs brings the overlays up.)
#[test]
fn the_leaf_overlays_give_each_agent_its_hosts_user_and_the_centre_the_hub() {
    let vars = [("STEWARD_HOSTS", "vps-a,vps-b"), ("STEWARD_HOST", "vps-a")];
    let leaf = rendered_in(&["leaf.yml"], &vars);
    for agent in ["watcher", "updater", "backup", "health", "deployer"] {
        let env = environment(&service(&leaf, agent));
        let expected = [
            ("STEWARD_NATS_USER", format!("{agent}-vps-a")),
            ("STEWARD_HOST", "vps-a".into()),
            ("STEWARD_NATS_DOMAIN", "vps-a".into()),
            ("STEWARD_NATS_URL", "nats://nats:4222".into()),
        ];
        for (key, value) in expected {
            assert_eq!(env.get(key), Some(&value), "{agent}'s {key}");
        }
        let nats = secrets(&service(&leaf, "nats"));
        let per_host = (format!("nats_{agent}_password"), format!("nats_{agent}-vps-a_password"));
        assert!(nats.contains(&per_host), "the leaf lacks {per_host:?}: {nats:?}");
    }
    assert!(secrets(&service(&leaf, "nats"))
        .contains(&("nats_leaf_url".into(), "nats_leaf_url".into())));
    assert_eq!(
        environment(&service(&leaf, "setup")).get("STEWARD_NATS_DOMAIN"),
        Some(&"vps-a".into())
    );
    assert_eq!(list(&service(&leaf, "notifier"), "profiles"), ["centre"]);
    assert!(!service_names(&leaf).contains(&"nats-hub".to_owned()));

    let centre_vars = [vars[0], vars[1], ("STEWARD_HUB_NAME", "hub.example.org")];
    let centre = rendered_in(&["leaf.yml", "hub.yml"], &centre_vars);
    // The centre's own leaf reaches the hub by its public name (the certificate's), on a
    // network of the two only: no other container (Gitea, whose name it may be) sees it.
    let hub_block = service(&centre, "nats-hub");
    let link = hub_block.iter().position(|l| l.trim() == "leaf-link:").expect("on leaf-link");
    assert_eq!(
        hub_block.get(link + 1..link + 3).map(|l| l.iter().map(|x| x.trim()).collect::<Vec<_>>()),
        Some(vec!["aliases:", "- hub.example.org"])
    );
    assert!(
        service(&centre, "nats").iter().any(|l| l.trim() == "leaf-link: {}"),
        "{:?}",
        service(&centre, "nats")
    );
    for other in service_names(&centre).iter().filter(|n| *n != "nats" && *n != "nats-hub") {
        assert!(!service(&centre, other).iter().any(|l| l.contains("leaf-link")), "{other}");
    }
    for central in ["notifier", "steward"] {
        let env = environment(&service(&centre, central));
        assert_eq!(env.get("STEWARD_NATS_URL").map(String::as_str), Some("nats://nats-hub:4222"));
        assert_eq!(env.get("STEWARD_NATS_DOMAIN").map(String::as_str), Some("hub"));
    }
    let setup = environment(&service(&centre, "setup-hub"));
    assert_eq!(setup.get("STEWARD_NATS_DOMAIN").map(String::as_str), Some("hub"));
    assert_eq!(setup.get("STEWARD_NATS_USER").map(String::as_str), Some("setup"));
    assert_eq!(setup.get("STEWARD_NATS_REPLICAS"), None, "one hub server: one copy");
    // A node of a clustered hub: its route password, its route port on the private address
    // given only, and three copies kept by every `up`'s provisioning.
    let node_vars = [
        centre_vars[0],
        centre_vars[1],
        centre_vars[2],
        ("STEWARD_ROUTE_PUBLISH", "10.0.0.1:6222"),
    ];
    let node = rendered_in(&["leaf.yml", "hub.yml", "hub-cluster.yml"], &node_vars);
    let hub_block = service(&node, "nats-hub");
    assert!(
        secrets(&hub_block).contains(&("nats_route_password".into(), "nats_route_password".into())),
        "{hub_block:?}"
    );
    let route = ("10.0.0.1".to_owned(), "6222".to_owned(), "6222".to_owned());
    assert!(published(&hub_block).contains(&route), "{:?}", published(&hub_block));
    let setup = environment(&service(&node, "setup-hub"));
    // (Rendered quoted: a number-like string.)
    let replicas = setup.get("STEWARD_NATS_REPLICAS").map(|v| v.trim_matches('\''));
    assert_eq!(replicas, Some("3"));
    // Without STEWARD_HOST a leaf host's stack does not render at all.
    let empty = std::env::temp_dir().join(steward_testkit::unique_name("compose-env"));
    std::fs::write(&empty, "").expect("env file");
    let out = Command::new("docker-compose")
        .current_dir(compose_dir())
        .arg("--env-file")
        .arg(&empty)
        .args(["-f", "docker-compose.yml", "-f", "leaf.yml", "config"])
        .env("STEWARD_S3_BUCKET", "b")
        .env("STEWARD_MAIL_FROM", "a@example.com")
        .env("STEWARD_MAIL_TO", "b@example.com")
        .env("GITEA_DOMAIN", "git.example.com")
        .env_remove("STEWARD_HOST")
        .output()
        .expect("docker-compose");
    let _ = std::fs::remove_file(&empty);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("set STEWARD_HOST in .env"), "{stderr}");
}
