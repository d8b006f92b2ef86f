//! S3 Object Lock (issue 25), against moto's S3, which implements it (s3s-fs does not): a
//! bucket created with Object Lock and a default retention, as Terraform provisions it. A
//! locked backup cannot be deleted or overwritten by someone holding the service's own keys,
//! and retention keeps it, whole and listed, until its lock ends, then prunes it.

mod common;

use aws_sdk_s3::types::{
    DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetention,
    ObjectLockRetentionMode, ObjectLockRule,
};
use bytes::Bytes;
use common::{config, s3_config};
use steward_backup::retention::Retention;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::BackupReason;
use steward_store::manifest::{self, MANIFEST};
use steward_store::store::Store;
use steward_testkit::testbed;
use time::{Duration, OffsetDateTime};

/// moto accepts any key; these stand for the backup service's own credentials.
const KEY: &str = "steward-test";
const SECRET: &str = "steward-test-secret";

fn client() -> aws_sdk_s3::Client {
    let endpoint = testbed::require("STEWARD_TEST_MOTO_ENDPOINT");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(KEY, SECRET, None, None, "t"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A bucket with Object Lock on and every new object locked for a day in governance mode.
async fn locked_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    s3.create_bucket()
        .bucket(bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create {bucket}: {e:?}"));
    let rule = ObjectLockRule::builder()
        .default_retention(
            DefaultRetention::builder().mode(ObjectLockRetentionMode::Governance).days(1).build(),
        )
        .build();
    s3.put_object_lock_configuration()
        .bucket(bucket)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(rule)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("lock {bucket}: {e:?}"));
}

/// Removes every version (bypassing governance, as the bucket's owner may) and the bucket.
async fn remove_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    let versions = s3.list_object_versions().bucket(bucket).send().await;
    let versions = versions.map(|v| {
        let mut all: Vec<(String, Option<String>)> = vec![];
        for o in v.versions.unwrap_or_default() {
            all.extend(o.key.map(|k| (k, o.version_id)));
        }
        for m in v.delete_markers.unwrap_or_default() {
            all.extend(m.key.map(|k| (k, m.version_id)));
        }
        all
    });
    for (key, version) in versions.unwrap_or_default() {
        let _ = s3
            .delete_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version)
            .bypass_governance_retention(true)
            .send()
            .await;
    }
    if let Err(e) = s3.delete_bucket().bucket(bucket).send().await {
        eprintln!("could not remove test bucket {bucket}: {e:?}");
    }
}

async fn listed(backups: &Backups) -> Vec<String> {
    let all = backups.list().await.unwrap_or_else(|e| panic!("list: {e}"));
    all.into_iter().filter(|l| l.usable().is_some()).map(|l| l.backup_id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_backup_survives_its_own_keys_and_retention_prunes_it_only_once_unlocked() {
    let s3 = client();
    let bucket = common::bucket_name("objlock");
    locked_bucket(&s3, &bucket).await;
    let cfg = s3_config(&bucket, Some(testbed::require("STEWARD_TEST_MOTO_ENDPOINT")));
    let store = Store::connect_static(&cfg, KEY, SECRET).await;
    let mut config = config(cfg, "unused");
    config.retention = Retention { daily: 1, weekly: 0, monthly: 0 };
    let signing = config.signing.clone();
    let backups = Backups::new(Engine::from_env(), store.clone(), config);
    let now = OffsetDateTime::now_utc();
    let old = common::plant_signed(&store, &signing, now - Duration::days(3)).await;
    let older = common::plant_signed(&store, &signing, now - Duration::days(4)).await;
    let newest = common::plant_signed(&store, &signing, now - Duration::minutes(5)).await;
    let mut all = vec![older.clone(), old.clone(), newest.clone()];
    all.sort();
    assert_eq!(listed(&backups).await, all);

    // Past retention, but locked: kept whole and listed, and the prune does not fail.
    let (pruned, kept) = backups.prune(now).await.unwrap_or_else(|e| panic!("prune: {e}"));
    assert!(pruned.is_empty(), "pruned locked backups: {pruned:?}");
    assert_eq!(kept, 3);
    assert_eq!(listed(&backups).await, all, "a locked backup was hidden");

    // Someone with the service's keys cannot delete the locked manifest's version, and an
    // overwrite is only a newer version: the signed original is still there.
    let key = store.key(&format!("{old}/{MANIFEST}"));
    let original = s3.get_object().bucket(&bucket).key(&key).send().await.expect("get");
    let version = original.version_id.clone().expect("a versioned bucket");
    let body = original.body.collect().await.expect("body").into_bytes();
    let deleted = s3.delete_object().bucket(&bucket).key(&key).version_id(&version).send().await;
    assert!(deleted.is_err(), "a locked version was deleted");
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(Bytes::from_static(b"{\"ransom\": true}").into())
        .send()
        .await
        .expect("an overwrite is a new version");
    let kept_version =
        s3.get_object().bucket(&bucket).key(&key).version_id(&version).send().await.expect("get");
    assert_eq!(kept_version.body.collect().await.expect("body").into_bytes(), body);
    // The overwritten backup no longer verifies as signed: not listed as usable, not pruned.
    assert!(!listed(&backups).await.contains(&old));

    // The older backup's lock ends (its owner shortens a governance lock): the next prune
    // deletes it, and only it.
    let until = OffsetDateTime::now_utc() + Duration::seconds(2);
    let retention = ObjectLockRetention::builder()
        .mode(ObjectLockRetentionMode::Governance)
        .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(until.unix_timestamp()))
        .build();
    s3.put_object_retention()
        .bucket(&bucket)
        .key(store.key(&format!("{older}/{MANIFEST}")))
        .retention(retention)
        .bypass_governance_retention(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("shorten the lock: {e:?}"));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (pruned, _) =
        backups.prune(OffsetDateTime::now_utc()).await.unwrap_or_else(|e| panic!("prune: {e}"));
    assert_eq!(pruned, vec![older.clone()]);
    assert_eq!(listed(&backups).await, vec![newest.clone()]);
    remove_bucket(&s3, &bucket).await;
}

/// A whole backup (a dump, and a path large enough for a multipart upload) is stored into a
/// locked bucket and verifies from it: S3 refuses uploads into such a bucket without
/// Content-MD5, which Steward did not send.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_with_multipart_components_is_stored_and_verified_in_a_locked_bucket() {
    let stack = common::Stack::start("objlock-real", &[]).await;
    stack.fill_db(500);
    stack.fill_data(12, 20);
    let s3 = client();
    let bucket = common::bucket_name("objlock-real");
    locked_bucket(&s3, &bucket).await;
    let cfg = s3_config(&bucket, Some(testbed::require("STEWARD_TEST_MOTO_ENDPOINT")));
    let store = Store::connect_static(&cfg, KEY, SECRET).await;
    let backups = Backups::new(
        Engine::from_env(),
        store,
        steward_backup::config::BackupConfig { s3: cfg, ..stack.backups.config().clone() },
    );
    let id = manifest::new_backup_id(OffsetDateTime::now_utc());
    let m = backups
        .take(&id, BackupReason::Manual, &[])
        .await
        .unwrap_or_else(|e| panic!("backup into a locked bucket: {e}"));
    let path = m.components.iter().find(|c| c.name.ends_with(":/data")).expect("the path");
    let first_part = steward_store::store::FIRST_PART as u64;
    assert!(path.stored_size > first_part, "not multipart: {} bytes", path.stored_size);
    backups.verify(&id).await.unwrap_or_else(|e| panic!("verify: {e}"));
    remove_bucket(&s3, &bucket).await;
    stack.destroy_bucket().await;
}
