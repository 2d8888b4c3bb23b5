"""Helpers shared by the test suite and the benchmarks (no test-only behaviour in the server)."""
