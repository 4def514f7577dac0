"""MetaCLIP metadata balancing.

Imports only its stage modules (the registry collects their Stage subclasses)."""
from winnow.stages.balance import metaclip  # noqa: F401
