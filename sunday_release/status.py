"""`sunday-release status`: what an environment runs, read from its state, the engine and the router."""

from __future__ import annotations

import json
from typing import Any

import httpx

from sunday_release import validate
from sunday_release.prometheus import Prometheus, PrometheusUnavailable, prometheus_url, signals_of
from sunday_release.settings import Settings
from sunday_release.targets import last_config, make_target
from sunday_release.tls import tls_context

__all__ = ["environment_status", "render_status"]


def environment_status(env: str, project: str | None = None) -> dict[str, Any]:
    """Live color, revision, version, per-replica health and whether the URL answers, of `project`'s `env`.

    Raises:
        InputError: never deployed here, or `env` exists in several projects and `project` is None.
    """
    settings = Settings.from_env()
    validate.name(env, "--env")
    if project is not None:
        validate.name(project, "--project")
    project = settings.resolve_project(env, project)
    target = make_target(last_config(settings, project, env), env, settings)
    state = target.load_state()
    live = target.live_color()
    release = state.live_release()
    replicas = [{"name": r.name, "service": r.service, "health": r.health, "endpoint": r.endpoint}
                for r in (target.replicas(live) if live else [])]
    try:
        answered = httpx.get(f"{target.url}/", timeout=3, verify=tls_context()).status_code < 500
    except httpx.HTTPError:
        answered = False
    return {
        "project": project, "env": env, "url": target.url, "live_color": live, "revision": state.revision,
        "version": release.version if release else None,
        "database": release.database or None if release else None,
        "restored_from": release.restored_from or None if release else None,
        "serving": answered and bool(replicas) and all(r["health"] == "healthy" for r in replicas),
        "replicas": replicas,
        "metrics": live_metrics(project, env, live),
        "history": [json.loads(r.model_dump_json()) for r in state.history[-10:]],
    }


METRICS_WINDOW = "1m"


def live_metrics(project: str, env: str, color: str | None) -> dict[str, Any]:
    """The live color's signals from Prometheus over the last minute (sunday_release.prometheus), or why there
    are none: no Prometheus configured, or it did not answer."""
    url = prometheus_url()
    if url is None:
        return {"source": None, "reason": "no Prometheus (SUNDAY_PROMETHEUS_URL)"}
    if color is None:
        return {"source": url, "reason": "nothing live"}
    try:
        signals = signals_of(Prometheus(url), project, env, color, METRICS_WINDOW)
    except PrometheusUnavailable as exc:
        return {"source": url, "reason": str(exc)}
    return {"source": url, "window": METRICS_WINDOW,
            "services": [{"service": s.service, "requests_per_second": s.requests_per_second,
                          "error_ratio": s.error_ratio, "p95_seconds": s.p95_seconds} for s in signals]}


def _render_metrics(metrics: dict[str, Any]) -> list[str]:
    if "services" not in metrics:
        return [f"  metrics: {metrics['reason']}"]
    lines = [f"  metrics of the live color (Prometheus {metrics['source']}, last {metrics['window']}):"]
    if not metrics["services"]:
        lines.append("    no scraped service (a service serves metrics when it sets metrics_path)")
    for s in metrics["services"]:
        if s["error_ratio"] is None:
            lines.append(f"    {s['service']:<12} no requests")
            continue
        p95 = f"{s['p95_seconds'] * 1000:.0f} ms" if s["p95_seconds"] is not None else "-"
        lines.append(f"    {s['service']:<12} {s['requests_per_second']:7.2f} req/s   5xx {s['error_ratio']:7.2%}"
                     f"   p95 {p95}")
    return lines


def render_status(status: dict[str, Any]) -> str:
    serving = "serving" if status["serving"] else "NOT SERVING"
    lines = [f"{status['project']}/{status['env']}: {serving} at {status['url']}",
             f"  live color {status['live_color']}, revision {status['revision']}, version {status['version']}"]
    if status.get("database"):
        restored = f", restored from {status['restored_from']}" if status.get("restored_from") else ""
        lines.append(f"  database {status['database']}{restored}")
    lines += [f"  {r['name']:<40} {r['health']:<10} {r['endpoint']}" for r in status["replicas"]]
    lines += _render_metrics(status["metrics"])
    lines += ["  history:"] + [f"    r{h['revision']:<3} {h['version'][:12]:<12} {h['color']:<5} {h['outcome']:<12} "
                               f"{h['reason']}" for h in status["history"]]
    return "\n".join(lines)
