"""One streaming pass over OUT/manifest for the report, with memory bounded whatever the run size.

Histograms are accumulated batch by batch over only the columns they need; image samples are a
seeded uniform sample (smallest random key wins) per (stage, reason) drawn from a few shards only,
so that fetching their images later reads a bounded number of files; duplicate groups are the
groups whose survivor uid hashes smallest, which collects every member of a chosen group in one pass
without remembering the others.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages import storage
from winnow.stages.columns import REJECT_REASON, REJECT_STAGE

KEPT_KEY = ("", "kept")
ROW_FIELDS = ("uid", "caption", "caption_synthetic", REJECT_STAGE, REJECT_REASON, "dup_of")


@dataclass
class Histogram:
    column: str
    edges: np.ndarray
    kept: np.ndarray = None
    rejected: np.ndarray = None
    n: int = 0
    total: float = 0.0

    def __post_init__(self):
        self.kept = np.zeros(len(self.edges) - 1, np.int64)
        self.rejected = np.zeros(len(self.edges) - 1, np.int64)

    def add(self, values: pa.Array, kept_mask: np.ndarray) -> None:
        vals = pc.fill_null(values.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
        ok = np.isfinite(vals)
        self.n += int(ok.sum())
        self.total += float(vals[ok].sum())
        self.kept += np.histogram(vals[ok & kept_mask], self.edges)[0]
        self.rejected += np.histogram(vals[ok & ~kept_mask], self.edges)[0]


@dataclass
class ScanResult:
    histograms: dict[str, Histogram] = field(default_factory=dict)
    samples: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # (stage, reason) -> rows
    dup_groups: dict[str, dict] = field(default_factory=dict)  # survivor uid -> {"members": [...], "n": int}
    # per metadata group (None = every row): metaclip matches per entry over the rows that were matched,
    # and over the rows the balancing did not reject
    entry_counts: dict = field(default_factory=dict)
    entry_realized: dict = field(default_factory=dict)
    rows: int = 0


def score_columns(schema: pa.Schema) -> list[str]:
    """Every float column is a score worth a histogram."""
    return [f.name for f in schema if pa.types.is_floating(f.type)]


def column_ranges(files: list[str], columns: list[str]) -> dict[str, tuple[float, float]]:
    """(min, max) per column from Parquet row-group statistics; a column without them is read once."""
    lo = {c: np.inf for c in columns}
    hi = {c: -np.inf for c in columns}
    missing: set[str] = set()
    for path in files:
        md = storage.read_metadata(path)
        names = [md.schema.column(j).path for j in range(md.num_columns)]
        for c in columns:
            if c not in names:
                continue
            j = names.index(c)
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(j).statistics
                if st is None or not st.has_min_max:
                    if md.row_group(g).num_rows and (st is None or st.null_count != md.row_group(g).num_rows):
                        missing.add(c)
                    continue
                if not isinstance(st.min, (int, float)):  # e.g. float16 statistics come back as raw bytes
                    missing.add(c)
                    continue
                lo[c], hi[c] = min(lo[c], float(st.min)), max(hi[c], float(st.max))
    for c in missing:
        for path in files:
            if c in storage.read_schema(path).names:
                values = storage.read_parquet(path, columns=[c])[c].cast(pa.float64())
                mm = pc.min_max(pc.if_else(pc.is_nan(values), None, values)).as_py()
                if mm["min"] is not None:
                    lo[c], hi[c] = min(lo[c], mm["min"]), max(hi[c], mm["max"])
    return {c: (lo[c], hi[c]) for c in columns if np.isfinite(lo[c]) and np.isfinite(hi[c])}


def histogram_edges(lo: float, hi: float, extra: list[float], bins: int = 40) -> np.ndarray:
    """Bins over the data range widened to include every threshold, so each line falls on the chart."""
    lo, hi = min([lo, *extra]), max([hi, *extra])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


class ManifestScanner:
    batch_rows = 65536  # rows read at a time: memory stays bounded whatever the file size

    def __init__(self, per_grid: int, dup_groups: int, dup_members: int, seed: int,
                 histograms: dict[str, np.ndarray], entry_groups: list, observers: tuple = ()):
        self.per_grid, self.max_groups, self.max_members = per_grid, dup_groups, dup_members
        self.observers = observers  # more per-batch views over every row: ``.columns``, ``.add(t, kept, stem)``
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.entry_groups = entry_groups
        self.result = ScanResult(histograms={c: Histogram(c, e) for c, e in histograms.items()})
        self._keys: dict[tuple[str, str], list[float]] = {}
        self._group_hash: dict[str, int] = {}

    def scan(self, files: list[tuple[str, str]], sample_stems: set[str]) -> ScanResult:
        for stem, path in files:
            pf = storage.parquet_file(path)
            names = pf.schema_arrow.names
            extra = [c for o in self.observers for c in o.columns]
            wanted = list(dict.fromkeys(c for c in (*ROW_FIELDS, *self.result.histograms, *extra) if c in names))
            if self.entry_groups and "metaclip_entries" in names:
                wanted += [c for c in ("metaclip_entries", "metaclip_group") if c in names]
            for batch in pf.iter_batches(batch_size=self.batch_rows, columns=wanted):
                self._batch(pa.Table.from_batches([batch]), stem, stem in sample_stems)
        return self.result

    def _batch(self, t: pa.Table, stem: str, sample: bool) -> None:
        self.result.rows += t.num_rows
        stage = t[REJECT_STAGE] if REJECT_STAGE in t.column_names else pa.nulls(t.num_rows, pa.string())
        kept = pc.is_null(stage).to_numpy(zero_copy_only=False)
        for c, hist in self.result.histograms.items():
            if c in t.column_names:
                hist.add(t[c], kept)
        for observer in self.observers:
            observer.add(t, kept, stem)
        if sample:
            self._sample(t, stem, kept)
        if "dup_of" in t.column_names:
            self._dups(t, stem)
        if "metaclip_entries" in t.column_names:
            self._entries(t)

    def _sample(self, t: pa.Table, stem: str, kept: np.ndarray) -> None:
        keys = self.rng.random(t.num_rows)
        groups = [(KEPT_KEY, np.flatnonzero(kept))]
        rej = np.flatnonzero(~kept)
        if len(rej):
            sub = t.take(pa.array(rej))
            reason = pc.fill_null(sub[REJECT_REASON], "") if REJECT_REASON in t.column_names else pa.nulls(len(rej))
            joined = pc.binary_join_element_wise(sub[REJECT_STAGE], reason, "\x1f").combine_chunks()
            enc = joined.dictionary_encode()
            codes = enc.indices.to_numpy(zero_copy_only=False)
            for c, value in enumerate(enc.dictionary.to_pylist()):
                stage_name, _, reason_text = value.partition("\x1f")
                groups.append(((stage_name, reason_text), rej[codes == c]))
        for key, idx in groups:
            limit = self.per_grid * (2 if key == KEPT_KEY else 1)  # the kept set is what people came to see
            if not len(idx):
                continue
            if len(idx) > limit:
                idx = idx[np.argpartition(keys[idx], limit - 1)[:limit]]
            rows = table_rows(t, idx, stem)
            have, have_keys = self.result.samples.setdefault(key, []), self._keys.setdefault(key, [])
            merged = sorted(zip(have_keys + list(keys[idx]), have + rows), key=lambda kv: kv[0])[:limit]
            self._keys[key] = [k for k, _ in merged]
            self.result.samples[key] = [r for _, r in merged]

    def _dups(self, t: pa.Table, stem: str) -> None:
        idx = np.flatnonzero(pc.is_valid(t["dup_of"]).to_numpy(zero_copy_only=False))
        if not len(idx):
            return
        survivors = t["dup_of"].take(pa.array(idx)).to_pylist()
        groups, hashes = self.result.dup_groups, self._group_hash
        chosen: list[tuple[int, str]] = []
        for i, s in zip(idx, survivors):
            if s not in groups:
                h = zlib.crc32(f"{self.seed}:{s}".encode())
                if len(groups) >= self.max_groups:
                    worst = max(hashes, key=hashes.get)
                    if h >= hashes[worst]:
                        continue
                    del groups[worst], hashes[worst]
                groups[s], hashes[s] = {"members": [], "n": 0}, h
            groups[s]["n"] += 1
            if groups[s]["n"] <= self.max_members:
                chosen.append((int(i), s))
        if not chosen:
            return
        rows = table_rows(t, np.array([i for i, _ in chosen]), stem)
        for row, (_, s) in zip(rows, chosen):  # a group evicted later in this batch is simply skipped
            if s in groups and len(groups[s]["members"]) < self.max_members:
                groups[s]["members"].append(row)

    def _entries(self, t: pa.Table) -> None:
        reason = t[REJECT_REASON] if REJECT_REASON in t.column_names else pa.nulls(t.num_rows, pa.string())
        kept = pc.invert(pc.fill_null(pc.starts_with(reason, "metaclip:"), False))
        for group in self.entry_groups:
            in_group = None  # without a group column every row belongs to the one group
            if group is not None and "metaclip_group" in t.column_names:
                in_group = pc.fill_null(pc.equal(t["metaclip_group"], group), False)
            for store, mask in ((self.result.entry_counts, in_group),
                                (self.result.entry_realized, kept if in_group is None else pc.and_(kept, in_group))):
                col = t["metaclip_entries"] if mask is None else t["metaclip_entries"].filter(mask)
                values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
                counts = np.bincount(values) if len(values) else np.zeros(0, np.int64)
                have = store.get(group, np.zeros(0, np.int64))
                size = max(len(have), len(counts))
                store[group] = np.pad(have, (0, size - len(have))) + np.pad(counts, (0, size - len(counts)))


def table_rows(t: pa.Table, idx: np.ndarray, stem: str) -> list[dict]:
    """The displayed fields of rows ``idx``: uid, captions, decision and every score."""
    cols = [c for c in t.column_names if c in ROW_FIELDS or pa.types.is_floating(t.schema.field(c).type)]
    rows = t.select(cols).take(pa.array(idx)).to_pylist()
    for r in rows:
        r["stem"] = stem
        scores = {c: r.pop(c) for c in list(r) if c not in ROW_FIELDS and c != "stem"}
        r["scores"] = {c: v for c, v in scores.items() if v is not None and np.isfinite(v)}
    return rows
