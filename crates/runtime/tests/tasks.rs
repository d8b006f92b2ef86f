//! Background tasks started with `Context::spawn` against real NATS: shutdown lets the unit
//! of work in progress finish, and abandons (by name) what ignores it once the grace is over.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_bus::BusConfig;
use steward_events::{Event, Service, WatchRequested};
use steward_runtime::{Context, Env, Handler, HandlerError, Runtime, RuntimeConfig};
use steward_testkit::{free_port, stored_events, unique_name, TestBus};
use tokio_util::sync::CancellationToken;

/// A watcher-shaped service (consumes `watch.requested`) on `bus_cfg`, without Docker.
fn config(bus_cfg: BusConfig, grace: &str) -> RuntimeConfig {
    let mut env = Env::from_pairs([("STEWARD_SHUTDOWN_GRACE", grace)]);
    let mut cfg = RuntimeConfig::read(Service::Watcher, &mut env);
    env.finish().expect("test config");
    cfg.bus = bus_cfg;
    cfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    cfg.uses_docker = false;
    cfg
}

/// The log lines written while the returned guard lives (tests run on one thread, so the
/// runtime's tasks log through it too).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(vec![]));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

fn lines(buf: &Mutex<Vec<u8>>) -> Vec<String> {
    String::from_utf8_lossy(&buf.lock().expect("lock")).lines().map(str::to_owned).collect()
}

/// A job of two-second units of work, each ending in `outcome` on the bus; `started` fires
/// when the first unit begins.
struct SlowJob {
    outcome: Event,
    done: Arc<AtomicBool>,
    /// Why the job ended early, if it did (a panic in a task is only logged).
    failed: Arc<Mutex<Option<String>>>,
    started: tokio::sync::oneshot::Receiver<()>,
}

impl SlowJob {
    fn spawn(ctx: &Context) -> Self {
        let outcome = Event::new(
            "test",
            WatchRequested { container: Some(unique_name("job")), requested_by: None },
        );
        let done = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None::<String>));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        ctx.spawn("slow job", {
            let (ctx, outcome, done, failed) =
                (ctx.clone(), outcome.clone(), done.clone(), failed.clone());
            async move {
                let mut started_tx = Some(started_tx);
                loop {
                    tokio::select! {
                        biased;
                        _ = ctx.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(());
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if let Err(e) = ctx.bus.publish(&outcome).await {
                        *failed.lock().expect("lock") =
                            Some(format!("publishing the outcome: {e}"));
                        return;
                    }
                    done.store(true, Ordering::SeqCst);
                }
            }
        });
        Self { outcome, done, failed, started }
    }

    /// Asserts that `run` (which returned `stopping.elapsed()` after the signal) waited for
    /// the unit of work in hand and its outcome reached the stream.
    async fn assert_finished(&self, bus: &TestBus, stopping: Instant) {
        assert!(
            self.done.load(Ordering::SeqCst),
            "run returned before the job in progress finished ({:?}, after {:?})",
            self.failed.lock().expect("lock"),
            stopping.elapsed()
        );
        assert!(stopping.elapsed() >= Duration::from_millis(1500), "{:?}", stopping.elapsed());
        let stored = stored_events(bus).await;
        assert!(
            stored.iter().any(|e| e.id == self.outcome.id),
            "the job's outcome is on the stream"
        );
    }
}

/// A started runtime on `bus` and the token that stops it. Its grace is far beyond the job's
/// two seconds: what is tested is that run waits for the job, and CI (loaded) once failed
/// with 10 s without saying why.
async fn patient_runtime(bus: &TestBus) -> (Runtime, CancellationToken) {
    let shutdown = CancellationToken::new();
    let runtime =
        Runtime::start_with_shutdown(config(bus.config().clone(), "60s"), shutdown.clone())
            .await
            .expect("runtime starts");
    (runtime, shutdown)
}

#[tokio::test]
async fn shutdown_lets_a_background_task_finish_its_unit_of_work() {
    let (logs, _guard) = capture_logs();
    let bus = TestBus::new("tasks-finish").await;
    let (runtime, shutdown) = patient_runtime(&bus).await;
    let mut job = SlowJob::spawn(runtime.context());
    let run = tokio::spawn(runtime.run(Idle));
    (&mut job.started).await.expect("job started");
    // Stopped while consuming (the next test stops it before).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines(&logs).iter().any(|l| l.contains("consuming")) {
        assert!(Instant::now() < deadline, "never consuming: {:?}", lines(&logs));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("stops within 90 s")
        .expect("join")
        .expect("clean exit");
    job.assert_finished(&bus, stopping).await;
}

/// CI (loaded) stopped a service while `run` was still looking up its consumer, and `run`
/// returned at once, cutting a job that had started with the runtime.
#[tokio::test]
async fn shutdown_before_the_consumer_is_up_still_lets_a_background_task_finish() {
    let bus = TestBus::new("tasks-early").await;
    let (runtime, shutdown) = patient_runtime(&bus).await;
    let mut job = SlowJob::spawn(runtime.context());
    (&mut job.started).await.expect("job started");
    let stopping = Instant::now();
    // Requested before run is first polled: its start cannot have finished.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(90), runtime.run(Idle))
        .await
        .expect("stops within 90 s")
        .expect("clean exit");
    job.assert_finished(&bus, stopping).await;
}

/// Handles each event slowly, to hold an event in hand at shutdown.
struct Slow(Duration);

impl Handler for Slow {
    async fn handle(&self, _ctx: &Context, _event: Event) -> Result<(), HandlerError> {
        tokio::time::sleep(self.0).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_task_that_ignores_shutdown_is_abandoned_by_name_within_the_same_grace() {
    let (logs, _guard) = capture_logs();
    let bus = TestBus::new("tasks-abandon").await;
    let shutdown = CancellationToken::new();
    let runtime =
        Runtime::start_with_shutdown(config(bus.config().clone(), "2s"), shutdown.clone())
            .await
            .expect("runtime starts");
    let ctx = runtime.context().clone();
    ctx.spawn("stubborn loop", async {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
    let polite = ctx.clone();
    ctx.spawn("polite loop", async move { polite.shutdown.cancelled().await });
    let run = tokio::spawn(runtime.run(Slow(Duration::from_millis(1800))));
    // An event in hand at shutdown: it and the tasks share one grace, not one each.
    bus.publish(&Event::new("test", WatchRequested::default())).await.expect("publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines(&logs).iter().any(|l| l.contains("received")) {
        assert!(Instant::now() < deadline, "the event never reached the handler");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("stops within 30 s")
        .expect("join")
        .expect("clean exit");
    let took = stopping.elapsed();
    assert!(took >= Duration::from_millis(1900), "did not wait for the grace: {took:?}");
    // 1.8 s for the event and then 2 s more for the tasks would be 3.8 s.
    assert!(took < Duration::from_millis(3300), "grace given more than once: {took:?}");
    let abandoned: Vec<String> =
        lines(&logs).into_iter().filter(|l| l.contains("did not finish")).collect();
    assert!(
        abandoned.iter().any(|l| l.contains("stubborn loop")),
        "the abandoned task is named: {abandoned:?}"
    );
    assert!(!abandoned.iter().any(|l| l.contains("polite loop")), "{abandoned:?}");
}

/// A service with no event work: only its background job matters here.
struct Idle;

impl Handler for Idle {
    async fn handle(
        &self,
        _ctx: &Context,
        _event: steward_events::Event,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}
