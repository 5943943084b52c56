"""Fixtures for the kernel-layer tests: what the machine supports, and folders to play with
(helpers to run sandboxed commands are in ``kernel_helpers``).

A test names the kernel features it needs with ``@pytest.mark.kernel("landlock", "overlay")``
(no arguments: Landlock and a mount namespace) and asks for the ``kernel_support`` fixture. When a
feature is missing it is skipped with the probe's reason -- or fails, when
``TV_SANDBOX_REQUIRE_KERNEL=1`` (CI): there a missing layer is a broken machine, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.kernel import KernelSupport, probe

DEFAULT_FEATURES = ("landlock", "mount_namespace")


@pytest.fixture(scope="session")
def _probed() -> KernelSupport:
    return probe()


def require_kernel(support: KernelSupport, *features: str) -> None:
    """Skip (or, with TV_SANDBOX_REQUIRE_KERNEL=1, fail) unless every feature is supported."""
    missing = {f: support.reasons.get(f, "unsupported") for f in features if not support.has(f)}
    if not missing:
        return
    why = "; ".join(f"{f}: {r}" for f, r in missing.items())
    if os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1":
        pytest.fail(f"TV_SANDBOX_REQUIRE_KERNEL=1 but the kernel layer is incomplete: {why}")
    pytest.skip(reason=f"kernel feature unavailable here: {why}")


@pytest.fixture
def kernel_support(request: pytest.FixtureRequest, _probed: KernelSupport) -> KernelSupport:
    """The probed :class:`KernelSupport`, after checking the features the test's ``kernel`` marker
    names (default: Landlock and a mount namespace)."""
    marker = request.node.get_closest_marker("kernel")
    features = tuple(marker.args) if marker is not None and marker.args else DEFAULT_FEATURES
    require_kernel(_probed, *features)
    return _probed


@pytest.fixture
def tree(tmp_path: Path) -> Callable[..., Path]:
    """``tree("name", {"a.txt": "text", "sub/b.txt": "more"})``: a folder of files under tmp_path."""

    def make(name: str, files: dict[str, str] | None = None) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True)
        for rel, text in (files or {}).items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        return root

    return make
