"""The layer table of docs/architecture.md is the law of the package's imports: this test parses the
table from the document (the one source) and scans every ``sandbox.*`` import of every module --
at module level and inside functions alike (a lazy import is still a dependency), annotations under
``TYPE_CHECKING`` excepted -- against it. A module imports only from its own row and the rows below.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sandbox"
DOC = ROOT / "docs" / "architecture.md"
SECTION = "## Modules, by layer"


def table_rows() -> list[tuple[str, list[str]]]:
    """(layer, [module entries]) of each row of the doc's table, top to bottom. An entry is a file
    (``cli.py``) or a package folder (``guard/``) relative to ``sandbox/``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    rows: list[tuple[str, list[str]]] = []
    layer = ""
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "layer" or (set(cells[0]) <= {"-", " "} and cells[0]):
            continue
        layer = cells[0] or layer
        entries = re.findall(r"`([^`]+)`", cells[1])
        assert entries, f"a row of the table names no module: {line!r}"
        rows.append((layer, entries))
    assert rows, f"no table under {SECTION!r} in {DOC}"
    return rows


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def row_of(module: str, rows: list[tuple[str, list[str]]]) -> int | None:
    """The index of the row that holds ``module`` (the longest matching entry)."""
    rel = module.split(".")[1:]  # without "sandbox"
    best: tuple[int, int] | None = None
    for i, (_, entries) in enumerate(rows):
        for e in entries:
            if e.endswith("/"):
                comps = e.rstrip("/").split("/")
                ok = rel[: len(comps)] == comps
            else:
                comps = e.removesuffix(".py").split("/")
                ok = rel == ([] if comps == ["__init__"] else comps)
            if ok and (best is None or len(comps) > best[1]):
                best = (i, len(comps))
    return None if best is None else best[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def sandbox_imports(path: Path, modules: dict[str, Path], name: str | None = None) -> list[tuple[str, int]]:
    """(imported sandbox module, line) of every import statement in ``path``, wherever it is,
    except in the body of an ``if TYPE_CHECKING:``. ``from sandbox.x import y`` is ``sandbox.x.y``
    when that is a module, else ``sandbox.x``; the bare package ``sandbox`` is left out (every
    import of a submodule runs it: its own imports are checked as a module's)."""
    name = name or module_name(path)
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:  # the runtime branch counts
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for a in node.names:
                sub = f"{src}.{a.name}"
                found.append((sub if sub in modules else src, node.lineno))
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return [(m, ln) for m, ln in found if m.startswith("sandbox.")]


def test_the_table_parses_into_the_documented_layers() -> None:
    layers = list(dict.fromkeys(layer for layer, _ in table_rows()))
    assert layers == [
        "entry points",
        "orchestrator",
        "audit",
        "composition",
        "enforcers, places",
        "record",
        "model",
        "base",
    ]


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    rows, modules = table_rows(), all_modules()
    missing = sorted(m for m in modules if row_of(m, rows) is None)
    assert not missing, f"modules missing from the table of {DOC.name}: {missing}"
    for _, entries in rows:
        for e in entries:
            assert (PACKAGE / e).exists(), f"{DOC.name} names sandbox/{e}, which does not exist"


def test_the_package_itself_imports_only_the_base() -> None:
    """Every ``import sandbox.x`` runs ``sandbox/__init__.py``: it must import (almost) nothing."""
    modules = all_modules()
    got = {m for m, _ in sandbox_imports(PACKAGE / "__init__.py", modules)}
    assert got <= {"sandbox._lazy"}


def test_imports_go_down_the_table() -> None:
    rows, modules = table_rows(), all_modules()
    climbing = []
    for name, path in modules.items():
        mine = row_of(name, rows)
        assert mine is not None
        for target, line in sandbox_imports(path, modules):
            if target not in modules:
                continue  # an attribute of a package (e.g. ``from sandbox.kernel import spawn``)
            theirs = row_of(target, rows)
            assert theirs is not None, target
            if theirs < mine:
                climbing.append(
                    f"{path.relative_to(ROOT)}:{line}: {name} ({rows[mine][0]}) imports {target} "
                    f"({rows[theirs][0]}, a row above)"
                )
    assert not climbing, "imports that climb the layer table:\n" + "\n".join(climbing)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from sandbox.policy import Op\n", ["sandbox.policy"]),
        ("def f():\n    from sandbox import run\n", ["sandbox.run"]),
        ("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from sandbox.run import Run\n", []),
        ("if TYPE_CHECKING:\n    pass\nelse:\n    import sandbox.events\n", ["sandbox.events"]),
    ],
)
def test_the_scan_sees_lazy_imports_and_skips_annotations(
    tmp_path: Path, source: str, expected: list[str]
) -> None:
    """The scan itself: a test that could not fail would prove nothing."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    got = [m for m, _ in sandbox_imports(path, all_modules(), name="sandbox._probe")]
    assert got == expected


# -- the public face: sandbox/__init__.py ----------------------------------------------------------


def test_the_public_names_are_the_modules_own() -> None:
    import sandbox
    from sandbox import errors, export, fs, guard, loader, policy, rules, run

    own = {
        "load_policy": loader.load_policy,
        "Policy": policy.Policy,
        "PolicySpec": policy.PolicySpec,
        "Op": rules.Op,
        "Action": rules.Action,
        "AccessDenied": errors.AccessDenied,
        "install": guard.install,
        "SandboxFileSystem": fs.SandboxFileSystem,
        "export_run": export.export_run,
        "verify": export.verify,
        "Run": run.Run,
        "StepSpec": run.StepSpec,
    }
    assert sorted(sandbox.__all__) == sorted(own)
    for name, value in own.items():
        assert getattr(sandbox, name) is value, name
    assert set(sandbox.__all__) <= set(dir(sandbox))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        sandbox.nope  # noqa: B018


def test_import_sandbox_imports_nothing_heavy() -> None:
    """Every sandboxed interpreter imports the package at start-up (its sitecustomize does)."""
    code = (
        "import sys; before = set(sys.modules); import sandbox; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert "sandbox" in loaded  # the scan saw the import it checks
    heavy = {"fsspec", "ray", "pyfakefs", "pytest", "json", "enum", "re", "typing", "dataclasses", "contextlib"}
    assert not {m.partition(".")[0] for m in loaded} & heavy, sorted(loaded)
    assert loaded <= {"sandbox", "sandbox._lazy", "__future__"}, sorted(loaded)
