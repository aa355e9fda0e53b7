"""The images stage: multi-arch builds, immutable publishing, no rebuild of unchanged services."""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path

import docker.auth
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from sunday_release import validate
from sunday_release.config import PipelineConfig, Service
from sunday_release.content_key import content_key
from sunday_release.ecr import EcrClient, ecr_credentials, ensure_repository, is_ecr, region_of
from sunday_release.errors import CheckFailed, CommandFailed, ConfigError, DockerUnavailable, InputError
from sunday_release.registry import (
    DOCKER_HUB,
    Descriptor,
    PublishedImage,
    RegistryClient,
    RegistryUnavailable,
    TagLock,
    digest_of,
    manifest_list,
    parse_image_ref,
)
from sunday_release.runner import run, tail
from sunday_release.settings import Settings
from tasks._common import LOCAL_CACHE, ON_THIS_MACHINE, RETRY_DELAYS, is_transient, progress, transient_command
from tasks.source import Checkout

__all__ = ["build_platform_image", "tag_release", "find_published", "image_content_key", "service_content_key",
           "publish_manifest", "push_platform_image"]


def _ecr_client(registry: str) -> EcrClient:
    """boto3's ECR client. Credentials: the prefect-aws AwsCredentials block named by
    SUNDAY_AWS_CREDENTIALS_BLOCK, else boto3's default chain (env, profile, instance role)."""
    block = os.environ.get("SUNDAY_AWS_CREDENTIALS_BLOCK")
    if block:
        from prefect_aws import AwsCredentials

        session = AwsCredentials.load(block).get_boto3_session()
    else:
        import boto3

        session = boto3.Session()
    client: EcrClient = session.client("ecr", region_name=region_of(registry))
    return client


def _docker_credentials(registry: str) -> tuple[str, str] | None:
    """The (user, password) `docker login REGISTRY` stored (config.json, a credential helper), or None."""
    try:
        found = docker.auth.load_config().resolve_authconfig(
            docker.auth.INDEX_NAME if registry == DOCKER_HUB else registry)
    except Exception:  # a broken credential helper: go on anonymously; a 401 then names the registry
        return None
    found = {k.lower(): v for k, v in (found or {}).items()}  # `username` from config.json, `Username` from a helper
    if not found.get("password"):
        return None
    return str(found.get("username") or ""), str(found["password"])


def _prefect_tag_lock(registry: str, repository: str, tag: str) -> AbstractContextManager[object]:
    """A Prefect global concurrency limit (limit 1) per repository: tag writes of runs on every worker take turns.

    Per repository rather than per tag, so the server keeps one limit per service, not one per
    commit; a tag write holds it for two requests.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = f"sunday-tags {registry} {repository.replace('/', '|')}"  # `/` is not allowed; `|` is in no repo
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass
    return concurrency(name, occupy=1, timeout_seconds=300, strict=True)


def _tag_lock() -> TagLock | None:
    """In a task run, the Prefect lock (all hosts); a task body called with `.fn()` gets the client's host lock."""
    return _prefect_tag_lock if TaskRunContext.get() is not None else None


def registry_client(registry: str) -> RegistryClient:
    """A client of `registry`: an ECR token for Amazon ECR, else the docker client's stored credentials.

    Token auth (Docker Hub, GHCR, Harbor) is negotiated by the client; tag writes take a lock
    per repository (`_tag_lock`).
    """
    if is_ecr(registry):
        return RegistryClient(registry, auth=ecr_credentials(registry, _ecr_client(registry)), tag_lock=_tag_lock())
    return RegistryClient(registry, auth=_docker_credentials(registry), tag_lock=_tag_lock())


def _docker_login(registry: str, repository: str) -> None:
    """For ECR: make sure the repository exists (immutable tags) and log the docker client in."""
    if not is_ecr(registry):
        return
    client = _ecr_client(registry)
    ensure_repository(client, repository)
    user, password = ecr_credentials(registry, client)
    run([Settings.from_env().docker, "login", "--username", user, "--password-stdin", registry], input=password)


def key_tag(key: str) -> str:
    """The tag that records a content key: its presence means "already built"."""
    return f"ck-{key}"


def _arch(platform: str) -> str:
    return platform.split("/", 1)[1].replace("/", "")


def _base_digest(base_image: str) -> str:
    """The base image's manifest digest, from its registry (so a new base under the same tag rebuilds).

    `debian:bookworm-slim` is asked of Docker Hub (anonymous token, or `docker login`'s credentials),
    `ghcr.io/…` of GHCR, and so on; a pinned `…@sha256:…` is its own digest. When the registry does
    not answer (offline), the reference itself stands in: the key then changes only when it does.
    Refused credentials are an error, not a fallback.
    """
    try:
        ref = parse_image_ref(base_image)
    except InputError as exc:
        raise ConfigError("sunday-release.yaml", "base_image", str(exc)) from None
    if ref.digest:
        return ref.digest
    try:
        with registry_client(ref.registry) as client:
            found = client.head(ref.repository, ref.reference)
    except RegistryUnavailable:
        return base_image
    return found.digest if found else base_image


def service_content_key(spec: Service, checkout: Checkout, base_image: str, *, target: str | None,
                        platforms: list[str]) -> str:
    """The content key of an image of the service built for `target` and `platforms` (see
    `sunday_release.content_key`): its files, Dockerfile, build arguments, the base image's digest and the extra CA."""
    context = Path(checkout.path) / spec.context
    ca = Settings.from_env().ca_bundle()
    return content_key(context, context / spec.dockerfile, build_args={"BASE_IMAGE": base_image, **spec.build_args},
                       platforms=platforms, target=target,
                       extra=[_base_digest(base_image), hashlib.sha256(ca.encode()).hexdigest()])


@task(name="content-key", task_run_name="content-key[{service}]", persist_result=True)
def image_content_key(service: str, spec: Service, checkout: Checkout, base_image: str) -> str:
    """The content key of the service's runtime image."""
    key = service_content_key(spec, checkout, base_image, target=spec.target, platforms=list(spec.platforms))
    progress(f"content key {key}")
    return key


@task(name="find-published", task_run_name="lookup[{service}]", retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def find_published(service: str, registry: str, repository: str, key: str) -> PublishedImage | None:
    """The manifest list already published for this content key, or None (then it is built).

    Asked afresh every attempt, never cached: a Retry of a run whose first attempt published the image
    (and then failed later) finds it, so a Retry on another host builds nothing there.
    """
    with registry_client(registry) as client:
        found = client.head(repository, key_tag(key))
        if found is None:
            return None
        platforms = client.platforms(repository, key_tag(key))
    progress(f"unchanged: {registry}/{repository}@{found.digest} is reused, not rebuilt")
    return PublishedImage(service, registry, repository, found.digest, tuple(platforms), (key_tag(key),),
                          cached=True, key=key)


@task(name="build-image", task_run_name="build[{service} {platform}]", retries=3,
      retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=0.5, retry_condition_fn=is_transient,
      cache_policy=ON_THIS_MACHINE, cache_expiration=LOCAL_CACHE, persist_result=True)
def build_platform_image(service: str, spec: Service, checkout: Checkout, config: PipelineConfig, platform: str,
                         key: str) -> str:
    """Build the service's runtime image for one platform (QEMU for foreign ones); return its local tag.

    Labels: org.opencontainers.image.revision (the commit), .source (the repository), .created
    (the commit time, so the same commit gives the same label).
    """
    settings = Settings.from_env()
    context = Path(checkout.path) / spec.context
    tag = f"{config.registry}/{config.project}/{service}:{key_tag(key)}-{_arch(platform)}"
    args = {"BASE_IMAGE": config.base_image, **spec.build_args}
    if ca := settings.ca_bundle():
        args["EXTRA_CA_CERTS"] = ca
    # `docker build -f` follows symlinks: the resolved Dockerfile must be in the checkout
    dockerfile = validate.inside(checkout.path, f"{spec.context}/{spec.dockerfile}", f"services.{service}.dockerfile")
    argv = [settings.docker, "build", "--platform", platform, "-f", str(dockerfile), "-t", tag,
            *[a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")],
            "--label", f"org.opencontainers.image.revision={checkout.commit}",
            "--label", f"org.opencontainers.image.source={checkout.repo}",
            "--label", f"org.opencontainers.image.created={checkout.committed_at}",
            *(["--target", spec.target] if spec.target else []), str(context)]
    started = time.monotonic()
    progress(f"building {platform}")
    built = run(argv, env={"DOCKER_BUILDKIT": "1"}, timeout=3600, check=False)
    if not built.ok:
        failure = CommandFailed(argv[:4], built.returncode, tail(built.stderr or built.stdout))
        if transient_command(failure):  # the daemon went away or did not answer: retried, then named
            raise DockerUnavailable(argv[:4], built.returncode, failure.stderr_tail,
                                    os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
        raise CheckFailed(service, f"build {platform}", tail(built.stderr or built.stdout, 8))
    progress(f"built {platform} in {time.monotonic() - started:.1f}s")
    return tag


@task(name="push-image", task_run_name="push[{service} {platform}]", retries=3,
      retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=0.5, retry_condition_fn=is_transient,
      persist_result=True)
def push_platform_image(service: str, local_tag: str, platform: str) -> Descriptor:
    """Push one platform's image (retried with backoff and jitter); return its manifest descriptor."""
    settings = Settings.from_env()
    registry, _, rest = local_tag.partition("/")
    repository, _, tag = rest.rpartition(":")
    _docker_login(registry, repository)
    progress(f"pushing {platform} to {registry}")
    pushed = run([settings.docker, "push", local_tag], timeout=1800, check=False)
    if not pushed.ok:
        failure = CommandFailed(["docker", "push", local_tag], pushed.returncode,
                                tail(pushed.stderr or pushed.stdout, 3))
        if transient_command(failure):
            raise RegistryUnavailable(f"could not push {local_tag} to {registry}: "
                                      f"{failure.stderr_tail.splitlines()[-1] if failure.stderr_tail else 'no answer'}")
        raise failure
    with registry_client(registry) as client:
        found = client.head(repository, tag)
    if found is None:
        raise RegistryUnavailable(f"{local_tag} was pushed but the registry does not list it")
    progress(f"pushed {platform}: {found.digest[:19]}")
    return Descriptor(found.media_type, found.digest, found.size, platform)


@task(name="publish-manifest", task_run_name="publish[{service}]", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=0.5, retry_condition_fn=is_transient, persist_result=True)
def publish_manifest(service: str, registry: str, repository: str, key: str, platforms: list[Descriptor],
                     tags: list[str], cached: PublishedImage | None = None) -> PublishedImage:
    """Point the content-key tag and the immutable release tags (commit, version) at one manifest list.

    For an unchanged service (`cached`), the existing manifest list is tagged again: no build.
    The content-key tag goes to the first writer: a run that finds it written meanwhile (two CI runs
    of the same content at once) adopts that manifest list instead. Any other tag that already
    points at other content is refused (TagExists), never overwritten.
    """
    with registry_client(registry) as client:
        if cached is not None:
            body, media_type = client.get(repository, cached.digest)
            platforms = list(cached.platforms)
        else:
            body, media_type = manifest_list(platforms)
        digest = client.claim_tag(repository, key_tag(key), body, media_type)
        adopted = digest != digest_of(body)
        if adopted:  # another run published this content key first: its image is this content, use it
            body, media_type = client.get(repository, digest)
            platforms = client.platforms(repository, digest)
            progress(f"{registry}/{repository}:{key_tag(key)} was published by another run meanwhile: "
                     f"using its {digest[:19]}")
        for tag in tags:
            client.put_tag(repository, tag, body, media_type)
    progress(f"published {registry}/{repository}@{digest[:19]} as {', '.join([key_tag(key), *tags])}")
    return PublishedImage(service, registry, repository, digest, tuple(platforms), (key_tag(key), *tags),
                          cached=cached is not None or adopted, key=key)


@task(name="tag-release", task_run_name="tag[{service}]", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=0.5, retry_condition_fn=is_transient, persist_result=True)
def tag_release(service: str, image: PublishedImage, tags: list[str]) -> PublishedImage:
    """Give an image that passed every gate its immutable release tags (`sha-COMMIT`, the version).

    CD deploys only what carries these tags: a version CI did not pass has none.
    """
    with registry_client(image.registry) as client:
        body, media_type = client.get(image.repository, image.digest)
        for tag in tags:
            client.put_tag(image.repository, tag, body, media_type)
    progress(f"tagged {image.registry}/{image.repository}@{image.digest[:19]} as {', '.join(tags)}")
    return PublishedImage(image.service, image.registry, image.repository, image.digest, image.platforms,
                          (*image.tags, *tags), image.cached, image.key)
