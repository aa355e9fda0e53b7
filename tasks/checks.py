"""The checks stage: build each service's test image, run its test, lint and type check in it."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from sunday_release import validate
from sunday_release.ci_report import StepResult
from sunday_release.config import Service
from sunday_release.errors import CheckFailed, CommandFailed
from sunday_release.junit import parse_junit_files
from sunday_release.runner import run, tail
from sunday_release.settings import Settings
from tasks._common import LOCAL_CACHE, ON_THIS_MACHINE, RETRY_DELAYS, is_transient, progress, transient_command
from tasks.source import Checkout

__all__ = ["CHECK_REUSE", "REUSE_FOR", "build_check_image", "run_check"]


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


# What a check's outcome depends on: the check image (its id is a digest of the service's content and its base
# image), the command, its time limit, and this task's code. Not the flow run, nor where its reports go: CI of a
# commit that left a service unchanged reuses that service's passes (a Cached task run) instead of running them
# again; a failure is never reused. `checks.reuse: false` runs every step every time.
CHECK_REUSE = (INPUTS - "reports_dir") + TASK_SOURCE
REUSE_FOR = timedelta(days=7)


@task(name="check", task_run_name="{step}[{service}]", persist_result=True, cache_policy=CHECK_REUSE,
      cache_expiration=REUSE_FOR)
def run_check(service: str, step: str, argv: list[str], image: str, reports_dir: str,
              timeout: int = 900) -> StepResult:
    """Run one check command in a container of the check image; JUnit files land in `reports_dir`.

    The container has no network and sees `reports_dir` at /reports. A non-zero exit fails the
    task (CheckFailed, not retried: a failing test is not flaky I/O).

    Args:
        service: the service's name.
        step: "test", "lint" or "typecheck".
        argv: the command, run in the image's working directory.
        image: the check image id.
        reports_dir: a host directory for the step's reports (emptied first).
        timeout: seconds before the container is killed.
    """
    settings = Settings.from_env()
    reports = Path(reports_dir)
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    reports.chmod(0o777)
    name = f"sunday-check-{reports.parent.parent.name[:8]}-{service}-{step}"
    container = [settings.docker, "run", "--rm", "--name", name, "--network", "none",
                 "-v", f"{reports}:/reports", "-e", "REPORTS_DIR=/reports", image, *argv]
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
        return StepResult(service, step, "passed", seconds, tests)
    result = StepResult(service, step, "failed", seconds, tests, output)
    detail = (f"{tests.failed} failing test(s): " + ", ".join(c.name for c in tests.failures[:5])
              if tests and tests.failures else f"exit code {done.returncode}\n{tail(output, 15)}")
    progress(f"{step} FAILED in {seconds:.1f}s: {detail.splitlines()[0]}")
    raise CheckFailed(service, step, detail, result)
