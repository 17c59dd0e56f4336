"""Benchmarks: each module records ratios against a baseline run in the same run."""
