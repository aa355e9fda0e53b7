"""The base job templates of the platform's work pools, one per kind of worker.

    python -m deployments.pools kubernetes sunday-deploy --image REGISTRY/sunday/sunday-release@sha256:… > t.json
    prefect work-pool create sunday-deploy --type kubernetes --base-job-template t.json

The deployments of `prefect.yaml` name their pools (`sunday-ci`, `sunday-deploy`, `sunday-e2e`), never a kind
of infrastructure: the same deployments run as processes beside `make server` (`process`), in containers of the
pipeline's own image on a Docker host (`docker`, prefect-docker) or as Jobs on a Kubernetes cluster
(`kubernetes`, prefect-kubernetes), depending on the pool a platform team creates under that name.

Every template starts from the worker's own default (`get_default_base_job_template()`, so the variables keep
the worker's schema) and changes what the platform needs:

- kubernetes: namespace `prefect`, the pool's ServiceAccount (`sunday-ci`, or `sunday-release` for
  `sunday-deploy`, infra/k8s/prefect/serviceaccount.yaml), the pod labels its NetworkPolicies select, the
  restricted pod security of every Sunday workload (non-root, read-only root file system, no capabilities,
  RuntimeDefault seccomp, requests and limits), writable emptyDirs for /tmp, HOME and SUNDAY_HOME, and no
  ServiceAccount token except for the deploy pool, which gets it as an explicit projected volume. The API's auth
  string comes from the Secret `prefect-api-auth` (docs/production.md §6), never as a literal: a worker passes
  its own settings to its flow runs, so the template removes `PREFECT_API_AUTH_STRING` from them.
- docker: the image, host networking (the local platform's API, registry and S3 listen on 127.0.0.1), the
  Docker socket for CI's builds (as root: see `docker_job_template`), and SUNDAY_HOME and the Trivy cache
  bind-mounted at the same paths as on the host, since the checks' `docker run -v` paths are resolved by the
  host's dockerd.

The image is the pipeline's own (Dockerfile at the top of this repository), pinned by digest: a tag could be
moved under a running platform.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from typing import Any

from sunday_release.errors import InputError
from sunday_release.registry import parse_image_ref

__all__ = ["KINDS", "POOLS", "base_job_template", "docker_job_template", "kubernetes_job_template"]

KINDS = ("process", "docker", "kubernetes")
POOLS = ("sunday-ci", "sunday-deploy", "sunday-e2e")

NAMESPACE = "prefect"
# The pool's identity (infra/k8s/prefect/serviceaccount.yaml): only CD talks to the Kubernetes API.
SERVICE_ACCOUNTS = {"sunday-ci": "sunday-ci", "sunday-deploy": "sunday-release", "sunday-e2e": "sunday-ci"}
# The Secret holding the API's auth string (docs/production.md §6) and its key.
AUTH_SECRET, AUTH_KEY = "prefect-api-auth", "auth-string"
# The image's user (Dockerfile): a fixed id, so runAsNonRoot can be checked by the kubelet.
USER_ID = 10001
HOME = "/home/sunday"
SUNDAY_HOME = "/var/lib/sunday-release/home"
RELEASE_DIR = "/opt/sunday-release"  # where the image keeps this repository (prefect.yaml's pull step)
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where the kubernetes client looks in a pod
# CPU and memory of one flow run (a CI run builds through a remote builder; the run itself is Python and Trivy).
RESOURCES = {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "4Gi"}


def pinned_image(image: str, where: str = "--image") -> str:
    """`image` if it is a reference pinned by digest (`REGISTRY/NAME@sha256:…`); InputError naming it if not."""
    ref = parse_image_ref(image, where)
    if not ref.digest or not ref.digest.startswith("sha256:"):
        raise InputError(f"{where}: {image!r} is not pinned by digest: write REGISTRY/NAME@sha256:<64 hex> "
                         "(a tag can be moved under a running platform)")
    return image


def _pool(pool: str) -> str:
    if pool not in POOLS:
        raise InputError(f"pool: {pool!r} is not a work pool of prefect.yaml (one of {', '.join(POOLS)})")
    return pool


def _set_default(template: dict[str, Any], variable: str, value: Any) -> None:
    template["variables"]["properties"][variable]["default"] = value


def kubernetes_job_template(pool: str, image: str) -> dict[str, Any]:
    """The base job template of `pool` as a Kubernetes work pool (prefect-kubernetes), running `image`."""
    from prefect_kubernetes.worker import KubernetesWorker

    pool, image = _pool(pool), pinned_image(image)
    template: dict[str, Any] = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    deploys = pool == "sunday-deploy"
    for variable, value in {
        "namespace": NAMESPACE, "image": image, "service_account_name": SERVICE_ACCOUNTS[pool],
        "image_pull_policy": "IfNotPresent", "finished_job_ttl": 3600, "backoff_limit": 0, **RESOURCES,
        # the worker copies its own settings into the Job's env: the auth string must come from the Secret
        "env": {"PREFECT_API_AUTH_STRING": None, "HOME": HOME, "PREFECT_HOME": f"{HOME}/.prefect",
                "SUNDAY_HOME": SUNDAY_HOME, "SUNDAY_RELEASE_DIR": RELEASE_DIR},
    }.items():
        _set_default(template, variable, value)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME},
              {"name": "sunday-home", "mountPath": SUNDAY_HOME}]
    volumes: list[dict[str, Any]] = [{"name": name, "emptyDir": {}} for name in ("tmp", "home", "sunday-home")]
    if deploys:  # CD talks to the Kubernetes API: the token explicitly, short-lived, where the client looks
        mounts.append({"name": "kube-api-access", "mountPath": TOKEN_DIR, "readOnly": True})
        volumes.append({"name": "kube-api-access", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}})
    template["job_configuration"]["job_manifest"] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"annotations": "{{ annotations }}", "generateName": "{{ name }}-", "labels": "{{ labels }}",
                     "namespace": "{{ namespace }}"},
        "spec": {
            "backoffLimit": "{{ backoff_limit }}",
            "completions": 1,
            "parallelism": 1,
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {
                # infra/k8s/prefect/networkpolicies.yaml lets pods with this label reach the API
                "metadata": {"labels": {"app.kubernetes.io/component": "flow-run",
                                        "app.kubernetes.io/part-of": "sunday-release", "sunday.pool": pool}},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                                        "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "prefect-job",
                        "image": "{{ image }}",
                        "imagePullPolicy": "{{ image_pull_policy }}",
                        "args": "{{ command }}",
                        "env": [{"name": "PREFECT_API_AUTH_STRING",
                                 "valueFrom": {"secretKeyRef": {"name": AUTH_SECRET, "key": AUTH_KEY}}}],
                        "resources": {"requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"},
                                      "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}"}},
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }
    return template


def docker_job_template(pool: str, image: str, sunday_home: str, trivy_cache: str | None = None,
                        mounts: Sequence[str] = (), docker_socket: str = "/var/run/docker.sock") -> dict[str, Any]:
    """The base job template of `pool` as a Docker work pool (prefect-docker): each flow run in a container of
    `image` on the worker's Docker host.

    The container runs as root: its work is to drive the host's dockerd through its socket, which is root on
    that host whatever the container's user (a user in the docker group is no less). Run a Docker pool only on
    hosts given to the pipeline; the Kubernetes pools run non-root and reach no Docker engine.

    Args:
        pool: one of POOLS.
        image: the pipeline's image, pinned by digest.
        sunday_home: the host's SUNDAY_HOME, mounted at the same path (the checks' bind mounts name host paths).
        trivy_cache: the host's SUNDAY_TRIVY_CACHE (the offline vulnerability DB and the layer cache), mounted
            at the same path.
        mounts: host paths the deployments name (an application repository given as a path), read-only at
            the same paths.
        docker_socket: the host's Docker socket.
    """
    from prefect_docker.worker import DockerWorker

    pool, image = _pool(pool), pinned_image(image)
    for path in (sunday_home, trivy_cache, *mounts, docker_socket):
        if path is not None and (not path.startswith("/") or ":" in path or "," in path):
            raise InputError(f"mount: {path!r} is not an absolute host path (without ':' or ',')")
    template: dict[str, Any] = copy.deepcopy(DockerWorker.get_default_base_job_template())
    volumes = [f"{docker_socket}:/var/run/docker.sock", f"{sunday_home}:{sunday_home}",
               *(f"{path}:{path}:ro" for path in mounts)]
    # the worker passes its own settings on: PREFECT_HOME would name a directory of the worker's machine
    env: dict[str, str | None] = {"SUNDAY_HOME": sunday_home, "SUNDAY_RELEASE_DIR": RELEASE_DIR, "HOME": HOME,
                                  "PREFECT_HOME": f"{HOME}/.prefect"}
    if trivy_cache:
        volumes.append(f"{trivy_cache}:{trivy_cache}")
        env["SUNDAY_TRIVY_CACHE"] = trivy_cache
    for variable, value in {"image": image, "image_pull_policy": "IfNotPresent", "network_mode": "host",
                            "auto_remove": True, "volumes": volumes, "env": env,
                            "labels": {"sunday.pool": pool}, "container_create_kwargs": {"user": "0"}}.items():
        _set_default(template, variable, value)
    return template


def base_job_template(kind: str, pool: str, image: str | None = None, sunday_home: str | None = None,
                      trivy_cache: str | None = None, mounts: Sequence[str] = ()) -> dict[str, Any]:
    """The base job template of `pool` for a worker of `kind` (one of KINDS)."""
    if kind == "process":
        from deployments.prewarmed import pool_job_template

        return pool_job_template()
    if kind not in KINDS:
        raise InputError(f"kind: {kind!r} is not a kind of work pool (one of {', '.join(KINDS)})")
    if not image:
        raise InputError(f"--image: a {kind} pool runs the pipeline's image: give it, pinned by digest")
    if kind == "kubernetes":
        return kubernetes_job_template(pool, image)
    if not sunday_home:
        raise InputError("--sunday-home: a docker pool mounts the host's SUNDAY_HOME: give its path")
    return docker_job_template(pool, image, sunday_home, trivy_cache, mounts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.pools", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("pool", choices=POOLS)
    parser.add_argument("--image", help="the pipeline's image, pinned by digest (docker, kubernetes)")
    parser.add_argument("--sunday-home", help="the Docker host's SUNDAY_HOME (docker)")
    parser.add_argument("--trivy-cache", help="the Docker host's SUNDAY_TRIVY_CACHE (docker)")
    parser.add_argument("--mount", action="append", default=[], metavar="PATH",
                        help="a host path the deployments name, mounted read-only at the same path (docker)")
    args = parser.parse_args(argv)
    try:
        template = base_job_template(args.kind, args.pool, args.image, args.sunday_home, args.trivy_cache,
                                     args.mount)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    json.dump(template, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
