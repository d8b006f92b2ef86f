//! Certificate expiry, read where the stack's certificates live: the live directory of the
//! container labelled `steward.certs.renew` (`steward.certs.path`, default
//! `/etc/letsencrypt/live`), the same place the updater's renewal reads.
//!
//! Through the archive API: the live directory's tar holds only certbot's links
//! (`LINEAGE/fullchain.pem -> ../../archive/LINEAGE/fullchainN.pem`), then each lineage's
//! `fullchain.pem` is read alone, following its link. Private keys are never read.

use std::time::Duration;

use futures::StreamExt;
use steward_engine::Engine;
use steward_events::{CertExpiring, CertRenewed, Level};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{Finding, Report, Seen};

/// Largest tar read for a live directory or one certificate file: certbot's are a few KiB.
const MAX_TAR: usize = 4 << 20;

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The archive read failed (engine error, or the path does not exist).
    #[error("cannot read {path} in {container}: {reason}")]
    Read {
        /// Container.
        container: String,
        /// Path in it.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Not a tar, or not one the engine would make.
    #[error("cannot unpack {path}: {reason}")]
    Tar {
        /// Path in the container.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No certificate in the file, or not one X.509 can read.
    #[error("{path} holds no readable certificate: {reason}")]
    Pem {
        /// Path in the container.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `notAfter`.
    pub not_after: OffsetDateTime,
    /// DNS names (SANs), else the subject's common name.
    pub names: Vec<String>,
}

/// Reads the first certificate of a PEM file (a full chain starts with the leaf).
pub fn parse_pem(path: &str, bytes: &[u8]) -> Result<CertInfo, CertError> {
    let bad = |reason: String| CertError::Pem { path: path.to_owned(), reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| bad(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!("its first block is {:?}, not CERTIFICATE", pem.label)));
    }
    parse_der(path, &pem.contents)
}

/// Reads one DER certificate (`what` names it in the error: a path, or a served endpoint).
pub fn parse_der(what: &str, der: &[u8]) -> Result<CertInfo, CertError> {
    let bad = |reason: String| CertError::Pem { path: what.to_owned(), reason };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let not_after = cert.validity().not_after.to_datetime();
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    if names.is_empty() {
        names.extend(
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned),
        );
    }
    Ok(CertInfo { not_after, names })
}

/// The level of a certificate expiring at `not_after`, seen at `now`.
pub fn level(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    warn: Duration,
    critical: Duration,
) -> Option<Level> {
    let left = not_after - now;
    if left < critical {
        Some(Level::Critical)
    } else if left < warn {
        Some(Level::Warning)
    } else {
        None
    }
}

/// What a certificate read at `now` says: `health.cert_expiring` at its level while within
/// the thresholds, `health.cert_renewed` once it is not (a file or a served certificate alike).
pub fn expiry_finding(
    key: String,
    container: &str,
    certificate: String,
    info: &CertInfo,
    now: OffsetDateTime,
    (warn, critical): (Duration, Duration),
) -> Finding {
    let level = level(info.not_after, now, warn, critical);
    let days_left = (info.not_after - now).whole_days();
    Finding {
        key,
        seen: level.map_or(Seen::Fine, Seen::Alert),
        alert: level.map(|level| {
            CertExpiring {
                container: container.to_owned(),
                certificate: certificate.clone(),
                names: info.names.clone(),
                not_after: info.not_after,
                days_left,
                level,
            }
            .into()
        }),
        recovery: Some(
            CertRenewed {
                container: container.to_owned(),
                certificate,
                not_after: Some(info.not_after),
            }
            .into(),
        ),
    }
}

/// A lineage's `fullchain.pem` in a live directory's tar: the lineage and where the file
/// really is (its link resolved against the lineage's directory, or the file itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Directory name, e.g. `git.example.com`.
    pub name: String,
    /// `LIVE/LINEAGE/fullchain.pem`: how the condition is named.
    pub file: String,
    /// The absolute path to read (a link's target).
    pub target: String,
}

/// The lineages of a live directory `live` (absolute, no trailing `/`) from its tar.
pub fn lineages(live: &str, tar_bytes: &[u8]) -> Result<Vec<Lineage>, CertError> {
    let bad = |e: std::io::Error| CertError::Tar { path: live.to_owned(), reason: e.to_string() };
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = vec![];
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        // `live/LINEAGE/fullchain.pem`: the tar is named after the directory's last part.
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let [_, lineage, "fullchain.pem"] = parts[..] else { continue };
        let dir = format!("{live}/{lineage}");
        let target = match entry.link_name().map_err(bad)? {
            Some(link) => resolve(&dir, &link.to_string_lossy()),
            None => Some(format!("{dir}/fullchain.pem")),
        };
        let Some(target) = target else { continue };
        out.push(Lineage {
            name: lineage.to_owned(),
            file: format!("{dir}/fullchain.pem"),
            target,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `link` (absolute, or relative to `dir`) as a normalized absolute path; `None` if it climbs
/// above `/`.
fn resolve(dir: &str, link: &str) -> Option<String> {
    let joined = if link.starts_with('/') { link.to_owned() } else { format!("{dir}/{link}") };
    let mut parts: Vec<&str> = vec![];
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The single regular file of a tar (the archive API's answer for a file path).
fn only_file(path: &str, tar_bytes: &[u8]) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    let bad = |reason: String| CertError::Tar { path: path.to_owned(), reason };
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.header().entry_type().is_file() {
            let mut bytes = vec![];
            entry.take(MAX_TAR as u64).read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
            return Ok(bytes);
        }
    }
    Err(bad("no regular file in it (a link to a missing file?)".into()))
}

/// Reads `path` of `container` through the archive API, bounded.
async fn read_tar(engine: &Engine, container: &str, path: &str) -> Result<Vec<u8>, CertError> {
    let mut stream = engine.download_path(container, path);
    let mut bytes = vec![];
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CertError::Read {
            container: container.to_owned(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if bytes.len().saturating_add(chunk.len()) > MAX_TAR {
            return Err(CertError::Read {
                container: container.to_owned(),
                path: path.to_owned(),
                reason: format!("larger than {MAX_TAR} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Checks every certificate in `live` of `container`.
pub async fn check(
    engine: &Engine,
    container: &str,
    live: &str,
    now: OffsetDateTime,
    warn: Duration,
    critical: Duration,
) -> Report {
    let prefix = format!("cert|{container}|");
    let listing = match read_tar(engine, container, live).await {
        Ok(bytes) => lineages(live, &bytes),
        Err(e) => Err(e),
    };
    let lineages = match listing {
        Ok(l) => l,
        Err(e) => {
            // Nothing is known: open conditions of this container stay as they are.
            tracing::warn!(%container, error = %e, "cannot list the certificates");
            return Report::default();
        }
    };
    let mut findings = vec![];
    for lineage in lineages {
        let key = format!("{prefix}{}", lineage.file);
        let info = match read_tar(engine, container, &lineage.target).await {
            Ok(bytes) => {
                only_file(&lineage.target, &bytes).and_then(|b| parse_pem(&lineage.target, &b))
            }
            Err(e) => Err(e),
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(%container, certificate = %lineage.file, error = %e, "cannot read a certificate");
                findings.push(Finding::unknown(key));
                continue;
            }
        };
        findings.push(expiry_finding(
            key,
            container,
            lineage.file.clone(),
            &info,
            now,
            (warn, critical),
        ));
    }
    Report { findings, covers: vec![prefix] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = |path: &str, target: &str| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, path, target).expect("link");
        };
        link("live/git.example.com/fullchain.pem", "../../archive/git.example.com/fullchain3.pem");
        link("live/git.example.com/privkey.pem", "../../archive/git.example.com/privkey3.pem");
        link("live/evil/fullchain.pem", "../../../../../../x");
        link("live/abs/fullchain.pem", "/srv/certs/abs.pem");
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "live/README", &b"hi\n"[..]).expect("file");
        builder.into_inner().expect("tar")
    }

    #[test]
    fn lineages_follow_certbots_links_and_never_above_the_root() {
        let found = lineages("/etc/letsencrypt/live", &live_tar()).expect("tar");
        let targets: Vec<_> = found.iter().map(|l| (l.name.as_str(), l.target.as_str())).collect();
        assert_eq!(
            targets,
            [
                ("abs", "/srv/certs/abs.pem"),
                ("git.example.com", "/etc/letsencrypt/archive/git.example.com/fullchain3.pem"),
            ]
        );
        assert_eq!(found[1].file, "/etc/letsencrypt/live/git.example.com/fullchain.pem");
        assert!(lineages("/x", &[7u8; 1024]).is_err(), "garbage is an error, not a panic");
    }

    #[test]
    fn a_certificate_says_when_it_expires_and_for_which_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["git.example.com".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let key = rcgen::KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("cert").pem();
        let info = parse_pem("f", pem.as_bytes()).expect("parses");
        assert_eq!(info.names, ["git.example.com"]);
        assert_eq!(info.not_after.date(), time::macros::date!(2031 - 05 - 06));
        assert!(
            parse_pem("f", key.serialize_pem().as_bytes()).is_err(),
            "a key is not a certificate"
        );
        assert!(parse_pem("f", b"garbage").is_err());
    }

    #[test]
    fn levels_follow_the_thresholds() {
        let now = OffsetDateTime::now_utc();
        let (w, c) = (Duration::from_secs(14 * 86_400), Duration::from_secs(3 * 86_400));
        let at = |days: i64| now + time::Duration::days(days);
        assert_eq!(level(at(30), now, w, c), None);
        assert_eq!(level(at(13), now, w, c), Some(Level::Warning));
        assert_eq!(level(at(2), now, w, c), Some(Level::Critical));
        assert_eq!(level(at(-1), now, w, c), Some(Level::Critical), "expired");
    }
}
