//! Storage: objects as JSON in redb, keyed `group/resource/namespace/name`, with one
//! global resourceVersion that only grows. Every write bumps it and stores it in the
//! same transaction as the object, and the transaction is committed (fsynced) before the
//! write is acknowledged. Watchers read a bounded in-memory event log; a resourceVersion
//! older than the log gets 410 Expired, so clients re-list (kine does the same).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::watch;

use crate::alloc::Allocator;
use crate::error::{Error, storage};

const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const RV_KEY: &str = "resourceVersion";
/// redb's page cache. Its default (1 GiB) would let resident memory grow with the
/// database; reads beyond this come from the kernel's page cache, which is not ours.
const CACHE_BYTES: usize = 16 << 20;
/// The watch log, persisted so that watches resume across a restart: resourceVersion to
/// `{"t": type, "k": key, "o": object, "p": previous}`.
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// Watches from a resourceVersion below this one get 410 (what the log no longer holds).
const LOG_OLDEST_KEY: &str = "logOldest";

thread_local! {
    /// The newest resourceVersion this thread committed with [`Store::write_deferred`].
    static DEFERRED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Takes (and clears) the version this thread's deferred writes must wait for; 0: none.
pub(crate) fn take_deferred() -> u64 {
    DEFERRED.with(|c| c.replace(0))
}

/// How long a deferred write waits for its flush before failing.
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many events the watch log keeps; a watch from further back gets 410.
pub(crate) const DEFAULT_LOG_CAPACITY: usize = 10_000;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, as watchers see it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    /// The storage key.
    pub(crate) key: String,
    /// The object after the change (for DELETED: the last state, with the deletion's
    /// RV), as JSON: the log holds bytes, not decoded values, to stay small.
    pub(crate) object: bytes::Bytes,
    /// For MODIFIED and DELETED: the state before, so that filtered watches can turn an
    /// object entering or leaving their selector into ADDED or DELETED, as
    /// kube-apiserver does, and lists can be served at an older resourceVersion.
    pub(crate) prev: Option<bytes::Bytes>,
    /// The event as watchers get it, made once for all of them.
    pub(crate) line: std::sync::OnceLock<bytes::Bytes>,
}

impl Event {
    pub(crate) fn object_value(&self) -> Value {
        serde_json::from_slice(&self.object).unwrap_or(Value::Null)
    }

    pub(crate) fn prev_value(&self) -> Option<Value> {
        self.prev
            .as_ref()
            .map(|p| serde_json::from_slice(p).unwrap_or(Value::Null))
    }

    /// `{"type":"ADDED","object":{...}}` and a newline, shared by every watcher.
    pub(crate) fn line(&self) -> bytes::Bytes {
        self.line
            .get_or_init(|| {
                let mut b = Vec::with_capacity(self.object.len() + 40);
                b.extend_from_slice(b"{\"type\":\"");
                b.extend_from_slice(self.kind.as_str().as_bytes());
                b.extend_from_slice(b"\",\"object\":");
                b.extend_from_slice(&self.object);
                b.extend_from_slice(b"}\n");
                bytes::Bytes::from(b)
            })
            .clone()
    }
}

struct EventLog {
    events: VecDeque<Arc<Event>>,
    /// Watches starting at a resourceVersion >= this one can be served from the log.
    oldest: u64,
    capacity: usize,
}

/// Why a watch cannot start where it asked.
#[derive(Debug)]
pub(crate) struct TooOld {
    pub(crate) oldest: u64,
}

pub(crate) struct Store {
    db: Database,
    /// Serialises writers so that events enter the log in resourceVersion order.
    writer: Mutex<()>,
    /// One thread at a time makes the commits so far durable (group commit).
    flusher: Mutex<()>,
    /// Events committed but not yet durable, in resourceVersion order.
    unflushed: Mutex<Vec<Event>>,
    /// Signalled when `unflushed` gets events.
    flush_wanted: std::sync::Condvar,
    /// The newest durable resourceVersion.
    durable: std::sync::atomic::AtomicU64,
    log: Mutex<EventLog>,
    rv_tx: watch::Sender<u64>,
    /// Service IP/port allocators, told about every Service write (see `alloc.rs`).
    allocator: std::sync::OnceLock<Arc<Allocator>>,
    /// Told about every commit (the authorizer's view of RBAC objects and pods).
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
}

/// What keeps an in-memory view of stored objects current: told about every commit,
/// in resourceVersion order, as soon as it is visible to readers (before it is durable,
/// as an informer would see it a moment later). It must not write to the store.
pub(crate) trait Observer: Send + Sync {
    fn committed(&self, events: &[Event]);
}

/// Rolls the allocators back unless the transaction committed (also on panic).
struct AllocGuard(Option<Arc<Allocator>>);

impl AllocGuard {
    fn commit(mut self) {
        if let Some(a) = self.0.take() {
            a.commit();
        }
    }
}

impl Drop for AllocGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.rollback();
        }
    }
}

/// A write in progress: read, then put and delete; committed by [`Store::write`].
pub(crate) struct Txn {
    tx: redb::WriteTransaction,
    rv: u64,
    events: Vec<Event>,
    /// Keys with follow-up work (see `gc.rs`), taken by the caller.
    notes: Vec<String>,
    alloc: Option<Arc<Allocator>>,
}

/// One page of a list.
pub(crate) struct Page {
    pub(crate) items: Vec<Value>,
    pub(crate) rv: u64,
    /// Key to continue after, when there are more matching items.
    pub(crate) next: Option<String>,
}

/// One page of a list, as stored bytes.
pub(crate) struct RawPage {
    pub(crate) items: Vec<Vec<u8>>,
    pub(crate) rv: u64,
    pub(crate) next: Option<String>,
}

/// The end of the key range of everything under `prefix` (which ends with `/`).
fn prefix_end(prefix: &str) -> String {
    // '/' + 1 == '0': every key under "a/b/" sorts before "a/b0".
    let mut end = prefix.trim_end_matches('/').to_string();
    end.push('0');
    end
}

impl Store {
    pub(crate) fn open(path: &Path, log_capacity: usize) -> Result<Store, Error> {
        // A server state dropped a moment ago may still be closing (its deletion worker
        // holds it for the length of one pass): wait a little for it.
        let mut tries = 0;
        let db = loop {
            match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.map_err(storage)?,
            }
        };
        let tx = db.begin_write().map_err(storage)?;
        let capacity = log_capacity.max(1);
        let (rv, oldest, events) = {
            tx.open_table(OBJECTS).map_err(storage)?;
            let meta = tx.open_table(META).map_err(storage)?;
            let get = |k: &str| -> Result<Option<u64>, Error> {
                Ok(meta.get(k).map_err(storage)?.map(|g| g.value()))
            };
            let rv = get(RV_KEY)?.unwrap_or(0);
            // A data dir from before the log was persisted: the log starts now.
            let mut oldest = get(LOG_OLDEST_KEY)?.unwrap_or(rv);
            let table = tx.open_table(EVENTS).map_err(storage)?;
            let mut events = VecDeque::new();
            for entry in table.range(oldest.saturating_add(1)..).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                events.push_back(Arc::new(decode_event(k.value(), v.value())?));
            }
            // A smaller capacity than the last run's: keep the newest.
            while events.len() > capacity {
                if let Some(e) = events.pop_front() {
                    oldest = e.rv;
                }
            }
            (rv, oldest, events)
        };
        tx.commit().map_err(storage)?;
        let (rv_tx, _) = watch::channel(rv);
        Ok(Store {
            db,
            writer: Mutex::new(()),
            flusher: Mutex::new(()),
            unflushed: Mutex::new(Vec::new()),
            flush_wanted: std::sync::Condvar::new(),
            durable: std::sync::atomic::AtomicU64::new(rv),
            log: Mutex::new(EventLog {
                events,
                oldest,
                capacity,
            }),
            rv_tx,
            allocator: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Sets the one observer told about every later commit (see [`Observer`]). The
    /// caller loads what is stored before the first write.
    pub(crate) fn set_observer(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Builds the Service allocators from the stored Services; from now on every write
    /// keeps them up to date. Call once, before any write.
    pub(crate) fn set_allocator(&self, ranges: &crate::service::Ranges) -> Result<(), Error> {
        let a = Allocator::new(ranges);
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(OBJECTS).map_err(storage)?;
        let prefix = "core/services/";
        let mut services = Vec::new();
        for entry in t
            .range(prefix..prefix_end(prefix).as_str())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            services.push((k.value().to_string(), decode(v.value())?));
        }
        a.rebuild(services.iter().map(|(k, v)| (k.as_str(), v)));
        let _ = self.allocator.set(Arc::new(a));
        Ok(())
    }

    /// The objects under `prefix` as they were at resourceVersion `at`: the current
    /// ones with the logged changes after `at` undone. `Err(TooOld)` when the log no
    /// longer reaches back to `at`; `at` must not be newer than the current version.
    pub(crate) fn list_at(
        &self,
        prefix: &str,
        at: u64,
    ) -> Result<Result<std::collections::BTreeMap<String, Value>, TooOld>, Error> {
        for _ in 0..5000 {
            let tx = self.db.begin_read().map_err(storage)?;
            let rv = stored_rv(&tx)?;
            let events = match self.events_after(at) {
                Ok(e) => e,
                Err(too_old) => return Ok(Err(too_old)),
            };
            // A commit this read sees but whose events are not logged yet: look again.
            if rv > at && events.last().is_none_or(|e| e.rv < rv) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let t = tx.open_table(OBJECTS).map_err(storage)?;
            let end = prefix_end(prefix);
            let mut items = std::collections::BTreeMap::new();
            for entry in t.range(prefix..end.as_str()).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                items.insert(k.value().to_string(), decode(v.value())?);
            }
            for e in events.iter().rev().filter(|e| e.rv <= rv) {
                if !e.key.starts_with(prefix) {
                    continue;
                }
                match (&e.kind, e.prev_value()) {
                    (EventType::Added, _) | (_, None) => {
                        items.remove(&e.key);
                    }
                    (_, Some(prev)) => {
                        items.insert(e.key.clone(), prev);
                    }
                }
            }
            return Ok(Ok(items));
        }
        Err(Error::Internal(
            "the watch log did not catch up with the database".into(),
        ))
    }

    pub(crate) fn current_rv(&self) -> u64 {
        *self.rv_tx.borrow()
    }

    /// Notified after every commit with the new resourceVersion.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Value>, Error> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(OBJECTS).map_err(storage)?;
        let v = t.get(key).map_err(storage)?;
        v.map(|g| decode(g.value())).transpose()
    }

    /// Objects under `prefix` (`core/pods/` or `core/pods/default/`), in key order, after
    /// `after` when continuing, keeping those `keep` accepts, at most `limit` of them.
    pub(crate) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        keep: &dyn Fn(&Value) -> bool,
    ) -> Result<Page, Error> {
        let raw = self.list_raw(prefix, after, limit, Some(keep))?;
        let items = raw
            .items
            .iter()
            .map(|b| decode(b))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            rv: raw.rv,
            next: raw.next,
        })
    }

    /// [`Store::list`] returning the stored JSON as is: a list without selectors is
    /// spliced into the response without decoding a single object.
    pub(crate) fn list_raw(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        keep: Option<&dyn Fn(&Value) -> bool>,
    ) -> Result<RawPage, Error> {
        let tx = self.db.begin_read().map_err(storage)?;
        let rv = stored_rv(&tx)?;
        let t = tx.open_table(OBJECTS).map_err(storage)?;
        let end = prefix_end(prefix);
        let start = after.unwrap_or(prefix);
        let mut items = Vec::new();
        let mut next = None;
        let mut last = String::new();
        for entry in t.range(start..end.as_str()).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if Some(k.value()) == after {
                continue;
            }
            if let Some(keep) = keep
                && !keep(&decode(v.value())?)
            {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = Some(last);
                break;
            }
            last = k.value().to_string();
            items.push(v.value().to_vec());
        }
        Ok(RawPage { items, rv, next })
    }

    /// Calls `f` with the key and stored JSON of every object under `prefix`, in key
    /// order, from one snapshot, without copying them out.
    pub(crate) fn for_each(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &[u8]),
    ) -> Result<(), Error> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(OBJECTS).map_err(storage)?;
        let end = prefix_end(prefix);
        for entry in t.range(prefix..end.as_str()).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    /// Runs `f` in one write transaction and commits it durably; on error nothing is written.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.write_opts(false, f)
    }

    /// [`Store::write`], or with `dry_run` everything but the commit (`?dryRun=All`).
    pub(crate) fn write_opts<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Txn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (out, rv) = self.commit(dry_run, f)?;
        if let Some(rv) = rv {
            self.flush(rv)?;
        }
        Ok(out)
    }

    /// [`Store::write_opts`] without waiting for durability: the commit is visible, and
    /// the flusher thread ([`Store::flush_all`]) makes it durable. The caller must not
    /// acknowledge the write before [`Store::wait_durable`] with the version that
    /// [`take_deferred`] returns on this thread.
    pub(crate) fn write_deferred<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Txn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (out, rv) = self.commit(dry_run, f)?;
        if let Some(rv) = rv {
            DEFERRED.with(|c| c.set(c.get().max(rv)));
            self.flush_wanted.notify_one();
        }
        Ok(out)
    }

    /// Waits (without holding a thread) until `rv` is durable.
    pub(crate) async fn wait_durable(&self, rv: u64) -> Result<(), Error> {
        let mut rx = self.rv_tx.subscribe();
        match tokio::time::timeout(DURABLE_WAIT, rx.wait_for(|v| *v >= rv)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NotDurable { rv }),
        }
    }

    /// Makes every commit so far durable; returns at once when there is none. Waits up
    /// to `idle` for one first.
    pub(crate) fn flush_all(&self, idle: std::time::Duration) -> Result<(), Error> {
        let last = {
            let u = self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
            let u = if u.is_empty() {
                self.flush_wanted
                    .wait_timeout(u, idle)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            } else {
                u
            };
            u.last().map(|e| e.rv)
        };
        match last {
            Some(rv) => self.flush(rv),
            None => Ok(()),
        }
    }

    /// One write transaction, committed without fsync: (result, the new
    /// resourceVersion when something was written).
    fn commit<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Txn) -> Result<T, Error>,
    ) -> Result<(T, Option<u64>), Error> {
        let asked = std::time::Instant::now();
        let rv = {
            let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let locked = asked.elapsed();
            let mut tx = self.db.begin_write().map_err(storage)?;
            // Group commit: this commit is made visible at once and durable by the next
            // flush, which fsyncs once for every commit made meanwhile; the write is
            // acknowledged (and its events reach watchers) only after that flush.
            tx.set_durability(redb::Durability::None).map_err(storage)?;
            let rv = {
                let meta = tx.open_table(META).map_err(storage)?;
                meta.get(RV_KEY)
                    .map_err(storage)?
                    .map(|g| g.value())
                    .unwrap_or(0)
            };
            let alloc = self.allocator.get().cloned();
            // Dropped without `commit` (an error, a dry run, a panic): the allocators
            // forget what this transaction took and hold again what it freed.
            let guard = AllocGuard(alloc.clone());
            let mut txn = Txn {
                tx,
                rv,
                events: Vec::new(),
                notes: Vec::new(),
                alloc,
            };
            let out = f(&mut txn)?;
            let Txn { tx, rv, events, .. } = txn;
            if events.is_empty() || dry_run {
                tx.abort().map_err(storage)?;
                return Ok((out, None));
            }
            {
                let mut meta = tx.open_table(META).map_err(storage)?;
                meta.insert(RV_KEY, rv).map_err(storage)?;
                let mut table = tx.open_table(EVENTS).map_err(storage)?;
                for e in &events {
                    table
                        .insert(e.rv, encode_event(e).as_slice())
                        .map_err(storage)?;
                }
            }
            tx.commit().map_err(storage)?;
            guard.commit();
            // Still under the writer lock: the observer sees commits in order.
            if let Some(o) = self.observer.get() {
                o.committed(&events);
            }
            self.unflushed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(events);
            // Where a write's time goes (`RUST_LOG=apiserver::store=debug`): waiting for
            // the writer lock, then the transaction under it.
            tracing::debug!(rv, waited = ?locked, held = ?asked.elapsed() - locked, "committed");
            (rv, out)
        };
        let (rv, out) = rv;
        Ok((out, Some(rv)))
    }

    /// Makes every commit up to `rv` durable (one fsync for all commits made since the
    /// last flush), trims the persisted log, then hands their events to watchers.
    fn flush(&self, rv: u64) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        let asked = std::time::Instant::now();
        let _f = self.flusher.lock().unwrap_or_else(|p| p.into_inner());
        if self.durable.load(Ordering::Acquire) >= rv {
            return Ok(()); // another thread's flush covered this commit
        }
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let locked = asked.elapsed();
        let events = std::mem::take(&mut *self.unflushed.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(target) = events.last().map(|e| e.rv) else {
            return Ok(()); // nothing left: an earlier flush covered it
        };
        // The log entries that fall out of the bounded log with these events.
        let (drop_upto, new_oldest) = {
            let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let total = log.events.len() + events.len();
            let over = total.saturating_sub(log.capacity);
            let last_dropped = if over == 0 {
                None
            } else if over <= log.events.len() {
                log.events.get(over - 1).map(|e| e.rv)
            } else {
                events.get(over - log.events.len() - 1).map(|e| e.rv)
            };
            (last_dropped, last_dropped.unwrap_or(log.oldest))
        };
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut meta = tx.open_table(META).map_err(storage)?;
            meta.insert(LOG_OLDEST_KEY, new_oldest).map_err(storage)?;
            if let Some(upto) = drop_upto {
                let mut table = tx.open_table(EVENTS).map_err(storage)?;
                table.retain_in(..=upto, |_, _| false).map_err(storage)?;
            }
        }
        if let Err(e) = tx.commit() {
            // Not durable: put the events back for the next flush to try again.
            let mut u = self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
            let later = std::mem::take(&mut *u);
            *u = events;
            u.extend(later);
            return Err(storage(e));
        }
        self.durable.store(target, Ordering::Release);
        tracing::debug!(
            rv = target,
            events = events.len(),
            waited = ?locked,
            committed = ?asked.elapsed() - locked,
            "flushed"
        );
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                log.events.push_back(Arc::new(e));
            }
            while log.events.len() > log.capacity {
                if let Some(e) = log.events.pop_front() {
                    log.oldest = e.rv;
                }
            }
        }
        self.rv_tx.send_replace(target);
        Ok(())
    }

    /// Events after `rv` (in order), or [`TooOld`] when the log no longer reaches back there.
    pub(crate) fn events_after(&self, rv: u64) -> Result<Vec<Arc<Event>>, TooOld> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if rv < log.oldest {
            return Err(TooOld { oldest: log.oldest });
        }
        let start = log.events.partition_point(|e| e.rv <= rv);
        Ok(log.events.range(start..).cloned().collect())
    }
}

fn encode_event(e: &Event) -> Vec<u8> {
    let head = serde_json::json!({"t": e.kind.as_str(), "k": e.key});
    let mut b = serde_json::to_vec(&head).unwrap_or_default();
    b.pop(); // the closing brace: the stored JSON of the object follows as is
    b.extend_from_slice(b",\"o\":");
    b.extend_from_slice(&e.object);
    b.extend_from_slice(b",\"p\":");
    match &e.prev {
        Some(p) => b.extend_from_slice(p),
        None => b.extend_from_slice(b"null"),
    }
    b.push(b'}');
    b
}

/// The resourceVersion a read transaction sees.
fn stored_rv(tx: &redb::ReadTransaction) -> Result<u64, Error> {
    let meta = tx.open_table(META).map_err(storage)?;
    let rv = meta.get(RV_KEY).map_err(storage)?.map(|g| g.value());
    Ok(rv.unwrap_or(0))
}

fn decode_event(rv: u64, bytes: &[u8]) -> Result<Event, Error> {
    let v = decode(bytes)?;
    let kind = match v["t"].as_str() {
        Some("ADDED") => EventType::Added,
        Some("MODIFIED") => EventType::Modified,
        Some("DELETED") => EventType::Deleted,
        other => {
            return Err(Error::Corrupt {
                what: format!("event {rv}: type {other:?}"),
                source: None,
            });
        }
    };
    let raw = |v: &Value| bytes::Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let prev = match &v["p"] {
        Value::Null => None,
        p => Some(raw(p)),
    };
    Ok(Event {
        rv,
        kind,
        key: v["k"].as_str().unwrap_or("").to_string(),
        object: raw(&v["o"]),
        prev,
        line: std::sync::OnceLock::new(),
    })
}

fn decode(bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        what: "object".into(),
        source: Some(e),
    })
}

/// Where Services are stored (their writes update the allocators).
const SERVICES: &str = "core/services/";

impl Txn {
    /// The Service allocators (absent only in store tests that do not set them).
    pub(crate) fn allocator(&self) -> Option<&Allocator> {
        self.alloc.as_deref()
    }

    /// Notes a key that has work left after this transaction.
    pub(crate) fn note(&mut self, key: &str) {
        self.notes.push(key.to_string());
    }

    /// The keys noted so far.
    pub(crate) fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Value>, Error> {
        let t = self.tx.open_table(OBJECTS).map_err(storage)?;
        let v = t.get(key).map_err(storage)?;
        v.map(|g| decode(g.value())).transpose()
    }

    /// All objects under `prefix`, with their keys.
    pub(crate) fn scan(&self, prefix: &str) -> Result<Vec<(String, Value)>, Error> {
        let t = self.tx.open_table(OBJECTS).map_err(storage)?;
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        for entry in t.range(prefix..end.as_str()).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// The objects under `prefix` that could contain the string `text` (as a JSON
    /// string value or key): only those are decoded, so finding the few that name an
    /// uid costs a byte search per object, not a parse. A text that JSON would escape is
    /// not searched for in bytes: then every object is returned.
    pub(crate) fn scan_mentioning(
        &self,
        prefix: &str,
        text: &str,
    ) -> Result<Vec<(String, Value)>, Error> {
        let plain = !text
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control());
        let finder = memchr::memmem::Finder::new(text.as_bytes());
        let t = self.tx.open_table(OBJECTS).map_err(storage)?;
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        for entry in t.range(prefix..end.as_str()).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if plain && finder.find(v.value()).is_none() {
                continue;
            }
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// Stores `obj` under `key` with the next resourceVersion and returns it as stored.
    pub(crate) fn put(
        &mut self,
        key: &str,
        mut obj: Value,
        kind: EventType,
    ) -> Result<Value, Error> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let bytes = bytes::Bytes::from(serde_json::to_vec(&obj).map_err(Error::Encode)?);
        if let Some(a) = &self.alloc
            && key.starts_with(SERVICES)
        {
            a.record(key, Some(&obj));
        }
        let mut t = self.tx.open_table(OBJECTS).map_err(storage)?;
        let prev = t.insert(key, &bytes[..]).map_err(storage)?;
        let prev = match (kind, prev) {
            (EventType::Modified, Some(g)) => Some(bytes::Bytes::copy_from_slice(g.value())),
            _ => None,
        };
        self.events.push(Event {
            rv: self.rv,
            kind,
            key: key.to_string(),
            object: bytes,
            prev,
            line: std::sync::OnceLock::new(),
        });
        Ok(obj)
    }

    /// Removes `key`; `last` is its last state, returned with the deletion's resourceVersion.
    pub(crate) fn delete(&mut self, key: &str, mut last: Value) -> Result<Value, Error> {
        self.rv += 1;
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        if let Some(a) = &self.alloc
            && key.starts_with(SERVICES)
        {
            a.record(key, None);
        }
        let mut t = self.tx.open_table(OBJECTS).map_err(storage)?;
        let prev = t
            .remove(key)
            .map_err(storage)?
            .map(|g| bytes::Bytes::copy_from_slice(g.value()));
        self.events.push(Event {
            rv: self.rv,
            kind: EventType::Deleted,
            key: key.to_string(),
            object: bytes::Bytes::from(serde_json::to_vec(&last).unwrap_or_default()),
            prev,
            line: std::sync::OnceLock::new(),
        });
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(dir: &tempfile::TempDir, cap: usize) -> Store {
        Store::open(&dir.path().join("db"), cap).unwrap()
    }

    /// Creates `obj` at `key` in a transaction of its own.
    fn add(s: &Store, key: &str, obj: Value) {
        s.write(|t| t.put(key, obj, EventType::Added)).unwrap();
    }

    #[test]
    fn rv_grows_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(&dir, 10);
            add(
                &s,
                "core/pods/a/x",
                json!({"metadata":{"name":"x","namespace":"a"}}),
            );
            add(
                &s,
                "core/pods/b/y",
                json!({"metadata":{"name":"y","namespace":"b"}}),
            );
            assert_eq!(s.current_rv(), 2);
        }
        let s = store(&dir, 10);
        assert_eq!(s.current_rv(), 2);
        let x = s.get("core/pods/a/x").unwrap().unwrap();
        assert_eq!(x["metadata"]["resourceVersion"], "1");
        // The log is persisted: a watch resumes after a restart.
        assert_eq!(s.events_after(0).unwrap().len(), 2);
        assert_eq!(s.events_after(1).unwrap()[0].key, "core/pods/b/y");
        assert!(s.events_after(2).unwrap().is_empty());
    }

    #[test]
    fn scan_mentioning_decodes_only_objects_that_name_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 10);
        let owned = |uid: &str| json!({"metadata":{"ownerReferences":[{"uid": uid}]}});
        add(&s, "core/pods/a/x", owned("u-1"));
        add(&s, "core/pods/a/y", owned("u-2"));
        add(&s, "core/pods/b/z", owned("u-1"));
        add(&s, "core/pods/a/q", owned("say \"u-1\""));
        let keys = |text: &str| -> Vec<String> {
            s.write(|t| t.scan_mentioning("core/pods/a/", text))
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        // In prefix order; an object that names it inside another string is returned
        // too (the caller reads the field it means).
        assert_eq!(keys("u-1"), ["core/pods/a/q", "core/pods/a/x"]);
        assert_eq!(keys("u-3"), Vec::<String>::new());
        // A text JSON escapes cannot be found as bytes: everything is returned.
        assert_eq!(keys("\"u-1\"").len(), 3);
        // Written in the same transaction: seen before the commit.
        let seen = s
            .write(|t| {
                t.put("core/pods/a/new", owned("u-9"), EventType::Added)?;
                t.scan_mentioning("core/pods/a/", "u-9")
            })
            .unwrap();
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn failed_write_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 10);
        let r: Result<(), Error> = s.write(|t| {
            t.put("core/pods/a/x", json!({"metadata":{}}), EventType::Added)?;
            Err(Error::Internal("refused".into()))
        });
        assert!(r.is_err());
        assert_eq!(s.current_rv(), 0);
        assert!(s.get("core/pods/a/x").unwrap().is_none());
    }

    #[test]
    fn list_pages_and_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 10);
        for (ns, n) in [("a", "p1"), ("a", "p2"), ("b", "p3")] {
            add(
                &s,
                &format!("core/pods/{ns}/{n}"),
                json!({"metadata":{"name":n,"namespace":ns}}),
            );
        }
        add(
            &s,
            "core/podsx/a/q",
            json!({"metadata":{"name":"q","namespace":"a"}}),
        );
        let all = s.list("core/pods/", None, None, &|_| true).unwrap();
        assert_eq!(all.items.len(), 3);
        let a = s.list("core/pods/a/", None, None, &|_| true).unwrap();
        assert_eq!(a.items.len(), 2);
        let p = s.list("core/pods/", None, Some(2), &|_| true).unwrap();
        assert_eq!(p.items.len(), 2);
        let next = p.next.unwrap();
        assert_eq!(next, "core/pods/a/p2");
        let p2 = s
            .list("core/pods/", Some(&next), Some(2), &|_| true)
            .unwrap();
        assert_eq!(p2.items.len(), 1);
        assert!(p2.next.is_none());
    }

    #[test]
    fn log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 3);
        for i in 0..5 {
            add(&s, &format!("core/pods/a/p{i}"), json!({"metadata":{}}));
        }
        assert_eq!(s.events_after(5).unwrap().len(), 0);
        assert_eq!(s.events_after(2).unwrap().len(), 3);
        assert_eq!(s.events_after(1).unwrap_err().oldest, 2);
        // The bound and what fell out of it survive a restart.
        drop(s);
        let s = store(&dir, 3);
        assert_eq!(s.events_after(2).unwrap().len(), 3);
        assert_eq!(s.events_after(1).unwrap_err().oldest, 2);
        // A smaller bound after a restart keeps the newest events.
        drop(s);
        let s = store(&dir, 2);
        assert_eq!(s.events_after(3).unwrap().len(), 2);
        assert!(s.events_after(2).is_err());
    }

    #[test]
    fn lists_at_an_older_version_undo_later_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 10);
        let put = |k: &str, v: i64| {
            s.write(|t| t.put(k, json!({"metadata":{}, "v": v}), EventType::Modified))
                .unwrap();
        };
        put("core/configmaps/a/x", 1); // rv 1
        put("core/configmaps/a/y", 1); // rv 2
        put("core/configmaps/a/x", 2); // rv 3
        s.write(|t| {
            let o = t.get("core/configmaps/a/y")?.unwrap();
            t.delete("core/configmaps/a/y", o)
        })
        .unwrap(); // rv 4
        put("core/configmaps/a/z", 1); // rv 5
        let at = |rv| s.list_at("core/configmaps/", rv).unwrap().unwrap();
        let v = |m: &std::collections::BTreeMap<String, Value>, k: &str| {
            m.get(k).map(|o| o["v"].clone())
        };
        let m2 = at(2);
        assert_eq!(m2.len(), 2);
        assert_eq!(v(&m2, "core/configmaps/a/x"), Some(json!(1)));
        assert_eq!(
            m2["core/configmaps/a/x"]["metadata"]["resourceVersion"],
            "1"
        );
        let m4 = at(4);
        assert_eq!(m4.keys().collect::<Vec<_>>(), ["core/configmaps/a/x"]);
        assert_eq!(at(5).len(), 2);
        assert_eq!(at(0).len(), 0);
    }
}
