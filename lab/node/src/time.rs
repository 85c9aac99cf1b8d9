//! RFC 3339 timestamps as the API and the CRI log format write them: whole seconds for
//! the API's `metav1.Time` (`2026-01-02T03:04:05Z`), nanoseconds for log lines and
//! `metav1.MicroTime`; always in UTC.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;

fn timestamp(t: SystemTime) -> Timestamp {
    // Out of jiff's range (years -9999 to 9999) only for a clock gone mad.
    Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `2026-11-26T14:01:32Z`, as the API's `metav1.Time` (the fraction is dropped).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    format!("{:.0}", timestamp(t))
}

/// `2026-11-26T14:01:32.000000000Z`: CRI log lines and `metav1.MicroTime` (which
/// accepts any fraction).
pub(crate) fn rfc3339_nanos(t: SystemTime) -> String {
    format!("{:.9}", timestamp(t))
}

/// Parses an RFC 3339 timestamp: what [`rfc3339`] and [`rfc3339_nanos`] write, and
/// offsets such as `+01:00`.
pub(crate) fn parse(s: &str) -> Option<SystemTime> {
    s.parse::<Timestamp>().ok().map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn round_trips() {
        let t = UNIX_EPOCH + Duration::new(1_795_960_892, 123_456_789);
        assert_eq!(rfc3339(t), "2026-11-29T14:01:32Z");
        assert_eq!(rfc3339_nanos(t), "2026-11-29T14:01:32.123456789Z");
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH + Duration::from_secs(1)),
            "1970-01-01T00:00:01.000000000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(1, 999_999_999)),
            "1970-01-01T00:00:01Z",
            "the fraction is cut, not rounded"
        );
        assert_eq!(parse(&rfc3339_nanos(t)), Some(t));
        assert_eq!(
            parse("2026-11-29T15:01:32+01:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_960_892))
        );
        assert_eq!(
            parse("2026-01-01T00:00:01.5Z"),
            Some(UNIX_EPOCH + Duration::new(1_767_225_601, 500_000_000))
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse("2000-02-29T00:00:00Z").map(rfc3339).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(parse("yesterday"), None);
    }
}
