use super::*;

const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn parsed(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// input, registry, repository, tag, has digest [`D`], familiar name.
type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, &'a str);

#[test]
fn references_read_as_docker_reads_them() {
    let table: &[Case] = &[
        // Docker Hub: short names get `library/`, `index.docker.io` is `docker.io`.
        ("nginx", "docker.io", "library/nginx", Some("latest"), false, "nginx"),
        ("nginx:1.27", "docker.io", "library/nginx", Some("1.27"), false, "nginx"),
        ("docker.io/nginx", "docker.io", "library/nginx", Some("latest"), false, "nginx"),
        (
            "index.docker.io/library/nginx:1",
            "docker.io",
            "library/nginx",
            Some("1"),
            false,
            "nginx",
        ),
        ("gitea/gitea:1.22", "docker.io", "gitea/gitea", Some("1.22"), false, "gitea/gitea"),
        ("docker.io/gitea/gitea", "docker.io", "gitea/gitea", Some("latest"), false, "gitea/gitea"),
        ("library/a/b", "docker.io", "library/a/b", Some("latest"), false, "library/a/b"),
        // The first component is a registry only with a `.` or `:`, or as `localhost`.
        ("foo/bar:5000", "docker.io", "foo/bar", Some("5000"), false, "foo/bar"),
        ("test.com:tag", "docker.io", "library/test.com", Some("tag"), false, "test.com"),
        ("foo:5000/bar", "foo:5000", "bar", Some("latest"), false, "foo:5000/bar"),
        ("ghcr.io/org/app:1", "ghcr.io", "org/app", Some("1"), false, "ghcr.io/org/app"),
        (
            "docker.gitea.com/gitea:1.23",
            "docker.gitea.com",
            "gitea",
            Some("1.23"),
            false,
            "docker.gitea.com/gitea",
        ),
        ("localhost/app", "localhost", "app", Some("latest"), false, "localhost/app"),
        ("localhost:5000/x", "localhost:5000", "x", Some("latest"), false, "localhost:5000/x"),
        ("127.0.0.1:5000/x:tag", "127.0.0.1:5000", "x", Some("tag"), false, "127.0.0.1:5000/x"),
        (
            "127.0.0.1:5000/demo/app:1.0",
            "127.0.0.1:5000",
            "demo/app",
            Some("1.0"),
            false,
            "127.0.0.1:5000/demo/app",
        ),
        (
            "127.0.0.1:5000/app",
            "127.0.0.1:5000",
            "app",
            Some("latest"),
            false,
            "127.0.0.1:5000/app",
        ),
        (
            "sub-dom.example.com/a/b/c:v_1-2.3",
            "sub-dom.example.com",
            "a/b/c",
            Some("v_1-2.3"),
            false,
            "sub-dom.example.com/a/b/c",
        ),
        (
            "gitea/gitea:1.22-rootless",
            "docker.io",
            "gitea/gitea",
            Some("1.22-rootless"),
            false,
            "gitea/gitea",
        ),
        ("lower:Upper", "docker.io", "library/lower", Some("Upper"), false, "lower"),
        // Digests: by digest only there is no tag; with both, both are kept.
        (&format!("host.example/x@{D}"), "host.example", "x", None, true, "host.example/x"),
        (&format!("x:tag@{D}"), "docker.io", "library/x", Some("tag"), true, "x"),
        (
            &format!("127.0.0.1:5000/app:1.0@{D}"),
            "127.0.0.1:5000",
            "app",
            Some("1.0"),
            true,
            "127.0.0.1:5000/app",
        ),
    ];
    for (input, registry, repository, tag, digest, familiar) in table {
        let r = parsed(input);
        assert_eq!(r.registry(), *registry, "{input}");
        assert_eq!(r.repository(), *repository, "{input}");
        assert_eq!(r.tag(), *tag, "{input}");
        assert_eq!(r.digest(), digest.then_some(D), "{input}");
        assert_eq!(r.is_pinned(), *digest, "{input}");
        assert_eq!(r.familiar_name(), *familiar, "{input}");
        assert_eq!(r.name(), format!("{registry}/{repository}"), "{input}");
        // The familiar name is the same repository to Docker, and the display parses back.
        assert!(parsed(familiar).same_repository(&r), "{input}");
        assert_eq!(parsed(&r.to_string()), r, "{input}");
    }
    assert_eq!(parsed("nginx").to_string(), "docker.io/library/nginx:latest");
}

#[test]
fn credentials_are_keyed_as_docker_login_stores_them() {
    for hub in ["nginx", "gitea/gitea:1", "docker.io/gitea/gitea", "index.docker.io/library/nginx"]
    {
        assert_eq!(parsed(hub).credential_key(), "https://index.docker.io/v1/", "{hub}");
        assert!(parsed(hub).is_docker_hub(), "{hub}");
    }
    for (image, key) in [
        ("ghcr.io/org/app:1", "ghcr.io"),
        ("127.0.0.1:5001/private/app:v1", "127.0.0.1:5001"),
        ("localhost/app", "localhost"),
        ("registry-1.docker.io/x/y", "registry-1.docker.io"),
    ] {
        assert_eq!(parsed(image).credential_key(), key, "{image}");
    }
}

/// What the replaced hand parsers answered (engine `registry_of`, updater `split_reference`,
/// backup `is_gitea`'s repository and tag), answered by the one type.
#[test]
fn old_hand_parsers_answers_are_kept() {
    // engine::credentials::registry_of
    for (image, registry) in [
        ("nginx:1.27", "docker.io"),
        ("gitea/gitea:1.22", "docker.io"),
        ("ghcr.io/org/app:1", "ghcr.io"),
        ("127.0.0.1:5000/demo/app:1.0", "127.0.0.1:5000"),
        ("localhost/app", "localhost"),
    ] {
        assert_eq!(parsed(image).registry(), registry, "{image}");
    }
    // updater::flow::apply::split_reference: the tag, not the port; `latest` by default.
    for (image, repo, tag) in [
        ("127.0.0.1:5000/app:1.0", "127.0.0.1:5000/app", "1.0"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app", "latest"),
        ("gitea/gitea:1.22.6", "gitea/gitea", "1.22.6"),
        ("nginx", "nginx", "latest"),
    ] {
        let r = parsed(image);
        assert_eq!((r.familiar_name().as_str(), r.tag()), (repo, Some(tag)), "{image}");
    }
}

#[test]
fn a_tag_is_replaced_and_checked() {
    let r = parsed(&format!("127.0.0.1:5000/app:1.0@{D}"));
    let newer = r.with_tag("1.1").expect("valid tag");
    assert_eq!(newer.to_string(), "127.0.0.1:5000/app:1.1");
    assert!(newer.same_repository(&r) && !newer.is_pinned());
    assert_eq!(
        parsed("nginx:1").with_tag("2").expect("tag").to_string(),
        "docker.io/library/nginx:2"
    );
    for bad in ["", "a b", "-x", "x/y", &"t".repeat(129)] {
        assert!(parsed("nginx").with_tag(bad).is_err(), "{bad:?}");
    }
    assert!(!parsed("ghcr.io/a/x").same_repository(&parsed("ghcr.io/b/x")));
    assert!(!parsed("ghcr.io/a/x").same_repository(&parsed("quay.io/a/x")));
}

#[test]
fn hostile_input_is_a_clear_error() {
    let long_name = "a".repeat(300);
    let overlong = "a".repeat(10_000);
    let cases: &[(&str, Reason)] = &[
        ("", Reason::Empty),
        ("ngi nx", Reason::Character(' ')),
        (" nginx", Reason::Character(' ')),
        ("nginx\n", Reason::Character('\n')),
        ("nginx\0", Reason::Character('\0')),
        ("nginx:é", Reason::Character('é')),
        ("nginx;rm -rf /", Reason::Character(';')),
        ("$(id)", Reason::Character('$')),
        ("nginx:", Reason::EmptyPart),
        ("/nginx", Reason::EmptyPart),
        ("nginx/", Reason::EmptyPart),
        ("a//b", Reason::EmptyPart),
        ("nginx@", Reason::EmptyPart),
        (":tag", Reason::EmptyPart),
        ("@sha256:ffff", Reason::EmptyPart),
        ("ghcr.io/", Reason::EmptyPart),
        ("a/../b", Reason::Separators),
        ("a..b", Reason::Separators),
        ("..", Reason::Separators),
        ("ghcr.io/a/b/..", Reason::Separators),
        ("Nginx", Reason::Uppercase),
        ("ghcr.io/Org/app:1", Reason::Uppercase),
        (&long_name, Reason::NameTooLong),
        (&overlong, Reason::TooLong(10_000)),
        ("x@sha256:abc", Reason::Digest),
        (&format!("x@md5:{}", "f".repeat(32)), Reason::Digest),
        ("x:-tag", Reason::Format),
        ("x:tag:more", Reason::Format),
    ];
    for (input, reason) in cases {
        let e = ImageRef::parse(input).expect_err(input);
        assert_eq!(&e.reason, reason, "{input:?}");
        assert!(e.input.chars().count() <= 80, "{input:?}");
        assert!(e.to_string().starts_with("image reference "), "{e}");
    }
    let tag = format!("x:{}", "t".repeat(129));
    assert!(ImageRef::parse(&tag).is_err(), "a tag over 128 characters");
    assert_eq!("nginx".parse::<ImageRef>().expect("parses"), parsed("docker.io/library/nginx"));
}

/// Anything at all, up to the bound and beyond, is an answer, never a panic.
#[test]
fn arbitrary_input_never_panics() {
    let alphabet: Vec<char> = "aZ09._-/:@ \u{e9}\0".chars().collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 24) as usize;
        let s: String = (0..len)
            .map(|i| alphabet[((seed >> (i % 8 * 8)) as usize + i) % alphabet.len()])
            .collect();
        if let Ok(r) = ImageRef::parse(&s) {
            // Whatever parses is normalised and parses back to itself.
            assert_eq!(parsed(&r.to_string()), r, "{s:?}");
        }
    }
}
