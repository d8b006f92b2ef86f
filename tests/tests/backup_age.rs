//! Issue 26, "silence is not an alarm": when no complete backup is newer than
//! `STEWARD_BACKUP_MAX_AGE`, the real backup service says `backup.stale` once per newest
//! backup (once when there is none), and the notifier mails it as critical.

use std::time::{Duration, Instant};

use steward_events::{BackupReason, BackupRequested, Event, EventData};
use steward_system_tests::apps::{backed_up_pair, wait_event};
use steward_system_tests::mail::{
    testbed_maildir, testbed_notifier_env, unique_address, wait_mails,
};
use steward_system_tests::{Proc, TestBucket};
use steward_testkit::{stored_events, unique_name, TestBus};

async fn stale(bus: &steward_bus::Bus) -> Vec<steward_events::BackupStale> {
    stored_events(bus)
        .await
        .into_iter()
        .filter_map(|e| match e.data {
            EventData::BackupStale(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_backups_are_said_once_per_newest_backup_and_mailed_as_critical() {
    let bus = TestBus::new("backupage").await;
    let bucket = TestBucket::new("age").await;
    let scope = unique_name("backupage");
    let to = unique_address("backupage");
    let (_db, _app) = backed_up_pair(&scope);
    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    env.push(("STEWARD_BACKUP_MAX_AGE", "3s".into()));
    let _backup = Proc::service("steward-backup", &bus, &env);
    let _notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));

    // No backup at all, three seconds after the start: said once.
    wait_event(&bus, "backup.stale", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let said = stale(&bus).await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!((said[0].newest.as_deref(), said[0].max_age_secs), (None, 3));
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(20));
    assert!(mails[0].subject.contains("CRITICAL"), "{}", mails[0].subject);

    // A backup: fresh, then stale again three seconds later, once, naming it.
    let request = Event::new(
        "steward/test",
        BackupRequested { reason: BackupReason::Manual, containers: vec![], requested_by: None },
    );
    bus.publish(&request).await.expect("publish");
    let all = wait_event(&bus, "backup.done", Duration::from_secs(120)).await;
    let id = all
        .iter()
        .find_map(|e| match &e.data {
            EventData::BackupDone(d) => Some(d.backup_id.clone()),
            _ => None,
        })
        .expect("done");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stale(&bus).await.len() < 2 {
        assert!(Instant::now() < deadline, "not said again: {:?}", stale(&bus).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let said = stale(&bus).await;
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[1].newest.as_deref(), Some(id.as_str()));
    bucket.destroy().await;
}
