#!/usr/bin/env bash
# L2 announcement of LoadBalancer addresses (the agent's ARP/NDP answers), measured from
# `outside` with curl:
#   - failover: the announcing node is killed (every process in its namespace, its pod
#     runner and its agent, with SIGKILL; then its underlay link down) while outside's
#     ARP cache points at it; the time from the kill to the first HTTP answer from
#     outside through another node. TRIALS kills (default 20), in labs of NODES nodes
#     (default 5): in each lab the owner is killed again and again until the owner is
#     node-1, which runs the Service's pods (so a killed node takes no endpoint with it:
#     what is measured is the announcement), then the next lab starts;
#   - Service create to reachable: a client in `outside` creates a LoadBalancer Service
#     asking for its address (MetalLB's `loadBalancerIPs`; the allocation controller
#     assigns it, the agents announce it) and connects every millisecond until the
#     address answers (bench/lb_create.py; SERVICES Services, default 20).
# Needs root. Everything runs in a lab named kwl2bench; traffic stays inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwl2bench
trials=${TRIALS:-20}
services=${SERVICES:-20}
nodes=${NODES:-5}
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
ms() { date +%s%N | cut -b1-13; }
out() { ip netns exec "$name-outside" "$@"; }

cargo build --release -p kubewire >/dev/null 2>&1
bin=$PWD/target/release/kubewire
cleanup() { "$bin" lab down --name $name >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
cfg=$(mktemp -d)
printf 'nodes: %s\n' "$nodes" >"$cfg/lab.yaml"

# A LoadBalancer Service `$1` asking the allocation controller for `$2`, in front of the
# pods on node-1.
service() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $1
  annotations: {metallb.io/loadBalancerIPs: "$2"}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
}
# Loops curl from outside until `$1` answers (at most 30 s), each try giving up after
# `$2` seconds without a connection (default 0.2; the loop's resolution).
reach() {
  out sh -c "end=\$((\$(date +%s)+30)); while [ \$(date +%s) -lt \$end ]; do curl -s -o /dev/null --connect-timeout ${2:-0.2} --max-time 1 http://$1/ && exit 0; done; exit 1"
}
owner() { kubectl get servicel2statuses -A -o jsonpath="{.items[?(@.status.serviceName==\"$1\")].status.node}"; }
mac_of() { ip -n "$name-$1" -br link show eth0 | awk '{print $3}'; }
macs() { { out arping -c 2 -W 0.2 -i eth0 "$1" || true; } | awk '/bytes from/{print $4}' | sort -u; }
# Until one node announces `$2` (Service `$1`) and alone answers ARP for it, twice in a
# row: while a new lab's agents become ready one after another, the first ready ones
# announce everything for a moment.
settle() {
  local ok=0
  for _ in $(seq 60); do
    local o
    o=$(owner "$1")
    if [[ -n $o && $o != *" "* && $(macs "$2") == "$(mac_of "$o")" ]]; then
      ok=$((ok + 1))
      ((ok >= 2)) && return 0
    else
      ok=0
    fi
    sleep 0.5
  done
  return 1
}
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms, min %d ms (n=%d)\n", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR], a[1], NR}'; }

# A lab with MetalLB's CRDs, a pool and an L2Advertisement (unless it has them), and
# three web pods on node-1.
lab() {
  cleanup
  "$bin" lab up --name $name --config "$cfg/lab.yaml" --detach >/dev/null
  kubectl apply -f crates/lb/crds/metallb-v0.16.1/ >/dev/null
  until kubectl get ipaddresspools -A >/dev/null 2>&1; do sleep 0.2; done
  if [[ -z $(kubectl get ipaddresspools -A -o name) ]]; then
    kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: metallb-system}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: bench, namespace: metallb-system}
spec:
  addresses: ["198.18.0.200-198.18.0.250"]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: bench, namespace: metallb-system}
EOF
  fi
  kubectl apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeName: node-1
      containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]
EOF
  until [[ $(kubectl get pods -l app=web --field-selector=status.phase=Running -o name | wc -l) -ge 3 ]]; do sleep 0.2; done
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
echo
echo "== failover: owner killed to outside answered through another node ($trials kills, labs of $nodes nodes)"
results=()
labs=0
while ((${#results[@]} < trials)); do
  lab
  labs=$((labs + 1))
  vip=198.18.0.$((200 + labs % 40))
  service web $vip
  reach $vip && settle web $vip || { echo "lab $labs: $vip does not settle"; continue; }
  while ((${#results[@]} < trials)); do
    # Outside reaches the address (its ARP cache now holds the owner's MAC).
    reach $vip || { echo "lab $labs: $vip does not answer"; break; }
    o=$(owner web)
    [[ -z $o || $o == node-1 ]] && break
    t0=$(ms)
    kill -9 $(ip netns pids "$name-$o") 2>/dev/null || true
    ip -n "$name-$o" link set eth0 down
    reach $vip || { echo "lab $labs: $vip did not answer within 30 s after $o died"; break; }
    t1=$(ms)
    results+=($((t1 - t0)))
    for _ in $(seq 50); do n=$(owner web); [[ -n $n && $n != "$o" ]] && break; sleep 0.1; done
    printf 'kill %2d (lab %d): %s killed, answered through %s after %d ms\n' "${#results[@]}" "$labs" "$o" "$n" $((t1 - t0))
  done
done
printf 'failover: '; printf '%s\n' "${results[@]}" | stats

echo
echo "== Service create to answered from outside, through the allocation controller ($services Services)"
lab
out python3 bench/lb_create.py "$KUBECONFIG" s 198.18.0.221 "$services" 8080
