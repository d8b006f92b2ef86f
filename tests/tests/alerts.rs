//! Alerts through the real chain (issue 24): Prometheus (Debian's) evaluates a rule, its
//! Alertmanager (Debian's) posts the group to the real notifier's `POST /alerts` with the
//! bearer token read from a file, and the notifier mails it through the test bed's SMTP
//! server. Posts without the token, with a wrong one, with a body that is not Alertmanager's
//! JSON or too large, are refused and mail nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use steward_system_tests::mail::{mails_to, testbed_maildir, testbed_notifier_env, unique_address};
use steward_system_tests::Proc;
use steward_testkit::{free_port, unique_name, TestBus};

/// A process of the test's own, killed when dropped.
struct Server(Child);

impl Server {
    fn start(program: &str, args: &[String], log: &PathBuf) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (infra/testbed/up.sh installs it)"));
        Self(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_alert_reaches_the_mail_through_alertmanager_and_the_notifier_and_bad_posts_do_not(
) {
    let bus = TestBus::new("alerts").await;
    let to = unique_address("alerts");
    let maildir = testbed_maildir();
    let dir = steward_testkit::TempDir::new("steward-alerts");
    let token: String =
        format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let token_file = dir.0.join("alerts_token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");

    let http = free_port();
    let mut settings = testbed_notifier_env(&to);
    settings.push(("STEWARD_HTTP_ADDR", format!("127.0.0.1:{http}")));
    settings.push(("STEWARD_ALERTS_TOKEN_FILE", token_file.display().to_string()));
    let notifier = Proc::service("steward-notifier", &bus, &settings);

    // Hostile posts first: each refused, none mailed.
    let url = format!("http://127.0.0.1:{http}/alerts");
    let client = reqwest::Client::new();
    let valid = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"Forged"},"annotations":{"summary":"forged"}}]}"#;
    let cases: Vec<(&str, Option<String>, Vec<u8>, u16)> = vec![
        ("no token", None, valid.into(), 401),
        ("a wrong token", Some(format!("Bearer {token}x")), valid.into(), 401),
        ("another scheme", Some(format!("Basic {token}")), valid.into(), 401),
        ("not JSON", Some(format!("Bearer {token}")), b"{not json".to_vec(), 400),
        (
            "another version",
            Some(format!("Bearer {token}")),
            valid.replace("\"4\"", "\"3\"").into_bytes(),
            400,
        ),
        ("2 MiB", Some(format!("Bearer {token}")), vec![b' '; 2 << 20], 413),
    ];
    for (what, auth, body, status) in cases {
        let mut request = client.post(&url).header("content-type", "application/json").body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let got = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.status().as_u16(), status, "{what}");
    }
    // The token is checked before the body is read: a request announcing 2 MiB and sending
    // none of it is answered 401 at once (a server reading the body first would wait). Raw,
    // because an HTTP client still sending its body when the server closes may see only the
    // reset, not the answer.
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http)).await.expect("connect");
        let head = format!(
            "POST /alerts HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            2 << 20
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("no answer without the body: the body is read before the token is checked");
    assert!(answer.starts_with("HTTP/1.1 401"), "2 MiB announced without a token: {answer}");

    // Alertmanager, with the webhook's token from a file as the compose stack gives it.
    let am_port = free_port();
    let am_config = dir.0.join("alertmanager.yml");
    std::fs::write(
        &am_config,
        format!(
            "route:\n  receiver: steward\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 5s\n  repeat_interval: 4h\n\
             receivers:\n  - name: steward\n    webhook_configs:\n      - url: {url}\n        send_resolved: true\n        max_alerts: 50\n\
             \x20       http_config:\n          authorization:\n            credentials_file: {}\n",
            token_file.display()
        ),
    )
    .expect("alertmanager.yml");
    let _am = Server::start(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", am_config.display()),
            format!("--storage.path={}", dir.0.join("am").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
        &dir.0.join("alertmanager.log"),
    );
    // Prometheus with one rule that fires at once, sent to that Alertmanager.
    let summary = unique_name("the test's alert");
    std::fs::write(
        dir.0.join("rules.yml"),
        format!(
            "groups:\n  - name: test\n    rules:\n      - alert: StewardTestAlert\n        expr: vector(1)\n\
             \x20       labels:\n          severity: critical\n        annotations:\n          summary: \"{summary}\"\n\
             \x20         runbook_url: https://example.org/runbook\n"
        ),
    )
    .expect("rules.yml");
    std::fs::write(
        dir.0.join("prometheus.yml"),
        format!(
            "global:\n  evaluation_interval: 1s\nrule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n",
            dir.0.join("rules.yml").display()
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = Server::start(
        "prometheus",
        &[
            format!("--config.file={}", dir.0.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.0.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{}", free_port()),
            // Its first send can come before Alertmanager is discovered; then it resends.
            "--rules.alert.resend-delay=1s".into(),
        ],
        &dir.0.join("prometheus.log"),
    );

    let logs = || {
        format!(
            "notifier: {}\nalertmanager: {}\nprometheus: {}",
            notifier.logs(),
            std::fs::read_to_string(dir.0.join("alertmanager.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.0.join("prometheus.log")).unwrap_or_default()
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mails = loop {
        let got = mails_to(&maildir, &to);
        if !got.is_empty() {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "no mail within 60 s\n{}", logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mail = &mails[0];
    assert!(mail.subject.contains("CRITICAL"), "{}\n{}", mail.subject, logs());
    assert!(mail.subject.contains(&format!("StewardTestAlert: {summary}")), "{}", mail.subject);
    assert!(mail.text.contains("Runbook: https://example.org/runbook"), "{}", mail.text);
    assert!(mail.text.contains("Label severity: critical"), "{}", mail.text);
    // Nothing of the refused posts was mailed; the group is not mailed again before its
    // repeat interval.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let all = mails_to(&maildir, &to);
    assert_eq!(all.len(), 1, "{:?}", all.iter().map(|m| &m.subject).collect::<Vec<_>>());
    assert!(!all[0].text.contains("forged"), "{}", all[0].text);
}
