"""Benchmarks (scripts run as ``python benchmarks/<name>.py``); importable as ``benchmarks.<name>`` from the
repository root for tests."""
