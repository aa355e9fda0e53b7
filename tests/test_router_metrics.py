"""The docker target's routers as metrics (sunday_release/router_log.py, served by `sunday-release exporter` on
/router/metrics): the log follower on files, then a real nginx router (the config the docker target writes) in
front of a small upstream, its exporter scraped by a real Prometheus with the platform's job."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from adapters.pipeline_metrics import metrics_server
from sunday_release.bluegreen import render_router_config
from sunday_release.prometheus import Prometheus
from sunday_release.router_log import RouterLogs, parse_line
from tests.conftest import free_port
from tests.prometheus_fixture import platform_config, running_prometheus

LINE = '1733490000.123 {status} {seconds} "GET {uri}" 127.0.0.1:4100 {color}\n'


def _log(root: Path, project: str, env: str, *lines: str, color: str = "blue") -> Path:
    router = root / project / env / "router"
    router.mkdir(parents=True, exist_ok=True)
    (router / "nginx.conf").write_text(f"# sunday-release router of environment {project}/{env}: live color "
                                       f"{color}. Written by the pipeline.\n")
    log = router / "access.log"
    with log.open("a") as f:
        f.write("".join(lines))
    return log


def _line(status: int, seconds: float = 0.01, uri: str = "/api/tasks", color: str = "blue") -> str:
    return LINE.format(status=status, seconds=seconds, uri=uri, color=color)


def _requests(logs: RouterLogs) -> dict[tuple[str, str, str, str], int]:
    return {(p, e, c, code): n for p, e, c, code, n in logs.requests()}


def test_lines_of_the_router_format_are_read_and_the_rest_ignored() -> None:
    line = parse_line(_line(502, 0.25, color="green"))
    assert line is not None and (line.status, line.seconds, line.color) == (502, 0.25, "green")
    assert parse_line(_line(200, uri="/router/healthz")) is None  # the router's own probe
    for junk in ("", "garbage", '1.0 200 0.1 "GET /" - purple', '1.0 abc 0.1 "GET /" - blue',
                 '1.0 200 x "GET /" - blue'):
        assert parse_line(junk) is None, junk


def test_requests_are_counted_per_environment_and_color_from_where_the_follower_stopped(tmp_path: Path) -> None:
    log = _log(tmp_path, "shop", "staging", _line(200), _line(200), _line(500))
    _log(tmp_path, "blog", "staging", _line(200, color="green"), color="green")
    logs = RouterLogs(tmp_path)
    logs.refresh()
    assert _requests(logs) == {("shop", "staging", "blue", "200"): 2, ("shop", "staging", "blue", "500"): 1,
                               ("blog", "staging", "green", "200"): 1}
    assert logs.live_colors() == {("shop", "staging"): "blue", ("blog", "staging"): "green"}
    with log.open("a") as f:  # one whole line and half of the next: nginx is writing it
        f.write(_line(200, color="green") + _line(503)[:12])
    logs.refresh()
    shop = {k: v for k, v in _requests(logs).items() if k[0] == "shop"}
    assert shop == {("shop", "staging", "blue", "200"): 2, ("shop", "staging", "blue", "500"): 1,
                    ("shop", "staging", "green", "200"): 1}
    with log.open("a") as f:
        f.write(_line(503)[12:])
    logs.refresh()
    assert _requests(logs)[("shop", "staging", "blue", "503")] == 1
    ((*_, buckets, total),) = [d for d in logs.durations() if d[:3] == ("shop", "staging", "blue")]
    assert buckets[-1] == ("+Inf", 4) and total == pytest.approx(0.04)
    assert dict(buckets)["0.01"] == 4 and dict(buckets)["0.005"] == 0  # cumulative, as Prometheus reads them


def test_a_replaced_log_is_read_from_its_start_and_a_gone_environment_forgotten(tmp_path: Path) -> None:
    log = _log(tmp_path, "shop", "pr-7", _line(200), _line(200))
    logs = RouterLogs(tmp_path)
    logs.refresh()
    log.unlink()
    _log(tmp_path, "shop", "pr-7", _line(500))  # a new file (another inode), shorter than the old offset
    logs.refresh()
    assert _requests(logs) == {("shop", "pr-7", "blue", "200"): 2, ("shop", "pr-7", "blue", "500"): 1}
    log.write_text("")  # truncated in place
    with log.open("a") as f:
        f.write(_line(404))
    logs.refresh()
    assert _requests(logs)[("shop", "pr-7", "blue", "404")] == 1  # the counters go on: they never go down
    (tmp_path / "shop" / "pr-7" / "router" / "access.log").unlink()
    logs.refresh()
    assert _requests(logs) == {} and logs.live_colors() == {}


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 500 if self.path.startswith("/fail") else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _serving(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A real nginx router of environment shop/staging (the docker target's config), live color green, in front
    of an upstream that answers 500 under /fail and 200 elsewhere; yields (env root, router port)."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    _serving(upstream)
    run_dir = tmp_path / "envs" / "shop" / "staging" / "router"
    (run_dir / "tmp").mkdir(parents=True)
    (run_dir / "tmp").chmod(0o777)
    port = free_port()
    conf = run_dir / "nginx.conf"
    conf.write_text(render_router_config("staging", port, {"/": "web"}, {"web": [f"127.0.0.1:{upstream.server_port}"]},
                                         "green", run_dir, project="shop"))
    subprocess.run(["/usr/sbin/nginx", "-c", str(conf)], check=True)
    try:
        yield tmp_path / "envs", port
    finally:
        subprocess.run(["/usr/sbin/nginx", "-s", "quit", "-c", str(conf)], check=False)
        upstream.shutdown()


def test_the_platform_prometheus_reads_a_real_routers_requests_through_the_exporter(
        promtool: str, router: tuple[Path, int], tmp_path: Path) -> None:
    env_root, port = router
    exporter = metrics_server("127.0.0.1", 0, routers=RouterLogs(env_root))
    _serving(exporter)
    config = platform_config()
    for job in config["scrape_configs"]:
        if job["job_name"] == "sunday-routers":
            job["scrape_interval"] = "1s"
            job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.server_port}"]}]
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "sunday-routers"]
    try:
        with running_prometheus(tmp_path / "prometheus", config) as url:
            for i in range(20):
                path = "/fail" if i % 4 == 0 else "/"
                assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == (500 if path == "/fail" else 200)
            assert httpx.get(f"http://127.0.0.1:{port}/router/healthz").status_code == 200  # not counted
            prometheus, deadline, seen = Prometheus(url), time.monotonic() + 30, {}
            while time.monotonic() < deadline:
                seen = {labels["code"]: value for labels, value in prometheus.query(
                    'sum by (code) (sunday_router_requests_total{project="shop", env="staging", color="green"})')}
                if seen == {"200": 15.0, "500": 5.0}:
                    break
                time.sleep(0.5)
            assert seen == {"200": 15.0, "500": 5.0}
            assert prometheus.query('sunday_router_live_color{project="shop", env="staging"}') == [
                ({"__name__": "sunday_router_live_color", "color": "green", "env": "staging", "instance":
                  f"127.0.0.1:{exporter.server_port}", "job": "sunday-routers", "project": "shop"}, 1.0)]
            (p95,) = prometheus.query('histogram_quantile(0.95, sum by (le) (sunday_router_request_duration_seconds'
                                      '_bucket{project="shop", env="staging"}))')
            assert 0 <= p95[1] <= 0.1, p95  # a local upstream answers in milliseconds
    finally:
        exporter.shutdown()
        exporter.server_close()
