"""A kustomize build of the subset deploy/k8s uses, in Python, so the manifests can be rendered and checked
without kubectl.

Supported in a kustomization.yaml: ``resources`` (YAML files, or folders holding a kustomization),
``patches`` given by ``path`` (strategic merge patches, matched to a resource by kind and name) and ``images``
(``name`` with ``newName``, ``newTag`` or ``digest``). Anything else is an error, so a manifest never relies on
a feature this renderer would silently ignore. Strategic merge follows Kubernetes' rules for the fields
listed in ``MERGE_KEYS`` (lists merged item by item on that key); every other list is replaced by the
patch's, maps merge recursively, and ``null`` deletes a key. A merged list holds the patch's items first, in
the patch's order, then the original's other items, as kustomize v5 orders them. The output matched
``kubectl kustomize`` (kubectl 1.37.1 with kustomize 5.8.1, and 1.32.4 with kustomize 5.5.0) on deploy/k8s
and on the cases in test_k8s.py.

    python -m tests.deploy.kustomize deploy/k8s/overlays/gpu     # prints the rendered YAML stream
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KEYS = {"apiVersion", "kind", "resources", "patches", "images"}

# Lists that strategic merge patches merge item by item, on this key (the patchMergeKey of these fields in
# the Kubernetes API types). A list field not named here is replaced whole by the patch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}

# Output order: kinds that others depend on first (as kustomize's legacy order does), then the rest by kind.
FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount", "Role",
         "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service",
         "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet",
         "CronJob", "PodDisruptionBudget"]


class KustomizeError(Exception):
    pass


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def resource_id(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize treats as one resource."""
    meta = doc.get("metadata") or {}
    if not isinstance(doc.get("kind"), str) or not isinstance(meta.get("name"), str):
        raise KustomizeError(f"a resource needs kind and metadata.name: {str(doc)[:120]}")
    return _group(str(doc.get("apiVersion", ""))), doc["kind"], meta.get("namespace", ""), meta["name"]


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return docs


def kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization.yaml")


def build(folder: str | Path) -> list[dict[str, Any]]:
    """The resources that ``kubectl kustomize FOLDER`` would print, for the supported subset."""
    return _sorted(_build(Path(folder).resolve(), ()))


def _build(folder: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    if folder in stack:
        raise KustomizeError(f"{folder}: kustomizations include each other")
    kfile = kustomization_file(folder)
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: not supported by this renderer: {', '.join(sorted(unknown))}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind {k.get('kind')!r} (components are not supported)")

    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    for entry in k.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith(("github.com/", "git@")):
            raise KustomizeError(f"{kfile}: resource {entry!r}: only local files and folders")
        path = (folder / entry).resolve()
        if path.is_dir():
            docs = _build(path, stack + (folder,))
        elif path.is_file():
            docs = load_yaml_docs(path)
        else:
            raise KustomizeError(f"{kfile}: resource {entry!r} not found")
        for d in docs:
            rid = resource_id(d)
            if rid in seen:
                raise KustomizeError(f"{kfile}: {rid[1]}/{rid[3]} comes from both {seen[rid]} and {entry}")
            seen[rid] = entry
            out.append(copy.deepcopy(d))

    for entry in k.get("patches") or []:
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise KustomizeError(f"{kfile}: patch {entry!r}: only `path:` strategic merge patches are supported")
        ppath = folder / entry["path"]
        if not ppath.is_file():
            raise KustomizeError(f"{kfile}: patch {entry['path']!r} not found")
        for patch in load_yaml_docs(ppath):
            pid = resource_id(patch)
            matches = [i for i, d in enumerate(out) if resource_id(d)[1:] == pid[1:]
                       and (not pid[0] or resource_id(d)[0] == pid[0])]
            if len(matches) != 1:
                raise KustomizeError(f"{ppath}: patch for {pid[1]}/{pid[3]} matches {len(matches)} resources")
            out[matches[0]] = strategic_merge(out[matches[0]], patch, where=f"{ppath}")

    for image in k.get("images") or []:
        if not isinstance(image, dict) or "name" not in image or not set(image) <= {"name", "newName", "newTag",
                                                                                      "digest"}:
            raise KustomizeError(f"{kfile}: image entry {image!r}: name with newName, newTag or digest")
        for d in out:
            _set_images(d, image)
    return out


def strategic_merge(original: Any, patch: Any, field: str = "", where: str = "patch") -> Any:
    """``original`` with ``patch`` applied by the strategic merge rules described in the module docstring."""
    if isinstance(patch, dict):
        if any(isinstance(key, str) and key.startswith("$") for key in patch):
            raise KustomizeError(f"{where}: patch directives ({', '.join(k for k in patch if k.startswith('$'))}) "
                                 "are not supported")
        if not isinstance(original, dict):
            return {k: v for k, v in copy.deepcopy(patch).items() if v is not None}
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key, where)
            else:
                merged[key] = strategic_merge(None, value, key, where)
        return merged
    if isinstance(patch, list):
        key = MERGE_KEYS.get(field)
        if key is None or not isinstance(original, list):
            return copy.deepcopy(patch)
        for item in [*original, *patch]:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"{where}: an item of {field} lacks its merge key {key!r}")
        by_key = {o[key]: o for o in original}
        in_patch = {item[key] for item in patch}
        # kustomize's order (kyaml): the patch's items in the patch's order, then the original's other items.
        return ([strategic_merge(by_key.get(item[key]), item, field, where) for item in patch]
                + [copy.deepcopy(o) for o in original if o[key] not in in_patch])
    return copy.deepcopy(patch)


def split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference; a port in the registry host is not a tag."""
    name, _, digest = image.partition("@")
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest


def _set_images(node: Any, image: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        c["image"] = _new_image(c["image"], image)
            else:
                _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)


def _new_image(current: str, image: dict[str, str]) -> str:
    name, tag, digest = split_image(current)
    if name != image["name"]:
        return current
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return f"{name}:{tag}" if tag else f"{name}@{digest}" if digest else name


def _sorted(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(d: dict[str, Any]) -> tuple[int, str, str, str]:
        _, kind, ns, name = resource_id(d)
        return (FIRST.index(kind) if kind in FIRST else len(FIRST), kind, ns, name)
    return sorted(docs, key=key)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.deploy.kustomize FOLDER", file=sys.stderr)
        return 2
    try:
        docs = build(argv[0])
    except KustomizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
