//! The shipped compose file as docker-compose renders it (issue 26): every service that talks
//! to a registry has the operator's registry login, and the backup service can be given the
//! age identity that verifies and restores encrypted backups. (A private registry broke updates
//! in the stack: the watcher had the login, the updater pulled without it.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `docker-compose config` of `compose/`, with the variables it requires set.
fn rendered() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose");
    // An empty env file: a `.env` an operator left in the checkout changes nothing here.
    let empty = std::env::temp_dir().join(steward_testkit::unique_name("compose-env"));
    std::fs::write(&empty, "").expect("env file");
    let out = Command::new("docker-compose")
        .current_dir(&dir)
        .arg("--env-file")
        .arg(&empty)
        .arg("config")
        .env("STEWARD_S3_BUCKET", "gitea-backups")
        .env("STEWARD_MAIL_FROM", "steward@example.com")
        .env("STEWARD_MAIL_TO", "ops@example.com")
        .env("GITEA_DOMAIN", "git.example.com")
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
