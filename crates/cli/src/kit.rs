//! `steward kit export` / `steward kit import`: what the operator keeps off the host to rebuild
//! it, the compose project directory (`.env`: S3 settings, trusted keys, the project's
//! settings; `secrets/`: the signing key, S3 credentials, passwords, the age identity when it is
//! kept there) with the project's name and directory, as one tar encrypted with age.
//!
//! Encrypted to age recipients (public keys), not a passphrase: the operator of encrypted
//! backups keeps the age identity off the host already, and the same identity opens the kit;
//! exporting needs no secret, so it can run unattended (cron) after every change of `.env`;
//! no passphrase to choose weakly or to type on a host that may be compromised. Without a
//! recipient the export is refused: the kit holds every password of the stack.
//!
//! Invariants: no plaintext byte of the kit is written anywhere; import never overwrites a
//! directory that holds anything, writes only plain files and directories below it (an entry
//! with `..`, an absolute path or a link is refused), and builds it beside the target first,
//! so a refused or broken kit leaves nothing at the target.

use std::io::{self, IsTerminal as _, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

/// The recipients backups are encrypted to, read from `.env` when no `--recipient` is given.
const ENV_RECIPIENTS: &str = "STEWARD_BACKUP_AGE_RECIPIENTS";
/// Where the age identity is, when not given with `--identity` (as for the backup service).
const ENV_IDENTITY_FILE: &str = "STEWARD_BACKUP_AGE_IDENTITY_FILE";
/// The pause a rebuilt host's backups wait under until its restore is done (the backup
/// service's setting of the same name, `steward_backup::pause`).
const ENV_RESTORE_PENDING: &str = "STEWARD_BACKUP_RESTORE_PENDING";
/// What the kit says about itself: the first entry.
const KIT_FILE: &str = "KIT.json";
/// The project's files are under this directory in the tar.
const PROJECT: &str = "project";
/// The largest kit: a compose directory with its secrets is a few KiB; data bind-mounted
/// into the directory belongs in the backups, not here.
const MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, Subcommand)]
pub enum KitCommand {
    /// Write the off-host kit of a compose project (its directory: .env, secrets/, compose
    /// files), encrypted to age recipients, to stdout; says on stderr what it holds.
    Export {
        /// The compose project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// An age recipient (age1...) to encrypt to; repeatable. Default: the
        /// STEWARD_BACKUP_AGE_RECIPIENTS of the directory's .env.
        #[arg(long = "recipient")]
        recipients: Vec<String>,
        /// The compose project's name, if not the directory's (`-p`, COMPOSE_PROJECT_NAME).
        #[arg(long)]
        project: Option<String>,
        /// Leave out this entry of the directory (a name at its top, e.g. a bind-mounted data
        /// directory); repeatable.
        #[arg(long)]
        exclude: Vec<String>,
    },
    /// Put a kit back: the project directory as exported, with backups paused until the
    /// restore is done (STEWARD_BACKUP_RESTORE_PENDING in its .env). Refuses a directory that
    /// holds anything.
    Import {
        /// The kit file (`-`: stdin).
        kit: String,
        /// Where to put the project; default: the directory it was exported from (compose
        /// names the project, its containers and volumes after it).
        dir: Option<PathBuf>,
        /// The age identity file that opens it. Default: STEWARD_BACKUP_AGE_IDENTITY_FILE.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

/// What a kit says about itself.
#[derive(Debug, Serialize, Deserialize)]
struct Described {
    format: u32,
    /// The compose project's name.
    project: String,
    /// The directory it was exported from.
    directory: String,
    exported_at: String,
    exported_by: String,
    /// Every file, relative to the directory.
    files: Vec<String>,
    /// The recipients it is encrypted to.
    recipients: Vec<String>,
}

pub fn run(cmd: KitCommand) -> anyhow::Result<()> {
    match cmd {
        KitCommand::Export { dir, recipients, project, exclude } => {
            export(&dir, &recipients, project, &exclude)
        }
        KitCommand::Import { kit, dir, identity } => import(&kit, dir, identity),
    }
}

/// `KEY=value` lines of a compose `.env`: the value of `key`, unquoted.
fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let (k, v) = line.trim_start().split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_owned())
    })
}

/// Every file and directory below `dir` (relative, sorted), leaving out `exclude` at the top;
/// their total size.
fn walk(dir: &Path, exclude: &[String]) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let mut out = vec![];
    let mut total = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))
            .with_context(|| format!("reading {}", dir.join(&rel).display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", dir.join(&rel).display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = rel.join(e.file_name());
            if rel.as_os_str().is_empty() && exclude.iter().any(|x| Path::new(x) == name) {
                continue;
            }
            let meta = std::fs::symlink_metadata(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            if meta.is_dir() {
                stack.push(name.clone());
                out.push(name);
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
                out.push(name);
            } else {
                bail!(
                    "{} is neither a file nor a directory (a link?): the kit holds plain files only; --exclude it or replace it",
                    e.path().display()
                );
            }
        }
    }
    out.sort();
    Ok((out, total))
}

fn export(
    dir: &Path,
    recipients: &[String],
    project: Option<String>,
    exclude: &[String],
) -> anyhow::Result<()> {
    let dir =
        dir.canonicalize().with_context(|| format!("the project directory {}", dir.display()))?;
    let env_text = std::fs::read_to_string(dir.join(".env")).with_context(|| {
        format!("{} has no readable .env: not a compose project to rebuild from (run as the user that owns secrets/)", dir.display())
    })?;
    if !dir.join("secrets").is_dir() {
        bail!("{} has no secrets/ directory (init-secrets.sh makes it): the kit would not rebuild the stack", dir.display());
    }
    let text = match recipients.is_empty() {
        false => recipients.join(","),
        true => env_value(&env_text, ENV_RECIPIENTS).unwrap_or_default(),
    };
    let parsed = steward_agekeys::parse_recipients(&text).map_err(anyhow::Error::msg)?;
    if parsed.is_empty() {
        bail!("refusing to write the kit unencrypted (it holds every password of the stack): give --recipient age1... (age-keygen makes a key pair; keep its identity off this host), or set {ENV_RECIPIENTS} in .env");
    }
    if io::stdout().is_terminal() {
        bail!("the kit is binary: redirect it to a file (steward kit export > kit.age)");
    }
    let (entries, total) = walk(&dir, exclude)?;
    if total > MAX_BYTES {
        bail!("{} holds {total} bytes, more than a kit should ({MAX_BYTES}): data bind-mounted into it belongs in the backups; --exclude it", dir.display());
    }
    let project = project
        .or_else(|| env_value(&env_text, "COMPOSE_PROJECT_NAME").filter(|p| !p.is_empty()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let files: Vec<String> =
        entries.iter().filter(|p| dir.join(p).is_file()).map(|p| p.display().to_string()).collect();
    let described = Described {
        format: 1,
        project: project.clone(),
        directory: dir.display().to_string(),
        exported_at: now(),
        exported_by: crate::who(),
        files: files.clone(),
        recipients: parsed.iter().map(|r| r.to_string()).collect(),
    };
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .context("encrypting the kit")?;
    let out = io::stdout().lock();
    let encrypted = encryptor.wrap_output(io::BufWriter::new(out)).context("encrypting the kit")?;
    let mut tar = tar::Builder::new(encrypted);
    tar.mode(tar::HeaderMode::Complete);
    let json = serde_json::to_vec_pretty(&described)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
    tar.append_data(&mut header, KIT_FILE, json.as_slice()).context("writing the kit")?;
    for rel in &entries {
        let path = dir.join(rel);
        let name = Path::new(PROJECT).join(rel);
        tar.append_path_with_name(&path, &name)
            .with_context(|| format!("adding {} (readable by this user?)", path.display()))?;
    }
    let encrypted = tar.into_inner().context("writing the kit")?;
    let mut out = encrypted.finish().context("writing the kit")?;
    out.flush().context("writing the kit")?;
    eprint!("{}", holds(&described, &env_text, &dir));
    eprintln!("Keep it OFF this host, with the age identity that opens it (not inside it). Export again after changing .env or secrets/.");
    Ok(())
}

/// What an operator rebuilding the host needs to know the kit has, or lacks.
fn holds(d: &Described, env_text: &str, dir: &Path) -> String {
    let has = |f: &str| d.files.iter().any(|x| x == f);
    let nonempty = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map(|t| t.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
            .unwrap_or(false)
    };
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let setting = |k: &str| env_value(env_text, k).filter(|v| !v.is_empty());
    let secrets: Vec<&str> = d.files.iter().filter_map(|f| f.strip_prefix("secrets/")).collect();
    format!(
        "kit of compose project {} ({}), {} files, encrypted to {}:\n  \
         .env: {}; secrets/: {}\n  \
         backup signing key: {}; trusted keys (STEWARD_BACKUP_TRUSTED_KEYS): {}\n  \
         age identity in secrets/age_identity: {}\n  \
         S3: bucket {}, prefix {}, endpoint {}; credentials in secrets/aws_credentials: {}\n",
        d.project,
        d.directory,
        d.files.len(),
        d.recipients.join(", "),
        yes(has(".env")),
        secrets.join(", "),
        yes(has("secrets/backup_signing_key")),
        setting("STEWARD_BACKUP_TRUSTED_KEYS").map(|_| "yes").unwrap_or("none set"),
        match nonempty("secrets/age_identity") {
            true => "yes",
            false => "no (only comments: keep it off-host; it also opens this kit)",
        },
        setting("STEWARD_S3_BUCKET").unwrap_or_else(|| "NOT SET".into()),
        setting("STEWARD_S3_PREFIX").unwrap_or_else(|| "(default)".into()),
        setting("STEWARD_S3_ENDPOINT").unwrap_or_else(|| "AWS".into()),
        match nonempty("secrets/aws_credentials") {
            true => "yes",
            false => "no (an EC2 instance role, or keys to be put there)",
        },
    )
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A kit's entry name as a path below the project: plain components only.
fn inside(name: &Path) -> anyhow::Result<PathBuf> {
    let rel = name
        .strip_prefix(PROJECT)
        .map_err(|_| anyhow::anyhow!("kit entry {} is outside {PROJECT}/", name.display()))?;
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => bail!("kit entry {} leaves the project directory: refused", name.display()),
        }
    }
    Ok(out)
}

fn import(kit: &str, dir: Option<PathBuf>, identity: Option<PathBuf>) -> anyhow::Result<()> {
    let identity = identity
        .or_else(|| std::env::var_os(ENV_IDENTITY_FILE).map(PathBuf::from))
        .ok_or_else(|| {
            anyhow::anyhow!("no age identity: --identity FILE (the key the kit was exported to)")
        })?;
    let text = std::fs::read_to_string(&identity)
        .with_context(|| format!("reading the age identity {}", identity.display()))?;
    let identities = steward_agekeys::parse_identities(&text).map_err(anyhow::Error::msg)?;
    if identities.is_empty() {
        bail!("{} holds no age identity (AGE-SECRET-KEY-1...)", identity.display());
    }
    let input: Box<dyn Read> = match kit {
        "-" => Box::new(io::stdin().lock()),
        path => Box::new(std::fs::File::open(path).with_context(|| format!("opening {path}"))?),
    };
    let decryptor = age::Decryptor::new(io::BufReader::new(input))
        .context("not an age-encrypted kit (steward kit export writes one)")?;
    let plain = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .context("the kit does not open with this identity")?;
    let mut archive = tar::Archive::new(Capped { inner: plain, left: MAX_BYTES.saturating_mul(2) });
    let mut entries = archive.entries().context("reading the kit")?;
    let described: Described = {
        let mut first = entries
            .next()
            .ok_or_else(|| anyhow::anyhow!("the kit is empty"))?
            .context("reading the kit")?;
        if first.path().context("reading the kit")?.as_ref() != Path::new(KIT_FILE) {
            bail!("not a Steward kit: it does not start with {KIT_FILE}");
        }
        let mut json = vec![];
        first.by_ref().take(1 << 20).read_to_end(&mut json).context("reading the kit")?;
        serde_json::from_slice(&json).context("reading the kit's description")?
    };
    if described.format != 1 {
        bail!("kit format {} is newer than this steward reads (1)", described.format);
    }
    let target = dir.unwrap_or_else(|| PathBuf::from(&described.directory));
    if target.exists() {
        let mut listing = std::fs::read_dir(&target)
            .with_context(|| format!("{} exists and cannot be read", target.display()))?;
        if listing.next().is_some() {
            bail!("{} holds files already: the kit is put only into an empty or new directory (nothing was changed)", target.display());
        }
    }
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = target
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} is not a directory name", target.display()))?;
    let staging = parent.join(format!(".{}.steward-kit", name.to_string_lossy()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| {
            format!("removing what an interrupted import left: {}", staging.display())
        })?;
    }
    let unpacked = unpack(&mut entries, &staging).and_then(|files| same_files(&described, files));
    let token = match unpacked.and_then(|()| pause(&staging)) {
        Ok(token) => token,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context("nothing was put in place"));
        }
    };
    if target.exists() {
        std::fs::remove_dir(&target)
            .with_context(|| format!("replacing the empty {}", target.display()))?;
    }
    std::fs::rename(&staging, &target)
        .with_context(|| format!("moving the project to {}", target.display()))?;
    let env_text = std::fs::read_to_string(target.join(".env")).unwrap_or_default();
    eprint!("{}", holds(&described, &env_text, &target));
    eprintln!(
        "put in {} (exported {} by {}).\nBackups are paused until a restore is done ({ENV_RESTORE_PENDING}={token} in .env): a backup of the empty stack cannot become the latest. The restore ends the pause.\nNext: docs/runbooks.md, \"Disaster recovery on an empty host\" (scripts/rebuild.sh).",
        target.display(),
        described.exported_at,
        described.exported_by,
    );
    Ok(())
}

/// A reader that fails past `left` bytes: a kit cut at the cap must not read as a whole one
/// that happens to end there.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed is enough to tell the end from the cap.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other("the kit is larger than any kit steward writes")),
            };
        }
        let limit = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..limit])?;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Whether the files unpacked are exactly those the kit's description lists: a kit cut short
/// (or with files added) is refused rather than put in place with some missing.
fn same_files(described: &Described, mut got: Vec<String>) -> anyhow::Result<()> {
    let mut want = described.files.clone();
    want.sort();
    got.sort();
    if want == got {
        return Ok(());
    }
    let missing: Vec<&String> = want.iter().filter(|f| !got.contains(f)).collect();
    let extra: Vec<&String> = got.iter().filter(|f| !want.contains(f)).collect();
    bail!(
        "the kit's files are not those it describes (cut short or altered): missing {missing:?}, not described {extra:?}"
    )
}

/// Writes every `project/` entry below `staging`: plain files and directories only; the files
/// written, relative to it.
fn unpack<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    staging: &Path,
) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
    // Directory modes are set last: a 0500 directory would refuse its own files.
    let mut modes = vec![];
    let mut files = vec![];
    for entry in entries {
        let mut entry = entry.context("reading the kit")?;
        let name = entry.path().context("reading the kit")?.into_owned();
        let rel = inside(&name)?;
        let path = staging.join(&rel);
        let mode = entry.header().mode().context("reading the kit")?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                modes.push((path, mode));
            }
            tar::EntryType::Regular => {
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p)
                        .with_context(|| format!("creating {}", p.display()))?;
                }
                let mut file = std::fs::File::create(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                io::copy(&mut entry, &mut file)
                    .with_context(|| format!("writing {}", path.display()))?;
                file.sync_all().with_context(|| format!("writing {}", path.display()))?;
                set_mode(&path, mode)?;
                files.push(rel.display().to_string());
            }
            other => bail!(
                "kit entry {} is a {other:?}, not a file or directory: refused",
                name.display()
            ),
        }
    }
    for (path, mode) in modes.into_iter().rev() {
        set_mode(&path, mode)?;
    }
    if !staging.join(".env").is_file() {
        bail!("the kit holds no .env");
    }
    Ok(files)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // Permission bits only: a kit (which anyone with the public recipient can write) sets no
    // setuid, setgid or sticky bit.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Sets a fresh [`ENV_RESTORE_PENDING`] token in `dir`'s `.env`; the token.
fn pause(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(".env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = format!("kit-{stamp}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| l.split_once('=').is_none_or(|(k, _)| k.trim() != ENV_RESTORE_PENDING))
        .collect();
    let line = format!("{ENV_RESTORE_PENDING}={token}");
    lines.push(
        "# Backups paused until the restore is done (steward kit import; the restore ends it).",
    );
    lines.push(&line);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_read_as_compose_reads_them() {
        let text = "# c\nA=1\nSTEWARD_S3_BUCKET=\"my-bucket\"\nB = 'x y'\nA=2\n";
        assert_eq!(env_value(text, "A").as_deref(), Some("2"));
        assert_eq!(env_value(text, "STEWARD_S3_BUCKET").as_deref(), Some("my-bucket"));
        assert_eq!(env_value(text, "B").as_deref(), Some("x y"));
        assert_eq!(env_value(text, "C"), None);
    }

    #[test]
    fn entries_stay_inside_the_project() {
        assert_eq!(inside(Path::new("project/secrets/x")).ok(), Some(PathBuf::from("secrets/x")));
        for bad in ["project/../x", "/etc/passwd", "other/x", "project/a/../../x"] {
            assert!(inside(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pause_replaces_an_older_one() {
        let dir = std::env::temp_dir().join(format!("kit-pause-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let env = dir.join(".env");
        std::fs::write(&env, format!("A=1\n{ENV_RESTORE_PENDING}=old\n")).unwrap_or_default();
        let token = pause(&dir).unwrap_or_default();
        let text = std::fs::read_to_string(&env).unwrap_or_default();
        assert!(text.starts_with("A=1\n") && !text.contains("=old"), "{text}");
        assert_eq!(env_value(&text, ENV_RESTORE_PENDING), Some(token));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
