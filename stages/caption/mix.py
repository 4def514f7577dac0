"""Training-ready caption choice: mix alt-text and synthetic captions at a set ratio.

VeCLIP and Recap-DataComp-1B train on a mixture: each sample shows either its alt-text or a
synthetic caption, with a fixed probability of the synthetic one (alt-text keeps the web's
long-tail knowledge; synthetic captions are denser and better aligned). This stage writes that
choice as ``caption_train`` plus ``caption_source`` (``alt_text`` / ``synthetic`` / null when the
row has neither), drawn deterministically from ``(seed, uid)`` so reruns and reshardings agree.
When the drawn source is missing for a row (no synthetic caption, empty alt-text) the other one is
used. With several synthetic captions per row, one is picked, also from ``(seed, uid)``.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import set_column

ALT, SYNTHETIC = "alt_text", "synthetic"


def uid_uniform(seed: int, uid: str, salt: str) -> float:
    """A uniform in [0, 1) fixed by (seed, uid, salt)."""
    digest = hashlib.blake2b(f"{seed}\x1f{salt}\x1f{uid}".encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


class CaptionMix(MapStage):
    name = "caption_mix"
    help = "caption_train = alt-text or synthetic caption, mixed at a ratio, deterministic per (seed, uid)"
    params = (
        Param("synthetic_ratio", float, 0.5, "probability that a row trains on its synthetic caption",
              min=0.0, max=1.0),
        Param("alt_column", str, "caption", "alt-text column"),
        Param("synthetic_column", str, "caption_synthetic", "synthetic caption column (string or list of strings)"),
        Param("output_column", str, "caption_train", "column to write; its source goes to caption_source"),
        Param("reject_empty", bool, False, "reject rows with neither a usable alt-text nor a synthetic caption"),
    )
    requires = ("uid",)
    reads_image = ()
    resources = Resources(cpus=1)
    batch_size = 8192

    def validate(self):
        self.requires = ("uid", self.alt_column, self.synthetic_column)

    def produces(self):
        return {self.output_column: pa.string(), "caption_source": pa.string()}

    def process_batch(self, table: pa.Table) -> pa.Table:
        uids = table["uid"].to_pylist()
        alts = table[self.alt_column].to_pylist()
        synths = table[self.synthetic_column].to_pylist()
        chosen, sources, reasons = [], [], []
        for uid, alt, synth in zip(uids, alts, synths):
            alt = alt if isinstance(alt, str) and alt.strip() else None
            synth = self._pick_synthetic(str(uid), synth)
            want_synth = uid_uniform(self.seed, str(uid), "caption_mix") < self.synthetic_ratio
            if synth is not None and (want_synth or alt is None):
                caption, source = synth, SYNTHETIC
            else:  # alt-text, or nothing when the row has neither
                caption, source = alt, (ALT if alt is not None else None)
            chosen.append(caption)
            sources.append(source)
            reasons.append("no_caption" if self.reject_empty and caption is None else None)
        table = set_column(table, self.output_column, pa.array(chosen, pa.string()))
        table = set_column(table, "caption_source", pa.array(sources, pa.string()))
        return self.reject(table, reasons) if any(reasons) else table

    def _pick_synthetic(self, uid: str, value) -> str | None:
        """A non-empty synthetic caption for the row; one of several drawn from (seed, uid)."""
        if isinstance(value, str):
            return value if value.strip() else None
        options = [v for v in (value or []) if isinstance(v, str) and v.strip()]
        if not options:
            return None
        return options[int(uid_uniform(self.seed, uid, "caption_mix_pick") * len(options))]
