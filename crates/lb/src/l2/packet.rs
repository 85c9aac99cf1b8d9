//! ARP (RFC 826) and IPv6 Neighbor Discovery (RFC 4861) frames: the questions the L2
//! announcer answers (ARP requests, Neighbor Solicitations), its answers, and the
//! unsolicited announcements it sends when an address moves to this node (gratuitous
//! ARP, unsolicited Neighbor Advertisements with the Override flag).
//!
//! The parsers face the network: they take any bytes and return `None` for anything
//! that is not a well-formed question (short, wrong types, bad ICMPv6 checksum, hop
//! limit other than 255), never panicking.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink::packet::{BpfInsn, SKF_AD_PKTTYPE};

/// A hardware address.
pub type Mac = [u8; 6];

const ETH_HEADER: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const IPPROTO_ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
const BROADCAST: Mac = [0xff; 6];
/// All-nodes, ff02::1.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A question for a neighbour's hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// An ARP request: who has `target`? Tell `sender_ip` at `sender_mac`.
    Arp {
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target: Ipv4Addr,
    },
    /// A Neighbor Solicitation for `target` from `src` (`::` during duplicate address
    /// detection), whose link-layer address is `src_mac` (its option, else the frame's
    /// source).
    Ndp {
        src_mac: Mac,
        src: Ipv6Addr,
        target: Ipv6Addr,
    },
}

impl Question {
    /// The address asked for.
    pub fn target(&self) -> std::net::IpAddr {
        match *self {
            Question::Arp { target, .. } => target.into(),
            Question::Ndp { target, .. } => target.into(),
        }
    }
}

/// The kernel-side filter for a packet socket that wants only questions: incoming
/// (not `PACKET_OUTGOING`) ARP requests and ICMPv6 Neighbor Solicitations without
/// extension headers (which a solicitation never has). Userspace parses them again.
pub const FILTER: [BpfInsn; 13] = {
    const LD_W_ABS: u16 = 0x20;
    const LD_H_ABS: u16 = 0x28;
    const LD_B_ABS: u16 = 0x30;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const fn i(code: u16, jt: u8, jf: u8, k: u32) -> BpfInsn {
        BpfInsn { code, jt, jf, k }
    }
    [
        /* 0 */ i(LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
        /* 1 */ i(JEQ_K, 10, 0, 4), // PACKET_OUTGOING: drop
        /* 2 */ i(LD_H_ABS, 0, 0, 12),
        /* 3 */ i(JEQ_K, 0, 2, ETHERTYPE_ARP as u32),
        /* 4 */ i(LD_H_ABS, 0, 0, 20),
        /* 5 */ i(JEQ_K, 5, 6, ARP_REQUEST as u32),
        /* 6 */ i(JEQ_K, 0, 5, ETHERTYPE_IPV6 as u32),
        /* 7 */ i(LD_B_ABS, 0, 0, 20),
        /* 8 */ i(JEQ_K, 0, 3, IPPROTO_ICMPV6 as u32),
        /* 9 */ i(LD_B_ABS, 0, 0, 54),
        /* 10 */ i(JEQ_K, 0, 1, NEIGHBOR_SOLICITATION as u32),
        /* 11 */ i(RET_K, 0, 0, 0xffff),
        /* 12 */ i(RET_K, 0, 0, 0),
    ]
};

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at + 6)?.try_into().ok()
}

fn v4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(o.into())
}

fn v6_at(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(o.into())
}

/// Parses an Ethernet frame as a question, if it is one.
pub fn parse(frame: &[u8]) -> Option<Question> {
    match u16_at(frame, 12)? {
        ETHERTYPE_ARP => parse_arp(frame.get(ETH_HEADER..)?),
        ETHERTYPE_IPV6 => parse_ns(mac_at(frame, 6)?, frame.get(ETH_HEADER..)?),
        _ => None,
    }
}

fn parse_arp(arp: &[u8]) -> Option<Question> {
    // Ethernet hardware, IPv4 protocol, their lengths, a request.
    if u16_at(arp, 0)? != 1
        || u16_at(arp, 2)? != 0x0800
        || arp.get(4..6)? != [6, 4]
        || u16_at(arp, 6)? != ARP_REQUEST
    {
        return None;
    }
    let sender_mac = mac_at(arp, 8)?;
    let sender_ip = v4_at(arp, 14)?;
    let target = v4_at(arp, 24)?;
    // Someone else's announcement (gratuitous ARP) is not a question.
    if sender_ip == target {
        return None;
    }
    Some(Question::Arp {
        sender_mac,
        sender_ip,
        target,
    })
}

fn parse_ns(eth_src: Mac, ip: &[u8]) -> Option<Question> {
    if ip.first()? >> 4 != 6 || *ip.get(6)? != IPPROTO_ICMPV6 || *ip.get(7)? != 255 {
        return None;
    }
    let len = usize::from(u16_at(ip, 4)?);
    let src = v6_at(ip, 8)?;
    let dst = v6_at(ip, 24)?;
    let icmp = ip.get(40..40 + len)?;
    if len < 24 || icmp[0] != NEIGHBOR_SOLICITATION || icmp[1] != 0 {
        return None;
    }
    if checksum(&src, &dst, icmp) != 0 {
        return None;
    }
    let target = v6_at(icmp, 8)?;
    if target.is_multicast() {
        return None;
    }
    let mut src_mac = eth_src;
    let mut opts = &icmp[24..];
    while !opts.is_empty() {
        let (ty, units) = (opts[0], usize::from(*opts.get(1)?));
        if units == 0 {
            return None; // RFC 4861: a zero-length option invalidates the message
        }
        let opt = opts.get(..units * 8)?;
        if ty == OPT_SOURCE_LL {
            if src.is_unspecified() {
                return None; // not allowed during duplicate address detection
            }
            src_mac = mac_at(opt, 2)?;
        }
        opts = &opts[units * 8..];
    }
    Some(Question::Ndp {
        src_mac,
        src,
        target,
    })
}

/// The ones' complement sum of the ICMPv6 message `icmp` under its pseudo-header:
/// zero for a message whose checksum field is right; its complement is the checksum
/// of one whose field is zero.
fn checksum(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: Mac, src: Mac, ethertype: u16, capacity: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + capacity);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp(op: u16, eth_dst: Mac, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(eth_dst, sha, ETHERTYPE_ARP, 28);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// A Neighbor Advertisement for `target` at `mac`, from `target` to `dst` at `dst_mac`.
fn neighbor_advertisement(
    mac: Mac,
    target: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: Mac,
    solicited: bool,
) -> Vec<u8> {
    let mut icmp = vec![NEIGHBOR_ADVERTISEMENT, 0, 0, 0];
    // Router 0, Solicited, Override: this answer replaces whatever was cached.
    icmp.extend_from_slice(&[if solicited { 0x60 } else { 0x20 }, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[OPT_TARGET_LL, 1]);
    icmp.extend_from_slice(&mac);
    let sum = checksum(&target, &dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(dst_mac, mac, ETHERTYPE_IPV6, 40 + icmp.len());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[IPPROTO_ICMPV6, 255]);
    f.extend_from_slice(&target.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The frame answering `q`: `q.target()` is at `mac`.
pub fn answer(q: &Question, mac: Mac) -> Vec<u8> {
    match *q {
        Question::Arp {
            sender_mac,
            sender_ip,
            target,
        } => arp(ARP_REPLY, sender_mac, mac, target, sender_mac, sender_ip),
        // Duplicate address detection: the answer goes to all nodes, unsolicited.
        Question::Ndp { src, target, .. } if src.is_unspecified() => {
            neighbor_advertisement(mac, target, ALL_NODES, multicast_mac(&ALL_NODES), false)
        }
        Question::Ndp {
            src_mac,
            src,
            target,
        } => neighbor_advertisement(mac, target, src, src_mac, true),
    }
}

/// A gratuitous ARP: a broadcast request from `ip` at `mac` for `ip` itself, which
/// makes every host that caches `ip` update it to `mac`.
pub fn gratuitous_arp(ip: Ipv4Addr, mac: Mac) -> Vec<u8> {
    arp(ARP_REQUEST, BROADCAST, mac, ip, [0; 6], ip)
}

/// An unsolicited Neighbor Advertisement with the Override flag to all nodes: every
/// host that caches `ip` updates it to `mac`.
pub fn unsolicited_advertisement(ip: Ipv6Addr, mac: Mac) -> Vec<u8> {
    neighbor_advertisement(mac, ip, ALL_NODES, multicast_mac(&ALL_NODES), false)
}

/// The solicited-node multicast group of `ip` (ff02::1:ffXX:XXXX), where solicitations
/// for it are sent.
pub fn solicited_node(ip: &Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address an IPv6 multicast group maps to (33:33 and its last 32 bits).
fn multicast_mac(group: &Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [0x02, 0, 0, 0, 0, 0x0b];
    const THEIRS: Mac = [0x02, 0, 0, 0, 0, 0x63];

    /// A Neighbor Solicitation as a host sends it (to the solicited-node group).
    fn solicitation(src: Ipv6Addr, target: Ipv6Addr, with_option: bool) -> Vec<u8> {
        let dst = solicited_node(&target);
        let mut icmp = vec![NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        if with_option {
            icmp.extend_from_slice(&[OPT_SOURCE_LL, 1]);
            icmp.extend_from_slice(&THEIRS);
        }
        let sum = checksum(&src, &dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = ethernet(multicast_mac(&dst), THEIRS, ETHERTYPE_IPV6, 0);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[IPPROTO_ICMPV6, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    fn request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        arp(ARP_REQUEST, BROADCAST, THEIRS, sender, [0; 6], target)
    }

    /// Runs a classic BPF program the way the kernel does, for the instructions used.
    fn run_filter(prog: &[BpfInsn], frame: &[u8], outgoing: bool) -> bool {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let load = |len: usize| -> Option<u32> {
                let b = frame.get(i.k as usize..i.k as usize + len)?;
                Some(b.iter().fold(0, |v, &x| (v << 8) | u32::from(x)))
            };
            match i.code {
                0x20 if i.k == SKF_AD_PKTTYPE => a = if outgoing { 4 } else { 0 },
                0x20 => match load(4) {
                    Some(v) => a = v,
                    None => return false,
                },
                0x28 => match load(2) {
                    Some(v) => a = v,
                    None => return false,
                },
                0x30 => match load(1) {
                    Some(v) => a = v,
                    None => return false,
                },
                0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                0x06 => return i.k != 0,
                c => panic!("instruction {c:#x} not modelled"),
            }
        }
    }

    #[test]
    fn arp_requests_are_answered_from_the_asked_address() {
        let (client, vip) = (
            Ipv4Addr::new(198, 18, 0, 99),
            Ipv4Addr::new(198, 18, 0, 200),
        );
        let q = parse(&request(client, vip)).unwrap();
        assert_eq!(q.target(), vip);
        let reply = answer(&q, OURS);
        assert_eq!(reply.len(), 42);
        assert_eq!(&reply[0..6], &THEIRS, "unicast back to the asker");
        assert_eq!(&reply[6..12], &OURS);
        assert_eq!(u16_at(&reply, 20), Some(ARP_REPLY));
        assert_eq!(mac_at(&reply, 22), Some(OURS));
        assert_eq!(v4_at(&reply, 28), Some(vip));
        assert_eq!(v4_at(&reply, 38), Some(client));
        assert_eq!(parse(&reply), None, "a reply is no question");
    }

    #[test]
    fn gratuitous_arp_is_no_question_and_names_the_new_owner() {
        let vip = Ipv4Addr::new(198, 18, 0, 200);
        let g = gratuitous_arp(vip, OURS);
        assert_eq!(&g[0..6], &BROADCAST);
        assert_eq!(v4_at(&g, 28), Some(vip));
        assert_eq!(v4_at(&g, 38), Some(vip));
        assert_eq!(parse(&g), None);
        assert!(
            run_filter(&FILTER, &g, false),
            "a request passes the filter"
        );
    }

    #[test]
    fn solicitations_are_answered_with_solicited_override_advertisements() {
        let client: Ipv6Addr = "2001:2::63".parse().unwrap();
        let vip: Ipv6Addr = "2001:2::c8".parse().unwrap();
        for with_option in [true, false] {
            let ns = solicitation(client, vip, with_option);
            let q = parse(&ns).unwrap();
            assert_eq!(
                q,
                Question::Ndp {
                    src_mac: THEIRS,
                    src: client,
                    target: vip
                }
            );
            let na = answer(&q, OURS);
            assert_eq!(&na[0..6], &THEIRS);
            let ip = &na[ETH_HEADER..];
            assert_eq!(ip[7], 255, "hop limit");
            assert_eq!(v6_at(ip, 8), Some(vip));
            assert_eq!(v6_at(ip, 24), Some(client));
            let icmp = &ip[40..];
            assert_eq!(icmp[0], NEIGHBOR_ADVERTISEMENT);
            assert_eq!(icmp[4], 0x60, "solicited and override");
            assert_eq!(checksum(&vip, &client, icmp), 0, "valid checksum");
            assert_eq!(v6_at(icmp, 8), Some(vip));
            assert_eq!(&icmp[24..26], &[OPT_TARGET_LL, 1]);
            assert_eq!(mac_at(icmp, 26), Some(OURS));
        }
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes() {
        let vip: Ipv6Addr = "2001:2::c8".parse().unwrap();
        let q = parse(&solicitation(Ipv6Addr::UNSPECIFIED, vip, false)).unwrap();
        let na = answer(&q, OURS);
        assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(v6_at(&na[ETH_HEADER..], 24), Some(ALL_NODES));
        assert_eq!(na[ETH_HEADER + 40 + 4], 0x20, "override, not solicited");
        // A source link-layer option is not allowed from the unspecified address.
        assert_eq!(parse(&solicitation(Ipv6Addr::UNSPECIFIED, vip, true)), None);
    }

    #[test]
    fn unsolicited_advertisements_override_to_all_nodes() {
        let vip: Ipv6Addr = "2001:2::c8".parse().unwrap();
        let na = unsolicited_advertisement(vip, OURS);
        let icmp = &na[ETH_HEADER + 40..];
        assert_eq!(icmp[4], 0x20);
        assert_eq!(checksum(&vip, &ALL_NODES, icmp), 0);
        assert_eq!(parse(&na), None);
        assert!(
            !run_filter(&FILTER, &na, false),
            "advertisements do not pass the filter"
        );
    }

    #[test]
    fn bad_solicitations_are_ignored() {
        let client: Ipv6Addr = "2001:2::63".parse().unwrap();
        let vip: Ipv6Addr = "2001:2::c8".parse().unwrap();
        let good = solicitation(client, vip, true);
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad_sum), None);
        let mut routed = good.clone();
        routed[ETH_HEADER + 7] = 64; // a hop limit other than 255: it crossed a router
        assert_eq!(parse(&routed), None);
        let mut zero_option = good.clone();
        zero_option[ETH_HEADER + 40 + 25] = 0;
        assert_eq!(parse(&zero_option), None);
        assert_eq!(parse(&good[..good.len() - 1]), None, "truncated");
    }

    #[test]
    fn the_filter_passes_questions_only_and_no_outgoing_frames() {
        let q4 = request(
            Ipv4Addr::new(198, 18, 0, 99),
            Ipv4Addr::new(198, 18, 0, 200),
        );
        let q6 = solicitation(
            "2001:2::63".parse().unwrap(),
            "2001:2::c8".parse().unwrap(),
            true,
        );
        assert!(run_filter(&FILTER, &q4, false));
        assert!(run_filter(&FILTER, &q6, false));
        assert!(!run_filter(&FILTER, &q4, true));
        let reply = answer(&parse(&q4).unwrap(), OURS);
        assert!(!run_filter(&FILTER, &reply, false));
        let mut tcp = q6.clone();
        tcp[ETH_HEADER + 6] = 6;
        assert!(!run_filter(&FILTER, &tcp, false));
        assert!(!run_filter(&FILTER, &[0; 10], false), "short frames drop");
    }

    /// Seeded random frames (fully random, and valid questions with random bytes
    /// changed or cut off) never panic the parser, and whatever it accepts it
    /// answers.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let seeds = [
            request(
                Ipv4Addr::new(198, 18, 0, 99),
                Ipv4Addr::new(198, 18, 0, 200),
            ),
            solicitation(
                "2001:2::63".parse().unwrap(),
                "2001:2::c8".parse().unwrap(),
                true,
            ),
            solicitation(Ipv6Addr::UNSPECIFIED, "2001:2::c8".parse().unwrap(), false),
        ];
        let mut accepted = 0;
        for round in 0..200_000 {
            let frame: Vec<u8> = if round % 4 == 0 {
                let len = (next() % 128) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut f = seeds[round % seeds.len()].clone();
                for _ in 0..(next() % 4) {
                    let at = (next() as usize) % f.len();
                    f[at] = next() as u8;
                }
                if next() % 8 == 0 {
                    f.truncate((next() as usize) % f.len());
                }
                f
            };
            if let Some(q) = parse(&frame) {
                accepted += 1;
                assert!(!answer(&q, OURS).is_empty());
            }
        }
        assert!(
            accepted > 0,
            "mutations that keep a question valid are answered"
        );
    }
}
