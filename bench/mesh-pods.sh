#!/usr/bin/env bash
# How fast meshed pods start, beside the same pods unmeshed, in one lab (needs root; a
# lab named kwmeshpods; nothing leaves its namespaces): a Deployment of PODS (50) in a
# namespace annotated for the mesh, each pod injected with the proxy, which gets a
# certificate from the issuer (a TokenReview each) before its app starts, against the
# same Deployment in a namespace without the annotation. Timed from `kubectl apply` to
# every pod Ready; ROUNDS (3) of each, alternating.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
name=kwmeshpods
pods=${PODS:-50}
rounds=${ROUNDS:-3}
export KUBECONFIG=/var/lib/kubewire/$name/api/admin.kubeconfig
cargo build -q --release -p kubewire
bin=$PWD/target/release/kubewire
work=""
cleanup() {
  "$bin" lab down --name $name >/dev/null 2>&1 || true
  [[ -z $work ]] || rm -rf "$work"
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
now() { date +%s.%N; }

# The Deployment `many` of $pods pods in namespace $1, its readiness probed.
many() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: many, namespace: $1}
spec:
  replicas: $pods
  selector: {matchLabels: {app: many}}
  template:
    metadata: {labels: {app: many}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
        readinessProbe: {httpGet: {path: /health, port: 3000}, periodSeconds: 1}
EOF
}
# Seconds from applying `many` in $1 to every pod Ready; then it is deleted.
round() {
  local ns=$1 t ready
  t=$(now)
  many "$ns" | kubectl apply -f - >/dev/null
  until [[ $(kubectl -n "$ns" get deployment many -o jsonpath='{.status.readyReplicas}') == "$pods" ]]; do
    sleep 0.1
  done
  ready=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t" "$(now)")
  # Every pod meshed, or none.
  local proxies
  proxies=$(kubectl -n "$ns" get pods -l app=many -o jsonpath='{range .items[*]}{.spec.initContainers[0].name}{"\n"}{end}' | grep -c kubewire-proxy || true)
  kubectl -n "$ns" delete deployment many --wait=false >/dev/null
  until [[ -z $(kubectl -n "$ns" get pods -l app=many -o name) ]]; do sleep 0.2; done
  echo "$ready $proxies"
}

printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: meshed, annotations: {kubewire.io/inject: enabled}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n' |
  kubectl apply -f - >/dev/null
echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-8s %12s %10s %8s\n' round pods "to Ready" "pods/s" proxies
for r in $(seq "$rounds"); do
  for ns in plain meshed; do
    read -r secs proxies < <(round $ns)
    printf '%-6s %-8s %10s s %10s %8s\n' "$r" "$ns" "$secs" \
      "$(python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$pods" "$secs")" "$proxies"
  done
done
