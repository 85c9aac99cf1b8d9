//! Reads: get and list, with kube-apiserver's resourceVersion semantics (`Exact`,
//! `NotOlderThan`, waiting for a version not yet reached) and continue tokens that
//! page through one snapshot.

use std::time::Duration;

use http::Response;
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response, raw_json};
use super::{Req, State, Target, selectors};
use crate::error::{Cause, Error, Status};
use crate::table;

pub(super) fn get(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.as_deref().unwrap_or("");
    let obj = s
        .store
        .get(&t.key(name))?
        .ok_or_else(|| t.not_found(name))?;
    if table::wants_table(&r.accept) {
        let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
        let tbl = table::table(t.rt, &[obj], meta, r.param("includeObject").unwrap_or(""));
        return Ok(json_response(200, &tbl, table::CONTENT_TYPE));
    }
    Ok(json_response(200, &obj, "application/json"))
}

/// A continue token: the resourceVersion of the list's first page and the key to
/// continue after, so that every page shows the same snapshot (kube-apiserver's tokens
/// carry the same two things).
fn continue_token(rv: u64, key: &str) -> String {
    hex(&json!({"rv": rv, "start": key}).to_string())
}

/// Parses a continue token under `prefix`: (resourceVersion, key). Tokens of earlier
/// versions of this server (a bare key) continue at the current state.
fn parse_continue(c: &str, prefix: &str) -> Result<(Option<u64>, String), Error> {
    let bad = || {
        Status::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = unhex(c).ok_or_else(bad)?;
    let (rv, key) = match serde_json::from_str::<Value>(&raw) {
        Ok(v) if v.is_object() => (
            Some(v["rv"].as_u64().ok_or_else(bad)?),
            v["start"].as_str().ok_or_else(bad)?.to_string(),
        ),
        _ => (None, raw),
    };
    if !key.starts_with(prefix) {
        return Err(bad().into());
    }
    Ok((rv, key))
}

fn list_options_forbidden(field: &str, detail: &str) -> Error {
    let c = Cause::forbidden(field, detail);
    Status::invalid("meta.k8s.io", "ListOptions", "", &[c]).into()
}

/// Waits (up to 3 s, as kube-apiserver) for the store to reach `rv`; 504 otherwise.
fn wait_for_rv(s: &State, rv: u64) -> Result<(), Error> {
    for _ in 0..300 {
        if s.store.current_rv() >= rv {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut st = Status::new(
        504,
        "Timeout",
        format!(
            "Timeout: Too large resource version: {rv}, current: {}",
            s.store.current_rv()
        ),
    );
    st.details = Some(
        json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
    );
    Err(st.into())
}

pub(super) fn list(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let sel = selectors(t, r)?;
    let prefix = t.list_prefix();
    let limit = match r.param("limit") {
        Some(l) if !l.is_empty() => Some(
            l.parse::<usize>()
                .map_err(|_| Status::bad_request(format!("invalid limit: {l:?}")))?,
        ),
        _ => None,
    }
    .filter(|l| *l > 0);
    let rv_param = r.param("resourceVersion").filter(|v| !v.is_empty());
    let rv_match = r.param("resourceVersionMatch").filter(|v| !v.is_empty());
    let parse_rv = |v: &str| {
        v.parse::<u64>().map_err(|_| {
            Error::from(Status::bad_request(format!(
                "invalid resource version: {v:?}"
            )))
        })
    };
    if let Some(m) = rv_match {
        if !matches!(m, "Exact" | "NotOlderThan") {
            return Err(Status::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[Cause::not_supported(
                    "resourceVersionMatch",
                    &json!(m),
                    &["Exact", "NotOlderThan", ""],
                )],
            )
            .into());
        }
        if rv_param.is_none() {
            return Err(list_options_forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if m == "Exact" && rv_param == Some("0") {
            return Err(list_options_forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    // Which state to show: `None` the current one, `Some(rv)` the one at rv.
    let (at, after) = match r.param("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            if rv_param.is_some_and(|v| v != "0") {
                return Err(Status::bad_request(
                    "specifying resource version is not allowed when using continue",
                )
                .into());
            }
            let (rv, key) = parse_continue(c, &prefix)?;
            (rv, Some(key))
        }
        None => match (rv_param, rv_match) {
            (None | Some("0"), _) => (None, None),
            (Some(v), Some("Exact")) => {
                let rv = parse_rv(v)?;
                wait_for_rv(s, rv)?;
                (Some(rv), None)
            }
            // NotOlderThan (also without resourceVersionMatch): anything at least this new.
            (Some(v), _) => {
                wait_for_rv(s, parse_rv(v)?)?;
                (None, None)
            }
        },
    };
    let keep = |o: &Value| sel.matches(o);
    let wants_table = table::wants_table(&r.accept);
    let current = at.is_none_or(|rv| rv == s.store.current_rv());
    if current && !wants_table {
        // Without selectors the stored JSON goes out as is.
        let filter: Option<&dyn Fn(&Value) -> bool> =
            if sel.is_empty() { None } else { Some(&keep) };
        let page = s.store.list_raw(&prefix, after.as_deref(), limit, filter)?;
        // A write between the check and the read: serve the snapshot below instead.
        if at.is_none_or(|rv| rv == page.rv) {
            let mut meta = json!({"resourceVersion": page.rv.to_string()});
            if let Some(next) = &page.next {
                meta["continue"] = json!(continue_token(page.rv, next));
            }
            let head = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": meta});
            let mut body = serde_json::to_vec(&head).unwrap_or_default();
            body.pop(); // the closing brace; items follow
            body.extend_from_slice(b",\"items\":[");
            for (i, item) in page.items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.extend_from_slice(b"]}\n");
            return Ok(raw_json(body));
        }
    }
    let page = match at {
        None if current => s.store.list(&prefix, after.as_deref(), limit, &keep)?,
        _ => {
            let rv = at.unwrap_or_else(|| s.store.current_rv());
            let snapshot = s.store.list_at(&prefix, rv)?.map_err(|too_old| {
                let st = if after.is_some() {
                    Status::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    )
                } else {
                    Status::expired(rv, too_old.oldest)
                };
                Error::from(st)
            })?;
            let mut items = Vec::new();
            let mut next = None;
            let mut last = String::new();
            for (k, o) in snapshot {
                if after.as_deref().is_some_and(|a| k.as_str() <= a) || !keep(&o) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    next = Some(last);
                    break;
                }
                last = k;
                items.push(o);
            }
            crate::store::Page { items, rv, next }
        }
    };
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(next) = &page.next {
        meta["continue"] = json!(continue_token(page.rv, next));
    }
    if wants_table {
        let tbl = table::table(
            t.rt,
            &page.items,
            meta,
            r.param("includeObject").unwrap_or(""),
        );
        return Ok(json_response(200, &tbl, table::CONTENT_TYPE));
    }
    let list = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": meta, "items": page.items});
    Ok(json_response(200, &list, "application/json"))
}

/// Hex, so that a continue token is opaque and URL-safe.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        assert_eq!(
            unhex(&hex("core/pods/default/x")).as_deref(),
            Some("core/pods/default/x")
        );
        let token = continue_token(7, "core/pods/default/x");
        assert_eq!(
            parse_continue(&token, "core/pods/").unwrap(),
            (Some(7), "core/pods/default/x".to_string())
        );
        // A token for another list is refused.
        assert!(parse_continue(&token, "core/services/").is_err());
        assert!(parse_continue("zz", "core/pods/").is_err());
    }
}
