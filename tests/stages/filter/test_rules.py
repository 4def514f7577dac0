"""The `filter` stage on its own: predicate reasons per term, nulls, run-wide keep_top, config mistakes."""
import math

import numpy as np
import pyarrow as pa
import pytest

from winnow.pipeline.plan import Step
from winnow.stages import get_stage
from winnow.stages.errors import WinnowError
from winnow.stages.filter.rules import Filter


def _decide(stage: Filter, tables: list[pa.Table]) -> list[pa.Table]:
    """The global stage as a runner drives it: a partial per batch, merged, one artifact, apply per batch."""
    parts = [stage.partial(t) for t in tables]
    artifact = stage.finalize(stage.combine(parts))
    return [Step(stage, "apply", artifact=artifact).run(t)[0] for t in tables]


def test_registered_and_requires_the_columns_it_reads():
    stage = get_stage("filter")(keep_where="punsafe < 0.1 and pwatermark < 0.8",
                                keep_top={"column": "similarity", "fraction": 0.5})
    assert stage.requires == ("punsafe", "pwatermark", "similarity")
    assert get_stage("filter")(where="x is null").requires == ("x",)  # the synonym


def test_reasons_name_the_failed_term_and_the_null_column():
    table = pa.table({"uid": list("abcde"), "punsafe": [0.01, 0.5, None, 0.02, 0.0],
                      "pwatermark": [0.1, 0.1, 0.1, 0.95, float("nan")]})
    (out,) = _decide(Filter(keep_where="punsafe < 0.1 and pwatermark < 0.8"), [table])
    assert out["reject_reason"].to_pylist() == [None, "filter:punsafe < 0.1", "filter_null:punsafe",
                                                "filter:pwatermark < 0.8", "filter:pwatermark < 0.8"]  # NaN < x: false
    assert out["reject_stage"].to_pylist() == [None, "filter", "filter", "filter", "filter"]


def test_null_tests_select_a_previous_runs_survivors():
    table = pa.table({"uid": list("abc"), "input_reject_stage": [None, "basic_filter", None]})
    (out,) = _decide(Filter(keep_where="input_reject_stage is null"), [table])
    assert out["reject_reason"].to_pylist() == [None, "filter:input_reject_stage is null", None]


def test_keep_top_is_exact_over_all_batches():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.1, 0.4, 997).astype(np.float32)
    scores[::50] = np.nan  # stored as null below: not counted, rejected with their own reason
    col = pa.array(scores, pa.float32(), mask=np.isnan(scores))
    table = pa.table({"uid": [str(i) for i in range(997)], "clip_l14_similarity_score": col})
    batches = [table.slice(0, 100), table.slice(100, 13), table.slice(113)]
    outs = _decide(Filter(keep_top={"column": "clip_l14_similarity_score", "fraction": 0.3}), batches)
    reasons = [r for t in outs for r in t["reject_reason"].to_pylist()]
    valid = int((~np.isnan(scores)).sum())
    assert reasons.count(None) == math.ceil(0.3 * valid)
    assert reasons.count("keep_top_null:clip_l14_similarity_score") == 997 - valid
    kept = {i for i, r in enumerate(reasons) if r is None}
    top = np.argsort(-np.nan_to_num(scores, nan=-9), kind="stable")[:math.ceil(0.3 * valid)]
    assert kept == set(top.tolist())
    assert set(reasons) == {None, "keep_top_null:clip_l14_similarity_score",
                            "below_keep_top:clip_l14_similarity_score"}


def test_keep_top_counts_only_rows_passing_the_predicate():
    table = pa.table({"uid": [str(i) for i in range(10)], "punsafe": [0.0] * 5 + [0.9] * 5,
                      "score": [float(i) / 10 for i in range(10)]})
    (out,) = _decide(Filter(keep_where="punsafe < 0.5", keep_top={"column": "score", "fraction": 0.4}), [table])
    assert out["reject_reason"].to_pylist() == (["below_keep_top:score"] * 3 + [None] * 2
                                                + ["filter:punsafe < 0.5"] * 5)  # top 40% of the 5 safe rows


@pytest.mark.torture
@pytest.mark.parametrize("params, needle", [
    ({}, "set 'keep_where' and/or 'keep_top'"),
    ({"keep_where": "a < 1", "where": "b < 1"}, "not both"),
    ({"keep_where": "punsafe <"}, "parameter 'keep_where'"),
    ({"keep_where": "reject_stage is null"}, "input_reject_stage"),
    ({"keep_top": {"column": "s"}}, "fraction must be a number in (0, 1]"),
    ({"keep_top": {"column": "s", "fraction": 1.5}}, "fraction must be a number in (0, 1]"),
    ({"keep_top": {"col": "s", "fraction": 0.3}}, "must be {column: NAME, fraction: F}"),
    ({"keep_top": 0.3}, "parameter 'keep_top' must be dict"),
])
def test_config_mistakes_are_one_line_errors(params, needle):
    with pytest.raises(WinnowError) as err:
        Filter(**params)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.torture
def test_keep_top_on_a_text_column_is_a_clear_error():
    stage = Filter(keep_top={"column": "caption", "fraction": 0.5})
    with pytest.raises(WinnowError, match="column 'caption' is string, not numeric"):
        stage.partial(pa.table({"uid": ["a"], "caption": ["x"]}))
