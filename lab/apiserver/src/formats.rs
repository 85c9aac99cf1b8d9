//! The string `format`s apiextensions-apiserver validates in custom resources (its
//! `supportedFormats`, checked by kube-openapi's strfmt registry); any other format,
//! and every format of a non-string value (`int32`, `int64`, `float`, `double`), is
//! ignored there and here. A failure reads as kube-apiserver's:
//! `spec.url: Invalid value: "x": spec.url in body must be of type uri: "x"`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use regex::Regex;

/// Whether `s` is valid in `format`; `None` when the format is not one that is checked.
pub(crate) fn valid(format: &str, s: &str) -> Option<bool> {
    // strfmt looks formats up lower-cased without dashes or underscores.
    let name: String = format
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    Some(match name.as_str() {
        "bsonobjectid" => s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "uri" => uri(s),
        "email" => email(s),
        "hostname" => hostname(s),
        "ipv4" => s.contains('.') && s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.contains(':') && s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => cidr(s),
        "mac" => mac(s),
        "uuid" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid3" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid4" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid5" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
            s,
        ),
        "isbn" => isbn10(s) || isbn13(s),
        "isbn10" => isbn10(s),
        "isbn13" => isbn13(s),
        "creditcard" => credit_card(s),
        "ssn" => re(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$", s),
        "hexcolor" => re(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$", s),
        "rgbcolor" => re(
            r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$",
            s,
        ),
        "byte" => base64(s),
        "password" => true,
        "date" => date(s),
        "duration" => duration(s),
        "datetime" => date_time(s),
        _ => return None,
    })
}

fn re(pattern: &str, s: &str) -> bool {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Regex>>> =
        OnceLock::new();
    let mut c = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let r = c
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).unwrap_or_else(|_| Regex::new("$^").unwrap()));
    r.is_match(s)
}

/// Go's `url.ParseRequestURI`: an absolute URI (a scheme) or an absolute path.
fn uri(s: &str) -> bool {
    if s.is_empty() || s.chars().any(|c| c.is_control() || c == ' ') {
        return false;
    }
    if s.starts_with('/') {
        return true;
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return false;
    }
    match rest.strip_prefix("//") {
        // The authority's host: no characters a URL host cannot hold.
        Some(after) => {
            let authority = after.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            !host.contains(['<', '>', '"', '{', '}', '|', '\\', '^', '`'])
        }
        None => true,
    }
}

/// Go's `mail.ParseAddress`, for the forms people write: `a@b.c` or `Name <a@b.c>`.
fn email(s: &str) -> bool {
    let addr = match (s.rfind('<'), s.strip_suffix('>')) {
        (Some(i), Some(_)) => &s[i + 1..s.len() - 1],
        _ => s.trim(),
    };
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    !local.is_empty()
        && !domain.is_empty()
        && local.chars().all(atext)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && domain
            .chars()
            .all(|c| atext(c) || c == '[' || c == ']' || c == ':')
}

/// RFC 1034 host names, as strfmt's `IsHostname` accepts them.
fn hostname(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if !labels.iter().all(|l| label_ok(l)) {
        return false;
    }
    // More than one label: the top-level one is letters, 2 to 63 of them.
    labels.len() == 1
        || labels
            .last()
            .is_some_and(|t| t.chars().count() >= 2 && t.chars().all(char::is_alphabetic))
}

fn cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !bits.is_empty()
        && bits.len() <= 3
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u32>().is_ok_and(|b| b <= max)
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets as `aa:bb:..`, `aa-bb-..` or `aabb.ccdd...`.
fn mac(s: &str) -> bool {
    let octets_ok = |n: usize| matches!(n, 6 | 8 | 20);
    for sep in [':', '-'] {
        if s.contains(sep) {
            let parts: Vec<&str> = s.split(sep).collect();
            return octets_ok(parts.len())
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
    let parts: Vec<&str> = s.split('.').collect();
    octets_ok(parts.len() * 2)
        && parts
            .iter()
            .all(|p| p.len() == 4 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn isbn_digits(s: &str) -> String {
    s.chars().filter(|c| *c != '-' && *c != ' ').collect()
}

fn isbn10(s: &str) -> bool {
    let d = isbn_digits(s);
    if !re(r"^(?:[0-9]{9}X|[0-9]{10})$", &d) {
        return false;
    }
    let sum: u32 = d
        .chars()
        .enumerate()
        .map(|(i, c)| (i as u32 + 1) * c.to_digit(10).unwrap_or(10))
        .sum();
    sum.is_multiple_of(11)
}

fn isbn13(s: &str) -> bool {
    let d = isbn_digits(s);
    if !re(r"^(?:[0-9]{13})$", &d) {
        return false;
    }
    let sum: u32 = d
        .chars()
        .enumerate()
        .map(|(i, c)| c.to_digit(10).unwrap_or(0) * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    sum.is_multiple_of(10)
}

/// govalidator's `IsCreditCard`: the digits match a card pattern and pass Luhn.
fn credit_card(s: &str) -> bool {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    if !re(
        r"^(?:4[0-9]{12}(?:[0-9]{3})?|5[1-5][0-9]{14}|6(?:011|5[0-9][0-9])[0-9]{12}|3[47][0-9]{13}|3(?:0[0-5]|[68][0-9])[0-9]{11}|(?:2131|1800|35\d{3})\d{11})$",
        &d,
    ) {
        return false;
    }
    let sum: u32 = d
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let n = c.to_digit(10).unwrap_or(0);
            if i % 2 == 1 {
                let x = n * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                n
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Go's `base64.StdEncoding`, not strict: the padded standard alphabet, unused low
/// bits of the last character ignored.
fn base64(s: &str) -> bool {
    const GO_STD: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    GO_STD.decode(s).is_ok()
}

/// RFC 3339 full-date: a real calendar day.
fn date(s: &str) -> bool {
    if !re(r"^\d{4}-\d{2}-\d{2}$", s) {
        return false;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// strfmt's `IsDateTime`: a date, `T`, then `hh:mm:ss[.frac](Z|±hh:mm)`.
fn date_time(s: &str) -> bool {
    if s.len() < 4 {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !date(parts[0]) {
        return false;
    }
    static TIME: OnceLock<Regex> = OnceLock::new();
    let time = TIME.get_or_init(|| {
        Regex::new(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$")
            .unwrap_or_else(|_| Regex::new("$^").unwrap())
    });
    let Some(c) = time.captures(parts[1]) else {
        return false;
    };
    let c = [&c[1], &c[2], &c[3]];
    c[0] <= "23" && c[1] <= "59" && c[2] <= "59"
}

/// strfmt's `ParseDuration`: Go's `time.ParseDuration` syntax (`1h30m`, `1.5s`) or a
/// number and a unit word (`22 ns`, `3 days`).
fn duration(s: &str) -> bool {
    let go = r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$";
    let words = r"^(\d+)\s*((?:ns|us|µs|ms|s|m|h|d|w)|(?:nano|micro|milli)?(?:second|sec)s?|(?:minute|min|hour|hr|day|week|wk)s?)$";
    s == "0" || re(go, s) || re(words, s)
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn formats() {
        let yes = [
            ("uri", "https://example.com/a?b"),
            ("uri", "/path"),
            ("email", "a.b@example.com"),
            ("hostname", "example.com"),
            ("ipv4", "10.0.0.1"),
            ("ipv6", "fd00::1"),
            ("cidr", "10.0.0.0/8"),
            ("mac", "aa:bb:cc:dd:ee:ff"),
            ("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
            ("uuid4", "f47ac10b-58cc-4372-a567-0e02b2c3d479"),
            ("isbn10", "0321751043"),
            ("isbn13", "978-0321751041"),
            ("creditcard", "4111 1111 1111 1111"),
            ("ssn", "123-45-6789"),
            ("hexcolor", "#FFF"),
            ("rgbcolor", "rgb(255, 0, 10)"),
            ("byte", "aGVsbG8="),
            ("byte", ""),
            // Go ignores the unused bits of the last character (`Q` and `R` end alike).
            ("byte", "QR=="),
            ("date", "2024-02-29"),
            ("date-time", "2014-12-15T19:30:20.000Z"),
            ("datetime", "2014-12-15T19:30:20+01:00"),
            ("duration", "1h30m"),
            ("duration", "22 ns"),
            ("bsonobjectid", "507f1f77bcf86cd799439011"),
        ];
        for (f, s) in yes {
            assert_eq!(valid(f, s), Some(true), "{f} {s}");
        }
        let no = [
            ("uri", "not a uri"),
            ("uri", "relative/path"),
            ("email", "nobody"),
            ("hostname", "-bad-.com"),
            ("ipv4", "10.0.0.256"),
            ("ipv4", "fd00::1"),
            ("ipv6", "10.0.0.1"),
            ("cidr", "10.0.0.0/33"),
            ("mac", "aa:bb:cc"),
            ("uuid", "xyz"),
            ("uuid4", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
            ("isbn10", "0321751044"),
            ("creditcard", "4111 1111 1111 1112"),
            ("hexcolor", "#GGG"),
            ("byte", "aGVsbG8"),
            ("byte", "aGVsbG8=="),
            ("byte", "aG=sbG8="),
            ("byte", "aGVsbG8-"),
            ("date", "2023-02-29"),
            ("date-time", "2014-12-15 19:30:20"),
            ("date-time", "2014-12-15T25:30:20Z"),
            ("duration", "soon"),
        ];
        for (f, s) in no {
            assert_eq!(valid(f, s), Some(false), "{f} {s}");
        }
        assert_eq!(valid("int32", "x"), None);
        assert_eq!(valid("my-format", "x"), None);
    }
}
