"""The ``filter`` stage: keep rows by a predicate over columns the input already has and/or by the top
fraction of a numeric column over the WHOLE run. Score once, filter many: a DataComp or LAION metadata
pool carries its CLIP scores and safety probabilities, and a previous run's manifest carries its scores
and decisions (read back as ``input_reject_stage``/``input_reject_reason``), so thresholds change
without a GPU and without a download.

``keep_where`` (or its synonym ``where``) is a ``stages/predicate.py`` predicate; a row it does not
select is rejected naming the first top-level ``and`` term it failed, ``filter:<term>``, or
``filter_null:<column>`` when the term was unknown because that column is null (SQL semantics: a
comparison with a null selects nothing). ``keep_top: {column: C, fraction: F}`` keeps the top F of the
rows that pass ``keep_where`` and have a value in C, with clip_score's exact grid threshold
(stages/filter/keep_top.py); others get ``below_keep_top:C``, or ``keep_top_null:C`` when C is null or
NaN. The columns both read are the stage's ``requires``: a missing one fails before anything runs.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.base import GlobalStage, Param, Resources
from winnow.stages.columns import REJECT_REASON, REJECT_STAGE
from winnow.stages.errors import WinnowError
from winnow.stages.filter import keep_top as top
from winnow.stages.predicate import parse_predicate

_KEEP_TOP_KEYS = {"column", "fraction"}


class Filter(GlobalStage):
    name = "filter"
    help = "keep rows by a predicate over existing columns (keep_where) and/or a run-wide top fraction (keep_top)"
    params = (
        Param("keep_where", str, "", "keep rows where this predicate holds, e.g. 'punsafe < 0.1 and pwatermark "
                                     "< 0.8' or 'input_reject_stage is null' ('' = off)"),
        Param("where", str, "", "synonym of keep_where (set one of the two)"),
        Param("keep_top", dict, {}, "{column: NAME, fraction: F}: keep the top F (0 < F <= 1) of the rows passing "
                                    "keep_where, by NAME, over the whole run ({} = off)"),
    )
    resources = Resources(cpus=1)
    batch_size = 16384  # metadata rows are small
    reads_image = ()  # unless the predicate names image (validate)

    def validate(self) -> None:
        where = f"stage '{self.instance_name}'"
        if self.config["keep_where"] and self.config["where"]:
            raise WinnowError(f"{where}: set 'keep_where' or its synonym 'where', not both")
        param = "keep_where" if self.config["keep_where"] else "where"
        text = self.config[param].strip()
        try:
            self.predicate = parse_predicate(text) if text else None
        except WinnowError as exc:
            raise WinnowError(f"{where} parameter '{param}': {exc}") from None
        self.terms = self.predicate.conjuncts() if self.predicate else []
        own = [c for c in (self.predicate.columns if self.predicate else ()) if c in (REJECT_STAGE, REJECT_REASON)]
        if own:  # this run's decisions are null on every row a stage sees: the filter would test nothing
            raise WinnowError(f"{where} parameter '{param}': '{own[0]}' is this run's own decision, null on every "
                              f"row this stage sees; the input's decisions are 'input_{own[0]}'")
        self.top_column, self.top_fraction = self._keep_top(where)
        if self.predicate is None and not self.top_column:
            raise WinnowError(f"{where}: set 'keep_where' and/or 'keep_top'; a filter with no rule would do nothing")
        reads = [*(self.predicate.columns if self.predicate else ()), *([self.top_column] if self.top_column else [])]
        self.requires = tuple(dict.fromkeys(reads))  # checked against the input before anything runs
        # a predicate on ``image`` (e.g. 'image is not null') is tested in partial and apply too
        self.reads_image = ("prepare", "partial", "apply") if "image" in self.requires else ()

    def _keep_top(self, where: str) -> tuple[str, float]:
        spec = self.config["keep_top"]
        if not spec:
            return "", 0.0
        unknown = sorted(set(spec) - _KEEP_TOP_KEYS)
        column, fraction = spec.get("column"), spec.get("fraction")
        if unknown or not isinstance(column, str) or not column:
            raise WinnowError(f"{where} parameter 'keep_top': must be {{column: NAME, fraction: F}}, got {spec!r}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise WinnowError(f"{where} parameter 'keep_top': fraction must be a number in (0, 1], got {fraction!r}")
        return column, float(fraction)

    # -- keep_where ---------------------------------------------------------------------------------
    def _where_reasons(self, table: pa.Table) -> np.ndarray:
        """Per row: None (selected) or why not, naming the first term the row did not pass."""
        reasons = np.full(table.num_rows, None, dtype=object)
        for term in self.terms:
            result = term.evaluate(table)
            undecided = np.equal(reasons, None)
            failed = undecided & ~_np(pc.fill_null(result, True))
            reasons[failed] = f"filter:{term.text}"
            unknown = undecided & _np(pc.is_null(result))
            for col in term.columns:
                hit = unknown & _np(pc.is_null(table[col]))
                reasons[hit] = f"filter_null:{col}"
                unknown &= ~hit
            reasons[unknown] = f"filter:{term.text}"  # unknown with no null column of its own: still unselected
        return reasons

    def _values(self, table: pa.Table) -> np.ndarray:
        """The keep_top column as float64, NaN where null."""
        col = table[self.top_column]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
            raise WinnowError(f"stage '{self.instance_name}' parameter 'keep_top': column '{self.top_column}' is "
                              f"{col.type}, not numeric")
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)

    # -- global stage -------------------------------------------------------------------------------
    def partial(self, table: pa.Table):
        if not self.top_column or table.num_rows == 0:
            return top.EMPTY
        values = self._values(table)
        counted = np.equal(self._where_reasons(table), None) & ~np.isnan(values)
        return top.grid_counts(values[counted])

    def combine(self, parts):
        return top.combine_counts(parts)

    def finalize(self, combined) -> dict:
        cut = top.threshold(combined, self.top_fraction)
        return {"keep_where": self.predicate.text if self.predicate else None, "column": self.top_column or None,
                "fraction": self.top_fraction or None, **cut}

    def apply(self, table: pa.Table, artifact: dict) -> pa.Table:
        reasons = self._where_reasons(table)
        if self.top_column:
            values = self._values(table)
            undecided = np.equal(reasons, None)
            nulls = undecided & np.isnan(values)
            reasons[nulls] = f"keep_top_null:{self.top_column}"
            cut = artifact.get("threshold_grid")
            if cut is not None:
                below = undecided & ~nulls & (top.to_grid(np.nan_to_num(values)) < cut)
                reasons[below] = f"below_keep_top:{self.top_column}"
        return self.reject(table, pa.array(reasons.tolist(), pa.string()))


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask.to_numpy(zero_copy_only=False).astype(bool)
