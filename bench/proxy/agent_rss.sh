#!/usr/bin/env bash
# Resident memory of a real `kubewire agent` (routes + service proxy) synced to N
# Services with one EndpointSlice of 10 endpoints each, created through the API
# server, the endpoints spread over 1,000 nodes (the agent is node-0, with 100 of
# them, as a node of a real cluster). The API server listens on loopback inside a
# throwaway namespace, where the agent runs too; the object creator reaches it on the
# host's loopback. Needs root.
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
# Creates the objects with plain HTTPS POSTs from parallel keep-alive connections,
# authenticated with the kubeconfig's client certificate (kubectl create -f of one
# big List took 1,014 s: one request at a time, each with a discovery round).
t0=$(date +%s)
python3 - "$N" "$tmp/api/admin.kubeconfig" "$tmp" <<'PY'
import base64, http.client, ipaddress, json, os, re, ssl, sys, threading, urllib.parse
n, kubeconfig, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
text = open(kubeconfig).read()
def field(name):
    return base64.b64decode(re.search(name + r":\s*(\S+)", text).group(1))
for name, f in [("ca", "certificate-authority-data"), ("crt", "client-certificate-data"),
                ("key", "client-key-data")]:
    open(f"{tmp}/{name}.pem", "wb").write(field(f))
url = urllib.parse.urlparse(re.search(r"server:\s*(\S+)", text).group(1))
ctx = ssl.create_default_context(cafile=f"{tmp}/ca.pem")
ctx.load_cert_chain(f"{tmp}/crt.pem", f"{tmp}/key.pem")
ctx.check_hostname = False
base = int(ipaddress.IPv4Address("10.96.0.0")) + 1000
eps_base = int(ipaddress.IPv4Address("10.128.0.0"))
def objects(i):
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": f"svc-{i}", "namespace": "default"},
           "spec": {"clusterIP": str(ipaddress.IPv4Address(base + i)),
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    eps = [{"addresses": [str(ipaddress.IPv4Address(eps_base + i * 10 + j))],
            "nodeName": f"node-{(i * 10 + j) % 1000}", "conditions": {"ready": True}}
           for j in range(10)]
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": f"svc-{i}-abc", "namespace": "default",
                       "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
          "addressType": "IPv4", "endpoints": eps,
          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    return [("/api/v1/namespaces/default/services", svc),
            ("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", sl)]
errors = []
def worker(w, workers):
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx)
    for i in range(w, n, workers):
        for path, body in objects(i):
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status not in (201, 409):
                errors.append(f"{path} {body['metadata']['name']}: {r.status} {data[:200]!r}")
                return
threads = [threading.Thread(target=worker, args=(w, 8)) for w in range(8)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("creating objects: " + "; ".join(errors[:3]))
PY
t1=$(date +%s)
echo "created $N services + $N endpoint slices through the API in $((t1 - t0)) s"
# One agent with glibc's default arena limit (8 per core; `kubewire agent` re-executes
# itself with MALLOC_ARENA_MAX=2 only when the variable is unset) and one with
# MALLOC_ARENA_MAX=2, one after the other against the same objects; the second starts
# from the table the first left, as a restarted agent does.
for arenas in $((8 * $(nproc))) 2; do
    ip netns exec "$ns" env MALLOC_ARENA_MAX="$arenas" "$BIN" agent --node-name node-0 \
        --kubeconfig "$tmp/api/admin.kubeconfig" --server https://127.0.0.1:6443 \
        --cni-conf-dir "$tmp/net.d" --cni-data-dir "$tmp/cni" --policy-socket "$tmp/policy.sock" \
        --cluster-cidr 10.128.0.0/9 > "$tmp/agent-$arenas.log" 2>&1 &
    agent=$!
    pids+=($agent)
    t0=$(date +%s%N)
    # The first sync after a start replaces the whole table in one transaction and
    # logs it.
    for _ in $(seq ${WAIT_ROUNDS:-3000}); do
        grep -q 'service proxy synced in full' "$tmp/agent-$arenas.log" 2>/dev/null && break
        sleep 0.1
    done
    t1=$(date +%s%N)
    synced=$(grep -o 'service proxy synced in full.*' "$tmp/agent-$arenas.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g')
    echo "agent (MALLOC_ARENA_MAX=$arenas): synced $(( (t1 - t0) / 1000000 )) ms after start (watch + list + sync): $synced"
    sleep ${SETTLE:-5}
    grep -E 'VmRSS|VmHWM' "/proc/$agent/status" | tr -s ' \t' ' ' | sed "s/^/agent (MALLOC_ARENA_MAX=$arenas) /"
    kill "$agent"; wait "$agent" 2>/dev/null || true
done
