#!/usr/bin/env bash
# The service proxy, side by side in one run (needs root; everything inside throwaway
# network namespaces, no traffic leaves them):
#  1. sync: kubewire's proxier (one netlink batch, then incremental updates) at
#     SIZES services x 10 endpoints, then the kube-proxy nftables-shaped ruleset for
#     the same services applied the way knftables does it (`nft -f` transaction text,
#     plus the `nft --json list` of the table it does around syncs) at PEER_SIZES;
#     a one-endpoint change at each size;
#  2. the data path (cargo bench -p proxy --bench datapath): connections/s and
#     throughput to a ClusterIP vs to the endpoint's pod IP, with 10 and 10,000
#     services installed.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1000,10000,50000}
PEER_SIZES=${PEER_SIZES:-1000,10000}
command -v nft >/dev/null || { echo "nft is needed for the peer" >&2; exit 1; }
command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }

echo "== machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r), nft $(nft --version | awk '{print $2}'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== kubewire (cargo bench -p proxy --bench sync)"
PROXY_BENCH_SIZES=$SIZES cargo bench -q -p proxy --bench sync 2>&1 | grep -v '^$'

echo "== peer: kube-proxy nftables-shaped ruleset through nft -f and nft --json list"
tmp=$(mktemp -d)
ns=kwt-pxpeer-$$
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
for n in ${PEER_SIZES//,/ }; do
    ip netns add "$ns"
    python3 bench/proxy/kube_proxy_nft.py full "$n" 10 > "$tmp/full.nft"
    python3 bench/proxy/kube_proxy_nft.py change "$n" 10 > "$tmp/change.nft"
    t0=$(date +%s%N)
    ip netns exec "$ns" nft -f "$tmp/full.nft"
    t1=$(date +%s%N)
    ip netns exec "$ns" nft --json list table ip kube-proxy > "$tmp/list.json"
    t2=$(date +%s%N)
    ip netns exec "$ns" nft -f "$tmp/change.nft"
    t3=$(date +%s%N)
    ip netns exec "$ns" nft --json list table ip kube-proxy > /dev/null
    t4=$(date +%s%N)
    printf '%6d services: full sync nft -f %s ms (%d lines, %.1f MiB text) + nft --json list %s ms (%.1f MiB)\n' \
        "$n" "$(ms "$t0" "$t1")" "$(wc -l < "$tmp/full.nft")" "$(echo "$(stat -c %s "$tmp/full.nft") / 1048576" | bc -l)" \
        "$(ms "$t1" "$t2")" "$(echo "$(stat -c %s "$tmp/list.json") / 1048576" | bc -l)"
    printf '%6d services: one endpoint replaced: nft -f %s ms + nft --json list %s ms\n' \
        "$n" "$(ms "$t2" "$t3")" "$(ms "$t3" "$t4")"
    ip netns del "$ns"
done

echo "== data path (cargo bench -p proxy --bench datapath)"
cargo bench -q -p proxy --bench datapath 2>&1 | grep -v '^$'
