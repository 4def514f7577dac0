"""Getting the images: img2dataset inside, safe by default, every URL accounted for.

Imports only its stage modules (the registry collects their Stage subclasses)."""
from winnow.stages.download import fetch  # noqa: F401
