"""Trivy scans: the repository's misconfigurations and secrets (offline, embedded checks), its lockfiles'
vulnerabilities (the dependency audit) and the images' (both against the offline DB)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.filesystems import NullFileSystem
from prefect.results import ResultStore, get_result_store

from sunday_release.config import ScanPolicy
from sunday_release.errors import GateFailed, PipelineError
from sunday_release.findings import (
    DependencyAudit,
    ImageScan,
    ScanReport,
    check_db_fresh,
    lockfiles_in,
    parse_trivy_json,
    service_of,
)
from sunday_release.runner import run
from sunday_release.scan_cache import audit_cache_key, repo_scan_cache_key, scan_cache_key
from sunday_release.settings import Settings
from tasks._common import progress
from tasks.source import Checkout

__all__ = ["DependencyAudit", "ImageScan", "audit_dependencies", "kept_report", "keep_report", "scan_image",
           "scan_repository"]


def _report_key(key: str) -> str:
    return f"sunday-trivy-report-{key}"


def _report_store() -> ResultStore:
    """This run's result store (a task's: the workers' shared storage), with its records' metadata beside them."""
    store = get_result_store()
    if isinstance(store.metadata_storage, NullFileSystem):  # as Prefect's transactions do: a flow's store has none
        store = store.model_copy(update={"metadata_storage": None})
    return store


def kept_report(key: str | None) -> dict[str, str] | None:
    """Trivy's report kept under `key` (`sunday_release.scan_cache`) in this run's result storage, or None.

    The result storage is the workers' shared one (S3 on the platform): a report made on any worker is
    found on every other. A record that is not a report (torn, foreign) is a miss: the scan runs again.
    """
    if not key:
        return None
    store = _report_store()
    if not store.exists(_report_key(key)):
        return None
    value = store.read(_report_key(key)).result
    if not (isinstance(value, dict) and isinstance(value.get("json"), str)):
        return None
    try:
        json.loads(value["json"])
    except ValueError:
        return None
    return value


def keep_report(key: str | None, report_json: str, sarif: str | None) -> None:
    """Keep Trivy's report (and the SARIF made from it) under `key` in this run's result storage, at once.

    Written by the store itself, not in a transaction: one opened in a task run is committed with the task's
    own, which would write the look-up's empty value over the report; and a report whose gate then fails is
    still the report of that digest and DB.
    """
    if key:
        _report_store().write(key=_report_key(key), obj={"json": report_json,
                                                         **({"sarif": sarif} if sarif is not None else {})})


def repo_scan_argv(trivy: str, cache_dir: str, path: str, policy: ScanPolicy) -> list[str]:
    """`trivy fs` for misconfigurations and secrets with the embedded checks, no network."""
    skips = [a for d in policy.skip_dirs for a in ("--skip-dirs", d)]
    return [trivy, "fs", "--scanners", "misconfig,secret", "--skip-check-update", "--cache-dir", cache_dir,
            "--cache-backend", "memory",
            "--format", "json", "--quiet", "--exit-code", "0", *skips, path]


@task(name="scan-repository", task_run_name="scan-repository", persist_result=True)
def scan_repository(checkout: Checkout, policy: ScanPolicy) -> ScanReport:
    """Scan the checkout for misconfigurations and secrets; GateFailed when the policy says no.

    Trivy's report of a tree scanned before (on any worker) with the same binary, checks and flags is
    reused (`kept_report`); the policy is applied to it afresh.

    Args:
        checkout: the checked-out repository.
        policy: the config's scan policy (severities that block, allow-list).
    """
    settings = Settings.from_env()
    settings.trivy_cache.mkdir(parents=True, exist_ok=True)
    tree = run(["git", "-C", checkout.path, "rev-parse", "--verify", "--end-of-options", "HEAD^{tree}"],
               timeout=60).stdout.strip()
    key = repo_scan_cache_key(tree, settings.trivy, settings.trivy_cache, repo_scan_argv("trivy", "", "", policy))
    cached = kept_report(key)
    if cached is not None:
        report_json = cached["json"]
    else:
        progress("trivy fs (misconfig, secret) started")
        report_json = run(repo_scan_argv(settings.trivy, str(settings.trivy_cache), checkout.path, policy),
                          timeout=900).stdout
    report = parse_trivy_json(report_json, policy)  # the gate is applied afresh, cached report or not
    if cached is None:
        keep_report(key, report_json, None)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in report.counts.items() if n) or "no findings"
    reused = f" (report of tree {tree[:12]} reused: same files, same checks)" if cached is not None else ""
    progress(f"repository scan: {counts}; {'passed' if report.passed else 'FAILED'}{reused}")
    if not report.passed:
        raise GateFailed(f"repository scan: {len(report.blocking)} blocking finding(s)", report)
    return report


def audit_argv(trivy: str, cache_dir: str, path: str, policy: ScanPolicy) -> list[str]:
    """`trivy fs` of the lockfiles under `path` for known vulnerabilities, against the offline DB."""
    skips = [a for d in policy.skip_dirs for a in ("--skip-dirs", d)]
    return [trivy, "fs", "--scanners", "vuln", "--pkg-types", "library", "--skip-db-update", "--skip-java-db-update",
            "--offline-scan", "--cache-dir", cache_dir, "--cache-backend", "memory", "--format", "json", "--quiet",
            "--exit-code", "0", *(["--ignore-unfixed"] if policy.ignore_unfixed else []), *skips, path]


def _offline_db(settings: Settings, what: str, policy: ScanPolicy) -> datetime:
    """The offline DB's update time; PipelineError without a DB, GateFailed when it is older than the policy allows."""
    db = settings.trivy_cache / "db" / "trivy.db"
    if not db.is_file():
        raise PipelineError(f"no Trivy vulnerability DB at {db}: {what} cannot run. Put one there "
                            "(`trivy image --download-db-only --cache-dir DIR` where the network allows) and "
                            "point SUNDAY_TRIVY_CACHE at DIR")
    return check_db_fresh(settings.trivy_cache, policy.db_max_age_days, datetime.now(UTC))


def _judged_with_sarif(key: str | None, sarif: Path, policy: ScanPolicy,
                       scan: Callable[[], str]) -> tuple[ScanReport, str, bool]:
    """The policy's verdict on Trivy's report under `key` (`kept_report`), with its SARIF written to `sarif`; without
    one kept, `scan()`'s report, converted to SARIF (`trivy convert`) and kept. Returns (report, Trivy's JSON,
    reused). The gate is applied afresh either way, so an allow-list entry that expired since still blocks."""
    cached = kept_report(key)
    if cached is not None and "sarif" in cached:  # a report without its SARIF (a repository scan's): scan
        sarif.write_text(cached["sarif"])
        return parse_trivy_json(cached["json"], policy), cached["json"], True
    report_json = scan()
    raw = sarif.with_suffix(".json")
    raw.write_text(report_json)
    run([Settings.from_env().trivy, "convert", "--format", "sarif", "--output", str(sarif), str(raw)], timeout=300)
    raw.unlink()
    report = parse_trivy_json(report_json, policy)
    keep_report(key, report_json, sarif.read_text())
    return report, report_json, False


@task(name="audit-dependencies", task_run_name="audit-dependencies", persist_result=True)
def audit_dependencies(checkout: Checkout, contexts: dict[str, str], policy: ScanPolicy,
                       sarif_dir: str) -> DependencyAudit:
    """Audit the repository's lockfiles (`package-lock.json`, `requirements.txt`, `go.mod`, …) for known
    vulnerabilities with the image scan's gate, allow-list and offline DB; each finding names its lockfile and the
    service whose build context holds it (`contexts`: service → context). GateFailed when the policy blocks one.

    A repository without lockfiles has nothing to audit (and needs no DB). Trivy's report of a tree audited before
    (on any worker) with the same binary, DB and flags is reused; the gate is applied afresh.
    """
    settings = Settings.from_env()
    tracked = run(["git", "-C", checkout.path, "ls-files", "-z"], timeout=60).stdout.split("\0")
    skipped = tuple(d.strip("/") + "/" for d in policy.skip_dirs)
    found = [path for path in lockfiles_in(tracked) if not path.startswith(skipped)]
    if not found:
        progress("dependency audit: no lockfiles in the repository; nothing to audit")
        return DependencyAudit(ScanReport(()), {})
    try:
        updated = _offline_db(settings, "the dependency audit", policy)
    except GateFailed as exc:
        raise GateFailed(f"dependency audit: {exc}") from None
    tree = run(["git", "-C", checkout.path, "rev-parse", "--verify", "--end-of-options", "HEAD^{tree}"],
               timeout=60).stdout.strip()
    key = audit_cache_key(tree, settings.trivy, settings.trivy_cache, audit_argv("trivy", "", "", policy))
    Path(sarif_dir).mkdir(parents=True, exist_ok=True)
    sarif = Path(sarif_dir) / "dependencies.sarif"

    def run_trivy() -> str:
        progress("trivy fs (vuln: lockfiles) started")
        return run(audit_argv(settings.trivy, str(settings.trivy_cache), checkout.path, policy), timeout=900).stdout

    report, report_json, reused = _judged_with_sarif(key, sarif, policy, run_trivy)
    # the lockfiles found and those Trivy reported (one without packages has no result of its own)
    targets = [str(r.get("Target")) for r in json.loads(report_json).get("Results") or [] if r.get("Target")]
    audit = DependencyAudit(report, {t: service_of(t, contexts) for t in sorted({*found, *targets})}, str(sarif))
    counts = ", ".join(f"{n} {s.lower()}" for s, n in report.counts.items() if n) or "no vulnerabilities"
    again = " (report reused: same lockfiles, same DB)" if reused else ""
    progress(f"dependency audit of {len(audit.lockfiles)} lockfile(s): {counts} (DB of {updated:%Y-%m-%d}); "
             f"gate {'passed' if report.passed else 'FAILED'}{again}")
    if not report.passed:
        lines = audit.blocking_lines()
        raise GateFailed(f"dependency audit: {len(lines)} blocking vulnerabilit{'y' if len(lines) == 1 else 'ies'}: "
                         f"{'; '.join(lines[:3])}", audit)
    return audit


def image_scan_argv(trivy: str, cache_dir: str, image: str, policy: ScanPolicy, insecure: bool) -> list[str]:
    """`trivy image` of a pushed image from the registry, vulnerabilities only, against the offline DB.

    What Trivy found in each layer is kept in the cache directory (`fanal/`, keyed by layer digest), so
    the base and dependency layers that most images share are analysed once: a scan of a new image
    of the sample app takes 0.15 CPU-s instead of 2.9. That cache is one file that one Trivy process
    holds at a time (`layer_cache_turn`).
    """
    return [trivy, "image", "--image-src", "remote", *(["--insecure"] if insecure else []),
            "--scanners", "vuln", "--pkg-types", "os,library", "--skip-db-update", "--skip-java-db-update",
            "--offline-scan", "--cache-dir", cache_dir, "--cache-backend", "fs", "--format", "json", "--quiet",
            "--exit-code", "0",
            *(["--ignore-unfixed"] if policy.ignore_unfixed else []), image]


@contextlib.contextmanager
def layer_cache_turn(cache_dir: Path, timeout: float) -> Iterator[None]:
    """Hold this host's turn at Trivy's layer cache (`cache_dir/fanal/fanal.db`, a bbolt file one process opens).

    Trivy itself waits only seconds for the file and then fails ("cache may be in use by another
    process: timeout"), so the image scans of a run and of the runs beside it take turns here: an
    `flock` of `cache_dir/fanal/scan.lock` (beside the file it guards, so cache directories that share
    one `fanal/` share its turn too), waited for up to `timeout` seconds.
    """
    (cache_dir / "fanal").mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "fanal" / "scan.lock", "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PipelineError(f"Trivy's layer cache in {cache_dir} was busy for {timeout:.0f}s: another "
                                        "scan holds it (see `fuser fanal/scan.lock`)") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@task(name="scan-image", task_run_name="scan[{service} {platform}]", persist_result=True)
def scan_image(service: str, platform: str, image: str, policy: ScanPolicy, sarif_dir: str) -> ImageScan:
    """Scan one pushed platform image for OS and language package vulnerabilities.

    Uses the Trivy DB in SUNDAY_TRIVY_CACHE and never downloads one: with no DB there the scan
    fails (it never reports "0 vulnerabilities" for a scan that did not run). GateFailed when the
    DB is older than `policy.db_max_age_days` (checked every run, before a cached report is looked
    up: a report of the same digest and DB ages with the DB) or when the policy blocks a finding.

    Args:
        service: the service's name.
        platform: e.g. "linux/arm64".
        image: `registry/repo@sha256:…` of that platform's manifest.
        policy: the config's scan policy.
        sarif_dir: where the SARIF file is kept.
    """
    settings = Settings.from_env()
    try:
        updated = _offline_db(settings, "the image scan", policy)
    except GateFailed as exc:
        raise GateFailed(f"{service} image {image} ({platform}): {exc}") from None
    registry = image.split("/", 1)[0]
    insecure = registry.split(":")[0] in ("localhost", "127.0.0.1")
    Path(sarif_dir).mkdir(parents=True, exist_ok=True)
    sarif = Path(sarif_dir) / f"{service}-{platform.replace('/', '-')}.sarif"
    key = scan_cache_key(image, settings.trivy, settings.trivy_cache,
                         image_scan_argv("trivy", "", "", policy, insecure))

    def run_trivy() -> str:
        with layer_cache_turn(settings.trivy_cache, timeout=1800):
            return run(image_scan_argv(settings.trivy, str(settings.trivy_cache), image, policy, insecure),
                       timeout=1800).stdout

    report, _, reused = _judged_with_sarif(key, sarif, policy, run_trivy)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in report.counts.items() if n) or "no vulnerabilities"
    again = " (report reused: same digest, same DB)" if reused else ""
    progress(f"{counts} (DB of {updated:%Y-%m-%d}); gate {'passed' if report.passed else 'FAILED'}{again}")
    scan = ImageScan(service, platform, image, report, str(sarif))
    if not report.passed:
        worst = ", ".join(f"{f.id} in {f.package} {f.installed}" for f in report.blocking[:3])
        raise GateFailed(f"{service} image {image} ({platform}): {len(report.blocking)} blocking "
                         f"vulnerabilit{'y' if len(report.blocking) == 1 else 'ies'}: {worst}", scan)
    return scan
