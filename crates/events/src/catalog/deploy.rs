//! Deployments from git: `deploy.*` (the deployer service, issue 21).
//!
//! Every payload carries the change it is about ([`Change`]: repository, branch, environment,
//! commit, and the author and message when known), flattened into the payload, so a mail or
//! an audit line names the commit without looking anything up.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Payload;

/// The commit a deployment is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The repository as configured (its clone URL, credentials never included).
    pub repository: String,
    /// The branch it was pushed to.
    pub branch: String,
    /// The environment the branch deploys to (`dev`, `staging`, `prod`).
    pub environment: String,
    /// The full commit id (40 hex digits).
    pub commit: String,
    /// Its author, when known (`Name <mail>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Its message's first line, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Change {
    /// The first 10 digits of the commit, as people quote it.
    pub fn short_commit(&self) -> &str {
        self.commit.get(..10).unwrap_or(&self.commit)
    }
}

/// A commit should be deployed (from the push webhook, polling, or a human).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequested {
    /// What to deploy.
    #[serde(flatten)]
    pub change: Change,
    /// Who or what asked: `webhook`, `poll`, `user@host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl Payload for DeployRequested {}

/// A human pins an environment to a commit of its branch (`steward deploy ENV COMMIT`): a
/// rollback to any earlier commit, or, naming the branch's head, the end of a pin. Only the
/// CLI's NATS user may publish it. It goes through the environment's policy like a push; while
/// the pinned commit runs, pushes to the branch are refused with `deploy.failed` (saying so)
/// instead of replacing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPinRequested {
    /// The environment (`dev`, `staging`, `prod`).
    pub environment: String,
    /// The full commit id; it must be on the environment's branch (its head or an ancestor).
    pub commit: String,
    /// Who asked (`user@host`).
    pub by: String,
}

impl Payload for DeployPinRequested {}

/// A deployment to an environment with manual approval waits for `deploy.approved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPending {
    /// The deployment (minted by the deployer).
    pub deploy_id: Uuid,
    /// What would be deployed.
    #[serde(flatten)]
    pub change: Change,
    /// The commit running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// The compose services whose definition changes.
    pub services: Vec<String>,
    /// Who pinned the environment to this commit (`deploy.pin_requested`), when it is a pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_by: Option<String>,
}

impl Payload for DeployPending {}

/// A deployment that could start waits for its environment's deployment window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployDeferred {
    /// The deployment.
    pub deploy_id: Uuid,
    /// What will be deployed.
    #[serde(flatten)]
    pub change: Change,
    /// The commit running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// The compose services whose definition changes.
    pub services: Vec<String>,
    /// When the window opens, in the deployer's time zone (`TZ`): `2026-12-05 03:00`.
    pub opens: String,
    /// Who approved it, in a manual environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl Payload for DeployDeferred {}

/// A human approved a pending deployment (`steward deploy approve`, or the signed link of the
/// `deploy.pending` mail: published by the deployer's approval page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployApproved {
    /// The deployment.
    pub deploy_id: Uuid,
    /// Who approved (`user@host`, or `approval-page` for the mailed link).
    pub by: String,
}

impl Payload for DeployApproved {}

/// A human rejected a pending deployment: it ends with `deploy.failed`, nothing touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRejected {
    /// The deployment.
    pub deploy_id: Uuid,
    /// Who rejected (`user@host`, or `approval-page` for the mailed link).
    pub by: String,
    /// Why, if they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Payload for DeployRejected {}

/// The deployment began: backed up (or about to be), then the changed services are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployStarted {
    /// The deployment.
    pub deploy_id: Uuid,
    /// What is deployed.
    #[serde(flatten)]
    pub change: Change,
    /// The commit running before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// The compose services whose definition changes (only these are recreated).
    pub services: Vec<String>,
}

impl Payload for DeployStarted {}

/// The changed services run the commit's definitions and passed their health gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySucceeded {
    /// The deployment.
    pub deploy_id: Uuid,
    /// What was deployed.
    #[serde(flatten)]
    pub change: Change,
    /// The commit running before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// The services recreated.
    pub services: Vec<String>,
    /// Wall time from the request.
    pub duration_ms: u64,
}

impl Payload for DeploySucceeded {}

/// The deployment stopped before any service was touched (fetch, validation, backup, a
/// rejection or timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployFailed {
    /// The deployment, when one was claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<Uuid>,
    /// What was to be deployed.
    #[serde(flatten)]
    pub change: Change,
    /// What went wrong.
    pub reason: String,
    /// Last lines of the failing command's output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

impl Payload for DeployFailed {}

/// The commit's services failed; the previous commit's definitions run again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRolledBack {
    /// The deployment.
    pub deploy_id: Uuid,
    /// What was deployed and refused.
    #[serde(flatten)]
    pub change: Change,
    /// The commit whose definitions run again (none: the environment's first deployment;
    /// what was started by hand is made again from its own compose files, the rest removed,
    /// as the reason says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// The services the deployment changed (each put back or removed).
    pub services: Vec<String>,
    /// Why the commit was refused.
    pub reason: String,
    /// Last log lines of the failing service's container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Whether the services passed the health gate on the previous definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_healthy: Option<bool>,
}

impl Payload for DeployRolledBack {}

/// An image update of a service deployed from git (`update.written_back` handed to the
/// deployer): the deployer committed the new reference to the environment's branch, so the
/// next deployment keeps it; or why not (`refused`), for a human to commit by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployWrittenBack {
    /// The image update.
    pub update_id: Uuid,
    /// The environment whose branch names the service's image.
    pub environment: String,
    /// The branch.
    pub branch: String,
    /// The repository, without credentials.
    pub repository: String,
    /// Container name.
    pub container: String,
    /// The reference the container runs now (what was, or should be, committed).
    pub image: String,
    /// The commit that names it (made now, or found: a repeat); absent when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The file changed, in the repository (absent when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What was changed in it: a variable's name or `services.S.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why nothing was committed (the update itself stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The branch the commit was pushed to for review, when proposed as a pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal_branch: Option<String>,
    /// The pull request's page, when proposed as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<String>,
}

impl Payload for DeployWrittenBack {
    fn container(&self) -> Option<&str> {
        Some(&self.container)
    }
}
