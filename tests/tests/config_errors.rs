//! A service started with a bad setting exits non-zero with one line naming the variable.

use std::process::Command;

use steward_system_tests::{binary, SERVICES};

fn run(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(binary(name))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_service_names_the_bad_variable_on_one_line() {
    for name in SERVICES {
        let (code, stderr) = run(name, &[("STEWARD_HTTP_ADDR", "not-an-address")]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: exactly one line: {stderr:?}");
        assert!(
            stderr.starts_with(&format!(
                "{name}: invalid configuration: STEWARD_HTTP_ADDR=\"not-an-address\""
            )),
            "{stderr}"
        );
    }
}

#[test]
fn several_bad_variables_are_all_named_on_that_line() {
    let (code, stderr) = run(
        "steward-updater",
        &[
            ("STEWARD_NATS_URL", "nats://bad host:4222"),
            ("STEWARD_MAX_DELIVER", "0"),
            ("STEWARD_LOG_FORMAT", "xml"),
            ("DOCKER_HOST", "/var/run/docker.sock"),
            ("STEWARD_ACK_WAIT", "soon"),
        ],
    );
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    for var in [
        "STEWARD_NATS_URL",
        "STEWARD_MAX_DELIVER",
        "STEWARD_LOG_FORMAT",
        "DOCKER_HOST",
        "STEWARD_ACK_WAIT",
    ] {
        assert!(stderr.contains(var), "{var} not named: {stderr}");
    }
}

#[test]
fn an_unreadable_secret_file_is_named() {
    let (code, stderr) =
        run("steward-notifier", &[("STEWARD_NATS_URL_FILE", "/nonexistent/secret")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("STEWARD_NATS_URL_FILE=\"/nonexistent/secret\": cannot read file"),
        "{stderr}"
    );
}

#[test]
fn notifier_and_approval_settings_are_checked_without_echoing_secrets() {
    let (code, stderr) = run("steward-notifier", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no channel configured"), "{stderr}");

    let (code, stderr) = run(
        "steward-notifier",
        &[("STEWARD_SMTP_URL", "smtp://ops:hunter2@127.0.0.1:2525"), ("STEWARD_MAIL_TO", "ops")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("STEWARD_MAIL_FROM") && stderr.contains("STEWARD_MAIL_TO"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the SMTP password leaked: {stderr}");

    let (code, stderr) = run(
        "steward-updater",
        &[
            ("STEWARD_PUBLIC_URL", "https://git.example.com/steward"),
            ("STEWARD_APPROVAL_SECRET", "short-secret"),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("STEWARD_APPROVAL_SECRET") && stderr.contains("at least 32"),
        "{stderr}"
    );
    assert!(!stderr.contains("short-secret"), "the secret leaked: {stderr}");
}

/// Issue 17, item 7: what would expose a secret or an approval token is refused at start, with
/// one line naming the variable, and that line never quotes the secret.
#[test]
fn insecure_transports_and_unbounded_links_are_configuration_errors() {
    let (code, stderr) = run(
        "steward-notifier",
        &[
            ("STEWARD_SMTP_URL", "smtp://ops:hunter2@mail.example.com:587"),
            ("STEWARD_MAIL_FROM", "steward@example.com"),
            ("STEWARD_MAIL_TO", "ops@example.com"),
        ],
    );
    assert_eq!(code, Some(2), "a plain-text SMTP password was accepted: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("STEWARD_SMTP_URL=\"smtp://***@mail.example.com:587\"")
            && stderr.contains("unencrypted"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the SMTP password leaked: {stderr}");

    let (code, stderr) = run(
        "steward-updater",
        &[
            ("STEWARD_PUBLIC_URL", "http://git.example.com/steward"),
            ("STEWARD_APPROVAL_SECRET", "0123456789abcdef0123456789abcdef"),
            ("STEWARD_APPROVAL_TTL", "30d"),
        ],
    );
    assert_eq!(code, Some(2), "an http public URL and a 30-day TTL were accepted: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    for var in ["STEWARD_PUBLIC_URL=\"http://git.example.com/steward\"", "STEWARD_APPROVAL_TTL"] {
        assert!(stderr.contains(var), "{var} not named: {stderr}");
    }
}

#[test]
fn a_nats_url_with_credentials_is_never_echoed() {
    for url in ["nats://steward:hunter2@bad host:4222", "steward:hunter2@bad host:4222"] {
        let (code, stderr) = run("steward-watcher", &[("STEWARD_NATS_URL", url)]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("STEWARD_NATS_URL="), "{stderr}");
        assert!(!stderr.contains("hunter2"), "the NATS password leaked: {stderr}");
    }
}

/// A server that never answers: the service gives up after its connect timeout (30 s), and
/// neither its log nor its last line quotes the password of the URL.
#[test]
fn a_failed_connection_does_not_echo_the_nats_password() {
    let port = steward_testkit::free_port();
    let url = format!("nats://steward:hunter2@127.0.0.1:{port}");
    let run_with = |webhook: &str| {
        let out = Command::new(binary("steward-notifier"))
            .env_clear()
            .env("STEWARD_NATS_URL", &url)
            .env("STEWARD_WEBHOOK_URL", webhook)
            .output()
            .expect("run the notifier");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run_with("http://127.0.0.1:9/hook");
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("hunter2"), "the NATS password leaked: {text}");
    // A token in the webhook's URL is refused (it would end up in proxy and server logs),
    // without being quoted.
    let (code, text) = run_with("http://127.0.0.1:9/hook?token=hunter3");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("STEWARD_WEBHOOK_TOKEN"), "{text}");
    for secret in ["hunter2", "hunter3"] {
        assert!(!text.contains(secret), "{secret}: {text}");
    }
}

/// Issue 18: the CLI reads the settings it shares with the services through the same readers
/// (`steward_settings`, `BusConfig::read`, `S3Config::read`), so what a service refuses the CLI
/// refuses too, before it connects anywhere, with the same words and exit code 2, whether the
/// value comes from the variable or from the flag that stands for it.
#[test]
fn the_cli_refuses_what_the_services_refuse_with_the_same_words() {
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(binary("steward"))
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run steward {args:?}: {e}"));
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The service's words for a setting: its part of the service's one error line.
    let said_by = |service: &str, var: &str, value: &str| {
        let (code, stderr) = run(service, &[(var, value)]);
        assert_eq!(code, Some(2), "{service} accepted {var}={value:?}: {stderr}");
        let from = stderr.find(&format!("{var}=")).unwrap_or_else(|| panic!("{stderr}"));
        let part = stderr[from..].split("; ").next().unwrap_or_default().trim_end().to_owned();
        assert!(part.len() > var.len() + 5, "{stderr}");
        part
    };

    let bad_url = "nats://steward:hunter2@bad host:4222";
    let expected = said_by("steward-watcher", "STEWARD_NATS_URL", bad_url);
    for (args, env) in [
        (vec!["status"], vec![("STEWARD_NATS_URL", bad_url)]),
        (vec!["--nats-url", bad_url, "updates"], vec![]),
        (vec!["setup"], vec![("STEWARD_NATS_URL", bad_url)]),
    ] {
        let (code, stderr) = cli(&args, &env);
        assert_eq!(code, Some(2), "steward {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
        assert!(stderr.starts_with("steward: invalid configuration: "), "{stderr}");
        assert!(stderr.contains(&expected), "steward {args:?} said {stderr:?}, not {expected:?}");
        assert!(!stderr.contains("hunter2"), "the NATS password leaked: {stderr}");
    }

    let expected = said_by("steward-watcher", "STEWARD_STREAM", "no spaces");
    let (code, stderr) = cli(&["--stream", "no spaces", "status"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr:?}, not {expected:?}");

    let (code, stderr) =
        cli(&["setup"], &[("STEWARD_MAX_DELIVER", "0"), ("STEWARD_ACK_WAIT", "0s")]);
    assert_eq!(code, Some(2), "setup accepted what the services refuse: {stderr}");
    for var in ["STEWARD_MAX_DELIVER=\"0\"", "STEWARD_ACK_WAIT="] {
        assert!(stderr.contains(var), "{var} not named: {stderr}");
    }

    let expected = said_by("steward-backup", "STEWARD_S3_BUCKET", "Bad_Bucket");
    for (args, env) in [
        (vec!["backup", "list"], vec![("STEWARD_S3_BUCKET", "Bad_Bucket")]),
        (vec!["backup", "list", "--bucket", "Bad_Bucket"], vec![("STEWARD_S3_BUCKET", "good")]),
    ] {
        let (code, stderr) = cli(&args, &env);
        assert_eq!(code, Some(2), "steward {args:?}: {stderr}");
        assert!(stderr.contains(&expected), "steward {args:?} said {stderr:?}, not {expected:?}");
    }
    let (code, stderr) = cli(&["backup", "list"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("STEWARD_S3_BUCKET is required but not set"), "{stderr}");
}

#[test]
fn an_agent_refuses_a_host_that_is_not_a_subject_token() {
    for name in ["steward-watcher", "steward-updater", "steward-backup", "steward-health"] {
        let (code, stderr) = run(name, &[("STEWARD_HOST", "vps1.example.org")]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("STEWARD_HOST=\"vps1.example.org\": 1 to 63 of a-z, 0-9"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_bad_host_table_or_a_host_outside_it_is_refused_before_anything_runs() {
    for name in SERVICES {
        let (code, stderr) = run(name, &[("STEWARD_HOSTS", "vps-1,vps_1")]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(stderr.contains("STEWARD_HOSTS=\"vps-1,vps_1\""), "{name}: {stderr}");
        assert!(stderr.contains("one host to NATS"), "{name}: {stderr}");
    }
    // An agent whose host the table does not name would read nothing: it stops and says so.
    let (code, stderr) =
        run("steward-watcher", &[("STEWARD_HOSTS", "vps-a,vps-b"), ("STEWARD_HOST", "vps-c")]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("host \"vps-c\" is not in STEWARD_HOSTS (vps-a,vps-b)"), "{stderr}");
}
