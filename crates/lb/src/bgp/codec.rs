//! BGP-4 messages on the wire (RFC 4271), with the parts a LoadBalancer speaker needs:
//! 4-octet AS numbers (RFC 6793), multiprotocol IPv4/IPv6 unicast (RFC 4760), and the
//! ORIGIN, AS_PATH, NEXT_HOP, MULTI_EXIT_DISC, LOCAL_PREF, COMMUNITIES (RFC 1997) and
//! LARGE_COMMUNITY (RFC 8092) attributes.
//!
//! Why not a crate: `netgauze-bgp-pkt` (Apache-2.0, maintained) would fit by license and
//! upkeep, but it models every attribute and capability IANA lists, with nom, a derive
//! crate and its IANA registries behind it, for the eight attributes used here;
//! `bgpkit-parser` is made for reading MRT dumps, `bgp-rs` is GPL. This module is the
//! subset, parsed strictly: every error names what is wrong and maps to the
//! NOTIFICATION (code, subcode, data) that RFC 4271 section 6 prescribes, and
//! `tests::fuzz_*` feed it seeded random and mutated input.
//!
//! The speaker always offers the 4-octet AS capability and refuses peers without it
//! (every router of the last fifteen years has it), so AS_PATH is always 4-octet here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Largest BGP message (RFC 4271; RFC 8654's extended messages are not offered).
pub const MAX_LEN: usize = 4096;
/// The header: 16 marker octets, length, type.
pub const HEADER_LEN: usize = 19;
/// The AS number a 4-octet speaker puts in OPEN's 2-octet field when its own does not fit.
pub const AS_TRANS: u16 = 23456;

const ATTR_OPTIONAL: u8 = 0x80;
const ATTR_TRANSITIVE: u8 = 0x40;
const ATTR_PARTIAL: u8 = 0x20;
const ATTR_EXTENDED: u8 = 0x10;

const ORIGIN: u8 = 1;
const AS_PATH: u8 = 2;
const NEXT_HOP: u8 = 3;
const MED: u8 = 4;
const LOCAL_PREF: u8 = 5;
const COMMUNITIES: u8 = 8;
const MP_REACH: u8 = 14;
const MP_UNREACH: u8 = 15;
const LARGE_COMMUNITY: u8 = 32;

/// An address family this speaker speaks (AFI/SAFI unicast only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    /// The family of a prefix.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ipv4Unicast,
            IpNet::V6(_) => Family::Ipv6Unicast,
        }
    }
}

/// One BGP message.
// Messages live for one send or receive; boxing the UPDATE would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
}

/// OPEN: who we are and what we can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The full AS number (from the 4-octet capability when present).
    pub asn: u32,
    /// Seconds; 0 or at least 3.
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// Whether the 4-octet AS capability was present.
    pub four_octet_as: bool,
    /// Multiprotocol capabilities we know; empty means IPv4 unicast only (RFC 4760).
    pub families: Vec<Family>,
    /// Route refresh (RFC 2918) offered; we answer it by resending our routes.
    pub route_refresh: bool,
}

/// NOTIFICATION: why a session closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// Cease, administrative shutdown (RFC 4486): the agent stops.
    pub fn admin_shutdown() -> Notification {
        Notification::new(6, 2, Vec::new())
    }

    /// Hold timer expired.
    pub fn hold_expired() -> Notification {
        Notification::new(4, 0, Vec::new())
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.code {
            1 => "message header error",
            2 => "OPEN message error",
            3 => "UPDATE message error",
            4 => "hold timer expired",
            5 => "finite state machine error",
            6 => "cease",
            7 => "route refresh message error",
            _ => "unknown error code",
        };
        let sub = match (self.code, self.subcode) {
            (1, 1) => "connection not synchronized",
            (1, 2) => "bad message length",
            (1, 3) => "bad message type",
            (2, 1) => "unsupported version number",
            (2, 2) => "bad peer AS",
            (2, 3) => "bad BGP identifier",
            (2, 4) => "unsupported optional parameter",
            (2, 6) => "unacceptable hold time",
            (2, 7) => "unsupported capability",
            (3, 1) => "malformed attribute list",
            (3, 2) => "unrecognized well-known attribute",
            (3, 3) => "missing well-known attribute",
            (3, 4) => "attribute flags error",
            (3, 5) => "attribute length error",
            (3, 6) => "invalid ORIGIN attribute",
            (3, 8) => "invalid NEXT_HOP attribute",
            (3, 9) => "optional attribute error",
            (3, 10) => "invalid network field",
            (3, 11) => "malformed AS_PATH",
            (6, 1) => "maximum number of prefixes reached",
            (6, 2) => "administrative shutdown",
            (6, 3) => "peer de-configured",
            (6, 4) => "administrative reset",
            (6, 5) => "connection rejected",
            (6, 6) => "other configuration change",
            (6, 7) => "connection collision resolution",
            (6, 8) => "out of resources",
            (_, 0) => "",
            _ => "unknown subcode",
        };
        write!(f, "{code} ({}/{})", self.code, self.subcode)?;
        if !sub.is_empty() {
            write!(f, ": {sub}")?;
        }
        // RFC 8203: a Cease/shutdown may carry a UTF-8 reason after a length octet.
        if self.code == 6
            && matches!(self.subcode, 2 | 4)
            && let Some((&len, rest)) = self.data.split_first()
            && let Some(text) = rest.get(..usize::from(len))
            && let Ok(text) = std::str::from_utf8(text)
        {
            write!(f, ": \"{text}\"")?;
        }
        Ok(())
    }
}

/// ORIGIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    #[default]
    Igp,
    Egp,
    Incomplete,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
}

/// A large community (RFC 8092): global administrator, two local data parts.
pub type LargeCommunity = [u32; 3];

/// The path attributes of an UPDATE (the ones we know; others are kept raw).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub origin: Option<Origin>,
    pub as_path: Option<Vec<Segment>>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<LargeCommunity>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Attributes we do not interpret: (flags, type, value).
    pub other: Vec<(u8, u8, Vec<u8>)>,
}

/// MP_REACH_NLRI for IPv6 unicast (IPv4 uses the classic fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub family: Family,
    /// Global next hop, and a link-local one when the peer sent 32 octets.
    pub next_hop: IpAddr,
    pub link_local: Option<Ipv6Addr>,
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<IpNet>,
}

/// UPDATE: IPv4 withdrawals and announcements in the classic fields, IPv6 in MP_*.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attributes: Attributes,
    pub nlri: Vec<Ipv4Net>,
}

impl Update {
    /// Whether this is the End-of-RIB marker for a family (RFC 4724).
    pub fn is_end_of_rib(&self) -> bool {
        self.withdrawn.is_empty()
            && self.nlri.is_empty()
            && (self.attributes == Attributes::default()
                || (self
                    .attributes
                    .mp_unreach
                    .as_ref()
                    .is_some_and(|u| u.withdrawn.is_empty())
                    && Attributes {
                        mp_unreach: None,
                        ..self.attributes.clone()
                    } == Attributes::default()))
    }
}

/// Why bytes are not a valid message: what is wrong, and the NOTIFICATION to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct DecodeError {
    /// What is wrong, for the log.
    pub what: String,
    /// What to tell the peer before closing.
    pub notification: Notification,
}

fn err(code: u8, subcode: u8, data: Vec<u8>, what: impl Into<String>) -> DecodeError {
    DecodeError {
        what: what.into(),
        notification: Notification::new(code, subcode, data),
    }
}

fn update_err(subcode: u8, data: Vec<u8>, what: impl Into<String>) -> DecodeError {
    err(3, subcode, data, what)
}

/// Reads big-endian fields, failing with the UPDATE/OPEN error given.
struct Reader<'a> {
    buf: &'a [u8],
    on_short: (u8, u8),
    context: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], on_short: (u8, u8), context: &'static str) -> Self {
        Reader {
            buf,
            on_short,
            context,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(err(
                self.on_short.0,
                self.on_short.1,
                Vec::new(),
                format!(
                    "{}: needs {n} more octet(s), {} left",
                    self.context,
                    self.buf.len()
                ),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The length of the message at the start of `buf` once its header is there, checking
/// the marker and the length field: `Ok(None)` means "read more".
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(err(1, 1, Vec::new(), "header: the marker is not all ones"));
    }
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    let kind = buf[18];
    let min = match kind {
        1 => 29,
        2 => 23,
        3 => 21,
        4 => 19,
        _ => {
            return Err(err(
                1,
                3,
                vec![kind],
                format!("header: unknown message type {kind}"),
            ));
        }
    };
    if !(min..=MAX_LEN).contains(&len) || (kind == 4 && len != 19) {
        return Err(err(
            1,
            2,
            buf[16..18].to_vec(),
            format!("header: length {len} is invalid for message type {kind}"),
        ));
    }
    Ok(Some(len))
}

/// Decodes one whole message (exactly the octets [`frame_len`] said).
pub fn decode(msg: &[u8]) -> Result<Message, DecodeError> {
    let len =
        frame_len(msg)?.ok_or_else(|| err(1, 2, Vec::new(), "header: shorter than 19 octets"))?;
    if len != msg.len() {
        return Err(err(
            1,
            2,
            msg[16..18].to_vec(),
            format!(
                "header: length field says {len}, the message has {}",
                msg.len()
            ),
        ));
    }
    let body = &msg[HEADER_LEN..];
    match msg[18] {
        1 => decode_open(body).map(Message::Open),
        2 => decode_update(body).map(Message::Update),
        3 => Ok(Message::Notification(Notification::new(
            body[0],
            body[1],
            body[2..].to_vec(),
        ))),
        _ => Ok(Message::Keepalive),
    }
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let mut r = Reader::new(body, (1, 2), "OPEN");
    let version = r.u8()?;
    if version != 4 {
        return Err(err(
            2,
            1,
            4u16.to_be_bytes().to_vec(),
            format!("OPEN: version {version}, only 4 is spoken"),
        ));
    }
    let asn16 = r.u16()?;
    let hold_time = r.u16()?;
    if hold_time == 1 || hold_time == 2 {
        return Err(err(
            2,
            6,
            Vec::new(),
            format!("OPEN: hold time {hold_time} s (must be 0 or at least 3)"),
        ));
    }
    let id = Ipv4Addr::from(r.u32()?);
    if id.is_unspecified() {
        return Err(err(2, 3, Vec::new(), "OPEN: BGP identifier 0.0.0.0"));
    }
    let params_len = usize::from(r.u8()?);
    let params = r.take(params_len).map_err(|_| {
        err(
            2,
            0,
            Vec::new(),
            format!("OPEN: optional parameters length {params_len} overruns the message"),
        )
    })?;
    if !r.is_empty() {
        return Err(err(
            2,
            0,
            Vec::new(),
            "OPEN: octets after the optional parameters",
        ));
    }
    let mut open = Open {
        asn: u32::from(asn16),
        hold_time,
        router_id: id,
        four_octet_as: false,
        families: Vec::new(),
        route_refresh: false,
    };
    let mut p = Reader::new(params, (2, 0), "OPEN optional parameters");
    while !p.is_empty() {
        let kind = p.u8()?;
        let len = usize::from(p.u8()?);
        let value = p.take(len)?;
        if kind != 2 {
            return Err(err(
                2,
                4,
                Vec::new(),
                format!("OPEN: optional parameter type {kind} (only capabilities, 2, are known)"),
            ));
        }
        let mut c = Reader::new(value, (2, 0), "OPEN capability");
        while !c.is_empty() {
            let code = c.u8()?;
            let len = usize::from(c.u8()?);
            let value = c.take(len)?;
            match code {
                1 => {
                    if len != 4 {
                        return Err(err(
                            2,
                            0,
                            Vec::new(),
                            format!("OPEN: multiprotocol capability of {len} octets (must be 4)"),
                        ));
                    }
                    let afi = u16::from_be_bytes([value[0], value[1]]);
                    if let Some(f) = Family::from_afi_safi(afi, value[3])
                        && !open.families.contains(&f)
                    {
                        open.families.push(f);
                    }
                }
                2 => open.route_refresh = true,
                65 => {
                    if len != 4 {
                        return Err(err(
                            2,
                            0,
                            Vec::new(),
                            format!("OPEN: 4-octet AS capability of {len} octets (must be 4)"),
                        ));
                    }
                    open.four_octet_as = true;
                    open.asn = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                }
                // Others (graceful restart, add-path, FQDN, ...) are offers we may ignore.
                _ => {}
            }
        }
    }
    if open.four_octet_as && asn16 != AS_TRANS && u32::from(asn16) != open.asn {
        return Err(err(
            2,
            2,
            Vec::new(),
            format!(
                "OPEN: AS {asn16} in the header but {} in the 4-octet AS capability",
                open.asn
            ),
        ));
    }
    Ok(open)
}

fn decode_prefixes(
    buf: &[u8],
    family: Family,
    what: &'static str,
) -> Result<Vec<IpNet>, DecodeError> {
    let max = match family {
        Family::Ipv4Unicast => 32,
        Family::Ipv6Unicast => 128,
    };
    let mut r = Reader::new(buf, (3, 10), what);
    let mut out = Vec::new();
    while !r.is_empty() {
        let bits = r.u8()?;
        if bits > max {
            return Err(update_err(
                if what == "NLRI" || what == "withdrawn routes" {
                    10
                } else {
                    9
                },
                Vec::new(),
                format!("{what}: prefix length {bits} (at most {max})"),
            ));
        }
        let octets = r.take(usize::from(bits).div_ceil(8))?;
        let net = match family {
            Family::Ipv4Unicast => {
                let mut a = [0u8; 4];
                a[..octets.len()].copy_from_slice(octets);
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), bits).map_err(|_| {
                    update_err(10, Vec::new(), format!("{what}: bad prefix length {bits}"))
                })?)
            }
            Family::Ipv6Unicast => {
                let mut a = [0u8; 16];
                a[..octets.len()].copy_from_slice(octets);
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), bits).map_err(|_| {
                    update_err(10, Vec::new(), format!("{what}: bad prefix length {bits}"))
                })?)
            }
        };
        // Trailing bits past the length are ignored on receipt (RFC 4271 4.3); keep
        // the prefix canonical so that comparisons work.
        out.push(net.trunc());
    }
    Ok(out)
}

fn v4_only(nets: Vec<IpNet>) -> Vec<Ipv4Net> {
    nets.into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn decode_update(body: &[u8]) -> Result<Update, DecodeError> {
    let mut r = Reader::new(body, (3, 1), "UPDATE");
    let wlen = usize::from(r.u16()?);
    let withdrawn = r.take(wlen)?;
    let alen = usize::from(r.u16()?);
    let attrs = r.take(alen)?;
    let nlri = r.buf;
    let withdrawn = v4_only(decode_prefixes(
        withdrawn,
        Family::Ipv4Unicast,
        "withdrawn routes",
    )?);
    let nlri = v4_only(decode_prefixes(nlri, Family::Ipv4Unicast, "NLRI")?);
    let attributes = decode_attributes(attrs)?;
    if !nlri.is_empty() {
        for (present, name, code) in [
            (attributes.origin.is_some(), "ORIGIN", ORIGIN),
            (attributes.as_path.is_some(), "AS_PATH", AS_PATH),
            (attributes.next_hop.is_some(), "NEXT_HOP", NEXT_HOP),
        ] {
            if !present {
                return Err(update_err(
                    3,
                    vec![code],
                    format!("UPDATE: announces IPv4 routes without {name}"),
                ));
            }
        }
    }
    if attributes.mp_reach.is_some()
        && (attributes.origin.is_none() || attributes.as_path.is_none())
    {
        return Err(update_err(
            3,
            vec![if attributes.origin.is_none() {
                ORIGIN
            } else {
                AS_PATH
            }],
            "UPDATE: MP_REACH_NLRI without ORIGIN or AS_PATH",
        ));
    }
    Ok(Update {
        withdrawn,
        attributes,
        nlri,
    })
}

fn decode_attributes(buf: &[u8]) -> Result<Attributes, DecodeError> {
    let mut r = Reader::new(buf, (3, 1), "path attributes");
    let mut a = Attributes::default();
    let mut seen = [false; 256];
    while !r.is_empty() {
        let start = r.buf;
        let flags = r.u8()?;
        let kind = r.u8()?;
        let len = if flags & ATTR_EXTENDED != 0 {
            usize::from(r.u16()?)
        } else {
            usize::from(r.u8()?)
        };
        let value = r.take(len).map_err(|_| {
            update_err(
                5,
                Vec::new(),
                format!("attribute {kind}: length {len} overruns the attribute list"),
            )
        })?;
        let whole = start[..start.len() - r.buf.len()].to_vec();
        if std::mem::replace(&mut seen[usize::from(kind)], true) {
            return Err(update_err(
                1,
                Vec::new(),
                format!("attribute {kind} appears twice"),
            ));
        }
        let well_known = |name: &str, want_len: Option<usize>| -> Result<(), DecodeError> {
            if flags & (ATTR_OPTIONAL | ATTR_TRANSITIVE) != ATTR_TRANSITIVE
                || flags & ATTR_PARTIAL != 0
            {
                return Err(update_err(
                    4,
                    whole.clone(),
                    format!("{name}: flags {flags:#04x} (must be well-known transitive)"),
                ));
            }
            if want_len.is_some_and(|w| w != len) {
                return Err(update_err(
                    5,
                    whole.clone(),
                    format!("{name}: length {len} (must be {})", want_len.unwrap_or(0)),
                ));
            }
            Ok(())
        };
        let optional = |name: &str, transitive: bool, ok_len: bool| -> Result<(), DecodeError> {
            let want = ATTR_OPTIONAL | if transitive { ATTR_TRANSITIVE } else { 0 };
            if flags & (ATTR_OPTIONAL | ATTR_TRANSITIVE) != want {
                return Err(update_err(
                    4,
                    whole.clone(),
                    format!("{name}: flags {flags:#04x} (must be {want:#04x})"),
                ));
            }
            if !ok_len {
                return Err(update_err(
                    5,
                    whole.clone(),
                    format!("{name}: length {len} is invalid"),
                ));
            }
            Ok(())
        };
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        match kind {
            ORIGIN => {
                well_known("ORIGIN", Some(1))?;
                a.origin = Some(match value[0] {
                    0 => Origin::Igp,
                    1 => Origin::Egp,
                    2 => Origin::Incomplete,
                    o => {
                        return Err(update_err(
                            6,
                            whole,
                            format!("ORIGIN: value {o} (must be 0, 1 or 2)"),
                        ));
                    }
                });
            }
            AS_PATH => {
                well_known("AS_PATH", None)?;
                let mut p = Reader::new(value, (3, 11), "AS_PATH");
                let mut segments = Vec::new();
                while !p.is_empty() {
                    let kind = p.u8()?;
                    let count = usize::from(p.u8()?);
                    if count == 0 {
                        return Err(update_err(11, Vec::new(), "AS_PATH: an empty segment"));
                    }
                    let asns = p.take(count * 4)?.chunks(4).map(be32).collect();
                    segments.push(match kind {
                        1 => Segment::Set(asns),
                        2 => Segment::Sequence(asns),
                        k => {
                            return Err(update_err(
                                11,
                                Vec::new(),
                                format!("AS_PATH: segment type {k} (must be 1 or 2)"),
                            ));
                        }
                    });
                }
                a.as_path = Some(segments);
            }
            NEXT_HOP => {
                well_known("NEXT_HOP", Some(4))?;
                let nh = Ipv4Addr::from(be32(value));
                if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                    return Err(update_err(8, whole, format!("NEXT_HOP: {nh}")));
                }
                a.next_hop = Some(nh);
            }
            MED => {
                optional("MULTI_EXIT_DISC", false, len == 4)?;
                a.med = Some(be32(value));
            }
            LOCAL_PREF => {
                well_known("LOCAL_PREF", Some(4))?;
                a.local_pref = Some(be32(value));
            }
            COMMUNITIES => {
                optional("COMMUNITIES", true, len % 4 == 0 && len > 0)?;
                a.communities = value.chunks(4).map(be32).collect();
            }
            LARGE_COMMUNITY => {
                optional("LARGE_COMMUNITY", true, len % 12 == 0 && len > 0)?;
                a.large_communities = value
                    .chunks(12)
                    .map(|c| [be32(&c[0..4]), be32(&c[4..8]), be32(&c[8..12])])
                    .collect();
            }
            MP_REACH => {
                optional("MP_REACH_NLRI", false, len >= 5)?;
                a.mp_reach = Some(decode_mp_reach(value)?);
            }
            MP_UNREACH => {
                optional("MP_UNREACH_NLRI", false, len >= 3)?;
                let afi = u16::from_be_bytes([value[0], value[1]]);
                let family = Family::from_afi_safi(afi, value[2]).ok_or_else(|| {
                    update_err(
                        9,
                        whole.clone(),
                        format!(
                            "MP_UNREACH_NLRI: AFI {afi} SAFI {} not negotiated",
                            value[2]
                        ),
                    )
                })?;
                a.mp_unreach = Some(MpUnreach {
                    family,
                    withdrawn: decode_prefixes(&value[3..], family, "MP_UNREACH_NLRI")?,
                });
            }
            _ => {
                if flags & ATTR_OPTIONAL == 0 {
                    return Err(update_err(
                        2,
                        whole,
                        format!("attribute {kind}: a well-known attribute we do not know"),
                    ));
                }
                a.other.push((flags & !ATTR_EXTENDED, kind, value.to_vec()));
            }
        }
    }
    Ok(a)
}

fn decode_mp_reach(value: &[u8]) -> Result<MpReach, DecodeError> {
    let mut r = Reader::new(value, (3, 9), "MP_REACH_NLRI");
    let afi = r.u16()?;
    let safi = r.u8()?;
    let family = Family::from_afi_safi(afi, safi).ok_or_else(|| {
        update_err(
            9,
            Vec::new(),
            format!("MP_REACH_NLRI: AFI {afi} SAFI {safi} not negotiated"),
        )
    })?;
    let nh_len = usize::from(r.u8()?);
    let nh = r.take(nh_len)?;
    let (next_hop, link_local) = match (family, nh_len) {
        (Family::Ipv4Unicast, 4) => (IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])), None),
        (Family::Ipv6Unicast, 16) => (IpAddr::V6(v6(&nh[..16])), None),
        (Family::Ipv6Unicast, 32) => (IpAddr::V6(v6(&nh[..16])), Some(v6(&nh[16..32]))),
        _ => {
            return Err(update_err(
                9,
                Vec::new(),
                format!("MP_REACH_NLRI: next hop of {nh_len} octets for {family:?}"),
            ));
        }
    };
    let _reserved = r.u8()?;
    Ok(MpReach {
        family,
        next_hop,
        link_local,
        nlri: decode_prefixes(r.buf, family, "MP_REACH_NLRI")?,
    })
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

/// Encodes a message. Panics only if an UPDATE is larger than 4096 octets, which
/// [`Update`]s built by the speaker never are (it splits).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = vec![0xff; 16];
    out.extend([0, 0]);
    match msg {
        Message::Open(o) => {
            out.push(1);
            out.push(4);
            let asn16 = u16::try_from(o.asn).unwrap_or(AS_TRANS);
            out.extend(asn16.to_be_bytes());
            out.extend(o.hold_time.to_be_bytes());
            out.extend(o.router_id.octets());
            let mut caps = Vec::new();
            for f in &o.families {
                let (afi, safi) = f.afi_safi();
                caps.extend([1, 4]);
                caps.extend(afi.to_be_bytes());
                caps.extend([0, safi]);
            }
            if o.route_refresh {
                caps.extend([2, 0]);
            }
            if o.four_octet_as {
                caps.extend([65, 4]);
                caps.extend(o.asn.to_be_bytes());
            }
            out.push(u8::try_from(caps.len() + 2).unwrap_or(u8::MAX));
            out.push(2);
            out.push(u8::try_from(caps.len()).unwrap_or(u8::MAX));
            out.extend(caps);
        }
        Message::Update(u) => {
            out.push(2);
            let mut w = Vec::new();
            for n in &u.withdrawn {
                push_prefix(&mut w, &IpNet::V4(*n));
            }
            out.extend(u16::try_from(w.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend(w);
            let attrs = encode_attributes(&u.attributes);
            out.extend(u16::try_from(attrs.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend(attrs);
            for n in &u.nlri {
                push_prefix(&mut out, &IpNet::V4(*n));
            }
        }
        Message::Notification(n) => {
            out.extend([3, n.code, n.subcode]);
            out.extend(&n.data);
        }
        Message::Keepalive => out.push(4),
    }
    assert!(out.len() <= MAX_LEN, "BGP message of {} octets", out.len());
    let len = u16::try_from(out.len()).unwrap_or(u16::MAX).to_be_bytes();
    out[16..18].copy_from_slice(&len);
    out
}

fn push_prefix(out: &mut Vec<u8>, net: &IpNet) {
    let bits = net.prefix_len();
    out.push(bits);
    let octets = usize::from(bits).div_ceil(8);
    match net.addr() {
        IpAddr::V4(a) => out.extend(&a.octets()[..octets]),
        IpAddr::V6(a) => out.extend(&a.octets()[..octets]),
    }
}

fn push_attr(out: &mut Vec<u8>, flags: u8, kind: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend([flags | ATTR_EXTENDED, kind]);
        out.extend(u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    } else {
        out.extend([flags & !ATTR_EXTENDED, kind, value.len() as u8]);
    }
    out.extend(value);
}

fn encode_attributes(a: &Attributes) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(o) = a.origin {
        let v = match o {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        };
        push_attr(&mut out, ATTR_TRANSITIVE, ORIGIN, &[v]);
    }
    if let Some(path) = &a.as_path {
        let mut v = Vec::new();
        for s in path {
            let (kind, asns) = match s {
                Segment::Set(a) => (1, a),
                Segment::Sequence(a) => (2, a),
            };
            // A segment holds at most 255 AS numbers; ours hold one.
            for chunk in asns.chunks(255) {
                v.extend([kind, chunk.len() as u8]);
                for asn in chunk {
                    v.extend(asn.to_be_bytes());
                }
            }
        }
        push_attr(&mut out, ATTR_TRANSITIVE, AS_PATH, &v);
    }
    if let Some(nh) = a.next_hop {
        push_attr(&mut out, ATTR_TRANSITIVE, NEXT_HOP, &nh.octets());
    }
    if let Some(med) = a.med {
        push_attr(&mut out, ATTR_OPTIONAL, MED, &med.to_be_bytes());
    }
    if let Some(lp) = a.local_pref {
        push_attr(&mut out, ATTR_TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        push_attr(&mut out, ATTR_OPTIONAL | ATTR_TRANSITIVE, COMMUNITIES, &v);
    }
    if let Some(mp) = &a.mp_reach {
        let (afi, safi) = mp.family.afi_safi();
        let mut v = afi.to_be_bytes().to_vec();
        v.push(safi);
        match (mp.next_hop, mp.link_local) {
            (IpAddr::V4(a), _) => {
                v.push(4);
                v.extend(a.octets());
            }
            (IpAddr::V6(a), None) => {
                v.push(16);
                v.extend(a.octets());
            }
            (IpAddr::V6(a), Some(ll)) => {
                v.push(32);
                v.extend(a.octets());
                v.extend(ll.octets());
            }
        }
        v.push(0);
        for n in &mp.nlri {
            push_prefix(&mut v, n);
        }
        push_attr(&mut out, ATTR_OPTIONAL, MP_REACH, &v);
    }
    if let Some(mp) = &a.mp_unreach {
        let (afi, safi) = mp.family.afi_safi();
        let mut v = afi.to_be_bytes().to_vec();
        v.push(safi);
        for n in &mp.withdrawn {
            push_prefix(&mut v, n);
        }
        push_attr(&mut out, ATTR_OPTIONAL, MP_UNREACH, &v);
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|c| c.iter().flat_map(|p| p.to_be_bytes()))
            .collect();
        push_attr(
            &mut out,
            ATTR_OPTIONAL | ATTR_TRANSITIVE,
            LARGE_COMMUNITY,
            &v,
        );
    }
    for (flags, kind, value) in &a.other {
        push_attr(&mut out, *flags, *kind, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Open {
        Open {
            asn: 4_200_000_001,
            hold_time: 90,
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            four_octet_as: true,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
        }
    }

    fn update() -> Update {
        Update {
            withdrawn: vec!["198.18.0.201/32".parse().unwrap()],
            attributes: Attributes {
                origin: Some(Origin::Igp),
                as_path: Some(vec![Segment::Sequence(vec![64512])]),
                next_hop: Some(Ipv4Addr::new(198, 18, 0, 11)),
                local_pref: Some(150),
                communities: vec![(65000 << 16) | 100],
                large_communities: vec![[64512, 1, 2]],
                mp_reach: Some(MpReach {
                    family: Family::Ipv6Unicast,
                    next_hop: "2001:2::11".parse().unwrap(),
                    link_local: None,
                    nlri: vec!["2001:2::c8/128".parse().unwrap()],
                }),
                mp_unreach: Some(MpUnreach {
                    family: Family::Ipv6Unicast,
                    withdrawn: vec!["2001:2::c9/128".parse().unwrap()],
                }),
                ..Default::default()
            },
            nlri: vec![
                "198.18.0.200/32".parse().unwrap(),
                "198.18.0.0/24".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Open(open()),
            Message::Update(update()),
            Message::Notification(Notification::admin_shutdown()),
            Message::Keepalive,
        ] {
            let wire = encode(&m);
            assert_eq!(frame_len(&wire).unwrap(), Some(wire.len()));
            assert_eq!(decode(&wire).unwrap(), m);
        }
    }

    #[test]
    fn open_with_a_large_asn_puts_as_trans_in_the_header() {
        let wire = encode(&Message::Open(open()));
        assert_eq!(&wire[20..22], &AS_TRANS.to_be_bytes());
    }

    /// An OPEN as BIRD 2 sends it (captured shape: MP v4, route refresh, extended
    /// messages, graceful restart, 4-octet AS, enhanced route refresh).
    #[test]
    fn decodes_a_router_open_ignoring_unknown_capabilities() {
        let mut caps = vec![1, 4, 0, 1, 0, 1, 2, 0, 6, 0, 64, 2, 0, 120, 65, 4];
        caps.extend(64513u32.to_be_bytes());
        caps.extend([70, 0]);
        let mut body = vec![4];
        body.extend(64513u16.to_be_bytes());
        body.extend(240u16.to_be_bytes());
        body.extend([198, 18, 0, 254]);
        body.push(caps.len() as u8 + 2);
        body.extend([2, caps.len() as u8]);
        body.extend(caps);
        let mut wire = vec![0xff; 16];
        wire.extend(((body.len() + 19) as u16).to_be_bytes());
        wire.push(1);
        wire.extend(body);
        let Message::Open(o) = decode(&wire).unwrap() else {
            panic!("not an OPEN")
        };
        assert_eq!(o.asn, 64513);
        assert_eq!(o.hold_time, 240);
        assert!(o.four_octet_as && o.route_refresh);
        assert_eq!(o.families, vec![Family::Ipv4Unicast]);
    }

    #[test]
    fn errors_name_the_problem_and_the_notification() {
        let mut wire = encode(&Message::Keepalive);
        wire[3] = 0;
        let e = decode(&wire).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (1, 1));
        assert!(e.what.contains("marker"), "{e}");

        let mut o = encode(&Message::Open(open()));
        o[19] = 3;
        let e = decode(&o).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (2, 1));

        let mut o = encode(&Message::Open(open()));
        o[23] = 1; // hold time 1 (low octet of 90 is at 23; make it 0x0001)
        o[22] = 0;
        let e = decode(&o).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (2, 6));

        // An IPv4 announcement without NEXT_HOP.
        let mut u = update();
        u.attributes.next_hop = None;
        let e = decode(&encode(&Message::Update(u))).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (3, 3));
        assert_eq!(e.notification.data, vec![NEXT_HOP]);
        assert!(e.what.contains("NEXT_HOP"), "{e}");

        // ORIGIN 7.
        let mut u = update();
        u.attributes.mp_reach = None;
        u.attributes.mp_unreach = None;
        let mut w = encode(&Message::Update(u));
        let at = w
            .windows(3)
            .position(|x| x == [ATTR_TRANSITIVE, ORIGIN, 1])
            .unwrap();
        w[at + 3] = 7;
        let e = decode(&w).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (3, 6));

        // Prefix length 33 in the NLRI.
        let mut w = encode(&Message::Update(Update {
            nlri: vec!["10.0.0.0/8".parse().unwrap()],
            attributes: update().attributes,
            ..Default::default()
        }));
        let n = w.len();
        w[n - 2] = 33;
        let e = decode(&w).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (3, 10));
    }

    #[test]
    fn notification_reads_like_the_rfc() {
        let mut data = vec![7];
        data.extend(b"bye now");
        let n = Notification::new(6, 2, data);
        assert_eq!(
            n.to_string(),
            "cease (6/2): administrative shutdown: \"bye now\""
        );
    }

    #[test]
    fn end_of_rib() {
        assert!(Update::default().is_end_of_rib());
        assert!(
            Update {
                attributes: Attributes {
                    mp_unreach: Some(MpUnreach {
                        family: Family::Ipv6Unicast,
                        withdrawn: vec![]
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }
            .is_end_of_rib()
        );
        assert!(!update().is_end_of_rib());
    }

    /// A small deterministic generator (xorshift), so failures reproduce by seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whatever the bytes, decoding returns (never panics), and what decodes encodes
    /// back to something that decodes to the same message.
    fn check(bytes: &[u8]) {
        if let Ok(Some(len)) = frame_len(bytes)
            && len <= bytes.len()
            && let Ok(m) = decode(&bytes[..len])
        {
            assert_eq!(decode(&encode(&m)).as_ref(), Ok(&m), "{bytes:02x?}");
        }
    }

    #[test]
    fn fuzz_mutated_valid_messages() {
        let seeds: Vec<Vec<u8>> = [
            Message::Open(open()),
            Message::Update(update()),
            Message::Notification(Notification::hold_expired()),
            Message::Keepalive,
        ]
        .iter()
        .map(encode)
        .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let mut m = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    1 => {
                        let i = 18 + rng.below((m.len() - 18).max(1));
                        m.truncate(i);
                    }
                    2 => {
                        let i = rng.below(m.len());
                        m.insert(i, rng.next() as u8);
                    }
                    _ => {
                        // Keep the length field honest half of the time, so mutations
                        // reach the body parsers.
                        let n = (m.len() as u16).to_be_bytes();
                        m[16..18].copy_from_slice(&n);
                    }
                }
            }
            if m.len() >= 18 && rng.below(2) == 0 {
                let n = (m.len() as u16).to_be_bytes();
                m[16..18].copy_from_slice(&n);
            }
            check(&m);
        }
    }

    #[test]
    fn fuzz_random_bodies() {
        let mut rng = Rng(42);
        for _ in 0..200_000 {
            let len = rng.below(120);
            let mut m = vec![0xff; 16];
            m.extend(((len + 19) as u16).to_be_bytes());
            m.push(1 + rng.below(4) as u8);
            m.extend((0..len).map(|_| rng.next() as u8));
            check(&m);
        }
    }
}
