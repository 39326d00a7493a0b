"""Benchmarks: measured comparisons and their reports."""
