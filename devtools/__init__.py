"""Tooling for tests, the demo and the benchmarks only; not part of the installed product."""
