//! Durations in Go's syntax (`time.ParseDuration`), which every Kubernetes component's
//! flags use: `30s`, `1m30s`, `1.5h`, `500ms`, `0`.

use std::time::Duration;

/// A duration that does not parse; the message quotes it and says why, as Go does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000), // U+00B5, what Go prints
    ("μs", 1_000), // U+03BC
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration: a sequence of decimal numbers, each with an optional fraction and
/// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), or `0`. Negative durations are
/// refused: every duration kubewire takes is a length of time. Usable as a clap
/// `value_parser`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let mut s = input.strip_prefix('+').unwrap_or(input);
    if s.starts_with('-') {
        return Err(err("must not be negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut nanos: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int, rest) = s.split_at(int_len);
        let (frac, rest) = match rest.strip_prefix('.') {
            Some(r) => r.split_at(r.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", rest),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_len);
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                err("missing unit (ns, us, ms, s, m or h)")
            } else {
                err("unknown unit (ns, us, ms, s, m or h)")
            });
        };
        let too_large = || err("too large");
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_large())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(too_large)?;
        // The fraction, truncated to whole nanoseconds as Go does; digits beyond what
        // can matter are ignored.
        let (mut f, mut div) = (0u128, 1u128);
        for d in frac.bytes().take(30) {
            f = f * 10 + u128::from(d - b'0');
            div *= 10;
        }
        part += f * scale / div;
        nanos = nanos.checked_add(part).ok_or_else(too_large)?;
        s = rest;
    }
    // Go's durations are int64 nanoseconds (about 292 years).
    if nanos > i64::MAX as u128 {
        return Err(err("too large"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// `d` as Go prints it (`time.Duration.String`): `1m30s`, `1.5s`, `300ms`, `0s`. What
/// [`parse_duration`] reads back to the same value.
pub fn format_duration(d: Duration) -> String {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (prec, unit) = match nanos {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (int, frac) = split_fraction(nanos, prec);
        return format!("{int}{frac}{unit}");
    }
    let (secs, frac) = split_fraction(nanos, 9);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, secs / 60) {
        (0, 0) => format!("{s}{frac}s"),
        (0, _) => format!("{m}m{s}{frac}s"),
        _ => format!("{h}h{m}m{s}{frac}s"),
    }
}

/// `v / 10^prec` as its integer part and `.digits` of the rest without trailing zeros
/// (empty when the rest is zero).
fn split_fraction(v: u64, prec: u32) -> (u64, String) {
    let pow = 10u64.pow(prec);
    let (int, rest) = (v / pow, v % pow);
    if rest == 0 {
        return (int, String::new());
    }
    let digits = format!("{rest:0width$}", width = prec as usize);
    (int, format!(".{}", digits.trim_end_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_what_go_parses() {
        for (s, d) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("30s", ms(30_000)),
            ("+5s", ms(5_000)),
            ("1m30s", ms(90_000)),
            ("1h", ms(3_600_000)),
            ("1.5h", ms(5_400_000)),
            ("2h45m", ms(9_900_000)),
            ("500ms", ms(500)),
            (".5s", ms(500)),
            ("1.s", ms(1_000)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("1μs", Duration::from_micros(1)),
            ("3ns", Duration::from_nanos(3)),
            ("1.0000000019s", Duration::from_nanos(1_000_000_001)),
            ("1h1m1s1ms1us1ns", Duration::from_nanos(3_661_001_001_001)),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn refuses_what_go_refuses_and_negatives() {
        for (s, why) in [
            ("", "empty"),
            ("30", "missing unit (ns, us, ms, s, m or h)"),
            ("1m30", "missing unit (ns, us, ms, s, m or h)"),
            ("10d", "unknown unit (ns, us, ms, s, m or h)"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("-1s", "must not be negative"),
            ("3000000h", "too large"),
            ("99999999999999999999999999999999999999999h", "too large"),
        ] {
            let e = parse_duration(s).unwrap_err();
            assert_eq!(e.to_string(), format!("invalid duration {s:?}: {why}"));
        }
    }

    #[test]
    fn prints_as_go_prints_and_reads_back() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(3), "3ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (ms(300), "300ms"),
            (Duration::from_micros(1_250), "1.25ms"),
            (ms(1_500), "1.5s"),
            (ms(30_000), "30s"),
            (ms(60_000), "1m0s"),
            (ms(90_000), "1m30s"),
            (ms(3_600_000), "1h0m0s"),
            (Duration::from_nanos(3_661_000_000_001), "1h1m1.000000001s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
    }
}
