#!/usr/bin/env bash
# How fast `kubewire lab up` gives a usable cluster, and how fast it runs 100 pods, each
# next to its floor measured in the same run:
#   - lab up (3 nodes) to every node Ready, and to cluster DNS ready, vs
#     `lab up --network-only` (the namespaces and links alone);
#   - a Deployment of 100 pods from `kubectl apply` to 100 Running, vs the same
#     per-pod kernel work done directly: 100 network namespaces, each wired by the
#     kubewire CNI plugin from node-1's config (no API, no controllers, no pod runner).
# Needs root. Everything runs in a lab named kwbench; traffic stays inside it.
#
# COMPARE="before=/path/to/kubewire after=/path/to/kubewire" bench/lab.sh instead runs
# lab up and 100 pods with each binary in turn, alternating, RUNS rounds (a change's
# before and after in one session).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwbench
runs=${RUNS:-3}
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

if [[ -n ${COMPARE:-} ]]; then
  first=${COMPARE%% *}
  trap '"${first#*=}" lab down --name $name >/dev/null 2>&1 || true' EXIT
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
  for r in $(seq "$runs"); do
    for pair in $COMPARE; do
      label=${pair%%=*} bin=${pair#*=}
      "$bin" lab down --name $name >/dev/null 2>&1 || true
      t=$(now); "$bin" lab up --name $name --network-only >/dev/null; net=$(since "$t")
      "$bin" lab down --name $name >/dev/null
      out=$("$bin" lab up --name $name --detach 2>/dev/null)
      nodes=$(sed -n 's/.*Ready after \([0-9.]*\)s.*/\1/p' <<<"$out")
      dns=$(sed -n 's/.*cluster DNS after \([0-9.]*\)s.*/\1/p' <<<"$out")
      t=$(now)
      kubectl create deployment many --image=nginx --replicas=100 >/dev/null
      until [[ $(kubectl get pods -l app=many --field-selector=status.phase=Running -o name | wc -l) -ge 100 ]]; do
        sleep 0.1
      done
      pods=$(since "$t")
      printf 'round %s %-8s load %-5s network only %5ss  nodes Ready %5ss  DNS ready %5ss  100 pods Running %6ss\n' \
        "$r" "$label" "$(cut -d' ' -f1 /proc/loadavg)" "$net" "$nodes" "$dns" "$pods"
      "$bin" lab down --name $name >/dev/null
    done
  done
  exit 0
fi

cargo build --release -p kubewire >/dev/null 2>&1
bin=$PWD/target/release/kubewire
cleanup() { "$bin" lab down --name $name >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
echo
echo "== lab up, 3 nodes ($runs runs)"
printf '%-4s %14s %14s %22s\n' run "network only" "nodes Ready" "cluster DNS ready"
for r in $(seq "$runs"); do
  t=$(now); "$bin" lab up --name $name --network-only >/dev/null; net=$(since "$t")
  "$bin" lab down --name $name >/dev/null
  out=$("$bin" lab up --name $name --detach 2>/dev/null)
  nodes=$(sed -n 's/.*Ready after \([0-9.]*\)s.*/\1/p' <<<"$out")
  dns=$(sed -n 's/.*cluster DNS after \([0-9.]*\)s.*/\1/p' <<<"$out")
  printf '%-4s %13ss %13ss %21ss\n' "$r" "$net" "$nodes" "$dns"
  [[ $r == "$runs" ]] || "$bin" lab down --name $name >/dev/null
done

echo
echo "== 100 pods Running (lab of 3 nodes, whoami workload)"
t=$(now)
kubectl create deployment many --image=nginx --replicas=100 >/dev/null
until [[ $(kubectl get pods -l app=many --field-selector=status.phase=Running -o name | wc -l) -ge 100 ]]; do
  sleep 0.1
done
lab=$(since "$t")
kubectl delete deployment many --wait=false >/dev/null

# The floor: the same kernel work without the cluster, in node-1's namespace.
node=$name-node-1
conf=/var/lib/kubewire/$name/node-1/root/etc/cni/net.d/10-kubewire.conflist
plugin=$(python3 -c "import json,sys; l=json.load(open('$conf')); p=l['plugins'][0]; p['name']=l['name']; p['cniVersion']=l['cniVersion']; p['dataDir']='/run/kwbench-floor'; p['podCIDRs']=['10.250.0.0/24','fd00:10:250::/64']; print(json.dumps(p))")
t=$(now)
for i in $(seq 100); do
  ip netns add kwbench-f$i
  ip netns exec $node env CNI_COMMAND=ADD CNI_CONTAINERID=floor$i CNI_NETNS=/run/netns/kwbench-f$i \
    CNI_IFNAME=eth0 CNI_PATH=/var/lib/kubewire/$name/node-1/root/opt/cni/bin \
    "$bin" <<<"$plugin" >/dev/null
done
floor=$(since "$t")
for i in $(seq 100); do
  ip netns exec $node env CNI_COMMAND=DEL CNI_CONTAINERID=floor$i CNI_NETNS=/run/netns/kwbench-f$i \
    CNI_IFNAME=eth0 CNI_PATH=/var/lib/kubewire/$name/node-1/root/opt/cni/bin "$bin" <<<"$plugin" >/dev/null || true
  ip netns del kwbench-f$i
done
rm -rf /run/kwbench-floor
printf '%-44s %8ss\n' "kubectl create -> 100 pods Running" "$lab"
printf '%-44s %8ss\n' "floor: 100 netns + CNI ADD, one after another" "$floor"
