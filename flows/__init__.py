"""Prefect flows of sunday-release: orchestration only (which tasks, in what order, how parallel)."""
