//! The operator's registry login as `docker login` writes it: none is no credentials, a login
//! for the registry is used, and a login that exists but cannot be read is an error naming
//! the file, not a silent anonymous pull (an unreadable `config.json`, mode 0600 for another
//! user, made a private registry refuse the updater's pulls with no word of why).
//!
//! One test function: `DOCKER_CONFIG` is the process's environment.

use steward_engine::{registry_credentials, RegistryCredentials};
use steward_imageref::ImageRef;

#[test]
fn a_login_is_used_none_is_none_and_an_unreadable_one_is_an_error_naming_the_file() {
    let image = ImageRef::parse("registry.example.test:5000/team/app:1.0").expect("reference");
    let dir = std::env::temp_dir().join(steward_testkit::unique_name("docker-config"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::env::set_var("DOCKER_CONFIG", &dir);
    let config = dir.join("config.json");

    // No configuration at all.
    assert_eq!(registry_credentials(&image), Ok(None));

    // A login for another registry only.
    std::fs::write(&config, r#"{"auths":{"other.example.test":{"auth":"dTpw"}}}"#).expect("write");
    assert_eq!(registry_credentials(&image), Ok(None));

    // A login for this one (`u:p`).
    std::fs::write(&config, r#"{"auths":{"registry.example.test:5000":{"auth":"dTpw"}}}"#)
        .expect("write");
    assert_eq!(
        registry_credentials(&image),
        Ok(Some(RegistryCredentials::Basic("u".into(), "p".into())))
    );

    // A configuration that cannot be read (a directory stands for a file this user may not
    // read: the tests run as root, who reads any file) and one that is not JSON.
    std::fs::remove_file(&config).expect("remove");
    std::fs::create_dir(&config).expect("dir as config.json");
    let e = registry_credentials(&image).expect_err("an unreadable login is an error");
    assert!(e.to_string().contains(&format!("{}", config.display())), "{e}");
    assert_eq!(e.key, "registry.example.test:5000");
    std::fs::remove_dir(&config).expect("remove");
    std::fs::write(&config, "{not json").expect("write");
    let e = registry_credentials(&image).expect_err("a malformed login is an error");
    assert!(e.to_string().contains("cannot read the registry login"), "{e}");

    std::fs::remove_dir_all(&dir).expect("clean up");
}
