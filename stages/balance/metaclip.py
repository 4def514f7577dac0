"""MetaCLIP balancing (Demystifying CLIP Data; MetaCLIP 2 for per-language thresholds).

prepare: match each caption against the metadata entries (reference substring semantics, v1 or v2) ->
``metaclip_entries`` list<int32>. Barrier: per-entry match counts over the whole run (associative sums), ``t``
given or solved for a target, -> artifact. apply: keep a row with probability ``1 - prod(1 - p_e)``,
``p_e = min(1, t / count_e)``, drawn from ``(seed, uid)`` so any sharding and either runner keep the same rows;
rejections ``metaclip:no_match`` and ``metaclip:balanced_out``.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.kernels import balance as bal
from winnow.stages.balance.artifact import build_artifact, entry_table
from winnow.stages.balance.entries import (
    DEFAULT_T,
    SINGLE,
    as_strings,
    bottom_k,
    cached_matcher,
    concat_csr,
    entries_csr,
    load_metadata,
    utf8_buffers,
)
from winnow.stages.base import GlobalStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError

ENTRIES = "metaclip_entries"
GROUP = "metaclip_group"
KEEP_PROB = "metaclip_keep_prob"
OTHER = "other"  # MetaCLIP 2's group for languages without their own metadata
DRAW_SALT, SAMPLE_SALT = 0x6D657461, 0x73616D70  # independent hash streams: keep draw vs. t-solving sample


class MetaCLIPBalance(GlobalStage):
    name = "metaclip"
    help = "MetaCLIP balancing: substring-match captions to metadata entries, count globally, sample by 1-prod(1-p_e)"
    params = (
        Param("metadata", str, "", "MetaCLIP metadata: a JSON list of strings, entry id = position"),
        Param("version", str, "v1", "reference matching semantics: v1 (MetaCLIP) or v2 (MetaCLIP 2: strip, "
              "no padding beside CJK-like/punctuation ends)", choices=("v1", "v2")),
        Param("t", float, None, f"head/tail threshold t (p_e = min(1, t/count_e)); default {DEFAULT_T:g} "
              "unless target_fraction or target_rows is given", min=0.0, open_min=True),
        Param("target_fraction", float, None, "solve t so the expected kept rows are this fraction of rows in",
              min=0.0, max=1.0, open_min=True),
        Param("target_rows", int, None, "solve t so the expected kept rows are this many", min=1),
        Param("text_column", str, "caption", "column matched against the metadata"),
        Param("lang_metadata", dict, {}, "MetaCLIP 2 per-language metadata {lang: path}; rows whose lang_column "
              "has no entry here use 'metadata' (group 'other')"),
        Param("lang_column", str, "lang", "language code column used with lang_metadata"),
        Param("reference_lang", str, "en", "with lang_metadata: the language t applies to; every other language "
              "gets the threshold with the same tail share of matches (MetaCLIP 2's t_to_p / p_to_t)"),
        Param("sample_rows", int, 100_000, "rows sampled by uid hash to solve t for a target (exact below this)",
              min=1),
    )
    resources = Resources(cpus=1)
    batch_size = 16384
    stateful = True  # the Aho-Corasick automaton is built once per worker
    reads_image = ()  # matches captions only

    def validate(self):
        where = f"stage '{self.instance_name}' (metaclip)"
        given = [k for k in ("t", "target_fraction", "target_rows") if self.config[k] is not None]
        if len(given) > 1:
            raise WinnowError(f"{where}: give only one of t, target_fraction, target_rows (got {', '.join(given)})")
        bad = [k for k, v in self.lang_metadata.items() if not isinstance(v, str) or not v]
        if bad:
            raise WinnowError(f"{where}: lang_metadata['{bad[0]}'] must be a path to a JSON list of entries")
        if not self.metadata and not self.lang_metadata:
            raise WinnowError(f"{where}: set 'metadata' to a JSON list of entries (MetaCLIP's metadata.json)")
        if OTHER in self.lang_metadata and self.metadata:
            raise WinnowError(f"{where}: lang_metadata['{OTHER}'] and 'metadata' both name the fallback list")
        if self.lang_metadata and self.reference_lang not in self.lang_metadata:
            raise WinnowError(f"{where}: reference_lang '{self.reference_lang}' has no lang_metadata entry")
        self.groups = self._group_paths()
        self.requires = ("uid", self.text_column) + ((self.lang_column,) if self.lang_metadata else ())

    def _group_paths(self) -> dict[str, str]:
        if not self.lang_metadata:
            return {SINGLE: self.metadata}
        out = dict(sorted(self.lang_metadata.items()))
        if self.metadata:
            out[OTHER] = self.metadata
        return out

    def produces(self):
        cols = {ENTRIES: pa.list_(pa.int32()), KEEP_PROB: pa.float32()}
        return cols | ({GROUP: pa.string()} if self.lang_metadata else {})

    def setup(self):
        self._matchers: dict = {}
        for path in self.groups.values():  # fail early on a missing or malformed file
            load_metadata(path)

    def _matcher(self, group: str):
        if group not in self._matchers:  # built lazily: MetaCLIP 2 has hundreds of per-language lists
            self._matchers[group] = cached_matcher(self.groups[group], self.version)
        return self._matchers[group]

    def provenance(self):
        return {g: {"metadata": os.path.abspath(p), "entries": len(load_metadata(p))} for g, p in self.groups.items()}

    # -- prepare: caption -> entry ids ------------------------------------------------------------
    def prepare(self, table: pa.Table) -> pa.Table:
        texts = as_strings(table[self.text_column], self.text_column)
        groups = self._row_groups(table)
        if groups is None:
            return set_column(table, ENTRIES, self._match(texts, SINGLE))
        pieces, positions = [], []
        for group in np.unique(groups):
            idx = np.flatnonzero(groups == group)
            pieces.append(self._match(texts.take(pa.array(idx)), group) if group in self.groups
                          else pa.array([[]] * len(idx), pa.list_(pa.int32())))
            positions.append(idx)
        order = np.argsort(np.concatenate(positions), kind="stable")
        entries = pa.concat_arrays(pieces).take(pa.array(order)) if pieces else pa.array([], pa.list_(pa.int32()))
        table = set_column(table, ENTRIES, entries)
        return set_column(table, GROUP, pa.array(groups, pa.string()))

    def _row_groups(self, table: pa.Table) -> np.ndarray | None:
        if not self.lang_metadata:
            return None
        if self.lang_column not in table.column_names:
            raise WinnowError(f"stage '{self.instance_name}': lang_metadata needs column '{self.lang_column}'")
        langs = np.asarray(pc.fill_null(table[self.lang_column].cast(pa.string()), "").to_numpy(
            zero_copy_only=False), dtype=object)
        own = np.isin(langs, [k for k in self.lang_metadata])
        return np.where(own, langs, OTHER).astype(object)

    def _match(self, texts: pa.Array, group: str) -> pa.Array:
        """Match each distinct caption once (web alt-text repeats a lot), then spread to the rows."""
        from winnow.kernels.substring_match import match_texts

        encoded = pc.dictionary_encode(texts)
        offsets, ids = match_texts(encoded.dictionary, self._matcher(group))
        lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int32()))
        return pc.fill_null(lists.take(encoded.indices), pa.scalar([], pa.list_(pa.int32())))

    # -- barrier: counts (+ a uid-hash sample when t is solved for a target) ------------------------------
    def partial(self, table: pa.Table) -> dict:
        offsets, ids = entries_csr(table[ENTRIES])
        matched = np.diff(offsets) > 0
        gidx = self._group_index(table)
        id_group = np.repeat(gidx, np.diff(offsets)) if len(self.groups) > 1 else None
        counts = {}
        for gi, group in enumerate(self.groups):
            mine = ids if id_group is None else ids[id_group == gi]
            if len(mine):  # sparse (ids, counts): small partials whatever the metadata size
                bc = np.bincount(mine)
                nz = np.flatnonzero(bc)
                counts[group] = (nz.astype(np.int32), bc[nz])
        part = {"rows": table.num_rows, "matched": int(matched.sum()), "counts": counts, "sample": None}
        if self.t is None and (self.target_fraction is not None or self.target_rows is not None):
            rows = np.flatnonzero(matched)
            data, uoff = utf8_buffers(table["uid"])
            hashes = bal.hash_strings(data, uoff, self.seed, SAMPLE_SALT)[rows]
            so, si = bal.csr_take(offsets, ids, rows)
            part["sample"] = bottom_k({"hash": hashes, "group": gidx[rows], "offsets": so, "ids": si},
                                       self.sample_rows)
        return part

    def _group_index(self, table: pa.Table) -> np.ndarray:
        if not self.lang_metadata:
            return np.zeros(table.num_rows, np.int16)
        names = table[GROUP].to_numpy(zero_copy_only=False)
        lookup = {g: i for i, g in enumerate(self.groups)}
        return np.array([lookup.get(g, -1) for g in names], np.int16)

    def combine(self, parts: list[dict]) -> dict:
        out = {"rows": sum(p["rows"] for p in parts), "matched": sum(p["matched"] for p in parts), "counts": {},
               "sample": None}
        for group in self.groups:
            got = [p["counts"][group] for p in parts if group in p["counts"]]
            if got:
                ids = np.concatenate([g[0] for g in got])
                total = np.bincount(ids, weights=np.concatenate([g[1] for g in got]).astype(np.float64))
                nz = np.flatnonzero(total)
                out["counts"][group] = (nz.astype(np.int32), np.rint(total[nz]).astype(np.int64))
        samples = [p["sample"] for p in parts if p.get("sample") is not None]
        if samples:
            merged = {k: np.concatenate([s[k] for s in samples]) for k in ("hash", "group")}
            merged["offsets"], merged["ids"] = concat_csr([(s["offsets"], s["ids"]) for s in samples])
            out["sample"] = bottom_k(merged, self.sample_rows)
        return out

    def finalize(self, combined: dict) -> dict:
        return build_artifact(self, combined)

    def write_artifacts(self, artifact: dict, write_table) -> None:
        """Sidecar files beside the JSON artifact: per-entry counts and probabilities as Parquet."""
        write_table(entry_table(artifact), f"{self.instance_name}.entries.parquet")

    # -- apply: keyed Bernoulli decision ------------------------------------------------------------------
    def apply(self, table: pa.Table, artifact: dict) -> pa.Table:
        offsets, ids = entries_csr(table[ENTRIES])
        probs, bases = self._dense_probs(artifact)
        if self.lang_metadata:  # ids are per language: shift each row's ids to its language's block
            gidx = self._group_index(table).astype(np.int64)
            row_base = np.where(gidx >= 0, bases[np.maximum(gidx, 0)], 0)
            ids = ids + np.repeat(row_base, np.diff(offsets))
        keep_prob = bal.keep_probabilities(offsets, ids, probs)
        data, uoff = utf8_buffers(table["uid"])
        kept = bal.keep_decisions(keep_prob, data, uoff, self.seed, DRAW_SALT)
        reasons = np.where(np.diff(offsets) == 0, "metaclip:no_match", np.where(kept, None, "metaclip:balanced_out"))
        table = set_column(table, KEEP_PROB, pa.array(keep_prob, pa.float32()))
        return self.reject(table, pa.array(reasons.tolist(), pa.string()))

    def _dense_probs(self, artifact: dict) -> tuple[np.ndarray, np.ndarray]:
        """Entry probabilities of every group end to end (ids offset by the group's base), cached per artifact."""
        cached = getattr(self, "_probs_cache", None)
        if cached is not None and cached[0] is artifact:
            return cached[1]
        parts, bases, base = [], [], 0
        for group in self.groups:
            g = artifact["groups"][group]
            counts = np.zeros(g["n_entries"], np.int64)
            counts[np.asarray(g["entry_ids"], np.int64)] = g["counts"]
            parts.append(bal.entry_probabilities(counts, artifact["thresholds"][group]))
            bases.append(base)
            base += g["n_entries"]
        result = (np.concatenate(parts) if parts else np.zeros(0), np.asarray(bases, np.int64))
        self._probs_cache = (artifact, result)
        return result
