"""Module images (sandbox._image): real runs build them, a step loads its guard from one and the
next launcher the rest of its run from the other, and anything that does not match the sources --
an edited module, another package, a broken file -- leaves the modules to load from the package
as always, still guarded."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunEnv, sandbox_run

from sandbox import _image
from sandbox._lazy import parse_image
from sandbox.guard import child_env
from sandbox.samples import make_host

# What a step reports: how its guard's modules were loaded, which it loaded, and the guard at work.
_PROBE = (
    "import sys\n"
    "mods = [m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.')]\n"
    "print('loader', type(sys.modules['sandbox.policy'].__loader__).__name__)\n"
    "print('modules', ' '.join(mods))\n"
    "print('finders', ' '.join(type(f).__name__ for f in sys.meta_path))\n"
    "import sandbox.policy as p\n"
    "print('filename', p.Policy.decide.__code__.co_filename == p.__file__ and p.__file__.startswith('/'))\n"
    "from importlib.util import cache_from_source\n"
    "print('cached', p.__cached__ == cache_from_source(p.__file__))\n"
    "print('docs', p.__doc__ is not None, p.Policy.decide.__doc__ is not None)\n"
    "try:\n"
    "    open('data/lakehouse/x.json', 'w')\n"
    "except PermissionError as e:\n"
    "    print('denied', 'lakehouse-read-only' in str(e))\n"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TV_SANDBOX_CACHE_DIR", str(d))
    return d


def _probe(host: Path, run_id: str) -> dict[str, str]:
    r = sandbox_run(host, run_id, sys.executable, "-c", _PROBE)
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def test_a_run_builds_the_image_and_the_next_steps_load_their_guard_from_it(
    tmp_path: Path, cache: Path
) -> None:
    host = make_host(tmp_path / "host")
    first = _probe(host, "R1")  # no image yet: the package as always; the launcher builds it meanwhile
    assert first["loader"] == "SourceFileLoader"
    image = _image.path()
    assert image is not None and Path(image).parent == cache and os.path.isfile(image)
    second = _probe(host, "R2")
    assert second["loader"] == "Image"
    assert second["denied"] == "True"  # the same guard, explaining the same denial
    assert second["filename"] == "True"  # tracebacks name the package's files, as without it
    assert second["cached"] == first["cached"] == "True"  # and __cached__ is the path finder's
    assert first["docs"] == "True True" and second["docs"] == "False False"  # as python -OO has it
    assert "Image" not in second["finders"]  # gone before the user's first import
    # the image holds exactly what a guarded interpreter loads of the package after the package
    guard = sorted(_image.GUARD)
    assert sorted(second["modules"].split()) == guard
    assert sorted(first["modules"].split()) == guard


def _rewrite(image: str, change: object) -> None:
    """Apply ``change`` to the image's entries: ``[name, origin, is_pkg, mtime_ns, size, code, cached]``."""
    with open(image, "rb") as fh:
        fmt, version, keys, block = parse_image(fh.read())
    entries = [[*k[:5], bytes(block[k[5] : k[5] + k[6]]), k[7]] for k in keys]
    change(entries)  # type: ignore[operator]
    keys, out = [], b""
    for e in entries:
        keys.append((*e[:5], len(out), len(e[5]), e[6]))  # type: ignore[arg-type]
        out += e[5]  # type: ignore[operator]
    header = marshal.dumps((fmt, version, tuple(keys)))
    with open(image, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header + out)


def _guarded_child(run_env: RunEnv, image: str | None) -> dict[str, str]:
    """A guarded Python child started straight from :func:`child_env` (no launcher, so nothing
    repairs the image meanwhile)."""
    policy_file = Path(run_env.ws.run_storage, "config", "policy.json")
    policy_file.write_text(json.dumps(run_env.policy.to_dict()))
    base = {k: v for k, v in os.environ.items() if not k.startswith("TV_SANDBOX_")}
    env = child_env(base, policy_file=str(policy_file), events_file=None, overlay=False, image=image)
    r = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        cwd=run_env.ws.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


@pytest.mark.parametrize("damage", [None, "stale", "foreign", "dotdot", "truncated", "not-marshal", "missing"])
def test_an_image_that_does_not_match_the_package_is_not_used(
    tmp_path: Path, cache: Path, run_env: RunEnv, damage: str | None
) -> None:
    """A stale entry (a source edited since: another size), an entry outside the package the
    step's sitecustomize belongs to (its code never runs) or named through "..", a truncated,
    foreign or missing file: the child loads the package as always -- and is guarded either way."""
    assert _image.refresh()
    image = _image.path()
    assert image is not None
    if damage == "stale":

        def change(entries: list[list[object]]) -> None:
            entries[7][4] = int(entries[7][4]) + 1  # type: ignore[call-overload]

        _rewrite(image, change)
    elif damage == "foreign":
        evil = tmp_path / "evil.py"
        evil.write_text("raise SystemExit('evil code ran')\n")
        st = evil.stat()
        code = marshal.dumps(compile(evil.read_text(), str(evil), "exec"))

        def change(entries: list[list[object]]) -> None:
            entries[7][1:6] = [str(evil), False, st.st_mtime_ns, st.st_size, code]

        _rewrite(image, change)
    elif damage == "dotdot":  # a path through "..": the package's own file, but not by its name

        def change(entries: list[list[object]]) -> None:
            origin = str(entries[7][1])
            entries[7][1] = os.path.join(os.path.dirname(origin), "guard", "..", os.path.basename(origin))

        _rewrite(image, change)
    elif damage == "truncated":
        data = Path(image).read_bytes()
        Path(image).write_bytes(data[: len(data) // 2])
    elif damage == "not-marshal":
        Path(image).write_bytes(b"#!/bin/sh\n")
    elif damage == "missing":
        os.unlink(image)
    out = _guarded_child(run_env, image)
    assert out["loader"] == ("Image" if damage is None else "SourceFileLoader")
    assert out["denied"] == "True"


def test_refresh_rebuilds_what_is_stale_and_keeps_what_is_fresh(cache: Path) -> None:
    assert _image.refresh()
    image = _image.path()
    assert image is not None
    before = os.stat(image).st_mtime_ns
    assert _image.refresh()
    assert os.stat(image).st_mtime_ns == before  # fresh: left alone

    def change(entries: list[list[object]]) -> None:
        entries[0][3] = 0

    _rewrite(image, change)
    assert _image.refresh()
    with open(image, "rb") as fh:
        _, _, keys, _ = parse_image(fh.read())
    assert keys[0][3] == os.stat(keys[0][1]).st_mtime_ns

    whole = Path(image).read_bytes()  # a header intact over a truncated block: rebuilt too
    Path(image).write_bytes(whole[:-1])
    assert _image.refresh()
    assert Path(image).read_bytes() == whole


def test_without_a_cache_there_is_no_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TV_SANDBOX_CACHE_DIR", "off")
    assert _image.path() is None and _image.current() is None and not _image.refresh()


# A launcher that runs a step, then says how its modules were loaded and which the run loaded --
# the early keeper's (a fork of it) included, as that keeper imports them.
_LAUNCHER = (
    "import sys\n"
    "from sandbox import cli\n"
    "code = cli.main(sys.argv[1:])\n"
    "ran = set(sys.modules)\n"
    "import sandbox.kernel._keeper\n"
    "mods = {m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.')}\n"
    "print('loader', type(sys.modules['sandbox.policy'].__loader__).__name__)\n"
    "print('kernel', type(sys.modules['sandbox.kernel._keeper'].__loader__).__name__)\n"
    "print('modules', ' '.join(sorted(mods)))\n"
    "print('code', code)\n"
)


def _launch(host: Path, run_id: str) -> dict[str, str]:
    argv = ["run", "--root", str(host), "--run-id", run_id, "--", sys.executable, "-c", "pass"]
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert out["code"] == "0", r.stderr
    return out


def test_a_run_builds_the_launchers_image_and_the_next_run_loads_from_it(tmp_path: Path, cache: Path) -> None:
    host = make_host(tmp_path / "host")
    first = _launch(host, "R1")
    assert first["loader"] == "SourceFileLoader"
    image = _image.path("launcher")
    assert image is not None and os.path.isfile(image)
    second = _launch(host, "R2")
    assert second["loader"] == "Image" and second["kernel"] == "Image"
    # the image holds exactly what a run loads after the modules that install it
    before = {"sandbox", "sandbox._lazy", "sandbox.errors", "sandbox._denied", "sandbox.cli", "sandbox._image", "sandbox._cache"}
    assert set(second["modules"].split()) == before | set(_image.LAUNCHER)

    def change(entries: list[list[object]]) -> None:  # a source edited since the image was built
        entries[3][4] = int(entries[3][4]) + 1  # type: ignore[call-overload]

    _rewrite(image, change)
    assert _launch(host, "R3")["loader"] == "SourceFileLoader"  # and it rebuilt the image meanwhile
    assert _launch(host, "R4")["loader"] == "Image"


def test_the_launcher_takes_no_code_from_a_cache_others_may_write(tmp_path: Path, cache: Path) -> None:
    """A cache folder shared with other users (TV_SANDBOX_CACHE_DIR pointed at one) feeds the
    launcher no code: the image is used only when it and its folder are ours alone."""
    host = make_host(tmp_path / "host")
    _launch(host, "R1")
    image = _image.path("launcher")
    assert image is not None and os.path.isfile(image)
    assert _launch(host, "R2")["loader"] == "Image"
    os.chmod(cache, 0o777)
    assert _launch(host, "R3")["loader"] == "SourceFileLoader"
    os.chmod(cache, 0o700)
    os.chmod(image, 0o666)
    assert _launch(host, "R4")["loader"] == "SourceFileLoader"
