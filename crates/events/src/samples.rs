//! One realistic example payload for every event type.
//!
//! Used by round-trip tests (here and against the real bus), by the benchmark and to render
//! the examples in `docs/events.md` ([`crate::catalog::markdown`], which puts them in catalog
//! order and fixes their ids with [`with_ids`]).

use uuid::Uuid;

use crate::*;

fn digest(fill: char) -> Digest {
    // A syntactically valid digest made of one repeated hex digit.
    Digest::parse(&format!("sha256:{}", fill.to_string().repeat(64)))
        .unwrap_or_else(|_| unreachable!("hex fill digit"))
}

/// What Gitea's images say about themselves, before and after.
fn versions() -> Versions {
    let source = Some("https://github.com/go-gitea/gitea".to_owned());
    Versions {
        current_version: Some(ImageVersion {
            version: Some("1.22.6".into()),
            created: Some(time::macros::datetime!(2026-10-01 09:00 UTC)),
            source: source.clone(),
            url: None,
            revision: Some("5f3c9a1".into()),
        }),
        new_version: Some(ImageVersion {
            version: Some("1.22.7".into()),
            created: Some(time::macros::datetime!(2026-11-20 09:00 UTC)),
            source,
            url: None,
            revision: Some("9e2b4d7".into()),
        }),
    }
}

/// One example of each event type, for container `container`, with fresh ids (so events
/// made from two calls never share an update or deployment).
pub fn all(container: &str) -> Vec<EventData> {
    with_ids(container, Uuid::now_v7(), Uuid::now_v7())
}

/// [`all`] with the given ids: `update_id` names the update and the deployment of the
/// examples, `event_id` the event the notifications are about. Fixed ids make the output
/// reproducible (the generated `docs/events.md`).
pub fn with_ids(container: &str, update_id: Uuid, event_id: Uuid) -> Vec<EventData> {
    let c = container.to_owned();
    let image = "gitea/gitea:1.22".to_owned();
    vec![
        WatchRequested { container: Some(c.clone()), requested_by: Some("ops@host".into()) }.into(),
        ImageUpdated {
            container: c.clone(),
            image: image.clone(),
            current_digest: digest('a'),
            new_digest: digest('b'),
            new_tag: Some("1.22.7".into()),
            policy: Some("notify".into()),
            versions: versions(),
        }
        .into(),
        UpdatePending {
            update_id,
            container: c.clone(),
            image: image.clone(),
            current_digest: digest('a'),
            new_digest: digest('b'),
            new_tag: None,
            approval_url: None,
            expires_at: Some(time::macros::datetime!(2026-11-30 12:00 UTC)),
            runs: None,
            versions: versions(),
            reminder: false,
        }
        .into(),
        UpdateApproved { update_id, by: "ops@host".into() }.into(),
        UpdateRejected { update_id, by: "ops@host".into(), reason: Some("wait for 1.22.8".into()) }
            .into(),
        UpdateStarted {
            update_id,
            container: c.clone(),
            image: image.clone(),
            from_digest: digest('a'),
            to_digest: digest('b'),
            kind: UpdateKind::Update,
            requested_by: None,
        }
        .into(),
        UpdateSucceeded {
            update_id,
            container: c.clone(),
            image: image.clone(),
            from_digest: digest('a'),
            to_digest: digest('b'),
            duration_ms: 4200,
            approved_by: Some("ops@steward-host".into()),
            kind: UpdateKind::Update,
            requested_by: None,
        }
        .into(),
        UpdateWrittenBack {
            update_id,
            container: c.clone(),
            image: "gitea/gitea:1.22.7".into(),
            file: None,
            key: None,
            refused: Some("GITEA_IMAGE is not set in /opt/gitea/.env: the shell's environment or the default names the image; set it there".into()),
            from_image: Some(image.clone()),
            committer: None,
        }
        .into(),
        UpdateFailed {
            update_id,
            container: c.clone(),
            image: image.clone(),
            reason: "pre-update backup failed".into(),
            log_tail: vec![],
            kind: UpdateKind::Update,
            requested_by: None,
        }
        .into(),
        UpdateRolledBack {
            update_id,
            container: c.clone(),
            image,
            from_digest: digest('a'),
            to_digest: digest('c'),
            reason: "healthcheck failed 3 times".into(),
            log_tail: vec!["panic: cannot open /data/gitea.db".into()],
            old_healthy: Some(true),
            old_reason: None,
            old_log_tail: vec![],
            kind: UpdateKind::Update,
            requested_by: None,
        }
        .into(),
        RollbackRequested {
            container: c.clone(),
            requested_by: "ops@host".into(),
            to_digest: None,
        }
        .into(),
        RollbackRefused {
            container: c.clone(),
            requested_by: Some("ops@host".into()),
            reason: "no previous image is recorded for gitea".into(),
        }
        .into(),
        ImagePruned {
            repository: "gitea/gitea".into(),
            container: Some(c.clone()),
            images: vec![PrunedImage {
                id: digest('d').to_string(),
                repo_digests: vec![format!("gitea/gitea@{}", digest('d'))],
                size_bytes: 180 << 20,
            }],
            bytes_freed: 180 << 20,
            kept: 2,
        }
        .into(),
        BackupRequested {
            reason: BackupReason::PreUpdate,
            containers: vec![c.clone()],
            requested_by: None,
        }
        .into(),
        BackupStarted { backup_id: "20261123T020000Z".into() }.into(),
        BackupDone {
            backup_id: "20261123T020000Z".into(),
            manifest_key: "steward/20261123T020000Z/manifest.json".into(),
            size_bytes: 1 << 20,
            components: vec![BackupComponent {
                name: "postgres/gitea".into(),
                size_bytes: 1 << 20,
                sha256: "e".repeat(64),
            }],
            duration_ms: 9000,
        }
        .into(),
        BackupFailed {
            backup_id: Some("20261123T020000Z".into()),
            reason: "pg_dump exited with 1".into(),
            stderr_tail: vec!["pg_dump: error: connection failed".into()],
        }
        .into(),
        BackupVerified {
            backup_id: "20261123T020000Z".into(),
            components_checked: 2,
            database_restored: true,
            duration_ms: 15000,
            from: None,
        }
        .into(),
        BackupPruned { backup_ids: vec!["20261001T020000Z".into()], kept: 17 }.into(),
        VerifyRequested {
            backup_id: "latest".into(),
            requested_by: Some("ops@host".into()),
            from: Some(BackupTarget::Copy),
        }
        .into(),
        VerifyFailed {
            backup_id: "20261123T020000Z".into(),
            reason: "postgres/gitea: SHA-256 does not match the manifest".into(),
            log_tail: vec![],
            from: Some(BackupTarget::Copy),
        }
        .into(),
        RestoreRequested {
            backup_id: "latest".into(),
            scope: RestoreScope::Db,
            requested_by: Some("ops@host".into()),
            allow_unsigned: false,
            no_safety_backup: false,
            from: None,
            to_time: None,
        }
        .into(),
        RestoreDone {
            backup_id: "20261123T020000Z".into(),
            restored: vec!["postgres/gitea".into()],
            duration_ms: 30000,
            safety_backup_id: Some("20261123T101500Z-3f9a1c".into()),
            from: Some(BackupTarget::Copy),
            fallback_reason: Some("backup 20261123T020000Z has no manifest in the primary".into()),
            notes: vec![],
        }
        .into(),
        RestoreFailed {
            backup_id: "20261123T020000Z".into(),
            reason: "checksum mismatch".into(),
            log_tail: vec![],
            safety_backup_id: Some("20261123T101500Z-3f9a1c".into()),
            from: None,
        }
        .into(),
        HealthFailed {
            container: c.clone(),
            check: "http".into(),
            reason: "GET / returned 502".into(),
            consecutive_failures: 3,
        }
        .into(),
        HealthRecovered { container: c.clone(), down_for_ms: 60_000 }.into(),
        EngineFailed {
            engine: "unix:///var/run/docker.sock".into(),
            call: "list containers".into(),
            reason: "engine did not answer list containers within 30s".into(),
            consecutive_failures: 3,
        }
        .into(),
        HealthRestarted {
            container: c.clone(),
            attempt: 1,
            reason: "GET http://gitea:3000/api/healthz answered 502".into(),
        }
        .into(),
        HealthRestartLimited {
            container: c,
            restarts: 3,
            reason: "GET http://gitea:3000/api/healthz answered 502".into(),
        }
        .into(),
        EngineRecovered { engine: "unix:///var/run/docker.sock".into(), down_for_ms: 600_000 }
            .into(),
        CertExpiring {
            container: "certbot".into(),
            certificate: "/etc/letsencrypt/live/git.example.com/fullchain.pem".into(),
            names: vec!["git.example.com".into()],
            not_after: time::macros::datetime!(2026-12-01 12:00 UTC),
            days_left: 9,
            level: Level::Warning,
        }
        .into(),
        CertRenewed {
            container: "certbot".into(),
            certificate: "/etc/letsencrypt/live/git.example.com/fullchain.pem".into(),
            not_after: Some(time::macros::datetime!(2027-02-28 12:00 UTC)),
        }
        .into(),
        DiskLow {
            target: "docker data root".into(),
            measured_in: "gitea:/".into(),
            free_bytes: 3_221_225_472,
            total_bytes: 42_949_672_960,
            free_percent: 7,
            level: Level::Warning,
        }
        .into(),
        DiskRecovered {
            target: "docker data root".into(),
            free_bytes: 21_474_836_480,
            total_bytes: 42_949_672_960,
        }
        .into(),
        ConfigInvalid {
            container: "nginx".into(),
            command: "nginx -t".into(),
            exit_code: 1,
            output_tail: vec![
                "nginx: [emerg] unknown directive \"proxy_pas\" in /etc/nginx/conf.d/gitea.conf:12"
                    .into(),
                "nginx: configuration file /etc/nginx/nginx.conf test failed".into(),
            ],
        }
        .into(),
        ConfigRecovered { container: "nginx".into(), command: "nginx -t".into() }.into(),
        RegistryFailed {
            registry: "registry-1.docker.io".into(),
            failed_checks: 3,
            since: time::macros::datetime!(2026-11-08 03:00 UTC),
            containers: vec!["gitea".into(), "postgres".into()],
            reason: "GET https://registry-1.docker.io/v2/: connection timed out".into(),
        }
        .into(),
        RegistryRecovered {
            registry: "registry-1.docker.io".into(),
            failed_checks: 3,
            down_for_ms: 1_814_400_000,
        }
        .into(),
        BackupStale {
            newest: Some("20261122T020000Z-0a1b2c".into()),
            newest_at: Some(time::macros::datetime!(2026-11-22 02:00 UTC)),
            max_age_secs: 93_600,
        }
        .into(),
        BackupResumeRequested {
            requested_by: Some("ops@host".into()),
            reason: Some("the old data is not wanted: starting afresh".into()),
        }
        .into(),
        BackupResumed {
            token: "kit-20261130T081800Z-1a2b".into(),
            requested_by: Some("ops@host".into()),
            reason: Some("the old data is not wanted: starting afresh".into()),
            already: false,
        }
        .into(),
        BackupResumeFailed {
            reason: "backups are not paused on this host (no STEWARD_BACKUP_RESTORE_PENDING): nothing to resume".into(),
        }
        .into(),
        NotifySent {
            channel: "email".into(),
            recipients: vec!["ops@example.com".into()],
            title: "[steward] approve gitea 1.22.7?".into(),
            about: vec![event_id],
        }
        .into(),
        NotifyFailed {
            channel: "email".into(),
            about: vec![event_id],
            reason: "connection refused".into(),
            attempts: 5,
            gave_up: true,
        }
        .into(),
        NotifyTestRequested { by: "ops@host".into() }.into(),
        CertsRequested { requested_by: Some("ops@host".into()) }.into(),
        CertsChecked {
            container: "certbot".into(),
            renewed: vec!["git.example.com".into()],
            reloaded: vec!["nginx".into()],
            duration_ms: 12_000,
        }
        .into(),
        CertsFailed {
            container: "certbot".into(),
            reason: "`certbot renew` exited with 1".into(),
            renewed: vec![],
            log_tail: vec!["Challenge failed for domain git.example.com".into()],
        }
        .into(),
        DeployRequested { change: change(), requested_by: Some("webhook".into()) }.into(),
        DeployPinRequested {
            environment: "prod".into(),
            commit: PREVIOUS_COMMIT.into(),
            by: "ops@host".into(),
        }
        .into(),
        DeployPending {
            deploy_id: update_id,
            change: change(),
            previous_commit: Some(PREVIOUS_COMMIT.into()),
            services: vec!["web".into()],
            pinned_by: None,
        }
        .into(),
        DeployDeferred {
            deploy_id: update_id,
            change: change(),
            previous_commit: Some(PREVIOUS_COMMIT.into()),
            services: vec!["web".into()],
            opens: "2026-06-06 03:00".into(),
            approved_by: Some("ops@host".into()),
        }
        .into(),
        DeployApproved { deploy_id: update_id, by: "ops@host".into() }.into(),
        DeployRejected {
            deploy_id: update_id,
            by: "ops@host".into(),
            reason: Some("not during the release freeze".into()),
        }
        .into(),
        DeployStarted {
            deploy_id: update_id,
            change: change(),
            previous_commit: Some(PREVIOUS_COMMIT.into()),
            services: vec!["web".into()],
        }
        .into(),
        DeploySucceeded {
            deploy_id: update_id,
            change: change(),
            previous_commit: Some(PREVIOUS_COMMIT.into()),
            services: vec!["web".into()],
            duration_ms: 41_000,
        }
        .into(),
        DeployFailed {
            deploy_id: Some(update_id),
            change: change(),
            reason: "docker-compose.yml does not parse".into(),
            log_tail: vec!["yaml.parser.ParserError: while parsing a block mapping".into()],
        }
        .into(),
        DeployRolledBack {
            deploy_id: update_id,
            change: change(),
            previous_commit: Some(PREVIOUS_COMMIT.into()),
            services: vec!["web".into()],
            reason: "web: not healthy within 60s: GET http://127.0.0.1:3000/ answered 502".into(),
            log_tail: vec!["panic: cannot connect to database".into()],
            previous_healthy: Some(true),
        }
        .into(),
        DeployWrittenBack {
            update_id,
            environment: "prod".into(),
            branch: "main".into(),
            repository: "https://git.example.com/ops/site.git".into(),
            container: "site-prod-web-1".into(),
            image: "nginx:1.27.4".into(),
            commit: Some(PREVIOUS_COMMIT.into()),
            file: Some("docker-compose.yml".into()),
            key: Some("services.web.image".into()),
            refused: None,
            proposal_branch: None,
            pull_request: None,
        }
        .into(),
    ]
}

const PREVIOUS_COMMIT: &str = "0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5";

/// A push to `main` deployed to `prod`.
fn change() -> Change {
    Change {
        repository: "https://git.example.com/ops/site.git".into(),
        branch: "main".into(),
        environment: "prod".into(),
        commit: "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432".into(),
        author: Some("Ada <ada@example.com>".into()),
        message: Some("web: nginx 1.27".into()),
    }
}
