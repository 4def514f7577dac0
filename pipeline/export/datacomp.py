"""The kept uids as a DataComp subset file for ``resharder.py --subset-file``.

DataComp's baselines save ``np.array([(int(u[:16], 16), int(u[16:32], 16)) ...], np.dtype("u8,u8"))``, sorted,
with ``np.save``; the resharder searchsorted's each shard sample's uid in it. Its uids are 128-bit hex strings,
so any other uid cannot be expressed: refused with one line naming one. Read from the manifest (kept rows are
those without a reject_stage), so a run without a kept set exports its subset too.
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow.compute as pc

from winnow.pipeline import rundir
from winnow.pipeline.export.source import check_run, parquet_files, read_record
from winnow.pipeline.export.spec import ExportSpec
from winnow.stages import storage
from winnow.stages.columns import REJECT_STAGE
from winnow.stages.errors import WinnowError

HEX128 = re.compile(r"[0-9a-fA-F]{32}")
# Little-endian explicitly: what np.dtype("u8,u8") is on the x86/ARM machines DataComp runs on.
SUBSET_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])


def kept_uids(run_dir: str) -> list[str]:
    check_run(run_dir)
    uids = []
    record = read_record(run_dir, rundir.pipeline_record_path(run_dir))
    for part in parquet_files(rundir.manifest_dir(run_dir), record):
        table = storage.read_parquet(part, columns=["uid", REJECT_STAGE])
        uids += table.filter(pc.is_null(table[REJECT_STAGE]))["uid"].to_pylist()
    return uids


def subset_array(uids: list[str]) -> np.ndarray:
    bad = next((u for u in uids if not isinstance(u, str) or not HEX128.fullmatch(u)), None)
    if bad is not None:
        raise WinnowError(f"export datacomp-subset: uid '{bad}' is not 128-bit hex (32 hex characters, as DataComp's); "
                          f"a DataComp subset file can only name such uids")
    pairs = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], dtype=SUBSET_DTYPE)
    return np.sort(pairs, order=["f0", "f1"])


def export_datacomp(run_dir: str, spec: ExportSpec, seed: int) -> dict:
    del seed  # a subset is a set: no order to shuffle
    array = subset_array(kept_uids(run_dir))
    folder = rundir.export_dir(run_dir, spec.output, spec.format)
    rundir.ensure_writable_dir(folder)
    path = rundir.subset_path(folder)
    rundir.atomic_write(path, lambda tmp: _save(tmp, array))
    return {"format": spec.format, "output": path, "samples": len(array)}


def _save(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temp name
        np.save(f, array, allow_pickle=False)
