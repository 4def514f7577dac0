"""caption_mix: alt-text / synthetic mixture at a ratio, deterministic per (seed, uid)."""
import pyarrow as pa
import pytest

from winnow.pipeline.plan import Step
from winnow.stages.caption.mix import CaptionMix
from winnow.stages.errors import WinnowError

N = 4000


def _table(n=N, synthetic=None, alt=None):
    uids = [f"u{i:05d}" for i in range(n)]
    alt = alt if alt is not None else [f"alt {i}" for i in range(n)]
    synthetic = synthetic if synthetic is not None else [f"synthetic {i}" for i in range(n)]
    typ = pa.list_(pa.string()) if any(isinstance(s, list) for s in synthetic) else pa.string()
    return pa.table({"uid": uids, "caption": pa.array(alt, pa.string()), "caption_synthetic": pa.array(synthetic, typ)})


def _run(table, **params):
    out, stats = Step(CaptionMix(**params), "map").run(table)
    return out, stats


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.8, 1.0])
def test_ratio_is_honoured(ratio):
    out, _ = _run(_table(), synthetic_ratio=ratio)
    sources = out["caption_source"].to_pylist()
    share = sources.count("synthetic") / N
    assert abs(share - ratio) < 0.03
    for i, (src, cap) in enumerate(zip(sources, out["caption_train"].to_pylist())):
        assert cap == (f"synthetic {i}" if src == "synthetic" else f"alt {i}")


def test_choice_is_a_function_of_seed_and_uid_not_of_batching():
    table = _table()
    out, _ = _run(table, synthetic_ratio=0.5, seed=4)
    by_uid = dict(zip(out["uid"].to_pylist(), out["caption_source"].to_pylist()))
    shuffled = table.take(list(range(N))[::-7] + [i for i in range(N) if (N - 1 - i) % 7])
    parts = [_run(shuffled.slice(s, 500), synthetic_ratio=0.5, seed=4)[0] for s in range(0, N, 500)]
    again = {u: s for p in parts for u, s in zip(p["uid"].to_pylist(), p["caption_source"].to_pylist())}
    assert again == by_uid
    other, _ = _run(table, synthetic_ratio=0.5, seed=5)
    flips = sum(a != b for a, b in zip(out["caption_source"].to_pylist(), other["caption_source"].to_pylist()))
    assert 0.4 * N < flips < 0.6 * N  # a new seed redraws independently


def test_missing_side_falls_back_and_rows_with_nothing_are_kept_or_rejected():
    synthetic = ["s0", None, "  ", "s3", None]
    alt = ["a0", "a1", "a2", None, ""]
    out, _ = _run(_table(5, synthetic, alt), synthetic_ratio=1.0)
    assert out["caption_train"].to_pylist() == ["s0", "a1", "a2", "s3", None]
    assert out["caption_source"].to_pylist() == ["synthetic", "alt_text", "alt_text", "synthetic", None]
    out, _ = _run(_table(5, synthetic, alt), synthetic_ratio=0.0)
    assert out["caption_train"].to_pylist() == ["a0", "a1", "a2", "s3", None]
    assert out["reject_reason"].null_count == 5
    out, stats = _run(_table(5, synthetic, alt), synthetic_ratio=0.0, reject_empty=True)
    assert out["reject_reason"].to_pylist() == [None] * 4 + ["no_caption"]
    assert out["reject_stage"].to_pylist()[4] == "caption_mix"


def test_list_of_synthetic_captions_picks_one_evenly():
    synthetic = [[f"s{i}-{k}" for k in range(3)] for i in range(N)]
    out, _ = _run(_table(synthetic=synthetic), synthetic_ratio=1.0)
    picks = [int(c.rsplit("-", 1)[1]) for c in out["caption_train"].to_pylist()]
    assert all(abs(picks.count(k) / N - 1 / 3) < 0.03 for k in range(3))
    partly_empty = _table(2, synthetic=[[None, "only"], [None, " "]], alt=["a", "b"])
    out, _ = _run(partly_empty, synthetic_ratio=1.0)
    assert out["caption_train"].to_pylist() == ["only", "b"]


def test_bad_ratio_and_missing_column():
    with pytest.raises(WinnowError, match="synthetic_ratio"):
        CaptionMix(synthetic_ratio=1.5)
    stage = CaptionMix(synthetic_column="recap")
    with pytest.raises(WinnowError, match="needs column 'recap'"):
        stage.check_columns(_table(2).schema, "input x")
