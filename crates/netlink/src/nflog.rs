//! Reading packets an nftables `log group N` statement sends to nfnetlink_log (NFLOG),
//! in the calling thread's network namespace.
//!
//! Unlike the kernel's syslog logger (`log` without `group`), which logs nothing from a
//! namespace other than the first unless a host-wide sysctl allows it, NFLOG groups are
//! per namespace: one socket binds a group and receives a copy of each packet logged to
//! it, with the rule's prefix. Numbers come from `linux/netfilter/nfnetlink_log.h`.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::nft::wire::{self, NLA_HDRLEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, Writer, align};
use crate::{Error, Result, netns};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;

const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A packet as logged: the rule's prefix and the start of the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The `log prefix` of the rule that logged it.
    pub prefix: String,
    /// The packet from its network header on (as much as the copy range allows).
    pub packet: Vec<u8>,
    /// Its family: IPv6 when true.
    pub ipv6: bool,
}

/// The addresses, protocol and destination port of a logged packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (IPv6: the first next header).
    pub proto: u8,
    /// Destination port (TCP, UDP, SCTP).
    pub dport: Option<u16>,
}

impl Logged {
    /// The packet's flow, if its headers are there.
    pub fn flow(&self) -> Option<Flow> {
        let p = &self.packet;
        let (src, dst, proto, l4): (IpAddr, IpAddr, u8, usize) = if self.ipv6 {
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            (src.into(), dst.into(), *p.get(6)?, 40)
        } else {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            (src.into(), dst.into(), *p.get(9)?, ihl)
        };
        let dport = matches!(proto, 6 | 17 | 132)
            .then(|| p.get(l4 + 2..l4 + 4))
            .flatten()
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        Some(Flow {
            src,
            dst,
            proto,
            dport,
        })
    }
}

/// A socket bound to one NFLOG group.
#[derive(Debug)]
pub struct NflogSocket {
    socket: Socket,
    group: u16,
}

impl NflogSocket {
    /// Binds `group` in the calling thread's namespace, copying `copy_range` bytes of
    /// each packet. Fails (`EBUSY`) when another socket has the group.
    pub fn bind(group: u16, copy_range: u32) -> Result<NflogSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::sys("opening an nfnetlink_log socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::sys("binding an nfnetlink_log socket", e))?;
        let mut s = NflogSocket { socket, group };
        s.config(
            NFULA_CFG_CMD,
            &[NFULNL_CFG_CMD_BIND],
            &format!("binding NFLOG group {group}"),
        )?;
        let mut mode = copy_range.to_be_bytes().to_vec();
        mode.extend([NFULNL_COPY_PACKET, 0]);
        s.config(
            NFULA_CFG_MODE,
            &mode,
            &format!("setting NFLOG group {group}'s copy mode"),
        )?;
        Ok(s)
    }

    /// [`NflogSocket::bind`] in network namespace `netns_name`.
    pub fn bind_in(netns_name: &str, group: u16, copy_range: u32) -> Result<NflogSocket> {
        netns::run_in(netns_name, move || NflogSocket::bind(group, copy_range))?
    }

    /// The group bound.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Makes [`NflogSocket::recv`] give up after `timeout` (none: wait for ever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            timeout.map_or(0, |t| t.as_secs() as i64),
            timeout.map_or(0, |t| i64::from(t.subsec_micros())),
        );
        nix::sys::socket::setsockopt(&self.socket, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| {
                Error::sys(
                    "setting an nfnetlink_log socket's timeout",
                    io::Error::from(e),
                )
            })
    }

    /// The packets of the next datagram the kernel sends (waits for one; none after the
    /// timeout). A receive buffer overrun (the reader fell behind) loses packets, not the
    /// socket: it reads on.
    pub fn recv(&mut self) -> Result<Vec<Logged>> {
        let mut buf = Vec::with_capacity(64 * 1024);
        match self.socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(105) =>
            {
                // ENOBUFS (105): packets were dropped for a full buffer.
                return Ok(Vec::new());
            }
            Err(e) => return Err(Error::sys("reading an nfnetlink_log socket", e)),
        }
        Ok(wire::messages(&buf)
            .filter(|m| m.ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
            .filter_map(|m| parse_packet(m.payload))
            .collect())
    }

    fn config(&mut self, attr: u16, data: &[u8], op: &str) -> Result<()> {
        let mut w = Writer::default();
        let m = w.begin_msg(
            (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            0,
            self.group,
        );
        w.put(attr, data);
        w.end_msg(m);
        self.socket.send(&w.buf, 0).map_err(|e| Error::sys(op, e))?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::sys(op, e)),
            }
            for msg in wire::messages(&buf) {
                if msg.ty == NLMSG_ERROR
                    && let Some(ack) = wire::parse_ack(&msg)
                {
                    return match ack.errno {
                        0 => Ok(()),
                        errno => Err(Error::sys(op, io::Error::from_raw_os_error(errno))),
                    };
                }
            }
        }
    }
}

/// One NFULNL_MSG_PACKET: nfgenmsg (the packet's family), then attributes.
fn parse_packet(payload: &[u8]) -> Option<Logged> {
    let ipv6 = match *payload.first()? {
        AF_INET => false,
        AF_INET6 => true,
        _ => return None,
    };
    let mut logged = Logged {
        prefix: String::new(),
        packet: Vec::new(),
        ipv6,
    };
    let mut data = payload.get(4..)?;
    while data.len() >= NLA_HDRLEN {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        if len < NLA_HDRLEN || len > data.len() {
            break;
        }
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        let value = &data[NLA_HDRLEN..len];
        match ty {
            NFULA_PAYLOAD => logged.packet = value.to_vec(),
            NFULA_PREFIX => {
                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                logged.prefix = String::from_utf8_lossy(&value[..end]).into_owned();
            }
            _ => {}
        }
        data = &data[align(len).min(data.len())..];
    }
    Some(logged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_parse_from_their_attributes() {
        let mut w = Writer::default();
        // nfgenmsg: AF_INET, version 0, group 4242.
        w.buf.extend_from_slice(&[AF_INET, 0]);
        w.buf.extend_from_slice(&4242u16.to_be_bytes());
        w.put(1, &[0x08, 0x00, 2, 0]);
        let mut ip = vec![0x45, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0];
        ip.extend([10, 244, 0, 5, 10, 244, 1, 7]);
        ip.extend([0xc3, 0x50, 0, 80]);
        w.put(NFULA_PAYLOAD, &ip);
        w.put_str(NFULA_PREFIX, "kubewire-policy ingress networkpolicy");
        let logged = parse_packet(&w.buf).unwrap();
        assert_eq!(logged.prefix, "kubewire-policy ingress networkpolicy");
        assert_eq!(
            logged.flow(),
            Some(Flow {
                src: "10.244.0.5".parse().unwrap(),
                dst: "10.244.1.7".parse().unwrap(),
                proto: 6,
                dport: Some(80),
            })
        );
        // Cut short: no flow, no panic.
        let short = Logged {
            packet: ip[..15].to_vec(),
            ..logged
        };
        assert_eq!(short.flow(), None);
        assert!(parse_packet(&[99, 0, 0, 0]).is_none());
    }
}
