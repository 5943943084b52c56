"""The per-user cache's upkeep (sandbox._cache_prune, `tv-sandbox cache`): on real files in a temp
cache folder, what a prune removes -- images of package folders that are gone or of another
format, entries unused for 30 days, unfinished writes -- and what it never touches: the running
package's entries, other files, links and what they point at. A launcher prunes at most once a
day; the CLI shows, prunes and clears, in one line when it cannot."""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sandbox_run

from sandbox import _cache, _cache_prune, _image, native
from sandbox._cache_prune import GONE, UNFINISHED, UNUSED, Shared
from sandbox._lazy import IMAGE_FORMAT
from sandbox.cli import main
from sandbox.errors import EXIT_SANDBOX
from sandbox.samples import make_host

DAY = 86400.0
KEY = "0123456789abcdef"  # a fingerprint, for names of entries whose content does not matter


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv(_cache.ENV_DIR, str(d))
    return d


def _package(root: Path) -> Path:
    """A package folder of tv-sandbox elsewhere (a clone, a worktree): what an image names."""
    pkg = root / "sandbox"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    return pkg


def _image_of(
    cache: Path, package: Path, kind: str = "guard", fmt: int = IMAGE_FORMAT, modules: tuple[str, ...] = ()
) -> Path:
    """An image file of ``kind`` as sandbox._image lays it out, built by a package at ``package``
    (of ``modules``, by default the first of the kind's)."""
    keys, block = [], b""
    for name in modules or _image.KINDS[kind][:4]:
        source = _image._source(name)  # this package's layout, placed in the other folder
        origin = os.path.join(package, os.path.relpath(source, _image._PACKAGE))
        code = marshal.dumps(compile("", origin, "exec"))
        keys.append((name, origin, source.endswith("__init__.py"), 1, 0, len(block), len(code), origin + "c"))
        block += code
    header = marshal.dumps((fmt, sys.version, tuple(keys)))
    key = _cache.fingerprint(os.fsencode(str(package)))
    path = cache / f"{kind}-{sys.implementation.cache_tag}-{key}.marshal"
    path.write_bytes(len(header).to_bytes(8, "little") + header + block)
    return path


def _age(path: Path, days: float, *, atime_days: float | None = None) -> None:
    """Last used (atime) and written (mtime) ``days`` ago (atime: ``atime_days`` when given)."""
    now = time.time()
    a = now - (days if atime_days is None else atime_days) * DAY
    os.utime(path, (a, now - days * DAY), follow_symlinks=False)


def _prune(cache: Path, **kw: object) -> dict[str, str]:
    return {os.path.basename(p): why for p, _, why in _cache_prune.prune(str(cache), **kw)}  # type: ignore[arg-type]


def test_images_of_a_package_folder_that_is_gone_are_removed(tmp_path: Path, cache: Path) -> None:
    clone = _package(tmp_path / "clone")
    guard, launcher = _image_of(cache, clone, "guard"), _image_of(cache, clone, "launcher")
    assert _prune(cache) == {}  # the folder is there: its images serve it
    shutil.rmtree(tmp_path / "clone")
    assert _prune(cache) == {guard.name: GONE, launcher.name: GONE}
    assert not guard.exists() and not launcher.exists()


@pytest.mark.parametrize("first", ["sandbox._record", "sandbox.kernel", "sandbox.kernel.plan"])
def test_a_folder_left_without_the_package_counts_as_gone(tmp_path: Path, cache: Path, first: str) -> None:
    """An image need not name `sandbox/__init__.py` (the launcher's does not): the folder is found
    from its first module's source and depth -- a subpackage's `__init__.py` one folder deeper."""
    clone = _package(tmp_path / "clone")
    image = _image_of(cache, clone, "launcher", modules=(first, "sandbox.policy"))
    assert _prune(cache) == {}
    (clone / "__init__.py").unlink()  # e.g. a venv's site-packages after an uninstall: __pycache__ left
    assert _prune(cache) == {image.name: GONE}


def test_the_running_packages_entries_are_kept_whatever_their_times(cache: Path) -> None:
    assert _image.refresh("guard") and _image.refresh("launcher")
    shim = Path(native.library(str(cache)))
    shim.parent.mkdir()
    shim.write_bytes(b"\x7fELF")
    ours = {Path(p) for p in _cache_prune.in_use()}
    assert ours == {Path(_image.path("guard") or ""), Path(_image.path("launcher") or ""), shim}
    for p in ours:
        _age(p, 400)
    assert _prune(cache, keep=_cache_prune.in_use()) == {}
    assert all(p.exists() for p in ours)
    # without the keep, the same entries are old enough to go: the keep is what saved them
    assert set(_prune(cache, dry_run=True)) == {p.name for p in ours}


def test_a_prune_reads_an_images_header_without_using_the_image(tmp_path: Path, cache: Path) -> None:
    """Reading the header must not renew the atime (relatime would, once a day), else no image of
    a live folder would ever look unused."""
    image = _image_of(cache, _package(tmp_path / "clone"))
    _age(image, 20, atime_days=10)
    before = image.stat().st_atime_ns
    assert _prune(cache) == {}
    assert image.stat().st_atime_ns == before


def test_images_it_cannot_read_are_left_to_the_rule_of_disuse(tmp_path: Path, cache: Path) -> None:
    """Another format's image may serve another installed tv-sandbox sharing the cache: removed
    only once unused for 30 days, as are garbage and truncated files named like images."""
    clone = _package(tmp_path / "clone")
    tag = sys.implementation.cache_tag
    older = _image_of(cache, clone, "launcher", fmt=IMAGE_FORMAT - 1)
    garbage = cache / f"guard-{tag}-{KEY}.marshal"
    garbage.write_bytes(b"not an image at all")
    truncated = cache / f"guard-{tag}--123456789abcdef.marshal"  # a negative key
    truncated.write_bytes((5000).to_bytes(8, "little") + b"\0" * 100)
    first8 = cache / f"launcher-{tag}-03bac5d8.marshal"  # the first images' 8-digit keys
    first8.write_bytes(b"\xff" * 64)
    assert _prune(cache) == {}
    for p in (older, garbage, truncated, first8):
        _age(p, 31)
    assert _prune(cache) == {p.name: UNUSED for p in (older, garbage, truncated, first8)}


def test_a_crafted_header_costs_the_prune_nothing(tmp_path: Path, cache: Path) -> None:
    """An image's bytes are whoever wrote the file's: the header is read by hand, every count
    checked against the bytes there are (marshal would allocate what a 13-byte header asks: ~2 GB
    here), and an origin no system path can be (a NUL, a lone surrogate) stops nothing."""
    tag = sys.implementation.cache_tag
    bomb = cache / f"guard-{tag}-{KEY}.marshal"
    body = b"(" + (2**28).to_bytes(4, "little") + b"\0" * 8
    bomb.write_bytes(len(body).to_bytes(8, "little") + body)
    for i, origin in enumerate(("/x\0/sandbox/__init__.py", "/x\ud800/sandbox/__init__.py")):
        keys = (("sandbox", origin, True, 1, 0, 0, 0, ""),)
        header = marshal.dumps((IMAGE_FORMAT, sys.version, keys))
        (cache / f"launcher-{tag}-{i:016x}.marshal").write_bytes(len(header).to_bytes(8, "little") + header)
    gone = _image_of(cache, tmp_path / "gone" / "sandbox")
    stale = [cache / f"toml-{KEY}-{n}.marshal.42.tmp" for n in range(20)]
    for p in stale:
        p.write_bytes(b"partial")
        _age(p, 3)
    t = time.perf_counter()
    removed = _prune(cache)
    assert time.perf_counter() - t < 5
    assert removed == {gone.name: GONE, **{p.name: UNFINISHED for p in stale}}
    assert bomb.exists()


def test_files_of_a_user_only_named_alike_are_not_entries(tmp_path: Path, cache: Path) -> None:
    """Only the exact names the cache writes: a user's own files in a folder pointed at as the
    cache (``TV_SANDBOX_CACHE_DIR=$HOME/data``) stay, however old."""
    mine = [
        cache / "results-2024-05.marshal",
        cache / "guard-v1-1.marshal",
        cache / "data-cafe-2.marshal",
        cache / f"guard-cpython-311-{KEY}0.marshal",  # 17 digits
        cache / f"toml-{KEY}-١٢.marshal",  # Arabic-Indic digits
        cache / f"parse-{KEY}-12.marshal",  # a kind the cache does not write
    ]
    for p in mine:
        p.write_bytes(b"mine")
        _age(p, 400)
    assert _cache_prune.usage(str(cache)) == {}
    assert _prune(cache) == {} and _cache_prune.clear(str(cache)) == []
    assert all(p.exists() for p in mine)


def test_a_name_hard_linked_elsewhere_is_not_an_entry(tmp_path: Path, cache: Path) -> None:
    """A file with another link (another user's link into a shared folder, to a file the victim
    can write) is never read, removed, or stamped through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "world.txt"
    victim.write_bytes(b"keep")
    _age(victim, 400)
    before = victim.stat()
    os.link(victim, cache / f"toml-{KEY}-12.marshal")
    os.link(victim, cache / _cache.PRUNE_STAMP)
    assert _prune(cache) == {} and _cache_prune.clear(str(cache)) == []
    assert not _cache_prune.auto()  # the stamp is not ours alone: neither dated nor a prune
    after = victim.stat()
    assert victim.read_bytes() == b"keep" and after.st_mtime_ns == before.st_mtime_ns and after.st_nlink == 3


def test_a_cache_folder_others_may_write_is_neither_used_nor_pruned(tmp_path: Path, cache: Path) -> None:
    """Entries another user could have written are not trusted -- a policy's parse (a development
    parse planted under production's bytes), the launcher's and the guard's code, the shim every
    step preloads -- and nothing in such a folder is removed or stamped."""
    raw = b"[policy]\nname = 'x'\n"
    _cache.store("toml", raw, {"planted": True})
    assert _image.refresh("guard") and _image.refresh("launcher")
    assert _cache.lookup("toml", raw) == {"planted": True} and _image.current() is not None
    gone = _image_of(cache, tmp_path / "gone" / "sandbox")
    cache.chmod(0o777)
    assert _cache.lookup("toml", raw) is None
    assert _image.current() is None and not _image.install()
    assert not _cache.prune_due() and not _cache_prune.auto()
    with pytest.raises(Shared, match="not this user's alone"):
        _cache_prune.prune(str(cache))
    with pytest.raises(Shared):
        _cache_prune.clear(str(cache))
    assert gone.exists() and not (cache / _cache.PRUNE_STAMP).exists()
    r = _cli(str(cache), "cache", "prune")
    assert r.returncode == EXIT_SANDBOX and r.stderr.startswith(f"tv-sandbox: error: the per-user cache {cache} is not")
    cache.chmod(0o700)
    assert _cache.lookup("toml", raw) == {"planted": True}
    # the shim: its folder or the file writable by others -> not taken, with the reason
    lib = Path(native.library(str(cache)))
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    lib.chmod(0o666)
    assert native.shim_path(build=False) is None
    assert "writable by other users" in (native.unavailable_reason() or "")
    lib.chmod(0o644)
    assert native.shim_path(build=False) == str(lib)


def test_entries_unused_for_30_days_are_removed(tmp_path: Path, cache: Path) -> None:
    _cache.store("toml", b"old = 1", {"old": 1})
    _cache.store("toml", b"recent = 1", {"recent": 1})
    old_parse, recent_parse = (Path(_cache._entry("toml", raw) or "") for raw in (b"old = 1", b"recent = 1"))
    (cache / "native").mkdir()
    old_shim = cache / "native" / f"shim-{KEY}-17951-x86_64.so"
    recent_shim = cache / "native" / f"shim--{KEY[1:]}-17951-aarch64.so"
    old_image = _image_of(cache, _package(tmp_path / "clone"))  # its folder is there: age alone
    for p in (old_shim, recent_shim):
        p.write_bytes(b"\x7fELF")
    for p in (old_parse, old_shim, old_image):
        _age(p, 31)
    for p in (recent_parse, recent_shim):
        _age(p, 60, atime_days=29)  # written long ago, used within the 30 days
    assert _prune(cache) == {old_parse.name: UNUSED, old_shim.name: UNUSED, old_image.name: UNUSED}
    assert recent_parse.exists() and recent_shim.exists()
    assert _cache.lookup("toml", b"recent = 1") == {"recent": 1}


def test_unfinished_writes_older_than_a_day_are_removed(cache: Path) -> None:
    (cache / "native").mkdir()
    stale = cache / f"toml-{KEY}-12.marshal.4242.tmp"
    stale_shim = cache / "native" / f"shim-{KEY}-17951-x86_64.so.77.tmp"
    fresh = cache / f"guard-cpython-311-{KEY}.marshal.4243.tmp"  # a writer at work now
    foreign = cache / "notes.4242.tmp"
    for p in (stale, stale_shim, fresh, foreign):
        p.write_bytes(b"partial")
        _age(p, 2 if p != fresh else 0.01)
    assert _prune(cache) == {stale.name: UNFINISHED, stale_shim.name: UNFINISHED}
    assert fresh.exists() and foreign.exists()


def _others(tmp_path: Path, cache: Path) -> list[Path]:
    """Files and links in and around the cache that are not entries, all old: none may go."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / f"guard-cpython-311-{KEY}.marshal"
    target.write_bytes(b"a user's file")
    shim_elsewhere = outside / f"shim-{KEY}-1-x86_64.so"
    shim_elsewhere.write_bytes(b"\x7fELF")
    gone_image = _image_of(outside, tmp_path / "nowhere" / "sandbox")  # an image of a gone folder...
    made = [
        cache / "notes.txt",
        cache / "toml-notakey-12.marshal",
        cache / "guard-cpython-311-nothex!.marshal",
        cache / "other-thing.so",
    ]
    for p in made:
        p.write_bytes(b"x")
    link = cache / f"launcher-cpython-311-{KEY}.marshal"
    link.symlink_to(target)  # a link named like an image: neither it nor its target goes
    link2 = cache / gone_image.name
    link2.symlink_to(gone_image)  # ...reached through a link: not read, not removed
    folder = cache / f"toml-{KEY}-3.marshal"
    folder.mkdir()
    (cache / "native").symlink_to(outside)  # the shims' folder is a link: never entered
    everything = [*made, link, link2, folder, target, shim_elsewhere, gone_image, cache / "native"]
    for p in everything:
        _age(p, 400)
    return everything


def test_a_prune_touches_nothing_but_our_entries(tmp_path: Path, cache: Path) -> None:
    others = _others(tmp_path, cache)
    assert _prune(cache) == {}
    assert all(os.path.lexists(p) for p in others)


def test_a_clear_removes_every_entry_and_nothing_else(tmp_path: Path, cache: Path) -> None:
    others = _others(tmp_path, cache)
    assert _image.refresh("guard")
    _cache.store("toml", b"a = 1", {"a": 1})
    (cache / "x.marshal.1.tmp").write_bytes(b"")  # not ours: "x" is no entry's name
    (cache / _cache.PRUNE_STAMP).write_bytes(b"")
    removed = {os.path.basename(p) for p, _, _ in _cache_prune.clear(str(cache))}
    assert removed == {os.path.basename(_image.path() or ""), os.path.basename(_cache._entry("toml", b"a = 1") or "")}
    assert all(os.path.lexists(p) for p in others) and (cache / "x.marshal.1.tmp").exists()
    assert not (cache / _cache.PRUNE_STAMP).exists()


def test_a_launcher_prunes_at_most_once_a_day(tmp_path: Path, cache: Path) -> None:
    first = _image_of(cache, tmp_path / "gone1" / "sandbox")
    assert _cache.prune_due() and _cache_prune.auto()
    stamp = cache / _cache.PRUNE_STAMP
    assert not first.exists() and stamp.is_file()
    second = _image_of(cache, tmp_path / "gone2" / "sandbox")
    assert not _cache.prune_due() and not _cache_prune.auto()  # pruned today: left for tomorrow
    assert second.exists()
    _age(stamp, 0.9)
    assert not _cache_prune.auto() and second.exists()
    _age(stamp, 1.1)
    assert _cache_prune.auto() and not second.exists()
    assert time.time() - stamp.stat().st_mtime < 60  # dated anew
    _age(stamp, -2)  # from the future: a clock set back
    assert _cache_prune.auto()


def test_a_launcher_leaves_a_cache_it_cannot_prune_as_it_is(tmp_path: Path, cache: Path) -> None:
    image = _image_of(cache, tmp_path / "gone" / "sandbox")
    stamp = cache / _cache.PRUNE_STAMP
    stamp.mkdir()  # cannot be dated: no prune (else it would try on every run)
    _age(stamp, 2)
    assert _cache.prune_due() and not _cache_prune.auto()
    assert image.exists()
    stamp.rmdir()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    os.environ[_cache.ENV_DIR] = str(not_a_folder)  # restored by the fixture's monkeypatch
    assert not _cache.prune_due() and not _cache_prune.auto()
    os.environ[_cache.ENV_DIR] = str(tmp_path / "never-made")
    assert not _cache.prune_due() and not _cache_prune.auto()
    assert not (tmp_path / "never-made").exists()


def test_a_run_prunes_the_cache_while_its_step_runs(tmp_path: Path, cache: Path) -> None:
    """The wiring: sandbox.finish.while_first_step prunes on the day's first run."""
    image = _image_of(cache, tmp_path / "gone" / "sandbox")
    host = make_host(tmp_path / "host")
    r = sandbox_run(host, "R1", sys.executable, "-c", "pass")
    assert r.returncode == 0, r.stderr
    assert not image.exists() and (cache / _cache.PRUNE_STAMP).is_file()
    assert os.path.isfile(_image.path("guard") or "")  # refreshed, and kept
    later = _image_of(cache, tmp_path / "gone2" / "sandbox")
    assert sandbox_run(host, "R2", sys.executable, "-c", "pass").returncode == 0
    assert later.exists()  # the second run of the day leaves it


def test_cli_shows_what_the_cache_holds(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _image.refresh("guard") and _image.refresh("launcher")
    _image_of(cache, tmp_path / "gone" / "sandbox")
    _cache.store("toml", b"a = 1", {"a": 1})
    _cache.store("policy", b"a = 1", ((), {"a": 1}, ()))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"cache: {cache}"
    counts = {line.split("  ")[-1]: int(line.split()[0]) for line in out.splitlines()[1:-1]}
    assert counts == {
        "module images (guard)": 2,
        "module images (launcher)": 1,
        "parsed policy files": 1,
        "validated policy files": 1,
        "in all": 5,
    }
    assert "(last: never)" in out and "would remove 1 entry" in out and f"1 {GONE}" in out
    assert len(list(cache.iterdir())) == 5  # shown, not pruned


def test_cli_prune_and_clear(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _image.refresh("guard")
    gone = _image_of(cache, tmp_path / "gone" / "sandbox")
    (cache / _cache.PRUNE_STAMP).write_bytes(b"")  # pruned today: the command prunes regardless
    (cache / "notes.txt").write_text("mine")
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tv-sandbox: removed 1 entry (") and out.rstrip().endswith(f": 1 {GONE}")
    assert not gone.exists() and os.path.isfile(_image.path() or "")
    _cache.store("toml", b"a = 1", {"a": 1})
    _cache.store("policy", b"a = 1", ((), {"a": 1}, ()))
    assert main(["cache", "clear"]) == 0
    # what a run of this installation may be using at this moment stays (a step's LD_PRELOAD)
    out = capsys.readouterr().out
    assert out.startswith("tv-sandbox: removed 2 entries (") and out.rstrip().endswith("; kept 1 this installation uses")
    assert sorted(p.name for p in cache.iterdir()) == sorted(["notes.txt", os.path.basename(_image.path() or "")])
    assert main(["cache", "prune"]) == 0
    assert "removed 0 entries (0 B)" in capsys.readouterr().out


@pytest.mark.parametrize("action", [[], ["prune"], ["clear"]])
def test_cli_with_the_cache_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    monkeypatch.setenv(_cache.ENV_DIR, "off")
    monkeypatch.chdir(tmp_path)
    assert main(["cache", *action]) == 0
    out, err = capsys.readouterr()
    assert "cache is off (TV_SANDBOX_CACHE_DIR is empty or off)" in out and err == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("action", [[], ["prune"], ["clear"]])
def test_cli_with_no_cache_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    monkeypatch.setenv(_cache.ENV_DIR, str(tmp_path / "not-yet"))
    assert main(["cache", *action]) == 0
    assert "is empty (not made yet)" in capsys.readouterr().out
    assert not (tmp_path / "not-yet").exists()


def _cli(env_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, _cache.ENV_DIR: env_dir}
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_bad_input_is_one_line_and_125(tmp_path: Path, cache: Path) -> None:
    r = _cli(str(cache), "cache", "tidy")
    assert r.returncode == EXIT_SANDBOX and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "invalid choice: 'tidy'" in r.stderr
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for action in ([], ["prune"], ["clear"]):
        r = _cli(str(not_a_folder), "cache", *action)
        assert r.returncode == EXIT_SANDBOX, r
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        # cache runs no command of the user's: its error names no stage of one
        assert r.stderr.startswith(f"tv-sandbox: error: the per-user cache {not_a_folder} cannot be read (Not a directory)")
    assert not_a_folder.read_text() == ""


def test_cli_in_a_process(tmp_path: Path, cache: Path) -> None:
    gone = _image_of(cache, tmp_path / "gone" / "sandbox")
    r = _cli(str(cache), "cache")
    assert r.returncode == 0 and "module images (guard)" in r.stdout and gone.exists()
    r = _cli(str(cache), "cache", "prune")
    assert r.returncode == 0 and f"1 {GONE}" in r.stdout and not gone.exists()
    _cache.store("toml", b"a = 1", {"a": 1})
    r = _cli(str(cache), "cache", "clear")
    assert r.returncode == 0 and "removed 1 entry" in r.stdout and list(cache.iterdir()) == []
