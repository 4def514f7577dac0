"""What a runner hands a stage when it sets it up: the parts of the run a stage may use.

A stage never reaches for the runner (stages do not import pipeline); the runner passes this to
``Stage.ensure_setup`` on the worker where the stage runs. A stage called directly (tests, a
notebook) gets the empty context: no run directory, no writer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa


@dataclass(frozen=True)
class StageContext:
    run_dir: str | None = None  # the run's output directory, absolute
    # writes a table atomically at a path (the runner's writer, so side outputs land like its own files)
    write_table: Callable[[pa.Table, str], None] | None = None
    # GPUs the runner reserved for this worker (the Ray runner's resolved Resources.gpus; 0 elsewhere) and
    # the node it runs on, for messages: a stage given a GPU must use one, never fall back to CPU silently
    gpus: float = 0.0
    node: str = ""
