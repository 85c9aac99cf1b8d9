#!/usr/bin/env bash
# Resident memory of a real `kubewire agent` (routes + service proxy) synced to N
# Services with one EndpointSlice of 10 endpoints each, created through the API
# server. The API server listens on loopback inside a throwaway namespace, where the
# agent runs too; kubectl reaches it on the host's loopback. Needs root.
# usage: bench/proxy/agent_rss.sh [N]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
BIN=${KUBEWIRE_BIN:-target/release/kubewire}
[ -x "$BIN" ] || cargo build -q --release -p kubewire
tmp=$(mktemp -d)
ns=kwt-pxrss-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
[ -n "${KEEP_LOGS:-}" ] && trap 'cp $tmp/*.log /tmp/ 2>/dev/null; cleanup' EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
"$BIN" apiserver --data-dir "$tmp/api" --listen 127.0.0.1:0 --listen-netns "$ns=127.0.0.1:6443" \
    > /dev/null 2> "$tmp/apiserver.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$tmp/api/admin.kubeconfig" ] && break; sleep 0.2; done
python3 - "$N" > "$tmp/objects.json" <<'PY'
import ipaddress, json, sys
n = int(sys.argv[1])
items = []
for i in range(n):
    cip = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.0.0")) + 1000 + i))
    items.append({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": "default"},
        "spec": {"clusterIP": cip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    eps = [{"addresses": [str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.128.0.0")) + i * 10 + j))],
            "nodeName": f"node-{j % 3}", "conditions": {"ready": True}} for j in range(10)]
    items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"svc-{i}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
t0=$(date +%s)
kubectl --kubeconfig "$tmp/api/admin.kubeconfig" create -f "$tmp/objects.json" > /dev/null
t1=$(date +%s)
echo "created $N services + $N endpoint slices through the API in $((t1 - t0)) s"
ip netns exec "$ns" "$BIN" agent --node-name node-0 --kubeconfig "$tmp/api/admin.kubeconfig" \
    --server https://127.0.0.1:6443 --cni-conf-dir "$tmp/net.d" --cni-data-dir "$tmp/cni" \
    --cluster-cidr 10.128.0.0/9 > "$tmp/agent.log" 2>&1 &
agent=$!
pids+=($agent)
t0=$(date +%s%N)
want=$((N + 1))  # the default/kubernetes service too
for _ in $(seq ${WAIT_ROUNDS:-600}); do
    have=$(ip netns exec "$ns" nft list chains ip 2>/dev/null | grep -c 'chain "*svc-' || true)
    [ "$have" -ge "$want" ] && break
    sleep 0.5
done
t1=$(date +%s%N)
echo "agent: $have service chains in the kernel $(( (t1 - t0) / 1000000 )) ms after start (watch + list + sync)"
sleep 2
pid=$(pgrep -P "$agent" -f "agent --node-name" || echo "$agent")
grep -E 'VmRSS|VmHWM' "/proc/$pid/status" | tr -s ' \t' ' ' | sed 's/^/agent /'
