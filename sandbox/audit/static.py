"""The static audit: read a script's AST (never run it) and report what it would do to shared paths.

Paths are followed through string literals, f-strings (an unknown ``{part}`` stays a placeholder
component), ``os.path.join`` / ``Path(...) / ...`` chains, module-level constants (``AUDIT_FILE``),
local assignments, argparse defaults (``args.audit`` -> ``add_argument("--audit", default=...)``)
and environment reads (``os.environ.get("SELECTION_AUDIT", default)``). A literal that reaches a
write is decided by :class:`~sandbox.audit.judge.Judge` -- the policy itself. What cannot be known
statically (a path computed at run time) is left to the dynamic audit.
"""

from __future__ import annotations

import ast
import dataclasses
import posixpath
from collections.abc import Iterator

from sandbox.audit.findings import Finding, Severity, finding
from sandbox.audit.judge import Judge, Verdict
from sandbox.audit.values import PATH_CALLS, Scope, Val, Values, assignments, dotted
from sandbox.policy import Action, Op
from sandbox.workspace import ENV_NAMES

#: Outputs the run environment names: a default for one of them is where the script writes.
_OUTPUT_VARS = frozenset(ENV_NAMES) - {"TV_SCAN_DIR", "TV_RUN_ID", "TV_PROFILE"}
_SCAN_VAR = "TV_SCAN_DIR"


_OPENERS = {"open", "io.open", "codecs.open", "gzip.open", "bz2.open", "lzma.open"}
#: Mutations by a function of ``os``/``shutil``: which positional arguments are written.
_FS_FUNCS = {
    "os.makedirs": (0,), "os.mkdir": (0,), "os.remove": (0,), "os.unlink": (0,), "os.rmdir": (0,),
    "os.removedirs": (0,), "os.rename": (0, 1), "os.replace": (0, 1), "os.truncate": (0,),
    "os.chmod": (0,), "os.symlink": (1,), "os.link": (1,), "os.utime": (0,),
    "shutil.copy": (1,), "shutil.copy2": (1,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
    "shutil.move": (0, 1), "shutil.rmtree": (0,),
}  # fmt: skip
_PATH_METHODS = {
    "write_text",
    "write_bytes",
    "touch",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink_to",
    "hardlink_to",
}
_MOVE_METHODS = {"rename", "replace"}
_LISTING = {"glob", "rglob", "iterdir", "listdir", "scandir", "walk", "os.listdir", "os.scandir", "os.walk",
            "glob.glob", "glob.iglob"}  # fmt: skip
#: Writers that write in C, past the Python guard (first positional argument = the path, except
#: where noted); then those that write through Python's ``open`` (the guard sees them).
_NATIVE_METHODS = {"to_parquet", "to_feather", "to_orc", "to_hdf"}
_NATIVE_FUNCS = {
    "pq.write_table": 1, "pyarrow.parquet.write_table": 1, "parquet.write_table": 1,
    "pq.write_to_dataset": 1, "feather.write_feather": 1, "np.save": 0, "numpy.save": 0, "np.savez": 0,
    "np.savez_compressed": 0, "np.savetxt": 0, "numpy.savetxt": 0, "sqlite3.connect": 0,
}  # fmt: skip
_PY_WRITER_METHODS = {"to_csv", "to_json", "to_excel", "to_pickle", "to_html", "to_markdown", "savefig"}
_SHELL_FUNCS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
_SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
               "subprocess.Popen"}  # fmt: skip
_PYTHONS = {"python", "python3", "sys.executable"}


class Module(Values):
    """One parsed script and the findings read from it (the values of its expressions: the base)."""

    def __init__(self, tree: ast.Module, source: str, file: str, judge: Judge) -> None:
        super().__init__(tree)
        self.source, self.file, self.judge = source, file, judge
        self.findings: dict[tuple[str, int], Finding] = {}
        self.functions = {
            f.name: f for f in tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        self._sites: list[tuple[ast.Call, Scope]] = []  # calls of this module's own functions
        self._site: ast.Call | None = None
        self._kernel_required = judge.spec.kernel == "require"

    # -- findings ---------------------------------------------------------------------------------

    def add(self, f: Finding) -> None:
        site = self._site
        if site is not None:  # found in a function for the values of one call: said at the call
            if (f.id, f.line or 0) in self.findings:
                return  # the function does it whatever it is given: already said where it does
            f = dataclasses.replace(
                f, line=site.lineno, detail=f"`{self.segment(site)}` -> line {f.line}: {f.detail}"
            )
        self.findings.setdefault((f.id, f.line or 0), f)

    def segment(self, node: ast.AST) -> str:
        s = ast.get_source_segment(self.source, node) or ""
        s = " ".join(s.split())
        return s if len(s) <= 90 else s[:87] + "..."

    def run(self) -> list[Finding]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and dotted(node.func).endswith("add_argument"):
                self._argparse(node)
        for scope, node in self._calls():
            self._call(node, scope)
        for node, scope in self._sites:
            self._through(node, scope)
        return sorted(self.findings.values(), key=lambda f: (f.line or 0, f.id))

    def _argparse(self, node: ast.Call) -> None:
        opts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        dest = next((k.value for k in node.keywords if k.arg == "dest"), None)
        name = dest.value if isinstance(dest, ast.Constant) and isinstance(dest.value, str) else None
        if name is None:
            longs = [o for o in opts if o.startswith("--")] or opts
            name = longs[0].lstrip("-").replace("-", "_") if longs else None
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        if name and default is not None:
            self.arg_defaults[name] = default

    def _calls(self) -> Iterator[tuple[Scope, ast.Call]]:
        """Every call, with the scope of the function it is in."""
        todo: list[tuple[ast.AST, Scope]] = [(self.tree, self.globals)]
        while todo:
            node, scope = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    body = child.body if isinstance(child.body, list) else []
                    inner = Scope(self, assignments(body), scope)
                    if not isinstance(child, ast.Lambda):
                        for a, d in zip(child.args.args[::-1], child.args.defaults[::-1], strict=False):
                            inner.assigns.setdefault(a.arg, d)
                    todo.append((child, inner))
                else:
                    if isinstance(child, ast.Call):
                        yield scope, child
                    todo.append((child, scope))

    def _call(self, node: ast.Call, scope: Scope) -> None:
        name = dotted(node.func)
        last = node.func.attr if isinstance(node.func, ast.Attribute) else name
        method = isinstance(node.func, ast.Attribute)
        args = node.args
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if name in ("os.environ.get", "environ.get", "os.getenv", "getenv") and len(args) > 1:
            self._env_default(node, scope)
        if name in _OPENERS or (method and last == "open" and name not in _OPENERS):
            is_path_open = method and last == "open" and name not in _OPENERS
            mode_node = (
                (args[0] if args else kw.get("mode"))
                if is_path_open
                else (args[1] if len(args) > 1 else kw.get("mode"))
            )
            mode = mode_node.value if isinstance(mode_node, ast.Constant) else "r"
            target = (
                node.func.value
                if is_path_open and isinstance(node.func, ast.Attribute)
                else (args[0] if args else kw.get("file"))
            )
            if target is None or not isinstance(mode, str):
                return
            if any(c in mode for c in "wax+"):
                self._write(node, self.value(target, scope), scope)
            else:
                self._read(node, self.value(target, scope))
        elif name in _FS_FUNCS:
            for i in _FS_FUNCS[name]:
                if i < len(args):
                    self._write(node, self.value(args[i], scope), scope)
        elif (
            method
            and (last in _PATH_METHODS or (last in _MOVE_METHODS and len(args) == 1))
            and isinstance(node.func, ast.Attribute)
        ):
            recv = self.value(node.func.value, scope)
            if recv.known:
                self._write(node, recv, scope)
                if last in _MOVE_METHODS and len(args) == 1:
                    self._write(node, self.value(args[0], scope), scope)
        elif (method and last in _NATIVE_METHODS | _PY_WRITER_METHODS) or name in _NATIVE_FUNCS:
            i = _NATIVE_FUNCS.get(name, 0)
            target = args[i] if i < len(args) else kw.get("path") or kw.get("path_or_buf") or kw.get("fname")
            if target is not None:
                native = name in _NATIVE_FUNCS or last in _NATIVE_METHODS
                self._write(node, self.value(target, scope), scope, native=native)
        elif name in _LISTING or (method and last in _LISTING):
            listed: ast.expr | None = args[0] if args else None
            if method and name not in _LISTING and isinstance(node.func, ast.Attribute):
                listed = node.func.value
            if listed is not None:
                self._read(node, self.value(listed, scope))
        elif last in PATH_CALLS or name == "os.path.join":
            self._read(node, self.value(node, scope), lookup_only=True)
        if name in _SHELL_FUNCS or name in _SUBPROCESS:
            self._process(node, name)
        if self._site is None and isinstance(node.func, ast.Name) and node.func.id in self.functions:
            self._sites.append((node, scope))

    def _through(self, site: ast.Call, scope: Scope) -> None:
        """The writes of one of this module's functions for the values a call gives it (one level
        deep: ``save_json(AUDIT_FILE, data)`` -> ``open(path, "w")`` in ``save_json``)."""
        assert isinstance(site.func, ast.Name)
        fn = self.functions[site.func.id]
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        bound = {p: self.value(a, scope) for p, a in zip(params, site.args, strict=False)}
        bound.update({k.arg: self.value(k.value, scope) for k in site.keywords if k.arg})
        bound = {k: v for k, v in bound.items() if v.known}
        if not bound:
            return
        inner = Scope(self, assignments(fn.body), self.globals, bound)
        self._site = site
        try:
            for node in _own_calls(fn):
                self._call(node, inner)
        finally:
            self._site = None

    def _env_default(self, node: ast.Call, scope: Scope, v: Val | None = None) -> None:
        """TVS107 for ``node``, an environment read -- or a write whose path ``v`` is derived from
        one -- whose literal default is a shared path."""
        if v is None:
            v = self._call_value(node, scope)
            if v.kind != "env" or v.var not in _OUTPUT_VARS:
                return
        if v.kind != "env" or v.default is None:
            return
        verdict = self.judge.decide(v.default.text, Op.WRITE)
        if verdict.area in ("lakehouse", "exports", "runs", "outside") or verdict.denied:
            self.add(finding(
                "TVS107", Severity.WARNING, self.file, node.lineno,
                f"`{self.segment(node)}`: when ${v.var} is unset the script writes {v.default.text} "
                f"({_explain(verdict)})",
                f"default ${v.var} to a path under $TV_RUN_DIR (the run sets {v.var} itself), or fail when "
                "it is unset", op="write", path=v.default.text, rule=verdict.decision.rule,
            ))  # fmt: skip

    def _write(self, node: ast.Call, v: Val, scope: Scope, *, native: bool = False) -> None:
        if v.kind == "env":
            self._env_default(node, scope, v)  # the variable is set in a run; its default is not
        if v.kind != "lit":
            return  # derived from a variable, or computed: the dynamic audit sees where it goes
        verdict = self.judge.decide(v.text, Op.WRITE)
        via = f" (via {v.origin})" if v.origin else ""
        what = f"`{self.segment(node)}` writes {v.text}{via}"
        d = verdict.decision
        sev = Severity.ERROR if d.action is Action.DENY else Severity.INFO
        common = {"op": "write", "path": v.text, "rule": d.rule}
        native_note = (
            "; a native writer: past the Python guard, only the kernel layer stops it" if native else ""
        )
        if verdict.area == "lakehouse":
            fix = verdict.hint or (
                ""
                if d.action is Action.DENY
                else "allowed by this profile only; write outputs under $TV_RUN_DIR/data/"
            )
            self.add(
                finding(
                    "TVS101",
                    sev,
                    self.file,
                    node.lineno,
                    f"{what}: {_explain(verdict)}{native_note}",
                    fix,
                    **common,
                )
            )
        elif verdict.area == "exports":
            self.add(
                finding(
                    "TVS102",
                    sev,
                    self.file,
                    node.lineno,
                    f"{what}: {_explain(verdict)}{native_note}",
                    verdict.hint,
                    **common,
                )
            )
        elif verdict.area == "runs":
            self.add(
                finding(
                    "TVS103",
                    Severity.WARNING,
                    self.file,
                    node.lineno,
                    f"{what}: the runs folder holds other runs' exports; {_explain(verdict)}",
                    **common,
                )
            )
        elif verdict.area == "outside":
            self.add(finding("TVS104", sev, self.file, node.lineno, f"{what}: {_explain(verdict)}", **common))
        elif native and verdict.area != "temp":
            self.add(
                finding(
                    "TVS131",
                    Severity.WARNING,
                    self.file,
                    node.lineno,
                    f"{what}: {_explain(verdict)}, but only where the kernel layer maps it: the Python "
                    "guard cannot redirect a native writer",
                    **common,
                )
            )
        elif verdict.area == "workspace":
            self.add(
                finding(
                    "TVS105", Severity.INFO, self.file, node.lineno, f"{what}: {_explain(verdict)}", **common
                )
            )

    def _read(self, node: ast.Call, v: Val, *, lookup_only: bool = False) -> None:
        if v.kind != "lit":
            return
        verdict = self.judge.decide(v.text, Op.READ)
        if verdict.area != "exports":
            return
        via = f" (via {v.origin})" if v.origin else ""
        self.add(finding(
            "TVS111", Severity.WARNING, self.file, node.lineno,
            f"`{self.segment(node)}` looks for input in {v.text}{via}: in a run the scanner export of this "
            f"run is $TV_SCAN_DIR; a hard-coded {self.judge.spec.layout.exports!r} may be missing in "
            "isolation or pick another run's export",
            op="read", path=v.text,
        ))  # fmt: skip

    def _process(self, node: ast.Call, name: str) -> None:
        sev = Severity.INFO if self._kernel_required else Severity.WARNING
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        shell = kw.get("shell")
        if name in _SHELL_FUNCS or (isinstance(shell, ast.Constant) and shell.value is True):
            self.add(
                finding(
                    "TVS121",
                    sev,
                    self.file,
                    node.lineno,
                    f"`{self.segment(node)}` runs a shell; its programs' writes are seen by the "
                    "kernel layer only",
                    op="exec",
                )
            )
            return
        prog = ""
        first = node.args[0] if node.args else kw.get("args")
        if isinstance(first, (ast.List, ast.Tuple)) and first.elts:
            head = first.elts[0]
            prog = (
                head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else dotted(head)
            )
        elif isinstance(first, ast.Constant) and isinstance(first.value, str):
            prog = first.value.split()[0] if first.value.split() else ""
        if prog and posixpath.basename(prog) not in _PYTHONS and prog not in _PYTHONS:
            self.add(
                finding(
                    "TVS122",
                    sev,
                    self.file,
                    node.lineno,
                    f"`{self.segment(node)}` runs {prog!r}, which the Python guard does not reach",
                    op="exec",
                    path=prog,
                )
            )


def _own_calls(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.Call]:
    """The calls in ``fn``'s body, not in the functions it defines."""
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Call):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def _explain(v: Verdict) -> str:
    d = v.decision
    if d.action is Action.DENY:
        return f"denied by rule '{d.rule}'" + (f" ({d.reason})" if d.reason else "")
    if d.action is Action.REDIRECT:
        return f"redirected into the run folder by rule '{d.rule}'"
    return f"allowed by rule '{d.rule}'" + (f" ({d.reason})" if d.reason else "")


def audit_source(source: str, file: str, judge: Judge) -> list[Finding]:
    """The static findings of one script's source (``SyntaxError`` when it does not parse)."""
    tree = ast.parse(source, filename=file)
    return Module(tree, source, file, judge).run()
