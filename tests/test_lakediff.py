"""The lakehouse diff of audit mode (issue #3): `tv-sandbox run --mode audit` on a real sample host
leaves `reports/lakehouse_diff.json` in the exported run folder, listing exactly what the step
created, modified and deleted in the mounts, with the host untouched; enforce mode makes none.

With the kernel layer the step is a shell script (the overlay's upper layer and whiteouts are the
record); with `--kernel off` only Python is guarded -- a shell `rm` would reach the host -- so the
step is the same three changes made from Python (the guard's captured deletion is in the event
log). The unit tests below build run folders by hand for the overlay's other marks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import sandbox_run, tree_snapshot

from sandbox import lakediff
from sandbox.export.manifest import read_manifest, verify
from sandbox.report import LAKEHOUSE_DIFF, scattered_artifacts
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
LAKE = "data/lakehouse"
MODIFIED = f"{LAKE}/BINANCE_BTCUSDT_1d.csv"
DELETED = f"{LAKE}/BINANCE_ETHUSDT_1d.csv"
CREATED = f"{LAKE}/new_signals.csv"
ADDED_ROW = "1769817600,1.0,1.0,1.0,1.0,1\n"

SHELL_STEP = f"printf '{ADDED_ROW}' >> {MODIFIED} && printf 'a,b\\n1,2\\n' > {CREATED} && rm {DELETED}"
PYTHON_STEP = (
    "import os\n"
    f"with open({MODIFIED!r}, 'a') as fh: fh.write({ADDED_ROW!r})\n"
    f"with open({CREATED!r}, 'w') as fh: fh.write('a,b\\n1,2\\n')\n"
    f"os.remove({DELETED!r})\n"
)


def run(
    host: Path, run_id: str, *cmd: str, mode: str = "audit", kernel: str = "auto"
) -> subprocess.CompletedProcess[str]:
    return sandbox_run(host, run_id, *cmd, options=("--mode", mode, "--kernel", kernel))


def outside_runs(host: Path) -> dict[str, tuple[object, ...]]:
    return {k: v for k, v in tree_snapshot(host).items() if not k.startswith(RUNS)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


@pytest.mark.parametrize(
    ("kernel", "step"),
    [
        pytest.param(
            "require",
            ("sh", "-c", SHELL_STEP),
            marks=pytest.mark.kernel("mount_namespace", "overlay"),
            id="kernel-shell",
        ),
        pytest.param(
            "require",
            (sys.executable, "-c", PYTHON_STEP),
            marks=pytest.mark.kernel("mount_namespace", "overlay"),
            id="kernel-python",
        ),
        pytest.param("off", (sys.executable, "-c", PYTHON_STEP), id="guard-only-python"),
    ],
)
def test_audit_run_exports_the_lakehouse_diff(
    host: Path, kernel: str, step: tuple[str, ...], request: pytest.FixtureRequest
) -> None:
    if kernel != "off":
        request.getfixturevalue("kernel_support")  # CI: required; elsewhere skipped with the reason
    before = outside_runs(host)
    host_sha = {rel: sha256(host / rel) for rel in (MODIFIED, DELETED)}
    r = run(host, "A1", *step, kernel=kernel)
    assert r.returncode == 0, r.stderr
    assert outside_runs(host) == before  # the host, lakehouse included, is byte-identical

    out = host / RUNS / "A1"
    assert verify(out) == []
    manifest = read_manifest(out)
    listed = {f["path"]: f for f in manifest["files"]}
    assert LAKEHOUSE_DIFF in listed  # written before the export: in the manifest

    diff = json.loads((out / LAKEHOUSE_DIFF).read_text())
    assert diff["schema"] == "tv-sandbox-lakehouse-diff" and diff["run_id"] == "A1"
    changes = {c["path"]: c for c in diff["changes"]}
    assert {p: c["change"] for p, c in changes.items()} == {
        MODIFIED: "modified",
        CREATED: "created",
        DELETED: "deleted",
    }
    assert all(c["mount"] == "lakehouse" for c in changes.values())
    assert diff["counts"] == {"created": 1, "modified": 1, "deleted": 1}

    mod, new, gone = changes[MODIFIED], changes[CREATED], changes[DELETED]
    copy = out / "audit" / MODIFIED  # the run's copy, as exported
    assert (
        mod["before"]["sha256"] == host_sha[MODIFIED]
        and mod["before"]["size"] == (host / MODIFIED).stat().st_size
    )
    assert mod["after"]["sha256"] == sha256(copy) == listed[f"audit/{MODIFIED}"]["sha256"]
    assert mod["after"]["size"] == mod["before"]["size"] + len(ADDED_ROW)
    assert (
        mod["diff"].startswith(f"--- a/{MODIFIED}\n+++ b/{MODIFIED}\n") and f"\n+{ADDED_ROW}" in mod["diff"]
    )
    assert new["before"] is None and new["after"]["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert new["diff"] == f"--- /dev/null\n+++ b/{CREATED}\n@@ -0,0 +1,2 @@\n+a,b\n+1,2\n"
    assert gone["after"] is None and gone["before"]["sha256"] == host_sha[DELETED]
    assert gone["diff"].startswith(f"--- a/{DELETED}\n+++ /dev/null\n")
    if kernel != "off":
        assert manifest["deleted"] == [f"audit/{DELETED}"]  # the overlay's whiteout

    report = json.loads((out / "sandbox_report.json").read_text())
    assert report["lakehouse_diff"] == {"path": LAKEHOUSE_DIFF, "created": 1, "modified": 1, "deleted": 1}
    assert report["scattered_artifacts"] == []


def test_a_link_the_step_left_under_the_diffs_name_is_replaced_not_followed(host: Path) -> None:
    target = host / MODIFIED  # the step points the diff's name at a lakehouse file
    code = (
        f"import os; os.symlink({str(target)!r}, os.path.join(os.environ['TV_RUN_DIR'], {LAKEHOUSE_DIFF!r}))"
    )
    before = outside_runs(host)
    r = run(host, "L1", sys.executable, "-c", code, kernel="off")
    assert r.returncode == 0, r.stderr
    assert outside_runs(host) == before
    out = host / RUNS / "L1"
    assert not (out / LAKEHOUSE_DIFF).is_symlink() and verify(out) == []
    assert json.loads((out / LAKEHOUSE_DIFF).read_text())["changes"] == []


def test_enforce_run_writes_no_diff(host: Path) -> None:
    r = run(host, "E1", sys.executable, "-c", "open('reports/x.txt', 'w').write('x')", mode="enforce")
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "E1"
    assert verify(out) == [] and not (out / LAKEHOUSE_DIFF).exists()
    assert LAKEHOUSE_DIFF not in {f["path"] for f in read_manifest(out)["files"]}
    assert json.loads((out / "sandbox_report.json").read_text())["lakehouse_diff"] is None


def test_enforce_run_does_not_import_the_diff() -> None:
    code = (
        "import sys\n"
        "from sandbox import runner\n"
        "print(sorted(m for m in ('sandbox.lakediff', 'difflib') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- collect(): run folders made by hand ----------------------------------------------------------


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[str, str]]]:
    """(host lakehouse, run storage, mounts) with a small host lakehouse."""
    host = tmp_path / "host" / "lake"
    (host / "sub").mkdir(parents=True)
    (host / "a.txt").write_text("one\ntwo\n")
    (host / "sub" / "b.txt").write_text("b\n")
    (host / "sub" / "c.bin").write_bytes(b"\x00\xff")
    (host / "big.txt").write_text("x" * (70 * 1024))
    storage = tmp_path / "run"
    (storage / "audit" / "data" / "lakehouse").mkdir(parents=True)
    return host, storage, {"lakehouse": ("data/lakehouse", str(host))}


def upper(storage: Path) -> Path:
    return storage / "audit" / "data" / "lakehouse"


def kinds(changes: list[dict[str, Any]]) -> dict[str, str]:
    return {c["path"]: c["change"] for c in changes}


def test_an_unchanged_copy_is_no_change_and_large_or_binary_files_get_no_text_diff(lake: Any) -> None:
    host, storage, mounts = lake
    (upper(storage) / "a.txt").write_text("one\ntwo\n")  # copied up, not changed
    os.chmod(upper(storage) / "a.txt", os.stat(host / "a.txt").st_mode)
    (upper(storage) / "big.txt").write_text("y" * (70 * 1024))
    (upper(storage) / "sub").mkdir()
    (upper(storage) / "sub" / "c.bin").write_bytes(b"\x00\xfe")
    changes = lakediff.collect(str(storage), mounts)
    assert kinds(changes) == {"data/lakehouse/big.txt": "modified", "data/lakehouse/sub/c.bin": "modified"}
    big, binary = changes
    assert big["diff"] is None and big["diff_skipped"] == "larger than 64 KiB"
    assert big["before"]["size"] == big["after"]["size"] == 70 * 1024
    assert binary["diff"] is None and binary["diff_skipped"] == "binary or not UTF-8"


def test_guard_captures_name_deletions_and_rename_sources(lake: Any) -> None:
    host, storage, mounts = lake
    (upper(storage) / "renamed.txt").write_text("one\ntwo\n")  # a.txt, renamed by the step
    target = str(upper(storage))
    ws_run = "/ws/artifacts/summaries/runs/R1"  # $TV_RUN_DIR as the workspace names it
    events = [
        {"op": "rename", "action": "redirect", "captured": True, "target": f"{target}/a.txt"},
        {"op": "rename", "action": "redirect", "captured": True, "target": f"{target}/renamed.txt"},
        {
            "op": "delete",
            "action": "redirect",
            "captured": True,
            "target": f"{ws_run}/audit/data/lakehouse/sub/b.txt",
        },
        {"op": "delete", "action": "redirect", "captured": True, "target": f"{target}/never-existed"},
        {"op": "delete", "action": "deny", "captured": False, "target": None},
    ]
    changes = lakediff.collect(str(storage), mounts, events, run_dirs=[ws_run])
    assert kinds(changes) == {
        "data/lakehouse/a.txt": "deleted",
        "data/lakehouse/renamed.txt": "created",
        "data/lakehouse/sub/b.txt": "deleted",
    }
    assert (host / "a.txt").read_text() == "one\ntwo\n"  # read, never written


def _whiteout(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))  # S_IFCHR 0/0, as overlayfs writes it
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            pytest.skip(reason="making an overlayfs whiteout (a 0/0 character device) needs CAP_MKNOD")
        raise


def test_overlay_whiteout_of_a_folder_deletes_its_files_and_a_file_replaces_a_folder(lake: Any) -> None:
    _host, storage, mounts = lake
    _whiteout(upper(storage) / "a.txt")
    (upper(storage) / "sub").write_text("now a file\n")  # the step removed the folder, wrote a file
    changes = lakediff.collect(str(storage), mounts)
    assert kinds(changes) == {
        "data/lakehouse/a.txt": "deleted",
        "data/lakehouse/sub": "created",
        "data/lakehouse/sub/b.txt": "deleted",
        "data/lakehouse/sub/c.bin": "deleted",
    }


def test_opaque_folder_hides_what_the_run_did_not_write_again(lake: Any) -> None:
    _host, storage, mounts = lake
    sub = upper(storage) / "sub"
    sub.mkdir()
    (sub / "b.txt").write_text("b\n")  # written again, the same: no change
    (sub / "d.txt").write_text("d\n")
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            os.setxattr(sub, name, b"y")
            break
        except OSError:
            continue
    else:
        pytest.skip(reason="this filesystem takes neither trusted.* nor user.* xattrs")
    changes = lakediff.collect(str(storage), mounts)
    assert kinds(changes) == {"data/lakehouse/sub/c.bin": "deleted", "data/lakehouse/sub/d.txt": "created"}


def test_write_and_the_report_summary(lake: Any) -> None:
    _host, storage, mounts = lake
    (upper(storage) / "a.txt").write_text("one\n2\n")
    summary = lakediff.write(str(storage), LAKEHOUSE_DIFF, mounts, run_id="R9")
    assert summary == {"path": LAKEHOUSE_DIFF, "created": 0, "modified": 1, "deleted": 0}
    doc = json.loads((storage / LAKEHOUSE_DIFF).read_text())
    assert doc["mounts"] == {"lakehouse": "data/lakehouse"} and doc["run_id"] == "R9"
    assert doc["changes"][0]["diff"] == (
        "--- a/data/lakehouse/a.txt\n+++ b/data/lakehouse/a.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+2\n"
    )
    # a layout without a reports/ run folder: the diff is still the sandbox's, not a stray output
    assert scattered_artifacts(str(storage), ("data",)) == []
