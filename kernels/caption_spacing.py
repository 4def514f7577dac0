"""MetaCLIP's caption spacing, shared by both matchers (substring_match and token_match).

Its own module so the two matchers import it, not each other.
"""
from __future__ import annotations

V1_PUNCTS_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
V1_CHARS_TO_SPACE = ("\t", "\n", "\r")


def spacing(text: str) -> str:
    """The reference's caption spacing (both versions apply it; v2 strips the caption first)."""
    spaced = f" {text} "
    for p in V1_PUNCTS_TO_WRAP:
        spaced = spaced.replace(p, f" {p} ")
    for c in V1_CHARS_TO_SPACE:
        spaced = spaced.replace(c, " ")
    return spaced
