//! The repository's own commands, each run in a throw-away container of its service's
//! definition in the checked-out commit (`docker-compose run --rm --no-deps`): the test
//! (`steward.deploy.test`, before anything is touched) and the pre-deployment commands
//! (`steward.deploy.pre`, after the backup and before the new version starts, e.g. database
//! migrations). Each container is named after the deployment, so that one a kill left behind
//! is found and removed before the command runs again.

use std::time::Duration;

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, PreCommand};
use uuid::Uuid;

use steward_engine::EngineError;

use super::{Flow, FlowError};
use crate::command::CommandError;
use crate::compose::{Compose, Labels};

/// A failed command's reason and its output's last lines.
pub type Failure = (String, Vec<String>);

/// The pre-deployment commands' outcome: the record with their ends saved, or the record and
/// why one stopped the deployment.
pub type Ran = Result<Versioned<DeployRecord>, (Versioned<DeployRecord>, Failure)>;

/// The pre-deployment commands of `services` (the deployment's changed ones; a service that
/// does not change gets no new version to prepare for), in service order. `Err` names the
/// first label that is not a plain command.
pub fn pre_commands(labels: &Labels, services: &[String]) -> Result<Vec<PreCommand>, String> {
    let mut commands = vec![];
    for (service, labels) in labels {
        if !services.contains(service) {
            continue;
        }
        match steward_labels::deploy_pre(labels) {
            Ok(Some(command)) => commands.push(PreCommand { service: service.clone(), command }),
            Ok(None) => {}
            Err(e) => return Err(format!("service {service}: {e}")),
        }
    }
    Ok(commands)
}

impl Flow {
    /// Runs `args` in a throw-away container of `service` named `name`, within `timeout`:
    /// a container of that name left by a kill is removed first, this one afterwards (a
    /// killed or timed-out `docker-compose run` does not remove it).
    async fn one_off(
        &self,
        compose: &Compose,
        service: &str,
        args: &[String],
        name: &str,
        timeout: Duration,
    ) -> Result<(), CommandError> {
        let remove = || async {
            if let Err(e) = self.engine.remove(name, true).await {
                tracing::warn!(container = %name, error = %e, "a one-off container was not removed");
            }
        };
        remove().await;
        let result = compose.run_one_off(service, args, name, timeout).await;
        remove().await;
        result
    }

    /// The repository's test (`steward.deploy.test` on one service of the checked out
    /// commit, among its configuration's `labels`), run before anything is touched: `Err`
    /// with the reason and the output's last lines when it cannot run, fails or times out.
    /// No label: nothing to run.
    pub(super) async fn test_commit(
        &self,
        env: &str,
        deploy_id: &Uuid,
        labels: &Labels,
    ) -> Result<(), Failure> {
        let compose = self.compose(env);
        let mut tests = vec![];
        for (service, labels) in labels {
            match steward_labels::deploy_test(labels) {
                Ok(Some(args)) => tests.push((service.clone(), args)),
                Ok(None) => {}
                Err(e) => return Err((format!("service {service}: {e}"), vec![])),
            }
        }
        let (service, args) = match tests.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            _ => {
                let names: Vec<&str> = tests.iter().map(|(s, _)| s.as_str()).collect();
                return Err((
                    format!(
                        "{} carries {}: one service may",
                        names.join(" and "),
                        steward_labels::DEPLOY_TEST
                    ),
                    vec![],
                ));
            }
        };
        let name = format!("{}-steward-test-{}", compose.project, short(deploy_id));
        tracing::info!(environment = %env, %service, command = %args.join(" "), "running the repository's test");
        self.one_off(&compose, &service, &args, &name, self.cfg.test_timeout).await.map_err(|e| {
            (
                format!(
                    "the test `{}` in service {service} {}; nothing was touched",
                    args.join(" "),
                    e.reason
                ),
                e.tail,
            )
        })
    }

    /// Where the state from before a pre-deployment command is, for the reason of a failure.
    pub(super) fn backup_note(record: &DeployRecord) -> &'static str {
        // Requested only when the deployment began with containers running.
        if record.backup_deadline.is_some() {
            "the pre-deployment backup holds the state before it"
        } else {
            "no backup was taken before it"
        }
    }

    /// The pre-deployment commands' containers of `record`'s deployment that a kill left
    /// (a `docker-compose run` outlives the deployer): each service, and whether its command
    /// still runs.
    pub(super) async fn pre_left(
        &self,
        record: &DeployRecord,
    ) -> Result<Vec<(String, bool)>, EngineError> {
        let compose = self.compose(&record.change.environment);
        let mut left = vec![];
        for service in &record.services {
            if let Some(running) =
                self.engine.is_running(&pre_name(&compose, service, record)).await?
            {
                left.push((service.clone(), running));
            }
        }
        Ok(left)
    }

    /// Stops and removes those containers: a rollback must not leave a migration running
    /// against the previous version. `Err` when the engine refused: the rollback stops there
    /// and is tried again (the sweep), never concluded with the command still running.
    pub(super) async fn remove_pre(&self, record: &DeployRecord) -> Result<(), EngineError> {
        let compose = self.compose(&record.change.environment);
        for service in &record.services {
            let name = pre_name(&compose, service, record);
            if self.engine.is_running(&name).await?.is_some() {
                tracing::warn!(container = %name, %service, "removing a pre-deployment command a stop left");
                self.engine.remove(&name, true).await?;
            }
        }
        Ok(())
    }

    /// The pre-deployment commands of the record's changed services, one after the other,
    /// with the checked-out commit's definitions, before any of them starts (the caller has
    /// checked the commit out). A kill during one rolls the deployment back on the restart,
    /// which stops the command first ([`Self::remove_pre`]); a deployment tried again runs them
    /// again, so they must be safe to repeat, as migration tools are (they record what they
    /// applied). Each command's end is saved in the record (`pre_done`) as it ends. `Ok(Err)`
    /// with the record at the first that cannot run, fails or times out.
    pub(super) async fn run_pre(&self, mut v: Versioned<DeployRecord>) -> Result<Ran, FlowError> {
        let env = v.value.change.environment.clone();
        let compose = self.compose(&env);
        let commands = match &v.value.pre_commands {
            Some(commands) => commands.clone(),
            // Prepared by a deployer that did not keep them (an upgrade while it waited).
            None => {
                let read = match compose.config().await {
                    Ok(config) => {
                        pre_commands(&config.labels(), &v.value.services).map_err(|e| (e, vec![]))
                    }
                    Err(e) => Err((e.to_string(), e.tail)),
                };
                match read {
                    Ok(commands) => commands,
                    Err(failure) => return Ok(Err((v, failure))),
                }
            }
        };
        for PreCommand { service, command: args } in &commands {
            let record = &v.value;
            let name = pre_name(&compose, service, record);
            tracing::info!(environment = %env, %service, command = %args.join(" "), "running the pre-deployment command");
            let ran = self.one_off(&compose, service, args, &name, self.cfg.pre_timeout).await;
            steward_failpoints::failpoint!("pre");
            if let Err(e) = ran {
                let reason = format!(
                    "the pre-deployment command `{}` of service {service} {}; the new version \
                     was not started (what the command changed stays: {})",
                    args.join(" "),
                    e.reason,
                    Self::backup_note(record)
                );
                return Ok(Err((v, (reason, e.tail))));
            }
            let mut record = v.value;
            record.pre_done.push(service.clone());
            v = self.records.save(record, v.revision).await?;
        }
        Ok(Ok(v))
    }
}

/// The container of `service`'s pre-deployment command in `record`'s deployment.
fn pre_name(compose: &Compose, service: &str, record: &DeployRecord) -> String {
    format!("{}-steward-pre-{service}-{}", compose.project, short(&record.deploy_id))
}

/// The last 12 hex digits of a deployment id: container names stay short and unique per
/// deployment.
fn short(id: &Uuid) -> String {
    id.simple().to_string()[20..].to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn only_the_changed_services_pre_commands_run_in_service_order_and_a_bad_one_is_named() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(service, pre)| {
                    let l =
                        HashMap::from([(steward_labels::DEPLOY_PRE.to_owned(), pre.to_string())]);
                    (service.to_string(), l)
                })
                .collect()
        };
        let changed = vec!["web".to_owned(), "api".to_owned()];
        let all = labels(&[("web", "web migrate"), ("api", "api migrate"), ("db", "db migrate")]);
        let commands = pre_commands(&all, &changed).expect("plain commands");
        let pre = |service: &str| PreCommand {
            service: service.to_owned(),
            command: vec![service.to_owned(), "migrate".to_owned()],
        };
        assert_eq!(commands, vec![pre("api"), pre("web")]);
        // An unchanged service's bad label does not stop another deployment.
        let bad_unchanged = labels(&[("web", "migrate"), ("db", "migrate; rm -rf /")]);
        assert!(pre_commands(&bad_unchanged, &changed).is_ok());
        let bad = labels(&[("web", "migrate && start")]);
        let e = pre_commands(&bad, &changed).expect_err("shell syntax");
        assert!(e.starts_with("service web: label steward.deploy.pre="), "{e}");
    }
}
