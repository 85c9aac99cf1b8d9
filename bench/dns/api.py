"""Bench helpers talking to the embedded API server with the standard library only.

  api.py create services|pods COUNT DATADIR   many objects in namespace `bench`, 8 connections
  api.py latency COUNT DATADIR DNS_ADDR       Service create -> first answer from DNS_ADDR
"""
import http.client
import json
import random
import socket
import ssl
import statistics
import struct
import sys
import threading
import time


def service_ip(i):
    return f"10.100.{i // 250}.{i % 250 + 1}"


def pod_ip(i):
    return f"10.{128 + i // 65536}.{(i // 256) % 256}.{i % 256}"


class Api:
    def __init__(self, datadir):
        self.token = open(f"{datadir}/admin.token").read().strip()
        self.ctx = ssl.create_default_context(cafile=f"{datadir}/ca.crt")

    def conn(self):
        return http.client.HTTPSConnection("127.0.0.1", 6443, context=self.ctx)

    def post(self, conn, path, body):
        conn.request("POST", path, json.dumps(body),
                     {"Authorization": "Bearer " + self.token, "Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status not in (200, 201, 409):
            raise SystemExit(f"POST {path}: {r.status} {data[:300]!r}")
        return r.status

    def patch_status(self, conn, path, status):
        conn.request("PATCH", path + "/status", json.dumps({"status": status}),
                     {"Authorization": "Bearer " + self.token,
                      "Content-Type": "application/merge-patch+json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"PATCH {path}/status: {r.status} {data[:300]!r}")


def service(name, ip):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}


def pod(i):
    ip = pod_ip(i)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{i}", "namespace": "bench", "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def create(kind, count, datadir):
    api = Api(datadir)
    c = api.conn()
    api.post(c, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
    threads, errors = 8, []

    def worker(k):
        c = api.conn()
        try:
            for i in range(k, count, threads):
                if kind == "services":
                    api.post(c, "/api/v1/namespaces/bench/services", service(f"svc-{i}", service_ip(i)))
                else:
                    # The API server resets a new pod's status, as kube-apiserver does:
                    # the addresses come in a status update, as a kubelet sends them.
                    body = pod(i)
                    api.post(c, "/api/v1/namespaces/bench/pods", body)
                    api.patch_status(c, f"/api/v1/namespaces/bench/pods/pod-{i}", body["status"])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"creating {kind}: {errors[0]}")


def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def latency(count, datadir, dns):
    api = Api(datadir)
    c = api.conn()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    host, port = dns.rsplit(":", 1)
    addr = (host, int(port))
    took, posts, after = [], [], []
    tag = random.randrange(1 << 30)
    for k in range(count):
        name = f"lat-{tag}-{k}"
        ip = f"10.101.{k // 250}.{k % 250 + 1}"
        t0 = time.perf_counter()
        api.post(c, "/api/v1/namespaces/bench/services", service(name, ip))
        posts.append(time.perf_counter() - t0)
        qid = 0
        while True:
            qid = (qid + 1) & 0xFFFF
            s.sendto(query(f"{name}.bench.svc.cluster.local", qid), addr)
            try:
                data = s.recv(512)
            except socket.timeout:
                continue
            rid, flags, _, an = struct.unpack(">HHHH", data[:8])
            if rid == qid and flags & 0xF == 0 and an > 0:
                now = time.perf_counter()
                took.append(now - t0)
                after.append(now - t0 - posts[-1])
                break
        time.sleep(0.05)
    ms = sorted(t * 1000 for t in took)
    ack = sorted(t * 1000 for t in after)
    print(f"create->answer ms over {count} services: median {statistics.median(ms):.1f} "
          f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} max {ms[-1]:.1f}; "
          f"the create request itself: median {statistics.median(posts) * 1000:.1f}; "
          f"from the API server's reply to the answer: median {statistics.median(ack):.2f} "
          f"p90 {ack[int(len(ack) * 0.9) - 1]:.2f} max {ack[-1]:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "latency":
        latency(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
