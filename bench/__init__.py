"""Benchmark harness: kiq against other Python job systems on one Redis (see bench/README.md)."""
