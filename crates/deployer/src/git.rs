//! Git through the `git` binary (Debian's, in the image): the same program, protocols,
//! credential helpers and SSH configuration the operator uses by hand, and no second git
//! implementation to keep up with. Every call is bounded ([`crate::command::run`]) and never
//! prompts; failure modes: the remote unreachable or refusing (a `CommandError` with git's
//! own message, the deployment fails with it), a lock file left by a git killed with us
//! (removed before the next checkout: only this service uses the directory), a commit the
//! branch no longer has (fetch finds nothing: the deployment fails naming it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::command::{run, CommandError};

/// Whether `s` is a full commit id (SHA-1 or SHA-256, lower-case hex).
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The git operations of the deployer, each within `timeout`.
#[derive(Debug, Clone)]
pub struct Git {
    /// The repository URL.
    pub url: String,
    /// One command's bound.
    pub timeout: Duration,
}

/// The author and first line of a commit's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// `Name <mail>`.
    pub author: String,
    /// First line.
    pub subject: String,
}

impl Git {
    /// The head commit of each of `branches` the remote has (`git ls-remote --heads`).
    pub async fn heads(&self, branches: &[&str]) -> Result<BTreeMap<String, String>, CommandError> {
        let refs: Vec<String> = branches.iter().map(|b| format!("refs/heads/{b}")).collect();
        let mut args = vec!["ls-remote", "--heads", "--", self.url.as_str()];
        args.extend(refs.iter().map(String::as_str));
        let out = run("git", &args, None, self.timeout).await?;
        let mut heads = BTreeMap::new();
        for line in out.stdout.lines() {
            let Some((commit, name)) = line.split_once('\t') else { continue };
            let Some(branch) = name.strip_prefix("refs/heads/") else { continue };
            if is_commit_id(commit) && branches.contains(&branch) {
                heads.insert(branch.to_owned(), commit.to_owned());
            }
        }
        Ok(heads)
    }

    /// Makes `dir` a repository with the remote `origin` (again after a kill: each step is
    /// idempotent), then fetches `branch` and checks that it holds `commit`.
    pub async fn fetch(&self, dir: &Path, branch: &str, commit: &str) -> Result<(), CommandError> {
        self.fetch_branch(dir, branch).await?;
        let object = format!("{commit}^{{commit}}");
        self.git(dir, &["cat-file", "-e", &object]).await.map_err(|mut e| {
            e.reason = format!("found no commit {commit} on branch {branch}");
            e
        })?;
        Ok(())
    }

    /// Makes `dir` a repository with the remote `origin` (again after a kill: each step is
    /// idempotent), then fetches `branch`.
    pub async fn fetch_branch(&self, dir: &Path, branch: &str) -> Result<(), CommandError> {
        if !dir.join(".git").is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create", e))?;
            self.git(dir, &["init", "-q"]).await?;
        }
        // Set, not added: the configured URL may have changed since the directory was made.
        if self.git(dir, &["remote", "set-url", "origin", &self.url]).await.is_err() {
            self.git(dir, &["remote", "add", "origin", &self.url]).await?;
        }
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        self.git(dir, &["fetch", "-q", "--no-tags", "origin", &refspec]).await?;
        Ok(())
    }

    /// The newest commit in the history of `commit` whose message has the line `line`.
    pub async fn find_line(
        &self,
        dir: &Path,
        commit: &str,
        line: &str,
    ) -> Result<Option<String>, CommandError> {
        let grep = format!("--grep=^{}$", regex_escape(line));
        let out = self.git(dir, &["log", "-1", "--format=%H", &grep, commit, "--"]).await?;
        Ok(Some(out.trim().to_owned()).filter(|c| is_commit_id(c)))
    }

    /// Commits `content` as the file `rel` of the work tree (checked out at the branch's head)
    /// with `message`, by `author` (`Name <mail>`, also the committer); the new commit.
    pub async fn commit_file(
        &self,
        dir: &Path,
        rel: &str,
        content: &[u8],
        message: &str,
        author: &str,
    ) -> Result<String, CommandError> {
        let path = dir.join(rel);
        std::fs::write(&path, content).map_err(|e| io_error(&path, "write", e))?;
        let (name, mail) = author
            .rsplit_once(" <")
            .map_or((author, "steward@localhost"), |(n, m)| (n, m.trim_end_matches('>')));
        let (name, mail) = (format!("user.name={name}"), format!("user.email={mail}"));
        self.git(dir, &["add", "--", rel]).await?;
        self.git(dir, &["-c", &name, "-c", &mail, "commit", "-q", "--no-verify", "-m", message])
            .await?;
        Ok(self.git(dir, &["rev-parse", "HEAD"]).await?.trim().to_owned())
    }

    /// The file `rel` as `commit` has it; `None` when it has no such file.
    pub async fn show(
        &self,
        dir: &Path,
        commit: &str,
        rel: &str,
    ) -> Result<Option<String>, CommandError> {
        let object = format!("{commit}:{rel}");
        if self.git(dir, &["cat-file", "-e", &object]).await.is_err() {
            return Ok(None);
        }
        Ok(Some(self.git(dir, &["show", &object]).await?))
    }

    /// Pushes the work tree's `HEAD` to `branch` (only as a fast-forward: a branch that moved
    /// since the fetch refuses it).
    pub async fn push(&self, dir: &Path, branch: &str) -> Result<(), CommandError> {
        let refspec = format!("HEAD:refs/heads/{branch}");
        self.git(dir, &["push", "-q", "--no-verify", "origin", &refspec]).await?;
        Ok(())
    }

    /// The commit the branch's last [`Git::fetch`] found at its head.
    pub async fn fetched_head(&self, dir: &Path, branch: &str) -> Result<String, CommandError> {
        let name = format!("refs/remotes/origin/{branch}^{{commit}}");
        let out = self.git(dir, &["rev-parse", "--verify", "-q", &name]).await?;
        Ok(out.trim().to_owned())
    }

    /// Puts `commit`'s files in the work tree (`--force`: whatever a killed checkout left).
    pub async fn checkout(&self, dir: &Path, commit: &str) -> Result<(), CommandError> {
        // Only this service uses the directory: a lock is a git we were killed with.
        let _ = std::fs::remove_file(dir.join(".git/index.lock"));
        self.git(dir, &["checkout", "-q", "--force", "--detach", commit]).await?;
        Ok(())
    }

    /// Author and subject of `commit`.
    pub async fn info(&self, dir: &Path, commit: &str) -> Result<CommitInfo, CommandError> {
        let out = self.git(dir, &["log", "-1", "--format=%an <%ae>%x00%s", commit]).await?;
        let line = out.trim_end_matches('\n');
        let (author, subject) = line.split_once('\0').unwrap_or((line, ""));
        Ok(CommitInfo { author: author.to_owned(), subject: subject.to_owned() })
    }

    /// Whether `ancestor` is `commit` or one of its ancestors (an older deployment).
    pub async fn is_ancestor(
        &self,
        dir: &Path,
        ancestor: &str,
        commit: &str,
    ) -> Result<bool, CommandError> {
        match self.git(dir, &["merge-base", "--is-ancestor", ancestor, commit]).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == Some(1) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn git(&self, dir: &Path, args: &[&str]) -> Result<String, CommandError> {
        let dir_s = dir.to_string_lossy();
        let mut all = vec!["-C", dir_s.as_ref()];
        all.extend_from_slice(args);
        Ok(run("git", &all, None, self.timeout).await?.stdout)
    }
}

/// Marks the checkout `dir` as the deployer's checkout of compose project `project`
/// ([`steward_definition::deployer_mark`] of `compose_file`), so the updater hands the
/// write-back of its services over; idempotent.
pub fn mark(dir: &Path, compose_file: &str, project: &str) -> Result<(), CommandError> {
    let mark = dir.join(steward_definition::deployer_mark(compose_file));
    if std::fs::read_to_string(&mark).is_ok_and(|m| m.trim() == project) {
        return Ok(());
    }
    if let Some(parent) = mark.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, "create", e))?;
    }
    std::fs::write(&mark, format!("{project}\n")).map_err(|e| io_error(&mark, "write", e))
}

/// Removes the lock files a `git` killed in `dir` left (`index.lock`, `HEAD.lock`,
/// `config.lock`, a ref's): only this service uses the directory, one command at a time, so
/// a lock is always a leftover, and each would fail every later command there.
pub fn clear_locks(dir: &Path) {
    fn walk(dir: &Path, depth: u32) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && depth < 8 && path.file_name().is_some_and(|n| n != "objects") {
                walk(&path, depth + 1);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    walk(&dir.join(".git"), 0);
}

/// `s` with the basic regular expression's special characters escaped (for `git log --grep`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.[]*^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn io_error(dir: &Path, what: &str, e: std::io::Error) -> CommandError {
    CommandError {
        command: format!("{what} {}", dir.display()),
        reason: e.to_string(),
        tail: vec![],
        code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailer_is_matched_literally() {
        assert_eq!(regex_escape("Steward-Update: 0a1b-2c"), "Steward-Update: 0a1b-2c");
        assert_eq!(regex_escape("a.b*[c]^$\\"), "a\\.b\\*\\[c\\]\\^\\$\\\\");
    }

    #[test]
    fn leftover_locks_are_removed_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("steward-locks-{}", uuid::Uuid::new_v4()));
        let git = dir.join(".git");
        std::fs::create_dir_all(git.join("refs/remotes/origin")).expect("dirs");
        std::fs::create_dir_all(git.join("objects/ab")).expect("dirs");
        for f in
            ["HEAD.lock", "index.lock", "refs/remotes/origin/dev.lock", "HEAD", "objects/ab/x.lock"]
        {
            std::fs::write(git.join(f), "").expect("file");
        }
        clear_locks(&dir);
        for (f, kept) in [
            ("HEAD.lock", false),
            ("index.lock", false),
            ("refs/remotes/origin/dev.lock", false),
            ("HEAD", true),
            ("objects/ab/x.lock", true),
        ] {
            assert_eq!(git.join(f).exists(), kept, "{f}");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
