//! Applying rulesets to the kernel: the first sync in full, then only differences.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s::ErrorChain;
use netlink::nft::{Batch, Family, NftSocket, Set, SetElement, Table};

use crate::diff::diff;
use crate::ruleset::{FamilyRuleset, Node, Ruleset, TABLE, names};
use crate::view::{ServiceKey, View};

/// What can go wrong while applying rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the batch, or it could not be sent; being atomic, the batch
    /// changed nothing. Retryable: the next [`Proxier::sync`] sends the whole ruleset
    /// again, replacing whatever the tables hold.
    #[error("applying the service proxy's nftables changes ({messages} messages)")]
    Apply {
        /// Messages in the refused batch.
        messages: usize,
        /// The kernel's answer.
        #[source]
        source: netlink::Error,
    },
    /// Removing the tables failed for one family or more; the others were removed.
    /// Retryable.
    #[error("removing the service proxy's tables: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Cleanup(Vec<netlink::Error>),
    /// No nf_tables socket could be opened (not root, no nf_tables). Not retryable.
    #[error("opening the service proxy's nf_tables socket")]
    Socket(#[source] netlink::Error),
    /// The API watches ended. Retryable by restarting the proxy.
    #[error("the watches of services, endpoint slices and the node ended")]
    WatchEnded,
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the whole ruleset was sent (first sync, or after a failure).
    pub full: bool,
    /// Netlink messages in the batch (0: nothing changed, nothing sent).
    pub messages: usize,
    /// Encoded size of the batch in bytes.
    pub bytes: usize,
}

/// Keeps the kernel's tables equal to the desired ruleset, remembering what it applied
/// last so that each sync sends only the difference.
#[derive(Debug)]
pub struct Proxier {
    socket: NftSocket,
    /// What the kernel holds, when known: `None` before the first sync and after a
    /// failed one.
    applied: Option<Ruleset>,
    /// The handles of the tables the last full sync made, by family: a table deleted
    /// (and perhaps made again) by someone else has another handle, or none.
    tables: Vec<(Family, u64)>,
    /// The ruleset generation after this proxier's last commit.
    generation: Option<u32>,
}

impl Proxier {
    /// A proxier applying through `socket` (opened in the node's namespace).
    pub fn new(socket: NftSocket) -> Self {
        Proxier {
            socket,
            applied: None,
            tables: Vec::new(),
            generation: None,
        }
    }

    /// Whether the kernel still holds the tables this proxier filled, as it filled
    /// them. Cheap when nothing changed: nobody committed anything since its own last
    /// batch (one request). Otherwise it asks for each table's handle (a table deleted,
    /// or deleted and made again, has another or none), lists each table's rules and
    /// compares the count in each chain with what it applied (a table or chain flushed
    /// by hand, or by a firewall reload, has lost them: the table holds a few dozen
    /// rules, none per service), and lists the small verdict map of classes (flushed,
    /// no service would answer). Elements of the other sets and maps, which hold the
    /// services, are not listed: at 50,000 services that would cost more than any
    /// change. When the tables are not intact, the next sync puts everything back.
    pub fn intact(&mut self) -> bool {
        if self.applied.is_none() {
            return false;
        }
        let Ok(generation) = self.socket.generation() else {
            return false;
        };
        if self.generation == Some(generation) {
            return true;
        }
        let intact = self.tables_intact();
        if intact {
            self.generation = Some(generation);
        } else {
            self.applied = None;
        }
        intact
    }

    fn tables_intact(&mut self) -> bool {
        let Proxier {
            socket,
            applied,
            tables,
            ..
        } = self;
        let Some(applied) = applied else {
            return false;
        };
        let handles = tables.iter().all(|(family, handle)| {
            matches!(socket.table_handle(*family, TABLE), Ok(Some(h)) if h == *handle)
        });
        handles && applied.families.iter().all(|f| {
            let Ok(listed) = socket.rules(f.family, TABLE) else {
                return false;
            };
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for r in listed {
                *counts.entry(r.chain).or_default() += 1;
            }
            let Some(classes) = f.set(names::CLASSES) else {
                return false;
            };
            counts == f.rule_counts()
                && matches!(socket.elements(&classes.set), Ok(Some(e)) if e.len() == classes.len())
        })
    }

    /// Remembers what the kernel holds after a batch of ours was committed: the
    /// generation and, after a full sync, the tables' handles.
    fn committed(&mut self, full: bool) {
        self.generation = self.socket.generation().ok();
        if full && let Some(applied) = &self.applied {
            let families: Vec<Family> = applied.families.iter().map(|f| f.family).collect();
            self.tables = families
                .into_iter()
                .filter_map(|f| Some((f, self.socket.table_handle(f, TABLE).ok()??)))
                .collect();
        }
    }

    /// The ruleset the kernel holds, as far as this proxier knows.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// The batch the next [`sync`](Self::sync) to `desired` would send (but for the
    /// session-affinity entries a full sync carries over).
    pub fn plan(&self, desired: &Ruleset) -> Batch {
        match &self.applied {
            Some(applied) => diff(applied, desired),
            None => full_sync(desired),
        }
    }

    /// Makes the kernel hold `desired`, in one atomic batch. A full sync (the first,
    /// or after a failure or a table found changed) replaces the tables and carries
    /// over the session-affinity entries the old ones held that `desired` still
    /// allows (their destination has affinity and the endpoint is still one of its
    /// own), each with the time it had left: a restart of the agent keeps its clients
    /// where they were.
    pub fn sync(&mut self, desired: Ruleset) -> Result<SyncReport, Error> {
        let batch = match &self.applied {
            Some(applied) => diff(applied, &desired),
            None => {
                let mut batch = full_sync(&desired);
                let carried = self.carried_affinity(&desired);
                let n: usize = carried.iter().map(|(_, e)| e.len()).sum();
                for (set, elements) in &carried {
                    batch.add_elements(set, elements);
                }
                if n > 0 {
                    tracing::info!(
                        entries = n,
                        "session affinity entries kept from the tables replaced"
                    );
                }
                batch
            }
        };
        let report = SyncReport {
            full: self.applied.is_none(),
            messages: batch.len(),
            bytes: batch.encoded_len(),
        };
        if let Err(source) = self.socket.apply(&batch) {
            self.applied = None;
            return Err(Error::Apply {
                messages: batch.len(),
                source,
            });
        }
        tracing::debug!(
            full = report.full,
            messages = report.messages,
            bytes = report.bytes,
            "service rules synced"
        );
        self.applied = Some(desired);
        self.committed(report.full);
        Ok(report)
    }

    /// Brings the kernel up to date after the services in `changed` changed (added,
    /// modified, deleted, or their endpoints changed), recomputing only those: the cost
    /// follows the change, not the cluster. The first call, or the first after a
    /// failure, syncs everything. `node` must not change between calls (if it does,
    /// use [`sync`](Self::sync) with a full [`desired`](crate::desired)).
    pub fn update(
        &mut self,
        view: &View,
        node: &Node,
        changed: &BTreeSet<ServiceKey>,
    ) -> Result<SyncReport, Error> {
        let Some(applied) = &mut self.applied else {
            return self.sync(crate::desired(view, node));
        };
        // A service with session affinity that lost an endpoint (or its affinity, or
        // went) leaves entries that send clients where they must not go any more: they
        // are deleted in the same transaction. An endpoint added leaves none, and costs
        // no listing of the clients.
        let pairs = |applied: &Ruleset| -> Vec<_> {
            applied
                .families
                .iter()
                .flat_map(|f| changed.iter().map(move |k| f.affinity_pairs(k)))
                .collect()
        };
        let before = pairs(applied);
        let mut batch = Batch::new();
        crate::diff::update(&mut batch, applied, view, node, changed);
        let affinity = before
            .iter()
            .zip(pairs(applied))
            .any(|(old, new)| !old.is_subset(&new));
        if affinity {
            self.stale_affinity(&mut batch);
        }
        let report = SyncReport {
            full: false,
            messages: batch.len(),
            bytes: batch.encoded_len(),
        };
        if let Err(source) = self.socket.apply(&batch) {
            self.applied = None;
            return Err(Error::Apply {
                messages: batch.len(),
                source,
            });
        }
        if !batch.is_empty() {
            self.committed(false);
        }
        if affinity {
            // Entries recorded between the listing and the commit, to an endpoint
            // that just went.
            let mut again = Batch::new();
            self.stale_affinity(&mut again);
            if !again.is_empty() {
                match self.socket.apply(&again) {
                    Ok(()) => self.committed(false),
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "deleting stale session affinity entries")
                    }
                }
            }
        }
        Ok(report)
    }

    /// The affinity entries of the tables in the kernel that `desired` allows, to be
    /// added with it, each with its destination's timeout and the time it had left
    /// (at most that timeout). Nothing when there are no tables yet, or they cannot
    /// be read (an older layout of the map, say): the clients are balanced afresh.
    fn carried_affinity(&mut self, desired: &Ruleset) -> Vec<(Set, Vec<SetElement>)> {
        let mut out = Vec::new();
        for f in &desired.families {
            let Some(set) = f.set(names::AFFINITY).map(|s| s.set.clone()) else {
                continue;
            };
            if f.affinity_sets.is_empty() {
                continue;
            }
            let listed = match self.socket.elements(&set) {
                Ok(Some(listed)) => listed,
                Ok(None) => continue,
                Err(e) => {
                    tracing::info!(error = %ErrorChain(&e), family = %f.family, "the old session affinity entries cannot be read; clients are balanced afresh");
                    continue;
                }
            };
            let kept: Vec<SetElement> = listed.into_iter().filter_map(|e| carry(f, e)).collect();
            if !kept.is_empty() {
                out.push((set, kept));
            }
        }
        out
    }

    /// Adds to `batch` the deletion of every affinity entry the applied ruleset no
    /// longer allows (see [`FamilyRuleset::affinity_entry_timeout`]).
    fn stale_affinity(&mut self, batch: &mut Batch) {
        let Proxier {
            socket, applied, ..
        } = self;
        let Some(applied) = applied else { return };
        for f in &applied.families {
            let Some(set) = f.set(names::AFFINITY) else {
                continue;
            };
            let listed = match socket.elements(&set.set) {
                Ok(Some(listed)) => listed,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "listing session affinity entries");
                    continue;
                }
            };
            let stale: Vec<SetElement> = listed
                .into_iter()
                .filter(|e| f.affinity_entry_timeout(e).is_none())
                .map(|e| SetElement::new(e.key))
                .collect();
            if !stale.is_empty() {
                tracing::debug!(
                    entries = stale.len(),
                    "deleting stale session affinity entries"
                );
                batch.destroy_elements(&set.set, &stale);
            }
        }
    }

    /// Removes the tables (see [`cleanup`]); the next sync is a full one.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        self.applied = None;
        cleanup(&mut self.socket)
    }
}

/// An affinity entry read from the kernel, to be added again to a table `f`, or
/// `None` when `f` does not allow it or its time is up.
fn carry(f: &FamilyRuleset, e: SetElement) -> Option<SetElement> {
    let timeout = Duration::from_secs(u64::from(f.affinity_entry_timeout(&e)?));
    let left = e.expires.filter(|l| !l.is_zero())?.min(timeout);
    Some(
        SetElement {
            key: e.key,
            data: e.data,
            ..SetElement::new(Vec::new())
        }
        .timeout(timeout)
        .expires(left),
    )
}

/// The first sync: whatever an earlier run left is replaced in the same transaction
/// (`destroy table` then the whole ruleset), so there is no moment without rules, and
/// established connections keep their conntrack NAT state.
pub fn full_sync(desired: &Ruleset) -> Batch {
    let mut batch = Batch::new();
    for f in &desired.families {
        batch.destroy_table(&Table::new(f.family, TABLE));
    }
    crate::diff::diff_into(&mut batch, &Ruleset::default(), desired);
    batch
}

/// Removes the proxy's tables in both families (`--cleanup`), keeping on after a
/// failure and reporting every one. Tables that are not there are not an error.
pub fn cleanup(socket: &mut NftSocket) -> Result<(), Error> {
    let mut errors = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let mut batch = Batch::new();
        batch.destroy_table(&Table::new(family, TABLE));
        if let Err(e) = socket.apply(&batch) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Cleanup(errors))
    }
}
