"""Prefect flows of sunday-release: orchestration only (which tasks, in what order, how parallel)."""

from flows._heartbeats import install as _install_heartbeats

_install_heartbeats()
