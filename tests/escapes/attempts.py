"""The escape suite's table: attempts of a production step to change the host.

Each attempt is one command run as one sandboxed step by `tv-sandbox run`. Placeholders:
``{lake}`` the host lakehouse's real path, ``{lakefile}`` a lakehouse file, ``{scan}`` the scanner
export folder of the run (host path), ``{host}`` the host root, ``{outside}`` a folder outside
everything, ``{home}`` a home folder, ``{py}`` the Python interpreter. Relative paths are relative to
the workspace (the step's cwd), where ``data/lakehouse`` and ``export/`` are the mounts.

Expectations (enforce mode):
- ``error``: the step fails (the attempt saw an OSError: EACCES from the guard or Landlock, EROFS
  from a read-only mount) and the host is byte-identical;
- ``lands:<rel>``: the step succeeds and its output is at ``<rel>`` in the exported run folder,
  the host byte-identical (relative native writes: the overlay does what the guard does).
Audit mode: attempts on the workspace and its mounts succeed and leave the host identical (the
write is captured in the run folder); attempts outside (``{outside}``, ``{home}``) still fail.
"""

from __future__ import annotations

from dataclasses import dataclass

LF = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"


@dataclass(frozen=True)
class Attempt:
    id: str
    kind: str  # py | sh | pyI (python -I -S)
    code: str
    expect: str = "error"
    family: str = ""
    audit: str | None = None  # the audit-mode outcome where it is not the general one

    @property
    def outside(self) -> bool:
        return "{outside}" in self.code or "{home}" in self.code


def _py(id: str, code: str, family: str, expect: str = "error", audit: str | None = None) -> Attempt:
    return Attempt(id, "py", code, expect, family, audit)


# In audit mode under the kernel layer the lakehouse's capture overlay and the workspace overlay
# are two mounts: rename(2) and link(2) between them fail with EXDEV, and the guard moves (copies)
# across instead, as `mv` would. The result is in the run folder, the host untouched.
AUDIT_MOVED = "lands:moved.csv"


def _sh(id: str, code: str, expect: str = "error") -> Attempt:
    return Attempt(id, "sh", code, expect, "shell")


ATTEMPTS: tuple[Attempt, ...] = (
    # -- open modes --------------------------------------------------------------------------------
    _py("open-w", "open('data/lakehouse/new.csv', 'w').write('x')", "open"),
    _py("open-a", f"open('{LF}', 'a').write('x')", "open"),
    _py("open-rplus", f"open('{LF}', 'r+').write('x')", "open"),
    _py("open-x", "open('data/lakehouse/x.csv', 'x')", "open"),
    _py("open-wb-host-abs", "open('{lakefile}', 'wb').write(b'x')", "open"),
    _py("seed-bug", "open('data/lakehouse/selection_audit.json', 'w').write('{{}}')", "open"),
    # -- os.* with and without dir_fd ---------------------------------------------------------------
    _py("os-open-creat", "import os; os.open('data/lakehouse/n', os.O_WRONLY | os.O_CREAT)", "os"),
    _py("os-open-trunc", f"import os; os.open('{LF}', os.O_RDWR | os.O_TRUNC)", "os"),
    _py(
        "os-open-dirfd",
        "import os; d = os.open('{lake}', os.O_RDONLY); os.open('n', os.O_WRONLY | os.O_CREAT, dir_fd=d)",
        "os",
    ),
    _py("os-remove", f"import os; os.remove('{LF}')", "os"),
    _py(
        "os-unlink-dirfd",
        "import os; d = os.open('{lake}', os.O_RDONLY); os.unlink('BINANCE_BTCUSDT_1d.csv', dir_fd=d)",
        "os",
    ),
    _py("os-rename-out", f"import os; os.rename('{LF}', 'moved.csv')", "os", audit=AUDIT_MOVED),
    _py(
        "os-rename-dirfd",
        "import os; d = os.open('{lake}', os.O_RDONLY); os.rename('BINANCE_BTCUSDT_1d.csv', 'x', src_dir_fd=d, dst_dir_fd=d)",
        "os",
    ),
    _py(
        "os-replace-in",
        f"import os; open('t', 'w').write('x'); os.replace('t', '{LF}')",
        "os",
        audit=f"lands:audit/{LF}",
    ),
    _py("os-mkdir", "import os; os.mkdir('data/lakehouse/d')", "os"),
    _py("os-makedirs", "import os; os.makedirs('data/lakehouse/a/b')", "os"),
    _py("os-rmdir", "import os; os.rmdir('data/lakehouse/empty_dir')", "os"),
    _py("os-link-out", f"import os; os.link('{LF}', 'hard.csv')", "os", audit="lands:hard.csv"),
    _py("os-symlink-in", "import os; os.symlink('/etc/passwd', 'data/lakehouse/l')", "os"),
    _py("os-chmod", f"import os; os.chmod('{LF}', 0o777)", "metadata"),
    _py(
        "os-chmod-fd",
        f"import os; fd = os.open('{LF}', os.O_RDONLY); os.chmod(fd, 0o777)",
        "metadata",
    ),
    _py(
        "os-fchmod",
        f"import os; fd = os.open('{LF}', os.O_RDONLY); os.fchmod(fd, 0o700)",
        "metadata",
    ),
    # Giving a file away needs CAP_CHOWN, which no step holds (it keeps no capability at all):
    # refused in audit mode too, where the copy in the audit overlay would otherwise take it.
    _py("os-chown", f"import os; os.chown('{LF}', 1, 1)", "metadata", audit="error"),
    _py("os-utime", f"import os; os.utime('{LF}', (1, 1))", "metadata"),
    _py(
        "os-utime-fd",
        f"import os; fd = os.open('{LF}', os.O_RDONLY); os.utime(fd, (1, 1))",
        "metadata",
    ),
    _py(
        "os-setxattr-fd",
        f"import os; fd = os.open('{LF}', os.O_RDONLY); os.setxattr(fd, 'user.x', b'1')",
        "metadata",
    ),
    _py("os-truncate", f"import os; os.truncate('{LF}', 0)", "os"),
    _py("os-mkfifo", "import os; os.mkfifo('data/lakehouse/fifo')", "os"),
    # -- pathlib, shutil, tempfile, logging, zipfile, mmap -----------------------------------------
    _py(
        "pathlib-write",
        "import pathlib; pathlib.Path('data/lakehouse/p.txt').write_text('x')",
        "pathlib",
    ),
    _py("pathlib-touch", f"import pathlib; pathlib.Path('{LF}').touch()", "pathlib"),
    _py("pathlib-unlink", f"import pathlib; pathlib.Path('{LF}').unlink()", "pathlib"),
    _py("pathlib-chmod", f"import pathlib; pathlib.Path('{LF}').chmod(0o600)", "pathlib"),
    _py(
        "shutil-copy-in",
        "import shutil; shutil.copy('scripts/legacy_step.py', 'data/lakehouse/')",
        "shutil",
    ),
    _py(
        "shutil-copystat",
        f"import shutil; shutil.copystat('scripts/legacy_step.py', '{LF}')",
        "shutil",
    ),
    _py("shutil-move-out", f"import shutil; shutil.move('{LF}', 'moved.csv')", "shutil"),
    # The mount's own folder is a mount point (EBUSY) or, guard-only, a symlink: it cannot go even
    # in audit mode (its files' deletions are captured first).
    _py("shutil-rmtree", "import shutil; shutil.rmtree('data/lakehouse')", "shutil", audit="error"),
    _py(
        "tempfile-in-lake",
        "import tempfile; tempfile.NamedTemporaryFile(dir='data/lakehouse', delete=False)",
        "tempfile",
    ),
    _py(
        "logging-in-lake",
        "import logging; logging.FileHandler('data/lakehouse/run.log')",
        "logging",
    ),
    _py(
        "zipfile-in-lake",
        "import zipfile; zipfile.ZipFile('data/lakehouse/a.zip', 'w').close()",
        "zipfile",
    ),
    _py(
        "mmap-write",
        f"import mmap, os; fd = os.open('{LF}', os.O_RDWR); mmap.mmap(fd, 0)[0:1] = b'X'",
        "mmap",
    ),
    # -- bypassing the patched names ------------------------------------------------------------
    _py("io-open-raw", "import _io; _io.open('data/lakehouse/raw.txt', 'w')", "bypass"),
    _py(
        "posix-open",
        "import posix; posix.open('data/lakehouse/p', posix.O_WRONLY | posix.O_CREAT)",
        "bypass",
    ),
    _py("posix-remove", f"import posix; posix.remove('{LF}')", "bypass"),
    _py("posix-chmod", f"import posix; posix.chmod('{LF}', 0o600)", "bypass"),
    # -- path tricks -------------------------------------------------------------------------------
    _py("dotdot", "open('reports/../data/lakehouse/dd.csv', 'w')", "tricks"),
    _py("proc-self-cwd", "open('/proc/self/cwd/data/lakehouse/p.csv', 'w')", "tricks"),
    _py("proc-self-root", "open('/proc/self/root{lake}/r.csv', 'w')", "tricks"),
    _py("symlink-dir", "import os; os.symlink('{lake}', 'L'); open('L/new.csv', 'w')", "tricks"),
    _py(
        "symlink-run-dir",
        "import os; r = os.environ['TV_RUN_DIR']; os.symlink('{lake}', r + '/L'); open(r + '/L/new.csv', 'w')",
        "tricks",
    ),
    # `..` climbs from a link's target, not textually: the run's link into the lakehouse, then up
    _py(
        "symlink-dotdot-remove",
        "import os; r = os.environ['TV_RUN_DIR']; os.symlink('{lake}', r + '/L'); "
        "os.remove(r + '/L/../lakehouse/BINANCE_BTCUSDT_1d.csv')",
        "tricks",
    ),
    _py(
        "symlink-dotdot-mkdir",
        "import os; r = os.environ['TV_RUN_DIR']; os.symlink('{lake}', r + '/L'); os.mkdir(r + '/L/../escaped')",
        "tricks",
        expect="lands:data/escaped",  # the host's data/ folder, as any host path: into the run folder
    ),
    _py("chdir-into-lake", "import os; os.chdir('data/lakehouse'); open('cd.csv', 'w')", "tricks"),
    _py("mount-real-target", "open('{lake}/real.csv', 'w')", "tricks"),
    # -- child processes ---------------------------------------------------------------------------
    _py(
        "subprocess-python",
        "import subprocess, sys; subprocess.run([sys.executable, '-c', \"open('data/lakehouse/c.csv', 'w')\"], check=True)",
        "children",
    ),
    _py(
        "os-system",
        "import os, sys; assert os.system(sys.executable + ' -c \"open(\\'data/lakehouse/s.csv\\', \\'w\\')\"') == 0",
        "children",
    ),
    _py(
        "mp-spawn",
        "import multiprocessing as mp\nif __name__ == '__main__':\n    ctx = mp.get_context('spawn'); p = ctx.Process(target=open, args=('data/lakehouse/mp.csv', 'w')); p.start(); p.join(); assert p.exitcode == 0",
        "children",
    ),
    Attempt("python-I-S", "pyI", "open('data/lakehouse/isolated.csv', 'w')", family="children"),
    Attempt("python-I-S-chmod", "pyI", f"import os; os.chmod('{LF}', 0o600)", family="children"),
    # -- shell recipes -------------------------------------------------------------------------
    _sh("sh-redirect", "echo x > data/lakehouse/sh.csv"),
    _sh("sh-append", f"echo x >> {LF}"),
    _sh("sh-touch", "touch data/lakehouse/t.csv"),
    _sh("sh-touch-m", f"touch -m -d 2001-01-01 {LF}"),
    _sh("sh-chmod", f"chmod 600 {LF}"),
    _sh("sh-rm", f"rm -f {LF}"),
    _sh("sh-mv", f"mv {LF} moved.csv"),
    _sh("sh-cp-into", "cp scripts/legacy_step.py data/lakehouse/"),
    _sh("sh-mkdir", "mkdir data/lakehouse/d"),
    _sh("sh-ln", "ln -s /etc/passwd data/lakehouse/pw"),
    _sh("sh-sed-i", f"sed -i 's/1/2/' {LF}"),
    _sh("sh-truncate", f"truncate -s 0 {LF}"),
    _sh("sh-clean-run", "rm -f data/lakehouse/*.csv"),
    _sh("sh-host-abs", "echo x > {lakefile}"),
    # -- native code ---------------------------------------------------------------------------
    _py(
        "pyarrow-into-lake",
        "import pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({{'a': [1]}}), 'data/lakehouse/n.parquet')",
        "native",
    ),
    _py(
        "pyarrow-relative",
        "import pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({{'a': [1]}}), 'data/native.parquet')",
        "native",
        "lands:data/native.parquet",
    ),
    _py(
        "sqlite-in-lake",
        "import sqlite3; c = sqlite3.connect('data/lakehouse/db.sqlite'); c.execute('create table t(x)'); c.commit()",
        "native",
    ),
    _py(
        "sqlite-relative",
        "import sqlite3; c = sqlite3.connect('data/db.sqlite'); c.execute('create table t(x)'); c.commit()",
        "native",
        "lands:data/db.sqlite",
    ),
    _py(
        "ctypes-open",
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); fd = libc.open(b'data/lakehouse/c.bin', os.O_WRONLY | os.O_CREAT, 0o644); assert fd >= 0, os.strerror(ctypes.get_errno())",
        "native",
    ),
    _py(
        "ctypes-chmod",
        f"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); assert libc.chmod(b'{LF}', 0o600) == 0, os.strerror(ctypes.get_errno())",
        "native",
    ),
    _py(
        "ctypes-unlink",
        f"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); assert libc.unlink(b'{LF}') == 0, os.strerror(ctypes.get_errno())",
        "native",
    ),
    _sh("sh-relative", "mkdir -p reports && echo ok > reports/shell.txt", "lands:reports/shell.txt"),
    # -- the export mount, the host root, home, outside -----------------------------------------
    _py("export-write", "open('export/R1/new.json', 'w')", "exports"),
    _sh("export-rm", "rm -f {scan}/*.json"),
    _py("export-chmod", "import os, glob; os.chmod(glob.glob('{scan}/*.json')[0], 0o600)", "exports"),
    _py("host-root", "open('{host}/at_root.txt', 'w').write('x')", "host", "lands:at_root.txt"),
    _sh("sh-host-root", "echo x > {host}/sh_root.txt", "lands:sh_root.txt"),
    _py("home", "open('{home}/tvs_escape.txt', 'w')", "outside"),
    _py("outside", "open('{outside}/new.txt', 'w')", "outside"),
    _py("outside-chmod", "import os; os.chmod('{outside}/file.txt', 0o777)", "outside"),
    _sh("sh-outside", "echo x > {outside}/sh.txt"),
    _sh("sh-outside-touch", "touch -m -d 2001-01-01 {outside}/file.txt"),
)

assert len({a.id for a in ATTEMPTS}) == len(ATTEMPTS)
