//! Only the flags that differ from a daemon's defaults, so that a manifest says what it
//! chose and nothing the daemon would do anyway.

use std::ffi::OsString;

/// The flags of a daemon's `to_args` output as `(name, value)`: `--a=b` and `--a b`
/// are the same flag, a `--switch` has no value.
fn parse(args: &[OsString]) -> Vec<(String, Option<String>)> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if let Some((name, value)) = arg.split_once('=') {
            out.push((name.to_owned(), Some(value.to_owned())));
        } else if args.get(i + 1).is_some_and(|next| !next.starts_with("--")) {
            out.push((arg.clone(), Some(args[i + 1].clone())));
            i += 1;
        } else {
            out.push((arg.clone(), None));
        }
        i += 1;
    }
    out
}

/// The flags of `args` whose values differ from those in `defaults`, as `--name=value`
/// (or `--name`), in `args`' order. A repeated flag is kept whole when any of its values
/// differs.
pub(crate) fn non_default(args: &[OsString], defaults: &[OsString]) -> Vec<String> {
    let (args, defaults) = (parse(args), parse(defaults));
    let values = |all: &[(String, Option<String>)], name: &str| -> Vec<Option<String>> {
        all.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    args.iter()
        .filter(|(name, _)| values(&args, name) != values(&defaults, name))
        .map(|(name, value)| match value {
            Some(v) => format!("{name}={v}"),
            None => name.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_what_differs_in_one_style() {
        let defaults = os(&[
            "--node-name",
            "n",
            "--mode=native",
            "--listen",
            ":53",
            "--proxy=true",
        ]);
        let args = os(&[
            "--node-name",
            "n",
            "--mode=vxlan",
            "--listen",
            ":53",
            "--listen",
            ":5353",
            "--proxy=true",
            "--cleanup",
        ]);
        assert_eq!(
            non_default(&args, &defaults),
            [
                "--mode=vxlan",
                "--listen=:53",
                "--listen=:5353",
                "--cleanup"
            ]
        );
        assert!(non_default(&defaults, &defaults).is_empty());
    }
}
