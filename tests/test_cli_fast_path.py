"""The CLI's fast path for `run` (no argparse on the start-up path) agrees with argparse."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sandbox.cli import _RUN_DEFAULTS, _RUN_OPTIONS, _fast_run, _parser

WELL_FORMED = [
    ["run", "--root", "/h", "--run-id", "R1", "--", "python", "-c", "pass"],
    ["run", "--run-id=R1", "--root=/h", "--", "sh", "-c", "echo -- x"],
    ["run", "--root", "/h", "--run-id", "R1", "--overwrite", "--keep-workspace", "--", "x"],
    [
        "run",
        "--root",
        "/h",
        "--run-id",
        "R1",
        "--profile",
        "development",
        "--policy",
        "p.toml",
        "--mode",
        "audit",
        "--workspace-dir",
        "/w",
        "--kernel",
        "off",
        "--",
        "make",
        "--root",
    ],
    ["run", "--root", "/h", "--run-id", "R1", "--"],
    ["run", "--root", "/h", "--run-id", "R1", "--", "--", "x"],  # a command that starts with "--"
]
LEFT_TO_ARGPARSE = [
    ["run", "--root", "/h", "--run-id", "R1", "python"],  # no `--`
    ["run", "--ro", "/h", "--run-id", "R1", "--", "x"],  # an abbreviation
    ["run", "--root", "/h", "--root", "/g", "--run-id", "R1", "--", "x"],  # a repeat
    ["run", "--root", "--run-id", "R1", "--", "x"],  # a missing value
    ["run", "--run-id", "R1", "--", "x"],  # a missing required option
    ["run", "--overwrite=yes", "--root", "/h", "--run-id", "R1", "--", "x"],
    ["run", "-h", "--", "x"],
    ["doctor"],
]


def _argparse(args: list[str]) -> dict[str, object]:
    return vars(_parser().parse_args(args))


@pytest.mark.parametrize("args", WELL_FORMED, ids=range(len(WELL_FORMED)))
def test_fast_path_gives_what_argparse_gives(args: list[str]) -> None:
    assert _fast_run(args) == _argparse(args)


@pytest.mark.parametrize("args", LEFT_TO_ARGPARSE, ids=range(len(LEFT_TO_ARGPARSE)))
def test_anything_else_goes_to_argparse(args: list[str]) -> None:
    assert _fast_run(args) is None


def test_fast_path_knows_every_option_of_run() -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    options = {
        s: a for a in run._actions for s in a.option_strings if s.startswith("--") and a.dest != "help"
    }
    assert set(options) == set(_RUN_OPTIONS)
    for flag, (dest, takes_value) in _RUN_OPTIONS.items():
        action = options[flag]
        assert action.dest == dest and (action.nargs != 0) == takes_value
        if not action.required:
            assert _RUN_DEFAULTS[dest] == action.default


@pytest.mark.parametrize(
    ("text", "isolated"),
    [
        (None, True),  # a bundled policy: every one isolates the network
        ('[kernel]\nnetwork = "host"\n', False),
        ("[kernel]\n  network='host'   # the machine's\n", False),
        ('[kernel]\nnetwork = "none"\n', True),
        ('# network = "host" would open it\n[kernel]\n', True),
        ('[policy]\ndescription = "no network = host here"\n', True),
    ],
)
def test_the_early_keeper_guesses_the_network_namespace_from_the_policy_file(
    tmp_path: Path, text: str | None, isolated: bool
) -> None:
    """A guess only (a wrong one costs a keeper: the launch forks one for its plan), made without
    parsing TOML on the start-up path."""
    from sandbox.cli import isolates_network

    path = None
    if text is not None:
        path = str(tmp_path / "p.toml")
        with open(path, "w") as fh:
            fh.write(text)
    assert isolates_network(path) is isolated
    assert isolates_network(str(tmp_path / "missing.toml")) is True
