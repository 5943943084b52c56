"""The escape suite: every attempt of tests/escapes/attempts.py through a real `tv-sandbox run`.

The host tree (runs folder aside, which only the export may change) must be byte-identical after
every attempt -- content, mode, mtime, link targets -- and the attempt must have seen an error, or,
for relative native writes, its output must be in the exported run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from attempts import ATTEMPTS, Attempt
from conftest import sandbox_run, tree_snapshot

from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
REQUIRE = os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1"


class Host:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = make_host(root / "host")
        (self.host / "data" / "lakehouse" / "empty_dir").mkdir()
        self.outside = root / "outside"
        self.outside.mkdir()
        (self.outside / "file.txt").write_text("outside\n")
        self.wsbase = root / "ws"
        self.wsbase.mkdir()
        self.home = Path.home()
        self.n = 0

    def snapshot(self) -> dict[str, object]:
        snap = {
            k: v for k, v in tree_snapshot(self.host).items() if k != RUNS and not k.startswith(RUNS + "/")
        }
        home_probe = sorted(p.name for p in self.home.glob("tvs_escape*"))
        return {"host": snap, "outside": tree_snapshot(self.outside), "home": home_probe}

    def argv(self, a: Attempt) -> list[str]:
        code = a.code.format(
            lake=self.host / "data" / "lakehouse",
            lakefile=self.host / "data" / "lakehouse" / "BINANCE_BTCUSDT_1d.csv",
            scan=self.host / "export" / "R1",
            host=self.host,
            outside=self.outside,
            home=self.home,
            py=sys.executable,
        )
        if a.kind == "sh":
            return ["sh", "-ec", code]
        if a.kind == "pyI":
            return [sys.executable, "-I", "-S", "-c", code]
        return [sys.executable, "-c", code]

    def run(self, a: Attempt, mode: str, kernel: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        self.n += 1
        run_id = f"{a.id}-{mode}-{self.n}".replace(".", "_")
        options = ("--mode", mode, "--workspace-dir", str(self.wsbase), "--kernel", kernel)
        r = sandbox_run(self.host, run_id, *self.argv(a), options=options)
        return r, self.host / RUNS / run_id


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield Host(tmp_path_factory.mktemp("escapes"))


def _kernel_active(export: Path) -> bool:
    rep = json.loads((export / "sandbox_report.json").read_text())
    return bool(rep["layers"]["kernel"])


def _check(host: Host, a: Attempt, mode: str, kernel: str = "require" if REQUIRE else "auto") -> None:
    before = host.snapshot()
    r, export = host.run(a, mode, kernel)
    after = host.snapshot()
    for p in host.home.glob("tvs_escape*"):  # never leave an escape behind
        p.unlink()
    assert "tv-sandbox: error:" not in r.stderr, f"tv-sandbox refused to start: {r.stderr}"
    assert (export / "manifest.json").is_file(), f"no export: {r.stderr}"
    if not _kernel_active(export) and (a.kind != "py" or a.family == "native"):
        if REQUIRE:
            pytest.fail("the kernel layer was not active in CI")
        pytest.skip(reason="kernel layer unavailable here: shell/native attempts need it")
    assert after == before, f"{a.id} ({mode}) changed the host: {r.stderr[-2000:]}"
    expect = a.expect
    if mode == "audit" and a.audit is not None:
        expect = a.audit
    elif mode == "audit" and expect == "error" and not a.outside:
        expect = "ok"
    if expect == "error":
        assert r.returncode != 0, f"{a.id}: the attempt saw no error\n{r.stderr[-2000:]}"
    else:
        assert r.returncode == 0, f"{a.id}: failed\n{r.stderr[-3000:]}"
        if expect.startswith("lands:"):
            assert (export / expect[len("lands:") :]).exists(), sorted(os.listdir(export))


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.id for a in ATTEMPTS])
def test_escape_enforce(host: Host, attempt: Attempt) -> None:
    _check(host, attempt, "enforce")


@pytest.mark.slow
@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.id for a in ATTEMPTS])
def test_escape_audit(host: Host, attempt: Attempt) -> None:
    _check(host, attempt, "audit")


#: What goes through Python's own file APIs (not native code, not `python -I`, not the shell).
PYTHON_ATTEMPTS = [a for a in ATTEMPTS if a.kind == "py" and a.family != "native"]


@pytest.mark.parametrize("attempt", PYTHON_ATTEMPTS, ids=[a.id for a in PYTHON_ATTEMPTS])
def test_escape_python_guard_alone(host: Host, attempt: Attempt) -> None:
    """`--kernel off`: the Python guard alone holds every attempt made through Python (children
    included), so a machine without the kernel layer still keeps honest scripts' mistakes out."""
    _check(host, attempt, "enforce", kernel="off")


def test_suite_size() -> None:
    assert len(ATTEMPTS) >= 50
