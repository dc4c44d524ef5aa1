"""Benchmarks: `python -m mufm.bench.NAME` prints figures and ratios measured in one process."""
