//! `steward-sockproxy`: serves each configured role's socket until SIGTERM/SIGINT.
//! `steward-sockproxy healthcheck` pings the engine through every socket (the container's
//! HEALTHCHECK).

use anyhow::Context as _;
use steward_sockproxy::config::Config;
use steward_sockproxy::proxy;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let config = match Config::from_lookup(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("steward-sockproxy: bad configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("steward-sockproxy: cannot start: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let healthcheck = std::env::args().nth(1).as_deref() == Some("healthcheck");
    let result = if healthcheck {
        runtime.block_on(check(&config))
    } else {
        init_logs();
        runtime.block_on(run(config))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steward-sockproxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("STEWARD_LOG_FORMAT").as_deref() == Ok("pretty") {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

async fn check(config: &Config) -> anyhow::Result<()> {
    for (role, path) in &config.sockets {
        proxy::ping(path).await.map_err(|e| anyhow::anyhow!("{role}: {e}"))?;
    }
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (role, path) in &config.sockets {
        let listener = proxy::bind(path).with_context(|| format!("the {role} socket"))?;
        tracing::info!(%role, socket = %path.display(), upstream = %config.upstream.display(), "listening");
        tasks.spawn(proxy::serve(listener, *role, config.upstream.clone(), cancel.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    // A socket left behind would look alive to a client until the next start replaces it.
    for (_, path) in &config.sockets {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
