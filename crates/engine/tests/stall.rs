//! A hung engine, through a proxy in front of the real one (the shared engine itself is never
//! stopped): every call fails within its deadline with a timeout naming it, and the same
//! handle works again once the engine answers. Calls that are legitimately long (a stop with
//! its grace period, a helper's run, an upload from a slow source) are not cut short.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use steward_engine::{Engine, EngineError};
use steward_testkit::docker::{docker, push_app, registry, Container, ImageTag};
use steward_testkit::stall::StallProxy;
use steward_testkit::unique_name;

const DEADLINE: Duration = Duration::from_secs(2);
/// Scheduling slack on a 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// `call` fails with a timeout naming `what` after `limit` (and not much later).
async fn times_out<T: Debug>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Duration {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    match &result {
        Err(e @ EngineError::Timeout { what: named, after, .. }) => {
            assert_eq!(named, what, "{e}");
            assert_eq!(*after, limit, "{e}");
            assert!(e.to_string().contains(what), "{e}");
            assert!(e.is_timeout());
        }
        other => panic!("{what}: expected a timeout, got {other:?}"),
    }
    assert!(took >= limit - Duration::from_millis(100), "{what} gave up early: {took:?}");
    assert!(took < limit + MARGIN, "{what} took {took:?}, limit {limit:?}");
    took
}

fn app(name: &str) -> Container {
    Container::run(name, &["--stop-timeout", "1", "steward-test/app:v1"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engine_times_out_every_call_by_name_and_the_handle_recovers() {
    let name = unique_name("stall");
    let _c = app(&name);
    let image = format!("{}/{}:v1", registry(), unique_name("stall-pull"));
    let _tag = ImageTag(image.clone());
    let digest = push_app("v1", &image);
    let pulled_image = steward_imageref::ImageRef::parse(&image).expect("test image reference");
    let repository = pulled_image.familiar_name();
    let proxy = StallProxy::docker();
    let engine = Engine::new(proxy.docker_host(), DEADLINE);
    assert_eq!(engine.is_running(&name).await.expect("through the proxy"), Some(true));

    proxy.stall();
    let mut took = vec![];
    took.push(times_out("list containers", DEADLINE, engine.containers(|_| true)).await);
    let inspect = format!("inspect {name}");
    took.push(times_out(&inspect, DEADLINE, engine.container_id(&name)).await);
    took.push(times_out(&inspect, DEADLINE, engine.health_view(&name)).await);
    // A stop has its grace period on top of the deadline.
    let stop = format!("stop {name}");
    took.push(times_out(&stop, DEADLINE + Duration::from_secs(1), engine.stop(&name, 1)).await);
    took.push(times_out(&format!("start {name}"), DEADLINE, engine.start(&name)).await);
    let exec = format!("exec in {name}");
    took.push(times_out(&exec, DEADLINE, engine.exec(&name, vec!["true".into()], 5)).await);
    let pull = format!("pull {repository}@{digest}");
    let pulled = engine.pull_digest(&pulled_image, &digest, "stalled");
    took.push(times_out(&pull, DEADLINE, pulled).await);
    let logs = format!("read logs of {name}");
    took.push(times_out(&logs, DEADLINE, engine.logs_tail(&name, 5)).await);
    let read = async {
        let mut tar = engine.download_path(&name, "/run.sh");
        let error = tar.next().await.expect("an item").expect_err("no answer");
        Err::<(), _>(*error.into_inner().expect("inner").downcast::<EngineError>().expect("ours"))
    };
    took.push(times_out(&format!("read /run.sh of {name}"), DEADLINE, read).await);
    assert!(proxy.frozen() >= took.len(), "every call reached the engine's socket");
    eprintln!("stalled calls failed after {took:?}");

    proxy.resume();
    // The same handle: no connection of the stalled calls is reused.
    assert_eq!(engine.is_running(&name).await.expect("after resume"), Some(true));
    assert!(engine.containers(|_| true).await.expect("list").iter().any(|c| c.name == name));
    let out = engine.exec(&name, vec!["echo".into(), "back".into()], 5).await.expect("exec");
    assert_eq!((out.exit_code, out.tail), (0, vec!["back".to_owned()]));
    engine.stop(&name, 1).await.expect("stop");
    assert_eq!(engine.is_running(&name).await.expect("inspect"), Some(false));
    engine.start(&name).await.expect("start");
    engine.pull_digest(&pulled_image, &digest, "v1").await.expect("pull");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_are_bounded_by_progress_not_by_the_deadline() {
    let name = unique_name("stall-long");
    // PID 1 ignores SIGTERM: the stop takes its whole grace period, longer than the deadline.
    let _c =
        Container::run(&name, &["steward-test/busybox", "sh", "-c", "mkdir -p /in; sleep 600"]);
    let engine = Engine::new(steward_engine::docker_host(), DEADLINE);
    // The container's own `mkdir` may not have run yet on a loaded machine (CI failed so).
    docker(&["exec", &name, "mkdir", "-p", "/in"]);

    // An upload from a source slower than the deadline between chunks.
    let tar = {
        let mut builder = Vec::new();
        let mut header = [0u8; 512];
        header[..5].copy_from_slice(b"slow\0");
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(b"00000000005\0");
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        builder.extend_from_slice(&header);
        let mut data = [0u8; 512];
        data[..5].copy_from_slice(b"hello");
        builder.extend_from_slice(&data);
        builder.extend_from_slice(&[0u8; 1024]);
        builder
    };
    let chunks: Vec<std::io::Result<Bytes>> =
        tar.chunks(512).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let slow = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(DEADLINE + Duration::from_secs(1)).await;
        c
    });
    let started = Instant::now();
    engine.upload_tar(&name, "/in", slow).await.expect("a slow source is not a hung engine");
    assert!(started.elapsed() > DEADLINE * 4);
    assert_eq!(docker(&["exec", &name, "cat", "/in/slow"]), "hello");

    // A helper that runs longer than the deadline.
    let started = Instant::now();
    let out = engine
        .run_with_volumes_of(
            &name,
            "steward-test/busybox",
            vec!["sh".into(), "-c".into()],
            vec!["sleep 4; echo done".into()],
            5,
        )
        .await
        .expect("helper");
    assert_eq!((out.exit_code, out.tail), (0, vec!["done".to_owned()]));
    assert!(started.elapsed() > Duration::from_secs(4));

    // A stop whose grace period is longer than the deadline.
    let started = Instant::now();
    engine.stop(&name, 4).await.expect("stop within its grace period");
    assert!(started.elapsed() >= Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(engine.is_running(&name).await.expect("inspect"), Some(false));
}

/// A connection that breaks mid-call (dockerd or the socket proxy restarting) and an engine
/// whose socket is gone are "unreachable", which callers try again; a call the engine refuses
/// is an operation that failed, which they report. (Before, both of the first were reported as
/// failed operations, and the updater's write-back pinged the engine to tell them apart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_or_a_missing_socket_is_unreachable_and_a_refusal_is_not() {
    let name = unique_name("away");
    let _c = app(&name);
    let proxy = StallProxy::docker();
    let engine = Engine::new(proxy.docker_host(), Duration::from_secs(20));

    let refused = engine.stop(&unique_name("no-such"), 1).await;
    assert!(matches!(refused, Err(EngineError::Operation { .. })), "{refused:?}");

    let exec = {
        let engine = engine.clone();
        let name = name.clone();
        tokio::spawn(async move { engine.exec(&name, vec!["sleep".into(), "5".into()], 5).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(proxy);
    let broken = exec.await.expect("exec task");
    assert!(matches!(broken, Err(EngineError::Unreachable { .. })), "{broken:?}");
    let msg = broken.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains(&format!("exec in {name}")) || msg.contains(&name), "{msg}");

    let gone = engine.stop(&name, 1).await;
    assert!(matches!(gone, Err(EngineError::Unreachable { .. })), "{gone:?}");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &name]), "true");
}
