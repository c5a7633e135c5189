"""Benchmarks run with `make bench` (timed) and, in CI, once each without timing (`--benchmark-disable`)."""
