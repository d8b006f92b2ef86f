//! Polling: every `STEWARD_DEPLOY_POLL_INTERVAL`, `git ls-remote` of each repository's
//! configured branches;
//! a head that is not the commit an environment's record names becomes `deploy.requested`
//! (once per head per process; the flow ignores what is not news anyway).

use std::collections::BTreeMap;

use steward_events::{Change, DeployRequested, Event};

use crate::flow::Flow;

/// One poll; `seen` remembers what this process already asked for, per environment.
pub async fn poll_once(flow: &Flow, seen: &mut BTreeMap<String, String>) {
    for repository in &flow.cfg.repositories {
        poll_repository(flow, &repository.project, seen).await;
    }
}

/// One poll of the repository of project `repository`: one repository that cannot be
/// reached delays only its own environments.
async fn poll_repository(flow: &Flow, repository: &str, seen: &mut BTreeMap<String, String>) {
    let environments: Vec<&crate::config::Environment> =
        flow.cfg.environments.iter().filter(|e| e.repository == repository).collect();
    let Some(first) = environments.first() else { return };
    let branches: Vec<&str> = environments.iter().map(|e| e.branch.as_str()).collect();
    let heads = match flow.git(&first.name).heads(&branches).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(repository, error = %e, "polling the repository failed; tried again next time");
            return;
        }
    };
    for env in environments {
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
