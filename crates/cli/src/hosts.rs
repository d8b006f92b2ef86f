//! `--host`: the central view of several hosts narrowed to one, and the HOST column.

/// Parses `--host`: a host name as the agents' `STEWARD_HOST` takes it (one meaning, one check).
pub fn parse(s: &str) -> Result<String, String> {
    steward_events::check_host(s).map(|()| s.to_owned()).map_err(|rule| format!("{s:?}: {rule}"))
}

/// Whether a record, flow or backup on `host` is shown under `filter` (`None`: every host; a
/// record from before hosts matches no `--host`).
pub fn shown(filter: Option<&str>, host: Option<&str>) -> bool {
    filter.is_none_or(|f| host == Some(f))
}

/// The HOST column: `-` for what was written before hosts.
pub fn column(host: Option<&str>) -> &str {
    host.unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_filter_takes_what_agents_take() {
        assert_eq!(parse("vps-1").as_deref(), Ok("vps-1"));
        assert!(parse("VPS.1").is_err_and(|e| e.contains("a-z, 0-9")));
        assert!(shown(None, None) && shown(None, Some("a")) && shown(Some("a"), Some("a")));
        assert!(!shown(Some("a"), Some("b")) && !shown(Some("a"), None));
        assert_eq!((column(None), column(Some("a"))), ("-", "a"));
    }
}
