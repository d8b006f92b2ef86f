//! The certificates the stack serves, read by a TLS handshake with each endpoint of
//! `steward.health.tls` (`git.example.com@nginx:443`): what clients see, so a renewal that
//! was never reloaded, or a server pointed at the wrong file, shows here while the files in
//! certbot's live directory look fine. The leaf's expiry goes through the same thresholds,
//! event (`health.cert_expiring` / `health.cert_renewed`, `certificate` = `tls://ENDPOINT`) and
//! gauge as the files'.
//!
//! The chain is not verified: the check is there to report an expiring, expired or
//! self-signed certificate, which a verifying client would refuse before it could be read.
//! Only the handshake's own signatures are checked (the server holds the certificate's key),
//! and nothing is sent after the handshake.
//!
//! A NATS server's port (`nats://`, a hub's leaf-node port: an expired certificate there cuts
//! every host's link) sends its `INFO` line in the clear and starts TLS when the client does;
//! the line is read first. One configured to shake hands first sends nothing: after a short
//! silence the handshake starts.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use steward_labels::TlsEndpoint;
use time::OffsetDateTime;

use super::certs::{expiry_finding, parse_der, CertError, CertInfo};
use super::{Finding, Report};

/// Why a served certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No TCP connection (refused, unreachable, name not resolved).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint as labelled.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The handshake failed (not TLS, no common protocol, a bad signature, ...).
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    Handshake {
        /// The endpoint as labelled.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Connection and handshake took longer than the probe timeout.
    #[error("no TLS handshake with {endpoint} within {limit:?}")]
    Timeout {
        /// The endpoint as labelled.
        endpoint: String,
        /// The limit.
        limit: Duration,
    },
    /// The server sent no certificate, or one X.509 cannot read.
    #[error(transparent)]
    Certificate(#[from] CertError),
}

/// Accepts any certificate (see the module's doc) but checks the handshake's signatures.
#[derive(Debug)]
struct ReadOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for ReadOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration of the check. The provider is named, not the process default:
/// the workspace links both of rustls' providers, and then none is the default.
fn client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadOnly(provider)))
        .with_no_client_auth();
    Ok(config)
}

/// The server name to send: the label's, else the host (an IP address sends none).
fn server_name(endpoint: &TlsEndpoint) -> Result<ServerName<'static>, String> {
    let name = endpoint.server_name.as_deref().unwrap_or(&endpoint.host);
    ServerName::try_from(name.to_owned()).map_err(|e| format!("server name {name:?}: {e}"))
}

/// Connects to `endpoint`, completes a handshake, and reads the leaf certificate it was
/// served; all within `limit`.
pub async fn leaf(endpoint: &TlsEndpoint, limit: Duration) -> Result<CertInfo, TlsError> {
    let shown = endpoint.to_string();
    match tokio::time::timeout(limit, handshake(endpoint, &shown)).await {
        Ok(result) => result,
        Err(_) => Err(TlsError::Timeout { endpoint: shown, limit }),
    }
}

async fn handshake(endpoint: &TlsEndpoint, shown: &str) -> Result<CertInfo, TlsError> {
    let failed = |reason: String| TlsError::Handshake { endpoint: shown.to_owned(), reason };
    let name = server_name(endpoint).map_err(failed)?;
    let config = client_config().map_err(|e| failed(e.to_string()))?;
    let mut tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| TlsError::Connect { endpoint: shown.to_owned(), reason: e.to_string() })?;
    if endpoint.nats {
        nats_info(&mut tcp).await.map_err(failed)?;
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector.connect(name, tcp).await.map_err(|e| failed(e.to_string()))?;
    let (_, conn) = stream.get_ref();
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Err(failed("the server sent no certificate".into()));
    };
    Ok(parse_der(&format!("the certificate served at {shown}"), leaf)?)
}

/// How long a NATS server may be silent before the handshake starts without its `INFO` line
/// (`handshake_first`): it sends the line at once otherwise.
const NATS_INFO_WAIT: Duration = Duration::from_millis(500);
/// The largest `INFO` line read: nats-server's are a few hundred bytes (a cluster's list of
/// URLs makes them longer).
const MAX_NATS_INFO: usize = 64 * 1024;

/// Reads a NATS server's `INFO` line, and refuses one that offers no TLS: the handshake that
/// follows would fail on its plain text. Nothing if it says nothing for [`NATS_INFO_WAIT`].
async fn nats_info(tcp: &mut tokio::net::TcpStream) -> Result<(), String> {
    use tokio::io::AsyncReadExt as _;
    let mut line: Vec<u8> = vec![];
    let mut buf = [0u8; 4096];
    let end = loop {
        let read = match tokio::time::timeout(NATS_INFO_WAIT, tcp.read(&mut buf)).await {
            Err(_) if line.is_empty() => return Ok(()),
            Err(_) => return Err("the NATS server's INFO line stopped halfway".into()),
            Ok(Err(e)) => return Err(format!("reading the NATS server's INFO line: {e}")),
            Ok(Ok(0)) => return Err("the NATS server closed before TLS".into()),
            Ok(Ok(n)) => n,
        };
        line.extend_from_slice(buf.get(..read).unwrap_or_default());
        let head = line.get(..5).unwrap_or(&line);
        if !b"INFO ".starts_with(head) {
            let said = String::from_utf8_lossy(head);
            return Err(format!("not a NATS server: it began with {said:?}, not INFO"));
        }
        // Only where the end can be: a server trickling a byte at a time costs no rescans.
        let from = line.len().saturating_sub(read.saturating_add(1));
        if let Some(end) = line.get(from..).and_then(|l| l.windows(2).position(|w| w == b"\r\n")) {
            break from.saturating_add(end);
        }
        if line.len() > MAX_NATS_INFO {
            return Err(format!("the NATS server's INFO line is over {MAX_NATS_INFO} bytes"));
        }
    };
    if line.len() != end.saturating_add(2) {
        return Err("the NATS server sent more than its INFO line before TLS".into());
    }
    let info: serde_json::Value = line
        .get(5..end)
        .and_then(|json| serde_json::from_slice(json).ok())
        .ok_or("the NATS server's INFO line is not JSON")?;
    let offers = |key: &str| info.get(key).and_then(serde_json::Value::as_bool) == Some(true);
    if !offers("tls_required") && !offers("tls_available") {
        return Err("the NATS server offers no TLS on this port".into());
    }
    Ok(())
}

/// The condition key of an endpoint labelled on `container`.
pub fn key(container: &str, endpoint: &TlsEndpoint) -> String {
    format!("tls|{container}|{endpoint}")
}

/// How a served certificate is named in the events and the gauge: `tls://ENDPOINT`, or a NATS
/// server's endpoint as labelled (`nats://...`).
/// The naming is the event schema's ([`steward_events::served_certificate`], read back by
/// [`steward_events::served_at`]).
pub fn certificate(endpoint: &TlsEndpoint) -> String {
    steward_events::served_certificate(&endpoint.to_string())
}

/// Whether each endpoint answered with a readable certificate this round.
pub type Answers = Vec<(String, String, bool)>;

/// Checks every endpoint of the labelled containers (`(name, endpoints)`): a report, and per
/// endpoint (container, certificate, answered) for the gauge. An endpoint that does not
/// answer is unknown this round (an open condition stays open), said in the log each round.
pub async fn check(
    labelled: &[(String, Vec<TlsEndpoint>)],
    now: OffsetDateTime,
    warn: Duration,
    critical: Duration,
    limit: Duration,
) -> (Report, Answers) {
    let (mut findings, mut answers) = (vec![], vec![]);
    for (container, endpoints) in labelled {
        for endpoint in endpoints {
            let key = key(container, endpoint);
            let certificate = certificate(endpoint);
            let info = match leaf(endpoint, limit).await {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!(%container, endpoint = %endpoint, error = %e, "cannot read the served certificate");
                    answers.push((container.clone(), certificate, false));
                    findings.push(Finding::unknown(key));
                    continue;
                }
            };
            answers.push((container.clone(), certificate.clone(), true));
            findings.push(expiry_finding(
                key,
                container,
                certificate,
                &info,
                now,
                (warn, critical),
            ));
        }
    }
    (Report { findings, covers: vec!["tls|".into()] }, answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Seen;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn endpoint(name: Option<&str>, port: u16) -> TlsEndpoint {
        TlsEndpoint {
            server_name: name.map(str::to_owned),
            host: "127.0.0.1".into(),
            port,
            nats: false,
        }
    }

    /// A listener answering every connection with `reply`, then closing it.
    async fn answering(reply: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        port
    }

    /// A listener sending `said` as soon as a client connects (as a NATS server sends its
    /// INFO line), then holding the connection open.
    async fn speaking_first(said: Vec<u8>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let said = said.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(&said).await;
                    let mut buf = [0u8; 512];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn what_a_nats_port_says_before_tls_is_checked_never_trusted() {
        let nats = |port| TlsEndpoint { nats: true, ..endpoint(None, port) };
        let limit = Duration::from_secs(3);
        let long = [b"INFO {\"x\":\"".as_slice(), &[b'a'; MAX_NATS_INFO + 10]].concat();
        for (said, why) in [
            (b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), "not a NATS server"),
            (b"INFO {not json}\r\n".to_vec(), "not JSON"),
            (b"INFO {\"tls_required\":true}\r\nPING\r\n".to_vec(), "more than its INFO"),
            (b"INFO {\"tls_required\":false}\r\n".to_vec(), "offers no TLS"),
            (b"INFO {\"tls_req".to_vec(), "stopped halfway"),
            (long, "over 65536 bytes"),
        ] {
            let port = speaking_first(said).await;
            let e = leaf(&nats(port), limit).await.expect_err(why);
            assert!(matches!(e, TlsError::Handshake { .. }) && e.to_string().contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn what_is_not_a_tls_server_is_a_clear_error_never_a_panic() {
        let limit = Duration::from_secs(2);
        let http = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let e = leaf(&endpoint(Some("git.example.com"), http), limit).await.expect_err("not TLS");
        assert!(matches!(e, TlsError::Handshake { .. }), "{e}");
        assert!(e.to_string().contains("git.example.com@127.0.0.1:"), "names the endpoint: {e}");

        let closed = answering(b"").await;
        let e = leaf(&endpoint(None, closed), limit).await.expect_err("closed");
        assert!(matches!(e, TlsError::Handshake { .. }), "{e}");

        // A listener that never answers: the limit holds.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let started = std::time::Instant::now();
        let e = leaf(&endpoint(None, port), Duration::from_millis(300)).await.expect_err("silent");
        assert!(matches!(e, TlsError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(silent);

        let free = steward_testkit::free_port();
        let e = leaf(&endpoint(None, free), limit).await.expect_err("nothing listens");
        assert!(matches!(e, TlsError::Connect { .. }), "{e}");
    }

    /// A rustls server on 127.0.0.1 serving a self-signed certificate for `name`, valid for
    /// `days` more; the server names the clients asked for are sent to the returned channel.
    async fn serving(
        name: &str,
        days: i64,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Option<String>>) {
        let now = OffsetDateTime::now_utc();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.not_before = now - time::Duration::days(80);
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(tls.get_ref().1.server_name().map(str::to_owned));
                }
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn the_served_leaf_is_read_with_the_labelled_server_name_and_judged_by_the_thresholds() {
        let (port, mut asked) = serving("git.example.com", 10).await;
        let labelled = vec![(
            "nginx".to_owned(),
            vec![endpoint(Some("git.example.com"), port), endpoint(None, port)],
        )];
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        let (report, answers) =
            check(&labelled, now, 14 * day, 3 * day, Duration::from_secs(5)).await;
        assert_eq!(asked.recv().await, Some(Some("git.example.com".to_owned())), "SNI sent");
        assert_eq!(asked.recv().await, Some(None), "an IP address sends no server name");
        assert_eq!(report.findings.len(), 2);
        let f = &report.findings[0];
        assert_eq!(f.key, format!("tls|nginx|git.example.com@127.0.0.1:{port}"));
        assert_eq!(f.seen, Seen::Alert(steward_events::Level::Warning));
        let Some(steward_events::EventData::CertExpiring(c)) = &f.alert else { panic!("{f:?}") };
        assert_eq!(c.certificate, format!("tls://git.example.com@127.0.0.1:{port}"));
        assert_eq!(c.names, ["git.example.com"]);
        assert!((9..=10).contains(&c.days_left), "{c:?}");
        assert!(answers.iter().all(|a| a.2), "{answers:?}");

        let (port, _asked) = serving("git.example.com", 60).await;
        let fine = vec![("nginx".to_owned(), vec![endpoint(None, port)])];
        let (report, _) = check(&fine, now, 14 * day, 3 * day, Duration::from_secs(5)).await;
        assert_eq!(report.findings[0].seen, Seen::Fine);
        let (port, _asked) = serving("git.example.com", -1).await;
        let expired = vec![("nginx".to_owned(), vec![endpoint(None, port)])];
        let (report, _) = check(&expired, now, 14 * day, 3 * day, Duration::from_secs(5)).await;
        assert_eq!(report.findings[0].seen, Seen::Alert(steward_events::Level::Critical));
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_answer_is_unknown_and_told_in_the_answers() {
        let port = answering(b"garbage").await;
        let labelled = vec![("nginx".to_owned(), vec![endpoint(None, port)])];
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        let (report, answers) =
            check(&labelled, now, 14 * day, 3 * day, Duration::from_secs(2)).await;
        let key = format!("tls|nginx|127.0.0.1:{port}");
        assert_eq!(report.findings, [Finding::unknown(key)]);
        assert_eq!(answers, [("nginx".into(), format!("tls://127.0.0.1:{port}"), false)]);
    }
}
