"""What an export is asked to do, validated with the rest of the pipeline before anything runs.

A pipeline's ``exports:`` list and ``winnow export`` build the same ``ExportSpec``, so a bad format or key
is the same one line from either. Nothing here reads a run: config.py imports it and must stay cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

from winnow.stages.errors import WinnowError

# format -> the keys it accepts beyond `format` and `output`, and whether it needs image bytes (OUT/kept/)
FORMATS = {
    "webdataset": ({"samples_per_shard", "shuffle", "seed"}, True),
    "parquet": ({"samples_per_shard", "shuffle", "seed"}, True),
    "datacomp-subset": (set(), False),
}
DEFAULT_SAMPLES_PER_SHARD = 10_000  # img2dataset's and DataComp's shard size


@dataclass(frozen=True)
class ExportSpec:
    format: str
    output: str | None = None  # relative: under the run directory (rundir.export_dir)
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    shuffle: bool = False
    seed: int | None = None  # None: the run's seed

    @property
    def needs_kept(self) -> bool:
        return FORMATS[self.format][1]

    def to_dict(self) -> dict:
        out = {"format": self.format, "output": self.output}
        if FORMATS[self.format][0]:
            out |= {"samples_per_shard": self.samples_per_shard, "shuffle": self.shuffle, "seed": self.seed}
        return out


def parse_export(entry, where: str) -> ExportSpec:
    """One ``exports:`` entry (or the CLI's flags as a dict); ``where`` names it in the error line."""
    if not isinstance(entry, dict) or "format" not in entry:
        raise WinnowError(f"{where} must be a mapping with a 'format' key ({', '.join(FORMATS)})")
    fmt = entry["format"]
    if fmt not in FORMATS:
        raise WinnowError(f"{where}: unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    allowed = {"format", "output"} | FORMATS[fmt][0]
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise WinnowError(f"{where}: unknown key '{unknown[0]}' for format {fmt}; valid: {', '.join(sorted(allowed))}")
    _typed(entry, "output", str, where)
    _typed(entry, "samples_per_shard", int, where)
    _typed(entry, "shuffle", bool, where)
    _typed(entry, "seed", int, where)
    per_shard = entry.get("samples_per_shard")
    if per_shard is not None and per_shard < 1:
        raise WinnowError(f"{where}: 'samples_per_shard' must be at least 1, got {per_shard}")
    return ExportSpec(format=fmt, output=entry.get("output") or None,
                      samples_per_shard=per_shard or DEFAULT_SAMPLES_PER_SHARD,
                      shuffle=bool(entry.get("shuffle", False)), seed=entry.get("seed"))


def parse_exports(value, source: str, write_kept: bool) -> list[ExportSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise WinnowError(f"{source}: 'exports' must be a list of mappings with a 'format' key")
    specs = [parse_export(entry, f"{source}: exports[{i}]") for i, entry in enumerate(value)]
    for i, spec in enumerate(specs):
        if spec.needs_kept and not write_kept:
            raise WinnowError(f"{source}: exports[{i}] ({spec.format}) needs the kept set with image bytes; "
                              f"set write_kept: true")
    return specs


def _typed(entry: dict, key: str, typ: type, where: str) -> None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, typ) or (typ is int and isinstance(value, bool))):
        raise WinnowError(f"{where}: '{key}' must be {typ.__name__}, got {type(value).__name__}")
