"""The policy's vocabulary: the operations (:class:`Op`), the actions (:class:`Action`), the answer
(:class:`Decision`) and a policy file's :class:`Rule`, with the component-wise glob matching rules
use. :mod:`sandbox.policy` builds on it (and re-exports it: import from there).

Imported by every sandboxed interpreter at start-up: nothing here imports beyond what the
interpreter has already loaded (no enum, dataclasses, typing or fnmatch at import).
"""

from __future__ import annotations

from sandbox._denied import AccessDenied
from sandbox._record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any, ClassVar


class _Names(type):
    """Metaclass of :class:`Op` and :class:`Action`: iterable over their members, like an enum."""

    _members: tuple[Any, ...]

    def __iter__(cls) -> Iterator[Any]:
        return iter(cls._members)


class _Name(str):
    """A member of a closed set of names: a ``str`` (so it compares, hashes, prints and serialises as
    its value) that is also a singleton, so enforcers may test it with ``is``. Not an ``enum.Enum``:
    importing :mod:`enum` costs milliseconds in every sandboxed interpreter's start-up."""

    __slots__ = ()
    _members: ClassVar[tuple[Any, ...]] = ()

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.upper()}"

    def __reduce__(self) -> tuple[Any, ...]:  # unpickles as the same singleton
        return (getattr, (type(self), self.upper()))

    @classmethod
    def _define(cls, *values: str) -> None:
        members = tuple(str.__new__(cls, v) for v in values)
        for m in members:
            setattr(cls, m.upper(), m)
        cls._members = members

    @classmethod
    def named(cls, value: str) -> Any:
        """The member whose value is ``value``; ``ValueError`` if there is none."""
        for m in cls._members:
            if m == value:
                return m
        raise ValueError(f"{value!r} is not a valid {cls.__name__}")


class Op(_Name, metaclass=_Names):
    """The operation families the policy tells apart.

    ``READ`` open for reading, stat, list, readlink; ``WRITE`` create, truncate, append, open for
    update; ``DELETE`` unlink/remove; ``RENAME`` both ends of a rename/replace/move; ``MKDIR``;
    ``RMDIR``; ``LINK`` the new name of a hard link or symlink; ``METADATA`` chmod, chown, utime,
    xattrs.
    """

    __slots__ = ()
    READ: ClassVar[Op]
    WRITE: ClassVar[Op]
    DELETE: ClassVar[Op]
    RENAME: ClassVar[Op]
    MKDIR: ClassVar[Op]
    RMDIR: ClassVar[Op]
    LINK: ClassVar[Op]
    METADATA: ClassVar[Op]


Op._define("read", "write", "delete", "rename", "mkdir", "rmdir", "link", "metadata")

MUTATING: frozenset[Op] = frozenset(op for op in Op if op is not Op.READ)

#: Names a policy file may use in a rule's ``ops``: every single op plus these groups.
OP_GROUPS: dict[str, frozenset[Op]] = {
    **{op.value: frozenset({op}) for op in Op},
    "mutate": MUTATING,
    "all": frozenset(Op),
}


class Action(_Name, metaclass=_Names):
    """What a decision tells the enforcer to do."""

    __slots__ = ()
    ALLOW: ClassVar[Action]
    DENY: ClassVar[Action]
    REDIRECT: ClassVar[Action]


Action._define("allow", "deny", "redirect")


#: The environment a sandboxed step's interpreters read (set by ``guard.bootstrap.child_env``),
#: named once for the launcher, the guard's start-up and the executor (``sandbox._execute``).
ENV_POLICY = "TV_SANDBOX_POLICY"  # the resolved policy's file (``resolved.save_resolved``)
ENV_EVENTS = "TV_SANDBOX_EVENTS"  # the run's event log (JSON lines)
ENV_OVERLAY = "TV_SANDBOX_OVERLAY"  # "1": the kernel layer's overlay maps the workspace
ENV_IMAGE = "TV_SANDBOX_GUARD_IMAGE"  # the guard's module image (guard/boot/sitecustomize.py reads it)

#: The fields of the record of a decision an enforcer executed, in order: the event log's lines
#: after their ``time`` and ``pid`` (``sandbox.events.FIELDS``), what ``sandbox._execute.emit``
#: hands a sink. One list for the writer, the executor and every reader.
EVENT_FIELDS = (
    "layer",
    "op",
    "action",
    "rule",
    "path",
    "resolved",
    "target",
    "captured",
    "profile",
    "reason",
    "hint",
)


@record(frozen=True)
class Decision:
    """The answer for one (resolved path, operation).

    ``REDIRECT`` means: execute a mutation on ``target`` instead of ``path``; for a read, look at
    ``target`` first and fall back to ``path`` when it does not exist (read-your-writes, an overlay's
    upper layer). ``captured`` marks an audit-mode redirect of a write the enforce mode would deny.
    """

    action: Action
    rule: str
    path: str
    target: str | None = None
    reason: str = ""
    hint: str = ""
    captured: bool = False

    @property
    def denied(self) -> bool:
        return self.action is Action.DENY

    def error(
        self,
        filename: Any,
        op: Op | str,
        *,
        profile: str = "",
        layer: str = "python",
        resolved: str | None = None,
    ) -> AccessDenied:
        """The :class:`AccessDenied` an enforcer raises for this (denying) decision; ``resolved``
        is the decided path as the user knows it (``Policy.user_path``; default: ``path``)."""
        return AccessDenied(
            filename,
            op=str(op),
            rule=self.rule,
            reason=self.reason,
            hint=self.hint,
            profile=profile,
            layer=layer,
            resolved=self.path if resolved is None else resolved,
        )


# -- rules --------------------------------------------------------------------------------------


def _fnmatch(name: str, pattern: str) -> bool:
    """``fnmatch.fnmatchcase(name, pattern)``. ``fnmatch`` loads ``re`` (milliseconds of a start-up),
    so it is imported only when the literal text around the wildcards cannot settle the answer."""
    first = min((i for i in (pattern.find("*"), pattern.find("?"), pattern.find("[")) if i >= 0), default=-1)
    if first < 0:
        return name == pattern
    # What precedes the first wildcard and follows the last one is literal: a name without that
    # prefix and suffix cannot match (e.g. "x" and "portfolio_candidates*.json").
    last = max(first, pattern.rfind("*"), pattern.rfind("?"), pattern.rfind("]"))
    head, tail = pattern[:first], pattern[last + 1 :]
    if len(name) < len(head) + len(tail) or not (name.startswith(head) and name.endswith(tail)):
        return False
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _match(pattern: tuple[str, ...], rel: tuple[str, ...]) -> bool:
    """Glob match by components: ``*``/``?``/``[..]`` within one component, ``**`` across any."""
    if not pattern:
        return not rel
    head = pattern[0]
    if head == "**":
        return any(_match(pattern[1:], rel[i:]) for i in range(len(rel) + 1))
    return bool(rel) and _fnmatch(rel[0], head) and _match(pattern[1:], rel[1:])


def _match_child(pattern: tuple[str, ...], rel: tuple[str, ...]) -> bool | None:
    """Does ``pattern`` match ``rel + (name,)``, for *every* name (True), for none (False), or does
    it depend on the name (None)? ``_match`` with the last component unknown."""
    if not pattern:
        return False  # rel + (name,) is never empty
    head = pattern[0]
    if head == "**":
        seen = {_match_child(pattern[1:], rel[i:]) for i in range(len(rel) + 1)}
        seen.add(_match(pattern[1:], ()))  # the ** also takes the name
        return True if True in seen else (None if None in seen else False)
    if rel:
        return _match_child(pattern[1:], rel[1:]) if _fnmatch(rel[0], head) else False
    if len(pattern) > 1 and not all(c == "**" for c in pattern[1:]):
        return False  # more components than the name: no child matches
    return True if head == "*" else None


@record(frozen=True)
class Rule:
    """One rule of a policy file: paths (relative to the workspace) x operations -> action."""

    name: str
    paths: tuple[str, ...]
    ops: frozenset[Op]
    action: Action
    reason: str = ""
    hint: str = ""

    def compile(self, placeholders: Mapping[str, str]) -> _CompiledRule:
        pats = tuple(tuple(c for c in p.format_map(placeholders).split("/") if c) for p in self.paths)
        return _CompiledRule(self, pats)


@record(frozen=True)
class _CompiledRule:
    rule: Rule
    patterns: tuple[tuple[str, ...], ...]

    def matches(self, rel: tuple[str, ...], op: Op) -> bool:
        return op in self.rule.ops and any(_match(p, rel) for p in self.patterns)

    def matches_child(self, rel: tuple[str, ...], op: Op) -> bool | None:
        """``matches(rel + (name,), op)`` for every name / for none / None: it depends on the name."""
        if op not in self.rule.ops:
            return False
        seen = {_match_child(p, rel) for p in self.patterns}
        return True if True in seen else (None if None in seen else False)
