//! What the compose stack exposes (issue 17, item 7): Grafana only on loopback unless the
//! operator says otherwise, and nginx's approval path behind HSTS and out of the access log
//! (its URLs carry approval tokens). Checked on the files operators deploy; the compose
//! end-to-end test runs a stand-in without nginx.

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
}
