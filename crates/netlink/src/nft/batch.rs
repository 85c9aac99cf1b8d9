//! A batch of nf_tables changes, applied by the kernel all at once or not at all.

use super::expr::{Expr, SetRef, put_value, put_verdict};
use super::objects::{Chain, Family, Policy, Table};
use super::rule::{Rule, comment_udata};
use super::set::{
    Datum, ElementData, KeyType, MapData, Set, SetElement, concat_type_id, encode_data, key_len,
};
use super::wire::{
    NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, Writer, attr, msg,
};

/// NFT_DATA_VERDICT: the data type of verdict maps.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// NFT_SET_ELEM_INTERVAL_END.
const ELEM_INTERVAL_END: u32 = 0x1;
/// Keep element lists well under the 64 KiB limit of one netlink attribute.
const MAX_ELEMENTS_BYTES: usize = 48 * 1024;

/// One message of the batch: where it starts in the buffer, and what it does, in nft's
/// words, for error messages ("add rule ip kubewire nat-postrouting").
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) offset: usize,
    pub(crate) what: String,
}

/// nf_tables changes to apply atomically with [`NftSocket::apply`].
///
/// Each method appends one message (element lists are split into several when large).
/// Nothing is checked against the kernel until the batch is applied; then either every
/// message takes effect or, on the first error, none does.
///
/// [`NftSocket::apply`]: super::NftSocket::apply
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) w: Writer,
    pub(crate) entries: Vec<Entry>,
    /// The first problem found while building (e.g. an element of the wrong shape);
    /// applying the batch reports it without sending anything.
    pub(crate) invalid: Option<(String, String)>,
    next_set_id: u32,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Number of netlink messages in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the encoded messages in bytes.
    pub fn encoded_len(&self) -> usize {
        self.w.buf.len()
    }

    fn begin(&mut self, ty: u8, flags: u16, family: Family, what: String) -> usize {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(ty);
        let offset = self
            .w
            .begin_msg(ty, NLM_F_REQUEST | NLM_F_ACK | flags, family.number(), 0);
        self.entries.push(Entry { offset, what });
        offset
    }

    fn invalid(&mut self, op: String, reason: String) {
        if self.invalid.is_none() {
            self.invalid = Some((op, reason));
        }
    }

    /// `add table`: creates the table, or leaves an existing one as it is.
    pub fn add_table(&mut self, table: &Table) -> &mut Self {
        self.table_msg(msg::NEWTABLE, NLM_F_CREATE, "add", table)
    }

    /// `delete table`: removes the table with everything in it (ENOENT if absent).
    pub fn delete_table(&mut self, table: &Table) -> &mut Self {
        self.table_msg(msg::DELTABLE, 0, "delete", table)
    }

    /// `destroy table`: like [`delete_table`](Self::delete_table), but a table that is
    /// not there is not an error (kernel 6.3 or later), for repeatable teardown.
    pub fn destroy_table(&mut self, table: &Table) -> &mut Self {
        self.table_msg(msg::DESTROYTABLE, 0, "destroy", table)
    }

    /// `flush table`: removes every rule of every chain of the table; chains and sets
    /// stay.
    pub fn flush_table(&mut self, table: &Table) -> &mut Self {
        let m = self.begin(
            msg::DELRULE,
            0,
            table.family,
            format!("flush table {} {}", table.family, table.name),
        );
        self.w.put_str(attr::RULE_TABLE, &table.name);
        self.w.end_msg(m);
        self
    }

    fn table_msg(&mut self, ty: u8, flags: u16, verb: &str, table: &Table) -> &mut Self {
        let what = format!("{verb} table {} {}", table.family, table.name);
        let m = self.begin(ty, flags, table.family, what);
        self.w.put_str(attr::TABLE_NAME, &table.name);
        self.w.end_msg(m);
        self
    }

    /// `add chain`: creates the chain, or updates an existing one's policy.
    pub fn add_chain(&mut self, chain: &Chain) -> &mut Self {
        let what = format!("add chain {} {} {}", chain.family, chain.table, chain.name);
        let m = self.begin(msg::NEWCHAIN, NLM_F_CREATE, chain.family, what);
        self.w.put_str(attr::CHAIN_TABLE, &chain.table);
        self.w.put_str(attr::CHAIN_NAME, &chain.name);
        if let Some(base) = &chain.base {
            let hook = self.w.nest_start(attr::CHAIN_HOOK);
            self.w.put_u32(attr::HOOK_HOOKNUM, base.hook.number());
            self.w.put_u32(attr::HOOK_PRIORITY, base.priority as u32);
            self.w.nest_end(hook);
            if let Some(policy) = base.policy {
                let p = match policy {
                    Policy::Drop => 0,
                    Policy::Accept => 1,
                };
                self.w.put_u32(attr::CHAIN_POLICY, p);
            }
            self.w.put_str(attr::CHAIN_TYPE, base.ty.as_str());
        }
        self.w.end_msg(m);
        self
    }

    /// `delete chain` (the chain must be empty and unreferenced).
    pub fn delete_chain(&mut self, chain: &Chain) -> &mut Self {
        let what = format!(
            "delete chain {} {} {}",
            chain.family, chain.table, chain.name
        );
        let m = self.begin(msg::DELCHAIN, 0, chain.family, what);
        self.w.put_str(attr::CHAIN_TABLE, &chain.table);
        self.w.put_str(attr::CHAIN_NAME, &chain.name);
        self.w.end_msg(m);
        self
    }

    /// `flush chain`: removes all rules of the chain.
    pub fn flush_chain(&mut self, chain: &Chain) -> &mut Self {
        let what = format!(
            "flush chain {} {} {}",
            chain.family, chain.table, chain.name
        );
        let m = self.begin(msg::DELRULE, 0, chain.family, what);
        self.w.put_str(attr::RULE_TABLE, &chain.table);
        self.w.put_str(attr::RULE_CHAIN, &chain.name);
        self.w.end_msg(m);
        self
    }

    /// `add rule`: appends the rule at the end of its chain, after creating its
    /// anonymous sets (if any) in the same batch.
    pub fn add_rule(&mut self, rule: &Rule) -> &mut Self {
        let what = format!("add rule {} {} {}", rule.family, rule.table, rule.chain);
        for e in &rule.exprs {
            if let Expr::Lookup {
                set: SetRef::Inline(n),
                ..
            } = e
                && *n >= rule.inline_sets.len()
            {
                self.invalid(
                    what,
                    format!("lookup in inline set {n}, which the rule lacks"),
                );
                return self;
            }
        }
        let mut inline = Vec::with_capacity(rule.inline_sets.len());
        for (set, elements) in &rule.inline_sets {
            let name = if set.data.is_some() {
                "__map%d"
            } else {
                "__set%d"
            };
            let inner = format!("{what}: anonymous {}", Self::set_kind(set));
            let Some(id) = self.set_msg(set, name, format!("{inner} ({})", show(&set.key))) else {
                return self;
            };
            self.elements(
                msg::NEWSETELEM,
                NLM_F_CREATE,
                inner.replace(": anonymous", ": elements of anonymous"),
                set,
                (name, Some(id)),
                elements,
            );
            inline.push((name, id));
        }
        let m = self.begin(msg::NEWRULE, NLM_F_CREATE | NLM_F_APPEND, rule.family, what);
        self.w.put_str(attr::RULE_TABLE, &rule.table);
        self.w.put_str(attr::RULE_CHAIN, &rule.chain);
        let list = self.w.nest_start(attr::RULE_EXPRESSIONS);
        for e in &rule.exprs {
            e.encode(&mut self.w, &inline);
        }
        self.w.nest_end(list);
        if let Some(comment) = &rule.comment {
            self.w.put(attr::RULE_USERDATA, &comment_udata(comment));
        }
        self.w.end_msg(m);
        self
    }

    /// `delete rule ... handle N`: removes the rule with `rule.handle`.
    pub fn delete_rule(&mut self, rule: &Rule) -> &mut Self {
        let what = format!(
            "delete rule {} {} {} handle {}",
            rule.family,
            rule.table,
            rule.chain,
            rule.handle.map_or("(none)".to_owned(), |h| h.to_string())
        );
        let Some(handle) = rule.handle else {
            self.invalid(what, "the rule has no handle".into());
            return self;
        };
        let m = self.begin(msg::DELRULE, 0, rule.family, what);
        self.w.put_str(attr::RULE_TABLE, &rule.table);
        self.w.put_str(attr::RULE_CHAIN, &rule.chain);
        self.w.put_u64(attr::RULE_HANDLE, handle);
        self.w.end_msg(m);
        self
    }

    fn set_kind(set: &Set) -> &'static str {
        if set.data.is_some() { "map" } else { "set" }
    }

    /// `add set` / `add map`: creates it, or leaves an existing one as it is.
    pub fn add_set(&mut self, set: &Set) -> &mut Self {
        let what = format!(
            "add {} {} {} {}",
            Self::set_kind(set),
            set.family,
            set.table,
            set.name
        );
        self.set_msg(set, &set.name, what);
        self
    }

    /// Writes a NEWSET under `name`; returns its transaction id, or `None` if the set
    /// cannot be expressed (recorded as the batch's error).
    fn set_msg(&mut self, set: &Set, name: &str, what: String) -> Option<u32> {
        if set.key.is_empty() {
            self.invalid(what, "the key has no usable fields".into());
            return None;
        }
        self.next_set_id += 1;
        let id = self.next_set_id;
        let m = self.begin(msg::NEWSET, NLM_F_CREATE, set.family, what);
        let w = &mut self.w;
        w.put_str(attr::SET_TABLE, &set.table);
        w.put_str(attr::SET_NAME, name);
        w.put_u32(attr::SET_FLAGS, set.flags());
        w.put_u32(attr::SET_KEY_TYPE, concat_type_id(&set.key));
        w.put_u32(attr::SET_KEY_LEN, key_len(&set.key) as u32);
        match &set.data {
            None => {}
            Some(MapData::Verdict) => {
                w.put_u32(attr::SET_DATA_TYPE, NFT_DATA_VERDICT);
                w.put_u32(attr::SET_DATA_LEN, 0);
            }
            Some(MapData::Value(fields)) => {
                w.put_u32(attr::SET_DATA_TYPE, concat_type_id(fields));
                w.put_u32(attr::SET_DATA_LEN, key_len(fields) as u32);
            }
        }
        if let Some(Some(timeout)) = set.timeout {
            w.put_u64(attr::SET_TIMEOUT, timeout.as_millis() as u64);
        }
        if set.key.len() > 1 {
            let desc = w.nest_start(attr::SET_DESC);
            let concat = w.nest_start(attr::SET_DESC_CONCAT);
            for field in &set.key {
                let elem = w.nest_start(attr::LIST_ELEM);
                w.put_u32(attr::SET_FIELD_LEN, field.size() as u32);
                w.nest_end(elem);
            }
            w.nest_end(concat);
            w.nest_end(desc);
        }
        w.put_u32(attr::SET_ID, id);
        // nft's user data: the byte order of the key (type 0) and of the data (type
        // 1), host endian (1) for a single host-order field. Without it, `nft list`
        // prints host-order keys and values byte-swapped.
        let mut udata = Vec::new();
        let host = |fields: &[KeyType]| matches!(fields, [single] if single.host_order());
        if host(&set.key) {
            udata.extend_from_slice(&[0, 4]);
            udata.extend_from_slice(&1u32.to_ne_bytes());
        }
        if let Some(MapData::Value(fields)) = &set.data
            && host(fields)
        {
            udata.extend_from_slice(&[1, 4]);
            udata.extend_from_slice(&1u32.to_ne_bytes());
        }
        if !udata.is_empty() {
            w.put(attr::SET_USERDATA, &udata);
        }
        w.end_msg(m);
        Some(id)
    }

    /// `delete set` / `delete map` (must not be in use by a rule).
    pub fn delete_set(&mut self, set: &Set) -> &mut Self {
        let what = format!(
            "delete {} {} {} {}",
            Self::set_kind(set),
            set.family,
            set.table,
            set.name
        );
        let m = self.begin(msg::DELSET, 0, set.family, what);
        self.w.put_str(attr::SET_TABLE, &set.table);
        self.w.put_str(attr::SET_NAME, &set.name);
        self.w.end_msg(m);
        self
    }

    /// `flush set` / `flush map`: removes every element.
    pub fn flush_set(&mut self, set: &Set) -> &mut Self {
        let what = format!(
            "flush {} {} {} {}",
            Self::set_kind(set),
            set.family,
            set.table,
            set.name
        );
        let m = self.begin(msg::DELSETELEM, 0, set.family, what);
        self.w.put_str(attr::SET_ELEM_LIST_TABLE, &set.table);
        self.w.put_str(attr::SET_ELEM_LIST_SET, &set.name);
        self.w.end_msg(m);
        self
    }

    /// `add element`: adds elements (existing identical elements are left alone).
    pub fn add_elements(&mut self, set: &Set, elements: &[SetElement]) -> &mut Self {
        let what = format!("add element {} {} {}", set.family, set.table, set.name);
        self.elements(
            msg::NEWSETELEM,
            NLM_F_CREATE,
            what,
            set,
            (&set.name, None),
            elements,
        )
    }

    /// `delete element`: removes elements (ENOENT for one that is absent). Only the keys
    /// (and interval ends) of `elements` matter.
    pub fn delete_elements(&mut self, set: &Set, elements: &[SetElement]) -> &mut Self {
        let what = format!("delete element {} {} {}", set.family, set.table, set.name);
        self.elements(msg::DELSETELEM, 0, what, set, (&set.name, None), elements)
    }

    /// `destroy element`: removes elements, and is no error for one that is not there
    /// (kernel 6.3 or later): for elements that may time out on their own meanwhile,
    /// such as those rules add from the packet path.
    pub fn destroy_elements(&mut self, set: &Set, elements: &[SetElement]) -> &mut Self {
        let what = format!("destroy element {} {} {}", set.family, set.table, set.name);
        self.elements(
            msg::DESTROYSETELEM,
            0,
            what,
            set,
            (&set.name, None),
            elements,
        )
    }

    fn check_element(set: &Set, e: &SetElement, adding: bool) -> Result<(), String> {
        let show =
            |f: &[super::KeyType]| f.iter().map(|t| t.name()).collect::<Vec<_>>().join(" . ");
        let key_types: Vec<_> = e.key.iter().map(|d| d.key_type()).collect();
        if key_types != set.key {
            return Err(format!(
                "key {:?} does not fit the set's key type {}",
                e.key,
                show(&set.key)
            ));
        }
        if let Some(end) = &e.end {
            if !set.interval {
                return Err("a range needs a set with the interval flag".into());
            }
            if !end.is_empty() && end.iter().map(|d| d.key_type()).ne(set.key.iter().copied()) {
                return Err(format!("range end {end:?} does not fit the key type"));
            }
        }
        if e.timeout.is_some() && set.timeout.is_none() {
            return Err("an element timeout needs a set with the timeout flag".into());
        }
        if !adding {
            return Ok(());
        }
        match (&set.data, &e.data) {
            (None, None) | (Some(MapData::Verdict), Some(ElementData::Verdict(_))) => Ok(()),
            (Some(MapData::Value(fields)), Some(ElementData::Value(v)))
                if v.iter().map(|d| d.key_type()).eq(fields.iter().copied()) =>
            {
                Ok(())
            }
            (None, Some(_)) => Err("a set element cannot map to anything".into()),
            (Some(MapData::Verdict), _) => Err("a verdict map element needs a verdict".into()),
            (Some(MapData::Value(fields)), _) => Err(format!(
                "a map element needs a value of type {}",
                show(fields)
            )),
        }
    }

    /// Element messages for `set`, addressed by `target` (name, and transaction id for
    /// sets created in this batch under a name template).
    fn elements(
        &mut self,
        ty: u8,
        flags: u16,
        what: String,
        set: &Set,
        target: (&str, Option<u32>),
        elements: &[SetElement],
    ) -> &mut Self {
        for e in elements {
            if let Err(reason) = Self::check_element(set, e, ty == msg::NEWSETELEM) {
                self.invalid(what, reason);
                return self;
            }
        }
        let mut i = 0;
        while i < elements.len() {
            let m = self.begin(ty, flags, set.family, what.clone());
            self.w.put_str(attr::SET_ELEM_LIST_TABLE, &set.table);
            self.w.put_str(attr::SET_ELEM_LIST_SET, target.0);
            if let Some(id) = target.1 {
                self.w.put_u32(attr::SET_ELEM_LIST_SET_ID, id);
            }
            let list = self.w.nest_start(attr::SET_ELEM_LIST_ELEMENTS);
            let first = i;
            while i < elements.len() {
                let before = self.w.buf.len();
                encode_element(&mut self.w, set, &elements[i]);
                if self.w.buf.len() - list > MAX_ELEMENTS_BYTES && i > first {
                    self.w.buf.truncate(before);
                    break;
                }
                i += 1;
            }
            self.w.nest_end(list);
            self.w.end_msg(m);
        }
        self
    }
}

/// Key types joined as nft writes them (`ipv4_addr . inet_service`).
fn show(fields: &[KeyType]) -> String {
    fields
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(" . ")
}

/// The key right after `key` (a single field), or `None` past the last one.
fn successor(key: Datum) -> Option<Vec<u8>> {
    let mut bytes = key.bytes();
    let host = key.key_type().host_order() && cfg!(target_endian = "little");
    // Add one, starting from the least significant byte.
    let order: Vec<usize> = if host {
        (0..bytes.len()).collect()
    } else {
        (0..bytes.len()).rev().collect()
    };
    for i in order {
        if bytes[i] == 0xff {
            bytes[i] = 0;
        } else {
            bytes[i] += 1;
            return Some(bytes);
        }
    }
    None
}

fn encode_element(w: &mut Writer, set: &Set, e: &SetElement) {
    let elem = w.nest_start(attr::LIST_ELEM);
    put_value(w, attr::SET_ELEM_KEY, &encode_data(&e.key));
    // A concatenation of ranges (the kernel's pipapo sets) is one element whose end is
    // its last key, inclusive; without an end, the element is its key alone.
    let concat_range = set.interval && set.key.len() > 1;
    if concat_range && let Some(end) = e.end.as_ref().filter(|end| !end.is_empty()) {
        put_value(w, attr::SET_ELEM_KEY_END, &encode_data(end));
    }
    match &e.data {
        None => {}
        Some(ElementData::Verdict(v)) => put_verdict(w, attr::SET_ELEM_DATA, v),
        Some(ElementData::Value(v)) => put_value(w, attr::SET_ELEM_DATA, &encode_data(v)),
    }
    if let Some(timeout) = e.timeout {
        w.put_u64(attr::SET_ELEM_TIMEOUT, timeout.as_millis() as u64);
        if let Some(left) = e.expires {
            w.put_u64(attr::SET_ELEM_EXPIRATION, left.as_millis() as u64);
        }
    }
    if let Some(comment) = &e.comment {
        w.put(attr::SET_ELEM_USERDATA, &comment_udata(comment));
    }
    w.nest_end(elem);
    // An interval is its start plus an "interval end" element one past its last key;
    // a plain key in an interval set is the interval of that key alone.
    let end = match (&e.end, set.interval) {
        _ if concat_range => None,
        (Some(end), _) if end.is_empty() => None,
        (Some(end), _) => Some(encode_data(end)),
        (None, true) => e.key.first().and_then(|k| successor(*k)),
        (None, false) => None,
    };
    if let Some(end) = end {
        let elem = w.nest_start(attr::LIST_ELEM);
        put_value(w, attr::SET_ELEM_KEY, &end);
        w.put_u32(attr::SET_ELEM_FLAGS, ELEM_INTERVAL_END);
        w.nest_end(elem);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::nft::Verdict;

    #[test]
    fn successors_count_in_the_key_byte_order() {
        assert_eq!(
            successor(Datum::Ipv4(Ipv4Addr::new(10, 0, 0, 255))),
            Some(vec![10, 0, 1, 0])
        );
        assert_eq!(successor(Datum::Port(0xffff)), None);
        assert_eq!(successor(Datum::Mark(1)), Some(2u32.to_ne_bytes().to_vec()));
    }

    #[test]
    fn large_element_lists_are_split_under_the_attribute_limit() {
        let set = Set::new(Family::Ip, "t", "s", [KeyType::Ipv4Addr]);
        let elems: Vec<_> = (0..10_000u32)
            .map(|i| SetElement::new([Datum::Ipv4(Ipv4Addr::from(i))]))
            .collect();
        let mut b = Batch::new();
        b.add_elements(&set, &elems);
        assert!(b.len() > 1);
        assert!(!b.w.overflow);
        assert!(b.invalid.is_none());
    }

    #[test]
    fn elements_of_the_wrong_shape_make_the_batch_invalid() {
        let map = Set::new(
            Family::Ip,
            "t",
            "m",
            [KeyType::Ipv4Addr, KeyType::InetService],
        )
        .vmap();
        let mut b = Batch::new();
        b.add_elements(
            &map,
            &[SetElement::new([Datum::Ipv4(Ipv4Addr::LOCALHOST)]).verdict(Verdict::Accept)],
        );
        let (op, err) = b.invalid.unwrap();
        assert_eq!(op, "add element ip t m");
        assert!(err.starts_with("key"), "{err}");
        assert!(err.contains("ipv4_addr . inet_service"), "{err}");
    }
}
