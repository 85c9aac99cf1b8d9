//! In-memory allocators for Service ClusterIPs and NodePorts, as kube-apiserver keeps
//! them: a bitmap per service CIDR and one for the NodePort range, so that creating a
//! Service costs the same with 10 or 10,000 Services stored.
//!
//! The allocators follow the stored Services: every `put`/`delete` of a
//! `core/services/` key in a write transaction records that Service's addresses and
//! ports here (see `Txn::put`), with an undo entry. The store commits the undo log
//! when the transaction commits and rolls it back when the transaction fails, is a dry
//! run or panics, so a refused or failed write leaks nothing, a delete or a type change
//! frees what the Service held, and the state after a restart is rebuilt from the
//! stored Services ([`Allocator::rebuild`]). Writers are serialised by the store, so
//! the state here is always "committed plus the one transaction in progress".

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;
use serde_json::Value;

use crate::service::Ranges;

/// Bitmaps cover at most this many addresses of a range (IPv6 ranges can be larger
/// than memory); addresses beyond are tracked in the counts only and never handed out
/// dynamically.
const MAX_BITS: u128 = 1 << 20;

/// A fixed-size bit set with a first-clear-bit search.
struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    fn new(len: usize) -> Bitmap {
        Bitmap {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    fn set(&mut self, i: usize, on: bool) {
        if i >= self.len {
            return;
        }
        let (w, b) = (i / 64, i % 64);
        if on {
            self.words[w] |= 1 << b;
        } else {
            self.words[w] &= !(1 << b);
        }
    }

    /// The first clear bit in `from..to`.
    fn first_clear(&self, from: usize, to: usize) -> Option<usize> {
        let to = to.min(self.len);
        let mut i = from;
        while i < to {
            let (w, b) = (i / 64, i % 64);
            // Bits below `b` count as set.
            let word = self.words[w] | ((1u64 << b) - 1);
            if word != u64::MAX {
                let found = w * 64 + (!word).trailing_zeros() as usize;
                return (found < to).then_some(found);
            }
            i = (w + 1) * 64;
        }
        None
    }
}

/// One service CIDR: offsets from its network address.
struct NetMap {
    net: IpNet,
    bits: Bitmap,
    /// The first address handed out dynamically: kube-apiserver keeps the addresses
    /// below (its static band, min(max(16, size/16), 256)) for requested IPs.
    dynamic_from: usize,
    /// The last usable offset (IPv4 leaves out the broadcast address).
    last: usize,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl NetMap {
    fn new(net: IpNet) -> NetMap {
        let bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let size: u128 = if bits >= 127 { u128::MAX } else { 1 << bits };
        let last = if matches!(net, IpNet::V4(_)) {
            size.saturating_sub(2)
        } else {
            size.saturating_sub(1)
        };
        let last = last.min(MAX_BITS - 1) as usize;
        let band = if size < 16 {
            0
        } else {
            (size / 16).clamp(16, 256)
        };
        NetMap {
            net,
            bits: Bitmap::new(last + 1),
            dynamic_from: (band as usize).clamp(1, last.max(1)),
            last,
        }
    }

    fn offset(&self, ip: IpAddr) -> Option<usize> {
        if !self.net.contains(&ip) {
            return None;
        }
        let off = to_u128(ip) - to_u128(self.net.network());
        usize::try_from(off).ok().filter(|o| *o <= self.last)
    }

    fn ip(&self, off: usize) -> IpAddr {
        let n = to_u128(self.net.network()) + off as u128;
        match self.net {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
        }
    }
}

/// What one Service holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) ips: Vec<IpAddr>,
    /// Node ports (including `healthCheckNodePort`), each number once.
    pub(crate) ports: Vec<u16>,
}

impl Held {
    /// What a stored Service holds.
    pub(crate) fn of(svc: &Value) -> Held {
        let spec = &svc["spec"];
        let mut ips: Vec<IpAddr> = spec["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        let mut ports: Vec<u16> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| u16::try_from(p["nodePort"].as_i64()?).ok())
            .chain(
                spec["healthCheckNodePort"]
                    .as_i64()
                    .and_then(|p| u16::try_from(p).ok()),
            )
            .filter(|p| *p != 0)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Held { ips, ports }
    }
}

struct Inner {
    nets: Vec<NetMap>,
    /// How many Services hold each address / port (one, unless old data says otherwise).
    ips: HashMap<IpAddr, u32>,
    ports: HashMap<u16, u32>,
    port_bits: Bitmap,
    port_base: u16,
    /// Dynamic node ports start here (kube-apiserver's static band is
    /// min(max(16, size/32), 128) ports at the start of the range).
    port_dynamic_from: usize,
    by_key: HashMap<String, Held>,
    /// Changes of the transaction in progress: key and what it held before.
    undo: Vec<(String, Option<Held>)>,
}

impl Inner {
    fn take(&mut self, h: &Held) {
        for ip in &h.ips {
            *self.ips.entry(*ip).or_default() += 1;
            for n in &mut self.nets {
                if let Some(o) = n.offset(*ip) {
                    n.bits.set(o, true);
                }
            }
        }
        for p in &h.ports {
            *self.ports.entry(*p).or_default() += 1;
            if let Some(i) = p.checked_sub(self.port_base) {
                self.port_bits.set(usize::from(i), true);
            }
        }
    }

    fn release(&mut self, h: &Held) {
        for ip in &h.ips {
            if let Some(c) = self.ips.get_mut(ip) {
                *c -= 1;
                if *c == 0 {
                    self.ips.remove(ip);
                    for n in &mut self.nets {
                        if let Some(o) = n.offset(*ip) {
                            n.bits.set(o, false);
                        }
                    }
                }
            }
        }
        for p in &h.ports {
            if let Some(c) = self.ports.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    self.ports.remove(p);
                    if let Some(i) = p.checked_sub(self.port_base) {
                        self.port_bits.set(usize::from(i), false);
                    }
                }
            }
        }
    }

    /// Makes `key` hold `new`, returning what it held.
    fn set(&mut self, key: &str, new: Option<Held>) -> Option<Held> {
        let old = match &new {
            Some(h) => self.by_key.insert(key.to_string(), h.clone()),
            None => self.by_key.remove(key),
        };
        if let Some(o) = &old {
            self.release(o);
        }
        if let Some(n) = &new {
            self.take(n);
        }
        old
    }
}

/// The ClusterIP and NodePort allocators (see the module documentation).
pub(crate) struct Allocator {
    inner: Mutex<Inner>,
}

impl Allocator {
    pub(crate) fn new(ranges: &Ranges) -> Allocator {
        let (lo, hi) = (*ranges.node_ports.start(), *ranges.node_ports.end());
        let size = usize::from(hi.saturating_sub(lo)) + 1;
        let band = if size <= 16 {
            0
        } else {
            (size / 32).clamp(16, 128)
        };
        Allocator {
            inner: Mutex::new(Inner {
                nets: ranges.cidrs.iter().copied().map(NetMap::new).collect(),
                ips: HashMap::new(),
                ports: HashMap::new(),
                port_bits: Bitmap::new(size),
                port_base: lo,
                port_dynamic_from: band,
                by_key: HashMap::new(),
                undo: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts over from the stored Services (at start).
    pub(crate) fn rebuild<'a>(&self, services: impl Iterator<Item = (&'a str, &'a Value)>) {
        let mut g = self.lock();
        for (key, svc) in services {
            g.set(key, Some(Held::of(svc)));
        }
        g.undo.clear();
    }

    /// Records what the Service at `key` holds after a write (`None`: deleted).
    pub(crate) fn record(&self, key: &str, svc: Option<&Value>) {
        let mut g = self.lock();
        let old = g.set(key, svc.map(Held::of));
        g.undo.push((key.to_string(), old));
    }

    /// The transaction committed: its changes stay.
    pub(crate) fn commit(&self) {
        self.lock().undo.clear();
    }

    /// The transaction failed: undo its changes, newest first.
    pub(crate) fn rollback(&self) {
        let mut g = self.lock();
        while let Some((key, old)) = g.undo.pop() {
            g.set(&key, old);
        }
    }

    /// Whether a Service other than `key` holds `ip`.
    pub(crate) fn ip_taken(&self, ip: IpAddr, key: &str) -> bool {
        let g = self.lock();
        let n = g.ips.get(&ip).copied().unwrap_or(0);
        let mine = g.by_key.get(key).is_some_and(|h| h.ips.contains(&ip));
        n > u32::from(mine)
    }

    /// Whether a Service other than `key` holds node port `port`.
    pub(crate) fn port_taken(&self, port: u16, key: &str) -> bool {
        let g = self.lock();
        let n = g.ports.get(&port).copied().unwrap_or(0);
        let mine = g.by_key.get(key).is_some_and(|h| h.ports.contains(&port));
        n > u32::from(mine)
    }

    /// A free address of `net` (one of the configured ranges): the first one above
    /// the static band, else the first one in it. The caller takes it by storing the
    /// Service.
    pub(crate) fn next_ip(&self, net: &IpNet) -> Option<IpAddr> {
        let g = self.lock();
        let n = g.nets.iter().find(|n| n.net == *net)?;
        n.bits
            .first_clear(n.dynamic_from, n.last + 1)
            .or_else(|| n.bits.first_clear(1, n.dynamic_from))
            .map(|o| n.ip(o))
    }

    /// A free node port not in `skip` (ports this Service is taking already):
    /// above the static band first, as kube-apiserver does.
    pub(crate) fn next_port(&self, skip: &HashSet<u16>) -> Option<u16> {
        let g = self.lock();
        let len = g.port_bits.len;
        let find = |from: usize, to: usize| {
            let mut at = from;
            while let Some(i) = g.port_bits.first_clear(at, to) {
                let port = g.port_base + i as u16;
                if !skip.contains(&port) {
                    return Some(port);
                }
                at = i + 1;
            }
            None
        };
        find(g.port_dynamic_from, len).or_else(|| find(0, g.port_dynamic_from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_finds_the_first_clear_bit() {
        let mut b = Bitmap::new(200);
        for i in 0..130 {
            b.set(i, true);
        }
        assert_eq!(b.first_clear(0, 200), Some(130));
        assert_eq!(b.first_clear(5, 100), None);
        b.set(64, false);
        assert_eq!(b.first_clear(3, 200), Some(64));
        assert_eq!(b.first_clear(65, 200), Some(130));
        for i in 130..200 {
            b.set(i, true);
        }
        assert_eq!(b.first_clear(65, 200), None);
    }

    #[test]
    fn static_bands() {
        let a = Allocator::new(&Ranges {
            cidrs: vec![
                "10.96.0.0/12".parse().unwrap(),
                "10.0.0.0/29".parse().unwrap(),
            ],
            node_ports: 30000..=32767,
        });
        assert_eq!(
            a.next_ip(&"10.96.0.0/12".parse().unwrap()),
            Some("10.96.1.0".parse().unwrap())
        );
        // A /29 is smaller than any band: .1 to .6.
        assert_eq!(
            a.next_ip(&"10.0.0.0/29".parse().unwrap()),
            Some("10.0.0.1".parse().unwrap())
        );
        // 2768 ports / 32 = 86 in the static band.
        assert_eq!(a.next_port(&HashSet::new()), Some(30086));
        let svc = serde_json::json!({"spec": {"clusterIPs": ["10.0.0.1"]}});
        a.record("k", Some(&svc));
        a.commit();
        assert_eq!(
            a.next_ip(&"10.0.0.0/29".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap())
        );
        assert!(a.ip_taken("10.0.0.1".parse().unwrap(), "other"));
        assert!(!a.ip_taken("10.0.0.1".parse().unwrap(), "k"));
        a.record("k", None);
        a.rollback();
        assert!(a.ip_taken("10.0.0.1".parse().unwrap(), "other"));
    }
}
