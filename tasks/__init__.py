"""Benchmarks: one module each, a small declarative task definition plus its loader."""
