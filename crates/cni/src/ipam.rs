//! IP address management: which pod has which address, per network.
//!
//! State is one JSON file per network (`<dataDir>/<network>/state.json`), changed only
//! under an exclusive `flock` on `<dataDir>/<network>/lock`, and replaced atomically
//! (write a temporary file, then rename). A plugin process killed at any point leaves
//! either the old state or the new one, never half of one, and the kernel drops its lock.
//! What a killed ADD had allocated is freed by DEL or GC, which the runtime calls.
//!
//! Allocation walks forward from the last address handed out in each range, so a
//! freed address is not reused at once (a late packet for the old pod won't reach a
//! new one). The first host address of every range is reserved for the node itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::spec::{Attachment, CniError, code};

/// The allocation state of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last address handed out in each range, keyed by the range.
    #[serde(default)]
    pub last: BTreeMap<IpNet, IpAddr>,
    /// Every allocated address and who has it.
    #[serde(default)]
    pub allocations: BTreeMap<IpAddr, Attachment>,
    /// Every hostPort binding of the network's pods on this node (kept here so that
    /// they change under the same lock as the addresses they point to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostports: Vec<crate::hostport::Binding>,
}

fn offset(ip: IpAddr, by: u128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => {
            let n = u128::from(u32::from(v4)).checked_add(by)?;
            u32::try_from(n).ok().map(|n| IpAddr::V4(n.into()))
        }
        IpAddr::V6(v6) => u128::from(v6).checked_add(by).map(|n| IpAddr::V6(n.into())),
    }
}

/// The first and last address pods may get in `range`: the network address and the
/// node's reserved first host address are skipped, and so is IPv4's broadcast.
fn usable_bounds(range: &IpNet) -> (IpAddr, IpAddr) {
    let first = offset(range.network(), 2).expect("ranges are /30 or larger");
    let last = match range {
        IpNet::V4(net) => IpAddr::V4((u32::from(net.broadcast()) - 1).into()),
        IpNet::V6(net) => IpAddr::V6(net.broadcast()),
    };
    (first, last)
}

impl State {
    /// The addresses held by `key`, in range order.
    pub fn addresses_of(&self, key: &Attachment) -> Vec<IpAddr> {
        self.allocations
            .iter()
            .filter(|(_, k)| *k == key)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Gives `key` one address from each range. Asking again for the same key returns
    /// the same addresses. On exhaustion nothing is allocated.
    pub fn allocate(
        &mut self,
        ranges: &[IpNet],
        key: &Attachment,
    ) -> Result<Vec<IpAddr>, CniError> {
        let held = self.addresses_of(key);
        if !held.is_empty() {
            return Ok(held);
        }
        let mut picked = Vec::with_capacity(ranges.len());
        for range in ranges {
            picked.push(self.next_free(range).ok_or_else(|| {
                CniError::new(
                    code::ADDRESSES_EXHAUSTED,
                    format!("no free address left in {range}"),
                    "every address in the node's pod CIDR is allocated; delete pods or give the node a larger podCIDR",
                )
            })?);
        }
        for (range, ip) in ranges.iter().zip(&picked) {
            self.last.insert(*range, *ip);
            self.allocations.insert(*ip, key.clone());
        }
        Ok(picked)
    }

    /// The next free address in `range` after the last one handed out, wrapping once.
    /// The walk is bounded by the number of allocations: a free address is at most
    /// that many steps away.
    fn next_free(&self, range: &IpNet) -> Option<IpAddr> {
        let (first, last) = usable_bounds(range);
        let start = match self.last.get(range) {
            Some(prev) if range.contains(prev) && *prev >= first && *prev < last => {
                offset(*prev, 1)?
            }
            _ => first,
        };
        let mut candidate = start;
        let mut wrapped = false;
        for _ in 0..=self.allocations.len() + 1 {
            if !self.allocations.contains_key(&candidate) {
                return Some(candidate);
            }
            candidate = if candidate >= last {
                if wrapped {
                    return None;
                }
                wrapped = true;
                first
            } else {
                offset(candidate, 1)?
            };
            if wrapped && candidate >= start {
                return None;
            }
        }
        None
    }

    /// Frees whatever `key` holds; returns it (empty if nothing: DEL is idempotent).
    pub fn release(&mut self, key: &Attachment) -> Vec<IpAddr> {
        let held = self.addresses_of(key);
        for ip in &held {
            self.allocations.remove(ip);
        }
        self.hostports.retain(|b| &b.attachment != key);
        held
    }

    /// Frees every allocation whose attachment is not in `valid`; returns what it freed.
    pub fn gc(&mut self, valid: &BTreeSet<Attachment>) -> Vec<(IpAddr, Attachment)> {
        let stale: Vec<(IpAddr, Attachment)> = self
            .allocations
            .iter()
            .filter(|(_, k)| !valid.contains(*k))
            .map(|(ip, k)| (*ip, k.clone()))
            .collect();
        for (ip, _) in &stale {
            self.allocations.remove(ip);
        }
        self.hostports.retain(|b| valid.contains(&b.attachment));
        stale
    }

    /// Whether every range has a free address (STATUS).
    pub fn has_free(&self, ranges: &[IpNet]) -> Result<(), IpNet> {
        match ranges.iter().find(|r| self.next_free(r).is_none()) {
            Some(full) => Err(*full),
            None => Ok(()),
        }
    }
}

/// The on-disk state of one network.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

fn io_error(op: String, e: io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, op, e.to_string())
}

impl Store {
    /// The store of network `network` under `data_dir` (created on first use).
    pub fn new(data_dir: &Path, network: &str) -> Self {
        Store {
            dir: data_dir.join(network),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Reads the state without taking the lock: for readers (CHECK, STATUS, tests), who
    /// see the old state or the new one, as a write replaces the file atomically.
    pub fn read(&self) -> Result<State, CniError> {
        match fs::read(self.state_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("corrupt IPAM state {}", self.state_path().display()),
                    e.to_string(),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_error(
                format!("reading {}", self.state_path().display()),
                e,
            )),
        }
    }

    /// Runs `change` on the state under the network's exclusive lock and saves the
    /// result atomically if it changed. Concurrent plugin processes queue on the lock.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| io_error(format!("creating {}", self.dir.display()), e))?;
        let lock_path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(format!("opening {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| io_error(format!("locking {}", lock_path.display()), e))?;
        let mut state = self.read()?;
        let before = state.clone();
        let out = change(&mut state)?;
        if state != before {
            self.write(&state)?;
        }
        drop(lock);
        Ok(out)
    }

    fn write(&self, state: &State) -> Result<(), CniError> {
        let tmp = self.dir.join(format!("state.json.{}", std::process::id()));
        let bytes = serde_json::to_vec(state).expect("state serializes");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, &bytes)?;
            // No fsync: the state must survive a killed process (rename is atomic), and
            // after a machine crash every pod namespace is gone anyway and the runtime
            // garbage-collects; an fsync would triple ADD's latency for nothing.
            fs::rename(&tmp, self.state_path())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error(format!("writing {}", self.state_path().display()), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn first_allocation_skips_network_and_node_addresses() {
        let mut st = State::default();
        let ips = st
            .allocate(&nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]), &key("a"))
            .unwrap();
        assert_eq!(
            ips,
            vec![
                "10.244.1.2".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn same_key_gets_the_same_addresses() {
        let mut st = State::default();
        let r = nets(&["10.244.1.0/24"]);
        let a = st.allocate(&r, &key("a")).unwrap();
        assert_eq!(st.allocate(&r, &key("a")).unwrap(), a);
        assert_eq!(st.allocations.len(), 1);
    }

    #[test]
    fn freed_addresses_are_not_reused_at_once() {
        let mut st = State::default();
        let r = nets(&["10.244.1.0/24"]);
        let a = st.allocate(&r, &key("a")).unwrap();
        st.release(&key("a"));
        let b = st.allocate(&r, &key("b")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_small_range_fills_up_wraps_and_reports_exhaustion() {
        let mut st = State::default();
        let r = nets(&["10.0.0.0/29"]); // usable: .2 to .6
        let mut seen = BTreeSet::new();
        for i in 0..5 {
            let ip = st.allocate(&r, &key(&format!("c{i}"))).unwrap()[0];
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(seen.iter().next().unwrap().to_string(), "10.0.0.2");
        assert_eq!(seen.iter().last().unwrap().to_string(), "10.0.0.6");
        let err = st.allocate(&r, &key("full")).unwrap_err();
        assert_eq!(err.code, code::ADDRESSES_EXHAUSTED);
        assert!(err.msg.contains("10.0.0.0/29"));
        assert_eq!(st.has_free(&r), Err(r[0]));
        // Free one in the middle: the walk wraps around to it.
        st.release(&key("c1"));
        assert_eq!(
            st.allocate(&r, &key("new")).unwrap()[0].to_string(),
            "10.0.0.3"
        );
    }

    #[test]
    fn exhaustion_in_one_family_allocates_nothing() {
        let mut st = State::default();
        let r = nets(&["10.0.0.0/30", "fd00::/64"]); // v4 usable: only .2
        st.allocate(&r, &key("a")).unwrap();
        assert!(st.allocate(&r, &key("b")).is_err());
        assert!(st.addresses_of(&key("b")).is_empty());
        assert_eq!(st.allocations.len(), 2);
    }

    #[test]
    fn gc_frees_everything_not_valid() {
        let mut st = State::default();
        let r = nets(&["10.244.1.0/24"]);
        for id in ["a", "b", "c"] {
            st.allocate(&r, &key(id)).unwrap();
        }
        let valid: BTreeSet<_> = [key("b")].into();
        let freed = st.gc(&valid);
        assert_eq!(freed.len(), 2);
        assert_eq!(st.allocations.len(), 1);
        assert_eq!(st.allocations.values().next().unwrap(), &key("b"));
    }

    #[test]
    fn store_persists_and_survives_a_corrupt_free_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let r = nets(&["10.244.1.0/24"]);
        let ip = store.update(|st| st.allocate(&r, &key("a"))).unwrap();
        let again = Store::new(dir.path(), "net").read().unwrap();
        assert_eq!(again.addresses_of(&key("a")), ip);
        // A failed change writes nothing.
        let before = store.read().unwrap();
        let err = store.update(|st| -> Result<(), CniError> {
            st.allocations.clear();
            Err(CniError::new(1, "no", ""))
        });
        assert!(err.is_err());
        assert_eq!(store.read().unwrap(), before);
        // Corrupt state is reported by path, not silently reset.
        std::fs::write(dir.path().join("net/state.json"), b"{garbage").unwrap();
        let err = store.read().unwrap_err();
        assert!(err.msg.contains("corrupt IPAM state"), "{err}");
    }

    #[test]
    fn concurrent_updates_from_threads_never_hand_out_an_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let r = nets(&["10.244.0.0/22"]);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (path, r) = (dir.path().to_owned(), r.clone());
                std::thread::spawn(move || {
                    let store = Store::new(&path, "net");
                    (0..50)
                        .map(|i| {
                            store
                                .update(|st| st.allocate(&r, &key(&format!("t{t}-{i}"))))
                                .unwrap()[0]
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert_eq!(
            Store::new(dir.path(), "net")
                .read()
                .unwrap()
                .allocations
                .len(),
            200
        );
    }
}
