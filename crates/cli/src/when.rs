//! Points in time on the command line: RFC 3339, a date, or a duration ago (`2h`, `7d`).

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, Time};

/// Parses `2026-11-23T10:00:00Z`, `2026-11-23` (midnight UTC) or `90m` / `7d` (that long ago).
pub fn parse(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(s, &date_format) {
        return Ok(d.with_time(Time::MIDNIGHT).assume_utc());
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(OffsetDateTime::now_utc() - ago);
    }
    Err(format!("{s:?} is not a time: use RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration ago (2h, 7d)"))
}

/// `2026-11-23 02:00:07`: times in tables (UTC).
pub fn seconds(t: OffsetDateTime) -> String {
    t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_three_forms_and_explains_errors() {
        assert_eq!(parse("2026-11-23T10:00:00Z").map(|t| t.hour()), Ok(10));
        assert_eq!(parse("2026-11-23").map(|t| (t.day(), t.hour())), Ok((23, 0)));
        let ago = parse("2h").expect("duration");
        let diff = time::OffsetDateTime::now_utc() - ago;
        assert!((diff.whole_seconds() - 7200).abs() < 5);
        assert!(parse("yesterday-ish").expect_err("not a time").contains("RFC 3339"));
    }
}
