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

/// The subject family of events addressed to one host: `host.<host>.<type>` (under the
/// namespace's prefix). Under host routing (`STEWARD_HOSTS`) every event about a host goes
/// there, so one agent's durable consumer filters on `host.<its host>.>`, one filter subject
/// (all NATS 2.9 has), and the server's permissions confine a host's agents to their subjects.
/// No event type's family is `host` (a test keeps it so).
pub const HOST_FAMILY: &str = "host";

/// The subject (without the namespace prefix) of `event_type` addressed to `host`, or the
/// plain type when it is addressed to none.
pub fn address(host: Option<&str>, event_type: &str) -> String {
    match host {
        Some(host) => format!("{HOST_FAMILY}.{host}.{event_type}"),
        None => event_type.to_owned(),
    }
}

/// The host a subject (without the namespace prefix) is addressed to, and its event type:
/// the inverse of [`address`]. A subject outside the host family is addressed to none.
pub fn split_address(subject: &str) -> (Option<&str>, &str) {
    match subject.strip_prefix(HOST_FAMILY).and_then(|r| r.strip_prefix('.')) {
        Some(rest) => match rest.split_once('.') {
            Some((host, event_type)) => (Some(host), event_type),
            None => (Some(rest), ""),
        },
        None => (None, subject),
    }
}

/// The JetStream domain of the compose kit's hub (`compose/hub.yml`): under the leaf-node
/// topology no host may be named so (a server whose domain is one of the hosts is that host's
/// leaf, so the centre's hub would take itself for the leaf of a host named `hub`).
pub const HUB_DOMAIN: &str = "hub";

/// The routing table's hosts (`STEWARD_HOSTS`): comma-separated host names, each checked by
/// [`check_host`], none twice; also none two that differ only by `-` and `_`, which would share
/// a NATS password variable (`STEWARD_UPDATER_VPS_1_PASSWORD`). Empty: no host routing.
pub fn check_hosts(raw: &str) -> Result<Vec<String>, String> {
    let mut hosts: Vec<String> = vec![];
    for host in raw.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        check_host(host).map_err(|rule| format!("{host:?}: {rule}"))?;
        let same = |h: &String| h.replace('-', "_") == host.replace('-', "_");
        if let Some(other) = hosts.iter().find(|h| same(h)) {
            return Err(format!("{host:?} and {other:?} are one host to NATS (its user names)"));
        }
        hosts.push(host.to_owned());
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_back_and_no_event_family_is_the_host_family() {
        assert_eq!(address(Some("vps-1"), "update.approved"), "host.vps-1.update.approved");
        assert_eq!(address(None, "update.approved"), "update.approved");
        assert_eq!(split_address("host.vps-1.update.approved"), (Some("vps-1"), "update.approved"));
        assert_eq!(split_address("update.approved"), (None, "update.approved"));
        assert_eq!(split_address("host.a"), (Some("a"), ""));
        assert_eq!(split_address("hostile.x"), (None, "hostile.x"));
        assert!(crate::EventData::ALL_TYPES.iter().all(|t| !t.starts_with("host.")));
    }

    #[test]
    fn the_host_table_is_checked() {
        assert_eq!(check_hosts(""), Ok(vec![]));
        assert_eq!(check_hosts(" a, b-1 ,"), Ok(vec!["a".into(), "b-1".into()]));
        assert!(check_hosts("a,A").is_err_and(|e| e.contains("\"A\"")));
        assert!(check_hosts("a,a").is_err());
        assert!(check_hosts("vps-1,vps_1").is_err_and(|e| e.contains("one host")));
        assert!(check_hosts("a.b").is_err());
    }

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
