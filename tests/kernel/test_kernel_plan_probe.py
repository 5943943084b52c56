"""The plan as data (validation, round trip) and the probe / doctor text."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from sandbox.kernel import AppliedLayers, Bind, KernelPlan, KernelSupport, Overlay, describe, probe


def _full() -> KernelPlan:
    return KernelPlan(
        writable=("/w", "/dev/shm"),
        overlays=(Overlay(("/points", "/host"), "/run", "/work", "/ws", points=("runs/R1", "lake")),),
        binds=(Bind("/run", "/ws/runs/R1", readonly=False), Bind("/lake", "/ws/lake")),
        readonly_root=True,
        landlock=True,
        namespace=True,
    )


def test_round_trip() -> None:
    plan = _full()
    assert KernelPlan.from_dict(plan.to_dict()) == plan
    assert plan.to_dict()["overlays"][0]["lower"] == ["/points", "/host"]
    assert plan.to_dict()["overlays"][0]["points"] == ["runs/R1", "lake"]
    net = KernelPlan(namespace=True, network_namespace=True, hidden=("/tmp/ray",))
    assert KernelPlan.from_dict(net.to_dict()) == net and net.to_dict()["hidden"] == ["/tmp/ray"]
    with pytest.raises(ValueError, match="need namespace=True"):
        KernelPlan(network_namespace=True)
    with pytest.raises(ValueError, match="need namespace=True"):
        KernelPlan(hidden=("/tmp/ray",))


def test_ray_folders_are_found_where_ray_puts_them_and_never_hide_the_step(tmp_path: Path) -> None:
    from sandbox.runner import ray_folders

    tmpdir, home, ws = tmp_path / "tmp", tmp_path / "home", tmp_path / "tmp" / "ray" / "ws"
    for p in (tmpdir / "ray", home / ".ray", tmp_path / "raytmp" / "ray"):
        p.mkdir(parents=True)
    env = {"TMPDIR": str(tmpdir), "HOME": str(home), "RAY_TMPDIR": str(tmp_path / "raytmp")}
    found = ray_folders([str(tmp_path / "elsewhere")], env)
    assert {str(tmpdir / "ray"), str(home / ".ray"), str(tmp_path / "raytmp" / "ray")} <= set(found)
    ws.mkdir()  # a workspace inside a Ray folder: that folder stays visible
    assert str(tmpdir / "ray") not in ray_folders([str(ws)], env)
    assert str(home / ".ray") not in ray_folders([str(tmp_path)], env)  # nor one holding a root
    assert str(home / ".ray") not in ray_folders([], {"HOME": str(tmp_path / "nohome")})


def test_writable_roots_include_overlay_targets_and_rw_binds() -> None:
    assert _full().writable_roots() == ("/w", "/dev/shm", "/ws", "/ws/runs/R1")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: KernelPlan(binds=(Bind("/a", "/b"),)), "need namespace=True"),
        (lambda: KernelPlan(readonly_root=True), "need namespace=True"),
        (lambda: KernelPlan(writable=("relative",)), "writable path must be an absolute path"),
        (lambda: Overlay((), "/u", "/w", "/t"), "at least one lower"),
        (lambda: Overlay(("/p",), "/u", "/w", "/t", points=("/abs",)), "plain relative path"),
        (lambda: Overlay(("/p",), "/u", "/w", "/t", points=("../up",)), "plain relative path"),
        (lambda: Overlay(("/p",), "/u", "/w", "/t", points=("a/../../b",)), "plain relative path"),
        (lambda: Overlay(("/p",), "/u", "/w", "/t", points=("",)), "plain relative path"),
        (lambda: Bind("/a", "b"), "bind destination must be an absolute path"),
        (lambda: KernelPlan.from_dict({"writable": [], "mounts": []}), "unknown kernel plan keys: mounts"),
    ],
)
def test_invalid_plans_are_refused(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        build()


def test_a_single_lower_string_is_accepted() -> None:
    assert Overlay("/host", "/u", "/w", "/t").lower == ("/host",)  # type: ignore[arg-type]


def test_applied_layers_encode_round_trip() -> None:
    a = AppliedLayers(
        landlock_abi=7, namespace=True, overlay=True, readonly_root=True, readonly_binds=2, seconds=0.0021
    )
    assert AppliedLayers.decode(a.encode()) == a


def test_probe_is_fast_and_consistent() -> None:
    probe()  # warm: the first call pays for imports
    t0 = time.perf_counter()
    s = probe()
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.25, elapsed  # ~8 ms here; the budget is 30 ms, CI machines are slower
    for feature in ("landlock", "user_namespaces", "mount_namespace", "overlay", "readonly_bind"):
        assert s.has(feature) or feature in s.reasons
    if not s.mount_namespace:
        assert not s.overlay and not s.readonly_bind
    with pytest.raises(ValueError, match="unknown kernel feature"):
        s.has("seccomp")


def test_describe_names_every_layer_and_what_it_covers() -> None:
    text = describe(KernelSupport(7, True, True, True, True, {}, 0.008))
    for needle in (
        "Landlock:",
        "yes (ABI 7)",
        "Read-only mounts:",
        "Workspace overlay:",
        "Python guard:",
        "chmod",
        "python -I",
        "threads already running",
        "EROFS",
        "run folder",
        "every layer",
    ):
        assert needle in text, needle


def test_describe_gives_the_reasons_of_missing_layers() -> None:
    support = KernelSupport(
        0,
        False,
        False,
        False,
        False,
        {
            "landlock": "Landlock is built into the kernel but disabled: add 'landlock' to the lsm= boot parameter",
            "mount_namespace": "unshare a mount namespace: Operation not permitted",
            "user_namespaces": "unshare a mount namespace: Operation not permitted",
            "overlay": "needs a private mount namespace, which is unavailable",
            "readonly_bind": "needs a private mount namespace, which is unavailable",
        },
    )
    text = describe(support)
    assert "NO -- Landlock is built into the kernel but disabled" in text
    assert "NO -- unshare a mount namespace: Operation not permitted" in text
    assert "no kernel layer" in text


def test_probe_removes_what_a_killed_probe_left(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"tv-sandbox-probe-{dead.pid}-abc"
    (stale / "work" / "work").mkdir(parents=True)
    mine = tmp_path / f"tv-sandbox-probe-{os.getpid()}-live"
    mine.mkdir()
    probe(str(tmp_path))
    assert not stale.exists() and mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]
