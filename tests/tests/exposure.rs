//! What the compose stack exposes (issue 17, item 7): Grafana only on loopback unless the
//! operator says otherwise, and nginx's approval paths (the updater's, the deployer's) behind
//! HSTS and out of the access log (their URLs carry approval tokens). Checked on the files
//! operators deploy; the deployer's location also run by a real nginx (the test bed's image)
//! with a stand-in deployer, as it is optional in the stack.

use std::path::{Path, PathBuf};

fn compose(path: &str) -> String {
    let file: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The lines of the block that `opening` starts (up to its matching `}`), comments dropped.
fn block(text: &str, opening: &str) -> Vec<String> {
    let start = text.find(opening).unwrap_or_else(|| panic!("no {opening:?}"));
    let mut depth = 0;
    let mut out = vec![];
    for line in text[start..].lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        depth += line.matches('{').count();
        depth -= line.matches('}').count();
        out.push(line.to_owned());
        if depth == 0 && line.contains('}') {
            break;
        }
    }
    out
}

/// The `server { ... }` block that contains `marker`.
fn server_with(text: &str, marker: &str) -> Vec<String> {
    text.match_indices("server {")
        .map(|(i, opening)| block(&text[i..], opening))
        .find(|b| b.iter().any(|l| l == marker))
        .unwrap_or_else(|| panic!("no server with {marker:?}"))
}

fn has(lines: &[String], directive: &str) -> bool {
    lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == directive)
}

const HSTS: &str = r#"add_header Strict-Transport-Security "max-age=31536000" always;"#;

#[test]
fn grafana_is_published_on_loopback_by_default() {
    let file = compose("docker-compose.yml");
    let grafana = file.split("\n  grafana:\n").nth(1).expect("grafana service");
    // Up to the next service (or top-level key): the next line indented by two or less.
    let ports: Vec<&str> = grafana
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("   "))
        .map(str::trim)
        .filter(|l| l.starts_with("- \"") && l.ends_with(":3000\""))
        .collect();
    assert_eq!(ports, [r#"- "${GRAFANA_ADDR:-127.0.0.1}:${GRAFANA_PORT:-3001}:3000""#]);
    let example = compose(".env.example");
    assert!(example.lines().any(|l| l == "GRAFANA_ADDR=127.0.0.1"), "documented in .env.example");
}

#[test]
fn the_approval_path_is_not_logged_and_https_is_strict() {
    let conf = compose("nginx/templates/gitea.conf.template");
    let tls = server_with(&conf, "listen 443 ssl;");
    assert!(has(&tls, HSTS), "HSTS on the TLS server: {tls:#?}");
    let approve = block(&conf, "location /steward/approve/ {");
    for directive in [
        "access_log off;",
        // A location with add_header of its own does not inherit the server's.
        HSTS,
        r#"add_header Referrer-Policy "no-referrer" always;"#,
    ] {
        assert!(has(&approve, directive), "{directive} missing in {approve:#?}");
    }
    assert!(
        approve.iter().any(|l| l.starts_with("error_log ") && l.ends_with(" crit;")),
        "errors of the approval path (which quote the request line) only from crit: {approve:#?}"
    );
    // The port-80 server only redirects: no approval page in clear text.
    let plain = server_with(&conf, "listen 80;");
    assert!(!plain.iter().any(|l| l.contains("updater")), "{plain:#?}");
    // A link pasted as http:// is redirected there, its token out of the access log.
    assert!(
        plain.iter().any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")
            == "location /steward/ { access_log off; return 301 https://$host$request_uri; }"),
        "the port-80 server logs approval tokens before redirecting: {plain:#?}"
    );
}

#[test]
fn the_deployment_approval_path_is_not_logged_and_only_it_reaches_the_deployer() {
    let conf = compose("nginx/templates/gitea.conf.template");
    let deploy = block(&conf, "location /steward/deploy/approve/ {");
    for directive in [
        "access_log off;",
        HSTS,
        r#"add_header Referrer-Policy "no-referrer" always;"#,
        r#"add_header Cache-Control "no-store" always;"#,
        "proxy_pass $deployer;",
    ] {
        assert!(has(&deploy, directive), "{directive} missing in {deploy:#?}");
    }
    assert!(deploy.iter().any(|l| l.starts_with("error_log ") && l.ends_with(" crit;")));
    // Nothing else of the deployer (its webhook is Gitea's to call on the stack's network).
    let mentions: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim().starts_with('#'))
        .filter(|l| l.contains("//deployer"))
        .collect();
    assert_eq!(mentions.len(), 1, "the deployer outside its page: {mentions:#?}");
    let plain = server_with(&conf, "listen 80;");
    assert!(!plain.iter().any(|l| l.contains("deployer")), "{plain:#?}");
    // The resolver's variable: `compose_config.rs`.
}

/// The template's deployment location run by a real nginx (the test bed's Debian nginx) on a
/// network of the test's, the engine's DNS as its resolver: it starts with no deployer (the
/// service is optional) and answers 502; once a stand-in `deployer` is there, the page goes
/// to it as `/deploy/approve/...`, with the no-referrer and no-store headers, and its token
/// is in no access log line while another request is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_the_deployment_page_from_an_optional_deployer_without_logging_it() {
    use steward_testkit::docker::{docker, Container, Network};
    use steward_testkit::{free_port, unique_name, wait_for};

    let conf = compose("nginx/templates/gitea.conf.template");
    let location = block(&conf, "location /steward/deploy/approve/ {")
        .join("\n")
        .replace("${NGINX_LOCAL_RESOLVERS}", "127.0.0.11");
    let dir = std::env::temp_dir().join(unique_name("nginx-deploy"));
    let (front_dir, deployer_dir) = (dir.join("front"), dir.join("deployer"));
    for d in [&front_dir, &deployer_dir] {
        std::fs::create_dir_all(d).expect("conf dir");
    }
    std::fs::write(
        front_dir.join("front.conf"),
        format!(
            "server {{\n listen 8080;\n access_log /var/log/nginx/front.log;\n{location}\n \
             location / {{ return 200 \"gitea $request_uri\"; }}\n}}\n"
        ),
    )
    .expect("front conf");
    std::fs::write(
        deployer_dir.join("deployer.conf"),
        "server { listen 9100; location / { return 200 \"deployer $request_uri\"; } }\n",
    )
    .expect("deployer conf");
    let network = Network::create("nginx-deploy");
    let port = free_port();
    let front = Container::run(
        &unique_name("nginx-front"),
        &[
            "--network",
            &network.0,
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            "-v",
            &format!("{}:/etc/nginx/conf.d:ro", front_dir.display()),
            "steward-test/nginx:latest",
        ],
    );
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let (client, url) = (client.clone(), format!("http://127.0.0.1:{port}{path}"));
        async move {
            let r = client.get(url).send().await.ok()?;
            let headers = r.headers().clone();
            Some((r.status().as_u16(), headers, r.text().await.unwrap_or_default()))
        }
    };
    let mut up = None;
    for _ in 0..100 {
        up = get("/up").await;
        if up.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _, body) =
        up.unwrap_or_else(|| panic!("nginx did not start: {}", docker(&["logs", &front.name])));
    assert_eq!((status, body.as_str()), (200, "gitea /up"));
    // No deployer on the network: the page is a 502, nginx runs on.
    let (status, _, _) = get("/steward/deploy/approve/n0-d3pl0yer").await.expect("answer");
    assert_eq!(status, 502);

    let _deployer = Container::run(
        &unique_name("nginx-deployer"),
        &[
            "--network",
            &network.0,
            "--network-alias",
            "deployer",
            "-v",
            &format!("{}:/etc/nginx/conf.d:ro", deployer_dir.display()),
            "steward-test/nginx:latest",
        ],
    );
    let mut answer = None;
    for _ in 0..150 {
        match get("/steward/deploy/approve/d3pl0y-t0ken?x=1").await {
            Some(a) if a.0 == 200 => {
                answer = Some(a);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let (_, headers, body) = answer.expect("the page never reached the deployer");
    assert_eq!(body, "deployer /deploy/approve/d3pl0y-t0ken?x=1");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(header("strict-transport-security").as_deref(), Some("max-age=31536000"));
    // Only that path: the deployer's webhook and anything else are the default's.
    for other in ["/steward/deploy/webhook", "/steward/deploy/approveX"] {
        let (_, _, body) = get(other).await.expect("answer");
        assert_eq!(body, format!("gitea {other}"));
    }
    get("/after").await.expect("answer");
    let log = wait_for("the access log", std::time::Duration::from_secs(5), || {
        let log = docker(&["exec", &front.name, "cat", "/var/log/nginx/front.log"]);
        log.contains("GET /after").then_some(log)
    });
    for token in ["d3pl0y-t0ken", "n0-d3pl0yer"] {
        assert!(!log.contains(token), "{token} logged: {log}");
    }
    let errors = docker(&["logs", &front.name]);
    assert!(!errors.contains("n0-d3pl0yer"), "the token in the error log: {errors}");
    drop(front);
    let _ = std::fs::remove_dir_all(&dir);
}
