"""Preview environments' records and teardown (the decisions are sunday_release/preview.py's).

A preview's record is the Prefect Variable `sunday-preview-PROJECT-N` (`PreviewRecord` as JSON): every worker
and the CLI see the same list, whichever machine runs the preview. Its environment is `pr-N` of the project on
the docker target of the machine that deployed it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from sunday_release.config import PipelineConfig
from sunday_release.errors import PipelineError
from sunday_release.preview import PreviewPolicy, PreviewRecord, images_to_delete, preview_env
from sunday_release.registry import DeletesDisabled
from sunday_release.settings import Settings
from tasks._common import progress
from tasks.images import registry_client

__all__ = ["PREFIX", "delete_preview_images", "destroy_preview", "forget_preview", "ports_taken",
           "provision_preview", "read_preview", "read_previews", "save_preview"]

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
    from sunday_release.targets.docker import _listening, _ports_in

    taken = {port for claim in settings.env_root.glob("*/*/ports.json") for port in _ports_in(claim)}
    first, last = policy.ports
    return taken | {port for port in range(first, last + 1) if port not in taken and _listening(port)}


OVERLAY = Path(__file__).resolve().parent.parent / "infra" / "k8s" / "preview"


@task(name="provision-preview", task_run_name="provision[{config.project}/pr-{number}]", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=5)
def provision_preview(config: PipelineConfig, number: int, host: str) -> int:
    """kubernetes: render infra/k8s/preview (the platform's overlay, never the commit's), move it to namespace
    sunday-pr-N and `host`, and apply it (server-side apply: a redeploy changes nothing that is there); the number
    of objects applied."""
    import yaml

    from sunday_release.runner import run
    from sunday_release.settings import kubectl
    from sunday_release.targets import make_target
    from sunday_release.targets.kube_preview import preview_manifests
    from sunday_release.targets.kubernetes import KubernetesTarget

    rendered = [doc for doc in yaml.safe_load_all(run([kubectl(), "kustomize", str(OVERLAY)], timeout=120).stdout)
                if doc]
    target = make_target(config, preview_env(number), Settings.from_env())
    if not isinstance(target, KubernetesTarget):
        raise PipelineError(f"{config.project}/pr-{number} is not on the kubernetes target")
    try:
        applied = target.provision(preview_manifests(rendered, config.project, number, host))
    finally:
        target.teardown()
    progress(f"{config.project}/pr-{number}: {applied} objects applied to namespace {target.namespace} ({host})")
    return applied


@task(name="destroy-preview", task_run_name="destroy[{project}/pr-{number}]", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5)
def destroy_preview(project: str, number: int, config: PipelineConfig | None,
                    policy: PreviewPolicy | None = None) -> list[str]:
    """Remove `pr-N` of `project`: on the docker target of this machine its containers, router, database and
    its data, its directory; on the kubernetes target its namespace (`policy`'s cluster when `config` is None).

    `config` is the preview's last config (None when it never got one: what exists is found by label and path).
    Returns what was removed, for the log.
    """
    from sunday_release.config import Environment
    from sunday_release.targets.docker import DockerTarget

    settings, env = Settings.from_env(), preview_env(number)
    spec = config.environments.get(env) if config is not None else None
    if (spec.target if spec is not None else policy.target if policy is not None else "docker") == "kubernetes":
        return [_destroy_namespace(project, number, config, policy)]
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


def _destroy_namespace(project: str, number: int, config: PipelineConfig | None,
                       policy: PreviewPolicy | None) -> str:
    from sunday_release.config import Environment
    from sunday_release.targets import make_target
    from sunday_release.targets.kubernetes import KubernetesTarget

    env = preview_env(number)
    if config is None or env not in config.environments:
        config = PipelineConfig.model_validate({"project": project, "services": {
            "placeholder": {"context": ".", "port": 1}}, "environments": {}}).model_copy(update={"environments": {
                env: Environment(target="kubernetes", kube_context=policy.kube_context if policy else None)}})
    target = make_target(config, env, Settings.from_env())
    if not isinstance(target, KubernetesTarget):
        raise PipelineError(f"{project}/{env} is not on the kubernetes target")
    try:
        target.destroy()
    finally:
        target.teardown()
    progress(f"{project}/{env}: namespace {target.namespace} deleted")
    return f"namespace {target.namespace}"


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
                except DeletesDisabled as refused:  # the registry's choice, not a failure of the close
                    progress(f"{project}/pr-{number}: images kept: {refused}")
                    return deleted
    progress(f"{project}/pr-{number}: deleted {len(deleted)} image(s) no release refers to"
             + (f" ({', '.join(d.split('@')[0] for d in deleted)})" if deleted else ""))
    return deleted
