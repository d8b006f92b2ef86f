//! Commit-back: an image update of a service this deployer deploys from git is written into
//! the environment's branch, as a commit, so the next deployment keeps the new version
//! instead of recreating the old one (the same defect as a compose project's `.env` left
//! naming the old tag).
//!
//! The updater finds the deployer's mark in the service's working directory
//! ([`steward_definition::DEPLOYER_MARK`]) and hands the write-back over
//! (`update.written_back` with `committer: deployer`). Here: the change is decided by the same
//! rule as the updater's ([`steward_definition`]: only over the exact value the old container
//! ran; a branch already naming the new one is left as it is), made in a clone of its own
//! (never the checkout a deployment runs from), committed with the trailer
//! `Steward-Update: <update id>` and pushed as a fast-forward. Outcome: `deploy.written_back`,
//! with the commit or why not (mailed).
//!
//! Repeats and crashes: everything before the push is redone from the branch's head, so a
//! kill anywhere before it leaves nothing; a kill after it finds the trailer on the next
//! delivery and answers with that commit (refused when the branch no longer names the image:
//! a revert since is a human's decision, never redone). A replayed old event is refused: the container no
//! longer runs its image, or the branch names another version. A branch that moved between
//! the fetch and the push refuses the push; the change is made again on the new head (a few
//! times, then refused with git's message).

use steward_definition::{Env, Found, Text, DEPLOYER};
use steward_events::{DeployWrittenBack, Event, UpdateWrittenBack};

use crate::command::CommandError;
use crate::config::Environment;
use crate::flow::{Flow, FlowError};

/// How often a push that lost a race with another push is made again on the new head.
const PUSH_ATTEMPTS: u32 = 3;

/// The `deploy.written_back` of a delivery is derived from its id (this mask): a redelivery's
/// answer is the same event, dropped by the stream's duplicate window.
const ANSWER_MASK: u128 = 0x7772_6974_7465_6e5f_6261_636b_0000_0001;

/// What the commit-back did.
enum Outcome {
    /// Committed (or found committed): the commit, file and key.
    Committed { commit: String, file: String, key: String },
    /// Committed to `branch` and proposed as the pull request `url`.
    Proposed { commit: String, file: String, key: String, branch: String, url: String },
    /// The branch already names the new version without a commit of this update.
    Named { file: String, key: String },
    /// Nothing committed, and why.
    Refused(String),
}

impl Flow {
    /// Writes the handed-over update `w` into its environment's branch and says so. Events not
    /// handed to the deployer, and containers of no environment of this deployer, are ignored.
    pub async fn on_written_back(
        &self,
        event: &Event,
        w: &UpdateWrittenBack,
    ) -> Result<(), FlowError> {
        if w.committer.as_deref() != Some(DEPLOYER) {
            return Ok(());
        }
        let Some(brief) = self.engine.brief(&w.container).await? else {
            let gone = Outcome::Refused(format!("container {} no longer exists", w.container));
            return self.answer(event, w, None, gone).await;
        };
        let label = |k: &str| brief.labels.get(k).map(String::as_str).unwrap_or_default();
        let project = label(steward_labels::compose::PROJECT);
        let working_dir = std::path::Path::new(label(steward_labels::compose::WORKING_DIR));
        let env = self.cfg.environments.iter().find(|e| self.cfg.project_of(&e.name) == project);
        let Some(env) = env.filter(|e| same_dir(working_dir, &self.compose_dir_of(&e.name))) else {
            // Under this deployer's directory but of no environment it has now (one removed
            // from its settings): told, not lost. Anywhere else: another deployer's.
            if canonical(working_dir).starts_with(canonical(&self.cfg.dir)) {
                let why = format!(
                    "project {project} ({}) is none of this deployer's environments now",
                    working_dir.display()
                );
                return self.answer(event, w, None, Outcome::Refused(why)).await;
            }
            tracing::debug!(container = %w.container, project, "not a project of this deployer: its write-back is not ours");
            return Ok(());
        };
        let outcome = if brief.image_ref != w.image {
            Outcome::Refused(format!(
                "container {} runs {} now, not {} (updated or recreated since): left as it is",
                w.container, brief.image_ref, w.image
            ))
        } else {
            match w.from_image.as_deref() {
                None => Outcome::Refused(
                    "the update does not say which image the container ran before".into(),
                ),
                Some(from) => {
                    let service = label(steward_labels::compose::SERVICE).to_owned();
                    match &self.cfg.gitea {
                        Some(gitea) => self.propose(gitea, env, w, &service, from).await?,
                        None => self.commit_back(env, w, &service, from).await?,
                    }
                }
            }
        };
        self.answer(event, w, Some(env), outcome).await
    }

    /// Compose's working directory for an environment: the compose file's directory in its
    /// checkout.
    fn compose_dir_of(&self, env: &str) -> std::path::PathBuf {
        let checkout = self.cfg.checkout_of(env);
        match std::path::Path::new(self.cfg.compose_file_of(env)).parent() {
            Some(p) if !p.as_os_str().is_empty() => checkout.join(p),
            _ => checkout,
        }
    }

    /// Commits the change on the branch's head and pushes it, again on a newer head when the
    /// push lost a race.
    async fn commit_back(
        &self,
        env: &Environment,
        w: &UpdateWrittenBack,
        service: &str,
        from: &str,
    ) -> Result<Outcome, FlowError> {
        let dir = self.cfg.commit_dir_of(&env.name);
        let trailer = format!("Steward-Update: {}", w.update_id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A fetch, checkout or commit that fails is tried again (redelivery: the remote
            // may be back); a push the remote refuses is told.
            let (_, found) = self.branch_head(env, w, service, from).await?;
            if let Some(done) = found {
                return Ok(done);
            }
            let (rel, change, content) = match self.changed(env, w, service, from) {
                Ok(c) => c,
                Err(done) => return Ok(done),
            };
            let message = commit_message(env, w, service, &trailer);
            let commit = self
                .git(&env.name)
                .commit_file(&dir, &rel, content.as_bytes(), &message, &self.cfg.commit_author)
                .await?;
            steward_failpoints::failpoint!("commit_back:committed");
            match self.git(&env.name).push(&dir, &env.branch).await {
                Ok(()) => {
                    steward_failpoints::failpoint!("commit_back:pushed");
                    return Ok(Outcome::Committed { commit, file: rel, key: change.key });
                }
                Err(e) if attempt < PUSH_ATTEMPTS => {
                    tracing::warn!(branch = %env.branch, error = %e, attempt, "the push of the write-back was refused; again on the branch's new head");
                }
                Err(e) => {
                    let why = format!(
                        "the push to {} was refused ({attempt} attempts): {}",
                        env.branch,
                        told(&e)
                    );
                    return Ok(Outcome::Refused(why));
                }
            }
        }
    }

    /// Fetches the environment's branch into its clone and checks its head out: the head,
    /// and the outcome when this update's commit is on it already (made before, or a pull
    /// request merged): that commit while the branch still names the image; reverted or
    /// changed since, a human decided: left as it is, never redone.
    async fn branch_head(
        &self,
        env: &Environment,
        w: &UpdateWrittenBack,
        service: &str,
        from: &str,
    ) -> Result<(String, Option<Outcome>), FlowError> {
        let dir = self.cfg.commit_dir_of(&env.name);
        let git = self.git(&env.name);
        let trailer = format!("Steward-Update: {}", w.update_id);
        crate::git::clear_locks(&dir);
        git.fetch_branch(&dir, &env.branch).await?;
        let head = git.fetched_head(&dir, &env.branch).await?;
        git.checkout(&dir, &head).await?;
        let Some(commit) = git.find_line(&dir, &head, &trailer).await? else {
            return Ok((head, None));
        };
        let done = match self.change_in(&env.name, &dir, service, from, &w.image) {
            Ok((file, change, _)) if change.done() => {
                Outcome::Committed { commit, file, key: change.key }
            }
            Ok((_, change, _)) => Outcome::Refused(format!(
                "this update's commit {} is on {}, but {} says `{}` now (reverted or changed since): left as it is",
                commit.get(..10).unwrap_or(&commit),
                env.branch,
                change.key,
                change.current
            )),
            Err(why) => Outcome::Refused(why),
        };
        Ok((head, Some(done)))
    }

    /// The change to commit in the clone as checked out: the file, the change, the file's new
    /// content; or the outcome when there is nothing to commit.
    fn changed(
        &self,
        env: &Environment,
        w: &UpdateWrittenBack,
        service: &str,
        from: &str,
    ) -> Result<(String, steward_definition::Change, String), Outcome> {
        let dir = self.cfg.commit_dir_of(&env.name);
        let (rel, change, text) =
            self.change_in(&env.name, &dir, service, from, &w.image).map_err(Outcome::Refused)?;
        match change.apply(&text) {
            Ok(None) => Err(Outcome::Named { file: rel, key: change.key }),
            Ok(Some(content)) => Ok((rel, change, content)),
            Err(why) => Err(Outcome::Refused(why)),
        }
    }

    /// The pull-request variant: the change committed on the branch's head and pushed to a
    /// branch of its own (`steward/update-<id>`), and a pull request opened from it into the
    /// environment's branch through Gitea's API. A repeat finds the branch (its commit carries
    /// the trailer) and the request (listed before any is made); a request a human closed
    /// unmerged is left closed; once merged, the trailer is on the branch and the outcome is
    /// that commit, as for a direct commit.
    async fn propose(
        &self,
        gitea: &crate::gitea::Gitea,
        env: &Environment,
        w: &UpdateWrittenBack,
        service: &str,
        from: &str,
    ) -> Result<Outcome, FlowError> {
        let repository = self.cfg.repository_of(&env.name);
        let Some((owner, name)) = crate::gitea::owner_and_name(&repository.url) else {
            return Ok(Outcome::Refused(format!(
                "{} names no owner/repository for Gitea's API: commit by hand",
                repository.shown()
            )));
        };
        let dir = self.cfg.commit_dir_of(&env.name);
        let git = self.git(&env.name);
        let trailer = format!("Steward-Update: {}", w.update_id);
        let (_, found) = self.branch_head(env, w, service, from).await?;
        if let Some(done) = found {
            return Ok(done);
        }
        let proposal = format!("steward/update-{}", w.update_id);
        let made = git.heads(&[&proposal]).await?.remove(&proposal);
        let refused = |why: String| {
            Outcome::Refused(format!(
                "branch {proposal} was pushed, but no pull request was opened ({why}): open one by hand"
            ))
        };
        if made.is_none() {
            // A request made before whose branch was deleted since: closed or merged, it is
            // a human's decision, never proposed again.
            let before = match gitea.find(&owner, &name, &proposal, &env.branch).await {
                Ok(found) => found,
                Err(crate::gitea::GiteaError::Refused(why)) => return Ok(refused(why)),
                Err(e) => return Err(FlowError::Api(e.to_string())),
            };
            if let Some(pr) = before {
                let dir = self.cfg.commit_dir_of(&env.name);
                let (rel, key) = match self.change_in(&env.name, &dir, service, from, &w.image) {
                    Ok((rel, change, _)) => (rel, change.key),
                    Err(_) => (String::new(), String::new()),
                };
                return Ok(settled(pr, String::new(), rel, key, proposal.clone()));
            }
        }
        let (commit, rel, change) = match made {
            // Pushed before (a repeat, a kill after the push): that commit, if it is ours.
            Some(commit) => {
                git.fetch_branch(&dir, &proposal).await?;
                if git.find_line(&dir, &commit, &trailer).await?.is_none() {
                    return Ok(Outcome::Refused(format!(
                        "branch {proposal} exists without this update's commit: left as it is"
                    )));
                }
                git.checkout(&dir, &commit).await?;
                match self.change_in(&env.name, &dir, service, from, &w.image) {
                    Ok((rel, change, _)) => (commit, rel, change),
                    Err(why) => return Ok(Outcome::Refused(why)),
                }
            }
            None => {
                let (rel, change, content) = match self.changed(env, w, service, from) {
                    Ok(c) => c,
                    Err(done) => return Ok(done),
                };
                let message = commit_message(env, w, service, &trailer);
                let author = &self.cfg.commit_author;
                let commit =
                    git.commit_file(&dir, &rel, content.as_bytes(), &message, author).await?;
                steward_failpoints::failpoint!("propose:committed");
                if let Err(e) = git.push(&dir, &proposal).await {
                    // The remote's refusal is told; anything else (the network) is tried again.
                    let rejected = e.tail.iter().any(|l| {
                        l.trim_start().starts_with("remote:") || l.contains("[remote rejected]")
                    });
                    if !rejected {
                        return Err(e.into());
                    }
                    let why = format!("the push of branch {proposal} was refused: {}", told(&e));
                    return Ok(Outcome::Refused(why));
                }
                steward_failpoints::failpoint!("propose:pushed");
                (commit, rel, change)
            }
        };
        let title = format!("{service}: {} (image update on {})", short(&w.image), env.name);
        let body = format!(
            "The container {} runs `{}` since Steward's update {}; until this is merged, a deployment of `{}` recreates it from `{from}`.\n\nChanged: `{}` in `{rel}`.\n\n{trailer}",
            w.container, w.image, w.update_id, env.branch, change.key
        );
        match gitea.ensure(&owner, &name, &proposal, &env.branch, &title, &body).await {
            Ok(pr) => Ok(settled(pr, commit, rel, change.key, proposal.clone())),
            Err(crate::gitea::GiteaError::Refused(why)) => Ok(refused(why)),
            Err(e) => Err(FlowError::Api(e.to_string())),
        }
    }

    /// The change of `service`'s image from `from` to `to` in `environment`'s clone at `dir`: the file
    /// (relative to the repository), the change, and the file's text.
    fn change_in(
        &self,
        environment: &str,
        dir: &std::path::Path,
        service: &str,
        from: &str,
        to: &str,
    ) -> Result<(String, steward_definition::Change, String), String> {
        let rel = self.cfg.compose_file_of(environment).to_owned();
        let text = read_text(dir, &rel)?.ok_or_else(|| format!("{rel} is not on the branch"))?;
        let var =
            match steward_definition::find(Text { name: &rel, text: &text }, service, from, to)? {
                Found::Literal(change) => return Ok((rel, change, text)),
                Found::Variable(var) => var,
            };
        let env_rel = env_file_of(&rel);
        let env_text = read_text(dir, &env_rel);
        let env = match &env_text {
            Ok(Some(text)) => Env::Read(Text { name: &env_rel, text }),
            Ok(None) => Env::Missing(&env_rel),
            Err(why) => Env::Unusable(why),
        };
        let change = var.change(env)?;
        match env_text {
            Ok(Some(text)) => Ok((env_rel, change, text)),
            _ => Err(format!("{env_rel} could not be read")),
        }
    }

    /// Publishes the outcome, in the update's flow.
    async fn answer(
        &self,
        event: &Event,
        w: &UpdateWrittenBack,
        env: Option<&Environment>,
        outcome: Outcome,
    ) -> Result<(), FlowError> {
        let (mut proposal_branch, mut pull_request) = (None, None);
        let (commit, file, key, refused) = match outcome {
            Outcome::Committed { commit, file, key } => {
                tracing::info!(container = %w.container, %commit, %file, "the branch names the new version");
                (
                    Some(commit).filter(|c| !c.is_empty()),
                    Some(file).filter(|f| !f.is_empty()),
                    Some(key).filter(|k| !k.is_empty()),
                    None,
                )
            }
            Outcome::Proposed { commit, file, key, branch, url } => {
                tracing::info!(container = %w.container, %commit, %url, "proposed as a pull request");
                (proposal_branch, pull_request) = (Some(branch), Some(url));
                let some = |s: String| Some(s).filter(|s| !s.is_empty());
                (some(commit), some(file), some(key), None)
            }
            Outcome::Named { file, key } => (None, Some(file), Some(key), None),
            Outcome::Refused(why) => {
                tracing::warn!(container = %w.container, image = %w.image, reason = %why, "the branch still names the old version");
                (None, None, None, Some(why))
            }
        };
        let data = DeployWrittenBack {
            update_id: w.update_id,
            environment: env.map(|e| e.name.clone()).unwrap_or_default(),
            branch: env.map(|e| e.branch.clone()).unwrap_or_default(),
            repository: env.map(|e| self.cfg.repository_of(&e.name).shown()).unwrap_or_default(),
            container: w.container.clone(),
            image: w.image.clone(),
            commit,
            file,
            key,
            refused,
            proposal_branch,
            pull_request,
        };
        let mut answer = Event::caused_by(event, self.source.clone(), data);
        answer.id = uuid::Uuid::from_u128(event.id.as_u128() ^ ANSWER_MASK);
        self.bus.publish(&answer).await?;
        Ok(())
    }
}

impl Flow {
    /// Of the `changed` services of environment `env` (its checkout `dir` holds the commit to
    /// deploy and `deployed`), those whose definition changed in nothing but an image their
    /// container already runs (`images`: each service's image in the commit) are taken out:
    /// a write-back commit has nothing to apply, and a manual environment is not asked again
    /// for an update a human approved. Anything else in the compose file or `.env` changed,
    /// or a service not running that image: all of `changed` stays.
    pub(crate) async fn without_running_images(
        &self,
        env: &str,
        deployed: Option<&str>,
        changed: Vec<String>,
        new: &[String],
        images: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<String>, FlowError> {
        let Some(deployed) = deployed else { return Ok(changed) };
        let mut running = vec![];
        for service in changed.iter().filter(|s| !new.contains(s)) {
            let containers = self.service_containers(env, std::slice::from_ref(service)).await?;
            let [one] = containers.as_slice() else { continue };
            let Some(brief) = self.engine.brief(&one.id).await? else { continue };
            let same = |a: &str, b: &str| {
                let parse = steward_imageref::ImageRef::parse;
                a == b || matches!((parse(a), parse(b)), (Ok(x), Ok(y)) if x == y)
            };
            if images.get(service).is_some_and(|i| same(i, &brief.image_ref)) {
                running.push(service.clone());
            }
        }
        if running.is_empty() {
            return Ok(changed);
        }
        let dir = self.cfg.checkout_of(env);
        let compose_rel = self.cfg.compose_file_of(env).to_owned();
        let env_rel = env_file_of(&compose_rel);
        let before_compose = self.git(env).show(&dir, deployed, &compose_rel).await?;
        let before_env = self.git(env).show(&dir, deployed, &env_rel).await?;
        let (after_compose, after_env) =
            match (read_text(&dir, &compose_rel), read_text(&dir, &env_rel)) {
                (Ok(Some(c)), Ok(e)) => (c, e),
                _ => return Ok(changed),
            };
        let Some(before_compose) = before_compose else { return Ok(changed) };
        let names: Vec<&str> = running.iter().map(String::as_str).collect();
        let only = steward_definition::images_only(
            steward_definition::Files { compose: &before_compose, env: before_env.as_deref() },
            steward_definition::Files { compose: &after_compose, env: after_env.as_deref() },
            &names,
        );
        if !only {
            return Ok(changed);
        }
        tracing::info!(environment = %env, services = ?running, "only images the containers already run changed (a write-back): not recreated");
        Ok(changed.into_iter().filter(|s| !running.contains(s)).collect())
    }
}

/// The `.env` compose reads for `compose_rel`: beside the (first) compose file.
fn env_file_of(compose_rel: &str) -> String {
    match std::path::Path::new(compose_rel).parent().and_then(|p| p.to_str()) {
        Some(p) if !p.is_empty() => format!("{p}/.env"),
        _ => ".env".to_owned(),
    }
}

/// Marks each environment's existing checkout as the deployer's (a checkout made before the
/// mark existed is marked at the next fetch, or here at start).
pub fn mark_checkouts(flow: &Flow) {
    for env in &flow.cfg.environments {
        let dir = flow.cfg.checkout_of(&env.name);
        if dir.join(".git").is_dir() {
            let project = flow.cfg.project_of(&env.name);
            if let Err(e) = crate::git::mark(&dir, flow.cfg.compose_file_of(&env.name), &project) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot mark the checkout as the deployer's");
            }
        }
    }
}

/// A command's failure with git's own reason (the remote's lines and git's errors, else the
/// last lines), on one line.
fn told(e: &CommandError) -> String {
    let said = |l: &&String| {
        let l = l.trim_start();
        ["remote:", "!", "error:", "fatal:"].iter().any(|p| l.starts_with(p))
    };
    let mut tail: Vec<&str> = e.tail.iter().filter(said).take(6).map(|l| l.trim()).collect();
    if tail.is_empty() {
        tail = e.tail.iter().rev().take(3).rev().map(|l| l.trim()).collect();
    }
    match tail.is_empty() {
        true => e.to_string(),
        false => format!("{e}: {}", tail.join(" / ")),
    }
}

/// `path` with symbolic links resolved, or as given when it cannot be.
fn canonical(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Whether two paths name the same directory (compose records the directory it ran in with
/// links resolved; the settings may name it through one).
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    !a.as_os_str().is_empty() && canonical(a) == canonical(b)
}

/// A file of the checkout as text; `None` when it is not there. Only a regular file reached
/// through directories: a link committed to the repository is never followed (it could lead
/// the deployer to read or write outside the clone).
fn read_text(dir: &std::path::Path, rel: &str) -> Result<Option<String>, String> {
    let mut at = dir.to_owned();
    for part in std::path::Path::new(rel).components() {
        let std::path::Component::Normal(part) = part else {
            return Err(format!("{rel} is not a plain path inside the repository"));
        };
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{rel} is a symbolic link in the repository: not followed"))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{rel}: {e}")),
        }
    }
    if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_file()) {
        return Err(format!("{rel} is not a regular file"));
    }
    match std::fs::read(&at) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| format!("{rel} is not UTF-8")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{rel}: {e}")),
    }
}

/// What a pull request of the update says: merged (its merge is the commit; the body carries
/// the trailer, so a squash keeps it too), closed unmerged (left so), or open.
fn settled(
    pr: crate::gitea::PullRequest,
    commit: String,
    file: String,
    key: String,
    branch: String,
) -> Outcome {
    if pr.merged {
        let commit = pr.merge_commit_sha.filter(|c| !c.is_empty()).unwrap_or(commit);
        return Outcome::Committed { commit, file, key };
    }
    if pr.state == "closed" {
        return Outcome::Refused(format!(
            "pull request #{} ({}) was closed without merging: left as it is",
            pr.number, pr.html_url
        ));
    }
    Outcome::Proposed { commit, file, key, branch, url: pr.html_url }
}

/// The message of an update's commit, with its trailer.
fn commit_message(
    env: &Environment,
    w: &UpdateWrittenBack,
    service: &str,
    trailer: &str,
) -> String {
    format!(
        "{service}: {} (image update on {})\n\nThe container of {} runs {} since Steward's update {}; this keeps the next deployment on it.\n\n{trailer}",
        short(&w.image),
        env.name,
        w.container,
        w.image,
        w.update_id,
    )
}

/// `repo:tag` of a reference, without its registry (a commit subject stays short).
fn short(image: &str) -> &str {
    image.rsplit('/').next().unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_s_reason_is_the_remote_s_lines_else_the_last_ones() {
        let e = |tail: &[&str]| CommandError {
            command: "git push".into(),
            reason: "exited with 1".into(),
            tail: tail.iter().map(|l| l.to_string()).collect(),
            code: Some(1),
        };
        let pushed = e(&[
            "remote: branch dev is protected",
            "To git://127.0.0.1/x.git",
            " ! [remote rejected] HEAD -> dev (pre-receive hook declined)",
            "error: failed to push some refs",
        ]);
        let said = told(&pushed);
        assert!(said.contains("remote: branch dev is protected"), "{said}");
        assert!(said.contains("! [remote rejected]") && !said.contains("To git://"), "{said}");
        assert_eq!(told(&e(&[])), "`git push` exited with 1");
        assert!(told(&e(&["a", "b", "c", "d"])).ends_with(": b / c / d"));
    }

    #[test]
    fn the_env_file_is_beside_the_compose_file() {
        assert_eq!(env_file_of("docker-compose.yml"), ".env");
        assert_eq!(env_file_of("deploy/compose.yml"), "deploy/.env");
    }

    #[test]
    fn files_are_read_only_through_plain_directories_never_links() {
        let dir = std::env::temp_dir().join(format!("steward-wb-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("deploy")).expect("dir");
        std::fs::write(dir.join("deploy/compose.yml"), "services: {}\n").expect("file");
        std::fs::write(dir.join("outside"), "SECRET=1\n").expect("file");
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(dir.join(target), dir.join(at)).expect("symlink")
        };
        link("outside", ".env");
        link("deploy", "via");
        assert_eq!(read_text(&dir, "deploy/compose.yml"), Ok(Some("services: {}\n".into())));
        assert_eq!(read_text(&dir, "nope.yml"), Ok(None));
        for (rel, why) in [
            (".env", "symbolic link"),
            ("via/compose.yml", "symbolic link"),
            ("deploy", "not a regular file"),
            ("../outside", "not a plain path"),
        ] {
            let e = read_text(&dir, rel).expect_err(rel);
            assert!(e.contains(why), "{rel}: {e}");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
