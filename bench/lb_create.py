"""Service create to reachable, for the LoadBalancer benches (bench/l2.sh, bench/lb-bgp.sh).

Run inside the lab's `outside` namespace, so that one clock times it all: it talks to the
API server on the underlay with the admin's credentials, creates LoadBalancer Services one
after the other, each asking the allocation controller for its address with MetalLB's
`loadBalancerIPs` annotation (the controller assigns it, the agents announce it), and
connects to the address every millisecond until one succeeds.

usage: python3 lb_create.py KUBECONFIG NAME_PREFIX FIRST_IP COUNT [TARGET_PORT]
"""
import base64
import http.client
import ipaddress
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

kubeconfig, prefix, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
target_port = int(sys.argv[5]) if len(sys.argv) > 5 else 80
# kubectl reads the kubeconfig (YAML) for us, so that nothing beyond Python's standard
# library is needed.
cfg = json.loads(subprocess.run(
    ["kubectl", "config", "view", "--raw", "-o", "json", "--kubeconfig", kubeconfig],
    check=True, capture_output=True, text=True).stdout)
cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
pems = tempfile.mkdtemp()
for name, field in [("ca", cluster["certificate-authority-data"]),
                    ("cert", user["client-certificate-data"]),
                    ("key", user["client-key-data"])]:
    open(f"{pems}/{name}.pem", "wb").write(base64.b64decode(field))
ctx = ssl.create_default_context(cafile=f"{pems}/ca.pem")
ctx.load_cert_chain(f"{pems}/cert.pem", f"{pems}/key.pem")
# The kubeconfig names the host's loopback; outside reaches the API server on its
# underlay address, where it always listens on 6443.
api = http.client.HTTPSConnection("198.18.0.1", 6443, context=ctx)

total = []
for i in range(count):
    ip = str(ipaddress.ip_address(first) + i)
    t0 = time.time()
    api.request("POST", "/api/v1/namespaces/default/services", json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"{prefix}{i}", "annotations": {"metallb.io/loadBalancerIPs": ip}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"port": 80, "targetPort": target_port}]}}),
        {"Content-Type": "application/json"})
    r = api.getresponse()
    body = r.read()
    assert r.status < 300, (r.status, body)
    while True:
        s = socket.socket()
        s.settimeout(0.05)
        try:
            s.connect((ip, 80))
            s.close()
            break
        except OSError:
            s.close()
            time.sleep(0.001)
    total.append((time.time() - t0) * 1000)
print(f"create -> reachable: median {statistics.median(total):.1f} ms, "
      f"max {max(total):.1f} ms, min {min(total):.1f} ms (n={len(total)})")
