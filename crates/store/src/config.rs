//! Where backups are stored: the bucket settings both the backup service and `steward backup
//! list` read, under the same variable names.

/// The bucket backups go to.
pub const ENV_BUCKET: &str = "STEWARD_S3_BUCKET";
/// Key prefix inside the bucket (e.g. `gitea/`).
pub const ENV_PREFIX: &str = "STEWARD_S3_PREFIX";
/// Endpoint of an S3-compatible store; unset for AWS.
pub const ENV_ENDPOINT: &str = "STEWARD_S3_ENDPOINT";

/// Where backups are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// Endpoint of an S3-compatible store (path-style addressing); `None` for AWS.
    pub endpoint: Option<String>,
}

/// A prefix as stored: no leading `/`, a trailing `/` unless empty.
pub fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim().trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// S3's bucket naming rules, checked at start so a typo is one clear line, not a failed
/// backup at 02:00.
pub fn validate_bucket(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if (3..=63).contains(&name.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err("3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(validate_bucket("steward-backups").is_ok());
        assert!(validate_bucket("a.b-c1").is_ok());
        for bad in ["", "ab", "Upper", "-dash", "dash-", "under_score", &"x".repeat(64)] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/"), "");
        assert_eq!(normalise_prefix("gitea"), "gitea/");
        assert_eq!(normalise_prefix("/a/b/"), "a/b/");
    }
}
