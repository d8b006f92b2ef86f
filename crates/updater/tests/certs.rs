//! Certificate renewal against the real Docker engine and NATS: a stand-in certbot container
//! (a script that renews when told to, or fails like certbot does) and a stand-in nginx whose
//! reload leaves a mark, both in a scope of the test's own.

use std::time::Duration;

use steward_events::{CertsChecked, CertsFailed, CertsRequested, Event, EventData};
use steward_testkit::docker::{docker, Container};
use steward_testkit::{stored_events, unique_name, TestBus};
use steward_updater::renewal::{Renewal, RenewalConfig};

/// What `certbot renew` does, played by a script: renews the lineage when `/due` exists
/// (a new file under archive/, the live link moved), fails when `/fail` exists.
const FAKE_CERTBOT: &str = r#"
if [ -e /fail ]; then echo "Challenge failed for domain gitea.test" >&2; exit 1; fi
if [ ! -e /due ]; then echo "No renewals were attempted."; exit 0; fi
n=$(( $(cat /n) + 1 ))
echo "cert $n" > /etc/letsencrypt/archive/gitea.test/cert$n.pem
ln -sfn ../../archive/gitea.test/cert$n.pem /etc/letsencrypt/live/gitea.test/cert.pem
echo $n > /n; rm /due; echo "Congratulations, all renewals succeeded"
"#;

/// Its first certificate, as `certbot certonly` leaves it.
const ISSUED: &str =
    "mkdir -p /etc/letsencrypt/archive/gitea.test /etc/letsencrypt/live/gitea.test \
    && echo 'cert 1' > /etc/letsencrypt/archive/gitea.test/cert1.pem \
    && ln -s ../../archive/gitea.test/cert1.pem /etc/letsencrypt/live/gitea.test/cert.pem \
    && echo 'readme' > /etc/letsencrypt/live/README && echo 1 > /n";

struct Stack {
    certbot: Container,
    nginx: Container,
    renewal: Renewal,
    bus: TestBus,
}

async fn stack() -> Stack {
    let scope = unique_name("certs");
    let scope_label = format!("steward.scope={scope}");
    let certbot = Container::run(
        &unique_name("certbot"),
        &[
            "--label",
            &scope_label,
            "--label",
            "steward.certs.renew=sh /renew.sh",
            "steward-test/busybox:latest",
            "sleep",
            "3600",
        ],
    );
    docker(&["exec", &certbot.name, "sh", "-c", ISSUED]);
    docker(&[
        "exec",
        &certbot.name,
        "sh",
        "-c",
        &format!("cat > /renew.sh <<'EOF'\n{FAKE_CERTBOT}\nEOF"),
    ]);
    let nginx = Container::run(
        &unique_name("nginx"),
        &[
            "--label",
            &scope_label,
            "--label",
            "steward.certs.reload=if [ -e /broken ]; then echo 'nginx: [emerg] bad config' >&2; exit 1; fi; echo reloaded >> /reloads",
            "steward-test/busybox:latest",
            "sleep",
            "3600",
        ],
    );
    let bus = TestBus::new("certs").await;
    let cfg = RenewalConfig {
        timeout: Duration::from_secs(30),
        reload_timeout: Duration::from_secs(10),
        scope: Some(scope),
        ..RenewalConfig::default()
    };
    let renewal =
        Renewal::new(bus.bus.clone(), steward_engine::Engine::from_env(), "test".into(), cfg);
    Stack { certbot, nginx, renewal, bus }
}

impl Stack {
    /// A `certs.requested` and the outcome the renewal published for it.
    async fn renew(&self) -> EventData {
        let request = Event::new("test", CertsRequested { requested_by: Some("test".into()) });
        self.renewal.run(Some(&request)).await.expect("published");
        let outcomes: Vec<Event> = stored_events(&self.bus)
            .await
            .into_iter()
            .filter(|e| e.correlation_id == request.correlation_id)
            .collect();
        assert_eq!(outcomes.len(), 1, "one outcome per request: {outcomes:#?}");
        outcomes[0].data.clone()
    }

    fn reloads(&self) -> usize {
        let out = std::process::Command::new("docker")
            .args(["exec", &self.nginx.name, "cat", "/reloads"])
            .output()
            .expect("docker exec");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    fn touch(&self, container: &Container, file: &str) {
        docker(&["exec", &container.name, "touch", file]);
    }
}

#[tokio::test]
async fn nginx_is_reloaded_only_when_a_certificate_changed_and_failures_say_why() {
    let s = stack().await;

    // Nothing due: checked, nothing reloaded.
    let outcome = s.renew().await;
    let EventData::CertsChecked(CertsChecked { renewed, reloaded, container, .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (renewed.len(), reloaded.len(), container.as_str()),
        (0, 0, s.certbot.name.as_str())
    );
    assert_eq!(s.reloads(), 0);

    // Due: renewed, nginx reloaded once; certbot's README beside the lineages is no lineage.
    s.touch(&s.certbot, "/due");
    let outcome = s.renew().await;
    let EventData::CertsChecked(CertsChecked { renewed, reloaded, .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(renewed, ["gitea.test"]);
    assert_eq!(reloaded, std::slice::from_ref(&s.nginx.name));
    assert_eq!(s.reloads(), 1);

    // Renewed before: nothing due again, no second reload.
    let outcome = s.renew().await;
    assert!(matches!(&outcome, EventData::CertsChecked(c) if c.renewed.is_empty()), "{outcome:?}");
    assert_eq!(s.reloads(), 1);

    // certbot fails: the reason and its output, and no reload.
    s.touch(&s.certbot, "/fail");
    let outcome = s.renew().await;
    let EventData::CertsFailed(CertsFailed { reason, log_tail, renewed, .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("exited with 1"), "{reason}");
    assert!(log_tail.iter().any(|l| l.contains("Challenge failed")), "{log_tail:?}");
    assert!(renewed.is_empty());
    assert_eq!(s.reloads(), 1);
    docker(&["exec", &s.certbot.name, "rm", "/fail"]);

    // A renewal whose reload fails: the renewed lineage and nginx's complaint.
    s.touch(&s.certbot, "/due");
    s.touch(&s.nginx, "/broken");
    let outcome = s.renew().await;
    let EventData::CertsFailed(CertsFailed { reason, log_tail, renewed, container }) = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(container, s.nginx.name);
    assert_eq!(renewed, ["gitea.test"]);
    assert!(reason.starts_with("reload"), "{reason}");
    assert!(log_tail.iter().any(|l| l.contains("bad config")), "{log_tail:?}");
}

#[tokio::test]
async fn a_request_without_a_certbot_container_gets_a_clear_failure() {
    let bus = TestBus::new("nocerts").await;
    let cfg = RenewalConfig { scope: Some(unique_name("empty")), ..RenewalConfig::default() };
    let renewal =
        Renewal::new(bus.bus.clone(), steward_engine::Engine::from_env(), "test".into(), cfg);
    let request = Event::new("test", CertsRequested::default());
    renewal.run(Some(&request)).await.expect("published");
    let events = stored_events(&bus).await;
    let failed = events
        .iter()
        .find_map(|e| match &e.data {
            EventData::CertsFailed(f) if e.correlation_id == request.correlation_id => Some(f),
            _ => None,
        })
        .expect("certs.failed");
    assert!(failed.reason.contains("steward.certs.renew"), "{}", failed.reason);
    // The schedule finds nothing to do and says nothing.
    renewal.run(None).await.expect("ran");
    assert_eq!(stored_events(&bus).await.len(), events.len());
}

/// Issue 26 (silence is an alarm): a stack whose nginx reloads certificates, its certbot
/// container gone: the scheduled run says so (it only logged before).
#[tokio::test]
async fn a_scheduled_run_says_when_the_certbot_container_is_gone_but_nginx_needs_certificates() {
    let s = stack().await;
    let Stack { certbot, nginx, renewal, bus } = s;
    drop(certbot);
    renewal.run(None).await.expect("ran");
    let failed: Vec<_> = stored_events(&bus)
        .await
        .into_iter()
        .filter_map(|e| match e.data {
            EventData::CertsFailed(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(failed[0].reason.contains("steward.certs.renew"), "{}", failed[0].reason);
    assert!(failed[0].reason.contains(&nginx.name), "names who needs them: {}", failed[0].reason);
}
