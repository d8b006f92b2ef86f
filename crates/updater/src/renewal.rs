//! Certificate renewal: weekly (and on `certs.requested`), run the renewal command in the
//! container labelled `steward.certs.renew` (certbot), and reload the containers labelled
//! `steward.certs.reload` (nginx) only when a certificate changed.
//!
//! "Changed" is read from the engine, not from certbot's output (which differs between
//! versions): the live certificates directory is read through the archive API before and
//! after, and each lineage (a directory under it) is fingerprinted by its entries' names,
//! link targets, sizes, times and contents. certbot renews by writing new files under
//! `archive/` and repointing the `live/` links, so a renewed lineage always fingerprints
//! differently, and an untouched one never does.
//!
//! Outcome: `certs.checked` (what was renewed and reloaded; both empty when nothing was due)
//! or `certs.failed` (the command's or the reload's exit and last log lines). A renewal that
//! fails for one lineage after renewing another still reloads, then reports the failure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use steward_bus::Bus;
use steward_engine::Engine;
use steward_events::{CertsChecked, CertsFailed, Event, EventData};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A live directory larger than this is not a certbot `live/` (links and a README).
const MAX_LIVE_BYTES: usize = 8 << 20;
/// Output lines kept for the failure event.
const TAIL: usize = 20;

/// The renewal job's settings.
#[derive(Debug, Clone)]
pub struct RenewalConfig {
    /// When it runs by itself.
    pub schedule: croner::Cron,
    /// How long the renewal command may run.
    pub timeout: Duration,
    /// How long a reload command may run.
    pub reload_timeout: Duration,
    /// Only containers of this installation (`steward.scope`).
    pub scope: Option<String>,
}

/// The certificate renewal job.
#[derive(Clone)]
pub struct Renewal {
    bus: Bus,
    engine: Engine,
    source: String,
    cfg: RenewalConfig,
    /// One renewal at a time (the schedule and a request may coincide).
    running: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Lineage name → fingerprint.
type Fingerprints = BTreeMap<String, [u8; 32]>;

/// A container's part, as its labels say.
struct Labelled {
    name: String,
    command: String,
    path: String,
}

impl Renewal {
    /// The job; [`Renewal::run_schedule`] starts its schedule.
    pub fn new(bus: Bus, engine: Engine, source: String, cfg: RenewalConfig) -> Self {
        Self { bus, engine, source, cfg, running: Arc::default() }
    }

    /// Runs on the schedule until `shutdown`.
    pub async fn run_schedule(self, shutdown: tokio_util::sync::CancellationToken) {
        let schedule = self.cfg.schedule.clone();
        steward_runtime::on_schedule(schedule, shutdown, "certs", || async {
            if let Err(e) = self.run(None).await {
                tracing::error!(error = %e, "could not publish the certificate renewal's outcome");
            }
        })
        .await
    }

    /// One renewal. `cause` is the request, if any. Without one and without a labelled
    /// container there is nothing to report (most stacks have no certbot), unless a container
    /// reloads certificates (`steward.certs.reload`): that stack has certificates to renew,
    /// and their renewer is gone (every scheduled run says so until it is back).
    pub async fn run(&self, cause: Option<&Event>) -> Result<(), steward_bus::BusError> {
        let _one = self.running.lock().await;
        let (renewers, reloaders) = match self.labelled().await {
            Ok(found) => found,
            Err(reason) => {
                return self.publish(cause, failed("-", reason, vec![], vec![])).await;
            }
        };
        if renewers.is_empty() {
            if cause.is_some() || !reloaders.is_empty() {
                let users: Vec<&str> = reloaders.iter().map(|r| r.name.as_str()).collect();
                let mut reason = format!(
                    "no running container is labelled {} (the certbot container)",
                    steward_labels::CERTS_RENEW
                );
                if !users.is_empty() {
                    reason.push_str(&format!(
                        ", yet {} reloads certificates: they will expire unrenewed",
                        users.join(", ")
                    ));
                }
                return self.publish(cause, failed("-", reason, vec![], vec![])).await;
            }
            tracing::debug!("no container labelled for certificate renewal");
            return Ok(());
        }
        for renewer in &renewers {
            let outcome = self.renew(renewer, &reloaders).await;
            self.publish(cause, outcome).await?;
        }
        Ok(())
    }

    async fn renew(&self, renewer: &Labelled, reloaders: &[Labelled]) -> EventData {
        let started = Instant::now();
        let name = renewer.name.as_str();
        let before = match self.fingerprints(name, &renewer.path).await {
            Ok(f) => f,
            Err(reason) => return failed(name, reason, vec![], vec![]),
        };
        let problem = self.run_in(name, &renewer.command, self.cfg.timeout).await.err();
        let renewed = match self.fingerprints(name, &renewer.path).await {
            Ok(after) => changed(&before, &after),
            Err(reason) => {
                let (reason, tail) = match problem {
                    Some((first, tail)) => (format!("{first}; then {reason}"), tail),
                    None => (reason, vec![]),
                };
                return failed(name, reason, vec![], tail);
            }
        };
        let mut reloaded = vec![];
        if !renewed.is_empty() {
            tracing::info!(container = name, ?renewed, "certificates changed; reloading");
            for r in reloaders {
                match self.reload(r).await {
                    Ok(()) => reloaded.push(r.name.clone()),
                    Err((reason, tail)) => return failed(&r.name, reason, renewed, tail),
                }
            }
        }
        match problem {
            Some((reason, tail)) => failed(name, reason, renewed, tail),
            None => CertsChecked {
                container: name.to_owned(),
                renewed,
                reloaded,
                duration_ms: started.elapsed().as_millis() as u64,
            }
            .into(),
        }
    }

    async fn reload(&self, r: &Labelled) -> Result<(), (String, Vec<String>)> {
        self.run_in(&r.name, &r.command, self.cfg.reload_timeout)
            .await
            .map_err(|(reason, tail)| (format!("reload {reason}"), tail))
    }

    /// A label's command line, run by the container's shell (as `steward.update.pre`): `Ok`
    /// on exit 0, else why not and its last output lines.
    async fn run_in(
        &self,
        container: &str,
        command: &str,
        limit: Duration,
    ) -> Result<(), (String, Vec<String>)> {
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), command.to_owned()];
        match tokio::time::timeout(limit, self.engine.exec(container, cmd, TAIL)).await {
            Ok(Ok(out)) if out.exit_code == 0 => Ok(()),
            Ok(Ok(out)) => {
                Err((format!("`{command}` in {container} exited with {}", out.exit_code), out.tail))
            }
            Ok(Err(e)) => Err((format!("`{command}` in {container} could not run: {e}"), vec![])),
            Err(_) => {
                Err((format!("`{command}` in {container} did not finish within {limit:?}"), vec![]))
            }
        }
    }

    /// The running containers with a renewal command, and those with a reload command.
    async fn labelled(&self) -> Result<(Vec<Labelled>, Vec<Labelled>), String> {
        let scope = self.cfg.scope.clone();
        let listed = self
            .engine
            .running_containers(|l| {
                steward_labels::in_scope(l, scope.as_deref())
                    && (l.contains_key(steward_labels::CERTS_RENEW)
                        || l.contains_key(steward_labels::CERTS_RELOAD))
            })
            .await
            .map_err(|e| e.to_string())?;
        let (mut renewers, mut reloaders) = (vec![], vec![]);
        for c in listed {
            let labels = match steward_labels::certs_labels(&c.labels) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "container skipped");
                    continue;
                }
            };
            if let Some(command) = labels.renew {
                renewers.push(Labelled { name: c.name.clone(), command, path: labels.path });
            }
            if let Some(command) = labels.reload {
                reloaders.push(Labelled { name: c.name, command, path: String::new() });
            }
        }
        renewers.sort_by(|a, b| a.name.cmp(&b.name));
        reloaders.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((renewers, reloaders))
    }

    /// Each lineage under `path` in `container`, fingerprinted.
    async fn fingerprints(&self, container: &str, path: &str) -> Result<Fingerprints, String> {
        let mut stream = self.engine.download_path(container, path);
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("cannot read {path} in {container}: {e}"))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_LIVE_BYTES {
                return Err(format!(
                    "{path} in {container} is over {} MiB: not a certificates directory",
                    MAX_LIVE_BYTES >> 20
                ));
            }
        }
        fingerprint_tar(&bytes).map_err(|e| format!("cannot read {path} in {container}: {e}"))
    }

    async fn publish(
        &self,
        cause: Option<&Event>,
        data: EventData,
    ) -> Result<(), steward_bus::BusError> {
        match &data {
            EventData::CertsFailed(f) => {
                tracing::warn!(container = %f.container, reason = %f.reason, "certificate renewal failed")
            }
            EventData::CertsChecked(c) => {
                tracing::info!(renewed = ?c.renewed, reloaded = ?c.reloaded, "certificate renewal done")
            }
            _ => {}
        }
        let event = match cause {
            Some(cause) => Event::caused_by(cause, self.source.clone(), data),
            None => Event::new(self.source.clone(), data),
        };
        self.bus.publish(&event).await.map(|_| ())
    }
}

fn failed(container: &str, reason: String, renewed: Vec<String>, tail: Vec<String>) -> EventData {
    CertsFailed { container: container.to_owned(), reason, renewed, log_tail: tail }.into()
}

/// Lineages whose fingerprint differs, appeared or vanished.
fn changed(before: &Fingerprints, after: &Fingerprints) -> Vec<String> {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names.into_iter().filter(|n| before.get(*n) != after.get(*n)).cloned().collect()
}

/// The archive API names entries after the directory (`live/<lineage>/cert.pem`): each
/// lineage's entries (name, type, link target, size, mtime, content) hashed in order.
fn fingerprint_tar(bytes: &[u8]) -> std::io::Result<Fingerprints> {
    let mut lineages: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = path.components().skip(1);
        let Some(lineage) = parts.next() else { continue };
        let header = entry.header();
        // Files beside the lineages (certbot's README) are no certificate.
        if parts.next().is_none() && !header.entry_type().is_dir() {
            continue;
        }
        let lineage = lineage.as_os_str().to_string_lossy().into_owned();
        let mut record = Vec::new();
        record.extend_from_slice(path.to_string_lossy().as_bytes());
        record.push(0);
        record.push(header.entry_type().as_byte());
        if let Some(target) = entry.link_name()? {
            record.extend_from_slice(target.to_string_lossy().as_bytes());
        }
        record.push(0);
        record.extend_from_slice(&header.size()?.to_le_bytes());
        record.extend_from_slice(&header.mtime()?.to_le_bytes());
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        record.extend_from_slice(&Sha256::digest(&content));
        lineages.entry(lineage).or_default().push(record);
    }
    Ok(lineages
        .into_iter()
        .map(|(name, mut records)| {
            records.sort();
            let mut hash = Sha256::new();
            for r in &records {
                hash.update((r.len() as u64).to_le_bytes());
                hash.update(r);
            }
            (name, hash.finalize().into())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(entries: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, link, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(1_700_000_000);
            header.set_mode(0o644);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).expect("link");
                }
                None => {
                    header.set_size(content.len() as u64);
                    builder.append_data(&mut header, path, content.as_bytes()).expect("file");
                }
            }
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn only_the_lineage_whose_links_moved_has_changed() {
        let before = live(&[
            ("live/README", None, "readme"),
            ("live/git.example.com/cert.pem", Some("../../archive/git.example.com/cert1.pem"), ""),
            (
                "live/mail.example.com/cert.pem",
                Some("../../archive/mail.example.com/cert1.pem"),
                "",
            ),
        ]);
        let after = live(&[
            ("live/README", None, "readme"),
            ("live/git.example.com/cert.pem", Some("../../archive/git.example.com/cert2.pem"), ""),
            (
                "live/mail.example.com/cert.pem",
                Some("../../archive/mail.example.com/cert1.pem"),
                "",
            ),
            ("live/new.example.com/cert.pem", Some("../../archive/new.example.com/cert1.pem"), ""),
        ]);
        let (b, a) =
            (fingerprint_tar(&before).expect("tar"), fingerprint_tar(&after).expect("tar"));
        assert_eq!(changed(&b, &a), ["git.example.com", "new.example.com"]);
        assert_eq!(changed(&b, &fingerprint_tar(&before).expect("tar")), Vec::<String>::new());
    }

    #[test]
    fn a_rewritten_file_with_the_same_name_is_a_change() {
        let before = live(&[("live/a/privkey.pem", None, "key one")]);
        let after = live(&[("live/a/privkey.pem", None, "key two")]);
        let (b, a) =
            (fingerprint_tar(&before).expect("tar"), fingerprint_tar(&after).expect("tar"));
        assert_eq!(changed(&b, &a), ["a"]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(fingerprint_tar(&[7u8; 1024]).is_err());
    }
}
