//! Envoy's `%...%` command operators in header values, parsed into [`Piece`]s.
//!
//! Supported: `%PROTOCOL%`, `%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`, `%REQ(name)%`, `%START_TIME%` and
//! `%START_TIME(format)%`; `%%` is a literal `%` (Envoy's escape). Envoy's older
//! `%CLIENT_IP%`... aliases and other operators are refused by name, so a Mapping's status
//! says which one is not supported instead of the header carrying the raw text.

use http::HeaderName;

use crate::config::{Piece, Template};

/// Why a header value does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("command operator %{0}% is not supported")]
    Unsupported(String),
    #[error("unterminated command operator (a lone '%'; write '%%' for a literal '%')")]
    Unterminated,
    #[error("%REQ({0})%: not a header name")]
    BadHeader(String),
}

/// Parses `value`.
pub fn parse(value: &str) -> Result<Template, TemplateError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            literal.push('%');
            rest = tail;
            continue;
        }
        let end = operator_end(after).ok_or(TemplateError::Unterminated)?;
        let op = &after[..end];
        rest = &after[end + 1..];
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(operator(op)?);
    }
    literal.push_str(rest);
    if !literal.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(Template(pieces))
}

/// The index of the `%` closing an operator, skipping a parenthesised argument (a
/// `%START_TIME(%s.%3f)%` format holds `%`s of its own).
fn operator_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn operator(op: &str) -> Result<Piece, TemplateError> {
    let (name, arg) = match op.find('(') {
        Some(i) if op.ends_with(')') => (&op[..i], Some(&op[i + 1..op.len() - 1])),
        _ => (op, None),
    };
    match (name, arg) {
        ("PROTOCOL", None) => Ok(Piece::Protocol),
        ("DOWNSTREAM_REMOTE_ADDRESS", None) => Ok(Piece::RemoteAddress),
        ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) => Ok(Piece::RemoteAddressWithoutPort),
        ("START_TIME", None) => Ok(Piece::StartTime(None)),
        ("START_TIME", Some(f)) => Ok(Piece::StartTime(Some(f.to_string()))),
        ("REQ", Some(h)) if !h.contains('?') && !h.contains(':') => HeaderName::try_from(h)
            .map(Piece::RequestHeader)
            .map_err(|_| TemplateError::BadHeader(h.to_string())),
        _ => Err(TemplateError::Unsupported(op.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_and_literals() {
        assert_eq!(parse("%PROTOCOL%").unwrap().0, [Piece::Protocol]);
        assert_eq!(
            parse("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;")
                .unwrap()
                .0,
            [
                Piece::Literal("ip=".into()),
                Piece::RemoteAddressWithoutPort,
                Piece::Literal(";".into())
            ]
        );
        assert_eq!(
            parse("%DOWNSTREAM_REMOTE_ADDRESS%%REQ(X-Foo)%").unwrap().0,
            [
                Piece::RemoteAddress,
                Piece::RequestHeader(HeaderName::from_static("x-foo"))
            ]
        );
        assert_eq!(
            parse("%START_TIME(%s.%3f)%").unwrap().0,
            [Piece::StartTime(Some("%s.%3f".into()))]
        );
        assert_eq!(parse("%START_TIME%").unwrap().0, [Piece::StartTime(None)]);
        assert_eq!(parse("100%% sure").unwrap(), Template::literal("100% sure"));
        assert_eq!(parse("").unwrap(), Template::literal(""));
    }

    #[test]
    fn unknown_operators_and_lone_percents_are_refused() {
        assert_eq!(
            parse("%UPSTREAM_HOST%"),
            Err(TemplateError::Unsupported("UPSTREAM_HOST".into()))
        );
        assert_eq!(parse("50% off"), Err(TemplateError::Unterminated));
        assert_eq!(
            parse("%REQ(x-a?x-b)%"),
            Err(TemplateError::Unsupported("REQ(x-a?x-b)".into()))
        );
    }
}
