"""Shared fixtures: a sample host, a bound production run, the tree snapshot used to prove that
the host is byte-identical (content, mode, mtime, link targets) after an attempt."""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `import cases` from any test folder

from sandbox import _cache
from sandbox import workspace as workspace_mod
from sandbox.kernel import KernelSupport, probe
from sandbox.loader import load_policy
from sandbox.policy import Policy
from sandbox.samples import make_host
from sandbox.workspace import Workspace


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The per-user parse cache (sandbox._cache) of every run the tests start: in a temp folder."""
    before = os.environ.get(_cache.ENV_DIR)
    os.environ[_cache.ENV_DIR] = str(tmp_path_factory.mktemp("tv-sandbox-cache"))
    yield
    if before is None:
        os.environ.pop(_cache.ENV_DIR, None)
    else:
        os.environ[_cache.ENV_DIR] = before


RUN_ID = "R1"


def tree_snapshot(root: str | os.PathLike[str]) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root`` (root included): kind, content hash, mode, mtime, link target.
    Never follows a symlink, so a changed link target shows and a link out of the tree is not read."""
    root = os.fspath(root)
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = dirpath if name == "." else os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                out[rel] = ("file", digest, st.st_mode, st.st_mtime_ns, st.st_nlink)
            else:
                out[rel] = (
                    "dir" if stat.S_ISDIR(st.st_mode) else "other",
                    st.st_mode,
                    st.st_mtime_ns,
                )
    return out


@dataclass
class RunEnv:
    """A production (or audit/development) run of the sample host, bound but not started."""

    tmp_path: Path
    host: Path
    outside: Path
    ws: Workspace
    policy: Policy
    mode: str

    def path(self, p: str) -> str:
        """A case path with its tokens replaced; relative paths stay relative (to the workspace)."""
        return (
            p.replace("{host}", str(self.host))
            .replace("{run}", self.ws.run_dir)
            .replace("{tmp}", self.ws.tmp)
            .replace("{outside}", str(self.outside))
        )

    def abspath(self, p: str) -> str:
        return posixpath.join(self.ws.root, self.path(p))

    def redirected(self, p: str) -> str:
        """Where a redirected write of case path ``p`` must land (in the run folder's storage)."""
        if p.startswith("{host}/"):
            rel = p[len("{host}/") :]
        elif p.startswith("{run}/"):
            rel = posixpath.join(self.ws.layout.runs, RUN_ID, p[len("{run}/") :])
        else:
            rel = p
        rel = posixpath.normpath(rel)
        run_rel = posixpath.join(self.ws.layout.runs, RUN_ID)
        if rel == run_rel or rel.startswith(run_rel + "/"):
            rel = posixpath.relpath(rel, run_rel)
        return posixpath.join(self.ws.run_storage, rel)

    def protected_snapshot(self) -> dict[str, object]:
        return {"host": tree_snapshot(self.host), "outside": tree_snapshot(self.outside)}


def _prepare(tmp_path: Path, mode: str, profile: str) -> RunEnv:
    host = make_host(tmp_path / "host", run_id=RUN_ID)
    (host / "data" / "lakehouse" / "empty_dir").mkdir()
    outside = tmp_path / "outside"
    (outside / "empty_dir").mkdir(parents=True)
    (outside / "file.txt").write_text("outside\n")
    spec = load_policy(profile=profile)
    base = tmp_path / "wsbase"
    base.mkdir()
    ws = workspace_mod.create(host, RUN_ID, spec.layout, base_dir=base)
    data = Path(ws.run_storage) / "data"
    (data / "existing.txt").write_text("existing\n")
    os.symlink(ws.mount_targets["lakehouse"], data / "to_lake")
    os.symlink(os.path.join(ws.mount_targets["lakehouse"], "BINANCE_BTCUSDT_1d.csv"), data / "to_lake_file")
    os.symlink(outside, data / "to_outside")
    return RunEnv(tmp_path, host, outside, ws, ws.bind(spec, mode=mode, profile=profile), mode)


@pytest.fixture
def make_run_env(tmp_path: Path) -> Iterator[Callable[..., RunEnv]]:
    """Factory: ``make_run_env(mode="enforce", profile="production")`` (one per test)."""
    made: list[RunEnv] = []

    def make(mode: str = "enforce", profile: str = "production") -> RunEnv:
        sub = tmp_path / f"env{len(made)}"
        sub.mkdir()
        env = _prepare(sub, mode, profile)
        made.append(env)
        return env

    yield make
    for env in made:
        env.ws.remove()


@pytest.fixture
def run_env(make_run_env: Callable[..., RunEnv]) -> RunEnv:
    """A production, enforce-mode run of the sample host."""
    return make_run_env()


# -- the kernel layer's support (CI requires it: a missing feature fails there) ----------------

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


# -- `tv-sandbox run` as a user runs it -----------------------------------------------------------


def run_argv(
    host: str | os.PathLike[str], run_id: str, *cmd: str, options: tuple[str, ...] = ()
) -> list[str]:
    """``python -m sandbox run --root HOST --run-id ID [options] -- CMD...``."""
    return [
        sys.executable,
        "-m",
        "sandbox",
        "run",
        "--root",
        str(host),
        "--run-id",
        run_id,
        *options,
        "--",
        *cmd,
    ]


def sandbox_run(
    host: str | os.PathLike[str],
    run_id: str,
    *cmd: str,
    options: tuple[str, ...] = (),
    profile: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run :func:`run_argv` to the end; ``TV_PROFILE`` is ``profile`` (unset: production)."""
    env = {k: v for k, v in os.environ.items() if k != "TV_PROFILE"}
    if profile:
        env["TV_PROFILE"] = profile
    argv = run_argv(host, run_id, *cmd, options=options)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
