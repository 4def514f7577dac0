"""Whether a run may resume in its output directory, and what it can reuse there.

A run records what it is (``fingerprint.describe`` and the pipeline fingerprint) in ``OUT/work/run.json``
before doing any work. A later run into the same directory resumes when the pipeline is the same (its
input may have changed: pieces are checked one by one against their fingerprints). A different pipeline,
or files of a run that recorded nothing, is refused with one line naming the first difference, unless
``fresh`` (start over: the run's own files are removed) or ``resume="force"`` (reuse every piece whose
fingerprint still matches, with a warning) is given.
"""
from __future__ import annotations

import sys

from winnow.pipeline import fingerprint, rundir
from winnow.pipeline.fingerprint import RunFingerprints
from winnow.stages import storage
from winnow.stages.errors import WinnowError

RESUME_MODES = ("auto", "force")


def prepare(out: str, fps: RunFingerprints, record: dict, shards, write_kept: bool, fresh: bool = False,
            resume: str = "auto") -> None:
    """Refuse, clear or resume ``out`` for this run; then record the run and drop stale outputs."""
    if resume not in RESUME_MODES:
        raise WinnowError(f"--resume {resume}: must be one of {', '.join(RESUME_MODES)}")
    previous = _previous(out)
    if fresh:
        rundir.clear_run(out)
    elif previous is not None and previous.get("pipeline") != fps.pipeline:
        change = (fingerprint.first_difference(previous.get("describe", {}), record) if previous
                  else "it recorded no fingerprint (an older winnow, or not a winnow run)")
        if resume != "force":
            raise WinnowError(f"output {out} holds a run of a different pipeline ({change}); add --fresh to "
                              "start over there, or --resume=force to reuse what still matches")
        print(f"winnow: warning: output {out} holds a run of a different pipeline ({change}); reusing only "
              "the pieces whose fingerprints still match", file=sys.stderr)
    rundir.write_json_atomic({"pipeline": fps.pipeline, "describe": record}, rundir.run_record_path(out))
    removed = rundir.prune_outputs(out, {s.stem for s in shards}, write_kept)
    if removed and not fresh:
        print(f"winnow: removed {len(removed)} output files of shards no longer in the input", file=sys.stderr)


def _previous(out: str) -> dict | None:
    """The recorded run in ``out``; {} when run files exist but no record does; None when empty."""
    path = rundir.run_record_path(out)
    if storage.exists(path):
        try:
            return rundir.read_json(path)
        except (OSError, ValueError):
            return {}
    return {} if rundir.has_run_files(out) else None


def summary(out: str, fps: RunFingerprints, shards) -> str | None:
    """'resumed 11/12 shards; 1 new or changed' for the first segment, or None when nothing is reused."""
    done = sum(rundir.part_done(rundir.part_path(out, 0, s.stem), fps.part(0, s.index)) for s in shards)
    if not done:
        return None
    todo = len(shards) - done
    return f"resumed {done}/{len(shards)} shards" + (f"; {todo} new or changed" if todo else "")
