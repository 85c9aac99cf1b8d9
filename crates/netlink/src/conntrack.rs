//! Deleting connection-tracking entries over ctnetlink (no `conntrack` binary).
//!
//! The service proxy needs one thing from conntrack: when a UDP endpoint goes away,
//! delete the entries that still NAT clients to it, so their next datagram is balanced
//! afresh instead of black-holed. Network policy deletes the entries of connections a
//! policy no longer allows ([`delete_where`]), so their next packet is judged again. Kernels before 6.x cannot delete by a partial tuple,
//! so [`delete`] dumps the table of each family once, picks the entries the filters
//! match, and deletes each by its exact original tuple (as the Go netlink library's
//! `ConntrackDeleteFilters` does). Entries that vanish in between are not an error.
//!
//! Numbers come from `linux/netfilter/nfnetlink_conntrack.h`.

use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::nft::wire::{self, NLA_HDRLEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, Writer, align};
use crate::{Error, Result};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which entries to delete: all the given fields must match. The original direction
/// is the client's (destination: the service address and port); the reply direction's
/// source is where the connection was NATed to (the endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    /// IP protocol number (17 for UDP).
    pub proto: u8,
    /// Original destination address, if it matters.
    pub orig_dst: Option<IpAddr>,
    /// Original destination port, if it matters.
    pub orig_dport: Option<u16>,
    /// Reply source address: the endpoint.
    pub reply_src: IpAddr,
    /// Reply source port, if it matters.
    pub reply_sport: Option<u16>,
}

/// One side of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP).
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
}

/// A conntrack entry as dumped: its two tuples, plus what deleting it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The original direction.
    pub orig: Tuple,
    /// The reply direction.
    pub reply: Tuple,
    family: u8,
    /// The CTA_TUPLE_ORIG attribute as the kernel sent it, to send back.
    raw_orig: Vec<u8>,
    /// The CTA_ZONE attribute, if any.
    raw_zone: Option<Vec<u8>>,
}

impl Filter {
    /// Whether the entry matches.
    pub fn matches(&self, e: &Entry) -> bool {
        e.orig.proto == self.proto
            && e.reply.src == Some(self.reply_src)
            && self.orig_dst.is_none_or(|d| e.orig.dst == Some(d))
            && self.orig_dport.is_none_or(|p| e.orig.dport == Some(p))
            && self.reply_sport.is_none_or(|p| e.reply.sport == Some(p))
    }
}

/// Deletes the entries of the calling thread's network namespace that any of
/// `filters` matches; returns how many were deleted.
pub fn delete(filters: &[Filter]) -> Result<usize> {
    if filters.is_empty() {
        return Ok(0);
    }
    let mut socket = open()?;
    let mut deleted = 0;
    for (family, v4) in [(AF_INET, true), (AF_INET6, false)] {
        if !filters.iter().any(|f| f.reply_src.is_ipv4() == v4) {
            continue;
        }
        for e in dump(&mut socket, family)? {
            if filters.iter().any(|f| f.matches(&e)) && delete_entry(&mut socket, &e)? {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// Deletes the entries of one family (IPv6 when `ipv6`) in the calling thread's
/// namespace for which `doomed` says so; returns how many were deleted.
pub fn delete_where(ipv6: bool, mut doomed: impl FnMut(&Entry) -> bool) -> Result<usize> {
    let mut socket = open()?;
    let mut deleted = 0;
    for e in dump(&mut socket, if ipv6 { AF_INET6 } else { AF_INET })? {
        if doomed(&e) && delete_entry(&mut socket, &e)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Every entry of one family (`AF_INET` or `AF_INET6`) in the calling thread's
/// namespace.
pub fn list(ipv6: bool) -> Result<Vec<Entry>> {
    let mut socket = open()?;
    dump(&mut socket, if ipv6 { AF_INET6 } else { AF_INET })
}

fn open() -> Result<Socket> {
    let mut socket =
        Socket::new(NETLINK_NETFILTER).map_err(|e| Error::sys("opening a ctnetlink socket", e))?;
    socket
        .bind_auto()
        .map_err(|e| Error::sys("binding a ctnetlink socket", e))?;
    Ok(socket)
}

fn dump(socket: &mut Socket, family: u8) -> Result<Vec<Entry>> {
    let mut w = Writer::default();
    let m = w.begin_msg(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        0,
    );
    w.end_msg(m);
    socket
        .send(&w.buf, 0)
        .map_err(|e| Error::sys("requesting a conntrack dump", e))?;
    let mut entries = Vec::new();
    let mut buf = Vec::with_capacity(256 * 1024);
    loop {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::sys("reading a conntrack dump", e)),
        }
        for msg in wire::messages(&buf) {
            match msg.ty {
                NLMSG_DONE => return Ok(entries),
                NLMSG_ERROR => {
                    if let Some(ack) = wire::parse_ack(&msg)
                        && ack.errno != 0
                    {
                        return Err(Error::sys(
                            "dumping conntrack entries",
                            io::Error::from_raw_os_error(ack.errno),
                        ));
                    }
                }
                _ => {
                    if let Some(e) = parse_entry(msg.payload) {
                        entries.push(e);
                    }
                }
            }
        }
    }
}

/// Deletes one entry; false when it was already gone.
fn delete_entry(socket: &mut Socket, e: &Entry) -> Result<bool> {
    let mut w = Writer::default();
    let m = w.begin_msg(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        e.family,
        0,
    );
    w.buf.extend_from_slice(&e.raw_orig);
    if let Some(zone) = &e.raw_zone {
        w.buf.extend_from_slice(zone);
    }
    w.end_msg(m);
    socket
        .send(&w.buf, 0)
        .map_err(|err| Error::sys("deleting a conntrack entry", err))?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::sys("deleting a conntrack entry", err)),
        }
        for msg in wire::messages(&buf) {
            if msg.ty == NLMSG_ERROR
                && let Some(ack) = wire::parse_ack(&msg)
            {
                return match ack.errno {
                    0 => Ok(true),
                    2 => Ok(false), // ENOENT: it expired or was deleted meanwhile
                    errno => Err(Error::sys(
                        format!("deleting conntrack entry {:?} -> {:?}", e.orig, e.reply),
                        io::Error::from_raw_os_error(errno),
                    )),
                };
            }
        }
    }
}

/// Attributes of a buffer: (type without flags, payload, the whole padded attribute).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        if len < NLA_HDRLEN || len > data.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        let whole = &data[..align(len).min(data.len())];
        let payload = &data[NLA_HDRLEN..len];
        data = &data[align(len).min(data.len())..];
        Some((ty, payload, whole))
    })
}

fn parse_tuple(data: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, p, _) in attrs(data) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, p, _) in attrs(p) {
                    let addr = match p.len() {
                        4 => <[u8; 4]>::try_from(p).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(p).ok().map(IpAddr::from),
                        _ => None,
                    };
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = addr,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = addr,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p, _) in attrs(p) {
                    let port = <[u8; 2]>::try_from(p).ok().map(u16::from_be_bytes);
                    match ty {
                        CTA_PROTO_NUM => t.proto = p.first().copied().unwrap_or(0),
                        CTA_PROTO_SRC_PORT => t.sport = port,
                        CTA_PROTO_DST_PORT => t.dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Parses one IPCTNL_MSG_CT_NEW message of a dump (nfgenmsg, then attributes).
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let family = *payload.first()?;
    let mut e = Entry {
        orig: Tuple::default(),
        reply: Tuple::default(),
        family,
        raw_orig: Vec::new(),
        raw_zone: None,
    };
    for (ty, p, whole) in attrs(payload.get(4..)?) {
        match ty {
            CTA_TUPLE_ORIG => {
                e.orig = parse_tuple(p);
                e.raw_orig = whole.to_vec();
            }
            CTA_TUPLE_REPLY => e.reply = parse_tuple(p),
            CTA_ZONE => e.raw_zone = Some(whole.to_vec()),
            _ => {}
        }
    }
    (!e.raw_orig.is_empty()).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple_attr(w: &mut Writer, ty: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) {
        let t = w.nest_start(ty);
        let ip = w.nest_start(CTA_TUPLE_IP);
        w.put(CTA_IP_V4_SRC, &src);
        w.put(CTA_IP_V4_DST, &dst);
        w.nest_end(ip);
        let p = w.nest_start(CTA_TUPLE_PROTO);
        w.put(CTA_PROTO_NUM, &[17]);
        w.put(CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
        w.put(CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        w.nest_end(p);
        w.nest_end(t);
    }

    #[test]
    fn a_dumped_entry_is_parsed_and_matched() {
        let mut w = Writer::default();
        let m = w.begin_msg(0x100, 0, AF_INET, 0);
        tuple_attr(
            &mut w,
            CTA_TUPLE_ORIG,
            [10, 244, 1, 2],
            [10, 96, 0, 10],
            40000,
            53,
        );
        tuple_attr(
            &mut w,
            CTA_TUPLE_REPLY,
            [10, 244, 2, 5],
            [10, 244, 1, 2],
            5353,
            40000,
        );
        w.end_msg(m);
        let msg = wire::messages(&w.buf).next().unwrap();
        let e = parse_entry(msg.payload).unwrap();
        assert_eq!(e.orig.dst, Some("10.96.0.10".parse().unwrap()));
        assert_eq!(e.orig.dport, Some(53));
        assert_eq!(e.reply.src, Some("10.244.2.5".parse().unwrap()));
        assert_eq!(e.reply.sport, Some(5353));
        assert_eq!(e.raw_orig.len(), 4 + (4 + 8 + 8) + (4 + 8 + 8 + 8));
        let f = Filter {
            proto: 17,
            orig_dst: Some("10.96.0.10".parse().unwrap()),
            orig_dport: Some(53),
            reply_src: "10.244.2.5".parse().unwrap(),
            reply_sport: Some(5353),
        };
        assert!(f.matches(&e));
        let other = Filter {
            reply_src: "10.244.2.6".parse().unwrap(),
            ..f.clone()
        };
        assert!(!other.matches(&e));
        let node_port = Filter {
            orig_dst: None,
            orig_dport: Some(31100),
            ..f
        };
        assert!(!node_port.matches(&e));
    }
}
