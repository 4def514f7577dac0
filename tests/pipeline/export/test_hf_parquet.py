"""The Hugging Face Parquet export: the schema datasets decodes images from, the file names, the card."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.pipeline.export.conftest import kept_rows
from winnow.pipeline.export.main import run_export
from winnow.pipeline.export.source import sample_key
from winnow.pipeline.export.spec import parse_export


@pytest.fixture(scope="module")
def hf_export(kept_run):
    run_export(str(kept_run), parse_export({"format": "parquet", "output": "exports/hf", "samples_per_shard": 150},
                                           "test"))
    return kept_run / "exports" / "hf"


def test_files_schema_and_metadata(hf_export, kept_run):
    rows = kept_rows(kept_run)
    files = sorted(p.name for p in (hf_export / "data").iterdir())
    n = -(-len(rows) // 150)
    assert files == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    table = pa.concat_tables(pq.read_table(hf_export / "data" / f) for f in files)
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and features["text"] == {"dtype": "string", "_type": "Value"}
    assert features["width"] == {"dtype": "int32", "_type": "Value"}
    assert set(features) == set(table.column_names)
    got = {r["uid"]: r for r in table.to_pylist()}
    assert set(got) == set(rows)
    for uid, row in got.items():
        assert row["image"]["bytes"] == rows[uid]["image"] and row["text"] == rows[uid]["caption"]
        assert row["image"]["path"].startswith(sample_key(uid) + ".")


def test_dataset_card_has_counts_funnel_stages_models_and_a_license_to_fill(hf_export, kept_run):
    text = (hf_export / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    stats = json.loads((kept_run / "stats.json").read_text())
    assert "license" in front and "license: fill in" in text
    assert front["dataset_info"]["splits"][0]["num_examples"] == stats["rows_kept"]
    assert f"| basic_filter | {stats['rows_in']} | {stats['rows_kept']} |" in text
    assert "image_too_small: " in text and "`basic_filter` (basic_filter)" in text and "lid_model" in text


def test_datasets_loads_it_with_images_decoded(hf_export, kept_run):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets not installed (pinned in requirements)")
    rows = kept_rows(kept_run)
    for source in (["parquet"], [str(hf_export)]):  # the files, and the repo folder with its card
        kwargs = {"data_files": str(hf_export / "data" / "*.parquet")} if source == ["parquet"] else {}
        ds = datasets.load_dataset(*source, split="train", cache_dir=str(hf_export.parent / "hf-cache"), **kwargs)
        assert len(ds) == len(rows) and isinstance(ds.features["image"], datasets.Image)
        first = ds[0]
        assert isinstance(first["image"], Image.Image)
        expected = Image.open(io.BytesIO(rows[first["uid"]]["image"]))
        assert first["image"].size == expected.size and first["text"] == rows[first["uid"]]["caption"]
