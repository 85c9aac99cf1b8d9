#!/usr/bin/env bash
# BGP announcement of LoadBalancer addresses, in a lab with `loadBalancer: bgp` (2 nodes,
# the router BIRD 2, or FRR with ROUTER=frr):
#   - Service create to reachable from `outside` through the router: a client in
#     `outside` creates a LoadBalancer Service through the API, asking for its address
#     with MetalLB's `loadBalancerIPs` annotation (the allocation controller assigns it,
#     the agents announce it), then connects to the address every millisecond until one
#     succeeds; TRIALS trials, median and max.
#   - Convergence after a node death, in the router's own kernel table: node-2's
#     underlay link is cut (no FIN, no NOTIFICATION reaches the router) until the
#     router's route to the address has no path through node-2, with the BGPPeer's
#     hold time at HOLDS (default "9s 3s"); the hold time is the floor it cannot beat
#     without BFD. With BFD=1 the lab runs BFD (`bfd: true`: MetalLB's default
#     timers, 300 ms x 3) and the cut is noticed by it. And back: link up to the path
#     returning.
# Needs root. Everything runs in a lab named kwbgp; traffic stays inside it.
# Usage: bench/lb-bgp.sh  (BIN=path/to/kubewire to use another build, default release)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwbgp
router=${ROUTER:-bird}
trials=${TRIALS:-20}
holds=${HOLDS:-"9s 3s"}
if [[ -z ${BIN:-} ]]; then
  cargo build --release -p kubewire >/dev/null 2>&1
  BIN=$PWD/target/release/kubewire
fi
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
cleanup() { "$BIN" lab down --name $name >/dev/null 2>&1 || true; rm -rf "${dir:-}"; }
trap cleanup EXIT
cleanup
dir=$(mktemp -d)
now() { date +%s.%N; }

printf 'nodes: 2\nloadBalancer: bgp\nrouter: %s\nbfd: %s\napiListen: 127.0.0.1:0\n' \
  "$router" "$([[ ${BFD:-0} == 1 ]] && echo true || echo false)" >"$dir/lab.yaml"
"$BIN" lab up --name $name --config "$dir/lab.yaml" --detach >/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); router $router, BFD ${BFD:-0}; binary $BIN"

kubectl apply -f - >/dev/null <<'EOF'
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: default, namespace: metallb-system}
spec: {addresses: ["198.18.0.200-198.18.0.250"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
EOF
until [[ $(kubectl get pods -l app=web --field-selector=status.phase=Running -o name | wc -l) -ge 2 ]]; do sleep 0.1; done

echo
echo "== Service create to reachable from outside via BGP ($trials trials)"
ip netns exec $name-outside python3 bench/lb_create.py "$KUBECONFIG" s 198.18.0.201 "$trials"

hops() { ip -n $name-router route show 198.18.0.201 | grep -o 'via [0-9.]*' | sort | tr '\n' ' '; }
echo
echo "== node-2 cut off the underlay until its path leaves the router's table"
for hold in $holds; do
  kubectl -n metallb-system patch bgppeer lab-router --type=merge -p "{\"spec\":{\"holdTime\":\"$hold\"}}" >/dev/null
  # Sessions restart with the new hold time; wait for both paths.
  sleep 1
  until [[ $(hops) == "via 198.18.0.11 via 198.18.0.12 " ]]; do sleep 0.05; done
  t0=$(now)
  ip -n $name-underlay link set to-node-2 down
  until [[ $(hops) == "via 198.18.0.11 " ]]; do sleep 0.01; done
  down=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
  t0=$(now)
  ip -n $name-underlay link set to-node-2 up
  until [[ $(hops) == "via 198.18.0.11 via 198.18.0.12 " ]]; do sleep 0.01; done
  up=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
  echo "holdTime $hold: path withdrawn after ${down} s; back ${up} s after the link returned"
done
