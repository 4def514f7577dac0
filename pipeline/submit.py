"""`winnow submit PIPELINE.yaml --address http://HEAD:8265 [--output DIR] [--wait]`: a run as a Ray job.

The pipeline is validated here first (a typo fails on your machine, not on the cluster). The job
ships the ``winnow`` package you are running (its three folders, uploaded by the Jobs API as a
``py_modules`` entry), so the cluster runs exactly the code you have; the resolved pipeline travels
in the job's environment, and the job's entrypoint, ``python -m winnow.pipeline.submit --address
auto`` on the head node, runs it as ``winnow run`` would. Input and output paths are made
absolute against your current directory: they must name the same place on the cluster (a shared
filesystem), which is where the run directory ends up.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import tempfile
import time

import yaml

from winnow.stages import storage
from winnow.stages.errors import WinnowError

PIPELINE_ENV = "WINNOW_PIPELINE_YAML"
ROOTS = ("pipeline", "stages", "kernels")


def main(args) -> int:
    from winnow.pipeline.config import load_pipeline

    cfg = load_pipeline(args.pipeline, {"output": args.output, "storage": _endpoint(args)})
    if not cfg.output:
        raise WinnowError(f"{args.pipeline}: no 'output' in the file and no --output given")
    resolved = cfg.to_dict() | {"output": storage.abspath(cfg.output)}
    if "://" not in cfg.input:
        resolved["input"] = os.path.abspath(cfg.input)
    client = _client(args.address)
    staging = tempfile.mkdtemp(prefix="winnow-job-")
    try:
        job_id = _submit(
            client,
            entrypoint=f"{_python()} -m winnow.pipeline.submit --address auto",
            runtime_env={"py_modules": [_stage_package(staging)],
                         "env_vars": {PIPELINE_ENV: yaml.safe_dump(resolved, sort_keys=False),
                                      "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
                                      "NO_ALBUMENTATIONS_UPDATE": "1"}},
            metadata={"winnow_pipeline": os.path.basename(args.pipeline), "winnow_output": resolved["output"]},
        )
    finally:  # submit_job has uploaded the package by now
        shutil.rmtree(staging, ignore_errors=True)
    print(f"submitted job {job_id} to {args.address}; output: {resolved['output']}", flush=True)
    if not args.wait:
        print(f"follow it with: ray job logs --address {args.address} --follow {job_id}")
        return 0
    return _follow(client, job_id)


def _endpoint(args) -> dict | None:
    url = getattr(args, "endpoint_url", None)
    return {"endpoint_url": url} if url else None


def _stage_package(staging: str) -> str:
    """A copy of the running ``winnow`` package (wherever it is installed: a checkout or a wheel) as one
    ``winnow/`` folder, the shape ``py_modules`` uploads and puts on the workers' path."""
    package = os.path.join(staging, "winnow")
    for root in ROOTS:
        source = os.path.dirname(importlib.import_module(f"winnow.{root}").__file__)
        shutil.copytree(source, os.path.join(package, root), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return package


def _submit(client, **kwargs) -> str:
    """submit_job, retried for a while when the head's job agent is not up yet (right after `ray up`)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WinnowError(f"--address {address}: cannot reach the Ray Jobs API ({first})") from None


def _follow(client, job_id: str) -> int:
    """Stream the job's logs until it ends; exit 0 if it succeeded, 1 otherwise."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    deadline = time.monotonic() + 60
    while not status.is_terminal() and time.monotonic() < deadline:  # logs can end before the status settles
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"job {job_id} {status.value}", file=sys.stderr if status != JobStatus.SUCCEEDED else sys.stdout)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _python() -> str:
    """The job runs with the cluster's own `python` (cluster.yaml installs winnow's requirements there)."""
    return "python"


def _job_entry(argv: list[str]) -> int:
    """Inside the job: write the shipped pipeline to a file and run it like `winnow run` would."""
    from winnow.pipeline.cli import main as cli_main

    text = os.environ.get(PIPELINE_ENV)
    if not text:
        print(f"winnow: error: ${PIPELINE_ENV} is not set (this module is the entrypoint of `winnow submit` jobs)",
              file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="winnow-job-", delete=False) as f:
        f.write(text)
    try:
        return cli_main(["run", f.name, *argv])
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(_job_entry(sys.argv[1:]))
