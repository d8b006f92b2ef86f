//! Running `git` and `docker-compose`: bounded in time, output kept for the reason of a
//! failure, never an interactive prompt.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Lines of a failing command's output kept for its event.
pub const TAIL_LINES: usize = 20;

/// A command that could not run, ran too long, or exited non-zero.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{command}` {reason}")]
pub struct CommandError {
    /// The command as a human would type it (credentials redacted).
    pub command: String,
    /// Why it failed.
    pub reason: String,
    /// Its last output lines (stderr, then stdout).
    pub tail: Vec<String>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
}

/// What a command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `program args` in `dir` within `timeout`; `Err` unless it exits with 0.
pub async fn run(
    program: &str,
    args: &[&str],
    dir: Option<&Path>,
    timeout: Duration,
) -> Result<Output, CommandError> {
    let shown = steward_events::redact_urls_in(&format!("{program} {}", args.join(" ")));
    let fail = |reason: String, tail: Vec<String>, code: Option<i32>| CommandError {
        command: shown.clone(),
        reason,
        tail,
        code,
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process the deadline abandons is killed, not left running.
        .kill_on_drop(true)
        // Never wait for a password on a terminal nobody watches; plumbing output in English.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("LC_ALL", "C");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let child = cmd.spawn().map_err(|e| fail(format!("cannot start: {e}"), vec![], None))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("failed: {e}"), vec![], None)),
        Err(_) => return Err(fail(format!("did not finish within {timeout:?}"), vec![], None)),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Ok(Output { stdout, stderr });
    }
    let code = out.status.code();
    Err(fail(
        match code {
            Some(c) => format!("exited with {c}"),
            None => "was killed by a signal".into(),
        },
        tail(&format!("{stderr}\n{stdout}")),
        code,
    ))
}

/// The last [`TAIL_LINES`] non-empty lines of `text`, credentials redacted.
pub fn tail(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].iter().map(|l| steward_events::redact_urls_in(l)).collect()
}
