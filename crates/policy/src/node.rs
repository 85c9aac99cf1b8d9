//! One node's network policy: the cluster as the agent knows it, the node's verdicts as
//! applied, what changed since, and the kernel's tables. Each change marks the pods
//! whose verdicts it may change ([`Cluster::affected_by_pod`], the pods a policy
//! selects); a sync computes those again ([`compile::update`]) and sends only their
//! elements' difference, so a change costs the same at 10 or 10,000 policies. A
//! ClusterNetworkPolicy's change marks its subjects, before and after. A namespace's
//! labels changing (rare, and seen by any namespace selector) computes everything and
//! sends the difference; the first sync, and one after a failure or
//! drift, send the whole table.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::admin::{AdminPeer, AdminPolicy};
use crate::compile::{self, Desired};
use crate::cut;
use crate::model::{Cluster, Labels, NodeInfo, Pod, Policy};
use crate::ruleset::{Enforcer, Error, SyncReport};

/// What changed since the last sync.
#[derive(Debug, Default)]
struct Dirty {
    /// Everything (first sync, namespace labels, a failure).
    all: bool,
    /// Pods whose verdicts may have changed (keys, any node).
    pods: BTreeSet<String>,
    /// Addresses the node's changed pods had before.
    addrs: BTreeSet<IpAddr>,
}

/// What one sync did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The kernel's part.
    pub sync: SyncReport,
    /// Computing the verdicts.
    pub compute: Duration,
    /// Whether the change allows less than before (or nothing is known of before: a full
    /// sync), so that established connections must be checked ([`NodePolicy::cut`]).
    pub narrower: bool,
}

/// One node's network policy.
#[derive(Debug)]
pub struct NodePolicy {
    node: String,
    cluster: Cluster,
    /// The node's verdicts, as the kernel holds them once a sync succeeded.
    desired: Desired,
    dirty: Dirty,
    enforcer: Enforcer,
}

impl NodePolicy {
    /// Policy for `node`, applied by `enforcer`; the first sync sends everything.
    pub fn new(node: impl Into<String>, enforcer: Enforcer) -> NodePolicy {
        NodePolicy {
            node: node.into(),
            cluster: Cluster::default(),
            desired: Desired::default(),
            dirty: Dirty {
                all: true,
                ..Dirty::default()
            },
            enforcer,
        }
    }

    /// The cluster as known.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The node's verdicts as last computed.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Whether anything waits for a sync.
    pub fn dirty(&self) -> bool {
        self.dirty.all || !self.dirty.pods.is_empty() || !self.dirty.addrs.is_empty()
    }

    /// Adds, changes (`Some`) or removes (`None`) pod `key`; returns whether it changed.
    pub fn set_pod(&mut self, key: &str, pod: Option<Pod>) -> bool {
        let old = self.cluster.pods.get(key).cloned();
        if !self.cluster.set_pod(key, pod) {
            return false;
        }
        let new = self.cluster.pods.get(key).cloned();
        self.pod_changed(key, old, new);
        true
    }

    /// Records the addresses the CNI plugin gave pod `key` ([`Cluster::hint`]).
    pub fn hint(&mut self, key: &str, ips: Vec<IpAddr>) -> bool {
        let old = self.cluster.pods.get(key).cloned();
        if !self.cluster.hint(key, ips) {
            return false;
        }
        let new = self.cluster.pods.get(key).cloned();
        self.pod_changed(key, old, new);
        true
    }

    /// Forgets them ([`Cluster::unhint`]).
    pub fn unhint(&mut self, key: &str) -> bool {
        let old = self.cluster.pods.get(key).cloned();
        if !self.cluster.unhint(key) {
            return false;
        }
        let new = self.cluster.pods.get(key).cloned();
        self.pod_changed(key, old, new);
        true
    }

    fn pod_changed(&mut self, key: &str, old: Option<Pod>, new: Option<Pod>) {
        // Everything is computed again anyway (the first list, after a failure).
        if self.dirty.all {
            return;
        }
        if let Some(o) = old.as_ref().filter(|o| o.node == self.node) {
            self.dirty.addrs.extend(o.ips.iter().copied());
        }
        let affected = self
            .cluster
            .affected_by_pod(key, old.as_ref(), new.as_ref());
        self.dirty.pods.extend(affected);
    }

    /// Adds, changes or removes policy `key`; returns whether it changed.
    pub fn set_policy(&mut self, key: &str, policy: Option<Policy>) -> bool {
        let old = match &policy {
            Some(p) => self.cluster.policies.insert(key.to_owned(), p.clone()),
            None => self.cluster.policies.remove(key),
        };
        if old == policy {
            return false;
        }
        if self.dirty.all {
            return true;
        }
        for p in old.iter().chain(policy.iter()) {
            let selected = self.cluster.selected_by(p);
            self.dirty.pods.extend(selected);
        }
        true
    }

    /// Adds, changes or removes ClusterNetworkPolicy `name`; returns whether it changed.
    /// Its rules judge only its subjects' traffic, so those (before and after) are marked.
    pub fn set_admin_policy(&mut self, name: &str, policy: Option<AdminPolicy>) -> bool {
        let old = match &policy {
            Some(p) => self.cluster.admin.insert(name.to_owned(), p.clone()),
            None => self.cluster.admin.remove(name),
        };
        if old == policy {
            return false;
        }
        if self.dirty.all {
            return true;
        }
        for p in old.iter().chain(policy.iter()) {
            let subjects = self.cluster.admin_subjects(p);
            self.dirty.pods.extend(subjects);
        }
        true
    }

    /// Adds, changes or removes node `name` (labels and addresses); returns whether it
    /// changed. Only ClusterNetworkPolicies' `nodes` peers look at nodes: their subjects
    /// are marked.
    pub fn set_node(&mut self, name: &str, node: Option<NodeInfo>) -> bool {
        let old = match &node {
            Some(n) => self.cluster.nodes.insert(name.to_owned(), n.clone()),
            None => self.cluster.nodes.remove(name),
        };
        if old == node {
            return false;
        }
        if self.dirty.all {
            return true;
        }
        let policies: Vec<AdminPolicy> = self
            .cluster
            .admin
            .values()
            .filter(|p| {
                p.egress
                    .iter()
                    .flat_map(|r| r.peers.iter())
                    .any(|peer| matches!(peer, AdminPeer::Nodes(_)))
            })
            .cloned()
            .collect();
        for p in &policies {
            let subjects = self.cluster.admin_subjects(p);
            self.dirty.pods.extend(subjects);
        }
        true
    }

    /// Adds, changes or removes namespace `name`'s labels; returns whether they changed.
    pub fn set_namespace(&mut self, name: &str, labels: Option<Labels>) -> bool {
        let old = match &labels {
            Some(l) => self.cluster.namespaces.insert(name.to_owned(), l.clone()),
            None => self.cluster.namespaces.remove(name),
        };
        if old == labels {
            return false;
        }
        self.dirty.all = true;
        true
    }

    /// Brings the kernel up to date: only the changed pods' elements, or everything.
    /// Connections the change no longer allows are cut. On failure everything is sent
    /// at the next sync.
    pub fn sync(&mut self) -> Result<Report, Error> {
        let started = Instant::now();
        let dirty = std::mem::take(&mut self.dirty);
        let result = if !self.enforcer.in_sync() {
            // The first sync, or after a failure or drift: the whole table, replacing
            // whatever is there.
            self.desired = compile::desired(&self.cluster, &self.node);
            let compute = started.elapsed();
            self.enforcer
                .replace(&self.desired)
                .map(|sync| (sync, compute, true))
        } else if dirty.all {
            // Everything computed again (a namespace's labels), but only the difference
            // sent: the table stays.
            let new = compile::desired(&self.cluster, &self.node);
            let compute = started.elapsed();
            let narrower = cut::narrower(&self.desired, &new);
            let result = self
                .enforcer
                .update(&self.desired, &new, &new)
                .map(|sync| (sync, compute, narrower));
            self.desired = new;
            result
        } else {
            let touched = dirty
                .addrs
                .iter()
                .copied()
                .chain(
                    dirty
                        .pods
                        .iter()
                        .filter_map(|k| self.cluster.pods.get(k))
                        .filter(|p| p.node == self.node)
                        .flat_map(|p| p.ips.iter().copied()),
                )
                .collect::<BTreeSet<_>>();
            let old = self.desired.of(&touched);
            let touched = compile::update(
                &self.cluster,
                &self.node,
                &mut self.desired,
                &dirty.pods,
                &touched,
            );
            let new = self.desired.of(&touched);
            let compute = started.elapsed();
            let narrower = cut::narrower(&old, &new);
            self.enforcer
                .update(&old, &new, &self.desired)
                .map(|sync| (sync, compute, narrower))
        };
        match result {
            Ok((sync, compute, narrower)) => Ok(Report {
                sync,
                compute,
                narrower,
            }),
            Err(e) => {
                self.dirty.all = true;
                Err(e)
            }
        }
    }

    /// Deletes the conntrack entries of connections the verdicts deny (after a sync
    /// whose [`Report::narrower`] says so); returns how many. Apart from the sync: the
    /// verdicts are in force when it returns, and a dump walks the whole conntrack
    /// table (every namespace's buckets), milliseconds the sync need not wait for.
    pub fn cut(&self) -> netlink::Result<usize> {
        cut::cut(&self.desired)
    }

    /// Whether the kernel's tables are still as sent; when not, the next sync sends
    /// everything.
    pub fn intact(&mut self) -> bool {
        let intact = self.enforcer.intact();
        if !intact {
            self.dirty.all = true;
        }
        intact
    }
}
