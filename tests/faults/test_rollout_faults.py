"""Rollout faults on the real components: a release failing real traffic, an unanswered approval, two deploys at once.

Each case runs the real CLI against the sample app built by the pipeline's own CI (the versions are
built once for the module), the Docker target (containers, the nginx router, PostgreSQL) and the
session's Prefect server; each asserts what a user sees (exit code, message, `status --json`, the
rollout artifact) and that nothing was lost (the old version serves, the data is there).
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sunday_release.run_tags import env_tag
from tests.conftest import APP, _git
from tests.test_cd import Env, _rollout_markdown, ci_passed, status
from tests.test_emergency_rollback import Background, _approve, _deploy, _runs

pytestmark = pytest.mark.docker

WATCH_SECONDS = 15  # the faulty release must be caught well inside this window
APPROVAL_TIMEOUT = 10  # the config's minimum


class RolloutEnv(Env):
    """An environment of the module's repository with its own watch window and approval timeout."""

    def __init__(self, project: str, watch_seconds: float = 2, approval: bool = False) -> None:
        super().__init__(approval=approval, project=project)
        self.watch_seconds = watch_seconds

    def edit(self, repo: Path) -> None:
        super().edit(repo)
        config = repo / "sunday-release.yaml"
        lines = config.read_text().split("\n")
        mine = next(i for i, line in enumerate(lines) if line.startswith(f"  {self.name}: {{"))
        line = lines[mine].replace("watch_seconds: 2,", f"watch_seconds: {self.watch_seconds:g},", 1)
        if self.approval:
            line = line.removesuffix("}") + f", approval_timeout: {APPROVAL_TIMEOUT}}}"
        lines[mine] = line
        config.write_text("\n".join(lines))


def _flaky_backend(repo: Path) -> None:
    """The backend answers 500 to 3 of every 10 board reads that come through the router (X-Forwarded-For).

    Its direct smoke checks (no router, and not this path) pass: only real traffic after the switch sees it.
    """
    server = repo / "backend" / "sunday_api" / "server.py"
    text = server.read_text()
    imports, resolved = "import json\n", "                handler, params = resolve(self.command, path)\n"
    assert imports in text and resolved in text
    text = text.replace(imports, imports + "import itertools\n", 1)
    text = text.replace("MAX_BODY = ", "_ROUTED_READS = itertools.count()  # fault injection\n\nMAX_BODY = ", 1)
    text = text.replace(resolved, resolved + (
        '                if (self.command == "GET" and "X-Forwarded-For" in self.headers\n'
        '                        and re.match(r"^/api/boards/\\d+$", path) and next(_ROUTED_READS) % 10 < 3):\n'
        '                    raise RuntimeError("injected fault: 3 of 10 routed board reads fail")\n'), 1)
    server.write_text(text)


def _retitle(title: str) -> Any:
    def edit(repo: Path) -> None:
        index = repo / "frontend" / "public" / "index.html"
        index.write_text(index.read_text().replace("</title>", f" {title}</title>", 1))
    return edit


@dataclass
class Versions:
    """The module's repository, its environments, and the versions that passed CI."""

    repo: Path
    watch: RolloutEnv
    approval: RolloutEnv
    race: RolloutEnv
    v1: str
    flaky: str  # v1 + a backend that fails 30% of routed board reads
    v2: str  # v1 + frontend title " v2" (a sibling of flaky and v3: no version is older than another)
    v3: str  # v1 + frontend title " v3"


@pytest.fixture(scope="module")
def versions(prefect_api: str, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Versions]:
    """One repository (three environments) and its versions, built by the pipeline's CI once for every case."""
    project = f"faults-{secrets.token_hex(2)}"
    envs = (RolloutEnv(project, watch_seconds=WATCH_SECONDS), RolloutEnv(project, approval=True),
            RolloutEnv(project))
    repo = tmp_path_factory.mktemp("rollout") / "repo"
    try:
        shutil.copytree(APP, repo, ignore=shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache"))
        for env in envs:
            env.edit(repo)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "v1", "-m", f"rollout faults {secrets.token_hex(6)}")  # a commit of its own
        v1 = ci_passed(repo, prefect_api, _git)
        built = []
        for edit, message in ((_flaky_backend, "flaky"), (_retitle("v2"), "v2"), (_retitle("v3"), "v3")):
            _git(repo, "reset", "-q", "--hard", v1)  # every variant a child of v1: none is older than another
            edit(repo)
            _git(repo, "commit", "-qam", message)
            built.append(ci_passed(repo, prefect_api, _git))
        yield Versions(repo, *envs, v1, *built)
    finally:
        for env in envs:
            env.teardown()


def _cd(env: Env, versions: Versions, version: str, api: str) -> Background:
    return _deploy(env, versions.repo, version, api)


def _history(env: Env) -> list[dict[str, Any]]:
    return list(status(env)["history"])  # type: ignore[call-overload]


class Traffic:
    """Real users: GETs of one board through the environment's router, in a daemon thread, every status kept.

    An idempotent GET reset by a router reload is retried once (as a browser does); a request that
    fails twice counts as dropped (status 0).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, int]] = []  # (epoch seconds, status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                code = 0
                for _ in (1, 2):
                    try:
                        code = client.get(self.url).status_code
                        break
                    except httpx.TransportError:
                        continue
                self.seen.append((time.time(), code))
                self._stop.wait(0.02)

    def wait_for(self, when: Callable[[float], bool], count: int, timeout: float = 60) -> None:
        """Until `count` requests were answered at a time `when` accepts (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        while sum(1 for t, _ in list(self.seen) if when(t)) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {count} requests in {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(30)
        return list(self.seen)


def test_a_release_failing_real_traffic_is_rolled_back_within_its_watch_window(prefect_api: str,
                                                                                 versions: Versions) -> None:
    env = versions.watch
    first = _cd(env, versions, versions.v1, prefect_api).output()
    assert first[0] == 0, first[2]
    board = httpx.post(f"{env.url}/api/boards", json={"name": "launch"})
    assert board.status_code == 201, board.text
    traffic = Traffic(f"{env.url}/api/boards/{board.json()['id']}")
    try:
        code, out, err = _cd(env, versions, versions.flaky, prefect_api).output()
        returned = time.time()
        traffic.wait_for(lambda t: t > returned, 40)  # requests after the rollback, on the old version
    finally:
        seen = traffic.stop()

    assert code == 1, err
    assert json.loads(out)["state"] == "FAILED"
    assert f"deploy of {versions.flaky} to {env.project}/{env.name} rolled back: watch window failed on green" \
        in err, err
    assert f"of {WATCH_SECONDS}s: error rate " in err and "above 1.0%" in err, err
    print(err.strip().splitlines()[-1], json.dumps(status(env)["history"]))  # shown with -s

    st = status(env)
    assert st["serving"] is True and st["live_color"] == "blue" and st["version"] == versions.v1
    assert st["revision"] == 1
    history = _history(env)
    assert [(h["revision"], h["outcome"]) for h in history] == [(1, "live"), (2, "rolled-back")]
    failed = history[-1]
    assert failed["reason"].startswith("watch window failed on green") and "error rate" in failed["reason"]
    timings = failed["timings"]
    caught_after = timings["failed_at"] - timings["switched_at"]
    assert 0 < caught_after < WATCH_SECONDS, timings  # caught inside the window, not at its end
    assert env.container_ids("label=sunday.color=green", "status=running") == []
    rollout = _rollout_markdown(env)
    assert "revision 2 — rolled-back" in rollout and "watch window failed on green" in rollout

    on_green = [s for t, s in seen if timings["switched_at"] < t < timings["failed_at"]]
    assert 500 in on_green, "the faulty release never failed a request: the case proves nothing"
    back = timings["failed_at"] + timings["rollback_seconds"] + 1  # requests in flight during the switch back
    after = [s for t, s in seen if t > back]
    assert len(after) >= 20 and set(after) == {200}, after  # the old version serves every request again
    assert 0 not in [s for _, s in seen], "a request was dropped"  # nothing lost across two switches
    assert max(t for t, _ in seen) > returned
    boards = httpx.get(f"{env.url}/api/boards").json()["boards"]
    assert [b["name"] for b in boards] == ["launch"]  # the data outlived the faulty release


def test_an_unanswered_approval_times_out_and_the_old_color_keeps_serving(prefect_api: str,
                                                                          versions: Versions) -> None:
    env = versions.approval
    tag = env_tag(env.project, env.name)
    _approve(env, versions.repo, versions.v1, prefect_api, revision=1)  # approved in its form, as in the UI
    assert httpx.post(f"{env.url}/api/boards", json={"name": "kept"}).status_code == 201

    started = time.monotonic()
    code, out, err = _cd(env, versions, versions.v2, prefect_api).output(timeout=300)  # nobody answers
    assert code == 1, err
    assert json.loads(out)["state"] == "FAILED"
    assert f"deploy of {versions.v2} to {env.project}/{env.name} rolled back: approval timed out: nobody " \
           f"approved or rejected the deploy within {APPROVAL_TIMEOUT}s (approval_timeout)" in err, err
    assert time.monotonic() - started > APPROVAL_TIMEOUT

    st = status(env)
    assert st["serving"] is True and st["live_color"] == "blue" and st["version"] == versions.v1
    history = _history(env)
    assert [(h["revision"], h["outcome"]) for h in history] == [(1, "live"), (2, "rolled-back")]
    assert history[-1]["reason"].startswith("approval timed out") and "switched_at" not in history[-1]["timings"]
    assert env.container_ids("label=sunday.color=green", "status=running") == []  # the idle color is stopped
    page = httpx.get(f"{env.url}/")
    assert page.status_code == 200 and "v2</title>" not in page.text  # traffic never moved
    assert [b["name"] for b in httpx.get(f"{env.url}/api/boards").json()["boards"]] == ["kept"]
    assert "approval timed out" in _rollout_markdown(env)
    runs = _runs(tag)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "FAILED"]  # not left Paused
    assert "approval timed out" in runs[-1].state.message  # the deploy's reason, not the server's
    assert not _runs(tag, "PAUSED")


def test_two_deploys_of_one_environment_at_once_run_one_after_the_other(prefect_api: str,
                                                                        versions: Versions) -> None:
    env = versions.race
    deploys = {v: _cd(env, versions, v, prefect_api) for v in (versions.v2, versions.v3)}  # started together
    results = {v: d.output(timeout=600) for v, d in deploys.items()}
    for version, (code, _, err) in results.items():
        assert code == 0, f"{version}: {err}"
    waiting = f"waiting: another deploy, rollback or scale of {env.project}/{env.name} is running"
    waited = [v for v, (_, _, err) in results.items() if waiting in err]
    assert len(waited) == 1, {v: err for v, (_, _, err) in results.items()}
    last = waited[0]
    first = versions.v3 if last == versions.v2 else versions.v2

    history = _history(env)
    assert [(h["revision"], h["version"], h["outcome"]) for h in history] == [
        (1, first, "superseded"), (2, last, "live")]
    assert history[1]["started"] >= history[0]["finished"], history  # no write of the second before the first ended
    assert [json.loads(out)["revision"] for out in (results[first][1], results[last][1])] == [1, 2]
    st = status(env)
    assert st["serving"] is True and st["version"] == last and st["revision"] == 2
    title = "v2" if last == versions.v2 else "v3"
    assert f"{title}</title>" in httpx.get(f"{env.url}/").text
    running = {c for c in ("blue", "green") if env.container_ids(f"label=sunday.color={c}", "status=running")}
    assert running == {st["live_color"]}  # exactly one color runs
