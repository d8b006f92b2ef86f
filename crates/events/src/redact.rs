//! Credentials out of everything Steward shows: the one redaction of URLs.
//!
//! A URL in Steward's configuration may carry a secret: a NATS or SMTP URL its user and
//! password (`nats://user:pass@host`), a webhook or S3 endpoint a token in its query. Every
//! error, log line and event that shows such a URL shows it through [`redact_url`] (a value
//! known to be a URL) or [`redact_urls_in`] (any text that may contain one).
//!
//! Redacted: the user information (everything before the last `@` of the URL) becomes `***`,
//! the query and the fragment are dropped. Kept: scheme, host, port and path, which is what an
//! operator needs to tell which setting is wrong. A comma-separated list (NATS accepts one) is
//! redacted URL by URL. Over-redaction is preferred to a leak: a password with an unescaped
//! `@`, `/` or `,` hides more of the URL, never less.

/// What stands for removed credentials.
pub const REDACTED: &str = "***";

/// `url` (one URL or a comma-separated list, with or without a scheme) without its
/// credentials, query and fragment, for errors and logs.
///
/// ```
/// use steward_events::redact_url;
/// assert_eq!(redact_url("nats://steward:s3cr3t@nats:4222"), "nats://***@nats:4222");
/// assert_eq!(redact_url("steward:s3cr3t@nats:4222"), "***@nats:4222");
/// assert_eq!(redact_url("https://ntfy.sh/alerts?auth=tk"), "https://ntfy.sh/alerts");
/// ```
pub fn redact_url(url: &str) -> String {
    if url.contains("://") {
        return redact_urls_in(url);
    }
    // NATS also takes `user:pass@host:port`: read it as if it had a scheme.
    let shown = redact_urls_in(&format!("x://{url}"));
    shown.strip_prefix("x://").map(str::to_owned).unwrap_or(shown)
}

/// `text` with every `scheme://` URL in it redacted as by [`redact_url`]; everything else
/// (e-mail addresses included) unchanged. For messages that may quote a URL: configuration
/// errors, a library's error text.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        let after = &rest[i + 3..];
        // The URL runs to a blank or a quote, and a list's next URL starts a new one.
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(after.len());
        let end = after[..end].find("://").unwrap_or(end);
        let url = &after[..end];
        let host = match url.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push('@');
                &url[at + 1..]
            }
            None => url,
        };
        match host.find(['?', '#']) {
            // The query and fragment run to the end of this URL of a list.
            Some(q) => {
                out.push_str(&host[..q]);
                if let Some(comma) = host[q..].find(',') {
                    out.push_str(&host[q + comma..]);
                }
            }
            None => out.push_str(host),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_query_and_fragment_go_host_port_and_path_stay() {
        for (raw, shown) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://steward:hunter2@nats:4222", "nats://***@nats:4222"),
            ("nats://token-only@nats:4222", "nats://***@nats:4222"),
            (
                "smtp://ops:hunter2@mail.example.com:587?tls=required",
                "smtp://***@mail.example.com:587",
            ),
            ("smtps://ops:p%40ss@mail:465", "smtps://***@mail:465"),
            (
                "https://hooks.example.com/notify?token=hunter2#x",
                "https://hooks.example.com/notify",
            ),
            ("http://AKIA:hunter2@127.0.0.1:9000/", "http://***@127.0.0.1:9000/"),
            // Unescaped `@` or `/` in a password: more hidden, nothing leaked.
            ("nats://u:hun@ter2@nats:4222", "nats://***@nats:4222"),
            ("nats://u:hun/ter2@nats:4222", "nats://***@nats:4222"),
            // Without a scheme, as NATS accepts it.
            ("steward:hunter2@nats:4222", "***@nats:4222"),
            ("nats:4222", "nats:4222"),
            ("", ""),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }

    #[test]
    fn a_list_is_redacted_url_by_url() {
        assert_eq!(
            redact_url("nats://a:hunter2@n1:4222?x=1,nats://b:hunter3@n2:4222"),
            "nats://***@n1:4222,nats://***@n2:4222"
        );
        assert_eq!(redact_url("nats://n1:4222,nats://n2:4222"), "nats://n1:4222,nats://n2:4222");
        // A comma inside a password hides the host before it, never the password.
        let shown = redact_url("nats://u:hun,ter2@n1:4222");
        assert!(!shown.contains("hun") && !shown.contains("ter2"), "{shown}");
        let shown = redact_url("a:hunter2@n1:4222,b:hunter3@n2:4222");
        assert!(!shown.contains("hunter"), "{shown}");
    }

    #[test]
    fn urls_inside_text_are_redacted_and_nothing_else_changes() {
        let text = r#"STEWARD_NATS_URL="nats://steward:hunter2@bad host:4222": "nats://steward:hunter2@bad host:4222": invalid; mail ops@example.com"#;
        let shown = redact_urls_in(text);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("nats://***@bad host:4222"), "{shown}");
        assert!(
            shown.contains("STEWARD_NATS_URL=") && shown.contains("ops@example.com"),
            "{shown}"
        );
        assert_eq!(redact_urls_in("no url here: a@b.c"), "no url here: a@b.c");
        assert_eq!(
            redact_urls_in("POST https://u:p@h/x?k=v answered 500"),
            "POST https://***@h/x answered 500"
        );
    }
}
