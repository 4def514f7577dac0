"""Keep or reject rows by rules and scores: DataComp's basic rules, CLIP score, DFN, predicates and
precomputed scores (`filter`), Hugging Face image classifiers (`image_classify`).

Imports only its stage modules (the registry collects their Stage subclasses)."""
from winnow.stages.filter import basic, classify, clip_score, rules, score_embeddings  # noqa: F401
