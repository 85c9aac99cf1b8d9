//! Applying rulesets to the kernel: the first sync in full, then only differences.

use std::collections::BTreeSet;

use netlink::nft::{Batch, Family, NftSocket, Table};

use crate::diff::diff;
use crate::ruleset::{Node, Ruleset, TABLE};
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

    /// Whether the kernel still holds the tables this proxier filled. Cheap when
    /// nothing changed: nobody committed anything since its own last batch (one
    /// request). Otherwise it asks for each table's handle (one request per family).
    /// Changes inside a table by someone else (a rule or element deleted by hand)
    /// are not looked for; the tables belong to kubewire.
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
        let intact = self.tables.iter().all(|(family, handle)| {
            matches!(self.socket.table_handle(*family, TABLE), Ok(Some(h)) if h == *handle)
        });
        if intact {
            self.generation = Some(generation);
        } else {
            self.applied = None;
        }
        intact
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

    /// The batch the next [`sync`](Self::sync) to `desired` would send.
    pub fn plan(&self, desired: &Ruleset) -> Batch {
        match &self.applied {
            Some(applied) => diff(applied, desired),
            None => full_sync(desired),
        }
    }

    /// Makes the kernel hold `desired`, in one atomic batch.
    pub fn sync(&mut self, desired: Ruleset) -> Result<SyncReport, Error> {
        let batch = self.plan(&desired);
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
        let mut batch = Batch::new();
        crate::diff::update(&mut batch, applied, view, node, changed);
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
        Ok(report)
    }

    /// Removes the tables (see [`cleanup`]); the next sync is a full one.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        self.applied = None;
        cleanup(&mut self.socket)
    }
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
