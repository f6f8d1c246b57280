"""Benchmarks and peer drivers: scripts that print numbers (not tests, not packaged). Run from the repo root,
e.g. `python -m bench.web` (make bench-web) or `python -m bench.birefnet --config rmbg-2.0 --size 1024`."""
