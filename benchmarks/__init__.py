"""Benchmarks, one folder per question; run from the repository root as modules, e.g.
``python -m benchmarks.routing.pools``. Shared helpers: ``benchmarks.common``. Results: RESULTS.md."""
