"""The end of every run: once no process of it is alive, report it and export it atomically.

One function, :func:`report_and_export`, for :meth:`sandbox.run.Run.close` and for the
sandboxed Ray workers' run (:mod:`sandbox.orchestrator.workers`), so that the two cannot drift:
``logs/`` made safe to open, a step's files at the launcher's names kept aside, the policy record,
the report, the destination's free space, the export. Loaded while the first step runs (the
run's ``meanwhile``), not at start-up.
"""

from __future__ import annotations

import os

from sandbox import report as report_mod
from sandbox.events import EVENTS_NAME, load_events
from sandbox.runner import POLICY_RECORD, export_limit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from sandbox.policy import Policy
    from sandbox.run import _Clock
    from sandbox.runner import Prepared
    from sandbox.workspace import Workspace

__all__ = ["policy_record", "prepare_destination", "report_and_export", "while_first_step"]


def prepare_destination(prep: Prepared) -> list[str]:
    """Clean up after crashed exports beside the run's destination (:func:`sandbox.export.recover`:
    a listing of the runs folder, which grows with every run); one line per action, for the
    report's warnings. What a launcher does on a thread once its first step runs -- a launch
    that was refused leaves the host as it was -- so that the export at the end need not
    (``report_and_export(recovered=True)``): nothing of the step can reach that folder."""
    from sandbox.export import recover

    return [f"before the export: {line}" for line in recover(os.path.dirname(prep.destination))]


def while_first_step(prep: Prepared, policy: Policy) -> bytes:
    """What a launcher does while its first step is set up and runs (``spawn``'s ``meanwhile``:
    the keeper builds the sandbox meanwhile), off the start-up path and on the other core: load
    what the end of the run needs, sweep what launchers killed before it left behind, bring the
    module images up to date for the next steps and runs (built once, then a check of their
    sources), prune the per-user cache once a day, hash the policy; returns the policy's record,
    written as is at the end."""
    import sandbox.export._exporter
    import sandbox.export._space  # noqa: F401
    from sandbox import _cache, _digest, _image
    from sandbox import workspace as workspace_mod

    workspace_mod.sweep(prep.request.workspace_base)
    _image.refresh("guard")
    _image.refresh("launcher")
    if _cache.prune_due():  # one stat; the pruner loads only on the day's first run
        from sandbox import _cache_prune

        _cache_prune.auto()
    _digest.sha256()  # its hash module: the built-in one, of small files
    prep.spec.sha256  # noqa: B018 - computed once, for the report and the manifest
    return policy_record(policy)


def policy_record(policy: Policy) -> bytes:
    """The run folder's record of ``policy`` (``config/policy.json``), as the export writes it.
    Pure: a launcher makes it while its step runs, off the end of the run."""
    from sandbox import _json as json

    return json.dumps(policy.to_dict(), indent=1).encode()


def report_and_export(
    prep: Prepared,
    ws: Workspace,
    policy: Policy,
    *,
    layers: report_mod.Layers,
    steps: Sequence[report_mod.StepRecord],
    warnings: list[str],
    status: str,
    exit_code: int,
    events_file: str,
    extra: Mapping[str, Any] | None = None,
    clock: _Clock | None = None,
    by_link: bool = False,
    record: bytes | None = None,
    recovered: bool = False,
    before_export: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The end of every run -- :meth:`Run.close`, and the sandboxed Ray workers' run
    (:mod:`sandbox.orchestrator.workers`): once no process of the run is alive, make ``logs/`` safe
    to open, keep a step's files at the launcher's names aside, write the policy record and the
    report (``extra`` merged into it), check the destination's free space, export atomically.
    ``warnings`` grows with what this finds. ``by_link``: the caller proved that no process of
    the run is left (each step's PID namespace waited out), so the export may hard-link files
    instead of copying them. ``record``: :func:`policy_record` of ``policy``, when the caller made
    it beforehand; ``recovered``: the caller ran :func:`prepare_destination` since the run's
    processes began (the export need not clean up after crashed exports again);
    ``before_export``: called once the report is written, before the export. Returns the
    report."""
    from sandbox import native
    from sandbox._paths import write_into
    from sandbox.events import summarise
    from sandbox.export import check_space, export_run
    from sandbox.export import write_error as export_write_error

    req = prep.request
    # What the run's processes left is hostile: nothing here is opened through a link or a FIFO,
    # and a file of theirs at a name of the launcher's is kept aside, never silently replaced.
    warnings.extend(report_mod.prune_deep(ws.run_storage))  # first: the walks below recurse
    warnings.extend(report_mod.secure_logs(ws.run_storage))
    warnings.extend(report_mod.set_aside_step_files(ws.run_storage))
    if native.unavailable_reason():  # never an error: the kernel layer still refuses them
        warnings.append(f"native and shell denials are not explained: {native.unavailable_reason()}")
    try:  # a full run-folder filesystem fails here first: an export error, in one line
        write_into(ws.run_storage, POLICY_RECORD, policy_record(policy) if record is None else record)
    except OSError as e:
        raise export_write_error(req.run_id, prep.destination, POLICY_RECORD, e) from e
    # the step's processes write the event log: a line of theirs that is not an event is counted
    events, unreadable = load_events(events_file)
    if unreadable:
        warnings.append(report_mod.unreadable_warning(f"logs/{EVENTS_NAME}", unreadable, "the report"))
    lake_diff = None
    if req.mode == "audit":  # what the run changed in the mounts; before the export: in the manifest
        from sandbox import lakediff

        mounts = {name: (rel, ws.mount_targets[name]) for name, rel in ws.layout.mounts().items()}
        lake_diff = lakediff.write(
            ws.run_storage,
            report_mod.LAKEHOUSE_DIFF,
            mounts,
            events,
            run_id=req.run_id,
            # as the event log's targets may name the run folder: $TV_RUN_DIR, and where it is
            # exported (Policy.host_path_of)
            run_dirs=[ws.run_dir, os.path.join(ws.host, ws.layout.runs, ws.run_id)],
        )
    rep = report_mod.build(
        run_id=req.run_id,
        profile=req.profile,
        mode=req.mode,
        policy_name=prep.spec.name,
        policy_sha256=prep.spec.sha256,
        policy_source=prep.spec.source,
        layers=layers,
        steps=steps,
        events=events,
        event_summary=summarise(events, unreadable=unreadable),
        scattered=report_mod.scattered_artifacts(ws.run_storage, prep.spec.layout.run_folders),
        protected={name: os.path.join(ws.host, rel) for name, rel in prep.spec.layout.mounts().items()},
        warnings=warnings,
        lakehouse_diff=lake_diff,
        status=status,
    )
    rep.update(extra or {})
    try:
        report_mod.write(ws.run_storage, rep)
    except OSError as e:
        raise export_write_error(req.run_id, prep.destination, report_mod.REPORT_NAME, e) from e
    if clock is not None:
        clock.lap("report")
    if before_export is not None:
        before_export()

    def space() -> None:
        check_space(req.run_id, ws.run_storage, prep.destination)

    if not by_link:  # a copy: checked up front; links need no room, so only before a copy
        space()
    export_run(
        ws.run_storage,
        prep.destination,
        run_id=req.run_id,
        status=status,
        exit_code=exit_code,
        policy_name=prep.spec.name,
        policy_sha256=prep.spec.sha256,
        overwrite=req.overwrite,
        extra={"profile": req.profile, "mode": req.mode, "layers": rep["layers"]},
        max_bytes=export_limit(prep),
        by_link=by_link,
        recover=not recovered,
        before_copy=space if by_link else None,
    )
    if clock is not None:
        clock.lap("export")
    return rep
