//! The deployer's own settings, names and defaults in one place, read all at once.

use std::path::PathBuf;
use std::time::Duration;

use steward_runtime::Env;
pub use steward_runtime::{ENV_HAPROXY_SOCKET, ENV_HAPROXY_SWITCH_TIMEOUT};

/// The git repository holding the compose project (any URL `git` accepts: `https://`,
/// `ssh://`, `git://`, `file://`). Credentials in it are never put into events or logs.
pub const ENV_REPOSITORY: &str = "STEWARD_DEPLOY_REPOSITORY";
/// More repositories, each `NAME=URL[#COMPOSE_FILE]`, separated by white space: `NAME` is the
/// repository's compose project name (as [`ENV_PROJECT`] is the first one's), and an
/// environment names the repository it deploys from (`ENV=BRANCH@NAME`).
pub const ENV_REPOSITORIES: &str = "STEWARD_DEPLOY_REPOSITORIES";
/// `ENV=BRANCH[@REPOSITORY][:automatic|manual]`, comma separated: which branch (of which
/// repository, when there are several) deploys to which environment, and whether it needs
/// approval.
pub const ENV_ENVIRONMENTS: &str = "STEWARD_DEPLOY_ENVIRONMENTS";
/// The default mapping: every push to `dev` and `staging` goes out, `main` waits for approval.
pub const DEFAULT_ENVIRONMENTS: &str = "dev=dev,staging=staging,prod=main:manual";
/// `ENV=WINDOW;ENV=WINDOW`: when each named environment may start a deployment (the
/// maintenance-window syntax, host time: `prod=Sat,Sun 03:00-05:00`); others start any time.
pub const ENV_WINDOWS: &str = "STEWARD_DEPLOY_WINDOWS";
/// Where the checkouts live (one directory per environment; a volume).
pub const ENV_DIR: &str = "STEWARD_DEPLOY_DIR";
/// The compose file inside the repository (the default of [`ENV_REPOSITORIES`]' too).
pub const ENV_COMPOSE_FILE: &str = "STEWARD_DEPLOY_COMPOSE_FILE";
/// The compose project name; each environment is the project `<name>-<env>`.
pub const ENV_PROJECT: &str = "STEWARD_DEPLOY_PROJECT";
/// How often the branches are polled with `git ls-remote` (`0s`: only the webhook).
pub const ENV_POLL_INTERVAL: &str = "STEWARD_DEPLOY_POLL_INTERVAL";
/// The push webhook's secret (give it as `_FILE`); without it the webhook is not served.
pub const ENV_WEBHOOK_SECRET: &str = "STEWARD_DEPLOY_WEBHOOK_SECRET";
/// Whether a deployment is backed up first (`backup.requested`, as an update is).
pub const ENV_BACKUP: &str = "STEWARD_DEPLOY_BACKUP";
/// How long the pre-deployment backup is waited for.
pub const ENV_BACKUP_TIMEOUT: &str = "STEWARD_DEPLOY_BACKUP_TIMEOUT";
/// How long the health gate waits for the changed services to pass.
pub const ENV_HEALTH_TIMEOUT: &str = "STEWARD_DEPLOY_HEALTH_TIMEOUT";
/// Services without a check of their own must run this long without restarting.
pub const ENV_HEALTH_GRACE: &str = "STEWARD_DEPLOY_HEALTH_GRACE";
/// Bound of the repository's test command (`steward.deploy.test`).
pub const ENV_TEST_TIMEOUT: &str = "STEWARD_DEPLOY_TEST_TIMEOUT";
/// Bound of one service's pre-deployment command (`steward.deploy.pre`).
pub const ENV_PRE_TIMEOUT: &str = "STEWARD_DEPLOY_PRE_TIMEOUT";
/// Bound of one `git` or `docker-compose` command.
pub const ENV_COMMAND_TIMEOUT: &str = "STEWARD_DEPLOY_COMMAND_TIMEOUT";
/// `Name <mail>`: the author and committer of the commits that write an image update into an
/// environment's branch (the repository's credentials in the URL must allow the push).
pub const ENV_COMMIT_AUTHOR: &str = "STEWARD_DEPLOY_COMMIT_AUTHOR";
/// A Gitea token (give it as `_FILE`): with it, an image update is proposed as a pull request
/// from a branch of its own instead of committed to the environment's branch.
pub const ENV_GITEA_TOKEN: &str = "STEWARD_DEPLOY_GITEA_TOKEN";
/// The Gitea that serves the repositories (its base URL), for the pull requests.
pub const ENV_GITEA_URL: &str = "STEWARD_DEPLOY_GITEA_URL";

/// Base URL under which operators reach the deployer's HTTP port (behind the proxy), for the
/// approval links of manual environments: `https`, or `http` to a loopback host only. The
/// deployer's own: it is another service on another port than the updater's page.
pub const ENV_PUBLIC_URL: &str = "STEWARD_DEPLOY_PUBLIC_URL";
/// Key that signs deployment approval links (at least 32 bytes; give it as `_FILE`). Its
/// own, so a leak of the updater's secret does not approve deployments (and back).
pub const ENV_APPROVAL_SECRET: &str = "STEWARD_DEPLOY_APPROVAL_SECRET";
/// How long a deployment's approval link stays valid from its claim (1m to 7d; default 72h).
pub const ENV_APPROVAL_TTL: &str = "STEWARD_DEPLOY_APPROVAL_TTL";
/// The deployer's link settings, read by the same rule as the updater's.
pub const LINK_VARS: steward_approval::LinkVars = steward_approval::LinkVars {
    public_url: ENV_PUBLIC_URL,
    secret: ENV_APPROVAL_SECRET,
    ttl: ENV_APPROVAL_TTL,
};

/// A webhook body larger than this is refused (413) before it is read whole: Gitea's push
/// payloads are a few KiB per commit.
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// A secret shorter than this is refused: it is guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// Automatic, or after `deploy.approved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Deploy at once.
    Automatic,
    /// `deploy.pending`, then wait for `deploy.approved`.
    Manual,
}

/// One repository the deployer follows.
#[derive(Clone, PartialEq, Eq)]
pub struct Repository {
    /// Its compose project name: each of its environments is the project `<project>-<env>`.
    pub project: String,
    /// The URL (may hold credentials: never print it, see [`Self::shown`]).
    pub url: String,
    /// The compose file in it.
    pub compose_file: String,
}

impl Repository {
    /// The URL as events and logs show it (credentials removed).
    pub fn shown(&self) -> String {
        steward_events::redact_url(&self.url)
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("project", &self.project)
            .field("url", &self.shown())
            .field("compose_file", &self.compose_file)
            .finish()
    }
}

/// One environment: the branch that deploys to it, and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `dev`, `staging`, `prod`, ...
    pub name: String,
    /// The repository's project name ([`Repository::project`]); empty until the
    /// environments are read with the repositories (the first one's, unless `@NAME` says).
    pub repository: String,
    /// The branch.
    pub branch: String,
    /// Its policy.
    pub policy: Policy,
    /// When a push's deployment may start (`None`: any time).
    pub window: Option<steward_labels::Window>,
}

impl Environment {
    /// When a deployment that could start at `now` (host time) may: `None` when it may at
    /// once (no window, or the window is open), else the window's next opening.
    pub fn waits_until(&self, now: chrono::NaiveDateTime) -> Option<chrono::NaiveDateTime> {
        self.window.as_ref().filter(|w| !w.contains(now)).map(|w| w.next_open(now))
    }
}

/// The deployer's settings.
#[derive(Clone)]
pub struct DeployerConfig {
    /// The repositories (at least one; the first is [`ENV_REPOSITORY`]'s when it is set).
    pub repositories: Vec<Repository>,
    /// The environments, each with its own repository and branch.
    pub environments: Vec<Environment>,
    /// The checkouts' root.
    pub dir: PathBuf,
    /// Polling period; `None`: no polling.
    pub poll_interval: Option<Duration>,
    /// The webhook secret.
    pub webhook_secret: Option<String>,
    /// Back up first.
    pub backup: bool,
    /// Pre-deployment backup wait.
    pub backup_timeout: Duration,
    /// Health gate wait.
    pub health_timeout: Duration,
    /// "Running, no restarts" grace.
    pub health_grace: Duration,
    /// One command's bound.
    pub command_timeout: Duration,
    /// The test command's bound.
    pub test_timeout: Duration,
    /// One pre-deployment command's bound.
    pub pre_timeout: Duration,
    /// One probe's settings, shared with the health service and the updater.
    pub probe: steward_probe::ProbeConfig,
    /// Signed approval links of manual environments; `None`: approvals by CLI only.
    pub links: Option<steward_approval::ApprovalLinks>,
    /// Author of the write-back commits (`Name <mail>`).
    pub commit_author: String,
    /// Gitea's API, when image updates are proposed as pull requests.
    pub gitea: Option<crate::gitea::Gitea>,
    /// HAProxy's admin socket, for start-first services; `None`: their deployments fail
    /// before anything is touched.
    pub haproxy_socket: Option<PathBuf>,
    /// How long a start-first swap waits for each of its HAProxy phases.
    pub haproxy_switch_timeout: Duration,
}

impl std::fmt::Debug for DeployerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployerConfig")
            .field("repositories", &self.repositories)
            .field("environments", &self.environments)
            .field("dir", &self.dir)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<set>"))
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl DeployerConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let compose_file =
            env.parse_with(ENV_COMPOSE_FILE, "docker-compose.yml".to_owned(), compose_path);
        let project = env.parse_with(ENV_PROJECT, "site".to_owned(), project_name);
        let mut repositories = vec![];
        let first = env.optional(ENV_REPOSITORY).filter(|u| !u.is_empty());
        if let Some(url) = first {
            repositories.push(Repository { project, url, compose_file: compose_file.clone() });
        }
        let more = env.optional(ENV_REPOSITORIES).unwrap_or_default();
        match parse_repositories(&more, &compose_file, &repositories) {
            Ok(more) => repositories.extend(more),
            Err(e) => env.error(ENV_REPOSITORIES, &more, e),
        }
        if repositories.is_empty() {
            env.required(ENV_REPOSITORY);
        }
        let environments = env.parse_with(
            ENV_ENVIRONMENTS,
            parse_environments(DEFAULT_ENVIRONMENTS).unwrap_or_default(),
            parse_environments,
        );
        let environments = match with_repositories(environments, &repositories) {
            Ok(e) => e,
            Err(e) => {
                let raw = env.optional(ENV_ENVIRONMENTS).unwrap_or_default();
                env.error(ENV_ENVIRONMENTS, &raw, e);
                vec![]
            }
        };
        let environments =
            env.parse_with(ENV_WINDOWS, environments.clone(), |s| with_windows(environments, s));
        let dir = PathBuf::from(env.string(ENV_DIR, "/var/lib/steward/deploy"));
        let poll = env.duration(ENV_POLL_INTERVAL, Duration::from_secs(300));
        let webhook_secret = env.optional(ENV_WEBHOOK_SECRET).filter(|s| !s.is_empty());
        if let Some(s) = &webhook_secret {
            if s.len() < MIN_SECRET_LEN {
                env.error(
                    ENV_WEBHOOK_SECRET,
                    "<secret>",
                    format!("at least {MIN_SECRET_LEN} characters"),
                );
            }
        }
        let commit_author =
            env.parse_with(ENV_COMMIT_AUTHOR, "Steward <steward@localhost>".to_owned(), |s| {
                let ok = s.ends_with('>')
                    && s.split_once(" <").is_some_and(|(n, m)| {
                        !n.trim().is_empty() && m.contains('@') && !m.contains(['<', ' '])
                    })
                    && !s.contains(['\n', '\r']);
                ok.then(|| s.to_owned()).ok_or_else(|| "`Name <mail@host>`".into())
            });
        let gitea = read_gitea(env);
        let backup = env.parse_with(ENV_BACKUP, true, |s| match s {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err("true or false".into()),
        });
        Self {
            repositories,
            environments,
            dir,
            poll_interval: (!poll.is_zero()).then_some(poll),
            webhook_secret,
            backup,
            backup_timeout: env.duration(ENV_BACKUP_TIMEOUT, Duration::from_secs(30 * 60)),
            health_timeout: env.duration(ENV_HEALTH_TIMEOUT, Duration::from_secs(120)),
            health_grace: env.duration(ENV_HEALTH_GRACE, Duration::from_secs(30)),
            command_timeout: env.duration(ENV_COMMAND_TIMEOUT, Duration::from_secs(600)),
            test_timeout: env.duration(ENV_TEST_TIMEOUT, Duration::from_secs(600)),
            // Migrations of a large database take long; the backup before them is the bound
            // that matters, this one only stops a command that hangs.
            pre_timeout: env.duration(ENV_PRE_TIMEOUT, Duration::from_secs(30 * 60)),
            probe: steward_probe::ProbeConfig::read(env),
            links: steward_approval::read_links(
                env,
                steward_approval::LinkKind::Deploy,
                &LINK_VARS,
            ),
            commit_author,
            gitea,
            haproxy_socket: env
                .optional(ENV_HAPROXY_SOCKET)
                .filter(|s| !s.is_empty())
                .map(Into::into),
            haproxy_switch_timeout: env
                .duration(ENV_HAPROXY_SWITCH_TIMEOUT, Duration::from_secs(30)),
        }
    }

    /// Where the write-back commits of an environment are made: a clone of its own, so a
    /// commit never disturbs the checkout a deployment runs from (`.` cannot begin an
    /// environment's name).
    pub fn commit_dir_of(&self, environment: &str) -> PathBuf {
        self.dir.join(".write-back").join(environment)
    }

    /// The repository an environment deploys from. An environment no longer configured
    /// (a record of an older configuration) is taken as the first repository's, which is
    /// what it was while the deployer followed one.
    pub fn repository_of(&self, environment: &str) -> &Repository {
        let named = self.environment(environment).map(|e| e.repository.as_str());
        named
            .and_then(|n| self.repositories.iter().find(|r| r.project == n))
            .or_else(|| self.repositories.first())
            .unwrap_or_else(|| unreachable!("the settings are refused without a repository"))
    }

    /// The repository (of `project`) and branch an environment deploys from.
    pub fn environment_of_branch(&self, project: &str, branch: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.repository == project && e.branch == branch)
    }

    /// The environment called `name`.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The compose project of an environment.
    pub fn project_of(&self, environment: &str) -> String {
        format!("{}-{environment}", self.repository_of(environment).project)
    }

    /// The compose file of an environment, in its checkout.
    pub fn compose_file_of(&self, environment: &str) -> &str {
        &self.repository_of(environment).compose_file
    }

    /// The checkout of an environment.
    pub fn checkout_of(&self, environment: &str) -> PathBuf {
        self.dir.join(environment)
    }
}

/// Gitea's API for pull requests: the token and the URL together, or neither.
fn read_gitea(env: &mut Env) -> Option<crate::gitea::Gitea> {
    let token = env.optional(ENV_GITEA_TOKEN).filter(|t| !t.trim().is_empty());
    let url = env.optional(ENV_GITEA_URL).filter(|u| !u.trim().is_empty());
    match (token, url) {
        (None, None) => None,
        (Some(_), None) => {
            env.error(ENV_GITEA_URL, "", format!("required with {ENV_GITEA_TOKEN}"));
            None
        }
        (None, Some(url)) => {
            env.error(ENV_GITEA_TOKEN, &url, format!("required with {ENV_GITEA_URL}"));
            None
        }
        (Some(token), Some(url)) => {
            let checked = crate::gitea::check_url(url.trim()).and_then(|u| {
                crate::gitea::Gitea::new(u, token.trim().to_owned(), Duration::from_secs(30))
            });
            checked.map_err(|e| env.error(ENV_GITEA_URL, &url, e)).ok()
        }
    }
}

/// A compose file's path: inside the repository.
fn compose_path(s: &str) -> Result<String, String> {
    let p = std::path::Path::new(s);
    let inside = !s.is_empty()
        && p.is_relative()
        && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    inside.then(|| s.to_owned()).ok_or_else(|| {
        "a path inside the repository, such as docker-compose.yml or deploy/compose.yml".into()
    })
}

/// A compose project name prefix.
fn project_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    ok.then(|| s.to_owned()).ok_or_else(|| "lower-case letters, digits and -, at most 40".into())
}

/// `site=https://git.example.com/ops/site.git blog=ssh://git@git.example.com/ops/blog.git#deploy/compose.yml`:
/// each name once, and not the name of one already in `before`.
pub fn parse_repositories(
    s: &str,
    compose_file: &str,
    before: &[Repository],
) -> Result<Vec<Repository>, String> {
    let mut out: Vec<Repository> = vec![];
    for part in s.split_whitespace() {
        // Never the URL in a message: it may hold credentials.
        let (name, rest) = part
            .split_once('=')
            .ok_or_else(|| "expected NAME=URL[#COMPOSE_FILE] separated by spaces".to_owned())?;
        let project = project_name(name).map_err(|e| format!("repository name {name:?}: {e}"))?;
        // A `#` in a credential must be written `%23` (as in any URL); what follows the last
        // `#` is a compose file only when it could not be part of the URL's authority.
        let (url, file) = match rest.rsplit_once('#') {
            Some((u, f)) if !f.contains(['@', ':']) => {
                (u, compose_path(f).map_err(|e| format!("{name}: {e}"))?)
            }
            _ => (rest, compose_file.to_owned()),
        };
        if url.is_empty() || url.starts_with('-') {
            return Err(format!("{name}: not a repository URL"));
        }
        if before.iter().chain(&out).any(|r| r.project == project) {
            return Err(format!("{name}: each repository name once (and not {ENV_PROJECT}'s)"));
        }
        out.push(Repository { project, url: url.to_owned(), compose_file: file });
    }
    Ok(out)
}

/// `environments` with their repositories: `@NAME` must name one; without it, the first
/// repository's. A repository's branch deploys to one environment.
pub fn with_repositories(
    mut environments: Vec<Environment>,
    repositories: &[Repository],
) -> Result<Vec<Environment>, String> {
    let Some(first) = repositories.first() else { return Ok(environments) };
    for i in 0..environments.len() {
        let e = &environments[i];
        let project = if e.repository.is_empty() {
            first.project.clone()
        } else if repositories.iter().any(|r| r.project == e.repository) {
            e.repository.clone()
        } else {
            return Err(format!("{}: no repository {:?} is configured", e.name, e.repository));
        };
        if environments[..i].iter().any(|o| o.repository == project && o.branch == e.branch) {
            let (name, branch) = (&e.name, &e.branch);
            return Err(format!(
                "{name}: branch {branch} of {project} deploys to two environments"
            ));
        }
        environments[i].repository = project;
    }
    Ok(environments)
}

/// `dev=dev,staging=staging,prod=main:manual`.
pub fn parse_environments(s: &str) -> Result<Vec<Environment>, String> {
    let mut out: Vec<Environment> = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rest) = part.split_once('=').ok_or_else(|| {
            format!("{part:?}: expected ENV=BRANCH[@REPOSITORY][:automatic|manual]")
        })?;
        let (rest, policy) = match rest.split_once(':') {
            None => (rest, Policy::Automatic),
            Some((b, "automatic")) => (b, Policy::Automatic),
            Some((b, "manual")) => (b, Policy::Manual),
            Some((_, other)) => {
                return Err(format!("{part:?}: policy {other:?} is not automatic or manual"))
            }
        };
        let (branch, repository) = rest.split_once('@').unwrap_or((rest, ""));
        if rest.contains('@') && project_name(repository).is_err() {
            return Err(format!("{part:?}: {repository:?} is not a repository name"));
        }
        let name_ok = !name.is_empty()
            && name.len() <= 20
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !name_ok {
            return Err(format!(
                "{part:?}: an environment is lower-case letters and digits (dev, staging, prod)"
            ));
        }
        // A branch name reaches `git` as an argument: no option-like or odd names.
        let branch_ok = !branch.is_empty()
            && !branch.starts_with('-')
            && !branch.contains("..")
            && branch.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !branch_ok {
            return Err(format!("{part:?}: {branch:?} is not a branch name"));
        }
        if out.iter().any(|e| e.name == name || (e.branch == branch && e.repository == repository))
        {
            return Err(format!("{part:?}: each environment and branch once"));
        }
        out.push(Environment {
            name: name.to_owned(),
            repository: repository.to_owned(),
            branch: branch.to_owned(),
            policy,
            window: None,
        });
    }
    if out.is_empty() {
        return Err("at least one ENV=BRANCH".into());
    }
    Ok(out)
}

/// `environments` with the windows of `s` (`prod=Sat,Sun 03:00-05:00;staging=01:00-03:00`):
/// each named environment must exist, and appear once.
pub fn with_windows(
    mut environments: Vec<Environment>,
    s: &str,
) -> Result<Vec<Environment>, String> {
    let mut named: Vec<&str> = vec![];
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, window) = part.split_once('=').ok_or_else(|| {
            format!("{part:?}: expected ENV=WINDOW, e.g. prod=Sat,Sun 03:00-05:00")
        })?;
        let name = name.trim();
        let window =
            steward_labels::Window::parse(window.trim()).map_err(|e| format!("{part:?}: {e}"))?;
        if named.contains(&name) {
            return Err(format!("{part:?}: {name} has a window already"));
        }
        named.push(name);
        let env = environments
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| format!("{part:?}: no environment {name:?} in {ENV_ENVIRONMENTS}"))?;
        env.window = Some(window);
    }
    Ok(environments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_parse_and_bad_ones_are_named() {
        let envs = parse_environments(DEFAULT_ENVIRONMENTS).expect("default");
        assert_eq!(envs.len(), 3);
        assert_eq!(
            envs[2],
            Environment {
                name: "prod".into(),
                repository: String::new(),
                branch: "main".into(),
                policy: Policy::Manual,
                window: None
            }
        );
        for bad in [
            "",
            "prod",
            "prod=main:maybe",
            "Prod=main",
            "a=-x",
            "a=b..c",
            "a=x,a=y",
            "a=x,b=x",
            "a=x@,b=y",
            "a=x@Blog",
            "a=x@-b",
            "a=x@b,c=x@b",
        ] {
            assert!(parse_environments(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn several_repositories_each_with_its_project_compose_file_and_environments() {
        let read = |pairs: &[(&str, &str)]| {
            let mut env = Env::from_pairs(pairs.iter().copied());
            let cfg = DeployerConfig::read(&mut env);
            env.finish().map(|()| cfg).map_err(|e| e.to_string())
        };
        let secret_url = "https://bot:s3cret@git.test/ops/blog.git";
        let more = format!("blog={secret_url}#deploy/compose.yml  docs=file:///srv/docs.git");
        let cfg = read(&[
            (ENV_REPOSITORY, "file:///srv/site.git"),
            (ENV_REPOSITORIES, &more),
            (ENV_ENVIRONMENTS, "prod=main:manual,blog=main@blog,docs=pages@docs:automatic"),
        ])
        .expect("three repositories");
        assert_eq!(cfg.repositories.len(), 3);
        assert_eq!(cfg.project_of("prod"), "site-prod");
        assert_eq!(cfg.project_of("blog"), "blog-blog");
        assert_eq!(cfg.compose_file_of("prod"), "docker-compose.yml");
        assert_eq!(cfg.compose_file_of("blog"), "deploy/compose.yml");
        assert_eq!(cfg.compose_file_of("docs"), "docker-compose.yml");
        assert_eq!(cfg.repository_of("blog").url, secret_url);
        assert!(!cfg.repository_of("blog").shown().contains("s3cret"));
        assert!(!format!("{cfg:?}").contains("s3cret"), "a credential is printed");
        assert_eq!(
            cfg.environment_of_branch("blog", "main").map(|e| e.name.as_str()),
            Some("blog")
        );
        assert_eq!(
            cfg.environment_of_branch("site", "main").map(|e| e.name.as_str()),
            Some("prod")
        );
        assert!(cfg.environment_of_branch("docs", "main").is_none());
        // A record of an environment no longer configured: the first repository's.
        assert_eq!(cfg.project_of("gone"), "site-gone");

        // Only the list: the first of it is the default repository.
        let only = read(&[
            (ENV_REPOSITORIES, "app=file:///srv/app.git api=file:///srv/api.git"),
            (ENV_ENVIRONMENTS, "dev=dev,apidev=dev@api"),
        ])
        .expect("the list alone");
        assert_eq!(only.project_of("dev"), "app-dev");
        assert_eq!(only.project_of("apidev"), "api-apidev");
        // A `#` in a credential is no compose file (it could be part of the authority).
        let hashed = parse_repositories("x=https://u:pa#ss@h.test/o/x.git", "c.yml", &[])
            .expect("a # in the credential");
        assert_eq!(
            (hashed[0].url.as_str(), hashed[0].compose_file.as_str()),
            ("https://u:pa#ss@h.test/o/x.git", "c.yml")
        );

        for (pairs, named) in [
            (vec![(ENV_ENVIRONMENTS, "dev=dev")], ENV_REPOSITORY),
            (
                vec![(ENV_REPOSITORY, "file:///a"), (ENV_REPOSITORIES, "site=file:///b")],
                ENV_REPOSITORIES,
            ),
            (vec![(ENV_REPOSITORIES, "a=file:///a a=file:///b")], ENV_REPOSITORIES),
            (vec![(ENV_REPOSITORIES, "Blog=file:///a")], ENV_REPOSITORIES),
            (vec![(ENV_REPOSITORIES, "blog")], ENV_REPOSITORIES),
            (vec![(ENV_REPOSITORIES, "blog=")], ENV_REPOSITORIES),
            (vec![(ENV_REPOSITORIES, "blog=--upload-pack=x")], ENV_REPOSITORIES),
            (vec![(ENV_REPOSITORIES, "blog=file:///a#../x.yml")], ENV_REPOSITORIES),
            (
                vec![(ENV_REPOSITORY, "file:///a"), (ENV_ENVIRONMENTS, "dev=dev@nope")],
                ENV_ENVIRONMENTS,
            ),
            (
                vec![
                    (ENV_REPOSITORY, "file:///a"),
                    (ENV_REPOSITORIES, "b=file:///b"),
                    (ENV_ENVIRONMENTS, "dev=dev,other=dev@site"),
                ],
                ENV_ENVIRONMENTS,
            ),
        ] {
            let e = read(&pairs).expect_err(named);
            assert!(e.contains(named), "{pairs:?}: {e}");
            assert!(!e.contains("s3cret"));
        }
        let e = read(&[(ENV_REPOSITORIES, &format!("blog={secret_url} Blog={secret_url}"))])
            .expect_err("bad name");
        assert!(!e.contains("s3cret"), "a credential in an error: {e}");
    }

    #[test]
    fn the_commit_author_is_a_name_and_a_mail_on_one_line() {
        let read = |author: &str| {
            let mut env = Env::from_pairs([
                (ENV_REPOSITORY, "file:///srv/site.git"),
                (ENV_COMMIT_AUTHOR, author),
            ]);
            let cfg = DeployerConfig::read(&mut env);
            env.finish().map(|()| cfg.commit_author).map_err(|e| e.to_string())
        };
        assert_eq!(read("Ops Bot <ops@example.com>").as_deref(), Ok("Ops Bot <ops@example.com>"));
        for bad in
            ["ops@example.com", "<ops@example.com>", "Ops <no-at>", "Ops <a b@c>", "Ops <o@e>\nX"]
        {
            let e = read(bad).expect_err(bad);
            assert!(e.contains(ENV_COMMIT_AUTHOR), "{e}");
        }
    }

    #[test]
    fn windows_go_to_their_environments_and_bad_ones_are_named() {
        let read = |windows: &str| {
            let mut env =
                Env::from_pairs([(ENV_REPOSITORY, "file:///srv/site.git"), (ENV_WINDOWS, windows)]);
            let cfg = DeployerConfig::read(&mut env);
            env.finish().map(|()| cfg).map_err(|e| e.to_string())
        };
        let cfg = read("prod=Sat,Sun 03:00-05:00; staging = Mon-Fri 22:00-02:00").expect("windows");
        let at = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("t");
        let prod = cfg.environment("prod").expect("prod");
        // 2026-12-05 is a Saturday.
        assert_eq!(prod.waits_until(at("2026-12-05 04:00")), None, "open");
        assert_eq!(prod.waits_until(at("2026-12-04 04:00")), Some(at("2026-12-05 03:00")));
        let staging = cfg.environment("staging").expect("staging");
        assert_eq!(staging.waits_until(at("2026-12-05 01:00")), None, "Friday's night");
        assert!(staging.waits_until(at("2026-12-05 23:00")).is_some(), "Saturday's night");
        assert_eq!(cfg.environment("dev").expect("dev").waits_until(at("2026-12-05 12:00")), None);
        for bad in [
            "prod",
            "prod=Someday 03:00-05:00",
            "prod=03:00-03:00",
            "qa=03:00-05:00",
            "prod=03:00-05:00;prod=06:00-07:00",
        ] {
            let e = read(bad).expect_err(bad);
            assert!(e.contains(ENV_WINDOWS), "{bad:?}: {e}");
        }
    }

    #[test]
    fn approval_links_follow_the_updaters_rule_under_the_deployers_names() {
        let read = |pairs: &[(&str, &str)]| {
            let mut all = vec![(ENV_REPOSITORY, "file:///srv/site.git")];
            all.extend_from_slice(pairs);
            let mut env = Env::from_pairs(all);
            let cfg = DeployerConfig::read(&mut env);
            env.finish().map(|()| cfg).map_err(|e| e.to_string())
        };
        let secret = "0123456789abcdef0123456789abcdef";
        assert!(read(&[]).expect("no links").links.is_none(), "CLI approvals only");
        let on = read(&[(ENV_PUBLIC_URL, "https://x.test/deploy"), (ENV_APPROVAL_SECRET, secret)])
            .expect("links");
        let links = on.links.clone().expect("links on");
        assert_eq!(links.kind(), steward_approval::LinkKind::Deploy);
        assert!(!format!("{on:?}").contains(secret), "the key is printed");
        for (pairs, named) in [
            (
                vec![(ENV_PUBLIC_URL, "http://x.test"), (ENV_APPROVAL_SECRET, secret)],
                ENV_PUBLIC_URL,
            ),
            (vec![(ENV_PUBLIC_URL, "https://x.test")], ENV_PUBLIC_URL),
            (
                vec![(ENV_PUBLIC_URL, "https://x.test"), (ENV_APPROVAL_SECRET, "short")],
                ENV_APPROVAL_SECRET,
            ),
            (vec![(ENV_APPROVAL_TTL, "8d")], ENV_APPROVAL_TTL),
        ] {
            let e = read(&pairs).expect_err(named);
            assert!(e.contains(named), "{pairs:?}: {e}");
        }
    }
}
