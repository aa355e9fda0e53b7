"""CD flows: deploy a version to an environment (blue-green), roll back, scale."""

from __future__ import annotations

import fcntl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from sunday_release import validate
from sunday_release.bluegreen import Color, EnvState, Release, now_iso, other
from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError, RolloutAborted
from sunday_release.settings import Settings
from sunday_release.targets import make_target
from sunday_release.targets.docker import DockerTarget
from tasks._common import progress
from tasks.deploy import (
    describe,
    refuse_older_version,
    resolve_version,
    run_migrations,
    smoke_test,
    start_color,
    switch_traffic,
    watch_live,
)
from tasks.notify import notify
from tasks.source import clone_repo, load_pipeline_config

__all__ = ["Approval", "cd", "rollback", "scale"]


class Approval(RunInput):
    """The form a person fills in the Prefect UI before production traffic moves."""

    approve: bool
    reason: str = ""


@contextmanager
def env_lock(target: DockerTarget) -> Iterator[None]:
    """One CD, rollback or scale per environment at a time (others wait their turn)."""
    target.root.mkdir(parents=True, exist_ok=True)
    with open(target.root / "lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.stderr.write(f"waiting: another deploy of {target.env_name} is running\n")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def target_for(config: PipelineConfig, env: str) -> Any:
    """The environment's deploy target (DockerTarget or KubernetesTarget: one protocol, two implementations)."""
    return make_target(config, env, Settings.from_env())


def saved_config(env: str) -> PipelineConfig:
    """The config of the environment's last deploy (rollback and scale need no repository)."""
    path = Settings.from_env().home / "envs" / validate.name(env, "--env") / "config.json"
    if not path.exists():
        raise InputError(f"--env: {env!r} has never been deployed on this machine")
    return PipelineConfig.model_validate_json(path.read_text())


def reconcile(target: DockerTarget) -> EnvState:
    """After a crash: make the router's color (the truth) live and serving; close interrupted releases."""
    state = target.load_state()
    live = target.live_color()
    if live is not None:
        healthy = [r for r in target.replicas(live) if r.health in ("healthy", "starting")]
        if not healthy:
            if any(r.health == "healthy" for r in target.replicas(other(live))):
                target.switch(other(live))
                live = other(live)
            else:
                target.restart_color(live)
                target.wait_healthy(live, target.env.health_timeout)
    for release in state.history:
        if release.outcome == "in-progress":
            release.outcome, release.finished = "failed", now_iso()
            release.reason = release.reason or "interrupted (the deploy process died)"
    if live is not None and state.live != live:
        state.live = live
        serving = [r for r in state.history if r.color == live and r.outcome in ("live", "failed", "superseded")]
        if serving:
            state.revision = serving[-1].revision
    target.save_state(state)
    return state


def _artifact(env: str, release: Release, evidence: list[str]) -> None:
    lines = [f"# {env}: revision {release.revision} — {release.outcome}", "",
             f"Version `{release.version}` on color **{release.color}**.",
             *([f"Reason: {release.reason}"] if release.reason else []), "", "| service | image |", "|---|---|"]
    lines += [f"| {s} | `{d}` |" for s, d in release.digests.items()]
    lines += ["", "## Evidence", "", *[f"- {e}" for e in evidence]]
    create_markdown_artifact(key=f"rollout-{env}", markdown="\n".join(lines) + "\n",
                             description=f"Rollout decision for {env}")


@flow(name="cd", flow_run_name="cd-{env}-{version}", persist_result=True)
def cd(env: str, version: str, repo: str, allow_older: bool = False) -> dict[str, Any]:
    """Deploy `version` (commit SHA or release tag that passed CI) of `repo` to `env`, blue-green.

    Backup (where required) → migrations → start the idle color → health → smoke → approval
    (where required) → switch traffic → watch → keep the old color stopped. Any failure after the
    idle color started rolls back: traffic back to the old color, the new one stopped. A version
    older than the live one (an ancestor commit, a lower release tag) is refused unless
    `allow_older` (a person asking for it).
    """
    env, repo, version = validate.name(env, "--env"), validate.repo(repo), validate.ref(version, "--version")
    settings = Settings.from_env()
    run_id = str(flow_run.get_id() or "local")
    checkout = clone_repo(repo, version, workspace=str(settings.workspaces / run_id))
    config = load_pipeline_config(checkout)
    target = target_for(config, env)
    environment = config.environments[env]
    images = resolve_version(config, version)
    with env_lock(target):
        state = reconcile(target)
        order = refuse_older_version(checkout, version, state.live_release(), config.release_tags, allow_older)
        (target.root / "config.json").write_text(config.model_dump_json())
        live = state.live
        idle: Color = other(live) if live else "blue"
        release = Release(revision=state.next_revision(), version=version, digests=images, color=idle,
                          started=now_iso(), commit=checkout.commit, committed_at=checkout.committed_at)
        state.history.append(release)
        target.save_state(state)
        notify(env, "start", f"deploying {version} to {env} (revision {release.revision}, {idle})")
        evidence: list[str] = [order]
        switched = False
        try:
            if environment.needs_backup(env):
                from tasks.backup import backup_for_environment

                backup = backup_for_environment(env, target)
                evidence.append(f"backup {backup.key} verified ({backup.size} bytes, sha256 {backup.sha256[:12]})")
            target.ensure_database()
            for service, spec in config.services.items():
                if spec.migrate:
                    run_migrations(target, service, images[service], spec.migrate, version)
            started = time.monotonic()
            start_color(target, idle, images, version, environment.health_timeout)
            healthy_at = time.monotonic()
            evidence.append(f"{idle} healthy in {healthy_at - started:.1f}s")
            smoke = smoke_test(target, idle, list(config.smoke))
            evidence += [f"smoke {s.service} {s.path} at {s.endpoint}: {s.status} in {s.elapsed_ms:.0f} ms"
                         for s in smoke]
            if environment.approval:
                decision = pause_flow_run(wait_for_input=Approval, timeout=environment.approval_timeout)
                if not decision.approve:
                    raise RolloutAborted(f"rejected in the UI: {decision.reason or 'no reason given'}")
                evidence.append(f"approved: {decision.reason or 'no reason given'}")
            took = switch_traffic(target, idle)
            switched = True
            release.timings |= {"healthy_to_switch": time.monotonic() - healthy_at, "switched_at": time.time()}
            evidence.append(f"traffic switched {release.timings['healthy_to_switch']:.2f}s after healthy "
                            f"(reload {took * 1000:.0f} ms)")
            verdict = watch_live(target, idle, list(config.smoke), environment.watch_seconds,
                                 environment.max_error_rate)
            evidence.append(f"watch: {verdict.requests} requests, {verdict.errors} errors")
        except BaseException as exc:
            failed_at = time.monotonic()
            release.timings["failed_at"] = time.time()
            if switched and live is not None:
                target.switch(live)
            target.stop_color(idle)
            release.timings["rollback_seconds"] = time.monotonic() - failed_at
            release.outcome = "rolled-back" if live is not None else "failed"
            release.reason, release.finished = describe(exc), now_iso()
            evidence.append(f"rolled back in {time.monotonic() - failed_at:.1f}s: {release.reason}")
            target.save_state(state)
            _artifact(env, release, evidence)
            notify(env, "rollback", f"{version} on {env} rolled back: {release.reason}")
            if isinstance(exc, Exception):
                what = "rolled back" if live is not None else "failed (nothing was live before)"
                raise RolloutAborted(f"deploy of {version} to {env} {what}: {describe(exc)}") from exc
            raise
        time.sleep(environment.drain_seconds)  # in-flight requests of the old color finish
        if live is not None:
            target.stop_color(live)
            for old in state.history:
                if old.outcome == "live":
                    old.outcome = "superseded"
        release.outcome, release.finished = "live", now_iso()
        state.live, state.revision = idle, release.revision
        target.save_state(state)
        _artifact(env, release, evidence)
        notify(env, "success", f"{version} is live on {env} (revision {release.revision}) at {target.url}")
        progress(f"{env}: revision {release.revision} ({version}) live on {idle} at {target.url}")
        return {"env": env, "revision": release.revision, "version": version, "color": idle, "url": target.url,
                "images": images, "flow_run_id": run_id, "committed_at": checkout.committed_at}


@flow(name="rollback", flow_run_name="rollback-{env}", persist_result=True)
def rollback(env: str, to: int | None = None) -> dict[str, Any]:
    """Emergency rollback of `env` to the previous live revision or to revision `to`."""
    env = validate.name(env, "--env")
    config = saved_config(env)
    target = target_for(config, env)
    environment = config.environments[env]
    with env_lock(target):
        state = reconcile(target)
        live = state.live
        if live is None:
            raise InputError(f"--env {env}: nothing is live to roll back from")
        candidates = [r for r in state.history if r.outcome in ("superseded", "live") and r.revision != state.revision]
        wanted = state.find(to) if to is not None else (candidates[-1] if candidates else None)
        if wanted is None:
            kept = ", ".join(str(r.revision) for r in candidates) or "none"
            raise InputError(f"--to: revision {to if to is not None else '(previous)'} is not kept "
                             f"(kept revisions: {kept})")
        idle = other(live)
        kept_there = [r for r in target.replicas(idle, include_stopped=True)]
        if wanted.color == idle and kept_there and target.version_of(idle) == wanted.version:
            target.restart_color(idle)
            target.wait_healthy(idle, environment.health_timeout)
        else:
            start_color(target, idle, wanted.digests, wanted.version, environment.health_timeout)
        smoke_test(target, idle, list(config.smoke))
        switch_traffic(target, idle)
        time.sleep(environment.drain_seconds)
        target.stop_color(live)
        release = Release(revision=state.next_revision(), version=wanted.version, digests=wanted.digests,
                          color=idle, started=now_iso(), finished=now_iso(), outcome="live",
                          reason=f"rollback to revision {wanted.revision}", commit=wanted.commit,
                          committed_at=wanted.committed_at)
        for old in state.history:
            if old.outcome == "live":
                old.outcome = "superseded"
        state.history.append(release)
        state.live, state.revision = idle, release.revision
        target.save_state(state)
        _artifact(env, release, [f"rolled back from revision {state.history[-2].revision} to {wanted.revision}"])
        notify(env, "rollback", f"{env} rolled back to revision {wanted.revision} ({wanted.version})")
        return {"env": env, "revision": release.revision, "version": wanted.version, "color": idle}


@flow(name="scale", flow_run_name="scale-{env}-{service}-{replicas}", persist_result=True)
def scale(env: str, service: str, replicas: int) -> dict[str, Any]:
    """Run `replicas` containers of `service` in the live color of `env` (router updated, no downtime)."""
    env, service = validate.name(env, "--env"), validate.name(service, "--service")
    config = saved_config(env)
    target = target_for(config, env)
    if service not in config.services:
        raise InputError(f"--service: {service!r} is not a service ({', '.join(config.services)})")
    if not 1 <= replicas <= 100:
        raise InputError(f"--replicas: {replicas} is not between 1 and 100")
    with env_lock(target):
        state = reconcile(target)
        if state.live is None:
            raise InputError(f"--env {env}: nothing is live to scale")
        release = state.live_release()
        if release is None:
            raise InputError(f"--env {env}: the live revision is unknown")
        state.replicas[service] = replicas
        target.save_state(state)
        target.scale_service(state.live, service, release.digests[service], release.version, replicas)
        target.wait_healthy(state.live, config.environments[env].health_timeout)
        switch_traffic(target, state.live)
        progress(f"{env}: {service} runs {replicas} replica(s)")
        return {"env": env, "service": service, "replicas": replicas}


