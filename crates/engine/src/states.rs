//! Container reads whose answer may name a state Docker's API has no name for.
//!
//! Podman's compatible API reports Podman's own states: `stopped` is a container that ended
//! and is not cleaned up yet, which a crash-looping container with a restart policy is most of
//! the time. bollard's types know Docker's states only, and one unknown state fails the whole
//! answer: before this, one such container anywhere on a Podman host made every container list
//! fail (the engine looked unreachable) and every inspect of it fail.
//!
//! These reads make bollard's typed call; only when its answer names an unknown name and the
//! engine is Podman do they read the same path again outside bollard and translate the state
//! to Docker's nearest name before the same typed parse. If that fails too, bollard's own
//! error stands. Docker's answers never take the second read.

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use serde_json::Value;

use crate::Engine;

/// The largest inspect answer read outside bollard: a container's JSON is a few KiB, its
/// labels and environment at most a few hundred.
const MAX_INSPECT: usize = 4 << 20;
/// The largest list answer read outside bollard: some 10 000 containers.
const MAX_LIST: usize = 32 << 20;

/// The states Docker's API names (bollard's `ContainerStateStatusEnum`).
const DOCKER_STATES: [&str; 9] =
    ["", "created", "running", "paused", "restarting", "removing", "exited", "dead", "stopping"];

/// Docker's name for a container state another engine reported. Podman's `stopped` (ended,
/// cleanup pending) is `exited`; `configured` and `initialized` (made, never started) are
/// `created`; any other unknown state is the empty state, which bollard reads as "unknown".
fn docker_state(state: &str) -> &str {
    match state {
        s if DOCKER_STATES.contains(&s) => s,
        "stopped" => "exited",
        "configured" | "initialized" => "created",
        _ => "",
    }
}

/// Translates a string field in place; anything else is left as it is for the typed parse.
fn translate(field: Option<&mut Value>) {
    if let Some(Value::String(state)) = field {
        let docker = docker_state(state);
        if docker != state {
            *state = docker.to_owned();
        }
    }
}

/// An inspect answer with its `State.Status` in Docker's names.
fn translate_inspect(answer: &mut Value) {
    translate(answer.get_mut("State").and_then(|s| s.get_mut("Status")));
}

/// A list answer with each container's `State` in Docker's names.
fn translate_list(answer: &mut Value) {
    if let Value::Array(containers) = answer {
        for c in containers {
            translate(c.get_mut("State"));
        }
    }
}

/// Whether bollard failed to parse an answer for a name it does not know.
fn unknown_name(e: &BollardError) -> bool {
    matches!(e, BollardError::JsonDataError { message, .. } if message.contains("unknown variant"))
}

/// Whether `id` can be put in a path as it is (every container id and name can).
fn path_safe(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Engine {
    /// bollard's `inspect_container`, reading a container in a state Docker has no name for.
    pub(crate) async fn inspect_container(
        &self,
        docker: &Docker,
        id: &str,
    ) -> Result<ContainerInspectResponse, BollardError> {
        match docker.inspect_container(id, None).await {
            Err(e) if unknown_name(&e) && path_safe(id) => {
                let path = format!("/containers/{id}/json");
                self.reread_on_podman(e, &path, MAX_INSPECT, translate_inspect).await
            }
            answer => answer,
        }
    }

    /// bollard's `list_containers` (stopped ones too with `all`), reading containers in
    /// states Docker has no name for.
    pub(crate) async fn list_containers(
        &self,
        docker: &Docker,
        all: bool,
    ) -> Result<Vec<ContainerSummary>, BollardError> {
        let options = ListContainersOptionsBuilder::new().all(all).build();
        match docker.list_containers(Some(options)).await {
            Err(e) if unknown_name(&e) => {
                let path = format!("/containers/json?all={all}");
                self.reread_on_podman(e, &path, MAX_LIST, translate_list).await
            }
            answer => answer,
        }
    }

    /// On Podman, [`Engine::reread`]; bollard's error `first` stands on any other engine
    /// (an unknown name there is not a state this translates) and when the re-read fails.
    /// An engine whose kind could not be asked (its version call timed out on a loaded host)
    /// is re-read too: the translation only renames states Docker never reports. A failed
    /// re-read's reason is added to bollard's parse error, so that the failure says why (a
    /// Podman list failed so once in CI, 2026-12-05, without saying; not reproduced).
    async fn reread_on_podman<T: serde::de::DeserializeOwned>(
        &self,
        first: BollardError,
        path: &str,
        max: usize,
        fix: fn(&mut Value),
    ) -> Result<T, BollardError> {
        if let Ok(false) = self.is_podman().await {
            return Err(first);
        }
        match self.reread(path, max, fix).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                tracing::warn!(%path, error = %e, "re-reading Podman's answer failed");
                Err(match first {
                    BollardError::JsonDataError { message, column } => {
                        let message = format!("{message}; re-read as Podman's answer: {e}");
                        BollardError::JsonDataError { message, column }
                    }
                    other => other,
                })
            }
        }
    }

    /// GET `path` again outside bollard, `fix` its JSON, and parse it as bollard would have.
    async fn reread<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        max: usize,
        fix: fn(&mut Value),
    ) -> Result<T, BollardError> {
        let (status, body) = self
            .raw_get(path, max)
            .await
            .map_err(|reason| BollardError::IOError { err: std::io::Error::other(reason) })?;
        if status != 200 {
            return Err(BollardError::DockerResponseServerError {
                status_code: status,
                message: crate::podman::message_of(&body),
            });
        }
        let mut answer: Value = serde_json::from_slice(&body).map_err(json_error)?;
        fix(&mut answer);
        serde_json::from_value(answer).map_err(json_error)
    }
}

fn json_error(e: serde_json::Error) -> BollardError {
    BollardError::JsonDataError { message: e.to_string(), column: e.column() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_states_read_as_dockers_nearest() {
        assert_eq!(docker_state("stopped"), "exited");
        assert_eq!(docker_state("configured"), "created");
        assert_eq!(docker_state("initialized"), "created");
        assert_eq!(docker_state("something-new"), "");
        for s in DOCKER_STATES {
            assert_eq!(docker_state(s), s);
        }
    }

    /// Shaped as Podman 4.3 answered for a crash-looping container (trimmed).
    #[test]
    fn a_list_and_an_inspect_naming_stopped_parse_after_translation() {
        let mut list = serde_json::json!([
            {"Id": "a1", "Names": ["/loop"], "State": "stopped", "Status": "Exited (1)"},
            {"Id": "b2", "Names": ["/web"], "State": "running", "Status": "Up 2 hours"}
        ]);
        assert!(serde_json::from_value::<Vec<ContainerSummary>>(list.clone()).is_err());
        translate_list(&mut list);
        let parsed: Vec<ContainerSummary> = serde_json::from_value(list).expect("list");
        let states: Vec<String> =
            parsed.iter().filter_map(|c| c.state.map(|s| s.to_string())).collect();
        assert_eq!(states, ["exited", "running"]);

        let mut inspect = serde_json::json!({
            "Id": "a1", "Name": "/loop",
            "State": {"Status": "stopped", "Running": false, "ExitCode": 1}
        });
        assert!(serde_json::from_value::<ContainerInspectResponse>(inspect.clone()).is_err());
        translate_inspect(&mut inspect);
        let parsed: ContainerInspectResponse = serde_json::from_value(inspect).expect("inspect");
        let state = parsed.state.expect("state");
        assert_eq!(state.status.map(|s| s.to_string()).as_deref(), Some("exited"));
        assert_eq!(state.exit_code, Some(1));
    }

    #[test]
    fn only_an_unknown_name_takes_the_second_read() {
        let unknown = BollardError::JsonDataError {
            message: "unknown variant `stopped`, expected one of ``, `created`".into(),
            column: 3,
        };
        assert!(unknown_name(&unknown));
        let other = BollardError::JsonDataError { message: "EOF while parsing".into(), column: 1 };
        assert!(!unknown_name(&other));
        assert!(!unknown_name(&BollardError::RequestTimeoutError));
    }

    #[test]
    fn only_plain_ids_and_names_go_into_a_path() {
        assert!(path_safe("steward-app_1.v2"));
        assert!(path_safe("0123abcdef"));
        assert!(!path_safe(""));
        assert!(!path_safe("../images/json"));
        assert!(!path_safe("a?b"));
    }
}
