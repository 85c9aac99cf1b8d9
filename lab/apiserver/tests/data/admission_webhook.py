#!/usr/bin/env python3
"""An admission webhook server for the tests: Python's own HTTPS and JSON, nothing of
kubewire's. Serves AdmissionReview v1 and prints its port once listening.

usage: admission_webhook.py CERT KEY LOG [ADDR:PORT]   (default 127.0.0.1:0)

Each request is appended to LOG as one JSON line {"path": ..., "review": ...}. Paths:
  /label       mutates: adds the label webhook.test/labelled=yes (a JSONPatch)
  /count       mutates: sets the annotation webhook.test/count to the number of times
               this path saw the object (reinvocation shows as 2)
  /late        mutates: adds the label webhook.test/late=yes (a change after /count)
  /deny        refuses objects labelled deny=yes, new or (deletes) old (403, a
               message), allows the rest
  /slow        answers after 3 s
  /wrong-uid   answers with another uid
  /record      allows, changing nothing
"""

import base64
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, LOG = sys.argv[1:4]
ADDR, PORT = (sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1:0").rsplit(":", 1)
LOCK = threading.Lock()


def patch_response(uid, ops):
    return {
        "uid": uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
    }


def add_label(obj, key, value):
    if obj.get("metadata", {}).get("labels") is None:
        return [{"op": "add", "path": "/metadata/labels", "value": {key: value}}]
    escaped = key.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": "/metadata/labels/" + escaped, "value": value}]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        review = json.loads(body)
        path = self.path.split("?")[0]
        with LOCK, open(LOG, "a") as log:
            log.write(json.dumps({"path": path, "query": self.path, "review": review}) + "\n")
        req = review["request"]
        uid = req["uid"]
        obj = req.get("object") or {}
        # A delete has only the old object.
        seen = obj or req.get("oldObject") or {}
        labels = (seen.get("metadata") or {}).get("labels") or {}
        if path == "/label":
            resp = patch_response(uid, add_label(obj, "webhook.test/labelled", "yes"))
        elif path == "/late":
            resp = patch_response(uid, add_label(obj, "webhook.test/late", "yes"))
        elif path == "/count":
            annotations = (obj.get("metadata") or {}).get("annotations")
            n = int((annotations or {}).get("webhook.test/count", "0")) + 1
            if annotations is None:
                op = {"op": "add", "path": "/metadata/annotations",
                      "value": {"webhook.test/count": str(n)}}
            else:
                op = {"op": "add", "path": "/metadata/annotations/webhook.test~1count",
                      "value": str(n)}
            resp = patch_response(uid, [op])
        elif path == "/deny" and labels.get("deny") == "yes":
            resp = {"uid": uid, "allowed": False,
                    "status": {"code": 403, "message": "objects labelled deny=yes are refused"}}
        elif path == "/slow":
            time.sleep(3)
            resp = {"uid": uid, "allowed": True}
        elif path == "/wrong-uid":
            resp = {"uid": "not-" + uid, "allowed": True}
        else:
            resp = {"uid": uid, "allowed": True, "warnings": ["seen by " + path]}
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((ADDR, int(PORT)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
