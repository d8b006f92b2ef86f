//! Entry point of `steward-backup`: configuration, runtime, handler; or `extract` (one
//! component of a backup on stdout, [`steward_backup::extract`]); or `gc` (deletes the
//! chunks no usable backup needs, [`steward_backup::chunks::gc`]).

// The AWS SDK's nested futures exceed the default depth when the layout of `main` is computed.
#![recursion_limit = "256"]

use std::process::ExitCode;

use steward_backup::config::BackupConfig;
use steward_backup::{BackupService, Backups};
use steward_runtime::Env;
use steward_store::store::Store;

fn main() -> ExitCode {
    steward_runtime::block_on(steward_backup::SERVICE, run())
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("extract") {
        return extract(&args[1..]).await;
    }
    if args.first().map(String::as_str) == Some("gc") {
        return gc(&args[1..]).await;
    }
    steward_runtime::main(steward_backup::SERVICE, BackupConfig::read, |cfg, ctx| async move {
        BackupService::start(cfg, &ctx).await
    })
    .await
}

/// `steward-backup extract`: exit 0 with the component on stdout, 2 for bad usage or
/// settings, 1 when the backup or component is refused or unreadable.
async fn extract(args: &[String]) -> ExitCode {
    let from_copy = args.iter().any(|a| a == "--from-copy");
    let positional: Vec<&String> = args.iter().filter(|a| *a != "--from-copy").collect();
    let [id, component] = positional.as_slice() else {
        eprintln!("{}", steward_backup::extract::USAGE);
        return ExitCode::from(2);
    };
    let backups = match one_shot(from_copy) {
        Ok(b) => b,
        Err(code) => return code,
    };
    // Not `lock()`: the lock is not Send, and this runs as a task of the runtime.
    let mut stdout = std::io::stdout();
    match backups.extract(id, component, &mut stdout).await {
        Ok(c) => {
            eprintln!("steward-backup: {} of backup {id}: {} bytes, checked", c.name, c.raw_size);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("steward-backup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The backups a one-shot command reads (the primary, or the copy), from the environment.
fn one_shot(from_copy: bool) -> Result<Backups, ExitCode> {
    let mut env = Env::from_process();
    let cfg = BackupConfig::read(&mut env);
    // Under host routing, the host's own backups, as its service keeps them.
    let routed = !env.hosts().is_empty();
    let host = env.host();
    if let Err(e) = env.finish() {
        eprintln!("steward-backup: {e}");
        return Err(ExitCode::from(2));
    }
    let cfg = match (routed, host) {
        (false, _) => cfg,
        (true, Some(host)) => cfg.for_host(&host),
        (true, None) => {
            eprintln!("steward-backup: STEWARD_HOSTS routes by host: name this host's with STEWARD_HOST (its backups are under their own prefix)");
            return Err(ExitCode::from(2));
        }
    };
    let store = Store::lazy(&cfg.s3);
    let backups = Backups::new(steward_engine::Engine::from_env(), store, cfg);
    if from_copy {
        match backups.from_copy() {
            Some(copy) => Ok(copy),
            None => {
                eprintln!("steward-backup: --from-copy, but no copy is configured (STEWARD_BACKUP_COPY_*)");
                Err(ExitCode::from(2))
            }
        }
    } else {
        Ok(backups)
    }
}

/// `steward-backup gc [--from-copy]`: exit 0 when the collection ran (or was safely skipped,
/// said on stderr), 2 for bad usage or settings, 1 when the bucket could not be read.
async fn gc(args: &[String]) -> ExitCode {
    let from_copy = args.iter().any(|a| a == "--from-copy");
    if args.iter().any(|a| a != "--from-copy") {
        eprintln!("usage: steward-backup gc [--from-copy]");
        return ExitCode::from(2);
    }
    let backups = match one_shot(from_copy) {
        Ok(b) => b,
        Err(code) => return code,
    };
    match backups.collect_chunks().await {
        Ok(c) => {
            match c.skipped {
                Some(why) => eprintln!("steward-backup: nothing deleted: {why}"),
                None => eprintln!("steward-backup: {} chunks kept, {} deleted", c.kept, c.deleted),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("steward-backup: {e}");
            ExitCode::FAILURE
        }
    }
}
