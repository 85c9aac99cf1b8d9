//! The difference between two rulesets, as one atomic nftables [`Batch`].
//!
//! The diff is computed against the ruleset applied last, kept in memory: the kernel's
//! table is never listed (only checked to be the same table at resyncs, see
//! [`Proxier::intact`](crate::Proxier::intact)). Rules cannot be addressed without their kernel handles, which
//! we never read back, so a chain whose rule list changed is flushed and refilled. In
//! this layout that is rare and short: no rule is per service or per endpoint (a class
//! chain holds one to a few rules fixed by its class, and the fixed chains change only
//! with the node), while service addresses, node ports, endpoints and hairpin pairs are
//! set and map elements, added and deleted one by one.
//!
//! Two ways in: [`diff`] compares two whole rulesets (a full recomputation), and
//! [`update`] recomputes only the services named as changed and patches the applied
//! ruleset in place, so a change costs the same at 100 or 50,000 services.
//!
//! Message order inside the batch follows what the kernel checks message by message:
//! a table before what it holds, sets and chains before the rules and elements that
//! refer to them, and references dropped (rules flushed, elements deleted, sets
//! deleted) before the chains they point at are deleted.

use std::collections::{BTreeMap, BTreeSet};

use netlink::nft::{Batch, Datum, Family, Set, SetElement, Table};

use crate::ruleset::{
    ChainSpec, Class, ClassMap, FamilyRuleset, Node, Ruleset, SetName, SetSpec, TABLE,
    service_rules,
};
use crate::view::{ServiceKey, View};

/// A new set, filled from the ruleset.
enum FreshSet<'a> {
    Fixed(&'a SetSpec),
    Class(&'a ClassMap),
}

/// The changes to one table, by phase.
#[derive(Default)]
struct Plan<'a> {
    new_sets: Vec<Set>,
    new_chains: Vec<&'a ChainSpec>,
    /// (set, element) to delete, then to add.
    deletes: BTreeMap<String, Vec<SetElement>>,
    adds: BTreeMap<String, Vec<SetElement>>,
    /// Sets whose elements all go in (new sets): encoded straight from the set, a
    /// chunk at a time, rather than copied out first (a full sync holds 100,000
    /// elements at 10,000 services).
    fresh: Vec<FreshSet<'a>>,
    /// Chains to fill (new) or flush and refill (changed).
    fill: Vec<&'a ChainSpec>,
    refill: Vec<&'a ChainSpec>,
    gone_sets: Vec<Set>,
    gone_chains: Vec<&'a ChainSpec>,
}

impl<'a> Plan<'a> {
    fn chains(
        &mut self,
        old: &'a BTreeMap<String, ChainSpec>,
        new: &'a BTreeMap<String, ChainSpec>,
    ) {
        for (name, c) in new {
            match old.get(name) {
                Some(o) if o.rules == c.rules => {}
                Some(_) => self.refill.push(c),
                None => {
                    self.new_chains.push(c);
                    self.fill.push(c);
                }
            }
        }
        for (name, c) in old {
            if !new.contains_key(name) {
                self.gone_chains.push(c);
            }
        }
    }

    fn emit(self, batch: &mut Batch, family: &FamilyRuleset) {
        for s in &self.new_sets {
            batch.add_set(s);
        }
        for c in &self.new_chains {
            batch.add_chain(&c.chain);
        }
        // Rules of new chains before the elements: a rule binding a map walks the
        // elements it already has, so a full sync binds the endpoint maps empty.
        for c in &self.fill {
            add_rules(batch, c);
        }
        // Elements of a set that goes are deleted with it.
        for (name, elements) in &self.deletes {
            if let Some(s) = family.set_def(name) {
                batch.delete_elements(s, elements);
            }
        }
        for (name, elements) in &self.adds {
            if let Some(s) = family.set_def(name) {
                batch.add_elements(s, elements);
            }
        }
        for s in &self.fresh {
            let (set, elements): (_, Box<dyn Iterator<Item = SetElement>>) = match s {
                FreshSet::Fixed(s) => (&s.set, Box::new(s.elements())),
                FreshSet::Class(m) => (&m.set, Box::new(m.elements())),
            };
            let mut chunk = Vec::with_capacity(FRESH_CHUNK);
            for e in elements {
                chunk.push(e);
                if chunk.len() == FRESH_CHUNK {
                    batch.add_elements(set, &chunk);
                    chunk.clear();
                }
            }
            if !chunk.is_empty() {
                batch.add_elements(set, &chunk);
            }
        }
        for c in &self.refill {
            batch.flush_chain(&c.chain);
            add_rules(batch, c);
        }
        for c in &self.gone_chains {
            if !c.is_empty() {
                batch.flush_chain(&c.chain);
            }
        }
        for s in &self.gone_sets {
            batch.delete_set(s);
        }
        for c in &self.gone_chains {
            batch.delete_chain(&c.chain);
        }
    }
}

/// The batch that turns the kernel state `old` (as applied last) into `new`. Applying
/// it to a kernel holding `old` leaves exactly `new`; with `old` empty it is a full
/// sync from nothing.
///
/// A set's name must determine its definition (key, map type, flags): a set whose
/// definition changed under the same name cannot be replaced while rules use it.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Batch {
    let mut batch = Batch::new();
    diff_into(&mut batch, old, new);
    batch
}

/// [`diff`], appended to an existing batch.
pub fn diff_into(batch: &mut Batch, old: &Ruleset, new: &Ruleset) {
    for n in &new.families {
        match old.family(n.family) {
            Some(o) => family_diff(batch, Some(o), n),
            None => {
                batch.add_table(&Table::new(n.family, TABLE));
                family_diff(batch, None, n);
            }
        }
    }
    for o in &old.families {
        if new.family(o.family).is_none() {
            batch.delete_table(&Table::new(o.family, TABLE));
        }
    }
}

fn empty(family: Family) -> FamilyRuleset {
    FamilyRuleset {
        family,
        chains: BTreeMap::new(),
        sets: BTreeMap::new(),
        class_maps: BTreeMap::new(),
        affinity_sets: BTreeMap::new(),
        services: BTreeMap::new(),
    }
}

/// The changes from `old` (`None`: a table just made, holding nothing) to `new`.
fn family_diff(batch: &mut Batch, old: Option<&FamilyRuleset>, new: &FamilyRuleset) {
    let empty = empty(new.family);
    // An empty ruleset still has the chains that follow the classes (with no rules);
    // a new table has none.
    let old_classes = old.map(FamilyRuleset::class_chains).unwrap_or_default();
    let old = old.unwrap_or(&empty);
    let new_classes = new.class_chains();
    let mut plan = Plan::default();
    for s in new.all_sets() {
        let name = &s.set.name;
        match old.all_sets().find(|o| o.set.name == *name) {
            None => {
                plan.new_sets.push(s.set.clone());
                plan.fresh.push(FreshSet::Fixed(s));
            }
            Some(o) => {
                debug_assert_eq!(o.set, s.set, "set {name} changed definition");
                element_diff(&mut plan, name, o, s);
            }
        }
    }
    for (class, m) in &new.class_maps {
        match old.class_maps.get(class) {
            None => {
                plan.new_sets.push(m.set.clone());
                plan.fresh.push(FreshSet::Class(m));
            }
            Some(o) => class_map_diff(&mut plan, o, m),
        }
    }
    for s in old.all_sets() {
        if !new.all_sets().any(|n| n.set.name == s.set.name) {
            plan.gone_sets.push(s.set.clone());
        }
    }
    for (class, m) in &old.class_maps {
        if !new.class_maps.contains_key(class) {
            plan.gone_sets.push(m.set.clone());
        }
    }
    plan.chains(&old.chains, &new.chains);
    plan.chains(&old_classes, &new_classes);
    plan.emit(batch, new);
}

fn add_rules(batch: &mut Batch, c: &ChainSpec) {
    for r in &c.rules() {
        batch.add_rule(r);
    }
}

/// Elements per `add element` call when a new set is filled.
const FRESH_CHUNK: usize = 2048;

/// The element changes between two versions of a class map: per destination, only the
/// buckets whose endpoint changed.
fn class_map_diff(plan: &mut Plan<'_>, old: &ClassMap, new: &ClassMap) {
    let mut gone: Vec<SetElement> = Vec::new();
    let mut added: Vec<SetElement> = Vec::new();
    let bucket = |d: &[Datum], i: usize, ep: &(std::net::IpAddr, u16)| {
        let mut key = d.to_vec();
        key.push(Datum::Mark(i as u32));
        let addr = match ep.0 {
            std::net::IpAddr::V4(a) => Datum::Ipv4(a),
            std::net::IpAddr::V6(a) => Datum::Ipv6(a),
        };
        SetElement::new(key).value([addr, Datum::Port(ep.1)])
    };
    for (d, (o, _)) in &old.destinations {
        let n: &[_] = new.destinations.get(d).map_or(&[], |(n, _)| &n[..]);
        if n == &o[..] {
            continue;
        }
        for i in 0..o.len().max(n.len()) {
            match (o.get(i), n.get(i)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    // Changed data: the kernel refuses to overwrite a mapping (EBUSY),
                    // so the old element goes and the new one comes in the same batch.
                    gone.extend(a.map(|a| bucket(d, i, a)));
                    added.extend(b.map(|b| bucket(d, i, b)));
                }
            }
        }
    }
    for (d, (n, _)) in &new.destinations {
        if !old.destinations.contains_key(d) {
            added.extend(n.iter().enumerate().map(|(i, b)| bucket(d, i, b)));
        }
    }
    let name = &new.set.name;
    if !gone.is_empty() {
        plan.deletes.insert(name.clone(), gone);
    }
    if !added.is_empty() {
        plan.adds.insert(name.clone(), added);
    }
}

fn element_diff(plan: &mut Plan<'_>, name: &str, old: &SetSpec, new: &SetSpec) {
    let mut gone: Vec<SetElement> = Vec::new();
    let mut added: Vec<SetElement> = Vec::new();
    for (key, o) in &old.elements {
        match new.elements.get(key) {
            Some(n) if n.data == o.data => {}
            // Changed data: the kernel refuses to overwrite a mapping (EBUSY), so the
            // old element goes and the new one comes in the same batch.
            Some(n) => {
                gone.push(o.element(key));
                added.push(n.element(key));
            }
            None => gone.push(o.element(key)),
        }
    }
    for (key, n) in &new.elements {
        if !old.elements.contains_key(key) {
            added.push(n.element(key));
        }
    }
    if !gone.is_empty() {
        plan.deletes.insert(name.to_owned(), gone);
    }
    if !added.is_empty() {
        plan.adds.insert(name.to_owned(), added);
    }
}

/// Recomputes the services in `changed` (present in `view` or gone from it), patches
/// `applied` to match, and appends the changes to `batch`. Everything else is taken to
/// be as `applied` says, so the cost follows the size of the change, not of the
/// cluster. `node` must be the node `applied` was computed for (a node change needs a
/// full [`crate::desired`]); `applied` must hold both families (come from
/// [`crate::desired`]).
///
/// If the batch is then not applied, `applied` no longer describes the kernel: sync in
/// full next time.
pub fn update(
    batch: &mut Batch,
    applied: &mut Ruleset,
    view: &View,
    node: &Node,
    changed: &BTreeSet<ServiceKey>,
) {
    for fam in &mut applied.families {
        let mut new_rules = Vec::new();
        for key in changed {
            let rules = view
                .services
                .get(key)
                .map(|svc| service_rules(svc, node, fam.family))
                .unwrap_or_default();
            let old = fam.services.remove(key).unwrap_or_default();
            if old != rules {
                new_rules.push((key.clone(), old, rules));
            } else if !rules.is_empty() {
                fam.services.insert(key.clone(), rules);
            }
        }
        // Counts first (removals, then additions, so that an element moving between
        // services is neither deleted nor added), then the chains.
        let old_classes = fam.class_chains();
        let old_maps: BTreeMap<Class, Set> = fam
            .class_maps
            .iter()
            .map(|(c, s)| (*c, s.set.clone()))
            .collect();
        let old_affinity: BTreeMap<(bool, u32), Set> = fam
            .affinity_sets
            .iter()
            .map(|(k, s)| (*k, s.set.clone()))
            .collect();
        let mut plan_deletes: BTreeMap<SetName, Vec<SetElement>> = BTreeMap::new();
        let mut plan_adds: BTreeMap<SetName, Vec<SetElement>> = BTreeMap::new();
        let mut changes = Vec::new();
        for (_, old, _) in &new_rules {
            fam.remove_refs(old, &mut changes);
        }
        for (set, e) in changes.drain(..) {
            plan_deletes.entry(set).or_default().push(e);
        }
        for (_, _, new) in &new_rules {
            fam.add_refs(new, Some(&mut changes));
        }
        for (set, e) in changes {
            // Deleted and re-added unchanged in this same update: leave it.
            let deletes = plan_deletes.entry(set).or_default();
            if let Some(i) = deletes.iter().position(|d| *d == e) {
                deletes.swap_remove(i);
            } else {
                plan_adds.entry(set).or_default().push(e);
            }
        }
        let mut plan = Plan::default();
        for (set, elements) in plan_deletes {
            if !elements.is_empty() {
                plan.deletes.insert(set.to_string(), elements);
            }
        }
        for (set, elements) in plan_adds {
            plan.adds.insert(set.to_string(), elements);
        }
        for (c, s) in &fam.class_maps {
            if !old_maps.contains_key(c) {
                plan.new_sets.push(s.set.clone());
            }
        }
        for (c, s) in old_maps {
            if !fam.class_maps.contains_key(&c) {
                plan.gone_sets.push(s);
            }
        }
        for (k, s) in &fam.affinity_sets {
            if !old_affinity.contains_key(k) {
                plan.new_sets.push(s.set.clone());
            }
        }
        for (k, s) in old_affinity {
            if !fam.affinity_sets.contains_key(&k) {
                plan.gone_sets.push(s);
            }
        }
        let new_classes = fam.class_chains();
        plan.chains(&old_classes, &new_classes);
        plan.emit(batch, fam);
        for (key, _, new) in new_rules {
            if !new.is_empty() {
                fam.services.insert(key, new);
            }
        }
    }
}
