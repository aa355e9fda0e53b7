"""prefect.yaml against a real Prefect server: every deployment registers with its pool, trigger and schedule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.deployed_ci import create_process_pool

PREFECT = str(Path(sys.executable).parent / "prefect")
POOLS = ("sunday-ci", "sunday-deploy", "sunday-e2e")


def test_prefect_deploy_all_registers_the_platform(prefect_api: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "SUNDAY_RELEASE_DIR": str(ROOT),
           "SUNDAY_APP_REPO": str(tmp_path / "app-repo")}
    for pool in POOLS:
        create_process_pool(pool, overwrite=True)
    done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        automations = client.read_automations()
    assert {"ci", "cd-staging", "cd-production", "rollback", "e2e-nightly"} <= set(deployments)
    assert deployments["ci"].work_pool_name == "sunday-ci"
    assert deployments["cd-production"].work_pool_name == "sunday-deploy"
    ci = deployments["ci"]
    assert ci.global_concurrency_limit is not None and ci.global_concurrency_limit.limit == 2
    assert ci.concurrency_options is not None
    assert ci.concurrency_options.collision_strategy == "ENQUEUE"  # queued, not dropped
    for name in ("cd-staging", "cd-production", "rollback"):  # one queue for every project and env: none
        assert deployments[name].global_concurrency_limit is None, name  # the flows hold deploy:PROJECT:ENV
    backup = deployments["backup"]  # the emergency backup's button in the UI
    assert (backup.entrypoint, backup.work_pool_name, backup.global_concurrency_limit) == (
        "flows/cd.py:backup", "sunday-deploy", None)
    restore = deployments["restore"]  # the restore's, asking for the environment and the backup
    assert (restore.entrypoint, restore.work_pool_name, restore.parameters) == (
        "flows/cd.py:restore", "sunday-deploy", {})
    nightly = deployments["e2e-nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]  # type: ignore[union-attr]
    gc = deployments["gc-nightly"]
    assert gc.work_pool_name == "sunday-ci" and gc.entrypoint == "flows/gc.py:gc"
    assert [s.schedule.cron for s in gc.schedules] == ["30 3 * * *"]  # type: ignore[union-attr]
    triggers = {a.name: a.trigger for a in automations}
    expects = {name: sorted(getattr(t, "expect", []) or []) for name, t in triggers.items()}
    assert any(e == ["git.push"] for e in expects.values()), expects
    pulls = {name: t for name, t in triggers.items() if sorted(getattr(t, "expect", []) or []) == ["git.pull_request"]}
    matches = {name.split("__")[0]: t.match.root for name, t in pulls.items()}  # type: ignore[attr-defined]
    # CI of a pull request's head on opened/synchronize/reopened; `closed` removes its preview, never runs CI
    assert matches == {"ci": {"git.pr-action": ["opened", "synchronize", "reopened"]},
                       "preview-close": {"git.pr-action": "closed"}}, matches
    passed = {name.split("__")[0]: t.match.root for name, t in triggers.items()  # type: ignore[attr-defined]
              if sorted(getattr(t, "expect", []) or []) == ["sunday.ci.passed"]}
    assert passed == {"cd-staging": {"sunday.deploy-to": "staging"}, "cd-production": {
        "sunday.deploy-to": "production"}, "preview": {"sunday.deploy-to": "preview"}}, passed
    for name in ("preview", "preview-close", "previews-gc"):
        assert deployments[name].work_pool_name == "sunday-deploy", name
    assert [s.schedule.cron for s in deployments["previews-gc"].schedules] == ["17 * * * *"]  # type: ignore[union-attr]
    # an event names a ref, a sha or a version, never the repository: the deployments pin it
    templated = {a.name: getattr(action, "parameters", None) or {} for a in automations for action in a.actions}
    assert templated and all("repo" not in params for params in templated.values()), templated
    assert all(deployments[d].parameters["repo"] == str(tmp_path / "app-repo") for d in (
        "ci", "cd-staging", "cd-production", "preview", "preview-close", "previews-gc"))
