"""The Prometheus the CLI starts beside its local Prefect server (adapters/prometheus.py), for real."""

from __future__ import annotations

from pathlib import Path

from adapters.prometheus import LocalPrometheus
from sunday_release.prometheus import Prometheus
from tests.conftest import free_port


def test_started_once_reused_and_stopped(promtool: str, tmp_path: Path) -> None:
    local = LocalPrometheus(tmp_path, port=free_port())
    try:
        url = local.start()
        assert url == local.url and local.ready()
        pid = local.pid()
        assert pid is not None and local.start() == url and local.pid() == pid  # started once
        assert Prometheus(url).query("vector(1)") == [({}, 1.0)]  # it answers queries
        other = LocalPrometheus(tmp_path / "other", port=local.port)  # another home, the same port: reused
        assert other.start() == url and other.pid() is None
        assert not other.stop()  # it stops only what it started
        assert local.ready()
        assert (tmp_path / "prometheus" / "data").is_dir()
        assert oct((tmp_path / "prometheus").stat().st_mode & 0o777) == "0o700"
    finally:
        assert local.stop()
    assert not local.ready() and local.pid() is None
