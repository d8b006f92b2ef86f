//! Commit-back (issue 21): an image update of a service deployed from git is committed to its
//! environment's branch, so the next deployment keeps the new version; killed twice around
//! the push (with git's lock files left), refused by the remote, or racing another push, it
//! commits once or says why. Real updater and
//! deployer, NATS, Docker, registry, and a `git daemon` that takes pushes.
//!
//! The defect without it: the updater refuses to write into a git checkout, the branch keeps
//! naming the old tag, and the next deployment that recreates the service (any change to its
//! definition) brings the old version back.

mod deploy_common;

use deploy_common::*;
use steward_events::{Digest, ImageUpdated, UpdateWrittenBack};
use steward_testkit::docker::{docker, AppTags, SwapLeftovers};

/// The registry's `1.0` (the app's v1) and `1.1` (v2) of a repository of this test.
fn tags() -> AppTags {
    AppTags::push("steward-test/cb")
}

/// The compose file: web's image from `WEB_IMAGE` (in `.env`), watched in `scope`; `note`
/// changes web's definition (a deployment then recreates it).
fn compose(repo: &Repo, scope: &str, note: &str) -> String {
    compose_of(repo, scope, note, "${WEB_IMAGE}")
}

/// [`compose`] with web's `image:` written as `image`.
fn compose_of(repo: &Repo, scope: &str, note: &str, image: &str) -> String {
    let web = repo.web;
    format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: {image}\n    ports: [\"127.0.0.1:{web}:8080\"]\n    environment:\n      NOTE: \"{note}\"\n    labels:\n      steward.enable: \"true\"\n      steward.scope: \"{scope}\"\n      steward.update.policy: automatic\n      steward.update.backup: \"false\"\n      steward.health.url: http://127.0.0.1:{web}/\n"
    )
}

/// Commits `.env` naming `image` and the compose file, pushes to `dev` and deploys it by
/// webhook: the commit, once deployed.
async fn deploy(bus: &Bus, repo: &Repo, port: u16, scope: &str, image: &str, note: &str) -> String {
    std::fs::write(repo.work.join(".env"), format!("WEB_IMAGE={image}\n")).expect("write .env");
    git(&repo.work, &["add", ".env"]);
    let commit = repo.commit_text("dev", &compose(repo, scope, note), note);
    push_commit(repo, port, &commit, note).await;
    let flow = outcome(bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    commit
}

/// The bare repository's `git` output.
fn origin(repo: &Repo, args: &[&str]) -> String {
    git(&repo.root.join("origin.git"), args)
}

/// The commits of `dev` whose message carries `update_id`'s trailer.
fn trailer_commits(repo: &Repo, update_id: uuid::Uuid) -> Vec<String> {
    let grep = format!("--grep=^Steward-Update: {update_id}$");
    let out = origin(repo, &["log", "--format=%H", &grep, "dev"]);
    out.lines().map(str::to_owned).collect()
}

fn web_container(repo: &Repo) -> String {
    format!("{}-dev_web_1", repo.project)
}

/// The updater's news that web (running 1.0) has 1.1.
fn news(repo: &Repo, t: &AppTags) -> Event {
    Event::new(
        "steward-watcher/test",
        ImageUpdated {
            container: web_container(repo),
            image: format!("{}:1.0", t.base),
            current_digest: Digest::parse(&t.v1).expect("digest"),
            new_digest: Digest::parse(&t.v2).expect("digest"),
            new_tag: Some("1.1".into()),
            policy: Some("automatic".into()),
            versions: Default::default(),
        },
    )
}

fn updater(bus: &Bus, scope: &str) -> Proc {
    Proc::service(
        "steward-updater",
        bus,
        &[
            ("STEWARD_SCOPE", scope.to_owned()),
            ("STEWARD_HEALTH_TIMEOUT", "30s".into()),
            ("STEWARD_HEALTH_GRACE", "2s".into()),
            ("STEWARD_ACK_WAIT", "5s".into()),
        ],
    )
}

/// The `deploy.written_back` answers in `correlation`'s flow, once there are `n`.
async fn answers(
    bus: &Bus,
    correlation: uuid::Uuid,
    n: usize,
) -> Vec<(Event, steward_events::DeployWrittenBack)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found: Vec<_> = stored_events(bus)
            .await
            .into_iter()
            .filter(|e| e.correlation_id == correlation)
            .filter_map(|e| match &e.data {
                EventData::DeployWrittenBack(w) => Some((e.clone(), w.clone())),
                _ => None,
            })
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "{} of {n} deploy.written_back", found.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The updater's hand-over in `correlation`'s flow.
async fn handed_over(bus: &Bus, correlation: uuid::Uuid) -> (Event, UpdateWrittenBack) {
    first_event(bus, Duration::from_secs(120), |e| match &e.data {
        EventData::UpdateWrittenBack(w) if e.correlation_id == correlation => {
            Some((e.clone(), w.clone()))
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_update_of_a_deployed_service_is_committed_and_the_next_deployment_keeps_it() {
    let bus = TestBus::new("commitback").await;
    let (repo, t, scope, port) = (Repo::new(), tags(), unique_name("scope"), free_port());
    let _leftovers = SwapLeftovers(web_container(&repo));
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let deployed = deploy(&bus, &repo, port, &scope, &format!("{}:1.0", t.base), "a").await;
    let updater = updater(&bus, &scope);

    let news = news(&repo, &t);
    bus.publish(&news).await.expect("publish");
    let (handover, w) = handed_over(&bus, news.correlation_id).await;
    assert_eq!(w.committer.as_deref(), Some("deployer"), "{w:?}\n{}", updater.logs());
    assert_eq!(
        (w.refused.as_deref(), w.file.as_deref()),
        (None, None),
        "nothing written by the updater"
    );
    let (_, answer) = answers(&bus, news.correlation_id, 1).await.remove(0);
    assert_eq!(answer.refused, None, "{answer:?}");
    assert_eq!((answer.file.as_deref(), answer.key.as_deref()), (Some(".env"), Some("WEB_IMAGE")));
    assert_eq!((answer.environment.as_str(), answer.branch.as_str()), ("dev", "dev"));
    let commit = answer.commit.clone().expect("a commit");

    // On the branch: one commit on top of the deployed one, changing only the variable.
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), commit);
    assert_eq!(origin(&repo, &["rev-parse", "dev^"]), deployed);
    assert_eq!(origin(&repo, &["show", "dev:.env"]), format!("WEB_IMAGE={}:1.1", t.base));
    assert_eq!(origin(&repo, &["diff", "--name-only", "dev^", "dev"]), ".env");
    assert_eq!(
        origin(&repo, &["log", "-1", "--format=%an <%ae>", "dev"]),
        "Steward <steward@localhost>"
    );
    assert_eq!(trailer_commits(&repo, w.update_id), std::slice::from_ref(&commit));

    // The hand-over again (a replay under a new id): the same commit is found, none is added.
    let mut again = handover.clone();
    again.id = uuid::Uuid::new_v4();
    bus.publish(&again).await.expect("publish");
    let both = answers(&bus, news.correlation_id, 2).await;
    assert!(both.iter().all(|(_, a)| a.commit.as_deref() == Some(commit.as_str())), "{both:?}");
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), commit, "a second commit");

    // An old hand-over (the container ran 1.1 before and 1.0 after, say): the container runs
    // something else, so nothing is committed.
    let mut stale = handover.clone();
    stale.id = uuid::Uuid::new_v4();
    let EventData::UpdateWrittenBack(s) = &mut stale.data else { unreachable!() };
    s.update_id = uuid::Uuid::new_v4();
    (s.image, s.from_image) = (format!("{}:1.0", t.base), Some(format!("{}:1.1", t.base)));
    bus.publish(&stale).await.expect("publish");
    let three = answers(&bus, news.correlation_id, 3).await;
    let refused = three.iter().find_map(|(_, a)| a.refused.clone()).expect("a refusal");
    assert!(refused.contains("runs") && refused.contains(":1.1 now"), "{refused}");
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), commit, "an old event committed");

    // The write-back commit itself deployed (the poll or webhook asks for it): only an image web
    // already runs changed, so nothing is recreated (and a manual environment would not ask
    // again for what its human approved).
    let web_id = || docker(&["inspect", "-f", "{{.Id}}", &web_container(&repo)]);
    let before = web_id();
    push_commit(&repo, port, &commit, "write-back").await;
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    let done = flow.iter().find_map(|e| match &e.data {
        EventData::DeploySucceeded(s) => Some(s.clone()),
        _ => None,
    });
    let done = done.unwrap_or_else(|| panic!("{flow:#?}"));
    assert!(done.services.is_empty(), "recreated for its own write-back: {done:?}");
    assert_eq!(web_id(), before, "web was recreated");

    // The next deployment recreates web (its definition changed) and keeps 1.1.
    git(&repo.work, &["pull", "-q", "--ff-only", "origin", "dev"]);
    let next = repo.commit_text("dev", &compose(&repo, &scope, "b"), "web: note b");
    push_commit(&repo, port, &next, "web: note b").await;
    let flow = outcome(&bus, &next, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let image = steward_testkit::docker::docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &web_container(&repo),
    ]);
    assert_eq!(image, format!("{}:1.1", t.base), "the next deployment went back");
    assert!(serves(repo.web, "v2"), "web does not serve v2");

    // A human reverts the write-back commit; a replay of the hand-over then is refused, and
    // the revert stands (a replay is no new decision).
    git(&repo.work, &["revert", "--no-edit", &commit]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:dev"]);
    let reverted = git(&repo.work, &["rev-parse", "HEAD"]);
    let mut late = handover.clone();
    late.id = uuid::Uuid::new_v4();
    bus.publish(&late).await.expect("publish");
    let four = answers(&bus, news.correlation_id, 4).await;
    let why = four.iter().filter_map(|(_, a)| a.refused.clone()).find(|r| r.contains("reverted"));
    assert!(why.is_some(), "{four:?}");
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), reverted, "the revert was undone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_killed_before_and_after_its_push_commits_the_update_once() {
    let bus = TestBus::new("commitbackkill").await;
    let (repo, t, scope, port) = (Repo::new(), tags(), unique_name("scope"), free_port());
    let _leftovers = SwapLeftovers(web_container(&repo));
    {
        let _clean = deployer(&repo.env(&bus, port, &[]));
        deploy(&bus, &repo, port, &scope, &format!("{}:1.0", t.base), "a").await;
    }
    let _updater = updater(&bus, &scope);
    let news = news(&repo, &t);
    bus.publish(&news).await.expect("publish");
    let (_, w) = handed_over(&bus, news.correlation_id).await;

    // Killed with the commit made and not pushed, then with it pushed and not announced.
    for point in ["commit_back:committed", "commit_back:pushed"] {
        let mut armed = deployer(&repo.env(&bus, port, &[("STEWARD_FAILPOINTS", point.into())]));
        assert!(
            armed.exits_within(Duration::from_secs(120)),
            "{point} not reached: {}",
            armed.logs()
        );
        assert!(armed.logs().contains("aborting"), "{point}: {}", armed.logs());
    }
    let pushed = trailer_commits(&repo, w.update_id);
    assert_eq!(pushed.len(), 1, "after the kills: {pushed:?}");

    // Lock files a git killed in the middle of a command leaves (the deployer's command
    // timeout or a shutdown kills it): each would fail every later command in the clone.
    let clone = repo.root.join("deploy/.write-back/dev/.git");
    for lock in ["HEAD.lock", "index.lock", "config.lock", "refs/remotes/origin/dev.lock"] {
        std::fs::write(clone.join(lock), "").expect("plant a lock");
    }
    let _again = deployer(&repo.env(&bus, port, &[]));
    let (_, answer) = answers(&bus, news.correlation_id, 1).await.remove(0);
    assert_eq!(answer.commit.as_deref(), Some(pushed[0].as_str()), "{answer:?}");
    // Settled (redeliveries had time): still one commit of the update.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(trailer_commits(&repo, w.update_id), pushed);
    assert_eq!(origin(&repo, &["show", "dev:.env"]), format!("WEB_IMAGE={}:1.1", t.base));
}

/// Installs a `pre-receive` hook in the bare repository: `mode` `refuse` refuses every push,
/// `race` moves `dev` to `race_to` (as another pusher would) and refuses the push in hand once.
fn hook(repo: &Repo, mode: &str, race_to: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let bare = repo.root.join("origin.git");
    let script = match mode {
        "refuse" => "#!/bin/sh\necho 'branch dev is protected' >&2\nexit 1\n".to_owned(),
        _ => format!(
            "#!/bin/sh\nif [ -e \"$GIT_DIR/raced\" ]; then exit 0; fi\ntouch \"$GIT_DIR/raced\"\nenv -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES git --git-dir=\"$GIT_DIR\" update-ref refs/heads/dev {race_to}\necho 'dev moved meanwhile' >&2\nexit 1\n"
        ),
    };
    let path = bare.join("hooks/pre-receive");
    std::fs::write(&path, script).expect("hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_is_told_and_a_push_that_lost_a_race_is_made_again_on_the_new_head() {
    let bus = TestBus::new("commitbackpush").await;
    let (repo, t, scope, port) = (Repo::new(), tags(), unique_name("scope"), free_port());
    let _leftovers = SwapLeftovers(web_container(&repo));
    // The compose file in a directory of the repository (compose's working directory is
    // that directory, not the checkout), its image written in its `image:` line.
    let file = "deploy/compose.yml";
    let _deployer =
        deployer(&repo.env(&bus, port, &[("STEWARD_DEPLOY_COMPOSE_FILE", file.into())]));
    std::fs::create_dir_all(repo.work.join("deploy")).expect("mkdir");
    let literal = compose_of(&repo, &scope, "a", &format!("{}:1.0", t.base));
    std::fs::write(repo.work.join(file), &literal).expect("write");
    git(&repo.work, &["add", file]);
    let deployed = repo.commit_text("dev", "# not deployed\n", "a");
    push_commit(&repo, port, &deployed, "a").await;
    let flow = outcome(&bus, &deployed, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    // Another pusher's commit, ready on a branch of its own.
    std::fs::write(repo.work.join("README"), "the site\n").expect("write");
    git(&repo.work, &["add", "README"]);
    git(&repo.work, &["commit", "-q", "-m", "readme"]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:refs/heads/other"]);
    let other = git(&repo.work, &["rev-parse", "HEAD"]);

    // A branch that refuses every push: told (three attempts), nothing committed.
    hook(&repo, "refuse", "");
    let _updater = updater(&bus, &scope);
    let news = news(&repo, &t);
    bus.publish(&news).await.expect("publish");
    let (handover, _) = handed_over(&bus, news.correlation_id).await;
    let (_, refused) = answers(&bus, news.correlation_id, 1).await.remove(0);
    let why = refused.refused.clone().unwrap_or_else(|| panic!("not refused: {refused:?}"));
    assert!(why.contains("protected"), "git's message is not in the reason: {why}");
    assert_eq!(refused.commit, None);
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), deployed, "the branch moved");

    // The branch moves under the deployer's push: the change is made again on the new head.
    hook(&repo, "race", &other);
    let mut again = handover.clone();
    again.id = uuid::Uuid::new_v4();
    bus.publish(&again).await.expect("publish");
    let (_, answer) = answers(&bus, news.correlation_id, 2).await.remove(1);
    let commit = answer.commit.clone().unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), commit);
    assert_eq!(origin(&repo, &["rev-parse", "dev^"]), other, "not on the new head");
    assert_eq!(origin(&repo, &["show", "dev:README"]), "the site");
    assert_eq!(
        (answer.file.as_deref(), answer.key.as_deref()),
        (Some(file), Some("services.web.image"))
    );
    let want = literal.replace(&format!("{}:1.0", t.base), &format!("{}:1.1", t.base));
    assert_eq!(origin(&repo, &["show", &format!("dev:{file}")]), want.trim_end());
}

/// A stand-in for Gitea's API v1 (no Gitea can run on this machine): the two calls the
/// deployer makes, `GET` and `POST /api/v1/repos/ops/site/pulls`, with Gitea's answers as its
/// documentation and swagger give them (401 without the token, 404 for a head branch the
/// repository lacks, 409 for a second open request of the same branches, 201 with the
/// request). The head branch is looked up in the real bare repository, so a request made
/// before its branch is pushed fails as it would on Gitea.
mod fake_gitea {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::Json;
    use serde_json::{json, Value};

    pub const TOKEN: &str = "gitea-test-token-0123456789";

    #[derive(Default)]
    pub struct Pulls {
        pub list: Vec<Value>,
        /// Answers 500 to this many more POSTs (Gitea down for a moment).
        pub fail_posts: u32,
        pub posts: u32,
        pub tokens_seen: Vec<String>,
    }

    #[derive(Clone)]
    struct Api {
        pulls: Arc<Mutex<Pulls>>,
        bare: std::path::PathBuf,
        base: String,
    }

    fn authorised(api: &Api, headers: &HeaderMap) -> bool {
        let got = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        api.pulls.lock().expect("lock").tokens_seen.push(got.to_owned());
        got == format!("token {TOKEN}")
    }

    async fn list(State(api): State<Api>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
        if !authorised(&api, &headers) {
            return (StatusCode::UNAUTHORIZED, Json(json!({"message": "token is required"})));
        }
        let mut all = api.pulls.lock().expect("lock").list.clone();
        all.reverse();
        (StatusCode::OK, Json(Value::Array(all)))
    }

    async fn create(
        State(api): State<Api>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        if !authorised(&api, &headers) {
            return (StatusCode::UNAUTHORIZED, Json(json!({"message": "token is required"})));
        }
        let mut pulls = api.pulls.lock().expect("lock");
        pulls.posts += 1;
        if pulls.fail_posts > 0 {
            pulls.fail_posts -= 1;
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"message": "database is locked"})),
            );
        }
        let (head, base) =
            (body["head"].as_str().unwrap_or(""), body["base"].as_str().unwrap_or(""));
        let exists = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&api.bare)
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{head}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"message": "The target couldn't be found."})),
            );
        }
        let open = |p: &&Value| {
            p["state"] == "open" && p["head"]["label"] == head && p["base"]["ref"] == base
        };
        if pulls.list.iter().any(|p| open(&p)) {
            return (
                StatusCode::CONFLICT,
                Json(json!({"message": "pull request already exists for these targets"})),
            );
        }
        let number = pulls.list.len() + 1;
        let pr = json!({
            "number": number,
            "html_url": format!("{}/ops/site/pulls/{number}", api.base),
            "state": "open",
            "merged": false,
            "title": body["title"],
            "body": body["body"],
            "head": {"ref": head, "label": head},
            "base": {"ref": base, "label": base},
        });
        pulls.list.push(pr.clone());
        (StatusCode::CREATED, Json(pr))
    }

    /// Serves the API on 127.0.0.1 for the repository `bare`; its URL and state.
    pub async fn serve(bare: std::path::PathBuf) -> (String, Arc<Mutex<Pulls>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let pulls = Arc::new(Mutex::new(Pulls::default()));
        let api = Api { pulls: pulls.clone(), bare, base: base.clone() };
        let app = axum::Router::new()
            .route("/api/v1/repos/ops/site/pulls", axum::routing::get(list).post(create))
            .with_state(api);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, pulls)
    }
}

/// A repository served as `ops/site.git` (Gitea's owner/name), a fake Gitea for it, and the
/// deployer's settings for pull requests with `token`.
async fn gitea_repo() -> (Repo, String, std::sync::Arc<std::sync::Mutex<fake_gitea::Pulls>>) {
    let mut repo = Repo::new();
    std::fs::create_dir_all(repo.root.join("ops")).expect("mkdir");
    std::os::unix::fs::symlink(repo.root.join("origin.git"), repo.root.join("ops/site.git"))
        .expect("link");
    repo.url = repo.url.replace("/origin.git", "/ops/site.git");
    let (url, pulls) = fake_gitea::serve(repo.root.join("origin.git")).await;
    (repo, url, pulls)
}

fn gitea_env(url: &str, token: &str) -> [(&'static str, String); 2] {
    [("STEWARD_DEPLOY_GITEA_URL", url.to_owned()), ("STEWARD_DEPLOY_GITEA_TOKEN", token.to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_gitea_token_the_update_is_proposed_once_a_closed_request_stays_closed_and_a_merge_settles_it(
) {
    let bus = TestBus::new("commitbackpr").await;
    let (repo, api, pulls) = gitea_repo().await;
    let (t, scope, port) = (tags(), unique_name("scope"), free_port());
    let _leftovers = SwapLeftovers(web_container(&repo));
    let _deployer = deployer(&repo.env(&bus, port, &gitea_env(&api, fake_gitea::TOKEN)));
    let deployed = deploy(&bus, &repo, port, &scope, &format!("{}:1.0", t.base), "a").await;
    // Gitea fails the first creation: the hand-over is delivered again and the request made.
    pulls.lock().expect("lock").fail_posts = 1;
    let _updater = updater(&bus, &scope);
    let news = news(&repo, &t);
    bus.publish(&news).await.expect("publish");
    let (handover, w) = handed_over(&bus, news.correlation_id).await;
    let (_, answer) = answers(&bus, news.correlation_id, 1).await.remove(0);
    let proposal = format!("steward/update-{}", w.update_id);
    assert_eq!(answer.refused, None, "{answer:?}");
    assert_eq!(answer.proposal_branch.as_deref(), Some(proposal.as_str()));
    assert_eq!(answer.pull_request, Some(format!("{api}/ops/site/pulls/1")));
    let commit = answer.commit.clone().expect("the proposal's commit");
    {
        let p = pulls.lock().expect("lock");
        assert_eq!((p.list.len(), p.posts), (1, 2), "one request, after one failed creation");
        assert_eq!(p.list[0]["base"]["ref"], "dev");
        assert!(
            p.list[0]["title"].as_str().unwrap_or("").ends_with(":1.1 (image update on dev)"),
            "{}",
            p.list[0]
        );
        assert!(p.tokens_seen.iter().all(|t| t == &format!("token {}", fake_gitea::TOKEN)));
    }
    // The branch is untouched until a human merges; the proposal is one commit on top of it.
    assert_eq!(origin(&repo, &["rev-parse", "dev"]), deployed);
    assert_eq!(origin(&repo, &["rev-parse", &proposal]), commit);
    assert_eq!(origin(&repo, &["rev-parse", &format!("{proposal}^")]), deployed);
    assert_eq!(
        origin(&repo, &["show", &format!("{proposal}:.env")]),
        format!("WEB_IMAGE={}:1.1", t.base)
    );

    // A replay finds the branch and the request: none is added.
    let replay = |n: u128| {
        let mut again = handover.clone();
        again.id = uuid::Uuid::from_u128(handover.id.as_u128() ^ n);
        again
    };
    bus.publish(&replay(1)).await.expect("publish");
    let (_, again) = answers(&bus, news.correlation_id, 2).await.remove(1);
    assert_eq!(
        (again.pull_request.as_deref(), again.commit.as_deref()),
        (answer.pull_request.as_deref(), Some(commit.as_str()))
    );
    assert_eq!(pulls.lock().expect("lock").list.len(), 1, "a second request");

    let body = pulls.lock().expect("lock").list[0]["body"].as_str().unwrap_or("").to_owned();
    let trailer = format!("Steward-Update: {}", w.update_id);
    assert!(body.ends_with(&trailer), "a squash would lose the trailer: {body}");

    // A human closes it unmerged and deletes its branch (Gitea then gives the head's `ref` as
    // the request's own): a replay finds it by the branch's name, leaves it closed, says so,
    // and pushes nothing.
    {
        let mut p = pulls.lock().expect("lock");
        p.list[0]["state"] = "closed".into();
        p.list[0]["head"]["ref"] = "refs/pull/1/head".into();
    }
    origin(&repo, &["update-ref", "-d", &format!("refs/heads/{proposal}")]);
    bus.publish(&replay(2)).await.expect("publish");
    let (_, closed) = answers(&bus, news.correlation_id, 3).await.remove(2);
    let why = closed.refused.clone().unwrap_or_else(|| panic!("{closed:?}"));
    assert!(why.contains("closed without merging"), "{why}");
    assert_eq!(pulls.lock().expect("lock").list.len(), 1, "reopened as a new request");
    let branches = origin(&repo, &["branch", "--list", "steward/*"]);
    assert!(branches.is_empty(), "pushed again: {branches}");

    // Merged by Gitea (a squash, say: the branch lacks the proposal's commit): settled with
    // the merge's commit, no longer waiting.
    {
        let mut p = pulls.lock().expect("lock");
        p.list[0]["merged"] = true.into();
        p.list[0]["merge_commit_sha"] = deployed.clone().into();
    }
    bus.publish(&replay(4)).await.expect("publish");
    let (_, squashed) = answers(&bus, news.correlation_id, 4).await.remove(3);
    let said = (squashed.commit.as_deref(), squashed.pull_request.as_deref());
    assert_eq!(said, (Some(deployed.as_str()), None), "{squashed:?}");
    assert_eq!(squashed.refused, None);

    // Merged into the branch (fast-forwarded to the proposal): the update's commit is found on it.
    origin(&repo, &["update-ref", "refs/heads/dev", &commit]);
    bus.publish(&replay(3)).await.expect("publish");
    let (_, merged) = answers(&bus, news.correlation_id, 5).await.remove(4);
    assert_eq!(
        (merged.commit.as_deref(), merged.pull_request.as_deref()),
        (Some(commit.as_str()), None),
        "{merged:?}"
    );
    assert_eq!(merged.refused, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_proposals_push_and_before_its_request_it_proposes_once_and_a_wrong_token_is_told(
) {
    let bus = TestBus::new("commitbackprkill").await;
    let (repo, api, pulls) = gitea_repo().await;
    let (t, scope, port) = (tags(), unique_name("scope"), free_port());
    let _leftovers = SwapLeftovers(web_container(&repo));
    let settings = |extra: &[(&'static str, String)]| {
        let mut all = gitea_env(&api, fake_gitea::TOKEN).to_vec();
        all.extend(extra.iter().cloned());
        repo.env(&bus, port, &all)
    };
    {
        let _clean = deployer(&settings(&[]));
        deploy(&bus, &repo, port, &scope, &format!("{}:1.0", t.base), "a").await;
    }
    let _updater = updater(&bus, &scope);
    let news = news(&repo, &t);
    bus.publish(&news).await.expect("publish");
    let (handover, w) = handed_over(&bus, news.correlation_id).await;
    for point in ["propose:pushed", "propose:listed"] {
        let mut armed = deployer(&settings(&[("STEWARD_FAILPOINTS", point.into())]));
        assert!(
            armed.exits_within(Duration::from_secs(120)),
            "{point} not reached: {}",
            armed.logs()
        );
        assert!(armed.logs().contains("aborting"), "{point}: {}", armed.logs());
    }
    assert!(pulls.lock().expect("lock").list.is_empty(), "a request before the kills' end");
    let proposal = format!("steward/update-{}", w.update_id);
    let pushed = origin(&repo, &["rev-list", &format!("dev..{proposal}")]);
    assert_eq!(pushed.lines().count(), 1, "{pushed}");
    let _again = deployer(&settings(&[]));
    let (_, answer) = answers(&bus, news.correlation_id, 1).await.remove(0);
    assert_eq!(answer.commit.as_deref(), Some(pushed.trim()), "{answer:?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pulls.lock().expect("lock").list.len(), 1, "settled: one request");
    assert_eq!(
        origin(&repo, &["rev-list", &format!("dev..{proposal}")]),
        pushed,
        "a second commit"
    );
    let again_logs = _again.logs();
    drop(_again);

    // A wrong token (a new update of the same change): the branch is pushed, the refusal
    // names Gitea's answer, and the token is in no event.
    let _wrong = deployer(&repo.env(&bus, port, &gitea_env(&api, "not-the-token-at-all")));
    let mut other = handover.clone();
    other.id = uuid::Uuid::new_v4();
    let EventData::UpdateWrittenBack(o) = &mut other.data else { unreachable!() };
    o.update_id = uuid::Uuid::new_v4();
    bus.publish(&other).await.expect("publish");
    let (_, refused) = answers(&bus, news.correlation_id, 2).await.remove(1);
    let why = refused.refused.clone().unwrap_or_else(|| panic!("{refused:?}"));
    assert!(why.contains("401") && why.contains("open one by hand"), "{why}");
    let all = format!("{:?}", stored_events(&bus).await);
    assert!(!all.contains(fake_gitea::TOKEN) && !all.contains("not-the-token-at-all"));
    for logs in [_wrong.logs(), again_logs] {
        assert!(!logs.contains(fake_gitea::TOKEN) && !logs.contains("not-the-token-at-all"));
    }
}
