"""Exact, perceptual and semantic dedup, and eval-set decontamination.

Imports only its stage modules (the registry collects their Stage subclasses)."""
from winnow.stages.dedup import decontaminate, exact, perceptual, semantic  # noqa: F401
