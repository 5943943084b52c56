"""Run a command where no user namespace can be made: the machines where a launcher falls back to
Landlock alone (a kernel or distribution that refuses unprivileged user namespaces).

Usage (as root): ``python no_userns.py COMMAND...`` -- the command runs in a new user namespace
that maps every id to itself (so ``setpriv --reuid=65534`` inside is the real nobody outside), with
``user.max_user_namespaces`` 0 in it: every ``unshare(CLONE_NEWUSER)`` below fails with ENOSPC, as
it does on such machines. Nothing of the machine's own settings changes; the limit is the new
namespace's. Exits with the command's status (125 when the namespace cannot be made).
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: no_userns.py COMMAND...", file=sys.stderr)
        return 125
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(mapped_w)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os.write(2, f"no_userns: unshare: {os.strerror(ctypes.get_errno())}\n".encode())
            os._exit(125)
        os.write(ready_w, b"1")
        os.close(ready_w)
        if os.read(mapped_r, 1) != b"1":
            os._exit(125)
        try:
            with open("/proc/sys/user/max_user_namespaces", "w") as fh:
                fh.write("0")
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, f"no_userns: {e}\n".encode())
        os._exit(125)
    os.close(ready_w)
    os.close(mapped_r)
    ok = os.read(ready_r, 1) == b"1"
    if ok:
        try:
            with open(f"/proc/{pid}/setgroups", "w") as fh:
                fh.write("allow")
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as fh:
                    fh.write("0 0 4294967295\n")
            os.write(mapped_w, b"1")
        except OSError as e:
            print(f"no_userns: cannot map the namespace: {e}", file=sys.stderr)
    os.close(mapped_w)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
