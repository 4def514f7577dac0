"""Synthetic captions from vision-language models, and alt-text/synthetic mixing.

Imports only its stage modules (the registry collects their Stage subclasses)."""
from winnow.stages.caption import mix, recaption  # noqa: F401
