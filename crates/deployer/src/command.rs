//! Running `git` and `docker-compose`: bounded in time, output kept for the reason of a
//! failure, never an interactive prompt.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Lines of a failing command's output kept for its event.
pub const TAIL_LINES: usize = 20;
/// Characters of one such line kept (a test runner may print a megabyte on one line).
pub const TAIL_LINE_CHARS: usize = 300;
/// Bytes of each of a command's stdout and stderr kept (the last ones): a chatty command (the
/// repository's test) costs no more memory than this.
pub const MAX_OUTPUT: usize = 1024 * 1024;

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
        .env("LC_ALL", "C")
        // The engine the deployer watches, whatever a project's `.env` says (compose reads
        // its client settings there unless the environment has them).
        .env("DOCKER_HOST", steward_engine::docker_host());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start: {e}"), vec![], None))?;
    let out_task = tokio::spawn(last_bytes(child.stdout.take()));
    let err_task = tokio::spawn(last_bytes(child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(fail(format!("failed: {e}"), vec![], None)),
        Err(_) => {
            // Killed (and reaped) now; what it printed so far says where it hung.
            let _ = child.kill().await;
            // A child of its own (ssh under git) may hold the pipes open: not waited for long.
            let grace = Duration::from_secs(2);
            let (err, out) = (
                tokio::time::timeout(grace, err_task).await,
                tokio::time::timeout(grace, out_task).await,
            );
            let text = format!(
                "{}\n{}",
                err.ok().and_then(Result::ok).unwrap_or_default(),
                out.ok().and_then(Result::ok).unwrap_or_default()
            );
            return Err(fail(format!("did not finish within {timeout:?}"), tail(&text), None));
        }
    };
    let stdout = out_task.await.unwrap_or_default();
    let stderr = err_task.await.unwrap_or_default();
    if status.success() {
        return Ok(Output { stdout, stderr });
    }
    let code = status.code();
    Err(fail(
        match code {
            Some(c) => format!("exited with {c}"),
            None => "was killed by a signal".into(),
        },
        tail(&format!("{stderr}\n{stdout}")),
        code,
    ))
}

/// Reads `pipe` to its end, keeping its last [`MAX_OUTPUT`] bytes.
async fn last_bytes(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt as _;
    let Some(mut pipe) = pipe else { return String::new() };
    let mut kept: Vec<u8> = vec![];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * MAX_OUTPUT {
                    kept.drain(..kept.len() - MAX_OUTPUT);
                }
            }
        }
    }
    if kept.len() > MAX_OUTPUT {
        kept.drain(..kept.len() - MAX_OUTPUT);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The last [`TAIL_LINES`] non-empty lines of `text` (each cut at [`TAIL_LINE_CHARS`]),
/// credentials redacted.
pub fn tail(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..]
        .iter()
        .map(|l| {
            let cut: String = l.chars().take(TAIL_LINE_CHARS).collect();
            steward_events::redact_urls_in(&cut)
        })
        .collect()
}
