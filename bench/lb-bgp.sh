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

# The client, in `outside` (so that one clock times it all): it talks to the API server
# on the underlay with the admin's credentials, creates the Service, then connects to the address every millisecond until one succeeds.
python3 - "$KUBECONFIG" "$dir" <<'EOF'
import base64, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for key, field in [("ca", cfg["clusters"][0]["cluster"]["certificate-authority-data"]),
                   ("cert", cfg["users"][0]["user"]["client-certificate-data"]),
                   ("key", cfg["users"][0]["user"]["client-key-data"])]:
    open(f"{sys.argv[2]}/{key}.pem", "wb").write(base64.b64decode(field))
EOF
cat >"$dir/create.py" <<'EOF'
import http.client, json, socket, ssl, statistics, sys, time
d, trials = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")
ctx.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
api = http.client.HTTPSConnection("198.18.0.1", 6443, context=ctx)
def call(method, path, body, ctype="application/json"):
    api.request(method, path, json.dumps(body), {"Content-Type": ctype})
    r = api.getresponse(); data = r.read()
    assert r.status < 300, (r.status, data)
total = []
for i in range(1, trials + 1):
    ip = f"198.18.0.{200 + i}"
    t0 = time.time()
    call("POST", "/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"s{i}", "annotations": {"metallb.io/loadBalancerIPs": ip}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    while True:
        s = socket.socket(); s.settimeout(0.05)
        try:
            s.connect((ip, 80)); s.close(); break
        except OSError:
            s.close(); time.sleep(0.001)
    t2 = time.time()
    total.append((t2 - t0) * 1000)
print(f"create -> reachable: median {statistics.median(total):.1f} ms, max {max(total):.1f} ms")
EOF
echo
echo "== Service create to reachable from outside via BGP ($trials trials)"
ip netns exec $name-outside python3 "$dir/create.py" "$dir" "$trials"

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
