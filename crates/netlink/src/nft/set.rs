//! Named sets and maps, and the values stored in them.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::objects::{Family, Verdict};

/// The type of one field of a set key or map value.
///
/// The numbers are nft's own datatype ids (`enum datatypes` in nftables' datatype.h);
/// the kernel only stores them, and `nft list` uses them to print elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr`, 4 bytes, network order.
    Ipv4Addr,
    /// `ipv6_addr`, 16 bytes, network order.
    Ipv6Addr,
    /// `inet_proto`, 1 byte (6 = tcp, 17 = udp, 132 = sctp).
    InetProto,
    /// `inet_service`, a port, 2 bytes network order.
    InetService,
    /// `ether_addr`, 6 bytes.
    EtherAddr,
    /// `mark`, 4 bytes host order.
    Mark,
    /// `integer`, 4 bytes host order (`numgen` results).
    Integer,
}

impl KeyType {
    pub(crate) fn id(self) -> u32 {
        match self {
            KeyType::Integer => 4,
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::EtherAddr => 9,
            KeyType::InetProto => 12,
            KeyType::InetService => 13,
            KeyType::Mark => 19,
        }
    }

    /// Length in bytes of one value.
    pub fn size(self) -> usize {
        match self {
            KeyType::Ipv4Addr | KeyType::Mark | KeyType::Integer => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
            KeyType::EtherAddr => 6,
        }
    }

    /// Whether values are in host byte order (the rest are in network order).
    pub(crate) fn host_order(self) -> bool {
        matches!(self, KeyType::Mark | KeyType::Integer)
    }

    /// The name nft prints.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::EtherAddr => "ether_addr",
            KeyType::Mark => "mark",
            KeyType::Integer => "integer",
        }
    }
}

/// nft's concatenated type id: 6 bits per field, first field highest.
pub(crate) fn concat_type_id(fields: &[KeyType]) -> u32 {
    fields.iter().fold(0, |acc, f| (acc << 6) | f.id())
}

/// Length of a (possibly concatenated) key: each field of a concatenation takes whole
/// 32-bit registers, a single field takes its own length.
pub(crate) fn key_len(fields: &[KeyType]) -> usize {
    if fields.len() == 1 {
        fields[0].size()
    } else {
        fields.iter().map(|f| super::wire::align(f.size())).sum()
    }
}

/// One field of an element's key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Datum {
    /// An `ipv4_addr`.
    Ipv4(Ipv4Addr),
    /// An `ipv6_addr`.
    Ipv6(Ipv6Addr),
    /// An `inet_proto` (6 tcp, 17 udp, 132 sctp).
    Proto(u8),
    /// An `inet_service` (port).
    Port(u16),
    /// An `ether_addr`.
    Ether([u8; 6]),
    /// A `mark`.
    Mark(u32),
    /// An `integer` (e.g. a `numgen` result).
    Int(u32),
}

impl Datum {
    pub(crate) fn key_type(self) -> KeyType {
        match self {
            Datum::Ipv4(_) => KeyType::Ipv4Addr,
            Datum::Ipv6(_) => KeyType::Ipv6Addr,
            Datum::Proto(_) => KeyType::InetProto,
            Datum::Port(_) => KeyType::InetService,
            Datum::Ether(_) => KeyType::EtherAddr,
            Datum::Mark(_) => KeyType::Mark,
            Datum::Int(_) => KeyType::Integer,
        }
    }

    /// The value of type `ty` held in `bytes` (as [`Datum::bytes`] writes it), or `None`
    /// when the length does not fit.
    pub(crate) fn decode(ty: KeyType, bytes: &[u8]) -> Option<Datum> {
        let array = |n: usize| bytes.get(..n).filter(|_| bytes.len() >= n);
        Some(match ty {
            KeyType::Ipv4Addr => Datum::Ipv4(<[u8; 4]>::try_from(array(4)?).ok()?.into()),
            KeyType::Ipv6Addr => Datum::Ipv6(<[u8; 16]>::try_from(array(16)?).ok()?.into()),
            KeyType::InetProto => Datum::Proto(*bytes.first()?),
            KeyType::InetService => Datum::Port(u16::from_be_bytes(array(2)?.try_into().ok()?)),
            KeyType::EtherAddr => Datum::Ether(array(6)?.try_into().ok()?),
            KeyType::Mark => Datum::Mark(u32::from_ne_bytes(array(4)?.try_into().ok()?)),
            KeyType::Integer => Datum::Int(u32::from_ne_bytes(array(4)?.try_into().ok()?)),
        })
    }

    /// The bytes as they sit in a register.
    pub(crate) fn bytes(self) -> Vec<u8> {
        match self {
            Datum::Ipv4(a) => a.octets().to_vec(),
            Datum::Ipv6(a) => a.octets().to_vec(),
            Datum::Proto(p) => vec![p],
            Datum::Port(p) => p.to_be_bytes().to_vec(),
            Datum::Ether(m) => m.to_vec(),
            Datum::Mark(m) | Datum::Int(m) => m.to_ne_bytes().to_vec(),
        }
    }
}

/// Encodes a key or value the way the kernel compares it: fields of a concatenation
/// padded to 32 bits each.
pub(crate) fn encode_data(fields: &[Datum]) -> Vec<u8> {
    if fields.len() == 1 {
        return fields[0].bytes();
    }
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&f.bytes());
        out.resize(super::wire::align(out.len()), 0);
    }
    out
}

/// Decodes a key or value written by [`encode_data`] into fields of `types`.
pub(crate) fn decode_data(types: &[KeyType], bytes: &[u8]) -> Option<Vec<Datum>> {
    if let [single] = types {
        return (bytes.len() == single.size())
            .then(|| Datum::decode(*single, bytes))
            .flatten()
            .map(|d| vec![d]);
    }
    let mut out = Vec::with_capacity(types.len());
    let mut at = 0;
    for ty in types {
        out.push(Datum::decode(*ty, bytes.get(at..)?)?);
        at += super::wire::align(ty.size());
    }
    (at == bytes.len()).then_some(out)
}

/// Flags of a set (`enum nft_set_flags`).
pub(crate) mod flags {
    pub(crate) const ANONYMOUS: u32 = 0x1;
    pub(crate) const CONSTANT: u32 = 0x2;
    pub(crate) const INTERVAL: u32 = 0x4;
    pub(crate) const MAP: u32 = 0x8;
    pub(crate) const TIMEOUT: u32 = 0x10;
    pub(crate) const EVAL: u32 = 0x20;
    pub(crate) const CONCAT: u32 = 0x80;
}

/// What a map maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MapData {
    /// A verdict map (`vmap`): elements end in accept/drop/jump/goto.
    Verdict,
    /// A data map: elements carry a value of these fields (e.g. `ipv4_addr .
    /// inet_service` for DNAT targets).
    Value(Vec<KeyType>),
}

/// A named set, or a map when `data` is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    /// Family of its table.
    pub family: Family,
    /// Its table's name.
    pub table: String,
    /// Its name.
    pub name: String,
    /// Key fields; more than one makes a concatenation.
    pub key: Vec<KeyType>,
    /// For maps: what each key maps to.
    pub data: Option<MapData>,
    /// Contents may not change while a rule uses the set.
    pub constant: bool,
    /// Elements are ranges/prefixes.
    pub interval: bool,
    /// Elements may carry timeouts; `Some(d)` also gives them a default.
    pub timeout: Option<Option<Duration>>,
    /// Flag `dynamic`: rules add and update elements from the packet path
    /// ([`Expr::Dynset`](super::Expr::Dynset)).
    pub dynamic: bool,
    /// An anonymous set, bound to the one rule that uses it (see
    /// [`Rule::inline_sets`](super::Rule::inline_sets)).
    pub(crate) anonymous: bool,
}

impl Set {
    /// A set of keys with the given fields (`ipv4_addr`, or `ipv4_addr . inet_proto .
    /// inet_service` with three).
    pub fn new(
        family: Family,
        table: impl Into<String>,
        name: impl Into<String>,
        key: impl Into<Vec<KeyType>>,
    ) -> Self {
        Set {
            family,
            table: table.into(),
            name: name.into(),
            key: key.into(),
            data: None,
            constant: false,
            interval: false,
            timeout: None,
            dynamic: false,
            anonymous: false,
        }
    }

    /// Makes it a verdict map.
    pub fn vmap(mut self) -> Self {
        self.data = Some(MapData::Verdict);
        self
    }

    /// Makes it a map to values of the given fields.
    pub fn map(mut self, data: impl Into<Vec<KeyType>>) -> Self {
        self.data = Some(MapData::Value(data.into()));
        self
    }

    /// Flag `constant`.
    pub fn constant(mut self) -> Self {
        self.constant = true;
        self
    }

    /// Flag `interval`: elements are prefixes or ranges.
    pub fn interval(mut self) -> Self {
        self.interval = true;
        self
    }

    /// Flag `timeout`, with an optional default timeout for new elements.
    pub fn timeout(mut self, default: Option<Duration>) -> Self {
        self.timeout = Some(default);
        self
    }

    /// Flag `dynamic`: rules may add and update elements
    /// ([`Expr::Dynset`](super::Expr::Dynset)).
    pub fn dynamic(mut self) -> Self {
        self.dynamic = true;
        self
    }

    pub(crate) fn flags(&self) -> u32 {
        let mut f = 0;
        if self.anonymous {
            f |= flags::ANONYMOUS;
        }
        if self.constant {
            f |= flags::CONSTANT;
        }
        if self.interval {
            f |= flags::INTERVAL;
        }
        // The kernel wants the flag whenever the key is described as a concatenation.
        if self.key.len() > 1 {
            f |= flags::CONCAT;
        }
        if self.data.is_some() {
            f |= flags::MAP;
        }
        if self.timeout.is_some() {
            f |= flags::TIMEOUT;
        }
        if self.dynamic {
            f |= flags::EVAL;
        }
        f
    }
}

/// What a map element maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ElementData {
    /// A verdict (verdict maps).
    Verdict(Verdict),
    /// A value (data maps).
    Value(Vec<Datum>),
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetElement {
    /// Key fields, one per field of the set's key.
    pub key: Vec<Datum>,
    /// For interval sets: `Some(k)` makes the element the range from `key` up to, not
    /// including, `k`; `Some` of an empty key runs to the end of the key space. `None`
    /// for elements of sets without the interval flag. In an interval set of
    /// concatenated keys (the kernel's pipapo sets) each field is a range of its own and
    /// `k` is the last key, included: [`SetElement::ranges`].
    pub end: Option<Vec<Datum>>,
    /// For maps: what the key maps to.
    pub data: Option<ElementData>,
    /// Removes the element after this long (the set needs the timeout flag).
    pub timeout: Option<Duration>,
    /// With `timeout`: the time left before the element is removed, when it is less
    /// than the whole timeout (an element read back from the kernel, added again with
    /// the time it had left). `None`: the whole timeout.
    pub expires: Option<Duration>,
    /// A comment, shown by `nft list`.
    pub comment: Option<String>,
}

impl SetElement {
    /// An element with this key.
    pub fn new(key: impl Into<Vec<Datum>>) -> Self {
        SetElement {
            key: key.into(),
            end: None,
            data: None,
            timeout: None,
            expires: None,
            comment: None,
        }
    }

    /// A prefix, for interval sets of addresses.
    pub fn prefix(net: IpNet) -> Self {
        let (start, end) = match net.trunc() {
            IpNet::V4(n) => (
                Datum::Ipv4(n.network()),
                u32::from(n.broadcast())
                    .checked_add(1)
                    .map(|e| Datum::Ipv4(e.into())),
            ),
            IpNet::V6(n) => (
                Datum::Ipv6(n.network()),
                u128::from(n.broadcast())
                    .checked_add(1)
                    .map(|e| Datum::Ipv6(e.into())),
            ),
        };
        let mut e = SetElement::new([start]);
        e.end = Some(end.into_iter().collect());
        e
    }

    /// For interval sets of concatenated keys: each field from its value in `first` to
    /// its value in `last`, both included (`10.0.0.0-10.0.0.255 . tcp . 80-89`).
    pub fn ranges(first: impl Into<Vec<Datum>>, last: impl Into<Vec<Datum>>) -> Self {
        let mut e = SetElement::new(first);
        e.end = Some(last.into());
        e
    }

    /// Maps the key to a verdict.
    pub fn verdict(mut self, verdict: Verdict) -> Self {
        self.data = Some(ElementData::Verdict(verdict));
        self
    }

    /// Maps the key to a value.
    pub fn value(mut self, value: impl Into<Vec<Datum>>) -> Self {
        self.data = Some(ElementData::Value(value.into()));
        self
    }

    /// Expires the element after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With a timeout: removes the element after `left`, sooner than the timeout
    /// (`nft add element ... timeout T expires E`).
    pub fn expires(mut self, left: Duration) -> Self {
        self.expires = Some(left);
        self
    }

    /// Attaches a comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_keys_pad_each_field_to_32_bits() {
        let key = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
        assert_eq!(key_len(&key), 12);
        assert_eq!(concat_type_id(&key), (7 << 12) | (12 << 6) | 13);
        let data = encode_data(&[
            Datum::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
            Datum::Proto(6),
            Datum::Port(80),
        ]);
        assert_eq!(data, [10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(encode_data(&[Datum::Port(443)]), [1, 187]);
    }

    #[test]
    fn decoding_reads_back_what_encoding_wrote() {
        let key = [
            KeyType::Ipv6Addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Ipv4Addr,
            KeyType::Mark,
        ];
        let data = [
            Datum::Ipv6("fd00::1".parse().unwrap()),
            Datum::Proto(17),
            Datum::Port(53),
            Datum::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            Datum::Mark(0x4000),
        ];
        assert_eq!(decode_data(&key, &encode_data(&data)), Some(data.to_vec()));
        assert_eq!(
            decode_data(&[KeyType::InetService], &[1, 187]),
            Some(vec![Datum::Port(443)])
        );
        // A length that does not fit the types is not guessed at.
        assert_eq!(decode_data(&key[..2], &[0; 16]), None);
        assert_eq!(decode_data(&[KeyType::Mark], &[0; 2]), None);
    }

    #[test]
    fn prefix_elements_end_one_past_the_broadcast() {
        let e = SetElement::prefix("10.0.0.0/8".parse().unwrap());
        assert_eq!(e.key, [Datum::Ipv4(Ipv4Addr::new(10, 0, 0, 0))]);
        assert_eq!(e.end, Some(vec![Datum::Ipv4(Ipv4Addr::new(11, 0, 0, 0))]));
        let all = SetElement::prefix("0.0.0.0/0".parse().unwrap());
        assert_eq!(all.end, Some(vec![]));
    }
}
