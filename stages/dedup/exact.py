"""Exact dedup by URL and by image bytes, global across every shard of a run.

Each is a group stage: ``prepare`` (a map) computes a signature, the runner's shuffle brings rows with
the same key together, and the best row of each key survives (``survivors``). Rows without a signature
(no URL / no image bytes) get a null key and pass through unchanged: dedup is not a validity filter
(basic_filter and download reject broken images).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.base import GroupStage, Param, Resources
from winnow.stages.columns import group_starts, set_column
from winnow.stages.dedup.survivors import (
    DUP_OF,
    PREFER_HELP,
    check_prefer,
    mark_duplicates,
    prefer_columns,
    prefer_values,
    sorted_by_uid,
)
from winnow.stages.dedup.urls import normalize_urls


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
        if self.prefer == "uid" and sorted_by_uid(groups, starts):
            first = starts  # runners hand each group sorted by uid: its first row is the survivor
        else:
            uid_rank = pc.rank(groups["uid"], sort_keys="ascending", tiebreaker="first").to_numpy()
            score = np.zeros(groups.num_rows) if self.prefer == "uid" else prefer_values(groups, self.prefer)
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
    reads_image = ()
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
    reads_image = ("prepare",)  # deciding reads the hashes only
    params = (Param("prefer", str, "uid", PREFER_HELP),)

    def prepare(self, table: pa.Table) -> pa.Table:
        keys = [hashlib.sha256(b).digest() if b else None for b in table["image"].to_pylist()]
        return set_column(table, self.key_column, pa.array(keys, pa.binary()))
