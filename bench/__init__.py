"""Benchmarks (not tests); each module is a documented command, figures in docs/benchmarks.md."""
