//! Watches: the current state as ADDED events (or from a resourceVersion on), then the
//! store's event log, filtered by the selectors, with bookmarks and a timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::response::{ResponseBody, full_body, stream_body};
use super::{Req, State, Target, selectors};
use crate::error::{Cause, Error, Status};
use crate::selector::FieldSelector;
use crate::store::EventType;

/// Watches without `timeoutSeconds` end after this long (kube-apiserver picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub(super) async fn watch(
    state: Arc<State>,
    t: Target,
    r: Req,
) -> Result<Response<ResponseBody>, Error> {
    let mut sel = selectors(&t, &r)?;
    if let Some(name) = &t.name {
        // GET .../pods/NAME?watch=true watches that one object.
        sel.fields = FieldSelector::parse(&format!("metadata.name={name}"), t.rt.kind)?;
    }
    let prefix = t.list_prefix();
    let bookmarks = r.flag("allowWatchBookmarks");
    let send_initial = r.flag("sendInitialEvents");
    if send_initial && !bookmarks {
        return Err(Status::invalid(
            t.rt.group,
            t.rt.kind,
            "",
            &[Cause::invalid(
                "allowWatchBookmarks",
                &json!(false),
                "sendInitialEvents requires setting allowWatchBookmarks=true",
            )],
        )
        .into());
    }
    let timeout = match r
        .param("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => DEFAULT_WATCH_TIMEOUT,
    };
    let start = match r.param("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| Status::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    // With no resourceVersion (or "0") the watch starts with the current state as ADDED
    // events, like kube-apiserver's; sendInitialEvents does the same from any start.
    let initial = if start.is_none() || send_initial {
        let st = state.clone();
        let prefix = prefix.clone();
        let sel2 = sel.clone();
        let page = tokio::task::spawn_blocking(move || {
            st.store.list(&prefix, None, None, &|o| sel2.matches(o))
        })
        .await
        .map_err(Error::Task)??;
        Some(page)
    } else {
        None
    };
    let mut from = initial.as_ref().map(|p| p.rv).or(start).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let rt = t.rt;
    tokio::spawn(async move {
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
            )
        };
        if let Some(page) = initial {
            for o in &page.items {
                if tx.send(event_line("ADDED", o)).await.is_err() {
                    return;
                }
            }
            if send_initial && tx.send(bookmark(page.rv, true)).await.is_err() {
                return;
            }
        }
        let mut notify = state.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            notify.borrow_and_update();
            match state.store.events_after(from) {
                Err(too_old) => {
                    let st = Status::expired(from, too_old.oldest);
                    let _ = tx.send(event_line("ERROR", &st.to_json())).await;
                    return;
                }
                Ok(events) => {
                    for e in events {
                        from = e.rv;
                        if !e.key.starts_with(&prefix) {
                            continue;
                        }
                        // Decoding is only needed to filter.
                        let (now, before) = if sel.is_empty() {
                            (true, e.prev.as_ref().map(|_| true))
                        } else {
                            (
                                sel.matches(&e.object_value()),
                                e.prev_value().map(|p| sel.matches(&p)),
                            )
                        };
                        let ty = match (e.kind, before, now) {
                            (EventType::Modified, Some(false), true) => "ADDED",
                            (EventType::Modified, Some(true), false) => "DELETED",
                            (_, _, true) => e.kind.as_str(),
                            _ => continue,
                        };
                        let line = if ty == e.kind.as_str() {
                            e.line()
                        } else {
                            event_line(ty, &e.object_value())
                        };
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                changed = notify.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick() => {
                    if bookmarks && tx.send(bookmark(from, false)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(stream_body(rx))
        .unwrap_or_else(|_| Response::new(full_body(""))))
}
