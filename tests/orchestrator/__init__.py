"""Orchestrator tests: a package, so this folder's conftest is ``orchestrator.conftest`` and does not
shadow tests/conftest.py (imported as ``conftest`` by the other test modules)."""
