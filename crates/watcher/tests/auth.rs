//! A registry with basic auth (the test bed's htpasswd registry): credentials come from the
//! operator's Docker `config.json` (`DOCKER_CONFIG`), as `docker login` wrote them.
//! Its own test binary: `DOCKER_CONFIG` is process-wide.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use steward_testkit::docker::{docker, Container, ImageTag, LoggedIn};
use steward_testkit::{unique_name, TestBus};
use steward_watcher::check::Checker;
use steward_watcher::registry::{Registries, RegistryConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_docker_config_open_a_basic_auth_registry() {
    let login = LoggedIn::auth_registry();
    let (registry, config) = (login.registry.clone(), login.config.clone());

    let image = format!("{registry}/{}:1.0", unique_name("steward-test/auth"));
    let _tag = ImageTag(image.clone());
    docker(&["tag", "steward-test/app:v1", &image]);
    docker(&["--config", &config, "push", &image]);
    let scope = unique_name("scope");
    let scope_label = format!("steward.scope={scope}");
    let name = unique_name("auth");
    let _c =
        Container::run(&name, &["--label", "steward.enable=true", "--label", &scope_label, &image]);
    docker(&["tag", "steward-test/app:v2", &image]);
    docker(&["--config", &config, "push", &image]);

    let bus = TestBus::new("auth").await;
    let checker = |bus: &TestBus| {
        let bus = bus.bus.clone();
        let scope = scope.clone();
        async move {
            Checker {
                records: Checker::records(&bus).await.expect("records"),
                bus,
                engine: steward_engine::Engine::from_env(),
                registries: Arc::new(
                    Registries::new(RegistryConfig {
                        timeout: Duration::from_secs(5),
                        max_wait: Duration::from_secs(5),
                        insecure: vec![],
                    })
                    .expect("registries"),
                ),
                concurrency: 4,
                outcomes: Family::default(),
                source: "test".into(),
                scope: Some(scope),
            }
        }
    };

    // Without credentials the registry refuses, and the check says so.
    std::env::set_var("DOCKER_CONFIG", std::env::temp_dir().join(unique_name("empty-config")));
    let summary = checker(&bus).await.run(None, None).await.expect("check");
    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    assert!(
        summary.failed[0].1.contains("refused authentication")
            || summary.failed[0].1.contains("401"),
        "{summary:?}"
    );

    // With the operator's docker login, it sees the newer image.
    std::env::set_var("DOCKER_CONFIG", &config);
    let summary = checker(&bus).await.run(None, None).await.expect("check");
    assert_eq!(summary.updated, std::slice::from_ref(&name), "{summary:?}");
}
