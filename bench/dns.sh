#!/usr/bin/env bash
# Cluster DNS benchmark, everything inside one throwaway network namespace:
#  1. queries/s and latency with dnsperf for SERVICES cluster names: `kubewire dns`
#     (names live from the embedded API server) against NSD (the same names from a zone
#     file), side by side in one run, alternating rounds;
#  2. resident memory of `kubewire dns` with SERVICES services and PODS pods (default
#     `--pods insecure`, which does not watch pods, and `--pods verified`, which does);
#  3. time from a Service create to its name answering.
# usage: bench/dns.sh [SERVICES=10000] [PODS=100000] [SECONDS=10] [ROUNDS=2]
# needs root; installs the Debian packages dnsperf, nsd, bind9-dnsutils, curl, python3 if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "bench/dns.sh: failed at line $LINENO" >&2' ERR
SERVICES=${1:-10000}
PODS=${2:-100000}
SECS=${3:-10}
ROUNDS=${4:-2}

[[ $(id -u) == 0 ]] || { echo "bench/dns.sh needs root (it makes a network namespace)" >&2; exit 1; }
# The peers and clients, from Debian's packages, installed only when missing.
missing=()
for p in dnsperf nsd bind9-dnsutils curl python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# KUBEWIRE_BIN: a binary built beforehand (the tree may be changing under a build).
if [[ -z ${KUBEWIRE_BIN:-} ]]; then
  cargo build --release -p kubewire -q
fi
BIN=${KUBEWIRE_BIN:-$PWD/target/release/kubewire}
API=$PWD/bench/dns/api.py
NS=kwb-dns-$$
# tmpfs: the API server fsyncs every write; the benchmark measures DNS, not the disk.
WORK=$(mktemp -d /dev/shm/kwb-dns.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "versions: $(nsd -v 2>&1 | head -1), $(dnsperf -h 2>&1 | grep -m1 -i version || dpkg-query -W -f='dnsperf ${Version}' dnsperf)"

# Background servers: `ip netns exec` itself (it execs the program, so $! is the server).
ip netns exec "$NS" "$BIN" apiserver --data-dir "$WORK/api" --listen 127.0.0.1:6443 >"$WORK/apiserver.log" 2>&1 &
pids+=($!)
until [[ -f $WORK/api/admin.kubeconfig ]]; do sleep 0.1; done

t0=$(date +%s.%N)
in_ns python3 "$API" create services "$SERVICES" "$WORK/api"
echo "created $SERVICES services in $(echo "$(date +%s.%N) - $t0" | bc) s"

start_dns() { # $1: pods mode
  ip netns exec "$NS" "$BIN" dns --kubeconfig "$WORK/api/admin.kubeconfig" --listen 127.0.0.1:53 \
    --upstream 127.0.0.9 --pods "$1" --health-listen 127.0.0.1:8080 \
    --metrics-listen 127.0.0.1:9153 >>"$WORK/dns.log" 2>&1 &
  DNS_PID=$!
  pids+=($DNS_PID)
  local t0; t0=$(date +%s.%N)
  until in_ns curl -sf http://127.0.0.1:8080/ready >/dev/null; do sleep 0.05; done
  echo "kubewire dns --pods $1: ready (synced) $(echo "$(date +%s.%N) - $t0" | bc) s after start"
}
start_dns insecure

# NSD with the same names.
mkdir -p "$WORK/nsd"
{
  echo '$ORIGIN cluster.local.'
  echo '$TTL 30'
  echo '@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30'
  echo '@ IN NS ns.dns.cluster.local.'
  echo 'ns.dns IN A 10.96.0.10'
  for ((i = 0; i < SERVICES; i++)); do
    echo "svc-$i.bench.svc IN A 10.100.$((i / 250)).$((i % 250 + 1))"
  done
} >"$WORK/nsd/cluster.local.zone"
cat >"$WORK/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.2
  port: 53
  server-count: $(nproc)
  reuseport: yes
  username: ""
  chroot: ""
  zonesdir: "$WORK/nsd"
  database: ""
  pidfile: "$WORK/nsd/nsd.pid"
  xfrdfile: "$WORK/nsd/xfrd.state"
  zonelistfile: "$WORK/nsd/zone.list"
  logfile: "$WORK/nsd/nsd.log"
  hide-version: yes
  # Response rate limiting would throttle dnsperf's single source address.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: cluster.local
  zonefile: cluster.local.zone
CONF
ip netns exec "$NS" nsd -d -c "$WORK/nsd/nsd.conf" >"$WORK/nsd.out" 2>&1 &
pids+=($!)
last=svc-$((SERVICES - 1)).bench.svc.cluster.local
want=10.100.$(((SERVICES - 1) / 250)).$(((SERVICES - 1) % 250 + 1))
until [[ $(in_ns dig +short +time=1 @127.0.0.2 "$last") == "$want" ]]; do sleep 0.1; done
[[ $(in_ns dig +short @127.0.0.1 "$last") == "$want" ]] || { echo "kubewire dns gives a wrong answer for $last" >&2; exit 1; }

for ((i = 0; i < SERVICES; i++)); do echo "svc-$i.bench.svc.cluster.local A"; done | shuf >"$WORK/queries"
perf() { # $1 name, $2 server
  in_ns dnsperf -s "$2" -d "$WORK/queries" -l "$SECS" -c 8 -T 1 -q 500 -t 2 >"$WORK/perf.out" 2>&1
  local qps lat lost
  qps=$(awk '/Queries per second/ {print $4}' "$WORK/perf.out")
  lat=$(awk '/Average Latency/ {print $4*1000}' "$WORK/perf.out")
  lost=$(awk '/Queries lost/ {print $3}' "$WORK/perf.out")
  printf '%-14s %10.0f qps   avg latency %6.3f ms   lost %s\n' "$1" "$qps" "$lat" "$lost"
  echo "$qps" >>"$WORK/qps.$1"
}
echo "dnsperf -c 8 -T 1 -q 500 -l $SECS, $SERVICES names, $ROUNDS rounds each, alternating:"
for ((r = 1; r <= ROUNDS; r++)); do
  perf nsd 127.0.0.2
  perf kubewire-dns 127.0.0.1
done
nsd_q=$(sort -n "$WORK/qps.nsd" | tail -1)
kw_q=$(sort -n "$WORK/qps.kubewire-dns" | tail -1)
echo "best round: kubewire dns $kw_q qps, NSD $nsd_q qps: $(echo "scale=2; $kw_q / $nsd_q" | bc)x NSD"
echo "resident memory, kubewire dns --pods insecure with $SERVICES services: $(rss_mb $DNS_PID) MB"

in_ns python3 "$API" latency 50 "$WORK/api" 127.0.0.1:53

t0=$(date +%s.%N)
in_ns python3 "$API" create pods "$PODS" "$WORK/api"
echo "created $PODS pods in $(echo "$(date +%s.%N) - $t0" | bc) s"
sleep 2
echo "resident memory, kubewire dns --pods insecure, $SERVICES services + $PODS pods in the API: $(rss_mb $DNS_PID) MB"
kill "$DNS_PID"
wait "$DNS_PID" 2>/dev/null || true
start_dns verified
# Let the allocator settle after the initial list.
sleep 2
echo "resident memory, kubewire dns --pods verified (watches the $PODS pods) with $SERVICES services: $(rss_mb $DNS_PID) MB"
pod=$(in_ns dig +short @127.0.0.1 10-128-1-5.bench.pod.cluster.local)
[[ $pod == 10.128.1.5 ]] || { echo "verified pod record missing ($pod)" >&2; exit 1; }
