"""What the static audit knows of a script's values: a literal path, a path derived from an
environment variable (with its default), or nothing -- followed through literals, f-strings,
``os.path.join`` / ``Path(...) / ...`` chains, constants, assignments, argparse defaults and
environment reads (:class:`Values`). The findings read from them are :mod:`sandbox.audit.static`'s.
"""

from __future__ import annotations

import ast
import dataclasses
import posixpath

from sandbox.audit.judge import UNKNOWN


@dataclasses.dataclass(frozen=True)
class Val:
    """What the audit knows of a value: a literal path (``lit``), a path derived from an
    environment variable (``env``, with the literal ``default`` used when it is unset), or nothing."""

    kind: str  # lit | env | unknown
    text: str = ""
    var: str = ""
    default: Val | None = None
    origin: str = ""  # the constant it came through, e.g. AUDIT_FILE

    @property
    def known(self) -> bool:
        return self.kind != "unknown"


NOTHING = Val("unknown")
#: The longest text the audit keeps for a value: past it (``A1 = A0 + A0`` eighty times over: 2**80
#: characters), it is no path anyone writes -- nothing is known of it.
MAX_TEXT = 1 << 16
PATH_CALLS = {"Path", "PurePath", "PosixPath", "PurePosixPath"}  # what makes a path of its arguments
_SAME = {"str", "fspath", "abspath", "normpath", "realpath", "expanduser", "resolve", "absolute"}


def dotted(node: ast.AST) -> str:
    """``os.path.join`` for the expression ``os.path.join``; ``""`` when not a plain name chain."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def join(a: Val, b: Val) -> Val:
    if b.kind == "lit" and b.text.startswith("/"):
        return b
    if a.kind == "lit" and b.kind == "lit":
        return Val("lit", posixpath.join(a.text, b.text), origin=a.origin or b.origin)
    if a.kind == "lit" and b.kind == "unknown":
        return Val("lit", posixpath.join(a.text, UNKNOWN), origin=a.origin)
    if a.kind == "env":
        d = join(a.default, b) if a.default is not None else None
        return Val(
            "env", posixpath.join(a.text, b.text), a.var, d if d and d.kind == "lit" else None, a.origin
        )
    return NOTHING


class Scope:
    """Names visible in one function (its own assignments, then the module's), evaluated lazily."""

    def __init__(
        self,
        module: Values,
        assigns: dict[str, ast.expr],
        parent: Scope | None,
        values: dict[str, Val] | None = None,
    ) -> None:
        self.module, self.assigns, self.parent = module, assigns, parent
        self.values = values or {}  # parameters bound to the values of one call site
        self._busy: set[str] = set()
        self._known: dict[str, Val] = {}  # each name evaluated once: A1 = A0 + A0 ... is not 2**N

    def lookup(self, name: str) -> Val:
        if name in self.values:
            return self.values[name]
        if name in self._known:
            return self._known[name]
        if name in self.assigns and name not in self._busy:
            self._busy.add(name)
            try:
                v = self.module.value(self.assigns[name], self)
            finally:
                self._busy.discard(name)
            if v.known and not v.origin and self.parent is None:
                v = dataclasses.replace(v, origin=name)
            self._known[name] = v
            return v
        return self.parent.lookup(name) if self.parent is not None else NOTHING


def assignments(body: list[ast.stmt]) -> dict[str, ast.expr]:
    """Simple ``NAME = expr`` assignments of a body and its blocks (not of nested functions)."""
    out: dict[str, ast.expr] = {}
    todo = list(body)
    while todo:
        st = todo.pop(0)
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            out.setdefault(st.targets[0].id, st.value)
        elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.value is not None:
            out.setdefault(st.target.id, st.value)
        elif isinstance(st, ast.With):
            for item in st.items:
                if isinstance(item.optional_vars, ast.Name):
                    out.setdefault(item.optional_vars.id, item.context_expr)
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo.extend(getattr(st, field, []) or [])
    return out


class Values:
    """The values of one parsed script's expressions (:meth:`value`), in a :class:`Scope`."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.globals = Scope(self, assignments(tree.body), None)
        self.arg_defaults: dict[str, ast.expr] = {}  # argparse dests -> their defaults

    # -- values -----------------------------------------------------------------------------------

    def value(self, node: ast.expr, scope: Scope) -> Val:
        v = self._value(node, scope)
        if len(v.text) > MAX_TEXT or (v.default is not None and len(v.default.text) > MAX_TEXT):
            return NOTHING
        return v

    def _value(self, node: ast.expr, scope: Scope) -> Val:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return Val("lit", node.value) if len(node.value) <= MAX_TEXT else NOTHING
        if isinstance(node, ast.JoinedStr):
            return self._fstring(node, scope)
        if isinstance(node, ast.Name):
            return scope.lookup(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return join(self.value(node.left, scope), self.value(node.right, scope))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            a, b = self.value(node.left, scope), self.value(node.right, scope)
            if a.kind == "lit" and b.kind == "lit":
                return Val("lit", a.text + b.text, origin=a.origin)
            return (
                dataclasses.replace(a, text=a.text + b.text)
                if a.kind == "env" and b.kind == "lit"
                else NOTHING
            )
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            vals = [self.value(v, scope) for v in node.values]
            env = next((v for v in vals if v.kind == "env"), None)
            lit = next((v for v in vals if v.kind == "lit"), None)
            if env is not None:
                return dataclasses.replace(env, default=env.default or lit)
            return lit or NOTHING
        if isinstance(node, ast.IfExp):
            return self.value(ast.BoolOp(op=ast.Or(), values=[node.body, node.orelse]), scope)
        if isinstance(node, ast.Attribute):
            if node.attr == "parent":
                v = self.value(node.value, scope)
                return dataclasses.replace(v, text=posixpath.dirname(v.text)) if v.known else NOTHING
            if isinstance(node.value, ast.Name) and node.attr in self.arg_defaults:
                return self.value(self.arg_defaults[node.attr], self.globals)
            return NOTHING
        if isinstance(node, ast.Subscript) and dotted(node.value) in ("os.environ", "environ"):
            var = self.value(node.slice, scope)
            return Val("env", "", var.text) if var.kind == "lit" else NOTHING
        if isinstance(node, ast.Call):
            return self._call_value(node, scope)
        return NOTHING

    def _fstring(self, node: ast.JoinedStr, scope: Scope) -> Val:
        text, env = "", None
        for part in node.values:
            if isinstance(part, ast.Constant):
                text += str(part.value)
                continue
            assert isinstance(part, ast.FormattedValue)
            v = self.value(part.value, scope)
            if v.kind == "env" and not text and env is None:
                env = v
            elif v.kind == "lit":
                text += v.text
            else:
                text += UNKNOWN
        if env is not None:
            return dataclasses.replace(env, text=env.text + text)
        return Val("lit", text)

    def _call_value(self, node: ast.Call, scope: Scope) -> Val:
        name = dotted(node.func)
        last = node.func.attr if isinstance(node.func, ast.Attribute) else name
        args = node.args
        if name in ("os.environ.get", "environ.get", "os.getenv", "getenv") and args:
            var = self.value(args[0], scope)
            if var.kind != "lit":
                return NOTHING
            dflt = self.value(args[1], scope) if len(args) > 1 else NOTHING
            return Val("env", "", var.text, dflt if dflt.kind == "lit" else None)
        if last in PATH_CALLS or name in ("os.path.join", "posixpath.join", "path.join"):
            if not args:
                return Val("lit", ".")
            v = self.value(args[0], scope)
            for a in args[1:]:
                v = join(v, self.value(a, scope))
            return v
        if last in _SAME or name == "os.path.dirname":
            src: ast.expr | None = args[0] if args else None
            if src is None and isinstance(node.func, ast.Attribute):
                src = node.func.value
            inner = self.value(src, scope) if src is not None else NOTHING
            if name.endswith("dirname") and inner.known:
                return dataclasses.replace(inner, text=posixpath.dirname(inner.text))
            return inner
        if last in ("joinpath",) and isinstance(node.func, ast.Attribute):
            v = self.value(node.func.value, scope)
            for a in args:
                v = join(v, self.value(a, scope))
            return v
        return NOTHING
