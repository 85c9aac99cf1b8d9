#!/usr/bin/env bash
# How fast a change reaches traffic, three ways side by side in one lab (needs root;
# a lab named kwroutes; every client runs inside the lab's pods):
#   - route: an HTTPRoute with a Service parent (GAMMA) flipped between two versions,
#     followed by a meshed client's proxy (discovery's long poll);
#   - selector, meshed: a Service's selector flipped between the versions, followed by
#     the meshed client's proxy (EndpointSlices, then the same long poll);
#   - selector, unmeshed: the same flip seen by a client outside the mesh, through the
#     node's service proxy (EndpointSlices, then nftables): the path every Kubernetes
#     user has, the floor to compare with.
# Each flip: from just before `kubectl apply` to the first answer from the new
# version, each client asking every 2 ms on a new connection; beside them, how long
# `kubectl apply` itself took to return (the part no data plane can beat). FLIPS (10)
# per way.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwroutes
flips=${FLIPS:-10}
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
cargo build -q --release -p kubewire
bin=$PWD/target/release/kubewire
work=""
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  "$bin" lab down --name $name >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cleanup
work=$(mktemp -d)

printf 'nodes: 2\nmesh: true\n' >"$work/lab.yaml"
"$bin" lab up --name $name --config "$work/lab.yaml" --detach >/dev/null
for d in kubewire-identity kubewire-injector; do
  kubectl -n kube-system rollout status deployment/$d --timeout=180s >/dev/null
done
until [[ -n $(kubectl get mutatingwebhookconfiguration kubewire-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]; do
  sleep 0.5
done

version() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-$1, namespace: demo}
spec:
  selector: {matchLabels: {version: $1}}
  template:
    metadata: {labels: {app: echo, version: $1}}
    spec:
      nodeName: node-1
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
---
apiVersion: v1
kind: Service
metadata: {name: echo-$1, namespace: demo}
spec:
  selector: {version: $1}
  ports: [{name: http, port: 80, targetPort: 3000}]
EOF
}
client() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: demo, annotations: {kubewire.io/inject: "$2"}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - {name: app, image: python, command: [sleep, infinity]}
EOF
}
selector() {
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: echo-selected, namespace: demo}
spec:
  selector: {version: $1}
  ports: [{name: http, port: 80, targetPort: 3000}]
EOF
}
route() {
  cat <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-routed, port: 80}]
  rules:
  - backendRefs: [{name: echo-$1, port: 80}]
EOF
}

{
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, annotations: {kubewire.io/inject: enabled}}\n---\n'
  version v1
  echo ---
  version v2
  echo ---
  printf 'apiVersion: v1\nkind: Service\nmetadata: {name: echo-routed, namespace: demo}\nspec:\n  selector: {app: echo}\n  ports: [{name: http, port: 80, targetPort: 3000}]\n---\n'
  selector v1
  echo ---
  route v1
  echo ---
  client meshed enabled
  echo ---
  client outsider disabled
} | kubectl apply -f - >/dev/null
kubectl -n demo rollout status deployment/echo-v1 --timeout=180s >/dev/null
kubectl -n demo rollout status deployment/echo-v2 --timeout=180s >/dev/null
kubectl -n demo wait --for=condition=Ready pod/meshed pod/outsider --timeout=180s >/dev/null

# Asks HOST every 2 ms, each time on a new connection; prints "<epoch ms> <version>"
# whenever the answering version changes.
watcher='
import http.client, json, sys, time
host, last = sys.argv[1], None
while True:
    try:
        c = http.client.HTTPConnection(host, 80, timeout=2)
        c.request("GET", "/")
        pod = json.loads(c.getresponse().read())["pod"]
        c.close()
        v = pod.split("-")[1]
        if v != last:
            print(int(time.time() * 1000), v, flush=True)
            last = v
    except Exception:
        pass
    time.sleep(0.002)
'
watch_from() { # pod host file
  "$bin" lab exec --name $name "demo/$1/app" -- python3 -c "$watcher" "$2" >"$3" 2>/dev/null &
}
watch_from meshed echo-routed.demo.svc.cluster.local "$work/route"
watch_from meshed echo-selected.demo.svc.cluster.local "$work/sel-meshed"
watch_from outsider echo-selected.demo.svc.cluster.local "$work/sel-unmeshed"
for f in route sel-meshed sel-unmeshed; do
  until grep -q ' v1$' "$work/$f" 2>/dev/null; do sleep 0.2; done
done

now_ms() { date +%s%3N; }
# The milliseconds from $1 (epoch ms) to the first line of file $2 at or after it
# naming version $3.
followed() {
  local t0=$1 file=$2 want=$3 line
  for _ in $(seq 1000); do
    line=$(awk -v t0="$t0" -v want="$want" '$1 >= t0 && $2 == want {print $1; exit}' "$file")
    if [[ -n $line ]]; then
      echo $((line - t0))
      return
    fi
    sleep 0.02
  done
  echo "never"
}

echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-4s %16s %18s %20s %15s\n' flip to "route (mesh)" "selector (mesh)" "selector (no mesh)" "kubectl apply"
want=v1
for i in $(seq "$flips"); do
  [[ $want == v1 ]] && want=v2 || want=v1
  t=$(now_ms); route $want | kubectl apply -f - >/dev/null
  k=$(($(now_ms) - t))
  r=$(followed "$t" "$work/route" $want)
  t=$(now_ms); selector $want | kubectl apply -f - >/dev/null
  m=$(followed "$t" "$work/sel-meshed" $want)
  u=$(followed "$t" "$work/sel-unmeshed" $want)
  printf '%-5s %-4s %13s ms %15s ms %17s ms %12s ms\n' "$i" $want "$r" "$m" "$u" "$k"
  echo "$r $m $u $k" >>"$work/all"
done
python3 - "$work/all" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
cols = list(zip(*rows))
names = ["route (mesh)", "selector (mesh)", "selector (no mesh)", "kubectl apply"]
for name, col in zip(names, cols):
    ms = sorted(int(x) for x in col if x != "never")
    never = sum(1 for x in col if x == "never")
    print(f"{name:20} median {statistics.median(ms):6.0f} ms  max {max(ms):6d} ms" + (f"  never: {never}" if never else ""))
EOF
