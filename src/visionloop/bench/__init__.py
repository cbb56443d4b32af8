"""Benchmarks: the model-only ceiling (and, later, load generation against a server)."""
