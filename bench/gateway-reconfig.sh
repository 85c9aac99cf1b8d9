#!/usr/bin/env bash
# The gateway's reconfiguration end to end, in a lab (2 nodes, the gateway's 2 replicas):
# the time from an HTTPRoute change to traffic following it, with 10 and with 10,000
# HTTPRoutes loaded (each its own path on one of 100 hostnames, all to one Service).
# One route's RequestHeaderModifier is changed TRIALS times (kubectl patch); a client in
# `outside` asks for that route in a loop and notes when the new header arrives. Two
# figures per trial: from the start of `kubectl patch` (kubectl's own start-up included)
# and from its return (the API server has stored the change by then), to the first
# response carrying it. The client's loop spaces its requests by about 5 ms (a curl each).
# Needs root. Everything runs in a lab named kwgwreconf; no traffic leaves it.
# Usage: bench/gateway-reconfig.sh   (ROUTES="10 10000" TRIALS=10 KUBEWIRE=path)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwgwreconf
trials=${TRIALS:-10}
sizes=${ROUTES:-"10 10000"}
if [[ -z ${KUBEWIRE:-} ]]; then
  cargo build --release -p kubewire >/dev/null 2>&1
fi
bin=${KUBEWIRE:-$PWD/target/release/kubewire}
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
work=$(mktemp -d)
cleanup() {
  "$bin" lab down --name $name >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" lab down --name $name >/dev/null 2>&1 || true

now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

routes() { # routes FIRST LAST: HTTPRoutes r-FIRST .. r-LAST
  for ((i = $1; i <= $2; i++)); do
    cat <<EOF
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r-$i}
spec:
  parentRefs: [{name: bench}]
  hostnames: [h$((i % 100)).example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /p/$i}}]
    backendRefs: [{name: engine, port: 80}]
EOF
  done
}
probe() { # probe VERSION: the changed route, version VERSION
  cat <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: probe}
spec:
  parentRefs: [{name: bench}]
  hostnames: [probe.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /probe}}]
    backendRefs: [{name: engine, port: 80}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-version, value: v$1}]}}]
EOF
}

"$bin" lab up --name $name --nodes 2 --detach >/dev/null 2>&1
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: engine}
spec:
  replicas: 2
  selector: {matchLabels: {app: engine}}
  template:
    metadata: {labels: {app: engine}}
    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: engine}
spec: {selector: {app: engine}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench}
spec:
  gatewayClassName: kubewire
  listeners: [{name: http, protocol: HTTP, port: 80}]
EOF
probe 0 | kubectl apply -f - >/dev/null
kubectl rollout status deployment engine --timeout=120s >/dev/null
ip=""
for _ in $(seq 120); do
  ip=$(kubectl get gateway bench -o jsonpath='{.status.addresses[0].value}' 2>/dev/null || true)
  [[ -n $ip ]] && break
  sleep 0.5
done
[[ -n $ip ]] || { echo "the Gateway got no address" >&2; exit 1; }

loaded=0
version=0
echo "machine: $(nproc) cpu, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for size in $sizes; do
  if ((size > loaded)); then
    started=$(now)
    routes $((loaded + 1)) "$size" >"$work/routes.yaml"
    kubectl apply --server-side -f "$work/routes.yaml" >/dev/null
    loaded=$size
    # Settled when the last route answers.
    until "$bin" lab exec --name $name outside -- curl -s -o /dev/null -w '%{http_code}' \
      -H "Host: h$((size % 100)).example.com" "http://$ip/p/$size" | grep -q 200; do sleep 0.2; done
    echo "routes: $((size + 1)) (with the probe's) loaded and served in $(ms "$started" "$(now)") ms"
  fi
  : >"$work/from-start" && : >"$work/from-return"
  for _ in $(seq "$trials"); do
    version=$((version + 1))
    # The client: asks until the new version answers, prints when.
    "$bin" lab exec --name $name outside -- sh -c \
      "until curl -s -H 'Host: probe.example.com' http://$ip/probe | grep -q 'X-Version: v$version'; do sleep 0.005; done; date +%s.%N" \
      >"$work/seen" &
    client=$!
    sleep 0.5
    t0=$(now)
    probe "$version" | kubectl apply -f - >/dev/null
    t1=$(now)
    wait "$client"
    seen=$(cat "$work/seen")
    ms "$t0" "$seen" >>"$work/from-start"; echo >>"$work/from-start"
    ms "$t1" "$seen" >>"$work/from-return"; echo >>"$work/from-return"
    sleep 0.5
  done
  printf '%s routes: change to traffic, median (min-max) from kubectl start %s ms (%s-%s), from its return %s ms (%s-%s)\n' \
    "$((size + 1))" \
    "$(grep . "$work/from-start" | median)" "$(grep . "$work/from-start" | sort -n | head -1)" "$(grep . "$work/from-start" | sort -n | tail -1)" \
    "$(grep . "$work/from-return" | median)" "$(grep . "$work/from-return" | sort -n | head -1)" "$(grep . "$work/from-return" | sort -n | tail -1)"
  for pod in $(kubectl -n kube-system get pods -l app.kubernetes.io/name=kubewire-gateway -o name); do
    echo "  $pod: $(kubectl -n kube-system logs "$pod" | grep 'configuration changed' | tail -1 | sed 's/.*configuration changed //')"
  done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
