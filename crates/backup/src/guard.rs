//! What a restore may write to, decided by the containers as they are now, not by the
//! manifest: the bucket is not trusted, and even a signed manifest only says what was backed
//! up then. A database is restored only into a container in this installation's scope that
//! carries `steward.backup.postgres=true` now; a path only into one whose
//! `steward.backup.paths` names that path now. Restore calls [`Backups::check_targets`] before
//! it stops or changes anything (tar entries are checked on the byte path: `tarcheck`).

use steward_store::manifest::{Kind, Manifest};

use crate::backup::{Backups, Failure};

/// What a component needs its container's labels to allow.
enum Wants<'a> {
    /// `steward.backup.postgres`.
    Database,
    /// The path among `steward.backup.paths`.
    Path(&'a String),
}

impl Backups {
    /// Refuses, naming every offending component, when a component of `manifest` that a
    /// restore would touch (databases and paths: their containers are stopped whatever the
    /// scope) names a container that does not exist, is outside this installation's scope, or
    /// does not carry the matching backup label now.
    pub async fn check_targets(&self, manifest: &Manifest) -> Result<(), Failure> {
        let mut problems = vec![];
        for c in &manifest.components {
            let (container, wanted) = match &c.kind {
                // A cluster is restored into a database container, whether it still takes base
                // backups or not.
                Kind::Postgres { container, .. } | Kind::PostgresBase { container, .. } => {
                    (container, Wants::Database)
                }
                Kind::Path { container, path } => (container, Wants::Path(path)),
                Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => {
                    continue
                }
            };
            let Some(labels) =
                self.engine.container_labels(container).await.map_err(Failure::plain)?
            else {
                return Err(Failure::plain(format!(
                    "container {container} does not exist: create the stack first (docker-compose up -d), then restore"
                )));
            };
            let scope = self.config.scope.as_deref();
            if !steward_labels::in_scope(&labels, scope) {
                problems.push(format!(
                    "{}: container {container} is not in this installation's scope",
                    c.name
                ));
                continue;
            }
            let backup = match steward_labels::backup_labels(&labels) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{}: container {container}: {e}", c.name));
                    continue;
                }
            };
            match wanted {
                Wants::Database if !backup.postgres => problems.push(format!(
                    "{}: container {container} does not carry {}=true now",
                    c.name,
                    steward_labels::BACKUP_POSTGRES
                )),
                Wants::Path(path) if !backup.paths.iter().any(|p| p == path) => {
                    problems.push(format!(
                        "{}: {path} is not among container {container}'s {} now ({})",
                        c.name,
                        steward_labels::BACKUP_PATHS,
                        if backup.paths.is_empty() {
                            "none".to_owned()
                        } else {
                            backup.paths.join(", ")
                        }
                    ))
                }
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Failure::plain(format!(
                "backup {} names what this installation does not back up, nothing was changed: {}",
                manifest.backup_id,
                problems.join("; ")
            )))
        }
    }
}
