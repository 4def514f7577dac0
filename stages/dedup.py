"""Exact and perceptual dedup, global across every shard of a run, with a deterministic survivor.

Each is a group stage: ``prepare`` (a map) computes a signature, the runner's shuffle brings rows with
the same key together, ``decide_group`` keeps one survivor and rejects the rest with ``dup:<kind>`` and
``dup_of`` = the uid of the row it duplicates. The survivor depends only on the rows' values
(``prefer`` policy, ties by smallest uid), never on shard boundaries or row order.

Rows without a signature (no URL / no or undecodable image bytes) get a null key and pass through
unchanged: dedup is not a validity filter (basic_filter and download reject broken images).

Perceptual dedup must find pairs within ``radius`` bits, which no single key can do. By pigeonhole,
two 64-bit hashes within r bits agree exactly on at least one of r+1 disjoint bands, so the stage
groups once per band (``group_keys``): r+1 passes, each an ordinary shuffle with one key per row,
each over the rows earlier passes kept. Inside a group the exact distances are checked with
``kernels.hamming`` and resolved greedily in preference order.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import WinnowError
from stages._urls import normalize_urls
from stages.base import GroupStage, Param, Resources, group_starts, set_column

DUP_OF = "dup_of"
PREFER_HELP = ("which row of a duplicate group survives: 'uid' (smallest uid), 'max:COLUMN' or 'min:COLUMN' "
               "(e.g. max:clip_score, max:width); ties and nulls fall back to the smallest uid")


def check_prefer(prefer: str, where: str, extra: tuple[str, ...] = ()) -> None:
    if prefer in ("uid", *extra) or (prefer.startswith(("max:", "min:")) and len(prefer) > 4):
        return
    choices = ", ".join(["uid", *extra, "max:COLUMN", "min:COLUMN"])
    raise WinnowError(f"{where}: parameter 'prefer' must be one of {choices}; got {prefer!r}")


def survivor_order(table: pa.Table, prefer: str, values: np.ndarray | None = None) -> np.ndarray:
    """Row indices best first under ``prefer``; ``values`` overrides the column (higher = better)."""
    uids = np.array(table["uid"].to_pylist(), dtype=object)
    by_uid = np.argsort(uids, kind="stable")
    if prefer == "uid" and values is None:
        return by_uid
    if values is None:
        values = _prefer_values(table, prefer)
    v = np.asarray(values, dtype=np.float64)[by_uid]
    v = np.where(np.isnan(v), -np.inf, v)  # nulls rank last
    return by_uid[np.argsort(-v, kind="stable")]  # stable: equal values stay in uid order


def mark_duplicates(stage, group: pa.Table, dup_index: np.ndarray, reason: str) -> pa.Table:
    """Reject rows whose ``dup_index`` >= 0 with ``reason``; dup_of = uid of the row they duplicate."""
    is_dup = pa.array(np.asarray(dup_index) >= 0)
    reasons = pc.if_else(is_dup, pa.scalar(reason), pa.scalar(None, pa.string()))
    dup_of = pc.if_else(is_dup, group["uid"].take(pa.array(np.maximum(dup_index, 0))), pa.scalar(None, pa.string()))
    group = stage.reject(group, reasons)
    return set_column(group, DUP_OF, dup_of.cast(pa.string()))


def prefer_columns(prefer: str) -> list[str]:
    """Columns a ``prefer`` policy reads (for ``decide_columns``)."""
    return [prefer.split(":", 1)[1]] if prefer.startswith(("max:", "min:")) else []


def _prefer_values(table: pa.Table, prefer: str) -> np.ndarray:
    """Higher is better; NaN for nulls."""
    sign, col = prefer.split(":", 1)
    if col not in table.column_names:
        raise WinnowError(f"prefer={prefer}: column '{col}' not found (columns: {', '.join(table.column_names)})")
    try:
        raw = table[col].cast(pa.float64()).to_numpy()  # nulls -> NaN
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise WinnowError(f"prefer={prefer}: column '{col}' is not numeric ({table.schema.field(col).type})") from None
    return raw if sign == "max" else -raw


def _sorted_by_uid(groups: pa.Table, starts: np.ndarray) -> bool:
    """Runners hand groups sorted by (key, uid): then within-group uid order is row order."""
    uids = groups["uid"].combine_chunks()
    n = len(uids)
    if n < 2:
        return True
    le = pc.less_equal(uids.slice(0, n - 1), uids.slice(1)).to_numpy(zero_copy_only=False)
    boundary = np.zeros(n - 1, bool)
    boundary[starts[1:] - 1] = True
    return bool((le | boundary).all())


class _ExactDedup(GroupStage):
    """One survivor per key value."""

    kind = ""
    resources = Resources(cpus=1)

    def validate(self):
        check_prefer(self.prefer, f"stage '{self.instance_name}'")

    def produces(self):
        return {self.key_column: pa.binary(), DUP_OF: pa.string()}

    def decide_columns(self):
        return ["uid", self.key_column] + prefer_columns(self.prefer)

    def decide_group(self, group: pa.Table) -> pa.Table:
        return self.decide_groups(group, self.key_column)

    def decide_groups(self, groups: pa.Table, key: str) -> pa.Table:
        """All groups at once (millions of pairs in a 10M-row run): the best row of each key survives."""
        starts = group_starts(groups[key])
        sizes = np.diff(np.r_[starts, groups.num_rows])
        gid = np.repeat(np.arange(len(starts)), sizes)
        if self.prefer == "uid" and _sorted_by_uid(groups, starts):
            first = starts  # runners hand each group sorted by uid: its first row is the survivor
        else:
            uid_rank = pc.rank(groups["uid"], sort_keys="ascending", tiebreaker="first").to_numpy()
            score = np.zeros(groups.num_rows) if self.prefer == "uid" else _prefer_values(groups, self.prefer)
            order = np.lexsort((uid_rank, -np.where(np.isnan(score), -np.inf, score), gid))
            first = order[np.r_[0, np.flatnonzero(np.diff(gid[order])) + 1]]  # best row of each group
        survivor = first[gid]
        dup = np.where(survivor == np.arange(groups.num_rows), -1, survivor)
        return mark_duplicates(self, groups, dup, f"dup:{self.kind}")


class UrlDedup(_ExactDedup):
    name = "dedup_url"
    help = "exact dedup by normalized URL (dup:url), global across shards"
    kind = "url"
    key_column = "url_key"
    requires = ("url",)
    params = (
        Param("prefer", str, "uid", PREFER_HELP),
        Param("ignore_scheme", bool, True, "treat http:// and https:// of the same address as one URL"),
        Param("strip_www", bool, True, "treat www.example.com and example.com as one host"),
        Param("drop_query_params", list, ["utm_*", "fbclid", "gclid"],
              "query parameters ignored when comparing URLs (a trailing * matches a prefix)"),
    )

    def prepare(self, table: pa.Table) -> pa.Table:
        norm = normalize_urls(table["url"], self.ignore_scheme, self.strip_www, self.drop_query_params)
        keys = [hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=16).digest() if u else None
                for u in norm.to_pylist()]
        return set_column(table, self.key_column, pa.array(keys, pa.binary()))


class ImageDedup(_ExactDedup):
    name = "dedup_image"
    help = "exact dedup by sha256 of the image bytes (dup:image), global across shards"
    kind = "image"
    key_column = "image_sha256"
    requires = ("image",)
    params = (Param("prefer", str, "uid", PREFER_HELP),)

    def prepare(self, table: pa.Table) -> pa.Table:
        keys = [hashlib.sha256(b).digest() if b else None for b in table["image"].to_pylist()]
        return set_column(table, self.key_column, pa.array(keys, pa.binary()))


class PerceptualDedup(GroupStage):
    name = "dedup_phash"
    help = "perceptual dedup: 64-bit DCT pHash within a Hamming radius (dup:phash), global across shards"
    requires = ("image",)
    params = (
        Param("radius", int, 6, "maximum Hamming distance (bits of 64) between near-duplicates; pHash distances "
                                "are even, so 6 and 7 behave alike"),
        Param("prefer", str, "uid", PREFER_HELP),
        Param("threads", int, 1, "decode threads per worker (PIL releases the GIL)"),
    )
    resources = Resources(cpus=1)
    batch_size = 1024

    def validate(self):
        check_prefer(self.prefer, f"stage '{self.instance_name}'")
        if not 0 <= self.radius <= 20:
            raise WinnowError(f"stage '{self.instance_name}': parameter 'radius' must be in 0..20, got {self.radius}")

    def _bands(self) -> list[str]:
        return [f"phash_band{b}" for b in range(self.radius + 1)]

    def group_keys(self) -> list[str]:
        return self._bands()

    def produces(self):
        return {"phash": pa.uint64(), **{c: pa.int64() for c in self._bands()}, DUP_OF: pa.string()}

    def prepare(self, table: pa.Table) -> pa.Table:
        from kernels.hamming import band_values

        hashes, ok = phash_column(table, self.threads)
        table = set_column(table, "phash", pa.array(hashes, pa.uint64(), mask=~ok))
        bands = band_values(hashes, self.radius + 1)
        for name, values in zip(self._bands(), bands):
            table = set_column(table, name, pa.array(values, pa.int64(), mask=~ok))
        return table

    def decide_columns(self):
        return ["uid", "phash", *self._bands()] + prefer_columns(self.prefer)

    def decide_group(self, group: pa.Table) -> pa.Table:
        from kernels.hamming import near_duplicates

        order = survivor_order(group, self.prefer)
        hashes = group["phash"].to_numpy()[order]
        keep, dup_rank = near_duplicates(hashes, self.radius)
        dup = np.full(group.num_rows, -1, dtype=np.int64)
        dup[order[~keep]] = order[dup_rank[~keep]]
        return mark_duplicates(self, group, dup, "dup:phash")


def phash_column(table: pa.Table, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """pHashes of the table's images, reusing a non-null ``phash`` column; (uint64 hashes, ok mask)."""
    from kernels.phash import phash_bytes

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
