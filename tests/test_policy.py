"""The pure policy model and the loader: decisions, component comparison, caching, validation."""

from __future__ import annotations

import fnmatch
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox._record import replace
from sandbox.errors import PolicyError
from sandbox.loader import load_policy, policies_dir, policy_from_dict, resolve_profile, spec_from_mapping
from sandbox.policy import Action, Decision, Op, Policy
from sandbox.rules import _fnmatch
from sandbox.samples import make_host

H, W, T = "/h", "/w/ws", "/w/tmp"
RUN = "/w/ws/artifacts/summaries/runs/R1"


@pytest.fixture
def prod() -> Policy:
    return load_policy(profile="production").bind(
        host=H,
        workspace=W,
        run_id="R1",
        temp_dirs=(T,),
        run_storage="/w/run",
        mount_targets={"lakehouse": "/big/lake", "exports": "/h/export"},
    )


def test_builtin_policies_load() -> None:
    names = sorted(p.stem for p in Path(policies_dir()).glob("*.toml"))
    assert names == ["development", "production", "source-layout"]
    assert load_policy(profile="development").profile == "development"
    assert load_policy(Path(policies_dir()) / "source-layout.toml").layout.exports == "data/export"


@pytest.mark.parametrize(
    ("path", "op", "action", "rule"),
    [
        (f"{W}/data/lakehouse/x.parquet", Op.WRITE, Action.DENY, "lakehouse-read-only"),
        ("/big/lake/x.parquet", Op.WRITE, Action.DENY, "lakehouse-read-only"),  # the real target
        ("/big/lake", Op.METADATA, Action.DENY, "lakehouse-read-only"),
        ("/big/lake/selection_audit.json", Op.WRITE, Action.DENY, "selection-audit-in-lakehouse"),
        (f"{W}/data/lakehouseX/x", Op.WRITE, Action.REDIRECT, "workspace-redirect"),
        (f"{W}/reports/r.csv", Op.WRITE, Action.REDIRECT, "workspace-redirect"),
        (f"{H}/reports/r.csv", Op.WRITE, Action.REDIRECT, "workspace-redirect"),
        (f"{H}/artifacts/summaries/runs/R1/x", Op.WRITE, Action.REDIRECT, "run-folder"),
        (f"{RUN}/data/x", Op.WRITE, Action.ALLOW, "run-folder"),
        ("/w/run/data/x", Op.DELETE, Action.ALLOW, "run-folder"),  # the run folder's storage
        (f"{T}/x", Op.WRITE, Action.ALLOW, "temp-dir"),
        ("/w/tmpfoo/x", Op.WRITE, Action.DENY, "outside-writable-roots"),  # not a prefix match
        ("/etc/passwd", Op.METADATA, Action.DENY, "outside-writable-roots"),
        ("/etc/passwd", Op.READ, Action.ALLOW, "read"),
        ("/dev/null", Op.WRITE, Action.ALLOW, "device"),
        ("/dev/ptmx", Op.WRITE, Action.ALLOW, "device"),
        ("/dev/pts/3", Op.WRITE, Action.ALLOW, "device"),
        ("/dev/sda", Op.WRITE, Action.DENY, "outside-writable-roots"),
        (f"{H}/export/R1/scan.json", Op.DELETE, Action.DENY, "exports-read-only"),
        (f"{W}/export", Op.RENAME, Action.DENY, "exports-read-only"),
        (f"{W}/scripts/a.py", Op.READ, Action.REDIRECT, "read-through"),
        (f"{W}/data/lakehouse/a", Op.READ, Action.ALLOW, "read"),
    ],
)
def test_decisions(prod: Policy, path: str, op: Op, action: Action, rule: str) -> None:
    d = prod.decide(path, op)
    assert (d.action, d.rule) == (action, rule), d


def test_redirect_targets(prod: Policy) -> None:
    assert prod.decide(f"{W}/reports/r.csv", Op.WRITE).target == f"{RUN}/reports/r.csv"
    assert prod.decide(f"{H}/scripts/a.py", Op.WRITE).target == f"{RUN}/scripts/a.py"
    assert prod.decide(f"{H}/artifacts/summaries/runs/R1/x", Op.WRITE).target == f"{RUN}/x"


def test_audit_mode_captures_protected_writes_but_not_outside() -> None:
    p = load_policy(profile="production").bind(host=H, workspace=W, run_id="R1", mode="audit")
    d = p.decide(f"{H}/data/lakehouse/selection_audit.json", Op.WRITE)
    assert d.action is Action.REDIRECT and d.captured
    assert d.target == f"{RUN}/audit/data/lakehouse/selection_audit.json"
    assert p.decide("/etc/x", Op.WRITE).denied
    assert p.decide(f"{H}/data/lakehouse/a", Op.READ).target == f"{RUN}/audit/data/lakehouse/a"


def test_development_lakehouse_writable() -> None:
    p = load_policy(profile="development").bind(host=H, workspace=W, run_id="R1")
    d = p.decide(f"{H}/data/lakehouse/selection_audit.json", Op.WRITE)
    assert d.action is Action.ALLOW and d.target is None  # on the real lakehouse, by design
    assert p.decide(f"{H}/export/R1/x", Op.WRITE).denied


def test_deny_explains(prod: Policy) -> None:
    err = prod.decide("/big/lake/selection_audit.json", Op.WRITE).error(
        "data/lakehouse/selection_audit.json", Op.WRITE, profile="production"
    )
    assert isinstance(err, PermissionError) and err.errno == 13
    assert err.filename == "data/lakehouse/selection_audit.json"
    assert "SELECTION_AUDIT" in str(err) and "selection-audit-in-lakehouse" in str(err)


def test_decisions_are_cached_and_pure(prod: Policy) -> None:
    a = prod.decide(f"{W}/reports/r.csv", Op.WRITE)
    assert prod.decide(f"{W}/reports/r.csv", Op.WRITE) is a


def test_round_trip_to_child(prod: Policy) -> None:
    again = policy_from_dict(prod.to_dict())
    for path in (f"{W}/reports/x", "/big/lake/x", "/etc/x", f"{T}/x"):
        assert again.decide(path, Op.WRITE) == prod.decide(path, Op.WRITE)
    assert again.spec.sha256 == prod.spec.sha256


def test_profile_resolution() -> None:
    assert resolve_profile(None, {}) == "production"
    assert resolve_profile(None, {"TV_PROFILE": "staging"}) == "production"
    assert resolve_profile(None, {"TV_PROFILE": "development"}) == "development"
    assert resolve_profile("development", {"TV_PROFILE": "production"}) == "development"


GOOD = {
    "policy": {"name": "p", "profile": "production"},
    "layout": {"lakehouse": "data/lakehouse", "exports": "export", "runs": "artifacts/runs"},
    "rule": [
        {
            "name": "r",
            "paths": ["{lakehouse}/**"],
            "ops": ["mutate"],
            "action": "deny",
            "reason": "x",
        }
    ],
}


def _with(path: tuple[str, ...], value: object) -> dict[str, object]:
    import copy

    d = copy.deepcopy(GOOD)
    node: object = d
    for k in path[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]  # type: ignore[index]
    if value is KeyError:
        del node[path[-1]]  # type: ignore[index,union-attr]
    else:
        node[path[-1]] = value  # type: ignore[index]
    return d


@pytest.mark.parametrize(
    ("where", "value", "key", "says"),
    [
        (("extra",), 1, "extra", "unknown key"),
        (("policy", "profile"), "staging", "policy.profile", "allowed: production, development"),
        (("policy", "kernel"), "maybe", "policy.kernel", "allowed: warn, require, off"),
        (("policy", "name"), KeyError, "policy.name", "required"),
        (("policy", "description"), False, "policy.description", "must be a string"),
        (("policy", "description"), 0, "policy.description", "must be a string"),
        (("layout", "lakehouse"), "/abs/lake", "layout.lakehouse", "relative"),
        (("layout", "exports"), "../export", "layout.exports", "escapes"),
        (("layout", "runs"), KeyError, "layout.runs", "required"),
        (("layout", "runs"), "data/lakehouse/runs", "layout.runs", "inside"),
        (("layout", "run_folders"), ["a/b"], "layout.run_folders[0]", "single folder"),
        (("rule", "0", "action"), "permit", "rule[0].action", "allowed: allow, deny, redirect"),
        (("rule", "0", "ops"), ["write", "chmod"], "rule[0].ops[1]", "unknown operation"),
        (("rule", "0", "paths"), ["../../etc/**"], "rule[0].paths[0]", "escapes"),
        (("rule", "0", "paths"), ["/etc/**"], "rule[0].paths[0]", "relative"),
        (("rule", "0", "paths"), ["{lake}/**"], "rule[0].paths[0]", "unknown placeholder"),
        (("rule", "0", "paths"), [], "rule[0].paths", "at least one"),
        (("rule", "0", "reason"), KeyError, "rule[0].reason", "must say why"),
        (("rule", "0", "colour"), "red", "rule[0].colour", "unknown key"),
    ],
)
def test_validation_names_key_and_allowed(where: tuple[str, ...], value: object, key: str, says: str) -> None:
    with pytest.raises(PolicyError) as ei:
        spec_from_mapping(_with(where, value), "x.toml")
    assert ei.value.key == key and says in str(ei.value) and str(ei.value).startswith("x.toml: ")


def test_kernel_network_is_none_by_default_and_validated() -> None:
    import copy

    assert spec_from_mapping(GOOD, "x.toml").network == "none"
    for value in ("none", "host"):
        d = copy.deepcopy(GOOD)
        d["kernel"] = {"network": value}
        assert spec_from_mapping(d, "x.toml").network == value
    for table, key, says in (
        ({"network": "bridge"}, "kernel.network", "'bridge' is not allowed; allowed: none, host"),
        ({"network": True}, "kernel.network", "allowed: none, host"),
        ({"ports": [80]}, "kernel.ports", "unknown key; allowed: network"),
        ("host", "kernel", "must be a table"),
    ):
        d = copy.deepcopy(GOOD)
        d["kernel"] = table
        with pytest.raises(PolicyError) as ei:
            spec_from_mapping(d, "x.toml")
        assert ei.value.key == key and says in str(ei.value), str(ei.value)
        assert str(ei.value).startswith("x.toml: ") and "\n" not in str(ei.value)


def test_load_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy\nname=")
    with pytest.raises(PolicyError, match="TOML syntax error"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "missing.toml")
    dev = Path(policies_dir()) / "development.toml"
    with pytest.raises(PolicyError, match="for profile 'development'"):
        load_policy(dev, profile="production")


# -- the policy model's import-free pieces agree with the stdlib they stand in for ----------------


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab.*?[]!-", max_size=8), st.text(alphabet="ab.[]!-", max_size=8))
def test_fnmatch_agrees_with_stdlib(pattern: str, name: str) -> None:
    assert _fnmatch(name, pattern) == fnmatch.fnmatchcase(name, pattern)


def test_ops_and_actions_behave_as_string_enums() -> None:
    assert list(Op) == ["read", "write", "delete", "rename", "mkdir", "rmdir", "link", "metadata"]
    assert Op.named("write") is Op.WRITE and Action.named("deny") is Action.DENY
    assert pickle.loads(pickle.dumps(Op.RENAME)) is Op.RENAME
    assert f"{Op.READ}" == "read" and Op.READ.value == "read" and repr(Op.READ) == "Op.READ"
    with pytest.raises(ValueError, match="'copy' is not a valid Op"):
        Op.named("copy")


def test_records_compare_copy_and_refuse_assignment() -> None:
    d = Decision(Action.ALLOW, "read", "/x")
    assert d == Decision(Action.ALLOW, "read", "/x") and hash(d) == hash(Decision(Action.ALLOW, "read", "/x"))
    e = replace(d, target="/y")
    assert e.target == "/y" and d.target is None and e != d
    with pytest.raises(AttributeError):
        d.rule = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected argument 'nope'"):
        Decision(Action.ALLOW, "read", "/x", nope=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing required argument 'path'"):
        Decision(Action.ALLOW, "read")  # type: ignore[call-arg]


#: What costs milliseconds to import on a small machine: nothing on the start-up path loads it.
HEAVY = frozenset(
    {
        "enum",
        "re",
        "json",
        "typing",
        "dataclasses",
        "fnmatch",
        "tomllib",
        "hashlib",
        "pathlib",
        "argparse",
        "threading",
        "shutil",
        "tempfile",
        "contextlib",
    }
)


def _loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter loads to import ``modules`` (beyond its own start-up)."""
    code = (
        f"import sys; before = set(sys.modules); import {', '.join(modules)}; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_policy_model_imports_nothing_heavy() -> None:
    """Every sandboxed interpreter imports it at start-up: no enum, re, json, typing, dataclasses."""
    loaded = _loaded_by("sandbox.guard._install", "sandbox.loader", "sandbox.guard.bootstrap")
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_the_launchers_path_imports_nothing_heavy() -> None:
    """``tv-sandbox run -- CMD`` up to the step's exec: the CLI, the runner, the run, the kernel
    layer's spawning and the guard's bootstrap (the child environment)."""
    loaded = _loaded_by(
        "sandbox.cli", "sandbox.runner", "sandbox.run", "sandbox.kernel.spawning", "sandbox.guard.bootstrap"
    )
    assert "sandbox.kernel.spawning" in loaded  # the scan saw what it checks
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_a_whole_run_imports_nothing_heavy(tmp_path: Path) -> None:
    """``tv-sandbox run -- true`` from start to export: what the launcher loads after the step
    (the report, the export, the workspace's removal) is paid on every run too -- no ``json``
    (``re``, ``enum``), ``hashlib`` (libcrypto), ``shutil`` (``bz2``, ``lzma``), ``datetime``.
    (The first run after a policy file changed parses it: ``tomllib``, once; a run before
    warms the parse cache.)"""
    host = make_host(tmp_path / "host")

    # ``__future__``: its statement imports it; the modules loaded before the launcher's image
    # do without the statement, and the image's code is compiled without it (~0.25 ms a run);
    # ``_blake2``: a shared library (~0.4 ms), once the workspace's seal (workspace._seal)
    heavy = HEAVY | {"datetime", "bz2", "lzma", "__future__", "_blake2"}
    # each heavy import is reported with the stack that made it
    code = (
        "import sys, traceback\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name in {sorted(heavy)!r}:\n"
        "            sys.stderr.write(f'HEAVY {name}\\n' + ''.join(traceback.format_stack(limit=8)))\n"
        "sys.meta_path.insert(0, Watch())\n"
        "before = set(sys.modules)\n"
        "from sandbox.cli import main\n"
        f"code = main(['run', '--root', {str(host)!r}, '--run-id', sys.argv[1], '--', 'true'])\n"
        "print(code, ' '.join(sorted(set(sys.modules) - before)))\n"
    )

    def run(run_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, run_id], capture_output=True, text=True, check=True)

    run("warm")
    r = run("light")
    status, *loaded = r.stdout.split()
    assert status == "0" and "sandbox.export._exporter" in loaded  # it ran to the export
    assert not set(loaded) & heavy, r.stderr


# -- the parse cache ------------------------------------------------------------------------------


def test_parse_cache_answers_only_for_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import _cache

    monkeypatch.setenv(_cache.ENV_DIR, str(tmp_path / "cache"))
    src = Path(policies_dir()) / "production.toml"
    pol = tmp_path / "p.toml"
    pol.write_bytes(src.read_bytes())
    first = load_policy(pol, profile="production")
    entries = sorted(e.name.partition("-")[0] for e in (tmp_path / "cache").iterdir())
    assert entries == ["policy", "toml"]  # the parse and the validated spec were kept...
    assert load_policy(pol, profile="production") == first  # ...and gives the same policy
    # an edit is a different file: parsed (and validated) afresh, never the old answer
    pol.write_bytes(src.read_bytes().replace(b'name = "production"', b'name = "edited"', 1))
    assert load_policy(pol, profile="production").name == "edited"
    # a broken or foreign entry is not used
    for e in (tmp_path / "cache").iterdir():
        e.write_bytes(b"not marshal")
    assert load_policy(pol, profile="production").name == "edited"
    # a cached parse is still validated: the same bytes with a bad key fail the same way each time
    pol.write_bytes(src.read_bytes() + b"\n[extra]\nx = 1\n")
    for _ in range(2):
        with pytest.raises(PolicyError, match="unknown key"):
            load_policy(pol, profile="production")


def test_a_policy_validated_before_by_the_same_code_is_not_validated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher's start-up: a policy file's validation and the kernel layer's check (~0.6 ms)
    run once for its bytes and this code; a change of either, a foreign or broken entry, a file
    that fails, all go through the whole validation; the profile is checked on every load."""
    import marshal

    from sandbox import _cache, loader, policy_kernel

    monkeypatch.setenv(_cache.ENV_DIR, str(tmp_path / "cache"))
    pol = tmp_path / "p.toml"
    pol.write_bytes((Path(policies_dir()) / "production.toml").read_bytes())
    validated: list[str] = []
    real_validate, real_check = loader.spec_from_mapping, policy_kernel.kernel_compilable

    def validate(data: Any, src: str = "<memory>") -> Any:
        validated.append(src)
        return real_validate(data, src)

    def check(spec: Any) -> Any:
        validated.append("kernel")
        return real_check(spec)

    monkeypatch.setattr(loader, "spec_from_mapping", validate)
    monkeypatch.setattr(policy_kernel, "kernel_compilable", check)
    first = load_policy(pol, profile="production")
    assert validated == [str(pol), "kernel"]
    again = load_policy(pol, profile="production")
    assert again == first and again.data == first.data and again.source == first.source
    assert validated == [str(pol), "kernel"]  # nothing validated again
    with pytest.raises(PolicyError, match="for profile 'production'"):
        load_policy(pol, profile="development")
    entry = Path(_cache._entry("policy", pol.read_bytes()) or "")
    # another version of the validating code: the whole validation again
    monkeypatch.setattr(loader, "_code_stamp", lambda: ((1, 1),))
    assert load_policy(pol, profile="production") == first and len(validated) == 4
    # an entry of this code's stamp that is not what it stores: validated afresh, not trusted
    fmt, version, key, (stamp, data, form) = marshal.loads(entry.read_bytes())
    entry.write_bytes(marshal.dumps((fmt, version, key, (stamp, data, form[:5]))))
    assert load_policy(pol, profile="production") == first and len(validated) == 6
    # a file that fails is never kept as validated
    bad = tmp_path / "bad.toml"
    bad.write_bytes(pol.read_bytes() + b"\n[extra]\nx = 1\n")
    with pytest.raises(PolicyError, match="unknown key"):
        load_policy(bad, profile="production")
    assert _cache.lookup("policy", bad.read_bytes()) is None


def test_parse_cache_off_and_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import _cache

    monkeypatch.setenv(_cache.ENV_DIR, "off")
    assert _cache.cache_dir() is None
    assert load_policy(profile="production").name == "production"
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv(_cache.ENV_DIR, str(blocked / "sub"))  # cannot be made: silently unused
    assert load_policy(profile="production").name == "production"


def test_audit_mode_captures_even_what_development_allows_on_the_mounts() -> None:
    """Audit never touches the host -- the kernel layer overlays the mounts in audit mode whatever
    the profile; the policy (hence the guard and fsspec) says the same."""
    spec = load_policy(profile="development")
    ctx = {"host": "/h", "workspace": "/w", "run_id": "R"}
    enforce = spec.bind(**ctx, mode="enforce")
    audit = spec.bind(**ctx, mode="audit")
    lake = "/w/data/lakehouse/BINANCE_BTCUSDT_1d.csv"
    assert enforce.decide(lake, Op.WRITE).action is Action.ALLOW
    d = audit.decide(lake, Op.WRITE)
    assert d.action is Action.REDIRECT and d.captured
    assert d.target == "/w/artifacts/summaries/runs/R/audit/data/lakehouse/BINANCE_BTCUSDT_1d.csv"
    assert audit.decide("/w/artifacts/summaries/runs/R/data/x", Op.WRITE).action is Action.ALLOW
    assert audit.decide("/w/reports/x", Op.WRITE).target == "/w/artifacts/summaries/runs/R/reports/x"


def test_devices_the_kernel_layer_keeps_writable_are_devices_to_the_policy(prod: Policy) -> None:
    """One policy: the character devices Landlock leaves writable are the ones the policy allows."""
    from sandbox.kernel.plan import DEVICE_PATHS

    for dev in DEVICE_PATHS:
        if dev in ("/dev/shm", "/dev/pts"):  # folders: POSIX shared memory and terminals (below)
            continue
        assert prod.decide(dev, Op.WRITE).rule == "device", dev
