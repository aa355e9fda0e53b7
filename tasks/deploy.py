"""The deploy stage on a target: resolve a version, start the idle color, smoke, switch, watch, roll back."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from sunday_release.analysis import AnalysisRun, Measurement, baseline_p95, measure, thresholds
from sunday_release.bluegreen import (
    Color,
    Release,
    SmokeResult,
    WatchVerdict,
    evaluate_smoke,
    other,
    render_rollout,
    watch_should_stop,
    watch_verdict,
)
from sunday_release.config import Analysis, PipelineConfig, SmokeCheck
from sunday_release.errors import InputError, RolloutAborted
from sunday_release.ordering import tag_is_older
from sunday_release.prometheus import Prometheus, PrometheusUnavailable, prometheus_url
from sunday_release.refs import is_sha
from sunday_release.runner import run
from sunday_release.targets.protocol import DeployTarget
from sunday_release.tls import tls_context
from tasks._common import RETRY_DELAYS, progress
from tasks.images import registry_client
from tasks.source import Checkout

__all__ = ["Analyzer", "claim_ports", "observe_colors", "prepare_database", "publish_rollout", "refuse_older_version",
           "resolve_version", "restart_color", "run_migrations", "scale_service", "smoke_test", "start_analysis",
           "start_color", "stop_color", "switch_traffic", "watch_live"]


@task(name="claim-ports", cache_policy=NO_CACHE)
def claim_ports(target: DeployTarget) -> dict[str, int]:
    """Hold the environment's host ports, or refuse (InputError naming the owner) before anything is stopped.

    A target without host ports (`ports()` None: kubernetes) has nothing to claim.
    """
    ports = target.ports()
    if ports is None:
        return {}
    ports.claim_ports()
    return dict(ports.host_ports())


@task(name="observe-colors", cache_policy=NO_CACHE)
def observe_colors(target: DeployTarget) -> tuple[Color | None, list[str], list[str]]:
    """The router's color and the health of each replica of it and of the other color (for reconcile)."""
    live = target.live_color()
    if live is None:
        return None, [], []
    return (live, [r.health for r in target.replicas(live)],
            [r.health for r in target.replicas(other(live))])


@task(name="restart-color", task_run_name="restart[{color}]", cache_policy=NO_CACHE)
def restart_color(target: DeployTarget, color: Color, timeout: float) -> list[str]:
    """Start the kept containers of `color` again and wait until they are healthy."""
    target.restart_color(color)
    replicas = target.wait_healthy(color, timeout)
    progress(f"{color}: {len(replicas)} kept replica(s) healthy again")
    return [r.name for r in replicas]


@task(name="stop-color", task_run_name="stop[{color}]", cache_policy=NO_CACHE)
def stop_color(target: DeployTarget, color: Color) -> None:
    """Stop (and keep) the containers of `color`."""
    target.stop_color(color)
    progress(f"{color}: stopped (kept for a rollback)")


@task(name="scale-service", task_run_name="scale[{service}={replicas}]", cache_policy=NO_CACHE)
def scale_service(target: DeployTarget, color: Color, service: str, image: str, version: str, replicas: int,
                  timeout: float) -> list[str]:
    """Run `replicas` containers of `service` in `color` and wait until every replica of it is healthy."""
    target.scale_service(color, service, image, version, replicas)
    return [r.name for r in target.wait_healthy(color, timeout)]


@task(name="prepare-database", cache_policy=NO_CACHE)
def prepare_database(target: DeployTarget) -> None:
    """Start (creating once) the environment's database, where the target owns one."""
    target.ensure_database()


@task(name="publish-rollout", cache_policy=NO_CACHE)
def publish_rollout(key: str, where: str, release: Release, evidence: list[str]) -> str:
    """The rollout decision and its evidence as the markdown artifact `key` (stable per environment)."""
    create_markdown_artifact(key=key, markdown=render_rollout(where, release, evidence),
                             description=f"Rollout decision for {where}")
    return key


@task(name="resolve-version", task_run_name="resolve[{version}]", retries=2, retry_delay_seconds=RETRY_DELAYS,
      persist_result=True)
def resolve_version(config: PipelineConfig, version: str, tag: str | None = None) -> dict[str, str]:
    """The image (`registry/name@sha256:…`) of every service for `version`: a commit SHA or a release tag.

    Only images that passed CI carry the `sha-COMMIT` / version tags, so a version CI did not
    pass is refused (InputError). `tag` names the tag to look up instead (a preview: `pr-N-COMMIT`).
    """
    if tag is None and is_sha(version) and len(version) == 40:
        tag = f"sha-{version}"
    elif tag is None and re.match(config.release_tags, version):
        tag = version
    elif tag is None:
        raise InputError(f"--version: {version!r} is neither a full commit SHA nor a release tag "
                         f"(release_tags: {config.release_tags})")
    images: dict[str, str] = {}
    with registry_client(config.registry) as client:
        for service in config.services:
            repository = f"{config.project}/{service}"
            found = client.head(repository, tag)
            if found is None:
                raise InputError(f"--version: {version} has no image of {service} that passed CI "
                                 f"({config.registry}/{repository}:{tag} does not exist)")
            images[service] = f"{config.registry}/{repository}@{found.digest}"
    progress(f"{version}: " + ", ".join(f"{s} {ref.split('@')[1][:19]}" for s, ref in images.items()))
    return images


def _is_ancestor(checkout: Checkout, older: str) -> bool | None:
    """Is `older` an ancestor of the checked-out commit? None when `older` cannot be fetched (history rewritten)."""
    path = checkout.path
    shallow = run(["git", "-C", path, "rev-parse", "--is-shallow-repository"]).stdout.strip() == "true"
    fetched = run(["git", "-C", path, "fetch", "-q", "--no-tags", *(["--unshallow"] if shallow else []),
                   "--end-of-options", checkout.repo, older], timeout=600, check=False)
    if not fetched.ok:
        return None
    return run(["git", "-C", path, "merge-base", "--is-ancestor", "--end-of-options", checkout.commit, older],
               check=False).ok


@task(name="check-not-older", task_run_name="check-not-older[{version}]", cache_policy=NO_CACHE)
def refuse_older_version(checkout: Checkout, version: str, live: Release | None, release_tags: str,
                         allow_older: bool = False) -> str:
    """InputError when `version` is older than the live release (a replayed or late event); else the evidence.

    Older means: both are release tags and `version`'s numbers sort lower (production), or the
    commit is an ancestor of the live commit (staging). Only a person asks for an older one, with
    `allow_older` (`cd --allow-older`) or the rollback flow.
    """
    if live is None:
        return "nothing live before: no version order to keep"
    if checkout.commit == live.commit:
        return f"{version} is the live commit (a redeploy)"
    older = tag_is_older(version, live.version, release_tags)
    if not older and live.commit:
        ancestor = _is_ancestor(checkout, live.commit)
        if ancestor is None:
            progress(f"the live commit {live.commit[:12]} is not in {checkout.repo} any more: order not checked")
        older = bool(ancestor)
    if older and not allow_older:
        raise InputError(f"--version: {version} ({checkout.commit[:12]}) is older than the live revision "
                         f"{live.revision} ({live.version}, {live.commit[:12]}); refusing to go back. To do it on "
                         "purpose: `sunday-release rollback`, or `cd --allow-older`")
    return (f"{version} is older than the live {live.version}: deployed on request (--allow-older)" if older
            else f"{version} is newer than the live {live.version}")


@task(name="migrate", task_run_name="migrate[{service}]", cache_policy=NO_CACHE)
def run_migrations(target: DeployTarget, service: str, image: str, argv: list[str], version: str) -> str:
    """Run the service's schema migration command in a one-off container of the new image."""
    out = target.run_once(image, argv, service, version)
    progress(f"migrations done: {out.strip().splitlines()[-1] if out.strip() else 'nothing to do'}")
    return out


@task(name="start-color", task_run_name="start[{color}]", cache_policy=NO_CACHE)
def start_color(target: DeployTarget, color: Color, images: dict[str, str], version: str,
                timeout: float) -> list[str]:
    """Start `color` with the new images and wait until every replica is healthy."""
    started = time.monotonic()
    target.start_color(color, images, version, target.load_state())
    replicas = target.wait_healthy(color, timeout)
    progress(f"{color}: {len(replicas)} replica(s) healthy in {time.monotonic() - started:.1f}s")
    return [r.name for r in replicas]


def _probe(client: httpx.Client, check: SmokeCheck, endpoint: str) -> SmokeResult:
    """One smoke request; an idempotent GET is retried once on a connection reset."""
    for attempt in (1, 2):
        started = time.monotonic()
        try:
            response = client.get(f"http://{endpoint}{check.path}")
            elapsed = (time.monotonic() - started) * 1000
            return evaluate_smoke(check, endpoint, response.status_code, response.content, elapsed)
        except httpx.TransportError as exc:
            if attempt == 2:
                return evaluate_smoke(check, endpoint, None, b"", (time.monotonic() - started) * 1000, str(exc))
    raise AssertionError("unreachable")


def route_of(routes: dict[str, str], path: str) -> str | None:
    """The service the router sends `path` to (longest matching prefix)."""
    matches = [prefix for prefix in routes if path.startswith(prefix)]
    return routes[max(matches, key=len)] if matches else None


def run_smoke(target: DeployTarget, color: Color, checks: list[SmokeCheck], via_router: bool) -> list[SmokeResult]:
    """Every smoke check against every replica of `color` (or once through the router)."""
    results = []
    routes = {spec.route: name for name, spec in target.config.services.items() if spec.route}
    with httpx.Client(timeout=10, verify=tls_context()) as client:
        for check in checks:
            if via_router:
                if route_of(routes, check.path) == check.service:  # only what the router sends there
                    results.append(_probe(client, check, target.url.removeprefix("http://")))
                continue
            for replica in target.replicas(color):
                if replica.service == check.service:
                    results.append(_probe(client, check, replica.endpoint))
    return results


@task(name="smoke-test", task_run_name="smoke[{color}]", cache_policy=NO_CACHE)
def smoke_test(target: DeployTarget, color: Color, checks: list[SmokeCheck]) -> list[SmokeResult]:
    """Run the smoke suite against the idle color directly; RolloutAborted on any failure."""
    results = run_smoke(target, color, checks, via_router=False)
    failed = [r for r in results if not r.passed]
    progress(f"smoke {color}: {len(results) - len(failed)}/{len(results)} passed")
    if failed:
        f = failed[0]
        raise RolloutAborted(f"smoke check failed on {color}: {f.service} {f.path} at {f.endpoint}: {f.reason}")
    return results


@task(name="switch-traffic", task_run_name="switch[{color}]", cache_policy=NO_CACHE)
def switch_traffic(target: DeployTarget, color: Color) -> float:
    """Point the environment's router at `color` (validated config, graceful reload); return seconds taken."""
    started = time.monotonic()
    target.switch(color)
    took = time.monotonic() - started
    progress(f"traffic switched to {color} in {took * 1000:.0f} ms")
    return took


@dataclass
class Analyzer:
    """The rollout analysis of one release (sunday_release.analysis): where it asks, what it judges against, and
    its measurements so far. Made by `start_analysis`; None when the router's sampled requests decide alone."""

    prometheus: Prometheus
    analysis: Analysis
    project: str
    env: str
    baseline: float | None
    run: AnalysisRun
    color_started: float | None = None  # time.monotonic() when the new color's replicas were started
    started: float = field(default_factory=time.monotonic)

    def measure(self, color: Color, phase: str) -> Measurement | None:
        """One measurement of `color`, added to the run; None (and a note) when Prometheus does not answer."""
        age = time.monotonic() - self.color_started if self.color_started is not None else None
        try:
            found = measure(self.prometheus, self.analysis, self.project, self.env, color, phase,
                            time.monotonic() - self.started, self.baseline, age)
        except PrometheusUnavailable as exc:
            progress(f"analysis {color}: no measurement: {exc}")
            return None
        self.run.add(found)
        progress(f"analysis {color}: {found.line()}")
        return found

    def evidence(self) -> list[str]:
        return [f"analysis {m.line()}" for m in self.run.measurements] + [f"analysis: {self.run.summary()}"]


def start_analysis(config: PipelineConfig, env: str, live: Color | None,
                   color_started: float | None = None) -> tuple[Analyzer | None, str]:
    """The analysis of a release to `env`, and the evidence line that says how the release is judged: from
    Prometheus (with the live color's p95 as the baseline), or from the router's sampled requests alone."""
    analysis = config.environments[env].analysis
    if not analysis.enabled:
        return None, "analysis: disabled (analysis.enabled false): the router's sampled requests decide"
    if not any(spec.metrics_path for spec in config.services.values()):
        return None, "analysis: no service serves metrics (metrics_path): the router's sampled requests decide"
    url = prometheus_url()
    if url is None:
        return None, "analysis: no Prometheus (SUNDAY_PROMETHEUS_URL): the router's sampled requests decide"
    prometheus = Prometheus(url)
    if not prometheus.ready():
        return None, f"analysis: Prometheus at {url} does not answer: the router's sampled requests decide"
    baseline = baseline_p95(prometheus, analysis, config.project, env, live) if live else None
    limits = thresholds(analysis, baseline)
    return (Analyzer(prometheus, analysis, config.project, env, baseline, AnalysisRun(analysis.failure_limit),
                     color_started),
            f"analysis: Prometheus {url}, window {analysis.window}, every {analysis.interval:g}s, failure_limit "
            f"{analysis.failure_limit}, min_requests {analysis.min_requests}; limits "
            + ", ".join(f"{name} {value:.4g}" for name, value in limits.items())
            + (f" (p95 baseline of {live}: {baseline:.4g}s)" if baseline is not None else ""))


@task(name="watch", task_run_name="watch[{color}]", cache_policy=NO_CACHE)
def watch_live(target: DeployTarget, color: Color, checks: list[SmokeCheck], seconds: float,
               max_error_rate: float, analyzer: Analyzer | None = None) -> WatchVerdict:
    """Watch the live color for `seconds`: smoke through the router, the router's 5xx rate, and the analysis.

    The verdict is taken again every second over what the router logged so far, so a release that
    fails real traffic is rolled back as soon as that shows (`watch_should_stop`), within the window.
    With an `analyzer` the color is measured from Prometheus every `analysis.interval` seconds instead of the
    router's sampled requests, and `failure_limit` failed measurements in a row fail the watch; its
    measurements go with the failure (RolloutAborted.evidence) into the rollout artifact.
    """
    log = target.traffic_log()
    offset = log.access_log_size() if log is not None else 0
    started = time.monotonic()
    deadline = started + seconds
    next_measurement = started
    while True:
        smoke = run_smoke(target, color, checks, via_router=True)
        # the router's sampled requests judge the error rate only without an analysis (and a log): the smoke checks
        # through the router run either way
        statuses = log.statuses_since(offset, color) if log is not None and analyzer is None else []
        verdict = watch_verdict(statuses, smoke, max_error_rate)
        if analyzer is not None and time.monotonic() >= next_measurement:
            analyzer.measure(color, "watch")
            next_measurement += analyzer.analysis.interval
            if analyzer.run.failed and verdict.passed:
                verdict = WatchVerdict(False, verdict.requests, verdict.errors, analyzer.run.reason())
                break
        if watch_should_stop(verdict, smoke) or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic()),
                       max(0.05, next_measurement - time.monotonic()) if analyzer is not None else 1.0))
    watched = time.monotonic() - started
    progress(f"watch {color}: {verdict.requests} request(s), {verdict.errors} error(s) in {watched:.1f}s: "
             f"{'healthy' if verdict.passed else verdict.reason}")
    if not verdict.passed:
        raise RolloutAborted(f"watch window failed on {color} after {watched:.1f}s of {seconds:g}s: "
                             f"{verdict.reason}", evidence=analyzer.evidence() if analyzer is not None else ())
    return verdict


def describe(value: Any) -> str:
    """One line for a failure reason."""
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__
