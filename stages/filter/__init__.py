"""Keep or reject rows by rules and scores: DataComp's basic rules, CLIP score, DFN.

Imports only its stage modules (the registry collects their Stage subclasses)."""
from winnow.stages.filter import basic, clip_score  # noqa: F401
