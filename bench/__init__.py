"""Benchmarks: one script per benchmark, JSON out."""
