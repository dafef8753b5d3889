"""The load tests, run as modules from the repository root: `python -m bench.fanout ...` (see README.md)."""
