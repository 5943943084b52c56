"""What this machine's kernel lets the sandbox do, found by trying it (``tv-sandbox doctor``).

Each mount feature is tried for real in a forked child that enters a private mount namespace
exactly as :func:`sandbox.kernel.spawn` would (plus a user namespace when not root), on a scratch
folder; the child's namespace, and every mount in it, vanishes when it exits. A few milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import stat
import tempfile
import time

from sandbox._record import field, record
from sandbox.kernel import _libc, landlock, mounts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_TIMEOUT_S = 5.0  # a child stuck in the kernel (a hung mount) must not hang `doctor`

_PREFIX = "tv-sandbox-probe-"  # + pid + "-": lets a later probe remove what a killed one left

FEATURES = ("landlock", "user_namespaces", "mount_namespace", "overlay", "readonly_bind")


@record(frozen=True)
class KernelSupport:
    """The kernel features the sandbox can use here; ``reasons`` says why for each one missing
    (keys: the names in :data:`FEATURES`)."""

    landlock_abi: int
    user_namespaces: bool
    mount_namespace: bool
    overlay: bool
    readonly_bind: bool
    reasons: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def has(self, feature: str) -> bool:
        if feature not in FEATURES:
            raise ValueError(f"unknown kernel feature {feature!r}; known: {', '.join(FEATURES)}")
        return self.landlock_abi > 0 if feature == "landlock" else bool(getattr(self, feature))


def _in_child(body: Callable[[Callable[[str], None]], None]) -> list[str]:
    """Run ``body(say)`` in a forked child; return the lines it said. A crash becomes a line."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0

        def say(line: str) -> None:
            os.write(wfd, (" ".join(line.split()) + "\n").encode())

        try:
            os.close(rfd)
            body(say)
        except BaseException as e:
            os.write(wfd, f"error {' '.join(str(e).split())}\n".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    chunks, deadline = [], time.monotonic() + _TIMEOUT_S
    try:
        while True:
            ready, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                chunks.append(b"\nerror the check did not finish within 5 s\n")
                break
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode("utf-8", "replace").splitlines()


def _mount_checks(scratch: str) -> Callable[[Callable[[str], None]], None]:
    def body(say: Callable[[str], None]) -> None:
        try:
            # as a step's keeper does: user, mount and PID namespaces in one call
            userns = mounts.unshare_mount_namespace(pid_namespace=True)
            mounts.make_private()
        except OSError as e:
            say(f"mount_namespace fail {e.strerror}")
            return
        say(f"mount_namespace ok {int(userns)}")
        d = {n: os.path.join(scratch, n) for n in ("lower", "upper", "work", "merged", "ro")}
        try:
            mounts.overlay([d["lower"]], d["upper"], d["work"], d["merged"])
            with open(os.path.join(d["merged"], "new"), "w") as fh:
                fh.write("x")
            if not os.path.exists(os.path.join(d["upper"], "new")):
                raise OSError(0, "a write to the merged folder did not land in the upper folder")
            say("overlay ok")
        except OSError as e:
            say(f"overlay fail {e.strerror}")
        try:
            mounts.bind(d["lower"], d["ro"], readonly=True)
            try:
                os.chmod(os.path.join(d["ro"], "file"), 0o600)
            except OSError as e:
                if e.errno != errno.EROFS:
                    raise
                say("readonly_bind ok")
            else:
                say("readonly_bind fail chmod under a read-only bind succeeded")
        except OSError as e:
            say(f"readonly_bind fail {e.strerror}")

    return body


def _userns_check(say: Callable[[str], None]) -> None:
    mounts.unshare_mount_namespace(user_namespace=True)
    say("user_namespaces ok")


def _rmtree(path: str) -> None:
    def fix(func: Callable[..., object], p: str, _exc: object) -> None:
        # overlayfs leaves work/work with mode 000; as non-root we must open it up to delete it
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
            shutil.rmtree(p, onerror=fix)
        else:
            os.unlink(p)

    shutil.rmtree(path, onerror=fix)


def _sweep(parent: str) -> None:
    """Remove scratch folders of probes whose process died before cleaning up (a SIGKILL)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_PREFIX) :].partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or a reused pid): not ours to remove
        except ProcessLookupError:
            pass
        except OSError:
            continue
        with contextlib.suppress(OSError):  # another prober got there first
            _rmtree(os.path.join(parent, name))


def probe(scratch_dir: str | None = None) -> KernelSupport:
    """Find out which kernel layers work here. Never raises for a missing feature.

    ``scratch_dir`` is where the overlay is tried (default: the temp dir, where workspaces go):
    overlayfs cannot use every filesystem as an upper layer, so try it where it will be used.
    """
    t0 = time.perf_counter()
    reasons: dict[str, str] = {}
    abi, err = landlock.query_abi()
    if abi == 0:
        reasons["landlock"] = landlock.unavailable_reason(err)
    _libc.libc()  # before forking: the children must not dlopen
    parent = scratch_dir or tempfile.gettempdir()
    _sweep(parent)
    scratch = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent)
    try:
        for n in ("lower", "upper", "work", "merged", "ro"):
            os.mkdir(os.path.join(scratch, n))
        with open(os.path.join(scratch, "lower", "file"), "w") as fh:
            fh.write("x")
        said = _in_child(_mount_checks(scratch))
        if os.geteuid() == 0:
            said += _in_child(_userns_check) or ["user_namespaces fail no answer"]
    finally:
        _rmtree(scratch)
    found = {f: False for f in FEATURES[1:]}
    userns_used = False
    for line in said:
        name, _, rest = line.partition(" ")
        status, _, why = rest.partition(" ")
        if name in found:
            found[name] = status == "ok"
            if status == "ok" and name == "mount_namespace":
                userns_used = why == "1"
            elif status != "ok":
                reasons[name] = why or "failed"
        elif name == "error":
            reasons.setdefault("mount_namespace", rest)
    if os.geteuid() != 0:
        found["user_namespaces"] = found["mount_namespace"] and userns_used
        if not found["user_namespaces"]:
            reasons.setdefault("user_namespaces", reasons.get("mount_namespace", "unshare failed"))
    for name in ("overlay", "readonly_bind"):
        if not found["mount_namespace"]:
            reasons.setdefault(name, "needs a private mount namespace, which is unavailable")
        elif not found[name]:
            reasons.setdefault(name, "no answer from the check")
    for name in ("user_namespaces", "mount_namespace"):
        if not found[name]:
            reasons.setdefault(name, "no answer from the check")
    return KernelSupport(
        landlock_abi=abi,
        user_namespaces=found["user_namespaces"],
        mount_namespace=found["mount_namespace"],
        overlay=found["overlay"],
        readonly_bind=found["readonly_bind"],
        reasons=reasons,
        seconds=time.perf_counter() - t0,
    )


_COVERS = {
    "landlock": (
        "Landlock",
        "writes, creates, deletes and renames outside the writable roots are denied (EACCES) for every "
        "process of a step: shell, make, native libraries, `python -I`. Not covered: chmod, chown, utime, "
        "xattrs, and threads already running (so it is applied to each step process before exec, never "
        "inside a running Ray worker).",
    ),
    "readonly_bind": (
        "Read-only mounts",
        "every mutation of the lakehouse, the exports and everything outside the writable roots fails with "
        "EROFS, chmod, utime, chown and xattrs included, whatever the program.",
    ),
    "overlay": (
        "Workspace overlay",
        "a write of any process to a relative path (or a workspace path) lands in the run folder, as the "
        "Python guard would redirect it; the host stays byte-identical.",
    ),
}


def describe(support: KernelSupport) -> str:
    """Several lines for ``tv-sandbox doctor``: each layer, whether it works here (or why not), and
    what it covers."""
    lines = [
        f"tv-sandbox kernel layer on Linux {os.uname().release} (probed in {support.seconds * 1000:.1f} ms)"
    ]

    def layer(key: str, ok: bool, detail: str = "") -> None:
        title, covers = _COVERS[key]
        state = f"yes{detail}" if ok else f"NO -- {support.reasons.get(key, 'unavailable')}"
        lines.append(f"  {title + ':':<20} {state}")
        lines.append(f"      {covers}")

    layer("landlock", support.landlock_abi > 0, f" (ABI {support.landlock_abi})")
    ns = "yes" if support.mount_namespace else f"NO -- {support.reasons.get('mount_namespace', '')}"
    uns = "yes" if support.user_namespaces else f"no ({support.reasons.get('user_namespaces', '')})"
    lines.append(f"  {'Namespaces:':<20} mount + PID: {ns}; user namespaces: {uns}")
    lines.append(
        "      private to each step: its mounts and processes are invisible to the host and vanish with "
        "it; it sees and signals only its own processes, holds no capability, and ends whole."
    )
    layer("readonly_bind", support.readonly_bind)
    layer("overlay", support.overlay)
    lines.append(f"  {'Python guard:':<20} always")
    lines.append(
        "      redirects and explained denials (which rule, why, what to do) for Python code, in-process "
        "and in child interpreters; it cannot see shell, native or `python -I` writes."
    )
    if support.landlock_abi > 0 and support.mount_namespace and support.overlay and support.readonly_bind:
        verdict = "every layer is available."
    elif support.landlock_abi > 0 or support.mount_namespace:
        verdict = "partial kernel layer: the layers marked NO leave the gaps described above."
    else:
        verdict = (
            "no kernel layer: only the Python guard protects the host "
            "(a policy with kernel = require refuses to run)."
        )
    lines.append(f"Summary: {verdict}")
    return "\n".join(lines)
