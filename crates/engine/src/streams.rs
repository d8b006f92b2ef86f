//! Byte streams in and out of containers, for backups and restores: a command's stdout by
//! exec (`pg_dump`), a command's stdin (`pg_restore`), a path's tar through the archive API.
//!
//! Nothing here buffers a whole stream: stdout is handed on through a small bounded channel,
//! so a slow consumer (an S3 upload) slows the producer instead of growing memory.

use std::collections::VecDeque;
use std::io;

use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use bollard::query_parameters::{
    DownloadFromContainerOptions, RestartContainerOptions, StartContainerOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::{Engine, EngineError, ExecOutput};

/// Chunks of stdout in flight between the engine and the consumer: a few hundred KiB at most.
const STDOUT_CHANNEL: usize = 8;
/// A tar header block.
const TAR_BLOCK: usize = crate::unroot::BLOCK;

/// `tar` as Docker names it: when its first entry is named from `/` (Podman 4.3's archive of
/// a stopped container's volume mount point `/data`: `/`, `/a.txt` instead of `data/`,
/// `data/a.txt`; a running container's, or a subdirectory's, are named right), every entry
/// is renamed under `base` on the way ([`crate::unroot`]). Stored as Podman gave it, such a
/// copy could never be restored (the restore refuses absolute names). Without a `base` (the
/// path `/` itself) such an archive ends with an error. Docker never names an entry from `/`.
/// With `owners` (Podman's archive read gives every entry uid and gid 0), each entry listed
/// there as it is archived gets its owner back on the way; an error finding them ends the
/// read before the archive is asked for.
fn unrooted(
    owners: impl std::future::Future<Output = io::Result<Option<crate::unroot::Owners>>>
        + Send
        + 'static,
    mut tar: BoxStream<'static, io::Result<Bytes>>,
    base: Option<String>,
    what: String,
) -> BoxStream<'static, io::Result<Bytes>> {
    futures::stream::once(async move {
        // Listed before the archive is asked for: an entry made or replaced between the two
        // keeps the archive's owner, without set-id bits (and is logged).
        let owners = match owners.await {
            Ok(owners) => owners,
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
        };
        let mut head = bytes::BytesMut::new();
        while head.len() < TAR_BLOCK {
            match tar.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => return futures::stream::once(async { Err(e) }).boxed(),
                None => break,
            }
        }
        if let Some(name) = head.get(..TAR_BLOCK).and_then(rooted_name) {
            let Some(base) = base else {
                let e = io::Error::other(format!(
                    "{what}: the engine's archive names its entries from / ({name:?}): not a \
                     copy that could be restored"
                ));
                return futures::stream::once(async { Err(e) }).boxed();
            };
            return crate::unroot::rewritten(head, tar, Some(base), owners, what);
        }
        if owners.is_some() {
            return crate::unroot::rewritten(head, tar, None, owners, what);
        }
        let head = head.freeze();
        futures::stream::iter((!head.is_empty()).then_some(Ok(head))).chain(tar).boxed()
    })
    .flatten()
    .boxed()
}

/// The name of a plain (ustar or old-style) tar header if it starts with `/`. Extended
/// headers (pax `x`/`g`, GNU `L`/`K`) name the next entry in their data: not judged here.
fn rooted_name(header: &[u8]) -> Option<String> {
    if matches!(header.get(156), Some(b'x' | b'g' | b'L' | b'K')) {
        return None;
    }
    let header: &[u8; TAR_BLOCK] = header.try_into().ok()?;
    let name = crate::unroot::header_name(header)?;
    name.starts_with('/').then_some(name)
}

/// A command started by exec whose stdout is read as a stream.
pub struct ExecStream {
    /// Its stdout. Ends when the command closes it; an engine error is an `Err` item.
    pub stdout: BoxStream<'static, io::Result<Bytes>>,
    done: oneshot::Receiver<Result<ExecOutput, EngineError>>,
}

impl std::fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStream").finish_non_exhaustive()
    }
}

impl ExecStream {
    /// Waits for the command: its exit code (read from the engine after the stream ended)
    /// and the last lines of its stderr. Call after `stdout` was read to the end.
    pub async fn finish(self) -> Result<ExecOutput, EngineError> {
        drop(self.stdout);
        self.done.await.unwrap_or_else(|_| {
            Err(EngineError::Operation {
                host: String::new(),
                what: "read an exec's result".into(),
                reason: "the reader stopped early".into(),
            })
        })
    }
}

/// What to run by exec.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// The command and its arguments (no shell).
    pub cmd: Vec<String>,
    /// Extra `NAME=value` environment.
    pub env: Vec<String>,
    /// Run as this user instead of the container's.
    pub user: Option<String>,
}

type Output = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;

impl Engine {
    /// Reads an exec's output to the end, keeping its last `keep` lines.
    async fn output_tail(
        &self,
        output: &mut Output,
        keep: usize,
        what: &str,
    ) -> Result<VecDeque<String>, EngineError> {
        let mut tail = Tail::new(keep);
        while let Some(frame) = output.next().await {
            match frame {
                Ok(LogOutput::StdOut { message }) => tail.push(OUT, &message),
                Ok(LogOutput::StdErr { message }) => tail.push(ERR, &message),
                Ok(_) => {}
                Err(e) => return Err(self.call_failed(what, e)),
            }
        }
        Ok(tail.finish())
    }
}

const OUT: usize = 0;
const ERR: usize = 1;
/// A line longer than this is cut there (a command printing one endless line must not grow
/// the service's memory).
const MAX_LINE: usize = 64 << 10;

/// The last `keep` lines of an exec's output. The engine frames output as the command wrote
/// it (`ls` writes 4 KiB at a time), not by line, so a line cut between two frames is joined
/// again before it counts; stdout's and stderr's open lines are apart.
struct Tail {
    lines: VecDeque<String>,
    keep: usize,
    open: [Vec<u8>; 2],
}

impl Tail {
    fn new(keep: usize) -> Self {
        Self { lines: VecDeque::new(), keep, open: [vec![], vec![]] }
    }

    fn push(&mut self, stream: usize, text: &[u8]) {
        let mut rest = text;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.open[stream]);
            line.extend_from_slice(&rest[..end]);
            self.add(&line);
            rest = &rest[end + 1..];
        }
        let open = &mut self.open[stream];
        open.extend_from_slice(rest);
        if open.len() > MAX_LINE {
            let line = std::mem::take(open);
            self.add(&line);
        }
    }

    fn add(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.lines.push_back(String::from_utf8_lossy(line).into_owned());
        if self.lines.len() > self.keep {
            self.lines.pop_front();
        }
    }

    /// The lines, an unfinished last line of either stream included.
    fn finish(mut self) -> VecDeque<String> {
        for stream in [OUT, ERR] {
            let line = std::mem::take(&mut self.open[stream]);
            if !line.is_empty() {
                self.add(&line);
            }
        }
        self.lines
    }
}

/// The engine's exec of `spec`, its stdin attached when `stdin`, its output when `attach`.
fn exec_config(spec: &ExecSpec, stdin: bool, attach: bool) -> bollard::models::ExecConfig {
    bollard::models::ExecConfig {
        attach_stdin: Some(stdin),
        attach_stdout: Some(attach),
        attach_stderr: Some(attach),
        cmd: Some(spec.cmd.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        user: spec.user.clone(),
        ..Default::default()
    }
}

impl Engine {
    async fn start_exec(
        &self,
        container: &str,
        spec: &ExecSpec,
        stdin: bool,
    ) -> Result<(String, StartExecResults), EngineError> {
        let docker = self.client()?;
        let what = format!("exec {:?} in {container}", spec.cmd.first());
        let config = exec_config(spec, stdin, true);
        let exec = self
            .timed(docker.create_exec(container, config))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        // The attached output comes at the command's pace (`pg_restore` says nothing for
        // minutes): only these calls and the result are bounded by the deadline.
        let started = self
            .timed(docker.start_exec(&exec.id, None))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        Ok((exec.id, started))
    }

    async fn exec_result(
        &self,
        container: &str,
        exec_id: &str,
        tail: VecDeque<String>,
    ) -> Result<ExecOutput, EngineError> {
        let what = format!("inspect an exec in {container}");
        let inspect = self
            .timed(self.client()?.inspect_exec(exec_id))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        let exit_code = inspect
            .exit_code
            .ok_or_else(|| self.failed(&what, "the engine reported no exit code"))?;
        Ok(ExecOutput { exit_code, tail: tail.into() })
    }

    /// Starts `spec` in a running container and streams its stdout; stderr's last
    /// `keep_stderr` lines come with the exit code from [`ExecStream::finish`].
    pub async fn exec_stdout(
        &self,
        container: &str,
        spec: &ExecSpec,
        keep_stderr: usize,
    ) -> Result<ExecStream, EngineError> {
        let (exec_id, started) = self.start_exec(container, spec, false).await?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(self.failed(&format!("exec in {container}"), "the engine detached"));
        };
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(STDOUT_CHANNEL);
        let (done_tx, done) = oneshot::channel();
        let engine = self.clone();
        let container = container.to_owned();
        tokio::spawn(async move {
            let mut stderr = Tail::new(keep_stderr);
            let mut reader_gone = false;
            while let Some(frame) = output.next().await {
                match frame {
                    Ok(LogOutput::StdOut { message }) if !reader_gone => {
                        reader_gone = tx.send(Ok(message)).await.is_err();
                    }
                    Ok(LogOutput::StdErr { message }) => stderr.push(ERR, &message),
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        break;
                    }
                }
            }
            drop(tx);
            let _ = done_tx.send(engine.exec_result(&container, &exec_id, stderr.finish()).await);
        });
        let stdout = tokio_stream_from(rx);
        Ok(ExecStream { stdout, done })
    }

    /// Runs `spec` in a running container with `input` as its stdin (closed at the end of
    /// the stream), keeping the last `keep` lines of its output. An `Err` item of `input`
    /// aborts: stdin is closed early and the error returned.
    pub async fn exec_stdin(
        &self,
        container: &str,
        spec: &ExecSpec,
        input: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        keep: usize,
    ) -> Result<ExecOutput, EngineError> {
        let what = format!("feed {:?} in {container}", spec.cmd.first());
        let (exec_id, started) = self.start_exec(container, spec, true).await?;
        let StartExecResults::Attached { mut output, input: mut stdin } = started else {
            return Err(self.failed(&what, "the engine detached"));
        };
        let feeder = tokio::spawn(async move {
            let mut input = std::pin::pin!(input);
            let fed = async {
                while let Some(chunk) = input.next().await {
                    stdin.write_all(&chunk?).await?;
                }
                stdin.flush().await
            }
            .await;
            // Half-closes the connection whatever happened: the command sees end of input.
            // A failed input must end it too, or the command waits for more forever.
            let closed = stdin.shutdown().await;
            fed.and(closed)
        });
        let tail = self.output_tail(&mut output, keep, &what).await?;
        match feeder.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.failed(&what, e)),
            Err(e) => return Err(self.failed(&what, e)),
        }
        self.exec_result(container, &exec_id, tail).await
    }

    /// A tar of `path` in a container (running or stopped), streamed from the engine.
    /// Its entries are named after the path's last component (`/data` → `data/...`). On
    /// Podman every entry says root's owner ([`Engine::download_path_listed`] puts them back).
    pub fn download_path(
        &self,
        container: &str,
        path: &str,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        self.download(container, path, None)
    }

    /// [`Engine::download_path`] for a copy that must restore as it was (a backup): on
    /// Podman, whose archive read gives every entry uid and gid 0 and rounds times to the
    /// nearest second, each entry gets back its owner and second from `listing` (of this
    /// read, named as its entries are), or from a listing made first when none is given
    /// ([`crate::listing::list`]: in the container, or in a one-shot sharing its volumes).
    /// Where none can be made (the container's own layer, when it is stopped or its image
    /// cannot list), logged: the copy's files are root's. Docker's archive is read as it is.
    pub fn download_path_listed(
        &self,
        container: &str,
        path: &str,
        listing: Option<crate::listing::Listing>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        self.download(container, path, Some(listing))
    }

    /// `repair`: `Some` to put back what Podman's archive read loses, from the listing given
    /// or from one made first.
    fn download(
        &self,
        container: &str,
        path: &str,
        repair: Option<Option<crate::listing::Listing>>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        let docker = match self.client() {
            Ok(d) => d,
            Err(e) => {
                return futures::stream::once(async move { Err(io::Error::other(e)) }).boxed()
            }
        };
        let options = DownloadFromContainerOptions { path: path.to_owned() };
        let engine = self.clone();
        let what = format!("read {path} of {container}");
        // Docker names the entries after the path's last component.
        let base = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|b| !b.is_empty() && *b != "." && *b != "..")
            .map(str::to_owned);
        let unrooted_what = what.clone();
        let owners = {
            let (engine, container, path) = (self.clone(), container.to_owned(), path.to_owned());
            async move {
                match repair {
                    Some(listing) => engine.podman_owners(&container, &path, listing).await,
                    None => Ok(None),
                }
            }
        };
        // Bounded per chunk, counted from when the reader asks: a slow reader is not a hang.
        let tar = crate::deadline::idle_bounded(
            docker.download_from_container(container, Some(options)),
            self.deadline,
        )
        .map(move |chunk| chunk.map_err(|e| io::Error::other(engine.call_failed(&what, e))))
        .boxed();
        unrooted(owners, tar, base, unrooted_what)
    }

    /// On Podman, what `path` of `container` holds as `listing` says or as listed now
    /// (Podman's archive read gives every entry uid and gid 0: a copy taken through it alone
    /// would restore every file as root's). `None` on Docker, and where the path cannot be
    /// listed: then logged, as the owners are lost. An engine that does not say what it is
    /// ends the read (within the read's own deadline).
    async fn podman_owners(
        &self,
        container: &str,
        path: &str,
        listing: Option<crate::listing::Listing>,
    ) -> io::Result<Option<crate::unroot::Owners>> {
        if !self.is_podman().await.map_err(io::Error::other)? {
            return Ok(None);
        }
        let listing = match listing {
            Some(listing) => Ok(listing),
            None => crate::listing::list(self, container, path).await,
        };
        match listing {
            Ok(listing) => Ok(Some(
                listing
                    .into_entries()
                    .into_iter()
                    .map(|(n, s)| (n, crate::unroot::Listed::from(&s)))
                    .collect(),
            )),
            Err(why) => {
                tracing::warn!(container, path, reason = %why, "Podman's archive read gives every entry root's owner and the path cannot be listed for its owners: the copy's files are root's");
                Ok(None)
            }
        }
    }

    /// Extracts a tar stream into directory `dir` of a container (running or stopped).
    pub async fn upload_tar(
        &self,
        container: &str,
        dir: &str,
        tar: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    ) -> Result<(), EngineError> {
        let options = UploadToContainerOptions { path: dir.to_owned(), ..Default::default() };
        // The answer comes once the whole tar is in: bounded by the engine's progress in
        // taking chunks, not by the size of the transfer.
        let progress = crate::deadline::Progress::default();
        let body = bollard::body_try_stream(progress.watch(Box::pin(tar)));
        let upload = self.upload_client()?;
        self.upload_within(
            self.deadline,
            &progress,
            upload.upload_to_container(container, Some(options), body),
        )
        .await
        .map_err(|e| self.call_failed(&format!("write into {dir} of {container}"), e))
    }

    /// Stops a container, giving it `grace_secs` before SIGKILL. Stopping a stopped one is fine.
    pub async fn stop(&self, container: &str, grace_secs: i32) -> Result<(), EngineError> {
        let options = StopContainerOptions { t: Some(grace_secs), ..Default::default() };
        // The answer comes after the grace period (and the kill): that much more than the
        // deadline.
        let limit = self.stop_limit(Some(i64::from(grace_secs)));
        let docker = self.client_within(limit)?;
        match self.within(limit, docker.stop_container(container, Some(options))).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {
                Ok(())
            }
            Err(e) => Err(self.call_failed_within(&format!("stop {container}"), limit, e)),
        }
    }

    /// Restarts a container (stopped with `grace_secs` before SIGKILL if it runs, then
    /// started): the health service's self-healing.
    pub async fn restart(&self, container: &str, grace_secs: i32) -> Result<(), EngineError> {
        let options = RestartContainerOptions { t: Some(grace_secs), ..Default::default() };
        let limit = self.stop_limit(Some(i64::from(grace_secs)));
        let docker = self.client_within(limit)?;
        self.within(limit, docker.restart_container(container, Some(options)))
            .await
            .map_err(|e| self.call_failed_within(&format!("restart {container}"), limit, e))
    }

    /// Starts a container. Starting a running one is fine.
    pub async fn start(&self, container: &str) -> Result<(), EngineError> {
        let docker = self.client()?;
        match self.timed(docker.start_container(container, None::<StartContainerOptions>)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {
                Ok(())
            }
            Err(e) => Err(self.call_failed(&format!("start {container}"), e)),
        }
    }

    /// Whether a container is running now (`None`: no such container).
    pub async fn is_running(&self, container: &str) -> Result<Option<bool>, EngineError> {
        match self.timed(self.inspect_container(&self.client()?, container)).await {
            Ok(c) => Ok(Some(c.state.and_then(|s| s.running).unwrap_or(false))),
            Err(e) if crate::gone(&e) => Ok(None),
            Err(e) => Err(self.call_failed(&format!("inspect {container}"), e)),
        }
    }

    /// The engine's whole description of a container, as JSON (what a rebuild needs).
    pub async fn inspect_json(&self, container: &str) -> Result<serde_json::Value, EngineError> {
        let what = format!("inspect {container}");
        let c = self
            .timed(self.inspect_container(&self.client()?, container))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        serde_json::to_value(c).map_err(|e| self.failed(&what, e))
    }

    /// A container's environment as `NAME → value`.
    pub async fn container_env(
        &self,
        container: &str,
    ) -> Result<std::collections::HashMap<String, String>, EngineError> {
        let c = self
            .timed(self.inspect_container(&self.client()?, container))
            .await
            .map_err(|e| self.call_failed(&format!("inspect {container}"), e))?;
        Ok(c.config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect())
    }

    /// The destinations of a container's mounts (volumes and binds).
    pub async fn mount_points(&self, container: &str) -> Result<Vec<String>, EngineError> {
        let c = self
            .timed(self.inspect_container(&self.client()?, container))
            .await
            .map_err(|e| self.call_failed(&format!("inspect {container}"), e))?;
        Ok(c.mounts.unwrap_or_default().into_iter().filter_map(|m| m.destination).collect())
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
) -> BoxStream<'static, io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

impl Engine {
    /// Runs `cmd` to completion in a throw-away container of `image` that shares the volumes
    /// of `volumes_from` (which may be stopped), then removes it. For work on a stopped
    /// container's data, such as emptying a directory before a restore.
    pub async fn run_with_volumes_of(
        &self,
        volumes_from: &str,
        image: &str,
        entrypoint: Vec<String>,
        cmd: Vec<String>,
        keep: usize,
    ) -> Result<ExecOutput, EngineError> {
        use bollard::models::{ContainerCreateBody, HostConfig};
        use bollard::query_parameters::{CreateContainerOptions, WaitContainerOptions};
        let docker = self.client()?;
        let what = format!("run a helper from {image} with the volumes of {volumes_from}");
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(entrypoint),
            cmd: Some(cmd),
            user: Some("0".into()),
            network_disabled: Some(true),
            labels: Some([(steward_labels::HELPER.to_owned(), volumes_from.to_owned())].into()),
            // Not the image's healthcheck (Steward's: it would fail without a network).
            healthcheck: Some(bollard::models::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                volumes_from: Some(vec![volumes_from.to_owned()]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .timed(docker.create_container(None::<CreateContainerOptions>, body))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        let id = created.id;
        let result = async {
            self.timed(docker.start_container(&id, None::<StartContainerOptions>))
                .await
                .map_err(|e| self.call_failed(&what, e))?;
            // The engine answers the wait's head at once (bollard's timeout bounds that); the
            // exit comes at the command's pace.
            let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
            let exit_code = match wait.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(self.call_failed(&what, e)),
                None => return Err(self.failed(&what, "the engine did not report an exit")),
            };
            let tail = self.logs_tail(&id, keep).await?;
            Ok(ExecOutput { exit_code, tail })
        }
        .await;
        if let Err(e) = Box::pin(self.remove_helper(&id, volumes_from)).await {
            crate::recreate::tracing_free_log(&format!(
                "could not remove helper container {id}: {e}"
            ));
        }
        result
    }

    /// Removes helper container `id`, which borrowed the volumes of `from` (`VolumesFrom`),
    /// with the volumes made for it alone: the anonymous ones its image's `VOLUME`s got where
    /// `from` has no volume (a PostgreSQL image's data directory, for a helper of a container
    /// keeping its data elsewhere). Those were left behind, one per helper, by a removal
    /// without volumes; and a removal with them (`v`) would also take a borrowed anonymous
    /// volume whose owner is gone meanwhile, so the helper's own are named first and removed
    /// by name after it.
    pub(crate) async fn remove_helper(&self, id: &str, from: &str) -> Result<(), EngineError> {
        let volumes = |c: bollard::models::ContainerInspectResponse| -> Vec<String> {
            let mounts = c.mounts.unwrap_or_default().into_iter();
            mounts.filter(|m| m.typ.as_deref() == Some("volume")).filter_map(|m| m.name).collect()
        };
        let docker = self.client()?;
        // Only the names are kept across the next call: an inspect answer is large, and this
        // runs deep in a restore's future.
        let mine = match self.timed(self.inspect_container(&docker, id)).await {
            Ok(helper) => volumes(helper),
            Err(e) if crate::gone(&e) => vec![],
            Err(e) => return Err(self.call_failed(&format!("inspect helper {id}"), e)),
        };
        let own: Vec<String> = match self.timed(self.inspect_container(&docker, from)).await {
            Ok(owner) => {
                let borrowed = volumes(owner);
                mine.into_iter().filter(|v| !borrowed.contains(v)).collect()
            }
            // Its owner gone (or not answering): nothing tells its volumes from the helper's
            // own, so none is removed.
            Err(_) => vec![],
        };
        self.remove(id, false).await?;
        for volume in own {
            let options = bollard::query_parameters::RemoveVolumeOptions { force: false };
            match self.timed(docker.remove_volume(&volume, Some(options))).await {
                Ok(()) => {}
                Err(e) if crate::gone(&e) => {}
                Err(e) => {
                    tracing::warn!(%volume, error = %e, "cannot remove a helper's own volume")
                }
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Creates and starts a throw-away container (no network but loopback) running `image`'s
    /// own entrypoint with extra `env`, e.g. a scratch database server. Returns its id.
    pub async fn start_scratch(
        &self,
        name: &str,
        image: &str,
        env: Vec<String>,
    ) -> Result<String, EngineError> {
        let id = self.create_scratch(name, image, env, None).await?;
        let docker = self.client()?;
        let what = format!("start scratch container {name} from {image}");
        let start = docker.start_container(&id, None::<StartContainerOptions>);
        if let Err(e) = self.timed(start).await {
            let _ = self.remove(&id, true).await;
            return Err(self.call_failed(&what, e));
        }
        Ok(id)
    }

    /// Creates, without starting it, a throw-away container like [`Engine::start_scratch`]'s,
    /// running `cmd` instead of the image's command when given: files can be put into its
    /// volumes ([`Engine::upload_tar`]) before it starts ([`Engine::start`]). Returns its id.
    pub async fn create_scratch(
        &self,
        name: &str,
        image: &str,
        env: Vec<String>,
        cmd: Option<Vec<String>>,
    ) -> Result<String, EngineError> {
        use bollard::models::{ContainerCreateBody, HostConfig};
        use bollard::query_parameters::CreateContainerOptions;
        let docker = self.client()?;
        let what = format!("create scratch container {name} from {image}");
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            env: Some(env),
            cmd,
            labels: Some([(steward_labels::HELPER.to_owned(), name.to_owned())].into()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        let created = self
            .timed(docker.create_container(Some(options), body))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        Ok(created.id)
    }

    /// Removes a container by force, with its anonymous volumes when `volumes` (a recreated
    /// container's anonymous volumes belong to its successor: `false` there).
    pub async fn remove(&self, container: &str, volumes: bool) -> Result<(), EngineError> {
        use bollard::query_parameters::RemoveContainerOptions;
        let options = RemoveContainerOptions { force: true, v: volumes, ..Default::default() };
        match self.timed(self.client()?.remove_container(container, Some(options))).await {
            Ok(()) => Ok(()),
            Err(e) if crate::gone(&e) => Ok(()),
            Err(e) => Err(self.call_failed(&format!("remove {container}"), e)),
        }
    }

    /// Whether an image (id or reference) exists locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        match self.timed(self.client()?.inspect_image(image)).await {
            Ok(_) => Ok(true),
            Err(e) if crate::gone(&e) => Ok(false),
            Err(e) => Err(self.call_failed(&format!("inspect image {image}"), e)),
        }
    }
}

impl Engine {
    /// Starts `spec` in a running container and returns without waiting: a long-lived helper
    /// (PostgreSQL's `pg_receivewal`) that lives and dies with the container, watched by the
    /// caller through the container's own state, not through this call. Its output is lost.
    pub async fn exec_detached(&self, container: &str, spec: &ExecSpec) -> Result<(), EngineError> {
        let docker = self.client()?;
        let what = format!("exec {:?} in {container}", spec.cmd.first());
        let config = exec_config(spec, false, false);
        let exec = self
            .timed(docker.create_exec(container, config))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        let options = bollard::exec::StartExecOptions { detach: true, ..Default::default() };
        self.timed(docker.start_exec(&exec.id, Some(options)))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        Ok(())
    }

    /// Runs `spec` (with its user and env) in a running container and waits for it, keeping
    /// the last `keep` lines of output.
    pub async fn exec_as(
        &self,
        container: &str,
        spec: &ExecSpec,
        keep: usize,
    ) -> Result<ExecOutput, EngineError> {
        let what = format!("exec {:?} in {container}", spec.cmd.first());
        let (exec_id, started) = self.start_exec(container, spec, false).await?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(self.failed(&what, "the engine detached"));
        };
        let tail = self.output_tail(&mut output, keep, &what).await?;
        self.exec_result(container, &exec_id, tail).await
    }
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt as _, TryStreamExt as _};
    use steward_testkit::tar::{archive, entry};

    use super::*;

    /// `bytes` cut into chunks of `size`, through the check, as a read of `path`'s base.
    async fn through(bytes: Vec<u8>, size: usize, base: Option<&str>) -> io::Result<Vec<u8>> {
        through_owned(bytes, size, base, None).await
    }

    /// [`through`], the entries given `owners`.
    async fn through_owned(
        bytes: Vec<u8>,
        size: usize,
        base: Option<&str>,
        owners: Option<crate::unroot::Owners>,
    ) -> io::Result<Vec<u8>> {
        let chunks: Vec<io::Result<Bytes>> =
            bytes.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let stream = futures::stream::iter(chunks).boxed();
        let checked =
            unrooted(async move { Ok(owners) }, stream, base.map(str::to_owned), "read".into());
        let parts: Vec<Bytes> = checked.try_collect().await?;
        Ok(parts.concat())
    }

    /// Each entry's (path, uid, gid, user name, content) as the `tar` crate reads them.
    fn owned(tar: &[u8]) -> Vec<(String, u64, u64, String, Vec<u8>)> {
        owned_at(tar).into_iter().map(|(e, _)| e).collect()
    }

    /// [`owned`], with each entry's modification time.
    #[allow(clippy::type_complexity)]
    fn owned_at(tar: &[u8]) -> Vec<((String, u64, u64, String, Vec<u8>), u64)> {
        let mut a = tar::Archive::new(tar);
        let entries = a.entries().expect("entries");
        entries
            .map(|e| {
                let mut e = e.expect("entry");
                let h = e.header().clone();
                let name = e.path().expect("path").to_string_lossy().into_owned();
                let user = h.username().ok().flatten().unwrap_or_default().to_owned();
                let (uid, gid) = (
                    e.pax_extensions().ok().flatten().and_then(|p| {
                        p.filter_map(Result::ok)
                            .find(|x| x.key() == Ok("uid"))
                            .and_then(|x| x.value().ok()?.parse().ok())
                    }),
                    h.gid().expect("gid"),
                );
                let uid = uid.unwrap_or_else(|| h.uid().expect("uid"));
                let mut data = vec![];
                std::io::Read::read_to_end(&mut e, &mut data).expect("data");
                ((name, uid, gid, user, data), h.mtime().expect("mtime"))
            })
            .collect()
    }

    #[tokio::test]
    async fn podmans_root_owners_and_rounded_times_are_replaced_by_the_listed_ones() {
        // Podman's archive of a running container's path: every entry root's, by number and
        // by name.
        let mut podman = tar::Builder::new(vec![]);
        for (name, data) in [
            ("data/", None),
            ("data/a.txt", Some("hi")),
            // a.txt's second name: a link entry to it.
            ("data/a.txt-again", Some("")),
            ("data/big-id", Some("x")),
            ("data/new", Some("y")),
            // A name listed as a set-uid file's second one, swapped since for a link to a
            // file made after the listing.
            ("data/new-again", Some("")),
            ("data/swapped", Some("z")),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(match data {
                None => tar::EntryType::Directory,
                Some("") => tar::EntryType::Link,
                Some(_) => tar::EntryType::Regular,
            });
            if data == Some("") {
                h.set_link_name(name.trim_end_matches("-again")).expect("link");
            }
            h.set_size(data.map_or(0, |d| d.len() as u64));
            h.set_mode(if name.ends_with("swapped") || name.ends_with("new-again") {
                0o4755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            // Go's writer rounded 1_699_999_999.6 up.
            h.set_mtime(1_700_000_000);
            h.set_username("root").expect("name");
            h.set_groupname("root").expect("name");
            podman.append_data(&mut h, name, data.unwrap_or_default().as_bytes()).expect("entry");
        }
        let podman = podman.into_inner().expect("archive");
        use crate::listing::Kind;
        let listed = |uid, gid, mtime, kind, size| crate::unroot::Listed {
            uid,
            gid,
            mtime,
            kind,
            size,
            perms: 0o644,
            links: 1,
            inode: 0,
        };
        let twice = |l: crate::unroot::Listed| crate::unroot::Listed { links: 2, inode: 7, ..l };
        let owners: crate::unroot::Owners = [
            ("data".to_owned(), listed(1000, 100, 1_699_999_999, Kind::Dir, 4096)),
            // Changed since it was listed: the archive's time is the newer one.
            ("data/a.txt".to_owned(), twice(listed(1001, 101, 1_699_999_990, Kind::File, 2))),
            // Its extraction sets the owner of both names: root's would take the file.
            ("data/a.txt-again".to_owned(), twice(listed(1001, 101, 1_699_999_990, Kind::File, 2))),
            ("data/new-again".to_owned(), {
                let file = twice(listed(0, 0, 1_700_000_000, Kind::File, 1));
                crate::unroot::Listed { perms: 0o4755, ..file }
            }),
            ("data/big-id".to_owned(), listed(100_000_000, 5, 1_700_000_000, Kind::File, 1)),
            // Replaced since by a set-uid file of another size: not the listed owner's.
            ("data/swapped".to_owned(), listed(1000, 100, 1_700_000_000, Kind::File, 5)),
        ]
        .into_iter()
        .collect();
        for size in [1, 512, 4096] {
            let out = through_owned(podman.clone(), size, Some("data"), Some(owners.clone()))
                .await
                .expect("owned");
            let got = owned(&out);
            let want = [
                ("data/", 1000, 100, "", &b""[..]),
                ("data/a.txt", 1001, 101, "", b"hi"),
                ("data/a.txt-again", 1001, 101, "", b""),
                // Beyond the header's octal field: a PAX record holds it.
                ("data/big-id", 100_000_000, 5, "", b"x"),
                // Made after the listing: Podman's owner (and name) stays.
                ("data/new", 0, 0, "root", b"y"),
                // Its target is not the listed file: root's, not set-uid.
                ("data/new-again", 0, 0, "root", b""),
                ("data/swapped", 0, 0, "root", b"z"),
            ];
            let want: Vec<_> = want
                .iter()
                .map(|(n, u, g, user, d)| ((*n).to_owned(), *u, *g, (*user).to_owned(), d.to_vec()))
                .collect();
            assert_eq!(got, want, "chunks of {size}");
            let times: Vec<u64> = owned_at(&out).into_iter().map(|(_, t)| t).collect();
            let mut want = vec![1_700_000_000; 7];
            want[0] = 1_699_999_999;
            assert_eq!(times, want);
            let mut a = tar::Archive::new(&out[..]);
            let modes: Vec<u32> = a
                .entries()
                .expect("entries")
                .map(|e| e.expect("entry").header().mode().expect("mode"))
                .collect();
            assert_eq!(
                modes,
                [0o644, 0o644, 0o644, 0o644, 0o644, 0o755, 0o755],
                "the set-uid bit is gone"
            );
        }
        // Owners put back on a stopped container's archive named from / too.
        let rooted = archive(&[entry::dir("/"), entry::file("/a.txt", b"hi")]);
        let mut owners = owners;
        if let Some(dir) = owners.get_mut("data") {
            dir.perms = 0o755;
        }
        let out = through_owned(rooted, 512, Some("data"), Some(owners)).await.expect("both");
        let got: Vec<(String, u64)> = owned(&out).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(got, vec![("data/".to_owned(), 1000), ("data/a.txt".to_owned(), 1001)]);
    }

    #[tokio::test]
    async fn a_docker_style_archive_passes_whole_whatever_the_chunking() {
        let tar = archive(&[entry::dir("data/"), entry::file("data/a.txt", b"hi")]);
        for size in [1, 100, 511, 512, 513, 4096] {
            let out = through(tar.clone(), size, Some("data")).await.expect("passes");
            assert_eq!(out, tar, "chunks of {size}");
        }
        let empty = through(vec![], 10, Some("data")).await.expect("empty passes");
        assert_eq!(empty, Vec::<u8>::new());
    }

    #[tokio::test]
    async fn an_archive_named_from_the_root_is_renamed_under_the_paths_name() {
        // What Podman 4.3 gives for a stopped container's volume mount point: the same bytes
        // as Docker's archive of it, but for the names.
        let podman = archive(&[entry::dir("/"), entry::file("/a.txt", b"hi")]);
        let docker = archive(&[entry::dir("data/"), entry::file("data/a.txt", b"hi")]);
        for size in [1, 512, 4096] {
            let out = through(podman.clone(), size, Some("data")).await.expect("renamed");
            assert_eq!(out, docker, "chunks of {size}");
        }
        // Without a name to put back (a read of / itself): refused before any byte.
        let mut checked = unrooted(
            async { Ok(None) },
            futures::stream::iter([Ok(Bytes::from(podman))]).boxed(),
            None,
            "read / of c".into(),
        );
        let first = checked.next().await.expect("one item");
        let e = first.expect_err("refused, no bytes before");
        assert!(e.to_string().contains("names its entries from /"), "{e}");
    }

    #[test]
    fn only_a_plain_header_is_judged_by_its_name() {
        let pax = archive(&[entry::pax_path("data/a", "/a", b"x")]);
        assert_eq!(rooted_name(&pax[..TAR_BLOCK]), None, "a pax header is left to the reader");
        let plain = archive(&[entry::file("/etc/x", b"x")]);
        assert_eq!(rooted_name(&plain[..TAR_BLOCK]).as_deref(), Some("/etc/x"));
    }

    /// A line the engine split across two frames is one line (it was two, and a cut WAL name
    /// in a spool listing looked like a gap, a cut time like 1970).
    #[test]
    fn a_line_cut_between_frames_is_one_line() {
        let mut tail = Tail::new(10);
        tail.push(OUT, b"000000010000000000000003\n0000000100000000");
        tail.push(ERR, b"warn");
        tail.push(OUT, b"00000004\nnow=17961");
        tail.push(ERR, b"ing\r\n");
        tail.push(OUT, b"10000\n");
        let lines: Vec<String> = tail.finish().into();
        assert_eq!(
            lines,
            ["000000010000000000000003", "000000010000000000000004", "warning", "now=1796110000"]
        );
        // The last lines only, an unfinished last line included.
        let mut tail = Tail::new(2);
        tail.push(OUT, b"a\nb\nc\nd");
        assert_eq!(Vec::from(tail.finish()), ["c", "d"]);
        // An endless line is cut, not held whole.
        let mut tail = Tail::new(4);
        tail.push(OUT, &vec![b'x'; MAX_LINE + 10]);
        tail.push(OUT, b"y");
        let lines = Vec::from(tail.finish());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE + 10);
    }
}
