//! The difference between two rulesets, as one atomic nftables [`Batch`].
//!
//! The diff is computed against the ruleset applied last, kept in memory: the kernel's
//! table is never listed. Rules cannot be addressed without their kernel handles, which
//! we never read back, so a chain whose rule list changed is flushed and refilled; the
//! layout keeps such chains short and keeps what changes often (endpoints, service
//! addresses) in set and map elements, which are added and deleted one by one.
//!
//! Message order inside the batch follows what the kernel checks message by message:
//! a table before what it holds, sets and chains before the rules and elements that
//! refer to them, and references dropped (rules flushed, elements deleted, sets
//! deleted) before the chains they point at are deleted.

use std::collections::BTreeMap;

use netlink::nft::{Batch, SetElement, Table};

use crate::ruleset::{ChainSpec, FamilyRuleset, Ruleset, SetSpec, TABLE};

/// The batch that turns the kernel state `old` (as applied last) into `new`. Applying
/// it to a kernel holding `old` leaves exactly `new`; with `old` empty it is a full
/// sync from nothing.
///
/// A set's name must determine its definition (key, map type, flags): a set whose
/// definition changed under the same name cannot be replaced while rules use it, and
/// [`crate::ruleset`] names sets accordingly.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Batch {
    let mut batch = Batch::new();
    diff_into(&mut batch, old, new);
    batch
}

/// [`diff`], appended to an existing batch.
pub fn diff_into(batch: &mut Batch, old: &Ruleset, new: &Ruleset) {
    for n in &new.families {
        match old.family(n.family) {
            Some(o) => family_diff(batch, o, n),
            None => {
                batch.add_table(&Table::new(n.family, TABLE));
                let empty = FamilyRuleset {
                    family: n.family,
                    chains: BTreeMap::new(),
                    sets: BTreeMap::new(),
                };
                family_diff(batch, &empty, n);
            }
        }
    }
    for o in &old.families {
        if new.family(o.family).is_none() {
            batch.delete_table(&Table::new(o.family, TABLE));
        }
    }
}

fn family_diff(batch: &mut Batch, old: &FamilyRuleset, new: &FamilyRuleset) {
    // 1. New sets and chains, so that everything below can refer to them.
    for (name, s) in &new.sets {
        match old.sets.get(name) {
            None => {
                batch.add_set(&s.set);
            }
            Some(o) => debug_assert_eq!(o.set, s.set, "set {name} changed definition"),
        }
    }
    for (name, c) in &new.chains {
        if !old.chains.contains_key(name) {
            batch.add_chain(&c.chain);
        }
    }
    // 2. Elements: removed or changed ones out, new or changed ones in.
    for (name, s) in &new.sets {
        element_diff(batch, old.sets.get(name), s);
    }
    // 3. Chains whose rules changed are refilled; new chains filled.
    for (name, c) in &new.chains {
        match old.chains.get(name) {
            Some(o) if o.rules == c.rules => {}
            Some(o) => {
                if o.chain != c.chain {
                    // A base chain's policy; hooks never change under one name.
                    batch.add_chain(&c.chain);
                }
                batch.flush_chain(&c.chain);
                add_rules(batch, c);
            }
            None => add_rules(batch, c),
        }
    }
    // 4. Removed objects: drop their references first, then the objects.
    let gone_chains: Vec<&ChainSpec> = old
        .chains
        .iter()
        .filter(|(name, _)| !new.chains.contains_key(*name))
        .map(|(_, c)| c)
        .collect();
    for c in &gone_chains {
        if !c.rules.is_empty() {
            batch.flush_chain(&c.chain);
        }
    }
    for (name, s) in &old.sets {
        if !new.sets.contains_key(name) {
            batch.delete_set(&s.set);
        }
    }
    for c in &gone_chains {
        batch.delete_chain(&c.chain);
    }
}

fn add_rules(batch: &mut Batch, c: &ChainSpec) {
    for r in &c.rules {
        batch.add_rule(r);
    }
}

fn element_diff(batch: &mut Batch, old: Option<&SetSpec>, new: &SetSpec) {
    let mut gone: Vec<SetElement> = Vec::new();
    let mut added: Vec<SetElement> = Vec::new();
    match old {
        None => added.extend(new.elements.values().cloned()),
        Some(old) => {
            for (key, e) in &old.elements {
                match new.elements.get(key) {
                    Some(n) if n == e => {}
                    // Changed data: the kernel refuses to overwrite a mapping (EBUSY),
                    // so the old element goes and the new one comes in the same batch.
                    Some(n) => {
                        gone.push(e.clone());
                        added.push(n.clone());
                    }
                    None => gone.push(e.clone()),
                }
            }
            added.extend(
                new.elements
                    .iter()
                    .filter(|(k, _)| !old.elements.contains_key(*k))
                    .map(|(_, e)| e.clone()),
            );
        }
    }
    if !gone.is_empty() {
        batch.delete_elements(&new.set, &gone);
    }
    if !added.is_empty() {
        batch.add_elements(&new.set, &added);
    }
}
