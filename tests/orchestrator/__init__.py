"""Tests of sandbox.orchestrator (a package, so its conftest never shadows tests/conftest.py)."""
