"""tv-sandbox's pytest plugin (entry point ``pytest11``; loaded only when pytest runs): test that
your scripts respect the sandbox's layout, on a fake host, with the policy the sandbox enforces.

Fixtures (built on pyfakefs's ``fs``):

- ``sandbox_host`` -- a :class:`SandboxHost`: a fake host tree (lakehouse, the exports of a run id,
  the runs folder, this run's folder) with the layout of the policy, filled from a dict
  (:meth:`SandboxHost.add`) or copied from a real folder (:meth:`SandboxHost.copy_from`).
- ``sandbox_run`` -- ``sandbox_run(target, *args, mode=..., env=...)`` runs a script path, a
  ``module:function`` or a callable on that host, with the run's environment (``TV_RUN_DIR``,
  ``SELECTION_AUDIT``, ``TV_SCAN_DIR``...), and returns a :class:`RunResult`: every read and write
  with the policy's decision and the caller's file:line, the run folder's files, and assertions
  such as :meth:`RunResult.assert_only_run_dir_writes`.

Marker: ``@pytest.mark.sandbox_policy("production" | "development" | "path/to/policy.toml")``.

The fake host's root is also a real, empty temp folder, and the real process runs there while the
target runs: a write that goes past pyfakefs (pyarrow's C++ writer, a child process) lands in that
folder, never in your project, and is reported in ``RunResult.native_writes``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from sandbox.audit.trace import Tracer, add_library_paths  # before any fake fs: it keeps the real open
from sandbox.policy import Action, Op, Policy, PolicySpec

__all__ = ["RunResult", "SandboxHost"]

RUN_ID = "TEST"
_OK_RULES = frozenset({"run-folder", "temp-dir", "device"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sandbox_policy(name_or_file): the policy of sandbox_host/sandbox_run: production (default), "
        "development, or a policy file",
    )


def _load_spec(which: str) -> PolicySpec:
    from sandbox.loader import load_policy
    from sandbox.policy import PROFILES

    if which in PROFILES:
        return load_policy(profile=which)
    import tomllib

    with open(which, "rb") as fh:
        profile = tomllib.load(fh).get("policy", {}).get("profile", "production")
    return load_policy(which, profile=profile if profile in PROFILES else "production")


class SandboxHost:
    """A fake host (see the module docstring). ``root`` is its top folder; every layout folder is
    an attribute (``lakehouse``, ``exports``, ``scan_dir``, ``runs``, ``run_dir``, ``tmp``)."""

    def __init__(self, fs: Any, root: str, spec: PolicySpec, run_id: str = RUN_ID) -> None:
        self.fs, self.root, self.spec, self.run_id = fs, root, spec, run_id
        lay = spec.layout
        self.lakehouse = os.path.join(root, lay.lakehouse)
        self.exports = os.path.join(root, lay.exports)
        self.scan_dir = os.path.join(self.exports, run_id)
        self.runs = os.path.join(root, lay.runs)
        self.run_dir = os.path.join(self.runs, run_id)
        self.tmp = os.path.join(root, ".tmp")
        folders = [
            self.lakehouse,
            self.scan_dir,
            self.tmp,
            *(os.path.join(self.run_dir, f) for f in lay.run_folders),
        ]
        for d in folders:
            fs.makedirs(d, exist_ok=True)
        with self.real():
            for d in folders:
                os.makedirs(d, exist_ok=True)

    def real(self) -> Any:
        """Context manager: the real filesystem for a while (pyfakefs paused)."""
        import contextlib

        @contextlib.contextmanager
        def paused() -> Iterator[None]:
            self.fs.pause()
            try:
                yield
            finally:
                self.fs.resume()

        return paused()

    def policy(self, mode: str = "enforce") -> Policy:
        """The policy bound to this host's run (the host plays the run's workspace)."""
        return self.spec.bind(
            host=self.root, workspace=self.root, run_id=self.run_id, mode=mode, temp_dirs=(self.tmp,)
        )

    def env(self) -> dict[str, str]:
        """The run environment a sandboxed step gets (the names of :mod:`sandbox.workspace`)."""
        data = os.path.join(self.run_dir, "data")
        return {
            "TV_RUN_DIR": self.run_dir,
            "TV_RUN_ID": self.run_id,
            "TV_PROFILE": self.spec.profile,
            "CANDIDATES_RAW": os.path.join(data, "portfolio_candidates_raw.json"),
            "CANDIDATES_SELECTED": os.path.join(data, "portfolio_candidates.json"),
            "SELECTION_AUDIT": os.path.join(data, "selection_audit.json"),
            "TV_SCAN_DIR": self.scan_dir,
            "TMPDIR": self.tmp,
        }

    def add(self, files: Mapping[str, str | bytes]) -> SandboxHost:
        """Create ``files`` (host-relative path -> content), in the fake host and in its real twin
        (so native readers such as pyarrow find them too)."""
        for rel, content in files.items():
            path = os.path.join(self.root, rel)
            mode = "wb" if isinstance(content, bytes) else "w"
            self.fs.create_file(path, contents=content)
            with self.real():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, mode) as fh:
                    fh.write(content)
        return self

    def copy_from(self, folder: str | os.PathLike[str], to: str = "") -> SandboxHost:
        """Copy a real folder into the host (at host-relative ``to``; default: the root)."""
        import shutil

        target = os.path.join(self.root, to)
        self.fs.add_real_directory(os.fspath(folder), read_only=False, target_path=target)
        with self.real():
            shutil.copytree(os.fspath(folder), target, dirs_exist_ok=True)
        return self

    def files(self, under: str = "") -> list[str]:
        """Host-relative paths of the files under ``under`` in the fake host."""
        out = []
        for dirpath, _dirs, names in os.walk(os.path.join(self.root, under)):
            out += [os.path.relpath(os.path.join(dirpath, n), self.root) for n in names]
        return sorted(out)


class RunResult:
    """What one ``sandbox_run`` did. ``events``: dicts with ``op``, ``path``, ``resolved``,
    ``action``, ``rule``, ``target``, ``reason``, ``hint``, ``file``, ``line``."""

    def __init__(
        self, host: SandboxHost, policy: Policy, events: list[dict[str, Any]], native: list[str], code: int
    ):
        self.host, self.policy, self.events = host, policy, events
        self.native_writes = native  #: host-relative real files written past pyfakefs
        self.exit_code = code

    @property
    def reads(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["op"] == Op.READ.value]

    @property
    def writes(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["op"] != Op.READ.value]

    @property
    def denials(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["action"] == Action.DENY.value]

    @property
    def redirects(self) -> list[dict[str, Any]]:
        return [e for e in self.writes if e["action"] == Action.REDIRECT.value]

    @property
    def run_dir(self) -> str:
        return self.host.run_dir

    @property
    def files(self) -> list[str]:
        """The run folder's files (relative to it), faked and written natively."""
        rel_run = os.path.relpath(self.run_dir, self.host.root) + os.sep
        found = [p for p in self.host.files() + self.native_writes if p.startswith(rel_run)]
        return sorted({p[len(rel_run) :] for p in found})

    def outside_run_dir(self) -> list[str]:
        """One line per write that did not go straight into the run folder or the temp dir."""
        bad = [
            f"{e['file']}:{e['line']}: {e['op']} {e['path']} -> {e['action']} ({e['rule']})"
            for e in self.writes
            if not (e["action"] == Action.ALLOW.value and e["rule"] in _OK_RULES)
        ]
        for rel in self.native_writes:
            d = self.policy.decide(os.path.join(self.host.root, rel), Op.WRITE)
            if not (d.action is Action.ALLOW and d.rule in _OK_RULES):
                bad.append(f"<native or child process>: write {rel} -> {d.action} ({d.rule}), past pyfakefs")
        return bad

    def assert_only_run_dir_writes(self) -> None:
        """Fail, listing each, when a write landed anywhere but ``$TV_RUN_DIR`` (or ``$TMPDIR``)."""
        bad = self.outside_run_dir()
        if bad:
            raise AssertionError("writes outside $TV_RUN_DIR:\n  " + "\n  ".join(bad))

    def assert_no_native_writes(self) -> None:
        """Fail when anything reached the real disk past pyfakefs (native code, child processes)."""
        if self.native_writes:
            raise AssertionError(
                "written past pyfakefs (native code or a child process): " + ", ".join(self.native_writes)
            )


@pytest.fixture
def sandbox_host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SandboxHost:
    """A fake host with the policy's layout (see :class:`SandboxHost`); the policy comes from the
    ``sandbox_policy`` marker (default: production)."""
    marker = request.node.get_closest_marker("sandbox_policy")
    which = str(marker.args[0]) if marker is not None and marker.args else "production"
    spec = _load_spec(which)
    root = os.path.realpath(str(tmp_path_factory.mktemp("sandbox_host")))
    fs = request.getfixturevalue("fs")
    add_library_paths(fs)
    return SandboxHost(fs, root, spec)


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _add_beside(host: SandboxHost, folder: str) -> None:
    """Put the script's folder in the fake filesystem (it may read its neighbours), without what
    would overlap the fake host (pytest's temp folders may sit inside the script's folder)."""
    with host.real():
        entries = [(n, os.path.isdir(os.path.join(folder, n))) for n in os.listdir(folder)]
    for name, is_dir in entries:
        path = os.path.join(folder, name)
        if host.fs.exists(path) or host.root == path or host.root.startswith(path + os.sep):
            continue
        if is_dir:
            host.fs.add_real_directory(path, read_only=False)
        else:
            host.fs.add_real_file(path, read_only=False)


def _call(target: str | Callable[[], Any], argv: list[str]) -> None:
    """Run a callable, ``path.py`` (as ``__main__``), ``path.py:func``, ``module:func`` or
    ``module`` (its ``main()``)."""
    import runpy

    if callable(target):
        target()
        return
    where, _, func = target.rpartition(":") if ":" in target else (target, "", "")
    if not func and not where.endswith(".py"):
        func = "main"  # a module: its main()
    sys.argv = [where, *argv]
    if where.endswith(".py"):  # as `python script.py` does: its folder first on the import path
        sys.path.insert(0, os.path.dirname(where))
    if not func:
        runpy.run_path(where, run_name="__main__")
    elif where.endswith(".py"):
        runpy.run_path(where, run_name="__tv_sandbox_test__")[func]()
    else:
        import importlib

        getattr(importlib.import_module(where), func)()


@pytest.fixture
def sandbox_run(sandbox_host: SandboxHost) -> Callable[..., RunResult]:
    """``sandbox_run(target, *argv, mode="enforce", env=None) -> RunResult``: run a script path,
    ``"module:function"``, a module (its ``main``) or a callable on ``sandbox_host`` (cwd = the host,
    the run environment set) and record what it did."""
    host = sandbox_host

    def run(
        target: str | Callable[[], Any],
        *argv: str,
        mode: str = "enforce",
        env: Mapping[str, str] | None = None,
    ) -> RunResult:
        policy = host.policy(mode)
        if isinstance(target, str) and target.partition(":")[0].endswith(".py"):
            with host.real():  # relative to the test's real cwd, as the user wrote it
                script, colon, func = target.partition(":")
                target = os.path.abspath(script) + colon + func
            _add_beside(host, os.path.dirname(target.partition(":")[0]))
        new_env = {**host.env(), **(env or {})}
        old_env = {k: os.environ.get(k) for k in new_env}
        old_argv, old_path, code = list(sys.argv), list(sys.path), 0
        with host.real():
            real_cwd = os.getcwd()
            before = _snapshot(host.root)
            os.chdir(host.root)  # the real process too: a native relative write lands in the host's twin
        fake_cwd = os.getcwd()
        os.chdir(host.root)
        os.environ.update(new_env)
        try:
            with Tracer(host.fs, policy) as tracer:
                try:
                    _call(target, list(argv))
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv, sys.path[:] = old_argv, old_path
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            os.chdir(fake_cwd)
            with host.real():
                os.chdir(real_cwd)
                after = _snapshot(host.root)
        native = sorted(p for p in after if after[p] != before.get(p))
        return RunResult(host, policy, tracer.events, native, code)

    return run
