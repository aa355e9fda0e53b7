"""CD flows: deploy a version to an environment (blue-green), roll back, scale, back up and restore its database.

An environment is `(project, env)`: the project comes from the config's `project` (cd) or from the
environments deployed on this machine (rollback and scale: `project` may be left out when only one
project has that environment). The flows sequence tasks; the decisions (phases, undo, crash
reconcile) are pure functions of `sunday_release.release`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import FlowPauseTimeout, ObjectAlreadyExists, ObjectNotFound
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from adapters.logs import bind
from adapters.secrets import read_secret_block, resolve_secret_ref
from sunday_release import validate
from sunday_release.backup import check_backup_key
from sunday_release.bluegreen import Color, EnvState, Release, now_iso, other
from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError, RolloutAborted
from sunday_release.preview import is_preview_env
from sunday_release.release import Phase, advance, failure_outcome, reconcile_action, undo_steps
from sunday_release.run_tags import approval_timeout_message, rejection_message, rejection_reason
from sunday_release.settings import Settings
from sunday_release.targets import last_config, make_target
from sunday_release.targets.protocol import DeployTarget, RestorableDatabase
from tasks._common import progress
from tasks.approvals import PausedRun, find_paused_deploys, reject_deploy, resume_timed_out_run, tag_run
from tasks.deploy import (
    claim_ports,
    describe,
    observe_colors,
    prepare_database,
    publish_rollout,
    refuse_older_version,
    resolve_version,
    restart_color,
    run_migrations,
    scale_service,
    smoke_test,
    start_analysis,
    start_color,
    stop_color,
    switch_traffic,
    watch_live,
)
from tasks.notify import send_notification
from tasks.slot import (
    Busy,
    LeaseRenewer,
    forget_record,
    free_if_dead,
    record_path,
    release_lease,
    take_lease,
    write_record,
)
from tasks.source import Checkout, clone_repo, load_pipeline_config

__all__ = ["Approval", "backup", "cd", "environment_slot", "limit_name", "release", "restore", "rollback", "scale"]

LEASE_SECONDS = 60  # the server's minimum; renewed while held: only a killed run's slot on another machine waits it out
WAIT_POLL_SECONDS = 5  # a run with something to do while it waits for the slot does it this often
APPROVAL_POLL_SECONDS = 5  # how soon a paused deploy sees its answer (Prefect's default is 10)


class Approval(RunInput):
    """The form a person fills in the Prefect UI before production traffic moves."""

    approve: bool
    reason: str = ""


def limit_name(project: str, env: str) -> str:
    """The Prefect global concurrency limit of one environment: one deploy, rollback or scale at a time."""
    return f"deploy:{validate.name(project, 'project')}:{validate.name(env, '--env')}"


@contextmanager
def environment_slot(project: str, env: str, while_waiting: Callable[[], object] | None = None) -> Iterator[None]:
    """Hold the one slot of `(project, env)` (Prefect global concurrency limit `deploy:PROJECT:ENV`, limit 1).

    The limit is created when missing; a limit that disappears is an error, not "no limit" (strict).
    The slot is a lease of LEASE_SECONDS, renewed every LEASE_SECONDS/3 from a daemon thread while
    the run lives (a failed renewal, a blip of the API, is logged and the run goes on: it must not
    kill a deploy half-way through a switch) and released on exit. The holder records itself in
    ENV_ROOT/PROJECT/ENV/slot.json (`tasks.slot`). A run that finds the slot busy reads that record:
    when the holder ran on this machine (same boot, host name and pid namespace) and its process is
    gone or is another process now (pid reused), it was killed (-9): its lease is released and the
    slot taken at once. A holder on another machine, or alive, or a record that does not parse: the
    run waits, and a killed holder's slot comes free when its lease expires (about LEASE_SECONDS).

    Each environment has its own limit, so a production rollback never waits behind staging.
    `while_waiting` (if given) is called every WAIT_POLL_SECONDS until the slot is taken: an
    emergency rollback rejects the deploys of its environment that pause for approval while holding
    the slot.
    """
    name, where = limit_name(project, env), f"{project}/{env}"
    record = record_path(project, env)
    tried: set[str] = set()
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # created by a run that started at the same moment
                pass
        told = False
        while True:
            try:
                lease_id = take_lease(client, name, LEASE_SECONDS)
                break
            except Busy as busy:
                if free_if_dead(client, record, where, tried):
                    continue
                if not told:
                    progress(f"waiting: another deploy, rollback or scale of {where} is running")
                    told = True
                time.sleep(WAIT_POLL_SECONDS if while_waiting is not None
                           else min(max(busy.retry_after, 0.2), WAIT_POLL_SECONDS))
                if while_waiting is not None:
                    while_waiting()
        try:
            write_record(record, lease_id)
            with LeaseRenewer(lease_id, LEASE_SECONDS, where):
                yield
        finally:
            try:
                forget_record(record, lease_id)
            finally:
                release_lease(client, lease_id, quiet=True)


def with_secrets(target: DeployTarget) -> DeployTarget:
    """`target`, given the values of its services' `secrets:` (read now, from the managers their references name):
    a missing or unreadable one fails here (PipelineError naming the reference), before anything starts. Plain
    code, not a task: a value never becomes a task's result, parameter or log line."""
    values = {service: {name: resolve_secret_ref(ref) for name, ref in spec.secrets.items()}
              for service, spec in target.config.services.items() if spec.secrets}
    target.use_secrets(values)
    return target


def target_for(config: PipelineConfig, env: str) -> DeployTarget:
    """The environment's deploy target (DockerTarget or KubernetesTarget: one protocol, two implementations).

    Secrets the target needs (a database URL) are read from the run's Prefect Secret blocks.
    """
    return make_target(config, env, Settings.from_env(), read_secret=read_secret_block)


def saved_config(env: str, project: str | None = None) -> PipelineConfig:
    """The config of the environment's last deploy (rollback and scale need no repository).

    Raises:
        InputError: never deployed here, or `env` exists in several projects and `project` is None.
    """
    env = validate.name(env, "--env")
    if project is not None:
        validate.name(project, "--project")
    settings = Settings.from_env()
    if project is not None and project not in settings.projects_with(env):
        in_cluster = _cluster_config(env, project)
        if in_cluster is not None:
            return in_cluster
    project = settings.resolve_project(env, project)
    return last_config(settings, project, env)


def _cluster_config(env: str, project: str) -> PipelineConfig | None:
    """`project/env` never deployed from this worker: its last config as its cluster keeps it (kubernetes
    target), when this worker reaches one (kube context SUNDAY_KUBE_CONTEXT, or its pod's ServiceAccount)."""
    context = os.environ.get("SUNDAY_KUBE_CONTEXT") or None
    if context is None and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    from sunday_release.targets.kubernetes import read_saved_config

    return read_saved_config(project, env, context=context)


def _save_config(target: DeployTarget) -> None:
    """Record the target's config as the environment's last (docker: its database; both: the cache file
    ENV_ROOT/PROJECT/ENV/config.json that says which target and database to ask)."""
    target.save_config()


def _on_live_database(target: DeployTarget, live: Release | None) -> tuple[str, str]:
    """Point the target's new containers (and its backup step) at the database the live release uses: another one
    than the first after a restore. Returns that database and the backup it was restored from ("" for none)."""
    owner = target.restorable()
    if owner is None:
        return "", ""
    if live is not None and live.database:
        owner.use_database(live.database)
    return owner.database_name(), live.restored_from if live is not None else ""


def reconcile(target: DeployTarget, health_timeout: float) -> EnvState:
    """After a crash: make the router's color (the truth) serve again, as a task; close interrupted releases."""
    state = target.load_state()
    live, live_health, other_health = observe_colors(target)
    action = reconcile_action(live, live_health, other_health)
    if live is not None and action == "switch-to-other":
        switch_traffic(target, other(live))
        live = other(live)
    elif live is not None and action == "restart-live":
        restart_color(target, live, health_timeout)
    state.close_interrupted(live)
    target.save_state(state)
    return state


def _notify(where: str, event: str, text: str, evidence: list[str]) -> None:
    failed = send_notification(where, event, text)
    if failed:
        evidence.append(failed)


@flow(name="cd", flow_run_name="cd-{env}-{version}", persist_result=True)
def cd(env: str, version: str, repo: str, allow_older: bool = False) -> dict[str, Any]:
    """Deploy `version` (commit SHA or release tag that passed CI) of `repo` to `env`, blue-green.

    Ports → backup (where required) → migrations → start the idle color → health → smoke →
    approval (where required) → switch traffic → watch → keep the old color stopped. Each step
    moves the release's phase (`sunday_release.release`); a failure runs the undo steps the machine
    names for that phase (traffic back, idle color stopped), each a task. The state save, the
    notification and the rollout artifact run in `finally`, whatever happened: a plain try/finally
    rather than a Prefect transaction, because the undo depends on the phase reached (one decision
    of the machine) and not on which task records were committed. A failed notification is
    evidence, never a failed release. A version older than the live one is refused unless
    `allow_older`. A host port held by another environment is refused before anything runs.
    """
    env, repo, version = validate.name(env, "--env"), validate.repo(repo), validate.ref(version, "--version")
    if is_preview_env(env):
        raise InputError(f"--env: {env!r} is a pull request's preview: the preview flow deploys it "
                         "(sunday-release previews)")
    settings = Settings.from_env()
    run_id = str(flow_run.get_id() or "local")
    checkout = clone_repo(repo, version, workspace=str(settings.workspaces / run_id))
    config = load_pipeline_config(checkout)
    return release(config, env, version, checkout, allow_older, image_tag=None)


def release(config: PipelineConfig, env: str, version: str, checkout: Checkout, allow_older: bool,
            image_tag: str | None) -> dict[str, Any]:
    """The body of `cd` once the config is known (the preview flow's too): deploy `version` of the checkout to
    `env` of `config`, its images those tagged `image_tag` (None: the version's own tags, `resolve_version`)."""
    run_id = str(flow_run.get_id() or "local")
    bind(project=config.project, env=env)  # on every JSON log line of the run from here
    target = with_secrets(target_for(config, env))  # a missing secret fails here, before anything starts
    environment = config.environments[env]
    where = f"{config.project}/{env}"
    claim_ports(target)
    images = resolve_version(config, version, image_tag)
    tag_run(config.project, env)
    with environment_slot(config.project, env):
        prepare_database(target)  # the release record lives in the environment's database: before reading it
        state = reconcile(target, environment.health_timeout)
        order = refuse_older_version(checkout, version, state.live_release(), config.release_tags, allow_older)
        _save_config(target)
        live = state.live
        idle: Color = other(live) if live else "blue"
        database, restored_from = _on_live_database(target, state.live_release())
        release = Release(revision=state.next_revision(), version=version, digests=images, color=idle,
                          started=now_iso(), commit=checkout.commit, committed_at=checkout.committed_at,
                          database=database, restored_from=restored_from)
        state.history.append(release)
        target.save_state(state)
        evidence: list[str] = [order]
        _notify(where, "start", f"deploying {version} to {where} (revision {release.revision}, {idle})", evidence)
        failure: BaseException | None = None
        try:
            if environment.needs_backup(env):
                from tasks.backup import backup_for_environment

                backup = backup_for_environment(env, target)
                evidence.append(f"backup {backup.key} verified ({backup.size} bytes, sha256 {backup.sha256[:12]})")
            _roll_out(target, config, env, state, release, live, evidence)
        except BaseException as exc:
            failure = exc
            evidence += getattr(exc, "evidence", ())  # what decided it (the analysis's measurements)
            _undo(target, release, live, evidence, exc)
        finally:
            _conclude(target, state, release, where, evidence, failure,
                      f"{version} is live on {where} (revision {release.revision}) at {target.url}")
        if isinstance(failure, Exception):
            what = "rolled back" if live is not None else "failed (nothing was live before)"
            raise RolloutAborted(f"deploy of {version} to {where} {what}: {describe(failure)}") from failure
        if failure is not None:
            raise failure
        progress(f"{where}: revision {release.revision} ({version}) live on {idle} at {target.url}")
        return {"project": config.project, "env": env, "revision": release.revision, "version": version,
                "color": idle, "url": target.url, "images": images, "flow_run_id": run_id,
                "committed_at": checkout.committed_at,
                "warnings": [e for e in evidence if e.startswith("notification ")]}


def _roll_out(target: DeployTarget, config: PipelineConfig, env: str, state: EnvState, release: Release,
              live: Color | None, evidence: list[str]) -> None:
    """Put `release` live on its (idle) color, the steps every release takes: migrations → start the idle color →
    health → smoke → analysis → approval (where required) → switch traffic → watch → drain → keep the old color
    stopped. Each step moves the release's phase (`sunday_release.release`); a step that fails raises, and the
    caller runs the undo steps the machine names for the phase reached (`_undo`)."""
    environment = config.environments[env]
    idle, version, images = release.color, release.version, release.digests

    def move(phase: Phase, save: bool = True) -> None:
        release.phase = advance(release.phase, phase)
        if save:  # one upsert in the environment's database
            target.save_state(state)

    for service, spec in config.services.items():
        if spec.migrate:
            run_migrations(target, service, images[service], spec.migrate, version)
    move("migrated")
    started = time.monotonic()
    move("idle-started")
    start_color(target, idle, images, version, environment.health_timeout)
    move("healthy")
    healthy_at = time.monotonic()
    evidence.append(f"{idle} healthy in {healthy_at - started:.1f}s")
    smoke = smoke_test(target, idle, list(config.smoke))
    evidence += [f"smoke {s.service} {s.path} at {s.endpoint}: {s.status} in {s.elapsed_ms:.0f} ms" for s in smoke]
    analyzer, how = start_analysis(config, env, live, color_started=started)
    evidence.append(how)
    if analyzer is not None:
        analyzer.measure(idle, "smoke")  # the new color on its smoke requests alone, before any traffic
    # between healthy and switched the switch waits on no write: the phase is recorded with
    # "switched" (a crash before it is reconciled from the router), or before an approval's pause
    move("smoke-passed", save=environment.approval)
    if environment.approval:
        try:
            decision = pause_flow_run(wait_for_input=Approval, timeout=environment.approval_timeout,
                                      poll_interval=APPROVAL_POLL_SECONDS)
        except FlowPauseTimeout:  # nobody answered: a rejection, undone like one (traffic never moved)
            timed_out = approval_timeout_message(environment.approval_timeout)
            resume_timed_out_run(timed_out)  # the undo's tasks and the run's Failed state need a Running run
            raise RolloutAborted(timed_out) from None
        if not decision.approve:  # by a person, or by an emergency rollback of this environment
            raise RolloutAborted(rejection_message(decision.reason))
        evidence.append(f"approved: {decision.reason or 'no reason given'}")
        move("approved", save=False)
    took = switch_traffic(target, idle)
    # the moment traffic moved (the router reloaded), before the state write that records it
    release.timings |= {"healthy_to_switch": time.monotonic() - healthy_at, "switched_at": time.time()}
    move("switched")
    evidence.append(f"traffic switched {release.timings['healthy_to_switch']:.2f}s after healthy "
                    f"(reload {took * 1000:.0f} ms)")
    verdict = watch_live(target, idle, list(config.smoke), environment.watch_seconds, environment.max_error_rate,
                         analyzer)
    evidence.append(f"watch: {verdict.requests} requests, {verdict.errors} errors")
    if analyzer is not None:
        evidence += analyzer.evidence()
    move("watched")
    time.sleep(environment.drain_seconds)  # in-flight requests of the old color finish
    if live is not None:
        stop_color(target, live)
        for old in state.history:
            if old.outcome == "live":
                old.outcome = "superseded"
    release.phase = advance(release.phase, "live")
    release.outcome, release.finished = "live", now_iso()
    state.live, state.revision = idle, release.revision


def _conclude(target: DeployTarget, state: EnvState, release: Release, where: str, evidence: list[str],
              failure: BaseException | None, success: str) -> None:
    """Whatever happened: the state saved, the notification sent (`success`, or what the release ended as) and the
    rollout artifact published."""
    target.save_state(state)
    if failure is None:
        _notify(where, "success", success, evidence)
    else:
        _notify(where, "rollback", f"{release.version} on {where} {release.outcome}: {release.reason}", evidence)
    publish_rollout(f"rollout-{target.config.project}-{target.env_name}", where, release, evidence)


def _undo(target: DeployTarget, release: Release, live: Color | None, evidence: list[str], exc: BaseException) -> None:
    """Run the undo steps the machine names for the phase the release reached; each step is tried."""
    failed_at = time.monotonic()
    release.timings["failed_at"] = time.time()
    for step in undo_steps(release.phase, live is not None):
        try:
            if step == "switch-back" and live is not None:
                switch_traffic(target, live)
            elif step == "stop-idle":
                stop_color(target, release.color)
        except Exception as undo_failed:  # the next step still runs; the evidence says what is left
            evidence.append(f"undo {step} failed: {describe(undo_failed)}")
    release.timings["rollback_seconds"] = time.monotonic() - failed_at
    release.phase = advance(release.phase, failure_outcome(live is not None))
    release.outcome = "rolled-back" if release.phase == "rolled-back" else "failed"
    release.reason, release.finished = describe(exc), now_iso()
    evidence.append(f"rolled back in {time.monotonic() - failed_at:.1f}s: {release.reason}")


def _reject_paused_deploys(tag: str, reason: str, rejected: list[PausedRun]) -> None:
    """Reject (approval answered `approve: False`) each deploy with `tag` paused for approval, once."""
    for paused in find_paused_deploys(tag):
        if paused not in rejected and reject_deploy(paused, reason):
            rejected.append(paused)


@flow(name="rollback", flow_run_name="rollback-{env}", persist_result=True)
def rollback(env: str, to: int | None = None, project: str | None = None) -> dict[str, Any]:
    """Emergency rollback of `env` (of `project`) to the previous live revision or to revision `to`.

    A deploy (or restore) of the same environment paused for approval (it holds the environment's slot) is
    rejected first, through its approval form, and again while the rollback waits for the slot:
    the deploy takes its rejection path (idle color stopped, traffic untouched) and frees the slot.
    Deploys of other projects or environments are left alone. The result's `rejected` names them.
    """
    env = validate.name(env, "--env")
    config = saved_config(env, project)
    target = target_for(config, env)  # no secrets read: it starts the kept containers as they were (docker start)
    environment = config.environments[env]
    where = f"{config.project}/{env}"
    tag = tag_run(config.project, env)
    reason = rejection_reason(str(flow_run.get_name() or "rollback"), str(flow_run.get_id() or "local"))
    rejected: list[PausedRun] = []
    _reject_paused_deploys(tag, reason, rejected)
    with environment_slot(config.project, env, while_waiting=lambda: _reject_paused_deploys(tag, reason, rejected)):
        state = reconcile(target, environment.health_timeout)
        live = state.live
        if live is None:
            raise InputError(f"--env {where}: nothing is live to roll back from")
        candidates = [r for r in state.history if r.outcome in ("superseded", "live") and r.revision != state.revision]
        wanted = state.find(to) if to is not None else (candidates[-1] if candidates else None)
        if wanted is None:
            kept = ", ".join(str(r.revision) for r in candidates) or "none"
            raise InputError(f"--to: revision {to if to is not None else '(previous)'} is not kept "
                             f"(kept revisions: {kept})")
        idle = other(live)
        kept_there = target.replicas(idle, include_stopped=True)
        if wanted.color == idle and kept_there and target.version_of(idle) == wanted.version:
            restart_color(target, idle, environment.health_timeout)  # as they were: on the database they used
            database, restored_from = wanted.database, wanted.restored_from
        else:  # new containers of the wanted version, on the database the environment uses now
            database, restored_from = _on_live_database(target, state.live_release())
            start_color(target, idle, wanted.digests, wanted.version, environment.health_timeout)
        smoke_test(target, idle, list(config.smoke))
        switch_traffic(target, idle)
        time.sleep(environment.drain_seconds)
        stop_color(target, live)
        release = Release(revision=state.next_revision(), version=wanted.version, digests=wanted.digests,
                          color=idle, started=now_iso(), finished=now_iso(), outcome="live", phase="live",
                          reason=f"rollback to revision {wanted.revision}", commit=wanted.commit,
                          committed_at=wanted.committed_at, database=database, restored_from=restored_from)
        for old in state.history:
            if old.outcome == "live":
                old.outcome = "superseded"
        state.history.append(release)
        state.live, state.revision = idle, release.revision
        target.save_state(state)
        evidence = [f"rolled back from revision {state.history[-2].revision} to {wanted.revision}"]
        evidence += [f"rejected the deploy paused for approval {paused}" for paused in rejected]
        text = f"{where} rolled back to revision {wanted.revision} ({wanted.version})"
        if rejected:
            text += "; rejected the deploy(s) paused for approval: " + ", ".join(str(paused) for paused in rejected)
        _notify(where, "rollback", text, evidence)
        publish_rollout(f"rollout-{config.project}-{env}", where, release, evidence)
        return {"project": config.project, "env": env, "revision": release.revision, "version": wanted.version,
                "color": idle, "rejected": [str(paused) for paused in rejected]}


@flow(name="backup", flow_run_name="backup-{env}", persist_result=True)
def backup(env: str, project: str | None = None) -> dict[str, Any]:
    """An emergency backup of `env` (of `project`), now: the deploy step's verified backup (dump → restore check
    in a scratch database → S3 → retention) on demand. It takes no environment slot: it only reads the database
    (one consistent snapshot), so it never waits behind a deploy paused for approval."""
    from tasks.backup import backup_for_environment

    env = validate.name(env, "--env")
    config = saved_config(env, project)
    target = target_for(config, env)
    prepare_database(target)
    _on_live_database(target, target.load_state().live_release())  # the database the live color uses
    record = backup_for_environment(env, target)
    rows = sum(record.table_counts.values())
    create_markdown_artifact(
        key=f"backup-{config.project}-{env}",
        markdown=f"# Backup of {config.project}/{env}\n\n`s3://{record.bucket}/{record.key}` — {record.size} bytes, "
                 f"sha256 `{record.sha256}`, {rows} rows in {len(record.table_counts)} tables, restore-checked.\n",
        description=f"on-demand backup of {config.project}/{env}")
    return {"project": config.project, "env": env, "bucket": record.bucket, "key": record.key, "size": record.size,
            "sha256": record.sha256, "created": record.created, "table_counts": record.table_counts,
            "verified": record.verified}


def restored_database_name(key: str, when: datetime) -> str:
    """The new database of a restore: `restored_YYYYMMDDTHHMMSS_SHA8` (when it was restored, the backup's sha256)."""
    return validate.database_name(f"restored_{when.astimezone(UTC).strftime('%Y%m%dt%H%M%S')}_"
                                  f"{key.removesuffix('.dump')[-12:][:8]}", "database")


@flow(name="restore", flow_run_name="restore-{env}", persist_result=True)
def restore(env: str, key: str, project: str | None = None) -> dict[str, Any]:
    """Restore backup `key` of `env` (of `project`) into a new database and move the environment onto it, blue-green.

    The backup is checked before anything else (one of this environment's, with a manifest), then restored into a
    new database of the same server and its table counts compared with the backup's (`tasks.backup.restore_database`):
    until then nothing the environment runs has changed. The live release's images then start on the idle color
    connected to the new database and go through every step of a deploy (migrations, health, smoke, approval where
    the environment requires one, the switch, the watch), so a failure rolls back the same way: traffic stays on
    (or returns to) the old color and its database, and the new database is dropped. The old database is kept
    (a rollback to the revision before the restore returns to it); `status` names the database the environment runs
    on and the backup it was restored from.
    """
    from tasks.backup import backup_prefix, restore_for_environment

    env = validate.name(env, "--env")
    config = saved_config(env, project)
    where = f"{config.project}/{env}"
    key = check_backup_key(key, backup_prefix(config.project, env))
    target = target_for(config, env)
    owner = target.restorable()
    if owner is None:
        raise InputError(f"--env {where}: the {config.environments[env].target} target does not point services at "
                         "another database; restore its database with the platform's tools (docs/backups.md)")
    with_secrets(target)  # the idle color's containers need them
    environment = config.environments[env]
    bind(project=config.project, env=env)
    tag_run(config.project, env)
    with environment_slot(config.project, env):
        prepare_database(target)
        state = reconcile(target, environment.health_timeout)
        current = state.live_release()
        if state.live is None or current is None:
            raise InputError(f"--env {where}: nothing is live: a restore starts the live release on the restored "
                             "database (deploy it first with cd)")
        old_database, _ = _on_live_database(target, current)
        database = restored_database_name(key, datetime.now(UTC))
        restored = restore_for_environment(env, key, target, owner, database)
        rows = sum(restored["table_counts"].values())
        owner.use_database(database)
        live, idle = state.live, other(state.live)
        release = Release(revision=state.next_revision(), version=current.version, digests=current.digests,
                          color=idle, started=now_iso(), commit=current.commit, committed_at=current.committed_at,
                          database=database, restored_from=key, reason=f"restore of {key}")
        state.history.append(release)
        target.save_state(state)
        evidence = [f"restored {key} into database {database}: {rows} rows in {len(restored['table_counts'])} "
                    "tables, as the backup's manifest says", f"the old database {old_database} is kept"]
        _notify(where, "start", f"restoring {key} on {where} (revision {release.revision}, {idle}, database "
                f"{database})", evidence)
        failure: BaseException | None = None
        try:
            _roll_out(target, config, env, state, release, live, evidence)
        except BaseException as exc:
            failure = exc
            evidence += getattr(exc, "evidence", ())
            _undo(target, release, live, evidence, exc)
            _forget_restored(target, owner, idle, database, evidence)
        finally:
            _conclude(target, state, release, where, evidence, failure,
                      f"{where} runs on database {database}, restored from {key} (revision {release.revision})")
        if isinstance(failure, Exception):
            raise RolloutAborted(f"restore of {key} on {where} rolled back (it still runs on database {old_database}): "
                                 f"{describe(failure)}") from failure
        if failure is not None:
            raise failure
        progress(f"{where}: revision {release.revision} ({current.version}) live on {idle} with database {database}, "
                 f"restored from {key}; the old database {old_database} is kept")
        return {"project": config.project, "env": env, "revision": release.revision, "version": current.version,
                "color": idle, "database": database, "previous_database": old_database, "restored_from": key,
                "table_counts": restored["table_counts"], "url": target.url}


def _forget_restored(target: DeployTarget, owner: RestorableDatabase, idle: Color, database: str,
                     evidence: list[str]) -> None:
    """After a failed restore: remove the idle color's containers (they name the new database) and drop it."""
    from sunday_release.backup import drop_database

    try:
        target.remove_color(idle)
        drop_database(owner.owner_dsn().get_secret_value(), database)
        evidence.append(f"dropped the restored database {database}")
    except Exception as exc:  # what is left is said; the release's own failure is what the run reports
        evidence.append(f"cleaning up the restored database {database} failed: {describe(exc)}")


@flow(name="scale", flow_run_name="scale-{env}-{service}-{replicas}", persist_result=True)
def scale(env: str, service: str, replicas: int, project: str | None = None) -> dict[str, Any]:
    """Run `replicas` containers of `service` in the live color of `env` (router updated, no downtime)."""
    env, service = validate.name(env, "--env"), validate.name(service, "--service")
    config = saved_config(env, project)
    target = target_for(config, env)
    where = f"{config.project}/{env}"
    if service not in config.services:
        raise InputError(f"--service: {service!r} is not a service ({', '.join(config.services)})")
    if not 1 <= replicas <= 100:
        raise InputError(f"--replicas: {replicas} is not between 1 and 100")
    with_secrets(target)  # the replicas it starts need them
    tag_run(config.project, env)
    with environment_slot(config.project, env):
        state = reconcile(target, config.environments[env].health_timeout)
        if state.live is None:
            raise InputError(f"--env {where}: nothing is live to scale")
        release = state.live_release()
        if release is None:
            raise InputError(f"--env {where}: the live revision is unknown")
        state.replicas[service] = replicas
        target.save_state(state)
        scale_service(target, state.live, service, release.digests[service], release.version, replicas,
                      config.environments[env].health_timeout)
        switch_traffic(target, state.live)
        progress(f"{where}: {service} runs {replicas} replica(s)")
        return {"project": config.project, "env": env, "service": service, "replicas": replicas}
