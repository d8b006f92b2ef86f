//! Polling: every `STEWARD_DEPLOY_POLL_INTERVAL`, `git ls-remote` of each repository's
//! configured branches;
//! a head that is not the commit an environment's record names becomes `deploy.requested`
//! (once per head per process; the flow ignores what is not news anyway).

use std::collections::BTreeMap;

use steward_events::{Change, DeployRequested, Event};

use crate::flow::Flow;

/// One poll; `seen` remembers what this process already asked for, per environment. The
/// repositories are asked at once, so one that hangs delays none of the others.
pub async fn poll_once(flow: &Flow, seen: &mut BTreeMap<String, String>) {
    let asked = flow.cfg.repositories.iter().map(|r| heads_of(flow, &r.project));
    for (repository, heads) in futures::future::join_all(asked).await {
        match heads {
            Ok(heads) => requests(flow, repository, &heads, seen).await,
            Err(e) => {
                tracing::warn!(repository, error = %e, "polling the repository failed; tried again next time")
            }
        }
    }
}

/// The heads of the branches the environments of the repository of project `repository`
/// deploy.
async fn heads_of<'a>(
    flow: &Flow,
    repository: &'a str,
) -> (&'a str, Result<BTreeMap<String, String>, crate::command::CommandError>) {
    let environments = flow.cfg.environments.iter().filter(|e| e.repository == repository);
    let branches: Vec<&str> = environments.clone().map(|e| e.branch.as_str()).collect();
    let Some(first) = environments.clone().next() else { return (repository, Ok(BTreeMap::new())) };
    (repository, flow.git(&first.name).heads(&branches).await)
}

/// `deploy.requested` for each environment of `repository` whose branch's head is news.
async fn requests(
    flow: &Flow,
    repository: &str,
    heads: &BTreeMap<String, String>,
    seen: &mut BTreeMap<String, String>,
) {
    for env in flow.cfg.environments.iter().filter(|e| e.repository == repository) {
        let Some(head) = heads.get(&env.branch) else { continue };
        if seen.get(&env.name) == Some(head) {
            continue;
        }
        let waiting = |q: Option<steward_bus::Versioned<steward_events::records::QueuedDeploy>>| {
            q.is_some_and(|q| match &q.value.request.data {
                steward_events::EventData::DeployRequested(r) => r.change.commit == *head,
                _ => false,
            })
        };
        match flow.records.get(&env.name).await {
            Ok(Some(v)) if v.value.change.commit == *head => {
                seen.insert(env.name.clone(), head.clone());
                continue;
            }
            // Already waiting for the deployment under way to end.
            Ok(_) if flow.queued(&env.name).await.map(waiting).unwrap_or(false) => {
                seen.insert(env.name.clone(), head.clone());
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the deployment record; polled again later");
                continue;
            }
        }
        let change = Change {
            repository: flow.cfg.repository_of(&env.name).shown(),
            branch: env.branch.clone(),
            environment: env.name.clone(),
            commit: head.clone(),
            author: None,
            message: None,
        };
        let event =
            Event::new(&flow.source, DeployRequested { change, requested_by: Some("poll".into()) });
        match flow.bus.publish(&event).await {
            Ok(_) => {
                tracing::info!(environment = %env.name, commit = %head, "new head found by polling");
                seen.insert(env.name.clone(), head.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not publish deploy.requested; polled again later")
            }
        }
    }
}
