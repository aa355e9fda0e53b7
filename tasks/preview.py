"""Preview environments' records and teardown (the decisions are sunday_release/preview.py's).

A preview's record is the Prefect Variable `sunday-preview-PROJECT-N` (`PreviewRecord` as JSON): every worker
and the CLI see the same list, whichever machine runs the preview. Its environment is `pr-N` of the project on
the docker target of the machine that deployed it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError, PipelineError
from sunday_release.preview import PreviewPolicy, PreviewRecord, images_to_delete, preview_env
from sunday_release.settings import Settings
from tasks._common import progress
from tasks.images import registry_client

__all__ = ["PREFIX", "delete_preview_images", "destroy_preview", "forget_preview", "ports_taken", "read_preview",
           "read_previews", "save_preview"]

PREFIX = "sunday-preview-"


def _variable(project: str, number: int) -> str:
    return f"{PREFIX}{project}-{number}"


def read_previews(project: str | None = None) -> list[PreviewRecord]:
    """Every preview the server knows (of `project`), by project then pull request number."""
    with get_client(sync_client=True) as client:
        found = client.read_variables(limit=None)
    records = []
    for variable in found:
        if not variable.name.startswith(PREFIX):
            continue
        try:
            record = PreviewRecord.model_validate(variable.value)
        except ValueError as exc:
            raise PipelineError(f"Prefect Variable {variable.name} is not a preview record: "
                                f"{str(exc).splitlines()[0]}") from None
        if project is None or record.project == project:
            records.append(record)
    return sorted(records, key=lambda r: (r.project, r.number))


def read_preview(project: str, number: int) -> PreviewRecord | None:
    with get_client(sync_client=True) as client:
        found = client.read_variable_by_name(_variable(project, number))
    return PreviewRecord.model_validate(found.value) if found is not None else None


def save_preview(record: PreviewRecord) -> None:
    """Create or replace the record of `record`'s preview."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    name = _variable(record.project, record.number)
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(name) is None:
            client.create_variable(VariableCreate(name=name, value=record.to_json(),
                                                  tags=["sunday-release", "preview"]))
        else:
            client.update_variable(VariableUpdate(name=name, value=record.to_json(),
                                                  tags=["sunday-release", "preview"]))


def forget_preview(project: str, number: int) -> None:
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(_variable(project, number)) is not None:
            client.delete_variable_by_name(_variable(project, number))


def ports_taken(settings: Settings, policy: PreviewPolicy) -> set[int]:
    """The host ports a new preview may not take: every port an environment of this machine holds (its
    ports.json, whatever the project) and every port of the policy's range something listens on."""
    taken: set[int] = set()
    for claim in settings.env_root.glob("*/*/ports.json"):
        try:
            ports = json.loads(claim.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(ports, dict):
            taken |= {int(p) for p in ports.values() if isinstance(p, int)}
    first, last = policy.ports
    for port in range(first, last + 1):
        if port not in taken and _listening(port):
            taken.add(port)
    return taken


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@task(name="destroy-preview", task_run_name="destroy[{project}/pr-{number}]", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5)
def destroy_preview(project: str, number: int, config: PipelineConfig | None) -> list[str]:
    """Remove `pr-N` of `project` from this machine: containers, router, database and its data, its directory.

    `config` is the preview's last config (None when it never got one: what exists is found by label and path).
    Returns what was removed, for the log.
    """
    from sunday_release.config import Environment
    from sunday_release.targets.docker import DockerTarget

    settings, env = Settings.from_env(), preview_env(number)
    spec = config.environments.get(env) if config is not None else None
    if config is None or spec is None:
        config = PipelineConfig.model_validate({"project": project, "services": {
            "placeholder": {"context": ".", "port": 1}}, "environments": {}})
        spec = Environment(port=1, db_port=1)
    target = DockerTarget(config, env, spec, settings.home, settings.docker, settings.db_root,
                          env_root=settings.env_root)
    existed = [what for what, path in (("database", target.db.root), ("environment directory", target.root))
               if Path(path).exists()]
    target.destroy()
    progress(f"{project}/{env}: removed containers, router" + (f", {', '.join(existed)}" if existed else ""))
    return existed


@task(name="delete-preview-images", task_run_name="delete-images[{project}/pr-{number}]", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=5)
def delete_preview_images(registry: str, project: str, services: list[str], number: int) -> list[str]:
    """Delete the registry manifests only pull request `number` refers to (`images_to_delete`); the images it
    shares with a release or another build stay. Returns `repository@digest` of each deleted one."""
    deleted: list[str] = []
    with registry_client(registry) as client:
        for service in services:
            repository = f"{project}/{service}"
            tags = {}
            for tag in client.tags(repository):
                found = client.head(repository, tag)
                if found is not None:
                    tags[tag] = found.digest
            for digest in sorted(images_to_delete(tags, number)):
                try:
                    if client.delete(repository, digest):
                        deleted.append(f"{repository}@{digest}")
                except InputError:
                    continue
    progress(f"{project}/pr-{number}: deleted {len(deleted)} image(s) no release refers to"
             + (f" ({', '.join(d.split('@')[0] for d in deleted)})" if deleted else ""))
    return deleted
