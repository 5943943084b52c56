"""The resolved policy (sandbox.resolved): what a launcher hands its step's interpreters rebuilds the
very policy it validated -- built-in and hand-written policies, every mode -- without the loader;
a file without the built form is validated as a policy file is; a tampered one fails closed, in a
real interpreter too (one line, exit 1, no user code run)."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.errors import PolicyError
from sandbox.guard import child_env
from sandbox.loader import load_policy, policies_dir, policy_from_dict, spec_from_mapping
from sandbox.policy import Policy
from sandbox.resolved import BUILT, built, from_built, load_resolved, save_resolved

HAND_WRITTEN = """
[policy]
name = "hand-written"
profile = "production"
description = "every kind of rule"

[layout]
lakehouse = "lake/house"
exports = "out"
runs = "runs"
run_folders = ["data", "logs", "config", "reports", "extra"]

[[rule]]
name = "configs-read-only"
paths = ["configs/**", "etc/{run_id}.cfg"]
ops = ["mutate"]
action = "deny"
reason = "configs are shared"
hint = "write under data/"

[[rule]]
name = "cache-open"
paths = ["cache/**"]
ops = ["write", "mkdir", "delete", "metadata"]
action = "allow"

[[rule]]
name = "tmp-to-run"
paths = ["scratch/*.tmp"]
ops = ["all"]
action = "redirect"
"""


def _policies(tmp_path: Path) -> list[Policy]:
    own = tmp_path / "hand.toml"
    own.write_text(HAND_WRITTEN)
    files = [*sorted(Path(policies_dir()).glob("*.toml")), own]
    specs = [load_policy(f, profile="development" if f.stem == "development" else "production") for f in files]
    return [
        spec.bind(
            host="/h",
            run_id="R1",
            workspace="/w",
            mode=mode,
            temp_dirs=("/t",),
            run_storage="/s",
            mount_targets={n: f"/real/{n}" for n in spec.layout.mounts()},
        )
        for spec in specs
        for mode in ("enforce", "audit")
    ]


def _same(a: Policy, b: Policy) -> None:
    assert a.spec == b.spec and a.spec.data == b.spec.data and a.spec.source == b.spec.source
    assert a.ctx == b.ctx
    for path in ("/w/lake/house/x", "/w/configs/a", "/w/cache/b", "/w/scratch/c.tmp", "/w/data/d", "/w/runs/R1/e"):
        assert a.decide(path, "write") == b.decide(path, "write"), path


def test_the_built_form_rebuilds_the_policy_the_launcher_validated(tmp_path: Path) -> None:
    for i, policy in enumerate(_policies(tmp_path)):
        path = str(tmp_path / f"p{i}.marshal")
        save_resolved(policy, path)
        with open(path, "rb") as fh:
            assert BUILT in marshal.load(fh)
        again = load_resolved(path)
        _same(again, policy)
        _same(again, policy_from_dict(policy.to_dict()))  # what the validated path gives


def test_a_file_without_the_built_form_is_validated_as_a_policy_file(tmp_path: Path) -> None:
    policy = _policies(tmp_path)[-1]
    older = tmp_path / "older.marshal"  # a launcher before the built form
    older.write_bytes(marshal.dumps(policy.to_dict()))
    _same(load_resolved(str(older)), policy)
    as_json = str(tmp_path / "p.json")
    save_resolved(policy, as_json)
    _same(load_resolved(as_json), policy)
    broken = policy.to_dict()
    broken["spec"]["rule"][0]["ops"] = ["fly"]
    older.write_bytes(marshal.dumps(broken))
    with pytest.raises(PolicyError, match="unknown operation 'fly'"):
        load_resolved(str(older))


def _tampered(form: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    name, profile, layout, rules, description, kernel, network = form
    rule = rules[0]
    return [
        (name, "root", layout, rules, description, kernel, network),  # a profile that is none
        (name, profile, layout, rules, description, "maybe", network),
        (name, profile, layout, rules, description, kernel, "all"),
        (name, profile, list(layout), rules, description, kernel, network),  # a list for a tuple
        (name, profile, layout[:3], rules, description, kernel, network),
        (name, profile, layout, ((*rule[:2], "write", *rule[3:]),), description, kernel, network),  # str ops
        (name, profile, layout, ((*rule[:2], ("fly",), *rule[3:]),), description, kernel, network),
        (name, profile, layout, ((*rule[:3], "permit", *rule[4:]),), description, kernel, network),
        (name, profile, layout, ((rule[0], ("x", 1), *rule[2:]),), description, kernel, network),
        (7, profile, layout, rules, description, kernel, network),
        form[:6],
    ]


def _saved(tmp_path: Path) -> tuple[Path, dict[str, Any], int, tuple[Any, ...]]:
    """The hand-written policy's resolved file: its path, content, built form's version and form."""
    path = tmp_path / "p.marshal"
    save_resolved(_policies(tmp_path)[-1], str(path))
    data = marshal.loads(path.read_bytes())
    fmt, form = data[BUILT]
    return path, data, fmt, form


def test_a_tampered_built_form_is_refused(tmp_path: Path) -> None:
    path, data, fmt, form = _saved(tmp_path)
    for bad in _tampered(form):
        path.write_bytes(marshal.dumps({**data, BUILT: (fmt, bad)}))
        with pytest.raises(ValueError, match="not a resolved policy"):
            load_resolved(str(path))
    path.write_bytes(marshal.dumps({**data, "spec": ["not", "a", "document"]}))
    with pytest.raises(ValueError, match="not a resolved policy"):
        load_resolved(str(path))


def test_an_interpreter_with_a_tampered_policy_fails_closed(tmp_path: Path) -> None:
    path, data, fmt, form = _saved(tmp_path)
    path.write_bytes(marshal.dumps({**data, BUILT: (fmt, _tampered(form)[5])}))
    base = {k: v for k, v in os.environ.items() if not k.startswith("TV_SANDBOX_")}
    env = child_env(base, policy_file=str(path), events_file=None, overlay=False)
    r = subprocess.run(
        [sys.executable, "-c", "print('user code ran')"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and r.stdout == "", r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "refusing to run unguarded" in lines[0] and "not a resolved policy" in lines[0]


#: Values of every type a TOML document can hold, valid and not, for any field of a policy.
_ANY = st.sampled_from(
    [
        "", "x", "data/cache", "cache/**", "production", "development", "warn", "off", "none", "host",
        "deny", "allow", "redirect", "write", "mutate", "all", "a b", "ünï", False, True, 0, 7, 1.5,
        [], ["write"], ["data", "logs"], {}, {"network": "host"}, None,
    ]
)
_FIELDS = [
    ("policy", "name"), ("policy", "profile"), ("policy", "description"), ("policy", "kernel"),
    ("layout", "lakehouse"), ("layout", "run_folders"), ("kernel", "network"),
    ("rule", "name"), ("rule", "paths"), ("rule", "ops"), ("rule", "action"), ("rule", "reason"), ("rule", "hint"),
]


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _ANY), max_size=4))
def test_every_spec_the_loader_accepts_rebuilds_from_its_built_form(changes: list[Any]) -> None:
    """The launcher writes the built form of whatever the loader accepted: a step's interpreters
    must rebuild exactly that spec, never refuse it (every Python step of the run would fail)."""
    doc: dict[str, Any] = {
        "policy": {"name": "p", "profile": "production", "description": "d"},
        "layout": {"lakehouse": "data/lakehouse", "exports": "export", "runs": "runs"},
        "rule": [{"name": "r", "paths": ["configs/**"], "ops": ["mutate"], "action": "deny", "reason": "no"}],
    }
    for (table, key), value in changes:
        node = doc["rule"][0] if table == "rule" else doc.setdefault(table, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    try:
        spec = spec_from_mapping(doc, "x.toml")
    except PolicyError:
        return
    again = from_built(built(spec), spec.data, spec.source)
    assert again == spec and again.data == spec.data
