"""A pull request's preview on the kubernetes target: the objects of its namespace `sunday-pr-N`.

`infra/k8s/preview` (the staging overlay with one pod per service and no backups) renders into the placeholder
namespace `sunday-preview` with the placeholder host `preview.sunday.com`; `preview_manifests` gives one pull
request's copy: its namespace, its Ingress host, its release-history ConfigMap labelled with the project and
`pr-N`. Pure: the rendering (kubectl kustomize) and the apply are the caller's.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from sunday_release.errors import PipelineError
from sunday_release.preview import preview_env

__all__ = ["PLACEHOLDER_HOST", "PLACEHOLDER_NAMESPACE", "PREVIEW_LABEL", "preview_manifests", "preview_namespace"]

PLACEHOLDER_NAMESPACE = "sunday-preview"
PLACEHOLDER_HOST = "preview.sunday.com"
PREVIEW_LABEL = "sunday-release/preview"
_STATE = "sunday-release-state"

Obj = dict[str, Any]


def preview_namespace(number: int) -> str:
    """The namespace of pull request `number`'s preview (the kubernetes target's `sunday-ENV`)."""
    return f"sunday-{preview_env(number)}"


def preview_manifests(rendered: list[Obj], project: str, number: int, host: str) -> list[Obj]:
    """The rendered preview overlay, moved to `sunday-pr-N` and `host`, the Namespace first.

    Raises:
        PipelineError: an object the overlay puts in another namespace (the copy must stay in its own).
    """
    namespace, env = preview_namespace(number), preview_env(number)
    out: list[Obj] = []
    for original in rendered:
        obj = deepcopy(original)
        meta = obj.setdefault("metadata", {})
        labels = meta.setdefault("labels", {})
        if obj.get("kind") == "Namespace":
            if meta.get("name") != PLACEHOLDER_NAMESPACE:
                raise PipelineError(f"infra/k8s/preview renders Namespace {meta.get('name')!r}, not "
                                    f"{PLACEHOLDER_NAMESPACE!r}")
            meta["name"] = namespace
            labels |= {PREVIEW_LABEL: str(number), "sunday-release/project": project}
            out.insert(0, obj)
            continue
        if "namespace" in meta and meta["namespace"] != PLACEHOLDER_NAMESPACE:
            raise PipelineError(f"infra/k8s/preview renders {obj.get('kind')}/{meta.get('name')} into namespace "
                                f"{meta['namespace']!r}: a preview's objects stay in its own")
        meta["namespace"] = namespace
        labels[PREVIEW_LABEL] = str(number)
        if obj.get("kind") == "ConfigMap" and meta.get("name") == _STATE:
            labels |= {"sunday-release/project": project, "sunday-release/env": env}
        if obj.get("kind") == "Ingress":
            spec = obj.get("spec", {})
            for rule in spec.get("rules", []):
                if rule.get("host") == PLACEHOLDER_HOST:
                    rule["host"] = host
            for tls in spec.get("tls", []):
                tls["hosts"] = [host if h == PLACEHOLDER_HOST else h for h in tls.get("hosts", [])]
        out.append(obj)
    if not out or out[0].get("kind") != "Namespace":
        raise PipelineError("infra/k8s/preview renders no Namespace")
    return out
