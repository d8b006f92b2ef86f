//! A manual environment decided through the signed mail link (issue 21), as image updates
//! are: the real deployer and notifier against the test bed's NATS, Docker and SMTP sink and
//! a real git server. A push to the manual environment is mailed with its link (commit,
//! author, message and environment told; the token in no event and no log); a GET shows the
//! page and decides nothing (mail scanners fetch links); hostile links (an update's token for
//! the same id, a genuine token for another deployment, an altered one, an expired one) are
//! refused and deploy nothing; the POST deploys, recorded as by the approval page; the link
//! replayed, and replayed again after a restart once the deployment is over, changes nothing.

mod deploy_common;

use deploy_common::*;
use steward_approval::{ApprovalLinks, LinkKind};
use steward_system_tests::mail::{
    testbed_maildir, testbed_notifier_env, unique_address, wait_mails,
};

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
    let flow = outcome(&bus, &first, Duration::from_secs(60)).await;
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
    assert!(body.contains("no longer waits"), "{body}");
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
