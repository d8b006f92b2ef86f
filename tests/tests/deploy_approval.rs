//! A manual environment decided through the signed mail link (issue 21), as image updates
//! are: the real deployer and notifier against the test bed's NATS, Docker and SMTP sink and
//! a real git server. A push to the manual environment is mailed with its link (commit,
//! author, message and environment told; the token in no event and no log); a GET shows the
//! page and decides nothing (mail scanners fetch links); hostile links (an update's token for
//! the same id, a genuine token for another deployment, an altered one, an expired one) are
//! refused and deploy nothing; the POST deploys, recorded as by the approval page; the link
//! replayed, and replayed again after a restart once the deployment is over, changes nothing.
//!
//! The claim survives the process (`DEPLOY_LINKS`): a link used before a SIGKILL, or before a
//! kill while the flow takes the approval (once, or twice in a row), is refused by the
//! restarted deployer while the deployment still waits on its approval, with no second
//! decision event, and the flow ends once. A kill between the claim and its publish leaves the
//! link refused (and not given to the notifier again) and the page says the decision may not
//! have been recorded; the CLI decides.

mod deploy_common;

use deploy_common::*;
use steward_approval::{ApprovalLinks, LinkKind};
use steward_system_tests::mail::{
    testbed_maildir, testbed_notifier_env, unique_address, wait_mails,
};
use steward_system_tests::steward_ok;

const LINK_SECRET: &str = "deploy-link-secret-0123456789abcdef0123";

async fn post_decision(url: &str, decision: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .form(&[("decision", decision)])
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn approvals(events: &[Event], id: uuid::Uuid) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::DeployApproved(a) if a.deploy_id == id => Some(a.by.clone()),
            EventData::DeployRejected(r) if r.deploy_id == id => Some(format!("rejected {}", r.by)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_deployment_is_approved_by_its_mailed_link_on_post_only_and_hostile_links_deploy_nothing(
) {
    let bus = TestBus::new("deploylink").await;
    let repo = Repo::new();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let extra = [
        ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned()),
        ("STEWARD_DEPLOY_PUBLIC_URL", public.clone()),
        ("STEWARD_DEPLOY_APPROVAL_SECRET", LINK_SECRET.to_owned()),
        ("STEWARD_DEPLOY_APPROVAL_TTL", "1h".to_owned()),
    ];
    let env = repo.env(&bus, port, &extra);
    let deployer_proc = deployer(&env);
    let to = unique_address("deploylink");
    let notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));

    let first = push_version(&repo, port, "v1", "first: web v1").await;
    let id = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == first => Some(p.deploy_id),
        _ => None,
    })
    .await;
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(30));
    let mail = &mails[0];
    let link = mail
        .text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Approval page: "))
        .unwrap_or_else(|| panic!("no link in the mail: {}", mail.text))
        .to_owned();
    assert!(link.starts_with(&format!("{public}/deploy/approve/")), "{link}");
    for fact in [&first[..10], "Ada", "first: web v1", "dev", "steward deploy approve"] {
        assert!(mail.text.contains(fact), "the mail does not tell {fact}: {}", mail.text);
    }
    let token = steward_approval::links::token_of(&link).expect("token").to_owned();
    let signature = token.rsplit('.').next().expect("signature").to_owned();
    let stored = format!("{:?}", stored_events(&bus).await);
    assert!(!stored.contains(&signature), "the token is in an event");

    // A GET (what a mail scanner does) shows the page and decides nothing.
    let (status, page) = get(&link).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&first) && page.contains("Approve"), "{page}");

    // Hostile links: each refused, nothing published.
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let ttl = Duration::from_secs(3600);
    let deploy_links = ApprovalLinks::new(LinkKind::Deploy, &public, LINK_SECRET.as_bytes(), ttl);
    let update_links = ApprovalLinks::new(LinkKind::Update, &public, LINK_SECRET.as_bytes(), ttl);
    let as_deploy = |url: String| {
        let token = steward_approval::links::token_of(&url).expect("token").to_owned();
        format!("{public}/deploy/approve/{token}")
    };
    let altered = {
        let (_, rest) = token.split_once('.').expect("id");
        format!("{public}/deploy/approve/{}.{rest}", uuid::Uuid::now_v7().simple())
    };
    let hostile = [
        ("an update's token for this id", as_deploy(update_links.link_for(id, now + hour)), 403),
        ("another deployment's", deploy_links.link_for(uuid::Uuid::now_v7(), now + hour), 404),
        ("altered", altered, 403),
        ("expired", deploy_links.link_for(id, now - hour), 410),
    ];
    for (what, url, expected) in &hostile {
        let (status, body) = post_decision(url, "approve").await;
        assert_eq!(status, *expected, "{what}: {body}");
        assert!(
            body.contains("Nothing was changed") || body.contains("not valid"),
            "{what}: {body}"
        );
    }
    let (status, body) = post_decision(&link, "deploy it all").await;
    assert_eq!(status, 400, "an unknown decision: {body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(approvals(&stored_events(&bus).await, id).is_empty(), "decided without a POST");
    assert!(repo.container("web").is_none(), "deployed without a POST");

    // The POST deploys, as the CLI's approval does, recorded as the page's. Two clicks at
    // once (a double click, two readers of the mail): one decides, the other is told so.
    let (a, b) = tokio::join!(post_decision(&link, "approve"), post_decision(&link, "approve"));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 410], "{a:?} {b:?}");
    let body = if a.0 == 200 { a.1 } else { b.1 };
    assert!(body.contains("Approved"), "{body}");
    let flow = outcome(&bus, &first, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v1"));

    // Replayed: refused, while the deployer that took it runs and after a restart.
    let (status, body) = post_decision(&link, "reject").await;
    assert_eq!(status, 410, "{body}");
    let first_logs = deployer_proc.logs();
    drop(deployer_proc);
    let deployer_proc = deployer(&env);
    let (status, body) = post_decision(&link, "approve").await;
    assert_eq!(status, 410, "after a restart: {body}");
    assert!(body.contains("already used: approved at"), "{body}");
    let (status, _) = get(&link).await;
    assert_eq!(status, 410);
    let events = stored_events(&bus).await;
    assert_eq!(approvals(&events, id), ["approval-page"], "one decision, by the page");
    let stored = format!("{events:?}");
    assert!(!stored.contains(&signature), "the token is in an event");
    let logs = [first_logs, deployer_proc.logs(), notifier.logs()];
    for (name, logs) in ["deployer", "restarted deployer", "notifier"].iter().zip(logs) {
        assert!(!logs.contains(&signature), "the token is in the {name}'s log");
    }
}

/// Links are off unless the deployer has a public URL and a key (the default): its pending
/// deployments are mailed with the CLI's commands and no complaint. Nobody listening for the
/// link request is that setting, not a fault (every such mail said "No approval link: the
/// deployer did not answer", and the notifier warned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_deployment_links_the_mail_gives_the_cli_commands_without_a_warning() {
    let bus = TestBus::new("deploynolink").await;
    let repo = Repo::new();
    let port = free_port();
    let env = repo.env(&bus, port, &[("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned())]);
    let _deployer = deployer(&env);
    let to = unique_address("deploynolink");
    let notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));
    let first = push_version(&repo, port, "v1", "first: web v1").await;
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(30));
    let text = &mails[0].text;
    assert!(text.contains(&first[..10]) && text.contains("steward deploy approve"), "{text}");
    assert!(!text.contains("No approval link") && !text.contains("Approval page"), "{text}");
    assert!(!notifier.logs().contains("no approval link"), "{}", notifier.logs());
}

/// The deployer's settings with links on `port`, for the kill tests.
fn link_env(repo: &Repo, bus: &Bus, port: u16) -> Vec<(&'static str, String)> {
    let extra = [
        ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned()),
        ("STEWARD_DEPLOY_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("STEWARD_DEPLOY_APPROVAL_SECRET", LINK_SECRET.to_owned()),
        ("STEWARD_DEPLOY_APPROVAL_TTL", "1h".to_owned()),
    ];
    repo.env(bus, port, &extra)
}

/// What the repository's test runs, after the approval: long enough that the deployment
/// still waits on its approval (`pending`) when the test clicks again after a restart.
const SLOW_TEST: &str = "steward.deploy.test: sleep 12";

/// v1 pushed with [`SLOW_TEST`] to the manual environment, waiting: its commit, deployment
/// id, and the approval link (minted as the deployer mints it; the mail's is tested above).
async fn pending_with_link(bus: &Bus, repo: &Repo, port: u16) -> (String, uuid::Uuid, String) {
    let commit = repo.commit_labelled("dev", "v1", "first: web v1", "", SLOW_TEST);
    push_commit(repo, port, &commit, "first: web v1").await;
    let (_, pending) = pending_of(bus, &commit).await;
    let links = ApprovalLinks::new(
        LinkKind::Deploy,
        &format!("http://127.0.0.1:{port}"),
        LINK_SECRET.as_bytes(),
        Duration::from_secs(3600),
    );
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    (commit, pending.deploy_id, links.link_for(pending.deploy_id, expires))
}

/// A POST the deployer may die answering: the status, or none.
async fn post_dying(url: &str, decision: &str) -> Option<u16> {
    let r = reqwest::Client::new().post(url).form(&[("decision", decision)]).send().await;
    r.ok().map(|r| r.status().as_u16())
}

/// After the restart, with the deployment still waiting on its approval: both buttons of the
/// used link are refused, nothing is published, and the flow ends once, deployed.
async fn replays_refused_and_one_end(
    bus: &Bus,
    repo: &Repo,
    commit: &str,
    id: uuid::Uuid,
    link: &str,
) {
    for decision in ["reject", "approve"] {
        let (status, body) = post_decision(link, decision).await;
        assert_eq!(status, 410, "{decision} after the restart: {body}");
        assert!(body.contains("already used: approved at"), "{body}");
    }
    let flow = outcome(bus, commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v1"));
    let events = stored_events(bus).await;
    assert_eq!(approvals(&events, id), ["approval-page"], "one decision, by the page");
    // After the end the link stays refused (the deployment no longer waits, and it is used).
    let (status, _) = post_decision(link, "reject").await;
    assert_eq!(status, 410);
}

/// Approved through the page, SIGKILLed while the flow runs the repository's test (the
/// approval taken, not yet acknowledged), started again: the link is refused although the
/// deployment still waits on its approval. A claim kept in memory accepted the `reject`,
/// published a second decision and said "Rejected" of a deployment being approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_used_before_a_sigkill_is_refused_after_the_restart_and_the_flow_ends_once() {
    let bus = TestBus::new("deployclaim").await;
    let repo = Repo::new();
    let port = free_port();
    let env = link_env(&repo, &bus, port);
    let first = deployer(&env);
    let (commit, id, link) = pending_with_link(&bus, &repo, port).await;
    let (status, body) = post_decision(&link, "approve").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Approved"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.logs().contains("deployment approved") {
        assert!(Instant::now() < deadline, "the approval was not taken: {}", first.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Approved and taken (its repository's test runs): the record says so, and the CLI has
    // nothing more to decide (it used to publish a rejection the flow then ignored, and say
    // "rejected").
    let out = steward_system_tests::steward(&bus, &["deploy", "reject", "dev"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("already approved"), "{said}");
    drop(first); // SIGKILL
    let _again = deployer(&env);
    replays_refused_and_one_end(&bus, &repo, &commit, id, &link).await;
}

/// Approved through the page by a deployer that aborts (failpoint `approving`) as its flow
/// takes the approval, before doing anything with it, `kills` times in a row (each restart
/// is delivered the approval again and aborts again), then started clean: it starts, the
/// used link is refused, and the flow ends once.
async fn killed_taking_the_approval(kills: usize) {
    let bus = TestBus::new("deployclaimkill").await;
    let repo = Repo::new();
    let port = free_port();
    let env = link_env(&repo, &bus, port);
    let mut armed_env = env.clone();
    armed_env.push(("STEWARD_FAILPOINTS", "approving".into()));
    let mut armed = deployer(&armed_env);
    let (commit, id, link) = pending_with_link(&bus, &repo, port).await;
    // The deployer may die before it answers: what counts is what was published.
    let _ = post_dying(&link, "approve").await;
    for kill in 1..=kills {
        assert!(armed.exits_within(Duration::from_secs(120)), "kill {kill}: {}", armed.logs());
        assert!(armed.logs().contains("failpoint: approving: aborting"), "{}", armed.logs());
        if kill < kills {
            armed = deployer(&armed_env);
        }
    }
    drop(armed);
    let events = stored_events(&bus).await;
    assert_eq!(approvals(&events, id), ["approval-page"], "the approval was published");
    let again = deployer(&env);
    replays_refused_and_one_end(&bus, &repo, &commit, id, &link).await;
    assert!(again.logs().contains("deployment approved"), "{}", again.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_used_before_a_kill_as_the_flow_takes_it_is_refused_after_the_restart() {
    killed_taking_the_approval(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_in_a_row_taking_the_approval_it_starts_and_the_flow_ends_once() {
    killed_taking_the_approval(2).await;
}

/// Killed between the claim and its publish (failpoint `link_claimed`): nothing was
/// decided and the link is spent. The restarted page refuses it and says the decision may not
/// have been recorded, naming the command; the CLI then decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_claim_and_its_publish_the_page_says_so_and_the_cli_decides() {
    let bus = TestBus::new("deployclaimgap").await;
    let repo = Repo::new();
    let port = free_port();
    let env = link_env(&repo, &bus, port);
    let mut armed_env = env.clone();
    armed_env.push(("STEWARD_FAILPOINTS", "link_claimed".into()));
    let mut armed = deployer(&armed_env);
    let (commit, id, link) = pending_with_link(&bus, &repo, port).await;
    assert_eq!(post_dying(&link, "approve").await, None, "answered after the claim");
    assert!(armed.exits_within(Duration::from_secs(120)), "{}", armed.logs());
    drop(armed);
    let _again = deployer(&env);
    let (status, body) = post_decision(&link, "approve").await;
    assert_eq!(status, 410, "{body}");
    assert!(
        body.contains("not recorded") && body.contains("steward deploy approve"),
        "the page does not say the decision may be lost: {body}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(approvals(&stored_events(&bus).await, id).is_empty(), "decided by a spent link");
    // Nor is the spent link mailed again (a reminder asks for it while the deployment waits).
    let reply = bus
        .request_approval_link(LinkKind::Deploy, id, None, Duration::from_secs(5))
        .await
        .expect("the deployer answers");
    match reply {
        steward_bus::approval::LinkReply::Unavailable { reason } => {
            assert!(reason.contains("already used"), "{reason}")
        }
        other => panic!("a spent link given again: {other:?}"),
    }
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert_eq!(approvals(&stored_events(&bus).await, id).len(), 1, "one decision");
}
