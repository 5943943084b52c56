"""The pipeline: a meta profile's sleeves, one Ray actor each, every sleeve one sandboxed multi-step run.

The only package importing ``ray`` -- and only in the modules that need it, loaded on first use:
``import sandbox.orchestrator`` (and its pure :mod:`~sandbox.orchestrator.manifest`) imports no Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module defining it (loaded lazily: Ray costs ~1 s to import)
_LAZY = {
    "Manifest": "sandbox.orchestrator.manifest",
    "ManifestError": "sandbox.orchestrator.manifest",
    "MetaProfile": "sandbox.orchestrator.manifest",
    "Sleeve": "sandbox.orchestrator.manifest",
    "Step": "sandbox.orchestrator.manifest",
    "load_manifest": "sandbox.orchestrator.manifest",
    "PipelineRequest": "sandbox.orchestrator.pipeline",
    "PipelineResult": "sandbox.orchestrator.pipeline",
    "SleeveResult": "sandbox.orchestrator.pipeline",
    "prepare_pipeline": "sandbox.orchestrator.pipeline",
    "run_pipeline": "sandbox.orchestrator.pipeline",
    "SandboxedRun": "sandbox.orchestrator.workers",
    "sandboxed_run": "sandbox.orchestrator.workers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
