//! Configuration checks by exec: `steward.health.check=nginx -t` runs the command in the
//! running container each host round. A non-zero exit is `health.config_invalid` (once, with
//! the output's tail: the next reload or restart of that container would fail on it), and
//! the first pass after it `health.config_recovered`. An exec the engine refuses or cannot
//! make says nothing about the configuration: the round is unknown for it.

use steward_engine::Engine;
use steward_events::{ConfigInvalid, ConfigRecovered, Level};

use super::{Finding, Report, Seen};

/// Output lines kept for the event.
const TAIL: usize = 10;

/// Runs each labelled running container's check (`(name, argv)`).
pub async fn check(engine: &Engine, labelled: &[(String, Vec<String>)]) -> Report {
    let mut findings = vec![];
    for (container, argv) in labelled {
        let key = format!("config|{container}");
        let command = argv.join(" ");
        match engine.exec(container, argv.clone(), TAIL).await {
            Ok(out) => {
                let failed = out.exit_code != 0;
                if failed {
                    tracing::warn!(%container, %command, exit_code = out.exit_code, "configuration check failed");
                }
                findings.push(Finding {
                    key,
                    seen: if failed { Seen::Alert(Level::Warning) } else { Seen::Fine },
                    alert: failed.then(|| {
                        ConfigInvalid {
                            container: container.clone(),
                            command: command.clone(),
                            exit_code: out.exit_code,
                            output_tail: out.tail,
                        }
                        .into()
                    }),
                    recovery: Some(
                        ConfigRecovered { container: container.clone(), command }.into(),
                    ),
                });
            }
            Err(e) => {
                tracing::warn!(%container, %command, error = %e, "cannot run the configuration check");
                findings.push(Finding::unknown(key));
            }
        }
    }
    Report { findings, covers: vec!["config|".into()] }
}
