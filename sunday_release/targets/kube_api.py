"""The kubernetes target's side-effect seam: the few API calls it makes (`KubeApi`) and their client.

`KubernetesApi` speaks to a real API server through the official client; tests pass a fake of the
same protocol (tests/fake_kube.py), as httpx tests swap the transport. Objects are plain API JSON
dicts (`kube_decisions.Obj`). The Kubernetes client is imported only when a `KubernetesApi` is made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Protocol

from sunday_release.targets.kube_decisions import Obj

__all__ = ["MERGE", "STRATEGIC", "KubeApi", "KubernetesApi"]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class KubeApi(Protocol):
    """The few Kubernetes API calls the target makes; objects are plain API JSON dicts (camelCase).

    Every method raises `kubernetes.client.ApiException` on a non-2xx answer (status 0: no answer).
    """

    def read_deployment(self, namespace: str, name: str) -> Obj: ...
    def patch_deployment(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def read_service(self, namespace: str, name: str) -> Obj: ...
    def patch_service(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def read_hpa(self, namespace: str, name: str) -> Obj: ...
    def patch_hpa(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]: ...
    def list_events(self, namespace: str, field_selector: str) -> list[Obj]: ...
    def create_job(self, namespace: str, body: Obj) -> Obj: ...
    def read_job(self, namespace: str, name: str) -> Obj: ...
    def read_pod_log(self, namespace: str, name: str, tail_lines: int) -> str: ...
    def read_config_map(self, namespace: str, name: str) -> Obj: ...
    def patch_config_map(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def apply(self, obj: Obj) -> Obj: ...
    def delete_namespace(self, name: str) -> bool: ...
    def close(self) -> None: ...


class KubernetesApi:
    """`KubeApi` over the official client (AppsV1, CoreV1, BatchV1, AutoscalingV2).

    Answers are read raw (`_preload_content=False`) and parsed as JSON, so the target sees exactly
    what the API server sent. Deployment and Service patches are strategic-merge patches, HPA and
    ConfigMap patches JSON merge patches (the client would otherwise send a dict as a JSON Patch).
    """

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    @classmethod
    def from_context(cls, context: str | None) -> KubernetesApi:
        """A client for `context` of the kubeconfig; in a pod without a context, the pod's ServiceAccount."""
        from kubernetes import client, config

        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return cls(client.ApiClient())
        return cls(config.new_client_from_config(context=context))

    def _json(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import urllib3
        from kubernetes.client import ApiException

        try:
            response = call(*args, _preload_content=False, _request_timeout=30, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc
        return json.loads(response.data or b"null")

    def read_deployment(self, namespace: str, name: str) -> Obj:
        return self._json(self.apps.read_namespaced_deployment, name, namespace)  # type: ignore[no-any-return]

    def patch_deployment(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.apps.patch_namespaced_deployment, name, namespace,  # type: ignore[no-any-return]
                          body, _content_type=STRATEGIC)

    def read_service(self, namespace: str, name: str) -> Obj:
        return self._json(self.core.read_namespaced_service, name, namespace)  # type: ignore[no-any-return]

    def patch_service(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.core.patch_namespaced_service, name, namespace,  # type: ignore[no-any-return]
                          body, _content_type=STRATEGIC)

    def read_hpa(self, namespace: str, name: str) -> Obj:
        return self._json(self.autoscaling.read_namespaced_horizontal_pod_autoscaler,  # type: ignore[no-any-return]
                          name, namespace)

    def patch_hpa(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,  # type: ignore[no-any-return]
                          name, namespace, body, _content_type=MERGE)

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        out = self._json(self.core.list_namespaced_pod, namespace, label_selector=label_selector)
        return list(out.get("items") or [])

    def list_events(self, namespace: str, field_selector: str) -> list[Obj]:
        out = self._json(self.core.list_namespaced_event, namespace, field_selector=field_selector)
        return list(out.get("items") or [])

    def create_job(self, namespace: str, body: Obj) -> Obj:
        return self._json(self.batch.create_namespaced_job, namespace, body)  # type: ignore[no-any-return]

    def read_job(self, namespace: str, name: str) -> Obj:
        return self._json(self.batch.read_namespaced_job, name, namespace)  # type: ignore[no-any-return]

    def read_pod_log(self, namespace: str, name: str, tail_lines: int) -> str:
        import urllib3
        from kubernetes.client import ApiException

        try:
            response: Any = self.core.read_namespaced_pod_log(name, namespace, tail_lines=tail_lines,
                                                              _preload_content=False, _request_timeout=30)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc
        return bytes(response.data or b"").decode(errors="replace")

    def read_config_map(self, namespace: str, name: str) -> Obj:
        return self._json(self.core.read_namespaced_config_map, name, namespace)  # type: ignore[no-any-return]

    def patch_config_map(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.core.patch_namespaced_config_map, name, namespace,  # type: ignore[no-any-return]
                          body, _content_type=MERGE)

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply of any object (field manager `sunday-release`, conflicts forced): a preview's
        namespace and everything in it (sunday_release/targets/kube_preview.py)."""
        import urllib3
        from kubernetes import dynamic
        from kubernetes.client import ApiException

        try:
            resource = dynamic.DynamicClient(self.api_client).resources.get(api_version=obj["apiVersion"],
                                                                            kind=obj["kind"])
            applied = resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                                 namespace=obj["metadata"].get("namespace"),
                                                 field_manager="sunday-release", force_conflicts=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc
        return applied.to_dict()  # type: ignore[no-any-return]

    def delete_namespace(self, name: str) -> bool:
        """Delete namespace `name` and everything in it (foreground); False when there was none."""
        from kubernetes.client import ApiException

        try:
            self._json(self.core.delete_namespace, name, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def close(self) -> None:
        self.api_client.close()

