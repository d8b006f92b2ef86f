//! What every Steward service shares.
//!
//! A service's `main` is three lines: [`main`] reads the shared configuration (exiting with
//! one line naming any bad variable), sets up logs, connects to NATS and Docker, serves
//! `/healthz`, `/readyz` and `/metrics`, and runs the service's [`Handler`] over its durable
//! consumer until SIGTERM/SIGINT, finishing or returning the event in hand and waiting for
//! the service's background tasks ([`Context::spawn`]), all within one grace period.
//!
//! Invariant: the runtime knows no service's business; services know nothing of NATS except
//! through [`Context::bus`].

mod config;
mod consume;
mod http;
mod metrics;
mod schedule;
mod shutdown;
mod tasks;
mod telemetry;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
pub use config::*;
pub use consume::{Handler, HandlerError};
pub use metrics::Metrics;
pub use schedule::on_schedule;
use steward_bus::{Bus, ConsumerSpec, Idempotency};
use steward_engine::Engine;
use steward_events::{Event, Service};
pub use steward_settings::{env, event_source, ConfigError, Env};
pub use telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

/// What a handler can use.
#[derive(Clone, Debug)]
pub struct Context {
    /// Which service this is.
    pub service: Service,
    /// The bus, to publish follow-up events.
    pub bus: Bus,
    /// The Docker engine, for services that use it.
    pub engine: Option<Engine>,
    /// Cancelled on shutdown; background loops check it between units of work.
    pub shutdown: CancellationToken,
    /// The service's metrics; add your own with [`Metrics::register`].
    pub metrics: Arc<Metrics>,
    /// The service's own HTTP routes, served beside the standard ones once set.
    routes: Arc<std::sync::OnceLock<axum::Router>>,
    /// Background tasks, waited for on shutdown.
    tasks: tasks::Tasks,
}

impl Context {
    /// `steward-<service>/<hostname>`: the CloudEvents `source` of what this service publishes.
    pub fn source(&self) -> String {
        event_source(self.service)
    }

    /// The host this agent looks after (`STEWARD_HOST`, resolved at start); `None` for a
    /// central service.
    pub fn host(&self) -> Option<&str> {
        self.bus.host()
    }

    /// Serves `router` beside `/healthz`, `/readyz` and `/metrics` on `STEWARD_HTTP_ADDR`
    /// (e.g. the updater's approval page). Set once; a second call is refused.
    pub fn serve_routes(&self, router: axum::Router) -> anyhow::Result<()> {
        self.routes.set(router).map_err(|_| anyhow::anyhow!("service routes are already set"))
    }

    /// Runs `work` in the background, owned by the runtime: on shutdown [`Runtime::run`]
    /// waits for it within `STEWARD_SHUTDOWN_GRACE` and names it in the log if it did not
    /// finish. A loop should check [`Context::shutdown`] only between units of work (a
    /// backup, a delivery, a sweep), so that the one in progress finishes; what is cut off
    /// at the end of the grace must be work a restart resumes.
    pub fn spawn<F>(&self, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(name, work);
    }

    /// Publishes an event caused by `cause` (same correlation id).
    pub async fn publish_caused_by(
        &self,
        cause: &Event,
        data: impl Into<steward_events::EventData>,
    ) -> Result<steward_bus::Published, steward_bus::BusError> {
        self.bus.publish(&Event::caused_by(cause, self.source(), data)).await
    }
}

/// `STEWARD_HOST`'s default: the engine's name for its machine, else this machine's (or
/// container's) hostname, as a host token (`steward_events::host_from_name`).
async fn default_host(engine: Option<&Engine>) -> String {
    let from_engine = match engine {
        Some(engine) => match engine.name().await {
            Ok(name) => name.as_deref().and_then(steward_events::host_from_name),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the engine's name");
                None
            }
        },
        None => None,
    };
    from_engine.unwrap_or_else(|| {
        let host = steward_events::host_from_name(&steward_settings::hostname())
            .unwrap_or_else(|| "localhost".to_owned());
        tracing::warn!(%host, "the engine gave no name: the host is the hostname (set {ENV_HOST} to choose)");
        host
    })
}

/// A started service: configuration read, connections made, HTTP serving.
pub struct Runtime {
    config: RuntimeConfig,
    ctx: Context,
    metrics: Arc<Metrics>,
}

impl Runtime {
    /// Connects to NATS (and Docker, if the service uses it) and starts the HTTP server;
    /// SIGTERM/SIGINT start the graceful shutdown.
    pub async fn start(config: RuntimeConfig) -> anyhow::Result<Self> {
        Self::start_with_shutdown(config, shutdown::on_signal()).await
    }

    /// [`start`](Self::start), with shutdown triggered by cancelling `shutdown` (tests, embedding).
    pub async fn start_with_shutdown(
        config: RuntimeConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let service = config.service;
        let mut bus_config = config.bus.clone();
        let engine = if config.uses_docker {
            let engine = Engine::new(steward_engine::docker_host(), config.engine_timeout);
            // Not fatal: /readyz reports it, and the engine may come up after us.
            let answers = engine.ping(std::time::Duration::from_secs(5)).await;
            if let Err(e) = &answers {
                tracing::warn!(error = %e, "Docker engine not reachable yet");
            }
            let host = match &config.host {
                Some(host) => host.clone(),
                None => default_host(answers.is_ok().then_some(&engine)).await,
            };
            if bus_config.routes_by_host() && !bus_config.hosts.contains(&host) {
                anyhow::bail!(
                    "host {host:?} is not in STEWARD_HOSTS ({}): set {ENV_HOST} to one of them, or add it (and run `steward setup`)",
                    bus_config.hosts.join(",")
                );
            }
            tracing::info!(%host, "looking after this host's engine");
            bus_config.host = Some(host);
            Some(engine)
        } else {
            None
        };
        let bus = Bus::connect(bus_config, service.binary()).await?;
        let metrics = Arc::new(Metrics::new(service.name()));
        metrics.start_at_zero(service.consumes());
        let routes = Arc::new(std::sync::OnceLock::new());
        let ctx = Context {
            service,
            bus,
            engine,
            shutdown,
            metrics: metrics.clone(),
            routes,
            tasks: tasks::Tasks::default(),
        };
        let runtime = Self { config, ctx, metrics };
        runtime.serve().await?;
        Ok(runtime)
    }

    /// Serves the standard endpoints on `STEWARD_HTTP_ADDR` at once, and the service's own
    /// routes as soon as it sets them ([`Context::serve_routes`]).
    async fn serve(&self) -> anyhow::Result<()> {
        let probe = http::Probe {
            bus: self.ctx.bus.clone(),
            engine: self.ctx.engine.clone(),
            metrics: self.metrics.clone(),
        };
        let app = http::router(probe, self.ctx.routes.clone());
        let addr = self.config.http_addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({ENV_HTTP_ADDR})"))?;
        let shutdown = self.ctx.shutdown.clone();
        tracing::info!(%addr, "serving /healthz /readyz /metrics");
        self.ctx.spawn("http server", async move {
            let server =
                axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Ok(())
    }

    /// The service's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The handler's context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Runs `handler` over the service's consumer until shutdown, then waits for the
    /// background tasks; the event in hand and the tasks share one grace period.
    pub async fn run<H: Handler>(self, handler: H) -> anyhow::Result<()> {
        let service = self.config.service;
        // The consumer `steward setup` made for this service (same spec, one meaning); its
        // settings as the server has them (`inbox` reconciles a service's own overrides).
        // Under host routing an agent's is `<service>-<host>`, reading its host's subjects.
        let mut spec = ConsumerSpec::of(service, self.ctx.bus.config().route_host());
        spec.ack_wait = self.config.ack_wait;
        spec.max_deliver = self.config.max_deliver;
        // Still part of the start: a signal now stops it (with NATS gone, each request here
        // waits for its timeout, and the failure was reported as fatal after a SIGTERM).
        // A slow or briefly absent server is waited for (a start on a loaded host timed out
        // looking up the consumer, and the service exited); what waiting cannot fix (not
        // provisioned, refused) ends the start at once.
        let setup = async {
            let mut delay = std::time::Duration::from_secs(1);
            let started = tokio::time::Instant::now();
            loop {
                let attempt = async {
                    let inbox = self.ctx.bus.inbox(spec.clone()).await?;
                    let idempotency = Idempotency::open(&self.ctx.bus, &inbox.spec().name).await?;
                    Ok::<_, steward_bus::BusError>((inbox, idempotency))
                };
                match attempt.await {
                    Ok(ready) => return anyhow::Ok(ready),
                    Err(e) if e.is_transient() && started.elapsed() < SETUP_PATIENCE => {
                        tracing::warn!(error = %e, retry_in = ?delay, "the bus is not answering yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let grace = tasks::Grace::new(self.ctx.shutdown.clone(), self.config.shutdown_grace);
        let (inbox, idempotency) = tokio::select! {
            ready = setup => ready?,
            () = self.ctx.shutdown.cancelled() => {
                // The background tasks started with the runtime are already at work (a CI
                // run stopped during a loaded start and cut a job mid-way): they get the
                // same grace as after a start that finished.
                tracing::info!("stopped before it was up");
                self.finish(&grace).await;
                return Ok(());
            }
        };
        let ack_wait = inbox.spec().ack_wait;
        let horizon = idempotency.horizon();
        tracing::info!(consumes = ?service.consumes(), "consuming");
        let consume_loop = consume::Loop {
            ctx: &self.ctx,
            handler: &handler,
            idempotency,
            horizon,
            metrics: &self.metrics,
            shutdown: self.ctx.shutdown.clone(),
            grace: grace.clone(),
            ack_wait,
        };
        // The loop returns only after shutdown; the deadline starts at the signal even if
        // the loop is busy settling an event then.
        tokio::join!(consume_loop.run(inbox), grace.start_on_cancel());
        self.finish(&grace).await;
        Ok(())
    }

    /// The end of every run: the background tasks until the grace's deadline, then what the
    /// connection still buffers.
    async fn finish(&self, grace: &tasks::Grace) {
        self.ctx.tasks.wait_until(grace.deadline()).await;
        // Deliver whatever acks and events are still buffered before the process exits. A
        // flush waits for the server's answer, forever while NATS is unreachable: bounded, so
        // a service stops when told to even then (what was unacknowledged is redelivered).
        match tokio::time::timeout(FLUSH_ON_EXIT, self.ctx.bus.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush NATS connection on shutdown"),
            Err(_) => tracing::warn!(
                "NATS did not answer within {FLUSH_ON_EXIT:?}: stopping without flushing (unacknowledged events are redelivered)"
            ),
        }
        tracing::info!("stopped");
    }
}

/// How long a starting service keeps trying a bus that times out before it gives up.
const SETUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a stopping service waits for NATS to take what it buffered.
const FLUSH_ON_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Stack of each runtime thread. Debug builds of the update and backup flows keep poll frames
/// of hundreds of KiB (a future is built on the stack before it moves into its parent): a debug
/// backup service's backup overflowed 4 and 5 MiB, passed at 8 MiB and overflowed 8 MiB once
/// in CI (docs/reliability.md, "Stacks"). The memory is reserved, not resident.
pub const THREAD_STACK: usize = 16 * 1024 * 1024;

/// Runs a service's `main` future on its runtime: two workers (the host has few cores and a
/// service waits on I/O), [`THREAD_STACK`] each. `main` is driven on a thread of its own, as
/// `block_on` on the process's main thread drove it, but with [`THREAD_STACK`] too: the main
/// thread's stack is whatever `ulimit -s` gave the process.
pub fn block_on(
    service: Service,
    main: impl Future<Output = ExitCode> + Send + 'static,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(THREAD_STACK)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("steward-{service}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On the heap at once: moved into the thread by value, a debug build's future was copied
    // through the main thread's frames, and that alone overflowed a 1 MiB stack.
    let main = Box::pin(main);
    let thread = std::thread::Builder::new()
        .name(format!("steward-{service}"))
        .stack_size(THREAD_STACK)
        .spawn(move || runtime.block_on(main));
    match thread.map(std::thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        // A panic: its message is on stderr already.
        Ok(Err(_)) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("steward-{service}: cannot start its main thread: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole life of a service process: configuration, start, run, exit code.
///
/// `read_own` reads the service's own variables into the same [`Env`], so every bad variable
/// of the service is reported in the same single line.
pub async fn main<C, H, F, Fut>(
    service: Service,
    read_own: impl FnOnce(&mut Env) -> C,
    build: F,
) -> ExitCode
where
    H: Handler,
    F: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = anyhow::Result<H>>,
{
    let mut env = Env::from_process();
    let config = RuntimeConfig::read(service, &mut env);
    let own = read_own(&mut env);
    if let Err(e) = env.finish() {
        eprintln!("{}: {e}", service.binary());
        return ExitCode::from(2);
    }
    let telemetry = telemetry::init(service, config.log_format, &config.log_filter, config.traces);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "{} starting", service.binary());
    let shutdown = shutdown::on_signal();
    let starting = async {
        let runtime = Runtime::start_with_shutdown(config, shutdown.clone()).await?;
        let handler = build(own, runtime.context().clone()).await?;
        anyhow::Ok((runtime, handler))
    };
    // A signal while starting (NATS or the engine not answering yet can take a while) stops
    // the service then: nothing was taken from the bus yet, and a half-done start is what a
    // kill leaves, which every service recovers from.
    let result = tokio::select! {
        started = starting => match started {
            Ok((runtime, handler)) => runtime.run(handler).await,
            Err(e) => Err(e),
        },
        () = shutdown.cancelled() => {
            tracing::info!("stopped before it was up");
            Ok(())
        }
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fatal");
            eprintln!("{}: {e:#}", service.binary());
            ExitCode::FAILURE
        }
    }
}
