"""Benchmarks of the project's fast paths against the plain way of doing the same thing (issue #5).

`python -m bench.run [--quick] [--only NAME] [--out bench/results.json]` measures every comparison side
by side in one process run and writes JSON plus a markdown section to `bench/RESULTS.md`.
"""
