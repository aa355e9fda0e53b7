"""Prefect tasks of sunday-release: one module per pipeline stage."""
