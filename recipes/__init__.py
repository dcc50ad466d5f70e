"""Accelerate recipes (scripts run with `accelerate launch`); importable as `recipes.<name>` from the repository root for tests."""
