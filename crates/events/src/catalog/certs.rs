//! Certificate renewal: `certs.requested`, `certs.checked`, `certs.failed`.

use serde::{Deserialize, Serialize};

use super::update::container_payload;
use super::Payload;

/// Run the certificate renewal now (the schedule runs it weekly).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CertsRequested {
    /// Who asked (user@host for the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl Payload for CertsRequested {}

/// The renewal command ran and succeeded; certificates that changed were put in service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertsChecked {
    /// The container the renewal command ran in (the certbot container).
    pub container: String,
    /// Certificate lineages (directories under the certificates path) that changed; empty
    /// when none was due.
    pub renewed: Vec<String>,
    /// Containers whose reload command ran because a certificate changed.
    pub reloaded: Vec<String>,
    /// Wall time.
    pub duration_ms: u64,
}
container_payload!(CertsChecked);

/// The renewal command, or a reload after a renewal, failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertsFailed {
    /// The container whose command failed (or the certbot container).
    pub container: String,
    /// What went wrong.
    pub reason: String,
    /// Lineages that did change before the failure (their reload was still attempted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renewed: Vec<String>,
    /// Last lines of the failing command's output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}
container_payload!(CertsFailed);
