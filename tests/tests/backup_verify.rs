//! Verification on a schedule and the heartbeat, with the real backup service: a backup is
//! read back and checked right after it is taken (`backup.verified` in its flow, a signed mark,
//! `verified: yes` in the list), the newest backup is verified fully on
//! `STEWARD_BACKUP_VERIFY_SCHEDULE` (its dump loaded into a scratch PostgreSQL), and the
//! heartbeat URL (a local HTTP server standing for the off-host monitor, given as a `_FILE`
//! secret) is pinged after each verified backup, and not after a verification that failed
//! (an object of the backup replaced in the bucket).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use steward_events::{Event, EventData};
use steward_system_tests::apps::backed_up_pair;
use steward_system_tests::{steward_with, Proc, TestBucket};
use steward_testkit::{stored_events, unique_name, TestBus};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The monitor: records the request line of every ping, answers 200.
async fn monitor() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let pings = Arc::new(Mutex::new(vec![]));
    let seen = pings.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned();
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(head);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (port, pings)
}

/// Events of the namespace until `wanted` finds one, within `bound`.
async fn wait_for<T>(
    bus: &steward_bus::Bus,
    bound: Duration,
    what: &str,
    logs: &dyn Fn() -> String,
    wanted: impl Fn(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = stored_events(bus).await.iter().find_map(&wanted) {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what}: {}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_are_verified_after_they_are_taken_and_on_schedule_and_the_monitor_hears_of_it() {
    let bus = TestBus::new("bkverify").await;
    let bucket = TestBucket::new("verify").await;
    let scope = unique_name("bkverify");
    let (_db, _app) = backed_up_pair(&scope);
    let (port, pings) = monitor().await;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let url_file = std::env::temp_dir().join(unique_name("steward-heartbeat"));
    std::fs::write(&url_file, format!("http://127.0.0.1:{port}/ping/{secret}\n")).expect("write");
    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    env.push(("STEWARD_BACKUP_HEARTBEAT_URL_FILE", url_file.to_string_lossy().into_owned()));
    // Every 2 seconds here (weekly by default).
    env.push(("STEWARD_BACKUP_VERIFY_SCHEDULE", "*/2 * * * * *".into()));
    let backup = Proc::service("steward-backup", &bus, &env);
    let logs = || backup.logs();
    let pinged = || pings.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // No backup yet: the scheduled verification fails, and the monitor hears nothing.
    wait_for(&bus, Duration::from_secs(20), "verify.failed", &logs, |e| match &e.data {
        EventData::VerifyFailed(f) => Some(f.clone()),
        _ => None,
    })
    .await;
    assert!(pinged().is_empty(), "pinged without a verified backup: {:?}", pinged());

    // A backup: checked right after it is taken, in its own flow; the monitor pinged.
    let out = steward_with(&bus, &env, &["backup", "now"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = said.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let done = wait_for(&bus, Duration::from_secs(5), "backup.done", &logs, |e| match &e.data {
        EventData::BackupDone(d) if d.backup_id == id => Some(e.clone()),
        _ => None,
    })
    .await;
    let checked = wait_for(&bus, Duration::from_secs(30), "the check", &logs, |e| match &e.data {
        EventData::BackupVerified(v) if e.correlation_id == done.correlation_id => Some(v.clone()),
        _ => None,
    })
    .await;
    assert_eq!((checked.backup_id.as_str(), checked.database_restored), (id.as_str(), false));
    // The database, the path, the containers and the stream.
    assert_eq!(checked.components_checked, 4, "{checked:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinged().is_empty() {
        assert!(Instant::now() < deadline, "the monitor was not pinged: {}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pinged()[0], format!("GET /ping/{secret} HTTP/1.1"));
    assert!(!logs().contains(&secret), "the heartbeat URL was logged: {}", logs());
    let listed = steward_with(&bus, &env, &["backup", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.lines().any(|l| l.starts_with(&id) && l.contains("yes")), "{table}");

    // The schedule: the newest backup verified fully, its dump loaded; pinged again.
    let scheduled =
        wait_for(&bus, Duration::from_secs(40), "a scheduled verification", &logs, |e| {
            match &e.data {
                EventData::BackupVerified(v) if v.backup_id == id && v.database_restored => {
                    Some(e.clone())
                }
                _ => None,
            }
        })
        .await;
    assert_ne!(scheduled.correlation_id, done.correlation_id, "a flow of its own");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinged().len() < 2 {
        assert!(Instant::now() < deadline, "not pinged after the verification: {}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The app's archive replaced in the bucket: the next scheduled verification fails (the
    // archives are checked before a scratch server is started), and the monitor hears nothing.
    let store = bucket.store().await;
    let objects = store.list_objects(&id).await.unwrap_or_else(|e| panic!("list: {e}"));
    let archive = objects.iter().find(|o| o.contains("/path-")).expect("the archive's object");
    store.put(archive, Bytes::from_static(b"not the archive")).await.expect("replace");
    let failed =
        wait_for(&bus, Duration::from_secs(20), "verify.failed", &logs, |e| match &e.data {
            EventData::VerifyFailed(f) if f.reason.contains(":/data") => Some(f.clone()),
            _ => None,
        })
        .await;
    assert_eq!(failed.backup_id, "latest", "{failed:?}");
    // A scheduled verification may have passed between the second ping and the replacement
    // (one every 2 s): every ping is a passed verification's, none a failed one's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let passed = stored_events(&bus)
        .await
        .iter()
        .filter(|e| matches!(e.data, EventData::BackupVerified(_)))
        .count();
    assert!(passed >= 2, "{passed} verifications passed");
    assert_eq!(pinged().len(), passed, "pinged after a failed verification: {:?}", pinged());

    let _ = std::fs::remove_file(&url_file);
    drop(backup);
    bucket.destroy().await;
}
