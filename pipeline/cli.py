"""The `winnow` command line. User mistakes print one line and exit 2; no traceback."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys

from winnow.stages.errors import WinnowError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def cmd_stages(args) -> int:
    from winnow.stages import registry
    from winnow.stages.base import GlobalStage, GroupStage

    for name, cls in registry().items():
        kind = "global" if issubclass(cls, GlobalStage) else "group" if issubclass(cls, GroupStage) else "map"
        res = cls.resources
        gpus = "auto" if res.gpus is None else f"{res.gpus:g}"
        print(f"{name}  [{kind}, cpus={res.cpus:g}, gpus={gpus}, batch_size={cls.batch_size}]")
        print(f"    {cls.help}")
        for p in cls.params:
            choices = f" one of {list(p.choices)}" if p.choices else ""
            bounds = f", {p.range_text()}" if p.range_text() else ""
            print(f"    --set {p.name}=<{p.type.__name__}>  default {json.dumps(p.default)}{bounds}{choices}: {p.help}")
        print()
    return 0


def cmd_stage(args) -> int:
    """One stage on one input in-process: a pipeline of one stage through the local runner."""
    import yaml

    from winnow.pipeline.config import parse_columns, parse_pipeline, parse_set
    from winnow.pipeline.run import execute
    from winnow.stages import get_stage

    params = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as exc:
            raise WinnowError(f"--config {args.config}: {exc.strerror}") from None
        if not isinstance(loaded, dict):
            raise WinnowError(f"--config {args.config}: must be a mapping of parameter: value")
        params.update(loaded)
    try:
        declared = get_stage(args.name).params
    except WinnowError:
        declared = ()  # parse_pipeline below names the unknown stage, with its source
    params.update(parse_set(args.set or [], declared))
    cfg = parse_pipeline({"input": args.input, "output": args.output, "columns": parse_columns(args.columns),
                          "seed": args.seed, "write_kept": args.kept,
                          "stages": [{"stage": args.name, **params}]}, source=f"stage {args.name}")
    stats = execute(cfg, args.output, runner="local", progress=not args.quiet, fresh=args.fresh, resume=args.resume)
    _summary(stats, args.output)
    return 0


def cmd_run(args) -> int:
    from winnow.pipeline.config import load_pipeline
    from winnow.pipeline.run import execute

    cfg = load_pipeline(args.pipeline, {"output": args.output,
                                        "storage": {"endpoint_url": args.endpoint_url} if args.endpoint_url else None})
    if not cfg.output:
        raise WinnowError(f"{args.pipeline}: no 'output' in the file and no --output given")
    stats = execute(cfg, cfg.output, runner=args.runner, address=args.address, progress=not args.quiet,
                    fresh=args.fresh, resume=args.resume)
    _summary(stats, cfg.output)
    _maybe_report(cfg.output)
    return 0


def cmd_sample(args) -> int:
    from winnow.pipeline.tools.sample import write_sample

    fractions = {"watermark": args.watermark, "blurred": args.blurred}
    for flag, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise WinnowError(f"--{flag} {value}: a fraction of rows, between 0 and 1")
    info = write_sample(args.output, args.rows, shards=args.shards, seed=args.seed, mismatch=args.mismatch,
                        fractions=fractions)
    print(f"wrote {info['rows']} rows in {len(info['shards'])} shard(s) to {args.output}")
    print("planted: " + ", ".join(f"{k}={v}" for k, v in info["planted"].items()))
    print(f"ground truth: {os.path.join(args.output, 'ground_truth', 'ground_truth.parquet')}")
    return 0


def _delegate(module: str, func: str = "main"):
    """Commands whose code lives in its own module, imported only when used."""

    def run(args) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise WinnowError(f"command not available in this build ({module} missing)") from None
            raise
        return getattr(mod, func)(args) or 0

    return run


def _summary(stats: dict, out: str) -> None:
    print(f"{stats['rows_in']} rows in, runner {stats['runner']}, {stats['seconds']:.1f}s")
    for name, st in stats["stages"].items():
        rej = ", ".join(f"{k}={v}" for k, v in st["rejected"].items()) or "none"
        print(f"  {name}: in {st['rows_in']}, kept {st['kept']}, rejected: {rej}")
    print(f"outputs: {out}/manifest, {out}/stats.json, {out}/pipeline.json")


def _maybe_report(out: str) -> None:
    """The run's outputs are complete before this; a report problem is a warning, not a failed run."""
    from winnow.pipeline.report.build import write_report

    try:
        print(f"report: {write_report(out)}")
    except Exception as exc:  # noqa: BLE001 - the report must never turn a finished run into a failure
        print(f"winnow: warning: report not written ({exc}); retry with `winnow report {out}`", file=sys.stderr)


def _add_resume_flags(s) -> None:
    s.add_argument("--fresh", action="store_true", help="start over: remove this output's earlier run files first")
    s.add_argument("--resume", choices=["auto", "force"], default="auto",
                   help="auto: resume only a run of the same pipeline (default); force: resume one of another "
                        "pipeline too, reusing only the pieces whose fingerprints still match")


class _Parser(argparse.ArgumentParser):
    """argparse with winnow's one-line errors: a bad flag or value is a user mistake like any other.

    Subcommand parsers are made of the same class (``add_subparsers`` uses the parent's type).
    """

    def error(self, message: str):
        print(f"winnow: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _add_storage_flag(s) -> None:
    s.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// paths (default: $AWS_ENDPOINT_URL_S3, "
                                          "then $AWS_ENDPOINT_URL; credentials from the AWS chain)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="winnow",
                                description="Curate image-text datasets: filter, dedup, balance, recaption.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stages", help="list every stage with its parameters")
    s.set_defaults(func=cmd_stages)

    s = sub.add_parser("stage", help="run one stage on one input in-process (no Ray)")
    s.add_argument("name")
    s.add_argument("--input", required=True, help="Parquet/CSV/TSV/JSONL file, directory or glob")
    s.add_argument("--output", required=True, help="output directory")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="stage parameter (repeatable)")
    s.add_argument("--config", help="YAML file of stage parameters")
    s.add_argument("--columns", help="column mapping, e.g. url=URL,caption=TEXT")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--kept", action="store_true", help="also write OUT/kept/ (kept rows with image bytes)")
    _add_storage_flag(s)
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_resume_flags(s)
    s.set_defaults(func=cmd_stage)

    s = sub.add_parser("run", help="run a pipeline YAML (embedded local Ray by default)")
    s.add_argument("pipeline")
    s.add_argument("--output", help="output directory (overrides the file's 'output')")
    s.add_argument("--address", help="Ray cluster address (default: start an embedded local Ray)")
    s.add_argument("--runner", choices=["ray", "local"], default="ray")
    _add_storage_flag(s)
    s.add_argument("--quiet", action="store_true")
    _add_resume_flags(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("submit", help="submit a pipeline to a Ray cluster through the Jobs API")
    s.add_argument("pipeline")
    s.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    s.add_argument("--output", help="output directory on the cluster")
    s.add_argument("--wait", action="store_true", help="follow the logs and exit with the job's status")
    _add_storage_flag(s)
    s.set_defaults(func=_delegate("winnow.pipeline.submit"))

    s = sub.add_parser("sample", help="write synthetic image-text shards with planted problems")
    s.add_argument("--output", required=True)
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mismatch", type=float, default=0.0, help="fraction of clean rows given another row's caption")
    s.add_argument("--watermark", type=float, default=0.0,
                   help="fraction of rows given a semi-transparent text or logo overlay (ground truth: watermark)")
    s.add_argument("--blurred", type=float, default=0.0, help="fraction of rows blurred (ground truth: blurred)")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("train-dfn", help="train or fine-tune a filter CLIP on a high-quality set")
    s.add_argument("--data", required=True, help="Parquet with image bytes and captions")
    s.add_argument("--model", required=True, help="model spec, e.g. open_clip:ViT-B-32 or a local checkpoint")
    s.add_argument("--output", required=True, help="checkpoint path to write")
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_delegate("winnow.pipeline.tools.train_dfn"))

    s = sub.add_parser("train-head", help="train an embedding head (linear/MLP) on cached embeddings and uid labels")
    s.add_argument("--embeddings", required=True, help="a clip_score embeddings_dir (side dataset keyed by uid)")
    s.add_argument("--labels", required=True, help="Parquet/CSV of uid,label (0/1) or uid,score")
    s.add_argument("--output", required=True, help="head file to write (load it as head:winnow@FILE)")
    s.add_argument("--kind", choices=["linear", "mlp"], default="linear")
    s.add_argument("--steps", type=int, default=500)
    s.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (seeded split)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_delegate("winnow.pipeline.tools.train_head"))

    s = sub.add_parser("export", help="write a finished run's kept set as a training set")
    s.add_argument("run_dir")
    s.add_argument("--format", required=True, help="webdataset | datacomp-subset | parquet")
    s.add_argument("--output", help="folder; a relative one lives under RUN_DIR (default RUN_DIR/exports/FORMAT)")
    s.add_argument("--samples-per-shard", type=int, help="samples per tar / Parquet file (default 10000)")
    s.add_argument("--shuffle", action="store_true", help="order samples by a hash of (seed, uid)")
    _add_storage_flag(s)
    s.add_argument("--seed", type=int, help="shuffle seed (default: the run's seed)")
    s.set_defaults(func=_delegate("winnow.pipeline.export.main"))

    s = sub.add_parser("report", help="write RUN_DIR/report.html")
    s.add_argument("run_dir")
    s.add_argument("--output", help="where to write the page (default RUN_DIR/report.html)")
    s.add_argument("--per-grid", type=int, default=12, help="images per rejection reason (kept grid: twice that)")
    _add_storage_flag(s)
    s.add_argument("--sample-shards", type=int, default=4, help="shards the image samples are drawn from")
    s.add_argument("--thumb-px", type=int, default=128, help="longest side of the embedded thumbnails")
    s.add_argument("--seed", type=int, default=0, help="seed of the image sample")
    s.set_defaults(func=_delegate("winnow.pipeline.report.build"))
    return p


def _interruptible() -> None:
    """Make SIGINT raise KeyboardInterrupt even when it was inherited as ignored.

    A shell without job control (a script, a CI step, a tool harness running ``winnow run ... &``)
    starts background commands with SIGINT ignored, and Python then installs no handler: a Ctrl-C or
    ``kill -INT`` was silently dropped and the run went on to exit 0. Every run resumes from its
    checkpoints, so stopping on SIGINT is always safe. (Processes the run starts, such as Ray's, then
    get SIGINT's default back on exec instead of inheriting the ignore.)
    """
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        pass


def main(argv: list[str] | None = None) -> int:
    _interruptible()
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "endpoint_url", None):
            from winnow.stages import storage

            storage.configure(endpoint_url=args.endpoint_url)
        return args.func(args)
    except WinnowError as exc:
        print(f"winnow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("winnow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
