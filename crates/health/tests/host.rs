//! The host checks against the real engine and the real NATS test bed: a broken nginx
//! configuration (Debian's nginx, `nginx -t` by exec), a small tmpfs volume filled up, and
//! certificates (made with rcgen, expiring soon, expired, renewed) in a certbot-like live
//! directory and served by that nginx over TLS. Each condition is one event when it appears or changes level, and one when it
//! clears, in the same flow.

mod common;

use std::time::Duration;

use common::{count, health_events, wait_for_event, wait_for_nth, Running, Volume};
use steward_events::{EventData, Level};
use steward_health::config::{HostConfig, Threshold};
use steward_testkit::docker::{docker, Container};
use steward_testkit::{free_port, unique_name, TestBus};

const BOUND: Duration = Duration::from_secs(30);

fn host(interval_secs: u64) -> HostConfig {
    HostConfig { interval: Duration::from_secs(interval_secs), ..HostConfig::default() }
}

/// Rounds pass; nothing more of `event_type` than `n`.
async fn still(bus: &TestBus, event_type: &str, n: usize) {
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = health_events(bus).await;
    assert_eq!(count(&events, event_type), n, "{event_type} repeated: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_nginx_configuration_is_told_once_and_its_fix_once() {
    let bus = TestBus::new("health-nginx").await;
    let scope = unique_name("scope");
    let nginx = Container::run(
        &unique_name("health-nginx"),
        &[
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            "steward.health.check=true",
            "steward-test/nginx:latest",
        ],
    );
    let _service = Running::start(&bus, common::config(&scope, host(1)), None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(health_events(&bus).await, vec![], "a valid configuration is quiet");

    let bad = "/etc/nginx/conf.d/broken.conf";
    docker(&["exec", &nginx.name, "sh", "-c", &format!("echo 'proxy_pas x;' > {bad}")]);
    let invalid = wait_for_event(&bus, "health.config_invalid", BOUND).await;
    let EventData::ConfigInvalid(c) = &invalid.data else { unreachable!() };
    assert_eq!((c.container.as_str(), c.command.as_str()), (nginx.name.as_str(), "nginx -t"));
    assert_ne!(c.exit_code, 0);
    assert!(
        c.output_tail.iter().any(|l| l.contains("unknown directive") && l.contains("proxy_pas")),
        "the output says what is wrong: {:?}",
        c.output_tail
    );
    still(&bus, "health.config_invalid", 1).await;

    docker(&["exec", &nginx.name, "rm", bad]);
    let recovered = wait_for_event(&bus, "health.config_recovered", BOUND).await;
    assert_eq!(recovered.correlation_id, invalid.correlation_id, "one flow in the audit");
    still(&bus, "health.config_recovered", 1).await;
    let types: Vec<_> = health_events(&bus).await.iter().map(|e| e.data.event_type()).collect();
    assert_eq!(types, ["health.config_invalid", "health.config_recovered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_volume_is_told_at_each_level_once_and_its_recovery_once() {
    let bus = TestBus::new("health-disk").await;
    let scope = unique_name("scope");
    let volume = Volume(unique_name("health-disk"));
    docker(&[
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        "o=size=4m",
        &volume.0,
    ]);
    let app = Container::run(
        &unique_name("health-disk"),
        &[
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            "steward.health.disk=/data",
            "-v",
            &format!("{}:/data", volume.0),
            "steward-test/app:v1",
        ],
    );
    let cfg = HostConfig {
        disk_warn: Threshold::Percent(50),
        disk_critical: Threshold::Bytes(512 * 1024),
        // Warning is left above 60% free (2458 KiB), critical above 896 KiB.
        disk_margin: Threshold::Percent(10),
        ..host(1)
    };
    let service = Running::start(&bus, common::config(&scope, cfg), None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(health_events(&bus).await, vec![], "an empty volume is quiet");
    let target = format!("target=\"volume {}\"", volume.0);
    let free = || common::gauge(&service.metrics_url, "steward_health_disk_free_bytes", &target);
    assert_eq!(free().await, Some(f64::from(4u32 << 20)), "the gauge says where it stands");

    let fill = |name: &str, kib: u32| {
        docker(&[
            "exec",
            &app.name,
            "dd",
            "if=/dev/zero",
            &format!("of=/data/{name}"),
            "bs=1k",
            &format!("count={kib}"),
        ])
    };
    fill("a", 2600);
    let warning = wait_for_event(&bus, "health.disk_low", BOUND).await;
    let EventData::DiskLow(d) = &warning.data else { unreachable!() };
    assert_eq!(d.target, format!("volume {}", volume.0));
    assert_eq!(d.measured_in, format!("{}:/data", app.name));
    assert_eq!(d.level, Level::Warning);
    assert_eq!(d.total_bytes, 4 << 20);
    assert!(d.free_percent < 50 && d.free_bytes > 512 * 1024, "{d:?}");
    still(&bus, "health.disk_low", 1).await;

    fill("b", 1200);
    let critical = wait_for_nth(&bus, "health.disk_low", 1, BOUND).await;
    let EventData::DiskLow(d) = &critical.data else { unreachable!() };
    assert_eq!(d.level, Level::Critical, "{d:?}");
    assert_eq!(critical.correlation_id, warning.correlation_id, "one flow");
    still(&bus, "health.disk_low", 2).await;
    assert!(free().await.is_some_and(|b| b < 512.0 * 1024.0), "{:?}", free().await);

    // Above the critical line plus its margin: back to warning, in the same flow.
    docker(&["exec", &app.name, "rm", "/data/b"]);
    let lower = wait_for_nth(&bus, "health.disk_low", 2, BOUND).await;
    let EventData::DiskLow(d) = &lower.data else { unreachable!() };
    assert_eq!((d.level, lower.correlation_id), (Level::Warning, warning.correlation_id));
    // Above the 50% warning line but within its margin (hovering): no event either way.
    docker(&["exec", &app.name, "truncate", "-s", "1900K", "/data/a"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = health_events(&bus).await;
    assert_eq!(count(&events, "health.disk_low"), 3, "{events:?}");
    assert_eq!(count(&events, "health.disk_recovered"), 0, "hovering is no recovery: {events:?}");
    assert!(free().await.is_some_and(|b| b > 2048.0 * 1024.0), "{:?}", free().await);

    docker(&["exec", &app.name, "rm", "/data/a"]);
    let recovered = wait_for_event(&bus, "health.disk_recovered", BOUND).await;
    let EventData::DiskRecovered(r) = &recovered.data else { unreachable!() };
    assert_eq!(r.free_bytes, 4 << 20, "{r:?}");
    assert_eq!(recovered.correlation_id, warning.correlation_id);
    still(&bus, "health.disk_recovered", 1).await;
}

/// A certbot-like `/etc/letsencrypt` with one lineage whose live `fullchain.pem` links to
/// `archive/LINEAGE/fullchainN.pem`, valid for `days` from now (negative: expired).
fn letsencrypt(dir: &std::path::Path, lineage: &str, n: u32, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::new(vec![lineage.to_owned()]).expect("params");
    params.not_before = now - time::Duration::days(90);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let archive = dir.join("letsencrypt/archive").join(lineage);
    let live = dir.join("letsencrypt/live").join(lineage);
    std::fs::create_dir_all(&archive).expect("archive dir");
    std::fs::create_dir_all(&live).expect("live dir");
    std::fs::write(archive.join(format!("fullchain{n}.pem")), cert.pem()).expect("cert");
    std::fs::write(archive.join(format!("privkey{n}.pem")), key.serialize_pem()).expect("key");
    for file in ["fullchain", "privkey"] {
        let link = live.join(format!("{file}.pem"));
        let _ = std::fs::remove_file(&link);
        let target = format!("../../archive/{lineage}/{file}{n}.pem");
        std::os::unix::fs::symlink(target, &link).expect("link");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_certificate_is_told_at_each_level_once_and_its_renewal_once() {
    let bus = TestBus::new("health-certs").await;
    let scope = unique_name("scope");
    let certbot = Container::run(
        &unique_name("health-certbot"),
        &[
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            "steward.certs.renew=true",
            "steward-test/app:v1",
        ],
    );
    let dir = std::env::temp_dir().join(unique_name("letsencrypt"));
    let lineage = "git.example.com";
    let put = |n: u32, days: i64| {
        letsencrypt(&dir, lineage, n, days);
        let from = format!("{}/letsencrypt", dir.display());
        docker(&["cp", &from, &format!("{}:/etc/", certbot.name)]);
    };
    put(1, 60);
    let _service = Running::start(&bus, common::config(&scope, host(1)), None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(health_events(&bus).await, vec![], "a certificate valid for 60 days is quiet");

    put(2, 10);
    let warning = wait_for_event(&bus, "health.cert_expiring", BOUND).await;
    let EventData::CertExpiring(c) = &warning.data else { unreachable!() };
    let file = format!("/etc/letsencrypt/live/{lineage}/fullchain.pem");
    assert_eq!(
        (c.container.as_str(), c.certificate.as_str()),
        (certbot.name.as_str(), file.as_str())
    );
    assert_eq!(c.names, [lineage]);
    assert_eq!(c.level, Level::Warning);
    assert!((9..=10).contains(&c.days_left), "{c:?}");
    still(&bus, "health.cert_expiring", 1).await;

    put(3, -1);
    let expired = wait_for_nth(&bus, "health.cert_expiring", 1, BOUND).await;
    let EventData::CertExpiring(c) = &expired.data else { unreachable!() };
    assert_eq!(c.level, Level::Critical);
    assert!(c.days_left < 0, "{c:?}");
    assert_eq!(expired.correlation_id, warning.correlation_id, "one flow");
    still(&bus, "health.cert_expiring", 2).await;

    put(4, 90);
    let renewed = wait_for_event(&bus, "health.cert_renewed", BOUND).await;
    let EventData::CertRenewed(r) = &renewed.data else { unreachable!() };
    assert!(r
        .not_after
        .is_some_and(|t| t > time::OffsetDateTime::now_utc() + time::Duration::days(80)));
    assert_eq!(renewed.correlation_id, warning.correlation_id);
    still(&bus, "health.cert_renewed", 1).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A self-signed certificate for `name`, valid for `days` more: (certificate PEM, key PEM).
fn certificate(name: &str, days: i64) -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.not_before = now - time::Duration::days(80);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().expect("key");
    (params.self_signed(&key).expect("cert").pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_certificate_is_read_by_handshake_told_once_per_level_and_its_renewal_once() {
    let bus = TestBus::new("health-tls").await;
    let scope = unique_name("scope");
    let name = "git.example.com";
    let port = free_port();
    let endpoint = format!("{name}@127.0.0.1:{port}");
    let nginx = Container::run(
        &unique_name("health-tls"),
        &[
            "--label",
            &format!("steward.scope={scope}"),
            "--label",
            &format!("steward.health.tls={endpoint}"),
            "-p",
            &format!("127.0.0.1:{port}:443"),
            "steward-test/nginx:latest",
        ],
    );
    let dir = std::env::temp_dir().join(unique_name("tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    // Another server name's certificate on the default server: the check must ask for
    // git.example.com by SNI to get the right one.
    let tls_conf = format!(
        "server {{ listen 443 ssl default_server; ssl_certificate /etc/nginx/tls/other.pem; \
         ssl_certificate_key /etc/nginx/tls/other.key; return 421; }}\n\
         server {{ listen 443 ssl; server_name {name}; \
         ssl_certificate /etc/nginx/tls/fullchain.pem; \
         ssl_certificate_key /etc/nginx/tls/privkey.pem; return 200; }}\n"
    );
    std::fs::write(dir.join("tls.conf"), &tls_conf).expect("conf");
    let (other, other_key) = certificate("other.example.com", 1);
    std::fs::write(dir.join("other.pem"), other).expect("other");
    std::fs::write(dir.join("other.key"), other_key).expect("other key");
    // Puts a certificate valid for `days` in service, as a renewal and `nginx -s reload` do.
    let put = |days: i64| {
        let (cert, key) = certificate(name, days);
        std::fs::write(dir.join("fullchain.pem"), cert).expect("cert");
        std::fs::write(dir.join("privkey.pem"), key).expect("key");
        docker(&["exec", &nginx.name, "mkdir", "-p", "/etc/nginx/tls"]);
        for f in ["fullchain.pem", "privkey.pem", "other.pem", "other.key"] {
            let from = dir.join(f).display().to_string();
            docker(&["cp", &from, &format!("{}:/etc/nginx/tls/{f}", nginx.name)]);
        }
        let conf = dir.join("tls.conf").display().to_string();
        docker(&["cp", &conf, &format!("{}:/etc/nginx/conf.d/tls.conf", nginx.name)]);
        docker(&["exec", &nginx.name, "nginx", "-s", "reload"]);
    };
    put(60);
    let service = Running::start(&bus, common::config(&scope, host(1)), None).await;
    let certificate_label = format!("certificate=\"tls://{endpoint}\"");
    let ok = || {
        common::gauge(&service.metrics_url, "steward_health_tls_handshake_ok", &certificate_label)
    };
    let started = std::time::Instant::now();
    while ok().await != Some(1.0) {
        assert!(started.elapsed() < BOUND, "no handshake with {endpoint}: {:?}", ok().await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expiry = common::gauge(
        &service.metrics_url,
        "steward_health_cert_expiry_timestamp_seconds",
        &certificate_label,
    )
    .await
    .expect("expiry gauge");
    let in_60_days = (time::OffsetDateTime::now_utc() + time::Duration::days(60)).unix_timestamp();
    assert!((expiry - in_60_days as f64).abs() < 3600.0, "{expiry} vs {in_60_days}");
    assert_eq!(health_events(&bus).await, vec![], "a certificate served for 60 more days is quiet");

    put(10);
    let warning = wait_for_event(&bus, "health.cert_expiring", BOUND).await;
    let EventData::CertExpiring(c) = &warning.data else { unreachable!() };
    let served = format!("tls://{endpoint}");
    assert_eq!(
        (c.container.as_str(), c.certificate.as_str()),
        (nginx.name.as_str(), served.as_str())
    );
    assert_eq!(c.names, [name], "the SNI's certificate, not the default server's");
    assert_eq!(c.level, Level::Warning);
    assert!((9..=10).contains(&c.days_left), "{c:?}");

    put(2);
    let critical = wait_for_nth(&bus, "health.cert_expiring", 1, BOUND).await;
    let EventData::CertExpiring(c) = &critical.data else { unreachable!() };
    assert_eq!(c.level, Level::Critical);
    assert_eq!(critical.correlation_id, warning.correlation_id, "one flow");
    still(&bus, "health.cert_expiring", 2).await;

    put(90);
    let renewed = wait_for_event(&bus, "health.cert_renewed", BOUND).await;
    let EventData::CertRenewed(r) = &renewed.data else { unreachable!() };
    assert_eq!(r.certificate, served);
    assert!(r
        .not_after
        .is_some_and(|t| t > time::OffsetDateTime::now_utc() + time::Duration::days(80)));
    assert_eq!(renewed.correlation_id, warning.correlation_id);

    // The endpoint stops speaking TLS: said by the gauge (and the log), no event either way.
    let plain = format!("server {{ listen 443; server_name {name}; return 200; }}\n");
    std::fs::write(dir.join("tls.conf"), plain).expect("conf");
    let conf = dir.join("tls.conf").display().to_string();
    docker(&["cp", &conf, &format!("{}:/etc/nginx/conf.d/tls.conf", nginx.name)]);
    docker(&["exec", &nginx.name, "nginx", "-s", "reload"]);
    let started = std::time::Instant::now();
    while ok().await != Some(0.0) {
        assert!(
            started.elapsed() < BOUND,
            "the failed handshake is not on the gauge: {:?}",
            ok().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let types: Vec<_> = health_events(&bus).await.iter().map(|e| e.data.event_type()).collect();
    assert_eq!(types, ["health.cert_expiring", "health.cert_expiring", "health.cert_renewed"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hub's leaf-node port, where an expired certificate cuts every host's link: real
/// nats-servers with TLS on it, after their `INFO` line (the default, which 2.9 only has) and
/// first (2.10's `handshake_first`), labelled `nats://NAME@HOST:PORT`. The certificate is read and its expiry
/// found, named as labelled. Without `nats://` the same port is a handshake error (what the
/// label could do before); a NATS port offering no TLS is named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_servers_leaf_node_certificate_is_read_after_its_info_line() {
    use steward_health::host::{tls, Seen};
    use steward_labels::TlsEndpoint;
    let dir = steward_testkit::TempDir::new("nats-tls");
    let (cert, key) = certificate("hub.test", 5);
    let (cert_file, key_file) = (dir.0.join("hub.pem"), dir.0.join("hub-key.pem"));
    std::fs::write(&cert_file, cert).expect("certificate");
    std::fs::write(&key_file, key).expect("key");
    let conf = |name: &str, port: u16, tls: &str| {
        let path = dir.0.join(name);
        std::fs::write(
            &path,
            format!("leafnodes {{\n  host: 127.0.0.1\n  port: {port}\n  {tls}\n}}\n"),
        )
        .expect("configuration");
        path
    };
    let tls_block = |first: bool| {
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?} {} }}",
            cert_file.display().to_string(),
            key_file.display().to_string(),
            if first { ", handshake_first: true" } else { "" }
        )
    };
    let endpoint = |port: u16, nats: bool| TlsEndpoint {
        server_name: Some("hub.test".into()),
        host: "127.0.0.1".into(),
        port,
        nats,
    };
    let limit = Duration::from_secs(5);
    let now = time::OffsetDateTime::now_utc();
    let (info_first, tls_first, plain) = (free_port(), free_port(), free_port());
    let _servers = [
        steward_testkit::NatsServer::start_with_config(
            &conf("a.conf", info_first, &tls_block(false)),
            vec![],
        ),
        steward_testkit::NatsServer::start_with_config_on_2_10(&conf(
            "b.conf",
            tls_first,
            &tls_block(true),
        )),
        steward_testkit::NatsServer::start_with_config(&conf("c.conf", plain, ""), vec![]),
    ];
    for port in [info_first, tls_first] {
        let read = tls::leaf(&endpoint(port, true), limit).await;
        let info = read.unwrap_or_else(|e| panic!("port {port}: {e}"));
        assert_eq!(info.names, ["hub.test"]);
        assert_eq!((info.not_after - now).whole_days(), 4, "{:?}", info.not_after);
        let labelled = [("nats-hub".to_owned(), vec![endpoint(port, true)])];
        let week = Duration::from_secs(7 * 86_400);
        let (report, answers) = tls::check(&labelled, now, week * 4, week, limit).await;
        let certificate = format!("nats://hub.test@127.0.0.1:{port}");
        assert_eq!(answers, [("nats-hub".to_owned(), certificate.clone(), true)]);
        assert!(matches!(report.findings[0].seen, Seen::Alert(Level::Critical)), "{report:?}");
        match &report.findings[0].alert {
            Some(EventData::CertExpiring(e)) => assert_eq!(e.certificate, certificate),
            other => panic!("{other:?}"),
        }
    }
    // The INFO-first server's port read as a TLS server's: its INFO line is no TLS record.
    let e = tls::leaf(&endpoint(info_first, false), limit).await.expect_err("INFO is not TLS");
    assert!(matches!(e, tls::TlsError::Handshake { .. }), "{e}");
    let e = tls::leaf(&endpoint(plain, true), limit).await.expect_err("no TLS");
    assert!(e.to_string().contains("offers no TLS"), "{e}");
}
