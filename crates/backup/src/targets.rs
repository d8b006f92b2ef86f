//! What a backup covers: the running containers in scope with backup labels, and the
//! configuration of every watched or backed-up container.

use std::collections::HashMap;

use steward_engine::{ContainerInfo, Engine, EngineError};
use steward_labels::BackupLabels;

/// A container with something to back up.
#[derive(Debug, Clone)]
pub struct Target {
    /// The container.
    pub container: ContainerInfo,
    /// What to back up of it.
    pub labels: BackupLabels,
}

impl Target {
    fn project(&self) -> Option<&str> {
        self.container.labels.get(steward_labels::compose::PROJECT).map(String::as_str)
    }
}

/// Everything one backup run covers.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Containers with backup labels.
    pub targets: Vec<Target>,
    /// Names of the containers whose configuration is saved.
    pub configs: Vec<String>,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A container's backup labels are wrong: the backup fails rather than silently skip
    /// data the operator asked to protect.
    #[error("container {container}: {error}")]
    Label {
        /// The container.
        container: String,
        /// The label problem.
        error: steward_labels::LabelError,
    },
    /// A container asked for by name is not running.
    #[error("container {0} is not running (or not in this installation's scope)")]
    Missing(String),
}

/// Finds what to back up. With `only` empty: every labelled container. With names (the
/// updater's backup before updating them): those containers, plus every database of their
/// compose project (all databases when they have none), because an app's new version may
/// migrate its database.
pub async fn plan(
    engine: &Engine,
    scope: Option<&str>,
    only: &[String],
) -> Result<Plan, PlanError> {
    let running =
        engine.running_containers(|labels| steward_labels::in_scope(labels, scope)).await?;
    let mut all = vec![];
    let mut configs = vec![];
    for c in running {
        let labels = steward_labels::backup_labels(&c.labels)
            .map_err(|error| PlanError::Label { container: c.name.clone(), error })?;
        let watched = steward_labels::watched(&c.labels).unwrap_or(false);
        if labels.any() || watched {
            configs.push(c.name.clone());
        }
        all.push(Target { container: c, labels });
    }
    let targets: Vec<Target> = if only.is_empty() {
        all.into_iter().filter(|t| t.labels.any()).collect()
    } else {
        let by_name: HashMap<&str, &Target> =
            all.iter().map(|t| (t.container.name.as_str(), t)).collect();
        let mut chosen: Vec<&Target> = vec![];
        for name in only {
            let t = by_name.get(name.as_str()).ok_or_else(|| PlanError::Missing(name.clone()))?;
            chosen.push(t);
        }
        let projects: Vec<Option<&str>> = chosen.iter().map(|t| t.project()).collect();
        let databases = all.iter().filter(|t| {
            t.labels.postgres && (projects.contains(&None) || projects.contains(&t.project()))
        });
        let mut out: Vec<Target> = vec![];
        for t in chosen.into_iter().chain(databases) {
            if t.labels.any() && !out.iter().any(|o| o.container.name == t.container.name) {
                out.push(t.clone());
            }
        }
        configs.retain(|name| only.contains(name) || out.iter().any(|t| &t.container.name == name));
        for name in only {
            if !configs.contains(name) {
                configs.push(name.clone());
            }
        }
        out
    };
    Ok(Plan { targets, configs })
}
