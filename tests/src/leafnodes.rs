//! What the leaf-node kit's tests share: a private CA for the hub's certificate, and reading
//! the hub's `/leafz`.

use std::net::IpAddr;

/// A CA of the test's own, as an operator makes one for the hub (docs/runbooks.md, "Several
/// hosts on leaf nodes").
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A new CA with its own key.
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "steward test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    /// The CA's certificate, PEM (the leaves' `--tls-ca`).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate it signs for `names` (DNS names, or IP addresses), and its key:
    /// both PEM.
    pub fn server(&self, names: &[&str]) -> (String, String) {
        self.server_until(names, None)
    }

    /// [`server`](Self::server), expiring `days` from now when given.
    pub fn server_until(&self, names: &[&str], days: Option<i64>) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some(days) = days {
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*n).try_into().expect("a DNS name")),
            })
            .collect();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// How many leaf servers a hub's `/leafz` body lists (nats-server 2.9 does not name them).
pub fn linked_leaves(leafz: &[u8]) -> usize {
    let leafz: serde_json::Value = serde_json::from_slice(leafz).unwrap_or_default();
    leafz["leafs"].as_array().map_or(0, Vec::len)
}
