"""Property tests (hypothesis): whatever path a step builds from `..`, `.`, `//`, symlinks to the
mounts and to outside, as str or bytes, the policy never lets a write reach a place outside the
writable roots, and the enforcers agree with each other."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox._paths import is_within, parts, resolve
from sandbox.loader import load_policy
from sandbox.policy import MUTATING, Action, Op
from sandbox.samples import make_host
from sandbox.workspace import create

COMPONENTS = [
    "..",
    ".",
    "",
    "data",
    "lakehouse",
    "export",
    "R1",
    "reports",
    "x.csv",
    "to_lake",
    "to_outside",
    "to_host",
    "artifacts",
    "summaries",
    "runs",
    "BINANCE_BTCUSDT_1d.csv",
]
NO_FOLLOW = {Op.DELETE, Op.RENAME, Op.LINK, Op.RMDIR}
PREFIXES = ["", "{ws}/", "{host}/", "{run}/", "/proc/self/cwd/", "{outside}/", "//"]


class World:
    """One host, one workspace, symlinks to the mounts, the host and outside -- built once."""

    def __init__(self, root: Path) -> None:
        self.host = make_host(root / "host")
        self.outside = root / "outside"
        self.outside.mkdir()
        spec = load_policy(profile="production")
        (root / "b").mkdir()
        self.ws = create(self.host, "R1", spec.layout, base_dir=root / "b")
        self.policy = self.ws.bind(spec)
        run = Path(self.ws.run_storage)
        for name, target in (
            ("to_lake", self.ws.mount_targets["lakehouse"]),
            ("to_outside", self.outside),
            ("to_host", self.host),
        ):
            os.symlink(target, run / name)
            os.symlink(target, run / "data" / name)
        self.allowed = [parts(self.ws.run_storage), parts(self.ws.run_dir), parts(self.ws.tmp)]

    def expand(self, prefix: str, comps: list[str]) -> str:
        p = prefix.format(ws=self.ws.root, host=self.host, run=self.ws.run_dir, outside=self.outside)
        return p + "/".join(comps)


_world: World | None = None


def world(tmp_path_factory: object) -> World:
    global _world
    if _world is None:
        import tempfile

        _world = World(Path(tempfile.mkdtemp(prefix="tvs-prop-")))
    return _world


paths = st.tuples(st.sampled_from(PREFIXES), st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=8))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=paths, op=st.sampled_from(sorted(MUTATING)), as_bytes=st.booleans())
def test_no_write_reaches_outside_the_writable_roots(
    tmp_path_factory: object, p: tuple[str, list[str]], op: Op, as_bytes: bool
) -> None:
    w = world(tmp_path_factory)
    raw = w.expand(*p)
    if not raw:
        return
    arg: str | bytes = os.fsencode(raw) if as_bytes else raw
    follow = op not in NO_FOLLOW  # these act on a link itself, as the enforcers resolve them
    cwd = os.getcwd()
    os.chdir(w.ws.root)
    try:
        resolved = resolve(arg, follow=follow)
    finally:
        os.chdir(cwd)
    d = w.policy.settle(w.policy.decide(resolved, op), op, lambda t: resolve(t, follow=follow))
    if d.action is Action.ALLOW:
        # allowed as aimed: the place really is the run folder, the temp dir or a device
        real = parts(resolve(resolved, follow=follow))
        assert d.rule == "device" or any(is_within(real, a) for a in w.allowed), (raw, resolved, d)
        assert not is_within(real, parts(str(w.host))), (raw, d)
    elif d.action is Action.REDIRECT and d.captured:
        assert d.target is not None and is_within(parts(d.target), parts(w.ws.run_dir))
    elif d.action is Action.REDIRECT:
        assert d.target is not None
        target = parts(resolve(d.target, follow=follow))
        assert any(is_within(target, a) for a in w.allowed), (raw, d)
    else:
        assert d.action is Action.DENY
