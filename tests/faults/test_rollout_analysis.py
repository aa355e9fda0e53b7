"""Rollout analysis on real components: the sample app deployed on the docker target, the platform's Prometheus
(infra/local/prometheus.yml: docker discovery, the repository's rules) scraping every replica, real traffic
through the router. A release that fails 30 % of its users' requests only once it takes their traffic is rolled
back by the analysis inside the watch window; a healthy one under the same traffic is not."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import APP
from tests.prometheus_fixture import platform_config, running_prometheus
from tests.test_cd import Env, _rollout_markdown, ci_passed, deploy, status

WATCH_SECONDS = 40
LOAD_HEADER = "X-Sunday-Load"  # only the users' traffic below carries it: the smoke checks never fail


@pytest.fixture(scope="module")
def prometheus(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), platform_config()) as url:
        yield url


@pytest.fixture
def env(prometheus: str) -> Iterator[Env]:
    e = Env()
    e.env["SUNDAY_PROMETHEUS_URL"] = prometheus
    try:
        yield e
    finally:
        e.teardown()


class Users:
    """Requests through the environment's router, 20 a second, as its users send them; each (time, status)."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self.stop = url, list[tuple[float, int]](), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5, headers={LOAD_HEADER: "1"}) as client:
            while not self.stop.wait(0.05):
                try:
                    self.seen.append((time.time(), client.get(f"{self.url}/api/boards").status_code))
                except httpx.HTTPError:
                    self.seen.append((time.time(), 0))

    def __enter__(self) -> Users:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def failed_between(self, start: float, end: float) -> int:
        return sum(1 for at, code in self.seen if start <= at <= end and (code >= 500 or code == 0))


def _fail_users_requests(repo: Path, percent: int) -> None:
    """The backend fails `percent` % of the requests that carry LOAD_HEADER (a fault only real users meet)."""
    server = repo / "backend" / "sunday_api" / "server.py"
    text = server.read_text().replace("import json\n", "import itertools\nimport json\n", 1)
    text = text.replace("MAX_BODY = 64 * 1024\n", "MAX_BODY = 64 * 1024\nFAULTS = itertools.count()\n", 1)
    hook = '            path = self.path.split("?", 1)[0]\n'
    assert hook in text
    text = text.replace(hook, hook + (
        f'            if self.headers.get("{LOAD_HEADER}") and next(FAULTS) % 100 < {percent}:\n'
        '                self._send(500, {"error": "injected"}, {})\n'
        '                ctx.metrics.observe(self.command, route_name(path), 500, time.monotonic() - started)\n'
        '                return\n'), 1)
    server.write_text(text)


def _watch_longer(env: Env) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        env.edit(repo)
        config = repo / "sunday-release.yaml"
        config.write_text(config.read_text().replace("watch_seconds: 2,", f"watch_seconds: {WATCH_SECONDS},", 1))
    return edit


def test_a_release_failing_its_users_is_rolled_back_by_the_analysis_and_a_healthy_one_is_not(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        env: Env, prometheus: str) -> None:
    repo = make_repo(APP, edit=_watch_longer(env))
    v1 = ci_passed(repo, prefect_api, git)
    assert deploy(env, repo, v1, prefect_api).returncode == 0
    with Users(env.url) as users:
        time.sleep(5)
        index = repo / "frontend" / "public" / "index.html"  # a healthy release under the same traffic
        index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
        git(repo, "commit", "-qam", "v2")
        v2 = ci_passed(repo, prefect_api, git)
        healthy = deploy(env, repo, v2, prefect_api)
        assert healthy.returncode == 0, healthy.stderr
        markdown = _rollout_markdown(env)
        assert f"analysis: Prometheus {prometheus}" in markdown
        assert "analysis watch +" in markdown and ": passed" in markdown, markdown  # conclusive, and passed
        assert "FAILED" not in markdown, markdown

        _fail_users_requests(repo, 30)
        git(repo, "commit", "-qam", "v3 fails 30 % of its users' requests")
        v3 = ci_passed(repo, prefect_api, git)  # its unit tests send no such header: CI is green
        done = deploy(env, repo, v3, prefect_api)
        time.sleep(2)
    assert done.returncode == 1, done.stderr
    assert "analysis failed 2 measurements in a row" in done.stderr and "error_ratio" in done.stderr, done.stderr
    st = status(env)
    assert st["live_color"] == "green" and st["version"] == v2 and st["serving"] is True
    backend = next(s for s in st["metrics"]["services"] if s["service"] == "backend")  # type: ignore[index]
    assert st["metrics"]["source"] == prometheus and backend["requests_per_second"] > 1  # type: ignore[index]
    assert backend["error_ratio"] < 0.02 and backend["p95_seconds"] is not None
    last = st["history"][-1]  # type: ignore[index]
    assert last["outcome"] == "rolled-back" and last["version"] == v3
    detected = last["timings"]["failed_at"] - last["timings"]["switched_at"]
    assert detected < WATCH_SECONDS, detected  # within the watch window
    markdown = _rollout_markdown(env)
    decisive = [line for line in markdown.splitlines() if "analysis watch +" in line and "FAILED" in line]
    assert len(decisive) >= 2, markdown
    ratio = float(decisive[-1].split("error_ratio ")[1].split(",")[0])
    assert 0.15 <= ratio <= 0.45, decisive  # the 30 % the users met, as Prometheus measured it
    assert "error_ratio" in decisive[-1] and "> 0.02" in decisive[-1]
    # the users' requests after the rollback reach the healthy release again
    back = last["timings"]["failed_at"] + last["timings"].get("rollback_seconds", 0) + 1
    after = [code for at, code in users.seen if at > back]
    assert after and all(code == 200 for code in after), after[-20:]
    print(json.dumps({"detected_after_switch_s": round(detected, 1),
                      "failed_requests": users.failed_between(last["timings"]["switched_at"], back)}))
