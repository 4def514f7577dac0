"""A user stage for the GPU placement tests: asks for ``gpus: null`` like clip_score, needs no CUDA.

It passes rows through; where its workers ran is what the runner records (stats.json ``workers``).
"""
from __future__ import annotations

import pyarrow as pa

from winnow.stages.base import MapStage, Resources


class GpuProbe(MapStage):
    name = "gpu_probe"
    resources = Resources(cpus=1.0, gpus=None)
    stateful = True  # an actor pool, as a model-loading stage gets

    def process_batch(self, table: pa.Table) -> pa.Table:
        return table
