"""Emergency rollback: one slot per environment, and the deploys of its environment paused for approval rejected."""

from __future__ import annotations

import contextvars
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sunday_release.errors import InputError
from sunday_release.run_tags import env_tag, parse_env_tag, rejection_message, rejection_reason
from tests.canary import MotoS3
from tests.conftest import APP, ROOT
from tests.test_cd import Env, Receiver, ci_passed, status
from tests.test_ci_flow import CLI, sunday

# --- pure: the tag of a run and the reason a rollback gives -----------------------------------------------------


def test_the_environment_tag_names_project_and_env_and_nothing_else_parses() -> None:
    assert env_tag("shop", "production") == "env:shop/production"
    assert parse_env_tag("env:shop/production") == ("shop", "production")
    for other in ("env:shop", "env:shop/", "env:/prod", "env:Shop/prod", "env:shop/prod/x", "shop/prod", "env:a:b/c",
                  "auto-scheduled"):
        assert parse_env_tag(other) is None, other
    with pytest.raises(InputError, match=r"--project: 'a/b' is not a valid name"):
        env_tag("a/b", "prod")
    with pytest.raises(InputError, match=r"--env: 'prod:x' is not a valid name"):
        env_tag("shop", "prod:x")


def test_a_rejection_says_who_rejected() -> None:
    reason = rejection_reason("rollback-production", "0f0e")
    assert reason == "rejected by emergency rollback rollback-production (0f0e)"
    assert rejection_message(reason) == reason
    assert rejection_message("no") == "rejected in the UI: no"
    assert rejection_message("") == "rejected in the UI: no reason given"


# --- real server: each environment its own slot -----------------------------------------------------------------


class Waited(Exception):
    """Raised by `while_waiting`: the slot was busy."""


def _taken(project: str, env: str) -> bool:
    """Whether `environment_slot(project, env)` is granted (without `while_waiting`: it waits as long as it takes).

    Run in a daemon thread and given 120 s, far beyond a slow server's answer but finite: a slot that is wrongly
    shared with a held one never comes, and the test fails instead of hanging the suite. The thread runs in a copy
    of this context, so it asks the test's Prefect server (a bare thread has no API URL: an ephemeral server).
    """
    from flows.cd import environment_slot

    got = threading.Event()

    def take() -> None:
        with environment_slot(project, env):
            got.set()

    thread = threading.Thread(target=contextvars.copy_context().run, args=(take,), daemon=True)
    thread.start()
    thread.join(120)
    return got.is_set()


def test_a_production_slot_is_taken_at_once_while_staging_is_held(prefect_api: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.cd
    from flows.cd import environment_slot

    monkeypatch.setattr(flows.cd, "WAIT_POLL_SECONDS", 1)
    project = f"slots-{secrets.token_hex(2)}"
    polls: list[str] = []

    def busy() -> None:
        polls.append("staging")
        raise Waited

    with environment_slot(project, "staging"):  # a staging deploy or rollback is running
        assert _taken(project, "production"), "production waited behind staging's slot"
        with pytest.raises(Waited), environment_slot(project, "staging", while_waiting=busy):
            pytest.fail("a second holder of staging's slot got it")  # pragma: no cover
        assert polls == ["staging"]  # it waited, and `while_waiting` ran while it did
    assert _taken(project, "staging"), "staging's slot stayed taken after its holder left"


# --- real: deploys paused for approval and an emergency rollback ------------------------------------------------


class Background:
    """A `sunday-release` command started in the background (`cd` or `restore`: it blocks while its run waits for
    approval).

    Its output goes to files: a pipe nobody reads while the run waits could fill.
    """

    def __init__(self, env: Env, api: str, *args: str) -> None:
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([*CLI, *args, "--json"], cwd=ROOT, stdout=self.out, stderr=self.err, text=True,
                                     env={**os.environ, **env.env, "PREFECT_API_URL": api})

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def output(self, timeout: float = 300) -> tuple[int, str, str]:
        """Exit code, stdout and stderr once it ends."""
        code = self.proc.wait(timeout)
        self.out.seek(0)
        self.err.seek(0)
        return code, self.out.read(), self.err.read()


def _deploy(env: Env, repo: Path, version: str, api: str) -> Background:
    """`sunday-release cd` of `version` in the background."""
    return Background(env, api, "cd", "--env", env.name, "--version", version, "--repo", str(repo))


def _runs(tag: str, *state_types: str, flow: str = "cd") -> list[Any]:
    """The `flow` runs tagged `tag` (in one of `state_types` if given), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in state_types])) \
        if state_types else None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                     flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]), state=state))
    return sorted(runs, key=lambda r: str(r.created))


def _wait_for_run(tag: str, state_type: str, proc: Background | None = None, count: int = 1,
                  timeout: float = 300, flow: str = "cd") -> Any:
    """The newest `flow` run tagged `tag` once `count` of them are in `state_type`; fails if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _runs(tag, state_type, flow=flow)
        if len(runs) >= count:
            return runs[-1]
        if proc is not None and proc.ended():
            pytest.fail(f"the deploy ended before its run was {state_type}:\n{proc.output()[2]}")
        time.sleep(0.5)
    pytest.fail(f"no {flow} run tagged {tag} reached {state_type} in {timeout:.0f}s")


def _wait_for_slot(env: Env, proc: Background, timeout: float = 120) -> None:
    """Until the deploy `proc` holds the environment's slot."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.cd import limit_name

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                if client.read_global_concurrency_limit_by_name(limit_name(env.project, env.name)).active_slots:
                    return
            except ObjectNotFound:
                pass
            if proc.ended():
                pytest.fail(f"the deploy ended before it held the slot:\n{proc.output()[2]}")
            time.sleep(0.2)
    pytest.fail(f"the deploy did not hold the slot of {env.project}/{env.name} in {timeout:.0f}s")


def _approve(env: Env, repo: Path, version: str, api: str, revision: int) -> None:
    """A deploy approved in its form (as a person does in the UI), live at `revision`."""
    from prefect.flow_runs import resume_flow_run

    proc = _deploy(env, repo, version, api)
    run = _wait_for_run(env_tag(env.project, env.name), "PAUSED", proc, count=1)
    resume_flow_run(run.id, run_input={"approve": True, "reason": f"revision {revision}"})
    code, out, err = proc.output()
    assert code == 0, err
    assert json.loads(out)["revision"] == revision


def _stand_in(project: str, env: str, api: str) -> threading.Thread:
    """A deploy of another project or environment waiting for approval, in a thread of this process.

    A stand-in, not a full deploy: another project's real deploy needs a CI build of its own and
    containers (about a minute on this machine). What a rollback sees of a deploy is real here:
    a flow run of flow `cd`, tagged by the same `tag_run` task, paused by `pause_flow_run` on the
    same `Approval` form, on the same server.
    """
    from prefect import flow
    from prefect.flow_runs import pause_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cd import Approval
    from tasks.approvals import tag_run

    @flow(name="cd", flow_run_name=f"stand-in-{project}-{env}")
    def paused_deploy_stand_in() -> str:
        tag_run(project, env)
        decision = pause_flow_run(wait_for_input=Approval, timeout=900, poll_interval=1)
        return decision.reason

    def run() -> None:
        with temporary_settings(updates={PREFECT_API_URL: api}):  # settings are per thread
            paused_deploy_stand_in(return_state=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _rollout_markdowns(env: Env) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[f"rollout-{env.project}-{env.name}"])))
    return [str(a.data) for a in found]


def test_an_emergency_rollback_rejects_the_paused_deploy_of_its_environment_only(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        tmp_path: Path) -> None:
    from prefect.flow_runs import resume_flow_run

    env = Env(approval=True, project=f"rb-{secrets.token_hex(2)}")
    receiver = Receiver()
    env.env["SUNDAY_NOTIFY_URL"] = receiver.url
    stand_ins: list[threading.Thread] = []
    others = [env_tag(f"other-{secrets.token_hex(2)}", env.name), env_tag(env.project, f"{env.name}-qa")]
    third: Background | None = None
    try:
        repo = make_repo(APP, edit=env.edit)
        version = ci_passed(repo, prefect_api, git)  # one CI build: every revision deploys this commit
        _approve(env, repo, version, prefect_api, revision=1)  # blue
        _approve(env, repo, version, prefect_api, revision=2)  # green, live
        for tag in others:  # the same env name in another project; another env of the same project
            project, name = parse_env_tag(tag) or ("", "")
            stand_ins.append(_stand_in(project, name, prefect_api))
        tag = env_tag(env.project, env.name)
        for other in others:
            _wait_for_run(other, "PAUSED")
        third = _deploy(env, repo, version, prefect_api)  # revision 3, on blue: it will pause holding the slot
        _wait_for_slot(env, third)
        # the rollback starts before the deploy pauses: it waits for the slot and rejects the deploy once it pauses
        back = sunday("rollback", "--env", env.name, "--project", env.project, "--json", api=prefect_api,
                      env=env.env)
        assert back.returncode == 0, back.stderr
        assert f"waiting: another deploy, rollback or scale of {env.project}/{env.name}" in back.stderr
        result = json.loads(back.stdout)
        rejected = _runs(tag)[-1]
        assert result["rejected"] == [f"{rejected.name} ({rejected.id})"], result
        assert result["revision"] == 4 and result["color"] == "blue" and result["version"] == version, result
        code, _, err = third.output(timeout=120)
        reason = f"rejected by emergency rollback rollback-{env.name} ("
        assert code == 1 and reason in err, err

        st = status(env)
        assert st["serving"] is True and st["live_color"] == "blue" and st["revision"] == 4
        history = st["history"]
        assert [h["outcome"] for h in history] == ["superseded", "superseded", "rolled-back", "live"]  # type: ignore[union-attr,index]
        assert reason in history[2]["reason"]  # type: ignore[index]
        assert history[3]["reason"] == "rollback to revision 1"  # type: ignore[index]
        assert httpx.get(f"{env.url}/api/boards").status_code == 200
        texts = [str(m.get("text", "")) for m in receiver.received if isinstance(m, dict)]
        assert any(reason in t for t in texts), texts  # the rejected deploy's notification says why
        assert any(f"rejected the deploy(s) paused for approval: {rejected.name}" in t for t in texts), texts
        assert any(reason in md for md in _rollout_markdowns(env))  # and so does its rollout artifact

        for other in others:  # deploys of another project or environment: still waiting for approval
            assert [r.state_type.value for r in _runs(other)] == ["PAUSED"], other
        _a_paused_restore_is_rejected_too(env, prefect_api, tmp_path)
    finally:
        for other in others:
            for run in _runs(other, "PAUSED"):
                resume_flow_run(run.id, run_input={"approve": False, "reason": "test over"})
        for thread in stand_ins:
            thread.join(60)
        if third is not None and not third.ended():
            third.proc.kill()
            third.proc.wait()
        receiver.server.shutdown()
        env.teardown()


def _a_paused_restore_is_rejected_too(env: Env, api: str, tmp_path: Path) -> None:
    """A restore (issue 18) asks for approval where the environment requires one, holding the environment's slot
    like a deploy: an emergency rollback rejects it the same way, and the rejected restore leaves nothing: traffic
    on the old database, its new database dropped."""
    s3 = MotoS3(tmp_path / "moto.jsonl").start()
    restore: Background | None = None
    try:
        s3.client().create_bucket(Bucket="rollback-backups")
        env.env |= {"SUNDAY_BACKUP_BUCKET": "rollback-backups", "SUNDAY_S3_ENDPOINT": s3.endpoint_url,
                    "AWS_ACCESS_KEY_ID": "test-harness-key", "AWS_SECRET_ACCESS_KEY": "test-harness-secret"}
        backup = sunday("backup", "--env", env.name, "--project", env.project, "--json", api=api, env=env.env)
        assert backup.returncode == 0, backup.stderr
        key = json.loads(backup.stdout)["key"]
        tag = env_tag(env.project, env.name)
        restore = Background(env, api, "restore", "--env", env.name, "--project", env.project, "--from", key)
        paused = _wait_for_run(tag, "PAUSED", restore, flow="restore")
        back = sunday("rollback", "--env", env.name, "--project", env.project, "--json", api=api, env=env.env)
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["rejected"] == [f"{paused.name} ({paused.id})"], back.stdout
        code, _, err = restore.output(timeout=120)
        assert code == 1 and f"rejected by emergency rollback rollback-{env.name} (" in err, err
        assert "rolled back (it still runs on database sunday)" in err, err
        st = status(env)
        assert st["serving"] is True and (st["database"], st["restored_from"]) == ("sunday", None), st
        rejected = st["history"][-2]  # type: ignore[index]
        assert (rejected["outcome"], rejected["restored_from"]) == ("rolled-back", key), rejected
        password = (env.db_root / env.project / env.name / "password").read_text().strip()
        import psycopg

        with psycopg.connect(f"postgresql://sunday:{password}@127.0.0.1:{env.db_port}/sunday") as conn:
            left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'restored%'").fetchall()
        assert left == [], left  # the rejected restore's database is dropped
    finally:
        if restore is not None and not restore.ended():
            restore.proc.kill()
            restore.proc.wait()
        s3.stop()
