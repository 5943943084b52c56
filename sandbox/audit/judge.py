"""The policy as the audit asks it: a literal path placed in a workspace and decided by
``Policy.decide`` -- the same function every enforcer calls -- never by a list of patterns here.

The static audit has no run, so :class:`Judge` binds the policy to a synthetic one (paths under
``/tv-audit``; nothing there is touched: ``decide`` does no I/O). A relative literal is placed in the
workspace, as the script's cwd is in a run; an absolute one stays where it is.
"""

from __future__ import annotations

import dataclasses
import posixpath

from sandbox._paths import is_within, parts
from sandbox.policy import Action, Decision, Op, Policy, PolicySpec

_BASE = "/tv-audit"
RUN_ID = "AUDIT"
#: What stands for a part of a path the audit cannot know (an f-string's ``{name}``).
UNKNOWN = "__tvs__"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The policy's answer for one literal path, and where the path falls in the layout."""

    decision: Decision
    area: str  # lakehouse | exports | runs | run_dir | workspace | temp | outside
    rel: str  # workspace-relative path ("" when outside)

    @property
    def denied(self) -> bool:
        return self.decision.action is Action.DENY

    @property
    def hint(self) -> str:
        """The hint of the rule that decided, when it is a policy file's own (static text)."""
        h = self.decision.hint
        return h if h and _BASE not in h else ""


class Judge:
    """Decide literal paths with ``spec`` (see the module docstring)."""

    def __init__(self, spec: PolicySpec, *, mode: str = "enforce") -> None:
        self.spec = spec
        self.workspace = f"{_BASE}/ws"
        self.tmp = f"{_BASE}/tmp"
        self.policy: Policy = spec.bind(
            host=f"{_BASE}/host", workspace=self.workspace, run_id=RUN_ID, mode=mode, temp_dirs=(self.tmp,)
        )
        lay = spec.layout
        self._areas = [
            ("run_dir", parts(f"{lay.runs}/{RUN_ID}")),
            ("runs", parts(lay.runs)),
            *((name, parts(rel)) for name, rel in lay.mounts().items()),
        ]

    def place(self, text: str) -> str:
        """The absolute path a literal names when the script runs in the workspace."""
        if text == "~" or text.startswith("~/"):  # a home folder: never inside the workspace
            text = f"{_BASE}-home" + text[1:]
        path = text if text.startswith("/") else posixpath.join(self.workspace, text)
        return posixpath.normpath(path)

    def decide(self, text: str, op: Op) -> Verdict:
        path = self.place(text)
        d = self.policy.decide(path, op)
        p, ws = parts(path), parts(self.workspace)
        if not is_within(p, ws):
            area = "temp" if is_within(p, parts(self.tmp)) else "outside"
            return Verdict(d, area, "")
        rel = p[len(ws) :]
        area = next((name for name, a in self._areas if is_within(rel, a)), "workspace")
        return Verdict(d, area, "/".join(rel))
