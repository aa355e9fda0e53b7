"""The checks stage: build each service's test image, run its test, lint and type check in it."""

from __future__ import annotations

import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.runtime import flow_run

from sunday_release import validate
from sunday_release.ci_report import StepResult
from sunday_release.config import Service
from sunday_release.errors import CheckFailed, CommandFailed
from sunday_release.junit import parse_junit_files
from sunday_release.runner import run, tail
from sunday_release.settings import Settings
from tasks._common import LOCAL_CACHE, ON_THIS_MACHINE, RETRY_DELAYS, is_transient, progress, transient_command
from tasks.images import service_content_key
from tasks.source import Checkout

__all__ = ["CHECK_REUSE", "REUSE_FOR", "CheckImage", "build_check_image", "check_content_key", "check_in_image",
           "run_check"]


def check_image_tag(project: str, service: str, stage: str, commit: str) -> str:
    """The local tag of a service's check image for one commit."""
    return f"sunday-ci/{project}-{service}:{stage}-{commit[:12]}"


@task(name="build-check-image", task_run_name="build[{service}]", retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=0.5, retry_condition_fn=is_transient, cache_policy=ON_THIS_MACHINE,
      cache_expiration=LOCAL_CACHE, persist_result=True)
def build_check_image(project: str, service: str, spec: Service, checkout: Checkout, base_image: str) -> str:
    """Build the `checks.stage` target of the service's Dockerfile; return the image id.

    Args:
        project: the config's project name (part of the tag).
        service: the service's name.
        spec: the service's config.
        checkout: the checked-out repository.
        base_image: passed as the BASE_IMAGE build argument.
    """
    settings = Settings.from_env()
    context = Path(checkout.path) / spec.context
    # `docker build -f` follows symlinks: the resolved Dockerfile must be in the checkout
    dockerfile = validate.inside(checkout.path, f"{spec.context}/{spec.dockerfile}", f"services.{service}.dockerfile")
    tag = check_image_tag(project, service, spec.checks.stage, checkout.commit)
    args = {"BASE_IMAGE": base_image, **spec.build_args}
    if ca := settings.ca_bundle():  # as for the runtime image: a check stage may download over https too
        args["EXTRA_CA_CERTS"] = ca
    build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
    with tempfile.TemporaryDirectory(prefix="sunday-iid-") as tmp:
        iidfile = Path(tmp) / "iid"  # docker build writes the image id there
        argv = [settings.docker, "build", "--target", spec.checks.stage, *build_args, "--iidfile", str(iidfile),
                "--label", f"sunday.project={project}", "-f", str(dockerfile), "-t", tag, str(context)]
        started = time.monotonic()
        progress(f"building {spec.checks.stage} stage of {service}")
        built = run(argv, env={"DOCKER_BUILDKIT": "1"}, timeout=1800, check=False)
        image_id = iidfile.read_text().strip() if built.ok else ""
    if not built.ok:
        failure = CommandFailed(argv, built.returncode, tail(built.stderr or built.stdout))
        if transient_command(failure):
            raise failure
        result = StepResult(service, "build", "failed", time.monotonic() - started, detail=failure.stderr_tail)
        raise CheckFailed(service, "build", tail(built.stderr, 3), result)
    progress(f"built {tag} in {time.monotonic() - started:.1f}s")
    return image_id


@dataclass(frozen=True)
class CheckImage:
    """What builds a service's check image: built by the first of its checks that must run, on that worker."""

    project: str
    service: str
    spec: Service
    checkout: Checkout
    base_image: str


@task(name="check-key", task_run_name="check-key[{service}]", persist_result=True)
def check_content_key(service: str, spec: Service, checkout: Checkout, base_image: str) -> str:
    """The content key of the service's check image: its files, Dockerfile, build arguments and check stage, the
    base image's digest, the extra CA, and this machine's architecture (the checks run natively)."""
    key = service_content_key(spec, checkout, base_image, target=spec.checks.stage,
                              platforms=[f"native/{platform.machine()}"])
    progress(f"check content key {key}")
    return key


# The build of a check image, once per attempt of a flow run and content key in this process: the service's checks
# run side by side and the first that needs the image builds it while the others wait, then take its id (or its
# failure: a failed build is not tried again in the same attempt). Not the task's cache: a task called in a task
# commits its result with its caller's transaction, so the other checks would not see it yet.
_BUILDS_LOCK = threading.Lock()
_BUILDS: dict[tuple[str, str], tuple[threading.Lock, list[str | CheckFailed]]] = {}


def _check_image(image: CheckImage, key: str) -> str:
    with _BUILDS_LOCK:
        lock, outcome = _BUILDS.setdefault((f"{flow_run.get_id()}#{flow_run.run_count}", key), (threading.Lock(), []))
    with lock:
        if not outcome:
            try:
                outcome.append(build_check_image(image.project, image.service, image.spec, image.checkout,
                                                 image.base_image))
            except CheckFailed as exc:
                outcome.append(exc)
        if isinstance(outcome[0], CheckFailed):
            raise outcome[0]
        return outcome[0]


# What a check's outcome depends on: the content key of the check image (its files, Dockerfile, base image and
# stage: see `check_content_key`), the command, its time limit, and this task's code. Not the flow run, the
# machine, the image's local id, nor where its reports go: CI of a commit that left a service unchanged reuses
# that service's passes (a Cached task run) instead of building its check image and running them again, on any
# worker that shares the result storage; a failure is never reused. `checks.reuse: false` runs every step.
CHECK_REUSE = (INPUTS - "reports_dir" - "image") + TASK_SOURCE
REUSE_FOR = timedelta(days=7)


@task(name="check", task_run_name="{step}[{service}]", persist_result=True, cache_policy=CHECK_REUSE,
      cache_expiration=REUSE_FOR)
def run_check(service: str, step: str, argv: list[str], key: str, image: CheckImage, reports_dir: str,
              timeout: int = 900) -> StepResult:
    """Run one check command in a container of the service's check image; JUnit files land in `reports_dir`.

    The check image is built first (`build[service]`, a task run of its own) unless this flow run built it
    already. The container has no network and sees `reports_dir` at /reports. A non-zero exit fails the task
    (CheckFailed, not retried: a failing test is not flaky I/O); so does a check image that does not build
    (CheckFailed of step "build").

    Args:
        service: the service's name.
        step: "test", "lint" or "typecheck".
        argv: the command, run in the image's working directory.
        key: the check image's content key (`check_content_key`).
        image: how to build the check image.
        reports_dir: a host directory for the step's reports (emptied first).
        timeout: seconds before the container is killed.
    """
    return check_in_image(service, step, argv, _check_image(image, key), reports_dir, timeout)


def check_in_image(service: str, step: str, argv: list[str], image_id: str, reports_dir: str,
                   timeout: int) -> StepResult:
    """The body of `run_check`, in a check image that exists on this machine."""
    settings = Settings.from_env()
    reports = Path(reports_dir)
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    reports.chmod(0o777)
    name = f"sunday-check-{reports.parent.parent.name[:8]}-{service}-{step}"
    container = [settings.docker, "run", "--rm", "--name", name, "--network", "none",
                 "-v", f"{reports}:/reports", "-e", "REPORTS_DIR=/reports", image_id, *argv]
    started = time.monotonic()
    progress(f"{step} started")
    try:
        done = run(container, timeout=timeout, check=False)
        if done.returncode == 125 and "is already in use" in done.stderr:  # left by an attempt that was killed
            run([settings.docker, "rm", "-f", name], check=False)
            started = time.monotonic()
            done = run(container, timeout=timeout, check=False)
    except CommandFailed:
        run([settings.docker, "rm", "-f", name], check=False)
        raise CheckFailed(service, step, f"timed out after {timeout}s") from None
    seconds = time.monotonic() - started
    tests = parse_junit_files(reports.glob("**/*.xml")) if step == "test" else None
    output = tail(done.stdout + "\n" + done.stderr, 40)
    if done.ok and not (tests and tests.failed):
        counts = f" ({tests.passed} passed, {tests.skipped} skipped)" if tests else ""
        progress(f"{step} passed in {seconds:.1f}s{counts}")
        return StepResult(service, step, "passed", seconds, tests, run=str(flow_run.get_id() or ""))
    result = StepResult(service, step, "failed", seconds, tests, output)
    detail = (f"{tests.failed} failing test(s): " + ", ".join(c.name for c in tests.failures[:5])
              if tests and tests.failures else f"exit code {done.returncode}\n{tail(output, 15)}")
    progress(f"{step} FAILED in {seconds:.1f}s: {detail.splitlines()[0]}")
    raise CheckFailed(service, step, detail, result)
