//! What the host checks measured, on `/metrics`, for Prometheus' alert rules
//! (`compose/monitoring/alerts.yml`): the events say when a condition changes, the gauges say
//! where it stands.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use steward_events::EventData;
use steward_runtime::Metrics;

use super::{Report, Seen};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    container: String,
    certificate: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabel {
    container: String,
}

/// The host checks' gauges.
#[derive(Debug, Clone, Default)]
pub struct HostGauges {
    disk_free: Family<TargetLabel, Gauge>,
    disk_size: Family<TargetLabel, Gauge>,
    cert_expiry: Family<CertLabel, Gauge>,
    config_ok: Family<ContainerLabel, Gauge>,
    tls_ok: Family<CertLabel, Gauge>,
}

fn bytes(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl HostGauges {
    /// Registers the gauges with the service's metrics.
    pub fn register(metrics: &Metrics) -> Self {
        let g = Self::default();
        metrics.register(
            "health_disk_free_bytes",
            "Free bytes of a watched filesystem (the data root or a volume), as df saw it",
            g.disk_free.clone(),
        );
        metrics.register(
            "health_disk_size_bytes",
            "Size in bytes of a watched filesystem",
            g.disk_size.clone(),
        );
        metrics.register(
            "health_cert_expiry_timestamp_seconds",
            "When a watched certificate expires (Unix time): a file in the certbot container's \
             live directory, or one served at a steward.health.tls endpoint (tls://ENDPOINT, or \
             nats://ENDPOINT for a NATS server's port)",
            g.cert_expiry.clone(),
        );
        metrics.register(
            "health_config_ok",
            "1 while a container's configuration check (steward.health.check) passes, else 0",
            g.config_ok.clone(),
        );
        metrics.register(
            "health_tls_handshake_ok",
            "1 while a steward.health.tls endpoint completes a TLS handshake and serves a readable \
             certificate, else 0",
            g.tls_ok.clone(),
        );
        g
    }

    /// Sets the gauges from a round's reports (a condition not measured keeps its value).
    pub fn observe(&self, reports: &[Report]) {
        for finding in reports.iter().flat_map(|r| &r.findings) {
            let data = match finding.seen {
                Seen::Fine => finding.recovery.as_ref(),
                Seen::Alert(_) => finding.alert.as_ref(),
                Seen::Unknown => None,
            };
            match data {
                Some(EventData::DiskLow(d)) => self.disk(&d.target, d.free_bytes, d.total_bytes),
                Some(EventData::DiskRecovered(d)) => {
                    self.disk(&d.target, d.free_bytes, d.total_bytes)
                }
                Some(EventData::CertExpiring(c)) => {
                    self.cert(&c.container, &c.certificate, c.not_after.unix_timestamp())
                }
                Some(EventData::CertRenewed(c)) => {
                    if let Some(at) = c.not_after {
                        self.cert(&c.container, &c.certificate, at.unix_timestamp());
                    }
                }
                Some(EventData::ConfigInvalid(c)) => self.config(&c.container, false),
                Some(EventData::ConfigRecovered(c)) => self.config(&c.container, true),
                _ => {}
            }
        }
    }

    /// Sets whether each TLS endpoint answered this round (`(container, certificate, ok)`).
    pub fn tls(&self, answers: &[(String, String, bool)]) {
        for (container, certificate, ok) in answers {
            let label =
                CertLabel { container: container.clone(), certificate: certificate.clone() };
            self.tls_ok.get_or_create(&label).set(i64::from(*ok));
        }
    }

    fn disk(&self, target: &str, free: u64, size: u64) {
        let label = TargetLabel { target: target.to_owned() };
        self.disk_free.get_or_create(&label).set(bytes(free));
        self.disk_size.get_or_create(&label).set(bytes(size));
    }

    fn cert(&self, container: &str, certificate: &str, not_after: i64) {
        let label =
            CertLabel { container: container.to_owned(), certificate: certificate.to_owned() };
        self.cert_expiry.get_or_create(&label).set(not_after);
    }

    fn config(&self, container: &str, ok: bool) {
        self.config_ok
            .get_or_create(&ContainerLabel { container: container.to_owned() })
            .set(i64::from(ok));
    }
}
