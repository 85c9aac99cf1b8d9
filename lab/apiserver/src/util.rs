//! Small helpers with no better home: time stamps, query strings, JSON paths.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with second precision, as Kubernetes writes `metav1.Time`
/// (`2026-11-26T11:52:13Z`). Seconds beyond what jiff holds (the end of the year 9999,
/// the start of -9999) are clamped to it.
pub(crate) fn rfc3339(secs: i64) -> String {
    let secs = secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let t = Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH);
    format!("{t:.0}")
}

/// Seconds since the epoch of an RFC 3339 time stamp (fractions dropped), as Go's
/// `time.Parse(time.RFC3339, s)` reads it: the offset is required (`Z` or `±hh:mm`).
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(Timestamp::as_second)
}

/// `obj.a.b.c` as a string, for field selectors and table cells.
/// A label map as kubectl prints it: `k=v` pairs, sorted, joined by commas (empty for
/// no labels or a non-object).
pub(crate) fn labels_string(labels: &Value) -> String {
    let mut pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path)?.as_str()
}

pub(crate) fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Percent-encodes a query value (everything but unreserved characters).
/// A CronJob schedule (five fields, or a descriptor such as `@hourly`), as
/// kube-apiserver accepts it; the error says why not.
pub(crate) fn parse_cron(schedule: &str) -> Result<croner::Cron, String> {
    if schedule.starts_with("TZ=") || schedule.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| e.to_string())
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stamps_as_kubernetes_writes_them() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_693_933), "2026-11-26T11:52:13Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        // Out of range (a huge grace period): clamped to the last instant jiff holds,
        // still seconds and `Z`.
        assert_eq!(rfc3339(i64::MAX), "9999-12-30T22:00:00Z");
    }

    #[test]
    fn time_stamps_parse() {
        assert_eq!(parse_rfc3339("2026-11-26T11:52:13Z"), Some(1_795_693_933));
        for secs in [0, 951_782_400, 1_795_693_933] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        // MicroTime (events) and offsets.
        assert_eq!(
            parse_rfc3339("2026-11-26T11:52:13.123456Z"),
            Some(1_795_693_933)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T13:52:13+02:00"),
            Some(1_795_693_933)
        );
        // Without an offset it is not a time stamp (kubectl shows such a cell as is).
        assert_eq!(parse_rfc3339("2026-11-26T11:52:13"), None);
        assert_eq!(parse_rfc3339("2026-11-26"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }
}
