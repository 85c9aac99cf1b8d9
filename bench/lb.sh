#!/usr/bin/env bash
# LoadBalancer address allocation at 1,000 Services, in a lab (2 nodes), measured in one
# run:
#   - 1,000 LoadBalancer Services applied at once: from the start of `kubectl apply`, and
#     from its end, until every one has its address;
#   - one change at that size, 20 times: a Service created, the time from the watch's
#     ADDED event to the MODIFIED event that carries its address (both seen by one
#     `kubectl get -w`, so it is the controller's reaction: a pass over all 1,001 and
#     its writes), the controller's own pass times from its debug log, and the CPU
#     time each kind of component used meanwhile (on 2 cores, what the others do when
#     a Service changes delays the controller's writes);
#   - their announcement: from the start of `kubectl apply` until the agents have
#     written a ServiceL2Status for every one (an L2Advertisement selects the pool; the
#     addresses are outside the underlay, so no client asks for them: what is timed is
#     the agents' election and status writes), and the agents' memory (VmRSS, each
#     node's) before and after, next to their growth from the 1,000 ClusterIP Services
#     (what any Service costs the agent's service proxy);
#   - the memory (VmRSS) of the controllers process (which runs the LoadBalancer
#     controller in the lab) before and after the 1,000 Services, next to its growth
#     from 1,000 ClusterIP Services applied first (what the other controllers' watches
#     of Services cost): the difference is the LoadBalancer controller's. The Services
#     select no pods, so no controller makes other objects of them.
# Needs root. Everything runs in a lab named kwlbbench; no traffic leaves it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwlbbench
n=${SERVICES:-1000}
trials=${TRIALS:-20}
# KUBEWIRE=path runs a given binary (to compare two builds back to back).
if [[ -z ${KUBEWIRE:-} ]]; then
  cargo build --release -p kubewire >/dev/null 2>&1
fi
bin=${KUBEWIRE:-$PWD/target/release/kubewire}
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
work=$(mktemp -d)
down() { "$bin" lab down --name $name >/dev/null 2>&1 || true; }
cleanup() {
  [[ -n ${watcher:-} ]] && kill "$watcher" 2>/dev/null || true
  # KEEP=dir keeps the watch's timestamps and the lab's logs (for tracing a change).
  if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP" && cp -r "$work" "/var/lib/kubewire/$name/logs" "$KEEP/" 2>/dev/null || true
  fi
  down
  rm -rf "$work"
}
trap cleanup EXIT
down
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
rss() {
  local pid
  pid=$("$bin" lab status --name $name --json | python3 -c \
    'import json,sys; print(next(c["pid"] for c in json.load(sys.stdin)["cluster"]["components"] if c["name"] == "controllers"))')
  awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"
}
# The agents' VmRSS (MiB), one per node: the `kubewire agent` processes in the lab's
# node namespaces.
agents_rss() {
  local out=() p
  for node in 1 2; do
    for p in $(ip netns pids "$name-node-$node"); do
      if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^[^ ]* agent '; then
        out+=("node-$node $(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$p/status")")
      fi
    done
  done
  (IFS=,; echo "${out[*]}")
}
# CPU time (ms) used so far by each kind of kubewire process (its subcommand: apiserver,
# controllers, agent, gateway, ...), summed over the processes of that kind.
# Read from /proc directly (procps is not among the test packages).
cpu_by_component() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null) || continue
    [[ $cmd == "$bin "* ]] || continue
    printf '%s %s\n' "$(awk '{print $2}' <<<"$cmd")" "$(awk '{print $14 + $15}' "$d/stat" 2>/dev/null || echo 0)"
  done | awk -v hz="$(getconf CLK_TCK)" '{t[$1] += $2} END {for (k in t) printf "%s %.0f\n", k, t[k] * 1000 / hz}'
}
announced() {
  kubectl -n kube-system get servicel2statuses -o name | grep -c . || true
}
assigned() {
  kubectl -n bench get svc -o jsonpath='{range .items[*]}{.status.loadBalancer.ingress[0].ip}{"\n"}{end}' | grep -c . || true
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), load $(cut -d' ' -f1 /proc/loadavg)"
# The controller logs each pass's time at debug level.
# Port 0: beside any other lab on this machine.
printf 'nodes: 2\napiListen: 127.0.0.1:0\n' >"$work/lab.yaml"
RUST_LOG=${RUST_LOG:-info,lb=debug} "$bin" lab up --name $name --config "$work/lab.yaml" --detach >/dev/null 2>&1
log=/var/lib/kubewire/$name/logs/controllers.log
kubectl create namespace bench >/dev/null
cat >"$work/pool.yaml" <<EOF
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: bench
  namespace: metallb-system
spec:
  addresses: [10.250.0.0/20]
  serviceAllocation:
    namespaces: [bench]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: bench
  namespace: metallb-system
spec:
  ipAddressPools: [bench]
EOF
kubectl apply -f "$work/pool.yaml" >/dev/null
python3 - "$n" >"$work/services.yaml" <<'EOF'
import sys
for i in range(int(sys.argv[1])):
    print(f"""apiVersion: v1
kind: Service
metadata:
  name: svc-{i}
  namespace: bench
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  ports:
  - port: 80
---""")
EOF
sed -e 's/namespace: bench/namespace: base/' -e '/type: LoadBalancer/d' \
  -e '/allocateLoadBalancerNodePorts/d' "$work/services.yaml" >"$work/base.yaml"
kubectl create namespace base >/dev/null
sleep 2
base_before=$(rss)
agents_base=$(agents_rss)
kubectl apply -f "$work/base.yaml" >/dev/null
sleep 5
before=$(rss)
printf 'controllers process VmRSS: %s MiB, %s MiB after %s ClusterIP Services\n' "$base_before" "$before" "$n"
agents_before=$(agents_rss)
printf 'agents VmRSS (MiB): %s, %s after %s ClusterIP Services\n' "$agents_base" "$agents_before" "$n"

echo
echo "== $n LoadBalancer Services applied at once"
t=$(now)
kubectl apply -f "$work/services.yaml" >/dev/null
applied=$(since "$t")
t2=$(now)
until [[ $(assigned) -ge $n ]]; do sleep 0.05; done
all=$(since "$t")
after_apply=$(since "$t2")
until [[ $(announced) -ge $n ]]; do sleep 0.05; done
all_announced=$(since "$t")
sleep 5
after=$(rss)
printf 'kubectl apply took %ss; all %s assigned %ss after it started, %ss after it ended\n' "$applied" "$n" "$all" "$after_apply"
printf 'controllers process VmRSS: %s MiB before, %s MiB after (%s Services)\n' "$before" "$after" "$n"
printf 'all %s announced (a ServiceL2Status each) %ss after kubectl apply started\n' "$n" "$all_announced"
printf 'agents VmRSS (MiB): %s before, %s after\n' "$agents_before" "$(agents_rss)"

echo
echo "== one new Service at $n, $trials times: watch ADDED -> MODIFIED with its address"
kubectl -n bench get svc -w --output-watch-events \
  -o jsonpath='{.type} {.object.metadata.name} {.object.status.loadBalancer.ingress[0].ip}{"\n"}' 2>/dev/null |
  python3 -u -c 'import sys, time
for line in sys.stdin:
    print(f"{time.time():.6f} {line}", end="", flush=True)' >"$work/watch" &
watcher=$!
sleep 2
passes_from=$(wc -l <"$log")
cpu_by_component >"$work/cpu-before"
for i in $(seq "$trials"); do
  kubectl -n bench create service loadbalancer "one-$i" --tcp=80:80 >/dev/null
  until grep -q "MODIFIED one-$i 10\.250\." "$work/watch"; do sleep 0.02; done
  kubectl -n bench delete service "one-$i" --wait=false >/dev/null
  sleep 0.3
done
cpu_by_component >"$work/cpu-after"
# Where the CPU went while the trials ran (each trial: a create, the controller's writes,
# the agents' status writes, the endpoints controllers' slices, a delete, 0.3 s idle).
awk -v n="$trials" 'NR == FNR {before[$1] = $2; next} {printf "%s %.1f ms, ", $1, ($2 - before[$1]) / n}' \
  "$work/cpu-before" "$work/cpu-after" | sed 's/, $/\n/; s/^/CPU per trial, by component (all processes of each): /'
python3 - "$work/watch" "$trials" <<'EOF'
import sys, statistics
added, got = {}, {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) < 3 or not parts[2].startswith("one-"):
        continue
    t, kind, name = float(parts[0]), parts[1], parts[2]
    if kind == "ADDED":
        added.setdefault(name, t)
    elif kind == "MODIFIED" and len(parts) > 3 and name not in got:
        got[name] = t
ms = sorted((got[n] - added[n]) * 1000 for n in got if n in added)
print(f"created -> address: median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms ({len(ms)} trials)")
EOF
# The controller's own pass times (debug log "pass took=...") during the trials.
tail -n +"$passes_from" "$log" | python3 -c '
import re, statistics, sys
def ms(v):
    m = re.match(r"([0-9.]+)(ms|µs|us|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n * {"ms": 1, "µs": 1e-3, "us": 1e-3, "s": 1e3}[u]
ts = [ms(m.group(1)) for l in sys.stdin for m in [re.search(r"took=([0-9.]+(?:ms|µs|us|s))", l)] if m and "pass" in l]
if ts:
    print(f"controller passes at {len(ts)} changes: median {statistics.median(ts):.2f} ms, max {max(ts):.2f} ms (compute + writes)")
'
