"""The webdataset export read back the way open_clip trains on it, and rewritten byte for byte."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from tests.pipeline.export.conftest import kept_rows, run_pipeline
from winnow.pipeline.export.main import run_export
from winnow.pipeline.export.source import sample_key
from winnow.pipeline.export.spec import parse_export


def export(run, **entry):
    return run_export(str(run), parse_export({"format": "webdataset", **entry}, "test"))


def shards_of(folder) -> str:
    """open_clip's --train-data form: a brace pattern over the shard names."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
    return f"{folder}/{{{names[0][:-4]}..{names[-1][:-4]}}}.tar"


def digests(folder) -> dict:
    names = sorted(os.listdir(folder))
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest() for n in names}


def test_open_clip_reads_every_kept_row_with_its_caption_and_bytes(kept_run):
    result = export(kept_run, output="exports/wds", samples_per_shard=64)
    folder = kept_run / "exports" / "wds"
    rows = kept_rows(kept_run)
    assert result["samples"] == len(rows) == json.loads((kept_run / "stats.json").read_text())["rows_kept"]
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sum(sizes.values()) == len(rows) and len(sizes) == -(-len(rows) // 64)
    assert sorted(sizes) == sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
    # decoded, as open_clip's pipeline does (decode("pilrgb"), image and text keys)
    decoded = list(wds.WebDataset(shards_of(folder), shardshuffle=False).decode("pilrgb")
                   .to_tuple("__key__", "jpg;png;webp", "txt", "json"))
    assert len(decoded) == len(rows)
    by_key = {sample_key(uid): row for uid, row in rows.items()}
    for key, image, text, meta in decoded:
        row = by_key[key]
        assert meta["uid"] == row["uid"] and text == row["caption"]
        assert image.mode == "RGB" and image.size == (row["width"], row["height"])
        assert meta["width"] == row["width"] and meta["lang_score"] == pytest.approx(row["lang_score"])
    # raw members: the original bytes, extension from the format
    raw = list(wds.WebDataset(shards_of(folder), shardshuffle=False).to_tuple("__key__", "jpg;png;webp"))
    assert {k: b for k, b in raw} == {sample_key(u): r["image"] for u, r in rows.items()}
    formats = {k: Image.open(io.BytesIO(b)).format for k, b in raw}
    members = wds.WebDataset(shards_of(folder), shardshuffle=False)
    for sample in members:
        ext = next(e for e in ("jpg", "png", "webp") if e in sample)
        assert {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext] == formats[sample["__key__"]]
    assert "PNG" in formats.values() and "JPEG" in formats.values()  # the pool has both


def test_rerun_is_byte_identical_and_headers_are_fixed(kept_run):
    import tarfile

    export(kept_run, output="exports/a", samples_per_shard=100)
    first = digests(kept_run / "exports" / "a")
    export(kept_run, output="exports/a", samples_per_shard=100)
    assert digests(kept_run / "exports" / "a") == first
    with tarfile.open(kept_run / "exports" / "a" / "00000000.tar") as tar:
        infos = tar.getmembers()
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}
    assert [i.name.split(".", 1)[1] for i in infos[:3]][1:] == ["txt", "json"]  # image, txt, json: adjacent


def test_shuffle_is_deterministic_keyed_on_seed_and_differs_from_run_order(kept_run):
    def order(name, **kw):
        export(kept_run, output=f"exports/{name}", samples_per_shard=50, **kw)
        folder = kept_run / "exports" / name
        return [k for (k,) in wds.WebDataset(shards_of(folder), shardshuffle=False).to_tuple("__key__")], folder

    plain, _ = order("plain")
    one, f1 = order("s1", shuffle=True, seed=3)
    again, f2 = order("s2", shuffle=True, seed=3)
    other, _ = order("s3", shuffle=True, seed=4)
    assert one == again and digests(f1) == digests(f2)
    assert sorted(one) == sorted(plain) and one != plain and other != one


@pytest.mark.torture
def test_killed_export_leftovers_and_a_larger_earlier_export_are_replaced(kept_run):
    folder = kept_run / "exports" / "k"
    export(kept_run, output="exports/k", samples_per_shard=20)  # many shards
    (folder / "00000001.tar.tmp-99999").write_bytes(b"half a tar")  # what a kill mid-write leaves
    export(kept_run, output="exports/k", samples_per_shard=1000)
    assert sorted(os.listdir(folder)) == ["00000000.tar", "sizes.json"]
    assert json.loads((folder / "sizes.json").read_text()) == {"00000000.tar": len(kept_rows(kept_run))}


@pytest.mark.torture
def test_uids_with_dots_slashes_and_spaces_get_safe_distinct_keys(sample_dir, tmp_path):
    table = pq.read_table(sample_dir / "shard-00000.parquet").slice(0, 30)
    uids = [f"img.{i}/a b.jpg" if i % 2 else f"plain-{i}" if i % 3 else f"long-{i}-" + "x" * 120 for i in range(30)]
    pq.write_table(table.set_column(0, "uid", pa.array(uids)), tmp_path / "pool.parquet")
    run_pipeline(tmp_path / "pool.parquet", tmp_path / "run")
    folder = tmp_path / "run" / "exports" / "webdataset"
    export(tmp_path / "run")
    samples = list(wds.WebDataset(str(folder / "00000000.tar"), shardshuffle=False).to_tuple("__key__", "json"))
    keys = [k for k, _ in samples]
    assert len(set(keys)) == len(keys) == len(kept_rows(tmp_path / "run"))
    assert all("." not in k and "/" not in k and len(k) <= 90 for k in keys)
    assert any(k.startswith("plain-") for k in keys) and any(k.startswith("~") for k in keys)
    assert {json.loads(m)["uid"] for _, m in samples} == set(kept_rows(tmp_path / "run"))


def test_caption_mix_output_is_the_training_caption_with_its_provenance(sample_dir, tmp_path):
    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.run import execute

    table = pq.read_table(sample_dir / "shard-00002.parquet")
    synth = [f"synthetic {c}" if i % 2 else None for i, c in enumerate(table["caption"].to_pylist())]
    pq.write_table(table.append_column("caption_synthetic", pa.array(synth, pa.string())), tmp_path / "pool.parquet")
    cfg = parse_pipeline({"input": str(tmp_path / "pool.parquet"), "stages": [
        {"stage": "basic_filter"}, {"stage": "caption_mix", "synthetic_ratio": 1.0}]})
    execute(cfg, str(tmp_path / "run"), runner="local", progress=False)
    export(tmp_path / "run")
    rows = kept_rows(tmp_path / "run")
    samples = list(wds.WebDataset(str(tmp_path / "run" / "exports" / "webdataset" / "00000000.tar"),
                                  shardshuffle=False).decode().to_tuple("txt", "json"))
    assert len(samples) == len(rows)
    sources = set()
    for text, meta in samples:
        row = rows[meta["uid"]]
        assert text == row["caption_train"] and meta["caption_source"] == row["caption_source"]
        assert meta["caption"] == row["caption"] and meta["caption_synthetic"] == row["caption_synthetic"]
        sources.add(meta["caption_source"])
    assert sources == {"alt_text", "synthetic"}  # rows without a synthetic caption fall back to their alt-text


def test_hugging_face_datasets_loads_the_webdataset_export(sample_dir, tmp_path):
    """HF's webdataset builder wants every sample to have the same member names, so this pool is JPEG only
    (a pool of mixed formats goes to HF through the parquet export; docs/export.md)."""
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets not installed (pinned in requirements)")
    table = pq.read_table(sample_dir / "shard-00000.parquet")
    jpeg = [bool(b) and b[:3] == b"\xff\xd8\xff" for b in table["image"].to_pylist()]
    (tmp_path / "pool").mkdir()
    pq.write_table(table.filter(pa.array(jpeg)), tmp_path / "pool" / "jpegs.parquet")
    run_pipeline(tmp_path / "pool", tmp_path / "run")
    export(tmp_path / "run", output="exports/wds", samples_per_shard=16)
    rows = {sample_key(uid): row for uid, row in kept_rows(tmp_path / "run").items()}
    ds = datasets.load_dataset("webdataset", data_files={"train": str(tmp_path / "run" / "exports" / "wds" / "*.tar")},
                               split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == len(rows) > 10
    for sample in ds:
        row = rows[sample["__key__"]]
        assert sample["txt"] == row["caption"] and sample["json"]["uid"] == row["uid"]
        assert sample["jpg"].size == (row["width"], row["height"])


@pytest.mark.torture
def test_a_kept_part_the_run_lists_but_cannot_find_is_one_line_not_a_smaller_export(kept_run, tmp_path):
    """Exports take the run's parts from its pipeline.json, asking for each by name (a store's listing may
    lag its writes): a listed part that is gone fails the export instead of leaving its rows out."""
    import shutil

    from winnow.stages.errors import WinnowError

    run = tmp_path / "run"
    shutil.copytree(kept_run, run)
    victim = sorted((run / "kept").iterdir())[1]
    victim.unlink()
    with pytest.raises(WinnowError, match=f"{victim.name} is missing, though the run's pipeline.json lists"):
        export(run, output="exports/w")
    assert not (run / "exports" / "w" / "sizes.json").exists()
