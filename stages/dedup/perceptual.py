"""Perceptual dedup: 64-bit DCT pHash within a Hamming radius, global across every shard of a run.

No single key finds pairs within ``radius`` bits. By pigeonhole, two 64-bit hashes within r bits agree
exactly on at least one of r+1 disjoint bands, so the stage groups once per band (``group_keys``): r+1
passes, each an ordinary shuffle with one key per row, each over the rows earlier passes kept. Inside
a group the exact distances are checked with ``kernels.hamming`` and resolved greedily in preference
order. Rows without decodable image bytes get null keys and pass through.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from winnow.kernels.hamming import band_values, near_duplicates
from winnow.kernels.phash import phash_bytes
from winnow.stages.base import GroupStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.dedup.survivors import (
    DUP_OF,
    PREFER_HELP,
    check_prefer,
    mark_duplicates,
    prefer_columns,
    survivor_order,
)


class PerceptualDedup(GroupStage):
    name = "dedup_phash"
    help = "perceptual dedup: 64-bit DCT pHash within a Hamming radius (dup:phash), global across shards"
    requires = ("image",)
    reads_image = ("prepare",)  # deciding reads the hashes only
    params = (
        Param("radius", int, 6, "maximum Hamming distance (bits of 64) between near-duplicates; pHash distances "
                                "are even, so 6 and 7 behave alike", min=0, max=20),
        Param("prefer", str, "uid", PREFER_HELP),
        Param("threads", int, 1, "decode threads per worker (PIL releases the GIL)", min=1),
    )
    resources = Resources(cpus=1)
    batch_size = 1024

    def validate(self):
        check_prefer(self.prefer, f"stage '{self.instance_name}'")

    def _bands(self) -> list[str]:
        return [f"phash_band{b}" for b in range(self.radius + 1)]

    def group_keys(self) -> list[str]:
        return self._bands()

    def produces(self):
        return {"phash": pa.uint64(), **{c: pa.int64() for c in self._bands()}, DUP_OF: pa.string()}

    def prepare(self, table: pa.Table) -> pa.Table:
        hashes, ok = phash_column(table, self.threads)
        table = set_column(table, "phash", pa.array(hashes, pa.uint64(), mask=~ok))
        bands = band_values(hashes, self.radius + 1)
        for name, values in zip(self._bands(), bands):
            table = set_column(table, name, pa.array(values, pa.int64(), mask=~ok))
        return table

    def decide_columns(self):
        return ["uid", "phash", *self._bands()] + prefer_columns(self.prefer)

    def decide_group(self, group: pa.Table) -> pa.Table:
        order = survivor_order(group, self.prefer)
        hashes = group["phash"].to_numpy()[order]
        keep, dup_rank = near_duplicates(hashes, self.radius)
        dup = np.full(group.num_rows, -1, dtype=np.int64)
        dup[order[~keep]] = order[dup_rank[~keep]]
        return mark_duplicates(self, group, dup, "dup:phash")


def phash_column(table: pa.Table, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """pHashes of the table's images, reusing a non-null ``phash`` column; (uint64 hashes, ok mask)."""
    n = table.num_rows
    hashes = np.zeros(n, np.uint64)
    ok = np.zeros(n, bool)
    if "phash" in table.column_names:
        col = table["phash"].cast(pa.uint64())
        ok = col.is_valid().to_numpy(zero_copy_only=False)
        hashes = col.fill_null(0).to_numpy().copy()
    todo = np.flatnonzero(~ok)
    if len(todo) and "image" in table.column_names:
        images = table["image"].take(pa.array(todo)).to_pylist()
        h, good = phash_bytes(images, threads=threads)
        hashes[todo] = h
        ok[todo] = good
    return hashes, ok
