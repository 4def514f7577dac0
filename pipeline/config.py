"""Pipelines are data: a YAML file validated up front, so a typo fails before anything runs.

```yaml
input: data/shards/            # file, directory, glob or brace pattern; local or s3://, gs://, hf:// (reading)
columns: {caption: alt_text}   # optional canonical -> source column mapping
output: runs/demo
seed: 0
write_kept: true
stages:
  - stage: basic_filter        # stage type (see `winnow stages`)
    name: basic                # optional instance name (defaults to the type)
    min_words: 3               # parameters, flat
exports:                       # optional: training sets written after the run's outputs (pipeline/export/)
  - {format: webdataset, output: exports/wds, samples_per_shard: 1000}
storage:                       # optional: an S3-compatible store (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
  endpoint_url: http://127.0.0.1:9000
```
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from winnow.pipeline.export.spec import ExportSpec, parse_exports
from winnow.stages.errors import WinnowError

TOP_LEVEL_KEYS = {"input", "columns", "output", "seed", "write_kept", "stages", "runner", "exports", "storage"}
RUNNER_KEYS = {"address", "progress", "max_rows_per_file"}
STORAGE_KEYS = {"endpoint_url", "region"}  # stages/storage.configure; credentials come from the AWS chain


@dataclass
class StageSpec:
    type: str
    name: str
    params: dict[str, Any]


@dataclass
class PipelineConfig:
    input: str
    output: str | None
    stages: list[StageSpec]
    columns: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    write_kept: bool = True
    runner: dict[str, Any] = field(default_factory=dict)
    exports: list[ExportSpec] = field(default_factory=list)
    storage: dict[str, str] = field(default_factory=dict)
    source: str = "<pipeline>"

    def build_stages(self):
        """Instantiate (and so validate) every stage; raises WinnowError on the first problem."""
        from winnow.stages import get_stage

        return [get_stage(s.type)(instance_name=s.name, seed=self.seed, **s.params) for s in self.stages]

    def to_dict(self) -> dict:
        return {
            "input": self.input, "output": self.output, "columns": self.columns, "seed": self.seed,
            "write_kept": self.write_kept, "runner": self.runner,
            "stages": [{"stage": s.type, "name": s.name, **s.params} for s in self.stages],
            "exports": [e.to_dict() for e in self.exports],
            **({"storage": self.storage} if self.storage else {}),
        }


def load_pipeline(path: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline YAML; ``overrides`` (CLI flags) replace top-level keys; ``storage`` ones merge in."""
    if not os.path.isfile(path):
        raise WinnowError(f"pipeline file {path}: not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise WinnowError(f"pipeline file {path}{where}: not valid YAML") from None
    data = dict(data or {}) if isinstance(data, dict) or data is None else None
    if data is None:
        raise WinnowError(f"pipeline file {path}: must be a mapping with 'input' and 'stages'")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "storage" in overrides:
        overrides["storage"] = {**(data.get("storage") or {}), **overrides["storage"]}
    data.update(overrides)
    return parse_pipeline(data, path)


def parse_pipeline(data: dict, source: str = "<pipeline>") -> PipelineConfig:
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise WinnowError(f"{source}: unknown key '{unknown[0]}'; valid: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    if not data.get("input"):
        raise WinnowError(f"{source}: missing 'input' (a file, directory or glob of shards)")
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise WinnowError(f"{source}: 'stages' must be a non-empty list")
    _expect(data, "seed", int, source)
    _expect(data, "write_kept", bool, source)
    _expect(data, "columns", dict, source)
    _expect(data, "runner", dict, source)
    runner = data.get("runner") or {}
    bad = sorted(set(runner) - RUNNER_KEYS)
    if bad:
        raise WinnowError(f"{source}: unknown key 'runner.{bad[0]}'; valid: {', '.join(sorted(RUNNER_KEYS))}")
    _expect(data, "storage", dict, source)
    store = data.get("storage") or {}
    bad = sorted(set(store) - STORAGE_KEYS)
    if bad:
        raise WinnowError(f"{source}: unknown key 'storage.{bad[0]}'; valid: {', '.join(sorted(STORAGE_KEYS))}")
    if store.get("endpoint_url") and not str(store["endpoint_url"]).startswith(("http://", "https://")):
        raise WinnowError(f"{source}: storage.endpoint_url must be an http:// or https:// URL, "
                          f"got '{store['endpoint_url']}'")
    specs, names = [], set()
    for i, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise WinnowError(f"{source}: stages[{i}] must be a mapping with a 'stage' key")
        params = {k: v for k, v in entry.items() if k not in ("stage", "name")}
        if isinstance(params.get("params"), dict) and len(params) == 1:
            params = params["params"]
        name = entry.get("name") or entry["stage"]
        if name in names:
            raise WinnowError(f"{source}: stages[{i}]: duplicate stage name '{name}'; give it a distinct 'name'")
        names.add(name)
        specs.append(StageSpec(str(entry["stage"]), str(name), params))
    write_kept = data.get("write_kept", True)
    exports = parse_exports(data.get("exports"), source, write_kept)
    cfg = PipelineConfig(
        input=str(data["input"]), output=data.get("output"), stages=specs, columns=data.get("columns") or {},
        seed=data.get("seed", 0), write_kept=write_kept, runner=runner, exports=exports,
        storage={k: str(v) for k, v in store.items() if v}, source=source,
    )
    try:
        cfg.build_stages()
    except WinnowError as exc:
        raise WinnowError(f"{source}: {exc}") from None
    return cfg


def _expect(data: dict, key: str, typ: type, source: str) -> None:
    if key in data and data[key] is not None and (not isinstance(data[key], typ) or
                                                   (typ is int and isinstance(data[key], bool))):
        raise WinnowError(f"{source}: '{key}' must be {typ.__name__}, got {type(data[key]).__name__}")


def parse_set(items: list[str], params: tuple = ()) -> dict[str, Any]:
    """``--set key=value`` pairs, read against the stage's ``Param``s.

    A ``str`` parameter takes the text after the first ``=`` exactly as given: a prompt template
    (``{caption}``) or a value with a colon (``Describe: the image``) is YAML for a mapping, not text.
    Every other value is a YAML scalar (``3``, ``0.5``, ``true``, ``[en, fr]``).
    """
    text_keys = {p.name for p in params if p.type is str}
    out = {}
    for item in items:
        if "=" not in item:
            raise WinnowError(f"--set {item}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in text_keys or value == "":
            out[key] = value
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def parse_columns(spec: str | None) -> dict[str, str]:
    """``--columns url=URL,caption=TEXT``."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        if "=" not in part:
            raise WinnowError(f"--columns {spec}: expected canonical=source pairs, e.g. url=URL,caption=TEXT")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out
