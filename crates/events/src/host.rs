//! The host an agent looks after (`STEWARD_HOST`): one engine, named by a token that is safe
//! in a NATS subject, a consumer name and a user name.
//!
//! One meaning everywhere: the services' setting, the CLI's `--host`, an event's `host`
//! attribute and the records that carry it are checked by [`check_host`] and nothing else.

/// Longest host name accepted (a DNS label's length).
pub const MAX_HOST_LEN: usize = 63;

/// What a host name may be, for error messages.
pub const HOST_RULE: &str = "1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit";

/// Whether `host` is a valid host token: lower-case ASCII letters, digits, `-` and `_`, starting
/// with a letter or digit, at most [`MAX_HOST_LEN`] characters. No `.`, `*`, `>` or space, so it
/// is one NATS subject token; no upper case, so `A` and `a` are never two hosts.
pub fn check_host(host: &str) -> Result<(), String> {
    let first_ok =
        host.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let all_ok =
        host.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && all_ok && host.len() <= MAX_HOST_LEN {
        Ok(())
    } else {
        Err(HOST_RULE.to_owned())
    }
}

/// The host token for a machine's name as its engine or `/etc/hostname` gives it (the default
/// of `STEWARD_HOST`): lower-cased, every other character (a domain's dots) turned into `-`,
/// cut to [`MAX_HOST_LEN`]. `None` when nothing usable is left.
pub fn host_from_name(name: &str) -> Option<String> {
    let mapped: String = name
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches(|c| c == '-' || c == '_');
    let cut: String = trimmed.chars().take(MAX_HOST_LEN).collect();
    let cut = cut.trim_end_matches(['-', '_']).to_owned();
    check_host(&cut).is_ok().then_some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tokens_are_subject_safe() {
        for ok in ["a", "gitea-1", "vps_2", "0host", &"x".repeat(63)] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in
            ["", "-a", "_a", "A", "host.example", "a*", "a>", "a b", "a\n", "é", &"x".repeat(64)]
        {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_machine_name_becomes_a_token() {
        assert_eq!(
            host_from_name("ip-10-0-0-1.ec2.internal").as_deref(),
            Some("ip-10-0-0-1-ec2-internal")
        );
        assert_eq!(host_from_name("  VPS1\n").as_deref(), Some("vps1"));
        assert_eq!(host_from_name("-.x.-").as_deref(), Some("x"));
        assert_eq!(host_from_name(&"a".repeat(100)).map(|h| h.len()), Some(63));
        assert_eq!(host_from_name("..."), None);
        assert_eq!(host_from_name(""), None);
        assert_eq!(host_from_name("ünï").as_deref(), Some("n"));
    }
}
