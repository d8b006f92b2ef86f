//! `steward kit export` / `import` with the real binary: the kit is refused without a
//! recipient, holds no plaintext, says what it holds, comes back byte for byte with its modes
//! and with backups paused (`STEWARD_BACKUP_RESTORE_PENDING`); a wrong identity, a directory
//! that holds anything and a forged kit escaping the directory are refused with nothing
//! written.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use steward_system_tests::binary;
use steward_testkit::TempDir;

const SECRET: &str = "postgres-password-that-must-not-leak";

fn write(path: &Path, text: &str, mode: u32) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0)
}

/// A compose project as init-secrets.sh and the operator leave it.
fn project(root: &Path, recipients: &str) -> PathBuf {
    let dir = root.join("gitea");
    write(
        &dir.join(".env"),
        &format!("GITEA_DOMAIN=git.example.com\nSTEWARD_S3_BUCKET=my-gitea-backups\nSTEWARD_BACKUP_AGE_RECIPIENTS={recipients}\n"),
        0o644,
    );
    write(&dir.join("docker-compose.yml"), "services: {}\n", 0o644);
    write(&dir.join("nginx/templates/gitea.conf.template"), "server {}\n", 0o644);
    write(&dir.join("secrets/postgres_password"), &format!("{SECRET}\n"), 0o444);
    write(&dir.join("secrets/backup_signing_key"), "-----BEGIN PRIVATE KEY-----\n", 0o444);
    write(&dir.join("secrets/aws_credentials"), "[default]\naws_access_key_id = k\n", 0o444);
    std::fs::set_permissions(dir.join("secrets"), std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn steward(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(binary("steward"))
        .args(args)
        .env_remove("STEWARD_BACKUP_AGE_IDENTITY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("steward: {e}"));
    let mut input = child.stdin.take();
    if let (Some(bytes), Some(input)) = (stdin, input.as_mut()) {
        input.write_all(bytes).unwrap_or_else(|e| panic!("stdin: {e}"));
    }
    drop(input);
    child.wait_with_output().unwrap_or_else(|e| panic!("steward: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn keys() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_owned();
    (secret, id.to_public().to_string())
}

/// Every file below `dir` with its bytes and mode.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten()
        {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
            if p.is_dir() {
                out.push((rel, vec![], mode(&p)));
                stack.push(p);
            } else {
                out.push((rel, std::fs::read(&p).unwrap_or_default(), mode(&p)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_kit_comes_back_whole_with_backups_paused_and_is_refused_unencrypted() {
    let root = TempDir::new("kit");
    let (identity, recipient) = keys();
    let dir = project(&root.0, "");
    let dir_arg = dir.display().to_string();

    // No recipient anywhere: refused, nothing written.
    let out = steward(&["kit", "export", &dir_arg], None);
    assert!(!out.status.success(), "exported unencrypted");
    assert!(out.stdout.is_empty(), "{} bytes written", out.stdout.len());
    assert!(stderr(&out).contains("refusing to write the kit unencrypted"), "{}", stderr(&out));

    // The recipient from .env (as the backups'), here given as the flag.
    let out = steward(&["kit", "export", &dir_arg, "--recipient", &recipient], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let kit = out.stdout.clone();
    assert!(kit.starts_with(b"age-encryption.org/v1"), "not an age file");
    let leaked = kit.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    assert!(!leaked, "the kit holds a secret in plaintext");
    let told = stderr(&out);
    for expected in ["gitea", "backup signing key: yes", "bucket my-gitea-backups", &recipient] {
        assert!(told.contains(expected), "{expected:?} not in: {told}");
    }
    let before = snapshot(&dir);
    let id_file = root.0.join("age.txt");
    write(&id_file, &format!("# the operator's key\n{identity}\n"), 0o600);
    let id_arg = id_file.display().to_string();

    // A wrong identity: refused, nothing written.
    let (other, _) = keys();
    let other_file = root.0.join("other.txt");
    write(&other_file, &other, 0o600);
    let target = root.0.join("rebuilt").join("gitea");
    let target_arg = target.display().to_string();
    let other_arg = other_file.display().to_string();
    let out = steward(&["kit", "import", "--identity", &other_arg, "-", &target_arg], Some(&kit));
    assert!(!out.status.success(), "opened with a wrong identity");
    assert!(stderr(&out).contains("does not open with this identity"), "{}", stderr(&out));
    assert!(!target.exists(), "something was written");

    // A directory that holds anything is never overwritten.
    let out = steward(&["kit", "import", "--identity", &id_arg, "-", &dir_arg], Some(&kit));
    assert!(!out.status.success(), "imported over a project");
    assert!(stderr(&out).contains("holds files already"), "{}", stderr(&out));
    assert_eq!(snapshot(&dir), before, "the refused import changed the directory");

    // Put back elsewhere (here; on a rebuilt host, the directory it names): the same files
    // and modes, and .env with the pause.
    let out = steward(&["kit", "import", "--identity", &id_arg, "-", &target_arg], Some(&kit));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Backups are paused"), "{}", stderr(&out));
    let after = snapshot(&target);
    let env = std::fs::read_to_string(target.join(".env")).unwrap_or_default();
    assert!(env.starts_with(&std::fs::read_to_string(dir.join(".env")).unwrap_or_default()));
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("STEWARD_BACKUP_RESTORE_PENDING="))
        .unwrap_or_else(|| panic!("no pause in {env}"));
    assert!(token.starts_with("kit-"), "{token}");
    let strip_env = |s: Vec<(String, Vec<u8>, u32)>| -> Vec<(String, Vec<u8>, u32)> {
        s.into_iter().filter(|(p, _, _)| p != ".env").collect()
    };
    assert_eq!(strip_env(after), strip_env(before));
    assert_eq!(mode(&target.join("secrets")), 0o700);
    assert_eq!(mode(&target.join("secrets/postgres_password")), 0o444);
    assert!(!root.0.join("rebuilt/.gitea.steward-kit").exists(), "staging left behind");
}

#[test]
fn a_forged_kit_escaping_the_directory_is_refused_with_nothing_written() {
    let root = TempDir::new("kit-forged");
    let (identity, recipient) = keys();
    let id_file = root.0.join("age.txt");
    write(&id_file, &identity, 0o600);
    // A kit as an attacker with the recipient (a public key) could write one.
    let forge = |entries: &[(&str, &[u8])]| -> Vec<u8> {
        let r: age::x25519::Recipient = recipient.parse().unwrap_or_else(|e| panic!("{e}"));
        let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![];
        let w = enc.wrap_output(&mut out).unwrap_or_else(|e| panic!("{e}"));
        let mut tar = tar::Builder::new(w);
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            // Written into the header's name field as is (append_data refuses `..`).
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            tar.append(&h, *body).unwrap_or_else(|e| panic!("{e}"));
        }
        let w = tar.into_inner().unwrap_or_else(|e| panic!("{e}"));
        w.finish().unwrap_or_else(|e| panic!("{e}"));
        out
    };
    let described = format!(
        r#"{{"format":1,"project":"gitea","directory":"{}","exported_at":"","exported_by":"","files":[],"recipients":[]}}"#,
        root.0.join("gitea").display()
    );
    let id_arg = id_file.display().to_string();
    let target = root.0.join("gitea");
    let target_arg = target.display().to_string();
    for (bad, why) in [
        ("project/../escaped", "leaves the project directory"),
        ("elsewhere/x", "outside project/"),
    ] {
        let kit =
            forge(&[("KIT.json", described.as_bytes()), ("project/.env", b"A=1\n"), (bad, b"x")]);
        let out = steward(&["kit", "import", "--identity", &id_arg, "-", &target_arg], Some(&kit));
        assert!(!out.status.success(), "{bad}: accepted");
        assert!(stderr(&out).contains(why), "{bad}: {}", stderr(&out));
        assert!(!target.exists(), "{bad}: the target was written");
        assert!(!root.0.join("escaped").exists(), "{bad}: wrote outside");
        assert!(!root.0.join(".gitea.steward-kit").exists(), "{bad}: staging left behind");
    }
    // A kit cut short at an entry's end (the end of a tar reads as a clean end): its
    // description lists a file it does not carry.
    let cut = described.replace(r#""files":[]"#, r#""files":[".env","secrets/db"]"#);
    let kit = forge(&[("KIT.json", cut.as_bytes()), ("project/.env", b"A=1\n")]);
    let out = steward(&["kit", "import", "--identity", &id_arg, "-", &target_arg], Some(&kit));
    assert!(!out.status.success(), "a kit missing a described file was put in place");
    assert!(stderr(&out).contains("not those it describes"), "{}", stderr(&out));
    assert!(!target.exists(), "a cut kit wrote the target");
    assert!(!root.0.join(".gitea.steward-kit").exists(), "staging left behind");
    // Not a kit at all (an age file of something else).
    let kit = forge(&[("README", b"hello")]);
    let out = steward(&["kit", "import", "--identity", &id_arg, "-", &target_arg], Some(&kit));
    assert!(stderr(&out).contains("not a Steward kit"), "{}", stderr(&out));
    assert!(!target.exists());
}
