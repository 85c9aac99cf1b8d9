#!/usr/bin/env python3
"""The peer of `cargo bench -p proxy --bench sync`: the ruleset kube-proxy's nftables
mode (pkg/proxy/nftables/proxier.go, v1.31+) writes for N ClusterIP services x E
endpoints, as the `nft -f` transaction text knftables sends, for a full sync from
empty and for a one-endpoint change of one service (the partial sync of PR #126013).

Same services as the kubewire bench: ClusterIP 10.96.0.0 + i, port 80/TCP, endpoints
10.128.0.0 + i*E + j port 8080, pod network 10.128.0.0/9.

usage: kube_proxy_nft.py full N E > full.nft
       kube_proxy_nft.py change N E > change.nft   (service N/2: endpoint 3 replaced)
"""
import hashlib
import ipaddress
import sys

T = "ip kube-proxy"
CLUSTER_CIDR = "10.128.0.0/9"
SERVICE_CIDR = "10.96.0.0/12"


def ip(base, n):
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + n))


def hashed(name):
    # kube-proxy: servicePortChainNameBase = base32(sha256(name))[:8] + "-" + name
    import base64
    h = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]
    return f"{h}-{name}"


def svc_name(i):
    return f"bench/svc-{i}/tcp/http"


def svc_chain(i):
    return "service-" + hashed(svc_name(i))


def ep_chain(i, addr):
    return "endpoint-" + hashed(f"{svc_name(i)}__{addr}/8080")


def endpoints(i, e, replaced=False):
    eps = [ip("10.128.0.0", i * e + j) for j in range(e)]
    if replaced:
        eps[3] = ip("10.200.0.0", 1)
    return eps


def base(out):
    w = out.append
    w(f"add table {T} {{ comment \"rules for kube-proxy\" ; }}")
    # Full sync: knftables flushes the table's containers it rewrites.
    for s, spec in [
        ("cluster-ips", "type ipv4_addr ; comment \"Active ClusterIPs\" ;"),
        ("nodeport-ips", "type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ;"),
    ]:
        w(f"add set {T} {s} {{ {spec} }}")
        w(f"flush set {T} {s}")
    for m, spec in [
        ("no-endpoint-services", "type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ;"),
        ("no-endpoint-nodeports", "type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ;"),
        ("firewall-ips", "type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ;"),
        ("service-ips", "type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ;"),
        ("service-nodeports", "type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ;"),
    ]:
        w(f"add map {T} {m} {{ {spec} }}")
        w(f"flush map {T} {m}")
    chains = [
        ("filter-prerouting", "type filter hook prerouting priority -110 ;", ["ct state new jump firewall-check"]),
        ("filter-input", "type filter hook input priority -110 ;", ["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"]),
        ("filter-forward", "type filter hook forward priority -110 ;", ["ct state new jump service-endpoints-check", "ct state new jump cluster-ips-check"]),
        ("filter-output", "type filter hook output priority -110 ;", ["ct state new jump service-endpoints-check", "ct state new jump firewall-check"]),
        ("filter-output-post-dnat", "type filter hook output priority -90 ;", ["ct state new jump cluster-ips-check"]),
        ("nat-prerouting", "type nat hook prerouting priority -100 ;", ["jump services"]),
        ("nat-output", "type nat hook output priority -100 ;", ["jump services"]),
        ("nat-postrouting", "type nat hook postrouting priority 100 ;", ["jump masquerading"]),
        ("mark-for-masquerade", "", ["mark set mark or 0x4000"]),
        ("masquerading", "", ["mark and 0x4000 == 0 return", "mark set mark xor 0x4000", "masquerade fully-random"]),
        ("services", "", ["ip daddr . meta l4proto . th dport vmap @service-ips",
                          "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]),
        ("service-endpoints-check", "", ["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]),
        ("nodeport-endpoints-check", "", ["ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"]),
        ("cluster-ips-check", "", ["ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
                                   f"ip daddr {SERVICE_CIDR} drop comment \"Drop traffic to unallocated ClusterIPs\""]),
        ("firewall-check", "", ["ip daddr . meta l4proto . th dport vmap @firewall-ips"]),
        ("reject-chain", "", ["reject"]),
    ]
    for name, hook, rules in chains:
        w(f"add chain {T} {name} {{ {hook} }}" if hook else f"add chain {T} {name}")
        w(f"flush chain {T} {name}")
        for r in rules:
            w(f"add rule {T} {name} {r}")
    w(f"add element {T} nodeport-ips {{ 198.18.0.11 }}")


def service(out, i, eps):
    w = out.append
    cip = ip("10.96.0.0", i)
    sc = svc_chain(i)
    w(f"add chain {T} {sc}")
    w(f"flush chain {T} {sc}")
    w(f"add rule {T} {sc} ip daddr {cip} tcp dport 80 ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade")
    vmap = " , ".join(f"{k} : goto {ep_chain(i, a)}" for k, a in enumerate(eps))
    w(f"add rule {T} {sc} numgen random mod {len(eps)} vmap {{ {vmap} }}")
    for a in eps:
        endpoint(out, i, a)
    w(f"add element {T} cluster-ips {{ {cip} }}")
    w(f"add element {T} service-ips {{ {cip} . tcp . 80 : goto {sc} }}")


def endpoint(out, i, a):
    w = out.append
    ec = ep_chain(i, a)
    w(f"add chain {T} {ec}")
    w(f"flush chain {T} {ec}")
    w(f"add rule {T} {ec} ip saddr {a} jump mark-for-masquerade")
    w(f"add rule {T} {ec} meta l4proto tcp dnat to {a}:8080")


class Tx(list):
    """Collects a transaction as knftables orders it: containers first (chains
    are added and flushed before any rule jumps to them), then rules and elements."""

    def __init__(self):
        super().__init__()
        self.rules = []

    def append(self, line):
        if line.startswith(("add table", "add chain", "flush chain", "add set", "flush set", "add map", "flush map")):
            super().append(line)
        else:
            self.rules.append(line)

    def text(self):
        return "\n".join(list(self) + self.rules)


def main():
    mode, n, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = Tx()
    if mode == "full":
        base(out)
        for i in range(n):
            service(out, i, endpoints(i, e))
    elif mode == "change":
        # Partial sync: the changed service's chain is rewritten, the new endpoint's
        # chain added, the old one flushed and deleted.
        i = n // 2
        old = endpoints(i, e)[3]
        out.append(f"add table {T} {{ comment \"rules for kube-proxy\" ; }}")
        eps = endpoints(i, e, replaced=True)
        sc = svc_chain(i)
        out.append(f"add chain {T} {sc}")
        out.append(f"flush chain {T} {sc}")
        out.append(f"add rule {T} {sc} ip daddr {ip('10.96.0.0', i)} tcp dport 80 ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade")
        endpoint(out, i, eps[3])
        vmap = " , ".join(f"{k} : goto {ep_chain(i, a)}" for k, a in enumerate(eps))
        out.append(f"add rule {T} {sc} numgen random mod {len(eps)} vmap {{ {vmap} }}")
        out.rules.append(f"flush chain {T} {ep_chain(i, old)}")
        out.rules.append(f"delete chain {T} {ep_chain(i, old)}")
    print(out.text())


if __name__ == "__main__":
    main()
