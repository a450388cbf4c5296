"""Validates Kubernetes manifests offline, for `cargo xtask manifests validate`.

- Built-in kinds: kubernetes-validate's schemas for the given Kubernetes version, strict
  (an unknown field is an error, as `kubectl apply --validate=strict` makes it).
- Custom resources: their CRD's openAPIV3Schema (strict in the same way: the API server
  would prune an unknown field silently), metadata as ObjectMeta.
- CRDs: also the structural-schema rules the API server enforces.
- Rendered sets (--rendered): the references and API-server rules a schema cannot say:
  objects a pod or binding names exist, mounts name volumes, no privileged container.

A kind with no schema is an error, never a warning. Prints one line per resource, exits 1
on any failure, 2 if the validator itself broke.
"""

import argparse
import copy
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "PersistentVolume", "Node", "APIService",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
POD_TEMPLATE_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"}

# Prometheus Operator's PodMonitor, the fields deploy/ uses, from the operator's API
# reference. Its CRD is not on this machine; a field outside this list fails, so a new
# one is added here on purpose.
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {"type": "string"},
    },
}
PODMONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "portNumber": {"type": "integer"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)(y|w|d|h|m|s|ms))+)$"},
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}
LOCAL_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR}


class Failures:
    def __init__(self):
        self.count = 0

    def fail(self, where, message):
        self.count += 1
        print(f"FAIL {where}: {message}")


def name_of(doc):
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{f'{ns}/' if ns else ''}{meta.get('name')}"


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def strict_crd_schema(schema):
    """The CRD schema as JSON Schema: unknown fields refused (the API server would prune
    them), nullable and int-or-string spelt out, the root's apiVersion/kind/metadata
    allowed (the API server adds them to every CRD's schema)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node.setdefault("anyOf", []).extend([{"type": "integer"}, {"type": "string"}])
        open_ended = node.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in node and "additionalProperties" not in node and not open_ended:
            node["additionalProperties"] = False
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(schema)
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    return schema


def structural_errors(node, path="openAPIV3Schema"):
    """The API server's structural-schema rules that the CRD's own schema cannot express."""
    errors = []
    if not isinstance(node, dict):
        return errors
    exempt = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in node and not exempt and not any(k in node for k in ("allOf", "anyOf", "oneOf")):
        errors.append(f"{path}: no type (a structural schema types every field)")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties together")
    for key, child in node.get("properties", {}).items():
        errors += structural_errors(child, f"{path}.properties.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            errors += structural_errors(node[key], f"{path}.{key}")
    return errors


class Validator:
    def __init__(self, version, failures):
        self.version = version
        self.failures = failures
        self.crds = {}  # (apiVersion, kind) -> (schema, scope)

    def add_crds(self, docs, where):
        for doc in docs:
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc.get("spec", {})
            for version in spec.get("versions", []):
                if not version.get("served"):
                    continue
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema is None:
                    self.failures.fail(f"{where}: {name_of(doc)}", f"version {version.get('name')} has no schema")
                    continue
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                self.crds[key] = (strict_crd_schema(schema), spec.get("scope"))

    def check(self, doc, where):
        where = f"{where}: {name_of(doc)}"
        if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
            self.failures.fail(where, "no apiVersion or kind")
            return
        key = (doc["apiVersion"], doc["kind"])
        if key in self.crds:
            self.check_custom(doc, where, *self.crds[key])
        elif key in LOCAL_SCHEMAS:
            if self.check_schema(doc, where, LOCAL_SCHEMAS[key]) and self.check_metadata(doc, where):
                print(f"ok   {where} (the fields of it deploy/ uses)")
        else:
            self.check_builtin(doc, where)
        if doc["kind"] == "CustomResourceDefinition":
            for version in doc.get("spec", {}).get("versions", []):
                schema = version.get("schema", {}).get("openAPIV3Schema", {})
                for error in structural_errors(schema):
                    self.failures.fail(where, f"{version.get('name')}: {error}")

    def check_builtin(self, doc, where):
        try:
            kv.validate(doc, self.version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            self.failures.fail(where, f"{path}: {e.message}")
            return
        except kv.SchemaNotFoundError as e:
            self.failures.fail(where, e.message)
            return
        print(f"ok   {where} (Kubernetes {self.version})")

    def check_custom(self, doc, where, schema, scope):
        if scope == "Cluster" and doc.get("metadata", {}).get("namespace"):
            self.failures.fail(where, "a cluster-scoped resource with a namespace")
            return
        if self.check_schema(doc, where, schema) and self.check_metadata(doc, where):
            print(f"ok   {where} (its CRD's schema)")

    def check_schema(self, doc, where, schema):
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            path = ".".join(str(p) for p in e.path) or "(root)"
            self.failures.fail(where, f"{path}: {e.message}")
        return not errors

    def check_metadata(self, doc, where):
        """metadata against the real ObjectMeta, borrowed through a ConfigMap around it."""
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")}
        try:
            kv.validate(probe, self.version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            self.failures.fail(where, f"{path}: {e.message}")
            return False
        return True


def check_references(docs, where, external, failures):
    """What the API server accepts but the cluster could never run."""
    have = {(d.get("kind"), (d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")) for d in docs}
    namespaces = {n for k, _, n in have if k == "Namespace"}

    def exists(kind, ns, name):
        return (kind, ns, name) in have or f"{kind}/{name}" in external

    for doc in docs:
        here = f"{where}: {name_of(doc)}"
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        ns = meta.get("namespace")
        if kind not in CLUSTER_SCOPED:
            if not ns:
                failures.fail(here, "namespaced but no namespace")
            elif ns not in namespaces and f"Namespace/{ns}" not in external:
                failures.fail(here, f"namespace {ns} is not created here")
        if kind in ("ClusterRoleBinding", "RoleBinding"):
            ref = doc.get("roleRef", {})
            role_ns = None if ref.get("kind") == "ClusterRole" else ns
            if not exists(ref.get("kind"), role_ns, ref.get("name")):
                failures.fail(here, f"roleRef {ref.get('kind')}/{ref.get('name')} does not exist")
            for s in doc.get("subjects", []):
                if s.get("kind") == "ServiceAccount" and not exists("ServiceAccount", s.get("namespace"), s.get("name")):
                    failures.fail(here, f"subject ServiceAccount/{s.get('namespace')}/{s.get('name')} does not exist")
        if kind in POD_TEMPLATE_KINDS:
            try:
                check_pod(doc["spec"]["template"]["spec"], here, ns, exists, failures)
            except (AttributeError, KeyError, TypeError) as e:
                failures.fail(here, f"malformed pod template ({e!r}): references not checked")


def check_pod(pod, here, ns, exists, failures):
    sa = pod.get("serviceAccountName")
    if sa and not exists("ServiceAccount", ns, sa):
        failures.fail(here, f"serviceAccountName {sa} does not exist")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        refs = [("ConfigMap", v.get("configMap", {}).get("name")), ("Secret", v.get("secret", {}).get("secretName"))]
        for source in v.get("projected", {}).get("sources", []):
            refs += [("ConfigMap", source.get("configMap", {}).get("name")), ("Secret", source.get("secret", {}).get("name"))]
        for kind, name in refs:
            if name and not exists(kind, ns, name):
                failures.fail(here, f"volume {v['name']}: {kind}/{name} does not exist")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext") or {}
        cname = f"container {c.get('name')}"
        if sc.get("privileged"):
            failures.fail(here, f"{cname} is privileged: grant capabilities instead")
        added = {a.removeprefix("CAP_") for a in (sc.get("capabilities") or {}).get("add", [])}
        if sc.get("allowPrivilegeEscalation") is False and "SYS_ADMIN" in added:
            failures.fail(here, f"{cname}: allowPrivilegeEscalation false with SYS_ADMIN (the API server refuses CAP_SYS_ADMIN; SYS_ADMIN escalates anyway)")
        for m in c.get("volumeMounts", []):
            if m.get("name") not in volumes:
                failures.fail(here, f"{cname} mounts {m.get('name')}, which is no volume")
            if m.get("mountPropagation") == "Bidirectional" and not sc.get("privileged"):
                failures.fail(here, f"{cname}: Bidirectional propagation of {m.get('name')} needs a privileged container")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("--crds", action="append", default=[], help="a file of CRDs the resources may use")
    ap.add_argument("--rendered", action="append", default=[], help="a rendered set: also checked for references")
    ap.add_argument("--external", action="append", default=[], help="Kind/name the cluster already holds")
    ap.add_argument("files", nargs="*", help="standalone resources (examples)")
    args = ap.parse_args()

    failures = Failures()
    validator = Validator(args.kubernetes_version, failures)
    sets = {}
    for path in args.crds + args.rendered + args.files:
        try:
            sets[path] = load(path)
        except yaml.YAMLError as e:
            failures.fail(path, f"not YAML: {e}")
            sets[path] = []
        validator.add_crds(sets[path], path)
    total = 0
    for path in args.rendered + args.files:
        for doc in sets[path]:
            if not isinstance(doc, dict):
                failures.fail(path, f"a document that is not an object: {doc!r}")
                continue
            validator.check(doc, path)
            total += 1
    for path in args.rendered:
        check_references([d for d in sets[path] if isinstance(d, dict)], path, set(args.external), failures)
    if total == 0:
        failures.fail("(arguments)", "no resource to validate")
    print(f"{total} resources, {failures.count} failures")
    return 1 if failures.count else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # a bug here must not read as "the manifests are invalid"
        import traceback

        traceback.print_exc()
        sys.exit(2)
