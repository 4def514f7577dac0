"""The dataset card (README.md) of a Hugging Face export: what the set is and how winnow made it.

YAML front matter as the Hub reads it (license, configs -> data files, features, split size), then the
counts, the funnel from stats.json and the stages and models from pipeline.json. ``license`` is left for
the publisher to fill: winnow cannot know the rights to the images and captions.
"""
from __future__ import annotations

import json

import pyarrow as pa
import yaml

from winnow.pipeline import rundir
from winnow.pipeline.export.source import read_record
from winnow.stages import storage


def dataset_card(run_dir: str, kept, schema: pa.Schema, files: int, num_bytes: int) -> str:
    stats = read_record(run_dir, rundir.stats_path(run_dir)) if storage.exists(rundir.stats_path(run_dir)) else {}
    record = kept.record
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    front = {
        "license": "unknown",
        "task_categories": ["image-to-text", "text-to-image", "zero-shot-image-classification"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {"features": [_feature(name, f) for name, f in features.items()],
                         "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": kept.num_rows}]},
    }
    lines = ["---", "# license: fill in the license of the images and captions (an SPDX id, or 'other')",
             yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             "# Image-text training set curated with winnow", "",
             f"{kept.num_rows} image-text pairs in {files} Parquet file(s) under `data/`, kept from "
             f"{stats.get('rows_in', '?')} input rows. `image` holds the original encoded bytes, `text` the training "
             f"caption (column `{kept.text_column}` of the run); the other columns are the run's per-sample scores "
             f"and caption provenance.", "", "## Funnel", "", "| stage | rows in | kept | rejected (reason: rows) |",
             "|---|---:|---:|---|"]
    for name, st in stats.get("stages", {}).items():
        reasons = ", ".join(f"{k}: {v}" for k, v in st.get("rejected", {}).items()) or "none"
        lines.append(f"| {name} | {st.get('rows_in')} | {st.get('kept')} | {reasons} |")
    lines += ["", "## Stages", ""]
    for s in record.get("config", {}).get("stages", []):
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in s.items() if k not in ("stage", "name"))
        lines.append(f"- `{s.get('name')}` ({s.get('stage')}){': ' + params if params else ''}")
    models = record.get("models") or {}
    lines += ["", "## Models", ""] + ([f"- `{name}`: {json.dumps(m)}" for name, m in models.items()] or ["none"])
    versions = record.get("versions") or {}
    lines += ["", "## Provenance", "", f"winnow run fingerprint `{record.get('fingerprint')}`, runner "
              f"`{record.get('runner')}`; " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _feature(name: str, feature: dict) -> dict:
    if feature.get("_type") == "Image":
        return {"name": name, "dtype": "image"}
    return {"name": name, "dtype": feature.get("dtype", "string")}
