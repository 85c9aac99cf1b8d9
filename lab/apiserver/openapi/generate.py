#!/usr/bin/env python3
"""Builds openapi/builtin.json: the OpenAPI v3 component schemas of the built-in
kinds this server serves (and everything they reference), with their descriptions,
for `kubectl explain` and kubectl's client-side apply.

Source: the `json_schema!` blocks of k8s-openapi (crates.io, Apache-2.0), which
k8s-openapi generates from Kubernetes' published OpenAPI spec of the release its
newest feature names. The upstream documents carry the strategic-merge extensions
(`x-kubernetes-patch-merge-key`/`-strategy`, `x-kubernetes-list-type`/`-map-keys`)
that k8s-openapi's schemas drop; they are put back from the Go struct tags listed in
PATCH_META below. Rerun after a k8s-openapi upgrade:

    python3 lab/apiserver/openapi/generate.py ~/.cargo/registry/src/*/k8s-openapi-0.29.0 v1_37
"""
import gzip
import json
import os
import re
import sys

src, feature = sys.argv[1], sys.argv[2]
root = os.path.join(src, "src", feature)

# (schema, property) -> extensions, from the upstream types' patchStrategy /
# patchMergeKey / listType / listMapKey tags.
def merge(key=None, strategy="merge", list_type="map", map_keys=None):
    ext = {"x-kubernetes-patch-strategy": strategy}
    if key:
        ext["x-kubernetes-patch-merge-key"] = key
        ext["x-kubernetes-list-type"] = list_type
        ext["x-kubernetes-list-map-keys"] = map_keys or [key]
    else:
        ext["x-kubernetes-list-type"] = "set"
    return ext

CORE = "io.k8s.api.core.v1."
APPS = "io.k8s.api.apps.v1."
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
CONDITIONS = merge("type")
PATCH_META = {
    (META + "ObjectMeta", "finalizers"): merge(),
    (META + "ObjectMeta", "ownerReferences"): merge("uid"),
    (CORE + "PodSpec", "volumes"): merge("name", "merge,retainKeys"),
    (CORE + "PodSpec", "initContainers"): merge("name"),
    (CORE + "PodSpec", "containers"): merge("name"),
    (CORE + "PodSpec", "ephemeralContainers"): merge("name"),
    (CORE + "PodSpec", "imagePullSecrets"): merge("name"),
    (CORE + "PodSpec", "hostAliases"): merge("ip"),
    (CORE + "PodSpec", "topologySpreadConstraints"): merge("topologyKey", map_keys=["topologyKey", "whenUnsatisfiable"]),
    (CORE + "PodSpec", "resourceClaims"): merge("name", "merge,retainKeys"),
    (CORE + "PodSpec", "schedulingGates"): merge("name"),
    (CORE + "Container", "ports"): merge("containerPort", map_keys=["containerPort", "protocol"]),
    (CORE + "Container", "env"): merge("name"),
    (CORE + "Container", "volumeMounts"): merge("mountPath"),
    (CORE + "Container", "volumeDevices"): merge("devicePath"),
    (CORE + "EphemeralContainer", "ports"): merge("containerPort", map_keys=["containerPort", "protocol"]),
    (CORE + "EphemeralContainer", "env"): merge("name"),
    (CORE + "EphemeralContainer", "volumeMounts"): merge("mountPath"),
    (CORE + "EphemeralContainer", "volumeDevices"): merge("devicePath"),
    (CORE + "PodStatus", "conditions"): CONDITIONS,
    (CORE + "PodStatus", "podIPs"): merge("ip"),
    (CORE + "PodStatus", "hostIPs"): merge("ip"),
    (CORE + "PodStatus", "resourceClaimStatuses"): merge("name", "merge,retainKeys"),
    (CORE + "ServiceSpec", "ports"): merge("port", map_keys=["port", "protocol"]),
    (CORE + "ServiceStatus", "conditions"): CONDITIONS,
    (CORE + "NodeSpec", "podCIDRs"): merge(),
    (CORE + "NodeStatus", "conditions"): CONDITIONS,
    (CORE + "NodeStatus", "addresses"): merge("type"),
    (CORE + "NamespaceStatus", "conditions"): CONDITIONS,
    (CORE + "ServiceAccount", "secrets"): merge("name"),
    (CORE + "PersistentVolumeClaimStatus", "conditions"): CONDITIONS,
    (CORE + "ReplicationControllerStatus", "conditions"): CONDITIONS,
    (APPS + "DeploymentStatus", "conditions"): CONDITIONS,
    (APPS + "ReplicaSetStatus", "conditions"): CONDITIONS,
    (APPS + "StatefulSetStatus", "conditions"): CONDITIONS,
    (APPS + "DaemonSetStatus", "conditions"): CONDITIONS,
    ("io.k8s.api.policy.v1.PodDisruptionBudgetStatus", "conditions"): CONDITIONS,
    (APPS + "DeploymentSpec", "strategy"): {"x-kubernetes-patch-strategy": "retainKeys"},
}

# The group-versions served (resources.rs) and the kinds' modules.
MODULES = [
    "api/core/v1", "api/apps/v1", "api/discovery/v1", "api/networking/v1",
    "api/coordination/v1", "api/events/v1", "api/authentication/v1", "api/autoscaling/v1",
    "api/policy/v1", "api/scheduling/v1", "api/rbac/v1", "api/authorization/v1",
    "api/batch/v1", "api/storage/v1",
    "apiextensions_apiserver/pkg/apis/apiextensions/v1",
    "kube_aggregator/pkg/apis/apiregistration/v1",
]

impl_re = re.compile(r"impl crate::schemars::JsonSchema for (\w+) \{")
name_re = re.compile(r'fn schema_name\(\) -> std::borrow::Cow<\'static, str> \{\s*"([^"]+)"\.into\(\)')
ref_re = re.compile(r"\(__gen\.subschema_for::<crate::([\w:]+)>\(\)\)")
bare_ref_re = re.compile(r"__gen\.subschema_for::<crate::([\w:]+)>\(\)")
desc_ref_re = re.compile(
    r'\(\{\s*let mut schema_obj = __gen\.subschema_for::<crate::([\w:]+)>\(\);\s*'
    r'schema_obj\.ensure_object\(\)\.insert\("description"\.into\(\), ("(?:[^"\\]|\\.)*")\.into\(\)\);\s*'
    r'schema_obj\s*\}\)', re.S)

# First pass: Rust path -> schema name, for every type of the feature.
names = {}
bodies = {}
for dirpath, _, files in os.walk(root):
    module = os.path.relpath(dirpath, root).replace(os.sep, "::")
    for f in files:
        if not f.endswith(".rs"):
            continue
        text = open(os.path.join(dirpath, f)).read()
        m = impl_re.search(text)
        n = name_re.search(text)
        if not m or not n:
            continue
        names[f"{module}::{m.group(1)}"] = n.group(1)
        start = text.index("crate::schemars::json_schema!(", m.end()) + len("crate::schemars::json_schema!(")
        # The macro's argument: balanced braces from here.
        depth, i, in_str = 0, start, False
        while True:
            c = text[i]
            if in_str:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "({[":
                depth += 1
            elif c in ")}]":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        bodies[n.group(1)] = text[start:i + 1]

def to_json(body):
    ref = lambda p: "#/components/schemas/" + names[p]
    body = desc_ref_re.sub(
        lambda m: json.dumps({"allOf": [{"$ref": ref(m.group(1))}]})[:-1]
        + ', "description": ' + m.group(2) + "}", body)
    body = ref_re.sub(lambda m: json.dumps({"$ref": ref(m.group(1))}), body)
    body = bare_ref_re.sub(lambda m: json.dumps({"$ref": ref(m.group(1))}), body)
    body = re.sub(r",(\s*[}\]])", r"\1", body)
    return json.loads(body)

schemas = {}
def add(name):
    if name in schemas:
        return
    s = to_json(bodies[name])
    schemas[name] = s
    for prop, v in s.get("properties", {}).items():
        ext = PATCH_META.get((name, prop))
        if ext:
            v.update(ext)
    for r in re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(s)):
        add(r)

for path, name in names.items():
    if any(path.startswith(m.replace("/", "::") + "::") for m in MODULES):
        add(name)
missing = [k for k in PATCH_META if k[0] not in schemas]
assert not missing, missing
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin.json")
# One value per line, no indentation: small, and a regeneration diffs line by line.
data = json.dumps(schemas, sort_keys=True, indent=0, separators=(",", ":")) + "\n"
with open(out, "w") as f:
    f.write(data)
print(f"{len(schemas)} schemas, {len(data)} bytes, {len(gzip.compress(data.encode()))} gzipped")
