#!/usr/bin/env python3
"""Offline validation of Kubernetes YAML for tests/manifests.rs.

Usage: validate_manifests.py --k8s 1.30 --k8s 1.36 FILE...

Every document of every FILE is checked by one validator:
- built-in kinds: Kubernetes' own JSON schemas (kubernetes-validate, strict: unknown fields
  are errors), for each --k8s version;
- custom resources of a CustomResourceDefinition found among the FILEs: that CRD's
  openAPIV3Schema for the document's version, with unknown fields as errors (as
  `kubectl apply`'s strict field validation), and metadata as Kubernetes' ObjectMeta;
- the CRDs themselves additionally get the structural-schema rules the API server enforces;
- GatewayClass: the fields Gateway API documents;
- Gateway, HTTPRoute, GRPCRoute: not here; the Rust test hands them to istiod-lite's parser
  (validator "istiod-lite").
Prints one JSON object per document: file, document (1-based among non-empty documents),
apiVersion, kind, name, namespace, validator, errors (each "<field path>: <message>").
Exit status 0 whenever it could run; the caller judges the errors.
"""

import argparse
import copy
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate import utils as kv

DELEGATED = {("gateway.networking.k8s.io", "Gateway"), ("gateway.networking.k8s.io", "HTTPRoute"),
             ("gateway.networking.k8s.io", "GRPCRoute")}

# GatewayClass as Gateway API (v1) documents it.
GATEWAY_CLASS = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["controllerName"],
            "additionalProperties": False,
            "properties": {
                "controllerName": {
                    "type": "string", "minLength": 1, "maxLength": 253,
                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$",
                },
                "description": {"type": "string", "maxLength": 64},
                "parametersRef": {
                    "type": "object",
                    "required": ["group", "kind", "name"],
                    "additionalProperties": False,
                    "properties": {
                        "group": {"type": "string"}, "kind": {"type": "string"},
                        "name": {"type": "string"}, "namespace": {"type": "string"},
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}


def group_version(api_version):
    if "/" in api_version:
        return tuple(api_version.split("/", 1))
    return "", api_version


def path_of(error):
    out = ""
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def messages(validator, doc, prefix=""):
    errs = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{prefix}{path_of(e)}: {e.message}" for e in errs]


class Kubernetes:
    """Kubernetes' JSON schemas for one version, strict."""

    def __init__(self, version):
        self.version = version
        versions = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)]
        if not versions:
            raise SystemExit(f"kubernetes-validate has no schemas for {version}")
        self.dir = "v%s-local-strict" % versions[-1]
        defs = kv.schema_contents(f"kubernetes-json-schema/{self.dir}/_definitions.json", version)
        self.definitions = referencing.Resource.from_contents(defs)

    def schema(self, api_version, kind):
        group_short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            return kv.schema_contents(f"kubernetes-json-schema/{self.dir}/{kind.lower()}-{group_short}.json",
                                      self.version)
        except FileNotFoundError:
            return None

    def validator(self, schema):
        resource = referencing.Resource.from_contents(schema)
        registry = self.definitions @ (resource @ referencing.Registry())
        return jsonschema.validators.Draft202012Validator(schema, registry=registry)

    def validate(self, doc):
        schema = self.schema(doc["apiVersion"], doc["kind"])
        if schema is None:
            return None
        return messages(self.validator(schema), doc)

    def validate_metadata(self, metadata):
        # ObjectMeta is the same for every kind: validate it as a ConfigMap's.
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
        return messages(self.validator(self.schema("v1", "ConfigMap")), doc)


def to_json_schema(node):
    """An openAPIV3Schema node as JSON Schema, closed to unknown fields like strict apply."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_json_schema(s) for s in node[key]]
    if (node.get("type") == "object" and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def structural_errors(node, path):
    """The API server's structural-schema rules we rely on."""
    errs = []
    if not isinstance(node, dict):
        return [f"{path}: not a schema object"]
    if "type" not in node and not node.get("x-kubernetes-int-or-string") \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        errs.append(f"{path}.type: must not be empty for specified object fields")
    if "properties" in node and "additionalProperties" in node:
        errs.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("type") == "array" and "items" not in node:
        errs.append(f"{path}.items: must be specified for an array")
    for k, v in node.get("properties", {}).items():
        errs += structural_errors(v, f"{path}.properties[{k}]")
    if isinstance(node.get("additionalProperties"), dict):
        errs += structural_errors(node["additionalProperties"], f"{path}.additionalProperties")
    if "items" in node:
        errs += structural_errors(node["items"], f"{path}.items")
    return errs


def crd_errors(crd):
    spec = crd.get("spec") or {}
    versions = spec.get("versions") or []
    errs = []
    if sum(1 for v in versions if v.get("storage")) != 1:
        errs.append("spec.versions: exactly one version must have storage: true")
    names = spec.get("names") or {}
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if crd.get("metadata", {}).get("name") != expected:
        errs.append(f"metadata.name: must be {expected}")
    for i, v in enumerate(versions):
        schema = ((v.get("schema") or {}).get("openAPIV3Schema"))
        if schema is None:
            errs.append(f"spec.versions[{i}].schema.openAPIV3Schema: required")
            continue
        errs += structural_errors(schema, f"spec.versions[{i}].schema.openAPIV3Schema")
        if schema.get("type") != "object":
            errs.append(f"spec.versions[{i}].schema.openAPIV3Schema.type: must be object")
    return errs


def load(files):
    out = []
    for f in files:
        with open(f) as fh:
            try:
                docs = [d for d in yaml.safe_load_all(fh) if d is not None]
                out.append((f, docs, None))
            except yaml.YAMLError as e:
                out.append((f, [], f"(file): not valid YAML: {e}"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s", action="append", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    kubes = [Kubernetes(v) for v in args.k8s]
    loaded = load(args.files)

    crds = {}
    for _, docs, _ in loaded:
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition":
                spec = d.get("spec") or {}
                for v in spec.get("versions") or []:
                    if not v.get("served"):
                        continue
                    schema = (v.get("schema") or {}).get("openAPIV3Schema")
                    key = (spec.get("group"), v.get("name"), (spec.get("names") or {}).get("kind"))
                    crds[key] = (d["metadata"]["name"], schema)

    for f, docs, err in loaded:
        if err:
            print(json.dumps({"file": f, "document": 0, "apiVersion": "", "kind": "", "name": "",
                              "namespace": "", "validator": "yaml", "errors": [err]}))
        for n, doc in enumerate(docs, 1):
            rec = {"file": f, "document": n, "apiVersion": "", "kind": "", "name": "", "namespace": "",
                   "validator": "none", "errors": []}
            if not isinstance(doc, dict):
                rec["errors"].append("(document): not a mapping")
                print(json.dumps(rec))
                continue
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            rec.update(apiVersion=str(doc.get("apiVersion", "")), kind=str(doc.get("kind", "")),
                       name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")))
            group, version = group_version(rec["apiVersion"])
            if not rec["apiVersion"] or not rec["kind"]:
                rec["errors"].append("apiVersion/kind: required")
            elif (group, rec["kind"]) in DELEGATED:
                rec["validator"] = "istiod-lite"
            elif (group, rec["kind"]) == ("gateway.networking.k8s.io", "GatewayClass"):
                rec["validator"] = "gateway-api"
                rec["errors"] += messages(jsonschema.Draft202012Validator(GATEWAY_CLASS), doc)
                for k in kubes:
                    rec["errors"] += k.validate_metadata(meta)
            elif (group, version, rec["kind"]) in crds:
                crd_name, schema = crds[(group, version, rec["kind"])]
                rec["validator"] = f"crd {crd_name}"
                closed = to_json_schema(schema)
                closed.setdefault("properties", {}).update(
                    apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
                rec["errors"] += messages(jsonschema.Draft202012Validator(closed), doc)
                for k in kubes:
                    rec["errors"] += k.validate_metadata(meta)
            else:
                # Each message once, with the Kubernetes versions that report it.
                found = {}
                for k in kubes:
                    errs = k.validate(doc)
                    if errs is None:
                        errs = [f"(document): no schema for {rec['apiVersion']} {rec['kind']} "
                                "in Kubernetes nor among the CRDs"]
                    else:
                        rec["validator"] = "kubernetes " + " ".join(x.version for x in kubes)
                    for e in errs:
                        found.setdefault(e, []).append(k.version)
                rec["errors"] += [f"{e} (Kubernetes {', '.join(v)})" for e, v in found.items()]
                if rec["kind"] == "CustomResourceDefinition" and group == "apiextensions.k8s.io":
                    rec["errors"] += crd_errors(doc)
            # The same error found for each Kubernetes version is one error.
            rec["errors"] = list(dict.fromkeys(rec["errors"]))
            print(json.dumps(rec))


if __name__ == "__main__":
    main()
