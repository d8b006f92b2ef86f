//! What an image says about its release (the OCI annotation labels), and the link to its
//! release notes built from them.
//!
//! Labels are outside input (anyone who builds an image writes them): a value with a control
//! character or longer than [`MAX_LABEL`] is dropped, and [`release_notes`] links only `https`
//! URLs whose every part it has checked, so a hostile label can never become a `javascript:`,
//! `data:` or plain-`http` link in a mail.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `org.opencontainers.image.version`.
pub const LABEL_VERSION: &str = "org.opencontainers.image.version";
/// `org.opencontainers.image.source`: the repository the image is built from.
pub const LABEL_SOURCE: &str = "org.opencontainers.image.source";
/// `org.opencontainers.image.url`: the project's page.
pub const LABEL_URL: &str = "org.opencontainers.image.url";
/// `org.opencontainers.image.revision`: the commit the image is built from.
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
/// `org.opencontainers.image.created`: when it was built (RFC 3339).
pub const LABEL_CREATED: &str = "org.opencontainers.image.created";

/// Longest label value kept (longer ones are dropped, not cut: a cut URL is a wrong one).
pub const MAX_LABEL: usize = 256;

/// What an image says about itself: its version and where it comes from. Every field is
/// optional: most images set some of these labels, few set all.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageVersion {
    /// `org.opencontainers.image.version`, e.g. `1.22.7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the image was built: `org.opencontainers.image.created`, else the image config's
    /// `created`.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<OffsetDateTime>,
    /// `org.opencontainers.image.source`, e.g. `https://github.com/go-gitea/gitea`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `org.opencontainers.image.url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `org.opencontainers.image.revision`: the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl ImageVersion {
    /// How long before `now` the image was built, in words a person reads at a glance
    /// (`12 days`, `5 hours`, `less than an hour`); `None` without a build time. The mail and
    /// the approval page say it alike.
    pub fn age(&self, now: OffsetDateTime) -> Option<String> {
        let age = now - self.created?;
        Some(if age.whole_days() >= 1 {
            format!("{} days", age.whole_days())
        } else if age.whole_hours() >= 1 {
            format!("{} hours", age.whole_hours())
        } else {
            "less than an hour".to_owned()
        })
    }

    /// Reads the labels of an image; `created` is the image config's own build time, used
    /// when the label is absent. `None` when the image says nothing of use.
    pub fn from_labels(labels: &HashMap<String, String>, created: Option<&str>) -> Option<Self> {
        let get = |name: &str| labels.get(name).and_then(|v| clean(v));
        let parse =
            |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
        let v = Self {
            version: get(LABEL_VERSION),
            created: get(LABEL_CREATED)
                .and_then(|s| parse(&s))
                .or_else(|| created.and_then(clean).and_then(|s| parse(&s))),
            source: get(LABEL_SOURCE),
            url: get(LABEL_URL),
            revision: get(LABEL_REVISION),
        };
        (v != Self::default()).then_some(v)
    }
}

/// A label value worth keeping: trimmed, not empty, at most [`MAX_LABEL`] bytes, no control
/// character.
fn clean(value: &str) -> Option<String> {
    let v = value.trim();
    let ok = !v.is_empty() && v.len() <= MAX_LABEL && !v.chars().any(char::is_control);
    ok.then(|| v.to_owned())
}

/// The release versions around an update: what runs and what is new. Flattened into the
/// events and records that carry them, so their fields sit beside the digests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Versions {
    /// What the running image says about itself (its local labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<ImageVersion>,
    /// What the new image says about itself (its config in the registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_version: Option<ImageVersion>,
}

impl Versions {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.current_version.is_none() && self.new_version.is_none()
    }

    /// The link to what changed between the two, see [`release_notes`].
    pub fn release_notes(&self) -> Option<String> {
        release_notes(self.current_version.as_ref(), self.new_version.as_ref()?)
    }
}

/// Hosts whose repositories have GitHub's or Gitea's release and compare pages
/// (`/owner/repo/releases/tag/T`, `/owner/repo/compare/A...B`). Gitea and Forgejo share the
/// shape with GitHub; a self-hosted one is recognised by its host name.
fn is_forge(host: &str) -> bool {
    let name = host.split(':').next().unwrap_or(host);
    matches!(name, "github.com" | "gitea.com" | "codeberg.org")
        || ["gitea.", "forgejo.", "git."].iter().any(|p| name.starts_with(p))
}

/// The release notes or changes of `new`, compared with `current` when known:
/// - a GitHub or Gitea/Forgejo repository (from `source`, else `url`): the compare page of the
///   two revisions when both are known and differ, else the release page of the new
///   version's tag (`releases/tag/<version>`), else the repository;
/// - any other `https` source: the URL itself;
/// - anything else (not `https`, user info, a query, an odd character, overlong): no link.
pub fn release_notes(current: Option<&ImageVersion>, new: &ImageVersion) -> Option<String> {
    let repo = new
        .source
        .as_deref()
        .and_then(safe_https)
        .or_else(|| new.url.as_deref().and_then(safe_https))?;
    let (host, path) = repo.trim_start_matches("https://").split_once('/').unwrap_or((&repo, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if !is_forge(host) || segments.len() != 2 {
        return Some(repo);
    }
    let base = format!("https://{host}/{}/{}", segments[0], segments[1].trim_end_matches(".git"));
    if let (Some(old), Some(new_rev)) = (revision(current), revision(Some(new))) {
        if old != new_rev {
            return Some(format!("{base}/compare/{old}...{new_rev}"));
        }
    }
    match new.version.as_deref().filter(|v| is_tag(v)) {
        Some(tag) => Some(format!("{base}/releases/tag/{tag}")),
        None => Some(base),
    }
}

/// `https://host[:port]/path` with only plain characters, trailing `/` and `.git`-less; `None`
/// for anything else.
fn safe_https(url: &str) -> Option<String> {
    if url.len() > MAX_LABEL {
        return None;
    }
    let rest = url.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && !host.starts_with(['.', '-', ':'])
        && host.split(':').nth(1).is_none_or(|port| {
            port.chars().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0)
        })
        && host.matches(':').count() <= 1;
    let path_ok =
        path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '/'))
            && !path.split('/').any(|s| s == ".." || s == ".");
    if !host_ok || !path_ok {
        return None;
    }
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    Some(if path.is_empty() {
        format!("https://{}", host.to_ascii_lowercase())
    } else {
        format!("https://{}/{path}", host.to_ascii_lowercase())
    })
}

/// A version's revision when it is a commit id.
fn revision(v: Option<&ImageVersion>) -> Option<&str> {
    v.and_then(|v| v.revision.as_deref()).filter(|r| is_revision(r))
}

/// A commit id: 7 to 64 hex digits.
fn is_revision(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// A tag that goes into a URL path as it is.
fn is_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !s.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_of_a_release_is_told_in_days_hours_or_less() {
        let now = time::macros::datetime!(2026-12-02 09:30 UTC);
        let at = |t| ImageVersion { created: Some(t), ..Default::default() };
        assert_eq!(
            at(time::macros::datetime!(2026-11-20 09:00 UTC)).age(now).as_deref(),
            Some("12 days")
        );
        assert_eq!(
            at(time::macros::datetime!(2026-12-02 04:00 UTC)).age(now).as_deref(),
            Some("5 hours")
        );
        assert_eq!(at(now).age(now).as_deref(), Some("less than an hour"));
        assert_eq!(ImageVersion::default().age(now), None);
    }

    fn v(source: &str, version: Option<&str>, revision: Option<&str>) -> ImageVersion {
        ImageVersion {
            version: version.map(Into::into),
            source: Some(source.into()),
            revision: revision.map(Into::into),
            ..ImageVersion::default()
        }
    }

    #[test]
    fn github_and_gitea_get_compare_or_release_pages() {
        let old = v("https://github.com/go-gitea/gitea", Some("1.22.6"), Some("abc1234"));
        let new = v("https://github.com/go-gitea/gitea.git", Some("1.22.7"), Some("def5678"));
        assert_eq!(
            release_notes(Some(&old), &new).as_deref(),
            Some("https://github.com/go-gitea/gitea/compare/abc1234...def5678")
        );
        let new_only = v("https://github.com/go-gitea/gitea/", Some("v1.22.7"), None);
        assert_eq!(
            release_notes(Some(&old), &new_only).as_deref(),
            Some("https://github.com/go-gitea/gitea/releases/tag/v1.22.7")
        );
        assert_eq!(
            release_notes(None, &v("https://codeberg.org/forgejo/forgejo", Some("9.0.1"), None))
                .as_deref(),
            Some("https://codeberg.org/forgejo/forgejo/releases/tag/9.0.1")
        );
        assert_eq!(
            release_notes(
                Some(&v("https://gitea.example.com/ops/app", None, Some("aaaaaaa"))),
                &v("https://gitea.example.com/ops/app", None, Some("bbbbbbb"))
            )
            .as_deref(),
            Some("https://gitea.example.com/ops/app/compare/aaaaaaa...bbbbbbb")
        );
        // Same revision, no version: the repository.
        assert_eq!(
            release_notes(Some(&old), &v("https://github.com/o/r", None, Some("abc1234")))
                .as_deref(),
            Some("https://github.com/o/r")
        );
    }

    #[test]
    fn other_https_sources_are_linked_as_they_are_and_url_is_the_fallback() {
        let new = v("https://gitlab.com/group/sub/project", Some("2.0"), None);
        assert_eq!(
            release_notes(None, &new).as_deref(),
            Some("https://gitlab.com/group/sub/project")
        );
        let only_url =
            ImageVersion { url: Some("https://example.org/app".into()), ..Default::default() };
        assert_eq!(release_notes(None, &only_url).as_deref(), Some("https://example.org/app"));
    }

    #[test]
    fn hostile_labels_give_no_link() {
        let long = format!("https://github.com/o/{}", "r".repeat(300));
        for bad in [
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)//https://github.com/o/r",
            "data:text/html;base64,PHNjcmlwdD4=",
            "http://github.com/o/r",
            "http://evil.example/o/r",
            "//evil.example/o/r",
            "https://evil.example@github.com/o/r",
            "https://github.com/o/r?x=<script>",
            "https://github.com/o/r#frag",
            "https://github.com/o/r\n.evil",
            "https://github.com/o/r\u{0}",
            "https://github.com/o/\"onmouseover=\"x",
            "https://github.com/o/r/../../evil",
            "https://github.com:99999/o/r",
            "https://:443/o/r",
            "https://",
            "git@github.com:o/r.git",
            "https://gíthub.com/o/r",
            long.as_str(),
        ] {
            assert_eq!(release_notes(None, &v(bad, Some("1.0"), None)), None, "{bad:?}");
        }
        // A hostile version or revision is not put into the path; the repository still is.
        let old = v("https://github.com/o/r", None, Some("abc1234"));
        let new = v("https://github.com/o/r", Some("1.0/../../x"), Some("<script>"));
        assert_eq!(release_notes(Some(&old), &new).as_deref(), Some("https://github.com/o/r"));
    }

    #[test]
    fn labels_with_control_characters_or_overlong_values_are_dropped() {
        let labels: HashMap<String, String> = [
            (LABEL_VERSION, " 1.2.3 "),
            (LABEL_SOURCE, "https://github.com/o/r\r\nX-Injected: 1"),
            (LABEL_REVISION, &"a".repeat(MAX_LABEL + 1)),
            (LABEL_CREATED, "2026-01-02T03:04:05Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let v = ImageVersion::from_labels(&labels, None).expect("some");
        assert_eq!(v.version.as_deref(), Some("1.2.3"));
        assert_eq!(v.source, None);
        assert_eq!(v.revision, None);
        assert_eq!(v.created, Some(time::macros::datetime!(2026-01-02 03:04:05 UTC)));
        let fallback = ImageVersion::from_labels(&HashMap::new(), Some("2025-05-06T07:08:09.123Z"))
            .expect("created from the config");
        assert_eq!(fallback.created.map(|t| t.year()), Some(2025));
        assert_eq!(ImageVersion::from_labels(&HashMap::new(), Some("yesterday")), None);
    }

    #[test]
    fn old_events_without_versions_decode_and_empty_ones_serialise_to_nothing() {
        let json = serde_json::to_string(&Versions::default()).expect("json");
        assert_eq!(json, "{}");
        let v: Versions = serde_json::from_str("{\"other\":1}").expect("decodes");
        assert!(v.is_empty());
    }
}
