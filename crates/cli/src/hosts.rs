//! `--host`: the central view of several hosts narrowed to one, and the HOST column.

/// Parses `--host`: a host name as the agents' `STEWARD_HOST` takes it (one meaning, one check).
pub fn parse(s: &str) -> Result<String, String> {
    steward_events::check_host(s).map(|()| s.to_owned()).map_err(|rule| format!("{s:?}: {rule}"))
}

/// The host a request goes to under host routing (`STEWARD_HOSTS`; `None` without it, the
/// request's subject as before hosts): `about`, the host of the record it acts on (an update,
/// a container); else `STEWARD_HOST`; else the only host of the table. Several hosts and none
/// named is an error listing them: a request is never sent to a host at random.
pub fn target(
    conn: &crate::Connection,
    cfg: &steward_bus::BusConfig,
    about: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if !cfg.routes_by_host() {
        return Ok(None);
    }
    if let Some(host) = about {
        return Ok(Some(host.to_owned()));
    }
    let mut env = conn.env();
    let named = env.host();
    env.finish()?;
    match (named, cfg.hosts.as_slice()) {
        (Some(host), _) => Ok(Some(host)),
        (None, [only]) => Ok(Some(only.clone())),
        (None, hosts) => anyhow::bail!(
            "which host? name one of {} with STEWARD_HOST=<host> (STEWARD_HOSTS routes by host)",
            hosts.join(", ")
        ),
    }
}

/// Under host routing, the host `container` runs on, from the watcher's records: the one
/// host whose watcher records it; `None` when none does or several do and `STEWARD_HOST` is
/// to choose ([`target`] then takes it, or asks for it).
pub async fn of_container(
    conn: &crate::Connection,
    container: &str,
) -> anyhow::Result<Option<String>> {
    use steward_events::records::{WatchRecord, WATCH_BUCKET};
    let bus = conn.bus().await?;
    if !bus.config().routes_by_host() {
        return Ok(None);
    }
    let Some(store) =
        steward_bus::StateStore::<WatchRecord>::open_existing(&bus, WATCH_BUCKET).await?
    else {
        return Ok(None);
    };
    let mut hosts = vec![];
    for key in store.keys().await? {
        if let Some(r) = store.get(&key).await? {
            if r.value.container == container {
                // The key's host, not the record's word: only that host's watcher may write it.
                hosts.extend(bus.config().host_of_key(&key).map(str::to_owned));
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    Ok(match hosts.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    })
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
