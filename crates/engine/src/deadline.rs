//! Deadlines on engine calls.
//!
//! A hung engine (dockerd deadlocked in libnetwork, say) accepts the connection and never
//! answers. Two layers bound that:
//!
//! - bollard's client timeout, set to the deadline on the shared client
//!   ([`Engine::client`]): it covers every request up to the response head, so even a call
//!   made on the raw client has a bound. It does not cover reading the body, and it is one
//!   value for every call, too short for a stop with a long grace period and meaningless for
//!   a stream;
//! - [`Engine::within`] (`tokio::time::timeout` around the whole call, body included) with a
//!   limit chosen per call, on a client whose bollard timeout is the same limit, and
//!   [`idle_bounded`] / [`Engine::upload_within`] for streams, which bound the time between
//!   chunks of progress rather than the whole transfer.
//!
//! Both turn into [`EngineError::Timeout`] naming the call. Dropping the timed-out request
//! drops its connection, so the handle is not poisoned: the next call opens a fresh one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::Docker;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tracing::Instrument as _;

use crate::{Engine, EngineError};

/// Default deadline of one engine call (`STEWARD_ENGINE_TIMEOUT`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Largest deadline accepted: beyond it a hung engine would hold a flow for too long to matter.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// The engine's own default stop grace period, for stops that do not name one.
pub const ENGINE_STOP_GRACE: Duration = Duration::from_secs(10);
/// The bollard timeout of requests whose answer comes at the pace of the work, bounded by
/// progress instead (uploads): long enough to never be the bound that fires.
const WHOLE_TRANSFER: Duration = Duration::from_secs(30 * 24 * 3600);

/// The name of the bollard method whose future `F` is (`inspect_container`), from the type's
/// name: `bollard::...::Docker>::inspect_container::{{closure}}`.
fn call_name<F>() -> &'static str {
    let name = std::any::type_name::<F>();
    let head = name.split("::{{closure}}").next().unwrap_or(name);
    match head.rsplit("::").next() {
        Some(method) if !method.contains(['<', '>']) && !method.is_empty() => method,
        _ => "call",
    }
}

/// `d` rounded up to whole seconds, at least 1 s: bollard's timeout has one-second
/// resolution, and rounding down would make 0.5 s an immediate failure.
pub(crate) fn whole(d: Duration) -> Duration {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    Duration::from_secs(secs.max(1))
}

impl Engine {
    /// The client with bollard's timeout at `limit` instead of the deadline.
    pub(crate) fn client_within(&self, limit: Duration) -> Result<Docker, EngineError> {
        Ok(self.client()?.with_timeout(whole(limit)))
    }

    /// Runs one call with `limit` to answer; a call that does not is bollard's
    /// `RequestTimeoutError`, which [`Engine::call_failed`] turns into a timeout.
    ///
    /// Inside a traced span (an event being handled) the call is a `docker <call>` child span,
    /// named after bollard's method; outside one (periodic probes) no span is made.
    pub(crate) async fn within<T, F>(&self, limit: Duration, call: F) -> Result<T, BollardError>
    where
        F: Future<Output = Result<T, BollardError>>,
    {
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!("docker", otel.name = %format_args!("docker {}", call_name::<F>()),
                otel.kind = "client", docker.host = %self.host)
        };
        tokio::time::timeout(whole(limit), call)
            .instrument(span)
            .await
            .unwrap_or(Err(BollardError::RequestTimeoutError))
    }

    /// [`Engine::within`] the deadline.
    pub(crate) async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, BollardError> {
        self.within(self.deadline, call).await
    }

    /// The error of call `what` that had `limit` to answer.
    pub(crate) fn call_failed_within(
        &self,
        what: &str,
        limit: Duration,
        e: BollardError,
    ) -> EngineError {
        match e {
            BollardError::RequestTimeoutError => EngineError::Timeout {
                host: self.host.clone(),
                what: what.to_owned(),
                after: whole(limit),
            },
            e if connection_lost(&e) => self.unreachable(format!("{what}: {e}")),
            e => self.failed(what, e),
        }
    }

    /// The error of call `what` that had the deadline to answer.
    pub(crate) fn call_failed(&self, what: &str, e: BollardError) -> EngineError {
        self.call_failed_within(what, self.deadline, e)
    }

    /// How long a stop with `grace` (the engine's default when `None`) may take to answer:
    /// the grace period, then the kill, within the deadline.
    pub(crate) fn stop_limit(&self, grace: Option<i64>) -> Duration {
        let grace = grace
            .and_then(|g| u64::try_from(g).ok())
            .map_or(ENGINE_STOP_GRACE, Duration::from_secs);
        grace + self.deadline
    }

    /// Runs an upload whose `body` is wrapped by [`Progress::watch`]: it fails as a timeout
    /// when the engine takes no chunk for `idle` (while the source had one ready) or gives no
    /// answer within `idle` of the end of the body. A slow source is not the engine's fault.
    pub(crate) async fn upload_within<T>(
        &self,
        idle: Duration,
        progress: &Progress,
        call: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, BollardError> {
        let idle = whole(idle);
        let mut call = std::pin::pin!(call);
        let tick = (idle / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = &mut call => return done,
                _ = tokio::time::sleep(tick) => {
                    if progress.engine_owes_for().is_some_and(|owed| owed >= idle) {
                        return Err(BollardError::RequestTimeoutError);
                    }
                }
            }
        }
    }

    /// The client for an upload: bounded by [`Engine::upload_within`], not by bollard.
    pub(crate) fn upload_client(&self) -> Result<Docker, EngineError> {
        self.client_within(WHOLE_TRANSFER)
    }
}

/// A stream that fails with bollard's `RequestTimeoutError` (and ends) when the next item
/// takes longer than `idle` after it was asked for: a bound per chunk of progress, so a
/// long transfer is fine while it moves and a slow consumer is not counted.
pub(crate) fn idle_bounded<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, BollardError>> + Send + 'static,
    idle: Duration,
) -> Pin<Box<dyn Stream<Item = Result<T, BollardError>> + Send>> {
    let idle = whole(idle);
    futures::stream::unfold(Some(stream.boxed()), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((Err(BollardError::RequestTimeoutError), None)),
        }
    })
    .boxed()
}

/// Whether the engine owes us something in an upload, and since when.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    owed_since: Arc<Mutex<Option<Instant>>>,
}

impl Progress {
    fn set(&self, value: Option<Instant>) {
        *self.owed_since.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    /// How long the engine has owed us the next read of the body (or, after its end, the
    /// answer); `None` while it waits on our source.
    fn engine_owes_for(&self) -> Option<Duration> {
        self.owed_since.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// `body`, recording when the engine takes each chunk: after a chunk (or the end) is
    /// handed over, the engine owes the next poll; a poll clears it until the source answers.
    pub(crate) fn watch<S>(&self, body: S) -> Watched<S> {
        Watched { inner: body, progress: self.clone() }
    }
}

/// A body stream under [`Progress::watch`].
pub(crate) struct Watched<S> {
    inner: S,
    progress: Progress,
}

impl<S> Stream for Watched<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.progress.set(None);
        let polled = self.inner.poll_next_unpin(cx);
        if polled.is_ready() {
            self.progress.set(Some(Instant::now()));
        }
        polled
    }
}

/// Whether a call failed because the engine could not be reached or the connection broke
/// (dockerd or the socket proxy restarting), not because the engine refused or failed it:
/// callers try such a call again once the engine answers, and report the others.
pub(crate) fn connection_lost(e: &BollardError) -> bool {
    use std::io::ErrorKind::*;
    if matches!(e, BollardError::SocketNotFoundError(_)) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | BrokenPipe
                    | UnexpectedEof
                    | NotFound
            ) {
                return true;
            }
        }
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return true;
            }
        }
        if let Some(h) = c.downcast_ref::<hyper_util::client::legacy::Error>() {
            if h.is_connect() {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn deadlines_are_whole_seconds_within_bounds() {
        assert_eq!(super::whole(Duration::from_millis(1500)), Duration::from_secs(2));
        assert_eq!(super::whole(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(super::whole(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(super::whole(Duration::from_secs(1 << 40)), Duration::from_secs(1 << 40));
    }

    fn name_of<F>(_: &F) -> &'static str {
        super::call_name::<F>()
    }

    #[test]
    fn a_call_span_is_named_after_the_method() {
        async fn inspect_container() {}
        let docker = bollard::Docker::connect_with_http(
            "http://127.0.0.1:9",
            1,
            bollard::API_DEFAULT_VERSION,
        );
        let docker = docker.expect("client");
        assert_eq!(name_of(&docker.ping()), "ping");
        assert_eq!(name_of(&inspect_container()), "inspect_container");
        assert_eq!(name_of(&std::future::ready(())), "call");
    }
}
